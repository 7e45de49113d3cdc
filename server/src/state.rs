//! The state every connection task and the journal share.

use crate::accounts::auth::Auth;
use crate::accounts::partners::Partners;
use crate::config::Config;
use crate::error::{ApiError, ApiResult};
use crate::net::login_throttle::LoginThrottle;
use crate::net::notifier::Notifier;
use crate::net::rate_limit::PayLimits;
use crate::sale::carts::Carts;
use crate::sale::catalog::Catalog;
use crate::sale::order_book::OrderBook;
use crate::sale::queues::Shards;
use crate::store::Store;
use flashsale_protocol::ErrorCode;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Instant;

/// Shared server state, behind one `Arc`.
#[derive(Debug)]
pub(crate) struct Shared {
    /// The configuration in force.
    pub(crate) config: Config,
    /// The data dir.
    pub(crate) store: Store,
    /// Accounts and sessions.
    pub(crate) auth: Auth,
    /// Carts.
    pub(crate) carts: Carts,
    /// Partners' buyer references.
    pub(crate) partners: Partners,
    /// Products with durable stock figures.
    pub(crate) catalog: Catalog,
    /// Durable orders.
    pub(crate) orders: OrderBook,
    /// Live connections by buyer, for pushes.
    pub(crate) notifier: Notifier,
    /// The pay queues into the sequencer.
    pub(crate) shards: Shards,
    /// Open client connections.
    pub(crate) connections: AtomicU64,
    /// Pay decisions since start, for operators.
    pub(crate) counters: Counters,
    /// Pay rate limits per account.
    pub(crate) pay_limits: PayLimits,
    /// Failed-login backoff.
    pub(crate) login_throttle: LoginThrottle,
    /// Password hashes computed at once (each takes ~19 MiB and a core for
    /// milliseconds); a login flood waits here instead of exhausting memory.
    pub(crate) hashing: tokio::sync::Semaphore,
}

/// Counters of pay decisions since the server started (for `Stats`).
#[derive(Debug)]
pub(crate) struct Counters {
    /// When the server started.
    pub(crate) started: Instant,
    /// Orders decided by the sequencer and published.
    pub(crate) decided: AtomicU64,
}

impl Counters {
    /// Zeroed counters, started now.
    pub(crate) fn new() -> Self {
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
    pub(crate) async fn hash_blocking<T: Send + 'static>(
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
