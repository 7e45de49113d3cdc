//! [`Client`]: typed methods over one multiplexed connection (or a small
//! pool), in layers: this file holds the handle and its connection pool
//! (connect, reconnect and resume, send with retries); [`session`] logs in
//! and out; [`buyer`] is the shop, cart, pay and order API; [`admin`] the
//! operators' API; [`backup`] an online backup streamed on its own
//! connection; [`placed`] an accepted order and the push stream.

use crate::config::ClientConfig;
use crate::connection::Connection;
use crate::error::{ClientError, Result};
use flashsale_protocol::{BuyerRef, CodecError, ErrorCode, Push, Reply, RequestBody};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use tokio::net::ToSocketAddrs;
use tokio::sync::broadcast;

/// Matches a reply against the one expected pattern; anything else is
/// `ClientError::Unexpected`.
macro_rules! expect_reply {
    ($reply:expr, $pattern:pat => $value:expr) => {
        match $reply {
            $pattern => Ok($value),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    };
}

mod admin;
mod backup;
mod buyer;
mod placed;
mod session;

pub use admin::{ApiKey, OrderPage};
pub use backup::BackupStream;
pub use placed::{PlacedOrder, Pushes};
pub use session::Session;

/// A handle to a flashsale server over one connection (or a pool of
/// [`ClientConfig::connections`]). Cheap to clone; every clone shares the
/// connections and the session, and many requests can be in flight at once.
///
/// When a connection drops, the next request on it reconnects and resumes
/// the session; `pay` and `buy` retry by themselves with the same
/// idempotency key, so a dropped connection never turns one intent into two
/// orders.
///
/// A partner logs in with [`Client::login_api_key`] and acts for its buyers
/// through [`Client::acting_for`].
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
    /// The partner's buyer this handle acts for, sent with every request.
    on_behalf_of: Option<BuyerRef>,
}

/// One pooled connection.
struct Slot {
    /// The live connection; replaced when it drops.
    current: RwLock<Arc<Connection>>,
    /// Held while reconnecting, so concurrent callers reconnect once.
    reconnecting: tokio::sync::Mutex<()>,
}

struct Inner {
    /// Where the server is (every node of a cluster), resolved once at connect.
    addrs: Vec<SocketAddr>,
    /// The node that last accepted a connection (a cluster's leader), or
    /// the leader a standby named: tried first by the next (re)connect.
    preferred: Mutex<Option<SocketAddr>>,
    config: ClientConfig,
    /// The pool; requests take turns.
    slots: Vec<Slot>,
    /// Next slot to use.
    next_slot: AtomicUsize,
    /// The session to resume after a reconnect.
    token: Mutex<Option<String>>,
    /// Pushes of every connection this client has had.
    pushes: broadcast::Sender<Push>,
}

/// Longest pause between two rounds of a cluster's nodes while they answer
/// `NotLeader`: a round is a few connection attempts, and a longer pause
/// would only add to the failover's pause once a new leader serves.
const MAX_ROUND_PAUSE: std::time::Duration = std::time::Duration::from_millis(250);

impl Inner {
    /// Opens a connection to the node that serves: the preferred one
    /// first, then each address in turn. While nodes answer `NotLeader` (a
    /// cluster between two leaders), tries again with growing pauses until
    /// [`ClientConfig::failover_timeout`]; any other failure of every node
    /// is returned at once.
    async fn open_any(&self) -> Result<Connection> {
        let deadline = tokio::time::Instant::now() + self.config.failover_timeout;
        let mut pause = self
            .config
            .retry_backoff
            .max(std::time::Duration::from_millis(10));
        loop {
            let preferred = *self.preferred.lock().unwrap_or_else(|e| e.into_inner());
            let mut candidates: Vec<SocketAddr> = preferred.into_iter().collect();
            candidates.extend(self.addrs.iter().filter(|a| Some(**a) != preferred));
            let mut last_error = None;
            let mut standby_seen = false;
            let mut tried = 0;
            // Each address at most once a round: standbys naming each other
            // (a stale hint) must not make a tight loop.
            while tried < candidates.len() && tokio::time::Instant::now() < deadline {
                let addr = candidates[tried];
                tried += 1;
                match Connection::open(addr, self.config.clone(), self.pushes.clone()).await {
                    Ok(conn) => {
                        *self.preferred.lock().unwrap_or_else(|e| e.into_inner()) = Some(addr);
                        return Ok(conn);
                    }
                    Err(ClientError::Server(e)) if e.code == ErrorCode::NotLeader => {
                        standby_seen = true;
                        let hint = flashsale_protocol::leader_hint(&e.message)
                            .and_then(|h| h.parse::<SocketAddr>().ok());
                        if let Some(leader) = hint.filter(|h| !candidates.contains(h)) {
                            candidates.insert(tried, leader);
                        } else if let Some(leader) = hint {
                            // Known, not tried yet this round: try it next.
                            if let Some(at) = candidates[tried..].iter().position(|c| *c == leader)
                            {
                                candidates.swap(tried, tried + at);
                            }
                        }
                        tracing::debug!(%addr, hint = ?hint, "a standby; trying the next node");
                        last_error = Some(ClientError::Server(e));
                    }
                    // A node going away (or resetting) mid-handshake: the next.
                    Err(
                        e @ (ClientError::Connect(_)
                        | ClientError::Timeout(_)
                        | ClientError::Disconnected(_)
                        | ClientError::Codec(CodecError::Io(_))),
                    ) => {
                        last_error = Some(e);
                    }
                    Err(other) => return Err(other),
                }
            }
            let error = last_error.unwrap_or(ClientError::Disconnected(None));
            if !standby_seen || tokio::time::Instant::now() + pause > deadline {
                return Err(error);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2)
                .min(self.config.max_retry_backoff)
                .min(MAX_ROUND_PAUSE);
        }
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("on_behalf_of", &self.on_behalf_of)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Connects with the default configuration and completes the handshake.
    ///
    /// # Errors
    /// The connection or handshake failed (for example `UnsupportedVersion`).
    pub async fn connect(addr: impl ToSocketAddrs) -> Result<Self> {
        Self::connect_with(addr, ClientConfig::default()).await
    }

    /// Connects with `config` (opening `config.connections` connections)
    /// and completes the handshakes.
    ///
    /// # Errors
    /// A connection or handshake failed.
    pub async fn connect_with(addr: impl ToSocketAddrs, config: ClientConfig) -> Result<Self> {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host(addr)
            .await
            .map_err(ClientError::Connect)?
            .collect();
        Self::connect_addrs(addrs, config).await
    }

    /// Connects to whichever of `nodes` serves: a comma-separated list of
    /// `HOST:PORT`, one server or every node of a cluster. A cluster's
    /// standbys answer the handshake with `NotLeader` (naming the leader
    /// when they know it); the client goes to the leader, and after a
    /// failover finds the new one (see [`ClientConfig::failover_timeout`]).
    ///
    /// # Errors
    /// An address does not resolve, or no node accepted a connection.
    pub async fn connect_nodes(nodes: &str, config: ClientConfig) -> Result<Self> {
        let mut addrs = Vec::new();
        for node in nodes.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let resolved = tokio::net::lookup_host(node)
                .await
                .map_err(ClientError::Connect)?;
            addrs.extend(resolved);
        }
        Self::connect_addrs(addrs, config).await
    }

    async fn connect_addrs(addrs: Vec<SocketAddr>, config: ClientConfig) -> Result<Self> {
        if addrs.is_empty() {
            return Err(ClientError::Connect(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "no server address",
            )));
        }
        let (pushes, _) = broadcast::channel(config.push_buffer.max(1));
        let mut inner = Inner {
            addrs,
            preferred: Mutex::new(None),
            config,
            slots: Vec::new(),
            next_slot: AtomicUsize::new(0),
            token: Mutex::new(None),
            pushes,
        };
        for _ in 0..inner.config.connections.max(1) {
            let conn = inner.open_any().await?;
            inner.slots.push(Slot {
                current: RwLock::new(Arc::new(conn)),
                reconnecting: tokio::sync::Mutex::new(()),
            });
        }
        Ok(Self {
            inner: Arc::new(inner),
            on_behalf_of: None,
        })
    }

    /// A handle that acts for the partner's buyer `buyer` (created by its
    /// first `CartAdd` or `Buy` that passes its checks; reads of a buyer
    /// never used find nothing and create nothing). Shares this client's connections and session; needs a partner
    /// session (see [`Client::login_api_key`]).
    pub fn acting_for(&self, buyer: impl Into<String>) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
            on_behalf_of: Some(BuyerRef(buyer.into())),
        }
    }

    fn current(&self, slot: usize) -> Arc<Connection> {
        // A poisoned lock only means a panic elsewhere; the Arc inside is intact.
        let current = &self.inner.slots[slot].current;
        Arc::clone(&current.read().unwrap_or_else(|e| e.into_inner()))
    }

    fn set_token(&self, token: Option<String>) {
        *self.inner.token.lock().unwrap_or_else(|e| e.into_inner()) = token;
    }

    fn token(&self) -> Option<String> {
        self.inner
            .token
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The live connection of `slot`, reconnecting (and resuming the
    /// session) if it dropped.
    async fn connection(&self, slot: usize) -> Result<Arc<Connection>> {
        let conn = self.current(slot);
        if !conn.is_closed() {
            return Ok(conn);
        }
        let _reconnecting = self.inner.slots[slot].reconnecting.lock().await;
        let conn = self.current(slot);
        if !conn.is_closed() {
            return Ok(conn);
        }
        let fresh = Arc::new(self.inner.open_any().await?);
        let resumed = match self.token() {
            Some(token) => fresh
                .request(RequestBody::Resume { token }, None)
                .await
                .map(|_| ()),
            None => Ok(()),
        };
        match resumed {
            Err(e) if e.code() != Some(ErrorCode::Unauthenticated) => Err(e),
            resumed => {
                if resumed.is_err() {
                    // The session ended (logged out elsewhere, or lost): keep
                    // the connection so the app can log in again.
                    self.set_token(None);
                }
                let current = &self.inner.slots[slot].current;
                *current.write().unwrap_or_else(|e| e.into_inner()) = Arc::clone(&fresh);
                tracing::debug!(slot, "reconnected");
                resumed.map(|()| fresh)
            }
        }
    }

    /// Sends any request and returns the raw reply. Reconnects first if the
    /// connection dropped, but never sends a request twice.
    ///
    /// # Errors
    /// The server refused the request, or the connection failed.
    pub async fn request(&self, body: RequestBody) -> Result<Reply> {
        let slot = self.inner.next_slot.fetch_add(1, Ordering::Relaxed) % self.inner.slots.len();
        self.connection(slot)
            .await?
            .request(body, self.on_behalf_of.clone())
            .await
    }

    /// Sends an idempotent request, retrying retryable failures with backoff
    /// (see [`ClientConfig::pay_attempts`]).
    async fn request_with_retries(&self, body: RequestBody) -> Result<Reply> {
        let config = &self.inner.config;
        let mut backoff = config.retry_backoff;
        let mut attempt = 1;
        loop {
            match self.request(body.clone()).await {
                Err(e) if e.is_retryable() && attempt < config.pay_attempts.max(1) => {
                    tracing::debug!(error = %e, attempt, "retrying with the same idempotency key");
                    // The server's hint (a rate limit's wait) wins when longer.
                    // (capped by the request timeout: a faulty server cannot stall us longer).
                    let asked = e.retry_after().unwrap_or_default();
                    tokio::time::sleep(backoff.max(asked.min(config.request_timeout))).await;
                    backoff = (backoff * 2).min(config.max_retry_backoff);
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// True when a connection of the pool is gone (the next request on it reconnects).
    pub fn is_closed(&self) -> bool {
        (0..self.inner.slots.len()).any(|slot| self.current(slot).is_closed())
    }

    /// Every push from now on, on every connection of the pool and the ones
    /// that replace them: new orders placed by the buyer's *other* sessions
    /// (never the order a `pay`/`buy` of this session placed: its answer
    /// carries it), and later changes such as an operator's cancellation (for
    /// a partner: of its buyers' orders).
    pub fn pushes(&self) -> Pushes {
        Pushes {
            rx: self.inner.pushes.subscribe(),
        }
    }
}
