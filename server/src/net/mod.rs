//! The network edge: one task per client connection (handshake, read loop,
//! writer), the sessions on it, and what protects the server from its
//! clients (TLS, login throttle, pay rate limits). Requests leave here for
//! [`crate::api`]; answers come back through [`reply`].

pub(crate) mod connection;
pub(crate) mod login_throttle;
pub(crate) mod notifier;
pub(crate) mod rate_limit;
pub(crate) mod reply;
pub(crate) mod tls;
