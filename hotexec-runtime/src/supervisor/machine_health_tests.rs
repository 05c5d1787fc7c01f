//! The health gate in the supervisor (issue 18), without a process: the old generation judging
//! a new one that counts what it serves (both serve until the verdict), and the new generation
//! reporting, refusing upgrades until it is committed, draining when it is not.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use super::super::event::{Action, Announcement, Event, Exit, Target, Trigger};
use super::{Machine, Timing};
use crate::error::UpgradeError;
use crate::health::link::Verdict as Told;
use crate::health::policy::HealthPolicy;
use crate::health::{Counts, Report};
use crate::shutdown::ShutdownReason;

const CHILD: u32 = 100;
const PROBATION: Duration = Duration::from_secs(2);

fn machine(started_by_upgrade: bool, judged: bool, health: HealthPolicy) -> Machine {
    Machine::new(
        Timing {
            ready_timeout: Duration::from_secs(30),
            probation: PROBATION,
            health,
        },
        started_by_upgrade,
        judged,
    )
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn served(ok: u64, bad: u64) -> Report {
    Report {
        counts: Counts {
            success: ok,
            server_error: bad,
            connections: ok + bad,
            ..Counts::default()
        },
        uptime: ms(1),
        counting: true,
        veto: None,
    }
}

/// A serving generation whose upgrade's child is spawned and has sent `first` before READY.
fn spawned(t0: Instant, health: HealthPolicy, first: Option<Report>) -> Machine {
    let mut m = machine(false, false, health);
    m.handle(t0, Event::SelfReady);
    let out = m.handle(t0, Event::UpgradeSignal);
    assert!(
        out.contains(&Action::Announce(Announcement::UpgradeStarted {
            trigger: Trigger::Signal
        }))
    );
    // The shell's answer to UpgradeStarted: this generation's numbers, at 0.1% bad.
    assert!(
        m.handle(t0, Event::Baseline(served(99_900, 100)))
            .is_empty()
    );
    m.handle(t0, Event::Spawned { pid: CHILD });
    if let Some(r) = first {
        assert!(
            m.handle(
                t0,
                Event::HealthReport {
                    pid: CHILD,
                    report: r
                }
            )
            .is_empty()
        );
    }
    m
}

/// A machine judging CHILD since `t0`.
fn judging(t0: Instant) -> Machine {
    let mut m = spawned(t0, HealthPolicy::default(), Some(served(0, 0)));
    let out = m.handle(t0, Event::ChildReady { pid: CHILD });
    assert_eq!(
        out,
        vec![Action::Announce(Announcement::Judging { new_pid: CHILD })]
    );
    assert_eq!(m.state_name(), "judging");
    m
}

fn report(m: &mut Machine, at: Instant, ok: u64, bad: u64) -> Vec<Action> {
    m.handle(
        at,
        Event::HealthReport {
            pid: CHILD,
            report: served(ok, bad),
        },
    )
}

fn triggers_shutdown(out: &[Action]) -> bool {
    out.iter().any(|a| matches!(a, Action::TriggerShutdown(_)))
}

#[test]
fn a_counting_generation_serves_beside_this_one_until_it_is_committed() {
    let t0 = Instant::now();
    let mut m = judging(t0);
    // Nothing is handed over while it is judged: no pid file, no Shutdown, no reply.
    let mut t = 0;
    while t < 1_900 {
        t += 100;
        let out = report(&mut m, t0 + ms(t), t * 2, 0);
        assert!(out.is_empty(), "{t}: {out:?}");
    }
    assert_eq!(m.next_deadline(), Some(t0 + PROBATION));
    let out = report(&mut m, t0 + PROBATION, 4_000, 0);
    assert_eq!(
        out[0],
        Action::TellVerdict {
            pid: CHILD,
            verdict: Told::Committed
        }
    );
    assert!(out.contains(&Action::Announce(Announcement::HandedOver {
        new_pid: CHILD,
        rollback: false
    })));
    assert!(
        out.contains(&Action::TriggerShutdown(ShutdownReason::Upgrade {
            new_pid: CHILD
        }))
    );
    assert!(out.contains(&Action::Reply {
        waiters: vec![],
        result: Ok(CHILD)
    }));
    assert_eq!(m.state_name(), "probation");
}

#[test]
fn an_unhealthy_generation_is_rejected_and_this_one_serves_on() {
    let t0 = Instant::now();
    let mut m = judging(t0);
    let mut out = Vec::new();
    let mut t = 0;
    // 5% bad answers, 1000 requests a second: caught within the first second.
    while out.is_empty() && t < 2_000 {
        t += 100;
        out = report(&mut m, t0 + ms(t), t * 19 / 20, t / 20);
    }
    assert!(t < 1_000, "verdict only after {t} ms");
    let Action::TellVerdict {
        pid: CHILD,
        verdict: Told::Rejected { by, reason },
    } = &out[0]
    else {
        panic!("{out:?}")
    };
    assert_eq!(*by, std::process::id());
    assert!(
        reason.contains("bad answer") && reason.contains("limit of 2.0%"),
        "{reason}"
    );
    let Some(Action::Reply {
        result: Err(UpgradeError::Unhealthy { pid: CHILD, reason }),
        ..
    }) = out.iter().find(|a| matches!(a, Action::Reply { .. }))
    else {
        panic!("{out:?}")
    };
    assert!(reason.contains("new generation:"), "the numbers: {reason}");
    assert!(out.iter().any(|a| matches!(
        a,
        Action::Announce(Announcement::UpgradeFailed {
            error: UpgradeError::Unhealthy { .. }
        })
    )));
    assert!(
        !triggers_shutdown(&out),
        "this generation never stopped: {out:?}"
    );
    assert!(
        !out.iter().any(|a| matches!(a, Action::Kill { .. })),
        "drained, not killed"
    );
    assert_eq!(m.state_name(), "serving");
    // Its exit later (after its drain) is not an event of this state.
    let exit = Exit {
        clean: true,
        how: "exit status 0".into(),
    };
    assert!(
        m.handle(t0 + ms(3_000), Event::ChildExited { pid: CHILD, exit })
            .is_empty()
    );
    // And a later upgrade starts as usual.
    assert!(
        m.handle(t0 + ms(3_000), Event::UpgradeSignal)
            .contains(&Action::Spawn(Target::Deploy))
    );
}

#[test]
fn a_check_that_fails_rejects_at_once() {
    let t0 = Instant::now();
    let mut m = judging(t0);
    let mut vetoed = served(10, 0);
    vetoed.veto = Some("check \"database\" failed: no answer".into());
    let out = m.handle(
        t0 + ms(100),
        Event::HealthReport {
            pid: CHILD,
            report: vetoed,
        },
    );
    assert!(
        matches!(&out[0], Action::TellVerdict { verdict: Told::Rejected { reason, .. }, .. } if reason.contains("database")),
        "{out:?}"
    );
}

#[test]
fn a_quiet_generation_is_committed_at_max_probation_and_a_silent_one_too() {
    let t0 = Instant::now();
    let mut m = judging(t0);
    report(&mut m, t0 + ms(500), 3, 0);
    // No more reports (a hung reporter, or nothing to say): the deadlines decide.
    assert!(m.handle(t0 + PROBATION, Event::Tick).is_empty());
    assert_eq!(m.next_deadline(), Some(t0 + ms(10_000)));
    let out = m.handle(t0 + ms(10_000), Event::Tick);
    assert!(triggers_shutdown(&out), "{out:?}");
}

#[test]
fn a_generation_that_counts_nothing_or_says_nothing_is_handed_over_at_ready() {
    let t0 = Instant::now();
    let silent = Report {
        counting: false,
        ..served(0, 0)
    };
    for first in [Some(silent), None] {
        let mut m = spawned(t0, HealthPolicy::default(), first.clone());
        let out = m.handle(t0, Event::ChildReady { pid: CHILD });
        assert!(triggers_shutdown(&out), "{first:?}: {out:?}");
        assert_eq!(m.state_name(), "probation");
    }
    // The gate off: a counting one too.
    let off = HealthPolicy {
        enabled: false,
        ..HealthPolicy::default()
    };
    let mut m = spawned(t0, off, Some(served(0, 0)));
    assert!(triggers_shutdown(
        &m.handle(t0, Event::ChildReady { pid: CHILD })
    ));
}

#[test]
fn a_crash_or_a_stop_during_the_probation() {
    let t0 = Instant::now();
    // A crash: this generation never stopped serving, so nothing is rolled back.
    let mut m = judging(t0);
    let crash = Exit {
        clean: false,
        how: "killed by SIGSEGV".into(),
    };
    let out = m.handle(
        t0 + ms(300),
        Event::ChildExited {
            pid: CHILD,
            exit: crash,
        },
    );
    assert!(
        !out.iter().any(|a| matches!(a, Action::Spawn(_))),
        "{out:?}"
    );
    assert!(
        out.iter().any(|a| matches!(a, Action::Reply { result: Err(UpgradeError::Unhealthy { reason, .. }), .. } if reason.contains("SIGSEGV"))),
        "{out:?}"
    );
    assert_eq!(m.state_name(), "serving");
    // A stop: meant for the service, so both stop.
    let mut m = judging(t0);
    let out = m.handle(t0 + ms(300), Event::StopSignal(Signal::SIGTERM));
    assert!(
        out.contains(&Action::StopSuccessor { pid: CHILD }),
        "{out:?}"
    );
    assert!(out.contains(&Action::Reply {
        waiters: vec![],
        result: Err(UpgradeError::Aborted)
    }));
    assert!(out.contains(&Action::TriggerShutdown(ShutdownReason::Stop {
        signal: Signal::SIGTERM as i32
    })));
    // Upgrades wait meanwhile.
    let mut m = judging(t0);
    assert!(m.handle(t0, Event::UpgradeSignal).is_empty());
    assert!(matches!(
        m.handle(t0, Event::Request(7)).as_slice(),
        [Action::Reply {
            result: Err(UpgradeError::Busy(_)),
            ..
        }]
    ));
}

#[test]
fn the_new_side_reports_until_committed_and_upgrades_only_then() {
    let t0 = Instant::now();
    let mut m = machine(true, true, HealthPolicy::default());
    assert!(m.handle(t0, Event::SelfReady).is_empty());
    assert_eq!(m.next_deadline(), Some(t0 + ms(100)));
    assert_eq!(
        m.handle(t0 + ms(100), Event::Tick),
        vec![Action::SendReport]
    );
    assert!(m.handle(t0 + ms(150), Event::Tick).is_empty());
    // On probation: no upgrade of its own.
    assert!(m.handle(t0 + ms(150), Event::UpgradeSignal).is_empty());
    assert!(matches!(
        m.handle(t0 + ms(150), Event::Request(1)).as_slice(),
        [Action::Reply {
            result: Err(UpgradeError::Busy(why)),
            ..
        }] if why.contains("on probation")
    ));
    assert!(
        m.handle(t0 + ms(200), Event::Verdict(Told::Committed))
            .is_empty()
    );
    assert!(
        m.handle(t0 + ms(300), Event::Tick).is_empty(),
        "no more reports"
    );
    assert!(
        m.handle(t0 + ms(300), Event::UpgradeSignal)
            .contains(&Action::Spawn(Target::Deploy))
    );
}

#[test]
fn the_new_side_drains_quietly_when_rejected() {
    let t0 = Instant::now();
    let mut m = machine(true, true, HealthPolicy::default());
    m.handle(t0, Event::SelfReady);
    let out = m.handle(
        t0 + ms(400),
        Event::Verdict(Told::Rejected {
            by: 42,
            reason: "5.0% of its requests got a bad answer".into(),
        }),
    );
    let reason = ShutdownReason::Upgrade { new_pid: 42 };
    assert_eq!(
        out,
        vec![
            Action::ArmDeadline(reason),
            Action::TriggerShutdown(reason),
            Action::CloseListeners
        ],
        "no announcement: the pid file, keeper and service manager name the old generation"
    );
    assert_eq!(m.state_name(), "draining");
}

#[test]
fn the_new_side_takes_over_if_its_judge_dies_and_not_after_a_verdict() {
    let t0 = Instant::now();
    let mut m = machine(true, true, HealthPolicy::default());
    m.handle(t0, Event::SelfReady);
    assert_eq!(
        m.handle(t0 + ms(500), Event::ParentGone),
        vec![Action::Announce(Announcement::TakingOver)]
    );
    let mut m = machine(true, true, HealthPolicy::default());
    m.handle(t0, Event::SelfReady);
    m.handle(t0, Event::Verdict(Told::Committed));
    assert!(m.handle(t0 + ms(500), Event::ParentGone).is_empty());
    // Not judged at all (a keeper's generation 1, or the gate off): reports nothing.
    let mut m = machine(true, false, HealthPolicy::default());
    m.handle(t0, Event::SelfReady);
    assert!(m.handle(t0 + ms(500), Event::Tick).is_empty());
    assert!(m.handle(t0 + ms(500), Event::ParentGone).is_empty());
}
