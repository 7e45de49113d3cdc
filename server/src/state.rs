//! The state every connection task and the journal share, in three parts
//! that follow the folders: [`Accounts`] (who may do what), [`Sale`] (what
//! is for sale and what was sold: the published state and the way into the
//! sequencer) and [`Edge`] (the live connections). Each part is built from
//! the configuration in one place ([`Shared::new`]).

use crate::accounts::auth::Auth;
use crate::accounts::partners::Partners;
use crate::config::Config;
use crate::error::{ApiError, ApiResult, ServerError};
use crate::net::login_throttle::LoginThrottle;
use crate::net::notifier::Notifier;
use crate::net::rate_limit::PayLimits;
use crate::sale::carts::Carts;
use crate::sale::catalog::Catalog;
use crate::sale::keys::KeyIndex;
use crate::sale::materialise::Progress;
use crate::sale::order_book::OrderBook;
use crate::sale::queues::Shards;
use crate::store::syncer::Syncer;
use crate::store::Store;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio_util::sync::CancellationToken;

/// Password hashes computed at the same time (each takes ~19 MiB and a core
/// for milliseconds): a login flood waits for a slot instead of exhausting
/// memory.
const HASHING_SLOTS: usize = 4;

/// Shared server state, behind one `Arc`.
#[derive(Debug)]
pub(crate) struct Shared {
    /// The configuration in force.
    pub(crate) config: Config,
    /// The data dir.
    pub(crate) store: Store,
    /// Group commit for cart and account writes (answers once on disk).
    pub(crate) syncer: Syncer,
    /// Accounts, sessions and partners' buyers.
    pub(crate) accounts: Accounts,
    /// Products, orders, carts, and the queues into the sequencer.
    pub(crate) sale: Sale,
    /// Live connections and what limits them.
    pub(crate) edge: Edge,
    /// When the server started (for `Stats`' uptime).
    pub(crate) started: Instant,
    /// Online backups: how many may stream at once, and their ids.
    pub(crate) backups: crate::api::backup::Backups,
    /// Cluster mode: the node's role and its outbox to the replicated log;
    /// `None` on a single server.
    pub(crate) cluster: Option<Arc<crate::cluster::ClusterState>>,
}

/// Who may do what: accounts and sessions, partners' buyers, and what
/// protects logins.
#[derive(Debug)]
pub(crate) struct Accounts {
    /// Users, password hashes, sessions, API keys.
    pub(crate) auth: Auth,
    /// Partners' buyer references.
    pub(crate) partners: Partners,
    /// Failed-login backoff.
    pub(crate) login_throttle: LoginThrottle,
    /// Password-hashing slots ([`HASHING_SLOTS`]).
    hashing: tokio::sync::Semaphore,
}

/// What is for sale and what was sold, as of the last durable batch, and
/// the way into the sequencer.
#[derive(Debug)]
pub(crate) struct Sale {
    /// Products with durable stock figures.
    pub(crate) catalog: Catalog,
    /// Durable orders.
    pub(crate) orders: OrderBook,
    /// Idempotency keys older than the sequencer's memory.
    pub(crate) keys: Arc<KeyIndex>,
    /// How far the journal has published (the materialiser follows it).
    pub(crate) progress: Progress,
    /// Carts.
    pub(crate) carts: Carts,
    /// The pay queues into the sequencer.
    pub(crate) queues: Shards,
    /// Orders decided and published since the server started.
    decided: AtomicU64,
    /// Holds as published (set at recovery from the book, then counted
    /// from each published batch).
    holds: std::sync::Mutex<flashsale_protocol::HoldStats>,
}

/// The live connections: pushes to them, how many there are, and the pay
/// rate limits of the accounts on them.
#[derive(Debug)]
pub(crate) struct Edge {
    /// Live connections by buyer, for pushes and ended sessions.
    pub(crate) notifier: Notifier,
    /// Pay rate limits per account.
    pub(crate) pay_limits: PayLimits,
    /// Open client connections.
    connections: AtomicU64,
}

impl Shared {
    /// The state of a server on `store` with `config`, before recovery;
    /// a failed sync of cart or account writes cancels `fatal`.
    ///
    /// # Errors
    /// The accounts' trees cannot be read, or the sync thread cannot start.
    pub(crate) fn new(
        config: Config,
        store: Store,
        queues: Shards,
        fatal: CancellationToken,
    ) -> Result<Self, ServerError> {
        let cluster = config.cluster.clone().map(|c| {
            let state = Arc::new(crate::cluster::ClusterState::new(c));
            store.set_replica(Arc::clone(&state.outbox));
            state
        });
        let syncer = Syncer::spawn(store.clone(), config.sync, fatal)?;
        let accounts = Accounts {
            auth: Auth::new(store.clone(), config.password_hashing, config.session_ttl)?,
            partners: Partners::new(
                store.clone(),
                config.new_buyers_per_partner,
                config.max_buyers_per_partner,
                config.partner_buyer_cache,
            )?,
            login_throttle: LoginThrottle::new(config.login_policy),
            hashing: tokio::sync::Semaphore::new(HASHING_SLOTS),
        };
        // User ids come from sled's id generator (and in a cluster the
        // replicated counter), which never go back: every user created from
        // now on has a higher id than this.
        let first_new_user = store.next_user_id_floor()?;
        let keys = Arc::new(KeyIndex::new(
            crate::sale::tables::Tables::new(&store),
            u64::try_from(config.key_retention.as_millis()).unwrap_or(u64::MAX),
            config.key_filter_capacity,
            first_new_user,
        ));
        let catalog = Catalog::default();
        catalog.set_default_hold_ms(
            u64::try_from(config.default_hold.as_millis()).unwrap_or(u64::MAX),
        );
        let sale = Sale {
            catalog,
            orders: OrderBook::new(&store, Arc::clone(&keys)),
            keys,
            progress: Progress::default(),
            carts: Carts::new(store.clone()),
            queues,
            decided: AtomicU64::new(0),
            holds: std::sync::Mutex::default(),
        };
        let edge = Edge {
            notifier: Notifier::default(),
            pay_limits: PayLimits::new(config.pay_rate_per_buyer, config.pay_rate_per_partner),
            connections: AtomicU64::new(0),
        };
        let backups = crate::api::backup::Backups::new(config.max_backups);
        Ok(Self {
            config,
            store,
            syncer,
            accounts,
            sale,
            edge,
            started: Instant::now(),
            backups,
            cluster,
        })
    }

    /// Runs password-hashing work on the blocking pool, at most
    /// [`HASHING_SLOTS`] at a time.
    pub(crate) async fn hash_blocking<T: Send + 'static>(
        self: &Arc<Self>,
        work: impl FnOnce(&Shared) -> ApiResult<T> + Send + 'static,
    ) -> ApiResult<T> {
        let _permit = self
            .accounts
            .hashing
            .acquire()
            .await
            .map_err(|_| ApiError::shutting_down())?;
        let shared = Arc::clone(self);
        tokio::task::spawn_blocking(move || work(&shared))
            .await
            .unwrap_or_else(|e| Err(ApiError::internal(format!("hashing task failed: {e}"))))
    }
}

impl Sale {
    /// Counts orders decided and published.
    pub(crate) fn count_decided(&self, orders: u64) {
        self.decided.fetch_add(orders, Ordering::Relaxed);
    }

    /// Orders decided and published since the server started.
    pub(crate) fn decided(&self) -> u64 {
        self.decided.load(Ordering::Relaxed)
    }

    /// Holds as published.
    pub(crate) fn hold_stats(&self) -> flashsale_protocol::HoldStats {
        *self.holds.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets the hold figures (at recovery).
    pub(crate) fn set_hold_stats(&self, stats: flashsale_protocol::HoldStats) {
        *self.holds.lock().unwrap_or_else(|e| e.into_inner()) = stats;
    }

    /// Counts the holds of a published batch.
    pub(crate) fn count_holds(&self, events: &[crate::sale::book::Event]) {
        use crate::sale::book::Event;
        use flashsale_protocol::OrderStatus;
        if !events.iter().any(Event::is_hold_change) {
            return;
        }
        let mut holds = self.holds.lock().unwrap_or_else(|e| e.into_inner());
        let units = |items: &[flashsale_protocol::OrderLine]| -> u64 {
            items.iter().map(|l| u64::from(l.qty)).sum()
        };
        for event in events {
            match event {
                Event::OrderDecided(order) if matches!(order.status, OrderStatus::Held { .. }) => {
                    holds.placed += 1;
                    holds.live += 1;
                    holds.held_units += units(&order.items);
                }
                Event::HoldPaid { items, .. }
                | Event::HoldReleased { items, .. }
                | Event::HoldExpired { items, .. } => {
                    match event {
                        Event::HoldPaid { .. } => holds.paid += 1,
                        Event::HoldReleased { .. } => holds.released += 1,
                        _ => holds.expired += 1,
                    }
                    holds.live = holds.live.saturating_sub(1);
                    holds.held_units = holds.held_units.saturating_sub(units(items));
                }
                _ => {}
            }
        }
    }
}

impl Edge {
    /// A connection opened (`true`) or closed.
    pub(crate) fn count_connection(&self, open: bool) {
        if open {
            self.connections.fetch_add(1, Ordering::Relaxed);
        } else {
            self.connections.fetch_sub(1, Ordering::Relaxed);
        }
        crate::telemetry::connection(open);
    }

    /// Open client connections.
    pub(crate) fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }
}
