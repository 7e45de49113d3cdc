//! Per-product sharded queues between intake and the sequencer.
//!
//! A product always maps to the same shard, and each shard is a bounded FIFO,
//! so one product's commands reach the sequencer in arrival order. A storm on
//! one product fills only its own shard: intake answers `Overloaded` for that
//! shard while the others keep flowing.

use crate::book::OrderIntent;
use crate::error::ApiError;
use crate::reply::ReplyTo;
use flashsale_protocol::{ErrorCode, ProductId};
use std::sync::Arc;
use tokio::sync::{mpsc, Notify};

/// Work for the sequencer.
#[derive(Debug)]
pub enum Command {
    /// Decide an order.
    Order {
        /// What the buyer asked for.
        intent: OrderIntent,
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
}

impl Command {
    /// Where the command's answer goes.
    pub fn into_reply(self) -> ReplyTo {
        match self {
            Self::Order { reply, .. }
            | Self::CreateProduct { reply, .. }
            | Self::Restock { reply, .. } => reply,
        }
    }
}

/// The sending side, used by intake.
#[derive(Debug)]
pub struct Shards {
    senders: Vec<mpsc::Sender<Command>>,
    wake: Arc<Notify>,
}

/// The receiving side, owned by the sequencer.
#[derive(Debug)]
pub struct ShardReceivers {
    receivers: Vec<mpsc::Receiver<Command>>,
    wake: Arc<Notify>,
    /// Where the next round-robin pass starts, so no shard is always first.
    next: usize,
}

/// Commands taken from one shard per round-robin turn.
const TAKE_PER_TURN: usize = 64;

/// Creates `count` shards of `capacity` commands each.
pub fn shards(count: usize, capacity: usize) -> (Shards, ShardReceivers) {
    let wake = Arc::new(Notify::new());
    let (senders, receivers) = (0..count.max(1))
        .map(|_| mpsc::channel(capacity.max(1)))
        .unzip();
    (
        Shards {
            senders,
            wake: Arc::clone(&wake),
        },
        ShardReceivers {
            receivers,
            wake,
            next: 0,
        },
    )
}

impl Shards {
    /// Queues a command on the shard of `product`. When it cannot be queued,
    /// its reply gets `Overloaded` (that shard is full) or `ShuttingDown`.
    pub fn submit(&self, product: ProductId, command: Command) {
        let index = usize::try_from(product.0 % self.senders.len() as u64).unwrap_or(0);
        match self.senders[index].try_send(command) {
            Ok(()) => self.wake.notify_one(),
            Err(mpsc::error::TrySendError::Full(command)) => {
                command.into_reply().send(Err(ApiError::new(
                    ErrorCode::Overloaded,
                    "the pay queue for this product is full; retry shortly",
                )))
            }
            Err(mpsc::error::TrySendError::Closed(command)) => {
                command.into_reply().send(Err(ApiError::shutting_down()));
            }
        }
    }

    /// Commands waiting in all shards.
    pub fn depth(&self) -> u64 {
        self.senders
            .iter()
            .map(|tx| (tx.max_capacity() - tx.capacity()) as u64)
            .sum()
    }
}

impl ShardReceivers {
    /// Moves up to `max` commands into `out`, taking turns between shards.
    pub fn drain(&mut self, out: &mut Vec<Command>, max: usize) {
        let count = self.receivers.len();
        self.next = (self.next + 1) % count;
        loop {
            let before = out.len();
            for offset in 0..count {
                let rx = &mut self.receivers[(self.next + offset) % count];
                for _ in 0..TAKE_PER_TURN {
                    if out.len() >= max {
                        return;
                    }
                    match rx.try_recv() {
                        Ok(command) => out.push(command),
                        Err(_) => break,
                    }
                }
            }
            if out.len() == before {
                return;
            }
        }
    }

    /// Waits until some shard may have a command.
    pub async fn wait(&self) {
        self.wake.notified().await;
    }

    /// Refuses new commands; those already queued can still be drained.
    pub fn close(&mut self) {
        for rx in &mut self.receivers {
            rx.close();
        }
    }
}
