//! The client against stand-in servers speaking each rate-limit dialect it claims to
//! understand: one small real HTTP server per dialect, bound in the test, in paused tokio time.
//!
//! Each server keeps its own limit (a fixed window, or a token bucket) and answers the way the
//! API it stands for does. Its Unix times come from a wall clock that moves with tokio's paused
//! clock, and the client is given the same clock (`RetryPolicy::wall_clock`).
#![cfg(feature = "client")]

#[path = "client_support.rs"]
mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::stream::{self, StreamExt};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use support::{serve, Reply, TestServer};
use tokio::time::Instant;
use tollgate::client::{Retry, RetryLayer, RetryPolicy, RetryReport, StopReason, WaitReason};
use tower::{Layer, ServiceExt};

type Http = Client<HttpConnector, Full<Bytes>>;

/// The stand-ins' wall clock: 2023-11-14T22:13:20Z when the test starts, then tokio's time.
#[derive(Clone, Copy)]
struct Wall {
    start: Instant,
}

impl Wall {
    fn new() -> Self {
        Self { start: Instant::now() }
    }

    fn now(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_000) + self.start.elapsed()
    }

    fn epoch_secs(&self) -> u64 {
        self.now().duration_since(UNIX_EPOCH).unwrap().as_secs()
    }
}

fn client(wall: Wall) -> Retry<Http> {
    let policy =
        RetryPolicy::new().max_attempts(8).max_wait(Duration::from_secs(60)).wall_clock(move || wall.now());
    RetryLayer::new(policy).layer(Client::builder(TokioExecutor::new()).build_http())
}

/// What a run of requests came to.
#[derive(Debug)]
struct Run {
    ok: usize,
    reports: Vec<RetryReport>,
    elapsed: Duration,
    /// Requests the server saw beyond the ones that succeeded.
    extra: usize,
}

/// `requests` GETs through one client, `concurrency` in flight at once.
async fn run(server: &TestServer, wall: Wall, requests: usize, concurrency: usize) -> Run {
    let client = client(wall);
    let start = Instant::now();
    let url = server.url("/api/simple");
    let results: Vec<(StatusCode, RetryReport)> = stream::iter(0..requests)
        .map(|_| {
            let request = Request::get(&url).body(Full::new(Bytes::new())).unwrap();
            let client = client.clone();
            async move {
                let res = client.oneshot(request).await.unwrap();
                let status = res.status();
                let report = res.extensions().get::<RetryReport>().cloned().unwrap();
                res.into_body().collect().await.unwrap();
                (status, report)
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let ok = results.iter().filter(|(status, _)| *status == StatusCode::OK).count();
    Run {
        ok,
        reports: results.into_iter().map(|(_, report)| report).collect(),
        elapsed: start.elapsed(),
        extra: server.seen().len() - ok,
    }
}

/// A fixed window of `limit` requests per `window` seconds, windows counted from the start
/// (so they end on whole Unix seconds). `spent` = the first window is already used up (by
/// another process of the same user).
struct FixedWindow {
    wall: Wall,
    limit: u64,
    window: u64,
    state: Mutex<(u64, u64)>, // (window index, used in it)
}

/// What one request met.
struct Count {
    admitted: bool,
    remaining: u64,
    /// Seconds until the window ends, rounded up.
    reset_in: u64,
    /// Unix seconds at which the window ends.
    reset_at: u64,
}

impl FixedWindow {
    fn new(wall: Wall, limit: u64, window: u64, spent: bool) -> Arc<Self> {
        Arc::new(Self { wall, limit, window, state: Mutex::new((0, if spent { limit } else { 0 })) })
    }

    fn count(&self) -> Count {
        let elapsed = self.wall.start.elapsed();
        let index = elapsed.as_secs() / self.window;
        let mut state = self.state.lock().unwrap();
        if state.0 != index {
            *state = (index, 0);
        }
        let admitted = state.1 < self.limit;
        if admitted {
            state.1 += 1;
        }
        let end = Duration::from_secs((index + 1) * self.window);
        Count {
            admitted,
            remaining: self.limit - state.1,
            reset_in: (end - elapsed).as_secs_f64().ceil() as u64,
            reset_at: self.wall.epoch_secs() - elapsed.as_secs() + end.as_secs(),
        }
    }
}

/// A token bucket of `burst`, one token every `burst / window` seconds, answering with the
/// IETF fields (draft-10: `t` = seconds until the next token, 0 when full).
struct Bucket {
    burst: f64,
    window: f64,
    state: Mutex<(f64, Instant)>,
}

impl Bucket {
    fn new(burst: u64, window: u64) -> Arc<Self> {
        Arc::new(Self {
            burst: burst as f64,
            window: window as f64,
            state: Mutex::new((burst as f64, Instant::now())),
        })
    }

    /// (admitted, remaining, seconds until the next token).
    fn take(&self) -> (bool, u64, u64) {
        let per_sec = self.burst / self.window;
        let mut state = self.state.lock().unwrap();
        let now = Instant::now();
        let tokens = (state.0 + (now - state.1).as_secs_f64() * per_sec).min(self.burst);
        let admitted = tokens >= 1.0;
        let tokens = if admitted { tokens - 1.0 } else { tokens };
        *state = (tokens, now);
        let next = if tokens >= self.burst { 0 } else { ((1.0 - tokens.fract()) / per_sec).ceil() as u64 };
        (admitted, tokens.floor() as u64, next)
    }
}

/// GitHub's primary limit: `x-ratelimit-*` on every answer, a 403 with remaining 0 when spent.
fn github_primary(limit: &Arc<FixedWindow>) -> impl Fn(usize, &Request<Incoming>) -> Reply {
    let limit = Arc::clone(limit);
    move |_, _| {
        let count = limit.count();
        Reply::status(if count.admitted { 200 } else { 403 })
            .header("x-ratelimit-limit", limit.limit.to_string())
            .header("x-ratelimit-remaining", count.remaining.to_string())
            .header("x-ratelimit-used", (limit.limit - count.remaining).to_string())
            .header("x-ratelimit-reset", count.reset_at.to_string())
            .header("x-ratelimit-resource", "core")
    }
}

/// express-rate-limit, `standardHeaders: 'draft-6'`; 429 with `Retry-After` unless told not to.
fn express_draft6(
    limit: &Arc<FixedWindow>,
    retry_after: bool,
) -> impl Fn(usize, &Request<Incoming>) -> Reply {
    let limit = Arc::clone(limit);
    move |_, _| {
        let count = limit.count();
        let reply = Reply::status(if count.admitted { 200 } else { 429 })
            .header("ratelimit-policy", format!("{};w={}", limit.limit, limit.window))
            .header("ratelimit-limit", limit.limit.to_string())
            .header("ratelimit-remaining", count.remaining.to_string())
            .header("ratelimit-reset", count.reset_in.to_string());
        if !count.admitted && retry_after {
            reply.header("retry-after", count.reset_in.to_string())
        } else {
            reply
        }
    }
}

/// express-rate-limit, `standardHeaders: 'draft-7'`.
fn express_draft7(
    limit: &Arc<FixedWindow>,
    retry_after: bool,
) -> impl Fn(usize, &Request<Incoming>) -> Reply {
    let limit = Arc::clone(limit);
    move |_, _| {
        let count = limit.count();
        let reply = Reply::status(if count.admitted { 200 } else { 429 })
            .header("ratelimit-policy", format!("{};w={}", limit.limit, limit.window))
            .header(
                "ratelimit",
                format!("limit={}, remaining={}, reset={}", limit.limit, count.remaining, count.reset_in),
            );
        if !count.admitted && retry_after {
            reply.header("retry-after", count.reset_in.to_string())
        } else {
            reply
        }
    }
}

/// The IETF draft-10 fields, the policy named by an sf-String (`"burst"`) or an sf-Token.
fn ietf(
    bucket: &Arc<Bucket>,
    quoted: bool,
    retry_after: bool,
) -> impl Fn(usize, &Request<Incoming>) -> Reply {
    let bucket = Arc::clone(bucket);
    let name = if quoted { "\"burst\"" } else { "burst" };
    move |_, _| {
        let (admitted, remaining, next) = bucket.take();
        let reply = Reply::status(if admitted { 200 } else { 429 })
            .header("ratelimit-policy", format!("{name};q={};w={}", bucket.burst, bucket.window))
            .header("ratelimit", format!("{name};r={remaining};t={next}"));
        if !admitted && retry_after {
            reply.header("retry-after", next.max(1).to_string())
        } else {
            reply
        }
    }
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

fn assert_between(elapsed: Duration, low: f64, high: f64) {
    assert!(elapsed >= secs(low) && elapsed <= secs(high), "{elapsed:?} not in [{low}, {high}] s");
}

#[tokio::test(start_paused = true)]
async fn github_primary_limit_with_the_window_already_spent() {
    for concurrency in [1, 3] {
        let wall = Wall::new();
        let limit = FixedWindow::new(wall, 5, 3, true);
        let server = serve(github_primary(&limit)).await;
        let run = run(&server, wall, 12, concurrency).await;

        assert_eq!(run.ok, 12, "{concurrency}: {run:?}");
        // The first answer is the 403; the window opens again at 3 s. 5 + 5 + 2 requests
        // need the windows starting at 3, 6 and 9 s.
        assert_between(run.elapsed, 9.0, 10.0);
        assert!(run.extra <= 3, "{concurrency}: {} requests more than needed", run.extra);
        // Told to wait until x-ratelimit-reset, it did.
        let waited_for_reset = run
            .reports
            .iter()
            .flat_map(|r| &r.waits)
            .find(|w| w.reason == WaitReason::Reset)
            .expect("a reset wait");
        assert_eq!(waited_for_reset.delay, secs(3.0), "{concurrency}");
        for seen in server.seen().iter().skip(1).take(5) {
            assert!(seen.at - wall.start >= secs(3.0), "nothing sent before the reset");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn github_secondary_limit_403_with_retry_after_only() {
    for concurrency in [1, 3] {
        let wall = Wall::new();
        // At most 3 requests per 2 s window; past that, 403 + Retry-After and nothing else.
        let limit = FixedWindow::new(wall, 3, 2, false);
        let counter = Arc::clone(&limit);
        let server = serve(move |_, _| {
            let count = counter.count();
            if count.admitted {
                Reply::ok()
            } else {
                Reply::status(403).header("retry-after", count.reset_in.to_string())
            }
        })
        .await;
        let run = run(&server, wall, 12, concurrency).await;

        assert_eq!(run.ok, 12, "{concurrency}: {run:?}");
        // 3 per window: the windows at 0, 2, 4 and 6 s.
        assert_between(run.elapsed, 6.0, 7.0);
        // Without rate headers the client learns only from refusals: one as each of the three
        // later windows fills, plus, the first time, the requests already in flight. After a
        // refusal it sends one at a time (GitHub's advice for its secondary limit).
        let limit = 3 + (concurrency - 1);
        assert!(run.extra <= limit, "{concurrency}: {} requests more than needed", run.extra);
        let told: Vec<_> = run
            .reports
            .iter()
            .flat_map(|r| &r.waits)
            .filter(|w| w.reason == WaitReason::RetryAfter)
            .collect();
        assert!(!told.is_empty() && told.iter().all(|w| w.delay <= secs(2.0)), "{told:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn express_rate_limit_draft6_headers() {
    for concurrency in [1, 3] {
        let wall = Wall::new();
        let limit = FixedWindow::new(wall, 5, 3, false);
        let server = serve(express_draft6(&limit, true)).await;
        let run = run(&server, wall, 12, concurrency).await;

        assert_eq!(run.ok, 12, "{concurrency}: {run:?}");
        // 5 + 5 + 2 in the windows at 0, 3 and 6 s.
        assert_between(run.elapsed, 6.0, 7.0);
        assert!(run.extra <= 2, "{concurrency}: {} requests more than needed", run.extra);
    }
}

#[tokio::test(start_paused = true)]
async fn express_rate_limit_draft7_combined_header() {
    for concurrency in [1, 3] {
        let wall = Wall::new();
        let limit = FixedWindow::new(wall, 5, 3, false);
        let server = serve(express_draft7(&limit, true)).await;
        let run = run(&server, wall, 12, concurrency).await;

        assert_eq!(run.ok, 12, "{concurrency}: {run:?}");
        assert_between(run.elapsed, 6.0, 7.0);
        assert!(run.extra <= 2, "{concurrency}: {} requests more than needed", run.extra);
    }
}

#[tokio::test(start_paused = true)]
async fn ietf_headers_with_string_and_token_policy_names() {
    for quoted in [true, false] {
        for concurrency in [1, 3] {
            let wall = Wall::new();
            let bucket = Bucket::new(5, 3);
            let server = serve(ietf(&bucket, quoted, true)).await;
            let run = run(&server, wall, 12, concurrency).await;

            assert_eq!(run.ok, 12, "{quoted} {concurrency}: {run:?}");
            // 5 at once, then one every 600 ms: 7 × 0.6 = 4.2 s at least; `t` in whole
            // seconds makes the client a little more careful than that.
            assert_between(run.elapsed, 4.2, 6.0);
            assert!(run.extra <= 2, "{quoted} {concurrency}: {} requests more than needed", run.extra);
        }
    }
}

/// Without `Retry-After`, a refusal whose headers say nothing remains waits for their reset
/// (not for a blind backoff), in every dialect.
#[tokio::test(start_paused = true)]
async fn a_refusal_without_retry_after_waits_for_the_dialects_reset() {
    type Script = Box<dyn Fn(usize, &Request<Incoming>) -> Reply + Send + Sync>;
    type MakeScript = fn(Wall) -> Script;
    let dialects: [(&str, MakeScript); 3] = [
        ("draft-6", |wall| Box::new(express_draft6(&FixedWindow::new(wall, 2, 3, true), false))),
        ("draft-7", |wall| Box::new(express_draft7(&FixedWindow::new(wall, 2, 3, true), false))),
        ("ietf", |_| {
            let bucket = Bucket::new(2, 3);
            bucket.take();
            bucket.take();
            Box::new(ietf(&bucket, true, false))
        }),
    ];
    for (name, script) in dialects {
        let wall = Wall::new();
        let script = script(wall);
        let server = serve(move |n, req| script(n, req)).await;
        let request = Request::get(server.url("/")).body(Full::new(Bytes::new())).unwrap();
        let res = client(wall).oneshot(request).await.unwrap();
        let report = res.extensions().get::<RetryReport>().cloned().unwrap();

        assert_eq!(res.status(), StatusCode::OK, "{name}: {report:?}");
        assert_eq!(report.waits[0].reason, WaitReason::Reset, "{name}: {report:?}");
        // Fixed windows reset at 3 s; the bucket's next token is 1.5 s away, rounded up to 2.
        let want = if name == "ietf" { 2.0 } else { 3.0 };
        assert_eq!(report.waits[0].delay, secs(want), "{name}");
        assert_eq!(report.attempts, 2, "{name}: {report:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_plain_403_is_never_retried() {
    let wall = Wall::new();
    let server = serve(move |_, req| match req.uri().path() {
        // A permission error from an API that sends its rate headers on every answer.
        "/github" => Reply::status(403)
            .header("x-ratelimit-limit", "5000")
            .header("x-ratelimit-remaining", "4999")
            .header("x-ratelimit-reset", (wall.epoch_secs() + 3600).to_string()),
        // Nothing remains, but no reset says when: no rate-limit signal.
        "/no-reset" => Reply::status(403).header("x-ratelimit-remaining", "0"),
        _ => Reply::status(403),
    })
    .await;
    let client = client(wall);
    for path in ["/plain", "/github", "/no-reset"] {
        let start = Instant::now();
        let request = Request::get(server.url(path)).body(Full::new(Bytes::new())).unwrap();
        let res = client.clone().oneshot(request).await.unwrap();
        let report = res.extensions().get::<RetryReport>().cloned().unwrap();
        assert_eq!(res.status(), StatusCode::FORBIDDEN, "{path}");
        assert_eq!(report.attempts, 1, "{path}");
        assert_eq!(report.stop, StopReason::Completed, "{path}");
        assert!(report.waits.is_empty(), "{path}: {report:?}");
        assert_eq!(start.elapsed(), Duration::ZERO, "{path}");
    }
    assert_eq!(server.seen().len(), 3, "each sent once");
}
