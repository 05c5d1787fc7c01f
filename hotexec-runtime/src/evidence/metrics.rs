//! hotexec's own metrics, through the [`metrics`](https://docs.rs/metrics) facade into the
//! exporter the app installed (feature `metrics`; without it every method here is empty and
//! inlined away).
//!
//! | name | type | labels | what |
//! |---|---|---|---|
//! | `hotexec_upgrades_total` | counter | `result` = `ok` / `error` | upgrades, by outcome |
//! | `hotexec_upgrade_duration_seconds` | gauge | — | the last successful upgrade, trigger → new generation ready |
//! | `hotexec_generation` | gauge | — | the serving generation's number (1 after a fresh start, +1 per upgrade) |
//! | `hotexec_draining_connections` | gauge | — | connections older generations still drain |
//! | `hotexec_handed_off_connections_total` | counter | — | connections handed to a new generation |
//! | `hotexec_cut_connections_total` | counter | — | connections cut at `drain_timeout` |
//! | `hotexec_health_verdicts_total` | counter | `verdict` = `healthy` / `unhealthy` | health-gate verdicts |
//! | `hotexec_listen_drops_total` | counter | — | the kernel's listen drops during upgrades (per network namespace) |
//!
//! **Counters continue across generations**: the old generation's totals are carried to the
//! new one ([`Metrics::export`] / [`Metrics::import`]), and every change is published as the
//! new total (`Counter::absolute`), never as an increment, so no scrape ever sees a counter go
//! down because of an upgrade — also when the app installs its exporter after hotexec started
//! (install it in `init = …` to have the totals from the first scrape). The upgrade duration
//! is a gauge, not a histogram: a histogram's `_count` would restart in every generation.

#[cfg(feature = "metrics")]
use std::collections::BTreeMap;
#[cfg(feature = "metrics")]
use std::sync::Mutex;

#[cfg(feature = "metrics")]
use super::wire::Record;
use super::{DrainSummary, UpgradeReport};

#[cfg(feature = "metrics")]
const UPGRADES: &str = "hotexec_upgrades_total";
#[cfg(feature = "metrics")]
const HANDED_OFF: &str = "hotexec_handed_off_connections_total";
#[cfg(feature = "metrics")]
const CUT: &str = "hotexec_cut_connections_total";
#[cfg(feature = "metrics")]
const VERDICTS: &str = "hotexec_health_verdicts_total";
#[cfg(feature = "metrics")]
const LISTEN_DROPS: &str = "hotexec_listen_drops_total";
#[cfg(feature = "metrics")]
/// The counters, with their label (if any): the only ones [`Metrics::import`] accepts.
const COUNTERS: [(&str, Option<&str>); 5] = [
    (UPGRADES, Some("result")),
    (HANDED_OFF, None),
    (CUT, None),
    (VERDICTS, Some("verdict")),
    (LISTEN_DROPS, None),
];
/// Most label values one counter takes from a predecessor (a hostile or broken one must not
/// make this generation publish thousands of series).
#[cfg(feature = "metrics")]
const MAX_LABEL_VALUES: usize = 8;
#[cfg(feature = "metrics")]
const MAX_LABEL_LEN: usize = 32;

/// The totals of hotexec's counters in this generation, including those carried from the
/// previous ones. One per generation, held by the runtime's context.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    /// (counter, label value) → total.
    #[cfg(feature = "metrics")]
    totals: Mutex<BTreeMap<(&'static str, String), u64>>,
}

#[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
impl Metrics {
    pub(crate) fn new() -> Metrics {
        Metrics::default()
    }

    /// The totals, to carry to the next generation (at most a few hundred bytes).
    pub(crate) fn export(&self) -> Vec<u8> {
        #[cfg(feature = "metrics")]
        {
            let totals = self.totals.lock().unwrap_or_else(|p| p.into_inner());
            let mut r = Record::new();
            for ((name, label), v) in totals.iter() {
                r.put(format!("{name}:{label}"), v);
            }
            r.encode().into_bytes()
        }
        #[cfg(not(feature = "metrics"))]
        Vec::new()
    }

    /// Takes over the previous generation's totals (what its [`Metrics::export`] gave) and
    /// publishes them. Unknown counters, labels past the limits and garbage are skipped: the
    /// previous generation may be another build, or broken.
    pub(crate) fn import(&self, bytes: &[u8]) {
        #[cfg(feature = "metrics")]
        {
            let Ok(text) = std::str::from_utf8(bytes) else {
                tracing::warn!(
                    "metrics carried from the previous generation are not UTF-8: starting from zero"
                );
                return;
            };
            let record = Record::decode(text);
            let mut totals = self.totals.lock().unwrap_or_else(|p| p.into_inner());
            for (name, label_key) in COUNTERS {
                let prefix = format!("{name}:");
                for (key, value) in record.fields() {
                    let Some(label) = key.strip_prefix(&prefix) else {
                        continue;
                    };
                    let Ok(v) = value.parse::<u64>() else {
                        continue;
                    };
                    let labels = totals.keys().filter(|(n, _)| *n == name).count();
                    let fits = match label_key {
                        None => label.is_empty(),
                        Some(_) => {
                            !label.is_empty()
                                && label.len() <= MAX_LABEL_LEN
                                && (labels < MAX_LABEL_VALUES
                                    || totals.contains_key(&(name, label.to_owned())))
                        }
                    };
                    if fits {
                        // The larger of the two: a counter never goes down.
                        let t = totals.entry((name, label.to_owned())).or_default();
                        *t = (*t).max(v);
                    }
                }
            }
            for ((name, label), v) in totals.iter() {
                publish(name, label, *v);
            }
        }
    }

    /// Publishes every total again (e.g. once the app has installed its exporter).
    pub(crate) fn publish_all(&self) {
        #[cfg(feature = "metrics")]
        for ((name, label), v) in self.totals.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            publish(name, label, *v);
        }
    }

    #[cfg(feature = "metrics")]
    fn add(&self, name: &'static str, label: &str, n: u64) {
        let mut totals = self.totals.lock().unwrap_or_else(|p| p.into_inner());
        let t = totals.entry((name, label.to_owned())).or_default();
        *t = t.saturating_add(n);
        publish(name, label, *t);
    }

    /// An upgrade ended (in the generation that ran it, or in the new one for the upgrade
    /// that started it: whichever announces it, once).
    pub(crate) fn upgrade(&self, report: &UpgradeReport) {
        #[cfg(feature = "metrics")]
        {
            self.add(UPGRADES, report.result.as_str(), 1);
            if let (true, Some(ms)) = (report.is_ok(), report.ms_to_ready) {
                ::metrics::gauge!("hotexec_upgrade_duration_seconds").set(ms / 1e3);
            }
            if let Some(d) = report.listen_drops {
                self.add(LISTEN_DROPS, "", d);
            }
        }
    }

    /// This generation's number.
    pub(crate) fn generation(&self, generation: u64) {
        #[cfg(feature = "metrics")]
        ::metrics::gauge!("hotexec_generation").set(generation as f64);
    }

    /// Connections older generations still drain, all together.
    pub(crate) fn draining_connections(&self, n: u64) {
        #[cfg(feature = "metrics")]
        ::metrics::gauge!("hotexec_draining_connections").set(n as f64);
    }

    /// An old generation is done: what it handed off and what it cut.
    pub(crate) fn drained(&self, summary: &DrainSummary) {
        #[cfg(feature = "metrics")]
        {
            self.add(HANDED_OFF, "", summary.handed_off.unwrap_or(0));
            self.add(CUT, "", summary.cut.unwrap_or(0));
        }
    }

    /// The health gate decided.
    pub(crate) fn verdict(&self, healthy: bool) {
        #[cfg(feature = "metrics")]
        self.add(VERDICTS, if healthy { "healthy" } else { "unhealthy" }, 1);
    }
}

/// Sets counter `name` (with its label, if it has one) to `total`.
#[cfg(feature = "metrics")]
fn publish(name: &'static str, label: &str, total: u64) {
    let label_key = COUNTERS
        .iter()
        .find(|(n, _)| *n == name)
        .and_then(|(_, l)| *l);
    match label_key {
        Some(key) => ::metrics::counter!(name, key => label.to_owned()).absolute(total),
        None => ::metrics::counter!(name).absolute(total),
    }
}

#[cfg(all(test, feature = "metrics"))]
mod tests {
    use super::*;
    use crate::evidence::{Recorder, Trigger};
    use metrics_exporter_prometheus::PrometheusBuilder;

    /// The value of the series `series` (`name` or `name{labels}`) in a Prometheus text page.
    fn value(page: &str, series: &str) -> Option<f64> {
        page.lines().find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
    }

    fn ok_report() -> UpgradeReport {
        let mut rec = Recorder::start(Trigger::Signal, 1);
        rec.ready(std::time::Instant::now());
        rec.finish(Ok(2))
    }

    /// Two generations, each with its own exporter (as two processes have): the second starts
    /// from the first one's totals, and its page never shows a counter lower than the first's.
    #[test]
    fn counters_continue_in_the_next_generation() {
        let first = PrometheusBuilder::new().build_recorder();
        let first_page = first.handle();
        let m1 = Metrics::new();
        metrics::with_local_recorder(&first, || {
            m1.generation(1);
            m1.upgrade(&ok_report());
            m1.upgrade(&ok_report());
            let failed = Recorder::start(Trigger::Signal, 1)
                .finish(Err(&crate::error::UpgradeError::Aborted));
            m1.upgrade(&failed);
            m1.verdict(true);
            m1.drained(&DrainSummary {
                handed_off: Some(5),
                cut: Some(1),
                ..DrainSummary::default()
            });
        });
        let before = first_page.render();
        assert_eq!(
            value(&before, "hotexec_upgrades_total{result=\"ok\"}"),
            Some(2.0),
            "{before}"
        );
        assert_eq!(
            value(&before, "hotexec_upgrades_total{result=\"error\"}"),
            Some(1.0)
        );
        assert_eq!(
            value(&before, "hotexec_handed_off_connections_total"),
            Some(5.0)
        );
        assert_eq!(value(&before, "hotexec_generation"), Some(1.0));

        let carried = m1.export();
        assert!(carried.len() < 512, "{}", carried.len());
        let second = PrometheusBuilder::new().build_recorder();
        let second_page = second.handle();
        let m2 = Metrics::new();
        metrics::with_local_recorder(&second, || {
            m2.import(&carried);
            m2.generation(2);
            m2.upgrade(&ok_report());
            m2.draining_connections(3);
            m2.publish_all();
        });
        let after = second_page.render();
        assert_eq!(
            value(&after, "hotexec_upgrades_total{result=\"ok\"}"),
            Some(3.0),
            "{after}"
        );
        assert_eq!(
            value(&after, "hotexec_upgrades_total{result=\"error\"}"),
            Some(1.0)
        );
        assert_eq!(
            value(&after, "hotexec_handed_off_connections_total"),
            Some(5.0)
        );
        assert_eq!(value(&after, "hotexec_cut_connections_total"), Some(1.0));
        assert_eq!(
            value(&after, "hotexec_health_verdicts_total{verdict=\"healthy\"}"),
            Some(1.0)
        );
        assert_eq!(value(&after, "hotexec_generation"), Some(2.0));
        assert_eq!(value(&after, "hotexec_draining_connections"), Some(3.0));
        assert!(value(&after, "hotexec_upgrade_duration_seconds").is_some_and(|s| s >= 0.0));
        for line in before
            .lines()
            .filter(|l| l.contains("_total") && !l.starts_with('#'))
        {
            let (series, v) = line.rsplit_once(' ').unwrap();
            let v: f64 = v.parse().unwrap();
            let now = value(&after, series).unwrap_or_else(|| panic!("{series} gone:\n{after}"));
            assert!(now >= v, "{series} went from {v} to {now}");
        }
    }

    /// What a broken or hostile predecessor carries cannot lower a counter, invent counters or
    /// labels without bound, or stop the start.
    #[test]
    fn garbage_from_the_predecessor_is_skipped() {
        let rec = PrometheusBuilder::new().build_recorder();
        let page = rec.handle();
        let m = Metrics::new();
        metrics::with_local_recorder(&rec, || {
            m.upgrade(&ok_report());
            m.import(b"\xff\xfe");
            let mut junk = String::from(
                "hotexec_upgrades_total:ok=0 made_up_total:=9 hotexec_cut_connections_total:=x hotexec_cut_connections_total:extra=4 ",
            );
            for i in 0..100 {
                junk.push_str(&format!("hotexec_upgrades_total:l{i}=1 "));
            }
            junk.push_str(&format!(
                "hotexec_health_verdicts_total:{}=1",
                "v".repeat(100)
            ));
            m.import(junk.as_bytes());
        });
        let text = page.render();
        assert_eq!(
            value(&text, "hotexec_upgrades_total{result=\"ok\"}"),
            Some(1.0),
            "{text}"
        );
        assert!(!text.contains("made_up"), "{text}");
        assert!(!text.contains("hotexec_cut_connections_total"), "{text}");
        assert!(!text.contains("vvvv"), "{text}");
        let series = text
            .lines()
            .filter(|l| l.starts_with("hotexec_upgrades_total{"))
            .count();
        assert!(series <= MAX_LABEL_VALUES, "{series} series:\n{text}");
    }
}
