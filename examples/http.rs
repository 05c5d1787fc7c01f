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
#[path = "support/http_server.rs"]
mod http_server;

#[hotexec::main(drain_timeout = "30s", init = http_server::init_tracing)]
#[listen("127.0.0.1:8080", name = "http")]
async fn main(listeners: hotexec::Listeners, shutdown: hotexec::Shutdown) -> std::io::Result<()> {
    let listener = listeners.take_tokio_tcp("http")?;
    tracing::info!(pid = std::process::id(), addr = %listener.local_addr()?, "http example serving");
    http_server::serve(listener, shutdown).await
}
