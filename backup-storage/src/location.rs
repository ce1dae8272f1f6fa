//! The storage URL a builder gets, with the parsing every cloud backend needs.

// Each helper serves some backends only; a build without them does not use it.
#![cfg_attr(not(all(feature = "objstore", feature = "opendal")), allow(dead_code))]

use backup_core::{Error, Result};

/// A storage URL being opened: `scheme://…`, or a plain path (a local directory).
#[derive(Debug, Clone, Copy)]
pub struct Location<'a> {
    url: &'a str,
}

impl<'a> Location<'a> {
    /// Wrap a URL as given.
    pub fn new(url: &'a str) -> Self {
        Self { url }
    }

    /// The URL as given.
    pub fn url(&self) -> &'a str {
        self.url
    }

    /// The scheme in lower case; `file` for a plain path.
    pub fn scheme(&self) -> String {
        match self.url.split_once("://") {
            Some((s, _)) => s.to_ascii_lowercase(),
            None => "file".into(),
        }
    }

    /// The URL parsed (for schemes with a host, user and port: `webdav://`, `sftp://`).
    pub fn parse(&self) -> Result<url::Url> {
        url::Url::parse(self.url).map_err(|e| Error::usage(format!("invalid storage URL: {e}")))
    }

    /// Split `scheme://bucket/prefix` into a bucket (checked) and a prefix without
    /// surrounding slashes.
    pub fn bucket_and_prefix(&self) -> Result<(String, String)> {
        let url = self.url;
        let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(Error::usage(format!("no bucket or container in {url:?}")));
        }
        // Names S3, GCS and Azure accept; anything else would only fail (or worse) later,
        // when the client builds a request URL from it.
        if let Some(c) = bucket
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
        {
            return Err(Error::usage(format!(
                "invalid bucket or container name {bucket:?} in {url:?}: {c:?} is not allowed (use letters, digits, `.`, `-`, `_`)"
            )));
        }
        if bucket.len() > 222 {
            return Err(Error::usage(format!(
                "invalid bucket or container name in {url:?}: longer than 222 characters"
            )));
        }
        if let Some(c) = prefix.chars().find(|c| c.is_control()) {
            return Err(Error::usage(format!(
                "invalid prefix in storage URL {url:?}: control character {c:?}"
            )));
        }
        Ok((bucket.to_string(), prefix.trim_matches('/').to_string()))
    }
}

/// The parts of `scheme://[user@]host[:port]/path` a host-based service needs.
#[derive(Debug)]
pub struct Remote {
    /// Host name.
    pub host: String,
    /// `:port`, or empty.
    pub port: String,
    /// The path without a trailing slash.
    pub path: String,
    /// `scheme://host[:port]/path`: the display URL (no user, no password).
    pub display: String,
}

impl Remote {
    /// Split a parsed URL.
    pub fn of(url: &url::Url) -> Result<Self> {
        let host = url
            .host_str()
            .ok_or_else(|| Error::usage(format!("no host in {url}")))?
            .to_string();
        let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
        let path = url.path().trim_end_matches('/').to_string();
        let display = format!("{}://{host}{port}{path}", url.scheme());
        Ok(Self {
            host,
            port,
            path,
            display,
        })
    }
}

/// `scheme://bucket` or `scheme://bucket/prefix`: the display URL of a bucket store.
pub fn display_url(scheme: &str, bucket: &str, prefix: &str) -> String {
    if prefix.is_empty() {
        format!("{scheme}://{bucket}")
    } else {
        format!("{scheme}://{bucket}/{prefix}")
    }
}

/// An endpoint for messages: scheme, host and port only (no user information, no query).
pub fn redact_endpoint(endpoint: &str) -> String {
    match url::Url::parse(endpoint) {
        Ok(u) => match (u.host_str(), u.port()) {
            (Some(h), Some(p)) => format!("{}://{h}:{p}", u.scheme()),
            (Some(h), None) => format!("{}://{h}", u.scheme()),
            _ => "<invalid endpoint>".into(),
        },
        Err(_) => "<invalid endpoint>".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_names() {
        assert!(
            Location::new("s3://my-bucket.v2/a/b")
                .bucket_and_prefix()
                .is_ok()
        );
        for bad in [
            "s3://bucket with space/p",
            "s3:///p",
            "gs://b%20/p",
            "az://a\tb",
        ] {
            let err = Location::new(bad).bucket_and_prefix().unwrap_err();
            assert_eq!(err.exit_code(), 2, "{bad}");
        }
    }

    #[test]
    fn schemes() {
        assert_eq!(Location::new("/var/backups").scheme(), "file");
        assert_eq!(Location::new("S3://b").scheme(), "s3");
        assert_eq!(Location::new("ftp://h").scheme(), "ftp");
    }
}
