//! The one routing point of the requests that need a session: each request
//! kind goes to its handler, after one role check taken from the protocol's
//! own list of admin-only requests ([`RequestBody::is_admin`]). Each handler
//! produces exactly one answer on `reply`, now or once decided.
//!
//! Session requests (`Login`, `LoginApiKey`, `Resume`, `Logout`) and `Ping`
//! change or keep the connection itself and are handled in
//! [`crate::net::session`] before they get here.

mod admin;
pub(crate) mod backup;
mod cart;
mod holds;
mod new_buyer;
mod orders;
mod pay;
mod products;

use crate::accounts::auth::{Acting, Session};
use crate::error::{ApiError, ApiResult};
use crate::net::rate_limit::ConnectionLimit;
use crate::net::reply::ReplyTo;
use crate::state::Shared;
use flashsale_protocol::{ErrorCode, PartnerRef, RequestBody, Role};
use std::sync::Arc;

/// Who sends a request: the session, the buyer it acts for, and the pay
/// limit of the connection it came on.
pub(crate) struct Caller<'a> {
    /// The logged-in session.
    pub(crate) session: &'a Session,
    /// The buyer the request acts for; `None` for a partner that named no
    /// buyer, or one it never used ([`Caller::new_buyer`]).
    pub(crate) acting: Option<Acting>,
    /// A buyer reference the partner names for the first time: nothing is
    /// stored for it unless the request changes something and passes its
    /// checks (see [`new_buyer`]).
    pub(crate) new_buyer: Option<PartnerRef>,
    /// The connection's pay rate limit (`Config::pay_rate_per_connection`).
    pub(crate) connection_pay_limit: &'a ConnectionLimit,
    /// The backup the connection streams, if any (`BackupBegin`, `BackupNext`).
    pub(crate) backup: &'a mut backup::BackupSlot,
}

impl Caller<'_> {
    /// The buyer a cart or order request acts for.
    fn buyer(&self) -> ApiResult<&Acting> {
        self.acting.as_ref().ok_or_else(|| {
            ApiError::bad_request("a partner session must name the buyer in on_behalf_of")
        })
    }
}

/// Handles a request of a logged-in session.
pub(crate) async fn handle(
    shared: &Arc<Shared>,
    mut caller: Caller<'_>,
    body: RequestBody,
    reply: ReplyTo,
) {
    if body.is_admin() {
        if caller.session.role != Role::Admin {
            return reply.send(Err(ApiError::admin_only()));
        }
        if backup::is_backup(&body) {
            return backup::handle(shared, caller.backup, body, reply).await;
        }
        return admin::handle(shared, body, reply).await;
    }
    if let Some(buyer) = caller.new_buyer.take() {
        return new_buyer::handle(shared, caller, buyer, body, reply);
    }
    route(shared, &caller, body, reply);
}

/// Routes a request that needs no admin: the buyer's and the shop's.
fn route(shared: &Arc<Shared>, caller: &Caller<'_>, body: RequestBody, reply: ReplyTo) {
    match body {
        RequestBody::Pay { idempotency_key } => {
            pay::pay(shared, caller, idempotency_key, None, reply);
        }
        RequestBody::Buy {
            items,
            idempotency_key,
        } => pay::buy(shared, caller, items, idempotency_key, None, reply),
        RequestBody::HoldCart {
            idempotency_key,
            hold_ms,
        } => match pay::hold_ask(shared, hold_ms) {
            Ok(hold) => pay::pay(shared, caller, idempotency_key, Some(hold), reply),
            Err(e) => reply.send(Err(e)),
        },
        RequestBody::HoldItems {
            items,
            idempotency_key,
            hold_ms,
        } => match pay::hold_ask(shared, hold_ms) {
            Ok(hold) => pay::buy(shared, caller, items, idempotency_key, Some(hold), reply),
            Err(e) => reply.send(Err(e)),
        },
        RequestBody::PayHold {
            order_id,
            payment_ref,
        } => holds::pay(shared, caller, order_id, payment_ref, reply),
        RequestBody::ReleaseHold { order_id } => holds::release(shared, caller, order_id, reply),
        RequestBody::ListProducts => reply.send(Ok(products::list(shared))),
        RequestBody::ListProductsPage { after, limit } => {
            reply.send(Ok(products::page(shared, after, limit)));
        }
        RequestBody::GetProduct { id } => reply.send(products::get(shared, id)),
        // A cart change is answered once it is on disk (group commit).
        RequestBody::CartAdd { product_id, qty } => {
            let changed = cart::add(shared, caller, product_id, qty);
            shared.syncer.reply_when_durable(reply, changed);
        }
        RequestBody::CartRemove { product_id, qty } => {
            let changed = cart::remove(shared, caller, product_id, qty);
            shared.syncer.reply_when_durable(reply, changed);
        }
        RequestBody::CartView => reply.send(cart::view(shared, caller)),
        RequestBody::CartClear => {
            let changed = cart::clear(shared, caller);
            shared.syncer.reply_when_durable(reply, changed);
        }
        RequestBody::GetOrder { id } => reply.send(orders::get(shared, caller, id)),
        RequestBody::ListOrders { after, limit } => {
            reply.send(orders::list(shared, caller, after, limit));
        }
        other => reply.send(Err(misrouted(&other))),
    }
}

/// A request that reached a handler not meant for it: a bug of the server.
fn misrouted(body: &RequestBody) -> ApiError {
    ApiError::new(
        ErrorCode::Internal,
        format!("misrouted request {}", body.kind()),
    )
}

/// The page size a listing asks for: 0 means the server's page, and no
/// more than the server's page is ever returned.
fn page_limit(shared: &Shared, asked: u32) -> usize {
    let page = shared.config.list_orders_page;
    let limit = if asked == 0 { page } else { asked.min(page) };
    usize::try_from(limit).unwrap_or(usize::MAX)
}
