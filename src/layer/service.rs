use std::sync::Arc;

use super::LayerState;
use super::RateLimitLayer;
use crate::config::Config;

/// The rate-limiting service: see the [module documentation](crate::layer). What it does with
/// a request is the crate's [pipeline](crate#the-pipeline).
///
/// Always ready when the inner service is; cheap to clone, and every clone shares the same
/// state, so a limit holds across axum's per-request cloning.
#[derive(Debug)]
pub struct RateLimit<S, K> {
    pub(super) inner: S,
    pub(super) state: Arc<LayerState<K>>,
}

impl<S: Clone, K> Clone for RateLimit<S, K> {
    fn clone(&self) -> Self {
        Self { inner: self.inner.clone(), state: self.state.clone() }
    }
}

impl<S, K> RateLimit<S, K> {
    /// Wraps `inner` with the limits of `layer`.
    pub fn new(inner: S, layer: &RateLimitLayer<K>) -> Self {
        Self { inner, state: layer.state.clone() }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, unwrapped.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl RateLimit<(), crate::key::DefaultExtractor> {
    /// The layer enforcing `config`, as tower-http's services offer (`Timeout::layer`):
    /// `ServiceBuilder::new().layer(RateLimit::layer(config))`.
    ///
    /// # Panics
    /// Where [`RateLimitLayer::new`] does; [`RateLimitLayer::try_new`] returns the error.
    ///
    /// ```
    /// use tollgate::{Config, RateLimit};
    ///
    /// let config = Config::from_toml("[tiers.anonymous]\nrequests_per_second = 1\nburst = 5\n").unwrap();
    /// let layer = RateLimit::layer(config);
    /// assert_eq!(layer.limits().default_tier().policies()[0].quota().burst(), 5);
    /// ```
    pub fn layer(config: Config) -> RateLimitLayer {
        RateLimitLayer::new(config)
    }
}
