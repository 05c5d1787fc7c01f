//! `hotexec::serve(..).probe("GET /healthz")`: a request through the app's own service before
//! the generation reports ready. In process, with a detached `Shutdown`: a passing probe lets
//! the server serve (and is not counted in its health); each way of failing makes `serve`
//! return an error naming the probe and what it got, before a single connection is accepted.

use std::future::IntoFuture;
use std::time::Duration;

use axum::{Router, http::StatusCode, routing::get};
use hotexec::serve::Probe;
use hotexec_testkit::prelude::*;

fn app() -> Router {
    Router::new()
        .route(
            "/",
            get(|| async { format!("pid={}\n", std::process::id()) }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/down",
            get(|| async { (StatusCode::SERVICE_UNAVAILABLE, "db down\n") }),
        )
        .route(
            "/panics",
            get(|| async {
                if true {
                    panic!("health check panics");
                }
                ""
            }),
        )
        .route("/big", get(|| async { "x".repeat(512 * 1024) }))
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                "late\n"
            }),
        )
}

/// Serves `app()` with `probe`; returns the address, the shutdown and the server's result
/// handle.
fn serve_with(
    rt: &tokio::runtime::Runtime,
    probe: impl TryInto<Probe, Error: std::fmt::Display> + Send + 'static,
) -> (
    std::net::SocketAddr,
    hotexec::Shutdown,
    tokio::task::JoinHandle<std::io::Result<()>>,
) {
    let shutdown = hotexec::Shutdown::detached(Duration::from_secs(5)).unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let serve = hotexec::serve(listener, app(), shutdown.clone()).probe(probe);
    (addr, shutdown, rt.spawn(serve.into_future()))
}

/// The error `serve` returned, within a deadline.
fn failure(
    rt: &tokio::runtime::Runtime,
    h: tokio::task::JoinHandle<std::io::Result<()>>,
) -> String {
    let r = rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(10), h).await })
        .expect("serve to give up within 10 s")
        .unwrap();
    r.expect_err("serve must fail").to_string()
}

#[test]
fn a_passing_probe_serves_and_is_not_counted() {
    let rt = runtime();
    let (addr, shutdown, server) = serve_with(&rt, "GET /healthz");
    assert_eq!(
        hotexec_testkit::client::get(addr, "/", Duration::from_secs(5)),
        Outcome::Ok {
            pid: std::process::id()
        }
    );
    let c = shutdown.health().counts();
    assert_eq!(
        (c.requests(), c.success),
        (1, 1),
        "the probe is not counted: {c}"
    );
    shutdown.resolve(hotexec::ShutdownReason::Stop { signal: 15 });
    block_within(&rt, Duration::from_secs(30), "the server", server)
        .unwrap()
        .unwrap();
}

#[test]
fn each_failing_probe_names_itself_and_what_it_got() {
    let rt = runtime();
    let cases: Vec<(Probe, &str)> = vec![
        (
            Probe::get("/down"),
            "probe GET /down answered 503 Service Unavailable: \"db down\": not reporting ready",
        ),
        (
            Probe::get("/nowhere"),
            "probe GET /nowhere answered 404 Not Found",
        ),
        (
            Probe::get("/panics"),
            "probe GET /panics panicked (answered 500)",
        ),
        (
            Probe::get("/slow").timeout(Duration::from_millis(300)),
            "probe GET /slow no answer within 300ms",
        ),
    ];
    for (probe, want) in cases {
        let (addr, shutdown, server) = serve_with(&rt, probe.clone());
        let e = failure(&rt, server);
        assert!(e.contains(want), "{probe:?}: {e}");
        // Nothing was accepted: the failed generation served no one, and its copy of the
        // listener is gone with it.
        assert_eq!(shutdown.health().counts().requests(), 0);
        assert_eq!(
            hotexec_testkit::client::get(addr, "/", Duration::from_secs(5)),
            Outcome::Refused
        );
    }
}

#[test]
fn a_probe_that_is_not_one_fails_at_once() {
    let rt = runtime();
    let (_, _, server) = serve_with(&rt, "healthz");
    let e = failure(&rt, server);
    assert!(e.contains("invalid probe \"healthz\""), "{e}");
}

/// A hyper service that fails the request (no response at all).
#[test]
fn a_service_error_fails_the_probe() {
    let rt = runtime();
    let shutdown = hotexec::Shutdown::detached(Duration::from_secs(5)).unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let svc = hyper::service::service_fn(|_req| async {
        Err::<hyper::Response<String>, _>(std::io::Error::other("backend unreachable"))
    });
    let server = rt.spawn(
        hotexec::serve_hyper(listener, svc, shutdown)
            .probe("GET /healthz")
            .into_future(),
    );
    let e = failure(&rt, server);
    assert!(e.contains("probe GET /healthz no response"), "{e}");
    assert!(e.contains("backend unreachable"), "{e}");
}

/// A health endpoint that answers 200 with a body larger than the probe reads (512 KiB): the
/// probe passes on the status line and the server serves. (Before, the probe's server end was
/// left writing into a full pipe the probe no longer read, and `serve` never started.)
#[test]
fn a_passing_probe_with_a_large_body_serves() {
    let rt = runtime();
    let (addr, shutdown, server) = serve_with(&rt, "GET /big");
    assert_eq!(
        hotexec_testkit::client::get(addr, "/", Duration::from_secs(10)),
        Outcome::Ok {
            pid: std::process::id()
        }
    );
    shutdown.resolve(hotexec::ShutdownReason::Stop { signal: 15 });
    rt.block_on(async { tokio::time::timeout(Duration::from_secs(10), server).await })
        .expect("serve to return within 10 s")
        .unwrap()
        .unwrap();
}
