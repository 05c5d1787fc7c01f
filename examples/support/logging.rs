//! The one tracing set-up of the examples (their `#[hotexec::main(init = logging::init_tracing)]`).
//!
//! A module of the examples rather than a function of the test kit: the examples are what users
//! copy, and they must name only crates a user can depend on (the kit is not published).
use std::io::IsTerminal;

/// Installs a `tracing` subscriber on stderr (`RUST_LOG`, default `info`). Colours only when
/// stderr is a terminal and `NO_COLOR` is unset or empty: a server whose stderr goes to a
/// file, a pipe or the journal writes plain text, with no escape codes in its log.
pub fn init_tracing() {
    let colour = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .init();
}
