//! What every clone of a layer shares: the limits in force (one atomically swappable
//! [`Snapshot`]) and the state they act on. [`Core`] is not generic, so the response future
//! does not carry the extractor's type.

use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use super::concurrency::InFlight;
use crate::answer::{Answers, HeaderMode};
use crate::clock::{Clock, SystemClock};
use crate::config::Settings;
use crate::degrade::{CacheLimits, ResponseCache};
use crate::history::History;
use crate::key::{AllowList, Key};
use crate::observe::Observer;
use crate::policy::Limits;
use crate::store::{OnError, Store};

/// The limits a request is planned under, with everything derived from them once (the
/// constant header values of each tier, how headers are written), and everything else a
/// reload replaces: the allow list, the response cache of the degradation bands, the
/// near-quota alerts, the admin keys.
///
/// A [`Plan`](super::pipeline::Plan) refers to the snapshot it was made from, never to "the
/// layer's current limits": a reload swaps the layer's snapshot atomically, and a request in
/// flight finishes under the limits it started with.
#[derive(Clone)]
pub(crate) struct Snapshot {
    /// The layer's shared part (the same as the layer's own): here too, so that what a request
    /// keeps until its answer (its [`Bill`](super::settle::Bill)) shares one `Arc`, not two.
    pub(crate) core: Arc<Core>,
    pub(crate) limits: Arc<Limits>,
    pub(crate) answers: Answers,
    pub(crate) headers: HeaderMode,
    /// Clients never limited.
    pub(crate) allow: AllowList,
    /// The cached band's copies: present when the limits have degradation bands.
    pub(crate) cache: Option<Arc<ResponseCache>>,
    pub(crate) cache_limits: CacheLimits,
    /// The configuration's near-quota alerts (told before the layer's other observers).
    pub(crate) alerts: Option<Arc<dyn Observer>>,
    /// `X-API-Key` values that may read the operator's view.
    pub(crate) admin_keys: Arc<[Box<str>]>,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("tiers", &self.limits.tiers().len())
            .field("headers", &self.headers)
            .field("allow", &!self.allow.is_empty())
            .finish_non_exhaustive()
    }
}

impl Snapshot {
    pub(crate) fn new(core: Arc<Core>, limits: Limits, headers: HeaderMode) -> Self {
        let mut snapshot = Self {
            core,
            answers: Answers::new(&limits),
            limits: Arc::new(limits),
            headers,
            allow: AllowList::new(),
            cache: None,
            cache_limits: CacheLimits::default(),
            alerts: None,
            admin_keys: Arc::new([]),
        };
        snapshot.fit_cache(None);
        snapshot
    }

    /// Makes the response cache match the limits: one when they degrade, none otherwise. The
    /// cache of `previous` is kept when it fits (same bounds), so a reload keeps its copies.
    pub(crate) fn fit_cache(&mut self, previous: Option<&Snapshot>) {
        self.cache = match self.limits.bands() {
            None => None,
            Some(_) => match previous {
                Some(p) if p.cache.is_some() && p.cache_limits == self.cache_limits => p.cache.clone(),
                _ => Some(Arc::new(ResponseCache::new(self.cache_limits))),
            },
        };
    }

    /// The limits, to change in place (copied first if a snapshot in use shares them).
    pub(crate) fn limits_mut(&mut self) -> &mut Limits {
        Arc::make_mut(&mut self.limits)
    }
}

/// What a request reads once, atomically: the snapshot and the key extractor in force.
#[derive(Debug)]
pub(crate) struct Live<K> {
    pub(crate) snapshot: Arc<Snapshot>,
    pub(crate) extractor: Arc<K>,
}

/// What a layer, its clones, its services and its [`Reloader`](super::Reloader) share: the
/// live snapshot (one lock-free load per request) and what reloading needs.
pub(crate) struct Shared<K> {
    pub(crate) live: ArcSwap<Live<K>>,
    /// What the layer was built from; the lock also makes reloads one at a time.
    pub(crate) built: Mutex<Built>,
    /// Builds the extractor a configuration describes, when the layer's extractor is the
    /// configuration's own (a custom extractor is kept as it is).
    pub(crate) rebuild: Option<fn(&crate::Config) -> K>,
    pub(crate) reloads_ok: AtomicU64,
    pub(crate) reloads_failed: AtomicU64,
}

/// What a reload compares the new configuration with.
#[derive(Debug, Default)]
pub(crate) struct Built {
    /// The settings in force, for a layer built from a configuration.
    pub(crate) settings: Option<Settings>,
}

impl<K> Shared<K> {
    pub(crate) fn new(
        live: Live<K>,
        settings: Option<Settings>,
        rebuild: Option<fn(&crate::Config) -> K>,
    ) -> Self {
        Self {
            live: ArcSwap::from_pointee(live),
            built: Mutex::new(Built { settings }),
            rebuild,
            reloads_ok: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
        }
    }

    /// The same live state, the same build, in a new shared part (a layer changed by a builder
    /// method after it was cloned leaves its clones theirs).
    pub(crate) fn fork(&self, live: Live<K>) -> Self {
        let settings = self.built.lock().unwrap_or_else(std::sync::PoisonError::into_inner).settings.clone();
        Self::new(live, settings, self.rebuild)
    }
}

impl<K> std::fmt::Debug for Shared<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").field("snapshot", &self.live.load().snapshot).finish_non_exhaustive()
    }
}

/// Warnings the layer gives at most so often, whatever the rate of requests.
#[derive(Debug, Default)]
pub(crate) struct Warnings {
    /// A request matched no key extractor (logged once).
    pub(crate) unidentified: AtomicBool,
    /// The second (Unix epoch) of the last store-fault warning.
    pub(crate) last_fault: AtomicU64,
}

/// The layer's shared part that no reload changes: cheap to clone (every field is shared), and
/// cloned only when a builder method changes a layer that has already been cloned.
#[derive(Clone)]
pub(crate) struct Core {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) on_error: OnError,
    /// The observers added in code (the configuration's alerts are in the snapshot).
    pub(crate) observer: Option<Arc<dyn Observer>>,
    pub(crate) inflight: Arc<InFlight>,
    /// Reads the time for the layer's own needs (the fault log's throttle, reload instants).
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) warnings: Arc<Warnings>,
    /// The one key of requests no extractor recognises.
    pub(crate) unidentified: Key,
    /// The usage history, when one is kept (it is also one of the observers).
    pub(crate) history: Option<History>,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core").field("on_error", &self.on_error).finish_non_exhaustive()
    }
}

impl Core {
    pub(crate) fn new(store: Arc<dyn Store>, on_error: OnError) -> Self {
        Self {
            store,
            on_error,
            observer: None,
            inflight: Arc::new(InFlight::new()),
            clock: Arc::new(SystemClock::new()),
            warnings: Arc::default(),
            unidentified: Key::new("unidentified"),
            history: None,
        }
    }
}
