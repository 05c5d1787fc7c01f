//! [`Status`]: what a running server is — the answer to `hotexec status`.

use std::os::fd::BorrowedFd;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use super::report::UpgradeReport;
use super::wire::Record;
use crate::kernel;

/// One listener of the serving generation.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub struct ListenerStatus {
    /// Its name (`#[listen(.., name = "http")]`).
    pub name: String,
    /// The address it is bound to, in the listen grammar (`127.0.0.1:8080`, `unix:/run/a.sock`).
    pub address: Option<String>,
    /// Connections waiting in its accept queue now (TCP listeners; `None` for others).
    pub accept_queue: Option<u32>,
    /// The accept queue's limit (the `listen(2)` backlog, capped at `somaxconn`).
    pub accept_queue_max: Option<u32>,
}

/// An older generation that still drains.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub struct DrainingGeneration {
    /// Its pid.
    pub pid: u32,
    /// Connections it still serves, as it last said (`None`: it has not said).
    pub connections: Option<u64>,
    /// When it exits at the latest (`drain_timeout`), milliseconds since the Unix epoch.
    pub deadline_ms: Option<u64>,
}

/// What a running server is: `hotexec status` prints it, the control socket's `status v2`
/// request returns it.
#[derive(Clone, Debug, PartialEq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub struct Status {
    /// The serving generation's pid.
    pub pid: u32,
    /// Its number: 1 after a fresh start, +1 per upgrade.
    pub generation: Option<u64>,
    /// The path it was started by, and that the next upgrade executes.
    pub exe: Option<String>,
    /// The GNU build id of the running image (what `readelf -n` shows), in hex.
    pub build_id: Option<String>,
    /// When the process started, milliseconds since the Unix epoch.
    pub started_at_ms: Option<u64>,
    /// How long it has been running, in seconds.
    pub uptime_s: Option<f64>,
    /// Its listeners.
    pub listeners: Vec<ListenerStatus>,
    /// The last upgrade this generation took part in: the one that started it (as its
    /// predecessor reported it), or a later one that failed.
    pub last_upgrade: Option<UpgradeReport>,
    /// Older generations still draining.
    pub draining: Vec<DrainingGeneration>,
}

/// A listener as the status names it: its name, address and socket inode, recorded at start.
/// No fd is kept for it (an open copy would keep a closed listener's queue alive); its queue is
/// read through the fd the process holds, if it still holds one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ListenerId {
    pub name: String,
    pub address: Option<String>,
    pub inode: Option<u64>,
}

impl ListenerId {
    pub(crate) fn of(name: &str, fd: BorrowedFd<'_>) -> ListenerId {
        ListenerId {
            name: name.to_owned(),
            address: crate::socket::local_addr(fd).ok().map(|a| {
                // TCP is the grammar's default kind: `127.0.0.1:8080`, as written in
                // `#[listen]`; `udp:` and `unix:` keep their prefix.
                let s = a.to_string();
                s.strip_prefix("tcp:").map(str::to_owned).unwrap_or(s)
            }),
            inode: kernel::socket_inode(fd),
        }
    }
}

/// What only the runtime knows, handed to [`gather`]; the rest is read from the kernel.
pub(crate) struct StatusInput<'a> {
    pub generation: Option<u64>,
    pub exe: &'a Path,
    pub listeners: &'a [ListenerId],
    pub last_upgrade: Option<UpgradeReport>,
    pub draining: Vec<DrainingGeneration>,
}

/// The status of this process now.
pub(crate) fn gather(input: StatusInput<'_>) -> Status {
    let started = kernel::process_start();
    Status {
        pid: std::process::id(),
        generation: input.generation,
        exe: Some(input.exe.display().to_string()),
        build_id: kernel::build_id(),
        started_at_ms: started
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_millis() as u64),
        uptime_s: started
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .map(|d| (d.as_secs_f64() * 1e3).round() / 1e3),
        listeners: input
            .listeners
            .iter()
            .map(|l| {
                let q = l.inode.and_then(kernel::accept_queue_of_inode);
                ListenerStatus {
                    name: l.name.clone(),
                    address: l.address.clone(),
                    accept_queue: q.map(|q| q.len),
                    accept_queue_max: q.map(|q| q.max),
                }
            })
            .collect(),
        last_upgrade: input.last_upgrade,
        draining: input.draining,
    }
}

impl Status {
    pub(crate) fn to_record(&self) -> Record {
        let mut r = Record::new();
        r.put("pid", self.pid);
        r.put_opt("generation", self.generation);
        r.put_opt("exe", self.exe.as_ref());
        r.put_opt("build_id", self.build_id.as_ref());
        r.put_opt("started_at_ms", self.started_at_ms);
        r.put_opt("uptime_s", self.uptime_s);
        for (i, l) in self.listeners.iter().enumerate() {
            let mut s = Record::new();
            s.put("name", &l.name);
            s.put_opt("address", l.address.as_ref());
            s.put_opt("accept_queue", l.accept_queue);
            s.put_opt("accept_queue_max", l.accept_queue_max);
            r.put_sub(&format!("listener.{i}"), s);
        }
        if let Some(u) = &self.last_upgrade {
            r.put_sub("last_upgrade", u.to_record());
        }
        for (i, d) in self.draining.iter().enumerate() {
            let mut s = Record::new();
            s.put("pid", d.pid);
            s.put_opt("connections", d.connections);
            s.put_opt("deadline_ms", d.deadline_ms);
            r.put_sub(&format!("draining.{i}"), s);
        }
        r
    }

    /// `None` without a `pid`: not a status.
    pub(crate) fn from_record(r: &Record) -> Option<Status> {
        Some(Status {
            pid: r.parse("pid")?,
            generation: r.parse("generation"),
            exe: r.get("exe").map(str::to_owned),
            build_id: r.get("build_id").map(str::to_owned),
            started_at_ms: r.parse("started_at_ms"),
            uptime_s: r.parse("uptime_s"),
            listeners: r
                .indices("listener")
                .into_iter()
                .map(|i| {
                    let s = r.sub(&format!("listener.{i}"));
                    ListenerStatus {
                        name: s.get("name").unwrap_or_default().to_owned(),
                        address: s.get("address").map(str::to_owned),
                        accept_queue: s.parse("accept_queue"),
                        accept_queue_max: s.parse("accept_queue_max"),
                    }
                })
                .collect(),
            last_upgrade: UpgradeReport::from_record(&r.sub("last_upgrade")),
            draining: r
                .indices("draining")
                .into_iter()
                .filter_map(|i| {
                    let s = r.sub(&format!("draining.{i}"));
                    Some(DrainingGeneration {
                        pid: s.parse("pid")?,
                        connections: s.parse("connections"),
                        deadline_ms: s.parse("deadline_ms"),
                    })
                })
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsFd;
    use std::time::{Duration, Instant};

    /// A real listener with two clients waiting in its queue: the status says so, and it
    /// survives the wire.
    #[test]
    fn gathers_real_listeners_and_round_trips() {
        let http = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = http.local_addr().unwrap();
        let dir = std::env::temp_dir().join(format!("hotexec-status-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let unix = std::os::unix::net::UnixListener::bind(dir.join("a b.sock")).unwrap();
        let _c1 = TcpStream::connect(addr).unwrap();
        let _c2 = TcpStream::connect(addr).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while kernel::accept_queue(http.as_fd()).unwrap().len < 2 {
            assert!(Instant::now() < deadline, "the clients never queued");
            std::thread::sleep(Duration::from_millis(5));
        }
        let listeners = [
            ListenerId::of("http", http.as_fd()),
            ListenerId::of("local", unix.as_fd()),
        ];
        let s = gather(StatusInput {
            generation: Some(3),
            exe: Path::new("/srv/app/current/my app"),
            listeners: &listeners,
            last_upgrade: None,
            draining: vec![DrainingGeneration {
                pid: 77,
                connections: Some(5),
                deadline_ms: Some(1),
            }],
        });
        std::fs::remove_dir_all(&dir).unwrap();
        drop(unix);
        assert_eq!(s.pid, std::process::id());
        assert_eq!(s.generation, Some(3));
        assert_eq!(s.listeners[0].address, Some(addr.to_string()));
        assert_eq!(s.listeners[0].accept_queue, Some(2));
        assert!(s.listeners[0].accept_queue_max.unwrap() >= 2);
        assert_eq!(s.listeners[1].accept_queue, None);
        assert!(
            s.listeners[1]
                .address
                .as_deref()
                .unwrap()
                .ends_with("a b.sock"),
            "{:?}",
            s.listeners[1]
        );
        assert!(s.uptime_s.unwrap() >= 0.0);
        assert!(s.build_id.is_some());
        let back = Status::from_record(&Record::decode(&s.to_record().encode()));
        assert_eq!(back, Some(s));
        assert_eq!(Status::from_record(&Record::decode("generation=2")), None);
    }
}
