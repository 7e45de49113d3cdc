//! Online backup of the data dir, and restore into a new one, in the file
//! format of [`flashsale_protocol::backup`].
//!
//! A backup streams every sled tree from one thread that holds
//! [`Store::backup_gate`] for reading from before its first read to after
//! its last. The checkpointer replaces the checkpoint and truncates the
//! journal only under `try_write` of that gate, so while a backup streams
//! the checkpoint it read stays the current one and no journal record after
//! it goes away. Every tree but `journal` comes first (`meta` and
//! `checkpoint` leading), `journal` last: whatever was acknowledged before
//! the gate was taken is in the checkpoint and tables or in the journal
//! read after them, and replay after a restore re-materialises the tables
//! from the journal (idempotently) as after any restart. The sale goes on
//! meanwhile: sled reads take no lock the sequencer waits for, the thread
//! is not a tokio worker, and it runs at most [`CHUNKS_AHEAD`] chunks ahead
//! of the client.
//!
//! A restore verifies the whole file (format, schema version, counts,
//! checksum) before it writes anything, builds the data dir beside the
//! target (`.NAME.restoring`), syncs it and renames it into place: a
//! restore that stops half-way leaves no half-restored data dir behind.

use crate::error::ServerError;
use crate::store::{now_ms, Store, SCHEMA_VERSION};
use flashsale_protocol::backup::{
    BackupFormatError, BackupItem, BackupReader, BackupSummary, BackupWriter, BACKUP_FILE_NAME,
    JOURNAL_TREE,
};
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError};
use tokio::sync::{mpsc, oneshot};

/// Chunks the reading thread may have ready before the client asks for
/// them: enough to read the next while one is on the wire, and the memory
/// of a backup stays a few chunks.
pub(crate) const CHUNKS_AHEAD: usize = 2;

/// sled's own tree: listed by `tree_names()`, reached through the `Db`
/// itself (opening it by name would give a second handle on it).
const DEFAULT_TREE: &[u8] = b"__sled__default";

/// Trees streamed first, in this order: what the other trees' content is
/// relative to.
const LEADING_TREES: [&[u8]; 2] = [b"meta", b"checkpoint"];

/// Bytes of entries written to one tree with one `apply_batch` during a
/// restore: large batches are fast, and this bounds the memory.
const RESTORE_BATCH_BYTES: usize = 4 << 20;

/// Read buffer of the backup file.
const READ_BUFFER: usize = 256 * 1024;

/// The next bytes of a backup file.
#[derive(Debug)]
pub(crate) struct Chunk {
    /// The bytes.
    pub(crate) data: Vec<u8>,
    /// The last chunk: the file is complete.
    pub(crate) last: bool,
}

/// What the reading thread sends: a chunk, or why the backup failed.
pub(crate) type ChunkResult = Result<Chunk, ServerError>;

/// Starts a backup of `store` on its own thread. `started` is told once the
/// gate is held (from then on, the backup holds everything answered
/// before); the file then goes to `chunks` in pieces of `chunk_bytes`. The
/// thread stops, releasing the gate, after the last chunk, on an error (sent
/// as the next item), or as soon as `chunks` is dropped.
///
/// # Errors
/// The thread cannot be started.
pub(crate) fn spawn(
    store: Store,
    backup_id: u64,
    chunk_bytes: usize,
    started: oneshot::Sender<()>,
    chunks: mpsc::Sender<ChunkResult>,
) -> Result<(), ServerError> {
    std::thread::Builder::new()
        .name("flashsale-backup".into())
        .spawn(move || stream(&store, backup_id, chunk_bytes, started, chunks))?;
    Ok(())
}

/// The backup thread.
fn stream(
    store: &Store,
    backup_id: u64,
    chunk_bytes: usize,
    started: oneshot::Sender<()>,
    chunks: mpsc::Sender<ChunkResult>,
) {
    let gate = Arc::clone(&store.backup_gate);
    // A checkpoint that panicked while holding the gate is a crash mid-
    // checkpoint, which the checkpoint's own design makes safe to read.
    let _held = gate.read().unwrap_or_else(PoisonError::into_inner);
    if started.send(()).is_err() {
        return;
    }
    let mut out = Chunker {
        chunks,
        buf: Vec::with_capacity(2 * chunk_bytes),
        chunk_bytes: chunk_bytes.max(1),
    };
    match write_trees(store, &mut out) {
        Ok(summary) => tracing::info!(
            backup_id,
            bytes = summary.bytes,
            trees = summary.trees,
            entries = summary.entries,
            journal_seq = summary.journal_seq,
            "backup streamed"
        ),
        Err(Stop::Gone) => tracing::info!(backup_id, "backup abandoned by its connection"),
        Err(Stop::Failed(e)) => {
            tracing::error!(backup_id, error = %e, "backup failed");
            let _ = out.chunks.blocking_send(Err(e));
        }
    }
}

/// Why a backup stream ended early.
enum Stop {
    /// The connection dropped the stream.
    Gone,
    /// Reading the store failed.
    Failed(ServerError),
}

impl From<sled::Error> for Stop {
    fn from(e: sled::Error) -> Self {
        Self::Failed(e.into())
    }
}

impl From<BackupFormatError> for Stop {
    fn from(e: BackupFormatError) -> Self {
        Self::Failed(ServerError::Encode(e.to_string()))
    }
}

/// Cuts the file being written into chunks and sends them.
struct Chunker {
    chunks: mpsc::Sender<ChunkResult>,
    /// Written, not yet sent: less than a chunk plus one record.
    buf: Vec<u8>,
    chunk_bytes: usize,
}

impl Chunker {
    /// Sends every full chunk in the buffer (waiting while the client is
    /// [`CHUNKS_AHEAD`] behind).
    fn send_full(&mut self) -> Result<(), Stop> {
        let mut start = 0;
        while self.buf.len() - start >= self.chunk_bytes {
            let data = self.buf[start..start + self.chunk_bytes].to_vec();
            start += self.chunk_bytes;
            self.send(data, false)?;
        }
        self.buf.drain(..start);
        Ok(())
    }

    /// Sends the rest, the trailer included, as the last chunk(s).
    fn send_rest(&mut self) -> Result<(), Stop> {
        self.send_full()?;
        let data = std::mem::take(&mut self.buf);
        self.send(data, true)
    }

    fn send(&self, data: Vec<u8>, last: bool) -> Result<(), Stop> {
        self.chunks
            .blocking_send(Ok(Chunk { data, last }))
            .map_err(|_| Stop::Gone)
    }
}

/// The trees in stream order: [`LEADING_TREES`], the others by name, the
/// journal last.
fn stream_order(mut names: Vec<sled::IVec>) -> Vec<sled::IVec> {
    let rank = |name: &sled::IVec| {
        let name = name.as_ref();
        match LEADING_TREES.iter().position(|lead| *lead == name) {
            Some(at) => at,
            None if name == JOURNAL_TREE => LEADING_TREES.len() + 1,
            None => LEADING_TREES.len(),
        }
    };
    names.sort_by(|a, b| rank(a).cmp(&rank(b)).then_with(|| a.cmp(b)));
    names
}

/// Writes the whole file through `out`.
fn write_trees(store: &Store, out: &mut Chunker) -> Result<BackupSummary, Stop> {
    let mut writer = BackupWriter::start(SCHEMA_VERSION, now_ms(), &mut out.buf);
    let mut journal_seq = None;
    for name in stream_order(store.db.tree_names()) {
        let tree = if name.as_ref() == DEFAULT_TREE {
            sled::Tree::clone(&store.db)
        } else {
            store.db.open_tree(&name)?
        };
        writer.tree(&name, &mut out.buf)?;
        let is_journal = name.as_ref() == JOURNAL_TREE;
        for item in tree.iter() {
            let (key, value) = item?;
            writer.entry(&key, &value, &mut out.buf)?;
            if is_journal {
                journal_seq = <[u8; 8]>::try_from(key.as_ref())
                    .ok()
                    .map(u64::from_be_bytes);
            }
            out.send_full()?;
        }
    }
    // Taken after every tree was read: any id in the backup is below it.
    let next_id = store.db.generate_id()?;
    let summary = writer.finish(next_id, journal_seq, &mut out.buf);
    out.send_rest()?;
    Ok(summary)
}

/// What a restore did.
#[derive(Debug, Clone)]
pub struct RestoreSummary {
    /// The backup file read.
    pub file: PathBuf,
    /// The data dir made.
    pub data_dir: PathBuf,
    /// What the backup held.
    pub backup: BackupSummary,
}

/// Why a restore refused or failed. Nothing is left at the target when it
/// does.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The backup file cannot be opened.
    #[error("cannot open the backup {path}")]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a complete, intact backup.
    #[error("{path} cannot be restored")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        source: BackupFormatError,
    },
    /// A newer flashsale took the backup.
    #[error("{path} has schema version {found}, newer than this flashsale-server supports ({supported}); restore it with a newer flashsale-server")]
    SchemaTooNew {
        /// The file.
        path: PathBuf,
        /// Its schema version.
        found: u32,
        /// The newest this build reads.
        supported: u32,
    },
    /// The target is not a new or empty directory.
    #[error(
        "{0} already holds data (or is not a directory); restore into a new or empty directory"
    )]
    TargetNotEmpty(PathBuf),
    /// An earlier restore into the same target stopped half-way.
    #[error("{0} is left over from an interrupted restore; remove it and restore again")]
    Leftover(PathBuf),
    /// A file operation on the target failed.
    #[error("{what} {path}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// On what.
        path: PathBuf,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// Writing the new data dir failed.
    #[error("writing the restored data dir failed")]
    Store(#[from] ServerError),
}

/// Builds the data dir `data_dir` from the backup `from` (a directory
/// holding `flashsale.backup`, or the file itself). `data_dir` must not
/// exist or be an empty directory; the file is verified whole before
/// anything is written, and the data dir appears only once complete and on
/// disk. A server started on it recovers as after any restart.
///
/// # Errors
/// See [`RestoreError`]: an unreadable, truncated or corrupt file, a newer
/// schema, a target that holds data, or a failed write.
pub fn restore(from: &Path, data_dir: &Path) -> Result<RestoreSummary, RestoreError> {
    let file = if from.is_dir() {
        from.join(BACKUP_FILE_NAME)
    } else {
        from.to_path_buf()
    };
    check_target(data_dir)?;
    let verified = verify(&file)?;
    let staging = staging_dir(data_dir)?;
    if let Err(e) = build(&file, &staging, &verified) {
        // Ours alone (refused above when it existed): nothing half-made stays.
        let _ = std::fs::remove_dir_all(&staging);
        return Err(e);
    }
    move_into_place(&staging, data_dir)?;
    tracing::info!(
        file = %file.display(),
        data_dir = %data_dir.display(),
        entries = verified.entries,
        trees = verified.trees,
        "restored"
    );
    Ok(RestoreSummary {
        file,
        data_dir: data_dir.to_path_buf(),
        backup: verified,
    })
}

/// `Ok` for a target that does not exist or is an empty directory.
fn check_target(data_dir: &Path) -> Result<(), RestoreError> {
    match std::fs::read_dir(data_dir) {
        Ok(mut entries) => match entries.next() {
            None => Ok(()),
            Some(_) => Err(RestoreError::TargetNotEmpty(data_dir.to_path_buf())),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) if data_dir.exists() && !data_dir.is_dir() => {
            tracing::debug!(error = %e, "the target is not a directory");
            Err(RestoreError::TargetNotEmpty(data_dir.to_path_buf()))
        }
        Err(source) => Err(RestoreError::Io {
            what: "cannot read",
            path: data_dir.to_path_buf(),
            source,
        }),
    }
}

fn open_backup(file: &Path) -> Result<BackupReader<BufReader<File>>, RestoreError> {
    let opened = File::open(file).map_err(|source| RestoreError::Open {
        path: file.to_path_buf(),
        source,
    })?;
    let reader = BackupReader::new(BufReader::with_capacity(READ_BUFFER, opened))
        .map_err(|source| format_error(file, source))?;
    let header = reader.header();
    if header.schema_version > SCHEMA_VERSION {
        return Err(RestoreError::SchemaTooNew {
            path: file.to_path_buf(),
            found: header.schema_version,
            supported: SCHEMA_VERSION,
        });
    }
    Ok(reader)
}

fn format_error(file: &Path, source: BackupFormatError) -> RestoreError {
    RestoreError::Format {
        path: file.to_path_buf(),
        source,
    }
}

/// Reads the whole file, checking everything; writes nothing.
fn verify(file: &Path) -> Result<BackupSummary, RestoreError> {
    open_backup(file)?
        .verify_all()
        .map_err(|source| format_error(file, source))
}

/// `.NAME.restoring` beside `data_dir`; refused when it exists (an earlier
/// restore stopped half-way, or someone else's directory).
fn staging_dir(data_dir: &Path) -> Result<PathBuf, RestoreError> {
    let name = data_dir
        .file_name()
        .ok_or_else(|| RestoreError::TargetNotEmpty(data_dir.to_path_buf()))?;
    let mut staging_name = std::ffi::OsString::from(".");
    staging_name.push(name);
    staging_name.push(".restoring");
    let staging = data_dir.with_file_name(staging_name);
    if staging.exists() {
        return Err(RestoreError::Leftover(staging));
    }
    Ok(staging)
}

/// Writes the backup's entries into a fresh data dir at `staging`, and
/// syncs it.
fn build(file: &Path, staging: &Path, verified: &BackupSummary) -> Result<(), RestoreError> {
    let store = Store::open(staging)?;
    let mut reader = open_backup(file)?;
    let mut batch = Batch::default();
    loop {
        match reader
            .next_item()
            .map_err(|source| format_error(file, source))?
        {
            Some(BackupItem::Tree(name)) => {
                batch.apply()?;
                batch.tree = Some(if name.as_slice() == DEFAULT_TREE {
                    sled::Tree::clone(&store.db)
                } else {
                    store.db.open_tree(&name).map_err(ServerError::from)?
                });
            }
            Some(BackupItem::Entry { key, value }) => {
                batch.bytes += key.len() + value.len();
                batch.entries.insert(key, value);
                if batch.bytes >= RESTORE_BATCH_BYTES {
                    batch.apply()?;
                }
            }
            None => break,
        }
    }
    batch.apply()?;
    // The file may have changed since it was verified: what was written
    // must be what was verified.
    if reader.summary().map(|s| s.sha256) != Some(verified.sha256) {
        return Err(format_error(
            file,
            BackupFormatError::Corrupt("the file changed during the restore".into()),
        ));
    }
    advance_ids(&store, verified.next_id)?;
    store.sync()?;
    Ok(())
}

/// Entries waiting to be written to one tree.
#[derive(Default)]
struct Batch {
    tree: Option<sled::Tree>,
    entries: sled::Batch,
    bytes: usize,
}

impl Batch {
    fn apply(&mut self) -> Result<(), ServerError> {
        if let Some(tree) = &self.tree {
            tree.apply_batch(std::mem::take(&mut self.entries))?;
        }
        self.bytes = 0;
        Ok(())
    }
}

/// Moves sled's id generator past `next_id`, so accounts made after the
/// restore do not take the ids of restored ones. sled has no setter: ids
/// are drawn until one is at least `next_id` (an atomic add each, and one
/// persisted counter per million).
fn advance_ids(store: &Store, next_id: u64) -> Result<(), ServerError> {
    while store.db.generate_id()? < next_id {}
    Ok(())
}

/// Renames the finished `staging` to `data_dir` (an empty `data_dir` is
/// replaced) and syncs the parent directory, so the rename is durable.
fn move_into_place(staging: &Path, data_dir: &Path) -> Result<(), RestoreError> {
    std::fs::rename(staging, data_dir).map_err(|source| RestoreError::Io {
        what: "cannot move the restored data dir to",
        path: data_dir.to_path_buf(),
        source,
    })?;
    let parent = match data_dir.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    File::open(parent)
        .and_then(|dir| dir.sync_all())
        .map_err(|source| RestoreError::Io {
            what: "cannot sync the directory",
            path: parent.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_and_checkpoint_stream_first_and_the_journal_last() {
        let names = ["users", "journal", "checkpoint", "carts", "meta", "orders"]
            .into_iter()
            .map(sled::IVec::from)
            .collect();
        let order: Vec<String> = stream_order(names)
            .iter()
            .map(|n| String::from_utf8_lossy(n).into_owned())
            .collect();
        assert_eq!(
            order,
            ["meta", "checkpoint", "carts", "orders", "users", "journal"]
        );
    }
}
