//! `HOTEXEC_HANDOFF_FD` at start: whether the channel it names is this process's, and checked.
//!
//! The variable is judged with the other hand-over variables, as listenfd and systemd judge
//! `LISTEN_FDS`: it is acted upon only when `LISTEN_PID` is this process (otherwise it was
//! inherited from an ancestor, is ignored, the fd left as it was, and the log says why); then a
//! malformed value, or an fd that is not an open `AF_UNIX` `SOCK_SEQPACKET` socket, or one that
//! is also another fd of the hand-over, stops the start with a message naming the variable and
//! the value, as a bad `HOTEXEC_KEEPER_FD` does. A new generation that refuses to start fails
//! the upgrade; the old one serves on.
//!
//! [`judge`] is the decision, from plain values; [`check_start`](super::check_start) applies it
//! to the start-up snapshot.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use crate::protocol::{FDS_START, HANDOFF_FD};

/// What `HOTEXEC_HANDOFF_FD` means for this process.
#[derive(Debug)]
pub(crate) enum Verdict {
    /// Not set.
    Absent,
    /// Set, but meant for another process: why (for the log). The fd is not touched.
    NotForUs(String),
    /// The channel from the previous generation, checked, owned and close-on-exec.
    Adopt(OwnedFd),
}

/// `value` of `HOTEXEC_HANDOFF_FD`, judged: `for_us` is `Ok` when the hand-over variables are
/// meant for this process (`LISTEN_PID`), else why not; `others` are the other fds of the
/// hand-over (listeners, readiness pipe, keeper channel), which the channel must not be.
///
/// `Err` is the message to stop the start with: `environment variable HOTEXEC_HANDOFF_FD="…"
/// refused: …`.
pub(crate) fn judge(
    value: Option<&OsStr>,
    for_us: Result<(), String>,
    others: &[RawFd],
) -> Result<Verdict, String> {
    let Some(value) = value else {
        return Ok(Verdict::Absent);
    };
    if let Err(why) = for_us {
        return Ok(Verdict::NotForUs(format!(
            "{HANDOFF_FD}={value:?} ignored: {why}"
        )));
    }
    let refuse =
        |why: String| format!("environment variable {HANDOFF_FD}={value:?} refused: {why}");
    let fd = number(value).ok_or_else(|| refuse("expected a decimal fd number".into()))?;
    if fd < FDS_START {
        return Err(refuse(format!(
            "fd {fd} is not a usable fd number (it must be 3 or more)"
        )));
    }
    if others.contains(&fd) {
        return Err(refuse(format!(
            "fd {fd} is also another fd of the hand-over (a listener, the readiness pipe or the keeper channel)"
        )));
    }
    // SAFETY: only inspected with getsockopt while nothing in this process owns the number;
    // EBADF is reported as "not open".
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    check_channel(borrowed).map_err(|why| refuse(format!("fd {fd} {why}")))?;
    // SAFETY: checked open above, and not another fd of the hand-over; the variable, meant for
    // this process, hands it over. The constructor took the variable out of the environment
    // before `main`, so this is the only owner.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    crate::socket::set_cloexec(fd.as_fd()).map_err(|e| refuse(e.to_string()))?;
    super::channel::tell_records_from_the_end(fd.as_fd()).map_err(|e| refuse(e.to_string()))?;
    Ok(Verdict::Adopt(fd))
}

/// A decimal fd number, nothing else (no sign, no blank).
pub(crate) fn number(value: &OsStr) -> Option<RawFd> {
    value
        .to_str()
        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|s| s.parse().ok())
}

/// An open `AF_UNIX` `SOCK_SEQPACKET` socket, or what it is instead ("is not …").
pub(crate) fn check_channel(fd: BorrowedFd<'_>) -> Result<(), String> {
    match rustix::net::sockopt::socket_type(fd) {
        Ok(rustix::net::SocketType::SEQPACKET) => {}
        Ok(other) => {
            return Err(format!(
                "is a {other:?} socket, not the hand-off channel (an AF_UNIX SOCK_SEQPACKET socket)"
            ));
        }
        Err(e) => return Err(format!("is not an open socket ({e})")),
    }
    match rustix::net::sockopt::socket_domain(fd) {
        Ok(rustix::net::AddressFamily::UNIX) => Ok(()),
        Ok(other) => Err(format!(
            "is a socket of family {other:?}, not the hand-off channel (an AF_UNIX SOCK_SEQPACKET socket)"
        )),
        Err(e) => Err(format!("getsockopt(SO_DOMAIN): {e}")),
    }
}

/// The variable as the constructor took it out of the environment, before `main`.
pub(crate) struct AtStart {
    /// The raw value.
    pub value: OsString,
    /// If it named an open channel-like socket: its number and `FD_CLOEXEC` as it was. The
    /// constructor marks it close-on-exec at once (nothing the process spawns before `main`
    /// may inherit it); [`AtStart::release`] puts the flag back when the variable turns out
    /// not to be meant for this process.
    pub marked: Option<(RawFd, bool)>,
}

impl AtStart {
    /// Takes the variable; marks the fd close-on-exec provisionally.
    ///
    /// # Safety
    /// Mutates the environment: no other thread may be reading or writing it.
    pub(crate) unsafe fn take() -> Option<AtStart> {
        let value = std::env::var_os(HANDOFF_FD)?;
        // SAFETY: guaranteed by the caller.
        unsafe { std::env::remove_var(HANDOFF_FD) };
        let marked = number(&value)
            .filter(|fd| *fd >= FDS_START)
            .filter(|fd| {
                // SAFETY: only inspected; EBADF when not open.
                check_channel(unsafe { BorrowedFd::borrow_raw(*fd) }).is_ok()
            })
            .and_then(|fd| {
                // SAFETY: F_GETFD/F_SETFD on a number read and set its flags only; it is an open
                // socket (checked above), which nothing in this process owns yet.
                let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
                (flags >= 0).then(|| {
                    // SAFETY: as above.
                    unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) };
                    (fd, flags & libc::FD_CLOEXEC != 0)
                })
            });
        Some(AtStart { value, marked })
    }

    /// The variable was not meant for this process: its fd gets its close-on-exec flag back.
    pub(crate) fn release(&self) {
        if let Some((fd, false)) = self.marked {
            // SAFETY: clears the flag this process set on a number it does not own, the way it
            // was; EBADF if it was closed since (nothing then).
            unsafe {
                let flags = libc::fcntl(fd, libc::F_GETFD);
                if flags >= 0 {
                    libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(v: &str, others: &[RawFd]) -> String {
        match judge(Some(OsStr::new(v)), Ok(()), others) {
            Err(e) => e,
            Ok(v) => panic!("accepted: {v:?}"),
        }
    }

    #[test]
    fn values_are_judged_by_name() {
        assert!(matches!(judge(None, Ok(()), &[]), Ok(Verdict::Absent)));
        let e = refused("abc", &[]);
        assert!(
            e.starts_with("environment variable HOTEXEC_HANDOFF_FD=\"abc\" refused: expected a decimal fd number"),
            "{e}"
        );
        for v in ["", " 4", "+4", "-4", "4a", "99999999999999"] {
            assert!(
                refused(v, &[]).contains("expected a decimal fd number"),
                "{v:?}"
            );
        }
        assert!(refused("1", &[]).contains("it must be 3 or more"));
        assert!(refused("5", &[3, 4, 5]).contains("also another fd of the hand-over"));
        // Not meant for us: not even looked at.
        match judge(Some(OsStr::new("abc")), Err("LISTEN_PID is 1".into()), &[]) {
            Ok(Verdict::NotForUs(why)) => {
                assert!(why.contains("ignored: LISTEN_PID is 1"), "{why}")
            }
            other => panic!("{other:?}"),
        }
    }
}
