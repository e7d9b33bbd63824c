//! Configuration: a TOML file and `TOLLGATE_` environment overrides, through figment.
//!
//! [`Config`] mirrors the file (see the README's configuration reference); every key but
//! `[tiers]` has a default. [`Config::load`] merges, in order: the defaults, the file, then
//! environment variables prefixed `TOLLGATE_` with `__` between levels
//! (`TOLLGATE_STORE__BACKEND=redis`, `TOLLGATE_DEFAULT_TIER=free`). Unknown keys are refused,
//! and the result is validated at once, so a bad file fails before a server listens, with an
//! error that names the file (or variable), the offending key and, for syntax errors, the line.
//!
//! ```
//! use tollgate::Config;
//!
//! let config = Config::from_toml(r#"
//!     default_tier = "free"
//!     [tiers.free]
//!     requests_per_minute = 60
//!     burst = 10
//!     requests_per_day = 10000
//! "#).unwrap();
//! let limits = config.limits().unwrap();
//! assert_eq!(limits.default_tier().policies().len(), 2);
//!
//! let err = Config::from_toml("[tiers.anonymous]\nrequests_per_minute = 30\nburst = 0\n").unwrap_err();
//! assert!(err.to_string().contains("tiers.anonymous.burst"), "{err}");
//! ```

mod builder;
mod error;
mod store;

use std::collections::BTreeMap;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

pub use builder::Builder;
pub use error::ConfigError;
pub use store::{Backend, StoreConfig};

use crate::algorithm::{Algorithm, Quota};
use crate::answer::HeaderMode;
use crate::key::{ApiKeys, ClientIp, FromExtension, KeyExtractor};
use crate::layer::DefaultExtractor;
use crate::policy::{Bands, Limits, Routes, TierSpec};

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The algorithm of every tier that does not choose its own.
    #[serde(default)]
    pub algorithm: Algorithm,
    /// The tier of clients without a known API key; a tier named `anonymous` by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_tier: Option<String>,
    /// Which rate-limit headers to send.
    #[serde(default)]
    pub headers: HeaderMode,
    /// Networks whose forwarding headers are believed (CIDRs; none by default).
    #[serde(default)]
    pub trusted_proxies: Vec<IpNet>,
    /// Bits of an IPv6 address that name one client (64 by default).
    #[serde(default = "default_ipv6_prefix")]
    pub ipv6_prefix: u8,
    /// The tiers, by name.
    #[serde(default)]
    pub tiers: BTreeMap<String, TierConfig>,
    /// Route costs: `"PATH"` or `"METHOD PATH"` (axum templates) → tokens. Others cost 1.
    #[serde(default)]
    pub routes: BTreeMap<String, i64>,
    /// Routes never limited.
    #[serde(default)]
    pub exempt: ExemptConfig,
    /// API key → tier name.
    #[serde(default)]
    pub api_keys: BTreeMap<String, String>,
    /// Per-route concurrency limits: route → requests one client may have in flight.
    #[serde(default)]
    pub concurrency: BTreeMap<String, i64>,
    /// Degradation bands; absent: never degrade.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub degrade: Option<DegradeConfig>,
    /// Near-quota alerts.
    #[serde(default)]
    pub alerts: AlertsConfig,
    /// Where state lives.
    #[serde(default)]
    pub store: StoreConfig,
}

fn default_ipv6_prefix() -> u8 {
    64
}

impl Default for Config {
    fn default() -> Self {
        Self {
            algorithm: Algorithm::default(),
            default_tier: None,
            headers: HeaderMode::default(),
            trusted_proxies: Vec::new(),
            ipv6_prefix: default_ipv6_prefix(),
            tiers: BTreeMap::new(),
            routes: BTreeMap::new(),
            exempt: ExemptConfig::default(),
            api_keys: BTreeMap::new(),
            concurrency: BTreeMap::new(),
            degrade: None,
            alerts: AlertsConfig::default(),
            store: StoreConfig::default(),
        }
    }
}

/// One tier: a rate (exactly one of the `requests_per_*` keys) with a burst, and optionally a
/// daily quota.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TierConfig {
    /// Tokens per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_second: Option<f64>,
    /// Tokens per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_minute: Option<f64>,
    /// Tokens per hour.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_hour: Option<f64>,
    /// Capacity: requests admitted back to back from a full bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<i64>,
    /// A second policy: this many requests per rolling 24 hours.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_day: Option<i64>,
    /// Shown in 429 and 403 bodies and on the dashboard.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgrade_url: Option<String>,
    /// This tier's algorithm, overriding the top-level one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<Algorithm>,
    /// The most requests one client of this tier may have in flight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<i64>,
}

/// `[exempt]`: routes never limited.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ExemptConfig {
    /// Routes (`"PATH"` or `"METHOD PATH"`).
    #[serde(default)]
    pub routes: Vec<String>,
}

/// `[degrade]`: the degradation bands.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DegradeConfig {
    /// Routes that may be degraded.
    #[serde(default)]
    pub routes: Vec<String>,
    /// Fraction of the burst below which a cached copy is served (0.5 by default).
    #[serde(default = "default_cached_below")]
    pub cached_below: f64,
    /// Fraction below which the handler is asked for a minimal answer (0.1 by default).
    #[serde(default = "default_minimal_below")]
    pub minimal_below: f64,
    /// Seconds a cached answer may be replayed (300 by default).
    #[serde(default = "default_cache_ttl")]
    pub cache_ttl_secs: u64,
    /// Cached answers kept at most, over all clients (10 000 by default).
    #[serde(default = "default_cache_entries")]
    pub cache_max_entries: usize,
    /// Cached body bytes kept at most, over all clients (16 MiB by default).
    #[serde(default = "default_cache_bytes")]
    pub cache_max_bytes: usize,
    /// The largest body cached (64 KiB by default).
    #[serde(default = "default_cache_entry_bytes")]
    pub cache_max_entry_bytes: usize,
}

fn default_cache_ttl() -> u64 {
    300
}

fn default_cache_entries() -> usize {
    10_000
}

fn default_cache_bytes() -> usize {
    16 << 20
}

fn default_cache_entry_bytes() -> usize {
    64 << 10
}

fn default_cached_below() -> f64 {
    0.5
}

fn default_minimal_below() -> f64 {
    0.1
}

/// `[alerts]`: the near-quota hook.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsConfig {
    /// Fraction of a policy used at which the near-quota event fires (0.8 by default).
    #[serde(default = "default_near_quota")]
    pub near_quota: f64,
    /// Where to POST near-quota events as JSON (optional).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<String>,
}

fn default_near_quota() -> f64 {
    0.8
}

impl Default for AlertsConfig {
    fn default() -> Self {
        Self { near_quota: default_near_quota(), webhook: None }
    }
}

/// The environment variable prefix of overrides.
pub const ENV_PREFIX: &str = "TOLLGATE_";

impl Config {
    /// Loads `path`, applies `TOLLGATE_` environment overrides, and validates the result.
    #[cfg(feature = "config")]
    pub fn load(path: impl AsRef<std::path::Path>) -> Result<Self, ConfigError> {
        use figment::providers::{Env, Format, Toml};
        let path = path.as_ref();
        let figment =
            Self::figment().merge(Toml::file_exact(path)).merge(Env::prefixed(ENV_PREFIX).split("__"));
        Self::from_figment(&figment)
    }

    /// Parses a TOML text (no environment overrides) and validates it.
    #[cfg(feature = "config")]
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        use figment::providers::{Format, Toml};
        Self::from_figment(&Self::figment().merge(Toml::string(text)))
    }

    /// A figment holding the defaults, for library authors who add their own providers.
    #[cfg(feature = "config")]
    pub fn figment() -> figment::Figment {
        figment::Figment::from(figment::providers::Serialized::defaults(Config::default()))
    }

    /// Extracts and validates a configuration from `figment`.
    #[cfg(feature = "config")]
    pub fn from_figment(figment: &figment::Figment) -> Result<Self, ConfigError> {
        let config: Config = figment.extract().map_err(ConfigError::from_figment)?;
        config.limits().map_err(|e| e.located(figment))?;
        config.store.validate().map_err(|e| e.located(figment))?;
        Ok(config)
    }

    /// Compiles the tiers, routes and bands, or names the first invalid key.
    pub fn limits(&self) -> Result<Limits, ConfigError> {
        let mut builder = Builder::default().algorithm(self.algorithm);
        if self.tiers.is_empty() {
            return Err(ConfigError::invalid("tiers", "at least one tier is required"));
        }
        for (name, tier) in &self.tiers {
            builder = builder.tier(name, tier.spec(name)?);
        }
        let default_tier = self.default_tier.as_deref().unwrap_or("anonymous");
        if !self.tiers.contains_key(default_tier) {
            let message = match &self.default_tier {
                Some(name) => {
                    format!("names the tier `{name}`, which is not defined under [tiers]")
                }
                None => "is not set and there is no tier named `anonymous`".to_owned(),
            };
            return Err(ConfigError::invalid("default_tier", message));
        }
        builder = builder.default_tier(default_tier);
        for (key, tier) in &self.api_keys {
            if !self.tiers.contains_key(tier) {
                return Err(ConfigError::invalid(
                    format!("api_keys.\"{key}\""),
                    format!("names the tier `{tier}`, which is not defined under [tiers]"),
                ));
            }
        }
        for (route, &cost) in &self.routes {
            let key = || format!("routes.\"{route}\"");
            let cost = u32::try_from(cost).map_err(|_| {
                ConfigError::invalid(
                    key(),
                    format!("a cost is a whole number of tokens, 0 or more (found {cost})"),
                )
            })?;
            Routes::parse(route).map_err(|e| ConfigError::invalid(key(), e.to_string()))?;
            builder = builder.route(route, cost);
        }
        for (i, route) in self.exempt.routes.iter().enumerate() {
            Routes::parse(route)
                .map_err(|e| ConfigError::invalid(format!("exempt.routes[{i}]"), e.to_string()))?;
            builder = builder.exempt(route);
        }
        if let Some(degrade) = &self.degrade {
            let in_unit = |v: f64| (0.0..=1.0).contains(&v);
            if !in_unit(degrade.cached_below) {
                return Err(ConfigError::invalid("degrade.cached_below", "must be between 0 and 1"));
            }
            if !in_unit(degrade.minimal_below) || degrade.minimal_below > degrade.cached_below {
                return Err(ConfigError::invalid(
                    "degrade.minimal_below",
                    "must be between 0 and degrade.cached_below",
                ));
            }
            for (i, route) in degrade.routes.iter().enumerate() {
                Routes::parse(route)
                    .map_err(|e| ConfigError::invalid(format!("degrade.routes[{i}]"), e.to_string()))?;
            }
            builder = builder.cache_limits(crate::degrade::CacheLimits {
                max_entries: degrade.cache_max_entries,
                max_bytes: degrade.cache_max_bytes,
                max_entry_bytes: degrade.cache_max_entry_bytes,
                ttl: crate::clock::Nanos::from_secs(degrade.cache_ttl_secs),
            });
            builder = builder.degrade(
                degrade.routes.iter().map(String::as_str),
                Bands { cached_below: degrade.cached_below, minimal_below: degrade.minimal_below },
            );
        }
        for (route, &limit) in &self.concurrency {
            let key = || format!("concurrency.\"{route}\"");
            let limit = u32::try_from(limit).ok().filter(|&l| l > 0).ok_or_else(|| {
                ConfigError::invalid(key(), format!("must be a whole number of at least 1 (found {limit})"))
            })?;
            Routes::parse(route).map_err(|e| ConfigError::invalid(key(), e.to_string()))?;
            builder = builder.route_concurrency(route, limit);
        }
        if !(self.alerts.near_quota > 0.0 && self.alerts.near_quota <= 1.0) {
            return Err(ConfigError::invalid("alerts.near_quota", "must be above 0 and at most 1"));
        }
        builder = builder.near_quota(self.alerts.near_quota);
        if self.ipv6_prefix > 128 {
            return Err(ConfigError::invalid(
                "ipv6_prefix",
                format!("must be 0 to 128 (found {})", self.ipv6_prefix),
            ));
        }
        builder.build()
    }

    /// The key extractor this configuration describes: an auth layer's
    /// [`Client`](crate::key::Client), else a known `X-API-Key`, else the client IP.
    pub fn extractor(&self) -> DefaultExtractor {
        let keys = self.api_keys.iter().fold(ApiKeys::new("x-api-key"), |keys, (k, tier)| keys.key(k, tier));
        let ip = ClientIp::new().trusted(self.trusted_proxies.iter().copied()).ipv6_prefix(self.ipv6_prefix);
        FromExtension.or(keys).or(ip)
    }
}

impl TierConfig {
    fn spec(&self, name: &str) -> Result<TierSpec, ConfigError> {
        let key = |field: &str| format!("tiers.{name}.{field}");
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) {
            return Err(ConfigError::invalid(
                format!("tiers.\"{name}\""),
                "a tier name uses letters, digits, `-`, `_` and `.` only",
            ));
        }
        let rates = [
            ("requests_per_second", self.requests_per_second, 1u64),
            ("requests_per_minute", self.requests_per_minute, 60),
            ("requests_per_hour", self.requests_per_hour, 3_600),
        ];
        let mut given = rates.iter().filter(|(_, rate, _)| rate.is_some());
        let Some(&(field, Some(rate), period)) = given.next() else {
            return Err(ConfigError::invalid(
                format!("tiers.{name}"),
                "needs a rate: one of requests_per_second, requests_per_minute, requests_per_hour",
            ));
        };
        if let Some((other, _, _)) = given.next() {
            return Err(ConfigError::invalid(
                key(other),
                format!("give one rate per tier; {field} is already set"),
            ));
        }
        if !(rate.is_finite() && rate > 0.0) {
            return Err(ConfigError::invalid(
                key(field),
                format!("must be a positive number (found {rate})"),
            ));
        }
        let Some(burst) = self.burst else {
            return Err(ConfigError::invalid(key("burst"), "is required: the capacity of the bucket"));
        };
        let burst = u64::try_from(burst).ok().filter(|&b| b > 0).ok_or_else(|| {
            ConfigError::invalid(
                key("burst"),
                format!("must be a whole number of at least 1 (found {burst})"),
            )
        })?;
        let quota =
            Quota::from_rate(rate, crate::clock::Nanos::from_secs(period), burst).ok_or_else(|| {
                ConfigError::invalid(key(field), format!("{rate} with a burst of {burst} is out of range"))
            })?;
        let algorithm = self.algorithm;
        let mut spec = TierSpec::new(quota);
        if let Some(daily) = self.requests_per_day {
            let daily = u64::try_from(daily).ok().filter(|&d| d > 0).ok_or_else(|| {
                ConfigError::invalid(
                    key("requests_per_day"),
                    format!("must be a whole number of at least 1 (found {daily})"),
                )
            })?;
            spec = spec.daily(daily);
        }
        if let Some(algorithm) = algorithm {
            spec = spec.algorithm(algorithm);
        }
        if let Some(url) = &self.upgrade_url {
            if http::HeaderValue::from_str(url).is_err() || url.is_empty() {
                return Err(ConfigError::invalid(key("upgrade_url"), "must be a non-empty URL"));
            }
            spec = spec.upgrade_url(url.clone());
        }
        if let Some(limit) = self.concurrency {
            let limit = u32::try_from(limit).ok().filter(|&c| c > 0).ok_or_else(|| {
                ConfigError::invalid(
                    key("concurrency"),
                    format!("must be a whole number of at least 1 (found {limit})"),
                )
            })?;
            spec = spec.concurrency(limit);
        }
        Ok(spec)
    }
}

#[cfg(all(test, feature = "config"))]
mod tests;
