//! An axum app served over TLS (rustls) through hotexec: HTTP/1.1 and HTTP/2 by ALPN, the
//! same lossless drain as plaintext, session tickets that still resume after an upgrade, and
//! the certificate re-read by each generation (an upgrade with the same binary is a
//! certificate reload).
//!
//! ```text
//! openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
//!     -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
//!     -keyout /tmp/key.pem -out /tmp/cert.pem
//! TLS_CERT=/tmp/cert.pem TLS_KEY=/tmp/key.pem HOTEXEC_PID_FILE=/tmp/tls.pid cargo run --example tls
//! curl -k https://127.0.0.1:8443/             # pid=<serving pid> (HTTP/2 by ALPN)
//! openssl s_client -connect 127.0.0.1:8443 -tls1_3 -sess_out /tmp/s </dev/null
//! kill -USR2 $(cat /tmp/tls.pid)               # or: hotexec upgrade --pid-file /tmp/tls.pid
//! openssl s_client -connect 127.0.0.1:8443 -tls1_3 -sess_in /tmp/s </dev/null | grep Reused
//! ```
//!
//! Environment: `HOTEXEC_LISTEN_HTTPS` (the listener, default `127.0.0.1:8443`), `TLS_CERT`
//! and `TLS_KEY` (PEM paths, required), `TLS_TICKET_ROTATION` (session-ticket key rotation
//! period, default `6h`), `TLS_HANDSHAKE_TIMEOUT` (default `10s`), `TLS_CARRY_TICKET_KEYS=0`
//! (each generation makes its own ticket keys: for comparisons).
//!
//! Routes: `GET /` → `pid=<pid>`; `GET /slow?ms=N`; `GET /stats` → this generation's handshake
//! counts (`pid=<pid> full=… resumed=… failed=… timed_out=… inherited=…`).
#[path = "support/logging.rs"]
mod logging;

use std::time::Duration;

use axum::{Router, extract::State, http::Uri, routing::get};
use hotexec::tls::TlsConfig;

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

/// `GET /stats`: this generation's TLS handshakes.
async fn stats(State(tls): State<TlsConfig>) -> String {
    let s = tls.stats();
    format!(
        "pid={} full={} resumed={} failed={} timed_out={} inherited={}\n",
        std::process::id(),
        s.full,
        s.resumed,
        s.failed,
        s.timed_out,
        tls.tickets_inherited()
    )
}

/// A required path from the environment, or an error naming the variable.
fn path_var(name: &str) -> std::io::Result<String> {
    std::env::var(name).map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{name} is not set: the PEM file's path (see examples/tls.rs)"),
        )
    })
}

/// An optional duration from the environment (`500ms`, `2s`, `6h`).
fn duration_var(name: &str) -> std::io::Result<Option<Duration>> {
    match std::env::var(name) {
        Err(_) => Ok(None),
        Ok(v) => hotexec::parse_duration(&v).map(Some).map_err(|e| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{name}: {e}"))
        }),
    }
}

#[hotexec::main(drain_timeout = "30s", init = logging::init_tracing)]
#[listen("127.0.0.1:8443", name = "https")]
async fn main(listeners: hotexec::Listeners, shutdown: hotexec::Shutdown) -> std::io::Result<()> {
    // Read by every generation at its start: a renewed certificate is picked up by an
    // upgrade, and a bad one fails the new generation before it reports ready.
    let mut tls = TlsConfig::from_pem_files(path_var("TLS_CERT")?, path_var("TLS_KEY")?)?;
    if let Some(period) = duration_var("TLS_TICKET_ROTATION")? {
        tls = tls.ticket_rotation(period)?;
    }
    if let Some(timeout) = duration_var("TLS_HANDSHAKE_TIMEOUT")? {
        tls = tls.handshake_timeout(timeout);
    }
    if std::env::var_os("TLS_CARRY_TICKET_KEYS").is_some_and(|v| v == "0") {
        tls = tls.carry_ticket_keys(false);
    }

    let app = Router::new()
        .route("/", get(root))
        .route("/slow", get(slow))
        .route("/stats", get(stats))
        .with_state(tls.clone());
    let listener = listeners.take_tokio_tcp("https")?;
    tracing::info!(pid = std::process::id(), addr = %listener.local_addr()?, "tls example serving");
    hotexec::serve(listener, app, shutdown).tls(tls).await
}
