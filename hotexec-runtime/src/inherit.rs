//! Start-up: taking the protocol variables out of the environment, and adopting the inherited
//! fds they describe after checking each one.

use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Mutex;

use crate::activation::{self, Found, Source, Wanted};
use crate::config::ListenDecl;
use crate::protocol::{self, Handover, Parsed, Snapshot};
use crate::socket::{self, SocketInfo};
use crate::syntax::ListenAddr;

/// Filled by the constructor below, before `main`.
static SNAPSHOT: Mutex<Option<Snapshot>> = Mutex::new(None);
/// `HOTEXEC_OWNED_FDNAMES` of the hand-over meant for this process.
static OWNED: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Whether the inherited Unix listener `name` was bound by a hotexec generation (so its path is
/// ours to remove on a final stop) rather than by a socket activator.
pub(crate) fn path_is_owned(name: &str) -> bool {
    OWNED
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .any(|n| n == name)
}

/// Identity (`st_dev`, `st_ino`) of each fd the hand-over names, as found before `main`; `None`
/// when the number was not open then. `adopt` only takes an fd that is still that same file: a
/// number that was closed at exec and then reused by the application's `init` (a log file, a
/// metrics socket) was not received from the parent and is never adopted, nor closed.
static AT_START: Mutex<Vec<(RawFd, Option<FileId>)>> = Mutex::new(Vec::new());

/// `(st_dev, st_ino)`: which open file an fd number refers to.
type FileId = (libc::dev_t, libc::ino_t);

fn identity(fd: RawFd) -> Option<FileId> {
    // SAFETY: fstat on a number only reads its metadata; EBADF when it is not open.
    let b = unsafe { BorrowedFd::borrow_raw(fd) };
    nix::sys::stat::fstat(b)
        .ok()
        .map(|st| (st.st_dev, st.st_ino))
}

/// Takes the protocol variables out of the environment and, if they are meant for this process,
/// marks the fds they name CLOEXEC, so no child the application spawns can inherit either.
///
/// Runs as a constructor, before `main` and so before any thread exists: the only moment
/// `remove_var` is sound, and earlier than any code of the application could spawn a child.
#[ctor::ctor]
fn scrub_at_start() {
    // SAFETY: constructors run before `main`, on the only thread of the process.
    let snap = unsafe { take_from_env() };
    *SNAPSHOT.lock().unwrap_or_else(|p| p.into_inner()) = Some(snap);
}

/// # Safety
/// Mutates the environment: no other thread may be reading or writing it.
unsafe fn take_from_env() -> Snapshot {
    let get = |k| std::env::var_os(k);
    let snap = Snapshot {
        listen_pid: get(protocol::LISTEN_PID),
        listen_fds: get(protocol::LISTEN_FDS),
        listen_fdnames: get(protocol::LISTEN_FDNAMES),
        ready_fd: get(protocol::READY_FD),
        activated_fds: get(protocol::ACTIVATED_FDS),
    };
    let parsed = snap.parse(std::process::id());
    let for_us = matches!(parsed, Ok(Parsed::ForUs(_)));
    let upgraded = matches!(&parsed, Ok(Parsed::ForUs(h)) if h.ready_fd.is_some());
    // SAFETY: guaranteed by the caller.
    unsafe { crate::notify::take_from_env(upgraded) };
    let owned = get(protocol::OWNED_FDNAMES).filter(|_| for_us);
    *OWNED.lock().unwrap_or_else(|p| p.into_inner()) = owned
        .and_then(|v| v.into_string().ok())
        .map(|v| {
            v.split(':')
                .filter(|n| !n.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    for var in protocol::ALL {
        // SAFETY: guaranteed by the caller.
        unsafe { std::env::remove_var(var) };
    }
    if let Ok(Parsed::ForUs(h)) = parsed {
        let mut at_start = AT_START.lock().unwrap_or_else(|p| p.into_inner());
        for fd in h.fds.iter().map(|(fd, _)| *fd).chain(h.ready_fd) {
            at_start.push((fd, identity(fd)));
            // SAFETY: F_SETFD on a number we do not own is harmless: it fails with EBADF when
            // closed, and otherwise only sets the close-on-exec flag the fd must have anyway.
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        }
    }
    snap
}

/// The variables as they were at start. If the constructor was stripped by the linker, they are
/// taken now (the runtime calls this first thing in `main`, before it starts any thread).
pub(crate) fn snapshot() -> Snapshot {
    let mut guard = SNAPSHOT.lock().unwrap_or_else(|p| p.into_inner());
    guard
        .get_or_insert_with(|| {
            // SAFETY: called at the top of the generated `main`, before the runtime or the
            // application start threads.
            unsafe { take_from_env() }
        })
        .clone()
}

/// An inherited socket, checked.
pub(crate) struct Inherited {
    pub fd: OwnedFd,
    pub name: Option<String>,
    pub info: SocketInfo,
    /// Passed by a service manager (now or to an earlier generation), or bound by hotexec.
    pub source: Source,
}

/// The outcome of adoption.
pub(crate) struct Adoption {
    /// For each declared listener (same order), the inherited socket that serves it, if any.
    pub claimed: Vec<Option<Inherited>>,
    /// The readiness pipe of the upgrade that started us.
    pub ready_fd: Option<OwnedFd>,
    /// Log lines for what was ignored or closed.
    pub notes: Vec<String>,
}

/// Checks every fd of the hand-over and matches it to the declarations (the rules are in
/// `activation.rs`). A malformed variable, an fd that is closed, not a socket, or not a listener
/// of the declared kind, or a service manager's socket that no declaration can be matched with,
/// is an error that names it; nothing is adopted then.
pub(crate) fn adopt(snap: &Snapshot, decls: &[ListenDecl]) -> Result<Adoption, String> {
    let mut notes = Vec::new();
    let handover = match snap.parse(std::process::id()).map_err(|e| e.to_string())? {
        Parsed::Absent => Handover {
            fds: Vec::new(),
            ready_fd: None,
            from_manager: Vec::new(),
        },
        Parsed::NotForUs(why) => {
            notes.push(why);
            Handover {
                fds: Vec::new(),
                ready_fd: None,
                from_manager: Vec::new(),
            }
        }
        Parsed::ForUs(h) => h,
    };
    let borrow = |fd: RawFd| {
        // SAFETY: only inspected (fstat/getsockopt) while the number is not owned by anything
        // in this process; EBADF is reported as "not open".
        unsafe { BorrowedFd::borrow_raw(fd) }
    };
    // Only numbers that were open before `main`, and still are the same file.
    let at_start: std::collections::HashMap<RawFd, Option<FileId>> = AT_START
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .copied()
        .collect();
    let received = |fd: RawFd, what: String| -> Result<(), String> {
        match at_start.get(&fd).map(|id| (fd, *id)) {
            Some((_, None)) => Err(format!(
                "{what}: the fd was not open when this process started, so it was not passed by the parent"
            )),
            Some((_, Some(id))) if identity(fd) != Some(id) => Err(format!(
                "{what}: the fd was closed or replaced since this process started"
            )),
            _ => Ok(()),
        }
    };
    // Check everything before taking ownership of anything.
    let mut found = Vec::new();
    for (fd, name) in &handover.fds {
        received(*fd, format!("inherited {}", describe(*fd, name.as_deref())))?;
        let info = socket::inspect(borrow(*fd))
            .map_err(|e| format!("inherited {}: {e}", describe(*fd, name.as_deref())))?;
        found.push((*fd, name.clone(), info));
    }
    let ready_fd = match handover.ready_fd {
        Some(fd) => {
            received(fd, format!("{}={fd}", protocol::READY_FD))?;
            let st = nix::sys::stat::fstat(borrow(fd)).map_err(|e| {
                format!(
                    "{}={fd}: the fd is not open ({})",
                    protocol::READY_FD,
                    e.desc()
                )
            })?;
            let kind = nix::sys::stat::SFlag::from_bits_truncate(st.st_mode)
                & nix::sys::stat::SFlag::S_IFMT;
            if kind != nix::sys::stat::SFlag::S_IFIFO {
                return Err(format!("{}={fd}: the fd is not a pipe", protocol::READY_FD));
            }
            let writable = nix::fcntl::fcntl(borrow(fd), nix::fcntl::FcntlArg::F_GETFL)
                .map(|fl| fl & libc::O_ACCMODE != libc::O_RDONLY)
                .unwrap_or(false);
            if !writable {
                return Err(format!(
                    "{}={fd}: the fd is the read end of a pipe, not the write end",
                    protocol::READY_FD
                ));
            }
            // SAFETY: checked open above; the hand-over gives this process sole ownership.
            Some(unsafe { OwnedFd::from_raw_fd(fd) })
        }
        None => None,
    };
    // Which socket serves which declaration, decided before ownership of anything is taken.
    let candidates: Vec<Found> = found
        .iter()
        .map(|(fd, name, info)| Found {
            fd: *fd,
            name: name.clone(),
            addr: info.addr.clone(),
            dual_stack: info.dual_stack,
            // Sorted: a binary search keeps thousands of fds linear-ish.
            source: if handover.from_manager.binary_search(fd).is_ok() {
                Source::Manager
            } else {
                Source::Hotexec
            },
        })
        .collect();
    let wanted: Vec<Wanted<'_>> = decls
        .iter()
        .map(|d| Wanted {
            name: &d.name,
            addr: &d.addr,
        })
        .collect();
    let assignment = activation::assign(&candidates, &wanted)?;
    notes.extend(assignment.notes);
    // SAFETY: each fd was checked to be an open socket, and the hand-over (LISTEN_PID equal to
    // our pid) makes this process its owner; each number appears once (3, 4, 5, …). Those no
    // declaration claims are closed when `pool` is dropped.
    let mut pool: Vec<Option<Inherited>> = found
        .into_iter()
        .zip(&candidates)
        .map(|((fd, name, info), c)| {
            Some(Inherited {
                fd: unsafe { OwnedFd::from_raw_fd(fd) },
                name,
                info,
                source: c.source,
            })
        })
        .collect();
    let claimed = assignment
        .claimed
        .into_iter()
        .map(|i| i.and_then(|i| pool[i].take()))
        .collect();
    drop(pool);
    Ok(Adoption {
        claimed,
        ready_fd,
        notes,
    })
}

fn describe(fd: RawFd, name: Option<&str>) -> String {
    match name {
        Some(n) => format!("fd {fd} (named {n:?})"),
        None => format!("fd {fd}"),
    }
}

/// The address in the form of the declarations, for logging.
pub(crate) fn addr_of(s: &Inherited) -> &ListenAddr {
    &s.info.addr
}
