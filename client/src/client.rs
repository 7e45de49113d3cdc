//! [`Client`]: typed methods over one multiplexed connection (or a small pool).

use crate::config::ClientConfig;
use crate::connection::Connection;
use crate::error::{ClientError, Result};
use crate::stream::OrderStream;
use flashsale_protocol::{
    BuyerRef, CartView, ErrorCode, OrderId, OrderInfo, OrderLine, ProductId, ProductInfo, Push,
    Reply, RequestBody, Role, SaleRules, StatsReport, StatusFilter, UserId, UserInfo,
};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::net::ToSocketAddrs;
use tokio::sync::broadcast;
use uuid::Uuid;

/// How long [`PlacedOrder::outcome`] waits for a push before asking with `GetOrder`.
const OUTCOME_POLL: Duration = Duration::from_millis(500);

/// A logged-in session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The account.
    pub user_id: UserId,
    /// Its name.
    pub username: String,
    /// Its role.
    pub role: Role,
    /// Token for [`Client::resume`] on another connection; keep it secret.
    pub token: String,
}

/// A handle to a flashsale server over one connection (or a pool of
/// [`ClientConfig::connections`]). Cheap to clone; every clone shares the
/// connections and the session, and many requests can be in flight at once.
///
/// When a connection drops, the next request on it reconnects and resumes
/// the session; `pay` and `buy` retry by themselves with the same
/// idempotency key, so a dropped connection never turns one intent into two
/// orders.
///
/// A partner logs in with [`Client::login_api_key`] and acts for its buyers
/// through [`Client::acting_for`].
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
    /// The partner's buyer this handle acts for, sent with every request.
    on_behalf_of: Option<BuyerRef>,
}

/// One pooled connection.
struct Slot {
    /// The live connection; replaced when it drops.
    current: RwLock<Arc<Connection>>,
    /// Held while reconnecting, so concurrent callers reconnect once.
    reconnecting: tokio::sync::Mutex<()>,
}

struct Inner {
    /// Where the server is, resolved once at connect.
    addrs: Vec<SocketAddr>,
    config: ClientConfig,
    /// The pool; requests take turns.
    slots: Vec<Slot>,
    /// Next slot to use.
    next_slot: AtomicUsize,
    /// The session to resume after a reconnect.
    token: Mutex<Option<String>>,
    /// Pushes of every connection this client has had.
    pushes: broadcast::Sender<Push>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("on_behalf_of", &self.on_behalf_of)
            .finish_non_exhaustive()
    }
}

macro_rules! expect_reply {
    ($reply:expr, $pattern:pat => $value:expr) => {
        match $reply {
            $pattern => Ok($value),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    };
}

impl Client {
    /// Connects with the default configuration and completes the handshake.
    ///
    /// # Errors
    /// The connection or handshake failed (for example `UnsupportedVersion`).
    pub async fn connect(addr: impl ToSocketAddrs) -> Result<Self> {
        Self::connect_with(addr, ClientConfig::default()).await
    }

    /// Connects with `config` (opening `config.connections` connections)
    /// and completes the handshakes.
    ///
    /// # Errors
    /// A connection or handshake failed.
    pub async fn connect_with(addr: impl ToSocketAddrs, config: ClientConfig) -> Result<Self> {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host(addr)
            .await
            .map_err(ClientError::Connect)?
            .collect();
        let (pushes, _) = broadcast::channel(config.push_buffer.max(1));
        let mut slots = Vec::new();
        for _ in 0..config.connections.max(1) {
            let conn = Connection::open(&addrs[..], config.clone(), pushes.clone()).await?;
            slots.push(Slot {
                current: RwLock::new(Arc::new(conn)),
                reconnecting: tokio::sync::Mutex::new(()),
            });
        }
        Ok(Self {
            inner: Arc::new(Inner {
                addrs,
                config,
                slots,
                next_slot: AtomicUsize::new(0),
                token: Mutex::new(None),
                pushes,
            }),
            on_behalf_of: None,
        })
    }

    /// A handle that acts for the partner's buyer `buyer` (created on first
    /// use). Shares this client's connections and session; needs a partner
    /// session (see [`Client::login_api_key`]).
    pub fn acting_for(&self, buyer: impl Into<String>) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
            on_behalf_of: Some(BuyerRef(buyer.into())),
        }
    }

    fn current(&self, slot: usize) -> Arc<Connection> {
        // A poisoned lock only means a panic elsewhere; the Arc inside is intact.
        let current = &self.inner.slots[slot].current;
        Arc::clone(&current.read().unwrap_or_else(|e| e.into_inner()))
    }

    fn set_token(&self, token: Option<String>) {
        *self.inner.token.lock().unwrap_or_else(|e| e.into_inner()) = token;
    }

    fn token(&self) -> Option<String> {
        self.inner
            .token
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The live connection of `slot`, reconnecting (and resuming the
    /// session) if it dropped.
    async fn connection(&self, slot: usize) -> Result<Arc<Connection>> {
        let conn = self.current(slot);
        if !conn.is_closed() {
            return Ok(conn);
        }
        let _reconnecting = self.inner.slots[slot].reconnecting.lock().await;
        let conn = self.current(slot);
        if !conn.is_closed() {
            return Ok(conn);
        }
        let fresh = Arc::new(
            Connection::open(
                &self.inner.addrs[..],
                self.inner.config.clone(),
                self.inner.pushes.clone(),
            )
            .await?,
        );
        let resumed = match self.token() {
            Some(token) => fresh
                .request(RequestBody::Resume { token }, None)
                .await
                .map(|_| ()),
            None => Ok(()),
        };
        match resumed {
            Err(e) if e.code() != Some(ErrorCode::Unauthenticated) => Err(e),
            resumed => {
                if resumed.is_err() {
                    // The session ended (logged out elsewhere, or lost): keep
                    // the connection so the app can log in again.
                    self.set_token(None);
                }
                let current = &self.inner.slots[slot].current;
                *current.write().unwrap_or_else(|e| e.into_inner()) = Arc::clone(&fresh);
                tracing::debug!(slot, "reconnected");
                resumed.map(|()| fresh)
            }
        }
    }

    /// Sends any request and returns the raw reply. Reconnects first if the
    /// connection dropped, but never sends a request twice.
    ///
    /// # Errors
    /// The server refused the request, or the connection failed.
    pub async fn request(&self, body: RequestBody) -> Result<Reply> {
        let slot = self.inner.next_slot.fetch_add(1, Ordering::Relaxed) % self.inner.slots.len();
        self.connection(slot)
            .await?
            .request(body, self.on_behalf_of.clone())
            .await
    }

    /// Sends an idempotent request, retrying retryable failures with backoff
    /// (see [`ClientConfig::pay_attempts`]).
    async fn request_with_retries(&self, body: RequestBody) -> Result<Reply> {
        let config = &self.inner.config;
        let mut backoff = config.retry_backoff;
        let mut attempt = 1;
        loop {
            match self.request(body.clone()).await {
                Err(e) if e.is_retryable() && attempt < config.pay_attempts.max(1) => {
                    tracing::debug!(error = %e, attempt, "retrying with the same idempotency key");
                    // The server's hint (a rate limit's wait) wins when longer.
                    // (capped by the request timeout: a faulty server cannot stall us longer).
                    let asked = e.retry_after().unwrap_or_default();
                    tokio::time::sleep(backoff.max(asked.min(config.request_timeout))).await;
                    backoff = (backoff * 2).min(config.max_retry_backoff);
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// True when a connection of the pool is gone (the next request on it reconnects).
    pub fn is_closed(&self) -> bool {
        (0..self.inner.slots.len()).any(|slot| self.current(slot).is_closed())
    }

    /// Every push from now on (order outcomes of this session's buyer, or of
    /// all a partner's buyers), on every connection of the pool and the ones
    /// that replace them.
    pub fn pushes(&self) -> Pushes {
        Pushes {
            rx: self.inner.pushes.subscribe(),
        }
    }

    /// Opens or ends the session on the first connection, then on the others.
    async fn session_request(&self, body: RequestBody) -> Result<Option<Session>> {
        let logout = matches!(body, RequestBody::Logout);
        let reply = self.connection(0).await?.request(body, None).await?;
        let session = match reply {
            Reply::LoggedIn {
                user_id,
                username,
                role,
                token,
            } => Some(Session {
                user_id,
                username,
                role,
                token,
            }),
            Reply::LoggedOut => None,
            other => return Err(ClientError::Unexpected(format!("{other:?}"))),
        };
        self.set_token(session.as_ref().map(|s| s.token.clone()));
        for slot in 1..self.inner.slots.len() {
            let follow = match &session {
                Some(session) => RequestBody::Resume {
                    token: session.token.clone(),
                },
                None => RequestBody::Logout,
            };
            let result = self.connection(slot).await?.request(follow, None).await;
            // After a logout, a connection without a session has nothing to end.
            if !(logout
                && result.as_ref().err().and_then(ClientError::code)
                    == Some(ErrorCode::Unauthenticated))
            {
                result?;
            }
        }
        Ok(session)
    }

    async fn open_session(&self, body: RequestBody) -> Result<Session> {
        self.session_request(body)
            .await?
            .ok_or_else(|| ClientError::Unexpected("LoggedOut instead of LoggedIn".into()))
    }

    /// Logs in with a password.
    ///
    /// # Errors
    /// `Unauthenticated` for a wrong name or password.
    pub async fn login(&self, username: &str, password: &str) -> Result<Session> {
        self.open_session(RequestBody::Login {
            username: username.to_owned(),
            password: password.to_owned(),
        })
        .await
    }

    /// Logs a partner in with its API key.
    ///
    /// # Errors
    /// `Unauthenticated` for a wrong or revoked key.
    pub async fn login_api_key(&self, key: &str) -> Result<Session> {
        self.open_session(RequestBody::LoginApiKey {
            key: key.to_owned(),
        })
        .await
    }

    /// Attaches an existing session to this client's connections.
    ///
    /// # Errors
    /// `Unauthenticated` for an unknown or ended session.
    pub async fn resume(&self, token: &str) -> Result<Session> {
        self.open_session(RequestBody::Resume {
            token: token.to_owned(),
        })
        .await
    }

    /// Ends the session everywhere.
    ///
    /// # Errors
    /// `Unauthenticated` without a session.
    pub async fn logout(&self) -> Result<()> {
        self.session_request(RequestBody::Logout).await.map(|_| ())
    }

    /// All products with their live stock.
    ///
    /// # Errors
    /// `Unauthenticated` without a session.
    pub async fn products(&self) -> Result<Vec<ProductInfo>> {
        let reply = self.request(RequestBody::ListProducts).await?;
        expect_reply!(reply, Reply::Products(products) => products)
    }

    /// One product with its live stock.
    ///
    /// # Errors
    /// `NotFound` for an unknown product.
    pub async fn product(&self, id: ProductId) -> Result<ProductInfo> {
        let reply = self.request(RequestBody::GetProduct { id }).await?;
        expect_reply!(reply, Reply::Product(product) => product)
    }

    async fn cart_request(&self, body: RequestBody) -> Result<CartView> {
        let reply = self.request(body).await?;
        expect_reply!(reply, Reply::Cart(cart) => cart)
    }

    /// Adds units to the cart; returns the cart.
    ///
    /// # Errors
    /// `NotFound` (product), `BadRequest` (quantity), `SoldOut` (not enough stock now).
    pub async fn cart_add(&self, product_id: ProductId, qty: u32) -> Result<CartView> {
        self.cart_request(RequestBody::CartAdd { product_id, qty })
            .await
    }

    /// Removes units from the cart; returns the cart.
    ///
    /// # Errors
    /// `NotFound` when the product is not in the cart.
    pub async fn cart_remove(&self, product_id: ProductId, qty: u32) -> Result<CartView> {
        self.cart_request(RequestBody::CartRemove { product_id, qty })
            .await
    }

    /// The cart.
    ///
    /// # Errors
    /// `Unauthenticated` without a session.
    pub async fn cart(&self) -> Result<CartView> {
        self.cart_request(RequestBody::CartView).await
    }

    /// Empties the cart.
    ///
    /// # Errors
    /// `Unauthenticated` without a session.
    pub async fn cart_clear(&self) -> Result<CartView> {
        self.cart_request(RequestBody::CartClear).await
    }

    /// Checks out the cart with a fresh idempotency key.
    ///
    /// # Errors
    /// `EmptyCart`, `SoldOut` (answered at once from memory), `Overloaded`, …
    pub async fn pay(&self) -> Result<PlacedOrder> {
        self.pay_with_key(Uuid::new_v4()).await
    }

    /// Checks out the cart under `key`: sending the same key again returns
    /// the same order, never a second one.
    ///
    /// # Errors
    /// As [`Client::pay`].
    pub async fn pay_with_key(&self, key: Uuid) -> Result<PlacedOrder> {
        let reply = self
            .request_with_retries(RequestBody::Pay {
                idempotency_key: key,
            })
            .await?;
        self.placed(reply)
    }

    /// Express checkout of `items` with a fresh idempotency key.
    ///
    /// # Errors
    /// `BadRequest` (lines), `NotFound` (product), `SoldOut`, `Overloaded`, …
    pub async fn buy(&self, items: Vec<OrderLine>) -> Result<PlacedOrder> {
        self.buy_with_key(items, Uuid::new_v4()).await
    }

    /// Express checkout under `key`, retried like [`Client::pay_with_key`].
    ///
    /// # Errors
    /// As [`Client::buy`].
    pub async fn buy_with_key(&self, items: Vec<OrderLine>, key: Uuid) -> Result<PlacedOrder> {
        let reply = self
            .request_with_retries(RequestBody::Buy {
                items,
                idempotency_key: key,
            })
            .await?;
        self.placed(reply)
    }

    /// An [`OrderStream`] on one of the pool's connections (reconnecting
    /// first if it dropped): many pay attempts in flight, answered in
    /// arrival order, for partners selling to many buyers at once. Each
    /// attempt names its buyer; a handle's [`Client::acting_for`] buyer does
    /// not carry over to the stream.
    ///
    /// # Errors
    /// The connection could not be (re)opened.
    pub async fn order_stream(&self) -> Result<OrderStream> {
        let slot = self.inner.next_slot.fetch_add(1, Ordering::Relaxed) % self.inner.slots.len();
        let connection = self.connection(slot).await?;
        Ok(OrderStream::new(
            connection,
            self.inner.config.max_in_flight,
        ))
    }

    fn placed(&self, reply: Reply) -> Result<PlacedOrder> {
        let order = expect_reply!(reply, Reply::Accepted(order) => order)?;
        let client = (!order.status.is_final()).then(|| self.clone());
        Ok(PlacedOrder { order, client })
    }

    /// One of the session's orders.
    ///
    /// # Errors
    /// `NotFound` for an unknown order or someone else's.
    pub async fn order(&self, id: OrderId) -> Result<OrderInfo> {
        let reply = self.request(RequestBody::GetOrder { id }).await?;
        expect_reply!(reply, Reply::Order(order) => order)
    }

    /// The session's orders with ids above `after`, at most `limit` (0: the server's page size).
    ///
    /// # Errors
    /// `Unauthenticated` without a session.
    pub async fn orders(&self, after: Option<OrderId>, limit: u32) -> Result<Vec<OrderInfo>> {
        let reply = self
            .request(RequestBody::ListOrders { after, limit })
            .await?;
        expect_reply!(reply, Reply::Orders(orders) => orders)
    }

    /// Admin: creates a product with no purchase limit and no sale window.
    ///
    /// # Errors
    /// `Forbidden` for non-admins, `AlreadyExists` for a taken name.
    pub async fn create_product(
        &self,
        name: &str,
        price_cents: u64,
        stock: u64,
    ) -> Result<ProductInfo> {
        self.create_product_with_rules(name, price_cents, stock, SaleRules::default())
            .await
    }

    /// Admin: creates a product with its purchase limit and sale window, so
    /// the rules are in force from the product's first order on.
    ///
    /// # Errors
    /// `Forbidden` for non-admins, `AlreadyExists` for a taken name,
    /// `BadRequest` for a window that closes before it opens or a zero limit.
    pub async fn create_product_with_rules(
        &self,
        name: &str,
        price_cents: u64,
        stock: u64,
        rules: SaleRules,
    ) -> Result<ProductInfo> {
        let reply = self
            .request(RequestBody::CreateProduct {
                name: name.to_owned(),
                price_cents,
                stock,
                rules,
            })
            .await?;
        expect_reply!(reply, Reply::Product(product) => product)
    }

    /// Admin: sets a product's stock to an exact figure (in arrival order
    /// with its orders).
    ///
    /// # Errors
    /// `Forbidden` for non-admins, `NotFound` for an unknown product.
    pub async fn set_stock(&self, product_id: ProductId, stock: u64) -> Result<ProductInfo> {
        let reply = self
            .request(RequestBody::SetStock { product_id, stock })
            .await?;
        expect_reply!(reply, Reply::Product(product) => product)
    }

    /// Admin: sets (`Some`) or removes (`None`) a product's per-buyer limit.
    ///
    /// # Errors
    /// `Forbidden` for non-admins, `NotFound` for an unknown product,
    /// `BadRequest` for a zero limit.
    pub async fn set_limit(
        &self,
        product_id: ProductId,
        max_per_buyer: Option<u32>,
    ) -> Result<ProductInfo> {
        let reply = self
            .request(RequestBody::SetLimit {
                product_id,
                max_per_buyer,
            })
            .await?;
        expect_reply!(reply, Reply::Product(product) => product)
    }

    /// Admin: sets a product's sale window (ms since the epoch; `None`: open end).
    ///
    /// # Errors
    /// `Forbidden` for non-admins, `NotFound` for an unknown product,
    /// `BadRequest` when the window closes before it opens.
    pub async fn set_window(
        &self,
        product_id: ProductId,
        opens_at_ms: Option<u64>,
        closes_at_ms: Option<u64>,
    ) -> Result<ProductInfo> {
        let reply = self
            .request(RequestBody::SetWindow {
                product_id,
                opens_at_ms,
                closes_at_ms,
            })
            .await?;
        expect_reply!(reply, Reply::Product(product) => product)
    }

    /// Admin: cancels a confirmed order and returns its stock; the buyer is
    /// pushed the change.
    ///
    /// # Errors
    /// `Forbidden` for non-admins, `NotFound` for an unknown order,
    /// `BadRequest` for an order that was not confirmed.
    pub async fn cancel_order(&self, id: OrderId) -> Result<OrderInfo> {
        let reply = self.request(RequestBody::CancelOrder { id }).await?;
        expect_reply!(reply, Reply::Order(order) => order)
    }

    /// Admin: user accounts in name order after `after`, at most `limit` (0: the server's page).
    ///
    /// # Errors
    /// `Forbidden` for non-admins.
    pub async fn users(&self, after: Option<&str>, limit: u32) -> Result<Vec<UserInfo>> {
        let reply = self
            .request(RequestBody::ListUsers {
                after: after.map(str::to_owned),
                limit,
            })
            .await?;
        expect_reply!(reply, Reply::Users(users) => users)
    }

    /// Admin: one page of every buyer's orders, filtered by product and
    /// status; continue with `after: next_after` while it is `Some`.
    ///
    /// # Errors
    /// `Forbidden` for non-admins.
    pub async fn query_orders(
        &self,
        after: Option<OrderId>,
        limit: u32,
        product_id: Option<ProductId>,
        status: Option<StatusFilter>,
    ) -> Result<OrderPage> {
        let reply = self
            .request(RequestBody::QueryOrders {
                after,
                limit,
                product_id,
                status,
            })
            .await?;
        expect_reply!(reply, Reply::OrderPage { orders, next_after } => OrderPage { orders, next_after })
    }

    /// Admin: adds stock to a product.
    ///
    /// # Errors
    /// `Forbidden` for non-admins, `NotFound` for an unknown product.
    pub async fn restock(&self, product_id: ProductId, qty: u64) -> Result<ProductInfo> {
        let reply = self
            .request(RequestBody::Restock { product_id, qty })
            .await?;
        expect_reply!(reply, Reply::Product(product) => product)
    }

    /// Admin: creates an account.
    ///
    /// # Errors
    /// `Forbidden` for non-admins, `AlreadyExists` for a taken name,
    /// `BadRequest` for an invalid name or a short password.
    pub async fn create_user(&self, username: &str, password: &str, role: Role) -> Result<UserId> {
        let reply = self
            .request(RequestBody::CreateUser {
                username: username.to_owned(),
                password: password.to_owned(),
                role,
            })
            .await?;
        expect_reply!(reply, Reply::UserCreated { user_id, .. } => user_id)
    }

    /// Admin: issues an API key for a partner account; the key is shown only here.
    ///
    /// # Errors
    /// `Forbidden` for non-admins, `NotFound`/`BadRequest` when `partner` is
    /// not a partner account.
    pub async fn create_api_key(&self, partner: &str) -> Result<ApiKey> {
        let reply = self
            .request(RequestBody::CreateApiKey {
                partner: partner.to_owned(),
            })
            .await?;
        expect_reply!(reply, Reply::ApiKeyCreated { partner_id, key_id, key } => ApiKey { partner_id, key_id, key })
    }

    /// Admin: revokes an API key.
    ///
    /// # Errors
    /// `Forbidden` for non-admins, `NotFound` for an unknown key id.
    pub async fn revoke_api_key(&self, key_id: &str) -> Result<()> {
        let reply = self
            .request(RequestBody::RevokeApiKey {
                key_id: key_id.to_owned(),
            })
            .await?;
        expect_reply!(reply, Reply::ApiKeyRevoked { .. } => ())
    }

    /// Admin: server-wide counters.
    ///
    /// # Errors
    /// `Forbidden` for non-admins.
    pub async fn stats(&self) -> Result<StatsReport> {
        let reply = self.request(RequestBody::Stats).await?;
        expect_reply!(reply, Reply::Stats(stats) => stats)
    }
}

/// One page of [`Client::query_orders`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderPage {
    /// Matching orders, ascending by id.
    pub orders: Vec<OrderInfo>,
    /// Where to continue; `None` when every order was examined.
    pub next_after: Option<OrderId>,
}

/// A partner API key, as issued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    /// The partner account.
    pub partner_id: UserId,
    /// The key's id, for revoking it.
    pub key_id: String,
    /// The key: keep it secret, it is shown only once.
    pub key: String,
}

/// An order the server accepted (it is on disk).
#[derive(Debug, Clone)]
pub struct PlacedOrder {
    /// The order as accepted; its status is final when it was decided in
    /// the same durable batch (the usual case).
    pub order: OrderInfo,
    /// The client to follow the order with, kept only while it is pending
    /// (a clone per answer costs contended reference counting).
    client: Option<Client>,
}

impl PlacedOrder {
    /// The order's final state: at once when already decided, else from the
    /// push, falling back to asking with `GetOrder`.
    ///
    /// # Errors
    /// The connection failed, or no outcome within the request timeout.
    pub async fn outcome(&self) -> Result<OrderInfo> {
        let client = match &self.client {
            Some(client) if !self.order.status.is_final() => client,
            _ => return Ok(self.order.clone()),
        };
        let timeout = client.inner.config.request_timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        let mut pushes = client.pushes();
        loop {
            // Ask after subscribing, so an outcome pushed in between is not missed.
            let current = client.order(self.order.id).await?;
            if current.status.is_final() {
                return Ok(current);
            }
            let wait =
                OUTCOME_POLL.min(deadline.saturating_duration_since(tokio::time::Instant::now()));
            if wait.is_zero() {
                return Err(ClientError::Timeout(timeout));
            }
            let pushed = tokio::time::timeout(wait, async {
                while let Some(Push::OrderUpdate(order)) = pushes.next().await {
                    if order.id == self.order.id && order.status.is_final() {
                        return Some(order);
                    }
                }
                None
            })
            .await;
            if let Ok(Some(order)) = pushed {
                return Ok(order);
            }
        }
    }
}

/// A stream of pushes from one connection.
#[derive(Debug)]
pub struct Pushes {
    rx: broadcast::Receiver<Push>,
}

impl Pushes {
    /// The next push; `None` once the connection is gone. A subscriber that
    /// fell behind skips the pushes it missed (see
    /// [`crate::ClientConfig::push_buffer`]); outcomes stay available with
    /// [`Client::order`].
    pub async fn next(&mut self) -> Option<Push> {
        loop {
            match self.rx.recv().await {
                Ok(push) => return Some(push),
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "push subscriber fell behind");
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}
