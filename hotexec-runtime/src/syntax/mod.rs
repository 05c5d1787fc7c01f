//! The textual grammar shared by `#[hotexec::main]` (checked at compile time) and the runtime
//! (environment overrides, checked at start): listen addresses, durations, signal names,
//! listener names and the health gate's values. It is std-only so that `hotexec-macros` can depend on it without the process
//! machinery; a literal the macro accepts is exactly what the runtime will parse.

mod addr;
mod duration;
mod health;
mod name;
mod signal;

pub use addr::{AddrError, ListenAddr};
pub use duration::{DurationError, parse_duration};
pub use health::{HealthValueError, parse_rate, parse_ratio, parse_sample};
pub use name::{NameError, check_listener_name, env_suffix};
pub use signal::{SignalError, UPGRADE_SIGNALS, parse_upgrade_signal};
