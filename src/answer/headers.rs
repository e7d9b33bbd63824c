use std::cell::RefCell;
use std::num::NonZeroU64;
use std::sync::{Mutex, PoisonError};

use bytes::BytesMut;
use http::header::{Entry, HeaderName, RETRY_AFTER};
use http::{HeaderMap, HeaderValue};
use serde::{Deserialize, Serialize};
use sfv::{integer, KeyRef, ListSerializer, StringRef};

use crate::clock::Nanos;
use crate::degrade::Band;
use crate::policy::{Limits, Tier, MAX_POLICIES};
use crate::store::Decision;

/// Which rate-limit headers to send.
///
/// ```
/// use tollgate::answer::HeaderMode;
/// assert_eq!(HeaderMode::default(), HeaderMode::Both);
/// assert!(HeaderMode::Both.legacy() && HeaderMode::Both.ietf());
/// assert!(!HeaderMode::None.legacy() && !HeaderMode::None.ietf());
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HeaderMode {
    /// `X-RateLimit-Limit`, `X-RateLimit-Remaining`, `X-RateLimit-Reset`.
    Legacy,
    /// `RateLimit-Policy` and `RateLimit` (draft-ietf-httpapi-ratelimit-headers-10).
    Ietf,
    /// Both sets.
    #[default]
    Both,
    /// No rate-limit headers (`Retry-After` is still sent on a 429).
    None,
}

impl HeaderMode {
    /// True when the `X-RateLimit-*` headers are sent.
    pub fn legacy(self) -> bool {
        matches!(self, Self::Legacy | Self::Both)
    }

    /// True when the IETF draft headers are sent.
    pub fn ietf(self) -> bool {
        matches!(self, Self::Ietf | Self::Both)
    }
}

// Constants, not statics: each use is a fresh `HeaderName` pointing at static text, which the
// map takes by value (a `&HeaderName` would be cloned through its `Bytes` vtable per insert).
const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
const X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");
const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
const X_RATELIMIT_DEGRADED: HeaderName = HeaderName::from_static("x-ratelimit-degraded");

/// Size of each chunk of the per-thread header buffer.
const CHUNK: usize = 16 * 1024;

thread_local! {
    /// Header values are written here and sliced off, so a value costs no allocation of its own.
    static SCRATCH: RefCell<BytesMut> = RefCell::new(BytesMut::new());
}

/// Makes room for `need` more bytes in the per-thread buffer. When the chunk is used up, it is
/// reclaimed in place if every value sliced from it has been dropped (the usual case: responses
/// are written and freed long before 16 KiB of headers later), so a steady stream of requests
/// allocates nothing; only while older values are still alive is a fresh chunk allocated.
#[inline]
fn room(buf: &mut BytesMut, need: usize) {
    if buf.capacity() - buf.len() < need {
        // `reserve` reclaims the shared chunk when this handle is its last owner, and otherwise
        // allocates a new one of the same size.
        buf.reserve(CHUNK.max(need));
    }
}

/// A header value holding what was written to `buf` since the last value, sliced off.
#[inline]
fn take(buf: &mut BytesMut) -> HeaderValue {
    HeaderValue::from_maybe_shared(buf.split().freeze()).expect("header text is visible ASCII")
}

/// The longest decimal `u64`.
const MAX_DIGITS: usize = 20;

/// Numbers below this are header values of their own, in static memory.
const SMALL: u64 = 1_024;
/// `0123456789101112…1023`: the text of every number below [`SMALL`], one after the other.
static DIGITS: [u8; DIGITS_LEN] = digits();
const DIGITS_LEN: usize = 10 + 90 * 2 + 900 * 3 + (SMALL as usize - 1_000) * 4;
/// Every number below [`SMALL`] as a header value (slices of [`DIGITS`], checked when the
/// program is compiled): cloning one copies four words and touches no reference count.
static SMALL_VALUES: [HeaderValue; SMALL as usize] = small_values();

const fn digits() -> [u8; DIGITS_LEN] {
    let mut out = [0u8; DIGITS_LEN];
    let (mut n, mut at) = (0u64, 0usize);
    while n < SMALL {
        let width = width(n);
        let (mut i, mut rest) = (width, n);
        while i > 0 {
            i -= 1;
            out[at + i] = b'0' + (rest % 10) as u8;
            rest /= 10;
        }
        at += width;
        n += 1;
    }
    out
}

/// Digits of `n` (below [`SMALL`]).
const fn width(n: u64) -> usize {
    match n {
        0..=9 => 1,
        10..=99 => 2,
        100..=999 => 3,
        _ => 4,
    }
}

const fn small_values() -> [HeaderValue; SMALL as usize] {
    let mut out = [const { HeaderValue::from_static("") }; SMALL as usize];
    let (mut n, mut at) = (0usize, 0usize);
    while n < SMALL as usize {
        let width = width(n as u64);
        let (_, rest) = DIGITS.split_at(at);
        let (text, _) = rest.split_at(width);
        let Ok(text) = std::str::from_utf8(text) else { panic!("digits are ASCII") };
        // Const evaluation cannot run a destructor: the empty value replaced is forgotten.
        std::mem::forget(std::mem::replace(&mut out[n], HeaderValue::from_static(text)));
        at += width;
        n += 1;
    }
    out
}

/// `n` as a header value from [`SMALL_VALUES`], when it is small: no allocation, no buffer,
/// no check, and cloning or dropping it touches no reference count.
#[inline]
fn small(n: u64) -> Option<HeaderValue> {
    SMALL_VALUES.get(usize::try_from(n).ok()?).cloned()
}

/// `n` as a header value: from [`SMALL_VALUES`] when small, else written to `buf` (the caller made
/// room for [`MAX_DIGITS`] bytes).
#[inline]
fn number_in(buf: &mut BytesMut, n: u64) -> HeaderValue {
    if let Some(value) = small(n) {
        return value;
    }
    buf.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
    take(buf)
}

#[cfg(test)]
fn number(n: u64) -> HeaderValue {
    SCRATCH.with_borrow_mut(|buf| {
        room(buf, MAX_DIGITS);
        number_in(buf, n)
    })
}

/// An sfv string for a policy name; names are validated by the configuration, and anything
/// outside printable ASCII is replaced here for names made in code.
fn sf_name(name: &str) -> sfv::String {
    let clean: String = name.chars().map(|c| if (' '..='~').contains(&c) { c } else { '_' }).collect();
    sfv::String::from_string(clean).expect("printable ASCII is a valid sf-string")
}

fn key(name: &'static str) -> &'static KeyRef {
    KeyRef::constant(name)
}

/// A constant header value for the life of the process (see [`TierHeaders`]).
fn constant(text: String) -> HeaderValue {
    HeaderValue::from_static(Box::leak(text.into_boxed_str()))
}

/// What a tier's headers always say: each policy's `X-RateLimit-Limit` value and the start of
/// its `RateLimit` item, and the tier's `RateLimit-Policy`.
///
/// Built once per distinct tier and kept for the life of the process, in static memory: a
/// request clones its constant values without touching a reference count (as
/// `HeaderValue::from_static` values are cloned), and the headers travelling with a response
/// refer to them with a plain `&'static`. Tiers are interned by what their headers say, so
/// building the same limits again (another layer, a reload of an unchanged file) reuses them:
/// the memory kept grows only with the distinct tiers a process ever configures (a few hundred
/// bytes each), never with requests.
#[derive(Debug)]
pub(crate) struct TierHeaders {
    limits: [Option<HeaderValue>; MAX_POLICIES],
    /// `"name";r=`: the serialized name of each policy (an sf-string), and its `r` key.
    items: [Option<&'static str>; MAX_POLICIES],
    policy: Option<HeaderValue>,
}

/// The headers of a tier with no policies, and of answers that carry none.
static NO_HEADERS: TierHeaders = TierHeaders { limits: [None, None], items: [None, None], policy: None };

impl TierHeaders {
    /// The interned constants of `tier`.
    fn of(tier: &Tier) -> &'static Self {
        static KNOWN: Mutex<Vec<&'static TierHeaders>> = Mutex::new(Vec::new());
        let mut policy = ListSerializer::new();
        let mut limits: [Option<String>; MAX_POLICIES] = Default::default();
        let mut items: [Option<String>; MAX_POLICIES] = Default::default();
        for (i, p) in tier.policies().iter().enumerate().take(MAX_POLICIES) {
            let quota = p.quota();
            let name = sf_name(p.name());
            policy
                .bare_item(&*name as &StringRef)
                .parameter(key("q"), integer(clamp(quota.burst())))
                .parameter(key("w"), integer(clamp(quota.window_secs())));
            limits[i] = Some(quota.burst().to_string());
            let mut item = ListSerializer::new();
            item.bare_item(&*name as &StringRef);
            items[i] = item.finish().map(|quoted| quoted + ";r=");
        }
        let policy = policy.finish();
        let mut known = KNOWN.lock().unwrap_or_else(PoisonError::into_inner);
        let same = |t: &&&'static TierHeaders| {
            t.policy.as_ref().map(|v| v.as_bytes()) == policy.as_ref().map(|p| p.as_bytes())
                && t.limits
                    .iter()
                    .zip(&limits)
                    .all(|(a, b)| a.as_ref().map(|v| v.as_bytes()) == b.as_ref().map(|s| s.as_bytes()))
                && t.items.iter().zip(&items).all(|(a, b)| a.as_deref() == b.as_deref())
        };
        if let Some(found) = known.iter().find(same) {
            return found;
        }
        let interned: &'static TierHeaders = Box::leak(Box::new(TierHeaders {
            limits: limits.map(|text| text.map(constant)),
            items: items.map(|text| text.map(|t| &*Box::leak(t.into_boxed_str()))),
            policy: policy.map(constant),
        }));
        known.push(interned);
        interned
    }

    /// The tier's `RateLimit-Policy` value.
    #[cfg(test)]
    pub(crate) fn policy(&self) -> Option<&HeaderValue> {
        self.policy.as_ref()
    }

    fn item(&self, index: u8) -> Option<&'static str> {
        *self.items.get(usize::from(index))?
    }
}

/// The constant header values of every tier of a [`Limits`], by tier index.
#[derive(Debug, Clone)]
pub(crate) struct Answers {
    tiers: Box<[&'static TierHeaders]>,
}

impl Answers {
    pub(crate) fn new(limits: &Limits) -> Self {
        Self { tiers: limits.tiers().iter().map(TierHeaders::of).collect() }
    }

    /// The constants of `tier` (a tier of the limits these were built from).
    #[inline]
    pub(crate) fn of(&self, tier: &Tier) -> &'static TierHeaders {
        self.tiers[tier.index()]
    }
}

fn clamp(n: u64) -> i64 {
    n.min(999_999_999_999_999) as i64
}

/// One policy's `RateLimit` item: which policy, its remaining `r` and next-token `t`.
#[derive(Debug, Clone, Copy, Default)]
struct Item {
    index: u8,
    r: u64,
    t: u64,
}

/// The rate-limit headers of one answer: the numbers they say, not yet written. They travel
/// with the request to its response (a few dozen bytes, where the written values would take
/// hundreds) and are written straight into it by [`apply`](Self::apply).
#[derive(Debug, Clone, Copy)]
pub(crate) struct RateLimitHeaders {
    tier: &'static TierHeaders,
    legacy: bool,
    ietf: bool,
    /// The headline policy (`X-RateLimit-*`).
    headline: u8,
    /// `RateLimit` items (0 when the header is not sent).
    items: u8,
    degraded: Option<Band>,
    remaining: u64,
    /// Unix epoch seconds.
    reset: u64,
    /// Seconds (at least 1, so `None` costs no room).
    retry_after: Option<NonZeroU64>,
    item: [Item; MAX_POLICIES],
}

impl Default for RateLimitHeaders {
    /// No headers at all.
    fn default() -> Self {
        Self {
            tier: &NO_HEADERS,
            legacy: false,
            ietf: false,
            headline: 0,
            items: 0,
            degraded: None,
            remaining: 0,
            reset: 0,
            retry_after: None,
            item: [Item::default(); MAX_POLICIES],
        }
    }
}

impl RateLimitHeaders {
    /// Marks the answer as degraded (`X-RateLimit-Degraded: cached` or `minimal`).
    pub(crate) fn degraded(&mut self, band: Band) {
        self.degraded = Some(band);
    }

    pub(crate) fn new(mode: HeaderMode, tier: &'static TierHeaders, decision: &Decision) -> Self {
        let mut out = Self { tier, ..Self::default() };
        if mode.legacy() {
            let headline = decision.headline();
            out.legacy = true;
            out.headline = headline.index;
            out.remaining = headline.remaining;
            out.reset = decision.reset_epoch_secs(&headline);
        }
        if mode.ietf() {
            out.ietf = true;
            let states = decision.policies();
            // An empty sf-list (or a foreign decision) is no header at all.
            if !states.is_empty() && states.iter().all(|s| tier.item(s.index).is_some()) {
                for (item, state) in out.item.iter_mut().zip(states) {
                    *item =
                        Item { index: state.index, r: state.remaining, t: state.next_after.as_secs_ceil() };
                }
                out.items = states.len().min(MAX_POLICIES) as u8;
            }
        }
        out.retry_after = decision.retry_after().and_then(|wait| NonZeroU64::new(retry_after_secs(wait)));
        out
    }

    /// Writes the headers into `headers`; a header the handler set itself is left alone.
    pub(crate) fn apply(self, headers: &mut HeaderMap) {
        let limit = if self.legacy {
            self.tier.limits.get(usize::from(self.headline)).cloned().flatten()
        } else {
            None
        };
        let policy = if self.ietf { self.tier.policy.clone() } else { None };
        let count = usize::from(self.legacy) * 2
            + usize::from(limit.is_some())
            + usize::from(policy.is_some())
            + usize::from(self.items > 0)
            + usize::from(self.retry_after.is_some())
            + usize::from(self.degraded.is_some());
        if count == 0 {
            return;
        }
        // Grow the map at most once, and hash each name once (an entry, not a lookup and an
        // insert).
        headers.reserve(count);
        let mut put = |name: HeaderName, value: HeaderValue| {
            if let Entry::Vacant(slot) = headers.entry(name) {
                slot.insert(value);
            }
        };
        if let Some(limit) = limit {
            put(X_RATELIMIT_LIMIT, limit);
        }
        // One visit to the per-thread buffer for every value of this answer, with room made
        // for all of them first: a chunk is used up only between answers, when no value of
        // this answer holds on to it, so it can be reclaimed.
        SCRATCH.with_borrow_mut(|buf| {
            room(buf, self.room());
            if self.legacy {
                put(X_RATELIMIT_REMAINING, number_in(buf, self.remaining));
                put(X_RATELIMIT_RESET, number_in(buf, self.reset));
            }
            if let Some(policy) = policy {
                put(RATELIMIT_POLICY, policy);
            }
            if self.items > 0 {
                put(RATELIMIT, self.ratelimit_in(buf));
            }
            if let Some(wait) = self.retry_after {
                put(RETRY_AFTER, number_in(buf, wait.get()));
            }
        });
        if let Some(band) = self.degraded {
            put(X_RATELIMIT_DEGRADED, HeaderValue::from_static(band.as_str()));
        }
    }

    /// The most bytes [`apply`](Self::apply) writes to the buffer.
    fn room(&self) -> usize {
        let items: usize = self.item[..usize::from(self.items)]
            .iter()
            .map(|item| self.tier.item(item.index).map_or(0, str::len) + 5 + 2 * MAX_DIGITS)
            .sum();
        3 * MAX_DIGITS + items
    }

    /// `RateLimit`: one sf-list item per policy, `"name";r=R;t=T`. The names were serialized
    /// by `sfv` when the tier was built; the numbers are written here, exactly as sfv writes
    /// integers (a test holds this writer to sfv's serializer and parser).
    fn ratelimit_in(&self, buf: &mut BytesMut) -> HeaderValue {
        let mut digits = itoa::Buffer::new();
        for (i, item) in self.item[..usize::from(self.items)].iter().enumerate() {
            if i > 0 {
                buf.extend_from_slice(b", ");
            }
            buf.extend_from_slice(self.tier.item(item.index).unwrap_or_default().as_bytes());
            buf.extend_from_slice(digits.format(clamp(item.r)).as_bytes());
            buf.extend_from_slice(b";t=");
            buf.extend_from_slice(digits.format(clamp(item.t)).as_bytes());
        }
        take(buf)
    }
}

/// Whole seconds to announce in `Retry-After`: the exact wait rounded up, at least 1. Waiting
/// that long always suffices and never costs a full second more than needed.
pub(crate) fn retry_after_secs(wait: Nanos) -> u64 {
    wait.as_secs_ceil().max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algorithm::Quota;
    use crate::policy::{Limits, TierSpec};
    use crate::store::{PolicyState, Verdict};
    use nonzero_ext::nonzero;
    use proptest::prelude::*;

    fn free() -> Limits {
        Limits::builder()
            .tier("anonymous", TierSpec::new(Quota::per_minute(nonzero!(30u32)).allow_burst(nonzero!(5u32))))
            .tier(
                "free",
                TierSpec::new(Quota::per_minute(nonzero!(60u32)).allow_burst(nonzero!(10u32))).daily(10_000),
            )
            .build()
            .unwrap()
    }

    /// The constant headers of the tier `name`.
    fn constants(limits: &Limits, name: &str) -> &'static TierHeaders {
        Answers::new(limits).of(limits.tier(name).unwrap())
    }

    fn written(mode: HeaderMode, tier: &'static TierHeaders, decision: &Decision) -> HeaderMap {
        let mut map = HeaderMap::new();
        RateLimitHeaders::new(mode, tier, decision).apply(&mut map);
        map
    }

    #[test]
    fn policy_header_matches_the_contract_example() {
        let tier = constants(&free(), "free");
        assert_eq!(tier.policy().unwrap(), "\"free\";q=10;w=10, \"free-daily\";q=10000;w=86400");
    }

    /// `w` is exact for daily, hourly and per-minute policies whose emission interval had to be
    /// rounded (7 a day is not a whole number of nanoseconds per token): never 86401.
    #[test]
    fn policy_windows_are_exact_for_day_hour_and_minute() {
        let limits = Limits::builder()
            .tier("anonymous", TierSpec::new(Quota::per_minute(nonzero!(7u32))).daily(7))
            .tier("hourly", TierSpec::new(Quota::per_hour(nonzero!(7u32))))
            .build()
            .unwrap();
        assert_eq!(
            constants(&limits, "anonymous").policy().unwrap(),
            "\"anonymous\";q=7;w=60, \"anonymous-daily\";q=7;w=86400"
        );
        assert_eq!(constants(&limits, "hourly").policy().unwrap(), "\"hourly\";q=7;w=3600");
    }

    /// The same tier built twice (another layer, a reload) shares one set of constants; a tier
    /// whose headers differ gets its own.
    #[test]
    fn tier_constants_are_interned_by_what_they_say() {
        let a = constants(&free(), "free");
        let b = constants(&free(), "free");
        assert!(std::ptr::eq(a, b));
        let other = Limits::builder()
            .tier("free", TierSpec::new(Quota::per_minute(nonzero!(60u32)).allow_burst(nonzero!(11u32))))
            .default_tier("free")
            .build()
            .unwrap();
        assert!(!std::ptr::eq(a, constants(&other, "free")));
    }

    #[test]
    fn headers_describe_the_tightest_policy() {
        let tier = constants(&free(), "free");
        let now = Nanos::from_secs(1_700_000_000);
        let decision = Decision::new(Verdict::Admitted, now, 1.0, 1)
            .with(PolicyState {
                index: 0,
                limit: 10,
                remaining: 3,
                reset_after: Nanos::from_secs(7),
                retry_after: Nanos::ZERO,
                next_after: Nanos::from_millis(400),
            })
            .with(PolicyState {
                index: 1,
                limit: 10_000,
                remaining: 9_950,
                reset_after: Nanos::from_secs(41_000),
                retry_after: Nanos::ZERO,
                next_after: Nanos::from_millis(2_500),
            });
        let map = written(HeaderMode::Both, tier, &decision);
        assert_eq!(map["x-ratelimit-limit"], "10");
        assert_eq!(map["x-ratelimit-remaining"], "3");
        // Reset: when the bucket is full again; t: when the next token is (rounded up).
        assert_eq!(map["x-ratelimit-reset"], "1700000007");
        assert_eq!(map["ratelimit"], "\"free\";r=3;t=1, \"free-daily\";r=9950;t=3");
        assert_eq!(map["ratelimit-policy"], "\"free\";q=10;w=10, \"free-daily\";q=10000;w=86400");
        assert!(!map.contains_key("retry-after"));
        let names: Vec<&str> = map.keys().map(|n| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "x-ratelimit-limit",
                "x-ratelimit-remaining",
                "x-ratelimit-reset",
                "ratelimit-policy",
                "ratelimit"
            ]
        );

        let map = written(HeaderMode::Legacy, tier, &decision);
        assert!(!map.contains_key("ratelimit") && map.contains_key("x-ratelimit-limit"));
        assert_eq!(map.len(), 3);
        let map = written(HeaderMode::Ietf, tier, &decision);
        assert!(map.contains_key("ratelimit") && !map.contains_key("x-ratelimit-limit"));
        assert_eq!(map.len(), 2);
        assert!(written(HeaderMode::None, tier, &decision).is_empty());
    }

    #[test]
    fn a_rejection_carries_retry_after_and_a_degraded_answer_says_so() {
        let tier = constants(&free(), "free");
        let state = PolicyState {
            index: 0,
            limit: 10,
            remaining: 0,
            reset_after: Nanos::from_secs(10),
            retry_after: Nanos::from_millis(1_500),
            next_after: Nanos::from_millis(1_500),
        };
        let rejected = Decision::new(Verdict::Rejected, Nanos::ZERO, 0.0, 0).with(state);
        assert_eq!(written(HeaderMode::None, tier, &rejected)["retry-after"], "2");
        let admitted = Decision::new(Verdict::Admitted, Nanos::ZERO, 0.0, 1).with(state);
        let mut headers = RateLimitHeaders::new(HeaderMode::None, tier, &admitted);
        headers.degraded(Band::Minimal);
        let mut map = HeaderMap::new();
        headers.apply(&mut map);
        assert_eq!(map.len(), 1);
        assert_eq!(map["x-ratelimit-degraded"], "minimal");
        let mut map = HeaderMap::new();
        RateLimitHeaders::default().apply(&mut map);
        assert!(map.is_empty());
    }

    #[test]
    fn handler_headers_win() {
        let tier = constants(&free(), "free");
        let decision = Decision::new(Verdict::Admitted, Nanos::ZERO, 1.0, 1).with(PolicyState {
            index: 0,
            limit: 10,
            remaining: 3,
            reset_after: Nanos::ZERO,
            retry_after: Nanos::ZERO,
            next_after: Nanos::ZERO,
        });
        let mut map = HeaderMap::new();
        map.insert("x-ratelimit-remaining", HeaderValue::from_static("mine"));
        RateLimitHeaders::new(HeaderMode::Both, tier, &decision).apply(&mut map);
        assert_eq!(map["x-ratelimit-remaining"], "mine");
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_secs(Nanos::new(1)), 1);
        assert_eq!(retry_after_secs(Nanos::SECOND), 1);
        assert_eq!(retry_after_secs(Nanos::new(1_000_000_001)), 2);
        assert_eq!(retry_after_secs(Nanos::ZERO), 1);
    }

    /// Small numbers come from the static table, large ones from the buffer: the same text.
    #[test]
    fn numbers_are_their_decimal_text() {
        for n in (0..=12_000).chain([99_999, 1_700_000_000, u64::MAX]) {
            assert_eq!(number(n).to_str().unwrap(), n.to_string(), "{n}");
        }
        assert!(small(SMALL - 1).is_some() && small(SMALL).is_none());
    }

    /// Limits whose only tier, `name`, has two policies: `name` and `name-daily`.
    fn named(name: &str) -> Limits {
        Limits::builder()
            .tier(
                name,
                TierSpec::new(Quota::per_minute(nonzero!(60u32)).allow_burst(nonzero!(10u32))).daily(10_000),
            )
            .default_tier(name)
            .build()
            .unwrap()
    }

    /// `RateLimit` for a decision of every policy of `tier` with `(r, t)` each.
    fn ratelimit(limits: &Limits, values: &[(u64, Nanos)]) -> HeaderValue {
        let tier = &limits.tiers()[0];
        let mut decision = Decision::new(Verdict::Admitted, Nanos::ZERO, 1.0, 1);
        for (index, &(remaining, next_after)) in values.iter().enumerate().take(tier.policies().len()) {
            decision = decision.with(PolicyState {
                index: index as u8,
                limit: 10,
                remaining,
                reset_after: Nanos::MAX,
                retry_after: Nanos::ZERO,
                next_after,
            });
        }
        written(HeaderMode::Ietf, Answers::new(limits).of(tier), &decision)["ratelimit"].clone()
    }

    /// sfv, the reference: the same list serialized by its own serializer.
    fn reference(limits: &Limits, values: &[(u64, Nanos)]) -> String {
        let mut list = ListSerializer::new();
        for (policy, &(r, t)) in limits.tiers()[0].policies().iter().zip(values) {
            list.bare_item(&*sf_name(policy.name()) as &StringRef)
                .parameter(key("r"), integer(clamp(r)))
                .parameter(key("t"), integer(clamp(t.as_secs_ceil())));
        }
        list.finish().unwrap()
    }

    /// The hand-written `RateLimit` writer is byte for byte what sfv's serializer makes, for
    /// names that need escaping and numbers at the clamp.
    #[test]
    fn ratelimit_matches_the_sfv_serializer() {
        for name in ["free", "we\"ird\\name", "anonymous"] {
            let limits = named(name);
            for values in [
                [(0, Nanos::ZERO), (0, Nanos::ZERO)],
                [(3, Nanos::new(7_000_000_001)), (9_950, Nanos::from_secs(3))],
                [(u64::MAX, Nanos::MAX), (12_345, Nanos::new(1))],
            ] {
                assert_eq!(ratelimit(&limits, &values).to_str().unwrap(), reference(&limits, &values));
            }
        }
        // A decision with no policies has no `RateLimit` at all (an empty sf-list is no header).
        let empty = Decision::new(Verdict::Admitted, Nanos::ZERO, 1.0, 1);
        let limits = free();
        assert!(!written(HeaderMode::Both, constants(&limits, "free"), &empty).contains_key("ratelimit"));
    }

    proptest! {
        /// sfv as the oracle: whatever the names and numbers, the writer's `RateLimit` parses
        /// back through sfv's parser to exactly the items meant, and equals sfv's own output.
        #[test]
        fn ratelimit_parses_back_to_the_same_values(
            name in "[ -~]{1,24}",
            r0 in any::<u64>(),
            t0 in any::<u64>(),
            r1 in 0u64..100_000,
            t1 in 0u64..100_000_000_000,
        ) {
            let limits = named(&name);
            let values = [(r0, Nanos::new(t0)), (r1, Nanos::new(t1))];
            let written = ratelimit(&limits, &values);
            prop_assert_eq!(written.to_str().unwrap(), reference(&limits, &values));
            let parsed: sfv::List = sfv::Parser::new(written.as_bytes()).parse().unwrap();
            prop_assert_eq!(parsed.len(), 2);
            for ((entry, policy), (r, t)) in parsed.iter().zip(limits.tiers()[0].policies()).zip(values) {
                let sfv::ListEntry::Item(item) = entry else { panic!("an item, not an inner list") };
                // Printable names go through unchanged.
                prop_assert_eq!(item.bare_item.as_string().map(|s| s.as_str()), Some(policy.name()));
                prop_assert_eq!(item.params.len(), 2);
                let param = |k: &str| item.params.get(k).and_then(|v| v.as_integer()).map(i64::from);
                prop_assert_eq!(param("r"), Some(clamp(r)));
                prop_assert_eq!(param("t"), Some(clamp(t.as_secs_ceil())));
            }
        }
    }

    /// Once every value of a used-up chunk is dropped, the chunk is reused in place.
    #[test]
    fn a_used_up_chunk_is_reclaimed_when_its_values_are_gone() {
        let first = number(u64::MAX);
        let base = first.as_bytes().as_ptr() as usize;
        drop(first);
        for i in 0..10 * CHUNK as u64 {
            let value = number(SMALL + i);
            let at = value.as_bytes().as_ptr() as usize;
            assert!((base..base + CHUNK).contains(&at), "value {i} left the first chunk");
        }
    }

    #[test]
    fn buffer_slices_survive_new_chunks() {
        let values: Vec<HeaderValue> = (SMALL..SMALL + 20_000u64).map(number).collect();
        for (i, v) in values.iter().enumerate() {
            assert_eq!(v.to_str().unwrap(), (SMALL + i as u64).to_string());
        }
    }
}
