//! Per-product sharded queues between intake and the sequencer.
//!
//! A product always maps to the same shard, and each shard is a bounded
//! FIFO: a storm on one product fills only its own shard, and intake answers
//! `Overloaded` for that shard while the others keep flowing.
//!
//! Arrival order across shards: intake stamps every command with a global
//! arrival number under the same lock that queues it, so when the sequencer
//! sees number N, every smaller number is already queued. The sequencer
//! merges the shards' heads by that number, so commands are decided in the
//! order they were accepted, even an order whose lines span several shards.
//!
//! Operators' commands (product changes, cancellations) have a queue of
//! their own, stamped from the same counter and merged the same way: a
//! storm that fills a product's shard cannot refuse closing its sale
//! window or setting its stock with `Overloaded`, and those still take
//! effect in arrival order with the product's orders.

use crate::error::ApiError;
use crate::net::reply::ReplyTo;
use crate::sale::book::{OrderIntent, RulesChange};
use crate::sale::carts::CheckoutGuard;
use flashsale_protocol::{ErrorCode, OrderId, OrderLine, ProductId, SaleRules, UserId};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, Notify};

/// Work for the sequencer.
#[derive(Debug)]
pub(crate) enum Command {
    /// Decide an order.
    Order {
        /// What the buyer asked for.
        intent: OrderIntent,
        /// For a cart checkout, the cart's checkout mark: released once
        /// the order is published and out of the cart, or when the command
        /// is refused or dropped.
        checkout: Option<CheckoutGuard>,
        /// Where the answer goes.
        reply: ReplyTo,
    },
    /// Create a product.
    CreateProduct {
        /// Unique name.
        name: String,
        /// Unit price in cents.
        price_cents: u64,
        /// Initial stock.
        stock: u64,
        /// Purchase limit and sale window.
        rules: SaleRules,
        /// Where the answer goes.
        reply: ReplyTo,
    },
    /// Add stock, in arrival order with the product's orders.
    Restock {
        /// The product.
        product_id: ProductId,
        /// Units to add.
        qty: u64,
        /// Where the answer goes.
        reply: ReplyTo,
    },
    /// Set the stock to an exact figure, in arrival order with the product's orders.
    SetStock {
        /// The product.
        product_id: ProductId,
        /// The new stock.
        stock: u64,
        /// Where the answer goes.
        reply: ReplyTo,
    },
    /// Change a product's limit or window, in arrival order with its orders.
    ChangeRules {
        /// The product.
        product_id: ProductId,
        /// What changes.
        change: RulesChange,
        /// Where the answer goes.
        reply: ReplyTo,
    },
    /// Pay a held order.
    PayHold {
        /// When the request arrived (ms since the epoch): a deadline after
        /// it does not expire the hold first.
        arrived_ms: u64,
        /// The order.
        order_id: OrderId,
        /// Its buyer (the caller, or the buyer a partner acts for).
        user_id: UserId,
        /// The payment gateway's reference.
        payment_ref: String,
        /// Where the answer goes.
        reply: ReplyTo,
    },
    /// Release a held order early.
    ReleaseHold {
        /// When the request arrived (ms since the epoch).
        arrived_ms: u64,
        /// The order.
        order_id: OrderId,
        /// Its buyer; `None` for an operator.
        user_id: Option<UserId>,
        /// Where the answer goes.
        reply: ReplyTo,
    },
    /// Set a product's hold time.
    SetHoldTime {
        /// The product.
        product_id: ProductId,
        /// Its hold time in ms; `None`: the server's default.
        hold_ms: Option<u64>,
        /// Where the answer goes.
        reply: ReplyTo,
    },
    /// Cancel a confirmed order and return its units.
    CancelOrder {
        /// The order.
        order_id: OrderId,
        /// Its buyer.
        user_id: UserId,
        /// Its lines.
        items: Vec<OrderLine>,
        /// Where the answer goes.
        reply: ReplyTo,
    },
}

impl Command {
    /// Where the command's answer goes.
    pub(crate) fn into_reply(self) -> ReplyTo {
        match self {
            Self::Order { reply, .. }
            | Self::CreateProduct { reply, .. }
            | Self::Restock { reply, .. }
            | Self::SetStock { reply, .. }
            | Self::ChangeRules { reply, .. }
            | Self::CancelOrder { reply, .. }
            | Self::PayHold { reply, .. }
            | Self::ReleaseHold { reply, .. }
            | Self::SetHoldTime { reply, .. } => reply,
        }
    }
}

/// Operators' commands waiting at most; an operator sends a few at a
/// time, so a full queue means something is badly wrong and `Overloaded`
/// is the right answer then.
const ADMIN_QUEUE_CAPACITY: usize = 1024;

/// A command with its arrival number.
#[derive(Debug)]
struct Stamped {
    arrival: u64,
    command: Command,
}

/// The sending side, used by intake.
#[derive(Debug)]
pub(crate) struct Shards {
    /// The product shards, then the operators' queue (the last one).
    senders: Vec<mpsc::Sender<Stamped>>,
    /// The next arrival number; held while queueing, so numbers enter the
    /// shards in order.
    arrivals: Mutex<u64>,
    wake: Arc<Notify>,
}

/// The receiving side, owned by the sequencer.
#[derive(Debug)]
pub(crate) struct ShardReceivers {
    receivers: Vec<mpsc::Receiver<Stamped>>,
    /// Each shard's oldest command, taken out to compare arrival numbers.
    heads: Vec<Option<Stamped>>,
    wake: Arc<Notify>,
}

/// Creates `count` shards of `capacity` commands each, and the operators'
/// queue of [`ADMIN_QUEUE_CAPACITY`].
pub(crate) fn shards(count: usize, capacity: usize) -> (Shards, ShardReceivers) {
    let wake = Arc::new(Notify::new());
    let (senders, receivers): (Vec<_>, Vec<_>) = (0..count.max(1))
        .map(|_| mpsc::channel(capacity.max(1)))
        .chain(std::iter::once(mpsc::channel(ADMIN_QUEUE_CAPACITY)))
        .unzip();
    let heads = receivers.iter().map(|_| None).collect();
    (
        Shards {
            senders,
            arrivals: Mutex::new(0),
            wake: Arc::clone(&wake),
        },
        ShardReceivers {
            receivers,
            heads,
            wake,
        },
    )
}

impl Shards {
    /// Queues an order on the shard of `product`, any other command on the
    /// operators' queue. When it cannot be queued, its reply gets
    /// `Overloaded` (that queue is full) or `ShuttingDown`.
    pub(crate) fn submit(&self, product: ProductId, command: Command) {
        let admin = self.senders.len().saturating_sub(1);
        let index = match command {
            // Buyers' commands on the product's shard (a hold's: its first
            // product's), at buyers' rates; operators' on their own queue.
            Command::Order { .. } | Command::PayHold { .. } | Command::ReleaseHold { .. } => {
                usize::try_from(product.0 % admin.max(1) as u64).unwrap_or(0)
            }
            _ => admin,
        };
        let queued = {
            // A poisoned lock only means a panic elsewhere; the counter is intact.
            let mut next = self.arrivals.lock().unwrap_or_else(|e| e.into_inner());
            let stamped = Stamped {
                arrival: *next,
                command,
            };
            let queued = self.senders[index].try_send(stamped);
            if queued.is_ok() {
                *next += 1;
            }
            queued
        };
        match queued {
            Ok(()) => self.wake.notify_one(),
            Err(mpsc::error::TrySendError::Full(stamped)) => {
                crate::telemetry::intake_refused(ErrorCode::Overloaded);
                stamped.command.into_reply().send(Err(ApiError::new(
                    ErrorCode::Overloaded,
                    "the pay queue for this product is full; retry shortly",
                )))
            }
            Err(mpsc::error::TrySendError::Closed(stamped)) => {
                stamped
                    .command
                    .into_reply()
                    .send(Err(ApiError::shutting_down()));
            }
        }
    }

    /// Commands waiting in all shards.
    pub(crate) fn depth(&self) -> u64 {
        self.senders
            .iter()
            .map(|tx| (tx.max_capacity() - tx.capacity()) as u64)
            .sum()
    }
}

impl ShardReceivers {
    /// Moves up to `max` commands into `out`, oldest arrival first.
    pub(crate) fn drain(&mut self, out: &mut Vec<Command>, max: usize) {
        while out.len() < max {
            // Two passes: a command older than one seen in the first pass was
            // queued before it, so the second pass is sure to see it.
            self.refill_heads();
            self.refill_heads();
            let oldest = self
                .heads
                .iter()
                .enumerate()
                .filter_map(|(i, head)| head.as_ref().map(|s| (s.arrival, i)))
                .min();
            let Some((_, i)) = oldest else { return };
            if let Some(stamped) = self.heads[i].take() {
                out.push(stamped.command);
            }
        }
    }

    fn refill_heads(&mut self) {
        for (head, rx) in self.heads.iter_mut().zip(&mut self.receivers) {
            if head.is_none() {
                *head = rx.try_recv().ok();
            }
        }
    }

    /// Waits until some shard may have a command.
    pub(crate) async fn wait(&self) {
        self.wake.notified().await;
    }

    /// Refuses new commands; those already queued can still be drained.
    pub(crate) fn close(&mut self) {
        for rx in &mut self.receivers {
            rx.close();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flashsale_protocol::{OrderLine, OrderSource, UserId};
    use tokio::sync::oneshot;

    fn order(user: u64, products: &[u64]) -> Command {
        let (tx, _rx) = oneshot::channel();
        Command::Order {
            intent: OrderIntent {
                user_id: UserId(user),
                items: products
                    .iter()
                    .map(|&p| OrderLine {
                        product_id: ProductId(p),
                        qty: 1,
                    })
                    .collect(),
                source: OrderSource::Express,
                idempotency_key: uuid::Uuid::new_v4(),
                partner: None,
                hold: None,
            },
            checkout: None,
            reply: ReplyTo::Internal(tx),
        }
    }

    fn users(commands: &[Command]) -> Vec<u64> {
        commands
            .iter()
            .map(|c| match c {
                Command::Order { intent, .. } => intent.user_id.0,
                _ => 0,
            })
            .collect()
    }

    #[test]
    fn commands_leave_in_arrival_order_across_shards() {
        let (shards, mut queues) = shards(4, 16);
        // User 1's order spans products 3 and 5 and is queued on shard 3;
        // users 2 and 3 order product 5 alone (shard 1) afterwards.
        let arrivals = [
            (3, order(1, &[3, 5])),
            (5, order(2, &[5])),
            (2, order(3, &[2])),
            (5, order(4, &[5])),
        ];
        for (route, command) in arrivals {
            shards.submit(ProductId(route), command);
        }
        let mut out = Vec::new();
        queues.drain(&mut out, 100);
        assert_eq!(users(&out), [1, 2, 3, 4]);
    }

    #[test]
    fn a_full_shard_refuses_with_overloaded_and_others_still_queue() {
        let (shards, mut queues) = shards(2, 1);
        let (tx, mut rx) = oneshot::channel();
        shards.submit(ProductId(2), order(1, &[2]));
        shards.submit(
            ProductId(2),
            match order(2, &[2]) {
                Command::Order { intent, .. } => Command::Order {
                    intent,
                    checkout: None,
                    reply: ReplyTo::Internal(tx),
                },
                other => other,
            },
        );
        assert!(matches!(rx.try_recv(), Ok(Err(e)) if e.code == ErrorCode::Overloaded));
        shards.submit(ProductId(1), order(3, &[1]));
        let mut out = Vec::new();
        queues.drain(&mut out, 100);
        assert_eq!(users(&out), [1, 3]);
        assert_eq!(shards.depth(), 0);
    }

    #[test]
    fn an_operator_command_is_queued_behind_a_full_shard_in_arrival_order() {
        let (shards, mut queues) = shards(2, 1);
        shards.submit(ProductId(2), order(1, &[2]));
        let (tx, mut rx) = oneshot::channel();
        shards.submit(
            ProductId(2),
            Command::SetStock {
                product_id: ProductId(2),
                stock: 0,
                reply: ReplyTo::Internal(tx),
            },
        );
        shards.submit(ProductId(3), order(2, &[3]));
        assert!(rx.try_recv().is_err(), "the set-stock was answered at once");
        let mut out = Vec::new();
        queues.drain(&mut out, 100);
        assert_eq!(users(&out), [1, 0, 2]);
    }
}
