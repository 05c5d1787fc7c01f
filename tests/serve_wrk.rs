//! `wrk` — a keep-alive HTTP load generator no one here wrote — against the axum example
//! through upgrades: its own summary must count no socket error (connect, read, write,
//! timeout) and no non-2xx response. Plain `axum::serve(..).with_graceful_shutdown(..)` shows
//! read errors here: idle keep-alive connections closed under wrk's next request.
//!
//! wrk is installed by `.ci/install` (Debian package `wrk`).
//! `HOTEXEC_COMPARE_PLAIN=1 cargo test --test serve_wrk -- --nocapture` prints the plain mode's
//! figures instead of asserting zero.

use std::process::{Command, Stdio};
use std::time::Duration;

use hotexec_testkit::prelude::*;
use hotexec_testkit::tools::{self, WrkSummary};

const HTTP: &str = "HOTEXEC_LISTEN_HTTP";
const UPGRADES: usize = 3;

#[test]
fn wrk_counts_no_error_across_upgrades() {
    let mut app = if compare_plain() {
        App::start("axum", HTTP, &[("AXUM_PLAIN_SHUTDOWN", "1")])
    } else {
        App::start("axum", HTTP, &[])
    };
    let first = app.first_pid();
    let seconds = 4;
    // wrk is a child of this test: killed and reaped if the test fails early.
    let wrk = tools::start(
        Command::new("wrk")
            .args(["-t2", "-c32", &format!("-d{seconds}s"), "--timeout", "5s"])
            .arg(format!("http://{}/", app.addr))
            .stdin(Stdio::null()),
        "apt-get install wrk",
    );
    std::thread::sleep(Duration::from_millis(700));
    let mut news = Vec::new();
    for _ in 0..UPGRADES {
        news.push(app.upgrade().1);
        std::thread::sleep(Duration::from_millis(800));
    }
    let (out, _) = wrk.finish(Duration::from_secs(seconds + 20));
    eprintln!("{out}");
    let s = WrkSummary::parse(&out);
    for old in std::iter::once(first).chain(news[..news.len() - 1].iter().copied()) {
        let st = app.wait_exit(old, Duration::from_secs(30));
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
    let errors = s.errors();
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
