//! The book's decisions, one rule at a time, and its invariant checks
//! firing on events that would break them (the model-based property test
//! is in `model_tests.rs`).

use super::*;

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
        hold: None,
    }
}

fn new_order(decision: Decision) -> OrderInfo {
    match decision {
        Decision::New(order) => order,
        other => panic!("unexpected {other:?}"),
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
fn a_key_reused_for_other_lines_or_another_source_is_refused_and_changes_nothing() {
    let mut book = Book::new();
    book.create_product("A".into(), 1, 5, SaleRules::default())
        .expect("created");
    let first = intent(1, &[(1, 1)]);
    let order = new_order(book.decide(first.clone(), 0));
    let mut more = first.clone();
    more.items[0].qty = 2;
    assert_eq!(book.decide(more, 0), Decision::KeyReused(order.id));
    let mut as_pay = first;
    as_pay.source = OrderSource::Cart;
    assert_eq!(book.decide(as_pay, 0), Decision::KeyReused(order.id));
    assert_eq!(book.stock(ProductId(1)), Some(4));
}

#[test]
fn a_pay_retried_after_its_cart_changed_is_the_same_request() {
    let mut book = Book::new();
    book.create_product("A".into(), 1, 5, SaleRules::default())
        .expect("created");
    let mut pay = intent(1, &[(1, 1)]);
    pay.source = OrderSource::Cart;
    let order = new_order(book.decide(pay.clone(), 0));
    pay.items[0].qty = 3;
    assert_eq!(book.decide(pay, 0), Decision::Duplicate(order.id));
    assert_eq!(book.stock(ProductId(1)), Some(4));
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
    new_order(book.decide(intent(2, &[(1, 1)]), 0));
    assert_eq!(book.held(UserId(1), ProductId(1)), 0, "untracked: not kept");
    let change = RulesChange::Limit(Some(3));
    assert!(book.needs_seed(ProductId(1), change));
    // As the sequencer does: the holdings read from the orders first.
    let seeds = book.seed_held(ProductId(1), vec![(UserId(1), 3), (UserId(2), 1)]);
    assert_eq!(seeds.len(), 1);
    assert!(!book.needs_seed(ProductId(1), change));
    book.change_rules(ProductId(1), change).expect("limit set");
    assert_eq!(book.held(UserId(1), ProductId(1)), 3);
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

fn confirmed_order(id: u64, user: u64, product: u64, qty: u32) -> OrderInfo {
    OrderInfo {
        id: OrderId(id),
        user_id: UserId(user),
        items: vec![OrderLine {
            product_id: ProductId(product),
            qty,
        }],
        status: OrderStatus::Confirmed,
        source: OrderSource::Express,
        idempotency_key: Uuid::new_v4(),
        decided_at_ms: 0,
        partner: None,
    }
}

fn book_with_one_product(stock: u64) -> Book {
    let mut book = Book::new();
    book.create_product("P".into(), 1, stock, SaleRules::default())
        .expect("created");
    book
}

#[test]
#[should_panic(
    expected = "invariant stock >= 0 broken: product 1 has 2 units and an order takes 3"
)]
fn replaying_a_confirmed_order_larger_than_the_stock_panics_instead_of_going_below_zero() {
    let mut book = book_with_one_product(2);
    book.apply(&Event::OrderDecided(confirmed_order(1, 1, 1, 3)));
}

#[test]
#[should_panic(expected = "only 1 are in confirmed orders")]
fn cancelling_more_units_than_were_confirmed_panics() {
    let mut book = book_with_one_product(5);
    book.apply(&Event::OrderDecided(confirmed_order(1, 1, 1, 1)));
    book.apply(&Event::OrderCancelled {
        order_id: OrderId(1),
        user_id: UserId(1),
        items: vec![OrderLine {
            product_id: ProductId(1),
            qty: 2,
        }],
        cancelled_at_ms: 0,
    });
}

#[test]
#[should_panic(expected = "that buyer 2 holds only 0 of")]
fn cancelling_units_the_buyer_does_not_hold_panics() {
    let mut book = book_with_one_product(5);
    // Holdings are kept (and checked) for products with a limit.
    book.apply(&Event::RulesSet {
        product_id: ProductId(1),
        rules: SaleRules {
            max_per_buyer: Some(5),
            ..SaleRules::default()
        },
    });
    book.apply(&Event::OrderDecided(confirmed_order(1, 1, 1, 1)));
    book.apply(&Event::OrderCancelled {
        order_id: OrderId(1),
        user_id: UserId(2),
        items: vec![OrderLine {
            product_id: ProductId(1),
            qty: 1,
        }],
        cancelled_at_ms: 0,
    });
}

#[test]
#[should_panic(expected = "do not add up to its confirmed and held units")]
fn seeding_holdings_that_do_not_add_up_to_the_confirmed_units_panics() {
    let mut book = Book::new();
    book.create_product("P".into(), 1, 10, SaleRules::default())
        .expect("created");
    new_order(book.decide(intent(1, &[(1, 3)]), 0));
    book.seed_held(ProductId(1), vec![(UserId(1), 2)]);
}

#[test]
#[should_panic(expected = "got a limit without its holdings seeded")]
fn replaying_a_limit_on_a_sold_product_without_seeds_panics() {
    let mut book = book_with_one_product(5);
    book.apply(&Event::OrderDecided(confirmed_order(1, 1, 1, 1)));
    book.apply(&Event::RulesSet {
        product_id: ProductId(1),
        rules: SaleRules {
            max_per_buyer: Some(1),
            ..SaleRules::default()
        },
    });
}

#[test]
#[should_panic(expected = "starts from another stock than the book's")]
fn a_replayed_stock_set_from_another_figure_panics() {
    let mut book = book_with_one_product(5);
    book.apply(&Event::StockSet {
        product_id: ProductId(1),
        previous: 4,
        stock: 1,
    });
}

#[test]
#[should_panic(
    expected = "invariant initial + restocked - confirmed - held == stock broken for product 1"
)]
fn a_figure_changed_behind_the_ledger_is_caught_by_the_next_change() {
    let mut book = book_with_one_product(5);
    if let Some(product) = book.products.get_mut(&ProductId(1)) {
        product.stock = 4;
    }
    book.restock(ProductId(1), 1).expect("restocked");
}

#[test]
fn every_change_keeps_the_ledger_of_the_product_it_touches() {
    let mut book = book_with_one_product(5);
    let order = new_order(book.decide(intent(1, &[(1, 2)]), 0));
    book.restock(ProductId(1), 3).expect("restocked");
    book.set_stock(ProductId(1), 1).expect("set");
    book.cancel(order.id, order.user_id, order.items, 0)
        .expect("cancelled");
    let p = book.products[&ProductId(1)];
    // 5 initial, +3 restocked, 6 -> 1 is -5 more, 2 confirmed then cancelled.
    assert_eq!(
        (p.initial, p.restocked, p.confirmed, p.stock),
        (5, -2, 0, 3)
    );
}

fn hold_intent(user: u64, items: &[(u64, u32)], requested_ms: Option<u64>) -> OrderIntent {
    OrderIntent {
        source: OrderSource::ExpressHold,
        hold: Some(HoldAsk {
            requested_ms,
            default_ms: 1_000,
        }),
        ..intent(user, items)
    }
}

/// Every event a book decided, applied to a fresh book, gives the same book.
fn replayed(events: &[Event]) -> Book {
    let mut book = Book::new();
    for event in events {
        book.apply(event);
    }
    book
}

#[test]
fn a_hold_takes_stock_in_order_and_paying_it_confirms_the_units() {
    let mut book = book_with_one_product(3);
    let mut events = vec![Event::ProductCreated {
        id: ProductId(1),
        name: "P".into(),
        price_cents: 1,
        stock: 3,
        rules: SaleRules::default(),
    }];
    let hold = new_order(book.decide(hold_intent(1, &[(1, 2)], None), 10));
    assert_eq!(
        hold.status,
        OrderStatus::Held {
            expires_at_ms: 1_010
        }
    );
    events.push(Event::OrderDecided(hold.clone()));
    let short = new_order(book.decide(intent(2, &[(1, 2)]), 11));
    assert!(matches!(
        short.status,
        OrderStatus::Rejected {
            code: ErrorCode::SoldOut,
            ..
        }
    ));
    events.push(Event::OrderDecided(short));
    assert_eq!(
        (book.stock(ProductId(1)), book.holds().on_hold(ProductId(1))),
        (Some(1), 2)
    );
    let HoldOutcome::Changed(paid) = book.pay_hold(hold.id, UserId(1), "gw-1", (500, 500)) else {
        panic!("not paid");
    };
    events.push(paid);
    assert_eq!(
        book.pay_hold(hold.id, UserId(1), "gw-1", (600, 600)),
        HoldOutcome::AsItStands
    );
    assert_eq!(
        book.pay_hold(hold.id, UserId(1), "gw-2", (600, 600)),
        HoldOutcome::Refused(ErrorCode::PaymentRefMismatch)
    );
    assert_eq!(
        book.pay_hold(hold.id, UserId(2), "gw-1", (600, 600)),
        HoldOutcome::Refused(ErrorCode::NotFound)
    );
    assert_eq!(book.holds().on_hold(ProductId(1)), 0);
    assert_eq!(book.stock(ProductId(1)), Some(1));
    assert_eq!(
        book.expire_due(5_000, |_| false),
        vec![],
        "a paid hold never expires"
    );
    let mut replay = replayed(&events);
    replay.clear_keys();
    let mut decided = book;
    decided.clear_keys();
    assert_eq!(
        replay, decided,
        "a replayed book equals the one that decided"
    );
}

#[test]
fn due_holds_expire_earliest_first_and_a_late_payment_is_refused() {
    let mut book = book_with_one_product(5);
    let late = new_order(book.decide(hold_intent(1, &[(1, 2)], Some(300)), 0));
    let early = new_order(book.decide(hold_intent(2, &[(1, 1)], Some(100)), 0));
    let kept = new_order(book.decide(hold_intent(3, &[(1, 1)], None), 0));
    assert_eq!(book.next_deadline(), Some(100));
    let expired = book.expire_due(300, |_| false);
    let ids: Vec<OrderId> = expired
        .iter()
        .map(|e| match e {
            Event::HoldExpired { order_id, .. } => *order_id,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(ids, vec![early.id, late.id]);
    assert_eq!(book.stock(ProductId(1)), Some(4));
    assert_eq!(
        book.pay_hold(late.id, UserId(1), "gw", (301, 301)),
        HoldOutcome::Refused(ErrorCode::HoldExpired)
    );
    // Due but not expired yet: paying it expires it first.
    assert!(matches!(
        book.pay_hold(kept.id, UserId(3), "gw", (1_000, 1_000)),
        HoldOutcome::Expired(Event::HoldExpired { .. })
    ));
    assert_eq!(book.stock(ProductId(1)), Some(5));
    assert_eq!(book.holds().stats().expired, 3);
}

#[test]
fn a_released_hold_gives_back_its_units_and_its_limit() {
    let mut book = Book::new();
    let rules = SaleRules {
        max_per_buyer: Some(2),
        ..SaleRules::default()
    };
    book.create_product("Shoe".into(), 1, 4, rules)
        .expect("created");
    let hold = new_order(book.decide(hold_intent(1, &[(1, 2)], None), 0));
    let over = new_order(book.decide(intent(1, &[(1, 1)]), 1));
    assert!(matches!(
        over.status,
        OrderStatus::Rejected {
            code: ErrorCode::LimitExceeded,
            ..
        }
    ));
    assert!(matches!(
        book.release_hold(hold.id, Some(UserId(2)), (2, 2)),
        HoldOutcome::Refused(ErrorCode::NotFound)
    ));
    assert!(matches!(
        book.release_hold(hold.id, None, (2, 2)),
        HoldOutcome::Changed(Event::HoldReleased { .. })
    ));
    assert_eq!(
        book.release_hold(hold.id, Some(UserId(1)), (3, 3)),
        HoldOutcome::AsItStands
    );
    assert_eq!(book.held(UserId(1), ProductId(1)), 0);
    let within = new_order(book.decide(intent(1, &[(1, 2)]), 4));
    assert_eq!(within.status, OrderStatus::Confirmed);
    assert_eq!(
        book.pay_hold(hold.id, UserId(1), "gw", (5, 5)),
        HoldOutcome::Refused(ErrorCode::NotHeld)
    );
}

#[test]
fn a_hold_lasts_the_shortest_of_the_asked_time_and_its_products_hold_times() {
    let mut book = book_with_one_product(5);
    book.create_product("Other".into(), 1, 5, SaleRules::default())
        .expect("created");
    book.set_hold_time(ProductId(2), Some(2_000)).expect("set");
    assert_eq!(
        book.set_hold_time(ProductId(9), Some(2_000)),
        Err(ErrorCode::NotFound)
    );
    assert_eq!(
        book.set_hold_time(ProductId(2), Some(10)),
        Err(ErrorCode::BadRequest)
    );
    let both = new_order(book.decide(hold_intent(1, &[(1, 1), (2, 1)], None), 0));
    assert_eq!(
        both.status,
        OrderStatus::Held {
            expires_at_ms: 1_000
        },
        "product 1: the default"
    );
    let asked = new_order(book.decide(hold_intent(1, &[(2, 1)], Some(1_500)), 0));
    assert_eq!(
        asked.status,
        OrderStatus::Held {
            expires_at_ms: 1_500
        }
    );
    let capped = new_order(book.decide(hold_intent(1, &[(2, 1)], Some(9_000)), 0));
    assert_eq!(
        capped.status,
        OrderStatus::Held {
            expires_at_ms: 2_000
        }
    );
}

#[test]
fn a_payment_that_arrived_before_the_deadline_wins_though_decided_after_it() {
    let mut book = book_with_one_product(5);
    let hold = new_order(book.decide(hold_intent(1, &[(1, 2)], Some(100)), 0));
    // Arrived at 90, decided at 150 (it waited in its queue): paid.
    assert!(matches!(
        book.pay_hold(hold.id, UserId(1), "gw", (90, 150)),
        HoldOutcome::Changed(Event::HoldPaid { .. })
    ));
    let late = new_order(book.decide(hold_intent(2, &[(1, 1)], Some(100)), 0));
    // Arrived at the deadline: expired, whenever decided.
    assert!(matches!(
        book.pay_hold(late.id, UserId(2), "gw", (100, 150)),
        HoldOutcome::Expired(_)
    ));
    assert_eq!(book.stock(ProductId(1)), Some(3));
}

#[test]
fn a_limit_set_while_holds_are_live_counts_them_and_their_end_gives_them_back() {
    let mut book = book_with_one_product(10);
    let hold = new_order(book.decide(hold_intent(1, &[(1, 2)], Some(100)), 0));
    let change = RulesChange::Limit(Some(2));
    assert!(
        book.needs_seed(ProductId(1), change),
        "held units need seeding"
    );
    // The sequencer reads the holdings from the orders (here: the hold).
    book.seed_held(ProductId(1), vec![(UserId(1), 2)]);
    book.change_rules(ProductId(1), change).expect("limit");
    let over = new_order(book.decide(intent(1, &[(1, 1)]), 1));
    assert!(matches!(
        over.status,
        OrderStatus::Rejected {
            code: ErrorCode::LimitExceeded,
            ..
        }
    ));
    assert_eq!(book.expire_due(100, |_| false).len(), 1, "{hold:?} expires");
    assert_eq!(book.held(UserId(1), ProductId(1)), 0);
    let within = new_order(book.decide(intent(1, &[(1, 2)]), 101));
    assert_eq!(within.status, OrderStatus::Confirmed);
}
