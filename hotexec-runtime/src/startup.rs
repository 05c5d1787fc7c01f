//! Start-up, read once: every hand-over variable is taken out of the environment by one
//! constructor, before `main` and before any thread exists, into one [`Startup`] snapshot that
//! the runtime then takes, once, at the top of the generated `main`.
//!
//! Why a constructor: `remove_var` is only sound while no other thread runs, and the variables
//! must be gone before any code of the application could spawn a child that would inherit them;
//! the fds they name are marked close-on-exec at the same moment, for the same reason.
//!
//! Everything is checked here in one place: the systemd-style variables against this pid
//! (`LISTEN_PID`), and the fds of hotexec's own channels (keeper, connection hand-off,
//! generation link), each of which must be an open `SOCK_SEQPACKET` socket meant for this
//! process and distinct from every other fd of the hand-over. A refusal is kept, with the
//! variable and its value, and reported by the runtime once logging is possible.

use std::collections::HashSet;
use std::ffi::OsString;
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Mutex;

use crate::handover::{self, Parsed, ProtocolError, Snapshot};

/// `(st_dev, st_ino)`: which open file an fd number refers to.
pub(crate) type FileId = (libc::dev_t, libc::ino_t);

/// What the environment said when this process started.
pub(crate) struct Startup {
    /// The systemd-style hand-over (`LISTEN_*`, `HOTEXEC_READY_FD`, `HOTEXEC_ACTIVATED_FDS`),
    /// checked against this pid.
    pub handover: Result<Parsed, ProtocolError>,
    /// Identity of each fd the hand-over names, as found before `main` (`None`: not open then).
    /// Only an fd that is still that same file is adopted: a number closed at exec and reused
    /// since (by the application's `init`: a log file) was not received from the parent.
    pub at_start: Vec<(RawFd, Option<FileId>)>,
    /// `HOTEXEC_OWNED_FDNAMES`: Unix listeners whose path a hotexec generation bound.
    pub owned_fdnames: Vec<String>,
    /// The service manager's `NOTIFY_SOCKET` (in a new generation: the real one, from
    /// `HOTEXEC_NOTIFY_SOCKET`, which is also put back for the application).
    pub notify_target: Option<OsString>,
    /// `HOTEXEC_KEEPER_FD`: this process is a generation under a keeper.
    pub keeper: Result<Option<OwnedFd>, String>,
    /// `HOTEXEC_HANDOFF_FD`: the connection hand-off channel from the previous generation.
    pub handoff: Result<Option<OwnedFd>, String>,
    /// `HOTEXEC_LINK_FD`: the generation link to the previous generation.
    pub link: Result<Option<OwnedFd>, String>,
}

/// The constructor's snapshot, until the runtime takes it. A static because a constructor has
/// no other way to hand anything to `main`.
static TAKEN_AT_START: Mutex<Option<Startup>> = Mutex::new(None);

#[ctor::ctor]
fn read_at_start() {
    // SAFETY: constructors run before `main`, on the only thread of the process.
    let s = unsafe { read_environment() };
    *TAKEN_AT_START.lock().unwrap_or_else(|p| p.into_inner()) = Some(s);
}

/// The snapshot, once. If the constructor was stripped by the linker, the environment is read
/// now: the runtime calls this first thing in `main`, before it starts any thread.
pub(crate) fn take() -> Startup {
    let taken = TAKEN_AT_START
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    // SAFETY: see above: the top of the generated `main`, before any thread of ours or the
    // application's. A second call finds the environment already scrubbed.
    taken.unwrap_or_else(|| unsafe { read_environment() })
}

pub(crate) fn identity(fd: RawFd) -> Option<FileId> {
    // SAFETY: fstat on a number only reads its metadata; EBADF when it is not open.
    let b = unsafe { BorrowedFd::borrow_raw(fd) };
    nix::sys::stat::fstat(b)
        .ok()
        .map(|st| (st.st_dev, st.st_ino))
}

/// # Safety
/// Mutates the environment: no other thread may be reading or writing it.
unsafe fn read_environment() -> Startup {
    let get = |k| std::env::var_os(k);
    let snap = Snapshot {
        listen_pid: get(handover::LISTEN_PID),
        listen_fds: get(handover::LISTEN_FDS),
        listen_fdnames: get(handover::LISTEN_FDNAMES),
        ready_fd: get(handover::READY_FD),
        activated_fds: get(handover::ACTIVATED_FDS),
    };
    let parsed = snap.parse(std::process::id());
    let ours = match &parsed {
        Ok(Parsed::ForUs(h)) => Some(h.clone()),
        _ => None,
    };
    let upgraded = ours.as_ref().is_some_and(|h| h.ready_fd.is_some());
    // NOTIFY_SOCKET: in a new generation it is the old one's private socket, and the real one
    // travels in HOTEXEC_NOTIFY_SOCKET: put the real one back for the application.
    let upstream = get(handover::UPSTREAM_NOTIFY_SOCKET);
    let notify_target = match upstream {
        Some(real) if upgraded => {
            // SAFETY: guaranteed by the caller.
            unsafe {
                if real.is_empty() {
                    std::env::remove_var(handover::NOTIFY_SOCKET);
                } else {
                    std::env::set_var(handover::NOTIFY_SOCKET, &real);
                }
            }
            Some(real)
        }
        _ => get(handover::NOTIFY_SOCKET),
    }
    .filter(|t| !t.is_empty());
    let owned_fdnames = get(handover::OWNED_FDNAMES)
        .filter(|_| ours.is_some())
        .and_then(|v| v.into_string().ok())
        .map(|v| {
            v.split(':')
                .filter(|n| !n.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    let channels = [handover::KEEPER_FD, handover::HANDOFF_FD, handover::LINK_FD].map(get);
    for var in handover::ALL {
        // SAFETY: guaranteed by the caller.
        unsafe { std::env::remove_var(var) };
    }
    let mut at_start = Vec::new();
    // Every number the hand-over gives a role to; a channel may not reuse one.
    let mut taken: HashSet<RawFd> = HashSet::new();
    if let Some(h) = &ours {
        for fd in h.fds.iter().map(|(fd, _)| *fd).chain(h.ready_fd) {
            at_start.push((fd, identity(fd)));
            taken.insert(fd);
            // SAFETY: F_SETFD on a number we do not own is harmless: it fails with EBADF when
            // closed, and otherwise only sets the close-on-exec flag the fd must have anyway.
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        }
    }
    let [keeper, handoff, link] = [handover::KEEPER_FD, handover::HANDOFF_FD, handover::LINK_FD]
        .into_iter()
        .zip(channels)
        .map(|(var, value)| match value {
            None => Ok(None),
            Some(v) => adopt_channel(var, &v, ours.is_some(), &mut taken).map(Some),
        })
        .collect::<Vec<_>>()
        .try_into()
        .unwrap_or_else(|_| unreachable!("three channels"));
    Startup {
        handover: parsed,
        at_start,
        owned_fdnames,
        notify_target,
        keeper,
        handoff,
        link,
    }
}

/// Checks that `value` of `var` names an open `AF_UNIX` `SOCK_SEQPACKET` socket meant for this
/// process and given no other role, and owns it, close-on-exec.
fn adopt_channel(
    var: &str,
    value: &OsString,
    for_us: bool,
    taken: &mut HashSet<RawFd>,
) -> Result<OwnedFd, String> {
    let refuse = |why: String| format!("{var}={value:?} refused: {why}");
    let fd: RawFd = value
        .to_str()
        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| refuse("expected a decimal fd number".into()))?;
    if fd < handover::FDS_START {
        return Err(refuse(
            "not a usable fd number (it must be 3 or more)".into(),
        ));
    }
    if var != handover::KEEPER_FD && !for_us {
        // The keeper's channel may come without listeners (the keeper passes its own); the
        // channels between generations come with a hand-over for this very process.
        return Err(refuse(format!(
            "it comes without a {} naming this process, so it was not meant for it",
            handover::LISTEN_PID
        )));
    }
    if !taken.insert(fd) {
        return Err(refuse(format!(
            "fd {fd} is also another fd of the hand-over"
        )));
    }
    // SAFETY: only inspected while nothing in this process owns the number; EBADF is reported
    // as "not open".
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    match rustix::net::sockopt::socket_type(borrowed) {
        Ok(rustix::net::SocketType::SEQPACKET) => {}
        Ok(other) => {
            return Err(refuse(format!(
                "fd {fd} is a {other:?} socket, not a SOCK_SEQPACKET channel"
            )));
        }
        Err(e) => return Err(refuse(format!("fd {fd} is not an open socket ({e})"))),
    }
    if rustix::net::sockopt::socket_domain(borrowed).ok() != Some(rustix::net::AddressFamily::UNIX)
    {
        return Err(refuse(format!("fd {fd} is not a Unix socket")));
    }
    // SAFETY: checked open above; the variable hands it to this process, and `taken` shows
    // that no other role of the hand-over claims this number.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    crate::socket::set_cloexec(fd.as_fd()).map_err(|e| refuse(e.to_string()))?;
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn channels_are_checked() {
        let mut taken = HashSet::new();
        for bad in ["", "x", "-1", "1", "99999"] {
            let e = adopt_channel(handover::KEEPER_FD, &bad.into(), true, &mut taken).unwrap_err();
            assert!(e.starts_with(handover::KEEPER_FD), "{e}");
        }
        // A pipe is not a channel.
        let (r, _w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let n = r.as_raw_fd().to_string();
        let e = adopt_channel(handover::LINK_FD, &n.as_str().into(), true, &mut taken).unwrap_err();
        assert!(e.contains("not an open socket"), "{e}");
        // Not meant for this process without a hand-over naming it.
        let e = adopt_channel(
            handover::HANDOFF_FD,
            &"3".into(),
            false,
            &mut HashSet::new(),
        )
        .unwrap_err();
        assert!(e.contains("LISTEN_PID"), "{e}");
        // A number the hand-over already gave a role.
        let e = adopt_channel(
            handover::LINK_FD,
            &"7".into(),
            true,
            &mut HashSet::from([7]),
        )
        .unwrap_err();
        assert!(e.contains("another fd of the hand-over"), "{e}");
    }
}
