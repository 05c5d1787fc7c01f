//! Adopting the inherited fds the hand-over describes (see `startup.rs`, which read it), after
//! checking each one, and matching them to the declared listeners (see `activation.rs`).

use std::collections::HashMap;
use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd, RawFd};

use crate::activation::{self, Found, Source, Wanted};
use crate::config::ListenDecl;
use crate::handover::{self as protocol, Handover, Parsed, ProtocolError};
use crate::socket::{self, SocketInfo};
use crate::startup::{FileId, identity};
use crate::syntax::ListenAddr;

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
pub(crate) fn adopt(
    handover: &Result<Parsed, ProtocolError>,
    at_start: &[(RawFd, Option<FileId>)],
    decls: &[ListenDecl],
) -> Result<Adoption, String> {
    let mut notes = Vec::new();
    let handover = match handover.clone().map_err(|e| e.to_string())? {
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
    let at_start: HashMap<RawFd, Option<FileId>> = at_start.iter().copied().collect();
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
