//! The kernel's limits on what one upgrade can pass: the size of one environment string
//! (`LISTEN_FDNAMES` holds every listener's name) and `RLIMIT_NOFILE`. Past either, the upgrade
//! fails with a message naming the limit, the numbers and what to do; the old generation
//! serves on, and a later upgrade (within the limits) works.

use std::time::Duration;

use hotexec_testkit::prelude::*;

const T: Duration = Duration::from_secs(20);

fn nofile() -> libc::rlimit {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into `r`, which lives for the call.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) }, 0);
    r
}

/// Sets the soft `RLIMIT_NOFILE` of `pid` (a process of this test); returns the old limits.
fn set_nofile(pid: u32, soft: u64) -> libc::rlimit {
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prlimit reads the limit it is given and writes the old one into `old`; both live
    // for the call. Lowering a soft limit of our own child needs no privilege.
    let r = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_NOFILE,
            std::ptr::null(),
            &mut old,
        )
    };
    assert_eq!(r, 0, "prlimit({pid}): {}", std::io::Error::last_os_error());
    let new = libc::rlimit {
        rlim_cur: soft,
        rlim_max: old.rlim_max,
    };
    // SAFETY: as above.
    let r = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_NOFILE,
            &new,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(r, 0, "prlimit({pid}): {}", std::io::Error::last_os_error());
    old
}

/// 2,100 listeners with 64-character names: `LISTEN_FDNAMES` is about 136 KB, past the 128 KiB
/// Linux allows one environment string (`MAX_ARG_STRLEN`), so `execve` would fail with E2BIG.
#[test]
fn listener_names_past_max_arg_strlen_fail_the_upgrade_clearly() {
    const N: usize = 2100;
    // Each listener is held twice (the runtime's copy, the app's), and the new generation
    // gets them all: the test raises its own soft limit, which the server inherits.
    let mut r = nofile();
    let need = (4 * N + 200) as u64;
    if r.rlim_max < need {
        eprintln!("SKIPPED: RLIMIT_NOFILE hard limit {} < {need}", r.rlim_max);
        return;
    }
    r.rlim_cur = r.rlim_cur.max(need);
    // SAFETY: setrlimit reads one rlimit, which lives for the call.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) }, 0);
    let first = format!("HOTEXEC_LISTEN_L{:063}", 0);
    let app = App::start(
        "bench",
        &first,
        &[
            ("HOTEXEC_EXAMPLE_ROLE", "many"),
            ("MANY_COUNT", &N.to_string()),
            ("MANY_LONG_NAMES", "1"),
        ],
    );
    let old = app.first_pid();
    // It serves its first listeners before it reports ready, and ignores an upgrade signal
    // until then: signal again each time the previous one was ignored.
    let mut sent = 0;
    wait_for(T, "an upgrade attempt", || {
        let log = app.log_text();
        if log.contains("upgrade failed") {
            return Some(());
        }
        if log.matches("has not reported ready yet").count() >= sent {
            app.signal_upgrade();
            sent += 1;
        }
        None
    });
    let line = app.nth_failure(1, T);
    eprintln!("{line}");
    for needle in ["LISTEN_FDNAMES", "131072", &N.to_string(), "listener names"] {
        assert!(line.contains(needle), "{needle:?} not in: {line}");
    }
    assert_eq!(app.pid_in_file(), Some(old));
    assert_eq!(get(app.addr, "/", T), Outcome::Ok { pid: old });
    assert!(children_of(old).is_empty(), "{:?}", children_of(old));
    // Said at start already, not only at the first upgrade.
    assert!(
        app.log_text()
            .contains("every upgrade of this server will fail"),
        "no warning at start"
    );
}

/// The server's `RLIMIT_NOFILE` is lowered step by step from "no fd free" until the upgrade's
/// own pipe and socket fit but the fds the new process must be handed do not: at each step the
/// upgrade fails with a message naming the limit and how to raise it (where it used to say
/// "pipe2: Too many open files", then "could not execute …: Too many open files"), the old
/// generation serves on, and with the limit back the same upgrade goes through.
#[test]
fn an_upgrade_near_rlimit_nofile_fails_clearly_and_the_old_one_serves_on() {
    let app = App::start("http", "HOTEXEC_LISTEN_HTTP", &[]);
    let old = app.first_pid();
    assert_eq!(get(app.addr, "/", T), Outcome::Ok { pid: old });
    let open: Vec<i32> = fd_targets(old).into_iter().map(|(n, _)| n).collect();
    let free: Vec<i32> = (0..).filter(|n| !open.contains(n)).take(16).collect();
    let mut saved = None;
    let (mut in_this_process, mut for_the_new_one) = (false, false);
    // `room` fd numbers are free below the limit. The upgrade needs a few itself (the readiness
    // pipe, the hand-off and link socketpairs), then 5 more for the new process (2 listeners,
    // the readiness pipe, the hand-off channel, the generation link): it fails at every step
    // here.
    for room in 1..=free.len() {
        let limit = free[room - 1] as u64 + 1;
        let old_limits = set_nofile(old, limit);
        saved.get_or_insert(old_limits);
        app.signal_upgrade();
        let line = app.nth_failure(room, T);
        eprintln!("{room} free: {line}");
        assert!(line.contains("RLIMIT_NOFILE"), "{line}");
        assert!(line.contains(&limit.to_string()), "{line}");
        assert!(line.contains("LimitNOFILE"), "{line}");
        in_this_process |= line.contains("failed with EMFILE");
        for_the_new_one |= line.contains("the new generation must be handed 5 fds");
        assert_eq!(app.pid_in_file(), Some(old));
        assert!(children_of(old).is_empty(), "{:?}", children_of(old));
        set_nofile(old, saved.unwrap().rlim_cur);
        assert_eq!(get(app.addr, "/", T), Outcome::Ok { pid: old });
        if for_the_new_one {
            break;
        }
    }
    assert!(in_this_process && for_the_new_one, "both cases were met");
    // With the limit back, the same upgrade goes through.
    let (_, new) = app.upgrade();
    // The old generation may take a connection or two until its shutdown is delivered.
    wait_for(T, "the new generation to answer", || {
        (get(app.addr, "/", T) == Outcome::Ok { pid: new }).then_some(())
    });
}

/// The kernel caps what `execve` copies — the path it executes, argv and the environment, a
/// pointer each — at 6 MiB (three quarters of its 8 MiB `_STK_LIM`) whatever the stack limit,
/// where `sysconf(_SC_ARG_MAX)` of some C libraries says a quarter of the stack limit (with an
/// unlimited stack: no limit at all). A server started with an unlimited stack, from a long
/// path (deep release directories), with an environment that just fits that cap at its own
/// start, must have its upgrade — the same plus the hand-over variables — refused up front
/// with the real limit named, not failed by `execve` with a bare E2BIG (issue 20, finding 8).
#[test]
fn an_upgrade_past_the_kernels_arg_max_cap_fails_clearly_whatever_the_stack_limit() {
    use std::os::unix::process::CommandExt;
    const KERNEL_CAP: usize = 6 * 1024 * 1024;
    const PTR: usize = std::mem::size_of::<usize>();
    let dir = Scratch::new("argmax");
    let mut deep = dir.0.clone();
    for i in 0..14 {
        deep.push(format!("{i:02}{}", "r".repeat(198)));
    }
    std::fs::create_dir_all(&deep).unwrap();
    let bin = deep.join("http");
    copy_exe(&example("http"), &bin);
    let pid_file = dir.0.join("pid");
    let port = free_port();
    let mut env: Vec<(String, String)> = vec![
        ("HOTEXEC_LISTEN_HTTP".into(), format!("127.0.0.1:{port}")),
        (
            "HOTEXEC_LISTEN_ADMIN".into(),
            format!("127.0.0.1:{}", free_port()),
        ),
        ("HOTEXEC_PID_FILE".into(), pid_file.display().to_string()),
        ("RUST_LOG".into(), "info".into()),
    ];
    // What execve counts: the path and argv[0] (the same here), each `NAME=value`, a NUL after
    // each, and a pointer per argv and envp entry. Padding brings it to 64 bytes under the cap.
    let path_len = bin.as_os_str().len() + 1;
    let size = |env: &[(String, String)]| {
        2 * path_len
            + env
                .iter()
                .map(|(k, v)| k.len() + v.len() + 2)
                .sum::<usize>()
            + PTR * (1 + env.len())
    };
    let mut i = 0;
    while size(&env) < KERNEL_CAP - 64 {
        let name = format!("PAD{i:03}");
        // One string stays under MAX_ARG_STRLEN (128 KiB).
        let room = (KERNEL_CAP - 64 - size(&env))
            .saturating_sub(name.len() + 2 + PTR)
            .min(120_000);
        env.push((name, "x".repeat(room)));
        i += 1;
    }
    assert_eq!(size(&env), KERNEL_CAP - 64);
    let mut cmd = std::process::Command::new(&bin);
    cmd.env_clear().envs(env.iter().map(|(k, v)| (k, v)));
    // SAFETY: setrlimit(2) is async-signal-safe and reads a struct on this stack frame.
    unsafe {
        cmd.pre_exec(|| {
            let unlimited = libc::rlimit {
                rlim_cur: libc::RLIM_INFINITY,
                rlim_max: libc::RLIM_INFINITY,
            };
            if libc::setrlimit(libc::RLIMIT_STACK, &unlimited) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut server = Started::spawn(cmd, &dir.0, &dir.0.join("log"));
    server.wait_log("serving", T);
    let pid = server.pid();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert_eq!(get(addr, "/", T), Outcome::Ok { pid });
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGUSR2,
    )
    .unwrap();
    let line = wait_for(T, "the upgrade to fail", || {
        server
            .plain_log()
            .lines()
            .find(|l| l.contains("upgrade failed"))
            .map(str::to_owned)
    });
    // The path is 2,800 bytes long: shown without it.
    let line = line.replace(&bin.display().to_string(), "<path>");
    println!("{line}");
    assert!(line.contains("ARG_MAX"), "{line}");
    assert!(line.contains(&KERNEL_CAP.to_string()), "{line}");
    assert!(!line.contains("Argument list too long"), "{line}");
    assert_eq!(get(addr, "/", T), Outcome::Ok { pid });
}
