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
    let waits: Vec<&String> = events.iter().filter(|e| e.contains("waiting before sending")).collect();
    assert_eq!(waits.len(), 3, "{events:#?}");
    assert!(
        waits[0].contains("attempt=2")
            && waits[0].contains("reason=retry-after")
            && waits[0].contains("delay_ms=2000"),
        "{}",
        waits[0]
    );
    assert!(waits[1].contains("attempt=3") && waits[1].contains("reason=backoff"), "{}", waits[1]);
    assert!(
        waits[2].contains("attempt=1")
            && waits[2].contains("reason=pacing")
            && waits[2].contains("delay_ms=3000"),
        "{}",
        waits[2]
    );
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
