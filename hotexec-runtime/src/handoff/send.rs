//! The old generation's side: [`Handoff`] queues connections for a thread that sends them over
//! the channel and settles each one when the new generation answers.
//!
//! Ownership: a connection stays the old generation's (its fd open here) until the new
//! generation's ACK for it arrives; then this side closes its copy and the send succeeds. A NAK,
//! the channel closing (the new generation exited or was killed) or the hand-off deadline before
//! the ACK gives it back as [`Returned`]. At the deadline this side shuts the channel for writing
//! and keeps reading: the new generation answers every record it still holds (NAK) and closes,
//! so no record is ever claimed by both sides.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use super::channel::{self, Received};
use super::error::HandoffError;
use super::wire::{self, Kind};

/// A connection that was not handed off, given back whole: serve it on (or drain it) as before.
pub struct Returned {
    /// The connection's socket, as it was passed to [`Handoff::send`].
    pub fd: OwnedFd,
    /// The unread bytes, as given.
    pub unread: Vec<u8>,
    /// The state, as given.
    pub state: Vec<u8>,
    /// Why it came back.
    pub error: HandoffError,
}

impl fmt::Debug for Returned {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Returned")
            .field("fd", &self.fd)
            .field("unread", &self.unread.len())
            .field("state", &self.state.len())
            .field("error", &self.error)
            .finish()
    }
}

impl fmt::Display for Returned {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.error.fmt(f)
    }
}

impl std::error::Error for Returned {}

impl Returned {
    /// The state as the serde type it was sent as (feature `serde`).
    #[cfg(feature = "serde")]
    pub fn state_as<T: serde::de::DeserializeOwned>(&self) -> Result<T, HandoffError> {
        super::error::decode_state(&self.state)
    }

    /// The socket as a std `TcpStream` (blocking mode as it was).
    pub fn into_tcp(self) -> (std::net::TcpStream, Vec<u8>, Vec<u8>) {
        (self.fd.into(), self.unread, self.state)
    }

    /// The socket as a `tokio::net::TcpStream` (made non-blocking); inside a tokio runtime.
    #[cfg(feature = "tokio")]
    pub fn into_tokio_tcp(self) -> io::Result<(tokio::net::TcpStream, Vec<u8>, Vec<u8>)> {
        let (s, unread, state) = self.into_tcp();
        s.set_nonblocking(true)?;
        Ok((tokio::net::TcpStream::from_std(s)?, unread, state))
    }
}

/// The outcome of one send, once settled, and who waits for it.
type Outcome = (Option<Result<(), Returned>>, Option<Waker>);

/// Where the outcome of one send lands.
struct Slot {
    state: Mutex<Outcome>,
    cond: Condvar,
}

impl Slot {
    fn new() -> Arc<Slot> {
        Arc::new(Slot {
            state: Mutex::new((None, None)),
            cond: Condvar::new(),
        })
    }

    fn complete(&self, r: Result<(), Returned>) {
        let waker = {
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            st.0 = Some(r);
            st.1.take()
        };
        self.cond.notify_all();
        if let Some(w) = waker {
            w.wake();
        }
    }
}

struct Item {
    id: u64,
    fd: OwnedFd,
    unread: Vec<u8>,
    state: Vec<u8>,
    slot: Arc<Slot>,
}

impl Item {
    /// Gives the connection back, counted in `returned`.
    fn give_back(self, error: HandoffError, returned: &AtomicU64) {
        returned.fetch_add(1, Ordering::Relaxed);
        let Item {
            fd,
            unread,
            state,
            slot,
            ..
        } = self;
        slot.complete(Err(Returned {
            fd,
            unread,
            state,
            error,
        }));
    }
}

struct Queues {
    /// Not sent yet.
    out: VecDeque<Item>,
    /// Sent, waiting for the new generation's answer.
    sent: HashMap<u64, Item>,
    /// Set once the channel is over: no send can be queued any more, and why.
    closed: Option<HandoffError>,
    /// No more sends: shut the channel for writing once `out` is empty.
    finishing: bool,
}

struct Shared {
    queues: Mutex<Queues>,
    wake_w: OwnedFd,
    next_id: AtomicU64,
    new_pid: u32,
    handed: AtomicU64,
    /// Connections given back to this generation (refused, or the channel ended first).
    returned: AtomicU64,
    finished: AtomicBool,
}

/// The old generation's end of the hand-off to the generation that took over: send it
/// established connections. Cheap to clone; every clone feeds the same channel.
///
/// Got from [`Shutdown::handoff`](crate::Shutdown::handoff) once `Shutdown` resolved with an
/// upgrade to a new generation that takes hand-offs.
#[derive(Clone)]
pub struct Handoff {
    shared: Arc<Shared>,
}

impl fmt::Debug for Handoff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handoff")
            .field("new_pid", &self.shared.new_pid)
            .field("handed_off", &self.handed_off())
            .finish()
    }
}

impl Handoff {
    /// Starts the sending thread on the old generation's end of the channel; `deadline` is when
    /// it gives up on what the new generation has not acknowledged.
    pub(crate) fn start(chan: OwnedFd, new_pid: u32, deadline: Instant) -> io::Result<Handoff> {
        let (handoff, sender) = Handoff::parts(chan, new_pid, deadline)?;
        std::thread::Builder::new()
            .name("hotexec-handoff".into())
            .spawn(move || sender.run())?;
        Ok(handoff)
    }

    /// The handle and the sender that [`start`](Self::start) runs on a thread of its own (tests
    /// drive the sender step by step instead).
    fn parts(chan: OwnedFd, new_pid: u32, deadline: Instant) -> io::Result<(Handoff, Sender)> {
        let (wake_r, wake_w) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)
                .map_err(|e| io::Error::other(format!("pipe2: {}", e.desc())))?;
        let shared = Arc::new(Shared {
            queues: Mutex::new(Queues {
                out: VecDeque::new(),
                sent: HashMap::new(),
                closed: None,
                finishing: false,
            }),
            wake_w,
            next_id: AtomicU64::new(1),
            new_pid,
            handed: AtomicU64::new(0),
            returned: AtomicU64::new(0),
            finished: AtomicBool::new(false),
        });
        let sender = Sender {
            shared: shared.clone(),
            chan,
            wake_r,
            deadline,
            shut: false,
        };
        Ok((Handoff { shared }, sender))
    }

    /// Pid of the generation connections go to.
    pub fn new_pid(&self) -> u32 {
        self.shared.new_pid
    }

    /// How many connections the new generation has acknowledged so far.
    pub fn handed_off(&self) -> u64 {
        self.shared.handed.load(Ordering::Relaxed)
    }

    /// How many connections came back (refused, or the channel ended before their
    /// acknowledgement): still this generation's.
    pub fn returned(&self) -> u64 {
        self.shared.returned.load(Ordering::Relaxed)
    }

    /// Hands `conn` to the new generation with the bytes already read from it but not processed
    /// (`unread`, at most [`MAX_UNREAD`](super::MAX_UNREAD)) and the application's `state`
    /// (at most [`MAX_STATE`](super::MAX_STATE)). Resolves `Ok` once the new generation has
    /// acknowledged it (this process's copy is closed then), or gives everything back in
    /// [`Returned`] — serve the connection on as before.
    ///
    /// Call it at a point where the protocol can resume on another process: between requests,
    /// lines or messages, with nothing half-written. Dropping the future does not cancel the
    /// hand-off: the connection then goes wherever the channel settles it, and a returned one is
    /// closed.
    pub fn send(&self, conn: impl Into<OwnedFd>, unread: Vec<u8>, state: Vec<u8>) -> SendFuture {
        SendFuture {
            slot: self.enqueue(conn.into(), unread, state),
        }
    }

    /// [`send`](Self::send) with the state as any serde type (JSON on the wire, so a later build
    /// can read it with added fields). A state that does not serialize comes back at once.
    #[cfg(feature = "serde")]
    pub fn send_serde<T: serde::Serialize + ?Sized>(
        &self,
        conn: impl Into<OwnedFd>,
        unread: Vec<u8>,
        state: &T,
    ) -> SendFuture {
        match serde_json::to_vec(state) {
            Ok(bytes) => self.send(conn, unread, bytes),
            Err(e) => {
                let slot = Slot::new();
                slot.complete(Err(Returned {
                    fd: conn.into(),
                    unread,
                    state: Vec::new(),
                    error: HandoffError::State(format!("cannot serialize: {e}")),
                }));
                SendFuture { slot }
            }
        }
    }

    /// [`send`](Self::send) for threads outside an async runtime: blocks until it is settled.
    pub fn send_blocking(
        &self,
        conn: impl Into<OwnedFd>,
        unread: Vec<u8>,
        state: Vec<u8>,
    ) -> Result<(), Returned> {
        let slot = self.enqueue(conn.into(), unread, state);
        let mut st = slot.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(r) = st.0.take() {
                return r;
            }
            st = slot.cond.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// No more connections will be sent: once those queued are sent, the new generation's
    /// [`HandedOff`](super::HandedOff) stream ends after the last one. Outstanding sends still
    /// settle as usual.
    pub fn finish(&self) {
        self.shared.finished.store(true, Ordering::SeqCst);
        self.shared
            .queues
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .finishing = true;
        let _ = nix::unistd::write(&self.shared.wake_w, b"f");
    }

    fn enqueue(&self, fd: OwnedFd, unread: Vec<u8>, state: Vec<u8>) -> Arc<Slot> {
        let slot = Slot::new();
        let item = Item {
            id: self.shared.next_id.fetch_add(1, Ordering::Relaxed),
            fd,
            unread,
            state,
            slot: slot.clone(),
        };
        if let Err(why) = wire::check_sizes(item.unread.len(), item.state.len()) {
            item.give_back(HandoffError::TooLarge(why), &self.shared.returned);
            return slot;
        }
        let mut q = self.shared.queues.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = q.closed.clone() {
            drop(q);
            item.give_back(e, &self.shared.returned);
        } else if q.finishing {
            drop(q);
            item.give_back(
                HandoffError::Closed("Handoff::finish was called".into()),
                &self.shared.returned,
            );
        } else {
            q.out.push_back(item);
            drop(q);
            let _ = nix::unistd::write(&self.shared.wake_w, b"s");
        }
        slot
    }
}

/// The outcome of [`Handoff::send`].
#[must_use = "the hand-off is settled only when this future resolves"]
pub struct SendFuture {
    slot: Arc<Slot>,
}

impl Future for SendFuture {
    type Output = Result<(), Returned>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut st = self.slot.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = st.0.take() {
            return Poll::Ready(r);
        }
        st.1 = Some(cx.waker().clone());
        Poll::Pending
    }
}

struct Sender {
    shared: Arc<Shared>,
    chan: OwnedFd,
    wake_r: OwnedFd,
    deadline: Instant,
    /// The channel is shut for writing: nothing more is sent.
    shut: bool,
}

impl Sender {
    fn run(mut self) {
        let why = loop {
            if let Some(why) = self.step() {
                break why;
            }
        };
        self.end(why);
    }

    /// One turn: waits (until the deadline at most) for answers, queued sends or a wake-up, and
    /// handles what came. `Some(why)` once the channel is over.
    fn step(&mut self) -> Option<HandoffError> {
        let now = Instant::now();
        if !self.shut && now >= self.deadline {
            tracing::warn!(
                new_pid = self.shared.new_pid,
                "hand-off deadline: connections not yet acknowledged by the new generation come back to this one"
            );
            self.shut_down(HandoffError::Deadline);
        }
        let (want_out, finishing) = {
            let q = self.shared.queues.lock().unwrap_or_else(|p| p.into_inner());
            (!q.out.is_empty(), q.finishing)
        };
        if !self.shut && finishing && !want_out {
            self.shut_down(HandoffError::Closed("Handoff::finish was called".into()));
        }
        let mut ev = PollFlags::POLLIN;
        if want_out && !self.shut {
            ev |= PollFlags::POLLOUT;
        }
        let left = self.deadline.saturating_duration_since(now);
        let timeout = if self.shut {
            PollTimeout::NONE
        } else {
            PollTimeout::from(u16::try_from(left.as_millis().max(1)).unwrap_or(u16::MAX))
        };
        let mut fds = [
            PollFd::new(self.chan.as_fd(), ev),
            PollFd::new(self.wake_r.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, timeout) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => {
                tracing::error!("hand-off poll failed: {}", e.desc());
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let mut buf = [0u8; 64];
        while matches!(nix::unistd::read(&self.wake_r, &mut buf), Ok(n) if n > 0) {}
        let revents = fds[0].revents().unwrap_or(PollFlags::empty());
        if revents.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR) {
            if let Some(why) = self.read_answers() {
                return Some(why);
            }
        }
        if !self.shut {
            self.send_queued();
        }
        None
    }

    /// The channel is over: whatever was not acknowledged is this generation's again.
    fn end(self, why: HandoffError) {
        let back: Vec<Item> = {
            let mut guard = self.shared.queues.lock().unwrap_or_else(|p| p.into_inner());
            let q = &mut *guard;
            q.closed = Some(why.clone());
            q.out
                .drain(..)
                .chain(q.sent.drain().map(|(_, i)| i))
                .collect()
        };
        if !back.is_empty() {
            tracing::warn!(
                new_pid = self.shared.new_pid,
                returned = back.len(),
                "{why}: connections not acknowledged by the new generation come back to this one"
            );
        }
        for item in back {
            item.give_back(why.clone(), &self.shared.returned);
        }
    }

    /// The new generation sent something that is not an answer. What it was sent stays unanswered
    /// rather than given back (it may still take it: giving it back could make two owners);
    /// nothing more is sent, and the channel is shut for writing, so a new generation that
    /// works answers the rest and closes, and one that died gives everything back at EOF.
    fn broken(&mut self, why: String) {
        if !self.shut {
            self.shut_down(HandoffError::Protocol(why));
        }
    }

    /// Shuts the channel for writing; what was never sent comes back at once.
    fn shut_down(&mut self, why: HandoffError) {
        channel::shut_write(&self.chan);
        self.shut = true;
        let unsent: Vec<Item> = {
            let mut q = self.shared.queues.lock().unwrap_or_else(|p| p.into_inner());
            q.finishing = true;
            q.closed.get_or_insert(why.clone());
            q.out.drain(..).collect()
        };
        for item in unsent {
            item.give_back(why.clone(), &self.shared.returned);
        }
    }

    /// Sends queued connections until the channel would block. A send that fails for another
    /// reason (EPIPE: the new generation shut the channel) gives back the one connection whose
    /// record was not sent, and no more is sent; but the channel is not over: answers queued
    /// before the failure are still to be read, and only the end of the channel says that none
    /// follows (see [`read_answers`](Self::read_answers)).
    fn send_queued(&mut self) {
        loop {
            let mut q = self.shared.queues.lock().unwrap_or_else(|p| p.into_inner());
            let Some(item) = q.out.pop_front() else {
                return;
            };
            let record = wire::encode(Kind::Conn, item.id, &item.unread, &item.state);
            match channel::send(self.chan.as_fd(), &record, Some(item.fd.as_fd()), true) {
                Ok(()) => {
                    q.sent.insert(item.id, item);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    q.out.push_front(item);
                    return;
                }
                Err(e) => {
                    drop(q);
                    let why =
                        HandoffError::Closed(format!("sending to the new generation failed: {e}"));
                    tracing::warn!(
                        new_pid = self.shared.new_pid,
                        "hand-off: {why}; nothing more is sent, the answers already queued are read to the end of the channel"
                    );
                    // SEQPACKET sends a record whole or not at all: this one was not sent.
                    item.give_back(why.clone(), &self.shared.returned);
                    self.shut_down(why);
                    return;
                }
            }
        }
    }

    /// Reads every answer queued. `Some(why)` once the channel is over: at its end (EOF)
    /// only, because every answer the new generation sent before it is read by then.
    ///
    /// A read error is not the end: when the new generation exits with records unread, Linux
    /// reports ECONNRESET on the next read *before* the answers queued here (the error is
    /// consumed by that read, and the answers follow). Giving everything back at that error
    /// would give back connections the new generation acknowledged — two owners. So an error
    /// stops the sending and the reading goes on.
    fn read_answers(&mut self) -> Option<HandoffError> {
        let mut errors = 0;
        loop {
            let (bytes, fds, trouble) = match channel::recv(self.chan.as_fd(), true) {
                Ok(Received::Eof) => {
                    return Some(HandoffError::Closed(
                        "the new generation closed its end (it exited, was killed, or answered everything after the deadline)".into(),
                    ));
                }
                Ok(Received::Message {
                    bytes,
                    fds,
                    trouble,
                    ..
                }) => (bytes, fds, trouble),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
                Err(e) => {
                    tracing::debug!(
                        new_pid = self.shared.new_pid,
                        "hand-off: reading from the new generation: {e}; answers queued behind it are read on"
                    );
                    if !self.shut {
                        self.shut_down(HandoffError::Closed(format!(
                            "reading from the new generation failed: {e}"
                        )));
                    }
                    errors += 1;
                    if errors >= 3 {
                        // Not a pending error consumed by the read: wait for the next poll.
                        std::thread::sleep(Duration::from_millis(10));
                        return None;
                    }
                    continue;
                }
            };
            errors = 0;
            let decoded = match trouble {
                Some(t) => Err(t),
                None => wire::decode(&bytes, fds.len()).map_err(|e| e.reason),
            };
            drop(fds);
            let rec = match decoded {
                Ok(r) => r,
                Err(why) => {
                    tracing::error!(
                        new_pid = self.shared.new_pid,
                        "hand-off: garbage from the new generation ({why}); record skipped, nothing more is sent"
                    );
                    self.broken(why);
                    continue;
                }
            };
            let item = self
                .shared
                .queues
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .sent
                .remove(&rec.id);
            match (rec.kind, item) {
                (Kind::Ack, Some(item)) => {
                    self.shared.handed.fetch_add(1, Ordering::Relaxed);
                    // The new generation holds it now: our copy goes.
                    drop(item.fd);
                    item.slot.complete(Ok(()));
                }
                (Kind::Nak, Some(item)) => {
                    let why = String::from_utf8_lossy(&rec.state).into_owned();
                    item.give_back(HandoffError::Refused(why), &self.shared.returned);
                }
                (kind, None) => {
                    tracing::error!(
                        new_pid = self.shared.new_pid,
                        id = rec.id,
                        "hand-off: a {kind:?} for a connection this generation did not send; record skipped, nothing more is sent"
                    );
                    self.broken(format!("a {kind:?} for unknown connection {}", rec.id));
                }
                (kind, Some(item)) => {
                    // Not an answer: the connection stays where it is (sent, unanswered).
                    let why = format!("unexpected {kind:?} record from the new generation");
                    tracing::error!(
                        new_pid = self.shared.new_pid,
                        "hand-off: {why}; record skipped, nothing more is sent"
                    );
                    self.shared
                        .queues
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .sent
                        .insert(item.id, item);
                    self.broken(why);
                }
            }
        }
    }
}

/// Finding 1 of issue 20: the old side must never give back a connection whose ACK is queued
/// on the channel, whatever error the channel reports first. The sender is driven step by step,
/// so each test is the one interleaving it names.
#[cfg(test)]
#[path = "send_tests.rs"]
mod channel_error_tests;
