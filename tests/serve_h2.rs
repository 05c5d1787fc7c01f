//! HTTP/2 clients of the axum example (h2c, prior knowledge, hyper's client) lose no request
//! across upgrades: clients that keep a connection and run several streams on it, opening a
//! new connection once the server sent the old one away (`GOAWAY`), and clients that open a
//! new connection per request. Every request counted.
//!
//! `HOTEXEC_COMPARE_PLAIN=1 cargo test --test serve_h2 -- --nocapture` runs the same scenarios
//! against the example's plain mode (`axum::serve(..).with_graceful_shutdown(..)`) and prints
//! what it loses instead of asserting zero.
mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};

use common::*;

const HTTP: &str = "HOTEXEC_LISTEN_HTTP";
const UPGRADES: usize = 4;
/// Connections kept by the keep-connection clients, and the streams each runs at once.
const CONNS: usize = 4;
const STREAMS_PER_CONN: usize = 4;
/// Clients opening a new connection per request.
const FRESH: usize = 8;
/// One request's limit (longer counts as failed, `Timeout`).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

type Sender = SendRequest<Empty<Bytes>>;

fn start_axum() -> App {
    if compare_plain() {
        App::start("axum", HTTP, &[("AXUM_PLAIN_SHUTDOWN", "1")])
    } else {
        App::start("axum", HTTP, &[])
    }
}

/// A new h2c connection (prior knowledge), its driver spawned.
async fn connect(addr: SocketAddr) -> Result<Sender, Outcome> {
    let tcp =
        match tokio::time::timeout(REQUEST_TIMEOUT, tokio::net::TcpStream::connect(addr)).await {
            Err(_) => return Err(Outcome::Timeout),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                return Err(Outcome::Refused);
            }
            Ok(Err(e)) => return Err(Outcome::Other(format!("connect: {e}"))),
            Ok(Ok(s)) => s,
        };
    tcp.set_nodelay(true).unwrap();
    let handshake = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp));
    match tokio::time::timeout(REQUEST_TIMEOUT, handshake).await {
        Err(_) => Err(Outcome::Timeout),
        Ok(Err(e)) => Err(classify(&e)),
        Ok(Ok((sender, conn))) => {
            tokio::spawn(conn);
            Ok(sender)
        }
    }
}

/// True when the protocol proves the request never reached the server's application, so a
/// client may send it again (as hyper-util's pooled client and gRPC's clients do): it never
/// left this client (hyper: canceled), or the server refused its stream unprocessed, above the
/// last stream id of its `GOAWAY` (RFC 9113 §6.8). hyper's h2 client keeps opening streams
/// after the first, announcing `GOAWAY` of a graceful shutdown, until the final one arrives.
fn unprocessed(e: &hyper::Error) -> bool {
    if e.is_canceled() {
        return true;
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(h2) = s.downcast_ref::<h2::Error>() {
            return h2.is_go_away() && h2.is_remote() && h2.reason() == Some(h2::Reason::NO_ERROR);
        }
        source = s.source();
    }
    false
}

/// A failed request by class: a reset stream or connection, an EOF, or what hyper said.
fn classify(e: &hyper::Error) -> Outcome {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(h2) = s.downcast_ref::<h2::Error>() {
            if h2.is_reset() {
                return Outcome::Reset;
            }
            if let Some(io) = h2.get_io() {
                return match io.kind() {
                    std::io::ErrorKind::UnexpectedEof => Outcome::Eof,
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe => {
                        Outcome::Reset
                    }
                    _ => Outcome::Other(format!("{e}: {io}")),
                };
            }
            return Outcome::Other(format!("{e}: {h2}"));
        }
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return match io.kind() {
                std::io::ErrorKind::UnexpectedEof => Outcome::Eof,
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe => {
                    Outcome::Reset
                }
                _ => Outcome::Other(format!("{e}: {io}")),
            };
        }
        source = s.source();
    }
    if e.is_incomplete_message() {
        return Outcome::Eof;
    }
    Outcome::Other(e.to_string())
}

/// How one attempt ended: an outcome, or "send it again" (the server never processed it).
enum Attempt {
    Done(Outcome),
    Again,
}

async fn attempt(sender: &mut Sender, addr: SocketAddr) -> Attempt {
    if sender.ready().await.is_err() {
        // The connection is gone (the server closed it after its GOAWAY): nothing was sent.
        return Attempt::Again;
    }
    let req = Request::get(format!("http://{addr}/"))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let exchange = async {
        let resp = match sender.try_send_request(req).await {
            Ok(r) => r,
            Err(e) if e.message().is_some() => return Attempt::Again,
            Err(e) if unprocessed(e.error()) => return Attempt::Again,
            Err(e) => return Attempt::Done(classify(&e.into_error())),
        };
        if resp.status() != 200 {
            return Attempt::Done(Outcome::BadStatus(resp.status().to_string()));
        }
        let body = match resp.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => return Attempt::Done(classify(&e)),
        };
        let body = String::from_utf8_lossy(&body);
        match body
            .strip_prefix("pid=")
            .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|p| p.parse().ok())
        {
            Some(pid) if body.ends_with('\n') => Attempt::Done(Outcome::Ok { pid }),
            _ => Attempt::Done(Outcome::BadStatus(format!("body {body:?}"))),
        }
    };
    match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
        Ok(a) => a,
        Err(_) => Attempt::Done(Outcome::Timeout),
    }
}

/// One `GET /` on the shared connection in `conn` (a new connection when there is none or it
/// is gone); sent again, at most 3 times, only when the server provably never processed it.
/// Returns the outcome; counts each sending again in `resent`.
async fn get_h2(
    conn: &tokio::sync::Mutex<Option<Sender>>,
    addr: SocketAddr,
    resent: &AtomicUsize,
) -> Outcome {
    let mut tries = 0;
    loop {
        let mut sender = {
            let mut slot = conn.lock().await;
            match slot.as_ref() {
                Some(s) if !s.is_closed() => s.clone(),
                _ => match connect(addr).await {
                    Ok(s) => {
                        *slot = Some(s.clone());
                        s
                    }
                    Err(o) => return o,
                },
            }
        };
        match attempt(&mut sender, addr).await {
            Attempt::Done(o) => return o,
            Attempt::Again if tries < 3 => {
                tries += 1;
                resent.fetch_add(1, Ordering::Relaxed);
                // This connection takes no new streams: the next attempt opens another (at
                // worst one another task just opened is replaced, which costs a connect).
                *conn.lock().await = None;
            }
            Attempt::Again => {
                return Outcome::Other("refused unprocessed 4 times in a row".into());
            }
        }
    }
}

/// The load: `conns` shared connections with `per_conn` streams each (`fresh == false`), or
/// `per_conn` clients with a new connection per request (`fresh == true`, `conns == 1`).
/// Returns every request's (completion time, outcome) and how many were sent again.
fn run_load(
    app: &mut App,
    conns: usize,
    per_conn: usize,
    fresh: bool,
) -> (Vec<(Instant, Outcome)>, usize, Vec<u32>) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let addr = app.addr;
    let stop = Arc::new(AtomicBool::new(false));
    let resent = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let conn = Arc::new(tokio::sync::Mutex::new(None));
        for _ in 0..per_conn {
            let (stop, resent) = (stop.clone(), resent.clone());
            let conn = if fresh {
                Arc::new(tokio::sync::Mutex::new(None))
            } else {
                conn.clone()
            };
            tasks.push(rt.spawn(async move {
                let mut out = Vec::new();
                // Bounded in count and time whatever happens.
                let hard_stop = Instant::now() + Duration::from_secs(120);
                while !stop.load(Ordering::Relaxed)
                    && out.len() < 1_000_000
                    && Instant::now() < hard_stop
                {
                    if fresh {
                        *conn.lock().await = None;
                    }
                    let o = get_h2(&conn, addr, &resent).await;
                    out.push((Instant::now(), o));
                }
                out
            }));
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    let mut news = Vec::new();
    let mut olds = vec![app.first_pid()];
    for _ in 0..UPGRADES {
        let (old, new) = app.upgrade();
        assert_eq!(
            Some(&old),
            olds.last(),
            "the upgrade went to the serving pid"
        );
        olds.push(new);
        news.push(new);
        std::thread::sleep(Duration::from_millis(600));
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let mut all: Vec<(Instant, Outcome)> = tasks
        .into_iter()
        .flat_map(|t| rt.block_on(t).unwrap())
        .collect();
    all.sort_by_key(|(t, _)| *t);
    // Every old generation exits by itself, cleanly.
    for old in &olds[..olds.len() - 1] {
        let st = app.wait_exit(*old, Duration::from_secs(15));
        assert!(
            matches!(st, nix::sys::wait::WaitStatus::Exited(_, 0 | -1)),
            "old generation {old} ended with {st:?}"
        );
    }
    (all, resent.load(Ordering::Relaxed), news)
}

fn check(what: &str, results: &[(Instant, Outcome)], resent: usize, news: &[u32], min: usize) {
    let outcomes: Vec<&Outcome> = results.iter().map(|(_, o)| o).collect();
    verdict(what, &outcomes, min);
    eprintln!(
        "FIGURES {what}: besides, {resent} requests sent again because the server refused them \
         unprocessed (GOAWAY) or they never left the client"
    );
    for new in news {
        assert!(
            results.iter().any(|(_, o)| *o == Outcome::Ok { pid: *new }),
            "{what}: generation {new} never answered"
        );
    }
    if compare_plain() {
        return;
    }
    let last = *news.last().unwrap();
    assert!(
        results
            .iter()
            .rev()
            .take(4)
            .all(|(_, o)| *o == Outcome::Ok { pid: last }),
        "{what}: the last requests were not answered by the last generation {last}"
    );
}

#[test]
fn h2_clients_keeping_connections_lose_nothing_across_upgrades() {
    let mut app = start_axum();
    let (results, resent, news) = run_load(&mut app, CONNS, STREAMS_PER_CONN, false);
    check(
        &format!(
            "axum, HTTP/2 (h2c), {CONNS} connections x {STREAMS_PER_CONN} streams, new connection after GOAWAY"
        ),
        &results,
        resent,
        &news,
        500,
    );
}

#[test]
fn h2_clients_with_a_new_connection_per_request_lose_nothing_across_upgrades() {
    let mut app = start_axum();
    let (results, resent, news) = run_load(&mut app, 1, FRESH, true);
    check(
        "axum, HTTP/2 (h2c), new connection per request",
        &results,
        resent,
        &news,
        200,
    );
}
