//! Operators' requests. The caller is an admin (checked once, in
//! [`super::handle`]). Product changes and cancellations go through the
//! product's queue, so they take effect in arrival order with its orders;
//! account changes hash passwords on the blocking pool.

use super::{misrouted, page_limit};
use crate::error::{ApiError, ApiResult};
use crate::net::reply::ReplyTo;
use crate::sale::book::RulesChange;
use crate::sale::queues::Command;
use crate::state::Shared;
use flashsale_protocol::{
    OrderId, OrderStatus, ProductId, Reply, RequestBody, StatsReport, MAX_TEXT_LEN,
};
use std::sync::Arc;

/// Handles an admin-only request ([`RequestBody::is_admin`]).
pub(super) async fn handle(shared: &Arc<Shared>, body: RequestBody, reply: ReplyTo) {
    match body {
        RequestBody::CreateProduct {
            name,
            price_cents,
            stock,
            rules,
        } => create_product(shared, name, price_cents, stock, rules, reply),
        RequestBody::Restock { product_id, qty } => {
            change_product(shared, product_id, reply, |reply| Command::Restock {
                product_id,
                qty,
                reply,
            });
        }
        RequestBody::SetStock { product_id, stock } => {
            change_product(shared, product_id, reply, |reply| Command::SetStock {
                product_id,
                stock,
                reply,
            });
        }
        RequestBody::SetLimit {
            product_id,
            max_per_buyer,
        } => change_rules(shared, product_id, RulesChange::Limit(max_per_buyer), reply),
        RequestBody::SetWindow {
            product_id,
            opens_at_ms,
            closes_at_ms,
        } => {
            let change = RulesChange::Window {
                opens_at_ms,
                closes_at_ms,
            };
            change_rules(shared, product_id, change, reply);
        }
        RequestBody::SetHoldTime {
            product_id,
            hold_ms,
        } => change_product(shared, product_id, reply, |reply| Command::SetHoldTime {
            product_id,
            hold_ms,
            reply,
        }),
        RequestBody::CancelOrder { id } => cancel_order(shared, id, reply),
        other => reply.send(handle_accounts_and_reads(shared, other).await),
    }
}

/// The admin requests answered without a queue: accounts, keys, listings.
async fn handle_accounts_and_reads(shared: &Arc<Shared>, body: RequestBody) -> ApiResult<Reply> {
    match body {
        RequestBody::CreateUser {
            username,
            password,
            role,
        } => {
            let user = shared
                .hash_blocking(move |shared| {
                    shared.accounts.auth.create_user(&username, &password, role)
                })
                .await?;
            // Security writes are on disk before they are answered.
            shared.syncer.durable().await?;
            Ok(Reply::UserCreated {
                user_id: user.id,
                username: user.username,
                role: user.role,
            })
        }
        RequestBody::CreateApiKey { partner } => {
            let (partner_id, key_id, key) = shared
                .hash_blocking(move |shared| shared.accounts.auth.create_api_key(&partner))
                .await?;
            shared.syncer.durable().await?;
            Ok(Reply::ApiKeyCreated {
                partner_id,
                key_id,
                key,
            })
        }
        RequestBody::RevokeApiKey { key_id } => {
            // The sled write first, then the registered connections, then
            // the fdatasync, then the answer (see `net::connection::session`
            // for why in that order): a failed sync cannot skip the ending.
            shared.accounts.auth.revoke_api_key(&key_id)?;
            // Its sessions end now, also on live connections.
            shared.edge.notifier.end_api_key(&key_id);
            shared.syncer.durable().await?;
            Ok(Reply::ApiKeyRevoked { key_id })
        }
        RequestBody::SetUserDisabled { username, disabled } => {
            let ended = shared.accounts.auth.set_disabled(&username, disabled)?;
            Ok(Reply::User(end_sessions(shared, ended).await?.0))
        }
        RequestBody::SetPassword { username, password } => {
            let ended = shared
                .hash_blocking(move |shared| {
                    shared.accounts.auth.set_password(&username, &password)
                })
                .await?;
            Ok(Reply::User(end_sessions(shared, ended).await?.0))
        }
        RequestBody::EndSessions { username } => {
            let ended = shared.accounts.auth.end_sessions(&username)?;
            let (user, sessions) = end_sessions(shared, ended).await?;
            Ok(Reply::SessionsEnded {
                user_id: user.id,
                sessions,
            })
        }
        RequestBody::Stats => Ok(Reply::Stats(stats(shared))),
        RequestBody::ClusterStatus => Ok(Reply::ClusterStatus(
            shared.cluster.as_ref().map(|c| c.report()),
        )),
        RequestBody::ListUsers { after, limit } => {
            let limit = page_limit(shared, limit);
            Ok(Reply::Users(
                shared.accounts.auth.list_users(after.as_deref(), limit)?,
            ))
        }
        RequestBody::QueryOrders {
            after,
            limit,
            product_id,
            status,
        } => {
            let limit = page_limit(shared, limit);
            // Up to `MAX_QUERY_SCAN` table reads: off the async workers.
            let shared = Arc::clone(shared);
            let (orders, next_after) = tokio::task::spawn_blocking(move || {
                shared.sale.orders.query(after, limit, product_id, status)
            })
            .await
            .map_err(|e| ApiError::internal(format!("order query failed: {e}")))??;
            Ok(Reply::OrderPage { orders, next_after })
        }
        other => Err(misrouted(&other)),
    }
}

/// After an account change that ended its sessions (already deleted and
/// the account's epoch bumped in sled): closes the account's live
/// connections, then waits until the change is on disk (ended first, so a
/// failed sync cannot skip it). Returns the account and how many sessions
/// ended.
async fn end_sessions(
    shared: &Shared,
    ended: crate::accounts::auth::Ended,
) -> ApiResult<(flashsale_protocol::UserInfo, u64)> {
    if ended.all_ended {
        shared.edge.notifier.end_user(ended.user.id);
    }
    shared.syncer.durable().await?;
    let count = u64::try_from(ended.sessions.len()).unwrap_or(u64::MAX);
    Ok((ended.user, count))
}

/// `CreateProduct`: queued like every stock change (on the queue of no
/// product in particular), so ids follow arrival order.
fn create_product(
    shared: &Shared,
    name: String,
    price_cents: u64,
    stock: u64,
    rules: flashsale_protocol::SaleRules,
    reply: ReplyTo,
) {
    if let Err(e) = validate_name(&name) {
        return reply.send(Err(e));
    }
    let command = Command::CreateProduct {
        name,
        price_cents,
        stock,
        rules,
        reply,
    };
    shared.sale.queues.submit(ProductId(0), command);
}

/// `SetLimit` and `SetWindow`: in arrival order with the product's orders.
fn change_rules(shared: &Shared, product_id: ProductId, change: RulesChange, reply: ReplyTo) {
    change_product(shared, product_id, reply, |reply| Command::ChangeRules {
        product_id,
        change,
        reply,
    });
}

/// Queues a change of an existing product on the product's shard, so it
/// takes effect in arrival order with the product's orders.
fn change_product(
    shared: &Shared,
    product_id: ProductId,
    reply: ReplyTo,
    command: impl FnOnce(ReplyTo) -> Command,
) {
    if shared.sale.catalog.get(product_id).is_none() {
        return reply.send(Err(ApiError::not_found(format!("no product {product_id}"))));
    }
    shared.sale.queues.submit(product_id, command(reply));
}

/// `CancelOrder`: a confirmed order's units go back in arrival order; a
/// cancelled order is answered as it stands; any other status is refused.
fn cancel_order(shared: &Shared, id: OrderId, reply: ReplyTo) {
    let order = match shared.sale.orders.get(id) {
        Ok(Some(order)) => order,
        Ok(None) => return reply.send(Err(ApiError::not_found(format!("no order {id}")))),
        Err(e) => return reply.send(Err(e)),
    };
    match order.status {
        OrderStatus::Cancelled => reply.send(Ok(Reply::Order(order))),
        OrderStatus::Confirmed => {
            let route = order.items.first().map_or(ProductId(0), |l| l.product_id);
            let command = Command::CancelOrder {
                order_id: order.id,
                user_id: order.user_id,
                items: order.items,
                reply,
            };
            shared.sale.queues.submit(route, command);
        }
        other => reply.send(Err(ApiError::bad_request(format!(
            "only a confirmed order can be cancelled; order {id} is {other:?}"
        )))),
    }
}

/// The operators' view of the server.
fn stats(shared: &Shared) -> StatsReport {
    let counts = shared.sale.orders.counts();
    let products = shared.sale.catalog.stats();
    let refused_at_intake = products.iter().map(|p| p.refused_at_intake).sum();
    let decided = shared.sale.decided();
    StatsReport {
        products,
        connections: shared.edge.connections(),
        orders_confirmed: counts.confirmed,
        orders_rejected: counts.rejected,
        orders_cancelled: counts.cancelled,
        refused_at_intake,
        decisions: decided.saturating_add(refused_at_intake),
        queue_depth: shared.sale.queues.depth(),
        uptime_ms: u64::try_from(shared.started.elapsed().as_millis()).unwrap_or(u64::MAX),
        partner_buyers: shared.accounts.partners.total(),
        storage: storage_stats(shared),
        sessions: shared.accounts.auth.session_count(),
        holds: shared.sale.hold_stats(),
    }
}

fn validate_name(name: &str) -> ApiResult<()> {
    if name.trim().is_empty() || name.len() > MAX_TEXT_LEN || name.chars().any(char::is_control) {
        return Err(ApiError::bad_request(format!(
            "a product name has 1 to {MAX_TEXT_LEN} bytes and no control characters"
        )));
    }
    Ok(())
}

/// Where the journal, the tables and the checkpoint stand.
fn storage_stats(shared: &Shared) -> flashsale_protocol::StorageStats {
    let progress = &shared.sale.progress;
    // One pass over the journal tree (bounded by the checkpoint interval
    // and the materialiser's lag); a failed read counts what it read.
    let (mut journal_records, mut journal_bytes) = (0u64, 0u64);
    for (key, value) in shared.store.journal.iter().map_while(Result::ok) {
        journal_records += 1;
        journal_bytes += (key.len() + value.len()) as u64;
    }
    flashsale_protocol::StorageStats {
        journal_seq: progress.published(),
        materialised_seq: progress.materialised(),
        checkpoint_seq: progress.checkpointed(),
        journal_records,
        journal_bytes,
        orders_unmaterialised: shared.sale.orders.pending_len() as u64,
    }
}
