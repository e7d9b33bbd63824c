//! Client side: be a well-behaved consumer of rate-limited APIs.
//!
//! [`headers`] reads what a server says about its limits (`Retry-After`, `RateLimit`,
//! `X-RateLimit-*`) as pure functions.

pub mod headers;
