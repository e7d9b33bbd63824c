#![allow(clippy::result_large_err)] // figment::Jail closures return figment::Error by design.

use figment::Jail;

use super::*;

const CONTRACT: &str = include_str!("../../config/ratelimit.toml");

fn load_err(jail: &mut Jail, text: &str) -> ConfigError {
    jail.create_file("bad.toml", text).unwrap();
    Config::load("bad.toml").unwrap_err()
}

#[test]
fn the_demo_file_loads() {
    let config = Config::from_toml(CONTRACT).unwrap();
    let limits = config.limits();
    assert_eq!(limits.default_tier().name(), "anonymous");
    assert_eq!(limits.tier("free").unwrap().policies().len(), 2);
    assert_eq!(limits.tier("free").unwrap().upgrade_url(), Some("https://example.com/pricing"));
    assert_eq!(limits.routes().lookup(&http::Method::POST, "/api/generate").cost, 20);
    assert!(limits.routes().lookup(&http::Method::GET, "/health").exempt);
    assert!(limits.routes().lookup(&http::Method::GET, "/api/search").degrade);
    assert_eq!(config.settings().store.backend, Backend::Memory);
}

#[test]
fn defaults_fill_everything_but_tiers() {
    let config = Config::from_toml("[tiers.anonymous]\nrequests_per_second = 2\nburst = 4\n").unwrap();
    assert_eq!(config.settings().algorithm, Algorithm::TokenBucket);
    assert_eq!(config.settings().headers, HeaderMode::Both);
    assert_eq!(config.settings().ipv6_prefix, 64);
    assert!(config.settings().trusted_proxies.is_empty() && config.settings().degrade.is_none());
    assert_eq!(config.settings().alerts.near_quota, 0.8);
    assert_eq!(
        (config.settings().store.backend, config.settings().store.on_error),
        (Backend::Memory, crate::store::OnError::Local)
    );
    assert!(Config::from_toml("algorithm = \"token_bucket\"\n").unwrap_err().to_string().contains("tiers"));
}

#[test]
fn environment_overrides_the_file() {
    Jail::expect_with(|jail| {
        jail.create_file("ok.toml", CONTRACT)?;
        jail.set_env("TOLLGATE_DEFAULT_TIER", "free");
        jail.set_env("TOLLGATE_STORE__PREFIX", "other");
        jail.set_env("TOLLGATE_TIERS__FREE__BURST", "20");
        let config = Config::load("ok.toml").unwrap();
        assert_eq!(config.settings().default_tier.as_deref(), Some("free"));
        assert_eq!(config.settings().store.prefix, "other");
        assert_eq!(config.settings().tiers["free"].burst, Some(20));
        jail.set_env("TOLLGATE_DEFAULT_TIER", "platinum");
        let err = Config::load("ok.toml").unwrap_err().to_string();
        assert!(err.contains("default_tier") && err.contains("platinum"), "{err}");
        assert!(err.contains("TOLLGATE_"), "names the variable: {err}");
        Ok(())
    });
}

#[test]
fn every_class_of_invalid_file_names_file_and_key() {
    Jail::expect_with(|jail| {
        let cases: &[(&str, &[&str])] = &[
            ("[tiers.anonymous]\nrequests_per_minute = 30\nburst = \n", &["bad.toml", "line 3"]),
            ("default_tier = \"gold\"\n[tiers.anonymous]\nrequests_per_minute = 30\nburst = 5\n", &["bad.toml", "default_tier", "gold"]),
            ("[tiers.anonymous]\nrequests_per_minute = 30\nburst = 5\n[api_keys]\n\"k\" = \"gold\"\n", &["bad.toml", "api_keys", "gold"]),
            ("[tiers.anonymous]\nrequests_per_minute = 0\nburst = 5\n", &["bad.toml", "tiers.anonymous.requests_per_minute"]),
            ("[tiers.anonymous]\nrequests_per_minute = -3\nburst = 5\n", &["bad.toml", "tiers.anonymous.requests_per_minute"]),
            ("[tiers.anonymous]\nrequests_per_minute = 30\nburst = 0\n", &["bad.toml", "tiers.anonymous.burst"]),
            ("[tiers.anonymous]\nrequests_per_minute = 30\nburst = -1\n", &["bad.toml", "tiers.anonymous.burst"]),
            ("algorithm = \"leaky\"\n[tiers.anonymous]\nrequests_per_minute = 30\nburst = 5\n", &["bad.toml", "algorithm", "leaky"]),
            ("[tiers.anonymous]\nrequests_per_minute = 30\nburst = 5\nalgorithm = \"nope\"\n", &["bad.toml", "tiers.anonymous.algorithm"]),
            ("[tiers.anonymous]\nrequests_per_minute = 30\nburst = 5\n[routes]\n\"/x\" = -2\n", &["bad.toml", "routes", "/x"]),
            ("[tiers.anonymous]\nrequests_per_minute = 30\nburst = 5\nburstt = 3\n", &["bad.toml", "tiers.anonymous", "burstt"]),
            ("colour = \"red\"\n[tiers.anonymous]\nrequests_per_minute = 30\nburst = 5\n", &["bad.toml", "colour"]),
            ("[tiers.anonymous]\nrequests_per_minute = 30\nburst = 5\n[store]\nbackend = \"etcd\"\n", &["bad.toml", "store.backend", "etcd"]),
            ("[tiers.anonymous]\nrequests_per_minute = 30\nburst = 5\n[store]\non_error = \"panic\"\n", &["bad.toml", "store.on_error"]),
            ("[tiers.free]\nrequests_per_minute = 30\nburst = 5\n", &["bad.toml", "default_tier", "anonymous"]),
            ("[tiers.anonymous]\nburst = 5\n", &["bad.toml", "tiers.anonymous", "rate"]),
            ("[tiers.anonymous]\nrequests_per_minute = 30\n", &["bad.toml", "tiers.anonymous.burst"]),
            ("[tiers.anonymous]\nrequests_per_minute = 30\nrequests_per_second = 1\nburst = 5\n", &["bad.toml", "tiers.anonymous.requests_per_minute", "one rate"]),
            ("[tiers.anonymous]\nrequests_per_minute = 30\nburst = 5\nrequests_per_day = 0\n", &["bad.toml", "tiers.anonymous.requests_per_day"]),
            ("[tiers.anonymous]\nrequests_per_minute = 30\nburst = 5\n[degrade]\ncached_below = 1.5\n", &["bad.toml", "degrade.cached_below"]),
            ("[tiers.anonymous]\nrequests_per_minute = 30\nburst = 5\n[alerts]\nnear_quota = 0\n", &["bad.toml", "alerts.near_quota"]),
            ("[tiers.anonymous]\nrequests_per_minute = 30\nburst = 5\n[routes]\n\"api\" = 2\n", &["bad.toml", "routes", "api"]),
            ("trusted_proxies = [\"10.0.0.0/33\"]\n[tiers.anonymous]\nrequests_per_minute = 30\nburst = 5\n", &["bad.toml", "trusted_proxies"]),
            ("[tiers.anonymous]\nrequests_per_minute = 30\nburst = 2000000\nalgorithm = \"sliding_window\"\n", &["bad.toml", "tiers.anonymous.burst"]),
        ];
        for (text, needles) in cases {
            let err = load_err(jail, text).to_string();
            for needle in *needles {
                assert!(err.contains(needle), "error for {text:?} should contain {needle:?}: {err}");
            }
        }
        let err = Config::load("missing.toml").unwrap_err().to_string();
        assert!(err.contains("missing.toml"), "{err}");
        Ok(())
    });
}

#[test]
fn rates_in_every_unit() {
    for (field, emission) in [
        ("requests_per_second", 500_000_000),
        ("requests_per_minute", 30_000_000_000),
        ("requests_per_hour", 1_800_000_000_000),
    ] {
        let config = Config::from_toml(&format!("[tiers.anonymous]\n{field} = 2\nburst = 3\n")).unwrap();
        let limits = config.limits();
        assert_eq!(limits.default_tier().policies()[0].quota().emission().as_nanos(), emission, "{field}");
    }
}

#[test]
fn a_config_survives_a_round_trip() {
    let config = Config::from_toml(CONTRACT).unwrap();
    let text = figment::providers::Serialized::defaults(config.settings());
    let back: Settings = figment::Figment::from(text).extract().unwrap();
    assert_eq!(Config::new(back).unwrap(), config);
}

#[test]
fn client_ip_header_names_the_one_header_the_proxy_writes() {
    let base = "[tiers.anonymous]\nrequests_per_second = 1\nburst = 1\n";
    let config = Config::from_toml(base).unwrap();
    assert_eq!(config.settings().client_ip_header, crate::key::ClientIpHeader::XForwardedFor);
    for (value, header) in [
        ("forwarded", crate::key::ClientIpHeader::Forwarded),
        ("X-Real-IP", crate::key::ClientIpHeader::XRealIp),
        ("x-forwarded-for", crate::key::ClientIpHeader::XForwardedFor),
    ] {
        let config = Config::from_toml(&format!("client_ip_header = \"{value}\"\n{base}")).unwrap();
        assert_eq!(config.settings().client_ip_header, header);
    }
    let err = Config::from_toml(&format!("client_ip_header = \"cf-connecting-ip\"\n{base}")).unwrap_err();
    assert_eq!(err.key(), Some("client_ip_header"), "{err}");
    assert!(err.to_string().contains("x-forwarded-for"), "{err}");
}

/// Issue 11, finding 9: a config error printed the whole API key (`api_keys."sk_live_…"`),
/// and so did figment's own errors (the path, a value given where keys belong, the source line
/// of a syntax error): errors land in logs.
#[test]
fn no_error_prints_a_whole_api_key() {
    const SECRET: &str = "sk_live_4f9a8b7c6d5e4f3a2b1c";
    let base = "[tiers.anonymous]\nrequests_per_minute = 30\nburst = 5\n";
    let cases = [
        format!("{base}[api_keys]\n\"{SECRET}\" = \"gold\"\n"),
        format!("{base}[api_keys]\n\"{SECRET}\" = {{ tier = \"anonymous\", email = \"nope\" }}\n"),
        format!("{base}[api_keys]\n\"{SECRET}\" = 5\n"),
        format!("{base}[api_keys]\n\"{SECRET}\" = {{ tier = \"anonymous\", colour = 1 }}\n"),
        format!("{base}[api_keys]\n\"{SECRET}\" = gold\n"),
        format!("{base}[api_keys]\n{SECRET} = \"anonymous\"\n\"x\" = \n"),
        format!("api_keys = \"{SECRET}\"\n{base}"),
        format!("{base}[admin]\nkeys = \"{SECRET}\"\n"),
        // Written outside `[api_keys]`: above its header, or under another table.
        format!("\"{SECRET}\" = \"anonymous\"\n{base}"),
        format!("{base}[routes]\n\"{SECRET}\" = \"anonymous\"\n"),
        format!("{base}[tiers.free]\nrequests_per_minute = 1\nburst = 1\n\"{SECRET}\" = \"free\"\n"),
    ];
    Jail::expect_with(|jail| {
        for text in &cases {
            let err = load_err(jail, text).to_string();
            assert!(!err.contains(SECRET) && !err.contains("4f9a8b7c"), "{err}");
            assert!(err.contains("bad.toml"), "{err}");
        }
        // Still says where: the key's prefix, or the line.
        let err = load_err(jail, &cases[0]).to_string();
        assert!(err.contains("api_keys.\"sk_l…\"") && err.contains("gold"), "{err}");
        let err = load_err(jail, &cases[4]).to_string();
        assert!(err.contains("line 5"), "{err}");
        Ok(())
    });
}
