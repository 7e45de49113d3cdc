//! Wire protocol of the flashsale order server.
//!
//! Everything a peer needs to talk to a flashsale server and nothing more: the
//! typed messages ([`ClientFrame`], [`ServerFrame`]), the error codes
//! ([`ErrorCode`]) and a codec ([`FrameCodec`]) that turns a byte stream into
//! typed messages and back. There is no I/O here beyond the codec, so partners
//! can depend on this crate without pulling in the server.
//!
//! # Wire format
//! Each message is one frame: a 4-byte big-endian length followed by that
//! many bytes of a bincode 2 (`config::standard()`) encoding of the serde
//! message: varint integers, structs as their fields in order with nothing
//! between them, enums as the variant's index then its fields. A server
//! accepts request frames of at most [`DEFAULT_MAX_FRAME_LEN`] bytes unless
//! configured otherwise, and answers with frames of up to
//! [`DEFAULT_MAX_REPLY_FRAME_LEN`] bytes. Enum variants are append-only: a
//! variant's position is its wire tag, so new variants only ever go at the
//! end. The README's protocol reference spells out every type and encoding
//! rule byte by byte.
//!
//! # Example
//! ```no_run
//! use flashsale_protocol::{ClientCodec, ClientFrame, Hello, PROTOCOL_VERSION};
//! use futures::SinkExt;
//! use tokio_util::codec::Framed;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let stream = tokio::net::TcpStream::connect("127.0.0.1:7878").await?;
//! let mut framed = Framed::new(stream, ClientCodec::new());
//! framed
//!     .send(ClientFrame::Hello(Hello {
//!         protocol_version: PROTOCOL_VERSION,
//!         client_name: "docs".into(),
//!     }))
//!     .await?;
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]

pub mod backup;
mod bounded;
mod codec;
mod error;
mod message;
mod types;

pub use codec::{decode_message, ClientCodec, CodecError, FrameCodec, ServerCodec};
pub use error::{leader_hint, ErrorCode, WireError, LEADER_HINT};
pub use message::{
    CartView, ClientFrame, ClusterNode, ClusterReport, Hello, HoldStats, OrderInfo, OrderSource,
    OrderStatus, PartnerRef, ProductInfo, ProductStats, Push, Reply, Request, RequestBody,
    Response, Role, SaleRules, ServerFrame, StatsReport, StatusFilter, StorageStats, UserInfo,
    Welcome,
};
pub use types::{BuyerRef, OrderId, OrderLine, ProductId, UserId};

/// Version of the protocol this crate speaks; sent in [`Hello`] and [`Welcome`].
pub const PROTOCOL_VERSION: u16 = 2;

/// Default largest frame a server accepts from a client, in bytes (length prefix excluded).
pub const DEFAULT_MAX_FRAME_LEN: usize = 64 * 1024;

/// Default largest frame a client accepts from a server, and a server sends:
/// answers such as a long product list are larger than any request.
pub const DEFAULT_MAX_REPLY_FRAME_LEN: usize = 16 * 1024 * 1024;

/// Largest number of distinct lines in one order or cart.
pub const MAX_ORDER_LINES: usize = 64;

/// Largest quantity of one product in one cart line or order line.
pub const MAX_LINE_QTY: u32 = 1_000_000;

/// Longest password, client name or product name accepted, in bytes (user
/// names are shorter: at most 64 characters).
pub const MAX_TEXT_LEN: usize = 256;

/// Longest buyer reference a partner may send in `on_behalf_of`, in bytes.
pub const MAX_BUYER_REF_LEN: usize = 128;

/// Longest payment reference of `PayHold`, in bytes.
pub const MAX_PAYMENT_REF_LEN: usize = 128;

/// Longest hold time, in ms (a day).
pub const MAX_HOLD_MS: u64 = 24 * 60 * 60 * 1000;

/// Shortest hold time a product may be given, in ms.
pub const MIN_HOLD_MS: u64 = 1000;
