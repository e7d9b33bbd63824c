use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use pin_project_lite::pin_project;

use super::concurrency::Slots;
use crate::degrade::Recorder;

pin_project! {
    /// The body of a response through [`RateLimit`](super::RateLimit): the inner service's
    /// body, or one the limiter wrote itself (a problem, a cached copy).
    ///
    /// It also holds the request's concurrency slots, given back when the body has been sent
    /// in full or dropped, and records a degradable answer for the response cache.
    pub struct ResponseBody<B> {
        #[pin]
        kind: Kind<B>,
        slots: Slots,
        recorder: Option<Box<Recorder>>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B> {
        Inner { #[pin] body: B },
        Own { #[pin] body: Full<Bytes> },
    }
}

impl<B> ResponseBody<B> {
    pub(crate) fn inner(body: B, slots: Slots, recorder: Option<Box<Recorder>>) -> Self {
        Self { kind: Kind::Inner { body }, slots, recorder }
    }

    pub(crate) fn own(bytes: Bytes) -> Self {
        Self { kind: Kind::Own { body: Full::new(bytes) }, slots: Slots::default(), recorder: None }
    }
}

impl<B: Body> Kind<B> {
    fn is_end_stream(&self) -> bool {
        match self {
            Kind::Inner { body } => body.is_end_stream(),
            Kind::Own { body } => body.is_end_stream(),
        }
    }
}

impl<B> std::fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.kind {
            Kind::Inner { .. } => "inner",
            Kind::Own { .. } => "own",
        };
        f.debug_struct("ResponseBody").field("kind", &kind).finish()
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let mut this = self.project();
        let polled = match this.kind.as_mut().project() {
            KindProj::Inner { body } => body.poll_frame(cx),
            KindProj::Own { body } => body.poll_frame(cx).map_err(|never| match never {}),
        };
        let ended = match &polled {
            Poll::Pending => false,
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(recorder) = this.recorder {
                    match frame.data_ref() {
                        Some(data) => recorder.data(data),
                        None => recorder.abandon(),
                    }
                }
                // A body that knows its length is not polled again after its last frame.
                this.kind.as_ref().get_ref().is_end_stream()
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(recorder) = this.recorder {
                    recorder.abandon();
                }
                false
            }
            Poll::Ready(None) => true,
        };
        if ended {
            if let Some(mut recorder) = this.recorder.take() {
                recorder.finish();
            }
            // Sent in full: the concurrency slots come back now, not when the body is dropped.
            *this.slots = Slots::default();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.kind.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Inner { body } => body.size_hint(),
            Kind::Own { body } => body.size_hint(),
        }
    }
}
