//! The hand-over between two generations: the environment variables and the fd layout a new
//! generation starts with, defined once for both sides, and their parser.
//!
//! hotexec passes listening sockets in the systemd socket-activation convention, so a new binary
//! can be any program that understands `sd_listen_fds(3)`, and a hotexec binary started by
//! `systemd` (or `systemd-socket-activate`) adopts its sockets through the same code:
//!
//! | variable | value |
//! |---|---|
//! | `LISTEN_PID` | pid of the process the fds are meant for; any other process ignores them |
//! | `LISTEN_FDS` | number of fds, numbered from 3 (`SD_LISTEN_FDS_START`) |
//! | `LISTEN_FDNAMES` | colon-separated names, one per fd (the `name` of each `#[listen]`) |
//! | `HOTEXEC_READY_FD` | write end of a pipe: the new generation writes a byte on it once its listeners are held and its `main` runs, and keeps it to say later that it handed on or stops, so the previous generation knows not to roll back (see `readiness.rs`) |
//! | `NOTIFY_SOCKET` | during an upgrade, a private `AF_UNIX` datagram socket of the old generation: a new binary that is not built on hotexec reports ready with `sd_notify("READY=1")` on it instead of the pipe (only datagrams sent by the new pid count) |
//! | `HOTEXEC_NOTIFY_SOCKET` | the service manager's real `NOTIFY_SOCKET` (empty: none), which a hotexec new generation puts back as its `NOTIFY_SOCKET` |
//! | `HOTEXEC_OWNED_FDNAMES` | colon-separated names of the passed Unix listeners whose path a hotexec generation bound (not a socket activator): the generation that stops for good removes those paths |
//! | `HOTEXEC_ACTIVATED_FDS` | with `HOTEXEC_READY_FD` only: colon-separated numbers of the passed fds that a service manager handed over (to the first generation, or to the keeper), so every later generation keeps adopting them whatever its declarations say (see `activation.rs`). Without `HOTEXEC_READY_FD` every fd is the service manager's and this variable is not read |
//! | `HOTEXEC_KEEPER_FD` | keeper mode only: this process is a generation under a keeper, and this fd is its channel to the keeper (a `SOCK_SEQPACKET` socket; see `keeper.rs`) |
//! | `HOTEXEC_HANDOFF_FD` | the connection hand-off channel from the old generation (a `SOCK_SEQPACKET` socket, after the keeper channel if any; see `handoff/`) |
//! | `HOTEXEC_LINK_FD` | the generation link to the old generation (a `SOCK_SEQPACKET` socket, after the hand-off channel: lineage, carried state, a stop passed on; see `link.rs`) |
//!
//! Fds are passed in this order: the listeners from fd 3, then the readiness pipe, then the
//! keeper channel, the hand-off channel and the generation link, each when there is one. All
//! variables but `NOTIFY_SOCKET` are removed from the environment before `main` runs (see
//! `startup.rs`), so nothing the application spawns sees them; `NOTIFY_SOCKET` is left as the
//! service manager set it.

use std::ffi::OsString;
use std::fmt;
use std::os::fd::RawFd;

/// `LISTEN_PID`: the pid the fds are meant for.
pub const LISTEN_PID: &str = "LISTEN_PID";
/// `LISTEN_FDS`: how many fds, from [`FDS_START`].
pub const LISTEN_FDS: &str = "LISTEN_FDS";
/// `LISTEN_FDNAMES`: their names, colon-separated.
pub const LISTEN_FDNAMES: &str = "LISTEN_FDNAMES";
/// `HOTEXEC_READY_FD`: the readiness pipe of an upgrade.
pub const READY_FD: &str = "HOTEXEC_READY_FD";
/// `NOTIFY_SOCKET`: where `sd_notify(3)` messages go (systemd's variable, see `notify.rs`).
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";
/// `HOTEXEC_NOTIFY_SOCKET`: the real `NOTIFY_SOCKET` while the new generation's `NOTIFY_SOCKET`
/// is the old generation's private one.
pub const UPSTREAM_NOTIFY_SOCKET: &str = "HOTEXEC_NOTIFY_SOCKET";
/// `HOTEXEC_OWNED_FDNAMES`: Unix listeners whose path is hotexec's to remove on a final stop.
pub const OWNED_FDNAMES: &str = "HOTEXEC_OWNED_FDNAMES";
/// `HOTEXEC_ACTIVATED_FDS`: which fds of a hotexec hand-over came from a service manager.
pub const ACTIVATED_FDS: &str = "HOTEXEC_ACTIVATED_FDS";
/// `HOTEXEC_KEEPER_FD`: the channel to the keeper, in keeper mode.
pub const KEEPER_FD: &str = "HOTEXEC_KEEPER_FD";
/// `HOTEXEC_HANDOFF_FD`: the connection hand-off channel from the previous generation.
pub const HANDOFF_FD: &str = "HOTEXEC_HANDOFF_FD";
/// `HOTEXEC_LINK_FD`: the generation link from the previous generation.
pub const LINK_FD: &str = "HOTEXEC_LINK_FD";
/// Every hand-over variable, for scrubbing (`NOTIFY_SOCKET` is systemd's and stays).
pub const ALL: [&str; 10] = [
    LISTEN_PID,
    LISTEN_FDS,
    LISTEN_FDNAMES,
    READY_FD,
    UPSTREAM_NOTIFY_SOCKET,
    OWNED_FDNAMES,
    ACTIVATED_FDS,
    KEEPER_FD,
    HANDOFF_FD,
    LINK_FD,
];

/// The hand-over protocol this build speaks (environment variables, fd layout, readiness pipe;
/// this module). A binary whose note does not include it is refused before exec (`preflight/`).
pub const HANDOVER_VERSION: u16 = 1;
/// The oldest hand-over protocol a generation of this build can be started by.
pub const HANDOVER_MIN: u16 = 1;

/// First inherited fd, as in systemd.
pub const FDS_START: RawFd = 3;
/// More fds than this in `LISTEN_FDS` is refused as garbage (the default hard `RLIMIT_NOFILE`).
pub const MAX_FDS: usize = 1 << 20;

/// Whether `name` in `LISTEN_FDNAMES` is a socket unit's (`app.socket`): the name systemd gives
/// the fds of a `.socket` unit without `FileDescriptorName=`. It names no listener (a listener
/// name has no `.`), so such fds are matched as unnamed ones are.
pub fn is_unit_name(name: &str) -> bool {
    name.len() > ".socket".len() && name.ends_with(".socket")
}

/// The raw values of the protocol variables, taken from the environment once.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// `LISTEN_PID`
    pub listen_pid: Option<OsString>,
    /// `LISTEN_FDS`
    pub listen_fds: Option<OsString>,
    /// `LISTEN_FDNAMES`
    pub listen_fdnames: Option<OsString>,
    /// `HOTEXEC_READY_FD`
    pub ready_fd: Option<OsString>,
    /// `HOTEXEC_ACTIVATED_FDS`
    pub activated_fds: Option<OsString>,
}

/// What the variables say, once checked for form and for being meant for this process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Handover {
    /// Inherited fds in order, each with its name if one was given.
    pub fds: Vec<(RawFd, Option<String>)>,
    /// The readiness pipe, when this process is the new generation of an upgrade.
    pub ready_fd: Option<RawFd>,
    /// The fds (among `fds`) that a service manager handed over: all of them when there is no
    /// readiness pipe (a service manager started this process), else those
    /// `HOTEXEC_ACTIVATED_FDS` lists. In increasing order.
    pub from_manager: Vec<RawFd>,
}

/// Why the protocol variables were refused. Each names the variable and the value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProtocolError {
    /// The variable at fault.
    pub var: &'static str,
    /// Its value, lossily decoded.
    pub value: String,
    /// What is wrong with it.
    pub reason: String,
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "environment variable {}={:?} refused: {}",
            self.var, self.value, self.reason
        )
    }
}

impl std::error::Error for ProtocolError {}

/// The result of reading the variables.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// No protocol variable was set: a fresh start.
    Absent,
    /// Variables were set for another process (a grandchild that inherited them, or `LISTEN_PID`
    /// missing): they are ignored, and the message says why.
    NotForUs(String),
    /// Meant for this process.
    ForUs(Handover),
}

fn refuse(var: &'static str, value: &OsString, reason: impl Into<String>) -> ProtocolError {
    ProtocolError {
        var,
        value: value.to_string_lossy().into_owned(),
        reason: reason.into(),
    }
}

/// Strict decimal: digits only, no sign, no blanks (`"+3"`, `" 3"`, `"3 "` are garbage).
fn decimal(var: &'static str, value: &OsString) -> Result<u64, ProtocolError> {
    let s = value
        .to_str()
        .ok_or_else(|| refuse(var, value, "not valid UTF-8"))?;
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(refuse(var, value, "expected a decimal number"));
    }
    s.parse::<u64>()
        .map_err(|_| refuse(var, value, "number out of range"))
}

impl Snapshot {
    /// True when no protocol variable was set.
    pub fn is_empty(&self) -> bool {
        *self == Snapshot::default()
    }

    /// Checks the variables against `my_pid`. Pure, so it can be fuzzed.
    pub fn parse(&self, my_pid: u32) -> Result<Parsed, ProtocolError> {
        if self.is_empty() {
            return Ok(Parsed::Absent);
        }
        let Some(pid_value) = &self.listen_pid else {
            return Ok(Parsed::NotForUs(format!(
                "{LISTEN_PID} is not set, so the other protocol variables are not meant for this process"
            )));
        };
        let pid = decimal(LISTEN_PID, pid_value)?;
        if pid == 0 || pid > i32::MAX as u64 {
            return Err(refuse(LISTEN_PID, pid_value, "not a valid pid"));
        }
        if pid != u64::from(my_pid) {
            return Ok(Parsed::NotForUs(format!(
                "{LISTEN_PID}={pid} names another process (this is pid {my_pid}): inherited variables ignored"
            )));
        }
        let count = match &self.listen_fds {
            None => 0,
            Some(v) => {
                let n = decimal(LISTEN_FDS, v)?;
                if n > MAX_FDS as u64 {
                    return Err(refuse(
                        LISTEN_FDS,
                        v,
                        format!("more than {MAX_FDS} fds cannot have been passed"),
                    ));
                }
                n as usize
            }
        };
        let names: Vec<Option<String>> = match &self.listen_fdnames {
            None => vec![None; count],
            Some(v) => {
                let s = v
                    .to_str()
                    .ok_or_else(|| refuse(LISTEN_FDNAMES, v, "not valid UTF-8"))?;
                let parts: Vec<&str> = if s.is_empty() && count == 0 {
                    Vec::new()
                } else {
                    s.split(':').collect()
                };
                if parts.len() != count {
                    return Err(refuse(
                        LISTEN_FDNAMES,
                        v,
                        format!(
                            "{} names for {LISTEN_FDS}={count} fds: there must be exactly one name per fd",
                            parts.len()
                        ),
                    ));
                }
                // systemd names unnamed fds "unknown"; an empty name is unnamed too.
                let names: Vec<Option<String>> = parts
                    .into_iter()
                    .map(|p| (!p.is_empty() && p != "unknown").then(|| p.to_owned()))
                    .collect();
                // A name selects the socket of one `#[listen]`: given twice, which fd serves it
                // would depend on order, and the other would be closed unnoticed. A unit's name
                // is no listener's: systemd gives it to every socket of a unit whose
                // `FileDescriptorName=` is unset.
                for (i, name) in names.iter().enumerate() {
                    if let Some(n) = name.as_deref().filter(|n| !is_unit_name(n)) {
                        if let Some(j) = names[..i].iter().position(|m| m.as_deref() == Some(n)) {
                            return Err(refuse(
                                LISTEN_FDNAMES,
                                v,
                                format!(
                                    "name {n:?} is given to both fd {} and fd {}: each name must identify one socket",
                                    FDS_START + j as RawFd,
                                    FDS_START + i as RawFd
                                ),
                            ));
                        }
                    }
                }
                names
            }
        };
        let last = FDS_START as u64 + count as u64;
        let ready_fd = match &self.ready_fd {
            None => None,
            Some(v) => {
                let fd = decimal(READY_FD, v)?;
                if fd < FDS_START as u64 || fd > i32::MAX as u64 {
                    return Err(refuse(
                        READY_FD,
                        v,
                        "not a usable fd number (it must be 3 or more)",
                    ));
                }
                if fd < last {
                    return Err(refuse(
                        READY_FD,
                        v,
                        format!("fd {fd} is one of the {LISTEN_FDS} listening fds"),
                    ));
                }
                Some(fd as RawFd)
            }
        };
        let fds: Vec<(RawFd, Option<String>)> = names
            .into_iter()
            .enumerate()
            .map(|(i, name)| (FDS_START + i as RawFd, name))
            .collect();
        let from_manager = match (ready_fd, &self.activated_fds) {
            // No readiness pipe: not a hotexec upgrade, so a service manager passed them all.
            (None, _) => fds.iter().map(|(fd, _)| *fd).collect(),
            (Some(_), None) => Vec::new(),
            (Some(_), Some(v)) => {
                let s = v
                    .to_str()
                    .ok_or_else(|| refuse(ACTIVATED_FDS, v, "not valid UTF-8"))?;
                let mut listed = Vec::new();
                for part in s.split(':').filter(|p| !p.is_empty()) {
                    let n = decimal(ACTIVATED_FDS, &OsString::from(part))
                        .map_err(|e| refuse(ACTIVATED_FDS, v, e.reason))?;
                    if n < FDS_START as u64 || n >= last {
                        return Err(refuse(
                            ACTIVATED_FDS,
                            v,
                            format!("fd {n} is not one of the {LISTEN_FDS}={count} passed fds"),
                        ));
                    }
                    listed.push(n as RawFd);
                }
                listed.sort_unstable();
                let before = listed.len();
                listed.dedup();
                if listed.len() != before {
                    return Err(refuse(ACTIVATED_FDS, v, "an fd is listed twice"));
                }
                listed
            }
        };
        Ok(Parsed::ForUs(Handover {
            fds,
            ready_fd,
            from_manager,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(
        pid: Option<&str>,
        fds: Option<&str>,
        names: Option<&str>,
        ready: Option<&str>,
    ) -> Snapshot {
        Snapshot {
            listen_pid: pid.map(Into::into),
            listen_fds: fds.map(Into::into),
            listen_fdnames: names.map(Into::into),
            ready_fd: ready.map(Into::into),
            activated_fds: None,
        }
    }

    fn activated(mut s: Snapshot, v: &str) -> Snapshot {
        s.activated_fds = Some(v.into());
        s
    }

    #[test]
    fn a_well_formed_handover() {
        let p = snap(Some("42"), Some("2"), Some("http:admin"), Some("5")).parse(42);
        assert_eq!(
            p,
            Ok(Parsed::ForUs(Handover {
                fds: vec![(3, Some("http".into())), (4, Some("admin".into()))],
                ready_fd: Some(5),
                from_manager: vec![],
            }))
        );
        let unnamed = snap(Some("42"), Some("1"), None, None).parse(42);
        assert_eq!(
            unnamed,
            Ok(Parsed::ForUs(Handover {
                fds: vec![(3, None)],
                ready_fd: None,
                from_manager: vec![3],
            }))
        );
    }

    #[test]
    fn a_units_name_may_be_given_to_several_fds() {
        let p = snap(Some("42"), Some("2"), Some("app.socket:app.socket"), None).parse(42);
        assert!(
            matches!(&p, Ok(Parsed::ForUs(h)) if h.fds[1].1.as_deref() == Some("app.socket")),
            "{p:?}"
        );
    }

    #[test]
    fn provenance() {
        // A service manager's hand-over (no readiness pipe): every fd is its own, and a stray
        // HOTEXEC_ACTIVATED_FDS changes nothing.
        let direct = activated(snap(Some("42"), Some("2"), None, None), "4");
        assert!(matches!(direct.parse(42), Ok(Parsed::ForUs(h)) if h.from_manager == [3, 4]));
        // A hotexec upgrade: those listed.
        let up = activated(snap(Some("42"), Some("3"), None, Some("6")), "5:3");
        assert!(matches!(up.parse(42), Ok(Parsed::ForUs(h)) if h.from_manager == [3, 5]));
        let none = activated(snap(Some("42"), Some("1"), None, Some("4")), "");
        assert!(matches!(none.parse(42), Ok(Parsed::ForUs(h)) if h.from_manager.is_empty()));
        for bad in ["2", "4", "x", "3:3", "-3"] {
            let e = activated(snap(Some("42"), Some("1"), None, Some("4")), bad)
                .parse(42)
                .unwrap_err();
            assert_eq!(e.var, ACTIVATED_FDS, "{bad}: {e}");
        }
    }

    #[test]
    fn not_for_us() {
        assert_eq!(Snapshot::default().parse(1), Ok(Parsed::Absent));
        assert!(matches!(
            snap(Some("41"), Some("1"), None, None).parse(42),
            Ok(Parsed::NotForUs(_))
        ));
        assert!(matches!(
            snap(None, Some("1"), None, None).parse(42),
            Ok(Parsed::NotForUs(_))
        ));
    }

    #[test]
    fn garbage_is_refused_by_name() {
        for (s, var) in [
            (snap(Some("x"), Some("1"), None, None), LISTEN_PID),
            (snap(Some("-1"), Some("1"), None, None), LISTEN_PID),
            (snap(Some("0"), Some("1"), None, None), LISTEN_PID),
            (snap(Some("42"), Some("-1"), None, None), LISTEN_FDS),
            (snap(Some("42"), Some(" 1"), None, None), LISTEN_FDS),
            (
                snap(Some("42"), Some("99999999999999999999999"), None, None),
                LISTEN_FDS,
            ),
            (snap(Some("42"), Some("2000000"), None, None), LISTEN_FDS),
            (snap(Some("42"), Some("2"), Some("a"), None), LISTEN_FDNAMES),
            (
                snap(Some("42"), Some("1"), Some("a:b"), None),
                LISTEN_FDNAMES,
            ),
            (
                snap(Some("42"), Some("3"), Some("a:unknown:a"), None),
                LISTEN_FDNAMES,
            ),
            (snap(Some("42"), Some("2"), None, Some("4")), READY_FD),
            (snap(Some("42"), Some("0"), None, Some("1")), READY_FD),
            (snap(Some("42"), Some("0"), None, Some("z")), READY_FD),
        ] {
            let e = s.parse(42).unwrap_err();
            assert_eq!(e.var, var, "{s:?}: {e}");
            assert!(e.to_string().contains(var));
        }
    }
}
