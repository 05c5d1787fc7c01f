//! Keeper mode: the process that was started stays, as a small keeper of the serving generation,
//! so that the pid a container runtime (PID 1), a supervisor (supervisord, runit) or a shell
//! tracks never changes across upgrades.
//!
//! ```text
//!  keeper (pid file; PID 1 or child subreaper)     generations (a process group of their own)
//!  ───────────────────────────────────────────     ──────────────────────────────────────────
//!  socketpair(SEQPACKET), fork/exec ─────────────► generation 1: binds the listeners, serves
//!  USR2/TERM/INT/HUP/QUIT ── kill ───────────────► the serving generation (upgrades as usual:
//!                                                  generation 2, a child of 1, gets the listeners
//!                                                  and the channel, HOTEXEC_KEEPER_FD)
//!  "serving <pid of 2>" ◄───────────────────────── 1, once 2 is ready; 1 drains and exits
//!  waitpid(-1): reaps 1; 2 is re-parented to the keeper
//!  the serving generation exits, no successor ───► the keeper exits with its status
//! ```
//!
//! The keeper binds nothing and runs none of the application: it holds the pid file, its control
//! socket (which relays to the serving generation), and its children. Generations live in a
//! process group of their own, so a signal to the keeper's group (Ctrl-C in a terminal,
//! supervisord's `stopasgroup`) reaches the keeper alone, which forwards it once.
//!
//! Keeper mode is on with `keeper = true`, `HOTEXEC_KEEPER=1`, or, when neither says otherwise,
//! in the foreground of a terminal (there the shell waits for the pid it started; without a
//! keeper it would take the terminal back after the first upgrade, and Ctrl-C would no longer
//! reach the server). `HOTEXEC_KEEPER=0` turns it off.

use std::ffi::OsString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{Signal, kill};
use nix::sys::socket::{self, AddressFamily, MsgFlags, SockFlag, SockType};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use crate::config::Config;
use crate::control::{self, Reply};
use crate::handover::{ACTIVATED_FDS, FDS_START, Parsed, ProtocolError};
use crate::notify::Notifier;
use crate::readiness::{PipeReader, Said};
use crate::{pidfile, signals, spawn};

/// Message a generation sends to the keeper when it hands over: `serving <new pid>`. The keeper
/// forwards signals to the new generation from then on, and, as the service's main pid, tells
/// the service manager `READY=1`.
const SERVING: &str = "serving";
/// An upgrade starts (the keeper says `RELOADING=1` to the service manager).
const RELOADING: &str = "reloading";
/// An upgrade failed and the generation serves on (the keeper says `READY=1`).
const UPGRADE_FAILED: &str = "upgrade-failed";
/// The generation begins a final stop (the keeper says `STOPPING=1`).
const STOPPING: &str = "stopping";

/// A generation's channel to its keeper (`HOTEXEC_KEEPER_FD`, adopted in `startup.rs`).
#[derive(Debug)]
pub(crate) struct KeeperChannel(OwnedFd);

impl KeeperChannel {
    pub(crate) fn new(fd: OwnedFd) -> KeeperChannel {
        KeeperChannel(fd)
    }

    /// To pass to the next generation.
    pub(crate) fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }

    /// `new_pid` serves now (told by the old generation once the new one is ready, or by an
    /// orphaned generation that takes over).
    pub(crate) fn serving(&self, new_pid: u32) {
        self.tell(&format!("{SERVING} {new_pid}"));
    }

    pub(crate) fn reloading(&self) {
        self.tell(RELOADING);
    }

    pub(crate) fn upgrade_failed(&self) {
        self.tell(UPGRADE_FAILED);
    }

    pub(crate) fn stopping(&self) {
        self.tell(STOPPING);
    }

    fn tell(&self, msg: &str) {
        if let Err(e) = socket::send(self.0.as_raw_fd(), msg.as_bytes(), MsgFlags::MSG_NOSIGNAL) {
            tracing::error!("could not tell the keeper {msg:?}: {}", e.desc());
        }
    }
}

/// What this process is.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Role {
    /// Keeper mode is off.
    Plain,
    /// Keeper mode is on and this is the started process: it becomes the keeper.
    Keeper,
    /// A generation under a keeper.
    Generation,
}

/// Decides the role, first thing in `run`: `has_channel`: `HOTEXEC_KEEPER_FD` was given;
/// `started_by_upgrade`: the hand-over came with a readiness pipe.
pub(crate) fn role(config: &Config, has_channel: bool, started_by_upgrade: bool) -> Role {
    if has_channel {
        return Role::Generation;
    }
    let wanted = match config.keeper {
        Some(on) => on,
        None => foreground_of_a_terminal(),
    };
    if !wanted {
        return Role::Plain;
    }
    if started_by_upgrade {
        // Started by an upgrade from a process without a keeper: the supervisor tracks the old
        // pid already, and a keeper cannot be put in between now.
        tracing::warn!(
            "keeper mode is on, but this process was started by an upgrade from a process without a keeper: it serves directly; the keeper starts with the next fresh start"
        );
        return Role::Plain;
    }
    Role::Keeper
}

fn foreground_of_a_terminal() -> bool {
    // SAFETY: isatty, tcgetpgrp and getpgrp take an fd number or nothing and touch no memory.
    unsafe { libc::isatty(0) == 1 && libc::tcgetpgrp(0) == libc::getpgrp() }
}

/// The exit code a shell would report for `status`: the code, or 128 + the signal.
fn exit_code(status: WaitStatus) -> i32 {
    match status {
        WaitStatus::Exited(_, code) => code,
        WaitStatus::Signaled(_, sig, _) => 128 + sig as i32,
        _ => 1,
    }
}

/// Becomes the keeper: starts generation 1, then forwards signals, relays control requests and
/// reaps every generation until the serving one exits with no successor. Never returns.
pub(crate) fn run(
    config: Config,
    handover: &Result<Parsed, ProtocolError>,
    notifier: Notifier,
    exe: PathBuf,
    argv: Vec<OsString>,
) -> ! {
    let pid = std::process::id();
    let span = tracing::info_span!("keeper", pid);
    let _enter = span.enter();
    let fatal = |msg: String| -> ! {
        tracing::error!("keeper: {msg}");
        eprintln!("hotexec: keeper: {msg}");
        std::process::exit(1)
    };
    if pid != 1 {
        // SAFETY: prctl(PR_SET_CHILD_SUBREAPER) takes integer arguments and touches no memory.
        if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
            fatal(format!(
                "prctl(PR_SET_CHILD_SUBREAPER): {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    let (mine, theirs) = socket::socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .unwrap_or_else(|e| fatal(format!("socketpair(AF_UNIX, SOCK_SEQPACKET): {}", e.desc())));
    let mut forwarded = vec![
        config.upgrade_signal,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGQUIT,
    ];
    forwarded.dedup();
    let mut handled = forwarded.clone();
    handled.push(Signal::SIGCHLD);
    let sig_r =
        signals::install(&handled, None).unwrap_or_else(|e| fatal(format!("signal handling: {e}")));

    // Sockets handed to the keeper itself (systemd socket activation) go on to generation 1.
    let mut passed: Vec<(OwnedFd, String)> = Vec::new();
    if let Ok(Parsed::ForUs(h)) = handover {
        for (fd, name) in h.fds.iter().cloned() {
            // SAFETY: F_GETFD only reads the flags of a number; a closed one gives -1.
            if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
                tracing::warn!(fd, "inherited fd is not open: not passed on");
                continue;
            }
            // SAFETY: open (checked above) and handed to this process by LISTEN_PID; each
            // number appears once in the hand-over.
            passed.push((
                unsafe { OwnedFd::from_raw_fd(fd) },
                name.unwrap_or_default(),
            ));
        }
    }
    let fds: Vec<BorrowedFd<'_>> = passed.iter().map(|(fd, _)| fd.as_fd()).collect();
    let names: Vec<&str> = passed.iter().map(|(_, n)| n.as_str()).collect();
    let extra = spawn::Extra {
        keeper: Some(theirs.as_fd()),
        handoff: None,
        link: None,
        new_group: true,
        upgrade_signal: Some(config.upgrade_signal),
    };
    // The keeper is started by the service manager (never by an upgrade, see `role`): every
    // fd it passes is the service manager's, and generation 1 must know it, since for it they
    // come with a readiness pipe like an upgrade's (see activation.rs).
    let activated: Vec<String> = (FDS_START..)
        .take(fds.len())
        .map(|fd| fd.to_string())
        .collect();
    let env = [(ACTIVATED_FDS, OsString::from(activated.join(":")))];
    let child =
        spawn::spawn(config.spawn, &exe, &argv, &fds, &names, &env, extra).unwrap_or_else(|e| {
            fatal(format!(
                "cannot start generation 1 ({}): {e}",
                exe.display()
            ))
        });
    drop(fds);
    drop(passed);
    drop(theirs);
    tracing::info!(
        generation = child.pid.as_raw(),
        "keeper: started generation 1"
    );

    let serving = Arc::new(AtomicI32::new(child.pid.as_raw()));
    let relay_to = serving.clone();
    let relay_timeout = config.ready_timeout + Duration::from_secs(30);
    let relay: control::Handler = Arc::new(move |request| {
        let target = relay_to.load(Ordering::SeqCst) as u32;
        match control::request(target, request, relay_timeout) {
            Ok(r) => r,
            Err(e) => Reply::error(
                "unreachable",
                format!("the keeper could not reach the serving generation {target}: {e}"),
            ),
        }
    });
    if let Err(e) = control::start(relay, control::Activity::default()) {
        tracing::warn!("keeper: no control socket ({e}); signals still work");
    }
    // Once signals are handled and the control socket is up: whoever reads it can upgrade.
    if let Some(p) = &config.pid_file {
        pidfile::write(p, pid).unwrap_or_else(|e| fatal(e.to_string()));
    }

    Keeper {
        serving,
        channel: Some(mine),
        ready: Some(PipeReader::new(child.ready_r)),
        notifier,
        sig_r,
        forwarded,
        upgrade_signal: config.upgrade_signal,
        held: false,
        pid_file: config.pid_file.clone(),
        drain_timeout: config.drain_timeout,
        ending: None,
    }
    .run()
}

struct Keeper {
    serving: Arc<AtomicI32>,
    channel: Option<OwnedFd>,
    ready: Option<PipeReader>,
    /// The keeper is the main pid: it speaks to the service manager for the generations.
    notifier: Notifier,
    sig_r: OwnedFd,
    forwarded: Vec<Signal>,
    upgrade_signal: Signal,
    /// The upgrade signal arrived before generation 1 reported ready: forwarded once it has.
    /// Generation 1 discards an upgrade signal before it is ready (to it, it looks like a
    /// broadcast meant for an older generation), but the keeper knows there is none: the pid
    /// file names the keeper from the start, and whoever signals it asks for an upgrade.
    held: bool,
    pid_file: Option<PathBuf>,
    drain_timeout: Duration,
    /// Set once the serving generation is gone with no successor: the exit code, and until when
    /// the other children (generations still draining) are waited for. Cleared if a generation
    /// reports a successor after all (a rollback by the generation it replaced).
    ending: Option<(i32, Instant)>,
}

impl Keeper {
    fn run(mut self) -> ! {
        loop {
            let mut fds = vec![PollFd::new(self.sig_r.as_fd(), PollFlags::POLLIN)];
            if let Some(c) = &self.channel {
                fds.push(PollFd::new(c.as_fd(), PollFlags::POLLIN));
            }
            if let Some(r) = self.ready.as_ref().and_then(PipeReader::as_fd) {
                fds.push(PollFd::new(r, PollFlags::POLLIN));
            }
            match poll(&mut fds, PollTimeout::from(200u16)) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => {
                    tracing::error!("keeper: poll: {}", e.desc());
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            drop(fds);
            self.read_channel();
            self.read_ready();
            for sig in signals::drain(&self.sig_r) {
                if !self.forwarded.contains(&sig) {
                    continue; // SIGCHLD: reaping follows.
                }
                let target = self.serving.load(Ordering::SeqCst);
                if self.ending.is_some() {
                    tracing::info!(signal = %sig, "keeper: no generation serves any more; signal not forwarded");
                    continue;
                }
                if sig == self.upgrade_signal && self.ready.is_some() {
                    tracing::info!(signal = %sig, "keeper: generation 1 is not ready yet: the upgrade signal is forwarded once it is");
                    self.held = true;
                    continue;
                }
                tracing::info!(signal = %sig, generation = target, "keeper: forwarding to the serving generation");
                if let Err(e) = kill(Pid::from_raw(target), sig) {
                    tracing::warn!(signal = %sig, generation = target, "keeper: forwarding failed: {}", e.desc());
                }
            }
            let children_left = self.reap();
            if self.ending.is_none() {
                // The serving generation may have been reaped by its own parent (it died while
                // that parent was draining): then it is gone without the keeper seeing it exit.
                let target = self.serving.load(Ordering::SeqCst);
                if kill(Pid::from_raw(target), None) == Err(Errno::ESRCH) {
                    self.read_channel();
                    if self.serving.load(Ordering::SeqCst) == target {
                        tracing::error!(
                            generation = target,
                            "keeper: the serving generation is gone (reaped by the generation it replaced)"
                        );
                        self.ending = Some((
                            1,
                            Instant::now() + self.drain_timeout + Duration::from_secs(5),
                        ));
                    }
                }
            }
            if let Some((code, wait_until)) = self.ending {
                if !children_left || Instant::now() >= wait_until {
                    if children_left {
                        tracing::warn!(
                            "keeper: exiting with generations still running (drain timeout passed)"
                        );
                    }
                    if let Some(p) = &self.pid_file {
                        pidfile::remove_if_ours(p, std::process::id());
                    }
                    tracing::info!(
                        code,
                        "keeper: the serving generation has exited; exiting with its status"
                    );
                    std::process::exit(code);
                }
            }
        }
    }

    /// Reaps every child that has exited; returns whether children are left.
    fn reap(&mut self) -> bool {
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => return true,
                Ok(status) => {
                    let Some(p) = status.pid() else { continue };
                    let serving = self.serving.load(Ordering::SeqCst);
                    if p.as_raw() == serving && self.ending.is_none() {
                        // A hand-over is sent before the old generation exits: read it first.
                        self.read_channel();
                        if self.serving.load(Ordering::SeqCst) == serving {
                            let code = exit_code(status);
                            tracing::info!(
                                generation = serving,
                                ?status,
                                "keeper: the serving generation exited"
                            );
                            self.ending = Some((
                                code,
                                Instant::now() + self.drain_timeout + Duration::from_secs(5),
                            ));
                            continue;
                        }
                    }
                    tracing::info!(pid = p.as_raw(), ?status, "keeper: reaped");
                }
                Err(Errno::EINTR) => continue,
                Err(Errno::ECHILD) => return false,
                Err(e) => {
                    tracing::warn!("keeper: waitpid: {}", e.desc());
                    return true;
                }
            }
        }
    }

    /// Reads every `serving <pid>` message waiting on the channel.
    fn read_channel(&mut self) {
        let Some(c) = &self.channel else { return };
        let mut buf = [0u8; 128];
        loop {
            match socket::recv(
                std::os::fd::AsRawFd::as_raw_fd(c),
                &mut buf,
                MsgFlags::MSG_DONTWAIT,
            ) {
                Ok(0) => {
                    // Every generation has closed its end: nothing more will come.
                    self.channel = None;
                    return;
                }
                Ok(n) => {
                    let msg = String::from_utf8_lossy(&buf[..n]);
                    // The keeper is the service's main pid: it speaks to the service manager
                    // for the generations, which never send MAINPID (see notify.rs).
                    match msg.as_ref() {
                        RELOADING => {
                            self.notifier.reloading();
                            continue;
                        }
                        UPGRADE_FAILED => {
                            self.notifier.ready_again();
                            continue;
                        }
                        STOPPING => {
                            self.notifier.stopping();
                            continue;
                        }
                        _ => {}
                    }
                    match msg
                        .strip_prefix(SERVING)
                        .and_then(|r| r.trim().parse::<i32>().ok())
                        .filter(|p| *p > 0)
                    {
                        Some(new) => {
                            let old = self.serving.swap(new, Ordering::SeqCst);
                            if self.ending.take().is_some() {
                                tracing::warn!(
                                    generation = new,
                                    "keeper: a generation serves again (rolled back): not exiting"
                                );
                            }
                            tracing::info!(
                                old_generation = old,
                                new_generation = new,
                                "keeper: a new generation serves"
                            );
                            self.notifier.ready_again();
                        }
                        None => {
                            tracing::warn!(message = %msg, "keeper: unknown message on the keeper channel")
                        }
                    }
                }
                Err(Errno::EINTR) => continue,
                Err(_) => return,
            }
        }
    }

    /// Generation 1's readiness (or exec failure): for the log, and `READY=1` to the service
    /// manager.
    fn read_ready(&mut self) {
        let Some(r) = &mut self.ready else { return };
        let said = r.read();
        let Some(first) = said.first().copied() else {
            return;
        };
        // What generation 1 says after it is ready is for a previous generation, and it has
        // none: the pipe is closed once its readiness is known.
        self.ready = None;
        match first {
            Said::Ready => {
                tracing::info!(
                    generation = self.serving.load(Ordering::SeqCst),
                    "keeper: generation 1 is ready"
                );
                // The keeper is the main pid: its READY=1 is the service's.
                self.notifier.ready();
                if std::mem::take(&mut self.held) {
                    let target = self.serving.load(Ordering::SeqCst);
                    tracing::info!(signal = %self.upgrade_signal, generation = target, "keeper: forwarding the upgrade signal held until generation 1 was ready");
                    if let Err(e) = kill(Pid::from_raw(target), self.upgrade_signal) {
                        tracing::warn!(
                            generation = target,
                            "keeper: forwarding failed: {}",
                            e.desc()
                        );
                    }
                }
            }
            Said::ExecFailed(errno) => {
                tracing::error!(
                    "keeper: could not execute generation 1: {}",
                    Errno::from_raw(errno).desc()
                );
                self.held = false;
            }
            _ => self.held = false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_as_a_shell_reports_them() {
        let p = Pid::from_raw(5);
        assert_eq!(exit_code(WaitStatus::Exited(p, 3)), 3);
        assert_eq!(
            exit_code(WaitStatus::Signaled(p, Signal::SIGKILL, false)),
            137
        );
    }
}
