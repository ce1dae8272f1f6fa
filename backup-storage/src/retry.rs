//! Which failures are worth retrying, decided from the cause's kind or HTTP status, never
//! from its text. Every backend builds its errors' `retryable` flag here.
//!
//! Retrying later may help after a timeout, a refused or reset connection, throttling or
//! a server failure (408, 429, 5xx); it cannot help an answer about the request itself
//! (403 refused, 404 missing, 412 precondition failed, a wrong setting).

// Each rule serves some backends only; a build without them does not use it.
#![cfg_attr(
    not(all(feature = "local", feature = "s3", feature = "dal")),
    allow(dead_code, unused_imports)
)]

/// An HTTP status: the server timed out (408), throttled (429) or failed (5xx).
pub fn status(code: u16) -> bool {
    matches!(code, 408 | 429 | 500..=599)
}

/// An I/O error: interrupted, timed out, or a connection reset or aborted.
pub fn io(e: &std::io::Error) -> bool {
    backup_core::error::io_retryable(e.kind())
}

/// The first I/O error in a chain of causes, if any.
#[cfg(feature = "objstore")]
fn io_in_chain<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a std::io::Error> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return Some(io);
        }
        cur = err.source();
    }
    None
}

#[cfg(feature = "objstore")]
pub use objstore::{object_store, transport, transport_failure};

#[cfg(feature = "objstore")]
mod objstore {
    use object_store::client::{HttpError, HttpErrorKind};

    /// How a request failed without an answer (a timeout, no connection), if that is what
    /// happened.
    pub fn transport_failure(e: &(dyn std::error::Error + 'static)) -> Option<HttpErrorKind> {
        let mut cur = Some(e);
        while let Some(err) = cur {
            if let Some(h) = err.downcast_ref::<HttpError>() {
                return Some(h.kind());
            }
            cur = err.source();
        }
        None
    }

    /// An object_store error. Its answers are classified by variant (404 `NotFound`, 412
    /// `Precondition`, 403 `PermissionDenied`, …: final); failed requests by their transport
    /// kind. object_store keeps the status of other answers private and has already retried
    /// the retryable ones (5xx, 429) within `storage.timeouts.retries`, so what is left of
    /// them is final too.
    pub fn object_store(e: &object_store::Error) -> bool {
        use object_store::Error as E;
        match e {
            E::NotFound { .. }
            | E::AlreadyExists { .. }
            | E::Precondition { .. }
            | E::NotModified { .. }
            | E::PermissionDenied { .. }
            | E::Unauthenticated { .. }
            | E::InvalidPath { .. }
            | E::NotSupported { .. }
            | E::NotImplemented { .. }
            | E::UnknownConfigurationKey { .. } => false,
            other => match transport_failure(other) {
                Some(kind) => transport(kind),
                None => super::io_in_chain(other).is_some_and(super::io),
            },
        }
    }

    /// A request that got no answer: no connection, a timeout, a reset or an interrupted
    /// transfer (not an answer that could not be decoded).
    pub fn transport(kind: HttpErrorKind) -> bool {
        matches!(
            kind,
            HttpErrorKind::Connect
                | HttpErrorKind::Timeout
                | HttpErrorKind::Request
                | HttpErrorKind::Interrupted
        )
    }
}

/// An opendal error: what opendal calls temporary (its services mark 5xx, 429, timeouts
/// and connection failures so). One that stayed after the retry layer's attempts is
/// "persistent", which opendal advises not to retry.
#[cfg(feature = "dal")]
pub fn opendal(e: &opendal::Error) -> bool {
    e.is_temporary()
}

/// An I/O error from an opendal stream: the opendal error inside, if it carries one.
#[cfg(feature = "dal")]
pub fn opendal_io(e: &std::io::Error) -> bool {
    match e.get_ref().and_then(|i| i.downcast_ref::<opendal::Error>()) {
        Some(inner) => opendal(inner),
        None => io(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Error as IoError, ErrorKind};

    #[test]
    fn server_failures_and_timeouts_are_retryable_answers_about_the_request_are_not() {
        for code in [408, 429, 500, 502, 503, 504] {
            assert!(status(code), "{code}");
        }
        for code in [200, 400, 401, 403, 404, 409, 412, 416] {
            assert!(!status(code), "{code}");
        }
        for kind in [
            ErrorKind::TimedOut,
            ErrorKind::ConnectionReset,
            ErrorKind::ConnectionAborted,
            ErrorKind::Interrupted,
        ] {
            assert!(io(&IoError::from(kind)), "{kind:?}");
        }
        for kind in [
            ErrorKind::PermissionDenied,
            ErrorKind::NotFound,
            ErrorKind::AlreadyExists,
            ErrorKind::InvalidInput,
        ] {
            assert!(!io(&IoError::from(kind)), "{kind:?}");
        }
    }

    #[cfg(feature = "objstore")]
    #[test]
    fn object_store_errors_by_variant_and_transport_kind() {
        use object_store::Error as E;
        use object_store::client::{HttpError, HttpErrorKind};
        let failed = |kind, io_kind| E::Generic {
            store: "S3",
            source: Box::new(HttpError::new(kind, IoError::from(io_kind))),
        };
        assert!(object_store(&failed(
            HttpErrorKind::Timeout,
            ErrorKind::TimedOut
        )));
        assert!(object_store(&failed(
            HttpErrorKind::Connect,
            ErrorKind::ConnectionRefused
        )));
        assert!(object_store(&failed(
            HttpErrorKind::Request,
            ErrorKind::ConnectionReset
        )));
        // A reset connection object_store did not wrap.
        assert!(object_store(&E::Generic {
            store: "S3",
            source: Box::new(IoError::from(ErrorKind::ConnectionReset)),
        }));
        let answer = || -> Box<dyn std::error::Error + Send + Sync> { "answered".into() };
        for e in [
            E::PermissionDenied {
                path: "p".into(),
                source: answer(),
            },
            E::NotFound {
                path: "p".into(),
                source: answer(),
            },
            E::Precondition {
                path: "p".into(),
                source: answer(),
            },
            E::Generic {
                store: "S3",
                source: answer(),
            },
        ] {
            assert!(!object_store(&e), "{e}");
        }
    }

    #[cfg(feature = "dal")]
    #[test]
    fn opendal_errors_by_temporary_status() {
        use opendal::{Error as E, ErrorKind as K};
        // How opendal's services report a 503, a timeout and a reset connection.
        assert!(opendal(
            &E::new(K::Unexpected, "503 Service Unavailable").set_temporary()
        ));
        assert!(opendal(
            &E::new(K::Unexpected, "io timeout reached").set_temporary()
        ));
        assert!(opendal(
            &E::new(K::Unexpected, "send http request").set_temporary()
        ));
        assert!(opendal(&E::new(K::RateLimited, "429").set_temporary()));
        // 403, 404 and 412, and a failure that outlasted the retries.
        let read = |e: E| std::io::Error::other(e);
        assert!(opendal_io(&read(
            E::new(K::Unexpected, "reset").set_temporary()
        )));
        assert!(opendal_io(&IoError::from(ErrorKind::TimedOut)));
        assert!(!opendal_io(&read(E::new(K::PermissionDenied, "403"))));
        for e in [
            E::new(K::PermissionDenied, "403"),
            E::new(K::NotFound, "404"),
            E::new(K::ConditionNotMatch, "412"),
            E::new(K::Unexpected, "503")
                .set_temporary()
                .set_persistent(),
        ] {
            assert!(!opendal(&e), "{e}");
        }
    }
}
