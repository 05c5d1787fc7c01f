//! Faults around an upgrade, each under continuous client load: a new binary that panics, is
//! killed while starting or crashes right after taking over; the old process killed while it
//! drains; SIGTERM in the middle of an upgrade; a storm of upgrade signals.
//! (Missing, not executable, exit 1 and hang-until-`ready_timeout` are in tests/upgrade.rs.)

use std::time::{Duration, Instant};

use hotexec_testkit::prelude::*;
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;

const HTTP: &str = "HOTEXEC_LISTEN_HTTP";
const T: Duration = Duration::from_secs(10);
const CLIENTS: usize = 4;

fn signal(pid: u32, sig: Signal) {
    kill(Pid::from_raw(pid as i32), sig).unwrap();
}

#[test]
fn new_binary_panics_before_ready() {
    let app = App::start("http", HTTP, &[]);
    let pid = app.first_pid();
    let load = Load::start(app.addr, CLIENTS);
    std::thread::sleep(Duration::from_millis(200));
    app.install_faulty("panic");
    app.signal_upgrade();
    let line = app.nth_failure(1, T);
    assert!(line.contains("exit status 101"), "{line}");
    assert!(app.log_text().contains("panics before it is ready"));
    std::thread::sleep(Duration::from_millis(200));
    assert_no_failures("panic before ready", &load.finish());
    assert_eq!(app.pid_in_file(), Some(pid));
    assert!(children_of(pid).is_empty(), "{:?}", children_of(pid));
    assert_eq!(get(app.addr, "/", T), Outcome::Ok { pid });
}

#[test]
fn new_binary_killed_while_starting() {
    let app = App::start("http", HTTP, &[]);
    let pid = app.first_pid();
    let load = Load::start(app.addr, CLIENTS);
    app.replace_binary(Some("#!/bin/sh\nexec sleep 600\n"));
    app.signal_upgrade();
    let child = wait_for(T, "the new process", || {
        children_of(pid).first().map(|(c, _)| *c)
    });
    std::thread::sleep(Duration::from_millis(200));
    signal(child, Signal::SIGKILL);
    let line = app.nth_failure(1, T);
    assert!(line.contains("killed by SIGKILL"), "{line}");
    std::thread::sleep(Duration::from_millis(200));
    assert_no_failures("new process SIGKILLed while starting", &load.finish());
    assert_eq!(app.pid_in_file(), Some(pid));
    assert!(!alive(child));
    assert!(children_of(pid).is_empty(), "{:?}", children_of(pid));
    // And the next upgrade works.
    app.replace_binary(None);
    let (_, new) = app.upgrade();
    answered_by(app.addr, new, T);
}

/// The new generation reports ready, takes over, and aborts 300 ms later. The old process still
/// holds the listening sockets (it is draining, and stays at least `HOTEXEC_PROBATION` after
/// the hand-over): it starts its own code again from `/proc/self/exe`, which serves on.
/// Connections queued in the backlog meanwhile are served by the rolled-back generation; only
/// requests the crashed process had already accepted are lost.
#[test]
fn new_binary_crashes_after_ready_and_the_old_code_is_rolled_back() {
    let mut app = App::start("http", HTTP, &[("HTTP_CLOSE_GRACE", "100ms")]);
    let old = app.first_pid();
    let load = Load::start(app.addr, CLIENTS);
    std::thread::sleep(Duration::from_millis(300));
    app.install_faulty("crash-after-ready=300");
    let (_, crashed) = app.upgrade();
    app.wait_log("rolled back", 1, T);
    let rolled = wait_for(T, "the pid file to name the rolled-back pid", || {
        app.pid_in_file().filter(|p| *p != crashed)
    });
    app.track(rolled);
    assert_ne!(rolled, old);
    std::thread::sleep(Duration::from_millis(500));
    let results = load.finish();
    let failed = failures(&results);
    let by = |p: u32| {
        results
            .iter()
            .filter(|(_, o)| *o == Outcome::Ok { pid: p })
            .count()
    };
    eprintln!(
        "crash after ready: {} requests, {} failed {:?}; served by old {}, crashed {}, rolled back {}",
        results.len(),
        failed.len(),
        failed,
        by(old),
        by(crashed),
        by(rolled)
    );
    assert!(by(crashed) > 0, "the faulty generation did take over");
    assert!(by(rolled) > 0, "the rolled-back generation serves");
    // Each client has at most one request in flight: at most that many were in the crashed
    // process when it died.
    assert!(
        failed.len() <= CLIENTS,
        "only requests accepted by the crashed process may fail: {failed:?}"
    );
    let log = app.log_text();
    assert!(
        log.contains("rolling back to this generation's code"),
        "{log}"
    );
    assert!(log.contains("killed by SIGABRT"), "{log}");
    // The rolled-back generation is the old code (the http example answers `pid=`, as faulty
    // does, so tell them apart by the log line only the http example writes).
    assert!(
        log.contains(&format!("http example serving pid={rolled}"))
            || log.contains(&format!(
                "http example serving \u{1b}[3mpid\u{1b}[0m\u{1b}[2m=\u{1b}[0m{rolled}"
            )),
        "{log}"
    );
    app.wait_exit(old, T);
    // It upgrades normally to a good binary later: its path on disk was kept.
    app.replace_binary(None);
    let (from, to) = app.upgrade();
    assert_eq!(from, rolled);
    answered_by(app.addr, to, T);
}

/// The old process is SIGKILLed while draining: the new one, which already holds the sockets,
/// serves on, and the pid file names it.
#[test]
fn old_process_killed_while_draining() {
    let mut app = App::start("http", HTTP, &[]);
    let old = app.first_pid();
    let addr = app.addr;
    // Keeps the old process draining.
    let slow = std::thread::spawn(move || get(addr, "/slow?ms=5000", T));
    std::thread::sleep(Duration::from_millis(200));
    let load = Load::start(app.addr, CLIENTS);
    std::thread::sleep(Duration::from_millis(200));
    let (_, new) = app.upgrade();
    // Let the load's requests in the old process finish (Connection: close, a few ms each).
    std::thread::sleep(Duration::from_millis(300));
    assert!(alive(old), "the old process must still be draining");
    signal(old, Signal::SIGKILL);
    let st = app.wait_exit(old, T);
    assert!(
        matches!(st, WaitStatus::Signaled(_, Signal::SIGKILL, _)),
        "{st:?}"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_no_failures("old process SIGKILLed while draining", &load.finish());
    // The request the killed process was serving is lost with it.
    assert!(!matches!(slow.join().unwrap(), Outcome::Ok { .. }));
    assert_eq!(app.pid_in_file(), Some(new));
    assert!(alive(new));
    answered_by(app.addr, new, T);
}

/// SIGTERM during an upgrade: the upgrade is abandoned (the half-started process is killed and
/// reaped), and the serving generation stops gracefully: in-flight work finishes, the pid file
/// is removed, nothing is left running.
#[test]
fn sigterm_during_an_upgrade_abandons_it_and_stops_gracefully() {
    let mut app = App::start("http", HTTP, &[]);
    let pid = app.first_pid();
    let load = Load::start(app.addr, CLIENTS);
    app.replace_binary(Some("#!/bin/sh\nexec sleep 600\n"));
    app.signal_upgrade();
    let child = wait_for(T, "the new process", || {
        children_of(pid).first().map(|(c, _)| *c)
    });
    std::thread::sleep(Duration::from_millis(300));
    assert_no_failures("during the upgrade", &load.finish());
    let addr = app.addr;
    let slow = std::thread::spawn(move || get(addr, "/slow?ms=800", T));
    std::thread::sleep(Duration::from_millis(200));
    signal(pid, Signal::SIGTERM);
    assert_eq!(slow.join().unwrap(), Outcome::Ok { pid });
    let st = app.wait_exit(pid, T);
    assert!(matches!(st, WaitStatus::Exited(_, 0)), "{st:?}");
    // Reaped by the server (not re-parented to us as an orphan): gone entirely.
    assert!(
        stat(child).is_none(),
        "the new process is left: {:?}",
        stat(child)
    );
    assert!(!app.pid_file.exists());
    let log = app.log_text();
    assert!(log.contains("stop signal during the upgrade"), "{log}");
}

fn field(line: &str, name: &str) -> Option<u32> {
    let at = line.find(&format!("{name}="))? + name.len() + 1;
    line[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// 100 upgrade signals in one second, each to the pid the pid file names at that moment: one
/// upgrade at a time (the generations form a single chain), every request answered, and in the
/// end every generation but the last has exited and been reaped; no zombie is left.
#[test]
fn signal_storm() {
    let mut app = App::start(
        "http",
        HTTP,
        &[("HTTP_CLOSE_GRACE", "50ms"), ("HOTEXEC_PROBATION", "200ms")],
    );
    let load = Load::start(app.addr, CLIENTS);
    std::thread::sleep(Duration::from_millis(200));
    let t0 = Instant::now();
    let mut zombies_seen = Vec::new();
    for i in 0..100u32 {
        if let Some(p) = app.pid_in_file() {
            app.track(p);
            let _ = kill(Pid::from_raw(p as i32), Signal::SIGUSR2);
        }
        if i % 10 == 0 {
            for p in app.pids.lock().unwrap().clone() {
                zombies_seen.extend(
                    children_of(p)
                        .into_iter()
                        .filter(|(_, s)| *s == 'Z')
                        .map(|(c, _)| (p, c)),
                );
            }
        }
        let next = t0 + Duration::from_millis(10 * (i as u64 + 1));
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    let storm = t0.elapsed();
    // Quiet: the last generation is serving and no upgrade is running.
    std::thread::sleep(Duration::from_millis(1500));
    let results = load.finish();
    let last = app.pid_in_file().unwrap();
    app.track(last);
    let log = strip_ansi(&app.log_text());
    let handovers: Vec<(u32, u32)> = log
        .lines()
        .filter(|l| l.contains("new generation is ready"))
        .map(|l| (field(l, "old_pid").unwrap(), field(l, "new_pid").unwrap()))
        .collect();
    let starts = log
        .lines()
        .filter(|l| l.contains("upgrade: starting"))
        .count();
    let coalesced = log
        .lines()
        .filter(|l| l.contains("upgrade signal ignored"))
        .count();
    eprintln!(
        "signal storm: 100 signals in {storm:?}: {} upgrades ({starts} started), {coalesced} signals ignored while busy or draining",
        handovers.len()
    );
    assert_no_failures("signal storm", &results);
    assert!(!handovers.is_empty());
    assert_eq!(starts, handovers.len(), "no upgrade failed");
    // A single chain from the first pid to the last: every generation handed over at most once,
    // to the next one. Followed by links, not by log order: several generations append to the
    // same log file, so two hand-over lines written within microseconds may land swapped.
    let next: std::collections::HashMap<u32, u32> = handovers.iter().copied().collect();
    assert_eq!(
        next.len(),
        handovers.len(),
        "a generation handed over twice: {handovers:?}"
    );
    let mut chain = vec![app.first_pid()];
    while let Some(&n) = next.get(chain.last().unwrap()) {
        assert!(!chain.contains(&n), "a cycle in {handovers:?}");
        chain.push(n);
    }
    assert_eq!(
        chain.len(),
        handovers.len() + 1,
        "generations do not form one chain from {}: {handovers:?}",
        app.first_pid()
    );
    assert_eq!(*chain.last().unwrap(), last);
    for (old, new) in &handovers {
        app.track(*old);
        app.track(*new);
    }
    // A generation that exits is a zombie until its parent's supervisor reaps it (it polls every
    // 50 ms while draining, later under load): seen once is no leak, still there is.
    wait_for(T, "every zombie seen during the storm to be reaped", || {
        zombies_seen
            .iter()
            .all(|(parent, child)| {
                children_of(*parent)
                    .iter()
                    .all(|(c, s)| c != child || *s != 'Z')
            })
            .then_some(())
    });
    eprintln!(
        "signal storm: {} zombies sampled during the storm, all reaped since",
        zombies_seen.len()
    );
    for (old, _) in &handovers {
        app.wait_exit(*old, T);
    }
    let left = descendants(std::process::id());
    let ours: Vec<_> = left
        .iter()
        .filter(|(p, _)| {
            app.pids.lock().unwrap().contains(p) || children_of(last).iter().any(|(c, _)| c == p)
        })
        .collect();
    assert_eq!(
        ours,
        [&(last, 'S')],
        "only the last generation may be left: {left:?}"
    );
    answered_by(app.addr, last, T);
}
