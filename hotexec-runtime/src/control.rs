//! The control socket: how a tool (the `hotexec` command) triggers an upgrade and learns its
//! outcome, where a signal could only fire and forget.
//!
//! Every hotexec process listens on the abstract Unix socket `@hotexec/<pid-ns>/<pid>` (Linux
//! abstract namespace: no file to clean up, gone when the process exits), where `<pid-ns>` is the
//! inode of the process's pid namespace (`/proc/self/ns/pid`). Abstract names live in the network
//! namespace and pids in the pid namespace: two containers of one pod share the first but not
//! the second, and both have a pid 1; the namespace inode keeps their names apart. The socket is
//! `SOCK_CLOEXEC` and never passed to a new generation; each generation binds its own.
//!
//! Both ends check who is on the other side with `SO_PEERCRED`: the server serves only a peer
//! with its uid, or root, in its own pid namespace (a container of the same pod shares the
//! abstract names, not the right to upgrade); the client talks only to the process it meant —
//! the pid it was given, under the uid that process runs as. Anyone can bind an abstract name, so a process that took
//! the name first (to answer `ok` to an upgrade that never happened) is detected and refused
//! ([`RequestError::WrongPeer`]).
//!
//! The protocol is one request line, one reply line:
//!
//! | request | reply |
//! |---|---|
//! | `upgrade` | `ok <new pid>`, or `error <kind> <reason>` |
//! | `check` | `checked <fact>\t<fact>…` (what an upgrade would execute, see `hotexec::preflight`; nothing is started), or `error <kind> <reason>` |
//! | `upgrade v2` | `report <fields>`: the upgrade's evidence ([`UpgradeReport`]), whatever the outcome; or `error <kind> <reason>` when no upgrade was attempted |
//! | `status v2` | `status <fields>`: what serves now ([`Status`]) |
//!
//! `<fields>` are `key=value` pairs separated by spaces, values percent-encoded (every byte
//! outside `!`..=`~`, and `%`, as `%XX`), nested keys dotted (`health.error_rate=0`,
//! `listener.0.name=http`); unknown keys are skipped. The plain `upgrade` request stays as it
//! was, for older clients; a newer client ([`request_upgrade`]) asks `upgrade v2` and falls
//! back to `upgrade` when an older server answers `error bad-request`.
//!
//! `kind` is one of `busy` (an upgrade is running, or this generation is draining), `spawn`,
//! `limit` (what the upgrade must pass is past a kernel limit; nothing was started), `exec` (the binary could not be executed), `exited` (the new process exited before it was
//! ready), `ready-timeout`, `aborted` (a stop signal arrived meanwhile), `unhealthy` (the new generation was ready but
//! served worse than the old one during its probation: the old build serves again), the
//! preflight refusals before anything is started (`missing`, `not-executable`, `format`,
//! `machine`, `interpreter`, `incompatible`: see `hotexec::preflight`), `not-running`,
//! `unreachable` (a keeper could not reach its serving generation), `refused` (peer of another
//! user, or in another pid namespace), `bad-request`. On every error the serving generation keeps serving.
//!
//! A keeper (keeper mode) answers on its own pid by relaying the request to the generation that
//! serves, so a pid file naming the keeper works as well.

use std::io::{self, Read, Write};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::error::UpgradeError;
use crate::evidence::wire::Record;
use crate::evidence::{Status, UpgradeReport};

/// The abstract socket name of process `pid` of the caller's pid namespace, without the leading
/// NUL: `hotexec/<pid-ns inode>/<pid>` (`hotexec/<pid>` if `/proc/self/ns/pid` cannot be read).
pub fn name(pid: u32) -> String {
    use std::os::unix::fs::MetadataExt;
    match std::fs::metadata("/proc/self/ns/pid") {
        Ok(ns) => format!("hotexec/{}/{pid}", ns.ino()),
        Err(_) => format!("hotexec/{pid}"),
    }
}

/// Longest request or reply line accepted.
const MAX_LINE: usize = 4096;
/// How long a client may take to send its request line.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; more are refused with `busy`.
const MAX_ACTIVE: usize = 16;

/// A reply of the control socket.
#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    /// `ok <pid>`: the new generation that now serves.
    Ok(u32),
    /// `checked <fact>\t<fact>…`: what an upgrade would execute, one fact a line (tabs in a
    /// fact are sent as spaces).
    Checked(Vec<String>),
    /// `report <fields>`: the evidence of an upgrade, the reply to `upgrade v2`.
    Report(Box<UpgradeReport>),
    /// `status <fields>`: the reply to `status v2`.
    Status(Box<Status>),
    /// `error <kind> <reason>`.
    Error {
        /// Machine-readable class, see the module docs.
        kind: String,
        /// For humans.
        reason: String,
    },
}

impl Reply {
    /// The reply to an upgrade request.
    pub fn from_upgrade(result: Result<u32, UpgradeError>) -> Reply {
        match result {
            Ok(pid) => Reply::Ok(pid),
            Err(e) => Reply::error(crate::evidence::kind_of(&e), e.to_string()),
        }
    }

    /// An `error` reply; newlines in `reason` are flattened to keep it one line.
    pub fn error(kind: &str, reason: impl Into<String>) -> Reply {
        Reply::Error {
            kind: kind.to_owned(),
            reason: reason.into().replace('\n', " "),
        }
    }

    /// The reply line, without its newline.
    pub fn to_line(&self) -> String {
        match self {
            Reply::Ok(pid) => format!("ok {pid}"),
            Reply::Checked(facts) => {
                let facts: Vec<String> = facts
                    .iter()
                    .map(|f| f.replace(['\t', '\n', '\r'], " "))
                    .collect();
                format!("checked {}", facts.join("\t"))
            }
            Reply::Report(r) => format!("report {}", r.to_record().encode()),
            Reply::Status(s) => format!("status {}", s.to_record().encode()),
            Reply::Error { kind, reason } => format!("error {kind} {reason}"),
        }
    }

    /// Parses a reply line (with or without its newline).
    pub fn parse(line: &str) -> Result<Reply, String> {
        let line = line.trim_end_matches(['\n', '\r']);
        if let Some(pid) = line.strip_prefix("ok ") {
            return pid
                .parse()
                .map(Reply::Ok)
                .map_err(|_| format!("malformed reply {line:?}: `ok` must be followed by a pid"));
        }
        if let Some(rest) = line.strip_prefix("checked ") {
            return Ok(Reply::Checked(
                rest.split('\t').map(str::to_owned).collect(),
            ));
        }
        if let Some(fields) = line.strip_prefix("report ") {
            return UpgradeReport::from_record(&Record::decode(fields))
                .map(|r| Reply::Report(Box::new(r)))
                .ok_or_else(|| format!("malformed report {line:?}: no `result`"));
        }
        if let Some(fields) = line.strip_prefix("status ") {
            return Status::from_record(&Record::decode(fields))
                .map(|s| Reply::Status(Box::new(s)))
                .ok_or_else(|| format!("malformed status {line:?}: no `pid`"));
        }
        if let Some(rest) = line.strip_prefix("error ") {
            let (kind, reason) = rest.split_once(' ').unwrap_or((rest, ""));
            return Ok(Reply::error(kind, reason));
        }
        Err(format!(
            "malformed reply {line:?}: expected `ok <pid>`, `checked <facts>`, `report …`, `status …` or `error <kind> <reason>`"
        ))
    }
}

/// How many control connections a server is serving.
#[derive(Clone, Debug, Default)]
pub(crate) struct Activity(Arc<AtomicUsize>);

impl Activity {
    /// Waits (up to `limit`) until no control connection is being served. Called when `main`
    /// has returned: the `upgrade` request that replaced this generation gets its reply before
    /// the process exits.
    pub(crate) fn wait_idle(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.0.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// What a server does with one request line; returns the reply.
pub(crate) type Handler = Arc<dyn Fn(&str) -> Reply + Send + Sync>;

/// Binds `@hotexec/<our pid-ns>/<our pid>` and serves it on a thread of its own, counting the
/// connections in service in `activity`.
pub(crate) fn start(handler: Handler, activity: Activity) -> io::Result<()> {
    let pid = std::process::id();
    let addr = SocketAddr::from_abstract_name(name(pid).as_bytes())?;
    // std creates the socket with SOCK_CLOEXEC: it never crosses an execve.
    let listener = UnixListener::bind_addr(&addr).map_err(|e| {
        let why = if e.kind() == io::ErrorKind::AddrInUse {
            " (another process holds this name; `hotexec upgrade` will refuse to talk to it)"
        } else {
            ""
        };
        io::Error::new(e.kind(), format!("bind @{}: {e}{why}", name(pid)))
    })?;
    std::thread::Builder::new()
        .name("hotexec-control".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let conn = match conn {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!("control socket: accept: {e}");
                        std::thread::sleep(Duration::from_millis(50));
                        continue;
                    }
                };
                let active = activity.0.clone();
                if active.fetch_add(1, Ordering::SeqCst) >= MAX_ACTIVE {
                    active.fetch_sub(1, Ordering::SeqCst);
                    let _ = reply(&conn, &Reply::error("busy", "too many control connections"));
                    continue;
                }
                let h = handler.clone();
                let spawned = std::thread::Builder::new()
                    .name("hotexec-control-conn".into())
                    .spawn({
                        let active = active.clone();
                        move || {
                            serve(conn, &h);
                            active.fetch_sub(1, Ordering::SeqCst);
                        }
                    });
                if let Err(e) = spawned {
                    active.fetch_sub(1, Ordering::SeqCst);
                    tracing::warn!("control socket: cannot start a thread: {e}");
                }
            }
        })?;
    tracing::debug!(socket = %format!("@{}", name(pid)), "control socket listening");
    Ok(())
}

fn reply(mut conn: &UnixStream, r: &Reply) -> io::Result<()> {
    conn.write_all(format!("{}\n", r.to_line()).as_bytes())
}

fn serve(conn: UnixStream, handler: &Handler) {
    let peer = nix::sys::socket::getsockopt(&conn, nix::sys::socket::sockopt::PeerCredentials);
    // SAFETY: geteuid(2) cannot fail and touches no memory.
    let me = unsafe { libc::geteuid() };
    let peer = match peer {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!("control socket: SO_PEERCRED: {}", e.desc());
            return;
        }
    };
    if peer.uid() != me && peer.uid() != 0 {
        tracing::warn!(
            peer_pid = peer.pid(),
            peer_uid = peer.uid(),
            "control socket: request from another user refused"
        );
        let _ = reply(
            &conn,
            &Reply::error(
                "refused",
                "only the same user or root may control this process",
            ),
        );
        return;
    }
    if let Err(why) = same_pid_namespace(peer.pid()) {
        tracing::warn!(
            peer_pid = peer.pid(),
            peer_uid = peer.uid(),
            "control socket: request from another pid namespace refused: {why}"
        );
        let _ = reply(
            &conn,
            &Reply::error(
                "refused",
                format!("only a process in this process's pid namespace may control it: {why}"),
            ),
        );
        return;
    }
    let _ = conn.set_read_timeout(Some(REQUEST_TIMEOUT));
    let line = match read_line(&conn, Instant::now() + REQUEST_TIMEOUT) {
        Ok(l) => l,
        Err(e) => {
            let _ = reply(&conn, &Reply::error("bad-request", e.to_string()));
            return;
        }
    };
    let request = line.trim();
    tracing::info!(request, "control socket request");
    let r = handler(request);
    if let Err(e) = reply(&conn, &r) {
        tracing::warn!(reply = %r.to_line(), "control socket: the client left before the reply ({e})");
    }
}

/// `Ok` when the peer `pid` (as `SO_PEERCRED` gives it: translated into this process's pid
/// namespace, 0 when it is not visible there) runs in this process's pid namespace.
///
/// The abstract socket name is shared by everything in the network namespace: two containers
/// of a pod reach each other's. Its `<pid-ns>` part keeps names from colliding, not strangers
/// out; this check does. A peer in an ancestor namespace (the host) has no pid here (0); one in
/// a descendant namespace (a sidecar started with `unshare --pid`) has one, but another
/// `/proc/<pid>/ns/pid`. Unreadable: refused too. Operators reach a server in its own
/// namespace: `docker exec`, `kubectl exec`, `nsenter -t PID -p`.
fn same_pid_namespace(pid: i32) -> Result<(), String> {
    if pid <= 0 {
        return Err(format!(
            "the peer's pid is {pid} here: it runs in a pid namespace this process cannot see"
        ));
    }
    let ns = |p: &str| std::fs::read_link(format!("/proc/{p}/ns/pid"));
    let mine = ns("self").map_err(|e| format!("cannot read /proc/self/ns/pid: {e}"))?;
    let theirs = ns(&pid.to_string())
        .map_err(|e| format!("cannot read /proc/{pid}/ns/pid of the peer: {e}"))?;
    if mine != theirs {
        return Err(format!(
            "the peer (pid {pid}) runs in pid namespace {}, this process in {}",
            theirs.display(),
            mine.display()
        ));
    }
    Ok(())
}

/// Reads one line, until `deadline`.
fn read_line(mut conn: &UnixStream, deadline: Instant) -> io::Result<String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 512];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no complete line in time",
            ));
        }
        conn.set_read_timeout(Some(left))?;
        let n = match conn.read(&mut chunk) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed before a complete line",
                ));
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no complete line in time",
                ));
            }
            Err(e) => return Err(e),
        };
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.iter().position(|&b| b == b'\n') {
            buf.truncate(end);
            return String::from_utf8(buf).map_err(|_| io::Error::other("line is not UTF-8"));
        }
        if buf.len() > MAX_LINE {
            return Err(io::Error::other("line too long"));
        }
    }
}

/// Why a request got no reply.
#[derive(Debug)]
pub enum RequestError {
    /// Nothing listens on `@hotexec/<pid-ns>/<pid>` (no such process, not a hotexec process, or
    /// another pid or network namespace), or the connection failed.
    Unreachable(String),
    /// No reply within the timeout; the upgrade may still complete.
    Timeout(Duration),
    /// The connection broke or the reply was not understood.
    Protocol(String),
    /// The socket is held by another process than the one meant (`SO_PEERCRED`): nothing was
    /// sent to it.
    WrongPeer(String),
}

impl std::fmt::Display for RequestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RequestError::Unreachable(e) => write!(f, "{e}"),
            RequestError::Timeout(t) => write!(f, "no reply within {t:?}"),
            RequestError::Protocol(e) => write!(f, "{e}"),
            RequestError::WrongPeer(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for RequestError {}

/// Sends `request` to the control socket of `pid` (a pid of the caller's pid namespace) and
/// waits up to `timeout` for the reply. Before sending, checks with `SO_PEERCRED` that the
/// socket is held by `pid` itself, under the uid `pid` runs as.
pub fn request(pid: u32, request: &str, timeout: Duration) -> Result<Reply, RequestError> {
    let deadline = Instant::now() + timeout;
    let name = name(pid);
    let sock = format!("@{name}");
    let addr = SocketAddr::from_abstract_name(name.as_bytes())
        .map_err(|e| RequestError::Unreachable(format!("{sock}: {e}")))?;
    let conn = UnixStream::connect_addr(&addr).map_err(|e| {
        RequestError::Unreachable(format!(
            "cannot connect to the control socket {sock} of pid {pid}: {e} (is it a running hotexec server, in this pid and network namespace?)"
        ))
    })?;
    check_peer(&conn, pid, &sock)?;
    (&conn)
        .write_all(format!("{request}\n").as_bytes())
        .map_err(|e| RequestError::Protocol(format!("{sock}: sending the request: {e}")))?;
    match read_line(&conn, deadline) {
        Ok(line) => Reply::parse(&line).map_err(RequestError::Protocol),
        Err(e) if e.kind() == io::ErrorKind::TimedOut => Err(RequestError::Timeout(timeout)),
        Err(e) => Err(RequestError::Protocol(format!(
            "{sock}: reading the reply: {e}"
        ))),
    }
}

/// Asks `pid` for an upgrade and returns its evidence, whatever the outcome: an `error` reply
/// (busy, refused, …) is a report with `result` `error` and the reply's kind and reason. An
/// older server that does not know `upgrade v2` is asked the plain `upgrade` (its report then
/// has the outcome and the pids only). `Err` only when no answer came.
pub fn request_upgrade(pid: u32, timeout: Duration) -> Result<UpgradeReport, RequestError> {
    let deadline = Instant::now() + timeout;
    let reply = match request(pid, "upgrade v2", timeout)? {
        Reply::Error { kind, .. } if kind == "bad-request" => request(
            pid,
            "upgrade",
            deadline.saturating_duration_since(Instant::now()),
        )?,
        other => other,
    };
    let mut report = UpgradeReport {
        trigger: crate::evidence::Trigger::Control,
        old_pid: pid,
        ..UpgradeReport::default()
    };
    match reply {
        Reply::Report(r) => return Ok(*r),
        Reply::Ok(new) => report.new_pid = Some(new),
        Reply::Error { kind, reason } => {
            report.result = crate::evidence::UpgradeResult::Error;
            report.kind = Some(kind);
            report.reason = Some(reason);
        }
        Reply::Status(_) | Reply::Checked(_) => {
            return Err(RequestError::Protocol(format!(
                "pid {pid} answered an upgrade request with something else"
            )));
        }
    }
    Ok(report)
}

/// Asks `pid` what serves now. An `error` reply (an older server that does not know
/// `status v2` answers `bad-request`) is `Err(Reply::Error)` inside `Ok`.
pub fn request_status(pid: u32, timeout: Duration) -> Result<Result<Status, Reply>, RequestError> {
    match request(pid, "status v2", timeout)? {
        Reply::Status(s) => Ok(Ok(*s)),
        other @ Reply::Error { .. } => Ok(Err(other)),
        other => Err(RequestError::Protocol(format!(
            "pid {pid} answered a status request with {:?}",
            other.to_line()
        ))),
    }
}

/// Refuses a control socket that is not held by `pid`, or whose holder runs under another uid
/// than `pid` does.
fn check_peer(conn: &UnixStream, pid: u32, sock: &str) -> Result<(), RequestError> {
    use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
    let peer = getsockopt(conn, PeerCredentials)
        .map_err(|e| RequestError::Protocol(format!("{sock}: SO_PEERCRED: {}", e.desc())))?;
    // SO_PEERCRED gives the pid as seen from the caller's pid namespace, like `pid`.
    if u32::try_from(peer.pid()).ok() != Some(pid) {
        return Err(RequestError::WrongPeer(format!(
            "the control socket {sock} is held by pid {} (uid {}), not by pid {pid}: refusing to talk to it (another process bound the name before the server did, or pid {pid} is not a hotexec server); nothing was sent",
            peer.pid(),
            peer.uid()
        )));
    }
    if let Some(uid) = euid_of(pid) {
        if peer.uid() != uid {
            return Err(RequestError::WrongPeer(format!(
                "the control socket {sock} is held by uid {}, but pid {pid} runs as uid {uid}: refusing to talk to it; nothing was sent",
                peer.uid()
            )));
        }
    }
    Ok(())
}

/// The effective uid of `pid`, from `/proc/<pid>/status` (`None` if it cannot be read).
fn euid_of(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_round_trip() {
        for r in [
            Reply::Ok(42),
            Reply::error("exec", "could not execute /x: No such file or directory"),
            Reply::error("busy", ""),
            Reply::Checked(vec!["exe: /srv/app".into(), "note: none".into()]),
        ] {
            assert_eq!(Reply::parse(&format!("{}\n", r.to_line())), Ok(r));
        }
        // A tab or newline inside a fact cannot split it.
        let odd = Reply::Checked(vec!["exe: /a\tb\nc".into()]);
        assert_eq!(
            Reply::parse(&odd.to_line()),
            Ok(Reply::Checked(vec!["exe: /a b c".into()]))
        );
        assert_eq!(
            Reply::from_upgrade(Err(UpgradeError::Unhealthy {
                pid: 9,
                reason: "5.0% of its requests got a bad answer".into()
            })),
            Reply::error(
                "unhealthy",
                "new process 9 was not committed, the old build serves again: 5.0% of its requests got a bad answer"
            )
        );
        assert!(Reply::parse("ok x").is_err());
        assert!(Reply::parse("hello").is_err());
        assert_eq!(
            Reply::from_upgrade(Err(UpgradeError::ReadyTimeout {
                pid: 7,
                timeout: Duration::from_secs(1)
            })),
            Reply::error(
                "ready-timeout",
                "new process 7 did not report ready within 1s; it was killed"
            )
        );
        assert_eq!(
            Reply::error("x", "a\nb"),
            Reply::Error {
                kind: "x".into(),
                reason: "a b".into()
            }
        );
    }

    /// A real socket in this process: the handler's reply reaches the client, a request that
    /// never ends its line gets nothing (the client times out), and a missing server is
    /// unreachable.
    #[test]
    fn request_and_reply_over_a_real_socket() {
        start(
            Arc::new(|req| match req {
                "upgrade" => Reply::Ok(4242),
                "slow" => {
                    std::thread::sleep(Duration::from_millis(800));
                    Reply::Ok(1)
                }
                other => Reply::error("bad-request", other),
            }),
            Activity::default(),
        )
        .unwrap();
        let me = std::process::id();
        assert_eq!(
            request(me, "upgrade", Duration::from_secs(5)).unwrap(),
            Reply::Ok(4242)
        );
        assert_eq!(
            request(me, "what", Duration::from_secs(5)).unwrap(),
            Reply::error("bad-request", "what")
        );
        assert!(matches!(
            request(me, "slow", Duration::from_millis(100)),
            Err(RequestError::Timeout(_))
        ));
        // Pid 0 is never a process: nothing listens there.
        assert!(matches!(
            request(0, "upgrade", Duration::from_secs(1)),
            Err(RequestError::Unreachable(_))
        ));
        // The socket does not survive an exec: it is close-on-exec.
        let fds: Vec<_> = std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .flatten()
            .collect();
        for fd in fds {
            let Ok(n) = fd.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let target = std::fs::read_link(fd.path()).unwrap_or_default();
            if target.to_string_lossy().starts_with("socket:") {
                // SAFETY: F_GETFD only reads the flags of a number; a closed one gives -1.
                let flags = unsafe { libc::fcntl(n, libc::F_GETFD) };
                assert!(
                    flags < 0 || flags & libc::FD_CLOEXEC != 0,
                    "socket fd {n} is not CLOEXEC"
                );
            }
        }
    }
}
