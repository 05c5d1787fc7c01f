//! What every request and connection served by [`serve()`](super::serve()) ended with, counted
//! into the generation's health ([`Shutdown::health`](crate::Shutdown::health)): the response's
//! status class, a panicking handler (caught and answered 500), a request left without an
//! answer, a connection that failed by the server's fault.
//!
//! The handler's future is polled inside `catch_unwind`: a panic that would otherwise unwind
//! the connection task (the client sees its connection reset, nothing is counted) becomes a
//! `500 Internal Server Error` on a connection that goes on, and a panic in the health counts.

use std::any::Any;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::task::{Context, Poll};

use http_body::{Body, Frame, SizeHint};
use hyper::{Response, StatusCode};

use super::conn::BoxError;

pin_project_lite::pin_project! {
    /// A future that yields `Err` with the panic's payload instead of unwinding.
    pub(crate) struct CatchUnwind<F> {
        #[pin]
        inner: F,
    }
}

impl<F> CatchUnwind<F> {
    pub(crate) fn new(inner: F) -> Self {
        CatchUnwind { inner }
    }
}

impl<F: Future> Future for CatchUnwind<F> {
    type Output = Result<F::Output, Box<dyn Any + Send>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = self.project().inner;
        // AssertUnwindSafe: after a panic the future is never polled again (the caller answers
        // 500 and drops it), so no state it broke is observed.
        match catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Err(payload) => Poll::Ready(Err(payload)),
        }
    }
}

/// The panic message, for the log.
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(not a string)")
}

pin_project_lite::pin_project! {
    /// The body of a served response: the handler's, or empty (the 500 of a panic). A panic
    /// while the handler's body is polled fails the connection instead of unwinding it.
    #[project = CountedProj]
    pub(crate) enum CountedBody<B> {
        /// The handler's body.
        Body { #[pin] inner: B },
        /// No body.
        Empty,
    }
}

impl<B> CountedBody<B> {
    /// `500 Internal Server Error`, empty: the answer to a handler that panicked.
    pub(crate) fn internal_error() -> Response<CountedBody<B>> {
        let mut resp = Response::new(CountedBody::Empty);
        *resp.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        resp
    }
}

impl<B> Body for CountedBody<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, BoxError>>> {
        match self.project() {
            CountedProj::Body { inner } => {
                match catch_unwind(AssertUnwindSafe(|| inner.poll_frame(cx))) {
                    Ok(p) => p.map(|f| f.map(|r| r.map_err(Into::into))),
                    Err(payload) => {
                        let msg = panic_message(payload.as_ref()).to_owned();
                        Poll::Ready(Some(Err(
                            format!("the response body panicked: {msg}").into()
                        )))
                    }
                }
            }
            CountedProj::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            CountedBody::Body { inner } => inner.is_end_stream(),
            CountedBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            CountedBody::Body { inner } => inner.size_hint(),
            CountedBody::Empty => SizeHint::with_exact(0),
        }
    }
}

/// Whether a connection's error is the server's fault (the service or its body failed), not
/// the client's (it went away, sent garbage, was too slow).
pub(crate) fn server_fault(e: &BoxError) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e.as_ref());
    while let Some(err) = source {
        if let Some(h) = err.downcast_ref::<hyper::Error>() {
            return h.is_user();
        }
        source = err.source();
    }
    false
}
