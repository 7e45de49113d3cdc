//! A model-based property test of the book.
//!
//! Random sequences of operator and buyer commands go through the real
//! [`Book`] and, side by side, through a model that is as plain as it can be
//! (maps of integers, the rules written out again). After every step:
//!
//! - the book and the model made the same decision (confirmed, or rejected
//!   with the same code and product, or a duplicate of the same order, or a
//!   key reused for another request), and
//!   refused the same operator commands with the same code;
//! - an order changed the stock of all its lines or of none (all or nothing);
//! - every product's stock, initial stock, restocked and confirmed units,
//!   rules, and every buyer's holdings are the model's, and
//!   `initial + restocked - confirmed == stock >= 0`;
//! - the published [`Catalog`], fed the same events, shows the same figures
//!   and order counts;
//! - at a random "restart" and at the end, a fresh book fed the events
//!   through [`Book::apply`] equals the book that decided, and decides on
//!   from there (so the test goes on with the replayed book).

use super::*;
use crate::sale::catalog::Catalog;
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};

/// Product ids the commands name: 0 and the ids past the last creation are
/// unknown products.
const PRODUCT_IDS: std::ops::Range<u64> = 0..8;
/// Buyers.
const USERS: std::ops::Range<u64> = 0..4;
/// Times the orders are decided at and sale windows open and close at.
const TIMES: std::ops::Range<u64> = 0..30;

/// Which idempotency key an order uses.
#[derive(Debug, Clone, Copy)]
enum KeyPick {
    /// A key never used.
    Fresh,
    /// The buyer, key, lines and source of an earlier intent (the n-th,
    /// modulo their number): a retry.
    Retry(usize),
    /// The key of an earlier intent, with this op's buyer, lines and
    /// source: a duplicate if it is the same buyer's same request, a reused
    /// key if it is the same buyer's other request, else a new order.
    SameKey(usize),
}

#[derive(Debug, Clone)]
enum Op {
    Create {
        name: u8,
        stock: u64,
        rules: SaleRules,
    },
    Order {
        user: u64,
        lines: Vec<(u64, u32)>,
        /// A cart checkout (`Pay`) rather than an express one.
        cart: bool,
        key: KeyPick,
        now: u64,
    },
    Restock {
        product: u64,
        qty: u64,
    },
    SetStock {
        product: u64,
        stock: u64,
    },
    Limit {
        product: u64,
        max: Option<u32>,
    },
    Window {
        product: u64,
        opens: Option<u64>,
        closes: Option<u64>,
    },
    /// An operator cancels the n-th order so far (modulo their number).
    Cancel {
        nth: usize,
    },
    /// The server restarts: the book is rebuilt from the events.
    Restart,
}

fn rules_strategy() -> impl Strategy<Value = SaleRules> {
    (
        prop_oneof![3 => Just(None), 2 => (0u32..4).prop_map(Some)],
        prop_oneof![3 => Just(None), 1 => TIMES.prop_map(Some)],
        prop_oneof![3 => Just(None), 1 => TIMES.prop_map(Some)],
    )
        .prop_map(|(max_per_buyer, opens_at_ms, closes_at_ms)| SaleRules {
            max_per_buyer,
            opens_at_ms,
            closes_at_ms,
        })
}

fn create_strategy() -> impl Strategy<Value = Op> {
    (
        0u8..6,
        prop_oneof![9 => 0u64..10, 1 => Just(MAX_STOCK + 1)],
        rules_strategy(),
    )
        .prop_map(|(name, stock, rules)| Op::Create { name, stock, rules })
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let key = prop_oneof![
        6 => Just(KeyPick::Fresh),
        2 => any::<usize>().prop_map(KeyPick::Retry),
        1 => any::<usize>().prop_map(KeyPick::SameKey),
    ];
    let lines = proptest::collection::vec((PRODUCT_IDS, 1u32..4), 1..=3);
    prop_oneof![
        2 => create_strategy(),
        16 => (USERS, lines, proptest::bool::weighted(0.2), key, TIMES)
            .prop_map(|(user, lines, cart, key, now)| Op::Order { user, lines, cart, key, now }),
        2 => (PRODUCT_IDS, prop_oneof![9 => 0u64..5, 1 => Just(MAX_STOCK)])
            .prop_map(|(product, qty)| Op::Restock { product, qty }),
        2 => (PRODUCT_IDS, prop_oneof![9 => 0u64..8, 1 => Just(MAX_STOCK), 1 => Just(MAX_STOCK + 1)])
            .prop_map(|(product, stock)| Op::SetStock { product, stock }),
        1 => (PRODUCT_IDS, proptest::option::of(0u32..4))
            .prop_map(|(product, max)| Op::Limit { product, max }),
        1 => (PRODUCT_IDS, proptest::option::of(TIMES), proptest::option::of(TIMES))
            .prop_map(|(product, opens, closes)| Op::Window { product, opens, closes }),
        2 => any::<usize>().prop_map(|nth| Op::Cancel { nth }),
        1 => Just(Op::Restart),
    ]
}

/// One product in the model. Signed and wide: the model never saturates, so
/// a figure below zero would show as one.
#[derive(Debug, Clone)]
struct ModelProduct {
    name: String,
    stock: i128,
    initial: i128,
    restocked: i128,
    confirmed: i128,
    rules: SaleRules,
    orders_confirmed: u64,
    orders_rejected: u64,
    orders_cancelled: u64,
}

#[derive(Debug, Clone)]
struct ModelOrder {
    user: u64,
    lines: Vec<(u64, u32)>,
    status: OrderStatus,
}

/// What the model says an order is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ModelDecision {
    New(u64, OrderStatus),
    Duplicate(u64),
    KeyReused(u64),
}

/// An intent the run sent: buyer, key, lines, and whether it was a cart checkout.
type SentIntent = (u64, Uuid, Vec<(u64, u32)>, bool);

/// What identifies a request behind a key: a cart checkout whatever its
/// lines, or an express checkout of these lines.
type ModelRequest = Option<Vec<(u64, u32)>>;

fn model_request(cart: bool, lines: &[(u64, u32)]) -> ModelRequest {
    (!cart).then(|| lines.to_vec())
}

/// The book as a few maps.
#[derive(Debug, Default)]
struct Model {
    products: BTreeMap<u64, ModelProduct>,
    held: BTreeMap<(u64, u64), i128>,
    keys: BTreeMap<(u64, Uuid), (u64, ModelRequest)>,
    orders: BTreeMap<u64, ModelOrder>,
    cancelled: BTreeSet<u64>,
    next_order: u64,
    next_product: u64,
}

fn rules_valid(rules: &SaleRules) -> bool {
    rules.max_per_buyer != Some(0)
        && !matches!((rules.opens_at_ms, rules.closes_at_ms), (Some(o), Some(c)) if c <= o)
}

impl Model {
    fn new() -> Self {
        Self {
            next_order: 1,
            next_product: 1,
            ..Self::default()
        }
    }

    fn create(&mut self, name: String, stock: u64, rules: SaleRules) -> Result<u64, ErrorCode> {
        if self.products.values().any(|p| p.name == name) {
            return Err(ErrorCode::AlreadyExists);
        }
        if stock > MAX_STOCK || !rules_valid(&rules) {
            return Err(ErrorCode::BadRequest);
        }
        let id = self.next_product;
        self.next_product += 1;
        let stock = i128::from(stock);
        self.products.insert(
            id,
            ModelProduct {
                name,
                stock,
                initial: stock,
                restocked: 0,
                confirmed: 0,
                rules,
                orders_confirmed: 0,
                orders_rejected: 0,
                orders_cancelled: 0,
            },
        );
        Ok(id)
    }

    fn status(&self, user: u64, lines: &[(u64, u32)], now: u64) -> OrderStatus {
        for &(product, qty) in lines {
            let qty = i128::from(qty);
            let code = match self.products.get(&product) {
                None => Some(ErrorCode::NotFound),
                Some(p) => {
                    let opened = p.rules.opens_at_ms.is_none_or(|o| now >= o);
                    let not_closed = p.rules.closes_at_ms.is_none_or(|c| now < c);
                    let held = self.held.get(&(user, product)).copied().unwrap_or(0);
                    if !(opened && not_closed) {
                        Some(ErrorCode::SaleNotOpen)
                    } else if p
                        .rules
                        .max_per_buyer
                        .is_some_and(|max| held + qty > i128::from(max))
                    {
                        Some(ErrorCode::LimitExceeded)
                    } else if p.stock < qty {
                        Some(ErrorCode::SoldOut)
                    } else {
                        None
                    }
                }
            };
            if let Some(code) = code {
                return OrderStatus::Rejected {
                    code,
                    product_id: ProductId(product),
                };
            }
        }
        OrderStatus::Confirmed
    }

    fn order(
        &mut self,
        user: u64,
        lines: &[(u64, u32)],
        cart: bool,
        key: Uuid,
        now: u64,
    ) -> ModelDecision {
        let request = model_request(cart, lines);
        if let Some((id, first)) = self.keys.get(&(user, key)) {
            if *first == request {
                return ModelDecision::Duplicate(*id);
            }
            return ModelDecision::KeyReused(*id);
        }
        let status = self.status(user, lines, now);
        let id = self.next_order;
        self.next_order += 1;
        self.keys.insert((user, key), (id, request));
        match status {
            OrderStatus::Confirmed => {
                for &(product, qty) in lines {
                    let qty = i128::from(qty);
                    if let Some(p) = self.products.get_mut(&product) {
                        p.stock -= qty;
                        p.confirmed += qty;
                        p.orders_confirmed += 1;
                    }
                    *self.held.entry((user, product)).or_default() += qty;
                }
            }
            OrderStatus::Rejected { product_id, .. } => {
                if let Some(p) = self.products.get_mut(&product_id.0) {
                    p.orders_rejected += 1;
                }
            }
            OrderStatus::Pending
            | OrderStatus::Cancelled
            | OrderStatus::Held { .. }
            | OrderStatus::Expired
            | OrderStatus::Released => {}
        }
        self.orders.insert(
            id,
            ModelOrder {
                user,
                lines: lines.to_vec(),
                status,
            },
        );
        ModelDecision::New(id, status)
    }

    fn restock(&mut self, product: u64, qty: u64) -> Result<(), ErrorCode> {
        let p = self.products.get_mut(&product).ok_or(ErrorCode::NotFound)?;
        if qty == 0 || p.stock + i128::from(qty) > i128::from(MAX_STOCK) {
            return Err(ErrorCode::BadRequest);
        }
        p.stock += i128::from(qty);
        p.restocked += i128::from(qty);
        Ok(())
    }

    fn set_stock(&mut self, product: u64, stock: u64) -> Result<(), ErrorCode> {
        let p = self.products.get_mut(&product).ok_or(ErrorCode::NotFound)?;
        if stock > MAX_STOCK {
            return Err(ErrorCode::BadRequest);
        }
        p.restocked += i128::from(stock) - p.stock;
        p.stock = i128::from(stock);
        Ok(())
    }

    fn change_rules(
        &mut self,
        product: u64,
        change: impl FnOnce(&mut SaleRules),
    ) -> Result<(), ErrorCode> {
        let p = self.products.get_mut(&product).ok_or(ErrorCode::NotFound)?;
        let mut rules = p.rules;
        change(&mut rules);
        if !rules_valid(&rules) {
            return Err(ErrorCode::BadRequest);
        }
        p.rules = rules;
        Ok(())
    }

    /// Cancels a confirmed order; false when it already was.
    fn cancel(&mut self, id: u64) -> bool {
        if !self.cancelled.insert(id) {
            return false;
        }
        let order = &self.orders[&id];
        for &(product, qty) in &order.lines {
            let qty = i128::from(qty);
            if let Some(p) = self.products.get_mut(&product) {
                p.stock += qty;
                p.confirmed -= qty;
                p.orders_cancelled += 1;
            }
            *self.held.entry((order.user, product)).or_default() -= qty;
        }
        self.held.retain(|_, held| *held != 0);
        true
    }
}

fn order_lines(order: &ModelOrder) -> Vec<OrderLine> {
    order
        .lines
        .iter()
        .map(|&(product, qty)| OrderLine {
            product_id: ProductId(product),
            qty,
        })
        .collect()
}

/// The book's figures of every product id the test uses, and its holdings.
type Snapshot = (
    Vec<Option<ProductState>>,
    BTreeMap<(UserId, ProductId), u64>,
);

fn snapshot(book: &Book) -> Snapshot {
    let products = PRODUCT_IDS
        .map(|id| book.products.get(&ProductId(id)).copied())
        .collect();
    let held = book.held.iter().map(|(k, v)| (*k, *v)).collect();
    (products, held)
}

/// The book, the catalog and the model agree on every figure.
fn check_state(book: &Book, catalog: &Catalog, model: &Model) -> Result<(), TestCaseError> {
    for id in PRODUCT_IDS {
        let in_book = book.products.get(&ProductId(id));
        let in_model = model.products.get(&id);
        let in_catalog = catalog.get(ProductId(id)).map(|p| p.stats(0));
        prop_assert_eq!(
            in_book.is_some(),
            in_model.is_some(),
            "product {} exists",
            id
        );
        prop_assert_eq!(
            in_catalog.is_some(),
            in_model.is_some(),
            "product {} published",
            id
        );
        let (Some(b), Some(m), Some(c)) = (in_book, in_model, in_catalog) else {
            continue;
        };
        let ledger = i128::from(b.initial) + i128::from(b.restocked) - i128::from(b.confirmed);
        prop_assert_eq!(ledger, i128::from(b.stock), "identity of product {}", id);
        prop_assert!(m.stock >= 0, "the model sold product {} below zero", id);
        let book_figures = (
            i128::from(b.stock),
            i128::from(b.initial),
            i128::from(b.restocked),
            i128::from(b.confirmed),
            b.rules,
        );
        let model_figures = (m.stock, m.initial, m.restocked, m.confirmed, m.rules);
        prop_assert_eq!(book_figures, model_figures, "book vs model, product {}", id);
        let info = &c.product;
        let catalog_figures = (
            i128::from(info.stock),
            i128::from(info.initial_stock),
            i128::from(info.restocked),
            i128::from(info.confirmed_qty),
            info.rules,
        );
        prop_assert_eq!(
            catalog_figures,
            model_figures,
            "catalog vs model, product {}",
            id
        );
        prop_assert!(info.balances(), "catalog identity of product {}", id);
        prop_assert_eq!(&info.name, &m.name);
        prop_assert_eq!(
            (c.orders_confirmed, c.orders_rejected, c.orders_cancelled),
            (m.orders_confirmed, m.orders_rejected, m.orders_cancelled),
            "catalog order counts of product {}",
            id
        );
    }
    // Holdings are kept for tracked products only (a limit now or before).
    let tracked = |p: u64| book.products.get(&ProductId(p)).is_some_and(|s| s.tracked);
    let book_held: BTreeMap<(u64, u64), i128> = book
        .held
        .iter()
        .map(|((u, p), h)| ((u.0, p.0), i128::from(*h)))
        .collect();
    let model_held: BTreeMap<(u64, u64), i128> = model
        .held
        .iter()
        .filter(|((_, p), held)| tracked(*p) && **held != 0)
        .map(|(k, v)| (*k, *v))
        .collect();
    prop_assert_eq!(&book_held, &model_held, "holdings of tracked products");
    for (product, state) in &book.products {
        if state.rules.max_per_buyer.is_some() {
            prop_assert!(
                state.tracked,
                "product {} has a limit but is untracked",
                product
            );
        }
    }
    let book_keys: BTreeMap<(u64, Uuid), u64> = book
        .keys
        .map
        .iter()
        .map(|((u, k), (id, _, _))| ((u.0, *k), id.0))
        .collect();
    let model_keys: BTreeMap<(u64, Uuid), u64> = model
        .keys
        .iter()
        .map(|(key, (id, _))| (*key, *id))
        .collect();
    prop_assert_eq!(&book_keys, &model_keys, "idempotency keys");
    prop_assert_eq!(book.next_order_id, model.next_order);
    prop_assert_eq!(book.next_product_id, model.next_product);
    Ok(())
}

/// What a restart does: a fresh book and catalog fed the events.
fn replay(events: &[Event]) -> (Book, Catalog) {
    let mut book = Book::new();
    let catalog = Catalog::default();
    for event in events {
        book.apply(event);
        catalog.apply(event);
    }
    (book, catalog)
}

/// Runs `ops` through the book and the model, checking after every step.
fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut book = Book::new();
    let mut catalog = Catalog::default();
    let mut model = Model::new();
    let mut events: Vec<Event> = Vec::new();
    // Every intent sent.
    let mut intents: Vec<SentIntent> = Vec::new();
    let mut fresh_keys = 0u128;
    for op in ops {
        let before = snapshot(&book);
        let mut emitted: Option<Event> = None;
        let mut seeds: Vec<Event> = Vec::new();
        match op {
            Op::Create { name, stock, rules } => {
                let name = format!("P{name}");
                let made = book.create_product(name.clone(), 1, stock, rules);
                let expected = model.create(name, stock, rules);
                prop_assert_eq!(made.as_ref().err().copied(), expected.err(), "create");
                emitted = made.ok();
            }
            Op::Order {
                user,
                mut lines,
                cart,
                key,
                now,
            } => {
                lines.sort_unstable_by_key(|&(p, _)| p);
                lines.dedup_by_key(|&mut (p, _)| p);
                let (user, key, lines, cart) = match key {
                    KeyPick::Retry(n) if !intents.is_empty() => intents[n % intents.len()].clone(),
                    KeyPick::SameKey(n) if !intents.is_empty() => {
                        (user, intents[n % intents.len()].1, lines, cart)
                    }
                    _ => {
                        fresh_keys += 1;
                        (user, Uuid::from_u128(fresh_keys), lines, cart)
                    }
                };
                intents.push((user, key, lines.clone(), cart));
                let source = if cart {
                    OrderSource::Cart
                } else {
                    OrderSource::Express
                };
                let intent = OrderIntent {
                    user_id: UserId(user),
                    items: lines
                        .iter()
                        .map(|&(p, qty)| OrderLine {
                            product_id: ProductId(p),
                            qty,
                        })
                        .collect(),
                    source,
                    idempotency_key: key,
                    partner: None,
                    hold: None,
                };
                let decided = book.decide(intent.clone(), now);
                let expected = model.order(user, &lines, cart, key, now);
                match decided {
                    Decision::KeysUnreadable => prop_assert!(false, "no key table in this test"),
                    Decision::New(order) => {
                        prop_assert_eq!(
                            ModelDecision::New(order.id.0, order.status),
                            expected,
                            "decision on {:?} at {}",
                            &lines,
                            now
                        );
                        prop_assert_eq!(
                            (order.user_id, &order.items, order.source),
                            (intent.user_id, &intent.items, intent.source)
                        );
                        prop_assert_eq!((order.idempotency_key, order.decided_at_ms), (key, now));
                        // All or nothing: every line's stock moved by its
                        // quantity, or nothing moved at all.
                        let after = snapshot(&book);
                        if order.status == OrderStatus::Confirmed {
                            for (i, id) in PRODUCT_IDS.enumerate() {
                                let taken = lines
                                    .iter()
                                    .find(|&&(p, _)| p == id)
                                    .map_or(0, |&(_, qty)| u64::from(qty));
                                let stock = |s: &Snapshot| s.0[i].map(|p| p.stock);
                                prop_assert_eq!(
                                    stock(&after),
                                    stock(&before).map(|s| s - taken),
                                    "stock of product {} after a confirmed order",
                                    id
                                );
                            }
                        } else {
                            prop_assert_eq!(&after, &before, "a rejected order changed the book");
                        }
                        emitted = Some(Event::OrderDecided(order));
                    }
                    Decision::Duplicate(id) => {
                        prop_assert_eq!(ModelDecision::Duplicate(id.0), expected);
                        // The same order as the first time: its event is in the journal.
                        let first = events.iter().any(|e| {
                            matches!(e, Event::OrderDecided(o)
                                if o.id == id && o.user_id == UserId(user) && o.idempotency_key == key)
                        });
                        prop_assert!(
                            first,
                            "duplicate {} names no earlier order of this intent",
                            id
                        );
                        prop_assert_eq!(&snapshot(&book), &before, "a duplicate changed the book");
                    }
                    Decision::KeyReused(id) => {
                        prop_assert_eq!(ModelDecision::KeyReused(id.0), expected);
                        prop_assert_eq!(&snapshot(&book), &before, "a reused key changed the book");
                    }
                }
            }
            Op::Restock { product, qty } => {
                let made = book.restock(ProductId(product), qty);
                prop_assert_eq!(
                    made.as_ref().err().copied(),
                    model.restock(product, qty).err()
                );
                emitted = made.ok();
            }
            Op::SetStock { product, stock } => {
                let made = book.set_stock(ProductId(product), stock);
                prop_assert_eq!(
                    made.as_ref().err().copied(),
                    model.set_stock(product, stock).err()
                );
                emitted = made.ok();
            }
            Op::Limit { product, max } => {
                let change = RulesChange::Limit(max);
                if book.needs_seed(ProductId(product), change) {
                    // As the sequencer does: the holdings read from the orders.
                    let held = model
                        .held
                        .iter()
                        .filter(|((_, p), held)| *p == product && **held > 0)
                        .map(|((u, _), held)| {
                            (UserId(*u), u64::try_from(*held).expect("held >= 0"))
                        })
                        .collect();
                    seeds = book.seed_held(ProductId(product), held);
                }
                let made = book.change_rules(ProductId(product), change);
                let expected = model.change_rules(product, |r| r.max_per_buyer = max);
                prop_assert_eq!(made.as_ref().err().copied(), expected.err());
                emitted = made.ok();
            }
            Op::Window {
                product,
                opens,
                closes,
            } => {
                let change = RulesChange::Window {
                    opens_at_ms: opens,
                    closes_at_ms: closes,
                };
                let made = book.change_rules(ProductId(product), change);
                let expected = model.change_rules(product, |r| {
                    r.opens_at_ms = opens;
                    r.closes_at_ms = closes;
                });
                prop_assert_eq!(made.as_ref().err().copied(), expected.err());
                emitted = made.ok();
            }
            Op::Cancel { nth } => {
                // As the admin handler does: only a confirmed order is sent
                // to the book (an already cancelled one too, as two racing
                // cancels would be); a rejected one is refused before it.
                let picked = model.orders.iter().nth(nth % model.orders.len().max(1));
                if let Some((&id, order)) = picked {
                    if order.status == OrderStatus::Confirmed {
                        let (user, items) = (order.user, order_lines(order));
                        let made = book.cancel(OrderId(id), UserId(user), items, 0);
                        prop_assert_eq!(made.is_some(), model.cancel(id), "cancel of order {}", id);
                        emitted = made;
                    }
                }
            }
            Op::Restart => {
                let (replayed, replayed_catalog) = replay(&events);
                prop_assert_eq!(&replayed, &book, "the replayed book differs");
                book = replayed;
                catalog = replayed_catalog;
            }
        }
        for event in seeds.into_iter().chain(emitted) {
            catalog.apply(&event);
            events.push(event);
        }
        check_state(&book, &catalog, &model)?;
    }
    let (replayed, replayed_catalog) = replay(&events);
    prop_assert_eq!(&replayed, &book, "the replayed book differs");
    check_state(&replayed, &replayed_catalog, &model)?;
    // A checkpoint of the book (through bincode) restores every figure and
    // holding; only the recent keys stay behind (the key table has them).
    let bytes = crate::store::encode(&book.state()).expect("encode");
    let state: super::BookState = crate::store::decode("checkpoint", &bytes).expect("decode");
    let restored = Book::from_state(state, book.holds_state(), None);
    prop_assert_eq!(
        restored.state(),
        book.state(),
        "the checkpointed book differs"
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn the_book_decides_as_a_plain_model_and_its_catalog_and_replay_agree(
        creates in proptest::collection::vec(create_strategy(), 1..5),
        ops in proptest::collection::vec(op_strategy(), 0..150),
    ) {
        run(creates.into_iter().chain(ops).collect())?;
    }
}

#[test]
fn a_short_scripted_run_of_the_model_test_passes_every_check() {
    // A fixed run through every kind of op, so a change that breaks the
    // harness itself shows even before proptest shrinks anything.
    let open = SaleRules::default();
    let limited = SaleRules {
        max_per_buyer: Some(2),
        opens_at_ms: Some(5),
        closes_at_ms: Some(20),
    };
    let ops = vec![
        Op::Create {
            name: 0,
            stock: 3,
            rules: open,
        },
        Op::Create {
            name: 1,
            stock: 2,
            rules: limited,
        },
        Op::Create {
            name: 1,
            stock: 2,
            rules: open,
        },
        Op::Order {
            user: 1,
            lines: vec![(1, 2), (2, 1)],
            cart: false,
            key: KeyPick::Fresh,
            now: 4,
        },
        Op::Order {
            user: 1,
            lines: vec![(1, 2), (2, 1)],
            cart: false,
            key: KeyPick::Fresh,
            now: 6,
        },
        Op::Order {
            user: 1,
            lines: vec![(1, 1)],
            cart: false,
            key: KeyPick::Retry(1),
            now: 7,
        },
        Op::Order {
            user: 2,
            lines: vec![(1, 1)],
            cart: false,
            key: KeyPick::SameKey(1),
            now: 7,
        },
        Op::Order {
            user: 1,
            lines: vec![(2, 1)],
            cart: false,
            key: KeyPick::SameKey(0),
            now: 7,
        },
        Op::Order {
            user: 2,
            lines: vec![(2, 1)],
            cart: true,
            key: KeyPick::Fresh,
            now: 7,
        },
        Op::Order {
            user: 2,
            lines: vec![(1, 1)],
            cart: true,
            key: KeyPick::SameKey(5),
            now: 7,
        },
        Op::Order {
            user: 2,
            lines: vec![(2, 2)],
            cart: false,
            key: KeyPick::Fresh,
            now: 8,
        },
        Op::Restock { product: 2, qty: 4 },
        Op::SetStock {
            product: 1,
            stock: 0,
        },
        Op::Limit {
            product: 2,
            max: Some(1),
        },
        Op::Window {
            product: 2,
            opens: None,
            closes: Some(3),
        },
        Op::Cancel { nth: 1 },
        Op::Cancel { nth: 1 },
        Op::Restart,
        Op::Order {
            user: 3,
            lines: vec![(7, 1)],
            cart: false,
            key: KeyPick::Fresh,
            now: 1,
        },
    ];
    if let Err(e) = run(ops) {
        panic!("{e}");
    }
}
