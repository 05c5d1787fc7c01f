//! The drain deadline: once shutdown is triggered, `main` has `drain_timeout` to return.
//!
//! When the deadline passes with work still in flight, the process ends with
//! [`DRAIN_TIMEOUT_EXIT`] (124, as `timeout(1)`), so a supervisor can tell a cut-off drain from a
//! clean stop (0). The watchdog never waits on anything that can block: its one message is a
//! single `write(2)` to stderr made only if `poll` says it would not block, and it ends the
//! process with `_exit` (no atexit handlers or destructors racing the app's live threads).

use std::time::Duration;

use crate::shutdown::ShutdownReason;

/// Exit status of a process whose drain was cut off by `drain_timeout`.
pub(crate) const DRAIN_TIMEOUT_EXIT: i32 = 124;

/// Starts the watchdog: if the process is still alive after `timeout`, it runs `at_expiry`
/// (the final clean-up of a stop: see `announce.rs`) and exits with [`DRAIN_TIMEOUT_EXIT`].
pub(crate) fn arm(
    timeout: Duration,
    reason: ShutdownReason,
    at_expiry: impl FnOnce() + Send + 'static,
) {
    let spawned = std::thread::Builder::new()
        .name("hotexec-drain".into())
        .spawn(move || {
            std::thread::sleep(timeout);
            at_expiry();
            let msg = format!(
                "hotexec: drain timeout of {timeout:?} expired with work still in flight ({reason:?}): exiting with status {DRAIN_TIMEOUT_EXIT}\n"
            );
            write_if_ready(libc::STDERR_FILENO, msg.as_bytes());
            // SAFETY: `_exit` ends the process at once; nothing runs after it, so no state of
            // other threads is observed half-updated.
            unsafe { libc::_exit(DRAIN_TIMEOUT_EXIT) };
        });
    if let Err(e) = spawned {
        tracing::error!("could not start the drain watchdog ({e}): draining without a deadline");
    }
}

/// One `write(2)` of `buf` to `fd`, only if `fd` is writable right now (poll with a zero
/// timeout). A pipe that polls writable has room for at least one page, so a short message does
/// not block; at worst it is lost.
fn write_if_ready(fd: libc::c_int, buf: &[u8]) {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: `pfd` is a valid pollfd array of length 1; timeout 0 never blocks.
    let n = unsafe { libc::poll(&mut pfd, 1, 0) };
    if n == 1 && pfd.revents & libc::POLLOUT != 0 {
        let len = buf.len().min(libc::PIPE_BUF);
        // SAFETY: `buf` is valid for `len` bytes; a failed or short write is acceptable.
        let _ = unsafe { libc::write(fd, buf.as_ptr().cast(), len) };
    }
}
