//! The `Listeners` handle given to `main`.

use std::collections::BTreeMap;
use std::io;
use std::net::{TcpListener, UdpSocket};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixListener;
use std::sync::{Arc, Mutex};

use crate::syntax::ListenAddr;

struct Entry {
    addr: ListenAddr,
    fd: Option<OwnedFd>,
    inherited: bool,
}

/// The application's listening sockets, by name: inherited from the previous generation or
/// bound fresh. Each is handed out once.
///
/// The runtime keeps its own copy of every socket to pass to the next generation, so dropping
/// a listener in `main` (when shutdown resolves) stops this process accepting without closing
/// the socket for the process that took over. On a final stop (SIGTERM, SIGINT) the runtime
/// closes its copies, and those `main` never took, as soon as [`Shutdown`](crate::Shutdown)
/// resolves: once `main` drops the listeners it took, the socket is closed and new clients are
/// refused at once (`ECONNREFUSED`) rather than accepted by the kernel and reset at exit. A
/// socket a service manager passed in (systemd socket activation) stays open in the service
/// manager, which holds its own copy.
#[derive(Clone)]
pub struct Listeners {
    inner: Arc<Mutex<BTreeMap<String, Entry>>>,
}

impl std::fmt::Debug for Listeners {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        f.debug_map()
            .entries(map.iter().map(|(k, e)| (k, e.addr.to_string())))
            .finish()
    }
}

impl Listeners {
    pub(crate) fn new(entries: Vec<(String, ListenAddr, OwnedFd, bool)>) -> Listeners {
        let map = entries
            .into_iter()
            .map(|(name, addr, fd, inherited)| {
                (
                    name,
                    Entry {
                        addr,
                        fd: Some(fd),
                        inherited,
                    },
                )
            })
            .collect();
        Listeners {
            inner: Arc::new(Mutex::new(map)),
        }
    }

    fn take(&self, name: &str, kind: &'static str) -> io::Result<OwnedFd> {
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        // The names are listed only for the error: building the list on every call made
        // taking n listeners O(n²) allocations (60 ms at 1,000 listeners, all before ready).
        if !map.contains_key(name) {
            let known: Vec<&str> = map.keys().map(String::as_str).collect();
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "no listener named {name:?}: declared are {}",
                    if known.is_empty() {
                        "none".into()
                    } else {
                        known.join(", ")
                    }
                ),
            ));
        }
        let entry = map.get_mut(name).expect("checked above");
        if entry.addr.kind() != kind {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("listener {name:?} is {}, not a {kind} listener", entry.addr),
            ));
        }
        entry.fd.take().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("listener {name:?} was already taken"),
            )
        })
    }

    /// Takes the TCP listener named `name` (blocking mode unless inherited from a generation
    /// that made it non-blocking: the flag belongs to the shared socket).
    pub fn take_tcp(&self, name: &str) -> io::Result<TcpListener> {
        self.take(name, "tcp").map(TcpListener::from)
    }

    /// Takes the UDP socket named `name`.
    pub fn take_udp(&self, name: &str) -> io::Result<UdpSocket> {
        self.take(name, "udp").map(UdpSocket::from)
    }

    /// Takes the Unix stream listener named `name`.
    pub fn take_unix(&self, name: &str) -> io::Result<UnixListener> {
        self.take(name, "unix").map(UnixListener::from)
    }

    /// Takes the TCP listener named `name` as a non-blocking `tokio::net::TcpListener`.
    /// Must be called inside a tokio runtime (as in an `async fn main`).
    #[cfg(feature = "tokio")]
    pub fn take_tokio_tcp(&self, name: &str) -> io::Result<tokio::net::TcpListener> {
        let l = self.take_tcp(name)?;
        l.set_nonblocking(true)?;
        tokio::net::TcpListener::from_std(l)
    }

    /// The address `name` is bound to (with a port 0 resolved to the real port).
    pub fn local_addr(&self, name: &str) -> Option<ListenAddr> {
        let map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        map.get(name).map(|e| e.addr.clone())
    }

    /// Whether `name` was inherited from a previous generation (or a socket activator) rather
    /// than bound by this process.
    pub fn is_inherited(&self, name: &str) -> bool {
        let map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        map.get(name).is_some_and(|e| e.inherited)
    }

    /// Closes every listener `main` has not taken (a final stop: nobody will accept on them).
    pub(crate) fn close_untaken(&self) -> usize {
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        map.values_mut().filter_map(|e| e.fd.take()).count()
    }

    /// Names of all declared listeners.
    pub fn names(&self) -> Vec<String> {
        let map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        map.keys().cloned().collect()
    }
}
