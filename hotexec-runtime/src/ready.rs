//! The new generation's side of the readiness handshake.

use std::os::fd::OwnedFd;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::protocol::READY;

static READY_PIPE: Mutex<Option<OwnedFd>> = Mutex::new(None);
static MANUAL: AtomicBool = AtomicBool::new(false);

pub(crate) fn arm(pipe: Option<OwnedFd>, manual: bool) {
    MANUAL.store(manual, Ordering::SeqCst);
    *READY_PIPE.lock().unwrap_or_else(|p| p.into_inner()) = pipe;
}

/// Reports this generation ready: the previous generation (if this process was started by an
/// upgrade) stops accepting and drains. Idempotent.
///
/// With the default `ready = "auto"`, `#[hotexec::main]` calls it once `main` is running
/// (sync: before the body; async: after the first poll). Apps with a long warm-up use
/// `#[hotexec::main(ready = "manual")]` and call it themselves when they can serve.
pub fn ready() {
    let pipe = READY_PIPE.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(fd) = pipe {
        match nix::unistd::write(&fd, &[READY]) {
            Ok(_) => tracing::info!(pid = std::process::id(), "reported ready to the previous generation"),
            Err(e) => tracing::warn!(
                "could not report ready to the previous generation ({}); it may have given up",
                e.desc()
            ),
        }
    }
}

pub(crate) fn main_started() {
    if !MANUAL.load(Ordering::SeqCst) {
        ready();
    }
}
