//! The connection-level entry, `hotexec::serve::connection`, for apps that accept (and
//! terminate TLS) themselves: served through an accept loop of the app's own on
//! `hotexec::drain::Connections`, a connection drains as under `hotexec::serve`. In process,
//! with a detached `Shutdown` resolved by the test (no upgrade needed to check the phases).

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::{Router, routing::get};
use hotexec_testkit::prelude::*;

// Long enough that the requests sent after the hand-over fall inside it on a loaded machine.
const GRACE: Duration = Duration::from_millis(1500);

/// The app's own accept loop (where a TLS handshake would go), on a runtime of its own.
fn start_server(
    rt: &tokio::runtime::Runtime,
    shutdown: hotexec::Shutdown,
) -> (SocketAddr, tokio::task::JoinHandle<usize>) {
    let mut listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new()
        .route(
            "/",
            get(|| async { format!("pid={}\n", std::process::id()) }),
        )
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(300)).await;
                format!("pid={} slow\n", std::process::id())
            }),
        );
    let server = rt.spawn(async move {
        let conns = hotexec::drain::Connections::with_close_grace(shutdown, GRACE);
        while let Some((tcp, _peer)) = conns.accept(&mut listener).await {
            let (app, c) = (app.clone(), conns.clone());
            conns.spawn(async move {
                // e.g. `let tls = acceptor.accept(tcp).await?;` first
                let _ = hotexec::serve::connection(tcp, app, &c).await;
            });
        }
        conns.wait().await
    });
    (addr, server)
}

fn connect(addr: SocketAddr) -> std::io::BufReader<TcpStream> {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    std::io::BufReader::new(s)
}

/// Reads until EOF; true if the peer closed cleanly (no reset, nothing more sent).
fn closed_cleanly(c: &mut std::io::BufReader<TcpStream>) -> bool {
    let mut rest = Vec::new();
    matches!(c.read_to_end(&mut rest), Ok(0))
}

#[test]
fn own_accept_loop_drains_http1_connections_like_serve() {
    let rt = runtime();
    let shutdown = hotexec::Shutdown::detached(Duration::from_secs(10)).unwrap();
    let (addr, server) = start_server(&rt, shutdown.clone());
    let me = std::process::id();
    let t = Duration::from_secs(5);

    // A keep-alive client, served before the hand-over: its connection is kept.
    let mut busy = None;
    assert_eq!(
        get_keepalive(&mut busy, addr, "/", t),
        (Outcome::Ok { pid: me }, false)
    );
    assert!(busy.is_some(), "kept alive before the hand-over");
    // Connected before the hand-over, request sent only after it.
    let mut late = Some(connect(addr));
    // Connected before the hand-over and never sending anything.
    let mut idle = connect(addr);
    // The same for the request in flight at the hand-over.
    let mut slow = None;
    assert_eq!(
        get_keepalive(&mut slow, addr, "/", t).0,
        Outcome::Ok { pid: me }
    );
    let slow = std::thread::spawn(move || {
        let r = get_keepalive(&mut slow, addr, "/slow", t);
        (r, slow.is_none())
    });
    std::thread::sleep(Duration::from_millis(100));

    assert!(shutdown.resolve(hotexec::ShutdownReason::Upgrade { new_pid: 1 }));

    // Each answered, with `Connection: close` (the helper then drops the connection).
    assert_eq!(
        get_keepalive(&mut busy, addr, "/", t),
        (Outcome::Ok { pid: me }, true)
    );
    assert!(
        busy.is_none(),
        "the response after the hand-over said Connection: close"
    );
    assert_eq!(
        get_keepalive(&mut late, addr, "/", t),
        (Outcome::Ok { pid: me }, true)
    );
    assert!(late.is_none(), "Connection: close");
    let ((slow_outcome, reused), slow_closed) = slow.join().unwrap();
    assert_eq!((slow_outcome, reused), (Outcome::Ok { pid: me }, true));
    assert!(slow_closed, "the slow response said Connection: close");
    // The idle one is closed once the grace window is over, without a reset.
    assert!(
        closed_cleanly(&mut idle),
        "idle connection closed at the end of the grace"
    );
    // Nothing was left for the deadline.
    let left = rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(10), server).await })
        .expect("the drain did not end")
        .unwrap();
    assert_eq!(left, 0);
}

#[test]
fn own_accept_loop_sends_http2_clients_a_goaway_and_finishes_their_streams() {
    let rt = runtime();
    let shutdown = hotexec::Shutdown::detached(Duration::from_secs(10)).unwrap();
    let (addr, server) = start_server(&rt, shutdown.clone());
    let me = std::process::id();
    rt.block_on(within(async move {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (client, conn) = h2::client::handshake(tcp).await.unwrap();
        let driver = tokio::spawn(conn);
        let mut client = client.ready().await.unwrap();
        let get = |path: &str| {
            hyper::Request::get(format!("http://{addr}{path}"))
                .body(())
                .unwrap()
        };
        async fn body(r: h2::client::ResponseFuture) -> String {
            let resp = r.await.expect("response");
            assert_eq!(resp.status(), 200);
            let mut b = resp.into_body();
            let mut text = Vec::new();
            while let Some(c) = b.data().await {
                let c = c.expect("body");
                let _ = b.flow_control().release_capacity(c.len());
                text.extend_from_slice(&c);
            }
            String::from_utf8(text).unwrap()
        }
        let (first, _) = client.send_request(get("/"), true).unwrap();
        assert_eq!(body(first).await, format!("pid={me}\n"));
        // A stream in flight at the hand-over.
        let (slow, _) = client.send_request(get("/slow"), true).unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(shutdown.resolve(hotexec::ShutdownReason::Upgrade { new_pid: 1 }));
        assert_eq!(
            body(slow).await,
            format!("pid={me} slow\n"),
            "the open stream finished"
        );
        // GOAWAY received: the client opens no new stream on this connection, and the server
        // closes it (the connection future ends without error).
        tokio::time::timeout(Duration::from_secs(5), driver)
            .await
            .expect("the server closed the HTTP/2 connection")
            .unwrap()
            .expect("closed gracefully");
        assert!(client.send_request(get("/"), true).is_err());
        let left = tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("the drain did not end")
            .unwrap();
        assert_eq!(left, 0);
    }));
}

/// Every wait of an async scenario under one deadline.
async fn within<F: std::future::Future<Output = ()>>(scenario: F) {
    tokio::time::timeout(Duration::from_secs(60), scenario)
        .await
        .expect("the scenario did not finish within 60 s");
}

#[test]
fn detached_shutdown_resolves_once_and_only_by_its_owner() {
    let s = hotexec::Shutdown::detached(Duration::from_secs(3)).unwrap();
    assert!(s.drain_deadline().is_none());
    assert!(s.resolve(hotexec::ShutdownReason::Stop { signal: 15 }));
    assert!(
        !s.resolve(hotexec::ShutdownReason::Stop { signal: 15 }),
        "only once"
    );
    assert_eq!(
        s.reason(),
        Some(hotexec::ShutdownReason::Stop { signal: 15 })
    );
    assert_eq!(s.drain_timeout(), Duration::from_secs(3));
    assert!(s.drain_deadline().is_some());
}

/// Shutdown wins over a connection waiting at the same moment: once it has resolved,
/// `accept` returns `None` although the listener has a connection ready (it stays queued for
/// the new generation), and a connection task spawned before is waited for.
#[test]
fn accept_stops_exactly_at_the_hand_over_even_with_a_connectionwaiting() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(within(async {
        let shutdown = hotexec::Shutdown::detached(Duration::from_secs(10)).unwrap();
        let mut listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns = hotexec::drain::Connections::new(shutdown.clone());
        let first = TcpStream::connect(addr).unwrap();
        let (served, _) = conns.accept(&mut listener).await.expect("accepted before");
        let done = Arc::new(AtomicBool::new(false));
        let d = done.clone();
        conns.spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            drop(served);
            d.store(true, Ordering::SeqCst);
        });
        // Queued in the backlog, ready to be accepted...
        let waiting = TcpStream::connect(addr).unwrap();
        assert!(shutdown.resolve(hotexec::ShutdownReason::Upgrade { new_pid: 1 }));
        // ...but the hand-over came first.
        assert!(conns.accept(&mut listener).await.is_none());
        assert!(conns.is_draining());
        assert_eq!(conns.wait().await, 0);
        assert!(
            done.load(Ordering::SeqCst),
            "wait returned before the task ended"
        );
        // The waiting connection is still there for whoever accepts next (the new generation).
        let (_, peer) = listener.accept().await.unwrap();
        assert_eq!(peer.port(), waiting.local_addr().unwrap().port());
        drop(first);
    }));
}
