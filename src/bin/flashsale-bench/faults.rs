//! `--fault SECS:COMMAND`: faults the harness causes during the sale (for
//! example `scripts/local-cluster.sh kill-leader`), each run by `sh -c` at
//! its time, and when each was caused, for the report and the timeline.

use std::time::{Duration, Instant};

/// A fault to cause: when (seconds into the sale) and how.
#[derive(Debug, Clone)]
pub struct FaultSpec {
    /// Seconds after the sale began.
    pub at_s: f64,
    /// The shell command that causes it.
    pub command: String,
}

/// Parses `SECS:COMMAND`.
///
/// # Errors
/// No colon, or a time that is not a non-negative number of seconds.
pub fn parse(value: &str) -> Result<FaultSpec, String> {
    let (at, command) = value
        .split_once(':')
        .ok_or_else(|| format!("`{value}`: expected SECS:COMMAND"))?;
    let at_s: f64 = at
        .trim()
        .parse()
        .map_err(|_| format!("`{at}` is not a number of seconds"))?;
    if !(at_s >= 0.0 && at_s.is_finite()) || command.trim().is_empty() {
        return Err(format!("`{value}`: expected SECS:COMMAND with SECS ≥ 0"));
    }
    Ok(FaultSpec {
        at_s,
        command: command.trim().to_owned(),
    })
}

/// A fault caused: when, how, and how the command ended.
#[derive(Debug, Clone)]
pub struct Fault {
    /// Seconds after the sale began when the command started.
    pub at_s: f64,
    /// The command.
    pub command: String,
    /// True when it exited 0.
    pub succeeded: bool,
}

/// A fault waiting for its time (or being caused).
pub type Scheduled = (Instant, tokio::task::JoinHandle<Fault>);

/// Starts one task per fault, each waiting for its time.
pub fn schedule(specs: &[FaultSpec], start: Instant) -> Vec<Scheduled> {
    specs
        .iter()
        .cloned()
        .map(|spec| {
            let due = start + Duration::from_secs_f64(spec.at_s);
            let task = tokio::spawn(async move {
                tokio::time::sleep_until(due.into()).await;
                let at_s = start.elapsed().as_secs_f64();
                let status = tokio::process::Command::new("sh")
                    .arg("-c")
                    .arg(&spec.command)
                    .stdout(std::process::Stdio::null())
                    .status()
                    .await;
                Fault {
                    at_s,
                    command: spec.command,
                    succeeded: status.is_ok_and(|s| s.success()),
                }
            });
            (due, task)
        })
        .collect()
}

/// Waits for the faults whose time came (their commands finish); those
/// still waiting (the sale ended first) are dropped, never caused.
pub async fn collect(scheduled: Vec<Scheduled>) -> Vec<Fault> {
    let mut faults = Vec::new();
    for (due, task) in scheduled {
        if due <= Instant::now() {
            if let Ok(fault) = task.await {
                faults.push(fault);
            }
        } else {
            task.abort();
        }
    }
    faults
}

/// The pause after each fault: the longest gap between two answers that
/// ended after it (and before the next fault), in ms, and where that gap
/// began (seconds into the sale). A gap belongs to the last fault before
/// its end. `answers` are (ms since the sale began, latency) pairs.
pub fn pauses(answers: &[(u32, u32)], faults: &[Fault]) -> Vec<(f64, u32)> {
    let mut times: Vec<u32> = answers.iter().map(|(at, _)| *at).collect();
    times.sort_unstable();
    let ms = |s: f64| (s * 1000.0) as u32;
    faults
        .iter()
        .enumerate()
        .map(|(i, fault)| {
            let from = ms(fault.at_s);
            let until = faults.get(i + 1).map_or(u32::MAX, |next| ms(next.at_s));
            times
                .windows(2)
                .filter(|w| w[1] >= from && w[1] < until)
                .map(|w| (f64::from(w[0]) / 1000.0, w[1] - w[0]))
                .max_by_key(|(_, gap)| *gap)
                .unwrap_or((fault.at_s, 0))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fault_spec_is_seconds_then_a_command() {
        let spec = parse("2.5:scripts/local-cluster.sh kill-leader").expect("valid");
        assert_eq!(spec.at_s, 2.5);
        assert_eq!(spec.command, "scripts/local-cluster.sh kill-leader");
        assert!(parse("kill").is_err());
        assert!(parse("-1:kill").is_err());
        assert!(parse("3:").is_err());
    }

    #[test]
    fn the_pause_after_a_fault_is_the_longest_gap_between_answers_around_it() {
        let answers: Vec<(u32, u32)> = [100, 200, 300, 2300, 2400, 5000, 5100]
            .iter()
            .map(|t| (*t, 1))
            .collect();
        let fault = |at_s: f64| Fault {
            at_s,
            command: "x".into(),
            succeeded: true,
        };
        let pauses = pauses(&answers, &[fault(0.35), fault(4.0)]);
        assert_eq!(pauses, vec![(0.3, 2000), (2.4, 2600)]);
    }
}
