//! One HTTP connection through the drain phases of [`Connections`].
//!
//! - Until the hand-over: served as usual (HTTP/1.1 or HTTP/2, detected from its first bytes).
//! - From the hand-over ([`Connections::draining`]): HTTP/2 gets a graceful `GOAWAY` at once
//!   (hyper sends the two-step form: a `GOAWAY` naming the highest stream id, a `PING`, and when
//!   its ack is back the `GOAWAY` with the last stream actually received, so a stream the client
//!   opened while the first one was in flight is still served); open streams finish. HTTP/1.1
//!   responses carry `Connection: close`, so a keep-alive client leaves right after its next
//!   response, at a request boundary.
//! - Throughout: each request's outcome (status class, a panic answered 500, an error) and a
//!   connection that fails by the server's fault are counted into the generation's health
//!   (`count.rs`).
//! - Once the grace window is over ([`Connections::closing`]): an HTTP/1.1 connection that is
//!   still open is shut down gracefully (closed if idle, else after the response in progress);
//!   so is one that has not sent anything yet. One whose client has sent part of its first
//!   request (or an HTTP/2 preface) is shut down once that request is in.

use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

use hyper::body::Incoming;
use hyper::header::{CONNECTION, HeaderValue};
use hyper::{Request, Response, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;

use super::count::{CatchUnwind, CountedBody, panic_message, server_fault};
use super::drain::Connections;

/// The error type of a connection (what hyper returns).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Serves one already-accepted connection with a tower service (an axum `Router`, tonic's
/// `Routes`), drained by `conns` as [`serve()`](super::serve()) drains its own: for apps that
/// accept themselves, e.g. to terminate TLS.
///
/// ```no_run
/// # async fn tls_accept(tcp: tokio::net::TcpStream) -> std::io::Result<tokio::net::TcpStream> { Ok(tcp) }
/// # async fn run(mut listener: tokio::net::TcpListener, app: axum::Router, shutdown: hotexec::Shutdown) {
/// let conns = hotexec::drain::Connections::new(shutdown);
/// while let Some((tcp, _peer)) = conns.accept(&mut listener).await {
///     let (app, c) = (app.clone(), conns.clone());
///     conns.spawn(async move {
///         // e.g. `tokio_rustls::TlsAcceptor::accept(&acceptor, tcp).await`
///         let Ok(tls) = tls_accept(tcp).await else { return };
///         let _ = hotexec::serve::connection(tls, app, &c).await;
///     });
/// }
/// conns.wait().await;
/// # }
/// ```
///
/// HTTP/1.1 and HTTP/2 are told apart by the connection's first bytes (the HTTP/2 connection
/// preface), so ALPN `h2` and `http/1.1` both work without configuration.
pub async fn connection<I, S, B>(io: I, service: S, conns: &Connections) -> Result<(), BoxError>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: tower_service::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    connection_hyper(io, TowerToHyperService::new(service), conns).await
}

/// [`connection()`] for a hyper service (`hyper::service::service_fn(handler)`).
pub async fn connection_hyper<I, S, B>(
    io: I,
    service: S,
    conns: &Connections,
) -> Result<(), BoxError>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let builder = auto::Builder::new(TokioExecutor::new());
    serve_conn(io, service, conns, &builder, None).await
}

/// The drain phases of one connection (see the module docs).
///
/// `not_before`: an HTTP/1.1 connection is not shut down before this instant even once the
/// grace window is over. For a connection that only became able to speak during the drain (a
/// TLS handshake completed then): its client sends its first request right after the
/// handshake, and closing the connection at that moment would lose it.
///
/// A connection whose client has sent bytes but not yet a whole first request (a request
/// half-read, an HTTP/2 preface not yet through hyper's handshake) is not shut down at the end
/// of the grace window either, but once that first request is in (at most [`SPOKEN_BOUND`]
/// later): hyper would close it unread (shutting down while it still tells HTTP/1 from HTTP/2,
/// or during the HTTP/2 handshake, closes the connection), and its client would lose every
/// request it had sent. Seen on a loaded host with `h2load` over TLS, where a TLS handshake can
/// take longer than the grace window.
pub(crate) async fn serve_conn<I, S, B>(
    io: I,
    service: S,
    conns: &Connections,
    builder: &auto::Builder<TokioExecutor>,
    not_before: Option<tokio::time::Instant>,
) -> Result<(), BoxError>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let health = conns.health();
    health.record_connection();
    let result = drive(io, service, conns, builder, not_before).await;
    if let Err(e) = &result {
        if server_fault(e) {
            health.record_connection_failed();
        }
    }
    result
}

async fn drive<I, S, B>(
    io: I,
    service: S,
    conns: &Connections,
    builder: &auto::Builder<TokioExecutor>,
    not_before: Option<tokio::time::Instant>,
) -> Result<(), BoxError>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let draining = conns.draining();
    let closing = conns.closing();
    let seen = Arc::new(Seen::default());
    let service = Grace {
        inner: service,
        conns: conns.clone(),
        seen: seen.clone(),
    };
    let io = Spoke {
        io,
        seen: seen.clone(),
    };
    // With upgrades, so that axum's WebSocket extractor works (an upgraded connection leaves
    // hyper, and this drain, once the handshake response is written).
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(conn);
    // `biased`, the connection first: what it has received is taken in before a phase change
    // is acted on.
    tokio::select! {
        biased;
        r = conn.as_mut() => return r,
        _ = draining.cancelled() => {}
    }
    if !seen.http2.load(Ordering::Relaxed) {
        // HTTP/1.1 (or nothing received yet): `Connection: close` on responses does the work;
        // what is still open after the grace window is shut down then.
        tokio::select! {
            biased;
            r = conn.as_mut() => return r,
            _ = closing.cancelled() => {}
        }
        if let Some(at) = not_before {
            tokio::select! {
                biased;
                r = conn.as_mut() => return r,
                _ = tokio::time::sleep_until(at) => {}
            }
        }
        if seen.bytes.load(Ordering::Relaxed) && !seen.request.load(Ordering::Relaxed) {
            tokio::select! {
                biased;
                r = conn.as_mut() => return r,
                _ = seen.first_request.notified() => {}
                _ = tokio::time::sleep(SPOKEN_BOUND) => {}
            }
        }
    }
    conn.as_mut().graceful_shutdown();
    conn.await
}

/// How long, past the grace window, a connection in the middle of its first request is given
/// to complete it (see [`serve_conn`]).
const SPOKEN_BOUND: Duration = Duration::from_secs(5);

/// What a connection has shown so far.
#[derive(Default)]
struct Seen {
    /// Bytes from the client (after TLS, if any).
    bytes: AtomicBool,
    /// A request reached the service.
    request: AtomicBool,
    /// ... over HTTP/2.
    http2: AtomicBool,
    /// Notified at the first request.
    first_request: Notify,
}

/// The connection's IO, noting when the client has sent something.
struct Spoke<I> {
    io: I,
    seen: Arc<Seen>,
}

impl<I: AsyncRead + Unpin> AsyncRead for Spoke<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before && !self.seen.bytes.load(Ordering::Relaxed) {
            self.seen.bytes.store(true, Ordering::Relaxed);
        }
        r
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Spoke<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Counts each request's outcome into the generation's health (a panic is caught and
/// answered 500), adds `Connection: close` to HTTP/1 responses once draining, and notes that
/// a connection speaks HTTP/2.
struct Grace<S> {
    inner: S,
    conns: Connections,
    seen: Arc<Seen>,
}

type ResponseFuture<B, E> =
    Pin<Box<dyn Future<Output = Result<Response<CountedBody<B>>, E>> + Send>>;

impl<S, B> hyper::service::Service<Request<Incoming>> for Grace<S>
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>>,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response<CountedBody<B>>;
    type Error = S::Error;
    type Future = ResponseFuture<B, S::Error>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let http1 = req.version() < Version::HTTP_2;
        if !http1 {
            self.seen.http2.store(true, Ordering::Relaxed);
        }
        if !self.seen.request.swap(true, Ordering::Relaxed) {
            // A permit if nobody waits yet: `notified()` then returns at once.
            self.seen.first_request.notify_one();
        }
        // The handler may panic in `call` itself (a tower service's synchronous part) or in
        // its future: both are caught.
        let response = catch_unwind(AssertUnwindSafe(|| self.inner.call(req)));
        let conns = self.conns.clone();
        Box::pin(async move {
            let health = conns.health();
            let outcome = match response {
                Ok(future) => CatchUnwind::new(future).await,
                Err(payload) => Err(payload),
            };
            let mut resp = match outcome {
                Ok(Ok(resp)) => {
                    health.record_response(resp.status().as_u16());
                    resp.map(|inner| CountedBody::Body { inner })
                }
                Ok(Err(e)) => {
                    health.record_error();
                    return Err(e);
                }
                Err(payload) => {
                    health.record_panic();
                    tracing::error!(
                        panic = panic_message(payload.as_ref()),
                        "a handler panicked: answered 500 Internal Server Error"
                    );
                    CountedBody::internal_error()
                }
            };
            // Checked when the response is ready: a slow request that started before the
            // hand-over also tells its client to leave. Not a `101 Switching Protocols`: its
            // `Connection: upgrade` is the handshake (a WebSocket upgraded while draining is
            // tracked, and handed off or drained, on its own).
            if http1 && conns.is_draining() && resp.status() != StatusCode::SWITCHING_PROTOCOLS {
                resp.headers_mut()
                    .insert(CONNECTION, HeaderValue::from_static("close"));
            }
            Ok(resp)
        })
    }
}
