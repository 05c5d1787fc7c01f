//! Hostile or broken hand-overs: the example is started by a crafted parent with chosen protocol
//! variables and chosen fds at chosen numbers. Nothing malformed is ever adopted: the process
//! refuses to start with a message naming the variable or the fd, or, when the variables are not
//! meant for it, ignores them, binds fresh and says why.

use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use hotexec_testkit::prelude::*;

const HTTP: &str = "HOTEXEC_LISTEN_HTTP";
const T: Duration = Duration::from_secs(10);

fn tcp4() -> OwnedFd {
    TcpListener::bind("127.0.0.1:0").unwrap().into()
}

fn addr_of(fd: &OwnedFd) -> SocketAddr {
    TcpListener::from(fd.try_clone().unwrap())
        .local_addr()
        .unwrap()
}

fn declared() -> String {
    format!("127.0.0.1:{}", free_port())
}

/// Starts the http example with `env` and `fds`; it must exit 1 with a message that holds every
/// one of `needles`.
fn refused(env: &[(&str, &str)], fds: Vec<(i32, OwnedFd)>, needles: &[&str]) {
    let addr = declared();
    let mut env = env.to_vec();
    env.push((HTTP, &addr));
    let mut p = Crafted::start(&example("http"), &env, fds, ListenPid::Itself);
    let code = p.wait_exit(T);
    let out = p.log_text();
    assert_eq!(
        code,
        Some(1),
        "{env:?}: must refuse to start; output:\n{out}"
    );
    assert!(out.contains("hotexec: cannot start"), "{out}");
    for n in needles {
        assert!(
            out.contains(n),
            "{env:?}: the message must name {n:?}:\n{out}"
        );
    }
    assert!(
        !out.contains("adopted inherited listener"),
        "nothing may be adopted:\n{out}"
    );
}

/// Starts `example` with `env` and `fds`; it must serve on a socket of its own at the declared
/// address, having logged `why` it did not adopt.
fn ignored(pid: ListenPid, env: &[(&str, &str)], fds: Vec<(i32, OwnedFd)>, why: &str) {
    let addr = declared();
    let mut env = env.to_vec();
    env.push((HTTP, &addr));
    let p = Crafted::start(&example("http"), &env, fds, pid);
    p.wait_log("http example serving", T);
    let out = p.log_text();
    assert!(out.contains(why), "the log must say {why:?}:\n{out}");
    assert!(
        !out.contains("adopted inherited listener"),
        "nothing may be adopted:\n{out}"
    );
    assert!(
        out.contains(&format!("tcp:{addr}")),
        "must bind the declared address:\n{out}"
    );
    let served = get(addr.parse().unwrap(), "/", T);
    assert!(matches!(served, Outcome::Ok { .. }), "{served:?}");
}

#[test]
fn malformed_listen_fds_is_refused_by_name() {
    for value in [
        "abc",
        "-1",
        "+1",
        " 1",
        "99999999999999999999999",
        "2000000",
        "1.0",
        "",
    ] {
        refused(
            &[("LISTEN_FDS", value)],
            vec![(3, tcp4())],
            &["LISTEN_FDS", &format!("{value:?}")],
        );
    }
}

#[test]
fn malformed_listen_pid_is_refused_by_name() {
    for value in ["x", "-5", "0", "99999999999"] {
        let addr = declared();
        let env = [("LISTEN_PID", value), ("LISTEN_FDS", "1"), (HTTP, &addr)];
        let mut p = Crafted::start(
            &example("http"),
            &env,
            vec![(3, tcp4())],
            ListenPid::AsGiven,
        );
        assert_eq!(p.wait_exit(T), Some(1), "{}", p.log_text());
        assert!(p.log_text().contains("LISTEN_PID"), "{}", p.log_text());
    }
}

#[test]
fn fd_numbers_past_what_was_passed_are_refused() {
    // Three declared, one passed: fds 4 and 5 are closed.
    refused(
        &[("LISTEN_FDS", "3")],
        vec![(3, tcp4())],
        &["fd 4", "not open"],
    );
    // None passed at all.
    refused(&[("LISTEN_FDS", "1")], vec![], &["fd 3", "not open"]);
}

#[test]
fn fds_that_are_not_listening_sockets_are_refused() {
    let file: OwnedFd = std::fs::File::open("/proc/self/exe").unwrap().into();
    refused(
        &[("LISTEN_FDS", "1")],
        vec![(3, file)],
        &["fd 3", "regular file"],
    );

    let (r, _w) = nix::unistd::pipe().unwrap();
    refused(&[("LISTEN_FDS", "1")], vec![(3, r)], &["fd 3", "pipe"]);

    let peer = TcpListener::bind("127.0.0.1:0").unwrap();
    let conn: OwnedFd = TcpStream::connect(peer.local_addr().unwrap())
        .unwrap()
        .into();
    refused(
        &[("LISTEN_FDS", "1")],
        vec![(3, conn)],
        &["fd 3", "not a listener"],
    );

    let (a, _b) = UnixStream::pair().unwrap();
    refused(
        &[("LISTEN_FDS", "1")],
        vec![(3, a.into())],
        &["fd 3", "unnamed"],
    );
}

#[test]
fn a_named_socket_of_the_wrong_type_is_refused() {
    let udp: OwnedFd = UdpSocket::bind("127.0.0.1:0").unwrap().into();
    refused(
        &[("LISTEN_FDS", "1"), ("LISTEN_FDNAMES", "http")],
        vec![(3, udp)],
        &["fd 3", "\"http\"", "udp:", "declared as tcp:"],
    );
}

/// A named socket of the right type on another address (here another family), in an upgrade's
/// hand-over (a readiness pipe, and not listed in `HOTEXEC_ACTIVATED_FDS`: hotexec bound it), is
/// the normal outcome of a new build that declares another address: not adopted, the declared
/// address is bound fresh, and the log says so. (A service manager's socket would be adopted:
/// tests/activation.rs.)
#[test]
fn a_named_socket_hotexec_bound_on_another_family_is_not_adopted() {
    let v6: OwnedFd = TcpListener::bind("[::1]:0").unwrap().into();
    // The read end stays open until the server has reported ready on the write end.
    let (ready_r, ready_w) = nix::unistd::pipe().unwrap();
    ignored(
        ListenPid::Itself,
        &[
            ("LISTEN_FDS", "1"),
            ("LISTEN_FDNAMES", "http"),
            ("HOTEXEC_READY_FD", "4"),
        ],
        vec![(3, v6), (4, ready_w)],
        "is on tcp:[::1]:",
    );
    drop(ready_r);
}

/// An unnamed socket a service manager passed that matches no declaration is an error at start
/// that names it, never closed unnoticed nor handed to the app.
#[test]
fn an_unnamed_passed_socket_of_the_wrong_type_is_refused() {
    let udp: OwnedFd = UdpSocket::bind("127.0.0.1:0").unwrap().into();
    refused(
        &[("LISTEN_FDS", "1")],
        vec![(3, udp)],
        &["fd 3 on udp:127.0.0.1:", "\"http\" on tcp:"],
    );
}

#[test]
fn listen_fdnames_must_match_the_count_and_be_unique() {
    refused(
        &[("LISTEN_FDS", "1"), ("LISTEN_FDNAMES", "http:admin")],
        vec![(3, tcp4())],
        &["LISTEN_FDNAMES", "2 names for LISTEN_FDS=1"],
    );
    let a = tcp4();
    let b = tcp4();
    refused(
        &[("LISTEN_FDS", "2"), ("LISTEN_FDNAMES", "http:http")],
        vec![(3, a), (4, b)],
        &["LISTEN_FDNAMES", "fd 3 and fd 4"],
    );
}

#[test]
fn a_bad_readiness_fd_is_refused_by_name() {
    for value in ["x", "-1", "2", "3", "99999999999"] {
        refused(
            &[("LISTEN_FDS", "1"), ("HOTEXEC_READY_FD", value)],
            vec![(3, tcp4())],
            &["HOTEXEC_READY_FD"],
        );
    }
    refused(
        &[("LISTEN_FDS", "1"), ("HOTEXEC_READY_FD", "4")],
        vec![(3, tcp4())],
        &["HOTEXEC_READY_FD=4", "not open"],
    );
    let file: OwnedFd = std::fs::File::open("/dev/null").unwrap().into();
    refused(
        &[("LISTEN_FDS", "1"), ("HOTEXEC_READY_FD", "4")],
        vec![(3, tcp4()), (4, file)],
        &["HOTEXEC_READY_FD=4", "not a pipe"],
    );
    let (r, _w) = nix::unistd::pipe().unwrap();
    refused(
        &[("LISTEN_FDS", "1"), ("HOTEXEC_READY_FD", "4")],
        vec![(3, tcp4()), (4, r)],
        &["HOTEXEC_READY_FD=4", "read end"],
    );
}

/// The variables reached a process they were not meant for (a grandchild that inherited them
/// through a shell): ignored, with the reason in the log; the inherited socket is not adopted.
#[test]
fn variables_meant_for_another_pid_are_ignored() {
    let stray = tcp4();
    let stray_addr = addr_of(&stray);
    ignored(
        ListenPid::Parent,
        &[("LISTEN_FDS", "1"), ("LISTEN_FDNAMES", "http")],
        vec![(3, stray)],
        "names another process",
    );
    // Without LISTEN_PID the others are not for anyone.
    ignored(
        ListenPid::AsGiven,
        &[("LISTEN_FDS", "1"), ("LISTEN_FDNAMES", "http")],
        vec![(3, tcp4())],
        "LISTEN_PID is not set",
    );
    let _ = stray_addr;
}

/// An fd number that was closed at exec and then reused by the application itself (here the
/// example's `init` opens a metrics socket) was not passed by the parent: refused, and the
/// application's socket is left alone rather than adopted or closed.
#[test]
fn an_fd_opened_by_the_app_itself_is_never_adopted() {
    let addr = declared();
    let env = [("LISTEN_FDS", "2"), (HTTP, addr.as_str())];
    let mut p = Crafted::start(
        &example("spawner"),
        &env,
        vec![(3, tcp4())],
        ListenPid::Itself,
    );
    assert_eq!(p.wait_exit(T), Some(1), "{}", p.log_text());
    let out = p.log_text();
    assert!(out.contains("fd 4"), "{out}");
    assert!(
        out.contains("was not open when this process started"),
        "{out}"
    );
}

/// Starts the http example with only `HOTEXEC_PID_FILE=path`: it must refuse at start (not at
/// the first upgrade), naming the path.
fn pid_file_refused(path: &std::path::Path, needle: &str) {
    let addr = declared();
    let p = path.to_str().unwrap();
    let env = [("HOTEXEC_PID_FILE", p), (HTTP, addr.as_str())];
    let mut c = Crafted::start(&example("http"), &env, vec![], ListenPid::AsGiven);
    assert_eq!(c.wait_exit(T), Some(1), "{}", c.log_text());
    let out = c.log_text();
    assert!(out.contains("hotexec: cannot start"), "{out}");
    assert!(out.contains(p), "the message must name {p}:\n{out}");
    assert!(
        out.contains(needle),
        "the message must say {needle:?}:\n{out}"
    );
}

#[test]
fn a_pid_file_that_cannot_be_written_stops_the_start() {
    let dir = Scratch::new("pidfile");
    pid_file_refused(&dir.0.join("missing/app.pid"), "does not exist");
    // Unwritable for everyone, root included.
    pid_file_refused(std::path::Path::new("/proc/hotexec-test.pid"), "pid file");
    // SAFETY: geteuid(2) cannot fail and touches no memory.
    if unsafe { libc::geteuid() } == 0 {
        eprintln!("running as root: a mode 0555 directory is writable, checked through /proc only");
    } else {
        let ro = dir.0.join("ro");
        std::fs::create_dir(&ro).unwrap();
        std::fs::set_permissions(&ro, std::os::unix::fs::PermissionsExt::from_mode(0o555)).unwrap();
        pid_file_refused(&ro.join("app.pid"), "ermission denied");
    }
}

/// A symlink planted at the pid file path (at start, and again before an upgrade) is replaced,
/// never followed: the file it points to is untouched.
#[test]
fn a_symlink_at_the_pid_file_path_is_not_followed() {
    let dir = Scratch::new("pidlink");
    let victim = dir.0.join("victim");
    std::fs::write(&victim, "precious\n").unwrap();
    let link = dir.0.join("app.pid");
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    let addr = declared();
    let env = [
        ("HOTEXEC_PID_FILE", link.to_str().unwrap()),
        (HTTP, addr.as_str()),
    ];
    let c = Crafted::start(&example("http"), &env, vec![], ListenPid::AsGiven);
    c.wait_log("http example serving", T);
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
    let meta = std::fs::symlink_metadata(&link).unwrap();
    assert!(
        meta.file_type().is_file(),
        "the pid file must be a regular file now"
    );
    assert_eq!(
        std::fs::read_to_string(&link).unwrap().trim(),
        c.child.id().to_string()
    );
    drop(c);

    let app = App::start("http", HTTP, &[]);
    let victim2 = app.dir.0.join("victim");
    std::fs::write(&victim2, "precious\n").unwrap();
    std::fs::remove_file(&app.pid_file).unwrap();
    std::os::unix::fs::symlink(&victim2, &app.pid_file).unwrap();
    let old = app.first_pid();
    // Resent if it arrives before the server has reported ready (see `App::upgrade_via`).
    let new = app.upgrade_via(old, || {
        let meta = std::fs::symlink_metadata(&app.pid_file).ok()?;
        meta.file_type()
            .is_file()
            .then(|| app.pid_in_file())
            .flatten()
    });
    app.track(new);
    assert_ne!(new, old);
    assert_eq!(std::fs::read_to_string(&victim2).unwrap(), "precious\n");
}
