//! The book's decisions, and a model-based property test: random commands
//! never oversell, and a book replayed from the events agrees with the one
//! that decided.

use super::*;
use proptest::prelude::*;

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
    book.create_product("Tea".into(), 1, 1).expect("created");
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
    book.create_product("A".into(), 1, 5).expect("created");
    book.create_product("B".into(), 1, 1).expect("created");
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
    book.create_product("A".into(), 1, 5).expect("created");
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
    book.create_product("A".into(), 1, 5).expect("created");
    assert_eq!(
        book.create_product("A".into(), 1, 5),
        Err(ErrorCode::AlreadyExists)
    );
    assert_eq!(
        book.create_product("Huge".into(), 1, MAX_STOCK + 1),
        Err(ErrorCode::BadRequest)
    );
    assert_eq!(book.restock(ProductId(9), 1), Err(ErrorCode::NotFound));
    assert_eq!(book.restock(ProductId(1), 0), Err(ErrorCode::BadRequest));
    book.restock(ProductId(1), 2).expect("restocked");
    assert_eq!(book.stock(ProductId(1)), Some(7));
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
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0u64..5, proptest::collection::vec((1u64..5, 1u32..4), 1..4), any::<bool>())
            .prop_map(|(user, items, retry)| Op::Order { user, items, retry }),
        1 => (1u64..6, 0u64..5).prop_map(|(product, qty)| Op::Restock { product, qty }),
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
            events.push(book.create_product(format!("P{i}"), 1, *stock).expect("created"));
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
            }
        }
        // Invariant: initial + restocked - confirmed == stock, for every product.
        for (i, initial) in stocks.iter().enumerate() {
            let id = ProductId(i as u64 + 1);
            let restocked: u64 = events.iter().map(|e| match e {
                Event::Restocked { product_id, qty } if *product_id == id => *qty,
                _ => 0,
            }).sum();
            let confirmed: u64 = events.iter().map(|e| match e {
                Event::OrderDecided(o) if o.status == OrderStatus::Confirmed => o.items.iter()
                    .filter(|l| l.product_id == id).map(|l| u64::from(l.qty)).sum(),
                _ => 0,
            }).sum();
            prop_assert!(initial + restocked >= confirmed, "oversold product {}", id);
            prop_assert_eq!(book.stock(id), Some(initial + restocked - confirmed));
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
            prop_assert_eq!(replayed.stock(ProductId(i)), book.stock(ProductId(i)));
        }
    }
}
