//! Fuzz target `request_path`: the whole request path of a real server.
//!
//! One `flashsale_server::Server` per process, on a temp data dir, listening
//! on 127.0.0.1:0, with cheap password hashing, relaxed sync (durability is
//! not what is fuzzed here), an admin, a buyer, a partner and three products.
//! For each input: open a TCP connection from one of a few fuzzed loopback
//! addresses (127.0.0.2..=127.0.0.5), send a valid `Hello`, optionally
//! resume the session of the buyer, the partner or the admin, then send the
//! input as a sequence of frames (typed requests built with `arbitrary`,
//! length-prefixed raw payloads, raw bytes, extra `Hello`s), half-close, and
//! read everything the server sends until it closes (10 s at most).
//!
//! Oracle (derived from the protocol reference, not from server internals):
//! a model `ServerCodec` parses the bytes (only those up to the end of the
//! first bad frame are sent, so the close is never a racy reset); every
//! request it finds
//! before the first bad frame gets exactly one `Response` with that id,
//! either a reply of the kind the request asks for or a typed error that is
//! not `Internal`; a bad frame (undecodable, oversize, a second `Hello`)
//! gets `Closing(BadRequest)` after those answers, and nothing follows it;
//! then the server closes. After every input a fresh connection must still
//! be served (the canary: `Stats` as admin), every product must balance
//! (`ProductInfo::balances()`), and without an admin session nothing but the
//! input's own confirmed orders may have changed the products.
//!
//! The harness's own connections (its logins, resumes and the canary) come
//! from 127.0.0.1, never used by a fuzzed connection, and it logs in to all
//! three accounts before the first input. The login throttle is keyed by
//! peer address, so fuzzed failed logins are throttled as for anyone (the
//! fuzzer exercises the throttle) but cannot throttle the harness: its peer
//! never fails a login, and having logged in to its accounts first it is
//! exempt from their account-wide backoff. (Before this, fuzzed wrong
//! passwords from the shared 127.0.0.1 blocked the peer, and the harness's
//! next login, after a fuzzed `Logout` ended its session, was answered
//! `Overloaded`: a false crash.)
#![no_main]

use arbitrary::Arbitrary;
use bytes::{BufMut, BytesMut};
use flashsale_protocol::{
    BuyerRef, ClientCodec, ClientFrame, CodecError, ErrorCode, Hello, OrderId, OrderLine,
    ProductId, ProductInfo, Reply, Request, RequestBody, Role, SaleRules, ServerCodec, ServerFrame,
    StatusFilter, DEFAULT_MAX_REPLY_FRAME_LEN, PROTOCOL_VERSION,
};
use flashsale_server::{Config, PasswordHashing, Server, SyncMode};
use futures::{SinkExt, StreamExt};
use libfuzzer_sys::fuzz_target;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio_util::codec::{Decoder, Encoder, Framed};
use uuid::Uuid;

/// Most frames taken from one input; bounds the work per execution.
const MAX_FRAMES: usize = 48;

/// Time the server gets to answer everything and close; far more than it needs.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

const ADMIN: (&str, &str) = ("fuzzadmin", "fuzz-admin-password");
const BUYER: (&str, &str) = ("fuzzbuyer", "fuzz-buyer-password");
const PARTNER: (&str, &str) = ("fuzzpartner", "fuzz-partner-password");

/// The address of the harness's own connections; no fuzzed connection uses it.
const HARNESS_PEER: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// How many loopback addresses fuzzed connections come from (127.0.0.2 on).
const FUZZ_PEERS: u8 = 4;

/// The server shared by every input of this process.
struct Harness {
    runtime: tokio::runtime::Runtime,
    addr: SocketAddr,
    /// Keeps the data dir alive for the life of the process.
    _dir: tempfile::TempDir,
    /// Session tokens, refreshed when an input logged a session out.
    tokens: Mutex<BTreeMap<Who, String>>,
    /// Products as of the end of the previous input.
    products: Mutex<Vec<ProductInfo>>,
}

fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let dir = tempfile::Builder::new()
            .prefix("flashsale-fuzz-")
            .tempdir()
            .expect("temp dir");
        let mut config = Config::new(dir.path());
        config.password_hashing = PasswordHashing::insecure_fast_for_tests();
        config.shards = 2;
        config.sync = SyncMode::Relaxed;
        let addr = runtime.block_on(async {
            let server = Server::open(config).await.expect("open server");
            for ((name, password), role) in
                [ADMIN, BUYER, PARTNER]
                    .into_iter()
                    .zip([Role::Admin, Role::Buyer, Role::Partner])
            {
                server
                    .create_user(name, password, role)
                    .await
                    .expect("create user");
            }
            for (name, stock) in [("fuzz tea", 5), ("fuzz ticket", 1), ("fuzz socks", 1000)] {
                server
                    .create_product(name, 100, stock)
                    .await
                    .expect("create product");
            }
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let addr = listener.local_addr().expect("local addr");
            tokio::spawn(server.serve(listener, std::future::pending()));
            addr
        });
        let harness = Harness {
            runtime,
            addr,
            _dir: dir,
            tokens: Mutex::new(BTreeMap::new()),
            products: Mutex::new(Vec::new()),
        };
        let products = harness.runtime.block_on(async {
            // Log in to every account before any fuzzed login can fail on it.
            for who in [Who::Admin, Who::Buyer, Who::Partner] {
                harness.token(who).await;
            }
            harness.canary().await
        });
        *harness.products.lock().expect("products lock") = products;
        harness
    })
}

type Conn = Framed<TcpStream, ClientCodec>;

/// A connection from `from` past the handshake.
async fn connect(addr: SocketAddr, from: IpAddr) -> Conn {
    let socket = TcpSocket::new_v4().expect("socket");
    // Binding picks the port before the destination is known: let it reuse
    // ports whose earlier connections linger in TIME_WAIT.
    socket.set_reuseaddr(true).expect("SO_REUSEADDR");
    socket
        .bind(SocketAddr::new(from, 0))
        .expect("bind the client side");
    let stream: TcpStream = socket.connect(addr).await.expect("connect");
    let mut conn = Framed::new(
        stream,
        ClientCodec::with_max_frame_len(DEFAULT_MAX_REPLY_FRAME_LEN),
    );
    conn.send(ClientFrame::Hello(Hello {
        protocol_version: PROTOCOL_VERSION,
        client_name: "fuzz".into(),
    }))
    .await
    .expect("send hello");
    match next(&mut conn).await {
        Some(ServerFrame::Welcome(_)) => conn,
        other => panic!("Hello answered with {other:?}"),
    }
}

async fn next(conn: &mut Conn) -> Option<ServerFrame> {
    match tokio::time::timeout(ANSWER_TIMEOUT, conn.next()).await {
        Err(_) => panic!("the server did not answer within {ANSWER_TIMEOUT:?}"),
        Ok(None) => None,
        Ok(Some(Ok(frame))) => Some(frame),
        Ok(Some(Err(e))) => panic!("the server sent an undecodable frame: {e}"),
    }
}

/// Sends one request and returns its reply (skipping pushes).
async fn call(conn: &mut Conn, body: RequestBody) -> Result<Reply, flashsale_protocol::WireError> {
    conn.send(ClientFrame::Request(Request {
        id: 0,
        on_behalf_of: None,
        body,
    }))
    .await
    .expect("send request");
    loop {
        match next(conn).await {
            Some(ServerFrame::Response(response)) => return response.result,
            Some(ServerFrame::Push(_)) => continue,
            other => panic!("expected a response, got {other:?}"),
        }
    }
}

/// Who the fuzzed connection is logged in as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Arbitrary)]
enum Who {
    Anonymous,
    Buyer,
    Partner,
    Admin,
}

impl Harness {
    /// A fresh session token for `who` (never `Anonymous`).
    async fn login(&self, who: Who) -> String {
        let mut conn = connect(self.addr, HARNESS_PEER).await;
        let body = match who {
            Who::Buyer => RequestBody::Login {
                username: BUYER.0.into(),
                password: BUYER.1.into(),
            },
            Who::Admin | Who::Anonymous => RequestBody::Login {
                username: ADMIN.0.into(),
                password: ADMIN.1.into(),
            },
            Who::Partner => {
                // A fresh key: an admin input may have revoked the old one.
                let mut admin_conn = connect(self.addr, HARNESS_PEER).await;
                self.resume(&mut admin_conn, Who::Admin).await;
                let key = match call(
                    &mut admin_conn,
                    RequestBody::CreateApiKey {
                        partner: PARTNER.0.into(),
                    },
                )
                .await
                {
                    Ok(Reply::ApiKeyCreated { key, .. }) => key,
                    other => panic!("CreateApiKey answered {other:?}"),
                };
                RequestBody::LoginApiKey { key }
            }
        };
        match call(&mut conn, body).await {
            Ok(Reply::LoggedIn { token, .. }) => token,
            other => panic!("harness login of {who:?} answered {other:?}"),
        }
    }

    /// The cached token of `who`, logging in when there is none.
    async fn token(&self, who: Who) -> String {
        let cached = self.tokens.lock().expect("tokens lock").get(&who).cloned();
        if let Some(token) = cached {
            return token;
        }
        let token = Box::pin(self.login(who)).await;
        self.tokens
            .lock()
            .expect("tokens lock")
            .insert(who, token.clone());
        token
    }

    /// Resumes `who` on `conn`; a token an earlier input ended is replaced.
    async fn resume(&self, conn: &mut Conn, who: Who) {
        for _ in 0..2 {
            let token = self.token(who).await;
            match call(conn, RequestBody::Resume { token }).await {
                Ok(Reply::LoggedIn { .. }) => return,
                Err(e) if e.code == ErrorCode::Unauthenticated => {
                    self.tokens.lock().expect("tokens lock").remove(&who);
                }
                other => panic!("Resume answered {other:?}"),
            }
        }
        panic!("{who:?} cannot resume a fresh session");
    }

    /// The canary: a new connection is served, and every product balances.
    async fn canary(&self) -> Vec<ProductInfo> {
        let mut conn = connect(self.addr, HARNESS_PEER).await;
        self.resume(&mut conn, Who::Admin).await;
        let stats = match call(&mut conn, RequestBody::Stats).await {
            Ok(Reply::Stats(stats)) => stats,
            other => panic!("canary Stats answered {other:?}"),
        };
        let products: Vec<ProductInfo> = stats.products.into_iter().map(|s| s.product).collect();
        for product in &products {
            assert!(product.balances(), "product does not balance: {product:?}");
        }
        products
    }
}

/// A product id: mostly one of the few that exist, sometimes any.
#[derive(Debug, Arbitrary)]
enum FuzzProduct {
    Known(u8),
    Any(u64),
}

impl FuzzProduct {
    fn id(&self) -> ProductId {
        match self {
            Self::Known(n) => ProductId(u64::from(n % 5)),
            Self::Any(n) => ProductId(*n),
        }
    }
}

/// An order id: mostly a small one (which likely exists), sometimes any.
#[derive(Debug, Arbitrary)]
enum FuzzOrder {
    Known(u8),
    Any(u64),
}

impl FuzzOrder {
    fn id(&self) -> OrderId {
        match self {
            Self::Known(n) => OrderId(u64::from(*n)),
            Self::Any(n) => OrderId(*n),
        }
    }
}

/// An idempotency key: one of a few (so retries collide), or any.
#[derive(Debug, Arbitrary)]
enum FuzzKey {
    Few(u8),
    Any(u128),
}

impl FuzzKey {
    fn key(&self) -> Uuid {
        match self {
            Self::Few(n) => Uuid::from_u128(u128::from(n % 8)),
            Self::Any(n) => Uuid::from_u128(*n),
        }
    }
}

#[derive(Debug, Arbitrary)]
struct FuzzLine {
    product: FuzzProduct,
    qty: u32,
}

#[derive(Debug, Arbitrary)]
enum FuzzRole {
    Buyer,
    Partner,
    Admin,
}

#[derive(Debug, Arbitrary)]
enum FuzzStatus {
    Pending,
    Confirmed,
    Rejected,
    Cancelled,
}

/// Mirrors `RequestBody` with fuzz-friendly fields.
#[derive(Debug, Arbitrary)]
enum FuzzBody {
    Login {
        username: String,
        password: String,
    },
    LoginApiKey {
        key: String,
    },
    Resume {
        token: String,
    },
    Logout,
    ListProducts,
    GetProduct {
        id: FuzzProduct,
    },
    CartAdd {
        product: FuzzProduct,
        qty: u32,
    },
    CartRemove {
        product: FuzzProduct,
        qty: u32,
    },
    CartView,
    CartClear,
    Pay {
        key: FuzzKey,
    },
    Buy {
        items: Vec<FuzzLine>,
        key: FuzzKey,
    },
    GetOrder {
        id: FuzzOrder,
    },
    ListOrders {
        after: Option<FuzzOrder>,
        limit: u32,
    },
    CreateProduct {
        name: String,
        price_cents: u64,
        stock: u64,
        max_per_buyer: Option<u32>,
        opens_at_ms: Option<u64>,
        closes_at_ms: Option<u64>,
    },
    Restock {
        product: FuzzProduct,
        qty: u64,
    },
    CreateUser {
        username: String,
        password: String,
        role: FuzzRole,
    },
    CancelOrder {
        id: FuzzOrder,
    },
    Stats,
    CreateApiKey {
        partner: String,
    },
    RevokeApiKey {
        key_id: String,
    },
    SetStock {
        product: FuzzProduct,
        stock: u64,
    },
    SetLimit {
        product: FuzzProduct,
        max_per_buyer: Option<u32>,
    },
    SetWindow {
        product: FuzzProduct,
        opens_at_ms: Option<u64>,
        closes_at_ms: Option<u64>,
    },
    ListUsers {
        after: Option<String>,
        limit: u32,
    },
    QueryOrders {
        after: Option<FuzzOrder>,
        limit: u32,
        product: Option<FuzzProduct>,
        status: Option<FuzzStatus>,
    },
    Ping,
}

impl FuzzBody {
    fn body(self) -> RequestBody {
        match self {
            Self::Login { username, password } => RequestBody::Login { username, password },
            Self::LoginApiKey { key } => RequestBody::LoginApiKey { key },
            Self::Resume { token } => RequestBody::Resume { token },
            Self::Logout => RequestBody::Logout,
            Self::ListProducts => RequestBody::ListProducts,
            Self::GetProduct { id } => RequestBody::GetProduct { id: id.id() },
            Self::CartAdd { product, qty } => RequestBody::CartAdd {
                product_id: product.id(),
                qty,
            },
            Self::CartRemove { product, qty } => RequestBody::CartRemove {
                product_id: product.id(),
                qty,
            },
            Self::CartView => RequestBody::CartView,
            Self::CartClear => RequestBody::CartClear,
            Self::Pay { key } => RequestBody::Pay {
                idempotency_key: key.key(),
            },
            Self::Buy { items, key } => RequestBody::Buy {
                items: items
                    .into_iter()
                    .map(|l| OrderLine {
                        product_id: l.product.id(),
                        qty: l.qty,
                    })
                    .collect(),
                idempotency_key: key.key(),
            },
            Self::GetOrder { id } => RequestBody::GetOrder { id: id.id() },
            Self::ListOrders { after, limit } => RequestBody::ListOrders {
                after: after.map(|o| o.id()),
                limit,
            },
            Self::CreateProduct {
                name,
                price_cents,
                stock,
                max_per_buyer,
                opens_at_ms,
                closes_at_ms,
            } => RequestBody::CreateProduct {
                name,
                price_cents,
                stock,
                rules: SaleRules {
                    max_per_buyer,
                    opens_at_ms,
                    closes_at_ms,
                },
            },
            Self::Restock { product, qty } => RequestBody::Restock {
                product_id: product.id(),
                qty,
            },
            Self::CreateUser {
                username,
                password,
                role,
            } => RequestBody::CreateUser {
                username,
                password,
                role: match role {
                    FuzzRole::Buyer => Role::Buyer,
                    FuzzRole::Partner => Role::Partner,
                    FuzzRole::Admin => Role::Admin,
                },
            },
            Self::CancelOrder { id } => RequestBody::CancelOrder { id: id.id() },
            Self::Stats => RequestBody::Stats,
            Self::CreateApiKey { partner } => RequestBody::CreateApiKey { partner },
            Self::RevokeApiKey { key_id } => RequestBody::RevokeApiKey { key_id },
            Self::SetStock { product, stock } => RequestBody::SetStock {
                product_id: product.id(),
                stock,
            },
            Self::SetLimit {
                product,
                max_per_buyer,
            } => RequestBody::SetLimit {
                product_id: product.id(),
                max_per_buyer,
            },
            Self::SetWindow {
                product,
                opens_at_ms,
                closes_at_ms,
            } => RequestBody::SetWindow {
                product_id: product.id(),
                opens_at_ms,
                closes_at_ms,
            },
            Self::ListUsers { after, limit } => RequestBody::ListUsers { after, limit },
            Self::QueryOrders {
                after,
                limit,
                product,
                status,
            } => RequestBody::QueryOrders {
                after: after.map(|o| o.id()),
                limit,
                product_id: product.map(|p| p.id()),
                status: status.map(|s| match s {
                    FuzzStatus::Pending => StatusFilter::Pending,
                    FuzzStatus::Confirmed => StatusFilter::Confirmed,
                    FuzzStatus::Rejected => StatusFilter::Rejected,
                    FuzzStatus::Cancelled => StatusFilter::Cancelled,
                }),
            },
            Self::Ping => RequestBody::Ping,
        }
    }
}

/// A partner's buyer reference: one of a few, or any text.
#[derive(Debug, Arbitrary)]
enum FuzzRef {
    Few(u8),
    Any(String),
}

/// One thing written to the connection after the handshake.
#[derive(Debug, Arbitrary)]
enum FuzzFrame {
    /// A well-formed request.
    Request {
        id: u64,
        on_behalf_of: Option<FuzzRef>,
        body: FuzzBody,
    },
    /// A correctly length-prefixed frame with an arbitrary payload.
    Payload(Vec<u8>),
    /// Bytes written as they are (may break the framing).
    Bytes(Vec<u8>),
    /// A length prefix with no payload behind it.
    Length(u32),
    /// A second `Hello`.
    Hello {
        protocol_version: u16,
        client_name: String,
    },
}

#[derive(Debug, Arbitrary)]
struct FuzzInput {
    /// Which fuzzed peer address the connection comes from.
    peer: u8,
    who: Who,
    frames: Vec<FuzzFrame>,
}

impl FuzzInput {
    /// 127.0.0.2 ..= 127.0.0.(1 + FUZZ_PEERS): never the harness's address.
    fn peer(&self) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + self.peer % FUZZ_PEERS))
    }
}

/// Appends `frame` to `out` as the wire carries it.
fn encode(frame: FuzzFrame, out: &mut BytesMut) {
    let mut codec = ClientCodec::with_max_frame_len(DEFAULT_MAX_REPLY_FRAME_LEN);
    let typed = match frame {
        FuzzFrame::Request {
            id,
            on_behalf_of,
            body,
        } => ClientFrame::Request(Request {
            id,
            on_behalf_of: on_behalf_of.map(|r| match r {
                FuzzRef::Few(n) => BuyerRef(format!("fuzz-buyer-{}", n % 4)),
                FuzzRef::Any(text) => BuyerRef(text),
            }),
            body: body.body(),
        }),
        FuzzFrame::Hello {
            protocol_version,
            client_name,
        } => ClientFrame::Hello(Hello {
            protocol_version,
            client_name,
        }),
        FuzzFrame::Payload(payload) => {
            out.put_u32(u32::try_from(payload.len()).unwrap_or(u32::MAX));
            out.put_slice(&payload);
            return;
        }
        FuzzFrame::Bytes(bytes) => return out.put_slice(&bytes),
        FuzzFrame::Length(len) => return out.put_u32(len),
    };
    codec.encode(typed, out).expect("a fuzz frame encodes");
}

/// What the server must answer, worked out from the bytes alone.
#[derive(Debug, Default)]
struct Expected {
    /// The requests the server reads, in order: (id, body).
    requests: Vec<(u64, RequestBody)>,
    /// True when a bad frame ends the connection with `Closing(BadRequest)`.
    closing: bool,
    /// Bytes up to the end of the bad frame. Only these are sent: closing a
    /// socket with unread bytes resets the connection, which may destroy
    /// the `Closing` frame in flight and make the check racy.
    len: usize,
}

/// Parses `bytes` as the server does, with a model codec.
fn expected(bytes: &[u8]) -> Expected {
    let mut codec = ServerCodec::new();
    let mut buf = BytesMut::from(bytes);
    let mut expected = Expected::default();
    loop {
        let decoded = codec.decode(&mut buf);
        expected.len = bytes.len() - buf.len();
        match decoded {
            Ok(Some(ClientFrame::Request(request))) => {
                expected.requests.push((request.id, request.body));
            }
            Ok(Some(ClientFrame::Hello(_))) | Err(CodecError::Malformed(_)) => {
                expected.closing = true;
                return expected;
            }
            // The length prefix is refused before it is consumed.
            Err(CodecError::FrameTooLarge { .. }) => {
                expected.closing = true;
                expected.len += 4;
                return expected;
            }
            Err(e) => panic!("the model codec failed: {e}"),
            Ok(None) => {
                expected.len = bytes.len();
                return expected;
            }
        }
    }
}

async fn run(harness: &Harness, input: FuzzInput) {
    let mut conn = connect(harness.addr, input.peer()).await;
    if input.who != Who::Anonymous {
        harness.resume(&mut conn, input.who).await;
    }
    let mut bytes = BytesMut::new();
    for frame in input.frames.into_iter().take(MAX_FRAMES) {
        encode(frame, &mut bytes);
    }
    let mut expected = expected(&bytes);
    let sent = expected.len;

    // Write everything and half-close while reading, so neither side can stall the other.
    let (mut reader, mut writer) = {
        let parts = conn.into_parts();
        let (read, write) = parts.io.into_split();
        let mut reader = tokio_util::codec::FramedRead::new(read, parts.codec);
        // Keep whatever the handshake read ahead (a push, at most).
        reader.read_buffer_mut().extend_from_slice(&parts.read_buf);
        (reader, write)
    };
    let write = async move {
        // Nothing follows a bad frame, so the server reads every byte; a
        // failed write would show in the checks below.
        let _ = writer.write_all(&bytes[..sent]).await;
        let _ = writer.shutdown().await;
        writer
    };
    let read = async {
        let mut frames = Vec::new();
        loop {
            match tokio::time::timeout(ANSWER_TIMEOUT, reader.next()).await {
                Err(_) => panic!("no answer or close within {ANSWER_TIMEOUT:?}; got {frames:?}"),
                Ok(None) => return frames,
                Ok(Some(Ok(frame))) => frames.push(frame),
                // A reset after `Closing` (unread bytes of ours were discarded) is an end too.
                Ok(Some(Err(CodecError::Io(_)))) => return frames,
                Ok(Some(Err(e))) => panic!("the server sent an undecodable frame: {e}"),
            }
        }
    };
    let (_writer, frames) = tokio::join!(write, read);

    let mut closed_with = None;
    let mut responses = Vec::new();
    for frame in frames {
        assert!(closed_with.is_none(), "a frame after Closing: {frame:?}");
        match frame {
            ServerFrame::Response(response) => responses.push(response),
            ServerFrame::Push(_) => {}
            ServerFrame::Closing(error) => closed_with = Some(error),
            ServerFrame::Welcome(_) => panic!("a second Welcome"),
        }
    }
    // Ids may repeat. A reply's kind says which request it answers, so pair
    // the replies first and the errors (which fit any request) last.
    responses.sort_by_key(|response| response.result.is_err());
    let mut admin_logged_in = input.who == Who::Admin;
    for response in responses {
        let position = expected
            .requests
            .iter()
            .position(|(id, body)| {
                *id == response.id
                    && match &response.result {
                        Ok(reply) => reply.answers(body),
                        Err(_) => true,
                    }
            })
            .unwrap_or_else(|| {
                panic!("an unexpected response: {response:?}; expected {expected:?}")
            });
        let (_, body) = expected.requests.remove(position);
        match response.result {
            Err(e) => assert_ne!(e.code, ErrorCode::Internal, "{} failed: {e}", body.kind()),
            Ok(Reply::LoggedIn {
                role: Role::Admin, ..
            }) => admin_logged_in = true,
            Ok(_) => {}
        }
    }
    match (&closed_with, expected.closing) {
        (Some(error), true) => assert_eq!(error.code, ErrorCode::BadRequest, "{error}"),
        (closing, expected) => assert!(
            closing.is_none() && !expected,
            "Closing {closing:?}, expected one: {expected}"
        ),
    }
    assert!(
        expected.requests.is_empty(),
        "requests never answered: {:?}",
        expected.requests
    );

    let before = harness.products.lock().expect("products lock").clone();
    let after = harness.canary().await;
    if !admin_logged_in {
        // Only the input's own confirmed orders may have changed a product.
        assert_eq!(
            before.len(),
            after.len(),
            "products appeared without an admin"
        );
        for (b, a) in before.iter().zip(&after) {
            assert_eq!(
                (
                    a.id,
                    &a.name,
                    a.price_cents,
                    a.initial_stock,
                    a.restocked,
                    a.rules
                ),
                (
                    b.id,
                    &b.name,
                    b.price_cents,
                    b.initial_stock,
                    b.restocked,
                    b.rules
                ),
                "a product changed without an admin"
            );
            assert!(
                a.confirmed_qty >= b.confirmed_qty,
                "confirmed units went down without an admin"
            );
            assert_eq!(
                a.stock + a.confirmed_qty,
                b.stock + b.confirmed_qty,
                "stock moved without an order"
            );
        }
    }
    *harness.products.lock().expect("products lock") = after;
}

fuzz_target!(|input: FuzzInput| {
    let harness = harness();
    harness.runtime.block_on(run(harness, input));
});
