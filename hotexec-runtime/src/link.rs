//! The generation link: a private channel between a generation and the one it spawns.
//!
//! One `AF_UNIX` `SOCK_SEQPACKET` socketpair per spawned generation, both ends close-on-exec;
//! the child's end crosses `execve` as `HOTEXEC_LINK_FD` (see [`crate::handover`]). It lives as
//! long as either generation: the old one writes [`Record::Lineage`] and the state its
//! application carries ([`Record::Carried`], then [`Record::CarryEnd`]) into its end *before*
//! the spawn, so the new generation finds them queued when it starts; later the old one passes
//! a stop on ([`Record::Stop`]) and the new one can say why it could not start
//! ([`Record::StartFailed`]). Records for the health verdict and the drain summary ride on the
//! same channel ([`Record::Other`] keeps their kinds apart until their modules decode them).
//!
//! The other end may be a hostile or broken program: every record is checked (magic, version,
//! kind, length), an empty record is a protocol error (SEQPACKET allows them; it is never the
//! end of the channel, which `recv` reports as 0 bytes *with* the peer gone), and a refused
//! record is logged and skipped, never acted on. Nothing here is in the environment, argv or a
//! file: only the fd number is.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::socket::{self, AddressFamily, MsgFlags, SockFlag, SockType};

/// First bytes of every record.
const MAGIC: [u8; 4] = *b"HXLK";
/// The link's version: a record of another version is refused (the older build then simply
/// gets nothing carried, as from a program not built on hotexec).
const VERSION: u16 = 1;
/// magic, version, kind, payload length.
const HEADER: usize = 4 + 2 + 2 + 4;
/// Largest state one key may carry.
pub(crate) const MAX_CARRIED: usize = 64 * 1024;
/// Largest record (the longest is a carried key: its name and its bytes).
const MAX_RECORD: usize = HEADER + 2 + 255 + MAX_CARRIED;

const LINEAGE: u16 = 1;
const CARRIED: u16 = 2;
const CARRY_END: u16 = 3;
const STOP: u16 = 4;
const START_FAILED: u16 = 5;
/// Kinds from this one on belong to other modules: 16 and 17 are the health gate's
/// (`health/link.rs`: reports, verdicts).
pub(crate) const FIRST_OTHER: u16 = 16;

/// One record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Record {
    /// The new generation's number (1 after a fresh start, +1 per upgrade).
    Lineage { generation: u64 },
    /// State the application carries to the next generation under `key`.
    Carried { key: String, bytes: Vec<u8> },
    /// Nothing more is carried.
    CarryEnd,
    /// A stop reached the old generation while it was handing over: it was meant for the
    /// service, and the new generation stops.
    Stop,
    /// Why the new generation exits before it is ready (a failed probe, a bad certificate).
    StartFailed { reason: String },
    /// A record another module decodes (`kind` ≥ [`FIRST_OTHER`]).
    Other { kind: u16, bytes: Vec<u8> },
}

/// One record's bytes: the header, then the payload. Zeroed when dropped (a carried state may
/// be keys).
fn frame(kind: u16, parts: &[&[u8]]) -> zeroize::Zeroizing<Vec<u8>> {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let mut out = zeroize::Zeroizing::new(Vec::with_capacity(HEADER + len));
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&kind.to_le_bytes());
    out.extend_from_slice(&(len as u32).to_le_bytes());
    for p in parts {
        out.extend_from_slice(p);
    }
    out
}

impl Record {
    fn encode(&self) -> zeroize::Zeroizing<Vec<u8>> {
        match self {
            Record::Lineage { generation } => frame(LINEAGE, &[&generation.to_le_bytes()]),
            Record::Carried { key, bytes } => frame(
                CARRIED,
                &[&(key.len() as u16).to_le_bytes(), key.as_bytes(), bytes],
            ),
            Record::CarryEnd => frame(CARRY_END, &[]),
            Record::Stop => frame(STOP, &[]),
            Record::StartFailed { reason } => frame(START_FAILED, &[reason.as_bytes()]),
            Record::Other { kind, bytes } => frame(*kind, &[bytes]),
        }
    }

    /// Checks and decodes one record; the error names what is wrong.
    pub(crate) fn decode(buf: &[u8]) -> Result<Record, String> {
        if buf.is_empty() {
            return Err("an empty record".into());
        }
        if buf.len() < HEADER {
            return Err(format!(
                "a record of {} bytes, shorter than its header",
                buf.len()
            ));
        }
        if buf[..4] != MAGIC {
            return Err("a record without the link's magic".into());
        }
        let version = u16::from_le_bytes([buf[4], buf[5]]);
        if version != VERSION {
            return Err(format!(
                "a record of version {version} (this build speaks {VERSION})"
            ));
        }
        let kind = u16::from_le_bytes([buf[6], buf[7]]);
        let len = u32::from_le_bytes([buf[8], buf[9], buf[10], buf[11]]) as usize;
        let payload = &buf[HEADER..];
        if payload.len() != len {
            return Err(format!(
                "a record announcing {len} bytes with {} attached",
                payload.len()
            ));
        }
        let text = |p: &[u8]| {
            String::from_utf8(p.to_vec()).map_err(|_| "a text that is not UTF-8".to_string())
        };
        match kind {
            LINEAGE => {
                let n: [u8; 8] = payload
                    .try_into()
                    .map_err(|_| format!("a lineage record of {len} bytes"))?;
                Ok(Record::Lineage {
                    generation: u64::from_le_bytes(n),
                })
            }
            CARRIED => {
                if payload.len() < 2 {
                    return Err("a carried record without its key".into());
                }
                let klen = u16::from_le_bytes([payload[0], payload[1]]) as usize;
                if payload.len() < 2 + klen {
                    return Err("a carried record shorter than its key".into());
                }
                let key = text(&payload[2..2 + klen])?;
                let bytes = payload[2 + klen..].to_vec();
                if bytes.len() > MAX_CARRIED {
                    return Err(format!("{key:?} carries more than {MAX_CARRIED} bytes"));
                }
                Ok(Record::Carried { key, bytes })
            }
            CARRY_END | STOP if len != 0 => Err(format!("a kind-{kind} record with a payload")),
            CARRY_END => Ok(Record::CarryEnd),
            STOP => Ok(Record::Stop),
            START_FAILED => Ok(Record::StartFailed {
                reason: text(payload)?,
            }),
            k if k >= FIRST_OTHER => Ok(Record::Other {
                kind: k,
                bytes: payload.to_vec(),
            }),
            k => Err(format!("a record of unknown kind {k}")),
        }
    }
}

/// A new link: (ours, the child's). Ours is non-blocking: nothing may block the supervisor.
pub(crate) fn pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let (a, b) = socket::socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(io::Error::from)?;
    set_nonblocking(a.as_fd())?;
    Ok((a, b))
}

/// Switches `fd` to non-blocking (the new generation's end, once adopted).
pub(crate) fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    let fl = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFL).map_err(io::Error::from)?;
    let fl = nix::fcntl::OFlag::from_bits_truncate(fl) | nix::fcntl::OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFL(fl)).map_err(io::Error::from)?;
    Ok(())
}

/// Sends one record without blocking (`MSG_NOSIGNAL`: a peer that is gone is an error, not a
/// SIGPIPE).
pub(crate) fn send(fd: BorrowedFd<'_>, record: &Record) -> io::Result<()> {
    send_frame(fd, &record.encode())
}

/// Sends `key`'s carried state, from the caller's buffer (no copy that is not zeroed).
pub(crate) fn send_carried(fd: BorrowedFd<'_>, key: &str, bytes: &[u8]) -> io::Result<()> {
    if key.len() > 255 || bytes.len() > MAX_CARRIED {
        return Err(io::Error::other(format!(
            "{key:?}: keys are at most 255 bytes and state at most {MAX_CARRIED} bytes"
        )));
    }
    send_frame(
        fd,
        &frame(
            CARRIED,
            &[&(key.len() as u16).to_le_bytes(), key.as_bytes(), bytes],
        ),
    )
}

fn send_frame(fd: BorrowedFd<'_>, bytes: &[u8]) -> io::Result<()> {
    if bytes.len() > MAX_RECORD {
        return Err(io::Error::other(format!(
            "a link record of {} bytes is larger than {MAX_RECORD}",
            bytes.len()
        )));
    }
    socket::send(
        fd.as_raw_fd(),
        bytes,
        MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
    )
    .map_err(io::Error::from)?;
    Ok(())
}

/// What [`recv`] found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Received {
    Record(Record),
    /// A record that was refused (named why); the next one may be fine.
    Refused(String),
    /// Nothing queued now.
    Empty,
    /// The other end is closed.
    Closed,
}

/// Takes one record without blocking.
pub(crate) fn recv(fd: BorrowedFd<'_>) -> Received {
    let mut buf = vec![0u8; MAX_RECORD + 1];
    let (received, filled) = recv_into(fd, &mut buf);
    // Wiped before it is freed: it may have held a carried key. Only what the kernel wrote is
    // wiped (the rest still holds the allocator's zeroes), not 64 KiB of volatile writes for
    // every record of a new generation's start.
    zeroize::Zeroize::zeroize(&mut buf[..filled]);
    received
}

/// One `recv` into `buf`: what it was, and how many bytes of `buf` it wrote.
fn recv_into(fd: BorrowedFd<'_>, buf: &mut [u8]) -> (Received, usize) {
    loop {
        // MSG_TRUNC: the real length is returned for a record longer than the buffer.
        match socket::recv(
            fd.as_raw_fd(),
            buf,
            MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_TRUNC,
        ) {
            Ok(n) if n > buf.len() => {
                return (
                    Received::Refused(format!("a record of {n} bytes, larger than {MAX_RECORD}")),
                    buf.len(),
                );
            }
            Ok(0) => {
                // An empty record and the end of the channel both read as 0 bytes: the end is
                // the one where the peer has closed or shut down its end, which poll tells.
                let received = if peer_gone(fd) {
                    Received::Closed
                } else {
                    Received::Refused("an empty record".into())
                };
                return (received, 0);
            }
            Ok(n) => {
                let received = match Record::decode(&buf[..n]) {
                    Ok(r) => Received::Record(r),
                    Err(e) => Received::Refused(e),
                };
                return (received, n);
            }
            Err(Errno::EINTR) => continue,
            Err(Errno::EAGAIN) => return (Received::Empty, 0),
            Err(_) => return (Received::Closed, 0),
        }
    }
}

/// Whether the peer of `fd` has closed its end or shut down its writing side (`POLLHUP`,
/// `POLLRDHUP`). An empty record sent just before the peer closed is then taken for the end,
/// which it is a moment later anyway.
fn peer_gone(fd: BorrowedFd<'_>) -> bool {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN | libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call; timeout 0 never blocks.
    let n = unsafe { libc::poll(&mut pfd, 1, 0) };
    n < 0 || pfd.revents & (libc::POLLHUP | libc::POLLRDHUP) != 0
}

/// What the previous generation sent before this one started.
#[derive(Debug, Default)]
pub(crate) struct Lineage {
    /// `None`: no lineage record (an older build, or garbage).
    pub generation: Option<u64>,
    pub carried: Vec<(String, Vec<u8>)>,
}

/// Reads what the previous generation queued before the spawn: its lineage and carried state.
/// Stops at [`Record::CarryEnd`] or when nothing more is queued; refusals are logged.
pub(crate) fn read_lineage(fd: BorrowedFd<'_>) -> Lineage {
    let mut out = Lineage::default();
    // Bounded: a peer that queued garbage without end cannot hold the start up.
    for _ in 0..4096 {
        match recv(fd) {
            Received::Record(Record::Lineage { generation }) => out.generation = Some(generation),
            Received::Record(Record::Carried { key, bytes }) => {
                if out.carried.iter().any(|(k, _)| *k == key) {
                    tracing::warn!(
                        key,
                        "generation link: a key carried twice; the first is kept"
                    );
                } else {
                    out.carried.push((key, bytes));
                }
            }
            Received::Record(Record::CarryEnd) | Received::Empty | Received::Closed => return out,
            Received::Record(other) => {
                tracing::warn!(
                    ?other,
                    "generation link: unexpected record before the start"
                )
            }
            Received::Refused(why) => {
                tracing::warn!("generation link: refused {why} from the previous generation")
            }
        }
    }
    tracing::warn!("generation link: no end of the carried state after 4096 records");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        for r in [
            Record::Lineage { generation: 7 },
            Record::Carried {
                key: "tls.ticket-keys".into(),
                bytes: vec![1, 2, 3],
            },
            Record::CarryEnd,
            Record::Stop,
            Record::StartFailed {
                reason: "probe GET /healthz answered 503".into(),
            },
            Record::Other {
                kind: FIRST_OTHER + 1,
                bytes: vec![9; 40],
            },
        ] {
            assert_eq!(Record::decode(&r.encode()), Ok(r));
        }
    }

    #[test]
    fn garbage_is_refused_by_name() {
        let good = Record::Carried {
            key: "k".into(),
            bytes: vec![1],
        }
        .encode()
        .to_vec();
        let mut bad_len = good.clone();
        bad_len[8] = 99;
        let mut bad_version = good.clone();
        bad_version[4] = 2;
        let mut bad_kind = Record::Stop.encode().to_vec();
        bad_kind[6] = 9;
        for (buf, why) in [
            (vec![], "empty"),
            (b"HXLK".to_vec(), "shorter than its header"),
            (b"XXXX\x01\x00\x01\x00\x00\x00\x00\x00".to_vec(), "magic"),
            (bad_len, "announcing"),
            (bad_version, "version 2"),
            (bad_kind, "unknown kind 9"),
            (good[..HEADER + 1].to_vec(), "announcing"),
        ] {
            let e = Record::decode(&buf).unwrap_err();
            assert!(e.contains(why), "{why}: {e}");
        }
    }

    #[test]
    fn an_empty_record_is_not_the_end() {
        let (a, b) = pair().unwrap();
        socket::send(b.as_raw_fd(), &[], MsgFlags::empty()).unwrap();
        send(b.as_fd(), &Record::Stop).unwrap();
        assert_eq!(recv(a.as_fd()), Received::Refused("an empty record".into()));
        assert_eq!(recv(a.as_fd()), Received::Record(Record::Stop));
        assert_eq!(recv(a.as_fd()), Received::Empty);
        drop(b);
        assert_eq!(recv(a.as_fd()), Received::Closed);
        // A peer that only shut down its writing side has ended too.
        let (a, b) = pair().unwrap();
        socket::shutdown(b.as_raw_fd(), socket::Shutdown::Write).unwrap();
        assert_eq!(recv(a.as_fd()), Received::Closed);
    }

    #[test]
    fn lineage_is_read_up_to_its_end() {
        let (a, b) = pair().unwrap();
        for r in [
            Record::Lineage { generation: 3 },
            Record::Carried {
                key: "a".into(),
                bytes: b"x".to_vec(),
            },
            Record::Carried {
                key: "a".into(),
                bytes: b"y".to_vec(),
            },
            Record::CarryEnd,
            Record::Stop,
        ] {
            send(a.as_fd(), &r).unwrap();
        }
        set_nonblocking(b.as_fd()).unwrap();
        let l = read_lineage(b.as_fd());
        assert_eq!(l.generation, Some(3));
        assert_eq!(l.carried, vec![("a".to_string(), b"x".to_vec())]);
        // What follows the carry is the supervisor's.
        assert_eq!(recv(b.as_fd()), Received::Record(Record::Stop));
    }
}
