//! The seam between the facade and the runtime's readiness: [`Serve::probe`](super::Serve::probe)
//! must keep this generation from reporting ready until its probe passed, and fail its start
//! with the probe's reason when it did not.
//!
//! The runtime reports ready once `main` has started (its first poll); holding that back until
//! every hold is dropped, and a start failure whose reason reaches the old generation, are the
//! runtime's to provide (issue 18: `Shutdown::hold_ready() -> ReadyHold` and a failed start,
//! from the lead's restructuring of issue 17). Until they land, [`hold_ready`] holds nothing:
//! a probe that fails makes `serve` return its error, so `main` returns it and the process
//! exits non-zero with the reason in its log — after it reported ready, so the old generation
//! sees a crash within the probation and rolls back, instead of "exited before ready".

use crate::Shutdown;

/// Keeps this generation from reporting ready while it lives (see the module docs).
#[must_use = "readiness is held only while the hold lives"]
pub(crate) struct ReadyHold(());

/// Holds this generation's readiness until the returned guard is dropped.
pub(crate) fn hold_ready(_shutdown: &Shutdown) -> ReadyHold {
    ReadyHold(())
}

/// This generation must not report ready: `reason` says why (the caller then returns it as
/// `main`'s error).
pub(crate) fn fail_start(_shutdown: &Shutdown, reason: &str) {
    tracing::error!("{reason}");
}
