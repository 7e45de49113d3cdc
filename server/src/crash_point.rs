//! Named crash points for the crash tests: with `FLASHSALE_CRASH_AT=NAME` in
//! its environment the process aborts (as a `kill -9` would: no destructor,
//! no flush) the first time it reaches the point NAME. Without the variable
//! each point is one relaxed load of a cached flag.
//!
//! Points: `checkpoint-tables-synced`, `checkpoint-head-written`,
//! `checkpoint-synced`, `truncation-first-batch` (see
//! [`crate::sale::materialise`] and [`crate::sale::checkpoint`]).

use std::sync::OnceLock;

/// The point named by `FLASHSALE_CRASH_AT`, read once.
fn armed() -> Option<&'static str> {
    static POINT: OnceLock<Option<String>> = OnceLock::new();
    POINT
        .get_or_init(|| std::env::var("FLASHSALE_CRASH_AT").ok())
        .as_deref()
}

/// Aborts the process if `FLASHSALE_CRASH_AT` names `point`.
pub(crate) fn reach(point: &str) {
    if armed() == Some(point) {
        eprintln!("FLASHSALE_CRASH_AT={point}: aborting here");
        std::process::abort();
    }
}
