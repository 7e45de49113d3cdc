//! The book's decisions, and a model-based property test: random commands
//! never oversell, and a book replayed from the events agrees with the one
//! that decided.

use super::*;
use proptest::prelude::*;
use std::collections::HashMap;

fn intent(user: u64, items: &[(u64, u32)]) -> OrderIntent {
    OrderIntent {
        user_id: UserId(user),
        items: items
            .iter()
            .map(|&(p, qty)| OrderLine {
                product_id: ProductId(p),
                qty,
            })
            .collect(),
        source: OrderSource::Express,
        idempotency_key: Uuid::new_v4(),
        partner: None,
    }
}

fn new_order(decision: Decision) -> OrderInfo {
    match decision {
        Decision::New(order) => order,
        Decision::Duplicate(id) => panic!("unexpected duplicate of {id}"),
    }
}

#[test]
fn the_last_unit_goes_to_the_first_order_and_the_next_is_sold_out() {
    let mut book = Book::new();
    book.create_product("Tea".into(), 1, 1, SaleRules::default())
        .expect("created");
    let first = new_order(book.decide(intent(1, &[(1, 1)]), 0));
    let second = new_order(book.decide(intent(2, &[(1, 1)]), 0));
    assert_eq!(first.status, OrderStatus::Confirmed);
    assert_eq!(
        second.status,
        OrderStatus::Rejected {
            code: ErrorCode::SoldOut,
            product_id: ProductId(1)
        }
    );
    assert_eq!(book.stock(ProductId(1)), Some(0));
    assert!(second.id > first.id);
}

#[test]
fn a_multi_line_order_short_on_one_line_reserves_nothing() {
    let mut book = Book::new();
    book.create_product("A".into(), 1, 5, SaleRules::default())
        .expect("created");
    book.create_product("B".into(), 1, 1, SaleRules::default())
        .expect("created");
    let order = new_order(book.decide(intent(1, &[(1, 2), (2, 2)]), 0));
    assert!(matches!(
        order.status,
        OrderStatus::Rejected {
            product_id: ProductId(2),
            ..
        }
    ));
    assert_eq!(book.stock(ProductId(1)), Some(5));
    assert_eq!(book.stock(ProductId(2)), Some(1));
}

#[test]
fn the_same_key_from_the_same_buyer_is_a_duplicate_but_not_from_another() {
    let mut book = Book::new();
    book.create_product("A".into(), 1, 5, SaleRules::default())
        .expect("created");
    let first = intent(1, &[(1, 1)]);
    let mut other_buyer = first.clone();
    other_buyer.user_id = UserId(2);
    let order = new_order(book.decide(first.clone(), 0));
    assert_eq!(book.decide(first, 0), Decision::Duplicate(order.id));
    assert!(matches!(book.decide(other_buyer, 0), Decision::New(_)));
    assert_eq!(book.stock(ProductId(1)), Some(3));
}

#[test]
fn products_need_unique_names_and_restocks_need_a_product() {
    let mut book = Book::new();
    book.create_product("A".into(), 1, 5, SaleRules::default())
        .expect("created");
    assert_eq!(
        book.create_product("A".into(), 1, 5, SaleRules::default()),
        Err(ErrorCode::AlreadyExists)
    );
    assert_eq!(
        book.create_product("Huge".into(), 1, MAX_STOCK + 1, SaleRules::default()),
        Err(ErrorCode::BadRequest)
    );
    assert_eq!(book.restock(ProductId(9), 1), Err(ErrorCode::NotFound));
    assert_eq!(book.restock(ProductId(1), 0), Err(ErrorCode::BadRequest));
    book.restock(ProductId(1), 2).expect("restocked");
    assert_eq!(book.stock(ProductId(1)), Some(7));
}

fn rejected(code: ErrorCode, product: u64) -> OrderStatus {
    OrderStatus::Rejected {
        code,
        product_id: ProductId(product),
    }
}

#[test]
fn a_buyer_at_the_purchase_limit_is_refused_and_others_are_not() {
    let mut book = Book::new();
    let rules = SaleRules {
        max_per_buyer: Some(2),
        ..SaleRules::default()
    };
    book.create_product("Limited".into(), 1, 10, rules)
        .expect("created");
    assert_eq!(
        new_order(book.decide(intent(1, &[(1, 2)]), 0)).status,
        OrderStatus::Confirmed
    );
    assert_eq!(
        new_order(book.decide(intent(1, &[(1, 1)]), 0)).status,
        rejected(ErrorCode::LimitExceeded, 1)
    );
    assert_eq!(
        new_order(book.decide(intent(2, &[(1, 3)]), 0)).status,
        rejected(ErrorCode::LimitExceeded, 1)
    );
    assert_eq!(
        new_order(book.decide(intent(2, &[(1, 2)]), 0)).status,
        OrderStatus::Confirmed
    );
    assert_eq!(book.stock(ProductId(1)), Some(6));
}

#[test]
fn a_limit_set_mid_sale_counts_what_buyers_already_hold() {
    let mut book = Book::new();
    book.create_product("P".into(), 1, 10, SaleRules::default())
        .expect("created");
    new_order(book.decide(intent(1, &[(1, 3)]), 0));
    book.change_rules(ProductId(1), RulesChange::Limit(Some(3)))
        .expect("limit set");
    assert_eq!(
        new_order(book.decide(intent(1, &[(1, 1)]), 0)).status,
        rejected(ErrorCode::LimitExceeded, 1)
    );
    assert_eq!(
        book.change_rules(ProductId(1), RulesChange::Limit(Some(0))),
        Err(ErrorCode::BadRequest)
    );
}

#[test]
fn orders_outside_the_sale_window_are_refused_with_sale_not_open() {
    let mut book = Book::new();
    let rules = SaleRules {
        opens_at_ms: Some(1_000),
        closes_at_ms: Some(2_000),
        ..SaleRules::default()
    };
    book.create_product("Window".into(), 1, 10, rules)
        .expect("created");
    assert_eq!(
        new_order(book.decide(intent(1, &[(1, 1)]), 999)).status,
        rejected(ErrorCode::SaleNotOpen, 1)
    );
    assert_eq!(
        new_order(book.decide(intent(1, &[(1, 1)]), 1_000)).status,
        OrderStatus::Confirmed
    );
    assert_eq!(
        new_order(book.decide(intent(1, &[(1, 1)]), 2_000)).status,
        rejected(ErrorCode::SaleNotOpen, 1)
    );
    let backwards = RulesChange::Window {
        opens_at_ms: Some(5),
        closes_at_ms: Some(5),
    };
    assert_eq!(
        book.change_rules(ProductId(1), backwards),
        Err(ErrorCode::BadRequest)
    );
}

#[test]
fn cancelling_returns_the_units_once_and_frees_the_buyers_limit() {
    let mut book = Book::new();
    let rules = SaleRules {
        max_per_buyer: Some(1),
        ..SaleRules::default()
    };
    book.create_product("P".into(), 1, 1, rules)
        .expect("created");
    let order = new_order(book.decide(intent(1, &[(1, 1)]), 0));
    assert_eq!(book.stock(ProductId(1)), Some(0));
    assert!(book
        .cancel(order.id, order.user_id, order.items.clone(), 0)
        .is_some());
    assert!(book
        .cancel(order.id, order.user_id, order.items, 0)
        .is_none());
    assert_eq!(book.stock(ProductId(1)), Some(1));
    assert_eq!(book.held(UserId(1), ProductId(1)), 0);
    assert_eq!(
        new_order(book.decide(intent(1, &[(1, 1)]), 0)).status,
        OrderStatus::Confirmed
    );
}

#[test]
fn set_stock_replaces_the_figure_and_needs_a_product() {
    let mut book = Book::new();
    book.create_product("P".into(), 1, 5, SaleRules::default())
        .expect("created");
    book.set_stock(ProductId(1), 2).expect("set");
    assert_eq!(book.stock(ProductId(1)), Some(2));
    assert_eq!(book.set_stock(ProductId(9), 2), Err(ErrorCode::NotFound));
    assert_eq!(
        book.set_stock(ProductId(1), MAX_STOCK + 1),
        Err(ErrorCode::BadRequest)
    );
}

#[derive(Debug, Clone)]
enum Op {
    Order {
        user: u64,
        items: Vec<(u64, u32)>,
        retry: bool,
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
    /// Cancel the n-th confirmed order so far (modulo their number).
    Cancel {
        nth: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0u64..5, proptest::collection::vec((1u64..5, 1u32..4), 1..4), any::<bool>())
            .prop_map(|(user, items, retry)| Op::Order { user, items, retry }),
        1 => (1u64..6, 0u64..5).prop_map(|(product, qty)| Op::Restock { product, qty }),
        1 => (1u64..6, 0u64..8).prop_map(|(product, stock)| Op::SetStock { product, stock }),
        1 => (1u64..6, proptest::option::of(0u32..4)).prop_map(|(product, max)| Op::Limit { product, max }),
        1 => (0usize..50).prop_map(|nth| Op::Cancel { nth }),
    ]
}

proptest! {
    #[test]
    fn random_commands_never_oversell_and_replay_agrees(
        stocks in proptest::collection::vec(0u64..10, 4),
        ops in proptest::collection::vec(op(), 0..200),
    ) {
        let mut book = Book::new();
        let mut events = Vec::new();
        for (i, stock) in stocks.iter().enumerate() {
            events.push(book.create_product(format!("P{i}"), 1, *stock, SaleRules::default()).expect("created"));
        }
        let mut last_intent: Option<OrderIntent> = None;
        for op in ops {
            match op {
                Op::Order { user, mut items, retry } => {
                    items.sort_by_key(|(p, _)| *p);
                    items.dedup_by_key(|(p, _)| *p);
                    let next = match (&last_intent, retry) {
                        (Some(previous), true) => previous.clone(),
                        _ => intent(user, &items),
                    };
                    last_intent = Some(next.clone());
                    match book.decide(next, 0) {
                        Decision::New(order) => events.push(Event::OrderDecided(order)),
                        Decision::Duplicate(id) => prop_assert!(events.iter().any(|e| matches!(e, Event::OrderDecided(o) if o.id == id))),
                    }
                }
                Op::Restock { product, qty } => {
                    if let Ok(event) = book.restock(ProductId(product), qty) {
                        events.push(event);
                    }
                }
                Op::SetStock { product, stock } => {
                    if let Ok(event) = book.set_stock(ProductId(product), stock) {
                        events.push(event);
                    }
                }
                Op::Limit { product, max } => {
                    if let Ok(event) = book.change_rules(ProductId(product), RulesChange::Limit(max)) {
                        events.push(event);
                    }
                }
                Op::Cancel { nth } => {
                    let confirmed: Vec<OrderInfo> = events.iter().filter_map(|e| match e {
                        Event::OrderDecided(o) if o.status == OrderStatus::Confirmed => Some(o.clone()),
                        _ => None,
                    }).collect();
                    if let Some(order) = confirmed.get(nth % confirmed.len().max(1)) {
                        if let Some(event) = book.cancel(order.id, order.user_id, order.items.clone(), 0) {
                            events.push(event);
                        }
                    }
                }
            }
            // Invariant after every step: no buyer holds more than a limit
            // allowed when its orders were confirmed, and stock is never negative
            // (it is unsigned; the ledger below proves it never went under).
        }
        // Invariant: initial + net operator changes - confirmed + cancelled == stock.
        let cancelled: std::collections::HashSet<OrderId> = events.iter().filter_map(|e| match e {
            Event::OrderCancelled { order_id, .. } => Some(*order_id),
            _ => None,
        }).collect();
        let mut ledger: HashMap<ProductId, i128> = HashMap::new();
        for e in &events {
            match e {
                Event::ProductCreated { id, stock, .. } => { ledger.insert(*id, i128::from(*stock)); }
                Event::Restocked { product_id, qty } => *ledger.entry(*product_id).or_default() += i128::from(*qty),
                Event::StockSet { product_id, previous, stock } => {
                    let entry = ledger.entry(*product_id).or_default();
                    prop_assert_eq!(*entry, i128::from(*previous), "set-stock saw a stale figure");
                    *entry = i128::from(*stock);
                }
                Event::OrderDecided(o) if o.status == OrderStatus::Confirmed => {
                    for l in &o.items {
                        let entry = ledger.entry(l.product_id).or_default();
                        *entry -= i128::from(l.qty);
                        prop_assert!(*entry >= 0, "oversold product {}", l.product_id);
                    }
                }
                Event::OrderCancelled { items, order_id, .. } => {
                    prop_assert!(cancelled.contains(order_id));
                    for l in items {
                        *ledger.entry(l.product_id).or_default() += i128::from(l.qty);
                    }
                }
                _ => {}
            }
        }
        for i in 0..stocks.len() {
            let id = ProductId(i as u64 + 1);
            prop_assert_eq!(book.stock(id).map(i128::from), ledger.get(&id).copied());
        }
        // Purchase limits: a confirmed order never took a buyer past the limit in force.
        let mut held: HashMap<(UserId, ProductId), u64> = HashMap::new();
        let mut limits: HashMap<ProductId, Option<u32>> = HashMap::new();
        for e in &events {
            match e {
                Event::RulesSet { product_id, rules } => { limits.insert(*product_id, rules.max_per_buyer); }
                Event::OrderDecided(o) if o.status == OrderStatus::Confirmed => {
                    for l in &o.items {
                        let h = held.entry((o.user_id, l.product_id)).or_default();
                        *h += u64::from(l.qty);
                        if let Some(Some(max)) = limits.get(&l.product_id) {
                            prop_assert!(*h <= u64::from(*max), "limit broken for {:?}", (o.user_id, l.product_id));
                        }
                    }
                }
                Event::OrderCancelled { user_id, items, .. } => {
                    for l in items {
                        if let Some(h) = held.get_mut(&(*user_id, l.product_id)) {
                            *h -= u64::from(l.qty);
                        }
                    }
                }
                _ => {}
            }
        }
        // One order per (buyer, key).
        let mut keys = std::collections::HashSet::new();
        for e in &events {
            if let Event::OrderDecided(o) = e {
                prop_assert!(keys.insert((o.user_id, o.idempotency_key)));
            }
        }
        // Replaying the events gives the same stock.
        let mut replayed = Book::new();
        for e in &events {
            replayed.apply(e);
        }
        for i in 1..=stocks.len() as u64 {
            let id = ProductId(i);
            prop_assert_eq!(replayed.stock(id), book.stock(id));
            prop_assert_eq!(replayed.rules(id), book.rules(id));
            for user in 0..5 {
                prop_assert_eq!(replayed.held(UserId(user), id), book.held(UserId(user), id));
            }
        }
    }
}
