//! The sequencer's state and its decisions, with no I/O: stock per product,
//! the idempotency keys seen, and the next ids.
//!
//! Every change is an [`Event`]. Deciding builds an event and applies it;
//! recovery applies the journal's events in order; both go through
//! [`Book::apply`], so a replayed book equals the book that decided.

use flashsale_protocol::{
    ErrorCode, OrderId, OrderInfo, OrderLine, OrderSource, OrderStatus, PartnerRef, ProductId,
    UserId,
};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use uuid::Uuid;

/// Largest stock a product may hold; keeps every sum far from overflow.
pub const MAX_STOCK: u64 = 1 << 48;

/// One durable change, as written to the journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    /// A product was created.
    ProductCreated {
        /// Its id.
        id: ProductId,
        /// Its unique name.
        name: String,
        /// Unit price in cents.
        price_cents: u64,
        /// Initial stock.
        stock: u64,
    },
    /// Stock was added to a product.
    Restocked {
        /// The product.
        product_id: ProductId,
        /// Units added.
        qty: u64,
    },
    /// An order was accepted and decided (confirmed or rejected).
    OrderDecided(OrderInfo),
}

/// A pay intent waiting for its decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderIntent {
    /// The buyer.
    pub user_id: UserId,
    /// The lines, sorted by product id, each product once.
    pub items: Vec<OrderLine>,
    /// Cart checkout or express.
    pub source: OrderSource,
    /// The buyer's key for this intent.
    pub idempotency_key: Uuid,
    /// The partner acting for the buyer, if any.
    pub partner: Option<PartnerRef>,
}

/// The outcome of deciding an intent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// A new order; its event must be journaled.
    New(OrderInfo),
    /// The buyer already has an order for this key: this one.
    Duplicate(OrderId),
}

/// Stock and keys, owned by the sequencer alone.
#[derive(Debug, Default)]
pub struct Book {
    stock: HashMap<ProductId, u64>,
    names: HashSet<String>,
    keys: HashMap<(UserId, Uuid), OrderId>,
    next_order_id: u64,
    next_product_id: u64,
}

impl Book {
    /// An empty book.
    pub fn new() -> Self {
        Self {
            next_order_id: 1,
            next_product_id: 1,
            ..Self::default()
        }
    }

    /// Stock of a product, `None` if it does not exist.
    pub fn stock(&self, id: ProductId) -> Option<u64> {
        self.stock.get(&id).copied()
    }

    /// Decides an intent in arrival order: all lines are reserved or none.
    pub fn decide(&mut self, intent: OrderIntent, now_ms: u64) -> Decision {
        if let Some(&existing) = self.keys.get(&(intent.user_id, intent.idempotency_key)) {
            return Decision::Duplicate(existing);
        }
        let status = self.check_lines(&intent.items);
        let order = OrderInfo {
            id: OrderId(self.next_order_id),
            user_id: intent.user_id,
            items: intent.items,
            status,
            source: intent.source,
            idempotency_key: intent.idempotency_key,
            decided_at_ms: now_ms,
            partner: intent.partner,
        };
        self.apply_order(&order);
        Decision::New(order)
    }

    fn check_lines(&self, items: &[OrderLine]) -> OrderStatus {
        for line in items {
            let code = match self.stock.get(&line.product_id) {
                None => ErrorCode::NotFound,
                Some(&left) if left < u64::from(line.qty) => ErrorCode::SoldOut,
                Some(_) => continue,
            };
            return OrderStatus::Rejected {
                code,
                product_id: line.product_id,
            };
        }
        OrderStatus::Confirmed
    }

    /// Builds the event creating a product, or says why it cannot be created.
    pub fn create_product(
        &mut self,
        name: String,
        price_cents: u64,
        stock: u64,
    ) -> Result<Event, ErrorCode> {
        if self.names.contains(&name) {
            return Err(ErrorCode::AlreadyExists);
        }
        if stock > MAX_STOCK {
            return Err(ErrorCode::BadRequest);
        }
        let event = Event::ProductCreated {
            id: ProductId(self.next_product_id),
            name,
            price_cents,
            stock,
        };
        self.apply(&event);
        Ok(event)
    }

    /// Builds the event restocking a product, or says why it cannot be done.
    pub fn restock(&mut self, product_id: ProductId, qty: u64) -> Result<Event, ErrorCode> {
        let left = self.stock(product_id).ok_or(ErrorCode::NotFound)?;
        if qty == 0 || left.saturating_add(qty) > MAX_STOCK {
            return Err(ErrorCode::BadRequest);
        }
        let event = Event::Restocked { product_id, qty };
        self.apply(&event);
        Ok(event)
    }

    /// Applies a decided order: takes a confirmed order's lines out of stock
    /// and remembers its key.
    fn apply_order(&mut self, order: &OrderInfo) {
        if order.status == OrderStatus::Confirmed {
            for line in &order.items {
                if let Some(left) = self.stock.get_mut(&line.product_id) {
                    // check_lines proved left >= qty before the order was built.
                    debug_assert!(*left >= u64::from(line.qty));
                    *left = left.saturating_sub(u64::from(line.qty));
                }
            }
        }
        self.keys
            .insert((order.user_id, order.idempotency_key), order.id);
        self.next_order_id = self.next_order_id.max(order.id.0.saturating_add(1));
    }

    /// Applies one event. Deciding and replaying both come here.
    pub fn apply(&mut self, event: &Event) {
        match event {
            Event::ProductCreated {
                id, name, stock, ..
            } => {
                self.stock.insert(*id, *stock);
                self.names.insert(name.clone());
                self.next_product_id = self.next_product_id.max(id.0.saturating_add(1));
            }
            Event::Restocked { product_id, qty } => {
                if let Some(left) = self.stock.get_mut(product_id) {
                    *left = left.saturating_add(*qty);
                }
            }
            Event::OrderDecided(order) => self.apply_order(order),
        }
    }
}

#[cfg(test)]
mod tests;
