//! The kernel's limits on what one upgrade can pass, checked before the new process is
//! started, so that an upgrade past them fails with a message that names the limit, the numbers
//! and what to do (instead of `execve`'s E2BIG, or EMFILE reported as an exec failure).
//!
//! - `MAX_ARG_STRLEN` (32 pages, 128 KiB with 4 KiB pages): the longest one argument or
//!   environment string may be. `LISTEN_FDNAMES` holds every listener's name, so about 2,000
//!   listeners with 64-character names pass it.
//! - `ARG_MAX`: what `execve` copies onto the new process's stack — the path it executes, argv
//!   and the environment, each with its NUL, and a pointer per argv and envp entry — at most a
//!   quarter of `RLIMIT_STACK`, never more than 6 MiB (three quarters of the kernel's 8 MiB
//!   `_STK_LIM`) and never less than 128 KiB. Computed here as the kernel does
//!   (`bprm_stack_limits` in `fs/exec.c`), not taken from `sysconf(_SC_ARG_MAX)`: C libraries
//!   differ (older glibc says a quarter of the stack limit, unbounded for an unlimited stack).
//! - `RLIMIT_NOFILE`: the new process is handed every listener (plus the readiness pipe and the
//!   keeper channel) at fds 3.., and to place them it first needs as many free fd numbers
//!   above them in this process's fd table (see `spawn.rs`), all below the soft limit.

use std::ffi::{CStr, CString};
use std::fmt;

use crate::handover::{self as protocol, FDS_START};

/// `MAX_ARG_STRLEN` of Linux: `32 * PAGE_SIZE`, the terminating NUL included.
pub(crate) fn max_arg_strlen() -> usize {
    // SAFETY: sysconf takes an integer and touches no memory.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    32 * usize::try_from(page)
        .ok()
        .filter(|p| *p > 0)
        .unwrap_or(4096)
}

/// Why an upgrade cannot pass what it must pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum LimitError {
    /// One environment string is longer than `MAX_ARG_STRLEN`.
    EnvString {
        /// The variable.
        var: String,
        /// Its length as `execve` counts it (`NAME=value` and the NUL).
        len: usize,
        /// The limit.
        max: usize,
        /// How many listener names it holds, for `LISTEN_FDNAMES`.
        names: Option<usize>,
    },
    /// The path, argv and the environment together are larger than `ARG_MAX`.
    ArgMax {
        /// Their size as `execve` counts it (strings, NULs and pointers).
        total: usize,
        /// The kernel's limit for this process's stack limit ([`arg_max`]).
        max: usize,
    },
    /// This process has no fd number left below `RLIMIT_NOFILE` for the upgrade itself.
    NoFile {
        /// The call that failed with EMFILE.
        call: &'static str,
        /// The soft limit.
        limit: u64,
    },
    /// The new process could not be handed its fds below `RLIMIT_NOFILE`.
    NoFileForChild {
        /// The soft limit.
        limit: u64,
        /// How many fds it must be handed.
        count: usize,
        /// How many listeners among them.
        listeners: usize,
        /// From which fd number the free ones are needed.
        from: i32,
        /// How many are free from there below the limit.
        free: usize,
    },
}

impl fmt::Display for LimitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const RAISE: &str = "raise it (LimitNOFILE= in the systemd unit, `ulimit -n` in the shell that starts the server, or `prlimit --nofile=N --pid PID` on the running one) and upgrade again";
        match self {
            LimitError::EnvString {
                var,
                len,
                max,
                names,
            } => {
                write!(
                    f,
                    "environment variable {var} would be {len} bytes, but Linux allows one environment string at most {max} bytes (MAX_ARG_STRLEN): execve would fail with E2BIG"
                )?;
                if let Some(n) = names {
                    write!(
                        f,
                        "; it holds the {n} listener names, colon-separated: use shorter listener names or fewer listeners"
                    )?;
                }
                Ok(())
            }
            LimitError::ArgMax { total, max } => {
                write!(
                    f,
                    "the path, arguments and environment of the new process would be {total} bytes, more than ARG_MAX ({max} bytes: a quarter of RLIMIT_STACK, at most {KERNEL_ARG_CAP} whatever the stack limit): execve would fail with E2BIG; "
                )?;
                if *max >= KERNEL_ARG_CAP {
                    write!(f, "shorten the environment (the kernel allows no more)")
                } else {
                    write!(
                        f,
                        "shorten the environment or raise the stack limit (`ulimit -s`, LimitSTACK=)"
                    )
                }
            }
            LimitError::NoFile { call, limit } => write!(
                f,
                "{call} failed with EMFILE: this process has no free fd number below its RLIMIT_NOFILE soft limit of {limit}; {RAISE}"
            ),
            LimitError::NoFileForChild {
                limit,
                count,
                listeners,
                from,
                free,
            } => write!(
                f,
                "RLIMIT_NOFILE is {limit}: the new generation must be handed {count} fds ({listeners} listeners, {}), and placing them needs {count} free fd numbers from {from} below that limit, but only {free} are free; {RAISE}",
                match count - listeners {
                    0 | 1 => "the readiness pipe".to_string(),
                    n => format!(
                        "the readiness pipe and {} of hotexec's channels: keeper, connection hand-off, generation link",
                        n - 1
                    ),
                }
            ),
        }
    }
}

impl std::error::Error for LimitError {}

/// The soft `RLIMIT_NOFILE` (`u64::MAX`: unlimited, or unknown).
pub(crate) fn nofile() -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into `r`, which lives for the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return u64::MAX;
    }
    r.rlim_cur
}

/// The most `execve` copies whatever the stack limit: three quarters of the kernel's `_STK_LIM`
/// (8 MiB).
pub(crate) const KERNEL_ARG_CAP: usize = 8 * 1024 * 1024 / 4 * 3;
/// The least it allows whatever the stack limit (the kernel's `ARG_MAX`, 32 pages of 4 KiB).
const KERNEL_ARG_FLOOR: usize = 128 * 1024;

/// What `execve` copies at most, for a soft `RLIMIT_STACK` of `stack` bytes
/// (`RLIM_INFINITY`: unlimited), as the kernel computes it (`bprm_stack_limits`).
pub(crate) fn arg_max_for(stack: u64) -> usize {
    let quarter = usize::try_from(stack / 4).unwrap_or(usize::MAX);
    quarter.clamp(KERNEL_ARG_FLOOR, KERNEL_ARG_CAP)
}

/// [`arg_max_for`] this process's soft `RLIMIT_STACK`, which the new process inherits.
pub(crate) fn arg_max() -> usize {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into `r`, which lives for the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_STACK, &mut r) } != 0 {
        // The kernel's default 8 MiB stack.
        return arg_max_for(8 * 1024 * 1024);
    }
    arg_max_for(r.rlim_cur)
}

/// `LISTEN_FDNAMES` for `names`, checked against `MAX_ARG_STRLEN` (also used at start, to warn
/// early that upgrades will fail).
pub(crate) fn check_fdnames(names: &[&str]) -> Result<(), LimitError> {
    let len = protocol::LISTEN_FDNAMES.len()
        + 1
        + names.iter().map(|n| n.len()).sum::<usize>()
        + names.len().saturating_sub(1)
        + 1;
    let max = max_arg_strlen();
    if len > max {
        return Err(LimitError::EnvString {
            var: protocol::LISTEN_FDNAMES.into(),
            len,
            max,
            names: Some(names.len()),
        });
    }
    Ok(())
}

/// Checks what `execve` will copy for the new process — the `path` it executes, the prepared
/// argv and environment (`NAME=value` strings), and `reserved` bytes for the `LISTEN_PID=` entry
/// still to be written — against `MAX_ARG_STRLEN` and [`arg_max`].
pub(crate) fn check_exec(
    path: &CStr,
    argv: &[CString],
    envp: &[CString],
    reserved: usize,
) -> Result<(), LimitError> {
    let max = max_arg_strlen();
    for s in argv.iter().chain(envp) {
        let len = s.as_bytes_with_nul().len();
        if len > max {
            let bytes = s.as_bytes();
            let var = bytes
                .iter()
                .position(|b| *b == b'=')
                .map(|i| String::from_utf8_lossy(&bytes[..i]).into_owned())
                .unwrap_or_else(|| "(an argument)".into());
            let names = (var == protocol::LISTEN_FDNAMES)
                .then(|| bytes.iter().filter(|b| **b == b':').count() + 1);
            return Err(LimitError::EnvString {
                var,
                len,
                max,
                names,
            });
        }
    }
    let arg_max = arg_max();
    let ptr = std::mem::size_of::<*const libc::c_char>();
    // The kernel copies the path first, then each string with its NUL, and counts a pointer for
    // each argv and envp entry (the terminating NULs, and the `LISTEN_PID` pointer, are counted
    // here too: a few bytes on the safe side).
    let total = path.to_bytes_with_nul().len()
        + argv
            .iter()
            .chain(envp)
            .map(|s| s.as_bytes_with_nul().len() + ptr)
            .sum::<usize>()
        + reserved
        + 3 * ptr;
    if total > arg_max {
        return Err(LimitError::ArgMax {
            total,
            max: arg_max,
        });
    }
    Ok(())
}

/// Checks that the child can place `count` fds (`listeners` of them listeners) at 3..: it
/// first duplicates each to a free number at or above `3 + count` (see `spawn.rs`), so that
/// many must be free there below the soft `RLIMIT_NOFILE`. The child inherits this fd table.
/// Probed with `fcntl(F_GETFD)`, which needs no fd of its own (near the limit there is none to
/// open `/proc/self/fd` with), one call per open fd above `3 + count` at most.
pub(crate) fn check_child_fds(count: usize, listeners: usize) -> Result<(), LimitError> {
    let limit = nofile();
    let from = FDS_START + count as i32;
    let mut free = 0;
    let mut fd = from as u64;
    while fd < limit && fd <= i32::MAX as u64 && free < count {
        // SAFETY: F_GETFD only reads the flags of a number; a closed one gives -1 (EBADF).
        if unsafe { libc::fcntl(fd as i32, libc::F_GETFD) } < 0 {
            free += 1;
        }
        fd += 1;
    }
    if free < count {
        return Err(LimitError::NoFileForChild {
            limit,
            count,
            listeners,
            from,
            free,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listener_names_past_max_arg_strlen_are_refused_with_the_numbers() {
        let long = "x".repeat(64);
        let names: Vec<&str> = vec![long.as_str(); 2100];
        let e = check_fdnames(&names).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("LISTEN_FDNAMES"), "{msg}");
        assert!(msg.contains("2100 listener names"), "{msg}");
        assert!(msg.contains(&max_arg_strlen().to_string()), "{msg}");
        assert!(check_fdnames(&names[..100]).is_ok());
        assert!(check_fdnames(&[]).is_ok());
    }

    #[test]
    fn an_environment_string_past_the_limit_is_named() {
        let big = CString::new(format!("BIG={}", "y".repeat(max_arg_strlen()))).unwrap();
        let e = check_exec(c"/app", &[], &[big], 0).unwrap_err();
        assert!(
            matches!(&e, LimitError::EnvString { var, names: None, .. } if var == "BIG"),
            "{e:?}"
        );
    }

    /// As the kernel computes it (fs/exec.c, `bprm_stack_limits`), whatever the C library's
    /// `sysconf(_SC_ARG_MAX)` says.
    #[test]
    fn arg_max_is_the_kernels() {
        let mib = 1024 * 1024;
        assert_eq!(arg_max_for(8 * mib), 2 * 1024 * 1024);
        assert_eq!(arg_max_for(24 * mib), 6 * 1024 * 1024);
        assert_eq!(arg_max_for(100 * mib), 6 * 1024 * 1024);
        assert_eq!(arg_max_for(libc::RLIM_INFINITY), 6 * 1024 * 1024);
        assert_eq!(arg_max_for(64 * 1024), 128 * 1024);
    }

    /// The path `execve` executes is copied too, and counted: an environment that fits with a
    /// short path does not with a 4,000-byte one.
    #[test]
    fn the_executed_path_counts() {
        let ptr = std::mem::size_of::<usize>();
        // Strings of 100,000 bytes (under MAX_ARG_STRLEN) up to 100 bytes under the limit,
        // counting a 3-byte path ("/a" and its NUL).
        let budget = arg_max() - 3 * ptr - 3 - 100;
        let mut env = Vec::new();
        let mut used = 0;
        while used < budget {
            let len = budget.saturating_sub(used + ptr + 1).min(100_000);
            if len == 0 {
                break;
            }
            env.push(CString::new(vec![b'e'; len]).unwrap());
            used += len + 1 + ptr;
        }
        assert!(check_exec(c"/a", &[], &env, 0).is_ok());
        let long = CString::new(format!("/{}", "p".repeat(4000))).unwrap();
        let e = check_exec(&long, &[], &env, 0);
        assert!(matches!(e, Err(LimitError::ArgMax { .. })), "{e:?}");
    }
}
