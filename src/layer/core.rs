//! What every clone of a layer shares: the limits in force and the state they act on. Not
//! generic, so the response future does not carry the extractor's type.

use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;

use super::concurrency::InFlight;
use crate::answer::{Answers, HeaderMode};
use crate::clock::{Clock, SystemClock};
use crate::degrade::{CacheLimits, ResponseCache};
use crate::history::History;
use crate::key::Key;
use crate::observe::Observer;
use crate::policy::Limits;
use crate::store::{OnError, Store};

/// The limits a request is planned under, with everything derived from them once: the
/// constant header values of each tier, and how headers are written.
///
/// A [`Plan`](super::pipeline::Plan) refers to the snapshot it was made from, never to "the
/// layer's current limits": hot reload will swap the layer's snapshot atomically (an
/// `ArcSwap<Snapshot>` in place of the `Arc`), and a request in flight finishes under the
/// limits it started with.
#[derive(Debug, Clone)]
pub(crate) struct Snapshot {
    pub(crate) limits: Limits,
    pub(crate) answers: Answers,
    pub(crate) headers: HeaderMode,
}

impl Snapshot {
    pub(crate) fn new(limits: Limits, headers: HeaderMode) -> Self {
        Self { answers: Answers::new(&limits), limits, headers }
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

/// The layer's shared part: cheap to clone (every field is shared), and cloned only when a
/// builder method changes a layer that has already been cloned.
#[derive(Clone)]
pub(crate) struct Core {
    pub(crate) snapshot: Arc<Snapshot>,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) on_error: OnError,
    pub(crate) observer: Option<Arc<dyn Observer>>,
    /// The cached band's copies: present when the limits have degradation bands.
    pub(crate) cache: Option<Arc<ResponseCache>>,
    pub(crate) cache_limits: CacheLimits,
    pub(crate) inflight: Arc<InFlight>,
    /// Reads the time for the layer's own needs (the fault log's throttle).
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) warnings: Arc<Warnings>,
    /// The one key of requests no extractor recognises.
    pub(crate) unidentified: Key,
    /// The usage history, when one is kept (it is also one of the observers).
    pub(crate) history: Option<History>,
    /// `X-API-Key` values that may read the operator's view.
    pub(crate) admin_keys: Arc<[Box<str>]>,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("tiers", &self.snapshot.limits.tiers().len())
            .field("headers", &self.snapshot.headers)
            .field("on_error", &self.on_error)
            .finish_non_exhaustive()
    }
}

impl Core {
    pub(crate) fn new(limits: Limits, store: Arc<dyn Store>, headers: HeaderMode, on_error: OnError) -> Self {
        let mut core = Self {
            snapshot: Arc::new(Snapshot::new(limits, headers)),
            store,
            on_error,
            observer: None,
            cache: None,
            cache_limits: CacheLimits::default(),
            inflight: Arc::new(InFlight::new()),
            clock: Arc::new(SystemClock::new()),
            warnings: Arc::default(),
            unidentified: Key::new("unidentified"),
            history: None,
            admin_keys: Arc::new([]),
        };
        core.fit_cache();
        core
    }

    /// Makes the response cache match the limits: one when they degrade, none otherwise.
    pub(crate) fn fit_cache(&mut self) {
        let wanted = self.snapshot.limits.bands().is_some();
        match (&self.cache, wanted) {
            (None, true) => self.cache = Some(Arc::new(ResponseCache::new(self.cache_limits))),
            (Some(_), false) => self.cache = None,
            _ => {}
        }
    }

    /// The snapshot, to change in place (cloned first if a layer clone still uses it).
    pub(crate) fn snapshot_mut(&mut self) -> &mut Snapshot {
        Arc::make_mut(&mut self.snapshot)
    }
}
