//! First come, first served, and all or nothing.

use crate::support::{code_of, product, stock_of, Outcome, TestServer};
use flashsale::protocol::{ErrorCode, OrderLine, OrderStatus, ProductId};
use futures::future::join_all;

fn line(product_id: ProductId, qty: u32) -> OrderLine {
    OrderLine { product_id, qty }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_accepted_one_after_another_are_won_by_the_earliest() {
    let (server, _dir) = TestServer::start().await;
    let admin = server.admin().await;
    let sneakers = product(&admin, "Sneakers", 3).await;
    let mut outcomes = Vec::new();
    for i in 0..6 {
        let buyer = server.buyer(&admin, &format!("queue{i}")).await;
        outcomes.push(Outcome::of(buyer.buy(vec![line(sneakers.id, 1)]).await));
    }
    let confirmed: Vec<bool> = outcomes.iter().map(Outcome::is_confirmed).collect();
    assert_eq!(
        confirmed,
        [true, true, true, false, false, false],
        "{outcomes:?}"
    );
    assert!(outcomes[3..].iter().all(Outcome::is_sold_out));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_orders_are_decided_in_the_order_they_arrived() {
    let (server, _dir) = TestServer::start().await;
    let admin = server.admin().await;
    let tea = product(&admin, "Tea", 5).await;
    let buyer = server.buyer(&admin, "pipeliner").await;
    // Twenty requests written back to back on one connection, before any answer.
    let attempts = (0..20).map(|_| buyer.buy(vec![line(tea.id, 1)]));
    let outcomes: Vec<Outcome> = join_all(attempts)
        .await
        .into_iter()
        .map(Outcome::of)
        .collect();
    let confirmed: Vec<usize> = outcomes
        .iter()
        .enumerate()
        .filter(|(_, o)| o.is_confirmed())
        .map(|(i, _)| i)
        .collect();
    assert_eq!(confirmed, [0, 1, 2, 3, 4], "{outcomes:?}");
    assert!(
        outcomes[5..].iter().all(Outcome::is_sold_out),
        "{outcomes:?}"
    );
    let ids: Vec<u64> = outcomes
        .iter()
        .filter_map(|o| match o {
            Outcome::Confirmed(order) | Outcome::Rejected(order, _) => Some(order.id.0),
            Outcome::Refused(_) => None,
        })
        .collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "order ids follow arrival: {ids:?}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_with_one_sold_out_line_reserves_nothing() {
    let (server, _dir) = TestServer::start().await;
    let admin = server.admin().await;
    let partner_key = crate::support::partner_key(&admin, "pairs").await;
    let partner = flashsale::client::Client::connect(server.addr)
        .await
        .expect("connect");
    partner.login_api_key(&partner_key).await.expect("login");
    let common = product(&admin, "Common", 1000).await;

    // Two orders for the last unit of Rare plus two Common, written back to
    // back on one connection: both pass intake (the stock published is 1)
    // and meet in the sequencer, which gives the first everything and the
    // second nothing. Tried on fresh products until that meeting is seen.
    let mut sequencer_rejections = 0;
    for round in 0..5 {
        let rare = product(&admin, &format!("Rare {round}"), 1).await;
        let common_before = stock_of(&admin, common.id).await;
        let both = [line(rare.id, 1), line(common.id, 2)];
        let first = partner.acting_for(format!("first-{round}"));
        let second = partner.acting_for(format!("second-{round}"));
        let (a, b) = tokio::join!(first.buy(both.to_vec()), second.buy(both.to_vec()));
        let outcomes = [Outcome::of(a), Outcome::of(b)];
        assert!(outcomes[0].is_confirmed(), "{outcomes:?}");
        assert!(outcomes[1].is_sold_out(), "{outcomes:?}");
        assert_eq!(stock_of(&admin, rare.id).await, 0);
        assert_eq!(
            stock_of(&admin, common.id).await,
            common_before - 2,
            "only the first took Common"
        );
        if let Outcome::Rejected(order, _) = &outcomes[1] {
            let expected = OrderStatus::Rejected {
                code: ErrorCode::SoldOut,
                product_id: rare.id,
            };
            assert_eq!(
                order.status, expected,
                "the rejection names the line that ran out"
            );
            sequencer_rejections += 1;
        }
    }
    assert!(
        sequencer_rejections > 0,
        "the sequencer's all-or-nothing path was exercised"
    );

    // Refused at intake: Common is untouched too.
    let late = server.buyer(&admin, "late").await;
    let before = stock_of(&admin, common.id).await;
    let rare = product(&admin, "Rare gone", 0).await;
    let refused = late.buy(vec![line(common.id, 1), line(rare.id, 1)]).await;
    assert_eq!(code_of(refused), ErrorCode::SoldOut);
    assert_eq!(stock_of(&admin, common.id).await, before);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_pay_with_the_same_key_returns_the_same_order() {
    let (server, _dir) = TestServer::start().await;
    let admin = server.admin().await;
    let last = product(&admin, "Last one", 1).await;
    let buyer = server.buyer(&admin, "retrier").await;
    buyer.cart_add(last.id, 1).await.expect("cart");
    let key = uuid::Uuid::new_v4();
    let first = buyer.pay_with_key(key).await.expect("accepted").order;
    assert_eq!(first.status, OrderStatus::Confirmed);
    // The product is now sold out, yet the retry gets the original order back.
    let again = buyer.pay_with_key(key).await.expect("same order").order;
    assert_eq!(again, first);
    // The same key for another kind of request is not a retry.
    let express = buyer.buy_with_key(vec![line(last.id, 1)], key).await;
    let code = express.err().and_then(|e| e.code());
    assert_eq!(code, Some(ErrorCode::IdempotencyKeyReused));
    assert_eq!(buyer.orders(None, 0).await.expect("orders").len(), 1);
    server.stop().await;
}
