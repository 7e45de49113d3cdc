//! Decoding helpers that keep an untrusted length from reserving memory.
//!
//! serde reserves room for a sequence from the length the encoding claims
//! (capped at 1 MiB), before a single element is read. For the sequences a
//! client sends, the reservation here is capped at what a valid request can
//! hold; the wire format is unchanged.

use crate::types::OrderLine;
use crate::MAX_ORDER_LINES;
use serde::de::{Deserializer, SeqAccess, Visitor};
use std::fmt;

/// Decodes a request's order lines, reserving room for at most
/// [`MAX_ORDER_LINES`] up front (longer lists still decode, and are refused
/// by the server with a clear error).
pub(crate) fn order_lines<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<OrderLine>, D::Error> {
    struct Lines;

    impl<'de> Visitor<'de> for Lines {
        type Value = Vec<OrderLine>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a sequence of order lines")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut lines = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(MAX_ORDER_LINES));
            while let Some(line) = seq.next_element()? {
                lines.push(line);
            }
            Ok(lines)
        }
    }

    deserializer.deserialize_seq(Lines)
}
