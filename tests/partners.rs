//! Partners: API keys, acting for their own buyers only, express checkout,
//! pushes, and retries that never duplicate an order.

use crate::support::proxy::Proxy;
use crate::support::{code_of, partner_key, product, stock_of, Outcome, TestServer};
use flashsale::client::{Client, ClientConfig};
use flashsale::protocol::{
    ErrorCode, OrderId, OrderInfo, OrderLine, OrderStatus, ProductId, Push, Role,
};
use futures::future::join_all;
use std::collections::{HashMap, HashSet};

fn one(product_id: ProductId) -> Vec<OrderLine> {
    vec![OrderLine { product_id, qty: 1 }]
}

async fn partner_client(addr: std::net::SocketAddr, key: &str, connections: usize) -> Client {
    let config = ClientConfig {
        connections,
        ..ClientConfig::default()
    };
    let client = Client::connect_with(addr, config).await.expect("connect");
    client.login_api_key(key).await.expect("api key login");
    client
}

/// Every order of a partner's buyers, following `ListOrders` pages.
async fn all_partner_orders(partner: &Client) -> Vec<OrderInfo> {
    let mut all = Vec::new();
    let mut after: Option<OrderId> = None;
    loop {
        let page = partner.orders(after, 0).await.expect("orders");
        let Some(last) = page.last() else { return all };
        after = Some(last.id);
        all.extend(page);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partner_over_four_connections_orders_for_a_thousand_buyers_without_overselling() {
    let (server, _dir) = TestServer::start().await;
    let admin = server.admin().await;
    let key = partner_key(&admin, "bigshop").await;
    let mut products = Vec::new();
    for i in 0..5 {
        products.push(product(&admin, &format!("Item {i}"), 100).await.id);
    }
    let partner = partner_client(server.addr, &key, 4).await;
    let attempts = (0..1000).map(|i| {
        let buyer = partner.acting_for(format!("buyer-{i}"));
        let product_id = products[i % products.len()];
        async move { (i, Outcome::of(buyer.buy(one(product_id)).await)) }
    });
    let outcomes: Vec<(usize, Outcome)> = join_all(attempts).await;
    let confirmed = outcomes.iter().filter(|(_, o)| o.is_confirmed()).count();
    assert_eq!(confirmed, 500, "200 buyers for each 100 units");
    assert!(outcomes
        .iter()
        .all(|(_, o)| o.is_confirmed() || o.is_sold_out()));
    for p in &products {
        assert_eq!(stock_of(&admin, *p).await, 0);
    }
    // Each buyer sees its own order and nobody else's.
    for (i, outcome) in outcomes.iter().take(40) {
        let buyer = partner.acting_for(format!("buyer-{i}"));
        let own = buyer.orders(None, 0).await.expect("orders");
        match outcome {
            Outcome::Confirmed(order) | Outcome::Rejected(order, _) => {
                assert_eq!(own, vec![order.clone()]);
                let neighbour = partner.acting_for(format!("buyer-{}", i + 1));
                assert_eq!(
                    code_of(neighbour.order(order.id).await),
                    ErrorCode::NotFound
                );
            }
            Outcome::Refused(_) => assert!(own.is_empty()),
        }
    }
    // The partner itself sees every order of its buyers, tagged with the buyer reference.
    let all = all_partner_orders(&partner).await;
    let accepted = outcomes
        .iter()
        .filter(|(_, o)| !matches!(o, Outcome::Refused(_)))
        .count();
    assert_eq!(all.len(), accepted);
    assert!(all.iter().all(|o| o
        .partner
        .as_ref()
        .is_some_and(|p| p.buyer_ref.0.starts_with("buyer-"))));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partners_and_buyers_never_see_each_others_orders() {
    let (server, _dir) = TestServer::start().await;
    let admin = server.admin().await;
    let p = product(&admin, "Shared", 10).await;
    let shop_a = partner_client(server.addr, &partner_key(&admin, "shop-a").await, 1).await;
    let shop_b = partner_client(server.addr, &partner_key(&admin, "shop-b").await, 1).await;
    // The same reference names two different buyers at two partners.
    let a_order = shop_a
        .acting_for("alice")
        .buy(one(p.id))
        .await
        .expect("a")
        .order;
    let b_alice = shop_b.acting_for("alice");
    assert!(b_alice.orders(None, 0).await.expect("orders").is_empty());
    assert_eq!(
        code_of(b_alice.order(a_order.id).await),
        ErrorCode::NotFound
    );
    assert_eq!(code_of(shop_b.order(a_order.id).await), ErrorCode::NotFound);
    assert!(all_partner_orders(&shop_b).await.is_empty());
    b_alice.cart_add(p.id, 2).await.expect("b's alice cart");
    assert!(shop_a
        .acting_for("alice")
        .cart()
        .await
        .expect("cart")
        .lines
        .is_empty());
    // A plain buyer cannot see a partner's order, nor act for anyone.
    let plain = server.buyer(&admin, "plain").await;
    assert_eq!(code_of(plain.order(a_order.id).await), ErrorCode::NotFound);
    assert_eq!(
        code_of(plain.acting_for("alice").cart().await),
        ErrorCode::Forbidden
    );
    // The partner sees its buyer's order without naming the buyer.
    assert_eq!(
        shop_a.order(a_order.id).await.expect("own buyer's order"),
        a_order
    );
    // Cart and pay need a buyer.
    assert_eq!(code_of(shop_a.cart().await), ErrorCode::BadRequest);
    assert_eq!(code_of(shop_a.buy(one(p.id)).await), ErrorCode::BadRequest);
    assert_eq!(
        code_of(shop_a.acting_for("").cart().await),
        ErrorCode::BadRequest
    );
    assert_eq!(
        code_of(shop_a.acting_for("x".repeat(129)).cart().await),
        ErrorCode::BadRequest
    );
    // Partners are not admins.
    assert_eq!(
        code_of(shop_a.create_product("Mine", 1, 1).await),
        ErrorCode::Forbidden
    );
    assert_eq!(
        code_of(shop_a.create_api_key("shop-b").await),
        ErrorCode::Forbidden
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buy_and_pay_interleaved_on_one_product_keep_arrival_order() {
    let (server, _dir) = TestServer::start().await;
    let admin = server.admin().await;
    let p = product(&admin, "Contested", 5).await;
    let partner = partner_client(server.addr, &partner_key(&admin, "mixer").await, 1).await;
    let buyers: Vec<Client> = (0..12)
        .map(|i| partner.acting_for(format!("mixed-{i}")))
        .collect();
    for buyer in buyers.iter().step_by(2) {
        buyer.cart_add(p.id, 1).await.expect("cart");
    }
    // Written back to back on one connection: pay, buy, pay, buy, …
    let attempts = buyers.iter().enumerate().map(|(i, buyer)| async move {
        if i % 2 == 0 {
            Outcome::of(buyer.pay().await)
        } else {
            Outcome::of(buyer.buy(one(p.id)).await)
        }
    });
    let outcomes: Vec<Outcome> = join_all(attempts).await;
    let confirmed: Vec<bool> = outcomes.iter().map(Outcome::is_confirmed).collect();
    assert_eq!(
        confirmed,
        [true, true, true, true, true, false, false, false, false, false, false, false],
        "{outcomes:?}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partner_connection_dropped_mid_burst_still_gets_exactly_one_order_per_intent() {
    let (server, _dir) = TestServer::start().await;
    let admin = server.admin().await;
    let p = product(&admin, "Plenty", 1000).await;
    let key = partner_key(&admin, "flaky").await;
    let proxy = Proxy::start(server.addr).await;
    let partner = partner_client(proxy.addr, &key, 2).await;
    let mut pushes = partner.pushes();
    let before = proxy.accepted();
    let answered = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    // Eight lanes of 40 intents each, one in flight per lane at any moment.
    let lanes = (0..8).map(|lane| {
        let (partner, answered) = (partner.clone(), answered.clone());
        async move {
            let mut orders = Vec::new();
            for i in 0..40 {
                let buyer = partner.acting_for(format!("flaky-{lane}-{i}"));
                let placed = buyer.buy(one(p.id)).await;
                answered.add_permits(1);
                orders.push(
                    placed
                        .expect("retries with the same key succeed after the drop")
                        .order,
                );
            }
            orders
        }
    });
    let cutter = async {
        // Cut both connections once 50 answers are in, in the middle of the burst.
        answered.acquire_many(50).await.expect("semaphore").forget();
        proxy.cut();
    };
    let (lanes, ()) = tokio::join!(join_all(lanes), cutter);
    let orders: Vec<OrderInfo> = lanes.into_iter().flatten().collect();
    assert_eq!(orders.len(), 320);
    assert!(
        proxy.accepted() > before,
        "the client reconnected after the cut"
    );
    assert!(orders.iter().all(|o| o.status == OrderStatus::Confirmed));
    let all = all_partner_orders(&partner).await;
    assert_eq!(
        all.len(),
        320,
        "one order per intent, none duplicated by a retry"
    );
    let keys: HashSet<_> = all.iter().map(|o| o.idempotency_key).collect();
    assert_eq!(keys.len(), 320);
    let mut per_buyer: HashMap<String, usize> = HashMap::new();
    for order in &all {
        *per_buyer
            .entry(order.partner.clone().expect("partner order").buyer_ref.0)
            .or_default() += 1;
    }
    assert!(per_buyer.values().all(|n| *n == 1));
    assert_eq!(stock_of(&admin, p.id).await, 1000 - 320);
    // A later change to one of those orders is pushed to the partner session.
    let cancelled = admin.cancel_order(orders[0].id).await.expect("cancel");
    loop {
        match pushes.next().await {
            Some(Push::OrderUpdate(order)) if order.id == cancelled.id => {
                assert_eq!(order.status, OrderStatus::Cancelled);
                break;
            }
            Some(_) => continue,
            None => panic!("push stream ended"),
        }
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_are_stored_hashed_checked_and_revocable() {
    let dir = tempfile::TempDir::new().expect("temp dir");
    let server = TestServer::start_in(dir.path()).await;
    let admin = server.admin().await;
    admin
        .create_user("keyed", "partner-password", Role::Partner)
        .await
        .expect("partner");
    let issued = admin.create_api_key("keyed").await.expect("key");
    let buyer = server.buyer(&admin, "notapartner").await;
    assert_eq!(
        code_of(admin.create_api_key("notapartner").await),
        ErrorCode::BadRequest
    );
    assert_eq!(
        code_of(admin.create_api_key("nobody").await),
        ErrorCode::NotFound
    );
    assert_eq!(
        code_of(buyer.create_api_key("keyed").await),
        ErrorCode::Forbidden
    );

    let client = server.client().await;
    assert_eq!(
        code_of(client.login_api_key("fsk_nope_nope").await),
        ErrorCode::Unauthenticated
    );
    assert_eq!(
        code_of(client.login_api_key("garbage").await),
        ErrorCode::Unauthenticated
    );
    let wrong_secret = format!("fsk_{}_{}", issued.key_id, "0".repeat(64));
    assert_eq!(
        code_of(client.login_api_key(&wrong_secret).await),
        ErrorCode::Unauthenticated
    );
    let session = client
        .login_api_key(&issued.key)
        .await
        .expect("the issued key logs in");
    assert_eq!(
        (session.role, session.user_id),
        (Role::Partner, issued.partner_id)
    );

    admin.revoke_api_key(&issued.key_id).await.expect("revoke");
    let later = server.client().await;
    assert_eq!(
        code_of(later.login_api_key(&issued.key).await),
        ErrorCode::Unauthenticated
    );
    assert_eq!(
        code_of(later.resume(&session.token).await),
        ErrorCode::Unauthenticated
    );
    assert_eq!(
        code_of(admin.revoke_api_key("unknown").await),
        ErrorCode::NotFound
    );
    server.stop().await;

    // Only a hash of the key is on disk: no file of the data dir holds its secret.
    let secret = issued.key.rsplit('_').next().expect("secret part");
    let mut files = vec![dir.path().to_path_buf()];
    let mut read = 0;
    while let Some(path) = files.pop() {
        if path.is_dir() {
            for entry in std::fs::read_dir(&path).expect("read dir") {
                files.push(entry.expect("dir entry").path());
            }
            continue;
        }
        let bytes = std::fs::read(&path).expect("read file");
        read += bytes.len();
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "the key's secret is stored in {}",
            path.display()
        );
    }
    assert!(read > 0, "the data dir holds files");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_stream_answers_every_attempt_once_under_its_tag_and_never_oversells() {
    use flashsale::protocol::BuyerRef;
    let (server, _dir) = TestServer::start().await;
    let admin = server.admin().await;
    let key = partner_key(&admin, "streamshop").await;
    let hot = product(&admin, "Streamed", 150).await.id;
    let partner = partner_client(server.addr, &key, 1).await;
    let mut stream = partner.order_stream().await.expect("stream");
    // 600 attempts by 300 buyers, at most 64 in flight.
    let (total, window) = (600u64, 64);
    let mut submitted = 0u64;
    let mut answers: HashMap<u64, Result<OrderInfo, flashsale::client::ClientError>> =
        HashMap::new();
    while answers.len() < total as usize {
        while submitted < total && stream.in_flight() < window {
            let buyer = Some(BuyerRef(format!("buyer-{}", submitted % 300)));
            let key = uuid::Uuid::new_v4();
            stream
                .buy(buyer, one(hot), key, submitted)
                .await
                .expect("submit");
            submitted += 1;
        }
        let answer = stream.next().await.expect("an attempt is in flight");
        assert!(
            answers.insert(answer.tag, answer.result).is_none(),
            "tag {} answered twice",
            answer.tag
        );
    }
    assert!(stream.next().await.is_none(), "nothing left in flight");
    assert_eq!(answers.len(), 600);
    let confirmed = answers
        .values()
        .filter(|r| matches!(r, Ok(o) if o.status == OrderStatus::Confirmed))
        .count();
    let sold_out = answers
        .values()
        .filter(|r| match r {
            Ok(o) => matches!(
                o.status,
                OrderStatus::Rejected {
                    code: ErrorCode::SoldOut,
                    ..
                }
            ),
            Err(e) => e.code() == Some(ErrorCode::SoldOut),
        })
        .count();
    assert_eq!(confirmed, 150, "exactly the stock is sold");
    assert_eq!(sold_out, 450, "every other attempt is sold out");
    assert_eq!(stock_of(&admin, hot).await, 0);
    // Each confirmed answer is the buyer's durable order, as the server has it.
    let orders = all_partner_orders(&partner).await;
    let on_server: HashSet<OrderId> = orders
        .iter()
        .filter(|o| o.status == OrderStatus::Confirmed)
        .map(|o| o.id)
        .collect();
    let answered: HashSet<OrderId> = answers
        .values()
        .filter_map(|r| r.as_ref().ok())
        .filter(|o| o.status == OrderStatus::Confirmed)
        .map(|o| o.id)
        .collect();
    assert_eq!(on_server, answered);
    server.stop().await;
}
