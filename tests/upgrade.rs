//! The core promise, end to end: upgrades under load lose nothing; slow requests finish on the
//! old process; failed upgrades leave the running service untouched.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use hotexec_testkit::prelude::*;

const HTTP: &str = "HOTEXEC_LISTEN_HTTP";

#[test]
fn upgrades_under_load_lose_no_request() {
    let mut app = App::start("http", HTTP, &[]);
    let load = Load::start(app.addr, 6);
    std::thread::sleep(Duration::from_millis(400));
    let mut upgrades = Vec::new();
    for _ in 0..4 {
        let t0 = Instant::now();
        let (old, new) = app.upgrade();
        upgrades.push((t0, old, new));
        std::thread::sleep(Duration::from_millis(700));
    }
    let results = load.finish();
    let failed = failures(&results);
    let last = upgrades.last().unwrap().2;
    for (_, old, _) in &upgrades {
        let st = app.wait_exit(*old, Duration::from_secs(30));
        assert!(
            matches!(st, nix::sys::wait::WaitStatus::Exited(_, 0 | -1)),
            "old generation {old} ended with {st:?}"
        );
    }
    // Figures for the closing note: signal → first response from the new pid.
    let mut latencies = Vec::new();
    for (t0, _, new) in &upgrades {
        if let Some((t, _)) = results
            .iter()
            .find(|(t, o)| *t >= *t0 && *o == Outcome::Ok { pid: *new })
        {
            latencies.push(t.duration_since(*t0));
        }
    }
    eprintln!(
        "upgrade under load: {} requests, {} failed, {} upgrades, signal→first response from new pid: {:?}",
        results.len(),
        failed.len(),
        upgrades.len(),
        latencies
    );
    assert!(
        results.len() > 100,
        "load generator made only {} requests",
        results.len()
    );
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {:?}",
        failed.len(),
        results.len(),
        &failed[..failed.len().min(10)]
    );
    assert_eq!(app.pid_in_file(), Some(last));
    assert_eq!(
        latencies.len(),
        upgrades.len(),
        "a new generation never answered"
    );
    // After the last upgrade, only the last generation answers.
    let tail: Vec<_> = results.iter().rev().take(20).collect();
    assert!(
        tail.iter().all(|(_, o)| *o == Outcome::Ok { pid: last }),
        "{tail:?}"
    );
    answered_by(app.addr, last, Duration::from_secs(5));
}

#[test]
fn slow_request_finishes_on_the_old_process() {
    let mut app = App::start("http", HTTP, &[]);
    let old = app.first_pid();
    let addr = app.addr;
    let slow = std::thread::spawn(move || get(addr, "/slow?ms=1500", Duration::from_secs(10)));
    std::thread::sleep(Duration::from_millis(300));
    let (_, new) = app.upgrade();
    answered_by(app.addr, new, Duration::from_secs(5));
    assert!(
        alive(old),
        "the old process must still be draining the slow request"
    );
    assert_eq!(slow.join().unwrap(), Outcome::Ok { pid: old });
    // It lives until the new generation's health verdict: with the few requests of this test
    // that is the longest probation (`max_probation`, 10 s), then it exits.
    app.wait_exit(old, Duration::from_secs(30));
}

#[test]
fn request_slower_than_drain_timeout_is_cut_at_the_timeout() {
    let mut app = App::start("http", HTTP, &[("HOTEXEC_DRAIN_TIMEOUT", "1s")]);
    let old = app.first_pid();
    let addr = app.addr;
    let slow = std::thread::spawn(move || get(addr, "/slow?ms=8000", Duration::from_secs(15)));
    std::thread::sleep(Duration::from_millis(300));
    let (_, new) = app.upgrade();
    let handed_over = Instant::now();
    // Bounded by when the 8 s request would have completed (not a timing claim: exiting any
    // later would mean the drain timeout did not cut it).
    app.wait_exit(old, Duration::from_secs(7));
    let drained_for = handed_over.elapsed();
    let cut = slow.join().unwrap();
    assert!(
        !matches!(cut, Outcome::Ok { .. }),
        "the 8 s request cannot have completed: {cut:?}"
    );
    assert!(
        drained_for >= Duration::from_millis(800),
        "old process exited after {drained_for:?}, before the 1 s drain timeout"
    );
    assert!(
        app.log_text().contains("drain timeout"),
        "the cut is logged"
    );
    answered_by(app.addr, new, Duration::from_secs(5));
}

/// Each bad binary: the old process keeps serving with zero failed requests, the pid file is
/// unchanged, no child (zombie or not) is left behind; then a good binary upgrades fine.
#[test]
fn failed_upgrades_leave_the_service_untouched() {
    let mut app = App::start("http", HTTP, &[("HOTEXEC_READY_TIMEOUT", "1s")]);
    let pid = app.first_pid();
    let load = Load::start(app.addr, 4);
    type BreakIt = Box<dyn Fn(&App)>;
    let cases: [(&str, BreakIt, &str); 4] = [
        (
            "exits 1",
            Box::new(|a: &App| a.replace_binary(Some("#!/bin/sh\nexit 1\n"))),
            "exit status 1",
        ),
        (
            "hangs",
            Box::new(|a: &App| a.replace_binary(Some("#!/bin/sh\nexec sleep 600\n"))),
            "did not report ready",
        ),
        (
            "removed",
            Box::new(|a: &App| a.remove_binary()),
            "No such file",
        ),
        (
            "not executable",
            Box::new(|a: &App| {
                a.replace_binary(Some("#!/bin/sh\nexit 0\n"));
                std::fs::set_permissions(
                    &a.bin,
                    std::os::unix::fs::PermissionsExt::from_mode(0o644),
                )
                .unwrap();
            }),
            "Permission denied",
        ),
    ];
    for (i, (what, break_it, expect)) in cases.iter().enumerate() {
        break_it(&app);
        app.signal_upgrade();
        app.wait_log("upgrade failed", i + 1, Duration::from_secs(10));
        let log = app.log_text();
        let line = log
            .lines()
            .filter(|l| l.contains("upgrade failed"))
            .nth(i)
            .unwrap()
            .to_string();
        assert!(
            line.contains(expect),
            "{what}: log line {line:?} should say {expect:?}"
        );
        assert_eq!(app.pid_in_file(), Some(pid), "{what}: pid file changed");
        assert!(
            children_of(pid).is_empty(),
            "{what}: left children {:?}",
            children_of(pid)
        );
        assert!(alive(pid), "{what}: the serving process died");
    }
    app.replace_binary(None);
    let (_, new) = app.upgrade();
    std::thread::sleep(Duration::from_millis(300));
    let results = load.finish();
    assert_no_failures("failed upgrades", &results);
    assert!(results.iter().any(|(_, o)| *o == Outcome::Ok { pid: new }));
    app.wait_exit(pid, Duration::from_secs(15));
}

#[test]
fn upgrade_signal_during_an_upgrade_is_ignored() {
    let app = App::start("http", HTTP, &[("HOTEXEC_READY_TIMEOUT", "1500ms")]);
    let pid = app.first_pid();
    app.replace_binary(Some("#!/bin/sh\nexec sleep 600\n"));
    app.signal_upgrade();
    std::thread::sleep(Duration::from_millis(200));
    app.signal_upgrade();
    app.wait_log("upgrade failed", 1, Duration::from_secs(10));
    assert!(app.log_text().contains("an upgrade is already running"));
    assert_eq!(app.log_text().matches("upgrade: starting").count(), 1);
    assert!(children_of(pid).is_empty());
    assert_eq!(
        get(app.addr, "/", Duration::from_secs(5)),
        Outcome::Ok { pid }
    );
}

#[test]
fn sigterm_drains_and_removes_the_pid_file() {
    let mut app = App::start("http", HTTP, &[]);
    let pid = app.first_pid();
    let addr = app.addr;
    let slow = std::thread::spawn(move || get(addr, "/slow?ms=800", Duration::from_secs(10)));
    std::thread::sleep(Duration::from_millis(200));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert_eq!(slow.join().unwrap(), Outcome::Ok { pid });
    let st = app.wait_exit(pid, Duration::from_secs(10));
    assert!(
        matches!(st, nix::sys::wait::WaitStatus::Exited(_, 0)),
        "{st:?}"
    );
    assert!(
        !app.pid_file.exists(),
        "pid file must be removed on a final stop"
    );
}

#[test]
fn sync_echo_example_upgrades_with_sessions_open() {
    let mut app = App::start("echo", "HOTEXEC_LISTEN_ECHO", &[]);
    let old = app.first_pid();
    let mut session = TcpStream::connect(app.addr).unwrap();
    session
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut reader = BufReader::new(session.try_clone().unwrap());
    let mut line = String::new();
    writeln!(session, "before").unwrap();
    reader.read_line(&mut line).unwrap();
    assert_eq!(line, "before\n");
    let (_, new) = app.upgrade();
    // The open session is still served by the old process, which drains it.
    line.clear();
    writeln!(session, "during").unwrap();
    reader.read_line(&mut line).unwrap();
    assert_eq!(line, "during\n");
    assert!(alive(old));
    // New sessions go to the new process.
    let mut s2 = TcpStream::connect(app.addr).unwrap();
    s2.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    writeln!(s2, "new").unwrap();
    let mut l2 = String::new();
    BufReader::new(s2.try_clone().unwrap())
        .read_line(&mut l2)
        .unwrap();
    assert_eq!(l2, "new\n");
    drop(reader);
    drop(session);
    app.wait_exit(old, Duration::from_secs(5));
    assert!(alive(new));
}
