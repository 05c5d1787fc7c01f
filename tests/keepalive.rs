//! Keep-alive clients lose nothing across upgrades: the draining generation answers each
//! connection's next request with `Connection: close` (a grace phase), so clients leave at a
//! request boundary instead of racing a close of their idle connection. The full benchmark,
//! against nginx and a naive restart, is `cargo run --release --example bench`.

use std::time::{Duration, Instant};

use hotexec_testkit::prelude::*;

const HTTP: &str = "HOTEXEC_LISTEN_HTTP";

#[test]
fn keepalive_clients_lose_no_request_across_upgrades() {
    let mut app = App::start("http", HTTP, &[]);
    let load = KeepAliveLoad::start(app.addr, 6);
    std::thread::sleep(Duration::from_millis(400));
    let mut upgrades = Vec::new();
    for _ in 0..4 {
        let t0 = Instant::now();
        let (old, new) = app.upgrade();
        upgrades.push((t0, old, new));
        std::thread::sleep(Duration::from_millis(600));
    }
    let results = load.finish();
    for (_, old, _) in &upgrades {
        let st = app.wait_exit(*old, Duration::from_secs(30));
        assert!(
            matches!(st, nix::sys::wait::WaitStatus::Exited(_, 0 | -1)),
            "old generation {old} ended with {st:?}"
        );
    }
    let failed: Vec<_> = results
        .iter()
        .filter(|(_, o, _)| !matches!(o, Outcome::Ok { .. }))
        .collect();
    let reused = results.iter().filter(|(_, _, r)| *r).count();
    eprintln!(
        "keep-alive under upgrades: {} requests ({reused} on a reused connection), {} failed, {} upgrades",
        results.len(),
        failed.len(),
        upgrades.len()
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
    // The clients really kept their connections: most requests reused one, so each upgrade
    // had to move live keep-alive connections over.
    assert!(
        reused * 2 > results.len(),
        "only {reused} of {} requests reused a connection",
        results.len()
    );
    // Every generation answered, and after the last upgrade only the last one does.
    for (_, _, new) in &upgrades {
        assert!(
            results
                .iter()
                .any(|(_, o, _)| *o == Outcome::Ok { pid: *new }),
            "generation {new} never answered"
        );
    }
    let last = upgrades.last().unwrap().2;
    let tail: Vec<_> = results.iter().rev().take(20).collect();
    assert!(
        tail.iter().all(|(_, o, _)| *o == Outcome::Ok { pid: last }),
        "{tail:?}"
    );
}
