//! What `/proc` says about a process: its parent and state, its children and descendants, its
//! open fds, the fields of its status file. Seen from outside, as an operator's tools see it.

use std::path::Path;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::wait::wait_for;

/// (ppid, state) of a process.
pub fn stat(pid: u32) -> Option<(u32, char)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&s)
}

/// (ppid, state) from the text of a `/proc/<pid>/stat` file: the command name in parentheses
/// may hold spaces and parentheses itself, so the fields are counted from the last `)`.
fn parse_stat(s: &str) -> Option<(u32, char)> {
    let rest = &s[s.rfind(')')? + 2..];
    let mut it = rest.split_whitespace();
    let state = it.next()?.chars().next()?;
    let ppid = it.next()?.parse().ok()?;
    Some((ppid, state))
}

/// The parent of `pid`.
pub fn parent_of(pid: u32) -> Option<u32> {
    stat(pid).map(|(ppid, _)| ppid)
}

/// True while `pid` exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    matches!(stat(pid), Some((_, s)) if s != 'Z')
}

/// Every process's pid, from the numeric entries of /proc.
fn all_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Children of `pid` (any state), from /proc.
pub fn children_of(pid: u32) -> Vec<(u32, char)> {
    all_pids()
        .into_iter()
        .filter_map(|p| match stat(p) {
            Some((ppid, state)) if ppid == pid => Some((p, state)),
            _ => None,
        })
        .collect()
}

/// How many children `pid`'s main thread has: `/proc/<pid>/task/<pid>/children` when the
/// kernel has it (one read, cheap enough to poll while an upgrade is timed), else a scan.
pub fn child_count(pid: u32) -> usize {
    if let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")) {
        return s.split_whitespace().count();
    }
    children_of(pid).len()
}

/// Every descendant of `pid` (children, their children, …) with its state, from /proc.
pub fn descendants(pid: u32) -> Vec<(u32, char)> {
    let all: Vec<(u32, u32, char)> = all_pids()
        .into_iter()
        .filter_map(|p| stat(p).map(|(ppid, state)| (p, ppid, state)))
        .collect();
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

/// Live processes whose executable is a file under `dir` (also once replaced: `… (deleted)`).
pub fn running_from(dir: &Path) -> Vec<u32> {
    all_pids()
        .into_iter()
        .filter(|p| {
            std::fs::read_link(format!("/proc/{p}/exe")).is_ok_and(|exe| exe.starts_with(dir))
                && alive(*p)
        })
        .collect()
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

/// The value of `field` in `/proc/<pid>/status`, as written (`VmRSS` gives `1234 kB`).
pub fn status_text(pid: u32, field: &str) -> Option<String> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .map(|v| v.trim().to_string())
}

/// A numeric field of `/proc/<pid>/status` (`VmRSS` in kB, `Threads`, …).
pub fn status_field(pid: u32, field: &str) -> Option<u64> {
    status_text(pid, field)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Waits until `sig` is pending neither for the thread nor for the process `pid`: its handler
/// has taken it (for a process whose log says nothing of it).
pub fn wait_signal_handled(pid: u32, sig: Signal, timeout: Duration) {
    let bit = 1u64 << (sig as i32 - 1);
    let mask =
        |field: &str| -> Option<u64> { u64::from_str_radix(&status_text(pid, field)?, 16).ok() };
    wait_for(timeout, &format!("{sig} to be handled by {pid}"), || {
        ((mask("SigPnd")? | mask("ShdPnd")?) & bit == 0).then_some(())
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_from_the_last_parenthesis() {
        let line = "4242 (a (b) c) S 17 4242 4242 0 -1 4194560 120 0 0 0";
        assert_eq!(parse_stat(line), Some((17, 'S')));
        assert_eq!(parse_stat("4242 (x"), None);
    }

    #[test]
    fn this_process_is_seen_from_proc() {
        let me = std::process::id();
        assert!(alive(me));
        assert_eq!(parent_of(me), Some(std::os::unix::process::parent_id()));
        assert!(status_field(me, "Threads").is_some_and(|n| n >= 1));
        let f = std::fs::File::open("/proc/self/stat").unwrap();
        let n = std::os::fd::AsRawFd::as_raw_fd(&f);
        assert!(
            fd_targets(me)
                .iter()
                .any(|(m, t)| *m == n && t.ends_with("/stat"))
        );
    }
}
