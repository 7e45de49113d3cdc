//! Writes to the tables outside the journal (accounts, sessions, API keys,
//! carts, partners' buyer references) and the ids of new accounts.
//!
//! On a single server these are plain sled writes. In a cluster the leader
//! also records each one in its outbox to the replicated log, holding the
//! outbox across the write ([`crate::cluster::outbox::Outbox::record`]), so
//! standbys apply them in the order the leader made them. Every such write
//! of the server goes through here; the handler then waits for
//! [`crate::store::syncer::Syncer`], which in a cluster also waits for the
//! stream's acknowledgement.

use crate::cluster::entry::{Op, Side};
use crate::cluster::outbox::Outbox;
use crate::error::ServerError;
use crate::store::{id_key, Store};
use flashsale_protocol::UserId;
use std::sync::Arc;

/// `meta` key: the next account id in a cluster (replicated, so a new
/// leader never hands out an id an old one did).
pub(crate) const NEXT_USER_ID: &str = "cluster_next_user_id";

impl Store {
    /// The outbox to the replicated log, in cluster mode.
    pub(crate) fn replica(&self) -> Option<&Arc<Outbox>> {
        self.replica.get()
    }

    /// Turns on cluster mode for the side tables (once, before any write).
    pub(crate) fn set_replica(&self, outbox: Arc<Outbox>) {
        let _ = self.replica.set(outbox);
    }

    /// The sled tree of a side table.
    pub(crate) fn side_tree(&self, side: Side) -> &sled::Tree {
        match side {
            Side::Users => &self.users,
            Side::Sessions => &self.sessions,
            Side::SessionsByUser => &self.sessions_by_user,
            Side::Carts => &self.carts,
            Side::ApiKeys => &self.api_keys,
            Side::PartnerBuyers => &self.partner_buyers,
            Side::Meta => &self.meta,
        }
    }

    /// Runs `change` with the ops it pushes recorded for the stream (in a
    /// cluster, holding the outbox).
    ///
    /// # Errors
    /// [`ServerError::NotLeading`] (and nothing is written) once this node
    /// has stopped leading; `change`'s own.
    fn with_ops<T>(
        &self,
        change: impl FnOnce(&mut Vec<Op>) -> Result<T, ServerError>,
    ) -> Result<T, ServerError> {
        match self.replica() {
            Some(outbox) => outbox.record(change).map_err(|_| ServerError::NotLeading)?,
            None => change(&mut Vec::new()),
        }
    }

    /// Inserts `value` at `key` of a side table.
    ///
    /// # Errors
    /// Storage failure.
    pub(crate) fn side_insert(
        &self,
        side: Side,
        key: &[u8],
        value: Vec<u8>,
    ) -> Result<Option<sled::IVec>, ServerError> {
        self.with_ops(|ops| {
            let previous = self.side_tree(side).insert(key, value.as_slice())?;
            ops.push(Op {
                tree: side,
                key: key.to_vec(),
                value: Some(value),
            });
            Ok(previous)
        })
    }

    /// Removes `key` from a side table.
    ///
    /// # Errors
    /// Storage failure.
    pub(crate) fn side_remove(
        &self,
        side: Side,
        key: &[u8],
    ) -> Result<Option<sled::IVec>, ServerError> {
        self.with_ops(|ops| {
            let previous = self.side_tree(side).remove(key)?;
            if previous.is_some() {
                ops.push(Op {
                    tree: side,
                    key: key.to_vec(),
                    value: None,
                });
            }
            Ok(previous)
        })
    }

    /// Compare-and-swap on a side table; true when it swapped.
    ///
    /// # Errors
    /// Storage failure.
    pub(crate) fn side_cas(
        &self,
        side: Side,
        key: &[u8],
        old: Option<&[u8]>,
        new: Option<Vec<u8>>,
    ) -> Result<bool, ServerError> {
        self.with_ops(|ops| {
            let swapped = self
                .side_tree(side)
                .compare_and_swap(key, old, new.as_deref())?
                .is_ok();
            if swapped {
                ops.push(Op {
                    tree: side,
                    key: key.to_vec(),
                    value: new,
                });
            }
            Ok(swapped)
        })
    }

    /// Applies an op read from the stream (a standby).
    ///
    /// # Errors
    /// Storage failure.
    pub(crate) fn apply_op(&self, op: &Op) -> Result<(), ServerError> {
        if op.tree == Side::Meta && op.key != NEXT_USER_ID.as_bytes() {
            // Only the id counter of `meta` is replicated; anything else
            // would be a newer leader's: ignore it rather than guess.
            return Ok(());
        }
        let tree = self.side_tree(op.tree);
        match &op.value {
            Some(value) => tree.insert(op.key.as_slice(), value.as_slice())?,
            None => tree.remove(op.key.as_slice())?,
        };
        Ok(())
    }

    /// A new account id: sled's id generator on a single server; in a
    /// cluster, also past the replicated counter, which it then advances.
    ///
    /// # Errors
    /// Storage failure.
    pub(crate) fn new_user_id(&self) -> Result<UserId, ServerError> {
        if self.replica().is_none() {
            return Ok(UserId(self.db.generate_id()?.saturating_add(1)));
        }
        self.with_ops(|ops| {
            let id = self.next_user_id_floor()?;
            let next = id_key(id.0.saturating_add(1));
            self.meta.insert(NEXT_USER_ID, &next)?;
            ops.push(Op {
                tree: Side::Meta,
                key: NEXT_USER_ID.as_bytes().to_vec(),
                value: Some(next.to_vec()),
            });
            Ok(id)
        })
    }

    /// No account has an id at or above this one: the larger of sled's
    /// generator and the cluster's counter.
    ///
    /// # Errors
    /// Storage failure.
    pub(crate) fn next_user_id_floor(&self) -> Result<UserId, ServerError> {
        let generated = self.db.generate_id()?.saturating_add(1);
        Ok(UserId(generated.max(self.meta_u64(NEXT_USER_ID)?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leaders_side_writes_replayed_on_another_store_give_the_same_tables() {
        let leader_dir = tempfile::TempDir::new().expect("temp dir");
        let standby_dir = tempfile::TempDir::new().expect("temp dir");
        let leader = Store::open(leader_dir.path()).expect("store");
        let standby = Store::open(standby_dir.path()).expect("store");
        let outbox = Arc::new(Outbox::default());
        leader.set_replica(Arc::clone(&outbox));
        outbox.start_leading(crate::cluster::entry::Entry::Ops(vec![]));
        let id = leader.new_user_id().expect("id");
        leader
            .side_insert(Side::Users, b"alice", vec![1])
            .expect("insert");
        assert!(leader
            .side_cas(Side::Carts, b"k", None, Some(vec![2]))
            .expect("cas"));
        assert!(!leader
            .side_cas(Side::Carts, b"k", None, Some(vec![3]))
            .expect("cas"));
        leader.side_remove(Side::Users, b"alice").expect("remove");
        leader.side_remove(Side::Users, b"nobody").expect("remove");
        for (_, entry) in outbox.take().into_iter().skip(1) {
            let crate::cluster::entry::Entry::Ops(ops) = entry else {
                panic!("only ops were recorded");
            };
            assert_eq!(ops.len(), 4, "one op per change that changed something");
            for op in &ops {
                standby.apply_op(op).expect("apply");
            }
        }
        for side in [Side::Users, Side::Carts, Side::Meta] {
            let of = |store: &Store| -> Vec<_> {
                store
                    .side_tree(side)
                    .iter()
                    .filter_map(Result::ok)
                    .filter(|(k, _)| side != Side::Meta || k.as_ref() == NEXT_USER_ID.as_bytes())
                    .collect()
            };
            assert_eq!(of(&leader), of(&standby), "{side:?}");
        }
        assert!(standby.next_user_id_floor().expect("floor").0 > id.0);
    }
}
