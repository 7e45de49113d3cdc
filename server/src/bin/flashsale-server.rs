//! `flashsale-server`: runs the order server.
//!
//! Only this binary parses flags, installs the log subscriber and the
//! metrics recorder, and binds ports; the library takes a [`Config`].

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use flashsale_server::{
    demo, telemetry, ClusterConfig, Config, RateLimit, Server, ServerTls, SyncMode,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tracing_appender::non_blocking::WorkerGuard;
use tracing_appender::rolling::{RollingFileAppender, Rotation};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// mimalloc: the request path allocates many small, short-lived objects
/// across threads, where it is measurably faster than the system allocator
/// (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The flashsale order server: durable, first-come-first-served pay queues
/// for limited stock.
///
/// Every option can also be set through the environment variable shown with
/// it; a flag on the command line wins over the variable.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "FLASHSALE_LISTEN", default_value = "127.0.0.1:7878")]
    listen: SocketAddr,
    /// Directory of the database (created if missing).
    #[arg(long, env = "FLASHSALE_DATA_DIR", default_value = "./data")]
    data_dir: PathBuf,
    /// Number of pay queues; a product always uses the same one [default:
    /// number of cores].
    #[arg(long, env = "FLASHSALE_SHARDS")]
    shards: Option<usize>,
    /// On an empty data dir, create an admin, three buyers and a few
    /// products, and print their credentials. The admin password is
    /// FLASHSALE_ADMIN_PASSWORD when set, else random.
    #[arg(long, env = "FLASHSALE_DEMO", value_parser = clap::builder::BoolishValueParser::new())]
    demo: bool,
    /// Durability of decisions: `always` flushes and fdatasyncs each batch
    /// before answering; `relaxed` (benchmarks only) may lose answered orders
    /// on a crash.
    #[arg(long, env = "FLASHSALE_SYNC", value_enum, default_value_t = SyncArg::Always)]
    sync: SyncArg,
    /// Most open client connections; a connection beyond it is told
    /// `Closing(Overloaded)` and closed (with TLS: closed without a frame).
    #[arg(long, env = "FLASHSALE_MAX_CONNECTIONS", default_value_t = Config::DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,
    /// Most unanswered requests per connection; at the limit the server
    /// stops reading that connection.
    #[arg(long, env = "FLASHSALE_MAX_IN_FLIGHT", default_value_t = Config::DEFAULT_MAX_IN_FLIGHT)]
    max_in_flight: usize,
    /// Largest request frame accepted, in bytes.
    #[arg(long, env = "FLASHSALE_MAX_FRAME_LEN", default_value_t = flashsale_protocol::DEFAULT_MAX_FRAME_LEN)]
    max_frame_len: usize,
    /// Commands one shard queue holds before further commands for its
    /// products (pay requests, operators' changes) are answered `Overloaded`.
    #[arg(long, env = "FLASHSALE_SHARD_QUEUE_CAPACITY", default_value_t = Config::DEFAULT_SHARD_QUEUE_CAPACITY)]
    shard_queue_capacity: usize,
    /// Most commands the sequencer decides per batch (made durable together,
    /// as journal records of at most 64 KiB).
    #[arg(long, env = "FLASHSALE_MAX_BATCH", default_value_t = Config::DEFAULT_MAX_BATCH)]
    max_batch: usize,
    /// Pushes buffered per connection; beyond it pushes are dropped (the
    /// outcome stays available with GetOrder/ListOrders).
    #[arg(long, env = "FLASHSALE_PUSH_BUFFER", default_value_t = Config::DEFAULT_PUSH_BUFFER)]
    push_buffer: usize,
    /// Most orders one ListOrders answer returns.
    #[arg(long, env = "FLASHSALE_LIST_ORDERS_PAGE", default_value_t = Config::DEFAULT_LIST_ORDERS_PAGE)]
    list_orders_page: u32,
    /// Seconds a new connection has to send its Hello (with TLS: to finish
    /// the TLS handshake, then as long again for its Hello).
    #[arg(long, env = "FLASHSALE_HANDSHAKE_TIMEOUT", value_name = "SECONDS", default_value = "10", value_parser = parse_seconds)]
    handshake_timeout: Duration,
    /// Seconds shutdown waits for in-flight requests before closing
    /// connections.
    #[arg(long, env = "FLASHSALE_SHUTDOWN_GRACE", value_name = "SECONDS", default_value = "10", value_parser = parse_seconds)]
    shutdown_grace: Duration,
    /// Seconds a connection may go without sending a complete frame before
    /// it is closed (slow-loris, forgotten connections); clients send Ping
    /// to keep an idle connection.
    #[arg(long, env = "FLASHSALE_IDLE_TIMEOUT", value_name = "SECONDS", default_value = "300", value_parser = parse_seconds)]
    idle_timeout: Duration,
    /// Seconds after it opened a connection may be without a session (Login
    /// or Resume) before it is closed; Ping does not extend it, and a
    /// connection that logs out or whose session expires later is closed at
    /// once.
    #[arg(long, env = "FLASHSALE_LOGIN_TIMEOUT", value_name = "SECONDS", default_value = "60", value_parser = parse_seconds)]
    login_timeout: Duration,
    /// Serve TLS with this certificate chain (PEM, leaf first); needs --tls-key.
    #[arg(
        long,
        env = "FLASHSALE_TLS_CERT",
        value_name = "PEM",
        requires = "tls_key"
    )]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(
        long,
        env = "FLASHSALE_TLS_KEY",
        value_name = "PEM",
        requires = "tls_cert"
    )]
    tls_key: Option<PathBuf>,
    /// Journal records between two checkpoints (also taken every
    /// --checkpoint-interval while orders come in): bounds the journal on
    /// disk and the replay at start.
    #[arg(long, env = "FLASHSALE_CHECKPOINT_RECORDS", value_name = "RECORDS", default_value_t = Config::DEFAULT_CHECKPOINT_RECORDS)]
    checkpoint_records: u64,
    /// Longest time between two checkpoints while orders come in, in seconds.
    #[arg(long, env = "FLASHSALE_CHECKPOINT_INTERVAL", value_name = "SECONDS", default_value = "10", value_parser = parse_seconds)]
    checkpoint_interval: Duration,
    /// How long an idempotency key is kept, in seconds: a retry inside it
    /// gets the order its key made, after it the key is a new intent.
    #[arg(long, env = "FLASHSALE_KEY_RETENTION", value_name = "SECONDS", default_value = "86400", value_parser = parse_seconds)]
    key_retention: Duration,
    /// Keys the idempotency-key filter is sized for per retention window
    /// (2.4 bytes each): beyond it lookups read the key table more often.
    #[arg(long, env = "FLASHSALE_KEY_FILTER_CAPACITY", value_name = "KEYS", default_value_t = Config::DEFAULT_KEY_FILTER_CAPACITY)]
    key_filter_capacity: usize,
    /// Orders decided but not yet written to the order tables before the
    /// journal waits for the materialiser (bounds memory in a long peak).
    #[arg(long, env = "FLASHSALE_MAX_UNMATERIALISED", value_name = "ORDERS", default_value_t = Config::DEFAULT_MAX_UNMATERIALISED)]
    max_unmaterialised: usize,
    /// Seconds a session token works after its login; expired sessions are
    /// deleted at start and every 10 minutes.
    #[arg(long, env = "FLASHSALE_SESSION_TTL", value_name = "SECONDS", default_value = "86400", value_parser = parse_seconds)]
    session_ttl: Duration,
    /// Pay requests (Pay, Buy) per buyer account: RATE a second with bursts
    /// of BURST (`RATE` alone: RATE/RATE), or `off`. Over it: `Overloaded`
    /// with the time to wait.
    #[arg(long, env = "FLASHSALE_PAY_RATE_PER_BUYER", value_name = "RATE/BURST|off", default_value_t = Rate(Config::DEFAULT_PAY_RATE_PER_BUYER))]
    pay_rate_per_buyer: Rate,
    /// Pay requests per partner account, all its buyers together:
    /// RATE/BURST or `off`.
    #[arg(long, env = "FLASHSALE_PAY_RATE_PER_PARTNER", value_name = "RATE/BURST|off", default_value_t = Rate(Config::DEFAULT_PAY_RATE_PER_PARTNER))]
    pay_rate_per_partner: Rate,
    /// Pay requests per connection, whoever is logged in on it: RATE/BURST
    /// or `off`.
    #[arg(long, env = "FLASHSALE_PAY_RATE_PER_CONNECTION", value_name = "RATE/BURST|off", default_value_t = Rate(Config::DEFAULT_PAY_RATE_PER_CONNECTION))]
    pay_rate_per_connection: Rate,
    /// Open connections from one address (one /64 for IPv6); at the cap the
    /// address's oldest connection without a session makes room, else the
    /// new one is refused.
    #[arg(long, env = "FLASHSALE_MAX_CONNECTIONS_PER_PEER", default_value_t = Config::DEFAULT_MAX_CONNECTIONS_PER_PEER)]
    max_connections_per_peer: usize,
    /// Bytes of unwritten answers one connection may have queued before the
    /// server stops reading its requests.
    #[arg(long, env = "FLASHSALE_MAX_REPLY_BYTES", value_name = "BYTES", default_value_t = Config::DEFAULT_MAX_REPLY_BYTES)]
    max_reply_bytes: usize,
    /// Most products one ListProducts/ListProductsPage answer holds.
    #[arg(long, env = "FLASHSALE_LIST_PRODUCTS_PAGE", default_value_t = Config::DEFAULT_LIST_PRODUCTS_PAGE)]
    list_products_page: u32,
    /// Live sessions per account; a login beyond it ends the oldest one.
    #[arg(long, env = "FLASHSALE_MAX_SESSIONS_PER_ACCOUNT", default_value_t = Config::DEFAULT_MAX_SESSIONS_PER_ACCOUNT)]
    max_sessions_per_account: usize,
    /// Logins (successful or not) per account, checked before hashing:
    /// RATE/BURST or `off`. Over it: `Overloaded` with the time to wait.
    #[arg(long, env = "FLASHSALE_LOGIN_RATE_PER_ACCOUNT", value_name = "RATE/BURST|off", default_value_t = Rate(Config::DEFAULT_LOGIN_RATE_PER_ACCOUNT))]
    login_rate_per_account: Rate,
    /// Logins (successful or not) per peer address (per /64 for IPv6),
    /// checked before hashing: RATE/BURST or `off`.
    #[arg(long, env = "FLASHSALE_LOGIN_RATE_PER_PEER", value_name = "RATE/BURST|off", default_value_t = Rate(Config::DEFAULT_LOGIN_RATE_PER_PEER))]
    login_rate_per_peer: Rate,
    /// New buyer references per partner: RATE/BURST or `off`. Over it:
    /// `Overloaded` with the time to wait.
    #[arg(long, env = "FLASHSALE_NEW_BUYERS_PER_PARTNER", value_name = "RATE/BURST|off", default_value_t = Rate(Config::DEFAULT_NEW_BUYERS_PER_PARTNER))]
    new_buyers_per_partner: Rate,
    /// Buyer references one partner may create in total; beyond it
    /// `QuotaExceeded`.
    #[arg(long, env = "FLASHSALE_MAX_BUYERS_PER_PARTNER", default_value_t = Config::DEFAULT_MAX_BUYERS_PER_PARTNER)]
    max_buyers_per_partner: u64,
    /// Partners' buyer references kept in memory (most recently used); the
    /// others are read from the data dir when used.
    #[arg(long, env = "FLASHSALE_PARTNER_BUYER_CACHE", default_value_t = Config::DEFAULT_PARTNER_BUYER_CACHE)]
    partner_buyer_cache: usize,
    /// Log filter: a level (`error`, `warn`, `info`, `debug`, `trace`) or
    /// `tracing` directives (`info,flashsale_server=debug`). RUST_LOG, when
    /// set and not empty, takes precedence.
    #[arg(long, env = "FLASHSALE_LOG_LEVEL", default_value = "info")]
    log_level: String,
    /// Also write logs to files in this directory, one per UTC day
    /// (`api.YYYY-MM-DD.log`), without ANSI colours [default: stderr only].
    #[arg(long, env = "FLASHSALE_LOG_DIR")]
    log_dir: Option<PathBuf>,
    /// With --log-dir: keep at most this many daily log files, deleting the
    /// oldest [default: keep all].
    #[arg(long, env = "FLASHSALE_LOG_MAX_FILES", requires = "log_dir")]
    log_max_files: Option<usize>,
    /// Serve Prometheus metrics over HTTP at this address (`GET /metrics`)
    /// [default: off].
    #[arg(long, env = "FLASHSALE_METRICS_ADDR")]
    metrics_addr: Option<SocketAddr>,
    /// Online backups streaming at once; one more gets `Overloaded`.
    #[arg(long, env = "FLASHSALE_MAX_BACKUPS", default_value_t = Config::DEFAULT_MAX_BACKUPS)]
    max_backups: usize,
    /// Bytes of the backup file per `BackupChunk` answer (1 KiB to
    /// --max-frame-len).
    #[arg(long, env = "FLASHSALE_BACKUP_CHUNK_BYTES", value_name = "BYTES", default_value_t = Config::DEFAULT_BACKUP_CHUNK_BYTES)]
    backup_chunk_bytes: usize,
    /// Seconds a hold lasts for products without their own hold time
    /// (`flashsale-admin products set-hold`); 1 to 86 400.
    #[arg(long, env = "FLASHSALE_HOLD_TIME", value_name = "SECONDS", default_value = "600", value_parser = parse_hold)]
    hold_time: Duration,
    /// Run as one node of a cluster: the NATS JetStream servers to replicate
    /// on, comma-separated (e.g. nats://h1:4222,nats://h2:4222,nats://h3:4222).
    /// Needs --node-id and --advertise. [default: a single server]
    #[arg(long, env = "FLASHSALE_CLUSTER", value_name = "NATS_URLS", value_delimiter = ',', requires_all = ["node_id", "advertise"])]
    cluster: Vec<String>,
    /// This node's name in the cluster (unique).
    #[arg(long, env = "FLASHSALE_NODE_ID", requires = "cluster")]
    node_id: Option<String>,
    /// Where clients reach this node (HOST:PORT); standbys tell clients the
    /// leader's.
    #[arg(
        long,
        env = "FLASHSALE_ADVERTISE",
        value_name = "HOST:PORT",
        requires = "cluster"
    )]
    advertise: Option<String>,
    /// Name of the cluster's stream (its lease bucket is named after it).
    #[arg(long, env = "FLASHSALE_CLUSTER_STREAM", default_value = flashsale_server::ClusterConfig::DEFAULT_STREAM)]
    cluster_stream: String,
    /// Replicas of the stream and the lease bucket (3 for three NATS nodes;
    /// 1 only to try it with one).
    #[arg(long, env = "FLASHSALE_CLUSTER_REPLICAS", default_value_t = 3)]
    cluster_replicas: usize,
    /// Seconds a leader's lease lives without renewal: a dead leader is
    /// replaced after about this long.
    #[arg(long, env = "FLASHSALE_LEASE_TTL", value_name = "SECONDS", default_value = "3", value_parser = parse_seconds)]
    lease_ttl: Duration,
    /// Seconds between snapshots: a standby stores its data dir in the
    /// cluster's object store and the stream is trimmed behind it; a new or
    /// wiped node starts from it. 0: never (the stream keeps everything).
    #[arg(long, env = "FLASHSALE_SNAPSHOT_INTERVAL", value_name = "SECONDS", default_value = "300", value_parser = parse_seconds)]
    snapshot_interval: Duration,
    /// Without a command, the server runs.
    #[command(subcommand)]
    command: Option<Command>,
}

/// What the binary does instead of serving.
#[derive(Debug, Subcommand)]
enum Command {
    /// Build a new data dir from a backup (`flashsale-admin backup DIR`),
    /// then exit. The whole file is verified (format, schema version,
    /// counts, SHA-256) before anything is written; start the server on
    /// the new data dir afterwards.
    Restore(RestoreArgs),
}

/// `restore`
#[derive(Debug, clap::Args)]
struct RestoreArgs {
    /// The directory `flashsale-admin backup` wrote (holding
    /// `flashsale.backup`), or the backup file itself.
    #[arg(long, value_name = "DIR")]
    from: PathBuf,
    /// The data dir to create: it must not exist, or be an empty directory.
    #[arg(long, value_name = "NEW")]
    data_dir: PathBuf,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum SyncArg {
    Always,
    Relaxed,
}

/// A pay rate limit as written on the command line: `RATE/BURST` or `off`.
#[derive(Debug, Clone, Copy)]
struct Rate(Option<RateLimit>);

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(limit) => write!(f, "{}/{}", limit.per_second, limit.burst),
            None => f.write_str("off"),
        }
    }
}

impl std::str::FromStr for Rate {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, String> {
        if value == "off" {
            return Ok(Self(None));
        }
        let parse = |n: &str| match n.trim().parse::<u32>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(format!(
                "`{value}`: expected RATE/BURST (positive whole numbers) or `off`"
            )),
        };
        let (per_second, burst) = match value.split_once('/') {
            Some((rate, burst)) => (parse(rate)?, parse(burst)?),
            None => (parse(value)?, parse(value)?),
        };
        Ok(Self(Some(RateLimit { per_second, burst })))
    }
}

/// A hold time: 1 s to a day.
fn parse_hold(value: &str) -> Result<Duration, String> {
    let hold = parse_seconds(value)?;
    let range = Duration::from_millis(flashsale_protocol::MIN_HOLD_MS)
        ..=Duration::from_millis(flashsale_protocol::MAX_HOLD_MS);
    if !range.contains(&hold) {
        return Err(format!("`{value}`: a hold time is 1 to 86400 seconds"));
    }
    Ok(hold)
}

fn parse_seconds(value: &str) -> Result<Duration, String> {
    let seconds: f64 = value
        .parse()
        .map_err(|_| format!("`{value}` is not a number of seconds"))?;
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("`{value}`: {e}"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Kept until `main` returns, so buffered log lines are written at exit.
    let _log_guards = init_logging(&args)?;
    if let Some(Command::Restore(restore)) = args.command {
        return run_restore(restore).await;
    }
    if let Some(addr) = args.metrics_addr {
        install_metrics(addr)?;
        println!("metrics on http://{addr}/metrics");
    }
    let mut config = Config::new(&args.data_dir);
    if let Some(shards) = args.shards {
        config.shards = shards;
    }
    config.sync = match args.sync {
        SyncArg::Always => SyncMode::Always,
        SyncArg::Relaxed => SyncMode::Relaxed,
    };
    config.max_connections = args.max_connections;
    config.max_in_flight_per_connection = args.max_in_flight;
    config.max_frame_len = args.max_frame_len;
    config.shard_queue_capacity = args.shard_queue_capacity;
    config.max_batch = args.max_batch;
    config.push_buffer = args.push_buffer;
    config.list_orders_page = args.list_orders_page;
    config.handshake_timeout = args.handshake_timeout;
    config.shutdown_grace = args.shutdown_grace;
    config.session_ttl = args.session_ttl;
    config.checkpoint_records = args.checkpoint_records.max(1);
    config.checkpoint_interval = args.checkpoint_interval;
    config.key_retention = args.key_retention;
    config.key_filter_capacity = args.key_filter_capacity;
    config.max_unmaterialised = args.max_unmaterialised.max(1);
    config.pay_rate_per_buyer = args.pay_rate_per_buyer.0;
    config.pay_rate_per_partner = args.pay_rate_per_partner.0;
    config.pay_rate_per_connection = args.pay_rate_per_connection.0;
    config.idle_timeout = args.idle_timeout;
    config.login_timeout = args.login_timeout;
    config.max_connections_per_peer = args.max_connections_per_peer;
    config.max_reply_bytes_per_connection = args.max_reply_bytes;
    config.list_products_page = args.list_products_page;
    config.max_sessions_per_account = args.max_sessions_per_account;
    config.login_rate_per_account = args.login_rate_per_account.0;
    config.login_rate_per_peer = args.login_rate_per_peer.0;
    config.new_buyers_per_partner = args.new_buyers_per_partner.0;
    config.max_buyers_per_partner = args.max_buyers_per_partner;
    config.partner_buyer_cache = args.partner_buyer_cache;
    config.max_backups = args.max_backups;
    config.default_hold = args.hold_time;
    config.backup_chunk_bytes = args.backup_chunk_bytes;
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        config.tls = Some(ServerTls::from_pem_files(cert, key)?);
        tracing::info!(cert = %cert.display(), "TLS on");
    }
    if config.sync == SyncMode::Relaxed {
        tracing::warn!("--sync relaxed: answered orders may be lost on a crash; benchmarking only");
    }

    if let (Some(node_id), Some(advertise)) = (&args.node_id, &args.advertise) {
        let mut cluster = ClusterConfig::new(args.cluster.clone(), node_id, advertise);
        cluster.stream = args.cluster_stream.clone();
        cluster.replicas = args.cluster_replicas.max(1);
        cluster.lease_ttl = args.lease_ttl;
        cluster.snapshot_interval = args.snapshot_interval;
        tracing::info!(node = %node_id, nats = ?args.cluster, "cluster mode");
        config.cluster = Some(cluster);
    }
    let clustered = config.cluster.is_some();

    let shutdown = shutdown_signal()?;
    let server = Server::open(config)
        .await
        .with_context(|| format!("opening data dir {}", args.data_dir.display()))?;
    if args.demo {
        let admin_password = std::env::var("FLASHSALE_ADMIN_PASSWORD").ok();
        let handle = server.handle();
        if clustered {
            // Seeded by whichever node leads first, once: when the cluster
            // holds no account yet.
            tokio::spawn(async move {
                handle.writable().await;
                if let Err(e) = seed_demo(&handle, admin_password).await {
                    tracing::error!(error = %e, "demo data not created");
                }
            });
        } else {
            seed_demo(&handle, admin_password).await?;
        }
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    println!("listening on {}", listener.local_addr()?);
    server.serve(listener, shutdown).await?;
    Ok(())
}

/// Creates the demo data on an empty data dir and prints its passwords.
async fn seed_demo(
    server: &flashsale_server::ServerHandle,
    admin_password: Option<String>,
) -> anyhow::Result<()> {
    match demo::seed(server, admin_password).await? {
        Some(data) => {
            println!("demo data created; these passwords are shown once:");
            for account in &data.accounts {
                println!(
                    "  {:<8} {:<8?} password {}",
                    account.username, account.role, account.password
                );
            }
            for product in &data.products {
                println!(
                    "  product {} {:?}: stock {}",
                    product.id, product.name, product.stock
                );
            }
        }
        None => println!("data dir is not empty; demo data not created"),
    }
    Ok(())
}

/// `restore`: builds the data dir (on a blocking thread: it is all file
/// and sled work) and prints what it holds.
async fn run_restore(args: RestoreArgs) -> anyhow::Result<()> {
    let RestoreArgs { from, data_dir } = args;
    let target = data_dir.clone();
    let restored = tokio::task::spawn_blocking(move || flashsale_server::restore(&from, &data_dir))
        .await
        .context("the restore thread failed")?
        .with_context(|| format!("restoring into {}", target.display()))?;
    let backup = &restored.backup;
    let journal = backup
        .journal_seq
        .map_or_else(|| "empty".to_owned(), |seq| seq.to_string());
    println!(
        "restored {} into {}: {} entries in {} trees, {} bytes, schema version {}, journal position {journal}, taken at {} ms since the epoch, sha256 {}",
        restored.file.display(),
        restored.data_dir.display(),
        backup.entries,
        backup.trees,
        backup.bytes,
        backup.header.schema_version,
        backup.header.created_at_ms,
        backup.sha256_hex(),
    );
    println!(
        "start the server on it: flashsale-server --data-dir {}",
        restored.data_dir.display()
    );
    Ok(())
}

/// Installs the log subscriber: stderr, and with `--log-dir` daily files.
/// Both writers are non-blocking (a background thread writes; when it falls
/// behind by 128k lines, lines are dropped rather than slowing a request).
/// The guards flush what is buffered when dropped.
fn init_logging(args: &Args) -> anyhow::Result<Vec<WorkerGuard>> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.trim().is_empty() => {
            EnvFilter::try_new(&directives).with_context(|| format!("RUST_LOG={directives}"))?
        }
        _ => EnvFilter::try_new(&args.log_level)
            .with_context(|| format!("--log-level {}", args.log_level))?,
    };
    let (stderr, stderr_guard) = tracing_appender::non_blocking(std::io::stderr());
    let mut guards = vec![stderr_guard];
    let file_layer = match &args.log_dir {
        Some(dir) => {
            let (writer, guard) =
                tracing_appender::non_blocking(log_files(dir, args.log_max_files)?);
            guards.push(guard);
            Some(
                tracing_subscriber::fmt::layer()
                    .with_ansi(false)
                    .with_writer(writer),
            )
        }
        None => None,
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(std::io::stderr().is_terminal())
                .with_writer(stderr),
        )
        .with(file_layer)
        .try_init()
        .context("installing the log subscriber")?;
    Ok(guards)
}

/// A writer to `dir/api.YYYY-MM-DD.log`, a new file each UTC day.
/// (tracing-appender joins prefix, date and suffix with dots, so
/// `api-YYYY-MM-DD.log` is not a name it can make.)
fn log_files(dir: &Path, max_files: Option<usize>) -> anyhow::Result<RollingFileAppender> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating log dir {}", dir.display()))?;
    let mut builder = RollingFileAppender::builder()
        .rotation(Rotation::DAILY)
        .filename_prefix("api")
        .filename_suffix("log");
    if let Some(max_files) = max_files {
        builder = builder.max_log_files(max_files.max(1));
    }
    builder
        .build(dir)
        .with_context(|| format!("opening a log file in {}", dir.display()))
}

/// Installs the global Prometheus recorder with its HTTP listener on `addr`.
/// Must run before the server opens: it resolves its hot metric handles once.
fn install_metrics(addr: SocketAddr) -> anyhow::Result<()> {
    let mut builder = PrometheusBuilder::new().with_http_listener(addr);
    for (name, buckets) in telemetry::HISTOGRAMS {
        builder = builder
            .set_buckets_for_metric(Matcher::Full((*name).to_owned()), buckets)
            .with_context(|| format!("buckets of {name}"))?;
    }
    builder
        .install()
        .with_context(|| format!("serving metrics on {addr}"))?;
    telemetry::describe();
    Ok(())
}

/// A future that completes on SIGINT (Ctrl-C) or SIGTERM. The handlers are
/// installed now, when this is called, not when the future is first polled:
/// a signal that arrives before the server serves (while it opens the data
/// dir, or just after it printed where it listens) still shuts it down in
/// order instead of killing it.
///
/// # Errors
/// A handler cannot be installed.
#[cfg(unix)]
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt()).context("listening for SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        tracing::info!("shutdown signal received");
    })
}

/// A future that completes on Ctrl-C.
///
/// # Errors
/// Never on this platform.
#[cfg(not(unix))]
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    Ok(async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
        tracing::info!("shutdown signal received");
    })
}
