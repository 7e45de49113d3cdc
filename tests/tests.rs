//! Integration tests: a real server over real TCP on 127.0.0.1 with a real
//! sled data dir in a temp dir. One module per behaviour.

mod support;

mod abuse;
mod accounts;
mod backup;
mod bad_input;
mod bounded_memory;
mod client_api;
mod fairness;
mod flash_sale;
mod history;
mod hostile_input;
mod limits;
mod operators;
mod orders_and_carts;
mod partners;
mod restart;
mod security;
