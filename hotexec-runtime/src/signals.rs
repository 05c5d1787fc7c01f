//! Signal handling: the handlers only write the signal number to a self-pipe; the supervisor
//! thread reads it and does the real work.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicI32, Ordering};

use nix::fcntl::OFlag;
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};

/// Write end of the self-pipe, read by the handler. -1 until installed.
static PIPE_W: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(sig: libc::c_int) {
    // Only async-signal-safe work: errno is saved and restored around one write(2) to a
    // non-blocking pipe. When the pipe is full the byte is dropped, which is harmless: the
    // supervisor already has that signal pending to read.
    // SAFETY: __errno_location returns this thread's errno slot; reading and writing it is what
    // every C signal handler that calls write(2) does.
    let saved = unsafe { *libc::__errno_location() };
    let fd = PIPE_W.load(Ordering::Relaxed);
    if fd >= 0 {
        let byte = sig as u8;
        // SAFETY: write(2) is async-signal-safe; `byte` lives for the duration of the call.
        unsafe { libc::write(fd, (&byte as *const u8).cast(), 1) };
    }
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = saved };
}

/// Installs the handler for `signals`, then unblocks them, and returns the read end of the
/// self-pipe.
///
/// A generation started by hotexec begins with its upgrade signal blocked (`spawn::exec_mask`),
/// so that a broadcast upgrade signal cannot kill it (default action) before its handler
/// exists. Once the handlers are in place, the installed signals are unblocked; a pending
/// `discard` signal (the upgrade signal) is consumed first and logged, not acted on: it was
/// sent while this generation was starting, so it was meant for the one that started it (a
/// `pkill -USR2` hits both), and acting on it would chain another upgrade at once.
pub fn install(signals: &[Signal], discard: Option<Signal>) -> io::Result<OwnedFd> {
    let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)
        .map_err(|e| io::Error::other(format!("pipe2: {}", e.desc())))?;
    let old = PIPE_W.swap(w.as_raw_fd(), Ordering::SeqCst);
    // The write end lives for the rest of the process: handlers may run at any time.
    std::mem::forget(w);
    if old >= 0 {
        // SAFETY: `old` was the write end of an earlier install that was forgotten above and is
        // no longer published to the handler; nothing else owns it.
        unsafe { libc::close(old) };
    }
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        // SA_RESTART: the application's blocking calls are not interrupted by our signals.
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for &sig in signals {
        // SAFETY: `on_signal` is async-signal-safe (see above) and stays valid for the whole
        // program; replacing an earlier disposition of these signals is the documented purpose
        // of `#[hotexec::main]`.
        unsafe { sigaction(sig, &action) }
            .map_err(|e| io::Error::other(format!("sigaction({sig}): {}", e.desc())))?;
    }
    let mut set = SigSet::empty();
    for &sig in signals {
        set.add(sig);
    }
    if let Some(sig) = discard {
        if SigSet::thread_get_mask().is_ok_and(|m| m.contains(sig)) && is_pending(sig) {
            // Blocked and pending: sigtimedwait with a zero timeout takes it off the pending set
            // without running the handler.
            let mut one = SigSet::empty();
            one.add(sig);
            let zero = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: `one` and `zero` are valid for the call; a null siginfo is allowed.
            if unsafe { libc::sigtimedwait(one.as_ref(), std::ptr::null_mut(), &zero) } >= 0 {
                tracing::warn!(
                    signal = %sig,
                    "upgrade signal received while this generation was starting: ignored"
                );
            }
        }
    }
    set.thread_unblock()
        .map_err(|e| io::Error::other(format!("pthread_sigmask(SIG_UNBLOCK): {}", e.desc())))?;
    Ok(r)
}

/// Reads every pending signal number from the self-pipe without blocking.
pub fn drain(pipe_r: &OwnedFd) -> Vec<Signal> {
    let mut out = Vec::new();
    let mut buf = [0u8; 64];
    loop {
        match nix::unistd::read(pipe_r, &mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend(
                buf[..n]
                    .iter()
                    .filter_map(|&b| Signal::try_from(i32::from(b)).ok()),
            ),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => break,
        }
    }
    out
}

/// Whether `sig` is pending for this thread or the process.
fn is_pending(sig: Signal) -> bool {
    // SAFETY: sigpending fills the set it is given; a zeroed sigset_t is a valid empty set.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is valid for writing; `sig` is a valid signal number.
    unsafe { libc::sigpending(&mut set) == 0 && libc::sigismember(&set, sig as libc::c_int) == 1 }
}
