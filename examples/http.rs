//! An HTTP server on tokio + hyper that upgrades without losing a request.
//!
//! ```text
//! HOTEXEC_PID_FILE=/tmp/http.pid cargo run --example http
//! curl 127.0.0.1:8080/              # pid=<serving pid>
//! curl '127.0.0.1:8080/slow?ms=3000' & kill -USR2 $(cat /tmp/http.pid)
//!                                   # the slow request finishes on the old pid; new ones go to the new pid
//! ```
//!
//! All hotexec asks of the server is in this file: take the listener, and serve it with
//! `hotexec::serve_hyper(listener, service_fn(handle), shutdown)` (in `support/http_server.rs`,
//! shared with the `demo` and `bench` examples, which run it with and without hotexec). The
//! library stops accepting when `shutdown` resolves and returns once in-flight work is done.
//! Draining is graceful for keep-alive clients too: once shutdown resolves, every response
//! carries `Connection: close` for a short grace phase (`HTTP_CLOSE_GRACE`, default 500ms), so
//! busy clients leave at a request boundary and reconnect to the new process; only then are the
//! connections still idle closed.
//!
//! A second, localhost-only listener serves the admin endpoint (the `admin` module below):
//! `curl -X POST 127.0.0.1:8081/upgrade` upgrades and answers `upgraded: new pid N` (200), or
//! why it failed (500; the running process keeps serving).
use std::future::IntoFuture;

#[path = "support/http_server.rs"]
mod http_server;
#[path = "support/logging.rs"]
mod logging;

#[hotexec::main(drain_timeout = "30s", init = logging::init_tracing)]
#[listen("127.0.0.1:8080", name = "http")]
#[listen("127.0.0.1:8081", name = "admin")]
async fn main(listeners: hotexec::Listeners, shutdown: hotexec::Shutdown) -> std::io::Result<()> {
    let listener = listeners.take_tokio_tcp("http")?;
    tracing::info!(pid = std::process::id(), addr = %listener.local_addr()?, "http example serving");
    // The admin listener is served the same way, so the `POST /upgrade` that replaced this
    // process gets its answer before the process exits.
    let admin = hotexec::serve_hyper(
        listeners.take_tokio_tcp("admin")?,
        hyper::service::service_fn(admin::handle),
        shutdown.clone(),
    );
    let admin = tokio::spawn(admin.into_future());
    let result = http_server::serve(listener, shutdown).await;
    admin.await.map_err(std::io::Error::other)??;
    result
}

/// The admin endpoint: `POST /upgrade` triggers an upgrade with [`hotexec::upgrade`] and answers
/// with its outcome. Bound to 127.0.0.1 only: whoever can reach it can replace the process.
mod admin {
    use std::convert::Infallible;

    use bytes::Bytes;
    use http_body_util::Full;
    use hyper::body::Incoming;
    use hyper::{Method, Request, Response, StatusCode};

    pub async fn handle(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
        let (status, body) = match (req.method(), req.uri().path()) {
            (&Method::POST, "/upgrade") => {
                // `upgrade()` blocks until the new generation is committed or has failed.
                match tokio::task::spawn_blocking(hotexec::upgrade).await {
                    Ok(Ok(report)) => (
                        StatusCode::OK,
                        format!("upgraded: new pid {}\n", report.new_pid.unwrap_or_default()),
                    ),
                    Ok(Err(e)) => (
                        StatusCode::INTERNAL_SERVER_ERROR,
                        format!("upgrade failed: {e}\n"),
                    ),
                    Err(e) => (
                        StatusCode::INTERNAL_SERVER_ERROR,
                        format!("upgrade failed: {e}\n"),
                    ),
                }
            }
            (_, "/upgrade") => (
                StatusCode::METHOD_NOT_ALLOWED,
                "use POST /upgrade\n".to_string(),
            ),
            _ => (StatusCode::NOT_FOUND, "not found\n".to_string()),
        };
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        Ok(r)
    }
}
