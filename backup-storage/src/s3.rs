//! `s3://bucket/prefix` through object_store (AWS S3 and S3-compatible stores).
//!
//! Credentials come from the usual places (`AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`/
//! `AWS_SESSION_TOKEN`, web identity for IRSA via `AWS_WEB_IDENTITY_TOKEN_FILE` +
//! `AWS_ROLE_ARN`, instance metadata), or from `[storage.s3]`. The endpoint comes from
//! `endpoint`, `AWS_ENDPOINT_URL` or `AWS_ENDPOINT`; `AWS_ALLOW_HTTP` allows plain HTTP.
//! New keys are written with `If-None-Match: *` (AWS, MinIO, R2, moto and s3s-fs honour
//! it) unless `AWS_CONDITIONAL_PUT=disabled`. Unfinished multipart uploads are listed
//! with a signed ListMultipartUploads, which object_store lacks.

use std::sync::Arc;

use async_trait::async_trait;
use backup_core::storage::storage_error;
use backup_core::{Error, Result};
use object_store::signer::Method;
use object_store::{ClientOptions, HeaderMap, HeaderValue};
use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey, AwsAuthorizer};
use object_store::client::{
    HttpClient, HttpConnector, HttpError, HttpRequest, HttpRequestBody, ReqwestConnector,
};
use object_store::multipart::MultipartStore;
use sha2::{Digest, Sha256};

use crate::guard::Backend;
use crate::location::{Location, display_url, redact_endpoint};
use crate::objstore::{
    MultipartAdmin, ObjStore, ObjectLock, OpenUpload, clients, map_error, retry_config,
};
use crate::{StorageOptions, retry};

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Open `s3://bucket/prefix`.
pub fn open(location: &Location, opts: &StorageOptions) -> Result<Box<dyn Backend>> {
    let (bucket, prefix) = location.bucket_and_prefix()?;
    let (bucket, prefix, o, timeouts) = (&bucket, &prefix, &opts.s3, opts.timeouts);
    let cfg = |key: &str, msg: String| Error::Config {
        key: format!("storage.s3.{key}"),
        message: msg,
    };
    let mut b = AmazonS3Builder::from_env().with_bucket_name(bucket);
    let region = o
        .region
        .clone()
        .or_else(|| env("AWS_REGION"))
        .or_else(|| env("AWS_DEFAULT_REGION"));
    let region = region.unwrap_or_else(|| "us-east-1".into());
    b = b.with_region(region.clone());
    let endpoint = o
        .endpoint
        .clone()
        .or_else(|| env("AWS_ENDPOINT_URL"))
        .or_else(|| env("AWS_ENDPOINT"));
    if let Some(ep) = &endpoint {
        b = b.with_endpoint(ep.clone());
    }
    let endpoint = match endpoint {
        Some(ep) => redact_endpoint(&ep),
        None => format!("https://s3.{region}.amazonaws.com"),
    };
    if let Some(a) = o.allow_http {
        b = b.with_allow_http(a);
    }
    b = b.with_virtual_hosted_style_request(o.virtual_hosted_style.unwrap_or(false));
    if let Some(k) = &o.access_key_id {
        b = b.with_access_key_id(k);
    }
    if let Some(s) = &o.secret_access_key {
        b = b.with_secret_access_key(s.expose());
    }
    if let Some(t) = &o.session_token {
        b = b.with_token(t.expose());
    }
    match o.sse.as_deref() {
        None => {}
        Some("AES256") => {
            let key: AmazonS3ConfigKey = "aws_server_side_encryption"
                .parse()
                .map_err(|_| cfg("sse", "this object_store version has no SSE setting".into()))?;
            b = b.with_config(key, "AES256");
        }
        Some("aws:kms") => {
            let Some(k) = &o.kms_key_id else {
                return Err(cfg(
                    "kms_key_id",
                    "sse = \"aws:kms\" needs kms_key_id".into(),
                ));
            };
            b = b.with_sse_kms_encryption(k);
        }
        Some(other) => {
            return Err(cfg(
                "sse",
                format!("unknown value {other:?} (AES256 or aws:kms)"),
            ));
        }
    }
    let conditional = b
        .get_config_value(&AmazonS3ConfigKey::ConditionalPut)
        .is_none_or(|v| v != "disabled");
    let (b, downloads) = clients(b.with_retry(retry_config(&timeouts)), &timeouts, |b, k, v| {
        b.with_config(AmazonS3ConfigKey::Client(k), v)
    });
    let raw_endpoint = b.get_config_value(&AmazonS3ConfigKey::Endpoint);
    let virtual_hosted = o.virtual_hosted_style.unwrap_or(false);
    let setup = |e: object_store::Error| Error::usage(format!("cannot set up s3://{bucket}: {e}"));
    let store = b.build().map_err(setup)?;
    let reader = downloads.build().map_err(setup)?;
    let url = display_url("s3", bucket, prefix);
    // Where ListMultipartUploads goes: the bucket's URL, as object_store addresses it.
    let base = match (raw_endpoint, virtual_hosted) {
        (Some(ep), true) => ep.trim_end_matches('/').to_string(),
        (Some(ep), false) => format!("{}/{bucket}", ep.trim_end_matches('/')),
        (None, true) => format!("https://{bucket}.s3.{region}.amazonaws.com"),
        (None, false) => format!("https://s3.{region}.amazonaws.com/{bucket}"),
    };
    let client = ReqwestConnector::default()
        .connect(
            &ClientOptions::new()
                .with_allow_http(
                    o.allow_http.unwrap_or(false)
                        || env("AWS_ALLOW_HTTP").is_some_and(|v| v == "true"),
                )
                .with_timeout(timeouts.request())
                .with_connect_timeout(timeouts.connect()),
        )
        .map_err(setup)?;
    let lock = match &o.object_lock {
        None => None,
        Some(l) => {
            if !matches!(l.mode.as_str(), "GOVERNANCE" | "COMPLIANCE") {
                return Err(cfg(
                    "object_lock.mode",
                    format!("unknown value {:?} (GOVERNANCE or COMPLIANCE)", l.mode),
                ));
            }
            if !(1..=36500).contains(&l.days) {
                return Err(cfg(
                    "object_lock.days",
                    format!("{} is out of range (1 to 36500)", l.days),
                ));
            }
            Some((l.mode.clone(), l.days))
        }
    };
    let store = Arc::new(store);
    let admin = S3Uploads {
        store: store.clone(),
        client,
        base,
        region: region.clone(),
        url: url.clone(),
        endpoint: endpoint.clone(),
    };
    let admin = Arc::new(admin);
    let mut objstore = ObjStore::new(
        store,
        url,
        endpoint,
        prefix,
        opts.upload,
        o.storage_class.clone(),
    )
    .with_reader(Arc::new(reader))
    .with_multipart_admin(admin.clone())
    .with_conditional_put(conditional);
    if let Some((mode, days)) = lock {
        objstore = objstore.with_object_lock(Arc::new(S3Lock {
            api: admin,
            mode,
            days,
        }));
    }
    Ok(Box::new(objstore))
}

/// S3 Object Lock through signed PutObjectRetention, HEAD (which carries the retention)
/// and GetObjectLockConfiguration requests.
#[derive(Debug)]
struct S3Lock {
    api: Arc<S3Uploads>,
    /// `GOVERNANCE` or `COMPLIANCE`.
    mode: String,
    days: u32,
}

impl S3Lock {
    fn object_uri(&self, path: &str) -> String {
        let encoded: Vec<String> = path.split('/').map(uri_encode).collect();
        format!("{}/{}", self.api.base, encoded.join("/"))
    }
}

#[async_trait]
impl ObjectLock for S3Lock {
    async fn retain(&self, path: &str) -> Result<()> {
        let until = chrono::Utc::now() + chrono::Duration::days(i64::from(self.days));
        let body = format!(
            "<Retention xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Mode>{}</Mode>\
             <RetainUntilDate>{}</RetainUntilDate></Retention>",
            self.mode,
            until.format("%Y-%m-%dT%H:%M:%SZ")
        );
        // PutObjectRetention wants a checksum of its body (Content-MD5 or an SDK checksum).
        let sum = base64(&Sha256::digest(body.as_bytes()));
        let uri = format!("{}?retention", self.object_uri(path));
        let headers = [
            ("x-amz-sdk-checksum-algorithm", "SHA256".to_string()),
            ("x-amz-checksum-sha256", sum),
            ("content-type", "application/xml".to_string()),
        ];
        let (status, _, text) = self
            .api
            .send("set retention", path, Method::PUT, &uri, &headers, body)
            .await?;
        if (200..300).contains(&status) {
            return Ok(());
        }
        Err(self.api.status_error("set retention", path, status, &text))
    }

    async fn locked_until(&self, path: &str) -> Result<Option<chrono::DateTime<chrono::Utc>>> {
        let uri = self.object_uri(path);
        let (status, headers, text) = self
            .api
            .send("read retention", path, Method::HEAD, &uri, &[], String::new())
            .await?;
        if status == 404 {
            return Ok(None);
        }
        if !(200..300).contains(&status) {
            return Err(self.api.status_error("read retention", path, status, &text));
        }
        let until = headers
            .get("x-amz-object-lock-retain-until-date")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| chrono::DateTime::parse_from_rfc3339(v).ok())
            .map(|t| t.with_timezone(&chrono::Utc));
        Ok(until.filter(|t| *t > chrono::Utc::now()))
    }

    async fn check(&self) -> Result<()> {
        let uri = format!("{}?object-lock", self.api.base);
        let op = "check Object Lock";
        let (status, _, text) = self
            .api
            .send(op, "", Method::GET, &uri, &[], String::new())
            .await?;
        let enabled = xml_values(&text, "ObjectLockEnabled").first().map(String::as_str)
            == Some("Enabled");
        if (200..300).contains(&status) && enabled {
            return Ok(());
        }
        let code = xml_values(&text, "Code").into_iter().next();
        if (200..300).contains(&status) || code.as_deref() == Some("ObjectLockConfigurationNotFoundError")
        {
            return Err(Error::Config {
                key: "storage.s3.object_lock".into(),
                message: format!(
                    "bucket of {} does not have Object Lock enabled (it can only be enabled \
                     on a versioned bucket); remove object_lock or use a bucket with Object Lock",
                    self.api.url
                ),
            });
        }
        Err(self.api.status_error(op, "", status, &text))
    }
}

/// ListMultipartUploads (signed with object_store's SigV4) and AbortMultipartUpload.
#[derive(Debug)]
struct S3Uploads {
    store: Arc<AmazonS3>,
    client: HttpClient,
    base: String,
    region: String,
    url: String,
    /// Where requests go (named in errors).
    endpoint: String,
}

impl S3Uploads {
    async fn page(&self, prefix: &str, markers: Option<&(String, String)>) -> Result<String> {
        let mut query: Vec<(&str, &str)> = vec![("prefix", prefix)];
        if let Some((key, id)) = markers {
            query.push(("key-marker", key));
            query.push(("upload-id-marker", id));
        }
        let query: String = query
            .iter()
            .map(|(k, v)| format!("&{k}={}", uri_encode(v)))
            .collect();
        let uri = format!("{}?uploads={query}", self.base);
        let op = "list unfinished uploads";
        let (status, _, text) = self
            .send(op, "", Method::GET, &uri, &[], String::new())
            .await?;
        if !(200..300).contains(&status) {
            return Err(self.status_error(op, "", status, &text));
        }
        Ok(text)
    }

    /// A failed request's error: its status and S3 error code.
    fn status_error(&self, op: &'static str, key: &str, status: u16, text: &str) -> Error {
        let code = xml_values(text, "Code")
            .into_iter()
            .next()
            .unwrap_or_default();
        let retryable = retry::status(status);
        let message = format!("HTTP {status} {code}");
        storage_error(&self.url, op, key, message, retryable)
    }

    /// Send one request signed with object_store's SigV4; its status, headers and body.
    async fn send(
        &self,
        op: &'static str,
        key: &str,
        method: Method,
        uri: &str,
        headers: &[(&'static str, String)],
        body: String,
    ) -> Result<(u16, HeaderMap, String)> {
        let fail = |m: String, retryable: bool| storage_error(&self.url, op, key, m, retryable);
        let mut req = HttpRequest::new(HttpRequestBody::from(body.into_bytes()));
        *req.method_mut() = method;
        *req.uri_mut() = uri
            .parse()
            .map_err(|e| fail(format!("bad URL: {e}"), false).caused_by(e))?;
        for (name, value) in headers {
            let value = HeaderValue::from_str(value)
                .map_err(|e| fail(format!("bad header {name}: {e}"), false).caused_by(e))?;
            req.headers_mut().insert(*name, value);
        }
        let cred = self
            .store
            .credentials()
            .get_credential()
            .await
            .map_err(|e| map_error(&self.url, &self.endpoint, op, key, e))?;
        AwsAuthorizer::new(&cred, "s3", &self.region)
            .try_authorize(&mut req, None)
            .map_err(|e| map_error(&self.url, &self.endpoint, op, key, e))?;
        let failed = |e: HttpError| fail(e.to_string(), retry::transport(e.kind())).caused_by(e);
        let resp = self.client.execute(req).await.map_err(failed)?;
        let status = resp.status().as_u16();
        let resp_headers = resp.headers().clone();
        let body = resp.into_body().bytes().await.map_err(failed)?;
        Ok((
            status,
            resp_headers,
            String::from_utf8_lossy(&body).to_string(),
        ))
    }
}

#[async_trait]
impl MultipartAdmin for S3Uploads {
    async fn list_uploads(&self, prefix: &str) -> Result<Vec<OpenUpload>> {
        let mut out = Vec::new();
        let mut markers = None;
        // Pages of up to 1000; the markers say where the next one starts.
        for _ in 0..1000 {
            let text = self.page(prefix, markers.as_ref()).await?;
            for block in xml_values(&text, "Upload") {
                let (Some(path), Some(id)) = (
                    xml_values(&block, "Key").into_iter().next(),
                    xml_values(&block, "UploadId").into_iter().next(),
                ) else {
                    continue;
                };
                let initiated = xml_values(&block, "Initiated")
                    .into_iter()
                    .next()
                    .and_then(|t| chrono::DateTime::parse_from_rfc3339(&t).ok())
                    .map(|t| t.with_timezone(&chrono::Utc));
                out.push(OpenUpload {
                    path,
                    id,
                    initiated,
                });
            }
            let truncated =
                xml_values(&text, "IsTruncated").first().map(String::as_str) == Some("true");
            let next = (
                xml_values(&text, "NextKeyMarker").into_iter().next(),
                xml_values(&text, "NextUploadIdMarker").into_iter().next(),
            );
            match next {
                (Some(k), Some(i)) if truncated => markers = Some((k, i)),
                _ => break,
            }
        }
        Ok(out)
    }

    async fn abort_upload(&self, path: &str, id: &str) -> Result<()> {
        let location = object_store::path::Path::from(path);
        match self.store.abort_multipart(&location, &id.to_string()).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(map_error(
                &self.url,
                &self.endpoint,
                "abort unfinished upload",
                path,
                e,
            )),
        }
    }
}

/// Standard base64 with padding (the checksum header's encoding).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] =
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Percent-encoding of a query value as SigV4 wants it (RFC 3986 unreserved kept).
fn uri_encode(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The text of every `<tag>…</tag>` element in `xml` (not nested in itself), unescaped.
fn xml_values(xml: &str, tag: &str) -> Vec<String> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(i) = rest.find(&open) {
        let after = &rest[i + open.len()..];
        let Some(j) = after.find(&close) else {
            break;
        };
        out.push(
            after[..j]
                .replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&quot;", "\"")
                .replace("&apos;", "'")
                .replace("&amp;", "&"),
        );
        rest = &after[j + close.len()..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_multipart_uploads_result_is_read() {
        let xml = "<ListMultipartUploadsResult><Bucket>b</Bucket><IsTruncated>false</IsTruncated>\
            <Upload><Key>p/a&amp;b.dump</Key><UploadId>u1</UploadId><Initiated>2024-01-15T14:30:00.000Z</Initiated></Upload>\
            <Upload><Key>p/c.dump</Key><UploadId>u2</UploadId></Upload></ListMultipartUploadsResult>";
        let ups = xml_values(xml, "Upload");
        assert_eq!(ups.len(), 2);
        assert_eq!(xml_values(&ups[0], "Key"), ["p/a&b.dump"]);
        assert_eq!(xml_values(&ups[1], "UploadId"), ["u2"]);
        assert_eq!(xml_values(xml, "IsTruncated"), ["false"]);
        assert_eq!(uri_encode("p/x y"), "p%2Fx%20y");
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }
}
