//! Reading orders: one by id, or a page of the caller's. A buyer sees its
//! own; a partner without a buyer sees all its buyers'; an admin reads any
//! order by id.

use super::{page_limit, Caller};
use crate::error::{ApiError, ApiResult};
use crate::state::Shared;
use flashsale_protocol::{OrderId, OrderInfo, Reply, Role};

/// `GetOrder`: `NotFound` for an order the caller may not see.
pub(super) fn get(shared: &Shared, caller: &Caller<'_>, id: OrderId) -> ApiResult<Reply> {
    shared
        .sale
        .orders
        .get(id)?
        .filter(|order| may_see(caller, order))
        .map(Reply::Order)
        .ok_or_else(|| ApiError::not_found(format!("no order {id}")))
}

/// `ListOrders`: the caller's orders by id, after `after`.
pub(super) fn list(
    shared: &Shared,
    caller: &Caller<'_>,
    after: Option<OrderId>,
    limit: u32,
) -> ApiResult<Reply> {
    let limit = page_limit(shared, limit);
    Ok(Reply::Orders(match &caller.acting {
        Some(acting) => shared
            .sale
            .orders
            .list_for_user(acting.user_id, after, limit)?,
        None => shared
            .sale
            .orders
            .list_for_partner(caller.session.user_id, after, limit)?,
    }))
}

fn may_see(caller: &Caller<'_>, order: &OrderInfo) -> bool {
    match &caller.acting {
        // An operator sees every order.
        Some(_) if caller.session.role == Role::Admin => true,
        Some(acting) => order.user_id == acting.user_id,
        // A partner without a buyer sees the orders of all its buyers.
        None => order
            .partner
            .as_ref()
            .is_some_and(|p| p.partner_id == caller.session.user_id),
    }
}
