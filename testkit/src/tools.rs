//! Real tools from the system the tests run against (installed by `.ci/install`): systemd's,
//! and load generators and the like run as children of a test ([`start`], [`run`],
//! [`WrkSummary`]).

/// The path of a real tool from Debian's `systemd` package (`systemd-socket-activate`,
/// `systemd-analyze`), or: a skip with a message, and a failure under CI (`.ci/install`
/// installs it).
pub fn tool(name: &str) -> Option<String> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    });
    match found {
        Some(p) => Some(p.to_string_lossy().into_owned()),
        None if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("{name} is missing: .ci/install must install the `systemd` package")
        }
        None => {
            eprintln!("SKIPPED: {name} not found (apt-get install systemd)");
            None
        }
    }
}

/// An outside program (a load generator, `openssl`) running as a child of the test: its
/// stdout and stderr are drained on threads (a chatty tool never blocks on a full pipe), and it
/// is killed and reaped if dropped unfinished, also when the test fails.
pub struct Running {
    child: Option<std::process::Child>,
    what: String,
    out: Option<std::thread::JoinHandle<String>>,
    err: Option<std::thread::JoinHandle<String>>,
}

/// Starts `cmd` (stdin from `/dev/null` unless the command sets it) with its output captured.
/// A missing program panics naming `install`, what `.ci/install` installs for it.
pub fn start(cmd: &mut std::process::Command, install: &str) -> Running {
    use std::process::Stdio;
    let what = format!("{:?}", cmd.get_program());
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: {e} (.ci/install installs it: {install})"));
    let drain = |mut r: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let out = child.stdout.take().map(|o| drain(Box::new(o)));
    let err = child.stderr.take().map(|e| drain(Box::new(e)));
    Running {
        child: Some(child),
        what,
        out,
        err,
    }
}

/// Runs `cmd` to completion within `limit` (stdin from `/dev/null`); its stdout and stderr.
/// Panics if it fails or takes longer.
pub fn run(cmd: &mut std::process::Command, install: &str, limit: std::time::Duration) -> String {
    let r = start(cmd.stdin(std::process::Stdio::null()), install);
    let (out, err) = r.finish(limit);
    out + &err
}

impl Running {
    /// The child, for writing to its stdin.
    pub fn child(&mut self) -> &mut std::process::Child {
        self.child.as_mut().expect("running")
    }

    /// Waits for the program to exit (killing it past `limit`): (stdout, stderr). Panics,
    /// with its output, if it failed.
    pub fn finish(mut self, limit: std::time::Duration) -> (String, String) {
        let mut child = self.child.take().expect("running");
        let deadline = std::time::Instant::now() + limit;
        let status = loop {
            if let Some(st) = child.try_wait().expect("try_wait") {
                break st;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{} did not finish within {limit:?}", self.what);
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        let join = |h: Option<std::thread::JoinHandle<String>>| {
            h.map(|h| h.join().unwrap_or_default()).unwrap_or_default()
        };
        let (out, err) = (join(self.out.take()), join(self.err.take()));
        assert!(
            status.success(),
            "{} failed ({status}):\n{out}{err}",
            self.what
        );
        (out, err)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The numbers of `wrk`'s summary: requests, and each error counter (zero when wrk printed
/// none).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WrkSummary {
    pub requests: u64,
    pub connect: u64,
    pub read: u64,
    pub write: u64,
    pub timeout: u64,
    pub non_2xx: u64,
}

impl WrkSummary {
    /// Parses wrk's output.
    pub fn parse(out: &str) -> WrkSummary {
        let mut s = WrkSummary::default();
        for line in out.lines().map(str::trim) {
            if let Some(n) = line
                .split_whitespace()
                .next()
                .filter(|_| line.contains(" requests in "))
            {
                s.requests = n.parse().unwrap_or(0);
            } else if let Some(rest) = line.strip_prefix("Socket errors:") {
                // "Socket errors: connect 0, read 12, write 0, timeout 0"
                for part in rest.split(',') {
                    let mut it = part.split_whitespace();
                    let (Some(k), Some(v)) = (it.next(), it.next()) else {
                        continue;
                    };
                    let v = v.parse().unwrap_or(0);
                    match k {
                        "connect" => s.connect = v,
                        "read" => s.read = v,
                        "write" => s.write = v,
                        "timeout" => s.timeout = v,
                        _ => {}
                    }
                }
            } else if let Some(n) = line.strip_prefix("Non-2xx or 3xx responses:") {
                s.non_2xx = n.trim().parse().unwrap_or(0);
            }
        }
        s
    }

    /// Every error wrk counted: socket errors and non-2xx responses.
    pub fn errors(&self) -> u64 {
        self.connect + self.read + self.write + self.timeout + self.non_2xx
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_summaries_parse() {
        let out = "Running 4s test @ https://127.0.0.1:1/\n  2 threads and 64 connections\n\
                   35051 requests in 4.10s, 3.1MB read\n  Socket errors: connect 0, read 12, write 1, timeout 2\n\
                   Non-2xx or 3xx responses: 3\nRequests/sec:   8549.02\n";
        let s = WrkSummary::parse(out);
        assert_eq!(
            (
                s.requests,
                s.read,
                s.write,
                s.timeout,
                s.non_2xx,
                s.errors()
            ),
            (35051, 12, 1, 2, 3, 18)
        );
        assert_eq!(WrkSummary::parse("35051 requests in 4.10s").errors(), 0);
    }

    #[test]
    fn a_failing_tool_panics_with_its_output_and_a_finished_one_gives_it() {
        assert_eq!(
            run(
                std::process::Command::new("sh").args(["-c", "echo out; echo err >&2"]),
                "-",
                std::time::Duration::from_secs(10)
            ),
            "out\nerr\n"
        );
        let failed = std::panic::catch_unwind(|| {
            run(
                std::process::Command::new("sh").args(["-c", "echo why; exit 3"]),
                "-",
                std::time::Duration::from_secs(10),
            )
        });
        let msg = failed.unwrap_err();
        let msg = msg.downcast_ref::<String>().unwrap();
        assert!(msg.contains("why") && msg.contains("3"), "{msg}");
    }
}
