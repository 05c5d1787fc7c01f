//! Nothing accumulates: across many upgrades in a row each new generation holds the same fds
//! and about the same memory as the first; a process that sees many failed upgrades keeps its
//! fd and thread counts; no zombie is left; the pid file is never seen half-written.
//!
//! `HOTEXEC_SOAK=1` runs 1000 upgrades and 500 failed ones instead of 100 and 50.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hotexec_testkit::prelude::*;

const HTTP: &str = "HOTEXEC_LISTEN_HTTP";
const T: Duration = Duration::from_secs(10);

fn soak() -> bool {
    std::env::var("HOTEXEC_SOAK").is_ok_and(|v| v == "1")
}

/// fds by kind: (total, sockets, pipes, other).
fn fd_kinds(pid: u32) -> (usize, usize, usize, usize) {
    let fds = fd_targets(pid);
    let sockets = fds.iter().filter(|(_, t)| t.starts_with("socket:")).count();
    let pipes = fds.iter().filter(|(_, t)| t.starts_with("pipe:")).count();
    (fds.len(), sockets, pipes, fds.len() - sockets - pipes)
}

#[test]
fn many_upgrades_in_a_row_leak_nothing() {
    let n = if soak() { 1000 } else { 100 };
    let mut app = App::start(
        "http",
        HTTP,
        &[
            ("HTTP_CLOSE_GRACE", "20ms"),
            ("HOTEXEC_PROBATION", "100ms"),
            ("RUST_LOG", "warn"),
        ],
    );
    // Readers of the pid file during every upgrade: it is replaced atomically, so every read
    // finds a whole pid.
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicUsize::new(0));
    let reader = {
        let (stop, reads, path) = (stop.clone(), reads.clone(), app.pid_file.clone());
        std::thread::spawn(move || {
            let mut torn = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(600);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                match std::fs::read_to_string(&path) {
                    Ok(s) if s.ends_with('\n') && s.trim().parse::<u32>().is_ok() => {}
                    other => torn.push(format!("{other:?}")),
                }
                reads.fetch_add(1, Ordering::Relaxed);
                // Thousands of reads per second, without taking a whole core from the servers.
                std::thread::sleep(Duration::from_micros(200));
            }
            torn
        })
    };
    let mut figures = Vec::new();
    let mut olds = Vec::new();
    let t0 = Instant::now();
    for _ in 0..n {
        let (old, new) = app.upgrade();
        olds.push(old);
        // The old one may still take a connection or two until its shutdown is delivered.
        wait_for(T, "the new generation to answer", || {
            (get(app.addr, "/", T) == Outcome::Ok { pid: new }).then_some(())
        });
        // Let the server close that request's connection before counting.
        std::thread::sleep(Duration::from_millis(100));
        let (fds, sockets, pipes, other) = fd_kinds(new);
        let rss = status_field(new, "VmRSS").unwrap_or(0);
        let threads = status_field(new, "Threads").unwrap_or(0);
        figures.push((new, fds, sockets, pipes, other, rss, threads));
        // Reap the generations that finished draining as we go.
        olds.retain(|&p| {
            if alive(p) {
                return true;
            }
            app.wait_exit(p, T);
            false
        });
    }
    let elapsed = t0.elapsed();
    stop.store(true, Ordering::Relaxed);
    let torn = reader.join().unwrap();
    for p in std::mem::take(&mut olds) {
        app.wait_exit(p, T);
    }
    let last = app.pid_in_file().unwrap();
    let show = |i: usize| {
        let (pid, fds, s, p, o, rss, th) = figures[i];
        format!(
            "gen {:>4} pid {pid}: {fds} fds ({s} sockets, {p} pipes, {o} other), VmRSS {rss} kB, {th} threads",
            i + 2
        )
    };
    eprintln!(
        "{n} upgrades in {elapsed:?}; pid file read {} times during them",
        reads.load(Ordering::Relaxed)
    );
    for i in [0, 1, n / 2, n - 1] {
        eprintln!("  {}", show(i));
    }
    let rss: Vec<u64> = figures.iter().map(|f| f.5).collect();
    let (min, max) = (rss.iter().min().unwrap(), rss.iter().max().unwrap());
    eprintln!("  VmRSS over all generations: min {min} kB, max {max} kB");
    assert!(
        torn.is_empty(),
        "the pid file was read half-written: {:?}",
        &torn[..torn.len().min(5)]
    );
    // Every generation holds the same fds as the first upgraded one.
    let first = figures[0];
    for f in &figures {
        assert_eq!(
            (f.1, f.2, f.3),
            (first.1, first.2, first.3),
            "fds grew: {f:?} vs {first:?}"
        );
    }
    // Memory does not grow with the generation number: the last tenth is not above the first
    // tenth by more than allocator noise.
    let tenth = (n / 10).max(1);
    let avg = |s: &[u64]| s.iter().sum::<u64>() / s.len() as u64;
    let (early, late) = (avg(&rss[..tenth]), avg(&rss[n - tenth..]));
    eprintln!("  VmRSS mean of the first {tenth}: {early} kB, of the last {tenth}: {late} kB");
    assert!(
        late <= early + early / 5,
        "RSS grows across generations: {early} kB → {late} kB"
    );
    // No zombie and nothing else left but the serving generation and its own children (none).
    let left = descendants(std::process::id());
    assert!(left.iter().all(|(_, s)| *s != 'Z'), "zombies: {left:?}");
    assert!(children_of(last).is_empty(), "{:?}", children_of(last));
    answered_by(app.addr, last, T);
}

#[test]
fn failed_upgrades_leak_nothing_in_the_serving_process() {
    let n = if soak() { 500 } else { 50 };
    let app = App::start("http", HTTP, &[("RUST_LOG", "warn")]);
    let pid = app.first_pid();
    // Warm up (first request, first failed upgrade) so lazily created state is not counted.
    assert_eq!(get(app.addr, "/", T), Outcome::Ok { pid });
    app.replace_binary(Some("#!/bin/sh\nexit 1\n"));
    app.signal_upgrade();
    app.wait_log("upgrade failed", 1, T);
    let measure = || {
        // Let the server close the request's connection first.
        std::thread::sleep(Duration::from_millis(200));
        (
            fd_kinds(pid),
            status_field(pid, "Threads"),
            status_field(pid, "VmRSS"),
        )
    };
    let before = measure();
    let t0 = Instant::now();
    for i in 2..=n + 1 {
        app.signal_upgrade();
        app.wait_log("upgrade failed", i, T);
    }
    assert_eq!(get(app.addr, "/", T), Outcome::Ok { pid });
    let after = measure();
    eprintln!(
        "{n} failed upgrades in {:?}: fds (total, sockets, pipes, other) {:?} → {:?}, threads {:?} → {:?}, VmRSS {:?} → {:?} kB",
        t0.elapsed(),
        before.0,
        after.0,
        before.1,
        after.1,
        before.2,
        after.2
    );
    assert_eq!(before.0, after.0, "fds leaked by failed upgrades");
    assert_eq!(before.1, after.1, "threads leaked by failed upgrades");
    assert!(children_of(pid).is_empty(), "{:?}", children_of(pid));
    assert_eq!(app.pid_in_file(), Some(pid));
}
