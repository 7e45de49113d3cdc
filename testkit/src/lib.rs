//! Test support shared by the integration tests (`tests/`), the criterion
//! benches (`benches/core.rs`), the load harness's embedded mode
//! (`flashsale-bench --embedded`) and the `request_path` fuzz target.
//!
//! * [`TestServer`]: a real server in this process on 127.0.0.1 (port 0 by
//!   default) with a real sled data dir, usually in a temp dir; clients for
//!   its admin and for new buyers.
//! * [`raw`]: a framed connection past the `Hello`/`Welcome` handshake, for
//!   sending what the client library never would.
//! * [`oracle`]: what the server must answer to a byte stream, worked out
//!   from the bytes alone with a model codec, and the checks of its answers
//!   and of the products afterwards.
//! * [`proxy`]: a TCP proxy whose live connections can be cut at once.
//! * Small helpers: [`product`], [`partner_key`], [`code_of`], [`Outcome`],
//!   [`stock_of`].

mod helpers;
pub mod oracle;
pub mod proxy;
pub mod raw;
mod server;

pub use helpers::{code_of, partner_key, product, stock_of, Outcome};
pub use server::{test_config, TestServer, ADMIN_PASSWORD, ADMIN_USER, BUYER_PASSWORD};

/// Errors of the fallible set-up and tear-down functions.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
