//! Property tests of the two parsers that read operator- or parent-controlled text: the protocol
//! variables (`protocol::Snapshot::parse`) and listen addresses (`syntax::ListenAddr::parse`).
//!
//! Case counts are kept modest so this runs in seconds; `PROPTEST_CASES=100000 cargo test -p
//! hotexec-runtime --test fuzz` runs a longer campaign.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;

use hotexec_runtime::handover::{FDS_START, Parsed, Snapshot};
use hotexec_runtime::syntax::ListenAddr;
use proptest::prelude::*;

const MY_PID: u32 = 4242;

fn cases(default: u32) -> ProptestConfig {
    let n = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    ProptestConfig {
        cases: n,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Numbers around every boundary the parser has, in the forms an attacker would try.
fn number() -> impl Strategy<Value = String> {
    prop_oneof![
        (0u64..16).prop_map(|n| n.to_string()),
        Just(MY_PID.to_string()),
        Just((MY_PID + 1).to_string()),
        Just(i32::MAX.to_string()),
        Just((i32::MAX as u64 + 1).to_string()),
        Just(u64::MAX.to_string()),
        Just("18446744073709551616".to_string()),
        Just((1u64 << 20).to_string()),
        Just(((1u64 << 20) + 1).to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        (0u64..16).prop_map(|n| format!("+{n}")),
        (0u64..16).prop_map(|n| format!(" {n}")),
        (0u64..16).prop_map(|n| format!("{n}\n")),
        (0u64..16).prop_map(|n| format!("0{n}")),
        (0u64..16).prop_map(|n| format!("0x{n}")),
    ]
}

/// Any value a variable could hold: numbers, name lists, arbitrary text, invalid UTF-8.
fn value() -> impl Strategy<Value = OsString> {
    prop_oneof![
        4 => number().prop_map(OsString::from),
        2 => proptest::collection::vec(
            prop_oneof![Just("http".to_string()), Just("unknown".to_string()), Just(String::new()), "[a-z:]{0,6}"],
            0..5,
        )
        .prop_map(|v| OsString::from(v.join(":"))),
        1 => ".{0,12}".prop_map(OsString::from),
        1 => proptest::collection::vec(any::<u8>(), 0..8).prop_map(OsString::from_vec),
    ]
}

/// Well-formed hand-overs with small variations: the count matches the names, so the checks
/// past the syntax (duplicates, the readiness fd's place) are reached often.
fn coherent() -> impl Strategy<Value = Snapshot> {
    (
        proptest::collection::vec(
            prop_oneof![
                Just("http"),
                Just("admin"),
                Just("unknown"),
                Just(""),
                Just("app.socket")
            ],
            0..4,
        ),
        proptest::option::of(0u32..10),
    )
        .prop_map(|(names, ready)| Snapshot {
            listen_pid: Some(MY_PID.to_string().into()),
            listen_fds: Some(names.len().to_string().into()),
            listen_fdnames: (!names.is_empty()).then(|| names.join(":").into()),
            ready_fd: ready.map(|r| r.to_string().into()),
            activated_fds: None,
        })
}

fn snapshot() -> impl Strategy<Value = Snapshot> {
    prop_oneof![coherent(), arbitrary_snapshot()]
}

fn arbitrary_snapshot() -> impl Strategy<Value = Snapshot> {
    (
        proptest::option::weighted(
            0.9,
            prop_oneof![3 => Just(OsString::from(MY_PID.to_string())), 1 => value()],
        ),
        proptest::option::of(value()),
        proptest::option::of(value()),
        proptest::option::of(value()),
        proptest::option::of(value()),
    )
        .prop_map(
            |(listen_pid, listen_fds, listen_fdnames, ready_fd, activated_fds)| Snapshot {
                listen_pid,
                listen_fds,
                listen_fdnames,
                ready_fd,
                activated_fds,
            },
        )
}

proptest! {
    #![proptest_config(cases(4000))]

    /// Never panics; a hand-over is accepted only for this pid, with fds numbered 3, 4, … in
    /// order, and a readiness fd that is not one of them; a refusal names one of the variables.
    #[test]
    fn protocol_parse_holds_its_invariants(snap in snapshot()) {
        let mine = OsString::from(MY_PID.to_string());
        match snap.parse(MY_PID) {
            Ok(Parsed::Absent) => prop_assert!(snap.is_empty()),
            Ok(Parsed::NotForUs(why)) => {
                prop_assert!(!why.is_empty());
                prop_assert!(snap.listen_pid.as_ref() != Some(&mine));
            }
            Ok(Parsed::ForUs(h)) => {
                prop_assert_eq!(snap.listen_pid.as_ref(), Some(&mine));
                for (i, (fd, name)) in h.fds.iter().enumerate() {
                    prop_assert_eq!(*fd, FDS_START + i as i32);
                    if let Some(n) = name {
                        prop_assert!(!n.is_empty() && n != "unknown" && !n.contains(':'));
                    }
                }
                // A socket unit's name may be on several fds (systemd's default names).
                let named: Vec<_> = h
                    .fds
                    .iter()
                    .filter_map(|(_, n)| n.as_deref())
                    .filter(|n| !hotexec_runtime::handover::is_unit_name(n))
                    .collect();
                let mut dedup = named.clone();
                dedup.sort_unstable();
                dedup.dedup();
                prop_assert_eq!(named.len(), dedup.len(), "a name is given to two fds: {:?}", named);
                // The service manager's fds are among the passed ones, once each, in order.
                prop_assert!(h.from_manager.windows(2).all(|w| w[0] < w[1]));
                // (fds are 3, 4, … in order, checked above; LISTEN_FDS may be a million)
                let end = FDS_START + h.fds.len() as i32;
                prop_assert!(h.from_manager.iter().all(|fd| (FDS_START..end).contains(fd)));
                if h.ready_fd.is_none() {
                    prop_assert_eq!(h.from_manager.len(), h.fds.len());
                }
                if let Some(r) = h.ready_fd {
                    prop_assert!(r >= FDS_START);
                    prop_assert!(r >= FDS_START + h.fds.len() as i32, "ready fd {} inside the listen range", r);
                }
            }
            Err(e) => {
                prop_assert!(hotexec_runtime::handover::ALL.contains(&e.var));
                prop_assert!(e.to_string().contains(e.var));
            }
        }
    }

    /// The same variables for any other pid are never a hand-over.
    #[test]
    fn protocol_parse_for_another_pid_is_never_for_us(snap in snapshot(), other in 1u32..) {
        prop_assume!(other != MY_PID);
        let meant_for_other = snap.listen_pid == Some(OsString::from(MY_PID.to_string()));
        if meant_for_other {
            prop_assert!(!matches!(snap.parse(other), Ok(Parsed::ForUs(_))));
        }
    }

    /// Never panics on arbitrary text; whatever parses prints back to an equal address.
    #[test]
    fn listen_addr_parse_round_trips(input in prop_oneof![
        ".{0,40}",
        "(tcp:|udp:|unix:)?[0-9a-f:.\\[\\]/%]{0,40}",
        "(tcp:|udp:)?\\[[0-9a-f:]{0,20}\\]:[0-9]{0,6}",
        "(tcp:|udp:)?[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}:[0-9]{0,6}",
        "unix:/.{0,120}",
    ]) {
        match ListenAddr::parse(&input) {
            Ok(a) => {
                let shown = a.to_string();
                prop_assert_eq!(ListenAddr::parse(&shown), Ok(a.clone()), "{} printed as {}", input, shown);
                prop_assert!(shown.starts_with(a.kind()));
            }
            Err(e) => {
                let quoted = format!("`{input}`");
                prop_assert!(e.to_string().contains(&quoted));
            }
        }
    }

    /// Every well-formed IP address and port parses, in each of the spellings.
    #[test]
    fn listen_addr_accepts_every_socket_addr(sa in any::<std::net::SocketAddr>(), udp in any::<bool>()) {
        let sa = match sa {
            // Flow info and scope ids are not part of the grammar (nor of `Display`).
            std::net::SocketAddr::V6(v6) => std::net::SocketAddr::V6(std::net::SocketAddrV6::new(*v6.ip(), v6.port(), 0, 0)),
            v4 => v4,
        };
        let want = if udp { ListenAddr::Udp(sa) } else { ListenAddr::Tcp(sa) };
        let text = if udp { format!("udp:{sa}") } else { sa.to_string() };
        prop_assert_eq!(ListenAddr::parse(&text), Ok(want.clone()));
        prop_assert_eq!(ListenAddr::parse(&want.to_string()), Ok(want));
    }
}
