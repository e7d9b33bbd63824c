//! A well-behaved client of a rate-limited API: retries 429s and paces itself.
//!
//! ```text
//! cargo run --release --example client -- --url http://127.0.0.1:3000 --key free-demo-key --requests 50 [--path /api/simple]
//! ```
//!
//! Sends the requests one after another through `tollgate::client::RetryLayer` over
//! hyper-util's legacy client and prints one line:
//! `completed N/M requests, saw K 429s, waited S.S s`. Exits 0 when every request got a 2xx.

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tollgate::client::{RetryLayer, RetryPolicy, RetryReport};
use tower::{ServiceBuilder, ServiceExt};

struct Args {
    url: String,
    key: String,
    requests: u64,
    path: String,
}

const USAGE: &str = "usage: client --url URL --key KEY --requests N [--path /api/simple]";

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let (mut url, mut key, mut requests) = (None, None, None);
    let mut path = String::from("/api/simple");
    while let Some(arg) = args.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((name, value)) => (name.to_owned(), Some(value.to_owned())),
            None => (arg, None),
        };
        if name == "--help" || name == "-h" {
            return Err(USAGE.to_owned());
        }
        let value = match inline {
            Some(value) => value,
            None => args.next().ok_or_else(|| format!("{name} needs a value\n{USAGE}"))?,
        };
        match name.as_str() {
            "--url" => url = Some(value.trim_end_matches('/').to_owned()),
            "--key" => key = Some(value),
            "--requests" => {
                requests = Some(value.parse::<u64>().map_err(|e| format!("--requests {value}: {e}"))?)
            }
            "--path" => path = value,
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    Ok(Args {
        url: url.ok_or_else(|| format!("--url is required\n{USAGE}"))?,
        key: key.ok_or_else(|| format!("--key is required\n{USAGE}"))?,
        requests: requests.ok_or_else(|| format!("--requests is required\n{USAGE}"))?,
        path: if path.starts_with('/') { path } else { format!("/{path}") },
    })
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    let uri = format!("{}{}", args.url, args.path);
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

    let (mut completed, mut waited) = (0u64, Duration::ZERO);
    for i in 1..=args.requests {
        let request = Request::get(&uri)
            .header("x-api-key", &args.key)
            .body(Full::new(Bytes::new()))
            .expect("the URI was checked above");
        match client.clone().oneshot(request).await {
            Ok(res) => {
                let status = res.status();
                if let Some(report) = res.extensions().get::<RetryReport>() {
                    waited += report.total_wait;
                }
                // Read the body so the connection can be reused.
                let _ = res.into_body().collect().await;
                if status.is_success() {
                    completed += 1;
                } else {
                    eprintln!("request {i}: {status}");
                }
            }
            Err(e) => {
                waited += e.report().total_wait;
                eprintln!("request {i}: {e}: {}", e.inner());
            }
        }
    }
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
