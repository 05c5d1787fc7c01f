//! This generation as the application sees it: its number, the state the previous generation
//! carried over, what it carries to the next one, and when it reports ready. The application
//! reaches it through its [`Shutdown`](crate::Shutdown).

use std::collections::HashMap;
use std::fmt;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex, OnceLock};

use crate::handoff;
use crate::health::Health;
use crate::link::{self, MAX_CARRIED, Record};
use crate::readiness::{Readiness, Reported};

/// Bytes the previous generation carried over ([`Shutdown::inherited`](crate::Shutdown::inherited)).
/// Zeroed in memory when dropped: it may hold keys.
pub struct Carried(zeroize::Zeroizing<Vec<u8>>);

impl std::ops::Deref for Carried {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Carried {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the bytes: they may be keys.
        write!(f, "Carried({} bytes)", self.0.len())
    }
}

/// What runs at each upgrade to produce a key's carried state.
type Provider = Box<dyn Fn() -> Vec<u8> + Send + Sync>;

/// What `ready` does once reported: announce it, and wake the supervisor (set by `start.rs`).
type OnReady = Box<dyn Fn(Reported) + Send + Sync>;

/// This generation.
pub(crate) struct Generation {
    number: u64,
    inherited: Mutex<HashMap<String, Carried>>,
    carry: Mutex<Vec<(String, Provider)>>,
    pub(crate) readiness: Readiness,
    on_ready: OnceLock<OnReady>,
    /// The generation link to the previous generation (see `link.rs`).
    pub(crate) parent_link: Option<OwnedFd>,
    /// Connections the previous generation hands over, until `incoming()` claims them.
    pub(crate) handoff_inbox: Mutex<Option<handoff::Inbox>>,
    /// The hand-off to the generation this one handed over to (or to the rollback generation
    /// that replaced it), if it takes hand-offs.
    pub(crate) handoff: handoff::Successor,
    /// What this generation serves, counted ([`Shutdown::health`](crate::Shutdown::health)).
    pub(crate) health: Health,
    /// How this generation's connections end (issue 19's drain summary).
    pub(crate) drain_count: crate::evidence::DrainCount,
}

impl Generation {
    /// `number`: 1 after a fresh start, +1 per upgrade; `inherited`: what the previous
    /// generation carried; `parent_link`: the link it spawned this one with.
    pub(crate) fn new(
        number: u64,
        inherited: Vec<(String, Vec<u8>)>,
        readiness: Readiness,
        parent_link: Option<OwnedFd>,
    ) -> Generation {
        Generation {
            number,
            inherited: Mutex::new(
                inherited
                    .into_iter()
                    .map(|(k, v)| (k, Carried(zeroize::Zeroizing::new(v))))
                    .collect(),
            ),
            carry: Mutex::new(Vec::new()),
            readiness,
            on_ready: OnceLock::new(),
            parent_link,
            handoff_inbox: Mutex::new(None),
            handoff: handoff::Successor::default(),
            health: Health::new(),
            drain_count: crate::evidence::DrainCount::default(),
        }
    }

    /// A generation outside the runtime (a detached `Shutdown`): number 1, nothing carried.
    pub(crate) fn detached() -> Generation {
        Generation::new(1, Vec::new(), Readiness::new(None, true), None)
    }

    pub(crate) fn number(&self) -> u64 {
        self.number
    }

    pub(crate) fn set_on_ready(&self, f: impl Fn(Reported) + Send + Sync + 'static) {
        let _ = self.on_ready.set(Box::new(f));
    }

    fn reported(&self, r: Reported) {
        if r != Reported::Nothing {
            if let Some(f) = self.on_ready.get() {
                f(r);
            }
        }
    }

    /// `hotexec::ready()`.
    pub(crate) fn ready(&self) {
        self.report_health_before_ready();
        self.reported(self.readiness.ready());
    }

    /// The generated code calls this once the application's `main` runs.
    pub(crate) fn main_started(&self) {
        self.report_health_before_ready();
        self.reported(self.readiness.main_started());
    }

    /// Before READY may be written: a health report to the previous generation, so that when
    /// it reads READY it knows whether this generation counts what it serves (and judges it,
    /// see `health/link.rs`). Sent on each call that may report ready; the extra ones are
    /// harmless (the previous generation keeps the last).
    fn report_health_before_ready(&self) {
        if !self.readiness.started_by_upgrade() || self.readiness.reported() {
            return;
        }
        self.send_health_report();
    }

    /// This generation's health (its counts, and the outcome of its checks, run now) to the
    /// previous generation, which judges it: before READY, then periodically during the
    /// probation (the supervisor's `SendReport`).
    pub(crate) fn send_health_report(&self) {
        if let Some(l) = &self.parent_link {
            let record = crate::health::link::HealthRecord::Report(self.health.report());
            if let Err(e) = link::send(l.as_fd(), &record.to_record()) {
                tracing::debug!("generation link: health report not sent: {e}");
            }
        }
    }

    /// Takes what the previous generation carried under `key`.
    pub(crate) fn take_inherited(&self, key: &str) -> Option<Carried> {
        self.inherited
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key)
    }

    /// Registers what this generation carries to the next one under `key` (replacing an
    /// earlier registration of the same key).
    pub(crate) fn carry(&self, key: &str, f: Provider) {
        let mut carry = self.carry.lock().unwrap_or_else(|p| p.into_inner());
        carry.retain(|(k, _)| k != key);
        carry.push((key.to_owned(), f));
    }

    /// Writes the lineage of the generation being spawned, and everything carried, into
    /// `link` (our end, before the spawn: the child finds it queued). A key too long or state
    /// too large is left out with an error in the log; nothing here fails the upgrade.
    pub(crate) fn send_lineage(&self, link: &OwnedFd, generation: u64) {
        let fd = link.as_fd();
        if let Err(e) = link::send(fd, &Record::Lineage { generation }) {
            tracing::warn!("generation link: cannot send the lineage ({e}): nothing is carried");
            return;
        }
        let carry = self.carry.lock().unwrap_or_else(|p| p.into_inner());
        for (key, f) in carry.iter() {
            let bytes = zeroize::Zeroizing::new(f());
            if key.len() > 255 || bytes.len() > MAX_CARRIED {
                tracing::error!(
                    key,
                    bytes = bytes.len(),
                    "not carried to the next generation: keys are at most 255 bytes and state at most {MAX_CARRIED} bytes"
                );
                continue;
            }
            if let Err(e) = link::send_carried(fd, key, &bytes) {
                tracing::error!(key, "not carried to the next generation: {e}");
            }
        }
        if let Err(e) = link::send(fd, &Record::CarryEnd) {
            tracing::warn!("generation link: {e}");
        }
    }

    /// Tells the previous generation why this one exits before it is ready, then exits 1: the
    /// previous generation keeps serving and its upgrade fails naming `reason`.
    pub(crate) fn fail_start(&self, reason: &str) -> ! {
        tracing::error!("cannot start: {reason}");
        if !tracing::dispatcher::has_been_set() {
            eprintln!("hotexec: cannot start: {reason}");
        }
        if let Some(l) = &self.parent_link {
            let _ = link::send(
                l.as_fd(),
                &Record::StartFailed {
                    reason: reason.to_owned(),
                },
            );
        }
        std::process::exit(1)
    }
}

/// Holds this generation's readiness report until dropped: the previous generation keeps
/// serving meanwhile (from [`Shutdown::hold_ready`](crate::Shutdown::hold_ready)).
#[must_use = "readiness is held only while the ReadyHold lives"]
pub struct ReadyHold {
    generation: Option<Arc<Generation>>,
}

impl fmt::Debug for ReadyHold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReadyHold")
            .field("holding", &self.generation.is_some())
            .finish()
    }
}

impl ReadyHold {
    pub(crate) fn new(generation: &Arc<Generation>) -> ReadyHold {
        let holding = generation.readiness.hold();
        ReadyHold {
            generation: holding.then(|| generation.clone()),
        }
    }

    /// This generation cannot serve: it exits with status 1 before it reports ready, and the
    /// previous generation's upgrade fails with `reason` (in the log, and in the answer to
    /// `hotexec upgrade`). The previous generation keeps serving.
    pub fn fail(self, reason: &str) -> ! {
        match &self.generation {
            Some(g) => g.fail_start(reason),
            None => {
                tracing::error!("cannot serve: {reason}");
                std::process::exit(1)
            }
        }
    }
}

impl Drop for ReadyHold {
    fn drop(&mut self) {
        if let Some(g) = self.generation.take() {
            g.report_health_before_ready();
            g.reported(g.readiness.release());
        }
    }
}
