//! The readers behind [`RateLimitSignal::parse`]: one function per dialect, all pure.
//!
//! Structured fields (`RateLimit`, `RateLimit-Policy`, `RateLimit-Limit/-Remaining/-Reset`) are
//! parsed with `sfv`; `Retry-After` and `X-RateLimit-*` are plain numbers (or an HTTP-date),
//! read by hand under the limits stated on [`RateLimitSignal`].

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::{HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use sfv::{BareItem, ListEntry, Parameters, Parser};

use super::{Dialect, Quota, RateLimitSignal};

const MAX_WAIT: Duration = RateLimitSignal::MAX_WAIT;
const MAX_HEADER_LEN: usize = RateLimitSignal::MAX_HEADER_LEN;
const MAX_QUOTAS: usize = RateLimitSignal::MAX_QUOTAS;
/// The longest plain number (`Retry-After`, `X-RateLimit-*`) that is read.
const MAX_NUMBER_LEN: usize = 64;
/// Resets below this are delta-seconds; from here on, Unix seconds (September 2001).
const EPOCH_SECONDS_FROM: u64 = 1_000_000_000;
/// Resets from here on are Unix milliseconds (10¹² s would be the year 33658).
const EPOCH_MILLIS_FROM: u64 = 1_000_000_000_000;

static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
static RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
static RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
static RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");
/// `X-RateLimit-*`, then the `X-Rate-Limit-*` spelling: (limit, remaining, reset).
static X_RATELIMIT: [[HeaderName; 3]; 2] = [
    [
        HeaderName::from_static("x-ratelimit-limit"),
        HeaderName::from_static("x-ratelimit-remaining"),
        HeaderName::from_static("x-ratelimit-reset"),
    ],
    [
        HeaderName::from_static("x-rate-limit-limit"),
        HeaderName::from_static("x-rate-limit-remaining"),
        HeaderName::from_static("x-rate-limit-reset"),
    ],
];

/// `Retry-After`: delay-seconds or an HTTP-date (all three RFC 9110 forms, via `httpdate`).
pub(super) fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let text = single(headers, &RETRY_AFTER)?.to_str().ok()?.trim();
    if text.is_empty() || text.len() > MAX_NUMBER_LEN {
        return None;
    }
    if text.bytes().all(|b| b.is_ascii_digit()) {
        return Some(Duration::from_secs(saturating_digits(text.as_bytes())).min(MAX_WAIT));
    }
    let at = httpdate::parse_http_date(text).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO).min(MAX_WAIT))
}

/// The quotas of the first dialect that yields any.
pub(super) fn quotas(headers: &HeaderMap, now: SystemTime) -> Option<(Dialect, Vec<Quota>)> {
    let ratelimit = joined(headers, &RATELIMIT);
    let policies = || joined(headers, &RATELIMIT_POLICY).map(|bytes| policies(&bytes)).unwrap_or_default();
    if let Some(field) = &ratelimit {
        if let Ok(list) = Parser::new(field).parse::<sfv::List>() {
            let quotas = ietf(&list, &policies(), now);
            if !quotas.is_empty() {
                return Some((Dialect::Ietf, quotas));
            }
        } else if let Ok(dict) = Parser::new(field).parse::<sfv::Dictionary>() {
            if let Some(quota) = draft7(&dict, &policies(), now) {
                return Some((Dialect::Draft7, vec![quota]));
            }
        }
    }
    if let Some(quota) = draft6(headers, &policies(), now) {
        return Some((Dialect::Draft6, vec![quota]));
    }
    X_RATELIMIT
        .iter()
        .find_map(|names| x_ratelimit(headers, names, now))
        .map(|q| (Dialect::XRateLimit, vec![q]))
}

/// One `RateLimit-Policy` item: `"name";q=Q;w=W` (draft-08+) or `Q;w=W` (draft-06/07).
#[derive(Debug, PartialEq)]
struct Policy {
    name: Option<String>,
    quota: u64,
    window: Option<Duration>,
}

fn policies(field: &[u8]) -> Vec<Policy> {
    let Ok(list) = Parser::new(field).parse::<sfv::List>() else { return Vec::new() };
    list.iter()
        .filter_map(|entry| {
            let ListEntry::Item(item) = entry else { return None };
            let window = item.params.get("w").and_then(non_negative).map(|w| secs(w).min(MAX_WAIT));
            // Quota units other than requests (content-bytes, concurrent-requests) do not pace requests.
            if item.params.get("qu").is_some_and(|qu| name(qu) != Some("requests")) {
                return None;
            }
            match &item.bare_item {
                BareItem::Integer(quota) => {
                    Some(Policy { name: None, quota: u64::try_from(i64::from(*quota)).ok()?, window })
                }
                bare => {
                    let quota = non_negative(item.params.get("q")?)?;
                    Some(Policy { name: Some(name(bare)?.to_owned()), quota, window })
                }
            }
        })
        .take(MAX_QUOTAS)
        .collect()
}

fn ietf(list: &sfv::List, policies: &[Policy], now: SystemTime) -> Vec<Quota> {
    list.iter()
        .filter_map(|entry| {
            let ListEntry::Item(item) = entry else { return None };
            let name = name(&item.bare_item)?;
            let quota = quota(&item.params, "r", "t", now)?.named(name);
            let policy = policies.iter().find(|p| p.name.as_deref() == Some(name));
            Some(with_policy(quota, policy))
        })
        .take(MAX_QUOTAS)
        .collect()
}

fn draft7(dict: &sfv::Dictionary, policies: &[Policy], now: SystemTime) -> Option<Quota> {
    let member = |key: &str| match dict.get(key)? {
        ListEntry::Item(item) => non_negative(&item.bare_item),
        ListEntry::InnerList(_) => None,
    };
    let remaining = member("remaining")?;
    let reset = reset_after(member("reset")?, 0, now);
    let quota = Quota::new(remaining, reset);
    Some(unnamed_policy(quota, member("limit"), policies))
}

fn draft6(headers: &HeaderMap, policies: &[Policy], now: SystemTime) -> Option<Quota> {
    let remaining = sf_integer(headers, &RATELIMIT_REMAINING)?;
    let reset = reset_after(sf_integer(headers, &RATELIMIT_RESET)?, 0, now);
    // Early drafts carried the policy in the limit field too: `RateLimit-Limit: 5, 5;w=3`.
    let limit_items =
        joined(headers, &RATELIMIT_LIMIT).map(|bytes| self::policies(&bytes)).unwrap_or_default();
    let limit = limit_items.first().map(|p| p.quota);
    let policies = if policies.is_empty() { &limit_items[..] } else { policies };
    Some(unnamed_policy(Quota::new(remaining, reset), limit, policies))
}

fn x_ratelimit(
    headers: &HeaderMap,
    [limit, remaining, reset]: &[HeaderName; 3],
    now: SystemTime,
) -> Option<Quota> {
    let remaining = plain_integer(single(headers, remaining)?)?;
    let (whole, nanos) = plain_decimal(single(headers, reset)?)?;
    let quota = Quota::new(remaining, reset_after(whole, nanos, now));
    Some(match single(headers, limit).and_then(plain_integer) {
        Some(limit) => quota.limit(limit),
        None => quota,
    })
}

/// A quota from `remaining` and `reset` parameters.
fn quota(params: &Parameters, remaining: &str, reset: &str, now: SystemTime) -> Option<Quota> {
    let r = non_negative(params.get(remaining)?)?;
    let t = non_negative(params.get(reset)?)?;
    Some(Quota::new(r, reset_after(t, 0, now)))
}

fn with_policy(quota: Quota, policy: Option<&Policy>) -> Quota {
    let Some(policy) = policy else { return quota };
    let quota = quota.limit(policy.quota);
    match policy.window {
        Some(window) => quota.window(window),
        None => quota,
    }
}

/// Draft-06/07 policies have no names: the one with a window whose quota is the published
/// limit, else the first with a window, else the first.
fn unnamed_policy(quota: Quota, limit: Option<u64>, policies: &[Policy]) -> Quota {
    let windowed = || policies.iter().filter(|p| p.window.is_some());
    let policy = windowed()
        .find(|p| Some(p.quota) == limit)
        .or_else(|| windowed().next())
        .or_else(|| policies.first());
    let quota = with_policy(quota, policy);
    match limit {
        Some(limit) => quota.limit(limit),
        None => quota,
    }
}

/// The reset rule of [`RateLimitSignal`]: delta seconds, Unix seconds or Unix milliseconds by
/// size; a Unix time in the past is zero; capped at `MAX_WAIT`.
pub(super) fn reset_after(whole: u64, nanos: u32, now: SystemTime) -> Duration {
    let nanos = Duration::from_nanos(u64::from(nanos.min(999_999_999)));
    if whole < EPOCH_SECONDS_FROM {
        return (secs(whole) + nanos).min(MAX_WAIT);
    }
    let since_epoch = if whole < EPOCH_MILLIS_FROM {
        secs(whole).saturating_add(nanos)
    } else {
        Duration::from_millis(whole)
    };
    match UNIX_EPOCH.checked_add(since_epoch) {
        Some(at) => at.duration_since(now).unwrap_or(Duration::ZERO).min(MAX_WAIT),
        None => MAX_WAIT,
    }
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn name(item: &BareItem) -> Option<&str> {
    match item {
        BareItem::String(s) => Some(s.as_str()),
        BareItem::Token(t) => Some(t.as_str()),
        _ => None,
    }
}

fn non_negative(item: &BareItem) -> Option<u64> {
    u64::try_from(i64::from(item.as_integer()?)).ok()
}

/// A structured-field Item that is a non-negative Integer (parameters ignored).
fn sf_integer(headers: &HeaderMap, name: &HeaderName) -> Option<u64> {
    let value = single(headers, name)?;
    if value.len() > MAX_HEADER_LEN {
        return None;
    }
    let item = Parser::new(value.as_bytes()).parse::<sfv::Item>().ok()?;
    non_negative(&item.bare_item)
}

/// Every line of a field joined with ", " (RFC 9110 §5.3), or `None` when absent or too long.
fn joined(headers: &HeaderMap, name: &HeaderName) -> Option<Vec<u8>> {
    let mut joined: Vec<u8> = Vec::new();
    for value in headers.get_all(name) {
        if !joined.is_empty() {
            joined.extend_from_slice(b", ");
        }
        if joined.len() + value.len() > MAX_HEADER_LEN {
            return None;
        }
        joined.extend_from_slice(value.as_bytes());
    }
    (!joined.is_empty()).then_some(joined)
}

/// The field's only value; `None` when absent, or repeated with different values.
fn single<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a HeaderValue> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?;
    if values.any(|other| other != first) {
        return None;
    }
    Some(first)
}

/// ASCII digits to a number, saturating at `u64::MAX`.
fn saturating_digits(digits: &[u8]) -> u64 {
    digits.iter().fold(0u64, |n, d| n.saturating_mul(10).saturating_add(u64::from(d - b'0')))
}

/// A plain non-negative decimal integer, surrounding whitespace allowed; saturating.
fn plain_integer(value: &HeaderValue) -> Option<u64> {
    match plain_decimal(value)? {
        (whole, 0) => Some(whole),
        _ => None,
    }
}

/// `digits[.digits]`, surrounding whitespace allowed: (whole part saturating, nanoseconds).
fn plain_decimal(value: &HeaderValue) -> Option<(u64, u32)> {
    let text = value.to_str().ok()?.trim();
    if text.is_empty() || text.len() > MAX_NUMBER_LEN {
        return None;
    }
    let (whole, fraction) = match text.split_once('.') {
        Some((whole, fraction)) => (whole, Some(fraction)),
        None => (text, None),
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(whole) || fraction.is_some_and(|f| !digits(f)) {
        return None;
    }
    let nanos = fraction.map_or(0, |f| {
        let f = &f.as_bytes()[..f.len().min(9)];
        // At most nine digits: fits a u32 once scaled to nanoseconds.
        let scale = 10u64.pow(9 - f.len() as u32);
        u32::try_from(saturating_digits(f) * scale).unwrap_or(999_999_999)
    });
    Some((saturating_digits(whole.as_bytes()), nanos))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;

    const NOW_SECS: u64 = 1_700_000_000;

    fn now() -> SystemTime {
        UNIX_EPOCH + secs(NOW_SECS)
    }

    fn map(pairs: &[(&'static str, &[u8])]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(*name, HeaderValue::from_bytes(value).unwrap());
        }
        headers
    }

    fn parse(pairs: &[(&'static str, &[u8])]) -> RateLimitSignal {
        RateLimitSignal::parse(StatusCode::OK, &map(pairs), now())
    }

    fn ra(value: &[u8]) -> Option<Duration> {
        parse(&[("retry-after", value)]).retry_after()
    }

    fn q(remaining: u64, reset: u64) -> Quota {
        Quota::new(remaining, secs(reset))
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        assert_eq!(ra(b"0"), Some(Duration::ZERO));
        assert_eq!(ra(b" 42 "), Some(secs(42)));
        assert_eq!(ra(b"0003"), Some(secs(3)));
        let imf = httpdate::fmt_http_date(now() + secs(30));
        assert_eq!(ra(imf.as_bytes()), Some(secs(30)));
        // The obsolete RFC 850 and asctime forms (RFC 9110 §5.6.7); 1_700_000_030 is
        // Tue, 14 Nov 2023 22:13:50 GMT.
        assert_eq!(ra(b"Tuesday, 14-Nov-23 22:13:50 GMT"), Some(secs(30)));
        assert_eq!(ra(b"Tue Nov 14 22:13:50 2023"), Some(secs(30)));
        let past = httpdate::fmt_http_date(now() - secs(3600));
        assert_eq!(ra(past.as_bytes()), Some(Duration::ZERO));
    }

    #[test]
    fn retry_after_garbage_is_absent_and_huge_is_capped() {
        assert_eq!(parse(&[]).retry_after(), None);
        for value in [
            &b""[..],
            b"   ",
            b"-1",
            b"+5",
            b"1.5",
            b"1e3",
            b"0x10",
            b"soon",
            b"Wed, 21 Oct 2015 07:28:00 XYZ",
            b"Fri, 31 Feb 2023 00:00:00 GMT",
            b"\xff\xfe\xfd",
            "٣".as_bytes(), // a non-ASCII digit
        ] {
            assert_eq!(ra(value), None, "{:?}", String::from_utf8_lossy(value));
        }
        assert_eq!(ra(&[b'9'; 100_000]), None, "longer than any number");
        for value in [&b"86401"[..], b"18446744073709551616", b"99999999999999999999999999999999999999"] {
            assert_eq!(ra(value), Some(MAX_WAIT), "{:?}", String::from_utf8_lossy(value));
        }
        let far = httpdate::fmt_http_date(now() + MAX_WAIT + secs(60));
        assert_eq!(ra(far.as_bytes()), Some(MAX_WAIT));
        assert_eq!(ra(b"Fri, 31 Dec 9999 23:59:59 GMT"), Some(MAX_WAIT));
        // Two different values: which one is meant is unknowable.
        assert_eq!(parse(&[("retry-after", b"1"), ("retry-after", b"2")]).retry_after(), None);
        assert_eq!(parse(&[("retry-after", b"2"), ("retry-after", b"2")]).retry_after(), Some(secs(2)));
    }

    #[test]
    fn the_reset_rule() {
        let at = |whole, nanos| reset_after(whole, nanos, now());
        // Delta seconds below 10⁹, capped at a day.
        assert_eq!(at(0, 0), Duration::ZERO);
        assert_eq!(at(30, 0), secs(30));
        assert_eq!(at(2, 500_000_000), Duration::from_millis(2500));
        assert_eq!(at(999_999_999, 0), MAX_WAIT);
        // Unix seconds from 10⁹: in the past is now, in the future is the difference.
        assert_eq!(at(1_000_000_000, 0), Duration::ZERO);
        assert_eq!(at(NOW_SECS + 12, 0), secs(12));
        assert_eq!(at(NOW_SECS + 12, 250_000_000), Duration::from_millis(12_250));
        assert_eq!(at(NOW_SECS - 5, 0), Duration::ZERO);
        assert_eq!(at(4_102_444_800, 0), MAX_WAIT, "the year 2100");
        // Unix milliseconds from 10¹².
        assert_eq!(at(NOW_SECS * 1000 + 1500, 0), Duration::from_millis(1500));
        assert_eq!(at(NOW_SECS * 1000 - 1500, 0), Duration::ZERO);
        assert_eq!(at(u64::MAX, 999_999_999), MAX_WAIT);
        assert_eq!(at(u64::MAX, u32::MAX), MAX_WAIT);
    }

    #[test]
    fn ietf_string_and_token_names_with_policies() {
        let signal = parse(&[
            ("ratelimit", br#""free";r=3;t=7, "free-daily";r=9950;t=41000"#),
            ("ratelimit-policy", br#""free";q=10;w=10, "free-daily";q=10000;w=86400"#),
        ]);
        assert_eq!(signal.dialect(), Some(Dialect::Ietf));
        assert_eq!(
            signal.quotas(),
            [
                q(3, 7).named("free").limit(10).window(secs(10)),
                q(9950, 41_000).named("free-daily").limit(10_000).window(secs(86_400)),
            ]
        );
        assert_eq!(signal.quotas()[0].interval(), Some(secs(1)));
        assert_eq!(signal.quotas()[1].interval(), Some(Duration::from_nanos(8_640_000_000)));

        // Tokens, split over two lines, extra parameters, a policy without `w`.
        let signal = parse(&[
            ("ratelimit", b"burst;r=0;t=1;pk=:YWJj:"),
            ("ratelimit", b"day;r=99;t=3000"),
            ("ratelimit-policy", b"burst;q=5;w=3, day;q=100"),
        ]);
        assert_eq!(signal.dialect(), Some(Dialect::Ietf));
        assert_eq!(
            signal.quotas(),
            [q(0, 1).named("burst").limit(5).window(secs(3)), q(99, 3000).named("day").limit(100)]
        );
        assert_eq!(signal.quotas()[1].interval(), None);
        assert!(signal.is_exhausted());
        // A policy counted in bytes does not pace requests.
        let signal =
            parse(&[("ratelimit", b"b;r=0;t=1"), ("ratelimit-policy", b"b;q=5;w=3;qu=\"content-bytes\"")]);
        assert_eq!(signal.quotas(), [q(0, 1).named("b")]);
    }

    #[test]
    fn ietf_hostile_items_are_skipped() {
        for value in [
            &br#""a";r=-1;t=5"#[..],
            br#""a";r=1;t=-5"#,
            br#""a";r=1.5;t=5"#,
            br#""a";r="1";t=5"#,
            br#""a";r=1"#,
            br#""a";t=1"#,
            br#"1;r=1;t=5"#,
            br#""a";r=1;t=9999999999999999"#, // more than 15 digits: not an sf-integer
            br#"("a" "b");r=1;t=1"#,
            b"\"unterminated;r=1;t=1",
            b"\xc3\x28;r=1;t=1",
        ] {
            let signal = parse(&[("ratelimit", value)]);
            assert_eq!(signal.quotas(), [], "{:?}", String::from_utf8_lossy(value));
            assert_eq!(signal.dialect(), None);
        }
        // A sf-integer reset is capped, not dropped.
        assert_eq!(
            parse(&[("ratelimit", br#""a";r=1;t=999999999999999"#)]).quotas(),
            [q(1, 86_400).named("a")]
        );
        // One good item among bad ones still counts.
        assert_eq!(parse(&[("ratelimit", br#""a";r=-1;t=5, "b";r=2;t=4"#)]).quotas(), [q(2, 4).named("b")]);
        // A field over the length limit is not parsed at all.
        let mut huge = Vec::new();
        for i in 0..1000 {
            huge.extend_from_slice(format!("\"p{i}\";r=1;t=1, ").as_bytes());
        }
        huge.extend_from_slice(b"\"last\";r=1;t=1");
        assert_eq!(parse(&[("ratelimit", &huge)]).quotas(), []);
        // Many small items: only the first 16 are read.
        let many: Vec<u8> =
            (0..40).map(|i| format!("\"p{i}\";r=1;t=1")).collect::<Vec<_>>().join(", ").into_bytes();
        assert_eq!(parse(&[("ratelimit", &many)]).quotas().len(), MAX_QUOTAS);
    }

    #[test]
    fn draft7_combined_dictionary() {
        let signal =
            parse(&[("ratelimit", b"limit=5, remaining=3, reset=2"), ("ratelimit-policy", b"5;w=3")]);
        assert_eq!(signal.dialect(), Some(Dialect::Draft7));
        assert_eq!(signal.quotas(), [q(3, 2).limit(5).window(secs(3))]);
        assert_eq!(signal.quotas()[0].interval(), Some(Duration::from_millis(600)));
        // Without a policy, and with members in another order.
        assert_eq!(
            parse(&[("ratelimit", b"reset=60, remaining=0, limit=100")]).quotas(),
            [q(0, 60).limit(100)]
        );
        // The policy whose quota is the limit is chosen.
        let signal = parse(&[
            ("ratelimit", b"limit=100, remaining=1, reset=9"),
            ("ratelimit-policy", b"10;w=1, 100;w=60"),
        ]);
        assert_eq!(signal.quotas(), [q(1, 9).limit(100).window(secs(60))]);
        for value in [
            &b"limit=5, remaining=-1, reset=2"[..],
            b"limit=5, reset=2",
            b"remaining=1",
            b"remaining=(1 2), reset=1",
        ] {
            assert_eq!(parse(&[("ratelimit", value)]).quotas(), [], "{:?}", String::from_utf8_lossy(value));
        }
    }

    #[test]
    fn draft6_separate_fields() {
        let signal = parse(&[
            ("ratelimit-limit", b"5"),
            ("ratelimit-remaining", b"0"),
            ("ratelimit-reset", b"2"),
            ("ratelimit-policy", b"5;w=3"),
        ]);
        assert_eq!(signal.dialect(), Some(Dialect::Draft6));
        assert_eq!(signal.quotas(), [q(0, 2).limit(5).window(secs(3))]);
        // The policy inside the limit field, as early drafts had it.
        let signal = parse(&[
            ("ratelimit-limit", b"10, 10;w=60"),
            ("ratelimit-remaining", b"4"),
            ("ratelimit-reset", b"30"),
        ]);
        assert_eq!(signal.quotas(), [q(4, 30).limit(10).window(secs(60))]);
        // Remaining and reset are both needed; garbage is absent.
        assert_eq!(parse(&[("ratelimit-remaining", b"0")]).quotas(), []);
        assert_eq!(parse(&[("ratelimit-remaining", b"x"), ("ratelimit-reset", b"1")]).quotas(), []);
        assert_eq!(parse(&[("ratelimit-remaining", b"1"), ("ratelimit-reset", b"-1")]).quotas(), []);
        assert_eq!(parse(&[("ratelimit-remaining", b"1"), ("ratelimit-reset", b"1.5")]).quotas(), []);
        // A Unix time where a delta belongs is still understood.
        let signal = parse(&[("ratelimit-remaining", b"0"), ("ratelimit-reset", b"1700000009")]);
        assert_eq!(signal.quotas(), [q(0, 9)]);
    }

    #[test]
    fn x_ratelimit_github_and_others() {
        let signal = parse(&[
            ("x-ratelimit-limit", b"5000"),
            ("x-ratelimit-remaining", b"0"),
            ("x-ratelimit-used", b"5000"),
            ("x-ratelimit-reset", b"1700000042"),
            ("x-ratelimit-resource", b"core"),
        ]);
        assert_eq!(signal.dialect(), Some(Dialect::XRateLimit));
        assert_eq!(signal.quotas(), [q(0, 42).limit(5000)]);
        // Delta seconds, a fractional Unix time (Discord), Unix milliseconds, the other spelling.
        assert_eq!(
            parse(&[("x-ratelimit-remaining", b"4"), ("x-ratelimit-reset", b"30")]).quotas(),
            [q(4, 30)]
        );
        let frac = parse(&[("x-ratelimit-remaining", b"4"), ("x-ratelimit-reset", b"1700000001.250")]);
        assert_eq!(frac.quotas(), [Quota::new(4, Duration::from_millis(1250))]);
        let millis = parse(&[("x-ratelimit-remaining", b"4"), ("x-ratelimit-reset", b"1700000003000")]);
        assert_eq!(millis.quotas(), [q(4, 3)]);
        let twitter = parse(&[("x-rate-limit-remaining", b"0"), ("x-rate-limit-reset", b"1700000015")]);
        assert_eq!(twitter.quotas(), [q(0, 15)]);
        for (remaining, reset) in [
            (&b"-1"[..], &b"1700000010"[..]),
            (b"4", b"-1700000010"),
            (b"4", b"1e9"),
            (b"4.5", b"10"),
            (b"\xff", b"10"),
            (b"4", b"\xff"),
            (b"", b"10"),
            (b"4", b"."),
            (b"4", b"1."),
            (b"4", b".5"),
        ] {
            let signal = parse(&[("x-ratelimit-remaining", remaining), ("x-ratelimit-reset", reset)]);
            assert_eq!(signal.quotas(), [], "{remaining:?} {reset:?}");
        }
        // Saturating numbers and far resets are capped.
        let signal = parse(&[
            ("x-ratelimit-remaining", b"99999999999999999999999"),
            ("x-ratelimit-reset", b"4102444800"),
        ]);
        assert_eq!(signal.quotas(), [q(u64::MAX, 86_400)]);
        // Either header alone says nothing.
        assert_eq!(parse(&[("x-ratelimit-remaining", b"0")]).quotas(), []);
        assert_eq!(parse(&[("x-ratelimit-reset", b"10")]).quotas(), []);
    }

    #[test]
    fn dialects_are_preferred_in_order() {
        let legacy: [(&'static str, &[u8]); 2] =
            [("x-ratelimit-remaining", b"0"), ("x-ratelimit-reset", b"1700000050")];
        let with = |extra: &[(&'static str, &'static [u8])]| {
            let mut all = extra.to_vec();
            all.extend_from_slice(&legacy);
            parse(&all).dialect()
        };
        assert_eq!(with(&[("ratelimit", br#""free";r=3;t=7"#)]), Some(Dialect::Ietf));
        assert_eq!(with(&[("ratelimit", b"limit=5, remaining=3, reset=2")]), Some(Dialect::Draft7));
        assert_eq!(with(&[("ratelimit-remaining", b"3"), ("ratelimit-reset", b"2")]), Some(Dialect::Draft6));
        // A garbage RateLimit falls through to the next dialect.
        assert_eq!(with(&[("ratelimit", b"garbage;;;")]), Some(Dialect::XRateLimit));
        assert_eq!(with(&[]), Some(Dialect::XRateLimit));
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_waits_stay_bounded() {
        // A cheap, deterministic stand-in for the fuzz target: random bytes in every field.
        let names = [
            "retry-after",
            "ratelimit",
            "ratelimit-policy",
            "ratelimit-limit",
            "ratelimit-remaining",
            "ratelimit-reset",
            "x-ratelimit-limit",
            "x-ratelimit-remaining",
            "x-ratelimit-reset",
        ];
        let alphabet = b"0123456789 ;,=.:-\"()?*abcdefqrtw\xff\t";
        let mut rng = fastrand::Rng::with_seed(15);
        for _ in 0..20_000 {
            let mut headers = HeaderMap::new();
            for name in names {
                if rng.bool() {
                    let len = rng.usize(0..40);
                    let bytes: Vec<u8> = (0..len).map(|_| alphabet[rng.usize(..alphabet.len())]).collect();
                    if let Ok(value) = HeaderValue::from_bytes(&bytes) {
                        headers.append(name, value);
                    }
                }
            }
            let signal = RateLimitSignal::parse(StatusCode::TOO_MANY_REQUESTS, &headers, now());
            assert!(signal.quotas().len() <= MAX_QUOTAS);
            assert!(signal.retry_after().is_none_or(|d| d <= MAX_WAIT));
            for quota in signal.quotas() {
                assert!(quota.reset() <= MAX_WAIT && quota.get_window().is_none_or(|w| w <= MAX_WAIT));
            }
        }
    }
}
