//! Bad input gets a typed error (or a clean close for broken framing), the
//! server keeps serving everyone else, and nothing stored changes.

use crate::support::{code_of, product, stock_of, TestServer};
use bytes::{BufMut, BytesMut};
use flashsale::client::Client;
use flashsale::protocol::{
    ClientCodec, ClientFrame, ErrorCode, Hello, OrderLine, ProductId, Request, RequestBody, Role,
    ServerFrame, PROTOCOL_VERSION,
};
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

/// A well-behaved buyer can still log in and buy.
async fn server_still_serves(server: &TestServer, admin: &Client, name: &str) {
    let p = product(admin, &format!("Canary {name}"), 1).await;
    let buyer = server.buyer(admin, name).await;
    let placed = buyer
        .buy(vec![OrderLine {
            product_id: p.id,
            qty: 1,
        }])
        .await
        .expect("a good request is still served");
    assert_eq!(
        placed.order.status,
        flashsale::protocol::OrderStatus::Confirmed
    );
}

async fn raw(server: &TestServer) -> Framed<TcpStream, ClientCodec> {
    Framed::new(
        TcpStream::connect(server.addr).await.expect("connect"),
        ClientCodec::new(),
    )
}

async fn expect_closing(framed: &mut Framed<TcpStream, ClientCodec>, code: ErrorCode) {
    match framed.next().await {
        Some(Ok(ServerFrame::Closing(error))) => assert_eq!(error.code, code, "{error}"),
        other => panic!("expected Closing({code:?}), got {other:?}"),
    }
    assert!(
        framed.next().await.is_none(),
        "the server closes after Closing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_a_session_are_unauthenticated() {
    let (server, _dir) = TestServer::start().await;
    let admin = server.admin().await;
    let p = product(&admin, "Guarded", 3).await;
    let anonymous = server.client().await;
    assert_eq!(code_of(anonymous.pay().await), ErrorCode::Unauthenticated);
    assert_eq!(
        code_of(
            anonymous
                .buy(vec![OrderLine {
                    product_id: p.id,
                    qty: 1
                }])
                .await
        ),
        ErrorCode::Unauthenticated
    );
    assert_eq!(code_of(anonymous.cart().await), ErrorCode::Unauthenticated);
    assert_eq!(
        code_of(anonymous.products().await),
        ErrorCode::Unauthenticated
    );
    assert_eq!(
        code_of(anonymous.login("admin", "wrong password").await),
        ErrorCode::Unauthenticated
    );
    assert_eq!(
        code_of(anonymous.login("nobody", "whatever1").await),
        ErrorCode::Unauthenticated
    );
    assert_eq!(
        code_of(anonymous.resume("not-a-token").await),
        ErrorCode::Unauthenticated
    );
    assert_eq!(
        code_of(anonymous.logout().await),
        ErrorCode::Unauthenticated
    );
    assert_eq!(stock_of(&admin, p.id).await, 3);
    server_still_serves(&server, &admin, "after_anonymous").await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_cart_and_order_requests_get_typed_errors_and_change_nothing() {
    let (server, _dir) = TestServer::start().await;
    let admin = server.admin().await;
    let p = product(&admin, "Scarce", 2).await;
    let buyer = server.buyer(&admin, "clumsy").await;
    buyer.cart_add(p.id, 1).await.expect("a valid add");

    assert_eq!(
        code_of(buyer.cart_add(ProductId(999), 1).await),
        ErrorCode::NotFound
    );
    assert_eq!(
        code_of(buyer.cart_add(p.id, 0).await),
        ErrorCode::BadRequest
    );
    assert_eq!(
        code_of(buyer.cart_add(p.id, u32::MAX).await),
        ErrorCode::BadRequest
    );
    assert_eq!(
        code_of(buyer.cart_add(p.id, 2).await),
        ErrorCode::SoldOut,
        "1 + 2 exceeds stock 2"
    );
    assert_eq!(
        code_of(buyer.cart_remove(ProductId(999), 1).await),
        ErrorCode::NotFound
    );
    assert_eq!(
        code_of(buyer.cart_remove(p.id, 0).await),
        ErrorCode::BadRequest
    );
    let line = |product_id, qty| OrderLine { product_id, qty };
    assert_eq!(code_of(buyer.buy(vec![]).await), ErrorCode::BadRequest);
    assert_eq!(
        code_of(buyer.buy(vec![line(p.id, 0)]).await),
        ErrorCode::BadRequest
    );
    assert_eq!(
        code_of(buyer.buy(vec![line(p.id, 1), line(p.id, 1)]).await),
        ErrorCode::BadRequest
    );
    assert_eq!(
        code_of(buyer.buy(vec![line(ProductId(999), 1)]).await),
        ErrorCode::NotFound
    );
    assert_eq!(
        code_of(buyer.buy(vec![line(p.id, 3)]).await),
        ErrorCode::SoldOut
    );
    let too_many = (1..=65).map(|i| line(ProductId(i), 1)).collect();
    assert_eq!(code_of(buyer.buy(too_many).await), ErrorCode::BadRequest);
    assert_eq!(
        code_of(buyer.order(flashsale::protocol::OrderId(42)).await),
        ErrorCode::NotFound
    );

    // Nothing stored changed: the cart holds the one valid line, the stock is whole, no order exists.
    assert_eq!(buyer.cart().await.expect("cart").lines, vec![line(p.id, 1)]);
    assert_eq!(stock_of(&admin, p.id).await, 2);
    assert!(buyer.orders(None, 0).await.expect("orders").is_empty());

    buyer.cart_clear().await.expect("clear");
    assert_eq!(code_of(buyer.pay().await), ErrorCode::EmptyCart);
    server_still_serves(&server, &admin, "after_clumsy").await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buyers_are_forbidden_admin_requests() {
    let (server, _dir) = TestServer::start().await;
    let admin = server.admin().await;
    let p = product(&admin, "Locked", 1).await;
    let buyer = server.buyer(&admin, "sneaky").await;
    assert_eq!(
        code_of(buyer.create_product("Mine", 1, 100).await),
        ErrorCode::Forbidden
    );
    assert_eq!(
        code_of(buyer.restock(p.id, 100).await),
        ErrorCode::Forbidden
    );
    assert_eq!(
        code_of(buyer.create_user("root2", "password123", Role::Admin).await),
        ErrorCode::Forbidden
    );
    assert_eq!(code_of(buyer.stats().await), ErrorCode::Forbidden);
    let cancel = buyer
        .request(RequestBody::CancelOrder {
            id: flashsale::protocol::OrderId(1),
        })
        .await;
    assert_eq!(code_of(cancel), ErrorCode::Forbidden);
    assert_eq!(admin.products().await.expect("products").len(), 1);
    assert_eq!(stock_of(&admin, p.id).await, 1);
    assert_eq!(
        code_of(admin.create_product("Locked", 1, 1).await),
        ErrorCode::AlreadyExists
    );
    assert_eq!(
        code_of(
            admin
                .create_user("sneaky", "password123", Role::Buyer)
                .await
        ),
        ErrorCode::AlreadyExists
    );
    assert_eq!(
        code_of(
            admin
                .create_user("bad name!", "password123", Role::Buyer)
                .await
        ),
        ErrorCode::BadRequest
    );
    assert_eq!(
        code_of(admin.create_user("shortpw", "short", Role::Buyer).await),
        ErrorCode::BadRequest
    );
    assert_eq!(
        code_of(admin.restock(ProductId(77), 1).await),
        ErrorCode::NotFound
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_protocol_version_is_refused_with_unsupported_version() {
    let (server, _dir) = TestServer::start().await;
    let mut framed = raw(&server).await;
    framed
        .send(ClientFrame::Hello(Hello {
            protocol_version: PROTOCOL_VERSION + 1,
            client_name: "from the future".into(),
        }))
        .await
        .expect("send");
    expect_closing(&mut framed, ErrorCode::UnsupportedVersion).await;
    let admin = server.admin().await;
    server_still_serves(&server, &admin, "after_version").await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hello_with_a_huge_or_control_character_client_name_is_refused() {
    let (server, _dir) = TestServer::start().await;
    for client_name in ["x".repeat(10_000), "line\nINFO forged log line".to_owned()] {
        let mut framed = raw(&server).await;
        framed
            .send(ClientFrame::Hello(Hello {
                protocol_version: PROTOCOL_VERSION,
                client_name,
            }))
            .await
            .expect("send");
        expect_closing(&mut framed, ErrorCode::BadRequest).await;
    }
    let admin = server.admin().await;
    server_still_serves(&server, &admin, "after_names").await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_before_hello_is_refused() {
    let (server, _dir) = TestServer::start().await;
    let mut framed = raw(&server).await;
    let request = ClientFrame::Request(Request {
        id: 1,
        on_behalf_of: None,
        body: RequestBody::ListProducts,
    });
    framed.send(request).await.expect("send");
    expect_closing(&mut framed, ErrorCode::BadRequest).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_bytes_and_oversize_frames_close_only_their_connection() {
    let (server, _dir) = TestServer::start().await;
    let admin = server.admin().await;
    let p = product(&admin, "Sturdy", 5).await;

    // A frame whose payload is not a message, before and after the handshake.
    for handshake_first in [false, true] {
        let mut framed = raw(&server).await;
        if handshake_first {
            framed
                .send(ClientFrame::Hello(Hello {
                    protocol_version: PROTOCOL_VERSION,
                    client_name: "t".into(),
                }))
                .await
                .expect("hello");
            assert!(matches!(
                framed.next().await,
                Some(Ok(ServerFrame::Welcome(_)))
            ));
        }
        let mut garbage = BytesMut::new();
        garbage.put_u32(6);
        garbage.put_slice(&[0xde, 0xad, 0xbe, 0xef, 0xff, 0xff]);
        framed.get_mut().write_all(&garbage).await.expect("write");
        expect_closing(&mut framed, ErrorCode::BadRequest).await;
    }

    // A length prefix far above the limit: refused without reading the body.
    let mut framed = raw(&server).await;
    framed
        .get_mut()
        .write_all(&u32::MAX.to_be_bytes())
        .await
        .expect("write");
    expect_closing(&mut framed, ErrorCode::BadRequest).await;

    // Random noise, then the peer hangs up: the server closes cleanly.
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: flashsale\r\n\r\n")
        .await
        .expect("write");
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_to_end(&mut sink),
    )
    .await
    .expect("the server closes the connection");

    // A truncated frame followed by a hang-up.
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    stream
        .write_all(&[0, 0, 0, 50, 1, 2, 3])
        .await
        .expect("write");
    drop(stream);

    assert_eq!(stock_of(&admin, p.id).await, 5);
    server_still_serves(&server, &admin, "after_garbage").await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acting_on_behalf_of_a_buyer_is_forbidden_without_a_partner_session() {
    let (server, _dir) = TestServer::start().await;
    let admin = server.admin().await;
    let buyer = server.buyer(&admin, "plain").await;
    let _ = buyer;
    let mut framed = raw(&server).await;
    framed
        .send(ClientFrame::Hello(Hello {
            protocol_version: PROTOCOL_VERSION,
            client_name: "t".into(),
        }))
        .await
        .expect("hello");
    assert!(matches!(
        framed.next().await,
        Some(Ok(ServerFrame::Welcome(_)))
    ));
    let login = RequestBody::Login {
        username: "plain".into(),
        password: crate::support::BUYER_PASSWORD.into(),
    };
    framed
        .send(ClientFrame::Request(Request {
            id: 1,
            on_behalf_of: None,
            body: login,
        }))
        .await
        .expect("send");
    assert!(matches!(framed.next().await, Some(Ok(ServerFrame::Response(r))) if r.result.is_ok()));
    let body = RequestBody::CartView;
    let on_behalf_of = Some(flashsale::protocol::BuyerRef("someone-else".into()));
    framed
        .send(ClientFrame::Request(Request {
            id: 2,
            on_behalf_of,
            body,
        }))
        .await
        .expect("send");
    match framed.next().await {
        Some(Ok(ServerFrame::Response(r))) => {
            assert_eq!(r.id, 2);
            assert_eq!(r.result.expect_err("refused").code, ErrorCode::Forbidden);
        }
        other => panic!("unexpected {other:?}"),
    }
    server.stop().await;
}
