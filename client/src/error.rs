//! The client's error type.

use flashsale_protocol::{CodecError, ErrorCode, WireError};
use std::time::Duration;

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The TCP connection could not be made.
    #[error("could not connect: {0}")]
    Connect(#[source] std::io::Error),
    /// A frame could not be read or written.
    #[error("protocol error: {0}")]
    Codec(#[from] CodecError),
    /// The server broke the protocol (an unexpected frame or reply).
    #[error("unexpected answer from the server: {0}")]
    Unexpected(String),
    /// The server refused the request; see [`WireError::code`].
    #[error("{0}")]
    Server(WireError),
    /// No answer within the configured time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// TLS could not be set up (bad CA file or server name) or its handshake failed.
    #[error("TLS: {0}")]
    Tls(String),
    /// The connection closed before the answer arrived; the server's reason when it gave one.
    #[error("connection closed{}", .0.as_ref().map(|e| format!(": {e}")).unwrap_or_default())]
    Disconnected(Option<WireError>),
    /// An [`crate::OrderStream`] already has this many attempts whose
    /// answers were not taken with `next()`; take some first.
    #[error("{0} attempts are in flight on this stream; take answers with next() first")]
    StreamFull(usize),
}

impl ClientError {
    /// The server's error code, when the server refused the request.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Self::Server(e) => Some(e.code),
            Self::Disconnected(Some(e)) => Some(e.code),
            _ => None,
        }
    }

    /// How long the server asked the client to wait before sending again
    /// (rate limits and login throttling), if it said.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Server(e) | Self::Disconnected(Some(e)) => {
                e.retry_after_ms.map(Duration::from_millis)
            }
            _ => None,
        }
    }

    /// True for a timeout.
    pub fn is_timeout(&self) -> bool {
        matches!(self, Self::Timeout(_))
    }

    /// True when sending the same request again (with the same idempotency
    /// key, for pay) may succeed: connection trouble, timeouts, overload.
    pub fn is_retryable(&self) -> bool {
        match self {
            // A request the server closed the connection on without
            // answering was never read (it answers all it read first), or
            // is a pay whose retry its idempotency key makes safe.
            Self::Connect(_) | Self::Timeout(_) | Self::Disconnected(_) => true,
            Self::Codec(CodecError::Io(_)) => true,
            Self::Codec(_) | Self::Unexpected(_) | Self::Tls(_) | Self::StreamFull(_) => false,
            Self::Server(e) => e.code.is_retryable(),
        }
    }
}

/// Result of a client call.
pub type Result<T> = std::result::Result<T, ClientError>;
