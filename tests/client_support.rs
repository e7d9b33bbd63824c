//! A scripted HTTP/1.1 server on 127.0.0.1:0 for the client tests.
//!
//! Included by `tests/client_*.rs` with `#[path]`; compiled on its own it holds no tests.
#![allow(dead_code, unreachable_pub)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::time::Instant;

/// One request as the server saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub at: Instant,
    pub method: Method,
    pub path: String,
}

/// What the server answers: a status and headers.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: Vec<(&'static str, String)>,
}

impl Reply {
    pub fn ok() -> Self {
        Self::status(200)
    }

    pub fn status(status: u16) -> Self {
        Self { status: StatusCode::from_u16(status).unwrap(), headers: Vec::new() }
    }

    pub fn too_many(retry_after: Option<&str>) -> Self {
        let reply = Self::status(429);
        match retry_after {
            Some(value) => reply.header("retry-after", value),
            None => reply,
        }
    }

    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }
}

pub struct TestServer {
    pub addr: SocketAddr,
    log: Arc<Mutex<Vec<Seen>>>,
}

impl TestServer {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.log.lock().unwrap().clone()
    }

    /// Time between consecutive requests, in milliseconds.
    pub fn gaps_ms(&self) -> Vec<u128> {
        self.seen().windows(2).map(|w| (w[1].at - w[0].at).as_millis()).collect()
    }
}

/// Serves `script(n, request)` for the n-th request (0-based), in the current runtime.
pub async fn serve<F>(script: F) -> TestServer
where
    F: Fn(usize, &Request<Incoming>) -> Reply + Send + Sync + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let log: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let script = Arc::new(script);
    let server_log = Arc::clone(&log);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let log = Arc::clone(&server_log);
            let script = Arc::clone(&script);
            let service = service_fn(move |req: Request<Incoming>| {
                let n = {
                    let mut log = log.lock().unwrap();
                    log.push(Seen {
                        at: Instant::now(),
                        method: req.method().clone(),
                        path: req.uri().path().to_owned(),
                    });
                    log.len() - 1
                };
                let reply = script(n, &req);
                let mut res = Response::new(Full::new(Bytes::from_static(b"{}")));
                *res.status_mut() = reply.status;
                for (name, value) in reply.headers {
                    res.headers_mut().append(name, value.parse().expect("a valid test header"));
                }
                async move { Ok::<_, Infallible>(res) }
            });
            tokio::spawn(async move {
                let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    TestServer { addr, log }
}

/// A token bucket of `burst` refilled at `per_sec` tokens per second (tokio time), answering
/// like the demo server: `RateLimit` with `t` = seconds until the next whole token
/// (draft-ietf-httpapi-ratelimit-headers-10; 0 when full), `RateLimit-Policy` with `q` = burst
/// and `w` = seconds to refill it, `X-RateLimit-*` with the reset when full, and 429 +
/// `Retry-After` when empty.
pub fn token_bucket(burst: f64, per_sec: f64) -> impl Fn(usize, &Request<Incoming>) -> Reply {
    let state = Mutex::new((burst, Instant::now()));
    move |_, _| {
        let mut state = state.lock().unwrap();
        let now = Instant::now();
        let tokens = (state.0 + (now - state.1).as_secs_f64() * per_sec).min(burst);
        let (status, tokens) = if tokens >= 1.0 { (200, tokens - 1.0) } else { (429, tokens) };
        *state = (tokens, now);
        let remaining = tokens.floor() as u64;
        let next_in = if tokens >= burst { 0 } else { ((1.0 - tokens.fract()) / per_sec).ceil() as u64 };
        let full_in = ((burst - tokens) / per_sec).ceil() as u64;
        let window = (burst / per_sec).ceil() as u64;
        let epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        let mut reply = Reply::status(status)
            .header("ratelimit-policy", format!("\"t\";q={burst};w={window}"))
            .header("ratelimit", format!("\"t\";r={remaining};t={next_in}"))
            .header("x-ratelimit-limit", burst.to_string())
            .header("x-ratelimit-remaining", remaining.to_string())
            .header("x-ratelimit-reset", (epoch + full_in).to_string());
        if status == 429 {
            reply = reply.header("retry-after", next_in.max(1).to_string());
        }
        reply
    }
}
