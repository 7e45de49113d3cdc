//! Cluster mode: the sale replicated on NATS JetStream, one leader, hot
//! standbys, automatic failover.
//!
//! * [`entry`]: what one stream message carries.
//! * [`outbox`]: the leader's changes, in order, until the stream has them.
//! * [`publisher`]: sends the outbox with fencing (expected last sequence).
//! * [`lease`]: the leader lease in a JetStream KV bucket.
//! * [`applier`]: a standby applying the stream to its data dir and memory.
//! * [`snapshot`]: snapshots in the object store, the stream trimmed
//!   behind them, a node restored from one.
//! * [`node`]: a node's life: follow, win the lease, catch up, lead.

pub(crate) mod applier;
pub(crate) mod entry;
pub(crate) mod lease;
pub(crate) mod node;
pub(crate) mod outbox;
pub(crate) mod publisher;
pub(crate) mod snapshot;

use crate::config::ClusterConfig;
use crate::error::ApiError;
use flashsale_protocol::{ClusterNode, ClusterReport, ErrorCode, LEADER_HINT};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::watch;

/// What a node is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Role {
    /// Applying the stream; the leader's address when known.
    Standby {
        /// Where clients reach the leader.
        leader: Option<String>,
    },
    /// Deciding and publishing.
    Leader,
}

/// A node's cluster state, shared by its tasks.
#[derive(Debug)]
pub(crate) struct ClusterState {
    /// The flags it was started with.
    pub(crate) config: ClusterConfig,
    /// The leader's changes on their way to the stream.
    pub(crate) outbox: Arc<Outbox>,
    role: watch::Sender<Role>,
    /// The last stream sequence this node applied (standby) or had
    /// acknowledged (leader).
    applied: watch::Sender<u64>,
    /// The stream's last sequence when this node last looked.
    stream_last: AtomicU64,
    /// The stream's first sequence when this node last looked.
    stream_first: AtomicU64,
    /// The sequence the stored snapshot covers when this node last looked
    /// (0: none).
    snapshot: AtomicU64,
    /// Every node's last report (kept by the leader).
    reports: std::sync::Mutex<Vec<lease::NodeReport>>,
}

use outbox::Outbox;

impl ClusterState {
    /// A standby that knows no leader yet.
    pub(crate) fn new(config: ClusterConfig) -> Self {
        Self {
            config,
            outbox: Arc::new(Outbox::default()),
            role: watch::Sender::new(Role::Standby { leader: None }),
            applied: watch::Sender::new(0),
            stream_last: AtomicU64::new(0),
            stream_first: AtomicU64::new(1),
            snapshot: AtomicU64::new(0),
            reports: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// What the node is doing now.
    pub(crate) fn role(&self) -> Role {
        self.role.borrow().clone()
    }

    /// True while this node leads.
    pub(crate) fn is_leader(&self) -> bool {
        *self.role.borrow() == Role::Leader
    }

    pub(crate) fn set_role(&self, role: Role) {
        self.role.send_if_modified(|current| {
            let changed = *current != role;
            *current = role;
            changed
        });
    }

    /// Completes once this node leads.
    pub(crate) async fn leading(&self) {
        let mut rx = self.role.subscribe();
        let _ = rx.wait_for(|role| *role == Role::Leader).await;
    }

    /// The refusal a standby answers `Hello` with.
    pub(crate) fn not_leader(&self) -> ApiError {
        match self.role() {
            Role::Standby {
                leader: Some(leader),
            } => ApiError::new(
                ErrorCode::NotLeader,
                format!(
                    "node {} is a standby; connect to the leader: {LEADER_HINT}{leader}",
                    self.config.node_id
                ),
            ),
            _ => ApiError::new(
                ErrorCode::NotLeader,
                format!(
                    "node {} is a standby and no leader is known yet; retry shortly",
                    self.config.node_id
                ),
            ),
        }
    }

    /// Records how far this node is in the stream.
    pub(crate) fn set_applied(&self, seq: u64) {
        self.applied.send_replace(seq);
    }

    /// How far this node is in the stream.
    pub(crate) fn applied(&self) -> u64 {
        *self.applied.borrow()
    }

    /// Completes once this node has applied the stream through `seq`.
    pub(crate) async fn applied_through(&self, seq: u64) {
        let mut rx = self.applied.subscribe();
        let _ = rx.wait_for(|applied| *applied >= seq).await;
    }

    /// Records the stream's last sequence as last seen.
    pub(crate) fn set_stream_last(&self, seq: u64) {
        self.stream_last.fetch_max(seq, Ordering::Relaxed);
    }

    /// The stream's last sequence as last seen.
    pub(crate) fn stream_last(&self) -> u64 {
        self.stream_last.load(Ordering::Relaxed)
    }

    /// Records the stream's first sequence as last seen.
    pub(crate) fn set_stream_first(&self, seq: u64) {
        self.stream_first.store(seq, Ordering::Relaxed);
    }

    /// The stream's first sequence as last seen.
    pub(crate) fn stream_first(&self) -> u64 {
        self.stream_first.load(Ordering::Relaxed)
    }

    /// Records the sequence the newest stored snapshot covers.
    pub(crate) fn set_snapshot(&self, seq: u64) {
        self.snapshot.store(seq, Ordering::Relaxed);
    }

    /// The sequence the stored snapshot covers, as last seen.
    pub(crate) fn snapshot(&self) -> Option<u64> {
        Some(self.snapshot.load(Ordering::Relaxed)).filter(|seq| *seq > 0)
    }

    /// Keeps the nodes' latest reports.
    pub(crate) fn set_reports(&self, reports: Vec<lease::NodeReport>) {
        *self.reports.lock().unwrap_or_else(|e| e.into_inner()) = reports;
    }

    /// The cluster as this node (the leader) sees it.
    pub(crate) fn report(&self) -> ClusterReport {
        let stream_last = self.stream_last();
        let now = crate::store::now_ms();
        let nodes = self
            .reports
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|r| ClusterNode {
                node: r.node.clone(),
                advertise: r.advertise.clone(),
                leader: r.leader && r.node == self.config.node_id,
                applied: r.applied,
                lag: stream_last.saturating_sub(r.applied),
                reported_ms_ago: now.saturating_sub(r.at_ms),
            })
            .collect();
        ClusterReport {
            leader: self.config.node_id.clone(),
            stream_last,
            stream_first: self.stream_first(),
            snapshot: self.snapshot(),
            nodes,
        }
    }
}
