//! The command-line grammar of `flashsale-admin` (clap derive): global
//! flags, commands and their arguments. Parsing only; the commands live in
//! their own modules.

use crate::time::{parse_interval, parse_time, parse_window_end, EpochMs, WindowEnd};
use clap::{Args, Parser, Subcommand, ValueEnum};
use flashsale_client::protocol::{Role, StatusFilter};
use std::time::Duration;

/// Shown at the end of `--help`.
const AFTER_HELP: &str = "\
Times (T): RFC 3339 in UTC (2026-11-26T12:00:00Z), `now`, `+10m` / `+2h` from now, or Unix milliseconds.

Exit codes:
  0  success
  1  the server refused the request (its error code, message and trace id are on stderr)
  2  usage error (bad flags or arguments, no password)
  3  cannot connect (or TLS failed), log in (wrong user or password, not an admin), or the connection was lost or timed out
  4  anything else (an unexpected answer from the server, stdout closed)";

/// Operator CLI for a flashsale order server: products, sale rules, users,
/// orders, partner keys, live statistics and online backups.
///
/// The connection flags (--addr, --user, --password) go before the command;
/// --json may go anywhere.
#[derive(Parser)]
#[command(name = "flashsale-admin", version, about, after_help = AFTER_HELP)]
pub struct Cli {
    /// Server address (host:port); for a cluster, every node's,
    /// comma-separated (the CLI finds the leader).
    #[arg(long, env = "FLASHSALE_ADDR", default_value = "127.0.0.1:7878")]
    pub addr: String,
    /// Admin account to log in as.
    #[arg(long, env = "FLASHSALE_USER", default_value = "admin")]
    pub user: String,
    /// Password of the admin account; prefer the environment variable, so it
    /// stays out of shell history and process lists. Never printed.
    #[arg(long, env = "FLASHSALE_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// Connect with TLS, checking the server's certificate against the host
    /// part of --addr (signed by a public CA, or by --ca-cert).
    #[arg(long, env = "FLASHSALE_TLS")]
    pub tls: bool,
    /// PEM file of the CA (or self-signed certificate) that signed the
    /// server's certificate; implies --tls.
    #[arg(long, env = "FLASHSALE_CA_CERT", value_name = "PEM")]
    pub ca_cert: Option<std::path::PathBuf>,
    /// Machine-readable output: exactly one JSON value on stdout (`watch`:
    /// one JSON object per line, per refresh).
    #[arg(long, global = true)]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Never shows the admin password.
impl std::fmt::Debug for Cli {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cli")
            .field("addr", &self.addr)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("tls", &self.tls)
            .field("ca_cert", &self.ca_cert)
            .field("json", &self.json)
            .field("command", &self.command)
            .finish()
    }
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Products: list, show, create, restock, and change stock and sale rules.
    #[command(subcommand)]
    Products(ProductsCmd),
    /// User accounts: list, create, disable, enable, set a password, end sessions.
    #[command(subcommand)]
    Users(UsersCmd),
    /// Every buyer's orders: list (filtered), show, cancel.
    #[command(subcommand)]
    Orders(OrdersCmd),
    /// Server-wide counters and per-product stock, once.
    Stats,
    /// A live view of the statistics, refreshed every --interval.
    Watch(WatchArgs),
    /// Cluster mode: the leader, and each node's applied stream sequence
    /// and lag (as the nodes last reported, every third of the lease TTL).
    Cluster,
    /// Partner API keys: create and revoke.
    #[command(subcommand)]
    Partners(PartnersCmd),
    /// An online backup of the running server (the sale goes on), streamed
    /// into DIR/flashsale.backup; `flashsale-server restore --from DIR
    /// --data-dir NEW` makes a data dir of it.
    Backup(BackupArgs),
}

/// `products …`
#[derive(Debug, Subcommand)]
pub enum ProductsCmd {
    /// Every product with its stock figures and sale rules.
    List,
    /// One product.
    Show {
        /// Product id.
        id: u64,
    },
    /// Create a product, with its purchase limit and sale window in force
    /// from its first order on.
    Create {
        /// Display name (unique; 1 to 256 bytes, no control characters).
        #[arg(long)]
        name: String,
        /// Unit price in cents.
        #[arg(long)]
        price_cents: u64,
        /// Initial stock (at most 2^48).
        #[arg(long)]
        stock: u64,
        /// Most units one buyer may hold in confirmed orders, at least 1
        /// (default: no limit).
        #[arg(long)]
        limit: Option<u32>,
        /// Orders before this time are refused with SaleNotOpen (default: open now).
        #[arg(long, value_name = "T", value_parser = parse_time)]
        opens: Option<EpochMs>,
        /// Orders from this time on are refused with SaleNotOpen (default: never closes).
        #[arg(long, value_name = "T", value_parser = parse_time)]
        closes: Option<EpochMs>,
        /// How long a hold of it lasts at most (`30s`, `15m`; 1 s to a day;
        /// default: the server's `--hold-time`).
        #[arg(long, value_name = "DURATION", value_parser = parse_hold)]
        hold: Option<Duration>,
    },
    /// Add units to a product's stock.
    Restock {
        /// Product id.
        id: u64,
        /// Units to add (at least 1; the stock may not exceed 2^48).
        qty: u64,
    },
    /// Set a product's stock to an exact figure (the difference counts as restocked).
    SetStock {
        /// Product id.
        id: u64,
        /// The new stock (at most 2^48).
        stock: u64,
    },
    /// Set a product's per-buyer purchase limit, or remove it with `none`.
    SetLimit {
        /// Product id.
        id: u64,
        /// Most units per buyer (at least 1), or `none`.
        #[arg(value_name = "N|none", value_parser = parse_limit)]
        limit: Limit,
    },
    /// Set how long a hold of a product lasts at most (`15m`, `90s`; 1 s to
    /// a day), or `none` for the server's default (`--hold-time`).
    SetHold {
        /// Product id.
        id: u64,
        /// The hold time, or `none`.
        #[arg(value_name = "DURATION|none", value_parser = parse_hold_or_none)]
        hold: HoldTime,
    },
    /// Change a product's sale window; an end not given stays as it is,
    /// `none` opens it.
    SetWindow {
        /// Product id.
        id: u64,
        /// When the sale opens, or `none` (open now).
        #[arg(long, value_name = "T|none", value_parser = parse_window_end)]
        opens: Option<WindowEnd>,
        /// When the sale closes, or `none` (never).
        #[arg(long, value_name = "T|none", value_parser = parse_window_end)]
        closes: Option<WindowEnd>,
    },
}

/// A hold time argument: a duration, or `none` (the server's default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldTime {
    /// `none`: the server's default.
    Default,
    /// This long.
    For(Duration),
}

/// A hold time: a humantime duration of 1 s to a day.
fn parse_hold(text: &str) -> Result<Duration, String> {
    let hold = humantime::parse_duration(text.trim())
        .map_err(|e| format!("`{text}`: not a duration ({e})"))?;
    if hold < Duration::from_secs(1) || hold > Duration::from_secs(86_400) {
        return Err(format!("`{text}`: a hold time is 1 s to a day"));
    }
    Ok(hold)
}

fn parse_hold_or_none(text: &str) -> Result<HoldTime, String> {
    if text.trim() == "none" {
        return Ok(HoldTime::Default);
    }
    parse_hold(text).map(HoldTime::For)
}

/// A purchase limit argument: a number, or `none`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// `none`: no limit.
    Unlimited,
    /// At most this many units per buyer.
    Max(u32),
}

/// clap value parser for [`Limit`].
fn parse_limit(text: &str) -> Result<Limit, String> {
    if text.trim().eq_ignore_ascii_case("none") {
        return Ok(Limit::Unlimited);
    }
    text.trim()
        .parse()
        .map(Limit::Max)
        .map_err(|_| format!("`{text}`: expected a number of units or `none`"))
}

/// `users …`
#[derive(Debug, Subcommand)]
pub enum UsersCmd {
    /// Accounts in name order.
    List {
        /// Most accounts to show (the first ones, by name).
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
        limit: u32,
    },
    /// Create an account. Its password (8 to 256 bytes) comes from
    /// --password-stdin or FLASHSALE_NEW_PASSWORD, never the command line;
    /// without either, a random one is generated and printed once.
    Create {
        /// Account name (unique; 1 to 64 characters of a-z, A-Z, 0-9 and -_.@).
        name: String,
        /// What the account may do.
        #[arg(long, value_enum)]
        role: RoleArg,
        #[command(flatten)]
        password: NewPassword,
    },
    /// Disable an account: it cannot log in, resume or be acted for, and
    /// its live sessions end at once.
    Disable {
        /// Account name.
        name: String,
    },
    /// Enable a disabled account again.
    Enable {
        /// Account name.
        name: String,
    },
    /// Set a new password (from --password-stdin or FLASHSALE_NEW_PASSWORD;
    /// without either, a random one is generated and printed once); every
    /// session of the account ends.
    SetPassword {
        /// Account name.
        name: String,
        #[command(flatten)]
        password: NewPassword,
    },
    /// End every session of an account (its connections close).
    EndSessions {
        /// Account name.
        name: String,
    },
}

/// Where a new password comes from: never the command line (it would show
/// in process lists and shell history). Its `Debug` never shows it.
#[derive(Clone, Args)]
pub struct NewPassword {
    /// Read the password from the first line of stdin.
    #[arg(long)]
    pub password_stdin: bool,
    /// The password, from the environment only.
    #[arg(skip = std::env::var("FLASHSALE_NEW_PASSWORD").ok())]
    pub from_env: Option<String>,
}

impl std::fmt::Debug for NewPassword {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewPassword")
            .field("password_stdin", &self.password_stdin)
            .field("from_env", &self.from_env.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// A role on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RoleArg {
    /// Buys for itself.
    Buyer,
    /// A service account acting for its own buyers (give it a key with `partners create-key`).
    Partner,
    /// An operator.
    Admin,
}

impl From<RoleArg> for Role {
    fn from(role: RoleArg) -> Self {
        match role {
            RoleArg::Buyer => Role::Buyer,
            RoleArg::Partner => Role::Partner,
            RoleArg::Admin => Role::Admin,
        }
    }
}

/// `orders …`
#[derive(Debug, Subcommand)]
pub enum OrdersCmd {
    /// Orders of every buyer in id order, optionally filtered.
    List {
        /// Only orders with a line of this product.
        #[arg(long, value_name = "ID")]
        product: Option<u64>,
        /// Only orders in this state.
        #[arg(long, value_enum)]
        status: Option<StatusArg>,
        /// Most orders to show (the first ones, by id).
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
        limit: u32,
    },
    /// One order of any buyer.
    Show {
        /// Order id.
        id: u64,
    },
    /// Cancel a confirmed order and return its stock; the buyer's sessions
    /// (for a partner's buyer: the partner's) are pushed the change.
    Cancel {
        /// Order id.
        id: u64,
    },
}

/// An order state on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StatusArg {
    /// Accepted, not decided yet.
    Pending,
    /// Confirmed and not cancelled.
    Confirmed,
    /// Rejected (sold out, over the limit, sale not open).
    Rejected,
    /// Cancelled by an operator.
    Cancelled,
    /// Held, not paid yet.
    Held,
    /// Held and not paid by the deadline.
    Expired,
    /// Held and released early.
    Released,
}

impl From<StatusArg> for StatusFilter {
    fn from(status: StatusArg) -> Self {
        match status {
            StatusArg::Pending => StatusFilter::Pending,
            StatusArg::Confirmed => StatusFilter::Confirmed,
            StatusArg::Rejected => StatusFilter::Rejected,
            StatusArg::Cancelled => StatusFilter::Cancelled,
            StatusArg::Held => StatusFilter::Held,
            StatusArg::Expired => StatusFilter::Expired,
            StatusArg::Released => StatusFilter::Released,
        }
    }
}

/// `watch`
#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Time between refreshes: seconds (`2`, `0.5`) or a duration (`500ms`).
    #[arg(long, value_name = "SECS", default_value = "1", value_parser = parse_interval)]
    pub interval: Duration,
    /// Stop after this many refreshes (default: until interrupted).
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
}

/// `backup`
#[derive(Debug, Args)]
pub struct BackupArgs {
    /// Directory to write flashsale.backup into (created if missing).
    pub dir: std::path::PathBuf,
    /// Replace an existing DIR/flashsale.backup.
    #[arg(long)]
    pub force: bool,
}

/// `partners …`
#[derive(Debug, Subcommand)]
pub enum PartnersCmd {
    /// Issue an API key for a partner account; the key is printed once.
    CreateKey {
        /// The partner account's name (create it with `users create NAME --role partner`).
        name: String,
    },
    /// Revoke an API key: it no longer logs in or resumes sessions, and its
    /// live sessions end.
    RevokeKey {
        /// The key's id (the part after `fsk_`, before the second `_`).
        key_id: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_grammar_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn limits_are_numbers_or_none() {
        assert_eq!(parse_limit("none"), Ok(Limit::Unlimited));
        assert_eq!(parse_limit("3"), Ok(Limit::Max(3)));
        assert!(parse_limit("-1").is_err());
        assert!(parse_limit("lots").is_err());
    }

    #[test]
    fn a_new_users_password_never_comes_from_the_command_line() {
        let cli = Cli::try_parse_from([
            "flashsale-admin",
            "--password",
            "login-pw",
            "users",
            "create",
            "bob",
            "--role",
            "buyer",
            "--password-stdin",
            "--json",
        ])
        .expect("parses");
        assert_eq!(cli.password.as_deref(), Some("login-pw"));
        assert!(cli.json);
        match cli.command {
            Command::Users(UsersCmd::Create { password, role, .. }) => {
                assert!(password.password_stdin);
                assert_eq!(role, RoleArg::Buyer);
            }
            other => panic!("parsed as {other:?}"),
        }
        for command in [
            [
                "users",
                "create",
                "bob",
                "--role",
                "buyer",
                "--password",
                "bobs-pw",
            ]
            .as_slice(),
            ["users", "set-password", "bob", "--password", "bobs-pw"].as_slice(),
        ] {
            let args = std::iter::once("flashsale-admin").chain(command.iter().copied());
            assert!(Cli::try_parse_from(args).is_err(), "{command:?} accepted");
        }
    }
}
