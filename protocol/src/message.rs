//! The messages of protocol version 1.
//!
//! Frame order on a connection:
//! 1. client → [`ClientFrame::Hello`]; server → [`ServerFrame::Welcome`] (or
//!    [`ServerFrame::Closing`] with `UnsupportedVersion`, then close);
//! 2. any number of [`ClientFrame::Request`]s, pipelined; the server answers
//!    each with one [`ServerFrame::Response`] carrying the same `id`, in any
//!    order, and may send [`ServerFrame::Push`] at any time after a login.
//!
//! Every enum here is append-only: a variant's position is its wire tag.

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
    /// News the client did not ask for, such as an order's outcome.
    Push(Push),
    /// A connection-level error (bad version, undecodable or oversize frame,
    /// shutdown); the server closes the connection after sending it.
    Closing(WireError),
}

/// The client's opening frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Must equal the server's [`crate::PROTOCOL_VERSION`].
    pub protocol_version: u16,
    /// Free text naming the client software, for the server's logs.
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
    /// Chosen by the client; echoed in the matching [`Response`].
    pub id: u64,
    /// Only partner sessions may set this: the partner's own reference of the
    /// buyer the request acts for (1 to 128 bytes, no control characters).
    /// The buyer is created on first use and belongs to that partner alone.
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
    /// End the session: the token stops working everywhere.
    Logout,
    /// All products with their live stock.
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
        /// Units to add, at least 1.
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
        /// One key per pay intent: a retry with the same key returns the same order.
        idempotency_key: Uuid,
    },
    /// Express checkout: order the given lines without touching the cart.
    Buy {
        /// The lines to order, each product at most once.
        items: Vec<OrderLine>,
        /// One key per pay intent: a retry with the same key returns the same order.
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
        /// Most orders to return; 0 means the server's maximum page size.
        limit: u32,
    },
    /// Admin: create a product with its initial stock.
    CreateProduct {
        /// Display name, unique.
        name: String,
        /// Unit price in cents.
        price_cents: u64,
        /// Initial stock.
        stock: u64,
    },
    /// Admin: add stock to a product; ordered with the product's orders.
    Restock {
        /// The product.
        product_id: ProductId,
        /// Units to add, at least 1.
        qty: u64,
    },
    /// Admin: create a user account with a password.
    CreateUser {
        /// The account name, unique.
        username: String,
        /// Its password; never logged.
        password: String,
        /// Its role.
        role: Role,
    },
    /// Admin: cancel an order and return its stock.
    CancelOrder {
        /// The order.
        id: OrderId,
    },
    /// Admin: server-wide counters and per-product stock.
    Stats,
    /// Admin: issue an API key for a partner account. The key is shown once,
    /// in the reply; the server keeps only its hash.
    CreateApiKey {
        /// The partner account's user name.
        partner: String,
    },
    /// Admin: revoke an API key; it no longer logs in or resumes sessions.
    RevokeApiKey {
        /// The key's id (the part after `fsk_`, before the second `_`).
        key_id: String,
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
        }
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
        /// Session token for `Resume` on another connection; keep it secret.
        token: String,
    },
    /// Answer to `Logout`.
    LoggedOut,
    /// Answer to `ListProducts`.
    Products(Vec<ProductInfo>),
    /// Answer to `GetProduct`, `CreateProduct` and `Restock`.
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
}

/// A message the server sends without being asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Push {
    /// An order of the session's buyer was decided or changed.
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
    /// Units added by restocks since creation.
    pub restocked: u64,
    /// Units sold in confirmed orders.
    pub confirmed_qty: u64,
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

/// Server-wide counters for operators.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsReport {
    /// Every product with its stock figures.
    pub products: Vec<ProductInfo>,
    /// Open client connections.
    pub connections: u64,
    /// Orders confirmed since the data dir was created.
    pub orders_confirmed: u64,
    /// Orders rejected by the sequencer since the data dir was created.
    pub orders_rejected: u64,
    /// Commands waiting in the shard queues.
    pub queue_depth: u64,
}
