//! Every (state, event) pair of the supervisor, without a process.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use super::super::event::{Action, Announcement, Event, Exit, News, Target, Trigger};
use super::Machine;
use super::Timing;
use crate::error::UpgradeError;
use crate::shutdown::ShutdownReason;

const READY_TIMEOUT: Duration = Duration::from_secs(30);
const PROBATION: Duration = Duration::from_secs(2);
const CHILD: u32 = 100;
const ROLLBACK: u32 = 200;

fn machine(started_by_upgrade: bool) -> Machine {
    Machine::new(
        Timing {
            ready_timeout: READY_TIMEOUT,
            probation: PROBATION,
            health: crate::health::policy::HealthPolicy::default(),
        },
        started_by_upgrade,
        false,
    )
}

fn crash() -> Exit {
    Exit {
        clean: false,
        code: 139,
        how: "killed by SIGSEGV".into(),
    }
}

fn clean() -> Exit {
    Exit {
        clean: true,
        code: 0,
        how: "exit status 0".into(),
    }
}

/// The states, each reached the way the shell reaches it, at `t0`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum At {
    Serving,
    ServingDeferred,
    Spawning,
    WaitingReady,
    WaitingReadyClosed,
    Probation,
    ProbationAfterRollback,
    DrainingUpgrade,
    DrainingStop,
    Exiting,
}

const ALL: [At; 10] = [
    At::Serving,
    At::ServingDeferred,
    At::Spawning,
    At::WaitingReady,
    At::WaitingReadyClosed,
    At::Probation,
    At::ProbationAfterRollback,
    At::DrainingUpgrade,
    At::DrainingStop,
    At::Exiting,
];

fn reach(at: At, t0: Instant) -> Machine {
    let mut m = machine(false);
    let ready = |m: &mut Machine| {
        m.handle(t0, Event::SelfReady);
    };
    match at {
        At::Serving => ready(&mut m),
        At::ServingDeferred => {
            m.handle(t0, Event::UpgradeSignal);
        }
        At::Spawning => {
            ready(&mut m);
            m.handle(t0, Event::UpgradeSignal);
        }
        At::WaitingReady | At::WaitingReadyClosed => {
            ready(&mut m);
            m.handle(t0, Event::UpgradeSignal);
            m.handle(t0, Event::Spawned { pid: CHILD });
            if at == At::WaitingReadyClosed {
                m.handle(t0, Event::ReadyClosed { pid: CHILD });
            }
        }
        At::Probation | At::DrainingUpgrade | At::ProbationAfterRollback => {
            ready(&mut m);
            m.handle(t0, Event::UpgradeSignal);
            m.handle(t0, Event::Spawned { pid: CHILD });
            m.handle(t0, Event::ChildReady { pid: CHILD });
            if at == At::DrainingUpgrade {
                m.handle(t0 + PROBATION, Event::Tick);
            }
            if at == At::ProbationAfterRollback {
                m.handle(
                    t0,
                    Event::ChildExited {
                        pid: CHILD,
                        exit: crash(),
                    },
                );
                m.handle(t0, Event::Spawned { pid: ROLLBACK });
                m.handle(t0, Event::ChildReady { pid: ROLLBACK });
            }
        }
        At::DrainingStop => {
            ready(&mut m);
            m.handle(t0, Event::StopSignal(Signal::SIGTERM));
        }
        At::Exiting => {
            ready(&mut m);
            m.handle(t0, Event::MainReturned);
        }
    }
    let expected = match at {
        At::Serving | At::ServingDeferred => "serving",
        At::Spawning => "spawning",
        At::WaitingReady | At::WaitingReadyClosed => "waiting for ready",
        At::Probation | At::ProbationAfterRollback => "probation",
        At::DrainingUpgrade | At::DrainingStop => "draining",
        At::Exiting => "exiting",
    };
    assert_eq!(m.state_name(), expected, "{at:?}");
    m
}

fn events() -> Vec<Event> {
    vec![
        Event::UpgradeSignal,
        Event::StopSignal(Signal::SIGTERM),
        Event::StopSignal(Signal::SIGINT),
        Event::StopPassedOn,
        Event::Request(7, Trigger::Control),
        Event::SelfReady,
        Event::Spawned { pid: 300 },
        Event::SpawnFailed(UpgradeError::Spawn("x".into())),
        Event::ChildReady { pid: CHILD },
        Event::ExecFailed {
            pid: CHILD,
            errno: libc::ENOENT,
            path: "/srv/app".into(),
        },
        Event::ReadyClosed { pid: CHILD },
        Event::ChildExited {
            pid: CHILD,
            exit: crash(),
        },
        Event::ChildExited {
            pid: CHILD,
            exit: clean(),
        },
        Event::SuccessorNews {
            pid: CHILD,
            news: News::HandedOn,
        },
        Event::SuccessorNews {
            pid: CHILD,
            news: News::Stopping,
        },
        Event::Tick,
        Event::MainReturned,
    ]
}

/// Every request gets exactly one reply, in every state, whatever happens next; no state
/// panics on any event.
#[test]
fn every_state_takes_every_event() {
    let t0 = Instant::now();
    for at in ALL {
        for event in events() {
            let mut m = reach(at, t0);
            let label = format!("{at:?} + {event:?}");
            let is_request = matches!(event, Event::Request(..));
            let out = m.handle(t0 + Duration::from_millis(1), event);
            let replies: Vec<_> = out
                .iter()
                .filter_map(|a| match a {
                    Action::Reply { waiters, .. } => Some(waiters.clone()),
                    _ => None,
                })
                .flatten()
                .filter(|w| *w == 7)
                .collect();
            if is_request && at != At::Serving && at != At::ServingDeferred {
                assert_eq!(replies, vec![7], "{label}: {out:?}");
            }
            // A request that started an upgrade is answered when it ends: drive it there.
            if is_request && (at == At::Serving || at == At::ServingDeferred) {
                assert!(replies.is_empty(), "{label}: {out:?}");
                assert!(out.contains(&Action::Spawn(Target::Deploy)), "{label}");
                let out = m.handle(t0, Event::SpawnFailed(UpgradeError::Spawn("x".into())));
                assert!(
                    out.iter().any(
                        |a| matches!(a, Action::Reply { waiters, result: Err(_) } if waiters == &[7])
                    ),
                    "{label}: {out:?}"
                );
            }
        }
    }
}

#[test]
fn an_upgrade_from_signal_to_commit() {
    let t0 = Instant::now();
    let mut m = reach(At::Serving, t0);
    let out = m.handle(t0, Event::UpgradeSignal);
    assert_eq!(
        out,
        vec![
            Action::Announce(Announcement::UpgradeStarted {
                trigger: Trigger::Signal
            }),
            Action::Spawn(Target::Deploy)
        ]
    );
    assert!(m.handle(t0, Event::Spawned { pid: CHILD }).is_empty());
    assert_eq!(m.next_deadline(), Some(t0 + READY_TIMEOUT));
    let reason = ShutdownReason::Upgrade { new_pid: CHILD };
    assert_eq!(
        m.handle(t0, Event::ChildReady { pid: CHILD }),
        vec![
            // It serves alone: it stops reporting its health (issue 18).
            Action::TellVerdict {
                pid: CHILD,
                verdict: crate::health::link::Verdict::Committed
            },
            Action::Announce(Announcement::HandedOver {
                new_pid: CHILD,
                rollback: false,
                judged: false,
            }),
            Action::HandOffTo { pid: CHILD },
            Action::TriggerShutdown(reason),
            Action::ArmDeadline(reason),
            Action::Reply {
                waiters: vec![],
                result: Ok(CHILD)
            },
        ]
    );
    assert_eq!(m.state_name(), "probation");
    assert!(m.handle(t0 + PROBATION / 2, Event::Tick).is_empty());
    assert_eq!(
        m.handle(t0 + PROBATION, Event::Tick),
        vec![Action::CloseListeners]
    );
    assert_eq!(m.state_name(), "draining");
    // main returns: nothing pending, the process may exit.
    m.handle(t0 + PROBATION, Event::MainReturned);
    assert!(m.may_exit());
}

#[test]
fn a_request_is_answered_with_the_new_pid() {
    let t0 = Instant::now();
    let mut m = reach(At::Serving, t0);
    m.handle(t0, Event::Request(1, Trigger::Api));
    m.handle(t0, Event::Spawned { pid: CHILD });
    let out = m.handle(t0, Event::ChildReady { pid: CHILD });
    assert!(out.contains(&Action::Reply {
        waiters: vec![1],
        result: Ok(CHILD)
    }));
}

fn failure(out: &[Action]) -> UpgradeError {
    assert!(
        out.iter()
            .any(|a| matches!(a, Action::Announce(Announcement::UpgradeFailed { .. }))),
        "{out:?}"
    );
    out.iter()
        .find_map(|a| match a {
            Action::Reply { result: Err(e), .. } => Some(e.clone()),
            _ => None,
        })
        .expect("a reply")
}

#[test]
fn failed_upgrades_serve_on() {
    let t0 = Instant::now();
    // exec failed
    let mut m = reach(At::WaitingReady, t0);
    let out = m.handle(
        t0,
        Event::ExecFailed {
            pid: CHILD,
            errno: libc::EACCES,
            path: "/srv/app".into(),
        },
    );
    assert!(out.contains(&Action::Kill { pid: CHILD }));
    assert!(matches!(failure(&out), UpgradeError::Exec { errno, .. } if errno == libc::EACCES));
    assert_eq!(m.state_name(), "serving");
    // exited before ready
    let mut m = reach(At::WaitingReadyClosed, t0);
    let out = m.handle(
        t0,
        Event::ChildExited {
            pid: CHILD,
            exit: crash(),
        },
    );
    assert!(
        matches!(failure(&out), UpgradeError::ExitedBeforeReady { pid: CHILD, status } if status == "killed by SIGSEGV")
    );
    // closed the pipe and hung on: killed at the deadline (at least 200 ms later)
    let mut m = reach(At::WaitingReadyClosed, t0);
    assert!(
        m.handle(t0 + Duration::from_millis(100), Event::Tick)
            .is_empty()
    );
    let out = m.handle(t0 + READY_TIMEOUT, Event::Tick);
    assert!(out.contains(&Action::Kill { pid: CHILD }));
    assert!(matches!(
        failure(&out),
        UpgradeError::ExitedBeforeReady { .. }
    ));
    // ready timeout
    let mut m = reach(At::WaitingReady, t0);
    assert!(m.handle(t0 + READY_TIMEOUT / 2, Event::Tick).is_empty());
    let out = m.handle(t0 + READY_TIMEOUT, Event::Tick);
    assert!(out.contains(&Action::Kill { pid: CHILD }));
    assert!(matches!(
        failure(&out),
        UpgradeError::ReadyTimeout { pid: CHILD, .. }
    ));
    assert_eq!(m.state_name(), "serving");
    // spawn failed
    let mut m = reach(At::Spawning, t0);
    let out = m.handle(
        t0,
        Event::SpawnFailed(UpgradeError::Limit("ARG_MAX".into())),
    );
    assert!(matches!(failure(&out), UpgradeError::Limit(_)));
    // a failed upgrade leaves the machine ready for the next one
    assert!(
        m.handle(t0, Event::UpgradeSignal)
            .contains(&Action::Spawn(Target::Deploy))
    );
}

/// The reported race: a stop signal and the readiness of the new generation in the same
/// wake-up. In either order, the successor does not outlive the stop.
#[test]
fn a_stop_and_ready_in_either_order() {
    let t0 = Instant::now();
    // Stop first: the child is killed, this generation stops.
    let mut m = reach(At::WaitingReady, t0);
    let out = m.handle(t0, Event::StopSignal(Signal::SIGTERM));
    assert_eq!(out[0], Action::Kill { pid: CHILD });
    assert!(out.contains(&Action::Announce(Announcement::Stopping {
        signal: Signal::SIGTERM
    })));
    assert!(out.contains(&Action::TriggerShutdown(ShutdownReason::Stop {
        signal: Signal::SIGTERM as i32
    })));
    // Its readiness, read after, changes nothing.
    assert!(
        m.handle(t0, Event::ChildReady { pid: CHILD })
            .iter()
            .all(|a| !matches!(a, Action::Announce(_)))
    );
    // Ready first: the stop is passed on to the successor.
    let mut m = reach(At::WaitingReady, t0);
    m.handle(t0, Event::ChildReady { pid: CHILD });
    let out = m.handle(t0, Event::StopSignal(Signal::SIGTERM));
    assert!(
        out.contains(&Action::StopSuccessor { pid: CHILD }),
        "{out:?}"
    );
    assert!(out.contains(&Action::CloseListeners));
    // ... and its exit is no reason to roll back.
    let out = m.handle(
        t0,
        Event::ChildExited {
            pid: CHILD,
            exit: crash(),
        },
    );
    assert!(!out.contains(&Action::Spawn(Target::Rollback)));
}

#[test]
fn a_crash_within_probation_rolls_back_once() {
    let t0 = Instant::now();
    let mut m = reach(At::Probation, t0);
    let out = m.handle(
        t0 + PROBATION / 2,
        Event::ChildExited {
            pid: CHILD,
            exit: crash(),
        },
    );
    assert_eq!(out, vec![Action::Spawn(Target::Rollback)]);
    m.handle(t0, Event::Spawned { pid: ROLLBACK });
    let out = m.handle(t0, Event::ChildReady { pid: ROLLBACK });
    assert!(out.contains(&Action::Announce(Announcement::HandedOver {
        new_pid: ROLLBACK,
        rollback: true,
        judged: false,
    })));
    // The application's shutdown resolved at the first hand-over, not again.
    assert!(!out.iter().any(|a| matches!(a, Action::TriggerShutdown(_))));
    // A crash of the rolled-back generation is not rolled back again.
    let out = m.handle(
        t0,
        Event::ChildExited {
            pid: ROLLBACK,
            exit: crash(),
        },
    );
    assert_eq!(out, vec![Action::CloseListeners]);
}

#[test]
fn no_rollback_after_probation_or_news_or_a_stop() {
    let t0 = Instant::now();
    let crashed = Event::ChildExited {
        pid: CHILD,
        exit: crash(),
    };
    let mut m = reach(At::DrainingUpgrade, t0);
    assert!(m.handle(t0, crashed).is_empty());
    // A crash seen after the probation ended, before its Tick (a loaded machine): past it.
    let mut m = reach(At::Probation, t0);
    let out = m.handle(
        t0 + PROBATION,
        Event::ChildExited {
            pid: CHILD,
            exit: crash(),
        },
    );
    assert_eq!(out, vec![Action::CloseListeners]);
    for news in [News::HandedOn, News::Stopping] {
        let mut m = reach(At::Probation, t0);
        assert_eq!(
            m.handle(t0, Event::SuccessorNews { pid: CHILD, news }),
            vec![Action::CloseListeners]
        );
        assert!(
            m.handle(
                t0,
                Event::ChildExited {
                    pid: CHILD,
                    exit: crash()
                }
            )
            .is_empty()
        );
    }
    // A clean exit within probation is not a crash to roll back.
    let mut m = reach(At::Probation, t0);
    let out = m.handle(
        t0,
        Event::ChildExited {
            pid: CHILD,
            exit: clean(),
        },
    );
    assert_eq!(out, vec![Action::CloseListeners]);
}

#[test]
fn a_failed_rollback_settles() {
    let t0 = Instant::now();
    for end in [
        Event::ReadyClosed { pid: ROLLBACK },
        Event::StopSignal(Signal::SIGTERM),
    ] {
        let mut m = reach(At::Probation, t0);
        m.handle(
            t0,
            Event::ChildExited {
                pid: CHILD,
                exit: crash(),
            },
        );
        m.handle(t0, Event::Spawned { pid: ROLLBACK });
        let mut out = m.handle(t0, end);
        out.extend(m.handle(t0 + READY_TIMEOUT, Event::Tick));
        assert!(out.contains(&Action::Kill { pid: ROLLBACK }), "{out:?}");
        assert!(out.contains(&Action::CloseListeners), "{out:?}");
        assert!(
            !out.iter().any(|a| matches!(a, Action::Announce(_))),
            "{out:?}"
        );
        assert_eq!(m.state_name(), "draining");
    }
}

#[test]
fn signals_before_ready() {
    let t0 = Instant::now();
    // A fresh start defers the upgrade until it is ready.
    let mut m = machine(false);
    assert!(m.handle(t0, Event::UpgradeSignal).is_empty());
    assert!(
        m.handle(t0, Event::SelfReady)
            .contains(&Action::Spawn(Target::Deploy))
    );
    // A generation started by an upgrade drops it (a broadcast meant for its parent).
    let mut m = machine(true);
    assert!(m.handle(t0, Event::UpgradeSignal).is_empty());
    assert!(m.handle(t0, Event::SelfReady).is_empty());
    assert_eq!(m.state_name(), "serving");
    // Once ready it acts on the signal (a keeper forwards one it held, right after READY).
    assert!(
        m.handle(t0, Event::UpgradeSignal)
            .contains(&Action::Spawn(Target::Deploy))
    );
}

#[test]
fn a_second_stop_exits_now_and_a_passed_on_stop_does_not() {
    let t0 = Instant::now();
    let mut m = reach(At::DrainingStop, t0);
    assert!(m.handle(t0, Event::StopPassedOn).is_empty());
    assert!(m.handle(t0, Event::StopSignal(Signal::SIGINT)).is_empty());
    assert_eq!(
        m.handle(t0, Event::StopSignal(Signal::SIGTERM)),
        vec![Action::ExitNow]
    );
    // After an upgrade a stop never exits at once: the drain goes on.
    let mut m = reach(At::DrainingUpgrade, t0);
    assert!(m.handle(t0, Event::StopSignal(Signal::SIGTERM)).is_empty());
}

#[test]
fn main_returning_during_an_upgrade_kills_the_child() {
    let t0 = Instant::now();
    let mut m = reach(At::WaitingReady, t0);
    let out = m.handle(t0, Event::MainReturned);
    assert!(out.contains(&Action::Kill { pid: CHILD }));
    assert!(matches!(failure(&out), UpgradeError::Aborted));
    assert!(m.may_exit());
    // During probation it waits until no rollback is possible.
    let mut m = reach(At::Probation, t0);
    m.handle(t0, Event::MainReturned);
    assert!(!m.may_exit());
    m.handle(t0 + PROBATION, Event::Tick);
    assert!(m.may_exit());
}
