//! Async client for the flashsale order server.
//!
//! A [`Client`] is a cheap-to-clone handle to one connection (or a small
//! pool): many requests can be in flight at once (answers are matched by
//! request id). An order placed with `pay`/`buy` comes back decided (the
//! server decides it in the batch that records it; `PlacedOrder::outcome`
//! waits otherwise). Pushes ([`Client::pushes`]) bring orders placed by the
//! buyer's other sessions and later changes such as cancellations.
//!
//! ```no_run
//! use flashsale_client::{Client, ErrorCode};
//! use flashsale_client::protocol::{OrderStatus, ProductId};
//!
//! # async fn demo() -> Result<(), flashsale_client::ClientError> {
//! let client = Client::connect("127.0.0.1:7878").await?;
//! client.login("alice", "her password").await?;
//! client.cart_add(ProductId(1), 1).await?;
//! match client.pay().await {
//!     Ok(placed) => {
//!         let order = placed.outcome().await?;
//!         println!("order {} is {:?}", order.id, order.status);
//!         if order.status == OrderStatus::Confirmed { /* ship it */ }
//!     }
//!     Err(e) if e.code() == Some(ErrorCode::SoldOut) => println!("sold out"),
//!     Err(e) => return Err(e),
//! }
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]

mod client;
mod config;
mod connection;
mod error;
mod stream;
mod tls;

pub use client::{ApiKey, BackupStream, Client, OrderPage, PlacedOrder, Pushes, Session};
pub use config::ClientConfig;
pub use error::{ClientError, Result};
pub use flashsale_protocol::{self as protocol, ErrorCode};
pub use stream::{OrderStream, StreamAnswer};
pub use tls::ClientTls;
