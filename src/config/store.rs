use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::ConfigError;
use crate::policy::Limits;
use crate::store::{MemoryStore, OnError, Store};

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
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// `memory` (default) or `redis`.
    #[serde(default)]
    pub backend: Backend,
    /// The Redis URL.
    #[serde(default = "default_url")]
    pub url: String,
    /// What to do when the store cannot answer.
    #[serde(default)]
    pub on_error: OnError,
    /// Prefix of every Redis key.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// The most states the in-process store keeps (one per key and policy).
    #[serde(default = "default_max_keys")]
    pub max_keys: usize,
}

fn default_url() -> String {
    "redis://127.0.0.1:6379".to_owned()
}

fn default_prefix() -> String {
    "tollgate".to_owned()
}

fn default_max_keys() -> usize {
    1 << 21
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            backend: Backend::default(),
            url: default_url(),
            on_error: OnError::default(),
            prefix: default_prefix(),
            max_keys: default_max_keys(),
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
        if self.backend == Backend::Redis && !cfg!(feature = "redis") {
            return Err(ConfigError::invalid(
                "store.backend",
                "is `redis` but tollgate was built without its `redis` feature",
            ));
        }
        Ok(())
    }

    /// Builds the store for `limits`.
    pub fn build(&self, limits: &Limits) -> Result<Arc<dyn Store>, ConfigError> {
        let _ = limits;
        self.validate()?;
        match self.backend {
            Backend::Memory => Ok(Arc::new(MemoryStore::new().capacity(self.max_keys))),
            Backend::Redis => {
                Err(ConfigError::invalid("store.backend", "the Redis store is not available in this build"))
            }
        }
    }
}
