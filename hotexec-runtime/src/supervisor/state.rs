//! The supervisor's states, each with the data it has (see `machine/` for the rules).

use std::time::{Duration, Instant};

use super::event::{Target, Waiter};
use crate::health::Report;
use crate::health::policy::HealthPolicy;
use crate::health::verdict::Probation as Watch;
use crate::shutdown::ShutdownReason;

/// The durations the machine decides with.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Timing {
    pub ready_timeout: Duration,
    /// How long a generation that handed over may still roll back (at most `drain_timeout`).
    pub probation: Duration,
    /// The health gate (issue 18), its probations bounded by `drain_timeout`.
    pub health: HealthPolicy,
}

/// The health verdict on a successor, pending (issue 18).
#[derive(Debug)]
pub(super) struct Judge {
    pub watch: Watch,
    /// When it took over.
    pub since: Instant,
    /// When the verdict can next change without a report: the probation's end, then its
    /// longest extension.
    pub next: Instant,
    /// The requests that asked for the upgrade: answered with the verdict.
    pub waiters: Vec<Waiter>,
}

/// An upgrade in progress.
#[derive(Debug)]
pub(super) struct Upgrade {
    pub waiters: Vec<Waiter>,
    pub deadline: Instant,
    /// Starting this generation's own image again after its successor crashed.
    pub rollback: bool,
}

#[derive(Debug)]
pub(super) enum State {
    /// Accepting; no upgrade running. `deferred`: an upgrade signal reached this fresh start
    /// before it reported ready; the upgrade starts once it has.
    Serving { deferred: bool },
    /// `Action::Spawn` is being done.
    Spawning { target: Target, upgrade: Upgrade },
    /// The new generation runs and has not reported ready. `closed`: it closed its readiness
    /// pipe; it is given until `upgrade.deadline` to exit, then killed. `report`: the last
    /// health report it sent (it sends one just before READY).
    WaitingReady {
        pid: u32,
        upgrade: Upgrade,
        closed: bool,
        report: Option<Report>,
    },
    /// Handed over: the successor serves, this generation drains, and a crash of the successor
    /// before `until` rolls back. `judge`: the successor counts what it serves and its health
    /// verdict is pending: the probation lasts until it is in, and an unhealthy successor is
    /// rolled back too.
    Probation {
        successor: u32,
        until: Instant,
        rolled_back: bool,
        judge: Option<Box<Judge>>,
    },
    /// Nothing is left to decide but the drain (after an upgrade, or a final stop).
    Draining { reason: ShutdownReason },
    /// `main` returned and nothing is pending: the process may exit.
    Exiting,
}

impl State {
    pub(super) fn name(&self) -> &'static str {
        match self {
            State::Serving { .. } => "serving",
            State::Spawning { .. } => "spawning",
            State::WaitingReady { .. } => "waiting for ready",
            State::Probation { .. } => "probation",
            State::Draining { .. } => "draining",
            State::Exiting => "exiting",
        }
    }
}
