//! `tollgate::client::reqwest::RetryMiddleware` against a real local HTTP server, through
//! reqwest-middleware, in paused tokio time.
#![cfg(feature = "reqwest")]

#[path = "client_support.rs"]
mod support;

use std::time::Duration;

use http::{Method, StatusCode};
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware};
use support::{serve, token_bucket, Reply};
use tollgate::client::reqwest::RetryMiddleware;
use tollgate::client::{AnyMethod, RetryError, RetryPolicy, RetryReport, StopReason, WaitReason};

fn client(policy: RetryPolicy) -> ClientWithMiddleware {
    ClientBuilder::new(reqwest::Client::new()).with(RetryMiddleware::new(policy)).build()
}

fn report(res: &reqwest::Response) -> RetryReport {
    res.extensions().get::<RetryReport>().cloned().unwrap()
}

#[tokio::test(start_paused = true)]
async fn retries_after_retry_after_and_reports() {
    let server = serve(|n, _| match n {
        0 => Reply::too_many(Some("2")),
        1 => Reply::status(503).header("retry-after", "1"),
        _ => Reply::ok(),
    })
    .await;
    let res = client(RetryPolicy::new()).get(server.url("/api/simple")).send().await.unwrap();
    let report = report(&res);

    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(report.attempts, 3);
    assert_eq!(report.total_wait, Duration::from_secs(3));
    let gaps = server.gaps_ms();
    assert!((2000..2050).contains(&gaps[0]), "{gaps:?}");
    assert!((1000..1050).contains(&gaps[1]), "{gaps:?}");
}

#[tokio::test(start_paused = true)]
async fn gives_up_when_retry_after_exceeds_the_budget() {
    let server = serve(|_, _| Reply::too_many(Some("120"))).await;
    let res = client(RetryPolicy::new().max_wait(Duration::from_secs(60)))
        .get(server.url("/"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(report(&res).stop, StopReason::WaitBudget);
    assert_eq!(server.seen().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn post_is_repeated_only_on_opt_in() {
    let server = serve(|_, _| Reply::too_many(Some("1"))).await;
    let url = server.url("/api/generate");
    let policy = RetryPolicy::new().max_attempts(3);

    let res = client(policy.clone()).post(&url).body("x").send().await.unwrap();
    assert_eq!(report(&res).stop, StopReason::NotRepeatable);
    assert_eq!(server.seen().len(), 1);

    let res = client(policy.repeatable(AnyMethod)).post(&url).body("x").send().await.unwrap();
    assert_eq!(report(&res).attempts, 3);
    assert_eq!(server.seen().iter().filter(|s| s.method == Method::POST).count(), 4);
}

#[tokio::test(start_paused = true)]
async fn paces_from_ratelimit_headers() {
    let server = serve(|n, _| match n {
        0 => Reply::ok().header("ratelimit", r#""p";r=0;t=4"#),
        _ => Reply::ok(),
    })
    .await;
    let client = client(RetryPolicy::new());
    client.get(server.url("/")).send().await.unwrap();
    let res = client.get(server.url("/")).send().await.unwrap();
    let report = report(&res);

    assert_eq!(report.waits.len(), 1);
    assert_eq!(report.waits[0].reason, WaitReason::Pacing);
    assert_eq!(report.waits[0].delay, Duration::from_secs(4));
    let gap = server.gaps_ms()[0];
    assert!((4000..4050).contains(&gap), "{gap}");
}

#[tokio::test(start_paused = true)]
async fn shares_the_policy_with_the_tower_layer_on_a_token_bucket() {
    let server = serve(token_bucket(3.0, 1.0)).await;
    let client = client(RetryPolicy::new().max_attempts(10));
    for _ in 0..10 {
        let res = client.get(server.url("/api/simple")).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
    }
    let rejected = server.seen().len() - 10;
    assert!(rejected <= 1, "{rejected} 429s");
}

#[tokio::test(start_paused = true)]
async fn github_403s_retried_only_with_a_rate_limit_signal() {
    let server = serve(|n, req| {
        let epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        match (req.uri().path(), n) {
            // The primary limit, spent: come back at x-ratelimit-reset (Unix seconds).
            ("/primary", 0) => Reply::status(403)
                .header("x-ratelimit-limit", "5000")
                .header("x-ratelimit-remaining", "0")
                .header("x-ratelimit-reset", (epoch + 2).to_string()),
            // The secondary limit: Retry-After, no other rate header.
            ("/secondary", 2) => Reply::status(403).header("retry-after", "3"),
            ("/plain", _) => Reply::status(403),
            _ => Reply::ok(),
        }
    })
    .await;
    let client = client(RetryPolicy::new());

    let res = client.get(server.url("/primary")).send().await.unwrap();
    let primary = report(&res);
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(primary.waits[0].reason, WaitReason::Reset);
    let waited = primary.waits[0].delay;
    assert!(waited > Duration::from_secs(1) && waited <= Duration::from_secs(2), "{waited:?}");

    let res = client.get(server.url("/secondary")).send().await.unwrap();
    let secondary = report(&res);
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(secondary.waits[0].reason, WaitReason::RetryAfter);
    assert_eq!(secondary.waits[0].delay, Duration::from_secs(3));

    let res = client.get(server.url("/plain")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert_eq!(report(&res).attempts, 1);
    assert_eq!(server.seen().iter().filter(|s| s.path == "/plain").count(), 1);
}

#[tokio::test(start_paused = true)]
async fn transport_errors_carry_the_report() {
    let addr = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let err = client(RetryPolicy::new())
        .get(format!("http://{addr}/"))
        .send()
        .await
        .expect_err("nothing listens there");
    let reqwest_middleware::Error::Middleware(any) = &err else {
        panic!("expected the middleware's error, got {err:?}");
    };
    let retry = any.downcast_ref::<RetryError<reqwest_middleware::Error>>().expect("a RetryError");
    assert_eq!(retry.report().attempts, 1);
    assert_eq!(retry.report().stop, StopReason::InnerError);
    assert!(matches!(retry.inner(), Some(reqwest_middleware::Error::Reqwest(e)) if e.is_connect()));
}
