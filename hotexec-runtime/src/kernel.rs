//! What the kernel knows about this process and its sockets, read for the evidence of an
//! upgrade (`evidence/`) and for `hotexec status`: the network namespace's listen-queue drop
//! counters, the accept-queue length of a listener, this process's start time and the build
//! id of the running image.
//!
//! Every reader returns an error or `None` instead of guessing: evidence that the kernel could
//! not give is reported as missing (`null`), never as `0`.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::{Duration, SystemTime};

/// The kernel's counters of connections refused at a full accept queue, from
/// `/proc/net/netstat` (`TcpExt:` lines).
///
/// They count for the whole **network namespace** of the reading process, not for one socket
/// or one process: in a shared namespace (the host's, a pod's) other servers' drops count too,
/// and a server in a container is read from inside its own namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub(crate) struct ListenCounters {
    /// `TcpExtListenOverflows`: SYNs or final ACKs that arrived while a listener's accept queue
    /// was full.
    pub overflows: u64,
    /// `TcpExtListenDrops`: every connection dropped at a listener (overflows included).
    pub drops: u64,
}

impl ListenCounters {
    /// What happened between `self` (earlier) and `later`; a counter that went down (the
    /// namespace was re-created, a 32-bit counter wrapped) gives `None` rather than a lie.
    pub(crate) fn delta(self, later: ListenCounters) -> Option<ListenCounters> {
        Some(ListenCounters {
            overflows: later.overflows.checked_sub(self.overflows)?,
            drops: later.drops.checked_sub(self.drops)?,
        })
    }
}

/// Reads [`ListenCounters`] of the caller's network namespace.
pub(crate) fn listen_counters() -> io::Result<ListenCounters> {
    let path = "/proc/net/netstat";
    let text = std::fs::read_to_string(path)
        .map_err(|e| io::Error::new(e.kind(), format!("{path}: {e}")))?;
    parse_netstat(&text)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{path}: {e}")))
}

/// Parses the `TcpExt:` header and value lines of `/proc/net/netstat` (each protocol has a
/// line of names followed by a line of values, in the same order).
pub(crate) fn parse_netstat(text: &str) -> Result<ListenCounters, String> {
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        return Err("no TcpExt lines".into());
    };
    let mut overflows = None;
    let mut drops = None;
    for (name, value) in names
        .split_whitespace()
        .zip(values.split_whitespace())
        .skip(1)
    {
        let slot = match name {
            "ListenOverflows" => &mut overflows,
            "ListenDrops" => &mut drops,
            _ => continue,
        };
        *slot = Some(
            value
                .parse::<u64>()
                .map_err(|_| format!("TcpExt {name}: {value:?} is not a number"))?,
        );
    }
    match (overflows, drops) {
        (Some(overflows), Some(drops)) => Ok(ListenCounters { overflows, drops }),
        _ => Err("TcpExt has no ListenOverflows or no ListenDrops".into()),
    }
}

/// A listening socket's accept queue: connections the kernel has completed that nobody has
/// accepted yet, and the most it holds (the `listen(2)` backlog, capped at `somaxconn`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct AcceptQueue {
    /// Connections waiting in the queue now.
    pub len: u32,
    /// Its limit: one more than this many waiting and the next handshake is dropped.
    pub max: u32,
}

/// The accept queue of a listening TCP socket (IPv4 or IPv6), `None` for any other socket
/// (Unix, UDP, not listening).
///
/// Read with `getsockopt(TCP_INFO)`, where for a socket in `LISTEN` the kernel reports the
/// queue's length in `tcpi_unacked` and its limit in `tcpi_sacked` (`tcp_get_info()`, since
/// Linux 2.6.x). Chosen over the two other sources: the `rx_queue` column of
/// `/proc/net/tcp{,6}` (the same number, but found by scanning every socket of the namespace
/// for the inode — 10,000s of lines on a busy host, per listener, per `status`) and a
/// `sock_diag` netlink dump (the same scan, in binary). `TCP_INFO` asks about this one socket,
/// in O(1), whatever namespace the caller is in; the tests check it against `/proc/net/tcp`.
pub(crate) fn accept_queue(fd: BorrowedFd<'_>) -> Option<AcceptQueue> {
    // SAFETY: `tcp_info` is plain old data for which all-zero bytes are a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: `info` is a writable `tcp_info` of `len` bytes, as getsockopt(2) requires; the
    // kernel writes at most `len` bytes and stores the length it wrote in `len`. A closed or
    // non-socket fd only makes the call fail.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &mut len,
        )
    };
    // TCP_LISTEN in the kernel's `enum tcp_state` (include/net/tcp_states.h).
    const TCP_LISTEN: u8 = 10;
    // `tcpi_unacked` and `tcpi_sacked` end at byte 32 of the struct, in every kernel's layout.
    if rc != 0 || len < 32 || info.tcpi_state != TCP_LISTEN {
        return None;
    }
    Some(AcceptQueue {
        len: info.tcpi_unacked,
        max: info.tcpi_sacked,
    })
}

/// The accept queue of the listening TCP socket with `inode`, if this process holds it: for a
/// thread that holds no fd of the listeners (the control socket's), while the supervisor may
/// close its copies at any time. The fd is found in `/proc/self/fd` (this process's fds, not
/// the namespace's sockets), duplicated so it stays that socket while it is read, checked to be
/// that inode, and read with [`accept_queue`].
pub(crate) fn accept_queue_of_inode(inode: u64) -> Option<AcceptQueue> {
    use std::os::fd::{AsFd, FromRawFd, OwnedFd};
    let want = format!("socket:[{inode}]");
    for entry in std::fs::read_dir("/proc/self/fd").ok()?.flatten() {
        let Ok(n) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        match std::fs::read_link(entry.path()) {
            Ok(target) if target.as_os_str() == want.as_str() => {}
            _ => continue,
        }
        // SAFETY: F_DUPFD_CLOEXEC on a bare number: if it was closed meanwhile the call fails,
        // if it was reused the inode check below refuses it. A new fd is ours alone.
        let dup = unsafe { libc::fcntl(n, libc::F_DUPFD_CLOEXEC, 0) };
        if dup < 0 {
            continue;
        }
        // SAFETY: `dup` was just returned by fcntl and nothing else owns it.
        let dup = unsafe { OwnedFd::from_raw_fd(dup) };
        if socket_inode(dup.as_fd()) != Some(inode) {
            continue;
        }
        return accept_queue(dup.as_fd());
    }
    None
}

/// The inode of a socket (what `/proc/PID/fd` shows as `socket:[inode]`).
pub(crate) fn socket_inode(fd: BorrowedFd<'_>) -> Option<u64> {
    nix::sys::stat::fstat(fd).ok().map(|st| st.st_ino)
}

/// When this process started (from `/proc/self/stat`, in clock ticks since boot, and
/// `/proc/uptime`), as a time of the wall clock; `None` if either cannot be read.
pub(crate) fn process_start() -> Option<SystemTime> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may hold spaces and parentheses: fields are counted after
    // the last `)`. `starttime` is field 22, i.e. the 20th after the name.
    let after = &stat[stat.rfind(')')? + 1..];
    let ticks: u64 = after.split_whitespace().nth(19)?.parse().ok()?;
    // SAFETY: sysconf(3) reads a configuration value and touches no memory of ours.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz <= 0 {
        return None;
    }
    let uptime = std::fs::read_to_string("/proc/uptime").ok()?;
    let up: f64 = uptime.split_whitespace().next()?.parse().ok()?;
    let since_start = up - ticks as f64 / hz as f64;
    SystemTime::now().checked_sub(Duration::from_secs_f64(since_start.max(0.0)))
}

/// The GNU build id of the running executable (`.note.gnu.build-id`, what `readelf -n`,
/// `file` and debuggers show), in hex; `None` if it was linked without one.
///
/// Read from the program headers of the image mapped in memory (`dl_iterate_phdr`), not from
/// the file on disk: after an upgrade by rename the file at the path is another build, while
/// this is the one running.
pub(crate) fn build_id() -> Option<String> {
    unsafe extern "C" fn first_object(
        info: *mut libc::dl_phdr_info,
        _size: libc::size_t,
        data: *mut libc::c_void,
    ) -> libc::c_int {
        // SAFETY: dl_iterate_phdr passes a valid `dl_phdr_info` for the duration of the call,
        // whose `dlpi_phdr` points at `dlpi_phnum` program headers of an object mapped in
        // this process; `data` is the `Option<String>` that `build_id` passed, alive and not
        // otherwise borrowed during the call.
        unsafe {
            let info = &*info;
            let out = &mut *data.cast::<Option<String>>();
            let phdrs = std::slice::from_raw_parts(info.dlpi_phdr, info.dlpi_phnum as usize);
            for ph in phdrs.iter().filter(|p| p.p_type == libc::PT_NOTE) {
                let start = (info.dlpi_addr as usize).wrapping_add(ph.p_vaddr as usize);
                let notes = std::slice::from_raw_parts(start as *const u8, ph.p_memsz as usize);
                if let Some(id) = gnu_build_id(notes) {
                    *out = Some(id);
                    break;
                }
            }
        }
        // The first object is the executable itself: stop there.
        1
    }
    let mut out: Option<String> = None;
    // SAFETY: the callback only reads the headers the loader hands it (see there) and writes
    // `out`, which outlives the call.
    unsafe { libc::dl_iterate_phdr(Some(first_object), (&raw mut out).cast()) };
    out
}

/// The `NT_GNU_BUILD_ID` note among ELF notes (`namesz`, `descsz`, `type`, name and desc each
/// padded to 4 bytes), as hex.
fn gnu_build_id(mut notes: &[u8]) -> Option<String> {
    const NT_GNU_BUILD_ID: u32 = 3;
    let word = |b: &[u8], at: usize| -> Option<u32> {
        Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
    };
    let pad = |n: usize| n.div_ceil(4) * 4;
    while notes.len() >= 12 {
        let namesz = word(notes, 0)? as usize;
        let descsz = word(notes, 4)? as usize;
        let kind = word(notes, 8)?;
        let name = notes.get(12..12 + namesz)?;
        let desc_at = 12 + pad(namesz);
        let desc = notes.get(desc_at..desc_at + descsz)?;
        if kind == NT_GNU_BUILD_ID && name == b"GNU\0" {
            return Some(desc.iter().map(|b| format!("{b:02x}")).collect());
        }
        notes = notes.get(desc_at + pad(descsz)..)?;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::os::fd::{AsFd, FromRawFd, OwnedFd};
    use std::time::Instant;

    #[test]
    fn netstat_parses_the_two_counters_and_refuses_garbage() {
        let text = "TcpExt: SyncookiesSent ListenOverflows ListenDrops TW\n\
                    TcpExt: 1 7 9 3\n\
                    IpExt: InNoRoutes\nIpExt: 0\n";
        assert_eq!(
            parse_netstat(text),
            Ok(ListenCounters {
                overflows: 7,
                drops: 9
            })
        );
        assert!(parse_netstat("").is_err());
        assert!(parse_netstat("TcpExt: ListenOverflows\n").is_err());
        assert!(parse_netstat("TcpExt: ListenOverflows ListenDrops\nTcpExt: 1 x\n").is_err());
        assert!(parse_netstat("TcpExt: ListenOverflows\nTcpExt: 1\n").is_err());
        let a = ListenCounters {
            overflows: 5,
            drops: 6,
        };
        let b = ListenCounters {
            overflows: 7,
            drops: 6,
        };
        assert_eq!(
            a.delta(b),
            Some(ListenCounters {
                overflows: 2,
                drops: 0
            })
        );
        assert_eq!(b.delta(a), None);
        // The real file of this namespace parses.
        listen_counters().expect("/proc/net/netstat");
    }

    /// A listener with `backlog` and SOCK_CLOEXEC, bound to 127.0.0.1 port 0.
    fn listener(backlog: i32) -> (OwnedFd, SocketAddr) {
        use nix::sys::socket::*;
        let fd = socket(
            AddressFamily::Inet,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap();
        bind(fd.as_raw_fd(), &SockaddrIn::new(127, 0, 0, 1, 0)).unwrap();
        listen(&fd, Backlog::new(backlog).unwrap()).unwrap();
        let addr: SockaddrIn = getsockname(fd.as_raw_fd()).unwrap();
        (fd, SocketAddr::from(std::net::SocketAddrV4::from(addr)))
    }

    /// Starts a non-blocking connect (the handshake goes on in the kernel).
    fn connect_nb(addr: SocketAddr) -> OwnedFd {
        use nix::sys::socket::*;
        let fd = socket(
            AddressFamily::Inet,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )
        .unwrap();
        let SocketAddr::V4(v4) = addr else { panic!() };
        match connect(fd.as_raw_fd(), &SockaddrIn::from(v4)) {
            Ok(()) | Err(nix::errno::Errno::EINPROGRESS) => {}
            Err(e) => panic!("connect: {e}"),
        }
        fd
    }

    /// The `rx_queue` column of `/proc/net/tcp` for the socket with `inode` (the accept queue
    /// of a listener): the other source, to check `TCP_INFO` against.
    fn proc_rx_queue(inode: u64) -> Option<u32> {
        let text = std::fs::read_to_string("/proc/net/tcp").ok()?;
        text.lines().skip(1).find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.get(9)?.parse::<u64>().ok()? != inode {
                return None;
            }
            let (_tx, rx) = f.get(4)?.split_once(':')?;
            u32::from_str_radix(rx, 16).ok()
        })
    }

    fn wait_until<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(v) = f() {
                return v;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Fill a real backlog: the queue length follows the clients one by one, agrees with
    /// `/proc/net/tcp`, stops at its limit, and the namespace's overflow and drop counters
    /// count the handshakes dropped past it.
    #[test]
    fn a_filled_backlog_is_seen_in_the_queue_and_the_counters() {
        let (fd, addr) = listener(2);
        let inode = nix::sys::stat::fstat(&fd).unwrap().st_ino;
        let q = accept_queue(fd.as_fd()).expect("a listening TCP socket");
        assert_eq!(q, AcceptQueue { len: 0, max: 2 });
        let before = listen_counters().unwrap();
        let mut clients = Vec::new();
        // The queue holds max + 1 (the kernel drops when it holds *more* than the backlog).
        for n in 1..=3u32 {
            clients.push(connect_nb(addr));
            wait_until(&format!("{n} connections queued"), || {
                (accept_queue(fd.as_fd())?.len == n).then_some(())
            });
            assert_eq!(proc_rx_queue(inode), Some(n), "/proc/net/tcp disagrees");
        }
        // Two more: the queue is full, their handshakes are dropped and counted.
        clients.push(connect_nb(addr));
        clients.push(connect_nb(addr));
        let delta = wait_until("the drops to be counted", || {
            let d = before.delta(listen_counters().ok()?)?;
            (d.overflows >= 2 && d.drops >= 2).then_some(d)
        });
        assert!(delta.drops >= delta.overflows, "{delta:?}");
        assert_eq!(accept_queue(fd.as_fd()).unwrap().len, 3);
        // Accepting one makes room for one.
        let one = nix::sys::socket::accept(fd.as_raw_fd()).unwrap();
        // SAFETY: accept returned a new fd that nothing else owns.
        drop(unsafe { OwnedFd::from_raw_fd(one) });
        assert!(accept_queue(fd.as_fd()).unwrap().len <= 3);
    }

    #[test]
    fn the_queue_is_found_by_inode_among_our_fds() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let _c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let inode = socket_inode(l.as_fd()).unwrap();
        wait_until("the client queued", || {
            (accept_queue_of_inode(inode)?.len == 1).then_some(())
        });
        drop(l);
        assert_eq!(accept_queue_of_inode(inode), None, "a closed listener");
        assert_eq!(accept_queue_of_inode(u64::MAX), None);
    }

    #[test]
    fn only_tcp_listeners_have_an_accept_queue() {
        let std_listener = TcpListener::bind("127.0.0.1:0").unwrap();
        assert!(accept_queue(std_listener.as_fd()).is_some());
        let conn = TcpStream::connect(std_listener.local_addr().unwrap()).unwrap();
        assert_eq!(accept_queue(conn.as_fd()), None, "a connected socket");
        let v6 = TcpListener::bind("[::1]:0");
        if let Ok(v6) = v6 {
            assert_eq!(accept_queue(v6.as_fd()).map(|q| q.len), Some(0));
        }
        let (unix, _) = std::os::unix::net::UnixStream::pair().unwrap();
        assert_eq!(accept_queue(unix.as_fd()), None);
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        assert_eq!(accept_queue(udp.as_fd()), None);
        let file = std::fs::File::open("/proc/self/stat").unwrap();
        assert_eq!(accept_queue(file.as_fd()), None);
    }

    #[test]
    fn start_time_and_build_id_of_this_process() {
        let start = process_start().expect("start time");
        let age = SystemTime::now()
            .duration_since(start)
            .expect("in the past");
        assert!(age < Duration::from_secs(24 * 3600), "{age:?}");
        // The test binary is linked like any other: where readelf shows a build id, so must we.
        let exe = std::fs::read("/proc/self/exe").unwrap();
        let on_disk = find_build_id_in_file(&exe);
        assert_eq!(build_id(), on_disk);
    }

    /// The build id by scanning the file for the note (independent of the reader above).
    fn find_build_id_in_file(elf: &[u8]) -> Option<String> {
        let pos = elf
            .windows(16)
            .position(|w| w[0..4] == 4u32.to_ne_bytes() && w[8..16] == *b"\x03\0\0\0GNU\0")?;
        let n = u32::from_ne_bytes(elf[pos + 4..pos + 8].try_into().unwrap()) as usize;
        Some(
            elf[pos + 16..pos + 16 + n]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
        )
    }

    #[test]
    fn notes_with_garbage_give_none() {
        assert_eq!(gnu_build_id(&[]), None);
        assert_eq!(gnu_build_id(&[0xff; 40]), None);
        let mut note = Vec::new();
        note.extend(4u32.to_ne_bytes());
        note.extend(2u32.to_ne_bytes());
        note.extend(3u32.to_ne_bytes());
        note.extend(b"GNU\0\xab\xcd\0\0");
        assert_eq!(gnu_build_id(&note), Some("abcd".into()));
        note.truncate(17);
        assert_eq!(gnu_build_id(&note), None);
    }
}
