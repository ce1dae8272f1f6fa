//! TLS for our own database connections (rustls; no OpenSSL), honouring libpq's
//! `sslmode` semantics: `disable`, `allow`/`prefer` (TLS if the server offers it, no
//! verification), `require` (TLS, no verification, or verify-ca when a root
//! certificate is given, as libpq does), `verify-ca` (chain only), `verify-full`
//! (chain and host name). Client certificates come from `sslcert`/`sslkey`.
//! pg_dump/pg_restore get the same settings through `PGSSLMODE` & co.
//!
//! The settings are fields of [`PgConfig`] and [`PgConfig::connect`] always goes through
//! [`connect`]: there is nothing to install, so no library user gets plain TCP by
//! forgetting a step.

use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    ClientConfig, DigitallySignedStruct, Error as TlsError, RootCertStore, SignatureScheme,
};
use tokio_postgres::config::SslMode;

use crate::error::{Error, Result};
use crate::pg::{PgConfig, connect_error};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Accepts any certificate (encryption without authentication, like libpq's `require`).
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> std::result::Result<ServerCertVerified, TlsError> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, TlsError> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, TlsError> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Verifies the chain but not the host name (libpq's `verify-ca`).
#[derive(Debug)]
struct ChainOnly(Arc<rustls::client::WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end: &CertificateDer<'_>,
        inter: &[CertificateDer<'_>],
        name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, TlsError> {
        match self.0.verify_server_cert(end, inter, name, ocsp, now) {
            Err(TlsError::InvalidCertificate(rustls::CertificateError::NotValidForName))
            | Err(TlsError::InvalidCertificate(
                rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, TlsError> {
        self.0.verify_tls12_signature(m, c, d)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, TlsError> {
        self.0.verify_tls13_signature(m, c, d)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

fn cfg_err(key: &str, message: String) -> Error {
    Error::Config {
        key: format!("database.{key}"),
        message,
    }
}

fn roots(pg: &PgConfig) -> Result<RootCertStore> {
    let mut store = RootCertStore::empty();
    match &pg.sslrootcert {
        Some(path) => {
            let pem = std::fs::read(path).map_err(|e| {
                cfg_err(
                    "sslrootcert",
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                let cert =
                    cert.map_err(|e| cfg_err("sslrootcert", format!("{}: {e}", path.display())))?;
                store
                    .add(cert)
                    .map_err(|e| cfg_err("sslrootcert", format!("{}: {e}", path.display())))?;
            }
            if store.is_empty() {
                return Err(cfg_err(
                    "sslrootcert",
                    format!("{} holds no certificate", path.display()),
                ));
            }
        }
        None => store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    Ok(store)
}

/// The rustls client configuration for `pg`'s sslmode.
pub fn client_config(pg: &PgConfig) -> Result<ClientConfig> {
    let p = provider();
    let builder = ClientConfig::builder_with_provider(p.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::other(format!("TLS setup: {e}")))?;
    let mode = pg.sslmode.as_deref().unwrap_or("prefer");
    let verify_chain = |store: RootCertStore| {
        rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(store), p.clone())
            .build()
            .map_err(|e| cfg_err("sslrootcert", e.to_string()))
    };
    let wants = match mode {
        "verify-full" => builder.with_root_certificates(roots(pg)?),
        "verify-ca" => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ChainOnly(verify_chain(roots(pg)?)?))),
        "require" if pg.sslrootcert.is_some() => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ChainOnly(verify_chain(roots(pg)?)?))),
        _ => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(p.clone()))),
    };
    match (&pg.sslcert, &pg.sslkey) {
        (Some(cert), Some(key)) => {
            let pem = std::fs::read(cert)
                .map_err(|e| cfg_err("sslcert", format!("cannot read {}: {e}", cert.display())))?;
            let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut pem.as_slice())
                .collect::<std::result::Result<_, _>>()
                .map_err(|e| cfg_err("sslcert", e.to_string()))?;
            let kpem = std::fs::read(key)
                .map_err(|e| cfg_err("sslkey", format!("cannot read {}: {e}", key.display())))?;
            let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut kpem.as_slice())
                .map_err(|e| cfg_err("sslkey", e.to_string()))?
                .ok_or_else(|| cfg_err("sslkey", "no private key found".into()))?;
            wants
                .with_client_auth_cert(chain, key)
                .map_err(|e| cfg_err("sslcert", e.to_string()))
        }
        (None, None) => Ok(wants.with_no_client_auth()),
        _ => Err(cfg_err("sslcert", "sslcert and sslkey go together".into())),
    }
}

/// Open a connection to `dbname` with `pg`'s settings, TLS as its `sslmode` says.
pub(crate) async fn connect(pg: &PgConfig, dbname: &str) -> Result<tokio_postgres::Client> {
    let target = pg.with_dbname(dbname).target();
    let mut cfg = pg.client_config(dbname);
    let mode = pg.sslmode.as_deref().unwrap_or("prefer");
    cfg.ssl_mode(match mode {
        "disable" => SslMode::Disable,
        "allow" | "prefer" => SslMode::Prefer,
        _ => SslMode::Require,
    });
    // connect_timeout in tokio-postgres covers only the TCP connect; a server that
    // accepts and never answers must not hang us, so the whole handshake is bounded.
    let limit = Duration::from_secs(pg.connect_timeout.max(1));
    // Configuration problems (unreadable CA, bad key) are reported as such, before connecting.
    let tls = match mode {
        "disable" => None,
        _ => Some(tokio_postgres_rustls::MakeRustlsConnect::new(
            client_config(pg)?,
        )),
    };
    let fut = async {
        let client = match tls {
            None => {
                let (client, conn) = cfg.connect(tokio_postgres::NoTls).await?;
                tokio::spawn(conn);
                client
            }
            Some(tls) => {
                let (client, conn) = cfg.connect(tls).await?;
                tokio::spawn(conn);
                client
            }
        };
        Ok::<_, tokio_postgres::Error>(client)
    };
    tokio::time::timeout(limit, fut)
        .await
        .map_err(|_| Error::Connect {
            target: target.clone(),
            reason: format!("no answer within {}s (connect_timeout)", limit.as_secs()),
        })?
        .map_err(|e| connect_error(&target, &e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A library user who only fills in `PgConfig` gets TLS: the settings are checked
    /// (here, a CA file that does not exist) before any connection is tried.
    #[tokio::test]
    async fn connect_uses_the_tls_settings_with_nothing_installed() {
        let pg = PgConfig {
            host: "127.0.0.1".into(),
            port: 9,
            sslmode: Some("verify-full".into()),
            sslrootcert: Some("/nonexistent/kaizen-ca.pem".into()),
            ..PgConfig::default()
        };
        match pg.connect().await {
            Err(Error::Config { key, message }) => {
                assert_eq!(key, "database.sslrootcert");
                assert!(message.contains("/nonexistent/kaizen-ca.pem"), "{message}");
            }
            other => panic!("expected a configuration error, got {other:?}"),
        }
    }
}
