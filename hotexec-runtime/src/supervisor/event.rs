//! What the supervisor's state machine takes ([`Event`]) and returns ([`Action`]).

use nix::sys::signal::Signal;

use crate::error::UpgradeError;
use crate::health::Report;
use crate::health::link::Verdict;
use crate::shutdown::ShutdownReason;

/// What asked for an upgrade.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Trigger {
    /// The upgrade signal.
    Signal,
    /// `hotexec::upgrade()`, called by the application.
    Api,
    /// The control socket (`hotexec upgrade`, also relayed by a keeper).
    Control,
}

impl Trigger {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Trigger::Signal => "signal",
            Trigger::Api => "api",
            Trigger::Control => "control",
        }
    }
}

/// An upgrade request waiting for its outcome; the shell keeps its reply channel.
pub(crate) type Waiter = u64;

/// What a spawn executes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    /// The deploy path (what the operator installed): an upgrade.
    Deploy,
    /// This generation's own image: a rollback.
    Rollback,
}

/// What the successor said on its readiness pipe after it was ready.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum News {
    /// It handed over to a successor of its own.
    HandedOn,
    /// It began a final stop.
    Stopping,
}

/// How a child ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Exit {
    /// Exited with status 0.
    pub clean: bool,
    /// As a shell reports it: the exit code, or 128 + the signal (1 when unknown).
    pub code: i32,
    /// `exit status 1`, `killed by SIGSEGV`, …
    pub how: String,
}

/// What happened.
#[derive(Debug)]
pub(crate) enum Event {
    /// The upgrade signal.
    UpgradeSignal,
    /// SIGTERM or SIGINT.
    StopSignal(Signal),
    /// The previous generation passed a stop on to this one (it was meant for the service).
    StopPassedOn,
    /// An upgrade request (`hotexec::upgrade()`, the control socket).
    Request(Waiter, Trigger),
    /// This generation reported ready.
    SelfReady,
    /// The spawn asked for by [`Action::Spawn`] started `pid`.
    Spawned { pid: u32 },
    /// The spawn asked for by [`Action::Spawn`] failed; nothing was started.
    SpawnFailed(UpgradeError),
    /// `pid` reported ready (its readiness pipe, or `READY=1` on its notify socket).
    ChildReady { pid: u32 },
    /// `execve` of `path` failed in `pid`.
    ExecFailed {
        pid: u32,
        errno: i32,
        path: std::path::PathBuf,
    },
    /// `pid` closed its readiness pipe without reporting ready.
    ReadyClosed { pid: u32 },
    /// A child exited and was reaped.
    ChildExited { pid: u32, exit: Exit },
    /// The successor wrote news on its readiness pipe.
    SuccessorNews { pid: u32, news: News },
    /// Time passed: check the deadlines.
    Tick,
    /// The application's `main` returned.
    MainReturned,
    /// This generation's own health when the upgrade started: the baseline the new
    /// generation is judged against.
    Baseline(Report),
    /// A new generation's health report (over the generation link).
    HealthReport { pid: u32, report: Report },
    /// The previous generation's verdict on this one (over the generation link).
    Verdict(Verdict),
    /// The generation link to the previous generation closed: it exited.
    ParentGone,
}

/// What the shell announces: every lifecycle event goes through `announce.rs`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Announcement {
    /// An upgrade starts.
    UpgradeStarted { trigger: Trigger },
    /// An upgrade failed; this generation serves on.
    UpgradeFailed { error: UpgradeError },
    /// `new_pid` serves now (an upgrade, or a rollback to this generation's image).
    HandedOver {
        new_pid: u32,
        rollback: bool,
        /// Its health verdict follows (the upgrade is answered with it).
        judged: bool,
    },
    /// A final stop begins.
    Stopping { signal: Signal },
    /// The health verdict on `new_pid` (issue 18): `error` when it is not committed.
    Verdict {
        new_pid: u32,
        error: Option<String>,
        figures: crate::health::verdict::Figures,
    },
}

/// What to do.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Action {
    /// Start the next generation; the outcome comes back as [`Event::Spawned`] or
    /// [`Event::SpawnFailed`].
    Spawn(Target),
    /// SIGKILL `pid` and reap it (it never reported ready, or is a failed rollback).
    Kill {
        pid: u32,
    },
    Announce(Announcement),
    /// `pid` is ready: connections may be handed to it from now on.
    HandOffTo {
        pid: u32,
    },
    /// Resolve the application's `Shutdown`.
    TriggerShutdown(ShutdownReason),
    /// Start the drain deadline (the process ends at `drain_timeout`).
    ArmDeadline(ShutdownReason),
    /// Pass a stop on to the successor `pid`.
    StopSuccessor {
        pid: u32,
    },
    /// Nothing will be passed on or rolled back any more: close hotexec's copies of the
    /// listeners, so new clients are refused if nothing else serves.
    CloseListeners,
    /// Answer upgrade requests.
    Reply {
        waiters: Vec<Waiter>,
        result: Result<u32, UpgradeError>,
    },
    /// A second stop signal: clean up and exit now.
    ExitNow,
    /// Tell the new generation `pid` its verdict over the generation link (a rejected one
    /// drains and stops; the shell keeps it only to reap it).
    TellVerdict {
        pid: u32,
        verdict: Verdict,
    },
    /// Send this generation's health report to the previous generation.
    SendReport,
}
