//! Accounts and sessions: argon2id password hashes, random session tokens.
//!
//! Hashing and verifying cost milliseconds of CPU on purpose; callers run
//! them on the blocking pool, never on an async worker.

use crate::config::PasswordHashing;
use crate::error::{ApiError, ApiResult, ServerError};
use crate::store::{decode, encode, now_ms, SessionRecord, Store, UserRecord};
use argon2::password_hash::{rand_core::OsRng, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Params, PasswordHasher, PasswordVerifier, Version};
use flashsale_protocol::{ErrorCode, Role, UserId, MAX_TEXT_LEN};
use std::fmt::Write as _;

/// Shortest password accepted for a new account.
pub const MIN_PASSWORD_LEN: usize = 8;

/// Longest user name.
pub const MAX_USERNAME_LEN: usize = 64;

/// A logged-in session, as a connection holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The account.
    pub user_id: UserId,
    /// Its name.
    pub username: String,
    /// Its role.
    pub role: Role,
    /// The token that resumes it.
    pub token: String,
}

/// Users and sessions.
pub struct Auth {
    store: Store,
    hasher: Argon2<'static>,
    /// A hash verified when the user does not exist, so a wrong user name
    /// costs as long as a wrong password and does not reveal which it was.
    dummy_hash: String,
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
    pub fn new(store: Store, cost: PasswordHashing) -> Result<Self, ServerError> {
        let params = Params::new(cost.memory_kib, cost.iterations, cost.parallelism, None)
            .map_err(|e| ServerError::PasswordHash(e.to_string()))?;
        let hasher = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let dummy_hash = hash_with(&hasher, "not a real password")?;
        Ok(Self {
            store,
            hasher,
            dummy_hash,
        })
    }

    /// True when no account exists yet (a fresh data dir).
    pub fn is_empty(&self) -> bool {
        self.store.users.is_empty()
    }

    /// Creates an account. Blocking: hashes the password.
    ///
    /// # Errors
    /// `BadRequest` for an invalid name or too short a password,
    /// `AlreadyExists` when the name is taken.
    pub fn create_user(&self, username: &str, password: &str, role: Role) -> ApiResult<UserRecord> {
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
    pub fn login(&self, username: &str, password: &str) -> ApiResult<Session> {
        let user = match self.store.users.get(username).map_err(ServerError::from)? {
            Some(raw) => Some(decode::<UserRecord>("users", &raw)?),
            None => None,
        };
        let hash = user
            .as_ref()
            .map_or(self.dummy_hash.as_str(), |u| u.password_hash.as_str());
        let verified = PasswordHash::new(hash)
            .map(|parsed| {
                self.hasher
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok()
            })
            .unwrap_or(false);
        match user {
            Some(user) if verified => self.open_session(&user),
            _ => Err(bad_credentials()),
        }
    }

    fn open_session(&self, user: &UserRecord) -> ApiResult<Session> {
        let token = new_token();
        let record = SessionRecord {
            user_id: user.id,
            username: user.username.clone(),
            role: user.role,
            created_at_ms: now_ms(),
        };
        self.store
            .sessions
            .insert(token.as_bytes(), encode(&record)?)
            .map_err(ServerError::from)?;
        Ok(Session {
            user_id: user.id,
            username: user.username.clone(),
            role: user.role,
            token,
        })
    }

    /// The session of a token.
    ///
    /// # Errors
    /// `Unauthenticated` for an unknown or ended session.
    pub fn resume(&self, token: &str) -> ApiResult<Session> {
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
        Ok(Session {
            user_id: record.user_id,
            username: record.username,
            role: record.role,
            token: token.to_owned(),
        })
    }

    /// Ends a session everywhere.
    ///
    /// # Errors
    /// Storage failure.
    pub fn logout(&self, token: &str) -> Result<(), ServerError> {
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

/// 256 random bits, hex-encoded.
fn new_token() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}
