//! An axum app, written as axum's docs show, that upgrades without losing a request: the one
//! hotexec line is `hotexec::serve(listener, app, shutdown)` in place of `axum::serve(..)`.
//!
//! ```text
//! HOTEXEC_PID_FILE=/tmp/axum.pid cargo run --example axum
//! curl 127.0.0.1:3000/              # pid=<serving pid>
//! curl '127.0.0.1:3000/slow?ms=3000' & kill -USR2 $(cat /tmp/axum.pid)
//!                                   # the slow request finishes on the old pid; new ones go to the new pid
//! curl --http2-prior-knowledge 127.0.0.1:3000/   # HTTP/2 (h2c) on the same listener
//! ```
//!
//! `AXUM_PLAIN_SHUTDOWN=1` serves with plain `axum::serve(listener, app).with_graceful_shutdown(..)`
//! instead, so that tests and benchmarks can show what the integration changes (it loses
//! requests at each upgrade: idle keep-alive connections are closed under their clients, and
//! connections accepted just before the hand-over are closed before their request is read).
#[path = "support/logging.rs"]
mod logging;

use std::time::Duration;

use axum::{Router, http::Uri, routing::get};

/// `GET /`: `pid=<pid>`.
async fn root() -> String {
    format!("pid={}\n", std::process::id())
}

/// `GET /slow?ms=N`: sleeps N ms (default 1000) first.
async fn slow(uri: Uri) -> String {
    let ms: u64 = uri
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("ms=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    tokio::time::sleep(Duration::from_millis(ms)).await;
    format!("pid={} slept_ms={ms}\n", std::process::id())
}

#[hotexec::main(drain_timeout = "30s", init = logging::init_tracing)]
#[listen("127.0.0.1:3000", name = "http")]
async fn main(listeners: hotexec::Listeners, shutdown: hotexec::Shutdown) -> std::io::Result<()> {
    let app = Router::new()
        .route("/", get(root))
        .route("/slow", get(slow));
    let listener = listeners.take_tokio_tcp("http")?;
    tracing::info!(pid = std::process::id(), addr = %listener.local_addr()?, "axum example serving");

    if std::env::var_os("AXUM_PLAIN_SHUTDOWN").is_some_and(|v| v == "1") {
        tracing::warn!("AXUM_PLAIN_SHUTDOWN=1: plain axum::serve, requests are lost at upgrades");
        return axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                shutdown.await;
            })
            .await;
    }
    hotexec::serve(listener, app, shutdown).await
}
