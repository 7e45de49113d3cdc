//! Partners' buyers: a partner names a buyer by its own reference; the
//! server maps (partner, reference) to a buyer account.
//!
//! Reads ([`Partners::lookup`]) never create a mapping; one is created
//! ([`Partners::create`]) only by a request that changes something for the
//! buyer (`CartAdd`, `Buy`), once it is authorised and has passed its
//! checks, and only within the partner's caps: `new_buyers_per_partner` a
//! second (`Overloaded` with the wait) and `max_buyers_per_partner` in
//! total (`QuotaExceeded`). References are never deleted (orders name them).
//!
//! The mappings live in the `partner_buyers` tree; memory holds a bounded
//! cache of recently used ones (`Config::partner_buyer_cache` entries), and
//! a miss reads the tree (one point read). The same tree holds one count
//! record per partner under the partner id alone (8 bytes; a mapping's key
//! is the partner id and a reference of at least one byte), written in the
//! same atomic batch as each new mapping, so the quota survives a crash
//! exactly and start-up reads one record per partner, not every reference.
//! A new mapping is written before any order or cart line of that buyer,
//! so the next flush (the journal's, or the syncer's for a cart) makes it
//! durable first.

use crate::cluster::entry::Side;
use crate::error::{ApiError, ApiResult, ServerError};
use crate::net::rate_limit::RateLimit;
use crate::store::{id_key, Store};
use flashsale_protocol::{BuyerRef, ErrorCode, UserId, MAX_BUYER_REF_LEN};
use governor::clock::{Clock, DefaultClock};
use governor::state::keyed::DefaultKeyedStateStore;
use governor::RateLimiter;
use quick_cache::sync::Cache;
use quick_cache::Equivalent;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Locks that serialise creations, picked by partner id: a creation reads
/// the partner's count and writes it back, so two of one partner must not
/// interleave. Creations are rare next to lookups (rate-limited per partner).
const CREATION_LOCKS: usize = 16;

/// Name of the tree, for corruption reports.
const TREE: &str = "partner_buyers";

/// (partner, buyer reference) → buyer, or `None` for a reference known not
/// to exist (a storm of requests for buyers never created, which intake
/// refuses before creating them, must not read the tree once each). The
/// references are the partners' choice; the cache hashes with a random seed.
type BuyerCache = Cache<(UserId, Box<str>), Option<UserId>>;

/// A cache key borrowed from a request: hashes and compares like the owned
/// key `(UserId, Box<str>)`, so a lookup allocates nothing.
#[derive(Hash)]
struct BuyerKey<'a>(UserId, &'a str);

impl Equivalent<(UserId, Box<str>)> for BuyerKey<'_> {
    fn equivalent(&self, key: &(UserId, Box<str>)) -> bool {
        self.0 == key.0 && self.1 == &*key.1
    }
}

/// New-reference buckets keyed by partner account.
type NewBuyerLimiter = RateLimiter<UserId, DefaultKeyedStateStore<UserId>, DefaultClock>;

/// Buyer references of every partner.
pub(crate) struct Partners {
    store: Store,
    /// Recently used references. Keys are chosen by partners. Bound:
    /// `Config::partner_buyer_cache` entries of at most
    /// [`MAX_BUYER_REF_LEN`] bytes each (plus quick_cache's ghost keys, a
    /// hash each); eviction: quick_cache's (S3-FIFO: a scan of one-off
    /// references does not push out the ones in use).
    cache: BuyerCache,
    /// Serialise creations of partners whose id picks the same lock.
    creating: Box<[Mutex<()>]>,
    /// References of all partners together (`Stats.partner_buyers`): the
    /// sum of the count records at start, plus each creation since.
    total: AtomicU64,
    /// `Config::new_buyers_per_partner`; `None`: unlimited. Bound: one
    /// bucket per partner account; eviction: [`Partners::forget_idle`].
    new_per_second: Option<NewBuyerLimiter>,
    /// `Config::max_buyers_per_partner`.
    max_per_partner: u64,
}

impl std::fmt::Debug for Partners {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Partners")
            .field("total", &self.total)
            .field("cached", &self.cache.len())
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

/// `BadRequest` unless `buyer` is 1 to [`MAX_BUYER_REF_LEN`] bytes without
/// control characters.
fn check_ref(buyer: &BuyerRef) -> ApiResult<()> {
    if buyer.0.is_empty()
        || buyer.0.len() > MAX_BUYER_REF_LEN
        || buyer.0.chars().any(char::is_control)
    {
        return Err(ApiError::bad_request(format!(
            "a buyer reference has 1 to {MAX_BUYER_REF_LEN} bytes and no control characters"
        )));
    }
    Ok(())
}

fn corrupt(reason: &str) -> ServerError {
    ServerError::Corrupt {
        tree: TREE,
        reason: reason.into(),
    }
}

/// A stored 8-byte big-endian number (a buyer id or a count).
fn stored_u64(raw: &[u8], what: &str) -> Result<u64, ServerError> {
    <[u8; 8]>::try_from(raw)
        .map(u64::from_be_bytes)
        .map_err(|_| corrupt(&format!("{what} is not 8 bytes")))
}

/// A stored buyer id.
fn buyer_id(raw: &[u8]) -> Result<UserId, ServerError> {
    stored_u64(raw, "buyer id").map(UserId)
}

/// The key of a mapping: the partner id, then the reference (never empty).
fn tree_key(partner: UserId, buyer: &BuyerRef) -> Vec<u8> {
    let mut key = id_key(partner.0).to_vec();
    key.extend_from_slice(buyer.0.as_bytes());
    key
}

/// The key of a partner's count record: the partner id alone.
fn count_key(partner: UserId) -> [u8; 8] {
    id_key(partner.0)
}

/// The partner a key of the tree belongs to.
fn partner_of(key: &[u8]) -> Result<UserId, ServerError> {
    key.get(..8)
        .ok_or_else(|| corrupt("key shorter than a partner id"))
        .and_then(|raw| stored_u64(raw, "partner id"))
        .map(UserId)
}

/// The count record of every partner with a reference, summed. Reads one
/// key per partner (a jump to the next partner's first key), so start-up
/// does not grow with the references stored. A partner without a count
/// record (a data dir written before the records existed) has its
/// references counted once and the record written.
fn load_total(tree: &sled::Tree) -> Result<u64, ServerError> {
    let mut total = 0u64;
    let mut from = [0u8; 8];
    while let Some(item) = tree.range(from..).next() {
        let (key, value) = item?;
        let partner = partner_of(&key)?;
        let count = if key.len() == 8 {
            stored_u64(&value, "count")?
        } else {
            count_and_record(tree, partner)?
        };
        total = total.saturating_add(count);
        match partner.0.checked_add(1) {
            Some(next) => from = id_key(next),
            None => break,
        }
    }
    Ok(total)
}

/// Counts `partner`'s references (once, for a data dir without count
/// records) and stores the count.
fn count_and_record(tree: &sled::Tree, partner: UserId) -> Result<u64, ServerError> {
    let mut count = 0u64;
    for item in tree.scan_prefix(count_key(partner)) {
        let (key, _) = item?;
        if key.len() > 8 {
            count += 1;
        }
    }
    tree.insert(count_key(partner), &count.to_be_bytes())?;
    tracing::info!(partner = partner.0, count, "partner's buyer count recorded");
    Ok(count)
}

impl Partners {
    /// The partners' buyers of `store`, caching up to `cache_entries`
    /// references; reads one count record per partner.
    ///
    /// # Errors
    /// The tree cannot be read, or holds a malformed key or value.
    pub(crate) fn new(
        store: Store,
        new_per_second: Option<RateLimit>,
        max_per_partner: u64,
        cache_entries: usize,
    ) -> Result<Self, ServerError> {
        let total = load_total(&store.partner_buyers)?;
        Ok(Self {
            store,
            cache: Cache::new(cache_entries),
            creating: (0..CREATION_LOCKS).map(|_| Mutex::new(())).collect(),
            total: AtomicU64::new(total),
            new_per_second: new_per_second.map(|limit| RateLimiter::keyed(limit.quota())),
            max_per_partner,
        })
    }

    /// Forgets the cached references and recounts them from the table: a
    /// standby that applied another leader's references and is about to lead.
    ///
    /// # Errors
    /// The tree cannot be read, or holds a malformed key or value.
    pub(crate) fn reload(&self) -> Result<(), ServerError> {
        self.cache.clear();
        self.total
            .store(load_total(&self.store.partner_buyers)?, Ordering::Relaxed);
        Ok(())
    }

    /// References of all partners together.
    pub(crate) fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// Forgets the new-reference buckets of partners that are full again.
    pub(crate) fn forget_idle(&self) {
        if let Some(limiter) = &self.new_per_second {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }

    /// The buyer account `partner` calls `buyer`, if the reference exists;
    /// creates nothing (an unknown reference is cached as unknown until a
    /// creation replaces it).
    ///
    /// # Errors
    /// `BadRequest` for an empty, too long or control-character reference;
    /// `Internal` when the tree cannot be read.
    pub(crate) fn lookup(&self, partner: UserId, buyer: &BuyerRef) -> ApiResult<Option<UserId>> {
        if let Some(known) = self.cache.get(&BuyerKey(partner, &buyer.0)) {
            return Ok(known);
        }
        check_ref(buyer)?;
        // Under the partner's creation lock, so a "not found" cached here
        // cannot overwrite a creation's entry made meanwhile.
        let _serial = self.creation_lock(partner);
        let stored = self
            .store
            .partner_buyers
            .get(tree_key(partner, buyer))
            .map_err(ServerError::from)?;
        let found = stored.map(|raw| buyer_id(&raw)).transpose()?;
        self.cache.insert((partner, buyer.0.as_str().into()), found);
        Ok(found)
    }

    /// Creates the buyer account `partner` calls `buyer` (or returns it, if
    /// another request created it meanwhile), within the partner's caps.
    /// Call it after [`Partners::lookup`] found none.
    ///
    /// # Errors
    /// `BadRequest` for an invalid reference; `Overloaded` (with the wait)
    /// over `new_buyers_per_partner`; `QuotaExceeded` at
    /// `max_buyers_per_partner`; `Internal` when the tree fails.
    pub(crate) fn create(&self, partner: UserId, buyer: &BuyerRef) -> ApiResult<UserId> {
        check_ref(buyer)?;
        let key = tree_key(partner, buyer);
        let tree = &self.store.partner_buyers;
        let id = {
            // Held across the read of the mapping and the count and the
            // batch that writes both: one creation of a partner at a time,
            // so a reference is created once and the count is exact.
            let _serial = self.creation_lock(partner);
            if let Some(raw) = tree.get(&key).map_err(ServerError::from)? {
                // Created by another request since the caller's lookup.
                let id = buyer_id(&raw)?;
                self.remember(partner, buyer, id);
                return Ok(id);
            }
            self.check_rate(partner)?;
            let count = match tree.get(count_key(partner)).map_err(ServerError::from)? {
                Some(raw) => stored_u64(&raw, "count")?,
                None => 0,
            };
            if count >= self.max_per_partner {
                return Err(self.quota_exceeded());
            }
            let id = self.store.new_user_id()?;
            // Two plain inserts, the count first: a crash between them
            // counts one reference too many (never lets the quota be
            // passed). Not a sled batch: the first batch of a process puts
            // every later sled write behind a global lock.
            self.store.side_insert(
                Side::PartnerBuyers,
                &count_key(partner),
                (count + 1).to_be_bytes().to_vec(),
            )?;
            self.store
                .side_insert(Side::PartnerBuyers, &key, id_key(id.0).to_vec())?;
            id
        };
        self.total.fetch_add(1, Ordering::Relaxed);
        self.remember(partner, buyer, id);
        Ok(id)
    }

    /// `Overloaded` (with the wait) when `partner` is over its rate of new
    /// references; takes a token otherwise.
    fn check_rate(&self, partner: UserId) -> ApiResult<()> {
        let Some(limiter) = &self.new_per_second else {
            return Ok(());
        };
        limiter.check_key(&partner).map_err(|not_until| {
            let wait = not_until.wait_time_from(limiter.clock().now());
            ApiError {
                message: format!(
                    "new buyer references are limited per partner; retry in {} ms",
                    wait.as_millis().max(1)
                ),
                ..ApiError::rate_limited(wait)
            }
        })
    }

    fn quota_exceeded(&self) -> ApiError {
        ApiError::new(
            ErrorCode::QuotaExceeded,
            format!(
                "this partner has {} buyer references, the most allowed (max_buyers_per_partner); \
                 reuse existing references",
                self.max_per_partner
            ),
        )
    }

    /// The creation lock of `partner`.
    fn creation_lock(&self, partner: UserId) -> std::sync::MutexGuard<'_, ()> {
        let index = usize::try_from(partner.0 % CREATION_LOCKS as u64).unwrap_or(0);
        // A poisoned lock guards no data: the tree holds the state.
        self.creating[index]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn remember(&self, partner: UserId, buyer: &BuyerRef, id: UserId) {
        self.cache
            .insert((partner, buyer.0.as_str().into()), Some(id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    fn partners(dir: &tempfile::TempDir, max: u64, cache: usize) -> Partners {
        let store = Store::open(dir.path()).expect("data dir");
        Partners::new(store, None, max, cache).expect("partners")
    }

    #[test]
    fn a_borrowed_key_hashes_and_compares_like_the_owned_key() {
        // Otherwise every lookup misses the cache and goes to disk.
        let hasher = std::hash::RandomState::new();
        let owned: (UserId, Box<str>) = (UserId(7), "buyer-42".into());
        let borrowed = BuyerKey(UserId(7), "buyer-42");
        assert_eq!(hasher.hash_one(&borrowed), hasher.hash_one(&owned));
        assert!(borrowed.equivalent(&owned));
        assert!(!BuyerKey(UserId(8), "buyer-42").equivalent(&owned));
        assert!(!BuyerKey(UserId(7), "buyer-43").equivalent(&owned));
        let cache = BuyerCache::new(4);
        cache.insert(owned, Some(UserId(99)));
        assert_eq!(cache.get(&borrowed), Some(Some(UserId(99))));
    }

    #[test]
    fn a_creation_at_the_cap_of_a_reference_made_meanwhile_returns_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let partners = partners(&dir, 1, 16);
        let (partner, buyer) = (UserId(7), BuyerRef("buyer-1".into()));
        // Two requests' lookups found none; the first creation takes the
        // partner's only slot.
        let made = partners.create(partner, &buyer).expect("first creation");
        assert_eq!(
            partners.create(partner, &buyer).expect("second creation"),
            made,
            "the second creation was refused although the reference exists"
        );
        assert_eq!(partners.total(), 1);
        let other = partners.create(partner, &BuyerRef("buyer-2".into()));
        assert_eq!(
            other.map_err(|e| e.code),
            Err(ErrorCode::QuotaExceeded),
            "a new reference over the cap was not refused"
        );
    }

    #[test]
    fn references_beyond_the_cache_resolve_from_the_tree_and_counts_survive_a_reopen() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut made = Vec::new();
        {
            let partners = partners(&dir, 1_000, 4);
            for n in 0..200 {
                let buyer = BuyerRef(format!("b{n}"));
                made.push((
                    buyer.clone(),
                    partners.create(UserId(3), &buyer).expect("create"),
                ));
            }
            partners
                .create(UserId(9), &BuyerRef("x".into()))
                .expect("other partner");
            assert!(
                partners.cache.len() <= 16,
                "{} cached",
                partners.cache.len()
            );
            for (buyer, id) in &made {
                assert_eq!(
                    partners.lookup(UserId(3), buyer).expect("lookup"),
                    Some(*id)
                );
            }
            assert_eq!(
                partners
                    .lookup(UserId(3), &BuyerRef("nobody".into()))
                    .expect("lookup"),
                None
            );
            assert_eq!(partners.total(), 201);
        }
        let partners = partners(&dir, 200, 4);
        assert_eq!(partners.total(), 201);
        assert_eq!(
            partners
                .create(UserId(3), &BuyerRef("one-more".into()))
                .map_err(|e| e.code),
            Err(ErrorCode::QuotaExceeded)
        );
        for (buyer, id) in &made {
            assert_eq!(
                partners.lookup(UserId(3), buyer).expect("lookup"),
                Some(*id)
            );
        }
    }

    #[test]
    fn a_data_dir_without_count_records_is_counted_once_at_open() {
        let dir = tempfile::tempdir().expect("temp dir");
        {
            // References as an older build stored them: no count records.
            let store = Store::open(dir.path()).expect("data dir");
            for (partner, n) in [(2u64, 3), (5, 2), (u64::MAX, 1)] {
                for i in 0..n {
                    let buyer = BuyerRef(format!("r{i}"));
                    store
                        .partner_buyers
                        .insert(tree_key(UserId(partner), &buyer), &id_key(100 + i))
                        .expect("insert");
                }
            }
        }
        let partners = partners(&dir, 3, 4);
        assert_eq!(partners.total(), 6);
        let tree = &partners.store.partner_buyers;
        let count = tree
            .get(count_key(UserId(2)))
            .expect("read")
            .expect("recorded");
        assert_eq!(stored_u64(&count, "count").expect("count"), 3);
        assert_eq!(
            partners
                .create(UserId(2), &BuyerRef("r9".into()))
                .map_err(|e| e.code),
            Err(ErrorCode::QuotaExceeded)
        );
        partners
            .create(UserId(5), &BuyerRef("r9".into()))
            .expect("within the cap");
        assert_eq!(partners.total(), 7);
        assert_eq!(
            partners
                .lookup(UserId(u64::MAX), &BuyerRef("r0".into()))
                .expect("lookup"),
            Some(UserId(100))
        );
    }

    #[test]
    fn concurrent_creations_of_one_reference_make_one_buyer() {
        let dir = tempfile::tempdir().expect("temp dir");
        let partners = partners(&dir, 1_000, 0);
        let buyer = BuyerRef("shared".into());
        let ids: Vec<UserId> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|_| scope.spawn(|| partners.create(UserId(4), &buyer).expect("create")))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("creator thread"))
                .collect()
        });
        assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
        assert_eq!(partners.total(), 1);
    }
}
