//! An axum app with a WebSocket route whose sessions survive upgrades: `GET /` answers
//! `pid=<pid>`, and each text message on `/ws` is answered with one text message
//! `pid=<pid> <message>`. On an upgrade each WebSocket session is handed to the new generation
//! at its next message boundary and resumed there by the same route's handler, without a new
//! handshake: clients see the pid change, not a disconnect.
//!
//! ```text
//! HOTEXEC_PID_FILE=/tmp/axum_ws.pid cargo run --example axum_ws
//! websocat ws://127.0.0.1:3001/ws    # hi → pid=100 hi
//! kill -USR2 $(cat /tmp/axum_ws.pid) # same session: hi → pid=101 hi
//! ```
//!
//! Written as axum's docs show, with two changes for hand-off: `hotexec::handoff::axum`'s
//! `WebSocketUpgrade` and `WebSocket` in place of axum's, and its `serve` in place of
//! `hotexec::serve`.
#[path = "support/logging.rs"]
mod logging;

use axum::{Router, response::Response, routing::get};
use hotexec::handoff::axum::{Message, WebSocket, WebSocketUpgrade};

async fn root() -> String {
    format!("pid={}\n", std::process::id())
}

async fn ws(upgrade: WebSocketUpgrade) -> Response {
    upgrade.on_upgrade(session)
}

async fn session(mut socket: WebSocket) {
    let pid = std::process::id();
    // `None`: the client left, or the session went to the next generation.
    while let Some(Ok(msg)) = socket.recv().await {
        if let Message::Text(text) = msg {
            if socket
                .send(Message::text(format!("pid={pid} {text}")))
                .await
                .is_err()
            {
                return;
            }
        }
    }
}

#[hotexec::main(drain_timeout = "30s", init = logging::init_tracing)]
#[listen("127.0.0.1:3001", name = "http")]
async fn main(listeners: hotexec::Listeners, shutdown: hotexec::Shutdown) -> std::io::Result<()> {
    let app = Router::new().route("/", get(root)).route("/ws", get(ws));
    let listener = listeners.take_tokio_tcp("http")?;
    tracing::info!(pid = std::process::id(), addr = %listener.local_addr()?, "axum_ws example serving");
    hotexec::handoff::axum::serve(listener, app, shutdown).await
}
