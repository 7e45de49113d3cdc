//! Fuzz target `request_path`: the whole request path of a real server.
//!
//! One server per process (the testkit's `TestServer`), on a temp data dir,
//! listening on 127.0.0.1:0, with cheap password hashing, relaxed sync
//! (durability is not what is fuzzed here), an admin, a buyer, a partner,
//! two fuzz-only accounts (the only ones a fuzzed `SetUserDisabled`,
//! `SetPassword` or `EndSessions` names, see [`FUZZ_ONLY_USERS`]) and three
//! products; otherwise the default limits (pay rate limits, login
//! throttle), which the fuzzer exercises too.
//! For each input: open a TCP connection from one of a few fuzzed loopback
//! addresses (127.0.0.2..=127.0.0.5), send a valid `Hello`, optionally
//! resume the session of the buyer, the partner or the admin, then send the
//! input as a sequence of frames (typed requests built with `arbitrary`,
//! length-prefixed raw payloads, raw bytes, extra `Hello`s), half-close, and
//! read everything the server sends until it closes (`testkit::raw::HANG`
//! at most).
//!
//! Oracle: the testkit's (`flashsale_testkit::oracle`, shared with
//! `tests/hostile_input.rs`), derived from the protocol reference, not from
//! server internals: a model `ServerCodec` parses the bytes (only those up
//! to the end of the first bad frame are sent, so the close is never a racy
//! reset); every request it finds before the first bad frame gets exactly
//! one `Response` with that id, either a reply of the kind the request asks
//! for or a typed error that is not `Internal`; a bad frame (undecodable,
//! oversize, a second `Hello`) gets `Closing(BadRequest)` after those
//! answers, and nothing follows it; then the server closes. After every
//! input a fresh connection must still
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
    BuyerRef, ClientCodec, ClientFrame, ErrorCode, Hello, OrderId, OrderLine, ProductId,
    ProductInfo, Reply, Request, RequestBody, Role, SaleRules, StatusFilter,
    DEFAULT_MAX_REPLY_FRAME_LEN,
};
use flashsale_server::{Config, PasswordHashing, SyncMode};
use flashsale_testkit::oracle::{check_answers, expected, logged_in_as_admin, only_orders_changed};
use flashsale_testkit::raw::{self, Conn};
use flashsale_testkit::{TestServer, ADMIN_PASSWORD, ADMIN_USER};
use libfuzzer_sys::fuzz_target;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Mutex, OnceLock};
use tokio_util::codec::Encoder;
use uuid::Uuid;

/// Most frames taken from one input; bounds the work per execution.
const MAX_FRAMES: usize = 48;

const BUYER: (&str, &str) = ("fuzzbuyer", "fuzz-buyer-password");
const PARTNER: (&str, &str) = ("fuzzpartner", "fuzz-partner-password");

/// The only accounts a fuzzed `SetUserDisabled`, `SetPassword` or
/// `EndSessions` names: never the harness's own (the admin, `BUYER`,
/// `PARTNER`), whose sessions the fuzzed connection resumes and the harness
/// needs after every input (a disabled admin, or a changed password, would
/// fail the canary; ending the session the fuzzed connection itself runs on
/// closes it with `Closing(Unauthenticated)`: false crashes, not server
/// bugs). The harness creates the two valid names at start, as a buyer and
/// a partner, and never logs in to them: not admins, so a fuzzed input that
/// sets one's password and logs in to it can no longer make admin requests
/// (and cannot end its own session); created first, so a fuzzed
/// `CreateUser` cannot make one an admin. The last name is not a valid
/// user name (a space), so no `CreateUser` can create it: always `NotFound`.
const FUZZ_ONLY_USERS: [&str; 3] = ["fuzzextra-buyer", "fuzzextra-partner", "fuzz nobody"];
/// The password the harness gives the fuzz-only accounts (it never uses it).
const FUZZ_ONLY_PASSWORD: &str = "fuzz-only-password";

/// The address of the harness's own connections; no fuzzed connection uses it.
const HARNESS_PEER: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// Most tries of a rate-limited harness login (each after the wait it is told).
const MAX_LOGIN_RETRIES: usize = 100;

/// How many loopback addresses fuzzed connections come from (127.0.0.2 on).
const FUZZ_PEERS: u8 = 4;

/// The server shared by every input of this process.
struct Harness {
    runtime: tokio::runtime::Runtime,
    addr: SocketAddr,
    /// Serves for the life of the process (never stopped).
    _server: TestServer,
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
        let server = runtime.block_on(async {
            let server = TestServer::start_with(config).await;
            // Its admin client connects from 127.0.0.1, the harness's peer.
            let admin = server.admin().await;
            let fuzz_only = [
                ((FUZZ_ONLY_USERS[0], FUZZ_ONLY_PASSWORD), Role::Buyer),
                ((FUZZ_ONLY_USERS[1], FUZZ_ONLY_PASSWORD), Role::Partner),
            ];
            let accounts = [(BUYER, Role::Buyer), (PARTNER, Role::Partner)];
            for ((name, password), role) in accounts.into_iter().chain(fuzz_only) {
                admin
                    .create_user(name, password, role)
                    .await
                    .expect("create user");
            }
            for (name, stock) in [("fuzz tea", 5), ("fuzz ticket", 1), ("fuzz socks", 1000)] {
                admin
                    .create_product(name, 100, stock)
                    .await
                    .expect("create product");
            }
            server
        });
        let harness = Harness {
            runtime,
            addr: server.addr,
            _server: server,
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

/// A connection of the harness's own, past the handshake. Not bound to a
/// local address: to 127.0.0.1 it comes from 127.0.0.1 anyway, and an
/// unbound connect may reuse ports still in TIME_WAIT (the harness makes a
/// connection per input, the canary; bound, those would exhaust the
/// ephemeral ports at a few hundred inputs a second).
async fn connect(addr: SocketAddr) -> Conn {
    let conn = raw::connect(addr, "fuzz-harness").await;
    let local = conn.get_ref().local_addr().expect("local addr");
    assert_eq!(local.ip(), HARNESS_PEER, "the harness's peer address");
    conn
}

/// Sends one request and returns its reply.
async fn call(conn: &mut Conn, body: RequestBody) -> Result<Reply, flashsale_protocol::WireError> {
    raw::call(conn, body).await.result
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
        let mut conn = connect(self.addr).await;
        let body = match who {
            Who::Buyer => RequestBody::Login {
                username: BUYER.0.into(),
                password: BUYER.1.into(),
            },
            Who::Admin | Who::Anonymous => RequestBody::Login {
                username: ADMIN_USER.into(),
                password: ADMIN_PASSWORD.into(),
            },
            Who::Partner => {
                // A fresh key: an admin input may have revoked the old one.
                let mut admin_conn = connect(self.addr).await;
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
        // The harness's logins share 127.0.0.1's login rate (20 a second by
        // default); inputs that log its sessions out (`Logout` on a resumed
        // session, a partner's each time with a fresh key) can make it log
        // in faster than that. A rate-limited login waits as told and tries
        // again; anything else is a failure.
        for _ in 0..MAX_LOGIN_RETRIES {
            match call(&mut conn, body.clone()).await {
                Ok(Reply::LoggedIn { token, .. }) => return token,
                Err(e) if e.code == ErrorCode::Overloaded && e.retry_after_ms.is_some() => {
                    let wait = e.retry_after_ms.unwrap_or_default().max(1);
                    tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
                }
                other => panic!("harness login of {who:?} answered {other:?}"),
            }
        }
        panic!("harness login of {who:?} still rate-limited after {MAX_LOGIN_RETRIES} tries");
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
        let mut conn = connect(self.addr).await;
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

/// A user name for the account-control requests: one of
/// [`FUZZ_ONLY_USERS`], never an account of the harness's.
#[derive(Debug, Arbitrary)]
struct FuzzUser(u8);

impl FuzzUser {
    fn name(&self) -> String {
        FUZZ_ONLY_USERS[usize::from(self.0) % FUZZ_ONLY_USERS.len()].to_owned()
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
    ListProductsPage {
        after: Option<FuzzProduct>,
        limit: u32,
    },
    SetUserDisabled {
        user: FuzzUser,
        disabled: bool,
    },
    SetPassword {
        user: FuzzUser,
        password: String,
    },
    EndSessions {
        user: FuzzUser,
    },
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
            Self::ListProductsPage { after, limit } => RequestBody::ListProductsPage {
                after: after.map(|p| p.id()),
                limit,
            },
            Self::SetUserDisabled { user, disabled } => RequestBody::SetUserDisabled {
                username: user.name(),
                disabled,
            },
            Self::SetPassword { user, password } => RequestBody::SetPassword {
                username: user.name(),
                password,
            },
            Self::EndSessions { user } => RequestBody::EndSessions {
                username: user.name(),
            },
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

async fn run(harness: &Harness, input: FuzzInput) {
    let mut conn = raw::connect_from(harness.addr, input.peer(), "fuzz").await;
    if input.who != Who::Anonymous {
        harness.resume(&mut conn, input.who).await;
    }
    let mut bytes = BytesMut::new();
    for frame in input.frames.into_iter().take(MAX_FRAMES) {
        encode(frame, &mut bytes);
    }
    let expected = expected(&bytes);
    let frames = raw::exchange(conn, &bytes[..expected.len]).await;
    let answered = check_answers(frames, &expected);
    let admin_logged_in = input.who == Who::Admin || logged_in_as_admin(&answered);

    let before = harness.products.lock().expect("products lock").clone();
    let after = harness.canary().await;
    if !admin_logged_in {
        // Only the input's own confirmed orders may have changed a product.
        only_orders_changed(&before, &after);
    }
    *harness.products.lock().expect("products lock") = after;
}

fuzz_target!(|input: FuzzInput| {
    let harness = harness();
    harness.runtime.block_on(run(harness, input));
});
