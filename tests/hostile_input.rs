//! Hostile input, property-tested over real TCP against one real server per
//! test: arbitrary bytes after a valid `Hello`, and well-formed nonsense
//! requests from a logged-in buyer. The server never crashes, answers every
//! request it reads with a reply of the right kind or a typed error, closes
//! only with `Closing(BadRequest)` after a bad frame, keeps serving other
//! connections, and nothing a buyer may not change changes.
//!
//! What the server must answer is worked out from the bytes alone by the
//! testkit's oracle (`flashsale_testkit::oracle`, shared with the
//! `request_path` fuzz target), not from server internals. Timeouts only
//! detect a hung server; nothing sleeps.

use bytes::BytesMut;
use flashsale::client::Client;
use flashsale::protocol::{
    BuyerRef, CartView, ClientCodec, ClientFrame, ErrorCode, Hello, OrderId, OrderInfo, OrderLine,
    OrderStatus, ProductId, Reply, Request, RequestBody, Role, SaleRules, ServerFrame,
    StatusFilter, UserId, MAX_LINE_QTY, MAX_TEXT_LEN,
};
use flashsale_testkit::oracle::{check_answers, expected, only_orders_changed, Expected};
use flashsale_testkit::raw::{self, call, exchange, next_frame, Conn};
use flashsale_testkit::{product, test_config, TestServer, ADMIN_PASSWORD, BUYER_PASSWORD};
use futures::SinkExt;
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use tokio_util::codec::Encoder;
use uuid::Uuid;

/// Products every test server has besides the ones a test adds, by id 1..=4
/// (ids are assigned in creation order): plenty, scarce, limited, closed.
const PRODUCTS: u64 = 4;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Runs `test` on a thread with a roomy stack: the nested strategies and
/// futures of these tests outgrow the 2 MiB of a test thread in debug builds.
fn with_big_stack(test: impl FnOnce() + Send + 'static) {
    let thread = std::thread::Builder::new()
        .stack_size(64 << 20)
        .spawn(test)
        .expect("spawn the test thread");
    if let Err(panic) = thread.join() {
        std::panic::resume_unwind(panic);
    }
}

fn runner(cases: u32) -> TestRunner {
    TestRunner::new(ProptestConfig {
        cases,
        // The server keeps its state across cases; a persisted seed would
        // not reproduce a failure anyway.
        failure_persistence: None,
        ..ProptestConfig::default()
    })
}

/// Creates the four standard products: plenty, scarce, limited to 2 per buyer, closed.
async fn standard_products(admin: &Client) {
    product(admin, "Plenty", 1_000_000).await;
    product(admin, "Scarce", 3).await;
    let limited = SaleRules {
        max_per_buyer: Some(2),
        ..SaleRules::default()
    };
    admin
        .create_product_with_rules("Limited", 100, 100, limited)
        .await
        .expect("limited product");
    let closed = SaleRules {
        closes_at_ms: Some(1),
        ..SaleRules::default()
    };
    admin
        .create_product_with_rules("Closed", 100, 100, closed)
        .await
        .expect("closed product");
}

/// A raw connection past the handshake.
async fn connect(server: &TestServer) -> Conn {
    raw::connect(server.addr, "hostile").await
}

/// A test server whose login throttle never engages: the nonsense requests
/// include failed logins from this one peer address, and the throttle is
/// tested on its own (`tests/abuse.rs`).
async fn start_server() -> (TestServer, tempfile::TempDir) {
    let dir = tempfile::TempDir::new().expect("temp dir");
    let mut config = test_config(dir.path());
    config.login_policy = flashsale::server::LoginPolicy {
        free_per_account_and_peer: u32::MAX,
        free_per_peer: u32::MAX,
        free_per_account: u32::MAX,
        ..flashsale::server::LoginPolicy::default()
    };
    (TestServer::start_with(config).await, dir)
}

/// A raw connection logged in as buyer `name`; returns it with the buyer's id.
async fn buyer_connection(server: &TestServer, name: &str) -> (Conn, UserId) {
    let mut conn = connect(server).await;
    let login = RequestBody::Login {
        username: name.into(),
        password: BUYER_PASSWORD.into(),
    };
    match call(&mut conn, login).await.result {
        Ok(Reply::LoggedIn { user_id, .. }) => (conn, user_id),
        other => panic!("buyer login answered {other:?}"),
    }
}

/// Another connection is still served: a new one gets its handshake and a typed answer.
async fn still_serves_new_connections(server: &TestServer) {
    let mut conn = connect(server).await;
    let response = call(&mut conn, RequestBody::CartView).await;
    assert_eq!(
        response.result.expect_err("no session").code,
        ErrorCode::Unauthenticated
    );
}

// ---------------------------------------------------------------------------
// Strategies

fn product_id() -> impl Strategy<Value = ProductId> {
    prop_oneof![
        4 => (0..=PRODUCTS + 1).prop_map(ProductId),
        1 => any::<u64>().prop_map(ProductId),
    ]
}

fn order_id() -> impl Strategy<Value = OrderId> {
    prop_oneof![
        3 => (0u64..64).prop_map(OrderId),
        1 => any::<u64>().prop_map(OrderId),
    ]
}

fn qty() -> impl Strategy<Value = u32> {
    prop_oneof![
        4 => 0u32..=3,
        1 => Just(MAX_LINE_QTY),
        1 => Just(MAX_LINE_QTY + 1),
        1 => Just(u32::MAX),
        1 => any::<u32>(),
    ]
}

fn big_qty() -> impl Strategy<Value = u64> {
    prop_oneof![0u64..=3, Just(u64::MAX), any::<u64>()]
}

/// Empty, short unicode, around the length limit, or far beyond it.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => Just(String::new()),
        4 => "\\PC{0,24}",
        1 => "[a-z0-9_\\-]{1,12}",
        1 => (MAX_TEXT_LEN - 1..=MAX_TEXT_LEN + 1).prop_map(|n| "a".repeat(n)),
        1 => (1usize..1500).prop_map(|n| "ж€\u{1F600}\0".repeat(n)),
    ]
}

fn key() -> impl Strategy<Value = Uuid> {
    prop_oneof![
        (0u128..4).prop_map(Uuid::from_u128),
        any::<u128>().prop_map(Uuid::from_u128),
    ]
}

fn session_body() -> impl Strategy<Value = RequestBody> {
    prop_oneof![
        3 => (text(), text()).prop_map(|(username, password)| RequestBody::Login { username, password }),
        2 => text().prop_map(|key| RequestBody::LoginApiKey { key }),
        2 => text().prop_map(|token| RequestBody::Resume { token }),
        1 => Just(RequestBody::Logout),
    ]
}

fn shopping_body() -> impl Strategy<Value = RequestBody> {
    let line = || (product_id(), qty()).prop_map(|(product_id, qty)| OrderLine { product_id, qty });
    prop_oneof![
        Just(RequestBody::ListProducts),
        product_id().prop_map(|id| RequestBody::GetProduct { id }),
        (product_id(), qty())
            .prop_map(|(product_id, qty)| RequestBody::CartAdd { product_id, qty }),
        (product_id(), qty())
            .prop_map(|(product_id, qty)| RequestBody::CartRemove { product_id, qty }),
        Just(RequestBody::CartView),
        Just(RequestBody::CartClear),
        key().prop_map(|idempotency_key| RequestBody::Pay { idempotency_key }),
        (
            prop_oneof![
                3 => prop::collection::vec(line(), 0..3),
                1 => prop::collection::vec(line(), 0..70),
            ],
            key()
        )
            .prop_map(|(items, idempotency_key)| {
                RequestBody::Buy {
                    items,
                    idempotency_key,
                }
            }),
        order_id().prop_map(|id| RequestBody::GetOrder { id }),
        (prop::option::of(order_id()), any::<u32>())
            .prop_map(|(after, limit)| RequestBody::ListOrders { after, limit }),
    ]
}

/// Requests that often succeed, so the accounting of real orders is exercised.
fn plausible_body() -> impl Strategy<Value = RequestBody> {
    let line = (1..=PRODUCTS, 1u32..=2).prop_map(|(id, qty)| OrderLine {
        product_id: ProductId(id),
        qty,
    });
    prop_oneof![
        (line.clone(), key()).prop_map(|(line, idempotency_key)| RequestBody::Buy {
            items: vec![line],
            idempotency_key,
        }),
        line.prop_map(|line| RequestBody::CartAdd {
            product_id: line.product_id,
            qty: line.qty,
        }),
        key().prop_map(|idempotency_key| RequestBody::Pay { idempotency_key }),
    ]
}

fn rules() -> impl Strategy<Value = SaleRules> {
    (
        prop::option::of(any::<u32>()),
        prop::option::of(any::<u64>()),
        prop::option::of(any::<u64>()),
    )
        .prop_map(|(max_per_buyer, opens_at_ms, closes_at_ms)| SaleRules {
            max_per_buyer,
            opens_at_ms,
            closes_at_ms,
        })
}

fn role() -> impl Strategy<Value = Role> {
    prop_oneof![Just(Role::Buyer), Just(Role::Partner), Just(Role::Admin)]
}

fn status() -> impl Strategy<Value = StatusFilter> {
    prop_oneof![
        Just(StatusFilter::Pending),
        Just(StatusFilter::Confirmed),
        Just(StatusFilter::Rejected),
        Just(StatusFilter::Cancelled),
    ]
}

fn admin_body() -> impl Strategy<Value = RequestBody> {
    prop_oneof![
        (text(), any::<u64>(), big_qty(), rules()).prop_map(|(name, price_cents, stock, rules)| {
            RequestBody::CreateProduct {
                name,
                price_cents,
                stock,
                rules,
            }
        }),
        (product_id(), big_qty())
            .prop_map(|(product_id, qty)| RequestBody::Restock { product_id, qty }),
        (text(), text(), role()).prop_map(|(username, password, role)| RequestBody::CreateUser {
            username,
            password,
            role
        }),
        order_id().prop_map(|id| RequestBody::CancelOrder { id }),
        Just(RequestBody::Stats),
        text().prop_map(|partner| RequestBody::CreateApiKey { partner }),
        text().prop_map(|key_id| RequestBody::RevokeApiKey { key_id }),
        (product_id(), big_qty())
            .prop_map(|(product_id, stock)| RequestBody::SetStock { product_id, stock }),
        (product_id(), prop::option::of(any::<u32>())).prop_map(|(product_id, max_per_buyer)| {
            RequestBody::SetLimit {
                product_id,
                max_per_buyer,
            }
        }),
        (
            product_id(),
            prop::option::of(any::<u64>()),
            prop::option::of(any::<u64>())
        )
            .prop_map(
                |(product_id, opens_at_ms, closes_at_ms)| RequestBody::SetWindow {
                    product_id,
                    opens_at_ms,
                    closes_at_ms,
                }
            ),
    ]
}

fn listing_body() -> impl Strategy<Value = RequestBody> {
    prop_oneof![
        (prop::option::of(text()), any::<u32>())
            .prop_map(|(after, limit)| RequestBody::ListUsers { after, limit }),
        (
            prop::option::of(order_id()),
            any::<u32>(),
            prop::option::of(product_id()),
            prop::option::of(status())
        )
            .prop_map(
                |(after, limit, product_id, status)| RequestBody::QueryOrders {
                    after,
                    limit,
                    product_id,
                    status,
                }
            ),
        Just(RequestBody::Ping),
    ]
}

/// Any request body, with nonsense fields; mostly the ones a buyer may send.
fn body() -> impl Strategy<Value = RequestBody> {
    prop_oneof![
        1 => session_body(),
        6 => shopping_body(),
        2 => plausible_body(),
        2 => admin_body(),
        1 => listing_body(),
    ]
}

fn on_behalf_of() -> impl Strategy<Value = Option<BuyerRef>> {
    prop_oneof![
        5 => Just(None),
        1 => text().prop_map(|r| Some(BuyerRef(r))),
    ]
}

/// A well-formed request with a nonsense body.
fn request() -> impl Strategy<Value = Request> {
    (any::<u64>(), on_behalf_of(), body()).prop_map(|(id, on_behalf_of, body)| Request {
        id,
        on_behalf_of,
        body,
    })
}

/// The bytes of a request frame as the client codec writes it.
fn encoded(frame: ClientFrame) -> Vec<u8> {
    let mut buf = BytesMut::new();
    ClientCodec::new()
        .encode(frame, &mut buf)
        .expect("every generated frame fits the frame limit");
    buf.to_vec()
}

/// A piece of a hostile byte stream.
fn chunk() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        2 => prop::collection::vec(any::<u8>(), 0..48),
        2 => prop::collection::vec(any::<u8>(), 0..48).prop_map(|payload| {
            let mut framed = (payload.len() as u32).to_be_bytes().to_vec();
            framed.extend_from_slice(&payload);
            framed
        }),
        6 => request().prop_map(|r| encoded(ClientFrame::Request(r))),
        1 => (any::<u16>(), text()).prop_map(|(protocol_version, client_name)| {
            encoded(ClientFrame::Hello(Hello { protocol_version, client_name }))
        }),
        1 => any::<u32>().prop_map(|n| n.to_be_bytes().to_vec()),
    ]
}

// ---------------------------------------------------------------------------
// The tests

#[test]
fn arbitrary_bytes_after_hello_get_typed_answers_or_a_bad_request_close_and_others_are_still_served(
) {
    with_big_stack(|| {
        let rt = runtime();
        let (server, _dir) = rt.block_on(start_server());
        let admin = rt.block_on(server.admin());
        rt.block_on(async {
            standard_products(&admin).await;
            server.buyer(&admin, "noisy").await;
        });
        // The runner takes a `Fn`: state carried across cases lives in a `RefCell`.
        let products = RefCell::new(rt.block_on(admin.products()).expect("products"));

        let strategy = (any::<bool>(), prop::collection::vec(chunk(), 0..12));
        runner(64)
            .run(&strategy, |(logged_in, chunks)| {
                let bytes = chunks.concat();
                let expected = expected(&bytes);
                rt.block_on(async {
                    let conn = if logged_in {
                        buyer_connection(&server, "noisy").await.0
                    } else {
                        connect(&server).await
                    };
                    let frames = exchange(conn, &bytes[..expected.len]).await;
                    check_answers(frames, &expected);
                    still_serves_new_connections(&server).await;
                    let after = admin.products().await.expect("products");
                    only_orders_changed(&products.borrow(), &after);
                    *products.borrow_mut() = after;
                });
                Ok(())
            })
            .unwrap_or_else(|failure| panic!("{failure}"));
        rt.block_on(server.stop());
    });
}

/// What the buyer's own answers say it bought: confirmed units per product,
/// counted once per order (a retried key returns the same order).
#[derive(Default)]
struct Purchases {
    orders: BTreeSet<OrderId>,
    units: BTreeMap<ProductId, u64>,
}

impl Purchases {
    fn record(&mut self, order: &OrderInfo) {
        assert_ne!(
            order.status,
            OrderStatus::Pending,
            "an order is answered once decided"
        );
        if order.status == OrderStatus::Confirmed && self.orders.insert(order.id) {
            for line in &order.items {
                *self.units.entry(line.product_id).or_default() += u64::from(line.qty);
            }
        }
    }
}

#[test]
fn nonsense_requests_from_a_buyer_get_typed_answers_and_change_only_its_own_orders_and_cart() {
    with_big_stack(|| {
        let rt = runtime();
        let (server, _dir) = rt.block_on(start_server());
        let admin = rt.block_on(server.admin());
        // A bystander with a cart and an order the hostile buyer must not touch.
        let (bystander, bystander_cart, bystander_orders) = rt.block_on(async {
            standard_products(&admin).await;
            server.buyer(&admin, "hostile").await;
            let bystander = server.buyer(&admin, "bystander").await;
            let line = OrderLine {
                product_id: ProductId(1),
                qty: 2,
            };
            bystander.buy(vec![line]).await.expect("bystander buys");
            bystander
                .cart_add(ProductId(2), 1)
                .await
                .expect("bystander cart");
            let cart: CartView = bystander.cart().await.expect("cart");
            let orders = bystander.orders(None, 0).await.expect("orders");
            (bystander, cart, orders)
        });
        let initial = rt.block_on(admin.products()).expect("products");
        let purchases = RefCell::new(Purchases::default());

        let strategy = prop::collection::vec((on_behalf_of(), body()), 1..24);
        runner(64)
            .run(&strategy, |requests| {
                let requests: Vec<Request> = requests
                    .into_iter()
                    .zip(0u64..)
                    .map(|((on_behalf_of, body), id)| Request {
                        id,
                        on_behalf_of,
                        body,
                    })
                    .collect();
                let expected = Expected::requests(requests.clone());
                rt.block_on(async {
                    let (mut conn, hostile) = buyer_connection(&server, "hostile").await;
                    for request in requests {
                        conn.feed(ClientFrame::Request(request))
                            .await
                            .expect("feed");
                    }
                    conn.flush().await.expect("flush");
                    let mut frames = Vec::new();
                    while frames.len() < expected.requests.len() {
                        match next_frame(&mut conn).await {
                            Some(frame @ ServerFrame::Response(_)) => frames.push(frame),
                            Some(ServerFrame::Push(_)) => {}
                            other => panic!("well-formed requests got {other:?}"),
                        }
                    }
                    let answered = check_answers(frames, &expected);
                    for (request, result) in answered {
                        match result {
                            Ok(Reply::Accepted(order)) => {
                                assert_eq!(order.user_id, hostile, "an order for someone else");
                                purchases.borrow_mut().record(&order);
                            }
                            Ok(Reply::Order(order)) => {
                                assert_eq!(order.user_id, hostile, "another buyer's order shown")
                            }
                            Ok(Reply::Orders(orders)) => assert!(
                                orders.iter().all(|o| o.user_id == hostile),
                                "another buyer's orders listed"
                            ),
                            Ok(Reply::LoggedIn { role, .. }) => {
                                assert_eq!(role, Role::Buyer, "a buyer became {role:?}")
                            }
                            Ok(reply) => assert!(
                                !request.body.is_admin(),
                                "a buyer was allowed {}: {reply:?}",
                                request.body.kind()
                            ),
                            Err(e) if request.body.is_admin() => assert!(
                                matches!(e.code, ErrorCode::Forbidden | ErrorCode::Unauthenticated),
                                "an admin request from a buyer got {e}"
                            ),
                            Err(_) => {}
                        }
                    }

                    // Products: only the hostile buyer's own confirmed orders moved them.
                    let after = admin.products().await.expect("products");
                    assert_eq!(initial.len(), after.len(), "products appeared");
                    for (b, a) in initial.iter().zip(&after) {
                        let bought = purchases.borrow().units.get(&a.id).copied().unwrap_or(0);
                        assert!(a.balances(), "{a:?} does not balance");
                        assert_eq!(
                            (a.name.as_str(), a.initial_stock, a.restocked, a.rules),
                            (b.name.as_str(), b.initial_stock, b.restocked, b.rules),
                            "a buyer changed a product"
                        );
                        assert_eq!(a.stock, b.stock - bought, "stock of {}", a.name);
                        assert_eq!(
                            a.confirmed_qty,
                            b.confirmed_qty + bought,
                            "confirmed units of {}",
                            a.name
                        );
                    }
                    // The bystander's cart and orders are as they were.
                    assert_eq!(bystander.cart().await.expect("cart"), bystander_cart);
                    assert_eq!(
                        bystander.orders(None, 0).await.expect("orders"),
                        bystander_orders
                    );
                });
                Ok(())
            })
            .unwrap_or_else(|failure| panic!("{failure}"));
        assert!(
            !purchases.borrow().orders.is_empty(),
            "no case confirmed an order, so the accounting went untested"
        );
        rt.block_on(server.stop());
    });
}

/// Regression (found by the `request_path` fuzzer, a harness bug then): ids
/// are the client's choice and may repeat. Two pipelined requests sharing
/// an id, one decided by the sequencer and one answered at once, each get
/// their own answer, and a bad frame after them still closes cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_sharing_an_id_are_each_answered_before_the_bad_request_close() {
    let (server, _dir) = start_server().await;
    let admin = server.admin().await;
    standard_products(&admin).await;
    let mut conn = connect(&server).await;
    let login = RequestBody::Login {
        username: "admin".into(),
        password: ADMIN_PASSWORD.into(),
    };
    assert!(call(&mut conn, login).await.result.is_ok());
    let id = 17_501_818_446_348_351_525;
    let requests = vec![
        Request {
            id,
            on_behalf_of: None,
            body: RequestBody::SetWindow {
                product_id: ProductId(1),
                opens_at_ms: None,
                closes_at_ms: Some(2_810_246_039_242_732_390),
            },
        },
        Request {
            id,
            on_behalf_of: None,
            body: RequestBody::CartRemove {
                product_id: ProductId(3),
                qty: 1_210_123_649,
            },
        },
    ];
    let mut bytes: Vec<u8> = requests
        .iter()
        .flat_map(|r| encoded(ClientFrame::Request(r.clone())))
        .collect();
    bytes.extend(encoded(ClientFrame::Hello(Hello {
        protocol_version: u16::MAX,
        client_name: "z\u{2}\0~".into(),
    })));
    let expected = expected(&bytes);
    assert_eq!(expected.requests, requests);
    assert!(expected.closing);
    let frames = exchange(conn, &bytes).await;
    let answered = check_answers(frames, &expected);
    assert_eq!(answered.len(), 2);
    let set_window = answered
        .iter()
        .find(|(r, _)| matches!(r.body, RequestBody::SetWindow { .. }))
        .expect("SetWindow answered");
    assert!(
        matches!(set_window.1, Ok(Reply::Product(_))),
        "{set_window:?}"
    );
    server.stop().await;
}
