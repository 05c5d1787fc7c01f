//! `sd_notify(3)`, both ways.
//!
//! **Out, to the service manager** (when `NOTIFY_SOCKET` is set), always sent by the process that
//! is the service's main pid at that moment, so the default `NotifyAccess=main` accepts it:
//!
//! | when | message | sent by |
//! |---|---|---|
//! | a fresh (or socket-activated) start is serving | `READY=1` | the process itself |
//! | an upgrade starts | `RELOADING=1` + `MONOTONIC_USEC=…` | the old generation |
//! | the new generation is ready | `MAINPID=<new>` + `READY=1` (one datagram) | the old generation, still main until systemd reads it |
//! | an upgrade failed | `READY=1` (leave the reloading state; same main pid) | the old generation |
//! | a final stop (SIGTERM/SIGINT) | `STOPPING=1` | the main pid |
//!
//! A generation that has handed over is no longer the main pid and sends nothing more.
//!
//! **In keeper mode** the keeper is the main pid for the whole life of the service: the
//! generations send none of the above (they tell the keeper on its channel, see
//! `keeper.rs`), and the keeper sends `READY=1` when generation 1 is
//! ready, `RELOADING=1` when an upgrade starts, `READY=1` when a new generation serves or the
//! upgrade failed, `STOPPING=1` at a final stop. No message moves `MAINPID` away from it.
//!
//! **In, from a new generation**: for each upgrade the old generation binds a private `AF_UNIX`
//! datagram socket (abstract, kernel-chosen name, CLOEXEC, `SO_PASSCRED`) and gives it to the new
//! binary as its `NOTIFY_SOCKET`. A `READY=1` on it whose kernel-attested sender pid is the new
//! pid counts as ready, exactly like the hotexec readiness pipe; so any program that reads
//! `LISTEN_FDS` and calls `sd_notify("READY=1")` can be the new generation. A hotexec new
//! generation uses the pipe, and restores the real `NOTIFY_SOCKET` from
//! `HOTEXEC_NOTIFY_SOCKET` before `main` (see `startup.rs`).

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixDatagram;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use nix::sys::socket::{
    self, AddressFamily, ControlMessageOwned, MsgFlags, SockFlag, SockType, UnixAddr, sockopt,
};

use crate::handover as protocol;

/// Sends one datagram to `addr` in the `NOTIFY_SOCKET` syntax: an absolute path, or `@name` for
/// an abstract address.
pub fn send_to(addr: &OsStr, state: &str) -> io::Result<()> {
    let sock = UnixDatagram::unbound()?;
    let bytes = addr.as_bytes();
    match bytes.first() {
        Some(b'/') => sock.send_to(state.as_bytes(), addr)?,
        Some(b'@') => {
            use std::os::linux::net::SocketAddrExt;
            let sa = std::os::unix::net::SocketAddr::from_abstract_name(&bytes[1..])?;
            sock.send_to_addr(state.as_bytes(), &sa)?
        }
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{}={:?}: expected an absolute path or an @abstract name",
                    protocol::NOTIFY_SOCKET,
                    addr
                ),
            ));
        }
    };
    Ok(())
}

/// The messages to the service manager (see the module docs).
#[derive(Debug)]
pub(crate) struct Notifier {
    /// The service manager's socket, as found at start (`None`: not run under a notifying
    /// manager).
    target: Option<OsString>,
    /// This process is a generation under a keeper, which is the main pid and speaks for it.
    keeper_is_main: bool,
    /// `READY=1` of a fresh start is sent once.
    sent_ready: AtomicBool,
}

impl Notifier {
    /// `target`: the service manager's socket (see `startup.rs`); `keeper_is_main`: this
    /// process is a generation under a keeper, and sends nothing itself.
    pub(crate) fn new(target: Option<OsString>, keeper_is_main: bool) -> Notifier {
        Notifier {
            target,
            keeper_is_main,
            sent_ready: AtomicBool::new(false),
        }
    }

    /// The real `NOTIFY_SOCKET` ("" when there is none), for `HOTEXEC_NOTIFY_SOCKET`.
    pub(crate) fn upstream(&self) -> OsString {
        self.target.clone().unwrap_or_default()
    }

    /// Sends `state` to the service manager, if there is one. A failure is logged, never fatal:
    /// the server serves whether or not its manager hears about it.
    fn notify(&self, state: &str) {
        if self.keeper_is_main {
            return;
        }
        if let Some(addr) = &self.target {
            match send_to(addr, state) {
                Ok(()) => tracing::debug!(state = %state.replace('\n', " "), "sd_notify"),
                Err(e) => tracing::warn!(
                    "sd_notify to {}={:?} failed ({e}): the service manager was not told {:?}",
                    protocol::NOTIFY_SOCKET,
                    addr,
                    state
                ),
            }
        }
    }

    /// A fresh start (or the keeper's generation 1) is serving.
    pub(crate) fn ready(&self) {
        if !self.sent_ready.swap(true, Ordering::SeqCst) {
            self.notify("READY=1");
        }
    }

    /// An upgrade starts.
    pub(crate) fn reloading(&self) {
        self.notify(&format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()));
    }

    /// The new generation is ready and becomes the main pid.
    pub(crate) fn handed_over(&self, new_pid: u32) {
        self.notify(&format!("MAINPID={new_pid}\nREADY=1"));
    }

    /// Ready again: an upgrade failed and this process stays the main pid, or (keeper mode) a
    /// new generation serves and the keeper stays the main pid.
    pub(crate) fn ready_again(&self) {
        self.notify("READY=1");
    }

    /// A final stop begins.
    pub(crate) fn stopping(&self) {
        self.notify("STOPPING=1");
    }
}

fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into `ts`, which lives for the call.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}

/// Most datagrams read from the private notify socket per wake-up: the supervisor then looks at
/// the readiness pipe, its signals and the deadline before it reads more, however fast anyone
/// else writes to the socket.
const READS_PER_WAKE: usize = 32;
/// At most one log line per this interval about datagrams from other senders (the first one is
/// logged at once).
const DROPPED_LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// The private notify socket of one upgrade (see the module docs).
///
/// Its abstract name is visible to every local user (`/proc/net/unix`), and anyone may send to
/// it: only datagrams whose kernel-attested sender is the new generation count; the others are
/// dropped, counted, and logged at most once a second (and once more when the socket goes).
pub(crate) struct ChildSocket {
    fd: OwnedFd,
    /// `@name`, for the new generation's `NOTIFY_SOCKET`.
    pub addr: OsString,
    dropped: Mutex<Dropped>,
}

/// Datagrams from other senders than the new generation.
#[derive(Default)]
struct Dropped {
    total: u64,
    /// Since the last log line.
    unlogged: u64,
    last_log: Option<std::time::Instant>,
    /// The latest sender (pid, uid), as the kernel attested it.
    sender: Option<(i32, u32)>,
    /// The pid that counts.
    new_pid: i32,
}

impl ChildSocket {
    /// Binds a fresh socket to a kernel-chosen abstract name (autobind: no name to collide
    /// with, nothing on disk to clean up).
    pub(crate) fn bind() -> io::Result<ChildSocket> {
        let err =
            |call: &str, e: nix::errno::Errno| io::Error::other(format!("{call}: {}", e.desc()));
        let fd = socket::socket(
            AddressFamily::Unix,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )
        .map_err(|e| err("socket(AF_UNIX, SOCK_DGRAM)", e))?;
        socket::setsockopt(&fd, sockopt::PassCred, &true)
            .map_err(|e| err("setsockopt(SO_PASSCRED)", e))?;
        socket::bind(fd.as_raw_fd(), &UnixAddr::new_unnamed())
            .map_err(|e| err("bind (autobind)", e))?;
        let local: UnixAddr =
            socket::getsockname(fd.as_raw_fd()).map_err(|e| err("getsockname", e))?;
        let name = local
            .as_abstract()
            .ok_or_else(|| io::Error::other("autobind gave no abstract name"))?;
        let mut addr = b"@".to_vec();
        addr.extend_from_slice(name);
        Ok(ChildSocket {
            fd,
            addr: OsString::from(std::ffi::OsStr::from_bytes(&addr)),
            dropped: Mutex::new(Dropped::default()),
        })
    }

    pub(crate) fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Reads the pending datagrams, [`READS_PER_WAKE`] at most; true if one of them, sent by
    /// `pid`, says `READY=1`. Datagrams from any other sender are dropped and counted.
    pub(crate) fn ready_from(&self, pid: i32) -> bool {
        let mut ready = false;
        for _ in 0..READS_PER_WAKE {
            let mut buf = [0u8; 4096];
            let mut cmsg = nix::cmsg_space!(socket::UnixCredentials);
            let mut iov = [io::IoSliceMut::new(&mut buf)];
            let (len, sender) = match socket::recvmsg::<()>(
                self.fd.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC,
            ) {
                Ok(msg) => {
                    let sender = msg.cmsgs().ok().and_then(|mut c| {
                        c.find_map(|m| match m {
                            ControlMessageOwned::ScmCredentials(cred) => {
                                Some((cred.pid(), cred.uid()))
                            }
                            _ => None,
                        })
                    });
                    (msg.bytes, sender)
                }
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => break,
            };
            if sender.map(|(p, _)| p) == Some(pid) {
                let text = String::from_utf8_lossy(&buf[..len]);
                if text.lines().any(|l| l == "READY=1") {
                    ready = true;
                }
                tracing::debug!(new_pid = pid, message = %text.replace('\n', " "), "sd_notify from the new generation");
            } else {
                self.drop_from(sender, pid);
            }
        }
        ready
    }

    /// Counts a datagram from another sender than `pid`; logs at once for the first, then at
    /// most once per [`DROPPED_LOG_EVERY`].
    fn drop_from(&self, sender: Option<(i32, u32)>, pid: i32) {
        let mut d = self.dropped.lock().unwrap_or_else(|p| p.into_inner());
        d.total += 1;
        d.unlogged += 1;
        d.sender = sender.or(d.sender);
        d.new_pid = pid;
        let due = d.last_log.is_none_or(|t| t.elapsed() >= DROPPED_LOG_EVERY);
        if due {
            d.last_log = Some(std::time::Instant::now());
            let n = std::mem::take(&mut d.unlogged);
            log_dropped(n, d.total, d.sender, pid);
        }
    }
}

fn log_dropped(n: u64, total: u64, sender: Option<(i32, u32)>, new_pid: i32) {
    let from = match sender {
        Some((p, u)) => format!("pid {p} uid {u}"),
        None => "a sender without credentials".into(),
    };
    tracing::warn!(
        dropped = n,
        total,
        new_pid,
        "dropped {n} datagram(s) on the upgrade's notify socket, latest from {from}: not sent by the new generation (logged at most once a second)"
    );
}

impl Drop for ChildSocket {
    fn drop(&mut self) {
        let d = self.dropped.get_mut().unwrap_or_else(|p| p.into_inner());
        if d.unlogged > 0 {
            log_dropped(d.unlogged, d.total, d.sender, d.new_pid);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn child_socket_counts_only_ready_from_the_given_pid() {
        let s = ChildSocket::bind().unwrap();
        assert!(s.addr.as_bytes().starts_with(b"@"));
        send_to(&s.addr, "STATUS=warming up").unwrap();
        assert!(!s.ready_from(std::process::id() as i32));
        send_to(&s.addr, "READY=1").unwrap();
        // Sent by this process, so not by "the new generation" pid 1.
        assert!(!s.ready_from(1));
        send_to(&s.addr, "STATUS=x\nREADY=1").unwrap();
        assert!(s.ready_from(std::process::id() as i32));
        let e = send_to(OsStr::new("relative"), "READY=1").unwrap_err();
        assert!(e.to_string().contains("NOTIFY_SOCKET"), "{e}");
    }
}
