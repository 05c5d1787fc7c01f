//! The runtime behind `#[hotexec::main]`: adoption of inherited listeners, signal handling, the
//! readiness-gated upgrade and draining. Users depend on the `hotexec` facade, not on this crate.
//!
//! Where to look: [`protocol`] (the hand-over between generations), `inherit.rs` (start-up
//! checks), `activation.rs` (which inherited socket serves which listener, and which came from
//! a service manager), `exe.rs` (what an upgrade executes), `spawn.rs` (fork/exec of the new generation), `limits.rs` (the kernel limits an upgrade must fit), `upgrade.rs` (the supervisor and its
//! state machine), `keeper.rs` (keeper mode), [`control`] (the control socket), `trigger.rs`
//! (`upgrade()` and the control handler of a generation), [`handoff`] (established connections
//! passed to the new generation), `drain.rs` (the
//! drain deadline), `ready.rs`, `notify.rs` (`sd_notify` to the service manager, and from a new
//! generation), `pidfile.rs`, `signals.rs`.
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
mod config;
#[cfg(feature = "process")]
pub mod control;
#[cfg(feature = "process")]
mod drain;
#[cfg(feature = "process")]
mod error;
// Issue 19: the evidence of every upgrade (report, status, their wire encoding).
#[cfg(feature = "process")]
pub mod evidence;
#[cfg(feature = "process")]
mod exe;
#[cfg(feature = "process")]
pub mod handoff;
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
mod listeners;
#[cfg(feature = "process")]
mod notify;
#[cfg(feature = "process")]
pub mod pidfile;
#[cfg(feature = "process")]
#[doc(hidden)]
pub mod private;
#[cfg(feature = "process")]
pub mod protocol;
#[cfg(feature = "process")]
mod ready;
#[cfg(feature = "process")]
mod shutdown;
#[cfg(feature = "process")]
mod signals;
#[cfg(feature = "process")]
pub mod socket;
#[cfg(feature = "process")]
mod spawn;
#[cfg(feature = "process")]
mod start;
#[cfg(feature = "process")]
mod trigger;
#[cfg(feature = "process")]
mod upgrade;

#[cfg(feature = "process")]
pub use crate::{
    config::{
        DEFAULT_DRAIN_TIMEOUT, DEFAULT_READY_TIMEOUT, ENV_DRAIN_TIMEOUT, ENV_KEEPER,
        ENV_LISTEN_PREFIX, ENV_PID_FILE, ENV_READY_TIMEOUT, ENV_UPGRADE_SIGNAL,
    },
    error::UpgradeError,
    listeners::Listeners,
    ready::ready,
    shutdown::{Shutdown, ShutdownReason},
    trigger::upgrade,
};
