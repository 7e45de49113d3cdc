//! The leader lease: one key in a replicated JetStream KV bucket, renewed
//! by its holder (a compare-and-set on its revision) every third of the TTL.
//!
//! A standby takes the lease over when it has seen the same revision for a
//! whole TTL *by its own clock*, with a compare-and-set on that revision
//! (two standbys cannot both win), or creates it when there is none (a
//! clean leader deletes it on the way out). A standby that cannot read the
//! bucket forgets what it saw: after a NATS outage, the leader gets a whole
//! TTL to renew before anyone takes over, so losing a NATS node does not
//! also cost a flashsale failover. (Entries do not expire by `max_age`:
//! an outage longer than the TTL would delete a live leader's lease.)
//!
//! The lease only decides which node *tries* to lead; safety comes from the
//! stream (see [`crate::cluster::publisher`]): a node that still thinks it
//! leads after losing the lease is refused by the stream at its next
//! publish. The holder steps down when a renewal finds another revision.

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
    /// Unique per process: tells a renewal whose answer was lost (the
    /// value is ours) from a lease another node took.
    #[serde(default)]
    pub(crate) nonce: String,
}

/// Why the lease could not be read, taken or renewed.
#[derive(Debug, thiserror::Error)]
#[error("leader lease: {0}")]
pub(crate) struct LeaseError(String);

impl LeaseError {
    /// NATS did not answer in time.
    pub(crate) fn timed_out() -> Self {
        Self("no answer in time".into())
    }
}

/// Why a renewal failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RenewError {
    /// Another node holds the lease now.
    #[error("another node took the leader lease")]
    Lost,
    /// NATS did not answer; the lease may still be ours.
    #[error("leader lease not renewed: {0}")]
    NoAnswer(String),
}

/// A held lease.
pub(crate) struct Lease {
    bucket: kv::Store,
    revision: u64,
    value: bytes::Bytes,
}

/// What a standby has seen of the lease: a revision and since when (its
/// own clock).
#[derive(Debug, Default)]
pub(crate) struct Watch {
    seen: Option<(u64, std::time::Instant)>,
}

/// The outcome of looking at the lease.
pub(crate) enum Look {
    /// Another node holds it (who, when the value says).
    Held(Option<Holder>),
    /// This node holds it now.
    Won(Box<Lease>),
}

impl Watch {
    /// Forgets what was seen (a look that did not finish): the holder gets
    /// a whole TTL again from the next look.
    pub(crate) fn forget(&mut self) {
        self.seen = None;
    }

    /// Looks at the lease; takes it when there is none, or when its holder
    /// has not renewed it for `ttl` as this node has watched.
    ///
    /// # Errors
    /// NATS did not answer (what was seen is forgotten).
    pub(crate) async fn look(
        &mut self,
        bucket: &kv::Store,
        me: &Holder,
        ttl: std::time::Duration,
    ) -> Result<Look, LeaseError> {
        let value: bytes::Bytes = serde_json::to_vec(me)
            .map_err(|e| LeaseError(e.to_string()))?
            .into();
        let entry = match bucket.entry(KEY).await {
            Ok(entry) => entry,
            Err(e) => {
                self.seen = None;
                return Err(LeaseError(e.to_string()));
            }
        };
        let Some(entry) = entry.filter(|e| e.operation == kv::Operation::Put) else {
            self.seen = None;
            return match bucket.create(KEY, value.clone()).await {
                Ok(revision) => Ok(Look::Won(Box::new(Lease {
                    bucket: bucket.clone(),
                    revision,
                    value,
                }))),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(Look::Held(None)),
                Err(e) => Err(LeaseError(e.to_string())),
            };
        };
        let holder = serde_json::from_slice(&entry.value).ok();
        match self.seen {
            Some((revision, since)) if revision == entry.revision && since.elapsed() >= ttl => {
                self.seen = None;
                match bucket.update(KEY, value.clone(), entry.revision).await {
                    Ok(revision) => Ok(Look::Won(Box::new(Lease {
                        bucket: bucket.clone(),
                        revision,
                        value,
                    }))),
                    Err(_) => Ok(Look::Held(holder)),
                }
            }
            Some((revision, _)) if revision == entry.revision => Ok(Look::Held(holder)),
            _ => {
                self.seen = Some((entry.revision, std::time::Instant::now()));
                Ok(Look::Held(holder))
            }
        }
    }
}

impl Lease {
    /// Renews the lease for another TTL.
    ///
    /// # Errors
    /// [`RenewError::Lost`] when another node took it (or it expired),
    /// [`RenewError::NoAnswer`] when NATS did not answer.
    pub(crate) async fn renew(&mut self) -> Result<(), RenewError> {
        match self
            .bucket
            .update(KEY, self.value.clone(), self.revision)
            .await
        {
            Ok(revision) => {
                self.revision = revision;
                Ok(())
            }
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                // Perhaps our previous renewal was stored and only its
                // answer lost: then the value is still ours.
                match self.bucket.entry(KEY).await {
                    Ok(Some(entry))
                        if entry.operation == kv::Operation::Put && entry.value == self.value =>
                    {
                        self.revision = entry.revision;
                        Ok(())
                    }
                    Ok(_) => Err(RenewError::Lost),
                    Err(e) => Err(RenewError::NoAnswer(e.to_string())),
                }
            }
            Err(e) => Err(RenewError::NoAnswer(e.to_string())),
        }
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

/// A node's report of itself, under `node.<id>` in the lease bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct NodeReport {
    /// Its `--node-id`.
    pub(crate) node: String,
    /// Where clients reach it.
    pub(crate) advertise: String,
    /// True while it leads.
    pub(crate) leader: bool,
    /// The last stream sequence it applied or had acknowledged.
    pub(crate) applied: u64,
    /// When it reported, ms since the epoch (its clock).
    pub(crate) at_ms: u64,
}

/// Reports older than this are not listed.
const REPORT_MAX_AGE_MS: u64 = 60_000;

/// Most node reports read (a cluster has a handful of nodes; a bound
/// against a bucket someone filled).
const MAX_REPORTS: usize = 64;

fn report_key(node: &str) -> String {
    format!("node.{node}")
}

/// Writes this node's report.
///
/// # Errors
/// NATS did not answer.
pub(crate) async fn report(bucket: &kv::Store, me: &NodeReport) -> Result<(), LeaseError> {
    let value = serde_json::to_vec(me).map_err(|e| LeaseError(e.to_string()))?;
    bucket
        .put(report_key(&me.node), value.into())
        .await
        .map_err(|e| LeaseError(e.to_string()))?;
    Ok(())
}

/// Every node's recent report, by name.
///
/// # Errors
/// NATS did not answer.
pub(crate) async fn reports(
    bucket: &kv::Store,
    now_ms: u64,
) -> Result<Vec<NodeReport>, LeaseError> {
    use futures::StreamExt;
    let mut keys = bucket.keys().await.map_err(|e| LeaseError(e.to_string()))?;
    let mut out = Vec::new();
    while let Some(key) = keys.next().await {
        let key = key.map_err(|e| LeaseError(e.to_string()))?;
        if !key.starts_with("node.") {
            continue;
        }
        if let Some(raw) = bucket
            .get(&key)
            .await
            .map_err(|e| LeaseError(e.to_string()))?
        {
            if let Ok(report) = serde_json::from_slice::<NodeReport>(&raw) {
                if now_ms.saturating_sub(report.at_ms) <= REPORT_MAX_AGE_MS {
                    out.push(report);
                }
            }
        }
        if out.len() >= MAX_REPORTS {
            break;
        }
    }
    out.sort_by(|a, b| a.node.cmp(&b.node));
    Ok(out)
}
