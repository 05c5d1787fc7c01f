//! The `Shutdown` handle: resolves when this generation must stop accepting.

use std::future::Future;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use crate::generation::{Carried, Generation, ReadyHold};

/// Why this generation is shutting down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShutdownReason {
    /// A new generation (this pid) is ready and serving: stop accepting, finish in-flight work.
    Upgrade {
        /// Pid of the process that took over.
        new_pid: u32,
    },
    /// SIGTERM or SIGINT: a final, graceful stop.
    Stop {
        /// The signal number that asked for it.
        signal: i32,
    },
}

struct Inner {
    state: Mutex<State>,
    cond: Condvar,
    // Becomes readable when shutdown is triggered, for sync servers that poll(2) it with their
    // listener (`Shutdown::accept`).
    pipe_r: OwnedFd,
    pipe_w: OwnedFd,
    /// Run once, right after a final stop resolved every clone (see [`Shutdown::on_final_stop`]).
    on_final_stop: Mutex<Vec<Box<dyn FnOnce() + Send>>>,
    /// The configured `drain_timeout`: the drain watchdog ends the process this long after the
    /// trigger.
    drain_timeout: Duration,
    /// Made by [`Shutdown::detached`]: resolved by [`Shutdown::resolve`], not by the runtime.
    detached: bool,
    /// This generation (see [`Shutdown::generation`]).
    generation: Arc<Generation>,
}

struct State {
    reason: Option<ShutdownReason>,
    /// When `reason` was set: the drain deadline counts from here.
    triggered_at: Option<Instant>,
    wakers: Vec<Waker>,
}

/// Resolves when this generation must stop accepting: either a new generation has reported
/// ready (an upgrade) or a stop signal arrived. Cheap to clone; every clone resolves together.
///
/// In async code, `.await` it (or `&mut shutdown` in `tokio::select!`). In sync code, use
/// [`Shutdown::wait`], [`Shutdown::is_triggered`] or the [`Shutdown::accept`] helper.
///
/// Once it has resolved, stop accepting, let in-flight work finish, and return from `main`.
/// The process exits when `main` returns or when the drain timeout expires, whichever comes first.
#[derive(Clone)]
pub struct Shutdown {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Shutdown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shutdown")
            .field("reason", &self.reason())
            .finish()
    }
}

impl Shutdown {
    pub(crate) fn new(
        drain_timeout: Duration,
        generation: Arc<Generation>,
    ) -> io::Result<Shutdown> {
        Shutdown::make(drain_timeout, false, generation)
    }

    /// A `Shutdown` of its own, not tied to the hotexec runtime: it resolves when
    /// [`resolve`](Shutdown::resolve) is called. For running the same serving code without
    /// hotexec — a plain binary stopped by its own signal handling, or a test of the app — with
    /// `drain_timeout` bounding its drain as the runtime's would (no watchdog ends the process).
    pub fn detached(drain_timeout: Duration) -> io::Result<Shutdown> {
        Shutdown::make(drain_timeout, true, Arc::new(Generation::detached()))
    }

    /// Resolves a [`detached`](Shutdown::detached) `Shutdown` (every clone) with `reason`.
    /// Returns false, doing nothing, when it was already resolved or when it is the runtime's
    /// own (that one resolves at the hand-over or on a stop signal, never on the app's word: use
    /// [`upgrade`](crate::upgrade) to ask for an upgrade).
    pub fn resolve(&self, reason: ShutdownReason) -> bool {
        self.inner.detached && self.trigger(reason)
    }

    /// Whether this is a [`detached`](Shutdown::detached) `Shutdown` (not the runtime's): code
    /// that would end the process on the runtime's behalf (a failed start) reports an error
    /// to its caller instead.
    pub fn is_detached(&self) -> bool {
        self.inner.detached
    }

    fn make(
        drain_timeout: Duration,
        detached: bool,
        generation: Arc<Generation>,
    ) -> io::Result<Shutdown> {
        let (pipe_r, pipe_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| io::Error::other(format!("pipe2: {}", e.desc())))?;
        Ok(Shutdown {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    reason: None,
                    triggered_at: None,
                    wakers: Vec::new(),
                }),
                cond: Condvar::new(),
                pipe_r,
                pipe_w,
                on_final_stop: Mutex::new(Vec::new()),
                drain_timeout,
                detached,
                generation,
            }),
        })
    }

    /// Resolves every clone. The first reason wins; returns false if it was already triggered.
    pub(crate) fn trigger(&self, reason: ShutdownReason) -> bool {
        let wakers = {
            let mut st = self.inner.state.lock().unwrap_or_else(|p| p.into_inner());
            if st.reason.is_some() {
                return false;
            }
            st.reason = Some(reason);
            st.triggered_at = Some(Instant::now());
            std::mem::take(&mut st.wakers)
        };
        self.inner.cond.notify_all();
        let _ = nix::unistd::write(&self.inner.pipe_w, b"x");
        for w in wakers {
            w.wake();
        }
        if matches!(reason, ShutdownReason::Stop { .. }) {
            let hooks = std::mem::take(
                &mut *self
                    .inner
                    .on_final_stop
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()),
            );
            for hook in hooks {
                hook();
            }
        }
        true
    }

    /// Registers `f` to run once a final stop (not an upgrade) has resolved this `Shutdown`, on
    /// the thread that triggered it. The runtime closes its own copies of the listeners there.
    pub(crate) fn on_final_stop(&self, f: impl FnOnce() + Send + 'static) {
        self.inner
            .on_final_stop
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Box::new(f));
    }

    /// The reason, once triggered.
    pub fn reason(&self) -> Option<ShutdownReason> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .reason
    }

    /// The time `main` has to return once shutdown resolves (`drain_timeout`, after its
    /// environment override): past it, the process is ended with status 124.
    pub fn drain_timeout(&self) -> Duration {
        self.inner.drain_timeout
    }

    /// The instant the drain watchdog ends the process, once shutdown has resolved: the moment
    /// it resolved plus [`drain_timeout`](Shutdown::drain_timeout). Draining code bounds its
    /// waits by it (as `hotexec::drain::Connections::wait` does); for the runtime's own
    /// `Shutdown`, the watchdog ends the process there with status 124.
    pub fn drain_deadline(&self) -> Option<Instant> {
        let st = self.inner.state.lock().unwrap_or_else(|p| p.into_inner());
        st.triggered_at.map(|t| t + self.inner.drain_timeout)
    }

    /// True once shutdown has been triggered.
    pub fn is_triggered(&self) -> bool {
        self.reason().is_some()
    }

    /// Blocks the calling thread until shutdown is triggered.
    pub fn wait(&self) -> ShutdownReason {
        let mut st = self.inner.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(r) = st.reason {
                return r;
            }
            st = self.inner.cond.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Blocks up to `timeout`; `None` if shutdown was not triggered by then.
    pub fn wait_timeout(&self, timeout: Duration) -> Option<ShutdownReason> {
        let st = self.inner.state.lock().unwrap_or_else(|p| p.into_inner());
        let (st, _) = self
            .inner
            .cond
            .wait_timeout_while(st, timeout, |s| s.reason.is_none())
            .unwrap_or_else(|p| p.into_inner());
        st.reason
    }

    /// Accepts the next connection on `listener`, or returns `Ok(None)` once shutdown is
    /// triggered: the accept loop of a sync server in one call.
    ///
    /// It waits with `poll(2)` on both the listener and the shutdown, so a thread blocked here
    /// wakes up for either. The listening socket is shared with the other generation during an
    /// upgrade and both are woken by a new connection, so this switches the listener to
    /// non-blocking mode and goes back to waiting when the other process won the race.
    pub fn accept(&self, listener: &TcpListener) -> io::Result<Option<(TcpStream, SocketAddr)>> {
        listener.set_nonblocking(true)?;
        loop {
            if self.is_triggered() {
                return Ok(None);
            }
            let mut fds = [
                PollFd::new(listener.as_fd(), PollFlags::POLLIN),
                PollFd::new(self.inner.pipe_r.as_fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(io::Error::other(format!("poll: {}", e.desc()))),
            }
            if self.is_triggered() {
                return Ok(None);
            }
            match listener.accept() {
                Ok((stream, peer)) => {
                    stream.set_nonblocking(false)?;
                    return Ok(Some((stream, peer)));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // A connection reset before it was accepted: not the server's failure.
                Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// After an upgrade to a generation that takes connection hand-offs: the [`Handoff`] to pass
    /// it established connections instead of draining them (see [`crate::handoff`]); after a
    /// rollback (that generation died within its probation), the one to the rollback generation
    /// that replaced it. `None` before an upgrade resolved this `Shutdown`, on a final stop, and
    /// when the new generation does not take hand-offs (drain as usual then).
    ///
    /// [`Handoff`]: crate::handoff::Handoff
    pub fn handoff(&self) -> Option<crate::handoff::Handoff> {
        match self.reason() {
            Some(ShutdownReason::Upgrade { .. }) => self.inner.generation.handoff.current(),
            _ => None,
        }
    }

    /// The health counters of this generation: `hotexec::serve` counts into them, a server
    /// of its own records its outcomes there, and any app adds its own checks. During the
    /// probation after an upgrade they decide whether the new generation is committed (see
    /// [`crate::health`]).
    pub fn health(&self) -> crate::health::Health {
        self.inner.generation.health.clone()
    }

    /// The hand-off target as it changes: [`handoff`](Self::handoff) and a future that resolves
    /// when a rollback generation takes over from a successor that died, so that connections
    /// given back by the dead one can be offered to it.
    pub fn successor(&self) -> crate::handoff::Successor {
        self.inner.generation.handoff.clone()
    }

    /// This generation's number: 1 after a fresh start, +1 per upgrade (a rollback counts as
    /// one more). 1 for a [`detached`](Shutdown::detached) `Shutdown`.
    pub fn generation(&self) -> u64 {
        self.inner.generation.number()
    }

    /// The counters of how this generation's connections end, for its drain summary (the
    /// `old_generation` of the upgrade's evidence). `hotexec::serve` and
    /// `hotexec::drain::Connections` count into it; an application that serves its own way can
    /// too ([`DrainCount::opened`](crate::evidence::DrainCount::opened) /
    /// [`closed`](crate::evidence::DrainCount::closed)).
    pub fn drain_count(&self) -> &crate::evidence::DrainCount {
        &self.inner.generation.drain_count
    }

    /// Takes the bytes the previous generation carried over under `key` (see
    /// [`carry`](Shutdown::carry)); `None` after a fresh start, when it carried nothing under
    /// that key, or when it is an older build. Taken once. The bytes are zeroed when dropped.
    pub fn inherited(&self, key: &str) -> Option<Carried> {
        self.inner.generation.take_inherited(key)
    }

    /// Carries state to the next generation: at each upgrade, just before the new generation is
    /// started, `f` runs in this one and its bytes (at most 64 KiB) reach the new generation,
    /// which takes them with [`inherited`](Shutdown::inherited) as it starts. They travel over a
    /// private, close-on-exec channel between the two processes: never in the environment,
    /// argv or a file. Use it for what must continue across upgrades — session-ticket keys,
    /// counters — not for what a new build may not understand: version the bytes.
    ///
    /// Registering `key` again replaces the earlier `f`. A key is at most 255 bytes.
    pub fn carry(&self, key: &str, f: impl Fn() -> Vec<u8> + Send + Sync + 'static) {
        self.inner.generation.carry(key, Box::new(f));
    }

    /// Holds this generation's readiness report until the returned [`ReadyHold`] is dropped:
    /// the previous generation keeps serving meanwhile. For work that must succeed before this
    /// generation takes over — a warm-up, a probe through the app's own service — without
    /// switching the whole program to `ready = "manual"`. [`ReadyHold::fail`] gives up: the
    /// process exits before it is ready, and the upgrade fails naming the reason.
    pub fn hold_ready(&self) -> ReadyHold {
        ReadyHold::new(&self.inner.generation)
    }

    /// The read end of a pipe that becomes readable when shutdown is triggered, for event loops
    /// of their own (`poll`, `mio`).
    pub fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.inner.pipe_r.as_raw_fd()
    }
}

impl Future for Shutdown {
    type Output = ShutdownReason;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<ShutdownReason> {
        let mut st = self.inner.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = st.reason {
            return Poll::Ready(r);
        }
        if !st.wakers.iter().any(|w| w.will_wake(cx.waker())) {
            st.wakers.push(cx.waker().clone());
        }
        Poll::Pending
    }
}
