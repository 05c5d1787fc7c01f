//! The drain deadline holds even when stderr is blocked, and says by its exit status that work
//! was cut off (issue 13 item 9).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hotexec_testkit::prelude::*;

/// A pipe nobody reads: (read end, write end).
fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: pipe2 succeeded: both fds are open and owned by nobody else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

/// Fills the pipe through our copy of its write end (non-blocking writes until EAGAIN), then
/// makes the shared open file description blocking again, as a stderr normally is: from then on
/// every write to it blocks until someone reads, and nobody does.
fn fill(w: &OwnedFd) {
    // SAFETY: fcntl on an fd we own.
    unsafe {
        let fl = libc::fcntl(w.as_raw_fd(), libc::F_GETFL);
        libc::fcntl(w.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK);
    }
    let chunk = [b'x'; 4096];
    loop {
        // SAFETY: writing from a valid buffer to an fd we own.
        let n = unsafe { libc::write(w.as_raw_fd(), chunk.as_ptr().cast(), chunk.len()) };
        if n < 0 {
            assert_eq!(
                std::io::Error::last_os_error().raw_os_error(),
                Some(libc::EAGAIN)
            );
            break;
        }
    }
    // Back to blocking, as a stderr normally is: a write to it now blocks until someone reads.
    // SAFETY: fcntl on an fd we own.
    unsafe {
        let fl = libc::fcntl(w.as_raw_fd(), libc::F_GETFL);
        libc::fcntl(w.as_raw_fd(), libc::F_SETFL, fl & !libc::O_NONBLOCK);
    }
}

#[test]
fn deadline_holds_with_blocked_stderr_and_exits_with_status_124() {
    subreaper();
    let port = free_port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let (_read_end, write_end) = pipe();
    let ours = write_end.try_clone().unwrap();
    let mut child = Command::new(example("http"))
        .env("HOTEXEC_LISTEN_HTTP", addr.to_string())
        .env("HOTEXEC_LISTEN_ADMIN", format!("127.0.0.1:{}", free_port()))
        .env("HOTEXEC_DRAIN_TIMEOUT", "1s")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(write_end))
        .spawn()
        .unwrap();
    let pid = child.id();
    let _guard = KillOnDrop(pid);
    wait_for(Duration::from_secs(30), "the server answers", || {
        matches!(get(addr, "/", Duration::from_secs(2)), Outcome::Ok { .. }).then_some(())
    });
    // A request that outlives the drain timeout by far.
    let slow = std::thread::spawn(move || get(addr, "/slow?ms=60000", Duration::from_secs(90)));
    wait_for(Duration::from_secs(10), "the slow request is in", || {
        std::net::TcpStream::connect(addr).ok().map(|_| ())
    });
    fill(&ours);
    // SAFETY: signalling the child we spawned and have not reaped.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let sent = Instant::now();
    let status = wait_for(
        Duration::from_secs(20),
        "the process exits at the deadline",
        || child.try_wait().unwrap(),
    );
    let took = sent.elapsed();
    assert_eq!(
        status.code(),
        Some(124),
        "exit status after a cut-off drain: {status:?} after {took:?}"
    );
    drop(slow);
}

/// Kills (SIGKILL) the pid when the test fails before it exited, and reaps it.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if std::thread::panicking() {
            kill_and_reap(&[self.0], None);
        }
    }
}
