//! Test harness: real processes, real sockets on 127.0.0.1, real signals.
//!
//! Every wait has a deadline. The test process makes itself a child subreaper, so generations
//! orphaned by an upgrade are re-parented to it, and `App`'s `Drop` kills and reaps every pid it
//! has seen, also when the test fails.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

pub mod handoff;

/// Makes this test process adopt orphaned descendants (PID 1 here does not reap them).
pub fn subreaper() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: prctl(PR_SET_CHILD_SUBREAPER) takes integer arguments and touches no memory.
        let r = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        assert_eq!(r, 0, "prctl(PR_SET_CHILD_SUBREAPER) failed");
    });
}

/// Path of a built example (cargo builds examples before integration tests).
pub fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let p = dir.join("examples").join(name);
    assert!(p.exists(), "example binary {} not built", p.display());
    p
}

/// A free port on 127.0.0.1 (bound and released; the kernel does not hand it out again soon).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `f` every 5 ms until it returns Some or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `text` without the terminal colour codes (CSI sequences) tracing puts around fields.
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters… final byte (a letter).
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The path of a real tool from Debian's `systemd` package (`systemd-socket-activate`,
/// `systemd-analyze`), or: a skip with a message, and a failure under CI (`.ci/install`
/// installs it).
pub fn tool(name: &str) -> Option<String> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    });
    match found {
        Some(p) => Some(p.to_string_lossy().into_owned()),
        None if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("{name} is missing: .ci/install must install the `systemd` package")
        }
        None => {
            eprintln!("SKIPPED: {name} not found (apt-get install systemd)");
            None
        }
    }
}

/// Waits until `sig` is pending neither for the thread nor for the process `pid`: its handler
/// has taken it (for a process whose log says nothing of it).
pub fn wait_signal_handled(pid: u32, sig: Signal, timeout: Duration) {
    let bit = 1u64 << (sig as i32 - 1);
    let mask = |field: &str| -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let hex = status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?;
        u64::from_str_radix(hex.trim(), 16).ok()
    };
    wait_for(timeout, &format!("{sig} to be handled by {pid}"), || {
        ((mask("SigPnd")? | mask("ShdPnd")?) & bit == 0).then_some(())
    });
}

/// Waits (up to `timeout`) until `generation` is the only child of `keeper`, and not a zombie:
/// every older generation has been reaped.
pub fn wait_only_child(keeper: u32, generation: u32, timeout: Duration) {
    wait_for(
        timeout,
        &format!("{generation} to be the keeper's only child"),
        || {
            let kids = App::children_of(keeper);
            (kids.len() == 1 && kids[0].0 == generation && kids[0].1 != 'Z').then_some(())
        },
    );
}

/// Copies an executable with `cp` in a child process, so this (multi-threaded) test process never
/// holds a write fd on it: a sibling test thread forking meanwhile would inherit that fd until its
/// child execs, and any `execve` of the copy in that window fails with ETXTBSY — in a wrapper such
/// as `systemd-socket-activate` too, where no retry can help.
pub fn copy_exe(from: &Path, to: &Path) {
    let st = Command::new("cp")
        .arg("--")
        .arg(from)
        .arg(to)
        .stdin(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "cp {} {}: {st}", from.display(), to.display());
}

static SEQ: AtomicU64 = AtomicU64::new(0);

/// A scratch directory, removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        let p = std::env::temp_dir().join(format!(
            "hotexec-{tag}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Scratch(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A server under test: a copy of an example binary in a scratch dir (so the test can replace
/// it on disk), its pid file and its log.
pub struct App {
    pub dir: Scratch,
    pub bin: PathBuf,
    pub pid_file: PathBuf,
    pub log: PathBuf,
    pub addr: SocketAddr,
    pub first: Option<Child>,
    pub pids: Arc<Mutex<Vec<u32>>>,
    /// The other listeners, each on a free port of its own: (variable, address).
    pub extra: Vec<(String, SocketAddr)>,
    good_copy: PathBuf,
}

/// The listeners an example declares besides its main one (each gets a free port, so that
/// servers started in parallel never collide).
pub fn extra_listeners(example: &str) -> &'static [&'static str] {
    match example {
        "http" => &["HOTEXEC_LISTEN_ADMIN"],
        _ => &[],
    }
}

impl App {
    /// Copies example `name` and starts it on a free port with `env` on top of the defaults.
    pub fn start(name: &str, listener_var: &str, env: &[(&str, &str)]) -> App {
        App::launch(name, listener_var, extra_listeners(name), env, &[])
    }

    /// As [`App::start`], but runs `wrapper… <binary>` (e.g. `systemd-socket-activate -l
    /// {addr}`), with `{addr}` in the wrapper's arguments replaced by the chosen address.
    pub fn start_via(
        name: &str,
        listener_var: &str,
        env: &[(&str, &str)],
        wrapper: &[&str],
    ) -> App {
        App::launch(name, listener_var, extra_listeners(name), env, wrapper)
    }

    /// Starts example `name` under a socket activator, `wrapper… <binary>`, that listens on
    /// `addr`, an address the test chose (the declared addresses, if any, are set in `env`: the
    /// harness sets no `HOTEXEC_LISTEN_<NAME>` of its own but the example's other listeners).
    /// The server is the activator, which execs it in place. The first connection to `addr` is
    /// the one that makes the activator start the server: it carries a `GET /`, and what it got
    /// is returned. Nothing else is waited for: the server may have refused to start.
    pub fn start_activated(
        name: &str,
        addr: SocketAddr,
        env: &[(&str, &str)],
        wrapper: &[&str],
    ) -> (App, Outcome) {
        App::start_activated_with(name, addr, env, wrapper, |_| {
            // Refused until the activator listens; the first connection that succeeds is the
            // activating one.
            let stream = wait_for(Duration::from_secs(10), "the activator to listen", || {
                TcpStream::connect(addr).ok()
            });
            request_on(stream, "/", Duration::from_secs(10))
        })
    }

    /// As [`App::start_activated`], with `first` making the first contact (a datagram, …).
    pub fn start_activated_with<T>(
        name: &str,
        addr: SocketAddr,
        env: &[(&str, &str)],
        wrapper: &[&str],
        first: impl FnOnce(&App) -> T,
    ) -> (App, T) {
        let app = App::spawn(name, addr, None, extra_listeners(name), env, wrapper);
        let got = first(&app);
        (app, got)
    }

    /// The good build this app was started from (a replaced binary can exec it).
    pub fn good_binary(&self) -> &Path {
        &self.good_copy
    }

    /// As [`App::start`], with the variables of the other listeners given.
    pub fn start_with(
        name: &str,
        listener_var: &str,
        extra_vars: &[&str],
        env: &[(&str, &str)],
    ) -> App {
        App::launch(name, listener_var, extra_vars, env, &[])
    }

    fn launch(
        name: &str,
        listener_var: &str,
        extra_vars: &[&str],
        env: &[(&str, &str)],
        wrapper: &[&str],
    ) -> App {
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let app = App::spawn(name, addr, Some(listener_var), extra_vars, env, wrapper);
        if wrapper.is_empty() {
            app.wait_pid_file(app.first_pid());
        }
        wait_for(Duration::from_secs(10), "the server to accept", || {
            TcpStream::connect(app.addr).ok()
        });
        if !wrapper.is_empty() {
            // The server is the wrapper (exec'ed in place) or its child; a socket activator
            // starts it on the first connection, which the wait above made.
            let server = wait_for(Duration::from_secs(10), "the pid file", || {
                app.pid_in_file()
            });
            app.track(server);
        }
        app
    }

    /// Copies example `name` and spawns it (under `wrapper`, if any) with `listener_var` set to
    /// `addr` (if given), each of `extra_vars` set to a free port, and `env` on top.
    fn spawn(
        name: &str,
        addr: SocketAddr,
        listener_var: Option<&str>,
        extra_vars: &[&str],
        env: &[(&str, &str)],
        wrapper: &[&str],
    ) -> App {
        subreaper();
        let dir = Scratch::new(name);
        let bin = dir.0.join("app");
        let good_copy = dir.0.join("app.good");
        copy_exe(&example(name), &good_copy);
        copy_exe(&good_copy, &bin);
        let pid_file = dir.0.join("app.pid");
        let log = dir.0.join("app.log");
        let logf = std::fs::File::create(&log).unwrap();
        let mut cmd = match wrapper.split_first() {
            None => Command::new(&bin),
            Some((prog, args)) => {
                let mut c = Command::new(prog);
                c.args(args.iter().map(|a| a.replace("{addr}", &addr.to_string())))
                    .arg(&bin);
                c
            }
        };
        if let Some(var) = listener_var {
            cmd.env(var, addr.to_string());
        }
        cmd.env("HOTEXEC_PID_FILE", &pid_file)
            .env("HOTEXEC_READY_TIMEOUT", "5s")
            .env("HOTEXEC_DRAIN_TIMEOUT", "10s")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(logf.try_clone().unwrap())
            .stderr(logf);
        let mut extra = Vec::new();
        for var in extra_vars {
            let a: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            cmd.env(var, a.to_string());
            extra.push((var.to_string(), a));
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        // Whatever the test runner left open without CLOEXEC (a jobserver or a shell's pipe)
        // must not reach the server: tests check which fds it holds and passes on.
        // SAFETY: only fcntl(2), async-signal-safe, on plain integers.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                for fd in 3..1024 {
                    libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
                }
                Ok(())
            });
        }
        // ETXTBSY: a child forked meanwhile by another test thread may still hold the copy open
        // for writing until it execs; that passes within milliseconds.
        let mut tries = 0;
        let child = loop {
            match cmd.spawn() {
                Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 200 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(5));
                }
                r => break r.unwrap(),
            }
        };
        let pid = child.id();
        App {
            dir,
            bin,
            pid_file,
            log,
            addr,
            first: Some(child),
            pids: Arc::new(Mutex::new(vec![pid])),
            extra,
            good_copy,
        }
    }

    /// The address of the listener set by `var` (see [`extra_listeners`]).
    pub fn listener(&self, var: &str) -> SocketAddr {
        self.extra
            .iter()
            .find(|(v, _)| v == var)
            .unwrap_or_else(|| panic!("no listener {var}"))
            .1
    }

    pub fn first_pid(&self) -> u32 {
        self.pids.lock().unwrap()[0]
    }

    pub fn pid_in_file(&self) -> Option<u32> {
        std::fs::read_to_string(&self.pid_file)
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Waits until the pid file names `pid`, and remembers the pid for clean-up.
    pub fn wait_pid_file(&self, pid: u32) {
        wait_for(Duration::from_secs(10), "the pid file", || {
            (self.pid_in_file() == Some(pid)).then_some(())
        });
        self.track(pid);
    }

    pub fn track(&self, pid: u32) {
        let mut p = self.pids.lock().unwrap();
        if !p.contains(&pid) {
            p.push(pid);
        }
    }

    /// Sends the upgrade signal to the pid in the pid file; returns that pid.
    pub fn signal_upgrade(&self) -> u32 {
        let pid = self.pid_in_file().expect("pid file");
        kill(Pid::from_raw(pid as i32), Signal::SIGUSR2).unwrap();
        pid
    }

    /// Signals an upgrade and waits until the pid file names a new pid; returns (old, new).
    ///
    /// A generation ignores the upgrade signal until it has reported ready (shortly after
    /// `main` starts, which may be after the pid file is written and connections are accepted):
    /// each time the log shows the signal was ignored for that reason, it is sent again.
    pub fn upgrade(&self) -> (u32, u32) {
        const NOT_READY: &str = "has not reported ready yet";
        let mut ignored = self.log_text().matches(NOT_READY).count();
        let old = self.signal_upgrade();
        let new = wait_for(
            Duration::from_secs(10),
            "the pid file to name a new pid",
            || {
                if let Some(p) = self.pid_in_file().filter(|p| *p != old) {
                    return Some(p);
                }
                let now = self.log_text().matches(NOT_READY).count();
                if now > ignored {
                    ignored = now;
                    let _ = kill(Pid::from_raw(old as i32), Signal::SIGUSR2);
                }
                None
            },
        );
        self.track(new);
        (old, new)
    }

    /// Sends the upgrade signal to `target` (a generation, or the keeper that forwards it) and
    /// waits until `done` returns Some; sends it again each time the log shows that a
    /// generation ignored it because it had not reported ready yet (see [`App::upgrade`]).
    pub fn upgrade_via<T>(&self, target: u32, mut done: impl FnMut() -> Option<T>) -> T {
        const NOT_READY: &str = "has not reported ready yet";
        let mut ignored = self.log_text().matches(NOT_READY).count();
        kill(Pid::from_raw(target as i32), Signal::SIGUSR2).unwrap();
        wait_for(Duration::from_secs(10), "the upgrade to start", || {
            if let Some(v) = done() {
                return Some(v);
            }
            let now = self.log_text().matches(NOT_READY).count();
            if now > ignored {
                ignored = now;
                let _ = kill(Pid::from_raw(target as i32), Signal::SIGUSR2);
            }
            None
        })
    }

    /// Replaces the binary on disk atomically with `contents` (a script) or the good binary.
    pub fn replace_binary(&self, script: Option<&str>) {
        let tmp = self.dir.0.join("app.next");
        match script {
            Some(s) => self::script(&tmp, s),
            None => {
                copy_exe(&self.good_copy, &tmp);
            }
        }
        std::fs::rename(&tmp, &self.bin).unwrap();
    }

    /// Replaces the binary on disk atomically with a copy of `path` (another program).
    pub fn install_binary(&self, path: &Path) {
        let tmp = self.dir.0.join("app.next");
        copy_exe(path, &tmp);
        std::fs::rename(&tmp, &self.bin).unwrap();
    }

    pub fn remove_binary(&self) {
        std::fs::remove_file(&self.bin).unwrap();
    }

    /// Points the binary path at the `faulty` example with `FAULT=fault` (the next upgrade
    /// runs it).
    pub fn install_faulty(&self, fault: &str) {
        self.replace_binary(Some(&format!(
            "#!/bin/sh\nFAULT={fault} exec {} \"$@\"\n",
            example("faulty").display()
        )));
    }

    /// Waits (up to `timeout`) for the `n`-th "upgrade failed" line of the log and returns it.
    pub fn nth_failure(&self, n: usize, timeout: Duration) -> String {
        self.wait_log("upgrade failed", n, timeout);
        self.log_text()
            .lines()
            .filter(|l| l.contains("upgrade failed"))
            .nth(n - 1)
            .unwrap()
            .to_string()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The log without the terminal colour codes tracing puts around fields, so a needle can
    /// span a message and its fields (`listening listener=http`).
    pub fn plain_log(&self) -> String {
        strip_ansi(&self.log_text())
    }

    /// Waits until the log holds `needle` `count` times.
    pub fn wait_log(&self, needle: &str, count: usize, timeout: Duration) {
        wait_for(timeout, &format!("{count} x {needle:?} in the log"), || {
            (self.log_text().matches(needle).count() >= count).then_some(())
        });
    }

    /// Waits for `pid` to exit and reaps it (it is our child, or was re-parented to us).
    pub fn wait_exit(&mut self, pid: u32, timeout: Duration) -> WaitStatus {
        if let Some(c) = self.first.as_mut().filter(|c| c.id() == pid) {
            let deadline = Instant::now() + timeout;
            loop {
                if let Some(st) = c.try_wait().unwrap() {
                    self.first = None;
                    use std::os::unix::process::ExitStatusExt;
                    return match (st.code(), st.signal()) {
                        (Some(code), _) => WaitStatus::Exited(Pid::from_raw(pid as i32), code),
                        (None, Some(sig)) => WaitStatus::Signaled(
                            Pid::from_raw(pid as i32),
                            Signal::try_from(sig).unwrap(),
                            false,
                        ),
                        _ => unreachable!(),
                    };
                }
                assert!(
                    Instant::now() < deadline,
                    "pid {pid} did not exit within {timeout:?}"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        wait_for(timeout, &format!("pid {pid} to exit"), || {
            match waitpid(Pid::from_raw(pid as i32), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => None,
                Ok(st) => Some(st),
                // Not (yet) our child: its parent is alive. Or already gone.
                Err(nix::errno::Errno::ECHILD) => {
                    (!alive(pid)).then_some(WaitStatus::Exited(Pid::from_raw(pid as i32), -1))
                }
                Err(e) => panic!("waitpid({pid}): {e}"),
            }
        })
    }

    /// Children of `pid` (any state), from /proc.
    pub fn children_of(pid: u32) -> Vec<(u32, char)> {
        let mut out = Vec::new();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            if let Some((ppid, state)) = stat(p) {
                if ppid == pid {
                    out.push((p, state));
                }
            }
        }
        out
    }
}

/// (ppid, state) of a process.
pub fn stat(pid: u32) -> Option<(u32, char)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let mut it = rest.split_whitespace();
    let state = it.next()?.chars().next()?;
    let ppid = it.next()?.parse().ok()?;
    Some((ppid, state))
}

/// True while `pid` exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    matches!(stat(pid), Some((_, s)) if s != 'Z')
}

impl Drop for App {
    fn drop(&mut self) {
        // Every generation the test saw, plus any it never saw (started by an upgrade it did not
        // wait for, or by a rollback): whatever runs a binary from this test's scratch dir.
        let mut pids = self.pids.lock().unwrap().clone();
        for p in running_from(&self.dir.0) {
            if !pids.contains(&p) {
                pids.push(p);
            }
        }
        for p in pids.clone() {
            for (d, _) in descendants(p) {
                if !pids.contains(&d) {
                    pids.push(d);
                }
            }
        }
        let first = self.first.take();
        kill_and_reap(&pids, first);
        if std::thread::panicking() {
            eprintln!(
                "---- server log ({}) ----\n{}",
                self.log.display(),
                self.log_text()
            );
        }
    }
}

/// SIGKILLs `pids` (and `first`, a `Child` the test spawned), then reaps each: a child of this
/// process, or one re-parented to it as the subreaper once its parent died. Bounded: 5 s a pid.
pub fn kill_and_reap(pids: &[u32], first: Option<Child>) {
    for &p in pids {
        let _ = kill(Pid::from_raw(p as i32), Signal::SIGKILL);
    }
    if let Some(mut c) = first {
        let _ = c.kill();
        let _ = c.wait();
    }
    for &p in pids {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            match waitpid(Pid::from_raw(p as i32), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => std::thread::sleep(Duration::from_millis(5)),
                Err(nix::errno::Errno::ECHILD) if alive(p) => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                _ => break,
            }
        }
    }
}

/// Live processes whose executable is a file under `dir` (also once replaced: `… (deleted)`).
pub fn running_from(dir: &Path) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(exe) = std::fs::read_link(format!("/proc/{p}/exe")) {
            if exe.starts_with(dir) && alive(p) {
                out.push(p);
            }
        }
    }
    out
}

/// How one request ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok { pid: u32 },
    Refused,
    Reset,
    Eof,
    Timeout,
    BadStatus(String),
    Other(String),
}

/// One `GET path` on a new connection with `Connection: close`; a full response or a class of
/// failure. Nothing counts as ok without a 200 status line and a complete `pid=` body.
pub fn get(addr: SocketAddr, path: &str, timeout: Duration) -> Outcome {
    let s = match TcpStream::connect_timeout(&addr, timeout) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return Outcome::Refused,
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return Outcome::Timeout,
        // A handshake the kernel completed, then reset (the listener closed with it queued):
        // the same outcome as a reset after connect, not another kind of failure.
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Outcome::Reset,
        Err(e) => return Outcome::Other(format!("connect: {e}")),
    };
    request_on(s, path, timeout)
}

/// As [`get`], on a connection already made.
pub fn request_on(mut s: TcpStream, path: &str, timeout: Duration) -> Outcome {
    s.set_read_timeout(Some(timeout)).unwrap();
    s.set_write_timeout(Some(timeout)).unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    if let Err(e) = s.write_all(req.as_bytes()) {
        return classify(e);
    }
    let mut buf = Vec::new();
    if let Err(e) = s.read_to_end(&mut buf) {
        return classify(e);
    }
    let text = String::from_utf8_lossy(&buf);
    if text.is_empty() {
        return Outcome::Eof;
    }
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return Outcome::Eof;
    };
    if !head.starts_with("HTTP/1.1 200") {
        return Outcome::BadStatus(head.lines().next().unwrap_or("").to_string());
    }
    let len: Option<usize> = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().to_string())
        })
        .and_then(|v| v.parse().ok());
    if len.is_some_and(|n| n != body.len()) {
        return Outcome::Eof;
    }
    match body
        .strip_prefix("pid=")
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|p| p.parse().ok())
    {
        Some(pid) if body.ends_with('\n') => Outcome::Ok { pid },
        _ => Outcome::BadStatus(format!("body {body:?}")),
    }
}

/// Waits until a `GET /` on a new connection is answered by `pid`, within `timeout`.
///
/// The pid file names a new generation a moment before the old one's accept loop has seen
/// `Shutdown`: a connection made in between is (correctly) served by the old generation. So
/// "the new generation serves" is checked by polling, never by the very next request; every
/// answer must still be a complete response (any failure fails the test at once).
pub fn answered_by(addr: SocketAddr, pid: u32, timeout: Duration) {
    let mut others = Vec::new();
    wait_for(
        timeout,
        &format!("an answer from pid {pid}"),
        || match get(addr, "/", timeout) {
            Outcome::Ok { pid: p } if p == pid => Some(()),
            Outcome::Ok { pid: p } => {
                others.push(p);
                None
            }
            failed => panic!(
                "GET / failed while waiting for pid {pid}: {failed:?} (answered before by {others:?})"
            ),
        },
    )
}

fn classify(e: std::io::Error) -> Outcome {
    use std::io::ErrorKind::*;
    match e.kind() {
        ConnectionReset | ConnectionAborted | BrokenPipe => Outcome::Reset,
        WouldBlock | TimedOut => Outcome::Timeout,
        UnexpectedEof => Outcome::Eof,
        _ => Outcome::Other(e.to_string()),
    }
}

/// Clients hammering `GET /` with a new connection per request until stopped.
pub struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<Vec<(Instant, Outcome)>>>,
}

impl Load {
    pub fn start(addr: SocketAddr, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..clients)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut out = Vec::new();
                    // Bounded in count and time whatever happens.
                    let hard_stop = Instant::now() + Duration::from_secs(120);
                    while !stop.load(Ordering::Relaxed)
                        && out.len() < 1_000_000
                        && Instant::now() < hard_stop
                    {
                        let o = get(addr, "/", Duration::from_secs(5));
                        out.push((Instant::now(), o));
                    }
                    out
                })
            })
            .collect();
        Load { stop, threads }
    }

    /// Stops the clients and returns every request's (completion time, outcome), in time order.
    pub fn finish(self) -> Vec<(Instant, Outcome)> {
        self.stop.store(true, Ordering::Relaxed);
        let mut all: Vec<_> = self
            .threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        all.sort_by_key(|(t, _)| *t);
        all
    }
}

/// Prints the figures of a load run and asserts it made requests and every one succeeded.
pub fn assert_no_failures(what: &str, results: &[(Instant, Outcome)]) {
    let failed = failures(results);
    eprintln!(
        "{what}: {} requests, {} failed",
        results.len(),
        failed.len()
    );
    assert!(
        results.len() > 20,
        "{what}: only {} requests",
        results.len()
    );
    assert!(
        failed.is_empty(),
        "{what}: {} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(10)]
    );
}

/// Failed requests, for assertion messages.
pub fn failures(results: &[(Instant, Outcome)]) -> Vec<&Outcome> {
    results
        .iter()
        .map(|(_, o)| o)
        .filter(|o| !matches!(o, Outcome::Ok { .. }))
        .collect()
}

/// Writes `text` to an executable script at `path`, through a child process for the reason
/// given at [`copy_exe`].
pub fn script(path: &Path, text: &str) {
    let mut child = Command::new("/bin/sh")
        .arg("-c")
        .arg("cat > \"$0\" && chmod 755 \"$0\"")
        .arg(path)
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let st = child.wait().unwrap();
    assert!(st.success(), "writing {}: {st}", path.display());
}

/// The body of a `GET path` answered 200, or why there is none.
pub fn get_text(addr: SocketAddr, path: &str, timeout: Duration) -> Result<String, String> {
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(timeout)).unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    match text.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.1 200") => Ok(body.to_string()),
        _ => Err(format!("not a 200 response: {text:?}")),
    }
}

/// Every descendant of `pid` (children, their children, …) with its state, from /proc.
pub fn descendants(pid: u32) -> Vec<(u32, char)> {
    let mut all: Vec<(u32, u32, char)> = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Some((ppid, state)) = stat(p) {
            all.push((p, ppid, state));
        }
    }
    let mut out = Vec::new();
    let mut frontier = vec![pid];
    while let Some(parent) = frontier.pop() {
        for &(p, ppid, state) in &all {
            if ppid == parent && !out.iter().any(|(q, _)| *q == p) {
                out.push((p, state));
                frontier.push(p);
            }
        }
    }
    out
}

/// What each open fd of `pid` points to (`socket:[…]`, `pipe:[…]`, a path), by fd number.
pub fn fd_targets(pid: u32) -> Vec<(i32, String)> {
    let mut out: Vec<(i32, String)> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| {
                    let n = e.file_name().to_string_lossy().parse().ok()?;
                    let t = std::fs::read_link(e.path()).ok()?;
                    Some((n, t.to_string_lossy().into_owned()))
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// A numeric field of /proc/<pid>/status (`VmRSS` in kB, `Threads`, …).
pub fn status_field(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// A process started with a hand-crafted hand-over: chosen environment and chosen fds at chosen
/// numbers, as a hostile or broken parent could start it. Killed and reaped on drop.
pub struct Crafted {
    pub child: Child,
    pub log: PathBuf,
    pub status: Option<std::process::ExitStatus>,
    _dir: Scratch,
}

/// Who `LISTEN_PID` names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListenPid {
    /// The started binary itself (set by a shell that then `exec`s it, keeping its pid).
    Itself,
    /// A shell that runs the binary as its child: the variables are inherited by a process
    /// they were not meant for.
    Parent,
    /// Whatever `env` says (or unset).
    AsGiven,
}

impl Crafted {
    /// Starts `bin` with `env` (on a clean environment plus PATH) and `fds`: each `(n, fd)` is
    /// put at number `n` in the child; every other fd above 2 is closed at exec.
    pub fn start(
        bin: &Path,
        env: &[(&str, &str)],
        fds: Vec<(i32, std::os::fd::OwnedFd)>,
        pid: ListenPid,
    ) -> Crafted {
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
        use std::os::unix::process::CommandExt;
        subreaper();
        let dir = Scratch::new("crafted");
        let log = dir.0.join("out.log");
        let logf = std::fs::File::create(&log).unwrap();
        // Sources far above any target, so no dup2 below overwrites a source still needed.
        let moved: Vec<(i32, OwnedFd)> = fds
            .into_iter()
            .map(|(n, fd)| {
                // SAFETY: F_DUPFD_CLOEXEC returns a new fd that we own, or -1.
                let hi = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 200) };
                assert!(hi >= 200, "F_DUPFD_CLOEXEC failed");
                // SAFETY: `hi` was just created and is owned by nothing else.
                (n, unsafe { OwnedFd::from_raw_fd(hi) })
            })
            .collect();
        let plan: Vec<(i32, i32)> = moved.iter().map(|(n, fd)| (fd.as_raw_fd(), *n)).collect();
        let mut cmd = match pid {
            ListenPid::Itself => {
                let mut c = Command::new("/bin/sh");
                c.args(["-c", "export LISTEN_PID=$$; exec \"$0\" \"$@\""])
                    .arg(bin);
                c
            }
            ListenPid::Parent => {
                let mut c = Command::new("/bin/sh");
                c.args(["-c", "export LISTEN_PID=$$; \"$0\" \"$@\"; exit $?"])
                    .arg(bin);
                c
            }
            ListenPid::AsGiven => Command::new(bin),
        };
        cmd.env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(logf.try_clone().unwrap())
            .stderr(logf);
        for (k, v) in env {
            cmd.env(k, v);
        }
        // SAFETY: the closure makes only async-signal-safe calls (dup2, fcntl) on fds and
        // memory that exist before fork; it allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                for &(src, dst) in &plan {
                    // dup2 leaves the new fd without FD_CLOEXEC: it survives exec.
                    if libc::dup2(src, dst) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                // Anything else the test process has open (a jobserver pipe, …) stays behind.
                for fd in 3..1024 {
                    if !plan.iter().any(|&(_, dst)| dst == fd) {
                        libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
                    }
                }
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap();
        drop(moved);
        Crafted {
            child,
            log,
            status: None,
            _dir: dir,
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The log without the terminal colour codes tracing puts around fields, so a needle can
    /// span a message and its fields (`listening listener=http`).
    pub fn plain_log(&self) -> String {
        strip_ansi(&self.log_text())
    }

    /// Waits for the process to exit; its exit code (`None`: killed by a signal).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let st = wait_for(timeout, "the crafted process to exit", || {
            self.child.try_wait().unwrap()
        });
        self.status = Some(st);
        st.code()
    }

    /// Waits until the output holds `needle`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) {
        wait_for(timeout, &format!("{needle:?} in the output"), || {
            if self.log_text().contains(needle) {
                return Some(());
            }
            match stat(self.child.id()) {
                None | Some((_, 'Z')) => panic!("exited early; output:\n{}", self.log_text()),
                Some(_) => None,
            }
        });
    }
}

impl Drop for Crafted {
    fn drop(&mut self) {
        let orphans: Vec<u32> = descendants(self.child.id())
            .into_iter()
            .map(|(p, _)| p)
            .collect();
        for &p in &orphans {
            let _ = kill(Pid::from_raw(p as i32), Signal::SIGKILL);
        }
        if self.status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        // Re-parented to this subreaper once their parent died: reap them too.
        kill_and_reap(&orphans, None);
        if std::thread::panicking() {
            eprintln!(
                "---- output ({}) ----\n{}",
                self.log.display(),
                self.log_text()
            );
        }
    }
}

/// One `GET path` on the keep-alive connection in `conn` (connecting first when there is
/// none), classified as [`get`] does. The connection is kept for the next request unless the
/// server said `Connection: close` or anything failed. Returns the outcome and whether the
/// request went out on a reused connection.
pub fn get_keepalive(
    conn: &mut Option<std::io::BufReader<TcpStream>>,
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> (Outcome, bool) {
    use std::io::BufRead;
    let reused = conn.is_some();
    if conn.is_none() {
        let s = match TcpStream::connect_timeout(&addr, timeout) {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                return (Outcome::Refused, false);
            }
            Err(e) => return (classify(e), false),
        };
        s.set_read_timeout(Some(timeout)).unwrap();
        s.set_write_timeout(Some(timeout)).unwrap();
        s.set_nodelay(true).unwrap();
        *conn = Some(std::io::BufReader::new(s));
    }
    let mut result = || -> Result<(Outcome, bool), Outcome> {
        let r = conn.as_mut().unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n");
        r.get_mut().write_all(req.as_bytes()).map_err(classify)?;
        let mut status = String::new();
        if r.read_line(&mut status).map_err(classify)? == 0 {
            return Err(Outcome::Eof);
        }
        let (mut len, mut close) = (None, false);
        loop {
            let mut line = String::new();
            if r.read_line(&mut line).map_err(classify)? == 0 {
                return Err(Outcome::Eof);
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let lower = line.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                len = v.trim().parse::<usize>().ok();
            } else if let Some(v) = lower.strip_prefix("connection:") {
                close = v.trim() == "close";
            }
        }
        if !status.starts_with("HTTP/1.1 200") {
            return Err(Outcome::BadStatus(status.trim_end().to_string()));
        }
        let len = len.ok_or_else(|| Outcome::BadStatus("no content-length".into()))?;
        let mut body = vec![0; len];
        r.read_exact(&mut body).map_err(classify)?;
        let body = String::from_utf8_lossy(&body);
        let pid = body
            .strip_prefix("pid=")
            .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| Outcome::BadStatus(format!("body {body:?}")))?;
        Ok((Outcome::Ok { pid }, close))
    };
    match result() {
        Ok((outcome, close)) => {
            if close {
                *conn = None;
            }
            (outcome, reused)
        }
        Err(outcome) => {
            *conn = None;
            (outcome, reused)
        }
    }
}

/// Keep-alive clients hammering `GET /` until stopped: each reuses its connection and opens a
/// new one only after the server closed it (`Connection: close`) or a request failed.
pub struct KeepAliveLoad {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<Vec<(Instant, Outcome, bool)>>>,
}

impl KeepAliveLoad {
    pub fn start(addr: SocketAddr, clients: usize) -> KeepAliveLoad {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..clients)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut out = Vec::new();
                    let mut conn = None;
                    let hard_stop = Instant::now() + Duration::from_secs(120);
                    while !stop.load(Ordering::Relaxed)
                        && out.len() < 1_000_000
                        && Instant::now() < hard_stop
                    {
                        let (o, reused) =
                            get_keepalive(&mut conn, addr, "/", Duration::from_secs(5));
                        out.push((Instant::now(), o, reused));
                    }
                    out
                })
            })
            .collect();
        KeepAliveLoad { stop, threads }
    }

    /// Stops the clients; every request's (completion time, outcome, on a reused connection),
    /// in time order.
    pub fn finish(self) -> Vec<(Instant, Outcome, bool)> {
        self.stop.store(true, Ordering::Relaxed);
        let mut all: Vec<_> = self
            .threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        all.sort_by_key(|(t, _, _)| *t);
        all
    }
}

/// One `POST path` (empty body) on a new connection: (status code, body), or why it failed.
pub fn post(addr: SocketAddr, path: &str, timeout: Duration) -> Result<(u16, String), String> {
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(timeout)).unwrap();
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: test\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or(format!("no header end in {text:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or(format!("bad status line in {head:?}"))?;
    Ok((status, body.to_string()))
}

/// What a run of the `hotexec` command gave.
#[derive(Debug)]
pub struct CliRun {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the `hotexec` command with `args`; killed (and the test failed) after `limit`.
pub fn hotexec_cli(args: &[&str], limit: Duration) -> CliRun {
    let mut child = Command::new(env!("CARGO_BIN_EXE_hotexec"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("hotexec {args:?} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let mut stdout = String::new();
    let mut stderr = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    CliRun {
        code: status.code().unwrap_or(-1),
        stdout,
        stderr,
    }
}

/// A process the test started its own way (through a shell, `unshare`, as another user), with
/// the clean-up `App` gives: on drop, SIGKILL to it, to every descendant and to every process
/// running a binary from `dir`, all reaped; the log is printed when the test is failing.
pub struct Started {
    pub child: Option<Child>,
    pub dir: PathBuf,
    pub log: PathBuf,
}

impl Started {
    /// Spawns `cmd` (ETXTBSY retried, as in `App`) with stdout and stderr to `log`.
    pub fn spawn(mut cmd: Command, dir: &Path, log: &Path) -> Started {
        subreaper();
        let logf = std::fs::File::create(log).unwrap();
        cmd.stdout(logf.try_clone().unwrap()).stderr(logf);
        let mut tries = 0;
        let child = loop {
            match cmd.spawn() {
                Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 200 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(5));
                }
                r => break r.unwrap(),
            }
        };
        Started {
            child: Some(child),
            dir: dir.to_path_buf(),
            log: log.to_path_buf(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The log without the terminal colour codes tracing puts around fields, so a needle can
    /// span a message and its fields (`listening listener=http`).
    pub fn plain_log(&self) -> String {
        strip_ansi(&self.log_text())
    }

    /// Waits until the log holds `needle`; fails early (with the log) if the process exited.
    pub fn wait_log(&mut self, needle: &str, timeout: Duration) {
        let log = self.log.clone();
        let child = self.child.as_mut().expect("running");
        wait_for(timeout, &format!("{needle:?} in the log"), || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains(needle) {
                return Some(());
            }
            if let Some(st) = child.try_wait().unwrap() {
                panic!("exited ({st}) before {needle:?} was logged");
            }
            None
        });
    }

    /// Waits for the started process to exit; its status.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let child = self.child.as_mut().expect("running");
        let st = wait_for(timeout, "the started process to exit", || {
            child.try_wait().unwrap()
        });
        self.child = None;
        st
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        let mut pids: Vec<u32> = running_from(&self.dir);
        if let Some(c) = &self.child {
            for (p, _) in descendants(c.id()) {
                if !pids.contains(&p) {
                    pids.push(p);
                }
            }
        }
        kill_and_reap(&pids, self.child.take());
        if std::thread::panicking() {
            eprintln!(
                "---- log ({}) ----\n{}",
                self.log.display(),
                self.log_text()
            );
        }
    }
}

/// `HOTEXEC_COMPARE_PLAIN=1`: the serving tests run the same scenario against the example's plain
/// mode (the integration switched off) and print what it loses instead of asserting zero.
pub const COMPARE_PLAIN_VAR: &str = "HOTEXEC_COMPARE_PLAIN";

/// True when the serving tests run in comparison mode (see [`COMPARE_PLAIN_VAR`]).
pub fn compare_plain() -> bool {
    std::env::var_os(COMPARE_PLAIN_VAR).is_some_and(|v| v == "1")
}

/// Failures counted by class (`Reset: 3, Eof: 2`), for the figures a test prints.
pub fn by_class<'a>(failed: impl IntoIterator<Item = &'a Outcome>) -> String {
    let mut classes: std::collections::BTreeMap<String, usize> = Default::default();
    for o in failed {
        let name = format!("{o:?}");
        let name = name
            .split(|c: char| !c.is_alphanumeric())
            .next()
            .unwrap_or("")
            .to_string();
        *classes.entry(name).or_default() += 1;
    }
    if classes.is_empty() {
        return "none".into();
    }
    classes
        .iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Prints a load run's figures (`mode` says with or without the integration) and, unless in
/// comparison mode, asserts that it made at least `min` requests and that none failed.
pub fn verdict(what: &str, outcomes: &[&Outcome], min: usize) {
    let failed: Vec<&Outcome> = outcomes
        .iter()
        .copied()
        .filter(|o| !matches!(o, Outcome::Ok { .. }))
        .collect();
    let mode = if compare_plain() {
        "PLAIN (integration off)"
    } else {
        "with the integration"
    };
    eprintln!(
        "FIGURES {what} [{mode}]: {} requests, {} failed ({})",
        outcomes.len(),
        failed.len(),
        by_class(failed.iter().copied())
    );
    assert!(
        outcomes.len() >= min,
        "{what}: only {} requests (expected at least {min})",
        outcomes.len()
    );
    if compare_plain() {
        return;
    }
    assert!(
        failed.is_empty(),
        "{what}: {} of {} requests failed: {:?}",
        failed.len(),
        outcomes.len(),
        &failed[..failed.len().min(10)]
    );
}

/// A notify socket like systemd's: bound by the test, credentials passed with each datagram.
pub struct NotifySocket {
    pub sock: UnixDatagram,
    /// The value for `NOTIFY_SOCKET`.
    pub env: String,
}

impl NotifySocket {
    pub fn at_path(path: &Path) -> NotifySocket {
        let sock = UnixDatagram::bind(path).unwrap();
        Self::finish(sock, path.to_string_lossy().into_owned())
    }

    pub fn abstract_name(tag: &str) -> NotifySocket {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("hotexec-test-{tag}-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let sock = UnixDatagram::bind_addr(&addr).unwrap();
        Self::finish(sock, format!("@{name}"))
    }

    pub fn finish(sock: UnixDatagram, env: String) -> NotifySocket {
        nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::PassCred, &true).unwrap();
        sock.set_nonblocking(true).unwrap();
        NotifySocket { sock, env }
    }

    /// The next datagram and its sender's pid, waiting up to `timeout`.
    pub fn next(&self, timeout: Duration) -> Option<(String, u32)> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut buf = [0u8; 4096];
            let mut cmsg = nix::cmsg_space!(nix::sys::socket::UnixCredentials);
            let mut iov = [std::io::IoSliceMut::new(&mut buf)];
            match nix::sys::socket::recvmsg::<()>(
                std::os::fd::AsRawFd::as_raw_fd(&self.sock),
                &mut iov,
                Some(&mut cmsg),
                nix::sys::socket::MsgFlags::MSG_DONTWAIT,
            ) {
                Ok(msg) => {
                    let pid = msg
                        .cmsgs()
                        .unwrap()
                        .find_map(|c| match c {
                            nix::sys::socket::ControlMessageOwned::ScmCredentials(cr) => {
                                Some(cr.pid() as u32)
                            }
                            _ => None,
                        })
                        .expect("SO_PASSCRED gives every datagram its sender");
                    let n = msg.bytes;
                    return Some((String::from_utf8_lossy(&buf[..n]).into_owned(), pid));
                }
                Err(nix::errno::Errno::EAGAIN) => {
                    if Instant::now() > deadline {
                        return None;
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => panic!("recvmsg: {e}"),
            }
        }
    }

    pub fn expect(&self, what: &str) -> (String, u32) {
        self.next(Duration::from_secs(10))
            .unwrap_or_else(|| panic!("no sd_notify message: expected {what}"))
    }
}
