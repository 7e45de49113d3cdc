//! The sale: from a pay request to a durable, published decision.
//!
//! [`intake`] refuses from memory what is already ruled out and queues the
//! rest on the [`queues`] of its product; the [`sequencer`] decides in
//! arrival order against the [`book`] (pure decisions, the only writer of
//! stock); the [`journal`] makes each batch durable and publishes it to the
//! [`catalog`] (products), the [`order_book`] (orders) and the [`carts`],
//! then answers and pushes. [`holds`] are orders whose stock is reserved
//! until a deadline (paid, released or expired by the sequencer).

pub(crate) mod book;
pub(crate) mod carts;
pub(crate) mod catalog;
pub(crate) mod checkpoint;
pub(crate) mod holds;
pub(crate) mod intake;
pub(crate) mod journal;
pub(crate) mod keys;
pub(crate) mod materialise;
pub(crate) mod order_book;
pub(crate) mod queues;
pub(crate) mod rules;
pub(crate) mod sequencer;
pub(crate) mod tables;
