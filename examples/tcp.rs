//! A raw TCP line protocol that upgrades without losing a request, drained with
//! `hotexec::drain::Connections`: every line gets `pid=<pid> <line>` back.
//!
//! ```text
//! HOTEXEC_PID_FILE=/tmp/tcp.pid cargo run --example tcp
//! echo hello | nc -q1 127.0.0.1 7000      # pid=<serving pid> hello
//! kill -USR2 $(cat /tmp/tcp.pid)
//! ```
//!
//! The same few lines fit any protocol on tokio (Redis-like, custom framing): accept with
//! `conns.accept`, spawn with `conns.spawn`, leave a connection between two messages once
//! `conns.closing()` is cancelled, and end with `conns.wait()`.
//!
//! `TCP_PLAIN_SHUTDOWN=1` runs the hand-written loop found in many READMEs instead (an
//! unbiased `select!` on accept and shutdown, tasks spawned with `tokio::spawn`, `main`
//! returning at once): what it loses at each upgrade is what the drain is for.
#[path = "support/logging.rs"]
mod logging;

use hotexec::drain::CancellationToken;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

#[hotexec::main(drain_timeout = "30s", init = logging::init_tracing)]
#[listen("127.0.0.1:7000", name = "tcp")]
async fn main(listeners: hotexec::Listeners, shutdown: hotexec::Shutdown) -> std::io::Result<()> {
    let mut listener = listeners.take_tokio_tcp("tcp")?;
    tracing::info!(pid = std::process::id(), addr = %listener.local_addr()?, "tcp example serving");
    if std::env::var_os("TCP_PLAIN_SHUTDOWN").is_some_and(|v| v == "1") {
        return plain(listener, shutdown).await;
    }

    let conns = hotexec::drain::Connections::new(shutdown);
    while let Some((stream, _peer)) = conns.accept(&mut listener).await {
        conns.spawn(session(stream, conns.closing()));
    }
    conns.wait().await;
    Ok(())
}

/// One connection: answers each line until the client leaves, or until `closing` is
/// cancelled while no request is pending (never in the middle of one).
async fn session(stream: TcpStream, closing: CancellationToken) {
    let _ = stream.set_nodelay(true);
    let (r, mut w) = stream.into_split();
    let mut reader = BufReader::new(r);
    let pid = std::process::id();
    loop {
        // The next request's first bytes, or time to leave while idle. Biased: bytes that are
        // already there are a request to answer.
        let more = tokio::select! {
            biased;
            buf = reader.fill_buf() => matches!(buf, Ok(b) if !b.is_empty()),
            _ = closing.cancelled() => false,
        };
        if !more {
            return;
        }
        let mut line = String::new();
        match reader.read_line(&mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let reply = format!("pid={pid} {}\n", line.trim_end());
        if w.write_all(reply.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// The naive loop: no `biased`, spawned tasks not tracked, returns while they still run (the
/// runtime then drops them, closing their connections).
async fn plain(
    listener: tokio::net::TcpListener,
    mut shutdown: hotexec::Shutdown,
) -> std::io::Result<()> {
    tracing::warn!("TCP_PLAIN_SHUTDOWN=1: naive accept loop, requests are lost at upgrades");
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    tokio::spawn(session(stream, CancellationToken::new()));
                }
            }
        }
    }
    Ok(())
}
