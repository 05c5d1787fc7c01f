//! [`App`]: an example server under test, started from a copy of its binary on free ports, with
//! its pid file and log, upgraded by signal, and killed and reaped on drop with every process
//! it led to.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use crate::client::request_on;
use crate::logfile::{read_log, show_if_failing, strip_ansi};
use crate::net::free_addr;
use crate::outcome::Outcome;
use crate::procfs::{alive, descendants, running_from};
use crate::reap::{kill_and_reap, subreaper};
use crate::scratch::Scratch;
use crate::spawn::{copy_exe, example, spawn_retrying};
use crate::wait::wait_for;

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
        let addr = free_addr();
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
            let a = free_addr();
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
        // ETXTBSY: see `spawn_retrying`.
        let child = spawn_retrying(&mut cmd);
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
        let old = self.pid_in_file().expect("pid file");
        let new = self.signal_until_done(old, "the pid file to name a new pid", || {
            self.pid_in_file().filter(|p| *p != old)
        });
        self.track(new);
        (old, new)
    }

    /// Sends the upgrade signal to `target` (a generation, or the keeper that forwards it) and
    /// waits until `done` returns Some; sends it again each time the log shows that a
    /// generation ignored it because it had not reported ready yet (see [`App::upgrade`]).
    pub fn upgrade_via<T>(&self, target: u32, done: impl FnMut() -> Option<T>) -> T {
        self.signal_until_done(target, "the upgrade to start", done)
    }

    /// The upgrade signal to `target`, again after each "not ready yet" in the log, until
    /// `done` returns Some (within 10 s, or the test fails waiting for `what`).
    fn signal_until_done<T>(
        &self,
        target: u32,
        what: &str,
        mut done: impl FnMut() -> Option<T>,
    ) -> T {
        const NOT_READY: &str = "has not reported ready yet";
        let mut ignored = self.log_text().matches(NOT_READY).count();
        kill(Pid::from_raw(target as i32), Signal::SIGUSR2).unwrap();
        wait_for(Duration::from_secs(10), what, || {
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
            Some(s) => crate::spawn::script(&tmp, s),
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
        read_log(&self.log)
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
        show_if_failing("server log", &self.log);
    }
}
