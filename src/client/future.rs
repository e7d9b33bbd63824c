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
use super::RetryError;

pin_project! {
    /// Response future of [`Retry`](super::Retry).
    ///
    /// Waits (pacing, `Retry-After`, backoff) with `tokio::time`, so it needs a Tokio runtime
    /// with the time driver enabled.
    pub struct ResponseFuture<S, B>
    where
        S: Service<Request<B>>,
    {
        #[pin]
        state: State<S::Future>,
        inner: S,
        // Set while `inner` has been polled ready and not called yet.
        inner_ready: bool,
        // Set once the pacing check for the coming attempt has been done.
        paced: bool,
        // The request to send next; kept as a template when it may be repeated.
        request: Option<Request<B>>,
        repeatable: bool,
        tracker: Option<Tracker>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Send,
        Sleeping { #[pin] sleep: Sleep },
        Waiting { #[pin] future: F },
    }
}

impl<S, B> ResponseFuture<S, B>
where
    S: Service<Request<B>>,
{
    pub(crate) fn new(inner: S, request: Request<B>, repeatable: bool, tracker: Tracker) -> Self {
        Self {
            state: State::Send,
            inner,
            inner_ready: true,
            paced: false,
            request: Some(request),
            repeatable,
            tracker: Some(tracker),
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
                StateProj::Send => {
                    if !*this.paced {
                        *this.paced = true;
                        if let Some(delay) = tracker.pace() {
                            this.state.set(State::Sleeping { sleep: tokio::time::sleep(delay) });
                            continue;
                        }
                    }
                    if !*this.inner_ready {
                        if let Err(e) = ready!(this.inner.poll_ready(cx)) {
                            let report = this.tracker.take().map(Tracker::into_report);
                            return Poll::Ready(Err(RetryError::new(e, report.unwrap_or_default())));
                        }
                    }
                    *this.inner_ready = false;
                    *this.paced = false;
                    let request =
                        if *this.repeatable { this.request.as_ref().cloned() } else { this.request.take() }
                            .expect("a request is kept for every attempt");
                    tracker.sent();
                    let future = this.inner.call(request);
                    this.state.set(State::Waiting { future });
                }
                StateProj::Sleeping { sleep } => {
                    ready!(sleep.poll(cx));
                    this.state.set(State::Send);
                }
                StateProj::Waiting { future } => {
                    let result = ready!(future.poll(cx));
                    let mut response = match result {
                        Ok(response) => response,
                        Err(e) => {
                            let report = this.tracker.take().map(Tracker::into_report);
                            return Poll::Ready(Err(RetryError::new(e, report.unwrap_or_default())));
                        }
                    };
                    match tracker.on_response(response.status(), response.headers()) {
                        Decision::Wait(delay, _) => {
                            // The rejected response (and its body) is dropped here.
                            this.state.set(State::Sleeping { sleep: tokio::time::sleep(delay) });
                            // The wait is the retry's wait: do not pace on top of it unless
                            // the pacer asks for longer (checked when sending).
                            *this.paced = false;
                        }
                        Decision::Stop(_) => {
                            let report = this.tracker.take().map(Tracker::into_report);
                            response.extensions_mut().insert(report.unwrap_or_default());
                            return Poll::Ready(Ok(response));
                        }
                    }
                }
            }
        }
    }
}
