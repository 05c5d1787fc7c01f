//! Attribute macros of [hotexec]: `#[hotexec::main]` and `#[listen]`.
//!
//! Use them through the `hotexec` facade, which re-exports them together with the runtime that
//! the generated code calls; this crate is an implementation detail.
//!
//! [hotexec]: https://docs.rs/hotexec

mod expand;
mod parse;

use proc_macro::TokenStream;

/// Turns `main` into a hotexec server: its listeners survive binary upgrades.
///
/// On the upgrade signal (`SIGUSR2` by default) the running process starts the new binary,
/// hands it the listening sockets, waits until it is ready, then stops accepting and drains
/// (`Shutdown` resolves) while the new one serves.
///
/// # Example
///
/// ```no_run
/// #[hotexec::main(drain_timeout = "30s")]
/// #[listen("127.0.0.1:8080", name = "http")]
/// #[listen("[::1]:9090", name = "admin", backlog = 128)]
/// async fn main(listeners: hotexec::Listeners, shutdown: hotexec::Shutdown) -> std::io::Result<()> {
///     let _ = (listeners, shutdown); // serve until `shutdown` fires, then return
///     Ok(())
/// }
/// ```
///
/// `main` may be `async` (run on a tokio runtime) or not, may return `()` or anything `main`
/// may return (`Result<(), E>`, …), and takes `hotexec::Listeners`, `hotexec::Shutdown`, both
/// in either order, or nothing.
///
/// # Options
///
/// All optional, as `key = value`:
///
/// | option | value | meaning |
/// |---|---|---|
/// | `drain_timeout` | `"30s"` (`ms`, `s`, `m`, `h`) | how long the old process may drain before it exits |
/// | `ready_timeout` | `"10s"` | how long the new binary has to become ready before the upgrade is abandoned |
/// | `upgrade_signal` | `"SIGUSR2"`, `"SIGUSR1"`, `"SIGHUP"` | the signal that starts an upgrade |
/// | `pid_file` | `"/run/app.pid"` | where to write the pid of the process that currently serves |
/// | `ready` | `"auto"` (default) or `"manual"` | with `"manual"` the app calls `hotexec::ready()` itself once warmed up |
/// | `init` | a path, `telemetry::install` | a `fn()` called first, before hotexec starts (install a `tracing` subscriber here) |
/// | `flavor` | `"multi_thread"` (default) or `"current_thread"` | async only: the tokio runtime |
/// | `worker_threads` | an integer ≥ 1 | async, multi-thread only: the runtime's worker threads |
/// | `keeper` | `true` or `false` (default) | the started process stays as a small keeper of the serving generation, so its pid never changes (containers, supervisors) |
/// | `probation` | `"2s"` | how long the old process watches a new generation after the hand-over |
/// | `health` | `true` (default) or `false` | the health-gated commit: a new generation that serves worse than the old one is not committed |
/// | `max_probation` | `"10s"` | how long the probation may wait for `min_sample` requests |
/// | `max_error_rate` | `"2%"` or `"0.02"` | bad answers (5xx, panics, errors) a new generation may give, unless the old one's rate × `max_error_ratio` is higher |
/// | `max_error_ratio` | `2`, `1.5` | times the old generation's error rate a new one may reach |
/// | `min_sample` | `200` | requests a new generation must answer to be committed on its numbers |
///
/// Everything is checked at compile time: a bad duration, signal, address or listener name is
/// an error on the literal at fault.
///
/// # Listeners
///
/// Each `#[listen("ADDR", name = "…", backlog = N)]` **below** `#[hotexec::main]` declares one
/// listening socket; `main` reads and removes them, so they need no `use`. `ADDR` is
/// `IP:PORT` (`[IPv6]:PORT`), `tcp:IP:PORT`, `udp:IP:PORT` or `unix:/absolute/path`. `name`
/// defaults to `"default"` and must be unique; `backlog` is 1 to 65535. Socket options, applied
/// when the socket is bound (an inherited one keeps its own):
///
/// | option | applies to | default |
/// |---|---|---|
/// | `v6only = true \| false` | IPv6 addresses (`IPV6_V6ONLY`) | `true`: `[::]` is IPv6 only |
/// | `reuseport = true \| false` | TCP and UDP (`SO_REUSEPORT`) | `false` |
/// | `mode = 0o660` | `unix:` paths (`chmod` before `listen`) | the umask's |
///
/// # What this expands to
///
/// The example above becomes, in essence:
///
/// ```ignore
/// fn main() -> std::io::Result<()> {
///     // The function as written, renamed: `return`, `?` and error locations are unchanged.
///     async fn __hotexec_main(listeners: hotexec::Listeners, shutdown: hotexec::Shutdown)
///         -> std::io::Result<()> { /* body */ }
///     // `INIT();` comes here when `init = INIT` is given.
///     ::hotexec::__private::Builder::new()
///         .drain_timeout_ms(30000u64)
///         .listen(::hotexec::__private::ListenSpec::new("http", "127.0.0.1:8080"))
///         .listen(::hotexec::__private::ListenSpec::new("admin", "[::1]:9090").backlog(128u32))
///         .run(|__hotexec_listeners, __hotexec_shutdown| {
///             ::hotexec::__private::tokio::runtime::Builder::new_multi_thread()
///                 .enable_all()
///                 .build()
///                 .expect("hotexec: failed to build the tokio runtime")
///                 .block_on(::hotexec::__private::Started::new(
///                     __hotexec_main(__hotexec_listeners, __hotexec_shutdown),
///                 ))
///         })
/// }
/// ```
///
/// Inside the generated `main`, before the builder, comes the ELF note every hotexec binary
/// carries (read by an upgrade's preflight without running the binary):
///
/// ```ignore
/// #[cfg(target_os = "linux")]
/// #[used]
/// #[unsafe(link_section = ".note.hotexec")]
/// static __HOTEXEC_NOTE: ::hotexec::__private::ElfNote = ::hotexec::__private::ElfNote::new(
///     /* option_env!("CARGO_PKG_NAME"), option_env!("CARGO_PKG_VERSION"),
///        option_env!("HOTEXEC_BUILD_ID"), each "" when unset */
/// );
/// ```
///
/// A sync `main` is called directly inside `run`, after `::hotexec::__private::main_started()`.
/// Only the options given are passed to the builder; the runtime has the defaults.
#[proc_macro_attribute]
pub fn main(args: TokenStream, item: TokenStream) -> TokenStream {
    expand::main(args.into(), item.into()).into()
}

/// Declares a listening socket of a [`#[hotexec::main]`](macro@main) function.
///
/// It must be written **below** `#[hotexec::main]`, which consumes it: see
/// [`main`](macro@main#listeners) for the arguments.
///
/// ```no_run
/// #[hotexec::main]
/// #[listen("127.0.0.1:8080")]
/// fn main(listeners: hotexec::Listeners) {
///     let _ = listeners;
/// }
/// ```
///
/// # What this expands to
///
/// Below `#[hotexec::main]` it never expands on its own. Anywhere else (above
/// `#[hotexec::main]`, or without one) it expands to the item unchanged plus a compile error
/// saying where it belongs.
#[proc_macro_attribute]
pub fn listen(_args: TokenStream, item: TokenStream) -> TokenStream {
    expand::listen_misplaced(item.into()).into()
}
