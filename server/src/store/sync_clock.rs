//! Which writes the data dir's syncs have covered, so that one flush +
//! `fdatasync` serves every writer that needs it.
//!
//! Every sync ([`crate::store::Store::sync`]) takes a ticket, in order,
//! before it flushes; a sync covers every write made before its ticket was
//! taken. A writer that needs its change on disk notes the last ticket
//! taken ([`SyncClock::mark`]) after writing: any sync with a later ticket
//! that completes covers the change, whoever ran it. The journal syncs
//! each group of batches; the syncer (carts, accounts) first waits for a
//! covering sync already in flight, usually the journal's, and syncs
//! itself only when none is: under a sale's mixed cart and pay traffic the
//! two share their `fdatasync`s instead of doubling them.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// Longest wait for another thread's sync before checking again (a
/// notification is never lost, the bound only guards against surprises).
const RECHECK: Duration = Duration::from_millis(100);

#[derive(Debug, Default)]
struct State {
    /// The last ticket taken.
    started: u64,
    /// The highest ticket whose sync completed.
    completed: u64,
    /// A sync failed: nothing after it can be trusted.
    failed: bool,
}

/// The tickets of the data dir's syncs.
#[derive(Debug, Default)]
pub(crate) struct SyncClock {
    state: Mutex<State>,
    done: Condvar,
}

/// What [`SyncClock::wait_covered`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Covered {
    /// A sync after the mark completed.
    Yes,
    /// No covering sync is in flight: the caller must run one.
    SyncNeeded,
    /// A sync failed.
    Failed,
}

impl SyncClock {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock only means a panic elsewhere; the counters stay consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The mark of a change just written: a sync with a later ticket covers it.
    pub(crate) fn mark(&self) -> u64 {
        self.lock().started
    }

    /// Takes the ticket of a sync about to flush.
    pub(crate) fn begin(&self) -> u64 {
        let mut state = self.lock();
        state.started += 1;
        state.started
    }

    /// Records the end of the sync `ticket`.
    pub(crate) fn end(&self, ticket: u64, ok: bool) {
        let mut state = self.lock();
        if ok {
            state.completed = state.completed.max(ticket);
        } else {
            state.failed = true;
        }
        drop(state);
        self.done.notify_all();
    }

    /// Waits while a sync that covers `mark` is in flight; returns whether
    /// one completed, or that the caller must sync itself.
    pub(crate) fn wait_covered(&self, mark: u64) -> Covered {
        let mut state = self.lock();
        loop {
            if state.failed {
                return Covered::Failed;
            }
            if state.completed > mark {
                return Covered::Yes;
            }
            if state.started <= mark {
                return Covered::SyncNeeded;
            }
            state = self
                .done
                .wait_timeout(state, RECHECK)
                .map_or_else(|e| e.into_inner().0, |(state, _)| state);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_is_covered_only_by_a_sync_that_began_after_it() {
        let clock = SyncClock::default();
        let before = clock.begin();
        let mark = clock.mark();
        // The sync in flight began before the change: it does not cover it.
        assert_eq!(clock.wait_covered(mark), Covered::SyncNeeded);
        clock.end(before, true);
        assert_eq!(clock.wait_covered(mark), Covered::SyncNeeded);
        let after = clock.begin();
        let waiter = std::thread::scope(|scope| {
            let waiter = scope.spawn(|| clock.wait_covered(mark));
            clock.end(after, true);
            waiter.join().expect("waiter")
        });
        assert_eq!(waiter, Covered::Yes);
    }

    #[test]
    fn a_failed_sync_fails_every_waiter() {
        let clock = SyncClock::default();
        let mark = clock.mark();
        let ticket = clock.begin();
        clock.end(ticket, false);
        assert_eq!(clock.wait_covered(mark), Covered::Failed);
    }
}
