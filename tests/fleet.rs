//! The fleet rollout (examples/fleet/rolling-upgrade.yml) run by the real `ansible-playbook`
//! against ten local server instances (`ansible_connection=local`), each under client load.
//! One has a bad build: the rollout halts there, the instances before it are upgraded, the ones
//! after it are untouched, and no client of any instance loses a request. Then, the build
//! fixed, the same playbook in batches upgrades them all.
//!
//! `ansible-playbook` comes from `.ci/install` (a virtual environment under
//! `~/.cache/hotexec-ansible`), or `HOTEXEC_ANSIBLE_PLAYBOOK`, or `PATH`.
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hotexec_testkit::prelude::*;
use serde_json::Value;

const INSTANCES: usize = 10;
/// The instance with the bad build (0-based): the third.
const BAD: usize = 2;

fn ansible_playbook() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("HOTEXEC_ANSIBLE_PLAYBOOK") {
        return Some(PathBuf::from(p));
    }
    let venv = std::env::var_os("HOME")
        .map(|h| Path::new(&h).join(".cache/hotexec-ansible/bin/ansible-playbook"))
        .filter(|p| p.is_file());
    if venv.is_some() {
        return venv;
    }
    if let Some(p) = tool_quiet("ansible-playbook") {
        return Some(p);
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("ansible-playbook is missing: .ci/install must install it");
    }
    eprintln!("SKIPPED: ansible-playbook not found (bash .ci/install)");
    None
}

fn tool_quiet(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

struct Run {
    code: i32,
    output: String,
}

/// Runs the playbook over `inventory` (killed, and the test failed, after 3 minutes).
fn playbook(bin: &Path, inventory: &Path, dir: &Path, extra: &[&str]) -> Run {
    let log = dir.join(format!("ansible-{}.log", extra.len()));
    let out = std::fs::File::create(&log).unwrap();
    let playbook = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/fleet/rolling-upgrade.yml");
    let mut child = Command::new(bin)
        .arg("-i")
        .arg(inventory)
        .arg(&playbook)
        .args(extra)
        .env("ANSIBLE_NOCOLOR", "1")
        .env("ANSIBLE_LOCAL_TEMP", dir.join("ansible-tmp"))
        .env("ANSIBLE_REMOTE_TEMP", dir.join("ansible-tmp"))
        .env("ANSIBLE_RETRY_FILES_ENABLED", "0")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .expect("ansible-playbook");
    let started = Instant::now();
    let deadline = started + Duration::from_secs(180);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "ansible-playbook ran past 3 minutes:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    eprintln!("ansible-playbook {extra:?}: {:?}", started.elapsed());
    Run {
        code: status.code().unwrap_or(-1),
        output: std::fs::read_to_string(&log).unwrap_or_default(),
    }
}

/// One client per instance, a request every 10 ms (ten instances and ansible share two cores:
/// clients in a tight loop would starve the engine under test).
struct Paced {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<(Instant, Outcome)>>,
}

impl Paced {
    fn start(addr: SocketAddr) -> Paced {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut out = Vec::new();
            let hard_stop = Instant::now() + Duration::from_secs(300);
            while !s.load(Ordering::Relaxed) && Instant::now() < hard_stop {
                out.push((Instant::now(), get(addr, "/", Duration::from_secs(5))));
                std::thread::sleep(Duration::from_millis(10));
            }
            out
        });
        Paced { stop, thread }
    }

    fn finish(self) -> Vec<(Instant, Outcome)> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

fn evidence(dir: &Path, host: &str) -> Option<Value> {
    let text = std::fs::read_to_string(dir.join(format!("{host}.json"))).ok()?;
    Some(serde_json::from_str(&text).unwrap_or_else(|e| panic!("{host}: {e}: {text:?}")))
}

#[test]
fn rollout_halts_at_the_first_bad_host_and_loses_nothing() {
    let Some(ansible) = ansible_playbook() else {
        return;
    };
    let dir = Scratch::new("fleet");
    let t0 = Instant::now();
    let apps: Vec<App> = (0..INSTANCES)
        .map(|_| {
            App::start(
                "axum",
                "HOTEXEC_LISTEN_HTTP",
                &[("HOTEXEC_READY_TIMEOUT", "5s")],
            )
        })
        .collect();
    let loads: Vec<Paced> = apps.iter().map(|a| Paced::start(a.addr)).collect();
    let first: Vec<u32> = apps.iter().map(App::first_pid).collect();
    eprintln!("{INSTANCES} instances started in {:?}", t0.elapsed());
    apps[BAD].replace_binary(Some("#!/bin/sh\necho 'bad build' >&2\nexit 3\n"));

    // The inventory, in order h01..h10; the interpreter next to ansible-playbook if it is a
    // virtual environment's (no interpreter discovery on each host).
    let python = ansible.with_file_name("python3");
    let mut inv = String::from("[servers]\n");
    for (i, app) in apps.iter().enumerate() {
        inv.push_str(&format!(
            "h{:02} hotexec_pid_file={}\n",
            i + 1,
            app.pid_file.display()
        ));
    }
    inv.push_str(&format!(
        "\n[servers:vars]\nansible_connection=local\nansible_pipelining=true\nhotexec_cmd={}\nhotexec_timeout=20s\n{}\n",
        env!("CARGO_BIN_EXE_hotexec"),
        if python.is_file() {
            format!("ansible_python_interpreter={}", python.display())
        } else {
            "ansible_python_interpreter=auto_silent".into()
        }
    ));
    let inventory = dir.0.join("inventory.ini");
    std::fs::write(&inventory, inv).unwrap();

    // 1. The bad build halts the rollout at h03.
    let ev1 = dir.0.join("evidence-1");
    let run = playbook(
        &ansible,
        &inventory,
        &dir.0,
        &["-e", &format!("hotexec_evidence_dir={}", ev1.display())],
    );
    eprintln!("{}", run.output);
    assert_ne!(run.code, 0, "the rollout must fail");
    let mut second = first.clone();
    for (i, app) in apps.iter().enumerate() {
        let host = format!("h{:02}", i + 1);
        let ev = evidence(&ev1, &host);
        if i < BAD {
            let ev = ev.unwrap_or_else(|| panic!("{host}: no evidence"));
            assert_eq!(ev["result"], "ok", "{host}: {ev}");
            assert_eq!(ev["old_pid"], first[i], "{host}: {ev}");
            let new = ev["new_pid"].as_u64().unwrap() as u32;
            app.track(new);
            assert_ne!(new, first[i]);
            assert_eq!(app.pid_in_file(), Some(new), "{host}");
            second[i] = new;
        } else if i == BAD {
            let ev = ev.unwrap_or_else(|| panic!("{host}: no evidence"));
            assert_eq!(ev["result"], "error", "{host}: {ev}");
            assert_eq!(ev["kind"], "exited", "{host}: {ev}");
            assert_eq!(app.pid_in_file(), Some(first[i]), "{host}");
        } else {
            assert!(
                ev.is_none(),
                "{host} was touched after the failed host: {ev:?}"
            );
            assert_eq!(app.pid_in_file(), Some(first[i]), "{host}");
            assert!(
                !app.log_text().contains("upgrade: starting"),
                "{host} was asked to upgrade:\n{}",
                app.log_text()
            );
        }
        answered_by(app.addr, second[i], Duration::from_secs(5));
    }
    assert!(
        run.output.contains("h03: upgrade error (exited)"),
        "the failure names the host and the kind"
    );

    // 2. The build fixed, the rollout again, in batches of 5: every instance upgrades.
    apps[BAD].replace_binary(None);
    let ev2 = dir.0.join("evidence-2");
    let run = playbook(
        &ansible,
        &inventory,
        &dir.0,
        &[
            "-e",
            &format!("hotexec_evidence_dir={}", ev2.display()),
            "-e",
            "hotexec_batch=5",
        ],
    );
    assert_eq!(run.code, 0, "{}", run.output);
    for (i, app) in apps.iter().enumerate() {
        let host = format!("h{:02}", i + 1);
        let ev = evidence(&ev2, &host).unwrap_or_else(|| panic!("{host}: no evidence"));
        assert_eq!(ev["result"], "ok", "{host}: {ev}");
        assert_eq!(ev["old_pid"], second[i], "{host}: {ev}");
        let new = ev["new_pid"].as_u64().unwrap() as u32;
        app.track(new);
        assert_eq!(app.pid_in_file(), Some(new), "{host}");
        answered_by(app.addr, new, Duration::from_secs(5));
    }

    for (i, load) in loads.into_iter().enumerate() {
        let results = load.finish();
        assert!(!results.is_empty());
        assert_no_failures(&format!("h{:02}", i + 1), &results);
    }
}
