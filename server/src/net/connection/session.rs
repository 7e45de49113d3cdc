//! The session on a connection: `Login`, `LoginApiKey`, `Resume` and
//! `Logout` (rate-limited and throttled, hashed on the blocking pool), the
//! session's expiry and its end elsewhere (a logout on another connection,
//! a revoked API key, a disabled account, a new password, `EndSessions`,
//! the per-account cap), and whom a request acts for.
//!
//! Opening a session races with ending it. The interleavings, with the
//! opener's steps (a) check credentials or read the session, (b) store the
//! session, (c) register the connection in the notifier, (d) check
//! [`Auth::still_live`](crate::accounts::auth::Auth::still_live), and the
//! ender's steps (1) change the durable state (revoked flag, account epoch
//! or disabled flag, session row deleted), (2) end the registered
//! connections, (3) wait until (1) is on disk, (4) answer (ending before the
//! sync means a failed sync cannot skip it; openers check sled, not the disk):
//! - (d) after (1): `still_live` sees the change; the opener unregisters,
//!   deletes its row and answers `Unauthenticated`. No session.
//! - (d) before (1): then (c) < (d) < (1) < (2), so (2) finds the
//!   registration and cancels it; the connection checks that before every
//!   request, so the session serves nothing after (4). A `Resume` of its
//!   token after (1) fails its own (a) or (d).
//! - (d) fails (a storage read error): the opener unregisters and answers
//!   the error, but keeps the row: a failed read proves nothing.
//!
//! sled reads see every write that completed before them, and the
//! notifier's lock orders (c) against (2).

use super::Connection;
use crate::accounts::auth::{Acting, Opened, Session};
use crate::error::{ApiError, ApiResult};
use crate::net::login_throttle::{peer_key, LoginRates};
use crate::state::Shared;
use flashsale_protocol::{BuyerRef, ErrorCode, PartnerRef, Reply, RequestBody, Role};
use std::pin::Pin;
use std::sync::Arc;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// Longest login-throttle key: longer than any valid user name or key id.
const MAX_THROTTLE_KEY_CHARS: usize = 80;

impl Connection {
    /// Handles a session request (`Login`, `LoginApiKey`, `Resume`,
    /// `Logout`); `None` for any other request.
    pub(super) async fn session_request(&mut self, body: RequestBody) -> Option<ApiResult<Reply>> {
        let cap = self.shared.config.max_sessions_per_account;
        let outcome = match body {
            RequestBody::Login { username, password } => {
                let account = username.clone();
                self.throttled_login(&account, move |shared| {
                    shared.accounts.auth.login(&username, &password, cap)
                })
                .await
            }
            RequestBody::LoginApiKey { key } => {
                // Throttled per key id, the key's public part.
                let account = format!("api-key:{}", api_key_id(&key));
                self.throttled_login(&account, move |shared| {
                    shared.accounts.auth.login_api_key(&key, cap)
                })
                .await
            }
            RequestBody::Resume { token } => {
                self.shared
                    .accounts
                    .auth
                    .resume(&token)
                    .map(|session| Opened {
                        session,
                        evicted: Vec::new(),
                    })
            }
            RequestBody::Logout => return Some(self.logout().await),
            _ => return None,
        };
        Some(self.start_session(outcome))
    }

    /// Runs a password or key check unless this peer or account is over
    /// its login rate or must wait after failed logins; records the outcome
    /// for the throttle.
    async fn throttled_login(
        &self,
        account: &str,
        check: impl FnOnce(&Shared) -> ApiResult<Opened> + Send + 'static,
    ) -> ApiResult<Opened> {
        let peer = peer_key(self.peer.ip());
        // The throttle's key is bounded: no valid user name or key id is
        // longer, and an attacker's long names must not grow its maps.
        let account: String = account.chars().take(MAX_THROTTLE_KEY_CHARS).collect();
        let throttle = &self.shared.accounts.login_throttle;
        let rates = LoginRates {
            per_account: self.shared.config.login_rate_per_account,
            per_peer: self.shared.config.login_rate_per_peer,
        };
        // Every attempt, successful or not, takes a token before it queues
        // for a hashing slot: a login loop cannot hold the slots.
        throttle
            .admit(&account, peer, std::time::Instant::now(), rates)
            .map_err(ApiError::rate_limited)?;
        if let Some(wait) = throttle.wait(&account, peer, std::time::Instant::now()) {
            return Err(ApiError::login_throttled(wait));
        }
        // Asked again once a hashing slot is ours: logins from many
        // connections at once queue for the slots, and must not all pass on
        // the first check while the earlier ones' failures are still being computed.
        let key = account.clone();
        let outcome = self
            .shared
            .hash_blocking(move |shared| {
                if let Some(wait) =
                    shared
                        .accounts
                        .login_throttle
                        .wait(&key, peer, std::time::Instant::now())
                {
                    return Err(ApiError::login_throttled(wait));
                }
                check(shared)
            })
            .await;
        match &outcome {
            Ok(_) => throttle.succeeded(&account, peer),
            Err(e) if e.code == ErrorCode::Unauthenticated => {
                throttle.failed(&account, peer, std::time::Instant::now());
            }
            Err(_) => {}
        }
        outcome
    }

    /// Puts an opened session on this connection: registers it, then checks
    /// it is still live (see the module's header for why in that order).
    fn start_session(&mut self, outcome: ApiResult<Opened>) -> ApiResult<Reply> {
        let Opened { session, evicted } = outcome?;
        let notifier = &self.shared.edge.notifier;
        // Sessions pushed over the per-account cap (their rows are gone).
        for old in &evicted {
            notifier.end_session(session.user_id, old);
        }
        if let Some((_, old)) = self.session.take() {
            notifier.unregister(old);
        }
        self.session_ended = None;
        let (registration, ended) = notifier.register(
            session.user_id,
            session.key,
            session.api_key_id.as_deref().map(Arc::from),
            self.pushes.clone(),
        );
        let auth = &self.shared.accounts.auth;
        match auth.still_live(&session) {
            Ok(true) => {}
            Ok(false) => {
                notifier.unregister(registration);
                auth.discard(&session)?;
                return Err(over());
            }
            // A failed read proves nothing: the session row stays (it
            // expires or a later `Resume` decides), only this answer fails.
            Err(e) => {
                notifier.unregister(registration);
                return Err(e);
            }
        }
        self.session_ended = Some(SessionEnd::new(ended));
        let reply = Reply::LoggedIn {
            user_id: session.user_id,
            username: session.username.clone(),
            role: session.role,
            token: session.token.clone(),
        };
        tracing::debug!(user = %session.username, "session started");
        self.session = Some((session, registration));
        Ok(reply)
    }

    /// Ends the session everywhere: deletes it, closes its other
    /// connections, waits until the delete is on disk, then answers.
    async fn logout(&mut self) -> ApiResult<Reply> {
        let (session, registration) = self.session.take().ok_or_else(ApiError::no_session)?;
        self.session_ended = None;
        self.shared.edge.notifier.unregister(registration);
        self.shared.accounts.auth.logout(&session)?;
        // Its other connections close: logout ends the session everywhere.
        // Ended before the sync, so a failed sync cannot skip it (openers
        // re-check sled, not the disk).
        self.shared
            .edge
            .notifier
            .end_session(session.user_id, &session.key);
        self.shared.syncer.durable().await?;
        Ok(Reply::LoggedOut)
    }

    /// Drops an expired session from this connection; true if it was expired.
    pub(super) fn expire_session(&mut self) -> bool {
        let expired = self
            .session
            .as_ref()
            .is_some_and(|(session, _)| session.is_expired(crate::store::now_ms()));
        if expired {
            if let Some((_, registration)) = self.session.take() {
                self.shared.edge.notifier.unregister(registration);
            }
            self.session_ended = None;
        }
        expired
    }
}

/// Why a connection closes when its session ended elsewhere.
pub(super) fn over() -> ApiError {
    ApiError::new(
        ErrorCode::Unauthenticated,
        "the session ended (logged out elsewhere, its API key revoked, or its account disabled)",
    )
}

/// How a connection learns that its session ended elsewhere (logout,
/// revoked API key, disabled account): a token checked before each
/// request, and a future that wakes the idle read loop.
pub(super) struct SessionEnd {
    token: CancellationToken,
    wait: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl SessionEnd {
    fn new(token: CancellationToken) -> Self {
        let wait = Box::pin(token.clone().cancelled_owned());
        Self { token, wait }
    }

    /// True once the session has ended (takes this connection's own token
    /// lock, which nothing else contends for).
    pub(super) fn is_over(&self) -> bool {
        self.token.is_cancelled()
    }
}

/// Completes when the connection's session ends elsewhere; never without a session.
pub(super) async fn session_end(ended: &mut Option<SessionEnd>) {
    match ended {
        Some(ended) => ended.wait.as_mut().await,
        None => std::future::pending().await,
    }
}

/// The id part of an API key (`fsk_<id>_<secret>`), for throttling; never
/// the secret.
fn api_key_id(key: &str) -> &str {
    key.strip_prefix(crate::accounts::auth::API_KEY_PREFIX)
        .and_then(|rest| rest.split_once('_'))
        .map_or("malformed", |(id, _secret)| id)
}

/// Who a request of `session` acts for: itself, or (partners only) the
/// buyer it names; `None` for a partner that names no buyer. A reference the
/// partner never used comes back as the second value and is looked up only,
/// not created: the request creates it once authorised and checked (see
/// [`crate::api`]), so a refused request stores nothing.
pub(super) fn acting_for(
    shared: &Shared,
    session: &Session,
    on_behalf_of: Option<BuyerRef>,
) -> ApiResult<(Option<Acting>, Option<PartnerRef>)> {
    match (session.role, on_behalf_of) {
        (Role::Partner, Some(buyer_ref)) => {
            let known = shared
                .accounts
                .partners
                .lookup(session.user_id, &buyer_ref)?;
            let partner = PartnerRef {
                partner_id: session.user_id,
                buyer_ref,
            };
            Ok(match known {
                Some(user_id) => (
                    Some(Acting {
                        user_id,
                        partner: Some(partner),
                    }),
                    None,
                ),
                None => (None, Some(partner)),
            })
        }
        (Role::Partner, None) => Ok((None, None)),
        (_, Some(_)) => Err(ApiError::new(
            ErrorCode::Forbidden,
            "only partner sessions may act on behalf of a buyer",
        )),
        (_, None) => Ok((
            Some(Acting {
                user_id: session.user_id,
                partner: None,
            }),
            None,
        )),
    }
}
