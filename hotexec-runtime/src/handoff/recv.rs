//! The new generation's side: a thread reads the channel from the previous generation, checks
//! every record and fd, and queues the connections for [`HandedOff`]. A connection is
//! acknowledged (and so becomes this generation's) when the application takes it from the
//! queue; until then the previous generation still owns it.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use super::channel::{self, Family, Received};
use super::connection::Connection;
use super::error::HandoffError;
use super::wire::{self, Kind};

/// Which handed-off connections a receiver takes ([`incoming_claiming`](super::incoming_claiming)):
/// all of them, or those of one listener. A server that serves several protocols on several
/// listeners takes each listener's connections to the code that speaks its protocol; what no
/// receiver claims is refused after [`CLAIM_GRACE`] and stays with the previous generation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claim {
    /// Every connection (what [`incoming`](super::incoming) takes).
    All,
    /// TCP connections whose local port is this one: the port of the listener they came from.
    TcpPort(u16),
    /// Unix stream connections whose local address is this path: the listener's path.
    UnixPath(PathBuf),
}

impl Claim {
    /// Whether `conn` is one this claim takes.
    pub fn takes(&self, conn: &Connection) -> bool {
        match self {
            Claim::All => true,
            Claim::TcpPort(p) => conn.family == Family::Tcp && conn.local_port() == Some(*p),
            Claim::UnixPath(path) => {
                conn.family == Family::Unix && conn.local_path().as_deref() == Some(path.as_path())
            }
        }
    }

    /// Whether two claims could take the same connection (only one may be held at a time).
    fn overlaps(&self, other: &Claim) -> bool {
        matches!((self, other), (Claim::All, _) | (_, Claim::All)) || self == other
    }
}

/// One claimed stream of connections.
struct Receiver {
    claim: Claim,
    queue: VecDeque<Result<(u64, Connection), HandoffError>>,
    /// Its `HandedOff` was dropped: what comes for it is refused.
    dropped: bool,
    waker: Option<Waker>,
}

struct Inbox {
    /// Offers no receiver has claimed yet, in order, with when they came.
    unclaimed: VecDeque<(Instant, u64, Connection)>,
    /// The claimed streams; a `HandedOff` is an index here.
    receivers: Vec<Receiver>,
    /// No more records come (the channel ended); queues may still hold some.
    ended: bool,
    /// An offer already waited [`CLAIM_GRACE`] for a claim in vain: offers no receiver claims
    /// are refused as they come, until the application claims again.
    refusing_unclaimed: bool,
}

impl Inbox {
    /// Queues `r` for receiver `i` and wakes whoever waits for it.
    fn deliver(&mut self, i: usize, r: Result<(u64, Connection), HandoffError>) {
        let rx = &mut self.receivers[i];
        rx.queue.push_back(r);
        if let Some(w) = rx.waker.take() {
            w.wake();
        }
    }

    /// The live receiver that takes `conn`, if any; `Err(())`: only a dropped one would.
    fn receiver_for(&self, conn: &Connection) -> Result<Option<usize>, ()> {
        let mut dropped = false;
        for (i, rx) in self.receivers.iter().enumerate() {
            if rx.claim.takes(conn) {
                if !rx.dropped {
                    return Ok(Some(i));
                }
                dropped = true;
            }
        }
        if dropped { Err(()) } else { Ok(None) }
    }

    fn wake_all(&mut self) {
        for rx in &mut self.receivers {
            if let Some(w) = rx.waker.take() {
                w.wake();
            }
        }
    }
}

pub(crate) struct Shared {
    inbox: Mutex<Inbox>,
    cond: Condvar,
    chan: OwnedFd,
    /// When `main` started: an application that has not asked for hand-offs within
    /// [`CLAIM_GRACE`] of it does not take them.
    main_started: Instant,
}

/// How long an offer waits for a receiver that claims it ([`super::incoming`],
/// [`super::incoming_claiming`]) before it is refused, and so stays with the previous
/// generation: counted from when it came, and not before `main` started that long ago. Once one
/// offer was refused so, the next that no receiver claims are refused as they come, until the
/// application claims again: from then on it takes what comes.
pub const CLAIM_GRACE: Duration = Duration::from_secs(2);

impl Shared {
    /// Answers for connection `id`. A failed send means the previous generation is gone, and
    /// with it its copy: the connection is ours either way.
    fn answer(&self, kind: Kind, id: u64, reason: &str) {
        let rec = wire::encode(kind, id, b"", reason.as_bytes());
        if let Err(e) = channel::send(self.chan.as_fd(), &rec, None, false) {
            tracing::debug!(id, "hand-off: could not answer {kind:?} ({e})");
        }
    }
}

/// Starts reading the channel (from the runtime, as `main` starts).
pub(crate) fn start(chan: OwnedFd) -> std::io::Result<Arc<Shared>> {
    start_at(chan, Instant::now())
}

/// [`start`], for a `main` that started at `main_started` (tests go back in time with it).
pub(crate) fn start_at(chan: OwnedFd, main_started: Instant) -> std::io::Result<Arc<Shared>> {
    // This end is read here: records must be told from the end of the channel.
    channel::tell_records_from_the_end(chan.as_fd())?;
    let shared = Arc::new(Shared {
        inbox: Mutex::new(Inbox {
            unclaimed: VecDeque::new(),
            receivers: Vec::new(),
            ended: false,
            refusing_unclaimed: false,
        }),
        cond: Condvar::new(),
        chan,
        main_started,
    });
    let s = shared.clone();
    std::thread::Builder::new()
        .name("hotexec-handed-off".into())
        .spawn(move || receive(&s))?;
    Ok(shared)
}

/// The reason every refusal of an unclaimed offer gives.
const NOT_RECEIVING: &str =
    "this generation does not take hand-offs (its application does not receive them)";

impl Shared {
    /// When an offer that came at `at` has waited for a claim long enough.
    fn claim_expires(&self, at: Instant) -> Instant {
        at.max(self.main_started) + CLAIM_GRACE
    }
}

/// Refuses the offers that have waited [`CLAIM_GRACE`] for a receiver that claims them: those
/// connections go back to the previous generation now, not at its deadline. Returns when the
/// next offer still waiting expires, if one does.
fn refuse_unclaimed(s: &Shared) -> Option<Instant> {
    let mut inbox = s.inbox.lock().unwrap_or_else(|p| p.into_inner());
    let now = Instant::now();
    let mut expired = Vec::new();
    let mut next = None;
    inbox.unclaimed.retain(|(at, id, _)| {
        let e = s.claim_expires(*at);
        if e <= now {
            expired.push(*id);
            false
        } else {
            next = Some(next.map_or(e, |n: Instant| n.min(e)));
            true
        }
    });
    if expired.is_empty() {
        return next;
    }
    inbox.refusing_unclaimed = true;
    drop(inbox);
    tracing::warn!(
        refused = expired.len(),
        "hand-off: no receiver (hotexec::handoff::incoming()) claimed connections {CLAIM_GRACE:?} after they were offered: they go back to the previous generation, and so do the next ones until one does"
    );
    for id in expired {
        s.answer(Kind::Nak, id, NOT_RECEIVING);
    }
    next
}

fn receive(s: &Shared) {
    // Refusals by reason: the first of each is logged, the count at the end (a thousand
    // connections refused at the fd limit are one line and a total, not a thousand lines).
    let mut refused: Vec<(String, usize)> = Vec::new();
    loop {
        // While offers wait for a claim, wake up in time to refuse those that wait in vain.
        if let Some(expires) = refuse_unclaimed(s) {
            let left = expires.saturating_duration_since(Instant::now());
            let ms = u16::try_from(left.as_millis() + 1).unwrap_or(u16::MAX);
            let mut fds = [nix::poll::PollFd::new(
                s.chan.as_fd(),
                nix::poll::PollFlags::POLLIN,
            )];
            let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(ms));
            if !fds[0].any().unwrap_or(false) {
                continue;
            }
        }
        let got = channel::recv(s.chan.as_fd(), false);
        let (bytes, fds, trouble, out_of_fds) = match got {
            Ok(Received::Message {
                bytes,
                fds,
                trouble,
                out_of_fds,
            }) => (bytes, fds, trouble, out_of_fds),
            Ok(Received::Eof) => break,
            Err(e) => {
                tracing::error!(
                    "hand-off: reading the channel from the previous generation failed: {e}"
                );
                break;
            }
        };
        let decoded = match trouble {
            // A readable CONN header names the one connection to refuse (its fd was dropped
            // by the kernel, or was one of too many): the channel itself is fine.
            Some(t) => Err(wire::WireError {
                id: wire::conn_id(&bytes),
                reason: t,
            }),
            None => wire::decode(&bytes, fds.len()),
        };
        let rec = match decoded {
            Ok(r) if r.kind == Kind::Conn => r,
            Ok(r) => {
                drop(fds);
                let reason = format!("a {:?} record from the previous generation", r.kind);
                return refuse_all(s, wire::WireError { id: None, reason });
            }
            Err(e) if e.id.is_some() => {
                // The header was readable: refuse this connection and read on.
                match refused.iter_mut().find(|(r, _)| *r == e.reason) {
                    Some((_, n)) => *n += 1,
                    None => {
                        tracing::error!(
                            "hand-off from the previous generation refused: {}; nothing adopted (further refusals for this reason are counted)",
                            e.reason
                        );
                        refused.push((e.reason.clone(), 1));
                    }
                }
                s.answer(Kind::Nak, e.id.unwrap_or(0), &e.reason);
                let err = if out_of_fds {
                    HandoffError::Unreceivable(e.reason)
                } else {
                    HandoffError::Protocol(e.reason)
                };
                push(s, Err(err));
                continue;
            }
            Err(e) => {
                // Whatever came with it is closed here: nothing is adopted from garbage.
                drop(fds);
                return refuse_all(s, e);
            }
        };
        let fd = fds.into_iter().next().expect("decode checked one fd");
        let family = match channel::check_connection(fd.as_fd()) {
            Ok(f) => f,
            Err(why) => {
                tracing::error!(id = rec.id, "handed-off fd refused: {why}; nothing adopted");
                drop(fd);
                s.answer(Kind::Nak, rec.id, &format!("fd refused: {why}"));
                push(
                    s,
                    Err(HandoffError::Protocol(format!(
                        "handed-off fd refused: {why}"
                    ))),
                );
                continue;
            }
        };
        let conn = Connection {
            fd,
            family,
            unread: rec.unread,
            state: rec.state,
        };
        let mut inbox = s.inbox.lock().unwrap_or_else(|p| p.into_inner());
        let refusal = match inbox.receiver_for(&conn) {
            Ok(Some(i)) => {
                inbox.deliver(i, Ok((rec.id, conn)));
                None
            }
            Err(()) => Some((conn, "the application dropped its HandedOff receiver")),
            Ok(None) if inbox.refusing_unclaimed => Some((conn, NOT_RECEIVING)),
            Ok(None) => {
                inbox.unclaimed.push_back((Instant::now(), rec.id, conn));
                None
            }
        };
        drop(inbox);
        s.cond.notify_all();
        if let Some((conn, why)) = refusal {
            drop(conn);
            s.answer(Kind::Nak, rec.id, why);
        }
    }
    for (why, n) in refused {
        tracing::warn!(
            refused = n,
            "hand-off from the previous generation: {n} connection(s) refused: {why}"
        );
    }
    // The previous generation is done (or gone): what the application has not taken yet goes
    // back, under the lock, so no acknowledgement can follow these refusals.
    give_back_untaken(s, "the hand-off ended before the application took it");
}

/// Ends the hand-off on this side: every connection the application has not taken is refused
/// (NAK, so the previous generation resumes it), under the inbox lock, so no acknowledgement can
/// follow; then our end is shut, which tells the previous generation every answer is in, and
/// whoever waits on the inbox is woken.
fn give_back_untaken(s: &Shared, why: &str) {
    let mut inbox = s.inbox.lock().unwrap_or_else(|p| p.into_inner());
    inbox.ended = true;
    let mut untaken: Vec<u64> = inbox.unclaimed.drain(..).map(|(_, id, _)| id).collect();
    for rx in &mut inbox.receivers {
        untaken.extend(
            rx.queue
                .iter()
                .filter_map(|r| r.as_ref().ok().map(|(id, _)| *id)),
        );
        rx.queue.retain(|r| r.is_err());
    }
    for id in untaken {
        s.answer(Kind::Nak, id, why);
    }
    let _ = rustix::net::shutdown(&s.chan, rustix::net::Shutdown::Both);
    inbox.wake_all();
    drop(inbox);
    s.cond.notify_all();
}

/// A record that cannot be answered (unreadable header, wrong kind): the channel is not a
/// hotexec hand-off one or is broken. Nothing is adopted; the channel is given up, which hands
/// everything still unanswered back to the previous generation.
fn refuse_all(s: &Shared, e: wire::WireError) {
    tracing::error!(
        "hand-off channel from the previous generation refused: {}; nothing adopted, channel closed",
        e.reason
    );
    push(s, Err(HandoffError::Protocol(e.reason)));
    give_back_untaken(s, "the hand-off channel broke");
}

/// A refused record, for the receivers that take everything to see (it was logged).
fn push(s: &Shared, r: Result<(u64, Connection), HandoffError>) {
    let Err(e) = r else { return };
    let mut inbox = s.inbox.lock().unwrap_or_else(|p| p.into_inner());
    let all: Vec<usize> = (0..inbox.receivers.len())
        .filter(|i| !inbox.receivers[*i].dropped && inbox.receivers[*i].claim == Claim::All)
        .collect();
    for i in all {
        inbox.deliver(i, Err(e.clone()));
    }
    drop(inbox);
    s.cond.notify_all();
}

/// Claims the connections `claim` takes: `None` if a live receiver already claims some of them.
pub(crate) fn claim(shared: &Arc<Shared>, claim: Claim) -> Option<HandedOff> {
    let mut inbox = shared.inbox.lock().unwrap_or_else(|p| p.into_inner());
    if inbox
        .receivers
        .iter()
        .any(|rx| !rx.dropped && rx.claim.overlaps(&claim))
    {
        return None;
    }
    let mut queue = VecDeque::new();
    let mut rest = VecDeque::new();
    for (at, id, conn) in inbox.unclaimed.drain(..) {
        if claim.takes(&conn) {
            queue.push_back(Ok((id, conn)));
        } else {
            rest.push_back((at, id, conn));
        }
    }
    inbox.unclaimed = rest;
    inbox.refusing_unclaimed = false;
    inbox.receivers.push(Receiver {
        claim,
        queue,
        dropped: false,
        waker: None,
    });
    Some(HandedOff {
        shared: shared.clone(),
        rx: inbox.receivers.len() - 1,
    })
}

/// The connections the previous generation hands to this one, in the order it sent them. Got
/// from [`incoming`](super::incoming) (all of them) or
/// [`incoming_claiming`](super::incoming_claiming) (one listener's). Ends when the previous
/// generation has finished handing off (or exited).
///
/// Each connection taken with [`recv`](Self::recv) or [`recv_blocking`](Self::recv_blocking)
/// is acknowledged at that moment: from then on it is this generation's alone. Connections not
/// taken stay the previous generation's; dropping `HandedOff` refuses them.
pub struct HandedOff {
    shared: Arc<Shared>,
    /// Its receiver in the inbox.
    rx: usize,
}

impl fmt::Debug for HandedOff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandedOff").finish_non_exhaustive()
    }
}

impl HandedOff {
    /// Takes the next one if any, acknowledging it. `Err`: a record that was refused (garbage
    /// or a bad fd; nothing was adopted from it). `None`: the hand-off is over.
    fn take(&self, inbox: &mut Inbox) -> Option<Option<Result<Connection, HandoffError>>> {
        match inbox.receivers[self.rx].queue.pop_front() {
            Some(Ok((id, conn))) => {
                // Acknowledged under the lock: the end of the channel cannot refuse it meanwhile.
                self.shared.answer(Kind::Ack, id, "");
                Some(Some(Ok(conn)))
            }
            Some(Err(e)) => Some(Some(Err(e))),
            None if inbox.ended => Some(None),
            None => None,
        }
    }

    /// The next handed-off connection (`None` once the hand-off is over).
    pub fn recv(&mut self) -> Next<'_> {
        Next { rx: self }
    }

    /// [`recv`](Self::recv) for threads outside an async runtime.
    pub fn recv_blocking(&mut self) -> Option<Result<Connection, HandoffError>> {
        let mut inbox = self.shared.inbox.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(r) = self.take(&mut inbox) {
                return r;
            }
            inbox = self
                .shared
                .cond
                .wait(inbox)
                .unwrap_or_else(|p| p.into_inner());
        }
    }
}

impl Drop for HandedOff {
    fn drop(&mut self) {
        let mut inbox = self.shared.inbox.lock().unwrap_or_else(|p| p.into_inner());
        let rx = &mut inbox.receivers[self.rx];
        rx.dropped = true;
        rx.waker = None;
        let untaken: Vec<u64> = rx
            .queue
            .drain(..)
            .filter_map(|r| r.ok().map(|(id, _)| id))
            .collect();
        for id in untaken {
            self.shared.answer(
                Kind::Nak,
                id,
                "the application dropped its HandedOff receiver",
            );
        }
    }
}

/// The future of [`HandedOff::recv`].
pub struct Next<'a> {
    rx: &'a mut HandedOff,
}

impl Future for Next<'_> {
    type Output = Option<Result<Connection, HandoffError>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let rx = &*self.rx;
        let mut inbox = rx.shared.inbox.lock().unwrap_or_else(|p| p.into_inner());
        match rx.take(&mut inbox) {
            Some(r) => Poll::Ready(r),
            None => {
                inbox.receivers[rx.rx].waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}
