//! A server release that goes wrong in the way you choose, to see what hotexec does about it.
//!
//! ```text
//! cargo build --example http --example faulty
//! HOTEXEC_PID_FILE=/tmp/app.pid HOTEXEC_LISTEN_HTTP=127.0.0.1:8080 target/debug/examples/http &
//! cp target/debug/examples/faulty /tmp/app-next      # then point the running binary's path at it
//! FAULT=panic                  # panics before it reports ready: the upgrade fails, the old one serves on
//! FAULT=crash-after-ready=300  # reports ready, serves, then aborts 300 ms later: the old one rolls back
//! FAULT=abort-on-request       # serves until a request for /abort, then aborts
//! FAULT=fail-after-drain       # main returns an error once it stopped accepting (exit status 1)
//! FAULT=ready-on-file=PATH     # warms up until PATH exists (at most 60 s), then reports ready
//! FAULT=stop-then-ready=parent # sends SIGTERM to the generation that started it, then reports
//!                              # ready: a stop that reaches the old generation just before the
//!                              # hand-over (`=pidfile`: to the pid in HOTEXEC_PID_FILE, the keeper)
//! ```
//!
//! Without `FAULT` it is a plain server answering `pid=<pid>` on every request.
use std::io::{self, BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

#[hotexec::main(drain_timeout = "5s", ready = "manual")]
#[listen("127.0.0.1:8082", name = "http")]
fn main(listeners: hotexec::Listeners, shutdown: hotexec::Shutdown) -> io::Result<()> {
    let fault = std::env::var("FAULT").unwrap_or_default();
    if fault == "panic" {
        panic!("faulty: this release panics before it is ready");
    }
    let listener = listeners.take_tcp("http")?;
    if let Some(path) = fault.strip_prefix("ready-on-file=") {
        eprintln!(
            "faulty: pid {} warming up until {path} exists",
            std::process::id()
        );
        let deadline = Instant::now() + Duration::from_secs(60);
        while !std::path::Path::new(path).exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    if let Some(to) = fault.strip_prefix("stop-then-ready=") {
        stop_then_ready(to);
    }
    hotexec::ready();
    if let Some(ms) = fault.strip_prefix("crash-after-ready=") {
        let ms: u64 = ms.parse().unwrap_or(300);
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(ms));
            eprintln!("faulty: pid {} crashing now", std::process::id());
            std::process::abort();
        });
    }
    let abort_on_request = fault == "abort-on-request";
    while let Some((conn, _)) = shutdown.accept(&listener)? {
        std::thread::spawn(move || serve(conn, abort_on_request));
    }
    if fault == "fail-after-drain" {
        eprintln!("faulty: pid {} failing after the drain", std::process::id());
        return Err(io::Error::other(
            "faulty: this release fails once it stopped accepting",
        ));
    }
    Ok(())
}

/// A stop meant for the service, delivered to the generation that served until now (or to the
/// keeper, which forwards it there) a moment before this one reports ready: the race between a
/// stop and a hand-over, made to happen every time.
fn stop_then_ready(to: &str) {
    use nix::sys::signal::{Signal, kill};
    let target = match to {
        "pidfile" => std::env::var("HOTEXEC_PID_FILE")
            .ok()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .and_then(|s| s.trim().parse().ok())
            .expect("faulty: stop-then-ready=pidfile needs a pid file naming a pid"),
        _ => nix::unistd::getppid().as_raw(),
    };
    eprintln!(
        "faulty: pid {} sends SIGTERM to pid {target}, then reports ready",
        std::process::id()
    );
    kill(nix::unistd::Pid::from_raw(target), Signal::SIGTERM).expect("faulty: kill");
}

fn serve(conn: TcpStream, abort_on_request: bool) -> io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    if abort_on_request && line.starts_with("GET /abort ") {
        eprintln!("faulty: pid {} aborting on request", std::process::id());
        std::process::abort();
    }
    while reader.read_line(&mut line)? > 2 {
        line.clear();
    }
    let body = format!("pid={}\n", std::process::id());
    let mut out = conn;
    write!(
        out,
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}
