//! Checkpoints: the sequencer's hot state as of a journal sequence, stored
//! in the `checkpoint` tree, so a start loads it and replays only the
//! journal after it, and the journal before it can be deleted.
//!
//! A checkpoint is written as chunks of at most [`CHUNK_BYTES`] (sled keeps
//! larger values in blob files its flush does not `fdatasync`) under a new
//! generation number, then the head naming that generation (one insert: the
//! switch is atomic). Older generations are deleted afterwards; a crash in
//! between leaves unreferenced chunks that the next checkpoint deletes.
//!
//! No sled batch or transaction anywhere at run time: the first one in a
//! process puts every later sled write behind a global lock, and a large
//! batch would stall the journal for as long as it takes.

use crate::error::ServerError;
use crate::sale::book::BookState;
use crate::sale::catalog::ProductRecord;
use crate::sale::holds::HoldsState;
use crate::sale::order_book::OrderCounts;
use crate::store::{decode, encode, Store};
use flashsale_protocol::OrderId;
use serde::{Deserialize, Serialize};

/// Largest chunk of a checkpoint's state.
const CHUNK_BYTES: usize = 60 * 1024;

/// Journal records listed, then deleted, per round.
const TRUNCATE_BATCH: usize = 256;

/// Key of the head.
const HEAD: &[u8] = b"head";

/// Everything a start needs besides the tables and the journal after `seq`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Snapshot {
    /// The last journal sequence applied to this state and to the tables.
    pub(crate) seq: u64,
    /// The sequencer's book (without recent keys: the key table has them).
    pub(crate) book: BookState,
    /// The published products.
    pub(crate) products: Vec<ProductRecord>,
    /// Order counts.
    pub(crate) counts: OrderCounts,
    /// Unused since schema 4 (pruning walks `order_keys`); written as 0 and
    /// kept so a schema-3 checkpoint still decodes.
    pub(crate) keys_pruned_through: OrderId,
    /// The holds (appended by the holds' release: a checkpoint written
    /// before it decodes as [`SnapshotBeforeHolds`], with no holds).
    pub(crate) holds: HoldsState,
}

/// A checkpoint as written before holds existed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct SnapshotBeforeHolds {
    seq: u64,
    book: BookState,
    products: Vec<ProductRecord>,
    counts: OrderCounts,
    keys_pruned_through: OrderId,
}

/// Decodes a checkpoint of this build, or of one before holds.
fn decode_snapshot(bytes: &[u8]) -> Result<Snapshot, ServerError> {
    match decode::<Snapshot>("checkpoint", bytes) {
        Ok(snapshot) => Ok(snapshot),
        Err(current) => match decode::<SnapshotBeforeHolds>("checkpoint", bytes) {
            Ok(old) => Ok(Snapshot {
                seq: old.seq,
                book: old.book,
                products: old.products,
                counts: old.counts,
                keys_pruned_through: old.keys_pruned_through,
                holds: HoldsState::default(),
            }),
            Err(_) => Err(current),
        },
    }
}

/// The head: which generation is current and how to read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Head {
    generation: u64,
    seq: u64,
    chunks: u32,
    bytes: u64,
}

fn chunk_key(generation: u64, index: u32) -> [u8; 13] {
    let mut out = [0u8; 13];
    out[0] = b'c';
    out[1..9].copy_from_slice(&generation.to_be_bytes());
    out[9..].copy_from_slice(&index.to_be_bytes());
    out
}

fn read_head(store: &Store) -> Result<Option<Head>, ServerError> {
    store
        .checkpoint
        .get(HEAD)?
        .map(|raw| decode("checkpoint", &raw))
        .transpose()
}

/// The current checkpoint, if one was ever written.
///
/// # Errors
/// Storage failure, or a checkpoint whose chunks are missing or corrupt.
pub(crate) fn load(store: &Store) -> Result<Option<Snapshot>, ServerError> {
    let Some(head) = read_head(store)? else {
        return Ok(None);
    };
    let mut bytes = Vec::with_capacity(usize::try_from(head.bytes).unwrap_or(0));
    for index in 0..head.chunks {
        let chunk = store
            .checkpoint
            .get(chunk_key(head.generation, index))?
            .ok_or_else(|| ServerError::Corrupt {
                tree: "checkpoint",
                reason: format!("chunk {index} of generation {} is missing", head.generation),
            })?;
        bytes.extend_from_slice(&chunk);
    }
    if bytes.len() as u64 != head.bytes {
        return Err(ServerError::Corrupt {
            tree: "checkpoint",
            reason: "the chunks do not add up to the head's length".into(),
        });
    }
    let snapshot = decode_snapshot(&bytes)?;
    if snapshot.seq != head.seq {
        return Err(ServerError::Corrupt {
            tree: "checkpoint",
            reason: "the state's sequence is not the head's".into(),
        });
    }
    Ok(Some(snapshot))
}

/// Writes `snapshot` as the current checkpoint (its chunks, then the head),
/// then deletes every older generation. The caller syncs.
///
/// # Errors
/// Storage failure: the previous checkpoint stays current.
pub(crate) fn write(store: &Store, snapshot: &Snapshot) -> Result<(), ServerError> {
    let previous = read_head(store)?;
    let generation = previous.map_or(1, |h| h.generation + 1);
    let bytes = encode(snapshot)?;
    let mut chunks = 0u32;
    for (index, chunk) in bytes.chunks(CHUNK_BYTES).enumerate() {
        let index =
            u32::try_from(index).map_err(|_| ServerError::Encode("checkpoint too large".into()))?;
        store
            .checkpoint
            .insert(chunk_key(generation, index), chunk)?;
        chunks = index + 1;
    }
    let head = Head {
        generation,
        seq: snapshot.seq,
        chunks,
        bytes: bytes.len() as u64,
    };
    store.checkpoint.insert(HEAD, encode(&head)?)?;
    delete_older(store, generation)
}

/// Deletes the chunks of generations before `current`.
fn delete_older(store: &Store, current: u64) -> Result<(), ServerError> {
    let end = chunk_key(current, 0);
    let stale: Vec<sled::IVec> = store
        .checkpoint
        .range(&[b'c'][..]..&end[..])
        .keys()
        .collect::<Result<_, _>>()?;
    for key in stale {
        store.checkpoint.remove(key)?;
    }
    Ok(())
}

/// Deletes the journal records up to `through`, in batches. A crash
/// midway leaves some of them; recovery skips records at or before the
/// checkpoint either way.
///
/// # Errors
/// Storage failure.
pub(crate) fn truncate_journal(store: &Store, through: u64) -> Result<u64, ServerError> {
    let end = crate::store::id_key(through);
    let mut removed = 0u64;
    loop {
        let keys: Vec<sled::IVec> = store
            .journal
            .range(..=end)
            .keys()
            .take(TRUNCATE_BATCH)
            .collect::<Result<_, _>>()?;
        if keys.is_empty() {
            return Ok(removed);
        }
        for key in &keys {
            store.journal.remove(key)?;
        }
        removed += keys.len() as u64;
        crate::crash_point::reach("truncation-first-batch");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sale::book::Book;

    fn snapshot(seq: u64, names: usize) -> Snapshot {
        let mut book = Book::new();
        for i in 0..names {
            book.create_product(
                format!("a long product name number {i:08}"),
                1,
                5,
                Default::default(),
            )
            .expect("created");
        }
        Snapshot {
            seq,
            book: book.state(),
            products: Vec::new(),
            counts: OrderCounts::default(),
            keys_pruned_through: OrderId(0),
            holds: HoldsState::default(),
        }
    }

    #[test]
    fn a_checkpoint_written_before_holds_decodes_with_no_holds() {
        let current = snapshot(7, 3);
        let old = SnapshotBeforeHolds {
            seq: current.seq,
            book: current.book.clone(),
            products: current.products.clone(),
            counts: current.counts,
            keys_pruned_through: current.keys_pruned_through,
        };
        let bytes = encode(&old).expect("encode");
        assert_eq!(decode_snapshot(&bytes).expect("decodes"), current);
        let mut with_holds = current;
        with_holds
            .holds
            .hold_ms
            .push((flashsale_protocol::ProductId(1), 5_000));
        let bytes = encode(&with_holds).expect("encode");
        assert_eq!(decode_snapshot(&bytes).expect("decodes"), with_holds);
    }

    #[test]
    fn a_checkpoint_of_many_chunks_reads_back_and_replaces_the_previous_one() {
        let dir = tempfile::TempDir::new().expect("temp dir");
        let store = Store::open(dir.path()).expect("store");
        assert_eq!(load(&store).expect("load"), None);
        let first = snapshot(5, 10);
        write(&store, &first).expect("write");
        assert_eq!(load(&store).expect("load"), Some(first));
        let second = snapshot(9, 5000);
        write(&store, &second).expect("write");
        assert_eq!(load(&store).expect("load"), Some(second));
        let chunk_count = store.checkpoint.len() - 1;
        let head = read_head(&store).expect("head").expect("written");
        assert!(head.chunks > 1, "a large state is split");
        assert_eq!(chunk_count, head.chunks as usize, "older chunks are gone");
    }

    #[test]
    fn truncation_removes_exactly_the_records_up_to_the_bound() {
        let dir = tempfile::TempDir::new().expect("temp dir");
        let store = Store::open(dir.path()).expect("store");
        for seq in 1..=3000u64 {
            store
                .journal
                .insert(crate::store::id_key(seq), b"x".as_slice())
                .expect("insert");
        }
        assert_eq!(truncate_journal(&store, 2500).expect("truncate"), 2500);
        let first = store.journal.first().expect("read").expect("left");
        assert_eq!(first.0.as_ref(), crate::store::id_key(2501));
        assert_eq!(store.journal.len(), 500);
    }
}
