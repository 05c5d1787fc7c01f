//! Where this generation hands its connections: the generation it handed over to, and, if that
//! one dies within its probation, the rollback generation started in its place.
//!
//! A connection offered to a successor that dies before acknowledging it comes back
//! ([`Returned`](super::Returned)); the session that got it back serves it on, and is told
//! (through [`Successor::changed`]) when a rollback generation that takes hand-offs is ready, so
//! it can offer it again instead of draining it.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use super::Handoff;

/// The hand-off to the generation that serves after this one, as it changes. Cheap to clone;
/// got from [`Shutdown::successor`](crate::Shutdown::successor).
#[derive(Clone, Default)]
pub struct Successor {
    inner: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    /// Bumped by every change.
    version: u64,
    current: Option<Handoff>,
    /// Every hand-off this generation had (the upgrade's, a rollback's), for the counts.
    all: Vec<Handoff>,
    wakers: Vec<Waker>,
}

impl std::fmt::Debug for Successor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.lock();
        f.debug_struct("Successor")
            .field("version", &st.version)
            .field("current", &st.current)
            .finish()
    }
}

impl Successor {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The runtime, when a generation it handed over to (an upgrade's, or a rollback's) is
    /// ready: `Some` if it takes hand-offs.
    pub(crate) fn set(&self, handoff: Option<Handoff>) {
        let wakers = {
            let mut st = self.lock();
            st.version += 1;
            st.all.extend(handoff.clone());
            st.current = handoff;
            std::mem::take(&mut st.wakers)
        };
        for w in wakers {
            w.wake();
        }
    }

    /// The hand-off to the latest generation this one handed over to, if it takes hand-offs.
    pub fn current(&self) -> Option<Handoff> {
        self.lock().current.clone()
    }

    /// How many connections this generation has handed off, to every generation it handed
    /// over to.
    pub fn handed_off(&self) -> u64 {
        self.lock().all.iter().map(Handoff::handed_off).sum()
    }

    /// How many connections came back from every generation this one handed over to.
    pub fn returned(&self) -> u64 {
        self.lock().all.iter().map(Handoff::returned).sum()
    }

    /// Resolves at the next change after this call: a new generation this one handed over to
    /// (a rollback's) is ready.
    pub fn changed(&self) -> Changed {
        Changed {
            successor: self.clone(),
            seen: self.lock().version,
        }
    }
}

/// The future of [`Successor::changed`].
#[must_use = "futures do nothing unless polled"]
pub struct Changed {
    successor: Successor,
    seen: u64,
}

impl Future for Changed {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut st = self.successor.lock();
        if st.version != self.seen {
            return Poll::Ready(());
        }
        if !st.wakers.iter().any(|w| w.will_wake(cx.waker())) {
            st.wakers.push(cx.waker().clone());
        }
        Poll::Pending
    }
}
