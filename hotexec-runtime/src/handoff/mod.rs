//! Connection hand-off: long-lived connections (WebSocket, streaming, a line protocol's sessions)
//! survive an upgrade. Once the new generation is ready, the old one can pass it established
//! connections — the socket (`SCM_RIGHTS`), the bytes already read but not processed, and an
//! application state blob — instead of draining them; the new generation resumes each one.
//!
//! ```text
//!  old generation                                      new generation
//!  ──────────────                                      ──────────────
//!  socketpair(SEQPACKET) at spawn ───── fd, HOTEXEC_HANDOFF_FD ─────► adopted before main
//!                               ◄──── HELLO v1 ────────────────────── as main starts, before
//!                                                                      it reports ready
//!  ready: HELLO seen → Shutdown::handoff() is Some
//!  handoff.send(conn, unread, state) ── CONN id + fd ──────────────► queued for incoming()
//!                               ◄──── ACK id ──────────────────────── app took it: it is ours
//!  closes its copy; send → Ok                                         (or NAK id: not taken →
//!                                                                      send → Err(Returned))
//!  new generation dies / channel breaks before the ACK ──────────────► send → Err(Returned)
//!  deadline (drain_timeout / 2): shutdown(SHUT_WR) ─────────────────► NAKs what it still
//!                               ◄──── NAK … , close ────────────────── holds, closes
//! ```
//!
//! **Ownership.** A connection belongs to exactly one process: the old generation keeps its fd
//! until the new one acknowledges it, and an acknowledged connection is never given back. If the
//! new generation dies, refuses, or the channel breaks before the ACK, [`Handoff::send`] resolves
//! with [`Returned`] (the socket, the unread bytes and the state), and the old generation serves
//! it on or drains it as without hand-off. Only the end of the channel — after every answer
//! queued before it — settles what was not answered: an empty record, garbage, a read error or a
//! failed send never gives back an acknowledged connection. If the new generation dies within
//! its probation, the [`Successor`] moves to the rollback generation, and what came back can be
//! offered to it ([`Shutdown::successor`](crate::Shutdown::successor)).
//!
//! **Detection.** The new generation says HELLO with its protocol [`VERSION`] before it reports
//! ready. No HELLO (an older hotexec build, a program not built on hotexec) or another version:
//! [`Shutdown::handoff`](crate::Shutdown::handoff) is `None` and the old generation drains as
//! before. An offer that no receiver ([`incoming`], [`incoming_claiming`]) claims within
//! [`CLAIM_GRACE`] is refused, so those connections come back too; each listener's connections
//! can be claimed by the code that speaks its protocol ([`Claim`]).
//!
//! **Checks.** Records are bounded ([`MAX_UNREAD`], [`MAX_STATE`]) and checked field by field
//! (the record layout is documented in `handoff/wire.rs`); fds arrive `CLOEXEC`
//! (`MSG_CMSG_CLOEXEC`) into `OwnedFd`, and each must be a connected `SOCK_STREAM` socket (TCP or
//! Unix), as inherited listeners are checked. A record whose fd could not be received (this
//! process at its fd limit) is refused alone, naming the limit. Garbage is refused with an error
//! naming what is wrong, and nothing is adopted from it.
//!
//! These are the building blocks. Servers on tokio use the facade's `hotexec::handoff::Sessions`
//! (the accept loop, resumed sessions and the drain in one), its WebSocket layer or its axum
//! integration, built on them.
//!
//! **Limits.** Only what the kernel holds moves with the fd: the connection, its queued bytes and
//! its TCP state. Whatever lives in the application — the bytes it buffered (pass them as
//! `unread`), its protocol state, and TLS session keys of a userspace TLS stack (rustls,
//! OpenSSL) — moves only if the application serializes it into `state`; kTLS sockets keep their
//! keys in the kernel but the record sequence state still has to travel. The hand-off point is
//! the application's to choose: a point where another process can resume (between lines,
//! requests or WebSocket messages, with nothing half-written). Connections not handed off by the
//! deadline are drained and closed at `drain_timeout` as without hand-off.
//!
//! Old side:
//!
//! ```no_run
//! # async fn serve(shutdown: hotexec::Shutdown, conn: tokio::net::TcpStream) -> std::io::Result<()> {
//! let reason = shutdown.clone().await;
//! if let Some(handoff) = shutdown.handoff() {
//!     // At a point where the protocol can resume elsewhere, with the bytes read but not yet
//!     // processed and whatever state the session has.
//!     match handoff.send(conn.into_std()?, Vec::new(), b"session-42".to_vec()).await {
//!         Ok(()) => {}                     // the new generation serves it now
//!         Err(returned) => {               // still ours: serve it on, drain it as before
//!             let (conn, _unread, _state) = returned.into_tokio_tcp()?;
//!             # drop(conn);
//!         }
//!     }
//! }
//! # let _ = reason; Ok(()) }
//! ```
//!
//! New side:
//!
//! ```no_run
//! # async fn resume() -> std::io::Result<()> {
//! if let Some(mut incoming) = hotexec::handoff::incoming() {
//!     while let Some(conn) = incoming.recv().await {
//!         match conn {
//!             Ok(conn) => match conn.into_tokio_tcp() {
//!                 Ok((stream, unread, state)) => {
//!                     // serve `stream`: first `unread`, with the session restored from `state`
//!                     # drop((stream, unread, state));
//!                 }
//!                 Err(e) => eprintln!("{e}"), // `e.conn`: the connection, still ours
//!             },
//!             Err(e) => eprintln!("{e}"), // refused, nothing adopted
//!         }
//!     }
//! }
//! # Ok(()) }
//! ```

mod channel;
mod error;
mod recv;
mod send;
mod successor;
mod wire;

/// The wire format of the channel, for the runtime's own fuzzers and tests and for test fixtures
/// that play a broken peer. Not a public API: it changes with the protocol version.
#[doc(hidden)]
pub mod __wire {
    pub use super::wire::{
        HEADER, Kind, MAGIC, MAX_RECORD, Record, VERSION, WireError, decode, encode, encode_as,
    };
}

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use channel::Family;
pub use error::HandoffError;
#[cfg(feature = "tokio")]
pub use recv::IntoStreamError;
pub use recv::{CLAIM_GRACE, Claim, Connection, HandedOff, Next};
pub use send::{Handoff, Returned, SendFuture};
pub use successor::{Changed, Successor};
pub use wire::{MAX_STATE, MAX_UNREAD, VERSION};

use wire::Kind;

/// The connections offered to this generation, claimed by the application with `incoming()`
/// or `incoming_claiming()` (kept by this generation, see `generation.rs`).
pub(crate) struct Inbox(Arc<recv::Shared>);

impl Inbox {
    /// The connections `claim` takes; `None` if a receiver already holds some of them.
    pub(crate) fn claim(&self, claim: Claim) -> Option<HandedOff> {
        recv::claim(&self.0, claim)
    }
}

/// Runtime hook, as `main` starts: says HELLO on the channel from the previous generation
/// (`HOTEXEC_HANDOFF_FD`, checked and adopted in `startup.rs`), if there is one, and starts
/// reading it.
pub(crate) fn main_starting(fd: Option<OwnedFd>) -> Option<Inbox> {
    let fd = fd?;
    let hello = wire::encode(Kind::Hello, u64::from(std::process::id()), b"", b"");
    if let Err(e) = channel::send(fd.as_fd(), &hello, None, true) {
        tracing::warn!(
            "hand-off: cannot say HELLO to the previous generation ({e}): no connection hand-off"
        );
        return None;
    }
    match recv::start(fd) {
        Ok(shared) => {
            tracing::info!(
                "hand-off channel from the previous generation open (version {VERSION})"
            );
            Some(Inbox(shared))
        }
        Err(e) => {
            tracing::error!(
                "hand-off: cannot start its reader ({e}): nothing will be handed to this generation"
            );
            None
        }
    }
}

pub use crate::upgrade::{incoming, incoming_claiming};

/// Runtime hook before a new generation is spawned: a fresh channel; the child's end is passed
/// like the keeper channel (see `spawn::Extra::handoff`). At the fd limit (`EMFILE`) the upgrade
/// fails clearly, as for its other fds (see `limits.rs`); any other failure is logged and the
/// upgrade goes on without hand-off.
pub(crate) fn channel_for_child() -> std::io::Result<Option<(OwnedFd, OwnedFd)>> {
    match channel::pair() {
        Ok(pair) => Ok(Some(pair)),
        Err(e) if e.raw_os_error() == Some(libc::EMFILE) => {
            Err(std::io::Error::other(crate::limits::LimitError::NoFile {
                call: "socketpair (connection hand-off channel)",
                limit: crate::limits::nofile(),
            }))
        }
        Err(e) => {
            tracing::warn!(
                "no hand-off channel for the new generation (socketpair(AF_UNIX, SOCK_SEQPACKET): {e}): it will drain as without hand-off"
            );
            Ok(None)
        }
    }
}

/// Runtime hook once `new_pid` reported ready (an upgrade or a rollback), before `Shutdown`
/// resolves: if it said HELLO in our version, connections can be handed to it until
/// `drain_timeout / 2` from now.
pub(crate) fn child_ready(chan: OwnedFd, new_pid: u32, drain_timeout: Duration) -> Option<Handoff> {
    // The HELLO was sent before the readiness report, so it is queued by now if it ever comes.
    let hello = match channel::recv(chan.as_fd(), true) {
        Ok(channel::Received::Message {
            bytes,
            fds,
            trouble: None,
            ..
        }) => wire::decode(&bytes, fds.len()).map_err(|e| e.reason),
        Ok(channel::Received::Message {
            trouble: Some(t), ..
        }) => Err(t),
        Ok(channel::Received::Eof) => Err("it closed the channel".into()),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
            Err("it did not say HELLO (an older build, or not built on hotexec)".into())
        }
        Err(e) => Err(e.to_string()),
    };
    match hello {
        Ok(r) if r.kind == Kind::Hello => {
            let deadline = Instant::now() + drain_timeout / 2;
            match Handoff::start(chan, new_pid, deadline) {
                Ok(h) => {
                    tracing::info!(
                        new_pid,
                        version = VERSION,
                        "the new generation takes connection hand-offs"
                    );
                    return Some(h);
                }
                Err(e) => tracing::error!(
                    "hand-off: cannot start its sender ({e}): draining as without hand-off"
                ),
            }
        }
        Ok(r) => tracing::warn!(
            new_pid,
            "no connection hand-off: the new generation sent a {:?} record first; draining as before",
            r.kind
        ),
        Err(why) => tracing::info!(
            new_pid,
            "no connection hand-off to the new generation ({why}): draining as before"
        ),
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    /// A connected pair on 127.0.0.1: (client, server side).
    fn tcp_pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        (c, s)
    }

    fn both_ends(deadline: Duration) -> (Handoff, HandedOff) {
        let (old, new) = channel::pair().unwrap();
        let rx = recv::claim(&recv::start(new).unwrap(), Claim::All).unwrap();
        let tx = Handoff::start(old, 4242, Instant::now() + deadline).unwrap();
        (tx, rx)
    }

    /// A connection, its unread bytes and its state arrive whole; after the ACK the old side's
    /// copy is closed and the new side alone serves the client.
    #[test]
    fn a_connection_moves_with_its_bytes_and_state() {
        let (tx, mut rx) = both_ends(Duration::from_secs(30));
        let (mut client, server) = tcp_pair();
        let taker = std::thread::spawn(move || {
            let conn = rx.recv_blocking().unwrap().unwrap();
            assert_eq!(conn.family, Family::Tcp);
            let (mut s, unread, state) = conn.into_tcp().unwrap();
            assert_eq!(unread, b"half a li");
            assert_eq!(state, b"count=3");
            s.write_all(b"from the new side\n").unwrap();
            s
        });
        tx.send_blocking(server, b"half a li".to_vec(), b"count=3".to_vec())
            .unwrap();
        assert_eq!(tx.handed_off(), 1);
        let kept = taker.join().unwrap();
        let mut buf = [0u8; 18];
        client.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"from the new side\n");
        // The new side's copy is the only one left: closing it ends the connection.
        drop(kept);
        assert_eq!(client.read(&mut buf).unwrap(), 0);
    }

    /// The new side goes away before it took (acknowledged) the connection: it comes back whole,
    /// still connected to its client.
    #[test]
    fn unacknowledged_connections_come_back_when_the_new_side_goes() {
        let (tx, rx) = both_ends(Duration::from_secs(30));
        let (mut client, server) = tcp_pair();
        // Dropping the receiver refuses what it holds and what comes.
        drop(rx);
        let tx2 = tx.clone();
        let sender =
            std::thread::spawn(move || tx2.send_blocking(server, b"u".to_vec(), b"s".to_vec()));
        let back = sender.join().unwrap().unwrap_err();
        assert!(matches!(back.error, HandoffError::Refused(_)), "{back:?}");
        let (mut s, unread, state) = back.into_tcp();
        assert_eq!(
            (unread.as_slice(), state.as_slice()),
            (&b"u"[..], &b"s"[..])
        );
        s.write_all(b"x").unwrap();
        let mut b = [0u8; 1];
        client.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"x");
    }

    /// The deadline passes with the new side never taking anything: everything comes back.
    #[test]
    fn the_deadline_gives_back_what_was_not_taken() {
        let (old, new) = channel::pair().unwrap();
        let _rx = recv::claim(&recv::start(new).unwrap(), Claim::All).unwrap();
        let tx = Handoff::start(old, 1, Instant::now() + Duration::from_millis(300)).unwrap();
        let (_c, s) = tcp_pair();
        let back = tx.send_blocking(s, Vec::new(), Vec::new()).unwrap_err();
        assert!(
            matches!(
                back.error,
                HandoffError::Refused(_) | HandoffError::Deadline
            ),
            "{back:?}"
        );
        // After the deadline nothing more is taken.
        let (_c2, s2) = tcp_pair();
        assert!(tx.send_blocking(s2, Vec::new(), Vec::new()).is_err());
    }

    /// A new generation whose application never asks for hand-offs gives what it was offered
    /// back once the claim grace is over, not only at the old side's deadline.
    #[test]
    fn an_application_that_does_not_receive_refuses_after_the_grace() {
        let (old, new) = channel::pair().unwrap();
        let _unclaimed = recv::start(new).unwrap();
        let tx = Handoff::start(old, 7, Instant::now() + Duration::from_secs(60)).unwrap();
        let (_c, s) = tcp_pair();
        let back = tx.send_blocking(s, Vec::new(), Vec::new()).unwrap_err();
        assert!(matches!(back.error, HandoffError::Refused(_)), "{back:?}");
        assert!(
            back.to_string().contains("does not take hand-offs"),
            "{back}"
        );
    }

    /// Over-size unread bytes or state are refused before anything is sent.
    #[test]
    fn over_size_payloads_are_refused_up_front() {
        let (tx, _rx) = both_ends(Duration::from_secs(30));
        let (_c, s) = tcp_pair();
        let back = tx
            .send_blocking(s, vec![0; MAX_UNREAD + 1], Vec::new())
            .unwrap_err();
        assert!(matches!(back.error, HandoffError::TooLarge(_)));
        assert!(back.to_string().contains("unread bytes"), "{back}");
    }

    /// A pipe, a listener, and a socket nobody connected are refused on receipt, each with a
    /// message saying what it is; the sender gets it back.
    #[test]
    fn fds_that_are_not_connections_are_refused() {
        let (tx, mut rx) = both_ends(Duration::from_secs(30));
        let (pr, _pw) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let fds: Vec<(OwnedFd, &str)> = vec![
            (pr, "not a socket"),
            (listener.into(), "listening socket"),
            (udp.into(), "not a SOCK_STREAM"),
        ];
        for (fd, needle) in fds {
            let back = tx.send_blocking(fd, Vec::new(), Vec::new()).unwrap_err();
            assert!(back.to_string().contains(needle), "{needle:?}: {back}");
            let e = rx.recv_blocking().unwrap().unwrap_err();
            assert!(e.to_string().contains(needle), "{needle:?}: {e}");
        }
    }
}

#[cfg(test)]
mod garbage_tests {
    use super::*;
    use std::io::Read;
    use std::net::{TcpListener, TcpStream};

    /// Garbage with a connection attached: the channel is given up and the connection is not
    /// kept (its client sees it closed once the sender closes its copy).
    #[test]
    fn nothing_is_kept_from_garbage() {
        let (old, new) = channel::pair().unwrap();
        let mut rx = recv::claim(&recv::start(new).unwrap(), Claim::All).unwrap();
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let s: OwnedFd = l.accept().unwrap().0.into();
        let (pr, _pw) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        channel::send(
            old.as_fd(),
            &wire::encode(Kind::Conn, 1, b"", b""),
            Some(pr.as_fd()),
            false,
        )
        .unwrap();
        assert!(rx.recv_blocking().unwrap().is_err());
        channel::send(
            old.as_fd(),
            b"GET / HTTP/1.1\r\n\r\n garbage",
            Some(s.as_fd()),
            false,
        )
        .unwrap();
        let e = rx.recv_blocking().unwrap().unwrap_err();
        assert!(e.to_string().contains("magic"), "{e}");
        assert!(rx.recv_blocking().is_none());
        drop(s);
        let mut b = [0u8; 1];
        assert_eq!(c.read(&mut b).unwrap(), 0);
    }
}

#[cfg(all(test, feature = "serde"))]
mod serde_tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    struct V1 {
        user: String,
        seq: u64,
    }

    /// A later build's state type with a field more (defaulted) reads the earlier one's state.
    #[derive(serde::Deserialize, Debug, PartialEq)]
    struct V2 {
        user: String,
        seq: u64,
        #[serde(default)]
        room: Option<String>,
    }

    #[test]
    fn state_travels_as_a_serde_type_and_reads_in_a_later_shape() {
        let (old, new) = channel::pair().unwrap();
        let mut rx = recv::claim(&recv::start(new).unwrap(), Claim::All).unwrap();
        let tx = Handoff::start(old, 1, Instant::now() + Duration::from_secs(30)).unwrap();
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let _c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let s = l.accept().unwrap().0;
        let taker = std::thread::spawn(move || rx.recv_blocking().unwrap().unwrap());
        let state = V1 {
            user: "ada".into(),
            seq: 41,
        };
        let fut = tx.send_serde(s, Vec::new(), &state);
        let conn = taker.join().unwrap();
        assert_eq!(conn.state_as::<V1>().unwrap(), state);
        assert_eq!(
            conn.state_as::<V2>().unwrap(),
            V2 {
                user: "ada".into(),
                seq: 41,
                room: None
            }
        );
        let e = conn.state_as::<u64>().unwrap_err();
        assert!(e.to_string().contains("cannot read the state"), "{e}");
        drop(fut);
    }
}

#[cfg(test)]
mod broken_peer_tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    /// Garbage from the new side is skipped, not taken as an answer: the connection it was
    /// sent stays unanswered (no second owner) until the new side answers it or closes.
    #[test]
    fn garbage_from_the_new_side_is_not_an_answer() {
        let (old, new) = channel::pair().unwrap();
        let tx = Handoff::start(old, 9, Instant::now() + Duration::from_secs(30)).unwrap();
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let _c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let s = l.accept().unwrap().0;
        let sender = std::thread::spawn(move || tx.send_blocking(s, b"u".to_vec(), Vec::new()));
        // Act as a broken new side: read the CONN, answer garbage, then close.
        let got = match channel::recv(new.as_fd(), false).unwrap() {
            channel::Received::Message { bytes, .. } => bytes,
            channel::Received::Eof => panic!("closed"),
        };
        let rec = wire::decode(&got, 1).unwrap();
        assert_eq!(rec.kind, Kind::Conn);
        channel::send(new.as_fd(), b"not a record at all", None, false).unwrap();
        channel::send(
            new.as_fd(),
            &wire::encode(Kind::Ack, 999, b"", b""),
            None,
            false,
        )
        .unwrap();
        // The old side shut the channel for writing: EOF here.
        assert!(matches!(
            channel::recv(new.as_fd(), false).unwrap(),
            channel::Received::Eof
        ));
        assert!(!sender.is_finished(), "garbage was taken as an answer");
        // Closing without answering (as a dead new side would): it comes back whole.
        drop(new);
        let back = sender.join().unwrap().unwrap_err();
        assert_eq!(back.unread, b"u");
        assert!(matches!(back.error, HandoffError::Closed(_)), "{back:?}");
    }
}

/// What a broken or hostile new generation can do to the old side's books: whatever it sends,
/// a connection it acknowledged is never given back (that would make two owners).
#[cfg(test)]
mod one_owner_tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    /// `n` connected pairs: (clients, server sides).
    fn conns(n: usize) -> (Vec<TcpStream>, Vec<TcpStream>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let clients: Vec<TcpStream> = (0..n)
            .map(|_| TcpStream::connect(l.local_addr().unwrap()).unwrap())
            .collect();
        let servers = (0..n).map(|_| l.accept().unwrap().0).collect();
        (clients, servers)
    }

    /// Plays the new generation: reads `n` CONN records, returns their ids (their fds are kept
    /// open, as a new generation that took them would).
    fn read_conns(chan: &OwnedFd, n: usize) -> (Vec<u64>, Vec<OwnedFd>) {
        let (mut ids, mut kept) = (Vec::new(), Vec::new());
        while ids.len() < n {
            match channel::recv(chan.as_fd(), false).unwrap() {
                channel::Received::Message { bytes, fds, .. } => {
                    let r = wire::decode(&bytes, fds.len()).unwrap();
                    assert_eq!(r.kind, Kind::Conn);
                    ids.push(r.id);
                    kept.extend(fds);
                }
                channel::Received::Eof => panic!("the old side closed the channel"),
            }
        }
        (ids, kept)
    }

    /// An answer; a send that fails (the old side already gave up the channel) is for the
    /// assertions on the old side's outcomes to report.
    fn answer(chan: &OwnedFd, kind: Kind, id: u64) {
        let _ = channel::send(chan.as_fd(), &wire::encode(kind, id, b"", b""), None, false);
    }

    /// Finding 2 of issue 20: SEQPACKET allows a record of 0 bytes, which `recv` returns just
    /// like the end of the channel. A new generation that sends one between two ACKs must not
    /// make the old side give back the connection of the second ACK.
    #[test]
    fn an_empty_record_is_not_the_end_of_the_channel() {
        let (old, new) = channel::pair().unwrap();
        let tx = Handoff::start(old, 9, Instant::now() + Duration::from_secs(30)).unwrap();
        let (_clients, servers) = conns(2);
        let sends: Vec<_> = servers
            .into_iter()
            .map(|s| {
                let tx = tx.clone();
                std::thread::spawn(move || tx.send_blocking(s, Vec::new(), Vec::new()))
            })
            .collect();
        let (ids, _kept) = read_conns(&new, 2);
        answer(&new, Kind::Ack, ids[0]);
        channel::send(new.as_fd(), b"", None, false).unwrap();
        answer(&new, Kind::Ack, ids[1]);
        for s in sends {
            let r = s.join().unwrap();
            assert!(r.is_ok(), "an acknowledged connection came back: {r:?}");
        }
        assert_eq!(tx.handed_off(), 2);
    }

    /// The same on the new side: an empty record from the old side is a protocol error, named
    /// as such, not the end of the hand-off.
    #[test]
    fn an_empty_record_from_the_old_side_is_refused_by_name() {
        let (old, new) = channel::pair().unwrap();
        let mut rx = recv::claim(&recv::start(new).unwrap(), Claim::All).unwrap();
        channel::send(old.as_fd(), b"", None, false).unwrap();
        let e = rx
            .recv_blocking()
            .expect("an error, not the end")
            .unwrap_err();
        assert!(e.to_string().contains("an empty record"), "{e}");
    }

    /// Finding 4 of issue 20: an application that claims the hand-off stream later than
    /// `CLAIM_GRACE` after `main` started (a warm-up before `ready()`) takes what is offered
    /// from then on; the grace refuses only offers that waited for a claim that did not come.
    #[test]
    fn incoming_claimed_after_the_grace_still_takes_what_comes() {
        let (old, new) = channel::pair().unwrap();
        let long_ago = Instant::now()
            .checked_sub(CLAIM_GRACE + Duration::from_secs(1))
            .unwrap();
        let shared = recv::start_at(new, long_ago).unwrap();
        // The reader has looked at the grace with nothing offered yet.
        std::thread::sleep(Duration::from_millis(100));
        let mut rx = recv::claim(&shared, Claim::All).unwrap();
        let tx = Handoff::start(old, 5, Instant::now() + Duration::from_secs(30)).unwrap();
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let _c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let s = l.accept().unwrap().0;
        let taker = std::thread::spawn(move || rx.recv_blocking().map(|r| r.map(|_| ())));
        let sent = tx.send_blocking(s, Vec::new(), Vec::new());
        assert!(
            sent.is_ok(),
            "refused though the application receives: {sent:?}"
        );
        assert!(matches!(taker.join().unwrap(), Some(Ok(()))));
    }

    /// Finding 5 of issue 20: converting an acknowledged connection that is not TCP into a
    /// tokio `TcpStream` fails, and must give the connection back, not close it (it is this
    /// generation's alone: nobody else can serve it any more).
    #[cfg(feature = "tokio")]
    #[test]
    fn a_connection_of_the_wrong_kind_is_given_back_not_dropped() {
        use std::io::Read;
        let (ours, mut client) = std::os::unix::net::UnixStream::pair().unwrap();
        let conn = Connection {
            fd: ours.into(),
            family: Family::Unix,
            unread: b"u".to_vec(),
            state: b"s".to_vec(),
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _in_rt = rt.enter();
        let kept = conn.into_tokio_tcp();
        assert!(kept.is_err(), "a Unix connection is not a TcpStream");
        client.set_nonblocking(true).unwrap();
        let mut b = [0u8; 1];
        let e = client.read(&mut b).unwrap_err();
        assert_eq!(
            e.kind(),
            std::io::ErrorKind::WouldBlock,
            "the connection was closed by the failed conversion"
        );
        drop(kept);
    }

    /// Two listeners, two protocols: each receiver claims its own listener's connections; one
    /// that no receiver claims is refused (and stays with the previous generation), not taken by
    /// the code of another protocol.
    #[test]
    fn each_receiver_takes_its_own_listeners_connections() {
        let (old, new) = channel::pair().unwrap();
        let shared = recv::start_at(new, Instant::now().checked_sub(CLAIM_GRACE).unwrap()).unwrap();
        let (la, lb) = (
            TcpListener::bind("127.0.0.1:0").unwrap(),
            TcpListener::bind("127.0.0.1:0").unwrap(),
        );
        let (pa, pb) = (
            la.local_addr().unwrap().port(),
            lb.local_addr().unwrap().port(),
        );
        let mut rx_a = recv::claim(&shared, Claim::TcpPort(pa)).unwrap();
        assert!(
            recv::claim(&shared, Claim::TcpPort(pa)).is_none(),
            "claimed twice"
        );
        assert!(recv::claim(&shared, Claim::All).is_none(), "overlaps");
        let tx = Handoff::start(old, 3, Instant::now() + Duration::from_secs(30)).unwrap();
        let _ca = TcpStream::connect(la.local_addr().unwrap()).unwrap();
        let _cb = TcpStream::connect(lb.local_addr().unwrap()).unwrap();
        let (sa, sb) = (la.accept().unwrap().0, lb.accept().unwrap().0);
        let tb = tx.clone();
        let for_b = std::thread::spawn(move || tb.send_blocking(sb, Vec::new(), b"b".to_vec()));
        let ta = tx.clone();
        let for_a = std::thread::spawn(move || ta.send_blocking(sa, Vec::new(), b"a".to_vec()));
        let got = rx_a.recv_blocking().unwrap().unwrap();
        assert_eq!(
            (got.state.as_slice(), got.local_port()),
            (&b"a"[..], Some(pa))
        );
        assert!(for_a.join().unwrap().is_ok());
        let back = for_b.join().unwrap().unwrap_err();
        assert!(matches!(back.error, HandoffError::Refused(_)), "{back:?}");
        assert_eq!(back.state, b"b");
        // The other listener's connections can still be claimed (by its own receiver).
        assert!(recv::claim(&shared, Claim::TcpPort(pb)).is_some());
    }
}
