//! The commit decision: [`verdict`] compares what a new generation served during its probation
//! with what the old one served before the upgrade. Pure (numbers in, decision out), so every
//! case is a unit test; [`Probation`] feeds it the reports as they come and adds a window.
//!
//! The rule, in words (defaults in `policy.rs`):
//!
//! - **Bad answers** are 5xx responses, handler panics and requests left without an answer.
//!   The limit for the new generation is `max_error_rate` (2%), or `max_error_ratio` (2) times
//!   the old generation's rate if that is higher — an old generation that was itself at 3%
//!   leaves room up to 6%, so a release during an incident elsewhere (or the one that fixes
//!   it) is not refused for the incident. The old rate counts only if the old generation
//!   served at least `min_sample` requests; otherwise the limit is `max_error_rate`.
//! - **Unhealthy** as soon as the new generation's rate is above the limit with 99.9%
//!   confidence (the lower bound of the Wilson score interval, [`Z`]) and it has given at least
//!   [`MIN_BAD`] bad answers — at any time, so a bad build is stopped after a few hundred
//!   requests, not at the end of the probation. Under the defaults a build answering 500 to 5%
//!   of requests (the old at under 1%) is unhealthy after 300–400 requests. The same test runs
//!   on failed connections (per connection served), and an app's own check that fails
//!   ([`Health::add_check`](super::Health::add_check)) is unhealthy at once.
//! - **Healthy** once the probation is over, the new generation answered at least `min_sample`
//!   requests, and its rate is within the limit with 95% confidence (the upper Wilson bound,
//!   [`Z_HEALTHY`]): a build without errors is committed at the end of the probation, one at
//!   1% against a 2% limit after several hundred requests, one at 5% never.
//! - Not a single request during the probation (an idle service): committed at its end, on the
//!   crash watch; there is nothing to wait for.
//! - Neither yet: the probation is extended up to `max_probation`. Then the new generation is
//!   committed unless its rate over the probation is above the limit (on at least
//!   [`MIN_BAD`] bad answers): a quiet service cannot prove much either way, but a build that
//!   answered worse than the limit is not committed on the benefit of the doubt. The log says
//!   which it was.
//! - A new generation that counts nothing (it does not serve through `hotexec::serve` and
//!   records no outcome, or sends no report: a build without this feature, a program not built
//!   on hotexec) is committed when the probation is over, on the crash watch alone.

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

use super::policy::HealthPolicy;
use super::{Counts, Report};

/// The z-score of the one-sided 99.9% confidence bound an unhealthy verdict needs.
pub(crate) const Z: f64 = 3.09;
/// The z-score of the one-sided 95% confidence bound a healthy verdict needs.
pub(crate) const Z_HEALTHY: f64 = 1.645;
/// A new generation is never judged unhealthy on fewer bad answers than this.
pub(crate) const MIN_BAD: u64 = 5;
/// The recent window [`Probation`] judges besides the whole probation: a build that turns bad
/// after a good start is caught on its last second, not diluted by its first ones.
pub(crate) const WINDOW: Duration = Duration::from_secs(1);

/// The decision, for now.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Verdict {
    /// Not yet: what it waits for.
    Pending(String),
    /// Commit: why, and the numbers.
    Healthy { why: String, numbers: Numbers },
    /// Do not commit: the old build serves again.
    Unhealthy { reason: String, numbers: Numbers },
}

/// One dimension of the comparison: bad answers of requests, or failed connections.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Rates {
    /// Bad outcomes of the new generation.
    pub new_bad: u64,
    /// All outcomes of the new generation.
    pub new_total: u64,
    /// Bad outcomes of the old generation before the upgrade.
    pub old_bad: u64,
    /// All outcomes of the old generation before the upgrade.
    pub old_total: u64,
    /// The limit the new generation was held to.
    pub limit: f64,
    /// The new generation's rate is at least this, with 99.9% confidence.
    pub new_lower: f64,
    /// The new generation's rate is at most this, with 95% confidence.
    pub new_upper: f64,
}

impl Rates {
    fn new(
        new_bad: u64,
        new_total: u64,
        old_bad: u64,
        old_total: u64,
        policy: &HealthPolicy,
    ) -> Rates {
        let old_rate = (old_total >= policy.min_sample).then(|| ratio(old_bad, old_total));
        let limit = old_rate
            .map_or(policy.max_error_rate, |r| {
                policy.max_error_rate.max(r * policy.max_error_ratio)
            })
            .min(1.0);
        Rates {
            new_bad,
            new_total,
            old_bad,
            old_total,
            limit,
            new_lower: wilson_lower(new_bad, new_total, Z),
            new_upper: wilson_upper(new_bad, new_total, Z_HEALTHY),
        }
    }

    /// Confidently above the limit, on enough bad outcomes.
    fn over(&self) -> bool {
        self.new_bad >= MIN_BAD && self.new_lower > self.limit
    }

    /// Confidently within the limit.
    fn within(&self) -> bool {
        self.new_upper <= self.limit
    }

    /// Above the limit as observed (not with confidence), on enough bad outcomes.
    fn observed_over(&self) -> bool {
        self.new_bad >= MIN_BAD && ratio(self.new_bad, self.new_total) > self.limit
    }

    fn describe(&self, f: &mut fmt::Formatter<'_>, what: &str, of: &str) -> fmt::Result {
        write!(
            f,
            "new generation: {} {what} of {} {of} ({}; {} to {} with 99.9% and 95% confidence); old generation before the upgrade: {} of {} ({}); limit {}",
            self.new_bad,
            self.new_total,
            pct(ratio(self.new_bad, self.new_total)),
            pct(self.new_lower),
            pct(self.new_upper),
            self.old_bad,
            self.old_total,
            pct(ratio(self.old_bad, self.old_total)),
            pct(self.limit),
        )
    }
}

/// The numbers behind a verdict, for the log and the operator.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Numbers {
    /// Bad answers (5xx, panics, errors) per request.
    pub requests: Rates,
    /// Failed connections per connection.
    pub connections: Rates,
    /// Time since the new generation took over.
    pub elapsed: Duration,
}

/// The numbers of a verdict as named figures, for the upgrade's evidence (`health.*` in
/// `hotexec upgrade --json`). Compared by their bits, so an announcement carrying them is `Eq`.
#[derive(Clone, Debug)]
pub(crate) struct Figures(pub Vec<(&'static str, f64)>);

impl PartialEq for Figures {
    fn eq(&self, other: &Figures) -> bool {
        self.0.len() == other.0.len()
            && self
                .0
                .iter()
                .zip(&other.0)
                .all(|((a, x), (b, y))| a == b && x.to_bits() == y.to_bits())
    }
}

impl Eq for Figures {}

impl Numbers {
    pub(crate) fn figures(&self) -> Figures {
        let (r, c) = (&self.requests, &self.connections);
        Figures(vec![
            ("requests", r.new_total as f64),
            ("bad", r.new_bad as f64),
            ("error_rate", ratio(r.new_bad, r.new_total)),
            ("error_rate_lower", r.new_lower),
            ("error_rate_upper", r.new_upper),
            ("limit", r.limit),
            ("old_requests", r.old_total as f64),
            ("old_bad", r.old_bad as f64),
            ("old_error_rate", ratio(r.old_bad, r.old_total)),
            ("connections", c.new_total as f64),
            ("connections_failed", c.new_bad as f64),
            ("probation_ms", self.elapsed.as_secs_f64() * 1e3),
        ])
    }
}

impl fmt::Display for Numbers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.requests
            .describe(f, "bad answers (5xx, panics, errors)", "requests")?;
        if self.connections.new_bad > 0 || self.connections.old_bad > 0 {
            f.write_str("; ")?;
            self.connections
                .describe(f, "failed connections", "connections")?;
        }
        write!(f, "; after {:.1}s", self.elapsed.as_secs_f64())
    }
}

fn ratio(bad: u64, total: u64) -> f64 {
    if total == 0 {
        0.0
    } else {
        bad as f64 / total as f64
    }
}

fn pct(r: f64) -> String {
    let p = r * 100.0;
    if p != 0.0 && p < 0.1 {
        format!("{p:.3}%")
    } else {
        format!("{p:.1}%")
    }
}

/// The Wilson score interval of `bad` in `total` at `z` (`total` > 0), as (centre, half-width,
/// the divisor `1 + z²/n` both bounds share).
fn wilson(bad: u64, total: u64, z: f64) -> (f64, f64, f64) {
    let n = total as f64;
    let p = (bad.min(total)) as f64 / n;
    let z2 = z * z;
    let center = p + z2 / (2.0 * n);
    let margin = z * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    (center, margin, 1.0 + z2 / n)
}

/// The upper bound of the Wilson score interval (see [`wilson_lower`]); 1 for an empty sample.
pub(crate) fn wilson_upper(bad: u64, total: u64, z: f64) -> f64 {
    if total == 0 {
        return 1.0;
    }
    let (center, margin, scale) = wilson(bad, total, z);
    ((center + margin) / scale).clamp(0.0, 1.0)
}

/// The lower bound of the Wilson score interval of `bad` in `total` at `z`: the rate the true
/// one is above with the confidence `z` stands for. Sound for small samples and for rates near
/// 0 or 1, where the normal approximation is not. 0 for an empty sample.
pub(crate) fn wilson_lower(bad: u64, total: u64, z: f64) -> f64 {
    if total == 0 || bad == 0 {
        // Exactly 0 (the formula gives it up to rounding).
        return 0.0;
    }
    let (center, margin, scale) = wilson(bad, total, z);
    ((center - margin) / scale).clamp(0.0, 1.0)
}

/// Compares `new` (the new generation's report, `elapsed` after it took over) with `old` (the
/// old generation's, taken when the upgrade was triggered) under `policy`. See the module docs.
pub(crate) fn verdict(
    old: &Report,
    new: &Report,
    policy: &HealthPolicy,
    elapsed: Duration,
) -> Verdict {
    let (o, n) = (&old.counts, &new.counts);
    let numbers = Numbers {
        requests: Rates::new(n.bad(), n.requests(), o.bad(), o.requests(), policy),
        connections: Rates::new(
            n.connections_failed,
            n.connections,
            o.connections_failed,
            o.connections,
            policy,
        ),
        elapsed,
    };
    if !policy.enabled {
        return Verdict::Healthy {
            why: "the health gate is off".into(),
            numbers,
        };
    }
    if let Some(veto) = &new.veto {
        return Verdict::Unhealthy {
            reason: veto.clone(),
            numbers,
        };
    }
    if !new.counting {
        return if elapsed >= policy.probation {
            Verdict::Healthy {
                why: "the new generation counts nothing it serves (not on hotexec::serve, no outcome recorded): committed on the crash watch alone".into(),
                numbers,
            }
        } else {
            Verdict::Pending("the end of the probation (crash watch)".into())
        };
    }
    if numbers.requests.over() {
        return Verdict::Unhealthy {
            reason: format!(
                "{} of its requests got a bad answer, above the limit of {}",
                pct(ratio(numbers.requests.new_bad, numbers.requests.new_total)),
                pct(numbers.requests.limit)
            ),
            numbers,
        };
    }
    if numbers.connections.over() {
        return Verdict::Unhealthy {
            reason: format!(
                "{} of its connections failed, above the limit of {}",
                pct(ratio(
                    numbers.connections.new_bad,
                    numbers.connections.new_total
                )),
                pct(numbers.connections.limit)
            ),
            numbers,
        };
    }
    let sample = n.requests().max(n.connections);
    if elapsed < policy.probation {
        return Verdict::Pending(format!(
            "the end of the probation ({:?}; {sample} requests so far)",
            policy.probation
        ));
    }
    if sample == 0 {
        // Idle: there is nothing to wait for (an idle service stays idle), and nothing to judge.
        return Verdict::Healthy {
            why: "no request during the probation: nothing to judge, committed on the crash watch"
                .into(),
            numbers,
        };
    }
    let within = |r: &Rates| r.new_total == 0 || r.within();
    if sample >= policy.min_sample && within(&numbers.requests) && within(&numbers.connections) {
        return Verdict::Healthy {
            why: format!("{sample} requests, within the limits with 95% confidence"),
            numbers,
        };
    }
    if elapsed >= policy.max_probation {
        for (r, what) in [
            (&numbers.requests, "of its requests got a bad answer"),
            (&numbers.connections, "of its connections failed"),
        ] {
            if r.observed_over() {
                return Verdict::Unhealthy {
                    reason: format!(
                        "{} {what} over the whole probation ({:?}), above the limit of {} (too few requests to be sure either way, and not committed on the benefit of the doubt)",
                        pct(ratio(r.new_bad, r.new_total)),
                        policy.max_probation,
                        pct(r.limit)
                    ),
                    numbers,
                };
            }
        }
        return Verdict::Healthy {
            why: if sample < policy.min_sample {
                format!(
                    "only {sample} requests in {:?} (fewer than min_sample = {}): too few to judge, committed on what there is",
                    policy.max_probation, policy.min_sample
                )
            } else {
                format!(
                    "{sample} requests in {:?}, not confidently within the limits but not above them",
                    policy.max_probation
                )
            },
            numbers,
        };
    }
    Verdict::Pending(if sample < policy.min_sample {
        format!(
            "{} requests (min_sample; {sample} so far), at most until {:?}",
            policy.min_sample, policy.max_probation
        )
    } else {
        format!(
            "more requests to tell its rate from the limit, at most until {:?}",
            policy.max_probation
        )
    })
}

/// A probation in progress, without I/O: the supervisor of the old generation makes one when
/// the new generation takes over, passes it each report as it arrives and each deadline
/// tick, and acts on the first verdict that is not [`Verdict::Pending`].
///
/// Besides the whole probation it judges the last [`WINDOW`] (the latest report minus the one
/// a window before), so that a build that goes bad after a good first second is caught on its
/// recent numbers. Reports whose counts go backwards (a broken or lying peer) are dropped and
/// counted in [`Probation::ignored`].
#[derive(Debug)]
pub(crate) struct Probation {
    policy: HealthPolicy,
    baseline: Report,
    /// Reports received, with the time they came, oldest first; only what the window needs.
    history: VecDeque<(Duration, Counts)>,
    latest: Option<Report>,
    ignored: u64,
}

impl Probation {
    /// `baseline`: the old generation's report when the upgrade was triggered.
    pub(crate) fn new(baseline: Report, policy: HealthPolicy) -> Probation {
        Probation {
            policy,
            baseline,
            history: VecDeque::new(),
            latest: None,
            ignored: 0,
        }
    }

    /// A report from the new generation, `elapsed` after it took over.
    pub(crate) fn report(&mut self, report: Report, elapsed: Duration) -> Verdict {
        if let Some(last) = &self.latest {
            let (a, b) = (last.counts.to_array(), report.counts.to_array());
            if a.iter().zip(&b).any(|(was, now)| now < was) {
                self.ignored += 1;
                return self.tick(elapsed);
            }
        }
        self.history.push_back((elapsed, report.counts));
        // Keep one entry at least a window old, as the start of the window.
        while self.history.len() > 2 && self.history[1].0 + WINDOW <= elapsed {
            self.history.pop_front();
        }
        self.latest = Some(report);
        self.tick(elapsed)
    }

    /// The verdict at `elapsed` on what has been reported so far (no report yet: as a new
    /// generation that counts nothing).
    pub(crate) fn tick(&self, elapsed: Duration) -> Verdict {
        let Some(latest) = &self.latest else {
            return verdict(&self.baseline, &Report::default(), &self.policy, elapsed);
        };
        if let Some(&(since, start)) = self.history.front() {
            if since + WINDOW <= elapsed && self.history.len() > 1 {
                let window = Report {
                    counts: latest.counts.since(&start),
                    ..latest.clone()
                };
                if let Verdict::Unhealthy { reason, numbers } =
                    verdict(&self.baseline, &window, &self.policy, elapsed)
                {
                    let span = elapsed.saturating_sub(since).as_secs_f64();
                    return Verdict::Unhealthy {
                        reason: format!("in its last {span:.1}s, {reason}"),
                        numbers,
                    };
                }
            }
        }
        verdict(&self.baseline, latest, &self.policy, elapsed)
    }

    /// Reports dropped because their counts went backwards.
    pub(crate) fn ignored(&self) -> u64 {
        self.ignored
    }
}

#[cfg(test)]
#[path = "verdict_tests.rs"]
mod tests;
