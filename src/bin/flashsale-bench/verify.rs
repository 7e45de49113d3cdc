//! Verification: the invariant checks of a finished sale against the
//! server's own state (nothing oversold, every answered order exists once
//! with the outcome the harness was told).

use crate::sale::Drained;
use crate::setup::{Stage, Target};
use crate::{Args, Flow};
use flashsale::protocol::{OrderStatus, ProductId};
use std::collections::HashMap;

/// What the verification found.
pub struct Verdict {
    /// Each failed invariant, in words.
    pub violations: Vec<String>,
}

/// Checks the sale against the server's state.
pub async fn verify(
    args: &Args,
    target: &Target,
    stage: &Stage,
    drained: &Drained,
) -> anyhow::Result<Verdict> {
    let admin = target.admin().await?;
    let stats = admin.stats().await?;
    let mut violations = Vec::new();
    if args.duration.is_none() && drained.attempts != args.requests {
        violations.push(format!(
            "{} attempts were made, --requests asked for {}",
            drained.attempts, args.requests
        ));
    }
    let mut confirmed_qty: HashMap<ProductId, u64> = HashMap::new();
    for order in drained.accepted.values() {
        if order.status == OrderStatus::Confirmed {
            for line in &order.items {
                *confirmed_qty.entry(line.product_id).or_default() += u64::from(line.qty);
            }
        }
    }
    // With one-line orders, a product's demand beyond its stock must sell it out exactly.
    let exact = args.items == 1
        && args.flow == Flow::Buy
        && drained.unanswered == 0
        && drained.overloaded == 0;
    for id in &stage.products {
        let Some(product) = stats
            .products
            .iter()
            .map(|s| &s.product)
            .find(|p| p.id == *id)
        else {
            violations.push(format!("product {id} is missing from the server's stats"));
            continue;
        };
        let initial = stage.initial_stock[id];
        let sold = confirmed_qty.get(id).copied().unwrap_or(0);
        let supplied = i128::from(initial) + i128::from(product.restocked);
        if supplied - i128::from(product.stock) != i128::from(sold) {
            violations.push(format!(
                "product {id}: initial {initial} + restocked {} - final stock {} != confirmed qty {sold}",
                product.restocked, product.stock
            ));
        }
        if !product.balances() || (args.flow == Flow::Hold && product.held != 0) {
            violations.push(format!(
                "product {id}: initial {initial} + restocked {} - confirmed {} - held {} != stock {} \
                 (every unpaid hold should have expired)",
                product.restocked, product.confirmed_qty, product.held, product.stock
            ));
        }
        if product.confirmed_qty != sold {
            violations.push(format!(
                "product {id}: server counts {} confirmed units, the answers {sold}",
                product.confirmed_qty
            ));
        }
        let demand = drained.demand.get(id).copied().unwrap_or(0);
        if exact && i128::from(sold) != i128::from(demand).min(supplied) {
            violations.push(format!(
                "product {id}: {sold} units confirmed, expected min(stock {initial}, demand {demand})"
            ));
        }
    }
    // Every accepted order exists exactly once on the server, with the outcome we were told.
    let partner = &stage.connections[0];
    let mut after = stage.orders_before;
    let mut seen = 0usize;
    loop {
        let page = partner.orders(after, 0).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.id);
        for order in page {
            seen += 1;
            match drained.accepted.get(&order.idempotency_key) {
                Some(told) if told.id == order.id && told.status == order.status => {}
                Some(told) => violations.push(format!(
                    "order {} is {:?} on the server but was answered as {told:?}",
                    order.id, order.status
                )),
                None if drained.unanswered > 0 => {}
                None => {
                    violations.push(format!("order {} exists but was never answered", order.id))
                }
            }
        }
    }
    let holds = &drained.holds;
    if args.flow == Flow::Hold && holds.held != holds.paid + holds.expired {
        violations.push(format!(
            "{} holds: {} paid and {} expired",
            holds.held, holds.paid, holds.expired
        ));
    }
    if !holds.pay_errors.is_empty() {
        violations.push(format!("payments refused: {:?}", holds.pay_errors));
    }
    if seen < drained.accepted.len() {
        violations.push(format!(
            "{} orders were accepted but {seen} exist",
            drained.accepted.len()
        ));
    }
    Ok(Verdict { violations })
}
