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
//! The mapping lives in the `partner_buyers` tree and, whole, in memory
//! (loaded at start), so looking up a reference never reads the disk. A
//! new mapping is written before any order or cart line of that buyer, so
//! the next flush (the journal's, or the syncer's for a cart) makes it
//! durable first.

use crate::error::{ApiError, ApiResult, ServerError};
use crate::net::rate_limit::RateLimit;
use crate::store::{id_key, Store};
use flashsale_protocol::{BuyerRef, ErrorCode, UserId, MAX_BUYER_REF_LEN};
use governor::clock::{Clock, DefaultClock};
use governor::state::keyed::DefaultKeyedStateStore;
use governor::RateLimiter;
use hashbrown::{Equivalent, HashMap};
use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};

/// Lock shards of the cache: every pay of a partner's buyer reads it, and
/// one lock for all would move its cache line between cores on every read.
const CACHE_SHARDS: usize = 32;

/// (partner, buyer reference) → buyer. The references are the partners'
/// choice: SipHash with random keys, so none can aim collisions at a shard.
type BuyerMap = HashMap<(UserId, String), UserId, RandomState>;

/// A cache key borrowed from a request: hashes and compares like the owned
/// key `(UserId, String)`, so a lookup allocates nothing.
#[derive(Hash)]
struct BuyerKey<'a>(UserId, &'a str);

impl Equivalent<(UserId, String)> for BuyerKey<'_> {
    fn equivalent(&self, key: &(UserId, String)) -> bool {
        self.0 == key.0 && self.1 == key.1
    }
}

/// One shard of the cache, alone on its cache line (a reader's lock count
/// must not share a line with its neighbours').
#[derive(Debug, Default)]
#[repr(align(64))]
struct CacheShard(RwLock<BuyerMap>);

/// New-reference buckets keyed by partner account.
type NewBuyerLimiter = RateLimiter<UserId, DefaultKeyedStateStore<UserId>, DefaultClock>;

/// Buyer references of every partner.
pub(crate) struct Partners {
    store: Store,
    /// Every stored reference, in memory, sharded by the key's hash: loaded
    /// at start, and each creation adds its own, so a miss means "none"
    /// without a disk read. Keys are chosen by partners. Bound: every stored reference, at most
    /// `max_buyers_per_partner` per partner account (accounts are made by
    /// admins); eviction: none, the cap bounds it.
    cache: Box<[CacheShard]>,
    hasher: RandomState,
    /// References each partner has, rebuilt at start from the tree. Keyed
    /// by partner account (made by admins): one entry per partner with a
    /// buyer; never evicted.
    counts: Mutex<std::collections::HashMap<UserId, u64>>,
    /// References of all partners together (`Stats.partner_buyers`).
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

/// A stored buyer id.
fn buyer_id(raw: &[u8]) -> ApiResult<UserId> {
    let raw = <[u8; 8]>::try_from(raw).map_err(|_| ServerError::Corrupt {
        tree: "partner_buyers",
        reason: "buyer id is not 8 bytes".into(),
    })?;
    Ok(UserId(u64::from_be_bytes(raw)))
}

fn tree_key(partner: UserId, buyer: &BuyerRef) -> Vec<u8> {
    let mut key = id_key(partner.0).to_vec();
    key.extend_from_slice(buyer.0.as_bytes());
    key
}

impl Partners {
    /// The partners' buyers of `store`, with the per-partner counts rebuilt
    /// from the tree (one pass over its keys).
    ///
    /// # Errors
    /// The tree cannot be read.
    pub(crate) fn new(
        store: Store,
        new_per_second: Option<RateLimit>,
        max_per_partner: u64,
    ) -> Result<Self, ServerError> {
        let mut counts = std::collections::HashMap::new();
        let mut total = 0u64;
        let mut known = Vec::new();
        for item in store.partner_buyers.iter() {
            let (key, value) = item?;
            let Some(partner) = key.get(..8).and_then(|raw| <[u8; 8]>::try_from(raw).ok()) else {
                return Err(ServerError::Corrupt {
                    tree: "partner_buyers",
                    reason: "key shorter than a partner id".into(),
                });
            };
            let partner = UserId(u64::from_be_bytes(partner));
            let buyer =
                String::from_utf8(key.get(8..).unwrap_or_default().to_vec()).map_err(|_| {
                    ServerError::Corrupt {
                        tree: "partner_buyers",
                        reason: "buyer reference is not UTF-8".into(),
                    }
                })?;
            let id = buyer_id(&value).map_err(|e| ServerError::Corrupt {
                tree: "partner_buyers",
                reason: e.message,
            })?;
            known.push((partner, BuyerRef(buyer), id));
            *counts.entry(partner).or_insert(0u64) += 1;
            total += 1;
        }
        let partners = Self {
            store,
            cache: (0..CACHE_SHARDS).map(|_| CacheShard::default()).collect(),
            hasher: RandomState::new(),
            counts: Mutex::new(counts),
            total: AtomicU64::new(total),
            new_per_second: new_per_second.map(|limit| RateLimiter::keyed(limit.quota())),
            max_per_partner,
        };
        // The cache holds every reference: a miss means "none", with no
        // disk read (a sold-out storm of unknown references makes none).
        for (partner, buyer, id) in known {
            partners.remember(partner, &buyer, id);
        }
        Ok(partners)
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
    /// creates nothing.
    ///
    /// # Errors
    /// `BadRequest` for an empty, too long or control-character reference.
    pub(crate) fn lookup(&self, partner: UserId, buyer: &BuyerRef) -> ApiResult<Option<UserId>> {
        let key = BuyerKey(partner, &buyer.0);
        let cached = self
            .shard(&key)
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .copied();
        if let Some(id) = cached {
            return Ok(Some(id));
        }
        // Complete: loaded at start, and every creation is remembered.
        check_ref(buyer)?;
        Ok(None)
    }

    /// Creates the buyer account `partner` calls `buyer` (or returns it, if
    /// another request created it meanwhile), within the partner's caps.
    /// Call it after [`Partners::lookup`] found none.
    ///
    /// # Errors
    /// `BadRequest` for an invalid reference; `Overloaded` (with the wait)
    /// over `new_buyers_per_partner`; `QuotaExceeded` at
    /// `max_buyers_per_partner`.
    pub(crate) fn create(&self, partner: UserId, buyer: &BuyerRef) -> ApiResult<UserId> {
        // The caller's `lookup` found none; a request that created it since
        // is caught by the compare-and-swap below.
        check_ref(buyer)?;
        if let Some(limiter) = &self.new_per_second {
            limiter.check_key(&partner).map_err(|not_until| {
                let wait = not_until.wait_time_from(limiter.clock().now());
                ApiError {
                    message: format!(
                        "new buyer references are limited per partner; retry in {} ms",
                        wait.as_millis().max(1)
                    ),
                    ..ApiError::rate_limited(wait)
                }
            })?;
        }
        if let Err(full) = self.reserve(partner) {
            // A concurrent request for the same reference may have taken
            // the last slot since the caller's lookup: then the reference
            // exists, and is the answer.
            // Read from the tree: the other request may not have added it
            // to the cache yet.
            let stored = self
                .store
                .partner_buyers
                .get(tree_key(partner, buyer))
                .map_err(ServerError::from)?;
            return match stored {
                Some(raw) => {
                    let id = buyer_id(&raw)?;
                    self.remember(partner, buyer, id);
                    Ok(id)
                }
                None => Err(full),
            };
        }
        let created = self.insert(partner, buyer);
        if !matches!(created, Ok((_, true))) {
            self.release(partner);
        }
        let (id, _) = created?;
        self.remember(partner, buyer, id);
        Ok(id)
    }

    /// Counts one more reference of `partner`, unless it is at its cap.
    fn reserve(&self, partner: UserId) -> ApiResult<()> {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let count = counts.entry(partner).or_insert(0);
        if *count >= self.max_per_partner {
            return Err(ApiError::new(
                ErrorCode::QuotaExceeded,
                format!(
                    "this partner has {} buyer references, the most allowed (max_buyers_per_partner); \
                     reuse existing references",
                    self.max_per_partner
                ),
            ));
        }
        *count += 1;
        self.total.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Takes back a reservation that created nothing.
    fn release(&self, partner: UserId) {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = counts.get_mut(&partner) {
            *count = count.saturating_sub(1);
            self.total.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Writes the mapping unless it exists: the id, and whether it is new.
    fn insert(&self, partner: UserId, buyer: &BuyerRef) -> ApiResult<(UserId, bool)> {
        let fresh = UserId(self.store.db.generate_id().map_err(ServerError::from)? + 1);
        let swapped = self
            .store
            .partner_buyers
            .compare_and_swap(
                tree_key(partner, buyer),
                None::<&[u8]>,
                Some(&id_key(fresh.0)),
            )
            .map_err(ServerError::from)?;
        match swapped {
            Ok(()) => Ok((fresh, true)),
            // Another connection created it first.
            Err(existing) => Ok((
                buyer_id(existing.current.as_deref().unwrap_or_default())?,
                false,
            )),
        }
    }

    /// The cache shard of `key`.
    fn shard(&self, key: &BuyerKey<'_>) -> &RwLock<BuyerMap> {
        // The top bits pick the shard; the map inside uses the low ones.
        let hash = self.hasher.hash_one(key);
        let index = usize::try_from(hash >> 58).unwrap_or(0) % self.cache.len();
        &self.cache[index].0
    }

    fn remember(&self, partner: UserId, buyer: &BuyerRef, id: UserId) {
        self.shard(&BuyerKey(partner, &buyer.0))
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert((partner, buyer.0.clone()), id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_borrowed_key_hashes_and_compares_like_the_owned_key() {
        // Otherwise every lookup misses the cache and goes to disk.
        let hasher = RandomState::new();
        let owned = (UserId(7), "buyer-42".to_owned());
        let borrowed = BuyerKey(UserId(7), "buyer-42");
        assert_eq!(hasher.hash_one(&borrowed), hasher.hash_one(&owned));
        assert!(borrowed.equivalent(&owned));
        assert!(!BuyerKey(UserId(8), "buyer-42").equivalent(&owned));
        assert!(!BuyerKey(UserId(7), "buyer-43").equivalent(&owned));
        let mut map = BuyerMap::default();
        map.insert(owned, UserId(99));
        assert_eq!(map.get(&borrowed), Some(&UserId(99)));
    }

    #[test]
    fn a_creation_at_the_cap_of_a_reference_made_meanwhile_returns_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(dir.path()).expect("data dir");
        let partners = Partners::new(store, None, 1).expect("partners");
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
}
