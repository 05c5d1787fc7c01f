//! `hotexec upgrade --pid-file PATH [--timeout 60s]`: triggers an upgrade of a running hotexec
//! server and waits for the outcome, where `kill -USR2` fires and forgets.
//!
//! It reads the pid from the pid file, connects to that process's control socket
//! (`@hotexec/<pid-ns>/<pid>`, see `hotexec::control`), asks for an upgrade and prints the new pid
//! (exit 0) or why the upgrade failed (non-zero; the server keeps serving).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use hotexec::control::{self, Reply, RequestError};

const USAGE: &str = "\
usage: hotexec upgrade (--pid-file PATH | --pid PID) [--timeout DURATION]

Triggers a zero-downtime upgrade of a running hotexec server and waits for the outcome.
Prints the pid of the new generation, or why the upgrade failed (the running generation then
keeps serving). In keeper mode the pid file names the keeper, which relays the request.

options:
  --pid-file PATH     the server's pid file (HOTEXEC_PID_FILE / pid_file = ...)
  --pid PID           the server's pid, instead of a pid file
  --timeout DURATION  how long to wait for the outcome: 500ms, 30s, 2m (default 60s); keep it
                      above the server's ready_timeout (default 30s)

exit codes:
  0  upgraded: the new pid is printed on stdout
  1  the upgrade failed (the new binary could not be executed, exited before it was ready, was
     not ready in time, ...): the reason is printed on stderr
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
        Ok(Cmd::Upgrade { target, timeout }) => ExitCode::from(upgrade(target, timeout)),
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
    Upgrade { target: Target, timeout: Duration },
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
            "--timeout" => {
                let v = value()?;
                timeout = hotexec::parse_duration(&v).map_err(|e| format!("--timeout: {e}"))?;
            }
            other => return Err(format!("unknown option {other:?}")),
        }
    }
    let target = target.ok_or("upgrade needs --pid-file PATH or --pid PID")?;
    Ok(Cmd::Upgrade { target, timeout })
}

fn upgrade(target: Target, timeout: Duration) -> u8 {
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
    match control::request(pid, "upgrade", timeout) {
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
