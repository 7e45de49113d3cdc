//! Orders that have left memory: read from the sled tables (by id, by
//! buyer, by partner, by product), after checkpoints have truncated the
//! journal and across restarts; idempotency keys kept for their retention
//! window and no longer; limits set after a product sold.

use crate::support::{code_of, partner_key, product, test_config, TestServer};
use flashsale::protocol::{
    ErrorCode, OrderInfo, OrderLine, OrderStatus, ProductId, StatusFilter, StorageStats,
};
use flashsale_client::Client;
use std::path::Path;
use std::time::{Duration, Instant};
use tempfile::TempDir;
use uuid::Uuid;

/// A server that checkpoints after every journal record, with `retention`.
async fn start(dir: &Path, retention: Duration) -> TestServer {
    let mut config = test_config(dir);
    config.checkpoint_records = 1;
    config.checkpoint_interval = Duration::ZERO;
    config.key_retention = retention;
    TestServer::start_with(config).await
}

/// Waits until every published order is in the tables and a checkpoint
/// covers the journal (polling the admin's stats, up to 30 s).
async fn wait_until_materialised(admin: &Client) -> StorageStats {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let storage = admin.stats().await.expect("stats").storage;
        if storage.orders_unmaterialised == 0
            && storage.materialised_seq == storage.journal_seq
            && storage.checkpoint_seq == storage.journal_seq
        {
            return storage;
        }
        assert!(Instant::now() < deadline, "not materialised: {storage:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A new client of `server` logged in as the buyer `name`.
async fn logged_in(server: &TestServer, name: &str) -> Client {
    let client = server.client().await;
    client
        .login(name, crate::support::BUYER_PASSWORD)
        .await
        .expect("login");
    client
}

fn line(product: ProductId, qty: u32) -> Vec<OrderLine> {
    vec![OrderLine {
        product_id: product,
        qty,
    }]
}

/// Every order of `client`'s listing, page by page (pages of 7).
async fn all_orders(client: &Client) -> Vec<OrderInfo> {
    let mut out: Vec<OrderInfo> = Vec::new();
    loop {
        let page = client
            .orders(out.last().map(|o| o.id), 7)
            .await
            .expect("orders");
        if page.is_empty() {
            return out;
        }
        out.extend(page);
    }
}

/// Every order of the admin's query for `product`/`status`, page by page.
async fn queried(
    admin: &Client,
    product: Option<ProductId>,
    status: Option<StatusFilter>,
) -> Vec<OrderInfo> {
    let mut out = Vec::new();
    let mut after = None;
    loop {
        let page = admin
            .query_orders(after, 5, product, status)
            .await
            .expect("query");
        out.extend(page.orders);
        match page.next_after {
            Some(next) => after = Some(next),
            None => return out,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_read_from_the_tables_match_what_was_answered_before_and_after_a_restart() {
    let dir = TempDir::new().expect("temp dir");
    let server = start(dir.path(), Duration::from_secs(3600)).await;
    let admin = server.admin().await;
    let cap = product(&admin, "Cap", 40).await;
    let mug = product(&admin, "Mug", 5).await;
    let alice = server.buyer(&admin, "alice").await;
    let bob = server.buyer(&admin, "bob").await;
    let key = partner_key(&admin, "shop").await;
    let shop = server.client().await;
    shop.login_api_key(&key).await.expect("partner login");
    let mut answered = Vec::new();
    for i in 0..8u32 {
        let who = if i % 2 == 0 { &alice } else { &bob };
        answered.push(who.buy(line(cap.id, 1)).await.expect("accepted").order);
    }
    // Twelve pipelined buys of 5 mugs: intake passes those it sees stock
    // for, the sequencer rejects the ones past the stock (stored orders).
    let rushes = (0..12).map(|_| alice.buy(line(mug.id, 1)));
    for placed in futures::future::join_all(rushes).await {
        match placed {
            Ok(placed) => answered.push(placed.order),
            Err(e) => assert_eq!(e.code(), Some(ErrorCode::SoldOut), "{e}"),
        }
    }
    answered.sort_by_key(|o| o.id);
    for buyer in ["p1", "p2"] {
        let placed = shop.acting_for(buyer).buy(line(cap.id, 2)).await;
        answered.push(placed.expect("accepted").order);
    }
    assert!(
        answered
            .iter()
            .any(|o| matches!(o.status, OrderStatus::Rejected { .. })),
        "the mug sold out: rejected orders are stored too"
    );
    let storage = wait_until_materialised(&admin).await;
    assert!(
        storage.journal_records <= 2,
        "checkpoints truncated the journal: {storage:?}"
    );
    // Cancel an order that is only in the tables.
    let cancelled = admin.cancel_order(answered[0].id).await.expect("cancel");
    assert_eq!(cancelled.status, OrderStatus::Cancelled);
    answered[0] = cancelled;
    wait_until_materialised(&admin).await;
    check_reads(&admin, &alice, &shop, &answered, cap.id).await;
    server.stop().await;
    let server = start(dir.path(), Duration::from_secs(3600)).await;
    let admin = server.admin().await;
    let alice = logged_in(&server, "alice").await;
    let shop = server.client().await;
    shop.login_api_key(&key).await.expect("partner login");
    check_reads(&admin, &alice, &shop, &answered, cap.id).await;
    server.stop().await;
}

/// Every read of `answered` (the first order is alice's; the last two are
/// the partner's) gives what was answered.
async fn check_reads(
    admin: &Client,
    alice: &Client,
    shop: &Client,
    answered: &[OrderInfo],
    cap: ProductId,
) {
    let alice_expected: Vec<OrderInfo> = answered
        .iter()
        .filter(|o| o.user_id == answered[0].user_id)
        .cloned()
        .collect();
    assert_eq!(all_orders(alice).await, alice_expected);
    for order in answered {
        assert_eq!(&admin.order(order.id).await.expect("get"), order);
    }
    assert_eq!(
        all_orders(shop).await,
        answered[answered.len() - 2..].to_vec()
    );
    let caps = queried(admin, Some(cap), None).await;
    let expected_caps: Vec<_> = answered
        .iter()
        .filter(|o| o.items[0].product_id == cap)
        .cloned()
        .collect();
    assert_eq!(caps, expected_caps);
    let rejected = queried(admin, None, Some(StatusFilter::Rejected)).await;
    let expected_rejected: Vec<_> = answered
        .iter()
        .filter(|o| matches!(o.status, OrderStatus::Rejected { .. }))
        .cloned()
        .collect();
    assert_eq!(rejected, expected_rejected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_order_survives_a_restart_after_checkpoints_and_new_ones_continue_after_them() {
    let dir = TempDir::new().expect("temp dir");
    let server = start(dir.path(), Duration::from_secs(3600)).await;
    let admin = server.admin().await;
    let cap = product(&admin, "Cap", 100).await;
    let alice = server.buyer(&admin, "alice").await;
    let mut answered = Vec::new();
    for _ in 0..20 {
        answered.push(alice.buy(line(cap.id, 1)).await.expect("accepted").order);
    }
    wait_until_materialised(&admin).await;
    // Some orders only in memory (not yet materialised) at the stop.
    for _ in 0..5 {
        answered.push(alice.buy(line(cap.id, 1)).await.expect("accepted").order);
    }
    server.stop().await;
    let server = start(dir.path(), Duration::from_secs(3600)).await;
    let admin = server.admin().await;
    let alice = logged_in(&server, "alice").await;
    assert_eq!(all_orders(&alice).await, answered);
    let next = alice.buy(line(cap.id, 1)).await.expect("accepted").order;
    assert!(next.id > answered.last().expect("orders").id);
    let stock = admin.product(cap.id).await.expect("product");
    assert_eq!((stock.stock, stock.confirmed_qty), (74, 26));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_inside_the_key_retention_window_gets_its_order_even_after_a_restart_and_after_it_is_a_new_intent(
) {
    let dir = TempDir::new().expect("temp dir");
    let retention = Duration::from_secs(3);
    let server = start(dir.path(), retention).await;
    let admin = server.admin().await;
    let cap = product(&admin, "Cap", 10).await;
    let alice = server.buyer(&admin, "alice").await;
    let key = Uuid::new_v4();
    let first = alice
        .buy_with_key(line(cap.id, 1), key)
        .await
        .expect("accepted")
        .order;
    let decided = Instant::now();
    wait_until_materialised(&admin).await;
    server.stop().await;
    // Restarted inside the window: the key is found in the key table.
    let server = start(dir.path(), retention).await;
    let alice = logged_in(&server, "alice").await;
    let again = alice
        .buy_with_key(line(cap.id, 1), key)
        .await
        .expect("retry")
        .order;
    assert!(
        decided.elapsed() < retention,
        "the retry ran inside the window"
    );
    assert_eq!(again, first, "a retry inside the window gets its order");
    assert_eq!(
        code_of(alice.buy_with_key(line(cap.id, 2), key).await),
        ErrorCode::IdempotencyKeyReused
    );
    // The window is the behaviour under test: let it pass.
    tokio::time::sleep(retention.saturating_sub(decided.elapsed()) + Duration::from_millis(200))
        .await;
    let later = alice
        .buy_with_key(line(cap.id, 1), key)
        .await
        .expect("accepted")
        .order;
    assert_ne!(
        later.id, first.id,
        "after the window the key is a new intent"
    );
    assert_eq!(later.status, OrderStatus::Confirmed);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_set_after_a_product_sold_counts_units_bought_before_it_also_after_a_restart() {
    let dir = TempDir::new().expect("temp dir");
    let server = start(dir.path(), Duration::from_secs(3600)).await;
    let admin = server.admin().await;
    let cap = product(&admin, "Cap", 100).await;
    let alice = server.buyer(&admin, "alice").await;
    let bob = server.buyer(&admin, "bob").await;
    alice.buy(line(cap.id, 3)).await.expect("accepted");
    bob.buy(line(cap.id, 1)).await.expect("accepted");
    // Alice's order is in the tables only.
    wait_until_materialised(&admin).await;
    // And one more of bob's that may not be.
    bob.buy(line(cap.id, 1)).await.expect("accepted");
    admin.set_limit(cap.id, Some(3)).await.expect("limit");
    // Intake refuses from the holdings it was given (seeded from the tables).
    assert_eq!(
        code_of(alice.buy(line(cap.id, 1)).await),
        ErrorCode::LimitExceeded
    );
    let bob_third = bob.buy(line(cap.id, 1)).await.expect("bob held 2");
    assert_eq!(bob_third.order.status, OrderStatus::Confirmed);
    assert_eq!(
        code_of(bob.buy(line(cap.id, 1)).await),
        ErrorCode::LimitExceeded
    );
    // The sequencer decides from its own seeded holdings: two pipelined
    // buys that intake both lets through, only one within the limit.
    let carol = server.buyer(&admin, "carol").await;
    carol.buy(line(cap.id, 2)).await.expect("accepted");
    let (one, two) = tokio::join!(carol.buy(line(cap.id, 1)), carol.buy(line(cap.id, 1)));
    let statuses = [one, two].map(|p| p.map(|p| p.order.status).map_err(|e| e.code()));
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == Ok(OrderStatus::Confirmed))
            .count(),
        1,
        "{statuses:?}"
    );
    server.stop().await;
    let server = start(dir.path(), Duration::from_secs(3600)).await;
    let alice = logged_in(&server, "alice").await;
    assert_eq!(
        code_of(alice.buy(line(cap.id, 1)).await),
        ErrorCode::LimitExceeded,
        "after a restart alice still holds 3"
    );
    server.stop().await;
}
