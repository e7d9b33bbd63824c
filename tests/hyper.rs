//! The layer outside axum's comfort: plain hyper, and axum's `route_layer`.

use nonzero_ext::nonzero;
use std::convert::Infallible;
use std::net::SocketAddr;

use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use tollgate::algorithm::Quota;
use tollgate::policy::{Limits, TierSpec};
use tollgate::RateLimitLayer;
use tower::{Layer, Service, ServiceExt};

fn limits() -> Limits {
    Limits::builder()
        .tier("anonymous", TierSpec::new(Quota::per_minute(nonzero!(60u32)).allow_burst(nonzero!(3u32))))
        .route("/costly", 2)
        .build()
        .unwrap()
}

#[tokio::test]
async fn works_with_hyper_directly() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let layer = RateLimitLayer::from_limits(limits());
    tokio::spawn(async move {
        loop {
            let (stream, peer) = listener.accept().await.unwrap();
            let limited = layer.layer(tower::service_fn(|_req: Request<Incoming>| async {
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"hello"))))
            }));
            // hyper users hand the peer address to the limiter as a request extension.
            let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
                req.extensions_mut().insert::<SocketAddr>(peer);
                limited.clone().oneshot(req)
            });
            tokio::spawn(async move {
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
            });
        }
    });
    let client = reqwest::Client::new();
    let get = |path: &str| client.get(format!("http://{addr}{path}")).send();
    let res = get("/costly").await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["x-ratelimit-remaining"], "1", "costs by path without axum's MatchedPath");
    assert_eq!(get("/cheap").await.unwrap().status(), StatusCode::OK);
    let res = get("/cheap").await.unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(res.headers().contains_key("retry-after"));
}

#[tokio::test]
async fn route_layer_never_charges_a_404() {
    let app: Router =
        Router::new().route("/ok", get(|| async { "ok" })).route_layer(RateLimitLayer::from_limits(limits()));
    let mut app = app.into_service::<axum::body::Body>();
    let peer: SocketAddr = "192.0.2.1:1".parse().unwrap();
    let req = |path: &str| {
        let mut req = Request::get(path).body(axum::body::Body::empty()).unwrap();
        req.extensions_mut().insert(axum::extract::ConnectInfo(peer));
        req
    };
    for _ in 0..10 {
        let res = app.ready().await.unwrap().call(req("/missing")).await.unwrap();
        assert_eq!(res.status(), StatusCode::NOT_FOUND);
        assert!(res.headers().get("x-ratelimit-limit").is_none());
    }
    let res = app.ready().await.unwrap().call(req("/ok")).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["x-ratelimit-remaining"], "2");
}
