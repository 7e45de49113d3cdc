//! The state every connection task and the journal share.

use crate::auth::Auth;
use crate::cart::Carts;
use crate::catalog::Catalog;
use crate::config::Config;
use crate::error::{ApiError, ApiResult};
use crate::notify::Notifier;
use crate::orders::OrderBook;
use crate::partners::Partners;
use crate::ratelimit::PayLimits;
use crate::shard::Shards;
use crate::store::Store;
use crate::throttle::LoginThrottle;
use flashsale_protocol::ErrorCode;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Instant;

/// Shared server state, behind one `Arc`.
#[derive(Debug)]
pub struct Shared {
    /// The configuration in force.
    pub config: Config,
    /// The data dir.
    pub store: Store,
    /// Accounts and sessions.
    pub auth: Auth,
    /// Carts.
    pub carts: Carts,
    /// Partners' buyer references.
    pub partners: Partners,
    /// Products with durable stock figures.
    pub catalog: Catalog,
    /// Durable orders.
    pub orders: OrderBook,
    /// Live connections by buyer, for pushes.
    pub notifier: Notifier,
    /// The pay queues into the sequencer.
    pub shards: Shards,
    /// Open client connections.
    pub connections: AtomicU64,
    /// Pay decisions since start, for operators.
    pub counters: Counters,
    /// Pay rate limits per account.
    pub pay_limits: PayLimits,
    /// Failed-login backoff.
    pub login_throttle: LoginThrottle,
    /// Password hashes computed at once (each takes ~19 MiB and a core for
    /// milliseconds); a login flood waits here instead of exhausting memory.
    pub hashing: tokio::sync::Semaphore,
}

/// Counters of pay decisions since the server started (for `Stats`).
#[derive(Debug)]
pub struct Counters {
    /// When the server started.
    pub started: Instant,
    /// Orders decided by the sequencer and published.
    pub decided: AtomicU64,
}

impl Counters {
    /// Zeroed counters, started now.
    pub fn new() -> Self {
        Self {
            started: Instant::now(),
            decided: AtomicU64::new(0),
        }
    }
}

impl Default for Counters {
    fn default() -> Self {
        Self::new()
    }
}

impl Shared {
    /// Runs password-hashing work on the blocking pool, at most
    /// [`Shared::hashing`]'s permits at a time.
    pub async fn hash_blocking<T: Send + 'static>(
        self: &Arc<Self>,
        work: impl FnOnce(&Shared) -> ApiResult<T> + Send + 'static,
    ) -> ApiResult<T> {
        let _permit = self
            .hashing
            .acquire()
            .await
            .map_err(|_| ApiError::shutting_down())?;
        let shared = Arc::clone(self);
        tokio::task::spawn_blocking(move || work(&shared))
            .await
            .unwrap_or_else(|e| {
                Err(ApiError::new(
                    ErrorCode::Internal,
                    format!("task failed: {e}"),
                ))
            })
    }
}
