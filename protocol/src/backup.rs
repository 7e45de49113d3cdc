//! The backup file format: the one definition of the bytes an online backup
//! streams (`BackupChunk`s, concatenated), the admin CLI writes verbatim to
//! `flashsale.backup`, and `flashsale-server restore` reads back.
//!
//! ```text
//! header   magic "FSBACKUP" (8 bytes), format version u32, schema version u32,
//!          created_at_ms u64
//! records  0x01 tree:  name length u16, name (1 to 1024 bytes)
//!          0x02 entry: key length u32, key, value length u32, value
//!                      (an entry belongs to the tree record before it)
//! trailer  0xff, trees u32, entries u64, next_id u64, SHA-256 (32 bytes)
//! ```
//! Integers are big-endian and fixed-width. The SHA-256 covers every byte
//! before it, from the magic on; nothing may follow it. `next_id` is the
//! data dir's id generator when the stream ended: a restored data dir
//! generates ids above it. Trees come in any order but `journal`, which a
//! server streams last (see the README's "Backup and restore").
//!
//! [`BackupWriter`] produces the format (the server), [`BackupReader`]
//! verifies and reads it (the restore, and the CLI before it keeps a file);
//! neither holds more than one record in memory.

use sha2::{Digest, Sha256};
use std::io::Read;

/// The name of the backup file inside the directory the admin CLI is given.
pub const BACKUP_FILE_NAME: &str = "flashsale.backup";

/// The first 8 bytes of every backup file.
pub const MAGIC: [u8; 8] = *b"FSBACKUP";

/// The format version this crate writes and the only one it reads.
pub const FORMAT_VERSION: u32 = 1;

/// The tree whose last key is the server's journal position (a big-endian
/// batch sequence number).
pub const JOURNAL_TREE: &[u8] = b"journal";

/// Longest tree name, in bytes.
pub const MAX_TREE_NAME_LEN: usize = 1024;

/// Longest key, in bytes (sled keys are short; this only bounds a corrupt file).
pub const MAX_KEY_LEN: usize = 1 << 20;

/// Longest value, in bytes (bounds what a corrupt length makes the reader read).
pub const MAX_VALUE_LEN: usize = 256 << 20;

const TAG_TREE: u8 = 0x01;
const TAG_ENTRY: u8 = 0x02;
const TAG_TRAILER: u8 = 0xff;

/// Header length in bytes: magic, format version, schema version, creation time.
const HEADER_LEN: usize = 8 + 4 + 4 + 8;

/// Why a backup could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum BackupFormatError {
    /// Reading the file failed.
    #[error("cannot read the backup: {0}")]
    Io(#[source] std::io::Error),
    /// The file does not start with [`MAGIC`].
    #[error("not a flashsale backup (the file does not start with FSBACKUP)")]
    NotABackup,
    /// Another format version wrote the file.
    #[error(
        "backup format version {found} is not supported (this build reads version {supported})"
    )]
    UnsupportedFormat {
        /// The version in the file.
        found: u32,
        /// The version this build reads.
        supported: u32,
    },
    /// The file ends before its trailer: an interrupted copy or backup.
    #[error("the backup is truncated (it ends before its trailer)")]
    Truncated,
    /// A record is malformed.
    #[error("the backup is corrupt: {0}")]
    Corrupt(String),
    /// The trailer's counts disagree with the records.
    #[error("the backup is corrupt: its trailer says {stated} {what}, the file holds {found}")]
    CountMismatch {
        /// `trees` or `entries`.
        what: &'static str,
        /// What the trailer says.
        stated: u64,
        /// What was read.
        found: u64,
    },
    /// The SHA-256 in the trailer is not that of the file's bytes.
    #[error("the backup is corrupt: its SHA-256 checksum does not match its content")]
    ChecksumMismatch,
    /// A record too large for the format (writing).
    #[error("cannot write the backup: {0}")]
    TooLarge(String),
}

/// What a backup file's header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackupHeader {
    /// The format version ([`FORMAT_VERSION`]).
    pub format_version: u32,
    /// The data dir's schema version when the backup was taken.
    pub schema_version: u32,
    /// When the backup was taken, ms since the Unix epoch.
    pub created_at_ms: u64,
}

/// What a complete, verified backup holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupSummary {
    /// The header.
    pub header: BackupHeader,
    /// Length of the file in bytes.
    pub bytes: u64,
    /// Trees in it.
    pub trees: u32,
    /// Entries (key/value pairs) in it, all trees together.
    pub entries: u64,
    /// The data dir's id generator when the stream ended.
    pub next_id: u64,
    /// The last key of the [`JOURNAL_TREE`] when it is 8 bytes (the
    /// server's journal position); `None` when the journal is empty.
    pub journal_seq: Option<u64>,
    /// The SHA-256 of the file's bytes before the checksum.
    pub sha256: [u8; 32],
}

impl BackupSummary {
    /// The checksum as 64 lowercase hex characters.
    pub fn sha256_hex(&self) -> String {
        self.sha256.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Produces the format, record by record, into a caller's buffer (the
/// server sends the buffer on as chunks).
#[derive(Debug)]
pub struct BackupWriter {
    hasher: Sha256,
    header: BackupHeader,
    bytes: u64,
    trees: u32,
    entries: u64,
    in_tree: bool,
}

impl BackupWriter {
    /// Starts a backup: appends the header to `out`.
    pub fn start(schema_version: u32, created_at_ms: u64, out: &mut Vec<u8>) -> Self {
        let header = BackupHeader {
            format_version: FORMAT_VERSION,
            schema_version,
            created_at_ms,
        };
        let mut writer = Self {
            hasher: Sha256::new(),
            header,
            bytes: 0,
            trees: 0,
            entries: 0,
            in_tree: false,
        };
        let mut bytes = Vec::with_capacity(HEADER_LEN);
        bytes.extend_from_slice(&MAGIC);
        bytes.extend_from_slice(&FORMAT_VERSION.to_be_bytes());
        bytes.extend_from_slice(&schema_version.to_be_bytes());
        bytes.extend_from_slice(&created_at_ms.to_be_bytes());
        writer.emit(&bytes, out);
        writer
    }

    fn emit(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        self.hasher.update(bytes);
        self.bytes += bytes.len() as u64;
        out.extend_from_slice(bytes);
    }

    /// Appends a tree record: the entries after it belong to `name`.
    ///
    /// # Errors
    /// [`BackupFormatError::TooLarge`] for an empty name or one over
    /// [`MAX_TREE_NAME_LEN`] bytes.
    pub fn tree(&mut self, name: &[u8], out: &mut Vec<u8>) -> Result<(), BackupFormatError> {
        let len = u16::try_from(name.len())
            .ok()
            .filter(|&len| len > 0 && usize::from(len) <= MAX_TREE_NAME_LEN)
            .ok_or_else(|| {
                BackupFormatError::TooLarge(format!("a tree name of {} bytes", name.len()))
            })?;
        self.emit(&[TAG_TREE], out);
        self.emit(&len.to_be_bytes(), out);
        self.emit(name, out);
        self.trees += 1;
        self.in_tree = true;
        Ok(())
    }

    /// Appends an entry of the last tree.
    ///
    /// # Errors
    /// [`BackupFormatError::TooLarge`] for a key or value over the format's
    /// limits, or an entry before any tree.
    pub fn entry(
        &mut self,
        key: &[u8],
        value: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), BackupFormatError> {
        if !self.in_tree {
            return Err(BackupFormatError::TooLarge(
                "an entry before any tree".into(),
            ));
        }
        let key_len = length(key.len(), MAX_KEY_LEN, "key")?;
        let value_len = length(value.len(), MAX_VALUE_LEN, "value")?;
        self.emit(&[TAG_ENTRY], out);
        self.emit(&key_len.to_be_bytes(), out);
        self.emit(key, out);
        self.emit(&value_len.to_be_bytes(), out);
        self.emit(value, out);
        self.entries += 1;
        Ok(())
    }

    /// Appends the trailer and returns the counts written. `journal_seq`
    /// is what the caller streamed as the journal's last key, for its log.
    pub fn finish(
        mut self,
        next_id: u64,
        journal_seq: Option<u64>,
        out: &mut Vec<u8>,
    ) -> BackupSummary {
        self.emit(&[TAG_TRAILER], out);
        self.emit(&self.trees.to_be_bytes(), out);
        self.emit(&self.entries.to_be_bytes(), out);
        self.emit(&next_id.to_be_bytes(), out);
        let sha256: [u8; 32] = self.hasher.finalize().into();
        out.extend_from_slice(&sha256);
        BackupSummary {
            header: self.header,
            bytes: self.bytes + 32,
            trees: self.trees,
            entries: self.entries,
            next_id,
            journal_seq,
            sha256,
        }
    }
}

/// `len` as a u32 length field, if within `max`.
fn length(len: usize, max: usize, what: &str) -> Result<u32, BackupFormatError> {
    u32::try_from(len)
        .ok()
        .filter(|_| len <= max)
        .ok_or_else(|| BackupFormatError::TooLarge(format!("a {what} of {len} bytes")))
}

/// One record of a backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackupItem {
    /// The entries that follow belong to this tree.
    Tree(Vec<u8>),
    /// A key and its value in the last tree.
    Entry {
        /// The key.
        key: Vec<u8>,
        /// The value.
        value: Vec<u8>,
    },
}

/// Reads and verifies a backup record by record. The trailer's counts and
/// checksum are checked when the reader reaches it: only a reader that
/// returned `Ok(None)` has read a complete, intact backup.
#[derive(Debug)]
pub struct BackupReader<R> {
    inner: R,
    hasher: Sha256,
    header: BackupHeader,
    bytes: u64,
    trees: u32,
    entries: u64,
    /// The tree the next entries belong to.
    tree: Option<Vec<u8>>,
    journal_seq: Option<u64>,
    summary: Option<BackupSummary>,
}

impl<R: Read> BackupReader<R> {
    /// Reads and checks the header.
    ///
    /// # Errors
    /// [`BackupFormatError::NotABackup`], [`BackupFormatError::UnsupportedFormat`],
    /// [`BackupFormatError::Truncated`] or an I/O error.
    pub fn new(inner: R) -> Result<Self, BackupFormatError> {
        let mut reader = Self {
            inner,
            hasher: Sha256::new(),
            header: BackupHeader {
                format_version: 0,
                schema_version: 0,
                created_at_ms: 0,
            },
            bytes: 0,
            trees: 0,
            entries: 0,
            tree: None,
            journal_seq: None,
            summary: None,
        };
        let magic: [u8; 8] = reader.array().map_err(|e| match e {
            BackupFormatError::Truncated => BackupFormatError::NotABackup,
            other => other,
        })?;
        if magic != MAGIC {
            return Err(BackupFormatError::NotABackup);
        }
        let format_version = u32::from_be_bytes(reader.array()?);
        if format_version != FORMAT_VERSION {
            return Err(BackupFormatError::UnsupportedFormat {
                found: format_version,
                supported: FORMAT_VERSION,
            });
        }
        reader.header = BackupHeader {
            format_version,
            schema_version: u32::from_be_bytes(reader.array()?),
            created_at_ms: u64::from_be_bytes(reader.array()?),
        };
        Ok(reader)
    }

    /// The header.
    pub fn header(&self) -> BackupHeader {
        self.header
    }

    /// The next record; `Ok(None)` once the trailer was read and verified.
    ///
    /// # Errors
    /// The file is truncated, corrupt (a bad record, counts or checksum),
    /// has bytes after its trailer, or cannot be read.
    pub fn next_item(&mut self) -> Result<Option<BackupItem>, BackupFormatError> {
        if self.summary.is_some() {
            return Ok(None);
        }
        let [tag] = self.array()?;
        match tag {
            TAG_TREE => {
                let len = usize::from(u16::from_be_bytes(self.array()?));
                if len == 0 || len > MAX_TREE_NAME_LEN {
                    return Err(BackupFormatError::Corrupt(format!(
                        "a tree name of {len} bytes"
                    )));
                }
                let name = self.vec(len)?;
                self.trees += 1;
                self.tree = Some(name.clone());
                Ok(Some(BackupItem::Tree(name)))
            }
            TAG_ENTRY => {
                let Some(tree) = &self.tree else {
                    return Err(BackupFormatError::Corrupt(
                        "an entry before any tree".into(),
                    ));
                };
                let is_journal = tree.as_slice() == JOURNAL_TREE;
                let key = self.field(MAX_KEY_LEN, "key")?;
                let value = self.field(MAX_VALUE_LEN, "value")?;
                self.entries += 1;
                if is_journal {
                    self.journal_seq = <[u8; 8]>::try_from(key.as_slice())
                        .ok()
                        .map(u64::from_be_bytes);
                }
                Ok(Some(BackupItem::Entry { key, value }))
            }
            TAG_TRAILER => {
                self.trailer()?;
                Ok(None)
            }
            other => Err(BackupFormatError::Corrupt(format!(
                "unknown record tag {other:#04x} at byte {}",
                self.bytes - 1
            ))),
        }
    }

    /// Reads to the end, verifying everything; the summary of the backup.
    ///
    /// # Errors
    /// As [`BackupReader::next_item`].
    pub fn verify_all(mut self) -> Result<BackupSummary, BackupFormatError> {
        while self.next_item()?.is_some() {}
        self.summary.ok_or(BackupFormatError::Truncated)
    }

    /// The summary, once the trailer was read and verified.
    pub fn summary(&self) -> Option<&BackupSummary> {
        self.summary.as_ref()
    }

    fn trailer(&mut self) -> Result<(), BackupFormatError> {
        let trees = u32::from_be_bytes(self.array()?);
        let entries = u64::from_be_bytes(self.array()?);
        let next_id = u64::from_be_bytes(self.array()?);
        let computed: [u8; 32] = std::mem::take(&mut self.hasher).finalize().into();
        let mut stated = [0u8; 32];
        self.inner
            .read_exact(&mut stated)
            .map_err(eof_is_truncation)?;
        if stated != computed {
            return Err(BackupFormatError::ChecksumMismatch);
        }
        if trees != self.trees {
            return Err(BackupFormatError::CountMismatch {
                what: "trees",
                stated: trees.into(),
                found: self.trees.into(),
            });
        }
        if entries != self.entries {
            return Err(BackupFormatError::CountMismatch {
                what: "entries",
                stated: entries,
                found: self.entries,
            });
        }
        let mut extra = [0u8; 1];
        if self.inner.read(&mut extra).map_err(BackupFormatError::Io)? != 0 {
            return Err(BackupFormatError::Corrupt("bytes after the trailer".into()));
        }
        self.summary = Some(BackupSummary {
            header: self.header,
            bytes: self.bytes + 32,
            trees,
            entries,
            next_id,
            journal_seq: self.journal_seq,
            sha256: computed,
        });
        Ok(())
    }

    /// A length-prefixed field of at most `max` bytes.
    fn field(&mut self, max: usize, what: &str) -> Result<Vec<u8>, BackupFormatError> {
        let len = u32::from_be_bytes(self.array()?);
        let len = usize::try_from(len)
            .ok()
            .filter(|&len| len <= max)
            .ok_or_else(|| BackupFormatError::Corrupt(format!("a {what} of {len} bytes")))?;
        self.vec(len)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], BackupFormatError> {
        let mut bytes = [0u8; N];
        self.inner
            .read_exact(&mut bytes)
            .map_err(eof_is_truncation)?;
        self.hasher.update(bytes);
        self.bytes += N as u64;
        Ok(bytes)
    }

    /// `len` bytes; memory grows with the bytes actually read, never with
    /// the length a corrupt file claims.
    fn vec(&mut self, len: usize) -> Result<Vec<u8>, BackupFormatError> {
        let mut bytes = Vec::new();
        let want = len as u64;
        let read = (&mut self.inner)
            .take(want)
            .read_to_end(&mut bytes)
            .map_err(BackupFormatError::Io)?;
        if read != len {
            return Err(BackupFormatError::Truncated);
        }
        self.hasher.update(&bytes);
        self.bytes += want;
        Ok(bytes)
    }
}

fn eof_is_truncation(e: std::io::Error) -> BackupFormatError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        BackupFormatError::Truncated
    } else {
        BackupFormatError::Io(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (Vec<u8>, BackupSummary) {
        let mut out = Vec::new();
        let mut writer = BackupWriter::start(2, 1_700_000_000_000, &mut out);
        writer.tree(b"meta", &mut out).expect("tree");
        writer
            .entry(b"schema_version", &2u32.to_be_bytes(), &mut out)
            .expect("entry");
        writer.tree(b"empty", &mut out).expect("tree");
        writer.tree(JOURNAL_TREE, &mut out).expect("tree");
        writer
            .entry(&7u64.to_be_bytes(), b"batch 7", &mut out)
            .expect("entry");
        writer
            .entry(&8u64.to_be_bytes(), b"", &mut out)
            .expect("entry");
        let summary = writer.finish(42, Some(8), &mut out);
        (out, summary)
    }

    #[test]
    fn what_the_writer_writes_the_reader_reads_back_with_the_same_summary() {
        let (bytes, written) = sample();
        assert_eq!(written.bytes, bytes.len() as u64);
        let mut reader = BackupReader::new(bytes.as_slice()).expect("header");
        assert_eq!(reader.header().schema_version, 2);
        let mut items = Vec::new();
        while let Some(item) = reader.next_item().expect("item") {
            items.push(item);
        }
        assert_eq!(items.len(), 6);
        assert_eq!(items[0], BackupItem::Tree(b"meta".to_vec()));
        assert_eq!(
            items[5],
            BackupItem::Entry {
                key: 8u64.to_be_bytes().to_vec(),
                value: Vec::new()
            }
        );
        let read = reader.summary().expect("verified").clone();
        assert_eq!(read, written);
        assert_eq!((read.trees, read.entries, read.next_id), (3, 3, 42));
        assert_eq!(read.journal_seq, Some(8));
    }

    #[test]
    fn every_truncation_is_refused() {
        let (bytes, _) = sample();
        for len in 0..bytes.len() {
            let result = BackupReader::new(&bytes[..len]).and_then(BackupReader::verify_all);
            assert!(
                matches!(
                    result,
                    Err(BackupFormatError::Truncated | BackupFormatError::NotABackup)
                ),
                "{len} bytes: {result:?}"
            );
        }
    }

    #[test]
    fn every_flipped_byte_is_refused() {
        let (bytes, _) = sample();
        for at in 0..bytes.len() {
            let mut corrupt = bytes.clone();
            corrupt[at] ^= 0x40;
            let result = BackupReader::new(corrupt.as_slice()).and_then(BackupReader::verify_all);
            assert!(result.is_err(), "a flipped byte {at} was accepted");
        }
    }

    #[test]
    fn bytes_after_the_trailer_and_another_format_version_are_refused() {
        let (mut bytes, _) = sample();
        let mut newer = bytes.clone();
        newer[8..12].copy_from_slice(&(FORMAT_VERSION + 1).to_be_bytes());
        assert!(matches!(
            BackupReader::new(newer.as_slice()),
            Err(BackupFormatError::UnsupportedFormat { found, .. }) if found == FORMAT_VERSION + 1
        ));
        bytes.push(0);
        assert!(matches!(
            BackupReader::new(bytes.as_slice()).and_then(BackupReader::verify_all),
            Err(BackupFormatError::Corrupt(_))
        ));
        assert!(matches!(
            BackupReader::new(b"PK\x03\x04 a zip file".as_slice()),
            Err(BackupFormatError::NotABackup)
        ));
    }

    #[test]
    fn a_corrupt_length_does_not_allocate_what_it_claims() {
        let mut out = Vec::new();
        let mut writer = BackupWriter::start(2, 0, &mut out);
        writer.tree(b"t", &mut out).expect("tree");
        out.push(TAG_ENTRY);
        out.extend_from_slice(&u32::MAX.to_be_bytes());
        let mut reader = BackupReader::new(out.as_slice()).expect("header");
        assert!(matches!(reader.next_item(), Ok(Some(BackupItem::Tree(_)))));
        assert!(matches!(
            reader.next_item(),
            Err(BackupFormatError::Corrupt(_))
        ));
    }
}
