//! What the replicated log carries: one JetStream message is one [`Entry`],
//! bincode-encoded like every record of the data dir.
//!
//! The stream is the record of a cluster: the journal's records (every
//! decision, with the journal's own sequence numbers) and every change the
//! leader makes to the tables outside the journal (accounts, sessions, API
//! keys, carts, partners' buyer references), in the order the leader made
//! them. A standby applies the entries in stream order and ends up with the
//! leader's data dir, as of the last entry it applied.

use serde::{Deserialize, Serialize};

/// One message of the stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Entry {
    /// The first message of a leadership: who leads from here on.
    Leader {
        /// The leader's `--node-id`.
        node: String,
        /// Where clients reach it (`--advertise`).
        advertise: String,
    },
    /// Journal records, consecutive, each a batch of events as the journal
    /// tree stores it.
    Journal {
        /// (journal sequence, encoded events), in sequence order.
        records: Vec<(u64, Vec<u8>)>,
        /// The leader's cart checkpoint (`meta/carts_through`) when it wrote
        /// these: records after it may still have carts to update.
        carts_through: u64,
    },
    /// Changes to the tables outside the journal, in the leader's order.
    Ops(Vec<Op>),
}

/// A table outside the journal, as named on the wire of the stream (the
/// position is the tag: append only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Side {
    /// `users`.
    Users,
    /// `sessions`.
    Sessions,
    /// `sessions_by_user`.
    SessionsByUser,
    /// `carts`.
    Carts,
    /// `api_keys`.
    ApiKeys,
    /// `partner_buyers`.
    PartnerBuyers,
    /// `meta` (only the cluster's id counter is replicated).
    Meta,
}

/// One change to a table outside the journal: the key's new value, or its
/// removal. Applying it again, or applying an older one before a newer one
/// for the same key, converges: the last one wins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Op {
    /// Which table.
    pub(crate) tree: Side,
    /// The key.
    pub(crate) key: Vec<u8>,
    /// The new value; `None` removes the key.
    pub(crate) value: Option<Vec<u8>>,
}

impl Op {
    /// Bytes this op adds to an entry, roughly (for the entry size cap).
    pub(crate) fn size(&self) -> usize {
        16 + self.key.len() + self.value.as_ref().map_or(0, Vec::len)
    }
}

impl Entry {
    /// Encodes the entry as a stream message's payload.
    ///
    /// # Errors
    /// [`crate::error::ServerError::Encode`] if serde refuses it.
    pub(crate) fn encode(&self) -> Result<Vec<u8>, crate::error::ServerError> {
        crate::store::encode(self)
    }

    /// Decodes a stream message's payload.
    ///
    /// # Errors
    /// [`crate::error::ServerError::Corrupt`] when it is not an entry.
    pub(crate) fn decode(raw: &[u8]) -> Result<Self, crate::error::ServerError> {
        crate::store::decode("cluster stream", raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_of_entry_survives_encoding() {
        let entries = [
            Entry::Leader {
                node: "a".into(),
                advertise: "127.0.0.1:7878".into(),
            },
            Entry::Journal {
                records: vec![(7, vec![1, 2, 3]), (8, vec![])],
                carts_through: 6,
            },
            Entry::Ops(vec![
                Op {
                    tree: Side::Carts,
                    key: vec![0; 8],
                    value: Some(vec![9]),
                },
                Op {
                    tree: Side::Sessions,
                    key: vec![1; 32],
                    value: None,
                },
            ]),
        ];
        for entry in entries {
            let raw = entry.encode().expect("encode");
            assert_eq!(Entry::decode(&raw).expect("decode"), entry);
        }
        assert!(Entry::decode(&[200, 1, 2]).is_err());
    }
}
