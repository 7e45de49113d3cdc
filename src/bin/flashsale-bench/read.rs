//! The read mode (`--read-orders N --read-ids FIRST..LAST`): instead of a
//! sale, `GetOrder` of N order ids drawn uniformly from a range, as the
//! admin (who may read any order), `--pipeline` requests in flight on each
//! of `--connections` connections. It measures how fast stored orders are
//! answered, e.g. the first million of a data dir filled with ten
//! (`benches/scale.sh`), which the server reads from its sled tables.
//!
//! Every id in the range must exist: an order not found, or a different
//! order answered, counts as an error, and any error makes the exit code 1.

use crate::setup::Target;
use crate::Args;
use flashsale::client::{Client, ClientError};
use flashsale::protocol::OrderId;
use hdrhistogram::Histogram;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Highest latency the histogram records, in microseconds (one minute).
const MAX_LATENCY_US: u64 = 60_000_000;

/// Most reads one run may ask for: each lane keeps one latency (4 bytes)
/// per read until the end, so this bounds the harness's memory (~400 MB).
pub const MAX_READS: u64 = 100_000_000;

/// Parses `--read-ids`: `FIRST..LAST` or `FIRST..=LAST`, both included,
/// with 1 <= FIRST <= LAST.
pub fn parse_ids(text: &str) -> Result<RangeInclusive<u64>, String> {
    let (first, last) = text
        .split_once("..")
        .ok_or_else(|| format!("`{text}` is not FIRST..LAST"))?;
    let last = last.strip_prefix('=').unwrap_or(last);
    let number = |s: &str| {
        s.trim()
            .replace('_', "")
            .parse::<u64>()
            .map_err(|e| format!("`{s}` in --read-ids: {e}"))
    };
    let (first, last) = (number(first)?, number(last)?);
    if first == 0 || first > last {
        return Err(format!(
            "--read-ids {text}: want 1 <= FIRST <= LAST (order ids start at 1)"
        ));
    }
    Ok(first..=last)
}

/// What one lane saw.
struct Lane {
    /// Latencies of the reads that found their order, µs (into a histogram
    /// after the run).
    latency_us: Vec<u32>,
    found: u64,
    /// Failed reads by reason: an error code, `WrongOrder`, `Timeout`, ...
    errors: BTreeMap<String, u64>,
}

impl Lane {
    fn record(&mut self, id: OrderId, result: Result<OrderId, ClientError>, took: Duration) {
        let micros = u64::try_from(took.as_micros())
            .unwrap_or(u64::MAX)
            .clamp(1, MAX_LATENCY_US);
        let reason = match result {
            Ok(answered) if answered == id => {
                self.found += 1;
                self.latency_us
                    .push(u32::try_from(micros).unwrap_or(u32::MAX));
                return;
            }
            Ok(_) => "WrongOrder".to_owned(),
            Err(e) if e.is_timeout() => "Timeout".to_owned(),
            Err(ClientError::Disconnected(_)) => "Disconnected".to_owned(),
            Err(e) => e
                .code()
                .map_or_else(|| "ClientError".to_owned(), |code| code.to_string()),
        };
        *self.errors.entry(reason).or_default() += 1;
    }
}

/// Figures of one read run.
pub struct ReadReport {
    scenario: String,
    reads: u64,
    found: u64,
    errors: BTreeMap<String, u64>,
    latency: Histogram<u64>,
    elapsed: Duration,
}

/// Reads `reads` orders with ids drawn from `ids`.
///
/// # Errors
/// The server cannot be reached or the admin cannot log in.
pub async fn run(args: &Args, reads: u64, ids: RangeInclusive<u64>) -> anyhow::Result<ReadReport> {
    anyhow::ensure!(
        (1..=MAX_READS).contains(&reads),
        "--read-orders must be 1 to {MAX_READS}"
    );
    let target = Target::start(args).await?;
    let clients = target
        .admin_connections(args.connections, args.pipeline)
        .await?;
    let next = Arc::new(AtomicU64::new(0));
    let per_lane = usize::try_from(reads.div_ceil((clients.len() * args.pipeline) as u64))
        .unwrap_or(0)
        .saturating_mul(5)
        / 4
        + 64;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (c, client) in clients.iter().enumerate() {
        for lane in 0..args.pipeline {
            let seed = args.seed ^ ((c * 10_000 + lane) as u64).wrapping_mul(0x2545_F491_4F6C_DD1D);
            let task = read_lane(
                client.clone(),
                Arc::clone(&next),
                reads,
                ids.clone(),
                seed,
                per_lane,
            );
            tasks.push(tokio::spawn(task));
        }
    }
    let mut lanes = Vec::with_capacity(tasks.len());
    for task in tasks {
        lanes.push(task.await?);
    }
    let elapsed = start.elapsed();
    target.stop().await?;
    let mut report = ReadReport {
        scenario: format!(
            "GetOrder of {reads} random orders with ids {}..={}, {} connections × pipeline {}, server {}",
            ids.start(),
            ids.end(),
            args.connections,
            args.pipeline,
            args.addr
        ),
        reads,
        found: 0,
        errors: BTreeMap::new(),
        latency: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)?,
        elapsed,
    };
    for lane in lanes {
        report.found += lane.found;
        for micros in lane.latency_us {
            let _ = report.latency.record(u64::from(micros));
        }
        for (reason, n) in lane.errors {
            *report.errors.entry(reason).or_default() += n;
        }
    }
    Ok(report)
}

/// One lane: reads one order after another until `reads` are claimed.
async fn read_lane(
    client: Client,
    next: Arc<AtomicU64>,
    reads: u64,
    ids: RangeInclusive<u64>,
    seed: u64,
    capacity: usize,
) -> Lane {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut lane = Lane {
        latency_us: Vec::with_capacity(capacity),
        found: 0,
        errors: BTreeMap::new(),
    };
    while next.fetch_add(1, Ordering::Relaxed) < reads {
        let id = OrderId(rng.gen_range(ids.clone()));
        let sent = Instant::now();
        let result = client.order(id).await.map(|order| order.id);
        lane.record(id, result, sent.elapsed());
    }
    lane
}

impl ReadReport {
    fn failed(&self) -> u64 {
        self.errors.values().sum()
    }

    /// True when every read found its order.
    pub fn all_found(&self) -> bool {
        self.failed() == 0 && self.found == self.reads
    }

    fn reads_per_s(&self) -> f64 {
        (self.found + self.failed()) as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The JSON object printed with `--json`.
    pub fn json(&self) -> Value {
        let l = &self.latency;
        json!({
            "mode": "read-orders",
            "scenario": self.scenario,
            "reads": self.reads,
            "found": self.found,
            "errors": self.failed(),
            "errors_by_reason": self.errors,
            "reads_per_s": self.reads_per_s(),
            "read_p50_us": l.value_at_quantile(0.50),
            "read_p90_us": l.value_at_quantile(0.90),
            "read_p99_us": l.value_at_quantile(0.99),
            "read_p999_us": l.value_at_quantile(0.999),
            "read_max_us": l.max(),
            "elapsed_s": self.elapsed.as_secs_f64(),
            "all_found": self.all_found(),
        })
    }

    /// Prints the human report on stdout.
    pub fn print(&self) {
        let l = &self.latency;
        println!("order reads: {}", self.scenario);
        println!("  lasted            {:.3} s", self.elapsed.as_secs_f64());
        println!("  reads/s           {:.0}", self.reads_per_s());
        println!("  found             {} of {}", self.found, self.reads);
        for (reason, n) in &self.errors {
            println!("  error {reason:<11} {n}");
        }
        println!(
            "  read latency      p50 {} µs, p90 {} µs, p99 {} µs, p99.9 {} µs, max {} µs",
            l.value_at_quantile(0.5),
            l.value_at_quantile(0.9),
            l.value_at_quantile(0.99),
            l.value_at_quantile(0.999),
            l.max()
        );
        if !self.all_found() {
            println!("  NOT ALL FOUND: every id in the range must be an order");
        }
    }

    /// The read-latency distribution, one `percentile value_us count` row per step.
    pub fn histogram_text(&self) -> String {
        crate::report::histogram_rows("read_latency_us", &self.latency)
    }
}

#[cfg(test)]
mod tests {
    use super::parse_ids;

    #[test]
    fn read_ids_take_both_ends_and_refuse_empty_or_zero_ranges() {
        assert_eq!(parse_ids("1..1000"), Ok(1..=1000));
        assert_eq!(parse_ids("5..=5"), Ok(5..=5));
        assert_eq!(parse_ids("1..1_000_000"), Ok(1..=1_000_000));
        assert!(parse_ids("0..10").is_err());
        assert!(parse_ids("10..9").is_err());
        assert!(parse_ids("10").is_err());
        assert!(parse_ids("a..b").is_err());
    }
}
