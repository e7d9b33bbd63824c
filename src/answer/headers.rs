use std::cell::RefCell;

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

pub(crate) static X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
pub(crate) static X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
pub(crate) static X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");
pub(crate) static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
pub(crate) static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");

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

/// A decimal number; the caller made room for [`MAX_DIGITS`] bytes.
fn number_in(buf: &mut BytesMut, n: u64) -> HeaderValue {
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

/// What a tier's headers always say, built once per limiter: each policy's
/// `X-RateLimit-Limit` value and structured-field name, and the tier's `RateLimit-Policy`.
#[derive(Debug, Clone)]
pub(crate) struct TierHeaders {
    limits: [Option<HeaderValue>; MAX_POLICIES],
    names: [Option<sfv::String>; MAX_POLICIES],
    policy: Option<HeaderValue>,
}

impl TierHeaders {
    fn new(tier: &Tier) -> Self {
        let mut limits: [Option<HeaderValue>; MAX_POLICIES] = Default::default();
        let mut names: [Option<sfv::String>; MAX_POLICIES] = Default::default();
        let mut list = ListSerializer::new();
        for (i, policy) in tier.policies().iter().enumerate().take(MAX_POLICIES) {
            let quota = policy.quota();
            let name = sf_name(policy.name());
            list.bare_item(&*name as &StringRef)
                .parameter(key("q"), integer(clamp(quota.burst())))
                .parameter(key("w"), integer(clamp(quota.window_secs())));
            limits[i] = Some(HeaderValue::from(quota.burst()));
            names[i] = Some(name);
        }
        let policy = list.finish().and_then(|text| HeaderValue::from_str(&text).ok());
        Self { limits, names, policy }
    }

    /// The tier's `RateLimit-Policy` value.
    #[cfg(test)]
    pub(crate) fn policy(&self) -> Option<&HeaderValue> {
        self.policy.as_ref()
    }

    fn name(&self, index: u8) -> Option<&sfv::String> {
        self.names.get(usize::from(index))?.as_ref()
    }
}

/// The constant header values of every tier of a [`Limits`], by tier index.
#[derive(Debug, Clone)]
pub(crate) struct Answers {
    tiers: Box<[TierHeaders]>,
}

impl Answers {
    pub(crate) fn new(limits: &Limits) -> Self {
        Self { tiers: limits.tiers().iter().map(TierHeaders::new).collect() }
    }

    /// The constants of `tier` (a tier of the limits these were built from).
    #[inline]
    pub(crate) fn of(&self, tier: &Tier) -> &TierHeaders {
        &self.tiers[tier.index()]
    }
}

fn clamp(n: u64) -> i64 {
    n.min(999_999_999_999_999) as i64
}

/// The rate-limit headers of one answer, ready to merge into a response.
#[derive(Debug, Clone, Default)]
pub(crate) struct RateLimitHeaders {
    limit: Option<HeaderValue>,
    remaining: Option<HeaderValue>,
    reset: Option<HeaderValue>,
    policy: Option<HeaderValue>,
    ratelimit: Option<HeaderValue>,
    retry_after: Option<HeaderValue>,
    degraded: Option<HeaderValue>,
}

pub(crate) static X_RATELIMIT_DEGRADED: HeaderName = HeaderName::from_static("x-ratelimit-degraded");

impl RateLimitHeaders {
    /// Marks the answer as degraded (`X-RateLimit-Degraded: cached` or `minimal`).
    pub(crate) fn degraded(&mut self, band: Band) {
        self.degraded = Some(HeaderValue::from_static(band.as_str()));
    }

    pub(crate) fn new(mode: HeaderMode, tier: &TierHeaders, decision: &Decision) -> Self {
        let mut out = Self::default();
        let legacy = mode.legacy().then(|| decision.headline());
        if let Some(headline) = &legacy {
            if let Some(Some(limit)) = tier.limits.get(usize::from(headline.index)) {
                out.limit = Some(limit.clone());
            }
        }
        if mode.ietf() {
            out.policy = tier.policy.clone();
        }
        let retry_after = decision.retry_after();
        if legacy.is_none() && !mode.ietf() && retry_after.is_none() {
            return out; // nothing to write
        }
        // One visit to the per-thread buffer for every value of this answer, with room made
        // for all of them first: a chunk is used up only between answers, when no value of
        // this answer holds on to it, so it can be reclaimed.
        let ratelimit_need = if mode.ietf() { ratelimit_room(tier, decision) } else { 0 };
        let need = 3 * MAX_DIGITS + ratelimit_need;
        SCRATCH.with_borrow_mut(|buf| {
            room(buf, need);
            if let Some(headline) = &legacy {
                out.remaining = Some(number_in(buf, headline.remaining));
                out.reset = Some(number_in(buf, decision.reset_epoch_secs(headline)));
            }
            if mode.ietf() {
                out.ratelimit = ratelimit_in(buf, tier, decision);
            }
            if let Some(wait) = retry_after {
                out.retry_after = Some(number_in(buf, retry_after_secs(wait)));
            }
        });
        out
    }

    /// Merges the headers into `headers`; a header the handler set itself is left alone.
    pub(crate) fn apply(self, headers: &mut HeaderMap) {
        let pairs = [
            (&X_RATELIMIT_LIMIT, self.limit),
            (&X_RATELIMIT_REMAINING, self.remaining),
            (&X_RATELIMIT_RESET, self.reset),
            (&RATELIMIT_POLICY, self.policy),
            (&RATELIMIT, self.ratelimit),
            (&RETRY_AFTER, self.retry_after),
            (&X_RATELIMIT_DEGRADED, self.degraded),
        ];
        // Grow the map at most once, and hash each name once (an entry, not a lookup and an
        // insert).
        let count = pairs.iter().filter(|(_, value)| value.is_some()).count();
        if count == 0 {
            return;
        }
        headers.reserve(count);
        for (name, value) in pairs {
            if let Some(value) = value {
                if let Entry::Vacant(slot) = headers.entry(name) {
                    slot.insert(value);
                }
            }
        }
    }
}

/// Whole seconds to announce in `Retry-After`: the exact wait rounded up, at least 1. Waiting
/// that long always suffices and never costs a full second more than needed.
pub(crate) fn retry_after_secs(wait: Nanos) -> u64 {
    wait.as_secs_ceil().max(1)
}

/// The most bytes [`ratelimit_in`] may write for this answer.
fn ratelimit_room(tier: &TierHeaders, decision: &Decision) -> usize {
    let names: usize =
        decision.policies().iter().filter_map(|state| tier.name(state.index)).map(|n| n.as_str().len()).sum();
    // Per item: quotes, an escape per character at most, ";r=", ";t=", ", " and two numbers.
    2 * names + decision.policies().len() * (2 + 8 + 2 * MAX_DIGITS)
}

thread_local! {
    /// Text the structured-field serializer writes into, reused by every answer of a thread.
    static SF_TEXT: RefCell<String> = RefCell::new(String::with_capacity(256));
}

/// `RateLimit` for one answer: one sf-list item per policy, `"name";r=R;t=T`, serialized by
/// `sfv` into a reused per-thread string, then copied into the per-thread buffer (the caller
/// made [`ratelimit_room`]), so no allocation happens in steady state.
fn ratelimit_in(buf: &mut BytesMut, tier: &TierHeaders, decision: &Decision) -> Option<HeaderValue> {
    let states = decision.policies();
    if states.is_empty() || states.iter().any(|s| tier.name(s.index).is_none()) {
        return None; // an empty sf-list (or a foreign decision) is no header at all
    }
    SF_TEXT.with_borrow_mut(|text| {
        text.clear();
        let mut list = ListSerializer::with_buffer(text);
        for state in states {
            let name = tier.name(state.index)?;
            list.bare_item(&**name as &StringRef)
                .parameter(key("r"), integer(clamp(state.remaining)))
                .parameter(key("t"), integer(clamp(state.next_after.as_secs_ceil())));
        }
        let text = list.finish()?;
        buf.extend_from_slice(text.as_bytes());
        Some(take(buf))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algorithm::Quota;
    use crate::policy::{Limits, TierSpec};
    use crate::store::{PolicyState, Verdict};
    use nonzero_ext::nonzero;

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
    fn constants(limits: &Limits, name: &str) -> TierHeaders {
        Answers::new(limits).of(limits.tier(name).unwrap()).clone()
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

    #[test]
    fn headers_describe_the_tightest_policy() {
        let tier = &constants(&free(), "free");
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
        let mut map = HeaderMap::new();
        RateLimitHeaders::new(HeaderMode::Both, tier, &decision).apply(&mut map);
        assert_eq!(map["x-ratelimit-limit"], "10");
        assert_eq!(map["x-ratelimit-remaining"], "3");
        // Reset: when the bucket is full again; t: when the next token is (rounded up).
        assert_eq!(map["x-ratelimit-reset"], "1700000007");
        assert_eq!(map["ratelimit"], "\"free\";r=3;t=1, \"free-daily\";r=9950;t=3");
        assert!(!map.contains_key("retry-after"));

        let mut map = HeaderMap::new();
        RateLimitHeaders::new(HeaderMode::Legacy, tier, &decision).apply(&mut map);
        assert!(!map.contains_key("ratelimit") && map.contains_key("x-ratelimit-limit"));
        let mut map = HeaderMap::new();
        RateLimitHeaders::new(HeaderMode::None, tier, &decision).apply(&mut map);
        assert!(map.is_empty());
    }

    #[test]
    fn handler_headers_win() {
        let tier = &constants(&free(), "free");
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

    /// The `RateLimit` value written through the reused buffers is byte for byte what a fresh sfv serializer makes, for
    /// names that need escaping and numbers at the clamp.
    #[test]
    fn ratelimit_matches_the_sfv_serializer() {
        let limits = Limits::builder()
            .tier("anonymous", TierSpec::new(Quota::per_minute(nonzero!(30u32)).allow_burst(nonzero!(5u32))))
            .tier(
                "we\"ird\\name",
                TierSpec::new(Quota::per_minute(nonzero!(60u32)).allow_burst(nonzero!(10u32))).daily(10_000),
            )
            .build()
            .unwrap();
        let answers = Answers::new(&limits);
        let reference = |tier: &Tier, decision: &Decision| {
            let mut list = ListSerializer::new();
            for state in decision.policies() {
                let policy = &tier.policies()[usize::from(state.index)];
                list.bare_item(&*sf_name(policy.name()) as &StringRef)
                    .parameter(key("r"), integer(clamp(state.remaining)))
                    .parameter(key("t"), integer(clamp(state.next_after.as_secs_ceil())));
            }
            list.finish()
        };
        for tier in limits.tiers() {
            for (remaining, next_after) in
                [(0, Nanos::ZERO), (3, Nanos::new(7_000_000_001)), (u64::MAX, Nanos::MAX)]
            {
                let mut decision = Decision::new(Verdict::Admitted, Nanos::ZERO, 1.0, 1);
                for index in 0..tier.policies().len() {
                    decision = decision.with(PolicyState {
                        index: index as u8,
                        limit: 10,
                        remaining,
                        reset_after: Nanos::MAX,
                        retry_after: Nanos::ZERO,
                        next_after,
                    });
                }
                let constants = answers.of(tier);
                let ours = SCRATCH
                    .with_borrow_mut(|buf| {
                        room(buf, ratelimit_room(constants, &decision));
                        ratelimit_in(buf, constants, &decision)
                    })
                    .unwrap();
                assert_eq!(ours.to_str().unwrap(), reference(tier, &decision).unwrap());
            }
        }
        let empty = Decision::new(Verdict::Admitted, Nanos::ZERO, 1.0, 1);
        let constants = answers.of(limits.default_tier());
        assert!(SCRATCH.with_borrow_mut(|buf| ratelimit_in(buf, constants, &empty)).is_none());
    }

    /// Once every value of a used-up chunk is dropped, the chunk is reused in place.
    #[test]
    fn a_used_up_chunk_is_reclaimed_when_its_values_are_gone() {
        let first = number(1);
        let base = first.as_bytes().as_ptr() as usize;
        drop(first);
        for i in 0..10 * CHUNK as u64 {
            let value = number(i);
            let at = value.as_bytes().as_ptr() as usize;
            assert!((base..base + CHUNK).contains(&at), "value {i} left the first chunk");
        }
    }

    #[test]
    fn buffer_slices_survive_new_chunks() {
        let values: Vec<HeaderValue> = (0..20_000u64).map(number).collect();
        for (i, v) in values.iter().enumerate() {
            assert_eq!(v.to_str().unwrap(), i.to_string());
        }
    }
}
