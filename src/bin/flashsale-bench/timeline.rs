//! `--timeline FILE`: an SVG of the sale over time, per 100 ms: decisions
//! per second (answers with a decision: orders and refusals) above, and
//! the answer latency's p99 below, with each fault `--fault` caused marked.

use crate::faults::Fault;
use plotters::prelude::*;
use std::path::Path;

/// Width of one bucket, ms.
const BUCKET_MS: u32 = 100;

/// One bucket: decisions per second and p99 latency (ms), or `None` for a
/// bucket without answers.
struct Bucket {
    at_s: f64,
    per_s: f64,
    p99_ms: Option<f64>,
}

fn buckets(answers: &[(u32, u32)], elapsed_s: f64) -> Vec<Bucket> {
    let count = (elapsed_s * 1000.0 / f64::from(BUCKET_MS)).ceil().max(1.0) as usize;
    let mut latencies: Vec<Vec<u32>> = vec![Vec::new(); count];
    for &(at_ms, latency_us) in answers {
        let i = (at_ms / BUCKET_MS) as usize;
        if let Some(bucket) = latencies.get_mut(i) {
            bucket.push(latency_us);
        }
    }
    latencies
        .into_iter()
        .enumerate()
        .map(|(i, mut bucket)| {
            bucket.sort_unstable();
            let p99_ms = (!bucket.is_empty()).then(|| {
                let rank = ((bucket.len() as f64) * 0.99).ceil() as usize;
                f64::from(bucket[rank.clamp(1, bucket.len()) - 1]) / 1000.0
            });
            Bucket {
                at_s: (i as f64 + 0.5) * f64::from(BUCKET_MS) / 1000.0,
                per_s: bucket.len() as f64 * 1000.0 / f64::from(BUCKET_MS),
                p99_ms,
            }
        })
        .collect()
}

/// A fault's label: its command without directories or path arguments
/// (`scripts/local-cluster.sh kill-leader /tmp/c` → `local-cluster.sh kill-leader`).
fn fault_label(command: &str) -> String {
    let mut words = command.split_whitespace();
    let program = words
        .next()
        .map(|w| w.rsplit('/').next().unwrap_or(w))
        .unwrap_or_default();
    std::iter::once(program)
        .chain(words.filter(|w| !w.contains('/')))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Writes the SVG.
///
/// # Errors
/// The file cannot be written.
pub fn write(
    path: &Path,
    title: &str,
    answers: &[(u32, u32)],
    elapsed_s: f64,
    faults: &[Fault],
) -> anyhow::Result<()> {
    let buckets = buckets(answers, elapsed_s);
    let root = SVGBackend::new(path, (1000, 640)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(330);
    let x_max = elapsed_s.max(0.1);
    let rate_max = buckets.iter().map(|b| b.per_s).fold(1.0, f64::max) * 1.1;
    let p99_max = buckets.iter().filter_map(|b| b.p99_ms).fold(1.0, f64::max) * 1.1;
    let mut rate = ChartBuilder::on(&top)
        .caption(title, ("sans-serif", 15))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..x_max, 0.0..rate_max)?;
    rate.configure_mesh()
        .y_desc("decisions/s (per 100 ms)")
        .x_desc("seconds into the sale")
        .draw()?;
    rate.draw_series(LineSeries::new(
        buckets.iter().map(|b| (b.at_s, b.per_s)),
        &BLUE,
    ))?;
    let mut p99 = ChartBuilder::on(&bottom)
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..x_max, 0.0..p99_max)?;
    p99.configure_mesh()
        .y_desc("answer p99, ms (per 100 ms)")
        .x_desc("seconds into the sale")
        .draw()?;
    p99.draw_series(buckets.iter().filter_map(|b| {
        b.p99_ms
            .map(|ms| Circle::new((b.at_s, ms), 2, BLACK.filled()))
    }))?;
    for fault in faults {
        let label = fault_label(&fault.command);
        rate.draw_series(LineSeries::new(
            [(fault.at_s, 0.0), (fault.at_s, rate_max)],
            RED.stroke_width(2),
        ))?;
        rate.draw_series(std::iter::once(Text::new(
            label.clone(),
            (fault.at_s, rate_max * 0.95),
            ("sans-serif", 13).into_font().color(&RED),
        )))?;
        p99.draw_series(LineSeries::new(
            [(fault.at_s, 0.0), (fault.at_s, p99_max)],
            RED.stroke_width(2),
        ))?;
    }
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fault_is_labelled_by_its_command_without_paths() {
        assert_eq!(
            fault_label("scripts/local-cluster.sh kill-leader /tmp/x"),
            "local-cluster.sh kill-leader"
        );
        assert_eq!(fault_label("kill -9 123"), "kill -9 123");
    }

    #[test]
    fn answers_fall_into_their_100_ms_bucket_with_their_p99() {
        let answers: Vec<(u32, u32)> = (0..100)
            .map(|i| (50, 1000 + i))
            .chain([(250, 7000)])
            .collect();
        let buckets = buckets(&answers, 0.3);
        assert_eq!(buckets.len(), 3);
        assert_eq!(buckets[0].per_s, 1000.0);
        assert_eq!(buckets[0].p99_ms, Some(1.098));
        assert!(buckets[1].p99_ms.is_none());
        assert_eq!(buckets[2].per_s, 10.0);
        assert_eq!(buckets[2].p99_ms, Some(7.0));
    }
}
