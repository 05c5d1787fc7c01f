//! The servers the `demo` and `bench` examples run, as roles of their own binary: a process
//! started with `HOTEXEC_EXAMPLE_ROLE=<role>` is a server, not a driver. Cargo builds only the
//! example it runs, so containing the servers is what lets `cargo run --example demo` work from
//! a fresh clone; and an upgrade re-executes this same binary, with the role inherited.
//!
//! Every role serves [`http_server::serve`](super::http_server::serve): the comparison is
//! between ways of restarting the same server, not between servers.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::path::Path;

use super::{http_server, logging};

use hotexec_testkit::bench::roles::{
    ADDR_VAR, AXUM_PLAIN_VAR, MANY_COUNT_VAR, MANY_LONG_NAMES_VAR, MANY_PORTS_VAR, PID_FILE_VAR,
    ROLE_VAR,
};

/// Runs the role named in [`ROLE_VAR`] and returns true, or returns false when there is none
/// (this process is the driver).
pub fn dispatch() -> bool {
    let Ok(role) = std::env::var(ROLE_VAR) else {
        return false;
    };
    let result = match role.as_str() {
        "hotexec" => hotexec_http(),
        "plain" => plain_http(false),
        "reuseport" => plain_http(true),
        "many" => many_listeners(),
        "axum" => axum_app(),
        other => Err(std::io::Error::other(format!(
            "{ROLE_VAR}={other:?}: expected hotexec, plain, reuseport, many or axum"
        ))),
    };
    if let Err(e) = result {
        eprintln!("server role {role}: {e}");
        std::process::exit(1);
    }
    true
}

/// The `http` example, verbatim: hotexec upgrades on SIGUSR2.
#[hotexec::main(drain_timeout = "30s", init = logging::init_tracing)]
#[listen("127.0.0.1:8080", name = "http")]
pub async fn hotexec_http(
    listeners: hotexec::Listeners,
    shutdown: hotexec::Shutdown,
) -> std::io::Result<()> {
    let listener = listeners.take_tokio_tcp("http")?;
    http_server::serve(listener, shutdown).await
}

/// An axum app as axum's docs show, under hotexec: served with `hotexec::serve`, or with
/// plain `axum::serve(..).with_graceful_shutdown(..)` when [`AXUM_PLAIN_VAR`] is `1`: the two
/// ways the benchmark compares. Both upgrade the same way; only the draining differs.
#[hotexec::main(drain_timeout = "30s", init = logging::init_tracing)]
#[listen("127.0.0.1:3000", name = "http")]
pub async fn axum_app(
    listeners: hotexec::Listeners,
    shutdown: hotexec::Shutdown,
) -> std::io::Result<()> {
    use axum::{Router, routing::get};
    let app = Router::new().route(
        "/",
        get(|| async { format!("pid={}\n", std::process::id()) }),
    );
    let listener = listeners.take_tokio_tcp("http")?;
    if std::env::var_os(AXUM_PLAIN_VAR).is_some_and(|v| v == "1") {
        return axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                shutdown.await;
            })
            .await;
    }
    hotexec::serve(listener, app, shutdown).await
}

/// The same server without hotexec: binds itself (with `SO_REUSEPORT` when `reuseport`, so a
/// second copy can bind the same port), writes its pid file, serves until SIGTERM, drains.
fn plain_http(reuseport: bool) -> std::io::Result<()> {
    logging::init_tracing();
    let addr: SocketAddr = std::env::var(ADDR_VAR)
        .map_err(|_| std::io::Error::other(format!("{ADDR_VAR} is not set")))?
        .parse()
        .map_err(|e| std::io::Error::other(format!("{ADDR_VAR}: {e}")))?;
    let listener = bind(addr, reuseport)?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener)?;
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            if let Ok(p) = std::env::var(PID_FILE_VAR) {
                write_atomic(Path::new(&p), &format!("{}\n", std::process::id()))?;
            }
            // The same drain as with hotexec, resolved by this process's own SIGTERM.
            let shutdown = hotexec::Shutdown::detached(std::time::Duration::from_secs(30))?;
            let stop = shutdown.clone();
            tokio::spawn(async move {
                term.recv().await;
                stop.resolve(hotexec::ShutdownReason::Stop {
                    signal: libc::SIGTERM,
                });
            });
            http_server::serve(listener, shutdown).await
        })
}

fn bind(addr: SocketAddr, reuseport: bool) -> std::io::Result<std::net::TcpListener> {
    use nix::sys::socket::{
        AddressFamily, Backlog, SockFlag, SockType, SockaddrStorage, bind, listen, setsockopt,
        socket, sockopt,
    };
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd: OwnedFd = socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    if reuseport {
        setsockopt(&fd, sockopt::ReusePort, &true)?;
    }
    bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrStorage::from(addr),
    )?;
    listen(&fd, Backlog::MAXCONN)?;
    let l = std::net::TcpListener::from(fd);
    l.set_nonblocking(true)?;
    Ok(l)
}

/// Writes `text` to `path` through a temporary file and a rename.
pub fn write_atomic(path: &Path, text: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

/// A hotexec server with `MANY_COUNT` (default 1,000) listeners on `127.0.0.1:0`, each serving
/// HTTP: the scale check of the benchmark. Uses the builder `#[hotexec::main]` expands to,
/// since the number of listeners is not known at compile time.
fn many_listeners() -> std::io::Result<()> {
    use hotexec::__private::{Builder, ListenSpec, Started};
    logging::init_tracing();
    let n: usize = std::env::var(MANY_COUNT_VAR)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let long = std::env::var(MANY_LONG_NAMES_VAR).as_deref() == Ok("1");
    let names: Vec<&'static str> = (0..n)
        .map(|i| {
            let name = if long {
                format!("l{i:063}")
            } else {
                format!("l{i}")
            };
            &*Box::leak(name.into_boxed_str())
        })
        .collect();
    let mut builder = Builder::new().drain_timeout_ms(30_000);
    for name in &names {
        builder = builder.listen(ListenSpec::new(name, "127.0.0.1:0"));
    }
    builder.run(move |listeners, shutdown| {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(Started::new(async move {
                let mut tasks = Vec::new();
                let mut ports = Vec::new();
                for name in &names {
                    let l = listeners.take_tokio_tcp(name)?;
                    ports.push(l.local_addr()?.port());
                    tasks.push(tokio::spawn(http_server::serve(l, shutdown.clone())));
                }
                if let Ok(p) = std::env::var(MANY_PORTS_VAR) {
                    let first = ports.first().copied().unwrap_or(0);
                    let last = ports.last().copied().unwrap_or(0);
                    write_atomic(Path::new(&p), &format!("{first} {last}\n"))?;
                }
                for t in tasks {
                    t.await.map_err(std::io::Error::other)??;
                }
                Ok(())
            }))
    })
}
