//! The supervisor: one thread per generation that turns what happens — signals, upgrade
//! requests, what a new generation says on its readiness pipe and its generation link, a
//! child's exit, time passing — into [`Event`]s for the state machine (`machine/`, where every
//! decision is), and does the [`Action`]s it returns: spawn, kill, announce (`announce.rs`),
//! resolve the application's `Shutdown`, reply to requests.
//!
//! Files: `event.rs` (what goes in and out), `state.rs` (the states and their data),
//! `machine/` (the rules), `spawn_next.rs` (how a new generation is started, with what),
//! `inputs.rs` (waiting on the fds and reading what arrived into events), this file (the
//! thread, its loop and the actions).

pub(crate) mod event;
mod inputs;
mod machine;
mod spawn_next;
mod state;

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Condvar, Mutex, mpsc};
use std::time::Instant;

use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use crate::announce::Announcer;
use crate::config::Config;
use crate::error::UpgradeError;
use crate::generation::Generation;
use crate::health::link::HealthRecord;
use crate::link::{self, Record};
use crate::shutdown::Shutdown;
use crate::{deadline, signals};
pub(crate) use event::Trigger;
use event::{Action, Announcement, Event, Exit, Target, Waiter};
use machine::{Machine, Timing};
use spawn_next::Child;
pub(crate) use spawn_next::Held;

/// An upgrade's outcome as its requester gets it: the result, and the upgrade's evidence when
/// one ran (`None`: refused as busy, nothing started).
pub(crate) type Outcome = (
    Result<u32, UpgradeError>,
    Option<crate::evidence::UpgradeReport>,
);

type Reply = mpsc::Sender<Outcome>;

/// What other threads hand the supervisor: requests and news of the application.
#[derive(Default)]
struct Inbox {
    requests: Vec<(Trigger, Reply)>,
    main_returned: bool,
}

/// The supervisor as the rest of the process sees it.
pub(crate) struct Handle {
    inbox: Mutex<Inbox>,
    wake_w: OwnedFd,
    /// Set (and signalled) once the machine allows the process to exit after `main` returned.
    may_exit: (Mutex<bool>, Condvar),
}

impl Handle {
    fn push(&self, f: impl FnOnce(&mut Inbox)) {
        f(&mut self.inbox.lock().unwrap_or_else(|p| p.into_inner()));
        let _ = nix::unistd::write(&self.wake_w, b"w");
    }

    /// Asks for an upgrade on behalf of `trigger` and waits for its outcome.
    pub(crate) fn request_upgrade(&self, trigger: Trigger) -> Outcome {
        let (tx, rx) = mpsc::channel();
        self.push(|i| i.requests.push((trigger, tx)));
        rx.recv().unwrap_or((Err(UpgradeError::NotRunning), None))
    }

    /// This generation reported ready: the supervisor wakes and reads it from the readiness
    /// flag (set before the READY byte is written), its one source.
    pub(crate) fn self_ready(&self) {
        self.push(|_| {});
    }

    /// The application's `main` returned: waits until the process may exit (a half-started
    /// successor is killed; a successor in its probation is watched until it is past it).
    /// Bounded by the drain deadline, which ends the process.
    pub(crate) fn main_returned(&self) {
        self.push(|i| i.main_returned = true);
        let (lock, cond) = &self.may_exit;
        let mut ok = lock.lock().unwrap_or_else(|p| p.into_inner());
        while !*ok {
            ok = cond.wait(ok).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// Everything the supervisor of a generation needs.
pub(crate) struct Setup {
    pub config: Config,
    pub argv: Vec<std::ffi::OsString>,
    /// The runtime's own copy of each listener, passed to every new generation.
    pub listeners: Vec<Held>,
    pub shutdown: Shutdown,
    pub generation: Arc<Generation>,
    pub announcer: Arc<Announcer>,
}

/// Installs the signal handlers and starts the supervisor thread.
pub(crate) fn start(setup: Setup) -> std::io::Result<Arc<Handle>> {
    let upgrade_signal = setup.config.upgrade_signal;
    let sig_r = signals::install(
        &[upgrade_signal, Signal::SIGTERM, Signal::SIGINT],
        Some(upgrade_signal),
    )?;
    let (wake_r, wake_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)
            .map_err(|e| std::io::Error::other(format!("pipe2: {}", e.desc())))?;
    let handle = Arc::new(Handle {
        inbox: Mutex::new(Inbox::default()),
        wake_w,
        may_exit: (Mutex::new(false), Condvar::new()),
    });
    // The drain deadline ends this process after the hand-over: the verdict must come before
    // it (with half a second for the rollback to start).
    let mut health = setup.config.health;
    let verdict_by = setup
        .config
        .drain_timeout
        .saturating_sub(std::time::Duration::from_millis(500));
    health.probation = health.probation.min(verdict_by);
    health.max_probation = health.max_probation.min(verdict_by);
    let timing = Timing {
        ready_timeout: setup.config.ready_timeout,
        probation: setup.config.probation.min(setup.config.drain_timeout),
        health,
    };
    let started_by_upgrade = setup.generation.readiness.started_by_upgrade();
    // A previous generation with a link judges this one's health (a keeper has no link).
    let judged = started_by_upgrade && setup.generation.parent_link.is_some();
    let shell = Shell {
        machine: Machine::new(timing, started_by_upgrade, judged),
        rejected: Vec::new(),
        handle: handle.clone(),
        sig_r,
        wake_r,
        replies: HashMap::new(),
        next_waiter: 0,
        child: None,
        successor: None,
        parent_link_open: setup.generation.parent_link.is_some(),
        told_ready: false,
        next_progress: None,
        setup,
        span: None,
    };
    std::thread::Builder::new()
        .name("hotexec-supervisor".into())
        .spawn(move || shell.run())?;
    Ok(handle)
}

/// The generation this one handed over to.
struct Successor {
    child: Child,
}

/// The supervisor thread's state.
struct Shell {
    machine: Machine,
    handle: Arc<Handle>,
    setup: Setup,
    sig_r: OwnedFd,
    wake_r: OwnedFd,
    replies: HashMap<Waiter, Reply>,
    next_waiter: Waiter,
    /// The child being started (an upgrade or a rollback), or judged.
    child: Option<Child>,
    /// New generations that were not committed: they drain and stop; kept only to be reaped.
    rejected: Vec<Child>,
    successor: Option<Successor>,
    parent_link_open: bool,
    /// The machine has heard that this generation reported ready.
    told_ready: bool,
    /// When this draining generation next tells its successor how many connections it has.
    next_progress: Option<Instant>,
    /// The span of the upgrade in progress (old pid, new pid, trigger).
    span: Option<tracing::Span>,
}

impl Shell {
    fn run(mut self) {
        loop {
            self.wait();
            let now = Instant::now();
            for event in self.collect() {
                self.feed(now, event);
            }
            self.feed(Instant::now(), Event::Tick);
            if self.next_progress.is_some_and(|t| Instant::now() >= t) {
                // While this generation drains: how many connections are left, for the new
                // generation's `status`. Evidence, not a decision: no machine event.
                self.next_progress = self
                    .setup
                    .announcer
                    .evidence
                    .drain_progress()
                    .then(|| Instant::now() + crate::evidence::PROGRESS_INTERVAL);
            }
        }
    }

    /// One event through the machine, and its actions (and the events they produce).
    fn feed(&mut self, now: Instant, event: Event) {
        let mut queue = vec![event];
        while let Some(event) = queue.pop() {
            let span = self.span.clone();
            let _enter = span.as_ref().map(|s| s.enter());
            for action in self.machine.handle(now, event) {
                if let Some(next) = self.act(action) {
                    queue.push(next);
                }
            }
        }
        if self.machine.may_exit() {
            let (lock, cond) = &self.handle.may_exit;
            *lock.lock().unwrap_or_else(|p| p.into_inner()) = true;
            cond.notify_all();
        }
    }

    fn act(&mut self, action: Action) -> Option<Event> {
        match action {
            Action::Spawn(target) => {
                if target == Target::Rollback {
                    self.span = Some(tracing::info_span!(
                        "rollback",
                        old_pid = std::process::id(),
                        new_pid = tracing::field::Empty,
                    ));
                }
                let _enter = self.span.as_ref().map(|s| s.enter());
                match spawn_next::spawn(&self.setup, target) {
                    Ok(child) => {
                        let pid = child.pid;
                        if let Some(s) = &self.span {
                            s.record("new_pid", pid);
                        }
                        let evidence = &self.setup.announcer.evidence;
                        evidence.spawned(pid);
                        if self.setup.config.spawn == crate::spawn::Method::Clone {
                            // With CLONE_VFORK the spawn returns once the child has exec'd:
                            // the new binary runs now. (After a fork nothing marks it.)
                            evidence.executed();
                        }
                        self.child = Some(child);
                        Some(Event::Spawned { pid })
                    }
                    Err(e) => Some(Event::SpawnFailed(e)),
                }
            }
            Action::Kill { pid } => {
                // A child already reaped in this wake-up (it failed to exec, then exited) is
                // not signalled: its pid may be another process's by now.
                if !self.reaped(pid) {
                    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
                    let _ = waitpid(Pid::from_raw(pid as i32), None);
                }
                if self.child.as_ref().is_some_and(|c| c.pid == pid) {
                    self.child = None;
                }
                None
            }
            Action::Announce(a) => {
                if let Announcement::UpgradeStarted { trigger } = a {
                    self.span = Some(tracing::info_span!(
                        "upgrade",
                        old_pid = std::process::id(),
                        new_pid = tracing::field::Empty,
                        trigger = trigger.as_str(),
                    ));
                }
                // The baseline a new generation is judged against: this one's health now.
                let baseline = matches!(a, Announcement::UpgradeStarted { .. })
                    .then(|| Event::Baseline(self.setup.generation.health.snapshot()));
                let span = self.span.clone();
                let _enter = span.as_ref().map(|s| s.enter());
                let ends = matches!(
                    a,
                    Announcement::UpgradeFailed { .. } | Announcement::HandedOver { .. }
                );
                if let Announcement::HandedOver { new_pid, .. } = a {
                    // The child serves now: what it says from here on is a successor's news.
                    if let Some(mut child) = self.child.take().filter(|c| c.pid == new_pid) {
                        child.serves();
                        // A successor it replaces (a rollback after an unhealthy one) is only
                        // told it was not committed, and reaped.
                        if let Some(previous) = self.successor.replace(Successor { child }) {
                            if !previous.child.reaped {
                                self.rejected.push(previous.child);
                            }
                        }
                    }
                }
                self.setup.announcer.announce(&a);
                if let Announcement::HandedOver { rollback, .. } = a {
                    // Its evidence, for the new generation's `status` (issue 19); a rollback
                    // gets the report of the upgrade it undoes (failed, unhealthy).
                    let evidence = &self.setup.announcer.evidence;
                    let link = self.successor.as_ref().and_then(|s| s.child.link.as_ref());
                    if let (Some(r), Some(l)) = (evidence.last(), link) {
                        let _ = link::send(l.as_fd(), &evidence.link_record(&r, rollback));
                        evidence.handed_over_on(l.as_fd());
                        self.next_progress =
                            Some(Instant::now() + crate::evidence::PROGRESS_INTERVAL);
                    }
                }
                if ends {
                    self.span = None;
                }
                baseline
            }
            Action::TellVerdict { pid, verdict } => {
                let record = HealthRecord::Verdict(verdict.clone()).to_record();
                let child = self
                    .child
                    .iter()
                    .chain(self.successor.iter().map(|s| &s.child))
                    .chain(&self.rejected)
                    .find(|c| c.pid == pid);
                if let Some(l) = child.and_then(|c| c.link.as_ref()) {
                    if let Err(e) = link::send(l.as_fd(), &record) {
                        tracing::debug!(
                            new_pid = pid,
                            ?verdict,
                            "generation link: verdict not sent: {e}"
                        );
                    }
                }
                None
            }
            Action::SendReport => {
                if self.parent_link_open {
                    self.setup.generation.send_health_report();
                }
                None
            }
            Action::HandOffTo { pid } => {
                let chan = self
                    .successor
                    .as_mut()
                    .filter(|s| s.child.pid == pid)
                    .and_then(|s| s.child.handoff.take());
                if let Some(chan) = chan {
                    let h = crate::handoff::child_ready(chan, pid, self.setup.config.drain_timeout);
                    self.setup.generation.handoff.set(h);
                }
                None
            }
            Action::TriggerShutdown(reason) => {
                self.setup.shutdown.trigger(reason);
                None
            }
            Action::ArmDeadline(reason) => {
                let announcer = self.setup.announcer.clone();
                let final_stop = matches!(reason, crate::ShutdownReason::Stop { .. });
                deadline::arm(self.setup.config.drain_timeout, reason, move || {
                    if final_stop {
                        announcer.final_cleanup();
                    } else {
                        // What is still open is cut now: the new generation hears it.
                        announcer.evidence.drain_done();
                    }
                });
                None
            }
            Action::StopSuccessor { pid } => {
                let passed = self
                    .successor
                    .as_ref()
                    .filter(|s| s.child.pid == pid)
                    .and_then(|s| s.child.link.as_ref())
                    .is_some_and(|l| link::send(l.as_fd(), &Record::Stop).is_ok());
                if !passed && !self.reaped(pid) {
                    // Not a hotexec build (no link), or the link is gone: the signal itself.
                    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
                }
                None
            }
            Action::CloseListeners => {
                let closed = std::mem::take(&mut self.setup.listeners).len();
                tracing::info!(closed, "hotexec's copies of the listeners are closed");
                None
            }
            Action::Reply { waiters, result } => {
                // The evidence of the upgrade that ran (the announcer recorded it before this
                // reply): every outcome but a busy refusal, which started nothing.
                let evidence = &self.setup.announcer.evidence;
                let report = match &result {
                    Err(UpgradeError::Busy(_)) => None,
                    // A stop abandoned it: nothing announced its end, its record ends here.
                    Err(e @ UpgradeError::Aborted) => {
                        evidence.finished(Err(e)).or_else(|| evidence.last())
                    }
                    _ => evidence.last(),
                };
                for w in waiters {
                    if let Some(r) = self.replies.remove(&w) {
                        let _ = r.send((result.clone(), report.clone()));
                    }
                }
                None
            }
            Action::ExitNow => {
                self.setup.announcer.final_cleanup();
                std::process::exit(1);
            }
        }
    }
}

/// How a wait status reads in the log: `exit status 1`, `killed by SIGSEGV`.
impl Shell {
    /// Whether `pid` is a child of ours (being started, or the successor) that was reaped.
    fn reaped(&self, pid: u32) -> bool {
        let successor = self.successor.as_ref().map(|s| &s.child);
        self.child
            .iter()
            .chain(successor)
            .any(|c| c.pid == pid && c.reaped)
    }
}

fn describe(status: WaitStatus) -> String {
    match status {
        WaitStatus::Exited(_, code) => format!("exit status {code}"),
        WaitStatus::Signaled(_, sig, _) => format!("killed by {sig}"),
        other => format!("{other:?}"),
    }
}

/// Reaps `pid` if it has exited.
fn reap(pid: u32) -> Option<Exit> {
    match waitpid(Pid::from_raw(pid as i32), Some(WaitPidFlag::WNOHANG)) {
        Ok(WaitStatus::StillAlive) => None,
        Ok(status) => Some(Exit {
            clean: matches!(status, WaitStatus::Exited(_, 0)),
            code: match status {
                WaitStatus::Exited(_, code) => code,
                WaitStatus::Signaled(_, sig, _) => 128 + sig as i32,
                _ => 1,
            },
            how: describe(status),
        }),
        Err(e) => Some(Exit {
            clean: false,
            code: 1,
            how: format!("not a child of this process any more ({})", e.desc()),
        }),
    }
}
