//! The one place a lifecycle event is announced: to the log, the pid file, the service manager
//! (`sd_notify`), the keeper, and the previous generation (on the readiness pipe). The
//! supervisor decides *that* something happened; this module says so to everyone who must hear
//! it, always together and in the same order.
//!
//! | event | log | pid file | service manager | keeper | previous generation |
//! |---|---|---|---|---|---|
//! | a fresh start is ready | — | written at start | `READY=1` | — | — |
//! | an upgrade starts | what it executes | — | `RELOADING=1` | `reloading` | — |
//! | an upgrade failed | why | — | `READY=1` | `upgrade-failed` | — |
//! | a new pid serves (upgrade, rollback, orphan taking over) | yes | new pid | `MAINPID` + `READY=1` | `serving <pid>` | handed on |
//! | a health verdict (issue 18) | by the supervisor | — | — | — | — (the upgrade's evidence gets its numbers) |
//! | a final stop begins | yes | — | `STOPPING=1` | `stopping` | stopping |
//! | the process ends after a final stop | — | removed if ours | — | — | — |
//! | the successor it reaped exited | — | — | — | `exited <pid> <code>` | — |

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use crate::generation::Generation;
use crate::keeper::KeeperChannel;
use crate::notify::Notifier;
use crate::readiness::{HANDED_ON, Reported, STOPPING};
use crate::socket::OwnedPaths;
use crate::supervisor::event::Announcement;
use crate::{exe, pidfile};

/// Everyone who hears about this generation's lifecycle.
pub(crate) struct Announcer {
    /// `None` in keeper mode (the keeper's pid is in the file) or when there is none.
    pub pid_file: Option<PathBuf>,
    pub notifier: Notifier,
    pub keeper: Option<KeeperChannel>,
    pub generation: Arc<Generation>,
    /// Unix socket paths to remove on a final stop.
    pub owned_paths: OwnedPaths,
    /// What upgrades execute.
    pub exe: PathBuf,
    /// When the current upgrade started, for the log.
    started: std::sync::Mutex<Option<Instant>>,
    /// The evidence of every upgrade (issue 19): the report is recorded from these
    /// announcements, logged at the end of the `upgrade` span, counted in the metrics.
    pub evidence: crate::evidence::Ledger,
}

impl Announcer {
    pub(crate) fn new(
        pid_file: Option<PathBuf>,
        notifier: Notifier,
        keeper: Option<KeeperChannel>,
        generation: Arc<Generation>,
        exe: PathBuf,
    ) -> Announcer {
        let evidence = crate::evidence::Ledger::new(generation.clone(), exe.clone());
        Announcer {
            evidence,
            pid_file,
            notifier,
            keeper,
            generation,
            owned_paths: OwnedPaths::default(),
            exe,
            started: std::sync::Mutex::new(None),
        }
    }

    /// What the supervisor decided.
    pub(crate) fn announce(&self, what: &Announcement) {
        match what {
            Announcement::UpgradeStarted { trigger } => {
                self.evidence.started(crate::evidence::trigger_of(*trigger));
                *self.started.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
                exe::log_upgrade_target(&self.exe);
                self.notifier.reloading();
                if let Some(k) = &self.keeper {
                    k.reloading();
                }
            }
            Announcement::UpgradeFailed { error } => {
                tracing::error!("upgrade failed: {error}; this generation keeps serving");
                self.evidence.finished(Err(error));
                // Leave the reloading state: this process stays the main pid.
                self.notifier.ready_again();
                if let Some(k) = &self.keeper {
                    k.upgrade_failed();
                }
            }
            Announcement::HandedOver {
                new_pid,
                rollback,
                judged,
            } => {
                self.serves(*new_pid);
                // The generation before this one, if it is still in its probation, must not
                // roll back.
                self.generation.readiness.tell_parent(HANDED_ON);
                let elapsed_ms = self
                    .started
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .take()
                    .map(|t| t.elapsed().as_secs_f64() * 1e3);
                if *rollback {
                    // Its MAINPID is only accepted under NotifyAccess=all: this process stopped
                    // being the main pid at the hand-over, and systemd has seen that pid die.
                    tracing::warn!(
                        new_pid,
                        "rolled back: a new process running this generation's code serves again"
                    );
                } else {
                    tracing::info!(
                        new_pid,
                        elapsed_ms,
                        "upgrade: new generation is ready; this one stops accepting and drains"
                    );
                    self.evidence.handed_over(*new_pid, *judged);
                }
            }
            Announcement::Verdict {
                new_pid,
                error,
                figures,
            } => {
                // Logged by the supervisor with the numbers; here it reaches the evidence.
                self.evidence
                    .verdict(*new_pid, error.as_deref(), &figures.0);
            }
            Announcement::Stopping { signal } => {
                tracing::info!(signal = %signal, "stopping: draining in-flight work");
                self.notifier.stopping();
                if let Some(k) = &self.keeper {
                    k.stopping();
                }
                // The previous generation, if it is still in its probation, must not roll back.
                self.generation.readiness.tell_parent(STOPPING);
            }
        }
    }

    /// This generation reaped its successor (it died while this one drained): under a keeper,
    /// the keeper, which cannot reap it, hears how it ended, and exits with that status if it
    /// was the serving generation.
    pub(crate) fn successor_exited(&self, pid: u32, code: i32) {
        if let Some(k) = &self.keeper {
            k.exited(pid, code);
        }
    }

    /// What reporting ready did (see `readiness.rs`).
    pub(crate) fn ready(&self, reported: Reported) {
        let pid = std::process::id();
        match reported {
            Reported::Nothing => {}
            Reported::Fresh => self.notifier.ready(),
            Reported::ToParent => {
                tracing::info!(pid, "reported ready to the previous generation")
            }
            Reported::ParentGone => {
                // Taking over rather than exiting: this process holds every listener and is
                // ready, and nothing else serves; exiting would turn a crash of the old
                // generation into an outage. Serving unannounced is the one wrong answer.
                let msg = "the previous generation is gone (it died while this one warmed up): taking over as the serving generation";
                tracing::warn!(pid, "{msg}");
                // Rare and what an operator looks for afterwards: to stderr too when the
                // application logs nothing.
                if !tracing::dispatcher::has_been_set() {
                    eprintln!("hotexec: pid {pid}: {msg}");
                }
                self.serves(pid);
            }
        }
    }

    /// `pid` is the serving generation now: the pid file names it, the keeper forwards to it,
    /// the service manager takes it as the main pid.
    fn serves(&self, pid: u32) {
        if let Some(p) = &self.pid_file {
            if let Err(e) = pidfile::write(p, pid) {
                tracing::error!("{e}");
            }
        }
        if let Some(k) = &self.keeper {
            k.serving(pid);
        }
        self.notifier.handed_over(pid);
    }

    /// The process ends after a final stop (main returned, the drain deadline, a second stop
    /// signal): the pid file if it still names this process, and the Unix socket paths it
    /// bound. Never after an upgrade: the pid file and the paths are the successor's then.
    pub(crate) fn final_cleanup(&self) {
        if let Some(p) = &self.pid_file {
            pidfile::remove_if_ours(p, std::process::id());
        }
        self.owned_paths.remove_all();
    }
}
