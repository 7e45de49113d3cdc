//! The CLI's own failures, and how every failure maps to an exit code.

use flashsale_client::ClientError;

/// Exit code: the server refused the request (its error code is printed).
pub const EXIT_REFUSED: u8 = 1;
/// Exit code: usage error (also what clap exits with for bad arguments).
pub const EXIT_USAGE: u8 = 2;
/// Exit code: cannot connect (TLS included) or log in, not an admin, or the
/// connection was lost or timed out.
pub const EXIT_CONNECT: u8 = 3;
/// Exit code: anything else (an unexpected answer, stdout closed).
pub const EXIT_OTHER: u8 = 4;

/// Failures the CLI itself detects (the server's refusals stay [`ClientError`]s).
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// No admin password was given.
    #[error("no password: set FLASHSALE_PASSWORD or pass --password before the command")]
    NoPassword,
    /// Arguments that parse but make no sense together.
    #[error("{0}")]
    Usage(String),
    /// The server could not be reached.
    #[error("cannot connect to {addr}")]
    Connect {
        /// Where we tried.
        addr: String,
        /// Why it failed.
        #[source]
        source: ClientError,
    },
    /// The server refused the login (wrong user or password).
    #[error("cannot log in as '{user}' at {addr}")]
    Login {
        /// The account.
        user: String,
        /// The server.
        addr: String,
        /// The server's refusal, with its code and trace id.
        #[source]
        source: ClientError,
    },
    /// The account logged in but is not an operator.
    #[error("'{user}' is a {role} account; flashsale-admin needs an admin account")]
    NotAdmin {
        /// The account.
        user: String,
        /// Its role.
        role: &'static str,
    },
    /// The server answered in a way the protocol does not allow.
    #[error("unexpected answer from the server: {0}")]
    Unexpected(String),
}

/// One line for stderr: each cause in the chain after the one before,
/// skipping causes whose text an earlier one already shows.
pub fn message(err: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in err.chain() {
        let part = cause.to_string();
        if text.contains(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}

/// True when the failure is stdout's reader going away (`flashsale-admin … | head`).
pub fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// The exit code for a failed run: the first cause in the chain that says.
pub fn exit_code(err: &anyhow::Error) -> u8 {
    for cause in err.chain() {
        if let Some(e) = cause.downcast_ref::<CliError>() {
            return match e {
                CliError::NoPassword | CliError::Usage(_) => EXIT_USAGE,
                CliError::Connect { .. } | CliError::Login { .. } | CliError::NotAdmin { .. } => {
                    EXIT_CONNECT
                }
                CliError::Unexpected(_) => EXIT_OTHER,
            };
        }
        if let Some(e) = cause.downcast_ref::<ClientError>() {
            return match e {
                ClientError::Server(_) => EXIT_REFUSED,
                ClientError::Unexpected(_) | ClientError::StreamFull(_) => EXIT_OTHER,
                ClientError::Connect(_)
                | ClientError::Codec(_)
                | ClientError::Timeout(_)
                | ClientError::Tls(_)
                | ClientError::Disconnected(_) => EXIT_CONNECT,
            };
        }
    }
    EXIT_OTHER
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;
    use flashsale_client::protocol::WireError;
    use flashsale_client::ErrorCode;

    fn refusal() -> ClientError {
        ClientError::Server(WireError {
            code: ErrorCode::NotFound,
            message: "no product 9".into(),
            trace_id: uuid::Uuid::nil(),
            retry_after_ms: None,
        })
    }

    #[test]
    fn a_refusal_exits_1_and_keeps_code_message_and_trace_in_the_text() {
        let err = Err::<(), _>(refusal())
            .context("cannot show product 9")
            .expect_err("an error");
        assert_eq!(exit_code(&err), EXIT_REFUSED);
        let text = message(&err);
        assert!(text.contains("cannot show product 9"), "{text}");
        assert!(text.contains("NotFound"), "{text}");
        assert!(text.contains("no product 9"), "{text}");
        assert!(text.contains(&uuid::Uuid::nil().to_string()), "{text}");
    }

    #[test]
    fn the_message_does_not_repeat_a_cause() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let err = anyhow::Error::new(CliError::Connect {
            addr: "127.0.0.1:1".into(),
            source: ClientError::Connect(io),
        });
        assert_eq!(
            message(&err),
            "cannot connect to 127.0.0.1:1: could not connect: refused"
        );
    }

    #[test]
    fn a_refused_login_exits_3_not_1() {
        let err = anyhow::Error::new(CliError::Login {
            user: "admin".into(),
            addr: "127.0.0.1:1".into(),
            source: refusal(),
        });
        assert_eq!(exit_code(&err), EXIT_CONNECT);
    }

    #[test]
    fn connection_trouble_exits_3_and_usage_2() {
        let lost = anyhow::Error::new(ClientError::Disconnected(None)).context("listing");
        assert_eq!(exit_code(&lost), EXIT_CONNECT);
        assert_eq!(exit_code(&CliError::NoPassword.into()), EXIT_USAGE);
        assert_eq!(exit_code(&anyhow::anyhow!("disk full")), EXIT_OTHER);
    }
}
