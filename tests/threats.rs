//! What other local processes can do to a hotexec server (SECURITY.md, issue 20): another
//! user, and a process of the same user (or root) in another pid namespace. Each test plays the
//! attacker for real: a child of this (root) test process that drops to uid 65534, or a process
//! in a pid namespace of its own (`unshare --pid --fork`).
use std::time::{Duration, Instant};

use hotexec_testkit::prelude::*;
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::waitpid;
use nix::unistd::Pid;

/// The uid and gid the attacker drops to (`nobody`).
const NOBODY: u32 = 65534;

fn require_root() {
    // SAFETY: geteuid(2) cannot fail and touches no memory.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test plays another user and another pid namespace: it must run as root (CI does)"
    );
}

/// A process of uid/gid 65534 that sends `payload` to the abstract datagram socket `name` (no
/// leading NUL) as fast as the socket takes it, until `for_how_long` has passed. Killed and
/// reaped on drop.
struct Flooder(Pid);

impl Flooder {
    fn start(name: &[u8], payload: &'static [u8], for_how_long: Duration) -> Flooder {
        // Everything the child uses is prepared before fork: after it, a child of this
        // multi-threaded process may only make async-signal-safe calls.
        // SAFETY: sockaddr_un is plain data; all-zero is a valid value.
        let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        assert!(name.len() < addr.sun_path.len());
        for (i, b) in name.iter().enumerate() {
            addr.sun_path[1 + i] = *b as libc::c_char;
        }
        let len = (std::mem::size_of::<libc::sa_family_t>() + 1 + name.len()) as libc::socklen_t;
        let secs = for_how_long.as_secs() as libc::time_t;
        // SAFETY: the child makes only async-signal-safe calls (setgroups, setresgid,
        // setresuid, socket, sendto, clock_gettime, nanosleep, _exit) on memory prepared above,
        // and never returns into Rust code.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            unsafe {
                if libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setresgid(NOBODY, NOBODY, NOBODY) != 0
                    || libc::setresuid(NOBODY, NOBODY, NOBODY) != 0
                {
                    libc::_exit(2);
                }
                let s = libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM, 0);
                if s < 0 {
                    libc::_exit(3);
                }
                let mut start: libc::timespec = std::mem::zeroed();
                let mut now: libc::timespec = std::mem::zeroed();
                libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut start);
                let pause = libc::timespec {
                    tv_sec: 0,
                    tv_nsec: 100_000,
                };
                loop {
                    libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now);
                    if now.tv_sec - start.tv_sec >= secs {
                        libc::_exit(0);
                    }
                    let r = libc::sendto(
                        s,
                        payload.as_ptr().cast(),
                        payload.len(),
                        libc::MSG_DONTWAIT,
                        (&raw const addr).cast(),
                        len,
                    );
                    if r < 0 && *libc::__errno_location() != libc::EAGAIN {
                        libc::nanosleep(&pause, std::ptr::null_mut());
                    }
                }
            }
        }
        Flooder(Pid::from_raw(pid))
    }
}

impl Drop for Flooder {
    fn drop(&mut self) {
        let _ = kill(self.0, Signal::SIGKILL);
        let _ = waitpid(self.0, None);
    }
}

/// `NOTIFY_SOCKET` of `pid` (`@name`), from /proc/<pid>/environ.
fn notify_socket_of(pid: u32) -> Option<Vec<u8>> {
    let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    env.split(|b| *b == 0)
        .find_map(|kv| kv.strip_prefix(b"NOTIFY_SOCKET=@"))
        .map(<[u8]>::to_vec)
}

/// Another user floods the private notify socket an upgrade gives its new generation (its
/// abstract name is listed in /proc/net/unix for anyone to read) with forged `READY=1`s while
/// the new generation warms up: none counts (they are not from the new pid), the server logs a
/// bounded number of lines about them, and a SIGTERM in the middle of it is acted on at once.
#[test]
fn a_notify_flood_from_another_user_is_bounded_and_does_not_delay_a_stop() {
    require_root();
    let mut app = App::start(
        "http",
        "HOTEXEC_LISTEN_HTTP",
        &[("HOTEXEC_READY_TIMEOUT", "60s")],
    );
    let old = app.first_pid();
    // A new binary that never reports ready: the upgrade waits, its notify socket open.
    app.replace_binary(Some("#!/bin/sh\nexec sleep 120\n"));
    app.signal_upgrade();
    let (child, name) = wait_for(Duration::from_secs(10), "the new generation", || {
        children_of(old)
            .into_iter()
            .find_map(|(p, _)| Some((p, notify_socket_of(p)?)))
    });
    app.track(child);
    let flood: Vec<Flooder> = (0..3)
        .map(|_| Flooder::start(&name, b"READY=1", Duration::from_secs(8)))
        .collect();
    // Let it run a while, with the server under it.
    std::thread::sleep(Duration::from_secs(2));
    let before = app.plain_log();
    assert!(
        !before.contains("new generation is ready"),
        "a forged READY=1 counted:\n{before}"
    );
    let asked = Instant::now();
    kill(Pid::from_raw(old as i32), Signal::SIGTERM).unwrap();
    wait_for(Duration::from_secs(10), "the stop to be acted on", || {
        app.log_text()
            .contains("stop signal during the upgrade")
            .then_some(())
    });
    let acted = asked.elapsed();
    app.wait_exit(old, Duration::from_secs(20));
    drop(flood);
    let log = app.plain_log();
    let lines = log.lines().filter(|l| l.contains("notify socket")).count();
    println!(
        "notify flood from uid {NOBODY}: SIGTERM acted on after {:.0} ms, {lines} log lines about the flood",
        acted.as_secs_f64() * 1e3
    );
    assert!(
        acted < Duration::from_secs(2),
        "SIGTERM under a notify flood took {acted:?} to be acted on"
    );
    assert!(
        (1..=20).contains(&lines),
        "the flood must be logged, boundedly: {lines} lines"
    );
    assert!(
        log.contains(&format!("uid={NOBODY}")) || log.contains(&format!("uid {NOBODY}")),
        "the log names the sender's uid:\n{}",
        log.lines()
            .filter(|l| l.contains("notify socket"))
            .take(5)
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// What a control client run under `wrapper` (another pid namespace, another user) is told,
/// from the attacker's half below.
fn control_request_via(wrapper: &[&str], pid: u32) -> String {
    use std::io::Read;
    let me = std::env::current_exe().unwrap();
    let mut child = std::process::Command::new(wrapper[0])
        .args(&wrapper[1..])
        .arg(&me)
        .args([
            "--ignored",
            "--exact",
            "attacker_control_request",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("HOTEXEC_TEST_CONTROL_NAME", hotexec::control::name(pid))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e} (util-linux)", wrapper[0]));
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the client under {wrapper:?} did not finish within 30 s");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let (mut out, mut err) = (String::new(), String::new());
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    out.lines()
        .find_map(|l| l.split_once("REPLY ").map(|(_, r)| r))
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("no reply from the server:\n{out}\n{err}"))
}

/// Not a test by itself: the attacker's half of
/// `an_upgrade_request_from_another_pid_namespace_is_refused` and
/// `an_upgrade_request_from_another_user_is_refused`, which run it inside a pid namespace of
/// its own, or as another user. It connects to the server's control socket by its abstract name
/// (listed in /proc/net/unix, shared by the network namespace), asks for an upgrade, and
/// prints the reply.
#[test]
#[ignore = "run by the control tests of this file, in another pid namespace or as another user"]
fn attacker_control_request() {
    use std::io::{BufRead, BufReader, Write};
    use std::os::linux::net::SocketAddrExt;
    let name = std::env::var("HOTEXEC_TEST_CONTROL_NAME").expect("HOTEXEC_TEST_CONTROL_NAME");
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let mut conn = std::os::unix::net::UnixStream::connect_addr(&addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    // A server that refuses the peer answers and closes before it reads the request: the write
    // may then fail (EPIPE), and the answer is still waiting to be read.
    let _ = conn.write_all(b"upgrade\n");
    let mut line = String::new();
    BufReader::new(conn).read_line(&mut line).unwrap();
    println!("REPLY {}", line.trim_end());
}

/// A process of the same user — here root, as a sidecar container's would be — in another pid
/// namespace that shares the server's network namespace (a pod) can reach the server's control
/// socket by name; it must be refused, and nothing upgraded.
#[test]
fn an_upgrade_request_from_another_pid_namespace_is_refused() {
    require_root();
    let app = App::start("http", "HOTEXEC_LISTEN_HTTP", &[]);
    let pid = app.first_pid();
    let reply = control_request_via(&["unshare", "--pid", "--fork", "--kill-child"], pid);
    println!("control request from another pid namespace: {reply}");
    assert!(
        reply.starts_with("error refused ") && reply.contains("pid namespace"),
        "{reply}"
    );
    assert!(
        !app.log_text().contains("upgrade: starting"),
        "the server started an upgrade:\n{}",
        app.log_text()
    );
    assert_eq!(app.pid_in_file(), Some(pid));
    app.wait_log(
        "control socket: request from another pid namespace refused",
        1,
        Duration::from_secs(5),
    );
}

/// Another local user can connect to the control socket (abstract names have no permissions):
/// it is refused, and nothing upgraded.
#[test]
fn an_upgrade_request_from_another_user_is_refused() {
    require_root();
    let app = App::start("http", "HOTEXEC_LISTEN_HTTP", &[]);
    let pid = app.first_pid();
    let ids = NOBODY.to_string();
    let reply = control_request_via(
        &[
            "setpriv",
            "--reuid",
            &ids,
            "--regid",
            &ids,
            "--clear-groups",
        ],
        pid,
    );
    println!("control request from uid {NOBODY}: {reply}");
    assert!(
        reply.starts_with("error refused ") && reply.contains("same user"),
        "{reply}"
    );
    assert!(!app.log_text().contains("upgrade: starting"));
    assert_eq!(app.pid_in_file(), Some(pid));
    app.wait_log(
        "request from another user refused",
        1,
        Duration::from_secs(5),
    );
}
