//! The supervisor thread: waits for signals and upgrade requests, runs one upgrade at a time,
//! and hands over to the new generation only once it has reported ready.

use std::ffi::OsString;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use crate::config::Config;
use crate::error::UpgradeError;
use crate::protocol::{self, EXEC_FAILED, HANDED_ON, READY, STOPPING};
use crate::shutdown::{Shutdown, ShutdownReason};
use crate::{drain, notify, pidfile, signals, spawn};

type Reply = mpsc::Sender<Result<u32, UpgradeError>>;

/// What the supervisor shares with the rest of the runtime.
pub(crate) struct Ctx {
    pub config: Config,
    pub exe: PathBuf,
    pub argv: Vec<OsString>,
    /// The runtime's own copy of each listener, passed to every new generation; emptied by a
    /// final stop ([`Ctx::close_listeners`]).
    sockets: Mutex<Vec<(String, OwnedFd)>>,
    pub shutdown: Shutdown,
    requests: Mutex<Vec<Reply>>,
    wake_w: OwnedFd,
    /// Pid of a new generation that has not reported ready yet (0: none).
    pub pending: AtomicI32,
    /// After a hand-over: the successor outlived its probation, or a rollback is over. Until
    /// then a returning `main` waits, so this process can still roll back.
    settled: AtomicBool,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    Serving,
    Draining(ShutdownReason),
}

/// Starts the supervisor thread.
pub(crate) fn start(
    config: Config,
    exe: PathBuf,
    argv: Vec<OsString>,
    sockets: Vec<(String, OwnedFd)>,
    shutdown: Shutdown,
) -> std::io::Result<Arc<Ctx>> {
    let sig_r = signals::install(
        &[config.upgrade_signal, Signal::SIGTERM, Signal::SIGINT],
        Some(config.upgrade_signal),
    )?;
    let (wake_r, wake_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)
            .map_err(|e| std::io::Error::other(format!("pipe2: {}", e.desc())))?;
    let ctx = Arc::new(Ctx {
        config,
        exe,
        argv,
        sockets: Mutex::new(sockets),
        shutdown,
        requests: Mutex::new(Vec::new()),
        wake_w,
        pending: AtomicI32::new(0),
        settled: AtomicBool::new(false),
    });
    let c = ctx.clone();
    std::thread::Builder::new()
        .name("hotexec-supervisor".into())
        .spawn(move || {
            Supervisor {
                ctx: c,
                sig_r,
                wake_r,
                phase: Phase::Serving,
                handed_over_at: None,
                rolled_back: false,
                successor: None,
                stop_requested: false,
                deferred: false,
            }
            .run()
        })?;
    Ok(ctx)
}

impl Ctx {
    /// Asks the supervisor for an upgrade and waits for its outcome.
    pub(crate) fn request_upgrade(&self) -> Result<u32, UpgradeError> {
        let (tx, rx) = mpsc::channel();
        self.requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(tx);
        let _ = nix::unistd::write(&self.wake_w, b"u");
        rx.recv().unwrap_or(Err(UpgradeError::NotRunning))
    }

    /// Blocks until the successor is past its probation or a rollback is over. Bounded by the
    /// drain watchdog, which exits the process at `drain_timeout`.
    pub(crate) fn wait_settled(&self) {
        while !self.settled.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Closes the runtime's copies of the listeners: on a final stop nothing will be passed on
    /// any more, and an open copy would keep the kernel accepting connections nobody serves.
    pub(crate) fn close_listeners(&self) -> usize {
        let closed = std::mem::take(&mut *self.sockets.lock().unwrap_or_else(|p| p.into_inner()));
        closed.len()
    }

    /// Kills and reaps a new generation that has not reported ready (used when `main` returns
    /// during an upgrade, so no child outlives us half-started).
    pub(crate) fn kill_pending(&self) {
        let pid = self.pending.swap(0, Ordering::SeqCst);
        if pid > 0 {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            let _ = waitpid(Pid::from_raw(pid), None);
        }
    }
}

struct Supervisor {
    ctx: Arc<Ctx>,
    sig_r: OwnedFd,
    wake_r: OwnedFd,
    phase: Phase,
    /// When the current successor reported ready.
    handed_over_at: Option<Instant>,
    /// A generation rolls back at most once.
    rolled_back: bool,
    /// What the current successor has said on its readiness pipe since it was ready.
    successor: Option<Successor>,
    /// A stop signal reached this generation after it handed over: whatever the successor
    /// does now, this generation does not start again.
    stop_requested: bool,
    /// An upgrade signal reached this freshly started generation before it reported ready:
    /// the upgrade starts as soon as it has (see [`Supervisor::on_signal`]).
    deferred: bool,
}

/// The successor's readiness pipe, kept open after `READY`: the successor writes
/// [`HANDED_ON`] or [`STOPPING`] on it (see `ready.rs`).
struct Successor {
    /// `None` once the successor closed its end (it exited, or exec'd something else).
    pipe: Option<OwnedFd>,
    handed_on: bool,
    stopping: bool,
}

impl Successor {
    fn new(pipe: OwnedFd) -> Successor {
        // Read only when there is something: the supervisor must never block on it.
        let _ = nix::fcntl::fcntl(
            &pipe,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        );
        Successor {
            pipe: Some(pipe),
            handed_on: false,
            stopping: false,
        }
    }

    /// Reads what the successor has written so far.
    fn read(&mut self) {
        let Some(fd) = &self.pipe else { return };
        let mut buf = [0u8; 16];
        loop {
            match nix::unistd::read(fd, &mut buf) {
                Ok(0) => {
                    self.pipe = None;
                    return;
                }
                Ok(n) => {
                    for b in &buf[..n] {
                        match *b {
                            HANDED_ON => self.handed_on = true,
                            STOPPING => self.stopping = true,
                            _ => {}
                        }
                    }
                }
                Err(nix::errno::Errno::EINTR) => {}
                Err(_) => return,
            }
        }
    }
}

/// What woke the supervisor during an upgrade.
enum Event {
    Ready,
    ExecFailed(i32),
    Eof,
    Timeout,
    Stop(Signal),
}

fn describe(status: WaitStatus) -> String {
    match status {
        WaitStatus::Exited(_, code) => format!("exit status {code}"),
        WaitStatus::Signaled(_, sig, _) => format!("killed by {sig}"),
        other => format!("{other:?}"),
    }
}

impl Supervisor {
    fn run(mut self) {
        loop {
            // While draining, also watch the new generation: it is reaped at once if it dies, and
            // a crash is noticed within 50 ms (connections queue in the backlog meanwhile).
            // A deferred upgrade waits for readiness, which nothing signals to this thread:
            // checked every 10 ms, only while one is deferred.
            let timeout = match self.phase {
                Phase::Serving if self.deferred => PollTimeout::from(10u16),
                Phase::Serving => PollTimeout::NONE,
                Phase::Draining(_) => PollTimeout::from(50u16),
            };
            let mut fds = vec![
                PollFd::new(self.sig_r.as_fd(), PollFlags::POLLIN),
                PollFd::new(self.wake_r.as_fd(), PollFlags::POLLIN),
            ];
            if let Some(pipe) = self.successor.as_ref().and_then(|s| s.pipe.as_ref()) {
                fds.push(PollFd::new(pipe.as_fd(), PollFlags::POLLIN));
            }
            if let Err(e) = poll(&mut fds, timeout) {
                if e != nix::errno::Errno::EINTR {
                    tracing::error!("supervisor poll failed: {}", e.desc());
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            drop(fds);
            if let Some(s) = &mut self.successor {
                s.read();
            }
            for sig in signals::drain(&self.sig_r) {
                self.on_signal(sig);
            }
            if self.deferred && self.phase == Phase::Serving && crate::ready::reported() {
                self.deferred = false;
                tracing::info!("ready: starting the upgrade signalled before");
                let _ = self.upgrade("signal");
            }
            self.drain_wake();
            for reply in self.take_requests() {
                let result = match self.phase {
                    Phase::Serving => self.upgrade("api"),
                    Phase::Draining(_) => Err(UpgradeError::Busy("this generation is draining")),
                };
                let _ = reply.send(result);
            }
            if let Phase::Draining(ShutdownReason::Upgrade { new_pid }) = self.phase {
                self.watch_successor(new_pid);
            }
        }
    }

    fn drain_wake(&self) {
        let mut buf = [0u8; 64];
        while matches!(nix::unistd::read(&self.wake_r, &mut buf), Ok(n) if n > 0) {}
    }

    fn take_requests(&self) -> Vec<Reply> {
        std::mem::take(&mut *self.ctx.requests.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn on_signal(&mut self, sig: Signal) {
        let upgrade_sig = self.ctx.config.upgrade_signal;
        match (sig, self.phase) {
            (s, Phase::Serving) if s == upgrade_sig && !crate::ready::reported() => {
                if crate::ready::started_by_upgrade() {
                    // A broadcast (`pkill -USR2 app`) reaches the old and the new generation at
                    // once: the new one must not start a third before it even serves.
                    tracing::warn!(signal = %s, "upgrade signal ignored: this generation has not reported ready yet");
                } else {
                    // A fresh start has no older generation the signal could be meant for: the
                    // operator read the pid file (written before `main`) and asked for an
                    // upgrade. Dropping it would lose the request; acting on it now would
                    // start a successor of a process that cannot serve yet.
                    self.deferred = true;
                    tracing::info!(signal = %s, "upgrade signal before this generation reported ready: the upgrade starts once it is ready");
                }
            }
            (s, Phase::Serving) if s == upgrade_sig => {
                let _ = self.upgrade("signal");
            }
            (s, Phase::Draining(_)) if s == upgrade_sig => {
                tracing::warn!(signal = %s, "upgrade signal ignored: this generation has handed over and is draining");
            }
            (s, Phase::Serving) => self.stop(s),
            (s, Phase::Draining(ShutdownReason::Stop { signal })) if s as i32 == signal => {
                tracing::warn!(signal = %s, "second stop signal while draining: exiting now");
                if let Some(p) = &self.ctx.config.pid_file {
                    pidfile::remove_if_ours(p, std::process::id());
                }
                crate::socket::remove_owned_paths();
                std::process::exit(1);
            }
            (s, Phase::Draining(reason)) => {
                // After an upgrade too: the operator (or the service manager stopping the
                // whole service) wants this process gone, so the successor's death from now on
                // is no reason to start again.
                self.stop_requested = true;
                tracing::info!(signal = %s, ?reason, "stop signal while draining: already stopping, and no rollback from now on");
            }
        }
    }

    fn stop(&mut self, sig: Signal) {
        let reason = ShutdownReason::Stop { signal: sig as i32 };
        // The deadline is armed before anything that can block (a log line to a stderr nobody
        // reads, a notify socket): the stop must happen on time whatever else hangs.
        drain::start(
            self.ctx.config.drain_timeout,
            reason,
            self.ctx.config.pid_file.clone(),
        );
        tracing::info!(signal = %sig, drain_timeout = ?self.ctx.config.drain_timeout, "stopping: draining in-flight work");
        self.phase = Phase::Draining(reason);
        notify::stopping();
        crate::keeper::stopping();
        // The previous generation, if it is still in its probation, must not roll back.
        crate::ready::stopping();
        self.ctx.shutdown.trigger(reason);
    }

    /// Reaps the new generation if it died while we drain. Its crash (killed by a signal or
    /// a non-zero exit) is rolled back only while it is in its probation, and only if it had
    /// neither handed over in turn nor been told to stop, nor this process been told to stop:
    /// this process still holds the listening sockets and starts its own code again. What the
    /// successor did, it says itself on its readiness pipe ([`HANDED_ON`], [`STOPPING`]).
    fn watch_successor(&mut self, pid: u32) {
        let probation = self.ctx.config.probation.min(self.ctx.config.drain_timeout);
        let in_probation = self.handed_over_at.is_some_and(|t| t.elapsed() < probation);
        match waitpid(Pid::from_raw(pid as i32), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => {
                if !in_probation {
                    self.settle(
                        "the new generation is past its probation: no rollback from now on",
                    );
                } else if let Some(why) = self.no_rollback_because() {
                    self.settle(why);
                }
            }
            Err(_) => self.settle("the new generation is not a child of this process any more"),
            Ok(status) => {
                // Whatever it wrote before it exited is still in the pipe.
                if let Some(s) = &mut self.successor {
                    s.read();
                }
                let crashed = !matches!(status, WaitStatus::Exited(_, 0));
                let after = self.handed_over_at.map(|t| t.elapsed());
                let how = describe(status);
                if let Some(why) = self.no_rollback_because() {
                    tracing::info!(new_pid = pid, "the new generation exited ({how}): {why}");
                } else if !crashed {
                    tracing::error!(
                        new_pid = pid,
                        "the new generation exited while this one was draining ({how}): nothing is serving new connections"
                    );
                } else if !in_probation {
                    tracing::error!(
                        new_pid = pid,
                        after_ready = ?after,
                        ?probation,
                        "the new generation died ({how}) after its probation: not rolling back (its crash is not a failed upgrade); nothing is serving new connections"
                    );
                } else if self.rolled_back {
                    tracing::error!(
                        new_pid = pid,
                        "the rolled-back generation died ({how}): nothing is serving new connections"
                    );
                } else {
                    tracing::error!(
                        new_pid = pid,
                        after_ready = ?after,
                        "the new generation died ({how}) after taking over: rolling back to this generation's code"
                    );
                    self.rollback(pid);
                }
                self.settle("the new generation has exited");
            }
        }
    }

    /// Why the successor's exit, whatever its status, must not be rolled back; `None`: it may.
    fn no_rollback_because(&self) -> Option<&'static str> {
        let s = self.successor.as_ref();
        if s.is_some_and(|s| s.handed_on) {
            Some("it had handed over to a generation of its own, which serves")
        } else if s.is_some_and(|s| s.stopping) {
            Some("it was told to stop: not rolling back")
        } else if self.stop_requested {
            Some("this generation was told to stop: not rolling back")
        } else {
            None
        }
    }

    /// From now on this process starts nothing again: `main` may return, and hotexec's copies
    /// of the listeners are closed, so that if the successor dies later new clients are refused
    /// at once (and retry elsewhere) instead of queueing on a socket nobody will accept from.
    fn settle(&mut self, why: &str) {
        if !self.ctx.settled.swap(true, Ordering::SeqCst) {
            let closed = self.ctx.close_listeners();
            tracing::info!(
                closed,
                "{why}; hotexec's copies of the listeners are closed"
            );
        }
    }

    /// Starts this process's own image (`/proc/self/exe` is the running inode even after the
    /// file on disk was replaced) as a new generation with the same sockets.
    fn rollback(&mut self, failed: u32) {
        self.rolled_back = true;
        let span = tracing::info_span!(
            "rollback",
            old_pid = std::process::id(),
            failed_pid = failed,
            new_pid = tracing::field::Empty
        );
        let _enter = span.enter();
        let started = Instant::now();
        // Our own image reports on the pipe: no private notify socket.
        let child = match self.spawn_next(std::path::Path::new("/proc/self/exe"), None) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!("rollback failed: {e}; nothing is serving new connections");
                return;
            }
        };
        let pid = child.pid;
        span.record("new_pid", pid.as_raw());
        self.ctx.pending.store(pid.as_raw(), Ordering::SeqCst);
        let event = self.wait_ready(
            &child.ready_r,
            None,
            pid,
            started + self.ctx.config.ready_timeout,
        );
        self.ctx.pending.store(0, Ordering::SeqCst);
        match event {
            Event::Ready => {
                // Its MAINPID is only accepted under NotifyAccess=all: this process stopped being
                // the main pid at the hand-over, and systemd has seen that main pid die.
                self.took_over(pid.as_raw() as u32, child.ready_r);
                tracing::warn!(
                    elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
                    "rolled back: a new process running this generation's code serves again"
                );
            }
            other => {
                let _ = kill(pid, Signal::SIGKILL);
                let _ = waitpid(pid, None);
                let why = match other {
                    Event::Stop(sig) => format!("stop signal {sig} during the rollback"),
                    Event::Timeout => "not ready within ready_timeout".into(),
                    _ => "it exited before it was ready".into(),
                };
                tracing::error!("rollback failed ({why}): nothing is serving new connections");
            }
        }
    }

    /// One upgrade, start to finish. The old generation keeps accepting throughout; it only
    /// stops once the new one has reported ready.
    fn upgrade(&mut self, trigger: &'static str) -> Result<u32, UpgradeError> {
        let old_pid = std::process::id();
        let span =
            tracing::info_span!("upgrade", old_pid, new_pid = tracing::field::Empty, trigger);
        let _enter = span.enter();
        let started = Instant::now();
        crate::exe::log_upgrade_target(&self.ctx.exe);
        notify::reloading();
        crate::keeper::reloading();
        // A new binary that is not built on hotexec reports ready with sd_notify on this socket.
        let notify_sock = notify::ChildSocket::bind()
            .inspect_err(|e| tracing::warn!("no notify socket for the new generation ({e}): only the readiness pipe will count"))
            .ok();
        let child = match self.spawn_next(&self.ctx.exe, notify_sock.as_ref()) {
            Ok(c) => c,
            Err(e) => {
                let err = match e
                    .get_ref()
                    .and_then(|i| i.downcast_ref::<crate::limits::LimitError>())
                {
                    Some(limit) => UpgradeError::Limit(limit.to_string()),
                    None => UpgradeError::Spawn(e.to_string()),
                };
                tracing::error!("upgrade failed: {err}; still serving");
                notify::upgrade_failed();
                crate::keeper::upgrade_failed();
                return Err(err);
            }
        };
        let pid = child.pid;
        span.record("new_pid", pid.as_raw());
        self.ctx.pending.store(pid.as_raw(), Ordering::SeqCst);
        let deadline = started + self.ctx.config.ready_timeout;
        let event = self.wait_ready(&child.ready_r, notify_sock.as_ref(), pid, deadline);
        drop(notify_sock);
        let result = match event {
            Event::Ready => {
                self.ctx.pending.store(0, Ordering::SeqCst);
                let new_pid = pid.as_raw() as u32;
                let reason = self.took_over(new_pid, child.ready_r);
                self.ctx.shutdown.trigger(reason);
                drain::start(self.ctx.config.drain_timeout, reason, None);
                tracing::info!(
                    elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
                    drain_timeout = ?self.ctx.config.drain_timeout,
                    "upgrade: new generation is ready; this one stops accepting and drains"
                );
                return Ok(new_pid);
            }
            Event::ExecFailed(errno) => {
                let _ = waitpid(pid, None);
                Err(UpgradeError::Exec {
                    path: self.ctx.exe.clone(),
                    errno,
                })
            }
            Event::Eof => {
                // The child closed its end: it is exiting (or closed the fd and went on, which
                // is a failure too). Give it until the deadline to be reaped, then kill it.
                let status = reap_by(
                    pid,
                    deadline.max(Instant::now() + Duration::from_millis(200)),
                );
                Err(UpgradeError::ExitedBeforeReady {
                    pid: pid.as_raw() as u32,
                    status,
                })
            }
            Event::Timeout => {
                let _ = kill(pid, Signal::SIGKILL);
                let _ = waitpid(pid, None);
                Err(UpgradeError::ReadyTimeout {
                    pid: pid.as_raw() as u32,
                    timeout: self.ctx.config.ready_timeout,
                })
            }
            Event::Stop(sig) => {
                let _ = kill(pid, Signal::SIGKILL);
                let _ = waitpid(pid, None);
                tracing::warn!(signal = %sig, "stop signal during the upgrade: new process killed, stopping");
                self.ctx.pending.store(0, Ordering::SeqCst);
                self.stop(sig);
                return Err(UpgradeError::Aborted);
            }
        };
        self.ctx.pending.store(0, Ordering::SeqCst);
        if let Err(e) = &result {
            tracing::error!("upgrade failed: {e}; this generation keeps serving");
            notify::upgrade_failed();
            crate::keeper::upgrade_failed();
        }
        result
    }

    /// Forks and executes `exe` as the next generation, with every listener, the keeper
    /// channel if any, and `notify_sock` as its `NOTIFY_SOCKET`.
    fn spawn_next(
        &self,
        exe: &std::path::Path,
        notify_sock: Option<&notify::ChildSocket>,
    ) -> std::io::Result<spawn::Spawned> {
        let sockets = self.ctx.sockets.lock().unwrap_or_else(|p| p.into_inner());
        let fds: Vec<BorrowedFd<'_>> = sockets.iter().map(|(_, fd)| fd.as_fd()).collect();
        let names: Vec<&str> = sockets.iter().map(|(n, _)| n.as_str()).collect();
        let mut env = Self::child_env(notify_sock);
        // Which of them a service manager passed: the next generation must keep adopting those
        // whatever it declares (see activation.rs). `names[i]` becomes fd 3 + i.
        let activated: Vec<String> = (protocol::FDS_START..)
            .zip(&names)
            .filter(|(_, n)| crate::activation::from_manager(n))
            .map(|(fd, _)| fd.to_string())
            .collect();
        env.push((protocol::ACTIVATED_FDS, activated.join(":").into()));
        let handoff = crate::handoff::channel_for_child()?;
        let extra = spawn::Extra {
            keeper: crate::keeper::channel(),
            handoff: handoff.as_ref().map(|(_, theirs)| theirs.as_fd()),
            new_group: false,
            upgrade_signal: Some(self.ctx.config.upgrade_signal),
        };
        let spawned = spawn::spawn(exe, &self.ctx.argv, &fds, &names, &env, extra)?;
        if let Some((ours, _)) = handoff {
            crate::handoff::spawned(spawned.pid.as_raw() as u32, ours);
        }
        Ok(spawned)
    }

    /// What follows a generation's readiness, for an upgrade and a rollback alike: the pid file,
    /// the keeper and systemd learn the new pid, and this process is draining from now on.
    fn took_over(&mut self, new_pid: u32, ready_r: OwnedFd) -> ShutdownReason {
        if let Some(p) = &self.ctx.config.pid_file {
            if let Err(e) = pidfile::write(p, new_pid) {
                tracing::error!("{e}");
            }
        }
        crate::keeper::handed_over(new_pid);
        notify::handed_over(new_pid);
        crate::handoff::child_ready(new_pid, self.ctx.config.drain_timeout);
        // The generation before this one, if it is still in its probation, must not roll back.
        crate::ready::handed_on();
        self.successor = Some(Successor::new(ready_r));
        let reason = ShutdownReason::Upgrade { new_pid };
        self.phase = Phase::Draining(reason);
        self.handed_over_at = Some(Instant::now());
        reason
    }

    /// The variables a new generation gets on top of the protocol's fd variables: the private
    /// notify socket, the real one, and which Unix socket paths are hotexec's to remove.
    fn child_env(notify_sock: Option<&notify::ChildSocket>) -> Vec<(&'static str, OsString)> {
        let owned_names = crate::socket::owned_names();
        let mut env = vec![(
            protocol::OWNED_FDNAMES,
            OsString::from(owned_names.join(":")),
        )];
        if let Some(s) = notify_sock {
            env.push((protocol::NOTIFY_SOCKET, s.addr.clone()));
            env.push((protocol::UPSTREAM_NOTIFY_SOCKET, notify::upstream()));
        }
        env
    }

    /// Waits for the readiness byte (or `READY=1` from `pid` on the notify socket), handling
    /// signals and requests that arrive meanwhile.
    fn wait_ready(
        &mut self,
        ready_r: &OwnedFd,
        notify_sock: Option<&notify::ChildSocket>,
        pid: Pid,
        deadline: Instant,
    ) -> Event {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Event::Timeout;
            }
            let ms = u16::try_from(left.as_millis().max(1)).unwrap_or(u16::MAX);
            let mut fds = vec![
                PollFd::new(ready_r.as_fd(), PollFlags::POLLIN),
                PollFd::new(self.sig_r.as_fd(), PollFlags::POLLIN),
                PollFd::new(self.wake_r.as_fd(), PollFlags::POLLIN),
            ];
            if let Some(s) = notify_sock {
                fds.push(PollFd::new(s.as_fd(), PollFlags::POLLIN));
            }
            match poll(&mut fds, PollTimeout::from(ms)) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => tracing::error!("poll during upgrade failed: {}", e.desc()),
            }
            if fds.get(3).is_some_and(|f| f.any().unwrap_or(false))
                && notify_sock.is_some_and(|s| s.ready_from(pid.as_raw()))
            {
                tracing::info!("the new generation reported READY=1 on its notify socket");
                return Event::Ready;
            }
            if fds[0].any().unwrap_or(false) {
                // One byte: what follows `READY` (the successor's later news) stays in the pipe.
                let mut buf = [0u8; 1];
                match nix::unistd::read(ready_r, &mut buf) {
                    Ok(0) => return Event::Eof,
                    Ok(_) if buf[0] == READY => return Event::Ready,
                    Ok(_) if buf[0] == EXEC_FAILED => {
                        // The child wrote the errno with the byte, in one write.
                        let mut errno = [0u8; 4];
                        return match nix::unistd::read(ready_r, &mut errno) {
                            Ok(4) => Event::ExecFailed(i32::from_ne_bytes(errno)),
                            _ => Event::Eof,
                        };
                    }
                    Ok(_) => return Event::Eof,
                    Err(nix::errno::Errno::EINTR) => {}
                    Err(_) => return Event::Eof,
                }
            }
            for sig in signals::drain(&self.sig_r) {
                if sig == self.ctx.config.upgrade_signal {
                    tracing::warn!(signal = %sig, "upgrade signal ignored: an upgrade is already running");
                } else {
                    return Event::Stop(sig);
                }
            }
            self.drain_wake();
            for reply in self.take_requests() {
                let _ = reply.send(Err(UpgradeError::Busy("an upgrade is already running")));
            }
        }
    }
}

/// Waits for `pid` to exit until `deadline`, then kills it; returns how it ended.
fn reap_by(pid: Pid, deadline: Instant) -> String {
    loop {
        match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => {}
            Ok(status) => return describe(status),
            Err(e) => return format!("unknown ({})", e.desc()),
        }
        if Instant::now() >= deadline {
            let _ = kill(pid, Signal::SIGKILL);
            return match waitpid(pid, None) {
                Ok(s) => format!(
                    "closed its readiness pipe without reporting ready, then {}",
                    describe(s)
                ),
                Err(e) => format!("unknown ({})", e.desc()),
            };
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}
