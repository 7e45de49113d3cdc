//! The messages of protocol version 1.
//!
//! Frame order on a connection:
//! 1. client → [`ClientFrame::Hello`]; server → [`ServerFrame::Welcome`] (or
//!    [`ServerFrame::Closing`], with `UnsupportedVersion` for another
//!    version, then close);
//! 2. any number of [`ClientFrame::Request`]s, pipelined; the server answers
//!    each with one [`ServerFrame::Response`] carrying the same `id`, in any
//!    order, and may send [`ServerFrame::Push`] at any time after a login.
//!
//! Structs are encoded as their fields in declaration order, with nothing
//! between them. Every enum here is append-only: a variant's position is
//! its wire tag. The README's protocol reference gives the byte-level
//! encoding with examples.

use crate::error::{ErrorCode, WireError};
use crate::types::{BuyerRef, OrderId, OrderLine, ProductId, UserId};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A frame sent by a client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientFrame {
    /// First frame of every connection.
    Hello(Hello),
    /// A request; many may be in flight on one connection.
    Request(Request),
}

/// A frame sent by the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServerFrame {
    /// Answer to [`Hello`].
    Welcome(Welcome),
    /// Answer to one [`Request`].
    Response(Response),
    /// News the client did not ask for: an order placed by another session
    /// of the buyer, or a later change of an order (see [`Push`]).
    Push(Push),
    /// Why the server closes the connection (bad version, undecodable or
    /// oversize frame, a handshake, idle or login timeout, too many
    /// connections, the session ended elsewhere, shutdown); the server
    /// closes the connection after sending it.
    Closing(WireError),
}

/// The client's opening frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Must equal the server's [`crate::PROTOCOL_VERSION`].
    pub protocol_version: u16,
    /// Free text naming the client software, for the server's logs; at
    /// most 256 bytes ([`crate::MAX_TEXT_LEN`]), no control characters.
    pub client_name: String,
}

/// The server's answer to [`Hello`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// The protocol version the server speaks (equal to the client's).
    pub protocol_version: u16,
    /// The server's software version, for diagnostics.
    pub server_version: String,
}

/// One request from a client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// Chosen by the client; echoed in the matching [`Response`]. Need not
    /// be unique: two requests with the same id each get an answer.
    pub id: u64,
    /// Only partner sessions may set this: the partner's own reference of the
    /// buyer the request acts for (1 to 128 bytes, no control characters).
    /// The buyer is created by its first `CartAdd` or `Buy` that passes its
    /// checks (rate limits, lines, stock; at most `--new-buyers-per-partner`
    /// a second and `--max-buyers-per-partner` in all) and belongs to that
    /// partner alone; requests for a reference never used create nothing.
    /// Everyone else sends `None`.
    pub on_behalf_of: Option<BuyerRef>,
    /// What to do.
    pub body: RequestBody,
}

/// What a request asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RequestBody {
    /// Log in with a user name and password; answered with [`Reply::LoggedIn`].
    Login {
        /// The account name.
        username: String,
        /// The account password; never logged.
        password: String,
    },
    /// Log in a partner service account with its API key.
    LoginApiKey {
        /// The key shown once when the partner account was created.
        key: String,
    },
    /// Attach an existing session (from [`Reply::LoggedIn`]) to this connection.
    Resume {
        /// The session token.
        token: String,
    },
    /// End the session: the token stops working everywhere, and the
    /// session's other live connections are closed.
    Logout,
    /// Products with their live stock: the first page only (the server's
    /// page size, 1 000 by default); `ListProductsPage` reads the rest.
    ListProducts,
    /// One product with its live stock.
    GetProduct {
        /// The product.
        id: ProductId,
    },
    /// Add units of a product to the cart. Checks (does not reserve) that the
    /// stock available now covers the cart's new quantity.
    CartAdd {
        /// The product.
        product_id: ProductId,
        /// Units to add, at least 1; the line's total is at most
        /// [`crate::MAX_LINE_QTY`].
        qty: u32,
    },
    /// Remove units of a product from the cart (removing more than present empties the line).
    CartRemove {
        /// The product.
        product_id: ProductId,
        /// Units to remove, at least 1.
        qty: u32,
    },
    /// The cart's content.
    CartView,
    /// Empty the cart.
    CartClear,
    /// Check out the cart as one all-or-nothing order.
    Pay {
        /// One key per pay intent: a retry with the same key returns the same
        /// order. Keys are scoped per buyer.
        idempotency_key: Uuid,
    },
    /// Express checkout: order the given lines without touching the cart.
    Buy {
        /// The lines to order: 1 to [`crate::MAX_ORDER_LINES`], each
        /// product at most once.
        #[serde(deserialize_with = "crate::bounded::order_lines")]
        items: Vec<OrderLine>,
        /// One key per pay intent: a retry with the same key returns the same
        /// order. Keys are scoped per buyer.
        idempotency_key: Uuid,
    },
    /// One of the caller's orders.
    GetOrder {
        /// The order.
        id: OrderId,
    },
    /// The caller's orders in id order, starting after `after`.
    ListOrders {
        /// Only orders with a larger id; `None` starts from the first.
        after: Option<OrderId>,
        /// Most orders to return; 0 (or more than the server's maximum page
        /// size) means the server's maximum.
        limit: u32,
    },
    /// Admin: create a product with its initial stock.
    CreateProduct {
        /// Display name, unique: 1 to 256 bytes, not only whitespace, no
        /// control characters.
        name: String,
        /// Unit price in cents.
        price_cents: u64,
        /// Initial stock, at most 2^48.
        stock: u64,
        /// Purchase limit and sale window; [`SaleRules::default`] for none.
        rules: SaleRules,
    },
    /// Admin: add stock to a product; ordered with the product's orders.
    Restock {
        /// The product.
        product_id: ProductId,
        /// Units to add, at least 1; the stock may not exceed 2^48.
        qty: u64,
    },
    /// Admin: create a user account with a password.
    CreateUser {
        /// The account name, unique: 1 to 64 characters of `a-z A-Z 0-9 - _ . @`.
        username: String,
        /// Its password, 8 to 256 bytes; never logged.
        password: String,
        /// Its role.
        role: Role,
    },
    /// Admin: cancel a confirmed order and return its stock; the buyer's
    /// sessions (for a partner's buyer: the partner's) are pushed the change.
    /// Cancelling a cancelled order returns it unchanged; a pending or
    /// rejected order is `BadRequest`.
    CancelOrder {
        /// The order.
        id: OrderId,
    },
    /// Admin: server-wide counters and per-product stock.
    Stats,
    /// Admin: issue an API key for a partner account. The key is shown once,
    /// in the reply; the server keeps only its hash.
    CreateApiKey {
        /// The partner account's user name (`NotFound` for an unknown
        /// account, `BadRequest` for one that is not a partner).
        partner: String,
    },
    /// Admin: revoke an API key; it no longer logs in or resumes sessions,
    /// and its live sessions end. Revoking a revoked key answers the same.
    RevokeApiKey {
        /// The key's id (the part after `fsk_`, before the second `_`).
        key_id: String,
    },
    /// Admin: set a product's stock to an exact figure, in arrival order with
    /// its orders. The difference counts in [`ProductInfo::restocked`].
    SetStock {
        /// The product.
        product_id: ProductId,
        /// The new stock, at most 2^48.
        stock: u64,
    },
    /// Admin: set or remove a product's per-buyer purchase limit.
    SetLimit {
        /// The product.
        product_id: ProductId,
        /// Most units one buyer may hold in confirmed orders, at least 1;
        /// `None` for no limit.
        max_per_buyer: Option<u32>,
    },
    /// Admin: set a product's sale window (either end may be open).
    SetWindow {
        /// The product.
        product_id: ProductId,
        /// Orders are refused with `SaleNotOpen` before this time (ms since the epoch).
        opens_at_ms: Option<u64>,
        /// Orders are refused with `SaleNotOpen` from this time on (ms since the epoch).
        closes_at_ms: Option<u64>,
    },
    /// Admin: user accounts in name order, starting after `after`.
    ListUsers {
        /// Only names sorting after this one; `None` starts from the first.
        after: Option<String>,
        /// Most users to return; 0 (or more than the server's maximum page
        /// size) means the server's maximum.
        limit: u32,
    },
    /// Admin: every buyer's orders in id order, optionally filtered.
    QueryOrders {
        /// Only orders with a larger id; `None` starts from the first.
        after: Option<OrderId>,
        /// Most orders to return; 0 (or more than the server's maximum page
        /// size) means the server's maximum.
        limit: u32,
        /// Only orders with a line of this product.
        product_id: Option<ProductId>,
        /// Only orders in this state.
        status: Option<StatusFilter>,
    },
    /// Keep an idle connection open (the server closes connections silent
    /// for longer than its idle timeout); answered `Pong`, also without a session.
    Ping,
    /// Products in id order, starting after `after`; answered with
    /// [`Reply::ProductPage`]. (`ListProducts` returns only the first page.)
    ListProductsPage {
        /// Only products with a larger id; `None` starts from the first.
        after: Option<ProductId>,
        /// Most products to return; 0 (or more than the server's maximum
        /// page size) means the server's maximum.
        limit: u32,
    },
    /// Admin: disable or enable an account. A disabled account cannot log
    /// in, resume a session or be acted for, and its sessions end at once
    /// (their connections are closed). Answered with [`Reply::User`].
    SetUserDisabled {
        /// The account's user name.
        username: String,
        /// `true` to disable, `false` to enable again.
        disabled: bool,
    },
    /// Admin: set a new password for an account (8 to 256 bytes); every
    /// session of the account ends. Answered with [`Reply::User`].
    SetPassword {
        /// The account's user name.
        username: String,
        /// The new password; never logged.
        password: String,
    },
    /// Admin: end every session of an account at once (their connections
    /// are closed; the tokens stop working). Answered with
    /// [`Reply::SessionsEnded`].
    EndSessions {
        /// The account's user name.
        username: String,
    },
    /// Admin: start an online backup of the data dir, streamed on this
    /// connection while the sale goes on; answered with
    /// [`Reply::BackupStarted`]. Everything answered before this answer is
    /// in the backup. At most `--max-backups` (1) run at once server-wide
    /// (beyond: `Overloaded`); the backup ends with its last chunk, or when
    /// the connection closes or its session changes.
    BackupBegin,
    /// Admin: the next chunk of the backup this connection began; answered
    /// with [`Reply::BackupChunk`]. Send the next one after its answer.
    BackupNext {
        /// The id from [`Reply::BackupStarted`] (`NotFound` for another).
        backup_id: u64,
    },
    /// Admin: the cluster as its leader sees it; answered with
    /// [`Reply::ClusterStatus`] (`None` on a single server).
    ClusterStatus,
    /// Check out the cart as a **hold**: the stock is reserved in arrival
    /// order exactly as `Pay` confirms it (sold out, limits and windows
    /// apply), and the order is `Held { expires_at_ms }` until `PayHold`,
    /// `ReleaseHold` or its deadline. Answered with [`Reply::Accepted`].
    HoldCart {
        /// One key per intent, as for `Pay`.
        idempotency_key: Uuid,
        /// How long to hold, in ms: at most the product's hold time (the
        /// shortest of the order's products); `None` for that.
        hold_ms: Option<u64>,
    },
    /// Express hold of `items` (the cart is untouched), as `HoldCart`.
    HoldItems {
        /// The lines, as for `Buy`.
        #[serde(deserialize_with = "crate::bounded::order_lines")]
        items: Vec<OrderLine>,
        /// One key per intent, as for `Buy`.
        idempotency_key: Uuid,
        /// How long to hold, in ms, as for `HoldCart`.
        hold_ms: Option<u64>,
    },
    /// Pay a held order: it becomes `Confirmed` if it is still held.
    /// Idempotent: the same reference again answers the same order; another
    /// reference for a paid order is `PaymentRefMismatch`; after the
    /// deadline, `HoldExpired` (the units went back). Answered with
    /// [`Reply::Order`].
    PayHold {
        /// The held order (the caller's, or a partner's buyer's).
        order_id: OrderId,
        /// The payment gateway's reference: 1 to
        /// [`crate::MAX_PAYMENT_REF_LEN`] bytes, no control characters.
        payment_ref: String,
    },
    /// Release a held order early: its units go back to stock in arrival
    /// order and it becomes `Released`. The buyer, its partner or an admin
    /// may; releasing a released or expired hold answers it as it stands.
    /// Answered with [`Reply::Order`].
    ReleaseHold {
        /// The held order.
        order_id: OrderId,
    },
    /// Admin: set a product's hold time (`None`: the server's default),
    /// in arrival order with its orders; 1 000 ms to
    /// [`crate::MAX_HOLD_MS`]. Answered with [`Reply::Product`].
    SetHoldTime {
        /// The product.
        product_id: ProductId,
        /// Its hold time in ms.
        hold_ms: Option<u64>,
    },
}

impl RequestBody {
    /// Short name of the request kind, for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Login { .. } => "login",
            Self::LoginApiKey { .. } => "login_api_key",
            Self::Resume { .. } => "resume",
            Self::Logout => "logout",
            Self::ListProducts => "list_products",
            Self::GetProduct { .. } => "get_product",
            Self::CartAdd { .. } => "cart_add",
            Self::CartRemove { .. } => "cart_remove",
            Self::CartView => "cart_view",
            Self::CartClear => "cart_clear",
            Self::Pay { .. } => "pay",
            Self::Buy { .. } => "buy",
            Self::GetOrder { .. } => "get_order",
            Self::ListOrders { .. } => "list_orders",
            Self::CreateProduct { .. } => "create_product",
            Self::Restock { .. } => "restock",
            Self::CreateUser { .. } => "create_user",
            Self::CancelOrder { .. } => "cancel_order",
            Self::Stats => "stats",
            Self::CreateApiKey { .. } => "create_api_key",
            Self::RevokeApiKey { .. } => "revoke_api_key",
            Self::SetStock { .. } => "set_stock",
            Self::SetLimit { .. } => "set_limit",
            Self::SetWindow { .. } => "set_window",
            Self::ListUsers { .. } => "list_users",
            Self::QueryOrders { .. } => "query_orders",
            Self::Ping => "ping",
            Self::ListProductsPage { .. } => "list_products_page",
            Self::SetUserDisabled { .. } => "set_user_disabled",
            Self::SetPassword { .. } => "set_password",
            Self::EndSessions { .. } => "end_sessions",
            Self::BackupBegin => "backup_begin",
            Self::BackupNext { .. } => "backup_next",
            Self::ClusterStatus => "cluster_status",
            Self::HoldCart { .. } => "hold_cart",
            Self::HoldItems { .. } => "hold_items",
            Self::PayHold { .. } => "pay_hold",
            Self::ReleaseHold { .. } => "release_hold",
            Self::SetHoldTime { .. } => "set_hold_time",
        }
    }

    /// True for requests only an admin session may make.
    pub fn is_admin(&self) -> bool {
        matches!(
            self,
            Self::CreateProduct { .. }
                | Self::Restock { .. }
                | Self::CreateUser { .. }
                | Self::CancelOrder { .. }
                | Self::Stats
                | Self::CreateApiKey { .. }
                | Self::RevokeApiKey { .. }
                | Self::SetStock { .. }
                | Self::SetLimit { .. }
                | Self::SetWindow { .. }
                | Self::ListUsers { .. }
                | Self::QueryOrders { .. }
                | Self::SetUserDisabled { .. }
                | Self::SetPassword { .. }
                | Self::EndSessions { .. }
                | Self::BackupBegin
                | Self::BackupNext { .. }
                | Self::ClusterStatus
                | Self::SetHoldTime { .. }
        )
    }
}

/// Which orders [`RequestBody::QueryOrders`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum StatusFilter {
    /// Accepted, not decided yet.
    Pending,
    /// Confirmed (and not cancelled).
    Confirmed,
    /// Rejected for any reason.
    Rejected,
    /// Cancelled by an operator.
    Cancelled,
    /// Held, not paid yet.
    Held,
    /// Held and not paid by the deadline.
    Expired,
    /// Held and released early.
    Released,
}

impl StatusFilter {
    /// True when `status` is in this state.
    pub fn matches(self, status: OrderStatus) -> bool {
        matches!(
            (self, status),
            (Self::Pending, OrderStatus::Pending)
                | (Self::Confirmed, OrderStatus::Confirmed)
                | (Self::Rejected, OrderStatus::Rejected { .. })
                | (Self::Cancelled, OrderStatus::Cancelled)
                | (Self::Held, OrderStatus::Held { .. })
                | (Self::Expired, OrderStatus::Expired)
                | (Self::Released, OrderStatus::Released)
        )
    }
}

/// The server's answer to one [`Request`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// The `id` of the request answered.
    pub id: u64,
    /// The reply, or why the request failed.
    pub result: Result<Reply, WireError>,
}

/// A successful answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// Answer to `Login`, `LoginApiKey` and `Resume`.
    LoggedIn {
        /// The account.
        user_id: UserId,
        /// Its name.
        username: String,
        /// Its role.
        role: Role,
        /// Session token for `Resume` on another connection (64 hex
        /// characters); keep it secret.
        token: String,
    },
    /// Answer to `Logout`.
    LoggedOut,
    /// Answer to `ListProducts`.
    Products(Vec<ProductInfo>),
    /// Answer to `GetProduct`, `CreateProduct`, `Restock`, `SetStock`,
    /// `SetLimit` and `SetWindow`.
    Product(ProductInfo),
    /// Answer to every cart request: the cart after the change.
    Cart(CartView),
    /// Answer to `Pay` and `Buy`: the order is on disk. Its status is final
    /// when it was decided in the same durable batch (the usual case).
    Accepted(OrderInfo),
    /// Answer to `GetOrder` and `CancelOrder`.
    Order(OrderInfo),
    /// Answer to `ListOrders`.
    Orders(Vec<OrderInfo>),
    /// Answer to `CreateUser`.
    UserCreated {
        /// The new account.
        user_id: UserId,
        /// Its name.
        username: String,
        /// Its role.
        role: Role,
    },
    /// Answer to `Stats`.
    Stats(StatsReport),
    /// Answer to `CreateApiKey`.
    ApiKeyCreated {
        /// The partner account.
        partner_id: UserId,
        /// The key's id, for revoking it.
        key_id: String,
        /// The key itself, shown only here; log in with `LoginApiKey`.
        key: String,
    },
    /// Answer to `RevokeApiKey`.
    ApiKeyRevoked {
        /// The revoked key's id.
        key_id: String,
    },
    /// Answer to `ListUsers`.
    Users(Vec<UserInfo>),
    /// Answer to `QueryOrders`.
    OrderPage {
        /// The matching orders, ascending by id.
        orders: Vec<OrderInfo>,
        /// Ask again with `after: next_after` for more; `None` when every
        /// order up to now was examined. The server examines a bounded number
        /// of orders per request, so a page may be short and still have a next.
        next_after: Option<OrderId>,
    },
    /// Answer to `Ping`.
    Pong,
    /// Answer to `ListProductsPage`.
    ProductPage {
        /// The products, ascending by id.
        products: Vec<ProductInfo>,
        /// Ask again with `after: next_after` for more; `None` after the last product.
        next_after: Option<ProductId>,
    },
    /// Answer to `SetUserDisabled` and `SetPassword`: the account as it is now.
    User(UserInfo),
    /// Answer to `EndSessions`.
    SessionsEnded {
        /// The account.
        user_id: UserId,
        /// Sessions that were live and are now ended.
        sessions: u64,
    },
    /// Answer to `BackupBegin`: the backup is consistent as of now.
    BackupStarted {
        /// Names the backup in `BackupNext`.
        backup_id: u64,
        /// The file format of the chunks ([`crate::backup::FORMAT_VERSION`]).
        format_version: u32,
        /// The data dir's schema version.
        schema_version: u32,
    },
    /// Answer to `BackupNext`: the next bytes of the backup file (the
    /// format of [`crate::backup`]); the chunks, concatenated, are the file.
    BackupChunk {
        /// The bytes, at most `--backup-chunk-bytes` (32 KiB).
        data: Vec<u8>,
        /// True for the last chunk: the backup is complete and over.
        last: bool,
    },
    /// Answer to `ClusterStatus`: the cluster, or `None` on a single server.
    ClusterStatus(Option<ClusterReport>),
}

/// A user account as operators see it (never its password hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserInfo {
    /// The account.
    pub id: UserId,
    /// Its unique name.
    pub username: String,
    /// What it may do.
    pub role: Role,
    /// Set by `SetUserDisabled`: the account can neither log in nor be used.
    pub disabled: bool,
}

/// A product's flash-sale rules, enforced at intake and by the sequencer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SaleRules {
    /// Most units one buyer may hold in confirmed orders of the product
    /// (anti-scalping); beyond it orders get `LimitExceeded`. `None`: no limit.
    pub max_per_buyer: Option<u32>,
    /// Orders before this time (ms since the epoch) get `SaleNotOpen`.
    pub opens_at_ms: Option<u64>,
    /// Orders from this time on (ms since the epoch) get `SaleNotOpen`.
    pub closes_at_ms: Option<u64>,
}

impl SaleRules {
    /// True when the sale window contains `now_ms`.
    pub fn is_open_at(&self, now_ms: u64) -> bool {
        self.opens_at_ms.is_none_or(|opens| now_ms >= opens)
            && self.closes_at_ms.is_none_or(|closes| now_ms < closes)
    }
}

impl Reply {
    /// True when this reply is the kind of answer `body` asks for (a
    /// `Product` for `GetProduct`, `Accepted` for `Pay`…): what a client or
    /// a test checks before trusting an answer.
    pub fn answers(&self, body: &RequestBody) -> bool {
        use RequestBody as B;
        match self {
            Reply::LoggedIn { .. } => matches!(
                body,
                B::Login { .. } | B::LoginApiKey { .. } | B::Resume { .. }
            ),
            Reply::LoggedOut => matches!(body, B::Logout),
            Reply::Products(_) => matches!(body, B::ListProducts),
            Reply::Product(_) => matches!(
                body,
                B::GetProduct { .. }
                    | B::CreateProduct { .. }
                    | B::Restock { .. }
                    | B::SetStock { .. }
                    | B::SetLimit { .. }
                    | B::SetWindow { .. }
            ),
            Reply::Cart(_) => matches!(
                body,
                B::CartAdd { .. } | B::CartRemove { .. } | B::CartView | B::CartClear
            ),
            Reply::Accepted(_) => matches!(body, B::Pay { .. } | B::Buy { .. }),
            Reply::Order(_) => matches!(body, B::GetOrder { .. } | B::CancelOrder { .. }),
            Reply::Orders(_) => matches!(body, B::ListOrders { .. }),
            Reply::UserCreated { .. } => matches!(body, B::CreateUser { .. }),
            Reply::Stats(_) => matches!(body, B::Stats),
            Reply::ApiKeyCreated { .. } => matches!(body, B::CreateApiKey { .. }),
            Reply::ApiKeyRevoked { .. } => matches!(body, B::RevokeApiKey { .. }),
            Reply::Users(_) => matches!(body, B::ListUsers { .. }),
            Reply::OrderPage { .. } => matches!(body, B::QueryOrders { .. }),
            Reply::Pong => matches!(body, B::Ping),
            Reply::ProductPage { .. } => matches!(body, B::ListProductsPage { .. }),
            Reply::User(_) => matches!(body, B::SetUserDisabled { .. } | B::SetPassword { .. }),
            Reply::SessionsEnded { .. } => matches!(body, B::EndSessions { .. }),
            Reply::BackupStarted { .. } => matches!(body, B::BackupBegin),
            Reply::BackupChunk { .. } => matches!(body, B::BackupNext { .. }),
            Reply::ClusterStatus(_) => matches!(body, B::ClusterStatus),
        }
    }
}

/// A message the server sends without being asked.
///
/// The session that placed an order hears its decision in the answer to
/// `Pay`/`Buy` and is not pushed it; every other session of the buyer is
/// pushed the new order once (on one of its connections). A partner's
/// buyers have no sessions, so a partner hears its buyers' new orders only
/// in the answers. A retry answered with the order its key already has is
/// pushed to no one. Later changes (an operator's cancellation) are pushed to
/// every session of the buyer, or for a partner's buyer to every session of
/// the partner. A connection whose push buffer is full misses pushes; the
/// orders stay readable with `GetOrder`/`ListOrders`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Push {
    /// A new order of the buyer placed by another of its sessions, or a
    /// later change of an order (a cancellation).
    OrderUpdate(OrderInfo),
}

/// What an account may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Role {
    /// Buys for itself.
    Buyer,
    /// A service account acting for its own buyers.
    Partner,
    /// An operator.
    Admin,
}

/// A product and its live stock figures. `initial_stock + restocked - confirmed_qty == stock`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProductInfo {
    /// The product.
    pub id: ProductId,
    /// Display name.
    pub name: String,
    /// Unit price in cents.
    pub price_cents: u64,
    /// Units left to sell, as of the last durable decision.
    pub stock: u64,
    /// Stock at creation.
    pub initial_stock: u64,
    /// Net units operators added (`Restock`, `SetStock` up) or took away
    /// (`SetStock` down) since creation; negative when more was taken away.
    /// The protocol's only signed integer (zigzag varint on the wire).
    pub restocked: i64,
    /// Units in confirmed orders (cancelled orders no longer count).
    pub confirmed_qty: u64,
    /// Purchase limit and sale window.
    pub rules: SaleRules,
    /// Units in live holds: taken from `stock`, not confirmed yet.
    pub held: u64,
    /// How long a hold of it lasts at most, in ms (its own hold time, or
    /// the server's default).
    pub hold_ms: u64,
}

impl ProductInfo {
    /// The stock the ledger says there should be:
    /// `initial_stock + restocked - confirmed_qty - held` (wide enough
    /// never to overflow).
    pub fn ledger_stock(&self) -> i128 {
        i128::from(self.initial_stock) + i128::from(self.restocked)
            - i128::from(self.confirmed_qty)
            - i128::from(self.held)
    }

    /// True when the stock agrees with the ledger and is not negative (it
    /// is unsigned, so the ledger must not be negative either).
    pub fn balances(&self) -> bool {
        self.ledger_stock() == i128::from(self.stock)
    }
}

/// The content of a cart.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct CartView {
    /// One line per product, in product id order.
    pub lines: Vec<OrderLine>,
}

/// How an order came to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum OrderSource {
    /// `Pay`: checkout of the cart.
    Cart,
    /// `Buy`: express checkout.
    Express,
    /// `HoldCart`: the cart held.
    CartHold,
    /// `HoldItems`: express hold.
    ExpressHold,
}

impl OrderSource {
    /// True for the sources of a hold.
    pub fn is_hold(self) -> bool {
        matches!(self, Self::CartHold | Self::ExpressHold)
    }

    /// True for the cart's sources.
    pub fn is_cart(self) -> bool {
        matches!(self, Self::Cart | Self::CartHold)
    }
}

/// Where an order stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum OrderStatus {
    /// Accepted and on disk, not decided yet.
    Pending,
    /// Every line's stock is reserved; the sale is made.
    Confirmed,
    /// Nothing was reserved.
    Rejected {
        /// Why: `SoldOut`, `LimitExceeded` or `SaleNotOpen`.
        code: ErrorCode,
        /// The product that caused the rejection.
        product_id: ProductId,
    },
    /// Confirmed, then cancelled by an operator; the stock went back.
    Cancelled,
    /// Every line's stock is reserved until `expires_at_ms` (ms since the
    /// epoch, by the server's clock); `PayHold` confirms it.
    Held {
        /// The deadline.
        expires_at_ms: u64,
    },
    /// Held, and not paid by its deadline: the stock went back.
    Expired,
    /// Held, and released early: the stock went back.
    Released,
}

impl OrderStatus {
    /// True once the order has its outcome (anything but `Pending`).
    pub fn is_final(self) -> bool {
        !matches!(self, Self::Pending)
    }
}

/// An order as the buyer sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderInfo {
    /// The order.
    pub id: OrderId,
    /// The buyer.
    pub user_id: UserId,
    /// What was ordered.
    pub items: Vec<OrderLine>,
    /// Where it stands.
    pub status: OrderStatus,
    /// Cart checkout or express.
    pub source: OrderSource,
    /// The key of the pay intent that created it.
    pub idempotency_key: Uuid,
    /// When the sequencer decided it, in milliseconds since the Unix epoch.
    pub decided_at_ms: u64,
    /// For a buyer of a partner: the partner and its reference of the buyer.
    pub partner: Option<PartnerRef>,
}

/// A partner's buyer: which partner, and the partner's own name for the buyer.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PartnerRef {
    /// The partner account.
    pub partner_id: UserId,
    /// The partner's reference of the buyer (as sent in `on_behalf_of`).
    pub buyer_ref: BuyerRef,
}

/// A cluster as its leader sees it (answer to `ClusterStatus`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterReport {
    /// The node that answered: the leader.
    pub leader: String,
    /// The replicated stream's last sequence, as the leader knows it.
    pub stream_last: u64,
    /// The stream's first sequence: everything before it was trimmed
    /// behind a snapshot (1 when nothing was).
    pub stream_first: u64,
    /// The stream sequence the stored snapshot covers (`None`: no snapshot
    /// yet). A node whose data dir is behind `stream_first` restores it.
    pub snapshot: Option<u64>,
    /// Every node that reported itself in the last minute, by name.
    pub nodes: Vec<ClusterNode>,
}

/// One node of a cluster, as it last reported itself (every third of the
/// lease TTL).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterNode {
    /// Its `--node-id`.
    pub node: String,
    /// Where clients reach it.
    pub advertise: String,
    /// True for the leader.
    pub leader: bool,
    /// The last stream sequence it applied (a standby) or had acknowledged
    /// (the leader).
    pub applied: u64,
    /// Stream entries it is behind the stream's end: how stale its data
    /// dir is (a standby serves no reads).
    pub lag: u64,
    /// Milliseconds since its report.
    pub reported_ms_ago: u64,
}

/// Server-wide counters for operators.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsReport {
    /// Every product with its stock figures and order counts.
    pub products: Vec<ProductStats>,
    /// Open client connections.
    pub connections: u64,
    /// Orders confirmed since the data dir was created (cancelled ones included).
    pub orders_confirmed: u64,
    /// Orders rejected by the sequencer since the data dir was created.
    pub orders_rejected: u64,
    /// Orders cancelled by operators since the data dir was created.
    pub orders_cancelled: u64,
    /// Pay requests refused at intake (sold out, limit, window) since the
    /// server started; these make no order.
    pub refused_at_intake: u64,
    /// Pay requests answered with a decision since the server started
    /// (orders decided plus refusals at intake); its rate is decisions/s.
    pub decisions: u64,
    /// Commands waiting in the shard queues.
    pub queue_depth: u64,
    /// Milliseconds since the server started.
    pub uptime_ms: u64,
    /// Buyer references partners have created (each is a buyer account).
    pub partner_buyers: u64,
    /// Live (unexpired, not ended) sessions.
    pub sessions: u64,
    /// Where the data dir's journal, tables and checkpoint stand.
    pub storage: StorageStats,
    /// Holds: live now, and how they ended since the data dir was created.
    pub holds: HoldStats,
}

/// Holds, for operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct HoldStats {
    /// Holds not paid, released or expired yet.
    pub live: u64,
    /// Units in them.
    pub held_units: u64,
    /// Holds placed since the data dir was created.
    pub placed: u64,
    /// Holds paid (now confirmed orders).
    pub paid: u64,
    /// Holds that reached their deadline unpaid.
    pub expired: u64,
    /// Holds released early.
    pub released: u64,
}

/// The journal, the order tables and the checkpoint, for operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct StorageStats {
    /// Last journal record published (durable and answered).
    pub journal_seq: u64,
    /// Last journal record written to the order tables.
    pub materialised_seq: u64,
    /// Journal record the latest checkpoint covers; records up to it are
    /// deleted from the journal (once their cart updates are on disk).
    pub checkpoint_seq: u64,
    /// Journal records on disk (bounded by the checkpoint interval and the
    /// materialiser's lag).
    pub journal_records: u64,
    /// Bytes of those records (keys and values).
    pub journal_bytes: u64,
    /// Orders published but not yet in the order tables (held in memory).
    pub orders_unmaterialised: u64,
}

/// One product's figures in a [`StatsReport`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProductStats {
    /// The product, its stock figures and rules.
    pub product: ProductInfo,
    /// Confirmed orders with a line of this product since the data dir was
    /// created (cancelled ones included).
    pub orders_confirmed: u64,
    /// Orders the sequencer rejected because of this product's line.
    pub orders_rejected: u64,
    /// Orders with a line of this product cancelled by operators.
    pub orders_cancelled: u64,
    /// Pay requests for it refused at intake since the server started.
    pub refused_at_intake: u64,
}
