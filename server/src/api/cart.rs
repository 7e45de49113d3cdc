//! The buyer's cart: add, remove, view, clear. A cart line is checked
//! against the stock now, never reserved: only the sequencer takes stock.

use super::Caller;
use crate::error::{ApiError, ApiResult};
use crate::state::Shared;
use flashsale_protocol::{ProductId, Reply, MAX_LINE_QTY};

/// `CartAdd`: the line's new total must not exceed the stock now.
pub(super) fn add(
    shared: &Shared,
    caller: &Caller<'_>,
    product_id: ProductId,
    qty: u32,
) -> ApiResult<Reply> {
    let user = caller.buyer()?.user_id;
    check_qty(qty)?;
    let product = shared
        .sale
        .catalog
        .get(product_id)
        .ok_or_else(|| ApiError::not_found(format!("no product {product_id}")))?;
    let cart = shared
        .sale
        .carts
        .add(user, product_id, qty, product.stock())?;
    Ok(Reply::Cart(cart.view()))
}

/// `CartRemove`: removing more than the line holds removes the line.
pub(super) fn remove(
    shared: &Shared,
    caller: &Caller<'_>,
    product_id: ProductId,
    qty: u32,
) -> ApiResult<Reply> {
    let user = caller.buyer()?.user_id;
    check_qty(qty)?;
    Ok(Reply::Cart(
        shared.sale.carts.remove(user, product_id, qty)?.view(),
    ))
}

/// `CartView`.
pub(super) fn view(shared: &Shared, caller: &Caller<'_>) -> ApiResult<Reply> {
    let user = caller.buyer()?.user_id;
    Ok(Reply::Cart(shared.sale.carts.get(user)?.view()))
}

/// `CartClear`.
pub(super) fn clear(shared: &Shared, caller: &Caller<'_>) -> ApiResult<Reply> {
    let user = caller.buyer()?.user_id;
    Ok(Reply::Cart(shared.sale.carts.clear(user)?.view()))
}

/// A cart line's quantity: 1 to [`MAX_LINE_QTY`].
pub(super) fn check_qty(qty: u32) -> ApiResult<()> {
    if qty == 0 || qty > MAX_LINE_QTY {
        return Err(ApiError::bad_request(format!(
            "quantity must be 1 to {MAX_LINE_QTY}"
        )));
    }
    Ok(())
}
