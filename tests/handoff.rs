//! Connection hand-off (issue 12): established connections survive upgrades.
//!
//! Real processes (the `websocket` and `line` examples), real sockets on 127.0.0.1, real
//! signals. Sizes are parameters: `HOTEXEC_TEST_WS_CLIENTS` (default 1000) and
//! `HOTEXEC_TEST_WS_UPGRADES` (default 3; the demo is 10).
mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{App, wait_for};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

fn env_usize(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Room for a thousand client sockets in this process and the servers it starts.
fn raise_nofile() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write the struct on our stack.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// What the WebSocket clients saw, all together.
#[derive(Default)]
struct Tally {
    /// Messages answered (exactly once, in order: anything else is a `wrong`).
    answered: AtomicU64,
    /// Connections that ended without the client closing them.
    disconnects: AtomicU64,
    /// Answers that were not the one expected next (lost, duplicated, reordered, garbled).
    wrong: Mutex<Vec<String>>,
}

/// One client: connects, then sends rounds of two pipelined messages and reads both answers,
/// until `stop`. Each answer must be `pid=<a generation's pid> <that message>`, in order. With
/// `reconnect`, a closed connection is counted and opened again (hand-off disabled).
async fn ws_client(
    i: usize,
    addr: SocketAddr,
    last_pid: Arc<Vec<AtomicU32>>,
    tally: Arc<Tally>,
    stop: tokio::sync::watch::Receiver<bool>,
    reconnect: bool,
) {
    let url = format!("ws://{addr}/");
    let mut seq = 0u64;
    'connection: loop {
        let mut ws = match tokio_tungstenite::connect_async(&url).await {
            Ok((ws, _)) => ws,
            Err(e) => {
                if *stop.borrow() {
                    return;
                }
                tally
                    .wrong
                    .lock()
                    .unwrap()
                    .push(format!("client {i}: connect: {e}"));
                return;
            }
        };
        loop {
            if *stop.borrow() {
                let _ = ws.close(None).await;
                return;
            }
            let sent = [seq, seq + 1];
            seq += 2;
            for s in sent {
                if ws.send(Message::text(format!("c{i} m{s}"))).await.is_err() {
                    tally.disconnects.fetch_add(1, Ordering::Relaxed);
                    if reconnect {
                        continue 'connection;
                    }
                    return;
                }
            }
            for s in sent {
                let next = tokio::time::timeout(Duration::from_secs(60), ws.next()).await;
                match next {
                    Ok(Some(Ok(Message::Text(t)))) => {
                        let t = t.as_str();
                        let want = format!(" c{i} m{s}");
                        match t.strip_prefix("pid=").and_then(|r| r.split_once(' ')) {
                            Some((pid, rest)) if format!(" {rest}") == want => {
                                last_pid[i].store(pid.parse().unwrap_or(0), Ordering::Relaxed);
                                tally.answered.fetch_add(1, Ordering::Relaxed);
                            }
                            _ => {
                                tally.wrong.lock().unwrap().push(format!(
                                    "client {i}: expected pid=… c{i} m{s}, got {t:?}"
                                ))
                            }
                        }
                    }
                    Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Ok(Some(Err(_))) => {
                        tally.disconnects.fetch_add(1, Ordering::Relaxed);
                        if reconnect {
                            continue 'connection;
                        }
                        return;
                    }
                    Ok(Some(Ok(other))) => tally
                        .wrong
                        .lock()
                        .unwrap()
                        .push(format!("client {i}: unexpected {other:?}")),
                    Err(_) => {
                        tally
                            .wrong
                            .lock()
                            .unwrap()
                            .push(format!("client {i}: no answer to m{s} within 60 s"));
                        return;
                    }
                }
            }
            // Message load without saturating a shared 2-core machine.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

struct WsRun {
    clients: usize,
    upgrades: usize,
    answered: u64,
    disconnects: u64,
    wrong: Vec<String>,
    pids: Vec<u32>,
    elapsed: Duration,
}

/// `clients` WebSocket clients under message load through `upgrades` upgrades of the
/// `websocket` example; after each upgrade, waits until every client has been answered by the
/// new pid (with hand-off) or has reconnected to it (without).
fn ws_run(clients: usize, upgrades: usize, handoff: bool) -> WsRun {
    raise_nofile();
    let started = Instant::now();
    let env: Vec<(&str, &str)> = vec![
        ("HOTEXEC_DRAIN_TIMEOUT", "60s"),
        ("HOTEXEC_READY_TIMEOUT", "30s"),
        ("HOTEXEC_EXAMPLE_HANDOFF", if handoff { "1" } else { "0" }),
        ("RUST_LOG", "info"),
    ];
    let mut app = App::start("websocket", "HOTEXEC_LISTEN_WS", &env);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let last_pid: Arc<Vec<AtomicU32>> = Arc::new((0..clients).map(|_| AtomicU32::new(0)).collect());
    let tally = Arc::new(Tally::default());
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    for i in 0..clients {
        tasks.push(rt.spawn(ws_client(
            i,
            app.addr,
            last_pid.clone(),
            tally.clone(),
            stop.clone(),
            !handoff,
        )));
    }
    let all_answered_by = |pid: u32, what: &str| {
        wait_for(Duration::from_secs(120), what, || {
            let w = tally.wrong.lock().unwrap();
            assert!(
                w.is_empty(),
                "clients saw wrong answers: {:?}",
                &w[..w.len().min(10)]
            );
            last_pid
                .iter()
                .all(|p| p.load(Ordering::Relaxed) == pid)
                .then_some(())
        })
    };
    let first = app.first_pid();
    all_answered_by(first, "every client answered by the first generation");
    let mut pids = vec![first];
    for u in 1..=upgrades {
        let before = tally.disconnects.load(Ordering::Relaxed);
        let (old, new) = app.upgrade();
        all_answered_by(
            new,
            &format!("every client answered by generation {u} (pid {new})"),
        );
        // The old generation has nothing left to serve: it exits by itself.
        app.wait_exit(old, Duration::from_secs(60));
        let after = tally.disconnects.load(Ordering::Relaxed);
        println!(
            "upgrade {u}: {old} -> {new}: {} disconnects/reconnects (hand-off {})",
            after - before,
            if handoff { "on" } else { "off" }
        );
        pids.push(new);
    }
    let _ = stop_tx.send(true);
    rt.block_on(async {
        for t in tasks {
            let _ = tokio::time::timeout(Duration::from_secs(60), t).await;
        }
    });
    let wrong = std::mem::take(&mut *tally.wrong.lock().unwrap());
    WsRun {
        clients,
        upgrades,
        answered: tally.answered.load(Ordering::Relaxed),
        disconnects: tally.disconnects.load(Ordering::Relaxed),
        wrong,
        pids,
        elapsed: started.elapsed(),
    }
}

fn report(r: &WsRun, handoff: bool) {
    println!(
        "websocket, hand-off {}: {} clients, {} upgrades (pids {:?}): {} messages answered, {} disconnects ({:.1} per upgrade), {} wrong answers, {:.1} s",
        if handoff { "on" } else { "off" },
        r.clients,
        r.upgrades,
        r.pids,
        r.answered,
        r.disconnects,
        r.disconnects as f64 / r.upgrades.max(1) as f64,
        r.wrong.len(),
        r.elapsed.as_secs_f64()
    );
}

/// The check: many WebSocket clients through several upgrades under message load — no
/// disconnect, every message answered exactly once and in order, every client answered by the
/// new pid after each upgrade.
#[test]
fn websocket_clients_stay_connected_through_upgrades() {
    let clients = env_usize("HOTEXEC_TEST_WS_CLIENTS", 1000);
    let upgrades = env_usize("HOTEXEC_TEST_WS_UPGRADES", 3);
    let r = ws_run(clients, upgrades, true);
    report(&r, true);
    assert!(
        r.wrong.is_empty(),
        "wrong answers: {:?}",
        &r.wrong[..r.wrong.len().min(10)]
    );
    assert_eq!(r.disconnects, 0, "connections were cut during the upgrades");
    assert!(r.answered >= (clients * (upgrades + 1)) as u64);
}

/// The comparison: the same without hand-off, where each upgrade closes every connection
/// (going away, 1001) and each client reconnects to the new generation.
#[test]
fn without_handoff_every_client_reconnects_at_each_upgrade() {
    let clients = env_usize("HOTEXEC_TEST_WS_CLIENTS", 1000);
    let upgrades = env_usize("HOTEXEC_TEST_WS_UPGRADES", 3).min(2);
    let r = ws_run(clients, upgrades, false);
    report(&r, false);
    assert!(
        r.wrong.is_empty(),
        "wrong answers: {:?}",
        &r.wrong[..r.wrong.len().min(10)]
    );
    assert_eq!(
        r.disconnects,
        (clients * upgrades) as u64,
        "without hand-off each client reconnects once per upgrade"
    );
}
