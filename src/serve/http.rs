//! [`serve()`]: an HTTP server on a hotexec listener until the hand-over, then a lossless drain.

use std::future::{Future, IntoFuture};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioExecutor;
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;

use super::conn::{BoxError, serve_conn};
use super::drain::Connections;
use super::probe::Probe;
use super::readiness;
use super::{DEFAULT_CLOSE_GRACE, Listener};
use crate::Shutdown;

/// Serves a tower service — an axum `Router`, tonic's `Routes` — on `listener` until
/// `shutdown` resolves, then drains without losing a request; `.await` it.
///
/// In place of `axum::serve(listener, app).with_graceful_shutdown(..)`:
///
/// ```no_run
/// use axum::{Router, routing::get};
///
/// #[hotexec::main(drain_timeout = "10s")]
/// #[listen("127.0.0.1:3000", name = "http")]
/// async fn main(listeners: hotexec::Listeners, shutdown: hotexec::Shutdown) -> std::io::Result<()> {
///     let app = Router::new().route("/", get(|| async { "hello\n" }));
///     let listener = listeners.take_tokio_tcp("http")?;
///     hotexec::serve(listener, app, shutdown).await
/// }
/// ```
///
/// What it does:
///
/// - Accepts until `shutdown` resolves, exactly then: a connection waiting at that moment
///   stays in the shared accept queue for the new generation.
/// - HTTP/1.1 and HTTP/2 with prior knowledge (h2c, as gRPC clients speak it) on the same
///   listener, told apart per connection.
/// - Every connection accepted before the hand-over gets its requests served, never closed
///   unread. HTTP/1.1 keep-alive clients get `Connection: close` on their responses for the
///   [close grace window](Serve::close_grace) and leave at a request boundary; connections still
///   idle after it are closed. HTTP/2 clients get a graceful (two-step) `GOAWAY`: open streams
///   finish, new ones go to the new generation over a new connection.
/// - Counts what every request ended with (status class; a panicking handler is caught,
///   answered `500` and counted as a panic; a request the service failed) and every
///   connection that failed by the server's fault, into the generation's health
///   ([`Shutdown::health`]): after an upgrade, the new generation is committed only if these
///   numbers are no worse than the old one's (see the README, "Safe commits").
/// - Resolves once every connection is done, so `main` returns and the process exits cleanly
///   (status 0) as soon as the drain is complete; at `drain_timeout` the runtime's watchdog ends
///   the process (status 124) with whatever is still in flight.
///
/// Connections that are upgraded (WebSocket) leave hyper, and this drain, once the handshake is
/// answered: track their tasks with a [`Connections`] of their own if they must finish.
pub fn serve<L, S, B>(
    listener: L,
    service: S,
    shutdown: Shutdown,
) -> Serve<L, TowerToHyperService<S>>
where
    L: Listener,
    S: tower_service::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    serve_hyper(listener, TowerToHyperService::new(service), shutdown)
}

/// [`serve()`] for a hyper service, such as `hyper::service::service_fn(handler)`.
///
/// ```no_run
/// use hyper::{Request, Response, body::Incoming, service::service_fn};
///
/// async fn hello(_: Request<Incoming>) -> Result<Response<String>, std::convert::Infallible> {
///     Ok(Response::new(format!("pid={}\n", std::process::id())))
/// }
///
/// #[hotexec::main]
/// #[listen("127.0.0.1:3000", name = "http")]
/// async fn main(listeners: hotexec::Listeners, shutdown: hotexec::Shutdown) -> std::io::Result<()> {
///     let listener = listeners.take_tokio_tcp("http")?;
///     hotexec::serve_hyper(listener, service_fn(hello), shutdown).await
/// }
/// ```
pub fn serve_hyper<L, S>(listener: L, service: S, shutdown: Shutdown) -> Serve<L, S>
where
    L: Listener,
{
    Serve {
        listener,
        service,
        shutdown,
        close_grace: DEFAULT_CLOSE_GRACE,
        protocols: Protocols::Auto,
        probe: None,
        #[cfg(feature = "tls")]
        tls: None,
    }
}

/// An HTTP server to `.await`, from [`serve()`] or [`serve_hyper()`]; its methods set options.
#[must_use = "a server does nothing until it is `.await`ed"]
pub struct Serve<L, S> {
    listener: L,
    service: S,
    shutdown: Shutdown,
    close_grace: Duration,
    protocols: Protocols,
    /// Sent through the service before ready; `Err`: its text was refused.
    probe: Option<Result<Probe, String>>,
    #[cfg(feature = "tls")]
    tls: Option<super::tls::TlsConfig>,
}

#[derive(Clone, Copy, Debug)]
enum Protocols {
    Auto,
    Http1,
    Http2,
}

impl<L, S> std::fmt::Debug for Serve<L, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Serve")
            .field("close_grace", &self.close_grace)
            .field("protocols", &self.protocols)
            .field("probe", &self.probe)
            .field("tls", &self.has_tls())
            .finish_non_exhaustive()
    }
}

impl<L, S> Serve<L, S> {
    fn has_tls(&self) -> bool {
        #[cfg(feature = "tls")]
        return self.tls.is_some();
        #[cfg(not(feature = "tls"))]
        false
    }

    /// How long, after the hand-over, HTTP/1.1 responses carry `Connection: close` before the
    /// connections still idle are closed. Default [`DEFAULT_CLOSE_GRACE`] (500 ms; its docs say
    /// why). Longer costs nothing but a later exit of the old process; zero closes idle
    /// keep-alive connections at once, which loses a request a client sends at that moment.
    pub fn close_grace(mut self, grace: Duration) -> Self {
        self.close_grace = grace;
        self
    }

    /// Speak HTTP/1.1 only (no HTTP/2 detection).
    pub fn http1_only(mut self) -> Self {
        self.protocols = Protocols::Http1;
        self
    }

    /// Speak HTTP/2 only (prior knowledge, h2c), as a gRPC server does.
    pub fn http2_only(mut self) -> Self {
        self.protocols = Protocols::Http2;
        self
    }

    /// Before this generation reports ready, sends `probe` through the app's own service (in
    /// process: no socket, not counted in the health) and goes on only if it answers `2xx`.
    /// Anything else — another status, a panic, an error, no answer within the probe's
    /// timeout — and this generation does not report ready: `serve` returns an error naming
    /// the probe and what it got (`probe GET /healthz answered 503 Service Unavailable:
    /// "db down"`), so the upgrade fails and the old generation serves on.
    ///
    /// ```no_run
    /// # async fn run(listener: tokio::net::TcpListener, app: axum::Router, shutdown: hotexec::Shutdown) -> std::io::Result<()> {
    /// hotexec::serve(listener, app, shutdown).probe("GET /healthz").await
    /// # }
    /// ```
    ///
    /// `probe` is a [`Probe`] or its text: `"GET /healthz"`, `"/healthz"`, `"HEAD /ready"`.
    /// Text that is not a probe makes `serve` return an error at once.
    pub fn probe<P>(mut self, probe: P) -> Self
    where
        P: TryInto<Probe>,
        P::Error: std::fmt::Display,
    {
        self.probe = Some(probe.try_into().map_err(|e| e.to_string()));
        self
    }

    /// Serve over TLS (feature `tls`): each accepted connection does its handshake in its own
    /// task, bounded by the configuration's timeout, then is served and drained as a plaintext
    /// one would be (`close_notify` after the last response). ALPN offers `h2` and
    /// `http/1.1`, or the one protocol of `.http1_only()` / `.http2_only()`. The
    /// session-ticket keys are taken from the previous generation and handed to the next
    /// ([`tls`](crate::tls) module docs).
    ///
    /// ```no_run
    /// # async fn run(listener: tokio::net::TcpListener, app: axum::Router, shutdown: hotexec::Shutdown) -> std::io::Result<()> {
    /// let tls = hotexec::tls::TlsConfig::from_pem_files("cert.pem", "key.pem")?;
    /// hotexec::serve(listener, app, shutdown).tls(tls).await
    /// # }
    /// ```
    #[cfg(feature = "tls")]
    pub fn tls(mut self, config: super::tls::TlsConfig) -> Self {
        self.tls = Some(config);
        self
    }
}

impl<L, S, B> IntoFuture for Serve<L, S>
where
    L: Listener,
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Output = io::Result<()>;
    type IntoFuture = Pin<Box<dyn Future<Output = io::Result<()>> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            let Serve {
                mut listener,
                service,
                shutdown,
                close_grace,
                protocols,
                probe,
                #[cfg(feature = "tls")]
                tls,
            } = self;
            // From now on this generation's health says what it serves, also while idle; said
            // before it reports ready, so that the previous generation judges it.
            shutdown.health().mark_counting();
            // Readiness waits for the probe.
            let hold = shutdown.hold_ready();
            if let Some(probe) = probe {
                let probe = match probe {
                    Ok(p) => p,
                    Err(e) => {
                        readiness::fail_start(&shutdown, hold, &e);
                        return Err(io::Error::new(io::ErrorKind::InvalidInput, e));
                    }
                };
                match probe.run(service.clone()).await {
                    Ok((status, took)) => tracing::info!(
                        probe = %probe.describe(),
                        %status,
                        took_ms = took.as_secs_f64() * 1e3,
                        "probe passed"
                    ),
                    Err(failed) => {
                        let reason = failed.to_string();
                        readiness::fail_start(&shutdown, hold, &reason);
                        return Err(io::Error::other(reason));
                    }
                }
            }
            drop(hold);
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder = match protocols {
                Protocols::Auto => builder,
                Protocols::Http1 => builder.http1_only(),
                Protocols::Http2 => builder.http2_only(),
            };
            let builder = Arc::new(builder);
            let conns = Connections::with_close_grace(shutdown.clone(), close_grace);
            #[cfg(feature = "tls")]
            let tls = tls.map(|t| {
                let (h1, h2) = match protocols {
                    Protocols::Auto => (true, true),
                    Protocols::Http1 => (true, false),
                    Protocols::Http2 => (false, true),
                };
                let t = t.for_protocols(h1, h2);
                let acceptor = t.acceptor(&shutdown);
                (t, acceptor)
            });
            while let Some((io, _peer)) = conns.accept(&mut listener).await {
                let (service, builder, c) = (service.clone(), builder.clone(), conns.clone());
                #[cfg(feature = "tls")]
                if let Some((_, acceptor)) = &tls {
                    let acceptor = acceptor.clone();
                    conns.spawn(async move {
                        // Counted and logged by the acceptor.
                        let Ok(io) = acceptor.accept(io).await else {
                            return;
                        };
                        // Done during the drain: its first request is still served.
                        let not_before = c
                            .is_draining()
                            .then(|| tokio::time::Instant::now() + c.close_grace());
                        if let Err(e) = serve_conn(io, service, &c, &builder, not_before).await {
                            tracing::debug!("connection: {e}");
                        }
                    });
                    continue;
                }
                conns.spawn(async move {
                    if let Err(e) = serve_conn(io, service, &c, &builder, None).await {
                        tracing::debug!("connection: {e}");
                    }
                });
            }
            // This process's copy only: the listening socket stays open for the new generation.
            drop(listener);
            tracing::info!(
                reason = ?shutdown.reason(),
                open = conns.len(),
                ?close_grace,
                "stopped accepting; draining HTTP connections"
            );
            conns.wait().await;
            #[cfg(feature = "tls")]
            if let Some((t, _)) = &tls {
                tracing::info!(handshakes = %t.stats(), "TLS handshakes of this generation");
            }
            Ok(())
        })
    }
}
