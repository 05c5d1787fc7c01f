//! A notify socket like systemd's, to see what a server tells its service manager and which
//! pid told it.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::time::{Duration, Instant};

/// A notify socket like systemd's: bound by the test, credentials passed with each datagram.
pub struct NotifySocket {
    pub sock: UnixDatagram,
    /// The value for `NOTIFY_SOCKET`.
    pub env: String,
}

impl NotifySocket {
    pub fn at_path(path: &Path) -> NotifySocket {
        let sock = UnixDatagram::bind(path).unwrap();
        Self::finish(sock, path.to_string_lossy().into_owned())
    }

    pub fn abstract_name(tag: &str) -> NotifySocket {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("hotexec-test-{tag}-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let sock = UnixDatagram::bind_addr(&addr).unwrap();
        Self::finish(sock, format!("@{name}"))
    }

    pub fn finish(sock: UnixDatagram, env: String) -> NotifySocket {
        nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::PassCred, &true).unwrap();
        sock.set_nonblocking(true).unwrap();
        NotifySocket { sock, env }
    }

    /// The next datagram and its sender's pid, waiting up to `timeout`.
    pub fn next(&self, timeout: Duration) -> Option<(String, u32)> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut buf = [0u8; 4096];
            let mut cmsg = nix::cmsg_space!(nix::sys::socket::UnixCredentials);
            let mut iov = [std::io::IoSliceMut::new(&mut buf)];
            match nix::sys::socket::recvmsg::<()>(
                std::os::fd::AsRawFd::as_raw_fd(&self.sock),
                &mut iov,
                Some(&mut cmsg),
                nix::sys::socket::MsgFlags::MSG_DONTWAIT,
            ) {
                Ok(msg) => {
                    let pid = msg
                        .cmsgs()
                        .unwrap()
                        .find_map(|c| match c {
                            nix::sys::socket::ControlMessageOwned::ScmCredentials(cr) => {
                                Some(cr.pid() as u32)
                            }
                            _ => None,
                        })
                        .expect("SO_PASSCRED gives every datagram its sender");
                    let n = msg.bytes;
                    return Some((String::from_utf8_lossy(&buf[..n]).into_owned(), pid));
                }
                Err(nix::errno::Errno::EAGAIN) => {
                    if Instant::now() > deadline {
                        return None;
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => panic!("recvmsg: {e}"),
            }
        }
    }

    pub fn expect(&self, what: &str) -> (String, u32) {
        self.next(Duration::from_secs(10))
            .unwrap_or_else(|| panic!("no sd_notify message: expected {what}"))
    }
}
