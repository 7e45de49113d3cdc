//! Idempotency keys older than the sequencer's memory: the history tables
//! (the buyer index, see [`crate::sale::tables`]) behind a two-generation
//! Bloom filter.
//!
//! A key is kept for the retention window (`Config::key_retention`, default
//! 24 h): a retry inside it gets the order its key made, after it the key
//! is a new intent. The sequencer keeps the keys of orders not yet in the
//! table in memory (see [`crate::sale::book`]); for any other key it asks
//! [`KeyIndex::lookup`], which reads the tables only when the filter says the
//! key may be there. A new key (the common case) costs a few bit probes.
//!
//! The filter never forgets a key inside the window. The materialiser
//! inserts each key it writes to the tables before it counts the key's order
//! as materialised (only then may the sequencer forget it); the keys on
//! disk at start are inserted by [`KeyIndex::load`] (run in the background:
//! until it is done, lookups of users older than the process read the
//! tables). Inserts go to the current generation; once
//! per window the older generation is cleared and becomes the current one.
//! A key inserted in generation g is cleared at the second rotation after
//! it was inserted, at least one full window later.

use crate::error::ServerError;
use crate::sale::tables::Tables;
use crate::store::now_ms;
use fastbloom::AtomicBloomFilter;
use flashsale_protocol::{OrderId, UserId};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use uuid::Uuid;

/// False-positive rate the filter is sized for (at its expected key count).
const FALSE_POSITIVE_RATE: f64 = 0.01;

/// Key of the `order_keys` table: buyer id then the idempotency key.
pub(crate) fn table_key(user: UserId, key: Uuid) -> [u8; 24] {
    let mut out = [0u8; 24];
    out[..8].copy_from_slice(&user.0.to_be_bytes());
    out[8..].copy_from_slice(key.as_bytes());
    out
}

/// What the table says of a key: the order it made, the
/// [`crate::sale::book::request_fingerprint`] of its request, and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct KeyEntry {
    /// The order.
    pub(crate) order_id: OrderId,
    /// The fingerprint of the request that made it.
    pub(crate) fingerprint: u64,
    /// When it was decided, ms since the epoch.
    pub(crate) decided_at_ms: u64,
}

impl KeyEntry {
    /// The table's value: three big-endian u64.
    pub(crate) fn encode(&self) -> [u8; 24] {
        let mut out = [0u8; 24];
        out[..8].copy_from_slice(&self.order_id.0.to_be_bytes());
        out[8..16].copy_from_slice(&self.fingerprint.to_be_bytes());
        out[16..].copy_from_slice(&self.decided_at_ms.to_be_bytes());
        out
    }

    /// Reads a table value.
    ///
    /// # Errors
    /// [`ServerError::Corrupt`] when it is not 24 bytes.
    pub(crate) fn decode(raw: &[u8]) -> Result<Self, ServerError> {
        let word = |i: usize| {
            raw.get(i * 8..i * 8 + 8)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map(u64::from_be_bytes)
        };
        match (raw.len(), word(0), word(1), word(2)) {
            (24, Some(order), Some(fingerprint), Some(decided_at_ms)) => Ok(Self {
                order_id: OrderId(order),
                fingerprint,
                decided_at_ms,
            }),
            _ => Err(ServerError::Corrupt {
                tree: "order_keys",
                reason: "value is not 24 bytes".into(),
            }),
        }
    }
}

/// The table and its filter, shared by the sequencer (decisions), intake
/// (retries of refused intents) and the materialiser (which fills the table).
#[derive(Debug)]
pub(crate) struct KeyIndex {
    tables: Tables,
    generations: [AtomicBloomFilter; 2],
    /// Index of the generation taking inserts.
    current: AtomicUsize,
    /// When the current generation started taking inserts, ms.
    period_start_ms: AtomicU64,
    /// Set once [`KeyIndex::load`] has inserted every key of the table.
    ready: AtomicBool,
    /// Highest order id whose key is in the table (the materialiser's).
    materialised: AtomicU64,
    retention_ms: u64,
    /// Users from this id on were created by this process: every key of
    /// theirs in the tables went through [`KeyIndex::insert`], so the filter
    /// answers for them before it is loaded (a sale of new buyers right
    /// after a start reads no table).
    first_new_user: UserId,
}

impl KeyIndex {
    /// An index over `tables`, keeping keys for `retention_ms`, with a
    /// filter sized for `expected_keys` per window; users from
    /// `first_new_user` on did not exist when the process started.
    pub(crate) fn new(
        tables: Tables,
        retention_ms: u64,
        expected_keys: usize,
        first_new_user: UserId,
    ) -> Self {
        let filter = || {
            AtomicBloomFilter::with_false_pos(FALSE_POSITIVE_RATE)
                .expected_items(expected_keys.max(1024))
        };
        Self {
            tables,
            generations: [filter(), filter()],
            current: AtomicUsize::new(0),
            period_start_ms: AtomicU64::new(now_ms()),
            ready: AtomicBool::new(false),
            materialised: AtomicU64::new(0),
            retention_ms,
            first_new_user,
        }
    }

    /// True when a key decided at `decided_at_ms` is still inside the window at `now_ms`.
    pub(crate) fn within_window(&self, decided_at_ms: u64, now_ms: u64) -> bool {
        now_ms.saturating_sub(decided_at_ms) < self.retention_ms
    }

    /// The oldest decision time inside the window at `now_ms`.
    pub(crate) fn window_start(&self, now_ms: u64) -> u64 {
        now_ms.saturating_add(1).saturating_sub(self.retention_ms)
    }

    /// Records a key decided now (or replayed at start).
    pub(crate) fn insert(&self, user: UserId, key: Uuid) {
        let current = self.current.load(Ordering::Acquire);
        self.generations[current].insert(&(user.0, key.as_u128()));
    }

    /// False only when the key is certainly not in the table.
    fn may_exist(&self, user: UserId, key: Uuid) -> bool {
        if user < self.first_new_user && !self.ready.load(Ordering::Acquire) {
            return true;
        }
        let item = (user.0, key.as_u128());
        self.generations.iter().any(|g| g.contains(&item))
    }

    /// The table's entry for a key, if it has one inside the window at `now_ms`.
    ///
    /// # Errors
    /// Storage failure or a corrupt entry.
    pub(crate) fn lookup(
        &self,
        user: UserId,
        key: Uuid,
        now_ms: u64,
    ) -> Result<Option<KeyEntry>, ServerError> {
        if !self.may_exist(user, key) {
            return Ok(None);
        }
        self.tables.find_key(user, key, self.window_start(now_ms))
    }

    /// True once every key of the table is in the filter.
    #[cfg(test)]
    pub(crate) fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Highest order id whose key the table holds.
    pub(crate) fn materialised(&self) -> OrderId {
        OrderId(self.materialised.load(Ordering::Acquire))
    }

    /// The materialiser wrote the keys of every order up to `id`.
    pub(crate) fn set_materialised(&self, id: OrderId) {
        self.materialised.fetch_max(id.0, Ordering::AcqRel);
    }

    /// Starts a new generation when the current one is a window old; called
    /// by the sequencer (the only caller, so rotations never race).
    pub(crate) fn rotate_if_due(&self, now_ms: u64) {
        let started = self.period_start_ms.load(Ordering::Acquire);
        if now_ms.saturating_sub(started) < self.retention_ms {
            return;
        }
        let older = 1 - self.current.load(Ordering::Acquire);
        self.generations[older].clear();
        self.current.store(older, Ordering::Release);
        self.period_start_ms.store(now_ms, Ordering::Release);
        tracing::debug!("idempotency key filter rotated");
    }

    /// Inserts every key of the tables decided inside the window into the
    /// older generation (they were all decided before this process
    /// started), then marks the filter ready.
    /// Returns the number of keys.
    ///
    /// # Errors
    /// Storage failure; the filter then stays not ready (lookups of users
    /// older than the process read the tables), which is slower but exact.
    pub(crate) fn load(&self) -> Result<u64, ServerError> {
        let older = 1 - self.current.load(Ordering::Acquire);
        let mut keys = 0u64;
        self.tables
            .for_each_key(self.window_start(now_ms()), |user, key| {
                self.generations[older].insert(&(user.0, key.as_u128()));
                keys += 1;
            })?;
        self.ready.store(true, Ordering::Release);
        Ok(keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sale::tables::tests::{order, stored};

    fn index(retention_ms: u64) -> (KeyIndex, tempfile::TempDir) {
        let (tables, dir) = stored();
        (KeyIndex::new(tables, retention_ms, 1000, UserId(100)), dir)
    }

    #[test]
    fn before_the_filter_is_loaded_only_users_older_than_the_process_read_the_tables() {
        let (index, _dir) = index(1_000);
        let key = Uuid::new_v4();
        assert!(
            index.may_exist(UserId(99), key),
            "an old user: ask the tables"
        );
        assert!(
            !index.may_exist(UserId(100), key),
            "a new user's keys are all in the filter"
        );
        index.insert(UserId(100), key);
        assert!(index.may_exist(UserId(100), key));
    }

    #[test]
    fn a_key_on_disk_is_found_before_and_after_the_filter_is_loaded_and_forgotten_after_the_window()
    {
        let (index, _dir) = index(1_000);
        let decided = now_ms();
        let mut made = order(3, 7);
        made.decided_at_ms = decided;
        index
            .tables
            .write(std::slice::from_ref(&made), &[made.id])
            .expect("write");
        let (user, key) = (made.user_id, made.idempotency_key);
        let entry = KeyEntry {
            order_id: made.id,
            fingerprint: crate::sale::book::request_fingerprint(made.source, &made.items),
            decided_at_ms: decided,
        };
        assert_eq!(
            index.lookup(user, key, decided + 500).expect("read"),
            Some(entry)
        );
        assert_eq!(index.load().expect("load"), 1);
        assert!(index.is_ready());
        assert_eq!(
            index.lookup(user, key, decided + 999).expect("read"),
            Some(entry)
        );
        assert_eq!(
            index.lookup(user, key, decided + 1_000).expect("read"),
            None
        );
        assert_eq!(
            index
                .lookup(user, Uuid::new_v4(), decided + 500)
                .expect("read"),
            None
        );
    }

    #[test]
    fn a_key_inserted_now_survives_one_rotation_and_is_cleared_by_the_second() {
        let (index, _dir) = index(1_000);
        index.load().expect("load");
        let (user, key) = (UserId(1), Uuid::new_v4());
        index.insert(user, key);
        let start = index.period_start_ms.load(Ordering::Acquire);
        index.rotate_if_due(start + 999);
        assert!(index.may_exist(user, key));
        index.rotate_if_due(start + 1_000);
        assert!(index.may_exist(user, key), "one window: still kept");
        index.rotate_if_due(start + 2_000);
        assert!(!index.may_exist(user, key), "two windows: cleared");
    }

    #[test]
    fn entries_round_trip_and_a_short_value_is_corrupt() {
        let entry = KeyEntry {
            order_id: OrderId(u64::MAX),
            fingerprint: 1,
            decided_at_ms: 2,
        };
        assert_eq!(KeyEntry::decode(&entry.encode()).expect("decode"), entry);
        assert!(KeyEntry::decode(&[0; 23]).is_err());
    }
}
