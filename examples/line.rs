//! A line protocol whose sessions survive upgrades: each line is answered `pid=<pid> <line>`,
//! and `count` answers how many lines this session has sent so far — across generations, since
//! the count travels with the connection.
//!
//! ```text
//! HOTEXEC_PID_FILE=/tmp/line.pid cargo run --example line
//! nc 127.0.0.1 9400                  # hello → pid=100 hello
//! kill -USR2 $(cat /tmp/line.pid)    # same nc session: hello → pid=101 hello; count → pid=101 count=2
//! ```
//!
//! The hand-off point is between lines: whatever was read after the last complete line goes
//! along as the unread bytes, the count as the state.
#[path = "support/handoff_server.rs"]
mod handoff_server;
#[path = "support/logging.rs"]
mod logging;

use handoff_server::{Ctx, Start};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[hotexec::main(drain_timeout = "30s", init = logging::init_tracing)]
#[listen("127.0.0.1:9400", name = "line")]
async fn main(listeners: hotexec::Listeners, shutdown: hotexec::Shutdown) -> std::io::Result<()> {
    let listener = listeners.take_tokio_tcp("line")?;
    tracing::info!(pid = std::process::id(), addr = %listener.local_addr()?, "line example serving");
    handoff_server::serve(listener, shutdown, session).await
}

async fn session(start: Start, ctx: Ctx) {
    let (stream, buf, count) = match start {
        Start::Accepted(s) => (s, Vec::new(), 0),
        Start::Resumed {
            stream,
            unread,
            state,
        } => {
            let count = std::str::from_utf8(&state)
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            (stream, unread, count)
        }
    };
    if let Err(e) = run(stream, buf, count, ctx).await {
        tracing::debug!("session ended: {e}");
    }
}

async fn run(
    mut stream: TcpStream,
    mut buf: Vec<u8>,
    mut count: u64,
    mut ctx: Ctx,
) -> std::io::Result<()> {
    let pid = std::process::id();
    // Once stopping, and the hand-off refused or unavailable: serve on until the client leaves.
    let mut draining = false;
    loop {
        // Every complete line first.
        while let Some(end) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches(['\r', '\n']);
            let answer = if line == "count" {
                format!("pid={pid} count={count}\n")
            } else {
                format!("pid={pid} {line}\n")
            };
            count += 1;
            stream.write_all(answer.as_bytes()).await?;
        }
        // A boundary: no complete line is waiting and every answer is written.
        if !draining && *ctx.stop.borrow() {
            // Without a hand-off (none offered, or it failed) the session is drained as before.
            if let Some(h) = ctx.handoff() {
                let std = stream.into_std()?;
                match h.send(std, buf, count.to_string().into_bytes()).await {
                    Ok(()) => return Ok(()),
                    Err(back) => {
                        tracing::warn!(
                            "hand-off failed ({back}): this generation serves the session on"
                        );
                        let (s, unread, _) = back.into_tokio_tcp()?;
                        (stream, buf) = (s, unread);
                    }
                }
            }
            draining = true;
            continue;
        }
        let n = tokio::select! {
            n = stream.read_buf(&mut buf) => n?,
            _ = ctx.stop.changed(), if !draining => continue,
        };
        if n == 0 {
            return Ok(());
        }
    }
}
