//! `flashsale-bench`: stages a flash sale against a server, measures it, and
//! checks against the server's own state that nothing was oversold.
//!
//! Phases: set-up (not timed: products, a partner account, carts), the sale
//! (timed: pay attempts from many connections, pipelined), the drain (every
//! accepted order's outcome), and the verification. Exit code 1 when an
//! invariant fails.
//!
//! With `--read-orders` it stages no sale: it reads stored orders by id and
//! measures that instead (`read.rs`).

mod faults;
mod read;
mod report;
mod sale;
mod setup;
mod timeline;
mod verify;

use clap::{Parser, ValueEnum};
use std::path::PathBuf;
use std::time::Duration;

/// mimalloc: the request path allocates many small, short-lived objects
/// across threads, where it is measurably faster than the system allocator
/// (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Stage a flash sale against a flashsale server and measure it.
#[derive(Debug, Clone, Parser)]
#[command(
    version,
    about = "Stage a flash sale against a flashsale server, measure it, and verify the result against the server's own state."
)]
pub struct Args {
    /// Server to drive (ignored with --embedded); for a cluster, every
    /// node, comma-separated (the harness follows the leader through a
    /// failover).
    #[arg(long, env = "FLASHSALE_ADDR", default_value = "127.0.0.1:7878")]
    pub addr: String,
    /// Connect with TLS (not with --embedded), checking the server's
    /// certificate against --addr's IP (public CAs, or --ca-cert).
    #[arg(long, env = "FLASHSALE_TLS")]
    pub tls: bool,
    /// PEM file of the CA that signed the server's certificate; implies --tls.
    #[arg(long, env = "FLASHSALE_CA_CERT", value_name = "PEM")]
    pub ca_cert: Option<PathBuf>,
    /// Start a server in this process, on a temp dir, and drive it.
    #[arg(long)]
    pub embedded: bool,
    /// Durability of the embedded server: `always` or `relaxed`.
    #[arg(long, value_enum, default_value_t = Durability::Always)]
    pub sync: Durability,
    /// Shards of the embedded server (default: number of cores).
    #[arg(long)]
    pub shards: Option<usize>,
    /// Admin account used for set-up and verification (not with --embedded).
    #[arg(long, env = "FLASHSALE_USER", default_value = "admin")]
    pub user: String,
    /// Its password (not with --embedded).
    #[arg(
        long,
        env = "FLASHSALE_PASSWORD",
        default_value = "",
        hide_env_values = true
    )]
    pub password: String,
    /// Distinct buyers (partner buyer references).
    #[arg(long, default_value_t = 10_000)]
    pub buyers: usize,
    /// Partner connections.
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// Products on sale (created fresh for the run).
    #[arg(long, default_value_t = 1)]
    pub products: usize,
    /// Stock of each product.
    #[arg(long, default_value_t = 1000)]
    pub stock: u64,
    /// Pay attempts in total (the sale ends when all are answered).
    #[arg(long, default_value_t = 200_000)]
    pub requests: u64,
    /// End the sale after this many seconds instead, whatever --requests says.
    #[arg(long)]
    pub duration: Option<f64>,
    /// Requests in flight per connection.
    #[arg(long, default_value_t = 16)]
    pub pipeline: usize,
    /// Share of attempts aimed at product 1 (0 to 1); the rest are drawn
    /// uniformly from all products, product 1 included.
    #[arg(long, default_value_t = 0.0)]
    pub hot: f64,
    /// Products per order.
    #[arg(long, default_value_t = 1)]
    pub items: usize,
    /// `buy`: express checkout; `pay`: carts filled in set-up, then paid;
    /// `cart+pay`: cart add and pay, both timed; `hold`: express holds,
    /// `--pay-share` paid, the rest expiring.
    #[arg(long, value_enum, default_value_t = Flow::Buy)]
    pub flow: Flow,
    /// `--flow hold`: share of the holds paid (0 to 1).
    #[arg(long, default_value_t = 0.7)]
    pub pay_share: f64,
    /// `--flow hold`: how long each hold lasts, in ms (at most the
    /// server's hold time).
    #[arg(long, default_value_t = 2000)]
    pub hold_ms: u64,
    /// Seed of every random choice, for reproducible runs.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Print one JSON object on stdout instead of the human report.
    #[arg(long)]
    pub json: bool,
    /// Write the answer-latency distribution (HdrHistogram percentiles) to this file.
    #[arg(long)]
    pub histogram: Option<PathBuf>,
    /// Draw decisions/s and the answer p99 per 100 ms over the sale into
    /// this SVG file, with each --fault marked.
    #[arg(long, value_name = "FILE.svg")]
    pub timeline: Option<PathBuf>,
    /// Cause a fault SECS into the sale by running COMMAND with `sh -c`
    /// (e.g. `5:scripts/local-cluster.sh kill-leader`); repeatable. Attempts
    /// left unanswered by it are sent again with their keys after the sale.
    #[arg(long, value_name = "SECS:COMMAND", value_parser = faults::parse)]
    pub fault: Vec<faults::FaultSpec>,
    /// Instead of a sale: read this many stored orders by id (`GetOrder`
    /// as the admin, ids from --read-ids), --pipeline in flight on each of
    /// --connections connections; report their latency. An id not found is
    /// an error (exit code 1).
    #[arg(
        long,
        value_name = "N",
        requires = "read_ids",
        conflicts_with = "embedded"
    )]
    pub read_orders: Option<u64>,
    /// The order ids --read-orders draws from, uniformly: `FIRST..LAST`,
    /// both included.
    #[arg(long, value_name = "FIRST..LAST", requires = "read_orders", value_parser = read::parse_ids)]
    pub read_ids: Option<std::ops::RangeInclusive<u64>>,
}

/// Durability of the embedded server (`--sync`); named so as not to shadow
/// the `Sync` trait.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Durability {
    /// Flush + fdatasync before answering.
    Always,
    /// Answer before flushing (benchmarking only).
    Relaxed,
}

/// How a buyer pays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Flow {
    /// Express checkout (`Buy`).
    Buy,
    /// Carts filled in set-up, `Pay` timed.
    Pay,
    /// `CartAdd` then `Pay`, both timed.
    #[value(name = "cart+pay")]
    CartPay,
    /// Express holds (`HoldItems`); `--pay-share` of them paid at once
    /// (`PayHold`), the rest left to expire after `--hold-ms`.
    Hold,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.connections > 0 && args.pipeline > 0,
        "--connections and --pipeline must be positive"
    );
    anyhow::ensure!(
        args.products > 0 && args.buyers > 0,
        "--products and --buyers must be positive"
    );
    anyhow::ensure!(
        (0.0..=1.0).contains(&args.hot),
        "--hot is a share between 0 and 1"
    );
    anyhow::ensure!(
        (0.0..=1.0).contains(&args.pay_share),
        "--pay-share is a share between 0 and 1"
    );
    anyhow::ensure!(
        (1..=flashsale::protocol::MAX_HOLD_MS).contains(&args.hold_ms),
        "--hold-ms must be 1 to 86400000"
    );
    anyhow::ensure!(
        (1..=args.products.min(64)).contains(&args.items),
        "--items must be 1 to min(--products, 64)"
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    if let (Some(reads), Some(ids)) = (args.read_orders, args.read_ids.clone()) {
        return read_orders(&runtime, &args, reads, ids);
    }
    let report = runtime.block_on(run(args.clone()))?;
    if let Some(path) = &args.timeline {
        report.write_timeline(path)?;
    }
    finish(
        &args,
        || report.json(),
        || report.print(),
        || report.histogram_text(),
        report.invariants_ok(),
    )
}

/// Prints a report (as JSON with `--json`), writes its histogram with
/// `--histogram`, and exits 1 unless it `passed`.
fn finish(
    args: &Args,
    json: impl FnOnce() -> serde_json::Value,
    print: impl FnOnce(),
    histogram: impl FnOnce() -> String,
    passed: bool,
) -> anyhow::Result<()> {
    if args.json {
        println!("{}", serde_json::to_string(&json())?);
    } else {
        print();
    }
    if let Some(path) = &args.histogram {
        std::fs::write(path, histogram())?;
    }
    if !passed {
        std::process::exit(1);
    }
    Ok(())
}

/// The read mode: reads, reports, and exits 1 unless every order was found.
fn read_orders(
    runtime: &tokio::runtime::Runtime,
    args: &Args,
    reads: u64,
    ids: std::ops::RangeInclusive<u64>,
) -> anyhow::Result<()> {
    let report = runtime.block_on(read::run(args, reads, ids))?;
    finish(
        args,
        || report.json(),
        || report.print(),
        || report.histogram_text(),
        report.all_found(),
    )
}

async fn run(args: Args) -> anyhow::Result<report::Report> {
    let target = setup::Target::start(&args).await?;
    let stage = setup::stage(&args, &target).await?;
    let outcome = sale::run(&args, &stage).await?;
    let drained = sale::drain(outcome).await?;
    let verdict = verify::verify(&args, &target, &stage, &drained).await?;
    target.stop().await?;
    Ok(report::Report::new(&args, drained, verdict))
}

/// A duration from seconds given on the command line.
pub fn seconds(secs: f64) -> Duration {
    Duration::from_secs_f64(secs.max(0.0))
}
