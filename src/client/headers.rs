//! Pure functions that read what a server says about its limits.
//!
//! Everything here is a pure function of a [`HeaderMap`] and the current wall-clock time:
//! no I/O, no clock reads, no allocation beyond the returned value. The tower layer and the
//! reqwest middleware both use these, so a header is understood the same way by both.
//!
//! Hostile input never panics: a value that is not visible ASCII, not a number, negative,
//! too large for the integer type, longer than [`MAX_HEADER_LEN`] bytes, or that names a wait
//! longer than [`MAX_DELAY`] is treated as if the header were absent.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::{HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use sfv::{BareItem, ListEntry, Parser};

/// The longest wait any header may ask for: one year. Longer values are treated as absent.
///
/// ```
/// assert_eq!(tollgate::client::headers::MAX_DELAY.as_secs(), 365 * 24 * 60 * 60);
/// ```
pub const MAX_DELAY: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// The longest header value (in bytes, all lines of a field together) that is parsed at all.
///
/// ```
/// assert_eq!(tollgate::client::headers::MAX_HEADER_LEN, 4096);
/// ```
pub const MAX_HEADER_LEN: usize = 4096;

/// Most quota items read from one `RateLimit` field; further items are ignored.
const MAX_ITEMS: usize = 16;

/// Unix times below this (September 2001) in `X-RateLimit-Reset` are read as delta-seconds.
const EPOCH_THRESHOLD: u64 = 1_000_000_000;

static X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
static X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");
static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");

/// How long the server asks us to wait, from its `Retry-After` header (RFC 9110 §10.2.3).
///
/// Both forms are understood: delay-seconds (`Retry-After: 120`) and an HTTP-date
/// (`Retry-After: Wed, 21 Oct 2015 07:28:00 GMT`, parsed with the `httpdate` crate). A date in
/// the past means "now" (`Duration::ZERO`). Returns `None` when the header is absent, appears
/// more than once with different values, or is garbage (see the [module docs](self)).
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use http::{HeaderMap, HeaderValue, header::RETRY_AFTER};
/// use tollgate::client::headers::retry_after;
///
/// let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_470);
/// let mut headers = HeaderMap::new();
///
/// headers.insert(RETRY_AFTER, HeaderValue::from_static("7"));
/// assert_eq!(retry_after(&headers, now), Some(Duration::from_secs(7)));
///
/// // 2015-10-21 07:28:00 UTC is 1_445_412_480, ten seconds after `now`.
/// headers.insert(RETRY_AFTER, HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"));
/// assert_eq!(retry_after(&headers, now), Some(Duration::from_secs(10)));
///
/// headers.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
/// assert_eq!(retry_after(&headers, now), None);
/// ```
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = single(headers, &RETRY_AFTER)?;
    let text = value.to_str().ok()?.trim();
    if text.is_empty() || text.len() > 64 {
        return None;
    }
    let delay = if text.bytes().all(|b| b.is_ascii_digit()) {
        Duration::from_secs(text.parse::<u64>().ok()?)
    } else {
        let at = httpdate::parse_http_date(text).ok()?;
        at.duration_since(now).unwrap_or(Duration::ZERO)
    };
    (delay <= MAX_DELAY).then_some(delay)
}

/// One quota as the server describes it: how many requests remain and when it is restored.
///
/// Read from an item of the IETF `RateLimit` field (`r` and `t` parameters) or from the
/// `X-RateLimit-Remaining` / `X-RateLimit-Reset` pair. See [`quotas`].
///
/// ```
/// use std::time::Duration;
/// use tollgate::client::headers::Quota;
///
/// let quota = Quota::new(0, Duration::from_secs(7));
/// assert_eq!(quota.remaining(), 0);
/// assert_eq!(quota.reset(), Duration::from_secs(7));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quota {
    remaining: u64,
    reset: Duration,
    /// Time for one unit to come back (`w / q` of the matching `RateLimit-Policy` item), when
    /// the server publishes its policy.
    per_unit: Option<Duration>,
}

impl Quota {
    /// A quota with `remaining` requests left, restored `reset` from now.
    ///
    /// ```
    /// # use std::time::Duration;
    /// let q = tollgate::client::headers::Quota::new(3, Duration::from_secs(1));
    /// assert_eq!(q.remaining(), 3);
    /// ```
    pub fn new(remaining: u64, reset: Duration) -> Self {
        Self { remaining, reset, per_unit: None }
    }

    /// The same quota, known to give back one unit every `per_unit` (from `RateLimit-Policy`:
    /// `w` seconds to restore `q` units).
    ///
    /// ```
    /// # use std::time::Duration;
    /// use tollgate::client::headers::Quota;
    /// let q = Quota::new(0, Duration::from_secs(10)).per_unit(Duration::from_secs(1));
    /// assert_eq!(q.pace(2), Duration::from_secs(1));
    /// ```
    pub fn per_unit(mut self, per_unit: Duration) -> Self {
        self.per_unit = Some(per_unit);
        self
    }

    /// Requests left in this quota (`r`, `X-RateLimit-Remaining`).
    ///
    /// ```
    /// # use std::time::Duration;
    /// let q = tollgate::client::headers::Quota::new(5, Duration::ZERO);
    /// assert_eq!(q.remaining(), 5);
    /// ```
    pub fn remaining(&self) -> u64 {
        self.remaining
    }

    /// Time from now until the quota is restored (`t`, `X-RateLimit-Reset` minus now).
    ///
    /// ```
    /// # use std::time::Duration;
    /// let q = tollgate::client::headers::Quota::new(5, Duration::from_secs(9));
    /// assert_eq!(q.reset().as_secs(), 9);
    /// ```
    pub fn reset(&self) -> Duration {
        self.reset
    }

    /// How long to wait before the next request so as not to run out.
    ///
    /// - nothing remains: wait until the reset, or, when the server publishes how fast units
    ///   come back ([`per_unit`](Quota::per_unit)), only until the next one does;
    /// - fewer than `spread_below` remain: spread them evenly over the time to the reset (or to
    ///   the time those units take to come back, if shorter), so the next request waits
    ///   `reset / (remaining + 1)`;
    /// - otherwise: no wait.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tollgate::client::headers::Quota;
    ///
    /// let t = Duration::from_secs(6);
    /// assert_eq!(Quota::new(0, t).pace(2), t);
    /// assert_eq!(Quota::new(1, t).pace(2), Duration::from_secs(3));
    /// assert_eq!(Quota::new(2, t).pace(2), Duration::ZERO);
    /// ```
    pub fn pace(&self, spread_below: u64) -> Duration {
        // remaining + 1 cannot overflow here: remaining < spread_below <= u64::MAX, or 0.
        let slots = u32::try_from(self.remaining.saturating_add(1)).unwrap_or(u32::MAX);
        let horizon = match self.per_unit {
            Some(unit) => self.reset.min(unit.saturating_mul(slots)),
            None => self.reset,
        };
        if self.remaining == 0 {
            horizon
        } else if self.remaining < spread_below {
            horizon / slots
        } else {
            Duration::ZERO
        }
    }
}

/// Every quota the response describes.
///
/// The IETF `RateLimit` field (draft-ietf-httpapi-ratelimit-headers-10, a structured-field
/// list such as `"free";r=3;t=7, "free-daily";r=9950;t=41000`, parsed with `sfv`) is preferred:
/// each item with non-negative integer `r` and `t` parameters gives one quota. Only when it
/// yields nothing are `X-RateLimit-Remaining` and `X-RateLimit-Reset` read; the reset is Unix
/// epoch seconds, or delta-seconds when it is smaller than 10⁹ (some APIs send that). A reset
/// in the past counts as zero. Malformed fields and items are skipped (see the
/// [module docs](self)); at most 16 items are read.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use http::{HeaderMap, HeaderValue};
/// use tollgate::client::headers::{quotas, Quota};
///
/// let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
/// let mut headers = HeaderMap::new();
/// headers.insert("ratelimit", HeaderValue::from_static(r#""free";r=3;t=7, "free-daily";r=9950;t=41000"#));
/// assert_eq!(
///     quotas(&headers, now),
///     vec![Quota::new(3, Duration::from_secs(7)), Quota::new(9950, Duration::from_secs(41_000))],
/// );
///
/// let mut legacy = HeaderMap::new();
/// legacy.insert("x-ratelimit-remaining", HeaderValue::from_static("0"));
/// legacy.insert("x-ratelimit-reset", HeaderValue::from_static("1700000012"));
/// assert_eq!(quotas(&legacy, now), vec![Quota::new(0, Duration::from_secs(12))]);
/// ```
pub fn quotas(headers: &HeaderMap, now: SystemTime) -> Vec<Quota> {
    let ietf = ietf_quotas(headers);
    if !ietf.is_empty() {
        return ietf;
    }
    legacy_quota(headers, now).into_iter().collect()
}

fn ietf_quotas(headers: &HeaderMap) -> Vec<Quota> {
    // A structured-field list may be split over several lines; join them with ", ".
    let mut joined: Vec<u8> = Vec::new();
    for value in headers.get_all(&RATELIMIT) {
        if !joined.is_empty() {
            joined.extend_from_slice(b", ");
        }
        joined.extend_from_slice(value.as_bytes());
        if joined.len() > MAX_HEADER_LEN {
            return Vec::new();
        }
    }
    if joined.is_empty() {
        return Vec::new();
    }
    let Ok(list) = Parser::new(&joined).parse::<sfv::List>() else {
        return Vec::new();
    };
    let policies = policy_units(headers);
    list.iter()
        .filter_map(|entry| match entry {
            ListEntry::Item(item) => Some(item),
            ListEntry::InnerList(_) => None,
        })
        .filter_map(|item| {
            let params = &item.params;
            let remaining = non_negative(params.get("r")?)?;
            let reset = non_negative(params.get("t")?)?;
            let reset = Duration::from_secs(reset);
            let quota = (reset <= MAX_DELAY).then(|| Quota::new(remaining, reset))?;
            let unit = policies.iter().find(|(name, _)| Some(name.as_str()) == item_name(&item.bare_item));
            Some(match unit {
                Some((_, per_unit)) => quota.per_unit(*per_unit),
                None => quota,
            })
        })
        .take(MAX_ITEMS)
        .collect()
}

fn item_name(item: &BareItem) -> Option<&str> {
    match item {
        BareItem::String(s) => Some(s.as_str()),
        BareItem::Token(t) => Some(t.as_str()),
        _ => None,
    }
}

/// `RateLimit-Policy` items as (name, time for one unit to come back): `w / q`.
fn policy_units(headers: &HeaderMap) -> Vec<(String, Duration)> {
    let Some(value) = headers.get(&RATELIMIT_POLICY) else { return Vec::new() };
    if value.len() > MAX_HEADER_LEN {
        return Vec::new();
    }
    let Ok(list) = Parser::new(value.as_bytes()).parse::<sfv::List>() else { return Vec::new() };
    list.iter()
        .filter_map(|entry| match entry {
            ListEntry::Item(item) => {
                let name = item_name(&item.bare_item)?.to_owned();
                let q = non_negative(item.params.get("q")?)?;
                let w = non_negative(item.params.get("w")?)?;
                (q > 0 && w > 0 && w <= MAX_DELAY.as_secs())
                    .then(|| (name, Duration::from_secs(w) / u32::try_from(q).unwrap_or(u32::MAX)))
            }
            ListEntry::InnerList(_) => None,
        })
        .take(MAX_ITEMS)
        .collect()
}

fn non_negative(item: &BareItem) -> Option<u64> {
    let value = i64::from(item.as_integer()?);
    u64::try_from(value).ok()
}

fn legacy_quota(headers: &HeaderMap, now: SystemTime) -> Option<Quota> {
    let remaining = unsigned(single(headers, &X_RATELIMIT_REMAINING)?)?;
    let reset = unsigned(single(headers, &X_RATELIMIT_RESET)?)?;
    let reset = if reset < EPOCH_THRESHOLD {
        Duration::from_secs(reset)
    } else {
        let at = UNIX_EPOCH.checked_add(Duration::from_secs(reset))?;
        at.duration_since(now).unwrap_or(Duration::ZERO)
    };
    (reset <= MAX_DELAY).then_some(Quota::new(remaining, reset))
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

/// A plain non-negative decimal integer (surrounding whitespace allowed).
fn unsigned(value: &HeaderValue) -> Option<u64> {
    let text = value.to_str().ok()?.trim();
    if text.is_empty() || text.len() > 20 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_000)
    }

    fn map(pairs: &[(&'static str, &[u8])]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(*name, HeaderValue::from_bytes(value).unwrap());
        }
        headers
    }

    fn ra(value: &[u8]) -> Option<Duration> {
        retry_after(&map(&[("retry-after", value)]), now())
    }

    #[test]
    fn retry_after_seconds() {
        assert_eq!(ra(b"0"), Some(Duration::ZERO));
        assert_eq!(ra(b"1"), Some(Duration::from_secs(1)));
        assert_eq!(ra(b" 42 "), Some(Duration::from_secs(42)));
        assert_eq!(ra(b"0003"), Some(Duration::from_secs(3)));
    }

    #[test]
    fn retry_after_http_date_forms() {
        let at = now() + Duration::from_secs(30);
        let imf = httpdate::fmt_http_date(at);
        assert_eq!(ra(imf.as_bytes()), Some(Duration::from_secs(30)));
        // The obsolete RFC 850 and asctime forms are accepted too (RFC 9110 §5.6.7).
        // 1_700_000_030 is Tue, 14 Nov 2023 22:13:50 GMT.
        assert_eq!(ra(b"Tuesday, 14-Nov-23 22:13:50 GMT"), Some(Duration::from_secs(30)));
        assert_eq!(ra(b"Tue Nov 14 22:13:50 2023"), Some(Duration::from_secs(30)));
        // A date in the past means now.
        let past = httpdate::fmt_http_date(now() - Duration::from_secs(3600));
        assert_eq!(ra(past.as_bytes()), Some(Duration::ZERO));
    }

    #[test]
    fn retry_after_hostile_values_are_absent() {
        assert_eq!(retry_after(&HeaderMap::new(), now()), None);
        for value in [
            &b""[..],
            b"   ",
            b"-1",
            b"+5",
            b"1.5",
            b"1e3",
            b"0x10",
            b"soon",
            b"18446744073709551616", // u64::MAX + 1
            b"99999999999999999999999999999999999999",
            b"31536001", // one year and a second
            b"Wed, 21 Oct 2015 07:28:00 XYZ",
            b"Fri, 31 Feb 2023 00:00:00 GMT",
            b"\xff\xfe\xfd",
            "٣".as_bytes(), // a non-ASCII digit
        ] {
            assert_eq!(ra(value), None, "{:?}", String::from_utf8_lossy(value));
        }
        let huge = vec![b'9'; 100_000];
        assert_eq!(ra(&huge), None);
        let far = httpdate::fmt_http_date(now() + MAX_DELAY + Duration::from_secs(60));
        assert_eq!(ra(far.as_bytes()), None);
        // Two different values: which one is meant is unknowable.
        let two = map(&[("retry-after", b"1"), ("retry-after", b"2")]);
        assert_eq!(retry_after(&two, now()), None);
        let same = map(&[("retry-after", b"2"), ("retry-after", b"2")]);
        assert_eq!(retry_after(&same, now()), Some(Duration::from_secs(2)));
    }

    #[test]
    fn ietf_items_and_multiple_lines() {
        let headers =
            map(&[("ratelimit", br#""free";r=3;t=7"#), ("ratelimit", br#""free-daily";r=9950;t=41000"#)]);
        assert_eq!(
            quotas(&headers, now()),
            vec![Quota::new(3, Duration::from_secs(7)), Quota::new(9950, Duration::from_secs(41_000))]
        );
        // Token-named items (as in earlier drafts) and extra parameters are fine.
        let headers = map(&[("ratelimit", b"default;r=0;t=5;pk=:YWJj:")]);
        assert_eq!(quotas(&headers, now()), vec![Quota::new(0, Duration::from_secs(5))]);
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
            br#""a";r=1;t=999999999999999"#,
            br#""a";r=1;t=9999999999999999"#, // more than 15 digits: not an sf-integer
            br#"("a" "b");r=1;t=1"#,
            b"r=1, t=1",
            b"\"unterminated;r=1;t=1",
            b"\xc3\x28;r=1;t=1",
        ] {
            let headers = map(&[("ratelimit", value)]);
            assert_eq!(ietf_quotas(&headers), vec![], "{:?}", String::from_utf8_lossy(value));
        }
        // One good item among bad ones still counts.
        let headers = map(&[("ratelimit", br#""a";r=-1;t=5, "b";r=2;t=4"#)]);
        assert_eq!(ietf_quotas(&headers), vec![Quota::new(2, Duration::from_secs(4))]);
        // A huge field is not parsed at all.
        let mut huge = Vec::new();
        for i in 0..1000 {
            huge.extend_from_slice(format!("\"p{i}\";r=1;t=1, ").as_bytes());
        }
        huge.extend_from_slice(b"\"last\";r=1;t=1");
        assert_eq!(ietf_quotas(&map(&[("ratelimit", &huge)])), vec![]);
        // Many small items: only the first 16 are read.
        let many: Vec<u8> =
            (0..40).map(|i| format!("\"p{i}\";r=1;t=1")).collect::<Vec<_>>().join(", ").into_bytes();
        assert_eq!(ietf_quotas(&map(&[("ratelimit", &many)])).len(), MAX_ITEMS);
    }

    #[test]
    fn legacy_pair() {
        let q = |remaining: &'static [u8], reset: &'static [u8]| {
            quotas(&map(&[("x-ratelimit-remaining", remaining), ("x-ratelimit-reset", reset)]), now())
        };
        assert_eq!(q(b"4", b"1700000010"), vec![Quota::new(4, Duration::from_secs(10))]);
        assert_eq!(q(b"4", b"1699999990"), vec![Quota::new(4, Duration::ZERO)]);
        assert_eq!(q(b"0", b"30"), vec![Quota::new(0, Duration::from_secs(30))]);
        for (remaining, reset) in [
            (&b"-1"[..], &b"1700000010"[..]),
            (b"4", b"-1700000010"),
            (b"4", b"1700000010.5"),
            (b"4", b"99999999999999999999999"),
            (b"18446744073709551616", b"10"),
            (b"\xff", b"10"),
            (b"4", b"\xff"),
            (b"", b"10"),
            (b"4", b"4102444800"), // year 2100: more than a year away
        ] {
            assert_eq!(q(remaining, reset), vec![], "{remaining:?} {reset:?}");
        }
        // Either header alone says nothing.
        assert_eq!(quotas(&map(&[("x-ratelimit-remaining", b"0")]), now()), vec![]);
        assert_eq!(quotas(&map(&[("x-ratelimit-reset", b"10")]), now()), vec![]);
    }

    #[test]
    fn ietf_is_preferred_over_legacy() {
        let headers = map(&[
            ("ratelimit", br#""free";r=3;t=7"#),
            ("x-ratelimit-remaining", b"0"),
            ("x-ratelimit-reset", b"1700000050"),
        ]);
        assert_eq!(quotas(&headers, now()), vec![Quota::new(3, Duration::from_secs(7))]);
        // A garbage RateLimit falls back to the legacy pair.
        let headers = map(&[
            ("ratelimit", b"garbage;;;"),
            ("x-ratelimit-remaining", b"0"),
            ("x-ratelimit-reset", b"1700000050"),
        ]);
        assert_eq!(quotas(&headers, now()), vec![Quota::new(0, Duration::from_secs(50))]);
    }

    #[test]
    fn pace_rules() {
        let t = Duration::from_secs(10);
        assert_eq!(Quota::new(0, t).pace(0), t);
        assert_eq!(Quota::new(1, t).pace(0), Duration::ZERO);
        assert_eq!(Quota::new(1, t).pace(3), Duration::from_secs(5));
        assert_eq!(Quota::new(4, t).pace(5), Duration::from_secs(2));
        assert_eq!(Quota::new(u64::MAX - 1, t).pace(u64::MAX), t / u32::MAX);
    }
}

#[cfg(test)]
mod policy_tests {
    use super::*;

    #[test]
    fn a_published_policy_paces_by_the_unit_not_the_full_reset() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut headers = HeaderMap::new();
        headers
            .insert("ratelimit", HeaderValue::from_static(r#""free";r=0;t=10, "free-daily";r=9950;t=41000"#));
        headers.insert(
            "ratelimit-policy",
            HeaderValue::from_static(r#""free";q=10;w=10, "free-daily";q=10000;w=86400"#),
        );
        let found = quotas(&headers, now);
        assert_eq!(found[0].pace(2), Duration::from_secs(1), "one unit back every second");
        assert_eq!(found[0].reset(), Duration::from_secs(10));
        // One left: spread over the time two units take, not over the full reset.
        let one_left = Quota::new(1, Duration::from_secs(9)).per_unit(Duration::from_secs(1));
        assert_eq!(one_left.pace(2), Duration::from_secs(1));
        // A garbage policy is ignored: back to the reset.
        headers.insert("ratelimit-policy", HeaderValue::from_static("\"free\";q=0;w=10"));
        assert_eq!(quotas(&headers, now)[0].pace(2), Duration::from_secs(10));
    }
}
