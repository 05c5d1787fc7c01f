//! Test fixture (tests/handoff.rs): a new generation from a later build that speaks hand-off
//! protocol version 2. It sends the HELLO it is given (`HOTEXEC_TEST_HELLO`, hex: the test
//! makes it with the wire format's own encoder, in version 2) on `HOTEXEC_HANDOFF_FD`, then
//! becomes `listenfd_server` (exec, same pid, same fds and environment; the path is in
//! `HOTEXEC_TEST_THEN`). A version-1 old generation must see that it does not understand it and
//! drain as without hand-off.
//!
//! It does not link hotexec: hotexec's start-up constructors would take the hand-over
//! variables out of the environment before the exec.
use std::os::unix::process::CommandExt;

fn main() {
    let hello: Vec<u8> = std::env::var("HOTEXEC_TEST_HELLO")
        .expect("HOTEXEC_TEST_HELLO")
        .as_bytes()
        .chunks(2)
        .map(|h| u8::from_str_radix(std::str::from_utf8(h).unwrap_or("zz"), 16).expect("hex"))
        .collect();
    if let Some(fd) = std::env::var("HOTEXEC_HANDOFF_FD")
        .ok()
        .and_then(|v| v.parse::<i32>().ok())
    {
        // SAFETY: send(2) reads `hello` for its length; a number that is not a socket fails.
        unsafe { libc::send(fd, hello.as_ptr().cast(), hello.len(), libc::MSG_NOSIGNAL) };
    }
    let then = std::env::var_os("HOTEXEC_TEST_THEN").expect("HOTEXEC_TEST_THEN");
    let err = std::process::Command::new(then).exec();
    eprintln!("handoff_v2: exec failed: {err}");
    std::process::exit(127);
}
