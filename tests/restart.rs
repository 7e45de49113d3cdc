//! A stopped and restarted server has everything it had.

use crate::support::{product, TestServer, BUYER_PASSWORD};
use flashsale::protocol::{OrderLine, OrderStatus};
use tempfile::TempDir;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_carts_products_orders_and_stock_survive_a_restart() {
    let dir = TempDir::new().expect("temp dir");
    let server = TestServer::start_in(dir.path()).await;
    let admin = server.admin().await;
    let cap = product(&admin, "Cap", 4).await;
    let mug = product(&admin, "Mug", 10).await;
    let restocked = admin.restock(mug.id, 5).await.expect("restock");
    let alice = server.buyer(&admin, "alice").await;
    let bob = server.buyer(&admin, "bob").await;
    let token = alice
        .login("alice", BUYER_PASSWORD)
        .await
        .expect("login")
        .token;
    alice.cart_add(cap.id, 3).await.expect("cart");
    let paid = alice.pay().await.expect("pay").order;
    alice.cart_add(mug.id, 2).await.expect("cart after pay");
    let express = bob
        .buy(vec![OrderLine {
            product_id: cap.id,
            qty: 1,
        }])
        .await
        .expect("accepted")
        .order;
    let products_before = admin.products().await.expect("products");
    let alice_cart = alice.cart().await.expect("cart");
    let alice_orders = alice.orders(None, 0).await.expect("orders");
    assert_eq!(paid.status, OrderStatus::Confirmed);
    assert_eq!(express.status, OrderStatus::Confirmed);
    assert_eq!(restocked.stock, 15);
    server.stop().await;

    let server = TestServer::start_in(dir.path()).await;
    let admin = server.admin().await;
    assert_eq!(admin.products().await.expect("products"), products_before);
    let alice = server.client().await;
    let session = alice.resume(&token).await.expect("the session survives");
    assert_eq!(session.username, "alice");
    assert_eq!(alice.cart().await.expect("cart"), alice_cart);
    assert_eq!(alice.orders(None, 0).await.expect("orders"), alice_orders);
    assert_eq!(alice.order(paid.id).await.expect("order"), paid);
    let bob = server.client().await;
    bob.login("bob", BUYER_PASSWORD)
        .await
        .expect("bob's password survives");
    assert_eq!(bob.order(express.id).await.expect("order"), express);
    // New orders continue after the old ones.
    let next = bob
        .buy(vec![OrderLine {
            product_id: mug.id,
            qty: 1,
        }])
        .await
        .expect("accepted")
        .order;
    assert!(next.id > express.id);
    assert_eq!(admin.product(cap.id).await.expect("cap").stock, 0);
    assert_eq!(admin.product(mug.id).await.expect("mug").stock, 14);
    assert_eq!(next.status, OrderStatus::Confirmed);
    server.stop().await;
}
