//! Connection hand-off: long-lived connections (WebSocket, streaming, a line protocol's
//! sessions) survive an upgrade. Instead of draining them, the old generation passes each one —
//! the socket itself (`SCM_RIGHTS`), the bytes it had read but not processed, and the
//! application's state for it — to the new generation, which resumes it where the old one
//! stopped. The client sees the server's pid change, not a disconnect.
//!
//! Use it when connections outlive an upgrade and the protocol has points where another process
//! can take over (between lines, requests or messages). Plain request/response HTTP does not
//! need it: draining loses nothing there.
//!
//! What you write, by stack:
//!
//! | stack | feature | what |
//! |---|---|---|
//! | axum with WebSocket routes | `axum-websocket` | `hotexec::handoff::axum::serve` in place of `hotexec::serve`, and `hotexec::handoff::axum::WebSocketUpgrade` in place of axum's extractor (`examples/axum_ws.rs`) |
//! | tokio-tungstenite | `websocket` | `Sessions` (or `hotexec::handoff::serve`) and `hotexec::handoff::websocket::WebSocket::accept` (`examples/websocket.rs`) |
//! | any tokio protocol | `handoff` | `Sessions` (or `hotexec::handoff::serve`): each `Session`'s `Relay` says when to hand off, and does it (`examples/line.rs`) |
//! | anything else | — | the building blocks: [`Shutdown::handoff`](crate::Shutdown::handoff) on the old side, [`incoming`] on the new one |
//!
//! What it guarantees:
//!
//! - **One owner.** The old generation keeps a connection until the new one acknowledges it
//!   (the new application took it). Refused, or the new generation dies, or the channel breaks
//!   before the acknowledgement: the connection comes back whole and the old generation serves
//!   it on (or drains it) as before. Whatever the new generation sends or suffers — garbage, an
//!   empty record, its fd limit, a kill at any step — no connection is open in both processes
//!   once the hand-off settles (`tests/handoff_faults.rs` checks `/proc/<pid>/fd` of both).
//! - **Detected at ready time.** A new binary without hand-off (an older build, a program not
//!   built on hotexec, another protocol version) says so before it reports ready, and the old
//!   generation drains as without hand-off.
//! - **After a rollback.** If the new generation dies within its probation, the connections it
//!   had not acknowledged come back, and are handed to the rollback generation once it is ready.
//! - **Bounded and checked.** At most [`MAX_UNREAD`] unread bytes and [`MAX_STATE`] bytes of
//!   state per connection; every record is checked field by field, fds arrive `CLOEXEC` and must
//!   be connected stream sockets; the channel is a private socketpair nobody else can reach.
//!
//! Limits: only what the kernel holds moves with the fd. Whatever the application holds —
//! buffered bytes, protocol state, a userspace TLS session's keys — moves only as far as it puts
//! it in `unread` and `state`; the two generations must agree on the state's format (version
//! it). The hand-off point is the application's: a boundary where another process can resume.

pub use hotexec_runtime::handoff::{
    CLAIM_GRACE, Changed, Claim, Connection, Family, HandedOff, Handoff, HandoffError, MAX_STATE,
    MAX_UNREAD, Next, Returned, SendFuture, Successor, VERSION, incoming, incoming_claiming,
};

#[cfg(feature = "tokio")]
pub use hotexec_runtime::handoff::IntoStreamError;

#[doc(hidden)]
pub use hotexec_runtime::handoff::__wire;

#[cfg(feature = "handoff")]
mod sessions;
#[cfg(feature = "handoff")]
pub use sessions::{Kept, Relay, Session, Sessions, Socket, serve};

#[cfg(feature = "websocket")]
pub mod websocket;

#[cfg(feature = "axum-websocket")]
pub mod axum;
