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
//! ## The pipeline
//!
//! What happens to one request, top to bottom. The flow reads in this order in
//! `src/layer/pipeline.rs` ([`RateLimit`]'s `call`): each step works out one value and hands it
//! on, and no value is worked out twice.
//!
//! 1. **Route** ([`policy`]): the route template axum matched (`MatchedPath`, else the URI
//!    path) is looked up in the route table of the [`Limits`](policy::Limits) in force: its
//!    cost, whether it is exempt (then the request passes untouched, without headers), whether
//!    it degrades, its concurrency cap.
//! 2. **Client** ([`key`], [`policy`]): the layer's [`KeyExtractor`](key::KeyExtractor) says
//!    who is asking (an auth layer's [`Client`](key::Client), a known API key, or the client
//!    IP behind trusted proxies), and the client's tier is found.
//! 3. **Plan** ([`layer`], [`degrade`]): concurrency slots are taken (429 at once when the
//!    client has too many in flight, written by [`answer`]); for a degradable route,
//!    [`degrade`] looks up the caller's own cached copy and sets the band's threshold; the
//!    charge follows. All of it is one plan, borrowed from the request and from the snapshot
//!    of the limits it was made under.
//! 4. **Decision** ([`store`], [`algorithm`], [`clock`]): the store charges the plan's
//!    charge to every policy of the tier at once (all or none), running the pure
//!    [`algorithm`] (GCRA token bucket or sliding window) on each policy's state at the time its
//!    [`Clock`](clock::Clock) reads, and answers with a [`Decision`](store::Decision). The
//!    memory store answers at once; Redis answers later, and the plan waits in the response
//!    future with a share of its snapshot.
//! 5. **Outcome** ([`layer`], [`degrade`], [`answer`], [`observe`]): the plan and the
//!    decision become what happens next, in one place. Admitted: [`degrade`] picks the band
//!    (full, a replay of the cached copy with `Age`, or the handler told to answer minimally)
//!    and the request is forwarded with the rate-limit headers [`answer`] writes. Rejected:
//!    429 with `Retry-After`; never admissible at this tier: 403; store fault: `on_error`
//!    (503 from [`answer`], or forwarded). The observers ([`observe`]: near-quota alerts,
//!    metrics) are told.
//! 6. **Response** ([`layer`], [`degrade`]): the headers are merged into the handler's
//!    answer (the handler's own win), a full answer to a read is recorded for the cached band
//!    when it may be, and the concurrency slots come back once the body is sent.
//!
//! [`config`] turns a TOML file into the [`Limits`](policy::Limits) and everything else the
//! layer is built from (it depends on [`policy`], never the reverse); [`usage`] serves
//! callers their standing, read through the same steps 1 and 2 without charging. [`client`]
//! stands alone: the other side of the conversation.
//!
//! ### Where what comes next plugs in
//! * **Hot reload**: the layer's snapshot of the limits (with the per-tier header constants
//!   derived from them) is one `Arc` read once per request in step 1; it becomes an
//!   `ArcSwap`, loaded once in `call`. A plan borrows the snapshot it was made from, and a
//!   plan that outlives `call` (Redis) keeps a share of it, so requests in flight finish under
//!   the limits they started with. Store state is keyed by policy, not by snapshot.
//! * **Allow list**: in step 2, once the client is known and before the plan takes a slot
//!   or the store is touched; an allowed request passes like an exempt route.
//! * **Shadow mode**: a mode in the plan (step 3, from the tier or the whole limiter); in
//!   step 5 a refusal is counted and logged, and the request is forwarded with no headers.
//!   The store decides and charges exactly as when enforcing.
//! * **Waiting for tokens (`max_delay_ms`)**: the tier's delay in the plan and a reserving
//!   charge in step 4; in step 5 a refusal whose tokens come within the delay becomes a held
//!   outcome (a timer in the response future, then the forward), the reservation travelling
//!   with it to be given back if the future is dropped.
//! * **Costs settled from the answer**: step 6. The plan's charge, tier and a share of its
//!   snapshot go with the forwarded request; when the handler's response (its reported cost,
//!   its status for `charge = "failures" | "successes"`) is known, the store is asked for the
//!   difference and the headers are written from that settled decision.
//! * **An exact sliding log**: an [`algorithm`] and its store state; the plan and the
//!   decision do not change, and the header's `t` is already each algorithm's own
//!   (`Check::next_after`).
//! * **Memory store keyed by policy identity**: inside [`store`], where a policy's state is
//!   found; the plan hands the store the tier's policies as it does now.
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
//!   (JSON, or a pricing-table page for browsers), `/dashboard` (with charts of the
//!   [`history`]) and the operator's `/admin`.
//! * `metrics` (default, through `prometheus`): `observe::MetricsObserver`, counting every
//!   decision through the `metrics` facade.
//! * `prometheus` (default): a `/metrics` route in the Prometheus text format.
//! * `webhook` (default): `observe::Webhook`, near-quota alerts POSTed off the request path.
//! * `email` (default): `observe::EmailAlerts`, near-quota emails through an SMTP relay
//!   (lettre), off the request path, at most one per client and policy per interval.
//! * `reqwest`: the same behaviour as `reqwest-middleware` middleware.
//!
//! For the leanest build, `default-features = false, features = ["axum", "config"]`.
//!
//! [Tower]: https://docs.rs/tower

#![warn(missing_docs, missing_debug_implementations, unreachable_pub, rust_2018_idioms)]
#![deny(unsafe_code)]
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
