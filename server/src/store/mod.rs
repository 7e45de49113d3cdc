//! The sled data dir: trees, key encoding, record encoding and the schema version.
//!
//! Trees:
//! - `meta`: schema version and the cart checkpoint (see [`crate::sale::journal`]);
//! - `users`: user name → [`UserRecord`];
//! - `sessions`: SHA-256 of the session token → [`SessionRecord`] (never
//!   the token: a copy of the data dir resumes no session);
//! - `sessions_by_user`: user id, creation ms and token hash → () (an
//!   account's sessions, oldest first);
//! - `carts`: user id (big-endian) → [`CartRecord`];
//! - `api_keys`: key id → [`ApiKeyRecord`] (the key's hash, never the key);
//! - `partner_buyers`: partner id (big-endian) and buyer reference → buyer
//!   user id, and partner id alone → the partner's count of references;
//! - `journal`: batch sequence number (big-endian) → the batch's events
//!   ([`crate::sale::book::Event`]): every decision after the last checkpoint;
//! - `checkpoint`: the sequencer's hot state as of a journal sequence, in
//!   chunks, and its head (see `crate::sale::checkpoint`);
//! - `order_chunks`, `buyer_orders`, `partner_orders`, `product_orders`,
//!   `order_keys`: the order history, orders packed by id and indexes
//!   packed per owner (see [`crate::sale::tables`]). Written by the
//!   materialiser from the journal, off the hot path.

pub(crate) mod backup;
pub(crate) mod side;
pub(crate) mod sync_clock;
pub(crate) mod syncer;

use crate::error::ServerError;
use flashsale_protocol::{OrderId, OrderLine, Role, UserId};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::fs::File;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Schema version this build writes and the newest it reads.
pub(crate) const SCHEMA_VERSION: u32 = 4;

/// Version 3: one sled entry per order in `orders` and in each index
/// (`orders_by_buyer`, `orders_by_partner`, `orders_by_product`), and every
/// key in `order_keys`. Opening it packs them into the version-4 tables
/// ([`crate::sale::tables::migrate_v3`]).
pub(crate) const SCHEMA_V3: u32 = 3;

/// The version-3 trees a version-4 dir no longer has.
pub(crate) const V3_TREES: [&str; 4] = [
    "orders",
    "orders_by_buyer",
    "orders_by_partner",
    "orders_by_product",
];

/// Version 2: the journal from its first record, no checkpoint, no order
/// tables. Opening it needs no rewrite: the start replays the whole journal
/// (once) and the materialiser fills the tables; a build of version 2 must
/// not open a version 3 dir, whose journal no longer starts at the first
/// record.
const SCHEMA_V2: u32 = 2;

/// Version 1: users without `disabled` and `sessions_epoch`, sessions keyed
/// by the token itself. Opening it migrates to version 2 ([`migrate_v1`]).
const SCHEMA_V1: u32 = 1;

const SCHEMA_KEY: &[u8] = b"schema_version";

/// The opened data dir.
#[derive(Clone)]
pub struct Store {
    /// The database; flushed by the journal after each batch.
    pub(crate) db: sled::Db,
    /// user name → [`UserRecord`].
    pub(crate) users: sled::Tree,
    /// SHA-256 of the token → [`SessionRecord`].
    pub(crate) sessions: sled::Tree,
    /// user id + creation ms + SHA-256 of the token → (): each account's
    /// sessions, oldest first (see `crate::accounts::auth`).
    pub(crate) sessions_by_user: sled::Tree,
    /// user id → [`CartRecord`].
    pub(crate) carts: sled::Tree,
    /// key id → [`ApiKeyRecord`].
    pub(crate) api_keys: sled::Tree,
    /// partner id + buyer reference → buyer id.
    pub(crate) partner_buyers: sled::Tree,
    /// batch sequence → events.
    pub journal: sled::Tree,
    /// The checkpoint: head and chunks of the hot state.
    pub(crate) checkpoint: sled::Tree,
    /// Orders packed by id (see [`crate::sale::tables`]).
    pub(crate) order_chunks: sled::Tree,
    /// Each buyer's order ids, keys and times, in chunks.
    pub(crate) buyer_orders: sled::Tree,
    /// Each partner's order ids, in chunks.
    pub(crate) partner_orders: sled::Tree,
    /// Each product's order ids, in chunks.
    pub(crate) product_orders: sled::Tree,
    /// buyer id + idempotency key → order id, fingerprint and decision
    /// time, for buyers with many orders.
    pub(crate) order_keys: sled::Tree,
    /// Held for reading by an online backup for its whole stream, taken for
    /// writing (with `try_write`, never waiting) by a checkpoint while it
    /// replaces the checkpoint and truncates the journal: a backup's
    /// checkpoint and journal always fit together.
    pub(crate) backup_gate: Arc<std::sync::RwLock<()>>,
    /// Small named values.
    pub(crate) meta: sled::Tree,
    /// sled's data file, `fdatasync`ed after each flush (sled's own flush
    /// uses `sync_file_range`, which does not empty the drive's cache).
    pub(crate) data_file: Arc<File>,
    /// Tickets of the syncs, so the journal's and the syncer's share work.
    pub(crate) syncs: Arc<sync_clock::SyncClock>,
    /// In a cluster, the outbox to the replicated log that side-table
    /// writes are recorded in (see [`side`]); unset on a single server.
    pub(crate) replica: Arc<std::sync::OnceLock<Arc<crate::cluster::outbox::Outbox>>>,
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
    /// A disabled account cannot log in, resume or be acted for (schema 2).
    pub(crate) disabled: bool,
    /// Bumped whenever every session of the account ends (disable, new
    /// password, `EndSessions`): a session opened under an older epoch is
    /// dead, even one whose login was in flight during the change (schema 2).
    pub(crate) sessions_epoch: u64,
}

/// A user account as schema version 1 stored it (bincode is not
/// self-describing: old records must be decoded with the old shape).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct UserRecordV1 {
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
    /// The account's [`UserRecord::sessions_epoch`] at login: the session
    /// is live only while the account still has that epoch.
    pub(crate) epoch: u64,
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
            sessions_by_user: db.open_tree("sessions_by_user")?,
            carts: db.open_tree("carts")?,
            api_keys: db.open_tree("api_keys")?,
            partner_buyers: db.open_tree("partner_buyers")?,
            journal: db.open_tree("journal")?,
            checkpoint: db.open_tree("checkpoint")?,
            order_chunks: db.open_tree("order_chunks")?,
            buyer_orders: db.open_tree("buyer_orders")?,
            partner_orders: db.open_tree("partner_orders")?,
            product_orders: db.open_tree("product_orders")?,
            order_keys: db.open_tree("order_keys")?,
            backup_gate: Arc::default(),
            meta: db.open_tree("meta")?,
            data_file: Arc::new(File::open(dir.join("db"))?),
            syncs: Arc::default(),
            replica: Arc::default(),
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
                if found == SCHEMA_V1 {
                    self.migrate_v1()?;
                } else if found == SCHEMA_V2 {
                    self.meta
                        .insert(SCHEMA_KEY, &SCHEMA_VERSION.to_be_bytes())?;
                    self.sync()?;
                    tracing::info!("data dir upgraded from schema 2: its journal is replayed once and materialised into order tables");
                } else if found == SCHEMA_V3 {
                    let orders = crate::sale::tables::migrate_v3(self)?;
                    self.meta
                        .insert(SCHEMA_KEY, &SCHEMA_VERSION.to_be_bytes())?;
                    self.sync()?;
                    tracing::info!(
                        orders,
                        "data dir upgraded from schema 3: order tables packed"
                    );
                }
                self.drop_v3_trees()
            }
        }
    }

    /// Drops the version-3 order trees once the version says they were
    /// migrated (a crash may have left them behind).
    fn drop_v3_trees(&self) -> Result<(), ServerError> {
        let names = self.db.tree_names();
        for old in V3_TREES {
            if names.iter().any(|n| n.as_ref() == old.as_bytes()) {
                self.db.drop_tree(old)?;
            }
        }
        Ok(())
    }

    /// Version 1 → 2: rewrites every user record with `disabled: false`
    /// and epoch 0, and drops every session (version 1 keyed them by the
    /// token itself; their users log in again). The version is written
    /// last, after the rewritten records are on disk, so a crash midway
    /// runs the migration again: records already in the new shape are
    /// recognised and left alone.
    fn migrate_v1(&self) -> Result<(), ServerError> {
        let mut rewritten = 0u64;
        for item in self.users.iter() {
            let (name, raw) = item?;
            if decode::<UserRecord>("users", &raw).is_ok_and(|r| r.username.as_bytes() == &*name) {
                continue;
            }
            let old: UserRecordV1 = decode("users", &raw)?;
            let new = UserRecord {
                id: old.id,
                username: old.username,
                role: old.role,
                password_hash: old.password_hash,
                disabled: false,
                sessions_epoch: 0,
            };
            self.users.insert(name, encode(&new)?)?;
            rewritten += 1;
        }
        let sessions = self.sessions.len();
        self.sessions.clear()?;
        self.sync()?;
        self.meta
            .insert(SCHEMA_KEY, &SCHEMA_VERSION.to_be_bytes())?;
        self.sync()?;
        tracing::info!(
            users = rewritten,
            sessions_dropped = sessions,
            "data dir migrated from schema 1 to 2; old sessions must log in again"
        );
        Ok(())
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
        // The ticket is taken before the flush: this sync covers every
        // write made before it (see [`sync_clock`]).
        let ticket = self.syncs.begin();
        let synced = self
            .db
            .flush()
            .map_err(ServerError::from)
            .and_then(|_| self.data_file.sync_data().map_err(ServerError::from));
        self.syncs.end(ticket, synced.is_ok());
        synced
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
    fn a_schema_1_data_dir_is_migrated_even_when_a_crash_left_it_half_done() {
        let dir = tempfile::TempDir::new().expect("temp dir");
        {
            let db = sled::open(dir.path()).expect("sled");
            let meta = db.open_tree("meta").expect("meta");
            meta.insert(SCHEMA_KEY, &SCHEMA_V1.to_be_bytes())
                .expect("version");
            let users = db.open_tree("users").expect("users");
            let old = UserRecordV1 {
                id: UserId(1),
                username: "old".into(),
                role: Role::Buyer,
                password_hash: "$argon2id$old".into(),
            };
            users
                .insert("old", encode(&old).expect("encode"))
                .expect("insert");
            // Rewritten by a migration that crashed before the version was written.
            let done = UserRecord {
                id: UserId(2),
                username: "done".into(),
                role: Role::Admin,
                password_hash: "$argon2id$done".into(),
                disabled: true,
                sessions_epoch: 3,
            };
            users
                .insert("done", encode(&done).expect("encode"))
                .expect("insert");
            let sessions = db.open_tree("sessions").expect("sessions");
            sessions
                .insert("a-v1-token", b"whatever".as_slice())
                .expect("insert");
            db.flush().expect("flush");
        }
        let store = Store::open(dir.path()).expect("migrated");
        let old: UserRecord = decode(
            "users",
            &store.users.get("old").expect("read").expect("kept"),
        )
        .expect("v2");
        assert_eq!(
            (old.id, old.disabled, old.sessions_epoch),
            (UserId(1), false, 0)
        );
        assert_eq!(old.password_hash, "$argon2id$old");
        let done: UserRecord = decode(
            "users",
            &store.users.get("done").expect("read").expect("kept"),
        )
        .expect("v2");
        assert_eq!(
            (done.disabled, done.sessions_epoch),
            (true, 3),
            "left alone"
        );
        assert!(store.sessions.is_empty(), "schema 1 sessions are dropped");
        let raw = store.meta.get(SCHEMA_KEY).expect("read").expect("written");
        assert_eq!(raw.as_ref(), SCHEMA_VERSION.to_be_bytes());
    }

    #[test]
    fn a_fresh_data_dir_records_the_schema_version() {
        let dir = tempfile::TempDir::new().expect("temp dir");
        let store = Store::open(dir.path()).expect("fresh data dir");
        let raw = store.meta.get(SCHEMA_KEY).expect("read").expect("written");
        assert_eq!(raw.as_ref(), SCHEMA_VERSION.to_be_bytes());
    }

    #[test]
    fn a_schema_3_data_dir_is_packed_at_open_and_its_old_trees_dropped() {
        let dir = tempfile::TempDir::new().expect("temp dir");
        let orders: Vec<flashsale_protocol::OrderInfo> = (1..=100)
            .map(|id| crate::sale::tables::tests::order(id, id % 4))
            .collect();
        {
            let store = Store::open(dir.path()).expect("fresh data dir");
            store
                .meta
                .insert(SCHEMA_KEY, &SCHEMA_V3.to_be_bytes())
                .expect("schema 3");
            let old = store.db.open_tree("orders").expect("v3 orders");
            for o in &orders {
                old.insert(id_key(o.id.0), encode(o).expect("encode"))
                    .expect("insert");
            }
            store.db.open_tree("orders_by_buyer").expect("v3 index");
            store.sync().expect("sync");
        }
        let store = Store::open(dir.path()).expect("schema 3 opens");
        let raw = store.meta.get(SCHEMA_KEY).expect("read").expect("written");
        assert_eq!(raw.as_ref(), SCHEMA_VERSION.to_be_bytes());
        let names = store.db.tree_names();
        for old in V3_TREES {
            assert!(
                !names.iter().any(|n| n.as_ref() == old.as_bytes()),
                "{old} dropped"
            );
        }
        let tables = crate::sale::tables::Tables::new(&store);
        for o in &orders {
            assert_eq!(tables.order(o.id).expect("read").as_ref(), Some(o));
        }
    }
}
