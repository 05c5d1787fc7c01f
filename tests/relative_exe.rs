//! The binary's path is resolved once at start: a server started as `./app` (relative argv[0],
//! from its own directory) upgrades to the file renamed over it on disk, even after the test
//! process's and the server's notions of "current directory" differ.

use std::process::{Command, Stdio};
use std::time::Duration;

use hotexec_testkit::prelude::*;

#[test]
fn started_as_dot_slash_app_upgrades_to_the_renamed_binary() {
    subreaper();
    let dir = Scratch::new("relative");
    let bin = dir.0.join("app");
    copy_exe(&example("http"), &bin);
    let pid_file = dir.0.join("app.pid");
    let addr = format!("127.0.0.1:{}", free_port());
    let log = std::fs::File::create(dir.0.join("log")).unwrap();
    // `exec ./app` from inside the directory: argv[0] is "./app".
    let mut child = Command::new("/bin/sh")
        .arg("-c")
        .arg("cd \"$0\" && exec ./app")
        .arg(&dir.0)
        .env("HOTEXEC_LISTEN_HTTP", &addr)
        // Never the example's fixed admin port: a second instance (another test, another
        // checkout) would make this one fail to start.
        .env("HOTEXEC_LISTEN_ADMIN", "127.0.0.1:0")
        .env("HOTEXEC_PID_FILE", &pid_file)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let first = child.id();
    let mut pids = vec![first];
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let read_pid =
            || -> Option<u32> { std::fs::read_to_string(&pid_file).ok()?.trim().parse().ok() };
        wait_for(Duration::from_secs(10), "first pid file", || {
            if let Ok(Some(st)) = child.try_wait() {
                panic!("the server exited at start ({st})");
            }
            (read_pid() == Some(first)).then_some(())
        });
        let sa = addr.parse().unwrap();
        assert_eq!(
            get(sa, "/", Duration::from_secs(5)),
            Outcome::Ok { pid: first }
        );
        // A new binary arrives by rename, as a package manager does it.
        let next = dir.0.join("app.next");
        copy_exe(&example("http"), &next);
        std::fs::rename(&next, &bin).unwrap();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(first as i32),
            nix::sys::signal::Signal::SIGUSR2,
        )
        .unwrap();
        let new = wait_for(Duration::from_secs(10), "a new pid", || {
            read_pid().filter(|p| *p != first)
        });
        pids.push(new);
        answered_by(sa, new, Duration::from_secs(5));
        // The new generation runs the renamed file, with the same argv[0].
        let exe = std::fs::read_link(format!("/proc/{new}/exe")).unwrap();
        assert_eq!(exe, bin.canonicalize().unwrap());
        let cmdline = std::fs::read(format!("/proc/{new}/cmdline")).unwrap();
        assert!(
            cmdline.starts_with(b"./app\0"),
            "{:?}",
            String::from_utf8_lossy(&cmdline)
        );
        // Past the new generation's verdict (up to `max_probation`, 10 s, with one request).
        let st = wait_for(
            Duration::from_secs(30),
            "the old generation to exit",
            || child.try_wait().unwrap(),
        );
        assert!(st.success(), "old generation ended with {st}");
    }));
    for p in &pids {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*p as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let _ = child.wait();
    for p in &pids[1..] {
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(*p as i32), None);
    }
    if let Err(e) = result {
        eprintln!(
            "{}",
            std::fs::read_to_string(dir.0.join("log")).unwrap_or_default()
        );
        std::panic::resume_unwind(e);
    }
}
