//! Near-quota alerts: exactly once per crossing, also under concurrency, and once per period
//! for a client hovering at the threshold.

use nonzero_ext::nonzero;
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use tollgate::algorithm::Quota;
use tollgate::clock::ManualClock;
use tollgate::key::{Client, Key};
use tollgate::observe::{NearQuota, NearQuotaEvent};
use tollgate::policy::{Limits, TierSpec};
use tollgate::store::MemoryStore;
use tollgate::RateLimitLayer;
use tower::{service_fn, Layer, Service, ServiceExt};

fn by_user(parts: &http::request::Parts) -> Option<Client> {
    let user = parts.headers.get("x-user")?.to_str().ok()?;
    Some(Client::new(Key::new(user)))
}

type Recorded = Arc<Mutex<Vec<NearQuotaEvent>>>;

fn recorder() -> (Recorded, impl Fn(&NearQuotaEvent) + Send + Sync + 'static) {
    let events: Recorded = Arc::default();
    let sink = events.clone();
    (events, move |e: &NearQuotaEvent| sink.lock().unwrap().push(e.clone()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fires_exactly_once_per_crossing_under_concurrency() {
    // A frozen clock: no token comes back, so each key crosses 80 % exactly once. Every
    // crossing is reported (no holding back), so only the crossing check keeps it to one.
    let clock = ManualClock::new(Duration::from_secs(1_700_000_000));
    let limits = Limits::builder()
        .tier(
            "anonymous",
            TierSpec::new(Quota::per_minute(nonzero!(60u32)).allow_burst(nonzero!(100u32))).daily(100_000),
        )
        .build()
        .unwrap();
    let (events, hook) = recorder();
    let layer = RateLimitLayer::from_limits(limits)
        .with_store(MemoryStore::with_clock(clock))
        .extractor(by_user)
        .observer(NearQuota::new(hook).threshold(0.8).every_crossing());
    let service = layer.layer(service_fn(|_: Request<()>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
    }));

    const KEYS: usize = 20;
    const PER_KEY: usize = 150; // 100 admitted, 50 rejected
    let mut tasks = Vec::new();
    for task in 0..8 {
        let service = service.clone();
        tasks.push(tokio::spawn(async move {
            let mut admitted = 0;
            for i in 0..(KEYS * PER_KEY / 8) {
                let user = format!("user-{}", (i + task) % KEYS);
                let req = Request::get("/").header("x-user", user).body(()).unwrap();
                let res = service.clone().oneshot(req).await.unwrap();
                admitted += usize::from(res.status() == StatusCode::OK);
                if i % 16 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            admitted
        }));
    }
    let mut admitted = 0;
    for task in tasks {
        admitted += task.await.unwrap();
    }
    assert_eq!(admitted, KEYS * 100, "each key's burst is spent exactly");

    let events = events.lock().unwrap();
    assert_eq!(events.len(), KEYS, "one event per key: {events:#?}");
    let mut per_key: HashMap<Key, usize> = HashMap::new();
    for e in events.iter() {
        assert_eq!(e.policy, "anonymous");
        assert_eq!(e.tier, "anonymous");
        assert_eq!(e.limit, 100);
        assert_eq!(e.remaining, 20, "the request that crossed left 20 of 100");
        assert!((e.used - 0.8).abs() < 1e-9);
        assert_eq!(e.reset, 1_700_000_000 + 80);
        *per_key.entry(e.key.clone()).or_default() += 1;
    }
    assert_eq!(per_key.len(), KEYS, "{per_key:?}");
}

#[tokio::test]
async fn a_client_hovering_at_the_threshold_is_told_once_per_period() {
    let clock = ManualClock::new(Duration::from_secs(1_700_000_000));
    let limits = Limits::builder()
        .tier("anonymous", TierSpec::new(Quota::per_second(nonzero!(1u32)).allow_burst(nonzero!(10u32))))
        .build()
        .unwrap();
    let (events, hook) = recorder();
    let layer = RateLimitLayer::from_limits(limits)
        .with_store(MemoryStore::with_clock(clock.clone()))
        .extractor(by_user)
        .observer(NearQuota::new(hook));
    let service = layer.layer(service_fn(|_: Request<()>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
    }));
    let call = || {
        let req = Request::get("/").header("x-user", "hover").body(()).unwrap();
        let mut service = service.clone();
        async move { service.ready().await.unwrap().call(req).await.unwrap().status() }
    };
    // Eight requests: the eighth crosses 80 %.
    for _ in 0..8 {
        assert_eq!(call().await, StatusCode::OK);
    }
    assert_eq!(events.lock().unwrap().len(), 1);
    // Then one request a second for 9 s: each refill and spend crosses again, but within
    // the policy's period (10 s to refill from empty).
    for _ in 0..9 {
        clock.advance(Duration::from_secs(1));
        assert_eq!(call().await, StatusCode::OK);
    }
    assert_eq!(events.lock().unwrap().len(), 1);
    // A period after the first event, the next crossing is news again.
    clock.advance(Duration::from_secs(1));
    assert_eq!(call().await, StatusCode::OK);
    assert_eq!(events.lock().unwrap().len(), 2);
}
