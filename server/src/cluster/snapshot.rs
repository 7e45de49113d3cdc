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
//! `flashsale-admin backup` file format) streamed into the object store as
//! an object of its own, `snapshot-<covers>`, where `covers` is the stream
//! sequence the standby had applied *before* the backup started: everything
//! up to it is in the file (a backup holds everything written before its
//! start), and anything after it that the file also holds is applied again
//! harmlessly (journal records by sequence, table writes as values).
//!
//! **Two generations.** The stream is trimmed only behind the *second*
//! newest snapshot (and behind every live node's next message, re-read
//! just before the purge), and older snapshots are removed then. So the
//! newest snapshot is never the only one that reaches the stream's start:
//! a node still downloading the one before it, or a newest one spoilt by a
//! second writer (two standbys that both thought it their turn, a
//! moment's disagreement of their reports), leaves a good one to restore.
//!
//! **Restoring.** At start, before the data dir is opened for serving, a
//! node whose applied sequence is below the stream's first message
//! restores the newest snapshot that reaches it (falling back to the older
//! one if a download or its verification fails): the data dir is moved
//! aside, the file restored in its place ([`crate::store::backup::restore`]:
//! verified whole, built beside, moved in), and the old one removed; it
//! then applies the stream from after the snapshot's sequence. Leftovers
//! of a restore that stopped half-way are removed at the next start. The
//! data dir must not be a mount point itself (it is renamed).
//!
//! [`ClusterConfig::snapshot_interval`]: crate::config::ClusterConfig::snapshot_interval

use crate::cluster::applier::CLUSTER_APPLIED;
use crate::cluster::lease;
use crate::cluster::ClusterState;
use crate::error::ServerError;
use crate::store::{backup, now_ms, Store};
use async_nats::jetstream::kv;
use async_nats::jetstream::object_store::{ObjectInfo, ObjectMetadata, ObjectStore};
use async_nats::jetstream::stream;
use base64::Engine as _;
use futures::StreamExt;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// Snapshot objects are named this and the sequence they cover.
const PREFIX: &str = "snapshot-";

/// Bytes per object chunk (and per backup chunk): within NATS' default
/// 1 MiB message limit.
const CHUNK_BYTES: usize = 512 * 1024;

/// A download may take this long, plus [`DOWNLOAD_SECONDS_PER_MIB`].
const DOWNLOAD_BASE: Duration = Duration::from_secs(60);
const DOWNLOAD_SECONDS_PER_MIB: u64 = 1;

fn error(what: &str, e: &dyn std::fmt::Display) -> ServerError {
    ServerError::Cluster(format!("{what}: {e}"))
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

/// One stored snapshot.
#[derive(Debug, Clone)]
pub(crate) struct Stored {
    /// Its object's name.
    name: String,
    /// The stream sequence it covers.
    pub(crate) covers: u64,
    /// Its chunks' id.
    nuid: String,
    /// Its size in bytes.
    size: usize,
}

impl Stored {
    fn from_info(info: ObjectInfo) -> Option<Self> {
        let covers = info.name.strip_prefix(PREFIX)?.parse().ok()?;
        Some(Self {
            name: info.name,
            covers,
            nuid: info.nuid,
            size: info.size,
        })
    }
}

impl Snapshots {
    /// The stored snapshots, oldest first.
    ///
    /// # Errors
    /// NATS did not answer.
    pub(crate) async fn list(&self) -> Result<Vec<Stored>, ServerError> {
        let mut list = self
            .objects
            .list()
            .await
            .map_err(|e| error("listing the snapshots", &e))?;
        let mut stored = Vec::new();
        while let Some(info) = list.next().await {
            let info = info.map_err(|e| error("listing the snapshots", &e))?;
            stored.extend(Stored::from_info(info));
        }
        stored.sort_by_key(|s| s.covers);
        Ok(stored)
    }

    /// The sequence the newest snapshot covers; `None` without one.
    ///
    /// # Errors
    /// NATS did not answer.
    pub(crate) async fn latest(&self) -> Result<Option<u64>, ServerError> {
        Ok(self.list().await?.last().map(|s| s.covers))
    }

    /// Removes a snapshot: its chunks and its metadata (no marker left
    /// behind, so the bucket does not grow with history).
    async fn remove(&self, snapshot: &Stored) -> Result<(), ServerError> {
        let bucket = &self.bucket;
        let meta = base64::engine::general_purpose::URL_SAFE.encode(&snapshot.name);
        for subject in [
            format!("$O.{bucket}.C.{}", snapshot.nuid),
            format!("$O.{bucket}.M.{meta}"),
        ] {
            self.stream
                .purge()
                .filter(subject)
                .await
                .map_err(|e| error("removing an old snapshot", &e))?;
        }
        Ok(())
    }

    /// Purges chunks no stored snapshot names (a put that failed half-way
    /// leaves its chunks behind).
    async fn remove_orphans(&self, listed: &[Stored]) -> Result<(), ServerError> {
        let bucket = &self.bucket;
        let keep: HashSet<String> = listed
            .iter()
            .map(|s| format!("$O.{bucket}.C.{}", s.nuid))
            .collect();
        let mut subjects = self
            .stream
            .info_with_subjects(format!("$O.{bucket}.C.>"))
            .await
            .map_err(|e| error("listing the snapshot chunks", &e))?;
        let mut orphans = Vec::new();
        while let Some(subject) = subjects.next().await {
            let (subject, _) = subject.map_err(|e| error("listing the snapshot chunks", &e))?;
            if !keep.contains(&subject) {
                orphans.push(subject);
            }
        }
        for subject in orphans {
            tracing::info!(%subject, "removing the chunks of an unfinished snapshot");
            self.stream
                .purge()
                .filter(subject)
                .await
                .map_err(|e| error("removing an unfinished snapshot", &e))?;
        }
        Ok(())
    }
}

/// A standby's snapshot work: runs until `stop`.
pub(crate) struct Snapshotter {
    pub(crate) store: Store,
    pub(crate) cluster: Arc<ClusterState>,
    pub(crate) snapshots: Snapshots,
    /// The replicated log.
    pub(crate) stream: stream::Stream,
    /// The lease bucket (for the nodes' reports).
    pub(crate) bucket: kv::Store,
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
            let done = tokio::select! {
                () = stop.cancelled() => return,
                done = self.once() => done,
            };
            if let Err(e) = done {
                tracing::warn!(error = %e, "no snapshot this time");
            }
        }
    }

    /// One round: snapshot if due and this node's turn, then trim behind
    /// the second newest.
    async fn once(&self) -> Result<(), ServerError> {
        if !self.my_turn().await? {
            return Ok(());
        }
        let applied = self.cluster.applied();
        let mut listed = self.snapshots.list().await?;
        if applied > listed.last().map_or(0, |s| s.covers) {
            self.snapshots.remove_orphans(&listed).await?;
            let started = std::time::Instant::now();
            let stored = self.take(applied).await?;
            tracing::info!(
                covers = applied,
                bytes = stored.size,
                ms = started.elapsed().as_millis() as u64,
                "snapshot stored"
            );
            listed.push(stored);
        }
        if let Some(newest) = listed.last() {
            self.cluster.set_snapshot(newest.covers);
        }
        let [.., second, _] = listed.as_slice() else {
            return Ok(());
        };
        for old in listed.iter().filter(|s| s.covers < second.covers) {
            self.snapshots.remove(old).await?;
        }
        self.trim(second.covers).await
    }

    /// True when this node is the live standby with the smallest id.
    async fn my_turn(&self) -> Result<bool, ServerError> {
        let reports = lease::reports(&self.bucket, now_ms())
            .await
            .map_err(|e| error("reading the nodes' reports", &e))?;
        let me = &self.cluster.config.node_id;
        Ok(reports
            .iter()
            .filter(|r| !r.leader)
            .map(|r| &r.node)
            .min()
            .is_some_and(|first| first == me))
    }

    /// Streams a backup of the data dir into the object store as a new
    /// snapshot covering `covers`.
    async fn take(&self, covers: u64) -> Result<Stored, ServerError> {
        let (started_tx, started_rx) = oneshot::channel();
        let (chunks_tx, mut chunks_rx) = mpsc::channel(backup::CHUNKS_AHEAD);
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
        let chunks = futures::stream::poll_fn(move |cx| chunks_rx.poll_recv(cx)).map(|chunk| {
            chunk
                .map(|c| bytes::Bytes::from(c.data))
                .map_err(std::io::Error::other)
        });
        let mut reader = tokio_util::io::StreamReader::new(chunks);
        let meta = ObjectMetadata {
            name: format!("{PREFIX}{covers:020}"),
            description: Some(format!(
                "flashsale backup of node {} through stream sequence {covers}",
                self.cluster.config.node_id
            )),
            chunk_size: Some(CHUNK_BYTES),
            ..Default::default()
        };
        self.snapshots
            .objects
            .put(meta, &mut reader)
            .await
            .map_err(|e| error("storing the snapshot", &e))
            .and_then(|info| {
                Stored::from_info(info)
                    .ok_or_else(|| ServerError::Cluster("a snapshot named otherwise".into()))
            })
    }

    /// Purges the stream below what `covers` and every live node no longer
    /// need (the reports read now: a node that started since counts).
    async fn trim(&self, covers: u64) -> Result<(), ServerError> {
        let reports = lease::reports(&self.bucket, now_ms())
            .await
            .map_err(|e| error("reading the nodes' reports", &e))?;
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

/// Restores a snapshot into `data_dir` when the stream no longer holds the
/// message after what the data dir applied (a new node, a wiped one, or
/// one stopped for longer than the stream keeps). Returns the sequence the
/// restored snapshot covers, `None` when no restore was needed.
///
/// # Errors
/// NATS or the disk failed, or no stored snapshot reaches the stream's
/// first message.
pub(crate) async fn restore_if_behind(
    stream: &stream::Stream,
    snapshots: &Snapshots,
    data_dir: &Path,
) -> Result<Option<u64>, ServerError> {
    let dir = data_dir.to_path_buf();
    let applied = tokio::task::spawn_blocking(move || -> Result<u64, ServerError> {
        remove_leftovers(&dir)?;
        crate::cluster::node::open_store(&dir)?.meta_u64(CLUSTER_APPLIED)
    })
    .await
    .map_err(|e| error("reading the data dir", &e))??;
    let first = stream
        .get_info()
        .await
        .map_err(|e| error("reading the stream", &e))?
        .state
        .first_sequence;
    if applied + 1 >= first {
        return Ok(None);
    }
    let candidates: Vec<Stored> = snapshots
        .list()
        .await?
        .into_iter()
        .rev()
        .filter(|s| s.covers + 1 >= first)
        .collect();
    if candidates.is_empty() {
        return Err(ServerError::Cluster(format!(
            "the stream starts at {first}, this node applied through {applied}, and no stored \
             snapshot reaches that far"
        )));
    }
    for snapshot in candidates {
        tracing::warn!(
            applied,
            stream_first = first,
            snapshot = %snapshot.name,
            "the stream no longer holds what this node needs next: restoring a snapshot"
        );
        match restore(snapshots, &snapshot, data_dir).await {
            Ok(()) => return Ok(Some(snapshot.covers)),
            Err(e) => tracing::error!(error = %e, snapshot = %snapshot.name, "restore failed"),
        }
    }
    Err(ServerError::Cluster(
        "no stored snapshot could be restored".into(),
    ))
}

/// `.NAME.SUFFIX` beside `data_dir`.
fn beside(data_dir: &Path, suffix: &str) -> PathBuf {
    let name = data_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "data".into());
    data_dir.with_file_name(format!(".{name}.{suffix}"))
}

/// Removes what a restore that stopped half-way left beside `data_dir`.
fn remove_leftovers(data_dir: &Path) -> Result<(), ServerError> {
    let file = beside(data_dir, "snapshot");
    if file.exists() {
        std::fs::remove_file(&file)?;
    }
    for dir in [beside(data_dir, "restoring"), beside(data_dir, "old")] {
        if dir.exists() {
            tracing::warn!(dir = %dir.display(), "removing what an unfinished restore left");
            std::fs::remove_dir_all(&dir)?;
        }
    }
    Ok(())
}

/// Downloads `snapshot` beside `data_dir` and puts it in the data dir's
/// place.
async fn restore(
    snapshots: &Snapshots,
    snapshot: &Stored,
    data_dir: &Path,
) -> Result<(), ServerError> {
    let file = beside(data_dir, "snapshot");
    let limit = DOWNLOAD_BASE
        + Duration::from_secs(DOWNLOAD_SECONDS_PER_MIB * (snapshot.size as u64 >> 20));
    // Its own task: the object reader panics on some NATS errors.
    let download = tokio::spawn(download(
        snapshots.objects.clone(),
        snapshot.name.clone(),
        file.clone(),
    ));
    match tokio::time::timeout(limit, download).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => return Err(e),
        Ok(Err(e)) => return Err(error("downloading the snapshot", &e)),
        Err(_) => {
            return Err(ServerError::Cluster(format!(
                "no snapshot within {limit:?}"
            )))
        }
    }
    let dir = data_dir.to_path_buf();
    tokio::task::spawn_blocking(move || -> Result<(), ServerError> {
        // An earlier candidate that failed already moved the data dir aside.
        let old = beside(&dir, "old");
        if dir.exists() {
            std::fs::rename(&dir, &old)?;
        }
        let restored = backup::restore(&file, &dir);
        std::fs::remove_file(&file)?;
        restored.map_err(|e| error("restoring the snapshot", &e))?;
        if old.exists() {
            std::fs::remove_dir_all(&old)?;
        }
        Ok(())
    })
    .await
    .map_err(|e| error("restoring the snapshot", &e))?
}

/// Writes the object `name` to `file`, synced.
async fn download(objects: ObjectStore, name: String, file: PathBuf) -> Result<(), ServerError> {
    let mut object = objects
        .get(&name)
        .await
        .map_err(|e| error("downloading the snapshot", &e))?;
    let mut out = tokio::fs::File::create(&file).await?;
    tokio::io::copy(&mut object, &mut out)
        .await
        .map_err(|e| error("downloading the snapshot", &e))?;
    out.sync_all().await?;
    Ok(())
}
