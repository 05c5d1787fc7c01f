//! [`DrainCount`]: how the connections of a generation end, counted by whatever serves them
//! (`hotexec::serve`, `hotexec::drain::Connections`), for the old generation's drain summary.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Connections of this generation, counted by hotexec's serving and draining code. Reached
/// through [`Shutdown::drain_count`](crate::Shutdown::drain_count); an application that serves
/// its own way leaves it unused, and its drain summary then says "not counted" rather than 0.
#[derive(Debug, Default)]
pub struct DrainCount {
    used: AtomicBool,
    open: AtomicU64,
    drained: AtomicU64,
    /// When the last connection was accepted, milliseconds since the Unix epoch (0: none).
    last_accept_ms: AtomicU64,
}

impl DrainCount {
    /// A connection was accepted (for the report's `ms_to_last_accept`).
    pub fn accepted(&self) {
        let now = super::unix_ms(std::time::SystemTime::now());
        self.last_accept_ms.store(now, Ordering::Relaxed);
    }

    /// When the last connection was accepted (milliseconds since the Unix epoch), if any.
    pub(crate) fn last_accept_ms(&self) -> Option<u64> {
        Some(self.last_accept_ms.load(Ordering::Relaxed)).filter(|&t| t > 0)
    }

    /// A connection task starts.
    pub fn opened(&self) {
        self.used.store(true, Ordering::Relaxed);
        self.open.fetch_add(1, Ordering::SeqCst);
    }

    /// A connection task ended; `draining`: after the hand-over (or a stop) began.
    pub fn closed(&self, draining: bool) {
        self.open.fetch_sub(1, Ordering::SeqCst);
        if draining {
            self.drained.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// (connections that finished while draining, connections still open), if counted.
    pub(crate) fn now(&self) -> Option<(u64, u64)> {
        self.used.load(Ordering::Relaxed).then(|| {
            (
                self.drained.load(Ordering::SeqCst),
                self.open.load(Ordering::SeqCst),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_what_ends_while_draining_and_what_is_left() {
        let c = DrainCount::default();
        assert_eq!(c.now(), None, "unused: not counted, not zero");
        c.opened();
        c.opened();
        c.opened();
        c.closed(false);
        c.closed(true);
        assert_eq!(c.now(), Some((1, 1)));
    }
}
