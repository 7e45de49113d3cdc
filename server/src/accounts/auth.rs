//! Accounts and sessions: argon2id password hashes, random session tokens
//! stored as their SHA-256, disabled accounts, and the index of each
//! account's live sessions (for the per-account cap, `EndSessions` and
//! `Stats`).
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

use crate::config::PasswordHashing;
use crate::error::{ApiError, ApiResult, ServerError};
use crate::store::{decode, encode, now_ms, ApiKeyRecord, SessionRecord, Store, UserRecord};
use argon2::password_hash::{rand_core::OsRng, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Params, PasswordHasher, PasswordVerifier, Version};
use flashsale_protocol::{ErrorCode, PartnerRef, Role, UserId, UserInfo, MAX_TEXT_LEN};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::sync::Mutex;
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

/// The live sessions of each account, oldest first, mirroring the
/// `sessions` tree (built from it at open).
///
/// Bound: at most `max_sessions_per_account` entries per account (a login
/// beyond it evicts the account's oldest session), and accounts are created
/// only by admins, so no client chooses a key of this map. Eviction: logout,
/// the cap, ending an account's sessions, and the expiry sweep remove entries;
/// an account with no session left is removed.
#[derive(Debug, Default)]
struct SessionIndex {
    by_user: HashMap<UserId, VecDeque<(u64, SessionKey)>>,
    total: usize,
}

impl SessionIndex {
    /// Adds a session; returns the oldest ones beyond `cap`.
    fn add(
        &mut self,
        user: UserId,
        created_ms: u64,
        key: SessionKey,
        cap: usize,
    ) -> Vec<SessionKey> {
        let list = self.by_user.entry(user).or_default();
        list.push_back((created_ms, key));
        self.total += 1;
        let mut evicted = Vec::new();
        while list.len() > cap.max(1) {
            if let Some((_, old)) = list.pop_front() {
                evicted.push(old);
                self.total -= 1;
            }
        }
        evicted
    }

    fn remove(&mut self, user: UserId, key: &SessionKey) {
        if let Some(list) = self.by_user.get_mut(&user) {
            let before = list.len();
            list.retain(|(_, k)| k != key);
            self.total -= before - list.len();
            if list.is_empty() {
                self.by_user.remove(&user);
            }
        }
    }

    fn take_all(&mut self, user: UserId) -> Vec<SessionKey> {
        let list = self.by_user.remove(&user).unwrap_or_default();
        self.total -= list.len();
        list.into_iter().map(|(_, k)| k).collect()
    }

    fn keys_of(&self, user: UserId) -> Vec<SessionKey> {
        self.by_user
            .get(&user)
            .map(|list| list.iter().map(|(_, k)| *k).collect())
            .unwrap_or_default()
    }
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
    /// Each account's live sessions ([`SessionIndex`]).
    index: Mutex<SessionIndex>,
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
    /// Users and sessions of `store`, hashing with `cost`. Blocking: reads
    /// every session to build the index.
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
        let mut index = SessionIndex::default();
        let mut sessions = Vec::new();
        for item in store.sessions.iter() {
            let (key, raw) = item?;
            let record: SessionRecord = decode("sessions", &raw)?;
            if let Ok(key) = SessionKey::try_from(key.as_ref()) {
                sessions.push((record.user_id, record.created_at_ms, key));
            }
        }
        sessions.sort_by_key(|(_, created, _)| *created);
        for (user, created, key) in sessions {
            // The cap is applied at the next login; here every row is kept.
            index.add(user, created, key, usize::MAX);
        }
        Ok(Self {
            store,
            hasher,
            dummy_hash,
            session_ttl,
            index: Mutex::new(index),
        })
    }

    fn index(&self) -> std::sync::MutexGuard<'_, SessionIndex> {
        // A poisoned lock only means a panic elsewhere; the index stays usable.
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// True when no account exists yet (a fresh data dir).
    pub(crate) fn is_empty(&self) -> bool {
        self.store.users.is_empty()
    }

    /// Live sessions (expired ones count until the next sweep).
    pub(crate) fn session_count(&self) -> u64 {
        u64::try_from(self.index().total).unwrap_or(u64::MAX)
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
        let id = UserId(self.store.db.generate_id().map_err(ServerError::from)? + 1);
        let record = UserRecord {
            id,
            username: username.to_owned(),
            role,
            password_hash,
            disabled: false,
            sessions_epoch: 0,
        };
        let created = self
            .store
            .users
            .compare_and_swap(username, None::<&[u8]>, Some(encode(&record)?))
            .map_err(ServerError::from)?;
        if created.is_err() {
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
            created_at_ms: now_ms(),
            api_key_id: api_key_id.clone(),
            epoch: user.sessions_epoch,
        };
        self.store
            .sessions
            .insert(key, encode(&record)?)
            .map_err(ServerError::from)?;
        let evicted = self.index().add(user.id, record.created_at_ms, key, cap);
        for old in &evicted {
            self.store.sessions.remove(old).map_err(ServerError::from)?;
        }
        let session = Session {
            user_id: user.id,
            username: user.username.clone(),
            role: user.role,
            token,
            key,
            api_key_id,
            epoch: user.sessions_epoch,
            expires_at_ms: record.created_at_ms.saturating_add(self.ttl_ms()),
        };
        Ok(Opened { session, evicted })
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
            .api_keys
            .insert(key_id.as_bytes(), encode(&record)?)
            .map_err(ServerError::from)?;
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
            .api_keys
            .insert(key_id.as_bytes(), encode(&record)?)
            .map_err(ServerError::from)?;
        // The key's sessions are dead from here on (`still_live` reads the
        // key); deleting their rows only keeps the count right.
        let keys = self.index().keys_of(record.partner_id);
        for key in keys {
            let Some(raw) = self.store.sessions.get(key).map_err(ServerError::from)? else {
                continue;
            };
            let session: SessionRecord = decode("sessions", &raw)?;
            if session.api_key_id.as_deref() == Some(key_id) {
                self.forget_session(record.partner_id, &key)?;
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
        self.forget_session(session.user_id, &session.key)
    }

    fn forget_session(&self, user: UserId, key: &SessionKey) -> ApiResult<()> {
        self.store.sessions.remove(key).map_err(ServerError::from)?;
        self.index().remove(user, key);
        Ok(())
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
            self.forget_session(record.user_id, &key)?;
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
            let swapped = self
                .store
                .users
                .compare_and_swap(username, Some(&raw), Some(encode(&record)?))
                .map_err(ServerError::from)?;
            if swapped.is_err() {
                continue;
            }
            let sessions = if end_sessions {
                let keys = self.index().take_all(record.id);
                for key in &keys {
                    self.store.sessions.remove(key).map_err(ServerError::from)?;
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
            if self.is_expired(&record, now) {
                self.store.sessions.remove(&key)?;
                if let Ok(key) = SessionKey::try_from(key.as_ref()) {
                    self.index().remove(record.user_id, &key);
                }
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Ends a session: it no longer resumes. Not yet durable: the caller
    /// waits for the syncer, then ends its other connections.
    ///
    /// # Errors
    /// Storage failure.
    pub(crate) fn logout(&self, session: &Session) -> ApiResult<()> {
        self.forget_session(session.user_id, &session.key)
    }
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
