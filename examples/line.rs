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
//! The hand-off point is between lines: what was read after the last complete line goes along as
//! the unread bytes, the count as the state. Without hand-off (a final stop, a new binary that
//! does not take them) a session is served until its client leaves, within `drain_timeout`.
#[path = "support/logging.rs"]
mod logging;

use hotexec::handoff::Session;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[hotexec::main(drain_timeout = "30s", init = logging::init_tracing)]
#[listen("127.0.0.1:9400", name = "line")]
async fn main(listeners: hotexec::Listeners, shutdown: hotexec::Shutdown) -> std::io::Result<()> {
    let listener = listeners.take_tokio_tcp("line")?;
    tracing::info!(pid = std::process::id(), addr = %listener.local_addr()?, "line example serving");
    hotexec::handoff::serve(listener, shutdown, session).await
}

async fn session(s: Session<TcpStream>) -> std::io::Result<()> {
    let pid = std::process::id();
    let Session {
        mut stream,
        unread: mut buf,
        state,
        mut relay,
        ..
    } = s;
    let mut count: u64 = std::str::from_utf8(&state)
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    loop {
        while let Some(end) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            let answer = match line.trim_end() {
                "count" => format!("count={count}"),
                other => other.to_string(),
            };
            count += 1;
            stream
                .write_all(format!("pid={pid} {answer}\n").as_bytes())
                .await?;
        }
        // A boundary: every complete line is answered. Read on, or move to the new generation.
        tokio::select! {
            n = stream.read_buf(&mut buf) => if n? == 0 { return Ok(()) },
            () = relay.due() => match relay.hand_off(stream, buf, count.to_string().into()).await {
                Ok(()) => return Ok(()),
                Err(kept) => (stream, buf) = (kept.stream, kept.unread), // still ours: serve on
            },
        }
    }
}
