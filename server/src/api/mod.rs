//! Handlers of the requests that need a session: products, cart, pay,
//! orders and admin. Each produces exactly one answer on `reply`.

use crate::accounts::auth::{Acting, Session};
use crate::error::{ApiError, ApiResult};
use crate::net::reply::ReplyTo;
use crate::sale::book::RulesChange;
use crate::sale::intake;
use crate::sale::queues::Command;
use crate::state::Shared;
use flashsale_protocol::{
    ErrorCode, OrderSource, OrderStatus, ProductId, Reply, RequestBody, Role, StatsReport,
    MAX_LINE_QTY, MAX_TEXT_LEN,
};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Handles a request of a logged-in session. `acting` is the buyer the
/// request acts for; `None` only for a partner that named no buyer.
pub(crate) async fn handle(
    shared: &Arc<Shared>,
    session: &Session,
    acting: Option<Acting>,
    body: RequestBody,
    reply: ReplyTo,
) {
    if matches!(body, RequestBody::Pay { .. } | RequestBody::Buy { .. }) {
        if let Err(wait) = shared.pay_limits.check(session.user_id, session.role) {
            crate::telemetry::rate_limited();
            return reply.send(Err(ApiError::rate_limited(wait)));
        }
    }
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
            rules,
        } => {
            if let Err(e) = require_admin(session).and_then(|()| validate_name(&name)) {
                return reply.send(Err(e));
            }
            let command = Command::CreateProduct {
                name,
                price_cents,
                stock,
                rules,
                reply,
            };
            return shared.shards.submit(ProductId(0), command);
        }
        RequestBody::Restock { product_id, qty } => {
            return submit_product_change(shared, session, product_id, reply, |reply| {
                Command::Restock {
                    product_id,
                    qty,
                    reply,
                }
            });
        }
        RequestBody::SetStock { product_id, stock } => {
            return submit_product_change(shared, session, product_id, reply, |reply| {
                Command::SetStock {
                    product_id,
                    stock,
                    reply,
                }
            });
        }
        RequestBody::SetLimit {
            product_id,
            max_per_buyer,
        } => {
            return submit_product_change(shared, session, product_id, reply, |reply| {
                Command::ChangeRules {
                    product_id,
                    change: RulesChange::Limit(max_per_buyer),
                    reply,
                }
            });
        }
        RequestBody::SetWindow {
            product_id,
            opens_at_ms,
            closes_at_ms,
        } => {
            return submit_product_change(shared, session, product_id, reply, |reply| {
                Command::ChangeRules {
                    product_id,
                    change: RulesChange::Window {
                        opens_at_ms,
                        closes_at_ms,
                    },
                    reply,
                }
            });
        }
        RequestBody::CancelOrder { id } => {
            let order = match require_admin(session).and_then(|()| {
                shared
                    .orders
                    .get(id)
                    .ok_or_else(|| ApiError::not_found(format!("no order {id}")))
            }) {
                Ok(order) => order,
                Err(e) => return reply.send(Err(e)),
            };
            return match order.status {
                OrderStatus::Cancelled => reply.send(Ok(Reply::Order(order))),
                OrderStatus::Confirmed => {
                    let route = order.items.first().map_or(ProductId(0), |l| l.product_id);
                    shared.shards.submit(
                        route,
                        Command::CancelOrder {
                            order_id: order.id,
                            user_id: order.user_id,
                            items: order.items,
                            reply,
                        },
                    )
                }
                other => reply.send(Err(ApiError::bad_request(format!(
                    "only a confirmed order can be cancelled; order {id} is {other:?}"
                )))),
            };
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
            .map(|()| {
                // Its sessions end now, also on live connections.
                shared.notifier.end_api_key(&key_id);
                Reply::ApiKeyRevoked { key_id }
            }),
        other => handle_now(shared, session, acting, other),
    };
    reply.send(result);
}

/// Queues an admin's change of an existing product on the product's shard,
/// so it takes effect in arrival order with the product's orders.
fn submit_product_change(
    shared: &Shared,
    session: &Session,
    product_id: ProductId,
    reply: ReplyTo,
    command: impl FnOnce(ReplyTo) -> Command,
) {
    if let Err(e) = require_admin(session) {
        return reply.send(Err(e));
    }
    if shared.catalog.get(product_id).is_none() {
        return reply.send(Err(ApiError::not_found(format!("no product {product_id}"))));
    }
    shared.shards.submit(product_id, command(reply));
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
                // An operator sees every order.
                Some(_) if session.role == Role::Admin => true,
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
            let limit = page_limit(shared, limit);
            Ok(Reply::Orders(match &acting {
                Some(acting) => shared.orders.list_for_user(acting.user_id, after, limit),
                None => shared
                    .orders
                    .list_for_partner(session.user_id, after, limit),
            }))
        }
        RequestBody::Stats => {
            require_admin(session)?;
            Ok(Reply::Stats(stats(shared)))
        }
        RequestBody::ListUsers { after, limit } => {
            require_admin(session)?;
            let limit = page_limit(shared, limit);
            Ok(Reply::Users(
                shared.auth.list_users(after.as_deref(), limit)?,
            ))
        }
        RequestBody::QueryOrders {
            after,
            limit,
            product_id,
            status,
        } => {
            require_admin(session)?;
            let limit = page_limit(shared, limit);
            let (orders, next_after) = shared.orders.query(after, limit, product_id, status);
            Ok(Reply::OrderPage { orders, next_after })
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
        | RequestBody::RevokeApiKey { .. }
        | RequestBody::SetStock { .. }
        | RequestBody::SetLimit { .. }
        | RequestBody::SetWindow { .. }
        | RequestBody::CancelOrder { .. }
        | RequestBody::Ping => Err(ApiError::new(ErrorCode::Internal, "misrouted request")),
    }
}

/// The page size a listing asks for: 0 means the server's page, and no
/// more than the server's page is ever returned.
fn page_limit(shared: &Shared, asked: u32) -> usize {
    let page = shared.config.list_orders_page;
    let limit = if asked == 0 { page } else { asked.min(page) };
    usize::try_from(limit).unwrap_or(usize::MAX)
}

/// The operators' view of the server.
fn stats(shared: &Shared) -> StatsReport {
    let counts = shared.orders.counts();
    let products = shared.catalog.stats();
    let refused_at_intake = products.iter().map(|p| p.refused_at_intake).sum();
    let decided = shared.counters.decided.load(Ordering::Relaxed);
    StatsReport {
        products,
        connections: shared.connections.load(Ordering::Relaxed),
        orders_confirmed: counts.confirmed,
        orders_rejected: counts.rejected,
        orders_cancelled: counts.cancelled,
        refused_at_intake,
        decisions: decided.saturating_add(refused_at_intake),
        queue_depth: shared.shards.depth(),
        uptime_ms: u64::try_from(shared.counters.started.elapsed().as_millis()).unwrap_or(u64::MAX),
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
