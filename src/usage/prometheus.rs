//! `GET /metrics` in the Prometheus text format.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::header::CONTENT_TYPE;
use http::HeaderValue;
use metrics_exporter_prometheus::{BuildError, PrometheusBuilder, PrometheusHandle};

use crate::observe::MetricsObserver;
use crate::RateLimitLayer;

static TEXT_FORMAT: HeaderValue = HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8");

/// Installs a Prometheus recorder as the process's global `metrics` recorder and describes
/// tollgate's metrics. Returns the handle [`metrics()`] renders from.
///
/// tollgate records no histogram samples into the recorder (its
/// [`REMAINING_RATIO`](crate::observe::REMAINING_RATIO) is bucketed by the observer), so the
/// recorder's memory stays flat whether or not anyone scrapes.
///
/// There is one global recorder per process: a second call fails with
/// [`BuildError::FailedToSetGlobalRecorder`]; keep the first handle.
///
/// ```no_run
/// let handle = tollgate::usage::install_prometheus().expect("the first recorder");
/// # let _ = handle;
/// ```
pub fn install_prometheus() -> Result<PrometheusHandle, BuildError> {
    let handle = PrometheusBuilder::new().install_recorder()?;
    MetricsObserver::describe();
    Ok(handle)
}

/// The state of the [`metrics()`] handler: the recorder's handle, and the layer whose store's
/// size becomes the `tollgate_keys_tracked` gauge.
#[derive(Debug)]
pub struct MetricsState<K> {
    /// Renders what was recorded.
    pub handle: PrometheusHandle,
    /// The layer whose store is measured.
    pub layer: RateLimitLayer<K>,
}

impl<K> Clone for MetricsState<K> {
    fn clone(&self) -> Self {
        Self { handle: self.handle.clone(), layer: self.layer.clone() }
    }
}

/// `GET /metrics`: everything recorded, in the Prometheus text format (version 0.0.4), with
/// the store's size measured and the observers' histogram buckets published just before
/// rendering. Route it exempt from limiting.
pub async fn metrics<K>(State(state): State<MetricsState<K>>) -> Response {
    MetricsObserver::record_tracked(&**state.layer.store());
    MetricsObserver::flush();
    state.handle.run_upkeep();
    ([(CONTENT_TYPE, TEXT_FORMAT.clone())], state.handle.render()).into_response()
}
