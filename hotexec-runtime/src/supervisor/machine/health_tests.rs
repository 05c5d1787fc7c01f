//! The health gate in the supervisor (issue 18), without a process: a new generation that
//! counts what it serves is handed over at READY as always, but the upgrade is answered with
//! its health verdict; an unhealthy one is rolled back to this generation's exact image and
//! told, once the rollback serves, that it was not committed. The new generation's side:
//! reporting until the verdict, draining quietly when rejected.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use super::super::event::{Action, Announcement, Event, Exit, Target, Trigger};
use super::{Machine, Timing};
use crate::error::UpgradeError;
use crate::health::Report;
use crate::health::link::Verdict as Told;
use crate::health::policy::HealthPolicy;
use crate::shutdown::ShutdownReason;

const CHILD: u32 = 100;
const ROLLBACK: u32 = 200;
const WAITER: u64 = 7;
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
    Report::served(ok, bad, ms(1))
}

/// A serving generation whose upgrade (asked for by request WAITER) has spawned CHILD, which
/// sent `first` before READY.
fn spawned(t0: Instant, health: HealthPolicy, first: Option<Report>) -> Machine {
    let mut m = machine(false, false, health);
    m.handle(t0, Event::SelfReady);
    let out = m.handle(t0, Event::Request(WAITER, Trigger::Api));
    assert!(
        out.contains(&Action::Announce(Announcement::UpgradeStarted {
            trigger: Trigger::Api
        }))
    );
    // The shell's answer to UpgradeStarted: this generation's numbers, at 0.1% bad.
    assert!(
        m.handle(t0, Event::Baseline(served(99_900, 100)))
            .is_empty()
    );
    m.handle(t0, Event::Spawned { pid: CHILD });
    if let Some(r) = first {
        let out = m.handle(
            t0,
            Event::HealthReport {
                pid: CHILD,
                report: r,
            },
        );
        assert!(out.is_empty(), "{out:?}");
    }
    m
}

fn replies(out: &[Action]) -> Vec<&Result<u32, UpgradeError>> {
    out.iter()
        .filter_map(|a| match a {
            Action::Reply { waiters, result } if waiters.contains(&WAITER) => Some(result),
            _ => None,
        })
        .collect()
}

/// CHILD, counting, handed over at `t0`: judged, the request unanswered.
fn judged(t0: Instant) -> Machine {
    let mut m = spawned(t0, HealthPolicy::default(), Some(served(0, 0)));
    let out = m.handle(t0, Event::ChildReady { pid: CHILD });
    assert!(out.contains(&Action::Announce(Announcement::HandedOver {
        new_pid: CHILD,
        rollback: false,
        judged: true,
    })));
    assert!(
        out.contains(&Action::TriggerShutdown(ShutdownReason::Upgrade {
            new_pid: CHILD
        }))
    );
    assert!(
        replies(&out).is_empty(),
        "answered with the verdict: {out:?}"
    );
    assert!(
        !out.iter().any(|a| matches!(a, Action::TellVerdict { .. })),
        "{out:?}"
    );
    assert_eq!(m.state_name(), "probation");
    m
}

/// `out` without the verdict's announcement for the evidence, which must be there once.
fn verdict_announced(out: Vec<Action>, committed: bool) -> Vec<Action> {
    let (verdicts, rest): (Vec<_>, Vec<_>) = out
        .into_iter()
        .partition(|a| matches!(a, Action::Announce(Announcement::Verdict { .. })));
    assert_eq!(
        verdicts.len(),
        1,
        "one verdict announced: {verdicts:?} {rest:?}"
    );
    let Action::Announce(Announcement::Verdict {
        new_pid,
        error,
        figures,
    }) = &verdicts[0]
    else {
        unreachable!()
    };
    assert_eq!(*new_pid, CHILD);
    assert_eq!(error.is_none(), committed);
    assert!(
        figures.0.iter().any(|(k, v)| *k == "requests" && *v > 0.0),
        "{figures:?}"
    );
    rest
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

#[test]
fn a_healthy_generation_is_answered_ok_at_the_end_of_its_probation() {
    let t0 = Instant::now();
    let mut m = judged(t0);
    let mut t = 0;
    while t < 1_900 {
        t += 100;
        let out = report(&mut m, t0 + ms(t), t * 2, 0);
        assert!(out.is_empty(), "{t}: {out:?}");
    }
    assert_eq!(m.next_deadline(), Some(t0 + PROBATION));
    let out = verdict_announced(report(&mut m, t0 + PROBATION, 4_000, 0), true);
    assert_eq!(
        out[0],
        Action::TellVerdict {
            pid: CHILD,
            verdict: Told::Committed
        }
    );
    assert_eq!(replies(&out), vec![&Ok(CHILD)]);
    assert!(
        out.contains(&Action::CloseListeners),
        "past its probation: {out:?}"
    );
}

#[test]
fn an_unhealthy_generation_is_rolled_back_and_told_once_the_rollback_serves() {
    let t0 = Instant::now();
    let mut m = judged(t0);
    let mut out = Vec::new();
    let mut t = 0;
    // 5% bad answers, 1000 requests a second: caught within the first second.
    while out.is_empty() && t < 2_000 {
        t += 100;
        out = report(&mut m, t0 + ms(t), t * 19 / 20, t / 20);
    }
    assert!(t < 1_000, "verdict only after {t} ms");
    let out = verdict_announced(out, false);
    assert_eq!(out, vec![Action::Spawn(Target::Rollback)]);
    assert_eq!(m.state_name(), "spawning");
    let at = t0 + ms(t);
    m.handle(at, Event::Spawned { pid: ROLLBACK });
    // Nobody is told anything until the rollback serves: the unhealthy one serves meanwhile.
    let out = m.handle(at + ms(30), Event::ChildReady { pid: ROLLBACK });
    assert!(out.contains(&Action::Announce(Announcement::HandedOver {
        new_pid: ROLLBACK,
        rollback: true,
        judged: false,
    })));
    let told = out.iter().find_map(|a| match a {
        Action::TellVerdict {
            pid: CHILD,
            verdict: Told::Rejected { by, reason },
        } => Some((*by, reason.clone())),
        _ => None,
    });
    let (by, reason) = told.expect("the unhealthy generation is told");
    assert_eq!(by, ROLLBACK);
    assert!(
        reason.contains("bad answer") && reason.contains("limit of 2.0%"),
        "{reason}"
    );
    let Some(Err(UpgradeError::Unhealthy { pid: CHILD, reason })) = replies(&out).pop() else {
        panic!("{out:?}")
    };
    assert!(reason.contains("new generation:"), "the numbers: {reason}");
    assert!(
        !out.iter().any(|a| matches!(a, Action::TriggerShutdown(_))),
        "this generation drains already"
    );
    assert_eq!(m.state_name(), "probation");
}

/// A judged generation whose check "database" vetoed it at 100 ms: the rollback is being
/// spawned.
fn vetoed(t0: Instant) -> Machine {
    let mut m = judged(t0);
    let mut vetoed = served(10, 0);
    vetoed.veto = Some("check \"database\" failed: no answer".into());
    let out = m.handle(
        t0 + ms(100),
        Event::HealthReport {
            pid: CHILD,
            report: vetoed,
        },
    );
    let out = verdict_announced(out, false);
    assert_eq!(
        out,
        vec![Action::Spawn(Target::Rollback)],
        "a veto rolls back at once"
    );
    m
}

#[test]
fn if_the_rollback_fails_the_unhealthy_generation_serves_on() {
    let t0 = Instant::now();
    let mut m = vetoed(t0);
    m.handle(t0 + ms(100), Event::Spawned { pid: ROLLBACK });
    let exit = Exit {
        clean: false,
        code: 1,
        how: "exit status 1".into(),
    };
    let out = m.handle(
        t0 + ms(200),
        Event::ChildExited {
            pid: ROLLBACK,
            exit,
        },
    );
    assert!(
        !out.iter()
            .any(|a| matches!(a, Action::TellVerdict { pid: CHILD, .. })),
        "not rejected: nothing else serves: {out:?}"
    );
    let Some(Err(UpgradeError::Unhealthy { pid: CHILD, reason })) = replies(&out).pop() else {
        panic!("{out:?}")
    };
    assert!(
        reason.contains("database")
            && reason.contains("rolling back failed")
            && reason.contains("serves on"),
        "{reason}"
    );
}

/// The rollback cannot even be spawned (no fd, no process left): the upgrade's requester is
/// still answered — `unhealthy`, the bad generation serving on — not left waiting forever.
#[test]
fn if_the_rollback_cannot_be_spawned_the_requester_is_answered() {
    let t0 = Instant::now();
    let mut m = vetoed(t0);
    let out = m.handle(
        t0 + ms(100),
        Event::SpawnFailed(UpgradeError::Spawn("clone: EAGAIN".into())),
    );
    let Some(Err(UpgradeError::Unhealthy { pid: CHILD, reason })) = replies(&out).pop() else {
        panic!("the requester is answered: {out:?}")
    };
    assert!(
        reason.contains("rolling back failed") && reason.contains("serves on"),
        "{reason}"
    );
}

#[test]
fn a_quiet_generation_is_committed_at_max_probation() {
    let t0 = Instant::now();
    let mut m = judged(t0);
    report(&mut m, t0 + ms(500), 3, 0);
    // No more reports (a hung reporter, or nothing to say): the deadlines decide.
    assert!(m.handle(t0 + PROBATION, Event::Tick).is_empty());
    assert_eq!(m.next_deadline(), Some(t0 + ms(10_000)));
    let out = verdict_announced(m.handle(t0 + ms(10_000), Event::Tick), true);
    assert_eq!(replies(&out), vec![&Ok(CHILD)]);
}

#[test]
fn a_generation_that_counts_nothing_or_says_nothing_is_answered_at_ready() {
    let t0 = Instant::now();
    let silent = Report {
        counting: false,
        ..served(0, 0)
    };
    for first in [Some(silent), None] {
        let mut m = spawned(t0, HealthPolicy::default(), first.clone());
        let out = m.handle(t0, Event::ChildReady { pid: CHILD });
        assert_eq!(replies(&out), vec![&Ok(CHILD)], "{first:?}");
        assert_eq!(
            out[0],
            Action::TellVerdict {
                pid: CHILD,
                verdict: Told::Committed
            }
        );
    }
    // The gate off: a counting one too.
    let off = HealthPolicy {
        enabled: false,
        ..HealthPolicy::default()
    };
    let mut m = spawned(t0, off, Some(served(0, 0)));
    let out = m.handle(t0, Event::ChildReady { pid: CHILD });
    assert_eq!(replies(&out), vec![&Ok(CHILD)]);
}

#[test]
fn a_crash_or_a_stop_during_the_judged_probation() {
    let t0 = Instant::now();
    // A crash: rolled back, and the request answered unhealthy once the rollback serves.
    let mut m = judged(t0);
    let crash = Exit {
        clean: false,
        code: 139,
        how: "killed by SIGSEGV".into(),
    };
    let out = m.handle(
        t0 + ms(300),
        Event::ChildExited {
            pid: CHILD,
            exit: crash,
        },
    );
    assert_eq!(out, vec![Action::Spawn(Target::Rollback)]);
    m.handle(t0 + ms(300), Event::Spawned { pid: ROLLBACK });
    let out = m.handle(t0 + ms(350), Event::ChildReady { pid: ROLLBACK });
    let Some(Err(UpgradeError::Unhealthy { reason, .. })) = replies(&out).pop() else {
        panic!("{out:?}")
    };
    assert!(reason.contains("SIGSEGV"), "{reason}");
    // A stop: meant for the service; passed on, and the request answered.
    let mut m = judged(t0);
    let out = m.handle(t0 + ms(300), Event::StopSignal(Signal::SIGTERM));
    assert!(
        out.contains(&Action::StopSuccessor { pid: CHILD }),
        "{out:?}"
    );
    assert_eq!(replies(&out), vec![&Err(UpgradeError::Aborted)]);
    // Upgrade requests meanwhile: this generation drains.
    let mut m = judged(t0);
    assert!(matches!(
        m.handle(t0, Event::Request(8, Trigger::Api)).as_slice(),
        [Action::Reply {
            result: Err(UpgradeError::Busy(_)),
            ..
        }]
    ));
}

#[test]
fn the_new_side_reports_until_it_hears_the_verdict() {
    let t0 = Instant::now();
    let mut m = machine(true, true, HealthPolicy::default());
    assert!(m.handle(t0, Event::SelfReady).is_empty());
    assert_eq!(m.next_deadline(), Some(t0 + ms(100)));
    assert_eq!(
        m.handle(t0 + ms(100), Event::Tick),
        vec![Action::SendReport]
    );
    assert!(m.handle(t0 + ms(150), Event::Tick).is_empty());
    assert_eq!(
        m.handle(t0 + ms(200), Event::Tick),
        vec![Action::SendReport]
    );
    assert!(
        m.handle(t0 + ms(250), Event::Verdict(Told::Committed))
            .is_empty()
    );
    assert!(
        m.handle(t0 + ms(300), Event::Tick).is_empty(),
        "no more reports"
    );
    assert_eq!(m.next_deadline(), None);
    // Upgrades are never held back: it serves, judged or not.
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
            by: ROLLBACK,
            reason: "5.0% of its requests got a bad answer".into(),
        }),
    );
    let reason = ShutdownReason::Upgrade { new_pid: ROLLBACK };
    assert_eq!(
        out,
        vec![
            Action::ArmDeadline(reason),
            Action::TriggerShutdown(reason),
            Action::CloseListeners
        ],
        "no announcement: the rollback has been announced by the previous generation"
    );
    assert_eq!(m.state_name(), "draining");
}

#[test]
fn the_new_side_stops_reporting_when_its_judge_is_gone_or_it_is_not_judged() {
    let t0 = Instant::now();
    let mut m = machine(true, true, HealthPolicy::default());
    m.handle(t0, Event::SelfReady);
    assert!(m.handle(t0 + ms(500), Event::ParentGone).is_empty());
    assert!(m.handle(t0 + ms(600), Event::Tick).is_empty());
    // Not judged at all (a keeper's generation 1), or the gate off: reports nothing.
    let mut m = machine(true, false, HealthPolicy::default());
    m.handle(t0, Event::SelfReady);
    assert!(m.handle(t0 + ms(500), Event::Tick).is_empty());
    let off = HealthPolicy {
        enabled: false,
        ..HealthPolicy::default()
    };
    let mut m = machine(true, true, off);
    m.handle(t0, Event::SelfReady);
    assert!(m.handle(t0 + ms(500), Event::Tick).is_empty());
}
