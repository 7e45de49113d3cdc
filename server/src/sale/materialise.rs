//! The materialiser: writes the journal's orders into the order tables and
//! records checkpoints, off the hot path.
//!
//! One thread, at a lower CPU priority than the sale, reads the journal
//! records the journal thread has published ([`Progress`]), writes their
//! orders to the history tables in rounds of plain inserts (see
//! [`crate::sale::tables`]), then tells the
//! order book and the key index, which forget the orders and keys they held
//! for it. It keeps its own copy of the hot state ([`Shadow`]: book,
//! products, counts) by applying the same events, so a checkpoint is that
//! copy as of the last record applied, taken without stopping the sequencer.
//!
//! A checkpoint (every `Config::checkpoint_records` records, or every
//! `Config::checkpoint_interval` while records arrive): sync the tables,
//! write the state's chunks and then its head, sync, then delete the journal
//! records it covers (and whose cart updates are on disk). A kill at any
//! step leaves either the old checkpoint (and its journal) or the new one;
//! recovery skips records the checkpoint covers. While an online backup
//! runs, checkpoints wait (the backup holds `Store::backup_gate`).
//!
//! Between records it prunes expired idempotency keys from `order_keys`
//! (the buyer index keeps its keys: they are history).

use crate::error::ServerError;
use crate::sale::book::{Book, Event};
use crate::sale::catalog::Catalog;
use crate::sale::checkpoint::{self, Snapshot};
// A panic stops the server: the journal would wait for the materialiser
// forever once `max_unmaterialised` orders pend.
use crate::sale::journal::StopOnPanic;
use crate::sale::order_book::OrderCounts;
use crate::state::Shared;
use crate::store::{id_key, now_ms};
use flashsale_protocol::{OrderId, OrderInfo, OrderStatus};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Journal records applied in one round of table writes, at most.
const RECORDS_PER_ROUND: usize = 64;

/// Events after which a round ends (its table batches stay moderate).
const EVENTS_PER_ROUND: usize = 8192;

/// Pause between two walks of `order_keys` for expired keys.
const PRUNE_PAUSE: Duration = Duration::from_secs(60);

/// `order_keys` entries examined by one round of key pruning.
const PRUNE_PER_ROUND: usize = 10_000;

/// How long the thread sleeps when there is nothing to do.
const IDLE_WAIT: Duration = Duration::from_millis(100);

/// The sale counts as busy while a batch was published this recently.
const BUSY_FOR: Duration = Duration::from_millis(20);

/// Longest the materialiser defers to a busy sale between two rounds.
const MAX_DEFER: Duration = Duration::from_secs(1);

/// The journal's published sequence, and the stop signal.
#[derive(Debug, Default)]
pub(crate) struct Progress {
    published: AtomicU64,
    /// When the last batch was published, in ms since `epoch`.
    last_publish_ms: AtomicU64,
    /// The clock `last_publish_ms` counts from.
    epoch: OnceLock<Instant>,
    /// Last record written to the tables.
    materialised: AtomicU64,
    /// Record the latest checkpoint covers.
    checkpointed: AtomicU64,
    stopping: AtomicBool,
    lock: Mutex<()>,
    signal: Condvar,
}

impl Progress {
    /// The journal published every record up to `seq`.
    pub(crate) fn publish(&self, seq: u64) {
        self.published.fetch_max(seq, Ordering::AcqRel);
        self.last_publish_ms
            .store(self.elapsed_ms(), Ordering::Relaxed);
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.signal.notify_all();
    }

    fn elapsed_ms(&self) -> u64 {
        let epoch = self.epoch.get_or_init(Instant::now);
        u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// True when a batch was published within [`BUSY_FOR`].
    fn busy(&self) -> bool {
        let last = self.last_publish_ms.load(Ordering::Relaxed);
        self.elapsed_ms().saturating_sub(last) < BUSY_FOR.as_millis() as u64
    }

    /// Last published journal sequence.
    pub(crate) fn published(&self) -> u64 {
        self.published.load(Ordering::Acquire)
    }

    /// Last journal record written to the tables.
    pub(crate) fn materialised(&self) -> u64 {
        self.materialised.load(Ordering::Acquire)
    }

    /// Journal record the latest checkpoint covers.
    pub(crate) fn checkpointed(&self) -> u64 {
        self.checkpointed.load(Ordering::Acquire)
    }

    /// Tells the materialiser to checkpoint what it has applied and stop.
    pub(crate) fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.signal.notify_all();
    }

    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// Waits up to `timeout` for a record after `seq` or a stop.
    fn wait_beyond(&self, seq: u64, timeout: Duration) {
        let guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        if self.published() > seq || self.stopping() {
            return;
        }
        drop(self.signal.wait_timeout(guard, timeout));
    }
}

/// The materialiser's copy of the hot state, as of journal sequence `seq`.
pub(crate) struct Shadow {
    book: Book,
    catalog: Catalog,
    counts: OrderCounts,
    seq: u64,
    /// Records up to here were written before checkpoints existed: every
    /// holding is kept until they are applied.
    legacy_end: u64,
}

impl Shadow {
    /// The state of `snapshot` (an empty one without), with records up to
    /// `legacy_end` replayed keeping every holding.
    pub(crate) fn new(snapshot: Option<Snapshot>, legacy_end: u64) -> Self {
        match snapshot {
            Some(s) => {
                let catalog = Catalog::default();
                catalog.load(s.products);
                catalog.load_holds(&s.holds);
                Self {
                    book: Book::from_state(s.book, s.holds, None),
                    catalog,
                    counts: s.counts,
                    seq: s.seq,
                    legacy_end: 0,
                }
            }
            None => {
                let mut book = Book::new();
                if legacy_end > 0 {
                    book.track_all();
                }
                Self {
                    book,
                    catalog: Catalog::default(),
                    counts: OrderCounts::default(),
                    seq: 0,
                    legacy_end,
                }
            }
        }
    }

    fn apply(&mut self, events: &[Event], seq: u64) {
        for event in events {
            self.book.apply(event);
            self.catalog.apply(event);
        }
        self.counts.add(events);
        self.seq = seq;
        if self.legacy_end > 0 && seq >= self.legacy_end {
            // Past the records written before checkpoints: from here on,
            // holdings of untracked products are not kept (as the
            // sequencer's book, which stopped at the same record).
            self.book.stop_tracking_all();
            self.legacy_end = 0;
        }
    }

    /// True while records written before checkpoints remain to be applied:
    /// a checkpoint then would record holdings it cannot keep exact.
    fn replaying_legacy(&self) -> bool {
        self.legacy_end > 0
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            seq: self.seq,
            book: self.book.state(),
            products: self.catalog.records(),
            counts: self.counts,
            keys_pruned_through: OrderId(0),
            holds: self.book.holds_state(),
        }
    }
}

/// Starts the materialiser thread. A storage failure cancels `fatal`.
///
/// # Errors
/// The thread could not be spawned.
pub(crate) fn spawn(
    shared: Arc<Shared>,
    shadow: Shadow,
    fatal: CancellationToken,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("flashsale-materialise".into())
        .spawn(move || {
            lower_priority();
            shared
                .sale
                .progress
                .materialised
                .store(shadow.seq, Ordering::Release);
            shared
                .sale
                .progress
                .checkpointed
                .store(shadow.seq, Ordering::Release);
            let mut worker = Materialiser {
                last_checkpoint_seq: shadow.seq,
                last_checkpoint_at: Instant::now(),
                last_round: Instant::now(),
                prune_cursor: None,
                next_prune_walk: Instant::now(),
                shared,
                shadow,
            };
            let _stops_on_panic = StopOnPanic(&fatal, "materialiser");
            if let Err(e) = worker.run() {
                tracing::error!(error = %e, "the materialiser failed; stopping the server");
                fatal.cancel();
            }
        })
}

/// Gives the calling thread the lowest CPU priority (background work).
pub(crate) fn lower_priority() {
    // The lowest priority (niceness 19 on Linux): the sale's threads get
    // nearly all the CPU when both want it; the journal waits for the
    // materialiser only past `max_unmaterialised`.
    if thread_priority::set_current_thread_priority(thread_priority::ThreadPriority::Min).is_err() {
        tracing::debug!("could not lower this thread's priority");
    }
}

struct Materialiser {
    shared: Arc<Shared>,
    shadow: Shadow,
    last_checkpoint_seq: u64,
    last_checkpoint_at: Instant,
    /// When the last round of table writes ended.
    last_round: Instant,
    /// Where the next round of key pruning starts in `order_keys`.
    prune_cursor: Option<Vec<u8>>,
    /// When the next walk of `order_keys` may start.
    next_prune_walk: Instant,
}

impl Materialiser {
    fn run(&mut self) -> Result<(), ServerError> {
        let shared = Arc::clone(&self.shared);
        let progress = &shared.sale.progress;
        loop {
            // A stop does not wait for the tables to catch up: the next
            // start replays what is left (at most `max_unmaterialised`).
            if progress.stopping() {
                self.maybe_checkpoint(true)?;
                tracing::info!(seq = self.shadow.seq, "materialiser stopped");
                return Ok(());
            }
            let published = progress.published();
            if self.shadow.seq < published {
                if self.defer() {
                    // Look again once the sale may have paused.
                    std::thread::sleep(BUSY_FOR);
                    continue;
                }
                self.round(published)?;
                self.last_round = Instant::now();
                self.maybe_checkpoint(false)?;
                continue;
            }
            self.maybe_checkpoint(false)?;
            self.prune_keys()?;
            progress.wait_beyond(self.shadow.seq, IDLE_WAIT);
        }
    }

    /// True while the sale is busy (a batch published within [`BUSY_FOR`]),
    /// fewer than half of `max_unmaterialised` orders wait, and the last
    /// round is less than [`MAX_DEFER`] ago: the tables catch up when the
    /// peak is over, and at least a round a second under a steady load.
    fn defer(&self) -> bool {
        let sale = &self.shared.sale;
        sale.progress.busy()
            && sale.orders.pending_len() < self.shared.config.max_unmaterialised / 2
            && self.last_round.elapsed() < MAX_DEFER
    }

    /// Applies up to [`RECORDS_PER_ROUND`] records after the shadow's, up
    /// to `published`, to the tables and the shadow.
    fn round(&mut self, published: u64) -> Result<(), ServerError> {
        let store = &self.shared.store;
        let mut writes = TableWrites::default();
        let range = id_key(self.shadow.seq.saturating_add(1))..=id_key(published);
        let mut events_in_round = 0usize;
        for item in store.journal.range(range).take(RECORDS_PER_ROUND) {
            if events_in_round >= EVENTS_PER_ROUND {
                break;
            }
            let (key, value) = item?;
            let (seq, events) = crate::sale::journal::read_record(&key, &value)?;
            events_in_round += events.len();
            for event in &events {
                writes.add(self, event)?;
            }
            self.shadow.apply(&events, seq);
        }
        self.shadow.book.clear_keys();
        let last_order = writes.last_order();
        writes.apply(&self.shared)?;
        crate::telemetry::unmaterialised(self.shared.sale.orders.pending_len());
        if let Some(last) = last_order {
            self.shared.sale.keys.set_materialised(last);
        }
        self.shared
            .sale
            .orders
            .materialised_through(self.shadow.seq);
        self.shared
            .sale
            .progress
            .materialised
            .store(self.shadow.seq, Ordering::Release);
        Ok(())
    }

    /// Records a checkpoint when one is due (or, with `last`, when anything
    /// was applied since the previous one).
    fn maybe_checkpoint(&mut self, last: bool) -> Result<(), ServerError> {
        let config = &self.shared.config;
        let behind = self.shadow.seq.saturating_sub(self.last_checkpoint_seq);
        let due = behind >= config.checkpoint_records
            || (behind > 0
                && (last || self.last_checkpoint_at.elapsed() >= config.checkpoint_interval));
        if !due || self.shadow.replaying_legacy() {
            return Ok(());
        }
        let store = &self.shared.store;
        let _gate = match store.backup_gate.try_write() {
            Ok(gate) => gate,
            Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => {
                // A backup is streaming: try again after an interval.
                self.last_checkpoint_at = Instant::now();
                return Ok(());
            }
        };
        let carts_through = store.meta_u64(crate::sale::journal::CARTS_THROUGH)?;
        // The tables (and the cart checkpoint just read) on disk before a
        // checkpoint says they are.
        store.sync()?;
        crate::crash_point::reach("checkpoint-tables-synced");
        let started = Instant::now();
        checkpoint::write(store, &self.shadow.snapshot())?;
        crate::crash_point::reach("checkpoint-head-written");
        store.sync()?;
        crate::crash_point::reach("checkpoint-synced");
        let removed = checkpoint::truncate_journal(store, self.shadow.seq.min(carts_through))?;
        tracing::debug!(
            seq = self.shadow.seq,
            removed,
            took_ms = started.elapsed().as_millis() as u64,
            "checkpoint"
        );
        crate::telemetry::checkpoint(self.shadow.seq, started.elapsed());
        self.last_checkpoint_seq = self.shadow.seq;
        self.shared
            .sale
            .progress
            .checkpointed
            .store(self.shadow.seq, Ordering::Release);
        self.last_checkpoint_at = Instant::now();
        Ok(())
    }

    /// Deletes `order_keys` entries decided before the retention window,
    /// a round at a time, walking the table; a walk starts at most every
    /// [`PRUNE_PAUSE`].
    fn prune_keys(&mut self) -> Result<(), ServerError> {
        if self.prune_cursor.is_none() && Instant::now() < self.next_prune_walk {
            return Ok(());
        }
        let keys = &self.shared.sale.keys;
        let (next, removed) = self.shared.sale.orders.tables().prune_keys(
            self.prune_cursor.take(),
            keys.window_start(now_ms()),
            PRUNE_PER_ROUND,
        )?;
        if removed > 0 {
            tracing::debug!(removed, "expired idempotency keys pruned");
        }
        if next.is_none() {
            self.next_prune_walk = Instant::now() + PRUNE_PAUSE;
        }
        self.prune_cursor = next;
        Ok(())
    }
}

/// The table writes of one round: the orders as the round leaves them,
/// in journal order, and which of them are new. Written as plain
/// inserts, never a sled batch: the first batch of a process puts every
/// later sled write behind a global lock.
#[derive(Default)]
struct TableWrites {
    orders: Vec<OrderInfo>,
    new: Vec<OrderId>,
}

impl TableWrites {
    fn add(&mut self, worker: &Materialiser, event: &Event) -> Result<(), ServerError> {
        match event {
            Event::OrderDecided(order) => {
                // In the filter before the order counts as materialised
                // (and the sequencer may forget its key).
                worker
                    .shared
                    .sale
                    .keys
                    .insert(order.user_id, order.idempotency_key);
                self.new.push(order.id);
                self.orders.push(order.clone());
            }
            Event::OrderCancelled { order_id, .. } => {
                // The order book holds the cancelled version until this
                // record is materialised (or, after a restart, the table
                // holds it already).
                let current = worker.shared.sale.orders.current(*order_id)?;
                if let Some(mut order) = current {
                    if matches!(
                        order.status,
                        OrderStatus::Confirmed | OrderStatus::Cancelled
                    ) {
                        order.status = OrderStatus::Cancelled;
                        self.orders.push(order);
                    }
                }
            }
            Event::HoldPaid { .. } | Event::HoldReleased { .. } | Event::HoldExpired { .. } => {
                let Some((order_id, to)) = event.hold_end() else {
                    return Ok(());
                };
                // As for a cancellation: the order book or the table has
                // the order; a later change (a paid hold cancelled) in the
                // same round is written after this one.
                if let Some(mut order) = worker.shared.sale.orders.current(order_id)? {
                    if matches!(order.status, OrderStatus::Held { .. }) || order.status == to {
                        order.status = to;
                        self.orders.push(order);
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn apply(self, shared: &Shared) -> Result<(), ServerError> {
        // Not atomic across trees: the order book forgets these orders only
        // after every table is written, and a crash replays the records
        // (the writes are idempotent).
        shared.sale.orders.tables().write(&self.orders, &self.new)
    }

    fn last_order(&self) -> Option<OrderId> {
        self.new.last().copied()
    }
}
