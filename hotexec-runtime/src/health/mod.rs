//! The health of a generation: what it serves, counted cheaply ([`Health`]); a snapshot of it
//! that travels from a new generation to the old one ([`Report`], `wire.rs`); and the policy
//! that turns the two into a verdict (`policy.rs`, `verdict.rs`).
//!
//! Every generation counts, from its start: responses by status class, handler panics, requests
//! that got no answer, connections served and connections that failed. `hotexec::serve`,
//! `serve_hyper` and `serve::connection` count by themselves; any other server reports its
//! outcomes through the same handle, [`Shutdown::health`](crate::Shutdown::health):
//!
//! ```no_run
//! # fn handle(_: &std::net::TcpStream) -> u16 { 200 }
//! #[hotexec::main]
//! #[listen("127.0.0.1:9000", name = "http")]
//! fn main(listeners: hotexec::Listeners, shutdown: hotexec::Shutdown) -> std::io::Result<()> {
//!     let listener = listeners.take_tcp("http")?;
//!     let health = shutdown.health();
//!     while let Some((conn, _)) = shutdown.accept(&listener)? {
//!         let status = handle(&conn);
//!         health.record_response(status);
//!     }
//!     Ok(())
//! }
//! ```
//!
//! During the probation after an upgrade, the new generation's counts are compared with the old
//! generation's before the upgrade; a new generation that answers errors where the old one did
//! not is not committed (see the README, "Safe commits"). An app adds its own verdict with
//! [`Health::add_check`].

mod counters;
pub(crate) mod link;
pub(crate) mod policy;
pub(crate) mod verdict;
pub(crate) mod wire;

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use counters::{Counters, SLOTS, Slot};

/// The counters of this generation, and the checks the app added. Cheap to clone (an `Arc`);
/// every clone counts into the same numbers. Get it with
/// [`Shutdown::health`](crate::Shutdown::health).
///
/// Counting costs one relaxed atomic increment on a cache line of the calling thread's own (no
/// lock, no contention between cores): a few nanoseconds, see BENCHMARKS.md.
#[derive(Clone)]
pub struct Health {
    inner: Arc<Inner>,
}

/// A check of the app's own: `Err(reason)` vetoes the commit of a new generation.
type CheckFn = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

struct Inner {
    counters: Counters,
    /// Something counts into these counters (the facade, or the app itself): without it, a
    /// generation's silence says nothing about its health.
    counting: AtomicBool,
    checks: Mutex<Vec<(String, CheckFn)>>,
    started: Instant,
}

impl fmt::Debug for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Health")
            .field("counts", &self.counts())
            .field("counting", &self.is_counting())
            .finish_non_exhaustive()
    }
}

impl Default for Health {
    fn default() -> Self {
        Health::new()
    }
}

impl Health {
    /// Counters of their own, at zero. The runtime makes one per generation (the one
    /// [`Shutdown::health`](crate::Shutdown::health) returns); this is for tests and for code
    /// run without hotexec.
    pub fn new() -> Health {
        Health {
            inner: Arc::new(Inner {
                counters: Counters::default(),
                counting: AtomicBool::new(false),
                checks: Mutex::new(Vec::new()),
                started: Instant::now(),
            }),
        }
    }

    /// A response was sent with this status code.
    #[inline]
    pub fn record_response(&self, status: u16) {
        self.inner.counters.add(match status {
            0..=199 => Slot::Informational,
            200..=299 => Slot::Success,
            300..=399 => Slot::Redirection,
            400..=499 => Slot::ClientError,
            _ => Slot::ServerError,
        });
    }

    /// A handler panicked. Counted as a bad answer, apart from the 5xx responses (answer the
    /// client 500 without also calling [`record_response`](Health::record_response)).
    #[inline]
    pub fn record_panic(&self) {
        self.inner.counters.add(Slot::Panic);
    }

    /// A request got no answer because of the server (its handler returned an error, the
    /// connection was closed under it). Counted as a bad answer.
    #[inline]
    pub fn record_error(&self) {
        self.inner.counters.add(Slot::Error);
    }

    /// A connection was served (the denominator of [`record_connection_failed`]).
    ///
    /// [`record_connection_failed`]: Health::record_connection_failed
    #[inline]
    pub fn record_connection(&self) {
        self.inner.counters.add(Slot::Connection);
    }

    /// A connection failed by the server's fault (not a client that went away): count it with
    /// [`record_connection`](Health::record_connection) as well.
    #[inline]
    pub fn record_connection_failed(&self) {
        self.inner.counters.add(Slot::ConnectionFailed);
    }

    /// Says that this generation counts what it serves, before it has served anything: an
    /// idle generation that counts is judged on its (empty) numbers, one that does not count
    /// is judged by the crash watch alone. `hotexec::serve` calls it as it starts; recording
    /// any outcome says it too.
    pub fn mark_counting(&self) {
        self.inner.counting.store(true, Ordering::Relaxed);
    }

    /// Whether anything counts into these counters: [`mark_counting`](Health::mark_counting)
    /// was called, or an outcome was recorded. (Not a flag the request path sets: that would
    /// be one more shared write per request.)
    pub fn is_counting(&self) -> bool {
        self.inner.counting.load(Ordering::Relaxed)
            || self.inner.counters.sum().iter().any(|n| *n > 0)
    }

    /// Adds a check of the app's own, called in the new generation during its probation each
    /// time it reports to the old one (every few hundred milliseconds, on a runtime thread):
    /// `Err(reason)` vetoes the commit, and the reason reaches the operator as the upgrade's
    /// outcome. A panicking check vetoes too.
    ///
    /// It must be quick and must not block: to check something asynchronous (a database
    /// round trip), run it in a task of your own and let the check read its last result.
    ///
    /// ```no_run
    /// # let shutdown = hotexec::Shutdown::detached(std::time::Duration::from_secs(1)).unwrap();
    /// use std::sync::Arc;
    /// use std::sync::atomic::{AtomicBool, Ordering};
    ///
    /// let db_ok = Arc::new(AtomicBool::new(false)); // set by a task that pings the database
    /// let flag = db_ok.clone();
    /// shutdown.health().add_check("database", move || {
    ///     if flag.load(Ordering::Relaxed) { Ok(()) } else { Err("no answer from the database".into()) }
    /// });
    /// ```
    pub fn add_check(
        &self,
        name: impl Into<String>,
        check: impl Fn() -> Result<(), String> + Send + Sync + 'static,
    ) {
        self.inner
            .checks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((name.into(), Arc::new(check)));
    }

    /// What has been counted so far.
    pub fn counts(&self) -> Counts {
        Counts::from_slots(self.inner.counters.sum())
    }

    /// A report of this generation: its counts, how long it has counted, and the outcome of
    /// every check (the first failures, as the veto). Runs the checks, on the calling thread.
    pub fn report(&self) -> Report {
        let checks: Vec<(String, CheckFn)> = self
            .inner
            .checks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut failed = Vec::new();
        for (name, check) in checks {
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check())) {
                Ok(Ok(())) => {}
                Ok(Err(why)) => failed.push(format!("check {name:?} failed: {why}")),
                Err(_) => failed.push(format!("check {name:?} panicked")),
            }
        }
        let mut report = self.snapshot();
        if !failed.is_empty() {
            report.veto = Some(wire::clip(failed.join("; ")));
        }
        report
    }

    /// A report without running the checks (the old generation's baseline).
    pub fn snapshot(&self) -> Report {
        // One sum of the stripes serves both (`is_counting` would sum them again).
        let counts = self.counts();
        Report {
            counts,
            uptime: self.inner.started.elapsed(),
            counting: self.inner.counting.load(Ordering::Relaxed) || counts != Counts::default(),
            veto: None,
        }
    }
}

/// What a generation has served, by outcome. Plain numbers, since the generation started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Counts {
    /// Responses 100–199.
    pub informational: u64,
    /// Responses 200–299.
    pub success: u64,
    /// Responses 300–399.
    pub redirection: u64,
    /// Responses 400–499.
    pub client_error: u64,
    /// Responses 500 and up.
    pub server_error: u64,
    /// Handlers that panicked.
    pub panics: u64,
    /// Requests that got no answer by the server's fault.
    pub errors: u64,
    /// Connections served.
    pub connections: u64,
    /// Connections that failed by the server's fault.
    pub connections_failed: u64,
}

impl Counts {
    fn from_slots(s: [u64; SLOTS]) -> Counts {
        Counts {
            informational: s[Slot::Informational as usize],
            success: s[Slot::Success as usize],
            redirection: s[Slot::Redirection as usize],
            client_error: s[Slot::ClientError as usize],
            server_error: s[Slot::ServerError as usize],
            panics: s[Slot::Panic as usize],
            errors: s[Slot::Error as usize],
            connections: s[Slot::Connection as usize],
            connections_failed: s[Slot::ConnectionFailed as usize],
        }
    }

    pub(crate) fn to_array(self) -> [u64; SLOTS] {
        let mut s = [0; SLOTS];
        s[Slot::Informational as usize] = self.informational;
        s[Slot::Success as usize] = self.success;
        s[Slot::Redirection as usize] = self.redirection;
        s[Slot::ClientError as usize] = self.client_error;
        s[Slot::ServerError as usize] = self.server_error;
        s[Slot::Panic as usize] = self.panics;
        s[Slot::Error as usize] = self.errors;
        s[Slot::Connection as usize] = self.connections;
        s[Slot::ConnectionFailed as usize] = self.connections_failed;
        s
    }

    pub(crate) fn from_array(s: [u64; SLOTS]) -> Counts {
        Counts::from_slots(s)
    }

    /// Every request that got an outcome: the responses of every class, the panics and the
    /// errors.
    pub fn requests(&self) -> u64 {
        self.informational
            .saturating_add(self.success)
            .saturating_add(self.redirection)
            .saturating_add(self.client_error)
            .saturating_add(self.server_error)
            .saturating_add(self.panics)
            .saturating_add(self.errors)
    }

    /// The bad answers: 5xx responses, panics, and requests that got no answer.
    pub fn bad(&self) -> u64 {
        self.server_error
            .saturating_add(self.panics)
            .saturating_add(self.errors)
    }

    /// What was counted after `earlier` (each counter minus the earlier one, never below zero):
    /// the numbers of a window, e.g. the last second of a probation.
    pub fn since(&self, earlier: &Counts) -> Counts {
        let (a, b) = (self.to_array(), earlier.to_array());
        let mut d = [0; SLOTS];
        for i in 0..SLOTS {
            d[i] = a[i].saturating_sub(b[i]);
        }
        Counts::from_slots(d)
    }
}

impl fmt::Display for Counts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} requests (1xx {}, 2xx {}, 3xx {}, 4xx {}, 5xx {}, panics {}, errors {}), {} connections ({} failed)",
            self.requests(),
            self.informational,
            self.success,
            self.redirection,
            self.client_error,
            self.server_error,
            self.panics,
            self.errors,
            self.connections,
            self.connections_failed
        )
    }
}

/// A snapshot of a generation's health, as it travels from a new generation to the old one
/// during the probation (encoded by `wire.rs`: compact, versioned, checked).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// What it has served since it started.
    pub counts: Counts,
    /// How long it has been counting (since the generation started).
    pub uptime: Duration,
    /// Whether anything counts what it serves (see [`Health::mark_counting`]).
    pub counting: bool,
    /// A check of the app's own failed: why (see [`Health::add_check`]).
    pub veto: Option<String>,
}

#[cfg(test)]
impl Report {
    /// For the verdict's and the supervisor's tests: a counting generation that answered `ok`
    /// 200s and `bad` 500s, one connection per request, over `uptime`.
    pub(crate) fn served(ok: u64, bad: u64, uptime: Duration) -> Report {
        Report {
            counts: Counts {
                success: ok,
                server_error: bad,
                connections: ok + bad,
                ..Counts::default()
            },
            uptime,
            counting: true,
            veto: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_land_in_their_class() {
        let h = Health::new();
        assert!(!h.is_counting());
        for s in [
            100, 101, 200, 204, 299, 301, 404, 499, 500, 503, 599, 600, 999,
        ] {
            h.record_response(s);
        }
        h.record_panic();
        h.record_error();
        h.record_connection();
        h.record_connection();
        h.record_connection_failed();
        let c = h.counts();
        assert_eq!(
            (
                c.informational,
                c.success,
                c.redirection,
                c.client_error,
                c.server_error
            ),
            (2, 3, 1, 2, 5)
        );
        assert_eq!((c.panics, c.errors), (1, 1));
        assert_eq!((c.connections, c.connections_failed), (2, 1));
        assert_eq!(c.requests(), 15);
        assert_eq!(c.bad(), 7);
        assert!(h.is_counting());
        let s = c.to_string();
        assert!(s.contains("15 requests") && s.contains("5xx 5"), "{s}");
    }

    #[test]
    fn since_is_the_window_and_never_negative() {
        let h = Health::new();
        h.record_response(200);
        let before = h.counts();
        h.record_response(500);
        h.record_response(200);
        let w = h.counts().since(&before);
        assert_eq!((w.success, w.server_error, w.requests()), (1, 1, 2));
        assert_eq!(before.since(&h.counts()), Counts::default());
    }

    #[test]
    fn checks_veto_with_their_name_and_a_panicking_one_too() {
        let h = Health::new();
        assert_eq!(h.report().veto, None);
        h.add_check("fine", || Ok(()));
        assert_eq!(h.report().veto, None);
        h.add_check("db", || Err("no answer".into()));
        h.add_check("cache", || panic!("boom"));
        let veto = h.report().veto.unwrap();
        assert!(veto.contains("check \"db\" failed: no answer"), "{veto}");
        assert!(veto.contains("check \"cache\" panicked"), "{veto}");
        // The baseline snapshot runs no check.
        assert_eq!(h.snapshot().veto, None);
    }

    #[test]
    fn clones_count_into_the_same_numbers() {
        let h = Health::new();
        let h2 = h.clone();
        h2.record_response(201);
        assert_eq!(h.counts().success, 1);
    }
}
