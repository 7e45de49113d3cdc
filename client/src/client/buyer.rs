//! The buyer's API: products, cart, pay and buy (with retries under one
//! idempotency key), order streams, and reading orders.

use super::{Client, PlacedOrder};
use crate::error::{ClientError, Result};
use crate::stream::OrderStream;
use flashsale_protocol::{
    CartView, OrderId, OrderInfo, OrderLine, ProductId, ProductInfo, Reply, RequestBody,
};
use std::sync::atomic::Ordering;
use uuid::Uuid;

impl Client {
    /// All products with their live stock, read a page at a time
    /// ([`Client::products_page`]) until the last.
    ///
    /// # Errors
    /// `Unauthenticated` without a session.
    pub async fn products(&self) -> Result<Vec<ProductInfo>> {
        let mut all = Vec::new();
        let mut after = None;
        loop {
            let (page, next_after) = self.products_page(after, 0).await?;
            all.extend(page);
            match next_after {
                // The server's ids grow, so a page never repeats: this ends.
                Some(next) if after.is_none_or(|after| next > after) => after = Some(next),
                _ => return Ok(all),
            }
        }
    }

    /// One page of products: up to `limit` (0: the server's page size,
    /// 1 000 by default) with ids above `after`, and the id to continue
    /// after, `None` after the last product.
    ///
    /// # Errors
    /// `Unauthenticated` without a session.
    pub async fn products_page(
        &self,
        after: Option<ProductId>,
        limit: u32,
    ) -> Result<(Vec<ProductInfo>, Option<ProductId>)> {
        let reply = self
            .request(RequestBody::ListProductsPage { after, limit })
            .await?;
        expect_reply!(reply, Reply::ProductPage { products, next_after } => (products, next_after))
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
    /// `NotFound` (product), `BadRequest` (quantity 0, a line above 1 000 000
    /// units, a 65th product), `SoldOut` (not enough stock now).
    pub async fn cart_add(&self, product_id: ProductId, qty: u32) -> Result<CartView> {
        self.cart_request(RequestBody::CartAdd { product_id, qty })
            .await
    }

    /// Removes units from the cart; returns the cart.
    ///
    /// # Errors
    /// `NotFound` when the product is not in the cart, `BadRequest` for a
    /// quantity of 0 or above 1 000 000.
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
    /// `EmptyCart`, `SoldOut`, `LimitExceeded`, `SaleNotOpen` (answered at
    /// once from memory, no order made), `Overloaded` once the retries are
    /// used up, …
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
    /// `BadRequest` (lines), `NotFound` (product), `SoldOut`,
    /// `LimitExceeded`, `SaleNotOpen`, `Overloaded`, …
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

    /// Holds the cart with a fresh key: the stock is reserved in arrival
    /// order like a pay, and the order is `Held { expires_at_ms }` until
    /// [`Client::pay_hold`], [`Client::release_hold`] or its deadline.
    /// `hold_ms` asks for less than the product's hold time (`None`: all
    /// of it).
    ///
    /// # Errors
    /// As [`Client::pay`]; `BadRequest` for a `hold_ms` of 0 or above a day.
    pub async fn hold_cart(&self, hold_ms: Option<u64>) -> Result<PlacedOrder> {
        self.hold_cart_with_key(Uuid::new_v4(), hold_ms).await
    }

    /// Holds the cart under `key`, retried like [`Client::pay_with_key`].
    ///
    /// # Errors
    /// As [`Client::hold_cart`].
    pub async fn hold_cart_with_key(&self, key: Uuid, hold_ms: Option<u64>) -> Result<PlacedOrder> {
        let reply = self
            .request_with_retries(RequestBody::HoldCart {
                idempotency_key: key,
                hold_ms,
            })
            .await?;
        self.placed(reply)
    }

    /// Express hold of `items` with a fresh key (see [`Client::hold_cart`]).
    ///
    /// # Errors
    /// As [`Client::buy`].
    pub async fn hold(&self, items: Vec<OrderLine>, hold_ms: Option<u64>) -> Result<PlacedOrder> {
        self.hold_with_key(items, Uuid::new_v4(), hold_ms).await
    }

    /// Express hold under `key`, retried like [`Client::pay_with_key`].
    ///
    /// # Errors
    /// As [`Client::buy`].
    pub async fn hold_with_key(
        &self,
        items: Vec<OrderLine>,
        key: Uuid,
        hold_ms: Option<u64>,
    ) -> Result<PlacedOrder> {
        let reply = self
            .request_with_retries(RequestBody::HoldItems {
                items,
                idempotency_key: key,
                hold_ms,
            })
            .await?;
        self.placed(reply)
    }

    /// Pays a held order with the payment gateway's reference: it becomes
    /// `Confirmed`. Retried like a pay: the same reference again answers
    /// the same order.
    ///
    /// # Errors
    /// `HoldExpired` after its deadline (the units went back),
    /// `PaymentRefMismatch` when paid with another reference, `NotHeld`
    /// for an order that is not a hold, `NotFound` for someone else's.
    pub async fn pay_hold(&self, order_id: OrderId, payment_ref: &str) -> Result<OrderInfo> {
        let reply = self
            .request_with_retries(RequestBody::PayHold {
                order_id,
                payment_ref: payment_ref.to_owned(),
            })
            .await?;
        expect_reply!(reply, Reply::Order(order) => order)
    }

    /// Releases a held order early: its units go back to stock. A released
    /// or expired hold is answered as it stands.
    ///
    /// # Errors
    /// `NotHeld` for a paid hold or an order that is not one, `NotFound`
    /// for someone else's.
    pub async fn release_hold(&self, order_id: OrderId) -> Result<OrderInfo> {
        let reply = self
            .request_with_retries(RequestBody::ReleaseHold { order_id })
            .await?;
        expect_reply!(reply, Reply::Order(order) => order)
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

    /// One of the session's orders (a partner without a buyer: any of its
    /// buyers' orders; an admin: any order).
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
}
