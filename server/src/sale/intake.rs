//! Intake: turns `Pay` and `Buy` into order intents, answers what can be
//! answered at once from memory (bad lines, unknown products, sale window
//! closed, purchase limit reached, sold out, overloaded), and queues the
//! rest on the shard of the order's first product.

use crate::accounts::auth::Acting;
use crate::error::{ApiError, ApiResult};
use crate::net::reply::ReplyTo;
use crate::sale::book::{HoldAsk, OrderIntent};
use crate::sale::carts::CheckoutGuard;
use crate::sale::queues::Command;
use crate::sale::rules::{self, Refusal};
use crate::state::Shared;
use crate::store::now_ms;
use flashsale_protocol::{OrderLine, OrderSource, ProductId, MAX_LINE_QTY, MAX_ORDER_LINES};
use uuid::Uuid;

/// Checks and sorts order lines: 1 to [`MAX_ORDER_LINES`] lines, each
/// quantity 1 to [`MAX_LINE_QTY`], each product once.
///
/// # Errors
/// `BadRequest` naming the first problem.
pub(crate) fn normalize_lines(mut items: Vec<OrderLine>) -> ApiResult<Vec<OrderLine>> {
    if items.is_empty() {
        return Err(ApiError::bad_request("an order needs at least one line"));
    }
    if items.len() > MAX_ORDER_LINES {
        return Err(ApiError::bad_request(format!(
            "an order has at most {MAX_ORDER_LINES} lines"
        )));
    }
    if let Some(line) = items.iter().find(|l| l.qty == 0 || l.qty > MAX_LINE_QTY) {
        return Err(ApiError::bad_request(format!(
            "quantity of product {} must be 1 to {MAX_LINE_QTY}",
            line.product_id
        )));
    }
    items.sort_unstable_by_key(|l| l.product_id);
    if let Some(pair) = items
        .windows(2)
        .find(|w| w[0].product_id == w[1].product_id)
    {
        return Err(ApiError::bad_request(format!(
            "product {} appears twice; put its whole quantity on one line",
            pair[0].product_id
        )));
    }
    Ok(items)
}

/// Submits a pay intent; the answer always goes to `reply`, now or once
/// decided. A cart checkout's `checkout` mark goes with the intent and is
/// released when it is refused here or in the queue, or once its order is
/// published (see [`crate::sale::carts`]).
pub(crate) fn submit_order(
    shared: &Shared,
    acting: &Acting,
    items: Vec<OrderLine>,
    (source, hold): (OrderSource, Option<HoldAsk>),
    idempotency_key: Uuid,
    checkout: Option<CheckoutGuard>,
    reply: ReplyTo,
) {
    let items = match normalize_lines(items) {
        Ok(items) => items,
        Err(e) => {
            crate::telemetry::intake_refused(e.code);
            // Released before the answer: the buyer may pay again at once.
            drop(checkout);
            return reply.send(Err(e));
        }
    };
    let held = |id| shared.sale.orders.held(acting.user_id, id);
    if let Err(refusal) = check_rules(shared, &items, held) {
        // An order already exists for this intent: a retry gets it, not "sold out".
        let answer =
            shared
                .sale
                .orders
                .retry_or(acting.user_id, idempotency_key, (source, &items), refusal);
        if let Err(refusal) = &answer {
            crate::telemetry::intake_refused(refusal.code);
        }
        drop(checkout);
        return reply.send(answer);
    }
    let route = items[0].product_id;
    let command = Command::Order {
        intent: OrderIntent {
            user_id: acting.user_id,
            items,
            source,
            idempotency_key,
            partner: acting.partner.clone(),
            hold,
        },
        checkout,
        reply,
    };
    shared.sale.queues.submit(route, command);
}

/// Refuses from memory an order the durable state already rules out: an
/// unknown product, a closed sale window, a purchase limit the buyer's
/// confirmed orders would exceed (`held`: the units of a product the buyer
/// holds, asked only for limited products), or stock that cannot cover a
/// line. The sequencer checks the same rules ([`rules::check_line`]) again,
/// authoritatively, in arrival order.
pub(crate) fn check_rules(
    shared: &Shared,
    items: &[OrderLine],
    held: impl Fn(ProductId) -> u64,
) -> ApiResult<()> {
    for line in items {
        let id = line.product_id;
        let Some(product) = shared.sale.catalog.get(id) else {
            return Err(Refusal::UnknownProduct.error(id));
        };
        let verdict = rules::check_line(
            &product.rules(),
            now_ms,
            || held(id),
            product.stock(),
            u64::from(line.qty),
        );
        if let Err(refusal) = verdict {
            // Counted per product only: the server-wide figure is their sum,
            // which saves a second contended atomic on every sold-out answer.
            product.count_refusal();
            return Err(refusal.error(id));
        }
    }
    Ok(())
}
