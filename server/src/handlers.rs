//! Handlers of the requests that need a session: products, cart, pay,
//! orders and admin. Each produces exactly one answer on `reply`.

use crate::auth::{Acting, Session};
use crate::error::{ApiError, ApiResult};
use crate::intake;
use crate::reply::ReplyTo;
use crate::shard::Command;
use crate::state::Shared;
use flashsale_protocol::{
    ErrorCode, OrderSource, ProductId, Reply, RequestBody, Role, StatsReport, MAX_LINE_QTY,
    MAX_TEXT_LEN,
};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Handles a request of a logged-in session. `acting` is the buyer the
/// request acts for; `None` only for a partner that named no buyer.
pub async fn handle(
    shared: &Arc<Shared>,
    session: &Session,
    acting: Option<Acting>,
    body: RequestBody,
    reply: ReplyTo,
) {
    let result = match body {
        RequestBody::Pay { idempotency_key } => {
            let acting = match need_buyer(acting) {
                Ok(acting) => acting,
                Err(e) => return reply.send(Err(e)),
            };
            let cart = match shared.carts.get(acting.user_id) {
                Ok(cart) => cart,
                Err(e) => return reply.send(Err(e.into())),
            };
            if cart.lines.is_empty() {
                // The cart may be empty because this very intent was confirmed: a retry gets its order.
                return reply.send(
                    match shared.orders.find_by_key(acting.user_id, idempotency_key) {
                        Some(order) => Ok(Reply::Accepted(order)),
                        None => Err(ApiError::new(ErrorCode::EmptyCart, "the cart is empty")),
                    },
                );
            }
            return intake::submit_order(
                shared,
                &acting,
                cart.lines,
                OrderSource::Cart,
                idempotency_key,
                reply,
            );
        }
        RequestBody::Buy {
            items,
            idempotency_key,
        } => {
            return match need_buyer(acting) {
                Ok(acting) => intake::submit_order(
                    shared,
                    &acting,
                    items,
                    OrderSource::Express,
                    idempotency_key,
                    reply,
                ),
                Err(e) => reply.send(Err(e)),
            };
        }
        RequestBody::CreateProduct {
            name,
            price_cents,
            stock,
            rules: _,
        } => {
            if let Err(e) = require_admin(session).and_then(|()| validate_name(&name)) {
                return reply.send(Err(e));
            }
            let command = Command::CreateProduct {
                name,
                price_cents,
                stock,
                reply,
            };
            return shared.shards.submit(ProductId(0), command);
        }
        RequestBody::Restock { product_id, qty } => {
            if let Err(e) = require_admin(session) {
                return reply.send(Err(e));
            }
            if shared.catalog.get(product_id).is_none() {
                return reply.send(Err(ApiError::not_found(format!("no product {product_id}"))));
            }
            return shared.shards.submit(
                product_id,
                Command::Restock {
                    product_id,
                    qty,
                    reply,
                },
            );
        }
        RequestBody::CreateUser {
            username,
            password,
            role,
        } => match require_admin(session) {
            Err(e) => Err(e),
            Ok(()) => {
                let created = shared
                    .hash_blocking(move |shared| {
                        shared.auth.create_user(&username, &password, role)
                    })
                    .await;
                created.map(|user| Reply::UserCreated {
                    user_id: user.id,
                    username: user.username,
                    role: user.role,
                })
            }
        },
        RequestBody::CreateApiKey { partner } => match require_admin(session) {
            Err(e) => Err(e),
            Ok(()) => {
                let created = shared
                    .hash_blocking(move |shared| shared.auth.create_api_key(&partner))
                    .await;
                created.map(|(partner_id, key_id, key)| Reply::ApiKeyCreated {
                    partner_id,
                    key_id,
                    key,
                })
            }
        },
        RequestBody::RevokeApiKey { key_id } => require_admin(session)
            .and_then(|()| shared.auth.revoke_api_key(&key_id))
            .map(|()| Reply::ApiKeyRevoked { key_id }),
        other => handle_now(shared, session, acting, other),
    };
    reply.send(result);
}

/// Requests answered from memory or one sled read-modify-write.
fn handle_now(
    shared: &Shared,
    session: &Session,
    acting: Option<Acting>,
    body: RequestBody,
) -> ApiResult<Reply> {
    match body {
        RequestBody::ListProducts => Ok(Reply::Products(shared.catalog.list())),
        RequestBody::GetProduct { id } => shared
            .catalog
            .get(id)
            .map(|p| Reply::Product(p.info()))
            .ok_or_else(|| ApiError::not_found(format!("no product {id}"))),
        RequestBody::CartAdd { product_id, qty } => {
            let user = need_buyer(acting)?.user_id;
            check_qty(qty)?;
            let product = shared
                .catalog
                .get(product_id)
                .ok_or_else(|| ApiError::not_found(format!("no product {product_id}")))?;
            let cart = shared.carts.add(user, product_id, qty, product.stock())?;
            Ok(Reply::Cart(cart.view()))
        }
        RequestBody::CartRemove { product_id, qty } => {
            let user = need_buyer(acting)?.user_id;
            check_qty(qty)?;
            Ok(Reply::Cart(
                shared.carts.remove(user, product_id, qty)?.view(),
            ))
        }
        RequestBody::CartView => Ok(Reply::Cart(
            shared.carts.get(need_buyer(acting)?.user_id)?.view(),
        )),
        RequestBody::CartClear => Ok(Reply::Cart(
            shared.carts.clear(need_buyer(acting)?.user_id)?.view(),
        )),
        RequestBody::GetOrder { id } => shared
            .orders
            .get(id)
            .filter(|order| match &acting {
                Some(acting) => order.user_id == acting.user_id,
                // A partner without a buyer sees the orders of all its buyers.
                None => order
                    .partner
                    .as_ref()
                    .is_some_and(|p| p.partner_id == session.user_id),
            })
            .map(Reply::Order)
            .ok_or_else(|| ApiError::not_found(format!("no order {id}"))),
        RequestBody::ListOrders { after, limit } => {
            let page = shared.config.list_orders_page;
            let limit = if limit == 0 { page } else { limit.min(page) };
            let limit = usize::try_from(limit).unwrap_or(usize::MAX);
            Ok(Reply::Orders(match &acting {
                Some(acting) => shared.orders.list_for_user(acting.user_id, after, limit),
                None => shared
                    .orders
                    .list_for_partner(session.user_id, after, limit),
            }))
        }
        RequestBody::Stats => {
            require_admin(session)?;
            let (orders_confirmed, orders_rejected) = shared.orders.counts();
            Ok(Reply::Stats(StatsReport {
                products: shared
                    .catalog
                    .list()
                    .into_iter()
                    .map(|product| flashsale_protocol::ProductStats {
                        product,
                        orders_confirmed: 0,
                        orders_rejected: 0,
                        orders_cancelled: 0,
                        refused_at_intake: 0,
                    })
                    .collect(),
                orders_cancelled: 0,
                refused_at_intake: 0,
                decisions: 0,
                uptime_ms: 0,
                connections: shared.connections.load(Ordering::Relaxed),
                orders_confirmed,
                orders_rejected,
                queue_depth: shared.shards.depth(),
            }))
        }
        RequestBody::CancelOrder { .. }
        | RequestBody::SetStock { .. }
        | RequestBody::SetLimit { .. }
        | RequestBody::SetWindow { .. }
        | RequestBody::ListUsers { .. }
        | RequestBody::QueryOrders { .. } => {
            require_admin(session)?;
            Err(ApiError::new(
                ErrorCode::NotImplemented,
                "order cancellation is not implemented yet",
            ))
        }
        // Session requests are handled by the connection; the rest above.
        RequestBody::Login { .. }
        | RequestBody::LoginApiKey { .. }
        | RequestBody::Resume { .. }
        | RequestBody::Logout
        | RequestBody::Pay { .. }
        | RequestBody::Buy { .. }
        | RequestBody::CreateProduct { .. }
        | RequestBody::Restock { .. }
        | RequestBody::CreateUser { .. }
        | RequestBody::CreateApiKey { .. }
        | RequestBody::RevokeApiKey { .. } => {
            Err(ApiError::new(ErrorCode::Internal, "misrouted request"))
        }
    }
}

/// The buyer a cart or order request acts for.
fn need_buyer(acting: Option<Acting>) -> ApiResult<Acting> {
    acting.ok_or_else(|| {
        ApiError::bad_request("a partner session must name the buyer in on_behalf_of")
    })
}

fn require_admin(session: &Session) -> ApiResult<()> {
    if session.role == Role::Admin {
        Ok(())
    } else {
        Err(ApiError::admin_only())
    }
}

fn check_qty(qty: u32) -> ApiResult<()> {
    if qty == 0 || qty > MAX_LINE_QTY {
        return Err(ApiError::bad_request(format!(
            "quantity must be 1 to {MAX_LINE_QTY}"
        )));
    }
    Ok(())
}

fn validate_name(name: &str) -> ApiResult<()> {
    if name.trim().is_empty() || name.len() > MAX_TEXT_LEN || name.chars().any(char::is_control) {
        return Err(ApiError::bad_request(format!(
            "a product name has 1 to {MAX_TEXT_LEN} bytes and no control characters"
        )));
    }
    Ok(())
}
