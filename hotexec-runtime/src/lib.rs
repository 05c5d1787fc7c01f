//! The runtime behind `#[hotexec::main]`: adoption of inherited listeners, signal handling, the
//! readiness-gated upgrade and draining. Users depend on the `hotexec` facade, not on this crate.
//!
//! Where to look: [`protocol`] (the hand-over between generations), `inherit.rs` (start-up
//! checks), `spawn.rs` (fork/exec of the new generation), `upgrade.rs` (the supervisor and its
//! state machine), `keeper.rs` (keeper mode), [`control`] (the control socket), `drain.rs` (the drain deadline), `ready.rs`, `pidfile.rs`, `signals.rs`.
//!
//! Without the default `process` feature only [`syntax`] is built: the grammar that
//! `hotexec-macros` checks literals with at compile time.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod syntax;

macro_rules! process_modules {
    ($($(#[$a:meta])* $vis:vis mod $m:ident;)*) => { $( #[cfg(feature = "process")] $(#[$a])* $vis mod $m; )* };
}

process_modules! {
    mod config;
    pub mod control;
    mod drain;
    mod error;
    mod inherit;
    mod keeper;
    mod listeners;
    pub mod pidfile;
    pub mod protocol;
    mod ready;
    mod shutdown;
    pub mod socket;
    mod signals;
    mod spawn;
    mod start;
    mod upgrade;
    #[doc(hidden)] pub mod private;
}

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
    start::upgrade,
};
