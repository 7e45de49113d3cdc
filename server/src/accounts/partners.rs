//! Partners' buyers: a partner names a buyer by its own reference; the
//! server maps (partner, reference) to a buyer account, created on first use.
//!
//! The mapping lives in the `partner_buyers` tree and in a memory cache. A
//! new mapping is written before any order of that buyer can be journaled,
//! so the journal's flush makes it durable first.

use crate::error::{ApiError, ApiResult, ServerError};
use crate::store::{id_key, Store};
use flashsale_protocol::{BuyerRef, UserId, MAX_BUYER_REF_LEN};
use hashbrown::{Equivalent, HashMap};
use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::RwLock;

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

/// Buyer references of every partner.
#[derive(Debug)]
pub(crate) struct Partners {
    store: Store,
    /// The mapping's memory cache, sharded by the key's hash.
    cache: Box<[CacheShard]>,
    hasher: RandomState,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

fn tree_key(partner: UserId, buyer: &BuyerRef) -> Vec<u8> {
    let mut key = id_key(partner.0).to_vec();
    key.extend_from_slice(buyer.0.as_bytes());
    key
}

impl Partners {
    /// The partners' buyers of `store`.
    pub(crate) fn new(store: Store) -> Self {
        Self {
            store,
            cache: (0..CACHE_SHARDS).map(|_| CacheShard::default()).collect(),
            hasher: RandomState::new(),
        }
    }

    /// The buyer account `partner` calls `buyer`, created on first use.
    ///
    /// # Errors
    /// `BadRequest` for an empty, too long or control-character reference.
    pub(crate) fn resolve(&self, partner: UserId, buyer: &BuyerRef) -> ApiResult<UserId> {
        let key = BuyerKey(partner, &buyer.0);
        let cached = self
            .shard(&key)
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .copied();
        if let Some(id) = cached {
            return Ok(id);
        }
        if buyer.0.is_empty()
            || buyer.0.len() > MAX_BUYER_REF_LEN
            || buyer.0.chars().any(char::is_control)
        {
            return Err(ApiError::bad_request(format!(
                "a buyer reference has 1 to {MAX_BUYER_REF_LEN} bytes and no control characters"
            )));
        }
        let key = tree_key(partner, buyer);
        let stored = self
            .store
            .partner_buyers
            .get(&key)
            .map_err(ServerError::from)?;
        if let Some(id) = stored
            .as_deref()
            .and_then(|raw| <[u8; 8]>::try_from(raw).ok())
        {
            let id = UserId(u64::from_be_bytes(id));
            self.remember(partner, buyer, id);
            return Ok(id);
        }
        let fresh = UserId(self.store.db.generate_id().map_err(ServerError::from)? + 1);
        let id = match self
            .store
            .partner_buyers
            .compare_and_swap(&key, None::<&[u8]>, Some(&id_key(fresh.0)))
            .map_err(ServerError::from)?
        {
            Ok(()) => fresh,
            // Another connection created it first (or it existed before a restart).
            Err(existing) => existing
                .current
                .as_deref()
                .and_then(|raw| <[u8; 8]>::try_from(raw).ok())
                .map(|raw| UserId(u64::from_be_bytes(raw)))
                .ok_or(ServerError::Corrupt {
                    tree: "partner_buyers",
                    reason: "buyer id is not 8 bytes".into(),
                })?,
        };
        self.remember(partner, buyer, id);
        Ok(id)
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
}
