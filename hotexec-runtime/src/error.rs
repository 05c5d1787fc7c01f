//! Why an upgrade did not happen.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// Why an upgrade failed. In every case the running generation keeps serving as if nothing had
/// happened, the pid file is unchanged, and a later upgrade can be tried.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum UpgradeError {
    /// Another upgrade is running, or this generation is already draining.
    Busy(&'static str),
    /// The runtime could not start the new process (pipe or fork failed).
    Spawn(String),
    /// What the upgrade must pass to the new process is past a kernel limit
    /// (`MAX_ARG_STRLEN`, `ARG_MAX`, `RLIMIT_NOFILE`); the message names it, the numbers and
    /// what to do. Nothing was started.
    Limit(String),
    /// `execve` of the binary failed (missing, not executable, bad format…).
    Exec {
        /// The binary.
        path: PathBuf,
        /// The `errno` of `execve`.
        errno: i32,
    },
    /// The new process exited before it reported ready.
    ExitedBeforeReady {
        /// Its pid.
        pid: u32,
        /// How it ended: `exit status 1`, `killed by SIGSEGV`, …
        status: String,
    },
    /// The new process did not report ready in time; it was killed and reaped.
    ReadyTimeout {
        /// Its pid.
        pid: u32,
        /// The `ready_timeout` in force.
        timeout: Duration,
    },
    /// A stop signal arrived during the upgrade: the new process was killed and reaped, and this
    /// generation is stopping.
    Aborted,
    /// `hotexec::upgrade()` was called outside a `#[hotexec::main]` program.
    NotRunning,
    /// The preflight refused the binary before anything was started: missing, not executable,
    /// built for another machine, or a hotexec binary that cannot be started by this
    /// generation's hand-over protocol (see `hotexec::preflight`).
    Refused(crate::preflight::PreflightError),
    /// The new generation was ready, but during its probation it served worse than this one
    /// did before the upgrade (or a check of the app's own failed): it was not committed, the
    /// old build serves again, and the new generation drains and stops.
    Unhealthy {
        /// Its pid.
        pid: u32,
        /// Why, with the numbers.
        reason: String,
    },
}

impl fmt::Display for UpgradeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UpgradeError::Busy(why) => write!(f, "upgrade refused: {why}"),
            UpgradeError::Spawn(e) => write!(f, "could not start the new process: {e}"),
            UpgradeError::Limit(e) => write!(f, "upgrade not started: {e}"),
            UpgradeError::Exec { path, errno } => write!(
                f,
                "could not execute {}: {}",
                path.display(),
                nix::errno::Errno::from_raw(*errno).desc()
            ),
            UpgradeError::ExitedBeforeReady { pid, status } => {
                write!(f, "new process {pid} exited before it was ready ({status})")
            }
            UpgradeError::ReadyTimeout { pid, timeout } => write!(
                f,
                "new process {pid} did not report ready within {timeout:?}; it was killed"
            ),
            UpgradeError::Aborted => write!(f, "upgrade aborted by a stop signal"),
            UpgradeError::NotRunning => {
                write!(f, "no hotexec runtime is running in this process")
            }
            UpgradeError::Refused(e) => write!(f, "nothing was started: {e}"),
            UpgradeError::Unhealthy { pid, reason } => write!(
                f,
                "new process {pid} was not committed, the old build serves again: {reason}"
            ),
        }
    }
}

impl std::error::Error for UpgradeError {}
