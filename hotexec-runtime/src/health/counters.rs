//! The counters behind [`Health`](super::Health): one increment per outcome on the request
//! path, no lock, and no cache line that cores write in turn.
//!
//! A single `AtomicU64` per outcome is correct, but every increment takes its cache line away
//! from the core that wrote it last, so on a server with many cores serving at once every
//! request pays a cross-core transfer, more the more cores there are. Each counter is
//! therefore striped: [`STRIPES`] copies, each on cache lines of its own, and a thread always
//! increments the copy it was given the first time it counted (tokio's worker threads live as
//! long as the runtime, so in practice every worker has its own stripe). A snapshot sums the
//! stripes; it is not atomic across counters, which a rate over many requests does not notice
//! (reports are taken every few hundred milliseconds, not per request). What it costs, measured
//! against one shared atomic, is in BENCHMARKS.md ("Health counters").

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// What is counted, one slot each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub(crate) enum Slot {
    /// Responses 100–199.
    Informational,
    /// Responses 200–299.
    Success,
    /// Responses 300–399.
    Redirection,
    /// Responses 400–499.
    ClientError,
    /// Responses 500 and up.
    ServerError,
    /// A handler panicked (answered 500 by the facade; counted here, not as a 5xx).
    Panic,
    /// A request that got no answer: the service returned an error.
    Error,
    /// A connection was served.
    Connection,
    /// A connection ended by the server's fault (a service or body error, an accept error).
    ConnectionFailed,
}

/// Number of [`Slot`]s.
pub(crate) const SLOTS: usize = 9;

/// Number of stripes: a power of two, more than the cores of most servers (threads past it
/// share stripes, which is still correct, only slower).
pub(crate) const STRIPES: usize = 32;

/// One stripe: the slots a thread increments, alone on its cache lines (128 bytes: the
/// adjacent-line prefetcher of x86 pulls pairs of 64-byte lines).
#[repr(align(128))]
#[derive(Default)]
struct Stripe([AtomicU64; SLOTS]);

/// Striped counters; see the module docs.
pub(crate) struct Counters {
    stripes: Box<[Stripe; STRIPES]>,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            stripes: Box::new(std::array::from_fn(|_| Stripe::default())),
        }
    }
}

/// Hands each thread a stripe index, round robin.
static NEXT_STRIPE: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    // Why a thread-local (and the static above): the stripe must be found on the request path
    // without a lock or a shared write; the index is the thread's, not state of an upgrade.
    static MY_STRIPE: Cell<usize> = const { Cell::new(usize::MAX) };
}

#[inline]
fn my_stripe() -> usize {
    MY_STRIPE
        .try_with(|s| {
            let i = s.get();
            if i != usize::MAX {
                return i;
            }
            let i = NEXT_STRIPE.fetch_add(1, Ordering::Relaxed);
            s.set(i);
            i
        })
        // During the thread's teardown (a destructor that counts): any stripe is correct.
        .unwrap_or(0)
        // A mask, not `%`: in bounds by construction, so the index needs no check.
        & (STRIPES - 1)
}

impl Counters {
    /// Adds one to `slot`.
    #[inline]
    pub(crate) fn add(&self, slot: Slot) {
        // Relaxed: each counter is a sum read only by snapshots; nothing is ordered by it.
        self.stripes[my_stripe()].0[slot as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// The sum of every stripe, per slot.
    pub(crate) fn sum(&self) -> [u64; SLOTS] {
        let mut out = [0u64; SLOTS];
        for stripe in self.stripes.iter() {
            for (o, c) in out.iter_mut().zip(&stripe.0) {
                *o = o.wrapping_add(c.load(Ordering::Relaxed));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn stripes_are_cache_line_apart() {
        assert_eq!(std::mem::align_of::<Stripe>(), 128);
        assert!(std::mem::size_of::<Stripe>() >= SLOTS * 8);
        assert!(STRIPES.is_power_of_two());
    }

    #[test]
    fn every_increment_of_every_thread_is_summed() {
        let c = Arc::new(Counters::default());
        let threads: Vec<_> = (0..STRIPES + 3)
            .map(|t| {
                let c = c.clone();
                std::thread::spawn(move || {
                    for i in 0..1000 {
                        c.add(if (i + t) % 3 == 0 {
                            Slot::ServerError
                        } else {
                            Slot::Success
                        });
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let sum = c.sum();
        assert_eq!(
            sum[Slot::Success as usize] + sum[Slot::ServerError as usize],
            (STRIPES as u64 + 3) * 1000
        );
        assert_eq!(sum[Slot::Panic as usize], 0);
    }
}
