//! Load for the tests: client threads hammering `GET /` until stopped, each request's outcome
//! kept, and the verdicts the tests print and assert over them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::client::{get, get_keepalive};
use crate::outcome::Outcome;

/// Client threads each calling its `request` until stopped; every result with its completion
/// time. Bounded in count and time whatever happens.
struct Clients<R> {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<Vec<(Instant, R)>>>,
}

impl<R: Send + 'static> Clients<R> {
    /// `clients` threads, each with a `request` of its own from `new_client` (its own
    /// connection, say).
    fn start<F>(clients: usize, new_client: impl Fn() -> F) -> Clients<R>
    where
        F: FnMut() -> R + Send + 'static,
    {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..clients)
            .map(|_| {
                let stop = stop.clone();
                let mut request = new_client();
                std::thread::spawn(move || {
                    let mut out = Vec::new();
                    let hard_stop = Instant::now() + Duration::from_secs(120);
                    while !stop.load(Ordering::Relaxed)
                        && out.len() < 1_000_000
                        && Instant::now() < hard_stop
                    {
                        let r = request();
                        out.push((Instant::now(), r));
                    }
                    out
                })
            })
            .collect();
        Clients { stop, threads }
    }

    /// Stops the clients; every result, in time order.
    fn finish(self) -> Vec<(Instant, R)> {
        self.stop.store(true, Ordering::Relaxed);
        let mut all: Vec<_> = self
            .threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        all.sort_by_key(|(t, _)| *t);
        all
    }
}

/// Clients hammering `GET /` with a new connection per request until stopped.
pub struct Load(Clients<Outcome>);

impl Load {
    pub fn start(addr: SocketAddr, clients: usize) -> Load {
        Load(Clients::start(clients, || {
            move || get(addr, "/", Duration::from_secs(5))
        }))
    }

    /// Stops the clients and returns every request's (completion time, outcome), in time order.
    pub fn finish(self) -> Vec<(Instant, Outcome)> {
        self.0.finish()
    }
}

/// Prints the figures of a load run and asserts it made requests and every one succeeded.
pub fn assert_no_failures(what: &str, results: &[(Instant, Outcome)]) {
    let failed = failures(results);
    eprintln!(
        "{what}: {} requests, {} failed",
        results.len(),
        failed.len()
    );
    assert!(
        results.len() > 20,
        "{what}: only {} requests",
        results.len()
    );
    assert!(
        failed.is_empty(),
        "{what}: {} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(10)]
    );
}

/// Failed requests, for assertion messages.
pub fn failures(results: &[(Instant, Outcome)]) -> Vec<&Outcome> {
    results
        .iter()
        .map(|(_, o)| o)
        .filter(|o| !matches!(o, Outcome::Ok { .. }))
        .collect()
}

/// Keep-alive clients hammering `GET /` until stopped: each reuses its connection and opens a
/// new one only after the server closed it (`Connection: close`) or a request failed.
pub struct KeepAliveLoad(Clients<(Outcome, bool)>);

impl KeepAliveLoad {
    pub fn start(addr: SocketAddr, clients: usize) -> KeepAliveLoad {
        KeepAliveLoad(Clients::start(clients, || {
            let mut conn = None;
            move || get_keepalive(&mut conn, addr, "/", Duration::from_secs(5))
        }))
    }

    /// Stops the clients; every request's (completion time, outcome, on a reused connection),
    /// in time order.
    pub fn finish(self) -> Vec<(Instant, Outcome, bool)> {
        self.0
            .finish()
            .into_iter()
            .map(|(t, (o, reused))| (t, o, reused))
            .collect()
    }
}

/// `HOTEXEC_COMPARE_PLAIN=1`: the serving tests run the same scenario against the example's plain
/// mode (the integration switched off) and print what it loses instead of asserting zero.
pub const COMPARE_PLAIN_VAR: &str = "HOTEXEC_COMPARE_PLAIN";

/// True when the serving tests run in comparison mode (see [`COMPARE_PLAIN_VAR`]).
pub fn compare_plain() -> bool {
    std::env::var_os(COMPARE_PLAIN_VAR).is_some_and(|v| v == "1")
}

/// Failures counted by class (`Reset: 3, Eof: 2`), for the figures a test prints.
pub fn by_class<'a>(failed: impl IntoIterator<Item = &'a Outcome>) -> String {
    let mut classes: std::collections::BTreeMap<String, usize> = Default::default();
    for o in failed {
        let name = format!("{o:?}");
        let name = name
            .split(|c: char| !c.is_alphanumeric())
            .next()
            .unwrap_or("")
            .to_string();
        *classes.entry(name).or_default() += 1;
    }
    if classes.is_empty() {
        return "none".into();
    }
    classes
        .iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Prints a load run's figures (`mode` says with or without the integration) and, unless in
/// comparison mode, asserts that it made at least `min` requests and that none failed.
pub fn verdict(what: &str, outcomes: &[&Outcome], min: usize) {
    let failed: Vec<&Outcome> = outcomes
        .iter()
        .copied()
        .filter(|o| !matches!(o, Outcome::Ok { .. }))
        .collect();
    let mode = if compare_plain() {
        "PLAIN (integration off)"
    } else {
        "with the integration"
    };
    eprintln!(
        "FIGURES {what} [{mode}]: {} requests, {} failed ({})",
        outcomes.len(),
        failed.len(),
        by_class(failed.iter().copied())
    );
    assert!(
        outcomes.len() >= min,
        "{what}: only {} requests (expected at least {min})",
        outcomes.len()
    );
    if compare_plain() {
        return;
    }
    assert!(
        failed.is_empty(),
        "{what}: {} of {} requests failed: {:?}",
        failed.len(),
        outcomes.len(),
        &failed[..failed.len().min(10)]
    );
}
