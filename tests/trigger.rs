//! Upgrades that report their outcome: `hotexec::upgrade()` behind the http example's admin
//! endpoint, and the `hotexec upgrade` command over the control socket. Success and every failure
//! kind, each through both, with real processes, a real binary swapped on disk and real clients
//! hammering the server meanwhile.

use std::time::Duration;

use hotexec_testkit::prelude::*;

const HTTP: &str = "HOTEXEC_LISTEN_HTTP";
const ADMIN: &str = "HOTEXEC_LISTEN_ADMIN";
const LIMIT: Duration = Duration::from_secs(30);

fn admin_upgrade(app: &App) -> (u16, String) {
    post(app.listener(ADMIN), "/upgrade", Duration::from_secs(20)).expect("admin endpoint")
}

fn cli_upgrade(app: &App, extra: &[&str]) -> CliRun {
    let pid_file = app.pid_file.to_str().unwrap().to_string();
    let mut args = vec!["upgrade", "--pid-file", pid_file.as_str()];
    args.extend_from_slice(extra);
    hotexec_cli(&args, LIMIT)
}

#[test]
fn trigger_reports_success_and_each_failure() {
    let app = App::start("http", HTTP, &[("HOTEXEC_READY_TIMEOUT", "1s")]);
    let load = Load::start(app.addr, 3);

    // Success through the command: the new pid on stdout, exit 0, and it serves.
    let before = app.first_pid();
    let run = cli_upgrade(&app, &["--timeout", "20s"]);
    assert_eq!(run.code, 0, "{run:?}");
    let new: u32 = run.stdout.trim().parse().expect("the new pid on stdout");
    app.track(new);
    assert_ne!(new, before);
    assert_eq!(app.pid_in_file(), Some(new));
    answered_by(app.addr, new, Duration::from_secs(5));

    // Success through the admin endpoint (hotexec::upgrade() in the serving process).
    let (status, body) = admin_upgrade(&app);
    assert_eq!(status, 200, "{body}");
    let serving: u32 = body
        .strip_prefix("upgraded: new pid ")
        .and_then(|r| r.trim().parse().ok())
        .unwrap_or_else(|| panic!("body {body:?}"));
    app.track(serving);
    assert_eq!(app.pid_in_file(), Some(serving));
    answered_by(app.addr, serving, Duration::from_secs(5));
    wait_for(
        Duration::from_secs(15),
        "the old generations to exit",
        || (!alive(before) && !alive(new)).then_some(()),
    );

    // Each failure kind, through both triggers: the reason comes back, the server is untouched.
    type Break = fn(&App);
    let cases: [(&str, Break, &str, &str); 3] = [
        (
            "removed binary",
            |a| a.remove_binary(),
            "exec",
            "No such file",
        ),
        (
            "exits before ready",
            |a| a.replace_binary(Some("#!/bin/sh\nexit 3\n")),
            "exited",
            "exit status 3",
        ),
        (
            "never ready",
            |a| a.replace_binary(Some("#!/bin/sh\nexec sleep 600\n")),
            "ready-timeout",
            "did not report ready within 1s",
        ),
    ];
    for (what, break_it, kind, reason) in cases {
        break_it(&app);
        let (status, body) = admin_upgrade(&app);
        assert_eq!(status, 500, "{what}: {body}");
        assert!(
            body.contains(reason),
            "{what}: admin said {body:?}, expected {reason:?}"
        );
        let run = cli_upgrade(&app, &[]);
        assert_eq!(run.code, 1, "{what}: {run:?}");
        assert!(
            run.stderr.contains(&format!("upgrade failed ({kind})")) && run.stderr.contains(reason),
            "{what}: {run:?}"
        );
        assert_eq!(app.pid_in_file(), Some(serving), "{what}: pid file changed");
        assert!(
            children_of(serving).is_empty(),
            "{what}: {:?}",
            children_of(serving)
        );
    }

    // Busy: while an upgrade runs (the binary hangs until the 1 s ready timeout), a second
    // request is refused at once, through either trigger.
    let pid_file = app.pid_file.to_str().unwrap().to_string();
    let first =
        std::thread::spawn(move || hotexec_cli(&["upgrade", "--pid-file", &pid_file], LIMIT));
    wait_for(Duration::from_secs(5), "the upgrade to start", || {
        (!children_of(serving).is_empty()).then_some(())
    });
    let run = cli_upgrade(&app, &[]);
    assert_eq!(run.code, 5, "{run:?}");
    assert!(
        run.stderr.contains("an upgrade is already running"),
        "{run:?}"
    );
    let (status, body) = admin_upgrade(&app);
    assert_eq!(status, 500);
    assert!(body.contains("an upgrade is already running"), "{body}");
    let first = first.join().unwrap();
    assert_eq!(first.code, 1, "{first:?}");

    // No outcome within --timeout: exit 3 (the server still finishes the upgrade attempt).
    let run = cli_upgrade(&app, &["--timeout", "200ms"]);
    assert_eq!(run.code, 3, "{run:?}");
    assert!(run.stderr.contains("within 200ms"), "{run:?}");
    // Failed attempts so far: 2 per failure kind, the busy case's first, and this one.
    app.wait_log("upgrade failed", 2 * 3 + 2, Duration::from_secs(10));
    assert!(
        children_of(serving).is_empty(),
        "{:?}",
        children_of(serving)
    );

    // Back to a good binary: the command upgrades again.
    app.replace_binary(None);
    let run = cli_upgrade(&app, &[]);
    assert_eq!(run.code, 0, "{run:?}");
    let last: u32 = run.stdout.trim().parse().unwrap();
    app.track(last);
    std::thread::sleep(Duration::from_millis(300));
    let results = load.finish();
    assert_no_failures("trigger", &results);
    assert!(results.iter().any(|(_, o)| *o == Outcome::Ok { pid: last }));
}

#[test]
fn command_usage_and_unreachable_servers() {
    let dir = Scratch::new("cli");
    // Usage errors: 2, with the usage text.
    for args in [
        &["upgrade"][..],
        &["upgrade", "--pid-file"],
        &["upgrade", "--pid", "x"],
        &["upgrade", "--pid", "1", "--timeout", "soon"],
        &["restart"],
        &["upgrade", "--pid", "1", "--force"],
    ] {
        let run = hotexec_cli(args, LIMIT);
        assert_eq!(run.code, 2, "{args:?}: {run:?}");
        assert!(run.stderr.contains("usage: hotexec upgrade"), "{run:?}");
    }
    let help = hotexec_cli(&["--help"], LIMIT);
    assert_eq!(help.code, 0);
    for code in [
        "0  upgraded",
        "1  the upgrade failed",
        "3  no outcome",
        "4  cannot reach",
        "5  busy",
    ] {
        assert!(
            help.stdout.contains(code),
            "--help must document exit code {code:?}"
        );
    }
    // Unreachable: 4. A missing pid file, a pid file without a pid, a process that is no
    // hotexec server (this test process has no control socket).
    let missing = dir.0.join("missing.pid");
    let garbage = dir.0.join("garbage.pid");
    std::fs::write(&garbage, "hello\n").unwrap();
    let me = dir.0.join("me.pid");
    std::fs::write(&me, format!("{}\n", std::process::id())).unwrap();
    for file in [&missing, &garbage, &me] {
        let run = hotexec_cli(&["upgrade", "--pid-file", file.to_str().unwrap()], LIMIT);
        assert_eq!(run.code, 4, "{}: {run:?}", file.display());
    }
}
