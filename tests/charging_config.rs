//! Issue 12's configuration keys: `max_delay_ms`, `[routes]` tables with `charge`,
//! `algorithm = "sliding_log"`; every bad value is an error naming its key.
#![cfg(feature = "config")]

use tollgate::algorithm::Algorithm;
use tollgate::clock::Nanos;
use tollgate::policy::ChargeOn;
use tollgate::Config;

fn tier(extra: &str) -> String {
    format!("[tiers.anonymous]\nrequests_per_second = 5\nburst = 2\n{extra}\n")
}

fn error(text: &str) -> String {
    Config::from_toml(text).unwrap_err().to_string()
}

#[test]
fn max_delay_ms_is_per_tier_and_checked() {
    let config = Config::from_toml(&tier("max_delay_ms = 1000")).unwrap();
    assert_eq!(config.limits().default_tier().max_delay(), Nanos::from_millis(1_000));
    let config = Config::from_toml(&tier("")).unwrap();
    assert_eq!(config.limits().default_tier().max_delay(), Nanos::ZERO, "refuse at once by default");
    // The sliding log can reserve ahead too.
    assert!(Config::from_toml(&tier("max_delay_ms = 250\nalgorithm = \"sliding_log\"")).is_ok());

    let err = error(&tier("max_delay_ms = -1"));
    assert!(err.contains("tiers.anonymous.max_delay_ms") && err.contains("0 or more"), "{err}");
    let err = error(&tier("max_delay_ms = 3600001"));
    assert!(err.contains("tiers.anonymous.max_delay_ms") && err.contains("one hour"), "{err}");
    // The counter keeps counts, not times: nowhere to put a charge ahead.
    let err = error(&tier("max_delay_ms = 100\nalgorithm = \"sliding_window\""));
    assert!(err.contains("tiers.anonymous.max_delay_ms") && err.contains("token_bucket"), "{err}");
    let err = error(&format!("algorithm = \"sliding_window\"\n{}", tier("max_delay_ms = 100")));
    assert!(err.contains("tiers.anonymous.max_delay_ms"), "the top-level algorithm counts too: {err}");
    let err = error(&tier("max_delay_ms = \"soon\""));
    assert!(err.contains("max_delay_ms"), "{err}");
}

#[test]
fn routes_take_a_cost_or_a_table_with_a_charge() {
    let config = Config::from_toml(&format!(
        "{}[routes]\n\"/a\" = 3\n\"POST /login\" = {{ cost = 1, charge = \"failures\" }}\n\
         \"/b\" = {{ charge = \"successes\" }}\n\"/c\" = {{ cost = 7 }}\n",
        tier("")
    ))
    .unwrap();
    let routes = config.limits().routes();
    let rule = |method: http::Method, path: &str| routes.lookup(&method, path);
    assert_eq!(
        (rule(http::Method::GET, "/a").cost, rule(http::Method::GET, "/a").charge),
        (3, ChargeOn::All)
    );
    let login = rule(http::Method::POST, "/login");
    assert_eq!((login.cost, login.charge), (1, ChargeOn::Failures));
    let b = rule(http::Method::GET, "/b");
    assert_eq!((b.cost, b.charge), (1, ChargeOn::Successes), "cost defaults to 1");
    assert_eq!(rule(http::Method::GET, "/c").charge, ChargeOn::All, "charge defaults to all");

    let err = error(&format!("{}[routes]\n\"/a\" = {{ cost = 1, charge = \"sometimes\" }}\n", tier("")));
    assert!(err.contains("routes") && err.contains("sometimes"), "{err}");
    let err = error(&format!("{}[routes]\n\"/a\" = {{ cost = 1, price = 3 }}\n", tier("")));
    assert!(err.contains("price") && err.contains("routes"), "{err}");
    let err = error(&format!("{}[routes]\n\"/a\" = {{ cost = -2 }}\n", tier("")));
    assert!(err.contains("routes.\"/a\"") && err.contains("0 or more"), "{err}");
    // The settings serialize back to what was written (the short form stays short).
    let text = format!(
        "{}[routes]\n\"/a\" = 3\n\"POST /login\" = {{ cost = 1, charge = \"failures\" }}\n",
        tier("")
    );
    let settings = Config::from_toml(&text).unwrap().settings().clone();
    let json = serde_json::to_value(&settings).unwrap();
    assert_eq!(json["routes"]["/a"], 3);
    assert_eq!(json["routes"]["POST /login"], serde_json::json!({ "cost": 1, "charge": "failures" }));
}

#[test]
fn sliding_log_is_an_algorithm_with_a_burst_limit() {
    let config = Config::from_toml(&format!("algorithm = \"sliding_log\"\n{}", tier(""))).unwrap();
    assert_eq!(config.limits().default_tier().policies()[0].algorithm(), Algorithm::SlidingLog);
    let config = Config::from_toml(&tier("algorithm = \"sliding_log\"\nrequests_per_day = 10000")).unwrap();
    assert_eq!(config.limits().default_tier().policies()[1].algorithm(), Algorithm::SlidingLog);

    let big = "[tiers.anonymous]\nrequests_per_second = 100\nburst = 10001\nalgorithm = \"sliding_log\"\n";
    let err = error(big);
    assert!(err.contains("tiers.anonymous.burst") && err.contains("10000"), "{err}");
    let daily = tier("algorithm = \"sliding_log\"\nrequests_per_day = 20000");
    assert!(error(&daily).contains("tiers.anonymous.requests_per_day"));
    assert!(error("algorithm = \"exact\"\n[tiers.anonymous]\nrequests_per_second = 1\nburst = 1\n")
        .contains("algorithm"));
}

/// The counter keeps the window's full index next to its counts: a window too short for its
/// burst is refused up front rather than allowed to wrap.
#[test]
fn a_sliding_window_too_short_for_its_burst_is_refused() {
    let fast =
        "[tiers.anonymous]\nrequests_per_second = 1000000\nburst = 1000\nalgorithm = \"sliding_window\"\n";
    let err = error(fast);
    assert!(err.contains("tiers.anonymous.burst") && err.contains("full index"), "{err}");
    let ok =
        "[tiers.anonymous]\nrequests_per_second = 100000\nburst = 1000\nalgorithm = \"sliding_window\"\n";
    assert!(Config::from_toml(ok).is_ok());
}

/// The demo's configuration file has the login route of the contract.
#[test]
fn the_demo_config_charges_failed_logins_only() {
    let config = Config::load("config/ratelimit.toml").unwrap();
    let login = config.limits().routes().lookup(&http::Method::POST, "/login");
    assert_eq!((login.cost, login.charge), (1, ChargeOn::Failures));
}
