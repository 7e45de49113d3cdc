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
    let rare = product(&admin, "Rare", 1).await;
    let common = product(&admin, "Common", 5).await;
    let first = server.buyer(&admin, "first").await;
    let second = server.buyer(&admin, "second").await;

    // Both orders pass intake (stock 1 is published for both) and meet in the
    // sequencer: the first takes everything, the second reserves nothing.
    let both = [line(rare.id, 1), line(common.id, 2)];
    let (a, b) = tokio::join!(first.buy(both.to_vec()), second.buy(both.to_vec()));
    let outcomes = [Outcome::of(a), Outcome::of(b)];
    assert_eq!(
        outcomes.iter().filter(|o| o.is_confirmed()).count(),
        1,
        "{outcomes:?}"
    );
    assert_eq!(stock_of(&admin, rare.id).await, 0);
    assert_eq!(
        stock_of(&admin, common.id).await,
        3,
        "only the confirmed order took Common"
    );

    // Refused at intake: Common is untouched too.
    let late = server.buyer(&admin, "late").await;
    late.cart_add(common.id, 2).await.expect("Common in cart");
    let refused = late.buy(vec![line(common.id, 1), line(rare.id, 1)]).await;
    assert_eq!(code_of(refused), ErrorCode::SoldOut);
    assert_eq!(stock_of(&admin, common.id).await, 3);

    // Rejected by the sequencer: the rejection names the product that ran out.
    for order in second
        .orders(None, 0)
        .await
        .expect("orders")
        .into_iter()
        .chain(first.orders(None, 0).await.expect("orders"))
    {
        if let OrderStatus::Rejected { code, product_id } = order.status {
            assert_eq!((code, product_id), (ErrorCode::SoldOut, rare.id));
        }
    }
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
    let express = buyer
        .buy_with_key(vec![line(last.id, 1)], key)
        .await
        .expect("same order")
        .order;
    assert_eq!(express.id, first.id);
    assert_eq!(buyer.orders(None, 0).await.expect("orders").len(), 1);
    server.stop().await;
}
