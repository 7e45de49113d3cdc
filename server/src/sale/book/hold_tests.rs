//! Holds against a plain model, by property: random sequences of holds,
//! orders, payments, releases, restocks and the clock moving on. After
//! every step the book's stock and held units equal the model's (the book
//! asserts its own ledger, `initial + restocked − confirmed − held ==
//! stock`, on every change); at the end, the journal's events replayed on
//! a fresh book, and the catalog fed the same events, give the same
//! figures, and a checkpoint of the holds restores them.

use super::*;
use crate::sale::catalog::Catalog;
use proptest::prelude::*;
use std::collections::BTreeMap;

const PRODUCTS: u64 = 2;
const USERS: u64 = 3;

#[derive(Debug, Clone)]
enum Op {
    Hold {
        user: u64,
        product: u64,
        qty: u32,
        ms: u64,
    },
    Buy {
        user: u64,
        product: u64,
        qty: u32,
    },
    /// Pay the `n`th hold placed (modulo), as its buyer or another.
    Pay {
        n: usize,
        own: bool,
        arrived_early: bool,
    },
    Release {
        n: usize,
    },
    Restock {
        product: u64,
        qty: u64,
    },
    Advance {
        ms: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1..=USERS, 1..=PRODUCTS, 1u32..4, 1u64..300)
            .prop_map(|(user, product, qty, ms)| Op::Hold { user, product, qty, ms }),
        2 => (1..=USERS, 1..=PRODUCTS, 1u32..4)
            .prop_map(|(user, product, qty)| Op::Buy { user, product, qty }),
        3 => (0usize..16, prop::bool::weighted(0.9), any::<bool>())
            .prop_map(|(n, own, arrived_early)| Op::Pay { n, own, arrived_early }),
        1 => (0usize..16).prop_map(|n| Op::Release { n }),
        1 => (1..=PRODUCTS, 1u64..4).prop_map(|(product, qty)| Op::Restock { product, qty }),
        2 => (1u64..200).prop_map(|ms| Op::Advance { ms }),
    ]
}

/// A hold as the model sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Held,
    Paid,
    Gone,
}

#[derive(Debug, Default)]
struct Model {
    stock: BTreeMap<u64, u64>,
    held: BTreeMap<u64, u64>,
    /// Order, buyer, product, qty, deadline, state.
    holds: Vec<(OrderId, u64, u64, u64, u64, State)>,
}

impl Model {
    /// Expires what is due at `now` (sparing `except`).
    fn expire(&mut self, now: u64, except: Option<OrderId>) {
        for hold in &mut self.holds {
            if hold.5 == State::Held && hold.4 <= now && Some(hold.0) != except {
                hold.5 = State::Gone;
                *self.stock.entry(hold.2).or_default() += hold.3;
                *self.held.entry(hold.2).or_default() -= hold.3;
            }
        }
    }
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut book = Book::new();
    let mut model = Model::default();
    let mut events = Vec::new();
    for p in 1..=PRODUCTS {
        let made = book
            .create_product(format!("P{p}"), 1, 5, SaleRules::default())
            .expect("created");
        events.push(made);
        model.stock.insert(p, 5);
    }
    let mut now = 1_000u64;
    for op in ops {
        match op {
            Op::Hold {
                user,
                product,
                qty,
                ms,
            } => {
                let intent = OrderIntent {
                    user_id: UserId(user),
                    items: vec![OrderLine {
                        product_id: ProductId(product),
                        qty,
                    }],
                    source: OrderSource::ExpressHold,
                    idempotency_key: Uuid::new_v4(),
                    partner: None,
                    hold: Some(HoldAsk {
                        requested_ms: Some(ms),
                        default_ms: 10_000,
                    }),
                };
                events.extend(book.expire_due(now, |_| false));
                model.expire(now, None);
                let Decision::New(order) = book.decide(intent, now) else {
                    return Err(TestCaseError::fail("a fresh key made no order"));
                };
                let stock = model.stock.entry(product).or_default();
                if *stock >= u64::from(qty) {
                    prop_assert_eq!(
                        order.status,
                        OrderStatus::Held {
                            expires_at_ms: now + ms
                        }
                    );
                    *stock -= u64::from(qty);
                    *model.held.entry(product).or_default() += u64::from(qty);
                    model.holds.push((
                        order.id,
                        user,
                        product,
                        u64::from(qty),
                        now + ms,
                        State::Held,
                    ));
                } else {
                    prop_assert!(
                        matches!(order.status, OrderStatus::Rejected { .. }),
                        "{:?}",
                        order.status
                    );
                }
                events.push(Event::OrderDecided(order));
            }
            Op::Buy { user, product, qty } => {
                let intent = OrderIntent {
                    user_id: UserId(user),
                    items: vec![OrderLine {
                        product_id: ProductId(product),
                        qty,
                    }],
                    source: OrderSource::Express,
                    idempotency_key: Uuid::new_v4(),
                    partner: None,
                    hold: None,
                };
                events.extend(book.expire_due(now, |_| false));
                model.expire(now, None);
                let Decision::New(order) = book.decide(intent, now) else {
                    return Err(TestCaseError::fail("a fresh key made no order"));
                };
                let stock = model.stock.entry(product).or_default();
                let confirmed = *stock >= u64::from(qty);
                prop_assert_eq!(order.status == OrderStatus::Confirmed, confirmed);
                if confirmed {
                    *stock -= u64::from(qty);
                }
                events.push(Event::OrderDecided(order));
            }
            Op::Pay {
                n,
                own,
                arrived_early,
            } => {
                let Some(&(id, user, product, qty, deadline, state)) =
                    model.holds.get(n % model.holds.len().max(1))
                else {
                    continue;
                };
                let buyer = if own { user } else { user % USERS + 1 };
                // The request arrived just before its deadline (and waited
                // in the queue), or now.
                let arrived = if arrived_early {
                    now.min(deadline.saturating_sub(1))
                } else {
                    now
                };
                events.extend(book.expire_due(now, |o| o == id));
                model.expire(now, Some(id));
                let outcome = book.pay_hold(id, UserId(buyer), "gw", (arrived, now));
                let index = model.holds.iter().position(|h| h.0 == id).unwrap_or(0);
                match (state, buyer == user) {
                    (_, false) => {
                        prop_assert_eq!(&outcome, &HoldOutcome::Refused(ErrorCode::NotFound))
                    }
                    (State::Held, true) if deadline <= arrived => {
                        prop_assert!(matches!(outcome, HoldOutcome::Expired(_)), "{:?}", outcome);
                        model.holds[index].5 = State::Gone;
                        *model.stock.entry(product).or_default() += qty;
                        *model.held.entry(product).or_default() -= qty;
                    }
                    (State::Held, true) => {
                        prop_assert!(
                            matches!(outcome, HoldOutcome::Changed(Event::HoldPaid { .. })),
                            "{:?}",
                            outcome
                        );
                        model.holds[index].5 = State::Paid;
                        *model.held.entry(product).or_default() -= qty;
                    }
                    (State::Paid, true) => prop_assert_eq!(&outcome, &HoldOutcome::AsItStands),
                    (State::Gone, true) => {
                        prop_assert!(matches!(outcome, HoldOutcome::Refused(_)), "{:?}", outcome)
                    }
                }
                if let HoldOutcome::Changed(e) | HoldOutcome::Expired(e) = outcome {
                    events.push(e);
                }
                // Spared holds due now expire after the request.
                events.extend(book.expire_due(now, |_| false));
                model.expire(now, None);
            }
            Op::Release { n } => {
                let Some(&(id, user, product, qty, _, state)) =
                    model.holds.get(n % model.holds.len().max(1))
                else {
                    continue;
                };
                events.extend(book.expire_due(now, |o| o == id));
                model.expire(now, Some(id));
                let state = model
                    .holds
                    .iter()
                    .find(|h| h.0 == id)
                    .map_or(state, |h| h.5);
                let outcome = book.release_hold(id, Some(UserId(user)), (now, now));
                match state {
                    State::Held => {
                        prop_assert!(matches!(outcome, HoldOutcome::Changed(_)), "{:?}", outcome);
                        let index = model.holds.iter().position(|h| h.0 == id).unwrap_or(0);
                        model.holds[index].5 = State::Gone;
                        *model.stock.entry(product).or_default() += qty;
                        *model.held.entry(product).or_default() -= qty;
                    }
                    State::Paid => {
                        prop_assert_eq!(&outcome, &HoldOutcome::Refused(ErrorCode::NotHeld))
                    }
                    State::Gone => prop_assert_eq!(&outcome, &HoldOutcome::AsItStands),
                }
                if let HoldOutcome::Changed(e) = outcome {
                    events.push(e);
                }
            }
            Op::Restock { product, qty } => {
                events.push(book.restock(ProductId(product), qty).expect("restock"));
                *model.stock.entry(product).or_default() += qty;
            }
            Op::Advance { ms } => now += ms,
        }
        for p in 1..=PRODUCTS {
            prop_assert_eq!(book.stock(ProductId(p)), model.stock.get(&p).copied());
            prop_assert_eq!(
                book.holds().on_hold(ProductId(p)),
                model.held.get(&p).copied().unwrap_or(0)
            );
        }
    }
    // Replay: the journal's events rebuild the same book and the catalog
    // publishes the same figures.
    let mut replayed = Book::new();
    let catalog = Catalog::default();
    for event in &events {
        replayed.apply(event);
        catalog.apply(event);
    }
    prop_assert_eq!(&replayed, &book, "the replayed book differs");
    for p in 1..=PRODUCTS {
        let info = catalog.info(ProductId(p)).expect("published");
        prop_assert_eq!(Some(info.stock), book.stock(ProductId(p)));
        prop_assert_eq!(info.held, book.holds().on_hold(ProductId(p)));
        prop_assert!(info.balances(), "{:?}", info);
    }
    prop_assert_eq!(&Holds::from_state(book.holds_state()), book.holds());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn holds_orders_payments_releases_and_expiries_agree_with_the_model(
        ops in prop::collection::vec(op(), 1..60)
    ) {
        run(ops)?;
    }
}
