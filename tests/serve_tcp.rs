//! The generic tokio drain (`hotexec::drain::Connections`) on a raw TCP line protocol, the
//! `tcp` example: under load with a new connection per request and several upgrades, every
//! request gets its answer; a connection accepted before the hand-over is served by the old
//! generation even when its request comes after it.
//!
//! `HOTEXEC_COMPARE_PLAIN=1 cargo test --test serve_tcp -- --nocapture` runs the same load
//! against the example's naive loop (`TCP_PLAIN_SHUTDOWN=1`) and prints what it loses.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hotexec_testkit::prelude::*;

const TCP: &str = "HOTEXEC_LISTEN_TCP";
const UPGRADES: usize = 4;
const CLIENTS: usize = 16;

fn start_tcp() -> App {
    if compare_plain() {
        App::start("tcp", TCP, &[("TCP_PLAIN_SHUTDOWN", "1")])
    } else {
        App::start("tcp", TCP, &[])
    }
}

/// Reads one answer to `line` from `conn`: `pid=<pid> <line>`, or the class of failure.
fn answer(conn: &mut BufReader<TcpStream>, line: &str) -> Outcome {
    let mut reply = String::new();
    match conn.read_line(&mut reply) {
        Ok(0) => return Outcome::Eof,
        Ok(_) if !reply.ends_with('\n') => return Outcome::Eof,
        Ok(_) => {}
        Err(e) => return classify(e),
    }
    let Some((pid, echoed)) = reply
        .trim_end()
        .strip_prefix("pid=")
        .and_then(|r| r.split_once(' '))
    else {
        return Outcome::BadStatus(format!("reply {reply:?}"));
    };
    match pid.parse() {
        Ok(pid) if echoed == line => Outcome::Ok { pid },
        _ => Outcome::BadStatus(format!("reply {reply:?} to {line:?}")),
    }
}

fn connect(addr: SocketAddr) -> Result<BufReader<TcpStream>, Outcome> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(classify)?;
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.set_nodelay(true);
    Ok(BufReader::new(s))
}

/// One request on a new connection, sent `think` after connecting (as a client across a
/// network, or after a TLS handshake, would).
fn ask(addr: SocketAddr, line: &str, think: Duration) -> Outcome {
    let mut conn = match connect(addr) {
        Ok(c) => c,
        Err(o) => return o,
    };
    std::thread::sleep(think);
    if let Err(e) = conn.get_mut().write_all(format!("{line}\n").as_bytes()) {
        return classify(e);
    }
    answer(&mut conn, line)
}

#[test]
fn new_connection_clients_lose_nothing_across_upgrades() {
    let mut app = start_tcp();
    let first = app.first_pid();
    let addr = app.addr;
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut out = Vec::new();
                let hard_stop = Instant::now() + Duration::from_secs(60);
                while !stop.load(Ordering::Relaxed) && Instant::now() < hard_stop {
                    // Half the clients send at once, half 5 ms after connecting.
                    let think = Duration::from_millis(5 * (c % 2) as u64);
                    out.push(ask(addr, &format!("client{c} request{}", out.len()), think));
                }
                out
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut news = Vec::new();
    for _ in 0..UPGRADES {
        news.push(app.upgrade().1);
        std::thread::sleep(Duration::from_millis(600));
    }
    stop.store(true, Ordering::Relaxed);
    let results: Vec<Outcome> = clients
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    for old in std::iter::once(first).chain(news[..news.len() - 1].iter().copied()) {
        let st = app.wait_exit(old, Duration::from_secs(30));
        assert!(
            matches!(st, nix::sys::wait::WaitStatus::Exited(_, 0 | -1)),
            "old generation {old} ended with {st:?}"
        );
    }
    let outcomes: Vec<&Outcome> = results.iter().collect();
    verdict(
        "tcp line protocol (hotexec::drain), new connection per request",
        &outcomes,
        200,
    );
    for new in &news {
        assert!(
            results.contains(&Outcome::Ok { pid: *new }),
            "generation {new} never answered"
        );
    }
}

/// Connections accepted before the hand-over whose requests come after it: each is answered
/// by the old generation (never closed unread), within the close grace window.
#[test]
fn connection_accepted_before_the_upgrade_is_served_after_it() {
    if compare_plain() {
        return;
    }
    let mut app = start_tcp();
    let first = app.first_pid();
    let addr = app.addr;
    // Accepted by the first generation: its first request is answered.
    let mut conns: Vec<_> = (0..4)
        .map(|i| {
            let mut c = connect(addr).unwrap();
            let line = format!("before{i}");
            c.get_mut()
                .write_all(format!("{line}\n").as_bytes())
                .unwrap();
            assert_eq!(answer(&mut c, &line), Outcome::Ok { pid: first });
            c
        })
        .collect();
    let (_, new) = app.upgrade();
    // After the hand-over, within the grace window: still the old generation, on the same
    // connections.
    for (i, c) in conns.iter_mut().enumerate() {
        let line = format!("after{i}");
        c.get_mut()
            .write_all(format!("{line}\n").as_bytes())
            .unwrap();
        assert_eq!(answer(c, &line), Outcome::Ok { pid: first });
    }
    // Idle past the grace window, they are closed (at a message boundary) and the old
    // generation exits; new connections go to the new one.
    for c in &mut conns {
        let mut rest = String::new();
        assert_eq!(c.read_line(&mut rest).unwrap_or(0), 0, "{rest:?}");
    }
    let st = app.wait_exit(first, Duration::from_secs(30));
    assert!(
        matches!(st, nix::sys::wait::WaitStatus::Exited(_, 0 | -1)),
        "{st:?}"
    );
    assert_eq!(ask(addr, "later", Duration::ZERO), Outcome::Ok { pid: new });
}
