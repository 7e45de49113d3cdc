//! Group commit for the writes that do not go through the journal: carts,
//! accounts, API keys, sessions.
//!
//! A handler makes its sled change, then asks the syncer to answer (or to
//! wake it) once the change is on disk. One thread flushes sled and
//! `fdatasync`s the data file once for every request that arrived while
//! the previous flush ran, then answers them all: like the journal, one
//! `fdatasync` per batch, never one per change. Any sync that *starts* after
//! a request arrived covers every write made before it, so the journal's own
//! flushes would do too; the syncer only makes sure one happens soon.
//!
//! A failed sync stops the server (through `failed`), as a failed journal
//! write does: after a failed `fdatasync` nothing the kernel buffered can be
//! trusted, so every waiting and later request is answered `Internal` with
//! "the outcome is unknown".

use crate::cluster::outbox::Outbox;
use crate::config::SyncMode;
use crate::error::{ApiError, ApiResult};
use crate::net::reply::ReplyTo;
use crate::store::sync_clock::{Covered, SyncClock};
use crate::store::Store;
use flashsale_protocol::{ErrorCode, Reply};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// Who waits for the next sync.
enum Waiter {
    /// A request's answer, sent once its change (made before `mark`) is durable.
    Reply(ReplyTo, Box<Reply>, Marks),
    /// A task (or blocking code) that continues once its change (made
    /// before `mark`) is durable.
    Wake(oneshot::Sender<Outcome>, Marks),
}

/// Where a waiter's change stands: the sync ticket, and in a cluster the
/// outbox entry that holds it (0: nothing to replicate).
#[derive(Debug, Clone, Copy)]
struct Marks {
    sync: u64,
    entry: u64,
}

/// How a group of waiters' changes ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// On disk (and in a cluster, in the stream).
    Durable,
    /// The sync failed: the outcome is unknown.
    SyncFailed,
    /// On disk here, but this node lost the leadership before the stream
    /// acknowledged it: it may or may not have happened in the cluster.
    NotReplicated,
}

/// The handle handlers use; the thread stops when it is dropped.
#[derive(Debug)]
pub(crate) struct Syncer {
    /// Unbounded, yet bounded by its senders: every waiter is a request
    /// holding one of its connection's in-flight permits, or a task awaiting
    /// its own change.
    waiters: mpsc::UnboundedSender<Waiter>,
    /// `Relaxed` answers at once, as the journal does in that mode.
    mode: SyncMode,
    /// The data dir's sync tickets: where each waiter's change stands.
    clock: Arc<SyncClock>,
    /// In a cluster, the outbox each change is also waited for in.
    replica: Option<Arc<Outbox>>,
}

impl std::fmt::Debug for Waiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Reply(..) => "Reply",
            Self::Wake(..) => "Wake",
        })
    }
}

/// The answer to a change whose sync failed: it may or may not be on disk.
fn unknown_outcome() -> ApiError {
    ApiError::new(
        ErrorCode::Internal,
        "the server could not store this change; the outcome is unknown",
    )
}

/// The answer to a change a stepped-down leader made before the stream
/// acknowledged it: it may or may not be in the cluster.
fn not_replicated() -> ApiError {
    ApiError::new(
        ErrorCode::NotLeader,
        "this node lost the leadership before the change was acknowledged; the outcome \
         is unknown: read it back from the new leader before sending it again",
    )
}

fn answer(outcome: Outcome) -> ApiResult<()> {
    match outcome {
        Outcome::Durable => Ok(()),
        Outcome::SyncFailed => Err(unknown_outcome()),
        Outcome::NotReplicated => Err(not_replicated()),
    }
}

impl Syncer {
    /// Starts the sync thread for `store`; it cancels `failed` if a sync fails.
    ///
    /// # Errors
    /// The thread could not be spawned.
    pub(crate) fn spawn(
        store: Store,
        mode: SyncMode,
        failed: CancellationToken,
    ) -> std::io::Result<Self> {
        let (waiters, rx) = mpsc::unbounded_channel();
        let clock = Arc::clone(&store.syncs);
        let replica = store.replica().cloned();
        std::thread::Builder::new()
            .name("flashsale-syncer".into())
            .spawn(move || run(&store, rx, &failed))?;
        Ok(Self {
            waiters,
            mode,
            clock,
            replica,
        })
    }

    /// Sends `result` on `reply` once every write made before this call is
    /// on disk. An error is sent at once: a refused request changed nothing.
    pub(crate) fn reply_when_durable(&self, reply: ReplyTo, result: ApiResult<Reply>) {
        match result {
            Ok(answer) if self.must_wait() => {
                let mark = self.marks();
                if let Err(mpsc::error::SendError(Waiter::Reply(reply, ..))) = self
                    .waiters
                    .send(Waiter::Reply(reply, Box::new(answer), mark))
                {
                    reply.send(Err(ApiError::shutting_down()));
                }
            }
            other => reply.send(other),
        }
    }

    /// Completes once every write made before this call is on disk.
    ///
    /// # Errors
    /// `Internal` (outcome unknown) when the sync failed, `ShuttingDown`
    /// when the syncer has stopped.
    pub(crate) async fn durable(&self) -> ApiResult<()> {
        match self.wake_after_sync() {
            None => Ok(()),
            Some(rx) => outcome(rx.await.ok()),
        }
    }

    /// [`Syncer::durable`] for code on the blocking pool.
    ///
    /// # Errors
    /// As [`Syncer::durable`].
    #[cfg_attr(not(test), allow(dead_code))] // No blocking caller outside the tests yet.
    pub(crate) fn durable_blocking(&self) -> ApiResult<()> {
        match self.wake_after_sync() {
            None => Ok(()),
            Some(rx) => outcome(rx.blocking_recv().ok()),
        }
    }

    /// `None` when nothing needs waiting for (relaxed mode).
    fn wake_after_sync(&self) -> Option<oneshot::Receiver<Outcome>> {
        if !self.must_wait() {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        // A stopped syncer drops `tx`: the receiver then reports it.
        let _ = self.waiters.send(Waiter::Wake(tx, self.marks()));
        Some(rx)
    }

    /// False only on a single server in `Relaxed` mode.
    fn must_wait(&self) -> bool {
        self.mode == SyncMode::Always || self.replica.is_some()
    }

    /// Where a change made before this call stands.
    fn marks(&self) -> Marks {
        let entry = match &self.replica {
            Some(outbox) if outbox.has_led() => outbox.newest(),
            _ => 0,
        };
        Marks {
            sync: self.clock.mark(),
            entry,
        }
    }
}

fn outcome(synced: Option<Outcome>) -> ApiResult<()> {
    match synced {
        Some(outcome) => answer(outcome),
        None => Err(ApiError::shutting_down()),
    }
}

/// Makes sure a sync that began after every waiter's change completes:
/// one already in flight (the journal's) if there is one, else our own.
/// False when a sync failed.
fn sync_covering(store: &Store, group: &[Waiter]) -> bool {
    let mark = group
        .iter()
        .map(|waiter| match waiter {
            Waiter::Reply(_, _, marks) | Waiter::Wake(_, marks) => marks.sync,
        })
        .max()
        .unwrap_or(0);
    match store.syncs.wait_covered(mark) {
        Covered::Yes => true,
        Covered::Failed => {
            tracing::error!("a sync of the data dir failed; stopping the server");
            false
        }
        Covered::SyncNeeded => match store.sync() {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(error = %e, "sync of carts and accounts failed; stopping the server");
                false
            }
        },
    }
}

/// In a cluster, waits until the stream has every waiter's change.
fn replicated(store: &Store, group: &[Waiter]) -> Outcome {
    let entry = group
        .iter()
        .map(|waiter| match waiter {
            Waiter::Reply(_, _, marks) | Waiter::Wake(_, marks) => marks.entry,
        })
        .max()
        .unwrap_or(0);
    match store.replica() {
        Some(outbox) if entry > 0 => match outbox.wait_blocking(entry) {
            Ok(()) => Outcome::Durable,
            Err(_) => Outcome::NotReplicated,
        },
        _ => Outcome::Durable,
    }
}

fn run(store: &Store, mut rx: mpsc::UnboundedReceiver<Waiter>, failed: &CancellationToken) {
    let mut group = Vec::new();
    let mut healthy = true;
    while let Some(first) = rx.blocking_recv() {
        group.push(first);
        while let Ok(more) = rx.try_recv() {
            group.push(more);
        }
        if healthy {
            healthy = sync_covering(store, &group);
            if !healthy {
                failed.cancel();
            }
        }
        let outcome = if !healthy {
            Outcome::SyncFailed
        } else {
            replicated(store, &group)
        };
        for waiter in group.drain(..) {
            match waiter {
                Waiter::Reply(reply, result, _) => reply.send(answer(outcome).map(|()| *result)),
                Waiter::Wake(tx, _) => {
                    let _ = tx.send(outcome);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_waiter_is_woken_after_a_sync_and_relaxed_mode_does_not_wait() {
        let dir = tempfile::TempDir::new().expect("temp dir");
        let store = Store::open(dir.path()).expect("data dir");
        let failed = CancellationToken::new();
        let syncer =
            Syncer::spawn(store.clone(), SyncMode::Always, failed.clone()).expect("thread");
        store.meta.insert("k", b"v".as_slice()).expect("write");
        syncer.durable_blocking().expect("synced");
        assert!(!failed.is_cancelled());
        let relaxed = Syncer::spawn(store, SyncMode::Relaxed, failed).expect("thread");
        relaxed.durable_blocking().expect("no wait");
    }
}
