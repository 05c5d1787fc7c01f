//! HTTP/2 (prior knowledge, h2c) clients — `h2`, hyper's HTTP/2 — against the axum example
//! across several upgrades: each draining generation sends a graceful two-step `GOAWAY`, the
//! streams in flight finish (slow ones included), and clients open a new connection, to the new
//! generation, for their next requests. Every request is counted; none may fail.
//!
//! A request the client itself never put on the wire because its connection was already going
//! away (`h2`'s `send_request` refuses it) is sent again on a new connection; that is what
//! every HTTP/2 client does and it is not a failure. Anything else is.
//!
//! `HOTEXEC_COMPARE_PLAIN=1 cargo test --test serve_h2 -- --nocapture` runs the same load
//! against plain `axum::serve(..).with_graceful_shutdown(..)` and prints what it loses.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hyper::Request;

use hotexec_testkit::prelude::*;

const HTTP: &str = "HOTEXEC_LISTEN_HTTP";
const UPGRADES: usize = 4;
/// Connections open at a time, and streams in flight on each.
const CONNECTIONS: usize = 6;
const STREAMS: usize = 4;

fn start_axum() -> App {
    if compare_plain() {
        App::start("axum", HTTP, &[("AXUM_PLAIN_SHUTDOWN", "1")])
    } else {
        App::start("axum", HTTP, &[])
    }
}

/// What one client saw: outcomes of the requests it made, and how many connections it opened.
#[derive(Default)]
struct Seen {
    outcomes: Vec<Outcome>,
    connections: usize,
    /// Requests the server left unprocessed under a GOAWAY and the client sent again.
    retried: usize,
}

/// One failed request, classified by its h2 error.
fn classify(e: &h2::Error) -> Outcome {
    if let Some(io) = e.get_io() {
        use std::io::ErrorKind::*;
        return match io.kind() {
            ConnectionReset | ConnectionAborted | BrokenPipe => Outcome::Reset,
            UnexpectedEof => Outcome::Eof,
            _ => Outcome::Other(format!("io: {io}")),
        };
    }
    Outcome::Other(format!(
        "h2: {e} (go_away={}, reset={}, remote={})",
        e.is_go_away(),
        e.is_reset(),
        e.is_remote()
    ))
}

/// A client: one HTTP/2 connection at a time with `STREAMS` request loops on it (one of them
/// asks for `/slow?ms=200`, so streams are in flight at every GOAWAY); once the connection is
/// going away, a new one.
///
/// The client is the `h2` crate, hyper's HTTP/2: it tells exactly whether a request went out.
/// `send_request` refuses synchronously once the connection has received a GOAWAY — that
/// request was never sent, and goes out again on a new connection, as every HTTP/2 client
/// does. A stream above the final GOAWAY's last stream id (NO_ERROR) is one the server
/// guarantees it never processed (RFC 9113 §6.8: the client can safely retry it). The two-step
/// GOAWAY leaves a rare such stream because h2's connection writes a pending PING ack before the
/// frames of streams it has queued (`Connection::poll_ready`), so a HEADERS frame queued just
/// then reaches the server after the ack that made it send its final GOAWAY. It is sent again
/// on a new connection and counted apart. Any other failure (a
/// reset, a cut connection, a GOAWAY with an error code) is a lost request.
///
/// With `one_shot`, each connection carries a single request (a client that does not keep its
/// connections, such as a command-line tool): connections are then made all the time, also at
/// the very moment of the hand-over.
///
/// `think`: in `one_shot` mode, the client speaks 5 ms after connecting.
async fn client(addr: SocketAddr, stop: Arc<AtomicBool>, one_shot: bool, think: bool) -> Seen {
    let mut seen = Seen::default();
    let hard_stop = Instant::now() + Duration::from_secs(60);
    while !stop.load(Ordering::Relaxed) && Instant::now() < hard_stop {
        let tcp = match tokio::net::TcpStream::connect(addr).await {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                seen.outcomes.push(Outcome::Refused);
                continue;
            }
            Err(e) => {
                seen.outcomes.push(Outcome::Other(format!("connect: {e}")));
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        seen.connections += 1;
        if one_shot && think {
            // As a client across a network, or after a TLS handshake: the connection is
            // accepted a moment before its first bytes arrive.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let (sender, conn) = match h2::client::handshake(tcp).await {
            Ok(pair) => pair,
            Err(e) => {
                seen.outcomes.push(classify(&e));
                continue;
            }
        };
        let driver = tokio::spawn(conn);
        let streams = if one_shot { 1 } else { STREAMS };
        let loops: Vec<_> = (0..streams)
            .map(|i| {
                let sender = sender.clone();
                let stop = stop.clone();
                let path = if i == 0 && !one_shot {
                    "/slow?ms=200"
                } else {
                    "/"
                };
                tokio::spawn(async move {
                    let mut out = Vec::new();
                    let mut retried = 0;
                    let mut sender = sender;
                    while !stop.load(Ordering::Relaxed) && Instant::now() < hard_stop {
                        sender = match sender.ready().await {
                            Ok(s) => s,
                            Err(_) => break, // the connection is going away: a new one
                        };
                        let req = Request::get(format!("http://{addr}{path}"))
                            .body(())
                            .unwrap();
                        let response = match sender.send_request(req, true) {
                            Ok((response, _)) => response,
                            // Refused before it went out (GOAWAY received): not sent.
                            Err(_) => break,
                        };
                        let outcome = tokio::time::timeout(Duration::from_secs(10), async {
                            let resp = match response.await {
                                Err(e)
                                    if e.is_go_away()
                                        && e.is_remote()
                                        && e.reason() == Some(h2::Reason::NO_ERROR) =>
                                {
                                    return Ok(None); // unprocessed: sent again
                                }
                                r => r.map_err(|e| classify(&e))?,
                            };
                            if resp.status() != 200 {
                                return Err(Outcome::BadStatus(resp.status().to_string()));
                            }
                            let mut body = resp.into_body();
                            let mut text = Vec::new();
                            while let Some(chunk) = body.data().await {
                                let chunk = chunk.map_err(|e| classify(&e))?;
                                let _ = body.flow_control().release_capacity(chunk.len());
                                text.extend_from_slice(&chunk);
                            }
                            let text = String::from_utf8_lossy(&text);
                            text.strip_prefix("pid=")
                                .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
                                .and_then(|p| p.parse().ok())
                                .map(|pid| Some(Outcome::Ok { pid }))
                                .ok_or_else(|| Outcome::BadStatus(format!("body {text:?}")))
                        })
                        .await
                        .unwrap_or(Err(Outcome::Timeout));
                        let outcome = match outcome {
                            Ok(Some(ok)) => Ok(ok),
                            Ok(None) => {
                                retried += 1;
                                break;
                            }
                            Err(failed) => Err(failed),
                        };
                        let failed = outcome.is_err();
                        out.push(outcome.unwrap_or_else(|o| o));
                        if failed || one_shot {
                            break;
                        }
                    }
                    (out, retried)
                })
            })
            .collect();
        drop(sender);
        for l in loops {
            let (out, retried) = l.await.unwrap_or_default();
            seen.outcomes.extend(out);
            seen.retried += retried;
        }
        // Ends once the server closed the connection (after its GOAWAY), or the last sender is
        // gone.
        let _ = tokio::time::timeout(Duration::from_secs(10), driver).await;
    }
    seen
}

/// Runs `CONNECTIONS` clients through `UPGRADES` upgrades and checks what they got.
fn run(what: &str, one_shot: bool) {
    let mut app = start_axum();
    let first = app.first_pid();
    let addr = app.addr;
    let rt = runtime();
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CONNECTIONS)
        .map(|i| rt.spawn(client(addr, stop.clone(), one_shot, i % 2 == 1)))
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut news = Vec::new();
    for _ in 0..UPGRADES {
        news.push(app.upgrade().1);
        std::thread::sleep(Duration::from_millis(700));
    }
    stop.store(true, Ordering::Relaxed);
    let seen: Vec<Seen> = rt.block_on(async {
        let mut all = Vec::new();
        for c in clients {
            all.push(
                tokio::time::timeout(Duration::from_secs(30), c)
                    .await
                    .expect("a client did not finish")
                    .unwrap(),
            );
        }
        all
    });
    let connections: usize = seen.iter().map(|s| s.connections).sum();
    let retried: usize = seen.iter().map(|s| s.retried).sum();
    let outcomes: Vec<&Outcome> = seen.iter().flat_map(|s| s.outcomes.iter()).collect();
    eprintln!(
        "{what}: {connections} connections opened by {CONNECTIONS} clients over {UPGRADES} upgrades; {retried} requests left unprocessed under a GOAWAY and sent again"
    );
    for old in std::iter::once(first).chain(news[..news.len() - 1].iter().copied()) {
        let st = app.wait_exit(old, Duration::from_secs(30));
        assert!(
            matches!(st, nix::sys::wait::WaitStatus::Exited(_, 0 | -1)),
            "old generation {old} ended with {st:?}"
        );
    }
    verdict(what, &outcomes, 200);
    // The clients did move: each upgrade made them open new connections, and every generation
    // served them.
    assert!(
        connections >= CONNECTIONS * (UPGRADES + 1) / 2,
        "only {connections} connections over {UPGRADES} upgrades"
    );
    for new in &news {
        assert!(
            outcomes.contains(&&Outcome::Ok { pid: *new }),
            "generation {new} never answered over HTTP/2"
        );
    }
}

/// Clients keep one connection with several streams in flight (a slow one among them) until
/// its GOAWAY, then open a new one.
#[test]
fn http2_clients_move_to_the_new_generation_after_goaway_and_lose_nothing() {
    run(
        "axum, HTTP/2 prior knowledge (h2 client), kept connections",
        false,
    );
}

/// Clients open a new HTTP/2 connection for each request (half of them speak 5 ms after
/// connecting): some are accepted by the old generation just before the hand-over, and must
/// still be served, not closed unread.
#[test]
fn http2_new_connection_per_request_loses_nothing() {
    run(
        "axum, HTTP/2 prior knowledge (h2 client), new connection per request",
        true,
    );
}
