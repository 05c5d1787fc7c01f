//! The drain deadline: once shutdown is triggered, `main` has `drain_timeout` to return.

use std::path::PathBuf;
use std::time::Duration;

use crate::pidfile;
use crate::shutdown::ShutdownReason;

/// Starts the watchdog: if the process is still alive after `timeout`, it exits.
pub(crate) fn start(timeout: Duration, reason: ShutdownReason, pid_file: Option<PathBuf>) {
    let spawned = std::thread::Builder::new()
        .name("hotexec-drain".into())
        .spawn(move || {
            std::thread::sleep(timeout);
            tracing::warn!(
                ?reason,
                "drain timeout of {timeout:?} expired with work still in flight: exiting now"
            );
            if let (ShutdownReason::Stop { .. }, Some(p)) = (reason, &pid_file) {
                pidfile::remove_if_ours(p, std::process::id());
            }
            if let ShutdownReason::Stop { .. } = reason {
                crate::socket::remove_owned_paths();
            }
            std::process::exit(0);
        });
    if let Err(e) = spawned {
        tracing::error!("could not start the drain watchdog ({e}): draining without a deadline");
    }
}
