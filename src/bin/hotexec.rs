//! `hotexec`: the operator's command for a running hotexec server.
//!
//! - `hotexec upgrade (--pid-file PATH | --pid PID) [--json] [--timeout 60s]` triggers an upgrade
//!   and waits for the outcome, where `kill -USR2` fires and forgets.
//! - `hotexec status (--pid-file PATH | --pid PID) [--json]` says what serves now.
//!
//! Both read the pid from the pid file (or take it as given), connect to that process's control
//! socket (`@hotexec/<pid-ns>/<pid>`, see `hotexec::control`, which checks with `SO_PEERCRED`
//! that the socket is held by that very process) and print the reply: text by default, one
//! JSON object with `--json`. The exit code says what happened (see `EXIT_CODES`), so scripts and
//! fleet tools (examples/fleet/) can act on it.
//!
//! Parsed with `clap` (derive): `--help` per subcommand, suggestions for typos, and exit code 2
//! on every usage error, as this command always had. JSON written with `serde_json`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use hotexec::control::{self, Reply, RequestError};
use serde::Serialize;

/// The exit codes, documented once: in `--help` of the command and of each subcommand.
const EXIT_CODES: &str = "\
exit codes:
  0  upgraded: the new pid is printed on stdout
  1  the upgrade failed (the new binary could not be executed, exited before it was ready, was
     not ready in time, ...): the reason is printed on stderr; the running generation keeps serving
  2  usage error
  3  no outcome within --timeout (the upgrade may still complete)
  4  cannot reach the server (no pid file, no such process, no control socket, or the socket is
     held by another process than the server)
  5  busy: another upgrade is running, or the server is draining; try again";

/// Printed after a usage error (clap's own message comes first).
const USAGE: &str = "\
usage: hotexec upgrade (--pid-file PATH | --pid PID) [--json] [--timeout DURATION]
       hotexec status (--pid-file PATH | --pid PID) [--json]
       hotexec help [COMMAND]";

const FAILED: u8 = 1;
const USAGE_ERROR: u8 = 2;
const TIMEOUT: u8 = 3;
const UNREACHABLE: u8 = 4;
const BUSY: u8 = 5;

/// Zero-downtime upgrades of a running hotexec server, and what it is running.
#[derive(Parser, Debug)]
#[command(name = "hotexec", version, after_help = EXIT_CODES)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Triggers a zero-downtime upgrade and waits for the outcome.
    ///
    /// Prints the pid of the new generation, or why the upgrade failed (the running generation
    /// then keeps serving). In keeper mode the pid file names the keeper, which relays the
    /// request.
    #[command(after_help = EXIT_CODES)]
    Upgrade(UpgradeArgs),
    /// Says what serves now: pid, generation, build, listeners, the last upgrade, what drains.
    #[command(after_help = EXIT_CODES)]
    Status(StatusArgs),
}

/// Which server: `--pid-file PATH` or `--pid PID`, exactly one.
#[derive(Args, Debug)]
#[group(required = true, multiple = false)]
struct Target {
    /// The server's pid file (HOTEXEC_PID_FILE / pid_file = ...).
    #[arg(long, value_name = "PATH")]
    pid_file: Option<PathBuf>,
    /// The server's pid, instead of a pid file.
    #[arg(long, value_name = "PID", value_parser = clap::value_parser!(u32).range(1..))]
    pid: Option<u32>,
}

#[derive(Args, Debug)]
struct UpgradeArgs {
    #[command(flatten)]
    target: Target,
    /// Print the outcome as one JSON object on stdout (also on failure), instead of the new pid.
    #[arg(long)]
    json: bool,
    /// How long to wait for the outcome: 500ms, 30s, 2m; keep it above the server's
    /// ready_timeout (default 30s).
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = duration)]
    timeout: Duration,
    // ── `upgrade --check` (issue 18, helper "health"): add the flag here and its branch at the
    // ── marked place in `upgrade` below.
}

#[derive(Args, Debug)]
struct StatusArgs {
    #[command(flatten)]
    target: Target,
    /// Print the status as one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

fn duration(s: &str) -> Result<Duration, String> {
    hotexec::parse_duration(s).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return ExitCode::from(usage_error(e)),
    };
    let code = match cli.command {
        // No command: the help, as `hotexec --help` (what this command always did).
        None => {
            let _ = <Cli as clap::CommandFactory>::command().print_help();
            0
        }
        Some(Command::Upgrade(args)) => upgrade(args),
        Some(Command::Status(args)) => status(args),
    };
    ExitCode::from(code)
}

/// `--help` and `--version` go to stdout with exit 0; anything else is a usage error: clap's
/// message (with its suggestion), then the synopsis, exit 2.
fn usage_error(e: clap::Error) -> u8 {
    use clap::error::ErrorKind;
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        let _ = e.print();
        return 0;
    }
    let text = e.render().to_string();
    // clap ends its message with its own `Usage:` line and a `--help` hint; ours follows.
    let message = text.split("\nUsage:").next().unwrap_or(&text).trim();
    let message = message.strip_prefix("error: ").unwrap_or(message);
    eprintln!("hotexec: {message}\n\n{USAGE}\n\nFor more information, try 'hotexec help'.");
    USAGE_ERROR
}

/// The pid named by the target, or the exit code (unreachable) after saying why.
fn resolve(target: &Target) -> Result<u32, Failure> {
    if let Some(pid) = target.pid {
        return Ok(pid);
    }
    let path = target
        .pid_file
        .as_ref()
        .expect("clap requires one of the two");
    match std::fs::read_to_string(path) {
        Ok(s) => match s.trim().parse::<u32>() {
            Ok(p) if p > 0 => Ok(p),
            _ => Err(Failure::unreachable(format!(
                "pid file {}: no pid in it ({:?})",
                path.display(),
                s.trim()
            ))),
        },
        Err(e) => Err(Failure::unreachable(format!(
            "pid file {}: {e} (is the server running?)",
            path.display()
        ))),
    }
}

/// Why a command did not succeed: an exit code, a `kind` for `--json` and the reason.
struct Failure {
    code: u8,
    kind: String,
    reason: String,
}

impl Failure {
    fn unreachable(reason: String) -> Failure {
        Failure {
            code: UNREACHABLE,
            kind: "unreachable".into(),
            reason,
        }
    }

    fn from_request(pid: u32, e: RequestError) -> Failure {
        let (code, kind) = match &e {
            RequestError::Timeout(_) => (TIMEOUT, "timeout"),
            RequestError::Unreachable(_) => (UNREACHABLE, "unreachable"),
            RequestError::WrongPeer(_) => (UNREACHABLE, "wrong-peer"),
            RequestError::Protocol(_) => (FAILED, "protocol"),
        };
        let reason = match e {
            RequestError::Timeout(t) => {
                format!("no outcome from pid {pid} within {t:?}; the upgrade may still complete")
            }
            other => other.to_string(),
        };
        Failure {
            code,
            kind: kind.into(),
            reason,
        }
    }

    fn from_reply(kind: String, reason: String) -> Failure {
        let code = match kind.as_str() {
            "busy" => BUSY,
            "unreachable" | "refused" => UNREACHABLE,
            _ => FAILED,
        };
        Failure { code, kind, reason }
    }
}

fn upgrade(args: UpgradeArgs) -> u8 {
    // ── `upgrade --check` (issue 18) branches here, before anything is sent.
    let pid = match resolve(&args.target) {
        Ok(pid) => pid,
        Err(f) => return upgrade_failed(&args, None, f),
    };
    let report = match control::request_upgrade(pid, args.timeout) {
        Ok(r) => r,
        Err(e) => return upgrade_failed(&args, Some(pid), Failure::from_request(pid, e)),
    };
    if args.json {
        print_json(&report);
    }
    if report.is_ok() {
        let new = report.new_pid.unwrap_or_default();
        if !args.json {
            println!("{new}");
        }
        eprintln!(
            "hotexec: upgraded: pid {new} serves now ({})",
            report.summary()
        );
        return 0;
    }
    let f = Failure::from_reply(
        report.kind.clone().unwrap_or_else(|| "unknown".into()),
        report.reason.clone().unwrap_or_default(),
    );
    eprintln!("hotexec: upgrade failed ({}): {}", f.kind, f.reason);
    f.code
}

/// Says why no upgrade report came (stderr; and a report with `result` `error` with `--json`,
/// so a fleet tool reads one object whatever happened).
fn upgrade_failed(args: &UpgradeArgs, pid: Option<u32>, f: Failure) -> u8 {
    if args.json {
        print_json(&serde_json::json!({
            "result": "error",
            "kind": f.kind,
            "reason": f.reason,
            "old_pid": pid,
            "new_pid": null,
            "health": {},
        }));
    }
    eprintln!("hotexec: {}", f.reason);
    f.code
}

fn status(args: StatusArgs) -> u8 {
    let fail = |f: Failure| {
        eprintln!("hotexec: {}", f.reason);
        f.code
    };
    let pid = match resolve(&args.target) {
        Ok(pid) => pid,
        Err(f) => return fail(f),
    };
    let status = match control::request_status(pid, Duration::from_secs(10)) {
        Ok(Ok(s)) => s,
        Ok(Err(Reply::Error { kind, reason })) => {
            let f = Failure::from_reply(kind, reason);
            let older = if f.kind == "bad-request" {
                " (a server built with an older hotexec: only `upgrade` is known to it)"
            } else {
                ""
            };
            eprintln!("hotexec: status failed ({}): {}{older}", f.kind, f.reason);
            return f.code;
        }
        Ok(Err(other)) => {
            return fail(Failure::from_request(
                pid,
                RequestError::Protocol(other.to_line()),
            ));
        }
        Err(e) => return fail(Failure::from_request(pid, e)),
    };
    if args.json {
        print_json(&status);
    } else {
        print!("{}", status_text(&status));
    }
    0
}

/// `hotexec status` for humans.
fn status_text(s: &hotexec::evidence::Status) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let generation = s.generation.map_or("?".into(), |g| g.to_string());
    let uptime = s
        .uptime_s
        .map_or("?".into(), |u| human(Duration::from_secs_f64(u)));
    let _ = writeln!(out, "pid {}  generation {generation}  up {uptime}", s.pid);
    let _ = writeln!(
        out,
        "exe {}  build {}",
        s.exe.as_deref().unwrap_or("?"),
        s.build_id.as_deref().unwrap_or("?")
    );
    for l in &s.listeners {
        let queue = match (l.accept_queue, l.accept_queue_max) {
            (Some(n), Some(max)) => format!("  accept queue {n}/{max}"),
            _ => String::new(),
        };
        let _ = writeln!(
            out,
            "listener {} {}{queue}",
            l.name,
            l.address.as_deref().unwrap_or("?")
        );
    }
    match &s.last_upgrade {
        Some(u) => {
            let _ = writeln!(out, "last upgrade: {}", u.summary());
            if let Some(reason) = &u.reason {
                let _ = writeln!(out, "  {reason}");
            }
        }
        None => {
            let _ = writeln!(out, "last upgrade: none");
        }
    }
    for d in &s.draining {
        let conns = d.connections.map_or("?".into(), |c| c.to_string());
        let left = d.deadline_ms.map_or("?".into(), |ms| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            human(Duration::from_millis(ms.saturating_sub(now)))
        });
        let _ = writeln!(
            out,
            "draining: pid {}  {conns} connections  exits within {left}",
            d.pid
        );
    }
    out
}

/// `3h2m`, `4m10s`, `12.5s`.
fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{:.1}s", d.as_secs_f64()),
        60..3600 => format!("{}m{}s", s / 60, s % 60),
        _ => format!("{}h{}m", s / 3600, s / 60 % 60),
    }
}

/// One JSON object, one line, on stdout.
fn print_json(value: &impl Serialize) {
    match serde_json::to_string(value) {
        Ok(line) => println!("{line}"),
        Err(e) => eprintln!("hotexec: cannot encode the result as JSON: {e}"),
    }
}
