//! Evidence of every upgrade (issue 19): what it did, what it cost, what it lost.
//!
//! - `report.rs`: [`UpgradeReport`], the outcome, phase times, the kernel's drop counters over
//!   the upgrade window, the health numbers and the old generation's drain summary; and the
//!   `Recorder` the supervisor fills as the upgrade goes.
//! - `status.rs`: [`Status`], what serves now (`hotexec status`).
//! - `wire.rs`: how both travel on the control socket (`upgrade v2` / `status v2` requests).
//!
//! The kernel's numbers come from `kernel.rs`. Nothing here decides anything: the supervisor
//! feeds the recorder and announces the report; this module measures and encodes.

mod metrics;
mod report;
mod status;
pub(crate) mod wire;

pub use report::{DrainSummary, Trigger, UpgradeReport, UpgradeResult};
pub use status::{DrainingGeneration, ListenerStatus, Status};

#[allow(unused_imports)] // the supervisor's (phase 2 of issue 19)
pub(crate) use metrics::Metrics;
pub(crate) use report::{Recorder, kind_of};
pub(crate) use status::{StatusInput, gather};

use crate::control::Reply;
use crate::error::UpgradeError;

/// The control socket's `upgrade v2` request: runs `upgrade` and replies with the report.
///
/// The report measured here, around the request, has the outcome, the pids, `ms_to_ready`
/// (request received → new generation ready) and the kernel's drop counters over that
/// window; the supervisor's own phase times (spawn, exec, verdict, last accept) come with the
/// report it announces (see [`Recorder`]).
pub(crate) fn serve_upgrade(upgrade: impl FnOnce() -> Result<u32, UpgradeError>) -> Reply {
    let mut rec = Recorder::start(Trigger::Control, std::process::id());
    let outcome = upgrade();
    if outcome.is_ok() {
        rec.ready(std::time::Instant::now());
    }
    Reply::Report(Box::new(rec.finish(outcome.as_ref().copied())))
}

/// The control socket's `status v2` request.
pub(crate) fn serve_status(input: StatusInput<'_>) -> Reply {
    Reply::Status(Box::new(gather(input)))
}
