//! What `#[hotexec::main]` does before and after the application's `main`: it takes the
//! start-up snapshot, resolves the options, becomes a keeper if keeper mode says so, adopts or
//! binds the listeners, starts the supervisor and the control socket, runs `main`, and after it
//! waits until the process may exit.

use std::os::fd::AsFd;
use std::sync::Arc;

use crate::announce::Announcer;
use crate::config::{Config, Declared};
use crate::generation::Generation;
use crate::handover::Parsed;
use crate::keeper::{self, KeeperChannel};
use crate::listeners::Listeners;
use crate::notify::Notifier;
use crate::readiness::Readiness;
use crate::shutdown::{Shutdown, ShutdownReason};
use crate::supervisor::{self, Held, Setup};
use crate::syntax::ListenAddr;
use crate::upgrade::{self, Current};
use crate::{activation, control, exe, inherit, link, pidfile, socket, startup};

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
    // First: the hand-over variables, before anything could start a thread.
    let startup = startup::take();
    let mut config = Config::resolve(&declared, std::env::vars_os()).unwrap_or_else(|e| fatal(e));
    for w in &config.warnings {
        tracing::warn!("{w}");
    }
    let keeper_fd = startup.keeper.unwrap_or_else(|e| fatal(e));
    let handoff_fd = startup.handoff.unwrap_or_else(|e| fatal(e));
    let link_fd = startup.link.unwrap_or_else(|e| fatal(e));
    // The path the operator started, made absolute now (a relative one would change meaning
    // if the app changed directory) but not resolved through symlinks: each upgrade executes
    // whatever that path leads to then (see exe.rs).
    let exe = exe::resolve_at_start(config.exe.as_deref())
        .unwrap_or_else(|e| fatal(format!("cannot resolve the path of this binary: {e}")));
    let argv: Vec<_> = std::env::args_os().collect();
    let pid = std::process::id();
    let upgraded = matches!(&startup.handover, Ok(Parsed::ForUs(h)) if h.ready_fd.is_some());
    let mut keeper_is_main = false;
    match keeper::role(&config, keeper_fd.is_some(), upgraded) {
        keeper::Role::Keeper => keeper::run(
            config,
            &startup.handover,
            Notifier::new(startup.notify_target, false),
            exe,
            argv,
        ),
        // The pid file names the keeper, which stays: generations leave it alone.
        // So does the service manager's main pid: the keeper speaks for the generations.
        keeper::Role::Generation => {
            config.pid_file = None;
            keeper_is_main = true;
        }
        keeper::Role::Plain => {}
    }

    let adoption = inherit::adopt(&startup.handover, &startup.at_start, &config.listeners)
        .unwrap_or_else(|e| fatal(e));
    for note in &adoption.notes {
        tracing::info!("{note}");
    }
    // What the previous generation queued on the link before it spawned this one.
    let lineage = link_fd
        .as_ref()
        .map(|l| {
            if let Err(e) = link::set_nonblocking(l.as_fd()) {
                fatal(format!("the generation link: {e}"));
            }
            link::read_lineage(l.as_fd())
        })
        .unwrap_or_default();
    let generation = Arc::new(Generation::new(
        lineage.generation.unwrap_or(1),
        lineage.carried,
        Readiness::new(adoption.ready_fd, config.manual_ready),
        link_fd,
    ));
    let announcer = Arc::new(Announcer::new(
        config.pid_file.clone(),
        Notifier::new(startup.notify_target, keeper_is_main),
        keeper_fd.map(KeeperChannel::new),
        generation.clone(),
        exe,
    ));
    let mut held = Vec::new();
    let mut handed = Vec::new();
    for (decl, inherited) in config.listeners.iter().zip(adoption.claimed) {
        let (fd, addr, was_inherited, from_manager) = match inherited {
            Some(s) => {
                let from_manager = s.source == activation::Source::Manager;
                tracing::info!(listener = %decl.name, addr = %inherit::addr_of(&s), from_service_manager = from_manager, "adopted inherited listener");
                let addr = s.info.addr.clone();
                // A path a socket activator bound is the activator's to remove, not ours.
                if let (ListenAddr::Unix(p), Some(name), false) = (&addr, &s.name, from_manager) {
                    if startup.owned_fdnames.iter().any(|n| n == name) {
                        announcer.owned_paths.own(&decl.name, p);
                    }
                }
                (s.fd, addr, true, from_manager)
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
                    announcer.owned_paths.own(&decl.name, p);
                }
                tracing::info!(listener = %decl.name, %addr, "listening");
                (fd, addr, false, false)
            }
        };
        let user = fd
            .try_clone()
            .unwrap_or_else(|e| fatal(format!("listener {:?}: dup failed: {e}", decl.name)));
        handed.push((decl.name.clone(), addr, user, was_inherited));
        held.push(Held {
            name: decl.name.clone(),
            fd,
            from_manager,
        });
    }
    // Said at start, not only at the first upgrade: the server serves, but cannot be upgraded.
    let names: Vec<&str> = held.iter().map(|h| h.name.as_str()).collect();
    if let Err(e) = crate::limits::check_fdnames(&names) {
        tracing::warn!("every upgrade of this server will fail: {e}");
    }
    let named: Vec<_> = held
        .iter()
        .map(|h| (h.name.as_str(), h.fd.as_fd()))
        .collect();
    announcer.evidence.serving(&named, config.drain_timeout);
    drop(named);
    let shutdown = Shutdown::new(config.drain_timeout, generation.clone())
        .unwrap_or_else(|e| fatal(format!("shutdown pipe: {e}")));
    let pid_file = config.pid_file.clone();
    let setup = Setup {
        config: config.clone(),
        argv,
        listeners: held,
        shutdown: shutdown.clone(),
        generation: generation.clone(),
        announcer: announcer.clone(),
    };
    let supervisor = supervisor::start(setup)
        .unwrap_or_else(|e| fatal(format!("cannot install signal handling: {e}")));
    {
        let (announcer, supervisor) = (announcer.clone(), supervisor.clone());
        generation.set_on_ready(move |reported| {
            announcer.ready(reported);
            supervisor.self_ready();
        });
    }
    upgrade::set(Current {
        generation: generation.clone(),
        supervisor: supervisor.clone(),
    });
    let listeners = Listeners::new(handed);
    // A final stop closes, at once, the listeners `main` never took (the supervisor closes its
    // own copies): new clients are then refused (once `main` drops what it took) instead of
    // queued and reset at exit. A service manager's copy (socket activation) is its own and
    // stays open.
    let untaken = listeners.clone();
    shutdown.on_final_stop(move || {
        let idle = untaken.close_untaken();
        tracing::info!(
            closed = idle,
            "final stop: the listeners main never took are closed"
        );
    });
    let activity = control::Activity::default();
    if let Err(e) = control::start(
        upgrade::control_handler(supervisor.clone(), announcer.clone()),
        activity.clone(),
    ) {
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
    tracing::info!(pid, upgraded, generation = generation.number(), "serving");

    *generation
        .handoff_inbox
        .lock()
        .unwrap_or_else(|p| p.into_inner()) = crate::handoff::main_starting(handoff_fd);
    let result = f(listeners, shutdown.clone());

    // A half-started successor is killed; one in its probation is watched until past it.
    supervisor.main_returned();
    // The request that replaced this generation (`hotexec upgrade`) gets its answer first.
    activity.wait_idle(std::time::Duration::from_secs(2));
    if !matches!(shutdown.reason(), Some(ShutdownReason::Upgrade { .. })) {
        announcer.final_cleanup();
    } else {
        // Issue 19: how this generation's connections ended, to the new generation.
        announcer.evidence.drain_done();
    }
    result
}
