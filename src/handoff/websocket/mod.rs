//! WebSocket sessions (tokio-tungstenite) handed to the next generation at a message boundary,
//! with the bytes read but not processed and the application's state, and resumed there
//! without a new handshake (feature `websocket`).
//!
//! ```no_run
//! use hotexec::handoff::websocket::{Message, WebSocket};
//!
//! #[hotexec::main]
//! #[listen("127.0.0.1:9401", name = "ws")]
//! async fn main(listeners: hotexec::Listeners, shutdown: hotexec::Shutdown) -> std::io::Result<()> {
//!     let listener = listeners.take_tokio_tcp("ws")?;
//!     hotexec::handoff::serve(listener, shutdown, |session| async move {
//!         // A new connection: the handshake. One handed over: resumed where it was.
//!         let Ok(mut ws) = WebSocket::accept(session).await else { return };
//!         while let Some(Ok(msg)) = ws.recv().await {
//!             if let Message::Text(t) = msg {
//!                 if ws.send(Message::text(format!("echo {t}"))).await.is_err() {
//!                     return;
//!                 }
//!             }
//!         }
//!         // `None`: the client left — or the session was handed to the next generation
//!         // (`ws.handed_off()`), which serves it from here.
//!     })
//!     .await
//! }
//! ```
//!
//! How: [`WebSocket::recv`] hands the session off by itself, when this generation has been
//! replaced by one that takes hand-offs and the session is at a message boundary (no frame half
//! read, no fragmented message in progress, every frame written flushed). The connection's bytes
//! reach tungstenite a frame at a time, so everything read past the last message is still this
//! layer's to hand over. The application's state ([`WebSocket::set_state`]) goes along and comes
//! back in [`WebSocket::state`]. Without hand-off (a final stop, a new generation that does not
//! take them), the session is closed at the drain's close phase with `1001 Going Away`, so its
//! client reconnects to the new generation at once.
//!
//! Limits: a session whose client has more than [`MAX_UNREAD`](super::MAX_UNREAD) bytes pipelined
//! past its last message, or whose state is over [`MAX_STATE`](super::MAX_STATE), is not handed
//! off (it is drained as above). Extensions negotiated in the handshake (permessage-deflate) are
//! not supported. A session writes from the task that calls `recv` (a writer task of its own
//! would write during the hand-off).

mod envelope;
mod frames;

use std::io;
use std::os::fd::BorrowedFd;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};

pub use tokio_tungstenite::tungstenite::{Error, Message, Utf8Bytes};

pub(crate) use envelope::Head;
use frames::FrameBoundary;

use super::{Relay, Session, Socket};

/// What a [`WebSocket`] runs on: a connection whose socket can be handed off. Every [`Socket`]
/// (tokio's `TcpStream`, `UnixStream`) is one; so is axum's upgraded connection under
/// [`handoff::axum`](crate::handoff::axum) (feature `axum-websocket`).
pub trait Transport: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// The connection's socket: a copy of it is what is handed off. `None`: this connection
    /// cannot be handed off.
    fn socket(&self) -> Option<BorrowedFd<'_>>;

    /// Whether this transport may hold bytes it read from the socket that it has not returned
    /// yet (hyper's upgraded connection does): they are drained into the unread bytes before a
    /// hand-off.
    fn buffers(&self) -> bool {
        false
    }
}

impl<S: Socket + 'static> Transport for S {
    fn socket(&self) -> Option<BorrowedFd<'_>> {
        Some(self.as_fd())
    }
}

/// A WebSocket session that hands itself to the next generation (see the [module](self)).
pub struct WebSocket<T: Transport> {
    /// `None` once handed off: this generation's copy of the connection is closed at once.
    ws: Option<WebSocketStream<FrameBoundary<T>>>,
    /// `None`: not under [`Sessions`](super::Sessions) (axum's own `serve`): no hand-off.
    relay: Option<Relay>,
    state: Vec<u8>,
    head: Option<Head>,
    resumed: bool,
    /// `1001` sent (the drain's close phase, no hand-off): the close handshake is under way.
    close_sent: bool,
}

impl<T: Transport> std::fmt::Debug for WebSocket<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebSocket")
            .field("resumed", &self.resumed)
            .field("handed_off", &self.handed_off())
            .field("state", &self.state.len())
            .finish_non_exhaustive()
    }
}

impl<S: Socket + 'static> WebSocket<S> {
    /// A session of [`Sessions`](super::Sessions) as a WebSocket: a connection this generation
    /// accepted does the server handshake; one the previous generation handed over is resumed
    /// as it was, with no handshake, its state in [`state`](Self::state).
    pub async fn accept(session: Session<S>) -> Result<WebSocket<S>, Error> {
        let Session {
            stream,
            unread,
            state,
            resumed,
            relay,
            ..
        } = session;
        if resumed {
            return WebSocket::resume(stream, unread, &state, relay)
                .await
                .map_err(|e| Error::Io(io::Error::new(io::ErrorKind::InvalidData, e)));
        }
        let mut ws =
            tokio_tungstenite::accept_async(FrameBoundary::new(stream, unread, true)).await?;
        ws.get_mut().frames();
        Ok(WebSocket::new(ws, Some(relay), Vec::new(), None, false))
    }
}

impl<T: Transport> WebSocket<T> {
    fn new(
        ws: WebSocketStream<FrameBoundary<T>>,
        relay: Option<Relay>,
        state: Vec<u8>,
        head: Option<Head>,
        resumed: bool,
    ) -> Self {
        WebSocket {
            ws: Some(ws),
            relay,
            state,
            head,
            resumed,
            close_sent: false,
        }
    }

    /// A connection handed over at a message boundary, resumed: `state` is the session's
    /// envelope (see `envelope.rs`). A state this build cannot read closes the connection with
    /// `1001` (its client reconnects) and is an error.
    pub(crate) async fn resume(
        io: T,
        unread: Vec<u8>,
        state: &[u8],
        relay: Relay,
    ) -> Result<WebSocket<T>, String> {
        match envelope::decode(state) {
            Ok((head, state)) => {
                Ok(WebSocket::resume_decoded(io, unread, head, state, Some(relay)).await)
            }
            Err(e) => {
                let mut ws = WebSocket::resume_decoded(io, unread, None, Vec::new(), None).await;
                let _ = ws.close(Some(going_away())).await;
                Err(format!("a handed-over WebSocket session refused: {e}"))
            }
        }
    }

    /// [`resume`](Self::resume) with the envelope already read.
    pub(crate) async fn resume_decoded(
        io: T,
        unread: Vec<u8>,
        head: Option<Head>,
        state: Vec<u8>,
        relay: Option<Relay>,
    ) -> WebSocket<T> {
        let ws = WebSocketStream::from_raw_socket(
            FrameBoundary::new(io, unread, false),
            Role::Server,
            None,
        )
        .await;
        WebSocket::new(ws, relay, state, head, true)
    }

    #[cfg_attr(not(feature = "axum-websocket"), allow(dead_code))]
    /// A connection this generation upgraded itself (the axum integration answered the
    /// handshake): `head` is the request it was upgraded by.
    pub(crate) async fn upgraded(io: T, relay: Option<Relay>, head: Head) -> WebSocket<T> {
        let ws = WebSocketStream::from_raw_socket(
            FrameBoundary::new(io, Vec::new(), false),
            Role::Server,
            None,
        )
        .await;
        WebSocket::new(ws, relay, Vec::new(), Some(head), false)
    }

    /// The next message. `None`: the connection is closed — or the session was handed to the
    /// next generation ([`handed_off`](Self::handed_off)), which serves it from here.
    ///
    /// This is where the hand-off happens: at the first message boundary after this generation
    /// was replaced by one that takes hand-offs. Without hand-off, at the drain's close phase it
    /// sends `1001 Going Away` and goes on reading until the client has closed.
    pub async fn recv(&mut self) -> Option<Result<Message, Error>> {
        loop {
            let ws = self.ws.as_mut()?;
            let Some(relay) = self.relay.as_ref() else {
                return ws.next().await;
            };
            let at_boundary = ws.get_ref().at_boundary();
            // Asked once per message (it takes the shutdown's lock); if it turns due after
            // this, `relay.due()` below wakes the loop.
            let due_now = relay.is_due();
            if at_boundary && due_now {
                match self.hand_off().await {
                    Ok(true) => return None,
                    Ok(false) => continue,
                    Err(e) => return Some(Err(e)),
                }
            }
            let relay = self.relay.as_ref()?;
            let closing = relay.closing();
            let close_now = !self.close_sent && !due_now;
            let ws = self.ws.as_mut()?;
            tokio::select! {
                biased;
                () = relay.due(), if at_boundary && !due_now => continue,
                () = closing.cancelled(), if close_now => {
                    self.close_sent = true;
                    if let Err(e) = ws.close(Some(going_away())).await {
                        return Some(Err(e));
                    }
                }
                msg = ws.next() => return msg,
            }
        }
    }

    /// Sends `msg`.
    pub async fn send(&mut self, msg: Message) -> Result<(), Error> {
        match self.ws.as_mut() {
            Some(ws) => ws.send(msg).await,
            None => Err(Error::AlreadyClosed),
        }
    }

    /// Starts the close handshake (with `frame`, if any).
    pub async fn close(&mut self, frame: Option<CloseFrame>) -> Result<(), Error> {
        match self.ws.as_mut() {
            Some(ws) => ws.close(frame).await,
            None => Err(Error::AlreadyClosed),
        }
    }

    /// The application's state for this session: what the previous generation handed over
    /// with it (empty for a session this generation accepted), or what was set since.
    pub fn state(&self) -> &[u8] {
        &self.state
    }

    /// Sets the state that goes with this session to the next generation (at most
    /// [`MAX_STATE`](super::MAX_STATE) bytes with the request head). Keep it current: the
    /// hand-off happens inside [`recv`](Self::recv).
    pub fn set_state(&mut self, state: impl Into<Vec<u8>>) {
        self.state = state.into();
    }

    /// Handed over by the previous generation (`false`: this generation did the handshake).
    pub fn resumed(&self) -> bool {
        self.resumed
    }

    /// The session was handed to the next generation: it is over here.
    pub fn handed_off(&self) -> bool {
        self.ws.is_none()
    }

    /// Hands the session off, at a boundary. `Ok(true)`: done, the connection is the next
    /// generation's. `Ok(false)`: it stays (refused, or the new generation died): serve on.
    async fn hand_off(&mut self) -> Result<bool, Error> {
        let Some(ws) = self.ws.as_mut() else {
            return Ok(true);
        };
        // Pongs and close replies tungstenite queued go out first: nothing half-written.
        ws.flush().await?;
        let fb = ws.get_mut();
        let mut unread = fb.take_unread();
        if fb.inner().buffers() {
            drain_buffered(fb.inner_mut(), &mut unread);
        }
        let state = envelope::encode(self.head.as_ref(), &self.state);
        let (Some(relay), Some(fd)) = (self.relay.as_mut(), ws.get_ref().inner().socket()) else {
            ws.get_mut().put_back(unread);
            return Ok(false);
        };
        match relay.hand_off_fd(fd, unread, state).await {
            Ok(()) => {
                // The next generation serves it: this generation's copy goes now.
                self.ws = None;
                Ok(true)
            }
            Err((unread, _state, _error)) => {
                if let Some(ws) = self.ws.as_mut() {
                    ws.get_mut().put_back(unread);
                }
                Ok(false)
            }
        }
    }
}

/// Reads a session envelope (for the axum integration, which replays its request head).
#[cfg_attr(not(feature = "axum-websocket"), allow(dead_code))]
pub(crate) fn envelope_decode(state: &[u8]) -> Result<(Option<Head>, Vec<u8>), String> {
    envelope::decode(state)
}

/// `1001 Going Away`: the server restarts; the client reconnects.
pub(crate) fn going_away() -> CloseFrame {
    CloseFrame {
        code: CloseCode::Away,
        reason: "server restarting".into(),
    }
}

/// Reads what `io` returns without waiting: bytes it buffered itself (and what the socket
/// already holds), up to what a hand-off may carry. What it did not return stays in the
/// kernel's queue and travels with the socket.
fn drain_buffered<T: AsyncRead + Unpin>(io: &mut T, unread: &mut Vec<u8>) {
    let waker = std::task::Waker::noop();
    let mut cx = Context::from_waker(waker);
    let mut chunk = vec![0u8; 16 * 1024];
    while unread.len() < super::MAX_UNREAD {
        let room = chunk.len().min(super::MAX_UNREAD - unread.len());
        let mut buf = ReadBuf::new(&mut chunk[..room]);
        match Pin::new(&mut *io).poll_read(&mut cx, &mut buf) {
            Poll::Ready(Ok(())) if !buf.filled().is_empty() => {
                unread.extend_from_slice(buf.filled());
            }
            _ => return,
        }
    }
}
