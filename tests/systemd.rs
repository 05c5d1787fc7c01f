//! systemd, both ways, against the real things: socket activation by Debian's
//! `systemd-socket-activate` (then an upgrade), the `sd_notify` protocol read from a real
//! `AF_UNIX` datagram socket this test binds (path and abstract addresses, sender pid checked
//! with `SO_PASSCRED`), and a new generation that is not a hotexec program at all (a
//! `listenfd`-based server reporting `READY=1`).

use std::path::Path;
use std::time::Duration;

use hotexec_testkit::prelude::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const HTTP: &str = "HOTEXEC_LISTEN_HTTP";

fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into `ts`, which lives for the call.
    assert_eq!(
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) },
        0
    );
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}

/// The sequence of a service's life, message by message, with who sent each.
fn notify_sequence(n: NotifySocket) {
    let mut app = App::start("http", HTTP, &[("NOTIFY_SOCKET", n.env.as_str())]);
    let p1 = app.first_pid();
    assert_eq!(n.expect("READY=1"), ("READY=1".to_string(), p1));

    // An upgrade: the old process (the main pid) says it reloads, then hands the main pid over
    // and says ready, in one datagram.
    let before = monotonic_usec();
    let (_, p2) = app.upgrade();
    let (msg, from) = n.expect("RELOADING=1");
    assert_eq!(from, p1);
    let usec: u64 = msg
        .strip_prefix("RELOADING=1\nMONOTONIC_USEC=")
        .unwrap_or_else(|| panic!("{msg:?}"))
        .parse()
        .unwrap();
    assert!(
        before <= usec && usec <= monotonic_usec(),
        "MONOTONIC_USEC={usec}"
    );
    assert_eq!(n.expect("MAINPID"), (format!("MAINPID={p2}\nREADY=1"), p1));
    // The new generation did not announce itself (it is not the main pid until systemd has read
    // the hand-over), and the old one, now draining, says nothing more.
    app.wait_exit(p1, Duration::from_secs(30));

    // A failed upgrade, from the new main pid: reloading, then ready again with no MAINPID.
    app.replace_binary(Some("#!/bin/sh\nexit 3\n"));
    kill(Pid::from_raw(p2 as i32), Signal::SIGUSR2).unwrap();
    let (msg, from) = n.expect("RELOADING=1 of the failed upgrade");
    assert!(msg.starts_with("RELOADING=1\nMONOTONIC_USEC="), "{msg:?}");
    assert_eq!(from, p2);
    assert_eq!(
        n.expect("READY=1 after the failure"),
        ("READY=1".to_string(), p2)
    );
    app.replace_binary(None);

    // A final stop.
    kill(Pid::from_raw(p2 as i32), Signal::SIGTERM).unwrap();
    assert_eq!(n.expect("STOPPING=1"), ("STOPPING=1".to_string(), p2));
    app.wait_exit(p2, Duration::from_secs(30));
    assert_eq!(n.next(Duration::ZERO), None, "nothing after STOPPING=1");
}

#[test]
fn notify_sequence_on_a_path_socket() {
    let dir = Scratch::new("notify-path");
    notify_sequence(NotifySocket::at_path(&dir.0.join("notify")));
}

#[test]
fn notify_sequence_on_an_abstract_socket() {
    notify_sequence(NotifySocket::abstract_name("abstract"));
}

/// Variables `systemd-socket-activate` must pass to the server (it passes almost none itself).
const PASS_ENV: [&str; 14] = [
    "-E",
    "HOTEXEC_PID_FILE",
    // The http example's admin listener gets its own free port (the test kit's `App`), which must
    // reach the server through the activator too, or parallel tests collide on 8081.
    "-E",
    "HOTEXEC_LISTEN_ADMIN",
    "-E",
    "HOTEXEC_READY_TIMEOUT",
    "-E",
    "HOTEXEC_DRAIN_TIMEOUT",
    "-E",
    "RUST_LOG",
    "-E",
    HTTP,
    "-E",
    "NOTIFY_SOCKET",
];

#[test]
fn socket_activated_by_systemd_socket_activate_then_upgraded() {
    let Some(activate) = tool("systemd-socket-activate") else {
        return;
    };
    let n = NotifySocket::abstract_name("activate");
    let mut wrapper = vec![activate.as_str(), "-l", "{addr}", "--fdname=http"];
    wrapper.extend(PASS_ENV);
    let mut app = App::start_via("http", HTTP, &[("NOTIFY_SOCKET", n.env.as_str())], &wrapper);
    let p1 = app.pid_in_file().unwrap();
    // The tool execs the server in place, with LISTEN_PID naming itself.
    assert_eq!(p1, app.first_pid());
    app.wait_log("adopted inherited listener", 1, Duration::from_secs(5));
    // (The needle once held the colour codes' place and could never match; `admin`, which the
    // activator does not pass, shows the form is right.)
    let log = app.plain_log();
    assert!(
        !log.contains("listening listener=http") && log.contains("listening listener=admin"),
        "the server bound a socket of its own instead of adopting the activator's:\n{log}"
    );
    assert_eq!(
        get(app.addr, "/", Duration::from_secs(5)),
        Outcome::Ok { pid: p1 }
    );
    assert_eq!(n.expect("READY=1"), ("READY=1".to_string(), p1));

    let load = Load::start(app.addr, 4);
    std::thread::sleep(Duration::from_millis(300));
    let (_, p2) = app.upgrade();
    std::thread::sleep(Duration::from_millis(500));
    let results = load.finish();
    assert_no_failures("socket-activated upgrade under load", &results);
    answered_by(app.addr, p2, Duration::from_secs(5));
    app.wait_log("adopted inherited listener", 2, Duration::from_secs(5));
    assert!(n.expect("RELOADING=1").0.starts_with("RELOADING=1"));
    assert_eq!(n.expect("MAINPID"), (format!("MAINPID={p2}\nREADY=1"), p1));
    app.wait_exit(p1, Duration::from_secs(30));
    answered_by(app.addr, p2, Duration::from_secs(5));
}

#[test]
fn socket_activation_without_names_matches_by_address() {
    let Some(activate) = tool("systemd-socket-activate") else {
        return;
    };
    let mut wrapper = vec![activate.as_str(), "-l", "{addr}"];
    wrapper.extend(PASS_ENV);
    let app = App::start_via("http", HTTP, &[], &wrapper);
    let p1 = app.pid_in_file().unwrap();
    app.wait_log("adopted inherited listener", 1, Duration::from_secs(5));
    assert_eq!(
        get(app.addr, "/", Duration::from_secs(5)),
        Outcome::Ok { pid: p1 }
    );
}

#[test]
fn a_listenfd_program_with_sd_notify_can_be_the_new_generation() {
    let n = NotifySocket::abstract_name("listenfd");
    let mut app = App::start("http", HTTP, &[("NOTIFY_SOCKET", n.env.as_str())]);
    let p1 = app.first_pid();
    assert_eq!(n.expect("READY=1"), ("READY=1".to_string(), p1));
    let load = Load::start(app.addr, 4);
    std::thread::sleep(Duration::from_millis(300));
    app.install_binary(&example("listenfd_server"));
    let (_, p2) = app.upgrade();
    std::thread::sleep(Duration::from_millis(500));
    let results = load.finish();
    assert_no_failures("upgrade to the listenfd program under load", &results);
    // It is the listenfd program that serves now, and it became the main pid.
    app.wait_log(
        &format!("listenfd_server {p2} serving"),
        1,
        Duration::from_secs(5),
    );
    assert!(
        app.log_text()
            .contains("reported READY=1 on its notify socket")
    );
    answered_by(app.addr, p2, Duration::from_secs(5));
    assert!(n.expect("RELOADING=1").0.starts_with("RELOADING=1"));
    assert_eq!(n.expect("MAINPID"), (format!("MAINPID={p2}\nREADY=1"), p1));
    // Its READY=1 went to the old generation's private socket, not to the service manager's.
    app.wait_exit(p1, Duration::from_secs(30));
    assert_eq!(n.next(Duration::ZERO), None);
    answered_by(app.addr, p2, Duration::from_secs(5));
}

#[test]
fn example_unit_files_pass_systemd_analyze_verify() {
    let Some(analyze) = tool("systemd-analyze") else {
        return;
    };
    let dir = Scratch::new("units");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/systemd");
    let bin = dir.0.join("hotexec-http");
    copy_exe(&example("http"), &bin);
    for unit in ["hotexec-http.service", "hotexec-http.socket"] {
        let text = std::fs::read_to_string(src.join(unit)).unwrap();
        // The units name the installed path; verify checks that ExecStart is executable.
        let text = text.replace("/usr/local/bin/hotexec-http", bin.to_str().unwrap());
        std::fs::write(dir.0.join(unit), text).unwrap();
    }
    // Panics, with the output, if verify fails or outlives the limit.
    let text = hotexec_testkit::tools::run(
        std::process::Command::new(analyze)
            .arg("verify")
            .arg(dir.0.join("hotexec-http.socket"))
            .arg(dir.0.join("hotexec-http.service")),
        "systemd",
        Duration::from_secs(60),
    );
    // verify exits 0 on unknown keys and bad values too, with a warning: none is allowed.
    assert!(text.trim().is_empty(), "{text}");
}
