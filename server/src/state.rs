//! The state every connection task and the journal share.

use crate::auth::Auth;
use crate::cart::Carts;
use crate::catalog::Catalog;
use crate::config::Config;
use crate::notify::Notifier;
use crate::orders::OrderBook;
use crate::partners::Partners;
use crate::shard::Shards;
use crate::store::Store;
use std::sync::atomic::AtomicU64;

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
}
