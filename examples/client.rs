//! A well-behaved client of a rate-limited API: retries refusals, queues and paces itself.
//!
//! ```text
//! cargo run --release --example client -- --url http://127.0.0.1:3000 --key free-demo-key --requests 50 [--path /api/simple] [--concurrency 4]
//! ```
//!
//! Sends the requests through `tollgate::client::RetryLayer` over hyper-util's legacy client,
//! `--concurrency` of them in flight at once through the one client (its pacer queues them per
//! host), and prints one line: `completed N/M requests, saw K 429s, waited S.S s`, where K
//! counts every 429 the server sent (retried ones included) and S sums every request's waits.
//! Exits 0 when every request got a 2xx. `RUST_LOG=tollgate=debug` shows every wait on stderr.

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use futures_util::stream::{self, StreamExt};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tollgate::client::{RetryLayer, RetryPolicy, RetryReport};
use tower::{ServiceBuilder, ServiceExt};

/// A well-behaved client of a rate-limited API.
#[derive(Debug, Parser)]
#[command(name = "client")]
struct Args {
    /// Base URL of the API, e.g. http://127.0.0.1:3000
    #[arg(long)]
    url: String,
    /// Sent as `X-API-Key`.
    #[arg(long)]
    key: String,
    /// How many requests to complete.
    #[arg(long)]
    requests: u64,
    /// Path requested.
    #[arg(long, default_value = "/api/simple")]
    path: String,
    /// Requests in flight at once, through one client.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=1024))]
    concurrency: u64,
}

/// What one request came to.
struct Outcome {
    ok: bool,
    waited: Duration,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = Args::parse();
    // Every wait is a `tracing` event: `RUST_LOG=tollgate=info` shows them on stderr.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "off".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let path = if args.path.starts_with('/') { args.path.clone() } else { format!("/{}", args.path) };
    let uri = format!("{}{path}", args.url.trim_end_matches('/'));
    if let Err(e) = uri.parse::<http::Uri>() {
        eprintln!("invalid --url/--path {uri}: {e}");
        return ExitCode::from(2);
    }

    // Every answer the server gives, retried ones included, passes this counter.
    let seen_429 = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&seen_429);
    let http = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let client = ServiceBuilder::new()
        .layer(RetryLayer::new(RetryPolicy::new().max_attempts(8).max_wait(Duration::from_secs(60))))
        .map_response(move |res: http::Response<_>| {
            if res.status() == StatusCode::TOO_MANY_REQUESTS {
                counter.fetch_add(1, Ordering::Relaxed);
            }
            res
        })
        .service(http);

    let concurrency = usize::try_from(args.concurrency).unwrap_or(usize::MAX);
    let outcomes: Vec<Outcome> = stream::iter(1..=args.requests)
        .map(|i| {
            let request = Request::get(&uri)
                .header("x-api-key", &args.key)
                .body(Full::new(Bytes::new()))
                .expect("the URI was checked above");
            let client = client.clone();
            async move {
                match client.oneshot(request).await {
                    Ok(res) => {
                        let status = res.status();
                        let waited =
                            res.extensions().get::<RetryReport>().map_or(Duration::ZERO, |r| r.total_wait);
                        // Read the body so the connection can be reused.
                        let _ = res.into_body().collect().await;
                        if !status.is_success() {
                            eprintln!("request {i}: {status}");
                        }
                        Outcome { ok: status.is_success(), waited }
                    }
                    Err(e) => {
                        match e.inner() {
                            Some(inner) => eprintln!("request {i}: {e}: {inner}"),
                            None => eprintln!("request {i}: {e}"),
                        }
                        Outcome { ok: false, waited: e.report().total_wait }
                    }
                }
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;

    let completed = outcomes.iter().filter(|o| o.ok).count() as u64;
    let waited: Duration = outcomes.iter().map(|o| o.waited).sum();
    println!(
        "completed {completed}/{} requests, saw {} 429s, waited {:.1} s",
        args.requests,
        seen_429.load(Ordering::Relaxed),
        waited.as_secs_f64()
    );
    if completed == args.requests {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
