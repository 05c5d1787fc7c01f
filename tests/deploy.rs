//! The ways operators really deploy and stop: releases switched by symlink, a binary replaced by
//! rename (a package upgrade), a final stop with a slow request in flight, a pid file in a
//! shared sticky directory such as `/tmp`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hotexec_testkit::prelude::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

fn signal(pid: u32, sig: Signal) {
    kill(Pid::from_raw(pid as i32), sig).unwrap();
}

fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// `ln -sfn target link`, atomically: a new symlink renamed over the old one, as deploy tools
/// (Capistrano, `mv -T`) do it, so `link` never stops existing.
fn switch_symlink(target: &str, link: &Path) {
    let tmp = link.with_extension("next");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp).unwrap();
    std::fs::rename(&tmp, link).unwrap();
}

/// Started as `./current/http` with `current -> releases/v1`: switching `current` to
/// `releases/v2` and sending the upgrade signal must run v2; replacing v2's file by rename (a
/// package upgrade) and signalling again must run the new file; signalling with nothing
/// changed warns that the very image already running was started again. All under load, with
/// no failed request.
#[test]
fn symlink_switch_and_rename_deploys_run_the_new_file() {
    let dir = Scratch::new("symlink-deploy");
    let root = dir.0.clone();
    for v in ["v1", "v2"] {
        std::fs::create_dir_all(root.join("releases").join(v)).unwrap();
        copy_exe(
            &example("http"),
            &root.join("releases").join(v).join("http"),
        );
    }
    std::os::unix::fs::symlink("releases/v1", root.join("current")).unwrap();
    let pid_file = root.join("app.pid");
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg("cd \"$0\" && exec ./current/http")
        .arg(&root)
        .env("HOTEXEC_LISTEN_HTTP", addr.to_string())
        .env("HOTEXEC_LISTEN_ADMIN", format!("127.0.0.1:{}", free_port()))
        .env("HOTEXEC_PID_FILE", &pid_file)
        .env("HOTEXEC_READY_TIMEOUT", "5s")
        .env("HOTEXEC_DRAIN_TIMEOUT", "10s")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null());
    let server = Started::spawn(cmd, &root, &root.join("log"));
    let first = server.pid();
    wait_for(Duration::from_secs(10), "the first pid file", || {
        (read_pid(&pid_file) == Some(first)).then_some(())
    });
    assert_eq!(
        get(addr, "/", Duration::from_secs(5)),
        Outcome::Ok { pid: first }
    );
    let load = Load::start(addr, 4);
    let upgrade = |old: u32| -> u32 {
        signal(old, Signal::SIGUSR2);
        let new = wait_for(Duration::from_secs(10), "a new pid in the pid file", || {
            read_pid(&pid_file).filter(|p| *p != old)
        });
        wait_for(Duration::from_secs(10), "the new pid to answer", || {
            (get(addr, "/", Duration::from_secs(5)) == Outcome::Ok { pid: new }).then_some(())
        });
        new
    };

    // 1. The release switch.
    switch_symlink("releases/v2", &root.join("current"));
    let second = upgrade(first);
    let exe = std::fs::read_link(format!("/proc/{second}/exe")).unwrap();
    assert_eq!(
        exe,
        root.join("releases/v2/http"),
        "after `current` was switched to releases/v2, the new generation runs {}",
        exe.display()
    );
    let cmdline = std::fs::read(format!("/proc/{second}/cmdline")).unwrap();
    assert!(
        cmdline.starts_with(b"./current/http\0"),
        "argv[0] is kept: {:?}",
        String::from_utf8_lossy(&cmdline)
    );

    // 2. A package upgrade: the file at the same path replaced by rename.
    let v2 = root.join("releases/v2/http");
    let next = root.join("releases/v2/.http.new");
    copy_exe(&example("http"), &next);
    let new_ino = std::fs::metadata(&next).unwrap().ino();
    std::fs::rename(&next, &v2).unwrap();
    let third = upgrade(second);
    let running = std::fs::metadata(format!("/proc/{third}/exe"))
        .unwrap()
        .ino();
    assert_eq!(
        running, new_ino,
        "the generation after the rename runs the renamed file"
    );

    // 3. Nothing changed on disk: it still upgrades, with a warning.
    let fourth = upgrade(third);
    let results = load.finish();
    let log = server.log_text();
    assert!(
        log.contains("releases/v2/http"),
        "the log names the file actually executed:\n{log}"
    );
    assert!(
        log.contains("is the very image already running"),
        "an upgrade to the running image itself is warned about:\n{log}"
    );
    eprintln!("generations: {first} -> {second} -> {third} -> {fourth}");
    for l in log
        .lines()
        .filter(|l| l.contains("starting the new generation") || l.contains("very image"))
    {
        eprintln!("  {l}");
    }
    assert_no_failures("symlink switch, rename, same image", &results);
    signal(fourth, Signal::SIGTERM);
    wait_for(
        Duration::from_secs(15),
        "the last generation to exit",
        || (!alive(fourth)).then_some(()),
    );
    drop(server);
}

/// `HOTEXEC_EXE` configures the path upgrades execute (relative: against the start directory):
/// started from `releases/v1/http` itself, with `HOTEXEC_EXE=current/http`, the upgrade after
/// `current` was switched to v2 runs v2.
#[test]
fn a_configured_exe_path_is_what_upgrades_execute() {
    let dir = Scratch::new("exe-configured");
    let root = dir.0.clone();
    for v in ["v1", "v2"] {
        std::fs::create_dir_all(root.join("releases").join(v)).unwrap();
        copy_exe(
            &example("http"),
            &root.join("releases").join(v).join("http"),
        );
    }
    std::os::unix::fs::symlink("releases/v1", root.join("current")).unwrap();
    let pid_file = root.join("app.pid");
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg("cd \"$0\" && exec \"$0/releases/v1/http\"")
        .arg(&root)
        .env("HOTEXEC_EXE", "current/http")
        .env("HOTEXEC_LISTEN_HTTP", addr.to_string())
        .env("HOTEXEC_LISTEN_ADMIN", format!("127.0.0.1:{}", free_port()))
        .env("HOTEXEC_PID_FILE", &pid_file)
        .env("HOTEXEC_READY_TIMEOUT", "5s")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null());
    let _server = Started::spawn(cmd, &root, &root.join("log"));
    let first = wait_for(Duration::from_secs(10), "the first pid file", || {
        read_pid(&pid_file)
    });
    assert_eq!(
        get(addr, "/", Duration::from_secs(5)),
        Outcome::Ok { pid: first }
    );
    switch_symlink("releases/v2", &root.join("current"));
    signal(first, Signal::SIGUSR2);
    let next = wait_for(Duration::from_secs(10), "the next generation", || {
        read_pid(&pid_file).filter(|p| *p != first)
    });
    assert_eq!(
        std::fs::read_link(format!("/proc/{next}/exe")).unwrap(),
        root.join("releases/v2/http")
    );
}

/// A rollback re-executes the running image through `/proc/self/exe`; the generation it starts
/// must still upgrade through the path the operator started (`./current/http`), not through the
/// release it happens to run: after `current` goes v1 → v2 (crashes after ready, rolled back to
/// v1's code) → v3, the next upgrade runs v3.
#[test]
fn a_rolled_back_generation_follows_the_next_symlink_switch() {
    let dir = Scratch::new("symlink-rollback");
    let root = dir.0.clone();
    for v in ["v1", "v2", "v3"] {
        std::fs::create_dir_all(root.join("releases").join(v)).unwrap();
    }
    copy_exe(&example("http"), &root.join("releases/v1/http"));
    script(
        &root.join("releases/v2/http"),
        &format!(
            "#!/bin/sh\nFAULT=crash-after-ready=300 exec {} \"$@\"\n",
            example("faulty").display()
        ),
    );
    copy_exe(&example("http"), &root.join("releases/v3/http"));
    std::os::unix::fs::symlink("releases/v1", root.join("current")).unwrap();
    let pid_file = root.join("app.pid");
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg("cd \"$0\" && exec ./current/http")
        .arg(&root)
        .env("HOTEXEC_LISTEN_HTTP", addr.to_string())
        .env("HOTEXEC_LISTEN_ADMIN", format!("127.0.0.1:{}", free_port()))
        .env("HOTEXEC_PID_FILE", &pid_file)
        .env("HOTEXEC_READY_TIMEOUT", "5s")
        .env("HOTEXEC_DRAIN_TIMEOUT", "10s")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null());
    let mut server = Started::spawn(cmd, &root, &root.join("log"));
    let first = server.pid();
    wait_for(Duration::from_secs(10), "the first pid file", || {
        (read_pid(&pid_file) == Some(first)).then_some(())
    });
    // Answering means ready: an upgrade signal before that is ignored.
    assert_eq!(
        get(addr, "/", Duration::from_secs(5)),
        Outcome::Ok { pid: first }
    );
    switch_symlink("releases/v2", &root.join("current"));
    signal(first, Signal::SIGUSR2);
    let crashed = wait_for(Duration::from_secs(10), "the faulty generation", || {
        read_pid(&pid_file).filter(|p| *p != first)
    });
    server.wait_log("rolled back", Duration::from_secs(15));
    let rolled = wait_for(Duration::from_secs(10), "the rolled-back pid", || {
        read_pid(&pid_file).filter(|p| *p != first && *p != crashed)
    });
    wait_for(
        Duration::from_secs(10),
        "the rolled-back generation to answer",
        || (get(addr, "/", Duration::from_secs(5)) == Outcome::Ok { pid: rolled }).then_some(()),
    );
    assert_eq!(
        std::fs::read_link(format!("/proc/{rolled}/exe")).unwrap(),
        root.join("releases/v1/http"),
        "the rollback runs the old code"
    );
    switch_symlink("releases/v3", &root.join("current"));
    signal(rolled, Signal::SIGUSR2);
    let next = wait_for(Duration::from_secs(10), "the next generation", || {
        read_pid(&pid_file).filter(|p| *p != rolled)
    });
    assert_eq!(
        std::fs::read_link(format!("/proc/{next}/exe")).unwrap(),
        root.join("releases/v3/http"),
        "after the rollback, the next upgrade follows `current`"
    );
    // The pid file names it just before the old generation stops accepting.
    wait_for(
        Duration::from_secs(10),
        "the next generation to answer",
        || (get(addr, "/", Duration::from_secs(5)) == Outcome::Ok { pid: next }).then_some(()),
    );
    eprintln!("generations: {first} -> {crashed} (crashed) -> {rolled} (rolled back) -> {next}");
}

/// A final stop (SIGTERM) with slow requests in flight: new clients are refused at once
/// (ECONNREFUSED, so they and load balancers go elsewhere) instead of being accepted by the
/// kernel and reset when the process exits; the slow requests complete.
#[test]
fn a_final_stop_refuses_new_connections_while_slow_requests_drain() {
    const SLOW_MS: u64 = 6000;
    let app = App::start(
        "http",
        "HOTEXEC_LISTEN_HTTP",
        &[("HOTEXEC_DRAIN_TIMEOUT", "30s")],
    );
    let pid = app.first_pid();
    // Connected (and the request sent) before the `GET /` below: the accept queue is FIFO, so
    // once that one is answered these were accepted.
    let slow: Vec<_> = (0..3)
        .map(|_| {
            let mut s = TcpStream::connect(app.addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            s.write_all(
                format!("GET /slow?ms={SLOW_MS} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .unwrap();
            std::thread::spawn(move || {
                let mut buf = String::new();
                let r = s.read_to_string(&mut buf);
                (r.map(|_| buf), Instant::now())
            })
        })
        .collect();
    assert_eq!(
        get(app.addr, "/", Duration::from_secs(5)),
        Outcome::Ok { pid }
    );
    // New-connection clients through the stop.
    const CLIENTS: usize = 4;
    let load = Load::start(app.addr, CLIENTS);
    // The load runs while this thread's own requests are answered.
    for _ in 0..20 {
        assert_eq!(
            get(app.addr, "/", Duration::from_secs(5)),
            Outcome::Ok { pid }
        );
    }
    let sent = Instant::now();
    signal(pid, Signal::SIGTERM);
    // Poll with new connections until one is refused: none may be left to be reset later.
    let mut accepted_meanwhile = 0;
    let refused_after = wait_for(
        Duration::from_secs(5),
        "a new connection to be refused after SIGTERM, while the slow requests drain",
        || match TcpStream::connect_timeout(&app.addr, Duration::from_secs(1)) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Some(sent.elapsed()),
            Err(e) => panic!("connect: {e}"),
            Ok(_) => {
                accepted_meanwhile += 1;
                None
            }
        },
    );
    assert!(
        alive(pid) && slow.iter().all(|t| !t.is_finished()),
        "refused only once the process had exited ({refused_after:?} after SIGTERM)"
    );
    // Refused from now on, not by chance once.
    for _ in 0..20 {
        match TcpStream::connect_timeout(&app.addr, Duration::from_secs(1)) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
            other => panic!("a connection during the drain was not refused: {other:?}"),
        }
    }
    // Stopped now: its clients would only spin on refusals for the rest of the drain.
    let results = load.finish();
    for t in slow {
        let (body, done) = t.join().unwrap();
        let body = body.expect("the slow request completes");
        assert!(
            body.starts_with("HTTP/1.1 200") && body.contains(&format!("pid={pid} slept_ms=")),
            "{body:?}"
        );
        assert!(done.duration_since(sent) > refused_after);
    }
    wait_for(Duration::from_secs(15), "the server to exit", || {
        (!alive(pid)).then_some(())
    });
    let before: Vec<_> = results.iter().filter(|(t, _)| *t < sent).collect();
    let after: Vec<_> = results.iter().filter(|(t, _)| *t >= sent).collect();
    let count = |f: &dyn Fn(&Outcome) -> bool| after.iter().filter(|(_, o)| f(o)).count();
    let ok = count(&|o| matches!(o, Outcome::Ok { .. }));
    let refused = count(&|o| *o == Outcome::Refused);
    let reset = count(&|o| *o == Outcome::Reset);
    eprintln!(
        "refused {:.1} ms after SIGTERM ({accepted_meanwhile} probe connection(s) accepted before); 3 slow requests of {SLOW_MS} ms completed; load: {} requests before SIGTERM, all ok; after: {ok} ok, {refused} refused, {reset} reset (queued when accepting stopped)",
        refused_after.as_secs_f64() * 1e3,
        before.len()
    );
    assert!(
        !before.is_empty() && before.iter().all(|(_, o)| matches!(o, Outcome::Ok { .. })),
        "{before:?}"
    );
    assert_eq!(
        ok + refused + reset,
        after.len(),
        "after SIGTERM a request either completes or is refused: {after:?}"
    );
    // A connection can only be reset when the socket closes, once: at most one per client.
    assert!(reset <= CLIENTS, "{reset} resets");
    assert!(refused > 0);
}

const SERVER_UID: u32 = 23456;
const OTHER_UID: u32 = 12345;

/// Root can give files away and start the server as another user; the sticky rule does not bind
/// root itself, so the server must run unprivileged for these tests to mean anything.
fn can_act_as_other_users() -> bool {
    // SAFETY: geteuid(2) cannot fail and touches no memory.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!(
            "SKIPPED: needs root (to chown files to another uid and start the server as one)"
        );
    }
    root
}

/// A world-writable sticky directory (like `/tmp`) and a copy of the echo example that another
/// user can run.
fn sticky_setup(tag: &str) -> (Scratch, std::path::PathBuf, std::path::PathBuf) {
    let dir = Scratch::new(tag);
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o755)).unwrap();
    let shared = dir.0.join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let bin = dir.0.join("echo");
    copy_exe(&example("echo"), &bin);
    (dir, shared, bin)
}

/// A file owned by another user (root creates it and gives it away).
fn plant(path: &Path, contents: &str) {
    std::fs::write(path, contents).unwrap();
    std::os::unix::fs::chown(path, Some(OTHER_UID), Some(OTHER_UID)).unwrap();
}

/// The echo server as an unprivileged user, held at `read` until `go` is written to its stdin
/// (so its pid is known before it starts).
fn start_as_user(dir: &Path, bin: &Path, pid_file: &Path, addr: SocketAddr) -> Started {
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg("read go; exec \"$0\" </dev/null")
        .arg(bin)
        .env("HOTEXEC_LISTEN_ECHO", addr.to_string())
        .env("HOTEXEC_PID_FILE", pid_file)
        .env("HOTEXEC_KEEPER", "0")
        .env("RUST_LOG", "info")
        .stdin(Stdio::piped())
        .uid(SERVER_UID)
        .gid(SERVER_UID);
    Started::spawn(cmd, dir, &dir.join("log"))
}

fn release(server: &mut Started) {
    let mut stdin = server.child.as_mut().unwrap().stdin.take().unwrap();
    stdin.write_all(b"go\n").unwrap();
}

/// Another user's file at the name of the temporary pid file (predictable: it held the pid)
/// must not stop the start: the temporary name is random and created exclusively.
#[test]
fn pid_file_in_a_sticky_dir_another_users_temp_file_does_not_stop_the_start() {
    if !can_act_as_other_users() {
        return;
    }
    let (dir, shared, bin) = sticky_setup("sticky-tmp");
    let pid_file = shared.join("app.pid");
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut server = start_as_user(&dir.0, &bin, &pid_file, addr);
    let pid = server.pid();
    let squat = shared.join(format!(".app.pid.{pid}.tmp"));
    plant(&squat, "squatted\n");
    release(&mut server);
    let child = server.child.as_mut().unwrap();
    wait_for(Duration::from_secs(10), "the pid file", || {
        if let Some(st) = child.try_wait().unwrap() {
            panic!("the server did not start ({st})");
        }
        (read_pid(&pid_file) == Some(pid)).then_some(())
    });
    let meta = std::fs::metadata(&pid_file).unwrap();
    assert_eq!(meta.uid(), SERVER_UID);
    TcpStream::connect(addr).unwrap();
    signal(pid, Signal::SIGTERM);
    let st = server.wait_exit(Duration::from_secs(15));
    assert!(st.success(), "{st}");
    assert!(!pid_file.exists(), "removed on the final stop");
    assert_eq!(std::fs::read_to_string(&squat).unwrap(), "squatted\n");
    let leftovers: Vec<_> = std::fs::read_dir(&shared)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n.to_string_lossy() != squat.file_name().unwrap().to_string_lossy())
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

/// The pid file path itself holds another user's file, which a sticky directory does not let
/// this user replace: the start fails with a message naming the path, its owner and why; the
/// other user's file is left alone.
#[test]
fn pid_file_in_a_sticky_dir_owned_by_another_user_is_a_clear_error() {
    if !can_act_as_other_users() {
        return;
    }
    let (dir, shared, bin) = sticky_setup("sticky-path");
    let pid_file = shared.join("app.pid");
    plant(&pid_file, "1\n");
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut server = start_as_user(&dir.0, &bin, &pid_file, addr);
    release(&mut server);
    let st = server.wait_exit(Duration::from_secs(10));
    assert_eq!(st.code(), Some(1), "{st}");
    let log = server.log_text();
    let path = pid_file.display().to_string();
    for needle in [
        path.as_str(),
        &format!("uid {OTHER_UID}"),
        "sticky",
        "cannot replace",
    ] {
        assert!(
            log.contains(needle),
            "{needle:?} not in the message:\n{log}"
        );
    }
    assert_eq!(std::fs::read_to_string(&pid_file).unwrap(), "1\n");
    assert_eq!(std::fs::metadata(&pid_file).unwrap().uid(), OTHER_UID);
    let tmp_left = std::fs::read_dir(&shared)
        .unwrap()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().ends_with(".tmp"));
    assert!(!tmp_left, "a temporary file was left behind");
    eprintln!("message: {}", log.trim());
}
