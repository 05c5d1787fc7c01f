//! The server side of hand-off on tokio: [`Sessions`] accepts until the hand-over, resumes what
//! the previous generation hands over beside the accept loop, tells each session (its [`Relay`])
//! when to hand itself off at its next boundary, and waits for them all under `drain_timeout`.

use std::future::Future;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use hotexec_runtime::handoff::{
    Claim, Connection, HandedOff, HandoffError, IntoStreamError, incoming_claiming,
};
use tokio::task::JoinHandle;

use crate::serve::drain::{CancellationToken, Connections};
use crate::serve::{DEFAULT_CLOSE_GRACE, Listener};
use crate::{Shutdown, ShutdownReason};

/// A connection stream that can be handed off: tokio's `TcpStream` and `UnixStream`.
pub trait Socket:
    tokio::io::AsyncRead + tokio::io::AsyncWrite + AsFd + Unpin + Send + Sized
{
    /// A connection the previous generation handed over, as this stream type; the connection
    /// back (in the error) if it is not one.
    fn resume(conn: Connection) -> Result<(Self, Vec<u8>, Vec<u8>), IntoStreamError>;
}

impl Socket for tokio::net::TcpStream {
    fn resume(conn: Connection) -> Result<(Self, Vec<u8>, Vec<u8>), IntoStreamError> {
        let (s, unread, state) = conn.into_tokio_tcp()?;
        // As the listener sets it on accepted connections (a server writes each answer whole).
        let _ = s.set_nodelay(true);
        Ok((s, unread, state))
    }
}

impl Socket for tokio::net::UnixStream {
    fn resume(conn: Connection) -> Result<(Self, Vec<u8>, Vec<u8>), IntoStreamError> {
        conn.into_tokio_unix()
    }
}

/// The sessions of a server that hands its connections to the next generation: accepts until
/// the hand-over (or a stop), resumes the connections the previous generation hands over beside
/// the accept loop, and waits for every session under `drain_timeout`.
///
/// ```no_run
/// use tokio::io::{AsyncReadExt, AsyncWriteExt};
/// use hotexec::handoff::{Session, Sessions};
///
/// # async fn run(mut listener: tokio::net::TcpListener, shutdown: hotexec::Shutdown) {
/// let sessions = Sessions::new(shutdown);
/// // Accepted connections and resumed ones alike, until this generation is replaced.
/// while let Some(session) = sessions.accept(&mut listener).await {
///     sessions.spawn(echo(session));
/// }
/// sessions.wait().await; // each session handed itself off (or finished) at its boundary
/// # }
///
/// async fn echo(session: Session<tokio::net::TcpStream>) -> std::io::Result<()> {
///     let Session { mut stream, unread: mut buf, mut relay, .. } = session;
///     loop {
///         stream.write_all(&buf).await?; // everything read is answered: a boundary
///         buf.clear();
///         tokio::select! {
///             n = stream.read_buf(&mut buf) => if n? == 0 { return Ok(()) },
///             () = relay.due() => match relay.hand_off(stream, buf, Vec::new()).await {
///                 Ok(()) => return Ok(()), // the new generation serves it now
///                 Err(kept) => (stream, buf) = (kept.stream, kept.unread), // still ours
///             },
///         }
///     }
/// }
/// ```
///
/// One `Sessions` per process is the simple way; several (one per protocol and listener) work
/// too: each takes the handed-over connections of the listeners it accepts on
/// ([`Listener::claim`]).
#[derive(Clone)]
pub struct Sessions {
    inner: Arc<Inner>,
}

/// One listener's handed-over connections (shared by the accept calls on that listener).
type Receiver = Arc<tokio::sync::Mutex<HandedOff>>;

struct Inner {
    conns: Connections,
    shutdown: Shutdown,
    handoff: bool,
    /// The handed-over connections of each listener accepted on, claimed the first time.
    resumed: Mutex<Vec<(Claim, Option<Receiver>)>>,
    /// Sessions resumed, handed off, kept after a failed hand-off.
    resumed_n: AtomicU64,
    handed_n: AtomicU64,
    kept_n: AtomicU64,
    /// The first failed hand-off's reason, for the summary.
    first_failure: Mutex<Option<String>>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("open", &self.inner.conns.len())
            .field("handoff", &self.inner.handoff)
            .field("resumed", &self.inner.resumed_n.load(Ordering::Relaxed))
            .field("handed_off", &self.inner.handed_n.load(Ordering::Relaxed))
            .finish()
    }
}

impl Sessions {
    /// Sessions of this generation, handed to the next one when it takes hand-offs.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub fn new(shutdown: Shutdown) -> Sessions {
        Sessions::build(shutdown, true)
    }

    /// Sessions that are drained, never handed off (the next generation still gets the ones
    /// the previous generation hands to this one): to compare, or to turn hand-off off.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub fn without_handoff(shutdown: Shutdown) -> Sessions {
        Sessions::build(shutdown, false)
    }

    fn build(shutdown: Shutdown, handoff: bool) -> Sessions {
        Sessions {
            inner: Arc::new(Inner {
                conns: Connections::with_close_grace(shutdown.clone(), DEFAULT_CLOSE_GRACE),
                shutdown,
                handoff,
                resumed: Mutex::new(Vec::new()),
                resumed_n: AtomicU64::new(0),
                handed_n: AtomicU64::new(0),
                kept_n: AtomicU64::new(0),
                first_failure: Mutex::new(None),
            }),
        }
    }

    /// The next session: a connection the previous generation handed over (first, as they
    /// come) or one accepted from `listener`; `None` once this generation stops accepting (a
    /// new generation is ready, or a stop). A connection waiting at that moment stays in the
    /// shared accept queue for the new generation, as with [`Connections::accept`]; what the
    /// previous generation still offers then stays with it.
    pub async fn accept<L>(&self, listener: &mut L) -> Option<Session<L::Io>>
    where
        L: Listener,
        L::Io: Socket,
    {
        let claim = listener.claim();
        let mut shutdown = self.inner.shutdown.clone();
        loop {
            // Looked up each turn: once the previous generation is done, there is none.
            let rx = self.receiver(&claim);
            let got = match &rx {
                Some(rx) if !self.inner.shutdown.is_triggered() => {
                    let mut rx = rx.lock().await;
                    tokio::select! {
                        biased;
                        _ = &mut shutdown => None,
                        next = rx.recv() => Some(Err(next)),
                        accepted = self.inner.conns.accept(listener) => Some(Ok(accepted)),
                    }
                }
                _ => {
                    tokio::select! {
                        biased;
                        _ = &mut shutdown => None,
                        accepted = self.inner.conns.accept(listener) => Some(Ok(accepted)),
                    }
                }
            };
            match got {
                None | Some(Ok(None)) => {
                    self.stop_resuming();
                    return None;
                }
                Some(Ok(Some((stream, _peer)))) => {
                    return Some(Session::new(stream, Vec::new(), Vec::new(), false, self));
                }
                Some(Err(Some(Ok(conn)))) => match L::Io::resume(conn) {
                    Ok((stream, unread, state)) => {
                        self.inner.resumed_n.fetch_add(1, Ordering::Relaxed);
                        return Some(Session::new(stream, unread, state, true, self));
                    }
                    Err(e) => tracing::error!(
                        "a handed-over connection cannot be served: {e}; it is closed{}",
                        if e.conn.is_none() { " (already)" } else { "" }
                    ),
                },
                // Refused by the runtime, which logged it: nothing was adopted.
                Some(Err(Some(Err(e)))) => tracing::debug!("{e}"),
                Some(Err(None)) => self.ended(&claim),
            }
        }
    }

    /// The receiver of `claim`'s handed-over connections, claimed on first use.
    fn receiver(&self, claim: &Claim) -> Option<Receiver> {
        let mut all = self.inner.resumed.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, rx)) = all.iter().find(|(c, _)| c == claim) {
            return rx.clone();
        }
        let rx = incoming_claiming(claim.clone()).map(|h| Arc::new(tokio::sync::Mutex::new(h)));
        all.push((claim.clone(), rx.clone()));
        rx
    }

    /// The previous generation is done handing `claim`'s connections over.
    fn ended(&self, claim: &Claim) {
        let mut all = self.inner.resumed.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, rx)) = all.iter_mut().find(|(c, _)| c == claim) {
            *rx = None;
        }
    }

    /// This generation stops: what the previous one still offers is refused (the receivers
    /// go), and stays with it.
    fn stop_resuming(&self) {
        let mut all = self.inner.resumed.lock().unwrap_or_else(|p| p.into_inner());
        for (_, rx) in all.iter_mut() {
            *rx = None;
        }
    }

    /// Spawns a session task that [`wait`](Self::wait) waits for.
    pub fn spawn<F>(&self, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.inner.conns.spawn(task)
    }

    /// Waits for every session (each hands itself off or finishes), bounded by the drain
    /// deadline, as [`Connections::wait`]; returns how many were still running when it gave up.
    /// Logs what the hand-off did (`all sessions handed off or drained`, with counts and how
    /// long it took).
    pub async fn wait(&self) -> usize {
        let since = Instant::now();
        let left = self.inner.conns.wait().await;
        let i = &self.inner;
        let failure = i
            .first_failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        tracing::info!(
            pid = std::process::id(),
            resumed = i.resumed_n.load(Ordering::Relaxed),
            handed_off = i.handed_n.load(Ordering::Relaxed),
            kept = i.kept_n.load(Ordering::Relaxed),
            left,
            elapsed_us = since.elapsed().as_micros() as u64,
            first_failure = failure.as_deref().unwrap_or(""),
            "all sessions handed off or drained"
        );
        left
    }

    /// The drain these sessions are tracked by (its phases: draining, closing).
    pub fn connections(&self) -> &Connections {
        &self.inner.conns
    }

    /// The `Shutdown` these sessions follow.
    pub fn shutdown(&self) -> &Shutdown {
        &self.inner.shutdown
    }

    /// A [`Relay`] for a session this generation serves on a connection of its own making (a
    /// WebSocket its HTTP server upgraded).
    pub(crate) fn relay(&self) -> Relay {
        Relay {
            sessions: self.inner.clone(),
            tried: Vec::new(),
        }
    }

    /// How many sessions were handed to the next generation so far.
    pub fn handed_off(&self) -> u64 {
        self.inner.handed_n.load(Ordering::Relaxed)
    }
}

/// One connection of [`Sessions`], accepted by this generation or resumed from the previous one.
#[derive(Debug)]
#[non_exhaustive]
pub struct Session<S> {
    /// The connection.
    pub stream: S,
    /// What the previous generation had read from it but not processed: it comes first.
    /// Empty for a connection this generation accepted.
    pub unread: Vec<u8>,
    /// The state the previous generation handed over with it (the application's format).
    /// Empty for a connection this generation accepted.
    pub state: Vec<u8>,
    /// Handed over by the previous generation (`false`: accepted by this one).
    pub resumed: bool,
    /// When and how this session hands itself to the next generation.
    pub relay: Relay,
}

impl<S> Session<S> {
    fn new(stream: S, unread: Vec<u8>, state: Vec<u8>, resumed: bool, s: &Sessions) -> Self {
        Session {
            stream,
            unread,
            state,
            resumed,
            relay: s.relay(),
        }
    }
}

/// Tells a session when to hand itself to the next generation, and does it.
///
/// A session calls [`due`](Self::due) beside its read (in a `select!`) and, when it resolves,
/// finishes what it is doing (the message it is reading, the answer it is writing) and calls
/// [`hand_off`](Self::hand_off) at that boundary with what it read but did not process and its
/// state. If that fails (the new generation refused it, died, or its deadline passed), the
/// session has its connection back and serves on; `due` resolves again only for another
/// generation (a rollback's, if the new one died in its probation). Without hand-off (a final
/// stop, a new generation that does not take them) it never resolves: the session is drained,
/// and [`closing`](Self::closing) says when the drain wants it closed.
#[derive(Debug)]
pub struct Relay {
    sessions: Arc<Inner>,
    /// The generations a hand-off of this session failed with.
    tried: Vec<u32>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions").finish_non_exhaustive()
    }
}

impl Relay {
    /// The hand-off this session can try now, if any.
    fn target(&self) -> Option<hotexec_runtime::handoff::Handoff> {
        if !self.sessions.handoff {
            return None;
        }
        self.sessions
            .shutdown
            .handoff()
            .filter(|h| !self.tried.contains(&h.new_pid()))
    }

    /// True when [`due`](Self::due) would resolve at once.
    pub fn is_due(&self) -> bool {
        self.target().is_some()
    }

    /// Resolves when this session should hand itself off at its next boundary: this generation
    /// was replaced by one that takes hand-offs (after a failed hand-off: by another such
    /// generation). Never resolves otherwise. Cancel-safe; resolves at once while it holds.
    pub async fn due(&self) {
        let mut shutdown = self.sessions.shutdown.clone();
        let reason = (&mut shutdown).await;
        if !self.sessions.handoff || !matches!(reason, ShutdownReason::Upgrade { .. }) {
            return std::future::pending().await;
        }
        let successor = self.sessions.shutdown.successor();
        loop {
            let changed = successor.changed();
            if self.is_due() {
                return;
            }
            changed.await;
        }
    }

    /// Cancelled when the drain wants idle sessions closed (the close grace window after the
    /// hand-over is over, [`Connections::closing`]): a session that is not handed off closes
    /// at its next boundary (WebSocket: with 1001, going away), or serves on until its client
    /// leaves, as the protocol prefers.
    pub fn closing(&self) -> CancellationToken {
        self.sessions.conns.closing()
    }

    /// Hands the session to the next generation: `stream`, what was read from it but not
    /// processed (`unread`, at most [`MAX_UNREAD`](super::MAX_UNREAD)), and the application's
    /// `state` (at most [`MAX_STATE`](super::MAX_STATE)). `Ok` once the new generation has
    /// acknowledged it: the session is over here. `Err`: the connection is still this
    /// generation's, everything given back — serve on.
    ///
    /// Call it at a boundary: nothing half-read that is not in `unread`, nothing half-written.
    pub async fn hand_off<S: Socket>(
        &mut self,
        stream: S,
        unread: Vec<u8>,
        state: Vec<u8>,
    ) -> Result<(), Kept<S>> {
        match self.hand_off_fd(stream.as_fd(), unread, state).await {
            Ok(()) => Ok(()),
            Err((unread, state, error)) => Err(Kept {
                stream,
                unread,
                state,
                error,
            }),
        }
    }

    /// [`hand_off`](Self::hand_off) for a connection whose stream is not a [`Socket`] (a
    /// WebSocket over hyper's upgraded connection): a copy of `fd` is sent, and the caller
    /// drops its stream once this returns `Ok`. `Err` gives back the unread bytes and the state.
    pub async fn hand_off_fd(
        &mut self,
        fd: std::os::fd::BorrowedFd<'_>,
        unread: Vec<u8>,
        state: Vec<u8>,
    ) -> Result<(), (Vec<u8>, Vec<u8>, HandoffError)> {
        let Some(h) = self.target() else {
            return Err((
                unread,
                state,
                HandoffError::Closed("no generation takes hand-offs now".into()),
            ));
        };
        // A copy of the fd travels; the stream stays registered with tokio here, so a failed
        // hand-off gives the session back a stream that works as it did.
        let copy: OwnedFd = match fd.try_clone_to_owned() {
            Ok(fd) => fd,
            Err(e) => {
                let error =
                    HandoffError::Closed(format!("no fd free to hand the connection off: {e}"));
                self.failed(h.new_pid(), &error);
                return Err((unread, state, error));
            }
        };
        match h.send(copy, unread, state).await {
            Ok(()) => {
                self.sessions.handed_n.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(back) => {
                // `back.fd`, the copy, is closed here; the stream serves on.
                self.failed(h.new_pid(), &back.error);
                Err((back.unread, back.state, back.error))
            }
        }
    }

    /// A hand-off to `pid` failed: not that one again; counted, and the first one logged.
    fn failed(&mut self, pid: u32, error: &HandoffError) {
        self.tried.push(pid);
        self.sessions.kept_n.fetch_add(1, Ordering::Relaxed);
        let mut first = self
            .sessions
            .first_failure
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if first.is_none() {
            tracing::warn!(
                new_pid = pid,
                "a session stays with this generation: {error} (logged once; the count is in the summary)"
            );
            *first = Some(error.to_string());
        }
    }
}

/// A session that was not handed off, given back whole: serve it on.
#[derive(Debug)]
#[non_exhaustive]
pub struct Kept<S> {
    /// The connection, as it was.
    pub stream: S,
    /// The unread bytes, as given.
    pub unread: Vec<u8>,
    /// The state, as given.
    pub state: Vec<u8>,
    /// Why it was not handed off.
    pub error: HandoffError,
}

/// Serves `listener` with `session` until this generation is replaced (or stopped), resuming
/// the sessions the previous generation hands over, then waits for every session to hand
/// itself off or finish: [`Sessions`] in one call.
///
/// ```no_run
/// # async fn session(s: hotexec::handoff::Session<tokio::net::TcpStream>) {}
/// #[hotexec::main]
/// #[listen("127.0.0.1:9400", name = "line")]
/// async fn main(listeners: hotexec::Listeners, shutdown: hotexec::Shutdown) -> std::io::Result<()> {
///     let listener = listeners.take_tokio_tcp("line")?;
///     hotexec::handoff::serve(listener, shutdown, session).await
/// }
/// ```
pub async fn serve<L, F, Fut>(mut listener: L, shutdown: Shutdown, session: F) -> io::Result<()>
where
    L: Listener,
    L::Io: Socket,
    F: Fn(Session<L::Io>) -> Fut,
    Fut: Future + Send + 'static,
    Fut::Output: Send + 'static,
{
    let sessions = Sessions::new(shutdown);
    while let Some(s) = sessions.accept(&mut listener).await {
        sessions.spawn(session(s));
    }
    drop(listener);
    sessions.wait().await;
    Ok(())
}
