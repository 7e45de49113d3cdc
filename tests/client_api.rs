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
async fn a_stopped_server_gives_retryable_errors() {
    let (server, _dir) = TestServer::start().await;
    let admin = server.admin().await;
    let p = product(&admin, "Gone", 1).await;
    let buyer = server.buyer(&admin, "leftover").await;
    server.stop().await;
    let error = buyer.cart().await.expect_err("the server is gone");
    assert!(
        matches!(
            error,
            ClientError::Connect(_) | ClientError::Disconnected(_)
        ),
        "{error}"
    );
    assert!(error.is_retryable());
    let error = buyer
        .buy(vec![OrderLine {
            product_id: p.id,
            qty: 1,
        }])
        .await
        .expect_err("still gone after every retry");
    assert!(error.is_retryable(), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_server_restart_the_client_reconnects_resumes_and_pays() {
    let dir = tempfile::TempDir::new().expect("temp dir");
    let server = TestServer::start_in(dir.path()).await;
    let addr = server.addr;
    let admin = server.admin().await;
    let p = product(&admin, "Comeback", 2).await;
    let buyer = server.buyer(&admin, "patient").await;
    // The buyer's second device: its own session, pushed the buyer's orders.
    let watcher = server.client().await;
    watcher
        .login("patient", crate::support::BUYER_PASSWORD)
        .await
        .expect("second session");
    let mut pushes = watcher.pushes();
    let first = buyer
        .buy(vec![OrderLine {
            product_id: p.id,
            qty: 1,
        }])
        .await
        .expect("before");
    let Some(flashsale::protocol::Push::OrderUpdate(pushed)) = pushes.next().await else {
        panic!("push stream ended");
    };
    assert_eq!(pushed.id, first.order.id);
    server.stop().await;

    let server = TestServer::start_at(crate::support::test_config(dir.path()), addr).await;
    // No new login: the clients reconnect and resume their sessions by
    // themselves, on their next request.
    watcher.products().await.expect("the watcher reconnects");
    let second = buyer
        .buy(vec![OrderLine {
            product_id: p.id,
            qty: 1,
        }])
        .await
        .expect("after");
    assert!(second.order.id > first.order.id);
    assert_eq!(buyer.orders(None, 0).await.expect("orders").len(), 2);
    // Pushes keep flowing through the new connection to the same subscriber.
    let Some(flashsale::protocol::Push::OrderUpdate(pushed)) = pushes.next().await else {
        panic!("push stream ended");
    };
    assert_eq!(pushed.id, second.order.id);
    server.stop().await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_the_server_never_answers_fails_with_timeout_soon_after_the_request_timeout() {
    use flashsale::protocol::ClientFrame;
    use futures::StreamExt;
    use std::time::{Duration, Instant};

    // A peer that completes the handshake, then reads requests and never answers.
    let (got_request, mut request_seen) = tokio::sync::mpsc::channel(1);
    let (addr, silent) = fake_server(|mut framed| async move {
        while let Some(Ok(frame)) = framed.next().await {
            if matches!(frame, ClientFrame::Request(_)) {
                let _ = got_request.try_send(());
            }
        }
    })
    .await;
    let timeout = Duration::from_millis(400);
    let config = ClientConfig {
        request_timeout: timeout,
        ..ClientConfig::default()
    };
    let client = Client::connect_with(addr, config).await.expect("connect");
    let started = Instant::now();
    let result = tokio::time::timeout(timeout * 10, client.products())
        .await
        .expect("the request never timed out");
    let waited = started.elapsed();
    assert!(
        matches!(result, Err(ClientError::Timeout(t)) if t == timeout),
        "{result:?}"
    );
    assert!(request_seen.recv().await.is_some(), "the request was sent");
    // Never before the timeout; at most a clock tick (1/16) after it, plus
    // generous room for a loaded machine.
    assert!(waited >= timeout, "timed out after {waited:?}");
    assert!(waited < timeout * 3, "timed out only after {waited:?}");
    // The connection stays usable for the next request (it too times out).
    assert!(client
        .products()
        .await
        .expect_err("no answer comes")
        .is_timeout());
    silent.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_stream_fails_every_attempt_in_flight_when_the_connection_drops() {
    use flashsale::protocol::{ClientFrame, OrderLine, ProductId};
    use futures::StreamExt;

    // A peer that completes the handshake, reads five requests, then hangs up.
    let (addr, peer) = fake_server(|mut framed| async move {
        let mut requests = 0;
        while requests < 5 {
            match framed.next().await {
                Some(Ok(ClientFrame::Request(_))) => requests += 1,
                other => panic!("expected a request, got {other:?}"),
            }
        }
        // Dropping the socket closes the connection.
    })
    .await;
    let client = Client::connect(addr).await.expect("connect");
    let mut stream = client.order_stream().await.expect("stream");
    for tag in 0..5 {
        let line = OrderLine {
            product_id: ProductId(1),
            qty: 1,
        };
        stream
            .buy(None, vec![line], uuid::Uuid::new_v4(), tag)
            .await
            .expect("submit");
    }
    peer.await.expect("peer");
    let mut tags = Vec::new();
    while let Some(answer) = tokio::time::timeout(std::time::Duration::from_secs(10), stream.next())
        .await
        .expect("every attempt is answered, none hangs")
    {
        let error = answer.result.expect_err("nobody answered");
        assert!(
            matches!(error, ClientError::Disconnected(_)) && error.is_retryable(),
            "{error:?}"
        );
        tags.push(answer.tag);
    }
    tags.sort_unstable();
    assert_eq!(tags, [0, 1, 2, 3, 4]);
    assert_eq!(stream.in_flight(), 0);
}

/// A fake server on a free port: `talk` gets each accepted connection after
/// the handshake (Hello read, Welcome sent), to misbehave with.
async fn fake_server<F, Fut>(talk: F) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>)
where
    F: FnOnce(
            tokio_util::codec::Framed<tokio::net::TcpStream, flashsale::protocol::ServerCodec>,
        ) -> Fut
        + Send
        + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    use flashsale::protocol::{ClientFrame, ServerCodec, ServerFrame, Welcome, PROTOCOL_VERSION};
    use futures::{SinkExt, StreamExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.expect("accept");
        let mut framed = tokio_util::codec::Framed::new(stream, ServerCodec::new());
        let hello = framed.next().await;
        assert!(
            matches!(hello, Some(Ok(ClientFrame::Hello(_)))),
            "{hello:?}"
        );
        framed
            .send(ServerFrame::Welcome(Welcome {
                protocol_version: PROTOCOL_VERSION,
                server_version: "fake".into(),
            }))
            .await
            .expect("welcome");
        talk(framed).await;
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_stream_refuses_attempts_beyond_its_window_without_sending_them() {
    use flashsale::protocol::{ClientFrame, OrderLine, ProductId};
    use futures::StreamExt;

    // A peer that reads requests and never answers, counting them.
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let (addr, peer) = fake_server(|mut framed| async move {
        while let Some(Ok(frame)) = framed.next().await {
            if let ClientFrame::Request(request) = frame {
                let _ = seen_tx.send(request.id);
            }
        }
    })
    .await;
    let config = ClientConfig {
        max_in_flight: 4,
        ..ClientConfig::default()
    };
    let client = Client::connect_with(addr, config).await.expect("connect");
    let mut stream = client.order_stream().await.expect("stream");
    let line = || {
        vec![OrderLine {
            product_id: ProductId(1),
            qty: 1,
        }]
    };
    for tag in 0..4 {
        stream
            .buy(None, line(), uuid::Uuid::new_v4(), tag)
            .await
            .expect("within the window");
    }
    let refused = stream
        .buy(None, line(), uuid::Uuid::new_v4(), 4)
        .await
        .expect_err("the window is full");
    assert!(matches!(refused, ClientError::StreamFull(4)), "{refused:?}");
    assert!(!refused.is_retryable());
    assert_eq!(stream.in_flight(), 4);
    // Exactly the four attempts within the window reached the peer.
    for _ in 0..4 {
        assert!(seen.recv().await.is_some());
    }
    peer.abort();
    assert!(seen.recv().await.is_none(), "the fifth was never sent");
}
