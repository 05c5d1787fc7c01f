//! How the machine enters its states: an upgrade begins, fails, hands over (judged or not),
//! rolls back, stops, settles.

use std::time::Instant;

use nix::sys::signal::Signal;

use super::Machine;
use crate::error::UpgradeError;
use crate::health::link::Verdict as Told;
use crate::health::verdict::Verdict;
use crate::shutdown::ShutdownReason;
use crate::supervisor::event::{Action, Announcement, Exit, News, Target, Trigger, Waiter};
use crate::supervisor::state::{Judge, State, Upgrade};

impl Machine {
    /// Starts an upgrade.
    pub(super) fn begin(
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
    pub(super) fn failed(
        &mut self,
        upgrade: Upgrade,
        error: UpgradeError,
        out: &mut Vec<Action>,
    ) -> State {
        if upgrade.rollback {
            if let Some((bad, reason)) = self.unhealthy.take() {
                // The unhealthy generation was not told anything yet: it serves on, which is
                // better than nothing serving.
                tracing::error!(
                    new_pid = bad,
                    "rollback failed ({error}): the new generation, unhealthy, serves on"
                );
                out.push(Action::Reply {
                    waiters: upgrade.waiters,
                    result: Err(UpgradeError::Unhealthy {
                        pid: bad,
                        reason: format!("{reason}; rolling back failed ({error}): it serves on"),
                    }),
                });
                return self.settle("the rollback failed", out);
            }
            tracing::error!("rollback failed ({error}): nothing is serving new connections");
            out.push(Action::Reply {
                waiters: upgrade.waiters,
                result: Err(error),
            });
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

    /// The child is ready: it serves from now on, committed (it stops reporting its health).
    pub(super) fn hand_over(
        &mut self,
        pid: u32,
        upgrade: Upgrade,
        now: Instant,
        out: &mut Vec<Action>,
    ) -> State {
        out.push(Action::TellVerdict {
            pid,
            verdict: Told::Committed,
        });
        self.hand_over_judged(pid, upgrade, None, now, out)
    }

    /// The child is ready: it serves from now on. With a `judge`, the answer to the upgrade
    /// waits for its health verdict; without one it is answered now. A rollback that serves
    /// after an unhealthy successor answers for that successor, and tells it it was not
    /// committed (it drains and stops).
    pub(super) fn hand_over_judged(
        &mut self,
        pid: u32,
        upgrade: Upgrade,
        judge: Option<Box<Judge>>,
        now: Instant,
        out: &mut Vec<Action>,
    ) -> State {
        let rollback = upgrade.rollback;
        self.successor_news = None;
        self.successor = Some(pid);
        out.push(Action::Announce(Announcement::HandedOver {
            new_pid: pid,
            rollback,
            judged: judge.is_some() && !rollback,
        }));
        out.push(Action::HandOffTo { pid });
        if !rollback {
            let reason = ShutdownReason::Upgrade { new_pid: pid };
            self.reason = Some(reason);
            out.push(Action::TriggerShutdown(reason));
            out.push(Action::ArmDeadline(reason));
        }
        let judge = judge.map(|mut j| {
            j.waiters = upgrade.waiters.clone();
            j
        });
        match (rollback, self.unhealthy.take()) {
            (true, Some((bad, reason))) => {
                out.push(Action::TellVerdict {
                    pid: bad,
                    verdict: Told::Rejected {
                        by: pid,
                        reason: reason.clone(),
                    },
                });
                out.push(Action::Reply {
                    waiters: upgrade.waiters,
                    result: Err(UpgradeError::Unhealthy { pid: bad, reason }),
                });
            }
            _ if judge.is_some() => tracing::info!(
                new_pid = pid,
                "the new generation counts what it serves: the upgrade is answered with its health verdict"
            ),
            _ => out.push(Action::Reply {
                waiters: upgrade.waiters,
                result: Ok(pid),
            }),
        }
        State::Probation {
            successor: pid,
            until: now + self.timing.probation,
            rolled_back: rollback,
            judge,
        }
    }

    /// Starts this generation's own image again; the upgrade's requests (`waiters`) are answered
    /// when it serves.
    pub(super) fn roll_back(
        &mut self,
        waiters: Vec<Waiter>,
        now: Instant,
        out: &mut Vec<Action>,
    ) -> State {
        out.push(Action::Spawn(Target::Rollback));
        State::Spawning {
            target: Target::Rollback,
            upgrade: Upgrade {
                waiters,
                deadline: now + self.timing.ready_timeout,
                rollback: true,
            },
        }
    }

    /// Answers `waiters` with the unhealthy verdict recorded, when no rollback follows.
    pub(super) fn answer_unhealthy(
        &mut self,
        waiters: Vec<Waiter>,
        what: &str,
        out: &mut Vec<Action>,
    ) {
        if let Some((pid, reason)) = self.unhealthy.take() {
            out.push(Action::Reply {
                waiters,
                result: Err(UpgradeError::Unhealthy {
                    pid,
                    reason: format!("{reason}; {what}"),
                }),
            });
        }
    }

    /// Acts on a health verdict during the probation of `successor`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn judged(
        &mut self,
        successor: u32,
        until: Instant,
        rolled_back: bool,
        mut judge: Box<Judge>,
        verdict: Verdict,
        now: Instant,
        out: &mut Vec<Action>,
    ) -> State {
        if !matches!(verdict, Verdict::Pending(_)) && judge.watch.ignored() > 0 {
            tracing::warn!(
                new_pid = successor,
                dropped = judge.watch.ignored(),
                "health reports whose counts went backwards were dropped"
            );
        }
        match verdict {
            Verdict::Pending(_) => {
                // Reports come every REPORT_INTERVAL; these are the moments the verdict can
                // change without one.
                let end = judge.since + self.timing.health.probation;
                judge.next = if now < end {
                    end
                } else {
                    judge.since + self.timing.health.max_probation
                };
                State::Probation {
                    successor,
                    until,
                    rolled_back,
                    judge: Some(judge),
                }
            }
            Verdict::Healthy { why, numbers } => {
                tracing::info!(new_pid = successor, %numbers, "health verdict: committed ({why})");
                out.push(Action::Announce(Announcement::Verdict {
                    new_pid: successor,
                    error: None,
                    figures: numbers.figures(),
                }));
                out.push(Action::TellVerdict {
                    pid: successor,
                    verdict: Told::Committed,
                });
                out.push(Action::Reply {
                    waiters: judge.waiters,
                    result: Ok(successor),
                });
                self.unjudged_probation(
                    successor,
                    until,
                    rolled_back,
                    now,
                    "the new generation is committed and past its probation",
                    out,
                )
            }
            Verdict::Unhealthy { reason, numbers } => {
                let reason = format!("{reason} ({numbers})");
                out.push(Action::Announce(Announcement::Verdict {
                    new_pid: successor,
                    error: Some(
                        UpgradeError::Unhealthy {
                            pid: successor,
                            reason: reason.clone(),
                        }
                        .to_string(),
                    ),
                    figures: numbers.figures(),
                }));
                tracing::error!(
                    new_pid = successor,
                    "health verdict: unhealthy: {reason}; rolling back to this generation's code"
                );
                self.unhealthy = Some((successor, reason));
                if self.settled || self.stop_requested {
                    self.answer_unhealthy(
                        judge.waiters,
                        "it is not rolled back (this generation was told to stop)",
                        out,
                    );
                    return self.settle("this generation was told to stop", out);
                }
                self.roll_back(judge.waiters, now, out)
            }
        }
    }

    /// The previous generation's verdict on this one.
    pub(super) fn told(&mut self, state: State, told: Told, out: &mut Vec<Action>) -> State {
        let awaited = self.awaiting_until.take().is_some();
        self.next_report = None;
        match told {
            Told::Committed => {
                if awaited {
                    tracing::info!("the previous generation committed this one");
                }
                state
            }
            Told::Rejected { by, reason } => match state {
                State::Serving { .. } => {
                    tracing::error!(
                        serving_pid = by,
                        "the previous generation did not commit this one ({reason}); pid {by} serves: this one drains and stops"
                    );
                    // Another generation serves: drain as after a hand-over, and say nothing to
                    // anyone (the pid file, the keeper and the service manager name `by`).
                    let reason = ShutdownReason::Upgrade { new_pid: by };
                    self.reason = Some(reason);
                    out.push(Action::ArmDeadline(reason));
                    out.push(Action::TriggerShutdown(reason));
                    self.settle("this generation was not committed", out)
                }
                other => {
                    tracing::warn!(
                        state = other.name(),
                        "a rejection by the previous generation in a state that does not serve: ignored"
                    );
                    other
                }
            },
        }
    }

    /// A stop signal during an upgrade: the half-started process is killed, and this
    /// generation stops.
    pub(super) fn abandon(
        &mut self,
        pid: u32,
        upgrade: Upgrade,
        sig: Signal,
        out: &mut Vec<Action>,
    ) -> State {
        out.push(Action::Kill { pid });
        if upgrade.rollback {
            // A rollback in progress: this generation is already draining.
            tracing::error!(signal = %sig, "rollback failed (stop signal {sig} during the rollback): nothing is serving new connections");
            out.push(Action::Reply {
                waiters: upgrade.waiters,
                result: Err(UpgradeError::Aborted),
            });
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
    pub(super) fn stop(&mut self, sig: Signal, out: &mut Vec<Action>) -> State {
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
    /// A probation with no verdict pending: it goes on until `until`, then settles (`why` says
    /// what ended it).
    pub(super) fn unjudged_probation(
        &mut self,
        successor: u32,
        until: Instant,
        rolled_back: bool,
        now: Instant,
        why: &str,
        out: &mut Vec<Action>,
    ) -> State {
        if now < until {
            State::Probation {
                successor,
                until,
                rolled_back,
                judge: None,
            }
        } else {
            self.settle(why, out)
        }
    }

    pub(super) fn settle(&mut self, why: &str, out: &mut Vec<Action>) -> State {
        if !self.settled {
            self.settled = true;
            tracing::info!("{why}: no rollback from now on");
            out.push(Action::CloseListeners);
        }
        State::Draining {
            reason: self.drain_reason(),
        }
    }

    pub(super) fn drain_reason(&self) -> ShutdownReason {
        // Settling only follows a hand-over or a stop, which set the reason.
        self.reason.unwrap_or(ShutdownReason::Stop { signal: 0 })
    }

    /// Logs how the successor ended and says whether to roll back: only a crash within its
    /// probation (`probation`: `Some(rolled_back)`), of a successor that is not itself a
    /// rollback, with nothing saying not to.
    pub(super) fn successor_exited(&self, pid: u32, exit: &Exit, probation: Option<bool>) -> bool {
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
    pub(super) fn no_rollback_because(&self) -> Option<&'static str> {
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
