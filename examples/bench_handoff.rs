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
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn raise_nofile() -> libc::rlim_t {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write the struct on our stack.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
    lim.rlim_cur
}

fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A started `line` server: its generations are killed and reaped on drop.
struct Server {
    first: Child,
    dir: PathBuf,
    addr: SocketAddr,
    pids: Vec<u32>,
}

impl Server {
    fn start(bin: &Path, tag: usize) -> Server {
        let dir = std::env::temp_dir().join(format!(
            "hotexec-bench-handoff-{}-{tag}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let log = std::fs::File::create(dir.join("log")).unwrap();
        let first = Command::new(bin)
            .env("HOTEXEC_LISTEN_LINE", addr.to_string())
            .env("HOTEXEC_PID_FILE", dir.join("pid"))
            .env("HOTEXEC_KEEPER", "0")
            .env("HOTEXEC_DRAIN_TIMEOUT", "300s")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let s = Server {
            pids: vec![first.id()],
            first,
            dir,
            addr,
        };
        wait_for(Duration::from_secs(10), "the pid file", || {
            (s.pid() == Some(s.pids[0])).then_some(())
        });
        s
    }

    fn pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.dir.join("pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// The log without the ANSI colour codes of tracing's default format.
    fn log(&self) -> String {
        let raw = std::fs::read_to_string(self.dir.join("log")).unwrap_or_default();
        let mut out = String::with_capacity(raw.len());
        let mut chars = raw.chars();
        while let Some(c) = chars.next() {
            if c == '\x1b' {
                for d in chars.by_ref() {
                    if d == 'm' {
                        break;
                    }
                }
            } else {
                out.push(c);
            }
        }
        out
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        for &p in &self.pids {
            // SAFETY: kill(2) on pids this program started (and, as subreaper, reaps).
            unsafe { libc::kill(p as i32, libc::SIGKILL) };
        }
        let _ = self.first.wait();
        for &p in &self.pids[1..] {
            // SAFETY: waitpid on a (re-parented) child; a pid that is not ours returns ECHILD.
            unsafe { libc::waitpid(p as i32, std::ptr::null_mut(), 0) };
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
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

fn run(bin: &Path, n: usize, tag: usize) -> (Duration, Duration) {
    let mut server = Server::start(bin, tag);
    let first = server.pids[0];
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
    // SAFETY: kill(2) on the server this program started.
    unsafe { libc::kill(first as i32, libc::SIGUSR2) };
    let new = wait_for(Duration::from_secs(60), "the new pid", || {
        server.pid().filter(|p| *p != first)
    });
    server.pids.push(new);
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
            .log()
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
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER) takes integer arguments: the old generations'
    // children (the new generations) are re-parented to us and reaped by `Server`'s drop.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
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
    let bin = std::env::current_exe().unwrap().with_file_name("line");
    assert!(
        bin.exists(),
        "build the `line` example first ({} missing)",
        bin.display()
    );
    println!("connection hand-off, `line` example, RLIMIT_NOFILE {nofile}");
    println!(
        "| connections | hand-off total | per connection | signal → last client answered by the new pid |"
    );
    println!("|---:|---:|---:|---:|");
    for (i, &n) in sizes.iter().enumerate() {
        if n as u64 + 200 > nofile as u64 {
            println!("| {n} | skipped: RLIMIT_NOFILE {nofile} is too low | | |");
            continue;
        }
        let (handoff, last) = run(&bin, n, i);
        println!(
            "| {n} | {:.1} ms | {:.1} µs | {:.1} ms |",
            handoff.as_secs_f64() * 1e3,
            handoff.as_secs_f64() * 1e6 / n as f64,
            last.as_secs_f64() * 1e3
        );
    }
}
