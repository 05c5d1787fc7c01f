//! # hotexec — zero-downtime binary upgrades for Rust servers
//!
//! Two attributes give a server nginx-style upgrades: on `SIGUSR2` the running process starts
//! the binary on disk with its listening sockets, waits until the new process reports ready,
//! and only then stops accepting, drains in-flight work and exits. The sockets are the same
//! kernel objects in both processes, so no connection waiting in the accept queue is lost, and
//! a new binary that fails to start never disturbs the one that is serving.
//!
//! ```no_run
//! use std::io::{Read, Write};
//!
//! #[hotexec::main(drain_timeout = "5s")]
//! #[listen("127.0.0.1:9999", name = "echo")]
//! fn main(listeners: hotexec::Listeners, shutdown: hotexec::Shutdown) -> std::io::Result<()> {
//!     let listener = listeners.take_tcp("echo")?;
//!     // Accepts until an upgrade (or SIGTERM) says stop; the connection in hand is finished.
//!     while let Some((mut conn, _peer)) = shutdown.accept(&listener)? {
//!         let mut buf = [0; 1024];
//!         let n = conn.read(&mut buf)?;
//!         conn.write_all(&buf[..n])?;
//!     }
//!     Ok(())
//! }
//! ```
//!
//! Then `kill -USR2 <pid>` (or `HOTEXEC_PID_FILE=app.pid` and `kill -USR2 $(cat app.pid)`)
//! replaces the process with the binary now on disk.
//!
//! ## Options and their environment overrides
//!
//! | attribute option | environment variable | default | meaning |
//! |---|---|---|---|
//! | `drain_timeout = "30s"` | `HOTEXEC_DRAIN_TIMEOUT` | `30s` | time `main` has to return once shutdown resolves |
//! | `ready_timeout = "30s"` | `HOTEXEC_READY_TIMEOUT` | `30s` | time a new generation has to report ready |
//! | `upgrade_signal = "SIGUSR2"` | `HOTEXEC_UPGRADE_SIGNAL` | `SIGUSR2` | `SIGUSR2`, `SIGUSR1` or `SIGHUP` |
//! | `pid_file = "/run/app.pid"` | `HOTEXEC_PID_FILE` | none | written atomically; names the serving generation (empty variable: none) |
//! | `#[listen("ADDR", name = "N")]` | `HOTEXEC_LISTEN_<N>` | — | the listener's address (`N` upper-cased, `-` → `_`) |
//! | `probation = "2s"` | `HOTEXEC_PROBATION` | `2s` | how long the old process watches its successor after a hand-over, rolling back if it crashes |
//! | `health = false` | `HOTEXEC_HEALTH` | on | the health-gated commit (see [`health`]) |
//! | `max_probation = "10s"` | `HOTEXEC_MAX_PROBATION` | `10s` | how long the probation may wait for `min_sample` requests |
//! | `max_error_rate = "2%"` | `HOTEXEC_MAX_ERROR_RATE` | `2%` | bad answers a new generation may give (or the old rate × `max_error_ratio`, if higher) |
//! | `max_error_ratio = 2` | `HOTEXEC_MAX_ERROR_RATIO` | `2` | times the old generation's error rate a new one may reach |
//! | `min_sample = 200` | `HOTEXEC_MIN_SAMPLE` | `200` | requests needed to commit on the numbers |
//! | `ready = "manual"` | — | `auto` | the app calls [`ready()`] itself after its warm-up |
//! | `keeper = true` | `HOTEXEC_KEEPER` | off (on in the foreground of a terminal) | the started process stays as a keeper of the serving generation: its pid never changes (containers, supervisors) |
//!
//! Durations are a whole number and a unit: `500ms`, `2s`, `1m`, `1h`. Addresses are
//! `127.0.0.1:8080`, `[::1]:8080`, `tcp:…`, `udp:…` or `unix:/path`. A malformed variable stops
//! the program at start with a message naming it.
//!
//! ## Serving and draining (features `http`, `drain`)
//!
//! With `features = ["http"]` (or `["axum"]`), `hotexec::serve(listener, app, shutdown)` is the
//! one call in place of `axum::serve(listener, app).with_graceful_shutdown(..)`: it serves any
//! tower service (an axum `Router`, tonic's `Routes`) or, with `hotexec::serve_hyper`, a hyper
//! `service_fn`, over HTTP/1.1 and HTTP/2, and drains at the hand-over without losing a request.
//! With `features = ["drain"]`, `hotexec::drain::Connections` does the same for any other
//! protocol on tokio. With `features = ["tls"]`, `hotexec::serve(..).tls(config)` serves over
//! TLS (rustls) with the same drain, and session tickets that still resume after an upgrade.
//! See the `hotexec::serve` module (documented with those features).
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

#[cfg(feature = "drain")]
pub mod serve;
#[cfg(feature = "drain")]
pub use serve::drain;
#[cfg(feature = "tls")]
pub use serve::tls;
#[cfg(feature = "http")]
pub use serve::{serve, serve_hyper};

pub use hotexec_macros::{listen, main};
pub use hotexec_runtime::{
    Carried, Listeners, ReadyHold, Shutdown, ShutdownReason, UpgradeError, UpgradeFailed, ready,
    syntax::{ListenAddr, parse_duration},
    upgrade,
};

/// The health of a generation: what it serves, counted ([`health::Health`], reached through
/// [`Shutdown::health`]). `hotexec::serve` counts by itself; other servers record their
/// outcomes, and any app adds checks of its own.
pub use hotexec_runtime::health;

/// Preflight: what an upgrade would execute, checked without running it (path, symlinks, ELF
/// machine, interpreter, and the hand-over protocol range in a hotexec binary's note).
pub use hotexec_runtime::preflight;

/// The control socket (`@hotexec/<pid-ns>/<pid>`) and its client: trigger an upgrade of a running server
/// and get the outcome, as the `hotexec upgrade` command does.
pub use hotexec_runtime::control;

/// The evidence of every upgrade: [`UpgradeReport`] (what `hotexec upgrade --json` prints)
/// and [`evidence::Status`] (what `hotexec status` prints). With the `serde` feature both are
/// `Serialize` and `Deserialize`.
pub use hotexec_runtime::evidence;
pub use hotexec_runtime::evidence::UpgradeReport;

pub mod handoff;

#[doc(hidden)]
pub mod __private {
    //! What `#[hotexec::main]` expands to calls only these paths. Not a public API.
    pub use hotexec_runtime::private::*;
    #[cfg(feature = "tokio")]
    pub use tokio;
}
