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

/// Installs the handler for `signals` and returns the read end of the self-pipe.
pub fn install(signals: &[Signal]) -> io::Result<OwnedFd> {
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
