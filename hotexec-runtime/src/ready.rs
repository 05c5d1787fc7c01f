//! The new generation's side of the readiness handshake, and of the pipe it keeps to the
//! previous generation afterwards: [`HANDED_ON`] when it hands over in turn, [`STOPPING`] when
//! it is told to stop, so the previous generation, which may still roll back during the
//! probation, knows that this generation's exit is not a failed upgrade.

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::protocol::{HANDED_ON, READY, STOPPING};
use crate::{keeper, notify, pidfile};

/// The readiness pipe to the previous generation, kept after [`READY`] for [`tell_parent`].
static READY_PIPE: Mutex<Option<OwnedFd>> = Mutex::new(None);
/// The pid file this generation writes if it must take over on its own (see [`take_over`]).
static PID_FILE: Mutex<Option<PathBuf>> = Mutex::new(None);
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

/// Whether this generation was started with a readiness pipe (by an upgrade, a rollback or a
/// keeper) rather than freshly.
pub(crate) fn started_by_upgrade() -> bool {
    UPGRADED.load(Ordering::SeqCst)
}

/// `pipe`: the readiness pipe of an upgrade; `pid_file`: the one this generation would write
/// if the previous generation died before this one was ready.
pub(crate) fn arm(pipe: Option<OwnedFd>, manual: bool, pid_file: Option<PathBuf>) {
    MANUAL.store(manual, Ordering::SeqCst);
    UPGRADED.store(pipe.is_some(), Ordering::SeqCst);
    *READY_PIPE.lock().unwrap_or_else(|p| p.into_inner()) = pipe;
    *PID_FILE.lock().unwrap_or_else(|p| p.into_inner()) = pid_file;
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
/// `#[hotexec::main(ready = "manual")]` and call it themselves when they can serve.
pub fn ready() {
    if REPORTED.swap(true, Ordering::SeqCst) {
        return;
    }
    let mut pipe = READY_PIPE.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(fd) = pipe.as_ref() {
        match nix::unistd::write(fd, &[READY]) {
            Ok(_) => tracing::info!(
                pid = std::process::id(),
                "reported ready to the previous generation"
            ),
            Err(nix::errno::Errno::EPIPE) => {
                *pipe = None;
                drop(pipe);
                take_over();
            }
            Err(e) => {
                *pipe = None;
                tracing::warn!(
                    "could not report ready to the previous generation ({}); it may have given up",
                    e.desc()
                );
            }
        }
    } else if !UPGRADED.load(Ordering::SeqCst) {
        notify::ready();
    }
}

/// The previous generation died before this one was ready (EPIPE: nobody holds the read end;
/// a previous generation that gives up kills its new process, so only its death closes it).
///
/// Taking over rather than exiting: this process holds every listener and is ready, and
/// nothing else serves; exiting would turn a crash of the old generation into an outage, while
/// a service manager that wants the service gone has its own means (it has seen its main pid
/// die). Serving unannounced is the one wrong answer: so the pid file names this process, and
/// the service manager hears `MAINPID=<this pid>` + `READY=1` (systemd accepts it from a
/// process that is not the main pid only with `NotifyAccess=all`, as for every hand-over), or,
/// in keeper mode, the keeper hears that this generation serves.
fn take_over() {
    let pid = std::process::id();
    let msg = "the previous generation is gone (it died while this one warmed up): taking over as the serving generation";
    tracing::warn!(pid, "{msg}");
    // Rare and what an operator looks for afterwards: to stderr too when the app logs nothing.
    if !tracing::dispatcher::has_been_set() {
        eprintln!("hotexec: pid {pid}: {msg}");
    }
    if let Some(p) = PID_FILE
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_deref()
    {
        if let Err(e) = pidfile::write(p, pid) {
            tracing::error!("{e}");
        }
    }
    keeper::handed_over(pid);
    notify::handed_over(pid);
}

/// This generation has handed over to a successor of its own (see [`HANDED_ON`]).
pub(crate) fn handed_on() {
    tell_parent(HANDED_ON);
}

/// This generation begins a final stop (see [`STOPPING`]).
pub(crate) fn stopping() {
    tell_parent(STOPPING);
}

/// One byte to the previous generation, if it still listens. Before `READY` nothing is sent:
/// a generation that never reported ready is a failed upgrade whatever it says.
fn tell_parent(byte: u8) {
    if !reported() {
        return;
    }
    let mut pipe = READY_PIPE.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(fd) = pipe.as_ref() {
        if let Err(e) = nix::unistd::write(fd, &[byte]) {
            // EPIPE: the previous generation has exited (or, in keeper mode, the keeper read
            // generation 1's readiness and closed its end); nobody needs to know any more.
            tracing::debug!(
                "previous generation not told {:?}: {}",
                byte as char,
                e.desc()
            );
            *pipe = None;
        }
    }
}

pub(crate) fn main_started() {
    if !MANUAL.load(Ordering::SeqCst) {
        ready();
    }
}
