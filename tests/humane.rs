//! Issue 13 over real HTTP (the demo router on a bound listener, reqwest) and real SMTP (the
//! sink of tests/smtp_support.rs): near-quota emails, usage history in `/usage`, `/policy`
//! for browsers, and the operator's view.

#[path = "../examples/server/app.rs"]
#[allow(dead_code, unreachable_pub)]
mod app;
#[path = "smtp_support.rs"]
mod smtp;
#[path = "redis_support.rs"]
mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use reqwest::{Client, StatusCode};
use serde_json::Value;
use smtp::{DeadRelay, SmtpSink};
use tollgate::clock::ManualClock;
use tollgate::store::MemoryStore;
use tollgate::Config;

const API_KEY: &str = "x-api-key";

struct Server {
    base: String,
    http: Client,
}

impl Server {
    /// The demo router on a free port; with `clock`, the store reads a manual clock.
    async fn start(config: Config, clock: Option<&ManualClock>) -> Self {
        let mut layer = app::layer(config).unwrap();
        if let Some(clock) = clock {
            layer = layer.with_store(MemoryStore::with_clock(clock.clone())).clock(clock.clone());
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = app::router(layer).into_make_service_with_connect_info::<SocketAddr>();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { base: format!("http://{addr}"), http: Client::new() }
    }

    async fn get(&self, path: &str, key: Option<&str>) -> reqwest::Response {
        let mut req = self.http.get(format!("{}{path}", self.base));
        if let Some(key) = key {
            req = req.header(API_KEY, key);
        }
        req.send().await.unwrap()
    }

    async fn json(&self, path: &str, key: Option<&str>) -> Value {
        let res = self.get(path, key).await;
        assert_eq!(res.status(), StatusCode::OK, "{path}");
        res.json().await.unwrap()
    }
}

const LIMITS: &str = r#"
[tiers.anonymous]
requests_per_minute = 30
burst = 5

[tiers.free]
requests_per_minute = 60
burst = 10

[tiers.pro]
requests_per_minute = 60
burst = 10
upgrade_url = "https://example.com/pricing?tier=pro"

[routes]
"/api/simple" = 1
"/api/search" = 5
"/usage" = 0
"/dashboard" = 0

[exempt]
routes = ["/health", "/metrics", "/policy"]

[admin]
keys = ["ops-key-0123456789"]
"#;

fn config(extra: &str) -> Config {
    Config::from_toml(&format!("{LIMITS}\n{extra}")).unwrap()
}

/// Sums of `admitted`, `rejected`, `tokens` over a list of periods.
fn sums(periods: &Value) -> (u64, u64, u64) {
    periods.as_array().unwrap().iter().fold((0, 0, 0), |(a, r, t), p| {
        (
            a + p["admitted"].as_u64().unwrap(),
            r + p["rejected"].as_u64().unwrap(),
            t + p["tokens"].as_u64().unwrap(),
        )
    })
}

/// Requests `path` with `key` and tallies what the limiter did: (admitted, rejected, tokens).
async fn tally(server: &Server, path: &str, key: &str, cost: u64, n: usize, into: &mut (u64, u64, u64)) {
    for _ in 0..n {
        match server.get(path, Some(key)).await.status() {
            StatusCode::OK => {
                into.0 += 1;
                into.2 += cost;
            }
            StatusCode::TOO_MANY_REQUESTS | StatusCode::FORBIDDEN => into.1 += 1,
            other => panic!("{path}: {other}"),
        }
    }
}

#[tokio::test]
async fn usage_history_sums_match_the_requests_made() {
    let clock = ManualClock::new(Duration::from_secs(1_800_000_030));
    let server = Server::start(
        config(
            r#"[api_keys]
"acme-key-0123456789" = { tier = "pro", name = "Acme Corp" }"#,
        ),
        Some(&clock),
    )
    .await;
    let key = "acme-key-0123456789";
    let mut first = (0, 0, 0);
    tally(&server, "/api/simple", key, 1, 6, &mut first).await;
    tally(&server, "/api/search", key, 5, 2, &mut first).await; // 4 left: both refused
    clock.advance(Duration::from_secs(60));
    let mut second = (0, 0, 0);
    tally(&server, "/api/search", key, 5, 3, &mut second).await; // full: 2 admitted, 1 refused
    tally(&server, "/api/simple", key, 1, 1, &mut second).await; // empty: refused
    assert_eq!(first, (6, 2, 6));
    assert_eq!(second, (2, 2, 10));

    let usage = server.json("/usage", Some(key)).await;
    assert_eq!(usage["name"], "Acme Corp");
    let history = &usage["history"];
    let minutes = history["minutes"].as_array().unwrap();
    assert_eq!(minutes.len(), 2, "{history}");
    assert_eq!(minutes[0]["start"], 1_800_000_000);
    assert_eq!(minutes[1]["start"], 1_800_000_060);
    assert_eq!(sums(&Value::Array(vec![minutes[0].clone()])), first);
    assert_eq!(sums(&Value::Array(vec![minutes[1].clone()])), second);
    assert_eq!(sums(&history["hours"]), (8, 4, 16));
    assert_eq!(history["hours"][0]["start"], 1_800_000_000 / 3_600 * 3_600);

    // A client keyed by its address has an empty history.
    let anonymous = server.json("/usage", None).await;
    assert_eq!(anonymous["history"], serde_json::json!({"minutes": [], "hours": []}));
}

#[tokio::test]
async fn usage_history_on_redis_is_shared_by_two_instances() {
    if support::shared_redis().is_none() {
        return;
    }
    let prefix = support::unique_prefix("humane-history");
    let toml = format!(
        "[api_keys]\n\"acme-key-0123456789\" = {{ tier = \"pro\", name = \"Acme Corp\" }}\n\
         [store]\nbackend = \"redis\"\nurl = \"{}\"\nprefix = \"{prefix}\"\n",
        support::SHARED_URL
    );
    let a = Server::start(config(&toml), None).await;
    let b = Server::start(config(&toml), None).await;
    let key = "acme-key-0123456789";
    let mut made = (0, 0, 0);
    for round in 0..3 {
        let server = if round % 2 == 0 { &a } else { &b };
        tally(server, "/api/simple", key, 1, 3, &mut made).await;
        tally(server, "/api/search", key, 5, 1, &mut made).await;
    }
    assert_eq!(made.0 + made.1, 12);
    // Each read writes its own instance's batch first: read b, then a (which sees both),
    // then b again.
    b.json("/usage", Some(key)).await;
    let from_a = a.json("/usage", Some(key)).await;
    let from_b = b.json("/usage", Some(key)).await;
    assert_eq!(sums(&from_a["history"]["minutes"]), made, "{from_a}");
    assert_eq!(sums(&from_a["history"]["hours"]), made);
    assert_eq!(from_a["history"], from_b["history"]);
    let mut conn = support::shared_redis().unwrap();
    let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{prefix}:*")).query(&mut conn).unwrap();
    assert!(keys.iter().all(|k| !k.contains("acme-key")), "{keys:?}");
    let _: () = redis::cmd("DEL").arg(&keys).query(&mut conn).unwrap();
}

#[tokio::test]
async fn the_operators_view_refuses_without_an_admin_key_is_sorted_redacted_and_never_charged() {
    let clock = ManualClock::new(Duration::from_secs(1_800_000_000));
    let server = Server::start(
        config(
            r#"[api_keys]
"acme-key-0123456789" = { tier = "pro", name = "Acme Corp" }
"free-key-0123456789" = "free""#,
        ),
        Some(&clock),
    )
    .await;
    for (path, key) in [
        ("/admin/usage", None),
        ("/admin/usage", Some("ops-key-012345678")),
        ("/admin/usage", Some("acme-key-0123456789")),
        ("/admin", None),
        ("/admin", Some("ops-key-0123456789x")),
    ] {
        let res = server.get(path, key).await;
        assert_eq!(res.status(), StatusCode::FORBIDDEN, "{path} with {key:?}");
        assert_eq!(res.headers()["content-type"], "application/problem+json");
        assert!(res.headers().get("x-ratelimit-limit").is_none(), "never limited");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["status"], 403);
    }
    let mut ignored = (0, 0, 0);
    tally(&server, "/api/search", "acme-key-0123456789", 5, 3, &mut ignored).await; // 2 in, 1 out
    tally(&server, "/api/simple", "free-key-0123456789", 1, 3, &mut ignored).await;
    for _ in 0..7 {
        server.get("/api/simple", None).await; // anonymous: 5 in, 2 out
    }
    let admin = Some("ops-key-0123456789");
    let res = server.get("/admin/usage", admin).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.headers().get("x-ratelimit-limit").is_none(), "the admin routes are exempt");
    let text = res.text().await.unwrap();
    for secret in ["acme-key-0123456789", "free-key-0123456789", "ops-key-0123456789"] {
        assert!(!text.contains(secret), "{secret} in {text}");
    }
    let report: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(report["window_s"], 3600);
    let clients: Vec<(String, String, u64, u64, u64)> = report["clients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["client"].as_str().unwrap().to_owned(),
                c["tier"].as_str().unwrap().to_owned(),
                c["admitted"].as_u64().unwrap(),
                c["rejected"].as_u64().unwrap(),
                c["tokens"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        clients,
        [
            ("Acme Corp".into(), "pro".into(), 2, 1, 10),
            ("127.0.0.1".into(), "anonymous".into(), 5, 2, 5),
            ("free…".into(), "free".into(), 3, 0, 3),
        ]
    );
    assert_eq!(
        report["rejected_by_tier"],
        serde_json::json!([{"name": "anonymous", "rejected": 2}, {"name": "pro", "rejected": 1}])
    );
    assert_eq!(
        report["rejected_by_route"],
        serde_json::json!([{"name": "/api/simple", "rejected": 2}, {"name": "/api/search", "rejected": 1}])
    );
    let limited: Value = server.json("/admin/usage?limit=1", admin).await;
    assert_eq!(limited["clients"].as_array().unwrap().len(), 1);

    let page = server.get("/admin", admin).await;
    assert_eq!(page.status(), StatusCode::OK);
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    let html = page.text().await.unwrap();
    assert!(html.contains("<svg") && html.contains("Acme Corp") && html.contains("free…"), "{html}");
    assert!(!html.contains("-key-0123456789"));

    // Reading the operator's view was never charged nor counted: the admin's requests came
    // from 127.0.0.1 without a known API key, and that client's numbers did not move.
    let again: Value = server.json("/admin/usage", admin).await;
    assert_eq!(again["clients"], report["clients"]);
}

#[tokio::test]
async fn policy_answers_browsers_with_a_page_and_programs_with_json() {
    let server = Server::start(Config::load("config/ratelimit.toml").unwrap(), None).await;
    let json = server.get("/policy", None).await;
    assert_eq!(json.headers()["content-type"], "application/json");
    assert_eq!(json.headers()["vary"], "accept");
    let body: Value = json.json().await.unwrap();
    assert_eq!(body["default_tier"], "anonymous");
    let html = server
        .http
        .get(format!("{}/policy", server.base))
        .header("accept", "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8")
        .send()
        .await
        .unwrap();
    assert_eq!(html.status(), StatusCode::OK);
    assert_eq!(html.headers()["content-type"], "text/html; charset=utf-8");
    let page = html.text().await.unwrap();
    for tier in ["anonymous", "free", "pro", "enterprise"] {
        assert!(page.contains(&format!("data-tier=\"{tier}\"")), "{tier}");
    }
    assert!(page.contains("href=\"https://example.com/pricing\""));
}

fn email_config(relay: &str, keys: &str, store: &str) -> Config {
    config(&format!(
        "[alerts.email]\nsmtp = \"{relay}\"\nfrom = \"Limits <limits@example.com>\"\n\n[api_keys]\n{keys}\n{store}"
    ))
}

const EMAIL_KEYS: &str = r#""acme-key-0123456789" = { tier = "pro", name = "Acme Corp", email = "ops@acme.example" }
"marker-key-0123456789" = { tier = "pro", email = "marker@example.com" }
"silent-key-0123456789" = "pro""#;

#[tokio::test]
async fn one_email_per_crossing_window_to_the_right_recipient_saying_the_right_things() {
    let sink = SmtpSink::start().await;
    let clock = ManualClock::new(Duration::from_secs(1_800_000_000));
    let server = Server::start(email_config(&sink.url(), EMAIL_KEYS, ""), Some(&clock)).await;
    // 10 requests: the 8th takes "pro" from 70 % to 80 % used.
    for _ in 0..10 {
        server.get("/api/simple", Some("acme-key-0123456789")).await;
        server.get("/api/simple", Some("silent-key-0123456789")).await; // no email address
    }
    let mails = sink.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(mails.len(), 1);
    let mail = &mails[0];
    assert_eq!(mail.to, ["ops@acme.example"]);
    assert_eq!(mail.from, "limits@example.com");
    assert_eq!(mail.header("Subject").unwrap(), "You have used 80% of your \"pro\" API limit");
    let text = mail.part("text/plain").unwrap();
    assert!(text.starts_with("Hello Acme Corp,"), "{text}");
    assert!(text.contains("(tier \"pro\")") && text.contains("8 of the 10 requests"), "{text}");
    // Full again 8 s after the crossing (8 tokens at 1 a second), by the store's clock.
    assert!(text.contains("full again on Fri, 15 Jan 2027 08:00:08 GMT (in 8 s)"), "{text}");
    assert!(text.contains("https://example.com/pricing?tier=pro"), "{text}");
    assert!(!mail.data.contains("acme-key"), "no API key in an email");

    // Full again, drained again: a new crossing, inside the day: no second email. The marker
    // client's email goes through the same queue after it, so once the marker's arrives the
    // repeat was decided.
    clock.advance(Duration::from_secs(30));
    for _ in 0..10 {
        server.get("/api/simple", Some("acme-key-0123456789")).await;
    }
    for _ in 0..10 {
        server.get("/api/simple", Some("marker-key-0123456789")).await;
    }
    let mails = sink.wait_for(2, Duration::from_secs(10)).await;
    assert_eq!(
        mails.iter().map(|m| m.to[0].as_str()).collect::<Vec<_>>(),
        ["ops@acme.example", "marker@example.com"]
    );
    assert!(mails[1].part("text/plain").unwrap().starts_with("Hello there,"), "no name: a plain greeting");
}

#[tokio::test]
async fn two_instances_on_one_redis_send_one_email() {
    if support::shared_redis().is_none() {
        return;
    }
    let sink = SmtpSink::start().await;
    let prefix = support::unique_prefix("humane-email");
    let store =
        format!("[store]\nbackend = \"redis\"\nurl = \"{}\"\nprefix = \"{prefix}\"\n", support::SHARED_URL);
    // A fast tier: 20 a second, burst 10, so the bucket refills between the two crossings.
    let keys = EMAIL_KEYS.replace("tier = \"pro\"", "tier = \"fast\"");
    let extra = "\n[tiers.fast]\nrequests_per_second = 20\nburst = 10\n";
    let a = Server::start(
        Config::from_toml(&format!("{LIMITS}{extra}\n[alerts.email]\nsmtp = \"{}\"\nfrom = \"limits@example.com\"\n[api_keys]\n{keys}\n{store}", sink.url())).unwrap(),
        None,
    )
    .await;
    let b = Server::start(
        Config::from_toml(&format!("{LIMITS}{extra}\n[alerts.email]\nsmtp = \"{}\"\nfrom = \"limits@example.com\"\n[api_keys]\n{keys}\n{store}", sink.url())).unwrap(),
        None,
    )
    .await;
    let key = Some("acme-key-0123456789");
    // Cross on a.
    while a.get("/api/simple", key).await.headers()["x-ratelimit-remaining"] != "0" {}
    assert_eq!(sink.wait_for(1, Duration::from_secs(10)).await.len(), 1);
    // Refill below the threshold (at least 3 left), then cross again on b.
    let deadline = Instant::now() + Duration::from_secs(10);
    while b.json("/usage", key).await["remaining"].as_u64().unwrap() < 3 {
        assert!(Instant::now() < deadline, "the bucket refills");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    while b.get("/api/simple", key).await.headers()["x-ratelimit-remaining"] != "0" {}
    // The marker goes through b's queue after the repeat.
    while b.get("/api/simple", Some("marker-key-0123456789")).await.headers()["x-ratelimit-remaining"] != "0"
    {
    }
    let mails = sink.wait_for(2, Duration::from_secs(10)).await;
    assert_eq!(
        mails.iter().map(|m| m.to[0].as_str()).collect::<Vec<_>>(),
        ["ops@acme.example", "marker@example.com"]
    );
    let mut conn = support::shared_redis().unwrap();
    let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{prefix}:*")).query(&mut conn).unwrap();
    let _: () = redis::cmd("DEL").arg(&keys).query(&mut conn).unwrap();
}

#[tokio::test]
async fn a_dead_relay_adds_no_latency_to_requests() {
    let dead = DeadRelay::start().await;
    let mut keys = String::new();
    for i in 0..40 {
        keys.push_str(&format!(
            "\"client-{i:02}-0123456789\" = {{ tier = \"anonymous\", email = \"c{i}@example.com\" }}\n"
        ));
    }
    let with_dead_relay = Server::start(email_config(&dead.url(), &keys, ""), None).await;
    let without_email = Server::start(config(&format!("[api_keys]\n{keys}")), None).await;
    // Every client crosses 80 % of its burst of 5 on its 4th request: 40 emails wait on a relay
    // that never answers (each for lettre's 10 s timeout), one after the other.
    let (mut slow, mut base) = (Vec::new(), Vec::new());
    for i in 0..40 {
        let key = format!("client-{i:02}-0123456789");
        for _ in 0..5 {
            for (server, times) in [(&with_dead_relay, &mut slow), (&without_email, &mut base)] {
                let started = Instant::now();
                assert_eq!(server.get("/api/simple", Some(&key)).await.status(), StatusCode::OK);
                times.push(started.elapsed());
            }
        }
    }
    slow.sort();
    base.sort();
    let (slow_median, base_median) = (slow[slow.len() / 2], base[base.len() / 2]);
    let slowest = *slow.last().unwrap();
    eprintln!("dead relay: median {slow_median:?}, slowest {slowest:?}; no email: median {base_median:?}, slowest {:?}", base.last().unwrap());
    // Generous bounds: a request that waited on the relay would take 10 s.
    assert!(slowest < Duration::from_secs(1), "slowest request with a dead relay: {slowest:?}");
    assert!(slow_median < base_median * 3 + Duration::from_millis(5), "{slow_median:?} vs {base_median:?}");
}
