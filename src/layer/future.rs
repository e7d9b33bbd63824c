use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tower_service::Service;

use super::body::ResponseBody;
use super::core::After;
use super::core::{Core, Prepared};
use crate::degrade::{Pending, Recorder};
use crate::key::Key;
use crate::store::StoreFuture;

pin_project! {
    /// The response future of [`RateLimit`](super::RateLimit).
    pub struct ResponseFuture<S, ReqBody>
    where
        S: Service<Request<ReqBody>>,
    {
        #[pin]
        kind: Kind<S, ReqBody>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<S, ReqBody>
    where
        S: Service<Request<ReqBody>>,
    {
        /// Waiting for an asynchronous store; owns the inner service that was polled ready.
        Checking {
            check: StoreFuture,
            inner: Option<S>,
            core: Arc<Core>,
            prepared: Option<(Prepared, Key, Request<ReqBody>)>,
        },
        /// The inner service is answering; the headers are merged when it does.
        Inner {
            #[pin]
            future: S::Future,
            after: Option<After>,
        },
        /// The limiter answered itself.
        Ready { response: Option<OwnResponse> },
    }
}

/// A response the limiter made, with a body of our own that fits any inner body type.
pub(crate) type OwnResponse = Response<bytes::Bytes>;

impl<S, ReqBody> ResponseFuture<S, ReqBody>
where
    S: Service<Request<ReqBody>>,
{
    pub(crate) fn inner(future: S::Future, after: After) -> Self {
        Self { kind: Kind::Inner { future, after: Some(after) } }
    }

    pub(crate) fn ready(response: OwnResponse) -> Self {
        Self { kind: Kind::Ready { response: Some(response) } }
    }

    pub(crate) fn checking(
        check: StoreFuture,
        inner: S,
        core: Arc<Core>,
        prepared: Prepared,
        key: Key,
        req: Request<ReqBody>,
    ) -> Self {
        Self {
            kind: Kind::Checking { check, inner: Some(inner), core, prepared: Some((prepared, key, req)) },
        }
    }
}

/// What to do once the decision is known: call the inner service (with these headers to
/// merge), or answer directly.
// Boxing the request would allocate on every admitted request; the size is fine on a stack.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Next<ReqBody> {
    Forward(Request<ReqBody>, After),
    Answer(OwnResponse),
}

impl<S, ReqBody, ResBody> Future for ResponseFuture<S, ReqBody>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Output = Result<Response<ResponseBody<ResBody>>, S::Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let next = match self.as_mut().project().kind.project() {
                KindProj::Checking { check, inner, core, prepared } => {
                    let result = ready!(Pin::new(check).poll(cx));
                    let (prepared, key, req) = prepared.take().expect("polled after completion");
                    let mut inner = inner.take().expect("polled after completion");
                    match core.decided(prepared, &key, result, req) {
                        Next::Forward(req, after) => {
                            Kind::Inner { future: inner.call(req), after: Some(after) }
                        }
                        Next::Answer(response) => Kind::Ready { response: Some(response) },
                    }
                }
                KindProj::Inner { future, after } => {
                    let mut response = ready!(future.poll(cx))?;
                    let after = after.take().expect("polled after completion");
                    // Record before our headers are merged: a replay gets fresh ones.
                    let recorder = after.record.and_then(|pending| record(pending, &response));
                    if let Some(headers) = after.headers {
                        headers.apply(response.headers_mut());
                    }
                    return Poll::Ready(Ok(
                        response.map(|body| ResponseBody::inner(body, after.permits, recorder))
                    ));
                }
                KindProj::Ready { response } => {
                    let response = response.take().expect("polled after completion");
                    return Poll::Ready(Ok(response.map(ResponseBody::own)));
                }
            };
            self.as_mut().project().kind.set(next);
        }
    }
}

/// Starts recording a response for the cache, if it may be kept.
fn record<B>(mut pending: Box<Pending>, response: &Response<B>) -> Option<Box<Recorder>> {
    if !pending.cache.admits(&pending.method, response.status(), response.headers()) {
        return None;
    }
    pending.status = response.status();
    pending.headers = response.headers().clone();
    Some(Box::new(Recorder::new(*pending)))
}

impl<S, ReqBody> std::fmt::Debug for ResponseFuture<S, ReqBody>
where
    S: Service<Request<ReqBody>>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match self.kind {
            Kind::Checking { .. } => "checking",
            Kind::Inner { .. } => "inner",
            Kind::Ready { .. } => "ready",
        };
        f.debug_struct("ResponseFuture").field("state", &state).finish()
    }
}
