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

mod drain;
mod ledger;
mod metrics;
mod report;
mod status;
pub(crate) mod wire;

pub use drain::DrainCount;
pub use report::{DrainSummary, Trigger, UpgradeFailed, UpgradeReport, UpgradeResult};
pub use status::{DrainingGeneration, ListenerStatus, Status};

pub(crate) use ledger::{Ledger, PROGRESS_INTERVAL, trigger_of};
pub(crate) use report::{Recorder, kind_of};

use crate::control::Reply;

/// `t` in milliseconds since the Unix epoch (0 for a time before it).
pub(crate) fn unix_ms(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The evidence of an upgrade as its requester gets it: the supervisor's own report of the
/// upgrade that ran, or, for a request refused before anything started (busy, not running),
/// one made from the refusal.
pub(crate) fn report_of(
    outcome: &crate::supervisor::Outcome,
    trigger: crate::supervisor::Trigger,
) -> UpgradeReport {
    let (result, report) = outcome;
    report.clone().unwrap_or_else(|| {
        Recorder::start(trigger_of(trigger), std::process::id()).finish(result.as_ref().copied())
    })
}

/// The control socket's `status v2` request.
pub(crate) fn serve_status(ledger: &Ledger) -> Reply {
    ledger.publish_metrics();
    Reply::Status(Box::new(ledger.status()))
}
