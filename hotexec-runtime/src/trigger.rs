//! Upgrade requests from inside the process: [`upgrade()`] (`hotexec::upgrade`) and the control
//! socket's handler both end here, at the supervisor of the running generation.
//!
//! This module sits below `start` (which registers the supervisor once it runs) and `control`
//! (which only serves sockets): `start` → `control`, `start` → `keeper` → `control`, and both
//! `start` and the generation's control handler → `trigger`, so the arrows point one way.

use std::sync::{Arc, OnceLock};

use crate::control::{Handler, Reply};
use crate::error::UpgradeError;
use crate::upgrade::Ctx;

static CTX: OnceLock<Arc<Ctx>> = OnceLock::new();

/// Registers the supervisor of this generation (once, at start).
pub(crate) fn set(ctx: Arc<Ctx>) {
    let _ = CTX.set(ctx);
}

/// Triggers an upgrade, as the upgrade signal does, and waits for its outcome: the new pid, or
/// why it failed (then this generation keeps serving). Blocks up to `ready_timeout`; from async
/// code call it in `spawn_blocking`.
pub fn upgrade() -> Result<u32, UpgradeError> {
    match CTX.get() {
        Some(ctx) => ctx.request_upgrade(),
        None => Err(UpgradeError::NotRunning),
    }
}

/// The control socket handler of a generation: `upgrade` runs [`upgrade()`].
pub(crate) fn control_handler() -> Handler {
    Arc::new(|request| match request {
        "upgrade" => Reply::from_upgrade(upgrade()),
        // Issue 19 (evidence), phase 1: the versioned requests; the supervisor's own report and
        // the status inputs it holds (listeners, generation, last upgrade) replace these
        // arguments once it announces them.
        "upgrade v2" => crate::evidence::serve_upgrade(upgrade),
        "status v2" => crate::evidence::serve_status(crate::evidence::StatusInput {
            generation: None,
            exe: CTX
                .get()
                .map_or(std::path::Path::new(""), |c| c.exe.as_path()),
            listeners: &[],
            last_upgrade: None,
            draining: Vec::new(),
        }),
        other => Reply::error(
            "bad-request",
            format!("unknown request {other:?}: expected `upgrade`"),
        ),
    })
}
