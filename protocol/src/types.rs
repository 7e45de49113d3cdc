//! Identifier newtypes and small value types shared by requests and replies.

use serde::{Deserialize, Serialize};
use std::fmt;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        pub struct $name(pub u64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }
    };
}

id_type!(
    /// Identifies a product; assigned by the server when the product is created.
    ProductId
);
id_type!(
    /// Identifies an order; assigned by the sequencer in decision order, so a
    /// smaller id was decided earlier.
    OrderId
);
id_type!(
    /// Identifies a user account (buyer, partner or admin).
    UserId
);

/// A partner's own name for one of its buyers (see `Request::on_behalf_of`):
/// 1 to [`crate::MAX_BUYER_REF_LEN`] bytes, no control characters. Encoded
/// as the string itself.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BuyerRef(pub String);

/// One product and quantity in an order or an express checkout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct OrderLine {
    /// The product ordered.
    pub product_id: ProductId,
    /// How many units: 1 to [`crate::MAX_LINE_QTY`].
    pub qty: u32,
}
