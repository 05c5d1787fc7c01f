//! Serving connections until the hand-over, then draining them without losing a request.
//!
//! Two layers, each behind its own cargo feature so an app pays only for its stack:
//!
//! - [`drain`] (feature `drain`): for any protocol on tokio. [`drain::Connections`] accepts
//!   until [`Shutdown`](crate::Shutdown) resolves — exactly then, never one connection more —,
//!   tracks every connection task, tells them when to close at a message boundary, and waits
//!   for all of them, bounded by `drain_timeout`.
//! - [`serve()`] and [`serve_hyper()`] (feature `http`): HTTP/1.1 and HTTP/2 on hyper, built on
//!   the layer above. One call in place of `axum::serve(listener, app).with_graceful_shutdown(..)`;
//!   [`connection()`] serves one connection the app accepted itself (after its own TLS
//!   handshake) with the same drain.
//!
//! What each stack writes, in place of its own `serve`:
//!
//! | stack | the call |
//! |---|---|
//! | axum | `hotexec::serve(listener, app, shutdown).await` |
//! | tonic | `hotexec::serve(listener, routes, shutdown).await` (`routes`: `tonic::service::Routes`; gRPC's HTTP/2 is detected per connection, or say `.http2_only()`) |
//! | hyper | `hotexec::serve_hyper(listener, service_fn(handler), shutdown).await` |
//! | TLS (feature `tls`) | `hotexec::serve(listener, app, shutdown).tls(config).await` ([`tls`]: rustls, session tickets carried across upgrades) |
//! | own TLS | `hotexec::serve::connection(tls_stream, app, &conns)` in a [`drain::Connections`] accept loop ([`tls::Acceptor`] does the handshake) |
//! | any tokio protocol | [`drain::Connections`]: `accept`, `spawn`, `closing`, `wait` |
//!
//! Files: `listener.rs` (what can be accepted from), `drain.rs`, `http.rs` (the builder and the
//! accept loop), `conn.rs` (one HTTP connection through the drain phases), `count.rs` (each
//! request's outcome counted into the generation's health), `probe.rs` (a request through the
//! app's own service before ready), `readiness.rs` (the hold on the runtime's readiness),
//! `tls/` (TLS: configuration and handshakes in `mod.rs`, `certs.rs`, `tickets.rs` for the
//! session-ticket keys, `carry.rs` for their way to the next generation).

pub mod drain;
mod listener;

#[cfg(feature = "http")]
mod conn;
#[cfg(feature = "http")]
mod count;
#[cfg(feature = "http")]
mod http;
#[cfg(feature = "http")]
mod probe;
#[cfg(feature = "http")]
mod readiness;
#[cfg(feature = "tls")]
pub mod tls;

pub use listener::Listener;

#[cfg(feature = "http")]
pub use conn::{BoxError, connection, connection_hyper};
// The hand-off's axum integration serves its connections through the same drain.
#[cfg(feature = "axum-websocket")]
pub(crate) use conn::serve_conn;
#[cfg(feature = "http")]
pub use http::{Serve, serve, serve_hyper};
#[cfg(feature = "http")]
pub use probe::{DEFAULT_PROBE_TIMEOUT, Probe, ProbeSpecError};

/// The default keep-alive grace window ([`Serve::close_grace`], [`drain::Connections::with_close_grace`]).
///
/// Once a new generation is ready, this one answers every HTTP/1.1 request with
/// `Connection: close` for this long, so a busy keep-alive client leaves at a request boundary;
/// only the connections still idle after it are closed. Closing an idle keep-alive connection
/// at once races with a request its client may be sending at that moment (that request gets EOF
/// or a reset: the loss `axum::serve(..).with_graceful_shutdown(..)` and nginx show). 500 ms
/// is many request round trips even on a loaded host, so every active client has seen a
/// `Connection: close` by then, and short enough that the old process is gone soon after the
/// hand-over.
pub const DEFAULT_CLOSE_GRACE: std::time::Duration = std::time::Duration::from_millis(500);
