//! # tollgate
//!
//! Keyed, tiered rate limiting for [Tower] services: axum, hyper, anything that speaks
//! `http::Request`.
//!
//! ```no_run
//! use axum::{routing::get, Router};
//! use std::net::SocketAddr;
//! use tollgate::{Config, RateLimitLayer};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let config = Config::load("config/ratelimit.toml")?;
//! let app = Router::new()
//!     .route("/api/simple", get(|| async { "ok" }))
//!     .layer(RateLimitLayer::try_new(config)?);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await?;
//! # Ok(()) }
//! ```
//!
//! For each request, [`RateLimitLayer`] finds who is asking ([`key`]), resolves the client's
//! tier and the route's cost ([`policy`]), charges a [`store`] that runs a pure
//! [`algorithm`] (GCRA token bucket or sliding window) against a [`clock`], and then forwards
//! the request with rate-limit headers, degrades it ([`degrade`]) or answers 429/403 with a
//! problem+json body ([`answer`]). [`config`] turns a TOML file into all of that.
//!
//! ## Feature flags
//! * `axum` (default): route costs by axum's `MatchedPath`, client IPs from `ConnectInfo`,
//!   the [`degrade::Band`] extractor.
//! * `config` (default): [`Config::load`] from TOML files and `TOLLGATE_` environment
//!   variables, through figment.
//! * `client` (default): [`client::RetryLayer`], the other side of the conversation: a Tower
//!   layer for HTTP clients that honours `Retry-After` and paces itself from rate-limit headers.
//! * `redis` (default): [`store::RedisStore`], one limit shared by every instance of a
//!   service, with an explicit failure policy (`on_error`).
//! * `usage` (default): `tollgate::usage`, ready-made axum handlers for `/usage`, `/policy`
//!   and `/dashboard`.
//! * `metrics` (default, through `prometheus`): `observe::MetricsObserver`, counting every
//!   decision through the `metrics` facade.
//! * `prometheus` (default): a `/metrics` route in the Prometheus text format.
//! * `webhook` (default): `observe::Webhook`, near-quota alerts POSTed off the request path.
//! * `reqwest`: the same behaviour as `reqwest-middleware` middleware.
//!
//! For the leanest build, `default-features = false, features = ["axum", "config"]`.
//!
//! [Tower]: https://docs.rs/tower

#![warn(missing_docs, missing_debug_implementations, unreachable_pub, rust_2018_idioms)]
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_auto_cfg))]

pub mod algorithm;
pub mod answer;
#[cfg(feature = "client")]
pub mod client;
pub mod clock;
pub mod config;
pub mod degrade;
pub mod history;
pub mod key;
pub mod layer;
pub mod observe;
pub mod policy;
#[cfg(feature = "redis")]
mod side_redis;
pub mod store;
#[cfg(feature = "usage")]
pub mod usage;

pub use config::{Config, ConfigError};
pub use layer::{ActualCost, RateLimit, RateLimitLayer};
