//! Requests of a partner for a buyer reference it never used before: a
//! read stores nothing (the buyer has an empty cart and no orders), and the
//! reference is created ([`crate::accounts::partners::Partners::create`],
//! within the partner's caps) only by `CartAdd` or `Buy`, once the request
//! has passed the checks that need no buyer: the pay rate limits, the
//! lines, the products and their stock and sale windows. `Pay` of a new
//! buyer's cart is `EmptyCart`: it has none.

use super::{route, Caller};
use crate::accounts::auth::Acting;
use crate::error::{ApiError, ApiResult};
use crate::net::reply::ReplyTo;
use crate::sale::book::HoldAsk;
use crate::sale::intake;
use crate::state::Shared;
use flashsale_protocol::{
    CartView, ErrorCode, OrderLine, PartnerRef, ProductId, Reply, RequestBody,
};
use std::sync::Arc;

/// Handles `body` for the partner's new buyer `buyer`.
pub(super) fn handle(
    shared: &Arc<Shared>,
    caller: Caller<'_>,
    buyer: PartnerRef,
    body: RequestBody,
    reply: ReplyTo,
) {
    let empty_cart = || Ok(Reply::Cart(CartView { lines: Vec::new() }));
    match body {
        RequestBody::CartView | RequestBody::CartClear => reply.send(empty_cart()),
        RequestBody::CartRemove { product_id, qty } => {
            reply.send(super::cart::check_qty(qty).and_then(|()| {
                Err(ApiError::not_found(format!(
                    "product {product_id} is not in the cart"
                )))
            }))
        }
        RequestBody::GetOrder { id } => {
            reply.send(Err(ApiError::not_found(format!("no order {id}"))));
        }
        RequestBody::ListOrders { .. } => reply.send(Ok(Reply::Orders(Vec::new()))),
        RequestBody::Pay { .. } | RequestBody::HoldCart { .. } => {
            let empty = super::pay::within_limits(shared, &caller)
                .and_then(|()| Err(ApiError::new(ErrorCode::EmptyCart, "the cart is empty")));
            reply.send(empty);
        }
        RequestBody::PayHold { order_id, .. } | RequestBody::ReleaseHold { order_id } => {
            reply.send(Err(ApiError::not_found(format!("no order {order_id}"))));
        }
        RequestBody::CartAdd { product_id, qty } => {
            let added = check_cart_add(shared, product_id, qty)
                .and_then(|()| created(shared, caller, buyer));
            match added {
                Ok(caller) => route(shared, &caller, body, reply),
                Err(e) => reply.send(Err(e)),
            }
        }
        RequestBody::Buy {
            items,
            idempotency_key,
        } => buy(shared, caller, buyer, (items, idempotency_key, None), reply),
        RequestBody::HoldItems {
            items,
            idempotency_key,
            hold_ms,
        } => match super::pay::hold_ask(shared, hold_ms) {
            Ok(hold) => buy(
                shared,
                caller,
                buyer,
                (items, idempotency_key, Some(hold)),
                reply,
            ),
            Err(e) => reply.send(Err(e)),
        },
        // Requests that use no buyer (the shop window).
        other => route(shared, &caller, other, reply),
    }
}

/// `Buy` or `HoldItems` for a new buyer: created once the request passed
/// its checks.
fn buy(
    shared: &Arc<Shared>,
    caller: Caller<'_>,
    buyer: PartnerRef,
    (items, idempotency_key, hold): (Vec<OrderLine>, uuid::Uuid, Option<HoldAsk>),
    reply: ReplyTo,
) {
    let checked = super::pay::within_limits(shared, &caller)
        .and_then(|()| intake::normalize_lines(items))
        .and_then(|items| intake::check_rules(shared, &items, |_| 0).map(|()| items))
        .and_then(|items| created(shared, caller, buyer).map(|caller| (caller, items)));
    match checked {
        Ok((caller, items)) => match &caller.acting {
            Some(acting) => {
                super::pay::submit_express(shared, acting, items, idempotency_key, hold, reply);
            }
            None => reply.send(Err(ApiError::internal("a created buyer has no account"))),
        },
        Err(e) => {
            crate::telemetry::intake_refused(e.code);
            reply.send(Err(e));
        }
    }
}

/// Creates the reference: the caller, now acting for its buyer account.
fn created<'a>(shared: &Shared, caller: Caller<'a>, buyer: PartnerRef) -> ApiResult<Caller<'a>> {
    let user_id = shared
        .accounts
        .partners
        .create(buyer.partner_id, &buyer.buyer_ref)?;
    Ok(Caller {
        acting: Some(Acting {
            user_id,
            partner: Some(buyer),
        }),
        new_buyer: None,
        ..caller
    })
}

/// What `CartAdd` checks that needs no buyer: the quantity, the product,
/// and stock for the line (an empty cart's line is just `qty`).
fn check_cart_add(shared: &Shared, product_id: ProductId, qty: u32) -> ApiResult<()> {
    super::cart::check_qty(qty)?;
    let product = shared
        .sale
        .catalog
        .get(product_id)
        .ok_or_else(|| ApiError::not_found(format!("no product {product_id}")))?;
    let available = product.stock();
    if u64::from(qty) > available {
        return Err(ApiError::new(
            ErrorCode::SoldOut,
            format!("only {available} units of product {product_id} are left"),
        ));
    }
    Ok(())
}
