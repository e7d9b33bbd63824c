//! Configuration: a TOML file and `TOLLGATE_` environment overrides, through figment.
//!
//! [`Settings`] mirrors the file (see the README's configuration reference); every key but
//! `[tiers]` has a default, written once in each table's `Default`. A [`Config`] is settings
//! that were checked: [`Config::load`] merges, in order, the defaults, the file, then
//! environment variables prefixed `TOLLGATE_` with `__` between levels
//! (`TOLLGATE_STORE__BACKEND=redis`, `TOLLGATE_DEFAULT_TIER=free`), refuses unknown keys, and
//! compiles the result into [`Limits`] at once, so a bad file fails before a server listens,
//! with an error that names the file (or variable), the offending key and, for syntax errors,
//! the line. The compiled limits travel with the `Config`: building a layer from it checks
//! nothing twice.
//!
//! A `Config` describes the whole limiter [`RateLimitLayer::try_new`](crate::RateLimitLayer::try_new)
//! builds: its limits and client keys, its headers, its store and failure policy, its response
//! cache, and its near-quota alerts (logged, and POSTed to `[alerts] webhook` when one is set).
//!
//! This module depends on [`policy`](crate::policy) (through [`LimitsBuilder`], which checks
//! every rule of the limits), never the other way round.
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
//! assert_eq!(config.limits().default_tier().policies().len(), 2);
//! assert_eq!(config.settings().alerts.near_quota, 0.8);
//!
//! let err = Config::from_toml("[tiers.anonymous]\nrequests_per_minute = 30\nburst = 0\n").unwrap_err();
//! assert!(err.to_string().contains("tiers.anonymous.burst"), "{err}");
//! ```

mod error;
mod store;

use std::collections::BTreeMap;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

pub use error::ConfigError;
pub use store::{Backend, StoreConfig};

use crate::algorithm::{Algorithm, Quota};
use crate::answer::HeaderMode;
use crate::clock::Nanos;
use crate::degrade::CacheLimits;
use crate::key::{
    AllowList, ApiKeys, Client, ClientIp, ClientIpHeader, DefaultExtractor, FromExtension, Key, KeyExtractor,
};
use crate::observe::DEFAULT_NEAR_QUOTA;
use crate::policy::{Bands, ChargeOn, Limits, LimitsBuilder, Mode, TierSpec};

/// The whole configuration file, as written (nothing checked yet: see [`Config`]).
///
/// Every table has one `Default`, which is where each default value is written; a key missing
/// from the file takes it.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// The algorithm of every tier that does not choose its own.
    pub algorithm: Algorithm,
    /// Whether limits bite (`enforce`, the default) or are only rehearsed (`shadow`), for every
    /// tier that does not choose its own.
    pub mode: Mode,
    /// The tier of clients without a known API key; a tier named `anonymous` by default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_tier: Option<String>,
    /// Which rate-limit headers to send.
    pub headers: HeaderMode,
    /// Networks whose forwarding headers are believed (CIDRs; none by default).
    pub trusted_proxies: Vec<IpNet>,
    /// The one header the trusted proxies write the client's address in (`x-forwarded-for`
    /// by default, `forwarded` or `x-real-ip`); the others are ignored.
    pub client_ip_header: ClientIpHeader,
    /// Bits of an IPv6 address that name one client (64 by default).
    pub ipv6_prefix: u8,
    /// The tiers, by name.
    pub tiers: BTreeMap<String, TierConfig>,
    /// Route costs: `"PATH"` or `"METHOD PATH"` (axum templates) → tokens, or a table
    /// `{ cost, charge }`. Others cost 1.
    pub routes: BTreeMap<String, RouteConfig>,
    /// Routes never limited.
    pub exempt: ExemptConfig,
    /// API key → tier name (`"free"`), or the long form `{ tier, name, email }`.
    pub api_keys: BTreeMap<String, ApiKeyConfig>,
    /// Per-route concurrency limits: route → requests one client may have in flight.
    pub concurrency: BTreeMap<String, i64>,
    /// Degradation bands; absent: never degrade.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub degrade: Option<DegradeConfig>,
    /// Near-quota alerts.
    pub alerts: AlertsConfig,
    /// Where state lives.
    pub store: StoreConfig,
    /// The usage history (`/usage`'s `history`, the dashboard's charts, the operator's view).
    pub history: HistoryConfig,
    /// The operator's view (`/admin`, `/admin/usage`).
    pub admin: AdminConfig,
    /// Clients never limited.
    pub allow: AllowConfig,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            algorithm: Algorithm::default(),
            mode: Mode::default(),
            default_tier: None,
            headers: HeaderMode::default(),
            trusted_proxies: Vec::new(),
            client_ip_header: ClientIpHeader::default(),
            ipv6_prefix: ClientIp::DEFAULT_IPV6_PREFIX,
            tiers: BTreeMap::new(),
            routes: BTreeMap::new(),
            exempt: ExemptConfig::default(),
            api_keys: BTreeMap::new(),
            concurrency: BTreeMap::new(),
            degrade: None,
            alerts: AlertsConfig::default(),
            store: StoreConfig::default(),
            history: HistoryConfig::default(),
            admin: AdminConfig::default(),
            allow: AllowConfig::default(),
        }
    }
}

/// `[allow]`: clients never limited, never charged, given no rate-limit headers (see
/// [`AllowList`]).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AllowConfig {
    /// Networks (CIDRs), matched on the client IP as resolved (after `trusted_proxies`).
    pub ips: Vec<IpNet>,
    /// `X-API-Key` values (they need not be keys of `[api_keys]`).
    pub keys: Vec<String>,
}

/// One entry of `[api_keys]`: the short form, a tier name (`"free-demo-key" = "free"`), or the
/// long form (`"acme-key" = { tier = "pro", name = "Acme Corp", email = "ops@acme.example" }`).
///
/// ```
/// use tollgate::Config;
/// let config = Config::from_toml(r#"
///     [tiers.anonymous]
///     requests_per_minute = 30
///     burst = 5
///     [tiers.pro]
///     requests_per_minute = 600
///     burst = 100
///     [api_keys]
///     "short-key" = "pro"
///     "acme-key" = { tier = "pro", name = "Acme Corp", email = "ops@acme.example" }
/// "#).unwrap();
/// let acme = &config.settings().api_keys["acme-key"];
/// assert_eq!((acme.tier(), acme.name(), acme.email()), ("pro", Some("Acme Corp"), Some("ops@acme.example")));
/// assert_eq!(config.settings().api_keys["short-key"].name(), None);
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum ApiKeyConfig {
    /// The short form: the key's tier.
    Tier(String),
    /// The long form.
    Client(ApiKeyClient),
}

/// The long form of an `[api_keys]` entry.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyClient {
    /// The key's tier.
    pub tier: String,
    /// How people see the client (dashboard, operator's view, emails, logs) instead of its key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Where near-quota emails go (with `[alerts.email]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
}

impl ApiKeyConfig {
    /// The key's tier.
    pub fn tier(&self) -> &str {
        match self {
            Self::Tier(tier) => tier,
            Self::Client(client) => &client.tier,
        }
    }

    /// The client's name, in the long form.
    pub fn name(&self) -> Option<&str> {
        match self {
            Self::Tier(_) => None,
            Self::Client(client) => client.name.as_deref(),
        }
    }

    /// The client's email address, in the long form.
    pub fn email(&self) -> Option<&str> {
        match self {
            Self::Tier(_) => None,
            Self::Client(client) => client.email.as_deref(),
        }
    }
}

/// `[history]`: the usage history kept for `/usage`, the dashboard and the operator's view
/// (see [`History`](crate::history::History)). With `backend = "redis"` it is kept in Redis,
/// shared by every instance, under the store's `prefix`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct HistoryConfig {
    /// Keep a history at all (true by default).
    pub enabled: bool,
    /// In process: identified clients kept at most (100 000 by default, about 1.1 KiB each).
    pub max_clients: usize,
    /// In process: anonymous clients (by address) kept at most for the operator's view
    /// (10 000 by default).
    pub max_anonymous: usize,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_clients: crate::history::DEFAULT_MAX_CLIENTS,
            max_anonymous: crate::history::DEFAULT_MAX_ANONYMOUS,
        }
    }
}

/// `[admin]`: who may read the operator's view.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// `X-API-Key` values that may read `/admin` and `/admin/usage` (none by default: both
    /// answer 403 to everyone).
    pub keys: Vec<String>,
}

/// `[alerts.email]`: near-quota emails to clients that have an `email`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmailConfig {
    /// The mail relay: `smtp://HOST:PORT` (plain), `smtp://HOST:PORT?tls=required`
    /// (STARTTLS) or `smtps://HOST:PORT` (TLS), with optional `USER:PASSWORD@`.
    pub smtp: String,
    /// The sender address (`limits@example.com`, or `Name <limits@example.com>`).
    pub from: String,
    /// At most one email per client and policy in this many seconds (86 400 by default).
    pub min_interval_s: u64,
}

impl Default for EmailConfig {
    fn default() -> Self {
        Self { smtp: String::new(), from: String::new(), min_interval_s: 86_400 }
    }
}

/// One tier: a rate (exactly one of the `requests_per_*` keys) with a burst, and optionally a
/// daily quota.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TierConfig {
    /// Tokens per second.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests_per_second: Option<f64>,
    /// Tokens per minute.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests_per_minute: Option<f64>,
    /// Tokens per hour.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests_per_hour: Option<f64>,
    /// Capacity: requests admitted back to back from a full bucket.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub burst: Option<i64>,
    /// A second policy: this many requests per rolling 24 hours.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests_per_day: Option<i64>,
    /// Shown in 429 and 403 bodies and on the dashboard.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upgrade_url: Option<String>,
    /// This tier's algorithm, overriding the top-level one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<Algorithm>,
    /// The most requests one client of this tier may have in flight.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<i64>,
    /// This tier's mode, overriding the top-level one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
    /// How long a request that would be refused may be held until its tokens arrive
    /// (milliseconds; 0, the default, refuses at once).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_delay_ms: Option<i64>,
}

/// One `[routes]` entry: a cost (`"/api/search" = 5`), or a table that also says which
/// answers keep the charge (`"POST /login" = { cost = 1, charge = "failures" }`; `cost`
/// defaults to 1, `charge` to `"all"`).
///
/// ```
/// use tollgate::config::RouteConfig;
/// use tollgate::policy::ChargeOn;
/// use tollgate::Config;
///
/// let config = Config::from_toml(r#"
///     [tiers.anonymous]
///     requests_per_minute = 30
///     burst = 5
///     [routes]
///     "/api/search" = 5
///     "POST /login" = { cost = 1, charge = "failures" }
/// "#).unwrap();
/// let routes = &config.settings().routes;
/// assert_eq!(routes["/api/search"], RouteConfig { cost: 5, charge: ChargeOn::All });
/// assert_eq!(routes["POST /login"], RouteConfig { cost: 1, charge: ChargeOn::Failures });
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteConfig {
    /// Tokens charged up front.
    pub cost: i64,
    /// Which answers keep the charge.
    pub charge: ChargeOn,
}

impl From<i64> for RouteConfig {
    fn from(cost: i64) -> Self {
        Self { cost, charge: ChargeOn::All }
    }
}

impl Serialize for RouteConfig {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        if self.charge == ChargeOn::All {
            return serializer.serialize_i64(self.cost);
        }
        let mut map = serializer.serialize_map(Some(2))?;
        map.serialize_entry("cost", &self.cost)?;
        map.serialize_entry("charge", &self.charge)?;
        map.end()
    }
}

impl<'de> Deserialize<'de> for RouteConfig {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = RouteConfig;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a cost (a whole number) or a table { cost, charge }")
            }

            fn visit_i64<E: serde::de::Error>(self, cost: i64) -> Result<RouteConfig, E> {
                Ok(RouteConfig::from(cost))
            }

            fn visit_u64<E: serde::de::Error>(self, cost: u64) -> Result<RouteConfig, E> {
                i64::try_from(cost).map(RouteConfig::from).map_err(|_| E::custom("the cost is too large"))
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<RouteConfig, A::Error> {
                let mut route = RouteConfig::from(1);
                let (mut cost, mut charge) = (false, false);
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "cost" if !cost => {
                            route.cost = map.next_value()?;
                            cost = true;
                        }
                        "charge" if !charge => {
                            route.charge = map.next_value()?;
                            charge = true;
                        }
                        "cost" | "charge" => return Err(serde::de::Error::duplicate_field("cost or charge")),
                        other => return Err(serde::de::Error::unknown_field(other, &["cost", "charge"])),
                    }
                }
                Ok(route)
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// `[exempt]`: routes never limited.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExemptConfig {
    /// Routes (`"PATH"` or `"METHOD PATH"`).
    pub routes: Vec<String>,
}

/// `[degrade]`: the degradation bands and the bounds of the response cache.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DegradeConfig {
    /// Routes that may be degraded.
    pub routes: Vec<String>,
    /// Fraction of the burst below which a cached copy is served (0.5 by default).
    pub cached_below: f64,
    /// Fraction below which the handler is asked for a minimal answer (0.1 by default).
    pub minimal_below: f64,
    /// Seconds a cached answer may be replayed (300 by default).
    pub cache_ttl_secs: u64,
    /// Cached answers kept at most, over all clients (10 000 by default).
    pub cache_max_entries: usize,
    /// Bytes the cached answers hold at most, over all clients: bodies, paths and queries,
    /// headers and overheads (16 MiB by default).
    pub cache_max_bytes: usize,
    /// The largest body cached (64 KiB by default).
    pub cache_max_entry_bytes: usize,
}

impl Default for DegradeConfig {
    fn default() -> Self {
        let (bands, cache) = (Bands::default(), CacheLimits::default());
        Self {
            routes: Vec::new(),
            cached_below: bands.cached_below,
            minimal_below: bands.minimal_below,
            cache_ttl_secs: cache.ttl.as_secs(),
            cache_max_entries: cache.max_entries,
            cache_max_bytes: cache.max_bytes,
            cache_max_entry_bytes: cache.max_entry_bytes,
        }
    }
}

impl DegradeConfig {
    /// The bounds of the response cache these settings describe.
    pub fn cache_limits(&self) -> CacheLimits {
        CacheLimits {
            max_entries: self.cache_max_entries,
            max_bytes: self.cache_max_bytes,
            max_entry_bytes: self.cache_max_entry_bytes,
            ttl: Nanos::from_secs(self.cache_ttl_secs),
        }
    }
}

/// `[alerts]`: the near-quota hook.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlertsConfig {
    /// Fraction of a policy used at which the near-quota event fires (0.8 by default).
    pub near_quota: f64,
    /// Where to POST near-quota events as JSON (optional).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook: Option<String>,
    /// Near-quota emails (optional).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<EmailConfig>,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        Self { near_quota: DEFAULT_NEAR_QUOTA, webhook: None, email: None }
    }
}

/// The environment variable prefix of overrides.
pub const ENV_PREFIX: &str = "TOLLGATE_";

/// Checked settings, and the [`Limits`] compiled from them: everything
/// [`RateLimitLayer::try_new`](crate::RateLimitLayer::try_new) needs to build the limiter.
///
/// A `Config` can only be made by checking [`Settings`] ([`Config::new`], [`Config::load`],
/// …), so a layer built from one never checks anything again; the settings can be read, not
/// changed.
#[derive(Debug, Clone)]
pub struct Config {
    settings: Settings,
    limits: Limits,
}

impl PartialEq for Config {
    /// Two configurations are equal when their settings are (the limits follow from them).
    fn eq(&self, other: &Self) -> bool {
        self.settings == other.settings
    }
}

impl Config {
    /// Loads `path`, applies `TOLLGATE_` environment overrides, and checks the result.
    #[cfg(feature = "config")]
    pub fn load(path: impl AsRef<std::path::Path>) -> Result<Self, ConfigError> {
        use figment::providers::{Env, Format, Toml};
        let path = path.as_ref();
        let figment =
            Self::figment().merge(Toml::file_exact(path)).merge(Env::prefixed(ENV_PREFIX).split("__"));
        Self::from_figment(&figment)
    }

    /// Parses a TOML text (no environment overrides) and checks it.
    #[cfg(feature = "config")]
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        use figment::providers::{Format, Toml};
        Self::from_figment(&Self::figment().merge(Toml::string(text)))
    }

    /// A figment holding the defaults, for library authors who add their own providers.
    #[cfg(feature = "config")]
    pub fn figment() -> figment::Figment {
        figment::Figment::from(figment::providers::Serialized::defaults(Settings::default()))
    }

    /// Extracts settings from `figment` and checks them; an error names where the offending
    /// key was set.
    #[cfg(feature = "config")]
    pub fn from_figment(figment: &figment::Figment) -> Result<Self, ConfigError> {
        let settings: Settings = figment.extract().map_err(ConfigError::from_figment)?;
        Self::new(settings).map_err(|e| e.located(figment))
    }

    /// Checks `settings` and compiles their limits: each rule is checked here, once.
    ///
    /// ```
    /// use tollgate::config::{Config, Settings, TierConfig};
    ///
    /// let mut settings = Settings::default();
    /// settings.tiers.insert(
    ///     "anonymous".into(),
    ///     TierConfig { requests_per_minute: Some(30.0), burst: Some(5), ..TierConfig::default() },
    /// );
    /// let config = Config::new(settings).unwrap();
    /// assert_eq!(config.limits().default_tier().policies()[0].quota().burst(), 5);
    /// assert!(Config::new(Settings::default()).is_err(), "no tier");
    /// ```
    pub fn new(settings: Settings) -> Result<Self, ConfigError> {
        let limits = settings.compile()?;
        Ok(Self { settings, limits })
    }

    /// The settings, as written (defaults filled in).
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The tiers, routes and bands, compiled.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The settings and the limits, for the layer to take apart.
    pub(crate) fn into_parts(self) -> (Settings, Limits) {
        (self.settings, self.limits)
    }

    /// The allow list of `[allow]`, resolving client addresses as the extractor does (through
    /// `trusted_proxies`).
    ///
    /// ```
    /// use tollgate::Config;
    /// let config = Config::from_toml(r#"
    ///     [tiers.anonymous]
    ///     requests_per_minute = 30
    ///     burst = 5
    ///     [allow]
    ///     ips = ["10.20.0.0/16"]
    ///     keys = ["internal-monitor-key"]
    /// "#).unwrap();
    /// assert!(!config.allow_list().is_empty());
    /// let err = Config::from_toml(r#"[tiers.anonymous]
    /// requests_per_minute = 1
    /// burst = 1
    /// [allow]
    /// ips = ["nope"]
    /// "#).unwrap_err();
    /// assert!(err.to_string().contains("allow.ips"), "{err}");
    /// ```
    pub fn allow_list(&self) -> AllowList {
        self.settings.allow_list()
    }

    /// The key extractor this configuration describes: an auth layer's
    /// [`Client`], else a known `X-API-Key`, else the client IP.
    pub fn extractor(&self) -> DefaultExtractor {
        self.settings.extractor(&self.limits)
    }
}

impl Settings {
    /// Checks every key and compiles the limits, or names the first invalid key. The rules of
    /// the limits themselves are [`LimitsBuilder`]'s; what is checked here is what only the
    /// file has (types and ranges of its values, API keys, alerts, the store).
    fn compile(&self) -> Result<Limits, ConfigError> {
        let mut builder = LimitsBuilder::default().algorithm(self.algorithm).mode(self.mode);
        for (name, tier) in &self.tiers {
            builder = builder.tier(name, tier.spec(name)?);
        }
        if let Some(name) = &self.default_tier {
            builder = builder.default_tier(name);
        }
        for (key, entry) in &self.api_keys {
            check_api_key(key, entry, &self.tiers)?;
        }
        for (i, key) in self.allow.keys.iter().enumerate() {
            if key.is_empty() || http::HeaderValue::from_str(key).is_err() {
                return Err(ConfigError::invalid(
                    format!("allow.keys[{i}]"),
                    "an allowed key is a non-empty header value (visible ASCII)",
                ));
            }
        }
        for (i, key) in self.admin.keys.iter().enumerate() {
            if key.is_empty() || http::HeaderValue::from_str(key).is_err() {
                return Err(ConfigError::invalid(
                    format!("admin.keys[{i}]"),
                    "an admin key is a non-empty header value (visible ASCII)",
                ));
            }
        }
        // The operator's routes are never charged.
        if !self.admin.keys.is_empty() {
            for route in ["/admin", "/admin/usage"] {
                if !self.routes.contains_key(route) && !self.exempt.routes.iter().any(|r| r == route) {
                    builder = builder.exempt(route);
                }
            }
        }
        if self.history.enabled && self.history.max_clients == 0 {
            return Err(ConfigError::invalid(
                "history.max_clients",
                "must be at least 1 (or set enabled = false)",
            ));
        }
        for (route, entry) in &self.routes {
            let cost = u32::try_from(entry.cost).map_err(|_| {
                ConfigError::invalid(
                    format!("routes.\"{route}\""),
                    format!("a cost is a whole number of tokens, 0 or more (found {})", entry.cost),
                )
            })?;
            builder = builder.route_charged(route, cost, entry.charge);
        }
        for route in &self.exempt.routes {
            builder = builder.exempt(route);
        }
        if let Some(degrade) = &self.degrade {
            let bands = Bands { cached_below: degrade.cached_below, minimal_below: degrade.minimal_below };
            builder = builder.degrade(degrade.routes.iter().map(String::as_str), bands);
        }
        for (route, &limit) in &self.concurrency {
            let limit = u32::try_from(limit).ok().filter(|&l| l > 0).ok_or_else(|| {
                ConfigError::invalid(
                    format!("concurrency.\"{route}\""),
                    format!("must be a whole number of at least 1 (found {limit})"),
                )
            })?;
            builder = builder.route_concurrency(route, limit);
        }
        if !(self.alerts.near_quota > 0.0 && self.alerts.near_quota <= 1.0) {
            return Err(ConfigError::invalid("alerts.near_quota", "must be above 0 and at most 1"));
        }
        if let Some(url) = &self.alerts.webhook {
            check_webhook(url)?;
        }
        if let Some(email) = &self.alerts.email {
            check_email(email)?;
        }
        if self.ipv6_prefix > 128 {
            return Err(ConfigError::invalid(
                "ipv6_prefix",
                format!("must be 0 to 128 (found {})", self.ipv6_prefix),
            ));
        }
        self.store.validate()?;
        Ok(builder.build()?)
    }

    /// How client addresses are found: the key extractor and the allow list agree.
    fn client_ip(&self) -> ClientIp {
        ClientIp::new()
            .trusted(self.trusted_proxies.iter().copied())
            .header(self.client_ip_header)
            .ipv6_prefix(self.ipv6_prefix)
    }

    fn allow_list(&self) -> AllowList {
        AllowList::new().ips(self.allow.ips.iter().copied()).keys(&self.allow.keys).resolver(self.client_ip())
    }

    fn extractor(&self, limits: &Limits) -> DefaultExtractor {
        let keys = self.api_keys.iter().fold(ApiKeys::new("x-api-key"), |keys, (k, entry)| {
            let mut client = Client::new(Key::new(k.as_str())).with_tier(entry.tier());
            if let Some(name) = entry.name() {
                client = client.with_name(name);
            }
            if let Some(email) = entry.email() {
                client = client.with_email(email);
            }
            keys.client(k, client)
        });
        FromExtension.or(keys.for_limits(limits)).or(self.client_ip())
    }
}

/// An `[api_keys]` entry: a defined tier, a name people can read, an email address.
fn check_api_key(
    key: &str,
    entry: &ApiKeyConfig,
    tiers: &BTreeMap<String, TierConfig>,
) -> Result<(), ConfigError> {
    // The key is a secret: an error (which lands in logs) shows only a short prefix of it.
    let shown = crate::key::redact(key);
    let at = |field: Option<&str>| match (entry, field) {
        (ApiKeyConfig::Client(_), Some(field)) => format!("api_keys.\"{}\".{field}", shown.escape_debug()),
        _ => format!("api_keys.\"{}\"", shown.escape_debug()),
    };
    let tier = entry.tier();
    if !tiers.contains_key(tier) {
        return Err(ConfigError::invalid(
            at(Some("tier")),
            format!("names the tier `{tier}`, which is not defined under [tiers]"),
        ));
    }
    if let Some(name) = entry.name() {
        if name.trim().is_empty() || name.chars().any(char::is_control) {
            return Err(ConfigError::invalid(at(Some("name")), "a name is non-empty text on one line"));
        }
    }
    if let Some(email) = entry.email() {
        if !is_email_address(email) {
            return Err(ConfigError::invalid(
                at(Some("email")),
                format!("`{email}` is not an email address"),
            ));
        }
    }
    Ok(())
}

#[cfg(feature = "email")]
fn is_email_address(text: &str) -> bool {
    crate::observe::EmailAlerts::is_address(text)
}

#[cfg(not(feature = "email"))]
fn is_email_address(text: &str) -> bool {
    text.split_once('@')
        .is_some_and(|(user, domain)| !user.is_empty() && (domain.contains('.') || domain == "localhost"))
        && !text.chars().any(|c| c.is_whitespace() || c.is_control())
}

#[cfg(feature = "email")]
fn check_email(email: &EmailConfig) -> Result<(), ConfigError> {
    use crate::observe::{EmailAlerts, EmailError};
    if email.smtp.is_empty() {
        return Err(ConfigError::invalid(
            "alerts.email.smtp",
            "is required: the mail relay, e.g. smtp://127.0.0.1:2525",
        ));
    }
    if email.from.is_empty() {
        return Err(ConfigError::invalid("alerts.email.from", "is required: the sender address"));
    }
    if email.min_interval_s == 0 {
        return Err(ConfigError::invalid("alerts.email.min_interval_s", "must be at least 1"));
    }
    EmailAlerts::check(&email.smtp, &email.from).map_err(|e| match e {
        EmailError::BadFrom(_) => ConfigError::invalid("alerts.email.from", e.to_string()),
        _ => ConfigError::invalid("alerts.email.smtp", e.to_string()),
    })
}

#[cfg(not(feature = "email"))]
fn check_email(_: &EmailConfig) -> Result<(), ConfigError> {
    Err(ConfigError::invalid("alerts.email", "is set but tollgate was built without its `email` feature"))
}

#[cfg(feature = "webhook")]
fn check_webhook(url: &str) -> Result<(), ConfigError> {
    crate::observe::Webhook::check_url(url)
        .map(drop)
        .map_err(|e| ConfigError::invalid("alerts.webhook", e.to_string()))
}

#[cfg(not(feature = "webhook"))]
fn check_webhook(_: &str) -> Result<(), ConfigError> {
    Err(ConfigError::invalid("alerts.webhook", "is set but tollgate was built without its `webhook` feature"))
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
        if let Some(mode) = self.mode {
            spec = spec.mode(mode);
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
        if let Some(delay) = self.max_delay_ms {
            let delay = u64::try_from(delay).map_err(|_| {
                ConfigError::invalid(
                    key("max_delay_ms"),
                    format!("must be a whole number of milliseconds, 0 or more (found {delay})"),
                )
            })?;
            spec = spec.max_delay(Nanos::from_millis(delay));
        }
        Ok(spec)
    }
}

#[cfg(all(test, feature = "config"))]
mod tests;
