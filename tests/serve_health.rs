//! `hotexec::serve`, `serve_hyper` and `serve::connection` count what every request ended with
//! into the generation's health (`Shutdown::health()`), with no option from the app: the
//! status class, a panicking handler (caught, answered 500 on a connection that goes on), a
//! request the service failed, a connection that failed by the server's fault. In process,
//! with a detached `Shutdown`, over real sockets.

use std::convert::Infallible;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use axum::{Router, http::StatusCode, routing::get};
use hotexec::health::Counts;
use hotexec_testkit::prelude::*;

fn app() -> Router {
    Router::new()
        .route("/", get(|| async { "ok\n" }))
        .route("/created", get(|| async { (StatusCode::CREATED, "new\n") }))
        .route("/moved", get(|| async { (StatusCode::FOUND, "there\n") }))
        .route(
            "/boom",
            get(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "boom\n") }),
        )
        .route(
            "/unavailable",
            get(|| async { (StatusCode::SERVICE_UNAVAILABLE, "later\n") }),
        )
        .route(
            "/panic",
            get(|| async {
                if true {
                    panic!("handler panics on purpose");
                }
                "unreachable\n"
            }),
        )
}

/// One request on a keep-alive connection: the status, and whether the connection stays
/// usable (`None` if it failed: EOF or reset before a full response).
fn request(conn: &mut BufReader<TcpStream>, path: &str) -> Option<(u16, bool)> {
    let req = format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n");
    conn.get_mut().write_all(req.as_bytes()).ok()?;
    let mut status = String::new();
    if conn.read_line(&mut status).ok()? == 0 {
        return None;
    }
    let code: u16 = status.split(' ').nth(1)?.parse().ok()?;
    let (mut len, mut close) = (0usize, false);
    loop {
        let mut line = String::new();
        if conn.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let line = line.trim_end().to_ascii_lowercase();
        if line.is_empty() {
            break;
        }
        if let Some(v) = line.strip_prefix("content-length:") {
            len = v.trim().parse().ok()?;
        } else if line == "connection: close" {
            close = true;
        }
    }
    let mut body = vec![0; len];
    conn.read_exact(&mut body).ok()?;
    Some((code, !close))
}

fn connect(addr: SocketAddr) -> BufReader<TcpStream> {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    BufReader::new(s)
}

fn wait_counts(shutdown: &hotexec::Shutdown, what: &str, f: impl Fn(&Counts) -> bool) -> Counts {
    wait_for(Duration::from_secs(5), what, || {
        let c = shutdown.health().counts();
        f(&c).then_some(c)
    })
}

#[test]
fn serve_counts_every_response_by_class_and_survives_a_panic() {
    let rt = runtime();
    let shutdown = hotexec::Shutdown::detached(Duration::from_secs(5)).unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let server = rt.spawn(hotexec::serve(listener, app(), shutdown.clone()).into_future());
    // Counting from the start, before any request: an idle generation is judged as counting.
    wait_for(Duration::from_secs(5), "serve to start", || {
        shutdown.health().is_counting().then_some(())
    });
    assert_eq!(shutdown.health().counts(), Counts::default());

    let mut conn = connect(addr);
    let plan = [
        ("/", 200),
        ("/created", 201),
        ("/moved", 302),
        ("/nowhere", 404),
        ("/boom", 500),
        ("/unavailable", 503),
        ("/panic", 500),
        // The connection that saw the panic goes on serving.
        ("/", 200),
        ("/panic", 500),
        ("/", 200),
    ];
    for (path, want) in plan {
        let got = request(&mut conn, path);
        assert_eq!(got, Some((want, true)), "GET {path}");
    }
    drop(conn);
    let c = wait_counts(&shutdown, "the connection counted", |c| c.requests() == 10);
    assert_eq!(
        (
            c.success,
            c.redirection,
            c.client_error,
            c.server_error,
            c.panics,
            c.errors
        ),
        (4, 1, 1, 2, 2, 0),
        "{c}"
    );
    assert_eq!(c.bad(), 4);
    assert_eq!(c.connections, 1);
    assert_eq!(c.connections_failed, 0, "a client closing is not a failure");

    assert!(shutdown.resolve(hotexec::ShutdownReason::Stop { signal: 15 }));
    block_within(&rt, Duration::from_secs(30), "the server", server)
        .unwrap()
        .unwrap();
}

/// A hyper service whose handler fails (no answer: the connection is closed under the request)
/// or whose response body fails mid-stream.
#[test]
fn serve_hyper_counts_service_errors_and_failed_connections() {
    use bytes::Bytes;
    use http_body_util::{BodyExt, StreamBody};
    use hyper::body::Frame;

    type Body = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;
    async fn handle(
        req: hyper::Request<hyper::body::Incoming>,
    ) -> Result<hyper::Response<Body>, std::io::Error> {
        match req.uri().path() {
            "/fail" => Err(std::io::Error::other("the handler failed")),
            "/torn" => {
                let frames = tokio_stream::iter(vec![
                    Ok(Frame::data(Bytes::from_static(b"half"))),
                    Err(std::io::Error::other("the body failed")),
                ]);
                Ok(hyper::Response::new(StreamBody::new(frames).boxed()))
            }
            _ => Ok(hyper::Response::new(
                http_body_util::Full::new(Bytes::from_static(b"ok\n"))
                    .map_err(|e: Infallible| match e {})
                    .boxed(),
            )),
        }
    }
    let rt = runtime();
    let shutdown = hotexec::Shutdown::detached(Duration::from_secs(5)).unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let svc = hyper::service::service_fn(handle);
    let server = rt.spawn(hotexec::serve_hyper(listener, svc, shutdown.clone()).into_future());

    let mut ok = connect(addr);
    assert_eq!(request(&mut ok, "/"), Some((200, true)));
    // No answer: hyper closes the connection.
    let mut failing = connect(addr);
    assert_eq!(request(&mut failing, "/fail"), None);
    // The body fails after its first frame: the client never gets a complete response
    // (hyper closes the connection, with or without the head written).
    let mut torn = connect(addr);
    let mut rest = String::new();
    torn.get_mut()
        .write_all(b"GET /torn HTTP/1.1\r\nHost: test\r\n\r\n")
        .unwrap();
    let _ = torn.read_to_string(&mut rest);
    assert!(
        !rest.ends_with("0\r\n\r\n"),
        "a complete chunked response: {rest:?}"
    );
    drop(ok);
    let c = wait_counts(&shutdown, "three connections counted", |c| {
        c.connections == 3 && c.connections_failed == 2
    });
    assert_eq!((c.success, c.errors, c.panics), (2, 1, 0), "{c}");

    assert!(shutdown.resolve(hotexec::ShutdownReason::Stop { signal: 15 }));
    block_within(&rt, Duration::from_secs(30), "the server", server)
        .unwrap()
        .unwrap();
}

/// `serve::connection`, for apps that accept themselves: the same counting through the
/// `Connections` they drain with, and a client that goes away is not the server's fault.
#[test]
fn serve_connection_counts_into_the_shutdown_it_drains_with() {
    let rt = runtime();
    let shutdown = hotexec::Shutdown::detached(Duration::from_secs(5)).unwrap();
    let mut listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let s = shutdown.clone();
    let server = rt.spawn(async move {
        let conns = hotexec::drain::Connections::new(s);
        while let Some((tcp, _)) = conns.accept(&mut listener).await {
            let c = conns.clone();
            conns.spawn(async move {
                let _ = hotexec::serve::connection(tcp, app(), &c).await;
            });
        }
        conns.wait().await
    });
    let mut conn = connect(addr);
    for (path, want) in [("/", 200), ("/boom", 500), ("/panic", 500), ("/", 200)] {
        assert_eq!(request(&mut conn, path), Some((want, true)), "GET {path}");
    }
    // A client that sends half a request and leaves.
    let mut half = TcpStream::connect(addr).unwrap();
    half.write_all(b"GET / HTTP/1.1\r\nHost").unwrap();
    drop(half);
    drop(conn);
    let c = wait_counts(&shutdown, "two connections counted", |c| {
        c.connections == 2 && c.requests() == 4
    });
    assert_eq!((c.success, c.server_error, c.panics), (2, 1, 1), "{c}");
    // Give the torn connection's task time to end: still not a failure of the server.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(shutdown.health().counts().connections_failed, 0);

    assert!(shutdown.resolve(hotexec::ShutdownReason::Stop { signal: 15 }));
    assert_eq!(
        block_within(&rt, Duration::from_secs(30), "the server", server).unwrap(),
        0
    );
}

/// A server of its own (not on the facade) reports through the same handle, and a check of
/// the app's own vetoes in the report.
#[test]
fn own_servers_record_outcomes_and_checks_veto() {
    let shutdown = hotexec::Shutdown::detached(Duration::from_secs(5)).unwrap();
    let health = shutdown.health();
    assert!(!health.is_counting());
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let h = health.clone();
    let s = shutdown.clone();
    let server = std::thread::spawn(move || {
        while let Some((mut conn, _)) = s.accept(&listener).unwrap() {
            let mut buf = [0; 1024];
            let n = conn.read(&mut buf).unwrap_or(0);
            let ok = buf[..n].starts_with(b"GET / ");
            let status = if ok { 200 } else { 500 };
            let _ = write!(
                conn,
                "HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            h.record_response(status);
        }
    });
    for path in ["/", "/x", "/"] {
        let mut c = connect(addr);
        c.get_mut()
            .write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
            .unwrap();
        let mut out = String::new();
        let _ = c.read_to_string(&mut out);
    }
    let c = wait_counts(&shutdown, "three outcomes", |c| c.requests() == 3);
    assert_eq!((c.success, c.server_error), (2, 1));
    assert!(health.is_counting());
    health.add_check("cache", || Err("cache cold".into()));
    let report = health.report();
    assert_eq!(report.counts, c);
    assert!(report.counting);
    assert!(
        report
            .veto
            .as_deref()
            .is_some_and(|v| v.contains("cache cold")),
        "{report:?}"
    );
    shutdown.resolve(hotexec::ShutdownReason::Stop { signal: 15 });
    wait_for(Duration::from_secs(30), "the server thread to end", || {
        server.is_finished().then_some(())
    });
    server.join().unwrap();
}
