//! A WebSocket server (tokio-tungstenite) whose connections survive upgrades: each text message
//! is answered with one text message `pid=<serving pid> <the message>`, and on an upgrade every
//! connection is handed to the new generation at its next message boundary — clients see the
//! pid change, not a disconnect.
//!
//! ```text
//! HOTEXEC_PID_FILE=/tmp/ws.pid cargo run --example websocket     # ws://127.0.0.1:9401/
//! websocat ws://127.0.0.1:9401/      # hi → pid=100 hi
//! kill -USR2 $(cat /tmp/ws.pid)      # same session: hi → pid=101 hi
//! ```
//!
//! `HOTEXEC_LISTEN_WS` sets the address; `HOTEXEC_EXAMPLE_HANDOFF=0` turns hand-off off, for a
//! comparison: then each connection is closed at a message boundary with 1001 (going away) once
//! the new generation serves, and its client reconnects.
//!
//! The hand-off point is a message boundary: `support/ws_frames.rs` makes sure that the bytes
//! read after the last complete frame are not inside tungstenite but ours to pass on as the
//! unread bytes; the state is the number of messages the session has exchanged. The new side
//! resumes the upgraded connection with `WebSocketStream::from_raw_socket(.., Role::Server, ..)`:
//! no new HTTP handshake.
#[path = "support/handoff_server.rs"]
mod handoff_server;
#[path = "support/logging.rs"]
mod logging;
#[path = "support/ws_frames.rs"]
mod ws_frames;

use futures_util::{SinkExt, StreamExt};
use handoff_server::{Ctx, Start};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use ws_frames::FrameBoundary;

type Ws = WebSocketStream<FrameBoundary<TcpStream>>;

#[hotexec::main(drain_timeout = "30s", init = logging::init_tracing)]
#[listen("127.0.0.1:9401", name = "ws")]
async fn main(listeners: hotexec::Listeners, shutdown: hotexec::Shutdown) -> std::io::Result<()> {
    let listener = listeners.take_tokio_tcp("ws")?;
    tracing::info!(pid = std::process::id(), addr = %listener.local_addr()?, "websocket example serving");
    handoff_server::serve(listener, shutdown, session).await
}

async fn session(start: Start, ctx: Ctx) {
    let (ws, count) = match start {
        Start::Accepted(stream) => {
            match tokio_tungstenite::accept_async(FrameBoundary::new(stream, Vec::new(), true))
                .await
            {
                Ok(mut ws) => {
                    ws.get_mut().frames();
                    (ws, 0)
                }
                Err(e) => {
                    tracing::debug!("websocket handshake failed: {e}");
                    return;
                }
            }
        }
        Start::Resumed {
            stream,
            unread,
            state,
        } => {
            let count = state.try_into().map(u64::from_le_bytes).unwrap_or_default();
            (resume(stream, unread).await, count)
        }
    };
    if let Err(e) = run(ws, count, ctx).await {
        tracing::debug!("websocket session ended: {e}");
    }
}

/// An upgraded connection, as another generation left it at a message boundary.
async fn resume(stream: TcpStream, unread: Vec<u8>) -> Ws {
    WebSocketStream::from_raw_socket(
        FrameBoundary::new(stream, unread, false),
        Role::Server,
        None,
    )
    .await
}

async fn run(mut ws: Ws, mut count: u64, mut ctx: Ctx) -> Result<(), WsError> {
    let pid = std::process::id();
    let mut draining = false;
    loop {
        if !draining && *ctx.stop.borrow() && ws.get_ref().at_boundary() {
            ws.flush().await?;
            match ctx.handoff() {
                Some(h) => {
                    let (stream, unread) = ws.into_inner().into_parts();
                    let std = stream.into_std()?;
                    match h.send(std, unread, count.to_le_bytes().to_vec()).await {
                        Ok(()) => return Ok(()),
                        Err(back) => {
                            tracing::warn!(
                                "hand-off failed ({back}): this generation serves the connection on"
                            );
                            let (stream, unread, _) = back.into_tokio_tcp()?;
                            ws = resume(stream, unread).await;
                        }
                    }
                }
                None => {
                    // No hand-off (disabled, a final stop, or a new generation that does not
                    // take them): what servers do today, going away at a message boundary.
                    let _ = ws
                        .close(Some(CloseFrame {
                            code: CloseCode::Away,
                            reason: "server restarting".into(),
                        }))
                        .await;
                    return Ok(());
                }
            }
            draining = true;
        }
        let stop_unseen = !draining && !*ctx.stop.borrow();
        let msg = tokio::select! {
            msg = ws.next() => msg,
            _ = ctx.stop.changed(), if stop_unseen => continue,
        };
        match msg {
            None | Some(Ok(Message::Close(_))) => return Ok(()),
            Some(Ok(Message::Text(text))) => {
                count += 1;
                ws.send(Message::text(format!("pid={pid} {}", text.as_str())))
                    .await?;
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e),
        }
    }
}
