//! Starting the new generation: fork, put the listening fds at 3.. in the systemd convention,
//! and execve the binary. Everything that allocates happens before `fork`; the child only makes
//! async-signal-safe calls until `execve`.

use std::ffi::{CString, OsString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::fcntl::OFlag;
use nix::unistd::{ForkResult, Pid, fork};

use crate::protocol::{self, EXEC_FAILED, FDS_START};

/// A started child: its pid and the read end of its readiness pipe.
pub struct Spawned {
    /// Pid of the new generation.
    pub pid: Pid,
    /// Read end of the readiness pipe (CLOEXEC).
    pub ready_r: OwnedFd,
}

const PID_VAR: &[u8] = b"LISTEN_PID=";

/// What a new generation gets besides its listeners and its readiness pipe.
#[derive(Clone, Copy, Default)]
pub struct Extra<'a> {
    /// The keeper channel: passed as fd `3 + n + 1` (after the readiness pipe), named by
    /// `HOTEXEC_KEEPER_FD`.
    pub keeper: Option<BorrowedFd<'a>>,
    /// Start the child in a process group of its own (the keeper's first generation), so that
    /// signals sent to the keeper's group (Ctrl-C in a terminal, `kill -TERM -PGID`) reach only
    /// the keeper, which forwards them once.
    pub new_group: bool,
}

/// Forks and executes `exe` with `argv` and this process's environment plus the protocol
/// variables; `fds[i]` becomes fd `3 + i` in the child, named `names[i]`. `env` is set on top
/// (replacing a variable of the same name).
pub fn spawn(
    exe: &Path,
    argv: &[OsString],
    fds: &[BorrowedFd<'_>],
    names: &[&str],
    env: &[(&str, OsString)],
    extra: Extra<'_>,
) -> io::Result<Spawned> {
    let n = fds.len();
    let ready_target = FDS_START + n as RawFd;
    let (ready_r, ready_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)
        .map_err(|e| io::Error::other(format!("pipe2: {}", e.desc())))?;

    let cstr = |b: &[u8]| {
        CString::new(b).map_err(|_| io::Error::other("argument or environment with a NUL byte"))
    };
    let path = cstr(exe.as_os_str().as_bytes())?;
    let argv_c = argv
        .iter()
        .map(|a| cstr(a.as_bytes()))
        .collect::<io::Result<Vec<_>>>()?;
    // What the child gets on top of this environment (LISTEN_PID aside, written after fork);
    // any inherited variable of the same name, and every stale protocol variable, is left out.
    let mut ours: Vec<(&str, OsString)> = vec![
        (protocol::LISTEN_FDS, n.to_string().into()),
        (protocol::LISTEN_FDNAMES, names.join(":").into()),
        (protocol::READY_FD, ready_target.to_string().into()),
    ];
    if extra.keeper.is_some() {
        ours.push((protocol::KEEPER_FD, (ready_target + 1).to_string().into()));
    }
    ours.extend(env.iter().cloned());
    let var = |k: &[u8], v: &[u8]| cstr(&[k, b"=", v].concat());
    let mut envp_c = Vec::new();
    for (k, v) in std::env::vars_os() {
        let k = k.as_bytes();
        let replaced = protocol::ALL
            .iter()
            .chain([&protocol::KEEPER_FD])
            .chain(ours.iter().map(|(name, _)| name))
            .any(|p| k == p.as_bytes());
        if !replaced {
            envp_c.push(var(k, v.as_bytes())?);
        }
    }
    for (k, v) in &ours {
        envp_c.push(var(k.as_bytes(), v.as_bytes())?);
    }
    // LISTEN_PID must be the child's own pid, known only after fork: reserve room for it.
    let mut pid_var = PID_VAR.to_vec();
    pid_var.resize(PID_VAR.len() + 24, 0);

    let argv_p: Vec<*const libc::c_char> = argv_c
        .iter()
        .map(|c| c.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let mut envp_p: Vec<*const libc::c_char> = envp_c.iter().map(|c| c.as_ptr()).collect();
    envp_p.push(pid_var.as_ptr().cast());
    envp_p.push(std::ptr::null());

    let mut src: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    src.push(ready_w.as_raw_fd());
    src.extend(extra.keeper.map(|k| k.as_raw_fd()));
    let mut tmp: Vec<RawFd> = vec![-1; src.len()];

    // SAFETY: the child branch only calls `exec_child`, which makes async-signal-safe calls on
    // memory allocated above and never returns; the parent branch is ordinary code.
    match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            // SAFETY: we are the freshly forked child; every pointer refers to memory that was
            // allocated before fork and is not touched by any other thread here.
            unsafe {
                exec_child(
                    &path,
                    &argv_p,
                    &envp_p,
                    pid_var.as_mut_ptr(),
                    &src,
                    &mut tmp,
                    n,
                    extra.new_group,
                    ready_w.as_raw_fd(),
                )
            }
        }
        Ok(ForkResult::Parent { child }) => {
            drop(ready_w);
            Ok(Spawned {
                pid: child,
                ready_r,
            })
        }
        Err(e) => Err(io::Error::other(format!("fork: {}", e.desc()))),
    }
}

/// Reports `errno` on `fd` as [`EXEC_FAILED`] and exits 127, as a shell does for a failed exec.
///
/// # Safety
/// Only in the forked child.
unsafe fn fail(fd: RawFd) -> ! {
    // SAFETY: errno location is valid for this (only) thread.
    let errno = unsafe { *libc::__errno_location() };
    let mut msg = [0u8; 5];
    msg[0] = EXEC_FAILED;
    msg[1..].copy_from_slice(&errno.to_ne_bytes());
    // SAFETY: write(2) and _exit(2) are async-signal-safe; `msg` is on this stack.
    unsafe {
        libc::write(fd, msg.as_ptr().cast(), msg.len());
        libc::_exit(127)
    }
}

/// The child between fork and exec.
///
/// # Safety
/// Must be called only in a freshly forked child of a possibly multi-threaded process: it
/// allocates nothing, takes no lock and only makes async-signal-safe system calls. `src` are
/// the fds to pass (the readiness pipe at `ready_index`, then the keeper channel if any), `tmp`
/// has the same length, `pid_var` points to the reserved `LISTEN_PID=` buffer that `envp`
/// references.
// Everything the child needs, prepared before fork, passed as is: no allocation after fork.
#[allow(clippy::too_many_arguments)]
unsafe fn exec_child(
    path: &CString,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
    pid_var: *mut u8,
    src: &[RawFd],
    tmp: &mut [RawFd],
    ready_index: usize,
    new_group: bool,
    ready_w: RawFd,
) -> ! {
    let count = src.len() as RawFd;
    // Above every target fd, so moving a source never clobbers another source.
    let base = FDS_START + count;
    // SAFETY (whole block): fcntl, dup2, getpid, setpgid, sigprocmask, signal,
    // syscall(close_range), execve, write and _exit are async-signal-safe; the buffers were
    // allocated before fork.
    unsafe {
        if new_group && libc::setpgid(0, 0) < 0 {
            fail(ready_w);
        }
        for (i, &s) in src.iter().enumerate() {
            let t = libc::fcntl(s, libc::F_DUPFD_CLOEXEC, base);
            if t < 0 {
                fail(ready_w);
            }
            tmp[i] = t;
        }
        let report = tmp[ready_index];
        for (i, &t) in tmp.iter().enumerate() {
            // dup2 clears FD_CLOEXEC on the new fd: exactly these fds survive execve.
            if libc::dup2(t, FDS_START + i as RawFd) < 0 {
                fail(report);
            }
        }
        // LISTEN_PID=<our pid>, written digit by digit into the reserved buffer.
        let mut pid = libc::getpid() as u32;
        let mut digits = [0u8; 10];
        let mut len = 0;
        loop {
            digits[len] = b'0' + (pid % 10) as u8;
            len += 1;
            pid /= 10;
            if pid == 0 {
                break;
            }
        }
        let out = pid_var.add(PID_VAR.len());
        for i in 0..len {
            *out.add(i) = digits[len - 1 - i];
        }
        *out.add(len) = 0;
        // Nothing else crosses into the new binary: close every fd above the passed ones
        // (the temporaries included). Older kernels without close_range rely on CLOEXEC.
        libc::syscall(
            libc::SYS_close_range,
            base as libc::c_uint,
            libc::c_uint::MAX,
            0,
        );
        // A clean signal state, as a fresh process would have: Rust ignores SIGPIPE.
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr());
        fail(FDS_START + ready_index as RawFd)
    }
}
