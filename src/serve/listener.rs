//! What [`Connections::accept`](super::drain::Connections::accept) and
//! [`serve()`](super::serve()) accept connections from.

use std::future::Future;
use std::io;

/// A listening socket to accept connections from: implemented for tokio's `TcpListener` (what
/// [`Listeners::take_tokio_tcp`](crate::Listeners::take_tokio_tcp) returns) and `UnixListener`
/// (`tokio::net::UnixListener::from_std(listeners.take_unix(name)?)`). Implement it for an
/// acceptor of your own if you need to.
pub trait Listener: Send + 'static {
    /// An accepted connection.
    type Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static;
    /// The peer address of an accepted connection.
    type Addr: Send + 'static;

    /// Accepts the next connection.
    fn accept(&mut self) -> impl Future<Output = io::Result<(Self::Io, Self::Addr)>> + Send;

    /// Which of the connections the previous generation hands over were accepted on this
    /// listener, to be resumed with it (see `hotexec::handoff::Sessions`): the listener's port
    /// or path. The default, for acceptors of your own, takes all of them.
    fn claim(&self) -> hotexec_runtime::handoff::Claim {
        hotexec_runtime::handoff::Claim::All
    }
}

impl Listener for tokio::net::TcpListener {
    type Io = tokio::net::TcpStream;
    type Addr = std::net::SocketAddr;

    /// Accepts a connection and sets `TCP_NODELAY` on it: a server writes each response in one
    /// go, and waiting for the peer's ACK before sending the tail only adds latency.
    async fn accept(&mut self) -> io::Result<(Self::Io, Self::Addr)> {
        let (stream, peer) = tokio::net::TcpListener::accept(self).await?;
        // Best effort: a connection that cannot take the option is still served.
        let _ = stream.set_nodelay(true);
        Ok((stream, peer))
    }

    fn claim(&self) -> hotexec_runtime::handoff::Claim {
        match self.local_addr() {
            Ok(a) => hotexec_runtime::handoff::Claim::TcpPort(a.port()),
            Err(_) => hotexec_runtime::handoff::Claim::All,
        }
    }
}

impl Listener for tokio::net::UnixListener {
    type Io = tokio::net::UnixStream;
    type Addr = tokio::net::unix::SocketAddr;

    async fn accept(&mut self) -> io::Result<(Self::Io, Self::Addr)> {
        tokio::net::UnixListener::accept(self).await
    }

    fn claim(&self) -> hotexec_runtime::handoff::Claim {
        match self
            .local_addr()
            .ok()
            .and_then(|a| a.as_pathname().map(Into::into))
        {
            Some(path) => hotexec_runtime::handoff::Claim::UnixPath(path),
            None => hotexec_runtime::handoff::Claim::All,
        }
    }
}
