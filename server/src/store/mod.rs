//! The sled data dir: trees, key encoding, record encoding and the schema version.
//!
//! Trees:
//! - `meta`: schema version and the cart checkpoint (see [`crate::sale::journal`]);
//! - `users`: user name → [`UserRecord`];
//! - `sessions`: session token → [`SessionRecord`];
//! - `carts`: user id (big-endian) → [`CartRecord`];
//! - `api_keys`: key id → [`ApiKeyRecord`] (the key's hash, never the key);
//! - `partner_buyers`: partner id (big-endian) + buyer reference → buyer user id;
//! - `journal`: batch sequence number (big-endian) → the batch's events
//!   ([`crate::sale::book::Event`]), the source of truth for products, stock and orders.

pub(crate) mod syncer;

use crate::error::ServerError;
use flashsale_protocol::{OrderId, OrderLine, Role, UserId};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::fs::File;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Schema version this build writes and the newest it reads.
pub(crate) const SCHEMA_VERSION: u32 = 1;

const SCHEMA_KEY: &[u8] = b"schema_version";

/// The opened data dir.
#[derive(Clone)]
pub struct Store {
    /// The database; flushed by the journal after each batch.
    pub(crate) db: sled::Db,
    /// user name → [`UserRecord`].
    pub(crate) users: sled::Tree,
    /// token → [`SessionRecord`].
    pub(crate) sessions: sled::Tree,
    /// user id → [`CartRecord`].
    pub(crate) carts: sled::Tree,
    /// key id → [`ApiKeyRecord`].
    pub(crate) api_keys: sled::Tree,
    /// partner id + buyer reference → buyer id.
    pub(crate) partner_buyers: sled::Tree,
    /// batch sequence → events.
    pub journal: sled::Tree,
    /// Small named values.
    pub(crate) meta: sled::Tree,
    /// sled's data file, `fdatasync`ed after each flush (sled's own flush
    /// uses `sync_file_range`, which does not empty the drive's cache).
    pub(crate) data_file: Arc<File>,
}

/// A user account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct UserRecord {
    /// The account id.
    pub(crate) id: UserId,
    /// Unique name.
    pub(crate) username: String,
    /// What it may do.
    pub(crate) role: Role,
    /// argon2id PHC string.
    pub(crate) password_hash: String,
}

/// A logged-in session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SessionRecord {
    /// The account.
    pub(crate) user_id: UserId,
    /// Its name.
    pub(crate) username: String,
    /// Its role when the session was created.
    pub(crate) role: Role,
    /// Creation time, ms since the epoch.
    pub(crate) created_at_ms: u64,
    /// The API key that opened it (partners); revoking the key ends the session.
    pub(crate) api_key_id: Option<String>,
}

/// A partner's API key, as stored: only a hash of the secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ApiKeyRecord {
    /// The partner account it logs in as.
    pub(crate) partner_id: UserId,
    /// That account's name.
    pub(crate) partner_name: String,
    /// argon2id PHC string of the key's secret part.
    pub(crate) secret_hash: String,
    /// Creation time, ms since the epoch.
    pub(crate) created_at_ms: u64,
    /// Set when revoked; a revoked key neither logs in nor resumes.
    pub(crate) revoked: bool,
}

/// A buyer's cart.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub(crate) struct CartRecord {
    /// One line per product, sorted by product id.
    pub(crate) lines: Vec<OrderLine>,
    /// The newest confirmed cart order already taken out of this cart;
    /// makes re-applying an order after a crash harmless.
    pub(crate) last_order_applied: OrderId,
}

/// Longest single wait for sled's file lock before the data dir counts as in use.
const LOCK_RETRY_LIMIT: Duration = Duration::from_millis(640);

fn open_sled(dir: &Path) -> Result<sled::Db, ServerError> {
    sled::Config::new()
        .path(dir)
        .cache_capacity(256 * 1024 * 1024)
        .mode(sled::Mode::HighThroughput)
        .open()
        .map_err(|e| match e {
            sled::Error::Io(io)
                if io.kind() == std::io::ErrorKind::WouldBlock
                    || io.to_string().contains("lock") =>
            {
                ServerError::DataDirLocked(dir.display().to_string())
            }
            other => ServerError::Storage(other),
        })
}

impl Store {
    /// Opens (or creates) the data dir and checks its schema version.
    ///
    /// # Errors
    /// [`ServerError::DataDirLocked`] when another process has it open,
    /// [`ServerError::SchemaTooNew`] when a newer flashsale wrote it.
    pub fn open(dir: &Path) -> Result<Self, ServerError> {
        std::fs::create_dir_all(dir)?;
        // sled closes its data file (and so releases its lock) from a
        // background thread just after the last handle is dropped: a reopen
        // in the same process may find the lock held for a moment.
        let mut wait = Duration::from_millis(10);
        let db = loop {
            match open_sled(dir) {
                Err(ServerError::DataDirLocked(_)) if wait <= LOCK_RETRY_LIMIT => {
                    std::thread::sleep(wait);
                    wait *= 2;
                }
                other => break other?,
            }
        };
        let store = Self {
            users: db.open_tree("users")?,
            sessions: db.open_tree("sessions")?,
            carts: db.open_tree("carts")?,
            api_keys: db.open_tree("api_keys")?,
            partner_buyers: db.open_tree("partner_buyers")?,
            journal: db.open_tree("journal")?,
            meta: db.open_tree("meta")?,
            data_file: Arc::new(File::open(dir.join("db"))?),
            db,
        };
        store.check_schema()?;
        Ok(store)
    }

    fn check_schema(&self) -> Result<(), ServerError> {
        match self.meta.get(SCHEMA_KEY)? {
            None => {
                self.meta
                    .insert(SCHEMA_KEY, &SCHEMA_VERSION.to_be_bytes())?;
                self.db.flush()?;
                Ok(())
            }
            Some(raw) => {
                let found = <[u8; 4]>::try_from(raw.as_ref())
                    .map(u32::from_be_bytes)
                    .map_err(|_| ServerError::Corrupt {
                        tree: "meta",
                        reason: "schema version is not 4 bytes".into(),
                    })?;
                if found > SCHEMA_VERSION {
                    return Err(ServerError::SchemaTooNew {
                        found,
                        supported: SCHEMA_VERSION,
                    });
                }
                Ok(())
            }
        }
    }

    /// Reads a u64 from `meta`, 0 when absent.
    pub(crate) fn meta_u64(&self, key: &str) -> Result<u64, ServerError> {
        Ok(self
            .meta
            .get(key)?
            .and_then(|raw| <[u8; 8]>::try_from(raw.as_ref()).ok())
            .map_or(0, u64::from_be_bytes))
    }

    /// Flushes sled and forces the data file to the device.
    ///
    /// # Errors
    /// Any I/O error: the caller must treat the unflushed writes as lost.
    pub fn sync(&self) -> Result<(), ServerError> {
        self.db.flush()?;
        self.data_file.sync_data()?;
        Ok(())
    }
}

/// Big-endian key of an id, so sled iterates in id order.
pub(crate) fn id_key(id: u64) -> [u8; 8] {
    id.to_be_bytes()
}

/// Encodes a record for sled.
///
/// # Errors
/// [`ServerError::Encode`] if serde refuses the value.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, ServerError> {
    bincode::serde::encode_to_vec(value, bincode::config::standard())
        .map_err(|e| ServerError::Encode(e.to_string()))
}

/// Decodes a record read from `tree`.
///
/// # Errors
/// [`ServerError::Corrupt`] when the bytes are not a valid record.
pub(crate) fn decode<T: DeserializeOwned>(
    tree: &'static str,
    raw: &[u8],
) -> Result<T, ServerError> {
    bincode::serde::decode_from_slice(raw, bincode::config::standard())
        .map(|(value, _)| value)
        .map_err(|e| ServerError::Corrupt {
            tree,
            reason: e.to_string(),
        })
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_data_dir_of_a_newer_schema_is_refused() {
        let dir = tempfile::TempDir::new().expect("temp dir");
        {
            let store = Store::open(dir.path()).expect("fresh data dir");
            store
                .meta
                .insert(SCHEMA_KEY, &(SCHEMA_VERSION + 1).to_be_bytes())
                .expect("write");
            store.db.flush().expect("flush");
        }
        match Store::open(dir.path()) {
            Err(ServerError::SchemaTooNew { found, supported }) => {
                assert_eq!((found, supported), (SCHEMA_VERSION + 1, SCHEMA_VERSION));
            }
            other => panic!("expected SchemaTooNew, got {:?}", other.map(|_| ())),
        }
    }

    #[test]
    fn a_fresh_data_dir_records_the_schema_version() {
        let dir = tempfile::TempDir::new().expect("temp dir");
        let store = Store::open(dir.path()).expect("fresh data dir");
        let raw = store.meta.get(SCHEMA_KEY).expect("read").expect("written");
        assert_eq!(raw.as_ref(), SCHEMA_VERSION.to_be_bytes());
    }
}
