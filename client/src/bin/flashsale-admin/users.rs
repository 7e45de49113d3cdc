//! `users …`: list, create, disable and enable accounts, set passwords,
//! end sessions. New passwords come from stdin or the environment, never
//! the command line.

use crate::cli::{NewPassword, UsersCmd};
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
        } => {
            let password = new_password(password).await?;
            create(ctx, &name, role.into(), password).await
        }
        UsersCmd::Disable { name } => set_disabled(ctx, &name, true).await,
        UsersCmd::Enable { name } => set_disabled(ctx, &name, false).await,
        UsersCmd::SetPassword { name, password } => {
            let password = new_password(password).await?;
            set_password(ctx, &name, password).await
        }
        UsersCmd::EndSessions { name } => end_sessions(ctx, &name).await,
    }
}

/// The new password from stdin (`--password-stdin`: its first line, without
/// the line end) or `FLASHSALE_NEW_PASSWORD`; `None` to generate one.
async fn new_password(source: NewPassword) -> anyhow::Result<Option<String>> {
    if !source.password_stdin {
        return Ok(source.from_env.filter(|p| !p.is_empty()));
    }
    let line = tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).map(|_| line)
    })
    .await
    .context("cannot read stdin")?
    .context("cannot read the password from stdin")?;
    let password = line
        .strip_suffix('\n')
        .map_or(line.as_str(), |l| l.strip_suffix('\r').unwrap_or(l));
    if password.is_empty() {
        return Err(CliError::Usage("--password-stdin: stdin gave no password".into()).into());
    }
    Ok(Some(password.to_owned()))
}

/// `users disable` / `users enable`.
async fn set_disabled(ctx: &Ctx, name: &str, disabled: bool) -> anyhow::Result<()> {
    let verb = if disabled { "disable" } else { "enable" };
    let user = ctx
        .client
        .set_user_disabled(name, disabled)
        .await
        .with_context(|| format!("cannot {verb} user '{name}'"))?;
    if ctx.json {
        return print_json(&UserOut::from(&user));
    }
    print_line(&format!("{verb}d '{name}' (user {})", user.id))
}

/// `users set-password --json`.
#[derive(Debug, Serialize)]
struct PasswordSetOut {
    /// The account.
    #[serde(flatten)]
    user: UserOut,
    /// The generated password, shown this once; absent when it was given.
    #[serde(skip_serializing_if = "Option::is_none")]
    password: Option<String>,
}

/// `users set-password`: every session of the account ends.
async fn set_password(ctx: &Ctx, name: &str, password: Option<String>) -> anyhow::Result<()> {
    let generated = password.is_none().then(generate_password);
    let password = password.or_else(|| generated.clone()).unwrap_or_default();
    let user = ctx
        .client
        .set_password(name, &password)
        .await
        .with_context(|| format!("cannot set the password of user '{name}'"))?;
    if ctx.json {
        return print_json(&PasswordSetOut {
            user: UserOut::from(&user),
            password: generated,
        });
    }
    print_line(&format!(
        "new password set for '{name}' (user {}); its sessions ended",
        user.id
    ))?;
    print_generated(generated)
}

/// `users end-sessions --json`.
#[derive(Debug, Serialize)]
struct SessionsEndedOut {
    /// The account's name.
    username: String,
    /// How many sessions were live and ended.
    sessions: u64,
}

/// `users end-sessions`.
async fn end_sessions(ctx: &Ctx, name: &str) -> anyhow::Result<()> {
    let sessions = ctx
        .client
        .end_sessions(name)
        .await
        .with_context(|| format!("cannot end the sessions of user '{name}'"))?;
    if ctx.json {
        return print_json(&SessionsEndedOut {
            username: name.to_owned(),
            sessions,
        });
    }
    print_line(&format!("ended {sessions} session(s) of '{name}'"))
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
    print_generated(generated)
}

/// A random alphanumeric password.
fn generate_password() -> String {
    rand::thread_rng()
        .sample_iter(&rand::distributions::Alphanumeric)
        .take(GENERATED_PASSWORD_LEN)
        .map(char::from)
        .collect()
}

/// Prints a password the CLI generated, once.
fn print_generated(generated: Option<String>) -> anyhow::Result<()> {
    if let Some(generated) = generated {
        print_line(&format!(
            "password: {generated}\n(shown once: store it now, it cannot be read back)"
        ))?;
    }
    Ok(())
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
