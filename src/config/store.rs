use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::ConfigError;
use crate::store::{redis_defaults, MemoryStore, OnError, Store, DEFAULT_CAPACITY};

/// Where limiter state lives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    /// In this process ([`MemoryStore`]).
    #[default]
    Memory,
    /// In Redis, shared by every instance of the service.
    Redis,
}

/// `[store]`: the backend and its settings.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// `memory` (default) or `redis`.
    pub backend: Backend,
    /// The Redis URL (`redis://[user:password@]host:port[/db]`), when `nodes` is empty.
    pub url: String,
    /// Redis Cluster: the URLs of some of its nodes (the others are discovered). When set,
    /// `url` is ignored. From the environment: `TOLLGATE_STORE__NODES='["redis://a:7000"]'`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<String>,
    /// What to do when the store cannot answer.
    pub on_error: OnError,
    /// Prefix of every Redis key.
    pub prefix: String,
    /// The most states the in-process store keeps (one per client and policy), whatever
    /// arrives; with Redis, the bound of the in-process fallback. At the bound the states idle
    /// longest make room, and a flood of addresses never evicts a client with an identity (see
    /// [`MemoryStore`]'s "At the cap").
    pub max_keys: usize,
    /// Redis: give up on a call after this many milliseconds (then `on_error` applies).
    pub timeout_ms: u64,
    /// Redis: failed calls in a row that open the circuit breaker (no more calls wait on Redis).
    pub breaker_failures: u32,
    /// Redis: while the breaker is open, one request every this many milliseconds probes Redis
    /// (1 to 60 000: a breaker never stops probing for long).
    pub probe_interval_ms: u64,
    /// Redis: clients remembered as rejected until their deadline, answered without asking
    /// Redis (0 disables this over-limit cache).
    pub blocked_keys: usize,
    /// Redis: a client refused locally by the over-limit cache is asked about again after at
    /// most this many milliseconds (1 to 60 000; 1 000 by default): how long a local refusal
    /// can be wrong after the client's state was reset behind this instance's back.
    pub blocked_recheck_ms: u64,
}

/// The stores' own defaults ([`DEFAULT_CAPACITY`], the Redis store's), so that a file that says
/// nothing builds the same store as code that says nothing.
impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            backend: Backend::default(),
            url: redis_defaults::URL.to_owned(),
            nodes: Vec::new(),
            on_error: OnError::default(),
            prefix: redis_defaults::PREFIX.to_owned(),
            max_keys: DEFAULT_CAPACITY,
            timeout_ms: redis_defaults::TIMEOUT.as_millis() as u64,
            breaker_failures: redis_defaults::BREAKER_FAILURES,
            probe_interval_ms: redis_defaults::PROBE_INTERVAL.as_millis() as u64,
            blocked_keys: redis_defaults::BLOCKED_KEYS,
            blocked_recheck_ms: redis_defaults::BLOCKED_RECHECK.as_millis() as u64,
        }
    }
}

impl StoreConfig {
    /// Checks the settings.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_keys == 0 {
            return Err(ConfigError::invalid("store.max_keys", "must be at least 1"));
        }
        if self.prefix.is_empty() {
            return Err(ConfigError::invalid("store.prefix", "must not be empty"));
        }
        if self.timeout_ms == 0 || self.timeout_ms > 60_000 {
            return Err(ConfigError::invalid("store.timeout_ms", "must be between 1 and 60000"));
        }
        if self.breaker_failures == 0 {
            return Err(ConfigError::invalid("store.breaker_failures", "must be at least 1"));
        }
        if self.probe_interval_ms == 0 || self.probe_interval_ms > 60_000 {
            return Err(ConfigError::invalid("store.probe_interval_ms", "must be between 1 and 60000"));
        }
        if self.blocked_recheck_ms == 0 || self.blocked_recheck_ms > 60_000 {
            return Err(ConfigError::invalid("store.blocked_recheck_ms", "must be between 1 and 60000"));
        }
        if self.backend == Backend::Redis && !cfg!(feature = "redis") {
            return Err(ConfigError::invalid(
                "store.backend",
                "is `redis` but tollgate was built without its `redis` feature",
            ));
        }
        #[cfg(feature = "redis")]
        if self.backend == Backend::Redis {
            self.redis_builder()?;
        }
        Ok(())
    }

    /// The Redis store these settings describe, checked but not connected.
    #[cfg(feature = "redis")]
    fn redis_builder(&self) -> Result<crate::store::RedisStoreBuilder, ConfigError> {
        use crate::store::RedisStore;
        use std::time::Duration;

        let builder = if self.nodes.is_empty() {
            redis::IntoConnectionInfo::into_connection_info(self.url.as_str())
                .map_err(|e| ConfigError::invalid("store.url", format!("is not a Redis URL: {e}")))?;
            RedisStore::builder(self.url.clone())
        } else {
            for (i, node) in self.nodes.iter().enumerate() {
                redis::IntoConnectionInfo::into_connection_info(node.as_str()).map_err(|e| {
                    ConfigError::invalid(format!("store.nodes[{i}]"), format!("is not a Redis URL: {e}"))
                })?;
            }
            RedisStore::cluster(self.nodes.iter().cloned())
        };
        Ok(builder
            .prefix(self.prefix.clone())
            .timeout(Duration::from_millis(self.timeout_ms))
            .on_error(self.on_error)
            .breaker(self.breaker_failures, Duration::from_millis(self.probe_interval_ms))
            .blocked_keys(self.blocked_keys)
            .blocked_recheck(Duration::from_millis(self.blocked_recheck_ms))
            .fallback_capacity(self.max_keys))
    }

    /// Builds the store these settings describe (checked by [`validate`](Self::validate), which
    /// every [`Config`](super::Config) has passed). Connects to nothing: a Redis store
    /// connects on its first request.
    pub fn build(&self) -> Result<Arc<dyn Store>, ConfigError> {
        match self.backend {
            Backend::Memory => Ok(Arc::new(MemoryStore::new().capacity(self.max_keys))),
            #[cfg(feature = "redis")]
            Backend::Redis => {
                let store = self.redis_builder()?.build().map_err(|e| {
                    let key = if self.nodes.is_empty() { "store.url" } else { "store.nodes" };
                    ConfigError::invalid(key, e.to_string())
                })?;
                Ok(Arc::new(store))
            }
            #[cfg(not(feature = "redis"))]
            Backend::Redis => {
                Err(ConfigError::invalid("store.backend", "the Redis store is not available in this build"))
            }
        }
    }
}

#[cfg(all(test, feature = "config"))]
mod tests {
    #![allow(clippy::result_large_err)] // figment::Jail closures return figment::Error by design.

    use crate::config::Config;

    const CONTRACT: &str = include_str!("../../config/ratelimit.toml");

    #[test]
    fn redis_settings_have_defaults() {
        let config = Config::from_toml(CONTRACT).unwrap();
        let store = &config.settings().store;
        assert_eq!((store.timeout_ms, store.breaker_failures, store.probe_interval_ms), (50, 3, 250));
        assert_eq!(store.blocked_keys, 10_000);
        assert!(store.nodes.is_empty());
    }

    #[test]
    fn bad_redis_settings_name_their_key() {
        let with = |extra: &str| {
            let text = format!("[tiers.anonymous]\nrequests_per_second = 1\nburst = 1\n[store]\n{extra}\n");
            Config::from_toml(&text).unwrap_err().to_string()
        };
        assert!(with("timeout_ms = 0").contains("store.timeout_ms"));
        assert!(with("breaker_failures = 0").contains("store.breaker_failures"));
        assert!(with("probe_interval_ms = 0").contains("store.probe_interval_ms"));
        // Issue 11 (suspected, confirmed): no upper bound, so a breaker could stop probing for
        // good (u64::MAX ms): Redis back would never be noticed.
        assert!(with("probe_interval_ms = 60001").contains("store.probe_interval_ms"));
        assert!(with("probe_interval_ms = 9223372036854775807").contains("store.probe_interval_ms"));
        assert!(with("blocked_recheck_ms = 0").contains("store.blocked_recheck_ms"));
        assert!(with("blocked_recheck_ms = 3600000").contains("store.blocked_recheck_ms"));
        assert!(with("redis_url = \"x\"").contains("redis_url"), "unknown fields are refused");
        if cfg!(feature = "redis") {
            let err = with("backend = \"redis\"\nurl = \"http://nope\"");
            assert!(err.contains("store.url"), "{err}");
            let err = with("backend = \"redis\"\nnodes = [\"redis://127.0.0.1:7000\", \"bogus\"]");
            assert!(err.contains("store.nodes[1]"), "{err}");
        } else {
            assert!(with("backend = \"redis\"").contains("store.backend"));
        }
    }

    #[cfg(feature = "redis")]
    #[test]
    fn the_environment_selects_redis_and_the_layer_builds_without_a_runtime() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("ok.toml", CONTRACT)?;
            jail.set_env("TOLLGATE_STORE__BACKEND", "redis");
            // Nothing listens there: building must not connect.
            jail.set_env("TOLLGATE_STORE__URL", "redis://127.0.0.1:1");
            jail.set_env("TOLLGATE_STORE__NODES", "[\"redis://127.0.0.1:7001\", \"redis://127.0.0.1:7002\"]");
            let config = Config::load("ok.toml").unwrap();
            assert_eq!(config.settings().store.backend, super::Backend::Redis);
            assert_eq!(config.settings().store.nodes.len(), 2);
            let layer = crate::RateLimitLayer::try_new(config).unwrap();
            // The memory store counts its states; the Redis store cannot know Redis' count.
            assert_eq!(layer.store().tracked(), None);
            Ok(())
        });
    }
}
