//! The published order book: every durable order, for `GetOrder`,
//! `ListOrders` and idempotent retries.
//!
//! Orders are kept in memory (the journal on disk is their source of truth
//! and is replayed at start), so reads never wait for disk.

use crate::error::{ApiError, ApiResult};
use crate::sale::book::Event;
use flashsale_protocol::{
    OrderId, OrderInfo, OrderLine, OrderSource, OrderStatus, ProductId, Reply, StatusFilter, UserId,
};
use hashbrown::HashMap;
use std::collections::BTreeMap;
use std::hash::RandomState;
use std::sync::RwLock;
use uuid::Uuid;

/// Most orders one [`OrderBook::query`] examines, so an operator's filtered
/// listing never holds the lock that publishing needs for long.
pub(crate) const MAX_QUERY_SCAN: usize = 100_000;

/// The maps hold every durable order (confirmed, rejected and cancelled)
/// for the life of the data dir, like the journal they are replayed from: a
/// retry with the same key must get the same answer, so a rejected order is
/// kept too. Bound: the orders the sequencer accepted, which the pay rate
/// limits bound over time (`pay_rate_per_buyer`, `pay_rate_per_partner`,
/// `pay_rate_per_connection`); eviction: none (a restart replays them all).
#[derive(Debug, Default)]
struct Orders {
    /// Every order, in id (decision) order. Keyed by the server's ids.
    by_id: BTreeMap<OrderId, OrderInfo>,
    /// Each buyer's order ids, ascending (ids grow in decision order). One
    /// entry per buyer with an order.
    by_user: HashMap<UserId, Vec<OrderId>>,
    /// Keys chosen by clients: SipHash with random keys (no aimed
    /// collisions). One entry per order.
    by_key: HashMap<(UserId, Uuid), OrderId, RandomState>,
    /// Each partner's buyers' order ids, ascending. One entry per partner
    /// with an order.
    by_partner: HashMap<UserId, Vec<OrderId>>,
    /// Units each buyer holds of each product in confirmed, uncancelled
    /// orders: the purchase-limit check is one lookup. Bound: one entry
    /// per (buyer, product) with a confirmed line; eviction: an entry
    /// leaves when cancellations bring it to 0.
    held: HashMap<(UserId, ProductId), u64>,
    confirmed: u64,
    rejected: u64,
    cancelled: u64,
}

/// Order counts since the data dir was created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct OrderCounts {
    /// Orders confirmed (cancelled ones included).
    pub(crate) confirmed: u64,
    /// Orders rejected by the sequencer.
    pub(crate) rejected: u64,
    /// Orders cancelled by operators.
    pub(crate) cancelled: u64,
}

impl Orders {
    /// Marks a confirmed order cancelled.
    fn cancel(&mut self, id: OrderId) {
        let Some(order) = self.by_id.get_mut(&id) else {
            return;
        };
        if order.status == OrderStatus::Confirmed {
            order.status = OrderStatus::Cancelled;
            self.cancelled += 1;
            let user = order.user_id;
            for line in &order.items {
                let key = (user, line.product_id);
                if let Some(held) = self.held.get_mut(&key) {
                    *held = held.saturating_sub(u64::from(line.qty));
                    if *held == 0 {
                        self.held.remove(&key);
                    }
                }
            }
        }
    }

    /// Counts a confirmed order's lines as held by its buyer.
    fn hold(&mut self, order: &OrderInfo) {
        for line in &order.items {
            *self
                .held
                .entry((order.user_id, line.product_id))
                .or_insert(0) += u64::from(line.qty);
        }
    }
}

/// Orders of `ids` (ascending) above `after`, at most `limit`.
fn page(
    orders: &Orders,
    ids: Option<&Vec<OrderId>>,
    after: Option<OrderId>,
    limit: usize,
) -> Vec<OrderInfo> {
    let Some(ids) = ids else {
        return Vec::new();
    };
    let start = after.map_or(0, |after| ids.partition_point(|id| *id <= after));
    ids[start..]
        .iter()
        .take(limit)
        .filter_map(|id| orders.by_id.get(id).cloned())
        .collect()
}

/// Durable orders, readable from any task.
#[derive(Debug, Default)]
pub(crate) struct OrderBook {
    inner: RwLock<Orders>,
}

impl OrderBook {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Orders> {
        // A poisoned lock only means a panic elsewhere; the maps stay consistent.
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    /// One order, whoever owns it.
    pub(crate) fn get(&self, id: OrderId) -> Option<OrderInfo> {
        self.read().by_id.get(&id).cloned()
    }

    /// The buyer's order for a pay intent, if there is one.
    pub(crate) fn find_by_key(&self, user: UserId, key: Uuid) -> Option<OrderInfo> {
        let orders = self.read();
        orders
            .by_key
            .get(&(user, key))
            .and_then(|id| orders.by_id.get(id))
            .cloned()
    }

    /// The answer to a pay intent refused with `refusal`: the order the
    /// intent already made if it made one (a retry of an intent whose order
    /// sold the product out or emptied the cart gets its order, not the
    /// refusal), else the refusal. The one place a retry is looked up.
    /// A key that names an order of another request (`source`, `items`; see
    /// [`crate::sale::book::same_request`]) gets `IdempotencyKeyReused`.
    pub(crate) fn retry_or(
        &self,
        user: UserId,
        key: Uuid,
        request: (OrderSource, &[OrderLine]),
        refusal: ApiError,
    ) -> ApiResult<Reply> {
        match self.find_by_key(user, key) {
            Some(order) if crate::sale::book::same_request(&order, request.0, request.1) => {
                Ok(Reply::Accepted(order))
            }
            Some(_) => Err(ApiError::key_reused()),
            None => Err(refusal),
        }
    }

    /// A buyer's orders with ids above `after`, at most `limit`.
    pub(crate) fn list_for_user(
        &self,
        user: UserId,
        after: Option<OrderId>,
        limit: usize,
    ) -> Vec<OrderInfo> {
        let orders = self.read();
        page(&orders, orders.by_user.get(&user), after, limit)
    }

    /// The orders of all a partner's buyers with ids above `after`, at most `limit`.
    pub(crate) fn list_for_partner(
        &self,
        partner: UserId,
        after: Option<OrderId>,
        limit: usize,
    ) -> Vec<OrderInfo> {
        let orders = self.read();
        page(&orders, orders.by_partner.get(&partner), after, limit)
    }

    /// Order counts since the data dir was created.
    pub(crate) fn counts(&self) -> OrderCounts {
        let orders = self.read();
        OrderCounts {
            confirmed: orders.confirmed,
            rejected: orders.rejected,
            cancelled: orders.cancelled,
        }
    }

    /// Units of `product` that `user` holds in durable confirmed,
    /// uncancelled orders: one lookup (kept by [`OrderBook::apply`]); only
    /// asked for products with a purchase limit.
    pub(crate) fn held(&self, user: UserId, product: ProductId) -> u64 {
        self.read().held.get(&(user, product)).copied().unwrap_or(0)
    }

    /// Every buyer's orders with ids above `after` that have a line of
    /// `product` (if given) and are in `status` (if given): at most `limit`
    /// of them, examining at most [`MAX_QUERY_SCAN`] orders. Also returns the
    /// id to continue after, `None` when no order is left to examine.
    pub(crate) fn query(
        &self,
        after: Option<OrderId>,
        limit: usize,
        product: Option<ProductId>,
        status: Option<StatusFilter>,
    ) -> (Vec<OrderInfo>, Option<OrderId>) {
        let orders = self.read();
        let start = after.map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded);
        let mut found = Vec::new();
        let mut last_examined = None;
        let mut scan = orders.by_id.range((start, std::ops::Bound::Unbounded));
        for (examined, (id, order)) in scan.by_ref().enumerate() {
            if found.len() >= limit || examined >= MAX_QUERY_SCAN {
                // `id` is not examined: continue from the one before it.
                return (found, last_examined.or(after));
            }
            last_examined = Some(*id);
            let product_matches =
                product.is_none_or(|p| order.items.iter().any(|l| l.product_id == p));
            if product_matches && status.is_none_or(|s| s.matches(order.status)) {
                found.push(order.clone());
            }
        }
        (found, None)
    }

    /// Applies a batch of durable events under one lock.
    pub(crate) fn apply(&self, events: &[Event]) {
        let mut orders = self.inner.write().unwrap_or_else(|e| e.into_inner());
        for event in events {
            if let Event::OrderCancelled { order_id, .. } = event {
                orders.cancel(*order_id);
            }
            if let Event::OrderDecided(order) = event {
                match order.status {
                    OrderStatus::Confirmed => {
                        orders.confirmed += 1;
                        orders.hold(order);
                    }
                    OrderStatus::Rejected { .. } => orders.rejected += 1,
                    OrderStatus::Pending | OrderStatus::Cancelled => {}
                }
                orders
                    .by_user
                    .entry(order.user_id)
                    .or_default()
                    .push(order.id);
                if let Some(partner) = &order.partner {
                    orders
                        .by_partner
                        .entry(partner.partner_id)
                        .or_default()
                        .push(order.id);
                }
                orders
                    .by_key
                    .insert((order.user_id, order.idempotency_key), order.id);
                orders.by_id.insert(order.id, order.clone());
            }
        }
    }
}
