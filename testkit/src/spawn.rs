//! Starting processes: the built examples, executables copied or written without this process
//! ever holding a write fd on them, a spawn that outlasts ETXTBSY, and [`Started`], a process
//! started any way the test likes and cleaned up like a server.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::logfile::{read_log, show_if_failing, strip_ansi};
use crate::procfs::{descendants, running_from};
use crate::reap::{kill_and_reap, subreaper};
use crate::wait::wait_for;

/// The directory cargo puts this package's binaries in (`target/<profile>`): the parent of
/// `deps/` (integration tests) or of `examples/` (the benchmarks).
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the path of this test binary");
    exe.parent()
        .and_then(Path::parent)
        .expect("a test binary lives two levels below the target dir")
        .to_path_buf()
}

/// Path of a built example. `cargo test` builds the examples before the integration tests;
/// `cargo test --test NAME` does not (it would run a stale example): `cargo build --examples`
/// first.
pub fn example(name: &str) -> PathBuf {
    let p = target_dir().join("examples").join(name);
    assert!(p.exists(), "example binary {} not built", p.display());
    p
}

/// Path of a built binary of the package (`hotexec`, the command; cargo builds it before the
/// integration tests).
pub fn bin(name: &str) -> PathBuf {
    let p = target_dir().join(name);
    assert!(p.exists(), "binary {} not built", p.display());
    p
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

/// Spawns `cmd`, retrying on ETXTBSY: a child forked meanwhile by another test thread may still
/// hold a freshly copied executable open for writing until it execs; that passes within
/// milliseconds.
pub fn spawn_retrying(cmd: &mut Command) -> Child {
    let mut tries = 0;
    loop {
        match cmd.spawn() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 200 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
            r => return r.unwrap(),
        }
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
        let child = spawn_retrying(&mut cmd);
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
        read_log(&self.log)
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
            let text = read_log(&log);
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
        show_if_failing("log", &self.log);
    }
}
