//! The journal: makes each batch of decisions durable, then publishes it.
//!
//! A dedicated thread (fsync must not block the async workers) receives
//! batches from the sequencer. It appends one sled record per batch to the
//! `journal` tree, flushes sled and `fdatasync`s the data file once for all
//! batches that arrived meanwhile (group commit), and only then publishes the
//! decisions: stock and orders become visible, carts are updated, answers and
//! pushes are sent. A failed write stops the journal and with it the
//! sequencer: nothing unflushed is ever acknowledged.
//!
//! Carts are updated after the flush, so a crash can lose a cart update of a
//! confirmed order. `meta/carts_through` records the last batch whose cart
//! updates were made before a later flush; recovery re-applies the batches
//! after it (re-applying is harmless, see [`crate::sale::carts::Carts::apply_confirmed`]).
//! A failed cart update is a storage failure: it stops the server, keeps
//! its batch's checkout marks held until the process exits, and the
//! checkpoint stays before it, so the next start re-applies it.

use crate::config::SyncMode;
use crate::error::{ApiError, ServerError};
use crate::net::reply::ReplyTo;
use crate::sale::book::{Book, Event};
use crate::sale::carts::CheckoutGuard;
use crate::state::Shared;
use crate::store::{decode, encode, id_key};
use flashsale_protocol::{ErrorCode, OrderId, OrderInfo, ProductId, Reply};
use hashbrown::HashMap;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// `meta` key: last journal sequence whose cart updates are on disk.
const CARTS_THROUGH: &str = "carts_through";

/// Largest journal record. sled 0.34 stores values above about a quarter
/// of its 512 KiB segment as separate blob files, which its flush does not
/// fsync; records this small always stay in the fsynced data file.
const MAX_RECORD_BYTES: usize = 64 * 1024;

/// Most batches written under one flush.
const MAX_GROUP: usize = 64;

/// What one reply of a batch says, resolved after the batch is durable.
#[derive(Debug)]
pub(crate) enum Answer {
    /// `Accepted` with this order, decided in this batch.
    Order(OrderId),
    /// `Accepted` with this order, made earlier for the same intent (a
    /// retry); never pushed again.
    Existing(OrderId),
    /// `Product` with this product.
    Product(ProductId),
    /// `Order` with this order as it stands after the batch (a cancellation).
    Cancelled(OrderId),
    /// The command was refused.
    Refused(ApiError),
}

/// Decisions to make durable together, and the answers that wait for them.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    /// The journal record: every change the batch makes.
    pub(crate) events: Vec<Event>,
    /// Answers to send once the record is durable.
    pub(crate) replies: Vec<(ReplyTo, Answer)>,
    /// The checkout marks of the batch's cart checkouts: released once the
    /// batch's orders are out of their carts, before the answers go out.
    pub(crate) checkouts: Vec<CheckoutGuard>,
}

impl Batch {
    /// Answers every command of a batch that will not be made durable.
    pub(crate) fn refuse(self, error: ApiError) {
        drop(self.checkouts);
        for (reply, _) in self.replies {
            reply.send(Err(error.clone()));
        }
    }
}

/// Replays the journal into the published state and returns the sequencer's
/// book and the next journal sequence number.
///
/// # Errors
/// Storage failure or a corrupt record.
pub(crate) fn recover(shared: &Shared) -> Result<(Book, u64), ServerError> {
    let mut book = Book::new();
    let carts_through = shared.store.meta_u64(CARTS_THROUGH)?;
    let mut next_seq = 1;
    let mut batches = 0u64;
    for item in shared.store.journal.iter() {
        let (key, value) = item?;
        let seq = <[u8; 8]>::try_from(key.as_ref())
            .map(u64::from_be_bytes)
            .map_err(|_| ServerError::Corrupt {
                tree: "journal",
                reason: "key is not 8 bytes".into(),
            })?;
        let events: Vec<Event> = decode("journal", &value)?;
        for event in &events {
            book.apply(event);
            shared.sale.catalog.apply(event);
        }
        shared.sale.orders.apply(&events);
        if seq > carts_through {
            apply_to_carts(shared, &events)
                .map_err(|e| ServerError::Transaction(e.log_text().to_owned()))?;
        }
        next_seq = seq.saturating_add(1);
        batches += 1;
    }
    tracing::info!(batches, next_seq, "journal replayed");
    Ok((book, next_seq))
}

/// Starts the journal thread.
///
/// # Errors
/// The thread could not be spawned.
pub(crate) fn spawn(
    shared: Arc<Shared>,
    batches: mpsc::Receiver<Batch>,
    next_seq: u64,
    fatal: CancellationToken,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("flashsale-journal".into())
        .spawn(move || {
            let _stops_on_panic = StopOnPanic(&fatal);
            run(&shared, batches, next_seq, &fatal);
        })
}

/// Stops the server when the journal thread unwinds from a panic: nothing
/// could be made durable or answered any more, and a server that kept
/// accepting pays would leave them unanswered. The panic's own message is
/// printed by the panic hook just before.
struct StopOnPanic<'a>(&'a CancellationToken);

impl Drop for StopOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            tracing::error!("the journal thread panicked; stopping the server");
            self.0.cancel();
        }
    }
}

fn run(
    shared: &Shared,
    mut batches: mpsc::Receiver<Batch>,
    mut next_seq: u64,
    fatal: &CancellationToken,
) {
    let mut carts_through = next_seq.saturating_sub(1);
    let mut carts_failed = false;
    let mut group = Vec::with_capacity(MAX_GROUP);
    while let Some(first) = batches.blocking_recv() {
        group.push(first);
        while group.len() < MAX_GROUP {
            match batches.try_recv() {
                Ok(batch) => group.push(batch),
                Err(_) => break,
            }
        }
        let flush_started = std::time::Instant::now();
        if let Err(e) = write_group(shared, &group, &mut next_seq, carts_through) {
            tracing::error!(error = %e, "journal write failed; stopping the sequencer");
            // Records written before the failing one may be on disk and
            // replayed at the next start: the outcome is unknown, not "no".
            let refusal = ApiError::new(
                ErrorCode::Internal,
                "the server could not store this batch; the outcome is unknown until it \
                 restarts: retry with the same idempotency key",
            );
            for batch in group.drain(..) {
                batch.refuse(refusal.clone());
            }
            fatal.cancel();
            batches.close();
            while let Some(batch) = batches.blocking_recv() {
                batch.refuse(refusal.clone());
            }
            return;
        }
        let sizes = group.iter().map(|batch| batch.replies.len());
        crate::telemetry::journal_group(sizes, flush_started.elapsed(), shared.sale.queues.depth());
        for batch in group.drain(..) {
            carts_failed |= !publish(shared, batch, fatal);
        }
        // After a failed cart update the checkpoint stays before it for
        // good, so the next start re-applies it.
        if !carts_failed {
            carts_through = next_seq.saturating_sub(1);
        }
    }
    if let Err(e) = shared
        .store
        .meta
        .insert(CARTS_THROUGH, &id_key(carts_through))
    {
        tracing::error!(error = %e, "could not record the cart checkpoint");
    }
    tracing::info!("journal drained and stopped");
}

/// Appends one record per batch, then flushes once (per the sync mode).
fn write_group(
    shared: &Shared,
    group: &[Batch],
    next_seq: &mut u64,
    carts_through: u64,
) -> Result<(), ServerError> {
    let store = &shared.store;
    for batch in group.iter().filter(|b| !b.events.is_empty()) {
        for record in records(&batch.events)? {
            store.journal.insert(id_key(*next_seq), record)?;
            *next_seq += 1;
        }
    }
    store.meta.insert(CARTS_THROUGH, &id_key(carts_through))?;
    if shared.config.sync == SyncMode::Always {
        store.sync()?;
    }
    Ok(())
}

/// Encodes events as journal records of at most [`MAX_RECORD_BYTES`] each
/// (a single larger event stays whole).
fn records(events: &[Event]) -> Result<Vec<Vec<u8>>, ServerError> {
    let record = encode(events)?;
    if record.len() <= MAX_RECORD_BYTES || events.len() == 1 {
        return Ok(vec![record]);
    }
    let (first, second) = events.split_at(events.len() / 2);
    let mut out = records(first)?;
    out.extend(records(second)?);
    Ok(out)
}

/// Makes a durable batch visible and answers it. Returns whether its
/// confirmed orders were taken out of their carts; if not, `fatal` is
/// cancelled (a storage failure stops the server) and the batch's checkout
/// marks stay held until the process exits.
fn publish(shared: &Shared, batch: Batch, fatal: &CancellationToken) -> bool {
    let Batch {
        events,
        replies,
        checkouts,
    } = batch;
    // Orders first, stock second: intake reads the stock and then, only if it
    // is short, looks up the intent's key; in this order a retry that sees
    // the stock its own order took also finds that order.
    shared.sale.orders.apply(&events);
    crate::telemetry::orders_published(&events);
    for event in &events {
        shared.sale.catalog.apply(event);
    }
    let carts_updated = match apply_to_carts(shared, &events) {
        Ok(()) => {
            // The carts are updated: another pay may check them out now, and
            // sees them without this batch's orders (or with the lines a
            // refused order left in them).
            drop(checkouts);
            true
        }
        Err(e) => {
            tracing::error!(
                error = %e.log_text(),
                "could not take a confirmed order out of its cart; stopping the server"
            );
            // The carts still hold the lines of this batch's orders: released
            // marks would let a pay with another key confirm them again. The
            // marks stay held (the guards are leaked, never dropped) until
            // the process exits; the next start re-applies the cart update.
            std::mem::forget(checkouts);
            fatal.cancel();
            false
        }
    };
    push_cancellations(shared, &events);
    // New orders answer with the batch's own copy (moved, not cloned); only
    // a duplicate looks up the book.
    let mut decided_now: HashMap<OrderId, OrderInfo> = events
        .into_iter()
        .filter_map(|e| match e {
            Event::OrderDecided(order) => Some((order.id, order)),
            _ => None,
        })
        .collect();
    shared.sale.count_decided(decided_now.len() as u64);
    push_new_orders(shared, &decided_now, &replies);
    for (reply, answer) in replies {
        let result = match answer {
            Answer::Order(id) => match decided_now.remove(&id) {
                Some(order) => Ok(Reply::Accepted(order)),
                None => shared
                    .sale
                    .orders
                    .get(id)
                    .map(Reply::Accepted)
                    .ok_or_else(|| {
                        ApiError::new(ErrorCode::Internal, "decided order not published")
                    }),
            },
            Answer::Existing(id) => shared
                .sale
                .orders
                .get(id)
                .map(Reply::Accepted)
                .ok_or_else(|| ApiError::new(ErrorCode::Internal, "order not published")),
            Answer::Product(id) => shared
                .sale
                .catalog
                .get(id)
                .map(|p| Reply::Product(p.info()))
                .ok_or_else(|| ApiError::new(ErrorCode::Internal, "product not published")),
            Answer::Cancelled(id) => {
                shared.sale.orders.get(id).map(Reply::Order).ok_or_else(|| {
                    ApiError::new(ErrorCode::Internal, "cancelled order not published")
                })
            }
            Answer::Refused(error) => Err(error),
        };
        reply.send(result);
    }
    carts_updated
}

/// Pushes the batch's new orders of buyers (not of partners' buyers, whose
/// partner hears the answer) to the buyer's sessions, except the session
/// that placed each order: its answer already carries the decision, so it
/// reads one frame per order.
fn push_new_orders(
    shared: &Shared,
    decided_now: &HashMap<OrderId, OrderInfo>,
    replies: &[(ReplyTo, Answer)],
) {
    // A partner's storm (every order for a partner's buyer) pushes nothing:
    // no pass over the replies for it.
    if decided_now.values().all(|order| order.partner.is_some()) {
        return;
    }
    let new_orders = replies.iter().filter_map(|(reply, answer)| match answer {
        Answer::Order(id) => decided_now
            .get(id)
            .filter(|order| order.partner.is_none())
            .map(|order| (order, reply.session_no())),
        _ => None,
    });
    shared.edge.notifier.push_new_orders(new_orders);
}

/// Tells buyers (and, for a partner's buyer, the partner's sessions) that
/// an order of theirs was cancelled.
fn push_cancellations(shared: &Shared, events: &[Event]) {
    for event in events {
        let Event::OrderCancelled { order_id, .. } = event else {
            continue;
        };
        let Some(order) = shared.sale.orders.get(*order_id) else {
            continue;
        };
        let to = order
            .partner
            .as_ref()
            .map_or(order.user_id, |p| p.partner_id);
        shared.edge.notifier.push_order_to(to, &order);
    }
}

fn apply_to_carts(shared: &Shared, events: &[Event]) -> Result<(), ApiError> {
    for event in events {
        if let Event::OrderDecided(order) = event {
            shared.sale.carts.apply_confirmed(order)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use flashsale_protocol::{OrderInfo, OrderLine, OrderSource, OrderStatus, UserId};

    fn order(id: u64) -> Event {
        Event::OrderDecided(OrderInfo {
            id: OrderId(id),
            user_id: UserId(id),
            items: vec![OrderLine {
                product_id: ProductId(1),
                qty: 1,
            }],
            status: OrderStatus::Confirmed,
            source: OrderSource::Express,
            idempotency_key: uuid::Uuid::new_v4(),
            decided_at_ms: 0,
            partner: None,
        })
    }

    #[test]
    fn a_panic_on_the_journal_thread_cancels_the_fatal_token() {
        let fatal = CancellationToken::new();
        let token = fatal.clone();
        let died = std::thread::spawn(move || {
            let _stops_on_panic = StopOnPanic(&token);
            panic!("injected journal panic");
        })
        .join();
        assert!(died.is_err());
        assert!(fatal.is_cancelled());
        let calm = CancellationToken::new();
        drop(StopOnPanic(&calm));
        assert!(!calm.is_cancelled(), "a normal stop is not fatal");
    }

    #[test]
    fn a_large_batch_is_split_into_small_records_that_replay_in_order() {
        let events: Vec<Event> = (1..=5000).map(order).collect();
        let records = records(&events).expect("encode");
        assert!(records.len() > 1);
        assert!(records.iter().all(|r| r.len() <= MAX_RECORD_BYTES));
        let decoded: Vec<Event> = records
            .iter()
            .flat_map(|r| decode::<Vec<Event>>("journal", r).expect("decode"))
            .collect();
        assert_eq!(decoded, events);
    }
}
