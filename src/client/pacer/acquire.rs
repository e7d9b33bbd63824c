//! [`Acquire`], the future of a place in a host's queue, and the [`Permit`] it yields.

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

use super::host::Turn;
use super::{Config, Registered, State};
use crate::client::RateLimitSignal;

/// Why [`Acquire`] gave up.
///
/// ```
/// use tollgate::client::AcquireError;
/// assert_eq!(AcquireError::QueueFull.to_string(), "the host's queue is full");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AcquireError {
    /// [`Pacer::max_queue`](super::Pacer::max_queue) requests already wait for this host.
    QueueFull,
    /// The request's turn would come (or did not come) before its deadline.
    Deadline,
}

impl fmt::Display for AcquireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AcquireError::QueueFull => "the host's queue is full",
            AcquireError::Deadline => "no turn to send before the deadline",
        })
    }
}

impl StdError for AcquireError {}

/// A place in the queue: removed from it when dropped, unless it was released.
#[derive(Debug)]
struct Ticket {
    state: Arc<State>,
    host: Arc<str>,
    id: u64,
    queued: bool,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.queued {
            let next = self.state.lock().get_mut(&*self.host).and_then(|host| host.remove(self.id));
            if let Some(waker) = next {
                waker.wake();
            }
        }
    }
}

/// What one look at the queue decided, acted on once its lock is released.
enum Step {
    Done(Result<Permit, AcquireError>),
    Sleep(Option<Instant>),
}

pin_project! {
    /// Waits for a request's turn to be sent to a host; made by [`Pacer::acquire`](super::Pacer::acquire).
    ///
    /// The request joins the host's queue when first polled. Only the head of the queue may
    /// go, when the host's pace allows, so concurrent requests leave one at a time. Dropping
    /// the future gives its place up; the queue's lock is never held across a wait.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// use tollgate::client::Pacer;
    ///
    /// let pacer = Pacer::new();
    /// let probe = pacer.acquire("api.test:443").await.unwrap();
    /// // While the first request's answer is awaited, the next one queues...
    /// let waiting = tokio::spawn(pacer.acquire("api.test:443"));
    /// tokio::task::yield_now().await;
    /// assert_eq!(pacer.queued("api.test:443"), 1);
    /// // ... and gives its place up when dropped.
    /// waiting.abort();
    /// let _ = waiting.await;
    /// assert_eq!(pacer.queued("api.test:443"), 0);
    /// # drop(probe);
    /// # }
    /// ```
    #[must_use = "futures do nothing unless polled"]
    pub struct Acquire {
        state: Arc<State>,
        config: Config,
        host: Arc<str>,
        deadline: Option<Instant>,
        priority: Option<u64>,
        ticket: Option<Ticket>,
        #[pin]
        sleep: Option<Sleep>,
    }
}

impl fmt::Debug for Acquire {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Acquire")
            .field("host", &self.host)
            .field("deadline", &self.deadline)
            .field("queued", &self.ticket.as_ref().is_some_and(|t| t.queued))
            .finish()
    }
}

impl Acquire {
    pub(super) fn new(state: Arc<State>, config: Config, host: Arc<str>) -> Self {
        Self { state, config, host, deadline: None, priority: None, ticket: None, sleep: None }
    }

    /// Give up with [`AcquireError::Deadline`] if the turn has not come by `deadline`, or at
    /// once when the host's known pace puts the turn after it.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// use std::time::Duration;
    /// use tokio::time::Instant;
    /// use tollgate::client::Pacer;
    ///
    /// let pacer = Pacer::new();
    /// let permit = pacer.acquire("api.test:443").deadline(Instant::now()).await;
    /// assert!(permit.is_ok(), "a first request never waits");
    /// # }
    /// ```
    pub fn deadline(mut self, deadline: Instant) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// Queue under this id rather than a fresh one: a retried request keeps its place ahead of
    /// those that came after it.
    pub(crate) fn priority(mut self, id: Option<u64>) -> Self {
        self.priority = id;
        self
    }
}

impl Future for Acquire {
    type Output = Result<Permit, AcquireError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            let now = Instant::now();
            let mut wake = None;
            let step = {
                let mut hosts = this.state.lock();
                if this.ticket.is_none() {
                    let id = this.priority.unwrap_or_else(|| this.state.next_id());
                    match super::register(&mut hosts, this.host, id, now, this.config) {
                        Registered::Queued => {
                            let (state, host) = (Arc::clone(this.state), Arc::clone(this.host));
                            *this.ticket = Some(Ticket { state, host, id, queued: true });
                        }
                        Registered::Full => return Poll::Ready(Err(AcquireError::QueueFull)),
                        Registered::Untracked => return Poll::Ready(Ok(Permit::untracked(id))),
                    }
                }
                let ticket = this.ticket.as_mut().expect("registered above");
                match hosts.get_mut(&**this.host) {
                    // Entries with waiters are never evicted; should it happen, go unpaced.
                    None => {
                        ticket.queued = false;
                        Step::Done(Ok(Permit::untracked(ticket.id)))
                    }
                    Some(host) => {
                        let past_deadline = this.deadline.is_some_and(|d| now >= d);
                        let turn = if host.is_head(ticket.id) { Some(host.turn(now)) } else { None };
                        let step = match turn {
                            Some(Turn::Now) => {
                                host.queue.pop_front();
                                ticket.queued = false;
                                let seq = host.release(now, this.config);
                                wake = host.head_waker();
                                let (state, name) = (Arc::clone(this.state), Arc::clone(this.host));
                                Step::Done(Ok(Permit::new(state, *this.config, name, seq, ticket.id)))
                            }
                            Some(Turn::Wait { until, certain }) => {
                                let too_late = certain && this.deadline.is_some_and(|d| until > d);
                                if past_deadline || too_late {
                                    Step::Done(Err(AcquireError::Deadline))
                                } else {
                                    Step::Sleep(Some(this.deadline.map_or(until, |d| until.min(d))))
                                }
                            }
                            None if past_deadline => Step::Done(Err(AcquireError::Deadline)),
                            None => Step::Sleep(*this.deadline),
                        };
                        match &step {
                            Step::Done(Err(_)) => {
                                wake = host.remove(ticket.id);
                                ticket.queued = false;
                            }
                            Step::Sleep(_) => host.park(ticket.id, cx.waker()),
                            Step::Done(Ok(_)) => {}
                        }
                        step
                    }
                }
            };
            if let Some(waker) = wake {
                waker.wake();
            }
            let at = match step {
                Step::Done(result) => return Poll::Ready(result),
                Step::Sleep(None) => return Poll::Pending,
                Step::Sleep(Some(at)) => at,
            };
            match this.sleep.as_mut().as_pin_mut() {
                Some(sleep) if sleep.deadline() == at => {}
                Some(sleep) => sleep.reset(at),
                None => this.sleep.set(Some(tokio::time::sleep_until(at))),
            }
            if this.sleep.as_mut().as_pin_mut().expect("set above").poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
    }
}

/// A request's turn to be sent: tell the [`Pacer`](super::Pacer) what the answer said with
/// [`answer`](Permit::answer). Dropping it unanswered (the request failed, or was cancelled)
/// counts the request as never answered.
///
/// ```
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// use std::time::{Duration, SystemTime};
/// use http::{HeaderMap, StatusCode};
/// use tollgate::client::{Pacer, RateLimitSignal};
///
/// let pacer = Pacer::new();
/// let permit = pacer.acquire("api.test:443").await.unwrap();
/// // ... send the request; the server says nothing is left for 5 s ...
/// let mut headers = HeaderMap::new();
/// headers.insert("ratelimit", r#""p";r=0;t=5"#.parse().unwrap());
/// permit.answer(&RateLimitSignal::parse(StatusCode::OK, &headers, SystemTime::now()), None);
///
/// assert_eq!(pacer.delay("api.test:443"), Duration::from_secs(5));
/// # }
/// ```
pub struct Permit {
    id: u64,
    tracked: Option<Tracked>,
}

struct Tracked {
    state: Arc<State>,
    config: Config,
    host: Arc<str>,
    seq: u64,
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut debug = f.debug_struct("Permit");
        if let Some(tracked) = &self.tracked {
            debug.field("host", &tracked.host).field("seq", &tracked.seq);
        }
        debug.finish_non_exhaustive()
    }
}

impl Permit {
    fn new(state: Arc<State>, config: Config, host: Arc<str>, seq: u64, id: u64) -> Self {
        Self { id, tracked: Some(Tracked { state, config, host, seq }) }
    }

    fn untracked(id: u64) -> Self {
        Self { id, tracked: None }
    }

    /// The queue id, kept by a retry so that it goes before later arrivals.
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// Reports the answer: its quotas set the host's pace, and `hold` (a refusal's wait: its
    /// `Retry-After` or reset) keeps every request to the host back that long.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// use std::time::{Duration, SystemTime};
    /// use http::{HeaderMap, StatusCode};
    /// use tollgate::client::{Pacer, RateLimitSignal};
    ///
    /// let pacer = Pacer::new();
    /// let permit = pacer.acquire("a:80").await.unwrap();
    /// let signal = RateLimitSignal::parse(StatusCode::TOO_MANY_REQUESTS, &HeaderMap::new(), SystemTime::now());
    /// permit.answer(&signal, Some(Duration::from_secs(3)));
    /// assert_eq!(pacer.delay("a:80"), Duration::from_secs(3));
    /// # }
    /// ```
    pub fn answer(mut self, signal: &RateLimitSignal, hold: Option<Duration>) {
        let Some(tracked) = self.tracked.take() else { return };
        let next = tracked.state.lock().get_mut(&*tracked.host).and_then(|host| {
            host.answer(tracked.seq, Instant::now(), signal.quotas(), hold, &tracked.config);
            host.head_waker()
        });
        if let Some(waker) = next {
            waker.wake();
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let Some(tracked) = self.tracked.take() else { return };
        let next = tracked.state.lock().get_mut(&*tracked.host).and_then(|host| {
            host.abandon(tracked.seq);
            host.head_waker()
        });
        if let Some(waker) = next {
            waker.wake();
        }
    }
}
