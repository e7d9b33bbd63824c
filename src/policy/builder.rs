//! [`LimitsBuilder`]: limits defined in code, and the one place their rules are checked.

use std::fmt;

use super::{Bands, ChargeOn, Limits, RouteRule, Routes, TierSpec, MAX_POLICIES};
use crate::clock::Nanos;

/// The longest a tier may hold a request (`max_delay_ms`): an hour is already far beyond what
/// a client or a proxy in between waits for an answer.
pub const MAX_DELAY: Nanos = Nanos::from_secs(3_600);
use crate::algorithm::{Algorithm, Quota};

/// Why limits were refused: the offending setting, named as in the configuration file
/// (`tiers.free.burst`, `default_tier`, `routes."/x"`), and what is wrong with it.
///
/// ```
/// use nonzero_ext::nonzero;
/// use tollgate::algorithm::Quota;
/// use tollgate::policy::Limits;
/// use tollgate::policy::TierSpec;
///
/// let err = Limits::builder()
///     .tier("free", TierSpec::new(Quota::per_minute(nonzero!(60u32))))
///     .build()
///     .unwrap_err();
/// assert_eq!(err.key(), "default_tier");
/// assert_eq!(err.to_string(), "`default_tier` is not set and there is no tier named `anonymous`");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitsError {
    key: String,
    message: String,
}

impl LimitsError {
    fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self { key: key.into(), message: message.into() }
    }

    /// The offending setting, dotted as in the configuration file.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// What is wrong with it.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for LimitsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}` {}", self.key, self.message)
    }
}

impl std::error::Error for LimitsError {}

/// Where a route entry came from, to name it in an error.
#[derive(Debug, Clone, Copy)]
enum Table {
    Routes,
    Exempt,
    Degrade,
    Concurrency,
}

/// Defines [`Limits`] in code; made by [`Limits::builder`]. [`build`](Self::build) checks every
/// rule of the limits (a configuration file is compiled through it too, so each rule is
/// written and checked once).
///
/// ```
/// use nonzero_ext::nonzero;
/// use tollgate::algorithm::Quota;
/// use tollgate::policy::{Bands, Limits, TierSpec};
///
/// let limits = Limits::builder()
///     .tier("anonymous", TierSpec::new(Quota::per_minute(nonzero!(30u32)).allow_burst(nonzero!(5u32))))
///     .route("/api/search", 5)
///     .degrade(["/api/search"], Bands::default())
///     .route_concurrency("/api/export", 2)
///     .build()
///     .unwrap();
/// assert!(limits.routes().lookup(&http::Method::GET, "/api/search").degrade);
///
/// let err = Limits::builder()
///     .tier("free", TierSpec::new(Quota::per_minute(nonzero!(60u32))))
///     .default_tier("gold")
///     .build()
///     .unwrap_err();
/// assert!(err.to_string().contains("default_tier"));
/// ```
#[derive(Debug, Clone, Default)]
pub struct LimitsBuilder {
    tiers: Vec<(String, TierSpec)>,
    algorithm: Algorithm,
    default_tier: Option<String>,
    routes: Vec<(Table, String, RouteRule)>,
    bands: Option<Bands>,
}

impl LimitsBuilder {
    /// Adds (or replaces) the tier `name`.
    pub fn tier(mut self, name: &str, spec: TierSpec) -> Self {
        self.tiers.retain(|(n, _)| n != name);
        self.tiers.push((name.to_owned(), spec));
        self
    }

    /// The algorithm of tiers that do not choose one (token bucket by default).
    pub fn algorithm(mut self, algorithm: Algorithm) -> Self {
        self.algorithm = algorithm;
        self
    }

    /// The tier of clients without a known tier (`anonymous` by default).
    pub fn default_tier(mut self, name: &str) -> Self {
        self.default_tier = Some(name.to_owned());
        self
    }

    /// Sets the cost of `route` (`"/path"` or `"METHOD /path"`).
    pub fn route(mut self, route: &str, cost: u32) -> Self {
        self.routes.push((Table::Routes, route.to_owned(), RouteRule::cost(cost)));
        self
    }

    /// Sets the cost of `route` and which of its answers keep the charge: the table form of
    /// `[routes]`, `"POST /login" = { cost = 1, charge = "failures" }`.
    ///
    /// ```
    /// use nonzero_ext::nonzero;
    /// use tollgate::algorithm::Quota;
    /// use tollgate::policy::{ChargeOn, Limits, TierSpec};
    ///
    /// let limits = Limits::builder()
    ///     .tier("anonymous", TierSpec::new(Quota::per_minute(nonzero!(10u32))))
    ///     .route_charged("POST /login", 1, ChargeOn::Failures)
    ///     .build()
    ///     .unwrap();
    /// assert_eq!(limits.routes().lookup(&http::Method::POST, "/login").charge, ChargeOn::Failures);
    /// ```
    pub fn route_charged(mut self, route: &str, cost: u32, charge: ChargeOn) -> Self {
        self.routes.push((Table::Routes, route.to_owned(), RouteRule::cost(cost).charged(charge)));
        self
    }

    /// Never limits `route`.
    pub fn exempt(mut self, route: &str) -> Self {
        self.routes.push((Table::Exempt, route.to_owned(), RouteRule::EXEMPT));
        self
    }

    /// Degrades `routes` with `bands`.
    pub fn degrade<'a>(mut self, routes: impl IntoIterator<Item = &'a str>, bands: Bands) -> Self {
        for route in routes {
            self.routes.push((Table::Degrade, route.to_owned(), RouteRule::cost(0)));
        }
        self.bands = Some(bands);
        self
    }

    /// Caps the requests one client may have in flight on `route` (at least 1).
    pub fn route_concurrency(mut self, route: &str, in_flight: u32) -> Self {
        let mut rule = RouteRule::cost(0);
        rule.concurrency = in_flight;
        self.routes.push((Table::Concurrency, route.to_owned(), rule));
        self
    }

    /// Checks everything and compiles the limits.
    pub fn build(self) -> Result<Limits, LimitsError> {
        if self.tiers.is_empty() {
            return Err(LimitsError::new("tiers", "at least one tier is required"));
        }
        let mut specs = Vec::with_capacity(self.tiers.len());
        for (name, spec) in self.tiers {
            let quotas = quotas(&name, &spec, self.algorithm)?;
            specs.push((name, spec, quotas));
        }
        // A policy's name is its identity (in store keys, headers and across reloads): the
        // daily policy of tier `x` is `x-daily`, so no tier may be called that.
        for (name, spec, _) in &specs {
            if spec.daily.is_some() {
                let daily = format!("{name}-daily");
                if specs.iter().any(|(other, ..)| *other == daily) {
                    return Err(LimitsError::new(
                        format!("tiers.{daily}"),
                        format!("has the name of the daily policy of tier `{name}`; rename one of them"),
                    ));
                }
            }
        }
        let default_tier = match &self.default_tier {
            Some(name) => specs.iter().position(|(n, ..)| n == name).ok_or_else(|| {
                LimitsError::new(
                    "default_tier",
                    format!("names the tier `{name}`, which is not defined under [tiers]"),
                )
            })?,
            None => specs.iter().position(|(n, ..)| n == "anonymous").ok_or_else(|| {
                LimitsError::new("default_tier", "is not set and there is no tier named `anonymous`")
            })?,
        };
        if let Some(bands) = self.bands {
            let in_unit = |v: f64| (0.0..=1.0).contains(&v);
            if !in_unit(bands.cached_below) {
                return Err(LimitsError::new("degrade.cached_below", "must be between 0 and 1"));
            }
            if !in_unit(bands.minimal_below) || bands.minimal_below > bands.cached_below {
                return Err(LimitsError::new(
                    "degrade.minimal_below",
                    "must be between 0 and degrade.cached_below",
                ));
            }
        }
        let mut routes = Routes::default();
        for (table, route, rule) in &self.routes {
            let key = || match table {
                Table::Routes => format!("routes.\"{route}\""),
                Table::Exempt => format!("exempt.routes \"{route}\""),
                Table::Degrade => format!("degrade.routes \"{route}\""),
                Table::Concurrency => format!("concurrency.\"{route}\""),
            };
            let result = match table {
                Table::Routes | Table::Exempt => routes.set(route, *rule),
                Table::Degrade => routes.update(route, |r| r.degrade = true),
                Table::Concurrency if rule.concurrency == 0 => {
                    return Err(LimitsError::new(key(), "must be a whole number of at least 1 (found 0)"));
                }
                Table::Concurrency => routes.update(route, |r| r.concurrency = rule.concurrency),
            };
            result.map_err(|e| LimitsError::new(key(), e.to_string()))?;
        }
        Ok(Limits::new(specs, self.algorithm, default_tier, routes, self.bands))
    }
}

/// The quotas of one tier (its rate, then its daily quota), or why they cannot be.
fn quotas(name: &str, spec: &TierSpec, default: Algorithm) -> Result<Vec<Quota>, LimitsError> {
    let key = |field: &str| format!("tiers.{name}.{field}");
    let mut quotas = vec![spec.quota];
    if let Some(daily) = spec.daily {
        let quota = Quota::daily(daily)
            .ok_or_else(|| LimitsError::new(key("requests_per_day"), "is out of range"))?;
        quotas.push(quota);
    }
    debug_assert!(quotas.len() <= MAX_POLICIES);
    let algorithm = spec.algorithm.unwrap_or(default);
    for (quota, field) in quotas.iter().zip(["burst", "requests_per_day"]) {
        algorithm.check_quota(quota).map_err(|why| LimitsError::new(key(field), why))?;
    }
    if !spec.max_delay.is_zero() {
        if !algorithm.reserves_ahead() {
            return Err(LimitsError::new(
                key("max_delay_ms"),
                "needs an algorithm that can reserve tokens ahead: \"token_bucket\" or \"sliding_log\" \
                 (a sliding-window counter keeps counts, not times)",
            ));
        }
        if spec.max_delay > MAX_DELAY {
            return Err(LimitsError::new(
                key("max_delay_ms"),
                format!("is at most {} (one hour)", MAX_DELAY.as_nanos() / 1_000_000),
            ));
        }
    }
    if spec.concurrency == Some(0) {
        return Err(LimitsError::new(key("concurrency"), "must be a whole number of at least 1 (found 0)"));
    }
    Ok(quotas)
}
