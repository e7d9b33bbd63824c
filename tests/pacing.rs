//! The crate's client against the crate's server: the retry layer's pacer reads tollgate's own
//! `RateLimit` header, whose `t` is the wait for the next token (draft-10), and must keep a
//! client out of 429s without waiting much longer than the rate requires.
//!
//! Both sides run in paused tokio time: the limiter's store reads a clock that follows tokio's,
//! so a whole run of waits takes no real time.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use nonzero_ext::nonzero;
use tollgate::algorithm::Quota;
use tollgate::client::{RetryLayer, RetryPolicy};
use tollgate::clock::{Clock, Nanos};
use tollgate::observe::{Event, Outcome};
use tollgate::policy::{Limits, TierSpec};
use tollgate::store::MemoryStore;
use tollgate::RateLimitLayer;
use tower::{Layer, ServiceExt};

/// Tokio's clock (paused in these tests), as the limiter's.
struct TokioClock(tokio::time::Instant);

impl Clock for TokioClock {
    fn now(&self) -> Nanos {
        Nanos::from_secs(1_800_000_000) + Nanos::from(self.0.elapsed())
    }
}

/// Sends `n` GETs one after the other through a pacing client to a tollgate server holding
/// `quota`; returns how many the server refused and how long the run took.
async fn run(quota: Quota, n: usize) -> (usize, Duration) {
    let limits = Limits::builder().tier("anonymous", TierSpec::new(quota)).build().unwrap();
    let refused = Arc::new(AtomicUsize::new(0));
    let count = refused.clone();
    let layer = RateLimitLayer::from_limits(limits)
        .with_store(MemoryStore::with_clock(TokioClock(tokio::time::Instant::now())))
        .observer(move |event: &Event<'_>| {
            if matches!(event.outcome, Outcome::Rejected(_)) {
                count.fetch_add(1, Ordering::SeqCst);
            }
        });
    let app = Router::new().route("/", get(|| async { "ok" })).layer(layer);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await.unwrap()
    });

    let http = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let client =
        RetryLayer::new(RetryPolicy::new().max_attempts(10).max_wait(Duration::from_secs(300))).layer(http);
    let start = tokio::time::Instant::now();
    for _ in 0..n {
        let req = Request::get(format!("http://{addr}/")).body(Full::new(Bytes::new())).unwrap();
        let res = client.clone().oneshot(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        res.into_body().collect().await.unwrap();
    }
    (refused.load(Ordering::SeqCst), start.elapsed())
}

#[tokio::test(start_paused = true)]
async fn ten_requests_at_one_a_second_burst_three_see_no_more_than_one_429() {
    // The contract's example: burst 3 at 1/s. 3 at once, then 7 at the rate: about 7 s.
    let (refused, elapsed) = run(Quota::per_second(nonzero!(1u32)).allow_burst(nonzero!(3u32)), 10).await;
    assert!(refused <= 1, "{refused} 429s");
    assert!(elapsed >= Duration::from_secs(6) && elapsed <= Duration::from_secs(10), "{elapsed:?}");
}

#[tokio::test(start_paused = true)]
async fn a_fast_rate_is_paced_by_the_unit_not_by_whole_seconds() {
    // 5 a second, burst 5: `t` is at most 1 s (whole seconds), but RateLimit-Policy's w/q says
    // a token comes back every 200 ms, so 30 requests take about 5 s, not 25.
    let (refused, elapsed) = run(Quota::per_second(nonzero!(5u32)), 30).await;
    assert!(refused <= 1, "{refused} 429s");
    assert!(elapsed >= Duration::from_secs(4) && elapsed <= Duration::from_secs(8), "{elapsed:?}");
}

#[tokio::test(start_paused = true)]
async fn a_slow_rate_waits_for_the_next_token_not_for_a_full_bucket() {
    // One a minute, burst 2: after the burst each request waits for one token (60 s), never for
    // the bucket to fill (120 s).
    let (refused, elapsed) = run(Quota::per_minute(nonzero!(1u32)).allow_burst(nonzero!(2u32)), 5).await;
    assert!(refused <= 1, "{refused} 429s");
    assert!(elapsed >= Duration::from_secs(180) && elapsed <= Duration::from_secs(200), "{elapsed:?}");
}
