//! [`UpgradeReport`]: what one upgrade did and what it cost, and [`Recorder`], which the
//! supervisor feeds as the upgrade goes through its phases.

use std::collections::BTreeMap;
use std::time::{Instant, SystemTime};

use super::wire::Record;
use crate::error::UpgradeError;
use crate::kernel::{self, ListenCounters};

/// How an upgrade ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "lowercase"))]
pub enum UpgradeResult {
    /// The new generation serves.
    #[default]
    Ok,
    /// It does not; the old generation kept serving (see [`UpgradeReport::kind`]).
    Error,
}

impl UpgradeResult {
    /// `ok` or `error`.
    pub fn as_str(self) -> &'static str {
        match self {
            UpgradeResult::Ok => "ok",
            UpgradeResult::Error => "error",
        }
    }
}

/// What asked for the upgrade.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "lowercase"))]
#[non_exhaustive]
pub enum Trigger {
    /// The upgrade signal (`kill -USR2`).
    Signal,
    /// The control socket (`hotexec upgrade`, also relayed by a keeper).
    Control,
    /// `hotexec::upgrade()` called by the app.
    Api,
    /// Said by a newer build in a way this one does not know.
    #[default]
    #[cfg_attr(feature = "serde", serde(other))]
    Unknown,
}

impl Trigger {
    /// `signal`, `control`, `api` or `unknown`.
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Signal => "signal",
            Trigger::Control => "control",
            Trigger::Api => "api",
            Trigger::Unknown => "unknown",
        }
    }

    fn parse(s: &str) -> Trigger {
        match s {
            "signal" => Trigger::Signal,
            "control" => Trigger::Control,
            "api" => Trigger::Api,
            _ => Trigger::Unknown,
        }
    }
}

/// How the old generation's connections ended, once it is done: the part of the evidence
/// that only the old generation knows, sent to the new one when it exits.
#[derive(Clone, Debug, PartialEq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub struct DrainSummary {
    /// Connections that finished on the old generation after the hand-over (served to the
    /// end, or closed at a request boundary). `None` where the application does not serve
    /// through hotexec's drain (`hotexec::serve`, `hotexec::drain::Connections`), which counts.
    pub drained: Option<u64>,
    /// Connections handed to the new generation (`Shutdown::handoff`) and taken by it.
    pub handed_off: Option<u64>,
    /// Connections offered to the new generation that it gave back (the old one served them);
    /// `None`: not counted.
    pub returned: Option<u64>,
    /// Connections still open when the old generation ended (its `main` returned, or
    /// `drain_timeout` cut them): the one number that says something was lost. `None` where
    /// not counted, as `drained`.
    pub cut: Option<u64>,
    /// From the upgrade's trigger until the old generation was done, in milliseconds.
    pub ms_to_done: Option<f64>,
}

impl DrainSummary {
    pub(crate) fn to_record(&self) -> Record {
        let mut o = Record::new();
        o.put("done", 1);
        o.put_opt("drained", self.drained);
        o.put_opt("handed_off", self.handed_off);
        o.put_opt("returned", self.returned);
        o.put_opt("cut", self.cut);
        o.put_opt("ms_to_done", self.ms_to_done);
        o
    }

    /// `None` unless the record says the old generation is done.
    pub(crate) fn from_record(o: &Record) -> Option<DrainSummary> {
        o.get("done")?;
        Some(DrainSummary {
            drained: o.parse("drained"),
            handed_off: o.parse("handed_off"),
            returned: o.parse("returned"),
            cut: o.parse("cut"),
            ms_to_done: o.parse("ms_to_done"),
        })
    }
}

/// A failed upgrade, as [`hotexec::upgrade()`](crate::upgrade) returns it: why it failed
/// (typed), and its evidence (the same report `hotexec upgrade --json` prints, `result`
/// `error`). The running generation keeps serving.
#[derive(Clone, Debug)]
pub struct UpgradeFailed {
    /// Why.
    pub error: UpgradeError,
    /// What the upgrade did until it failed (boxed: a report is a few hundred bytes, and an
    /// `Err` travels by value).
    pub report: Box<UpgradeReport>,
}

impl std::fmt::Display for UpgradeFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

impl std::error::Error for UpgradeFailed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

/// The evidence of one upgrade: the outcome, how long each phase took, what the kernel dropped
/// meanwhile, what the health verdict decided on, and how the old generation's connections
/// ended.
///
/// `hotexec upgrade --json` prints it (one JSON object, with the field names below), the
/// control socket carries it, and the `upgrade` span logs it when the upgrade ends. Times are
/// milliseconds since the trigger (the signal read, the request received); a time that does
/// not apply or was not measured is `None` (`null`), never `0`.
#[derive(Clone, Debug, PartialEq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub struct UpgradeReport {
    /// `ok` or `error`.
    pub result: UpgradeResult,
    /// On error, its class: the `kind` of the control socket's `error` reply (`exec`,
    /// `exited`, `ready-timeout`, `busy`, …; see `hotexec::control`).
    pub kind: Option<String>,
    /// On error, why, for humans.
    pub reason: Option<String>,
    /// What asked for the upgrade.
    pub trigger: Trigger,
    /// The generation that was serving when the upgrade started.
    pub old_pid: u32,
    /// The new generation, once started (also on some errors: the process that failed).
    pub new_pid: Option<u32>,
    /// The new generation's number (1 after a fresh start, +1 per upgrade).
    pub generation: Option<u64>,
    /// When the upgrade was triggered, milliseconds since the Unix epoch.
    pub started_at_ms: u64,
    /// Trigger → the new process exists (fork/clone returned).
    pub ms_to_spawn: Option<f64>,
    /// Trigger → the new binary runs (`execve` succeeded).
    pub ms_to_exec: Option<f64>,
    /// Trigger → the new generation reported ready (and the old one was told to stop
    /// accepting).
    pub ms_to_ready: Option<f64>,
    /// Trigger → the health verdict (`None` without a health gate).
    pub ms_to_verdict: Option<f64>,
    /// Trigger → the old generation's last accepted connection.
    pub ms_to_last_accept: Option<f64>,
    /// `TcpExtListenOverflows` counted during the upgrade: handshakes that found a full accept
    /// queue. The counter is the kernel's for the whole **network namespace** of the server,
    /// so other servers of the same namespace count too; `None` if `/proc/net/netstat` could
    /// not be read.
    pub listen_overflows: Option<u64>,
    /// `TcpExtListenDrops` counted during the upgrade (overflows included), per network
    /// namespace as above.
    pub listen_drops: Option<u64>,
    /// The numbers the health verdict decided on (error rate, requests seen, …); empty where
    /// there was no verdict.
    pub health: BTreeMap<String, f64>,
    /// The health gate's verdict on the new generation: `pending` while it is on probation
    /// (`result` is then the hand-over's), `committed` or `unhealthy` once judged; `None` where
    /// no health gate judged the upgrade (it failed before, or the gate is off).
    pub verdict: Option<String>,
    /// How the old generation's connections ended; `None` until it is done.
    pub old_generation: Option<DrainSummary>,
}

impl UpgradeReport {
    /// Whether the new generation serves.
    pub fn is_ok(&self) -> bool {
        self.result == UpgradeResult::Ok
    }

    /// The record sent on the control socket.
    pub(crate) fn to_record(&self) -> Record {
        self.record(true)
    }

    /// `full`: with the reason and the start time (for machines), else the short form of
    /// [`UpgradeReport::summary`].
    fn record(&self, full: bool) -> Record {
        let mut r = Record::new();
        r.put("result", self.result.as_str());
        r.put_opt("kind", self.kind.as_ref());
        if full {
            r.put_opt("reason", self.reason.as_ref());
        }
        r.put("trigger", self.trigger.as_str());
        r.put("old_pid", self.old_pid);
        r.put_opt("new_pid", self.new_pid);
        r.put_opt("generation", self.generation);
        if full {
            r.put("started_at_ms", self.started_at_ms);
        }
        r.put_opt("ms_to_spawn", self.ms_to_spawn);
        r.put_opt("ms_to_exec", self.ms_to_exec);
        r.put_opt("ms_to_ready", self.ms_to_ready);
        r.put_opt("ms_to_verdict", self.ms_to_verdict);
        r.put_opt("ms_to_last_accept", self.ms_to_last_accept);
        r.put_opt("listen_overflows", self.listen_overflows);
        r.put_opt("listen_drops", self.listen_drops);
        let mut health = Record::new();
        for (k, v) in &self.health {
            health.put(k.clone(), v);
        }
        r.put_sub("health", health);
        r.put_opt("verdict", self.verdict.as_ref());
        if let Some(d) = &self.old_generation {
            r.put_sub("old_generation", d.to_record());
        }
        r
    }

    /// The report in a record; `None` without a `result` (not a report at all). Fields this
    /// build does not know are skipped, fields it cannot read are missing.
    pub(crate) fn from_record(r: &Record) -> Option<UpgradeReport> {
        let result = match r.get("result")? {
            "ok" => UpgradeResult::Ok,
            _ => UpgradeResult::Error,
        };
        let old_generation = DrainSummary::from_record(&r.sub("old_generation"));
        Some(UpgradeReport {
            result,
            kind: r.get("kind").map(str::to_owned),
            reason: r.get("reason").map(str::to_owned),
            trigger: r.get("trigger").map_or(Trigger::Unknown, Trigger::parse),
            old_pid: r.parse("old_pid").unwrap_or(0),
            new_pid: r.parse("new_pid"),
            generation: r.parse("generation"),
            started_at_ms: r.parse("started_at_ms").unwrap_or(0),
            ms_to_spawn: r.parse("ms_to_spawn"),
            ms_to_exec: r.parse("ms_to_exec"),
            ms_to_ready: r.parse("ms_to_ready"),
            ms_to_verdict: r.parse("ms_to_verdict"),
            ms_to_last_accept: r.parse("ms_to_last_accept"),
            listen_overflows: r.parse("listen_overflows"),
            listen_drops: r.parse("listen_drops"),
            health: r.sub("health").numbers(),
            verdict: r.get("verdict").map(str::to_owned),
            old_generation,
        })
    }

    /// One line for logs and the text output of `hotexec upgrade`: the outcome, the phase
    /// times and the drops, e.g. `ok old_pid=1 new_pid=2 ms_to_ready=3.1 listen_drops=0`.
    pub fn summary(&self) -> String {
        self.record(false).encode()
    }
}

/// The kind of the control socket's `error` reply for `e` (`hotexec::control`'s module docs
/// list them).
pub(crate) fn kind_of(e: &UpgradeError) -> &'static str {
    match e {
        UpgradeError::Busy(_) => "busy",
        UpgradeError::Spawn(_) => "spawn",
        UpgradeError::Limit(_) => "limit",
        UpgradeError::Exec { .. } => "exec",
        UpgradeError::ExitedBeforeReady { .. } => "exited",
        UpgradeError::ReadyTimeout { .. } => "ready-timeout",
        UpgradeError::Aborted => "aborted",
        UpgradeError::NotRunning => "not-running",
        UpgradeError::Refused(p) => p.kind(),
        UpgradeError::Unhealthy { .. } => "unhealthy",
    }
}

/// Collects an upgrade's evidence as it happens. The supervisor starts one at the trigger,
/// marks each phase when it is entered, and finishes it with the outcome; the report is then
/// announced (control reply, log, status, metrics).
///
/// Reading the kernel's counters costs one read of `/proc/net/netstat` (tens of µs) at the
/// start and one at the end, outside the critical path between spawn and ready.
#[derive(Debug)]
pub(crate) struct Recorder {
    started: Instant,
    counters: Option<ListenCounters>,
    report: UpgradeReport,
}

impl Recorder {
    /// The upgrade starts now: `trigger` asked for it, `old_pid` serves.
    pub(crate) fn start(trigger: Trigger, old_pid: u32) -> Recorder {
        Recorder::start_at(Instant::now(), trigger, old_pid)
    }

    /// As [`Recorder::start`], for a trigger seen at `at` (e.g. when the request arrived).
    pub(crate) fn start_at(at: Instant, trigger: Trigger, old_pid: u32) -> Recorder {
        let wall = SystemTime::now()
            .checked_sub(at.elapsed())
            .unwrap_or_else(SystemTime::now);
        Recorder {
            started: at,
            counters: kernel::listen_counters()
                .inspect_err(|e| tracing::debug!("no listen counters: {e}"))
                .ok(),
            report: UpgradeReport {
                trigger,
                old_pid,
                started_at_ms: super::unix_ms(wall),
                ..UpgradeReport::default()
            },
        }
    }

    /// Milliseconds from the trigger to `at`, to the microsecond.
    fn ms_at(&self, at: Instant) -> Option<f64> {
        let us = at.checked_duration_since(self.started)?.as_micros();
        Some(us as f64 / 1e3)
    }

    /// The new process exists.
    pub(crate) fn spawned(&mut self, new_pid: u32, at: Instant) {
        self.report.new_pid = Some(new_pid);
        self.report.ms_to_spawn = self.ms_at(at);
    }

    /// The new binary runs (its `execve` returned).
    pub(crate) fn executed(&mut self, at: Instant) {
        self.report.ms_to_exec = self.ms_at(at);
    }

    /// The new generation reported ready.
    pub(crate) fn ready(&mut self, at: Instant) {
        self.report.ms_to_ready = self.ms_at(at);
    }

    /// The new generation's number.
    pub(crate) fn generation(&mut self, generation: u64) {
        self.report.generation = Some(generation);
    }

    /// The old generation accepted its last connection.
    #[cfg(test)]
    pub(crate) fn last_accept(&mut self, at: Instant) {
        self.report.ms_to_last_accept = self.ms_at(at);
    }

    /// The upgrade is over: the report, with the kernel's drops counted since the start.
    pub(crate) fn finish(mut self, outcome: Result<u32, &UpgradeError>) -> UpgradeReport {
        match outcome {
            Ok(new_pid) => {
                self.report.result = UpgradeResult::Ok;
                self.report.new_pid = Some(new_pid);
            }
            Err(e) => {
                self.report.result = UpgradeResult::Error;
                self.report.kind = Some(kind_of(e).to_owned());
                self.report.reason = Some(e.to_string());
                match e {
                    UpgradeError::ExitedBeforeReady { pid, .. }
                    | UpgradeError::ReadyTimeout { pid, .. } => self.report.new_pid = Some(*pid),
                    _ => {}
                }
            }
        }
        let delta = self
            .counters
            .zip(kernel::listen_counters().ok())
            .and_then(|(before, after)| before.delta(after));
        self.report.listen_overflows = delta.map(|d| d.overflows);
        self.report.listen_drops = delta.map(|d| d.drops);
        self.report
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn full() -> UpgradeReport {
        let mut health = BTreeMap::new();
        health.insert("error_rate".to_owned(), 0.0);
        health.insert("requests".to_owned(), 1234.0);
        UpgradeReport {
            result: UpgradeResult::Ok,
            kind: None,
            reason: None,
            trigger: Trigger::Control,
            old_pid: 10,
            new_pid: Some(11),
            generation: Some(2),
            started_at_ms: 1_700_000_000_000,
            ms_to_spawn: Some(0.25),
            ms_to_exec: Some(0.75),
            ms_to_ready: Some(3.5),
            ms_to_verdict: Some(2003.5),
            ms_to_last_accept: Some(3.75),
            listen_overflows: Some(0),
            listen_drops: Some(0),
            health,
            verdict: Some("committed".into()),
            old_generation: Some(DrainSummary {
                drained: Some(7),
                handed_off: Some(3),
                returned: None,
                cut: Some(0),
                ms_to_done: Some(510.0),
            }),
        }
    }

    #[test]
    fn reports_round_trip_through_the_wire() {
        let ok = full();
        let back = UpgradeReport::from_record(&Record::decode(&ok.to_record().encode()));
        assert_eq!(back.as_ref(), Some(&ok));
        let err = Recorder::start(Trigger::Signal, 10).finish(Err(&UpgradeError::Exec {
            path: "/srv/my app".into(),
            errno: libc::ENOENT,
        }));
        assert_eq!(err.result, UpgradeResult::Error);
        assert_eq!(err.kind.as_deref(), Some("exec"));
        assert_eq!(err.health, BTreeMap::new());
        let back = UpgradeReport::from_record(&Record::decode(&err.to_record().encode()));
        assert_eq!(back, Some(err));
        // Not a report, and a report from a newer build with fields this one does not know.
        assert_eq!(UpgradeReport::from_record(&Record::decode("pid=3")), None);
        let newer = format!("{} shiny=1 trigger=carrier-pigeon", ok.to_record().encode());
        let back = UpgradeReport::from_record(&Record::decode(&newer)).unwrap();
        assert_eq!(back.trigger, Trigger::Unknown);
        assert_eq!(back.ms_to_ready, Some(3.5));
    }

    #[test]
    fn the_recorder_measures_from_the_trigger() {
        let t0 = Instant::now();
        let mut rec = Recorder::start_at(t0, Trigger::Api, 1);
        rec.spawned(2, t0 + Duration::from_micros(500));
        rec.executed(t0 + Duration::from_millis(1));
        rec.ready(t0 + Duration::from_millis(3));
        rec.generation(2);
        // A time before the trigger is not a negative duration: it is unknown.
        rec.last_accept(t0 - Duration::from_millis(1));
        let r = rec.finish(Ok(2));
        assert!(r.is_ok());
        assert_eq!(r.ms_to_spawn, Some(0.5));
        assert_eq!(r.ms_to_exec, Some(1.0));
        assert_eq!(r.ms_to_ready, Some(3.0));
        assert_eq!(r.ms_to_last_accept, None);
        assert_eq!(r.generation, Some(2));
        // The namespace's counters were read at both ends (deltas, not totals).
        assert!(r.listen_drops.is_some() && r.listen_overflows.is_some());
        let now_ms = crate::evidence::unix_ms(SystemTime::now());
        assert!(now_ms.abs_diff(r.started_at_ms) < 60_000, "{r:?}");
        let s = r.summary();
        assert!(
            s.starts_with("result=ok trigger=api old_pid=1 new_pid=2"),
            "{s}"
        );
        let failed = Recorder::start(Trigger::Signal, 1).finish(Err(&UpgradeError::ReadyTimeout {
            pid: 9,
            timeout: Duration::from_secs(1),
        }));
        assert_eq!(failed.new_pid, Some(9));
        assert!(!failed.summary().contains("reason="));
    }

    #[cfg(feature = "serde")]
    #[test]
    fn json_has_the_field_names_of_the_wire() {
        let v = serde_json::to_value(full()).unwrap();
        let wire = full().to_record();
        for key in [
            "result",
            "trigger",
            "old_pid",
            "new_pid",
            "ms_to_ready",
            "ms_to_spawn",
            "listen_overflows",
            "listen_drops",
        ] {
            assert!(v.get(key).is_some(), "{key} missing in {v}");
            assert!(wire.get(key).is_some(), "{key} missing on the wire");
        }
        assert_eq!(v["result"], "ok");
        assert_eq!(v["trigger"], "control");
        assert_eq!(v["health"]["requests"], 1234.0);
        assert_eq!(v["old_generation"]["handed_off"], 3);
        let back: UpgradeReport = serde_json::from_value(v).unwrap();
        assert_eq!(back, full());
        let none = serde_json::to_value(UpgradeReport::default()).unwrap();
        assert_eq!(none["health"], serde_json::json!({}));
        assert!(none["ms_to_ready"].is_null());
    }
}
