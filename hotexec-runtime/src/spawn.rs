//! Starting the new generation: `clone(CLONE_VM | CLONE_VFORK)` (or `fork` with
//! `HOTEXEC_SPAWN=fork`), put the listening fds at 3.. in the systemd convention, and execve the
//! binary.
//!
//! Why not `fork`: it copies the page tables of this process and write-protects all of its
//! memory, so the cost grows with the memory held (about 150 ms at 4 GB) and the serving threads
//! stall on the memory-map lock, then pay copy-on-write faults until the child has exec'd. A
//! `CLONE_VM | CLONE_VFORK` child shares the address space instead (as posix_spawn and Go's
//! os.StartProcess do): nothing is copied, and the calling thread waits until the child has
//! exec'd or exited. Everything the child needs is prepared before (env, argv, the fd lists,
//! the `LISTEN_PID` buffer, its stack), and the child only makes async-signal-safe calls.
//! The environment and argv are built in [`spawn`]; the clone and the child in
//! [`start_child`] and [`exec_child`].

use std::ffi::{CString, OsString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::fcntl::OFlag;
use nix::sys::signal::{SigSet, Signal};
use nix::unistd::{ForkResult, Pid, fork};

use crate::handover::{self as protocol, FDS_START};
use crate::limits::{self, LimitError};
use crate::readiness::EXEC_FAILED;

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
    /// The connection hand-off channel (see `handoff`): passed after the keeper channel, named
    /// by `HOTEXEC_HANDOFF_FD`.
    pub handoff: Option<BorrowedFd<'a>>,
    /// The generation link (see `link.rs`): passed after the hand-off channel, named by
    /// `HOTEXEC_LINK_FD`.
    pub link: Option<BorrowedFd<'a>>,
    /// The upgrade signal of the new generation: blocked, with SIGTERM and SIGINT, from its
    /// first instruction until its runtime has installed its handlers (see `exec_mask`).
    pub upgrade_signal: Option<Signal>,
}

/// Forks and executes `exe` with `argv` and this process's environment plus the protocol
/// variables; `fds[i]` becomes fd `3 + i` in the child, named `names[i]`. `env` is set on top
/// (replacing a variable of the same name).
pub fn spawn(
    method: Method,
    exe: &Path,
    argv: &[OsString],
    fds: &[BorrowedFd<'_>],
    names: &[&str],
    env: &[(&str, OsString)],
    extra: Extra<'_>,
) -> io::Result<Spawned> {
    let n = fds.len();
    let ready_target = FDS_START + n as RawFd;
    let (ready_r, ready_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| match e {
        nix::errno::Errno::EMFILE => io::Error::other(LimitError::NoFile {
            call: "pipe2",
            limit: limits::nofile(),
        }),
        e => io::Error::other(format!("pipe2: {}", e.desc())),
    })?;

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
    // After the readiness pipe, each channel there is, in this order.
    let mut next = ready_target + 1 + RawFd::from(extra.keeper.is_some());
    if extra.handoff.is_some() {
        ours.push((protocol::HANDOFF_FD, next.to_string().into()));
        next += 1;
    }
    if extra.link.is_some() {
        ours.push((protocol::LINK_FD, next.to_string().into()));
    }
    ours.extend(env.iter().cloned());
    let var = |k: &[u8], v: &[u8]| cstr(&[k, b"=", v].concat());
    let mut envp_c = Vec::new();
    for (k, v) in std::env::vars_os() {
        let k = k.as_bytes();
        let replaced = protocol::ALL
            .iter()
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
    // E2BIG from execve would only say "Argument list too long": say which string, and why.
    limits::check_exec(&path, &argv_c, &envp_c, pid_var.len()).map_err(io::Error::other)?;

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
    src.extend(extra.handoff.map(|h| h.as_raw_fd()));
    src.extend(extra.link.map(|l| l.as_raw_fd()));
    let mut tmp: Vec<RawFd> = vec![-1; src.len()];
    // The child's EMFILE would be reported as an exec failure: check its room first.
    limits::check_child_fds(src.len(), n).map_err(io::Error::other)?;

    let mut child = Child {
        path: path.as_ptr(),
        argv: argv_p.as_ptr(),
        envp: envp_p.as_ptr(),
        pid_var: pid_var.as_mut_ptr(),
        src: src.as_ptr(),
        tmp: tmp.as_mut_ptr(),
        count: src.len(),
        ready_index: n,
        new_group: extra.new_group,
        ready_w: ready_w.as_raw_fd(),
        exec_mask: exec_mask(extra.upgrade_signal),
    };
    let pid = start_child(method, &mut child)?;
    drop(ready_w);
    Ok(Spawned { pid, ready_r })
}

/// How the new generation is started; see [`method`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Method {
    /// `clone(CLONE_VM | CLONE_VFORK)`: no copy of the address space, cost independent of
    /// the memory this process holds. The default.
    Clone,
    /// `fork()`: copies the page tables and write-protects all memory; kept as a diagnostics
    /// and benchmark knob (`HOTEXEC_SPAWN=fork`).
    Fork,
}

/// Name of the variable that selects the spawn [`Method`]: `clone` (default) or `fork`.
/// A diagnostics and benchmark knob, read with the other options (see `config.rs`).
pub const SPAWN_VAR: &str = "HOTEXEC_SPAWN";

impl Method {
    /// Parses the value of [`SPAWN_VAR`]; unset or empty means `clone`.
    pub fn parse(value: Option<&std::ffi::OsStr>) -> Result<Method, String> {
        match value.map(|v| v.to_str()) {
            None | Some(Some("" | "clone")) => Ok(Method::Clone),
            Some(Some("fork")) => Ok(Method::Fork),
            Some(_) => Err(format!(
                "{SPAWN_VAR}={:?}: expected `clone` (the default) or `fork`",
                value.unwrap_or_default()
            )),
        }
    }
}

/// The signal mask the new image starts with: only its upgrade signal blocked. Its default
/// action is to terminate, and a broadcast (`pkill -USR2 app`) reaches the new generation as
/// well as the old one: blocked from its first instruction, it stays pending until
/// `signals::install` has put the handler in place, which then discards it with a log line
/// (it was meant for the generation that started this one; acting on it would chain a second
/// upgrade). Every other signal is unblocked, as in a fresh process.
///
/// SIGTERM and SIGINT are deliberately not blocked: the new image may be a program that is not
/// built on hotexec (any socket-activation-aware server, `examples/listenfd_server.rs`) and
/// would never unblock them; during a hotexec generation's startup their default action stops
/// it, which is what was asked (the old generation sees it exit before ready and serves on),
/// and from `signals::install` on they reach the handler and stop it gracefully.
fn exec_mask(upgrade_signal: Option<Signal>) -> libc::sigset_t {
    let mut set = SigSet::empty();
    if let Some(s) = upgrade_signal {
        set.add(s);
    }
    *set.as_ref()
}

/// Everything the child needs between clone/fork and exec, prepared before: raw pointers into
/// buffers owned by [`spawn`]'s frame, which outlives the child's use of them (the parent's
/// thread is suspended until the child has exec'd or exited with `CLONE_VFORK`; with `fork`
/// the child has its own copy).
struct Child {
    path: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    /// The reserved `LISTEN_PID=` buffer that `envp` references; the child writes its pid in.
    pid_var: *mut u8,
    /// The fds to pass (listeners, the readiness pipe at `ready_index`, the keeper channel).
    src: *const RawFd,
    /// `count` slots the child fills with temporary fds.
    tmp: *mut RawFd,
    count: usize,
    ready_index: usize,
    new_group: bool,
    ready_w: RawFd,
    exec_mask: libc::sigset_t,
}

/// Size of the child's stack for `clone`. The child runs only [`exec_child`] (a few hundred
/// bytes of frames) and the libc wrappers of the system calls it makes; 256 KiB leaves a wide
/// margin, and a guard page below it turns an overflow into a SIGSEGV of the child (seen by the
/// parent as an exec failure) rather than a write into the parent's memory.
const STACK_SIZE: usize = 256 * 1024;

/// Starts the child with every signal blocked in the calling thread (so no handler of this
/// process can run in the child before its dispositions are reset, and the parent's own
/// handlers are not run on this thread in the middle of the spawn either), restoring the
/// thread's mask afterwards. Returns the child's pid.
fn start_child(method: Method, child: &mut Child) -> io::Result<Pid> {
    // Allocated before the clone (the child may not allocate): a stack of its own, mapped
    // with one PROT_NONE guard page at its low end.
    let stack = match method {
        Method::Clone => Some(Stack::new()?),
        Method::Fork => None,
    };
    let all = SigSet::all();
    let mut saved = SigSet::empty();
    nix::sys::signal::pthread_sigmask(
        nix::sys::signal::SigmaskHow::SIG_SETMASK,
        Some(&all),
        Some(&mut saved),
    )
    .map_err(|e| io::Error::other(format!("pthread_sigmask: {}", e.desc())))?;
    let result = match (method, &stack) {
        (Method::Clone, Some(stack)) => {
            // SAFETY: `clone_entry` is the child's whole life: it only calls `exec_child`,
            // which never returns, allocates nothing, takes no lock and makes async-signal-safe
            // system calls on the memory `child` points to. With CLONE_VM the child runs in
            // this address space on `stack` (its own, mapped above and unmapped only after
            // clone returns), and CLONE_VFORK suspends this thread until the child has exec'd
            // or exited, so `child` and the buffers it points into (owned by `spawn`'s frame)
            // are neither freed nor touched by us meanwhile. Other threads of this process keep
            // running, but none of them knows these buffers: they are private to this call.
            let pid = unsafe {
                libc::clone(
                    clone_entry,
                    stack.top(),
                    libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
                    (child as *mut Child).cast(),
                )
            };
            if pid < 0 {
                Err(io::Error::other(format!(
                    "clone(CLONE_VM | CLONE_VFORK): {}",
                    io::Error::last_os_error()
                )))
            } else {
                Ok(Pid::from_raw(pid))
            }
        }
        _ => {
            // SAFETY: the child branch only calls `exec_child`, which makes async-signal-safe
            // calls on memory allocated before fork (its own copy) and never returns.
            match unsafe { fork() } {
                // SAFETY: we are the freshly forked child; see `exec_child`.
                Ok(ForkResult::Child) => unsafe { exec_child(child) },
                Ok(ForkResult::Parent { child }) => Ok(child),
                Err(e) => Err(io::Error::other(format!("fork: {}", e.desc()))),
            }
        }
    };
    // Signals that arrived meanwhile are delivered now, to this process's handlers.
    let _ = nix::sys::signal::pthread_sigmask(
        nix::sys::signal::SigmaskHow::SIG_SETMASK,
        Some(&saved),
        None,
    );
    drop(stack);
    result
}

/// The `clone` child's entry point, on its own stack.
extern "C" fn clone_entry(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the `Child` passed by `start_child`, alive while the parent's thread is
    // suspended (CLONE_VFORK); we are the cloned child, see `exec_child`.
    unsafe { exec_child(&*arg.cast::<Child>()) }
}

/// A child stack: an anonymous private mapping with a guard page at its low end.
struct Stack {
    base: *mut libc::c_void,
    len: usize,
}

impl Stack {
    fn new() -> io::Result<Stack> {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
        let len = STACK_SIZE + page;
        // SAFETY: a fresh anonymous mapping; no existing memory is affected.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::other(format!(
                "mmap of the spawn stack ({len} bytes): {}",
                io::Error::last_os_error()
            )));
        }
        let stack = Stack { base, len };
        // SAFETY: the first page of the mapping made above.
        if unsafe { libc::mprotect(base, page, libc::PROT_NONE) } < 0 {
            return Err(io::Error::other(format!(
                "mprotect of the spawn stack's guard page: {}",
                io::Error::last_os_error()
            )));
        }
        Ok(stack)
    }

    /// The highest address, 16-byte aligned (the stack grows down on every Linux target).
    fn top(&self) -> *mut libc::c_void {
        // SAFETY: one past the end of the mapping, which is page-aligned.
        unsafe { self.base.cast::<u8>().add(self.len).cast() }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, used by no one once the child has exec'd or
        // exited (CLONE_VFORK returns only then).
        unsafe { libc::munmap(self.base, self.len) };
    }
}

/// Reports `errno` on `fd` as [`EXEC_FAILED`] and exits 127, as a shell does for a failed exec.
///
/// # Safety
/// Only in the child between clone/fork and exec.
unsafe fn fail(fd: RawFd) -> ! {
    // SAFETY: this thread's errno slot. With CLONE_VM the child shares the parent's thread
    // pointer, so this is the slot of the parent's suspended thread: the child's failing calls
    // write it and we read it back here. That is harmless to the parent: its thread is inside
    // `clone`, which returns the child's pid (success, errno not consulted), and Rust reads
    // errno only right after a call that failed and set it anew.
    let errno = unsafe { *libc::__errno_location() };
    let mut msg = [0u8; 5];
    msg[0] = EXEC_FAILED;
    msg[1..].copy_from_slice(&errno.to_ne_bytes());
    // SAFETY: write(2) and _exit(2) are async-signal-safe; `msg` is on the child's stack.
    // `_exit` (not `exit`): no atexit handler or stdio flush of the parent runs in the child.
    unsafe {
        libc::write(fd, msg.as_ptr().cast(), msg.len());
        libc::_exit(127)
    }
}

/// The child between clone/fork and exec.
///
/// # Safety
/// Only in a child made by [`start_child`], with every signal blocked. With `fork` it has a
/// copy of the memory; with `clone(CLONE_VM | CLONE_VFORK)` it runs in the parent's memory on
/// a stack of its own while the parent's thread is suspended, other threads of the parent
/// running on. So: it allocates nothing and takes no lock (another thread may hold the
/// allocator's or stdio's), makes only async-signal-safe system calls, and writes parent memory
/// only in the buffers `child` points to (`pid_var`, `tmp`), which belong to the suspended
/// `spawn` call and no other thread knows. The fd table and the signal dispositions are the
/// child's own (no CLONE_FILES, no CLONE_SIGHAND): closing, moving fds and resetting handlers
/// here does not affect the parent.
unsafe fn exec_child(child: &Child) -> ! {
    let count = child.count as RawFd;
    // Above every target fd, so moving a source never clobbers another source.
    let base = FDS_START + count;
    // SAFETY (whole block): sigaction, fcntl, dup2, getpid, setpgid, sigprocmask,
    // syscall(close_range), execve, write and _exit are async-signal-safe; the pointers in
    // `child` are valid for `count` elements, prepared before the clone (see `spawn`).
    unsafe {
        // First the handlers: they point into the parent's code and, with CLONE_VM, would run
        // on the parent's data (its self-pipe, its statics) from the wrong process. Every
        // signal is blocked since before the clone, so none can have run yet; reset each caught
        // signal to SIG_DFL before anything is unblocked. SIGPIPE, ignored by the Rust runtime,
        // goes back to the default a fresh process has; other ignored signals stay ignored
        // across exec as POSIX intends (`nohup`).
        for sig in 1..=libc::SIGRTMAX() {
            if sig == libc::SIGKILL || sig == libc::SIGSTOP {
                continue;
            }
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(sig, std::ptr::null(), &mut old) < 0 {
                continue; // libc-reserved signals (SIGCANCEL, SIGSETXID): not ours to touch
            }
            let caught = old.sa_sigaction != libc::SIG_DFL && old.sa_sigaction != libc::SIG_IGN;
            if caught || (sig == libc::SIGPIPE && old.sa_sigaction == libc::SIG_IGN) {
                let mut dfl: libc::sigaction = std::mem::zeroed();
                dfl.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(sig, &dfl, std::ptr::null_mut());
            }
        }
        if child.new_group && libc::setpgid(0, 0) < 0 {
            fail(child.ready_w);
        }
        let src = std::slice::from_raw_parts(child.src, child.count);
        let tmp = std::slice::from_raw_parts_mut(child.tmp, child.count);
        for (i, &s) in src.iter().enumerate() {
            let t = libc::fcntl(s, libc::F_DUPFD_CLOEXEC, base);
            if t < 0 {
                fail(child.ready_w);
            }
            tmp[i] = t;
        }
        let report = tmp[child.ready_index];
        for (i, &t) in tmp.iter().enumerate() {
            // dup2 clears FD_CLOEXEC on the new fd: exactly these fds survive execve.
            if libc::dup2(t, FDS_START + i as RawFd) < 0 {
                fail(report);
            }
        }
        // LISTEN_PID=<our pid>, written digit by digit into the reserved buffer. The raw
        // system call: no libc pid cache can hand us the parent's pid in a CLONE_VM child.
        let mut pid = libc::syscall(libc::SYS_getpid) as u32;
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
        let out = child.pid_var.add(PID_VAR.len());
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
        // The mask the new image starts with (it survives execve): see `exec_mask`. Between
        // here and execve an unblocked signal can only take its default action, every handler
        // having been reset above.
        libc::sigprocmask(libc::SIG_SETMASK, &child.exec_mask, std::ptr::null_mut());
        libc::execve(child.path, child.argv, child.envp);
        fail(FDS_START + child.ready_index as RawFd)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One field of `/proc/<pid>/status` as a bit mask.
    fn mask(status: &str, field: &str) -> u64 {
        let line = status
            .lines()
            .find(|l| l.starts_with(&format!("{field}:")))
            .unwrap_or_else(|| panic!("no {field} in {status:?}"));
        u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap()
    }

    extern "C" fn on_winch(_: libc::c_int) {}

    /// The signal state the new image starts with, seen by a program that does not touch it
    /// (`sed`, writing its own `/proc/self/status` to a file): only the upgrade signal blocked,
    /// no handler of ours, SIGPIPE not ignored; and `LISTEN_PID` is its own pid.
    #[test]
    fn the_new_image_starts_with_the_upgrade_signal_blocked() {
        let dir = std::env::temp_dir().join(format!("hotexec-spawn-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let status = dir.join("status");
        let environ = dir.join("environ");
        // A handler in this process, which the child must not keep.
        let action = nix::sys::signal::SigAction::new(
            nix::sys::signal::SigHandler::Handler(on_winch),
            nix::sys::signal::SaFlags::empty(),
            SigSet::empty(),
        );
        // SAFETY: a handler that does nothing, for a signal nothing else here uses.
        unsafe { nix::sys::signal::sigaction(Signal::SIGWINCH, &action) }.unwrap();
        // `-z` for the NUL-separated environment; a no-op `-s` for the status lines.
        for (file, script, input, sep) in [
            (&status, "/^Sig/w ", "/proc/self/status", "-s"),
            (&environ, "/^LISTEN_PID=/w ", "/proc/self/environ", "-z"),
        ] {
            let argv: Vec<OsString> = vec![
                "sed".into(),
                sep.into(),
                "-n".into(),
                format!("{script}{}", file.display()).into(),
                input.into(),
            ];
            let extra = Extra {
                upgrade_signal: Some(Signal::SIGUSR2),
                ..Extra::default()
            };
            let child = spawn(
                Method::Clone,
                Path::new("/bin/sed"),
                &argv,
                &[],
                &[],
                &[],
                extra,
            )
            .unwrap();
            let status = nix::sys::wait::waitpid(child.pid, None).unwrap();
            assert_eq!(status, nix::sys::wait::WaitStatus::Exited(child.pid, 0));
            if file == &environ {
                let env = std::fs::read(file).unwrap();
                let env = String::from_utf8_lossy(&env);
                assert_eq!(
                    env.trim_end_matches('\0'),
                    format!("LISTEN_PID={}", child.pid)
                );
            }
        }
        let seen = std::fs::read_to_string(&status).unwrap();
        assert_eq!(mask(&seen, "SigBlk"), 1 << (libc::SIGUSR2 - 1), "{seen}");
        assert_eq!(mask(&seen, "SigCgt"), 0, "{seen}");
        assert_eq!(
            mask(&seen, "SigIgn") & (1 << (libc::SIGPIPE - 1)),
            0,
            "{seen}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// An exec error comes back on the readiness pipe as EXEC_FAILED and the errno.
    #[test]
    fn exec_errors_are_reported_on_the_ready_pipe() {
        let argv: Vec<OsString> = vec!["missing".into()];
        let child = spawn(
            Method::Clone,
            Path::new("/nonexistent/hotexec-missing"),
            &argv,
            &[],
            &[],
            &[],
            Extra::default(),
        )
        .unwrap();
        let mut buf = [0u8; 8];
        let n = nix::unistd::read(&child.ready_r, &mut buf).unwrap();
        assert_eq!(n, 5);
        assert_eq!(buf[0], EXEC_FAILED);
        let errno = i32::from_ne_bytes(buf[1..5].try_into().unwrap());
        assert_eq!(errno, libc::ENOENT);
        let status = nix::sys::wait::waitpid(child.pid, None).unwrap();
        assert_eq!(status, nix::sys::wait::WaitStatus::Exited(child.pid, 127));
    }
}
