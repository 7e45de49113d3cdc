//! Online backup: [`Client::backup`] streams a consistent copy of the
//! server's data dir while the sale goes on, as the bytes of a backup file
//! ([`flashsale_protocol::backup`] defines the format and verifies it).
//!
//! The backup runs on a connection of its own, opened for it and resuming
//! this client's session: the server binds a backup to the connection that
//! began it, so the pool's connections stay free for other requests, and
//! dropping the [`BackupStream`] closes its connection, which ends the
//! backup on the server at once.

use super::Client;
use crate::connection::Connection;
use crate::error::{ClientError, Result};
use flashsale_protocol::{Reply, RequestBody};

/// A backup being streamed: call [`BackupStream::next_chunk`] until it
/// returns `None`; the chunks, concatenated, are the backup file.
pub struct BackupStream {
    /// The backup's own connection.
    conn: Connection,
    /// The server's id of the backup.
    backup_id: u64,
    /// The file format of the chunks.
    format_version: u32,
    /// The data dir's schema version.
    schema_version: u32,
    /// Bytes received so far.
    bytes: u64,
    /// The last chunk was received.
    done: bool,
}

impl std::fmt::Debug for BackupStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackupStream")
            .field("backup_id", &self.backup_id)
            .field("format_version", &self.format_version)
            .field("schema_version", &self.schema_version)
            .field("bytes", &self.bytes)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Admin: begins an online backup of the server's data dir. Everything
    /// the server answered before this returns is in the backup; the sale
    /// goes on meanwhile. The backup streams on a new connection with this
    /// client's session.
    ///
    /// # Errors
    /// `Forbidden` for non-admins, `Unauthenticated` without a session,
    /// `Overloaded` while another backup runs (the server allows
    /// `--max-backups`, 1 by default), or the connection failed.
    pub async fn backup(&self) -> Result<BackupStream> {
        let conn = self.inner.open_any().await?;
        if let Some(token) = self.token() {
            conn.request(RequestBody::Resume { token }, None).await?;
        }
        let reply = conn.request(RequestBody::BackupBegin, None).await?;
        let (backup_id, format_version, schema_version) = expect_reply!(
            reply,
            Reply::BackupStarted {
                backup_id,
                format_version,
                schema_version,
            } => (backup_id, format_version, schema_version)
        )?;
        Ok(BackupStream {
            conn,
            backup_id,
            format_version,
            schema_version,
            bytes: 0,
            done: false,
        })
    }
}

impl BackupStream {
    /// The server's id of this backup.
    pub fn backup_id(&self) -> u64 {
        self.backup_id
    }

    /// The file format of the chunks ([`flashsale_protocol::backup::FORMAT_VERSION`]
    /// for a server of this version).
    pub fn format_version(&self) -> u32 {
        self.format_version
    }

    /// The schema version of the server's data dir.
    pub fn schema_version(&self) -> u32 {
        self.schema_version
    }

    /// Bytes received so far.
    pub fn bytes_received(&self) -> u64 {
        self.bytes
    }

    /// The next bytes of the backup file; `None` after the last chunk.
    ///
    /// # Errors
    /// The server failed (`Internal`) or the connection was lost: the
    /// backup is incomplete and over; begin another.
    pub async fn next_chunk(&mut self) -> Result<Option<Vec<u8>>> {
        if self.done {
            return Ok(None);
        }
        let reply = self
            .conn
            .request(
                RequestBody::BackupNext {
                    backup_id: self.backup_id,
                },
                None,
            )
            .await?;
        let (data, last) = expect_reply!(reply, Reply::BackupChunk { data, last } => (data, last))?;
        self.done = last;
        self.bytes += data.len() as u64;
        Ok(Some(data))
    }
}
