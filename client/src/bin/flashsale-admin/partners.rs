//! `partners …`: issue and revoke partner API keys.

use crate::cli::PartnersCmd;
use crate::output::{print_json, print_line};
use crate::Ctx;
use anyhow::Context;
use serde::Serialize;

/// `partners create-key --json`.
#[derive(Debug, Serialize)]
struct KeyOut {
    /// The partner account's user id.
    partner_id: u64,
    /// The key's id, for `revoke-key`.
    key_id: String,
    /// The key itself, shown this once.
    key: String,
}

/// `partners revoke-key --json`.
#[derive(Debug, Serialize)]
struct RevokedOut {
    /// The revoked key's id.
    key_id: String,
    /// Always true.
    revoked: bool,
}

/// Runs one `partners` command.
///
/// # Errors
/// The server refused the request or the connection failed.
pub async fn run(ctx: &Ctx, cmd: PartnersCmd) -> anyhow::Result<()> {
    match cmd {
        PartnersCmd::CreateKey { name } => {
            let key = ctx
                .client
                .create_api_key(&name)
                .await
                .with_context(|| format!("cannot issue a key for partner '{name}'"))?;
            if ctx.json {
                print_json(&KeyOut {
                    partner_id: key.partner_id.0,
                    key_id: key.key_id,
                    key: key.key,
                })
            } else {
                print_line(&format!(
                    "key {} for partner '{name}' (user {}):\n{}\n(shown once: store it now; revoke with `partners revoke-key {}`)",
                    key.key_id, key.partner_id, key.key, key.key_id
                ))
            }
        }
        PartnersCmd::RevokeKey { key_id } => {
            ctx.client
                .revoke_api_key(&key_id)
                .await
                .with_context(|| format!("cannot revoke key {key_id}"))?;
            if ctx.json {
                print_json(&RevokedOut {
                    key_id,
                    revoked: true,
                })
            } else {
                print_line(&format!("revoked key {key_id}"))
            }
        }
    }
}
