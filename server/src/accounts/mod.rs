//! Accounts: users and their password hashes, sessions, partners' API keys,
//! and the buyers partners act for.

pub(crate) mod auth;
pub(crate) mod partners;
