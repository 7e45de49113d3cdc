//! Accounts and sessions: argon2id password hashes, random session tokens.
//!
//! Hashing and verifying cost milliseconds of CPU on purpose; callers run
//! them on the blocking pool, never on an async worker.

use crate::config::PasswordHashing;
use crate::error::{ApiError, ApiResult, ServerError};
use crate::store::{decode, encode, now_ms, ApiKeyRecord, SessionRecord, Store, UserRecord};
use argon2::password_hash::{rand_core::OsRng, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Params, PasswordHasher, PasswordVerifier, Version};
use flashsale_protocol::{ErrorCode, PartnerRef, Role, UserId, UserInfo, MAX_TEXT_LEN};
use std::fmt::Write as _;
use std::time::Duration;

/// Shortest password accepted for a new account.
pub(crate) const MIN_PASSWORD_LEN: usize = 8;

/// Longest user name.
pub(crate) const MAX_USERNAME_LEN: usize = 64;

/// A logged-in session, as a connection holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Session {
    /// The account.
    pub(crate) user_id: UserId,
    /// Its name.
    pub(crate) username: String,
    /// Its role.
    pub(crate) role: Role,
    /// The token that resumes it.
    pub(crate) token: String,
    /// The API key that opened it, for partner sessions.
    pub(crate) api_key_id: Option<String>,
    /// When it stops working, in ms since the epoch (`Config::session_ttl`
    /// after its login); checked on every request, not only on `Resume`.
    pub(crate) expires_at_ms: u64,
}

impl Session {
    /// True once the session has outlived its lifetime.
    pub(crate) fn is_expired(&self, now_ms: u64) -> bool {
        now_ms >= self.expires_at_ms
    }
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

impl Auth {
    /// Users and sessions of `store`, hashing with `cost`.
    ///
    /// # Errors
    /// Invalid argon2 parameters.
    pub(crate) fn new(
        store: Store,
        cost: PasswordHashing,
        session_ttl: Duration,
    ) -> Result<Self, ServerError> {
        let params = Params::new(cost.memory_kib, cost.iterations, cost.parallelism, None)
            .map_err(|e| ServerError::PasswordHash(e.to_string()))?;
        let hasher = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let dummy_hash = hash_with(&hasher, "not a real password")?;
        Ok(Self {
            store,
            hasher,
            dummy_hash,
            session_ttl,
        })
    }

    /// True when no account exists yet (a fresh data dir).
    pub(crate) fn is_empty(&self) -> bool {
        self.store.users.is_empty()
    }

    /// Creates an account. Blocking: hashes the password.
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
        if password.len() < MIN_PASSWORD_LEN || password.len() > MAX_TEXT_LEN {
            return Err(ApiError::bad_request(format!(
                "a password has {MIN_PASSWORD_LEN} to {MAX_TEXT_LEN} bytes"
            )));
        }
        let password_hash = hash_with(&self.hasher, password)?;
        let id = UserId(self.store.db.generate_id().map_err(ServerError::from)? + 1);
        let record = UserRecord {
            id,
            username: username.to_owned(),
            role,
            password_hash,
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
        self.store.db.flush().map_err(ServerError::from)?;
        Ok(record)
    }

    /// Checks a password and opens a session. Blocking: verifies the hash.
    ///
    /// # Errors
    /// `Unauthenticated` for an unknown user or a wrong password (the same
    /// answer for both).
    pub(crate) fn login(&self, username: &str, password: &str) -> ApiResult<Session> {
        let user = match self.store.users.get(username).map_err(ServerError::from)? {
            Some(raw) => Some(decode::<UserRecord>("users", &raw)?),
            None => None,
        };
        let verified = self.verify(password, user.as_ref().map(|u| u.password_hash.as_str()));
        match user {
            Some(user) if verified => self.open_session(user.id, &user.username, user.role, None),
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
        user_id: UserId,
        username: &str,
        role: Role,
        api_key_id: Option<String>,
    ) -> ApiResult<Session> {
        let token = new_token();
        let record = SessionRecord {
            user_id,
            username: username.to_owned(),
            role,
            created_at_ms: now_ms(),
            api_key_id: api_key_id.clone(),
        };
        self.store
            .sessions
            .insert(token.as_bytes(), encode(&record)?)
            .map_err(ServerError::from)?;
        Ok(Session {
            user_id,
            username: username.to_owned(),
            role,
            token,
            api_key_id,
            expires_at_ms: record.created_at_ms.saturating_add(self.ttl_ms()),
        })
    }

    /// Issues an API key for a partner account. Blocking: hashes the secret.
    /// Returns the partner's id, the key id and the key (shown once).
    ///
    /// # Errors
    /// `NotFound` for an unknown account, `BadRequest` when it is not a partner.
    pub(crate) fn create_api_key(&self, partner: &str) -> ApiResult<(UserId, String, String)> {
        let user: UserRecord = match self.store.users.get(partner).map_err(ServerError::from)? {
            Some(raw) => decode("users", &raw)?,
            None => return Err(ApiError::not_found(format!("no user {partner:?}"))),
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
        self.store.db.flush().map_err(ServerError::from)?;
        let key = format!("{API_KEY_PREFIX}{key_id}_{secret}");
        Ok((user.id, key_id, key))
    }

    /// Opens a partner session with an API key. Blocking: verifies the hash.
    ///
    /// # Errors
    /// `Unauthenticated` for a malformed, unknown, wrong or revoked key (one
    /// answer for all).
    pub(crate) fn login_api_key(&self, key: &str) -> ApiResult<Session> {
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
        match record {
            Some(record) if verified && !record.revoked => self.open_session(
                record.partner_id,
                &record.partner_name,
                Role::Partner,
                Some(key_id.to_owned()),
            ),
            _ => Err(ApiError::new(
                ErrorCode::Unauthenticated,
                "unknown, wrong or revoked API key",
            )),
        }
    }

    /// Revokes an API key: it no longer logs in, and its sessions no longer resume.
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
        self.store.db.flush().map_err(ServerError::from)?;
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

    /// The session of a token.
    ///
    /// # Errors
    /// `Unauthenticated` for an unknown or ended session.
    pub(crate) fn resume(&self, token: &str) -> ApiResult<Session> {
        let raw = self
            .store
            .sessions
            .get(token.as_bytes())
            .map_err(ServerError::from)?
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::Unauthenticated,
                    "unknown or expired session token",
                )
            })?;
        let record: SessionRecord = decode("sessions", &raw)?;
        if self.is_expired(&record, now_ms()) {
            self.store
                .sessions
                .remove(token.as_bytes())
                .map_err(ServerError::from)?;
            return Err(ApiError::new(
                ErrorCode::Unauthenticated,
                "the session expired; log in again",
            ));
        }
        if let Some(key_id) = &record.api_key_id {
            if !self.key_is_live(key_id)? {
                return Err(ApiError::new(
                    ErrorCode::Unauthenticated,
                    "the session's API key was revoked",
                ));
            }
        }
        Ok(Session {
            user_id: record.user_id,
            username: record.username,
            role: record.role,
            token: token.to_owned(),
            api_key_id: record.api_key_id,
            expires_at_ms: record.created_at_ms.saturating_add(self.ttl_ms()),
        })
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
            users.push(UserInfo {
                id: record.id,
                username: record.username,
                role: record.role,
                disabled: false,
            });
        }
        Ok(users)
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
            let (token, raw) = item?;
            let record: SessionRecord = decode("sessions", &raw)?;
            if self.is_expired(&record, now) {
                self.store.sessions.remove(token)?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Ends a session everywhere.
    ///
    /// # Errors
    /// Storage failure.
    pub(crate) fn logout(&self, token: &str) -> Result<(), ServerError> {
        self.store.sessions.remove(token.as_bytes())?;
        Ok(())
    }
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
