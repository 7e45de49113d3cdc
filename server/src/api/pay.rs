//! Pay (the cart as one order) and Buy (express checkout), and their holds
//! (`HoldCart`, `HoldItems`): the pay rate limits, checked here and only
//! here, then intake.

use super::Caller;
use crate::accounts::auth::Acting;
use crate::error::ApiError;
use crate::net::reply::ReplyTo;
use crate::sale::book::HoldAsk;
use crate::sale::carts::Checkout;
use crate::sale::intake;
use crate::state::Shared;
use flashsale_protocol::{ErrorCode, OrderLine, OrderSource, MAX_HOLD_MS};
use uuid::Uuid;

/// The hold a `HoldCart`/`HoldItems` asks for (`hold_ms` checked: 1 ms to
/// [`MAX_HOLD_MS`]); `None` for `Pay`/`Buy`.
///
/// # Errors
/// `BadRequest` for a time out of range.
pub(super) fn hold_ask(
    shared: &Shared,
    hold_ms: Option<u64>,
) -> Result<HoldAsk, crate::error::ApiError> {
    if hold_ms.is_some_and(|ms| ms == 0 || ms > MAX_HOLD_MS) {
        return Err(crate::error::ApiError::bad_request(format!(
            "hold_ms must be 1 to {MAX_HOLD_MS}"
        )));
    }
    Ok(HoldAsk {
        requested_ms: hold_ms,
        default_ms: shared.sale.catalog.default_hold_ms(),
    })
}

/// `Pay`: the buyer's cart as one order (`HoldCart`: as a hold). The cart
/// is checked out once: a pay with another key while one is in flight is
/// answered `EmptyCart` (see [`crate::sale::carts`]).
pub(super) fn pay(
    shared: &Shared,
    caller: &Caller<'_>,
    idempotency_key: Uuid,
    hold: Option<HoldAsk>,
    reply: ReplyTo,
) {
    let acting = match within_limits(shared, caller).and_then(|()| caller.buyer()) {
        Ok(acting) => acting,
        Err(e) => return reply.send(Err(e)),
    };
    let user = acting.user_id;
    let source = if hold.is_some() {
        OrderSource::CartHold
    } else {
        OrderSource::Cart
    };
    // A retry of an intent that already made its order gets it, whatever
    // the cart holds now: the request is "pay my cart", not its lines.
    let retry = |refusal| {
        shared
            .sale
            .orders
            .retry_or(user, idempotency_key, (source, &[]), refusal)
    };
    let checkout = match shared.sale.carts.begin_checkout(user, idempotency_key) {
        // A retry holds the mark too, so the mark outlives the first pay of
        // the key if that one is refused while the retry is queued.
        Checkout::Started(guard) | Checkout::Retry(guard) => Some(guard),
        Checkout::Busy => {
            let busy = ApiError::new(
                ErrorCode::EmptyCart,
                "the cart is being checked out by another pay",
            );
            return reply.send(retry(busy));
        }
    };
    let cart = match shared.sale.carts.get(user) {
        Ok(cart) => cart,
        Err(e) => return reply.send(Err(e.into())),
    };
    if cart.lines.is_empty() {
        // The cart may be empty because this very intent was confirmed.
        drop(checkout);
        return reply.send(retry(ApiError::new(
            ErrorCode::EmptyCart,
            "the cart is empty",
        )));
    }
    intake::submit_order(
        shared,
        acting,
        cart.lines,
        (source, hold),
        idempotency_key,
        checkout,
        reply,
    );
}

/// `Buy`: express checkout of `items` (`HoldItems`: as a hold); the cart
/// is untouched.
pub(super) fn buy(
    shared: &Shared,
    caller: &Caller<'_>,
    items: Vec<OrderLine>,
    idempotency_key: Uuid,
    hold: Option<HoldAsk>,
    reply: ReplyTo,
) {
    match within_limits(shared, caller).and_then(|()| caller.buyer()) {
        Ok(acting) => submit_express(shared, acting, items, idempotency_key, hold, reply),
        Err(e) => reply.send(Err(e)),
    }
}

/// Submits an express order (or hold) of `acting` whose pay limits were
/// checked.
pub(super) fn submit_express(
    shared: &Shared,
    acting: &Acting,
    items: Vec<OrderLine>,
    idempotency_key: Uuid,
    hold: Option<HoldAsk>,
    reply: ReplyTo,
) {
    let source = if hold.is_some() {
        OrderSource::ExpressHold
    } else {
        OrderSource::Express
    };
    intake::submit_order(
        shared,
        acting,
        items,
        (source, hold),
        idempotency_key,
        None,
        reply,
    );
}

/// The pay rate limits: the connection's, then the account's (a partner's
/// buyers share their partner's bucket). Over either: `Overloaded` with
/// `retry_after_ms`.
pub(super) fn within_limits(shared: &Shared, caller: &Caller<'_>) -> Result<(), ApiError> {
    let session = caller.session;
    caller
        .connection_pay_limit
        .check()
        .and_then(|()| shared.edge.pay_limits.check(session.user_id, session.role))
        .map_err(|wait| {
            crate::telemetry::rate_limited();
            ApiError::rate_limited(wait)
        })
}
