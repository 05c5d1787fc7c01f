//! A tonic gRPC server that upgrades without losing a call: tonic's `Routes` are a tower
//! service, so the one hotexec line is `hotexec::serve(listener, routes, shutdown)` in place of
//! `Server::builder().add_routes(routes).serve_with_incoming_shutdown(..)`.
//!
//! The service (`hotexec.example.Greeter`, examples/support/grpc.rs) has a unary RPC,
//! `SayHello`, answering `pid=<serving pid> hello <name>`, and a server-streaming one,
//! `SayHelloStream`, sending `count` replies `interval_ms` apart, each carrying the serving pid.
//!
//! ```text
//! HOTEXEC_PID_FILE=/tmp/grpc.pid cargo run --example tonic
//! grpcurl -plaintext -d '{"name":"a"}' 127.0.0.1:50051 hotexec.example.Greeter/SayHello
//!     # (no reflection: give grpcurl the .proto from examples/support/grpc.rs with -proto)
//! kill -USR2 $(cat /tmp/grpc.pid)   # streams in flight finish on the old pid, new calls go to the new one
//! ```
//!
//! `TONIC_PLAIN_SHUTDOWN=1` serves with tonic's own graceful shutdown instead
//! (`serve_with_incoming_shutdown`), so that tests can show what the integration changes.
#[path = "support/grpc.rs"]
mod grpc;
#[path = "support/logging.rs"]
mod logging;

use tonic::service::Routes;

#[hotexec::main(drain_timeout = "30s", init = logging::init_tracing)]
#[listen("127.0.0.1:50051", name = "grpc")]
async fn main(listeners: hotexec::Listeners, shutdown: hotexec::Shutdown) -> std::io::Result<()> {
    let routes = Routes::new(grpc::GreeterServer);
    let listener = listeners.take_tokio_tcp("grpc")?;
    tracing::info!(pid = std::process::id(), addr = %listener.local_addr()?, "tonic example serving");

    if std::env::var_os("TONIC_PLAIN_SHUTDOWN").is_some_and(|v| v == "1") {
        tracing::warn!(
            "TONIC_PLAIN_SHUTDOWN=1: tonic's own graceful shutdown, not hotexec's drain"
        );
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        return tonic::transport::Server::builder()
            .add_routes(routes)
            .serve_with_incoming_shutdown(incoming, async move {
                shutdown.await;
            })
            .await
            .map_err(std::io::Error::other);
    }
    // gRPC is HTTP/2 only, as tonic's own server is by default.
    hotexec::serve(listener, routes, shutdown)
        .http2_only()
        .await
}
