//! The supervisor's decisions, without I/O.
//!
//! [`Machine::handle`] takes one [`Event`] (a signal, an upgrade request, the new generation's
//! readiness byte, a child's exit, a deadline passing…) and returns the [`Action`]s to take; the
//! shell in `mod.rs` reads fds and signals, turns them into events, and does the actions (spawn,
//! kill, announce, reply). Every state handles every event, and each (state, event) pair is
//! unit-tested without a process (`tests.rs`, `health_tests.rs`).
//!
//! Files: this one (the machine, the events every state treats alike, serving, spawning,
//! draining), `waiting.rs` (a new generation starting), `probation.rs` (the successor on
//! probation, judged), `transitions.rs` (how states are entered).
//!
//! ```text
//!            upgrade signal / request                 ready
//!  Serving ───────────────────────────► Spawning ─► WaitingReady ───────► Probation ──► Draining
//!     ▲                                     │            │                  │  crash       ▲
//!     └──────── failed (exec, exit, timeout, limit) ─────┘                  ▼              │
//!                                                                       RollingBack ───────┘
//!  stop signal: Serving → Draining(stop); WaitingReady → the child is killed, Draining(stop);
//!  Probation → the stop is passed on to the successor (it was meant for the service), Draining.
//!  main returned: Exiting once nothing is left to decide.
//! ```
//!
//! **The health gate** (issue 18). A successor that counts what it serves (its health report,
//! sent just before READY, says so) is handed over as any other, but the upgrade is answered
//! with its health verdict: the probation lasts until the verdict is in, and an unhealthy
//! successor is rolled back like a crashed one; it is told it was not committed once the
//! rollback serves, and drains. The new generation's side: it reports every
//! `REPORT_INTERVAL` from READY until it hears the verdict. Rules and tests of the verdict:
//! `health/verdict.rs`; of these transitions: `machine/health_tests.rs`.
//!
//! **Stop before ready wins.** A stop signal and the new generation's readiness can arrive in
//! either order within one wake-up, or the signal just after the hand-over. Whichever comes
//! first, the stop applies to the service: before the hand-over the half-started process is
//! killed; after it, within the probation (while the successor's start is still this
//! generation's business), the stop is passed on to the successor.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::error::UpgradeError;
use crate::health::Report;
use crate::health::link::REPORT_INTERVAL;
use crate::shutdown::ShutdownReason;
use crate::supervisor::event::{Action, Event, News, Target, Trigger};
use crate::supervisor::state::State;
pub(crate) use crate::supervisor::state::Timing;

/// The supervisor's state and its rules.
#[derive(Debug)]
pub(crate) struct Machine {
    state: State,
    timing: Timing,
    /// Started by an upgrade (or a rollback, or a keeper), not fresh.
    started_by_upgrade: bool,
    /// This generation has reported ready.
    ready: bool,
    /// A stop reached this generation: whatever its successor does, it does not start again.
    stop_requested: bool,
    main_returned: bool,
    /// No rollback is possible any more; hotexec's copies of the listeners are closed.
    settled: bool,
    /// What the current successor said since it was ready.
    successor_news: Option<News>,
    /// Why this generation's `Shutdown` resolved, once it did.
    reason: Option<ShutdownReason>,
    /// The generation this one handed over to last.
    successor: Option<u32>,
    /// This generation's health when the current upgrade started.
    baseline: Report,
    /// Started by a generation that judges it (over a generation link): until its verdict this
    /// generation reports its health.
    judged_by_parent: bool,
    /// Awaiting the previous generation's verdict, until then at the latest.
    awaiting_until: Option<Instant>,
    /// When the next health report to the previous generation is due.
    next_report: Option<Instant>,
    /// A successor found unhealthy (or dead in its judged probation), whose rollback is
    /// starting: told it is not committed, and the upgrade answered, once the rollback serves.
    unhealthy: Option<(u32, String)>,
}

mod probation;
mod transitions;
mod waiting;

impl Machine {
    /// `judged_by_parent`: started by an upgrade, with a generation link to the previous
    /// generation (which judges this one's health).
    pub(crate) fn new(timing: Timing, started_by_upgrade: bool, judged_by_parent: bool) -> Machine {
        Machine {
            baseline: Report::default(),
            judged_by_parent,
            awaiting_until: None,
            next_report: None,
            unhealthy: None,
            state: State::Serving { deferred: false },
            timing,
            started_by_upgrade,
            ready: false,
            stop_requested: false,
            main_returned: false,
            settled: false,
            successor_news: None,
            reason: None,
            successor: None,
        }
    }

    /// When the next [`Event::Tick`] is due, if anything waits for time.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        let report = self.next_report.filter(|_| self.awaiting_until.is_some());
        match (self.state_deadline(), report) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The deadline of the state itself (not of the health reports this generation sends).
    fn state_deadline(&self) -> Option<Instant> {
        match &self.state {
            State::WaitingReady { upgrade, .. } => Some(upgrade.deadline),
            State::Probation { judge: Some(j), .. } => Some(j.next),
            State::Probation { until, .. } => Some(*until),
            _ => None,
        }
    }

    /// Whether the application may leave once `main` returned: nothing is starting, and no
    /// rollback is possible any more.
    pub(crate) fn may_exit(&self) -> bool {
        matches!(self.state, State::Exiting)
    }

    /// For the tests.
    #[cfg(test)]
    pub(crate) fn state_name(&self) -> &'static str {
        self.state.name()
    }

    /// One event in, the actions out.
    pub(crate) fn handle(&mut self, now: Instant, event: Event) -> Vec<Action> {
        let mut out = Vec::new();
        // This generation's side of a health probation, whatever the state.
        let event = match event {
            Event::Tick => {
                self.report_if_due(now, &mut out);
                Event::Tick
            }
            Event::Baseline(report) => {
                self.baseline = report;
                return out;
            }
            other => other,
        };
        // A deadline that passed is acted on before anything else, whatever came first to the
        // shell: a successor that dies after its probation ended is past it, even if the Tick
        // is late on a loaded machine.
        let due = self.state_deadline().is_some_and(|d| now >= d);
        let mut state = std::mem::replace(&mut self.state, State::Exiting);
        if due && !matches!(event, Event::Tick) {
            state = self.step(state, now, Event::Tick, &mut out);
        }
        self.state = self.step(state, now, event, &mut out);
        if self.main_returned && self.nothing_pending() {
            self.state = State::Exiting;
        }
        out
    }

    fn nothing_pending(&self) -> bool {
        match &self.state {
            State::Serving { .. } | State::Exiting => true,
            State::Draining { .. } => true,
            State::Spawning { .. } | State::WaitingReady { .. } | State::Probation { .. } => false,
        }
    }

    /// Sends the next health report to the previous generation if one is due.
    fn report_if_due(&mut self, now: Instant, out: &mut Vec<Action>) {
        let Some(until) = self.awaiting_until else {
            return;
        };
        if now >= until {
            tracing::warn!(
                "no health verdict from the previous generation in time: this generation stops reporting"
            );
            self.awaiting_until = None;
            self.next_report = None;
            return;
        }
        if self.next_report.is_some_and(|t| now >= t) {
            out.push(Action::SendReport);
            self.next_report = Some(now + REPORT_INTERVAL);
        }
    }

    fn step(&mut self, state: State, now: Instant, event: Event, out: &mut Vec<Action>) -> State {
        match (state, event) {
            // ---- events that mean the same in every state -------------------------------
            // A stop passed on is a SIGTERM, except that it never escalates a stop in progress
            // into an immediate exit (a broadcast SIGTERM reached this generation too).
            (state @ (State::Draining { .. } | State::Exiting), Event::StopPassedOn) => {
                self.stop_requested = true;
                tracing::info!("stop passed on by the previous generation: already stopping");
                state
            }
            (state, Event::StopPassedOn) => {
                self.step(state, now, Event::StopSignal(Signal::SIGTERM), out)
            }
            (state, Event::SelfReady) => {
                if !self.ready && self.judged_by_parent && self.timing.health.enabled {
                    // The first report went with READY; the next ones follow until the verdict.
                    let h = self.timing.health;
                    self.awaiting_until =
                        Some(now + h.probation + h.max_probation + Duration::from_secs(5));
                    self.next_report = Some(now + REPORT_INTERVAL);
                }
                self.ready = true;
                match state {
                    State::Serving { deferred: true } => {
                        tracing::info!("ready: starting the upgrade signalled before");
                        self.begin(Trigger::Signal, Vec::new(), now, out)
                    }
                    other => other,
                }
            }

            (state, Event::Verdict(told)) => self.told(state, told, out),
            (state, Event::ParentGone) => {
                // The previous generation exited: nobody to report to any more.
                self.awaiting_until = None;
                self.next_report = None;
                state
            }

            // ---- Serving ---------------------------------------------------------------
            (State::Serving { deferred }, Event::UpgradeSignal) => {
                if self.ready {
                    self.begin(Trigger::Signal, Vec::new(), now, out)
                } else if self.started_by_upgrade {
                    // A broadcast (`pkill -USR2 app`) reaches the old and the new generation
                    // at once: the new one must not start a third before it even serves.
                    tracing::warn!(
                        "upgrade signal ignored: this generation has not reported ready yet"
                    );
                    State::Serving { deferred }
                } else {
                    // A fresh start has no older generation the signal could be meant for: the
                    // operator read the pid file (written before `main`) and asked for an
                    // upgrade. Dropping it would lose the request; acting on it now would start
                    // a successor of a process that cannot serve yet.
                    tracing::info!(
                        "upgrade signal before this generation reported ready: the upgrade starts once it is ready"
                    );
                    State::Serving { deferred: true }
                }
            }
            (State::Serving { .. }, Event::Request(w, trigger)) => {
                self.begin(trigger, vec![w], now, out)
            }
            (State::Serving { .. }, Event::StopSignal(sig)) => self.stop(sig, out),
            (State::Serving { .. }, Event::MainReturned) => {
                self.main_returned = true;
                State::Exiting
            }

            // ---- Spawning ----------------------------------------------------------------
            (State::Spawning { target, upgrade }, Event::Spawned { pid }) => match target {
                Target::Deploy | Target::Rollback => State::WaitingReady {
                    pid,
                    upgrade,
                    closed: false,
                    report: None,
                },
            },
            // A rollback that cannot start is a failed rollback like one that exits: `failed`
            // answers its requesters (the unhealthy generation serves on).
            (State::Spawning { upgrade, .. }, Event::SpawnFailed(error)) => {
                self.failed(upgrade, error, out)
            }

            (state @ State::WaitingReady { .. }, event) => {
                self.step_waiting(state, now, event, out)
            }
            (state @ State::Probation { .. }, event) => self.step_probation(state, now, event, out),
            (state, event) => self.step_rest(state, event, out),
        }
    }

    /// Draining and exiting, and what no state handles itself.
    fn step_rest(&mut self, state: State, event: Event, out: &mut Vec<Action>) -> State {
        match (state, event) {
            // ---- Draining -----------------------------------------------------------------
            (State::Draining { reason }, Event::StopSignal(sig)) => {
                match reason {
                    ShutdownReason::Stop { signal } if sig as i32 == signal => {
                        tracing::warn!(signal = %sig, "second stop signal while draining: exiting now");
                        out.push(Action::ExitNow);
                    }
                    _ => {
                        self.stop_requested = true;
                        tracing::info!(signal = %sig, ?reason, "stop signal while draining: already stopping, and no rollback from now on");
                    }
                }
                State::Draining { reason }
            }
            (state @ (State::Probation { .. } | State::Draining { .. }), Event::UpgradeSignal) => {
                tracing::warn!(
                    "upgrade signal ignored: this generation has handed over and is draining"
                );
                state
            }
            (state @ (State::Probation { .. } | State::Draining { .. }), Event::Request(w, _)) => {
                out.push(Action::Reply {
                    waiters: vec![w],
                    result: Err(UpgradeError::Busy("this generation is draining")),
                });
                state
            }
            (state @ State::Draining { .. }, Event::ChildExited { pid, exit })
                if self.successor == Some(pid) =>
            {
                self.successor_exited(pid, &exit, None);
                state
            }
            (state @ State::Draining { .. }, Event::MainReturned) => {
                self.main_returned = true;
                state
            }

            // ---- Exiting -------------------------------------------------------------------
            (State::Exiting, Event::Request(w, _)) => {
                out.push(Action::Reply {
                    waiters: vec![w],
                    result: Err(UpgradeError::Busy("this generation is exiting")),
                });
                State::Exiting
            }
            (State::Exiting, Event::StopSignal(sig)) => {
                tracing::info!(signal = %sig, "stop signal while exiting: already exiting");
                State::Exiting
            }

            // ---- anything else: named and logged, never silent ----------------------------
            (state, Event::Request(w, _)) => {
                // Only `Spawning`, which the shell leaves before it reads another event.
                out.push(Action::Reply {
                    waiters: vec![w],
                    result: Err(UpgradeError::Busy("an upgrade is already running")),
                });
                state
            }
            (state, event) => {
                tracing::debug!(
                    state = state.name(),
                    ?event,
                    "supervisor: event not relevant in this state"
                );
                state
            }
        }
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod health_tests;
