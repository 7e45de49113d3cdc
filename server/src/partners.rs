//! Partners' buyers: a partner names a buyer by its own reference; the
//! server maps (partner, reference) to a buyer account, created on first use.
//!
//! The mapping lives in the `partner_buyers` tree and in a memory cache. A
//! new mapping is written before any order of that buyer can be journaled,
//! so the journal's flush makes it durable first.

use crate::error::{ApiError, ApiResult, ServerError};
use crate::store::{id_key, Store};
use flashsale_protocol::{BuyerRef, UserId, MAX_BUYER_REF_LEN};
use std::collections::HashMap;
use std::sync::RwLock;

/// Buyer references of every partner.
#[derive(Debug)]
pub struct Partners {
    store: Store,
    /// partner → buyer reference → buyer; looked up without allocating.
    cache: RwLock<HashMap<UserId, HashMap<String, UserId>>>,
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
    pub fn new(store: Store) -> Self {
        Self {
            store,
            cache: RwLock::new(HashMap::new()),
        }
    }

    /// The buyer account `partner` calls `buyer`, created on first use.
    ///
    /// # Errors
    /// `BadRequest` for an empty, too long or control-character reference.
    pub fn resolve(&self, partner: UserId, buyer: &BuyerRef) -> ApiResult<UserId> {
        let cached = self
            .cache
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&partner)
            .and_then(|buyers| buyers.get(&buyer.0).copied());
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

    fn remember(&self, partner: UserId, buyer: &BuyerRef, id: UserId) {
        self.cache
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(partner)
            .or_default()
            .insert(buyer.0.clone(), id);
    }
}
