//! The new generation's side of the readiness handshake.

use std::os::fd::OwnedFd;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::protocol::READY;

static READY_PIPE: Mutex<Option<OwnedFd>> = Mutex::new(None);
static MANUAL: AtomicBool = AtomicBool::new(false);
/// Started by an upgrade: readiness goes to the previous generation, which tells the service
/// manager; this process does not (it is not the main pid yet).
static UPGRADED: AtomicBool = AtomicBool::new(false);
/// `ready` has been called: from now on this generation acts on the upgrade signal.
static REPORTED: AtomicBool = AtomicBool::new(false);

/// Whether this generation has reported ready (see [`ready`]).
pub(crate) fn reported() -> bool {
    REPORTED.load(Ordering::SeqCst)
}

pub(crate) fn arm(pipe: Option<OwnedFd>, manual: bool) {
    MANUAL.store(manual, Ordering::SeqCst);
    UPGRADED.store(pipe.is_some(), Ordering::SeqCst);
    *READY_PIPE.lock().unwrap_or_else(|p| p.into_inner()) = pipe;
}

/// Reports this generation ready: the previous generation (if this process was started by an
/// upgrade) stops accepting and drains; after a fresh start, `READY=1` goes to the service
/// manager if `NOTIFY_SOCKET` is set. Idempotent.
///
/// With the default `ready = "auto"`, `#[hotexec::main]` calls it once `main` is running
/// (sync: before the body; async: after the first poll). Apps with a long warm-up use
/// `#[hotexec::main(ready = "manual")]` and call it themselves when they can serve.
pub fn ready() {
    REPORTED.store(true, Ordering::SeqCst);
    let pipe = READY_PIPE.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(fd) = pipe {
        match nix::unistd::write(&fd, &[READY]) {
            Ok(_) => tracing::info!(
                pid = std::process::id(),
                "reported ready to the previous generation"
            ),
            Err(e) => tracing::warn!(
                "could not report ready to the previous generation ({}); it may have given up",
                e.desc()
            ),
        }
    } else if !UPGRADED.load(Ordering::SeqCst) {
        crate::notify::ready();
    }
}

pub(crate) fn main_started() {
    if !MANUAL.load(Ordering::SeqCst) {
        ready();
    }
}
