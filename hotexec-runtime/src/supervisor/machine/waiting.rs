//! The rules while a new generation starts: its readiness, its exit, its deadline.

use std::time::{Duration, Instant};

use super::Machine;
use crate::error::UpgradeError;
use crate::health::verdict::Probation as Watch;
use crate::supervisor::event::{Action, Event};
use crate::supervisor::state::{Judge, State};

impl Machine {
    pub(super) fn step_waiting(
        &mut self,
        state: State,
        now: Instant,
        event: Event,
        out: &mut Vec<Action>,
    ) -> State {
        match (state, event) {
            // ---- WaitingReady --------------------------------------------------------------
            (
                State::WaitingReady {
                    pid,
                    upgrade,
                    closed,
                    ..
                },
                Event::HealthReport { pid: p, report },
            ) if p == pid => State::WaitingReady {
                pid,
                upgrade,
                closed,
                report: Some(report),
            },
            (
                State::WaitingReady {
                    pid,
                    upgrade,
                    report,
                    ..
                },
                Event::ChildReady { pid: p },
            ) if p == pid => match report {
                // It counts what it serves: it serves from now on, and its health decides
                // whether it stays (the answer to the upgrade waits for the verdict).
                Some(report)
                    if report.counting && self.timing.health.enabled && !upgrade.rollback =>
                {
                    let mut watch =
                        Watch::new(std::mem::take(&mut self.baseline), self.timing.health);
                    let _ = watch.report(report, Duration::ZERO);
                    let judge = Box::new(Judge {
                        watch,
                        since: now,
                        next: now + self.timing.health.probation,
                        waiters: Vec::new(),
                    });
                    self.hand_over_judged(pid, upgrade, Some(judge), now, out)
                }
                // A generation that counts nothing (or a build that does not report): committed
                // on the crash watch of the probation, as before the health gate.
                _ => self.hand_over(pid, upgrade, now, out),
            },
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
                    pid,
                    mut upgrade,
                    report,
                    ..
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
                    report,
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
                    report,
                },
                Event::Tick,
            ) => {
                if now < upgrade.deadline {
                    return State::WaitingReady {
                        pid,
                        upgrade,
                        closed,
                        report,
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
                    report,
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
                        report,
                    };
                }
                // No child outlives this process half-started.
                out.push(Action::Kill { pid });
                self.failed(upgrade, UpgradeError::Aborted, out)
            }

            (state, event) => self.step_rest(state, event, out),
        }
    }
}
