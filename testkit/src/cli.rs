//! Running a command to its end under a time limit: the `hotexec` command of the package, as an
//! operator's script runs it.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::spawn::bin;

/// What a run of a command gave.
#[derive(Debug)]
pub struct CliRun {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the `hotexec` command with `args`; killed (and the test failed) after `limit`.
pub fn hotexec_cli(args: &[&str], limit: Duration) -> CliRun {
    let mut cmd = Command::new(bin("hotexec"));
    cmd.args(args);
    run(cmd, &format!("hotexec {args:?}"), limit)
}

/// Runs `cmd` with no stdin and its output captured; killed (and the test failed, naming
/// `what`) after `limit`. The output is read once the command exited, so it must fit in a pipe
/// (64 KiB): meant for commands that print a few lines.
pub fn run(mut cmd: Command, what: &str, limit: Duration) -> CliRun {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {what}: {e}"));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let mut stdout = String::new();
    let mut stderr = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    CliRun {
        code: status.code().unwrap_or(-1),
        stdout,
        stderr,
    }
}
