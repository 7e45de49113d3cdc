//! Errors: [`ServerError`] for what goes wrong inside the server, and
//! [`ApiError`] for what a request is told. One `From` maps the first to the second.

use flashsale_protocol::{ErrorCode, WireError};
use uuid::Uuid;

/// A failure inside the server (storage, corruption, start-up).
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// sled failed.
    #[error("storage error: {0}")]
    Storage(#[from] sled::Error),
    /// A transactional sled operation failed.
    #[error("storage transaction failed: {0}")]
    Transaction(String),
    /// A stored record could not be decoded.
    #[error("corrupt record in tree `{tree}`: {reason}")]
    Corrupt {
        /// The sled tree holding it.
        tree: &'static str,
        /// What the decoder said.
        reason: String,
    },
    /// A record could not be encoded.
    #[error("could not encode a record: {0}")]
    Encode(String),
    /// The data dir was written by a newer flashsale.
    #[error("data dir schema version {found} is newer than this server supports ({supported}); upgrade flashsale-server")]
    SchemaTooNew {
        /// Version found on disk.
        found: u32,
        /// Newest version this build reads.
        supported: u32,
    },
    /// Another process has the data dir open.
    #[error("data dir {0} is in use by another flashsale-server process")]
    DataDirLocked(String),
    /// A file operation failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// The sequencer or journal stopped, so no more orders can be decided.
    #[error("the sequencer has stopped")]
    SequencerStopped,
    /// Password hashing failed.
    #[error("password hashing failed: {0}")]
    PasswordHash(String),
    /// The TLS certificate or key could not be loaded.
    #[error("TLS: {0}")]
    Tls(String),
}

/// What a refused request is told: a wire error code and a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    /// The code the client branches on.
    pub code: ErrorCode,
    /// A human-readable explanation.
    pub message: String,
    /// For a rate limit or throttle: how long the client should wait.
    pub retry_after: Option<std::time::Duration>,
}

impl ApiError {
    /// An error with the given code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// `BadRequest` with a message.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }

    /// `NotFound` with a message.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }

    /// `Unauthenticated`: no session on this connection.
    pub fn no_session() -> Self {
        Self::new(ErrorCode::Unauthenticated, "log in first (Login or Resume)")
    }

    /// `Forbidden` for an admin-only request.
    pub fn admin_only() -> Self {
        Self::new(ErrorCode::Forbidden, "this request needs an admin session")
    }

    /// `Overloaded`: a rate limit was reached; retry after `wait`.
    pub fn rate_limited(wait: std::time::Duration) -> Self {
        Self {
            retry_after: Some(wait),
            ..Self::new(
                ErrorCode::Overloaded,
                format!(
                    "rate limit reached; retry in {} ms",
                    wait.as_millis().max(1)
                ),
            )
        }
    }

    /// `Overloaded`: too many failed logins from this peer or for this
    /// account; retry after `wait`.
    pub fn login_throttled(wait: std::time::Duration) -> Self {
        Self {
            retry_after: Some(wait),
            ..Self::new(
                ErrorCode::Overloaded,
                format!(
                    "too many failed logins; retry in {} s",
                    wait.as_secs_f64().ceil().max(1.0)
                ),
            )
        }
    }

    /// `ShuttingDown`.
    pub fn shutting_down() -> Self {
        Self::new(ErrorCode::ShuttingDown, "the server is shutting down")
    }

    /// The wire form, under the trace id of the request it answers (the id
    /// its log lines carry; see [`crate::net::reply::Trace`]).
    pub fn into_wire(self, trace_id: Uuid) -> WireError {
        WireError {
            code: self.code,
            message: self.message,
            trace_id,
            retry_after_ms: self
                .retry_after
                .map(|wait| u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1)),
        }
    }
}

impl From<ServerError> for ApiError {
    fn from(e: ServerError) -> Self {
        match e {
            ServerError::SequencerStopped => Self::shutting_down(),
            other => Self::new(ErrorCode::Internal, other.to_string()),
        }
    }
}

/// Result of a request handler.
pub type ApiResult<T> = Result<T, ApiError>;
