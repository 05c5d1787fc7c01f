//! Metrics that survive upgrades: an axum app with a Prometheus exporter on `/metrics`, where
//! hotexec's own metrics (feature `metrics`) continue across generations, and the app carries
//! its own counter over with `Shutdown::carry` the same way.
//!
//! ```text
//! HOTEXEC_PID_FILE=/tmp/m.pid cargo run --example metrics
//! curl 127.0.0.1:3000/metrics          # hotexec_generation 1, hotexec_upgrades_total…
//! hotexec upgrade --pid-file /tmp/m.pid
//! curl 127.0.0.1:3000/metrics          # hotexec_generation 2, hotexec_upgrades_total{result="ok"} 1
//! ```
//!
//! The exporter's recorder is installed in `init`, before hotexec starts: hotexec publishes the
//! totals it took over from the previous generation at start, into whatever recorder is
//! installed then.
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::{Router, routing::get};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

#[path = "support/logging.rs"]
mod logging;

/// The exporter's handle, set in `init` (a `fn()` has nowhere else to put it).
static PROMETHEUS: OnceLock<PrometheusHandle> = OnceLock::new();

fn init() {
    logging::init_tracing();
    let recorder = PrometheusBuilder::new().build_recorder();
    let _ = PROMETHEUS.set(recorder.handle());
    if let Err(e) = metrics::set_global_recorder(recorder) {
        eprintln!("metrics example: no recorder: {e}");
    }
}

/// The app's own counter, carried to the next generation under this key.
const REQUESTS_KEY: &str = "metrics-example.requests";

#[hotexec::main(drain_timeout = "10s", init = init)]
#[listen("127.0.0.1:3000", name = "http")]
async fn main(listeners: hotexec::Listeners, shutdown: hotexec::Shutdown) -> std::io::Result<()> {
    // The total so far: what the previous generation carried, or 0 after a fresh start.
    let start = shutdown
        .inherited(REQUESTS_KEY)
        .and_then(|b| std::str::from_utf8(&b).ok()?.parse().ok())
        .unwrap_or(0u64);
    let requests = Arc::new(AtomicU64::new(start));
    metrics::counter!("app_requests_total").absolute(start);
    {
        let requests = requests.clone();
        shutdown.carry(REQUESTS_KEY, move || {
            requests.load(Ordering::SeqCst).to_string().into_bytes()
        });
    }
    let count = move || {
        let total = requests.fetch_add(1, Ordering::SeqCst) + 1;
        metrics::counter!("app_requests_total").absolute(total);
    };
    let root = {
        let count = count.clone();
        get(move || async move {
            count();
            format!("pid={}\n", std::process::id())
        })
    };
    let app = Router::new().route("/", root).route(
        "/metrics",
        get(|| async { PROMETHEUS.get().map(|h| h.render()).unwrap_or_default() }),
    );
    let listener = listeners.take_tokio_tcp("http")?;
    tracing::info!(pid = std::process::id(), addr = %listener.local_addr()?, "metrics example serving");
    hotexec::serve(listener, app, shutdown).await
}
