//! What the supervisor thread hears: it sleeps on its fds (signals, the wake pipe, the child's
//! pidfd and readiness pipe, the links to both neighbouring generations) and turns what arrived
//! into [`Event`]s for the machine. The other half of the shell, acting on the machine's
//! actions, is in `mod.rs`.

use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use super::Shell;
use super::event::{Event, News};
use crate::health::link::HealthRecord;
use crate::link::{self, Received, Record};
use crate::readiness::Said;
use crate::signals;

impl Shell {
    /// Sleeps until something happens or the next deadline.
    pub(super) fn wait(&self) {
        let next = match (self.machine.next_deadline(), self.next_progress) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let timeout = match next {
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                PollTimeout::from(u16::try_from(left.as_millis() + 1).unwrap_or(u16::MAX))
            }
            None => PollTimeout::NONE,
        };
        let mut fds = vec![
            PollFd::new(self.sig_r.as_fd(), PollFlags::POLLIN),
            PollFd::new(self.wake_r.as_fd(), PollFlags::POLLIN),
        ];
        if let (true, Some(l)) = (self.parent_link_open, &self.setup.generation.parent_link) {
            fds.push(PollFd::new(l.as_fd(), PollFlags::POLLIN));
        }
        let children = self
            .child
            .iter()
            .chain(self.successor.iter().map(|s| &s.child));
        for c in children {
            c.poll_fds(&mut fds);
        }
        for c in &self.rejected {
            c.poll_exit_fd(&mut fds);
        }
        // Without pidfds (old kernels) a child's exit is noticed by polling every 50 ms.
        let timeout = if self.child_without_pidfd() {
            PollTimeout::from(50u16).min(timeout)
        } else {
            timeout
        };
        if let Err(e) = poll(&mut fds, timeout) {
            if e != nix::errno::Errno::EINTR {
                tracing::error!("supervisor poll failed: {}", e.desc());
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    fn child_without_pidfd(&self) -> bool {
        let children = self
            .child
            .iter()
            .chain(self.successor.iter().map(|s| &s.child))
            .chain(&self.rejected);
        children.into_iter().any(|c| c.pidfd.is_none() && !c.reaped)
    }

    /// What happened since the last wake-up, in the order the machine should hear it: stops
    /// and requests first, then what the children said, then their exits.
    pub(super) fn collect(&mut self) -> Vec<Event> {
        let mut events = Vec::new();
        // Readiness first, from the flag set before the READY byte is written: a signal sent
        // because of that byte (the keeper forwards a held upgrade signal once it reads it)
        // must find this generation ready, whatever woke the supervisor first.
        if !self.told_ready && self.setup.generation.readiness.reported() {
            self.told_ready = true;
            events.push(Event::SelfReady);
        }
        // The previous generation's verdict before signals: an upgrade signal sent once the
        // pid file names this generation finds it committed (the verdict is sent first).
        self.read_parent_link(&mut events);
        let upgrade_signal = self.setup.config.upgrade_signal;
        for sig in signals::drain(&self.sig_r) {
            events.push(if sig == upgrade_signal {
                Event::UpgradeSignal
            } else {
                Event::StopSignal(sig)
            });
        }
        let mut buf = [0u8; 64];
        while matches!(nix::unistd::read(&self.wake_r, &mut buf), Ok(n) if n > 0) {}
        let inbox =
            std::mem::take(&mut *self.handle.inbox.lock().unwrap_or_else(|p| p.into_inner()));
        if inbox.main_returned {
            events.push(Event::MainReturned);
        }
        for (trigger, reply) in inbox.requests {
            let w = self.next_waiter;
            self.next_waiter += 1;
            self.replies.insert(w, reply);
            events.push(Event::Request(w, trigger));
        }
        if let Some(c) = &mut self.child {
            let pid = c.pid;
            // The health report it sends just before READY decides whether it is judged: what
            // it said on its readiness pipe is read first, then its link (everything it sent
            // before READY is there by then), and the reports go to the machine first.
            let said_on_pipe = c.ready.read();
            c.read_link();
            for report in c.reports.drain(..) {
                events.push(Event::HealthReport { pid, report });
            }
            for said in said_on_pipe {
                events.push(match said {
                    Said::Ready => Event::ChildReady { pid },
                    Said::ExecFailed(errno) => Event::ExecFailed {
                        pid,
                        errno,
                        path: c.exe.clone(),
                    },
                    Said::Closed | Said::Garbage(_) => Event::ReadyClosed { pid },
                    // After READY: the successor's news (see below).
                    Said::HandedOn => Event::SuccessorNews {
                        pid,
                        news: News::HandedOn,
                    },
                    Said::Stopping => Event::SuccessorNews {
                        pid,
                        news: News::Stopping,
                    },
                });
            }
            if c.notify_ready() {
                tracing::info!("the new generation reported READY=1 on its notify socket");
                events.push(Event::ChildReady { pid });
            }
            if let Some(exit) = c.exited() {
                events.push(Event::ChildExited { pid, exit });
            }
        }
        if let Some(s) = &mut self.successor {
            let pid = s.child.pid;
            for said in s.child.ready.read() {
                match said {
                    Said::HandedOn => events.push(Event::SuccessorNews {
                        pid,
                        news: News::HandedOn,
                    }),
                    Said::Stopping => events.push(Event::SuccessorNews {
                        pid,
                        news: News::Stopping,
                    }),
                    Said::Closed => {}
                    other => tracing::debug!(new_pid = pid, ?other, "readiness pipe after ready"),
                }
            }
            // During its probation it reports its health (issue 18).
            s.child.read_link();
            for report in s.child.reports.drain(..) {
                events.push(Event::HealthReport { pid, report });
            }
            if let Some(exit) = s.child.exited() {
                // Reaped here, the keeper cannot see how it ended: it is told.
                self.setup.announcer.successor_exited(pid, exit.code);
                events.push(Event::ChildExited { pid, exit });
            }
        }
        self.rejected.retain_mut(|c| match c.exited() {
            Some(exit) => {
                tracing::info!(
                    new_pid = c.pid,
                    "the generation that was not committed has exited ({})",
                    exit.how
                );
                false
            }
            None => true,
        });
        events
    }

    /// Records of the previous generation (a stop passed on).
    fn read_parent_link(&mut self, events: &mut Vec<Event>) {
        let Some(l) = (self.parent_link_open)
            .then_some(())
            .and(self.setup.generation.parent_link.as_ref())
        else {
            return;
        };
        // Bounded per wake-up: a flood cannot keep the supervisor from signals and deadlines.
        for _ in 0..64 {
            match link::recv(l.as_fd()) {
                Received::Record(Record::Stop) => {
                    tracing::info!("the previous generation passed a stop on to this one");
                    events.push(Event::StopPassedOn);
                }
                Received::Record(Record::Other { kind, bytes })
                    if self.setup.announcer.evidence.received(kind, &bytes) => {}
                Received::Record(r @ Record::Other { .. }) => match HealthRecord::from_record(&r) {
                    Some(Ok(HealthRecord::Verdict(v))) => events.push(Event::Verdict(v)),
                    Some(Ok(other)) => tracing::debug!(
                        ?other,
                        "generation link: health record from the previous generation"
                    ),
                    Some(Err(why)) => tracing::warn!(
                        "generation link: refused {why} from the previous generation"
                    ),
                    None => {
                        tracing::debug!(?r, "generation link: record from the previous generation")
                    }
                },
                Received::Record(other) => {
                    tracing::debug!(
                        ?other,
                        "generation link: record from the previous generation"
                    )
                }
                Received::Refused(why) => {
                    tracing::warn!("generation link: refused {why} from the previous generation")
                }
                Received::Empty => return,
                Received::Closed => {
                    self.parent_link_open = false;
                    events.push(Event::ParentGone);
                    return;
                }
            }
        }
    }
}
