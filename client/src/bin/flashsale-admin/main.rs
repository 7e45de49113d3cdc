//! `flashsale-admin`: the operator CLI of the flashsale order server.
//!
//! Logs in as an admin (`--addr`, `--user`, `--password` or `FLASHSALE_ADDR`,
//! `FLASHSALE_USER`, `FLASHSALE_PASSWORD`), runs one command and exits;
//! `--json` prints machine-readable output. Exit codes are in
//! [`error`] and in `--help`. It uses only the client library: no server
//! code is compiled into it.

mod backup;
mod cli;
mod connect;
mod error;
mod orders;
mod output;
mod partners;
mod products;
mod stats;
mod time;
mod users;

use clap::Parser;
use cli::{Cli, Command};
use flashsale_client::Client;
use std::process::ExitCode;

/// What every command needs: the admin session and the output mode.
pub struct Ctx {
    /// Logged in as an admin.
    pub client: Client,
    /// `--json`: machine-readable output.
    pub json: bool,
}

fn main() -> ExitCode {
    // Bad arguments exit 2 here, with clap's message; --help and --version exit 0.
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("flashsale-admin: cannot start the async runtime: {e}");
            return ExitCode::from(error::EXIT_OTHER);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        // A reader that stopped reading (`| head`) is not a failure.
        Err(err) if error::is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            // The whole chain: what we tried, then the server's code,
            // message and trace id.
            eprintln!("flashsale-admin: error: {}", error::message(&err));
            ExitCode::from(error::exit_code(&err))
        }
    }
}

/// Logs in, runs the command, logs out.
async fn run(cli: Cli) -> anyhow::Result<()> {
    let client = connect::admin_session(&cli).await?;
    let ctx = Ctx {
        client,
        json: cli.json,
    };
    let result = match cli.command {
        Command::Products(cmd) => products::run(&ctx, cmd).await,
        Command::Users(cmd) => users::run(&ctx, cmd).await,
        Command::Orders(cmd) => orders::run(&ctx, cmd).await,
        Command::Stats => stats::stats(&ctx).await,
        Command::Watch(args) => stats::watch(&ctx, &args, &cli.addr).await,
        Command::Cluster => stats::cluster(&ctx).await,
        Command::Partners(cmd) => partners::run(&ctx, cmd).await,
        Command::Backup(args) => backup::run(&ctx, args).await,
    };
    // End the session so runs do not pile up sessions on the server; a
    // failure here changes nothing the command did.
    let _ = ctx.client.logout().await;
    result
}
