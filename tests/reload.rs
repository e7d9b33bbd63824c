//! Hot reload, shadow mode and the allow list (issue 10), over real HTTP: the demo router on a
//! bound listener, a real client, real files (watched with `notify`) and a real Redis.
//!
//! The memory store runs on a manual clock (nothing refills unless a test says so); the Redis
//! tests use per-hour rates, so a second of Redis' own clock changes nothing.

#[path = "../examples/server/app.rs"]
#[allow(dead_code, unreachable_pub)]
mod app;
#[path = "redis_support.rs"]
mod redis_support;

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
    // A slow answer is a 503 (never a silent fall back to the in-process store, whose state a
    // reload on Redis would not see): this loaded machine may take more than 50 ms.
    let store = format!(
        "\n[store]\nbackend = \"redis\"\nprefix = \"tollgate-test:reload:{nanos}\"\ntimeout_ms = 10000\non_error = \"deny\"\n"
    );
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
    reload_under_load("load", "").await;
}

/// The same on Redis, where each state is converted by the script when its client next asks,
/// while the reloads go on. Redis' clock runs: a client may also get what 60 an hour refills
/// meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reload_under_load_on_redis_fails_no_request_and_keeps_every_client_within_its_limits() {
    if redis::Client::open("redis://127.0.0.1:6379").and_then(|c| c.get_connection()).is_err() {
        assert!(std::env::var("CI").is_err(), "CI needs the Redis at 127.0.0.1:6379");
        eprintln!("SKIPPED: no Redis at 127.0.0.1:6379");
        return;
    }
    let store = format!(
        "\n[store]\nbackend = \"redis\"\nprefix = \"{}\"\ntimeout_ms = 10000\non_error = \"deny\"\n",
        redis_support::unique_prefix("reload-load")
    );
    reload_under_load("load-redis", &store).await;
}

async fn reload_under_load(name: &str, store: &str) {
    let keys = |burst: u32| {
        let mut text = BASE.replace("BURST", "5");
        text.push_str(&format!("\n[tiers.free]\nrequests_per_hour = 60\nburst = {burst}\n[api_keys]\n"));
        for k in 0..8 {
            text.push_str(&format!("\"key-{k}\" = \"free\"\n"));
        }
        text + store
    };
    let start = Instant::now();
    let server = std::sync::Arc::new(serve(&config_file(name, &keys(20))).await);
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
    let (twenty, thirty) = (keys(20), keys(30));
    let flipper = tokio::task::spawn_blocking(move || {
        for i in 0..20 {
            reloader.rewrite(if i % 2 == 0 { &thirty } else { &twenty }).unwrap();
            std::thread::sleep(Duration::from_millis(5));
        }
    });
    for client in clients {
        let (admitted, refused) = client.await.unwrap();
        assert_eq!(admitted + refused, 60);
        // What 60 an hour refills while this ran (nothing on the memory store's frozen clock).
        let refilled = if store.is_empty() { 0 } else { start.elapsed().as_secs() / 60 + 1 };
        assert!((20..=30 + refilled).contains(&admitted), "{admitted} admitted: at most the larger burst");
    }
    flipper.await.unwrap();
    assert!(server.reloader.stats().ok >= 20);
}

/// Shadow mode counts exactly the refusals enforcement makes, for the same sequence, and
/// answers every request itself, without rate-limit headers; here globally
/// (`mode = "shadow"`), and below for one tier only.
#[tokio::test]
async fn shadow_mode_counts_exactly_the_refusals_an_enforcing_layer_makes() {
    shadow_against_enforcement("shadow-global", "mode = \"shadow\"\n", "").await;
}

/// The same comparison with only the `rehearsal` tier in shadow mode: the other tier of the
/// same server keeps enforcing.
#[tokio::test]
async fn a_tier_in_shadow_mode_counts_exactly_the_refusals_enforcement_makes() {
    shadow_against_enforcement("shadow-tier", "", "mode = \"shadow\"\n").await;
}

/// Runs one sequence through an enforcing server and a rehearsing one (the `rehearsal` tier in
/// shadow mode by `global` or by `tier`), compares the refusals with the `shadow_rejected`
/// count, then moves the tier to enforcement by a reload.
async fn shadow_against_enforcement(name: &str, global: &str, tier: &str) {
    let config = |global: &str, tier: &str| {
        format!(
            "{global}[tiers.anonymous]\nrequests_per_hour = 60\nburst = 4\n[tiers.rehearsal]\n{tier}requests_per_hour = 60\nburst = 4\n\
             [routes]\n\"/api/simple\" = 1\n\"/api/search\" = 3\n\"POST /api/generate\" = 20\n\
             [api_keys]\n\"k1\" = \"rehearsal\"\n\"k2\" = \"rehearsal\"\n[exempt]\nroutes = [\"/metrics\", \"/policy\"]\n"
        )
    };
    let enforce = serve(&config_file(&format!("{name}-enforce"), &config("", ""))).await;
    let shadow = serve(&config_file(name, &config(global, tier))).await;
    let label = "tollgate_decisions_total{tier=\"rehearsal\",route=";
    let count = |page: &str| -> f64 {
        page.lines()
            .filter(|l| l.starts_with(label) && l.contains("outcome=\"shadow_rejected\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    // The metrics page is the process's, and the other shadow test counts the same tier: the
    // two never run at once (SHADOW), so the difference is this test's.
    let _one_at_a_time = SHADOW.lock().await;
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
    if global.is_empty() {
        // Only the rehearsal tier rehearses: the anonymous tier of the same server enforces.
        let mut statuses = Vec::new();
        for _ in 0..5 {
            statuses.push(shadow.get("/api/simple").send().await.unwrap().status());
        }
        assert_eq!(statuses.last(), Some(&StatusCode::TOO_MANY_REQUESTS), "anonymous enforces: {statuses:?}");
    }
    // The tier moves to enforcement by a reload, with its state: k2 has used its burst.
    shadow.rewrite(&config("", "")).unwrap();
    let res = shadow.get("/api/simple").header("x-api-key", "k2").send().await.unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
}

/// Keeps the two shadow tests' counts apart (they share the process's metrics page).
static SHADOW: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

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

/// A webhook receiver on a real listener: its URL, and the bodies it receives.
async fn webhook_receiver() -> (String, tokio::sync::mpsc::UnboundedReceiver<Value>) {
    use axum::routing::post;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let app = axum::Router::new().route(
        "/hook",
        post(move |axum::Json(body): axum::Json<Value>| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(body);
                StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/hook"), rx)
}

/// A `POST /api/generate` held in flight: its headers are sent (so the limiter has taken its
/// concurrency slot and the handler waits for the body), its body is not, until `finish`.
struct Held(tokio::net::TcpStream);

impl Held {
    async fn start(server: &Server, key: &str) -> Self {
        use tokio::io::AsyncWriteExt;
        let addr = server.base.strip_prefix("http://").unwrap();
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "POST /api/generate HTTP/1.1\r\nhost: {addr}\r\nx-api-key: {key}\r\ncontent-type: application/json\r\n\
             content-length: 2\r\nconnection: close\r\n\r\n{{"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        Self(stream)
    }

    /// Sends the rest of the body and reads the head of the answer (status line and headers,
    /// names in lower case).
    async fn finish(mut self) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        self.0.write_all(b"}").await.unwrap();
        let mut answer = Vec::new();
        self.0.read_to_end(&mut answer).await.unwrap();
        let answer = String::from_utf8_lossy(&answer);
        answer.split("\r\n\r\n").next().unwrap_or_default().to_lowercase()
    }
}

/// Everything in the file reloads, over HTTP: a tier's burst (its used tokens carried over),
/// route costs, the header dialect, a tier's mode, degradation bands, concurrency limits, the
/// allow list and the near-quota alerts (a webhook added by the reload receives the next
/// crossing); `/policy` and the dashboard show the limits in force. Then the first file again
/// undoes it all, a concurrency limit lifted while a request still holds its slot.
#[tokio::test]
async fn everything_in_the_file_reloads() {
    let (hook, mut alerts) = webhook_receiver().await;
    let first = r#"
[tiers.anonymous]
requests_per_hour = 60
burst = 10

[tiers.pro]
requests_per_hour = 600
burst = 100

[tiers.batch]
requests_per_hour = 600
burst = 100

[routes]
"/api/simple" = 1
"/api/search" = 1
"POST /api/generate" = 1
"/dashboard" = 0

[exempt]
routes = ["/health", "/metrics", "/policy"]

[api_keys]
"pro-key" = "pro"
"batch-key" = "batch"
"#;
    let second = first
        .replace("burst = 10\n", "burst = 20\n")
        .replace("\"/api/simple\" = 1", "\"/api/simple\" = 3")
        .replace("[tiers.pro]\n", "[tiers.pro]\nmode = \"shadow\"\n")
        + "\n[concurrency]\n\"POST /api/generate\" = 1\n"
        + "\n[degrade]\nroutes = [\"/api/search\"]\ncached_below = 0.95\nminimal_below = 0.9\n"
        + "\n[allow]\nkeys = [\"monitor-key\"]\n"
        + &format!("\n[alerts]\nnear_quota = 0.5\nwebhook = \"{hook}\"\n");
    let second = format!("headers = \"legacy\"\n{second}");
    let server = serve(&config_file("everything", first)).await;
    let ask = async |path: &str, key: Option<&str>| {
        let mut req = server.get(path);
        if let Some(key) = key {
            req = req.header("x-api-key", key);
        }
        req.send().await.unwrap()
    };
    let header =
        |res: &reqwest::Response, name: &str| res.headers().get(name).map(|v| v.to_str().unwrap().to_owned());

    // The first file: the anonymous client (127.0.0.1) uses 4 of its 10.
    let res = ask("/api/simple", None).await;
    assert_eq!(header(&res, "x-ratelimit-remaining").as_deref(), Some("9"));
    assert!(header(&res, "ratelimit-policy").is_some(), "headers = both");
    let res = ask("/api/search", None).await;
    assert_eq!(
        (header(&res, "x-ratelimit-remaining").as_deref(), header(&res, "x-ratelimit-degraded")),
        (Some("8"), None)
    );
    let res = ask("/api/simple", Some("monitor-key")).await;
    assert_eq!(header(&res, "x-ratelimit-remaining").as_deref(), Some("7"), "not allowed yet: anonymous");
    let res = ask("/api/simple", Some("pro-key")).await;
    assert_eq!(header(&res, "x-ratelimit-limit").as_deref(), Some("100"));
    let res = server.http.post(format!("{}/api/generate", server.base)).send().await.unwrap();
    assert_eq!((res.status(), header(&res, "x-ratelimit-remaining").as_deref()), (StatusCode::OK, Some("6")));

    server.rewrite(&second).unwrap();

    // Limits in force: 4 of 10 used, so 16 of 20 left; /api/simple costs 3; legacy headers.
    let policy = server.policy().await;
    let anonymous = policy["tiers"].as_array().unwrap().iter().find(|t| t["name"] == "anonymous").unwrap();
    assert_eq!(anonymous["policies"][0]["burst"], 20, "{policy}");
    let simple = policy["routes"].as_array().unwrap().iter().find(|r| r["route"] == "/api/simple").unwrap();
    assert_eq!(simple["cost"], 3, "{policy}");
    let page = ask("/dashboard", None).await.text().await.unwrap();
    assert!(page.contains("data-limit=\"20\""), "the dashboard shows the burst in force");
    let res = ask("/api/simple", None).await;
    assert_eq!(header(&res, "x-ratelimit-limit").as_deref(), Some("20"));
    assert_eq!(header(&res, "x-ratelimit-remaining").as_deref(), Some("13"), "16 left, less 3");
    assert!(header(&res, "ratelimit-policy").is_none(), "headers = legacy");
    // 13 of 20 left is below 0.9: the minimal band, charged 1.
    let res = ask("/api/search", None).await;
    assert_eq!(header(&res, "x-ratelimit-degraded").as_deref(), Some("minimal"));
    assert_eq!(header(&res, "x-ratelimit-remaining").as_deref(), Some("12"));
    assert_eq!(res.json::<Value>().await.unwrap()["minimal"], true);
    // The pro tier rehearses; the allowed key goes through untouched.
    for key in ["pro-key", "monitor-key"] {
        let res = ask("/api/simple", Some(key)).await;
        assert_eq!(res.status(), StatusCode::OK);
        assert!(
            res.headers().keys().all(|h| !h.as_str().contains("ratelimit")),
            "{key}: {:?}",
            res.headers()
        );
    }
    // One POST /api/generate in flight per client: a second waits for it.
    let held = Held::start(&server, "batch-key").await;
    let start = Instant::now();
    loop {
        let res = server
            .http
            .post(format!("{}/api/generate", server.base))
            .header("x-api-key", "batch-key")
            .send()
            .await
            .unwrap();
        if res.status() == StatusCode::TOO_MANY_REQUESTS {
            break;
        }
        assert_eq!(res.status(), StatusCode::OK);
        assert!(start.elapsed() < Duration::from_secs(10), "the held request never took its slot");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Near-quota alerts at 50 %, to the webhook the reload added: 8 of 20 used, then 11.
    assert!(alerts.try_recv().is_err(), "no crossing yet");
    let res = ask("/api/simple", None).await;
    assert_eq!(header(&res, "x-ratelimit-remaining").as_deref(), Some("9"));
    let alert = tokio::time::timeout(Duration::from_secs(10), alerts.recv()).await.unwrap().unwrap();
    assert_eq!(
        (alert["tier"].as_str(), alert["remaining"].as_u64()),
        (Some("anonymous"), Some(9)),
        "{alert}"
    );

    // The first file again: all of it undone, while the held request still holds its slot.
    server.rewrite(first).unwrap();
    let res = server
        .http
        .post(format!("{}/api/generate", server.base))
        .header("x-api-key", "batch-key")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK, "no concurrency limit any more");
    // The held request finishes under the limits it started with: legacy headers only.
    let head = held.finish().await;
    assert!(head.starts_with("http/1.1 200"), "the held request is answered: {head}");
    assert!(head.contains("x-ratelimit-limit: 100") && !head.contains("ratelimit-policy"), "{head}");
    for key in ["pro-key", "monitor-key"] {
        let res = ask("/api/simple", Some(key)).await;
        assert!(header(&res, "ratelimit-policy").is_some(), "{key}: limited again, headers = both");
    }
    // The anonymous client has used 11: more than the burst of 10, so nothing is left.
    let res = ask("/api/simple", None).await;
    assert_eq!(
        (res.status(), header(&res, "x-ratelimit-limit").as_deref()),
        (StatusCode::TOO_MANY_REQUESTS, Some("10"))
    );
    let policy = server.policy().await;
    let search = policy["routes"].as_array().unwrap().iter().find(|r| r["route"] == "/api/search").unwrap();
    assert_eq!(search["degrade"], false, "no degradation any more: {policy}");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), alerts.recv()).await.is_err(),
        "the webhook is gone"
    );
}

/// On Redis a reload rewrites no key and costs no round trip: each state is converted by the
/// script the next time its client asks. Measured on a private `redis-server` (nobody else's
/// commands in its count): 30 clients with state, a reload, and Redis has run no command but
/// ours; then every client finds the tokens it used carried over to the new burst. Store
/// faults are 503s here (and a generous timeout): a silent fall back to the in-process store
/// would keep a state Redis never saw.
#[tokio::test]
async fn a_reload_costs_redis_no_command_and_every_client_carries_over() {
    if !redis_support::have_redis_binaries() {
        return;
    }
    let redis = redis_support::RedisServer::start(&[]);
    let mut keys = String::from("\n[api_keys]\n");
    for k in 0..30 {
        keys.push_str(&format!("\"key-{k}\" = \"anonymous\"\n"));
    }
    let store = format!(
        "\n[store]\nbackend = \"redis\"\nurl = \"{}\"\nprefix = \"{}\"\ntimeout_ms = 10000\non_error = \"deny\"\n\n[history]\nenabled = false\n",
        redis.url(),
        redis_support::unique_prefix("reload-no-command"),
    );
    let server = serve(&config_file("redis-no-command", &(base(5) + &keys + &store))).await;
    let used = |k: u64| k % 4 + 1;
    for k in 0..30 {
        for _ in 0..used(k) {
            let (status, ..) = server.remaining(Some(&format!("key-{k}"))).await;
            assert_eq!(status, StatusCode::OK);
        }
    }
    let mut conn = redis.connection().unwrap();
    let processed = |conn: &mut redis::Connection| -> u64 {
        let info: String = redis::cmd("INFO").arg("stats").query(conn).unwrap();
        info.lines()
            .find_map(|l| l.strip_prefix("total_commands_processed:"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let before = processed(&mut conn);
    server.rewrite(&(base(20) + &keys + &store)).unwrap();
    let after = processed(&mut conn);
    // Our own first INFO is the one command between the two counts.
    assert_eq!(after - before, 1, "a reload sent Redis {} commands", after - before - 1);
    assert_eq!(server.reloader.stats().generation, 1);
    for k in 0..30 {
        let expected = 20 - used(k) - 1;
        assert_eq!(
            server.remaining(Some(&format!("key-{k}"))).await,
            (StatusCode::OK, Some(20), Some(expected)),
            "key-{k} used {}",
            used(k)
        );
    }
}

/// The `r` of each policy in a `RateLimit` header: `[(name, r)]`.
fn remaining_by_policy(res: &reqwest::Response) -> Vec<(String, u64)> {
    let header = res.headers().get("ratelimit").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    header
        .split(", ")
        .filter_map(|item| {
            let mut parts = item.split(';');
            let name = parts.next()?.trim_matches('"').to_owned();
            let r = parts.find_map(|p| p.strip_prefix("r="))?.parse().ok()?;
            Some((name, r))
        })
        .collect()
}

/// A policy that is gone is forgotten, and one that comes (back) starts full; the others keep
/// what was used. On the memory store and on Redis (where the script tells a state of the
/// policy's earlier life by the generation it was written in).
async fn gone_and_new_policies(algorithm: &str, store: &str) {
    let daily = |on: bool| {
        let text = format!("algorithm = \"{algorithm}\"\n{}{store}", base(5));
        if on {
            text.replace("burst = 5\n", "burst = 5\nrequests_per_day = 100\n")
        } else {
            text
        }
    };
    let server = serve(&config_file("gone-policies", &daily(true))).await;
    let mut last = None;
    for _ in 0..3 {
        last = Some(server.get("/api/simple").send().await.unwrap());
    }
    let expected = |burst, day: Option<u64>| {
        let mut v = vec![("anonymous".to_owned(), burst)];
        v.extend(day.map(|d| ("anonymous-daily".to_owned(), d)));
        v
    };
    assert_eq!(remaining_by_policy(&last.unwrap()), expected(2, Some(97)));
    server.rewrite(&daily(false)).unwrap();
    let res = server.get("/api/simple").send().await.unwrap();
    assert_eq!(remaining_by_policy(&res), expected(1, None), "the daily quota is gone");
    server.rewrite(&daily(true)).unwrap();
    let res = server.get("/api/simple").send().await.unwrap();
    assert_eq!(remaining_by_policy(&res), expected(0, Some(99)), "back, and full: its earlier use forgotten");
}

#[tokio::test]
async fn a_policy_gone_is_forgotten_and_a_new_one_starts_full_in_memory() {
    for algorithm in ["token_bucket", "sliding_window", "sliding_log"] {
        gone_and_new_policies(algorithm, "").await;
    }
}

#[tokio::test]
async fn a_policy_gone_is_forgotten_and_a_new_one_starts_full_on_redis() {
    if redis::Client::open("redis://127.0.0.1:6379").and_then(|c| c.get_connection()).is_err() {
        assert!(std::env::var("CI").is_err(), "CI needs the Redis at 127.0.0.1:6379");
        eprintln!("SKIPPED: no Redis at 127.0.0.1:6379");
        return;
    }
    for algorithm in ["token_bucket", "sliding_window", "sliding_log"] {
        let store = format!(
            "\n[store]\nbackend = \"redis\"\nprefix = \"{}\"\ntimeout_ms = 10000\non_error = \"deny\"\n",
            redis_support::unique_prefix(&format!("reload-gone-{algorithm}"))
        );
        gone_and_new_policies(algorithm, &store).await;
    }
}
