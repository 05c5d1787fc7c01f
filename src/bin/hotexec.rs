//! `hotexec upgrade --pid-file PATH [--timeout 60s] [--check]`: triggers an upgrade of a running
//! hotexec server and waits for the outcome (the new generation committed, or why not), where
//! `kill -USR2` fires and forgets; with `--check`, starts nothing and says what an upgrade would
//! execute and whether it would start it.
//!
//! It reads the pid from the pid file, connects to that process's control socket
//! (`@hotexec/<pid-ns>/<pid>`, see `hotexec::control`), asks for an upgrade and prints the new pid
//! (exit 0) or why the upgrade failed (non-zero; the server keeps serving).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use hotexec::control::{self, Reply, RequestError};

const USAGE: &str = "\
usage: hotexec upgrade (--pid-file PATH | --pid PID) [--timeout DURATION] [--check]

Triggers a zero-downtime upgrade of a running hotexec server and waits for the outcome.
Prints the pid of the new generation, or why the upgrade failed (the running generation then
keeps serving). In keeper mode the pid file names the keeper, which relays the request.

options:
  --pid-file PATH     the server's pid file (HOTEXEC_PID_FILE / pid_file = ...)
  --pid PID           the server's pid, instead of a pid file
  --timeout DURATION  how long to wait for the outcome: 500ms, 30s, 2m (default 60s); keep it
                      above the server's ready_timeout plus its health probation (default 30s
                      + up to 10s: `ok` comes once the new generation is committed)
  --check             start nothing: print what an upgrade would execute (the path, where its
                      symlinks lead, the binary's format and hotexec note) and whether the
                      server would start it; exit 0 if it would, 1 with the reason if not

exit codes:
  0  upgraded: the new pid is printed on stdout (with --check: an upgrade would start it)
  1  the upgrade failed (refused before anything was started: missing, not-executable,
     format, machine, interpreter, incompatible; the new binary could not be executed, exited
     before it was ready, was not ready in time; unhealthy: it was ready but served worse than
     the running one during its probation, which serves on): the reason is on stderr
  2  usage error
  3  no outcome within --timeout (the upgrade may still complete)
  4  cannot reach the server (no pid file, no such process, no control socket)
  5  busy: another upgrade is running, or the server is draining; try again";

const FAILED: u8 = 1;
const USAGE_ERROR: u8 = 2;
const TIMEOUT: u8 = 3;
const UNREACHABLE: u8 = 4;
const BUSY: u8 = 5;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match parse(&args) {
        Ok(Cmd::Help) => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Ok(Cmd::Upgrade {
            target,
            timeout,
            check,
        }) => ExitCode::from(upgrade(target, timeout, check)),
        Err(e) => {
            eprintln!("hotexec: {e}\n\n{USAGE}");
            ExitCode::from(USAGE_ERROR)
        }
    }
}

enum Target {
    PidFile(PathBuf),
    Pid(u32),
}

enum Cmd {
    Help,
    Upgrade {
        target: Target,
        timeout: Duration,
        /// Only ask what an upgrade would execute.
        check: bool,
    },
}

fn parse(args: &[String]) -> Result<Cmd, String> {
    let mut it = args.iter();
    match it.next().map(String::as_str) {
        None | Some("-h" | "--help" | "help") => return Ok(Cmd::Help),
        Some("upgrade") => {}
        Some(other) => return Err(format!("unknown command {other:?}: expected `upgrade`")),
    }
    let mut target = None;
    let mut timeout = Duration::from_secs(60);
    let mut check = false;
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (arg.as_str(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| it.next().cloned())
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag {
            "-h" | "--help" => return Ok(Cmd::Help),
            "--pid-file" => target = Some(Target::PidFile(PathBuf::from(value()?))),
            "--pid" => {
                let v = value()?;
                let pid = v
                    .parse()
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| format!("--pid {v:?}: not a pid"))?;
                target = Some(Target::Pid(pid));
            }
            "--check" if inline.is_none() => check = true,
            "--timeout" => {
                let v = value()?;
                timeout = hotexec::parse_duration(&v).map_err(|e| format!("--timeout: {e}"))?;
            }
            other => return Err(format!("unknown option {other:?}")),
        }
    }
    let target = target.ok_or("upgrade needs --pid-file PATH or --pid PID")?;
    Ok(Cmd::Upgrade {
        target,
        timeout,
        check,
    })
}

fn upgrade(target: Target, timeout: Duration, check: bool) -> u8 {
    let pid = match target {
        Target::Pid(p) => p,
        Target::PidFile(path) => match std::fs::read_to_string(&path) {
            Ok(s) => match s.trim().parse::<u32>() {
                Ok(p) if p > 0 => p,
                _ => {
                    eprintln!(
                        "hotexec: pid file {}: no pid in it ({:?})",
                        path.display(),
                        s.trim()
                    );
                    return UNREACHABLE;
                }
            },
            Err(e) => {
                eprintln!(
                    "hotexec: pid file {}: {e} (is the server running?)",
                    path.display()
                );
                return UNREACHABLE;
            }
        },
    };
    let request = if check { "check" } else { "upgrade" };
    match control::request(pid, request, timeout) {
        Ok(Reply::Checked(facts)) if check => {
            for fact in &facts {
                println!("{fact}");
            }
            println!("verdict: an upgrade of pid {pid} would start it");
            0
        }
        Ok(Reply::Error { kind, reason }) if check => {
            eprintln!("hotexec: check failed ({kind}): {reason}");
            match kind.as_str() {
                "unreachable" | "refused" => UNREACHABLE,
                _ => FAILED,
            }
        }
        Ok(Reply::Ok(p)) if check => {
            eprintln!("hotexec: pid {pid} answered `ok {p}` to a check (an older hotexec?)");
            FAILED
        }
        Ok(Reply::Ok(new)) => {
            println!("{new}");
            eprintln!("hotexec: upgraded: pid {new} serves now");
            0
        }
        Ok(Reply::Checked(_)) => {
            eprintln!("hotexec: pid {pid} answered a check where an upgrade was asked for");
            FAILED
        }

        Ok(Reply::Error { kind, reason }) => {
            eprintln!("hotexec: upgrade failed ({kind}): {reason}");
            match kind.as_str() {
                "busy" => BUSY,
                "unreachable" | "refused" => UNREACHABLE,
                _ => FAILED,
            }
        }
        Err(RequestError::Timeout(t)) => {
            eprintln!(
                "hotexec: no outcome from pid {pid} within {t:?}; the upgrade may still complete"
            );
            TIMEOUT
        }
        Err(RequestError::Unreachable(e)) => {
            eprintln!("hotexec: {e}");
            UNREACHABLE
        }
        Err(RequestError::Protocol(e)) => {
            eprintln!("hotexec: {e}");
            FAILED
        }
        Err(RequestError::WrongPeer(e)) => {
            eprintln!("hotexec: {e}");
            UNREACHABLE
        }
    }
}
