//! The story flashsale exists for: many buyers, little stock, one moment.

use crate::support::{product, stock_of, Outcome, TestServer};
use flashsale::protocol::{
    ClientCodec, ClientFrame, Hello, OrderLine, OrderStatus, ProductId, Push, Reply, Request,
    RequestBody, ServerFrame, PROTOCOL_VERSION,
};
use futures::future::join_all;
use futures::{SinkExt, StreamExt};
use rand::{rngs::StdRng, Rng, SeedableRng};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::Barrier;
use tokio_util::codec::Framed;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_buyers_racing_for_two_units_get_exactly_two_confirmations() {
    let (server, _dir) = TestServer::start().await;
    let admin = server.admin().await;
    let tickets = product(&admin, "Concert ticket", 2).await;
    let mut buyers = Vec::new();
    let mut watchers = Vec::new();
    for i in 0..10 {
        let buyer = server.buyer(&admin, &format!("buyer{i}")).await;
        buyer
            .cart_add(tickets.id, 1)
            .await
            .expect("stock 2 covers 1 in the cart");
        buyers.push(buyer);
        // The buyer on a second device: a session of its own, which is pushed
        // the outcome (the paying session hears it in its answer).
        let watcher = server.client().await;
        watcher
            .login(&format!("buyer{i}"), crate::support::BUYER_PASSWORD)
            .await
            .expect("second session");
        watchers.push(watcher);
    }
    let start = Arc::new(Barrier::new(buyers.len()));
    let attempts = buyers.iter().zip(&watchers).map(|(buyer, watcher)| {
        let (buyer, start) = (buyer.clone(), Arc::clone(&start));
        let mut pushes = watcher.pushes();
        tokio::spawn(async move {
            start.wait().await;
            let outcome = Outcome::of(buyer.pay().await);
            let pushed = match &outcome {
                Outcome::Confirmed(order) | Outcome::Rejected(order, _) => loop {
                    match pushes.next().await {
                        Some(Push::OrderUpdate(update)) if update.id == order.id => {
                            break Some(update)
                        }
                        Some(_) => continue,
                        None => panic!("connection closed before the push"),
                    }
                },
                Outcome::Refused(_) => None,
            };
            (outcome, pushed)
        })
    });
    let results: Vec<_> = join_all(attempts)
        .await
        .into_iter()
        .map(|r| r.expect("task"))
        .collect();

    let confirmed = results.iter().filter(|(o, _)| o.is_confirmed()).count();
    let sold_out = results.iter().filter(|(o, _)| o.is_sold_out()).count();
    assert_eq!(confirmed, 2, "{results:?}");
    assert_eq!(sold_out, 8, "{results:?}");
    assert_eq!(stock_of(&admin, tickets.id).await, 0);
    for (outcome, pushed) in &results {
        if let Outcome::Confirmed(order) | Outcome::Rejected(order, _) = outcome {
            let pushed = pushed.as_ref().expect("every accepted order is pushed");
            assert_eq!(
                pushed.status, order.status,
                "the push carries the decided status"
            );
        }
    }
    // Confirmed carts are emptied, rejected ones are left as they were.
    for (buyer, (outcome, _)) in buyers.iter().zip(&results) {
        let lines = buyer.cart().await.expect("cart").lines.len();
        assert_eq!(
            lines,
            if outcome.is_confirmed() { 0 } else { 1 },
            "{outcome:?}"
        );
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_buyers_over_twenty_products_never_oversell() {
    let (server, _dir) = TestServer::start().await;
    let admin = server.admin().await;
    let mut rng = StdRng::seed_from_u64(0x5EED);
    let mut initial = HashMap::new();
    let mut products = Vec::new();
    for i in 0..20 {
        let p = product(&admin, &format!("Product {i}"), rng.gen_range(0..30)).await;
        initial.insert(p.id, p.stock);
        products.push(p.id);
    }
    let buyers = join_all((0..200).map(|i| {
        let (server, admin) = (&server, &admin);
        async move { server.buyer(admin, &format!("racer{i}")).await }
    }))
    .await;

    for round in 0..3 {
        let start = Arc::new(Barrier::new(buyers.len()));
        let plans: Vec<Vec<OrderLine>> = buyers
            .iter()
            .map(|_| {
                let mut lines: Vec<OrderLine> = (0..rng.gen_range(1..=3))
                    .map(|_| OrderLine {
                        product_id: products[rng.gen_range(0..products.len())],
                        qty: rng.gen_range(1..=3),
                    })
                    .collect();
                lines.sort_by_key(|l| l.product_id);
                lines.dedup_by_key(|l| l.product_id);
                lines
            })
            .collect();
        let attempts = buyers.iter().zip(plans).map(|(buyer, lines)| {
            let (buyer, start) = (buyer.clone(), Arc::clone(&start));
            tokio::spawn(async move {
                start.wait().await;
                if round % 2 == 0 {
                    Outcome::of(buyer.buy(lines).await)
                } else {
                    buyer.cart_clear().await.expect("clear");
                    for line in &lines {
                        // Stock may already be short; the cart check refuses, the pay goes on.
                        let _ = buyer.cart_add(line.product_id, line.qty).await;
                    }
                    Outcome::of(buyer.pay().await)
                }
            })
        });
        for result in join_all(attempts).await {
            let outcome = result.expect("task");
            // The only refusals a valid order can meet: not enough stock, or a
            // cart left empty because the stock check refused every line.
            let expected = match &outcome {
                Outcome::Confirmed(_) => true,
                Outcome::Rejected(_, code) => *code == flashsale::protocol::ErrorCode::SoldOut,
                Outcome::Refused(code) => matches!(
                    code,
                    flashsale::protocol::ErrorCode::SoldOut
                        | flashsale::protocol::ErrorCode::EmptyCart
                ),
            };
            assert!(expected, "{outcome:?}");
        }
    }

    let mut confirmed_qty: HashMap<ProductId, u64> = HashMap::new();
    for buyer in &buyers {
        for order in buyer.orders(None, 0).await.expect("orders") {
            if order.status == OrderStatus::Confirmed {
                for line in order.items {
                    *confirmed_qty.entry(line.product_id).or_default() += u64::from(line.qty);
                }
            }
        }
    }
    let stats = admin.stats().await.expect("stats");
    for p in stats.products.into_iter().map(|s| s.product) {
        let sold = confirmed_qty.get(&p.id).copied().unwrap_or(0);
        assert_eq!(
            sold,
            initial[&p.id] - p.stock,
            "product {}: sold {sold}, {p:?}",
            p.id
        );
        assert_eq!(p.confirmed_qty, sold);
        assert!(p.balances(), "{p:?}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outcome_is_pushed_to_the_buyers_other_sessions_and_never_to_another_buyer() {
    let (server, _dir) = TestServer::start().await;
    let admin = server.admin().await;
    let vinyl = product(&admin, "Vinyl", 1).await;
    let phone = server.buyer(&admin, "alice").await;
    let laptop = server.client().await;
    laptop
        .login("alice", crate::support::BUYER_PASSWORD)
        .await
        .expect("second login");
    let stranger = server.buyer(&admin, "mallory").await;
    let stranger_tablet = server.client().await;
    stranger_tablet
        .login("mallory", crate::support::BUYER_PASSWORD)
        .await
        .expect("mallory's second login");
    let mut laptop_pushes = laptop.pushes();
    let mut stranger_pushes = stranger_tablet.pushes();

    let placed = phone
        .buy(vec![OrderLine {
            product_id: vinyl.id,
            qty: 1,
        }])
        .await
        .expect("accepted");
    assert_eq!(placed.order.status, OrderStatus::Confirmed);
    let Some(Push::OrderUpdate(pushed)) = laptop_pushes.next().await else {
        panic!("the other session got no push");
    };
    assert_eq!(pushed.id, placed.order.id);
    assert_eq!(pushed.status, OrderStatus::Confirmed);

    // The stranger's first push is about its own order, not alice's.
    let own = stranger
        .buy(vec![OrderLine {
            product_id: vinyl.id,
            qty: 1,
        }])
        .await;
    assert_eq!(
        crate::support::code_of(own),
        flashsale::protocol::ErrorCode::SoldOut
    );
    let restocked = admin.restock(vinyl.id, 1).await.expect("restock");
    assert_eq!(restocked.stock, 1);
    let mine = stranger
        .buy(vec![OrderLine {
            product_id: vinyl.id,
            qty: 1,
        }])
        .await
        .expect("accepted");
    let Some(Push::OrderUpdate(first)) = stranger_pushes.next().await else {
        panic!("no push");
    };
    assert_eq!(
        first.id, mine.order.id,
        "a buyer is never pushed another buyer's order"
    );
    server.stop().await;
}

/// Reads frames until the answer to request `id`, collecting the pushes
/// read on the way.
async fn answer_and_pushes(
    conn: &mut Framed<TcpStream, ClientCodec>,
    id: u64,
) -> (Result<Reply, flashsale::protocol::WireError>, Vec<Push>) {
    let mut pushes = Vec::new();
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(20), conn.next())
            .await
            .expect("the server answers")
            .expect("the connection is open")
            .expect("a frame");
        match frame {
            ServerFrame::Response(response) if response.id == id => {
                return (response.result, pushes)
            }
            ServerFrame::Push(push) => pushes.push(push),
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

/// Sends one request on a raw connection.
async fn send(conn: &mut Framed<TcpStream, ClientCodec>, id: u64, body: RequestBody) {
    let request = Request {
        id,
        on_behalf_of: None,
        body,
    };
    conn.send(ClientFrame::Request(request))
        .await
        .expect("send a request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_that_places_an_order_reads_one_frame_for_it_and_other_sessions_one_push() {
    let (server, _dir) = TestServer::start().await;
    let admin = server.admin().await;
    let records = product(&admin, "Records", 5).await;
    let _buyer = server.buyer(&admin, "dora").await;
    let mut sessions = Vec::new();
    for _ in 0..2 {
        let stream = TcpStream::connect(server.addr).await.expect("connect");
        let mut conn = Framed::new(stream, ClientCodec::new());
        conn.send(ClientFrame::Hello(Hello {
            protocol_version: PROTOCOL_VERSION,
            client_name: "raw".into(),
        }))
        .await
        .expect("hello");
        assert!(matches!(
            conn.next().await,
            Some(Ok(ServerFrame::Welcome(_)))
        ));
        let login = RequestBody::Login {
            username: "dora".into(),
            password: crate::support::BUYER_PASSWORD.into(),
        };
        send(&mut conn, 1, login).await;
        let (logged_in, _) = answer_and_pushes(&mut conn, 1).await;
        assert!(matches!(logged_in, Ok(Reply::LoggedIn { .. })));
        sessions.push(conn);
    }
    let (placing, others) = sessions.split_at_mut(1);
    let (placing, other) = (&mut placing[0], &mut others[0]);
    let line = OrderLine {
        product_id: records.id,
        qty: 1,
    };
    let buy = RequestBody::Buy {
        items: vec![line],
        idempotency_key: uuid::Uuid::new_v4(),
    };
    send(placing, 2, buy.clone()).await;
    let (answer, mut pushes) = answer_and_pushes(placing, 2).await;
    let Ok(Reply::Accepted(order)) = answer else {
        panic!("not accepted: {answer:?}");
    };
    assert_eq!(order.status, OrderStatus::Confirmed);
    // A retry of the same intent is answered with the same order, and is
    // pushed to no one. The server queues a push before the answer it goes
    // with, and writes both before the next answer: so any push of this
    // order to the placing session has arrived by the `Pong`.
    send(placing, 3, buy).await;
    let (retried, more) = answer_and_pushes(placing, 3).await;
    pushes.extend(more);
    assert!(matches!(retried, Ok(Reply::Accepted(ref again)) if again.id == order.id));
    send(placing, 4, RequestBody::Ping).await;
    let (pong, more) = answer_and_pushes(placing, 4).await;
    pushes.extend(more);
    assert!(matches!(pong, Ok(Reply::Pong)));
    assert!(
        pushes.is_empty(),
        "the placing session was pushed what its answer said: {pushes:?}"
    );

    // A push queued before a `Ping` is written, at the latest, right after
    // its `Pong`: two pings in turn see every push queued before the first.
    let mut pushed = Vec::new();
    for id in [2, 3] {
        send(other, id, RequestBody::Ping).await;
        let (pong, more) = answer_and_pushes(other, id).await;
        assert!(matches!(pong, Ok(Reply::Pong)));
        pushed.extend(more);
    }
    let [Push::OrderUpdate(update)] = pushed.as_slice() else {
        panic!("the other session is pushed the order once: {pushed:?}");
    };
    assert_eq!(
        (update.id, update.status),
        (order.id, OrderStatus::Confirmed)
    );
    server.stop().await;
}
