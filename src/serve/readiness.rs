//! How [`Serve::probe`](super::Serve::probe) keeps this generation from reporting ready until
//! its probe passed, and fails its start with the probe's reason when it did not: the runtime's
//! readiness hold ([`Shutdown::hold_ready`]). A failed start exits the process before it
//! reports ready; the previous generation hears the reason over the generation link, keeps
//! serving, and its upgrade fails naming it. A [`detached`](Shutdown::detached) `Shutdown` has
//! no process to end: `serve` returns the error instead.

use hotexec_runtime::ReadyHold;

use crate::Shutdown;

/// This generation must not report ready: `reason` says why. Under the runtime the process
/// ends here (before ready); with a detached `Shutdown` this returns, and the caller returns
/// the reason as `main`'s error.
pub(crate) fn fail_start(shutdown: &Shutdown, hold: ReadyHold, reason: &str) {
    if shutdown.is_detached() {
        tracing::error!("{reason}");
        drop(hold);
        return;
    }
    hold.fail(reason)
}
