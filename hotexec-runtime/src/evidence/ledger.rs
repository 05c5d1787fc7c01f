//! This generation's evidence: the upgrade being recorded, the last report, the listeners as
//! `status` names them, and hotexec's metrics. Held by the announcer (`announce.rs`), which
//! tells it what the supervisor decided; read by the control socket's handler.

use std::os::fd::BorrowedFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use super::metrics::Metrics;
use super::status::{DrainingGeneration, ListenerId, StatusInput, gather};
use super::wire::Record;
use super::{Recorder, Status, Trigger, UpgradeReport};
use crate::error::UpgradeError;
use crate::generation::Generation;
use crate::link;

/// The link record kind of an upgrade's report, sent by the old generation to the new one once
/// it has handed over (what the new one's `status` shows as its `last_upgrade`).
pub(crate) const LINK_REPORT: u16 = link::FIRST_OTHER + 8;
/// The link record kind of the old generation's drain summary, sent when it is done.
pub(crate) const LINK_DRAINED: u16 = link::FIRST_OTHER + 9;
/// The link record kind of the old generation's drain progress (connections still open),
/// sent while it drains, for the new generation's `status`.
pub(crate) const LINK_PROGRESS: u16 = link::FIRST_OTHER + 10;
/// The link record kind of the health verdict on the new generation (the report with its
/// verdict, numbers and time to it), for the new generation's `status`.
pub(crate) const LINK_VERDICT: u16 = link::FIRST_OTHER + 11;
/// How often the draining generation says how many connections it still has.
pub(crate) const PROGRESS_INTERVAL: Duration = Duration::from_millis(500);
/// The key hotexec's metric totals are carried under (`Shutdown::carry`'s mechanism).
const METRICS_KEY: &str = "hotexec.metrics";

fn now_ms() -> u64 {
    super::unix_ms(SystemTime::now())
}

/// What the supervisor calls the trigger, as the report says it.
pub(crate) fn trigger_of(t: crate::supervisor::event::Trigger) -> Trigger {
    match t {
        crate::supervisor::event::Trigger::Signal => Trigger::Signal,
        crate::supervisor::event::Trigger::Api => Trigger::Api,
        crate::supervisor::event::Trigger::Control => Trigger::Control,
    }
}

#[derive(Default)]
struct State {
    recorder: Option<Recorder>,
    last: Option<UpgradeReport>,
    listeners: Vec<ListenerId>,
    drain_timeout: Option<Duration>,
    /// The previous generation, while it drains (from its report), and when it exits at the
    /// latest.
    draining: Option<DrainingGeneration>,
    /// Our end of the link to the generation this one handed over to (a duplicate), for the
    /// drain progress, the verdict and the drain summary.
    successor_link: Option<std::os::fd::OwnedFd>,
    /// The drain summary went: nothing more about the drain is said.
    drain_told: bool,
}

/// This generation's evidence.
pub(crate) struct Ledger {
    exe: PathBuf,
    generation: Arc<Generation>,
    metrics: Arc<Metrics>,
    state: Mutex<State>,
}

impl Ledger {
    /// Takes over the metric totals the previous generation carried and registers this one's
    /// to be carried to the next.
    pub(crate) fn new(generation: Arc<Generation>, exe: PathBuf) -> Ledger {
        let metrics = Arc::new(Metrics::new());
        if let Some(carried) = generation.take_inherited(METRICS_KEY) {
            metrics.import(&carried);
        }
        metrics.generation(generation.number());
        if cfg!(feature = "metrics") {
            let m = metrics.clone();
            generation.carry(METRICS_KEY, Box::new(move || m.export()));
        }
        Ledger {
            exe,
            generation,
            metrics,
            state: Mutex::new(State::default()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The listeners `status` names, and the drain timeout an old generation announces.
    pub(crate) fn serving(&self, listeners: &[(&str, BorrowedFd<'_>)], drain_timeout: Duration) {
        let mut st = self.state();
        st.listeners = listeners
            .iter()
            .map(|(name, fd)| ListenerId::of(name, *fd))
            .collect();
        st.drain_timeout = Some(drain_timeout);
    }

    /// An upgrade starts (the announcer's `UpgradeStarted`).
    pub(crate) fn started(&self, trigger: Trigger) {
        self.state().recorder = Some(Recorder::start(trigger, std::process::id()));
    }

    /// The new binary runs: its `execve` returned.
    pub(crate) fn executed(&self) {
        if let Some(r) = &mut self.state().recorder {
            r.executed(Instant::now());
        }
    }

    /// The new process exists.
    pub(crate) fn spawned(&self, pid: u32) {
        if let Some(r) = &mut self.state().recorder {
            r.spawned(pid, Instant::now());
        }
    }

    /// The upgrade ended: the report, logged (in the `upgrade` span, where the announcer
    /// calls this), counted and kept.
    pub(crate) fn finished(&self, outcome: Result<u32, &UpgradeError>) -> Option<UpgradeReport> {
        self.finish(outcome, true)
    }

    /// `new_pid` serves: the upgrade's report is made now; when a health verdict follows
    /// (`judged`), it is counted in the metrics with the verdict's outcome, not as ok now.
    pub(crate) fn handed_over(&self, new_pid: u32, judged: bool) {
        self.finish(Ok(new_pid), !judged);
        if judged {
            if let Some(last) = &mut self.state().last {
                last.verdict = Some("pending".into());
            }
        }
    }

    fn finish(&self, outcome: Result<u32, &UpgradeError>, count: bool) -> Option<UpgradeReport> {
        let mut st = self.state();
        let mut rec = st.recorder.take()?;
        if outcome.is_ok() {
            rec.ready(Instant::now());
            rec.generation(self.generation.number() + 1);
        }
        let report = rec.finish(outcome);
        tracing::info!(report = %report.summary(), "upgrade report");
        if count {
            self.metrics.upgrade(&report);
        }
        st.last = Some(report.clone());
        Some(report)
    }

    /// The health verdict on `new_pid` came (issue 18): the last report, if it is that
    /// upgrade's, gets the numbers and the time to the verdict, and, when it was not committed,
    /// the outcome `unhealthy`.
    pub(crate) fn verdict(
        &self,
        new_pid: u32,
        error: Option<&str>,
        figures: &[(&'static str, f64)],
    ) {
        let mut st = self.state();
        let Some(last) = st.last.as_mut().filter(|r| r.new_pid == Some(new_pid)) else {
            return;
        };
        last.ms_to_verdict = Some(now_ms().saturating_sub(last.started_at_ms) as f64);
        last.health = figures.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect();
        last.verdict = Some(
            if error.is_some() {
                "unhealthy"
            } else {
                "committed"
            }
            .into(),
        );
        if let Some(reason) = error {
            last.result = super::UpgradeResult::Error;
            last.kind = Some("unhealthy".into());
            last.reason = Some(reason.to_owned());
        }
        // A judged upgrade is counted now, with its outcome (see `handed_over`).
        self.metrics.verdict(error.is_none());
        self.metrics.upgrade(last);
        // The new generation answers `status` from now on: it gets the verdict too.
        let record = link::Record::Other {
            kind: LINK_VERDICT,
            bytes: last.to_record().encode().into_bytes(),
        };
        if let Some(link) = &st.successor_link {
            if let Err(e) = link::send(std::os::fd::AsFd::as_fd(link), &record) {
                tracing::debug!("verdict not sent to the new generation's status: {e}");
            }
        }
    }

    /// The last upgrade's report (this generation's, or the one that started it).
    pub(crate) fn last(&self) -> Option<UpgradeReport> {
        self.state().last.clone()
    }

    /// The record the new generation gets over the link once this one has handed over: the
    /// report, and when this generation exits at the latest. `counted`: the report is already
    /// in the metric totals the new generation was started with (a rollback's: the verdict
    /// counted it before the rollback was spawned), so it must not count it again.
    pub(crate) fn link_record(&self, report: &UpgradeReport, counted: bool) -> link::Record {
        let mut r = report.to_record();
        if counted {
            r.put("counted", 1);
        }
        if let Some(d) = self.state().drain_timeout {
            r.put("drain_deadline_ms", now_ms() + d.as_millis() as u64);
        }
        link::Record::Other {
            kind: LINK_REPORT,
            bytes: r.encode().into_bytes(),
        }
    }

    /// Keeps a duplicate of the link to the generation this one handed over to.
    pub(crate) fn handed_over_on(&self, link: BorrowedFd<'_>) {
        match link.try_clone_to_owned() {
            Ok(l) => self.state().successor_link = Some(l),
            Err(e) => tracing::warn!("no drain summary for the new generation: dup: {e}"),
        }
    }

    /// This generation, which handed over, is done (its `main` returned, or `drain_timeout`
    /// is cutting what is left): its drain summary goes to the new generation. Once.
    /// While this generation drains after handing over: tells the new generation how many
    /// connections are still open (its `status` shows them). False once there is nothing
    /// more to tell: the drain summary went, or this generation counts nothing.
    pub(crate) fn drain_progress(&self) -> bool {
        let st = self.state();
        let Some(link) = st.successor_link.as_ref().filter(|_| !st.drain_told) else {
            return false;
        };
        let Some((_, open)) = self.generation.drain_count.now() else {
            return false;
        };
        let mut r = Record::new();
        r.put("connections", open);
        let record = link::Record::Other {
            kind: LINK_PROGRESS,
            bytes: r.encode().into_bytes(),
        };
        link::send(std::os::fd::AsFd::as_fd(link), &record).is_ok()
    }

    pub(crate) fn drain_done(&self) {
        // Under the lock: sent once, on our end of the link, which stays for the verdict (it
        // may come after the drain); sending never blocks (`link::send` is non-blocking).
        let mut st = self.state();
        if st.drain_told {
            return;
        }
        st.drain_told = true;
        let started = st.last.as_ref().map(|r| r.started_at_ms);
        let Some(link) = &st.successor_link else {
            return;
        };
        let counted = self.generation.drain_count.now();
        let summary = super::DrainSummary {
            drained: counted.map(|c| c.0),
            handed_off: Some(self.generation.handoff.handed_off()),
            returned: Some(self.generation.handoff.returned()),
            cut: counted.map(|c| c.1),
            ms_to_done: started.map(|s| now_ms().saturating_sub(s) as f64),
        };
        let mut r = summary.to_record();
        tracing::info!(summary = %r.encode(), "drain summary");
        self.metrics.drained(&summary);
        // The old generation's last accept, after the trigger (the report's
        // `ms_to_last_accept`); only this generation knows it.
        let last_accept = self.generation.drain_count.last_accept_ms();
        if let (Some(t), Some(s)) = (last_accept, started) {
            if t >= s {
                r.put("ms_to_last_accept", (t - s) as f64);
            }
        }
        let record = link::Record::Other {
            kind: LINK_DRAINED,
            bytes: r.encode().into_bytes(),
        };
        if let Err(e) = link::send(std::os::fd::AsFd::as_fd(link), &record) {
            tracing::debug!("drain summary not sent: {e}");
        }
    }

    /// A record of kind `kind` from the previous generation; `true` if it was evidence.
    pub(crate) fn received(&self, kind: u16, bytes: &[u8]) -> bool {
        if ![LINK_REPORT, LINK_DRAINED, LINK_PROGRESS, LINK_VERDICT].contains(&kind) {
            return false;
        }
        let Some(record) = std::str::from_utf8(bytes).ok().map(Record::decode) else {
            tracing::warn!("generation link: evidence that is not UTF-8, skipped");
            return true;
        };
        if kind == LINK_PROGRESS {
            match record.parse::<u64>("connections") {
                Some(n) => {
                    if let Some(d) = &mut self.state().draining {
                        d.connections = Some(n);
                    }
                    self.metrics.draining_connections(n);
                }
                None => tracing::warn!("generation link: a malformed drain progress, skipped"),
            }
            return true;
        }
        if kind == LINK_DRAINED {
            let Some(summary) = super::DrainSummary::from_record(&record) else {
                tracing::warn!("generation link: a malformed drain summary, skipped");
                return true;
            };
            tracing::info!(summary = %summary.to_record().encode(), "the previous generation is done");
            self.metrics.drained(&summary);
            self.metrics.draining_connections(0);
            let mut st = self.state();
            st.draining = None;
            if let Some(last) = &mut st.last {
                last.old_generation = Some(summary);
                last.ms_to_last_accept = record.parse("ms_to_last_accept");
            }
            return true;
        }
        let Some(report) = UpgradeReport::from_record(&record) else {
            tracing::warn!("generation link: a malformed report, skipped");
            return true;
        };
        if kind == LINK_VERDICT {
            // The verdict on the upgrade that started this generation: its outcome, numbers
            // and time (counted in the metrics by the generation that judged).
            let mut st = self.state();
            match st.last.as_mut().filter(|l| l.new_pid == report.new_pid) {
                Some(last) => {
                    last.result = report.result;
                    last.kind = report.kind;
                    last.reason = report.reason;
                    last.ms_to_verdict = report.ms_to_verdict;
                    last.health = report.health;
                    last.verdict = report.verdict;
                }
                None => tracing::warn!("generation link: a verdict on another upgrade, skipped"),
            }
            return true;
        }
        // The upgrade that started this generation: counted here, where the exporter is
        // scraped from now on (the old generation's totals were carried before it ended),
        // unless those totals have it already (a rollback's report).
        if record.parse::<u8>("counted") != Some(1) {
            self.metrics.upgrade(&report);
        }
        let mut st = self.state();
        st.draining = Some(DrainingGeneration {
            pid: report.old_pid,
            connections: None,
            deadline_ms: record.parse("drain_deadline_ms"),
        });
        st.last = Some(report);
        true
    }

    /// What serves now.
    pub(crate) fn status(&self) -> Status {
        let st = self.state();
        let parent_alive = st
            .draining
            .as_ref()
            .is_some_and(|d| std::path::Path::new(&format!("/proc/{}", d.pid)).exists())
            && self.parent_link_open();
        gather(StatusInput {
            generation: Some(self.generation.number()),
            exe: &self.exe,
            listeners: &st.listeners,
            last_upgrade: st.last.clone(),
            draining: st
                .draining
                .iter()
                .filter(|_| parent_alive)
                .cloned()
                .collect(),
        })
    }

    /// Whether the previous generation still holds its end of the link (it does until it
    /// exits).
    fn parent_link_open(&self) -> bool {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        use std::os::fd::AsFd;
        let Some(l) = &self.generation.parent_link else {
            return false;
        };
        let mut fds = [PollFd::new(l.as_fd(), PollFlags::empty())];
        match poll(&mut fds, PollTimeout::ZERO) {
            Ok(_) => !fds[0]
                .revents()
                .is_some_and(|r| r.intersects(PollFlags::POLLHUP | PollFlags::POLLERR)),
            Err(_) => false,
        }
    }

    /// The totals, published again (an exporter installed after start gets them at once).
    pub(crate) fn publish_metrics(&self) {
        self.metrics.publish_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ledger() -> Ledger {
        Ledger::new(Arc::new(Generation::detached()), PathBuf::from("/srv/app"))
    }

    /// What the previous generation sends over the link may be garbage (a broken or hostile
    /// build): it is skipped, never taken as evidence, and other modules' kinds are left alone.
    #[test]
    fn garbage_from_the_previous_generation_is_skipped() {
        let l = ledger();
        assert!(
            !l.received(link::FIRST_OTHER, b"result=ok old_pid=1"),
            "not ours"
        );
        for junk in [&b"\xff\xfe"[..], b"", b"hello", b"old_pid=7 new_pid=8"] {
            assert!(l.received(LINK_REPORT, junk));
            assert!(l.received(LINK_DRAINED, junk));
        }
        assert_eq!(l.last(), None);
        assert!(l.status().draining.is_empty());
    }

    /// The report, then the drain summary: the status shows the upgrade that started this
    /// generation, the old one draining with its deadline, then done.
    #[test]
    fn a_health_verdict_goes_into_the_last_report() {
        let l = ledger();
        l.started(Trigger::Signal);
        l.spawned(42);
        assert!(l.finished(Ok(42)).unwrap().is_ok());
        // Another upgrade's verdict changes nothing.
        l.verdict(41, Some("bad"), &[("requests", 1.0)]);
        assert!(l.last().unwrap().health.is_empty());
        l.verdict(
            42,
            Some("5.0% of its requests got a bad answer"),
            &[("requests", 300.0)],
        );
        let last = l.last().unwrap();
        assert!(!last.is_ok());
        assert_eq!(last.kind.as_deref(), Some("unhealthy"));
        assert_eq!(last.health["requests"], 300.0);
        assert!(last.ms_to_verdict.is_some());
    }

    #[test]
    fn the_report_then_the_summary() {
        let l = ledger();
        let report = UpgradeReport {
            old_pid: std::process::id(),
            new_pid: Some(2),
            ..UpgradeReport::default()
        };
        let link::Record::Other { kind, bytes } = l.link_record(&report, false) else {
            panic!("not a module record");
        };
        assert_eq!(kind, LINK_REPORT);
        assert!(l.received(kind, &bytes));
        assert_eq!(l.last().map(|r| r.new_pid), Some(Some(2)));
        let summary = crate::evidence::DrainSummary {
            drained: Some(5),
            cut: Some(0),
            ..Default::default()
        };
        assert!(l.received(LINK_DRAINED, summary.to_record().encode().as_bytes()));
        let last = l.last().unwrap();
        assert_eq!(last.old_generation, Some(summary));
        assert!(l.status().draining.is_empty());
        assert_eq!(l.status().generation, Some(1));
    }

    /// A judged upgrade is counted in the metrics with its verdict: an unhealthy build is an
    /// upgrade that failed, never an ok one (it was counted ok at the hand-over before).
    #[cfg(feature = "metrics")]
    #[test]
    fn a_judged_upgrade_is_counted_with_its_verdict() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let page = recorder.handle();
        let l = ledger();
        metrics::with_local_recorder(&recorder, || {
            l.started(Trigger::Signal);
            l.spawned(42);
            l.handed_over(42, true);
            l.verdict(42, Some("5.0% of its requests got a bad answer"), &[]);
            l.started(Trigger::Signal);
            l.spawned(43);
            l.handed_over(43, true);
            l.verdict(43, None, &[]);
        });
        let text = page.render();
        let count = |series: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(series)?.trim().parse::<f64>().ok())
        };
        assert_eq!(
            count("hotexec_upgrades_total{result=\"error\"}"),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            count("hotexec_upgrades_total{result=\"ok\"}"),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            count("hotexec_health_verdicts_total{verdict=\"unhealthy\"}"),
            Some(1.0),
            "{text}"
        );
    }

    /// The report a requester gets: the supervisor's own when an upgrade ran, one made from
    /// the refusal when none started (busy), with the requester's trigger.
    #[test]
    fn the_report_a_requester_gets() {
        let l = ledger();
        l.started(Trigger::Control);
        l.spawned(42);
        let made = l.finished(Ok(42)).unwrap();
        assert_eq!(made.trigger, Trigger::Control);
        let ran = super::super::report_of(
            &(Ok(42), Some(made.clone())),
            crate::supervisor::Trigger::Control,
        );
        assert_eq!(ran, made);
        let busy = super::super::report_of(
            &(
                Err(UpgradeError::Busy("an upgrade is already running")),
                None,
            ),
            crate::supervisor::Trigger::Api,
        );
        assert_eq!(busy.kind.as_deref(), Some("busy"));
        assert_eq!(busy.trigger, Trigger::Api);
        assert_eq!(busy.ms_to_spawn, None);
    }
}
