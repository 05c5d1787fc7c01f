//! What `#[hotexec::main]` does before and after the application's `main`.

use std::os::fd::AsFd;
use std::sync::Arc;

use crate::config::{Config, Declared};
use crate::listeners::Listeners;
use crate::shutdown::{Shutdown, ShutdownReason};
use crate::syntax::ListenAddr;
use crate::{activation, control, exe, inherit, keeper, notify, pidfile, ready, socket, trigger};

/// Refuses to start: the message goes to the app's tracing subscriber if it has one, and to
/// stderr otherwise, then the process exits 1. In a new generation this makes the upgrade fail
/// cleanly: the old generation sees it exit before ready and keeps serving.
fn fatal(msg: String) -> ! {
    if tracing::dispatcher::has_been_set() {
        tracing::error!("hotexec: cannot start: {msg}");
    }
    eprintln!("hotexec: cannot start: {msg}");
    std::process::exit(1)
}

/// Runs `f` as the application's main, inside the hotexec runtime.
pub(crate) fn run<R>(declared: Declared, f: impl FnOnce(Listeners, Shutdown) -> R) -> R {
    // First: the protocol variables, before anything could start a thread.
    let snap = inherit::snapshot();
    let mut config = Config::resolve(&declared, std::env::vars_os()).unwrap_or_else(|e| fatal(e));
    for w in &config.warnings {
        tracing::warn!("{w}");
    }
    // The path the operator started, made absolute now (a relative one would change meaning
    // if the app changed directory) but not resolved through symlinks: each upgrade executes
    // whatever that path leads to then (see exe.rs).
    let exe = exe::resolve_at_start()
        .unwrap_or_else(|e| fatal(format!("cannot resolve the path of this binary: {e}")));
    let argv: Vec<_> = std::env::args_os().collect();
    let pid = std::process::id();
    match keeper::role(&config, &snap).unwrap_or_else(|e| fatal(e)) {
        keeper::Role::Keeper => keeper::run(config, &snap, exe, argv),
        // The pid file names the keeper, which stays: generations leave it alone.
        // So does the service manager's main pid: the keeper speaks for the generations.
        keeper::Role::Generation => {
            config.pid_file = None;
            notify::keeper_is_main_pid();
        }
        keeper::Role::Plain => {}
    }
    // The connection hand-off channel, judged with the hand-over (issue 20: lead, fold into the
    // start-up snapshot's validation).
    crate::handoff::check_start(&snap).unwrap_or_else(|e| fatal(e));

    let adoption = inherit::adopt(&snap, &config.listeners).unwrap_or_else(|e| fatal(e));
    for note in &adoption.notes {
        tracing::info!("{note}");
    }
    let upgraded = adoption.ready_fd.is_some();
    let mut sockets = Vec::new();
    let mut handed = Vec::new();
    for (decl, inherited) in config.listeners.iter().zip(adoption.claimed) {
        let (fd, addr, was_inherited) = match inherited {
            Some(s) => {
                let from_manager = s.source == activation::Source::Manager;
                tracing::info!(listener = %decl.name, addr = %inherit::addr_of(&s), from_service_manager = from_manager, "adopted inherited listener");
                let addr = s.info.addr.clone();
                if from_manager {
                    // Passed on as the service manager's, to every later generation.
                    activation::record(&decl.name);
                }
                // A path a socket activator bound is the activator's to remove, not ours.
                if let (ListenAddr::Unix(p), Some(name), false) = (&addr, &s.name, from_manager) {
                    if inherit::path_is_owned(name) {
                        socket::own_path(&decl.name, p);
                    }
                }
                (s.fd, addr, true)
            }
            None => {
                let fd = socket::bind(&decl.addr, &decl.opts).unwrap_or_else(|e| {
                    let via = decl
                        .overridden_by
                        .as_deref()
                        .map(|v| format!(" (from {v})"))
                        .unwrap_or_default();
                    fatal(format!(
                        "listener {:?}: cannot listen on {}{via}: {e}",
                        decl.name, decl.addr
                    ))
                });
                let addr = socket::local_addr(fd.as_fd()).unwrap_or_else(|_| decl.addr.clone());
                if let ListenAddr::Unix(p) = &addr {
                    socket::own_path(&decl.name, p);
                }
                tracing::info!(listener = %decl.name, %addr, "listening");
                (fd, addr, false)
            }
        };
        let user = fd
            .try_clone()
            .unwrap_or_else(|e| fatal(format!("listener {:?}: dup failed: {e}", decl.name)));
        handed.push((decl.name.clone(), addr, user, was_inherited));
        sockets.push((decl.name.clone(), fd));
    }
    // Said at start, not only at the first upgrade: the server serves, but cannot be upgraded.
    let names: Vec<&str> = sockets.iter().map(|(n, _)| n.as_str()).collect();
    if let Err(e) = crate::limits::check_fdnames(&names) {
        tracing::warn!("every upgrade of this server will fail: {e}");
    }
    let shutdown = Shutdown::new(config.drain_timeout)
        .unwrap_or_else(|e| fatal(format!("shutdown pipe: {e}")));
    ready::arm(
        adoption.ready_fd,
        config.manual_ready,
        config.pid_file.clone(),
    );
    let pid_file = config.pid_file.clone();
    // A bad HOTEXEC_SPAWN is an error now, not at the first upgrade.
    if let Err(e) = crate::spawn::method() {
        fatal(e.to_string());
    }
    let ctx = crate::upgrade::start(config, exe, argv, sockets, shutdown.clone())
        .unwrap_or_else(|e| fatal(format!("cannot install signal handling: {e}")));
    let listeners = Listeners::new(handed);
    // A final stop closes hotexec's own copies at once, and those `main` never took: new
    // clients are then refused (once `main` drops what it took) instead of queued and reset at
    // exit. A service manager's copy (socket activation) is its own and stays open.
    let weak = Arc::downgrade(&ctx);
    let untaken = listeners.clone();
    shutdown.on_final_stop(move || {
        let ours = weak.upgrade().map_or(0, |c| c.close_listeners());
        let idle = untaken.close_untaken();
        tracing::info!(
            closed = ours + idle,
            "final stop: hotexec's copies of the listeners are closed"
        );
    });
    trigger::set(ctx.clone());
    if let Err(e) = control::start(trigger::control_handler()) {
        tracing::warn!(
            "no control socket ({e}): `hotexec upgrade` cannot reach this process; the upgrade signal still works"
        );
    }
    // Written once the signal handlers and the control socket are in place, so whoever reads
    // the pid can upgrade at once. The new generation of an upgrade leaves the pid file to the
    // old one, which writes it only once this process has reported ready.
    if let (Some(p), false) = (&pid_file, upgraded) {
        pidfile::write(p, pid).unwrap_or_else(|e| fatal(e.to_string()));
    }
    tracing::info!(pid, upgraded, "serving");

    crate::handoff::main_starting();
    let result = f(listeners, shutdown.clone());

    if matches!(shutdown.reason(), Some(ShutdownReason::Upgrade { .. })) {
        // Stay able to roll back until the successor has outlived its probation.
        ctx.wait_settled();
    }
    ctx.kill_pending();
    // The request that replaced this generation (`hotexec upgrade`) gets its answer first.
    control::wait_idle(std::time::Duration::from_secs(2));
    if !matches!(shutdown.reason(), Some(ShutdownReason::Upgrade { .. })) {
        if let Some(p) = &pid_file {
            pidfile::remove_if_ours(p, pid);
        }
        socket::remove_owned_paths();
    }
    result
}
