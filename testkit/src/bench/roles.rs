//! The environment between a benchmark driver and the servers it starts: the example binary
//! that drives a benchmark is also the server it measures, in the role named by [`ROLE_VAR`]
//! (`examples/support/servers.rs` runs the roles; [`Target`](super::targets::Target) starts
//! them).

/// Selects the role of a process of the example binary.
pub const ROLE_VAR: &str = "HOTEXEC_EXAMPLE_ROLE";
/// Address of the `plain` and `reuseport` roles.
pub const ADDR_VAR: &str = "PLAIN_ADDR";
/// Pid file the `plain` and `reuseport` roles write once listening.
pub const PID_FILE_VAR: &str = "PLAIN_PID_FILE";
/// Number of listeners of the `many` role.
pub const MANY_COUNT_VAR: &str = "MANY_COUNT";
/// File where the `many` role writes the port of its first and last listener.
pub const MANY_PORTS_VAR: &str = "MANY_PORTS_FILE";
/// `1`: the `many` role's listeners get the longest names allowed (64 characters, `l000…0`),
/// so that a couple of thousand of them pass the kernel's limit on one environment string.
pub const MANY_LONG_NAMES_VAR: &str = "MANY_LONG_NAMES";
/// `1`: the `axum` role serves with plain `axum::serve` (inherited by its upgrades, which
/// re-execute this binary with the same environment).
pub const AXUM_PLAIN_VAR: &str = "AXUM_PLAIN_SHUTDOWN";
