//! An HTTP server on tokio + hyper that upgrades without losing a request.
//!
//! ```text
//! HOTEXEC_PID_FILE=/tmp/http.pid cargo run --example http
//! curl 127.0.0.1:8080/              # pid=<serving pid>
//! curl '127.0.0.1:8080/slow?ms=3000' & kill -USR2 $(cat /tmp/http.pid)
//!                                   # the slow request finishes on the old pid; new ones go to the new pid
//! ```
//!
//! A second, localhost-only listener serves the admin endpoint: `curl -X POST
//! 127.0.0.1:8081/upgrade` upgrades and answers `upgraded: new pid N` (200) or why it failed
//! (500, the old process keeps serving). See the `admin` module.
//!
//! Draining is graceful for keep-alive clients too: once shutdown resolves, every response
//! carries `Connection: close` for a short grace phase (`HTTP_CLOSE_GRACE`, default 500ms), so
//! busy clients leave at a request boundary and reconnect to the new process; only then are the
//! connections still idle closed. Closing an idle keep-alive connection at once would race with a
//! request the client is sending on it (the request would get EOF) — the loss nginx shows.
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONNECTION, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::sync::Notify;

/// State shared by the connections of this generation.
#[derive(Default)]
struct Drain {
    /// Set when shutdown resolved: responses say `Connection: close`.
    draining: AtomicBool,
    /// Wakes connections when idle ones must close.
    close_idle: Notify,
    /// Open connections, and a wake-up when the last one ends.
    open: AtomicUsize,
    all_closed: Notify,
}

fn init_tracing() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
}

#[hotexec::main(drain_timeout = "30s", init = init_tracing)]
#[listen("127.0.0.1:8080", name = "http")]
#[listen("127.0.0.1:8081", name = "admin")]
async fn main(listeners: hotexec::Listeners, shutdown: hotexec::Shutdown) -> std::io::Result<()> {
    let listener = listeners.take_tokio_tcp("http")?;
    tracing::info!(pid = std::process::id(), addr = %listener.local_addr()?, "http example serving");
    let drain = Arc::new(Drain::default());
    admin::spawn(
        listeners.take_tokio_tcp("admin")?,
        shutdown.clone(),
        drain.clone(),
    );
    let mut shutdown = shutdown;
    let reason = loop {
        tokio::select! {
            reason = &mut shutdown => break reason,
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => { tracing::warn!("accept: {e}"); continue }
                };
                let _ = stream.set_nodelay(true);
                drain.open.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(stream, drain.clone()));
            }
        }
    };
    // Stop accepting: the listening socket stays open in the runtime for the new generation.
    drop(listener);
    let grace = std::env::var("HTTP_CLOSE_GRACE")
        .ok()
        .and_then(|v| hotexec::parse_duration(&v).ok())
        .unwrap_or(Duration::from_millis(500));
    tracing::info!(
        ?reason,
        open = drain.open.load(Ordering::SeqCst),
        ?grace,
        "draining"
    );
    drain.draining.store(true, Ordering::SeqCst);
    let all_closed = async {
        while drain.open.load(Ordering::SeqCst) > 0 {
            let notified = drain.all_closed.notified();
            if drain.open.load(Ordering::SeqCst) == 0 {
                break;
            }
            notified.await;
        }
    };
    tokio::pin!(all_closed);
    if tokio::time::timeout(grace, &mut all_closed).await.is_err() {
        drain.close_idle.notify_waiters();
        all_closed.await;
    }
    tracing::info!("drained");
    Ok(())
}

async fn serve(stream: tokio::net::TcpStream, drain: Arc<Drain>) {
    let d = drain.clone();
    let service = service_fn(move |req| handle(req, d.clone()));
    let conn = http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let close_idle = drain.close_idle.notified();
    tokio::pin!(close_idle);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = &mut close_idle => {
            // Closes the connection if idle, or after the response in progress.
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
    if drain.open.fetch_sub(1, Ordering::SeqCst) == 1 {
        drain.all_closed.notify_waiters();
    }
}

async fn handle(
    req: Request<Incoming>,
    drain: Arc<Drain>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let pid = std::process::id();
    let mut resp = match req.uri().path() {
        "/" => Response::new(Full::new(Bytes::from(format!("pid={pid}\n")))),
        "/slow" => {
            let ms: u64 = req
                .uri()
                .query()
                .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("ms=")))
                .and_then(|v| v.parse().ok())
                .unwrap_or(1000);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Response::new(Full::new(Bytes::from(format!("pid={pid} slept_ms={ms}\n"))))
        }
        _ => {
            let mut r = Response::new(Full::new(Bytes::from_static(b"not found\n")));
            *r.status_mut() = StatusCode::NOT_FOUND;
            r
        }
    };
    if drain.draining.load(Ordering::SeqCst) {
        resp.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    Ok(resp)
}

/// The admin endpoint: `POST /upgrade` triggers an upgrade with [`hotexec::upgrade`] and answers
/// with its outcome. Bound to 127.0.0.1 only: whoever can reach it can replace the process.
mod admin {
    use super::*;

    /// Serves the admin listener until shutdown. Its connections count in `drain.open`, so the
    /// old generation answers the `POST /upgrade` that replaced it before it exits.
    pub fn spawn(
        listener: tokio::net::TcpListener,
        shutdown: hotexec::Shutdown,
        drain: Arc<Drain>,
    ) {
        tokio::spawn(async move {
            let mut shutdown = shutdown;
            loop {
                tokio::select! {
                    _ = &mut shutdown => break,
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        drain.open.fetch_add(1, Ordering::SeqCst);
                        let d = drain.clone();
                        tokio::spawn(async move {
                            let conn = http1::Builder::new()
                                .keep_alive(false)
                                .serve_connection(TokioIo::new(stream), service_fn(handle));
                            let _ = conn.await;
                            if d.open.fetch_sub(1, Ordering::SeqCst) == 1 {
                                d.all_closed.notify_waiters();
                            }
                        });
                    }
                }
            }
        });
    }

    async fn handle(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
        let (status, body) = match (req.method(), req.uri().path()) {
            (&hyper::Method::POST, "/upgrade") => {
                // `upgrade()` blocks until the new generation is ready or has failed.
                match tokio::task::spawn_blocking(hotexec::upgrade).await {
                    Ok(Ok(pid)) => (StatusCode::OK, format!("upgraded: new pid {pid}\n")),
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
