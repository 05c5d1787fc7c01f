use std::fmt;

/// The signals that may trigger an upgrade. `SIGTERM`/`SIGINT` stop the server and are not
/// allowed; `SIGUSR2` is the default, as in nginx.
pub const UPGRADE_SIGNALS: &[&str] = &["SIGUSR2", "SIGUSR1", "SIGHUP"];

/// Why a signal name was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignalError {
    input: String,
}

impl fmt::Display for SignalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid upgrade signal `{}`: expected one of `SIGUSR2`, `SIGUSR1`, `SIGHUP` (the `SIG` prefix is optional)",
            self.input
        )
    }
}

impl std::error::Error for SignalError {}

/// Parses `USR2`, `SIGUSR2` (any case) into the canonical name from [`UPGRADE_SIGNALS`].
pub fn parse_upgrade_signal(input: &str) -> Result<&'static str, SignalError> {
    let upper = input.to_ascii_uppercase();
    let full = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    UPGRADE_SIGNALS
        .iter()
        .copied()
        .find(|s| *s == full)
        .ok_or_else(|| SignalError {
            input: input.to_owned(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(parse_upgrade_signal("usr2"), Ok("SIGUSR2"));
        assert_eq!(parse_upgrade_signal("SIGHUP"), Ok("SIGHUP"));
        assert!(parse_upgrade_signal("SIGTERM").is_err());
        assert!(parse_upgrade_signal("").is_err());
    }
}
