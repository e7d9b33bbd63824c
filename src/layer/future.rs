use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http::request::Parts;
use http::{Request, Response};
use pin_project_lite::pin_project;
use tower_service::Service;

use super::body::ResponseBody;
use super::concurrency::Slots;
use crate::answer::{OwnResponse, RateLimitHeaders};
use crate::degrade::{Band, Pending};
use crate::store::{Decision, StoreError, StoreFuture};

/// What happens to a request once its plan met the store's decision.
#[derive(Debug)]
pub(crate) enum Settled {
    /// Call the handler (telling it the band, when degraded) and finish its answer with `After`.
    Forward(After, Option<Band>),
    /// The limiter answers itself.
    Answer(OwnResponse),
}

/// What travels with a forwarded request until its response is complete.
#[derive(Debug, Default)]
pub(crate) struct After {
    /// Merged into the handler's response.
    pub(crate) headers: Option<RateLimitHeaders>,
    /// Given back when the body has been sent.
    pub(crate) slots: Slots,
    /// Where the answer is kept for the cached band, if it may be.
    pub(crate) record: Option<Box<Pending>>,
}

/// Turns the decision of an asynchronous store into what happens next: the plan, settled.
pub(crate) type Settle = Box<dyn FnOnce(Result<Decision, StoreError>) -> Settled + Send>;

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

/// Waiting for an asynchronous store: boxed, so that the future of the (usual) synchronous
/// path stays small.
struct Checking<S, ReqBody> {
    check: StoreFuture,
    settle: Settle,
    /// The instance that was polled ready.
    inner: S,
    request: (Parts, ReqBody),
}

pin_project! {
    #[project = KindProj]
    enum Kind<S, ReqBody>
    where
        S: Service<Request<ReqBody>>,
    {
        /// Waiting for an asynchronous store; owns the inner service that was polled ready.
        Checking { state: Option<Box<Checking<S, ReqBody>>> },
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
        settle: Settle,
        inner: S,
        parts: Parts,
        body: ReqBody,
    ) -> Self {
        let state = Checking { check, settle, inner, request: (parts, body) };
        Self { kind: Kind::Checking { state: Some(Box::new(state)) } }
    }
}

/// Forwards `parts` and `body` to `inner`, telling the handler its band, or answers.
#[inline]
pub(crate) fn next<S, ReqBody>(
    settled: Settled,
    inner: &mut S,
    mut parts: Parts,
    body: ReqBody,
) -> ResponseFuture<S, ReqBody>
where
    S: Service<Request<ReqBody>>,
{
    match settled {
        Settled::Forward(after, band) => {
            if let Some(band) = band {
                parts.extensions.insert(band);
            }
            ResponseFuture::inner(inner.call(Request::from_parts(parts, body)), after)
        }
        Settled::Answer(response) => ResponseFuture::ready(response),
    }
}

impl<S, ReqBody, ResBody> Future for ResponseFuture<S, ReqBody>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Output = Result<Response<ResponseBody<ResBody>>, S::Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let next = match self.as_mut().project().kind.project() {
                KindProj::Checking { state } => {
                    let checking = state.as_mut().expect("polled after completion");
                    let result = ready!(Pin::new(&mut checking.check).poll(cx));
                    let Checking { settle, mut inner, request: (parts, body), .. } =
                        *state.take().expect("polled after completion");
                    next(settle(result), &mut inner, parts, body).kind
                }
                KindProj::Inner { future, after } => {
                    let mut response = ready!(future.poll(cx))?;
                    let after = after.take().expect("polled after completion");
                    // Record before our headers are merged: a replay gets fresh ones.
                    let recorder = after.record.and_then(|pending| pending.start(&response));
                    if let Some(headers) = after.headers {
                        headers.apply(response.headers_mut());
                    }
                    return Poll::Ready(Ok(
                        response.map(|body| ResponseBody::inner(body, after.slots, recorder))
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
