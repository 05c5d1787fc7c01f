//! The options of the health gate: what `#[hotexec::main(..)]` declared, overridden by the
//! environment, resolved once at start into a [`HealthPolicy`].
//!
//! | attribute option | environment variable | default |
//! |---|---|---|
//! | `health = false` | `HOTEXEC_HEALTH` (`1`/`0`) | on |
//! | `probation = "2s"` | `HOTEXEC_PROBATION` | [`DEFAULT_PROBATION`] (read by `config.rs`, passed in) |
//! | `max_probation = "10s"` | `HOTEXEC_MAX_PROBATION` | [`DEFAULT_MAX_PROBATION`], at least the probation |
//! | `max_error_rate = "2%"` | `HOTEXEC_MAX_ERROR_RATE` | [`DEFAULT_MAX_ERROR_RATE`] |
//! | `max_error_ratio = 2` | `HOTEXEC_MAX_ERROR_RATIO` | [`DEFAULT_MAX_ERROR_RATIO`] |
//! | `min_sample = 200` | `HOTEXEC_MIN_SAMPLE` | [`DEFAULT_MIN_SAMPLE`] |
//!
//! What they mean is in `verdict.rs`.

use std::ffi::OsString;
use std::time::Duration;

use crate::syntax;

/// `HOTEXEC_HEALTH`: `0` turns the health gate off (the crash watch of the probation stays).
pub const ENV_HEALTH: &str = "HOTEXEC_HEALTH";
/// `HOTEXEC_MAX_PROBATION`
pub const ENV_MAX_PROBATION: &str = "HOTEXEC_MAX_PROBATION";
/// `HOTEXEC_MAX_ERROR_RATE`
pub const ENV_MAX_ERROR_RATE: &str = "HOTEXEC_MAX_ERROR_RATE";
/// `HOTEXEC_MAX_ERROR_RATIO`
pub const ENV_MAX_ERROR_RATIO: &str = "HOTEXEC_MAX_ERROR_RATIO";
/// `HOTEXEC_MIN_SAMPLE`
pub const ENV_MIN_SAMPLE: &str = "HOTEXEC_MIN_SAMPLE";

/// Default `max_probation`: how long a probation may be extended while too few requests came
/// to judge. Long enough for a service of a few requests a second to reach the sample, short
/// enough that `hotexec upgrade` answers within a deploy tool's patience.
pub const DEFAULT_MAX_PROBATION: Duration = Duration::from_secs(10);
/// Default `max_error_rate`: 2%. A new generation is held to it when the old one did better;
/// under 1% "normal" and 5% "broken", so that a build at 5% is told from one at 1% within a
/// few hundred requests at the confidence the verdict uses.
pub const DEFAULT_MAX_ERROR_RATE: f64 = 0.02;
/// Default `max_error_ratio`: a new generation may reach twice the old one's rate, when that
/// is above `max_error_rate` (an old generation that was itself failing does not make every
/// release look like a regression, nor block the one that fixes it).
pub const DEFAULT_MAX_ERROR_RATIO: f64 = 2.0;
/// Default `min_sample`: requests a new generation must have answered before it is
/// committed on its numbers (see `verdict.rs` for what happens with fewer).
pub const DEFAULT_MIN_SAMPLE: u64 = 200;

/// The health gate's options, resolved.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HealthPolicy {
    /// The gate is on: a new generation is committed only on its numbers (or, if it counts
    /// nothing, on the crash watch alone).
    pub enabled: bool,
    /// How long a new generation is watched at least.
    pub probation: Duration,
    /// How long the watch may be extended while fewer than `min_sample` requests came.
    pub max_probation: Duration,
    /// The error rate a new generation must not be confidently above (unless the old one's
    /// rate, times `max_error_ratio`, is higher).
    pub max_error_rate: f64,
    /// How many times the old generation's error rate a new one may reach.
    pub max_error_ratio: f64,
    /// Requests needed before committing on the numbers.
    pub min_sample: u64,
}

impl Default for HealthPolicy {
    fn default() -> Self {
        HealthPolicy {
            enabled: true,
            probation: crate::config::DEFAULT_PROBATION,
            max_probation: DEFAULT_MAX_PROBATION,
            max_error_rate: DEFAULT_MAX_ERROR_RATE,
            max_error_ratio: DEFAULT_MAX_ERROR_RATIO,
            min_sample: DEFAULT_MIN_SAMPLE,
        }
    }
}

/// What the attribute declared (`None`: not given).
#[derive(Clone, Debug, Default, PartialEq)]
#[doc(hidden)]
pub struct DeclaredHealth {
    pub(crate) enabled: Option<bool>,
    pub(crate) probation: Option<Duration>,
    pub(crate) max_probation: Option<Duration>,
    pub(crate) max_error_rate: Option<f64>,
    pub(crate) max_error_ratio: Option<f64>,
    pub(crate) min_sample: Option<u64>,
}

/// What `#[hotexec::main(..)]` generates calls to (`hotexec::__private::HealthSpec`); values
/// were checked at compile time with the same grammar as the environment's.
#[doc(hidden)]
#[allow(missing_docs)]
impl DeclaredHealth {
    pub fn new() -> Self {
        DeclaredHealth::default()
    }
    pub fn enabled(mut self, on: bool) -> Self {
        self.enabled = Some(on);
        self
    }
    pub fn probation_ms(mut self, ms: u64) -> Self {
        self.probation = Some(Duration::from_millis(ms));
        self
    }
    pub fn max_probation_ms(mut self, ms: u64) -> Self {
        self.max_probation = Some(Duration::from_millis(ms));
        self
    }
    pub fn max_error_rate(mut self, rate: f64) -> Self {
        self.max_error_rate = Some(rate);
        self
    }
    pub fn max_error_ratio(mut self, ratio: f64) -> Self {
        self.max_error_ratio = Some(ratio);
        self
    }
    pub fn min_sample(mut self, n: u64) -> Self {
        self.min_sample = Some(n);
        self
    }
    /// The declared probation, for `Config` (which resolves `HOTEXEC_PROBATION` over it).
    pub(crate) fn probation(&self) -> Option<Duration> {
        self.probation
    }
}

impl HealthPolicy {
    /// Applies the environment (`get` looks a variable up) over `declared`. `probation` is the
    /// probation in force (`HOTEXEC_PROBATION` over the attribute, resolved by `Config`). Every
    /// refusal names the variable and its value.
    pub fn resolve(
        declared: &DeclaredHealth,
        get: impl Fn(&str) -> Option<OsString>,
        probation: Duration,
    ) -> Result<HealthPolicy, String> {
        let text = |var: &str| -> Result<Option<String>, String> {
            get(var)
                .map(|v| {
                    v.into_string()
                        .map_err(|v| format!("{var}={v:?}: not valid UTF-8"))
                })
                .transpose()
        };
        let enabled = match text(ENV_HEALTH)?.as_deref() {
            Some("1" | "true" | "yes" | "on") => true,
            Some("0" | "false" | "no" | "off") => false,
            Some(other) => {
                return Err(format!(
                    "{ENV_HEALTH}={other:?}: expected 1 (health-gated commit on) or 0 (off: commit once the new generation survived the probation)"
                ));
            }
            None => declared.enabled.unwrap_or(true),
        };
        let max_probation = match text(ENV_MAX_PROBATION)? {
            Some(s) => {
                Some(syntax::parse_duration(&s).map_err(|e| format!("{ENV_MAX_PROBATION}: {e}"))?)
            }
            None => declared.max_probation,
        };
        let max_probation = match max_probation {
            Some(m) if m < probation => {
                return Err(format!(
                    "{ENV_MAX_PROBATION} (or `max_probation`) = {m:?} is shorter than the probation ({probation:?}): it is how long the probation may be extended, so it must be at least as long"
                ));
            }
            Some(m) => m,
            None => DEFAULT_MAX_PROBATION.max(probation),
        };
        let max_error_rate = match text(ENV_MAX_ERROR_RATE)? {
            Some(s) => syntax::parse_rate(&s).map_err(|e| format!("{ENV_MAX_ERROR_RATE}: {e}"))?,
            None => declared.max_error_rate.unwrap_or(DEFAULT_MAX_ERROR_RATE),
        };
        let max_error_ratio = match text(ENV_MAX_ERROR_RATIO)? {
            Some(s) => {
                syntax::parse_ratio(&s).map_err(|e| format!("{ENV_MAX_ERROR_RATIO}: {e}"))?
            }
            None => declared.max_error_ratio.unwrap_or(DEFAULT_MAX_ERROR_RATIO),
        };
        let min_sample = match text(ENV_MIN_SAMPLE)? {
            Some(s) => syntax::parse_sample(&s).map_err(|e| format!("{ENV_MIN_SAMPLE}: {e}"))?,
            None => declared.min_sample.unwrap_or(DEFAULT_MIN_SAMPLE),
        };
        Ok(HealthPolicy {
            enabled,
            probation,
            max_probation,
            max_error_rate,
            max_error_ratio,
            min_sample,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<OsString> + 'a {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| OsString::from(v))
        }
    }

    const P: Duration = Duration::from_secs(2);

    #[test]
    fn defaults() {
        let p = HealthPolicy::resolve(&DeclaredHealth::default(), env(&[]), P).unwrap();
        assert_eq!(p, HealthPolicy::default());
        // A probation longer than the default maximum lifts the maximum with it.
        let long = HealthPolicy::resolve(&DeclaredHealth::default(), env(&[]), P * 10).unwrap();
        assert_eq!(long.max_probation, P * 10);
    }

    #[test]
    fn environment_overrides_the_attribute() {
        let declared = DeclaredHealth {
            enabled: Some(false),
            max_probation: Some(Duration::from_secs(20)),
            max_error_rate: Some(0.05),
            max_error_ratio: Some(3.0),
            min_sample: Some(50),
            probation: None,
        };
        let p = HealthPolicy::resolve(&declared, env(&[]), P).unwrap();
        assert_eq!(
            (
                p.enabled,
                p.max_probation,
                p.max_error_rate,
                p.max_error_ratio,
                p.min_sample
            ),
            (false, Duration::from_secs(20), 0.05, 3.0, 50)
        );
        let p = HealthPolicy::resolve(
            &declared,
            env(&[
                (ENV_HEALTH, "1"),
                (ENV_MAX_PROBATION, "5s"),
                (ENV_MAX_ERROR_RATE, "0.5%"),
                (ENV_MAX_ERROR_RATIO, "1.5"),
                (ENV_MIN_SAMPLE, "1000"),
            ]),
            P,
        )
        .unwrap();
        assert_eq!(
            (
                p.enabled,
                p.max_probation,
                p.max_error_rate,
                p.max_error_ratio,
                p.min_sample
            ),
            (true, Duration::from_secs(5), 0.005, 1.5, 1000)
        );
    }

    #[test]
    fn config_resolves_the_policy_with_its_probation() {
        use crate::config::{Config, Declared};
        let declared = Declared {
            health: DeclaredHealth::new().probation_ms(3_000).min_sample(50),
            ..Declared::default()
        };
        let c = Config::resolve(&declared, []).unwrap();
        assert_eq!(c.probation, Duration::from_secs(3));
        assert_eq!(c.health.probation, c.probation);
        assert_eq!(c.health.min_sample, 50);
        let env = [
            ("HOTEXEC_PROBATION".into(), "4s".into()),
            (ENV_MAX_ERROR_RATE.into(), "1%".into()),
        ];
        let c = Config::resolve(&declared, env).unwrap();
        assert_eq!(c.health.probation, Duration::from_secs(4));
        assert_eq!(c.health.max_error_rate, 0.01);
        let bad = [(ENV_MIN_SAMPLE.into(), "many".into())];
        let e = Config::resolve(&declared, bad).unwrap_err();
        assert!(e.starts_with(ENV_MIN_SAMPLE) && e.contains("many"), "{e}");
    }

    #[test]
    fn malformed_values_name_the_variable_and_the_value() {
        for (var, value) in [
            (ENV_HEALTH, "maybe"),
            (ENV_MAX_PROBATION, "soon"),
            (ENV_MAX_PROBATION, "1s"),
            (ENV_MAX_ERROR_RATE, "5"),
            (ENV_MAX_ERROR_RATE, "150%"),
            (ENV_MAX_ERROR_RATIO, "0.5"),
            (ENV_MIN_SAMPLE, "0"),
            (ENV_MIN_SAMPLE, "lots"),
        ] {
            let e = HealthPolicy::resolve(&DeclaredHealth::default(), env(&[(var, value)]), P)
                .unwrap_err();
            assert!(e.starts_with(var), "{e}");
            assert!(e.contains(value), "{e}");
        }
    }
}
