//! What crosses a process boundary: only the new binary of an upgrade receives the listening fds
//! and the hand-over variables; programs the application spawns receive neither.

use std::time::Duration;

use hotexec_testkit::prelude::*;

const HTTP: &str = "HOTEXEC_LISTEN_HTTP";
const T: Duration = Duration::from_secs(10);
const PROTOCOL_VARS: [&str; 6] = [
    "LISTEN_PID=",
    "LISTEN_FDS=",
    "LISTEN_FDNAMES=",
    "HOTEXEC_READY_FD=",
    "HOTEXEC_OWNED_FDNAMES=",
    "HOTEXEC_ACTIVATED_FDS=",
];

/// Checks what `/bin/sh -c 'ls -l /proc/$$/fd; env'`, run by the server, saw.
fn assert_child_sees_nothing(app: &App, when: &str) {
    let body = get_text(app.addr, "/spawn", T).unwrap();
    let fd_lines: Vec<&str> = body.lines().filter(|l| l.contains(" -> ")).collect();
    assert!(!fd_lines.is_empty(), "{when}: no fd listing in {body}");
    for l in &fd_lines {
        let fd: i32 = l
            .split(" -> ")
            .next()
            .and_then(|s| s.split_whitespace().last())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{when}: unreadable line {l:?}"));
        // A shell keeps its own bookkeeping fds (a saved stdin, …) at 10 and above; whatever
        // they are, no socket, pipe or event fd of the server may appear.
        assert!(
            fd <= 2 || fd >= 10,
            "{when}: the child inherited fd {fd}: {l}\n{body}"
        );
        if fd > 2 {
            for kind in ["socket:", "pipe:", "anon_inode:"] {
                assert!(
                    !l.contains(kind),
                    "{when}: the child holds a {kind} {l}\n{body}"
                );
            }
        }
        assert!(
            !l.contains("socket:"),
            "{when}: the child holds a socket: {l}"
        );
    }
    for var in PROTOCOL_VARS {
        assert!(
            !body.lines().any(|l| l.starts_with(var)),
            "{when}: the child's environment has {var}\n{body}"
        );
    }
    assert!(
        body.contains("metrics_socket_open=true"),
        "{when}: the app's own socket must be untouched\n{body}"
    );
}

#[test]
fn children_of_the_application_inherit_neither_fds_nor_variables() {
    let app = App::start("spawner", HTTP, &[]);
    assert_child_sees_nothing(&app, "first generation");
    // A generation started by an upgrade received fds 3.. and the variables itself.
    let (_, new) = app.upgrade();
    wait_for(T, "the new generation to answer", || {
        (get(app.addr, "/", T) == Outcome::Ok { pid: new }).then_some(())
    });
    assert_child_sees_nothing(&app, "upgraded generation");
}

/// The new binary receives exactly: stdio, the listening sockets at 3 (http) and 4 (admin),
/// the readiness pipe at 5 and the connection hand-off channel at 6, with the variables naming
/// them and its own pid. Nothing else of the old process (its
/// signal pipe, shutdown pipe, epoll, accepted connections) crosses the exec.
#[test]
fn only_the_new_binary_receives_the_listening_fds() {
    let app = App::start("http", HTTP, &[]);
    // Keep a client connection open in the old process while it upgrades.
    let _conn = std::net::TcpStream::connect(app.addr).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let dump = app.dir.0.join("seen");
    let good = app.dir.0.join("app.good");
    app.replace_binary(Some(&format!(
        "#!/bin/sh\n{{ echo \"pid=$$\"; ls -l /proc/$$/fd; env; }} > {dump}.tmp\nmv {dump}.tmp {dump}\nexec {good} \"$@\"\n",
        dump = dump.display(),
        good = good.display()
    )));
    let (old, new) = app.upgrade();
    let seen = std::fs::read_to_string(&dump).unwrap();
    assert!(seen.contains(&format!("pid={new}\n")), "{seen}");
    assert!(seen.contains(&format!("LISTEN_PID={new}\n")), "{seen}");
    assert!(seen.contains("LISTEN_FDS=2\n"), "{seen}");
    assert!(seen.contains("LISTEN_FDNAMES=http:admin\n"), "{seen}");
    assert!(seen.contains("HOTEXEC_READY_FD=5\n"), "{seen}");
    assert!(seen.contains("HOTEXEC_HANDOFF_FD=6\n"), "{seen}");
    assert!(seen.contains("HOTEXEC_LINK_FD=7\n"), "{seen}");
    let old_sockets: Vec<String> = fd_targets(old)
        .into_iter()
        .filter(|(_, t)| t.starts_with("socket:"))
        .map(|(_, t)| t)
        .collect();
    let mut fds = Vec::new();
    for l in seen.lines().filter(|l| l.contains(" -> ")) {
        let (left, target) = l.split_once(" -> ").unwrap();
        let fd: i32 = left.split_whitespace().last().unwrap().parse().unwrap();
        // The shell keeps its own bookkeeping (the script it runs, a saved stdout) at 10 and
        // above, CLOEXEC: none of it may be a socket or pipe of the old process.
        if fd >= 10 {
            for kind in ["socket:", "pipe:", "anon_inode:"] {
                assert!(!target.starts_with(kind), "fd {fd} is a {kind}: {seen}");
            }
            continue;
        }
        fds.push((fd, target.to_string()));
    }
    let numbers: Vec<i32> = fds.iter().map(|(n, _)| *n).collect();
    assert_eq!(numbers, [0, 1, 2, 3, 4, 5, 6, 7], "{seen}");
    for fd in [3, 4] {
        assert!(fds[fd].1.starts_with("socket:"), "{seen}");
        assert!(
            old_sockets.contains(&fds[fd].1),
            "fd {fd} is a listener of the old process: {seen}"
        );
    }
    assert!(fds[5].1.starts_with("pipe:"), "{seen}");
    // The hand-off channel and the generation link: sockets made for this upgrade, not ones
    // the old process serves on.
    for fd in [6, 7] {
        assert!(fds[fd].1.starts_with("socket:"), "{seen}");
        assert!(!old_sockets.contains(&fds[fd].1), "{seen}");
    }
}
