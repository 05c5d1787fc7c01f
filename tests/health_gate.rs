//! The health-gated commit, end to end (issue 18): real processes, real clients under load, the
//! `hotexec` command as an operator runs it. A release that starts, reports ready and then
//! answers errors is not committed: the old build serves again (its exact image, started anew
//! by the rollback, also when the deploy path now leads to the bad build) and `hotexec upgrade`
//! says `unhealthy` with the numbers; a good one is committed; a probe that fails, an
//! incompatible binary and a server that reports its own outcomes are each refused; no client
//! request is reset, refused or timed out in any of them.
//!
//! Each scenario was checked to fail without the gate (`HOTEXEC_HEALTH=0` in the old
//! generation's environment: the bad build is committed and `hotexec upgrade` exits 0; see
//! `without_the_gate_the_bad_build_is_committed`, which keeps that counterfactual honest).

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use hotexec_testkit::prelude::*;

const HTTP: &str = "HOTEXEC_LISTEN_HTTP";
const LIMIT: Duration = Duration::from_secs(60);

fn cli(app: &App, extra: &[&str]) -> CliRun {
    let pid_file = app.pid_file.to_str().unwrap().to_string();
    let mut args = vec!["upgrade", "--pid-file", pid_file.as_str()];
    args.extend_from_slice(extra);
    hotexec_cli(&args, LIMIT)
}

/// 500s among `results` (the bad build's: the good builds never answer 500), and every other
/// failure (none is allowed).
fn split(results: &[(Instant, Outcome)]) -> (usize, Vec<&Outcome>) {
    let mut fivehundreds = 0;
    let mut other = Vec::new();
    for (_, o) in results {
        match o {
            Outcome::Ok { .. } => {}
            Outcome::BadStatus(s) if s.starts_with("HTTP/1.1 500") => fivehundreds += 1,
            o => other.push(o),
        }
    }
    (fivehundreds, other)
}

/// The running image of `pid` (device, inode): the same file even once it was replaced on disk.
fn image(pid: u32) -> (u64, u64) {
    let m = std::fs::metadata(format!("/proc/{pid}/exe")).unwrap();
    (m.dev(), m.ino())
}

/// The pid `hotexec upgrade` named as not committed.
fn rejected_pid(run: &CliRun) -> u32 {
    run.stderr
        .split("new process ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {run:?}"))
}

/// Waits until `pid` answers `GET /`. Answers of the rejected build still draining (a 500 to a
/// request it had accepted before it was told) may come meanwhile; any other failure fails.
fn answered_by_after_the_bad_build(addr: std::net::SocketAddr, pid: u32) {
    wait_for(
        Duration::from_secs(5),
        &format!("pid {pid} to answer"),
        || match get(addr, "/", Duration::from_secs(5)) {
            Outcome::Ok { pid: p } if p == pid => Some(()),
            Outcome::Ok { .. } => None,
            Outcome::BadStatus(s) if s.starts_with("HTTP/1.1 500") => None,
            other => panic!("GET / failed while waiting for pid {pid}: {other:?}"),
        },
    )
}

/// After an unhealthy verdict: the pid file names a rollback of `old` (its exact image), which
/// answers; the rejected generation drains and exits. Returns the rollback's pid.
fn rolled_back(app: &App, old: u32, old_image: (u64, u64), bad: u32) -> u32 {
    app.track(bad);
    let rollback = app.pid_in_file().expect("pid file");
    assert!(rollback != old && rollback != bad, "{old} {bad} {rollback}");
    app.track(rollback);
    assert_eq!(
        image(rollback),
        old_image,
        "the rollback runs the old build's image"
    );
    answered_by_after_the_bad_build(app.addr, rollback);
    // `status`, answered by the rollback generation, says what happened: the last upgrade
    // failed as unhealthy, and which pid was refused.
    let pid_file = app.pid_file.to_str().unwrap();
    let last = wait_for(Duration::from_secs(15), "the rollback's status", || {
        let run = hotexec_cli(&["status", "--json", "--pid-file", pid_file], LIMIT);
        let s: serde_json::Value = serde_json::from_str(run.stdout.trim()).ok()?;
        (s["pid"] == rollback && !s["last_upgrade"].is_null()).then(|| s["last_upgrade"].clone())
    });
    assert_eq!(last["result"], "error", "{last}");
    assert_eq!(last["kind"], "unhealthy", "{last}");
    assert_eq!(last["verdict"], "unhealthy", "{last}");
    assert_eq!(last["new_pid"], bad, "{last}");
    wait_for(
        Duration::from_secs(15),
        "the rejected generation to exit",
        || (!alive(bad)).then_some(()),
    );
    rollback
}

/// Puts `example` at the app's path as a copy (the way a deploy renames a new build in).
fn deploy(app: &App, example_name: &str) {
    app.install_binary(&example(example_name));
}

/// The "done when", at its size: an idiomatic axum app on `hotexec::serve` with default
/// settings, 16 clients with a new connection per request for 10 s, the upgrade at 2 s to a
/// build answering 500 to 5% of requests: `hotexec upgrade` exits 1 naming `unhealthy`, the
/// old build answers again, nothing is reset, refused or timed out, and the bad build's 500s
/// are at most 2% of the run's requests. A later good build commits (exit 0).
#[test]
fn a_bad_build_is_refused_under_load_and_a_good_one_commits() {
    subreaper();
    // The bad build reads FLAKY_500_EVERY from the environment it inherits; the axum example
    // ignores it.
    let app = App::start("axum", HTTP, &[("FLAKY_500_EVERY", "20")]);
    let old = app.first_pid();
    let old_image = image(old);
    let started = Instant::now();
    let load = Load::start(app.addr, 16);
    std::thread::sleep(Duration::from_secs(2));

    deploy(&app, "axum_flaky");
    let trigger = Instant::now();
    let run = cli(&app, &[]);
    let trigger_to_verdict = trigger.elapsed();
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("upgrade failed (unhealthy)"), "{run:?}");
    assert!(
        run.stderr.contains("bad answer") && run.stderr.contains("limit of 2.0%"),
        "the reason and the numbers: {run:?}"
    );
    assert!(run.stderr.contains("new generation:"), "{run:?}");
    // The old build answers again.
    let rollback = rolled_back(&app, old, old_image, rejected_pid(&run));

    let rest = Duration::from_secs(10).saturating_sub(started.elapsed());
    std::thread::sleep(rest);
    let results = load.finish();
    let (fivehundreds, other) = split(&results);
    assert!(
        other.is_empty(),
        "no request may be reset, refused or timed out: {}",
        by_class(other.iter().copied())
    );
    let share = fivehundreds as f64 / results.len() as f64;
    eprintln!(
        "health gate: trigger to verdict {:.0} ms; the bad build answered {fivehundreds} 500s of {} requests ({:.3}%)",
        trigger_to_verdict.as_secs_f64() * 1e3,
        results.len(),
        share * 100.0
    );
    assert!(
        share <= 0.02,
        "{fivehundreds} of {} requests",
        results.len()
    );
    assert!(
        fivehundreds > 0,
        "the bad build served (else this checked nothing)"
    );
    let log = app.plain_log();
    assert!(
        log.contains("the previous generation did not commit this one"),
        "{log}"
    );
    assert_eq!(app.pid_in_file(), Some(rollback));

    // A later good build commits; its evidence carries the numbers it was judged on.
    deploy(&app, "axum");
    let load = Load::start(app.addr, 4);
    let run = cli(&app, &["--json"]);
    assert_eq!(run.code, 0, "{run:?}");
    let report: serde_json::Value =
        serde_json::from_str(run.stdout.trim()).expect("one JSON report");
    assert_eq!(report["result"], "ok", "{report}");
    assert!(
        report["health"]["requests"].as_f64() > Some(0.0),
        "{report}"
    );
    assert!(
        report["ms_to_verdict"].as_f64() >= Some(2000.0),
        "judged through its probation: {report}"
    );
    let new = report["new_pid"].as_u64().expect("new_pid") as u32;
    app.track(new);
    assert_eq!(app.pid_in_file(), Some(new));
    answered_by(app.addr, new, Duration::from_secs(5));
    assert_no_failures("the good upgrade", &load.finish());
}

/// The same bad build with the gate off in the old generation: committed, and its 500s go on.
/// The counterfactual of the test above, kept so that it cannot silently pass for another
/// reason.
#[test]
fn without_the_gate_the_bad_build_is_committed() {
    subreaper();
    let app = App::start(
        "axum",
        HTTP,
        &[("FLAKY_500_EVERY", "20"), ("HOTEXEC_HEALTH", "0")],
    );
    let load = Load::start(app.addr, 8);
    std::thread::sleep(Duration::from_millis(500));
    deploy(&app, "axum_flaky");
    let trigger = Instant::now();
    let run = cli(&app, &[]);
    let took = trigger.elapsed();
    assert_eq!(run.code, 0, "{run:?}");
    let new: u32 = run.stdout.trim().parse().unwrap();
    app.track(new);
    std::thread::sleep(Duration::from_secs(2));
    let results = load.finish();
    let (fivehundreds, other) = split(&results);
    assert!(other.is_empty(), "{}", by_class(other.iter().copied()));
    let after: Vec<_> = results
        .iter()
        .filter(|(t, _)| *t > trigger + took)
        .collect();
    eprintln!(
        "without the gate: committed in {:.0} ms; {fivehundreds} 500s of {} requests, {} of them after the commit",
        took.as_secs_f64() * 1e3,
        results.len(),
        after
            .iter()
            .filter(|(_, o)| matches!(o, Outcome::BadStatus(_)))
            .count()
    );
    assert!(fivehundreds > 0);
}

/// A build healthy for its first second that fails within its probation (one request in five
/// from 1 s after its start): refused on its recent numbers.
#[test]
fn a_build_that_turns_bad_within_its_probation_is_refused() {
    subreaper();
    let app = App::start(
        "axum",
        HTTP,
        &[
            ("FLAKY_500_EVERY", "5"),
            ("FLAKY_AFTER_MS", "1000"),
            // Long enough that the second of failures falls inside it on a loaded machine.
            ("HOTEXEC_PROBATION", "4s"),
        ],
    );
    let old = app.first_pid();
    let old_image = image(old);
    let load = Load::start(app.addr, 8);
    std::thread::sleep(Duration::from_millis(300));
    deploy(&app, "axum_flaky");
    let trigger = Instant::now();
    let run = cli(&app, &[]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("upgrade failed (unhealthy)"), "{run:?}");
    assert!(
        trigger.elapsed() >= Duration::from_millis(900),
        "judged on its good first second too: {run:?}"
    );
    rolled_back(&app, old, old_image, rejected_pid(&run));
    let results = load.finish();
    let (_, other) = split(&results);
    assert!(other.is_empty(), "{}", by_class(other.iter().copied()));
}

/// `serve(..).probe("GET /healthz")` in the new build, whose /healthz answers 503: it never
/// reports ready, the upgrade fails naming the probe and the status, and no client sees a
/// single error (the new build accepted nothing).
#[test]
fn a_failing_probe_keeps_the_new_build_from_ever_serving() {
    subreaper();
    let app = App::start(
        "axum",
        HTTP,
        &[("FLAKY_PROBE", "1"), ("FLAKY_HEALTHZ", "503")],
    );
    let old = app.first_pid();
    let load = Load::start(app.addr, 8);
    deploy(&app, "axum_flaky");
    let run = cli(&app, &[]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("upgrade failed (exited)"), "{run:?}");
    assert!(
        run.stderr
            .contains("probe GET /healthz answered 503 Service Unavailable"),
        "{run:?}\n{}",
        app.plain_log()
    );
    assert_eq!(app.pid_in_file(), Some(old));
    assert_no_failures("a failing probe", &load.finish());
}

/// A server not on the facade (the sync `faulty` example, HTTP by hand) records its own answers
/// and is judged on them.
#[test]
fn a_server_of_its_own_is_judged_on_the_outcomes_it_records() {
    subreaper();
    let app = App::start("faulty", HTTP, &[]);
    let old = app.first_pid();
    let old_image = image(old);
    let load = Load::start(app.addr, 8);
    std::thread::sleep(Duration::from_millis(300));
    app.install_faulty("500-every=5");
    let run = cli(&app, &[]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("upgrade failed (unhealthy)"), "{run:?}");
    rolled_back(&app, old, old_image, rejected_pid(&run));
    let results = load.finish();
    let (_, other) = split(&results);
    assert!(other.is_empty(), "{}", by_class(other.iter().copied()));
}

/// A copy of `from` at `to` whose hotexec note says hand-over protocols `min..=max`.
fn with_range(from: &Path, to: &Path, min: u16, max: u16) {
    let mut bytes = std::fs::read(from).unwrap();
    let mut header = Vec::new();
    header.extend(8u32.to_ne_bytes());
    header.extend(128u32.to_ne_bytes());
    header.extend(1u32.to_ne_bytes());
    header.extend(b"hotexec\0");
    let at = bytes
        .windows(header.len())
        .position(|w| w == header.as_slice())
        .expect("the hotexec note")
        + header.len();
    bytes[at + 2..at + 4].copy_from_slice(&min.to_le_bytes());
    bytes[at + 4..at + 6].copy_from_slice(&max.to_le_bytes());
    std::fs::write(to, bytes).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// An incompatible build (its note names other hand-over protocols) is refused before anything
/// is started, by `--check` and by the upgrade itself; `--check` spawns nothing either way and
/// exits 0 for a good build, non-zero for a missing one.
#[test]
fn check_both_ways_and_an_incompatible_build_refused_before_exec() {
    subreaper();
    let app = App::start("axum", HTTP, &[]);
    let old = app.first_pid();
    let load = Load::start(app.addr, 4);

    let run = cli(&app, &["--check"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout.contains(&format!("exe: {}", app.bin.display())),
        "{run:?}"
    );
    assert!(run.stdout.contains("note: hotexec"), "{run:?}");
    assert!(run.stdout.contains("verdict: an upgrade"), "{run:?}");
    assert!(children_of(old).is_empty(), "--check started nothing");

    let next = app.dir.0.join("next");
    with_range(&example("axum"), &next, 9, 12);
    std::fs::rename(&next, &app.bin).unwrap();
    let run = cli(&app, &["--check"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains("check failed (incompatible)"),
        "{run:?}"
    );
    assert!(
        run.stderr.contains("hand-over protocols 9 to 12"),
        "{run:?}"
    );
    let run = cli(&app, &[]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains("upgrade failed (incompatible)"),
        "{run:?}"
    );
    assert!(
        run.stderr.contains("speaks hand-over protocol 1"),
        "names both: {run:?}"
    );
    assert!(children_of(old).is_empty(), "nothing was started");

    app.remove_binary();
    let run = cli(&app, &["--check"]);
    assert_ne!(run.code, 0, "{run:?}");
    assert!(run.stderr.contains("check failed (missing)"), "{run:?}");
    assert!(children_of(old).is_empty(), "--check started nothing");
    assert_eq!(app.pid_in_file(), Some(old));
    assert_no_failures("checks and a refused upgrade", &load.finish());
}

/// `ln -sfn target link`, atomically, as deploy tools do.
fn switch_symlink(target: &str, link: &Path) {
    let tmp = link.with_extension("new");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp).unwrap();
    std::fs::rename(&tmp, link).unwrap();
}

/// Pinned identity: releases switched by symlink, `current` now leads to the bad build; the
/// rollback after its unhealthy verdict runs the exact image of the generation it restores
/// (`releases/v1`), not what the deploy path leads to.
#[test]
fn the_rollback_runs_the_old_image_when_the_deploy_path_leads_to_the_bad_build() {
    subreaper();
    let dir = Scratch::new("health-symlink");
    let root = dir.0.clone();
    for v in ["v1", "v2"] {
        std::fs::create_dir_all(root.join("releases").join(v)).unwrap();
    }
    copy_exe(&example("axum"), &root.join("releases/v1/app"));
    copy_exe(&example("axum_flaky"), &root.join("releases/v2/app"));
    std::os::unix::fs::symlink("releases/v1", root.join("current")).unwrap();
    let pid_file = root.join("app.pid");
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut cmd = std::process::Command::new("/bin/sh");
    cmd.arg("-c")
        .arg("cd \"$0\" && exec ./current/app")
        .arg(&root)
        .env(HTTP, addr.to_string())
        .env("HOTEXEC_PID_FILE", &pid_file)
        .env("FLAKY_500_EVERY", "10")
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null());
    let server = Started::spawn(cmd, &root, &root.join("log"));
    let first = server.pid();
    wait_for(Duration::from_secs(10), "the server to answer", || {
        (get(addr, "/", Duration::from_secs(5)) == Outcome::Ok { pid: first }).then_some(())
    });
    let load = Load::start(addr, 8);
    std::thread::sleep(Duration::from_millis(300));
    switch_symlink("releases/v2", &root.join("current"));
    let run = hotexec_cli(
        &["upgrade", "--pid-file", pid_file.to_str().unwrap()],
        LIMIT,
    );
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("upgrade failed (unhealthy)"), "{run:?}");
    let bad = rejected_pid(&run);
    let rollback: u32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(rollback != first && rollback != bad);
    assert_eq!(
        std::fs::read_link(format!("/proc/{rollback}/exe")).unwrap(),
        root.join("releases/v1/app"),
        "the rollback runs the old release, not what `current` leads to"
    );
    answered_by_after_the_bad_build(addr, rollback);
    let results = load.finish();
    let (_, other) = split(&results);
    assert!(other.is_empty(), "{}", by_class(other.iter().copied()));
    drop(server);
}
