//! Pay (the cart as one order) and Buy (express checkout): the pay rate
//! limits, checked here and only here, then intake.

use super::Caller;
use crate::error::ApiError;
use crate::net::reply::ReplyTo;
use crate::sale::intake;
use crate::state::Shared;
use flashsale_protocol::{ErrorCode, OrderLine, OrderSource};
use uuid::Uuid;

/// `Pay`: the buyer's cart as one order.
pub(super) fn pay(shared: &Shared, caller: &Caller<'_>, idempotency_key: Uuid, reply: ReplyTo) {
    let acting = match within_limits(shared, caller).and_then(|()| caller.buyer()) {
        Ok(acting) => acting,
        Err(e) => return reply.send(Err(e)),
    };
    let cart = match shared.sale.carts.get(acting.user_id) {
        Ok(cart) => cart,
        Err(e) => return reply.send(Err(e.into())),
    };
    if cart.lines.is_empty() {
        // The cart may be empty because this very intent was confirmed: a retry gets its order.
        let empty = ApiError::new(ErrorCode::EmptyCart, "the cart is empty");
        return reply.send(
            shared
                .sale
                .orders
                .retry_or(acting.user_id, idempotency_key, empty),
        );
    }
    intake::submit_order(
        shared,
        acting,
        cart.lines,
        OrderSource::Cart,
        idempotency_key,
        reply,
    );
}

/// `Buy`: express checkout of `items`; the cart is untouched.
pub(super) fn buy(
    shared: &Shared,
    caller: &Caller<'_>,
    items: Vec<OrderLine>,
    idempotency_key: Uuid,
    reply: ReplyTo,
) {
    match within_limits(shared, caller).and_then(|()| caller.buyer()) {
        Ok(acting) => intake::submit_order(
            shared,
            acting,
            items,
            OrderSource::Express,
            idempotency_key,
            reply,
        ),
        Err(e) => reply.send(Err(e)),
    }
}

/// The pay rate limits: the connection's, then the account's (a partner's
/// buyers share their partner's bucket). Over either: `Overloaded` with
/// `retry_after_ms`.
fn within_limits(shared: &Shared, caller: &Caller<'_>) -> Result<(), ApiError> {
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
