//! What the examples write to their logs: plain text when stderr is a file (a server started by
//! a script, a service manager or a test), colours only on a terminal. Every example sets up
//! tracing through `examples/support/logging.rs`.
use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hotexec_testkit::prelude::*;

/// Each example that logs, with the variables that put every listener of it on a free port.
fn examples(dir: &std::path::Path) -> Vec<(&'static str, Vec<(&'static str, String)>)> {
    let local = || "127.0.0.1:0".to_string();
    vec![
        (
            "http",
            vec![
                ("HOTEXEC_LISTEN_HTTP", local()),
                ("HOTEXEC_LISTEN_ADMIN", local()),
            ],
        ),
        ("axum", vec![("HOTEXEC_LISTEN_HTTP", local())]),
        ("tonic", vec![("HOTEXEC_LISTEN_GRPC", local())]),
        ("tcp", vec![("HOTEXEC_LISTEN_TCP", local())]),
        ("line", vec![("HOTEXEC_LISTEN_LINE", local())]),
        ("websocket", vec![("HOTEXEC_LISTEN_WS", local())]),
        (
            "multi",
            vec![
                ("HOTEXEC_LISTEN_TCP", local()),
                (
                    "HOTEXEC_LISTEN_UNIX",
                    format!("unix:{}", dir.join("multi.sock").display()),
                ),
                ("HOTEXEC_LISTEN_UDP", "udp:127.0.0.1:0".to_string()),
                ("HOTEXEC_LISTEN_DUAL", "[::]:0".to_string()),
            ],
        ),
    ]
}

/// A server started with its stderr in a file (as under a script, `nohup`, a service manager
/// writing to a file, or a test) writes no terminal escape codes into its log.
#[test]
fn examples_log_plain_text_when_stderr_is_a_file() {
    let dir = Scratch::new("logs-file");
    let mut started = Vec::new();
    for (name, env) in examples(&dir.0) {
        let mut cmd = Command::new(example(name));
        cmd.envs(env)
            .env("RUST_LOG", "info")
            .env("HOTEXEC_KEEPER", "0")
            // Colours must be off because stderr is a file, not because the caller said so.
            .env_remove("NO_COLOR")
            .stdin(Stdio::null());
        let log = dir.0.join(format!("{name}.log"));
        started.push((name, Started::spawn(cmd, &dir.0, &log)));
    }
    for (name, s) in &mut started {
        s.wait_log(&format!("{name} example serving"), Duration::from_secs(20));
        let bytes = std::fs::read(&s.log).unwrap();
        assert!(
            !bytes.contains(&0x1b),
            "the {name} example wrote escape codes into a log file:\n{}",
            String::from_utf8_lossy(&bytes).escape_debug()
        );
        // Fields are there, as plain `key=value`.
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            text.contains(&format!("pid={}", s.pid())),
            "the {name} example's log has no pid field:\n{text}"
        );
    }
}

/// What `example` writes to a terminal (its stdout and stderr) until it logs that it serves;
/// `no_color` is the value of `NO_COLOR`, if set.
fn terminal_output(example_name: &str, listener_var: &str, no_color: Option<&str>) -> String {
    subreaper();
    let (mut master, slave) = openpty();
    let mut cmd = Command::new(example(example_name));
    cmd.env(listener_var, "127.0.0.1:0")
        .env("HOTEXEC_LISTEN_ADMIN", "127.0.0.1:0")
        .env("RUST_LOG", "info")
        .env("HOTEXEC_KEEPER", "0")
        .env_remove("NO_COLOR")
        .stdin(Stdio::null())
        .stdout(slave.try_clone().unwrap())
        .stderr(slave.try_clone().unwrap());
    if let Some(v) = no_color {
        cmd.env("NO_COLOR", v);
    }
    let child = spawn_retrying(&mut cmd);
    // Only once every copy of the slave side is closed does the reader see the end.
    drop(cmd);
    drop(slave);
    let out = Arc::new(Mutex::new(Vec::new()));
    let sink = out.clone();
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        // Ends with EIO once the server, the last holder of the slave side, is gone.
        while let Ok(n) = master.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    let pid = child.id();
    let serving = format!("{example_name} example serving");
    let seen = hotexec_testkit::wait::poll(
        Duration::from_secs(20),
        Duration::from_millis(5),
        &serving,
        || {
            let text = String::from_utf8_lossy(&out.lock().unwrap()).into_owned();
            strip_ansi(&text).contains(&serving).then_some(text)
        },
    );
    kill_and_reap(&[pid], Some(child));
    reader.join().unwrap();
    seen.unwrap_or_else(|e| {
        panic!(
            "{e}; the terminal showed:\n{}",
            String::from_utf8_lossy(&out.lock().unwrap())
        )
    })
}

/// On a terminal the log is in colour (the switch is the terminal, not colours off for good);
/// `NO_COLOR` turns them off there too.
#[test]
fn examples_log_in_colour_on_a_terminal_unless_no_color() {
    let coloured = terminal_output("http", "HOTEXEC_LISTEN_HTTP", None);
    assert!(
        coloured.contains("\u{1b}["),
        "no colours on a terminal:\n{coloured}"
    );
    let empty = terminal_output("http", "HOTEXEC_LISTEN_HTTP", Some(""));
    assert!(
        empty.contains("\u{1b}["),
        "an empty NO_COLOR turned colours off:\n{empty}"
    );
    let plain = terminal_output("http", "HOTEXEC_LISTEN_HTTP", Some("1"));
    assert!(
        !plain.contains('\u{1b}'),
        "NO_COLOR=1, yet colours on a terminal:\n{}",
        plain.escape_debug()
    );
}
