//! Benchmark row for connection hand-off: how long the old generation takes to hand N
//! established connections to the new one, per connection and in total (N up to 10,000).
//!
//! ```text
//! cargo build --release --examples && target/release/examples/bench_handoff [N ...]
//! ```
//!
//! For each N it starts the `line` example (built next to this binary), opens N client
//! connections and has each answered once, then sends SIGUSR2 and measures:
//! - **hand-off**: in the old generation, from the moment it stops (the new one is ready) until
//!   every session has been handed over and acknowledged — the `all sessions handed off` log
//!   line (`elapsed_us`);
//! - **last answer**: at the clients, from the signal until all N have been answered by the new
//!   pid (includes starting the new generation).
//!
//! Every process it starts is killed and reaped on exit; every wait has a deadline.
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use hotexec_testkit::app::App;
use hotexec_testkit::limits::raise_nofile;
use hotexec_testkit::reap::subreaper;
use hotexec_testkit::wait::poll;

/// Starts the `line` example (built next to this binary) on a free port; its generations are
/// killed and reaped when the returned `App` is dropped.
fn start_line() -> App {
    App::start(
        "line",
        "HOTEXEC_LISTEN_LINE",
        &[
            ("HOTEXEC_KEEPER", "0"),
            ("HOTEXEC_READY_TIMEOUT", "30s"),
            ("HOTEXEC_DRAIN_TIMEOUT", "300s"),
        ],
    )
}

/// Polls `f` every millisecond (the figures are in milliseconds) until it returns Some.
fn wait_for<T>(timeout: Duration, what: &str, f: impl FnMut() -> Option<T>) -> T {
    poll(timeout, Duration::from_millis(1), what, f).unwrap_or_else(|e| panic!("{e}"))
}

/// One fd per client (no `try_clone`), so 10,000 clients fit in 10,000 fds.
struct Client {
    stream: TcpStream,
}

impl Client {
    /// One request line in one write (no Nagle stall between the line and its newline), one
    /// answer line back (the protocol answers each line with one line).
    fn ask(&mut self, line: &str) -> String {
        self.stream
            .write_all(format!("{line}\n").as_bytes())
            .unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 256];
        while !got.ends_with(b"\n") {
            let n = self.stream.read(&mut buf).unwrap();
            assert!(n > 0, "connection closed");
            got.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&got).trim_end().to_string()
    }
}

fn run(n: usize) -> (Duration, Duration) {
    let server = start_line();
    let first = server.first_pid();
    let mut clients: Vec<Client> = (0..n)
        .map(|_| {
            let stream = TcpStream::connect(server.addr).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(120)))
                .unwrap();
            let _ = stream.set_nodelay(true);
            Client { stream }
        })
        .collect();
    for c in &mut clients {
        assert_eq!(c.ask("x"), format!("pid={first} x"));
    }
    let signalled = Instant::now();
    server.signal_upgrade();
    let new = wait_for(Duration::from_secs(60), "the new pid", || {
        server.pid_in_file().filter(|p| *p != first)
    });
    server.track(new);
    // Each client asks until the new pid answers: the old one serves a session until it hands
    // it on at its next boundary, so the first answers may still be the old pid's.
    for c in &mut clients {
        let mut tries = 0;
        loop {
            let a = c.ask("y");
            if a == format!("pid={new} y") {
                break;
            }
            assert_eq!(a, format!("pid={first} y"));
            tries += 1;
            assert!(tries < 100_000, "never answered by the new pid");
        }
    }
    let last_answer = signalled.elapsed();
    let line = wait_for(Duration::from_secs(120), "the hand-off summary", || {
        server
            .plain_log()
            .lines()
            .find(|l| {
                l.contains("all sessions handed off or drained")
                    && l.contains(&format!("pid={first}"))
            })
            .map(str::to_owned)
    });
    let field = |name: &str| -> u64 {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{name}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {line:?}"))
    };
    assert_eq!(
        field("handed_off"),
        n as u64,
        "every connection was handed off"
    );
    (Duration::from_micros(field("elapsed_us")), last_answer)
}

fn main() {
    // The old generations' children (the new generations) are re-parented to us and reaped
    // when each run's `App` is dropped.
    subreaper();
    let nofile = raise_nofile();
    let sizes: Vec<usize> = {
        let args: Vec<usize> = std::env::args()
            .skip(1)
            .filter_map(|a| a.parse().ok())
            .collect();
        if args.is_empty() {
            vec![1, 100, 1000, 10_000]
        } else {
            args
        }
    };
    println!("connection hand-off, `line` example, RLIMIT_NOFILE {nofile}");
    println!(
        "| connections | hand-off total | per connection | signal → last client answered by the new pid |"
    );
    println!("|---:|---:|---:|---:|");
    for &n in &sizes {
        if n as u64 + 200 > nofile as u64 {
            println!("| {n} | skipped: RLIMIT_NOFILE {nofile} is too low | | |");
            continue;
        }
        let (handoff, last) = run(n);
        println!(
            "| {n} | {:.1} ms | {:.1} µs | {:.1} ms |",
            handoff.as_secs_f64() * 1e3,
            handoff.as_secs_f64() * 1e6 / n as f64,
            last.as_secs_f64() * 1e3
        );
    }
}
