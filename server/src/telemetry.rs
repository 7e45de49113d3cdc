//! Metrics: names, descriptions, histogram buckets, and the few recording
//! calls the server makes.
//!
//! The library only records, through the [`metrics`] facade; it never
//! installs a recorder. Without one (tests, embedded servers) every call is a
//! no-op. The `flashsale-server` binary installs a Prometheus recorder when
//! `--metrics-addr` is given, **before** it opens the server: metric handles
//! are resolved once, on first use, from the recorder installed at that
//! moment, and kept (so the pay path never builds a metric key).
//!
//! Metrics (all prefixed `flashsale_`):
//!
//! | name | type | labels | what |
//! | --- | --- | --- | --- |
//! | `requests_total` | counter | `kind`, `outcome` | answered client requests; `outcome` is `ok` or the error code |
//! | `orders_accepted_total` | counter | | orders decided (durable), confirmed or rejected |
//! | `orders_confirmed_total` | counter | | orders confirmed |
//! | `orders_rejected_total` | counter | `reason` | orders rejected, by error code |
//! | `intake_refused_total` | counter | `reason` | pay/buy refused before a queue (no order made); `RateLimited` for a pay rate limit |
//! | `shard_queue_depth` | gauge | | commands waiting in the shard queues, sampled at each journal write |
//! | `batch_decisions` | histogram | | commands decided per batch |
//! | `journal_flush_seconds` | histogram | | time to write and flush one group of batches |
//! | `order_answer_seconds` | histogram | | from reading a pay/buy to answering it with its decided, durable order |
//! | `connections` | gauge | | open client connections |
//! | `pushes_dropped_total` | counter | | pushes dropped because a connection's push buffer was full |
//! | `cluster_leader` | gauge | | cluster mode: 1 while this node leads, else 0 |
//! | `cluster_applied_sequence` | gauge | | cluster mode: last stream sequence this node applied (standby) or had acknowledged (leader) |
//! | `cluster_stream_last_sequence` | gauge | | cluster mode: the stream's last sequence as this node last saw it |
//! | `cluster_lag` | gauge | | cluster mode: stream entries this node is behind |

use crate::sale::book::Event;
use flashsale_protocol::{ErrorCode, OrderStatus};
use metrics::{Counter, Gauge, Histogram, Unit};
use std::sync::OnceLock;
use std::time::Duration;

/// Answered client requests, by `kind` and `outcome`.
pub const REQUESTS: &str = "flashsale_requests_total";
/// Orders made durable with their decision.
pub const ORDERS_ACCEPTED: &str = "flashsale_orders_accepted_total";
/// Orders confirmed.
pub const ORDERS_CONFIRMED: &str = "flashsale_orders_confirmed_total";
/// Orders rejected, by `reason`.
pub const ORDERS_REJECTED: &str = "flashsale_orders_rejected_total";
/// Pay/buy requests refused at intake, by `reason`.
pub const INTAKE_REFUSED: &str = "flashsale_intake_refused_total";
/// Commands waiting in the shard queues.
pub const SHARD_QUEUE_DEPTH: &str = "flashsale_shard_queue_depth";
/// Commands decided per batch.
pub const BATCH_DECISIONS: &str = "flashsale_batch_decisions";
/// Seconds to write and flush one journal group.
pub const JOURNAL_FLUSH_SECONDS: &str = "flashsale_journal_flush_seconds";
/// Open client connections.
pub const CONNECTIONS: &str = "flashsale_connections";
/// Seconds from reading a pay/buy request to its answer with a durable order.
pub const ORDER_ANSWER_SECONDS: &str = "flashsale_order_answer_seconds";
/// Gauge: the journal sequence the last checkpoint covers.
pub const CHECKPOINT_SEQUENCE: &str = "flashsale_checkpoint_sequence";
/// Gauge: time the last checkpoint took, in seconds.
pub const CHECKPOINT_SECONDS: &str = "flashsale_checkpoint_seconds";
/// Gauge: orders published but not yet in the order tables.
pub const ORDERS_UNMATERIALISED: &str = "flashsale_orders_unmaterialised";
/// Gauge: 1 while this node leads its cluster.
pub const CLUSTER_LEADER: &str = "flashsale_cluster_leader";
/// Gauge: the last stream sequence this node applied or had acknowledged.
pub const CLUSTER_APPLIED: &str = "flashsale_cluster_applied_sequence";
/// Gauge: the cluster stream's last sequence as last seen.
pub const CLUSTER_STREAM_LAST: &str = "flashsale_cluster_stream_last_sequence";
/// Gauge: stream entries this node is behind.
pub const CLUSTER_LAG: &str = "flashsale_cluster_lag";
/// Gauge: the cluster stream's first sequence (trimmed behind snapshots).
pub const CLUSTER_STREAM_FIRST: &str = "flashsale_cluster_stream_first_sequence";
/// Gauge: the stream sequence the stored snapshot covers.
pub const CLUSTER_SNAPSHOT: &str = "flashsale_cluster_snapshot_sequence";
/// Counter: holds placed (orders decided `Held`).
pub const HOLDS_PLACED: &str = "flashsale_holds_placed_total";
/// Counter: holds ended, by `how`: `paid`, `released`, `expired`.
pub const HOLDS_ENDED: &str = "flashsale_holds_ended_total";
/// Gauge: units in live holds, all products.
pub const HELD_UNITS: &str = "flashsale_held_units";
/// Counter: pushes dropped because a connection's push buffer was full.
pub const PUSHES_DROPPED_TOTAL: &str = "flashsale_pushes_dropped_total";

/// Bucket bounds of [`ORDER_ANSWER_SECONDS`]: 100 µs to 2.5 s.
pub const ANSWER_BUCKETS: &[f64] = &[
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Bucket bounds of [`BATCH_DECISIONS`]: powers of two up to the largest batch.
pub const BATCH_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0,
];

/// Bucket bounds of [`JOURNAL_FLUSH_SECONDS`]: 50 µs to 1 s (an `fdatasync`
/// takes from tens of microseconds on a write-cached SSD to tens of ms on a disk).
pub const FLUSH_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0,
];

/// Histograms and their bucket bounds, for the binary's exporter.
pub const HISTOGRAMS: &[(&str, &[f64])] = &[
    (BATCH_DECISIONS, BATCH_BUCKETS),
    (JOURNAL_FLUSH_SECONDS, FLUSH_BUCKETS),
    (ORDER_ANSWER_SECONDS, ANSWER_BUCKETS),
];

/// Registers the descriptions (Prometheus `# HELP` lines) with the
/// installed recorder. Called by the binary after installing it.
pub fn describe() {
    metrics::describe_counter!(REQUESTS, "Answered client requests by kind and outcome.");
    metrics::describe_counter!(ORDERS_ACCEPTED, "Orders decided and made durable.");
    metrics::describe_counter!(ORDERS_CONFIRMED, "Orders confirmed.");
    metrics::describe_counter!(ORDERS_REJECTED, "Orders rejected, by reason.");
    metrics::describe_counter!(
        INTAKE_REFUSED,
        "Pay and buy requests refused at intake (no order made), by reason."
    );
    metrics::describe_gauge!(
        SHARD_QUEUE_DEPTH,
        "Commands waiting in the shard queues (sampled at each journal write)."
    );
    metrics::describe_histogram!(BATCH_DECISIONS, "Commands decided per batch.");
    metrics::describe_histogram!(
        JOURNAL_FLUSH_SECONDS,
        Unit::Seconds,
        "Time to write and flush one group of journal batches."
    );
    metrics::describe_gauge!(CONNECTIONS, "Open client connections.");
    metrics::describe_gauge!(CLUSTER_LEADER, "Cluster mode: 1 while this node leads.");
    metrics::describe_gauge!(
        CLUSTER_APPLIED,
        "Cluster mode: the last stream sequence this node applied (standby) or had acknowledged (leader)."
    );
    metrics::describe_gauge!(
        CLUSTER_STREAM_LAST,
        "Cluster mode: the replicated stream's last sequence as this node last saw it."
    );
    metrics::describe_gauge!(
        CLUSTER_LAG,
        "Cluster mode: stream entries this node is behind."
    );
    metrics::describe_gauge!(
        CLUSTER_STREAM_FIRST,
        "Cluster mode: the replicated stream's first sequence (trimmed behind snapshots) as this node last saw it."
    );
    metrics::describe_gauge!(
        CLUSTER_SNAPSHOT,
        "Cluster mode: the stream sequence the stored snapshot covers (0: none yet)."
    );
    metrics::describe_counter!(HOLDS_PLACED, "Holds placed: orders decided Held.");
    metrics::describe_counter!(
        HOLDS_ENDED,
        "Holds ended, by how: paid (confirmed), released early, expired unpaid."
    );
    metrics::describe_gauge!(HELD_UNITS, "Units in live holds, all products.");
    metrics::describe_counter!(
        PUSHES_DROPPED_TOTAL,
        "Pushes dropped because a connection's push buffer was full (the outcome stays readable with GetOrder)."
    );
    metrics::describe_histogram!(
        ORDER_ANSWER_SECONDS,
        Unit::Seconds,
        "From reading a pay or buy request to answering it with its decided, durable order."
    );
}

/// Every [`ErrorCode`], in wire order, for the outcome label and the cache.
const CODES: [ErrorCode; ErrorCode::ALL.len()] = ErrorCode::ALL;

/// The label value of an error code, without allocating. A code added to
/// the protocol must be added here and to [`CODES`].
pub(crate) fn code_name(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::BadRequest => "BadRequest",
        ErrorCode::Unauthenticated => "Unauthenticated",
        ErrorCode::Forbidden => "Forbidden",
        ErrorCode::NotFound => "NotFound",
        ErrorCode::EmptyCart => "EmptyCart",
        ErrorCode::SoldOut => "SoldOut",
        ErrorCode::LimitExceeded => "LimitExceeded",
        ErrorCode::SaleNotOpen => "SaleNotOpen",
        ErrorCode::Overloaded => "Overloaded",
        ErrorCode::UnsupportedVersion => "UnsupportedVersion",
        ErrorCode::Internal => "Internal",
        ErrorCode::NotImplemented => "NotImplemented",
        ErrorCode::ShuttingDown => "ShuttingDown",
        ErrorCode::AlreadyExists => "AlreadyExists",
        ErrorCode::IdempotencyKeyReused => "IdempotencyKeyReused",
        ErrorCode::QuotaExceeded => "QuotaExceeded",
        ErrorCode::NotLeader => "NotLeader",
        ErrorCode::HoldExpired => "HoldExpired",
        ErrorCode::NotHeld => "NotHeld",
        ErrorCode::PaymentRefMismatch => "PaymentRefMismatch",
    }
}

/// Outcomes of a request: `ok`, then every error code.
const OUTCOMES: usize = CODES.len() + 1;

/// The request kinds whose counters are cached: the sale's hot path, where a
/// sold-out storm answers hundreds of thousands of requests a second.
const HOT_KINDS: [&str; 2] = ["pay", "buy"];

/// Handles resolved once, on first use, from the recorder installed then.
/// Building a metric's key and finding it in the recorder costs an
/// allocation and a hash lookup; an increment through a cached handle is
/// one atomic add (and nothing without a recorder). A series appears once
/// it is first used.
struct Cells<T, const N: usize>([OnceLock<T>; N]);

impl<T, const N: usize> Cells<T, N> {
    const fn new() -> Self {
        Self([const { OnceLock::new() }; N])
    }

    fn get(&self, slot: usize, make: impl FnOnce() -> T) -> Option<&T> {
        Some(self.0.get(slot)?.get_or_init(make))
    }
}

static HOT_REQUESTS: [Cells<Counter, OUTCOMES>; HOT_KINDS.len()] =
    [const { Cells::new() }; HOT_KINDS.len()];
static INTAKE_REFUSALS: Cells<Counter, OUTCOMES> = Cells::new();
static REJECTIONS: Cells<Counter, OUTCOMES> = Cells::new();
static ACCEPTED: OnceLock<Counter> = OnceLock::new();
static CONFIRMED: OnceLock<Counter> = OnceLock::new();
static HOLDS: OnceLock<Counter> = OnceLock::new();
static HOLDS_PAID: OnceLock<Counter> = OnceLock::new();
static HOLDS_RELEASED: OnceLock<Counter> = OnceLock::new();
static HOLDS_EXPIRED: OnceLock<Counter> = OnceLock::new();

/// Counts one hold ended `how` (each counter made once: this runs per
/// event on the journal thread).
fn hold_ended(cell: &OnceLock<Counter>, how: &'static str) {
    cell.get_or_init(|| metrics::counter!(HOLDS_ENDED, "how" => how))
        .increment(1);
}
static BATCH_SIZES: OnceLock<Histogram> = OnceLock::new();
static FLUSH_TIMES: OnceLock<Histogram> = OnceLock::new();
static QUEUE_DEPTH: OnceLock<Gauge> = OnceLock::new();
static OPEN_CONNECTIONS: OnceLock<Gauge> = OnceLock::new();
static ORDER_ANSWERS: OnceLock<Histogram> = OnceLock::new();

/// Records how long a pay/buy took to be answered with its durable order
/// (the decision latency a buyer sees; refusals from memory are not timed).
pub(crate) fn order_answered(latency: Duration) {
    ORDER_ANSWERS
        .get_or_init(|| metrics::histogram!(ORDER_ANSWER_SECONDS))
        .record(latency.as_secs_f64());
}

/// The cache slot of an outcome; `None` for a code missing from [`CODES`].
fn outcome_index(outcome: Option<ErrorCode>) -> Option<usize> {
    match outcome {
        None => Some(0),
        Some(code) => CODES.iter().position(|c| *c == code).map(|i| i + 1),
    }
}

/// Counts one answered request; `outcome` is `None` for success.
pub(crate) fn request_done(kind: &'static str, outcome: Option<ErrorCode>) {
    let label = outcome.map_or("ok", code_name);
    let make = || metrics::counter!(REQUESTS, "kind" => kind, "outcome" => label);
    let cached = HOT_KINDS
        .iter()
        .position(|k| *k == kind)
        .zip(outcome_index(outcome))
        .and_then(|(hot, slot)| HOT_REQUESTS[hot].get(slot, make));
    match cached {
        Some(counter) => counter.increment(1),
        None => make().increment(1),
    }
}

/// A counter labelled `reason` = `code`, cached in `cells`.
fn by_reason(cells: &Cells<Counter, OUTCOMES>, name: &'static str, code: ErrorCode) {
    let make = || metrics::counter!(name, "reason" => code_name(code));
    match outcome_index(Some(code)).and_then(|slot| cells.get(slot, make)) {
        Some(counter) => counter.increment(1),
        None => make().increment(1),
    }
}

/// Counts the orders of a durable batch (called as the batch is published).
pub(crate) fn orders_published(events: &[Event]) {
    for event in events {
        let order = match event {
            Event::OrderDecided(order) => order,
            Event::HoldPaid { .. } => {
                hold_ended(&HOLDS_PAID, "paid");
                continue;
            }
            Event::HoldReleased { .. } => {
                hold_ended(&HOLDS_RELEASED, "released");
                continue;
            }
            Event::HoldExpired { .. } => {
                hold_ended(&HOLDS_EXPIRED, "expired");
                continue;
            }
            _ => continue,
        };
        ACCEPTED
            .get_or_init(|| metrics::counter!(ORDERS_ACCEPTED))
            .increment(1);
        match &order.status {
            OrderStatus::Confirmed => CONFIRMED
                .get_or_init(|| metrics::counter!(ORDERS_CONFIRMED))
                .increment(1),
            OrderStatus::Rejected { code, .. } => by_reason(&REJECTIONS, ORDERS_REJECTED, *code),
            OrderStatus::Held { .. } => HOLDS
                .get_or_init(|| metrics::counter!(HOLDS_PLACED))
                .increment(1),
            OrderStatus::Pending
            | OrderStatus::Cancelled
            | OrderStatus::Expired
            | OrderStatus::Released => {}
        }
    }
}

/// Counts a pay/buy request refused at intake.
pub(crate) fn intake_refused(code: ErrorCode) {
    by_reason(&INTAKE_REFUSALS, INTAKE_REFUSED, code);
}

static RATE_LIMITED: OnceLock<Counter> = OnceLock::new();

/// Counts a pay/buy request refused by a pay rate limit (answered
/// `Overloaded`; counted apart from a full queue as reason `RateLimited`).
pub(crate) fn rate_limited() {
    RATE_LIMITED
        .get_or_init(|| metrics::counter!(INTAKE_REFUSED, "reason" => "RateLimited"))
        .increment(1);
}

/// Records one journal group: commands per batch, the flush time, and the
/// queue depth seen afterwards.
pub(crate) fn journal_group(
    batch_sizes: impl Iterator<Item = usize>,
    flush: Duration,
    queued: u64,
) {
    let decisions = BATCH_SIZES.get_or_init(|| metrics::histogram!(BATCH_DECISIONS));
    for size in batch_sizes {
        decisions.record(size as f64);
    }
    FLUSH_TIMES
        .get_or_init(|| metrics::histogram!(JOURNAL_FLUSH_SECONDS))
        .record(flush.as_secs_f64());
    QUEUE_DEPTH
        .get_or_init(|| metrics::gauge!(SHARD_QUEUE_DEPTH))
        .set(queued as f64);
}

/// Records a checkpoint: the journal sequence it covers and its duration.
pub(crate) fn checkpoint(seq: u64, took: Duration) {
    metrics::gauge!(CHECKPOINT_SEQUENCE).set(seq as f64);
    metrics::gauge!(CHECKPOINT_SECONDS).set(took.as_secs_f64());
}

/// Records the orders waiting for the materialiser.
/// A cluster node's view of itself, every third of the lease TTL.
pub(crate) fn cluster(leader: bool, applied: u64, stream_last: u64) {
    metrics::gauge!(CLUSTER_LEADER).set(if leader { 1.0 } else { 0.0 });
    metrics::gauge!(CLUSTER_APPLIED).set(applied as f64);
    metrics::gauge!(CLUSTER_STREAM_LAST).set(stream_last as f64);
    metrics::gauge!(CLUSTER_LAG).set(stream_last.saturating_sub(applied) as f64);
}

/// The stream's trimmed start and the stored snapshot (0: none).
pub(crate) fn cluster_snapshot(stream_first: u64, snapshot: u64) {
    metrics::gauge!(CLUSTER_STREAM_FIRST).set(stream_first as f64);
    metrics::gauge!(CLUSTER_SNAPSHOT).set(snapshot as f64);
}

/// Units in live holds.
pub(crate) fn held_units(units: u64) {
    metrics::gauge!(HELD_UNITS).set(units as f64);
}

pub(crate) fn unmaterialised(orders: usize) {
    metrics::gauge!(ORDERS_UNMATERIALISED).set(orders as f64);
}

static PUSHES_DROPPED: OnceLock<Counter> = OnceLock::new();

/// Counts a push dropped because its connection's push buffer was full.
pub(crate) fn push_dropped() {
    PUSHES_DROPPED
        .get_or_init(|| metrics::counter!(PUSHES_DROPPED_TOTAL))
        .increment(1);
}

/// A connection opened (`true`) or closed.
pub(crate) fn connection(open: bool) {
    let gauge = OPEN_CONNECTIONS.get_or_init(|| metrics::gauge!(CONNECTIONS));
    if open {
        gauge.increment(1.0);
    } else {
        gauge.decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_its_own_outcome_slot() {
        let mut seen = std::collections::HashSet::new();
        for code in CODES {
            let index = outcome_index(Some(code)).expect("cached");
            assert!(index > 0 && index < OUTCOMES);
            assert!(seen.insert(index));
            assert_eq!(code_name(code), code.to_string());
        }
        assert_eq!(outcome_index(None), Some(0));
    }
}
