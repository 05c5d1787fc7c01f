//! A new generation that knows nothing of hotexec: a plain std server that takes its listener
//! with the third-party `listenfd` crate (`LISTEN_FDS`/`LISTEN_PID`, the systemd convention) and
//! reports ready with a hand-written `sd_notify("READY=1")` — what any socket-activation-aware
//! program does. Serves `GET /` → `pid=<pid>` like the http example.
//!
//! A hotexec server upgraded to this binary hands its listener over with no request lost: the
//! old generation gives the new one a private `NOTIFY_SOCKET` and takes `READY=1` from the new
//! pid as the readiness report (see `notify.rs`). This binary itself cannot be upgraded again
//! (it does not handle `SIGUSR2`).
use std::io::{Read, Write};
use std::net::TcpListener;

/// `sd_notify(3)` in ten lines: one datagram to `$NOTIFY_SOCKET` (a path, or `@abstract`).
fn sd_notify(state: &str) -> std::io::Result<()> {
    use std::os::linux::net::SocketAddrExt;
    let Some(addr) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(());
    };
    let sock = std::os::unix::net::UnixDatagram::unbound()?;
    let bytes = std::os::unix::ffi::OsStrExt::as_bytes(addr.as_os_str());
    if let Some(name) = bytes.strip_prefix(b"@") {
        let sa = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
        sock.send_to_addr(state.as_bytes(), &sa)?;
    } else {
        sock.send_to(state.as_bytes(), &addr)?;
    }
    Ok(())
}

fn main() -> std::io::Result<()> {
    let mut fds = listenfd::ListenFd::from_env();
    let listener: TcpListener = match fds.take_tcp_listener(0)? {
        Some(l) => l,
        None => TcpListener::bind(
            std::env::var("LISTENFD_SERVER_ADDR").unwrap_or_else(|_| "127.0.0.1:8082".into()),
        )?,
    };
    let pid = std::process::id();
    eprintln!(
        "listenfd_server {pid} serving on {}",
        listener.local_addr()?
    );
    sd_notify("READY=1")?;
    loop {
        let Some(mut s) = accept(&listener)? else {
            continue;
        };
        std::thread::spawn(move || {
            let mut head = Vec::new();
            let mut b = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut b) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => head.extend_from_slice(&b[..n]),
                }
            }
            let body = format!("pid={pid}\n");
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        });
    }
}

/// Accepts whether or not the socket is non-blocking, without changing that: `O_NONBLOCK`
/// belongs to the open file description, which this process shares with the previous
/// generation until it has drained. Clearing it here (`set_nonblocking(false)`) would make the
/// old generation's event loop block inside `accept(2)` and keep taking connections after it
/// was told to stop.
fn accept(listener: &TcpListener) -> std::io::Result<Option<std::net::TcpStream>> {
    use std::os::fd::AsRawFd;
    let mut pfd = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `pfd` is one valid pollfd that lives for the call.
    unsafe { libc::poll(&mut pfd, 1, -1) };
    match listener.accept() {
        Ok((s, _)) => {
            s.set_nonblocking(false)?;
            Ok(Some(s))
        }
        // The other generation took it, or the client left.
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock
                    | std::io::ErrorKind::Interrupted
                    | std::io::ErrorKind::ConnectionAborted
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}
