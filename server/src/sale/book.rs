//! The sequencer's state and its decisions: stock and sale rules per
//! product, what each buyer holds of each product with a purchase limit,
//! the idempotency keys of recent orders, cancelled orders, and the next ids.
//! The only I/O is [`KeyIndex::lookup`], for a key older than the keys in
//! memory that the filter cannot rule out.
//!
//! Holdings are kept only for *tracked* products: those that have, or once
//! had, a purchase limit. A limit set on an untracked product that has sold
//! needs the buyers' holdings first: the sequencer reads them from the order
//! tables and journals them as [`Event::HeldSeeded`] before the new rules.
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

use crate::sale::holds::{HoldEnd, Holds, HoldsState, LiveHold, Lookup};
use crate::sale::keys::KeyIndex;
use crate::sale::rules::{self, Refusal};
use flashsale_protocol::{
    ErrorCode, OrderId, OrderInfo, OrderLine, OrderSource, OrderStatus, PartnerRef, ProductId,
    SaleRules, UserId,
};
use hashbrown::{HashMap, HashSet};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::hash::RandomState;
use std::sync::Arc;
use uuid::Uuid;

/// Most buyers' holdings in one [`Event::HeldSeeded`], so a journal record
/// stays small.
pub(crate) const SEED_CHUNK: usize = 2048;

/// Most holds expired into one batch.
pub(crate) const EXPIRE_CHUNK: usize = 2048;

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
    /// Buyers' holdings of a product that starts being tracked (a limit is
    /// set on it for the first time after it sold); one event per
    /// [`SEED_CHUNK`] buyers, all before the rules change.
    HeldSeeded {
        /// The product.
        product_id: ProductId,
        /// Units each buyer holds in confirmed, uncancelled orders.
        held: Vec<(UserId, u64)>,
    },
    /// A held order was paid: its units are confirmed.
    HoldPaid {
        /// The order.
        order_id: OrderId,
        /// Its buyer.
        user_id: UserId,
        /// Its lines.
        items: Vec<OrderLine>,
        /// The payment gateway's reference.
        payment_ref: String,
        /// When, in ms since the epoch.
        paid_at_ms: u64,
    },
    /// A held order was released early: its units went back to stock.
    HoldReleased {
        /// The order.
        order_id: OrderId,
        /// Its buyer.
        user_id: UserId,
        /// Its lines.
        items: Vec<OrderLine>,
        /// When, in ms since the epoch.
        released_at_ms: u64,
    },
    /// A held order reached its deadline unpaid: its units went back.
    HoldExpired {
        /// The order.
        order_id: OrderId,
        /// Its buyer.
        user_id: UserId,
        /// Its lines.
        items: Vec<OrderLine>,
        /// When the sequencer expired it, in ms since the epoch.
        expired_at_ms: u64,
    },
    /// An operator set (`Some`) or cleared a product's hold time.
    HoldTimeSet {
        /// The product.
        product_id: ProductId,
        /// Its hold time in ms; `None`: the server's default.
        hold_ms: Option<u64>,
    },
}

impl Event {
    /// For an event that ends a hold: the order and the status it ends in
    /// (paid: `Confirmed`; released; expired).
    pub(crate) fn hold_end(&self) -> Option<(OrderId, OrderStatus)> {
        match self {
            Self::HoldPaid { order_id, .. } => Some((*order_id, OrderStatus::Confirmed)),
            Self::HoldReleased { order_id, .. } => Some((*order_id, OrderStatus::Released)),
            Self::HoldExpired { order_id, .. } => Some((*order_id, OrderStatus::Expired)),
            _ => None,
        }
    }

    /// True for an event that places or ends a hold.
    pub(crate) fn is_hold_change(&self) -> bool {
        match self {
            Self::OrderDecided(order) => matches!(order.status, OrderStatus::Held { .. }),
            Self::HoldPaid { .. } | Self::HoldReleased { .. } | Self::HoldExpired { .. } => true,
            _ => false,
        }
    }
}

/// A hold asked for with an order intent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HoldAsk {
    /// The time the buyer asked for, in ms; `None`: the most allowed.
    pub requested_ms: Option<u64>,
    /// The server's hold time for products without their own.
    pub default_ms: u64,
}

/// What a `PayHold` or `ReleaseHold` comes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HoldOutcome {
    /// A change to journal; then the order is the answer.
    Changed(Event),
    /// Nothing changes; the order as it stands is the answer.
    AsItStands,
    /// The hold was due: its expiry is journaled, then `HoldExpired` answered.
    Expired(Event),
    /// Refused; nothing changes.
    Refused(ErrorCode),
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
    /// A hold instead of a confirmation, with its time.
    pub hold: Option<HoldAsk>,
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
    /// The key table could not be read: nothing was decided.
    KeysUnreadable,
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
        OrderSource::CartHold => hasher.write_u8(2),
        OrderSource::Express | OrderSource::ExpressHold => {
            hasher.write_u8(if source == OrderSource::Express { 1 } else { 3 });
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
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ProductState {
    stock: u64,
    rules: SaleRules,
    /// Stock at creation.
    initial: u64,
    /// Net units operators added (restock, set-stock up) or took away
    /// (set-stock down) since creation.
    restocked: i64,
    /// Units in confirmed, uncancelled orders.
    confirmed: u64,
    /// Buyers' holdings of it are kept: it has or had a purchase limit.
    tracked: bool,
}

impl ProductState {
    fn new(stock: u64, rules: SaleRules) -> Self {
        Self {
            stock,
            rules,
            initial: stock,
            restocked: 0,
            confirmed: 0,
            tracked: rules.max_per_buyer.is_some(),
        }
    }

    /// Takes `qty` units out of stock (an order or a hold).
    fn take_stock(&mut self, id: ProductId, qty: u64) {
        let Some(left) = self.stock.checked_sub(qty) else {
            panic!(
                "invariant stock >= 0 broken: product {id} has {} units and an order takes {qty}",
                self.stock
            );
        };
        self.stock = left;
    }

    /// A confirmed order takes `qty` units.
    fn take(&mut self, id: ProductId, qty: u64, on_hold: u64) {
        self.take_stock(id, qty);
        self.confirm(id, qty, on_hold);
    }

    /// `qty` units taken earlier (by a hold, now paid) are confirmed.
    fn confirm(&mut self, id: ProductId, qty: u64, on_hold: u64) {
        self.confirmed = self
            .confirmed
            .checked_add(qty)
            .expect("confirmed units of a product overflowed u64");
        self.assert_balanced(id, on_hold);
    }

    /// A hold takes `qty` units; `on_hold` counts them already.
    fn reserve(&mut self, id: ProductId, qty: u64, on_hold: u64) {
        self.take_stock(id, qty);
        self.assert_balanced(id, on_hold);
    }

    /// A hold that ended unpaid gives `qty` units back; `on_hold` no
    /// longer counts them.
    fn unreserve(&mut self, id: ProductId, qty: u64, on_hold: u64) {
        self.stock = self
            .stock
            .checked_add(qty)
            .expect("stock of a product overflowed u64");
        self.assert_balanced(id, on_hold);
    }

    /// A cancelled order gives `qty` units back.
    fn give_back(&mut self, id: ProductId, qty: u64, on_hold: u64) {
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
        self.assert_balanced(id, on_hold);
    }

    /// An operator adds `qty` units.
    fn restock(&mut self, id: ProductId, qty: u64, on_hold: u64) {
        self.stock = self
            .stock
            .checked_add(qty)
            .expect("stock of a product overflowed u64");
        self.restocked = i64::try_from(qty)
            .ok()
            .and_then(|qty| self.restocked.checked_add(qty))
            .expect("restocked units of a product overflowed i64");
        self.assert_balanced(id, on_hold);
    }

    /// An operator sets the stock to `stock`; the difference counts as restocked.
    fn set_stock(&mut self, id: ProductId, stock: u64, on_hold: u64) {
        let delta = i64::try_from(i128::from(stock) - i128::from(self.stock))
            .ok()
            .and_then(|delta| self.restocked.checked_add(delta))
            .expect("restocked units of a product overflowed i64");
        self.restocked = delta;
        self.stock = stock;
        self.assert_balanced(id, on_hold);
    }

    /// `initial + restocked - confirmed - on_hold == stock`, in a type
    /// where none of the terms can overflow.
    #[inline]
    fn assert_balanced(&self, id: ProductId, on_hold: u64) {
        let ledger = i128::from(self.initial) + i128::from(self.restocked)
            - i128::from(self.confirmed)
            - i128::from(on_hold);
        assert!(
            ledger == i128::from(self.stock),
            "invariant initial + restocked - confirmed - held == stock broken for product {id}: \
             {} + {} - {} - {on_hold} != {}",
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
    /// Keys of the orders whose keys may not be in the key table yet.
    keys: RecentKeys,
    /// The key table behind the recent keys; `None` in unit tests (every
    /// key then stays in memory).
    index: KeyTable,
    /// Units each buyer holds in confirmed, uncancelled orders of tracked
    /// products; what the purchase limit is checked against. Bound: one
    /// entry per (buyer, tracked product) with a confirmed line; eviction:
    /// removed when cancellations bring it to 0.
    held: HashMap<(UserId, ProductId), u64>,
    /// Keep holdings of every product (replaying a journal written before
    /// checkpoints existed, whose limits were set without seeds).
    track_all: bool,
    /// Orders already cancelled, so a second cancel changes nothing. Keyed
    /// by the server's ids; bound: the cancelled orders (operators cancel).
    cancelled: HashSet<OrderId>,
    /// Holds, live and ended, and the products' hold times.
    holds: Holds,
    next_order_id: u64,
    next_product_id: u64,
}

/// The idempotency keys of recent orders: each key's order, the
/// [`request_fingerprint`] of its request and its decision time.
/// Keys chosen by clients: SipHash with random keys, so no client can aim
/// collisions at the one thread that decides every order (the
/// server-assigned ids of the other maps use the faster foldhash). Bound:
/// the orders not yet in the key table (at most the materialiser's lag,
/// `Config::max_unmaterialised`); eviction: [`Book::forget_keys`].
#[derive(Debug, Default, PartialEq, Eq)]
struct RecentKeys {
    map: HashMap<(UserId, Uuid), (OrderId, u64, u64), RandomState>,
    /// The keys in order id order, for eviction.
    by_order: VecDeque<(OrderId, UserId, Uuid)>,
}

/// The shared key table, or none; never part of a book's equality.
#[derive(Debug, Default, Clone)]
struct KeyTable(Option<Arc<KeyIndex>>);

impl PartialEq for KeyTable {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for KeyTable {}

/// A book as a checkpoint stores it: everything but the recent keys (which
/// the key table holds once the checkpoint's orders are materialised).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct BookState {
    products: Vec<(ProductId, ProductState)>,
    names: Vec<String>,
    /// Holdings of tracked products.
    pub(crate) held: Vec<((UserId, ProductId), u64)>,
    cancelled: Vec<OrderId>,
    next_order_id: u64,
    next_product_id: u64,
}

impl Book {
    /// An empty book keeping every key in memory (tests, replays).
    pub fn new() -> Self {
        Self {
            next_order_id: 1,
            next_product_id: 1,
            ..Self::default()
        }
    }

    /// An empty book over a key table (the sequencer's).
    pub(crate) fn with_keys(index: Arc<KeyIndex>) -> Self {
        Self {
            index: KeyTable(Some(index)),
            ..Self::new()
        }
    }

    /// Keeps holdings of every product, for replaying a journal from its
    /// first record (see [`Book::track_all`]'s field); [`Book::stop_tracking_all`] ends it.
    pub(crate) fn track_all(&mut self) {
        self.track_all = true;
    }

    /// Drops the holdings of untracked products kept by [`Book::track_all`].
    pub(crate) fn stop_tracking_all(&mut self) {
        self.track_all = false;
        let products = &self.products;
        self.held
            .retain(|(_, product), _| products.get(product).is_some_and(|p| p.tracked));
    }

    /// The state a checkpoint stores.
    pub(crate) fn state(&self) -> BookState {
        let mut products: Vec<_> = self.products.iter().map(|(id, p)| (*id, *p)).collect();
        products.sort_unstable_by_key(|(id, _)| *id);
        let mut names: Vec<_> = self.names.iter().cloned().collect();
        names.sort_unstable();
        let mut held: Vec<_> = self.held.iter().map(|(k, v)| (*k, *v)).collect();
        held.sort_unstable();
        let mut cancelled: Vec<_> = self.cancelled.iter().copied().collect();
        cancelled.sort_unstable();
        BookState {
            products,
            names,
            held,
            cancelled,
            next_order_id: self.next_order_id,
            next_product_id: self.next_product_id,
        }
    }

    /// The holds a checkpoint stores (beside [`Book::state`]).
    pub(crate) fn holds_state(&self) -> HoldsState {
        self.holds.state()
    }

    /// A book from a checkpoint's state, over `index` if given.
    pub(crate) fn from_state(
        state: BookState,
        holds: HoldsState,
        index: Option<Arc<KeyIndex>>,
    ) -> Self {
        Self {
            products: state.products.into_iter().collect(),
            names: state.names.into_iter().collect(),
            held: state.held.into_iter().collect(),
            cancelled: state.cancelled.into_iter().collect(),
            holds: Holds::from_state(holds),
            next_order_id: state.next_order_id,
            next_product_id: state.next_product_id,
            index: KeyTable(index),
            ..Self::default()
        }
    }

    /// The holds.
    pub(crate) fn holds(&self) -> &Holds {
        &self.holds
    }

    /// Forgets the recent keys of orders the key table holds. Safe before
    /// the filter is loaded too: until then every lookup reads the table,
    /// and the materialiser puts each key it writes in the filter before it
    /// counts it as materialised.
    pub(crate) fn forget_keys(&mut self) {
        let Some(index) = &self.index.0 else {
            return;
        };
        let through = index.materialised();
        while let Some(&(id, user, key)) = self.keys.by_order.front() {
            if id > through {
                break;
            }
            self.keys.by_order.pop_front();
            if self.keys.map.get(&(user, key)).is_some_and(|e| e.0 == id) {
                self.keys.map.remove(&(user, key));
            }
        }
    }

    /// Products whose holdings are kept.
    pub(crate) fn tracked_products(&self) -> Vec<ProductId> {
        self.products
            .iter()
            .filter(|(_, p)| p.tracked)
            .map(|(id, _)| *id)
            .collect()
    }

    /// Forgets every recent key (the materialiser's copy keeps none).
    pub(crate) fn clear_keys(&mut self) {
        self.keys = RecentKeys::default();
    }

    /// True when a limit change needs the buyers' holdings of the product
    /// first ([`Book::seed_held`]): the product is untracked and has sold.
    pub(crate) fn needs_seed(&self, product_id: ProductId, change: RulesChange) -> bool {
        matches!(change, RulesChange::Limit(Some(_)))
            && !self.track_all
            && self.products.get(&product_id).is_some_and(|p| {
                !p.tracked && (p.confirmed > 0 || self.holds.on_hold(product_id) > 0)
            })
    }

    /// Builds the events that start tracking `product_id` with the buyers'
    /// holdings `held` (read from the orders), in chunks of [`SEED_CHUNK`].
    ///
    /// # Panics
    /// When the holdings do not add up to the product's confirmed units: the
    /// caller read the orders wrong, and a limit on wrong holdings would
    /// let buyers past it.
    pub(crate) fn seed_held(
        &mut self,
        product_id: ProductId,
        held: Vec<(UserId, u64)>,
    ) -> Vec<Event> {
        let total: u64 = held.iter().map(|(_, qty)| qty).sum();
        let confirmed = self.products.get(&product_id).map_or(0, |p| p.confirmed);
        let on_hold = self.holds.on_hold(product_id);
        assert_eq!(
            total,
            confirmed + on_hold,
            "holdings read for product {product_id} do not add up to its confirmed and held units"
        );
        let mut events: Vec<Event> = held
            .chunks(SEED_CHUNK)
            .map(|chunk| Event::HeldSeeded {
                product_id,
                held: chunk.to_vec(),
            })
            .collect();
        if events.is_empty() {
            events.push(Event::HeldSeeded {
                product_id,
                held: Vec::new(),
            });
        }
        for event in &events {
            self.apply(event);
        }
        events
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
        match self.existing_key(intent.user_id, intent.idempotency_key, now_ms) {
            Err(e) => {
                tracing::error!(error = %e, "could not read the idempotency key table");
                return Decision::KeysUnreadable;
            }
            Ok(Some((existing, fingerprint))) => {
                if fingerprint == request_fingerprint(intent.source, &intent.items) {
                    return Decision::Duplicate(existing);
                }
                return Decision::KeyReused(existing);
            }
            Ok(None) => {}
        }
        let mut status = self.check_lines(intent.user_id, &intent.items, now_ms);
        if let (OrderStatus::Confirmed, Some(ask)) = (status, intent.hold) {
            status = OrderStatus::Held {
                expires_at_ms: now_ms.saturating_add(self.hold_time(&intent.items, ask)),
            };
        }
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

    /// How long a hold of `items` lasts: what was asked, at most the
    /// shortest hold time of its products.
    fn hold_time(&self, items: &[OrderLine], ask: HoldAsk) -> u64 {
        items
            .iter()
            .map(|l| self.holds.hold_ms(l.product_id).unwrap_or(ask.default_ms))
            .chain(ask.requested_ms)
            .min()
            .unwrap_or(ask.default_ms)
    }

    /// Pays the held order `order_id` of `user_id` with `payment_ref`, a
    /// request that arrived at `arrived_ms`, decided at `now_ms`: a hold
    /// whose deadline came before the request expires instead (one that
    /// came after it, while the request waited in its queue, is paid: the
    /// request came first).
    pub(crate) fn pay_hold(
        &mut self,
        order_id: OrderId,
        user_id: UserId,
        payment_ref: &str,
        (arrived_ms, now_ms): (u64, u64),
    ) -> HoldOutcome {
        let outcome = match self.holds.lookup(order_id) {
            Lookup::Live(hold) if hold.user_id != user_id => {
                HoldOutcome::Refused(ErrorCode::NotFound)
            }
            Lookup::Live(hold) if hold.expires_at_ms <= arrived_ms => {
                HoldOutcome::Expired(self.expiry(order_id, hold, now_ms))
            }
            Lookup::Live(hold) => HoldOutcome::Changed(Event::HoldPaid {
                order_id,
                user_id,
                items: hold.items.clone(),
                payment_ref: payment_ref.to_owned(),
                paid_at_ms: now_ms,
            }),
            Lookup::Ended(ended) if ended.user_id != user_id => {
                HoldOutcome::Refused(ErrorCode::NotFound)
            }
            Lookup::Ended(ended) => match &ended.end {
                HoldEnd::Paid(paid) if paid == payment_ref => HoldOutcome::AsItStands,
                HoldEnd::Paid(_) => HoldOutcome::Refused(ErrorCode::PaymentRefMismatch),
                HoldEnd::Expired => HoldOutcome::Refused(ErrorCode::HoldExpired),
                HoldEnd::Released => HoldOutcome::Refused(ErrorCode::NotHeld),
            },
            Lookup::None => HoldOutcome::Refused(ErrorCode::NotHeld),
        };
        self.apply_outcome(&outcome);
        outcome
    }

    /// Releases the held order `order_id` (of `user_id`; `None`: an
    /// operator's release), a request that arrived at `arrived_ms`,
    /// decided at `now_ms` (see [`Book::pay_hold`]).
    pub(crate) fn release_hold(
        &mut self,
        order_id: OrderId,
        user_id: Option<UserId>,
        (arrived_ms, now_ms): (u64, u64),
    ) -> HoldOutcome {
        let owner = |of: UserId| user_id.is_none_or(|u| u == of);
        let outcome = match self.holds.lookup(order_id) {
            Lookup::Live(hold) if !owner(hold.user_id) => HoldOutcome::Refused(ErrorCode::NotFound),
            // Due before the request came: it expires (answered as expired).
            Lookup::Live(hold) if hold.expires_at_ms <= arrived_ms => {
                HoldOutcome::Changed(self.expiry(order_id, hold, now_ms))
            }
            Lookup::Live(hold) => HoldOutcome::Changed(Event::HoldReleased {
                order_id,
                user_id: hold.user_id,
                items: hold.items.clone(),
                released_at_ms: now_ms,
            }),
            Lookup::Ended(ended) if !owner(ended.user_id) => {
                HoldOutcome::Refused(ErrorCode::NotFound)
            }
            Lookup::Ended(ended) => match ended.end {
                HoldEnd::Paid(_) => HoldOutcome::Refused(ErrorCode::NotHeld),
                HoldEnd::Expired | HoldEnd::Released => HoldOutcome::AsItStands,
            },
            Lookup::None => HoldOutcome::Refused(ErrorCode::NotHeld),
        };
        self.apply_outcome(&outcome);
        outcome
    }

    fn expiry(&self, order_id: OrderId, hold: &LiveHold, now_ms: u64) -> Event {
        Event::HoldExpired {
            order_id,
            user_id: hold.user_id,
            items: hold.items.clone(),
            expired_at_ms: now_ms,
        }
    }

    fn apply_outcome(&mut self, outcome: &HoldOutcome) {
        if let HoldOutcome::Changed(event) | HoldOutcome::Expired(event) = outcome {
            self.apply(event);
        }
    }

    /// Expires the holds due at `now_ms`, earliest deadline first, at most
    /// [`EXPIRE_CHUNK`] (a journal record stays small; the rest go in the
    /// next batch), except those `spared` (a request about them arrived
    /// before their deadline and is decided in this batch).
    pub(crate) fn expire_due(
        &mut self,
        now_ms: u64,
        spared: impl Fn(OrderId) -> bool,
    ) -> Vec<Event> {
        let due: Vec<OrderId> = self
            .holds
            .due(now_ms)
            .into_iter()
            .filter(|id| !spared(*id))
            .take(EXPIRE_CHUNK)
            .collect();
        let mut events = Vec::with_capacity(due.len());
        for order_id in due {
            if let Lookup::Live(hold) = self.holds.lookup(order_id) {
                let event = self.expiry(order_id, hold, now_ms);
                self.apply(&event);
                events.push(event);
            }
        }
        events
    }

    /// The earliest deadline of a live hold.
    pub(crate) fn next_deadline(&self) -> Option<u64> {
        self.holds.next_deadline()
    }

    /// Builds the event setting a product's hold time.
    ///
    /// # Errors
    /// `NotFound` for an unknown product, `BadRequest` out of
    /// [`flashsale_protocol::MIN_HOLD_MS`]..=[`flashsale_protocol::MAX_HOLD_MS`].
    pub(crate) fn set_hold_time(
        &mut self,
        product_id: ProductId,
        hold_ms: Option<u64>,
    ) -> Result<Event, ErrorCode> {
        if !self.products.contains_key(&product_id) {
            return Err(ErrorCode::NotFound);
        }
        let range = flashsale_protocol::MIN_HOLD_MS..=flashsale_protocol::MAX_HOLD_MS;
        if hold_ms.is_some_and(|ms| !range.contains(&ms)) {
            return Err(ErrorCode::BadRequest);
        }
        let event = Event::HoldTimeSet {
            product_id,
            hold_ms,
        };
        self.apply(&event);
        Ok(event)
    }

    /// The order (and request fingerprint) a key made inside the retention
    /// window: from memory, else from the key table.
    fn existing_key(
        &self,
        user: UserId,
        key: Uuid,
        now_ms: u64,
    ) -> Result<Option<(OrderId, u64)>, crate::error::ServerError> {
        let within = |decided_at: u64| {
            self.index
                .0
                .as_ref()
                .is_none_or(|index| index.within_window(decided_at, now_ms))
        };
        if let Some(&(id, fingerprint, decided_at)) = self.keys.map.get(&(user, key)) {
            if within(decided_at) {
                return Ok(Some((id, fingerprint)));
            }
            return Ok(None);
        }
        let Some(index) = &self.index.0 else {
            return Ok(None);
        };
        Ok(index
            .lookup(user, key, now_ms)?
            .map(|entry| (entry.order_id, entry.fingerprint)))
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
        // The sequencer seeds first; a limit on unknown holdings would let
        // buyers past it.
        assert!(
            !self.needs_seed(product_id, change),
            "a limit on product {product_id} set before its holdings were seeded"
        );
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
        let hold = match order.status {
            OrderStatus::Confirmed => false,
            OrderStatus::Held { expires_at_ms } => {
                self.holds.place(
                    order.id,
                    LiveHold {
                        user_id: order.user_id,
                        items: order.items.clone(),
                        expires_at_ms,
                    },
                );
                true
            }
            _ => {
                self.remember_key(order);
                return;
            }
        };
        for line in &order.items {
            let qty = u64::from(line.qty);
            let on_hold = self.holds.on_hold(line.product_id);
            let mut tracked = self.track_all;
            if let Some(product) = self.products.get_mut(&line.product_id) {
                // check_lines proved stock >= qty before the order was
                // built; `take` and `reserve` assert it.
                if hold {
                    product.reserve(line.product_id, qty, on_hold);
                } else {
                    product.take(line.product_id, qty, on_hold);
                }
                tracked |= product.tracked;
            }
            // Purchase limits count held units as well as confirmed ones.
            if tracked {
                let held = self
                    .held
                    .entry((order.user_id, line.product_id))
                    .or_default();
                *held = held
                    .checked_add(qty)
                    .expect("units a buyer holds overflowed u64");
            }
        }
        self.remember_key(order);
    }

    /// Remembers a decided order's key and moves the next order id past it.
    fn remember_key(&mut self, order: &OrderInfo) {
        let fingerprint = request_fingerprint(order.source, &order.items);
        let key = (order.user_id, order.idempotency_key);
        self.keys
            .map
            .insert(key, (order.id, fingerprint, order.decided_at_ms));
        self.keys
            .by_order
            .push_back((order.id, order.user_id, order.idempotency_key));
        self.next_order_id = self.next_order_id.max(order.id.0.saturating_add(1));
    }

    fn apply_cancel(&mut self, order_id: OrderId, user_id: UserId, items: &[OrderLine]) {
        if !self.cancelled.insert(order_id) {
            return;
        }
        for line in items {
            let qty = u64::from(line.qty);
            let on_hold = self.holds.on_hold(line.product_id);
            let mut tracked = self.track_all;
            if let Some(product) = self.products.get_mut(&line.product_id) {
                product.give_back(line.product_id, qty, on_hold);
                tracked |= product.tracked;
            }
            self.release_held(order_id, user_id, line, tracked);
        }
    }

    /// A hold ended: paid (its units confirmed) or unpaid (back to stock,
    /// and out of the buyer's purchase-limit holdings).
    fn apply_hold_end(&mut self, order_id: OrderId, end: HoldEnd, at_ms: u64) {
        let paid = matches!(end, HoldEnd::Paid(_));
        let hold = self.holds.end(order_id, end, at_ms);
        for line in &hold.items {
            let qty = u64::from(line.qty);
            let on_hold = self.holds.on_hold(line.product_id);
            let mut tracked = self.track_all;
            if let Some(product) = self.products.get_mut(&line.product_id) {
                if paid {
                    product.confirm(line.product_id, qty, on_hold);
                } else {
                    product.unreserve(line.product_id, qty, on_hold);
                }
                tracked |= product.tracked;
            }
            if !paid {
                self.release_held(order_id, hold.user_id, line, tracked);
            }
        }
    }

    /// `line`'s units leave what the buyer holds towards its limit.
    fn release_held(
        &mut self,
        order_id: OrderId,
        user_id: UserId,
        line: &OrderLine,
        tracked: bool,
    ) {
        if !tracked {
            return;
        }
        let qty = u64::from(line.qty);
        let key = (user_id, line.product_id);
        let held = self.held.get(&key).copied().unwrap_or(0);
        let Some(left) = held.checked_sub(qty) else {
            panic!(
                "invariant broken: order {order_id} gives back {qty} units of product {} \
                 that buyer {user_id} holds only {held} of",
                line.product_id
            );
        };
        if left == 0 {
            self.held.remove(&key);
        } else {
            self.held.insert(key, left);
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
                let on_hold = self.holds.on_hold(*product_id);
                if let Some(product) = self.products.get_mut(product_id) {
                    product.restock(*product_id, *qty, on_hold);
                }
            }
            Event::StockSet {
                product_id,
                previous,
                stock,
            } => {
                let on_hold = self.holds.on_hold(*product_id);
                if let Some(product) = self.products.get_mut(product_id) {
                    // The event was built from this book's figure: on replay,
                    // another figure means the replay diverged.
                    assert_eq!(
                        product.stock, *previous,
                        "a stock-set of product {product_id} starts from another stock than the book's"
                    );
                    product.set_stock(*product_id, *stock, on_hold);
                }
            }
            Event::RulesSet { product_id, rules } => {
                let mut untracked = false;
                let on_hold = self.holds.on_hold(*product_id);
                if let Some(product) = self.products.get_mut(product_id) {
                    if rules.max_per_buyer.is_some() && !product.tracked {
                        assert!(
                            self.track_all || (product.confirmed == 0 && on_hold == 0),
                            "product {product_id} got a limit without its holdings seeded"
                        );
                        product.tracked = true;
                    }
                    if rules.max_per_buyer.is_none() && product.tracked {
                        // No limit, no holdings to keep (a new limit seeds
                        // them again from the orders).
                        product.tracked = false;
                        untracked = !self.track_all;
                    }
                    product.rules = *rules;
                }
                if untracked {
                    self.held.retain(|(_, product), _| product != product_id);
                }
            }
            Event::HeldSeeded { product_id, held } => {
                if let Some(product) = self.products.get_mut(product_id) {
                    product.tracked = true;
                }
                // Replaying every record since the first, holdings of every
                // product are already kept (and exact).
                for (user, qty) in held.iter().filter(|_| !self.track_all) {
                    if *qty > 0 {
                        *self.held.entry((*user, *product_id)).or_default() += qty;
                    }
                }
            }
            Event::OrderDecided(order) => self.apply_order(order),
            Event::OrderCancelled {
                order_id,
                user_id,
                items,
                ..
            } => self.apply_cancel(*order_id, *user_id, items),
            Event::HoldPaid {
                order_id,
                payment_ref,
                paid_at_ms,
                ..
            } => self.apply_hold_end(*order_id, HoldEnd::Paid(payment_ref.clone()), *paid_at_ms),
            Event::HoldReleased {
                order_id,
                released_at_ms,
                ..
            } => self.apply_hold_end(*order_id, HoldEnd::Released, *released_at_ms),
            Event::HoldExpired {
                order_id,
                expired_at_ms,
                ..
            } => self.apply_hold_end(*order_id, HoldEnd::Expired, *expired_at_ms),
            Event::HoldTimeSet {
                product_id,
                hold_ms,
            } => self.holds.set_hold_ms(*product_id, *hold_ms),
        }
    }
}

#[cfg(test)]
mod hold_tests;
#[cfg(test)]
mod model_tests;
#[cfg(test)]
mod tests;
