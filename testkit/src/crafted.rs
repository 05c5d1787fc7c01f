//! [`Crafted`]: a process started with a hand-made hand-over (chosen environment, chosen fds at
//! chosen numbers), as a hostile or broken parent could start it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::logfile::{read_log, show_if_failing, strip_ansi};
use crate::procfs::{descendants, stat};
use crate::reap::{kill_and_reap, subreaper};
use crate::scratch::Scratch;
use crate::wait::wait_for;

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
        read_log(&self.log)
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
        show_if_failing("output", &self.log);
    }
}
