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
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex, Once, OnceLock};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{Signal, kill};
use nix::sys::socket::{self, AddressFamily, MsgFlags, SockFlag, SockType, sockopt};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use crate::config::Config;
use crate::control::{self, Reply};
use crate::protocol::{
    ACTIVATED_FDS, EXEC_FAILED, FDS_START, KEEPER_FD, KEEPER_RELOADING, KEEPER_SERVING,
    KEEPER_STOPPING, KEEPER_UPGRADE_FAILED, Parsed, READY, Snapshot,
};
use crate::{notify, pidfile, signals, spawn};

/// The channel to the keeper, when this process is a generation under one.
static CHANNEL: OnceLock<OwnedFd> = OnceLock::new();
/// Why `HOTEXEC_KEEPER_FD` was refused, if it was.
static REFUSED: Mutex<Option<String>> = Mutex::new(None);
static TAKEN: Once = Once::new();

/// Takes `HOTEXEC_KEEPER_FD` out of the environment before `main` (so nothing the application
/// spawns sees it) and adopts the fd it names, close-on-exec.
#[ctor::ctor]
fn take_at_start() {
    // SAFETY: constructors run before `main`, on the only thread of the process.
    unsafe { take() };
}

/// # Safety
/// Mutates the environment: no other thread may be reading or writing it.
unsafe fn take() {
    TAKEN.call_once(|| {
        let Some(value) = std::env::var_os(KEEPER_FD) else {
            return;
        };
        // SAFETY: guaranteed by the caller.
        unsafe { std::env::remove_var(KEEPER_FD) };
        match adopt(&value) {
            Ok(fd) => {
                let _ = CHANNEL.set(fd);
            }
            Err(e) => *REFUSED.lock().unwrap_or_else(|p| p.into_inner()) = Some(e),
        }
    });
}

/// Checks that `value` names an open `SOCK_SEQPACKET` socket, and owns it.
fn adopt(value: &OsString) -> Result<OwnedFd, String> {
    let refuse = |why: String| format!("{KEEPER_FD}={value:?} refused: {why}");
    let fd: RawFd = value
        .to_str()
        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| refuse("expected a decimal fd number".into()))?;
    if fd < FDS_START {
        return Err(refuse(
            "not a usable fd number (it must be 3 or more)".into(),
        ));
    }
    // SAFETY: only inspected with getsockopt while nothing in this process owns the number;
    // EBADF is reported as "not open".
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    match socket::getsockopt(&borrowed, sockopt::SockType) {
        Ok(SockType::SeqPacket) => {}
        Ok(other) => {
            return Err(refuse(format!(
                "fd {fd} is a {other:?} socket, not the keeper's SOCK_SEQPACKET channel"
            )));
        }
        Err(e) => {
            return Err(refuse(format!(
                "fd {fd} is not an open socket ({})",
                e.desc()
            )));
        }
    }
    // SAFETY: checked open above; the variable hands it to this process, and nothing else in it
    // has taken this number (it is above the listening fds and the readiness pipe).
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    crate::socket::set_cloexec(fd.as_fd()).map_err(|e| refuse(e.to_string()))?;
    Ok(fd)
}

/// The channel to the keeper, to pass to the next generation.
pub(crate) fn channel() -> Option<BorrowedFd<'static>> {
    CHANNEL.get().map(|fd| fd.as_fd())
}

/// Tells the keeper that `new_pid` serves now (called by the old generation once the new one is
/// ready, before it drains). Without a keeper, nothing.
pub(crate) fn handed_over(new_pid: u32) {
    tell(&format!("{KEEPER_SERVING} {new_pid}"));
}

/// Tells the keeper that an upgrade starts. Without a keeper, nothing.
pub(crate) fn reloading() {
    tell(KEEPER_RELOADING);
}

/// Tells the keeper that an upgrade failed and this generation serves on.
pub(crate) fn upgrade_failed() {
    tell(KEEPER_UPGRADE_FAILED);
}

/// Tells the keeper that this generation begins a final stop.
pub(crate) fn stopping() {
    tell(KEEPER_STOPPING);
}

/// One message on the keeper channel, if this process is a generation under a keeper.
fn tell(msg: &str) {
    if let Some(fd) = CHANNEL.get() {
        if let Err(e) = socket::send(
            std::os::fd::AsRawFd::as_raw_fd(fd),
            msg.as_bytes(),
            MsgFlags::MSG_NOSIGNAL,
        ) {
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

/// Decides the role, first thing in `run`.
pub(crate) fn role(config: &Config, snap: &Snapshot) -> Result<Role, String> {
    // SAFETY: called at the top of the generated `main`, before the runtime or the application
    // start threads (normally the constructor already did it and this does nothing).
    unsafe { take() };
    if let Some(e) = REFUSED.lock().unwrap_or_else(|p| p.into_inner()).take() {
        return Err(e);
    }
    if CHANNEL.get().is_some() {
        return Ok(Role::Generation);
    }
    let wanted = match config.keeper {
        Some(on) => on,
        None => foreground_of_a_terminal(),
    };
    if !wanted {
        return Ok(Role::Plain);
    }
    if snap.ready_fd.is_some() {
        // Started by an upgrade from a process without a keeper: the supervisor tracks the old
        // pid already, and a keeper cannot be put in between now.
        tracing::warn!(
            "keeper mode is on, but this process was started by an upgrade from a process without a keeper: it serves directly; the keeper starts with the next fresh start"
        );
        return Ok(Role::Plain);
    }
    Ok(Role::Keeper)
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
pub(crate) fn run(config: Config, snap: &Snapshot, exe: PathBuf, argv: Vec<OsString>) -> ! {
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
    if let Ok(Parsed::ForUs(h)) = snap.parse(pid) {
        for (fd, name) in h.fds {
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
    let child = spawn::spawn(&exe, &argv, &fds, &names, &env, extra).unwrap_or_else(|e| {
        fatal(format!(
            "cannot start generation 1 ({}): {e}",
            exe.display()
        ))
    });
    drop(fds);
    drop(passed);
    drop(theirs);
    // Read only when there is something: the keeper's loop must never block on it.
    let _ = nix::fcntl::fcntl(
        &child.ready_r,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    );
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
    if let Err(e) = control::start(relay) {
        tracing::warn!("keeper: no control socket ({e}); signals still work");
    }
    // Once signals are handled and the control socket is up: whoever reads it can upgrade.
    if let Some(p) = &config.pid_file {
        pidfile::write(p, pid).unwrap_or_else(|e| fatal(e.to_string()));
    }

    Keeper {
        serving,
        channel: Some(mine),
        ready: Some(child.ready_r),
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
    ready: Option<OwnedFd>,
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
            if let Some(r) = &self.ready {
                fds.push(PollFd::new(r.as_fd(), PollFlags::POLLIN));
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
                        KEEPER_RELOADING => {
                            notify::reloading();
                            continue;
                        }
                        KEEPER_UPGRADE_FAILED => {
                            notify::upgrade_failed();
                            continue;
                        }
                        KEEPER_STOPPING => {
                            notify::stopping();
                            continue;
                        }
                        _ => {}
                    }
                    match msg
                        .strip_prefix(KEEPER_SERVING)
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
                            notify::serving_again();
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
        let Some(r) = &self.ready else { return };
        let mut buf = [0u8; 5];
        match nix::unistd::read(r, &mut buf) {
            Ok(n) if n > 0 && buf[0] == READY => {
                tracing::info!(
                    generation = self.serving.load(Ordering::SeqCst),
                    "keeper: generation 1 is ready"
                );
                // The keeper is the main pid: its READY=1 is the service's.
                notify::ready();
                self.ready = None;
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
            Ok(5) if buf[0] == EXEC_FAILED => {
                let errno = i32::from_ne_bytes([buf[1], buf[2], buf[3], buf[4]]);
                tracing::error!(
                    "keeper: could not execute generation 1: {}",
                    Errno::from_raw(errno).desc()
                );
                self.ready = None;
                self.held = false;
            }
            Err(Errno::EAGAIN) | Err(Errno::EINTR) => {}
            _ => {
                self.ready = None;
                self.held = false;
            }
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

    #[test]
    fn the_channel_variable_is_checked() {
        for bad in ["", "x", "-1", "1", "99999"] {
            let e = adopt(&OsString::from(bad)).unwrap_err();
            assert!(e.starts_with(KEEPER_FD), "{e}");
        }
        // A pipe is not the keeper's channel.
        let (r, _w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let n = std::os::fd::AsRawFd::as_raw_fd(&r);
        let e = adopt(&OsString::from(n.to_string())).unwrap_err();
        assert!(e.contains("not an open socket"), "{e}");
    }
}
