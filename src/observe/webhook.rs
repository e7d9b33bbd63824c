//! POSTing near-quota events to a webhook, off the request's path.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, USER_AGENT};
use http::{Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::mpsc;

use super::near_quota::{NearQuotaEvent, OnNearQuota};

/// Why a [`Webhook`] could not be started.
#[derive(Debug)]
#[non_exhaustive]
pub enum WebhookError {
    /// The URL is not an absolute `http://` URL.
    BadUrl(String),
    /// Not called inside a Tokio runtime: the sender task has nowhere to run.
    NoRuntime,
}

impl fmt::Display for WebhookError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadUrl(url) => write!(
                f,
                "`{url}` is not a webhook URL: write an absolute http:// URL (https needs a TLS \
                 client: send to a local relay, or implement OnNearQuota with your own client)"
            ),
            Self::NoRuntime => f.write_str("a webhook must be started inside a Tokio runtime"),
        }
    }
}

impl std::error::Error for WebhookError {}

/// What a [`Webhook`] has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WebhookStats {
    /// Events the endpoint accepted (a 2xx answer).
    pub sent: u64,
    /// Events whose POST failed: no connection, a timeout, or an answer other than 2xx.
    pub failed: u64,
    /// Events dropped because the queue was full (the endpoint is slower than the alerts).
    pub dropped: u64,
}

#[derive(Debug, Default)]
struct Counters {
    sent: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
}

/// An [`OnNearQuota`] hook that POSTs each event as JSON to a URL.
///
/// The request's path only puts the event on a bounded queue (`try_send`): when the queue is
/// full the event is dropped and counted ([`stats`](Self::stats)), so a slow or dead endpoint
/// never delays a request. A background Tokio task sends the queued events one at a time,
/// each with a timeout, without retries (at most once). The task ends when every clone of the
/// `Webhook` is dropped.
///
/// The body is the [`NearQuotaEvent`] as JSON, with the client redacted
/// ([`NearQuotaEvent::client`]): `{"client":"key:…cdef","tier":"free","policy":"free",
/// "used":0.8,"limit":10,"remaining":2,"reset":1700000010}`.
///
/// Plain `http://` only: point it at a local relay or sidecar, or implement [`OnNearQuota`]
/// with the HTTPS client of your choice.
///
/// ```
/// use tollgate::observe::{NearQuota, Webhook};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let webhook = Webhook::builder("http://127.0.0.1:9/alerts").queue(64).start().unwrap();
/// let stats = webhook.clone();
/// let alerts = NearQuota::new(webhook).threshold(0.8);
/// assert_eq!(stats.stats().dropped, 0);
/// # let _ = alerts;
/// assert!(Webhook::new("https://example.com/hook").is_err());
/// # }
/// ```
#[derive(Clone)]
pub struct Webhook {
    queue: mpsc::Sender<NearQuotaEvent>,
    counters: Arc<Counters>,
}

impl fmt::Debug for Webhook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Webhook").field("stats", &self.stats()).finish_non_exhaustive()
    }
}

/// Settings of a [`Webhook`]; made by [`Webhook::builder`].
#[derive(Debug, Clone)]
pub struct WebhookBuilder {
    url: String,
    queue: usize,
    timeout: Duration,
}

impl WebhookBuilder {
    /// Holds at most `events` waiting events (256 by default; at least 1).
    pub fn queue(mut self, events: usize) -> Self {
        self.queue = events.max(1);
        self
    }

    /// Gives each POST at most `timeout` (5 s by default), connection included.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Starts the sender task on the current Tokio runtime.
    pub fn start(self) -> Result<Webhook, WebhookError> {
        let uri = Webhook::check_url(&self.url)?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| WebhookError::NoRuntime)?;
        let (queue, events) = mpsc::channel(self.queue);
        let counters = Arc::new(Counters::default());
        runtime.spawn(deliver(events, uri, self.timeout, counters.clone()));
        Ok(Webhook { queue, counters })
    }
}

impl Webhook {
    /// A webhook POSTing to `url` with the default settings, started on the current Tokio
    /// runtime.
    pub fn new(url: impl Into<String>) -> Result<Self, WebhookError> {
        Self::builder(url).start()
    }

    /// The URL a webhook would POST to, or why it cannot: an absolute `http://` URL.
    ///
    /// ```
    /// use tollgate::observe::Webhook;
    /// assert!(Webhook::check_url("http://127.0.0.1:9/alerts").is_ok());
    /// assert!(Webhook::check_url("https://example.com/hook").is_err());
    /// assert!(Webhook::check_url("not a url").is_err());
    /// ```
    pub fn check_url(url: &str) -> Result<Uri, WebhookError> {
        let bad = || WebhookError::BadUrl(url.to_owned());
        let uri: Uri = url.parse().map_err(|_| bad())?;
        if uri.scheme() != Some(&http::uri::Scheme::HTTP) || uri.authority().is_none() {
            return Err(bad());
        }
        Ok(uri)
    }

    /// Settings for a webhook POSTing to `url`.
    pub fn builder(url: impl Into<String>) -> WebhookBuilder {
        WebhookBuilder { url: url.into(), queue: 256, timeout: Duration::from_secs(5) }
    }

    /// What has been sent, failed and dropped so far.
    pub fn stats(&self) -> WebhookStats {
        WebhookStats {
            sent: self.counters.sent.load(Ordering::Relaxed),
            failed: self.counters.failed.load(Ordering::Relaxed),
            dropped: self.counters.dropped.load(Ordering::Relaxed),
        }
    }
}

impl OnNearQuota for Webhook {
    fn on_near_quota(&self, event: &NearQuotaEvent) {
        if self.queue.try_send(event.clone()).is_err() {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

async fn deliver(
    mut events: mpsc::Receiver<NearQuotaEvent>,
    uri: Uri,
    timeout: Duration,
    counters: Arc<Counters>,
) {
    let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut last_warning: Option<tokio::time::Instant> = None;
    while let Some(event) = events.recv().await {
        let body = match serde_json::to_vec(&event) {
            Ok(body) => Bytes::from(body),
            Err(_) => continue, // a float that is not a number; cannot happen for used ∈ [0, 1]
        };
        let request = Request::post(uri.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(USER_AGENT, concat!("tollgate/", env!("CARGO_PKG_VERSION")))
            .body(Full::new(body))
            .expect("a checked URI and static headers make a valid request");
        let attempt = async {
            let response = client.request(request).await.map_err(|e| e.to_string())?;
            let status = response.status();
            // Read the answer so the connection can be reused.
            let _ = response.into_body().collect().await;
            if status.is_success() {
                Ok(())
            } else {
                Err(format!("answered {status}"))
            }
        };
        let error = match tokio::time::timeout(timeout, attempt).await {
            Ok(Ok(())) => {
                counters.sent.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            Ok(Err(error)) => error,
            Err(_) => format!("no answer within {timeout:?}"),
        };
        counters.failed.fetch_add(1, Ordering::Relaxed);
        // One warning a minute at most: a dead endpoint must not flood the log.
        let now = tokio::time::Instant::now();
        if last_warning.is_none_or(|at| now.duration_since(at) >= Duration::from_secs(60)) {
            last_warning = Some(now);
            tracing::warn!(%uri, %error, "tollgate: near-quota webhook failed");
        }
    }
}
