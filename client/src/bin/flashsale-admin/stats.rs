//! `stats` (the counters once) and `watch` (a live view refreshing them).

use crate::cli::WatchArgs;
use crate::output::{print_json, print_json_line, product_stats_table, table, uptime, StatsOut};
use crate::time::{format_ms, now_ms};
use crate::Ctx;
use anyhow::Context;
use flashsale_client::protocol::StatsReport;
use serde::Serialize;
use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};

/// Clears a terminal and moves the cursor home (ANSI).
const CLEAR_SCREEN: &str = "\x1b[2J\x1b[H";

/// Runs `stats`.
///
/// # Errors
/// The server refused the request or the connection failed.
pub async fn stats(ctx: &Ctx) -> anyhow::Result<()> {
    let report = ctx.client.stats().await.context("cannot read stats")?;
    if ctx.json {
        return print_json(&StatsOut::from(&report));
    }
    let rate = decisions_per_s(None, &report);
    write_stdout(&render(&report, rate))
}

/// Runs `cluster`: the leader and every node, as a table (or JSON).
///
/// # Errors
/// The server refused the request or the connection failed.
pub async fn cluster(ctx: &Ctx) -> anyhow::Result<()> {
    let report = ctx
        .client
        .cluster_status()
        .await
        .context("cannot read the cluster's status")?;
    let Some(report) = report else {
        if ctx.json {
            return print_json(&serde_json::Value::Null);
        }
        return write_stdout("not a cluster: this is a single server\n");
    };
    if ctx.json {
        return print_json(&ClusterOut::from(&report));
    }
    let snapshot = report
        .snapshot
        .map_or_else(|| "none yet".to_owned(), |seq| format!("through {seq}"));
    let mut out = format!(
        "leader {}   stream {}..{}   snapshot {snapshot}\n",
        report.leader, report.stream_first, report.stream_last
    );
    let mut table = table(
        &["NODE", "ROLE", "ADDRESS", "APPLIED", "LAG", "REPORTED"],
        &[3, 4],
    );
    for node in &report.nodes {
        table.add_row(vec![
            node.node.clone(),
            if node.leader { "leader" } else { "standby" }.to_owned(),
            node.advertise.clone(),
            node.applied.to_string(),
            node.lag.to_string(),
            format!("{:.1} s ago", node.reported_ms_ago as f64 / 1000.0),
        ]);
    }
    out.push_str(&table.to_string());
    out.push('\n');
    write_stdout(&out)
}

/// `cluster --json`.
#[derive(Debug, Serialize)]
struct ClusterOut {
    leader: String,
    stream_first: u64,
    stream_last: u64,
    snapshot: Option<u64>,
    nodes: Vec<NodeOut>,
}

#[derive(Debug, Serialize)]
struct NodeOut {
    node: String,
    advertise: String,
    leader: bool,
    applied: u64,
    lag: u64,
    reported_ms_ago: u64,
}

impl From<&flashsale_client::protocol::ClusterReport> for ClusterOut {
    fn from(report: &flashsale_client::protocol::ClusterReport) -> Self {
        Self {
            leader: report.leader.clone(),
            stream_first: report.stream_first,
            stream_last: report.stream_last,
            snapshot: report.snapshot,
            nodes: report
                .nodes
                .iter()
                .map(|n| NodeOut {
                    node: n.node.clone(),
                    advertise: n.advertise.clone(),
                    leader: n.leader,
                    applied: n.applied,
                    lag: n.lag,
                    reported_ms_ago: n.reported_ms_ago,
                })
                .collect(),
        }
    }
}

/// One refresh of `watch --json`: the stats and the decision rate.
#[derive(Debug, Serialize)]
struct WatchOut {
    /// The stats, as `stats --json` prints them.
    #[serde(flatten)]
    stats: StatsOut,
    /// Decisions per second since the previous refresh (since the server
    /// started, for the first).
    decisions_per_s: f64,
}

/// Runs `watch`: refreshes until `--count` refreshes were shown or Ctrl-C.
///
/// # Errors
/// The server refused the request or the connection failed.
pub async fn watch(ctx: &Ctx, args: &WatchArgs, addr: &str) -> anyhow::Result<()> {
    let clear = !ctx.json && std::io::stdout().is_terminal();
    let mut previous: Option<StatsReport> = None;
    let mut shown: u64 = 0;
    loop {
        let report = ctx.client.stats().await.context("cannot read stats")?;
        let rate = decisions_per_s(previous.as_ref(), &report);
        if ctx.json {
            print_json_line(&WatchOut {
                stats: StatsOut::from(&report),
                decisions_per_s: rate,
            })?;
        } else {
            let mut frame = String::new();
            if clear {
                frame.push_str(CLEAR_SCREEN);
            }
            // Writing to a String cannot fail.
            let _ = writeln!(
                frame,
                "flashsale {addr}   {}   every {}   (Ctrl-C to stop)",
                format_ms(now_ms()),
                humantime::format_duration(args.interval),
            );
            frame.push_str(&render(&report, rate));
            if !clear {
                frame.push('\n');
            }
            write_stdout(&frame)?;
        }
        previous = Some(report);
        shown += 1;
        if args.count.is_some_and(|count| shown >= count) {
            return Ok(());
        }
        tokio::select! {
            _ = tokio::time::sleep(args.interval) => {}
            // Stop cleanly on Ctrl-C, so the session is logged out.
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

/// Decisions per second between two reports: the delta of `decisions` over
/// the delta of `uptime_ms`. Against no previous report, or across a server
/// restart (uptime went back), the average since the server started.
pub fn decisions_per_s(previous: Option<&StatsReport>, now: &StatsReport) -> f64 {
    let (decisions, ms) = match previous {
        Some(prev) if now.uptime_ms > prev.uptime_ms && now.decisions >= prev.decisions => (
            now.decisions - prev.decisions,
            now.uptime_ms - prev.uptime_ms,
        ),
        _ => (now.decisions, now.uptime_ms),
    };
    if ms == 0 {
        return 0.0;
    }
    // Exact up to 2^53 decisions; a rate needs no more.
    decisions as f64 * 1000.0 / ms as f64
}

/// The human view of one report: server-wide lines, then the products table.
fn render(report: &StatsReport, rate: f64) -> String {
    let mut text = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(
        text,
        "uptime {}   connections {}   queue depth {}   decisions {} ({rate:.1}/s)",
        uptime(report.uptime_ms),
        report.connections,
        report.queue_depth,
        report.decisions,
    );
    let _ = writeln!(
        text,
        "orders: {} confirmed   {} rejected   {} cancelled   {} refused at intake",
        report.orders_confirmed,
        report.orders_rejected,
        report.orders_cancelled,
        report.refused_at_intake,
    );
    let holds = &report.holds;
    let _ = writeln!(
        text,
        "holds: {} live ({} units)   {} placed   {} paid   {} expired   {} released",
        holds.live, holds.held_units, holds.placed, holds.paid, holds.expired, holds.released,
    );
    let storage = &report.storage;
    let _ = writeln!(
        text,
        "journal: record {}   materialised {}   checkpoint {}   {} records on disk   {} orders not yet in tables",
        storage.journal_seq,
        storage.materialised_seq,
        storage.checkpoint_seq,
        storage.journal_records,
        storage.orders_unmaterialised,
    );
    text.push('\n');
    if report.products.is_empty() {
        text.push_str("no products\n");
    } else {
        let _ = writeln!(text, "{}", product_stats_table(report));
    }
    text
}

/// Writes `text` to stdout and flushes it.
fn write_stdout(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .context("writing to stdout")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(decisions: u64, uptime_ms: u64) -> StatsReport {
        StatsReport {
            products: Vec::new(),
            connections: 1,
            orders_confirmed: 0,
            orders_rejected: 0,
            orders_cancelled: 0,
            refused_at_intake: 0,
            decisions,
            queue_depth: 0,
            uptime_ms,
            partner_buyers: 0,
            sessions: 0,
            storage: Default::default(),
            holds: Default::default(),
        }
    }

    #[test]
    fn the_rate_is_the_delta_of_decisions_over_the_delta_of_uptime() {
        let before = report(1_000, 10_000);
        let after = report(6_000, 12_000);
        assert!((decisions_per_s(Some(&before), &after) - 2_500.0).abs() < 1e-9);
    }

    #[test]
    fn the_first_rate_and_one_across_a_restart_are_averages_since_start() {
        let now = report(500, 5_000);
        assert!((decisions_per_s(None, &now) - 100.0).abs() < 1e-9);
        let before_restart = report(9_000, 90_000);
        assert!((decisions_per_s(Some(&before_restart), &now) - 100.0).abs() < 1e-9);
        assert!(decisions_per_s(None, &report(0, 0)).abs() < 1e-9);
    }
}
