//! The rules while the successor is on probation: its reports, its verdict, its exit, a stop.

use std::time::Instant;

use super::Machine;
use crate::error::UpgradeError;
use crate::supervisor::event::{Action, Event, News};
use crate::supervisor::state::State;

impl Machine {
    pub(super) fn step_probation(
        &mut self,
        state: State,
        now: Instant,
        event: Event,
        out: &mut Vec<Action>,
    ) -> State {
        match (state, event) {
            // ---- Probation -----------------------------------------------------------------
            (
                State::Probation {
                    successor,
                    until,
                    rolled_back,
                    judge: Some(mut judge),
                },
                Event::HealthReport { pid, report },
            ) if pid == successor => {
                let verdict = judge
                    .watch
                    .report(report, now.saturating_duration_since(judge.since));
                self.judged(successor, until, rolled_back, judge, verdict, now, out)
            }
            (
                State::Probation {
                    successor,
                    until,
                    rolled_back,
                    judge: Some(judge),
                },
                Event::Tick,
            ) => {
                let verdict = judge.watch.tick(now.saturating_duration_since(judge.since));
                self.judged(successor, until, rolled_back, judge, verdict, now, out)
            }
            (
                State::Probation {
                    successor,
                    until,
                    rolled_back,
                    judge: None,
                },
                Event::Tick,
            ) => self.unjudged_probation(
                successor,
                until,
                rolled_back,
                now,
                "the new generation is past its probation",
                out,
            ),
            (
                State::Probation {
                    successor, judge, ..
                },
                Event::SuccessorNews { pid, news },
            ) if pid == successor => {
                self.successor_news = Some(news);
                if let Some(j) = judge {
                    // It handed on (a newer release serves) or was told to stop: there is no
                    // verdict to wait for.
                    let result = match news {
                        News::HandedOn => Ok(pid),
                        News::Stopping => Err(UpgradeError::Aborted),
                    };
                    out.push(Action::Reply {
                        waiters: j.waiters,
                        result,
                    });
                }
                self.settle(self.no_rollback_because().unwrap_or("it said so"), out)
            }
            (
                State::Probation {
                    successor,
                    rolled_back,
                    judge,
                    ..
                },
                Event::ChildExited { pid, exit },
            ) if pid == successor => {
                // The upgrade's requests are answered once it is clear what serves.
                let waiters = judge.map(|j| j.waiters).unwrap_or_default();
                if !waiters.is_empty() {
                    let reason = format!("it exited during its probation ({})", exit.how);
                    self.unhealthy = Some((pid, reason));
                }
                if !self.successor_exited(pid, &exit, Some(rolled_back)) {
                    self.answer_unhealthy(waiters, "it was not rolled back", out);
                    return self.settle("the new generation has exited", out);
                }
                self.roll_back(waiters, now, out)
            }
            (
                State::Probation {
                    successor, judge, ..
                },
                Event::StopSignal(sig),
            ) => {
                if let Some(j) = judge {
                    out.push(Action::Reply {
                        waiters: j.waiters,
                        result: Err(UpgradeError::Aborted),
                    });
                }
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

            (state, event) => self.step_rest(state, event, out),
        }
    }
}
