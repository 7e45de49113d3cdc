//! The flashsale order server.
//!
//! Buyers log in, fill carts and pay over a framed TCP protocol
//! ([`flashsale_protocol`]). Every pay request is checked at intake (sold-out
//! answers come from memory), queued on the shard of its product, decided in
//! arrival order by the single sequencer against in-memory stock, made
//! durable as one journal record per batch (flush + `fdatasync`), and only
//! then answered and pushed to the buyer.
//!
//! # Map of the crate
//! The folders are the parts of the README's diagram, in the order a request
//! meets them:
//!
//! | folder | what it holds |
//! | --- | --- |
//! | `net/` | one task per connection: handshake, read loop, writer, the session on it; TLS, login throttle, pay rate limits; the notifier (pushes) and where answers go (`reply`) |
//! | `api/` | the one routing point: request kind → handler, one role check; `products`, `cart`, `pay`, `orders`, `admin` |
//! | `sale/` | intake, the per-product queues, the sequencer, the book (pure decisions), the journal (durable batches, then publish), and the published catalog, order book and carts |
//! | `accounts/` | users, password hashes, sessions, API keys; partners' buyers |
//! | `store/` | the sled data dir: trees, key and record encoding, schema version; online backup and restore (`store/backup.rs`; the requests in `api/backup.rs`) |
//!
//! Beside them: [`Config`] (every limit in one place), `error` (internal
//! errors and their wire codes), `state` (what the tasks share, in the same
//! three parts: accounts, sale, and the connections' edge), `telemetry`
//! (metrics), `server` (open, recover, serve, shut down in order), [`demo`]
//! (the demo data set).
//! Only what a user of the library calls is public; everything else is
//! `pub(crate)`.
//!
//! Binaries bind ports and parse flags; this library takes a bound listener,
//! a [`Config`] and a shutdown future.
//!
//! ```no_run
//! use flashsale_server::{Config, Server};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let server = Server::open(Config::new("./data")).await?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:7878").await?;
//! server.serve(listener, async { let _ = tokio::signal::ctrl_c().await; }).await?;
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]

mod accounts;
mod api;
mod cluster;
mod config;
mod crash_point;
pub mod demo;
mod error;
mod net;
mod sale;
mod server;
mod state;
mod store;
pub mod telemetry;

pub use config::{ClusterConfig, Config, PasswordHashing, SyncMode};
pub use error::{ApiError, ServerError};
pub use net::login_throttle::LoginPolicy;
pub use net::rate_limit::RateLimit;
pub use net::tls::ServerTls;
pub use server::{Server, ServerHandle};
pub use store::backup::{restore, RestoreError, RestoreSummary};

/// Internals exposed for this workspace's benchmarks and tests only (the
/// criterion benches drive the book and the store directly). Not a stable
/// API: nothing outside this repository should use it.
#[doc(hidden)]
pub mod internals {
    pub use crate::sale::book::{Book, Decision, Event, OrderIntent};
    pub use crate::store::{encode, Store};
}
