//! Connection hand-off under faults (issue 20): whatever the new generation suffers or sends,
//! every connection has exactly one owner — checked from outside, in `/proc/<pid>/fd` of both
//! processes against the kernel's table of established connections, and by the clients, each
//! of whose messages is answered once, by one process.
use std::time::{Duration, Instant};

use hotexec_testkit::handoff::{LineClient, Owners, env_usize, owners, owners_by_client};
use hotexec_testkit::prelude::*;

/// The new generation runs at its fd limit during a hand-off of many connections (by default
/// 1,000; `HOTEXEC_TEST_FDLIMIT_CONNS`): it can take only some of them. Every record whose fd
/// could not be received is refused alone, with the true cause, and that connection stays
/// with the old generation; the channel goes on; no connection is open in both processes.
#[test]
fn new_generation_at_its_fd_limit_refuses_what_it_cannot_hold_and_nothing_has_two_owners() {
    raise_nofile();
    let n = env_usize("HOTEXEC_TEST_FDLIMIT_CONNS", 1000);
    let limit = n / 2;
    let app = App::start(
        "line",
        "HOTEXEC_LISTEN_LINE",
        &[("HOTEXEC_DRAIN_TIMEOUT", "120s")],
    );
    let first = app.first_pid();
    let mut clients: Vec<LineClient> = (0..n).map(|_| LineClient::connect(app.addr)).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        assert_eq!(c.ask_pid(&format!("hello {i}")), Ok(first));
    }
    // The next build, started with a soft and hard RLIMIT_NOFILE of `limit`.
    app.replace_binary(Some(&format!(
        "#!/bin/sh\nulimit -n {limit}\nexec {} \"$@\"\n",
        app.good_binary().display()
    )));
    let started = Instant::now();
    let (old, new) = app.upgrade();
    app.wait_log(
        "the new generation takes connection hand-offs",
        1,
        Duration::from_secs(30),
    );
    let port = app.addr.port();
    let settled = settle(port, old, new, n);
    let took = started.elapsed();
    // Each client is answered by the process whose fd table holds its connection, and by that
    // one only, twice in a row.
    let (_, holder) = owners_by_client(port, old, new);
    let mut moved = 0;
    for round in ["after", "again"] {
        moved = 0;
        for (i, c) in clients.iter_mut().enumerate() {
            let pid = c
                .ask_pid(&format!("{round} {i}"))
                .unwrap_or_else(|e| panic!("client {i}: {e}"));
            let held = &holder[&c.port()];
            assert_eq!(
                held,
                &vec![pid],
                "client {i} answered by {pid}, held by {held:?}"
            );
            moved += usize::from(pid == new);
        }
    }
    let o = owners(port, old, new);
    println!(
        "{n} connections, new generation at RLIMIT_NOFILE {limit}: {moved} handed off, {} kept by the old generation, settled in {:.2} s; from /proc: {o}",
        n - moved,
        took.as_secs_f64()
    );
    assert!(o.same(&settled), "owners changed: {settled} then {o}");
    assert_eq!(o.both, 0, "connections open in both processes: {o}");
    assert!(
        moved > 0 && moved < n,
        "the fd limit must bite part-way: {moved} of {n} moved"
    );
    let log = app.plain_log();
    assert!(
        !log.contains("more fds attached than a record may carry"),
        "a full fd table is not a malformed record:\n{}",
        tail(&log)
    );
    assert!(
        log.contains("RLIMIT_NOFILE"),
        "the refusal names the fd limit:\n{}",
        tail(&log)
    );
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Waits until the hand-off has settled, seen from outside: every one of the `n` connections
/// to `port` held by exactly one of `old` and `new`, the same for a second. (An ACK on its way
/// leaves a connection in both fd tables for a moment; a connection with two owners stays so.)
fn settle(port: u16, old: u32, new: u32, n: usize) -> Owners {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last: Option<(Owners, Instant)> = None;
    loop {
        let o = owners(port, old, new);
        let one_owner = o.both == 0 && o.neither == 0 && o.only_a + o.only_b == n;
        match &last {
            Some((prev, since)) if one_owner && prev.same(&o) => {
                if since.elapsed() >= Duration::from_secs(1) {
                    return o;
                }
            }
            _ => last = Some((o.clone(), Instant::now())),
        }
        assert!(
            Instant::now() < deadline,
            "not one owner per connection after 60 s: {o}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
