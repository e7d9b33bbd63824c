//! What each client may do: tiers of policies, and what each route costs.
//!
//! A [`Tier`] has one or more [`Policy`]s (a burst policy, and optionally a daily quota). A
//! request is admitted only if every policy of its tier admits it; then each is charged, and a
//! rejection charges none. [`Routes`] gives each route its cost (by method and route template),
//! marks routes exempt, and opts routes into degradation.
//!
//! [`Limits`] holds all of them, validated: made in code with [`Limits::builder`], or compiled
//! from a [`Config`](crate::config::Config) (which depends on this module, never the other way
//! round). Nothing here knows HTTP beyond a request's method: the header values a policy is
//! shown as are built once per limiter by [`answer`](crate::answer).

mod builder;

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use http::Method;

pub use builder::{LimitsBuilder, LimitsError, MAX_DELAY};

use crate::algorithm::{Algorithm, Quota, Rule};
use crate::clock::Nanos;

/// The most policies one tier may have: its rate and, optionally, a daily quota. A store's
/// [`Decision`](crate::store::Decision) has room for exactly this many, so it stays small enough
/// to move cheaply on every request.
pub const MAX_POLICIES: usize = 2;

/// Whether a tier's limits bite: `mode` in the configuration, globally or per tier.
///
/// In [`Shadow`](Mode::Shadow) mode the limiter decides and charges exactly as it would when
/// enforcing (a request that would be refused is not charged), but always forwards the request
/// untouched and answers with the handler's own response: no 429 or 403, no degraded answer, no
/// rate-limit headers. Each request that would have been refused is counted and logged (see
/// [`Outcome::ShadowRejected`](crate::observe::Outcome::ShadowRejected)). A tier moves from one
/// mode to the other by a reload, with its clients' state intact.
///
/// ```
/// use nonzero_ext::nonzero;
/// use tollgate::algorithm::Quota;
/// use tollgate::policy::{Limits, Mode, TierSpec};
///
/// let limits = Limits::builder()
///     .mode(Mode::Shadow)
///     .tier("anonymous", TierSpec::new(Quota::per_second(nonzero!(1u32))))
///     .tier("pro", TierSpec::new(Quota::per_second(nonzero!(9u32))).mode(Mode::Enforce))
///     .build()
///     .unwrap();
/// assert_eq!(limits.default_tier().mode(), Mode::Shadow);
/// assert_eq!(limits.tier("pro").unwrap().mode(), Mode::Enforce);
/// assert_eq!(Mode::default(), Mode::Enforce);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Limits bite: 429, 403, degraded answers, rate-limit headers.
    #[default]
    Enforce,
    /// Limits are decided and charged, never enforced: a rehearsal.
    Shadow,
}

/// Who a policy's state belongs to in a store: see [`Policy::id`].
///
/// ```
/// use nonzero_ext::nonzero;
/// use tollgate::algorithm::Quota;
/// use tollgate::policy::{Limits, TierSpec};
///
/// let tier = || TierSpec::new(Quota::per_minute(nonzero!(60u32)).allow_burst(nonzero!(10u32)));
/// let a = Limits::builder().tier("anonymous", tier()).build().unwrap();
/// let b = Limits::builder().tier("anonymous", tier()).build().unwrap();
/// let id = |limits: &Limits| limits.default_tier().policies()[0].id();
/// assert_eq!(id(&a), id(&a.clone()), "clones share their state");
/// assert_ne!(id(&a), id(&b), "separately built limits never do");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PolicyId(u64);

impl PolicyId {
    /// The identity as a number (a hash: equal numbers, same identity).
    pub fn get(self) -> u64 {
        self.0
    }

    /// The identity of the policy `name` of the limits of `lineage`.
    fn new(lineage: u64, name: &str) -> Self {
        Self(foldhash::fast::FixedState::with_seed(0x746f_6c6c_6761_7465).hash_one((lineage, name)))
    }
}

/// Numbers the limits built in this process: each [`LimitsBuilder::build`] starts a lineage of
/// its own, which the limits a reload makes from them continue.
static LINEAGES: AtomicU64 = AtomicU64::new(1);

/// One limit of a tier: a name (used in `RateLimit` headers and store keys) and a rule.
///
/// ```
/// use nonzero_ext::nonzero;
/// use tollgate::algorithm::{Algorithm, Quota};
/// use tollgate::policy::Policy;
///
/// let p = Policy::new("free", Algorithm::TokenBucket, Quota::per_minute(nonzero!(60u32)).allow_burst(nonzero!(10u32)));
/// assert_eq!(p.name(), "free");
/// assert_eq!(p.quota().burst(), 10);
/// ```
#[derive(Debug, Clone)]
pub struct Policy {
    name: Arc<str>,
    rule: Rule,
    /// Index of this policy among all policies of a [`Limits`].
    uid: usize,
    /// Whose state this is: the limits' lineage and the policy's name.
    id: PolicyId,
    /// The generation of its limits in which this policy took its current rule: a store that
    /// keeps a state under an older version converts it (see [`Rule::carry`]).
    version: u32,
    /// The generation since which the limits have had a policy of this name without a break:
    /// a state older than that belongs to a policy that was gone, and is forgotten.
    since: u32,
    /// When the policy took its current rule (Unix epoch, the reloader's clock; zero for
    /// limits as built): a store that converts lazily converts as of then.
    changed_at: Nanos,
    /// When a reload last removed a policy of this name from its limits (Unix epoch, the
    /// reloader's clock; zero when none did): a store that keeps state by name (Redis) forgets
    /// a state written before then, so a policy added back starts full.
    gone_at: Nanos,
}

impl Policy {
    /// A policy named `name`.
    pub fn new(name: impl Into<Arc<str>>, algorithm: Algorithm, quota: Quota) -> Self {
        let name: Arc<str> = name.into();
        let id = PolicyId::new(0, &name);
        Self {
            name,
            rule: Rule::new(algorithm, quota),
            uid: 0,
            id,
            version: 0,
            since: 0,
            changed_at: Nanos::ZERO,
            gone_at: Nanos::ZERO,
        }
    }

    /// The policy's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The algorithm and quota.
    pub fn rule(&self) -> &Rule {
        &self.rule
    }

    /// The quota.
    pub fn quota(&self) -> Quota {
        self.rule.quota()
    }

    /// The algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.rule.algorithm()
    }

    /// This policy's number among all policies of its [`Limits`], from 0. A position, not an
    /// identity: stores key state by [`id`](Self::id).
    pub fn uid(&self) -> usize {
        self.uid
    }

    /// Whose state this is in a store: the same for clones of one [`Limits`] and for the
    /// policy of the same name in limits a reload made from them (whatever its rule became),
    /// and different for policies of limits built separately, whatever their names and rules.
    /// Two limiters sharing one store therefore never share a bucket, and a reload keeps each
    /// client's state.
    pub fn id(&self) -> PolicyId {
        self.id
    }

    /// The generation of its limits in which this policy took its current rule.
    pub(crate) fn version(&self) -> u32 {
        self.version
    }

    /// The generation since which its limits have had this policy without a break.
    pub(crate) fn since(&self) -> u32 {
        self.since
    }

    /// When the policy took its current rule (zero: as built).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))] // Read by the Redis store.
    pub(crate) fn changed_at(&self) -> Nanos {
        self.changed_at
    }

    /// When a reload last removed a policy of this name (zero: never).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))] // Read by the Redis store.
    pub(crate) fn gone_at(&self) -> Nanos {
        self.gone_at
    }
}

/// A class of clients and the policies they are held to.
#[derive(Debug, Clone)]
pub struct Tier {
    name: Arc<str>,
    index: usize,
    /// Shared, so that cloning a tier (to keep it past a request) allocates nothing.
    policies: Arc<[Policy]>,
    upgrade_url: Option<Arc<str>>,
    concurrency: Option<u32>,
    mode: Mode,
    max_delay: Nanos,
    /// The identity and version of every policy, hashed: equal for the same state under the
    /// same rules.
    state_id: u64,
}

impl Tier {
    /// The tier's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The tier's position in its [`Limits`].
    pub fn index(&self) -> usize {
        self.index
    }

    /// The policies, the burst policy first.
    pub fn policies(&self) -> &[Policy] {
        &self.policies
    }

    /// Where a client of this tier can get more.
    pub fn upgrade_url(&self) -> Option<&str> {
        self.upgrade_url.as_deref()
    }

    /// The most requests a client of this tier may have in flight at once.
    pub fn concurrency(&self) -> Option<u32> {
        self.concurrency
    }

    /// Whether the tier's limits bite.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// How long a request may be held waiting for its tokens instead of being refused (zero:
    /// refused at once). Tokens are reserved at most this far ahead, so at most `rate × delay`
    /// requests of one client wait at once.
    pub fn max_delay(&self) -> Nanos {
        self.max_delay
    }

    /// The smallest burst of the tier's policies: the largest cost it can ever admit.
    pub fn max_cost(&self) -> u64 {
        self.policies.iter().map(|p| p.quota().burst()).min().unwrap_or(0)
    }

    /// Whose state the tier's policies are and under which rules, as one hash: what a cache
    /// of decisions keys on (a new rule is a new entry).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))] // Read by the Redis over-limit cache.
    pub(crate) fn state_id(&self) -> u64 {
        self.state_id
    }

    fn identify(&mut self) {
        let ids: Vec<_> = self.policies.iter().map(|p| (p.id, p.version)).collect();
        self.state_id = foldhash::fast::FixedState::with_seed(0x7469_6572).hash_one(ids);
    }
}

/// A tier being defined in code; see [`Limits::builder`].
///
/// ```
/// use nonzero_ext::nonzero;
/// use tollgate::algorithm::Quota;
/// use tollgate::policy::TierSpec;
///
/// let free = TierSpec::new(Quota::per_minute(nonzero!(60u32)).allow_burst(nonzero!(10u32)))
///     .daily(10_000)
///     .upgrade_url("https://example.com/pricing");
/// # let _ = free;
/// ```
#[derive(Debug, Clone)]
pub struct TierSpec {
    pub(crate) quota: Quota,
    pub(crate) daily: Option<u64>,
    pub(crate) algorithm: Option<Algorithm>,
    pub(crate) upgrade_url: Option<String>,
    pub(crate) concurrency: Option<u32>,
    pub(crate) mode: Option<Mode>,
    pub(crate) max_delay: Nanos,
}

impl TierSpec {
    /// A tier held to `quota`.
    pub fn new(quota: Quota) -> Self {
        Self {
            quota,
            daily: None,
            algorithm: None,
            upgrade_url: None,
            concurrency: None,
            mode: None,
            max_delay: Nanos::ZERO,
        }
    }

    /// Puts this tier in `mode`, whatever the limits' default ([`LimitsBuilder::mode`]).
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = Some(mode);
        self
    }

    /// Holds a request that would be refused for up to `delay`, when its tokens arrive within
    /// it, instead of refusing it (`max_delay_ms`; needs an algorithm that can reserve ahead:
    /// the token bucket or the sliding log).
    ///
    /// The delay itself bounds what is held: a held request's tokens are reserved ahead (in
    /// arrival order, so the rate is never exceeded) and never more than `delay` ahead, so at
    /// most `rate × delay` tokens' worth of one client's requests wait at once, and nothing else
    /// refuses a request whose tokens arrive in time. A request whose wait would exceed `delay`
    /// is refused at once. Holding is a timer in the response future, never a blocked thread;
    /// a held request that is dropped (its client went away) gives its reservation back.
    ///
    /// ```
    /// use nonzero_ext::nonzero;
    /// use tollgate::algorithm::Quota;
    /// use tollgate::clock::Nanos;
    /// use tollgate::policy::{Limits, TierSpec};
    ///
    /// let batch = TierSpec::new(Quota::per_second(nonzero!(5u32)).allow_burst(nonzero!(2u32)))
    ///     .max_delay(Nanos::from_millis(1_000));
    /// let limits = Limits::builder().tier("anonymous", batch).build().unwrap();
    /// assert_eq!(limits.default_tier().max_delay(), Nanos::from_millis(1_000));
    /// ```
    pub fn max_delay(mut self, delay: impl Into<Nanos>) -> Self {
        self.max_delay = delay.into();
        self
    }

    /// Adds a daily quota of `requests`, refilled continuously over 24 hours.
    pub fn daily(mut self, requests: u64) -> Self {
        self.daily = Some(requests);
        self
    }

    /// Uses `algorithm` for this tier instead of the default.
    pub fn algorithm(mut self, algorithm: Algorithm) -> Self {
        self.algorithm = Some(algorithm);
        self
    }

    /// Shows `url` in 429 and 403 answers and on the dashboard.
    pub fn upgrade_url(mut self, url: impl Into<String>) -> Self {
        self.upgrade_url = Some(url.into());
        self
    }

    /// Caps the requests a client of this tier may have in flight at once.
    pub fn concurrency(mut self, in_flight: u32) -> Self {
        self.concurrency = Some(in_flight);
        self
    }
}

/// Which answers of a route keep their charge (`charge` in a `[routes]` table). The others are
/// refunded as soon as the response head is known, before the rate-limit headers are written.
///
/// ```
/// use tollgate::policy::ChargeOn;
/// use http::StatusCode;
///
/// assert_eq!(ChargeOn::default(), ChargeOn::All);
/// assert!(ChargeOn::Failures.keeps(StatusCode::UNAUTHORIZED));
/// assert!(!ChargeOn::Failures.keeps(StatusCode::OK));
/// assert!(ChargeOn::Successes.keeps(StatusCode::FOUND));
/// assert!(!ChargeOn::Successes.keeps(StatusCode::NOT_FOUND));
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChargeOn {
    /// Every answer keeps its charge.
    #[default]
    All,
    /// Only answers with a status of 400 or more keep it: a login route that counts failed
    /// attempts, so a user who types the right password is never locked out by successes.
    Failures,
    /// Only answers with a status below 400 keep it.
    Successes,
}

impl ChargeOn {
    /// True when an answer with `status` keeps its charge.
    pub fn keeps(self, status: http::StatusCode) -> bool {
        match self {
            Self::All => true,
            Self::Failures => status.as_u16() >= 400,
            Self::Successes => status.as_u16() < 400,
        }
    }
}

/// What a route costs, or that it is not limited at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteRule {
    /// Tokens charged per request; 0 charges nothing but still reports the standing.
    pub cost: u32,
    /// Which answers keep the charge (the others are refunded when the response head is
    /// known).
    pub charge: ChargeOn,
    /// Not limited at all: no charge, no headers.
    pub exempt: bool,
    /// Opted into degradation bands.
    pub degrade: bool,
    /// The most requests one client may have in flight on this route (0: no limit).
    pub concurrency: u32,
}

impl RouteRule {
    /// A limited route costing `cost`.
    pub const fn cost(cost: u32) -> Self {
        Self { cost, charge: ChargeOn::All, exempt: false, degrade: false, concurrency: 0 }
    }

    /// The same rule, charging only the answers `charge` keeps.
    pub const fn charged(mut self, charge: ChargeOn) -> Self {
        self.charge = charge;
        self
    }

    /// A route that is never limited.
    pub const EXEMPT: Self =
        Self { cost: 0, charge: ChargeOn::All, exempt: true, degrade: false, concurrency: 0 };
}

#[derive(Debug, Clone, Default)]
struct RouteEntry {
    /// Where the route's template is in [`Routes::paths`].
    id: u32,
    any: Option<RouteRule>,
    by_method: Vec<(Method, RouteRule)>,
}

/// The route table: cost, exemption and degradation by method and route template.
///
/// Routes are written as axum route templates (`/users/{id}`), optionally preceded by a
/// method: `"POST /api/generate"`. A method-specific entry wins over a path-only one; a route
/// in no entry costs the default (1).
///
/// ```
/// use tollgate::policy::{RouteRule, Routes};
/// use http::Method;
///
/// let mut routes = Routes::default();
/// routes.set("/api/search", RouteRule::cost(5)).unwrap();
/// routes.set("POST /api/generate", RouteRule::cost(20)).unwrap();
/// routes.set("/health", RouteRule::EXEMPT).unwrap();
/// assert_eq!(routes.lookup(&Method::GET, "/api/search").cost, 5);
/// assert_eq!(routes.lookup(&Method::GET, "/api/generate").cost, 1);
/// assert_eq!(routes.lookup(&Method::POST, "/api/generate").cost, 20);
/// assert!(routes.lookup(&Method::GET, "/health").exempt);
/// assert!(routes.set("nonsense", RouteRule::cost(1)).is_err());
/// ```
#[derive(Debug, Clone)]
pub struct Routes {
    table: HashMap<Box<str>, RouteEntry, foldhash::fast::RandomState>,
    /// Every template of the table, by [`RouteId`]: a request in flight names its route by
    /// its number (no shared string kept per request).
    paths: Vec<Box<str>>,
    default: RouteRule,
}

/// A route of a [`Routes`] table, by number: what [`Routes::path`] turns back into its template.
pub(crate) type RouteId = u32;

impl Default for Routes {
    fn default() -> Self {
        Self { table: HashMap::default(), paths: Vec::new(), default: RouteRule::cost(1) }
    }
}

/// A route written as neither `"/path"` nor `"METHOD /path"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRoute(pub String);

impl std::fmt::Display for BadRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "`{}` is not a route: write \"/path\" or \"METHOD /path\"", self.0)
    }
}

impl std::error::Error for BadRoute {}

impl Routes {
    /// Splits `"METHOD /path"` or `"/path"`.
    pub(crate) fn parse(route: &str) -> Result<(Option<Method>, &str), BadRoute> {
        let bad = || BadRoute(route.to_owned());
        let (method, path) = match route.trim().split_once(char::is_whitespace) {
            Some((method, path)) => {
                let method = Method::from_bytes(method.to_ascii_uppercase().as_bytes()).map_err(|_| bad())?;
                (Some(method), path.trim())
            }
            None => (None, route.trim()),
        };
        if !path.starts_with('/') {
            return Err(bad());
        }
        Ok((method, path))
    }

    /// Sets the rule of `route` (`"/path"` or `"METHOD /path"`), replacing any earlier one.
    pub fn set(&mut self, route: &str, rule: RouteRule) -> Result<(), BadRoute> {
        let (method, path) = Self::parse(route)?;
        let entry = self.entry(path);
        match method {
            None => entry.any = Some(rule),
            Some(method) => {
                entry.by_method.retain(|(m, _)| *m != method);
                entry.by_method.push((method, rule));
            }
        }
        Ok(())
    }

    /// Changes the rule of `route` in place (or of a new entry starting from the default).
    pub(crate) fn update(&mut self, route: &str, f: impl FnOnce(&mut RouteRule)) -> Result<(), BadRoute> {
        let (method, path) = Self::parse(route)?;
        let default = self.default;
        let entry = self.entry(path);
        let rule = match method {
            None => entry.any.get_or_insert(default),
            Some(method) => {
                if let Some(i) = entry.by_method.iter().position(|(m, _)| *m == method) {
                    &mut entry.by_method[i].1
                } else {
                    let base = entry.any.unwrap_or(default);
                    entry.by_method.push((method, base));
                    &mut entry.by_method.last_mut().expect("just pushed").1
                }
            }
        };
        f(rule);
        Ok(())
    }

    /// The rule for a request with `method` on the route template `path`.
    ///
    /// A `HEAD` request pays what a `GET` pays (axum answers `HEAD` with the `GET` handler):
    /// without a `HEAD` entry of its own, it takes the `GET` entry's rule: cost, concurrency
    /// and degradation.
    ///
    /// ```
    /// use tollgate::policy::{RouteRule, Routes};
    /// use http::Method;
    ///
    /// let mut routes = Routes::default();
    /// routes.set("GET /export", RouteRule::cost(50)).unwrap();
    /// assert_eq!(routes.lookup(&Method::HEAD, "/export").cost, 50);
    /// routes.set("HEAD /export", RouteRule::cost(2)).unwrap();
    /// assert_eq!(routes.lookup(&Method::HEAD, "/export").cost, 2);
    /// ```
    #[inline]
    pub fn lookup(&self, method: &Method, path: &str) -> RouteRule {
        self.resolve(method, path).0
    }

    /// The entry of `path`, made (with the next number) if the table has none.
    fn entry(&mut self, path: &str) -> &mut RouteEntry {
        let paths = &mut self.paths;
        self.table.entry(path.into()).or_insert_with(|| {
            paths.push(path.into());
            RouteEntry { id: (paths.len() - 1) as RouteId, ..RouteEntry::default() }
        })
    }

    /// The template of the route numbered `id` (see [`resolve`](Self::resolve)); empty for a
    /// number this table never gave.
    #[inline]
    pub(crate) fn path(&self, id: RouteId) -> &str {
        self.paths.get(id as usize).map_or("", |path| path)
    }

    /// [`lookup`](Self::lookup), and the number of `path` when it is a route of the table.
    #[inline]
    pub(crate) fn resolve(&self, method: &Method, path: &str) -> (RouteRule, Option<RouteId>) {
        let Some(entry) = self.table.get(path) else {
            return (self.default, None);
        };
        let by = |method: &Method| entry.by_method.iter().find(|(m, _)| m == method).map(|(_, rule)| *rule);
        let rule = by(method)
            .or_else(|| (*method == Method::HEAD).then(|| by(&Method::GET)).flatten())
            .or(entry.any)
            .unwrap_or(self.default);
        (rule, Some(entry.id))
    }

    /// Every entry as `(route, rule)`, routes written as in the configuration.
    pub fn entries(&self) -> impl Iterator<Item = (String, RouteRule)> + '_ {
        self.table.iter().flat_map(|(path, entry)| {
            let any = entry.any.map(|rule| (path.to_string(), rule));
            let methods = entry.by_method.iter().map(move |(m, rule)| (format!("{m} {path}"), *rule));
            any.into_iter().chain(methods)
        })
    }
}

/// Degradation bands: fractions of the burst remaining below which answers get cheaper.
///
/// ```
/// use tollgate::policy::Bands;
/// assert_eq!(Bands::default(), Bands { cached_below: 0.5, minimal_below: 0.1 });
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bands {
    /// Below this fraction, a cacheable request is answered from the caller's cached copy.
    pub cached_below: f64,
    /// Below this fraction, the handler is asked for a minimal answer.
    pub minimal_below: f64,
}

impl Default for Bands {
    fn default() -> Self {
        Self { cached_below: 0.5, minimal_below: 0.1 }
    }
}

/// Every tier and route: the validated, compiled form of a configuration.
///
/// Each `Limits` built is a lineage of its own: its policies' [`id`](Policy::id)s are unlike
/// those of any other limits, so limiters sharing a store never share state. Clones share it.
#[derive(Debug, Clone)]
pub struct Limits {
    pub(crate) tiers: Vec<Tier>,
    by_name: HashMap<Arc<str>, usize, foldhash::fast::RandomState>,
    pub(crate) default_tier: usize,
    pub(crate) routes: Routes,
    pub(crate) bands: Option<Bands>,
    policy_count: usize,
    lineage: u64,
    /// 0 when built; one more for each reload that continued the lineage.
    generation: u32,
    /// When a reload of the lineage last removed each policy name that was ever removed.
    gone: Arc<HashMap<Arc<str>, Nanos, foldhash::fast::RandomState>>,
}

impl Limits {
    /// Starts defining limits in code.
    ///
    /// ```
    /// use nonzero_ext::nonzero;
    /// use tollgate::algorithm::Quota;
    /// use tollgate::policy::{Limits, TierSpec};
    ///
    /// let limits = Limits::builder()
    ///     .tier("anonymous", TierSpec::new(Quota::per_minute(nonzero!(30u32)).allow_burst(nonzero!(5u32))))
    ///     .tier("pro", TierSpec::new(Quota::per_minute(nonzero!(600u32)).allow_burst(nonzero!(100u32))).daily(100_000))
    ///     .route("POST /api/generate", 20)
    ///     .exempt("/health")
    ///     .build()
    ///     .unwrap();
    /// assert_eq!(limits.tier("pro").unwrap().policies().len(), 2);
    /// assert_eq!(limits.default_tier().name(), "anonymous");
    /// ```
    pub fn builder() -> LimitsBuilder {
        LimitsBuilder::default()
    }

    /// Compiles tiers whose specs the builder validated.
    fn new(
        specs: Vec<(String, TierSpec, Vec<Quota>)>,
        default_algorithm: Algorithm,
        default_mode: Mode,
        default_tier: usize,
        routes: Routes,
        bands: Option<Bands>,
    ) -> Self {
        let lineage = LINEAGES.fetch_add(1, Ordering::Relaxed);
        let mut uid = 0;
        let mut tiers = Vec::with_capacity(specs.len());
        for (index, (name, spec, quotas)) in specs.into_iter().enumerate() {
            let algorithm = spec.algorithm.unwrap_or(default_algorithm);
            let mut policies = Vec::with_capacity(quotas.len());
            for (i, quota) in quotas.into_iter().enumerate() {
                let policy_name = if i == 0 { name.clone() } else { format!("{name}-daily") };
                let mut policy = Policy::new(policy_name, algorithm, quota);
                policy.uid = uid;
                policy.id = PolicyId::new(lineage, &policy.name);
                uid += 1;
                policies.push(policy);
            }
            let mut tier = Tier {
                name: name.into(),
                index,
                policies: policies.into(),
                upgrade_url: spec.upgrade_url.map(Into::into),
                concurrency: spec.concurrency,
                mode: spec.mode.unwrap_or(default_mode),
                max_delay: spec.max_delay,
                state_id: 0,
            };
            tier.identify();
            tiers.push(tier);
        }
        let by_name = tiers.iter().map(|t| (t.name.clone(), t.index)).collect::<HashMap<_, _, _>>();
        Self {
            tiers,
            by_name,
            default_tier,
            routes,
            bands,
            policy_count: uid,
            lineage,
            generation: 0,
            gone: Arc::default(),
        }
    }

    /// Makes these limits the successor of `previous` (a reload): they join its lineage, one
    /// generation on, so that every client's state carries over by policy name. A policy whose
    /// rule is unchanged keeps its version (its state is used as it is); a changed one takes
    /// this generation as its version (a store converts the state it meets, see
    /// [`Rule::carry`]); one that `previous` lacked starts afresh, with nothing carried.
    /// `at` is when they come into force (Unix epoch).
    pub(crate) fn continue_from(&mut self, previous: &Limits, at: Nanos) {
        let generation = previous.generation.wrapping_add(1);
        self.lineage = previous.lineage;
        self.generation = generation;
        let before: HashMap<&str, &Policy> =
            previous.tiers.iter().flat_map(|t| t.policies.iter()).map(|p| (p.name(), p)).collect();
        // The names these limits drop are gone as of now.
        let mut gone = (*previous.gone).clone();
        for name in before.keys() {
            if !self.tiers.iter().any(|t| t.policies.iter().any(|p| p.name() == *name)) {
                gone.insert(Arc::from(*name), at);
            }
        }
        for tier in &mut self.tiers {
            let mut policies = tier.policies.to_vec();
            for policy in &mut policies {
                policy.id = PolicyId::new(self.lineage, &policy.name);
                (policy.version, policy.since, policy.changed_at) = match before.get(policy.name()) {
                    Some(old) if old.rule == policy.rule => (old.version, old.since, old.changed_at),
                    Some(old) => (generation, old.since, at),
                    None => (generation, generation, at),
                };
                policy.gone_at = gone.get(policy.name()).copied().unwrap_or(Nanos::ZERO);
            }
            tier.policies = policies.into();
            tier.identify();
        }
        self.gone = Arc::new(gone);
    }

    /// The tier named `name`.
    #[inline]
    pub fn tier(&self, name: &str) -> Option<&Tier> {
        self.by_name.get(name).map(|&i| &self.tiers[i])
    }

    /// The tier of clients without a known tier.
    pub fn default_tier(&self) -> &Tier {
        &self.tiers[self.default_tier]
    }

    /// Every tier, in the order they were defined.
    pub fn tiers(&self) -> &[Tier] {
        &self.tiers
    }

    /// The route table.
    pub fn routes(&self) -> &Routes {
        &self.routes
    }

    /// The degradation bands, when degradation is on.
    pub fn bands(&self) -> Option<Bands> {
        self.bands
    }

    /// 0 for limits as built; one more for each reload that made these limits from the ones
    /// before ([`Reloader`](crate::layer::Reloader)).
    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// How many policies all tiers have together.
    pub fn policy_count(&self) -> usize {
        self.policy_count
    }
}

#[cfg(test)]
mod tests {
    use nonzero_ext::nonzero;

    use super::*;

    /// Issue 11, finding 3: `"GET /export" = 50` charged a HEAD 1, and a HEAD took no slot of
    /// the route's concurrency limit.
    #[test]
    fn head_pays_what_get_pays() {
        let mut routes = Routes::default();
        let export =
            RouteRule { cost: 50, charge: ChargeOn::All, exempt: false, degrade: true, concurrency: 1 };
        routes.set("GET /export", export).unwrap();
        routes.set("POST /export", RouteRule::cost(7)).unwrap();
        assert_eq!(routes.lookup(&Method::HEAD, "/export"), export);
        assert_eq!(routes.lookup(&Method::OPTIONS, "/export"), RouteRule::cost(1));
        // A path-only entry covers HEAD as it covers GET; a HEAD entry of its own wins.
        routes.set("/search", RouteRule::cost(5)).unwrap();
        assert_eq!(routes.lookup(&Method::HEAD, "/search").cost, 5);
        routes.set("HEAD /search", RouteRule::cost(1)).unwrap();
        assert_eq!(routes.lookup(&Method::HEAD, "/search").cost, 1);
        assert_eq!(routes.lookup(&Method::GET, "/search").cost, 5);
        assert_eq!(routes.resolve(&Method::HEAD, "/unknown"), (RouteRule::cost(1), None));
        let export = routes.resolve(&Method::DELETE, "/export").1.expect("a route of the table");
        assert_eq!(routes.path(export), "/export");
        assert_eq!(routes.path(routes.resolve(&Method::GET, "/search").1.unwrap()), "/search");
        assert_eq!(routes.path(99), "");
    }

    fn limits(burst: std::num::NonZeroU32, daily: Option<u64>, extra: bool) -> Limits {
        let mut spec = TierSpec::new(Quota::per_minute(nonzero!(60u32)).allow_burst(burst));
        if let Some(daily) = daily {
            spec = spec.daily(daily);
        }
        let mut builder = Limits::builder().tier("anonymous", spec);
        if extra {
            builder = builder.tier("pro", TierSpec::new(Quota::per_second(nonzero!(10u32))));
        }
        builder.build().unwrap()
    }

    fn versions(limits: &Limits) -> Vec<(String, PolicyId, u32, u32)> {
        let policies = limits.tiers().iter().flat_map(|t| t.policies().iter());
        policies.map(|p| (p.name().to_owned(), p.id(), p.version(), p.since())).collect()
    }

    #[test]
    fn a_reload_continues_the_lineage_by_policy_name() {
        let first = limits(nonzero!(5u32), Some(100), false);
        let mut second = limits(nonzero!(20u32), Some(100), true);
        let unrelated = versions(&second);
        second.continue_from(&first, Nanos::ZERO);
        let (a, b) = (versions(&first), versions(&second));
        // Same names, same ids; unrelated limits have other ids.
        assert_eq!((a[0].1, a[1].1), (b[0].1, b[1].1));
        assert_ne!(unrelated[0].1, b[0].1);
        // The changed rule takes generation 1; the daily one is unchanged; `pro` is new.
        assert_eq!((b[0].2, b[0].3), (1, 0), "anonymous: new rule, never gone");
        assert_eq!((b[1].2, b[1].3), (0, 0), "anonymous-daily: unchanged");
        assert_eq!((b[2].0.as_str(), b[2].2, b[2].3), ("pro", 1, 1));
        // The tier's state identity follows its rules.
        assert_ne!(first.default_tier().state_id(), second.default_tier().state_id());
        let mut third = limits(nonzero!(20u32), Some(100), true);
        third.continue_from(&second, Nanos::ZERO);
        assert_eq!(second.default_tier().state_id(), third.default_tier().state_id());
        // Gone, then back: it starts again.
        let mut gone = limits(nonzero!(20u32), None, true);
        gone.continue_from(&third, Nanos::from_secs(50));
        let mut back = limits(nonzero!(20u32), Some(100), true);
        back.continue_from(&gone, Nanos::from_secs(60));
        let daily = |l: &Limits| l.default_tier().policies()[1].gone_at();
        let mut later = limits(nonzero!(20u32), Some(100), true);
        later.continue_from(&back, Nanos::from_secs(70));
        // A store that keeps state by name (Redis) forgets what was written before the
        // removal, in the policy's next life and in every reload after it; a policy never
        // removed has nothing to forget.
        assert_eq!(
            (daily(&third), daily(&back), daily(&later)),
            (Nanos::ZERO, Nanos::from_secs(50), Nanos::from_secs(50))
        );
        assert_eq!(later.default_tier().policies()[0].gone_at(), Nanos::ZERO);
        let back = versions(&back);
        assert_eq!((back[1].0.as_str(), back[1].2, back[1].3), ("anonymous-daily", 4, 4));
    }

    #[test]
    fn a_tier_named_like_a_daily_policy_is_refused() {
        let err = Limits::builder()
            .tier("anonymous", TierSpec::new(Quota::per_minute(nonzero!(60u32))).daily(100))
            .tier("anonymous-daily", TierSpec::new(Quota::per_minute(nonzero!(60u32))))
            .build()
            .unwrap_err();
        assert_eq!(err.key(), "tiers.anonymous-daily");
    }
}
