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
    /// Cluster mode: NATS could not be reached, or refused a step.
    #[error("cluster: {0}")]
    Cluster(String),
    /// Cluster mode: this node no longer leads and takes no changes.
    #[error("this node no longer leads the cluster")]
    NotLeading,
    /// Cluster mode: this node lost the leadership and stopped.
    #[error(
        "this node lost the cluster's leadership and stopped; restart it to rejoin as a standby"
    )]
    SteppedDown,
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
    /// What went wrong inside the server, for the log only: never sent
    /// (storage error text names files and internals). The answer's log
    /// line carries it under the request's trace id.
    pub detail: Option<String>,
}

impl ApiError {
    /// An error with the given code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retry_after: None,
            detail: None,
        }
    }

    /// `Internal` for a failure inside the server: the client reads a
    /// generic message, `detail` goes to the log under the trace id.
    pub fn internal(detail: impl Into<String>) -> Self {
        Self {
            detail: Some(detail.into()),
            ..Self::new(
                ErrorCode::Internal,
                "internal error; see the server log under this trace id",
            )
        }
    }

    /// `IdempotencyKeyReused`: the key already names an order of another
    /// request.
    pub fn key_reused() -> Self {
        Self::new(
            ErrorCode::IdempotencyKeyReused,
            "this idempotency key was used for another request (other lines, or a cart \
             checkout against an express one); send a new request with a new key",
        )
    }

    /// What the log says of this error: the detail if there is one, else
    /// the message.
    pub fn log_text(&self) -> &str {
        self.detail.as_deref().unwrap_or(&self.message)
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
            ServerError::NotLeading => Self::new(
                ErrorCode::NotLeader,
                "this node no longer leads the cluster: nothing was changed; send it to the new leader",
            ),
            other => Self::internal(other.to_string()),
        }
    }
}

/// Result of a request handler.
pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_error_text_stays_in_the_log_and_the_client_reads_a_generic_message() {
        let storage = ServerError::Corrupt {
            tree: "carts",
            reason: "secret internals at /var/lib/flashsale/db".into(),
        };
        let error = ApiError::from(storage);
        assert_eq!(error.code, ErrorCode::Internal);
        let trace_id = Uuid::new_v4();
        let wire = error.clone().into_wire(trace_id);
        assert!(!wire.message.contains("carts") && !wire.message.contains("/var/lib"));
        assert!(wire.message.contains("trace id"), "{}", wire.message);
        assert_eq!(wire.trace_id, trace_id);
        assert!(error.log_text().contains("/var/lib/flashsale/db"));
    }

    #[test]
    fn a_stopped_sequencer_is_shutting_down_not_internal() {
        let error = ApiError::from(ServerError::SequencerStopped);
        assert_eq!(error.code, ErrorCode::ShuttingDown);
    }
}
