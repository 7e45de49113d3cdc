//! `BackupBegin` and `BackupNext`: an online backup streamed to an admin on
//! one connection, as answers to its requests (the server never writes a
//! file a client names). The stream belongs to the connection
//! ([`BackupSlot`]): its reading thread, the gate it holds and its place in
//! the server-wide limit ([`Backups`]) go when the last chunk is answered,
//! or when the connection closes or changes its session. What the stream
//! holds and why it is consistent: [`crate::store::backup`].

use super::misrouted;
use crate::error::{ApiError, ApiResult};
use crate::net::reply::ReplyTo;
use crate::state::Shared;
use crate::store::backup::{self as store_backup, ChunkResult, CHUNKS_AHEAD};
use crate::store::SCHEMA_VERSION;
use flashsale_protocol::backup::FORMAT_VERSION;
use flashsale_protocol::{ErrorCode, Reply, RequestBody};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

/// Smallest chunk a server sends, whatever `Config::backup_chunk_bytes` says.
const MIN_CHUNK_BYTES: usize = 1024;

/// The server-wide side of backups: how many may run, and their ids.
#[derive(Debug)]
pub(crate) struct Backups {
    /// One permit per backup that may stream at once (`Config::max_backups`).
    running: Arc<Semaphore>,
    /// The last id given.
    last_id: AtomicU64,
}

impl Backups {
    /// At most `max` backups at once.
    pub(crate) fn new(max: usize) -> Self {
        Self {
            running: Arc::new(Semaphore::new(max)),
            last_id: AtomicU64::new(0),
        }
    }
}

/// The backup a connection streams, if any; dropping it stops the stream.
#[derive(Debug, Default)]
pub(crate) struct BackupSlot(Option<Stream>);

impl BackupSlot {
    /// Stops the stream, if one runs (the session on the connection changed).
    pub(crate) fn stop(&mut self) {
        self.0 = None;
    }
}

/// One running backup.
#[derive(Debug)]
struct Stream {
    /// Its id in `BackupNext`.
    id: u64,
    /// The chunks of the reading thread; dropping it stops the thread.
    chunks: mpsc::Receiver<ChunkResult>,
    /// Its place in [`Backups::running`].
    _permit: OwnedSemaphorePermit,
}

/// True for the requests handled here.
pub(super) fn is_backup(body: &RequestBody) -> bool {
    matches!(
        body,
        RequestBody::BackupBegin | RequestBody::BackupNext { .. }
    )
}

/// Handles a backup request of an admin (checked by the caller).
pub(super) async fn handle(
    shared: &Arc<Shared>,
    slot: &mut BackupSlot,
    body: RequestBody,
    reply: ReplyTo,
) {
    let result = match body {
        RequestBody::BackupBegin => begin(shared, slot).await,
        RequestBody::BackupNext { backup_id } => next(slot, backup_id).await,
        other => Err(misrouted(&other)),
    };
    reply.send(result);
}

/// Starts a backup on this connection, once its thread holds the gate.
async fn begin(shared: &Arc<Shared>, slot: &mut BackupSlot) -> ApiResult<Reply> {
    if let Some(stream) = &slot.0 {
        return Err(ApiError::bad_request(format!(
            "this connection already streams backup {}; read it to its last chunk or close the connection",
            stream.id
        )));
    }
    let permit = Arc::clone(&shared.backups.running)
        .try_acquire_owned()
        .map_err(|_| {
            ApiError::new(
                ErrorCode::Overloaded,
                "a backup is already running; retry when it has finished",
            )
        })?;
    let id = shared.backups.last_id.fetch_add(1, Ordering::Relaxed) + 1;
    let config = &shared.config;
    let chunk_bytes = config
        .backup_chunk_bytes
        .clamp(MIN_CHUNK_BYTES, config.max_frame_len.max(MIN_CHUNK_BYTES));
    let (started_tx, started) = oneshot::channel();
    let (chunks_tx, chunks) = mpsc::channel(CHUNKS_AHEAD);
    store_backup::spawn(shared.store.clone(), id, chunk_bytes, started_tx, chunks_tx)?;
    // Waits on the thread, not on a lock: only a checkpoint holding the
    // gate at this moment delays it.
    started
        .await
        .map_err(|_| ApiError::internal("the backup thread stopped before it started"))?;
    tracing::info!(backup_id = id, chunk_bytes, "backup started");
    slot.0 = Some(Stream {
        id,
        chunks,
        _permit: permit,
    });
    Ok(Reply::BackupStarted {
        backup_id: id,
        format_version: FORMAT_VERSION,
        schema_version: SCHEMA_VERSION,
    })
}

/// The next chunk of this connection's backup `backup_id`.
async fn next(slot: &mut BackupSlot, backup_id: u64) -> ApiResult<Reply> {
    let Some(stream) = slot.0.as_mut().filter(|stream| stream.id == backup_id) else {
        return Err(ApiError::not_found(format!(
            "no backup {backup_id} streams on this connection (a backup is read on the connection that began it, up to its last chunk)"
        )));
    };
    // The thread is at most `CHUNKS_AHEAD` chunks ahead and reads sled
    // only: the wait is one chunk's read.
    let chunk = stream.chunks.recv().await;
    match chunk {
        Some(Ok(chunk)) => {
            if chunk.last {
                slot.stop();
            }
            Ok(Reply::BackupChunk {
                data: chunk.data,
                last: chunk.last,
            })
        }
        Some(Err(e)) => {
            slot.stop();
            Err(e.into())
        }
        None => {
            slot.stop();
            Err(ApiError::internal("the backup thread stopped"))
        }
    }
}
