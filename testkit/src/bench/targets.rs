//! Starting, upgrading and stopping the servers the `demo` and `bench` examples measure, and
//! knowing when each process exited. Every process started here is killed and reaped by
//! [`Target`]'s `Drop`; every wait has a deadline.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use super::load::GenerationOf;
use super::roles;
use crate::net::free_addr;
use crate::procfs::{alive, child_count, children_of};
use crate::scratch::Scratch;
use crate::wait::poll;

/// What is measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The `http` example: SIGUSR2 to the pid in the pid file.
    Hotexec,
    /// A second copy of the server binding the same port with `SO_REUSEPORT`, then SIGTERM to
    /// the old one.
    Naive,
    /// nginx's binary upgrade: USR2, then WINCH and QUIT to the old master.
    Nginx,
    /// The same server without hotexec, never upgraded: the ceiling.
    Plain,
    /// The `http` example, never upgraded: what hotexec costs on the request path.
    HotexecSteady,
    /// A hotexec server with this many listeners (the scale check), SIGUSR2.
    Many(usize),
    /// An axum app served with `hotexec::serve`, SIGUSR2.
    Axum,
    /// The same axum app served with plain `axum::serve(..).with_graceful_shutdown(..)`, SIGUSR2.
    AxumPlain,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Hotexec => "hotexec `http` example",
            Kind::Naive => "naive restart (SO_REUSEPORT + SIGTERM)",
            Kind::Nginx => "nginx binary upgrade (USR2, WINCH+QUIT)",
            Kind::Plain => "same server without hotexec, no upgrades",
            Kind::HotexecSteady => "hotexec `http` example, no upgrades",
            Kind::Many(_) => "hotexec, many listeners",
            Kind::Axum => "axum app + `hotexec::serve`",
            Kind::AxumPlain => "axum app + plain `axum::serve(..).with_graceful_shutdown(..)`",
        }
    }
    pub fn upgrades(self) -> bool {
        !matches!(self, Kind::Plain | Kind::HotexecSteady)
    }

    /// Which process a responding pid stands for: nginx's workers answer for their master.
    pub fn generation_of(self) -> GenerationOf {
        if self == Kind::Nginx {
            GenerationOf::Parent
        } else {
            GenerationOf::Pid
        }
    }
}

/// The nginx binary, `/usr/sbin/nginx` (nginx re-executes itself by `argv[0]`, so it must be
/// started with an absolute path).
pub const NGINX: &str = "/usr/sbin/nginx";

fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Watches pids and records when each exited (reaping those that are our children: with
/// [`subreaper`](crate::reap::subreaper), every generation ends up ours).
pub struct Tracker {
    exits: Mutex<HashMap<u32, Instant>>,
    watched: Mutex<Vec<u32>>,
    stop: AtomicBool,
}

impl Tracker {
    pub fn start() -> Arc<Tracker> {
        let t = Arc::new(Tracker {
            exits: Mutex::new(HashMap::new()),
            watched: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        });
        let t2 = t.clone();
        std::thread::spawn(move || {
            while !t2.stop.load(Ordering::Relaxed) {
                let watched = t2.watched.lock().unwrap().clone();
                for pid in watched {
                    let gone = match waitpid(Pid::from_raw(pid as i32), Some(WaitPidFlag::WNOHANG))
                    {
                        Ok(WaitStatus::StillAlive) => false,
                        Ok(_) => true,
                        // Not our child (yet): its parent is alive; or already gone.
                        Err(_) => !alive(pid),
                    };
                    if gone {
                        t2.exits.lock().unwrap().insert(pid, Instant::now());
                        t2.watched.lock().unwrap().retain(|p| *p != pid);
                    }
                }
                std::thread::sleep(Duration::from_micros(500));
            }
        });
        t
    }

    pub fn watch(&self, pid: u32) {
        self.watched.lock().unwrap().push(pid);
    }

    pub fn exited(&self, pid: u32) -> Option<Instant> {
        self.exits.lock().unwrap().get(&pid).copied()
    }

    /// Waits up to `timeout` for `pid` to exit.
    pub fn wait_exit(&self, pid: u32, timeout: Duration) -> Option<Instant> {
        poll(timeout, Duration::from_millis(1), "exit", || {
            self.exited(pid)
        })
        .ok()
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// One upgrade as the driver saw it.
#[derive(Clone, Copy, Debug)]
pub struct Upgrade {
    pub old: u32,
    pub new: u32,
    /// The signal (for the naive restart: the start of the second copy).
    pub signal: Instant,
    /// When the pid file named the new generation.
    pub handed_over: Instant,
}

/// A running server of one [`Kind`].
pub struct Target {
    pub kind: Kind,
    pub addr: SocketAddr,
    pub current: u32,
    dir: Scratch,
    exe: PathBuf,
    tracker: Arc<Tracker>,
    /// Every pid started or seen, killed on drop.
    pids: Vec<u32>,
    generation: usize,
    extra_env: Vec<(String, String)>,
}

impl Target {
    /// Starts a server of `kind` on a free port; returns once it accepts.
    pub fn start(
        kind: Kind,
        tracker: Arc<Tracker>,
        extra_env: &[(&str, &str)],
    ) -> std::io::Result<Target> {
        let dir = Scratch::new("target");
        let addr = free_addr();
        let mut t = Target {
            kind,
            addr,
            current: 0,
            dir,
            exe: std::env::current_exe()?,
            tracker,
            pids: Vec::new(),
            generation: 0,
            extra_env: extra_env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        t.current = match kind {
            Kind::Hotexec | Kind::HotexecSteady => {
                let mut cmd = t.command("hotexec");
                cmd.env("HOTEXEC_LISTEN_HTTP", addr.to_string())
                    .env("HOTEXEC_PID_FILE", t.pid_file());
                let pid = t.spawn(cmd)?;
                t.wait_pid_file(&t.pid_file(), |p| p == pid)?
            }
            Kind::Axum | Kind::AxumPlain => {
                let plain = if kind == Kind::Axum { "0" } else { "1" };
                let mut cmd = t.command("axum");
                cmd.env(roles::AXUM_PLAIN_VAR, plain)
                    .env("HOTEXEC_LISTEN_HTTP", addr.to_string())
                    .env("HOTEXEC_PID_FILE", t.pid_file());
                let pid = t.spawn(cmd)?;
                t.wait_pid_file(&t.pid_file(), |p| p == pid)?
            }
            Kind::Naive | Kind::Plain => t.spawn_plain()?.0,
            Kind::Many(n) => {
                let ports = t.dir.0.join("ports");
                let mut cmd = t.command("many");
                cmd.env(roles::MANY_COUNT_VAR, n.to_string())
                    .env(roles::MANY_PORTS_VAR, &ports)
                    .env("HOTEXEC_PID_FILE", t.pid_file());
                let pid = t.spawn(cmd)?;
                let pid = t.wait_pid_file(&t.pid_file(), |p| p == pid)?;
                let last: u16 = poll(
                    Duration::from_secs(10),
                    Duration::from_millis(5),
                    "the ports file",
                    || {
                        std::fs::read_to_string(&ports)
                            .ok()?
                            .split_whitespace()
                            .nth(1)?
                            .parse()
                            .ok()
                    },
                )?;
                t.addr.set_port(last);
                pid
            }
            Kind::Nginx => {
                let conf = t.dir.0.join("nginx.conf");
                std::fs::write(&conf, nginx_conf(&t.dir.0, addr))?;
                let mut cmd = Command::new(NGINX);
                cmd.arg("-p").arg(&t.dir.0).arg("-c").arg(&conf);
                let log = std::fs::File::create(t.dir.0.join("stderr.log"))?;
                cmd.stdin(Stdio::null())
                    .stdout(log.try_clone()?)
                    .stderr(log);
                // Daemonized: the master is the pid in the pid file, re-parented to this
                // process (a subreaper). nginx accepts USR2 only once its parent changed, which
                // is why it must not run with `daemon off` here.
                let foreground = cmd.spawn()?.id();
                t.own(foreground);
                let pid = t.wait_pid_file(&t.pid_file(), |_| true)?;
                t.own(pid);
                pid
            }
        };
        let addr = t.addr;
        poll(
            Duration::from_secs(10),
            Duration::from_millis(5),
            "the server to accept",
            || TcpStream::connect(addr).ok(),
        )?;
        Ok(t)
    }

    fn pid_file(&self) -> PathBuf {
        self.dir.0.join(match self.kind {
            Kind::Nginx => "nginx.pid",
            _ => "server.pid",
        })
    }

    fn command(&self, role: &str) -> Command {
        let mut cmd = Command::new(&self.exe);
        cmd.env(roles::ROLE_VAR, role)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null());
        for (k, v) in &self.extra_env {
            cmd.env(k, v);
        }
        cmd
    }

    fn own(&mut self, pid: u32) {
        if !self.pids.contains(&pid) {
            self.pids.push(pid);
            self.tracker.watch(pid);
        }
    }

    fn spawn(&mut self, mut cmd: Command) -> std::io::Result<u32> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.0.join("server.log"))?;
        cmd.stdout(log.try_clone()?).stderr(log);
        // The Child handle is dropped without waiting: the tracker reaps.
        let pid = cmd.spawn()?.id();
        self.own(pid);
        Ok(pid)
    }

    /// Starts a copy of the plain server; returns (pid, when it was started).
    fn spawn_plain(&mut self) -> std::io::Result<(u32, Instant)> {
        self.generation += 1;
        let pid_file = self.dir.0.join(format!("plain.{}.pid", self.generation));
        let role = if self.kind == Kind::Naive {
            "reuseport"
        } else {
            "plain"
        };
        let mut cmd = self.command(role);
        cmd.env(roles::ADDR_VAR, self.addr.to_string())
            .env(roles::PID_FILE_VAR, &pid_file);
        let started = Instant::now();
        let pid = self.spawn(cmd)?;
        self.wait_pid_file(&pid_file, |p| p == pid)?;
        Ok((pid, started))
    }

    fn wait_pid_file(&self, path: &Path, ok: impl Fn(u32) -> bool) -> std::io::Result<u32> {
        poll(
            Duration::from_secs(10),
            Duration::from_micros(200),
            &format!("the pid file {}", path.display()),
            || read_pid(path).filter(|p| ok(*p)),
        )
    }

    /// Performs one upgrade; returns once the new generation serves (the old one may still be
    /// draining).
    pub fn upgrade(&mut self) -> std::io::Result<Upgrade> {
        let old = self.current;
        let (new, signal) = match self.kind {
            Kind::Plain | Kind::HotexecSteady => {
                return Err(std::io::Error::other("this target is never upgraded"));
            }
            Kind::Hotexec | Kind::Many(_) | Kind::Axum | Kind::AxumPlain => {
                let signal = Instant::now();
                kill(Pid::from_raw(old as i32), Signal::SIGUSR2)?;
                (self.wait_pid_file(&self.pid_file(), |p| p != old)?, signal)
            }
            Kind::Naive => {
                let (new, signal) = self.spawn_plain()?;
                (new, signal)
            }
            Kind::Nginx => {
                let signal = Instant::now();
                kill(Pid::from_raw(old as i32), Signal::SIGUSR2)?;
                let new = self.wait_pid_file(&self.pid_file(), |p| p != old)?;
                let workers = nginx_workers();
                poll(
                    Duration::from_secs(10),
                    Duration::from_micros(200),
                    "the new nginx master's workers",
                    || (child_count(new) >= workers).then_some(()),
                )?;
                (new, signal)
            }
        };
        let handed_over = Instant::now();
        self.own(new);
        match self.kind {
            Kind::Naive => kill(Pid::from_raw(old as i32), Signal::SIGTERM)?,
            Kind::Nginx => {
                kill(Pid::from_raw(old as i32), Signal::SIGWINCH)?;
                kill(Pid::from_raw(old as i32), Signal::SIGQUIT)?;
            }
            _ => {}
        }
        self.current = new;
        Ok(Upgrade {
            old,
            new,
            signal,
            handed_over,
        })
    }

    /// The server's log (stderr of every generation), for error reports.
    pub fn log_tail(&self) -> String {
        let name = if self.kind == Kind::Nginx {
            "error.log"
        } else {
            "server.log"
        };
        let text = std::fs::read_to_string(self.dir.0.join(name)).unwrap_or_default();
        let lines: Vec<_> = text.lines().rev().take(20).collect();
        lines.into_iter().rev().collect::<Vec<_>>().join("\n")
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        // nginx workers outlive a killed master: take them too.
        let workers: Vec<u32> = self
            .pids
            .iter()
            .flat_map(|&p| children_of(p))
            .map(|(p, _)| p)
            .collect();
        for p in workers {
            self.own(p);
        }
        for &p in &self.pids {
            let _ = kill(Pid::from_raw(p as i32), Signal::SIGKILL);
        }
        for &p in &self.pids {
            self.tracker.wait_exit(p, Duration::from_secs(5));
        }
    }
}

/// nginx workers per master: one per core, as hotexec's tokio runtime has one worker thread per
/// core.
pub fn nginx_workers() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
}

fn nginx_conf(dir: &Path, addr: SocketAddr) -> String {
    let d = dir.display();
    let workers = nginx_workers();
    format!(
        "daemon on;\nmaster_process on;\nuser root;\nworker_processes {workers};\n\
         pid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
         events {{ worker_connections 16384; }}\n\
         http {{\n  access_log off;\n  keepalive_requests 1000000;\n  keepalive_timeout 75s;\n\
         \x20 client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
         \x20 fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n\
         \x20 scgi_temp_path {d}/scgi;\n\
         \x20 server {{\n    listen {addr};\n    default_type text/plain;\n\
         \x20   location / {{ return 200 \"pid=$pid\\n\"; }}\n  }}\n}}\n"
    )
}

/// `nginx -v`, when nginx is installed.
pub fn nginx_version() -> Option<String> {
    if !Path::new(NGINX).exists() {
        return None;
    }
    let out = Command::new(NGINX).arg("-v").output().ok()?;
    Some(String::from_utf8_lossy(&out.stderr).trim().to_string())
}
