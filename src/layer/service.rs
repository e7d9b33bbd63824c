use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use tower_service::Service;

use super::body::ResponseBody;
use super::core::{After, Core};
use super::future::{Next, ResponseFuture};
use super::RateLimitLayer;
use crate::key::KeyExtractor;

/// The rate-limiting service: see the [module documentation](crate::layer).
///
/// Always ready when the inner service is; cheap to clone, and every clone shares the same
/// state, so a limit holds across axum's per-request cloning.
#[derive(Debug)]
pub struct RateLimit<S, K> {
    inner: S,
    core: Arc<Core>,
    extractor: Arc<K>,
}

impl<S: Clone, K> Clone for RateLimit<S, K> {
    fn clone(&self) -> Self {
        Self { inner: self.inner.clone(), core: self.core.clone(), extractor: self.extractor.clone() }
    }
}

impl<S, K> RateLimit<S, K> {
    /// Wraps `inner` with the limits of `layer`.
    pub fn new(inner: S, layer: &RateLimitLayer<K>) -> Self {
        Self { inner, core: layer.core.clone(), extractor: layer.extractor.clone() }
    }

    /// A layer wrapping services in this limiter (same as [`RateLimitLayer`] itself).
    pub fn layer(layer: RateLimitLayer<K>) -> RateLimitLayer<K> {
        layer
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

impl<S, K, ReqBody, ResBody> Service<Request<ReqBody>> for RateLimit<S, K>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
    K: KeyExtractor,
    ResBody: Body<Data = Bytes>,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let core = &*self.core;
        let (parts, body) = req.into_parts();
        let rule = core.route(&parts);
        if rule.exempt {
            return ResponseFuture::inner(
                self.inner.call(Request::from_parts(parts, body)),
                After::default(),
            );
        }
        let (key, tier) = core.identify(&*self.extractor, &parts);
        let (prepared, charge) = match core.prepare(rule, &key, tier, &parts) {
            Ok(prepared) => prepared,
            Err(answer) => return ResponseFuture::ready(*answer),
        };
        let mut check = core.store.check(&key, tier, charge);
        let req = Request::from_parts(parts, body);
        match check.try_take() {
            Some(result) => match core.decided(prepared, &key, result, req) {
                Next::Forward(req, after) => ResponseFuture::inner(self.inner.call(req), after),
                Next::Answer(response) => ResponseFuture::ready(response),
            },
            None => {
                // The store does I/O: the instance polled ready moves into the future and a
                // clone takes its place (see "Be careful when cloning inner services").
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                ResponseFuture::checking(check, inner, self.core.clone(), prepared, key, req)
            }
        }
    }
}
