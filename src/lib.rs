//! The `flashsale` root package: home of the integration tests (`tests/`),
//! the criterion benchmarks (`benches/`) and the load harness
//! `flashsale-bench` (`src/bin/flashsale-bench/`). It re-exports the three
//! crates of the workspace for their convenience.
#![deny(missing_docs)]

pub use flashsale_client as client;
pub use flashsale_protocol as protocol;
pub use flashsale_server as server;
