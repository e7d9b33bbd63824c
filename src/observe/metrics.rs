//! Counting decisions through the `metrics` facade: [`MetricsObserver`].

use std::collections::HashSet;
use std::sync::{Arc, PoisonError, RwLock};

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Unit};

use super::{Event, Observer, Outcome};
use crate::degrade::Band;
use crate::store::Store;

/// Decisions, by `tier`, `route` and `outcome` (`admitted`, `degraded`, `rejected`, `exceeds`,
/// `store_fault`).
pub const DECISIONS: &str = "tollgate_decisions_total";
/// Degraded answers, by `tier`, `route` and `band` (`cached`, `minimal`).
pub const DEGRADED: &str = "tollgate_degraded_total";
/// Store faults, by `tier`.
pub const STORE_FAULTS: &str = "tollgate_store_faults_total";
/// Tokens charged, by `tier` and `route`.
pub const TOKENS_CHARGED: &str = "tollgate_tokens_charged_total";
/// The share of the capacity left after each decision (the headline policy's), by `tier`.
pub const REMAINING_RATIO: &str = "tollgate_remaining_ratio";
/// Policy states the store keeps (keys tracked × policies), when the store knows.
pub const KEYS_TRACKED: &str = "tollgate_keys_tracked";

/// The label value of routes past the limit of distinct routes.
const OTHER: &str = "other";

/// An [`Observer`] that records every decision through the [`metrics`] facade, for whichever
/// recorder the application installed (Prometheus, StatsD, …).
///
/// Label values are bounded so a scan of random paths cannot explode the number of series:
/// `tier` is a configured tier name, `outcome` and `band` are fixed words, and `route` is the
/// route template the limiter charged: axum's `MatchedPath`, or a route of the route table.
/// A raw path that is neither (a 404 under `Router::layer`, a service without templates whose
/// path the table does not name) is whatever the client asked for, so all such paths share the
/// label value `other`: a scan of random paths never takes the label of a real route. Past
/// [`max_routes`](Self::max_routes) distinct templates (100 by default), later ones are
/// counted as `other` too.
///
/// Recorded: [`DECISIONS`], [`DEGRADED`], [`STORE_FAULTS`], [`TOKENS_CHARGED`] (counters),
/// [`REMAINING_RATIO`] (histogram) and, through [`record_tracked`](Self::record_tracked),
/// [`KEYS_TRACKED`] (gauge).
///
/// ```
/// # use nonzero_ext::nonzero;
/// use tollgate::observe::{LogNearQuota, MetricsObserver, NearQuota};
/// # use tollgate::{algorithm::Quota, policy::{Limits, TierSpec}, RateLimitLayer};
/// # let limits = Limits::builder().tier("anonymous", TierSpec::new(Quota::per_second(nonzero!(1u32)))).build().unwrap();
/// let layer = RateLimitLayer::from_limits(limits)
///     .observer((MetricsObserver::new(), NearQuota::new(LogNearQuota)));
/// # let _ = layer;
/// ```
#[derive(Debug)]
pub struct MetricsObserver {
    routes: Interner,
    tiers: Interner,
}

impl Default for MetricsObserver {
    fn default() -> Self {
        Self::new()
    }
}

impl MetricsObserver {
    /// An observer recording to the global recorder. Describes the metrics to the recorder
    /// installed now (see [`describe`](Self::describe)).
    pub fn new() -> Self {
        Self::describe();
        Self { routes: Interner::new(100), tiers: Interner::new(1_000) }
    }

    /// Gives at most `routes` distinct routes a label value of their own.
    ///
    /// ```
    /// # use tollgate::observe::MetricsObserver;
    /// let observer = MetricsObserver::new().max_routes(20);
    /// # let _ = observer;
    /// ```
    pub fn max_routes(mut self, routes: usize) -> Self {
        self.routes.max = routes;
        self
    }

    /// Tells the installed recorder the unit and meaning of each metric (its `# HELP`).
    /// Called by [`new`](Self::new); call it again if the recorder is installed later.
    pub fn describe() {
        describe_counter!(DECISIONS, Unit::Count, "Rate-limit decisions by tier, route and outcome.");
        describe_counter!(DEGRADED, Unit::Count, "Degraded answers by tier, route and band.");
        describe_counter!(STORE_FAULTS, Unit::Count, "Requests the rate-limit store could not decide.");
        describe_counter!(TOKENS_CHARGED, Unit::Count, "Tokens charged by tier and route.");
        describe_histogram!(
            REMAINING_RATIO,
            "Share of the capacity left after each decision (the policy closest to its limit)."
        );
        describe_gauge!(KEYS_TRACKED, Unit::Count, "Policy states the rate-limit store keeps.");
    }

    /// Sets the [`KEYS_TRACKED`] gauge from `store` (when the store knows the number). A
    /// scrape handler calls it just before rendering.
    ///
    /// ```
    /// use tollgate::observe::MetricsObserver;
    /// use tollgate::store::MemoryStore;
    /// MetricsObserver::record_tracked(&MemoryStore::new());
    /// ```
    pub fn record_tracked(store: &dyn Store) {
        if let Some(tracked) = store.tracked() {
            gauge!(KEYS_TRACKED).set(tracked as f64);
        }
    }
}

impl Observer for MetricsObserver {
    fn on_event(&self, event: &Event<'_>) {
        let tier = self.tiers.get(event.tier.name());
        // A raw path is whatever a client asked for (a scan of 404s): one label for all of them,
        // so that it never takes the label of a real route.
        let route = if event.known_route { self.routes.get(event.route) } else { self.routes.other.clone() };
        let (outcome, decision) = match event.outcome {
            Outcome::Admitted(d) => ("admitted", d),
            Outcome::Delayed(d) => ("delayed", d),
            Outcome::Settled(d) => {
                // Counters only grow: an extra charge is counted, a refund is not taken back.
                let extra = d.charged().saturating_sub(event.cost);
                if extra > 0 {
                    counter!(TOKENS_CHARGED, "tier" => tier, "route" => route).increment(extra);
                }
                return;
            }
            Outcome::Degraded(d, band) => {
                let band = match band {
                    Band::Cached => "cached",
                    Band::Minimal => "minimal",
                    Band::Full => "full",
                };
                counter!(DEGRADED, "tier" => tier.clone(), "route" => route.clone(), "band" => band)
                    .increment(1);
                ("degraded", d)
            }
            Outcome::Rejected(d) => ("rejected", d),
            Outcome::Exceeds(d) => ("exceeds", d),
            Outcome::StoreFault(_) => {
                counter!(STORE_FAULTS, "tier" => tier.clone()).increment(1);
                counter!(DECISIONS, "tier" => tier, "route" => route, "outcome" => "store_fault")
                    .increment(1);
                return;
            }
        };
        if decision.charged() > 0 {
            counter!(TOKENS_CHARGED, "tier" => tier.clone(), "route" => route.clone())
                .increment(decision.charged());
        }
        histogram!(REMAINING_RATIO, "tier" => tier.clone()).record(decision.headline().fraction());
        counter!(DECISIONS, "tier" => tier, "route" => route, "outcome" => outcome).increment(1);
    }
}

/// Shares label values, and caps how many distinct ones there are.
#[derive(Debug)]
struct Interner {
    seen: RwLock<HashSet<Arc<str>>>,
    max: usize,
    other: Arc<str>,
}

impl Interner {
    fn new(max: usize) -> Self {
        Self { seen: RwLock::default(), max, other: Arc::from(OTHER) }
    }

    fn get(&self, value: &str) -> Arc<str> {
        if let Some(v) = self.seen.read().unwrap_or_else(PoisonError::into_inner).get(value) {
            return v.clone();
        }
        let mut seen = self.seen.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(v) = seen.get(value) {
            return v.clone();
        }
        if seen.len() >= self.max {
            return self.other.clone();
        }
        let v: Arc<str> = Arc::from(value);
        seen.insert(v.clone());
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 11 (suspected, confirmed): the first 100 route values got their own label, so a
    /// scan of 404s on raw paths took every slot before the real routes got one.
    #[cfg(feature = "prometheus")]
    #[test]
    fn a_scan_of_raw_paths_never_takes_a_real_routes_label() {
        use crate::algorithm::Quota;
        use crate::clock::Nanos;
        use crate::key::Key;
        use crate::policy::{Limits, TierSpec};
        use crate::store::{Decision, Verdict};

        let limits = Limits::builder()
            .tier("anonymous", TierSpec::new(Quota::per_second(std::num::NonZeroU32::new(1).unwrap())))
            .build()
            .unwrap();
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let observer = metrics::with_local_recorder(&recorder, MetricsObserver::new);
        let key = Key::new("k");
        let decision = Decision::new(Verdict::Admitted, Nanos::ZERO, 1.0, 1);
        let send = |route: &str, known_route: bool| {
            observer.on_event(&Event {
                key: &key,
                name: None,
                email: None,
                identified: true,
                tier: limits.default_tier(),
                method: &http::Method::GET,
                route,
                known_route,
                cost: 1,
                outcome: Outcome::Admitted(&decision),
            })
        };
        metrics::with_local_recorder(&recorder, || {
            for i in 0..1_000 {
                send(&format!("/wp-admin/{i}.php"), false);
            }
            send("/api/orders/{id}", true);
        });
        let text = handle.render();
        assert!(text.contains("route=\"/api/orders/{id}\""), "{text}");
        assert!(!text.contains("wp-admin"), "{text}");
        assert!(text.contains("route=\"other\""), "{text}");
    }

    #[test]
    fn routes_past_the_cap_are_other() {
        let interner = Interner::new(2);
        assert_eq!(&*interner.get("/a"), "/a");
        assert_eq!(&*interner.get("/b"), "/b");
        assert_eq!(&*interner.get("/c"), "other");
        assert_eq!(&*interner.get("/a"), "/a");
    }
}
