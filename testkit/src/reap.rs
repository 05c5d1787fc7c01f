//! Ending what a test started: the test process as a subreaper, and SIGKILL plus reaping,
//! bounded in time, for every pid it saw.

use std::process::Child;
use std::sync::Once;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use crate::procfs::{alive, children_of};
use crate::wait::wait_for;

/// Makes this process adopt orphaned descendants (PID 1 on these machines does not reap
/// them), so every generation an upgrade orphans is reaped here and its exit is seen.
pub fn subreaper() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: prctl(PR_SET_CHILD_SUBREAPER) takes integer arguments and touches no memory.
        let r = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        assert_eq!(
            r,
            0,
            "prctl(PR_SET_CHILD_SUBREAPER) failed: {}",
            std::io::Error::last_os_error()
        );
    });
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

/// Waits (up to `timeout`) until `generation` is the only child of `keeper`, and not a zombie:
/// every older generation has been reaped.
pub fn wait_only_child(keeper: u32, generation: u32, timeout: Duration) {
    wait_for(
        timeout,
        &format!("{generation} to be the keeper's only child"),
        || {
            let kids = children_of(keeper);
            (kids.len() == 1 && kids[0].0 == generation && kids[0].1 != 'Z').then_some(())
        },
    );
}
