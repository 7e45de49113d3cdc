//! Test support lives in the `flashsale-testkit` crate (`testkit/`): the
//! embedded [`TestServer`], account and product helpers, the raw framed
//! connection, the request/answer oracle and the cutting proxy. This module
//! only re-exports it under the `crate::support` paths the tests use.

pub use flashsale_testkit::*;
