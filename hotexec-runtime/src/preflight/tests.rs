//! Preflight on crafted files (an ELF written here byte by byte, scripts, truncations, another
//! machine, a note with another range) and on this test binary itself. The built examples,
//! which carry the note of `#[hotexec::main]`, are checked in the facade's `tests/preflight.rs`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use proptest::prelude::*;

use super::*;

struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "hotexec-preflight-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn file(&self, name: &str, bytes: &[u8], mode: u32) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, bytes).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn host() -> Host {
    Host::running().unwrap()
}

#[test]
fn out_of_fds_is_a_limit_not_a_bad_binary() {
    let e = PreflightError::OutOfFds {
        path: "/srv/app".into(),
    };
    assert_eq!(e.kind(), "limit");
    assert!(e.to_string().contains("RLIMIT_NOFILE"), "{e}");
}

/// An ELF file written by hand: header, program headers (PT_INTERP, PT_NOTE), the interpreter
/// path, one note area, and optionally section headers (a null one and an SHT_NOTE one).
struct Crafted {
    bits: u8,
    little: bool,
    machine: u16,
    e_type: u16,
    interp: Option<&'static str>,
    notes: Vec<(Vec<u8>, u32, Vec<u8>)>,
    sections: bool,
}

impl Crafted {
    fn like_host() -> Crafted {
        let h = host();
        Crafted {
            bits: h.ident.bits,
            little: h.ident.little,
            machine: h.ident.machine,
            e_type: 3,
            interp: None,
            notes: Vec::new(),
            sections: true,
        }
    }

    fn with_note(mut self, desc: Vec<u8>) -> Crafted {
        self.notes.push((b"hotexec".to_vec(), 1, desc));
        self
    }

    fn bytes(&self) -> Vec<u8> {
        let w64 = self.bits == 64;
        let (eh, ph, sh) = if w64 { (64, 56, 64) } else { (52, 32, 40) };
        let u16b = |v: u16| {
            if self.little {
                v.to_le_bytes()
            } else {
                v.to_be_bytes()
            }
        };
        let u32b = |v: u32| {
            if self.little {
                v.to_le_bytes()
            } else {
                v.to_be_bytes()
            }
        };
        let word = |out: &mut Vec<u8>, v: u64| {
            if w64 {
                out.extend(if self.little {
                    v.to_le_bytes()
                } else {
                    v.to_be_bytes()
                });
            } else {
                out.extend(u32b(v as u32));
            }
        };
        let mut notes = Vec::new();
        for (owner, t, desc) in &self.notes {
            let mut name = owner.clone();
            name.push(0);
            notes.extend(u32b(name.len() as u32));
            notes.extend(u32b(desc.len() as u32));
            notes.extend(u32b(*t));
            notes.extend(&name);
            notes.resize(notes.len().div_ceil(4) * 4, 0);
            notes.extend(desc);
            notes.resize(notes.len().div_ceil(4) * 4, 0);
        }
        let interp = self.interp.map(|i| {
            let mut b = i.as_bytes().to_vec();
            b.push(0);
            b
        });
        let phnum = 1 + usize::from(interp.is_some());
        let phoff = eh;
        let interp_at = phoff + phnum * ph;
        let interp_len = interp.as_ref().map_or(0, Vec::len);
        let notes_at = (interp_at + interp_len).div_ceil(8) * 8;
        let shoff = (notes_at + notes.len()).div_ceil(8) * 8;
        let shnum = if self.sections { 2 } else { 0 };

        let mut out = vec![0x7f, b'E', b'L', b'F', if w64 { 2 } else { 1 }];
        out.push(if self.little { 1 } else { 2 });
        out.push(1);
        out.resize(16, 0);
        out.extend(u16b(self.e_type));
        out.extend(u16b(self.machine));
        out.extend(u32b(1));
        word(&mut out, 0); // entry
        word(&mut out, phoff as u64);
        word(&mut out, if self.sections { shoff as u64 } else { 0 });
        out.extend(u32b(0)); // flags
        out.extend(u16b(eh as u16));
        out.extend(u16b(ph as u16));
        out.extend(u16b(phnum as u16));
        out.extend(u16b(sh as u16));
        out.extend(u16b(shnum));
        out.extend(u16b(0)); // shstrndx
        assert_eq!(out.len(), eh);
        let phdr = |out: &mut Vec<u8>, p_type: u32, off: usize, len: usize| {
            let start = out.len();
            out.extend(u32b(p_type));
            if w64 {
                out.extend(u32b(4)); // flags
                word(out, off as u64);
                word(out, 0);
                word(out, 0);
                word(out, len as u64);
                word(out, len as u64);
                word(out, 4);
            } else {
                word(out, off as u64);
                word(out, 0);
                word(out, 0);
                word(out, len as u64);
                word(out, len as u64);
                out.extend(u32b(4));
                word(out, 4);
            }
            assert_eq!(out.len() - start, ph);
        };
        if interp.is_some() {
            phdr(&mut out, 3, interp_at, interp_len);
        }
        phdr(&mut out, 4, notes_at, notes.len());
        if let Some(i) = &interp {
            out.extend(i);
        }
        out.resize(notes_at, 0);
        out.extend(&notes);
        if self.sections {
            out.resize(shoff, 0);
            out.extend(vec![0; sh]); // the null section
            let start = out.len();
            out.extend(u32b(0)); // name
            out.extend(u32b(7)); // SHT_NOTE
            word(&mut out, 2); // SHF_ALLOC
            word(&mut out, 0); // addr
            word(&mut out, notes_at as u64);
            word(&mut out, notes.len() as u64);
            out.extend(u32b(0)); // link
            out.extend(u32b(0)); // info
            word(&mut out, 4); // addralign
            word(&mut out, 0); // entsize
            assert_eq!(out.len() - start, sh);
        }
        out
    }
}

fn our_note() -> Vec<u8> {
    ElfNote::new("http", "1.2.3", "ci-42").bytes()[20..].to_vec()
}

/// Our note with the hand-over range `min..=max`.
fn note_with_range(min: u16, max: u16) -> Vec<u8> {
    let mut d = our_note();
    d[2..4].copy_from_slice(&min.to_le_bytes());
    d[4..6].copy_from_slice(&max.to_le_bytes());
    d
}

#[test]
fn this_test_binary_is_an_elf_for_this_machine_without_a_note() {
    let p = check(Path::new("/proc/self/exe"), &host()).unwrap();
    assert!(matches!(p.format, Format::Elf { .. }), "{p:?}");
    assert_eq!(p.note, None);
    assert!(p.same_as_running);
    assert!(
        p.build_id.as_ref().is_some_and(|id| id.len() >= 16),
        "{p:?}"
    );
    let text = p.to_string();
    assert!(text.contains("note: none"), "{text}");
    // `preflight` itself compares with the running binary.
    assert_eq!(preflight(Path::new("/proc/self/exe")).unwrap(), p);
}

#[test]
fn a_note_in_a_section_or_only_in_a_segment_is_read() {
    let s = Scratch::new("note");
    for sections in [true, false] {
        let c = Crafted {
            sections,
            ..Crafted::like_host()
        }
        .with_note(our_note());
        let p = s.file(&format!("app-{sections}"), &c.bytes(), 0o755);
        let pf = check(&p, &host()).unwrap();
        let note = pf.note.clone().expect("the note");
        assert_eq!(note.app, "http 1.2.3");
        assert_eq!(note.build, "ci-42");
        assert_eq!(note.handover, HANDOVER_MIN..=HANDOVER_VERSION);
        assert!(!pf.same_as_running);
        let text = pf.to_string();
        assert!(
            text.contains("note: hotexec") && text.contains("app http 1.2.3"),
            "{text}"
        );
    }
}

#[test]
fn a_note_with_another_range_is_refused_naming_both() {
    let s = Scratch::new("range");
    for (min, max) in [(2, 3), (0, 0), (HANDOVER_VERSION + 1, HANDOVER_VERSION + 1)] {
        let c = Crafted::like_host().with_note(note_with_range(min, max));
        let p = s.file("next", &c.bytes(), 0o755);
        let e = check(&p, &host()).unwrap_err();
        assert_eq!(e.kind(), "incompatible");
        let text = e.to_string();
        assert!(text.contains("next is built with hotexec"), "{text}");
        assert!(
            text.contains(&format!("{min}")) && text.contains("hand-over protocol"),
            "{text}"
        );
        assert!(
            text.contains(&format!("speaks hand-over protocol {HANDOVER_VERSION}")),
            "{text}"
        );
    }
    // A range that includes ours is fine, wide as it is.
    let c = Crafted::like_host().with_note(note_with_range(0, 40));
    assert!(check(&s.file("wide", &c.bytes(), 0o755), &host()).is_ok());
    // A note in a format this build cannot read is refused, not guessed at.
    let mut newer = our_note();
    newer[0] = 9;
    let c = Crafted::like_host().with_note(newer);
    let e = check(&s.file("newer", &c.bytes(), 0o755), &host()).unwrap_err();
    assert_eq!(e.kind(), "incompatible");
    assert!(e.to_string().contains("format 9"), "{e}");
}

#[test]
fn another_machine_or_class_is_refused_naming_both() {
    let s = Scratch::new("machine");
    let h = host();
    let other = if h.ident.machine == 183 { 62 } else { 183 };
    for c in [
        Crafted {
            machine: other,
            ..Crafted::like_host()
        },
        Crafted {
            bits: if h.ident.bits == 64 { 32 } else { 64 },
            ..Crafted::like_host()
        },
        Crafted {
            little: !h.ident.little,
            ..Crafted::like_host()
        },
    ] {
        let p = s.file("foreign", &c.with_note(our_note()).bytes(), 0o755);
        let e = check(&p, &h).unwrap_err();
        assert_eq!(e.kind(), "machine", "{e}");
        let text = e.to_string();
        assert!(text.contains(&h.ident.describe()), "{text}");
        assert!(text.contains("is built for"), "{text}");
    }
}

#[test]
fn a_missing_interpreter_and_non_executables_are_refused() {
    let s = Scratch::new("interp");
    let c = Crafted {
        interp: Some("/lib/ld-hotexec-nonexistent.so.1"),
        ..Crafted::like_host()
    };
    let e = check(&s.file("musl", &c.bytes(), 0o755), &host()).unwrap_err();
    assert_eq!(e.kind(), "interpreter");
    assert!(
        e.to_string().contains("/lib/ld-hotexec-nonexistent.so.1"),
        "{e}"
    );
    for (e_type, why) in [(1, "relocatable"), (4, "core dump"), (9, "ELF type 9")] {
        let c = Crafted {
            e_type,
            ..Crafted::like_host()
        };
        let e = check(&s.file("odd", &c.bytes(), 0o755), &host()).unwrap_err();
        assert_eq!(e.kind(), "format");
        assert!(e.to_string().contains(why), "{e}");
    }
}

#[test]
fn every_truncation_of_an_elf_is_an_error_or_a_file_without_what_was_cut() {
    let s = Scratch::new("trunc");
    let whole = Crafted {
        interp: Some("/bin/sh"),
        ..Crafted::like_host()
    }
    .with_note(our_note())
    .bytes();
    for n in 0..whole.len() {
        let p = s.file("cut", &whole[..n], 0o755);
        match check(&p, &host()) {
            Err(e) => assert!(
                matches!(e.kind(), "format" | "interpreter" | "incompatible"),
                "{n}: {e}"
            ),
            Ok(pf) => panic!("{n} of {} bytes accepted: {pf:?}", whole.len()),
        }
    }
    let e = check(&s.file("cut", &whole[..30], 0o755), &host()).unwrap_err();
    assert!(e.to_string().contains("truncated"), "{e}");
}

#[test]
fn scripts_are_allowed_when_their_interpreter_runs() {
    let s = Scratch::new("script");
    let ok = s.file("run.sh", b"#!/bin/sh -e\nexec ./server\n", 0o755);
    let p = check(&ok, &host()).unwrap();
    assert_eq!(
        p.format,
        Format::Script {
            interpreter: "/bin/sh".into()
        }
    );
    assert_eq!(p.note, None);
    assert!(p.to_string().contains("script run by /bin/sh"));
    let spaced = s.file("spaced.sh", b"#! /bin/sh\n", 0o755);
    assert!(check(&spaced, &host()).is_ok());
    let missing = s.file("py", b"#!/usr/bin/hotexec-no-such-python3\n", 0o755);
    let e = check(&missing, &host()).unwrap_err();
    assert_eq!(e.kind(), "interpreter");
    assert!(e.to_string().contains("hotexec-no-such-python3"), "{e}");
    let empty = s.file("empty.sh", b"#!\n", 0o755);
    assert_eq!(check(&empty, &host()).unwrap_err().kind(), "format");
}

#[test]
fn missing_directories_modes_and_garbage_name_what_is_wrong() {
    let s = Scratch::new("files");
    let e = check(&s.0.join("nothing"), &host()).unwrap_err();
    assert_eq!(e.kind(), "missing");
    assert!(e.to_string().contains("No such file"), "{e}");
    let e = check(&s.0, &host()).unwrap_err();
    assert_eq!(e.kind(), "not-executable");
    assert!(e.to_string().contains("a directory"), "{e}");
    let plain = s.file("plain", &Crafted::like_host().bytes(), 0o644);
    let e = check(&plain, &host()).unwrap_err();
    assert_eq!(e.kind(), "not-executable");
    assert!(e.to_string().contains("Permission denied (mode 644"), "{e}");
    let e = check(&s.file("empty", b"", 0o755), &host()).unwrap_err();
    assert_eq!(e.kind(), "format");
    assert!(e.to_string().contains("it is empty"), "{e}");
    let e = check(&s.file("text", b"hello\n", 0o755), &host()).unwrap_err();
    assert!(
        e.to_string().contains("neither an ELF executable nor"),
        "{e}"
    );
}

#[test]
fn symlinks_on_the_path_are_listed_and_a_dangling_one_is_named() {
    let s = Scratch::new("links");
    std::fs::create_dir_all(s.0.join("releases/v2")).unwrap();
    let bin = Crafted::like_host().with_note(our_note()).bytes();
    let real = s.file("releases/v2/app", &bin, 0o755);
    std::os::unix::fs::symlink("releases/v2", s.0.join("current")).unwrap();
    std::os::unix::fs::symlink("current/app", s.0.join("app")).unwrap();
    let p = check(&s.0.join("app"), &host()).unwrap();
    assert_eq!(p.executes, real.canonicalize().unwrap());
    assert_eq!(
        p.links,
        vec![(s.0.join("app"), PathBuf::from("current/app"))]
    );
    let p = check(&s.0.join("current/app"), &host()).unwrap();
    assert_eq!(
        p.links,
        vec![(s.0.join("current"), PathBuf::from("releases/v2"))]
    );
    let text = p.to_string();
    assert!(
        text.contains("current -> releases/v2") && text.contains("executes: "),
        "{text}"
    );
    // The release the link points at is gone.
    std::os::unix::fs::symlink("releases/v3", s.0.join("next")).unwrap();
    let e = check(&s.0.join("next/app"), &host()).unwrap_err();
    assert_eq!(e.kind(), "missing");
    assert!(
        e.to_string().contains("next -> releases/v3 leads nowhere"),
        "{e}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, failure_persistence: None, ..ProptestConfig::default() })]

    /// Bytes after an ELF magic, or a crafted file with bytes changed: never a panic.
    #[test]
    fn garbage_never_panics(tail in proptest::collection::vec(any::<u8>(), 0..400), edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8)) {
        let s = Scratch::new("fuzz");
        let mut garbage = b"\x7fELF".to_vec();
        garbage.extend(&tail);
        let _ = check(&s.file("g", &garbage, 0o755), &host());
        let mut crafted = Crafted { interp: Some("/bin/sh"), ..Crafted::like_host() }.with_note(our_note()).bytes();
        for (i, b) in edits {
            let at = i.index(crafted.len());
            crafted[at] = b;
        }
        let _ = check(&s.file("c", &crafted, 0o755), &host());
    }
}
