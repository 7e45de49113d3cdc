//! Accounts and sessions: argon2id password hashes, random session tokens
//! stored as their SHA-256, disabled accounts, and the index of each
//! account's live sessions (for the per-account cap and `EndSessions`).
//!
//! Sessions live in sled, not in memory: `sessions` (token hash → record)
//! and `sessions_by_user` (user id + creation ms + token hash → (), so an
//! account's sessions are one prefix scan, oldest first). Memory holds only
//! the count for `Stats` and the sessions of open connections (each
//! connection holds its own). A session's index row is written before its
//! record and deleted after it, so a crash between the two leaves at most
//! an index row without a record (skipped, and deleted when met), never a
//! session that the cap or `EndSessions` cannot find.
//!
//! Hashing and verifying cost milliseconds of CPU on purpose; callers run
//! them on the blocking pool, never on an async worker.
//!
//! Ending sessions races with opening them. A session is live while its
//! row is in `sessions`, its account is enabled and still has the epoch the
//! session was opened under ([`UserRecord::sessions_epoch`]), and its API
//! key (partners) is not revoked ([`Auth::still_live`]). Whatever ends
//! sessions (logout, revoke, disable, new password, `EndSessions`, the cap)
//! first changes that durable state, then ends the connections registered
//! in the notifier, then answers; whatever opens one (login, resume) first
//! registers its connection in the notifier, then checks `still_live`. The
//! notifier's lock orders the two registrations against the ending, so
//! either the check sees the change (and the login is refused), or the
//! registration came before the ending (and the ending closes it): no
//! session of an ended key, token or epoch serves a request after the end
//! is answered. See `net::connection::session` for the connection's side.

use crate::cluster::entry::Side;
use crate::config::PasswordHashing;
use crate::error::{ApiError, ApiResult, ServerError};
use crate::store::{decode, encode, now_ms, ApiKeyRecord, SessionRecord, Store, UserRecord};
use argon2::password_hash::{rand_core::OsRng, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Params, PasswordHasher, PasswordVerifier, Version};
use flashsale_protocol::{ErrorCode, PartnerRef, Role, UserId, UserInfo, MAX_TEXT_LEN};
use sha2::{Digest, Sha256};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Shortest password accepted for a new account.
pub(crate) const MIN_PASSWORD_LEN: usize = 8;

/// Longest user name.
pub(crate) const MAX_USERNAME_LEN: usize = 64;

/// Compare-and-swap attempts of one account change before `Overloaded`.
const MAX_CHANGE_ATTEMPTS: usize = 64;

/// A session's key in the `sessions` tree and in the notifier: the SHA-256
/// of its token, so the stored data never holds a token.
pub(crate) type SessionKey = [u8; 32];

/// The key a token is stored under.
pub(crate) fn session_key(token: &str) -> SessionKey {
    Sha256::digest(token.as_bytes()).into()
}

/// Length of a `sessions_by_user` key: user id, creation ms, token hash.
const INDEX_KEY_LEN: usize = 8 + 8 + 32;

/// Set in `meta` once `sessions_by_user` indexes every stored session (a
/// data dir from before the index is indexed once at open).
const INDEX_BUILT: &[u8] = b"sessions_by_user_built";

/// A session's row in `sessions_by_user`.
fn index_key(user: UserId, created_ms: u64, key: &SessionKey) -> [u8; INDEX_KEY_LEN] {
    let mut row = [0u8; INDEX_KEY_LEN];
    row[..8].copy_from_slice(&user.0.to_be_bytes());
    row[8..16].copy_from_slice(&created_ms.to_be_bytes());
    row[16..].copy_from_slice(key);
    row
}

/// The creation ms and token hash of a `sessions_by_user` row.
fn parse_index_key(row: &[u8]) -> Result<(u64, SessionKey), ServerError> {
    let corrupt = || ServerError::Corrupt {
        tree: "sessions_by_user",
        reason: format!("key of {} bytes, not {INDEX_KEY_LEN}", row.len()),
    };
    let created = row
        .get(8..16)
        .and_then(|raw| <[u8; 8]>::try_from(raw).ok())
        .ok_or_else(corrupt)?;
    let key = row
        .get(16..)
        .and_then(|raw| SessionKey::try_from(raw).ok())
        .ok_or_else(corrupt)?;
    Ok((u64::from_be_bytes(created), key))
}

/// A logged-in session, as a connection holds it.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Session {
    /// The account.
    pub(crate) user_id: UserId,
    /// Its name.
    pub(crate) username: String,
    /// Its role.
    pub(crate) role: Role,
    /// The token that resumes it (sent once, in `LoggedIn`; never stored).
    pub(crate) token: String,
    /// The SHA-256 of the token: its key in `sessions` and in the notifier.
    pub(crate) key: SessionKey,
    /// The API key that opened it, for partner sessions.
    pub(crate) api_key_id: Option<String>,
    /// The account's sessions epoch when it was opened.
    pub(crate) epoch: u64,
    /// When it was opened, in ms since the epoch (its place in
    /// `sessions_by_user`).
    pub(crate) created_at_ms: u64,
    /// When it stops working, in ms since the epoch (`Config::session_ttl`
    /// after its login); checked on every request, not only on `Resume`.
    pub(crate) expires_at_ms: u64,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("user_id", &self.user_id)
            .field("username", &self.username)
            .field("role", &self.role)
            .field("token", &"<redacted>")
            .field("api_key_id", &self.api_key_id)
            .field("expires_at_ms", &self.expires_at_ms)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// True once the session has outlived its lifetime.
    pub(crate) fn is_expired(&self, now_ms: u64) -> bool {
        now_ms >= self.expires_at_ms
    }
}

/// A session just opened, and the sessions of the same account it pushed
/// over `Config::max_sessions_per_account` (already deleted: the caller
/// ends their connections).
#[derive(Debug)]
pub(crate) struct Opened {
    /// The new session.
    pub(crate) session: Session,
    /// The account's oldest sessions, ended to make room.
    pub(crate) evicted: Vec<SessionKey>,
}

/// Sessions ended by an admin request: whose, and which (the caller ends
/// their connections and counts them).
#[derive(Debug)]
pub(crate) struct Ended {
    /// The account.
    pub(crate) user: UserInfo,
    /// Its sessions that were live.
    pub(crate) sessions: Vec<SessionKey>,
    /// True when every session of the account ended (its epoch moved on):
    /// its live connections must close. False when enabling an account.
    pub(crate) all_ended: bool,
}

/// Who a request acts for: the session's own account, or a partner's buyer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Acting {
    /// The buyer account whose cart and orders the request uses.
    pub(crate) user_id: UserId,
    /// Set when a partner acts for one of its buyers.
    pub(crate) partner: Option<PartnerRef>,
}

/// Users and sessions.
pub(crate) struct Auth {
    store: Store,
    hasher: Argon2<'static>,
    /// A hash verified when the user does not exist, so a wrong user name
    /// costs as long as a wrong password and does not reveal which it was.
    dummy_hash: String,
    /// How long a session lives after its login.
    session_ttl: Duration,
    /// Rows in `sessions` (`Stats.sessions`; expired ones count until the
    /// next sweep): counted at open, then kept by each insert of a new row
    /// and each delete that found one.
    live: AtomicU64,
    /// The newest session's creation ms (found at open, then kept): each
    /// new session gets a later one (the wall clock, or one ms after the
    /// last), so an account's sessions are ordered by login even within
    /// one millisecond or across a restart.
    last_created_ms: AtomicU64,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth").finish_non_exhaustive()
    }
}

fn bad_credentials() -> ApiError {
    ApiError::new(
        ErrorCode::Unauthenticated,
        "unknown user name or wrong password",
    )
}

fn disabled() -> ApiError {
    ApiError::new(ErrorCode::Unauthenticated, "the account is disabled")
}

fn session_over() -> ApiError {
    ApiError::new(
        ErrorCode::Unauthenticated,
        "the session ended (logged out, its API key revoked, or its account disabled)",
    )
}

impl Auth {
    /// Users and sessions of `store`, hashing with `cost`. Blocking: counts
    /// the stored sessions (bounded by the login rates and the session
    /// lifetime, not by history), and indexes them by account when the
    /// data dir predates `sessions_by_user`.
    ///
    /// # Errors
    /// Invalid argon2 parameters, or a corrupt session record.
    pub(crate) fn new(
        store: Store,
        cost: PasswordHashing,
        session_ttl: Duration,
    ) -> Result<Self, ServerError> {
        let params = Params::new(cost.memory_kib, cost.iterations, cost.parallelism, None)
            .map_err(|e| ServerError::PasswordHash(e.to_string()))?;
        let hasher = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let dummy_hash = hash_with(&hasher, "not a real password")?;
        let (live, last_created_ms) = count_and_index(&store)?;
        Ok(Self {
            store,
            hasher,
            dummy_hash,
            session_ttl,
            live: AtomicU64::new(live),
            last_created_ms: AtomicU64::new(last_created_ms),
        })
    }

    /// Recounts the live sessions and the newest creation time from the
    /// tables: a standby that applied another leader's sessions and is
    /// about to lead.
    ///
    /// # Errors
    /// Storage failure or a corrupt record.
    pub(crate) fn reload(&self) -> Result<(), ServerError> {
        let (live, last_created_ms) = count_and_index(&self.store)?;
        self.live.store(live, Ordering::Relaxed);
        self.last_created_ms
            .fetch_max(last_created_ms, Ordering::Relaxed);
        Ok(())
    }

    /// True when no account exists yet (a fresh data dir).
    pub(crate) fn is_empty(&self) -> bool {
        self.store.users.is_empty()
    }

    /// Live sessions (expired ones count until the next sweep).
    pub(crate) fn session_count(&self) -> u64 {
        self.live.load(Ordering::Relaxed)
    }

    fn user(&self, username: &str) -> ApiResult<Option<UserRecord>> {
        match self.store.users.get(username).map_err(ServerError::from)? {
            Some(raw) => Ok(Some(decode::<UserRecord>("users", &raw)?)),
            None => Ok(None),
        }
    }

    /// Creates an account. Blocking: hashes the password. Not yet durable:
    /// the caller waits for the syncer before answering.
    ///
    /// # Errors
    /// `BadRequest` for an invalid name or too short a password,
    /// `AlreadyExists` when the name is taken.
    pub(crate) fn create_user(
        &self,
        username: &str,
        password: &str,
        role: Role,
    ) -> ApiResult<UserRecord> {
        validate_username(username)?;
        validate_password(password)?;
        let password_hash = hash_with(&self.hasher, password)?;
        let id = self.store.new_user_id()?;
        let record = UserRecord {
            id,
            username: username.to_owned(),
            role,
            password_hash,
            disabled: false,
            sessions_epoch: 0,
        };
        let created = self.store.side_cas(
            Side::Users,
            username.as_bytes(),
            None,
            Some(encode(&record)?),
        )?;
        if !created {
            return Err(ApiError::new(
                ErrorCode::AlreadyExists,
                format!("user name {username:?} is taken"),
            ));
        }
        Ok(record)
    }

    /// Checks a password and opens a session. Blocking: verifies the hash.
    ///
    /// # Errors
    /// `Unauthenticated` for an unknown user or a wrong password (the same
    /// answer for both), or a disabled account (said so, only to the one
    /// who knows the password).
    pub(crate) fn login(&self, username: &str, password: &str, cap: usize) -> ApiResult<Opened> {
        let user = self.user(username)?;
        let verified = self.verify(password, user.as_ref().map(|u| u.password_hash.as_str()));
        match user {
            Some(user) if verified && user.disabled => Err(disabled()),
            Some(user) if verified => self.open_session(&user, None, cap),
            _ => Err(bad_credentials()),
        }
    }

    /// Checks `secret` against a stored argon2 hash in constant time; with
    /// no stored hash, checks against a dummy one, so an unknown name costs
    /// as long as a wrong secret and always fails.
    fn verify(&self, secret: &str, stored: Option<&str>) -> bool {
        let verified = PasswordHash::new(stored.unwrap_or(&self.dummy_hash))
            .map(|parsed| {
                self.hasher
                    .verify_password(secret.as_bytes(), &parsed)
                    .is_ok()
            })
            .unwrap_or(false);
        verified && stored.is_some()
    }

    fn open_session(
        &self,
        user: &UserRecord,
        api_key_id: Option<String>,
        cap: usize,
    ) -> ApiResult<Opened> {
        let token = new_token();
        let key = session_key(&token);
        let record = SessionRecord {
            user_id: user.id,
            username: user.username.clone(),
            role: user.role,
            created_at_ms: self.next_created_ms(),
            api_key_id: api_key_id.clone(),
            epoch: user.sessions_epoch,
        };
        // The index row first (see the module's header).
        self.store.side_insert(
            Side::SessionsByUser,
            &index_key(user.id, record.created_at_ms, &key),
            Vec::new(),
        )?;
        let previous = self
            .store
            .side_insert(Side::Sessions, &key, encode(&record)?)?;
        if previous.is_none() {
            self.live.fetch_add(1, Ordering::Relaxed);
        }
        let evicted = self.trim(user.id, cap)?;
        let session = Session {
            user_id: user.id,
            username: user.username.clone(),
            role: user.role,
            token,
            key,
            api_key_id,
            epoch: user.sessions_epoch,
            created_at_ms: record.created_at_ms,
            expires_at_ms: record.created_at_ms.saturating_add(self.ttl_ms()),
        };
        Ok(Opened { session, evicted })
    }

    /// A creation time later than every session's created before in this
    /// process: now, or one ms after the last (a few ms ahead at most,
    /// under logins faster than one a millisecond).
    fn next_created_ms(&self) -> u64 {
        let now = now_ms();
        let previous = self
            .last_created_ms
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |last| {
                Some(now.max(last.saturating_add(1)))
            })
            .unwrap_or(now);
        now.max(previous.saturating_add(1))
    }

    /// Ends `user`'s oldest sessions beyond `cap` (at least one stays);
    /// returns those that were live. Two logins of one account at once
    /// each trim what they see: both order the rows the same way (by
    /// creation ms, unique in this process), so neither ends a session
    /// among the newest `cap`, and the later one leaves at most `cap`.
    fn trim(&self, user: UserId, cap: usize) -> ApiResult<Vec<SessionKey>> {
        let rows = self.index_rows(user)?;
        let excess = rows.len().saturating_sub(cap.max(1));
        let mut evicted = Vec::new();
        for (created, key) in rows.into_iter().take(excess) {
            if self.forget_session(user, created, &key)? {
                evicted.push(key);
            }
        }
        Ok(evicted)
    }

    /// `user`'s rows in `sessions_by_user`, oldest first: at most the
    /// per-account cap, plus logins racing this one and rows a crash left.
    fn index_rows(&self, user: UserId) -> Result<Vec<(u64, SessionKey)>, ServerError> {
        self.store
            .sessions_by_user
            .scan_prefix(user.0.to_be_bytes())
            .keys()
            .map(|row| parse_index_key(&row?))
            .collect()
    }

    /// Issues an API key for a partner account. Blocking: hashes the secret.
    /// Returns the partner's id, the key id and the key (shown once). Not
    /// yet durable: the caller waits for the syncer before answering.
    ///
    /// # Errors
    /// `NotFound` for an unknown account, `BadRequest` when it is not a partner.
    pub(crate) fn create_api_key(&self, partner: &str) -> ApiResult<(UserId, String, String)> {
        let Some(user) = self.user(partner)? else {
            return Err(ApiError::not_found(format!("no user {partner:?}")));
        };
        if user.role != Role::Partner {
            return Err(ApiError::bad_request(format!(
                "{partner:?} is not a partner account"
            )));
        }
        let key_id = hex(&rand::random::<[u8; 8]>());
        let secret = hex(&rand::random::<[u8; 32]>());
        let record = ApiKeyRecord {
            partner_id: user.id,
            partner_name: user.username,
            secret_hash: hash_with(&self.hasher, &secret)?,
            created_at_ms: now_ms(),
            revoked: false,
        };
        self.store
            .side_insert(Side::ApiKeys, key_id.as_bytes(), encode(&record)?)?;
        let key = format!("{API_KEY_PREFIX}{key_id}_{secret}");
        Ok((user.id, key_id, key))
    }

    /// Opens a partner session with an API key. Blocking: verifies the hash.
    ///
    /// # Errors
    /// `Unauthenticated` for a malformed, unknown, wrong or revoked key (one
    /// answer for all), or a disabled partner account.
    pub(crate) fn login_api_key(&self, key: &str, cap: usize) -> ApiResult<Opened> {
        let (key_id, secret) = key
            .strip_prefix(API_KEY_PREFIX)
            .and_then(|rest| rest.split_once('_'))
            .unwrap_or(("", key));
        let record = match self
            .store
            .api_keys
            .get(key_id.as_bytes())
            .map_err(ServerError::from)?
        {
            Some(raw) => Some(decode::<ApiKeyRecord>("api_keys", &raw)?),
            None => None,
        };
        let verified = self.verify(secret, record.as_ref().map(|r| r.secret_hash.as_str()));
        let bad_key = || {
            ApiError::new(
                ErrorCode::Unauthenticated,
                "unknown, wrong or revoked API key",
            )
        };
        match record {
            Some(record) if verified && !record.revoked => {
                let user = self
                    .user(&record.partner_name)?
                    .filter(|u| u.id == record.partner_id)
                    .ok_or_else(bad_key)?;
                if user.disabled {
                    return Err(disabled());
                }
                self.open_session(&user, Some(key_id.to_owned()), cap)
            }
            _ => Err(bad_key()),
        }
    }

    /// Revokes an API key: it no longer logs in, and its sessions no longer
    /// resume (their rows are deleted). Not yet durable: the caller waits
    /// for the syncer, then ends the key's connections.
    ///
    /// # Errors
    /// `NotFound` for an unknown key id.
    pub(crate) fn revoke_api_key(&self, key_id: &str) -> ApiResult<()> {
        let raw = self
            .store
            .api_keys
            .get(key_id.as_bytes())
            .map_err(ServerError::from)?
            .ok_or_else(|| ApiError::not_found(format!("no API key {key_id:?}")))?;
        let mut record: ApiKeyRecord = decode("api_keys", &raw)?;
        record.revoked = true;
        self.store
            .side_insert(Side::ApiKeys, key_id.as_bytes(), encode(&record)?)?;
        // The key's sessions are dead from here on (`still_live` reads the
        // key); deleting their rows only keeps the count right.
        for (created, key) in self.index_rows(record.partner_id)? {
            let raw = self.store.sessions.get(key).map_err(ServerError::from)?;
            let of_key = match raw {
                Some(raw) => {
                    decode::<SessionRecord>("sessions", &raw)?
                        .api_key_id
                        .as_deref()
                        == Some(key_id)
                }
                // A row a crash left behind: deleted like an ended session.
                None => true,
            };
            if of_key {
                self.forget_session(record.partner_id, created, &key)?;
            }
        }
        Ok(())
    }

    fn key_is_live(&self, key_id: &str) -> ApiResult<bool> {
        Ok(
            match self
                .store
                .api_keys
                .get(key_id.as_bytes())
                .map_err(ServerError::from)?
            {
                Some(raw) => !decode::<ApiKeyRecord>("api_keys", &raw)?.revoked,
                None => false,
            },
        )
    }

    /// True while `session` may serve requests: its row is stored, its
    /// account is enabled and has the session's epoch, and its API key (if
    /// any) is not revoked. Asked after the connection is registered in the
    /// notifier (see the module's header).
    ///
    /// # Errors
    /// Storage failure or a corrupt record.
    pub(crate) fn still_live(&self, session: &Session) -> ApiResult<bool> {
        if !self
            .store
            .sessions
            .contains_key(session.key)
            .map_err(ServerError::from)?
        {
            return Ok(false);
        }
        let account_live = self.user(&session.username)?.is_some_and(|user| {
            user.id == session.user_id && !user.disabled && user.sessions_epoch == session.epoch
        });
        if !account_live {
            return Ok(false);
        }
        match &session.api_key_id {
            Some(key_id) => self.key_is_live(key_id),
            None => Ok(true),
        }
    }

    /// Deletes a session that lost the race with an ending (see
    /// [`Auth::still_live`]).
    ///
    /// # Errors
    /// Storage failure.
    pub(crate) fn discard(&self, session: &Session) -> ApiResult<()> {
        self.forget(session)
    }

    fn forget(&self, session: &Session) -> ApiResult<()> {
        self.forget_session(session.user_id, session.created_at_ms, &session.key)?;
        Ok(())
    }

    /// Deletes a session's record, then its index row; true if the record
    /// was there (the session was live until now).
    fn forget_session(
        &self,
        user: UserId,
        created_ms: u64,
        key: &SessionKey,
    ) -> Result<bool, ServerError> {
        let existed = self.store.side_remove(Side::Sessions, key)?.is_some();
        if existed {
            self.live.fetch_sub(1, Ordering::Relaxed);
        }
        self.store
            .side_remove(Side::SessionsByUser, &index_key(user, created_ms, key))?;
        Ok(existed)
    }

    /// The session of a token.
    ///
    /// # Errors
    /// `Unauthenticated` for an unknown, ended or expired session, or one of
    /// a disabled account or a revoked API key.
    pub(crate) fn resume(&self, token: &str) -> ApiResult<Session> {
        let key = session_key(token);
        let raw = self
            .store
            .sessions
            .get(key)
            .map_err(ServerError::from)?
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::Unauthenticated,
                    "unknown or expired session token",
                )
            })?;
        let record: SessionRecord = decode("sessions", &raw)?;
        if self.is_expired(&record, now_ms()) {
            self.forget_session(record.user_id, record.created_at_ms, &key)?;
            return Err(ApiError::new(
                ErrorCode::Unauthenticated,
                "the session expired; log in again",
            ));
        }
        let session = Session {
            user_id: record.user_id,
            username: record.username,
            role: record.role,
            token: token.to_owned(),
            key,
            api_key_id: record.api_key_id,
            epoch: record.epoch,
            created_at_ms: record.created_at_ms,
            expires_at_ms: record.created_at_ms.saturating_add(self.ttl_ms()),
        };
        if !self.still_live(&session)? {
            return Err(session_over());
        }
        Ok(session)
    }

    /// Accounts in name order after `after`, at most `limit`.
    ///
    /// # Errors
    /// Storage failure or a corrupt record.
    pub(crate) fn list_users(&self, after: Option<&str>, limit: usize) -> ApiResult<Vec<UserInfo>> {
        let start = after.map_or(std::ops::Bound::Unbounded, |name| {
            std::ops::Bound::Excluded(name.as_bytes().to_vec())
        });
        let mut users = Vec::new();
        for item in self
            .store
            .users
            .range::<Vec<u8>, _>((start, std::ops::Bound::Unbounded))
            .take(limit)
        {
            let (_, raw) = item.map_err(ServerError::from)?;
            let record: UserRecord = decode("users", &raw)?;
            users.push(info(&record));
        }
        Ok(users)
    }

    /// Changes an account's record with `change` (compare-and-swap, so two
    /// admins' changes never overwrite each other), then, if `end_sessions`,
    /// bumps its epoch and deletes its sessions. Not yet durable: the
    /// caller waits for the syncer, then ends the returned sessions'
    /// connections, then answers.
    fn change_user(
        &self,
        username: &str,
        end_sessions: bool,
        change: impl Fn(&mut UserRecord),
    ) -> ApiResult<Ended> {
        // Only admins' changes of the same account contend here.
        for _ in 0..MAX_CHANGE_ATTEMPTS {
            let raw = self
                .store
                .users
                .get(username)
                .map_err(ServerError::from)?
                .ok_or_else(|| ApiError::not_found(format!("no user {username:?}")))?;
            let mut record: UserRecord = decode("users", &raw)?;
            change(&mut record);
            if end_sessions {
                record.sessions_epoch = record.sessions_epoch.wrapping_add(1);
            }
            let swapped = self.store.side_cas(
                Side::Users,
                username.as_bytes(),
                Some(&raw),
                Some(encode(&record)?),
            )?;
            if !swapped {
                continue;
            }
            let sessions = if end_sessions {
                let mut keys = Vec::new();
                for (created, key) in self.index_rows(record.id)? {
                    if self.forget_session(record.id, created, &key)? {
                        keys.push(key);
                    }
                }
                keys
            } else {
                Vec::new()
            };
            return Ok(Ended {
                user: info(&record),
                sessions,
                all_ended: end_sessions,
            });
        }
        Err(ApiError::new(
            ErrorCode::Overloaded,
            format!("{username:?} is being changed by other requests; retry"),
        ))
    }

    /// Disables (ending every session) or enables an account.
    ///
    /// # Errors
    /// `NotFound` for an unknown account.
    pub(crate) fn set_disabled(&self, username: &str, disabled: bool) -> ApiResult<Ended> {
        self.change_user(username, disabled, |record| record.disabled = disabled)
    }

    /// Sets a new password and ends every session of the account.
    /// Blocking: hashes the password.
    ///
    /// # Errors
    /// `NotFound` for an unknown account, `BadRequest` for a password
    /// outside the accepted lengths.
    pub(crate) fn set_password(&self, username: &str, password: &str) -> ApiResult<Ended> {
        validate_password(password)?;
        let password_hash = hash_with(&self.hasher, password)?;
        self.change_user(username, true, |record| {
            record.password_hash.clone_from(&password_hash);
        })
    }

    /// Ends every session of an account.
    ///
    /// # Errors
    /// `NotFound` for an unknown account.
    pub(crate) fn end_sessions(&self, username: &str) -> ApiResult<Ended> {
        self.change_user(username, true, |_| {})
    }

    fn ttl_ms(&self) -> u64 {
        u64::try_from(self.session_ttl.as_millis()).unwrap_or(u64::MAX)
    }

    fn is_expired(&self, record: &SessionRecord, now_ms: u64) -> bool {
        now_ms.saturating_sub(record.created_at_ms) >= self.ttl_ms()
    }

    /// Deletes expired sessions; returns how many. Blocking: walks the tree.
    ///
    /// # Errors
    /// Storage failure or a corrupt record.
    pub(crate) fn remove_expired_sessions(&self) -> Result<u64, ServerError> {
        let now = now_ms();
        let mut removed = 0;
        for item in self.store.sessions.iter() {
            let (key, raw) = item?;
            let record: SessionRecord = decode("sessions", &raw)?;
            if !self.is_expired(&record, now) {
                continue;
            }
            let gone = match SessionKey::try_from(key.as_ref()) {
                Ok(key) => self.forget_session(record.user_id, record.created_at_ms, &key)?,
                Err(_) => {
                    let gone = self.store.side_remove(Side::Sessions, &key)?.is_some();
                    if gone {
                        self.live.fetch_sub(1, Ordering::Relaxed);
                    }
                    gone
                }
            };
            removed += u64::from(gone);
        }
        Ok(removed)
    }

    /// Ends a session: it no longer resumes. Not yet durable: the caller
    /// waits for the syncer, then ends its other connections.
    ///
    /// # Errors
    /// Storage failure.
    pub(crate) fn logout(&self, session: &Session) -> ApiResult<()> {
        self.forget(session)
    }
}

/// Counts the rows of `sessions` and finds the newest creation ms; indexes
/// them in `sessions_by_user` unless `meta` says the index is complete (and
/// the index is not empty while sessions exist: a restored or older data
/// dir).
fn count_and_index(store: &Store) -> Result<(u64, u64), ServerError> {
    let build = store.meta.get(INDEX_BUILT)?.is_none()
        || (store.sessions_by_user.is_empty() && !store.sessions.is_empty());
    let mut live = 0u64;
    let mut newest_ms = 0u64;
    for item in store.sessions.iter() {
        let (key, raw) = item?;
        live += 1;
        let record: SessionRecord = decode("sessions", &raw)?;
        newest_ms = newest_ms.max(record.created_at_ms);
        if build {
            if let Ok(key) = SessionKey::try_from(key.as_ref()) {
                store
                    .sessions_by_user
                    .insert(index_key(record.user_id, record.created_at_ms, &key), &[])?;
            }
        }
    }
    if build {
        store.meta.insert(INDEX_BUILT, &[1])?;
        tracing::info!(sessions = live, "sessions indexed by account");
    }
    Ok((live, newest_ms))
}

fn info(record: &UserRecord) -> UserInfo {
    UserInfo {
        id: record.id,
        username: record.username.clone(),
        role: record.role,
        disabled: record.disabled,
    }
}

fn validate_password(password: &str) -> ApiResult<()> {
    if password.len() < MIN_PASSWORD_LEN || password.len() > MAX_TEXT_LEN {
        return Err(ApiError::bad_request(format!(
            "a password has {MIN_PASSWORD_LEN} to {MAX_TEXT_LEN} bytes"
        )));
    }
    Ok(())
}

fn validate_username(username: &str) -> ApiResult<()> {
    let valid_char = |c: char| c.is_ascii_alphanumeric() || "-_.@".contains(c);
    if username.is_empty() || username.len() > MAX_USERNAME_LEN || !username.chars().all(valid_char)
    {
        return Err(ApiError::bad_request(format!(
            "a user name has 1 to {MAX_USERNAME_LEN} characters from a-z, A-Z, 0-9 and -_.@"
        )));
    }
    Ok(())
}

fn hash_with(hasher: &Argon2<'_>, password: &str) -> Result<String, ServerError> {
    let salt = SaltString::generate(&mut OsRng);
    hasher
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| ServerError::PasswordHash(e.to_string()))
}

/// Prefix of every API key: `fsk_<key id>_<secret>`.
pub(crate) const API_KEY_PREFIX: &str = "fsk_";

/// 256 random bits, hex-encoded.
fn new_token() -> String {
    hex(&rand::random::<[u8; 32]>())
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWORD: &str = "password-1";

    fn open(dir: &tempfile::TempDir) -> Auth {
        let store = Store::open(dir.path()).expect("data dir");
        let hashing = PasswordHashing::insecure_fast_for_tests();
        Auth::new(store, hashing, Duration::from_secs(3600)).expect("auth")
    }

    fn login(auth: &Auth, cap: usize) -> Opened {
        auth.login("u", PASSWORD, cap).expect("login")
    }

    fn rows_of(auth: &Auth, user: UserId) -> usize {
        auth.index_rows(user).expect("index").len()
    }

    #[test]
    fn a_login_beyond_the_cap_ends_the_oldest_session_also_after_a_reopen() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (second, user) = {
            let auth = open(&dir);
            let user = auth
                .create_user("u", PASSWORD, Role::Buyer)
                .expect("user")
                .id;
            let first = login(&auth, 2).session;
            let second = login(&auth, 2).session;
            let third = login(&auth, 2);
            assert_eq!(third.evicted, vec![first.key]);
            assert!(
                auth.resume(&first.token).is_err(),
                "the oldest session resumed"
            );
            auth.resume(&second.token).expect("second resumes");
            assert_eq!(auth.session_count(), 2);
            assert_eq!(rows_of(&auth, user), 2);
            (second, user)
        };
        let auth = open(&dir);
        assert_eq!(auth.session_count(), 2);
        let fourth = login(&auth, 2);
        assert_eq!(fourth.evicted, vec![second.key]);
        assert_eq!(auth.session_count(), 2);
        assert_eq!(rows_of(&auth, user), 2);
    }

    #[test]
    fn logins_within_one_millisecond_still_end_the_oldest_first() {
        let dir = tempfile::tempdir().expect("temp dir");
        let auth = open(&dir);
        auth.create_user("u", PASSWORD, Role::Buyer).expect("user");
        let mut previous = login(&auth, 1).session;
        for _ in 0..50 {
            let next = login(&auth, 1);
            assert_eq!(next.evicted, vec![previous.key]);
            assert!(next.session.created_at_ms > previous.created_at_ms);
            previous = next.session;
        }
        assert_eq!(auth.session_count(), 1);
    }

    #[test]
    fn sessions_stored_before_the_index_existed_are_indexed_once_at_open() {
        let dir = tempfile::tempdir().expect("temp dir");
        let user = {
            let auth = open(&dir);
            let user = auth
                .create_user("u", PASSWORD, Role::Buyer)
                .expect("user")
                .id;
            for _ in 0..3 {
                login(&auth, 10);
            }
            // As an older build left it: sessions, no index.
            auth.store.sessions_by_user.clear().expect("clear");
            auth.store.meta.remove(INDEX_BUILT).expect("remove marker");
            user
        };
        let auth = open(&dir);
        assert_eq!(auth.session_count(), 3);
        assert_eq!(rows_of(&auth, user), 3);
        let ended = auth.end_sessions("u").expect("end sessions");
        assert_eq!(ended.sessions.len(), 3);
        assert_eq!(auth.session_count(), 0);
        assert_eq!(rows_of(&auth, user), 0);
    }

    #[test]
    fn an_index_row_without_its_session_is_skipped_and_deleted() {
        let dir = tempfile::tempdir().expect("temp dir");
        let auth = open(&dir);
        let user = auth
            .create_user("u", PASSWORD, Role::Buyer)
            .expect("user")
            .id;
        let first = login(&auth, 2).session;
        login(&auth, 2);
        // What a crash between the index row and the record leaves.
        auth.store
            .sessions_by_user
            .insert(index_key(user, 1, &[7; 32]), &[])
            .expect("orphan row");
        let third = login(&auth, 2);
        assert_eq!(
            third.evicted,
            vec![first.key],
            "only live sessions are reported"
        );
        assert_eq!(auth.session_count(), 2);
        assert_eq!(rows_of(&auth, user), 2);
        auth.store
            .sessions_by_user
            .insert(index_key(user, 1, &[7; 32]), &[])
            .expect("orphan row");
        let ended = auth.end_sessions("u").expect("end sessions");
        assert_eq!(ended.sessions.len(), 2);
        assert_eq!(rows_of(&auth, user), 0);
        assert_eq!(auth.session_count(), 0);
    }

    #[test]
    fn expired_sessions_are_swept_from_both_trees() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(dir.path()).expect("data dir");
        let hashing = PasswordHashing::insecure_fast_for_tests();
        let auth = Auth::new(store, hashing, Duration::ZERO).expect("auth");
        let user = auth
            .create_user("u", PASSWORD, Role::Buyer)
            .expect("user")
            .id;
        login(&auth, 10);
        login(&auth, 10);
        assert_eq!(auth.remove_expired_sessions().expect("sweep"), 2);
        assert_eq!(auth.session_count(), 0);
        assert_eq!(rows_of(&auth, user), 0);
    }
}
