//! The supervisor's decisions, without I/O.
//!
//! [`Machine::handle`] takes one [`Event`] (a signal, an upgrade request, the new generation's
//! readiness byte, a child's exit, a deadline passing…) and returns the [`Action`]s to take; the
//! shell in `mod.rs` reads fds and signals, turns them into events, and does the actions (spawn,
//! kill, announce, reply). Every state handles every event, and each (state, event) pair is
//! unit-tested below without a process.
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
//! **Stop before ready wins.** A stop signal and the new generation's readiness can arrive in
//! either order within one wake-up, or the signal just after the hand-over. Whichever comes
//! first, the stop applies to the service: before the hand-over the half-started process is
//! killed; after it, within the probation (while the successor's start is still this
//! generation's business), the stop is passed on to the successor.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use super::event::{Action, Announcement, Event, Exit, News, Target, Trigger, Waiter};
pub(crate) use super::state::Timing;
use super::state::{State, Upgrade};
use crate::error::UpgradeError;
use crate::shutdown::ShutdownReason;

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
}

impl Machine {
    pub(crate) fn new(timing: Timing, started_by_upgrade: bool) -> Machine {
        Machine {
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
        match &self.state {
            State::WaitingReady { upgrade, .. } => Some(upgrade.deadline),
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
        // A deadline that passed is acted on before anything else, whatever came first to the
        // shell: a successor that dies after its probation ended is past it, even if the Tick
        // is late on a loaded machine.
        let due = self.next_deadline().is_some_and(|d| now >= d);
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
                self.ready = true;
                match state {
                    State::Serving { deferred: true } => {
                        tracing::info!("ready: starting the upgrade signalled before");
                        self.begin(Trigger::Signal, Vec::new(), now, out)
                    }
                    other => other,
                }
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
                },
            },
            (State::Spawning { target, upgrade }, Event::SpawnFailed(error)) => match target {
                Target::Deploy => self.failed(upgrade, error, out),
                Target::Rollback => {
                    tracing::error!("rollback failed: {error}; nothing is serving new connections");
                    self.settle("the rollback could not start", out)
                }
            },

            // ---- WaitingReady --------------------------------------------------------------
            (State::WaitingReady { pid, upgrade, .. }, Event::ChildReady { pid: p })
                if p == pid =>
            {
                self.hand_over(pid, upgrade, now, out)
            }
            (
                State::WaitingReady { pid, upgrade, .. },
                Event::ExecFailed {
                    pid: p,
                    errno,
                    path,
                },
            ) if p == pid => {
                // The child wrote the errno and exited 127: reap it.
                out.push(Action::Kill { pid });
                let error = UpgradeError::Exec { path, errno };
                self.failed(upgrade, error, out)
            }
            (
                State::WaitingReady {
                    pid, mut upgrade, ..
                },
                Event::ReadyClosed { pid: p },
            ) if p == pid => {
                // It is exiting (or closed the fd and went on, a failure too): it has until the
                // deadline, at least 200 ms, to exit on its own.
                upgrade.deadline = upgrade.deadline.max(now + Duration::from_millis(200));
                State::WaitingReady {
                    pid,
                    upgrade,
                    closed: true,
                }
            }
            (State::WaitingReady { pid, upgrade, .. }, Event::ChildExited { pid: p, exit })
                if p == pid =>
            {
                let error = UpgradeError::ExitedBeforeReady {
                    pid,
                    status: exit.how,
                };
                self.failed(upgrade, error, out)
            }
            (
                State::WaitingReady {
                    pid,
                    upgrade,
                    closed,
                },
                Event::Tick,
            ) => {
                if now < upgrade.deadline {
                    return State::WaitingReady {
                        pid,
                        upgrade,
                        closed,
                    };
                }
                out.push(Action::Kill { pid });
                let error = if closed {
                    UpgradeError::ExitedBeforeReady {
                        pid,
                        status: "closed its readiness pipe without reporting ready, then killed by SIGKILL".into(),
                    }
                } else {
                    UpgradeError::ReadyTimeout {
                        pid,
                        timeout: self.timing.ready_timeout,
                    }
                };
                self.failed(upgrade, error, out)
            }
            (State::WaitingReady { pid, upgrade, .. }, Event::StopSignal(sig)) => {
                self.abandon(pid, upgrade, sig, out)
            }
            (state @ State::WaitingReady { .. }, Event::UpgradeSignal) => {
                tracing::warn!("upgrade signal ignored: an upgrade is already running");
                state
            }
            (state @ State::WaitingReady { .. }, Event::Request(w, _)) => {
                out.push(Action::Reply {
                    waiters: vec![w],
                    result: Err(UpgradeError::Busy("an upgrade is already running")),
                });
                state
            }
            (
                State::WaitingReady {
                    pid,
                    upgrade,
                    closed,
                },
                Event::MainReturned,
            ) => {
                self.main_returned = true;
                if upgrade.rollback {
                    // The rollback is what will serve: it must finish.
                    return State::WaitingReady {
                        pid,
                        upgrade,
                        closed,
                    };
                }
                // No child outlives this process half-started.
                out.push(Action::Kill { pid });
                self.failed(upgrade, UpgradeError::Aborted, out)
            }

            // ---- Probation -----------------------------------------------------------------
            (
                State::Probation {
                    successor,
                    until,
                    rolled_back,
                },
                Event::Tick,
            ) => {
                if now < until {
                    State::Probation {
                        successor,
                        until,
                        rolled_back,
                    }
                } else {
                    self.settle(
                        "the new generation is past its probation: no rollback from now on",
                        out,
                    )
                }
            }
            (State::Probation { successor, .. }, Event::SuccessorNews { pid, news })
                if pid == successor =>
            {
                self.successor_news = Some(news);
                self.settle(self.no_rollback_because().unwrap_or("it said so"), out)
            }
            (
                State::Probation {
                    successor,
                    rolled_back,
                    ..
                },
                Event::ChildExited { pid, exit },
            ) if pid == successor => {
                if !self.successor_exited(pid, &exit, Some(rolled_back)) {
                    return self.settle("the new generation has exited", out);
                }
                out.push(Action::Spawn(Target::Rollback));
                State::Spawning {
                    target: Target::Rollback,
                    upgrade: Upgrade {
                        waiters: Vec::new(),
                        deadline: now + self.timing.ready_timeout,
                        rollback: true,
                    },
                }
            }
            (State::Probation { successor, .. }, Event::StopSignal(sig)) => {
                // Meant for the service: the sender may have read this pid just before the
                // hand-over (the pid file, the keeper, the service manager's MAINPID).
                tracing::info!(
                    signal = %sig,
                    new_pid = successor,
                    "stop signal while draining, within the new generation's probation: passed on to it, and no rollback from now on"
                );
                self.stop_requested = true;
                out.push(Action::StopSuccessor { pid: successor });
                self.settle("this generation was told to stop: not rolling back", out)
            }
            (state @ State::Probation { .. }, Event::MainReturned) => {
                // Stay able to roll back until the successor has outlived its probation.
                self.main_returned = true;
                state
            }

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

    /// Starts an upgrade.
    fn begin(
        &mut self,
        trigger: Trigger,
        waiters: Vec<Waiter>,
        now: Instant,
        out: &mut Vec<Action>,
    ) -> State {
        out.push(Action::Announce(Announcement::UpgradeStarted { trigger }));
        out.push(Action::Spawn(Target::Deploy));
        State::Spawning {
            target: Target::Deploy,
            upgrade: Upgrade {
                waiters,
                deadline: now + self.timing.ready_timeout,
                rollback: false,
            },
        }
    }

    /// An upgrade (or a rollback) failed. After a failed upgrade this generation serves on; a
    /// failed rollback leaves nothing serving, and nothing more to try.
    fn failed(&mut self, upgrade: Upgrade, error: UpgradeError, out: &mut Vec<Action>) -> State {
        if upgrade.rollback {
            tracing::error!("rollback failed ({error}): nothing is serving new connections");
            return self.settle("the rollback failed", out);
        }
        out.push(Action::Announce(Announcement::UpgradeFailed {
            error: error.clone(),
        }));
        out.push(Action::Reply {
            waiters: upgrade.waiters,
            result: Err(error),
        });
        State::Serving { deferred: false }
    }

    /// The child is ready: it serves from now on.
    fn hand_over(
        &mut self,
        pid: u32,
        upgrade: Upgrade,
        now: Instant,
        out: &mut Vec<Action>,
    ) -> State {
        let rollback = upgrade.rollback;
        self.successor_news = None;
        self.successor = Some(pid);
        out.push(Action::Announce(Announcement::HandedOver {
            new_pid: pid,
            rollback,
        }));
        out.push(Action::HandOffTo { pid });
        if !rollback {
            let reason = ShutdownReason::Upgrade { new_pid: pid };
            self.reason = Some(reason);
            out.push(Action::TriggerShutdown(reason));
            out.push(Action::ArmDeadline(reason));
        }
        out.push(Action::Reply {
            waiters: upgrade.waiters,
            result: Ok(pid),
        });
        State::Probation {
            successor: pid,
            until: now + self.timing.probation,
            rolled_back: rollback,
        }
    }

    /// A stop signal during an upgrade: the half-started process is killed, and this
    /// generation stops.
    fn abandon(&mut self, pid: u32, upgrade: Upgrade, sig: Signal, out: &mut Vec<Action>) -> State {
        out.push(Action::Kill { pid });
        if upgrade.rollback {
            // A rollback in progress: this generation is already draining.
            tracing::error!(signal = %sig, "rollback failed (stop signal {sig} during the rollback): nothing is serving new connections");
            self.stop_requested = true;
            return self.settle("this generation was told to stop", out);
        }
        tracing::warn!(signal = %sig, "stop signal during the upgrade: new process killed, stopping");
        out.push(Action::Reply {
            waiters: upgrade.waiters,
            result: Err(UpgradeError::Aborted),
        });
        self.stop(sig, out)
    }

    /// A final stop.
    fn stop(&mut self, sig: Signal, out: &mut Vec<Action>) -> State {
        let reason = ShutdownReason::Stop { signal: sig as i32 };
        self.stop_requested = true;
        self.reason = Some(reason);
        // The deadline first: the stop must happen on time whatever else hangs.
        out.push(Action::ArmDeadline(reason));
        out.push(Action::Announce(Announcement::Stopping { signal: sig }));
        out.push(Action::TriggerShutdown(reason));
        // Nothing will be passed on any more: new clients are refused once `main` drops what
        // it took, instead of queued on a socket nobody will accept from.
        if !self.settled {
            self.settled = true;
            out.push(Action::CloseListeners);
        }
        State::Draining { reason }
    }

    /// From now on this process starts nothing again.
    fn settle(&mut self, why: &str, out: &mut Vec<Action>) -> State {
        if !self.settled {
            self.settled = true;
            tracing::info!("{why}: no rollback from now on");
            out.push(Action::CloseListeners);
        }
        State::Draining {
            reason: self.drain_reason(),
        }
    }

    fn drain_reason(&self) -> ShutdownReason {
        // Settling only follows a hand-over or a stop, which set the reason.
        self.reason.unwrap_or(ShutdownReason::Stop { signal: 0 })
    }

    /// Logs how the successor ended and says whether to roll back: only a crash within its
    /// probation (`probation`: `Some(rolled_back)`), of a successor that is not itself a
    /// rollback, with nothing saying not to.
    fn successor_exited(&self, pid: u32, exit: &Exit, probation: Option<bool>) -> bool {
        let how = &exit.how;
        if let Some(why) = self.no_rollback_because() {
            tracing::info!(new_pid = pid, "the new generation exited ({how}): {why}");
        } else if exit.clean {
            tracing::error!(
                new_pid = pid,
                "the new generation exited while this one was draining ({how}): nothing is serving new connections"
            );
        } else {
            match probation {
                None => tracing::error!(
                    new_pid = pid,
                    probation = ?self.timing.probation,
                    "the new generation died ({how}) after its probation: not rolling back (its crash is not a failed upgrade); nothing is serving new connections"
                ),
                Some(true) => tracing::error!(
                    new_pid = pid,
                    "the rolled-back generation died ({how}): nothing is serving new connections"
                ),
                Some(false) => {
                    tracing::error!(
                        new_pid = pid,
                        "the new generation died ({how}) after taking over: rolling back to this generation's code"
                    );
                    return true;
                }
            }
        }
        false
    }

    /// Why the successor's exit, whatever its status, must not be rolled back; `None`: it may.
    fn no_rollback_because(&self) -> Option<&'static str> {
        match self.successor_news {
            Some(News::HandedOn) => {
                Some("it had handed over to a generation of its own, which serves")
            }
            Some(News::Stopping) => Some("it was told to stop: not rolling back"),
            None if self.stop_requested => {
                Some("this generation was told to stop: not rolling back")
            }
            None => None,
        }
    }
}

#[cfg(test)]
#[path = "machine_tests.rs"]
mod tests;
