//! Starting the next generation — with every listener, the readiness pipe, the keeper channel,
//! the connection hand-off channel and the generation link — and what the supervisor keeps of
//! the child to hear from it.

use std::ffi::OsString;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use nix::poll::{PollFd, PollFlags};

use super::Setup;
use super::event::{Exit, Target};
use crate::error::UpgradeError;
use crate::handover as protocol;
use crate::link::{self, Received, Record};
use crate::notify::ChildSocket;
use crate::readiness::PipeReader;
use crate::{handoff, spawn};

/// One of the runtime's own copies of a listener.
pub(crate) struct Held {
    pub name: String,
    pub fd: OwnedFd,
    /// Passed by a service manager (to this generation or an earlier one): every later
    /// generation must keep adopting it whatever it declares (see `activation.rs`).
    pub from_manager: bool,
}

/// A spawned generation, as the supervisor hears from it.
pub(crate) struct Child {
    pub pid: u32,
    /// What it executes.
    pub exe: std::path::PathBuf,
    /// Its readiness pipe: `READY`, then its news.
    pub ready: PipeReader,
    /// A program not built on hotexec reports `READY=1` here instead.
    notify: Option<ChildSocket>,
    /// Readable once it exits (`pidfd_open`); `None` on kernels without it.
    pub pidfd: Option<OwnedFd>,
    /// The generation link (our end), while it is open.
    pub link: Option<OwnedFd>,
    /// The connection hand-off channel (our end), until it is ready.
    pub handoff: Option<OwnedFd>,
    pub reaped: bool,
    /// Why it says it could not start ([`Record::StartFailed`]).
    failure: Option<String>,
    /// Health reports it sent, not yet handed to the machine.
    pub reports: Vec<crate::health::Report>,
}

impl Child {
    /// Its fds to wait on.
    pub(crate) fn poll_fds<'a>(&'a self, fds: &mut Vec<PollFd<'a>>) {
        let mut add = |fd: Option<BorrowedFd<'a>>| {
            if let Some(fd) = fd {
                fds.push(PollFd::new(fd, PollFlags::POLLIN));
            }
        };
        add(self.ready.as_fd());
        add(self.notify.as_ref().map(ChildSocket::as_fd));
        add(self.link.as_ref().map(|l| l.as_fd()));
        if !self.reaped {
            add(self.pidfd.as_ref().map(|p| p.as_fd()));
        }
    }

    /// It serves now (it becomes the successor): its notify socket, which only ever said
    /// READY, is closed: nothing reads it from here on, and a message it sent later
    /// (`WATCHDOG=1`, `STATUS=`) would keep `poll` awake for good.
    pub(crate) fn serves(&mut self) {
        self.notify = None;
    }

    /// Whether it sent `READY=1` on its private notify socket.
    pub(crate) fn notify_ready(&self) -> bool {
        self.notify
            .as_ref()
            .is_some_and(|s| s.ready_from(self.pid as i32))
    }

    /// Only the fd that says it exited (a generation that was not committed: nothing it says
    /// matters any more, and an unread readiness pipe would keep `poll` awake).
    pub(crate) fn poll_exit_fd<'a>(&'a self, fds: &mut Vec<PollFd<'a>>) {
        if let (false, Some(p)) = (self.reaped, &self.pidfd) {
            fds.push(PollFd::new(p.as_fd(), PollFlags::POLLIN));
        }
    }

    /// Reads its records on the generation link (bounded per wake-up).
    pub(crate) fn read_link(&mut self) {
        let Some(l) = &self.link else { return };
        for _ in 0..64 {
            match link::recv(l.as_fd()) {
                Received::Record(Record::StartFailed { reason }) => {
                    tracing::warn!(
                        new_pid = self.pid,
                        "the new generation cannot start: {reason}"
                    );
                    self.failure = Some(reason);
                }
                Received::Record(r @ Record::Other { .. }) => {
                    match crate::health::link::HealthRecord::from_record(&r) {
                        Some(Ok(crate::health::link::HealthRecord::Report(report))) => {
                            self.reports.push(report)
                        }
                        Some(Ok(other)) => tracing::debug!(
                            new_pid = self.pid,
                            ?other,
                            "generation link: unexpected health record"
                        ),
                        Some(Err(why)) => {
                            tracing::warn!(new_pid = self.pid, "generation link: refused {why}")
                        }
                        None => tracing::debug!(new_pid = self.pid, ?r, "generation link: record"),
                    }
                }
                Received::Record(other) => {
                    tracing::debug!(new_pid = self.pid, ?other, "generation link: record")
                }
                Received::Refused(why) => {
                    tracing::warn!(new_pid = self.pid, "generation link: refused {why}")
                }
                Received::Empty => return,
                Received::Closed => {
                    self.link = None;
                    return;
                }
            }
        }
    }

    /// Reaps it if it has exited (with the reason it gave, if any).
    pub(crate) fn exited(&mut self) -> Option<Exit> {
        if self.reaped {
            return None;
        }
        let mut exit = super::reap(self.pid)?;
        self.reaped = true;
        self.pidfd = None;
        // What it sent just before it exited (why it could not start) may have arrived after
        // this wake-up's read of the link: read what is left before saying how it ended.
        self.read_link();
        if let Some(why) = &self.failure {
            exit.how = format!("{}: {why}", exit.how);
        }
        Some(exit)
    }
}

/// `pidfd_open(2)`: an fd that becomes readable when `pid` exits (close-on-exec by default).
fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1; no memory is passed.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    // SAFETY: a fresh fd owned by nothing else.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Spawns the deploy path (an upgrade) or this process's own image (a rollback:
/// `/proc/self/exe` is the running inode even after the file on disk was replaced).
pub(crate) fn spawn(setup: &Setup, target: Target) -> Result<Child, UpgradeError> {
    let (exe, notify_sock) = match target {
        Target::Deploy => {
            // Before anything is started: is it there, executable on this machine, and (for a
            // hotexec build) able to be started by this generation's hand-over protocol?
            let checked =
                crate::preflight::preflight(&setup.announcer.exe).map_err(|e| match e {
                    // This process is out of fds, nothing is wrong with the binary: the limit's own
                    // error, which says what to raise.
                    crate::preflight::PreflightError::OutOfFds { .. } => UpgradeError::Limit(
                        crate::limits::LimitError::NoFile {
                            call: "open (the preflight reading the new binary)",
                            limit: crate::limits::nofile(),
                        }
                        .to_string(),
                    ),
                    e => UpgradeError::Refused(e),
                })?;
            if checked.note.is_none() {
                tracing::info!(
                    exe = %setup.announcer.exe.display(),
                    "the new binary carries no hotexec note (not built with #[hotexec::main], or by a hotexec before 0.1): started as any socket-activation program"
                );
            }
            // A new binary that is not built on hotexec reports ready with sd_notify here.
            let sock = ChildSocket::bind()
                .inspect_err(|e| tracing::warn!("no notify socket for the new generation ({e}): only the readiness pipe will count"))
                .ok();
            (setup.announcer.exe.as_path(), sock)
        }
        // Our own image reports on the pipe: no private notify socket.
        Target::Rollback => (Path::new("/proc/self/exe"), None),
    };
    let fail = |e: std::io::Error| match e
        .get_ref()
        .and_then(|i| i.downcast_ref::<crate::limits::LimitError>())
    {
        Some(limit) => UpgradeError::Limit(limit.to_string()),
        None => UpgradeError::Spawn(e.to_string()),
    };
    let fds: Vec<BorrowedFd<'_>> = setup.listeners.iter().map(|h| h.fd.as_fd()).collect();
    let names: Vec<&str> = setup.listeners.iter().map(|h| h.name.as_str()).collect();
    let mut env = child_env(setup, notify_sock.as_ref());
    // Which of them a service manager passed. `listeners[i]` becomes fd 3 + i.
    let activated: Vec<String> = (protocol::FDS_START..)
        .zip(&setup.listeners)
        .filter(|(_, h)| h.from_manager)
        .map(|(fd, _)| fd.to_string())
        .collect();
    env.push((protocol::ACTIVATED_FDS, activated.join(":").into()));
    let handoff = handoff::channel_for_child().map_err(fail)?;
    let link = match link::pair() {
        Ok(pair) => Some(pair),
        Err(e) if e.raw_os_error() == Some(libc::EMFILE) => {
            return Err(UpgradeError::Limit(
                crate::limits::LimitError::NoFile {
                    call: "socketpair (generation link)",
                    limit: crate::limits::nofile(),
                }
                .to_string(),
            ));
        }
        Err(e) => {
            tracing::warn!(
                "no generation link for the new generation ({e}): nothing is carried to it"
            );
            None
        }
    };
    if let Some((ours, _)) = &link {
        // Queued before the spawn: the child finds it as it starts.
        let own = setup.generation.number();
        let next = match target {
            Target::Deploy => own + 1,
            // The failed successor had own + 1.
            Target::Rollback => own + 2,
        };
        setup.generation.send_lineage(ours, next);
    }
    let extra = spawn::Extra {
        keeper: setup.announcer.keeper.as_ref().map(|k| k.as_fd()),
        handoff: handoff.as_ref().map(|(_, theirs)| theirs.as_fd()),
        link: link.as_ref().map(|(_, theirs)| theirs.as_fd()),
        new_group: false,
        upgrade_signal: Some(setup.config.upgrade_signal),
    };
    let spawned = spawn::spawn(
        setup.config.spawn,
        exe,
        &setup.argv,
        &fds,
        &names,
        &env,
        extra,
    )
    .map_err(fail)?;
    let pid = spawned.pid.as_raw() as u32;
    Ok(Child {
        handoff: handoff.map(|(ours, _)| ours),
        exe: exe.to_path_buf(),
        pid,
        ready: PipeReader::new(spawned.ready_r),
        notify: notify_sock,
        pidfd: pidfd_open(pid),
        link: link.map(|(ours, _)| ours),
        reaped: false,
        failure: None,
        reports: Vec::new(),
    })
}

/// The variables a new generation gets on top of the fd variables: the private notify socket
/// and the real one, and which Unix socket paths are hotexec's to remove.
fn child_env(setup: &Setup, notify_sock: Option<&ChildSocket>) -> Vec<(&'static str, OsString)> {
    let owned = setup.announcer.owned_paths.names();
    let mut env = vec![(protocol::OWNED_FDNAMES, OsString::from(owned.join(":")))];
    if let Some(s) = notify_sock {
        env.push((protocol::NOTIFY_SOCKET, s.addr.clone()));
        env.push((
            protocol::UPSTREAM_NOTIFY_SOCKET,
            setup.announcer.notifier.upstream(),
        ));
    }
    env
}
