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
//! The session's state (how many messages it exchanged) travels with it. `HOTEXEC_LISTEN_WS`
//! sets the address; `HOTEXEC_EXAMPLE_HANDOFF=0` turns hand-off off, for a comparison: then each
//! connection is closed with 1001 (going away) at the drain's close phase, and its client
//! reconnects.
#[path = "support/logging.rs"]
mod logging;

use hotexec::handoff::websocket::{Message, WebSocket};
use hotexec::handoff::{Session, Sessions};
use tokio::net::TcpStream;

#[hotexec::main(drain_timeout = "30s", init = logging::init_tracing)]
#[listen("127.0.0.1:9401", name = "ws")]
async fn main(listeners: hotexec::Listeners, shutdown: hotexec::Shutdown) -> std::io::Result<()> {
    let mut listener = listeners.take_tokio_tcp("ws")?;
    tracing::info!(pid = std::process::id(), addr = %listener.local_addr()?, "websocket example serving");
    let sessions = match std::env::var("HOTEXEC_EXAMPLE_HANDOFF").as_deref() {
        Ok("0") => Sessions::without_handoff(shutdown),
        _ => Sessions::new(shutdown),
    };
    while let Some(s) = sessions.accept(&mut listener).await {
        sessions.spawn(session(s));
    }
    sessions.wait().await;
    Ok(())
}

async fn session(s: Session<TcpStream>) {
    // A new connection does the handshake; one handed over is resumed as it was.
    let Ok(mut ws) = WebSocket::accept(s).await else {
        return;
    };
    let pid = std::process::id();
    let mut count = ws.state().try_into().map(u64::from_le_bytes).unwrap_or(0);
    // `None`: the client left, or the session went to the next generation.
    while let Some(Ok(msg)) = ws.recv().await {
        if let Message::Text(text) = msg {
            count += 1;
            ws.set_state(count.to_le_bytes());
            if ws
                .send(Message::text(format!("pid={pid} {text}")))
                .await
                .is_err()
            {
                return;
            }
        }
    }
}
