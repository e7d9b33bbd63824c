//! The pages for people in a real browser: headless Chromium loads `/dashboard`, `/admin` and
//! `/policy` from a real listener. The charts are drawn (checked in the DOM, and in the
//! screenshots' pixels: both bar colours present, the page's background that of the scheme) in
//! the light and the dark scheme, at 1200 px and at 390 px (a phone).
//!
//! Screenshots go to a scratch directory; with `TOLLGATE_SCREENSHOTS=docs/screenshots` they
//! are written there instead, for the README:
//!
//! ```text
//! TOLLGATE_SCREENSHOTS=docs/screenshots cargo test --all-features --test pages
//! ```
//!
//! Who is the browser? Chromium cannot send an `X-API-Key`, so the test app has what a real
//! one would: an authentication layer in front of the limiter that recognises the browser's
//! session (here: any request to `/dashboard` without a key) as the client "Acme Corp", by
//! inserting a `tollgate::key::Client` into the request, which the limiter honours first.

#[path = "chromium_support.rs"]
mod browser;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use axum::extract::Request;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use browser::{count_near, pixels, Scheme};
use tollgate::clock::ManualClock;
use tollgate::key::{Client, Key};
use tollgate::store::MemoryStore;
use tollgate::usage::UsageRoutes;
use tollgate::{Config, RateLimitLayer};

const CONFIG: &str = r#"
[tiers.anonymous]
requests_per_minute = 30
burst = 5

[tiers.free]
requests_per_minute = 60
burst = 10
requests_per_day = 10000
upgrade_url = "https://example.com/pricing?from=policy"

[tiers.pro]
requests_per_minute = 60
burst = 10
upgrade_url = "https://example.com/pricing?from=dashboard"

[tiers.enterprise]
requests_per_minute = 6000
burst = 1000

[routes]
"/api/simple" = 1
"/api/search" = 5
"POST /api/generate" = 20
"/usage" = 0
"/dashboard" = 0

[exempt]
routes = ["/policy"]

[api_keys]
"acme-key-0123456789" = { tier = "pro", name = "Acme Corp", email = "ops@acme.example" }
"globex-key-0123456789" = { tier = "free", name = "Globex" }
"initech-key-0123456789" = "free"

[admin]
keys = ["ops-key-0123456789"]
"#;

/// "Now" for the whole test: 2027-01-15 08:00:00 UTC.
const NOW: u64 = 1_800_000_000;

/// The browser's session, as an authentication layer in front of the limiter would see it: a
/// request to `/dashboard` without a key is Acme's, and one to the operator's pages is the
/// operator's (who holds an admin key).
async fn session(mut req: Request, next: Next) -> Response {
    if !req.headers().contains_key("x-api-key") {
        if req.uri().path() == "/dashboard" {
            req.extensions_mut()
                .insert(Client::new(Key::new("acme-key-0123456789")).with_tier("pro").with_name("Acme Corp"));
        } else if req.uri().path().starts_with("/admin") {
            req.headers_mut().insert("x-api-key", http::HeaderValue::from_static("ops-key-0123456789"));
        }
    }
    next.run(req).await
}

struct App {
    base: String,
    http: reqwest::Client,
    clock: ManualClock,
}

impl App {
    async fn start() -> Self {
        let clock = ManualClock::new(Duration::from_secs(NOW - 86_400 + 120));
        let layer = RateLimitLayer::new(Config::from_toml(CONFIG).unwrap())
            .with_store(MemoryStore::with_clock(clock.clone()))
            .clock(clock.clone());
        let app = Router::new()
            .route("/api/simple", get(|| async { "{}" }))
            .route("/api/search", get(|| async { "{}" }))
            .merge(UsageRoutes::new(layer.clone()).into_router())
            .layer(layer)
            .layer(middleware::from_fn(session));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await.unwrap()
        });
        Self { base, http: reqwest::Client::new(), clock }
    }

    async fn call(&self, path: &str, key: &str, n: u64) {
        for _ in 0..n {
            let res =
                self.http.get(format!("{}{path}", self.base)).header("x-api-key", key).send().await.unwrap();
            assert!(res.status() == 200 || res.status() == 429, "{path}: {}", res.status());
        }
    }

    /// A day of traffic: a little every hour, then every minute of the last hour, with
    /// refusals when a client sends more than its burst in a minute.
    async fn traffic(&self) {
        for hour in 0..22u64 {
            self.call("/api/simple", "acme-key-0123456789", 2 + hour % 5).await;
            self.call("/api/search", "globex-key-0123456789", hour % 3).await;
            self.clock.advance(Duration::from_secs(3_600));
        }
        let start = NOW - 59 * 60;
        let at = self.clock.now_secs();
        self.clock.advance(Duration::from_secs(start.saturating_sub(at)));
        for minute in 0..60u64 {
            self.call("/api/simple", "acme-key-0123456789", 3 + (minute * 7) % 11).await;
            self.call("/api/search", "globex-key-0123456789", minute % 3).await;
            self.call("/api/simple", "initech-key-0123456789", minute % 2).await;
            self.call("/api/simple", "not-a-key", (minute * 5) % 8).await;
            if minute < 59 {
                self.clock.advance(Duration::from_secs(60));
            }
        }
        assert_eq!(self.clock.now_secs(), NOW);
    }
}

trait NowSecs {
    fn now_secs(&self) -> u64;
}

impl NowSecs for ManualClock {
    fn now_secs(&self) -> u64 {
        use tollgate::clock::Clock;
        self.now().as_secs()
    }
}

/// Where screenshots go: `TOLLGATE_SCREENSHOTS` (relative to the crate), else `scratch`.
fn shots_dir(scratch: &std::path::Path) -> PathBuf {
    match std::env::var_os("TOLLGATE_SCREENSHOTS") {
        Some(dir) => {
            let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(dir);
            std::fs::create_dir_all(&dir).unwrap();
            dir
        }
        None => scratch.to_path_buf(),
    }
}

/// Bar colours (`CHART_STYLE`) and page backgrounds of each scheme.
fn colours(scheme: Scheme) -> (u32, u32, u32) {
    match scheme {
        Scheme::Light => (0x2f6fdf, 0xe0591f, 0xf6f7f9),
        Scheme::Dark => (0x73a0ff, 0xff8f57, 0x14171b),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_and_admin_draw_their_charts_in_both_schemes_at_desktop_and_phone_width() {
    let Some(chromium) = browser::chromium("pages") else { return };
    let app = App::start().await;
    app.traffic().await;
    let scratch = browser::scratch("pages");
    let shots = shots_dir(&scratch);

    // The DOM: the dashboard is Acme's, with both charts above the standing, both colours.
    let dashboard = format!("{}/dashboard", app.base);
    let dom = browser::dom(&chromium, &scratch, &dashboard, Scheme::Light).await;
    assert_eq!(browser::text_of(&dom, r#"id="client""#), "Acme Corp", "{dom}");
    let hour = dom.find(r#"id="hour""#).expect("the hour chart");
    let day = dom.find(r#"id="day""#).expect("the day chart");
    let standing = dom.find(r#"data-policy="pro""#).expect("the standing");
    assert!(hour < day && day < standing, "charts above the standing");
    let hour_chart = &dom[hour..day];
    assert_eq!(hour_chart.matches("<g data-start=").count(), 60, "a bar for every minute");
    assert!(hour_chart.contains(r#"<rect class="rej""#), "refusals drawn");
    assert!(dom[day..standing].matches("<g data-start=").count() >= 22, "a bar for every hour");
    for label in ["60 min ago", "30 min ago", "24 h ago", "now"] {
        assert!(dom.contains(&format!(">{label}<")), "{label}");
    }

    // The operator's page: every client by name, address or key prefix, busiest first.
    let admin = format!("{}/admin", app.base);
    let dom = browser::dom(&chromium, &scratch, &admin, Scheme::Light).await;
    let (acme, globex, ip, initech) = (
        dom.find(">Acme Corp<").expect("Acme"),
        dom.find(">Globex<").expect("Globex"),
        dom.find(">127.0.0.1<").expect("the anonymous address"),
        dom.find(">init…<").expect("a key without a name: its prefix"),
    );
    assert!(acme < globex && globex < ip && ip < initech, "most tokens first");
    assert!(!dom.contains("-key-0123456789"), "never a whole key");
    assert!(dom.contains(r#"id="everyone""#) && dom.contains(r#"<rect class="rej""#));

    for (page, url) in [("dashboard", dashboard), ("admin", admin)] {
        for scheme in [Scheme::Light, Scheme::Dark] {
            for (width, height) in [(1200, 1000), (390, 1400)] {
                let file = shots.join(format!("{page}-{}-{width}.png", scheme.name()));
                let png = browser::screenshot(&chromium, &scratch, &url, width, height, scheme, &file).await;
                let px = pixels(&png);
                let (admitted, rejected, background) = colours(scheme);
                let (a, r, b) = (
                    count_near(&px, admitted, 12),
                    count_near(&px, rejected, 12),
                    count_near(&px, background, 6),
                );
                eprintln!("{}: admitted {a} px, rejected {r} px, background {b} px", file.display());
                assert!(a > 500, "{page} {} {width}: admitted bars painted ({a} px)", scheme.name());
                assert!(r > 100, "{page} {} {width}: rejected bars painted ({r} px)", scheme.name());
                assert!(
                    b > px.len() / 5,
                    "{page} {} {width}: the {} background ({b} of {} px)",
                    scheme.name(),
                    scheme.name(),
                    px.len()
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_is_a_pricing_table_in_the_browser() {
    let Some(chromium) = browser::chromium("pages") else { return };
    let app = App::start().await;
    let scratch = browser::scratch("policy");
    let shots = shots_dir(&scratch);
    // Chromium asks for text/html when it navigates: the page, not the JSON.
    let url = format!("{}/policy", app.base);
    let dom = browser::dom(&chromium, &scratch, &url, Scheme::Light).await;
    for tier in ["anonymous", "free", "pro", "enterprise"] {
        assert!(dom.contains(&format!(r#"<th scope="col" data-tier="{tier}">{tier}"#)), "{tier}: {dom}");
    }
    let rate = &dom[dom.find(r#"<tr class="rate">"#).expect("rates")..];
    let rate = &rate[..rate.find("</tr>").unwrap()];
    for words in ["30 per minute", "60 per minute", "6,000 per minute", "86,400 a day"] {
        assert!(rate.contains(words), "{words} in {rate}");
    }
    assert!(dom.contains("10,000 per day"), "the daily quota");
    let search = &dom[dom.find(r#"data-route="/api/search""#).expect("route costs")..];
    assert!(search[..search.find("</tr>").unwrap()].contains(r#"<td class="num cost">5</td>"#));
    assert!(dom.contains(r#"data-route="POST /api/generate""#));
    assert!(dom.contains(r#"href="https://example.com/pricing?from=policy""#), "the upgrade link");
    for (scheme, width) in [(Scheme::Light, 1200), (Scheme::Dark, 390)] {
        let file = shots.join(format!("policy-{}-{width}.png", scheme.name()));
        browser::screenshot(
            &chromium,
            &scratch,
            &url,
            width,
            if width == 390 { 1400 } else { 1000 },
            scheme,
            &file,
        )
        .await;
    }
}
