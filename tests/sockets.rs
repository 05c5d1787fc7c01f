//! Every socket kind across upgrades, with real processes (examples/multi.rs): a Unix stream
//! listener (path kept on upgrade, removed on a final stop, stale file replaced, live socket and
//! non-socket files refused, mode set), a UDP socket (passed on; every datagram answered by one
//! generation), and the listen options (`v6only = false`, `reuseport = true`) seen from outside.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, UdpSocket};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hotexec_testkit::prelude::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const TCP: &str = "HOTEXEC_LISTEN_TCP";

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The multi example with its Unix socket at `sock`, UDP and the dual-stack listener on free ports.
fn start_multi(sock: &Path) -> (App, SocketAddr, u16) {
    let udp: SocketAddr = format!("127.0.0.1:{}", free_udp_port()).parse().unwrap();
    let dual_port = free_port();
    let unix = format!("unix:{}", sock.display());
    let udp_s = format!("udp:{udp}");
    let dual = format!("[::]:{dual_port}");
    let app = App::start(
        "multi",
        TCP,
        &[
            ("HOTEXEC_LISTEN_UNIX", unix.as_str()),
            ("HOTEXEC_LISTEN_UDP", udp_s.as_str()),
            ("HOTEXEC_LISTEN_DUAL", dual.as_str()),
            ("HOTEXEC_DRAIN_TIMEOUT", "3s"),
        ],
    );
    (app, udp, dual_port)
}

/// One line over the Unix socket; the pid that answered.
fn unix_echo(path: &Path, line: &str) -> Result<u32, String> {
    let s = UnixStream::connect(path).map_err(|e| format!("connect {}: {e}", path.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    (&s).write_all(format!("{line}\n").as_bytes())
        .map_err(|e| e.to_string())?;
    let mut answer = String::new();
    BufReader::new(&s)
        .read_line(&mut answer)
        .map_err(|e| e.to_string())?;
    let rest = answer
        .strip_prefix("pid=")
        .ok_or_else(|| format!("answer {answer:?}"))?;
    let (pid, echoed) = rest
        .trim_end()
        .split_once(' ')
        .ok_or(format!("answer {answer:?}"))?;
    if echoed != line {
        return Err(format!("echoed {echoed:?}, sent {line:?}"));
    }
    pid.parse().map_err(|_| format!("answer {answer:?}"))
}

/// One datagram; the pid that answered, or None after a 2 s wait.
fn udp_echo(sock: &UdpSocket, to: SocketAddr, payload: &str) -> Option<u32> {
    sock.send_to(payload.as_bytes(), to).unwrap();
    let mut buf = [0u8; 512];
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        let Ok((n, _)) = sock.recv_from(&mut buf) else {
            continue;
        };
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        let (pid, echoed) = text.strip_prefix("pid=")?.split_once(' ')?;
        if echoed == payload {
            return pid.parse().ok();
        }
        // A late answer to an earlier datagram: keep reading for ours.
    }
    None
}

#[test]
fn unix_and_udp_sockets_are_passed_on_and_the_path_removed_only_on_a_final_stop() {
    let dir = Scratch::new("unix-path");
    let sock = dir.0.join("app.sock");
    let (mut app, udp_addr, _) = start_multi(&sock);
    let p1 = app.first_pid();
    let meta = std::fs::symlink_metadata(&sock).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o660, "mode = 0o660");
    assert_eq!(unix_echo(&sock, "hello"), Ok(p1));
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    assert_eq!(udp_echo(&client, udp_addr, "d0"), Some(p1));

    // Datagrams sent one after another while the upgrade runs: every one is answered, by
    // whichever generation read it from the shared socket.
    let udp_load = std::thread::spawn(move || {
        let c = UdpSocket::bind("127.0.0.1:0").unwrap();
        c.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut answered = Vec::new();
        let stop = Instant::now() + Duration::from_millis(2500);
        let mut i = 0;
        while Instant::now() < stop && i < 100_000 {
            answered.push(udp_echo(&c, udp_addr, &format!("u{i}")));
            i += 1;
        }
        answered
    });
    std::thread::sleep(Duration::from_millis(300));
    let (old, p2) = app.upgrade();
    assert_eq!(old, p1);
    let answered = udp_load.join().unwrap();
    let lost = answered.iter().filter(|a| a.is_none()).count();
    let by_old = answered.iter().filter(|a| **a == Some(p1)).count();
    let by_new = answered.iter().filter(|a| **a == Some(p2)).count();
    eprintln!(
        "UDP across an upgrade: {} datagrams, {by_old} answered by the old pid, {by_new} by the new, {lost} unanswered",
        answered.len()
    );
    assert_eq!(lost, 0, "datagrams unanswered across the upgrade");
    assert!(by_old > 0 && by_new > 0, "{by_old} / {by_new}");

    // The old generation drains and exits without touching the path (after the new one's
    // verdict: up to `max_probation`, 10 s, when it serves little).
    app.wait_exit(p1, Duration::from_secs(30));
    assert!(
        std::fs::symlink_metadata(&sock)
            .unwrap()
            .file_type()
            .is_socket()
    );
    assert_eq!(unix_echo(&sock, "after"), Ok(p2));
    assert_eq!(udp_echo(&client, udp_addr, "d1"), Some(p2));
    answered_by(app.addr, p2, Duration::from_secs(5));

    // A final stop removes it.
    kill(Pid::from_raw(p2 as i32), Signal::SIGTERM).unwrap();
    app.wait_exit(p2, Duration::from_secs(10));
    assert!(
        !sock.exists(),
        "the socket file must be removed on a final stop"
    );
    assert!(app.log_text().contains("removed the socket file"));
}

#[test]
fn a_stale_socket_file_is_replaced() {
    let dir = Scratch::new("unix-stale");
    let sock = dir.0.join("app.sock");
    // A listener that is gone, its file left behind: what a crash leaves.
    drop(UnixListener::bind(&sock).unwrap());
    assert!(sock.exists());
    let (app, _, _) = start_multi(&sock);
    assert_eq!(unix_echo(&sock, "x"), Ok(app.first_pid()));
    assert!(app.log_text().contains("removing a stale socket file"));
}

/// Runs the multi example expecting it to refuse to start; returns its output.
fn refused_start(sock: &Path) -> String {
    subreaper();
    let out_path = sock.with_extension("log");
    let out = std::fs::File::create(&out_path).unwrap();
    let mut child = Command::new(example("multi"))
        .env(TCP, format!("127.0.0.1:{}", free_port()))
        .env("HOTEXEC_LISTEN_UNIX", format!("unix:{}", sock.display()))
        .env(
            "HOTEXEC_LISTEN_UDP",
            format!("udp:127.0.0.1:{}", free_udp_port()),
        )
        .env("HOTEXEC_LISTEN_DUAL", format!("[::]:{}", free_port()))
        .env("HOTEXEC_PID_FILE", "")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the server started although {} is taken", sock.display());
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    assert_eq!(status.code(), Some(1));
    std::fs::read_to_string(&out_path).unwrap()
}

#[test]
fn a_live_socket_or_a_file_that_is_not_a_socket_is_never_removed() {
    let dir = Scratch::new("unix-taken");
    let live: PathBuf = dir.0.join("live.sock");
    let holder = UnixListener::bind(&live).unwrap();
    let out = refused_start(&live);
    assert!(out.contains("another process is listening on"), "{out}");
    // Still the holder's: a client reaches it.
    let _c = UnixStream::connect(&live).unwrap();
    assert!(holder.accept().is_ok());

    let file = dir.0.join("data.sock");
    std::fs::write(&file, "precious").unwrap();
    let out = refused_start(&file);
    assert!(out.contains("exists and is not a socket"), "{out}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "precious");
}

#[test]
fn listen_options_reach_the_socket() {
    use nix::sys::socket::{
        AddressFamily, SockFlag, SockType, SockaddrIn, SockaddrIn6, bind, setsockopt, socket,
        sockopt,
    };
    use std::os::fd::AsRawFd;
    let dir = Scratch::new("options");
    let (app, _, dual_port) = start_multi(&dir.0.join("app.sock"));
    let pid = app.first_pid();
    // v6only = false: the `[::]` listener takes IPv4 clients too; and IPv6 ones.
    let v4: SocketAddr = format!("127.0.0.1:{dual_port}").parse().unwrap();
    let v6: SocketAddr = format!("[::1]:{dual_port}").parse().unwrap();
    assert_eq!(get(v4, "/", Duration::from_secs(5)), Outcome::Ok { pid });
    assert_eq!(get(v6, "/", Duration::from_secs(5)), Outcome::Ok { pid });
    // reuseport = true: another SO_REUSEPORT socket may bind the same port...
    let other = socket(
        AddressFamily::Inet6,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .unwrap();
    setsockopt(&other, sockopt::ReusePort, &true).unwrap();
    setsockopt(&other, sockopt::Ipv6V6Only, &false).unwrap();
    let any6 = SockaddrIn6::from(std::net::SocketAddrV6::new(
        std::net::Ipv6Addr::UNSPECIFIED,
        dual_port,
        0,
        0,
    ));
    assert_eq!(bind(other.as_raw_fd(), &any6), Ok(()));
    // ...while the `tcp` listener, without the option (the default), refuses it.
    let third = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .unwrap();
    setsockopt(&third, sockopt::ReusePort, &true).unwrap();
    let SocketAddr::V4(tcp) = app.addr else {
        unreachable!()
    };
    assert_eq!(
        bind(third.as_raw_fd(), &SockaddrIn::from(tcp)),
        Err(nix::errno::Errno::EADDRINUSE)
    );
}
