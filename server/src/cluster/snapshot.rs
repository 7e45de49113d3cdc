//! Snapshots of a node's data dir in the cluster's object store, the stream
//! trimmed behind them, and a node restored from one when the stream no
//! longer reaches back to what it applied.
//!
//! **Who takes them.** A standby, never the leader: a standby's data dir
//! holds only what the stream acknowledged, while a leader's may hold a
//! journal record the stream is about to refuse. Of the live standbys (see
//! [`lease::reports`]) the one with the smallest node id takes them, every
//! [`ClusterConfig::snapshot_interval`] when it applied something since the
//! last one. A snapshot is the online backup ([`crate::store::backup`], the
//! `flashsale-admin backup` file format) streamed into the object store
//! under one name, [`SNAPSHOT_OBJECT`]; it records the stream sequence the
//! standby had applied *before* the backup started (`covers`): everything
//! up to it is in the file (a backup holds everything written before its
//! start), and anything after it that the file also holds is applied again
//! harmlessly (journal records by sequence, table writes as values).
//!
//! **Trimming.** After a snapshot, the stream is purged below the oldest of
//! `covers + 1` and every live node's next message, so no node that is
//! running loses what it still has to apply.
//!
//! **Restoring.** At start, before the data dir is opened for serving, a
//! node whose applied sequence is below the stream's first message
//! downloads the snapshot and restores it in place of its data dir
//! ([`crate::store::backup::restore`]: verified whole, built beside, moved
//! in); it then applies the stream from after the snapshot's sequence.
//!
//! [`ClusterConfig::snapshot_interval`]: crate::config::ClusterConfig::snapshot_interval

use crate::cluster::applier::CLUSTER_APPLIED;
use crate::cluster::lease;
use crate::cluster::ClusterState;
use crate::error::ServerError;
use crate::store::{backup, now_ms, Store};
use async_nats::jetstream::object_store::{self, ObjectMetadata, ObjectStore};
use async_nats::jetstream::stream;
use futures::StreamExt;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// The object the latest snapshot is stored under.
pub(crate) const SNAPSHOT_OBJECT: &str = "snapshot";

/// Object metadata key: the stream sequence a snapshot covers.
const COVERS: &str = "stream_seq";

/// Bytes per object chunk (and per backup chunk): within NATS' default
/// 1 MiB message limit.
const CHUNK_BYTES: usize = 512 * 1024;

/// Why a snapshot could not be taken or restored.
fn error(what: &str, e: &dyn std::fmt::Display) -> ServerError {
    ServerError::Cluster(format!("{what}: {e}"))
}

/// The stream sequence the stored snapshot covers; `None` without one.
///
/// # Errors
/// NATS did not answer, or the snapshot's metadata is not ours.
pub(crate) async fn latest(objects: &ObjectStore) -> Result<Option<u64>, ServerError> {
    match objects.info(SNAPSHOT_OBJECT).await {
        Ok(info) if info.deleted => Ok(None),
        Ok(info) => covers(&info.metadata).map(Some),
        Err(e) if e.kind() == object_store::InfoErrorKind::NotFound => Ok(None),
        Err(e) => Err(error("reading the snapshot's metadata", &e)),
    }
}

/// The cluster's object store of snapshots, and its stream.
#[derive(Clone)]
pub(crate) struct Snapshots {
    /// The bucket.
    pub(crate) objects: ObjectStore,
    /// The bucket's stream (`OBJ_<bucket>`).
    pub(crate) stream: stream::Stream,
    /// The bucket's name.
    pub(crate) bucket: String,
}

fn covers(metadata: &HashMap<String, String>) -> Result<u64, ServerError> {
    metadata
        .get(COVERS)
        .and_then(|seq| seq.parse().ok())
        .ok_or_else(|| ServerError::Cluster(format!("the snapshot has no `{COVERS}`")))
}

/// A standby's snapshot work: runs until `stop`.
pub(crate) struct Snapshotter {
    pub(crate) store: Store,
    pub(crate) cluster: Arc<ClusterState>,
    pub(crate) snapshots: Snapshots,
    /// The replicated log.
    pub(crate) stream: stream::Stream,
    /// The lease bucket (for the nodes' reports).
    pub(crate) bucket: async_nats::jetstream::kv::Store,
}

impl Snapshotter {
    /// Takes a snapshot every interval while this node is the standby to
    /// take them, then trims the stream. Failures are logged and tried
    /// again at the next interval: the stream keeps everything meanwhile.
    pub(crate) async fn run(self, stop: CancellationToken) {
        let interval = self.cluster.config.snapshot_interval;
        if interval.is_zero() {
            return;
        }
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let work = self.once();
            let done = tokio::select! {
                () = stop.cancelled() => return,
                done = work => done,
            };
            if let Err(e) = done {
                tracing::warn!(error = %e, "no snapshot this time");
            }
        }
    }

    /// One round: snapshot if due and this node's turn, then trim.
    async fn once(&self) -> Result<(), ServerError> {
        let reports = lease::reports(&self.bucket, now_ms())
            .await
            .map_err(|e| error("reading the nodes' reports", &e))?;
        let me = &self.cluster.config.node_id;
        let my_turn = reports
            .iter()
            .filter(|r| !r.leader)
            .map(|r| &r.node)
            .min()
            .is_some_and(|first| first == me);
        if !my_turn {
            return Ok(());
        }
        let applied = self.cluster.applied();
        let stored = latest(&self.snapshots.objects).await?;
        if stored.is_some_and(|seq| seq >= applied) || applied == 0 {
            return Ok(());
        }
        let started = std::time::Instant::now();
        let bytes = self.take(applied).await?;
        tracing::info!(
            covers = applied,
            bytes,
            ms = started.elapsed().as_millis() as u64,
            "snapshot stored"
        );
        self.cluster.set_snapshot(applied);
        self.trim(applied, &reports).await
    }

    /// Streams a backup of the data dir into the object store.
    async fn take(&self, covers: u64) -> Result<usize, ServerError> {
        self.remove_orphans().await?;
        let (started_tx, started_rx) = oneshot::channel();
        let (chunks_tx, chunks_rx) = mpsc::channel(backup::CHUNKS_AHEAD);
        backup::spawn(
            self.store.clone(),
            now_ms(),
            CHUNK_BYTES,
            started_tx,
            chunks_tx,
        )?;
        started_rx
            .await
            .map_err(|_| ServerError::Cluster("the backup did not start".into()))?;
        let mut chunks_rx = chunks_rx;
        let chunks = futures::stream::poll_fn(move |cx| chunks_rx.poll_recv(cx)).map(|chunk| {
            chunk
                .map(|c| bytes::Bytes::from(c.data))
                .map_err(std::io::Error::other)
        });
        let mut reader = tokio_util::io::StreamReader::new(chunks);
        let meta = ObjectMetadata {
            name: SNAPSHOT_OBJECT.to_owned(),
            description: Some(format!(
                "flashsale backup of node {} through stream sequence {covers}",
                self.cluster.config.node_id
            )),
            chunk_size: Some(CHUNK_BYTES),
            metadata: HashMap::from([(COVERS.to_owned(), covers.to_string())]),
            headers: None,
        };
        match self.snapshots.objects.put(meta, &mut reader).await {
            Ok(info) => Ok(info.size),
            Err(e) => {
                // Its chunks were published under an id no metadata names.
                let _ = self.remove_orphans().await;
                Err(error("storing the snapshot", &e))
            }
        }
    }

    /// Purges chunks of snapshots that never completed (a put that failed
    /// half-way leaves its chunks behind).
    async fn remove_orphans(&self) -> Result<(), ServerError> {
        let bucket = &self.snapshots.bucket;
        let current = match self.snapshots.objects.info(SNAPSHOT_OBJECT).await {
            Ok(info) => Some(info.nuid),
            Err(e) if e.kind() == object_store::InfoErrorKind::NotFound => None,
            Err(e) => return Err(error("reading the snapshot's metadata", &e)),
        };
        let keep = current.map(|nuid| format!("$O.{bucket}.C.{nuid}"));
        let store_stream = &self.snapshots.stream;
        let mut subjects = store_stream
            .info_with_subjects(format!("$O.{bucket}.C.>"))
            .await
            .map_err(|e| error("listing the snapshot chunks", &e))?;
        let mut orphans = Vec::new();
        while let Some(subject) = subjects.next().await {
            let (subject, _) = subject.map_err(|e| error("listing the snapshot chunks", &e))?;
            if Some(&subject) != keep.as_ref() {
                orphans.push(subject);
            }
        }
        for subject in orphans {
            tracing::info!(%subject, "removing the chunks of an unfinished snapshot");
            store_stream
                .purge()
                .filter(subject)
                .await
                .map_err(|e| error("removing an unfinished snapshot", &e))?;
        }
        Ok(())
    }

    /// Purges the stream below what the snapshot and every live node no
    /// longer need.
    async fn trim(&self, covers: u64, reports: &[lease::NodeReport]) -> Result<(), ServerError> {
        let keep_from = reports
            .iter()
            .map(|r| r.applied + 1)
            .chain([covers + 1, self.cluster.applied() + 1])
            .min()
            .unwrap_or(covers + 1);
        let purged = self
            .stream
            .purge()
            .sequence(keep_from)
            .await
            .map_err(|e| error("trimming the stream", &e))?;
        tracing::info!(
            keep_from,
            purged = purged.purged,
            "stream trimmed behind the snapshot"
        );
        Ok(())
    }
}

/// Restores the snapshot into `data_dir` when the stream no longer holds
/// the message after what the data dir applied (a new node, a wiped one,
/// or one stopped for longer than the stream keeps). Returns the sequence
/// the restored data dir covers, `None` when no restore was needed.
///
/// # Errors
/// NATS or the disk failed, or the stream was trimmed without a snapshot
/// to restore.
pub(crate) async fn restore_if_behind(
    stream: &stream::Stream,
    objects: &ObjectStore,
    data_dir: &Path,
) -> Result<Option<u64>, ServerError> {
    let dir = data_dir.to_path_buf();
    let applied = tokio::task::spawn_blocking(move || -> Result<u64, ServerError> {
        crate::cluster::node::open_store(&dir)?.meta_u64(CLUSTER_APPLIED)
    })
    .await
    .map_err(|e| error("reading the data dir", &e))??;
    let info = stream
        .get_info()
        .await
        .map_err(|e| error("reading the stream", &e))?;
    let first = info.state.first_sequence;
    if applied + 1 >= first {
        return Ok(None);
    }
    let Some(covers) = latest(objects).await? else {
        return Err(ServerError::Cluster(format!(
            "the stream starts at {first}, this node applied through {applied}, and there is no \
             snapshot to restore"
        )));
    };
    tracing::warn!(
        applied,
        stream_first = first,
        snapshot_covers = covers,
        "the stream no longer holds what this node needs next: restoring the snapshot"
    );
    let file = download(objects, data_dir).await?;
    let dir = data_dir.to_path_buf();
    let restored = tokio::task::spawn_blocking(move || -> Result<(), ServerError> {
        std::fs::remove_dir_all(&dir)?;
        let restored = backup::restore(&file, &dir);
        let _ = std::fs::remove_file(&file);
        restored.map_err(|e| error("restoring the snapshot", &e))?;
        Ok(())
    })
    .await
    .map_err(|e| error("restoring the snapshot", &e))?;
    restored?;
    Ok(Some(covers))
}

/// Downloads the snapshot beside `data_dir`.
async fn download(objects: &ObjectStore, data_dir: &Path) -> Result<PathBuf, ServerError> {
    let name = data_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "data".into());
    let file = data_dir.with_file_name(format!(".{name}.snapshot"));
    let mut object = objects
        .get(SNAPSHOT_OBJECT)
        .await
        .map_err(|e| error("downloading the snapshot", &e))?;
    let mut out = tokio::fs::File::create(&file).await?;
    tokio::io::copy(&mut object, &mut out)
        .await
        .map_err(|e| error("downloading the snapshot", &e))?;
    out.sync_all().await?;
    Ok(file)
}
