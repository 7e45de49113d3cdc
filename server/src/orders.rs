//! The published order book: every durable order, for `GetOrder`,
//! `ListOrders` and idempotent retries.
//!
//! Orders are kept in memory (the journal on disk is their source of truth
//! and is replayed at start), so reads never wait for disk.

use crate::book::Event;
use flashsale_protocol::{OrderId, OrderInfo, OrderStatus, UserId};
use std::collections::HashMap;
use std::sync::RwLock;
use uuid::Uuid;

#[derive(Debug, Default)]
struct Orders {
    by_id: HashMap<OrderId, OrderInfo>,
    /// Each buyer's order ids, ascending (ids grow in decision order).
    by_user: HashMap<UserId, Vec<OrderId>>,
    by_key: HashMap<(UserId, Uuid), OrderId>,
    /// Each partner's buyers' order ids, ascending.
    by_partner: HashMap<UserId, Vec<OrderId>>,
    confirmed: u64,
    rejected: u64,
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
pub struct OrderBook {
    inner: RwLock<Orders>,
}

impl OrderBook {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Orders> {
        // A poisoned lock only means a panic elsewhere; the maps stay consistent.
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    /// One order, whoever owns it.
    pub fn get(&self, id: OrderId) -> Option<OrderInfo> {
        self.read().by_id.get(&id).cloned()
    }

    /// The buyer's order for a pay intent, if there is one.
    pub fn find_by_key(&self, user: UserId, key: Uuid) -> Option<OrderInfo> {
        let orders = self.read();
        orders
            .by_key
            .get(&(user, key))
            .and_then(|id| orders.by_id.get(id))
            .cloned()
    }

    /// A buyer's orders with ids above `after`, at most `limit`.
    pub fn list_for_user(
        &self,
        user: UserId,
        after: Option<OrderId>,
        limit: usize,
    ) -> Vec<OrderInfo> {
        let orders = self.read();
        page(&orders, orders.by_user.get(&user), after, limit)
    }

    /// The orders of all a partner's buyers with ids above `after`, at most `limit`.
    pub fn list_for_partner(
        &self,
        partner: UserId,
        after: Option<OrderId>,
        limit: usize,
    ) -> Vec<OrderInfo> {
        let orders = self.read();
        page(&orders, orders.by_partner.get(&partner), after, limit)
    }

    /// (confirmed, rejected) order counts.
    pub fn counts(&self) -> (u64, u64) {
        let orders = self.read();
        (orders.confirmed, orders.rejected)
    }

    /// Applies a batch of durable events under one lock.
    pub fn apply(&self, events: &[Event]) {
        let mut orders = self.inner.write().unwrap_or_else(|e| e.into_inner());
        for event in events {
            if let Event::OrderDecided(order) = event {
                match order.status {
                    OrderStatus::Confirmed => orders.confirmed += 1,
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
