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
mod connection;
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
#[cfg(feature = "tokio")]
pub use connection::{Connection, IntoStreamError};
pub use error::HandoffError;
pub use recv::{CLAIM_GRACE, Claim, HandedOff, Next};
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
mod tests;
