//! The runtime of this process as the public free functions reach it: [`upgrade()`] and
//! [`ready()`] (`hotexec::upgrade`, `hotexec::ready`), and the control socket's handler.
//!
//! Everything else travels in parameters (the application's [`Shutdown`](crate::Shutdown)
//! reaches its generation); these functions take none, so the one place they find the runtime
//! is [`CURRENT`], set once when `main` starts.

use std::sync::{Arc, OnceLock};

use crate::control::{Handler, Reply};
use crate::error::UpgradeError;
use crate::evidence::{UpgradeFailed, UpgradeReport};
use crate::generation::Generation;
use crate::supervisor::{Handle, Trigger};

/// What the public free functions reach.
pub(crate) struct Current {
    pub generation: Arc<Generation>,
    pub supervisor: Arc<Handle>,
}

/// A static because `hotexec::upgrade()` and `hotexec::ready()` have no parameter to carry it.
static CURRENT: OnceLock<Current> = OnceLock::new();

/// Registers this process's runtime (once, at start).
pub(crate) fn set(current: Current) {
    let _ = CURRENT.set(current);
}

/// Triggers an upgrade, as the upgrade signal does, and waits for its outcome: its evidence
/// ([`UpgradeReport`]: the new pid, the phase times, what the kernel dropped, the health
/// verdict; what `hotexec upgrade --json` prints), or why it failed, with its evidence too
/// ([`UpgradeFailed`]; then this generation keeps serving). It returns once the upgrade is
/// committed, after the health verdict where there is one. From async code call it in
/// `spawn_blocking`.
///
/// ```no_run
/// match hotexec::upgrade() {
///     Ok(report) => println!("upgraded: pid {:?} serves now", report.new_pid),
///     Err(failed) => eprintln!("upgrade failed: {failed}; still serving"),
/// }
/// ```
pub fn upgrade() -> Result<UpgradeReport, UpgradeFailed> {
    let outcome = match CURRENT.get() {
        Some(c) => c.supervisor.request_upgrade(Trigger::Api),
        None => (Err(UpgradeError::NotRunning), None),
    };
    let report = crate::evidence::report_of(&outcome, Trigger::Api);
    match outcome.0 {
        Ok(_) => Ok(report),
        Err(error) => Err(UpgradeFailed {
            error,
            report: Box::new(report),
        }),
    }
}

/// Reports this generation ready: the previous generation (if this process was started by an
/// upgrade) stops accepting and drains; after a fresh start, `READY=1` goes to the service
/// manager if `NOTIFY_SOCKET` is set. Idempotent.
///
/// If the previous generation is gone (it died while this one warmed up), this generation
/// takes over on its own: it writes the pid file and tells the service manager (or the keeper)
/// that it is the main pid now, and says so in the log.
///
/// With the default `ready = "auto"`, `#[hotexec::main]` calls it once `main` is running
/// (sync: before the body; async: after the first poll). Apps with a long warm-up use
/// `#[hotexec::main(ready = "manual")]` and call it themselves when they can serve, or hold
/// the report for a while with [`Shutdown::hold_ready`](crate::Shutdown::hold_ready).
pub fn ready() {
    if let Some(c) = CURRENT.get() {
        c.generation.ready();
    }
}

/// The connections the previous generation hands to this one; `None` when this generation was
/// not started by an upgrade with hand-off (or the stream was already claimed). Call it as
/// `main` starts: offers that no receiver claims within
/// [`CLAIM_GRACE`](crate::handoff::CLAIM_GRACE) are refused.
pub fn incoming() -> Option<crate::handoff::HandedOff> {
    incoming_claiming(crate::handoff::Claim::All)
}

/// [`incoming`] for the connections `claim` takes (one listener's, for a server that speaks a
/// protocol per listener); `None` as for `incoming`, or if a receiver already claims some of
/// them.
pub fn incoming_claiming(claim: crate::handoff::Claim) -> Option<crate::handoff::HandedOff> {
    let c = CURRENT.get()?;
    let inbox = c
        .generation
        .handoff_inbox
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    inbox.as_ref()?.claim(claim)
}

/// The generated code calls this once the application's `main` runs.
pub(crate) fn main_started() {
    if let Some(c) = CURRENT.get() {
        c.generation.main_started();
    }
}

/// The control socket handler of a generation: `upgrade` runs [`upgrade()`]; `upgrade v2` and
/// `status v2` answer with the evidence (see `hotexec::control`); `check` says what the next
/// upgrade would execute (checked by the preflight; nothing is started).
pub(crate) fn control_handler(
    supervisor: Arc<Handle>,
    announcer: Arc<crate::announce::Announcer>,
) -> Handler {
    Arc::new(move |request| match request {
        "upgrade" => Reply::from_upgrade(supervisor.request_upgrade(Trigger::Control).0),
        "upgrade v2" => {
            let outcome = supervisor.request_upgrade(Trigger::Control);
            Reply::Report(Box::new(crate::evidence::report_of(
                &outcome,
                Trigger::Control,
            )))
        }
        "status v2" => crate::evidence::serve_status(&announcer.evidence),
        "check" => crate::preflight::control_reply(&announcer.exe),
        other => Reply::error(
            "bad-request",
            format!(
                "unknown request {other:?}: expected `upgrade`, `upgrade v2`, `status v2` or `check`"
            ),
        ),
    })
}
