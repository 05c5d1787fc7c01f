//! The runtime behind `#[hotexec::main]`: adoption of inherited listeners, signal handling, the
//! readiness-gated upgrade and draining. Users depend on the `hotexec` facade, not on this crate.
//!
//! Where to look, by what happens when:
//!
//! | when | files |
//! |---|---|
//! | before `main` | `startup.rs` (the one constructor: every hand-over variable, read once), [`handover`] (the variables and their parser) |
//! | at start | `start.rs` (the sequence), `config.rs` (options and their environment overrides), `inherit.rs` (checks every inherited fd), `activation.rs` (which socket serves which listener), `socket.rs`, `listeners.rs`, `generation.rs` (this generation as the app sees it: number, carried state, readiness holds) |
//! | while serving | `supervisor/` (the thread: `machine/` decides, `mod.rs` does, `spawn_next.rs` starts the next generation), `signals.rs`, [`control`] (the control socket), `upgrade.rs` (`upgrade()`, `ready()`) |
//! | at an upgrade | `exe.rs` (what is executed), `limits.rs` (kernel limits), `spawn.rs` (clone/exec), `readiness.rs` (the readiness pipe, both ends), `link.rs` (the generation link: lineage, carried state, a stop passed on), [`handoff`] (established connections), `notify.rs` (`sd_notify`, both ways) |
//! | every lifecycle event | `announce.rs` (log, pid file, service manager, keeper, previous generation: one place) |
//! | draining and stopping | `shutdown.rs` (the app's `Shutdown`), `deadline.rs` (the drain deadline), `pidfile.rs` |
//! | keeper mode | `keeper.rs` |
//! | evidence (what each upgrade cost, what serves) | [`evidence`] (`report.rs` the report and its recorder, `ledger.rs` this generation's evidence fed by the announcer, `status.rs`, `drain.rs` connection counts, `metrics.rs`, `wire.rs` the control-socket encoding), `kernel.rs` (netstat counters, accept queues, build id) |
//!
//! Without the default `process` feature only [`syntax`] is built: the grammar that
//! `hotexec-macros` checks literals with at compile time.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod syntax;

// Everything below needs the `process` feature (see Cargo.toml); `syntax` does not.
#[cfg(feature = "process")]
mod activation;
#[cfg(feature = "process")]
mod announce;
#[cfg(feature = "process")]
mod config;
#[cfg(feature = "process")]
pub mod control;
#[cfg(feature = "process")]
mod deadline;
#[cfg(feature = "process")]
mod error;
// Issue 19: the evidence of every upgrade (report, status, their wire encoding).
#[cfg(feature = "process")]
pub mod evidence;
#[cfg(feature = "process")]
mod exe;
#[cfg(feature = "process")]
mod generation;
#[cfg(feature = "process")]
pub mod handoff;
#[cfg(feature = "process")]
pub mod health;
#[cfg(feature = "process")]
mod inherit;
#[cfg(feature = "process")]
mod keeper;
// Issue 19 (evidence): kernel readers (netstat counters, accept queues, build id).
#[cfg(feature = "process")]
mod kernel;
#[cfg(feature = "process")]
mod limits;
#[cfg(feature = "process")]
mod link;
#[cfg(feature = "process")]
mod listeners;
#[cfg(feature = "process")]
mod notify;
#[cfg(feature = "process")]
mod pidfile;
#[cfg(feature = "process")]
pub mod preflight;
#[cfg(feature = "process")]
#[doc(hidden)]
pub mod private;
#[cfg(feature = "process")]
mod readiness;
#[cfg(feature = "process")]
mod shutdown;
#[cfg(feature = "process")]
mod signals;
#[cfg(feature = "process")]
mod socket;
#[cfg(feature = "process")]
mod spawn;
#[cfg(feature = "process")]
mod start;
#[cfg(feature = "process")]
mod startup;
#[cfg(feature = "process")]
mod supervisor;
#[cfg(feature = "process")]
mod upgrade;
// The hand-over's variables and parser: for the fuzzers and tools that speak the protocol,
// not an API an application calls.
#[cfg(feature = "process")]
#[doc(hidden)]
pub mod handover;

#[cfg(feature = "process")]
pub use crate::{
    config::{
        DEFAULT_DRAIN_TIMEOUT, DEFAULT_READY_TIMEOUT, ENV_DRAIN_TIMEOUT, ENV_KEEPER,
        ENV_LISTEN_PREFIX, ENV_PID_FILE, ENV_READY_TIMEOUT, ENV_UPGRADE_SIGNAL,
    },
    error::UpgradeError,
    evidence::{UpgradeFailed, UpgradeReport},
    generation::{Carried, ReadyHold},
    listeners::Listeners,
    shutdown::{Shutdown, ShutdownReason},
    upgrade::{ready, upgrade},
};
