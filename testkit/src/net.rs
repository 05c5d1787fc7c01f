//! Addresses for servers under test: never a fixed port.

use std::net::{SocketAddr, TcpListener};

/// A free port on 127.0.0.1 (bound and released; the kernel does not hand it out again soon).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap_or_else(|e| panic!("binding 127.0.0.1:0: {e}"))
        .port()
}

/// `127.0.0.1:<a free port>`.
pub fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}
