//! A server that runs child processes of its own, as many do (a shell hook, an image converter),
//! and, like many, opens a metrics socket in its `init` before anything else.
//!
//! It shows what stays private to the server process: a program it spawns inherits neither the
//! listening sockets nor the hand-over variables (`LISTEN_*`, `HOTEXEC_READY_FD`), and the
//! runtime never adopts or closes an fd the application opened itself.
//!
//! ```text
//! HOTEXEC_PID_FILE=/tmp/spawner.pid cargo run --example spawner
//! curl 127.0.0.1:8081/          # pid=<pid>
//! curl 127.0.0.1:8081/spawn     # what `/bin/sh -c 'ls -l /proc/$$/fd; env'` sees
//! kill -USR2 $(cat /tmp/spawner.pid); curl 127.0.0.1:8081/spawn   # the same after an upgrade
//! ```
use std::io::{self, BufRead, BufReader, Write};
use std::net::{TcpStream, UdpSocket};
use std::process::Command;
use std::sync::OnceLock;

/// A statsd-style metrics socket, opened before the runtime starts.
static METRICS: OnceLock<UdpSocket> = OnceLock::new();

fn init() {
    if let Ok(s) = UdpSocket::bind("127.0.0.1:0") {
        let _ = METRICS.set(s);
    }
}

#[hotexec::main(drain_timeout = "5s", init = init)]
#[listen("127.0.0.1:8081", name = "http")]
fn main(listeners: hotexec::Listeners, shutdown: hotexec::Shutdown) -> io::Result<()> {
    let listener = listeners.take_tcp("http")?;
    eprintln!(
        "spawner: pid {} serving on {}",
        std::process::id(),
        listener.local_addr()?
    );
    while let Some((conn, _)) = shutdown.accept(&listener)? {
        std::thread::spawn(move || {
            if let Err(e) = serve(conn) {
                eprintln!("spawner: {e}");
            }
        });
    }
    Ok(())
}

/// One request per connection: `GET /` or `GET /spawn`.
fn serve(conn: TcpStream) -> io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    let mut line = String::new();
    while reader.read_line(&mut line)? > 2 {
        line.clear();
    }
    let pid = std::process::id();
    let body = match request.split_whitespace().nth(1) {
        Some("/spawn") => {
            let out = Command::new("/bin/sh")
                .args(["-c", "ls -l /proc/$$/fd; env"])
                .output()?;
            let metrics_open = METRICS.get().is_some_and(|s| s.local_addr().is_ok());
            format!(
                "pid={pid}\nmetrics_socket_open={metrics_open}\n{}",
                String::from_utf8_lossy(&out.stdout)
            )
        }
        _ => format!("pid={pid}\n"),
    };
    let mut out = conn;
    write!(
        out,
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}
