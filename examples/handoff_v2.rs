//! Test fixture (tests/handoff.rs): a new generation from a later build that speaks hand-off
//! protocol version 2. It says HELLO in version 2 on `HOTEXEC_HANDOFF_FD`, then becomes
//! `listenfd_server` (exec, same pid, same fds and environment; the path is in
//! `HOTEXEC_TEST_THEN`). A version-1 old generation must see that it does not understand it and
//! drain as without hand-off.
use std::os::unix::process::CommandExt;

fn main() {
    if let Some(fd) = std::env::var("HOTEXEC_HANDOFF_FD")
        .ok()
        .and_then(|v| v.parse::<i32>().ok())
    {
        use hotexec::handoff::__wire::{Kind, encode_as};
        let hello = encode_as(2, Kind::Hello, u64::from(std::process::id()), b"", b"");
        // SAFETY: send(2) reads `hello` for its length; a number that is not a socket fails.
        unsafe { libc::send(fd, hello.as_ptr().cast(), hello.len(), libc::MSG_NOSIGNAL) };
    }
    let then = std::env::var_os("HOTEXEC_TEST_THEN").expect("HOTEXEC_TEST_THEN");
    let err = std::process::Command::new(then).exec();
    eprintln!("handoff_v2: exec failed: {err}");
    std::process::exit(127);
}
