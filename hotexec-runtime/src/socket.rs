//! Binding fresh sockets and checking inherited ones.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, FdFlag, fcntl};
use nix::sys::socket::{
    self, AddressFamily, Backlog, SockFlag, SockType, SockaddrLike, SockaddrStorage, sockopt,
};
use nix::sys::stat::{SFlag, fstat};

use crate::syntax::ListenAddr;

/// Listen options of one `#[listen]`. Each applies when a socket is bound; an inherited socket
/// keeps the options it was created with. An option that does not apply to the address (after a
/// `HOTEXEC_LISTEN_<NAME>` override changed its kind) is ignored.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListenOptions {
    /// `listen(2)` backlog; `SOMAXCONN` when not set.
    pub backlog: Option<u32>,
    /// `IPV6_V6ONLY` for IPv6 addresses; `true` (IPv6 only) when not set, whatever the
    /// `net.ipv6.bindv6only` sysctl says. `false` makes `[::]:80` accept IPv4 too.
    pub v6only: Option<bool>,
    /// `SO_REUSEPORT` (TCP/UDP); off by default, so a second server on the same port is an error
    /// rather than a silent load-balancing partner.
    pub reuseport: bool,
    /// Permission bits of a Unix socket's path (`chmod` after `bind`, before `listen`, so no
    /// client can connect under the umask's bits); the umask's result when not set.
    pub mode: Option<u32>,
}

/// What an inherited fd turned out to be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SocketInfo {
    /// Its address, in the listen grammar.
    pub addr: ListenAddr,
    /// For stream sockets: whether `listen(2)` was called on it.
    pub listening: bool,
    /// An IPv6 socket that takes IPv4 clients too (`IPV6_V6ONLY` off), as systemd's
    /// `ListenStream=PORT` (`[::]:PORT`) is.
    pub dual_stack: bool,
}

fn errno_io(call: &str, e: Errno) -> io::Error {
    io::Error::new(io::Error::from(e).kind(), format!("{call}: {}", e.desc()))
}

/// Checks that `fd` is an open socket of a kind hotexec can hand to the application, and says
/// what it is. Each refusal names the fd and what was found instead.
pub fn inspect(fd: BorrowedFd<'_>) -> Result<SocketInfo, String> {
    let n = fd.as_raw_fd();
    let st = fstat(fd).map_err(|e| match e {
        Errno::EBADF => format!("fd {n} is not open"),
        e => format!("fd {n}: fstat failed: {}", e.desc()),
    })?;
    let kind = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
    if kind != SFlag::S_IFSOCK {
        let what = match kind {
            SFlag::S_IFREG => "a regular file",
            SFlag::S_IFDIR => "a directory",
            SFlag::S_IFIFO => "a pipe",
            SFlag::S_IFCHR => "a character device",
            _ => "not a socket",
        };
        return Err(format!("fd {n} is not a socket: it is {what}"));
    }
    let ty = socket::getsockopt(&fd, sockopt::SockType)
        .map_err(|e| format!("fd {n}: getsockopt(SO_TYPE) failed: {}", e.desc()))?;
    let local: SockaddrStorage =
        socket::getsockname(n).map_err(|e| format!("fd {n}: getsockname failed: {}", e.desc()))?;
    let ip: Option<SocketAddr> = if let Some(v4) = local.as_sockaddr_in() {
        Some(SocketAddr::V4((*v4).into()))
    } else {
        local
            .as_sockaddr_in6()
            .map(|v6| SocketAddr::V6((*v6).into()))
    };
    let addr = match (ty, ip, local.as_unix_addr()) {
        (SockType::Stream, Some(sa), _) => ListenAddr::Tcp(sa),
        (SockType::Datagram, Some(sa), _) => ListenAddr::Udp(sa),
        (SockType::Stream, None, Some(un)) => match un.path() {
            Some(p) => ListenAddr::Unix(PathBuf::from(std::ffi::OsStr::from_bytes(
                p.as_os_str().as_bytes(),
            ))),
            None => return Err(format!("fd {n} is an unnamed or abstract unix socket")),
        },
        (ty, _, _) => {
            let fam = local
                .family()
                .map(|f| format!("{f:?}"))
                .unwrap_or("unknown".into());
            return Err(format!(
                "fd {n} is a socket of an unsupported kind ({ty:?}, family {fam})"
            ));
        }
    };
    let listening = ty == SockType::Stream
        && socket::getsockopt(&fd, sockopt::AcceptConn)
            .map_err(|e| format!("fd {n}: getsockopt(SO_ACCEPTCONN) failed: {}", e.desc()))?;
    if ty == SockType::Stream && !listening {
        return Err(format!(
            "fd {n} is a connected or unlistened stream socket ({addr}), not a listener"
        ));
    }
    let dual_stack = ip.is_some_and(|sa| sa.is_ipv6())
        && !socket::getsockopt(&fd, sockopt::Ipv6V6Only)
            .map_err(|e| format!("fd {n}: getsockopt(IPV6_V6ONLY) failed: {}", e.desc()))?;
    Ok(SocketInfo {
        addr,
        listening,
        dual_stack,
    })
}

/// Sets `FD_CLOEXEC` on `fd`, so no program the application execs inherits it.
pub fn set_cloexec(fd: BorrowedFd<'_>) -> io::Result<()> {
    fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))
        .map(drop)
        .map_err(|e| errno_io("fcntl(F_SETFD, FD_CLOEXEC)", e))
}

/// Binds a fresh socket for `addr`, CLOEXEC from birth.
pub fn bind(addr: &ListenAddr, opts: &ListenOptions) -> io::Result<OwnedFd> {
    let backlog = match opts.backlog {
        Some(n) => Backlog::new(i32::try_from(n).unwrap_or(i32::MAX))
            .map_err(|e| errno_io("listen backlog", e))?,
        None => Backlog::MAXCONN,
    };
    match addr {
        ListenAddr::Tcp(sa) | ListenAddr::Udp(sa) => {
            let family = if sa.is_ipv4() {
                AddressFamily::Inet
            } else {
                AddressFamily::Inet6
            };
            let ty = if matches!(addr, ListenAddr::Tcp(_)) {
                SockType::Stream
            } else {
                SockType::Datagram
            };
            let fd = socket::socket(family, ty, SockFlag::SOCK_CLOEXEC, None)
                .map_err(|e| errno_io("socket", e))?;
            if ty == SockType::Stream {
                // A restarted server must be able to bind while old connections sit in
                // TIME_WAIT; SO_REUSEADDR does not let two live listeners share the port.
                socket::setsockopt(&fd, sockopt::ReuseAddr, &true)
                    .map_err(|e| errno_io("setsockopt(SO_REUSEADDR)", e))?;
            }
            if opts.reuseport {
                socket::setsockopt(&fd, sockopt::ReusePort, &true)
                    .map_err(|e| errno_io("setsockopt(SO_REUSEPORT)", e))?;
            }
            if sa.is_ipv6() {
                // Explicit, not left to the net.ipv6.bindv6only sysctl: by default `[::]:80`
                // means IPv6 only.
                let only = opts.v6only.unwrap_or(true);
                socket::setsockopt(&fd, sockopt::Ipv6V6Only, &only)
                    .map_err(|e| errno_io("setsockopt(IPV6_V6ONLY)", e))?;
            }
            let storage = SockaddrStorage::from(*sa);
            socket::bind(fd.as_raw_fd(), &storage).map_err(|e| errno_io("bind", e))?;
            if ty == SockType::Stream {
                socket::listen(&fd, backlog).map_err(|e| errno_io("listen", e))?;
            }
            Ok(fd)
        }
        ListenAddr::Unix(path) => {
            let fd = socket::socket(
                AddressFamily::Unix,
                SockType::Stream,
                SockFlag::SOCK_CLOEXEC,
                None,
            )
            .map_err(|e| errno_io("socket(AF_UNIX)", e))?;
            let un =
                socket::UnixAddr::new(path.as_path()).map_err(|e| errno_io("unix address", e))?;
            match socket::bind(fd.as_raw_fd(), &un) {
                Err(Errno::EADDRINUSE) => {
                    remove_stale(path)?;
                    socket::bind(fd.as_raw_fd(), &un).map_err(|e| errno_io("bind", e))?;
                }
                r => r.map_err(|e| errno_io("bind", e))?,
            }
            let bound = || -> io::Result<()> {
                if let Some(mode) = opts.mode {
                    use std::os::unix::fs::PermissionsExt;
                    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
                        .map_err(|e| io::Error::new(e.kind(), format!("chmod {mode:o}: {e}")))?;
                }
                socket::listen(&fd, backlog).map_err(|e| errno_io("listen", e))
            };
            if let Err(e) = bound() {
                // Ours, just created: do not leave it behind.
                let _ = std::fs::remove_file(path);
                return Err(e);
            }
            Ok(fd)
        }
    }
}

/// `bind` found `path` in use: removes it if it is a stale socket (a crashed server's: nothing
/// accepts on it), and refuses to touch a live socket or anything that is not a socket.
fn remove_stale(path: &std::path::Path) -> io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let meta = std::fs::symlink_metadata(path)?;
    if !meta.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!(
                "{} exists and is not a socket ({:?}): refusing to remove it",
                path.display(),
                meta.file_type()
            ),
        ));
    }
    let probe = socket::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
    .map_err(|e| errno_io("socket(AF_UNIX)", e))?;
    let un = socket::UnixAddr::new(path).map_err(|e| errno_io("unix address", e))?;
    match socket::connect(probe.as_raw_fd(), &un) {
        Err(Errno::ECONNREFUSED) => {
            tracing::warn!(path = %path.display(), "removing a stale socket file (nothing accepts on it: left by a crash?)");
            match std::fs::remove_file(path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io::Error::new(
                    e.kind(),
                    format!("cannot remove the stale socket {}: {e}", path.display()),
                )),
                _ => Ok(()),
            }
        }
        Err(Errno::ENOENT) => Ok(()),
        // Connected, or in progress (EAGAIN: a full backlog), or anything else: someone is there.
        r => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!(
                "another process is listening on {} ({}): not removing a live socket",
                path.display(),
                match r {
                    Ok(()) => "a connection succeeded".to_owned(),
                    Err(e) => e.desc().to_owned(),
                }
            ),
        )),
    }
}

/// The Unix socket paths this process must remove on a final stop, each with the (device,
/// inode) the path had when bound or adopted, so a path that someone has since replaced is left
/// alone.
#[derive(Debug, Default)]
pub(crate) struct OwnedPaths {
    /// (listener name, path, device, inode)
    paths: std::sync::Mutex<Vec<(String, PathBuf, u64, u64)>>,
}

impl OwnedPaths {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(String, PathBuf, u64, u64)>> {
        self.paths.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records `path`, the Unix listener `name` bound by a hotexec generation.
    pub(crate) fn own(&self, name: &str, path: &std::path::Path) {
        use std::os::unix::fs::MetadataExt;
        if let Ok(m) = std::fs::symlink_metadata(path) {
            self.lock()
                .push((name.to_owned(), path.to_owned(), m.dev(), m.ino()));
        }
    }

    /// Names of the listeners whose Unix socket path this process owns (they go in
    /// `HOTEXEC_OWNED_FDNAMES` when the listeners are passed on). Known since start: no syscall.
    pub(crate) fn names(&self) -> Vec<String> {
        self.lock().iter().map(|(n, ..)| n.clone()).collect()
    }

    /// On a final stop (never on an upgrade): removes the paths, each only while it is still
    /// the file that was bound. Once: a second call finds nothing.
    pub(crate) fn remove_all(&self) {
        use std::os::unix::fs::MetadataExt;
        let paths = std::mem::take(&mut *self.lock());
        for (_, path, dev, ino) in paths {
            match std::fs::symlink_metadata(&path) {
                Ok(m) if m.dev() == dev && m.ino() == ino => match std::fs::remove_file(&path) {
                    Ok(()) => tracing::info!(path = %path.display(), "removed the socket file"),
                    Err(e) => {
                        tracing::warn!(path = %path.display(), "cannot remove the socket file: {e}")
                    }
                },
                Ok(_) => {
                    tracing::info!(path = %path.display(), "socket file was replaced by another: left alone")
                }
                Err(_) => {}
            }
        }
    }
}

/// True when a socket found at `found` may serve a listener declared at `declared`: same kind,
/// and the same address, where a declared port 0 or an unspecified IP accepts any.
pub fn matches(declared: &ListenAddr, found: &ListenAddr) -> bool {
    match (declared, found) {
        (ListenAddr::Tcp(d), ListenAddr::Tcp(f)) | (ListenAddr::Udp(d), ListenAddr::Udp(f)) => {
            d.is_ipv4() == f.is_ipv4()
                && (d.port() == 0 || d.port() == f.port())
                && (d.ip().is_unspecified() || d.ip() == f.ip())
        }
        (ListenAddr::Unix(d), ListenAddr::Unix(f)) => d == f,
        _ => false,
    }
}

/// True when a socket a service manager passed, at `found`, serves a listener declared at
/// `declared`: same kind and, for TCP and UDP, the same port (any, if the declared one is 0) and
/// an address that takes the declared one's clients: the same, or a wildcard of its family
/// (`0.0.0.0` serves `127.0.0.1`), or a dual-stack `[::]` for any IPv4 or IPv6 address; a
/// declared wildcard accepts any address of its family, as in [`matches()`].
pub fn covers(declared: &ListenAddr, found: &ListenAddr, dual_stack: bool) -> bool {
    match (declared, found) {
        (ListenAddr::Tcp(d), ListenAddr::Tcp(f)) | (ListenAddr::Udp(d), ListenAddr::Udp(f)) => {
            let port = d.port() == 0 || d.port() == f.port();
            let ip = if d.is_ipv4() == f.is_ipv4() {
                d.ip() == f.ip() || d.ip().is_unspecified() || f.ip().is_unspecified()
            } else {
                // Only a dual-stack IPv6 wildcard takes IPv4 clients.
                d.is_ipv4() && f.ip().is_unspecified() && dual_stack
            };
            port && ip
        }
        (ListenAddr::Unix(d), ListenAddr::Unix(f)) => d == f,
        _ => false,
    }
}

/// The address a bound fd really has (port 0 resolved).
pub fn local_addr(fd: BorrowedFd<'_>) -> io::Result<ListenAddr> {
    inspect(fd.as_fd())
        .map(|i| i.addr)
        .map_err(io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn inspect_tells_kinds_apart() {
        let tcp = bind(
            &ListenAddr::parse("127.0.0.1:0").unwrap(),
            &Default::default(),
        )
        .unwrap();
        let info = inspect(tcp.as_fd()).unwrap();
        assert!(matches!(info.addr, ListenAddr::Tcp(sa) if sa.port() != 0));
        assert!(info.listening);

        let udp = bind(
            &ListenAddr::parse("udp:127.0.0.1:0").unwrap(),
            &Default::default(),
        )
        .unwrap();
        assert!(matches!(
            inspect(udp.as_fd()).unwrap().addr,
            ListenAddr::Udp(_)
        ));

        let file = std::fs::File::open("/proc/self/exe").unwrap();
        let e = inspect(file.as_fd()).unwrap_err();
        assert!(e.contains("regular file"), "{e}");

        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let e = inspect(a.as_fd()).unwrap_err();
        assert!(e.contains("unnamed") || e.contains("not a listener"), "{e}");

        // An fd number that is certainly closed.
        let closed = {
            let f = std::fs::File::open("/dev/null").unwrap();
            f.as_raw_fd()
        };
        // SAFETY: only used for fstat, which reports EBADF; never closed or owned.
        let b = unsafe { BorrowedFd::borrow_raw(closed) };
        assert!(inspect(b).unwrap_err().contains("not open"));
    }

    #[test]
    fn matching_rules() {
        let p = |s| ListenAddr::parse(s).unwrap();
        assert!(matches(&p("127.0.0.1:0"), &p("127.0.0.1:4000")));
        assert!(matches(&p("0.0.0.0:4000"), &p("0.0.0.0:4000")));
        assert!(!matches(&p("127.0.0.1:4001"), &p("127.0.0.1:4000")));
        assert!(!matches(&p("udp:127.0.0.1:4000"), &p("127.0.0.1:4000")));
        assert!(!matches(&p("[::1]:4000"), &p("127.0.0.1:4000")));
    }

    #[test]
    fn what_a_passed_socket_covers() {
        let p = |s| ListenAddr::parse(s).unwrap();
        // systemd's `ListenStream=8080`: `[::]:8080`, dual-stack.
        assert!(covers(&p("0.0.0.0:8080"), &p("[::]:8080"), true));
        assert!(covers(&p("127.0.0.1:8080"), &p("[::]:8080"), true));
        assert!(covers(&p("[::]:8080"), &p("[::]:8080"), true));
        assert!(!covers(&p("0.0.0.0:8080"), &p("[::]:8080"), false));
        assert!(!covers(&p("0.0.0.0:8080"), &p("[::]:8081"), true));
        assert!(!covers(&p("0.0.0.0:8080"), &p("[::1]:8080"), false));
        // Wildcards either side, within a family.
        assert!(covers(&p("127.0.0.1:80"), &p("0.0.0.0:80"), false));
        assert!(covers(&p("0.0.0.0:80"), &p("127.0.0.1:80"), false));
        assert!(!covers(&p("[::]:80"), &p("0.0.0.0:80"), false));
        assert!(covers(&p("127.0.0.1:0"), &p("127.0.0.1:4000"), false));
        assert!(!covers(&p("127.0.0.2:80"), &p("127.0.0.1:80"), false));
        assert!(!covers(&p("udp:0.0.0.0:80"), &p("0.0.0.0:80"), false));
        assert!(covers(
            &p("unix:/run/a.sock"),
            &p("unix:/run/a.sock"),
            false
        ));
        assert!(!covers(
            &p("unix:/run/a.sock"),
            &p("unix:/run/b.sock"),
            false
        ));
    }
}
