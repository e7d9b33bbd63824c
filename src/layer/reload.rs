//! Hot reload: [`Reloader`], the handle that swaps a layer's limits while it serves, and the
//! helpers that call it when a configuration file changes or the process gets SIGHUP.

use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard, PoisonError};

use super::core::{Built, Core, Live, Shared, Snapshot};
use crate::answer::Answers;
use crate::config::ConfigError;
use crate::key::{DefaultExtractor, KeyExtractor};
use crate::policy::Limits;
use crate::Config;

/// Replaces the limits of a [`RateLimitLayer`](super::RateLimitLayer) while it serves; made
/// by [`RateLimitLayer::reloader`](super::RateLimitLayer::reloader). Cheap to clone.
///
/// * **Atomic, no lock on the request path.** The layer reads its limits with one lock-free
///   load per request (`arc-swap`); a reload checks the new configuration first and then swaps
///   it in at once. A request already under way finishes under the limits it started with;
///   the next one sees the new limits. Reloads are made one at a time.
/// * **State carries over.** For every client and policy name present before and after, the
///   tokens the client has used carry over: a client who used 3 of a burst of 5 has 17 left
///   when the burst becomes 20 (plus whatever refilled meanwhile), and lowering a burst takes
///   nothing back beyond the new burst. A policy that is gone is forgotten; a new one starts
///   full. The memory store converts what it keeps at once; the Redis store converts each
///   state in its script the next time it meets it (a reload costs Redis nothing). See
///   [`Rule::carry`](crate::algorithm::Rule::carry).
/// * **Everything but the store.** [`reload`](Self::reload) replaces the tiers, route costs,
///   concurrency limits, degradation bands, the mode (enforce or shadow), the allow list, the
///   headers, the near-quota alerts, the admin keys and, for a layer built from a [`Config`]
///   (with the configuration's own key extractor), the API keys and trusted proxies. A change
///   to `[store]` (or `[history]`) cannot be applied while running: it is refused with an
///   error naming `store`, and the previous configuration stays in force. So does an invalid
///   configuration, refused with the same error as at start-up.
/// * **Counted and logged.** Each reload is logged (`info`, or `error` with the reason) and
///   counted: [`stats`](Self::stats), and with the `metrics` feature
///   `tollgate_config_reloads_total{result="ok"|"error"}`.
///
/// ```
/// use tollgate::{Config, RateLimitLayer};
///
/// let config = |burst| Config::from_toml(&format!(
///     "[tiers.anonymous]\nrequests_per_minute = 60\nburst = {burst}\n"
/// )).unwrap();
/// let layer = RateLimitLayer::new(config(5));
/// let reloader = layer.reloader();
/// reloader.reload(config(20)).unwrap();
/// assert_eq!(layer.limits().default_tier().policies()[0].quota().burst(), 20);
///
/// let moved = Config::from_toml(
///     "[tiers.anonymous]\nrequests_per_minute = 60\nburst = 5\n[store]\nbackend = \"redis\"\n",
/// ).unwrap();
/// let err = reloader.reload(moved).unwrap_err();
/// assert_eq!(err.key(), Some("store"));
/// assert_eq!(layer.limits().default_tier().policies()[0].quota().burst(), 20, "unchanged");
/// assert_eq!((reloader.stats().ok, reloader.stats().errors), (1, 1));
/// ```
pub struct Reloader<K = DefaultExtractor> {
    core: Arc<Core>,
    shared: Arc<Shared<K>>,
}

impl<K> Clone for Reloader<K> {
    fn clone(&self) -> Self {
        Self { core: self.core.clone(), shared: self.shared.clone() }
    }
}

impl<K> std::fmt::Debug for Reloader<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader").field("stats", &self.stats()).finish_non_exhaustive()
    }
}

/// How many reloads a [`Reloader`] applied and refused since its layer was built.
///
/// ```
/// # use tollgate::{Config, RateLimitLayer};
/// # let layer = RateLimitLayer::new(Config::from_toml("[tiers.anonymous]\nrequests_per_second = 1\nburst = 1\n").unwrap());
/// let stats = layer.reloader().stats();
/// assert_eq!((stats.ok, stats.errors, stats.generation), (0, 0, 0));
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReloadStats {
    /// Reloads applied.
    pub ok: u64,
    /// Reloads refused (an invalid configuration, a change to `[store]`, a file not read).
    pub errors: u64,
    /// The generation of the limits in force: 0 as built, one more per reload applied.
    pub generation: u32,
}

impl<K> Reloader<K> {
    pub(crate) fn new(core: Arc<Core>, shared: Arc<Shared<K>>) -> Self {
        #[cfg(feature = "metrics")]
        for result in ["ok", "error"] {
            // Both series exist (at 0) from the start, for dashboards and alerts.
            metrics::counter!(crate::observe::CONFIG_RELOADS, "result" => result).increment(0);
        }
        Self { core, shared }
    }

    /// The limits in force now.
    pub fn limits(&self) -> Arc<Limits> {
        self.shared.live.load().snapshot.limits.clone()
    }

    /// The reloads so far.
    pub fn stats(&self) -> ReloadStats {
        ReloadStats {
            ok: self.shared.reloads_ok.load(Ordering::Relaxed),
            errors: self.shared.reloads_failed.load(Ordering::Relaxed),
            generation: self.shared.live.load().snapshot.limits.generation(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Built> {
        self.shared.built.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Puts `snapshot` in force (with `extractor`) and lets the store carry its state over.
    fn swap(&self, mut snapshot: Snapshot, extractor: Arc<K>) {
        snapshot.core = self.core.clone();
        let limits = snapshot.limits.clone();
        self.shared.live.store(Arc::new(Live { snapshot: Arc::new(snapshot), extractor }));
        self.core.store.carry_over(&limits);
    }

    fn succeeded(&self, source: &str) {
        self.shared.reloads_ok.fetch_add(1, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        metrics::counter!(crate::observe::CONFIG_RELOADS, "result" => "ok").increment(1);
        let limits = self.limits();
        tracing::info!(
            generation = limits.generation(),
            tiers = limits.tiers().len(),
            "tollgate: configuration reloaded{source}; the new limits are in force",
        );
    }

    fn failed(&self, error: &ConfigError) {
        self.shared.reloads_failed.fetch_add(1, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        metrics::counter!(crate::observe::CONFIG_RELOADS, "result" => "error").increment(1);
        tracing::error!("tollgate: invalid configuration: {error} (not reloaded: the previous configuration stays in force)");
    }

    /// Puts `limits` (defined in code) in force, keeping everything else: what a layer built
    /// with [`RateLimitLayer::from_limits`](super::RateLimitLayer::from_limits) reloads.
    /// Limits are valid by construction, so this cannot fail.
    ///
    /// ```
    /// use nonzero_ext::nonzero;
    /// use tollgate::algorithm::Quota;
    /// use tollgate::policy::{Limits, TierSpec};
    /// use tollgate::RateLimitLayer;
    ///
    /// let limits = |burst| Limits::builder()
    ///     .tier("anonymous", TierSpec::new(Quota::per_minute(nonzero!(60u32)).allow_burst(burst)))
    ///     .build().unwrap();
    /// let layer = RateLimitLayer::from_limits(limits(nonzero!(5u32)));
    /// layer.reloader().reload_limits(limits(nonzero!(50u32)));
    /// assert_eq!(layer.limits().default_tier().max_cost(), 50);
    /// ```
    pub fn reload_limits(&self, mut limits: Limits) {
        let _one_at_a_time = self.lock();
        let current = self.shared.live.load_full();
        limits.continue_from(&current.snapshot.limits, self.core.clock.now());
        let mut snapshot = (*current.snapshot).clone();
        snapshot.answers = Answers::new(&limits);
        snapshot.limits = Arc::new(limits);
        snapshot.fit_cache(Some(&current.snapshot));
        self.swap(snapshot, current.extractor.clone());
        self.succeeded("");
    }

    /// Puts the configuration `config` describes in force, or refuses it (the previous one
    /// stays): see the [type's documentation](Self) for what reloads and what does not.
    pub fn reload(&self, config: Config) -> Result<(), ConfigError> {
        let result = self.apply(config);
        match &result {
            Ok(()) => self.succeeded(""),
            Err(error) => self.failed(error),
        }
        result
    }

    fn apply(&self, config: Config) -> Result<(), ConfigError> {
        let mut built = self.lock();
        if let Some(before) = &built.settings {
            let after = config.settings();
            if before.store != after.store {
                return Err(ConfigError::invalid(
                    "store",
                    "cannot be changed while running (restart to apply it)",
                ));
            }
            if before.history != after.history {
                return Err(ConfigError::invalid(
                    "history",
                    "cannot be changed while running (restart to apply it)",
                ));
            }
        }
        let current = self.shared.live.load_full();
        let extractor = match self.shared.rebuild {
            Some(rebuild) => Arc::new(rebuild(&config)),
            None => current.extractor.clone(),
        };
        let allow = config.allow_list();
        let (settings, mut limits) = config.into_parts();
        limits.continue_from(&current.snapshot.limits, self.core.clock.now());
        let previous = built.settings.as_ref().map(|before| (before, &*current.snapshot));
        let snapshot = super::snapshot_of(&self.core, &settings, limits, allow, previous)?;
        self.swap(snapshot, extractor);
        built.settings = Some(settings);
        Ok(())
    }

    /// Reads `path` and the `TOLLGATE_` environment again ([`Config::load`]) and puts the
    /// result in force, or refuses it. An error names the file and the key, as at start-up.
    #[cfg(feature = "config")]
    pub fn load(&self, path: impl AsRef<std::path::Path>) -> Result<(), ConfigError> {
        let path = path.as_ref();
        let result = Config::load(path).and_then(|config| self.apply(config)).map_err(|error| {
            let shown = path.display().to_string();
            match error {
                ConfigError::Invalid { key, message, origin: None } => {
                    ConfigError::Invalid { key, message, origin: Some(shown) }
                }
                other => other,
            }
        });
        match &result {
            Ok(()) => self.succeeded(&format!(" from {}", path.display())),
            Err(error) => self.failed(error),
        }
        result
    }
}

impl<K: KeyExtractor> Reloader<K> {
    /// Reloads `path` at once when the process gets SIGHUP (which then never stops it), from a
    /// task on the current Tokio runtime; the reload itself runs on a blocking thread. Call it
    /// from within a runtime.
    ///
    /// ```no_run
    /// # async fn run(layer: tollgate::RateLimitLayer) -> std::io::Result<()> {
    /// let reloader = layer.reloader();
    /// let _task = reloader.reload_on_sighup("config/ratelimit.toml")?;
    /// # Ok(()) }
    /// ```
    #[cfg(all(feature = "watch", unix))]
    pub fn reload_on_sighup(
        &self,
        path: impl Into<std::path::PathBuf>,
    ) -> std::io::Result<tokio::task::JoinHandle<()>> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hangups = signal(SignalKind::hangup())?;
        let path = path.into();
        let this = self.clone();
        Ok(tokio::spawn(async move {
            while hangups.recv().await.is_some() {
                tracing::info!("tollgate: SIGHUP: reloading {}", path.display());
                let (this, path) = (this.clone(), path.clone());
                let _ = tokio::task::spawn_blocking(move || this.load(&path)).await;
            }
        }))
    }

    /// Reloads `path` whenever it changes, written in place or renamed into place (as editors,
    /// configuration managers and Kubernetes do), within about 200 ms of the last change, for
    /// as long as the returned [`ConfigWatcher`] lives. A change that leaves the file's content
    /// as it was reloads nothing.
    ///
    /// The file's directory is watched (a rename replaces the file itself), with the `notify`
    /// crate, from a thread of its own; if it is called within a Tokio runtime, the reloads
    /// run within it (near-quota webhooks and emails start their tasks there).
    ///
    /// ```no_run
    /// # fn run(layer: tollgate::RateLimitLayer) -> Result<(), Box<dyn std::error::Error>> {
    /// let watcher = layer.reloader().watch("config/ratelimit.toml")?;
    /// // … serve; dropping `watcher` stops watching.
    /// # drop(watcher); Ok(()) }
    /// ```
    #[cfg(feature = "watch")]
    pub fn watch(&self, path: impl AsRef<std::path::Path>) -> Result<ConfigWatcher, notify::Error> {
        ConfigWatcher::start(self.clone(), path.as_ref())
    }
}

/// Watches a configuration file and reloads it when it changes: see [`Reloader::watch`].
/// Watching stops when it is dropped.
#[cfg(feature = "watch")]
pub struct ConfigWatcher {
    watcher: Option<notify::RecommendedWatcher>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[cfg(feature = "watch")]
impl std::fmt::Debug for ConfigWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigWatcher").finish_non_exhaustive()
    }
}

#[cfg(feature = "watch")]
impl ConfigWatcher {
    /// How long the directory must be quiet before the file is read (an editor's save is a
    /// burst of events; a half-written file is not read).
    const QUIET: std::time::Duration = std::time::Duration::from_millis(200);

    fn start<K: KeyExtractor>(reloader: Reloader<K>, path: &std::path::Path) -> Result<Self, notify::Error> {
        use notify::{RecursiveMode, Watcher};
        let path = path.to_path_buf();
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => std::path::PathBuf::from("."),
        };
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            if event.is_ok_and(|e| !e.kind.is_access()) {
                let _ = tx.send(());
            }
        })?;
        watcher.watch(&dir, RecursiveMode::NonRecursive)?;
        let runtime = tokio::runtime::Handle::try_current().ok();
        let mut last = std::fs::read(&path).ok();
        let thread = std::thread::Builder::new()
            .name("tollgate-config-watch".into())
            .spawn(move || {
                while rx.recv().is_ok() {
                    // Wait for the directory to be quiet, then look at the file.
                    loop {
                        match rx.recv_timeout(Self::QUIET) {
                            Ok(()) => continue,
                            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => break,
                            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
                        }
                    }
                    let now = std::fs::read(&path).ok();
                    if now == last {
                        continue;
                    }
                    last = now;
                    let _entered = runtime.as_ref().map(tokio::runtime::Handle::enter);
                    let _ = reloader.load(&path);
                }
            })
            .map_err(|e| notify::Error::generic(&e.to_string()))?;
        Ok(Self { watcher: Some(watcher), thread: Some(thread) })
    }
}

#[cfg(feature = "watch")]
impl Drop for ConfigWatcher {
    fn drop(&mut self) {
        // Dropping the watcher closes the channel: the thread ends after any reload under way.
        drop(self.watcher.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
