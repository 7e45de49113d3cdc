//! The flashsale order server.
//!
//! Buyers log in, fill carts and pay over a framed TCP protocol
//! ([`flashsale_protocol`]). Every pay request is checked at intake (sold-out
//! answers come from memory), queued on the shard of its product, decided in
//! arrival order by the single [sequencer](sequencer) against in-memory
//! stock, made durable as one [journal](journal) record per batch (flush +
//! `fdatasync`), and only then answered and pushed to the buyer.
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

pub mod auth;
pub mod book;
pub mod cart;
pub mod catalog;
pub mod config;
pub mod connection;
pub mod demo;
pub mod error;
pub mod handlers;
pub mod intake;
pub mod journal;
pub mod notify;
pub mod orders;
pub mod partners;
pub mod ratelimit;
pub mod reply;
pub mod sequencer;
pub mod server;
pub mod shard;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod throttle;
pub mod tls;

pub use config::{Config, PasswordHashing, SyncMode};
pub use error::{ApiError, ServerError};
pub use server::Server;
