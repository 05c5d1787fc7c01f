//! The connection hand-off channel as start-up input (issue 20, finding 5): `HOTEXEC_HANDOFF_FD`
//! is checked with the other hand-over variables (`startup.rs`). Malformed, naming an fd that
//! is not the channel, or not meant for this process (`LISTEN_PID`), it stops the start with a
//! message naming it (exit 1: an upgrade to such a process fails and the old generation serves
//! on), and nothing is said on the fd.
use std::net::TcpListener;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::Duration;

use hotexec_testkit::prelude::*;
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};

const T: Duration = Duration::from_secs(10);

fn seqpacket() -> (OwnedFd, OwnedFd) {
    socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .unwrap()
}

/// Starts the `line` example as the new generation of a crafted hand-over: its listener at fd 3
/// and `fds`, with `HOTEXEC_HANDOFF_FD=value`.
fn start(value: &str, fds: Vec<(i32, OwnedFd)>, pid: ListenPid) -> Crafted {
    let listener: OwnedFd = TcpListener::bind("127.0.0.1:0").unwrap().into();
    let addr = format!("127.0.0.1:{}", free_port());
    let mut all = vec![(3, listener)];
    all.extend(fds);
    Crafted::start(
        &example("line"),
        &[
            ("LISTEN_FDS", "1"),
            ("LISTEN_FDNAMES", "line"),
            ("HOTEXEC_LISTEN_LINE", &addr),
            ("HOTEXEC_HANDOFF_FD", value),
        ],
        all,
        pid,
    )
}

fn refused(value: &str, fds: Vec<(i32, OwnedFd)>, needle: &str) {
    let mut p = start(value, fds, ListenPid::Itself);
    let code = p.wait_exit(T);
    let out = p.plain_log();
    assert_eq!(
        code,
        Some(1),
        "HOTEXEC_HANDOFF_FD={value}: must refuse to start:\n{out}"
    );
    let want = format!("hotexec: cannot start: HOTEXEC_HANDOFF_FD={value:?} refused: ");
    assert!(out.contains(&want), "{want:?} not in:\n{out}");
    assert!(out.contains(needle), "{needle:?} not in:\n{out}");
}

#[test]
fn a_malformed_handoff_fd_stops_the_start_by_name() {
    refused("abc", vec![], "expected a decimal fd number");
    refused("-4", vec![], "expected a decimal fd number");
    refused("", vec![], "expected a decimal fd number");
    refused("2", vec![], "it must be 3 or more");
}

#[test]
fn a_handoff_fd_that_is_not_the_channel_stops_the_start_by_name() {
    // Not open.
    refused("9", vec![], "fd 9 is not an open socket");
    // A pipe.
    let (r, _w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    refused("4", vec![(4, r)], "fd 4 is not an open socket");
    // A stream socket.
    let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
    refused("4", vec![(4, a.into())], "not a SOCK_SEQPACKET channel");
    // The listener's own number.
    refused("3", vec![], "fd 3 is also another fd of the hand-over");
}

/// The variables were meant for another process (here: the shell that started the server as
/// its child, as `LISTEN_PID=$$ app` in a script does): the channel is not this process's. It
/// refuses to start, naming `LISTEN_PID`, and says nothing on the channel.
#[test]
fn a_handoff_fd_meant_for_another_pid_is_not_adopted() {
    let (ours, theirs) = seqpacket();
    let mut p = start("4", vec![(4, theirs)], ListenPid::Parent);
    let code = p.wait_exit(T);
    let out = p.plain_log();
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("HOTEXEC_HANDOFF_FD=\"4\" refused: ") && out.contains("LISTEN_PID"),
        "the reason names LISTEN_PID:\n{out}"
    );
    let mut fds = [nix::poll::PollFd::new(
        ours.as_fd(),
        nix::poll::PollFlags::POLLIN,
    )];
    let n = nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO).unwrap();
    let said = n == 1
        && {
            let mut b = [0u8; 64];
            matches!(nix::sys::socket::recv(ours.as_raw_fd(), &mut b, nix::sys::socket::MsgFlags::MSG_DONTWAIT), Ok(n) if n > 0)
        };
    assert!(
        !said,
        "the server spoke on a channel meant for another process"
    );
}
