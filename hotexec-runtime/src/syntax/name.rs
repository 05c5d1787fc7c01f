use std::fmt;

/// Why a listener name is not usable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NameError {
    name: String,
}

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid listener name `{}`: use 1 to 64 ASCII letters, digits, `_` or `-`, starting with a letter",
            self.name
        )
    }
}

impl std::error::Error for NameError {}

/// A listener name travels in `LISTEN_FDNAMES` (colon-separated) and in an environment variable
/// name (`HOTEXEC_LISTEN_<NAME>`), so it is kept to a small alphabet.
pub fn check_listener_name(name: &str) -> Result<(), NameError> {
    let ok = (1..=64).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(NameError {
            name: name.to_owned(),
        })
    }
}

/// The suffix of a listener's override variable: `http-alt` → `HTTP_ALT`.
pub fn env_suffix(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c == '-' {
                '_'
            } else {
                c.to_ascii_uppercase()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(check_listener_name("http").is_ok());
        assert!(check_listener_name("admin-v2_x").is_ok());
        for bad in ["", "1http", "a:b", "a b", "é", &"x".repeat(65)] {
            assert!(check_listener_name(bad).is_err(), "{bad}");
        }
        assert_eq!(env_suffix("http-alt"), "HTTP_ALT");
    }
}
