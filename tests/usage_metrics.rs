//! `/metrics` over real HTTP: the body parses as the Prometheus text format (version 0.0.4)
//! and counts what the test did.
//!
//! One test in this file: the recorder is global to the process.

#![cfg(feature = "prometheus")]

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;

use axum::routing::get;
use axum::Router;
use tollgate::observe::MetricsObserver;
use tollgate::usage::UsageRoutes;
use tollgate::{Config, RateLimitLayer};

type Labels = BTreeMap<String, String>;

#[derive(Debug)]
struct Sample {
    name: String,
    labels: Labels,
    value: f64,
}

/// Parses the Prometheus text exposition format strictly enough to catch a malformed body:
/// `# HELP name text`, `# TYPE name kind`, and `name{label="value",…} number`, with every
/// sample belonging to a family whose TYPE was declared before it.
fn parse(text: &str) -> Vec<Sample> {
    fn is_name(s: &str) -> bool {
        let mut chars = s.chars();
        chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    }
    let mut types: HashMap<String, String> = HashMap::new();
    let mut samples = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let at = |what: &str| format!("line {}: {what}: {line:?}", n + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let mut words = comment.trim_start().splitn(3, ' ');
            match (words.next(), words.next(), words.next()) {
                (Some("HELP"), Some(name), _) => assert!(is_name(name), "{}", at("HELP name")),
                (Some("TYPE"), Some(name), Some(kind)) => {
                    assert!(is_name(name), "{}", at("TYPE name"));
                    assert!(
                        ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                        "{}",
                        at("TYPE kind")
                    );
                    assert!(types.insert(name.to_owned(), kind.to_owned()).is_none(), "{}", at("TYPE twice"));
                }
                _ => {}
            }
            continue;
        }
        let (name, rest) = match line.find(['{', ' ']) {
            Some(i) => line.split_at(i),
            None => panic!("{}", at("no value")),
        };
        assert!(is_name(name), "{}", at("metric name"));
        let mut labels = Labels::new();
        let rest = if let Some(body) = rest.strip_prefix('{') {
            let mut chars = body.char_indices().peekable();
            let end = loop {
                let (start, c) = chars.next().unwrap_or_else(|| panic!("{}", at("unclosed labels")));
                if c == '}' {
                    break start;
                }
                if c == ',' {
                    continue;
                }
                let mut key = String::from(c);
                for (_, c) in chars.by_ref() {
                    if c == '=' {
                        break;
                    }
                    key.push(c);
                }
                assert!(is_name(&key), "{}", at("label name"));
                assert_eq!(chars.next().map(|(_, c)| c), Some('"'), "{}", at("label quote"));
                let mut value = String::new();
                loop {
                    match chars.next().unwrap_or_else(|| panic!("{}", at("unclosed value"))).1 {
                        '\\' => match chars.next().map(|(_, c)| c) {
                            Some('n') => value.push('\n'),
                            Some(c @ ('\\' | '"')) => value.push(c),
                            _ => panic!("{}", at("bad escape")),
                        },
                        '"' => break,
                        c => value.push(c),
                    }
                }
                assert!(labels.insert(key, value).is_none(), "{}", at("label twice"));
            };
            &body[end + 1..]
        } else {
            rest
        };
        let mut fields = rest.split_whitespace();
        let value = fields.next().unwrap_or_else(|| panic!("{}", at("no value")));
        let value = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("{}", at("value"))),
        };
        if let Some(ts) = fields.next() {
            ts.parse::<i64>().unwrap_or_else(|_| panic!("{}", at("timestamp")));
        }
        assert!(fields.next().is_none(), "{}", at("trailing fields"));
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix).filter(|f| types.contains_key(*f)))
            .unwrap_or(name);
        assert!(types.contains_key(family), "{}", at("sample before its TYPE"));
        samples.push(Sample { name: name.to_owned(), labels, value });
    }
    samples
}

fn find(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && s.labels.len() == labels.len()
                && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
}

#[test]
fn the_parser_rejects_what_prometheus_would() {
    let ok = "# HELP a_total things\n# TYPE a_total counter\na_total{x=\"1\",y=\"q\\\"\"} 3\n";
    assert_eq!(parse(ok)[0].labels["y"], "q\"");
    for bad in [
        "a_total 1\n",
        "# TYPE a counter\na{x=1} 2\n",
        "# TYPE a counter\na one\n",
        "# TYPE a counter\na{x=\"1\" 2\n",
    ] {
        assert!(std::panic::catch_unwind(|| parse(bad)).is_err(), "accepted {bad:?}");
    }
}

#[tokio::test]
async fn metrics_parse_as_prometheus_text_and_count_what_happened() {
    let handle = tollgate::usage::install_prometheus().unwrap();
    let config = Config::from_toml(
        r#"
        [tiers.anonymous]
        requests_per_hour = 60
        burst = 20
        [routes]
        "/api/search" = 5
        "/usage" = 0
        [exempt]
        routes = ["/metrics", "/policy"]
        [degrade]
        routes = ["/api/search"]
        cached_below = 0.5
        minimal_below = 0.1
        "#,
    )
    .unwrap();
    let layer = RateLimitLayer::new(config).observer(MetricsObserver::new());
    let app = Router::new()
        .route("/api/simple", get(|| async { "{}" }))
        .route("/api/search", get(|| async { "{}" }))
        .merge(UsageRoutes::new(layer.clone()).prometheus(handle).into_router())
        .layer(layer);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await.unwrap()
    });
    let client = reqwest::Client::new();
    let get = |path: &str| client.get(format!("{base}{path}")).send();

    // 19 admitted (1 token of 20 left, a share of 0.05), then a search in the minimal band
    // (charged 1), then 2 rejected (a token comes back once a minute).
    for _ in 0..19 {
        assert_eq!(get("/api/simple").await.unwrap().status(), 200);
    }
    let search = get("/api/search").await.unwrap();
    assert_eq!(search.headers()["x-ratelimit-degraded"], "minimal");
    for _ in 0..2 {
        assert_eq!(get("/api/simple").await.unwrap().status(), 429);
    }
    assert_eq!(get("/usage").await.unwrap().status(), 200);

    let res = get("/metrics").await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.headers().get("x-ratelimit-remaining").is_none(), "/metrics is exempt");
    assert!(res.headers()["content-type"].to_str().unwrap().starts_with("text/plain; version=0.0.4"));
    let text = res.text().await.unwrap();
    let samples = parse(&text);

    let decisions = |route: &str, outcome: &str| {
        find(
            &samples,
            "tollgate_decisions_total",
            &[("tier", "anonymous"), ("route", route), ("outcome", outcome)],
        )
    };
    assert_eq!(decisions("/api/simple", "admitted"), Some(19.0), "{text}");
    assert_eq!(decisions("/api/simple", "rejected"), Some(2.0), "{text}");
    assert_eq!(decisions("/api/search", "degraded"), Some(1.0), "{text}");
    assert_eq!(decisions("/usage", "admitted"), Some(1.0), "{text}");
    assert_eq!(decisions("/metrics", "admitted"), None, "exempt routes are not decided");
    assert_eq!(
        find(
            &samples,
            "tollgate_degraded_total",
            &[("tier", "anonymous"), ("route", "/api/search"), ("band", "minimal")]
        ),
        Some(1.0)
    );
    let charged =
        |route| find(&samples, "tollgate_tokens_charged_total", &[("tier", "anonymous"), ("route", route)]);
    assert_eq!(charged("/api/simple"), Some(19.0));
    assert_eq!(charged("/api/search"), Some(1.0));
    // 23 decisions: the remaining-share histogram has them all, in tenths.
    assert_eq!(find(&samples, "tollgate_remaining_ratio_count", &[("tier", "anonymous")]), Some(23.0));
    assert_eq!(
        find(&samples, "tollgate_remaining_ratio_bucket", &[("tier", "anonymous"), ("le", "0")]),
        Some(4.0),
        "the search and the two rejections left 0, and so does /usage after them"
    );
    assert_eq!(
        find(&samples, "tollgate_remaining_ratio_bucket", &[("tier", "anonymous"), ("le", "+Inf")]),
        Some(23.0)
    );
    // One client: one state per policy.
    assert_eq!(find(&samples, "tollgate_keys_tracked", &[]), Some(1.0));
    assert!(text.contains("# HELP tollgate_decisions_total"), "{text}");
    assert!(text.contains("# TYPE tollgate_decisions_total counter"));
    assert!(samples.iter().all(|s| s.labels.get("route").is_none_or(|r| r.starts_with('/'))));
}
