//! A standby applies the stream: its data dir and its memory follow the
//! leader's, entry by entry.
//!
//! One thread (sled writes must not block the async workers) receives the
//! stream's messages in order from the tail task
//! ([`crate::cluster::node`]). Journal records are stored in the local
//! journal under the leader's own sequence numbers and applied exactly as
//! a restart replays them ([`crate::sale::journal::recover`]): to the book
//! the standby will decide with when it leads, the catalog, the order book
//! (so the materialiser writes the tables and checkpoints here too) and
//! the carts. Ops are written to their tables. After each entry,
//! `meta/cluster_applied` records the stream sequence: a restart resumes
//! after it, and a record or op applied twice changes nothing (records at
//! or below the local journal's end are skipped; an op is the key's value).

use crate::cluster::entry::Entry;
use crate::cluster::{ClusterState, Role};
use crate::error::ServerError;
use crate::sale::book::{Book, Event};
use crate::sale::journal;
use crate::state::Shared;
use crate::store::{decode, id_key, now_ms};
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// `meta` key: the last stream sequence applied to this data dir.
pub(crate) const CLUSTER_APPLIED: &str = "cluster_applied";

/// One message of the stream, as the tail task hands it over.
#[derive(Debug)]
pub(crate) struct Message {
    /// Its stream sequence.
    pub(crate) stream_seq: u64,
    /// The encoded [`Entry`].
    pub(crate) payload: bytes::Bytes,
}

/// A standby's state between messages.
pub(crate) struct Applier {
    shared: Arc<Shared>,
    cluster: Arc<ClusterState>,
    /// The book this node decides with once it leads.
    book: Book,
    /// The next journal sequence expected.
    next_seq: u64,
    /// The leader's cart checkpoint as of the last journal entry.
    carts_through: u64,
}

impl Applier {
    /// A standby resuming from what its start recovered.
    ///
    /// # Errors
    /// `meta` cannot be read.
    pub(crate) fn new(
        shared: Arc<Shared>,
        cluster: Arc<ClusterState>,
        book: Book,
        next_seq: u64,
    ) -> Result<Self, ServerError> {
        let carts_through = shared.store.meta_u64(journal::CARTS_THROUGH)?;
        cluster.set_applied(shared.store.meta_u64(CLUSTER_APPLIED)?);
        Ok(Self {
            shared,
            cluster,
            book,
            next_seq,
            carts_through,
        })
    }

    /// Applies messages on a thread of its own until `messages` closes,
    /// then hands the applier back. A failure cancels `fatal`.
    ///
    /// # Errors
    /// The thread could not be spawned.
    pub(crate) fn spawn(
        mut self,
        mut messages: mpsc::Receiver<Message>,
        fatal: CancellationToken,
    ) -> std::io::Result<std::thread::JoinHandle<Option<Self>>> {
        std::thread::Builder::new()
            .name("flashsale-applier".into())
            .spawn(move || {
                let _stops_on_panic = journal::StopOnPanic(&fatal, "applier");
                while let Some(message) = messages.blocking_recv() {
                    if let Err(e) = self.apply(&message, &fatal) {
                        tracing::error!(error = %e, seq = message.stream_seq, "could not apply the stream; stopping the server");
                        fatal.cancel();
                        return None;
                    }
                }
                Some(self)
            })
    }

    /// Applies one message of the stream.
    ///
    /// # Errors
    /// Storage failure, or an entry that is not one or breaks the journal's order.
    pub(crate) fn apply(
        &mut self,
        message: &Message,
        fatal: &CancellationToken,
    ) -> Result<(), ServerError> {
        match Entry::decode(&message.payload)? {
            Entry::Leader { node, advertise } => {
                tracing::info!(leader = %node, %advertise, seq = message.stream_seq, "new leader in the stream");
                // This node's own old leadership (it restarted since) names
                // no leader to send clients to.
                let leader = (node != self.cluster.config.node_id).then_some(advertise);
                self.cluster.set_role(Role::Standby { leader });
            }
            Entry::Journal {
                records,
                carts_through,
            } => {
                for (seq, record) in records {
                    if seq < self.next_seq {
                        continue;
                    }
                    if seq != self.next_seq {
                        return Err(ServerError::Corrupt {
                            tree: "cluster stream",
                            reason: format!(
                                "journal record {seq} where {} was next",
                                self.next_seq
                            ),
                        });
                    }
                    self.apply_record(seq, record, fatal)?;
                }
                // The leader's cart checkpoint is this node's too: a
                // takeover repairs carts after it, and the checkpoint may
                // delete journal records up to it.
                self.carts_through = carts_through.min(self.next_seq.saturating_sub(1));
                self.shared
                    .store
                    .meta
                    .insert(journal::CARTS_THROUGH, &id_key(self.carts_through))?;
            }
            Entry::Ops(ops) => {
                for op in &ops {
                    self.shared.store.apply_op(op)?;
                }
            }
        }
        self.shared
            .store
            .meta
            .insert(CLUSTER_APPLIED, &id_key(message.stream_seq))?;
        self.cluster.set_applied(message.stream_seq);
        Ok(())
    }

    /// Stores and applies one journal record, as a restart replays it.
    fn apply_record(
        &mut self,
        seq: u64,
        record: Vec<u8>,
        fatal: &CancellationToken,
    ) -> Result<(), ServerError> {
        let shared = &self.shared;
        let events: Vec<Event> = decode("journal", &record)?;
        // Bounded memory, as on the leader: wait for the materialiser.
        shared
            .sale
            .orders
            .wait_below(shared.config.max_unmaterialised, || fatal.is_cancelled());
        shared.store.journal.insert(id_key(seq), record)?;
        self.book.forget_keys();
        shared.sale.keys.rotate_if_due(now_ms());
        for event in &events {
            self.book.apply(event);
        }
        shared.sale.orders.apply(&events, seq);
        for event in &events {
            shared.sale.catalog.apply(event);
        }
        shared.sale.count_holds(&events);
        journal::apply_to_carts(shared, &events)
            .map_err(|e| ServerError::Transaction(e.log_text().to_owned()))?;
        let decided = events
            .iter()
            .filter(|e| matches!(e, Event::OrderDecided(_)))
            .count();
        shared.sale.count_decided(decided as u64);
        shared.sale.progress.publish(seq);
        self.next_seq = seq + 1;
        Ok(())
    }

    /// The book and the next journal sequence, for the sequencer of a new
    /// leader; first re-applies the carts of the records after the old
    /// leader's cart checkpoint (it may have died before replicating them).
    ///
    /// # Errors
    /// Storage failure.
    pub(crate) fn finish(self) -> Result<(Book, u64), ServerError> {
        let shared = &self.shared;
        for item in shared
            .store
            .journal
            .range(id_key(self.carts_through.saturating_add(1))..)
        {
            let (key, value) = item?;
            let (_, events) = journal::read_record(&key, &value)?;
            journal::apply_to_carts(shared, &events)
                .map_err(|e| ServerError::Transaction(e.log_text().to_owned()))?;
        }
        Ok((self.book, self.next_seq))
    }
}
