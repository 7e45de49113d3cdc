//! Client configuration, with documented defaults.

use crate::tls::ClientTls;
use std::time::Duration;

/// How a [`crate::Client`] behaves. Start from `ClientConfig::default()`.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Connections in the pool; requests take turns. One connection already
    /// carries hundreds of thousands of requests a second; a few more spread
    /// the work over the server's cores. Default 1.
    pub connections: usize,
    /// Time to connect and complete the handshake. Default 10 s.
    pub connect_timeout: Duration,
    /// Time one request may wait for its answer; it fails with `Timeout`
    /// then, or at most one tick of the connection's timeout clock later
    /// (1/16 of this, within 10 ms to 1 s). Default 30 s.
    pub request_timeout: Duration,
    /// Requests in flight on one connection before callers wait, and the
    /// most attempts in flight on an [`crate::OrderStream`]. Default 1024,
    /// the server's default per-connection limit.
    pub max_in_flight: usize,
    /// Pushes buffered for subscribers; a subscriber that falls further
    /// behind skips the pushes it missed (logged at WARN). Default 4096.
    pub push_buffer: usize,
    /// Largest frame accepted from the server, and sent to it (the server
    /// itself accepts request frames of 64 KiB by default). Default 16 MiB.
    pub max_frame_len: usize,
    /// Attempts of one `pay`/`buy` intent, all with the same idempotency
    /// key, while the failure is retryable ([`crate::ClientError::is_retryable`]:
    /// the connection drops or cannot be made, a timeout, `Overloaded`,
    /// `ShuttingDown`, `Internal`). A retry waits at least the server's
    /// `retry_after_ms`, capped at [`ClientConfig::request_timeout`].
    /// Default 5.
    pub pay_attempts: u32,
    /// Wait before the first retry; doubled for each further one, up to
    /// [`ClientConfig::max_retry_backoff`]. Default 50 ms.
    pub retry_backoff: Duration,
    /// Longest wait between two retries. Default 2 s.
    pub max_retry_backoff: Duration,
    /// How long a (re)connect keeps going round a cluster's nodes while
    /// they answer `NotLeader` (no leader yet: a failover takes a few
    /// seconds), with pauses from [`ClientConfig::retry_backoff`] doubling
    /// up to 250 ms (or [`ClientConfig::max_retry_backoff`] when shorter). A node that refuses the TCP
    /// connection does not count: if every node does, connecting fails at
    /// once. Default 30 s.
    pub failover_timeout: Duration,
    /// Name sent in `Hello`, shown in the server's logs. Default `flashsale-client/<version>`.
    pub client_name: String,
    /// Speak TLS to the server (see [`ClientTls`]). Default `None`: plain TCP.
    pub tls: Option<ClientTls>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            connections: 1,
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            max_in_flight: 1024,
            push_buffer: 4096,
            max_frame_len: flashsale_protocol::DEFAULT_MAX_REPLY_FRAME_LEN,
            pay_attempts: 5,
            retry_backoff: Duration::from_millis(50),
            max_retry_backoff: Duration::from_secs(2),
            failover_timeout: Duration::from_secs(30),
            client_name: concat!("flashsale-client/", env!("CARGO_PKG_VERSION")).to_owned(),
            tls: None,
        }
    }
}
