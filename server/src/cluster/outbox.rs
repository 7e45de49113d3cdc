//! The leader's outbox to the replicated log: every change, in the order
//! the leader made it, numbered, until the stream acknowledges it.
//!
//! Two kinds of writers fill it. The journal thread pushes each group of
//! journal records after writing them locally; code that changes a table
//! outside the journal (accounts, sessions, carts, partners) makes its local
//! change *while holding the outbox* ([`Outbox::record`]), so the order of
//! the ops in the outbox is the order of the changes in the leader's data
//! dir, and a standby applying them in that order ends up with the same
//! tables. The publisher ([`crate::cluster::publisher`]) takes sealed
//! entries out in number order and sends them; acknowledgements arrive in
//! the same order, and [`Outbox::acked`] moves forward.
//!
//! Whoever must not answer before its change is replicated waits for the
//! number of the entry holding it ([`Outbox::wait`], [`Outbox::wait_blocking`]).
//! A refused publish *fences* the outbox: every waiter, present and future,
//! hears [`Fenced`] and the node steps down. A fenced outbox, or one closed
//! at a clean stop, refuses further changes ([`Closed`]): nothing is
//! written here that the cluster will never see.
//!
//! Bound: entries wait here only while the stream is slower than the
//! leader; the journal waits for its own entries before taking more work,
//! and every op is a request holding an in-flight permit that waits too.

use crate::cluster::entry::{Entry, Op};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;
use tokio::sync::{watch, Notify};

/// Largest payload of one entry, well under NATS's default 1 MiB
/// `max_payload`.
pub(crate) const MAX_ENTRY_BYTES: usize = 512 * 1024;

/// The outbox lost its leadership: what was waiting may not be in the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("this node lost the leadership before the change was replicated")]
pub(crate) struct Fenced;

/// The outbox takes no more changes (fenced, or closed at a clean stop).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("this node no longer leads: it takes no changes")]
pub(crate) struct Closed;

/// A standby: changes are its own, not recorded.
const STANDBY: u8 = 0;
/// A leader: changes are recorded for the stream.
const LEADING: u8 = 1;
/// Fenced or stopped: changes are refused.
const CLOSED: u8 = 2;

/// How far the stream has acknowledged the outbox.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Progress {
    /// Every entry up to this number is in the stream.
    pub(crate) acked: u64,
    /// A publish was refused or failed: nothing more will be acknowledged.
    pub(crate) fenced: bool,
}

/// See the module docs.
#[derive(Debug)]
pub(crate) struct Outbox {
    pending: Mutex<Pending>,
    /// Wakes the publisher when an entry is sealed or ops are recorded.
    wake: Notify,
    progress: watch::Sender<Progress>,
    /// [`STANDBY`], [`LEADING`] or [`CLOSED`]; changed under the pending
    /// lock, so a change and its recording see one state. Only a leader
    /// records ops; a standby's own upkeep (sweeping expired sessions)
    /// stays local.
    state: AtomicU8,
}

#[derive(Debug)]
struct Pending {
    /// Entries ready to publish, in number order.
    sealed: VecDeque<(u64, Entry)>,
    /// Ops still being gathered into one entry: its number, the ops, bytes.
    open: Option<(u64, Vec<Op>, usize)>,
    /// Number of the next entry (the first is 1).
    next: u64,
}

impl Default for Outbox {
    fn default() -> Self {
        Self {
            pending: Mutex::new(Pending {
                sealed: VecDeque::new(),
                open: None,
                next: 1,
            }),
            wake: Notify::new(),
            progress: watch::Sender::new(Progress::default()),
            state: AtomicU8::new(STANDBY),
        }
    }
}

impl Pending {
    fn seal(&mut self) {
        if let Some((number, ops, _)) = self.open.take() {
            self.sealed.push_back((number, Entry::Ops(ops)));
        }
    }

    fn push(&mut self, entry: Entry) -> u64 {
        self.seal();
        let number = self.next;
        self.next += 1;
        self.sealed.push_back((number, entry));
        number
    }
}

impl Outbox {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        // A poisoned lock only means a panic elsewhere, which stops the
        // server anyway; the queue itself is intact.
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// From now on, ops are recorded for the stream, after `first` (the
    /// `Leader` entry), which is queued first; its number.
    pub(crate) fn start_leading(&self, first: Entry) -> u64 {
        let mut pending = self.lock();
        self.state.store(LEADING, Ordering::SeqCst);
        let number = pending.push(first);
        drop(pending);
        self.wake.notify_one();
        number
    }

    /// True once this node has led (it may be fenced or stopped since):
    /// its changes must be waited for.
    pub(crate) fn has_led(&self) -> bool {
        self.state.load(Ordering::SeqCst) != STANDBY
    }

    /// Runs `change` (a local write, which pushes the ops it made) while
    /// holding the outbox, so the ops enter it in the order of the writes.
    /// A standby's ops are dropped: it only changes what is its own.
    ///
    /// # Errors
    /// [`Closed`] (and `change` is not run) once fenced or stopped.
    pub(crate) fn record<T>(&self, change: impl FnOnce(&mut Vec<Op>) -> T) -> Result<T, Closed> {
        let mut ops = Vec::new();
        let mut pending = self.lock();
        let state = self.state.load(Ordering::SeqCst);
        if state == CLOSED {
            return Err(Closed);
        }
        let out = change(&mut ops);
        if ops.is_empty() || state != LEADING {
            return Ok(out);
        }
        for op in ops {
            let size = op.size();
            let full = pending
                .open
                .as_ref()
                .is_some_and(|(_, _, bytes)| bytes + size > MAX_ENTRY_BYTES);
            if full {
                pending.seal();
            }
            if pending.open.is_none() {
                let number = pending.next;
                pending.next += 1;
                pending.open = Some((number, Vec::new(), 0));
            }
            if let Some((_, open, bytes)) = pending.open.as_mut() {
                open.push(op);
                *bytes += size;
            }
        }
        drop(pending);
        self.wake.notify_one();
        Ok(out)
    }

    /// Queues journal records (split into entries under
    /// [`MAX_ENTRY_BYTES`]); the number of the last entry.
    pub(crate) fn push_journal(&self, records: Vec<(u64, Vec<u8>)>, carts_through: u64) -> u64 {
        let mut pending = self.lock();
        let mut number = pending.next.saturating_sub(1);
        let mut part = Vec::new();
        let mut bytes = 0;
        for (seq, record) in records {
            if bytes + record.len() > MAX_ENTRY_BYTES && !part.is_empty() {
                number = pending.push(Entry::Journal {
                    records: std::mem::take(&mut part),
                    carts_through,
                });
                bytes = 0;
            }
            bytes += record.len() + 16;
            part.push((seq, record));
        }
        if !part.is_empty() {
            number = pending.push(Entry::Journal {
                records: part,
                carts_through,
            });
        }
        drop(pending);
        self.wake.notify_one();
        number
    }

    /// The number of the newest entry: waiting for it covers every change
    /// recorded before this call.
    pub(crate) fn newest(&self) -> u64 {
        self.lock().next.saturating_sub(1)
    }

    /// Seals the open entry and takes every entry out, in number order.
    pub(crate) fn take(&self) -> Vec<(u64, Entry)> {
        let mut pending = self.lock();
        pending.seal();
        pending.sealed.drain(..).collect()
    }

    /// True when nothing waits to be taken.
    pub(crate) fn is_empty(&self) -> bool {
        let pending = self.lock();
        pending.sealed.is_empty() && pending.open.is_none()
    }

    /// Waits until there may be something to take.
    pub(crate) async fn wait_for_entries(&self) {
        self.wake.notified().await;
    }

    /// The stream holds every entry up to `number`.
    pub(crate) fn acked(&self, number: u64) {
        self.progress.send_modify(|p| p.acked = p.acked.max(number));
    }

    /// Nothing more will be acknowledged: every waiter hears [`Fenced`].
    pub(crate) fn fence(&self) {
        self.close();
        self.progress.send_modify(|p| p.fenced = true);
    }

    /// No more changes (a clean stop, once the engine has stopped): what
    /// is queued is still published.
    pub(crate) fn close(&self) {
        let _pending = self.lock();
        self.state.store(CLOSED, Ordering::SeqCst);
    }

    /// How far the stream has acknowledged.
    pub(crate) fn progress(&self) -> Progress {
        *self.progress.borrow()
    }

    /// Completes once entry `number` is in the stream.
    ///
    /// # Errors
    /// [`Fenced`] when it never will be.
    pub(crate) async fn wait(&self, number: u64) -> Result<(), Fenced> {
        let mut rx = self.progress.subscribe();
        let reached = rx
            .wait_for(|p| p.acked >= number || p.fenced)
            .await
            .map(|p| *p);
        match reached {
            Ok(p) if p.acked >= number => Ok(()),
            _ => Err(Fenced),
        }
    }

    /// [`Outbox::wait`] for a thread outside the runtime (the journal, the syncer).
    ///
    /// # Errors
    /// As [`Outbox::wait`].
    pub(crate) fn wait_blocking(&self, number: u64) -> Result<(), Fenced> {
        futures::executor::block_on(self.wait(number))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::entry::Side;

    fn op(byte: u8, len: usize) -> Op {
        Op {
            tree: Side::Carts,
            key: vec![byte],
            value: Some(vec![byte; len]),
        }
    }

    #[test]
    fn ops_and_journal_entries_leave_in_the_order_they_were_made() {
        let outbox = Outbox::default();
        outbox.record(|ops| ops.push(op(1, 1))).expect("open");
        assert!(outbox.take().is_empty(), "a standby records nothing");
        assert_eq!(outbox.start_leading(Entry::Ops(vec![])), 1);
        outbox.record(|ops| ops.push(op(1, 1))).expect("open");
        outbox.record(|ops| ops.push(op(2, 1))).expect("open");
        let journal = outbox.push_journal(vec![(5, vec![0; 10])], 4);
        outbox.record(|ops| ops.push(op(3, 1))).expect("open");
        assert_eq!(outbox.newest(), 4);
        let taken = outbox.take();
        let numbers: Vec<u64> = taken.iter().map(|(n, _)| *n).collect();
        assert_eq!(numbers, vec![1, 2, 3, 4]);
        assert_eq!(journal, 3);
        assert!(matches!(&taken[1].1, Entry::Ops(ops) if ops.len() == 2));
        assert!(matches!(
            &taken[2].1,
            Entry::Journal {
                carts_through: 4,
                ..
            }
        ));
        assert!(matches!(&taken[3].1, Entry::Ops(ops) if ops[0].key == vec![3]));
    }

    #[test]
    fn large_changes_are_split_into_entries_under_the_payload_cap() {
        let outbox = Outbox::default();
        outbox.start_leading(Entry::Ops(vec![]));
        for i in 0..5u8 {
            outbox
                .record(|ops| ops.push(op(i, 200 * 1024)))
                .expect("open");
        }
        let records = (0..20).map(|seq| (seq, vec![0u8; 64 * 1024])).collect();
        outbox.push_journal(records, 0);
        for (_, entry) in outbox.take() {
            let bytes = entry.encode().expect("encode").len();
            assert!(bytes <= MAX_ENTRY_BYTES + 4096, "{bytes} bytes");
        }
    }

    #[test]
    fn waiters_hear_the_ack_or_the_fence() {
        let outbox = Outbox::default();
        let first = outbox.start_leading(Entry::Ops(vec![]));
        let second = outbox.push_journal(vec![(1, vec![1])], 0);
        outbox.acked(first);
        assert_eq!(outbox.wait_blocking(first), Ok(()));
        outbox.fence();
        assert_eq!(outbox.wait_blocking(second), Err(Fenced));
        assert!(outbox.has_led());
        let mut ran = false;
        assert_eq!(outbox.record(|_| ran = true), Err(Closed));
        assert!(!ran, "a fenced outbox runs no change");
    }
}
