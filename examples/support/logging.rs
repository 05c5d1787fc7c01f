//! The one tracing set-up of the examples (their `#[hotexec::main(init = logging::init_tracing)]`).
//!
//! A module of the examples rather than a function of the test kit: the examples are what users
//! copy, and they must name only crates a user can depend on (the kit is not published).

/// Installs a `tracing` subscriber on stderr (`RUST_LOG`, default `info`).
pub fn init_tracing() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
}
