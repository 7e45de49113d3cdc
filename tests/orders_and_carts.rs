//! Orders and carts against a careless or hostile buyer (issue 12): a cart
//! is checked out once however many pays race for it, an idempotency key
//! names one request, and a storm that fills a product's pay queue cannot
//! refuse an operator's command for that product.

use crate::support::raw::{self, Conn};
use crate::support::{code_of, product, stock_of, test_config, TestServer, BUYER_PASSWORD};
use flashsale::protocol::{
    ClientFrame, ErrorCode, OrderInfo, OrderLine, OrderStatus, ProductId, Reply, Request,
    RequestBody, Response, ServerFrame,
};
use futures::SinkExt;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tempfile::TempDir;
use uuid::Uuid;

/// A raw connection logged in as `name` (a buyer made by [`TestServer::buyer`]).
async fn raw_buyer(server: &TestServer, name: &str) -> Conn {
    let mut conn = raw::connect(server.addr, "orders-and-carts").await;
    let login = RequestBody::Login {
        username: name.into(),
        password: BUYER_PASSWORD.into(),
    };
    let response = raw::call(&mut conn, login).await;
    assert!(
        matches!(response.result, Ok(Reply::LoggedIn { .. })),
        "login of {name}: {:?}",
        response.result
    );
    conn
}

/// Writes `bodies` as requests 1, 2, … in one write, and returns their
/// responses by id.
async fn one_write(conn: &mut Conn, bodies: Vec<RequestBody>) -> HashMap<u64, Response> {
    let count = bodies.len();
    for (id, body) in (1u64..).zip(bodies) {
        let request = ClientFrame::Request(Request {
            id,
            on_behalf_of: None,
            body,
        });
        conn.feed(request).await.expect("buffer a request");
    }
    conn.flush().await.expect("write the requests");
    let mut responses = HashMap::new();
    while responses.len() < count {
        match raw::next_frame(conn).await {
            Some(ServerFrame::Response(response)) => {
                responses.insert(response.id, response);
            }
            Some(ServerFrame::Push(_)) => {}
            other => panic!("expected a response, got {other:?}"),
        }
    }
    responses
}

fn line(product_id: ProductId, qty: u32) -> OrderLine {
    OrderLine { product_id, qty }
}

/// Issue 12: `CartAdd`, `Pay{K1}` and `Pay{K2}` in one write confirmed two
/// orders for one cart in 50 of 50 trials (the cart is emptied only once
/// the first order is durable). Now the second pay gets the first's order
/// or `EmptyCart`, and the stock is taken once per cart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cart_paid_twice_in_one_write_is_checked_out_once() {
    const TRIALS: u64 = 50;
    const STOCK: u64 = 10_000;
    let (server, _dir) = TestServer::start().await;
    let admin = server.admin().await;
    let mug = product(&admin, "Mug", STOCK).await;
    let buyer = server.buyer(&admin, "double-clicker").await;
    let mut conn = raw_buyer(&server, "double-clicker").await;
    let mut orders: Vec<OrderInfo> = Vec::new();
    for trial in 0..TRIALS {
        let (first, second) = (Uuid::new_v4(), Uuid::new_v4());
        let answers = one_write(
            &mut conn,
            vec![
                RequestBody::CartAdd {
                    product_id: mug.id,
                    qty: 2,
                },
                RequestBody::Pay {
                    idempotency_key: first,
                },
                RequestBody::Pay {
                    idempotency_key: second,
                },
            ],
        )
        .await;
        assert!(
            matches!(answers[&1].result, Ok(Reply::Cart(_))),
            "trial {trial}: cart add answered {:?}",
            answers[&1].result
        );
        let mut confirmed: Vec<OrderInfo> = Vec::new();
        for id in [2, 3] {
            match &answers[&id].result {
                Ok(Reply::Accepted(order)) => {
                    assert_eq!(order.status, OrderStatus::Confirmed, "trial {trial}");
                    if !confirmed.iter().any(|o| o.id == order.id) {
                        confirmed.push(order.clone());
                    }
                }
                Err(e) if e.code == ErrorCode::EmptyCart => {}
                other => panic!("trial {trial}: pay {id} answered {other:?}"),
            }
        }
        assert_eq!(
            confirmed.len(),
            1,
            "trial {trial}: one cart made {} orders: {confirmed:?}",
            confirmed.len()
        );
        orders.extend(confirmed);
    }
    assert_eq!(stock_of(&buyer, mug.id).await, STOCK - 2 * TRIALS);
    let stored = buyer.orders(None, 0).await.expect("orders");
    assert_eq!(stored.len(), orders.len(), "orders the buyer holds");
    assert!(stored.iter().all(|o| o.items == vec![line(mug.id, 2)]));
    assert!(buyer.cart().await.expect("cart").lines.is_empty());
}

/// Issue 12: a `Buy` reusing a key with other items silently got the first
/// order. Now a key names one request: the same request gets its order,
/// another (other lines, or a cart checkout against an express one) gets
/// `IdempotencyKeyReused`, whether the sequencer or intake (a sold-out
/// product) answers, and also after a restart (the book replays the keys).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_reused_for_another_request_is_refused_and_its_retry_still_gets_the_order() {
    let dir = TempDir::new().expect("temp dir");
    let server = TestServer::start_in(dir.path()).await;
    let admin = server.admin().await;
    let last = product(&admin, "Last unit", 1).await;
    let plenty = product(&admin, "Plenty", 100).await;
    let buyer = server.buyer(&admin, "key-reuser").await;
    let key = Uuid::new_v4();
    let first = buyer
        .buy_with_key(vec![line(last.id, 1)], key)
        .await
        .expect("first buy")
        .order;
    assert_eq!(first.status, OrderStatus::Confirmed);
    // The same request again: its order (intake answers, the product is sold out).
    let again = buyer.buy_with_key(vec![line(last.id, 1)], key).await;
    assert_eq!(again.expect("retry").order, first);
    // Other lines of a sold-out product: intake's retry path.
    let more = buyer.buy_with_key(vec![line(last.id, 2)], key).await;
    assert_eq!(code_of(more), ErrorCode::IdempotencyKeyReused);
    // Other lines the sequencer decides.
    let other = buyer.buy_with_key(vec![line(plenty.id, 1)], key).await;
    assert_eq!(code_of(other), ErrorCode::IdempotencyKeyReused);
    // A pay with the express key: refused, and the cart is untouched.
    buyer.cart_add(plenty.id, 3).await.expect("cart add");
    assert_eq!(
        code_of(buyer.pay_with_key(key).await),
        ErrorCode::IdempotencyKeyReused
    );
    assert_eq!(
        buyer.cart().await.expect("cart").lines,
        [line(plenty.id, 3)]
    );
    // A pay, then its retry once the cart is empty: the same order.
    let pay_key = Uuid::new_v4();
    let paid = buyer.pay_with_key(pay_key).await.expect("pay").order;
    assert_eq!(paid.items, [line(plenty.id, 3)]);
    let retried = buyer.pay_with_key(pay_key).await.expect("pay retry").order;
    assert_eq!(retried, paid);
    // An express buy with the pay's key.
    let express = buyer.buy_with_key(vec![line(plenty.id, 3)], pay_key).await;
    assert_eq!(code_of(express), ErrorCode::IdempotencyKeyReused);
    assert_eq!(stock_of(&buyer, plenty.id).await, 97);
    drop((admin, buyer));
    server.stop().await;

    let server = TestServer::start_in(dir.path()).await;
    let admin = server.admin().await;
    let buyer = server.client().await;
    buyer
        .login("key-reuser", BUYER_PASSWORD)
        .await
        .expect("login");
    let other = buyer.buy_with_key(vec![line(plenty.id, 1)], key).await;
    assert_eq!(code_of(other), ErrorCode::IdempotencyKeyReused);
    let again = buyer.buy_with_key(vec![line(plenty.id, 3)], pay_key).await;
    assert_eq!(code_of(again), ErrorCode::IdempotencyKeyReused);
    assert_eq!(buyer.pay_with_key(pay_key).await.expect("pay").order, paid);
    assert_eq!(stock_of(&buyer, plenty.id).await, 97);
    drop((admin, buyer));
    server.stop().await;
}

/// Pipelines rounds of express buys of `product` on `conn` until `stop`;
/// returns how many were answered `Overloaded`.
async fn storm(mut conn: Conn, product: ProductId, stop: Arc<AtomicBool>) -> u64 {
    const ROUND: usize = 64;
    let mut overloaded = 0;
    while !stop.load(Ordering::Relaxed) {
        let buys = (0..ROUND)
            .map(|_| RequestBody::Buy {
                items: vec![line(product, 1)],
                idempotency_key: Uuid::new_v4(),
            })
            .collect();
        for response in one_write(&mut conn, buys).await.into_values() {
            match response.result {
                Ok(Reply::Accepted(_)) => {}
                Err(e) if e.code == ErrorCode::Overloaded => overloaded += 1,
                other => panic!("a storm buy answered {other:?}"),
            }
        }
    }
    overloaded
}

/// Issue 12: closing a sale window or setting the stock could be refused
/// with `Overloaded` because a storm filled the product's pay queue.
/// Operators' commands now have a queue of their own, merged in arrival
/// order: with a pay queue of one command and a storm on the product,
/// every set-stock and set-window for it still goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_commands_get_through_while_a_storm_fills_the_products_pay_queue() {
    const STORMERS: usize = 4;
    const COMMANDS: usize = 40;
    let dir = TempDir::new().expect("temp dir");
    let mut config = test_config(dir.path());
    config.shards = 1;
    config.shard_queue_capacity = 1;
    config.pay_rate_per_connection = None;
    let server = TestServer::start_with(config).await;
    let admin = server.admin().await;
    let hot = product(&admin, "Hot", 1_000_000).await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut storms = Vec::new();
    for i in 0..STORMERS {
        let name = format!("stormer{i}");
        drop(server.buyer(&admin, &name).await);
        let conn = raw_buyer(&server, &name).await;
        storms.push(tokio::spawn(storm(conn, hot.id, Arc::clone(&stop))));
    }
    let mut refused = Vec::new();
    for i in 0..COMMANDS {
        let stock = 1_000_000 + i as u64;
        if let Err(e) = admin.set_stock(hot.id, stock).await {
            refused.push(format!("set-stock: {e}"));
        }
        if let Err(e) = admin.set_window(hot.id, None, None).await {
            refused.push(format!("set-window: {e}"));
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut overloaded = 0;
    for storm in storms {
        overloaded += storm.await.expect("storm task");
    }
    assert!(
        overloaded > 0,
        "the storm never filled the pay queue; the test proves nothing"
    );
    assert!(
        refused.is_empty(),
        "{} of {} operator commands refused while {overloaded} buys were, e.g. {:?}",
        refused.len(),
        2 * COMMANDS,
        refused.first()
    );
    let closed = admin.set_window(hot.id, None, Some(1)).await;
    assert!(closed.is_ok(), "closing the sale window: {closed:?}");
    drop(admin);
    server.stop().await;
}
