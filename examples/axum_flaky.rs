//! A release that starts fine, reports ready, and then serves errors: the axum example's shape
//! (an axum `Router` on `hotexec::serve`, default settings), with the fault chosen by the
//! environment. What the health-gated commit is for (README, "Safe commits"); the fixture of
//! `tests/health_gate.rs` and of the benchmark rows in BENCHMARKS.md.
//!
//! ```text
//! FLAKY_500_EVERY=20         # every 20th request answers 500 (5%)
//! FLAKY_AFTER_MS=1000        # ... only from 1 s after the start (healthy for its first second)
//! FLAKY_HEALTHZ=503          # GET /healthz answers 503 "db down" (for FLAKY_PROBE)
//! FLAKY_PROBE=1              # serve with .probe("GET /healthz")
//! ```
//!
//! Without any of them it is the axum example: `pid=<pid>` on `GET /`.
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::{Router, extract::State, http::StatusCode, routing::get};

#[path = "support/logging.rs"]
mod logging;

struct Fault {
    every: u64,
    after: Duration,
    started: Instant,
    served: AtomicU64,
    healthz: u16,
}

fn env<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

async fn root(State(fault): State<Arc<Fault>>) -> (StatusCode, String) {
    let n = fault.served.fetch_add(1, Ordering::Relaxed) + 1;
    let failing = fault.every > 0 && fault.started.elapsed() >= fault.after;
    if failing && n % fault.every == 0 {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("pid={} failed\n", std::process::id()),
        );
    }
    (StatusCode::OK, format!("pid={}\n", std::process::id()))
}

async fn healthz(State(fault): State<Arc<Fault>>) -> (StatusCode, &'static str) {
    match StatusCode::from_u16(fault.healthz) {
        Ok(s) if !s.is_success() => (s, "db down\n"),
        _ => (StatusCode::OK, "ok\n"),
    }
}

#[hotexec::main(init = logging::init_tracing)]
#[listen("127.0.0.1:3001", name = "http")]
async fn main(listeners: hotexec::Listeners, shutdown: hotexec::Shutdown) -> std::io::Result<()> {
    let fault = Arc::new(Fault {
        every: env("FLAKY_500_EVERY").unwrap_or(0),
        after: Duration::from_millis(env("FLAKY_AFTER_MS").unwrap_or(0)),
        started: Instant::now(),
        served: AtomicU64::new(0),
        healthz: env("FLAKY_HEALTHZ").unwrap_or(200),
    });
    let app = Router::new()
        .route("/", get(root))
        .route("/healthz", get(healthz))
        .with_state(fault);
    let listener = listeners.take_tokio_tcp("http")?;
    tracing::info!(pid = std::process::id(), addr = %listener.local_addr()?, "axum_flaky serving");
    let serve = hotexec::serve(listener, app, shutdown);
    if std::env::var_os("FLAKY_PROBE").is_some_and(|v| v == "1") {
        serve.probe("GET /healthz").await
    } else {
        serve.await
    }
}
