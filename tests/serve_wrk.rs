//! `wrk` — a keep-alive HTTP load generator no one here wrote — against the axum example
//! through upgrades: its own summary must count no socket error (connect, read, write,
//! timeout) and no non-2xx response. Plain `axum::serve(..).with_graceful_shutdown(..)` shows
//! read errors here: idle keep-alive connections closed under wrk's next request.
//!
//! wrk is installed by `.ci/install` (Debian package `wrk`).
//! `HOTEXEC_COMPARE_PLAIN=1 cargo test --test serve_wrk -- --nocapture` prints the plain mode's
//! figures instead of asserting zero.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hotexec_testkit::prelude::*;

const HTTP: &str = "HOTEXEC_LISTEN_HTTP";
const UPGRADES: usize = 3;

/// The numbers of wrk's summary: requests, and each error counter (zero when wrk printed none).
#[derive(Debug, Default)]
struct Summary {
    requests: u64,
    connect: u64,
    read: u64,
    write: u64,
    timeout: u64,
    non_2xx: u64,
}

fn parse(out: &str) -> Summary {
    let mut s = Summary::default();
    for line in out.lines().map(str::trim) {
        if let Some(n) = line
            .split_whitespace()
            .next()
            .filter(|_| line.contains(" requests in "))
        {
            s.requests = n.parse().unwrap_or(0);
        } else if let Some(rest) = line.strip_prefix("Socket errors:") {
            // "Socket errors: connect 0, read 12, write 0, timeout 0"
            for part in rest.split(',') {
                let mut it = part.split_whitespace();
                let (Some(k), Some(v)) = (it.next(), it.next()) else {
                    continue;
                };
                let v = v.parse().unwrap_or(0);
                match k {
                    "connect" => s.connect = v,
                    "read" => s.read = v,
                    "write" => s.write = v,
                    "timeout" => s.timeout = v,
                    _ => {}
                }
            }
        } else if let Some(n) = line.strip_prefix("Non-2xx or 3xx responses:") {
            s.non_2xx = n.trim().parse().unwrap_or(0);
        }
    }
    s
}

#[test]
fn wrk_counts_no_error_across_upgrades() {
    let mut app = if compare_plain() {
        App::start("axum", HTTP, &[("AXUM_PLAIN_SHUTDOWN", "1")])
    } else {
        App::start("axum", HTTP, &[])
    };
    let first = app.first_pid();
    let seconds = 4;
    // wrk is a child of this test: a guard kills and reaps it if the test fails early.
    let wrk = Command::new("wrk")
        .args(["-t2", "-c32", &format!("-d{seconds}s"), "--timeout", "5s"])
        .arg(format!("http://{}/", app.addr))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("wrk is not installed (.ci/install installs it: apt-get install wrk)");
    let guard = Reap(Some(wrk));
    std::thread::sleep(Duration::from_millis(700));
    let mut news = Vec::new();
    for _ in 0..UPGRADES {
        news.push(app.upgrade().1);
        std::thread::sleep(Duration::from_millis(800));
    }
    let out = guard.wait(Duration::from_secs(seconds + 20));
    eprintln!("{out}");
    let s = parse(&out);
    for old in std::iter::once(first).chain(news[..news.len() - 1].iter().copied()) {
        let st = app.wait_exit(old, Duration::from_secs(15));
        assert!(
            matches!(st, nix::sys::wait::WaitStatus::Exited(_, 0 | -1)),
            "old generation {old} ended with {st:?}"
        );
    }
    let mode = if compare_plain() {
        "PLAIN (integration off)"
    } else {
        "with the integration"
    };
    let errors = s.connect + s.read + s.write + s.timeout + s.non_2xx;
    eprintln!(
        "FIGURES wrk -t2 -c32 -d{seconds}s, {UPGRADES} upgrades [{mode}]: {} requests, {errors} errors (connect {}, read {}, write {}, timeout {}, non-2xx {})",
        s.requests, s.connect, s.read, s.write, s.timeout, s.non_2xx
    );
    assert!(
        s.requests > 1000,
        "wrk made only {} requests:\n{out}",
        s.requests
    );
    if !compare_plain() {
        assert_eq!(errors, 0, "wrk counted errors:\n{out}");
    }
}

/// Kills (SIGKILL) and reaps the child when dropped unfinished.
struct Reap(Option<std::process::Child>);

impl Reap {
    /// Waits for the child to exit (killing it past `limit`) and returns its stdout.
    fn wait(mut self, limit: Duration) -> String {
        let mut child = self.0.take().unwrap();
        let deadline = Instant::now() + limit;
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                let mut out = String::new();
                use std::io::Read;
                child
                    .stdout
                    .take()
                    .unwrap()
                    .read_to_string(&mut out)
                    .unwrap();
                let mut err = String::new();
                child
                    .stderr
                    .take()
                    .unwrap()
                    .read_to_string(&mut err)
                    .unwrap();
                assert!(st.success(), "wrk failed ({st}): {out}{err}");
                return out;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("wrk did not finish within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Reap {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
