//! The one error type of `backup-core`.

use std::fmt;

/// What went wrong, with enough context to act on it.
///
/// Every message names what failed and on what; none contains a secret.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Invalid user input or configuration (exit status 2).
    #[error("{0}")]
    Usage(String),

    /// A configuration key has an invalid value (exit status 2).
    #[error("invalid configuration `{key}`: {message}")]
    Config {
        /// Dotted key, e.g. `retention.keep_last`.
        key: String,
        /// What is wrong with it.
        message: String,
    },

    /// The database did not answer or refused the connection.
    #[error("Cannot connect to database: {target} — {reason}")]
    Connect {
        /// `DB@HOST:PORT`
        target: String,
        /// The server's or network's reason, without secrets.
        reason: String,
    },

    /// A query or statement failed.
    #[error("database error while {context}: {message}")]
    Database {
        /// What we were doing.
        context: String,
        /// The server's message.
        message: String,
    },

    /// A PostgreSQL client tool is missing or unusable.
    #[error("{0}")]
    Tool(String),

    /// A child process (pg_dump, pg_restore) failed.
    #[error("{tool} failed ({status}): {stderr}")]
    ChildFailed {
        /// Tool name.
        tool: String,
        /// Exit status description.
        status: String,
        /// Last lines of its standard error.
        stderr: String,
    },

    /// Not enough free space for the expected backup size.
    #[error(
        "Insufficient disk space. Available: {available}, Required: {required} (at {location})"
    )]
    InsufficientSpace {
        /// Human-readable free space.
        available: String,
        /// Human-readable estimated need.
        required: String,
        /// Where.
        location: String,
    },

    /// A storage operation failed.
    #[error("storage {target}: {op} {key}: {message}")]
    Storage {
        /// Redacted storage URL.
        target: String,
        /// Operation (put, get, list, delete, ...).
        op: &'static str,
        /// Object key.
        key: String,
        /// What went wrong.
        message: String,
        /// Whether trying again may succeed, decided by the backend from the cause's kind
        /// or status (a timeout, a reset connection, a 503), never from its text.
        retryable: bool,
        /// The underlying error (a client library's, an I/O error), for [`source()`] chains;
        /// boxed, so no dependency's type is part of this API.
        ///
        /// [`source()`]: std::error::Error::source
        #[source]
        source: Option<BoxError>,
    },

    /// The object does not exist.
    #[error("not found: {0}")]
    NotFound(String),

    /// The object already exists and will not be overwritten.
    #[error("already exists: {0}")]
    AlreadyExists(String),

    /// A backup is corrupt, truncated or does not match its manifest.
    #[error("Invalid backup file format or corrupted file: {0}")]
    Corrupt(String),

    /// A verification check failed.
    #[error("verification failed at check `{check}`: {reason}")]
    VerifyFailed {
        /// Check name.
        check: String,
        /// Why.
        reason: String,
    },

    /// The operation was refused for safety (production confirmation, lock held, ...).
    #[error("{0}")]
    Refused(String),

    /// Interrupted by a signal; nothing was committed.
    #[error("interrupted by {0}; nothing was committed")]
    Interrupted(String),

    /// A notification could not be delivered.
    #[error("notification via {notifier} failed: {message}")]
    Notify {
        /// Notifier name.
        notifier: String,
        /// What went wrong (no secrets).
        message: String,
    },

    /// A feature needed by the configuration is not compiled in.
    #[error("{what} support is not compiled in (feature `{feature}`)")]
    NotCompiled {
        /// e.g. `s3 storage`, `slack`.
        what: String,
        /// Cargo feature name.
        feature: String,
    },

    /// Local I/O failed.
    #[error("{context}: {source}")]
    Io {
        /// What we were doing, on which path.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// Anything else, already phrased for the operator.
    #[error("{0}")]
    Other(String),
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Any error, boxed: the cause an [`Error::Storage`] keeps.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Whether an I/O error of this kind may go away by itself (an interrupted call, a timeout,
/// a connection reset or aborted by the peer), so that trying again may succeed.
pub fn io_retryable(kind: std::io::ErrorKind) -> bool {
    use std::io::ErrorKind as K;
    matches!(
        kind,
        K::Interrupted | K::TimedOut | K::ConnectionReset | K::ConnectionAborted
    )
}

impl Error {
    /// Wrap an I/O error with context.
    pub fn io(context: impl fmt::Display, source: std::io::Error) -> Self {
        Self::Io {
            context: context.to_string(),
            source,
        }
    }

    /// A usage error (exit status 2).
    pub fn usage(msg: impl fmt::Display) -> Self {
        Self::Usage(msg.to_string())
    }

    /// An error already phrased for the operator.
    pub fn other(msg: impl fmt::Display) -> Self {
        Self::Other(msg.to_string())
    }

    /// Keep `cause` as the [`source`](std::error::Error::source) of a storage error; the
    /// message does not change. Other variants are returned as they are.
    pub fn caused_by(mut self, cause: impl Into<BoxError>) -> Self {
        if let Self::Storage { source, .. } = &mut self {
            *source = Some(cause.into());
        }
        self
    }

    /// Whether retrying the same operation may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Storage { retryable, .. } => *retryable,
            Self::Notify { .. } => true,
            Self::Io { source, .. } => io_retryable(source.kind()),
            _ => false,
        }
    }

    /// Exit status this error maps to: 2 for usage and configuration errors, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Usage(_) | Self::Config { .. } | Self::NotCompiled { .. } => 2,
            _ => 1,
        }
    }
}
