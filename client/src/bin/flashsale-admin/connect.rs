//! Connecting to the server and opening an admin session.

use crate::cli::Cli;
use crate::error::CliError;
use crate::output::role_name;
use flashsale_client::protocol::Role;
use flashsale_client::{Client, ClientConfig, ClientError, ClientTls};
use std::time::Duration;

/// How long connecting and the handshake may take: an operator waiting on a
/// dead address wants to know soon.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The TLS set-up `--tls` / `--ca-cert` ask for, if any.
fn tls(cli: &Cli) -> Result<Option<ClientTls>, ClientError> {
    match &cli.ca_cert {
        Some(path) => {
            let pem = std::fs::read(path).map_err(|e| {
                ClientError::Tls(format!("cannot read CA file {}: {e}", path.display()))
            })?;
            ClientTls::for_addr(&cli.addr, Some(&pem)).map(Some)
        }
        None if cli.tls => ClientTls::for_addr(&cli.addr, None).map(Some),
        None => Ok(None),
    }
}

/// Connects to `cli.addr`, logs in as `cli.user` and checks the account is
/// an admin.
///
/// # Errors
/// [`CliError::NoPassword`], [`CliError::Connect`], [`CliError::Login`] or
/// [`CliError::NotAdmin`].
pub async fn admin_session(cli: &Cli) -> Result<Client, CliError> {
    let password = cli.password.as_deref().ok_or(CliError::NoPassword)?;
    let tls = tls(cli).map_err(|source| CliError::Connect {
        addr: cli.addr.clone(),
        source,
    })?;
    let config = ClientConfig {
        connect_timeout: CONNECT_TIMEOUT,
        client_name: concat!("flashsale-admin/", env!("CARGO_PKG_VERSION")).to_owned(),
        tls,
        ..ClientConfig::default()
    };
    let client = Client::connect_nodes(&cli.addr, config)
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
