//! The generic tokio drain: accept until the hand-over, track connection tasks, wait for them
//! under `drain_timeout`. For any protocol (raw TCP, Redis-like, custom framing); the HTTP
//! integration ([`serve()`](super::serve())) is built on it.
//!
//! ```no_run
//! use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
//!
//! #[hotexec::main(drain_timeout = "10s")]
//! #[listen("127.0.0.1:7000", name = "tcp")]
//! async fn main(listeners: hotexec::Listeners, shutdown: hotexec::Shutdown) -> std::io::Result<()> {
//!     let mut listener = listeners.take_tokio_tcp("tcp")?;
//!     let conns = hotexec::drain::Connections::new(shutdown);
//!     // `None` exactly when a new generation is ready (or on SIGTERM).
//!     while let Some((stream, _peer)) = conns.accept(&mut listener).await {
//!         let closing = conns.closing();
//!         conns.spawn(async move {
//!             let (r, mut w) = stream.into_split();
//!             let mut r = BufReader::new(r);
//!             loop {
//!                 // The next request's first bytes; or, while idle, leave once the grace
//!                 // window after the hand-over is over (never with a request half read).
//!                 let more = tokio::select! {
//!                     biased;
//!                     buf = r.fill_buf() => matches!(buf, Ok(b) if !b.is_empty()),
//!                     _ = closing.cancelled() => false,
//!                 };
//!                 let mut line = String::new();
//!                 if !more || !matches!(r.read_line(&mut line).await, Ok(n) if n > 0) {
//!                     break;
//!                 }
//!                 if w.write_all(line.as_bytes()).await.is_err() {
//!                     break;
//!                 }
//!             }
//!         });
//!     }
//!     // Every connection accepted before the hand-over is finished (bounded by drain_timeout).
//!     conns.wait().await;
//!     Ok(())
//! }
//! ```
//!
//! The phases, from the moment [`Shutdown`] resolves:
//!
//! 1. [`accept`](Connections::accept) returns `None` at once, even when a connection is
//!    waiting at that very moment (it stays in the shared accept queue for the new generation).
//! 2. [`draining`](Connections::draining) is cancelled: protocols that can tell a client to
//!    leave (HTTP's `Connection: close`, HTTP/2's `GOAWAY`) do it now.
//! 3. After the close grace window ([`DEFAULT_CLOSE_GRACE`] unless
//!    [`with_close_grace`](Connections::with_close_grace)), [`closing`](Connections::closing) is
//!    cancelled: connections still idle close now, at a message boundary.
//! 4. [`wait`](Connections::wait) returns once every task is done; at the drain deadline the
//!    runtime's watchdog ends the process (status 124) with whatever is still running.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use tokio_util::task::TaskTracker;

/// tokio-util's token, re-exported: what [`Connections::draining`] and
/// [`Connections::closing`] return, nameable without a dependency of your own on tokio-util.
pub use tokio_util::sync::CancellationToken;

use super::{DEFAULT_CLOSE_GRACE, Listener};
use crate::Shutdown;

/// The connections of one server (one listener or several) through an upgrade: accepts until
/// the hand-over, tracks the connection tasks, and waits for them under `drain_timeout`.
///
/// Cheap to clone; clones share the same tasks and phases. Must be created inside a tokio
/// runtime (it spawns the small task that runs the phases).
#[derive(Clone)]
pub struct Connections {
    inner: Arc<Inner>,
}

struct Inner {
    shutdown: Shutdown,
    tracker: TaskTracker,
    draining: CancellationToken,
    closing: CancellationToken,
    grace: Duration,
}

impl std::fmt::Debug for Connections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connections")
            .field("open", &self.inner.tracker.len())
            .field("draining", &self.inner.draining.is_cancelled())
            .field("closing", &self.inner.closing.is_cancelled())
            .field("close_grace", &self.inner.grace)
            .finish()
    }
}

impl Connections {
    /// Connections drained by `shutdown`, with the default close grace window
    /// ([`DEFAULT_CLOSE_GRACE`]).
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub fn new(shutdown: Shutdown) -> Connections {
        Connections::with_close_grace(shutdown, DEFAULT_CLOSE_GRACE)
    }

    /// Connections drained by `shutdown`; [`closing`](Connections::closing) is cancelled
    /// `grace` after the hand-over.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub fn with_close_grace(shutdown: Shutdown, grace: Duration) -> Connections {
        let inner = Arc::new(Inner {
            shutdown: shutdown.clone(),
            tracker: TaskTracker::new(),
            draining: CancellationToken::new(),
            closing: CancellationToken::new(),
            grace,
        });
        let (draining, closing) = (inner.draining.clone(), inner.closing.clone());
        // Not tracked: it is the clock of the phases, not a connection.
        tokio::spawn(async move {
            let reason = shutdown.await;
            tracing::debug!(?reason, ?grace, "draining connections");
            draining.cancel();
            tokio::time::sleep(grace).await;
            closing.cancel();
        });
        Connections { inner }
    }

    /// Accepts the next connection from `listener`, or `None` once shutdown has resolved.
    ///
    /// Shutdown is checked first (a `biased` select): from the hand-over on, this process
    /// accepts nothing, even a connection that is waiting at that moment; it stays queued on
    /// the shared listening socket and the new generation accepts it. Errors of one
    /// connection (reset before it was accepted) are skipped; others (out of file
    /// descriptors) are logged and retried after a short pause, so the loop never ends on its own.
    pub async fn accept<L: Listener>(&self, listener: &mut L) -> Option<(L::Io, L::Addr)> {
        let mut shutdown = self.inner.shutdown.clone();
        loop {
            tokio::select! {
                biased;
                _ = &mut shutdown => return None,
                accepted = listener.accept() => match accepted {
                    Ok(conn) => {
                        self.inner.shutdown.drain_count().accepted();
                        return Some(conn);
                    }
                    Err(e) if is_connection_error(&e) => continue,
                    Err(e) => {
                        tracing::warn!("accept: {e}; retrying in 50ms");
                        tokio::select! {
                            biased;
                            _ = &mut shutdown => return None,
                            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                        }
                    }
                },
            }
        }
    }

    /// Spawns a connection task that [`wait`](Connections::wait) waits for.
    pub fn spawn<F>(&self, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        // Counted for the upgrade's evidence (the old generation's drain summary): how many
        // finished while draining, how many were still open at the end. A guard, so a task that
        // panics or is aborted is counted as ended too.
        struct Counted(Shutdown);
        impl Drop for Counted {
            fn drop(&mut self) {
                self.0.drain_count().closed(self.0.is_triggered());
            }
        }
        let shutdown = self.inner.shutdown.clone();
        shutdown.drain_count().opened();
        let guard = Counted(shutdown);
        self.inner.tracker.spawn(async move {
            let _guard = guard;
            task.await
        })
    }

    /// Cancelled when shutdown has resolved (the hand-over): time to ask clients to leave, if
    /// the protocol can (`Connection: close`, `GOAWAY`). Work in progress goes on.
    pub fn draining(&self) -> CancellationToken {
        self.inner.draining.clone()
    }

    /// True from the hand-over on. Reads the `Shutdown` itself, so it holds from the very
    /// moment it resolved (the [`draining`](Connections::draining) token is cancelled by a task,
    /// a moment later).
    pub fn is_draining(&self) -> bool {
        self.inner.draining.is_cancelled() || self.inner.shutdown.is_triggered()
    }

    /// Cancelled once the close grace window after the hand-over is over: connections still
    /// idle close now, at a message boundary (never in the middle of a request).
    pub fn closing(&self) -> CancellationToken {
        self.inner.closing.clone()
    }

    /// The close grace window: how long after the hand-over [`closing`](Connections::closing)
    /// is cancelled.
    pub fn close_grace(&self) -> Duration {
        self.inner.grace
    }

    /// The `Shutdown` these connections are drained by.
    pub fn shutdown(&self) -> &Shutdown {
        &self.inner.shutdown
    }

    /// Connection tasks still running.
    pub fn len(&self) -> usize {
        self.inner.tracker.len()
    }

    /// True when no connection task is running.
    pub fn is_empty(&self) -> bool {
        self.inner.tracker.is_empty()
    }

    /// Waits for every connection task, and returns how many were still running when it gave
    /// up (0: all finished; `main` can return at once and the process exits cleanly).
    ///
    /// Bounded by the drain deadline ([`Shutdown::drain_deadline`]). At that deadline the
    /// runtime's watchdog ends the process with status 124, so that a supervisor can tell a
    /// cut-off drain from a clean one; this wait outlasts the deadline by one second
    /// ([`DEADLINE_SLACK`]) so as not to race it, and is then only a backstop (and the bound of a
    /// [`detached`](Shutdown::detached) `Shutdown`, which has no watchdog). Called before
    /// shutdown has resolved (the accept loop ended for another reason), it counts
    /// `drain_timeout` from now. Tasks spawned after this call are waited for too.
    pub async fn wait(&self) -> usize {
        let shutdown = &self.inner.shutdown;
        let timeout = shutdown.drain_timeout();
        let deadline = shutdown
            .drain_deadline()
            .unwrap_or_else(|| Instant::now() + timeout)
            + DEADLINE_SLACK;
        self.inner.tracker.close();
        let open = self.inner.tracker.len();
        tracing::info!(open, "waiting for connections to finish");
        let all = self.inner.tracker.wait();
        if tokio::time::timeout_at(deadline.into(), all).await.is_ok() {
            tracing::info!("drained: every connection finished");
            return 0;
        }
        let left = self.inner.tracker.len();
        tracing::warn!(
            left,
            ?timeout,
            "drain timeout passed: returning with connections still open"
        );
        left
    }
}

/// How long [`Connections::wait`] waits past the drain deadline, where the runtime's watchdog
/// has ended the process.
pub const DEADLINE_SLACK: Duration = Duration::from_secs(1);

/// Errors of one connection, not of the listener: go on accepting at once.
fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | ConnectionRefused | Interrupted
    )
}
