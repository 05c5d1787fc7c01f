//! One server, every socket kind: a TCP listener (HTTP, `GET /` → `pid=<pid>`), a Unix stream
//! listener (each line is echoed back as `pid=<pid> <line>`) and a UDP socket (each datagram is
//! answered with `pid=<pid> <datagram>`). The pid says which generation answered.
//!
//! ```text
//! HOTEXEC_PID_FILE=/tmp/multi.pid cargo run --example multi
//! curl 127.0.0.1:8081/                                # pid=…
//! curl 127.0.0.1:8083/ ; curl '[::1]:8083/'           # the dual-stack listener, both families
//! echo hi | socat - UNIX-CONNECT:/tmp/hotexec-multi.sock   # pid=… hi
//! echo hi | socat - UDP:127.0.0.1:5300                 # pid=… hi
//! kill -USR2 $(cat /tmp/multi.pid)                    # all three move to the new process
//! ```
//!
//! The Unix socket's path survives upgrades (the old generation never removes it) and is removed
//! on a final stop. UDP has no connections to drain: both generations read the one shared socket
//! until the old one's shutdown resolves, so each datagram is answered by exactly one of them.
#[path = "support/logging.rs"]
mod logging;

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

#[hotexec::main(drain_timeout = "10s", init = logging::init_tracing)]
#[listen("127.0.0.1:8081", name = "tcp")]
#[listen("unix:/tmp/hotexec-multi.sock", name = "unix", mode = 0o660)]
#[listen("udp:127.0.0.1:5300", name = "udp")]
// Dual-stack (IPv4 clients too), and open to other SO_REUSEPORT sockets on the same port.
#[listen(
    "[::]:8083",
    name = "dual",
    v6only = false,
    reuseport = true,
    backlog = 256
)]
async fn main(listeners: hotexec::Listeners, shutdown: hotexec::Shutdown) -> std::io::Result<()> {
    let tcp = listeners.take_tokio_tcp("tcp")?;
    let unix = listeners.take_unix("unix")?;
    unix.set_nonblocking(true)?;
    let unix = tokio::net::UnixListener::from_std(unix)?;
    let udp = listeners.take_udp("udp")?;
    udp.set_nonblocking(true)?;
    let udp = tokio::net::UdpSocket::from_std(udp)?;
    let dual = listeners.take_tokio_tcp("dual")?;
    let pid = std::process::id();
    tracing::info!(pid, "multi example serving");
    let mut shutdown = shutdown;
    let mut buf = vec![0u8; 65536];
    let mut tasks = tokio::task::JoinSet::new();
    let reason = loop {
        tokio::select! {
            reason = &mut shutdown => break reason,
            Ok((s, _)) = tcp.accept() => { tasks.spawn(http(s, pid)); }
            Ok((s, _)) = dual.accept() => { tasks.spawn(http(s, pid)); }
            Ok((s, _)) = unix.accept() => {
                tasks.spawn(async move {
                    let (r, mut w) = s.into_split();
                    let mut lines = BufReader::new(r).lines();
                    while let Ok(Some(line)) = lines.next_line().await {
                        if w.write_all(format!("pid={pid} {line}\n").as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
            Ok((n, peer)) = udp.recv_from(&mut buf) => {
                let mut reply = format!("pid={pid} ").into_bytes();
                reply.extend_from_slice(&buf[..n]);
                let _ = udp.send_to(&reply, peer).await;
            }
        }
    };
    tracing::info!(?reason, "stopped accepting; finishing open sessions");
    drop((tcp, dual, unix, udp));
    // Unix sessions are long-lived: give them a moment, then let the drain deadline decide.
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    Ok(())
}

/// Reads the request head, answers `pid=<pid>`, closes.
async fn http(mut s: tokio::net::TcpStream, pid: u32) {
    let mut head = Vec::new();
    let mut b = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut b).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&b[..n]),
        }
    }
    let body = format!("pid={pid}\n");
    let resp = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = s.write_all(resp.as_bytes()).await;
}
