//! The sequencer: the single authority over stock.
//!
//! One task drains the shard queues in arrival order, decides each command
//! against the in-memory [`Book`] (no locks: it is the only writer), and hands
//! each batch of decisions to the journal, which makes it durable and only
//! then answers. While the journal flushes one batch, the next accumulates:
//! that is the group commit.

use crate::error::ApiError;
use crate::net::reply::ReplyTo;
use crate::sale::book::{Book, Decision, Event};
use crate::sale::journal::{Answer, Batch};
use crate::sale::queues::{Command, ShardReceivers};
use crate::store::now_ms;
use flashsale_protocol::ErrorCode;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Runs the sequencer until `stop` is cancelled and the queues are drained,
/// or the journal stops. A journal that stops while the sequencer still
/// has work (its thread panicked, or a write failed) cancels `fatal`: the
/// server must stop rather than accept pays no one will decide.
pub(crate) async fn run(
    mut book: Book,
    mut queues: ShardReceivers,
    journal: mpsc::Sender<Batch>,
    max_batch: usize,
    stop: CancellationToken,
    fatal: CancellationToken,
) {
    let mut commands = Vec::with_capacity(max_batch);
    let mut stopping = false;
    let mut journal_alive = true;
    loop {
        queues.drain(&mut commands, max_batch);
        if commands.is_empty() {
            if stopping {
                break;
            }
            tokio::select! {
                () = queues.wait() => {}
                () = stop.cancelled() => {
                    stopping = true;
                    queues.close();
                }
            }
            continue;
        }
        let batch = decide_batch(&mut book, commands.drain(..));
        if !journal_alive {
            batch.refuse(ApiError::shutting_down());
            continue;
        }
        if let Err(mpsc::error::SendError(batch)) = journal.send(batch).await {
            tracing::error!(
                "the journal thread is gone (it panicked or its write failed); \
                 refusing further orders and stopping the server"
            );
            fatal.cancel();
            journal_alive = false;
            queues.close();
            batch.refuse(ApiError::shutting_down());
        }
    }
    tracing::info!("sequencer drained and stopped");
}

/// Decides commands in order into one batch.
pub(crate) fn decide_batch(book: &mut Book, commands: impl Iterator<Item = Command>) -> Batch {
    let now = now_ms();
    let mut batch = Batch::default();
    for command in commands {
        match command {
            Command::Order {
                intent,
                checkout,
                reply,
            } => {
                match book.decide(intent, now) {
                    Decision::New(order) => {
                        batch.replies.push((reply, Answer::Order(order.id)));
                        batch.events.push(Event::OrderDecided(order));
                    }
                    Decision::Duplicate(id) => batch.replies.push((reply, Answer::Existing(id))),
                    Decision::KeyReused(_) => batch
                        .replies
                        .push((reply, Answer::Refused(ApiError::key_reused()))),
                }
                batch.checkouts.extend(checkout);
            }
            Command::CreateProduct {
                name,
                price_cents,
                stock,
                rules,
                reply,
            } => {
                let made = book.create_product(name, price_cents, stock, rules);
                push_product_event(&mut batch, made, reply);
            }
            Command::Restock {
                product_id,
                qty,
                reply,
            } => push_product_event(&mut batch, book.restock(product_id, qty), reply),
            Command::SetStock {
                product_id,
                stock,
                reply,
            } => push_product_event(&mut batch, book.set_stock(product_id, stock), reply),
            Command::ChangeRules {
                product_id,
                change,
                reply,
            } => push_product_event(&mut batch, book.change_rules(product_id, change), reply),
            Command::CancelOrder {
                order_id,
                user_id,
                items,
                reply,
            } => {
                // Already cancelled: the answer is the order as it stands.
                if let Some(event) = book.cancel(order_id, user_id, items, now) {
                    batch.events.push(event);
                }
                batch.replies.push((reply, Answer::Cancelled(order_id)));
            }
        }
    }
    batch
}

/// Adds a product change to the batch, answered with the product once
/// durable, or answers its refusal.
fn push_product_event(batch: &mut Batch, made: Result<Event, ErrorCode>, reply: ReplyTo) {
    let event = match made {
        Ok(event) => event,
        Err(code) => return batch.replies.push((reply, refusal(code))),
    };
    let id = match &event {
        Event::ProductCreated { id, .. } => *id,
        Event::Restocked { product_id, .. }
        | Event::StockSet { product_id, .. }
        | Event::RulesSet { product_id, .. } => *product_id,
        Event::OrderDecided(_) | Event::OrderCancelled { .. } => return,
    };
    batch.replies.push((reply, Answer::Product(id)));
    batch.events.push(event);
}

fn refusal(code: ErrorCode) -> Answer {
    let message = match code {
        ErrorCode::AlreadyExists => "a product with this name exists",
        ErrorCode::NotFound => "no such product",
        _ => "stock, quantity or rules out of range (limit at least 1, window must close after it opens)",
    };
    Answer::Refused(ApiError::new(code, message))
}
