//! Socket activation by a service manager, with Debian's real `systemd-socket-activate`: the
//! sockets it passes are authoritative. Whatever the `#[listen]` literal (or its
//! `HOTEXEC_LISTEN_<NAME>` override) says, the server serves the activator's sockets, answers the
//! connection that started it, keeps them across upgrades (also to a build that declares another
//! address), and refuses to start, naming the fds and the listeners, when it cannot tell which
//! socket is which.
//!
//! `systemd-socket-activate` without `--accept` binds its sockets, waits for the first connection,
//! then execs the server in place (same pid) with `LISTEN_FDS`, and without `--fdname` sets no
//! `LISTEN_FDNAMES` at all. Its `[::]:PORT` sockets are dual-stack (`IPV6_V6ONLY` off), like a
//! `.socket` unit's `ListenStream=PORT`.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, UdpSocket};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use hotexec_testkit::prelude::*;
use nix::sys::wait::WaitStatus;

/// Variables the harness sets that must reach the server through the activator (it passes
/// almost none itself).
const HARNESS_ENV: [&str; 4] = [
    "HOTEXEC_PID_FILE",
    "HOTEXEC_READY_TIMEOUT",
    "HOTEXEC_DRAIN_TIMEOUT",
    "RUST_LOG",
];

/// `systemd-socket-activate -l ADDR… [--fdname=NAMES] -E VAR…`, passing the harness's
/// variables, those of the example's other listeners and those in `env`.
fn activator(
    tool: &str,
    listen: &[String],
    fdname: Option<&str>,
    env: &[(&str, &str)],
    example: &str,
) -> Vec<String> {
    let mut args = vec![tool.to_owned()];
    for l in listen {
        args.push("-l".into());
        args.push(l.clone());
    }
    if let Some(n) = fdname {
        args.push(format!("--fdname={n}"));
    }
    let vars = HARNESS_ENV
        .iter()
        .chain(extra_listeners(example))
        .copied()
        .chain(env.iter().map(|(k, _)| *k));
    for v in vars {
        args.push("-E".into());
        args.push(v.to_owned());
    }
    args
}

fn addr(port: u16) -> SocketAddr {
    format!("127.0.0.1:{port}").parse().unwrap()
}

/// Nothing listens on `a`: the server did not bind the declared address.
fn assert_not_listening(a: SocketAddr, what: &str) {
    assert_eq!(
        get(a, "/", Duration::from_secs(5)),
        Outcome::Refused,
        "{what}: something listens on {a}"
    );
}

/// One line over the multi example's Unix listener at `path`: `pid=<pid> <line>`.
fn unix_echo(path: &Path, line: &str) -> Result<u32, String> {
    let mut s =
        UnixStream::connect(path).map_err(|e| format!("connect {}: {e}", path.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(format!("{line}\n").as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let mut answer = String::new();
    BufReader::new(&s)
        .read_line(&mut answer)
        .map_err(|e| format!("read: {e}"))?;
    let rest = answer
        .strip_prefix("pid=")
        .ok_or_else(|| format!("answer {answer:?}"))?;
    let (pid, echoed) = rest
        .split_once(' ')
        .ok_or_else(|| format!("answer {answer:?}"))?;
    if echoed.trim_end() != line {
        return Err(format!("answer {answer:?}"));
    }
    pid.parse().map_err(|_| format!("answer {answer:?}"))
}

/// One datagram to the multi example's UDP socket at `to`: `pid=<pid> <payload>`.
fn udp_echo(to: SocketAddr) -> Result<u32, String> {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.send_to(b"ping", to).map_err(|e| format!("send: {e}"))?;
    let mut buf = [0u8; 256];
    let n = s.recv(&mut buf).map_err(|e| format!("recv: {e}"))?;
    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
    text.strip_prefix("pid=")
        .and_then(|r| r.strip_suffix(" ping"))
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| format!("answer {text:?}"))
}

/// An upgrade under load on `at`: every request answered; returns the new pid.
fn upgrade_under_load(app: &App, at: SocketAddr, what: &str) -> u32 {
    let load = Load::start(at, 4);
    std::thread::sleep(Duration::from_millis(300));
    let (_, new) = app.upgrade();
    // Requests keep coming while the old generation drains.
    std::thread::sleep(Duration::from_millis(500));
    let results = load.finish();
    assert_no_failures(what, &results);
    new
}

/// The case of the report: `systemd-socket-activate -l 127.0.0.1:P --fdname=http` in front of a
/// server that declares `http` elsewhere. The activator's socket is served, starting with the
/// connection that woke it; the declared address is never bound; upgrades under load lose
/// nothing, and a new build that declares yet another address keeps the activated socket.
#[test]
fn an_activated_socket_on_another_address_is_served_and_kept_across_upgrades() {
    let Some(tool) = tool("systemd-socket-activate") else {
        return;
    };
    let activated = addr(free_port());
    let declared = addr(free_port());
    let declared_s = declared.to_string();
    let env = [("HOTEXEC_LISTEN_HTTP", declared_s.as_str())];
    let wrapper = activator(&tool, &[activated.to_string()], Some("http"), &env, "http");
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let (mut app, first) = App::start_activated("http", activated, &env, &wrapper);
    let p1 = app.first_pid();
    assert_eq!(
        first,
        Outcome::Ok { pid: p1 },
        "the connection that triggered the activation"
    );
    app.wait_pid_file(p1);
    assert_not_listening(declared, "the declared address of generation 1");
    assert!(
        !app.log_text().contains("closing the inherited socket"),
        "the activated socket was closed"
    );
    // The admin listener was not passed: the server bound it itself, as declared.
    let admin = app.listener("HOTEXEC_LISTEN_ADMIN");
    assert!(
        std::net::TcpStream::connect(admin).is_ok(),
        "admin on {admin}"
    );

    let p2 = upgrade_under_load(&app, activated, "upgrade of an activated socket");
    assert_eq!(
        get(activated, "/", Duration::from_secs(5)),
        Outcome::Ok { pid: p2 }
    );
    app.wait_exit(p1, Duration::from_secs(30));

    // A new build whose literal is another address. For the runtime a `HOTEXEC_LISTEN_HTTP`
    // override is the declared address (the literal is only its default), so the new build is
    // the same binary with another value in its environment, set by the file the upgrade
    // executes. Provenance travelled with the hand-over: the socket is still the activator's.
    let changed = addr(free_port());
    app.replace_binary(Some(&format!(
        "#!/bin/sh\nHOTEXEC_LISTEN_HTTP={changed} exec {} \"$@\"\n",
        app.good_binary().display()
    )));
    let p3 = upgrade_under_load(
        &app,
        activated,
        "upgrade to a build declaring another address",
    );
    assert_eq!(
        get(activated, "/", Duration::from_secs(5)),
        Outcome::Ok { pid: p3 }
    );
    assert_not_listening(changed, "the address the new build declares");
    assert_not_listening(declared, "the address the first build declared");
    app.wait_log(
        &format!("declared on tcp:{changed} but the service manager passed"),
        1,
        Duration::from_secs(5),
    );
    assert!(!app.log_text().contains("closing the inherited socket"));
    app.wait_exit(p2, Duration::from_secs(30));
    // And the one after, started by that build, keeps it too.
    app.replace_binary(None);
    let p4 = upgrade_under_load(&app, activated, "upgrade back to the first build");
    assert_eq!(
        get(activated, "/", Duration::from_secs(5)),
        Outcome::Ok { pid: p4 }
    );
    assert_not_listening(changed, "the address of the build before");
    // No generation ever bound a socket for `http`; each of the 4 adopted it. (Generation 1
    // bound `admin`, which was not passed: the needle's form is right.)
    let log = app.plain_log();
    assert!(!log.contains("listening listener=http"), "{log}");
    assert!(log.contains("listening listener=admin"), "{log}");
    assert_eq!(
        log.matches("adopted inherited listener listener=http")
            .count(),
        4,
        "{log}"
    );
}

/// Several sockets without `--fdname` (no `LISTEN_FDNAMES`): a dual-stack `[::]:T` serves a
/// listener declared on `0.0.0.0:T`, `127.0.0.1:D` the one declared there, and the only Unix
/// socket the only Unix listener although its path is another; the UDP listener, not passed,
/// is bound by the server as declared. Then an upgrade under load.
#[test]
fn unnamed_activated_sockets_are_matched_by_address_dual_stack_and_kind() {
    let Some(tool) = tool("systemd-socket-activate") else {
        return;
    };
    let dir = Scratch::new("activation-paths");
    let activated_path = dir.0.join("activated.sock");
    let declared_path = dir.0.join("declared.sock");
    let t = free_port();
    let d = addr(free_port());
    let u = addr(free_port());
    let tcp_decl = format!("0.0.0.0:{t}");
    let dual_decl = d.to_string();
    let unix_decl = format!("unix:{}", declared_path.display());
    let udp_decl = format!("udp:{u}");
    let env = [
        ("HOTEXEC_LISTEN_TCP", tcp_decl.as_str()),
        ("HOTEXEC_LISTEN_DUAL", dual_decl.as_str()),
        ("HOTEXEC_LISTEN_UNIX", unix_decl.as_str()),
        ("HOTEXEC_LISTEN_UDP", udp_decl.as_str()),
    ];
    let listen = [
        format!("[::]:{t}"),
        d.to_string(),
        activated_path.display().to_string(),
    ];
    let wrapper = activator(&tool, &listen, None, &env, "multi");
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    // Through IPv4: the dual-stack socket.
    let (mut app, first) = App::start_activated("multi", addr(t), &env, &wrapper);
    let p1 = app.first_pid();
    assert_eq!(first, Outcome::Ok { pid: p1 }, "the activating connection");
    app.wait_pid_file(p1);
    assert_eq!(get(d, "/", Duration::from_secs(5)), Outcome::Ok { pid: p1 });
    assert_eq!(unix_echo(&activated_path, "hello"), Ok(p1));
    assert!(
        !declared_path.exists(),
        "the server bound the declared Unix path instead of serving the activator's"
    );
    assert_eq!(udp_echo(u), Ok(p1), "the UDP listener the server bound");
    let log = app.plain_log();
    assert!(!log.contains("closing the inherited socket"), "{log}");
    assert!(log.contains("listening listener=udp"), "{log}");
    for name in ["tcp", "dual", "unix"] {
        assert!(
            log.contains(&format!("adopted inherited listener listener={name}")),
            "{name}: {log}"
        );
    }

    let p2 = upgrade_under_load(&app, addr(t), "upgrade of unnamed activated sockets");
    app.wait_exit(p1, Duration::from_secs(30));
    assert_eq!(
        get(addr(t), "/", Duration::from_secs(5)),
        Outcome::Ok { pid: p2 }
    );
    assert_eq!(get(d, "/", Duration::from_secs(5)), Outcome::Ok { pid: p2 });
    assert_eq!(unix_echo(&activated_path, "again"), Ok(p2));
    assert_eq!(udp_echo(u), Ok(p2));
    assert!(!declared_path.exists());
}

/// Two unnamed TCP sockets, neither on a declared address, for two TCP listeners: which is
/// which cannot be told, so the server refuses to start and says why, naming both fds and both
/// listeners; it binds nothing of its own.
#[test]
fn ambiguous_activated_sockets_are_refused_naming_the_fds_and_the_listeners() {
    let Some(tool) = tool("systemd-socket-activate") else {
        return;
    };
    let a = addr(free_port());
    let b = addr(free_port());
    let declared = addr(free_port());
    let declared_s = declared.to_string();
    let env = [("HOTEXEC_LISTEN_HTTP", declared_s.as_str())];
    let wrapper = activator(&tool, &[a.to_string(), b.to_string()], None, &env, "http");
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let (mut app, first) = App::start_activated("http", a, &env, &wrapper);
    assert!(
        !matches!(first, Outcome::Ok { .. }),
        "an ambiguous activation was served: {first:?}"
    );
    let p1 = app.first_pid();
    let status = app.wait_exit(p1, Duration::from_secs(10));
    assert!(
        matches!(status, WaitStatus::Exited(_, 1)),
        "{status:?}\n{}",
        app.log_text()
    );
    let log = app.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("cannot start"))
        .unwrap_or_else(|| panic!("no error in the log:\n{log}"));
    for needle in [
        "fd 3",
        "fd 4",
        &format!("tcp:{a}"),
        &format!("tcp:{b}"),
        "\"http\"",
        "\"admin\"",
        &format!("tcp:{declared}"),
    ] {
        assert!(line.contains(needle), "{needle:?} missing from: {line}");
    }
    eprintln!("the refusal: {line}");
    assert_not_listening(declared, "the refused server");
    assert_not_listening(app.listener("HOTEXEC_LISTEN_ADMIN"), "the refused server");
}

/// systemd's default names: a `.socket` unit without `FileDescriptorName=` gives each of its fds
/// the unit's name (here both). The socket on the admin listener's address serves it; the other,
/// the only TCP socket left, serves the only TCP listener left, `http`, declared elsewhere.
#[test]
fn sockets_named_after_their_unit_are_matched_by_address_then_by_kind() {
    let Some(tool) = tool("systemd-socket-activate") else {
        return;
    };
    let activated = addr(free_port());
    let admin = addr(free_port());
    let declared = addr(free_port());
    let (declared_s, admin_s) = (declared.to_string(), admin.to_string());
    let env = [
        ("HOTEXEC_LISTEN_HTTP", declared_s.as_str()),
        ("HOTEXEC_LISTEN_ADMIN", admin_s.as_str()),
    ];
    let wrapper = activator(
        &tool,
        &[activated.to_string(), admin.to_string()],
        Some("hotexec-http.socket:hotexec-http.socket"),
        &env,
        "http",
    );
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let (app, first) = App::start_activated("http", activated, &env, &wrapper);
    let p1 = app.first_pid();
    assert_eq!(first, Outcome::Ok { pid: p1 }, "the activating connection");
    app.wait_pid_file(p1);
    assert_not_listening(declared, "the declared address of http");
    let log = app.log_text();
    assert_eq!(
        log.matches("adopted inherited listener").count(),
        2,
        "both listeners served on the passed sockets:\n{log}"
    );
    assert!(
        log.contains("the only tcp socket left, for the only tcp listener left"),
        "{log}"
    );
    // The admin listener answers on the passed socket (404: it serves only POST /upgrade).
    let answer = get_text(admin, "/", Duration::from_secs(5)).unwrap_err();
    assert!(answer.contains("HTTP/1.1 404"), "{answer}");
}

/// In keeper mode the activator starts the keeper, which hands the sockets to generation 1
/// with a readiness pipe, as an upgrade does: it says they are the service manager's, so
/// generation 1 and its successor serve them, not the declared address.
#[test]
fn under_a_keeper_every_generation_serves_the_activated_socket() {
    let Some(tool) = tool("systemd-socket-activate") else {
        return;
    };
    let activated = addr(free_port());
    let declared = addr(free_port());
    let declared_s = declared.to_string();
    let env = [
        ("HOTEXEC_LISTEN_HTTP", declared_s.as_str()),
        ("HOTEXEC_KEEPER", "1"),
    ];
    let wrapper = activator(&tool, &[activated.to_string()], Some("http"), &env, "http");
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let (app, first) = App::start_activated("http", activated, &env, &wrapper);
    let keeper = app.first_pid();
    let Outcome::Ok { pid: g1 } = first else {
        panic!("the activating connection: {first:?}");
    };
    assert_ne!(g1, keeper, "generation 1 serves, not the keeper");
    app.wait_pid_file(keeper);
    assert_not_listening(declared, "generation 1");

    let load = Load::start(activated, 4);
    std::thread::sleep(Duration::from_millis(300));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(keeper as i32),
        nix::sys::signal::Signal::SIGUSR2,
    )
    .unwrap();
    let g2 = wait_for(
        Duration::from_secs(10),
        "generation 2 to serve",
        || match get(activated, "/", Duration::from_secs(5)) {
            Outcome::Ok { pid } if pid != g1 && pid != keeper => Some(pid),
            _ => None,
        },
    );
    std::thread::sleep(Duration::from_millis(500));
    let results = load.finish();
    assert_no_failures("upgrade under a keeper of an activated socket", &results);
    assert_eq!(
        get(activated, "/", Duration::from_secs(5)),
        Outcome::Ok { pid: g2 }
    );
    assert_not_listening(declared, "generation 2");
    let log = app.plain_log();
    assert!(!log.contains("listening listener=http"), "{log}");
}

/// The contrast: a socket hotexec bound itself follows the declaration. A new build that
/// declares another address binds that one, closes the old socket, and says so.
#[test]
fn a_socket_hotexec_bound_moves_to_the_address_a_new_build_declares() {
    let mut app = App::start("http", "HOTEXEC_LISTEN_HTTP", &[]);
    let p1 = app.first_pid();
    let changed = addr(free_port());
    app.replace_binary(Some(&format!(
        "#!/bin/sh\nHOTEXEC_LISTEN_HTTP={changed} exec {} \"$@\"\n",
        app.good_binary().display()
    )));
    let (_, p2) = app.upgrade();
    assert_eq!(
        get(changed, "/", Duration::from_secs(5)),
        Outcome::Ok { pid: p2 }
    );
    app.wait_log(
        &format!("is on tcp:{} but it is now declared on tcp:{changed}: binding the new address, closing the inherited socket", app.addr),
        1,
        Duration::from_secs(5),
    );
    app.wait_exit(p1, Duration::from_secs(30));
    assert_not_listening(app.addr, "the old build's address, once it has drained");
}

/// A datagram socket (`-d`): the datagram that woke the activator is answered by the server it
/// started; the only UDP socket serves the only UDP listener, declared elsewhere, while the
/// TCP and Unix listeners, not passed, are bound as declared. Then an upgrade.
#[test]
fn an_activated_udp_socket_answers_the_datagram_that_started_the_server() {
    let Some(tool) = tool("systemd-socket-activate") else {
        return;
    };
    let dir = Scratch::new("activation-udp");
    let activated = addr(free_port());
    let (tcp, dual, udp) = (
        addr(free_port()).to_string(),
        addr(free_port()).to_string(),
        format!("udp:{}", addr(free_port())),
    );
    let unix = format!("unix:{}", dir.0.join("declared.sock").display());
    let env = [
        ("HOTEXEC_LISTEN_TCP", tcp.as_str()),
        ("HOTEXEC_LISTEN_DUAL", dual.as_str()),
        ("HOTEXEC_LISTEN_UNIX", unix.as_str()),
        ("HOTEXEC_LISTEN_UDP", udp.as_str()),
    ];
    let mut wrapper = activator(&tool, &[activated.to_string()], None, &env, "multi");
    wrapper.insert(1, "-d".into());
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let (mut app, first) =
        App::start_activated_with("multi", activated, &env, &wrapper, |app: &App| {
            // One datagram, sent once the activator has bound (it says so): that one wakes it.
            app.wait_log(
                &format!("Listening on {activated} as 3."),
                1,
                Duration::from_secs(10),
            );
            udp_echo(activated)
        });
    let p1 = app.first_pid();
    assert_eq!(first, Ok(p1), "the datagram that started the server");
    app.wait_pid_file(p1);
    let log = app.plain_log();
    assert!(
        log.contains("adopted inherited listener listener=udp")
            && !log.contains("listening listener=udp")
            && log.contains("listening listener=tcp"),
        "{log}"
    );
    assert!(log.contains("the only udp socket left, for the only udp listener left"));

    let (_, p2) = app.upgrade();
    app.wait_exit(p1, Duration::from_secs(30));
    assert_eq!(udp_echo(activated), Ok(p2));
}
