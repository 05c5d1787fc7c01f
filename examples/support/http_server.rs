//! The HTTP server of the `http` example, shared with the `demo` and `bench` examples so that
//! "with hotexec" and "without hotexec" run exactly the same request path.
//!
//! `GET /` answers `pid=<pid>\n`; `GET /slow?ms=N` sleeps N ms first.
//!
//! [`serve`] accepts until `shutdown` resolves, then drains gracefully, keep-alive clients
//! included: every response carries `Connection: close` for a short grace phase
//! (`HTTP_CLOSE_GRACE`, default 500ms), so busy clients leave at a request boundary and reconnect
//! to the new process; only then are the connections still idle closed. Closing an idle
//! keep-alive connection at once would race with a request the client is sending on it (the
//! request would get EOF) — the loss nginx shows.
#![allow(dead_code)]

use std::convert::Infallible;
use std::future::Future;
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
use tokio::net::TcpListener;
use tokio::sync::Notify;

/// State shared by the connections of this process.
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

/// The grace phase: `HTTP_CLOSE_GRACE` (a hotexec duration such as `500ms`), default 500ms.
pub fn close_grace() -> Duration {
    std::env::var("HTTP_CLOSE_GRACE")
        .ok()
        .and_then(|v| hotexec::parse_duration(&v).ok())
        .unwrap_or(Duration::from_millis(500))
}

/// Serves `listener` until `shutdown` resolves, then stops accepting (drops this copy of the
/// listener: with hotexec the listening socket itself stays open for the new generation) and
/// drains; returns once every connection has closed.
pub async fn serve<S>(listener: TcpListener, shutdown: S) -> std::io::Result<()>
where
    S: Future,
    S::Output: std::fmt::Debug,
{
    let drain = Arc::new(Drain::default());
    tokio::pin!(shutdown);
    let reason = loop {
        tokio::select! {
            // Shutdown first: once a new generation is ready, this one accepts nothing more,
            // even when a connection is waiting at the same moment.
            biased;
            reason = &mut shutdown => break reason,
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => { tracing::warn!("accept: {e}"); continue }
                };
                let _ = stream.set_nodelay(true);
                drain.open.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve_conn(stream, drain.clone()));
            }
        }
    };
    drop(listener);
    let grace = close_grace();
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

async fn serve_conn(stream: tokio::net::TcpStream, drain: Arc<Drain>) {
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
            // Tests wait for this line to know the request is in this process.
            tracing::info!(pid, ms, "slow request in flight");
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

/// Installs a `tracing` subscriber on stderr (`RUST_LOG`, default `info`).
pub fn init_tracing() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
}
