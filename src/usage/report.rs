//! The JSON documents of `/usage` and `/policy`.

use serde::{Deserialize, Serialize};

use crate::algorithm::Algorithm;
use crate::history::UsageHistory;
use crate::layer::Standing;
use crate::policy::{Limits, Policy, Tier};

/// How the caller is identified: by address, or by a key (an API key, a user id…).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyedBy {
    /// The client's IP address (IPv6: its prefix), shown as `ip`.
    Ip,
    /// A named key, never shown (it may be a secret).
    Key,
}

/// The caller's standing: the body of `GET /usage`.
///
/// `limit`, `remaining` and `reset` describe the headline policy (the one with the smallest
/// share left), as the `X-RateLimit-*` headers do; `policies` has each policy of the tier.
///
/// ```
/// use nonzero_ext::nonzero;
/// use tollgate::usage::UsageReport;
/// # use tollgate::{algorithm::Quota, policy::{Limits, TierSpec}, RateLimitLayer};
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let limits = Limits::builder()
///     .tier("anonymous", TierSpec::new(Quota::per_minute(nonzero!(30u32)).allow_burst(nonzero!(5u32))).daily(100))
///     .build().unwrap();
/// let layer = RateLimitLayer::from_limits(limits);
/// let mut req = http::Request::new(());
/// req.extensions_mut().insert("192.0.2.1:9".parse::<std::net::SocketAddr>().unwrap());
/// let standing = layer.standing(&req.into_parts().0).await.unwrap();
/// let report = UsageReport::new(&standing);
/// assert_eq!(report.tier, "anonymous");
/// assert_eq!((report.limit, report.remaining), (5, 5));
/// assert_eq!(report.policies[1].name, "anonymous-daily");
/// assert_eq!(report.ip.as_deref(), Some("192.0.2.1"));
/// # });
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct UsageReport {
    /// The caller's tier.
    pub tier: String,
    /// How the caller is identified.
    pub keyed_by: KeyedBy,
    /// The caller's address (or IPv6 prefix), when keyed by it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// The headline policy's capacity (burst).
    pub limit: u64,
    /// Whole tokens left in the headline policy.
    pub remaining: u64,
    /// Unix epoch seconds at which the headline policy is full again.
    pub reset: u64,
    /// Each policy of the tier, in order (the burst policy first).
    pub policies: Vec<PolicyUsage>,
    /// Where to get a higher limit, when the tier has such a page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgrade_url: Option<String>,
    /// How people know the caller (`name` in `[api_keys]`), when it has a name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The caller's usage over time, when the layer keeps a history: empty for a caller
    /// identified only by its address (see [`History`](crate::history::History)).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<UsageHistory>,
}

/// One policy of the caller's tier, in a [`UsageReport`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PolicyUsage {
    /// The policy's name (as in the `RateLimit` headers).
    pub name: String,
    /// Capacity (burst).
    pub limit: u64,
    /// Whole tokens left.
    pub remaining: u64,
    /// Unix epoch seconds at which it is full again.
    pub reset: u64,
    /// Seconds to refill it from empty (the `w` of `RateLimit-Policy`).
    pub window: u64,
}

impl UsageReport {
    /// The report of a standing (from [`RateLimitLayer::standing`](crate::RateLimitLayer::standing)).
    pub fn new(standing: &Standing<'_>) -> Self {
        let decision = &standing.decision;
        let tier = standing.tier;
        let headline = decision.headline();
        let policies = decision
            .policies()
            .iter()
            .map(|state| {
                let policy = tier.policies().get(usize::from(state.index));
                PolicyUsage {
                    name: policy.map_or(tier.name(), Policy::name).to_owned(),
                    limit: state.limit,
                    remaining: state.remaining,
                    reset: decision.reset_epoch_secs(state),
                    window: policy.map_or(0, |p| p.quota().window_secs()),
                }
            })
            .collect();
        let ip = standing.key.ip();
        Self {
            tier: tier.name().to_owned(),
            keyed_by: if ip.is_some() { KeyedBy::Ip } else { KeyedBy::Key },
            ip: ip.map(|ip| ip.to_string()),
            limit: headline.limit,
            remaining: headline.remaining,
            reset: decision.reset_epoch_secs(&headline),
            policies,
            upgrade_url: tier.upgrade_url().map(str::to_owned),
            name: standing.name.as_deref().map(str::to_owned),
            history: None,
        }
    }
}

/// Every tier's limits and every route's cost: the body of `GET /policy`.
///
/// ```
/// use nonzero_ext::nonzero;
/// use tollgate::algorithm::Quota;
/// use tollgate::policy::{Limits, TierSpec};
/// use tollgate::usage::PublishedLimits;
///
/// let limits = Limits::builder()
///     .tier("anonymous", TierSpec::new(Quota::per_minute(nonzero!(30u32)).allow_burst(nonzero!(5u32))))
///     .tier("free", TierSpec::new(Quota::per_minute(nonzero!(60u32)).allow_burst(nonzero!(10u32))).daily(10_000)
///         .upgrade_url("https://example.com/pricing"))
///     .route("POST /api/generate", 20)
///     .exempt("/health")
///     .build().unwrap();
/// let published = PublishedLimits::new(&limits);
/// assert_eq!(published.default_tier, "anonymous");
/// assert_eq!(published.default_cost, 1);
/// let free = &published.tiers[1];
/// assert_eq!(free.policies[0].requests_per_minute, 60.0);
/// assert_eq!(free.policies[1].name, "free-daily");
/// assert_eq!(free.policies[1].window, 86_400);
/// assert_eq!(published.routes[0].route, "/health");
/// assert!(published.routes[0].exempt);
/// assert_eq!(published.routes[1].cost, 20);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PublishedLimits {
    /// The tier of clients without a known API key.
    pub default_tier: String,
    /// What a route missing from `routes` costs.
    pub default_cost: u32,
    /// Every tier, in the order defined.
    pub tiers: Vec<TierLimits>,
    /// Every route with a rule of its own, sorted by route.
    pub routes: Vec<RouteCost>,
}

/// One tier, in [`PublishedLimits`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TierLimits {
    /// The tier's name.
    pub name: String,
    /// Its policies, the burst policy first.
    pub policies: Vec<PolicyLimits>,
    /// Where to get a higher limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgrade_url: Option<String>,
    /// The most requests in flight at once, when capped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
}

/// One policy, in [`TierLimits`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PolicyLimits {
    /// The policy's name (as in the `RateLimit` headers).
    pub name: String,
    /// The algorithm.
    pub algorithm: Algorithm,
    /// Capacity: requests of cost 1 admitted back to back from full.
    pub burst: u64,
    /// Tokens refilled per second (to six decimals).
    pub requests_per_second: f64,
    /// Tokens refilled per minute (to six decimals).
    pub requests_per_minute: f64,
    /// Seconds to refill from empty (the `w` of `RateLimit-Policy`).
    pub window: u64,
}

/// One route's rule, in [`PublishedLimits`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RouteCost {
    /// `"/path"` or `"METHOD /path"`, an axum route template.
    pub route: String,
    /// Tokens charged per request (0 for an exempt route).
    pub cost: u32,
    /// Never limited.
    pub exempt: bool,
    /// Answered more cheaply as the caller's tokens run low.
    pub degrade: bool,
}

impl PublishedLimits {
    /// The published form of `limits`.
    pub fn new(limits: &Limits) -> Self {
        let mut routes: Vec<RouteCost> = limits
            .routes()
            .entries()
            .map(|(route, rule)| RouteCost {
                route,
                cost: rule.cost,
                exempt: rule.exempt,
                degrade: rule.degrade,
            })
            .collect();
        routes.sort_by(|a, b| a.route.cmp(&b.route));
        Self {
            default_tier: limits.default_tier().name().to_owned(),
            // No route template is empty, so this is the table's default rule.
            default_cost: limits.routes().lookup(&http::Method::GET, "").cost,
            tiers: limits.tiers().iter().map(TierLimits::new).collect(),
            routes,
        }
    }
}

impl TierLimits {
    fn new(tier: &Tier) -> Self {
        Self {
            name: tier.name().to_owned(),
            policies: tier.policies().iter().map(PolicyLimits::new).collect(),
            upgrade_url: tier.upgrade_url().map(str::to_owned),
            concurrency: tier.concurrency(),
        }
    }
}

impl PolicyLimits {
    fn new(policy: &Policy) -> Self {
        let quota = policy.quota();
        let per_second = 1.0 / quota.emission().as_secs_f64();
        Self {
            name: policy.name().to_owned(),
            algorithm: policy.algorithm(),
            burst: quota.burst(),
            requests_per_second: round6(per_second),
            requests_per_minute: round6(per_second * 60.0),
            window: quota.window_secs(),
        }
    }
}

fn round6(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}
