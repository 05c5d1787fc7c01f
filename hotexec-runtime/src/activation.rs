//! Which inherited socket serves which `#[listen]`, and where each socket came from.
//!
//! A socket comes either from a **service manager** (systemd, `systemd-socket-activate`: a
//! hand-over without `HOTEXEC_READY_FD`, or one whose `HOTEXEC_ACTIVATED_FDS` lists it), or from
//! a **hotexec generation** that bound it from its declaration. The service manager is
//! authoritative: the address lives in its `.socket` unit, and the `#[listen]` literal is only the
//! default for runs without one. So, in this order:
//!
//! 1. **By name.** An fd named like a declared listener serves it, whatever its address (it must
//!    be of the same kind: tcp, udp, unix). Exception, for sockets hotexec bound itself: when the
//!    declaration moved (a new build changed the literal), the new address is bound, the old
//!    socket closed, and the log says so.
//! 2. A hotexec socket without a name (hotexec names every socket it passes, so only a foreign
//!    parent's can be) is matched by address under [`socket::matches`], first fit.
//! 3. **By address**, for the service manager's sockets still unclaimed: unnamed ones (no
//!    `LISTEN_FDNAMES`, `unknown`, empty), ones named after their unit (`app.socket`, systemd's
//!    default when `FileDescriptorName=` is unset), and ones whose name no listener has. A
//!    socket and a listener pair when each is the other's only candidate under
//!    [`socket::covers`]: same port, and the same address or a wildcard (a dual-stack `[::]`
//!    serves `0.0.0.0` and `127.0.0.1` declarations).
//! 4. **By kind.** Where exactly one listener of a kind (tcp, udp, unix) and exactly one of the
//!    service manager's sockets of that kind are left, and that socket is unnamed or named
//!    after its unit, they pair.
//! 5. Any of the service manager's sockets still unclaimed is an error at start naming every
//!    such fd and every listener left: never a silent close and rebind. Listeners left without
//!    a socket are bound from their declaration; hotexec sockets left over are closed.
//!
//! The service manager's sockets are passed on to every later generation as such
//! (`HOTEXEC_ACTIVATED_FDS`), so they stay adopted by name even when a new build declares
//! another address.

use std::collections::HashMap;
use std::os::fd::RawFd;

use crate::socket;
use crate::syntax::ListenAddr;

/// Where an inherited socket came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Source {
    /// A service manager, directly or through earlier generations.
    Manager,
    /// A hotexec generation, which bound it from its declaration.
    Hotexec,
}

/// An inherited socket, as the rules see it.
#[derive(Clone, Debug)]
pub(crate) struct Found {
    pub fd: RawFd,
    pub name: Option<String>,
    pub addr: ListenAddr,
    /// IPv6 and taking IPv4 clients too.
    pub dual_stack: bool,
    pub source: Source,
}

/// A declared listener, as the rules see it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Wanted<'a> {
    pub name: &'a str,
    pub addr: &'a ListenAddr,
}

/// The outcome of [`assign`].
#[derive(Debug)]
pub(crate) struct Assignment {
    /// For each declared listener (same order), the index in `found` of the socket serving it.
    pub claimed: Vec<Option<usize>>,
    /// Lines for the log: sockets served on another address than declared, sockets closed.
    pub notes: Vec<String>,
}

/// No name, or systemd's default name: the unit's (`app.socket`). Listener names cannot hold a
/// `.`, so no declared name looks like one. (`unknown` and empty names are unnamed already.)
fn anonymous(f: &Found) -> bool {
    f.name.as_deref().is_none_or(crate::handover::is_unit_name)
}

fn describe(f: &Found) -> String {
    match &f.name {
        Some(n) => format!("fd {} (named {n:?}) on {}", f.fd, f.addr),
        None => format!("fd {} on {}", f.fd, f.addr),
    }
}

/// Applies the rules of this module. Pure: no fd is touched.
pub(crate) fn assign(found: &[Found], wanted: &[Wanted<'_>]) -> Result<Assignment, String> {
    let mut notes = Vec::new();
    let mut claimed: Vec<Option<usize>> = vec![None; wanted.len()];
    let mut owner: Vec<Option<usize>> = vec![None; found.len()];
    fn pair(f: usize, w: usize, claimed: &mut [Option<usize>], owner: &mut [Option<usize>]) {
        claimed[w] = Some(f);
        owner[f] = Some(w);
    }
    let serving_passed = |f: &Found, w: &Wanted<'_>, how: &str| {
        format!(
            "listener {:?} is declared on {} but the service manager passed {} ({how}): serving the passed socket; the declared address applies only when none is passed",
            w.name,
            w.addr,
            describe(f)
        )
    };

    // 1. By name. Linear in the number of listeners: a name is looked up, not searched.
    let by_name: HashMap<&str, usize> = wanted
        .iter()
        .enumerate()
        .map(|(i, w)| (w.name, i))
        .collect();
    for (i, f) in found.iter().enumerate() {
        let Some(&w) = f.name.as_deref().and_then(|n| by_name.get(n)) else {
            continue;
        };
        let decl = &wanted[w];
        if f.addr.kind() != decl.addr.kind() {
            return Err(format!(
                "inherited {} but listener {:?} is declared as {}",
                describe(f),
                decl.name,
                decl.addr
            ));
        }
        match f.source {
            Source::Manager => {
                if !socket::matches(decl.addr, &f.addr) {
                    notes.push(serving_passed(f, decl, "by name"));
                }
                pair(i, w, &mut claimed, &mut owner);
            }
            Source::Hotexec if socket::matches(decl.addr, &f.addr) => pair(i, w, &mut claimed, &mut owner),
            Source::Hotexec => notes.push(format!(
                "inherited listener {:?} is on {} but it is now declared on {}: binding the new address, closing the inherited socket (hotexec bound it, no service manager passed it)",
                decl.name, f.addr, decl.addr
            )),
        }
    }

    // 2. A hotexec socket without a name: by exact address, first fit.
    for (i, f) in found.iter().enumerate() {
        if f.source != Source::Hotexec || f.name.is_some() || owner[i].is_some() {
            continue;
        }
        if let Some(w) = (0..wanted.len())
            .find(|&w| claimed[w].is_none() && socket::matches(wanted[w].addr, &f.addr))
        {
            pair(i, w, &mut claimed, &mut owner);
        }
    }

    // 3. The service manager's sockets by address: pairs that are each other's only candidate,
    // until no new pair appears (each round pairs at least one, so at most one round a socket).
    let manager = |i: usize, owner: &[Option<usize>]| {
        found[i].source == Source::Manager && owner[i].is_none()
    };
    loop {
        let open: Vec<usize> = (0..found.len()).filter(|&i| manager(i, &owner)).collect();
        let candidates: Vec<Vec<usize>> = open
            .iter()
            .map(|&i| {
                (0..wanted.len())
                    .filter(|&w| {
                        claimed[w].is_none()
                            && socket::covers(wanted[w].addr, &found[i].addr, found[i].dual_stack)
                    })
                    .collect()
            })
            .collect();
        let mut rivals = vec![0usize; wanted.len()];
        for c in &candidates {
            for &w in c {
                rivals[w] += 1;
            }
        }
        let mut progress = false;
        for (&i, c) in open.iter().zip(&candidates) {
            if let [w] = c[..] {
                if rivals[w] == 1 {
                    if !socket::matches(wanted[w].addr, &found[i].addr) {
                        notes.push(serving_passed(&found[i], &wanted[w], "by address"));
                    }
                    pair(i, w, &mut claimed, &mut owner);
                    progress = true;
                }
            }
        }
        if !progress {
            break;
        }
    }

    // 4. By kind: the only listener of a kind left and the only such socket left.
    for kind in ["tcp", "udp", "unix"] {
        let fs: Vec<usize> = (0..found.len())
            .filter(|&i| manager(i, &owner) && found[i].addr.kind() == kind)
            .collect();
        let ws: Vec<usize> = (0..wanted.len())
            .filter(|&w| claimed[w].is_none() && wanted[w].addr.kind() == kind)
            .collect();
        if let ([i], [w]) = (&fs[..], &ws[..]) {
            if anonymous(&found[*i]) {
                let how = format!("the only {kind} socket left, for the only {kind} listener left");
                notes.push(serving_passed(&found[*i], &wanted[*w], &how));
                pair(*i, *w, &mut claimed, &mut owner);
            }
        }
    }

    // 5. What is left.
    let unclaimed: Vec<&Found> = (0..found.len())
        .filter(|&i| manager(i, &owner))
        .map(|i| &found[i])
        .collect();
    if !unclaimed.is_empty() {
        let fds: Vec<String> = unclaimed.iter().map(|f| describe(f)).collect();
        let left: Vec<String> = (0..wanted.len())
            .filter(|&w| claimed[w].is_none())
            .map(|w| format!("{:?} on {}", wanted[w].name, wanted[w].addr))
            .collect();
        return Err(format!(
            "the service manager passed {} that no #[listen] can be matched with: {}; listeners without a socket: {}. A passed socket serves the listener of its name (FileDescriptorName= in the .socket unit, --fdname= of systemd-socket-activate), else the one on its address, else the only listener of its kind left: name the sockets after the listeners, or pass only sockets the program declares",
            if unclaimed.len() == 1 {
                "a socket"
            } else {
                "sockets"
            },
            fds.join(", "),
            if left.is_empty() {
                "none".to_owned()
            } else {
                left.join(", ")
            }
        ));
    }
    for (i, f) in found.iter().enumerate() {
        if owner[i].is_none() {
            notes.push(format!(
                "inherited {} is claimed by no #[listen]: closed",
                describe_closed(f)
            ));
        }
    }
    Ok(Assignment { claimed, notes })
}

/// As the log has always said it: `fd 3 (named "x") (tcp:…)`.
fn describe_closed(f: &Found) -> String {
    match &f.name {
        Some(n) => format!("fd {} (named {n:?}) ({})", f.fd, f.addr),
        None => format!("fd {} ({})", f.fd, f.addr),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(fd: RawFd, name: Option<&str>, addr: &str, source: Source) -> Found {
        Found {
            fd,
            name: name.map(Into::into),
            addr: ListenAddr::parse(addr).unwrap(),
            dual_stack: addr.starts_with("[::]"),
            source,
        }
    }

    fn run(
        found: &[Found],
        decls: &[(&str, &str)],
    ) -> Result<(Vec<Option<usize>>, Vec<String>), String> {
        let addrs: Vec<ListenAddr> = decls
            .iter()
            .map(|(_, a)| ListenAddr::parse(a).unwrap())
            .collect();
        let wanted: Vec<Wanted<'_>> = decls
            .iter()
            .zip(&addrs)
            .map(|((name, _), addr)| Wanted { name, addr })
            .collect();
        assign(found, &wanted).map(|a| (a.claimed, a.notes))
    }

    use Source::{Hotexec, Manager};

    #[test]
    fn a_named_passed_socket_serves_its_listener_wherever_it_is() {
        let (claimed, notes) = run(
            &[found(3, Some("http"), "127.0.0.1:42969", Manager)],
            &[("http", "127.0.0.1:8080"), ("admin", "127.0.0.1:8081")],
        )
        .unwrap();
        assert_eq!(claimed, [Some(0), None]);
        assert!(
            notes[0].contains("declared on tcp:127.0.0.1:8080 but the service manager passed fd 3"),
            "{notes:?}"
        );
    }

    #[test]
    fn a_socket_hotexec_bound_is_rebound_when_the_declaration_moved() {
        let (claimed, notes) = run(
            &[found(3, Some("http"), "127.0.0.1:42969", Hotexec)],
            &[("http", "127.0.0.1:8080")],
        )
        .unwrap();
        assert_eq!(claimed, [None]);
        assert!(notes[0].contains("binding the new address, closing the inherited socket"));
        assert!(notes[1].contains("claimed by no #[listen]: closed"));
        let (claimed, _) = run(
            &[found(3, Some("http"), "127.0.0.1:8080", Hotexec)],
            &[("http", "127.0.0.1:8080")],
        )
        .unwrap();
        assert_eq!(claimed, [Some(0)]);
    }

    #[test]
    fn unnamed_passed_sockets_by_address_then_by_kind() {
        let (claimed, _) = run(
            &[
                found(3, None, "[::]:8080", Manager),
                found(4, Some("app.socket"), "127.0.0.1:9000", Manager),
                found(5, None, "unix:/run/app.sock", Manager),
            ],
            &[
                ("web", "0.0.0.0:8080"),
                ("metrics", "127.0.0.1:9000"),
                ("unix", "unix:/tmp/other.sock"),
                ("udp", "udp:127.0.0.1:5300"),
            ],
        )
        .unwrap();
        // The UDP listener is left to be bound.
        assert_eq!(claimed, [Some(0), Some(1), Some(2), None]);
        // By kind alone: one TCP socket, one TCP listener.
        let (claimed, _) = run(
            &[found(3, Some("app.socket"), "0.0.0.0:80", Manager)],
            &[("http", "127.0.0.1:8080"), ("dns", "udp:127.0.0.1:53")],
        )
        .unwrap();
        assert_eq!(claimed, [Some(0), None]);
    }

    #[test]
    fn what_cannot_be_told_apart_is_an_error_naming_everything() {
        let e = run(
            &[
                found(3, None, "127.0.0.1:1000", Manager),
                found(4, None, "127.0.0.1:2000", Manager),
            ],
            &[("http", "127.0.0.1:8080"), ("admin", "127.0.0.1:8081")],
        )
        .unwrap_err();
        for needle in [
            "fd 3 on tcp:127.0.0.1:1000",
            "fd 4 on tcp:127.0.0.1:2000",
            "\"http\" on tcp:127.0.0.1:8080",
            "\"admin\" on tcp:127.0.0.1:8081",
        ] {
            assert!(e.contains(needle), "{needle}: {e}");
        }
        // A name no listener has is not paired by kind: it was meant for something else.
        let e = run(
            &[found(3, Some("metrics"), "127.0.0.1:1000", Manager)],
            &[("http", "127.0.0.1:8080")],
        )
        .unwrap_err();
        assert!(e.contains("fd 3 (named \"metrics\")"), "{e}");
        // A socket left over with every listener served.
        let e = run(
            &[
                found(3, Some("http"), "127.0.0.1:1000", Manager),
                found(4, None, "127.0.0.1:2000", Manager),
            ],
            &[("http", "127.0.0.1:8080")],
        )
        .unwrap_err();
        assert!(
            e.contains("fd 4 on tcp:127.0.0.1:2000") && e.contains("without a socket: none"),
            "{e}"
        );
        // A name on a socket of another kind.
        let e = run(
            &[found(3, Some("http"), "udp:127.0.0.1:1000", Manager)],
            &[("http", "127.0.0.1:8080")],
        )
        .unwrap_err();
        assert!(e.contains("is declared as tcp:127.0.0.1:8080"), "{e}");
    }

    #[test]
    fn a_hotexec_socket_left_over_is_closed_not_refused() {
        let (claimed, notes) = run(
            &[
                found(3, Some("old"), "127.0.0.1:1000", Hotexec),
                found(4, Some("http"), "127.0.0.1:2000", Manager),
            ],
            &[("http", "127.0.0.1:8080")],
        )
        .unwrap();
        assert_eq!(claimed, [Some(1)]);
        assert!(
            notes.iter().any(|n| n.contains(
                "fd 3 (named \"old\") (tcp:127.0.0.1:1000) is claimed by no #[listen]: closed"
            )),
            "{notes:?}"
        );
    }
}
