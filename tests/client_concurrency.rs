//! Concurrent requests through one client: released one at a time at the server's published
//! pace, never in a burst; a request dropped while queued is never sent. Paused tokio time,
//! real HTTP.
#![cfg(feature = "client")]

#[path = "client_support.rs"]
mod support;

use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{self, StreamExt};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use support::{serve, token_bucket, Reply, TestServer};
use tokio::time::Instant;
use tollgate::client::{Pacer, Retry, RetryLayer, RetryPolicy, RetryReport, WaitReason};
use tower::{Layer, ServiceExt};

type Http = Client<HttpConnector, Full<Bytes>>;

fn client(policy: RetryPolicy) -> Retry<Http> {
    RetryLayer::new(policy.max_attempts(8).max_wait(Duration::from_secs(60)))
        .layer(Client::builder(TokioExecutor::new()).build_http())
}

/// `requests` GETs, `concurrency` in flight; returns how many got a 2xx and their reports.
async fn run(
    client: &Retry<Http>,
    server: &TestServer,
    requests: usize,
    concurrency: usize,
) -> (usize, Vec<RetryReport>) {
    let url = server.url("/api/simple");
    let results: Vec<(bool, RetryReport)> = stream::iter(0..requests)
        .map(|_| {
            let request = Request::get(&url).body(Full::new(Bytes::new())).unwrap();
            let client = client.clone();
            async move {
                let res = client.oneshot(request).await.unwrap();
                let ok = res.status().is_success();
                let report = res.extensions().get::<RetryReport>().cloned().unwrap();
                res.into_body().collect().await.unwrap();
                (ok, report)
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let ok = results.iter().filter(|(ok, _)| *ok).count();
    (ok, results.into_iter().map(|(_, report)| report).collect())
}

/// Arrival times at the server, in milliseconds from `start`.
fn arrivals(server: &TestServer, start: Instant) -> Vec<u128> {
    server.seen().iter().map(|s| (s.at - start).as_millis()).collect()
}

/// The most arrivals within any `window_ms` (a sliding window).
fn densest(arrivals: &[u128], window_ms: u128) -> usize {
    (0..arrivals.len())
        .map(|i| arrivals[i..].iter().take_while(|&&t| t < arrivals[i] + window_ms).count())
        .max()
        .unwrap_or(0)
}

#[tokio::test(start_paused = true)]
async fn twenty_requests_eight_in_flight_are_released_spaced_out() {
    // 5 per 3 s: a burst of 5, then one token every 600 ms, told by RateLimit (t = seconds to
    // the next token) and RateLimit-Policy (q=5, w=3); 429 + Retry-After when empty.
    let server = serve(token_bucket(5.0, 5.0 / 3.0)).await;
    let start = Instant::now();
    let (ok, reports) = run(&client(RetryPolicy::new()), &server, 20, 8).await;
    let at = arrivals(&server, start);
    let refused = server.seen().len() - ok;

    assert_eq!(ok, 20);
    assert!(refused <= 2, "{refused} 429s: {at:?}");
    // The server's burst may come at once; after it, never more than the pace allows: at most
    // 2 arrivals in any 600 ms (one per token, plus one held back by a rounded-up `t`) and at
    // most 6 in any 3 s, where a burst would put 8.
    assert!(densest(&at[..5], 100) <= 5);
    assert!(densest(&at[5..], 600) <= 2, "{at:?}");
    assert!(densest(&at[5..], 3000) <= 6, "{at:?}");
    // Spread over the time the server needs: 15 tokens at 600 ms each after the burst.
    let span = at[at.len() - 1];
    assert!((9000..=14_000).contains(&span), "{span} ms: {at:?}");
    // The requests waited in the queue, their turns told by the server's headers.
    let paced = reports.iter().filter(|r| r.waits.iter().any(|w| w.reason == WaitReason::Pacing)).count();
    assert!(paced >= 10, "{paced} requests waited for a turn");
}

/// The same run without the pacer: the burst the assertions above rule out.
#[tokio::test(start_paused = true)]
async fn without_the_pacer_the_same_run_comes_in_bursts() {
    let server = serve(token_bucket(5.0, 5.0 / 3.0)).await;
    let start = Instant::now();
    let (ok, _) = run(&client(RetryPolicy::new().pacer(None)), &server, 20, 8).await;
    let at = arrivals(&server, start);
    let refused = server.seen().len() - ok;

    assert_eq!(ok, 20);
    assert!(refused >= 24, "{refused} 429s: {at:?}");
    assert!(densest(&at, 100) >= 8, "{at:?}");
    assert!(densest(&at[5..], 600) > 2, "{at:?}");
}

#[tokio::test(start_paused = true)]
async fn a_request_dropped_while_queued_is_never_sent() {
    // Nothing left for 10 s after the first answer.
    let server = serve(|n, _| match n {
        0 => Reply::ok().header("ratelimit", r#""p";r=0;t=10"#),
        _ => Reply::ok(),
    })
    .await;
    let pacer = Pacer::new();
    let client = client(RetryPolicy::new().pacer(pacer.clone()));
    let url = server.url("/");
    let get = |client: Retry<Http>| {
        let request = Request::get(&url).body(Full::new(Bytes::new())).unwrap();
        async move { client.oneshot(request).await.map(|res| res.status()) }
    };
    assert_eq!(get(client.clone()).await.unwrap(), StatusCode::OK);
    let host = format!("127.0.0.1:{}", server.addr.port());
    let queued: Vec<_> = (0..4).map(|_| tokio::spawn(get(client.clone()))).collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(pacer.queued(&host), 4);
    // Two callers give up (a timeout, a cancelled task): their places go.
    queued[1].abort();
    let dropped = tokio::time::timeout(Duration::from_millis(1), get(client.clone())).await;
    assert!(dropped.is_err());
    queued[3].abort();
    tokio::task::yield_now().await;
    assert_eq!(pacer.queued(&host), 2);
    let start = Instant::now();
    for (i, task) in queued.into_iter().enumerate() {
        match task.await {
            Ok(result) => assert_eq!(result.unwrap(), StatusCode::OK, "{i}"),
            Err(e) => assert!(e.is_cancelled() && (i == 1 || i == 3), "{i}"),
        }
    }
    assert!(start.elapsed() <= Duration::from_secs(10));
    // The first request and the two that stayed: the dropped ones were never sent.
    assert_eq!(server.seen().len(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_fails_fast_without_sending() {
    let server = serve(|n, _| match n {
        0 => Reply::ok().header("ratelimit", r#""p";r=0;t=5"#),
        _ => Reply::ok(),
    })
    .await;
    let client = client(RetryPolicy::new().pacer(Pacer::new().max_queue(2)));
    let url = server.url("/");
    let get = |client: Retry<Http>| {
        let request = Request::get(&url).body(Full::new(Bytes::new())).unwrap();
        client.oneshot(request)
    };
    get(client.clone()).await.unwrap();
    let waiting: Vec<_> = (0..2).map(|_| tokio::spawn(get(client.clone()))).collect();
    tokio::task::yield_now().await;
    let err = get(client.clone()).await.expect_err("the queue is full");
    assert_eq!(err.report().stop, tollgate::client::StopReason::QueueFull);
    assert_eq!(err.report().attempts, 0);
    assert!(err.inner().is_none());
    for task in waiting {
        assert_eq!(task.await.unwrap().unwrap().status(), StatusCode::OK);
    }
    assert_eq!(server.seen().len(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_turn_beyond_the_wait_budget_fails_at_once() {
    let server = serve(|n, _| match n {
        0 => Reply::ok().header("ratelimit", r#""p";r=0;t=3600"#),
        _ => Reply::ok(),
    })
    .await;
    let client = client(RetryPolicy::new()).into_inner();
    let client = RetryLayer::new(RetryPolicy::new().max_wait(Duration::from_secs(30))).layer(client);
    let request = || Request::get(server.url("/")).body(Full::new(Bytes::new())).unwrap();
    client.clone().oneshot(request()).await.unwrap();
    let start = Instant::now();
    let err = client.oneshot(request()).await.expect_err("an hour is past the budget");
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(err.report().stop, tollgate::client::StopReason::WaitBudget);
    assert_eq!(err.report().attempts, 0);
    assert_eq!(server.seen().len(), 1);
}
