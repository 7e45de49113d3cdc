//! State whose memory is bounded, with the rest in sled: partners' buyer
//! references beyond the in-memory cache keep their buyer, their orders and
//! their partner's quota, also across a restart; sessions live in the data
//! dir, so accounts beyond any number in memory resume, and the
//! per-account cap and `EndSessions` find them after a restart.

use crate::support::{code_of, partner_key, product, test_config, TestServer, BUYER_PASSWORD};
use flashsale::client::Client;
use flashsale::protocol::{ErrorCode, OrderLine, ProductId, Role, UserId};
use std::collections::{HashMap, HashSet};

/// References a partner creates in the partner test: many times the cache.
const BUYERS: usize = 120;

/// References the partner test's cache holds.
const CACHED: usize = 4;

fn one(product_id: ProductId) -> Vec<OrderLine> {
    vec![OrderLine { product_id, qty: 1 }]
}

async fn partner(server: &TestServer, key: &str) -> Client {
    let partner = server.client().await;
    partner.login_api_key(key).await.expect("partner login");
    partner
}

/// Buys one more for every reference of `ids` and checks that it is the
/// same buyer, whose orders are all there (`orders_each` of them).
async fn check_buyers(
    partner: &Client,
    ids: &HashMap<usize, UserId>,
    p: ProductId,
    orders_each: usize,
) {
    for (n, id) in ids {
        let buyer = partner.acting_for(format!("ref-{n}"));
        let placed = buyer.buy(one(p)).await.expect("buy for a known reference");
        assert_eq!(
            placed.order.user_id, *id,
            "ref-{n} resolved to another buyer"
        );
        let orders = buyer.orders(None, 0).await.expect("orders by reference");
        assert_eq!(orders.len(), orders_each, "orders of ref-{n}");
        assert!(orders.iter().all(|o| o.user_id == *id), "{orders:?}");
        let again = buyer
            .order(placed.order.id)
            .await
            .expect("order by reference");
        assert_eq!(again.user_id, *id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partners_buyers_beyond_the_reference_cache_keep_their_ids_orders_and_quota_across_a_restart(
) {
    let dir = tempfile::TempDir::new().expect("temp dir");
    let mut config = test_config(dir.path());
    config.partner_buyer_cache = CACHED;
    config.max_buyers_per_partner = u64::try_from(BUYERS).expect("small");
    let server = TestServer::start_with(config.clone()).await;
    let admin = server.admin().await;
    let p = product(&admin, "Plenty", 10_000).await;
    let key = partner_key(&admin, "big-shop").await;
    let shop = partner(&server, &key).await;
    let mut ids = HashMap::new();
    for n in 0..BUYERS {
        let placed = shop
            .acting_for(format!("ref-{n}"))
            .buy(one(p.id))
            .await
            .expect("buy for a new reference");
        ids.insert(n, placed.order.user_id);
    }
    let distinct: HashSet<_> = ids.values().collect();
    assert_eq!(distinct.len(), BUYERS, "two references share a buyer");
    check_buyers(&shop, &ids, p.id, 2).await;
    assert_eq!(
        admin.stats().await.expect("stats").partner_buyers,
        u64::try_from(BUYERS).expect("small")
    );
    // An unknown reference is read without being stored, and over the
    // cap it is refused.
    assert!(shop
        .acting_for("ghost")
        .cart()
        .await
        .expect("cart")
        .lines
        .is_empty());
    assert_eq!(
        code_of(shop.acting_for("one-more").cart_add(p.id, 1).await),
        ErrorCode::QuotaExceeded
    );
    server.stop().await;

    // After a restart the counts come from the stored count record.
    let server = TestServer::start_with(config).await;
    let admin = server.admin().await;
    assert_eq!(
        admin.stats().await.expect("stats").partner_buyers,
        u64::try_from(BUYERS).expect("small")
    );
    let shop = partner(&server, &key).await;
    assert_eq!(
        code_of(shop.acting_for("one-more").cart_add(p.id, 1).await),
        ErrorCode::QuotaExceeded
    );
    check_buyers(&shop, &ids, p.id, 3).await;
    assert_eq!(
        admin.stats().await.expect("stats").partner_buyers,
        u64::try_from(BUYERS).expect("small")
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_of_many_accounts_are_counted_and_resume_after_a_restart() {
    const ACCOUNTS: usize = 40;
    let dir = tempfile::TempDir::new().expect("temp dir");
    let server = TestServer::start_in(dir.path()).await;
    let admin = server.admin().await;
    let mut tokens = Vec::new();
    for n in 0..ACCOUNTS {
        let name = format!("many-{n}");
        admin
            .create_user(&name, BUYER_PASSWORD, Role::Buyer)
            .await
            .expect("create");
        let client = server.client().await;
        let session = client.login(&name, BUYER_PASSWORD).await.expect("login");
        tokens.push((name, session.token));
    }
    let sessions = admin.stats().await.expect("stats").sessions;
    assert_eq!(sessions, u64::try_from(ACCOUNTS + 1).expect("small"));
    server.stop().await;

    let server = TestServer::start_in(dir.path()).await;
    let admin = server.admin().await;
    // The admin's new session, and every one from before.
    let sessions = admin.stats().await.expect("stats").sessions;
    assert_eq!(sessions, u64::try_from(ACCOUNTS + 2).expect("small"));
    for (name, token) in &tokens {
        let client = server.client().await;
        let session = client.resume(token).await.expect("resume after a restart");
        assert_eq!(&session.username, name);
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_cap_and_end_sessions_find_sessions_opened_before_a_restart() {
    let dir = tempfile::TempDir::new().expect("temp dir");
    let mut config = test_config(dir.path());
    config.max_sessions_per_account = 3;
    let server = TestServer::start_with(config.clone()).await;
    let admin = server.admin().await;
    admin
        .create_user("capped", BUYER_PASSWORD, Role::Buyer)
        .await
        .expect("create");
    let mut tokens = Vec::new();
    for _ in 0..3 {
        let client = server.client().await;
        let session = client.login("capped", BUYER_PASSWORD).await.expect("login");
        tokens.push(session.token);
    }
    server.stop().await;

    let server = TestServer::start_with(config).await;
    let admin = server.admin().await;
    let newest = server.client().await;
    let session = newest.login("capped", BUYER_PASSWORD).await.expect("login");
    tokens.push(session.token);
    // The oldest, from before the restart, made room.
    let oldest = server.client().await;
    assert_eq!(
        code_of(oldest.resume(&tokens[0]).await),
        ErrorCode::Unauthenticated
    );
    let mut resumed = Vec::new();
    for token in &tokens[1..] {
        let client = server.client().await;
        client
            .resume(token)
            .await
            .expect("a session within the cap resumes");
        resumed.push(client);
    }
    assert_eq!(admin.end_sessions("capped").await.expect("end sessions"), 3);
    for client in &resumed {
        assert!(client.cart().await.is_err(), "an ended session served");
    }
    for token in &tokens {
        let client = server.client().await;
        assert_eq!(
            code_of(client.resume(token).await),
            ErrorCode::Unauthenticated
        );
    }
    // Only the admin's sessions are left (one from before the restart).
    assert_eq!(admin.stats().await.expect("stats").sessions, 2);
    server.stop().await;
}
