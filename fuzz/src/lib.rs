//! The checks behind tollgate's fuzz targets (issue 11, "Proving it against the unknown").
//!
//! Each `pub fn` takes the raw bytes a fuzzer made, turns them into one input boundary's
//! values with `arbitrary`, feeds them to the crate and asserts that boundary's invariants by
//! panicking. The targets under `fuzz_targets/` are one line each; the same functions replay
//! the committed corpus and every crash found so far on stable, in `tests/fuzz_corpus.rs`, so
//! what the fuzzers found stays fixed in every `cargo test`.
//!
//! | target | boundary | invariants beyond "no panic" |
//! | --- | --- | --- |
//! | `client_ip` | forwarding headers, peer address | the resolved IP is the peer's or appeared in the header the proxy writes; an untrusted peer is always itself |
//! | `api_key` | `X-API-Key` bytes, the allow list | a client is recognised exactly when the header is byte for byte a known key |
//! | `config` | a TOML file | a valid file builds a layer; an error never prints a whole API key |
//! | `client_headers` | a server's rate-limit headers, read by the client | every wait read is at most a day; the pacer never holds a host longer |
//! | `request` | whole requests through an axum app behind the layer | never a 5xx; honest headers; a cached replay is exactly the handler's answer to that very request (never another client's, another variant's, or a part) |

#![allow(missing_docs)]

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, SystemTime};

use arbitrary::{Arbitrary, Unstructured};
use http::{HeaderMap, HeaderName, HeaderValue, Request, StatusCode};
use ipnet::IpNet;
use tollgate::key::{ClientIp, ClientIpHeader, KeyExtractor};

/// One header line of an input: a name from `names` (or one made of the fuzzer's bytes) and a
/// value of raw bytes (lines that are not valid header values are dropped, as no HTTP server
/// would pass them on).
#[derive(Debug, Arbitrary)]
struct Line {
    name: u8,
    raw_name: Vec<u8>,
    value: Vec<u8>,
}

fn header_map(lines: &[Line], names: &[&'static str]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for line in lines {
        // Mostly the boundary's own headers; one value in `names.len() + 1` is a raw name.
        let index = usize::from(line.name) % (names.len() + 1);
        let name = match names.get(index) {
            Some(name) => HeaderName::from_static(name),
            None => match HeaderName::from_bytes(&line.raw_name) {
                Ok(name) => name,
                Err(_) => continue,
            },
        };
        if let Ok(value) = HeaderValue::from_bytes(&line.value) {
            headers.append(name, value);
        }
    }
    headers
}

#[derive(Debug, Arbitrary)]
enum Peer {
    /// Inside the trusted networks.
    Proxy(u8, u8),
    Proxy6(u16),
    Any(IpAddr),
}

impl Peer {
    fn ip(&self) -> IpAddr {
        match *self {
            Peer::Proxy(a, b) => IpAddr::V4(Ipv4Addr::new(10, a, b, 1)),
            Peer::Proxy6(a) => IpAddr::V6(Ipv6Addr::new(0xfd00, a, 0, 0, 0, 0, 0, 1)),
            Peer::Any(ip) => ip,
        }
    }
}

#[derive(Debug, Arbitrary)]
struct ClientIpInput {
    header: u8,
    extra_trusted: Option<(IpAddr, u8)>,
    ipv6_prefix: u8,
    peer: Peer,
    lines: Vec<Line>,
}

/// Every address written anywhere in `bytes`, as a reader that knows nothing of the header's
/// grammar would find it: each run between separators, as an address, an `address:port`, or
/// the address of an `[v6]:port`.
fn addresses_in(bytes: &[u8]) -> HashSet<IpAddr> {
    let mut found = HashSet::new();
    let separators = |b: &u8| matches!(b, b',' | b';' | b'=' | b'"' | b' ' | b'\t' | b'[' | b']');
    for token in bytes.split(separators) {
        let Ok(token) = std::str::from_utf8(token) else { continue };
        if let Ok(ip) = token.parse::<IpAddr>() {
            found.insert(ip.to_canonical());
        }
        if let Ok(addr) = token.parse::<SocketAddr>() {
            found.insert(addr.ip().to_canonical());
        }
    }
    // `[v6]:port` and `"[v6]"` as a whole, for good measure.
    for token in bytes.split(|b| matches!(b, b',' | b';' | b'=' | b'"' | b' ' | b'\t')) {
        let Ok(token) = std::str::from_utf8(token) else { continue };
        if let Ok(addr) = token.parse::<SocketAddr>() {
            found.insert(addr.ip().to_canonical());
        }
    }
    found
}

fn trusted_networks(extra: Option<(IpAddr, u8)>) -> Vec<IpNet> {
    let mut nets: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap(), "fd00::/8".parse().unwrap()];
    if let Some((ip, len)) = extra {
        let max = if ip.is_ipv4() { 32 } else { 128 };
        nets.extend(IpNet::new(ip, len % (max + 1)).ok());
    }
    nets
}

/// Client IP resolution from arbitrary forwarding headers: the resolved address is always the
/// peer's or one written in the header the proxy writes (never one from another header, never
/// made up), an untrusted peer is always itself, and extraction never panics.
pub fn client_ip(data: &[u8]) {
    let Ok(input) = ClientIpInput::arbitrary_take_rest(Unstructured::new(data)) else { return };
    let header = ClientIpHeader::ALL[usize::from(input.header) % 3];
    let nets = trusted_networks(input.extra_trusted);
    let resolver =
        ClientIp::new().trusted(nets.iter().copied()).header(header).ipv6_prefix(input.ipv6_prefix);
    let headers = header_map(&input.lines, &["x-forwarded-for", "forwarded", "x-real-ip"]);
    let peer = input.peer.ip();
    let resolved = resolver.resolve(peer, &headers);

    let peer = peer.to_canonical();
    let trusted = nets.iter().any(|n| n.contains(&peer));
    if !trusted {
        assert_eq!(resolved, peer, "an untrusted peer is the client, whatever it wrote");
    } else if resolved != peer {
        let written: HashSet<IpAddr> =
            headers.get_all(header.as_str()).iter().flat_map(|v| addresses_in(v.as_bytes())).collect();
        assert!(
            written.contains(&resolved),
            "{resolved} is neither the peer {peer} nor written in {header}: {headers:?}"
        );
    }

    // The same through the extractor, which also applies the IPv6 prefix.
    let mut req = Request::new(());
    *req.headers_mut() = headers;
    req.extensions_mut().insert(SocketAddr::new(input.peer.ip(), 443));
    let (parts, ()) = req.into_parts();
    let client = resolver.extract(&parts).expect("a request with a peer has a client");
    let key_ip = client.key().ip().expect("keyed by address");
    match (resolved, key_ip) {
        (IpAddr::V4(a), IpAddr::V4(b)) => assert_eq!(a, b),
        (IpAddr::V6(a), IpAddr::V6(b)) => {
            let bits = u32::from(input.ipv6_prefix.min(128));
            let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
            assert_eq!(u128::from(a) & mask, u128::from(b), "the /{bits} of the client");
        }
        other => panic!("the key changed family: {other:?}"),
    }
}

const KNOWN_KEYS: [(&str, &str); 3] = [("free-demo-key", "free"), ("pro-demo-key", "pro"), ("k", "free")];
const ALLOWED_KEY: &str = "internal-monitor-key";

#[derive(Debug, Arbitrary)]
struct ApiKeyInput {
    peer: Peer,
    lines: Vec<Line>,
}

fn api_key_config() -> tollgate::Config {
    tollgate::Config::from_toml(
        r#"
        trusted_proxies = ["10.0.0.0/8"]
        [tiers.anonymous]
        requests_per_minute = 30
        burst = 5
        [tiers.free]
        requests_per_minute = 60
        burst = 10
        [tiers.pro]
        requests_per_minute = 600
        burst = 100
        [api_keys]
        "free-demo-key" = "free"
        "pro-demo-key" = "pro"
        "k" = "free"
        [allow]
        keys = ["internal-monitor-key"]
        ips = ["198.51.100.0/24"]
        "#,
    )
    .expect("the fuzz configuration is valid")
}

/// API key extraction from arbitrary header bytes: a client is recognised (and given its
/// tier) exactly when its `X-API-Key` is, byte for byte, a key of the table; anything else is
/// keyed by address. The allow list lets a request through exactly for an allowed key or
/// address.
pub fn api_key(data: &[u8]) {
    thread_local! {
        static CONFIG: tollgate::Config = api_key_config();
    }
    let Ok(input) = ApiKeyInput::arbitrary_take_rest(Unstructured::new(data)) else { return };
    let headers = header_map(&input.lines, &["x-api-key", "x-forwarded-for", "authorization"]);
    let mut req = Request::new(());
    *req.headers_mut() = headers;
    req.extensions_mut().insert(SocketAddr::new(input.peer.ip(), 443));
    let (parts, ()) = req.into_parts();
    let first = parts.headers.get("x-api-key").map(HeaderValue::as_bytes);
    CONFIG.with(|config| {
        let client = config.extractor().extract(&parts).expect("every request with a peer has a client");
        let known = first.and_then(|k| KNOWN_KEYS.iter().find(|(key, _)| key.as_bytes() == k));
        match known {
            Some((key, tier)) => {
                assert_eq!(client.key().name(), Some(*key));
                assert_eq!(client.tier(), Some(*tier));
            }
            None => {
                assert!(client.key().ip().is_some(), "an unknown key buys nothing: {:?}", client.key());
                assert_eq!(client.tier(), None);
            }
        }
        let ip = ClientIp::new().trusted(["10.0.0.0/8".parse().expect("a network")]).client_of(&parts);
        let by_ip = ip.is_some_and(|ip| matches!(ip, IpAddr::V4(v4) if v4.octets()[..3] == [198, 51, 100]));
        let by_key = first == Some(ALLOWED_KEY.as_bytes());
        assert_eq!(config.allow_list().allows(&parts), by_ip || by_key, "{parts:?}");
    });
}

/// Every string that stands for an API key in a configuration that parses as TOML: the keys
/// of `[api_keys]`, and the values of `[admin] keys` and `[allow] keys`.
fn secrets_of(text: &str) -> Vec<String> {
    use figment::providers::{Format, Toml};
    let figment = figment::Figment::from(Toml::string(text));
    let mut secrets = Vec::new();
    if let Ok(value) = figment.find_value("api_keys") {
        if let Some(dict) = value.as_dict() {
            secrets.extend(dict.keys().cloned());
        }
    }
    for path in ["admin.keys", "allow.keys"] {
        if let Ok(value) = figment.find_value(path) {
            match value.as_array() {
                Some(items) => secrets.extend(items.iter().filter_map(|v| v.as_str().map(str::to_owned))),
                None => secrets.extend(value.as_str().map(str::to_owned)),
            }
        }
    }
    secrets
}

/// Configuration loading from arbitrary TOML: never a panic; a valid configuration builds a
/// layer (with its memory store) and a reload; an error never prints a whole API key.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match tollgate::Config::from_toml(text) {
        Ok(config) => {
            let _ = config.extractor();
            let _ = config.allow_list();
            let _ = tollgate::Config::new(config.settings().clone());
            if config.settings().store.validate().is_ok() && !text.contains("redis") && !text.contains("smtp")
            {
                let _ = tollgate::RateLimitLayer::try_new(config);
            }
        }
        Err(error) => {
            let message = error.to_string();
            for secret in secrets_of(text) {
                // A secret that is also written elsewhere in the file (as a tier's name, say)
                // may be quoted from there, and one that is a word of the configuration's own
                // vocabulary (a field name an error lists) may be printed as that word: only a
                // key written once, long, and with a digit (as real keys are) is checked.
                let secretlike = secret.len() >= 12 && secret.bytes().any(|b| b.is_ascii_digit());
                if secretlike && text.matches(secret.as_str()).count() == 1 {
                    assert!(!message.contains(&secret), "{message} shows the API key {secret:?}");
                }
            }
        }
    }
}

#[derive(Debug, Arbitrary)]
struct ClientHeadersInput {
    status: u16,
    now_secs: u32,
    lines: Vec<Line>,
}

const RATE_LIMIT_HEADERS: [&str; 12] = [
    "retry-after",
    "ratelimit",
    "ratelimit-policy",
    "ratelimit-limit",
    "ratelimit-remaining",
    "ratelimit-reset",
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
    "x-ratelimit-used",
    "x-ratelimit-resource",
    "date",
];

/// The client side's parsing of `Retry-After`, `RateLimit`, `RateLimit-Policy` and
/// `X-RateLimit-*`: every wait read is at most [`RateLimitSignal::MAX_WAIT`], quotas are
/// bounded in number, and the pacer fed that answer never holds its host longer than a day.
///
/// [`RateLimitSignal::MAX_WAIT`]: tollgate::client::RateLimitSignal::MAX_WAIT
pub fn client_headers(data: &[u8]) {
    use tollgate::client::{Classifier, DefaultClassifier, Pacer, RateLimitSignal};

    let Ok(input) = ClientHeadersInput::arbitrary_take_rest(Unstructured::new(data)) else { return };
    let Ok(status) = StatusCode::from_u16(100 + input.status % 500) else { return };
    let headers = header_map(&input.lines, &RATE_LIMIT_HEADERS);
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(u64::from(input.now_secs));
    let signal = RateLimitSignal::parse(status, &headers, now);

    let max = RateLimitSignal::MAX_WAIT;
    assert!(signal.retry_after().is_none_or(|w| w <= max), "{signal:?}");
    assert!(signal.reset_wait().is_none_or(|w| w <= max), "{signal:?}");
    assert!(signal.wait().is_none_or(|w| w <= max), "{signal:?}");
    assert!(signal.quotas().len() <= RateLimitSignal::MAX_QUOTAS);
    for quota in signal.quotas() {
        assert!(quota.reset() <= max, "{quota:?}");
        assert!(quota.get_window().is_none_or(|w| w <= max), "{quota:?}");
        assert!(quota.interval().is_none_or(|i| i <= max), "{quota:?}");
    }
    let _ = DefaultClassifier.classify(&signal, &headers);

    runtime().block_on(async {
        let pacer = Pacer::new();
        let permit = pacer.acquire("api.test:443").await.expect("the first request goes at once");
        permit.answer(&signal, signal.wait());
        let delay = pacer.delay("api.test:443");
        assert!(delay <= max, "the pacer holds the host for {delay:?} after {signal:?}");
    });
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread().enable_time().build().expect("a runtime")
    })
}

#[path = "request.rs"]
mod request;
pub use request::{request, REPLAYS_CHECKED};
