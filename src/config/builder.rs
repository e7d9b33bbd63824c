use crate::algorithm::{Algorithm, SLIDING_WINDOW_MAX_BURST};
use crate::degrade::CacheLimits;
use crate::policy::{Bands, Limits, RouteRule, Routes, TierSpec, MAX_POLICIES};

use super::ConfigError;

/// Defines [`Limits`] in code; made by [`Limits::builder`].
///
/// ```
/// use nonzero_ext::nonzero;
/// use tollgate::algorithm::{Algorithm, Quota};
/// use tollgate::policy::{Limits, TierSpec};
///
/// let err = Limits::builder()
///     .tier("free", TierSpec::new(Quota::per_minute(nonzero!(60u32)).allow_burst(nonzero!(10u32))))
///     .default_tier("gold")
///     .build()
///     .unwrap_err();
/// assert!(err.to_string().contains("default_tier"));
/// ```
#[derive(Debug, Clone, Default)]
pub struct Builder {
    tiers: Vec<(String, TierSpec)>,
    algorithm: Algorithm,
    default_tier: Option<String>,
    routes: Vec<(String, RouteRule)>,
    degrade: Vec<String>,
    bands: Option<Bands>,
    cache: CacheLimits,
    concurrency: Vec<(String, u32)>,
    near_quota: Option<f64>,
}

impl Builder {
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
        self.routes.push((route.to_owned(), RouteRule::cost(cost)));
        self
    }

    /// Never limits `route`.
    pub fn exempt(mut self, route: &str) -> Self {
        self.routes.push((route.to_owned(), RouteRule::EXEMPT));
        self
    }

    /// Degrades `routes` with `bands`.
    pub fn degrade<'a>(mut self, routes: impl IntoIterator<Item = &'a str>, bands: Bands) -> Self {
        self.degrade.extend(routes.into_iter().map(str::to_owned));
        self.bands = Some(bands);
        self
    }

    /// Bounds the response cache of the `cached` band.
    pub fn cache_limits(mut self, limits: CacheLimits) -> Self {
        self.cache = limits;
        self
    }

    /// Caps the requests one client may have in flight on `route`.
    pub fn route_concurrency(mut self, route: &str, in_flight: u32) -> Self {
        self.concurrency.push((route.to_owned(), in_flight));
        self
    }

    /// The fraction of a policy used at which the near-quota event fires (0.8 by default).
    pub fn near_quota(mut self, fraction: f64) -> Self {
        self.near_quota = Some(fraction);
        self
    }

    /// Checks everything and compiles the limits.
    pub fn build(self) -> Result<Limits, ConfigError> {
        if self.tiers.is_empty() {
            return Err(ConfigError::invalid("tiers", "at least one tier is required"));
        }
        for (name, spec) in &self.tiers {
            let algorithm = spec.algorithm.unwrap_or(self.algorithm);
            if algorithm == Algorithm::SlidingWindow {
                if spec.quota.burst() > SLIDING_WINDOW_MAX_BURST {
                    return Err(ConfigError::invalid(
                        format!("tiers.{name}.burst"),
                        format!("a sliding window holds at most {SLIDING_WINDOW_MAX_BURST}"),
                    ));
                }
                if spec.daily.is_some_and(|d| d > SLIDING_WINDOW_MAX_BURST) {
                    return Err(ConfigError::invalid(
                        format!("tiers.{name}.requests_per_day"),
                        format!("a sliding window holds at most {SLIDING_WINDOW_MAX_BURST}"),
                    ));
                }
            }
            if spec.daily.is_some_and(|d| crate::algorithm::Quota::daily(d).is_none()) {
                return Err(ConfigError::invalid(
                    format!("tiers.{name}.requests_per_day"),
                    "is out of range",
                ));
            }
            let policies = 1 + usize::from(spec.daily.is_some());
            debug_assert!(policies <= MAX_POLICIES);
        }
        let default_tier = self.default_tier.as_deref().unwrap_or("anonymous");
        if !self.tiers.iter().any(|(n, _)| n == default_tier) {
            return Err(ConfigError::invalid(
                "default_tier",
                format!("names the tier `{default_tier}`, which is not defined"),
            ));
        }
        let mut routes = Routes::default();
        for (route, rule) in &self.routes {
            routes
                .set(route, *rule)
                .map_err(|e| ConfigError::invalid(format!("routes.\"{route}\""), e.to_string()))?;
        }
        for route in &self.degrade {
            routes
                .update(route, |r| r.degrade = true)
                .map_err(|e| ConfigError::invalid(format!("degrade.routes \"{route}\""), e.to_string()))?;
        }
        for (route, limit) in &self.concurrency {
            routes
                .update(route, |r| r.concurrency = *limit)
                .map_err(|e| ConfigError::invalid(format!("concurrency.\"{route}\""), e.to_string()))?;
        }
        Ok(Limits::new(
            self.tiers,
            self.algorithm,
            default_tier,
            routes,
            self.bands,
            self.cache,
            self.near_quota.unwrap_or(0.8),
        ))
    }
}
