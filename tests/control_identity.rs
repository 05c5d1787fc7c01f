//! Who answers on the control socket: a process that bound the name first (a squatter) is
//! refused by the client, and two pid namespaces sharing one network namespace (two containers
//! of a pod, each with a keeper as pid 1) each reach their own server.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use hotexec_testkit::prelude::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The pid the body of `GET /` names, once it answers.
fn serving_pid(addr: SocketAddr) -> u32 {
    wait_for(
        Duration::from_secs(15),
        "the server to answer",
        || match get(addr, "/", Duration::from_secs(5)) {
            Outcome::Ok { pid } => Some(pid),
            _ => None,
        },
    )
}

/// Another process binds the control socket name of a server before the server starts and
/// answers `ok` to everything: `hotexec upgrade` must detect that its peer is not the process it
/// meant (SO_PEERCRED), refuse it with a clear error, print no pid, and the server is untouched.
#[test]
fn a_squatter_on_the_control_socket_name_is_refused() {
    let dir = Scratch::new("squatter");
    let bin = dir.0.join("http");
    copy_exe(&example("http"), &bin);
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg("read go; exec \"$0\" </dev/null")
        .arg(&bin)
        .env("HOTEXEC_LISTEN_HTTP", addr.to_string())
        .env("HOTEXEC_LISTEN_ADMIN", format!("127.0.0.1:{}", free_port()))
        .env("HOTEXEC_KEEPER", "0")
        .env("RUST_LOG", "info")
        .stdin(Stdio::piped());
    let mut server = Started::spawn(cmd, &dir.0, &dir.0.join("log"));
    let pid = server.pid();
    // The squatter: the name the client will use for this pid, bound first.
    let name = hotexec::control::name(pid);
    let sa = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let squatter = UnixListener::bind_addr(&sa).unwrap();
    std::thread::spawn(move || {
        for conn in squatter.incoming().flatten() {
            let mut line = String::new();
            let _ = BufReader::new(&conn).read_line(&mut line);
            let _ = (&conn).write_all(b"ok 4242\n");
        }
    });
    server
        .child
        .as_mut()
        .unwrap()
        .stdin
        .take()
        .unwrap()
        .write_all(b"go\n")
        .unwrap();
    assert_eq!(serving_pid(addr), pid);
    let run = hotexec_cli(
        &["upgrade", "--pid", &pid.to_string(), "--timeout", "10s"],
        Duration::from_secs(20),
    );
    eprintln!("{run:?}");
    assert!(
        run.stdout.trim().is_empty(),
        "a pid was printed: {:?}",
        run.stdout
    );
    assert_eq!(run.code, 4, "{run:?}");
    let me = std::process::id().to_string();
    assert!(
        run.stderr.contains(&format!("@{name}"))
            && run.stderr.contains(&format!("pid {me}"))
            && run.stderr.contains("not"),
        "the error names the socket, who holds it and that it is not the server: {:?}",
        run.stderr
    );
    // The server was neither upgraded nor disturbed; it said why it has no control socket.
    assert_eq!(serving_pid(addr), pid);
    server.wait_log("no control socket", Duration::from_secs(5));
}

/// The host pid of the process that is pid 1 in the pid namespace `unshare` (pid `parent`)
/// created.
fn ns_init(parent: u32) -> u32 {
    wait_for(
        Duration::from_secs(10),
        "pid 1 of the new namespace",
        || {
            descendants(parent).into_iter().map(|(p, _)| p).find(|p| {
                status_text(*p, "NSpid").is_some_and(|v| v.split_whitespace().last() == Some("1"))
            })
        },
    )
}

/// Whether this machine lets us create pid namespaces (root in a container usually can).
fn pid_namespaces_work() -> bool {
    Command::new("unshare")
        .args(["-p", "-f", "--mount-proc", "true"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Two "containers": two pid namespaces in this network namespace, each with a keeper as pid 1
/// and its own server. `hotexec upgrade --pid 1` run inside the second must upgrade the second,
/// and leave the first alone.
#[test]
fn two_pid_namespaces_sharing_a_network_namespace_each_reach_their_own_server() {
    if !pid_namespaces_work() {
        // A container without CAP_SYS_ADMIN cannot make pid namespaces: say so loudly rather
        // than fail a machine that cannot run the scenario at all. The squatter test above
        // still checks the client's peer verification everywhere.
        eprintln!("SKIPPED: cannot create pid namespaces here (unshare -p -f --mount-proc)");
        return;
    }
    let dir = Scratch::new("pidns");
    let start = |tag: &str| -> (Started, SocketAddr) {
        let bin = dir.0.join(format!("http-{tag}"));
        copy_exe(&example("http"), &bin);
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut cmd = Command::new("unshare");
        cmd.args(["-p", "-f", "--mount-proc", "--kill-child"])
            .arg(&bin)
            .env("HOTEXEC_LISTEN_HTTP", addr.to_string())
            .env("HOTEXEC_LISTEN_ADMIN", format!("127.0.0.1:{}", free_port()))
            .env("HOTEXEC_KEEPER", "1")
            .env("HOTEXEC_READY_TIMEOUT", "5s")
            .env("HOTEXEC_DRAIN_TIMEOUT", "5s")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null());
        let mut s = Started::spawn(cmd, &dir.0, &dir.0.join(format!("log-{tag}")));
        s.wait_log("serving", Duration::from_secs(15));
        (s, addr)
    };
    let (a, addr_a) = start("a");
    let a_pid = serving_pid(addr_a);
    let (b, addr_b) = start("b");
    let b_pid = serving_pid(addr_b);
    let b_init = ns_init(b.pid());
    eprintln!(
        "a serves as pid {a_pid} in its namespace, b as pid {b_pid} (b's keeper: host pid {b_init})"
    );
    let cli = Path::new(env!("CARGO_BIN_EXE_hotexec"));
    let t = b_init.to_string();
    let run = hotexec_cli_via(
        &["nsenter", "-t", &t, "-p", "-m"],
        cli,
        &["upgrade", "--pid", "1", "--timeout", "15s"],
    );
    eprintln!("{run:?}");
    assert_eq!(run.code, 0, "{run:?}");
    let new_b: u32 = run.stdout.trim().parse().expect("a pid on stdout");
    assert_ne!(new_b, b_pid);
    assert_eq!(
        serving_pid(addr_a),
        a_pid,
        "the upgrade run in b's namespace upgraded a"
    );
    wait_for(
        Duration::from_secs(10),
        "b's new generation to answer",
        || (serving_pid(addr_b) == new_b).then_some(()),
    );
    assert!(
        !a.log_text().contains("upgrade: starting"),
        "a was asked to upgrade:\n{}",
        a.log_text()
    );
    for s in [&a, &b] {
        assert!(
            !s.log_text().contains("no control socket"),
            "{}",
            s.log_text()
        );
    }
    let _ = kill(Pid::from_raw(b_init as i32), Signal::SIGTERM);
    drop(b);
    drop(a);
}

/// Runs `wrapper… cli args…` (killed, and the test failed, after 30 s), as `hotexec_cli` does.
fn hotexec_cli_via(wrapper: &[&str], cli: &Path, args: &[&str]) -> CliRun {
    let mut cmd = Command::new(wrapper[0]);
    cmd.args(&wrapper[1..]).arg(cli).args(args);
    hotexec_testkit::cli::run(
        cmd,
        &format!("{wrapper:?} hotexec {args:?}"),
        Duration::from_secs(30),
    )
}
