//! Redis dies under load and comes back: each `on_error` mode through a real `RateLimitLayer`.
//!
//! Each test starts its own `redis-server` on a free port, drives the layer from four tasks,
//! kills the server by PID, checks the answers (allow: forwarded without headers; deny: 503
//! problem+json; local: still limited in-process; never another 5xx, never a 429 for the fault),
//! then restarts the server on the same port and checks the limiter is back on Redis within a
//! second.
#![cfg(feature = "redis")]

#[path = "redis_support.rs"]
mod support;

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use redis::Commands;
use support::*;
use tollgate::key::Key;
use tollgate::store::RedisStore;
use tollgate::{Config, RateLimitLayer};
use tower::{service_fn, ServiceBuilder, ServiceExt};

fn config(url: &str, mode: &str, prefix: &str) -> Config {
    Config::from_toml(&format!(
        r#"
# Never limits this test's load (100 000 back to back), but each request's key lives for a
# second (one token a second), so the test can see that Redis decided.
[tiers.anonymous]
requests_per_minute = 60
burst = 100000

[tiers.tight]
requests_per_minute = 60
burst = 3

[api_keys]
"tight-key" = "tight"

[store]
backend = "redis"
url = "{url}"
on_error = "{mode}"
prefix = "{prefix}"
timeout_ms = 50
probe_interval_ms = 100
"#
    ))
    .unwrap()
}

#[derive(Debug, Clone)]
struct Seen {
    at: Instant,
    status: StatusCode,
    headers: bool,
    problem: bool,
    latency: Duration,
}

type Svc = tower::util::BoxCloneService<Request<Full<Bytes>>, Response<Full<Bytes>>, Infallible>;

fn service(layer: RateLimitLayer) -> Svc {
    let svc = ServiceBuilder::new().layer(layer).service(service_fn(|_req: Request<Full<Bytes>>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
    }));
    // Collect bodies away: only status and headers matter here.
    tower::util::BoxCloneService::new(svc.map_response(|res| res.map(|_| Full::new(Bytes::new()))))
}

fn from_ip(ip: IpAddr) -> Request<Full<Bytes>> {
    let mut req = Request::builder().uri("/api/simple").body(Full::new(Bytes::new())).unwrap();
    req.extensions_mut().insert(SocketAddr::new(ip, 40_000));
    req
}

async fn send(svc: Svc, req: Request<Full<Bytes>>) -> Seen {
    let started = Instant::now();
    let res = svc.oneshot(req).await.unwrap();
    let content_type = res.headers().get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
    Seen {
        at: started,
        status: res.status(),
        headers: res.headers().contains_key("x-ratelimit-limit"),
        problem: content_type == Some("application/problem+json"),
        latency: started.elapsed(),
    }
}

static NEXT_IP: AtomicU32 = AtomicU32::new(1);

fn fresh_ip() -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + NEXT_IP.fetch_add(1, Ordering::Relaxed)))
}

fn percentile(mut latencies: Vec<Duration>, p: f64) -> Duration {
    latencies.sort();
    latencies.get(((latencies.len() as f64 - 1.0) * p) as usize).copied().unwrap_or_default()
}

async fn scenario(mode: &str) {
    if !have_redis_binaries() {
        return;
    }
    let mut server = RedisServer::start(&[]);
    let prefix = unique_prefix(mode);
    let layer = RateLimitLayer::try_new(config(&server.url(), mode, &prefix)).unwrap();
    let svc = service(layer.clone());
    let names = RedisStore::builder(server.url()).prefix(&prefix).build().unwrap();
    let anonymous = layer.limits().tier("anonymous").unwrap().policies()[0].clone();
    let on_redis = |server: &RedisServer, ip: IpAddr| -> bool {
        let mut conn = server.connection().unwrap();
        conn.exists(names.key_of(&Key::from_ip(ip), &anonymous)).unwrap()
    };

    // Load from four clients, Redis up, then killed.
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (svc, stop) = (svc.clone(), Arc::clone(&stop));
        let ip = fresh_ip();
        tasks.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(5);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                seen.push(send(svc.clone(), from_ip(ip)).await);
            }
            seen
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let killed_at = Instant::now();
    server.kill();
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.store(true, Ordering::Relaxed);
    let mut seen = Vec::new();
    for task in tasks {
        seen.extend(task.await.unwrap());
    }

    let before: Vec<&Seen> = seen.iter().filter(|s| s.at + s.latency < killed_at).collect();
    let settled = killed_at + Duration::from_millis(300);
    let after: Vec<&Seen> = seen.iter().filter(|s| s.at > settled).collect();
    assert!(before.len() > 20 && after.len() > 20, "{} before, {} after", before.len(), after.len());
    let up_latency: Vec<Duration> = before.iter().map(|s| s.latency).collect();
    let down_latency: Vec<Duration> = after.iter().map(|s| s.latency).collect();
    eprintln!(
        "{mode}: {} requests with Redis up (p50 {:?}, p99 {:?}), {} with Redis down (p50 {:?}, max {:?})",
        before.len(),
        percentile(up_latency.clone(), 0.5),
        percentile(up_latency, 0.99),
        after.len(),
        percentile(down_latency.clone(), 0.5),
        percentile(down_latency, 1.0),
    );
    for s in &seen {
        let ok =
            s.status == StatusCode::OK || (mode == "deny" && s.status == StatusCode::SERVICE_UNAVAILABLE);
        assert!(ok, "{mode}: unexpected {s:?}");
    }
    // Redis was up: decided by it, with headers. An answer slower than the 50 ms timeout is a
    // store fault like any other and takes the `on_error` path; on a shared, loaded machine one
    // in several thousand did (a full parallel test run), so at most 1% may.
    let without_redis = before.iter().filter(|s| !(s.status == StatusCode::OK && s.headers)).count();
    assert!(
        without_redis * 100 <= before.len(),
        "{mode}: Redis was up, yet {without_redis} of {} requests were answered without it",
        before.len()
    );
    // Once the breaker is open, requests no longer wait for Redis: only probes (one per 100 ms)
    // may take the 50 ms timeout (and, on a busy machine, a few others a scheduling delay).
    let slow = after.iter().filter(|s| s.latency >= Duration::from_millis(40)).count();
    assert!(slow * 100 <= after.len(), "{mode}: {slow} of {} requests waited on a dead Redis", after.len());
    match mode {
        "allow" => assert!(after.iter().all(|s| s.status == StatusCode::OK && !s.headers)),
        "deny" => assert!(after.iter().all(|s| s.status == StatusCode::SERVICE_UNAVAILABLE && s.problem)),
        "local" => {
            assert!(after.iter().all(|s| s.status == StatusCode::OK && s.headers));
            // Still limited, in-process: a burst of 3 admits 3.
            let mut statuses = Vec::new();
            for _ in 0..5 {
                let mut req = from_ip(fresh_ip());
                req.headers_mut().insert("x-api-key", "tight-key".parse().unwrap());
                statuses.push(send(svc.clone(), req).await.status);
            }
            assert_eq!(statuses[..3], [StatusCode::OK; 3]);
            assert_eq!(statuses[3..], [StatusCode::TOO_MANY_REQUESTS; 2]);
        }
        _ => unreachable!(),
    }

    // Redis comes back on the same port: within a second, decisions are Redis' again.
    server.restart();
    let restarted = Instant::now();
    loop {
        let ip = fresh_ip();
        let s = send(svc.clone(), from_ip(ip)).await;
        let back = match mode {
            "allow" => s.headers,
            "deny" => s.status == StatusCode::OK,
            _ => on_redis(&server, ip),
        };
        if back {
            assert!(on_redis(&server, ip), "{mode}: decided by Redis");
            break;
        }
        assert!(restarted.elapsed() < Duration::from_secs(1), "{mode}: still not back on Redis after 1 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("{mode}: back on Redis {:?} after the restart", restarted.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_with_on_error_allow_forwards_without_headers() {
    scenario("allow").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_with_on_error_deny_answers_503() {
    scenario("deny").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_with_on_error_local_limits_in_process() {
    scenario("local").await;
}
