//! Authentication hardening over real TCP: sessions expire, logout ends a
//! session everywhere, and buyers never reach another buyer's cart or orders.

use crate::support::{code_of, product, test_config, TestServer, BUYER_PASSWORD};
use flashsale::protocol::{ErrorCode, OrderLine};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_session_token_no_longer_resumes() {
    let dir = tempfile::TempDir::new().expect("temp dir");
    let server = TestServer::start_in(dir.path()).await;
    let admin = server.admin().await;
    let _ = server.buyer(&admin, "brief").await;
    server.stop().await;
    // The same data dir, with sessions that expire the moment they are made.
    let mut config = test_config(dir.path());
    config.session_ttl = Duration::ZERO;
    let server = TestServer::start_with(config).await;
    let first = server.client().await;
    let session = first.login("brief", BUYER_PASSWORD).await.expect("login");
    // Expiry is checked on every request, not only on resume.
    assert_eq!(code_of(first.cart().await), ErrorCode::Unauthenticated);
    let second = server.client().await;
    let resumed = second.resume(&session.token).await;
    assert_eq!(code_of(resumed), ErrorCode::Unauthenticated);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_session_resumes_until_logout_ends_it_everywhere() {
    let (server, _dir) = TestServer::start().await;
    let admin = server.admin().await;
    let _ = server.buyer(&admin, "roamer").await;
    let phone = server.client().await;
    let session = phone.login("roamer", BUYER_PASSWORD).await.expect("login");
    let laptop = server.client().await;
    laptop.resume(&session.token).await.expect("resume");
    laptop.cart().await.expect("cart on the resumed session");
    phone.logout().await.expect("logout");
    // The laptop's live connection is closed too; its next request cannot resume.
    assert_eq!(
        laptop.cart().await.err().and_then(|e| e.code()),
        Some(ErrorCode::Unauthenticated)
    );
    let again = server.client().await;
    assert_eq!(
        code_of(again.resume(&session.token).await),
        ErrorCode::Unauthenticated
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_buyer_cannot_read_or_touch_another_buyers_cart_or_orders() {
    let (server, _dir) = TestServer::start().await;
    let admin = server.admin().await;
    let p = product(&admin, "Private", 5).await;
    let alice = server.buyer(&admin, "alice").await;
    let eve = server.buyer(&admin, "eve").await;
    alice.cart_add(p.id, 2).await.expect("alice's cart");
    let order = alice
        .buy(vec![OrderLine {
            product_id: p.id,
            qty: 1,
        }])
        .await
        .expect("alice buys")
        .order;
    // Eve sees only her own (empty) cart and no orders, and cannot reach alice's order.
    assert!(eve.cart().await.expect("eve's cart").lines.is_empty());
    assert!(eve.orders(None, 0).await.expect("eve's orders").is_empty());
    assert_eq!(code_of(eve.order(order.id).await), ErrorCode::NotFound);
    // Eve's cart changes and pays leave alice's cart as it was.
    eve.cart_clear().await.expect("eve clears her own cart");
    assert_eq!(code_of(eve.pay().await), ErrorCode::EmptyCart);
    let alices = alice.cart().await.expect("alice's cart");
    assert_eq!(alices.lines.len(), 1);
    assert_eq!(alices.lines[0].qty, 2);
    assert_eq!(alice.orders(None, 0).await.expect("orders").len(), 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_buyer_paying_faster_than_its_rate_limit_gets_overloaded_and_others_are_served() {
    let dir = tempfile::TempDir::new().expect("temp dir");
    let mut config = test_config(dir.path());
    config.pay_rate_per_buyer = Some(flashsale::server::RateLimit {
        per_second: 1,
        burst: 3,
    });
    let server = TestServer::start_with(config).await;
    let admin = server.admin().await;
    let p = product(&admin, "Hot", 100).await;
    admin
        .create_user("bot", BUYER_PASSWORD, flashsale::protocol::Role::Buyer)
        .await
        .expect("create bot");
    // The bot takes each refusal as final (no automatic retries), to count them.
    let no_retry = flashsale::client::ClientConfig {
        pay_attempts: 1,
        ..flashsale::client::ClientConfig::default()
    };
    let bot = flashsale::client::Client::connect_with(server.addr, no_retry)
        .await
        .expect("connect");
    bot.login("bot", BUYER_PASSWORD).await.expect("bot login");
    let human = server.buyer(&admin, "human").await;
    let line = vec![OrderLine {
        product_id: p.id,
        qty: 1,
    }];
    let burst = (0..10).map(|_| bot.buy(line.clone()));
    let results = futures::future::join_all(burst).await;
    let accepted = results.iter().filter(|r| r.is_ok()).count();
    // The burst allowance; a fourth token only if the burst took a second.
    assert!((3..=4).contains(&accepted), "{accepted} accepted");
    for refused in results.into_iter().filter_map(Result::err) {
        assert_eq!(refused.code(), Some(ErrorCode::Overloaded));
        assert!(refused.to_string().contains("retry in"), "{refused}");
    }
    // Refusals made no orders and took no stock; another buyer is served.
    assert_eq!(bot.orders(None, 0).await.expect("orders").len(), accepted);
    human.buy(line).await.expect("the other buyer is served");
    assert_eq!(
        crate::support::stock_of(&admin, p.id).await,
        100 - accepted as u64 - 1
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_an_api_key_ends_the_partners_live_sessions() {
    let (server, _dir) = crate::support::TestServer::start().await;
    let admin = server.admin().await;
    let p = product(&admin, "Partnered", 5).await;
    let key = crate::support::partner_key(&admin, "revoked-shop").await;
    let partner = server.client().await;
    partner.login_api_key(&key).await.expect("partner login");
    let buyer = partner.acting_for("b-1");
    buyer
        .buy(vec![OrderLine {
            product_id: p.id,
            qty: 1,
        }])
        .await
        .expect("buys while the key is live");
    let key_id = key
        .strip_prefix("fsk_")
        .and_then(|rest| rest.split_once('_'))
        .map(|(id, _)| id.to_owned())
        .expect("key id");
    admin.revoke_api_key(&key_id).await.expect("revoke");
    assert_eq!(
        partner.orders(None, 0).await.err().and_then(|e| e.code()),
        Some(ErrorCode::Unauthenticated)
    );
    server.stop().await;
}
