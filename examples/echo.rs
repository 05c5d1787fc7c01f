//! A sync, std-only TCP echo server that upgrades without dropping a connection.
//!
//! ```text
//! HOTEXEC_PID_FILE=/tmp/echo.pid cargo run --example echo
//! nc 127.0.0.1 9999                  # type a line, get it back
//! kill -USR2 $(cat /tmp/echo.pid)    # new process takes over; open sessions finish on the old one
//! ```
use std::io::{self, BufRead, BufReader, Write};
use std::net::TcpStream;
use std::thread;

#[hotexec::main(drain_timeout = "10s")]
#[listen("127.0.0.1:9999", name = "echo")]
fn main(listeners: hotexec::Listeners, shutdown: hotexec::Shutdown) -> io::Result<()> {
    let listener = listeners.take_tcp("echo")?;
    eprintln!(
        "echo: pid {} serving on {}",
        std::process::id(),
        listener.local_addr()?
    );
    let mut sessions = Vec::new();
    // `shutdown.accept` returns None once a new generation is ready (or on SIGTERM/SIGINT).
    while let Some((conn, _peer)) = shutdown.accept(&listener)? {
        sessions.retain(|s: &thread::JoinHandle<()>| !s.is_finished());
        sessions.push(thread::spawn(move || {
            if let Err(e) = echo(conn) {
                eprintln!("echo: session ended: {e}");
            }
        }));
    }
    drop(listener);
    eprintln!(
        "echo: pid {} draining {} session(s)",
        std::process::id(),
        sessions.len()
    );
    for s in sessions {
        let _ = s.join();
    }
    Ok(())
}

/// Echoes lines until the client closes.
fn echo(conn: TcpStream) -> io::Result<()> {
    let mut out = conn.try_clone()?;
    for line in BufReader::new(conn).lines() {
        let line = line?;
        writeln!(out, "{line}")?;
    }
    Ok(())
}
