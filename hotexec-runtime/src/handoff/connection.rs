//! A connection the previous generation handed over, as the application receives it: the
//! socket, the bytes read but not processed, the state, and its conversions into streams.

use std::fmt;
use std::os::fd::OwnedFd;
use std::path::PathBuf;

use super::channel::Family;
#[cfg(feature = "serde")]
use super::error::HandoffError;

/// A connection handed over by the previous generation, now this generation's: resume serving
/// it where the previous one stopped.
pub struct Connection {
    /// The connection's socket (`CLOEXEC`; blocking mode as the previous generation left it).
    pub fd: OwnedFd,
    /// What it is.
    pub family: Family,
    /// Bytes the previous generation had read from it but not processed: they come first.
    pub unread: Vec<u8>,
    /// The application's state for it, as the previous generation gave it.
    pub state: Vec<u8>,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("fd", &self.fd)
            .field("family", &self.family)
            .field("unread", &self.unread.len())
            .field("state", &self.state.len())
            .finish()
    }
}

impl Connection {
    /// The local port of a TCP connection: the port of the listener it was accepted on.
    pub fn local_port(&self) -> Option<u16> {
        use nix::sys::socket::{SockaddrLike, SockaddrStorage, getsockname};
        let addr: SockaddrStorage = getsockname(std::os::fd::AsRawFd::as_raw_fd(&self.fd)).ok()?;
        match addr.family()? {
            nix::sys::socket::AddressFamily::Inet => addr.as_sockaddr_in().map(|a| a.port()),
            nix::sys::socket::AddressFamily::Inet6 => addr.as_sockaddr_in6().map(|a| a.port()),
            _ => None,
        }
    }

    /// The local path of a Unix connection: the path of the listener it was accepted on.
    pub fn local_path(&self) -> Option<PathBuf> {
        use nix::sys::socket::{SockaddrStorage, getsockname};
        let addr: SockaddrStorage = getsockname(std::os::fd::AsRawFd::as_raw_fd(&self.fd)).ok()?;
        addr.as_unix_addr()?.path().map(PathBuf::from)
    }

    /// The state as the serde type the previous generation sent with
    /// [`Handoff::send_serde`](super::Handoff::send_serde) (feature `serde`).
    #[cfg(feature = "serde")]
    pub fn state_as<T: serde::de::DeserializeOwned>(&self) -> Result<T, HandoffError> {
        super::error::decode_state(&self.state)
    }

    /// The socket as a std `TcpStream`; the connection given back (`Err`) if it is not TCP.
    pub fn into_tcp(self) -> Result<(std::net::TcpStream, Vec<u8>, Vec<u8>), Connection> {
        match self.family {
            Family::Tcp => Ok((self.fd.into(), self.unread, self.state)),
            Family::Unix => Err(self),
        }
    }

    /// The socket as a std `UnixStream`; the connection given back (`Err`) if it is not one.
    pub fn into_unix(
        self,
    ) -> Result<(std::os::unix::net::UnixStream, Vec<u8>, Vec<u8>), Connection> {
        match self.family {
            Family::Unix => Ok((self.fd.into(), self.unread, self.state)),
            Family::Tcp => Err(self),
        }
    }

    /// The socket as a `tokio::net::TcpStream` (made non-blocking), inside a tokio runtime.
    /// On failure — not a TCP connection, no runtime — the connection comes back in the error,
    /// untouched: it is this generation's, and nobody else can serve it any more (see
    /// [`IntoStreamError::conn`] for the one rare exception).
    #[cfg(feature = "tokio")]
    pub fn into_tokio_tcp(
        self,
    ) -> Result<(tokio::net::TcpStream, Vec<u8>, Vec<u8>), IntoStreamError> {
        self.into_tokio(Family::Tcp, |fd| {
            tokio::net::TcpStream::from_std(std::net::TcpStream::from(fd))
        })
    }

    /// The socket as a `tokio::net::UnixStream` (made non-blocking), inside a tokio runtime;
    /// as [`into_tokio_tcp`](Self::into_tokio_tcp) on failure.
    #[cfg(feature = "tokio")]
    pub fn into_tokio_unix(
        self,
    ) -> Result<(tokio::net::UnixStream, Vec<u8>, Vec<u8>), IntoStreamError> {
        self.into_tokio(Family::Unix, |fd| {
            tokio::net::UnixStream::from_std(std::os::unix::net::UnixStream::from(fd))
        })
    }

    #[cfg(feature = "tokio")]
    fn into_tokio<T>(
        self,
        family: Family,
        register: impl FnOnce(OwnedFd) -> std::io::Result<T>,
    ) -> Result<(T, Vec<u8>, Vec<u8>), IntoStreamError> {
        use std::io::{Error, ErrorKind};
        if self.family != family {
            let e = Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "the handed-off connection is {:?}, not {family:?}",
                    self.family
                ),
            );
            return Err(IntoStreamError {
                conn: Some(self),
                error: e,
            });
        }
        if tokio::runtime::Handle::try_current().is_err() {
            let e = Error::other("not inside a tokio runtime");
            return Err(IntoStreamError {
                conn: Some(self),
                error: e,
            });
        }
        if let Err(e) = rustix::io::ioctl_fionbio(&self.fd, true) {
            return Err(IntoStreamError {
                conn: Some(self),
                error: e.into(),
            });
        }
        // tokio closes what it fails to register (epoll_ctl: ENOMEM, a full watch limit): a
        // copy keeps the connection through that, when an fd is free for it (at the fd limit,
        // where registration needs none, it goes without).
        let spare = self.fd.try_clone().ok();
        let Connection {
            fd,
            family,
            unread,
            state,
        } = self;
        match register(fd) {
            Ok(s) => Ok((s, unread, state)),
            Err(error) => Err(IntoStreamError {
                conn: spare.map(|fd| Connection {
                    fd,
                    family,
                    unread,
                    state,
                }),
                error,
            }),
        }
    }
}

/// A handed-off connection that could not be converted as asked (see
/// [`Connection::into_tokio_tcp`]): the connection, untouched, and why.
#[cfg(feature = "tokio")]
#[derive(Debug)]
pub struct IntoStreamError {
    /// The connection, still this generation's. `None` only when tokio could not register it
    /// (`epoll_ctl` failed: out of memory, or the epoll watch limit) and no fd was free for a
    /// copy to keep it through that: tokio closed it.
    pub conn: Option<Connection>,
    /// Why it could not be converted.
    pub error: std::io::Error,
}

#[cfg(feature = "tokio")]
impl fmt::Display for IntoStreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "handed-off connection not converted: {}", self.error)
    }
}

#[cfg(feature = "tokio")]
impl std::error::Error for IntoStreamError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}
