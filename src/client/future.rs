//! [`ResponseFuture`]: the retry loop of [`Retry`](super::Retry) as a state machine.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tokio::time::Sleep;
use tower_service::Service;

use super::policy::{Decision, Tracker};
use super::{Acquire, Permit, RetryError};

pin_project! {
    /// Response future of [`Retry`](super::Retry).
    ///
    /// Waits (for the host's turn, `Retry-After`, backoff) with `tokio::time`, so it needs a
    /// Tokio runtime with the time driver enabled. Dropping it while it waits in the pacer's
    /// queue gives its place up.
    pub struct ResponseFuture<S, B>
    where
        S: Service<Request<B>>,
    {
        #[pin]
        state: State<S::Future>,
        inner: S,
        // Set while `inner` has been polled ready and not called yet.
        inner_ready: bool,
        // The request to send next; kept as a template when it may be repeated.
        request: Option<Request<B>>,
        repeatable: bool,
        tracker: Option<Tracker>,
        // This attempt's turn, answered with its response.
        permit: Option<Permit>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        // Before an attempt: take a turn in the host's queue, if pacing.
        Start,
        Queued { #[pin] acquire: Acquire },
        Send,
        Waiting { #[pin] future: F },
        Sleeping { #[pin] sleep: Sleep },
    }
}

impl<S, B> ResponseFuture<S, B>
where
    S: Service<Request<B>>,
{
    pub(crate) fn new(inner: S, request: Request<B>, repeatable: bool, tracker: Tracker) -> Self {
        Self {
            state: State::Start,
            inner,
            inner_ready: true,
            request: Some(request),
            repeatable,
            tracker: Some(tracker),
            permit: None,
        }
    }
}

impl<S, B> fmt::Debug for ResponseFuture<S, B>
where
    S: Service<Request<B>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").field("tracker", &self.tracker).finish_non_exhaustive()
    }
}

impl<S, B, ResBody> Future for ResponseFuture<S, B>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    B: Clone,
{
    type Output = Result<Response<ResBody>, RetryError<S::Error>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            let tracker = this.tracker.as_mut().expect("ResponseFuture polled after completion");
            match this.state.as_mut().project() {
                StateProj::Start => match tracker.admission() {
                    Some(acquire) => this.state.set(State::Queued { acquire }),
                    None => this.state.set(State::Send),
                },
                StateProj::Queued { acquire } => {
                    let turn = ready!(acquire.poll(cx));
                    match tracker.admitted(turn) {
                        Ok(permit) => {
                            *this.permit = Some(permit);
                            this.state.set(State::Send);
                        }
                        Err(_) => {
                            let report = this.tracker.take().map(Tracker::into_report).unwrap_or_default();
                            return Poll::Ready(Err(RetryError::not_sent(report)));
                        }
                    }
                }
                StateProj::Send => {
                    if !*this.inner_ready {
                        if let Err(e) = ready!(this.inner.poll_ready(cx)) {
                            this.permit.take();
                            let report = this.tracker.take().map(Tracker::into_report);
                            return Poll::Ready(Err(RetryError::new(e, report.unwrap_or_default())));
                        }
                    }
                    *this.inner_ready = false;
                    let request =
                        if *this.repeatable { this.request.as_ref().cloned() } else { this.request.take() }
                            .expect("a request is kept for every attempt");
                    tracker.sent();
                    let future = this.inner.call(request);
                    this.state.set(State::Waiting { future });
                }
                StateProj::Waiting { future } => {
                    let result = ready!(future.poll(cx));
                    let mut response = match result {
                        Ok(response) => response,
                        Err(e) => {
                            // Unanswered: the pacer counts the request as never answered.
                            this.permit.take();
                            let report = this.tracker.take().map(Tracker::into_report);
                            return Poll::Ready(Err(RetryError::new(e, report.unwrap_or_default())));
                        }
                    };
                    match tracker.on_response(response.status(), response.headers(), this.permit.take()) {
                        Decision::Wait(delay, _) => {
                            // The refused response (and its body) is dropped here.
                            this.state.set(State::Sleeping { sleep: tokio::time::sleep(delay) });
                        }
                        Decision::Stop(_) => {
                            let report = this.tracker.take().map(Tracker::into_report);
                            response.extensions_mut().insert(report.unwrap_or_default());
                            return Poll::Ready(Ok(response));
                        }
                    }
                }
                StateProj::Sleeping { sleep } => {
                    ready!(sleep.poll(cx));
                    this.state.set(State::Start);
                }
            }
        }
    }
}
