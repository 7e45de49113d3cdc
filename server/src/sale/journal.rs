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
//!
//! Published orders are pending in the [`crate::sale::order_book`] until the
//! materialiser has written them to the tables; beyond
//! `Config::max_unmaterialised` pending orders the journal waits for it
//! (and so the sequencer, and intake answers `Overloaded`).
//!
//! Start-up ([`recover`]) loads the latest checkpoint and replays the
//! journal records after it.

use crate::config::SyncMode;
use crate::error::{ApiError, ServerError};
use crate::net::reply::ReplyTo;
use crate::sale::book::{Book, Event};
use crate::sale::carts::CheckoutGuard;
use crate::sale::checkpoint;
use crate::sale::order_book::OrderCounts;
use crate::state::Shared;
use crate::store::{decode, encode, id_key};
use flashsale_protocol::{ErrorCode, OrderId, OrderInfo, ProductId, Reply};
use hashbrown::HashMap;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// `meta` key: last journal sequence whose cart updates are on disk.
pub(crate) const CARTS_THROUGH: &str = "carts_through";

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
    /// `Order` with this held order as it stands after the batch (paid,
    /// released, expired, or as it was).
    HoldChanged(OrderId),
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
    /// Told once this batch (and so every batch before it) is published.
    pub(crate) barrier: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Batch {
    /// Answers every command of a batch that will not be made durable.
    pub(crate) fn refuse(self, error: ApiError) {
        drop(self.checkouts);
        drop(self.barrier);
        for (reply, _) in self.replies {
            reply.send(Err(error.clone()));
        }
    }
}

/// What a start recovered: the sequencer's book, the next journal
/// sequence, and where the materialiser resumes.
pub(crate) struct Recovered {
    /// The sequencer's book.
    pub(crate) book: Book,
    /// The next journal sequence number.
    pub(crate) next_seq: u64,
    /// The materialiser's starting point.
    pub(crate) shadow: crate::sale::materialise::Shadow,
}

/// Loads the latest checkpoint into the published state and replays the
/// journal after it.
///
/// # Errors
/// Storage failure or a corrupt record.
pub(crate) fn recover(shared: &Shared) -> Result<Recovered, ServerError> {
    let sale = &shared.sale;
    let snapshot = checkpoint::load(&shared.store)?;
    let index = std::sync::Arc::clone(&sale.keys);
    let (mut book, start_seq) = match &snapshot {
        Some(s) => {
            sale.catalog.load(s.products.clone());
            sale.catalog.load_holds(&s.holds);
            let book = Book::from_state(s.book.clone(), s.holds.clone(), Some(index));
            (book, s.seq)
        }
        None => {
            // A journal from its first record (a new data dir, or one
            // written before checkpoints): limits may have been set without
            // seeds, so every holding is kept while replaying.
            let mut book = Book::with_keys(index);
            book.track_all();
            (book, 0)
        }
    };
    let counts = snapshot
        .as_ref()
        .map_or_else(OrderCounts::default, |s| s.counts);
    sale.orders.restore(counts, [], []);
    let carts_through = shared.store.meta_u64(CARTS_THROUGH)?;
    let mut last_seq = start_seq.max(carts_through);
    let mut replayed = 0u64;
    for item in shared.store.journal.iter() {
        let (key, value) = item?;
        let (seq, events) = read_record(&key, &value)?;
        if seq > start_seq {
            for event in &events {
                book.apply(event);
                sale.catalog.apply(event);
            }
            sale.orders.apply(&events, seq);
            replayed += 1;
        }
        if seq > carts_through {
            apply_to_carts(shared, &events)
                .map_err(|e| ServerError::Transaction(e.log_text().to_owned()))?;
        }
        last_seq = last_seq.max(seq);
    }
    let legacy_end = if snapshot.is_none() { last_seq } else { 0 };
    book.stop_tracking_all();
    sale.set_hold_stats(book.holds().stats());
    let state = book.state();
    sale.orders
        .restore(sale.orders.counts(), book.tracked_products(), state.held);
    sale.progress.publish(last_seq);
    tracing::info!(
        checkpoint = start_seq,
        replayed,
        next_seq = last_seq + 1,
        "checkpoint loaded and journal replayed"
    );
    let shadow = crate::sale::materialise::Shadow::new(snapshot, legacy_end);
    Ok(Recovered {
        book,
        next_seq: last_seq.saturating_add(1),
        shadow,
    })
}

/// A journal record: its sequence number and its events.
///
/// # Errors
/// A key that is not 8 bytes or a value that is not a list of events.
pub(crate) fn read_record(key: &[u8], value: &[u8]) -> Result<(u64, Vec<Event>), ServerError> {
    let seq = <[u8; 8]>::try_from(key)
        .map(u64::from_be_bytes)
        .map_err(|_| ServerError::Corrupt {
            tree: "journal",
            reason: "key is not 8 bytes".into(),
        })?;
    Ok((seq, decode("journal", value)?))
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
            let _stops_on_panic = StopOnPanic(&fatal, "journal");
            run(&shared, batches, next_seq, &fatal);
        })
}

/// Stops the server when the thread it names (the journal, the
/// materialiser) unwinds from a panic: nothing could be made durable or
/// answered any more, and a server that kept accepting pays would leave
/// them unanswered. The panic's own message is printed by the panic hook
/// just before.
pub(crate) struct StopOnPanic<'a>(pub(crate) &'a CancellationToken, pub(crate) &'static str);

impl Drop for StopOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            tracing::error!(
                thread = self.1,
                "a server thread panicked; stopping the server"
            );
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
        // Beyond the materialiser's allowed lag, wait for it (bounded memory).
        shared
            .sale
            .orders
            .wait_below(shared.config.max_unmaterialised, || fatal.is_cancelled());
        let flush_started = std::time::Instant::now();
        let mut seqs = Vec::with_capacity(group.len());
        let written = write_group(shared, &group, &mut next_seq, carts_through, &mut seqs)
            .map_err(|e| {
                tracing::error!(error = %e, "journal write failed; stopping the sequencer");
                // Records written before the failing one may be on disk and
                // replayed at the next start: the outcome is unknown, not "no".
                ApiError::new(
                    ErrorCode::Internal,
                    "the server could not store this batch; the outcome is unknown until it \
                     restarts: retry with the same idempotency key",
                )
            })
            .and_then(|records| replicate(shared, records, carts_through));
        if let Err(refusal) = written {
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
        for (batch, seq) in group.drain(..).zip(seqs.drain(..)) {
            carts_failed |= !publish(shared, batch, seq, fatal);
            shared.sale.progress.publish(seq);
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

/// In a cluster, waits until the stream holds the group's records.
///
/// # Errors
/// `NotLeader` when this node lost the leadership first: the records are in
/// the local journal only, which a node discards when it rejoins.
fn replicate(
    shared: &Shared,
    records: Vec<(u64, Vec<u8>)>,
    carts_through: u64,
) -> Result<(), ApiError> {
    let Some(outbox) = shared.store.replica() else {
        return Ok(());
    };
    let entry = outbox.push_journal(records, carts_through);
    outbox.wait_blocking(entry).map_err(|_| {
        tracing::error!("the stream refused the journal's batch: this node no longer leads");
        ApiError::new(
            ErrorCode::NotLeader,
            "this node lost the leadership while the order was being replicated; \
             retry on the new leader with the same idempotency key",
        )
    })
}

/// Appends one record per batch, then flushes once (per the sync mode).
/// In a cluster, returns the records for the stream.
fn write_group(
    shared: &Shared,
    group: &[Batch],
    next_seq: &mut u64,
    carts_through: u64,
    seqs: &mut Vec<u64>,
) -> Result<Vec<(u64, Vec<u8>)>, ServerError> {
    let store = &shared.store;
    let replicated = store.replica().is_some();
    let mut written = Vec::new();
    for batch in group {
        for record in records(&batch.events)? {
            store.journal.insert(id_key(*next_seq), record.as_slice())?;
            if replicated {
                written.push((*next_seq, record));
            }
            *next_seq += 1;
        }
        // The batch's last record (or the one before, for a batch without
        // events).
        seqs.push(next_seq.saturating_sub(1));
    }
    store.meta.insert(CARTS_THROUGH, &id_key(carts_through))?;
    if shared.config.sync == SyncMode::Always {
        store.sync()?;
    }
    Ok(written)
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
fn publish(shared: &Shared, batch: Batch, seq: u64, fatal: &CancellationToken) -> bool {
    let Batch {
        events,
        replies,
        checkouts,
        barrier,
    } = batch;
    // Orders first, stock second: intake reads the stock and then, only if it
    // is short, looks up the intent's key; in this order a retry that sees
    // the stock its own order took also finds that order.
    shared.sale.orders.apply(&events, seq);
    crate::telemetry::orders_published(&events);
    for event in &events {
        shared.sale.catalog.apply(event);
    }
    shared.sale.count_holds(&events);
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
    push_changes(shared, &events);
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
    if let Some(barrier) = barrier {
        let _ = barrier.send(());
    }
    push_new_orders(shared, &decided_now, &replies);
    for (reply, answer) in replies {
        let result = match answer {
            Answer::Order(id) => match decided_now.remove(&id) {
                Some(order) => Ok(Reply::Accepted(order)),
                None => published(shared, id).map(Reply::Accepted),
            },
            Answer::Existing(id) => published(shared, id).map(Reply::Accepted),
            Answer::Product(id) => shared
                .sale
                .catalog
                .info(id)
                .map(Reply::Product)
                .ok_or_else(|| ApiError::new(ErrorCode::Internal, "product not published")),
            Answer::Cancelled(id) | Answer::HoldChanged(id) => {
                published(shared, id).map(Reply::Order)
            }
            Answer::Refused(error) => Err(error),
        };
        reply.send(result);
    }
    carts_updated
}

/// A published order, read back for an answer.
fn published(shared: &Shared, id: OrderId) -> Result<OrderInfo, ApiError> {
    shared
        .sale
        .orders
        .get(id)?
        .ok_or_else(|| ApiError::new(ErrorCode::Internal, "order not published"))
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
/// an order of theirs changed: cancelled, or a hold paid, released or
/// expired.
fn push_changes(shared: &Shared, events: &[Event]) {
    for event in events {
        let (Event::OrderCancelled { order_id, .. }
        | Event::HoldPaid { order_id, .. }
        | Event::HoldReleased { order_id, .. }
        | Event::HoldExpired { order_id, .. }) = event
        else {
            continue;
        };
        let Ok(Some(order)) = shared.sale.orders.get(*order_id) else {
            continue;
        };
        let to = order
            .partner
            .as_ref()
            .map_or(order.user_id, |p| p.partner_id);
        shared.edge.notifier.push_order_to(to, &order);
    }
}

pub(crate) fn apply_to_carts(shared: &Shared, events: &[Event]) -> Result<(), ApiError> {
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
            let _stops_on_panic = StopOnPanic(&token, "journal");
            panic!("injected journal panic");
        })
        .join();
        assert!(died.is_err());
        assert!(fatal.is_cancelled());
        let calm = CancellationToken::new();
        drop(StopOnPanic(&calm, "journal"));
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

    /// Writes `records` as the journal, from sequence 1.
    fn write_journal(store: &crate::store::Store, records: &[Vec<Event>]) {
        for (seq, events) in records.iter().enumerate() {
            store
                .journal
                .insert(id_key(seq as u64 + 1), encode(events).expect("encode"))
                .expect("insert");
        }
    }

    /// Runs the materialiser from `shadow` until `done` (at most 20 s),
    /// then stops it; it must not have failed.
    fn materialise_until(
        shared: &Arc<Shared>,
        shadow: crate::sale::materialise::Shadow,
        done: impl Fn(&Shared) -> bool,
    ) {
        let fatal = CancellationToken::new();
        let thread = crate::sale::materialise::spawn(Arc::clone(shared), shadow, fatal.clone())
            .expect("spawn");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !done(shared) {
            assert!(std::time::Instant::now() < deadline, "materialised in time");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        shared.sale.progress.stop();
        thread.join().expect("materialiser");
        assert!(!fatal.is_cancelled());
    }

    #[test]
    fn a_journal_written_before_checkpoints_replays_a_late_limit_with_the_holdings_before_it() {
        use flashsale_protocol::SaleRules;
        let dir = tempfile::TempDir::new().expect("temp dir");
        let store = crate::store::Store::open(dir.path()).expect("store");
        // What a server without checkpoints wrote: a limit set after a sale,
        // with no seed of the holdings.
        let created = Event::ProductCreated {
            id: ProductId(1),
            name: "P".into(),
            price_cents: 1,
            stock: 10,
            rules: SaleRules::default(),
        };
        let mut bought = order(1);
        if let Event::OrderDecided(o) = &mut bought {
            o.items[0].qty = 3;
        }
        let limited = Event::RulesSet {
            product_id: ProductId(1),
            rules: SaleRules {
                max_per_buyer: Some(3),
                ..SaleRules::default()
            },
        };
        write_journal(&store, &[vec![created], vec![bought], vec![limited]]);
        let (queues, _receivers) = crate::sale::queues::shards(1, 16);
        let config = crate::config::Config::new(dir.path());
        let shared = Shared::new(config, store, queues, CancellationToken::new()).expect("shared");
        let recovered = recover(&shared).expect("recover");
        assert_eq!(recovered.next_seq, 4);
        assert_eq!(recovered.book.held(UserId(1), ProductId(1)), 3);
        assert_eq!(shared.sale.orders.held(UserId(1), ProductId(1)), 3);
        assert!(
            !recovered
                .book
                .needs_seed(ProductId(1), crate::sale::book::RulesChange::Limit(Some(2))),
            "the product is tracked"
        );
        // The materialiser's copy replays the same way and checkpoints it.
        let shared = Arc::new(shared);
        materialise_until(&shared, recovered.shadow, |s| {
            s.sale.progress.materialised() >= 3
        });
        let snapshot = checkpoint::load(&shared.store)
            .expect("load")
            .expect("checkpointed");
        assert_eq!(snapshot.seq, 3);
        assert_eq!(snapshot.book.held, vec![((UserId(1), ProductId(1)), 3)]);
    }

    #[test]
    fn a_long_journal_from_before_checkpoints_is_checkpointed_only_after_its_last_record() {
        use flashsale_protocol::SaleRules;
        let dir = tempfile::TempDir::new().expect("temp dir");
        let store = crate::store::Store::open(dir.path()).expect("store");
        let product = |id: u64| Event::ProductCreated {
            id: ProductId(id),
            name: format!("P{id}"),
            price_cents: 1,
            stock: 1000,
            rules: SaleRules::default(),
        };
        let buy = |id: u64, product_id: u64| {
            let mut event = order(id);
            if let Event::OrderDecided(o) = &mut event {
                o.items[0].product_id = ProductId(product_id);
            }
            event
        };
        // 100 records (more than one materialiser round): orders of two
        // unlimited products, then a limit on product 1 with no seed (as
        // servers before checkpoints wrote it), then one more order.
        let mut records = vec![vec![product(1), product(2)]];
        records.extend((1..=97).map(|i| vec![buy(i, 1 + i % 2)]));
        records.push(vec![Event::RulesSet {
            product_id: ProductId(1),
            rules: SaleRules {
                max_per_buyer: Some(5),
                ..SaleRules::default()
            },
        }]);
        records.push(vec![buy(98, 2)]);
        write_journal(&store, &records);
        let mut config = crate::config::Config::new(dir.path());
        config.checkpoint_records = 1;
        let recover_and_materialise = |store: crate::store::Store| {
            let (queues, _receivers) = crate::sale::queues::shards(1, 16);
            let shared = Arc::new(
                Shared::new(config.clone(), store, queues, CancellationToken::new())
                    .expect("shared"),
            );
            let recovered = recover(&shared).expect("recover");
            materialise_until(&shared, recovered.shadow, |s| {
                s.sale.progress.checkpointed() >= 100
            });
            shared
        };
        let shared = recover_and_materialise(store);
        let snapshot = checkpoint::load(&shared.store)
            .expect("load")
            .expect("checkpointed");
        assert_eq!(snapshot.seq, 100);
        // Holdings of product 1 only (product 2 has no limit), one per buyer.
        assert!(snapshot
            .book
            .held
            .iter()
            .all(|((_, p), _)| *p == ProductId(1)));
        assert_eq!(
            snapshot.book.held.len(),
            48,
            "the even buyers bought product 1"
        );
        // A start from that checkpoint works and keeps the same holdings.
        let store = shared.store.clone();
        drop(shared);
        let shared = recover_and_materialise(store);
        assert_eq!(shared.sale.orders.held(UserId(2), ProductId(1)), 1);
        assert_eq!(
            shared.sale.orders.held(UserId(1), ProductId(2)),
            0,
            "untracked"
        );
    }
}
