//! Opening, resuming and ending the session, on every pooled connection.

use super::Client;
use crate::error::{ClientError, Result};
use flashsale_protocol::{ErrorCode, Reply, RequestBody, Role, UserId};

/// A logged-in session. Its `Debug` never shows the token.
#[derive(Clone, PartialEq, Eq)]
pub struct Session {
    /// The account.
    pub user_id: UserId,
    /// Its name.
    pub username: String,
    /// Its role.
    pub role: Role,
    /// Token for [`Client::resume`] on another connection; keep it secret.
    pub token: String,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("user_id", &self.user_id)
            .field("username", &self.username)
            .field("role", &self.role)
            .field("token", &"<redacted>")
            .finish()
    }
}

impl Client {
    /// Opens or ends the session on the first connection, then on the others.
    async fn session_request(&self, body: RequestBody) -> Result<Option<Session>> {
        let logout = matches!(body, RequestBody::Logout);
        let reply = self.connection(0).await?.request(body, None).await?;
        let session = match reply {
            Reply::LoggedIn {
                user_id,
                username,
                role,
                token,
            } => Some(Session {
                user_id,
                username,
                role,
                token,
            }),
            Reply::LoggedOut => None,
            other => return Err(ClientError::Unexpected(format!("{other:?}"))),
        };
        self.set_token(session.as_ref().map(|s| s.token.clone()));
        for slot in 1..self.inner.slots.len() {
            let follow = match &session {
                Some(session) => RequestBody::Resume {
                    token: session.token.clone(),
                },
                None => RequestBody::Logout,
            };
            let result = self.connection(slot).await?.request(follow, None).await;
            // After a logout, a connection without a session has nothing to end.
            if !(logout
                && result.as_ref().err().and_then(ClientError::code)
                    == Some(ErrorCode::Unauthenticated))
            {
                result?;
            }
        }
        Ok(session)
    }

    async fn open_session(&self, body: RequestBody) -> Result<Session> {
        self.session_request(body)
            .await?
            .ok_or_else(|| ClientError::Unexpected("LoggedOut instead of LoggedIn".into()))
    }

    /// Logs in with a password.
    ///
    /// # Errors
    /// `Unauthenticated` for a wrong name or password.
    pub async fn login(&self, username: &str, password: &str) -> Result<Session> {
        self.open_session(RequestBody::Login {
            username: username.to_owned(),
            password: password.to_owned(),
        })
        .await
    }

    /// Logs a partner in with its API key.
    ///
    /// # Errors
    /// `Unauthenticated` for a wrong or revoked key.
    pub async fn login_api_key(&self, key: &str) -> Result<Session> {
        self.open_session(RequestBody::LoginApiKey {
            key: key.to_owned(),
        })
        .await
    }

    /// Attaches an existing session to this client's connections.
    ///
    /// # Errors
    /// `Unauthenticated` for an unknown or ended session.
    pub async fn resume(&self, token: &str) -> Result<Session> {
        self.open_session(RequestBody::Resume {
            token: token.to_owned(),
        })
        .await
    }

    /// Ends the session everywhere.
    ///
    /// # Errors
    /// `Unauthenticated` without a session.
    pub async fn logout(&self) -> Result<()> {
        self.session_request(RequestBody::Logout).await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_of_a_session_never_shows_its_token() {
        let session = Session {
            user_id: UserId(7),
            username: "alice".into(),
            role: Role::Buyer,
            token: "5ec2e7-token-bytes".into(),
        };
        let shown = format!("{session:?} {session:#?}");
        assert!(!shown.contains("5ec2e7"), "{shown}");
        assert!(
            shown.contains("<redacted>") && shown.contains("alice"),
            "{shown}"
        );
    }
}
