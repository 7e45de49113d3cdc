//! `products …`: list, show, create, restock, set-stock, set-limit,
//! set-hold, set-window.

use crate::cli::{HoldTime, Limit, ProductsCmd};
use crate::error::CliError;
use crate::output::{print_json, print_table, products_table, ProductOut};
use crate::Ctx;
use anyhow::Context;
use flashsale_client::protocol::{ProductId, ProductInfo, SaleRules};

/// Runs one `products` command.
///
/// # Errors
/// The server refused the request or the connection failed.
pub async fn run(ctx: &Ctx, cmd: ProductsCmd) -> anyhow::Result<()> {
    let client = &ctx.client;
    let product = match cmd {
        ProductsCmd::List => {
            let products = client.products().await.context("cannot list products")?;
            return if ctx.json {
                print_json(&products.iter().map(ProductOut::from).collect::<Vec<_>>())
            } else {
                print_table(&products_table(&products), "no products")
            };
        }
        ProductsCmd::Show { id } => client
            .product(ProductId(id))
            .await
            .with_context(|| format!("cannot show product {id}"))?,
        ProductsCmd::Create {
            name,
            price_cents,
            stock,
            limit,
            opens,
            closes,
            hold,
        } => {
            let rules = SaleRules {
                max_per_buyer: limit,
                opens_at_ms: opens,
                closes_at_ms: closes,
            };
            let created = client
                .create_product_with_rules(&name, price_cents, stock, rules)
                .await
                .with_context(|| format!("cannot create product '{name}'"))?;
            match hold {
                // Before the sale opens to holds in practice: the hold time
                // follows the creation in the product's arrival order.
                Some(hold) => client
                    .set_hold_time(created.id, Some(hold))
                    .await
                    .with_context(|| format!("cannot set the hold time of '{name}'"))?,
                None => created,
            }
        }
        ProductsCmd::SetHold { id, hold } => {
            let hold = match hold {
                HoldTime::Default => None,
                HoldTime::For(d) => Some(d),
            };
            client
                .set_hold_time(ProductId(id), hold)
                .await
                .with_context(|| format!("cannot set the hold time of product {id}"))?
        }
        ProductsCmd::Restock { id, qty } => client
            .restock(ProductId(id), qty)
            .await
            .with_context(|| format!("cannot restock product {id}"))?,
        ProductsCmd::SetStock { id, stock } => client
            .set_stock(ProductId(id), stock)
            .await
            .with_context(|| format!("cannot set the stock of product {id}"))?,
        ProductsCmd::SetLimit { id, limit } => {
            let max_per_buyer = match limit {
                Limit::Unlimited => None,
                Limit::Max(n) => Some(n),
            };
            client
                .set_limit(ProductId(id), max_per_buyer)
                .await
                .with_context(|| format!("cannot set the limit of product {id}"))?
        }
        ProductsCmd::SetWindow { id, opens, closes } => {
            if opens.is_none() && closes.is_none() {
                return Err(CliError::Usage(
                    "set-window: nothing to change; give --opens and/or --closes (a time or `none`)"
                        .into(),
                )
                .into());
            }
            // An end not given keeps its current value, so read it first.
            let current = client
                .product(ProductId(id))
                .await
                .with_context(|| format!("cannot read product {id}"))?;
            let opens_at_ms = opens.map_or(current.rules.opens_at_ms, |end| end.to_ms());
            let closes_at_ms = closes.map_or(current.rules.closes_at_ms, |end| end.to_ms());
            client
                .set_window(ProductId(id), opens_at_ms, closes_at_ms)
                .await
                .with_context(|| format!("cannot set the sale window of product {id}"))?
        }
    };
    print_product(ctx, &product)
}

/// Prints one product: a JSON object, or a one-row table.
fn print_product(ctx: &Ctx, product: &ProductInfo) -> anyhow::Result<()> {
    if ctx.json {
        print_json(&ProductOut::from(product))
    } else {
        print_table(&products_table(std::slice::from_ref(product)), "")
    }
}
