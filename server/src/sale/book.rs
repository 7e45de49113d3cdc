//! The sequencer's state and its decisions, with no I/O: stock and sale
//! rules per product, what each buyer holds of each product (for purchase
//! limits), the idempotency keys seen, cancelled orders, and the next ids.
//!
//! Every change is an [`Event`]. Deciding builds an event and applies it;
//! recovery applies the journal's events in order; both go through
//! [`Book::apply`], so a replayed book equals the book that decided.
//!
//! The stock invariants are executable: every change to a product's stock
//! uses checked arithmetic and then asserts, for that product,
//! `initial + restocked - confirmed == stock` (stock is unsigned, so
//! `stock >= 0` is "no subtraction underflowed"). A broken invariant panics
//! with a message naming it rather than publishing a wrong figure. The cost
//! is a few integer operations per order line.

use crate::sale::rules::{self, Refusal};
use flashsale_protocol::{
    ErrorCode, OrderId, OrderInfo, OrderLine, OrderSource, OrderStatus, PartnerRef, ProductId,
    SaleRules, UserId,
};
use hashbrown::{HashMap, HashSet};
use serde::{Deserialize, Serialize};
use std::hash::RandomState;
use uuid::Uuid;

/// Largest stock a product may hold; keeps every sum far from overflow.
pub(crate) const MAX_STOCK: u64 = 1 << 48;

/// One durable change, as written to the journal. Append-only: the journal
/// on disk stores variants by position.
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
        /// Its purchase limit and sale window.
        rules: SaleRules,
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
    /// An operator set a product's stock to an exact figure.
    StockSet {
        /// The product.
        product_id: ProductId,
        /// The stock before.
        previous: u64,
        /// The stock now.
        stock: u64,
    },
    /// An operator changed a product's purchase limit or sale window.
    RulesSet {
        /// The product.
        product_id: ProductId,
        /// The rules now in force (all of them, not only the changed part).
        rules: SaleRules,
    },
    /// An operator cancelled a confirmed order; its units went back to stock.
    OrderCancelled {
        /// The order.
        order_id: OrderId,
        /// Its buyer.
        user_id: UserId,
        /// Its lines, whose units went back.
        items: Vec<OrderLine>,
        /// When, in ms since the epoch.
        cancelled_at_ms: u64,
    },
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
    /// The buyer already has an order for this key and request: this one.
    Duplicate(OrderId),
    /// The buyer's key names an order of another request (other lines, or
    /// a cart checkout against an express one): refused, nothing changes.
    KeyReused(OrderId),
}

/// What identifies the request behind an idempotency key: its source and,
/// for `Buy`, its lines (sorted). A `Pay` is the request "check out my
/// cart" whatever the cart holds, so its lines are not part of it: a retry
/// of a pay whose cart has since changed or emptied still gets its order.
///
/// Deterministic (SipHash with fixed zero keys, never `RandomState`): it is
/// recomputed from the journal at every start, and a replayed book must
/// equal the book that decided. A client can aim a collision only at its
/// own keys, which gets it its own first order, as before this check.
pub(crate) fn request_fingerprint(source: OrderSource, items: &[OrderLine]) -> u64 {
    use std::hash::{DefaultHasher, Hasher};
    let mut hasher = DefaultHasher::new();
    match source {
        OrderSource::Cart => hasher.write_u8(0),
        OrderSource::Express => {
            hasher.write_u8(1);
            for line in items {
                hasher.write_u64(line.product_id.0);
                hasher.write_u32(line.qty);
            }
        }
    }
    hasher.finish()
}

/// True when `order` was made by the same request as (`source`, `items`):
/// see [`request_fingerprint`].
pub(crate) fn same_request(order: &OrderInfo, source: OrderSource, items: &[OrderLine]) -> bool {
    request_fingerprint(order.source, &order.items) == request_fingerprint(source, items)
}

/// A change to a product's rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RulesChange {
    /// Set (`Some`) or remove (`None`) the per-buyer limit.
    Limit(Option<u32>),
    /// Set the sale window.
    Window {
        /// Opening time, ms since the epoch; `None`: open from the start.
        opens_at_ms: Option<u64>,
        /// Closing time, ms since the epoch; `None`: never closes.
        closes_at_ms: Option<u64>,
    },
}

/// What the sequencer knows of one product: its stock, rules and ledger.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct ProductState {
    stock: u64,
    rules: SaleRules,
    /// Stock at creation.
    initial: u64,
    /// Net units operators added (restock, set-stock up) or took away
    /// (set-stock down) since creation.
    restocked: i64,
    /// Units in confirmed, uncancelled orders.
    confirmed: u64,
}

impl ProductState {
    fn new(stock: u64, rules: SaleRules) -> Self {
        Self {
            stock,
            rules,
            initial: stock,
            restocked: 0,
            confirmed: 0,
        }
    }

    /// A confirmed order takes `qty` units.
    fn take(&mut self, id: ProductId, qty: u64) {
        let Some(left) = self.stock.checked_sub(qty) else {
            panic!(
                "invariant stock >= 0 broken: product {id} has {} units and an order takes {qty}",
                self.stock
            );
        };
        self.stock = left;
        self.confirmed = self
            .confirmed
            .checked_add(qty)
            .expect("confirmed units of a product overflowed u64");
        self.assert_balanced(id);
    }

    /// A cancelled order gives `qty` units back.
    fn give_back(&mut self, id: ProductId, qty: u64) {
        let Some(confirmed) = self.confirmed.checked_sub(qty) else {
            panic!(
                "invariant broken: a cancellation gives {qty} units of product {id} back, \
                 but only {} are in confirmed orders",
                self.confirmed
            );
        };
        self.confirmed = confirmed;
        self.stock = self
            .stock
            .checked_add(qty)
            .expect("stock of a product overflowed u64");
        self.assert_balanced(id);
    }

    /// An operator adds `qty` units.
    fn restock(&mut self, id: ProductId, qty: u64) {
        self.stock = self
            .stock
            .checked_add(qty)
            .expect("stock of a product overflowed u64");
        self.restocked = i64::try_from(qty)
            .ok()
            .and_then(|qty| self.restocked.checked_add(qty))
            .expect("restocked units of a product overflowed i64");
        self.assert_balanced(id);
    }

    /// An operator sets the stock to `stock`; the difference counts as restocked.
    fn set_stock(&mut self, id: ProductId, stock: u64) {
        let delta = i64::try_from(i128::from(stock) - i128::from(self.stock))
            .ok()
            .and_then(|delta| self.restocked.checked_add(delta))
            .expect("restocked units of a product overflowed i64");
        self.restocked = delta;
        self.stock = stock;
        self.assert_balanced(id);
    }

    /// `initial + restocked - confirmed == stock`, in a type where none of
    /// the terms can overflow.
    #[inline]
    fn assert_balanced(&self, id: ProductId) {
        let ledger =
            i128::from(self.initial) + i128::from(self.restocked) - i128::from(self.confirmed);
        assert!(
            ledger == i128::from(self.stock),
            "invariant initial + restocked - confirmed == stock broken for product {id}: \
             {} + {} - {} != {}",
            self.initial,
            self.restocked,
            self.confirmed,
            self.stock
        );
    }
}

/// Stock, rules, per-buyer holdings and keys, owned by the sequencer alone.
/// Two books are equal when every figure, holding, key and id matches (a
/// replayed book must equal the one that decided).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Book {
    products: HashMap<ProductId, ProductState>,
    names: HashSet<String>,
    /// Keys chosen by clients: SipHash with random keys, so no client can
    /// aim collisions at the one thread that decides every order (the
    /// server-assigned ids of the other maps use the faster foldhash).
    /// Each key's order and the [`request_fingerprint`] of the request that
    /// made it. Bound: one entry per order (the journal's own bound).
    keys: HashMap<(UserId, Uuid), (OrderId, u64), RandomState>,
    /// Units each buyer holds in confirmed, uncancelled orders, per product;
    /// what the purchase limit is checked against. Bound: one entry per
    /// (buyer, product) with a confirmed line; eviction: removed when
    /// cancellations bring it to 0.
    held: HashMap<(UserId, ProductId), u64>,
    /// Orders already cancelled, so a second cancel changes nothing. Keyed
    /// by the server's ids; bound: the cancelled orders (operators cancel).
    cancelled: HashSet<OrderId>,
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
    pub(crate) fn stock(&self, id: ProductId) -> Option<u64> {
        self.products.get(&id).map(|p| p.stock)
    }

    /// Rules of a product, `None` if it does not exist.
    pub(crate) fn rules(&self, id: ProductId) -> Option<SaleRules> {
        self.products.get(&id).map(|p| p.rules)
    }

    /// Units of `product` that `user` holds in confirmed, uncancelled orders.
    pub(crate) fn held(&self, user: UserId, product: ProductId) -> u64 {
        self.held.get(&(user, product)).copied().unwrap_or(0)
    }

    /// Decides an intent in arrival order at time `now_ms`: all lines are
    /// reserved or none.
    pub fn decide(&mut self, intent: OrderIntent, now_ms: u64) -> Decision {
        if let Some(&(existing, fingerprint)) =
            self.keys.get(&(intent.user_id, intent.idempotency_key))
        {
            if fingerprint == request_fingerprint(intent.source, &intent.items) {
                return Decision::Duplicate(existing);
            }
            return Decision::KeyReused(existing);
        }
        let status = self.check_lines(intent.user_id, &intent.items, now_ms);
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

    /// The status an order gets: the first line that breaks a rule (see
    /// [`rules::check_line`]: unknown product, sale window, purchase limit,
    /// stock).
    fn check_lines(&self, user: UserId, items: &[OrderLine], now_ms: u64) -> OrderStatus {
        for line in items {
            let verdict = match self.products.get(&line.product_id) {
                None => Err(Refusal::UnknownProduct),
                Some(p) => rules::check_line(
                    &p.rules,
                    || now_ms,
                    || self.held(user, line.product_id),
                    p.stock,
                    u64::from(line.qty),
                ),
            };
            if let Err(refusal) = verdict {
                return OrderStatus::Rejected {
                    code: refusal.code(),
                    product_id: line.product_id,
                };
            }
        }
        OrderStatus::Confirmed
    }

    /// Builds the event creating a product, or says why it cannot be created.
    ///
    /// # Errors
    /// `AlreadyExists` for a taken name, `BadRequest` for stock above
    /// [`MAX_STOCK`] or invalid rules.
    pub fn create_product(
        &mut self,
        name: String,
        price_cents: u64,
        stock: u64,
        rules: SaleRules,
    ) -> Result<Event, ErrorCode> {
        if self.names.contains(&name) {
            return Err(ErrorCode::AlreadyExists);
        }
        if stock > MAX_STOCK {
            return Err(ErrorCode::BadRequest);
        }
        rules::validate(&rules)?;
        let event = Event::ProductCreated {
            id: ProductId(self.next_product_id),
            name,
            price_cents,
            stock,
            rules,
        };
        self.apply(&event);
        Ok(event)
    }

    /// Builds the event restocking a product, or says why it cannot be done.
    ///
    /// # Errors
    /// `NotFound` for an unknown product, `BadRequest` for a zero quantity or
    /// one that would lift the stock above [`MAX_STOCK`].
    pub(crate) fn restock(&mut self, product_id: ProductId, qty: u64) -> Result<Event, ErrorCode> {
        let left = self.stock(product_id).ok_or(ErrorCode::NotFound)?;
        if qty == 0 || left.saturating_add(qty) > MAX_STOCK {
            return Err(ErrorCode::BadRequest);
        }
        let event = Event::Restocked { product_id, qty };
        self.apply(&event);
        Ok(event)
    }

    /// Builds the event setting a product's stock to `stock`.
    ///
    /// # Errors
    /// `NotFound` for an unknown product, `BadRequest` above [`MAX_STOCK`].
    pub(crate) fn set_stock(
        &mut self,
        product_id: ProductId,
        stock: u64,
    ) -> Result<Event, ErrorCode> {
        let previous = self.stock(product_id).ok_or(ErrorCode::NotFound)?;
        if stock > MAX_STOCK {
            return Err(ErrorCode::BadRequest);
        }
        let event = Event::StockSet {
            product_id,
            previous,
            stock,
        };
        self.apply(&event);
        Ok(event)
    }

    /// Builds the event changing a product's rules.
    ///
    /// # Errors
    /// `NotFound` for an unknown product, `BadRequest` for invalid rules.
    pub(crate) fn change_rules(
        &mut self,
        product_id: ProductId,
        change: RulesChange,
    ) -> Result<Event, ErrorCode> {
        let mut rules = self.rules(product_id).ok_or(ErrorCode::NotFound)?;
        match change {
            RulesChange::Limit(max) => rules.max_per_buyer = max,
            RulesChange::Window {
                opens_at_ms,
                closes_at_ms,
            } => {
                rules.opens_at_ms = opens_at_ms;
                rules.closes_at_ms = closes_at_ms;
            }
        }
        rules::validate(&rules)?;
        let event = Event::RulesSet { product_id, rules };
        self.apply(&event);
        Ok(event)
    }

    /// Builds the event cancelling a confirmed order, `None` when it is
    /// already cancelled. The caller proves the order is confirmed (it reads
    /// the durable order book; only this book cancels orders).
    pub(crate) fn cancel(
        &mut self,
        order_id: OrderId,
        user_id: UserId,
        items: Vec<OrderLine>,
        now_ms: u64,
    ) -> Option<Event> {
        if self.cancelled.contains(&order_id) {
            return None;
        }
        let event = Event::OrderCancelled {
            order_id,
            user_id,
            items,
            cancelled_at_ms: now_ms,
        };
        self.apply(&event);
        Some(event)
    }

    /// Applies a decided order: takes a confirmed order's lines out of stock,
    /// counts them as the buyer's, and remembers its key.
    fn apply_order(&mut self, order: &OrderInfo) {
        if order.status == OrderStatus::Confirmed {
            for line in &order.items {
                let qty = u64::from(line.qty);
                if let Some(product) = self.products.get_mut(&line.product_id) {
                    // check_lines proved stock >= qty before the order was
                    // built; `take` asserts it.
                    product.take(line.product_id, qty);
                }
                let held = self
                    .held
                    .entry((order.user_id, line.product_id))
                    .or_default();
                *held = held
                    .checked_add(qty)
                    .expect("units a buyer holds overflowed u64");
            }
        }
        let fingerprint = request_fingerprint(order.source, &order.items);
        self.keys.insert(
            (order.user_id, order.idempotency_key),
            (order.id, fingerprint),
        );
        self.next_order_id = self.next_order_id.max(order.id.0.saturating_add(1));
    }

    fn apply_cancel(&mut self, order_id: OrderId, user_id: UserId, items: &[OrderLine]) {
        if !self.cancelled.insert(order_id) {
            return;
        }
        for line in items {
            let qty = u64::from(line.qty);
            if let Some(product) = self.products.get_mut(&line.product_id) {
                product.give_back(line.product_id, qty);
            }
            let key = (user_id, line.product_id);
            let held = self.held.get(&key).copied().unwrap_or(0);
            let Some(left) = held.checked_sub(qty) else {
                panic!(
                    "invariant broken: cancelling order {order_id} gives back {qty} units of \
                     product {} that buyer {user_id} holds only {held} of",
                    line.product_id
                );
            };
            if left == 0 {
                self.held.remove(&key);
            } else {
                self.held.insert(key, left);
            }
        }
    }

    /// Applies one event. Deciding and replaying both come here.
    pub(crate) fn apply(&mut self, event: &Event) {
        match event {
            Event::ProductCreated {
                id,
                name,
                stock,
                rules,
                ..
            } => {
                self.products.insert(*id, ProductState::new(*stock, *rules));
                self.names.insert(name.clone());
                self.next_product_id = self.next_product_id.max(id.0.saturating_add(1));
            }
            Event::Restocked { product_id, qty } => {
                if let Some(product) = self.products.get_mut(product_id) {
                    product.restock(*product_id, *qty);
                }
            }
            Event::StockSet {
                product_id,
                previous,
                stock,
            } => {
                if let Some(product) = self.products.get_mut(product_id) {
                    // The event was built from this book's figure: on replay,
                    // another figure means the replay diverged.
                    assert_eq!(
                        product.stock, *previous,
                        "a stock-set of product {product_id} starts from another stock than the book's"
                    );
                    product.set_stock(*product_id, *stock);
                }
            }
            Event::RulesSet { product_id, rules } => {
                if let Some(product) = self.products.get_mut(product_id) {
                    product.rules = *rules;
                }
            }
            Event::OrderDecided(order) => self.apply_order(order),
            Event::OrderCancelled {
                order_id,
                user_id,
                items,
                ..
            } => self.apply_cancel(*order_id, *user_id, items),
        }
    }
}

#[cfg(test)]
mod model_tests;
#[cfg(test)]
mod tests;
