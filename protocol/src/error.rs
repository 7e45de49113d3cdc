//! Error codes carried by failed responses.

use serde::{Deserialize, Serialize};
use std::fmt;
use uuid::Uuid;

/// Why a request failed. Append-only: the position of a variant is its wire tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorCode {
    /// The request is malformed or a field is out of range (zero quantity, too many lines…).
    BadRequest,
    /// No session, an expired or unknown token, or wrong credentials.
    Unauthenticated,
    /// The session's role may not make this request.
    Forbidden,
    /// The product, order or user does not exist (or belongs to someone else).
    NotFound,
    /// `Pay` with nothing in the cart.
    EmptyCart,
    /// The stock left cannot cover the quantity asked for.
    SoldOut,
    /// The buyer's purchase limit for a product would be exceeded.
    LimitExceeded,
    /// The product's sale window is not open.
    SaleNotOpen,
    /// A queue or limit is full; retry later.
    Overloaded,
    /// The peer speaks a protocol version this side does not.
    UnsupportedVersion,
    /// The server failed; the trace id identifies the failure in its logs.
    Internal,
    /// The request is part of the protocol but this server does not
    /// implement it yet (reserved: the flashsale server implements every
    /// request of version 1 and never sends it).
    NotImplemented,
    /// The server is shutting down and takes no new work; retry on another connection later.
    ShuttingDown,
    /// The name is taken (user or product creation).
    AlreadyExists,
    /// The buyer already used this idempotency key for a different request
    /// (other lines, or a cart checkout against an express one). Not
    /// retryable: send the new request with a new key.
    IdempotencyKeyReused,
    /// A configured quota is used up (for example the buyer references a
    /// partner may create); an operator can raise it. Not retryable as is.
    QuotaExceeded,
    /// Cluster mode: this node is a standby, not the leader, and serves no
    /// requests (sent as a `Closing` frame in answer to `Hello`). The
    /// message ends with `leader=HOST:PORT` when the leader is known; connect
    /// there (or to another node of the cluster) and send again. Retryable:
    /// the request was not carried out.
    NotLeader,
    /// `PayHold` after the hold's deadline: it expired and its units went
    /// back to stock. Not retryable: hold again (with a new key).
    HoldExpired,
    /// `PayHold` or `ReleaseHold` of an order that is not a hold (a plain
    /// order, a rejected one, or a released hold for `PayHold`).
    NotHeld,
    /// `PayHold` of an order already paid with another payment reference.
    PaymentRefMismatch,
}

impl ErrorCode {
    /// Every code, in wire order (a code's position here is its wire tag).
    pub const ALL: [ErrorCode; 20] = [
        Self::BadRequest,
        Self::Unauthenticated,
        Self::Forbidden,
        Self::NotFound,
        Self::EmptyCart,
        Self::SoldOut,
        Self::LimitExceeded,
        Self::SaleNotOpen,
        Self::Overloaded,
        Self::UnsupportedVersion,
        Self::Internal,
        Self::NotImplemented,
        Self::ShuttingDown,
        Self::AlreadyExists,
        Self::IdempotencyKeyReused,
        Self::QuotaExceeded,
        Self::NotLeader,
        Self::HoldExpired,
        Self::NotHeld,
        Self::PaymentRefMismatch,
    ];

    /// True when the same request may succeed if sent again later.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            Self::Overloaded | Self::ShuttingDown | Self::Internal | Self::NotLeader
        )
    }
}

/// The text after which a `NotLeader` message names the leader's address.
pub const LEADER_HINT: &str = "leader=";

/// The leader's address in a `NotLeader` message, when it names one.
pub fn leader_hint(message: &str) -> Option<&str> {
    let (_, rest) = message.rsplit_once(LEADER_HINT)?;
    let address = rest.split_whitespace().next()?;
    (!address.is_empty()).then_some(address)
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// A failed request as it travels on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireError {
    /// What kind of failure; clients branch on this.
    pub code: ErrorCode,
    /// A human-readable explanation, safe to show to an operator.
    pub message: String,
    /// The request's trace id, also written to the server log, so a failure
    /// can be found there (random per request; for a `Closing` frame, the id
    /// of the closing event).
    pub trace_id: Uuid,
    /// For `Overloaded` from a rate limit or login throttle: wait at least
    /// this many milliseconds before sending again.
    pub retry_after_ms: Option<u64>,
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)?;
        if let Some(ms) = self.retry_after_ms {
            write!(f, " (retry after {ms} ms)")?;
        }
        write!(f, " (trace {})", self.trace_id)
    }
}

impl std::error::Error for WireError {}

#[cfg(test)]
mod tests {
    use super::ErrorCode;

    #[test]
    fn a_not_leader_message_names_the_leader_after_its_hint() {
        assert_eq!(
            super::leader_hint("not the leader; leader=10.0.0.2:7878"),
            Some("10.0.0.2:7878")
        );
        assert_eq!(super::leader_hint("not the leader; no leader yet"), None);
        assert_eq!(super::leader_hint("leader="), None);
    }

    #[test]
    fn all_lists_every_code_at_its_wire_tag() {
        let config = bincode::config::standard();
        for (tag, code) in ErrorCode::ALL.into_iter().enumerate() {
            let encoded = bincode::serde::encode_to_vec(code, config).expect("encode");
            assert_eq!(encoded, [u8::try_from(tag).expect("small tag")], "{code}");
        }
        // One past the last tag is no code: the list is complete.
        let past = [u8::try_from(ErrorCode::ALL.len()).expect("small tag")];
        let decoded: Result<(ErrorCode, usize), _> =
            bincode::serde::decode_from_slice(&past, config);
        assert!(decoded.is_err());
    }
}
