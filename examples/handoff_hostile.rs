//! Test fixture (tests/handoff_faults.rs): a hostile new generation. It reports ready and says
//! HELLO like a hotexec one, acknowledges every connection offered and serves it (the `line`
//! protocol), but once it has taken `HOTEXEC_TEST_HOSTILE_AFTER` (default 5) it also sends, once,
//! what `HOTEXEC_TEST_HOSTILE` says:
//!
//! - `empty`: an empty record (0 bytes, which `recv` also returns at the end of a channel);
//! - `garbage`: bytes that are not a record;
//! - `unknown-ack`: an acknowledgement of a connection it was never offered.
//!
//! Nothing it sends may make the old generation take back a connection it acknowledged.
//!
//! Not built on `#[hotexec::main]`: it speaks the protocol itself, with the wire format's own
//! encoder. hotexec's start-up constructor has taken the variables out of the environment by
//! the time `main` runs, so they are read from `/proc/self/environ`, which keeps them as they
//! were at exec.
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use hotexec::handoff::__wire::{self as wire, Kind};
use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};

fn var(name: &str) -> Option<String> {
    let env = std::fs::read("/proc/self/environ").ok()?;
    env.split(|b| *b == 0).find_map(|kv| {
        let kv = std::str::from_utf8(kv).ok()?;
        kv.strip_prefix(name)?.strip_prefix('=').map(str::to_owned)
    })
}

fn send(chan: RawFd, record: &[u8]) {
    // SAFETY: send(2) reads `record` for its length.
    unsafe {
        libc::send(
            chan,
            record.as_ptr().cast(),
            record.len(),
            libc::MSG_NOSIGNAL,
        )
    };
}

fn main() {
    let chan: RawFd = var("HOTEXEC_HANDOFF_FD")
        .and_then(|v| v.parse().ok())
        .expect("HOTEXEC_HANDOFF_FD");
    let ready: RawFd = var("HOTEXEC_READY_FD")
        .and_then(|v| v.parse().ok())
        .expect("HOTEXEC_READY_FD");
    let mode = var("HOTEXEC_TEST_HOSTILE").unwrap_or_default();
    let after: usize = var("HOTEXEC_TEST_HOSTILE_AFTER")
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let pid = std::process::id();
    send(chan, &wire::encode(Kind::Hello, u64::from(pid), b"", b""));
    // SAFETY: write(2) reads one byte; the readiness pipe's READY byte.
    unsafe { libc::write(ready, b"R".as_ptr().cast(), 1) };
    eprintln!("hostile new generation {pid} ready ({mode} after {after})");
    let mut taken = 0;
    let mut buf = vec![0u8; wire::MAX_RECORD + 1];
    loop {
        let mut cmsg = nix::cmsg_space!([RawFd; 4], libc::ucred);
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        let (len, fds) =
            match recvmsg::<()>(chan, &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC) {
                Ok(m) => {
                    let mut fds = Vec::new();
                    for c in m.cmsgs().into_iter().flatten() {
                        if let ControlMessageOwned::ScmRights(f) = c {
                            // SAFETY: received with the record: ours.
                            fds.extend(f.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
                        }
                    }
                    (m.bytes, fds)
                }
                Err(_) => break,
            };
        if len == 0 && fds.is_empty() {
            break;
        }
        let Ok(rec) = wire::decode(&buf[..len], fds.len()) else {
            continue;
        };
        if rec.kind != Kind::Conn {
            continue;
        }
        send(chan, &wire::encode(Kind::Ack, rec.id, b"", b""));
        taken += 1;
        let fd = fds.into_iter().next().expect("one fd");
        std::thread::spawn(move || serve(fd, rec.unread, pid));
        if taken == after {
            match mode.as_str() {
                "empty" => send(chan, b""),
                "garbage" => send(chan, b"not a hotexec record"),
                "unknown-ack" => send(chan, &wire::encode(Kind::Ack, 999_999, b"", b"")),
                _ => {}
            }
            eprintln!("hostile new generation: sent {mode} after {taken}");
        }
    }
    eprintln!("hostile new generation: channel ended after {taken}");
    loop {
        std::thread::park();
    }
}

/// The `line` example's answers, on a blocking thread.
fn serve(fd: OwnedFd, unread: Vec<u8>, pid: u32) {
    let s = std::net::TcpStream::from(fd);
    let _ = s.set_nonblocking(false);
    let Ok(mut out) = s.try_clone() else { return };
    for line in BufReader::new(std::io::Cursor::new(unread).chain(s)).lines() {
        let Ok(line) = line else { return };
        if out
            .write_all(format!("pid={pid} {line}\n").as_bytes())
            .is_err()
        {
            return;
        }
    }
}
