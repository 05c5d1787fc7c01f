//! Connection hand-off through upgrades, as users get it from the library: the `axum_ws`
//! example (an axum router with a WebSocket route), `websocket` (tokio-tungstenite) and `line`
//! (a line protocol), with clients nobody here wrote (tokio-tungstenite's), real processes, real
//! sockets on 127.0.0.1, real signals. The faults (fd limit, a hostile or killed new generation)
//! are in `handoff_faults.rs`.
//!
//! Sizes are parameters: `HOTEXEC_TEST_WS_CLIENTS` and `HOTEXEC_TEST_WS_UPGRADES` (defaults:
//! 500 clients through 5 upgrades on `axum_ws`, the check; 300 through 3 on
//! `websocket`; the full demo is `HOTEXEC_TEST_WS_CLIENTS=1000
//! HOTEXEC_TEST_WS_UPGRADES=10`).

use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use hotexec::handoff::__wire::{self as wire, Kind};
use hotexec_testkit::handoff::{LineClient, Said, env_usize};
use hotexec_testkit::prelude::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio_tungstenite::tungstenite::Message;

/// What the WebSocket clients saw, all together.
#[derive(Default)]
struct Tally {
    /// Messages answered (exactly once, in order: anything else is a `wrong`).
    answered: AtomicU64,
    /// Connections that ended without the client closing them.
    disconnects: AtomicU64,
    /// Answers that were not the one expected next (lost, duplicated, reordered, garbled).
    wrong: Mutex<Vec<String>>,
    /// Every pid that answered.
    pids: Mutex<Vec<u32>>,
}

/// One client: connects, then sends rounds of two pipelined messages and reads both answers,
/// until `stop`. Each answer must be `pid=<a generation's pid> <that message>`, in order. With
/// `reconnect`, a closed connection is counted and opened again (hand-off disabled).
async fn ws_client(
    i: usize,
    url: Arc<String>,
    last_pid: Arc<Vec<AtomicU32>>,
    tally: Arc<Tally>,
    stop: tokio::sync::watch::Receiver<bool>,
    reconnect: bool,
) {
    let url = url.as_str();
    let mut seq = 0u64;
    'connection: loop {
        let mut ws = match tokio_tungstenite::connect_async(url).await {
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
                                let pid: u32 = pid.parse().unwrap_or(0);
                                last_pid[i].store(pid, Ordering::Relaxed);
                                tally.answered.fetch_add(1, Ordering::Relaxed);
                                let mut seen = tally.pids.lock().unwrap();
                                if !seen.contains(&pid) {
                                    seen.push(pid);
                                }
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
    /// The generations, in order.
    pids: Vec<u32>,
    /// Every pid that answered a message.
    answered_by: Vec<u32>,
    elapsed: Duration,
}

/// A WebSocket server under test: the example, its listener's variable, the WebSocket path.
struct Ws {
    example: &'static str,
    var: &'static str,
    path: &'static str,
}

const AXUM_WS: Ws = Ws {
    example: "axum_ws",
    var: "HOTEXEC_LISTEN_HTTP",
    path: "/ws",
};
const WEBSOCKET: Ws = Ws {
    example: "websocket",
    var: "HOTEXEC_LISTEN_WS",
    path: "/",
};

/// `clients` WebSocket clients under message load through `upgrades` upgrades of `server`;
/// after each upgrade, waits until every client has been answered by the new pid (with
/// hand-off) or has reconnected to it (without), and until the old generation has exited.
fn ws_run(server: &Ws, clients: usize, upgrades: usize, handoff: bool) -> WsRun {
    raise_nofile();
    let started = Instant::now();
    let env: Vec<(&str, &str)> = vec![
        ("HOTEXEC_DRAIN_TIMEOUT", "60s"),
        ("HOTEXEC_READY_TIMEOUT", "30s"),
        ("HOTEXEC_EXAMPLE_HANDOFF", if handoff { "1" } else { "0" }),
        ("RUST_LOG", "info"),
    ];
    let mut app = App::start(server.example, server.var, &env);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let last_pid: Arc<Vec<AtomicU32>> = Arc::new((0..clients).map(|_| AtomicU32::new(0)).collect());
    let tally = Arc::new(Tally::default());
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let url = Arc::new(format!("ws://{}{}", app.addr, server.path));
    let mut tasks = Vec::new();
    for i in 0..clients {
        tasks.push(rt.spawn(ws_client(
            i,
            url.clone(),
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
    let answered_by = tally.pids.lock().unwrap().clone();
    WsRun {
        clients,
        upgrades,
        answered: tally.answered.load(Ordering::Relaxed),
        disconnects: tally.disconnects.load(Ordering::Relaxed),
        wrong,
        pids,
        answered_by,
        elapsed: started.elapsed(),
    }
}

fn report(what: &str, r: &WsRun, handoff: bool) {
    println!(
        "{what}, hand-off {}: {} clients, {} upgrades (pids {:?}): {} messages answered, by {} pids, {} disconnects ({:.1} per upgrade), {} wrong answers, {:.1} s",
        if handoff { "on" } else { "off" },
        r.clients,
        r.upgrades,
        r.pids,
        r.answered,
        r.answered_by.len(),
        r.disconnects,
        r.disconnects as f64 / r.upgrades.max(1) as f64,
        r.wrong.len(),
        r.elapsed.as_secs_f64()
    );
}

/// Every message answered once, in order (the clients check each answer against the next
/// message they sent), no disconnect, and every generation answered.
fn assert_kept(r: &WsRun) {
    assert!(
        r.wrong.is_empty(),
        "wrong answers: {:?}",
        &r.wrong[..r.wrong.len().min(10)]
    );
    assert_eq!(r.disconnects, 0, "connections were cut during the upgrades");
    assert!(r.answered >= (r.clients * (r.upgrades + 1)) as u64);
    let mut by = r.answered_by.clone();
    by.sort();
    let mut gens = r.pids.clone();
    gens.sort();
    assert_eq!(
        by,
        gens,
        "answered by exactly the {} generations",
        r.upgrades + 1
    );
}

/// The check, on an axum app written as axum's docs show (plus hotexec's extractor and
/// serve): 500 WebSocket clients on `/ws` through 5 upgrades under message load — no
/// disconnect, every message answered once and in order, by 6 pids.
#[test]
fn axum_websocket_clients_stay_connected_through_upgrades() {
    let clients = env_usize("HOTEXEC_TEST_WS_CLIENTS", 500);
    let upgrades = env_usize("HOTEXEC_TEST_WS_UPGRADES", 5);
    let r = ws_run(&AXUM_WS, clients, upgrades, true);
    report("axum_ws", &r, true);
    assert_kept(&r);
}

/// The same on a tokio-tungstenite server (`examples/websocket.rs`).
#[test]
fn websocket_clients_stay_connected_through_upgrades() {
    let clients = env_usize("HOTEXEC_TEST_WS_CLIENTS", 300);
    let upgrades = env_usize("HOTEXEC_TEST_WS_UPGRADES", 3);
    let r = ws_run(&WEBSOCKET, clients, upgrades, true);
    report("websocket", &r, true);
    assert_kept(&r);
}

/// The comparison: the same without hand-off, where each upgrade closes every connection
/// (going away, 1001) and each client reconnects to the new generation.
#[test]
fn without_handoff_every_client_reconnects_at_each_upgrade() {
    let clients = env_usize("HOTEXEC_TEST_WS_CLIENTS", 300);
    let upgrades = env_usize("HOTEXEC_TEST_WS_UPGRADES", 3).min(2);
    let r = ws_run(&WEBSOCKET, clients, upgrades, false);
    report("websocket", &r, false);
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

/// Plain HTTP on the same axum app goes to the new generation at once, while its WebSocket
/// sessions move over.
#[test]
fn axum_http_requests_go_to_the_new_generation() {
    let app = App::start("axum_ws", "HOTEXEC_LISTEN_HTTP", &[]);
    let first = app.first_pid();
    assert_eq!(
        get(app.addr, "/", Duration::from_secs(10)),
        Outcome::Ok { pid: first }
    );
    let (_, new) = app.upgrade();
    answered_by(app.addr, new, Duration::from_secs(30));
}

/// A new binary that does not take hand-offs (a program not built on hotexec: no HELLO on the
/// channel): detected at ready time, and the old generation drains its sessions as before,
/// serving them to the end, while new clients go to the new binary.
#[test]
fn a_new_binary_without_handoff_support_means_a_plain_drain() {
    let env = [("HOTEXEC_DRAIN_TIMEOUT", "60s")];
    let mut app = App::start("line", "HOTEXEC_LISTEN_LINE", &env);
    let first = app.first_pid();
    let mut clients: Vec<LineClient> = (0..5).map(|_| LineClient::connect(app.addr)).collect();
    for c in &mut clients {
        assert_eq!(c.ask("a"), Said::Line(format!("pid={first} a")));
    }
    app.install_binary(&example("listenfd_server"));
    let (old, new) = app.upgrade();
    app.wait_log(
        "no connection hand-off to the new generation (it did not say HELLO",
        1,
        Duration::from_secs(30),
    );
    answered_by(app.addr, new, Duration::from_secs(30));
    for c in &mut clients {
        assert_eq!(
            c.ask("b"),
            Said::Line(format!("pid={old} b")),
            "drained by the old generation"
        );
    }
    drop(clients);
    app.wait_exit(old, Duration::from_secs(60));
}

/// A new binary of a later build speaking hand-off protocol version 2: the old generation
/// (version 1) sees at ready time that they do not understand each other and drains as before.
#[test]
fn a_new_binary_speaking_another_protocol_version_means_a_plain_drain() {
    let then = example("listenfd_server");
    let then = then.to_str().unwrap();
    let hello: String = wire::encode_as(2, Kind::Hello, 0, b"", b"")
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let env = [
        ("HOTEXEC_DRAIN_TIMEOUT", "60s"),
        ("HOTEXEC_TEST_THEN", then),
        ("HOTEXEC_TEST_HELLO", &hello),
    ];
    let mut app = App::start("line", "HOTEXEC_LISTEN_LINE", &env);
    let first = app.first_pid();
    let mut session = LineClient::connect(app.addr);
    assert_eq!(session.ask("a"), Said::Line(format!("pid={first} a")));
    app.install_binary(&example("handoff_v2"));
    let (old, new) = app.upgrade();
    app.wait_log(
        "no connection hand-off to the new generation (protocol version 2; this build speaks version 1)",
        1,
        Duration::from_secs(30),
    );
    answered_by(app.addr, new, Duration::from_secs(30));
    assert_eq!(
        session.ask("b"),
        Said::Line(format!("pid={old} b")),
        "drained by the old generation"
    );
    drop(session);
    app.wait_exit(old, Duration::from_secs(60));
}

/// Raw records on a crafted channel, as a broken or hostile previous generation could send.
fn send_record(chan: &OwnedFd, bytes: &[u8], fd: Option<&OwnedFd>) {
    use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
    let fds: Vec<i32> = fd.iter().map(|f| f.as_raw_fd()).collect();
    let cmsg: Vec<ControlMessage<'_>> = if fds.is_empty() {
        Vec::new()
    } else {
        vec![ControlMessage::ScmRights(&fds)]
    };
    sendmsg::<()>(
        chan.as_raw_fd(),
        &[std::io::IoSlice::new(bytes)],
        &cmsg,
        MsgFlags::empty(),
        None,
    )
    .unwrap();
}

/// The next record from the server on `chan` (`None`: it closed the channel), within 30 s.
fn recv_record(chan: &OwnedFd) -> Option<Vec<u8>> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let mut fds = [PollFd::new(chan.as_fd(), PollFlags::POLLIN)];
    let n = poll(&mut fds, PollTimeout::from(30_000u16)).unwrap();
    assert_eq!(
        n, 1,
        "nothing from the server on the hand-off channel within 30 s"
    );
    let mut buf = vec![0u8; 1 << 16];
    let n = nix::sys::socket::recv(
        chan.as_raw_fd(),
        &mut buf,
        nix::sys::socket::MsgFlags::empty(),
    )
    .unwrap();
    (n > 0).then(|| buf[..n].to_vec())
}

/// A record header of this build's wire format, with lengths that need not match a payload.
fn header(kind: Kind, id: u64, unread: u32, state: u32) -> Vec<u8> {
    let mut h = wire::encode(kind, id, b"", b"");
    h.truncate(wire::HEADER - 8);
    h.extend_from_slice(&unread.to_le_bytes());
    h.extend_from_slice(&state.to_le_bytes());
    h
}

/// A connected client and the server side of it (what a previous generation would pass).
fn tcp_pair() -> (TcpStream, OwnedFd) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    (c, l.accept().unwrap().0.into())
}

/// Garbage on the hand-off channel: each record is refused with a clear error naming what is
/// wrong, nothing is adopted from it (the client of a refused connection sees it closed once the
/// sender closes its copy), and the server keeps serving.
#[test]
fn garbage_on_the_channel_is_refused_and_nothing_is_adopted() {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
    use std::io::Read;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .unwrap();
    let addr_s = addr.to_string();
    let server = Crafted::start(
        &example("line"),
        &[
            ("LISTEN_FDS", "1"),
            ("LISTEN_FDNAMES", "line"),
            ("HOTEXEC_HANDOFF_FD", "4"),
            ("HOTEXEC_LISTEN_LINE", &addr_s),
        ],
        vec![(3, listener.into()), (4, theirs)],
        ListenPid::Itself,
    );
    let pid = server.child.id();
    // The server says HELLO in version 1 with its pid.
    let hello = recv_record(&ours).expect("a HELLO");
    assert_eq!(hello, wire::encode(Kind::Hello, u64::from(pid), b"", b""));
    server.wait_log("line example serving", Duration::from_secs(30));

    // 1. A CONN whose fd is a pipe, not a connection.
    let (pr, _pw) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    send_record(&ours, &header(Kind::Conn, 1, 0, 0), Some(&pr));
    let nak = wire::decode(&recv_record(&ours).expect("a NAK"), 0).unwrap();
    assert_eq!((nak.kind, nak.id), (Kind::Nak, 1), "NAK for connection 1");
    let why = String::from_utf8_lossy(&nak.state).into_owned();
    assert!(why.contains("not a socket"), "{why}");

    // 2. A CONN with a real connection but a state length over the limit.
    let (mut client2, conn2) = tcp_pair();
    send_record(&ours, &header(Kind::Conn, 2, 0, 70_000), Some(&conn2));
    let nak = wire::decode(&recv_record(&ours).expect("a NAK"), 0).unwrap();
    assert_eq!((nak.kind, nak.id), (Kind::Nak, 2), "NAK for connection 2");
    let why2 = String::from_utf8_lossy(&nak.state).into_owned();
    assert!(why2.contains("state blob of 70000 bytes"), "{why2}");
    drop(conn2);
    let mut b = [0u8; 1];
    assert_eq!(
        client2.read(&mut b).unwrap(),
        0,
        "the refused connection was not adopted"
    );

    // 3. Not a hotexec record at all, with a connection attached: the channel is given up.
    let (mut client3, conn3) = tcp_pair();
    send_record(&ours, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", Some(&conn3));
    assert_eq!(recv_record(&ours), None, "the server closed the channel");
    drop(conn3);
    assert_eq!(
        client3.read(&mut b).unwrap(),
        0,
        "nothing adopted from garbage"
    );

    let log = server.log_text();
    for needle in [
        "handed-off fd refused: the fd is not a socket; nothing adopted",
        "a state blob of 70000 bytes: at most 65536",
        "hand-off channel from the previous generation refused: magic",
    ] {
        assert!(log.contains(needle), "{needle:?} not in the log:\n{log}");
    }
    // Nothing running was disturbed: the server serves on.
    let mut c = LineClient::connect(addr);
    assert_eq!(c.ask("still"), Said::Line(format!("pid={pid} still")));
    println!("garbage refused:\n  {why}\n  {why2}\n  channel closed on a non-hotexec record");
}

/// Asks on fresh connections until a pid other than `not` answers; that pid.
fn new_line_generation(app: &App, not: &[u32]) -> u32 {
    let pid = wait_for(
        Duration::from_secs(30),
        "a new generation to answer",
        || {
            let mut c = LineClient::connect(app.addr);
            match c.ask("who") {
                Said::Line(l) => l
                    .strip_prefix("pid=")
                    .and_then(|r| r.strip_suffix(" who"))
                    .and_then(|p| p.parse().ok())
                    .filter(|p| !not.contains(p)),
                Said::Gone => None,
            }
        },
    );
    app.track(pid);
    pid
}

/// In keeper mode (the keeper channel is passed too, so the hand-off channel is one fd further)
/// a session moves through two chained upgrades, its count carried along.
#[test]
fn sessions_are_handed_off_in_keeper_mode_across_chained_upgrades() {
    let app = App::start(
        "line",
        "HOTEXEC_LISTEN_LINE",
        &[("HOTEXEC_KEEPER", "1"), ("HOTEXEC_DRAIN_TIMEOUT", "60s")],
    );
    let keeper = app.first_pid();
    let g1 = new_line_generation(&app, &[keeper]);
    let mut session = LineClient::connect(app.addr);
    assert_eq!(session.ask("a"), Said::Line(format!("pid={g1} a")));
    let mut seen = vec![keeper, g1];
    for round in 0..2 {
        kill(Pid::from_raw(keeper as i32), Signal::SIGUSR2).unwrap();
        let next = new_line_generation(&app, &seen);
        // The session's next answers come from the new generation once it was handed over.
        wait_for(
            Duration::from_secs(30),
            "the session to be answered by the new generation",
            || match session.ask("b") {
                Said::Line(l) if l == format!("pid={next} b") => Some(()),
                Said::Line(l) => {
                    assert!(l.ends_with(" b"), "{l}");
                    None
                }
                Said::Gone => panic!("the session was cut in upgrade {round}"),
            },
        );
        seen.push(next);
    }
    let last = *seen.last().unwrap();
    match session.ask("count") {
        Said::Line(l) => {
            let n: u64 = l
                .strip_prefix(&format!("pid={last} count="))
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("{l}"));
            assert!(n >= 3, "the count travelled with the session: {l}");
        }
        Said::Gone => panic!("the session was cut"),
    }
    app.wait_log(
        "the new generation takes connection hand-offs",
        2,
        Duration::from_secs(10),
    );
}

/// A client whose connection the old generation accepted sends its WebSocket handshake just
/// after the hand-over, while the old generation drains: the handshake is answered as a
/// handshake (the drain's `Connection: close` is for HTTP responses, not a `101`), and the
/// session then goes to the new generation.
#[test]
fn a_websocket_handshake_answered_while_draining_is_still_an_upgrade() {
    use tokio_tungstenite::tungstenite::Error as WsError;
    let rt = runtime();
    let mut missed = 0;
    loop {
        let app = App::start("axum_ws", "HOTEXEC_LISTEN_HTTP", &[]);
        let tcp = std::net::TcpStream::connect(app.addr).unwrap();
        // Accepted by the first generation before the upgrade.
        assert_eq!(
            get(app.addr, "/", Duration::from_secs(10)),
            Outcome::Ok {
                pid: app.first_pid()
            }
        );
        let (old, new) = app.upgrade();
        // The old generation drains now.
        app.wait_log(
            "stopped accepting; draining HTTP connections",
            1,
            Duration::from_secs(10),
        );
        let url = format!("ws://{}/ws", app.addr);
        // The whole exchange is bounded: the handshake and the send too, not only the answer.
        let r = block_within(
            &rt,
            Duration::from_secs(60),
            "the WebSocket exchange",
            async {
                tcp.set_nonblocking(true).unwrap();
                let tcp = tokio::net::TcpStream::from_std(tcp).unwrap();
                let (mut ws, resp) = tokio_tungstenite::client_async(url, tcp).await?;
                let conn = resp.headers().get("connection").cloned();
                ws.send(Message::text("hi")).await?;
                let answer = tokio::time::timeout(Duration::from_secs(30), ws.next()).await;
                Ok::<_, WsError>((conn, answer))
            },
        );
        match r {
            Ok((conn, Ok(Some(Ok(Message::Text(t)))))) => {
                println!(
                    "handshake answered by the draining generation {old} (Connection: {conn:?}); session answered: {t}"
                );
                assert!(
                    conn.as_ref()
                        .is_some_and(|c| c.as_bytes().eq_ignore_ascii_case(b"upgrade")),
                    "{conn:?}"
                );
                // Upgraded by the draining generation, the session went on to the new one.
                assert_eq!(t.as_str(), format!("pid={new} hi"));
                return;
            }
            // The connection was closed before the handshake reached the old generation: the
            // drain's grace window (500 ms) was over. Not what this test is about: again.
            Err(WsError::Io(_)) | Err(WsError::ConnectionClosed) if missed < 3 => missed += 1,
            other => panic!("the handshake answered while draining failed: {other:?}"),
        }
    }
}
