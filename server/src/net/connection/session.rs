//! The session on a connection: `Login`, `LoginApiKey`, `Resume` and
//! `Logout` (throttled, hashed on the blocking pool), the session's expiry
//! and its end elsewhere (a logout on another connection, a revoked API
//! key), and whom a request acts for.

use super::Connection;
use crate::accounts::auth::{Acting, Session};
use crate::error::{ApiError, ApiResult};
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
        let outcome = match body {
            RequestBody::Login { username, password } => {
                let account = username.clone();
                self.throttled_login(&account, move |shared| {
                    shared.accounts.auth.login(&username, &password)
                })
                .await
            }
            RequestBody::LoginApiKey { key } => {
                // Throttled per key id, the key's public part.
                let account = format!("api-key:{}", api_key_id(&key));
                self.throttled_login(&account, move |shared| {
                    shared.accounts.auth.login_api_key(&key)
                })
                .await
            }
            RequestBody::Resume { token } => self.shared.accounts.auth.resume(&token),
            RequestBody::Logout => return Some(self.logout()),
            _ => return None,
        };
        Some(self.start_session(outcome))
    }

    /// Runs a password or key check unless this peer or account must wait
    /// after failed logins; records the outcome for the throttle.
    async fn throttled_login(
        &self,
        account: &str,
        check: impl FnOnce(&Shared) -> ApiResult<Session> + Send + 'static,
    ) -> ApiResult<Session> {
        let peer = self.peer.ip();
        // The throttle's key is bounded: no valid user name or key id is
        // longer, and an attacker's long names must not grow its maps.
        let account: String = account.chars().take(MAX_THROTTLE_KEY_CHARS).collect();
        let throttle = &self.shared.accounts.login_throttle;
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

    fn start_session(&mut self, outcome: ApiResult<Session>) -> ApiResult<Reply> {
        let session = outcome?;
        if let Some((_, old)) = self.session.take() {
            self.shared.edge.notifier.unregister(old);
        }
        let (registration, ended) = self.shared.edge.notifier.register(
            session.user_id,
            Arc::from(session.token.as_str()),
            session.api_key_id.as_deref().map(Arc::from),
            self.pushes.clone(),
        );
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

    fn logout(&mut self) -> ApiResult<Reply> {
        let (session, registration) = self.session.take().ok_or_else(ApiError::no_session)?;
        self.session_ended = None;
        self.shared.edge.notifier.unregister(registration);
        self.shared.accounts.auth.logout(&session.token)?;
        // Its other connections close: logout ends the session everywhere.
        self.shared
            .edge
            .notifier
            .end_session(session.user_id, &session.token);
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
        "the session ended (logged out elsewhere, or its API key was revoked)",
    )
}

/// How a connection learns that its session ended elsewhere (logout,
/// revoked API key): a token checked before each request, and a future
/// that wakes the idle read loop.
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
/// buyer it names. `None` for a partner that names no buyer.
pub(super) fn acting_for(
    shared: &Shared,
    session: &Session,
    on_behalf_of: Option<BuyerRef>,
) -> ApiResult<Option<Acting>> {
    match (session.role, on_behalf_of) {
        (Role::Partner, Some(buyer_ref)) => {
            let user_id = shared
                .accounts
                .partners
                .resolve(session.user_id, &buyer_ref)?;
            Ok(Some(Acting {
                user_id,
                partner: Some(PartnerRef {
                    partner_id: session.user_id,
                    buyer_ref,
                }),
            }))
        }
        (Role::Partner, None) => Ok(None),
        (_, Some(_)) => Err(ApiError::new(
            ErrorCode::Forbidden,
            "only partner sessions may act on behalf of a buyer",
        )),
        (_, None) => Ok(Some(Acting {
            user_id: session.user_id,
            partner: None,
        })),
    }
}
