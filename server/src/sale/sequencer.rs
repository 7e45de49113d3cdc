//! The sequencer: the single authority over stock.
//!
//! One task drains the shard queues in arrival order, decides each command
//! against the in-memory [`Book`] (no locks: it is the only writer), and hands
//! each batch of decisions to the journal, which makes it durable and only
//! then answers. While the journal flushes one batch, the next accumulates:
//! that is the group commit.

use crate::error::ApiError;
use crate::net::reply::ReplyTo;
use crate::sale::book::{Book, Decision, Event, HoldOutcome};
use crate::sale::journal::{Answer, Batch};
use crate::sale::queues::{Command, ShardReceivers};
use crate::state::Shared;
use crate::store::now_ms;
use flashsale_protocol::{ErrorCode, OrderId, ProductId};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// The sequencer's state: the book it decides on and the way to the journal.
pub(crate) struct Sequencer {
    /// Stock, rules, holdings and recent keys.
    pub(crate) book: Book,
    /// The published state (read to seed holdings).
    pub(crate) shared: Arc<Shared>,
    /// Batches to make durable.
    pub(crate) journal: mpsc::Sender<Batch>,
    /// Most commands decided into one batch.
    pub(crate) max_batch: usize,
}

/// Runs the sequencer until `stop` is cancelled and the queues are drained,
/// or the journal stops. A journal that stops while the sequencer still
/// has work (its thread panicked, or a write failed) cancels `fatal`: the
/// server must stop rather than accept pays no one will decide.
pub(crate) async fn run(
    mut sequencer: Sequencer,
    mut queues: ShardReceivers,
    stop: CancellationToken,
    fatal: CancellationToken,
    ready: oneshot::Sender<()>,
) {
    // Holds whose deadline passed while the server was down expire first,
    // published before any command is decided (and, on a single server,
    // before it listens: the catalog shows their units back).
    if !sequencer.expire_at_start().await {
        tracing::error!("the journal thread is gone before the first batch; stopping the server");
        fatal.cancel();
        queues.close();
        return;
    }
    let _ = ready.send(());
    let mut commands = Vec::with_capacity(sequencer.max_batch);
    let mut stopping = false;
    loop {
        queues.drain(&mut commands, sequencer.max_batch);
        if commands.is_empty() {
            if stopping {
                break;
            }
            let deadline = until(sequencer.book.next_deadline());
            tokio::select! {
                () = queues.wait() => {}
                () = stop.cancelled() => {
                    stopping = true;
                    queues.close();
                }
                // A hold's deadline with nothing else to do: expire it now
                // (deciding any command expires what is due first anyway).
                () = deadline => {}
            }
            if sequencer
                .book
                .next_deadline()
                .is_none_or(|at| at > now_ms())
            {
                continue;
            }
        }
        if !sequencer.decide(&mut commands).await {
            tracing::error!(
                "the journal thread is gone (a failed write, a panic, or a lost \
                 cluster leadership); refusing further orders and stopping the server"
            );
            fatal.cancel();
            queues.close();
            // Answer whatever is still queued.
            loop {
                queues.drain(&mut commands, sequencer.max_batch);
                if commands.is_empty() {
                    break;
                }
                let now = now_ms();
                let batch = decide_batch(&mut sequencer.book, commands.drain(..), now);
                batch.refuse(ApiError::shutting_down());
            }
            break;
        }
    }
    tracing::info!("sequencer drained and stopped");
}

/// Sleeps until `deadline` (ms since the epoch); forever without one.
async fn until(deadline: Option<u64>) {
    match deadline {
        Some(at) => {
            let wait = at.saturating_sub(now_ms());
            tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
        }
        None => std::future::pending().await,
    }
}

impl Sequencer {
    /// Decides `commands` (draining them) and hands the batch(es) to the
    /// journal; false when the journal is gone. Holds due by now expire
    /// first: a deadline that passed came before these commands.
    async fn decide(&mut self, commands: &mut Vec<Command>) -> bool {
        let now = now_ms();
        self.book.forget_keys();
        self.shared.sale.keys.rotate_if_due(now);
        let mut batch = Batch::default();
        // A hold whose pay or release is in this batch is left to that
        // request, which compares the deadline with its own arrival.
        let spared: Vec<OrderId> = commands
            .iter()
            .filter_map(|command| match command {
                Command::PayHold { order_id, .. } | Command::ReleaseHold { order_id, .. } => {
                    Some(*order_id)
                }
                _ => None,
            })
            .collect();
        batch
            .events
            .extend(self.book.expire_due(now, |id| spared.contains(&id)));
        for command in commands.drain(..) {
            if let Some(product_id) = self.needs_seed(&command) {
                // Every decision so far must be published before the
                // holdings are read from the order book.
                let sent = std::mem::take(&mut batch);
                if !self.published(sent).await {
                    let mut rest = Batch::default();
                    decide_one(&mut self.book, command, now, &mut rest);
                    rest.refuse(ApiError::shutting_down());
                    return false;
                }
                if let Err(refused) = self.seed(product_id, &mut batch).await {
                    reply_of(command).send(Err(refused));
                    continue;
                }
            }
            decide_one(&mut self.book, command, now, &mut batch);
        }
        if !spared.is_empty() {
            // Spared holds whose request was refused (another buyer's) and
            // are due: expire them now.
            batch.events.extend(self.book.expire_due(now, |_| false));
        }
        if batch.events.iter().any(Event::is_hold_change) {
            crate::telemetry::held_units(self.book.holds().stats().held_units);
        }
        if batch.events.is_empty() && batch.replies.is_empty() {
            return true;
        }
        self.send(batch).await
    }

    /// Expires every hold already due, in published batches; false when
    /// the journal is gone.
    async fn expire_at_start(&mut self) -> bool {
        loop {
            let expired = self.book.expire_due(now_ms(), |_| false);
            if expired.is_empty() {
                return true;
            }
            tracing::info!(
                holds = expired.len(),
                "holds expired while the server was down"
            );
            crate::telemetry::held_units(self.book.holds().stats().held_units);
            let batch = Batch {
                events: expired,
                ..Batch::default()
            };
            if !self.published(batch).await {
                return false;
            }
        }
    }

    /// The product whose holdings must be seeded before `command`.
    fn needs_seed(&self, command: &Command) -> Option<ProductId> {
        match command {
            Command::ChangeRules {
                product_id, change, ..
            } if self.book.needs_seed(*product_id, *change) => Some(*product_id),
            _ => None,
        }
    }

    /// Reads the buyers' holdings of `product_id` and adds the seeding
    /// events to `batch`.
    async fn seed(&mut self, product_id: ProductId, batch: &mut Batch) -> Result<(), ApiError> {
        let shared = Arc::clone(&self.shared);
        let read = tokio::task::spawn_blocking(move || shared.sale.orders.holdings_of(product_id))
            .await
            .map_err(|e| ApiError::internal(format!("reading holdings failed: {e}")))?;
        let held = read.map_err(|e| ApiError::internal(format!("reading holdings failed: {e}")))?;
        tracing::info!(product = %product_id, buyers = held.len(), "holdings seeded for a new purchase limit");
        batch.events.extend(self.book.seed_held(product_id, held));
        Ok(())
    }

    /// Sends `batch` and waits until it is published; false when the
    /// journal is gone.
    async fn published(&mut self, mut batch: Batch) -> bool {
        let (done, published) = oneshot::channel();
        batch.barrier = Some(done);
        self.send(batch).await && published.await.is_ok()
    }

    /// Hands a batch to the journal; false (the batch refused) when it is gone.
    async fn send(&mut self, batch: Batch) -> bool {
        match self.journal.send(batch).await {
            Ok(()) => true,
            Err(mpsc::error::SendError(batch)) => {
                batch.refuse(ApiError::shutting_down());
                false
            }
        }
    }
}

/// The reply of a command.
fn reply_of(command: Command) -> ReplyTo {
    match command {
        Command::Order { reply, .. }
        | Command::CreateProduct { reply, .. }
        | Command::Restock { reply, .. }
        | Command::SetStock { reply, .. }
        | Command::ChangeRules { reply, .. }
        | Command::CancelOrder { reply, .. }
        | Command::PayHold { reply, .. }
        | Command::ReleaseHold { reply, .. }
        | Command::SetHoldTime { reply, .. } => reply,
    }
}

/// Decides commands in order into one batch.
pub(crate) fn decide_batch(
    book: &mut Book,
    commands: impl Iterator<Item = Command>,
    now: u64,
) -> Batch {
    let mut batch = Batch::default();
    for command in commands {
        decide_one(book, command, now, &mut batch);
    }
    batch
}

/// Decides one command into `batch`.
fn decide_one(book: &mut Book, command: Command, now: u64, batch: &mut Batch) {
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
                Decision::KeysUnreadable => batch.replies.push((
                    reply,
                    Answer::Refused(ApiError::new(
                        ErrorCode::Internal,
                        "the idempotency keys could not be read; nothing was decided: retry",
                    )),
                )),
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
            push_product_event(batch, made, reply);
        }
        Command::Restock {
            product_id,
            qty,
            reply,
        } => push_product_event(batch, book.restock(product_id, qty), reply),
        Command::SetStock {
            product_id,
            stock,
            reply,
        } => push_product_event(batch, book.set_stock(product_id, stock), reply),
        Command::ChangeRules {
            product_id,
            change,
            reply,
        } => push_product_event(batch, book.change_rules(product_id, change), reply),
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
        Command::PayHold {
            arrived_ms,
            order_id,
            user_id,
            payment_ref,
            reply,
        } => {
            let outcome = book.pay_hold(order_id, user_id, &payment_ref, (arrived_ms, now));
            push_hold_outcome(batch, order_id, outcome, reply);
        }
        Command::ReleaseHold {
            arrived_ms,
            order_id,
            user_id,
            reply,
        } => {
            let outcome = book.release_hold(order_id, user_id, (arrived_ms, now));
            push_hold_outcome(batch, order_id, outcome, reply);
        }
        Command::SetHoldTime {
            product_id,
            hold_ms,
            reply,
        } => push_product_event(batch, book.set_hold_time(product_id, hold_ms), reply),
    }
}

/// Adds what a `PayHold` or `ReleaseHold` came to: its event, and the
/// answer once durable (the order as it then stands, or the refusal).
fn push_hold_outcome(batch: &mut Batch, order_id: OrderId, outcome: HoldOutcome, reply: ReplyTo) {
    let answer = match outcome {
        HoldOutcome::Changed(event) => {
            batch.events.push(event);
            Answer::HoldChanged(order_id)
        }
        HoldOutcome::AsItStands => Answer::HoldChanged(order_id),
        HoldOutcome::Expired(event) => {
            batch.events.push(event);
            Answer::Refused(ApiError::new(
                ErrorCode::HoldExpired,
                format!("order {order_id} was not paid by its deadline; its units went back"),
            ))
        }
        HoldOutcome::Refused(code) => Answer::Refused(hold_refusal(order_id, code)),
    };
    batch.replies.push((reply, answer));
}

fn hold_refusal(order_id: OrderId, code: ErrorCode) -> ApiError {
    let message = match code {
        ErrorCode::HoldExpired => format!("order {order_id} was not paid by its deadline"),
        ErrorCode::PaymentRefMismatch => {
            format!("order {order_id} is paid already, with another payment reference")
        }
        ErrorCode::NotFound => format!("no order {order_id}"),
        _ => format!(
            "order {order_id} is not held (a plain order, a rejected one, a released or paid hold)"
        ),
    };
    ApiError::new(code, message)
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
        | Event::RulesSet { product_id, .. }
        | Event::HoldTimeSet { product_id, .. } => *product_id,
        Event::OrderDecided(_)
        | Event::OrderCancelled { .. }
        | Event::HeldSeeded { .. }
        | Event::HoldPaid { .. }
        | Event::HoldReleased { .. }
        | Event::HoldExpired { .. } => return,
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
