//! What the connection hand-off tests share: a client of the `line` example, and "one owner"
//! checked from outside — in `/proc/<pid>/fd` of each process against the kernel's table of
//! established connections (`/proc/net/tcp{,6}`), not by asking either process.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// An integer from the environment, or `default`: the size knobs of the long runs.
pub fn env_usize(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A client of the `line` example (each line answered `pid=<pid> <line>`).
pub struct LineClient {
    /// The connection (for writing, and its local port).
    pub out: TcpStream,
    input: BufReader<TcpStream>,
}

/// How a line request ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Said {
    /// A line, without its newline.
    Line(String),
    /// EOF or reset: the connection is gone.
    Gone,
}

impl LineClient {
    /// Connects, with a 30 s bound on every read.
    pub fn connect(addr: SocketAddr) -> LineClient {
        let out = TcpStream::connect(addr).unwrap();
        // A bound on every read: a missing answer fails the test instead of hanging it.
        out.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let input = BufReader::new(out.try_clone().unwrap());
        LineClient { out, input }
    }

    /// Writes `bytes`; false if the connection is gone.
    pub fn send(&mut self, bytes: &str) -> bool {
        self.out.write_all(bytes.as_bytes()).is_ok()
    }

    /// Reads one line (a test failure after 30 s).
    pub fn read(&mut self) -> Said {
        let mut line = String::new();
        match self.input.read_line(&mut line) {
            Ok(0) => Said::Gone,
            Ok(_) => Said::Line(line.trim_end().to_string()),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                panic!("no answer within 30 s")
            }
            Err(_) => Said::Gone,
        }
    }

    /// Sends `line` and reads the answer.
    pub fn ask(&mut self, line: &str) -> Said {
        if !self.send(&format!("{line}\n")) {
            return Said::Gone;
        }
        self.read()
    }

    /// Asks `line`; the pid that answered (`pid=<pid> <line>`), or why not.
    pub fn ask_pid(&mut self, line: &str) -> Result<u32, String> {
        match self.ask(line) {
            Said::Line(l) => l
                .strip_prefix("pid=")
                .and_then(|r| r.strip_suffix(&format!(" {line}")))
                .and_then(|p| p.parse().ok())
                .ok_or_else(|| format!("asked {line:?}, got {l:?}")),
            Said::Gone => Err(format!("asked {line:?}: the connection is gone")),
        }
    }

    /// The local port of this client's connection (what the server sees as the peer port).
    pub fn port(&self) -> u16 {
        self.out.local_addr().unwrap().port()
    }
}

/// Inodes of the sockets `pid` has open (`socket:[N]` in `/proc/<pid>/fd`).
pub fn socket_inodes(pid: u32) -> HashSet<u64> {
    crate::procfs::fd_targets(pid)
        .into_iter()
        .filter_map(|(_, t)| t.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok())
        .collect()
}

/// The established TCP connections whose local port is `port` (the server side of every client
/// connection to a listener on `port`), from `/proc/net/tcp` and `tcp6`: the client's port and
/// the server-side socket's inode.
pub fn server_side_connections(port: u16) -> HashMap<u16, u64> {
    let mut out = HashMap::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 {
                continue;
            }
            let port_of = |a: &str| {
                a.rsplit(':')
                    .next()
                    .and_then(|p| u16::from_str_radix(p, 16).ok())
            };
            // st 01: ESTABLISHED.
            if port_of(f[1]) == Some(port) && f[3] == "01" {
                if let (Some(peer), Ok(inode)) = (port_of(f[2]), f[9].parse()) {
                    out.insert(peer, inode);
                }
            }
        }
    }
    out
}

/// Who holds the server side of each connection to `port`: held by `a` only, by `b` only, by
/// both, by neither. Seen from outside: the kernel's tables, not what either process says.
#[derive(Clone, Debug)]
pub struct Owners {
    /// Held by `a` only.
    pub only_a: usize,
    /// Held by `b` only.
    pub only_b: usize,
    /// Held by both: two owners.
    pub both: usize,
    /// Held by neither.
    pub neither: usize,
}

/// [`Owners`] of the connections to `port`, between processes `a` and `b`.
pub fn owners(port: u16, a: u32, b: u32) -> Owners {
    let (o, _) = owners_by_client(port, a, b);
    o
}

/// [`owners`], and for each client port the pids whose fd table holds its server side.
pub fn owners_by_client(port: u16, a: u32, b: u32) -> (Owners, HashMap<u16, Vec<u32>>) {
    let conns = server_side_connections(port);
    let (sa, sb) = (socket_inodes(a), socket_inodes(b));
    let mut o = Owners {
        only_a: 0,
        only_b: 0,
        both: 0,
        neither: 0,
    };
    let mut by_client = HashMap::new();
    for (client, c) in &conns {
        let held: Vec<u32> = [(a, &sa), (b, &sb)]
            .into_iter()
            .filter(|(_, s)| s.contains(c))
            .map(|(p, _)| p)
            .collect();
        match held.len() {
            2 => o.both += 1,
            0 => o.neither += 1,
            _ if held[0] == a => o.only_a += 1,
            _ => o.only_b += 1,
        }
        by_client.insert(*client, held);
    }
    (o, by_client)
}

impl Owners {
    /// Same counts.
    pub fn same(&self, other: &Owners) -> bool {
        (self.only_a, self.only_b, self.both, self.neither)
            == (other.only_a, other.only_b, other.both, other.neither)
    }
}

impl std::fmt::Display for Owners {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} held by the old process only, {} by the new only, {} by both, {} by neither",
            self.only_a, self.only_b, self.both, self.neither
        )
    }
}
