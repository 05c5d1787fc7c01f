//! The axum example (an axum app as axum's docs show, served with `hotexec::serve`) loses no
//! request across upgrades under load: HTTP/1.1 clients with a new connection per request and
//! keep-alive clients, every request counted.
//!
//! `HOTEXEC_COMPARE_PLAIN=1 cargo test --test serve_axum -- --nocapture` runs the same
//! scenarios against the example's plain mode (`axum::serve(..).with_graceful_shutdown(..)`)
//! and prints what it loses instead of asserting zero.

use std::time::Duration;

use hotexec_testkit::prelude::*;

const HTTP: &str = "HOTEXEC_LISTEN_HTTP";
const UPGRADES: usize = 4;
const CLIENTS: usize = 16;

/// The axum example, in plain mode when comparing.
pub fn start_axum() -> App {
    if compare_plain() {
        App::start("axum", HTTP, &[("AXUM_PLAIN_SHUTDOWN", "1")])
    } else {
        App::start("axum", HTTP, &[])
    }
}

/// `UPGRADES` upgrades, 600 ms apart, under whatever load runs; then every old generation must
/// have exited cleanly. Returns the new pids.
fn upgrade_under_load(app: &mut App) -> Vec<u32> {
    std::thread::sleep(Duration::from_millis(300));
    let mut steps = Vec::new();
    for _ in 0..UPGRADES {
        steps.push(app.upgrade());
        std::thread::sleep(Duration::from_millis(600));
    }
    steps.iter().map(|(_, new)| *new).collect()
}

fn old_generations_exit_cleanly(app: &mut App, first: u32, news: &[u32]) {
    // The last new generation is the one serving now.
    let olds = std::iter::once(first).chain(news[..news.len() - 1].iter().copied());
    for old in olds {
        let st = app.wait_exit(old, Duration::from_secs(30));
        assert!(
            matches!(st, nix::sys::wait::WaitStatus::Exited(_, 0 | -1)),
            "old generation {old} ended with {st:?}"
        );
    }
}

#[test]
fn new_connection_clients_lose_nothing_across_upgrades() {
    let mut app = start_axum();
    let first = app.first_pid();
    let load = Load::start(app.addr, CLIENTS);
    let news = upgrade_under_load(&mut app);
    std::thread::sleep(Duration::from_millis(300));
    let results = load.finish();
    old_generations_exit_cleanly(&mut app, first, &news);
    let outcomes: Vec<&Outcome> = results.iter().map(|(_, o)| o).collect();
    verdict("axum, HTTP/1.1, new connection per request", &outcomes, 200);
    // The last generation is the one answering at the end.
    let last = *news.last().unwrap();
    assert!(
        results
            .iter()
            .rev()
            .take(5)
            .all(|(_, o)| *o == Outcome::Ok { pid: last } || compare_plain()),
        "the last requests were not answered by the last generation {last}"
    );
}

#[test]
fn keepalive_clients_lose_nothing_across_upgrades() {
    let mut app = start_axum();
    let first = app.first_pid();
    let load = KeepAliveLoad::start(app.addr, CLIENTS);
    let news = upgrade_under_load(&mut app);
    std::thread::sleep(Duration::from_millis(300));
    let results = load.finish();
    old_generations_exit_cleanly(&mut app, first, &news);
    let outcomes: Vec<&Outcome> = results.iter().map(|(_, o, _)| o).collect();
    verdict("axum, HTTP/1.1 keep-alive", &outcomes, 500);
    // The clients really kept their connections, so each upgrade moved live keep-alive
    // connections over.
    let reused = results.iter().filter(|(_, _, r)| *r).count();
    assert!(
        reused * 2 > results.len(),
        "only {reused} of {} requests reused a connection",
        results.len()
    );
    for new in &news {
        assert!(
            results
                .iter()
                .any(|(_, o, _)| *o == Outcome::Ok { pid: *new }),
            "generation {new} never answered"
        );
    }
}

/// A request in flight at the hand-over finishes on the old generation, on a keep-alive
/// connection, and tells its client to leave; the old process exits only after it.
#[test]
fn slow_request_in_flight_at_the_upgrade_finishes_on_the_old_generation() {
    if compare_plain() {
        return;
    }
    let mut app = start_axum();
    let first = app.first_pid();
    let addr = app.addr;
    let slow = std::thread::spawn(move || {
        let mut conn = None;
        let warm = get_keepalive(&mut conn, addr, "/", Duration::from_secs(5));
        let slow = get_keepalive(&mut conn, addr, "/slow?ms=1500", Duration::from_secs(10));
        (warm, slow, conn.is_none())
    });
    std::thread::sleep(Duration::from_millis(400));
    let (old, new) = app.upgrade();
    assert_eq!(old, first);
    let (warm, slow, closed) = slow.join().unwrap();
    assert_eq!(warm.0, Outcome::Ok { pid: first });
    assert_eq!(slow.0, Outcome::Ok { pid: first }, "the slow request");
    assert!(slow.1, "the slow request went out on the reused connection");
    assert!(
        closed,
        "the response after the hand-over said Connection: close"
    );
    answered_by(addr, new, Duration::from_secs(5));
    old_generations_exit_cleanly(&mut app, first, &[new]);
}
