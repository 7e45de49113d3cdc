//! Hostile clients over real TCP: TLS end to end, the connection limit, idle
//! and slow-loris connections, login throttling, and a well-behaved buyer
//! served within a bounded time while others flood the server with garbage,
//! oversize frames, idle connections and pay spam.

use crate::support::{code_of, product, stock_of, test_config, TestServer, BUYER_PASSWORD};
use bytes::{BufMut, BytesMut};
use flashsale::client::{Client, ClientConfig, ClientError, ClientTls};
use flashsale::protocol::{
    ClientCodec, ClientFrame, ErrorCode, Hello, OrderLine, OrderStatus, Request, RequestBody,
    ServerFrame, PROTOCOL_VERSION,
};
use flashsale::server::LoginPolicy;
use flashsale::server::ServerTls;
use futures::{SinkExt, StreamExt};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

/// Longest a well-behaved buyer may wait for any answer while others abuse the server.
const SERVED_WITHIN: Duration = Duration::from_secs(10);

/// A self-signed certificate for `localhost`: (certificate PEM, key PEM).
fn self_signed() -> (String, String) {
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("certificate");
    (certified.cert.pem(), certified.signing_key.serialize_pem())
}

async fn handshaken(server: &TestServer) -> Framed<TcpStream, ClientCodec> {
    let stream = TcpStream::connect(server.addr).await.expect("connect");
    let mut framed = Framed::new(stream, ClientCodec::new());
    framed
        .send(ClientFrame::Hello(Hello {
            protocol_version: PROTOCOL_VERSION,
            client_name: "abuse-test".into(),
        }))
        .await
        .expect("hello");
    match framed.next().await {
        Some(Ok(ServerFrame::Welcome(_))) => framed,
        other => panic!("expected Welcome, got {other:?}"),
    }
}

/// Reads until the server's `Closing` frame; its code.
async fn closing_code(framed: &mut Framed<TcpStream, ClientCodec>) -> ErrorCode {
    loop {
        match framed.next().await {
            Some(Ok(ServerFrame::Closing(error))) => return error.code,
            Some(Ok(_)) => continue,
            other => panic!("expected Closing, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_flow_runs_over_tls_with_a_certificate_made_in_the_test() {
    let (cert, key) = self_signed();
    let dir = tempfile::TempDir::new().expect("temp dir");
    let mut config = test_config(dir.path());
    config.tls = Some(ServerTls::from_pem(cert.as_bytes(), key.as_bytes()).expect("tls"));
    let server = TestServer::start_with_tls(config, cert.as_bytes()).await;
    let admin = server.admin().await;
    let p = product(&admin, "Encrypted", 1).await;
    let buyer = server.buyer(&admin, "tls-buyer").await;
    buyer.cart_add(p.id, 1).await.expect("cart add");
    let placed = buyer.pay().await.expect("pay");
    assert_eq!(placed.order.status, OrderStatus::Confirmed);
    assert_eq!(
        buyer.order(placed.order.id).await.expect("order").status,
        OrderStatus::Confirmed
    );

    // A client that does not trust the certificate is refused by its own TLS.
    let (other_cert, _) = self_signed();
    let untrusting = ClientConfig {
        tls: Some(ClientTls::with_ca_pem("localhost", other_cert.as_bytes()).expect("tls")),
        ..ClientConfig::default()
    };
    assert!(matches!(
        Client::connect_with(server.addr, untrusting).await,
        Err(ClientError::Tls(_))
    ));
    // A plain-TCP client gets no service and does not disturb the server.
    let plain = ClientConfig {
        connect_timeout: Duration::from_secs(5),
        ..ClientConfig::default()
    };
    assert!(Client::connect_with(server.addr, plain).await.is_err());
    assert_eq!(stock_of(&admin, p.id).await, 0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_limit_are_told_overloaded_and_a_freed_slot_serves_again() {
    let dir = tempfile::TempDir::new().expect("temp dir");
    let mut config = test_config(dir.path());
    config.max_connections = 2;
    let server = TestServer::start_with(config).await;
    let first = server.client().await;
    let second = server.client().await;
    let refused = Client::connect(server.addr).await;
    assert_eq!(
        refused.as_ref().err().and_then(ClientError::code),
        Some(ErrorCode::Overloaded),
        "{refused:?}"
    );
    second
        .request(RequestBody::Ping)
        .await
        .expect("the others are still served");
    drop(second);
    // The server notices the close and frees the slot; a new client gets in.
    let deadline = Instant::now() + SERVED_WITHIN;
    let third = loop {
        match Client::connect(server.addr).await {
            Ok(client) => break client,
            Err(e) if e.code() == Some(ErrorCode::Overloaded) && Instant::now() < deadline => {
                tokio::task::yield_now().await;
            }
            Err(e) => panic!("no slot freed: {e}"),
        }
    };
    third.request(RequestBody::Ping).await.expect("served");
    first.request(RequestBody::Ping).await.expect("served");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slow_loris_connections_are_closed_and_ping_keeps_a_connection_open() {
    let dir = tempfile::TempDir::new().expect("temp dir");
    let mut config = test_config(dir.path());
    // Generous against a loaded CI machine: a ping is 200 ms late at most
    // in practice, far less than the 1.5 s it has.
    config.idle_timeout = Duration::from_millis(1500);
    let server = TestServer::start_with(config).await;

    // Pinging more often than the timeout keeps the connection, well past it.
    let mut pinger = handshaken(&server).await;
    let started = Instant::now();
    for id in 0..8 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let ping = ClientFrame::Request(Request {
            id,
            on_behalf_of: None,
            body: RequestBody::Ping,
        });
        pinger.send(ping).await.expect("ping");
        match pinger.next().await {
            Some(Ok(ServerFrame::Response(response))) => assert!(response.result.is_ok()),
            other => panic!("expected Pong, got {other:?}"),
        }
    }
    assert!(started.elapsed() > Duration::from_millis(2400));

    // Silent: closed with a reason. Slow loris (half a frame, then nothing): closed too.
    let mut silent = handshaken(&server).await;
    assert_eq!(closing_code(&mut silent).await, ErrorCode::BadRequest);
    let mut loris = handshaken(&server).await;
    let mut partial = BytesMut::new();
    partial.put_u32(100);
    partial.put_slice(b"abc");
    loris
        .get_mut()
        .write_all(&partial)
        .await
        .expect("partial frame");
    assert_eq!(closing_code(&mut loris).await, ErrorCode::BadRequest);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anonymous_connection_must_log_in_by_the_deadline_even_if_it_pings() {
    let dir = tempfile::TempDir::new().expect("temp dir");
    let mut config = test_config(dir.path());
    config.login_timeout = Duration::from_millis(400);
    let server = TestServer::start_with(config).await;
    let mut anonymous = handshaken(&server).await;
    let started = Instant::now();
    let code = loop {
        let ping = ClientFrame::Request(Request {
            id: 1,
            on_behalf_of: None,
            body: RequestBody::Ping,
        });
        if anonymous.send(ping).await.is_err() {
            panic!("closed without a Closing frame");
        }
        match anonymous.next().await {
            Some(Ok(ServerFrame::Response(_))) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Some(Ok(ServerFrame::Closing(error))) => break error.code,
            other => panic!("unexpected {other:?}"),
        }
        assert!(started.elapsed() < SERVED_WITHIN, "never closed");
    };
    assert_eq!(code, ErrorCode::Unauthenticated);
    assert!(started.elapsed() >= Duration::from_millis(400));
    // A connection that logs in in time stays.
    let admin = server.admin().await;
    admin.request(RequestBody::Ping).await.expect("served");
    server.stop().await;
}

/// Sends one request on a raw connection and reads the next frame.
async fn raw_call(conn: &mut Framed<TcpStream, ClientCodec>, body: RequestBody) -> ServerFrame {
    let request = ClientFrame::Request(Request {
        id: 1,
        on_behalf_of: None,
        body,
    });
    conn.send(request).await.expect("send");
    match tokio::time::timeout(SERVED_WITHIN, conn.next()).await {
        Ok(Some(Ok(frame))) => frame,
        other => panic!("no frame: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_logout_past_the_login_deadline_the_connection_gets_a_new_deadline_to_log_in() {
    let dir = tempfile::TempDir::new().expect("temp dir");
    let mut config = test_config(dir.path());
    config.login_timeout = Duration::from_millis(400);
    let server = TestServer::start_with(config).await;
    let admin = server.admin().await;
    let _ = server.buyer(&admin, "returning").await;
    let login = || RequestBody::Login {
        username: "returning".into(),
        password: BUYER_PASSWORD.into(),
    };
    let mut conn = handshaken(&server).await;
    let logged_in = raw_call(&mut conn, login()).await;
    assert!(matches!(logged_in, ServerFrame::Response(ref r) if r.result.is_ok()));
    // Stay logged in past the connection's first login deadline.
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(600) {
        assert!(matches!(
            raw_call(&mut conn, RequestBody::Ping).await,
            ServerFrame::Response(_)
        ));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let logged_out = raw_call(&mut conn, RequestBody::Logout).await;
    assert!(matches!(logged_out, ServerFrame::Response(ref r) if r.result.is_ok()));
    // A new deadline counts from the logout: logging in again works.
    match raw_call(&mut conn, login()).await {
        ServerFrame::Response(response) => {
            assert!(response.result.is_ok(), "{response:?}");
        }
        other => panic!("closed instead of a login: {other:?}"),
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_are_throttled_and_the_right_password_works_after_the_wait() {
    let dir = tempfile::TempDir::new().expect("temp dir");
    let mut config = test_config(dir.path());
    config.login_policy = LoginPolicy {
        free_per_account_and_peer: 2,
        // Long enough that no scheduling delay ends the wait before the
        // next attempt, short enough to wait out in the test.
        base_delay: Duration::from_secs(2),
        ..LoginPolicy::default()
    };
    let server = TestServer::start_with(config).await;
    let admin = server.admin().await;
    let _ = server.buyer(&admin, "target").await;
    let _ = server.buyer(&admin, "bystander").await;
    let guesser = server.client().await;
    for _ in 0..3 {
        assert_eq!(
            code_of(guesser.login("target", "wrong-password").await),
            ErrorCode::Unauthenticated
        );
    }
    // Now even the right password must wait, and is told how long.
    let throttled = guesser.login("target", BUYER_PASSWORD).await;
    let wait = match &throttled {
        Err(e) if e.code() == Some(ErrorCode::Overloaded) => e.retry_after().expect("a wait"),
        other => panic!("expected a throttled login, got {other:?}"),
    };
    assert!(wait <= Duration::from_secs(2), "{wait:?}");
    // Another account from the same peer is not throttled by these failures.
    let other = server.client().await;
    other
        .login("bystander", BUYER_PASSWORD)
        .await
        .expect("another account logs in");
    tokio::time::sleep(wait).await;
    guesser
        .login("target", BUYER_PASSWORD)
        .await
        .expect("the owner logs in after the wait");
    server.stop().await;
}

/// Sends frames of random bytes and oversize frames on fresh connections.
async fn flood_garbage(server: &TestServer, rounds: usize) {
    for round in 0..rounds {
        let Ok(mut stream) = TcpStream::connect(server.addr).await else {
            continue;
        };
        let mut bytes = BytesMut::new();
        if round % 2 == 0 {
            bytes.put_u32(12);
            bytes.put_slice(&[0xff; 12]);
        } else {
            bytes.put_u32(u32::MAX);
            bytes.put_slice(&[0; 64]);
        }
        let _ = stream.write_all(&bytes).await;
        let _ = stream.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_well_behaved_buyer_is_served_in_bounded_time_while_others_flood_the_server() {
    let dir = tempfile::TempDir::new().expect("temp dir");
    let mut config = test_config(dir.path());
    config.max_connections = 400;
    // The spammer meets the production per-buyer pay limit.
    config.pay_rate_per_buyer = flashsale::server::Config::DEFAULT_PAY_RATE_PER_BUYER;
    let server = TestServer::start_with(config).await;
    let admin = server.admin().await;
    let p = product(&admin, "Contested", 5).await;
    let spammer = server.buyer(&admin, "spammer").await;
    let good = server.buyer(&admin, "good-buyer").await;

    // 300 idle connections that only said Hello.
    let mut idle = Vec::new();
    for _ in 0..300 {
        idle.push(handshaken(&server).await);
    }
    // Garbage, oversize frames and pay spam, all at once, while the good buyer shops.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let spam = {
        let stop = stop.clone();
        let line = vec![OrderLine {
            product_id: p.id,
            qty: 1,
        }];
        async move {
            let mut answered = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let burst = (0..64).map(|_| spammer.buy(line.clone()));
                answered += futures::future::join_all(burst).await.len() as u32;
            }
            answered
        }
    };
    let garbage = flood_garbage(&server, 200);
    let shopping = async {
        let started = Instant::now();
        let served = tokio::time::timeout(SERVED_WITHIN, async {
            good.cart_add(p.id, 1).await?;
            good.pay().await
        })
        .await
        .expect("the good buyer was answered in time");
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        (served, started.elapsed())
    };
    let (spam_answers, (), (served, took)) = tokio::join!(spam, garbage, shopping);
    assert!(spam_answers > 0);
    // The spammer's rate limit (40 at once, 20/s) leaves stock for the good
    // buyer unless the spam itself bought it: either way the answer is right.
    match served {
        Ok(placed) => assert!(
            matches!(
                placed.order.status,
                OrderStatus::Confirmed | OrderStatus::Rejected { .. }
            ),
            "{placed:?}"
        ),
        Err(e) => assert_eq!(e.code(), Some(ErrorCode::SoldOut), "{e}"),
    }
    assert!(took < SERVED_WITHIN);
    drop(idle);
    let product = admin.product(p.id).await.expect("product");
    assert!(product.balances(), "{product:?}");
    let orders = admin
        .query_orders(
            None,
            0,
            Some(p.id),
            Some(flashsale::protocol::StatusFilter::Confirmed),
        )
        .await
        .expect("orders");
    let sold: u64 = orders
        .orders
        .iter()
        .map(|o| u64::from(o.items[0].qty))
        .sum();
    assert_eq!(sold, product.confirmed_qty);
    assert_eq!(product.stock, 5 - sold);
    server.stop().await;
}
