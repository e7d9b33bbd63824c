//! Hot reload, shadow mode and the allow list (issue 10), over real HTTP: the demo router on a
//! bound listener, a real client, real files (watched with `notify`) and a real Redis.
//!
//! The memory store runs on a manual clock (nothing refills unless a test says so); the Redis
//! tests use per-hour rates, so a second of Redis' own clock changes nothing.

#[path = "../examples/server/app.rs"]
#[allow(dead_code, unreachable_pub)]
mod app;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use reqwest::{Client, StatusCode};
use serde_json::Value;
use tollgate::clock::ManualClock;
use tollgate::layer::Reloader;
use tollgate::store::MemoryStore;
use tollgate::Config;

/// A directory of its own for one test's configuration file.
fn config_file(test: &str, text: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    let dir = std::env::temp_dir().join(format!(
        "tollgate-reload-{test}-{}-{nanos}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("ratelimit.toml");
    std::fs::write(&path, text).unwrap();
    path
}

struct Server {
    base: String,
    http: Client,
    reloader: Reloader,
    path: PathBuf,
}

/// The demo router for the configuration at `path`; on the memory store with a frozen clock
/// unless the file chooses Redis.
async fn serve(path: &Path) -> Server {
    let config = Config::load(path).unwrap();
    let redis = config.settings().store.backend == tollgate::config::Backend::Redis;
    let mut layer = app::layer(config).unwrap();
    if !redis {
        let clock = ManualClock::new(Duration::from_secs(1_800_000_000));
        layer = layer.with_store(MemoryStore::with_clock(clock));
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = app::router(layer.clone()).into_make_service_with_connect_info::<SocketAddr>();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Server {
        base: format!("http://{addr}"),
        http: Client::new(),
        reloader: layer.reloader(),
        path: path.into(),
    }
}

impl Server {
    fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.http.get(format!("{}{path}", self.base))
    }

    async fn remaining(&self, key: Option<&str>) -> (StatusCode, Option<u64>, Option<u64>) {
        let mut req = self.get("/api/simple");
        if let Some(key) = key {
            req = req.header("x-api-key", key);
        }
        let res = req.send().await.unwrap();
        let number = |name| res.headers().get(name).map(|v| v.to_str().unwrap().parse().unwrap());
        (res.status(), number("x-ratelimit-limit"), number("x-ratelimit-remaining"))
    }

    /// Rewrites the file and reloads it as the demo's watcher and SIGHUP do.
    fn rewrite(&self, text: &str) -> Result<(), tollgate::ConfigError> {
        std::fs::write(&self.path, text).unwrap();
        self.reloader.load(&self.path)
    }

    async fn policy(&self) -> Value {
        self.get("/policy").send().await.unwrap().json().await.unwrap()
    }

    async fn metrics(&self) -> String {
        self.get("/metrics").send().await.unwrap().text().await.unwrap()
    }
}

/// The value of one series in a Prometheus text page (0 when absent).
fn series(page: &str, name_and_labels: &str) -> f64 {
    page.lines().find_map(|line| line.strip_prefix(name_and_labels)?.trim().parse().ok()).unwrap_or(0.0)
}

fn reloads(page: &str, result: &str) -> f64 {
    series(page, &format!("tollgate_config_reloads_total{{result=\"{result}\"}}"))
}

const BASE: &str = r#"
[tiers.anonymous]
requests_per_hour = 60
burst = BURST

[tiers.pro]
requests_per_hour = 600
burst = 100

[routes]
"/api/simple" = 1

[exempt]
routes = ["/health", "/metrics", "/policy"]
"#;

fn base(burst: u32) -> String {
    BASE.replace("BURST", &burst.to_string())
}

#[tokio::test]
async fn used_tokens_carry_over_a_burst_change_in_memory() {
    let server = serve(&config_file("carry-memory", &base(5))).await;
    for left in [4, 3, 2] {
        assert_eq!(server.remaining(None).await, (StatusCode::OK, Some(5), Some(left)));
    }
    server.rewrite(&base(20)).unwrap();
    assert_eq!(server.policy().await["tiers"][0]["policies"][0]["burst"], 20, "{}", server.policy().await);
    // 3 of 5 used: 17 of 20 left, then this request.
    assert_eq!(server.remaining(None).await, (StatusCode::OK, Some(20), Some(16)));
    // Lowered to 2: 4 used, nothing left (and nothing more than that taken).
    server.rewrite(&base(2)).unwrap();
    assert_eq!(server.remaining(None).await.0, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn used_tokens_carry_over_a_burst_change_on_redis() {
    if redis::Client::open("redis://127.0.0.1:6379").and_then(|c| c.get_connection()).is_err() {
        assert!(std::env::var("CI").is_err(), "CI needs the Redis at 127.0.0.1:6379");
        eprintln!("SKIPPED: no Redis at 127.0.0.1:6379");
        return;
    }
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    let store = format!("\n[store]\nbackend = \"redis\"\nprefix = \"tollgate-test:reload:{nanos}\"\n");
    let server = serve(&config_file("carry-redis", &(base(5) + &store))).await;
    for left in [4, 3, 2] {
        assert_eq!(server.remaining(None).await, (StatusCode::OK, Some(5), Some(left)));
    }
    server.rewrite(&(base(20) + &store)).unwrap();
    assert_eq!(server.remaining(None).await, (StatusCode::OK, Some(20), Some(16)));
    // The rate changes too: the tokens used still carry over, converted in the script.
    let faster = base(20).replace("requests_per_hour = 60\n", "requests_per_hour = 120\n");
    server.rewrite(&(faster + &store)).unwrap();
    assert_eq!(server.remaining(None).await, (StatusCode::OK, Some(20), Some(15)));
    // A change to [store] is refused, naming it; the limits in force stay.
    let err = server.rewrite(&(base(20) + &store.replace("reload:", "elsewhere:"))).unwrap_err();
    assert_eq!(err.key(), Some("store"));
    assert_eq!(server.remaining(None).await, (StatusCode::OK, Some(20), Some(14)));
}

#[tokio::test]
async fn api_keys_added_and_removed_by_a_reload() {
    let server = serve(&config_file("keys", &base(5))).await;
    assert_eq!(server.remaining(Some("new-key")).await.1, Some(5), "unknown: anonymous");
    server.rewrite(&(base(5) + "\n[api_keys]\n\"new-key\" = \"pro\"\n")).unwrap();
    assert_eq!(server.remaining(Some("new-key")).await, (StatusCode::OK, Some(100), Some(99)));
    server.rewrite(&base(5)).unwrap();
    assert_eq!(server.remaining(Some("new-key")).await.1, Some(5), "removed: anonymous again");
}

#[tokio::test]
async fn an_invalid_file_and_a_store_change_are_refused_counted_and_change_nothing() {
    let server = serve(&config_file("refused", &base(5))).await;
    let before = server.metrics().await;
    let err = server.rewrite(&base(5).replace("burst = 5", "burst = 0")).unwrap_err().to_string();
    // As at start-up: the file and the key.
    let startup = Config::load(&server.path).unwrap_err().to_string();
    assert_eq!(err, startup);
    assert!(err.contains(server.path.to_str().unwrap()) && err.contains("tiers.anonymous.burst"), "{err}");
    let err = server.rewrite(&(base(5) + "[store]\nbackend = \"redis\"\n")).unwrap_err();
    assert_eq!(err.key(), Some("store"));
    assert!(err.to_string().contains("`store`"), "{err}");
    let syntax = server.rewrite("[tiers.anonymous\n").unwrap_err().to_string();
    assert!(syntax.contains("line 1"), "{syntax}");
    // Still the old limits.
    assert_eq!(server.remaining(None).await, (StatusCode::OK, Some(5), Some(4)));
    server.rewrite(&base(6)).unwrap();
    let after = server.metrics().await;
    // The page is the process's (other tests reload too): this server's own counts are exact.
    assert!(reloads(&after, "error") - reloads(&before, "error") >= 3.0, "{after}");
    assert!(reloads(&after, "ok") - reloads(&before, "ok") >= 1.0, "{after}");
    let stats = server.reloader.stats();
    assert_eq!((stats.ok, stats.errors, stats.generation), (1, 3, 1));
}

/// Polls until `done`, for at most 2 s (the contract's promise for a changed file).
async fn within_two_seconds(mut done: impl AsyncFnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(2) {
        if done().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test]
async fn the_watcher_reloads_a_file_written_in_place_or_renamed_into_place() {
    let server = serve(&config_file("watch", &base(5))).await;
    let _watcher = server.reloader.watch(&server.path).unwrap();
    let burst = async |server: &Server| server.policy().await["tiers"][0]["policies"][0]["burst"].as_u64();
    std::fs::write(&server.path, base(7)).unwrap();
    assert!(within_two_seconds(async || burst(&server).await == Some(7)).await, "written in place");
    let temporary = server.path.with_extension("tmp");
    std::fs::write(&temporary, base(9)).unwrap();
    std::fs::rename(&temporary, &server.path).unwrap();
    assert!(within_two_seconds(async || burst(&server).await == Some(9)).await, "renamed into place");
    // An invalid file is refused (and counted); the limits in force stay.
    let errors = server.reloader.stats().errors;
    std::fs::write(&server.path, base(0)).unwrap();
    assert!(within_two_seconds(async || server.reloader.stats().errors > errors).await);
    assert_eq!(burst(&server).await, Some(9));
}

/// Many requests in flight while the file changes back and forth: no request fails, and no
/// client gets more than the larger limit allows (the clock is frozen: nothing refills, so
/// that is the larger burst, whatever the reloads).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reload_under_load_fails_no_request_and_keeps_every_client_within_its_limits() {
    let keys = |burst: u32| {
        let mut text = BASE.replace("BURST", "5");
        text.push_str(&format!("\n[tiers.free]\nrequests_per_hour = 60\nburst = {burst}\n[api_keys]\n"));
        for k in 0..8 {
            text.push_str(&format!("\"key-{k}\" = \"free\"\n"));
        }
        text
    };
    let server = std::sync::Arc::new(serve(&config_file("load", &keys(20))).await);
    let _watcher = server.reloader.watch(&server.path).unwrap();
    let mut clients = Vec::new();
    for k in 0..8 {
        let server = server.clone();
        clients.push(tokio::spawn(async move {
            let (mut admitted, mut refused) = (0, 0);
            for _ in 0..60 {
                let res = server.get("/api/simple").header("x-api-key", format!("key-{k}")).send().await;
                match res.expect("no request fails").status() {
                    StatusCode::OK => admitted += 1,
                    StatusCode::TOO_MANY_REQUESTS => refused += 1,
                    other => panic!("unexpected {other}"),
                }
            }
            (admitted, refused)
        }));
    }
    let reloader = server.clone();
    let flipper = tokio::task::spawn_blocking(move || {
        for i in 0..20 {
            reloader.rewrite(&keys(if i % 2 == 0 { 30 } else { 20 })).unwrap();
            std::thread::sleep(Duration::from_millis(5));
        }
    });
    for client in clients {
        let (admitted, refused) = client.await.unwrap();
        assert_eq!(admitted + refused, 60);
        assert!((20..=30).contains(&admitted), "{admitted} admitted: at most the larger burst");
    }
    flipper.await.unwrap();
    assert!(server.reloader.stats().ok >= 20);
}

/// Shadow mode counts exactly the refusals enforcement makes, for the same sequence, and
/// answers every request itself, without rate-limit headers.
#[tokio::test]
async fn shadow_mode_counts_exactly_the_refusals_an_enforcing_layer_makes() {
    let config = |mode: &str| {
        format!(
            "mode = \"{mode}\"\n[tiers.anonymous]\nrequests_per_hour = 60\nburst = 4\n[tiers.rehearsal]\nrequests_per_hour = 60\nburst = 4\n\
             [routes]\n\"/api/simple\" = 1\n\"/api/search\" = 3\n\"POST /api/generate\" = 20\n\
             [api_keys]\n\"k1\" = \"rehearsal\"\n\"k2\" = \"rehearsal\"\n[exempt]\nroutes = [\"/metrics\", \"/policy\"]\n"
        )
    };
    let enforce = serve(&config_file("enforce", &config("enforce"))).await;
    let shadow = serve(&config_file("shadow", &config("shadow"))).await;
    let label = "tollgate_decisions_total{tier=\"rehearsal\",route=";
    let count = |page: &str| -> f64 {
        page.lines()
            .filter(|l| l.starts_with(label) && l.contains("outcome=\"shadow_rejected\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let before = count(&shadow.metrics().await);
    let sequence = [
        ("k1", "GET", "/api/simple"),
        ("k1", "GET", "/api/search"),
        ("k2", "POST", "/api/generate"),
        ("k1", "GET", "/api/simple"),
        ("k1", "GET", "/api/simple"),
        ("k2", "GET", "/api/search"),
        ("k2", "GET", "/api/search"),
        ("k1", "GET", "/api/search"),
        ("k2", "GET", "/api/simple"),
        ("k2", "GET", "/api/simple"),
    ];
    let mut refused = 0;
    for (key, method, path) in sequence {
        let send = |server: &Server| {
            let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
            server.http.request(method, format!("{}{path}", server.base)).header("x-api-key", key).send()
        };
        let enforced = send(&enforce).await.unwrap();
        if matches!(enforced.status(), StatusCode::TOO_MANY_REQUESTS | StatusCode::FORBIDDEN) {
            refused += 1;
        }
        let shadowed = send(&shadow).await.unwrap();
        assert_eq!(shadowed.status(), StatusCode::OK);
        let limited =
            shadowed.headers().keys().any(|h| h.as_str().contains("ratelimit") || h == "retry-after");
        assert!(!limited, "{:?}", shadowed.headers());
    }
    assert!(refused >= 4, "the sequence is refused {refused} times under enforcement");
    let after = count(&shadow.metrics().await);
    assert_eq!(after - before, f64::from(refused));
    // The tier moves to enforcement by a reload, with its state: k2 has used its burst.
    shadow.rewrite(&config("enforce")).unwrap();
    let res = shadow.get("/api/simple").header("x-api-key", "k2").send().await.unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn allow_listed_addresses_behind_a_trusted_proxy_and_keys_are_never_limited() {
    let text = base(2)
        + "\n[allow]\nips = [\"10.20.0.0/16\"]\nkeys = [\"internal-monitor-key\"]\n"
        + "\n[store]\nmax_keys = 1000\n";
    let text = format!("trusted_proxies = [\"127.0.0.0/8\"]\n{text}");
    let server = serve(&config_file("allow", &text)).await;
    for _ in 0..20 {
        for (header, value) in [("x-forwarded-for", "10.20.3.4"), ("x-api-key", "internal-monitor-key")] {
            let res = server.get("/api/simple").header(header, value).send().await.unwrap();
            assert_eq!(res.status(), StatusCode::OK);
            assert!(res.headers().get("x-ratelimit-limit").is_none(), "no headers: {:?}", res.headers());
        }
    }
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(server_get(&server, "/api/simple", ("x-forwarded-for", "203.0.113.8")).await);
    }
    assert_eq!(statuses, [StatusCode::OK, StatusCode::OK, StatusCode::TOO_MANY_REQUESTS]);
    // The allow list reloads too.
    server.rewrite(&text.replace("10.20.0.0/16", "10.30.0.0/16")).unwrap();
    let res = server.get("/api/simple").header("x-forwarded-for", "10.20.3.4").send().await.unwrap();
    assert!(res.headers().get("x-ratelimit-limit").is_some(), "no longer allowed");
}

async fn server_get(server: &Server, path: &str, (name, value): (&str, &str)) -> StatusCode {
    server.get(path).header(name, value).send().await.unwrap().status()
}
