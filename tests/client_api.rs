//! The client library against a real server: sessions, pipelining, errors.

use crate::support::{code_of, product, TestServer, BUYER_PASSWORD};
use flashsale::client::{Client, ClientConfig, ClientError};
use flashsale::protocol::{ErrorCode, OrderLine, Role};
use futures::future::join_all;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_resumes_on_another_connection_until_logout() {
    let (server, _dir) = TestServer::start().await;
    let admin = server.admin().await;
    let p = product(&admin, "Shared cart item", 5).await;
    let first = server.buyer(&admin, "roamer").await;
    let session = first.login("roamer", BUYER_PASSWORD).await.expect("login");
    assert_eq!(session.role, Role::Buyer);
    first.cart_add(p.id, 2).await.expect("cart");
    let second = server.client().await;
    assert_eq!(
        second.resume(&session.token).await.expect("resume").user_id,
        session.user_id
    );
    assert_eq!(second.cart().await.expect("same cart").lines.len(), 1);
    second.logout().await.expect("logout");
    let third = server.client().await;
    assert_eq!(
        code_of(third.resume(&session.token).await),
        ErrorCode::Unauthenticated
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_requests_share_one_connection_and_get_their_own_answers() {
    let (server, _dir) = TestServer::start().await;
    let admin = server.admin().await;
    let products = join_all((0..50u64).map(|i| {
        let admin = admin.clone();
        async move { admin.create_product(&format!("P{i}"), i, i).await }
    }))
    .await;
    for (i, created) in products.into_iter().enumerate() {
        let created = created.expect("created");
        assert_eq!(created.name, format!("P{i}"));
        assert_eq!(created.stock, i as u64);
    }
    let clone = admin.clone();
    let (a, b) = tokio::join!(admin.products(), clone.stats());
    assert_eq!(a.expect("products").len(), 50);
    assert_eq!(b.expect("stats").products.len(), 50);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_server_gives_disconnected_errors_that_are_retryable() {
    let (server, _dir) = TestServer::start().await;
    let admin = server.admin().await;
    let p = product(&admin, "Gone", 1).await;
    let buyer = server.buyer(&admin, "leftover").await;
    server.stop().await;
    let error = buyer
        .buy(vec![OrderLine {
            product_id: p.id,
            qty: 1,
        }])
        .await
        .expect_err("the server is gone");
    assert!(matches!(error, ClientError::Disconnected(_)), "{error}");
    assert!(error.is_retryable());
    assert!(buyer.is_closed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connecting_to_nothing_fails_with_a_connect_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let error = Client::connect_with(addr, ClientConfig::default())
        .await
        .expect_err("nothing listens");
    assert!(matches!(error, ClientError::Connect(_)), "{error}");
}
