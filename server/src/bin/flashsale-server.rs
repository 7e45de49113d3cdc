//! `flashsale-server`: runs the order server.

use anyhow::Context;
use clap::{Parser, ValueEnum};
use flashsale_server::{demo, Config, Server, SyncMode};
use std::net::SocketAddr;
use std::path::PathBuf;
use tracing_subscriber::EnvFilter;

/// The flashsale order server: durable, first-come-first-served pay queues
/// for limited stock.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "FLASHSALE_LISTEN", default_value = "127.0.0.1:7878")]
    listen: SocketAddr,
    /// Directory of the database (created if missing).
    #[arg(long, env = "FLASHSALE_DATA_DIR", default_value = "./data")]
    data_dir: PathBuf,
    /// Number of pay queues (default: number of cores).
    #[arg(long, env = "FLASHSALE_SHARDS")]
    shards: Option<usize>,
    /// On an empty data dir, create an admin, three buyers and a few
    /// products, and print their credentials. The admin password is
    /// FLASHSALE_ADMIN_PASSWORD when set, else random.
    #[arg(long)]
    demo: bool,
    /// Durability of decisions: `always` flushes and fdatasyncs each batch
    /// before answering; `relaxed` (benchmarks only) may lose answered orders
    /// on a crash.
    #[arg(long, env = "FLASHSALE_SYNC", value_enum, default_value_t = SyncArg::Always)]
    sync: SyncArg,
    /// Most open client connections.
    #[arg(long, env = "FLASHSALE_MAX_CONNECTIONS", default_value_t = 10_000)]
    max_connections: usize,
    /// Most unanswered requests per connection.
    #[arg(long, env = "FLASHSALE_MAX_IN_FLIGHT", default_value_t = 1024)]
    max_in_flight: usize,
    /// Largest request frame accepted, in bytes.
    #[arg(long, env = "FLASHSALE_MAX_FRAME_LEN", default_value_t = flashsale_protocol::DEFAULT_MAX_FRAME_LEN)]
    max_frame_len: usize,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum SyncArg {
    Always,
    Relaxed,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
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
    if config.sync == SyncMode::Relaxed {
        tracing::warn!("--sync relaxed: answered orders may be lost on a crash; benchmarking only");
    }

    let server = Server::open(config)
        .await
        .with_context(|| format!("opening data dir {}", args.data_dir.display()))?;
    if args.demo {
        let admin_password = std::env::var("FLASHSALE_ADMIN_PASSWORD").ok();
        match demo::seed(&server, admin_password).await? {
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
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    println!("listening on {}", listener.local_addr()?);
    server.serve(listener, shutdown_signal()).await?;
    Ok(())
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
    tracing::info!("shutdown signal received");
}
