//! `users …`: list and create accounts.

use crate::cli::UsersCmd;
use crate::error::CliError;
use crate::output::{print_json, print_line, print_table, role_name, users_table, UserOut};
use crate::Ctx;
use anyhow::Context;
use flashsale_client::protocol::{Role, UserInfo};
use rand::Rng;
use serde::Serialize;

/// Length of a generated password: 20 alphanumerics are about 119 bits.
const GENERATED_PASSWORD_LEN: usize = 20;

/// Runs one `users` command.
///
/// # Errors
/// The server refused the request or the connection failed.
pub async fn run(ctx: &Ctx, cmd: UsersCmd) -> anyhow::Result<()> {
    match cmd {
        UsersCmd::List { limit } => list(ctx, limit).await,
        UsersCmd::Create {
            name,
            role,
            password,
        } => create(ctx, &name, role.into(), password).await,
    }
}

/// Every account in name order, page by page, at most `limit`.
async fn list(ctx: &Ctx, limit: u32) -> anyhow::Result<()> {
    let mut users: Vec<UserInfo> = Vec::new();
    let mut after: Option<String> = None;
    // Each round adds at least one user or stops, and stops at `limit`.
    while users.len() < limit as usize {
        let remaining = limit.saturating_sub(u32::try_from(users.len()).unwrap_or(u32::MAX));
        let page = ctx
            .client
            .users(after.as_deref(), remaining)
            .await
            .context("cannot list users")?;
        let Some(last) = page.last() else { break };
        if after
            .as_deref()
            .is_some_and(|a| last.username.as_str() <= a)
        {
            return Err(CliError::Unexpected("ListUsers went backwards".into()).into());
        }
        after = Some(last.username.clone());
        users.extend(page.into_iter().take(remaining as usize));
    }
    if ctx.json {
        print_json(&users.iter().map(UserOut::from).collect::<Vec<_>>())
    } else {
        print_table(&users_table(&users), "no users")
    }
}

/// `users create` in `--json` output.
#[derive(Debug, Serialize)]
struct CreatedOut {
    /// The new account's id.
    id: u64,
    /// Its name.
    username: String,
    /// Its role.
    role: &'static str,
    /// The generated password, shown this once; absent when it was given.
    #[serde(skip_serializing_if = "Option::is_none")]
    password: Option<String>,
}

/// Creates an account, generating its password when none is given.
async fn create(ctx: &Ctx, name: &str, role: Role, password: Option<String>) -> anyhow::Result<()> {
    let generated = password.is_none().then(generate_password);
    let password = password.or_else(|| generated.clone()).unwrap_or_default();
    let user_id = ctx
        .client
        .create_user(name, &password, role)
        .await
        .with_context(|| format!("cannot create user '{name}'"))?;
    if ctx.json {
        return print_json(&CreatedOut {
            id: user_id.0,
            username: name.to_owned(),
            role: role_name(role),
            password: generated,
        });
    }
    print_line(&format!(
        "created {} '{name}' (user {user_id})",
        role_name(role)
    ))?;
    if let Some(generated) = generated {
        print_line(&format!(
            "password: {generated}\n(shown once: store it now, it cannot be read back)"
        ))?;
    }
    Ok(())
}

/// A random alphanumeric password.
fn generate_password() -> String {
    rand::thread_rng()
        .sample_iter(&rand::distributions::Alphanumeric)
        .take(GENERATED_PASSWORD_LEN)
        .map(char::from)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_passwords_are_long_and_differ() {
        let a = generate_password();
        let b = generate_password();
        assert_eq!(a.len(), GENERATED_PASSWORD_LEN);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, b);
    }
}
