//! `orders …`: list every buyer's orders (filtered, page by page), show one, cancel one.

use crate::cli::OrdersCmd;
use crate::error::CliError;
use crate::output::{orders_table, print_json, print_table, OrderOut};
use crate::Ctx;
use anyhow::Context;
use flashsale_client::protocol::{OrderId, OrderInfo, ProductId, StatusFilter};

/// Runs one `orders` command.
///
/// # Errors
/// The server refused the request (`NotFound` for an unknown order) or the
/// connection failed.
pub async fn run(ctx: &Ctx, cmd: OrdersCmd) -> anyhow::Result<()> {
    match cmd {
        OrdersCmd::List {
            product,
            status,
            limit,
        } => {
            let orders = list(ctx, product.map(ProductId), status.map(Into::into), limit).await?;
            if ctx.json {
                print_json(&orders.iter().map(OrderOut::from).collect::<Vec<_>>())
            } else {
                print_table(&orders_table(&orders), "no orders")
            }
        }
        OrdersCmd::Show { id } => {
            // An admin's GetOrder reads any buyer's order.
            let order = ctx
                .client
                .order(OrderId(id))
                .await
                .with_context(|| format!("cannot show order {id}"))?;
            print_order(ctx, &order)
        }
        OrdersCmd::Cancel { id } => {
            let order = ctx
                .client
                .cancel_order(OrderId(id))
                .await
                .with_context(|| format!("cannot cancel order {id}"))?;
            print_order(ctx, &order)
        }
    }
}

/// The first `limit` matching orders by id: asks page after page with
/// `after: next_after` while the server says there is more.
async fn list(
    ctx: &Ctx,
    product: Option<ProductId>,
    status: Option<StatusFilter>,
    limit: u32,
) -> anyhow::Result<Vec<OrderInfo>> {
    let limit_len = usize::try_from(limit).unwrap_or(usize::MAX);
    let mut orders = Vec::new();
    let mut after = None;
    loop {
        let remaining = limit_len.saturating_sub(orders.len());
        let page = ctx
            .client
            .query_orders(
                after,
                u32::try_from(remaining).unwrap_or(u32::MAX),
                product,
                status,
            )
            .await
            .context("cannot list orders")?;
        orders.extend(page.orders.into_iter().take(remaining));
        match page.next_after {
            Some(next) if orders.len() < limit_len => {
                // Each round must move forward, or a faulty server would keep us here.
                if after.is_some_and(|after| next <= after) {
                    return Err(CliError::Unexpected(format!(
                        "QueryOrders went backwards (next_after {next} after {after:?})"
                    ))
                    .into());
                }
                after = Some(next);
            }
            _ => return Ok(orders),
        }
    }
}

/// Prints one order: a JSON object, or a one-row table.
fn print_order(ctx: &Ctx, order: &OrderInfo) -> anyhow::Result<()> {
    if ctx.json {
        print_json(&OrderOut::from(order))
    } else {
        print_table(&orders_table(std::slice::from_ref(order)), "")
    }
}
