//! The report: human-readable tables or one JSON object.

use crate::sale::Drained;
use crate::verify::Verdict;
use crate::Args;
use serde_json::{json, Value};

/// Figures of one run.
pub struct Report {
    scenario: String,
    /// A short title for pictures.
    title: String,
    drained: Drained,
    violations: Vec<String>,
}

impl Report {
    /// Builds the report.
    pub fn new(args: &Args, drained: Drained, verdict: Verdict) -> Self {
        let scenario = format!(
            "{} products × {} stock, {} buyers, {} connections × pipeline {}, flow {:?}, items {}, hot {}, {}",
            args.products,
            args.stock,
            args.buyers,
            args.connections,
            args.pipeline,
            args.flow,
            args.items,
            args.hot,
            if args.embedded { format!("embedded server, sync {:?}", args.sync) } else { format!("server {}", args.addr) },
        );
        let title = format!(
            "{} products, {} connections x {} in flight, flow {:?}: answers/s and p99 per 100 ms",
            args.products, args.connections, args.pipeline, args.flow
        );
        Self {
            scenario,
            title,
            drained,
            violations: verdict.violations,
        }
    }

    /// True when every invariant held.
    pub fn invariants_ok(&self) -> bool {
        self.violations.is_empty()
    }

    fn seconds(&self) -> f64 {
        self.drained.elapsed.as_secs_f64().max(1e-9)
    }

    fn answered(&self) -> u64 {
        self.drained.attempts - self.drained.unanswered
    }

    /// The JSON object printed with `--json`.
    pub fn json(&self) -> Value {
        let d = &self.drained;
        let secs = self.seconds();
        json!({
            "scenario": self.scenario,
            "decisions_per_s": self.answered() as f64 / secs,
            "confirmed_per_s": d.confirmed as f64 / secs,
            "attempts": d.attempts,
            "confirmed": d.confirmed,
            "sold_out": d.sold_out,
            "errors": d.errors,
            "answer_p50_us": d.answer.value_at_quantile(0.50),
            "answer_p90_us": d.answer.value_at_quantile(0.90),
            "answer_p99_us": d.answer.value_at_quantile(0.99),
            "answer_p999_us": d.answer.value_at_quantile(0.999),
            "answer_max_us": d.answer.max(),
            "outcome_p99_us": d.outcome.value_at_quantile(0.99),
            "elapsed_s": secs,
            "recovered": d.recovered,
            "faults": self.faults_json(),
            "answers_per_second": self.answers_per_second(),
            "holds": self.holds_json(),
            "invariants_ok": self.invariants_ok(),
            "violations": self.violations,
        })
    }

    /// Unpaid holds expired per second, over the window from the first
    /// deadline to the last expiry seen.
    fn expiries_per_second(&self) -> f64 {
        let h = &self.drained.holds;
        h.expired as f64 / h.expiry_window.as_secs_f64().max(1e-3)
    }

    /// `--flow hold` figures (`null` for the other flows).
    fn holds_json(&self) -> Value {
        let h = &self.drained.holds;
        if h.held == 0 {
            return Value::Null;
        }
        let secs = self.seconds();
        json!({
            "held": h.held,
            "paid": h.paid,
            "expired": h.expired,
            "holds_per_s": h.held as f64 / secs,
            "payments_per_s": h.paid as f64 / secs,
            "expiries_per_s": self.expiries_per_second(),
            "expiry_window_s": h.expiry_window.as_secs_f64(),
            "expiry_lag_ms": h.expiry_lag.as_millis() as u64,
            "pay_errors": h.pay_errors,
        })
    }

    /// Prints the human report on stdout.
    pub fn print(&self) {
        let d = &self.drained;
        let secs = self.seconds();
        println!("flash sale: {}", self.scenario);
        println!("  sale lasted       {secs:.3} s");
        println!("  attempts          {}", d.attempts);
        println!(
            "  decisions/s       {:.0}  (confirmed {:.0}/s, sold out {:.0}/s, other {:.0}/s)",
            self.answered() as f64 / secs,
            d.confirmed as f64 / secs,
            d.sold_out as f64 / secs,
            (self.answered() - d.confirmed - d.sold_out) as f64 / secs
        );
        println!("  confirmed         {}", d.confirmed);
        println!("  sold out          {}", d.sold_out);
        for (code, n) in &d.errors {
            println!("  error {code:<11} {n}");
        }
        println!(
            "  answer latency    p50 {} µs, p90 {} µs, p99 {} µs, p99.9 {} µs, max {} µs",
            d.answer.value_at_quantile(0.5),
            d.answer.value_at_quantile(0.9),
            d.answer.value_at_quantile(0.99),
            d.answer.value_at_quantile(0.999),
            d.answer.max()
        );
        println!(
            "  outcome latency   p99 {} µs",
            d.outcome.value_at_quantile(0.99)
        );
        if d.holds.held > 0 {
            let h = &d.holds;
            println!(
                "  holds             {} ({:.0}/s), paid {} ({:.0}/s), expired {} ({:.0}/s over {:.3} s; the last {} ms after its deadline)",
                h.held,
                h.held as f64 / secs,
                h.paid,
                h.paid as f64 / secs,
                h.expired,
                self.expiries_per_second(),
                h.expiry_window.as_secs_f64(),
                h.expiry_lag.as_millis()
            );
        }
        if d.recovered > 0 {
            println!(
                "  recovered         {} attempts without an answer, sent again with their keys after the sale",
                d.recovered
            );
        }
        let pauses = crate::faults::pauses(&d.timeline, &d.faults);
        for (fault, (gap_at, gap_ms)) in d.faults.iter().zip(pauses) {
            println!(
                "  fault at {:.2} s    {} ({}); longest pause between answers {gap_ms} ms, from {gap_at:.2} s",
                fault.at_s,
                fault.command,
                if fault.succeeded { "ok" } else { "FAILED" }
            );
        }
        if self.violations.is_empty() {
            println!("  invariants        ok (stock never below zero, confirmed == initial - final, one order per intent)");
        } else {
            println!("  INVARIANTS FAILED:");
            for v in &self.violations {
                println!("    - {v}");
            }
        }
    }

    /// With `--timeline` or `--fault`: answers in each second of the sale.
    fn answers_per_second(&self) -> Vec<u64> {
        let mut per_second = Vec::new();
        for (at_ms, _) in &self.drained.timeline {
            let second = (*at_ms / 1000) as usize;
            if per_second.len() <= second {
                per_second.resize(second + 1, 0);
            }
            per_second[second] += 1;
        }
        per_second
    }

    fn faults_json(&self) -> Value {
        let d = &self.drained;
        let pauses = crate::faults::pauses(&d.timeline, &d.faults);
        d.faults
            .iter()
            .zip(pauses)
            .map(|(fault, (gap_at, gap_ms))| {
                json!({
                    "at_s": fault.at_s,
                    "command": fault.command,
                    "succeeded": fault.succeeded,
                    "pause_ms": gap_ms,
                    "pause_from_s": gap_at,
                })
            })
            .collect()
    }

    /// Writes `--timeline`.
    ///
    /// # Errors
    /// The file cannot be written.
    pub fn write_timeline(&self, path: &std::path::Path) -> anyhow::Result<()> {
        let d = &self.drained;
        crate::timeline::write(path, &self.title, &d.timeline, self.seconds(), &d.faults)
    }

    /// The answer-latency distribution, one `percentile value_us count` row per step.
    pub fn histogram_text(&self) -> String {
        histogram_rows("answer_latency_us", &self.drained.answer)
    }
}

/// A latency distribution as `# percentile  <name>  count` rows, one per step.
pub fn histogram_rows(name: &str, latency: &hdrhistogram::Histogram<u64>) -> String {
    let mut out = format!("# percentile  {name}  count\n");
    for step in latency.iter_quantiles(2) {
        out.push_str(&format!(
            "{:.6} {} {}\n",
            step.percentile(),
            step.value_iterated_to(),
            step.count_since_last_iteration()
        ));
    }
    out
}
