//! The leader lease: one key in a replicated JetStream KV bucket whose
//! entries expire (`max_age`), so a leader that stops renewing loses it.
//!
//! The lease only decides which node *tries* to lead; safety comes from the
//! stream (see [`crate::cluster::publisher`]): a node that still thinks it
//! leads after losing the lease is refused by the stream at its next
//! publish. A candidate takes the lease with a create (refused while a live
//! entry exists); the holder renews it by revision every third of the TTL
//! and steps down the moment a renewal fails.

use async_nats::jetstream::kv;
use serde::{Deserialize, Serialize};

/// The key of the lease in the bucket.
const KEY: &str = "leader";

/// Who holds the lease, as stored in the bucket (JSON, so `nats kv get`
/// shows it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Holder {
    /// The holder's `--node-id`.
    pub(crate) node: String,
    /// Where clients reach it.
    pub(crate) advertise: String,
}

/// Why the lease could not be read, taken or renewed.
#[derive(Debug, thiserror::Error)]
#[error("leader lease: {0}")]
pub(crate) struct LeaseError(String);

/// A held lease.
pub(crate) struct Lease {
    bucket: kv::Store,
    revision: u64,
    value: bytes::Bytes,
}

/// The current holder, if the lease is live.
///
/// # Errors
/// NATS did not answer.
pub(crate) async fn holder(bucket: &kv::Store) -> Result<Option<Holder>, LeaseError> {
    let entry = bucket
        .entry(KEY)
        .await
        .map_err(|e| LeaseError(e.to_string()))?;
    Ok(entry
        .filter(|e| e.operation == kv::Operation::Put)
        .and_then(|e| serde_json::from_slice(&e.value).ok()))
}

/// Takes the lease for `me` if no live holder has it; `None` when another does.
///
/// # Errors
/// NATS did not answer.
pub(crate) async fn try_take(bucket: &kv::Store, me: &Holder) -> Result<Option<Lease>, LeaseError> {
    let value: bytes::Bytes = serde_json::to_vec(me)
        .map_err(|e| LeaseError(e.to_string()))?
        .into();
    match bucket.create(KEY, value.clone()).await {
        Ok(revision) => Ok(Some(Lease {
            bucket: bucket.clone(),
            revision,
            value,
        })),
        Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(None),
        Err(e) => Err(LeaseError(e.to_string())),
    }
}

impl Lease {
    /// Renews the lease for another TTL.
    ///
    /// # Errors
    /// The lease is lost (another node took it, or NATS did not answer in time).
    pub(crate) async fn renew(&mut self) -> Result<(), LeaseError> {
        self.revision = self
            .bucket
            .update(KEY, self.value.clone(), self.revision)
            .await
            .map_err(|e| LeaseError(e.to_string()))?;
        Ok(())
    }

    /// Gives the lease up (a clean shutdown), so a standby need not wait
    /// for it to expire.
    pub(crate) async fn release(self) {
        if let Err(e) = self
            .bucket
            .delete_expect_revision(KEY, Some(self.revision))
            .await
        {
            tracing::warn!(error = %e, "could not release the leader lease; it expires by itself");
        }
    }
}
