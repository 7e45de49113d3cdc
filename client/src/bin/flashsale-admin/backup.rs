//! `backup DIR`: an online backup of the running server, streamed over the
//! protocol into `DIR/flashsale.backup` (the server writes no file; this
//! CLI writes the bytes it receives, as they come).
//!
//! The file appears only complete and verified: the chunks go to
//! `flashsale.backup.partial`, which is fsynced, read back and verified
//! (format, counts, SHA-256), then renamed into place and the directory
//! fsynced. An existing backup is replaced only with `--force`.

use crate::cli::BackupArgs;
use crate::error::CliError;
use crate::output::{print_json, print_line};
use crate::time::format_ms;
use crate::Ctx;
use anyhow::Context;
use flashsale_client::protocol::backup::{
    BackupReader, BackupSummary, BACKUP_FILE_NAME, FORMAT_VERSION,
};
use flashsale_client::BackupStream;
use serde::Serialize;
use std::fs::File;
use std::io::{BufReader, Write};
use std::path::Path;

/// `backup --json`.
#[derive(Debug, Serialize)]
struct BackupOut {
    /// The backup file written.
    file: String,
    /// The server's id of the backup.
    backup_id: u64,
    /// Length of the file.
    bytes: u64,
    /// Trees in it.
    trees: u32,
    /// Entries in it, all trees together.
    entries: u64,
    /// The data dir's schema version.
    schema_version: u32,
    /// The file format version.
    format_version: u32,
    /// The last journal batch in the backup; `null` when the journal was empty.
    journal_seq: Option<u64>,
    /// When the server began the backup, ms since the epoch.
    created_at_ms: u64,
    /// SHA-256 of the file before its checksum, as in its trailer.
    sha256: String,
}

/// Runs `backup DIR`.
///
/// # Errors
/// The file exists without `--force` (usage), the server refused
/// (`Forbidden`, `Overloaded` while another backup runs), the connection
/// was lost, the bytes received are not an intact backup, or a file
/// operation failed. No partial file is left behind.
pub async fn run(ctx: &Ctx, args: BackupArgs) -> anyhow::Result<()> {
    let dir = args.dir.as_path();
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let target = dir.join(BACKUP_FILE_NAME);
    if !args.force && target.exists() {
        return Err(exists(&target).into());
    }
    let partial = dir.join(format!("{BACKUP_FILE_NAME}.partial"));
    let mut stream = ctx
        .client
        .backup()
        .await
        .context("cannot begin the backup")?;
    if stream.format_version() != FORMAT_VERSION {
        return Err(CliError::Unexpected(format!(
            "the server writes backup format {}, this flashsale-admin reads {FORMAT_VERSION}; use the flashsale-admin of the server's version",
            stream.format_version()
        ))
        .into());
    }
    let written = receive(&mut stream, &partial)
        .await
        .and_then(|()| verify(&partial))
        .and_then(|summary| put_in_place(&partial, &target, args.force).map(|()| summary));
    let summary = match written {
        Ok(summary) => summary,
        Err(e) => {
            // Ours: nothing half-written stays.
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
    };
    report(ctx, &target, stream.backup_id(), &summary)
}

/// The refusal to replace an existing backup.
fn exists(target: &Path) -> CliError {
    CliError::Usage(format!(
        "{} exists; pass --force to replace it, or back up into another directory",
        target.display()
    ))
}

/// Writes every chunk to `partial` and fsyncs it.
async fn receive(stream: &mut BackupStream, partial: &Path) -> anyhow::Result<()> {
    let mut file =
        File::create(partial).with_context(|| format!("cannot create {}", partial.display()))?;
    while let Some(chunk) = stream
        .next_chunk()
        .await
        .with_context(|| format!("the backup stopped after {} bytes", stream.bytes_received()))?
    {
        file.write_all(&chunk)
            .with_context(|| format!("cannot write {}", partial.display()))?;
    }
    file.sync_all()
        .with_context(|| format!("cannot sync {}", partial.display()))
}

/// Reads the file back and checks it whole.
fn verify(partial: &Path) -> anyhow::Result<BackupSummary> {
    let file = File::open(partial).with_context(|| format!("cannot read {}", partial.display()))?;
    BackupReader::new(BufReader::new(file))
        .and_then(BackupReader::verify_all)
        .context("the backup received is not intact")
}

/// Renames `partial` to `target` (without `force`, never over an existing
/// file: a hard link fails if the name is taken) and fsyncs the directory.
fn put_in_place(partial: &Path, target: &Path, force: bool) -> anyhow::Result<()> {
    if force {
        std::fs::rename(partial, target)
            .with_context(|| format!("cannot rename to {}", target.display()))?;
    } else {
        match std::fs::hard_link(partial, target) {
            Ok(()) => std::fs::remove_file(partial)
                .with_context(|| format!("cannot remove {}", partial.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(exists(target).into())
            }
            // A file system without hard links: check, then rename.
            Err(_) if target.exists() => return Err(exists(target).into()),
            Err(_) => std::fs::rename(partial, target)
                .with_context(|| format!("cannot rename to {}", target.display()))?,
        }
    }
    let dir = match target.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|dir| dir.sync_all())
        .with_context(|| format!("cannot sync the directory {}", dir.display()))
}

/// Prints what was written.
fn report(ctx: &Ctx, target: &Path, backup_id: u64, summary: &BackupSummary) -> anyhow::Result<()> {
    if ctx.json {
        return print_json(&BackupOut {
            file: target.display().to_string(),
            backup_id,
            bytes: summary.bytes,
            trees: summary.trees,
            entries: summary.entries,
            schema_version: summary.header.schema_version,
            format_version: summary.header.format_version,
            journal_seq: summary.journal_seq,
            created_at_ms: summary.header.created_at_ms,
            sha256: summary.sha256_hex(),
        });
    }
    let journal = summary
        .journal_seq
        .map_or_else(|| "empty".to_owned(), |seq| seq.to_string());
    print_line(&format!(
        "backup {backup_id} written to {}: {} bytes, {} entries in {} trees, schema version {}, journal position {journal}, taken {}\nsha256 {}",
        target.display(),
        summary.bytes,
        summary.entries,
        summary.trees,
        summary.header.schema_version,
        format_ms(summary.header.created_at_ms),
        summary.sha256_hex(),
    ))
}
