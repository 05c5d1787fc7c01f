//! The connection hand-off channel as start-up input (issue 20, finding 5): `HOTEXEC_HANDOFF_FD`
//! is checked like the other hand-over variables. Malformed, or naming an fd that is not the
//! channel, it stops the start with a message naming it (exit 1: an upgrade to such a process
//! fails and the old generation serves on); meant for another process (`LISTEN_PID`), it is
//! ignored, the fd left as it was, and the log says why.
mod common;

use std::net::TcpListener;
use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use common::{Crafted, ListenPid, example, free_port};
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
    let want = format!("environment variable HOTEXEC_HANDOFF_FD={value:?} refused: ");
    assert!(out.contains(&want), "{want:?} not in:\n{out}");
    assert!(out.contains(needle), "{needle:?} not in:\n{out}");
}

#[test]
fn a_malformed_handoff_fd_stops_the_start_by_name() {
    refused("abc", vec![], "expected a decimal fd number");
    refused("-4", vec![], "expected a decimal fd number");
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
    refused("4", vec![(4, a.into())], "not the hand-off channel");
    // The listener's own number.
    refused("3", vec![], "fd 3 is also");
}

/// The variables were meant for another process (here: the shell that started the server as
/// its child, as `LISTEN_PID=$$ app` in a script does): the channel is not this process's, it
/// says nothing on it, and the log says why.
#[test]
fn a_handoff_fd_meant_for_another_pid_is_ignored() {
    let (ours, theirs) = seqpacket();
    let p = start("4", vec![(4, theirs)], ListenPid::Parent);
    p.wait_log("line example serving", T);
    p.wait_log("HOTEXEC_HANDOFF_FD=\"4\" ignored", T);
    let mut fds = [nix::poll::PollFd::new(
        ours.as_fd(),
        nix::poll::PollFlags::POLLIN,
    )];
    let n = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(500u16)).unwrap();
    assert_eq!(
        n, 0,
        "the server spoke on a channel meant for another process"
    );
    let out = p.plain_log();
    assert!(
        out.contains("LISTEN_PID"),
        "the reason names LISTEN_PID:\n{out}"
    );
}
