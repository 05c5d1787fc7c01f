//! The channel itself: a `SOCK_SEQPACKET` Unix socketpair (one record per message, `CLOEXEC`),
//! records sent and received with their fd through rustix, and the checks a received fd passes
//! before it is adopted.

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketFlags, SocketType,
};

use super::wire::MAX_RECORD;

/// A fresh channel: (the old generation's end, the new generation's end), both `CLOEXEC`
/// (spawn clears the flag on the child's copy only, between fork and exec). The old
/// generation's end gets `SO_PASSCRED` (see [`tell_records_from_the_end`]); the new generation
/// turns it on for its own end if it is a build that reads credentials, since a receiver that
/// did not make room for them in its control buffer would lose the record's fd to truncation.
pub(crate) fn pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let (a, b) = rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    // The errno as it is (the caller tells EMFILE apart), named by the caller.
    .map_err(io::Error::from)?;
    // Room for a few records of the largest size in flight (the kernel caps it at wmem_max; a
    // smaller buffer only means fewer records in flight at once, and the largest still fits in
    // the default 208 KiB).
    for fd in [&a, &b] {
        let _ = rustix::net::sockopt::set_socket_send_buffer_size(fd, 4 * MAX_RECORD);
    }
    tell_records_from_the_end(a.as_fd())?;
    Ok((a, b))
}

/// Turns `SO_PASSCRED` on for `chan`, the end this process reads: from then on every record
/// received on it, an empty one included, comes with an `SCM_CREDENTIALS` message, while the
/// end of the channel comes with none. That is how [`recv`] tells an empty record from the end
/// (`recvmsg` returns 0 for both).
pub(crate) fn tell_records_from_the_end(chan: BorrowedFd<'_>) -> io::Result<()> {
    rustix::net::sockopt::set_socket_passcred(chan, true).map_err(|e| {
        io::Error::other(format!(
            "setsockopt(SO_PASSCRED) on the hand-off channel: {e}"
        ))
    })
}

/// Sends one record, with `fd` attached when given. Non-blocking when `dontwait`
/// (`WouldBlock` then means: try again once the channel polls writable).
pub(crate) fn send(
    chan: BorrowedFd<'_>,
    record: &[u8],
    fd: Option<BorrowedFd<'_>>,
    dontwait: bool,
) -> io::Result<()> {
    let fds: Vec<BorrowedFd<'_>> = fd.into_iter().collect();
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err(io::Error::other(
            "SCM_RIGHTS does not fit its control buffer",
        ));
    }
    let mut flags = SendFlags::NOSIGNAL;
    if dontwait {
        flags |= SendFlags::DONTWAIT;
    }
    let n = rustix::net::sendmsg(chan, &[io::IoSlice::new(record)], &mut control, flags)?;
    if n != record.len() {
        // SEQPACKET sends a record whole or not at all; anything else is a kernel surprise.
        return Err(io::Error::other(format!(
            "sendmsg sent {n} of a {}-byte record",
            record.len()
        )));
    }
    Ok(())
}

/// One message as received.
pub(crate) enum Received {
    /// The peer closed its end or shut it down for writing, and every record it sent before has
    /// been received.
    Eof,
    /// A message: its bytes (checked by `wire::decode`), and the fds that came with it, already
    /// `CLOEXEC` and owned. `trouble` says what was wrong at the transport level (a truncated
    /// record or control buffer): such a message is refused whatever its bytes say.
    Message {
        bytes: Vec<u8>,
        fds: Vec<OwnedFd>,
        trouble: Option<String>,
        /// The trouble is this process's full fd table: the fd sent with the record was
        /// dropped by the kernel (the record itself was fine).
        out_of_fds: bool,
    },
}

/// Receives one record. With `dontwait`, `WouldBlock` when none is queued.
pub(crate) fn recv(chan: BorrowedFd<'_>, dontwait: bool) -> io::Result<Received> {
    let mut buf = vec![0u8; MAX_RECORD + 1];
    // Room for more fds than a record may carry, so extra ones are received (and closed) rather
    // than left to truncation; a sender attaching even more gets MSG_CTRUNC, refused below. And
    // for the sender's credentials, which mark a record (see `tell_records_from_the_end`).
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(4), ScmCredentials(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut flags = RecvFlags::CMSG_CLOEXEC;
    if dontwait {
        flags |= RecvFlags::DONTWAIT;
    }
    let got = loop {
        match rustix::net::recvmsg(
            chan,
            &mut [io::IoSliceMut::new(&mut buf)],
            &mut control,
            flags,
        ) {
            Err(rustix::io::Errno::INTR) => continue,
            r => break r?,
        }
    };
    let mut fds = Vec::new();
    let mut credentials = false;
    for msg in control.drain() {
        match msg {
            RecvAncillaryMessage::ScmRights(received) => fds.extend(received),
            RecvAncillaryMessage::ScmCredentials(_) => credentials = true,
            _ => {}
        }
    }
    // `recvmsg` returns 0 at the end of the channel and for an empty record alike; only a
    // record carries credentials. (A truncated control buffer may have lost them: then it was
    // a record too, refused below.)
    if got.bytes == 0 && fds.is_empty() && !credentials && !got.flags.contains(ReturnFlags::CTRUNC)
    {
        return Ok(Received::Eof);
    }
    let mut trouble = None;
    if got.bytes == 0 {
        trouble = Some("an empty record (0 bytes): not the end of the channel, and not a record of this protocol".into());
    }
    let mut out_of_fds = false;
    if got.flags.contains(ReturnFlags::CTRUNC) {
        let why;
        (why, out_of_fds) = why_truncated(chan, fds.len());
        trouble = Some(why);
    }
    if got.flags.contains(ReturnFlags::TRUNC) || got.bytes > MAX_RECORD {
        trouble = Some(format!(
            "it is longer than the largest record ({MAX_RECORD} bytes)"
        ));
    }
    buf.truncate(got.bytes.min(MAX_RECORD));
    Ok(Received::Message {
        bytes: buf,
        fds,
        trouble,
        out_of_fds,
    })
}

/// Why the kernel truncated a record's control data (`MSG_CTRUNC`), `received` fds having
/// come. The buffer has room for more fds than a record may carry, and the kernel installs them
/// in order until one fails: with none received, the very first could not be installed — this
/// process's fd table is full (`EMFILE`; the kernel dropped the fd). With some received, the
/// sender attached too many, or the table filled up on the way (told apart by trying to take one
/// fd now). `true` for a full fd table.
fn why_truncated(chan: BorrowedFd<'_>, received: usize) -> (String, bool) {
    let out_of_fds = || {
        let limit = crate::limits::nofile();
        format!(
            "the receiving generation (pid {}) is out of file descriptors (EMFILE, RLIMIT_NOFILE soft limit {limit}): the connection's fd could not be received",
            std::process::id()
        )
    };
    if received == 0 {
        return (out_of_fds(), true);
    }
    match rustix::io::fcntl_dupfd_cloexec(chan, 0) {
        Ok(probe) => {
            drop(probe);
            (
                "its control data was truncated: more fds attached than a record may carry".into(),
                false,
            )
        }
        Err(e) if e == rustix::io::Errno::MFILE || e == rustix::io::Errno::NFILE => {
            (out_of_fds(), true)
        }
        Err(e) => (
            format!(
                "its control data was truncated, and a probe for a free fd failed: {}",
                io::Error::from(e)
            ),
            false,
        ),
    }
}

/// What a received connection is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// TCP over IPv4 or IPv6.
    Tcp,
    /// A Unix stream socket.
    Unix,
}

/// Checks a received fd as inherited listeners are checked: a socket, `SOCK_STREAM`, of a family
/// hotexec serves (IPv4, IPv6, Unix), and connected (not a listener, not yet shut). Names the
/// fd's problem otherwise.
pub(crate) fn check_connection(fd: BorrowedFd<'_>) -> Result<Family, String> {
    let ty = rustix::net::sockopt::socket_type(fd).map_err(|e| match e {
        rustix::io::Errno::NOTSOCK => "the fd is not a socket".to_string(),
        e => format!("getsockopt(SO_TYPE): {e}"),
    })?;
    if ty != SocketType::STREAM {
        return Err(format!(
            "the fd is a {ty:?} socket, not a SOCK_STREAM connection"
        ));
    }
    let family = match rustix::net::sockopt::socket_domain(fd)
        .map_err(|e| format!("getsockopt(SO_DOMAIN): {e}"))?
    {
        AddressFamily::INET | AddressFamily::INET6 => Family::Tcp,
        AddressFamily::UNIX => Family::Unix,
        other => {
            return Err(format!(
                "the fd is a socket of family {other:?}, not TCP or Unix"
            ));
        }
    };
    if rustix::net::sockopt::socket_acceptconn(fd).unwrap_or(false) {
        return Err("the fd is a listening socket, not a connection".into());
    }
    match rustix::net::getpeername(fd) {
        Ok(_) => Ok(family),
        Err(rustix::io::Errno::NOTCONN) => Err("the socket is not connected".into()),
        Err(e) => Err(format!("getpeername: {e}")),
    }
}

/// `shutdown(SHUT_WR)`: tells the peer no more records come, while replies can still be read.
pub(crate) fn shut_write(chan: impl AsFd) {
    let _ = rustix::net::shutdown(chan, rustix::net::Shutdown::Write);
}
