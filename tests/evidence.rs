//! The evidence of an upgrade (issue 19), from outside: `hotexec upgrade --json` and
//! `hotexec status --json` against a real axum app under load, their failures as JSON with the
//! same exit codes, and the command's usage.
use std::time::Duration;

use hotexec_testkit::prelude::*;
use serde_json::Value;

const HTTP: &str = "HOTEXEC_LISTEN_HTTP";
const LIMIT: Duration = Duration::from_secs(30);

fn json(run: &CliRun) -> Value {
    let line = run.stdout.trim();
    assert_eq!(
        line.lines().count(),
        1,
        "one JSON object on one line: {run:?}"
    );
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {run:?}"))
}

fn cli(app: &App, args: &[&str]) -> CliRun {
    let pid_file = app.pid_file.to_str().unwrap();
    let mut all = args.to_vec();
    all.extend(["--pid-file", pid_file]);
    hotexec_cli(&all, LIMIT)
}

/// The done criterion, on the idiomatic axum example under load: `upgrade --json`
/// says ok with both pids, the time to ready, no listen drops, a health object; `status --json`
/// names the new serving pid; no client lost anything.
#[test]
fn upgrade_json_and_status_under_load() {
    let app = App::start("axum", HTTP, &[]);
    let load = Load::start(app.addr, 4);
    std::thread::sleep(Duration::from_millis(300));
    let old = app.first_pid();

    let run = cli(&app, &["upgrade", "--json"]);
    assert_eq!(run.code, 0, "{run:?}");
    let r = json(&run);
    assert_eq!(r["result"], "ok", "{r}");
    assert_eq!(r["old_pid"], old, "{r}");
    let new = r["new_pid"].as_u64().expect("new_pid") as u32;
    app.track(new);
    assert_ne!(new, old);
    assert_eq!(app.pid_in_file(), Some(new));
    assert!(r["ms_to_ready"].as_f64().is_some_and(|ms| ms > 0.0), "{r}");
    // The supervisor's own phase times: spawn before ready.
    let spawn = r["ms_to_spawn"].as_f64().expect("ms_to_spawn");
    assert!(
        spawn > 0.0 && spawn <= r["ms_to_ready"].as_f64().unwrap(),
        "{r}"
    );
    assert_eq!(r["generation"], 2, "{r}");
    // The default clone spawn returns once the child has exec'd: the exec is marked too.
    let exec = r["ms_to_exec"].as_f64().expect("ms_to_exec");
    assert!(
        exec >= spawn && exec <= r["ms_to_ready"].as_f64().unwrap(),
        "{r}"
    );
    assert_eq!(r["trigger"], "control", "{r}");
    // Per network namespace: another server of this namespace dropping connections at the same
    // time would count here too (the tests of this suite never run such a thing in parallel).
    assert_eq!(r["listen_overflows"], 0, "{r}");
    assert_eq!(r["listen_drops"], 0, "{r}");
    assert!(r["health"].is_object(), "{r}");
    assert!(r["kind"].is_null() && r["reason"].is_null(), "{r}");
    // The text form stays the default: the summary on stderr.
    assert!(run.stderr.contains("ms_to_ready="), "{run:?}");

    let run = cli(&app, &["status", "--json"]);
    assert_eq!(run.code, 0, "{run:?}");
    let s = json(&run);
    assert_eq!(s["pid"], new, "{s}");
    assert_eq!(s["generation"], 2, "{s}");
    assert!(s["uptime_s"].as_f64().is_some_and(|u| u >= 0.0), "{s}");
    let l = &s["listeners"][0];
    assert_eq!(l["name"], "http", "{s}");
    assert_eq!(l["address"], app.addr.to_string(), "{s}");
    assert!(
        l["accept_queue"].is_u64() && l["accept_queue_max"].is_u64(),
        "{s}"
    );
    // The old generation, while it drains, is named with its deadline. (`ok` comes with the
    // health verdict, at the end of the probation: by then it may be done already.)
    if let Some(d) = s["draining"].get(0) {
        assert_eq!(d["pid"], old, "{s}");
        assert!(d["deadline_ms"].is_u64(), "{s}");
    }
    // The upgrade that started it, as the old generation reported it over the link.
    assert_eq!(s["last_upgrade"]["result"], "ok", "{s}");
    assert_eq!(s["last_upgrade"]["new_pid"], new, "{s}");
    assert_eq!(s["last_upgrade"]["old_pid"], old, "{s}");
    assert_eq!(s["last_upgrade"]["trigger"], "control", "{s}");
    assert!(
        s["exe"].as_str().is_some_and(|e| e.ends_with("/app")),
        "{s}"
    );
    assert!(s["build_id"].as_str().is_some_and(|b| b.len() >= 16), "{s}");
    // Once the old generation is done, the new one knows how its connections ended.
    let old_generation = wait_for(Duration::from_secs(20), "the drain summary", || {
        let run = cli(&app, &["status", "--json"]);
        let s = json(&run);
        let o = s["last_upgrade"]["old_generation"].clone();
        (!o.is_null()).then_some((o, s))
    });
    let (o, s) = old_generation;
    assert!(o["drained"].is_u64(), "hotexec::serve counts: {o}");
    assert_eq!(o["cut"], 0, "nothing left open: {o}");
    assert_eq!(o["handed_off"], 0, "{o}");
    assert!(o["ms_to_done"].as_f64().is_some_and(|ms| ms > 0.0), "{o}");
    // Under load the old generation accepted until about when the new one was ready.
    let last_accept = s["last_upgrade"]["ms_to_last_accept"].as_f64();
    assert!(last_accept.is_some_and(|ms| ms >= 0.0), "{s}");
    assert_eq!(s["draining"], serde_json::json!([]), "{s}");
    // The same report is logged at the end of the `upgrade` span of the old generation.
    let log = app.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("upgrade report"))
        .unwrap_or_else(|| panic!("no report in the log:\n{log}"));
    assert!(
        line.contains("upgrade{") && line.contains(&format!("new_pid={new}")),
        "{line}"
    );
    let text = cli(&app, &["status"]);
    assert_eq!(text.code, 0, "{text:?}");
    assert!(text.stdout.starts_with(&format!("pid {new} ")), "{text:?}");

    std::thread::sleep(Duration::from_millis(300));
    let results = load.finish();
    assert_no_failures("evidence", &results);
    assert!(results.iter().any(|(_, o)| *o == Outcome::Ok { pid: new }));
}

/// Every way an upgrade does not happen is one JSON object too, with the exit code of the text
/// form: a binary that cannot be executed (1), an unreachable server (4).
#[test]
fn failures_are_json_with_the_same_exit_codes() {
    let app = App::start("axum", HTTP, &[]);
    let serving = app.first_pid();
    app.remove_binary();
    let run = cli(&app, &["upgrade", "--json"]);
    assert_eq!(run.code, 1, "{run:?}");
    let r = json(&run);
    assert_eq!(r["result"], "error", "{r}");
    // Refused by the preflight, before anything is started (issue 18).
    assert_eq!(r["kind"], "missing", "{r}");
    assert!(
        r["reason"]
            .as_str()
            .is_some_and(|s| s.contains("No such file")),
        "{r}"
    );
    assert_eq!(r["old_pid"], serving, "{r}");
    // The process that could not execute the binary, if one was started.
    assert!(r["new_pid"].as_u64() != Some(serving as u64), "{r}");
    assert!(r["ms_to_ready"].is_null(), "{r}");
    assert!(r["health"].is_object(), "{r}");
    assert_eq!(app.pid_in_file(), Some(serving));

    let dir = Scratch::new("evidence-cli");
    let missing = dir.0.join("missing.pid");
    let run = hotexec_cli(
        &["upgrade", "--json", "--pid-file", missing.to_str().unwrap()],
        LIMIT,
    );
    assert_eq!(run.code, 4, "{run:?}");
    let r = json(&run);
    assert_eq!(r["result"], "error");
    assert_eq!(r["kind"], "unreachable");
    let run = hotexec_cli(&["status", "--pid-file", missing.to_str().unwrap()], LIMIT);
    assert_eq!(run.code, 4, "{run:?}");
    assert!(run.stdout.is_empty(), "{run:?}");
}

/// In keeper mode the pid file names the keeper, which relays both requests: the evidence is
/// the serving generations', not the keeper's.
#[test]
fn evidence_through_a_keeper() {
    let app = App::start("axum", HTTP, &[("HOTEXEC_KEEPER", "1")]);
    let keeper = app.first_pid();
    let serving = match get(app.addr, "/", Duration::from_secs(5)) {
        Outcome::Ok { pid } => pid,
        other => panic!("{other:?}"),
    };
    app.track(serving);
    assert_ne!(serving, keeper);
    let run = cli(&app, &["upgrade", "--json"]);
    assert_eq!(run.code, 0, "{run:?}");
    let r = json(&run);
    assert_eq!(r["result"], "ok", "{r}");
    assert_eq!(r["old_pid"], serving, "{r}");
    let new = r["new_pid"].as_u64().unwrap() as u32;
    app.track(new);
    assert!(new != keeper && new != serving, "{r}");
    let s = json(&cli(&app, &["status", "--json"]));
    assert_eq!(s["pid"], new, "{s}");
    assert_eq!(s["generation"], 2, "{s}");
    assert_eq!(app.pid_in_file(), Some(keeper));
}

#[test]
fn usage_per_subcommand() {
    for args in [
        &["status"][..],
        &["status", "--pid", "1", "--pid-file", "x"],
        &["upgrade", "--pid", "0"],
        &["upgrade", "--pid", "1", "--json=yes"],
        &["status", "--pid", "1", "--timeout", "1s"],
    ] {
        let run = hotexec_cli(args, LIMIT);
        assert_eq!(run.code, 2, "{args:?}: {run:?}");
        assert!(run.stderr.contains("usage: hotexec"), "{run:?}");
    }
    let help = hotexec_cli(&["upgrade", "--help"], LIMIT);
    assert_eq!(help.code, 0, "{help:?}");
    for flag in ["--json", "--timeout", "--pid-file", "--pid", "5  busy"] {
        assert!(help.stdout.contains(flag), "{flag} in {help:?}");
    }
    let help = hotexec_cli(&["help", "status"], LIMIT);
    assert_eq!(help.code, 0, "{help:?}");
    assert!(help.stdout.contains("--json"), "{help:?}");
}

/// While the old generation drains, `status` says how many of its connections are still open
/// (it tells the new generation every half second over the link); when it is done, its drain
/// summary says what was drained, handed off and returned.
#[test]
fn status_counts_the_old_generations_connections_while_it_drains() {
    let app = App::start("http", HTTP, &[("HOTEXEC_DRAIN_TIMEOUT", "30s")]);
    let old = app.first_pid();
    let addr = app.addr;
    // One request the old generation keeps serving well past the health verdict.
    let slow = std::thread::spawn(move || get(addr, "/slow?ms=6000", Duration::from_secs(20)));
    app.wait_log("slow request in flight", 1, LIMIT);
    let run = cli(&app, &["upgrade", "--json"]);
    assert_eq!(run.code, 0, "{run:?}");
    let new = json(&run)["new_pid"].as_u64().expect("new_pid") as u32;
    app.track(new);
    let draining = wait_for(LIMIT, "the old generation's open connections", || {
        let s = json(&cli(&app, &["status", "--json"]));
        let d = s["draining"].get(0)?.clone();
        d["connections"].as_u64().map(|n| (n, d))
    });
    assert_eq!(draining.0, 1, "the slow request: {}", draining.1);
    assert_eq!(draining.1["pid"], old, "{}", draining.1);
    assert_eq!(slow.join().unwrap(), Outcome::Ok { pid: old });
    let o = wait_for(LIMIT, "the drain summary", || {
        let s = json(&cli(&app, &["status", "--json"]));
        let o = s["last_upgrade"]["old_generation"].clone();
        (!o.is_null()).then_some(o)
    });
    assert_eq!(o["cut"], 0, "{o}");
    assert_eq!(o["handed_off"], 0, "{o}");
    assert_eq!(o["returned"], 0, "{o}");
    assert!(o["drained"].as_u64().is_some_and(|n| n >= 1), "{o}");
}

/// `status` tells a verdict still to come from one that came: during the new generation's
/// probation its last upgrade says `"verdict": "pending"` (its `result` is the hand-over's);
/// once the old generation has judged, `committed`, with the numbers it decided on and the
/// time to the verdict. (Before, `status` said `ok` with an empty `health` throughout: the
/// verdict never reached the generation that answers `status`.)
#[test]
fn status_shows_the_health_verdict_pending_then_committed() {
    let app = App::start(
        "http",
        HTTP,
        &[("HOTEXEC_PROBATION", "4s"), ("HOTEXEC_MAX_PROBATION", "4s")],
    );
    let (_, new) = app.upgrade();
    // A few requests for the verdict to count.
    for _ in 0..20 {
        assert_eq!(
            get(app.addr, "/", Duration::from_secs(5)),
            Outcome::Ok { pid: new }
        );
    }
    let pending = wait_for(LIMIT, "the new generation's status", || {
        let s = json(&cli(&app, &["status", "--json"]));
        (s["pid"] == new && !s["last_upgrade"].is_null()).then(|| s["last_upgrade"].clone())
    });
    assert_eq!(pending["verdict"], "pending", "{pending}");
    assert_eq!(pending["result"], "ok", "{pending}");
    assert!(pending["ms_to_verdict"].is_null(), "{pending}");
    let judged = wait_for(LIMIT, "the verdict in the status", || {
        let u = json(&cli(&app, &["status", "--json"]))["last_upgrade"].clone();
        (u["verdict"] != "pending").then_some(u)
    });
    assert_eq!(judged["verdict"], "committed", "{judged}");
    assert_eq!(judged["result"], "ok", "{judged}");
    assert!(
        judged["ms_to_verdict"].as_f64() >= Some(3900.0),
        "the verdict after the 4 s probation: {judged}"
    );
    assert!(
        judged["health"]["requests"].as_f64() >= Some(20.0),
        "the numbers the verdict decided on: {judged}"
    );
}
