//! The values of the health gate's options: an error rate (`2%`), a ratio (`2`, `1.5`) and a
//! sample size (`200`), as the attribute and the environment write them.

use std::fmt;

/// Why a health option's value was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthValueError {
    input: String,
    expected: &'static str,
}

impl fmt::Display for HealthValueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid value `{}`: expected {}",
            self.input, self.expected
        )
    }
}

impl std::error::Error for HealthValueError {}

/// A plain decimal: digits, at most one `.` with digits on both sides. No sign, exponent,
/// `inf` or `NaN` (which `f64::from_str` would take).
fn decimal(s: &str) -> Option<f64> {
    let (int, frac) = s.split_once('.').unwrap_or((s, "0"));
    let digits = |p: &str| !p.is_empty() && p.len() <= 12 && p.bytes().all(|b| b.is_ascii_digit());
    if !digits(int) || !digits(frac) {
        return None;
    }
    s.parse().ok()
}

/// An error rate: a percentage (`2%`, `0.5%`) or a fraction (`0.02`), from 0 to 100%.
/// Returns the fraction.
pub fn parse_rate(input: &str) -> Result<f64, HealthValueError> {
    let err = || HealthValueError {
        input: input.to_owned(),
        expected: "a rate from 0% to 100%, as a percentage (`2%`, `0.5%`) or a fraction (`0.02`)",
    };
    let rate = match input.strip_suffix('%') {
        Some(p) => decimal(p).ok_or_else(err)? / 100.0,
        None => decimal(input).ok_or_else(err)?,
    };
    if (0.0..=1.0).contains(&rate) {
        Ok(rate)
    } else {
        Err(err())
    }
}

/// A ratio of error rates, at least 1 (`2`, `1.5`): how many times the old generation's rate
/// a new one may reach.
pub fn parse_ratio(input: &str) -> Result<f64, HealthValueError> {
    let err = || HealthValueError {
        input: input.to_owned(),
        expected: "a number from 1 to 1000, e.g. `2` or `1.5` (times the old generation's error rate)",
    };
    let r = decimal(input).ok_or_else(err)?;
    if (1.0..=1000.0).contains(&r) {
        Ok(r)
    } else {
        Err(err())
    }
}

/// A sample size: a whole number of requests from 1 to 1,000,000,000.
pub fn parse_sample(input: &str) -> Result<u64, HealthValueError> {
    let err = || HealthValueError {
        input: input.to_owned(),
        expected: "a whole number of requests from 1 to 1000000000, e.g. `200`",
    };
    if input.is_empty() || !input.bytes().all(|b| b.is_ascii_digit()) || input.len() > 10 {
        return Err(err());
    }
    let n: u64 = input.parse().map_err(|_| err())?;
    if (1..=1_000_000_000).contains(&n) {
        Ok(n)
    } else {
        Err(err())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates() {
        assert_eq!(parse_rate("2%"), Ok(0.02));
        assert_eq!(parse_rate("0.5%"), Ok(0.005));
        assert_eq!(parse_rate("100%"), Ok(1.0));
        assert_eq!(parse_rate("0%"), Ok(0.0));
        assert_eq!(parse_rate("0.02"), Ok(0.02));
        assert_eq!(parse_rate("1"), Ok(1.0));
        for bad in [
            "", "%", "2 %", "-1%", "101%", "1.5", "2e-2", "inf", "NaN%", ".5%", "5.%", "1.2.3%",
        ] {
            let e = parse_rate(bad).unwrap_err().to_string();
            assert!(e.contains(&format!("`{bad}`")) && e.contains("2%"), "{e}");
        }
    }

    #[test]
    fn ratios() {
        assert_eq!(parse_ratio("2"), Ok(2.0));
        assert_eq!(parse_ratio("1.5"), Ok(1.5));
        assert_eq!(parse_ratio("1"), Ok(1.0));
        for bad in ["", "0.5", "0", "-2", "2x", "inf", "1e3", "1001"] {
            assert!(
                parse_ratio(bad)
                    .unwrap_err()
                    .to_string()
                    .contains(&format!("`{bad}`"))
            );
        }
    }

    #[test]
    fn samples() {
        assert_eq!(parse_sample("200"), Ok(200));
        assert_eq!(parse_sample("1"), Ok(1));
        for bad in [
            "",
            "0",
            "-1",
            "1.5",
            "1e3",
            "99999999999",
            "2000000000",
            " 5",
        ] {
            assert!(
                parse_sample(bad)
                    .unwrap_err()
                    .to_string()
                    .contains(&format!("`{bad}`"))
            );
        }
    }
}
