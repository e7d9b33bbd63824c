use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http::request::Parts;
use http::{Request, Response};
use pin_project_lite::pin_project;
use tokio::time::Sleep;
use tower_service::Service;

use super::body::ResponseBody;
use super::concurrency::Slots;
use super::settle::Bill;
use crate::answer::{OwnResponse, RateLimitHeaders};
use crate::clock::Nanos;
use crate::degrade::{Band, Pending, Recorder};
use crate::store::{Decision, StoreError, StoreFuture};

/// What happens to a request once its plan met the store's decision.
///
/// Moved once, from [`Core::settle`](super::core::Core) (inlined into `call`) to [`next`]; the
/// forwarded case is the common one and carries the headers and the bill inline: boxing it
/// would cost every request an allocation.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub(crate) enum Settled {
    /// Call the handler (telling it the band, when degraded), after holding the request for
    /// the wait (its tokens were reserved ahead), and finish its answer with `After`.
    Forward(After, Option<Band>, Nanos),
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
    /// The admission's account, settled from the answer (or given back if the request goes
    /// away while held).
    pub(crate) bill: Option<Bill>,
    /// A request of cost 0: the standing the store just read, handed to the handler in the
    /// request's extensions so that a usage page shows it without asking the store again.
    pub(crate) standing: Option<Box<super::ReadStanding>>,
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

/// A request held until its reserved tokens exist: a timer, never a blocked thread. Boxed (the
/// rare path). Dropped before the timer fires (the client went away), it gives its
/// reservation back.
struct Holding<S, ReqBody> {
    sleep: Pin<Box<Sleep>>,
    /// The instance that was polled ready.
    inner: S,
    request: Option<Request<ReqBody>>,
    band: Option<Band>,
    after: Option<After>,
}

impl<S, ReqBody> Drop for Holding<S, ReqBody> {
    fn drop(&mut self) {
        if let Some(bill) = self.after.take().and_then(|after| after.bill) {
            bill.release();
        }
    }
}

/// The answer is in, its cost changed, and an asynchronous store is settling it.
struct Settling<R> {
    settling: StoreFuture,
    response: R,
    recorder: Option<Box<Recorder>>,
    after: After,
}

pin_project! {
    #[project = KindProj]
    enum Kind<S, ReqBody>
    where
        S: Service<Request<ReqBody>>,
    {
        /// Waiting for an asynchronous store; owns the inner service that was polled ready.
        Checking { state: Option<Box<Checking<S, ReqBody>>> },
        /// Held until the request's tokens exist; owns the inner service that was polled ready.
        Held { state: Option<Box<Holding<S, ReqBody>>> },
        /// The inner service is answering; the headers are merged when it does.
        Inner {
            #[pin]
            future: S::Future,
            after: Option<After>,
        },
        /// Settling the answer's cost with an asynchronous store.
        Settling { state: Option<Box<Settling<S::Response>>> },
        /// The limiter answered itself.
        Ready { response: Option<OwnResponse> },
    }
}

impl<S, ReqBody> ResponseFuture<S, ReqBody>
where
    S: Service<Request<ReqBody>>,
{
    #[inline]
    pub(crate) fn inner(future: S::Future, after: After) -> Self {
        Self { kind: Kind::Inner { future, after: Some(after) } }
    }

    #[inline]
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

/// Forwards `request` to `inner`, telling the handler its band, or answers. A request to be
/// held takes the instance that was polled ready with it (a clone takes its place).
///
/// Takes the request whole, not its parts: a request is a few hundred bytes, and each hand-over
/// of its parts by value was a copy (issue 14).
#[inline]
pub(crate) fn next<S, ReqBody>(
    settled: Settled,
    inner: &mut S,
    request: Request<ReqBody>,
) -> ResponseFuture<S, ReqBody>
where
    S: Service<Request<ReqBody>> + Clone,
{
    match settled {
        Settled::Forward(after, band, wait) if !wait.is_zero() => {
            let clone = inner.clone();
            let ready = std::mem::replace(inner, clone);
            let holding = Holding {
                sleep: Box::pin(tokio::time::sleep(wait.into())),
                inner: ready,
                request: Some(request),
                band,
                after: Some(after),
            };
            ResponseFuture { kind: Kind::Held { state: Some(Box::new(holding)) } }
        }
        Settled::Forward(after, band, _) => forward(inner, request, band, after),
        Settled::Answer(response) => ResponseFuture::ready(response),
    }
}

#[inline]
fn forward<S, ReqBody>(
    inner: &mut S,
    mut request: Request<ReqBody>,
    band: Option<Band>,
    mut after: After,
) -> ResponseFuture<S, ReqBody>
where
    S: Service<Request<ReqBody>>,
{
    if let Some(band) = band {
        request.extensions_mut().insert(band);
    }
    if let Some(standing) = after.standing.take() {
        request.extensions_mut().insert(*standing);
    }
    ResponseFuture::inner(inner.call(request), after)
}

/// The finished answer: the headers merged (a handler's own win), the body wrapped.
#[inline]
fn finish<ResBody>(
    mut response: Response<ResBody>,
    headers: Option<RateLimitHeaders>,
    slots: Slots,
    recorder: Option<Box<Recorder>>,
) -> Response<ResponseBody<ResBody>> {
    if let Some(headers) = headers {
        headers.apply(response.headers_mut());
    }
    response.map(|body| ResponseBody::inner(body, slots, recorder))
}

impl<S, ReqBody, ResBody> Future for ResponseFuture<S, ReqBody>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
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
                    next(settle(result), &mut inner, Request::from_parts(parts, body)).kind
                }
                KindProj::Held { state } => {
                    let holding = state.as_mut().expect("polled after completion");
                    ready!(holding.sleep.as_mut().poll(cx));
                    let request = holding.request.take().expect("released once");
                    let after = holding.after.take().expect("released once");
                    let band = holding.band;
                    let mut holding = state.take().expect("polled after completion");
                    forward(&mut holding.inner, request, band, after).kind
                }
                KindProj::Inner { future, after } => {
                    let response = ready!(future.poll(cx))?;
                    // Only what the answer needs is taken out: the rest (the bill) stays where it
                    // is until the future is dropped, not copied out first (issue 14).
                    let kept = after.as_mut().expect("polled after completion");
                    // Record before our headers are merged: a replay gets fresh ones.
                    let recorder = kept.record.take().and_then(|pending| pending.start(&response));
                    let settling =
                        kept.bill.as_ref().and_then(|bill| Some((bill, bill.settle_for(&response)?)));
                    let Some((bill, mut settling)) = settling else {
                        let (headers, slots) = (kept.headers.take(), std::mem::take(&mut kept.slots));
                        return Poll::Ready(Ok(finish(response, headers, slots, recorder)));
                    };
                    match settling.try_take() {
                        Some(result) => {
                            let headers = bill.settled(result, kept.headers.take());
                            let slots = std::mem::take(&mut kept.slots);
                            return Poll::Ready(Ok(finish(response, headers, slots, recorder)));
                        }
                        None => {
                            let after = after.take().expect("polled after completion");
                            let state = Settling { settling, response, recorder, after };
                            Kind::Settling { state: Some(Box::new(state)) }
                        }
                    }
                }
                KindProj::Settling { state } => {
                    let settling = state.as_mut().expect("polled after completion");
                    let result = ready!(Pin::new(&mut settling.settling).poll(cx));
                    let Settling { response, recorder, after, .. } =
                        *state.take().expect("polled after completion");
                    let headers = match &after.bill {
                        Some(bill) => bill.settled(result, after.headers),
                        None => after.headers,
                    };
                    return Poll::Ready(Ok(finish(response, headers, after.slots, recorder)));
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
            Kind::Held { .. } => "held",
            Kind::Inner { .. } => "inner",
            Kind::Settling { .. } => "settling",
            Kind::Ready { .. } => "ready",
        };
        f.debug_struct("ResponseFuture").field("state", &state).finish()
    }
}
