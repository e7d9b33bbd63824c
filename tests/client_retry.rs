//! The tower client layer against a real local HTTP server, through hyper-util's legacy
//! client, in paused tokio time (the server runs in the same runtime).
#![cfg(feature = "client")]

#[path = "client_support.rs"]
mod support;

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use support::{serve, token_bucket, Reply, TestServer};
use tollgate::client::{
    AnyMethod, Backoff, Pacer, RateLimitSignal, Retry, RetryLayer, RetryPolicy, RetryReport, StopReason,
    WaitReason,
};
use tower::{Layer, ServiceExt};

type Http = Client<HttpConnector, Full<Bytes>>;

fn http() -> Http {
    Client::builder(TokioExecutor::new()).build_http()
}

fn client(policy: RetryPolicy) -> Retry<Http> {
    RetryLayer::new(policy).layer(http())
}

async fn send(client: &Retry<Http>, method: Method, url: &str) -> (StatusCode, RetryReport) {
    let request =
        Request::builder().method(method).uri(url).body(Full::new(Bytes::from_static(b"payload"))).unwrap();
    let res: Response<Incoming> = client.clone().oneshot(request).await.unwrap();
    let status = res.status();
    let report = res.extensions().get::<RetryReport>().cloned().unwrap();
    res.into_body().collect().await.unwrap();
    (status, report)
}

async fn get(client: &Retry<Http>, server: &TestServer) -> (StatusCode, RetryReport) {
    send(client, Method::GET, &server.url("/api/simple")).await
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn reasons(report: &RetryReport) -> Vec<WaitReason> {
    report.waits.iter().map(|w| w.reason).collect()
}

#[tokio::test(start_paused = true)]
async fn waits_for_retry_after_seconds() {
    let server = serve(|n, _| match n {
        0 => Reply::too_many(Some("3")),
        1 => Reply::too_many(Some("1")),
        _ => Reply::ok(),
    })
    .await;
    let (status, report) = get(&client(RetryPolicy::new()), &server).await;

    assert_eq!(status, StatusCode::OK);
    assert_eq!(report.attempts, 3);
    assert_eq!(report.last_status, Some(StatusCode::OK));
    assert_eq!(report.stop, StopReason::Completed);
    assert_eq!(reasons(&report), [WaitReason::RetryAfter; 2]);
    assert_eq!(report.waits[0].delay, secs(3));
    assert_eq!(report.waits[0].attempt, 2);
    assert_eq!(report.waits[1].delay, secs(1));
    assert_eq!(report.total_wait, secs(4));
    // The server saw the retries 3 s and 1 s apart (paused time: exactly, give or take I/O).
    let gaps = server.gaps_ms();
    assert_eq!(gaps.len(), 2);
    assert!((3000..3050).contains(&gaps[0]), "{gaps:?}");
    assert!((1000..1050).contains(&gaps[1]), "{gaps:?}");
}

#[tokio::test(start_paused = true)]
async fn waits_for_retry_after_http_date() {
    let server = serve(|n, _| match n {
        0 => {
            let at = SystemTime::now() + secs(3);
            Reply::too_many(Some(&httpdate::fmt_http_date(at)))
        }
        _ => Reply::ok(),
    })
    .await;
    let (status, report) = get(&client(RetryPolicy::new()), &server).await;

    assert_eq!(status, StatusCode::OK);
    assert_eq!(reasons(&report), [WaitReason::RetryAfter]);
    // HTTP dates have whole seconds: "now + 3 s" truncated is 2 to 3 s away.
    let delay = report.waits[0].delay;
    assert!(delay > secs(2) && delay <= secs(3), "{delay:?}");
    let gap = server.gaps_ms()[0];
    assert!((2000..3050).contains(&gap), "{gap}");
}

#[tokio::test(start_paused = true)]
async fn missing_or_garbage_retry_after_backs_off_with_jitter() {
    for retry_after in [None, Some("soon"), Some("-5"), Some("1.5")] {
        let server = serve(move |n, _| if n < 3 { Reply::too_many(retry_after) } else { Reply::ok() }).await;
        let backoff = Backoff::new(Duration::from_millis(400), secs(10));
        let policy = RetryPolicy::new().backoff(backoff);
        let (status, report) = get(&client(policy), &server).await;

        assert_eq!(status, StatusCode::OK, "{retry_after:?}");
        assert_eq!(report.attempts, 4);
        assert_eq!(reasons(&report), [WaitReason::Backoff; 3], "{retry_after:?}");
        for (retry, wait) in report.waits.iter().enumerate() {
            assert!(wait.delay <= backoff.bound(retry as u32), "{wait:?}");
        }
        // What the layer says it waited is what the server observed.
        for (gap, wait) in server.gaps_ms().iter().zip(&report.waits) {
            let want = wait.delay.as_millis();
            assert!(*gap >= want && *gap < want + 50, "{gap} vs {want}");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn jittered_retries_spread_between_clients() {
    // 40 clients rejected at the same instant do not come back together.
    let server = serve(|_, _| Reply::too_many(None)).await;
    let policy = RetryPolicy::new().max_attempts(2).backoff(Backoff::new(secs(10), secs(10)));
    let mut delays = Vec::new();
    for _ in 0..40 {
        let (_, report) = get(&client(policy.clone()), &server).await;
        delays.push(report.waits[0].delay);
    }
    delays.sort();
    delays.dedup();
    assert!(delays.len() >= 35, "only {} distinct delays", delays.len());
    assert!(delays.iter().all(|d| *d <= secs(10)));
    assert!(delays[0] < secs(3) && delays[delays.len() - 1] > secs(7), "{delays:?}");
}

#[test]
fn a_thousand_backoff_delays_are_uniform_over_zero_to_bound() {
    let backoff = Backoff::new(Duration::from_millis(250), secs(30));
    for retry in [0u32, 3, 10] {
        let bound = backoff.bound(retry).as_secs_f64();
        let samples: Vec<f64> = (0..1000).map(|_| backoff.delay(retry).as_secs_f64() / bound).collect();
        let mut buckets = [0u32; 10];
        for s in &samples {
            assert!((0.0..=1.0).contains(s), "{s}");
            buckets[((s * 10.0) as usize).min(9)] += 1;
        }
        // Uniform: 100 per decile expected; 50..150 fails with odds below 1e-6.
        assert!(buckets.iter().all(|&n| (50..=150).contains(&n)), "{buckets:?}");
        let mean = samples.iter().sum::<f64>() / 1000.0;
        assert!((0.44..0.56).contains(&mean), "mean {mean}");
        let min = samples.iter().cloned().fold(f64::MAX, f64::min);
        let max = samples.iter().cloned().fold(0.0, f64::max);
        assert!(min < 0.02 && max > 0.98, "{min} {max}");
    }
    assert_eq!(backoff.bound(10), secs(30));
}

#[tokio::test(start_paused = true)]
async fn stops_after_max_attempts() {
    let server = serve(|_, _| Reply::too_many(Some("1"))).await;
    let (status, report) = get(&client(RetryPolicy::new().max_attempts(3)), &server).await;

    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(server.seen().len(), 3);
    assert_eq!(report.attempts, 3);
    assert_eq!(report.stop, StopReason::MaxAttempts);
    assert_eq!(report.last_status, Some(StatusCode::TOO_MANY_REQUESTS));
    assert_eq!(report.total_wait, secs(2));
}

#[tokio::test(start_paused = true)]
async fn stops_at_the_total_wait_budget() {
    let server = serve(|_, _| Reply::too_many(Some("4"))).await;
    let policy = RetryPolicy::new().max_attempts(10).max_wait(secs(10));
    let start = tokio::time::Instant::now();
    let (status, report) = get(&client(policy), &server).await;

    // 4 + 4 = 8 s waited; another 4 s would pass 10 s, so it returns the third 429.
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(server.seen().len(), 3);
    assert_eq!(report.stop, StopReason::WaitBudget);
    assert_eq!(report.total_wait, secs(8));
    assert!(start.elapsed() < Duration::from_millis(8100), "{:?}", start.elapsed());
}

#[tokio::test(start_paused = true)]
async fn retry_after_beyond_the_budget_returns_at_once() {
    let server = serve(|_, _| Reply::too_many(Some("3600"))).await;
    let start = tokio::time::Instant::now();
    let (status, report) = get(&client(RetryPolicy::new().max_wait(secs(30))), &server).await;

    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(server.seen().len(), 1);
    assert_eq!(report.attempts, 1);
    assert_eq!(report.stop, StopReason::WaitBudget);
    assert_eq!(report.total_wait, Duration::ZERO);
    assert!(start.elapsed() < Duration::from_millis(50), "{:?}", start.elapsed());
}

#[tokio::test(start_paused = true)]
async fn a_huge_retry_after_is_capped_at_a_day_and_returned_at_once() {
    let server = serve(|_, _| Reply::too_many(Some("99999999999999999999999"))).await;
    let start = tokio::time::Instant::now();
    let policy = RetryPolicy::new().max_wait(RateLimitSignal::MAX_WAIT);
    let (status, report) = get(&client(policy), &server).await;
    // Capped at a day, which is the whole budget: one day plus nothing is still within it.
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(server.seen().len(), 2);
    assert_eq!(report.waits[0].delay, RateLimitSignal::MAX_WAIT);
    assert_eq!(report.stop, StopReason::WaitBudget);
    assert!(start.elapsed() < RateLimitSignal::MAX_WAIT + Duration::from_secs(1));
    // With the default budget, it is returned at once.
    let (status, report) = get(&client(RetryPolicy::new()), &server).await;
    assert_eq!(
        (status, report.attempts, report.total_wait),
        (StatusCode::TOO_MANY_REQUESTS, 1, Duration::ZERO)
    );
}

#[tokio::test(start_paused = true)]
async fn non_idempotent_requests_are_not_repeated() {
    let server = serve(|_, _| Reply::too_many(Some("1"))).await;
    let url = server.url("/api/generate");
    let policy = RetryPolicy::new().max_attempts(3);

    for method in [Method::POST, Method::PATCH] {
        let (status, report) = send(&client(policy.clone()), method.clone(), &url).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(report.attempts, 1, "{method}");
        assert_eq!(report.stop, StopReason::NotRepeatable);
    }
    let posts = server.seen().iter().filter(|s| s.method == Method::POST).count();
    assert_eq!(posts, 1, "a POST was sent twice");

    // Idempotent methods are repeated, and POST is when the caller opts in.
    let (_, report) = send(&client(policy.clone()), Method::PUT, &url).await;
    assert_eq!(report.attempts, 3);
    let (_, report) = send(&client(policy.clone().repeatable(AnyMethod)), Method::POST, &url).await;
    assert_eq!(report.attempts, 3);
    assert_eq!(report.stop, StopReason::MaxAttempts);
    let posts = server.seen().iter().filter(|s| s.method == Method::POST).count();
    assert_eq!(posts, 4);
}

#[tokio::test(start_paused = true)]
async fn only_refusals_are_retried() {
    let server = serve(|n, req| match (req.uri().path(), n) {
        ("/unavailable", _) if n % 2 == 0 => Reply::status(503),
        ("/unavailable", _) => Reply::ok(),
        (path, _) => Reply::status(path[1..].parse().unwrap()),
    })
    .await;
    let client = client(
        RetryPolicy::new().backoff(Backoff::new(Duration::from_millis(10), Duration::from_millis(10))),
    );
    let (status, report) = send(&client, Method::GET, &server.url("/unavailable")).await;
    assert_eq!((status, report.attempts), (StatusCode::OK, 2));
    assert_eq!(reasons(&report), [WaitReason::Backoff]);
    for code in [500u16, 502, 403, 404] {
        let (status, report) = send(&client, Method::GET, &server.url(&format!("/{code}"))).await;
        assert_eq!(status.as_u16(), code);
        assert_eq!(report.attempts, 1);
        assert_eq!(report.stop, StopReason::Completed);
    }
}

#[tokio::test(start_paused = true)]
async fn paces_when_ratelimit_says_nothing_remains() {
    let server = serve(|n, _| match n {
        0 => Reply::ok().header("ratelimit", r#""free";r=0;t=5, "free-daily";r=9950;t=41000"#),
        _ => Reply::ok().header("ratelimit", r#""free";r=9;t=1"#),
    })
    .await;
    let client = client(RetryPolicy::new());
    let (_, first) = get(&client, &server).await;
    assert!(first.waits.is_empty());
    let (status, second) = get(&client, &server).await;

    assert_eq!(status, StatusCode::OK);
    assert_eq!(reasons(&second), [WaitReason::Pacing]);
    assert_eq!(second.waits[0].delay, secs(5));
    assert_eq!(second.attempts, 1);
    let gap = server.gaps_ms()[0];
    assert!((5000..5050).contains(&gap), "{gap}");
    // Plenty left now: the third request goes at once.
    let (_, third) = get(&client, &server).await;
    assert!(third.waits.is_empty());
}

#[tokio::test(start_paused = true)]
async fn paces_from_legacy_x_ratelimit_headers() {
    let server = serve(|n, _| {
        let epoch = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
        match n {
            0 => Reply::ok()
                .header("x-ratelimit-remaining", "0")
                .header("x-ratelimit-reset", (epoch + 4).to_string()),
            _ => Reply::ok(),
        }
    })
    .await;
    let client = client(RetryPolicy::new());
    get(&client, &server).await;
    let (_, second) = get(&client, &server).await;

    assert_eq!(reasons(&second), [WaitReason::Pacing]);
    let delay = second.waits[0].delay;
    assert!(delay > secs(3) && delay <= secs(4), "{delay:?}");
    let gap = server.gaps_ms()[0];
    assert!((3000..4050).contains(&gap), "{gap}");
}

#[tokio::test(start_paused = true)]
async fn spreads_the_last_requests_over_the_reset_time() {
    let server = serve(|_, _| Reply::ok().header("ratelimit", r#""p";r=2;t=9"#)).await;
    let client = client(RetryPolicy::new().pacer(Pacer::new().spread_below(3)));
    for _ in 0..3 {
        get(&client, &server).await;
    }
    // r=2 of t=9 s: one request every 9 / 3 = 3 s.
    for gap in server.gaps_ms() {
        assert!((3000..3050).contains(&gap), "{gap}");
    }
}

#[tokio::test(start_paused = true)]
async fn pacing_is_per_host() {
    let limited = serve(|_, _| Reply::ok().header("ratelimit", r#""p";r=0;t=30"#)).await;
    let other = serve(|_, _| Reply::ok()).await;
    let client = client(RetryPolicy::new());
    get(&client, &limited).await;
    let start = tokio::time::Instant::now();
    let (_, report) = get(&client, &other).await;
    assert!(report.waits.is_empty());
    assert!(start.elapsed() < Duration::from_millis(50));
}

#[tokio::test(start_paused = true)]
async fn pacing_keeps_a_token_bucket_client_out_of_429s() {
    // burst 3 at 1/s, as in the contract: 10 back-to-back requests.
    async fn run(policy: RetryPolicy) -> (usize, u32, Duration) {
        let server = serve(token_bucket(3.0, 1.0)).await;
        let client = client(policy.max_attempts(10));
        let start = tokio::time::Instant::now();
        let mut ok = 0;
        for _ in 0..10 {
            let (status, _) = get(&client, &server).await;
            ok += usize::from(status == StatusCode::OK);
        }
        let rejected = server.seen().len() as u32 - 10;
        (ok, rejected, start.elapsed())
    }
    let (ok, rejected_paced, elapsed) = run(RetryPolicy::new()).await;
    assert_eq!(ok, 10);
    assert!(rejected_paced <= 1, "{rejected_paced} 429s with pacing");
    // 3 from the burst, then 7 at 1/s: at least 7 s, and pacing does not waste much more.
    assert!(elapsed >= secs(6) && elapsed <= secs(12), "{elapsed:?}");

    let (ok, rejected_unpaced, _) = run(RetryPolicy::new().pacer(None)).await;
    assert_eq!(ok, 10);
    assert!(rejected_unpaced >= 5, "{rejected_unpaced} 429s without pacing");
}

#[tokio::test(start_paused = true)]
async fn inner_errors_carry_the_report() {
    // A port with nobody listening.
    let addr = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let request = Request::get(format!("http://{addr}/")).body(Full::new(Bytes::new())).unwrap();
    let err = client(RetryPolicy::new()).oneshot(request).await.expect_err("nothing listens there");
    assert_eq!(err.report().attempts, 1);
    assert_eq!(err.report().stop, StopReason::InnerError);
    assert_eq!(err.report().last_status, None);
    assert!(err.inner().is_some_and(|e| e.is_connect()), "{:?}", err.inner());
    assert!(std::error::Error::source(&err).is_some());
}
