//! The readiness pipe between two generations, both ends.
//!
//! The old generation creates a pipe per spawned generation; the new one gets its write end as
//! `HOTEXEC_READY_FD` (see [`crate::handover`]) and writes one byte on it, [`READY`], once it
//! serves. It keeps the pipe afterwards, to say [`HANDED_ON`] when it hands over in turn and
//! [`STOPPING`] when it begins a final stop, so that the previous generation, which may still
//! roll back during the probation, knows that its exit is not a failed upgrade. Between fork and
//! exec the child writes [`EXEC_FAILED`] and the `errno` of `execve` when that fails.
//!
//! [`PipeReader`] is the one decoder of these bytes (the supervisor's, for every child, and the
//! keeper's, for generation 1); [`Readiness`] is the new generation's side.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use nix::errno::Errno;

/// Byte the new generation writes on the readiness pipe when it is serving.
pub(crate) const READY: u8 = b'R';
/// Byte a generation writes, after [`READY`], once it has handed over to a successor of its own:
/// that successor serves now, and this generation's exit, whatever its status, is no reason for
/// the previous one to roll back.
pub(crate) const HANDED_ON: u8 = b'H';
/// Byte a generation writes, after [`READY`], when a stop starts its final stop: its exit,
/// whatever its status, is no reason for the previous one to roll back.
pub(crate) const STOPPING: u8 = b'S';
/// Byte the spawned child writes, followed by a native-endian `i32` errno in the same write,
/// when `execve` failed.
pub(crate) const EXEC_FAILED: u8 = b'E';

/// What a readiness pipe said.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Said {
    Ready,
    ExecFailed(i32),
    HandedOn,
    Stopping,
    /// The write end is closed: the process exited or exec'd something that closed it.
    Closed,
    /// A byte of no meaning: the pipe is not trusted any more.
    Garbage(u8),
}

/// The read end of a readiness pipe, non-blocking.
#[derive(Debug)]
pub(crate) struct PipeReader {
    fd: Option<OwnedFd>,
    /// The start of a message whose rest has not been read yet.
    pending: Vec<u8>,
}

impl PipeReader {
    pub(crate) fn new(fd: OwnedFd) -> PipeReader {
        // Read only when there is something: the reading loop must never block on it.
        let _ = nix::fcntl::fcntl(
            &fd,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        );
        PipeReader {
            fd: Some(fd),
            pending: Vec::new(),
        }
    }

    /// The fd to poll, until the pipe is closed.
    pub(crate) fn as_fd(&self) -> Option<BorrowedFd<'_>> {
        self.fd.as_ref().map(|f| f.as_fd())
    }

    /// Everything written so far, in order; [`Said::Closed`] once at the end of the pipe.
    pub(crate) fn read(&mut self) -> Vec<Said> {
        let mut out = Vec::new();
        let Some(fd) = &self.fd else { return out };
        let mut buf = [0u8; 64];
        loop {
            match nix::unistd::read(fd, &mut buf) {
                Ok(0) => {
                    decode(&mut self.pending, &mut out, true);
                    out.push(Said::Closed);
                    self.fd = None;
                    return out;
                }
                Ok(n) => {
                    self.pending.extend_from_slice(&buf[..n]);
                    decode(&mut self.pending, &mut out, false);
                }
                Err(Errno::EINTR) => {}
                // EAGAIN: nothing more for now.
                Err(_) => return out,
            }
        }
    }
}

/// Decodes whole messages from `pending`; `end`: nothing more will come (a partial errno is
/// garbage then).
fn decode(pending: &mut Vec<u8>, out: &mut Vec<Said>, end: bool) {
    let mut i = 0;
    while i < pending.len() {
        let said = match pending[i] {
            READY => Said::Ready,
            HANDED_ON => Said::HandedOn,
            STOPPING => Said::Stopping,
            EXEC_FAILED if pending.len() - i >= 5 => {
                let errno = i32::from_ne_bytes([
                    pending[i + 1],
                    pending[i + 2],
                    pending[i + 3],
                    pending[i + 4],
                ]);
                i += 4;
                Said::ExecFailed(errno)
            }
            EXEC_FAILED if !end => break,
            other => Said::Garbage(other),
        };
        out.push(said);
        i += 1;
    }
    pending.drain(..i);
}

/// What reporting ready did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reported {
    /// Already reported, or held (`hold_ready`), or `main` has not started: nothing done.
    Nothing,
    /// A fresh start: nobody to tell but the service manager.
    Fresh,
    /// Told the previous generation, which hands over.
    ToParent,
    /// The previous generation is gone (it died while this one warmed up): this one must take
    /// over on its own.
    ParentGone,
}

/// The new generation's side: when it reports ready, and its pipe to the previous generation.
pub(crate) struct Readiness {
    parent: Mutex<Option<OwnedFd>>,
    started_by_upgrade: bool,
    manual: bool,
    main_started: AtomicBool,
    holds: AtomicUsize,
    reported: AtomicBool,
}

impl Readiness {
    /// `parent`: the readiness pipe of the upgrade that started this process, if one did;
    /// `manual`: the application calls `ready()` itself.
    pub(crate) fn new(parent: Option<OwnedFd>, manual: bool) -> Readiness {
        Readiness {
            started_by_upgrade: parent.is_some(),
            parent: Mutex::new(parent),
            manual,
            main_started: AtomicBool::new(false),
            holds: AtomicUsize::new(0),
            reported: AtomicBool::new(false),
        }
    }

    pub(crate) fn reported(&self) -> bool {
        self.reported.load(Ordering::SeqCst)
    }

    /// Started with a readiness pipe (by an upgrade, a rollback or a keeper), not freshly.
    pub(crate) fn started_by_upgrade(&self) -> bool {
        self.started_by_upgrade
    }

    /// `main` is running: with `ready = "auto"`, report now (unless held).
    pub(crate) fn main_started(&self) -> Reported {
        self.main_started.store(true, Ordering::SeqCst);
        if self.manual {
            return Reported::Nothing;
        }
        self.report()
    }

    /// The application's `ready()`. Reports once: when `main` runs (for `ready = "auto"`) or
    /// now (manual), and no hold is left.
    pub(crate) fn ready(&self) -> Reported {
        if !self.manual && !self.main_started.load(Ordering::SeqCst) {
            return Reported::Nothing;
        }
        self.report()
    }

    /// Holds the report until [`Readiness::release`]. Returns false once it was reported.
    pub(crate) fn hold(&self) -> bool {
        self.holds.fetch_add(1, Ordering::SeqCst);
        if self.reported() {
            self.holds.fetch_sub(1, Ordering::SeqCst);
            return false;
        }
        true
    }

    /// One hold is released: reports if it was the last and `main` runs.
    pub(crate) fn release(&self) -> Reported {
        if self.holds.fetch_sub(1, Ordering::SeqCst) == 1
            && (self.manual || self.main_started.load(Ordering::SeqCst))
        {
            // With `ready = "manual"` the application's own call reports; a hold released
            // before it only lifts the hold.
            if self.manual {
                return Reported::Nothing;
            }
            return self.report();
        }
        Reported::Nothing
    }

    fn report(&self) -> Reported {
        if self.holds.load(Ordering::SeqCst) > 0 || self.reported.swap(true, Ordering::SeqCst) {
            return Reported::Nothing;
        }
        let mut pipe = self.parent.lock().unwrap_or_else(|p| p.into_inner());
        match pipe.as_ref() {
            None if self.started_by_upgrade => Reported::ParentGone,
            None => Reported::Fresh,
            Some(fd) => match nix::unistd::write(fd, &[READY]) {
                Ok(_) => Reported::ToParent,
                Err(e) => {
                    // EPIPE: nobody holds the read end. A previous generation that gives up
                    // kills its new process, so only its death closes it.
                    if e != Errno::EPIPE {
                        tracing::warn!(
                            "could not report ready to the previous generation ({}); it may have given up",
                            e.desc()
                        );
                    }
                    *pipe = None;
                    Reported::ParentGone
                }
            },
        }
    }

    /// Tells the previous generation, if it still listens, that this one handed over
    /// ([`HANDED_ON`]) or stops ([`STOPPING`]). Before `READY` nothing is sent: a generation
    /// that never reported ready is a failed upgrade whatever it says.
    pub(crate) fn tell_parent(&self, byte: u8) {
        if !self.reported() {
            return;
        }
        let mut pipe = self.parent.lock().unwrap_or_else(|p| p.into_inner());
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pipe() -> (OwnedFd, OwnedFd) {
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap()
    }

    #[test]
    fn one_decoder_for_every_message() {
        let (r, w) = pipe();
        let mut reader = PipeReader::new(r);
        assert!(reader.read().is_empty());
        let mut exec = vec![EXEC_FAILED];
        exec.extend_from_slice(&libc::ENOENT.to_ne_bytes());
        nix::unistd::write(&w, &exec).unwrap();
        nix::unistd::write(&w, &[READY, HANDED_ON, STOPPING, b'?']).unwrap();
        drop(w);
        assert_eq!(
            reader.read(),
            vec![
                Said::ExecFailed(libc::ENOENT),
                Said::Ready,
                Said::HandedOn,
                Said::Stopping,
                Said::Garbage(b'?'),
                Said::Closed
            ]
        );
        assert!(reader.as_fd().is_none());
        assert!(reader.read().is_empty());
    }

    #[test]
    fn a_truncated_errno_is_garbage_at_the_end() {
        let (r, w) = pipe();
        let mut reader = PipeReader::new(r);
        nix::unistd::write(&w, &[EXEC_FAILED, 1]).unwrap();
        assert!(reader.read().is_empty(), "waits for the rest of the write");
        drop(w);
        assert_eq!(
            reader.read(),
            vec![Said::Garbage(EXEC_FAILED), Said::Garbage(1), Said::Closed]
        );
    }

    #[test]
    fn holds_delay_the_report_until_released_and_main_runs() {
        let (r, w) = pipe();
        let mut reader = PipeReader::new(r);
        let rd = Readiness::new(Some(w), false);
        assert!(rd.hold());
        assert_eq!(rd.main_started(), Reported::Nothing);
        assert!(reader.read().is_empty());
        assert_eq!(rd.release(), Reported::ToParent);
        assert_eq!(reader.read(), vec![Said::Ready]);
        assert!(!rd.hold(), "no hold once reported");
        rd.tell_parent(STOPPING);
        assert_eq!(reader.read(), vec![Said::Stopping]);
        // A hold released before main starts does not report early.
        let rd = Readiness::new(None, false);
        assert!(rd.hold());
        assert_eq!(rd.release(), Reported::Nothing);
        assert_eq!(rd.main_started(), Reported::Fresh);
        assert_eq!(rd.ready(), Reported::Nothing, "once");
    }

    #[test]
    fn a_parent_that_is_gone_means_taking_over() {
        let (r, w) = pipe();
        drop(r);
        let rd = Readiness::new(Some(w), true);
        assert_eq!(rd.main_started(), Reported::Nothing, "manual");
        assert_eq!(rd.ready(), Reported::ParentGone);
    }
}
