//! Preflight on real binaries: the examples carry the note `#[hotexec::main]` writes (read
//! without running them, also after `strip`), a socket-activation program without hotexec
//! carries none and is allowed, and a real build whose note names another hand-over protocol
//! is refused. Through a running server's control socket too (`check`: nothing is started).

use std::path::Path;
use std::time::Duration;

use hotexec::control::{self, Reply};
use hotexec::preflight::{Format, HANDOVER_VERSION, preflight};
use hotexec_testkit::prelude::*;

/// A copy of `from` at `to` whose hotexec note says hand-over protocols `min..=max`: a real
/// binary that runs, refused only because of what its note says.
fn with_range(from: &Path, to: &Path, min: u16, max: u16) {
    let mut bytes = std::fs::read(from).unwrap();
    // namesz 8, descsz 128, type 1, "hotexec\0", then the desc (format 1 first).
    let mut header = Vec::new();
    header.extend(8u32.to_ne_bytes());
    header.extend(128u32.to_ne_bytes());
    header.extend(1u32.to_ne_bytes());
    header.extend(b"hotexec\0");
    let at = bytes
        .windows(header.len())
        .position(|w| w == header.as_slice())
        .expect("the hotexec note in the binary")
        + header.len();
    assert_eq!(bytes[at], 1, "note format");
    bytes[at + 2..at + 4].copy_from_slice(&min.to_le_bytes());
    bytes[at + 4..at + 6].copy_from_slice(&max.to_le_bytes());
    std::fs::write(to, bytes).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn examples_carry_the_note_and_others_do_not() {
    let axum = example("axum");
    let p = preflight(&axum).unwrap();
    let note = p.note.as_ref().expect("the axum example's hotexec note");
    assert_eq!(note.hotexec, env!("CARGO_PKG_VERSION"));
    assert_eq!(note.app, format!("hotexec {}", env!("CARGO_PKG_VERSION")));
    assert!(note.accepts(HANDOVER_VERSION));
    assert!(matches!(p.format, Format::Elf { .. }));
    assert!(p.build_id.is_some(), "{p}");
    assert!(!p.same_as_running);

    // `strip` keeps it: the note is an allocated section.
    let dir = Scratch::new("preflight");
    let stripped = dir.0.join("axum-stripped");
    if let Some(strip) = tool("strip") {
        // Panics if strip fails or outlives the limit.
        hotexec_testkit::tools::run(
            std::process::Command::new(strip)
                .arg("-o")
                .arg(&stripped)
                .arg(&axum),
            "binutils",
            Duration::from_secs(60),
        );
        let s = preflight(&stripped).unwrap();
        assert_eq!(s.note, p.note, "the note after strip");
    }

    // A socket-activation program not built with #[hotexec::main]: allowed, no note.
    let other = preflight(&example("listenfd_server")).unwrap();
    assert_eq!(other.note, None);
    assert!(other.to_string().contains("note: none"), "{other}");
}

#[test]
fn a_real_build_with_another_protocol_range_is_refused_naming_both() {
    let dir = Scratch::new("preflight-range");
    let next = dir.0.join("http-next");
    with_range(
        &example("http"),
        &next,
        HANDOVER_VERSION + 1,
        HANDOVER_VERSION + 2,
    );
    let e = preflight(&next).unwrap_err();
    assert_eq!(e.kind(), "incompatible");
    let text = e.to_string();
    assert!(
        text.contains(&format!(
            "hand-over protocols {} to {}",
            HANDOVER_VERSION + 1,
            HANDOVER_VERSION + 2
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!("speaks hand-over protocol {HANDOVER_VERSION}")),
        "{text}"
    );
    // The same bytes with our range again: accepted (only the note decided).
    with_range(&example("http"), &next, HANDOVER_VERSION, HANDOVER_VERSION);
    assert!(preflight(&next).is_ok());
}

/// `check` on the control socket: what the server's next upgrade would execute, both ways,
/// with nothing started (the server keeps its pid, no child appears).
#[test]
fn check_over_the_control_socket_both_ways_starts_nothing() {
    subreaper();
    let app = App::start("http", "HOTEXEC_LISTEN_HTTP", &[]);
    let pid = app.first_pid();
    let load = Load::start(app.addr, 2);
    let check = || control::request(pid, "check", Duration::from_secs(10)).unwrap();

    let Reply::Checked(facts) = check() else {
        panic!("not a check reply")
    };
    let text = facts.join("\n");
    assert!(
        text.contains(&format!("exe: {}", app.bin.display())),
        "{text}"
    );
    assert!(text.contains("note: hotexec"), "{text}");
    assert!(text.contains("format: ELF"), "{text}");

    // An incompatible build put in place: refused, named, nothing started.
    let next = app.dir.0.join("next");
    with_range(app.good_binary(), &next, 7, 9);
    std::fs::rename(&next, &app.bin).unwrap();
    match check() {
        Reply::Error { kind, reason } => {
            assert_eq!(kind, "incompatible");
            assert!(reason.contains("hand-over protocols 7 to 9"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    // A missing one.
    app.remove_binary();
    match check() {
        Reply::Error { kind, reason } => {
            assert_eq!(kind, "missing");
            assert!(reason.contains("No such file"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(children_of(pid), vec![], "check started nothing");
    assert_eq!(app.pid_in_file(), Some(pid));
    assert_no_failures("during the checks", &load.finish());
}
