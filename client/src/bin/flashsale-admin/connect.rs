//! Connecting to the server and opening an admin session.

use crate::cli::Cli;
use crate::error::CliError;
use crate::output::role_name;
use flashsale_client::protocol::Role;
use flashsale_client::{Client, ClientConfig};
use std::time::Duration;

/// How long connecting and the handshake may take: an operator waiting on a
/// dead address wants to know soon.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Connects to `cli.addr`, logs in as `cli.user` and checks the account is
/// an admin.
///
/// # Errors
/// [`CliError::NoPassword`], [`CliError::Connect`], [`CliError::Login`] or
/// [`CliError::NotAdmin`].
pub async fn admin_session(cli: &Cli) -> Result<Client, CliError> {
    let password = cli.password.as_deref().ok_or(CliError::NoPassword)?;
    let config = ClientConfig {
        connect_timeout: CONNECT_TIMEOUT,
        client_name: concat!("flashsale-admin/", env!("CARGO_PKG_VERSION")).to_owned(),
        ..ClientConfig::default()
    };
    let client = Client::connect_with(cli.addr.as_str(), config)
        .await
        .map_err(|source| CliError::Connect {
            addr: cli.addr.clone(),
            source,
        })?;
    let session = client
        .login(&cli.user, password)
        .await
        .map_err(|source| CliError::Login {
            user: cli.user.clone(),
            addr: cli.addr.clone(),
            source,
        })?;
    if session.role != Role::Admin {
        // Do not leave a session behind for an account that cannot use it.
        let _ = client.logout().await;
        return Err(CliError::NotAdmin {
            user: session.username,
            role: role_name(session.role),
        });
    }
    Ok(client)
}
