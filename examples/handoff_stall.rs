//! Test fixture (tests/handoff_faults.rs): a new generation that stalls in the middle of a
//! hand-off. It takes `HOTEXEC_TEST_TAKE` of the connections the previous generation hands over
//! (acknowledging them: they are its own), serves those with the `line` example's protocol, and
//! takes no more: the rest wait, unacknowledged, as they would in a new generation that hangs or
//! is killed at that step. It logs `took N, taking no more` when it stalls.
#[path = "support/logging.rs"]
mod logging;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

#[hotexec::main(init = logging::init_tracing)]
#[listen("127.0.0.1:9400", name = "line")]
async fn main(listeners: hotexec::Listeners, _shutdown: hotexec::Shutdown) -> std::io::Result<()> {
    let _listener = listeners.take_tokio_tcp("line")?;
    let take: usize = std::env::var("HOTEXEC_TEST_TAKE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let Some(mut incoming) = hotexec::handoff::incoming() else {
        tracing::error!("not started by an upgrade with hand-off");
        return Ok(());
    };
    let mut took = 0;
    while took < take {
        match incoming.recv().await {
            Some(Ok(conn)) => {
                let (stream, unread, _state) = conn.into_tokio_tcp().map_err(|e| e.error)?;
                took += 1;
                tokio::spawn(serve(stream, unread));
            }
            Some(Err(e)) => tracing::error!("{e}"),
            None => break,
        }
    }
    tracing::warn!("took {took}, taking no more");
    // Holds `incoming` (so what was offered stays unanswered) until killed.
    std::future::pending::<()>().await;
    drop(incoming);
    Ok(())
}

/// The `line` example's answers, for the connections this fixture took.
async fn serve(stream: tokio::net::TcpStream, unread: Vec<u8>) {
    let pid = std::process::id();
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(std::io::Cursor::new(unread).chain(r)).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if w.write_all(format!("pid={pid} {line}\n").as_bytes())
            .await
            .is_err()
        {
            return;
        }
    }
}
