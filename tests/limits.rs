//! What one client can take from the others, and what it can make the
//! server hold: connections per address, unread answers, partners' buyer
//! references and orders (issue 12).

use crate::support::raw::{self, Conn};
use crate::support::{code_of, partner_key, product, test_config, TestServer, BUYER_PASSWORD};
use flashsale::client::Client;
use flashsale::protocol::{
    ClientCodec, ClientFrame, ErrorCode, Hello, OrderId, OrderLine, ProductId, Reply, Request,
    RequestBody, Role, SaleRules, ServerFrame, PROTOCOL_VERSION,
};
use flashsale::server::RateLimit;
use futures::SinkExt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use tokio_util::codec::Framed;
use uuid::Uuid;

const FIRST: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
const SECOND: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

/// Logs `conn` in as `username`.
async fn login(conn: &mut Conn, username: &str) {
    let answer = raw::call(
        conn,
        RequestBody::Login {
            username: username.into(),
            password: BUYER_PASSWORD.into(),
        },
    )
    .await;
    assert!(
        matches!(answer.result, Ok(Reply::LoggedIn { .. })),
        "{answer:?}"
    );
}

/// The `Closing` frame the server sends first on `conn` (skipping answers).
async fn closing_code(conn: &mut Conn) -> ErrorCode {
    loop {
        match raw::next_frame(conn).await {
            Some(ServerFrame::Closing(error)) => return error.code,
            Some(ServerFrame::Response(_) | ServerFrame::Push(_)) => {}
            other => panic!("expected Closing, got {other:?}"),
        }
    }
}

/// A connection from `from` that the server refuses: the first frame it
/// sends, whatever the client sent.
async fn refused_from(addr: SocketAddr, from: IpAddr) -> Option<ServerFrame> {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.bind(SocketAddr::new(from, 0)).expect("bind");
    let stream = socket.connect(addr).await.expect("connect");
    let mut conn = Framed::new(stream, ClientCodec::new());
    // The server may have closed already; its frame is what matters.
    let _ = conn
        .send(ClientFrame::Hello(Hello {
            protocol_version: PROTOCOL_VERSION,
            client_name: "refused".into(),
        }))
        .await;
    raw::next_frame(&mut conn).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_from_one_address_leave_room_for_others_and_make_room_for_each_other() {
    let dir = tempfile::TempDir::new().expect("temp dir");
    let mut config = test_config(dir.path());
    // The admin's one connection (logged in) plus three.
    config.max_connections_per_peer = 4;
    let server = TestServer::start_with(config).await;
    let admin = server.admin().await;
    for name in ["near", "far", "b2", "b3", "b4"] {
        admin
            .create_user(name, BUYER_PASSWORD, Role::Buyer)
            .await
            .expect("create buyer");
    }
    let mut idle = Vec::new();
    for n in 0..3 {
        idle.push(raw::connect_from(server.addr, FIRST, &format!("idle-{n}")).await);
    }
    // 127.0.0.1 is at its cap; 127.0.0.2 is not affected.
    let mut far = raw::connect_from(server.addr, SECOND, "far").await;
    login(&mut far, "far").await;

    // A fourth anonymous connection from 127.0.0.1 closes the oldest anonymous one.
    let mut newest = raw::connect_from(server.addr, FIRST, "newest").await;
    let mut oldest = idle.remove(0);
    assert_eq!(closing_code(&mut oldest).await, ErrorCode::Overloaded);
    assert!(raw::next_frame(&mut oldest).await.is_none(), "closed");

    // Every connection of 127.0.0.1 logged in: none is evicted for a new one.
    login(&mut idle[0], "b2").await;
    login(&mut idle[1], "b3").await;
    login(&mut newest, "b4").await;
    match refused_from(server.addr, FIRST).await {
        Some(ServerFrame::Closing(error)) => {
            assert_eq!(error.code, ErrorCode::Overloaded, "{error:?}");
        }
        other => panic!("expected Closing(Overloaded), got {other:?}"),
    }
    for conn in idle.iter_mut().chain([&mut newest, &mut far]) {
        let pong = raw::call(conn, RequestBody::Ping).await;
        assert!(matches!(pong.result, Ok(Reply::Pong)), "{pong:?}");
    }
    // The admin's connection from 127.0.0.1 still serves too.
    admin.stats().await.expect("stats");

    server.stop().await;
}

/// Creates `count` products with long names, so a listing is large.
async fn large_catalog(admin: &Client, count: usize) {
    for n in 0..count {
        admin
            .create_product(&format!("product {n:05} {}", "x".repeat(200)), 100, 10)
            .await
            .expect("create product");
    }
}

/// The resident memory of this process (the embedded server's), in bytes.
fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .expect("VmRSS");
    kib * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_pipelining_listings_without_reading_is_held_to_its_reply_budget() {
    const PIPELINED: u64 = 1000;
    let dir = tempfile::TempDir::new().expect("temp dir");
    let mut config = test_config(dir.path());
    config.max_reply_bytes_per_connection = 1 << 20;
    config.idle_timeout = std::time::Duration::from_secs(2);
    config.shutdown_grace = std::time::Duration::from_secs(1);
    let server = TestServer::start_with(config).await;
    let admin = server.admin().await;
    large_catalog(&admin, 3000).await;
    admin
        .create_user("hoarder", BUYER_PASSWORD, Role::Buyer)
        .await
        .expect("create buyer");
    let mut conn = raw::connect(server.addr, "hoarder").await;
    login(&mut conn, "hoarder").await;
    let open = admin.stats().await.expect("stats").connections;
    let before = resident_bytes();
    for id in 0..PIPELINED {
        let frame = ClientFrame::Request(Request {
            id,
            on_behalf_of: None,
            body: RequestBody::ListProducts,
        });
        conn.feed(frame).await.expect("send");
    }
    conn.flush().await.expect("flush");
    // Never read: the server gives up on the connection after the idle
    // timeout for unread answers and closes it. Until then, watch how much
    // memory the (embedded) server holds for it.
    let mut peak = before;
    let deadline = std::time::Instant::now() + raw::HANG;
    while admin.stats().await.expect("stats").connections >= open {
        peak = peak.max(resident_bytes());
        assert!(
            std::time::Instant::now() < deadline,
            "the connection was never closed"
        );
        tokio::task::yield_now().await;
    }
    let grown = peak.saturating_sub(before);
    // A page of 1 000 products is ~350 KB of answer: without the budget
    // the server reads all 1 000 listings and holds ~350 MB for them.
    assert!(
        grown < 128 << 20,
        "the server grew by {} MiB for one connection's unread answers",
        grown >> 20
    );
    drop(conn);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn products_are_listed_a_page_at_a_time_and_the_client_reads_every_page() {
    let dir = tempfile::TempDir::new().expect("temp dir");
    let mut config = test_config(dir.path());
    config.list_products_page = 7;
    let server = TestServer::start_with(config).await;
    let admin = server.admin().await;
    for n in 0..20 {
        product(&admin, &format!("paged-{n}"), 5).await;
    }
    let Reply::Products(first) = admin
        .request(RequestBody::ListProducts)
        .await
        .expect("list")
    else {
        panic!("not products");
    };
    assert_eq!(first.len(), 7);
    let (page, next) = admin
        .products_page(Some(ProductId(7)), 3)
        .await
        .expect("page");
    let ids: Vec<u64> = page.iter().map(|p| p.id.0).collect();
    assert_eq!(ids, vec![8, 9, 10]);
    assert_eq!(next, Some(ProductId(10)));
    let (last, next) = admin
        .products_page(Some(ProductId(14)), 0)
        .await
        .expect("last page");
    assert_eq!(last.len(), 6);
    assert_eq!(next, None);
    let all = admin.products().await.expect("all products");
    let ids: Vec<u64> = all.iter().map(|p| p.id.0).collect();
    assert_eq!(ids, (1..=20).collect::<Vec<_>>());
    server.stop().await;
}

async fn partner_buyers(admin: &Client) -> u64 {
    admin.stats().await.expect("stats").partner_buyers
}

fn one(product_id: ProductId, qty: u32) -> Vec<OrderLine> {
    vec![OrderLine { product_id, qty }]
}

/// A `Buy` of `items` for `buyer`, sent once (the client's retries would
/// hide an `Overloaded`).
async fn buy_once(
    partner: &Client,
    buyer: &str,
    items: Vec<OrderLine>,
) -> Result<Reply, ErrorCode> {
    partner
        .acting_for(buyer)
        .request(RequestBody::Buy {
            items,
            idempotency_key: Uuid::new_v4(),
        })
        .await
        .map_err(|e| e.code().expect("a server refusal"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_buyer_reference_is_stored_only_by_an_authorised_valid_change_and_counted() {
    let dir = tempfile::TempDir::new().expect("temp dir");
    let server = TestServer::start_in(dir.path()).await;
    let admin = server.admin().await;
    let p = product(&admin, "Shelf", 10).await;
    let gone = product(&admin, "Gone", 1).await;
    let partner = server.client().await;
    partner
        .login_api_key(&partner_key(&admin, "shop").await)
        .await
        .expect("partner login");
    let ghost = partner.acting_for("ghost");
    // Refused or read-only requests store nothing.
    assert_eq!(code_of(ghost.stats().await), ErrorCode::Forbidden);
    assert_eq!(code_of(ghost.order(OrderId(1)).await), ErrorCode::NotFound);
    assert!(ghost.orders(None, 0).await.expect("orders").is_empty());
    assert!(ghost.cart().await.expect("cart").lines.is_empty());
    assert!(ghost.cart_clear().await.expect("clear").lines.is_empty());
    assert_eq!(
        code_of(ghost.cart_remove(p.id, 1).await),
        ErrorCode::NotFound
    );
    assert_eq!(code_of(ghost.pay().await), ErrorCode::EmptyCart);
    assert_eq!(
        code_of(ghost.cart_add(p.id, 0).await),
        ErrorCode::BadRequest
    );
    assert_eq!(code_of(ghost.cart_add(p.id, 11).await), ErrorCode::SoldOut);
    assert_eq!(
        code_of(ghost.cart_add(ProductId(99), 1).await),
        ErrorCode::NotFound
    );
    assert_eq!(
        buy_once(&partner, "ghost", one(p.id, 0)).await.err(),
        Some(ErrorCode::BadRequest)
    );
    assert_eq!(
        buy_once(&partner, "ghost", Vec::new()).await.err(),
        Some(ErrorCode::BadRequest)
    );
    assert_eq!(
        buy_once(&partner, "ghost", one(ProductId(99), 1))
            .await
            .err(),
        Some(ErrorCode::NotFound)
    );
    admin.set_stock(gone.id, 0).await.expect("sell out");
    assert_eq!(
        buy_once(&partner, "ghost", one(gone.id, 1)).await.err(),
        Some(ErrorCode::SoldOut)
    );
    // A buyer session cannot act for anyone: Forbidden, nothing stored.
    let buyer = server.buyer(&admin, "plain").await;
    assert_eq!(
        code_of(buyer.acting_for("ghost").cart().await),
        ErrorCode::Forbidden
    );
    assert_eq!(partner_buyers(&admin).await, 0);

    // A valid change creates the reference, once.
    ghost.cart_add(p.id, 2).await.expect("cart add");
    assert_eq!(ghost.cart().await.expect("cart").lines.len(), 1);
    let bought = buy_once(&partner, "walk-in", one(p.id, 1))
        .await
        .expect("buy");
    assert!(matches!(bought, Reply::Accepted(_)), "{bought:?}");
    buy_once(&partner, "walk-in", one(p.id, 1))
        .await
        .expect("buy again");
    assert_eq!(partner_buyers(&admin).await, 2);
    server.stop().await;

    // The count is rebuilt from the stored references.
    let server = TestServer::start_in(dir.path()).await;
    let admin = server.admin().await;
    assert_eq!(partner_buyers(&admin).await, 2);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partner_burst_of_fresh_references_past_its_rate_is_refused_and_creates_nothing() {
    let dir = tempfile::TempDir::new().expect("temp dir");
    let mut config = test_config(dir.path());
    config.new_buyers_per_partner = Some(RateLimit {
        per_second: 1,
        burst: 5,
    });
    let server = TestServer::start_with(config).await;
    let admin = server.admin().await;
    let p = product(&admin, "Popular", 1000).await;
    let partner = server.client().await;
    partner
        .login_api_key(&partner_key(&admin, "burst-shop").await)
        .await
        .expect("partner login");
    let mut created = 0;
    let mut refused = 0;
    for n in 0..20 {
        match buy_once(&partner, &format!("fresh-{n}"), one(p.id, 1)).await {
            Ok(_) => created += 1,
            Err(ErrorCode::Overloaded) => refused += 1,
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    // The burst, and at most a token or two refilled meanwhile.
    assert!((5..=7).contains(&created), "{created} created");
    assert_eq!(created + refused, 20);
    let stats = admin.stats().await.expect("stats");
    assert_eq!(stats.partner_buyers, created);
    assert_eq!(stats.orders_confirmed, created);
    // Known references are not new: they are served at once.
    buy_once(&partner, "fresh-0", one(p.id, 1))
        .await
        .expect("known buyer");
    let error = partner
        .acting_for("one-more")
        .request(RequestBody::CartAdd {
            product_id: p.id,
            qty: 1,
        })
        .await;
    if let Err(error) = error {
        assert_eq!(error.code(), Some(ErrorCode::Overloaded));
        assert!(error.retry_after().is_some(), "{error:?}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partner_at_its_total_of_buyer_references_gets_quota_exceeded() {
    let dir = tempfile::TempDir::new().expect("temp dir");
    let mut config = test_config(dir.path());
    config.max_buyers_per_partner = 3;
    let server = TestServer::start_with(config.clone()).await;
    let admin = server.admin().await;
    let p = product(&admin, "Capped", 100).await;
    let partner = server.client().await;
    partner
        .login_api_key(&partner_key(&admin, "capped-shop").await)
        .await
        .expect("partner login");
    let other = server.client().await;
    other
        .login_api_key(&partner_key(&admin, "other-shop").await)
        .await
        .expect("other partner login");
    for n in 0..3 {
        buy_once(&partner, &format!("b{n}"), one(p.id, 1))
            .await
            .expect("within the cap");
    }
    let refusal = partner
        .acting_for("b3")
        .cart_add(p.id, 1)
        .await
        .expect_err("over the cap");
    assert_eq!(refusal.code(), Some(ErrorCode::QuotaExceeded));
    assert!(
        refusal.to_string().contains("buyer references"),
        "{refusal}"
    );
    // Existing references still work; other partners have their own cap.
    buy_once(&partner, "b0", one(p.id, 1))
        .await
        .expect("known buyer");
    buy_once(&other, "b0", one(p.id, 1))
        .await
        .expect("another partner");
    assert_eq!(partner_buyers(&admin).await, 4);
    server.stop().await;

    // The cap still holds after a restart (counts rebuilt from the tree).
    let server = TestServer::start_with(config).await;
    let partner = server.client().await;
    let admin = server.admin().await;
    let key = admin.create_api_key("capped-shop").await.expect("key").key;
    partner.login_api_key(&key).await.expect("partner login");
    assert_eq!(
        buy_once(&partner, "b9", one(p.id, 1)).await.err(),
        Some(ErrorCode::QuotaExceeded)
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partner_paying_past_its_rate_gets_overloaded_and_makes_no_order() {
    let dir = tempfile::TempDir::new().expect("temp dir");
    let mut config = test_config(dir.path());
    config.pay_rate_per_partner = Some(RateLimit {
        per_second: 1,
        burst: 5,
    });
    let server = TestServer::start_with(config).await;
    let admin = server.admin().await;
    let rules = SaleRules {
        max_per_buyer: Some(1),
        ..SaleRules::default()
    };
    let limited = admin
        .create_product_with_rules("Limited", 100, 1000, rules)
        .await
        .expect("create");
    let partner = server.client().await;
    partner
        .login_api_key(&partner_key(&admin, "hoarding-shop").await)
        .await
        .expect("partner login");
    let mut accepted = 0;
    for n in 0..20 {
        match buy_once(&partner, &format!("bot-{n}"), one(limited.id, 1)).await {
            Ok(Reply::Accepted(_)) => accepted += 1,
            Err(ErrorCode::Overloaded) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!((5..=7).contains(&accepted), "{accepted} accepted");
    let stats = admin.stats().await.expect("stats");
    assert_eq!(stats.orders_confirmed + stats.orders_rejected, accepted);
    // A refused pay creates no buyer reference either.
    assert_eq!(stats.partner_buyers, accepted);
    server.stop().await;
}
