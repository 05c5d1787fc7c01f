//! Options of `#[hotexec::main]`, each overridable at run time by `HOTEXEC_<OPTION>`.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::socket::ListenOptions;
use crate::syntax::{self, ListenAddr};

/// `HOTEXEC_DRAIN_TIMEOUT`
pub const ENV_DRAIN_TIMEOUT: &str = "HOTEXEC_DRAIN_TIMEOUT";
/// `HOTEXEC_READY_TIMEOUT`
pub const ENV_READY_TIMEOUT: &str = "HOTEXEC_READY_TIMEOUT";
/// `HOTEXEC_UPGRADE_SIGNAL`
pub const ENV_UPGRADE_SIGNAL: &str = "HOTEXEC_UPGRADE_SIGNAL";
/// `HOTEXEC_PID_FILE`
pub const ENV_PID_FILE: &str = "HOTEXEC_PID_FILE";
/// `HOTEXEC_KEEPER`: `1` turns keeper mode on, `0` off (see `keeper.rs`).
pub const ENV_KEEPER: &str = "HOTEXEC_KEEPER";
/// `HOTEXEC_PROBATION`
pub const ENV_PROBATION: &str = "HOTEXEC_PROBATION";
/// Prefix of `HOTEXEC_LISTEN_<NAME>`.
pub const ENV_LISTEN_PREFIX: &str = "HOTEXEC_LISTEN_";

/// Default `drain_timeout`.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Default `ready_timeout`.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Default probation: how long a generation that handed over stays able to roll back.
pub const DEFAULT_PROBATION: Duration = Duration::from_secs(2);

/// One declared listener.
#[derive(Clone, Debug)]
pub struct ListenDecl {
    /// Its name (`default` when none was given).
    pub name: String,
    /// Where it listens, after `HOTEXEC_LISTEN_<NAME>`.
    pub addr: ListenAddr,
    /// Socket options.
    pub opts: ListenOptions,
    /// The variable that overrode the address, if one did.
    pub overridden_by: Option<String>,
}

/// The options in force.
#[derive(Clone, Debug)]
pub struct Config {
    /// How a new generation is started (`HOTEXEC_SPAWN`).
    pub spawn: crate::spawn::Method,
    /// `HOTEXEC_EXE`: the path every upgrade executes, when set (see `exe.rs`).
    pub exe: Option<OsString>,
    /// How long a stopping generation may drain before it exits anyway.
    pub drain_timeout: Duration,
    /// How long a new generation has to report ready.
    pub ready_timeout: Duration,
    /// The signal that triggers an upgrade.
    pub upgrade_signal: Signal,
    /// How long a generation that handed over stays alive (at most `drain_timeout`) to roll
    /// back if its successor crashes.
    pub probation: Duration,
    /// Where the pid file goes, if anywhere.
    pub pid_file: Option<PathBuf>,
    /// The app calls `hotexec::ready()` itself.
    pub manual_ready: bool,
    /// The listeners.
    pub listeners: Vec<ListenDecl>,
    /// Keeper mode: `Some(true)` / `Some(false)` when the attribute or `HOTEXEC_KEEPER` said so,
    /// `None` when nothing did (then it is on in the foreground of a terminal).
    pub keeper: Option<bool>,
    /// Warnings to log once logging is possible (unknown override variables).
    pub warnings: Vec<String>,
    /// The health gate (issue 18); its `probation` is `probation` above.
    pub health: crate::health::policy::HealthPolicy,
}

/// The attribute's values, before the environment is consulted.
#[derive(Clone, Debug, Default)]
pub struct Declared {
    pub(crate) drain_timeout: Option<Duration>,
    pub(crate) ready_timeout: Option<Duration>,
    pub(crate) upgrade_signal: Option<&'static str>,
    pub(crate) pid_file: Option<&'static str>,
    pub(crate) manual_ready: bool,
    pub(crate) keeper: bool,
    pub(crate) listeners: Vec<(&'static str, &'static str, ListenOptions)>,
    pub(crate) health: crate::health::policy::DeclaredHealth,
}

fn env_str(var: &str, value: OsString) -> Result<String, String> {
    value
        .into_string()
        .map_err(|v| format!("{var}={v:?}: not valid UTF-8"))
}

impl Config {
    /// Applies `env` (the process environment, as pairs) over `declared`. Every refusal names
    /// the variable.
    pub fn resolve(
        declared: &Declared,
        env: impl IntoIterator<Item = (OsString, OsString)>,
    ) -> Result<Config, String> {
        let env: Vec<(String, OsString)> = env
            .into_iter()
            .filter_map(|(k, v)| k.into_string().ok().map(|k| (k, v)))
            .filter(|(k, _)| k.starts_with("HOTEXEC_"))
            .collect();
        let get = |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        let duration = |var: &str, default: Duration, attr: Option<Duration>| match get(var) {
            Some(v) => {
                let s = env_str(var, v)?;
                syntax::parse_duration(&s).map_err(|e| format!("{var}: {e}"))
            }
            None => Ok(attr.unwrap_or(default)),
        };
        let drain_timeout = duration(
            ENV_DRAIN_TIMEOUT,
            DEFAULT_DRAIN_TIMEOUT,
            declared.drain_timeout,
        )?;
        let ready_timeout = duration(
            ENV_READY_TIMEOUT,
            DEFAULT_READY_TIMEOUT,
            declared.ready_timeout,
        )?;
        if ready_timeout.is_zero() {
            // Same rule as the attribute: a zero timeout would fail every upgrade.
            return Err(format!(
                "{ENV_READY_TIMEOUT}: `{}` is not allowed: it must be more than 0, or no upgrade could ever succeed",
                get(ENV_READY_TIMEOUT).unwrap_or_default().to_string_lossy()
            ));
        }
        let probation = duration(
            ENV_PROBATION,
            DEFAULT_PROBATION,
            declared.health.probation(),
        )?;
        let health =
            crate::health::policy::HealthPolicy::resolve(&declared.health, get, probation)?;
        let signal_name = match get(ENV_UPGRADE_SIGNAL) {
            Some(v) => {
                let s = env_str(ENV_UPGRADE_SIGNAL, v)?;
                syntax::parse_upgrade_signal(&s)
                    .map_err(|e| format!("{ENV_UPGRADE_SIGNAL}: {e}"))?
            }
            None => syntax::parse_upgrade_signal(declared.upgrade_signal.unwrap_or("SIGUSR2"))
                .map_err(|e| e.to_string())?,
        };
        let upgrade_signal: Signal = signal_name
            .parse()
            .map_err(|_| format!("signal {signal_name} is not known on this platform"))?;
        let pid_file = match get(ENV_PID_FILE) {
            // Set but empty: explicitly no pid file.
            Some(v) if v.is_empty() => None,
            Some(v) => Some(PathBuf::from(v)),
            None => declared.pid_file.map(PathBuf::from),
        };
        let keeper = match get(ENV_KEEPER) {
            Some(v) => match env_str(ENV_KEEPER, v)?.as_str() {
                "1" | "true" | "yes" | "on" => Some(true),
                "0" | "false" | "no" | "off" => Some(false),
                other => {
                    return Err(format!(
                        "{ENV_KEEPER}={other:?}: expected 1 (keeper mode on) or 0 (off)"
                    ));
                }
            },
            None => declared.keeper.then_some(true),
        };
        let mut listeners = Vec::new();
        let mut by_var = std::collections::HashMap::new();
        for (name, addr, opts) in &declared.listeners {
            syntax::check_listener_name(name).map_err(|e| e.to_string())?;
            let var = format!("{ENV_LISTEN_PREFIX}{}", syntax::env_suffix(name));
            let (addr, overridden_by) = match get(&var) {
                Some(v) => {
                    let s = env_str(&var, v)?;
                    let a = ListenAddr::parse(&s).map_err(|e| format!("{var}: {e}"))?;
                    (a, Some(var.clone()))
                }
                None => (ListenAddr::parse(addr).map_err(|e| e.to_string())?, None),
            };
            // One set lookup per listener: a start with thousands of listeners stays linear.
            if let Some(other) = by_var.insert(var.clone(), name) {
                return Err(format!(
                    "listeners {other:?} and {name:?} would share the variable {var}"
                ));
            }
            listeners.push(ListenDecl {
                name: name.to_string(),
                addr,
                opts: opts.clone(),
                overridden_by,
            });
        }
        let mut warnings = Vec::new();
        for (k, _) in &env {
            if let Some(suffix) = k.strip_prefix(ENV_LISTEN_PREFIX) {
                if !listeners
                    .iter()
                    .any(|l| syntax::env_suffix(&l.name) == suffix)
                {
                    let known: Vec<_> = listeners.iter().map(|l| l.name.as_str()).collect();
                    warnings.push(format!(
                        "{k} is set but no listener is named {:?} (declared: {})",
                        suffix.to_ascii_lowercase(),
                        known.join(", ")
                    ));
                }
            }
        }
        let spawn = crate::spawn::Method::parse(get(crate::spawn::SPAWN_VAR).as_deref())?;
        Ok(Config {
            spawn,
            exe: get(crate::exe::ENV_EXE),
            drain_timeout,
            ready_timeout,
            upgrade_signal,
            probation,
            pid_file,
            manual_ready: declared.manual_ready,
            listeners,
            keeper,
            warnings,
            health,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect()
    }

    fn declared() -> Declared {
        Declared {
            drain_timeout: Some(Duration::from_secs(5)),
            listeners: vec![("http", "127.0.0.1:8080", ListenOptions::default())],
            ..Default::default()
        }
    }

    #[test]
    fn environment_overrides_the_attribute() {
        let c = Config::resolve(
            &declared(),
            env(&[
                ("HOTEXEC_DRAIN_TIMEOUT", "2s"),
                ("HOTEXEC_READY_TIMEOUT", "500ms"),
                ("HOTEXEC_UPGRADE_SIGNAL", "hup"),
                ("HOTEXEC_PID_FILE", "/tmp/x.pid"),
                ("HOTEXEC_LISTEN_HTTP", "[::1]:0"),
                ("HOTEXEC_LISTEN_HTPP", "[::1]:0"),
            ]),
        )
        .unwrap();
        assert_eq!(c.drain_timeout, Duration::from_secs(2));
        assert_eq!(c.ready_timeout, Duration::from_millis(500));
        assert_eq!(c.upgrade_signal, Signal::SIGHUP);
        assert_eq!(c.pid_file, Some("/tmp/x.pid".into()));
        assert_eq!(c.listeners[0].addr, ListenAddr::parse("[::1]:0").unwrap());
        assert_eq!(c.warnings.len(), 1);
        assert!(c.warnings[0].contains("HOTEXEC_LISTEN_HTPP"));

        let d = Config::resolve(&declared(), env(&[])).unwrap();
        assert_eq!(d.drain_timeout, Duration::from_secs(5));
        assert_eq!(d.ready_timeout, DEFAULT_READY_TIMEOUT);
        assert_eq!(d.upgrade_signal, Signal::SIGUSR2);
        assert_eq!(d.keeper, None);
    }

    #[test]
    fn keeper_from_the_attribute_or_the_environment() {
        let on = Declared {
            keeper: true,
            ..declared()
        };
        assert_eq!(Config::resolve(&on, env(&[])).unwrap().keeper, Some(true));
        let off = Config::resolve(&on, env(&[("HOTEXEC_KEEPER", "0")])).unwrap();
        assert_eq!(off.keeper, Some(false));
        let by_env = Config::resolve(&declared(), env(&[("HOTEXEC_KEEPER", "1")])).unwrap();
        assert_eq!(by_env.keeper, Some(true));
    }

    #[test]
    fn malformed_values_name_the_variable() {
        for (var, value) in [
            ("HOTEXEC_DRAIN_TIMEOUT", "soon"),
            ("HOTEXEC_READY_TIMEOUT", "5"),
            ("HOTEXEC_UPGRADE_SIGNAL", "SIGKILL"),
            ("HOTEXEC_LISTEN_HTTP", "localhost:80"),
            ("HOTEXEC_KEEPER", "maybe"),
            ("HOTEXEC_READY_TIMEOUT", "0s"),
        ] {
            let e = Config::resolve(&declared(), env(&[(var, value)])).unwrap_err();
            assert!(e.starts_with(var), "{e}");
            assert!(e.contains(value), "{e}");
        }
    }
}
