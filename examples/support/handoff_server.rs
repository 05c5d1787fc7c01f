//! The part of a tokio server that hand-off adds, shared by the `line` and `websocket` examples:
//! the accept loop, the connections the previous generation hands over, and, once shutdown
//! resolves, a stop signal for every session (each hands itself off at its next boundary).
//! Everything protocol-specific is in the session function the example passes.
use std::future::Future;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

/// How a session starts.
pub enum Start {
    /// Accepted by this generation.
    Accepted(TcpStream),
    /// Handed over by the previous generation, with what it had read but not processed and
    /// the session's state.
    Resumed {
        stream: TcpStream,
        unread: Vec<u8>,
        state: Vec<u8>,
    },
}

/// What each session gets besides its connection.
#[derive(Clone)]
pub struct Ctx {
    /// Becomes `true` when this generation stops: hand off (or drain) at the next boundary.
    pub stop: watch::Receiver<bool>,
    pub shutdown: hotexec::Shutdown,
    /// `false` with `HOTEXEC_EXAMPLE_HANDOFF=0`: drain as without hand-off (for comparison).
    pub handoff_enabled: bool,
}

impl Ctx {
    /// The hand-off to the new generation, if this one was replaced by a generation that takes
    /// hand-offs and the example has them enabled.
    pub fn handoff(&self) -> Option<hotexec::handoff::Handoff> {
        self.handoff_enabled
            .then(|| self.shutdown.handoff())
            .flatten()
    }
}

/// Serves `listener` and the connections handed over until shutdown, then stops every session
/// and waits for them (each hands its connection on, or drains it).
pub async fn serve<F, Fut>(
    listener: TcpListener,
    shutdown: hotexec::Shutdown,
    session: F,
) -> std::io::Result<()>
where
    F: Fn(Start, Ctx) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let handoff_enabled = std::env::var("HOTEXEC_EXAMPLE_HANDOFF").as_deref() != Ok("0");
    let (stop_tx, stop) = watch::channel(false);
    let ctx = Ctx {
        stop,
        shutdown: shutdown.clone(),
        handoff_enabled,
    };
    let (resumed_tx, mut resumed) = mpsc::channel::<Start>(1024);
    if let Some(incoming) = hotexec::handoff::incoming() {
        tokio::spawn(take_handed_off(incoming, resumed_tx, shutdown.clone()));
    } else {
        drop(resumed_tx);
    }
    let mut sessions = JoinSet::new();
    let mut resumed_open = true;
    let mut stopping = shutdown.clone();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    sessions.spawn(session(Start::Accepted(stream), ctx.clone()));
                }
                Err(e) => tracing::warn!("accept: {e}"),
            },
            start = resumed.recv(), if resumed_open => match start {
                Some(start) => { sessions.spawn(session(start, ctx.clone())); }
                None => resumed_open = false,
            },
            Some(_) = sessions.join_next() => {}
            _ = &mut stopping => break,
        }
    }
    drop(listener);
    let stopped = std::time::Instant::now();
    let _ = stop_tx.send(true);
    tracing::info!(
        pid = std::process::id(),
        sessions = sessions.len(),
        "stopping: each session hands off or drains at its next boundary"
    );
    // Connections that were on their way from the previous generation still get a session (it
    // hands them on at once).
    while let Some(start) = resumed.recv().await {
        sessions.spawn(session(start, ctx.clone()));
    }
    while sessions.join_next().await.is_some() {}
    // What `bench_handoff` reads: how long handing every session on (or draining it) took.
    tracing::info!(
        pid = std::process::id(),
        handed_off = ctx.handoff().map_or(0, |h| h.handed_off()),
        elapsed_us = stopped.elapsed().as_micros() as u64,
        "all sessions handed off or drained"
    );
    Ok(())
}

/// Takes the connections the previous generation hands over until it is done, or until this
/// generation stops (then the rest stay with the previous one, which drains them).
async fn take_handed_off(
    mut incoming: hotexec::handoff::HandedOff,
    to_sessions: mpsc::Sender<Start>,
    mut shutdown: hotexec::Shutdown,
) {
    // Fault injection for tests: take this many and then no more (the rest wait, unacknowledged,
    // as they would in a new generation that hangs or is killed in the middle of a hand-off).
    let limit: Option<usize> = std::env::var("HOTEXEC_EXAMPLE_TAKE_LIMIT")
        .ok()
        .and_then(|v| v.parse().ok());
    let mut taken = 0usize;
    loop {
        if limit.is_some_and(|l| taken >= l) {
            tracing::warn!(
                taken,
                "HOTEXEC_EXAMPLE_TAKE_LIMIT reached: taking no more hand-offs"
            );
            std::future::pending::<()>().await;
        }
        let next = tokio::select! {
            next = incoming.recv() => next,
            _ = &mut shutdown => break,
        };
        match next {
            None => break,
            Some(Ok(conn)) => match conn.into_tokio_tcp() {
                Ok((stream, unread, state)) => {
                    taken += 1;
                    tracing::debug!(taken, "resumed a handed-off connection");
                    if to_sessions
                        .send(Start::Resumed {
                            stream,
                            unread,
                            state,
                        })
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
                Err(e) => tracing::error!("handed-off connection unusable: {e}"),
            },
            Some(Err(e)) => tracing::error!("{e}"),
        }
    }
    tracing::info!(taken, "hand-off from the previous generation over");
}
