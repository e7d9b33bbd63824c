//! Every wait of the client layer is a `tracing` event.
//!
//! Alone in its own test binary: tracing caches callsite interest process-wide, so a
//! thread-local subscriber in a binary whose other tests run concurrently can miss events.
#![cfg(feature = "client")]

#[path = "client_support.rs"]
mod support;

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use support::{serve, Reply};
use tollgate::client::{RetryLayer, RetryPolicy};
use tower::{Layer, ServiceExt};

#[tokio::test(start_paused = true)]
async fn every_wait_is_a_tracing_event() {
    let events: Arc<Mutex<Vec<String>>> = Arc::default();
    let _guard = tracing::subscriber::set_default(capture::Capture(Arc::clone(&events)));
    let server = serve(|n, _| match n {
        0 => Reply::too_many(Some("2")),
        1 => Reply::too_many(None),
        2 => Reply::ok().header("ratelimit", r#""p";r=0;t=3"#),
        3 => Reply::status(403).header("x-ratelimit-remaining", "0").header("x-ratelimit-reset", "4"),
        _ => Reply::ok(),
    })
    .await;
    let client = RetryLayer::new(RetryPolicy::new())
        .layer(Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>());
    for _ in 0..2 {
        let request = Request::get(server.url("/")).body(Full::new(Bytes::new())).unwrap();
        let res = client.clone().oneshot(request).await.unwrap();
        res.into_body().collect().await.unwrap();
    }

    let events = events.lock().unwrap().clone();
    let waits: Vec<&String> = events
        .iter()
        .filter(|e| e.starts_with("waiting before sending") || e.starts_with("waited for a turn"))
        .collect();
    assert_eq!(waits.len(), 4, "{events:#?}");
    let has = |i: usize, parts: &[&str]| {
        assert!(parts.iter().all(|p| waits[i].contains(p)), "{} lacks {parts:?}", waits[i]);
    };
    // Before a retry, the event comes before the wait; a turn in the queue is reported after.
    has(0, &["waiting before sending", "attempt=2", "status=429", "reason=retry-after", "delay_ms=2000"]);
    has(1, &["waiting before sending", "attempt=3", "reason=backoff"]);
    has(2, &["waited for a turn", "attempt=1", "reason=pacing", "delay_ms=3000"]);
    has(3, &["waiting before sending", "attempt=2", "status=403", "reason=reset", "delay_ms=4000"]);
    assert!(waits[3].contains("dialect=X-RateLimit-* fields"), "{}", waits[3]);
}

mod capture {
    use std::fmt::Write as _;
    use std::sync::{Arc, Mutex};

    use tracing::field::{Field, Visit};
    use tracing::span::{Attributes, Id, Record};
    use tracing::{Event, Metadata, Subscriber};

    /// Records every `tollgate::client` event as "message field=value ...".
    pub(super) struct Capture(pub(super) Arc<Mutex<Vec<String>>>);

    struct Line(String);

    impl Visit for Line {
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            if field.name() == "message" {
                let _ = write!(self.0, "{value:?}");
            } else {
                let _ = write!(self.0, " {}={value:?}", field.name());
            }
        }
        fn record_str(&mut self, field: &Field, value: &str) {
            let _ = write!(self.0, " {}={value}", field.name());
        }
    }

    impl Subscriber for Capture {
        fn enabled(&self, metadata: &Metadata<'_>) -> bool {
            metadata.target().starts_with("tollgate")
        }
        fn new_span(&self, _: &Attributes<'_>) -> Id {
            Id::from_u64(1)
        }
        fn record(&self, _: &Id, _: &Record<'_>) {}
        fn record_follows_from(&self, _: &Id, _: &Id) {}
        fn event(&self, event: &Event<'_>) {
            let mut line = Line(String::new());
            event.record(&mut line);
            self.0.lock().unwrap().push(line.0);
        }
        fn enter(&self, _: &Id) {}
        fn exit(&self, _: &Id) {}
    }
}
