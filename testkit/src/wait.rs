//! Waiting with a deadline: every wait of a test or a benchmark goes through here.

use std::time::{Duration, Instant};

/// Polls `f` every 5 ms until it returns Some or `timeout` passes; then fails the test, naming
/// `what`.
pub fn wait_for<T>(timeout: Duration, what: &str, f: impl FnMut() -> Option<T>) -> T {
    poll(timeout, Duration::from_millis(5), what, f).unwrap_or_else(|e| panic!("{e}"))
}

/// Polls `f` every `every` until it returns Some or `timeout` passes; the timeout is an error
/// naming `what` (for drivers that report instead of panicking, and that need a finer poll).
pub fn poll<T>(
    timeout: Duration,
    every: Duration,
    what: &str,
    mut f: impl FnMut() -> Option<T>,
) -> std::io::Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            return Err(std::io::Error::other(format!(
                "timed out after {timeout:?} waiting for {what}"
            )));
        }
        std::thread::sleep(every);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poll_returns_the_first_value_and_times_out_naming_what() {
        let mut n = 0;
        let v = poll(Duration::from_secs(5), Duration::ZERO, "three", || {
            n += 1;
            (n == 3).then_some(n)
        });
        assert_eq!(v.unwrap(), 3);
        let e = poll(
            Duration::from_millis(20),
            Duration::from_millis(1),
            "never",
            || None::<()>,
        )
        .unwrap_err();
        assert!(e.to_string().contains("waiting for never"), "{e}");
    }
}
