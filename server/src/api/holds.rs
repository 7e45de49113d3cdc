//! `PayHold` and `ReleaseHold`: checked here (the payment reference, the
//! order is the caller's), decided by the sequencer in arrival order on the
//! shard of the order's first product. (`HoldCart` and `HoldItems` go
//! through [`super::pay`] with a hold.)

use super::Caller;
use crate::error::ApiError;
use crate::net::reply::ReplyTo;
use crate::sale::queues::Command;
use crate::state::Shared;
use crate::store::now_ms;
use flashsale_protocol::{OrderId, OrderInfo, ProductId, Role, UserId, MAX_PAYMENT_REF_LEN};

/// `PayHold`: a pay request (the pay rate limits apply).
pub(super) fn pay(
    shared: &Shared,
    caller: &Caller<'_>,
    order_id: OrderId,
    payment_ref: String,
    reply: ReplyTo,
) {
    let checked = check_payment_ref(&payment_ref)
        .and_then(|()| super::pay::within_limits(shared, caller))
        .and_then(|()| caller.buyer())
        .and_then(|acting| owned(shared, order_id, Some(acting.user_id)));
    match checked {
        Ok(order) => shared.sale.queues.submit(
            route(&order),
            Command::PayHold {
                arrived_ms: now_ms(),
                order_id,
                user_id: order.user_id,
                payment_ref,
                reply,
            },
        ),
        Err(e) => reply.send(Err(e)),
    }
}

/// `ReleaseHold`: by the buyer, its partner (within the pay rate limits),
/// or an admin.
pub(super) fn release(shared: &Shared, caller: &Caller<'_>, order_id: OrderId, reply: ReplyTo) {
    let user = if caller.session.role == Role::Admin {
        Ok(None)
    } else {
        super::pay::within_limits(shared, caller)
            .and_then(|()| caller.buyer())
            .map(|acting| Some(acting.user_id))
    };
    let checked = user.and_then(|user| owned(shared, order_id, user).map(|order| (order, user)));
    match checked {
        Ok((order, user_id)) => shared.sale.queues.submit(
            route(&order),
            Command::ReleaseHold {
                arrived_ms: now_ms(),
                order_id,
                user_id,
                reply,
            },
        ),
        Err(e) => reply.send(Err(e)),
    }
}

/// 1 to [`MAX_PAYMENT_REF_LEN`] bytes, no control characters.
fn check_payment_ref(payment_ref: &str) -> Result<(), ApiError> {
    if payment_ref.is_empty()
        || payment_ref.len() > MAX_PAYMENT_REF_LEN
        || payment_ref.chars().any(char::is_control)
    {
        return Err(ApiError::bad_request(format!(
            "payment_ref must be 1 to {MAX_PAYMENT_REF_LEN} bytes without control characters"
        )));
    }
    Ok(())
}

/// The published order, if it exists and is `user`'s (`None`: anyone's).
fn owned(shared: &Shared, order_id: OrderId, user: Option<UserId>) -> Result<OrderInfo, ApiError> {
    match shared.sale.orders.get(order_id)? {
        Some(order) if user.is_none_or(|u| u == order.user_id) => Ok(order),
        _ => Err(ApiError::not_found(format!("no order {order_id}"))),
    }
}

/// The shard of a hold's command: its first product's, as its order's.
fn route(order: &OrderInfo) -> ProductId {
    order.items.first().map_or(ProductId(0), |l| l.product_id)
}
