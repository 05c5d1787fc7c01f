//! The `hotexec.example.Greeter` gRPC service of the `tonic` example, and its client for the
//! tests: the code `tonic-build` would generate from this `.proto`, written by hand so that
//! building needs no `protoc` and no build script:
//!
//! ```proto
//! syntax = "proto3";
//! package hotexec.example;
//!
//! service Greeter {
//!   // Answers `pid=<serving pid> hello <name>`.
//!   rpc SayHello (HelloRequest) returns (HelloReply);
//!   // Sends `count` replies, `interval_ms` apart, each from the serving pid.
//!   rpc SayHelloStream (HelloStreamRequest) returns (stream HelloReply);
//! }
//! message HelloRequest { string name = 1; }
//! message HelloStreamRequest { string name = 1; uint32 count = 2; uint32 interval_ms = 3; }
//! message HelloReply { string message = 1; uint32 pid = 2; uint32 seq = 3; }
//! ```
//!
//! The messages are `#[derive(prost::Message)]` structs; the server is a tower service
//! dispatching on the path to `tonic::server::Grpc` (so it goes into `tonic::service::Routes`
//! like any generated service); the client wraps `tonic::client::Grpc`.
#![allow(dead_code)]

use std::convert::Infallible;
use std::task::{Context, Poll};
use std::time::Duration;

use tonic::codegen::{Body, BoxFuture, BoxStream, Service, StdError, http};
use tonic::server::{NamedService, ServerStreamingService, UnaryService};
use tonic::{Request, Response, Status};
use tonic_prost::ProstCodec;

/// The service's full name (`package.Service`).
pub const SERVICE: &str = "hotexec.example.Greeter";
/// The path of `SayHello`.
pub const SAY_HELLO: &str = "/hotexec.example.Greeter/SayHello";
/// The path of `SayHelloStream`.
pub const SAY_HELLO_STREAM: &str = "/hotexec.example.Greeter/SayHelloStream";

/// Most replies one stream may ask for, and the longest pause between two: a request cannot
/// keep the server (and so an upgrade's drain) busy for long.
pub const MAX_COUNT: u32 = 1000;
pub const MAX_INTERVAL_MS: u32 = 10_000;

#[derive(Clone, PartialEq, prost::Message)]
pub struct HelloRequest {
    #[prost(string, tag = "1")]
    pub name: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct HelloStreamRequest {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(uint32, tag = "2")]
    pub count: u32,
    #[prost(uint32, tag = "3")]
    pub interval_ms: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct HelloReply {
    #[prost(string, tag = "1")]
    pub message: String,
    #[prost(uint32, tag = "2")]
    pub pid: u32,
    #[prost(uint32, tag = "3")]
    pub seq: u32,
}

fn reply(name: &str, seq: u32) -> HelloReply {
    let pid = std::process::id();
    HelloReply {
        message: format!("pid={pid} hello {name}"),
        pid,
        seq,
    }
}

/// The server: `tonic::service::Routes::new(GreeterServer)`.
#[derive(Clone, Copy, Debug, Default)]
pub struct GreeterServer;

impl NamedService for GreeterServer {
    const NAME: &'static str = SERVICE;
}

struct SayHello;

impl UnaryService<HelloRequest> for SayHello {
    type Response = HelloReply;
    type Future = BoxFuture<Response<HelloReply>, Status>;

    fn call(&mut self, request: Request<HelloRequest>) -> Self::Future {
        Box::pin(async move { Ok(Response::new(reply(&request.into_inner().name, 0))) })
    }
}

struct SayHelloStream;

impl ServerStreamingService<HelloStreamRequest> for SayHelloStream {
    type Response = HelloReply;
    type ResponseStream = BoxStream<HelloReply>;
    type Future = BoxFuture<Response<Self::ResponseStream>, Status>;

    fn call(&mut self, request: Request<HelloStreamRequest>) -> Self::Future {
        Box::pin(async move {
            let HelloStreamRequest {
                name,
                count,
                interval_ms,
            } = request.into_inner();
            if count > MAX_COUNT || interval_ms > MAX_INTERVAL_MS {
                return Err(Status::invalid_argument(format!(
                    "count {count} (at most {MAX_COUNT}) or interval_ms {interval_ms} \
                     (at most {MAX_INTERVAL_MS}) too large"
                )));
            }
            let interval = Duration::from_millis(interval_ms.into());
            let stream = async_stream(count, move |seq| {
                let name = name.clone();
                async move {
                    if seq > 0 {
                        tokio::time::sleep(interval).await;
                    }
                    Ok(reply(&name, seq))
                }
            });
            Ok(Response::new(stream))
        })
    }
}

/// `count` items, the `seq`-th made by `f(seq)`, one after the other.
fn async_stream<F, Fut>(count: u32, f: F) -> BoxStream<HelloReply>
where
    F: Fn(u32) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<HelloReply, Status>> + Send + 'static,
{
    use tokio_stream::StreamExt;
    Box::pin(tokio_stream::iter(0..count).then(f))
}

impl<B> Service<http::Request<B>> for GreeterServer
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        match req.uri().path() {
            SAY_HELLO => Box::pin(async move {
                let mut grpc = tonic::server::Grpc::new(ProstCodec::default());
                Ok(grpc.unary(SayHello, req).await)
            }),
            SAY_HELLO_STREAM => Box::pin(async move {
                let mut grpc = tonic::server::Grpc::new(ProstCodec::default());
                Ok(grpc.server_streaming(SayHelloStream, req).await)
            }),
            _ => Box::pin(async move { Ok(Status::unimplemented("").into_http()) }),
        }
    }
}

/// The client: one HTTP/2 connection (a tonic `Channel`), reconnecting as needed.
#[derive(Clone, Debug)]
pub struct GreeterClient {
    inner: tonic::client::Grpc<tonic::transport::Channel>,
}

impl GreeterClient {
    /// A client of `http://{addr}` that connects on its first call (and again whenever the
    /// server closed the connection, as after a `GOAWAY`).
    pub fn lazy(addr: std::net::SocketAddr) -> GreeterClient {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .expect("a valid URI")
            .connect_timeout(Duration::from_secs(5))
            .connect_lazy();
        GreeterClient {
            inner: tonic::client::Grpc::new(channel),
        }
    }

    pub async fn say_hello(&mut self, name: &str) -> Result<HelloReply, Status> {
        self.ready().await?;
        let req = Request::new(HelloRequest { name: name.into() });
        let path = http::uri::PathAndQuery::from_static(SAY_HELLO);
        let codec = ProstCodec::<HelloRequest, HelloReply>::default();
        Ok(self.inner.unary(req, path, codec).await?.into_inner())
    }

    pub async fn say_hello_stream(
        &mut self,
        name: &str,
        count: u32,
        interval_ms: u32,
    ) -> Result<tonic::Streaming<HelloReply>, Status> {
        self.ready().await?;
        let req = Request::new(HelloStreamRequest {
            name: name.into(),
            count,
            interval_ms,
        });
        let path = http::uri::PathAndQuery::from_static(SAY_HELLO_STREAM);
        let codec = ProstCodec::<HelloStreamRequest, HelloReply>::default();
        Ok(self
            .inner
            .server_streaming(req, path, codec)
            .await?
            .into_inner())
    }

    async fn ready(&mut self) -> Result<(), Status> {
        self.inner
            .ready()
            .await
            .map_err(|e| Status::unavailable(format!("service was not ready: {e}")))
    }
}
