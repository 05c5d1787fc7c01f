//! The HTTP server of the `http` example, shared with the `demo` and `bench` examples so that
//! "with hotexec" and "without hotexec" run exactly the same request path.
//!
//! `GET /` answers `pid=<pid>\n`; `GET /slow?ms=N` sleeps N ms first.
//!
//! [`serve`] is the library's [`hotexec::serve_hyper`]: it accepts until `shutdown` resolves,
//! then drains gracefully, keep-alive clients included (a `Connection: close` grace phase, then
//! the idle connections are closed). Only the grace window is set here, from
//! `HTTP_CLOSE_GRACE` (default: the library's, 500ms), so tests and the benchmark can vary it.
#![allow(dead_code)]

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use tokio::net::TcpListener;

/// The grace phase: `HTTP_CLOSE_GRACE` (a hotexec duration such as `500ms`), default
/// [`hotexec::serve::DEFAULT_CLOSE_GRACE`].
pub fn close_grace() -> Duration {
    std::env::var("HTTP_CLOSE_GRACE")
        .ok()
        .and_then(|v| hotexec::parse_duration(&v).ok())
        .unwrap_or(hotexec::serve::DEFAULT_CLOSE_GRACE)
}

/// Serves `listener` until `shutdown` resolves, then stops accepting and drains; returns once
/// every connection has closed (or just before the drain deadline).
pub async fn serve(listener: TcpListener, shutdown: hotexec::Shutdown) -> std::io::Result<()> {
    hotexec::serve_hyper(listener, service_fn(handle), shutdown)
        .close_grace(close_grace())
        .await
}

async fn handle(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let pid = std::process::id();
    let resp = match req.uri().path() {
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
    Ok(resp)
}
