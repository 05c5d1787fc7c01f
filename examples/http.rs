//! An HTTP server on tokio + hyper that upgrades without losing a request.
//!
//! ```text
//! HOTEXEC_PID_FILE=/tmp/http.pid cargo run --example http
//! curl 127.0.0.1:8080/              # pid=<serving pid>
//! curl '127.0.0.1:8080/slow?ms=3000' & kill -USR2 $(cat /tmp/http.pid)
//!                                   # the slow request finishes on the old pid; new ones go to the new pid
//! ```
//!
//! All hotexec asks of the server is in this file: take the listener, stop accepting when
//! `shutdown` resolves, and return once in-flight work is done. The server itself lives in
//! `support/http_server.rs` (shared with the `demo` and `bench` examples, which run it with and
//! without hotexec). Draining is graceful for keep-alive clients too: once shutdown resolves,
//! every response carries `Connection: close` for a short grace phase (`HTTP_CLOSE_GRACE`,
//! default 500ms), so busy clients leave at a request boundary and reconnect to the new process;
//! only then are the connections still idle closed.
//!
//! A second, localhost-only listener serves the admin endpoint (the `admin` module below):
//! `curl -X POST 127.0.0.1:8081/upgrade` upgrades and answers `upgraded: new pid N` (200), or
//! why it failed (500; the running process keeps serving).
#[path = "support/http_server.rs"]
mod http_server;

#[hotexec::main(drain_timeout = "30s", init = http_server::init_tracing)]
#[listen("127.0.0.1:8080", name = "http")]
#[listen("127.0.0.1:8081", name = "admin")]
async fn main(listeners: hotexec::Listeners, shutdown: hotexec::Shutdown) -> std::io::Result<()> {
    let listener = listeners.take_tokio_tcp("http")?;
    tracing::info!(pid = std::process::id(), addr = %listener.local_addr()?, "http example serving");
    let admin = admin::spawn(listeners.take_tokio_tcp("admin")?, shutdown.clone());
    let result = http_server::serve(listener, shutdown).await;
    // The `POST /upgrade` that replaced this process gets its answer before the process exits.
    admin.finish().await;
    result
}

/// The admin endpoint: `POST /upgrade` triggers an upgrade with [`hotexec::upgrade`] and answers
/// with its outcome. Bound to 127.0.0.1 only: whoever can reach it can replace the process.
mod admin {
    use std::convert::Infallible;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use bytes::Bytes;
    use http_body_util::Full;
    use hyper::body::Incoming;
    use hyper::server::conn::http1;
    use hyper::service::service_fn;
    use hyper::{Method, Request, Response, StatusCode};
    use hyper_util::rt::TokioIo;
    use tokio::net::TcpListener;
    use tokio::sync::Notify;

    /// Admin connections in progress.
    #[derive(Default)]
    pub struct Admin {
        open: AtomicUsize,
        idle: Notify,
    }

    /// Serves the admin listener until shutdown resolves.
    pub fn spawn(listener: TcpListener, shutdown: hotexec::Shutdown) -> Arc<Admin> {
        let admin = Arc::new(Admin::default());
        let a = admin.clone();
        tokio::spawn(async move {
            let mut shutdown = shutdown;
            loop {
                tokio::select! {
                    biased;
                    _ = &mut shutdown => break,
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        a.open.fetch_add(1, Ordering::SeqCst);
                        let a = a.clone();
                        tokio::spawn(async move {
                            let conn = http1::Builder::new()
                                .keep_alive(false)
                                .serve_connection(TokioIo::new(stream), service_fn(handle));
                            let _ = conn.await;
                            if a.open.fetch_sub(1, Ordering::SeqCst) == 1 {
                                a.idle.notify_waiters();
                            }
                        });
                    }
                }
            }
        });
        admin
    }

    impl Admin {
        /// Waits (up to 10 s) for the admin connections in progress to end.
        pub async fn finish(&self) {
            let idle = async {
                while self.open.load(Ordering::SeqCst) > 0 {
                    let notified = self.idle.notified();
                    if self.open.load(Ordering::SeqCst) == 0 {
                        break;
                    }
                    notified.await;
                }
            };
            let _ = tokio::time::timeout(Duration::from_secs(10), idle).await;
        }
    }

    async fn handle(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
        let (status, body) = match (req.method(), req.uri().path()) {
            (&Method::POST, "/upgrade") => {
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
