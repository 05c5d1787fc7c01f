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
pub use report::{DrainSummary, Trigger, UpgradeReport, UpgradeResult};
pub use status::{DrainingGeneration, ListenerStatus, Status};

pub(crate) use ledger::{Ledger, trigger_of};
pub(crate) use report::{Recorder, kind_of};

use crate::control::Reply;
use crate::error::UpgradeError;

/// The control socket's `upgrade v2` request: runs `upgrade` and replies with its report.
pub(crate) fn serve_upgrade(
    ledger: &Ledger,
    upgrade: impl FnOnce() -> Result<u32, UpgradeError>,
) -> Reply {
    let asked = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let result = upgrade();
    Reply::Report(Box::new(ledger.report_for(asked, &result)))
}

/// The control socket's `status v2` request.
pub(crate) fn serve_status(ledger: &Ledger) -> Reply {
    ledger.publish_metrics();
    Reply::Status(Box::new(ledger.status()))
}
