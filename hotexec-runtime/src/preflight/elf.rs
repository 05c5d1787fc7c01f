//! The few parts of an ELF file a preflight reads: the identification (class, byte order,
//! machine, type), the program interpreter, and the notes. Only those bytes are read (`pread`),
//! never the whole binary, and every offset and size is checked against the file and against
//! limits before it is used: a truncated or crafted file is an error naming what is wrong.

use std::fs::File;
use std::os::unix::fs::FileExt;

/// Longest note section or segment read.
const MAX_NOTES: u64 = 1 << 20;
/// Most program or section headers read.
const MAX_HEADERS: u64 = 1 << 16;
/// Longest interpreter path read.
const MAX_INTERP: u64 = 4096;

const PT_INTERP: u32 = 3;
const PT_NOTE: u32 = 4;
const SHT_NOTE: u32 = 7;

/// The identification of an ELF file: what it can run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Ident {
    /// 32 or 64.
    pub bits: u8,
    /// Little endian.
    pub little: bool,
    /// `e_machine`.
    pub machine: u16,
}

impl Ident {
    /// `x86-64 (64-bit, little endian)`.
    pub fn describe(&self) -> String {
        format!(
            "{} ({}-bit, {} endian)",
            machine_name(self.machine),
            self.bits,
            if self.little { "little" } else { "big" }
        )
    }
}

/// The name of an `e_machine` value, for messages.
pub(crate) fn machine_name(m: u16) -> String {
    match m {
        3 => "x86".into(),
        8 => "MIPS".into(),
        20 => "PowerPC".into(),
        21 => "PowerPC64".into(),
        22 => "s390".into(),
        40 => "ARM".into(),
        62 => "x86-64".into(),
        183 => "AArch64".into(),
        243 => "RISC-V".into(),
        258 => "LoongArch".into(),
        other => format!("machine {other}"),
    }
}

/// One note.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RawNote {
    pub owner: Vec<u8>,
    pub n_type: u32,
    pub desc: Vec<u8>,
}

/// What was read.
#[derive(Clone, Debug)]
pub(crate) struct Elf {
    pub ident: Ident,
    /// `e_type`: 2 executable, 3 shared object (a PIE executable), others cannot be executed.
    pub e_type: u16,
    /// The `PT_INTERP` path (the dynamic loader), if any.
    pub interp: Option<Vec<u8>>,
    pub notes: Vec<RawNote>,
}

struct Reader<'a> {
    file: &'a File,
    len: u64,
    little: bool,
}

impl Reader<'_> {
    /// `n` bytes at `at`, all within the file.
    fn bytes(&self, at: u64, n: u64, what: &str) -> Result<Vec<u8>, String> {
        let end = at.checked_add(n).filter(|e| *e <= self.len).ok_or_else(|| {
            format!(
                "truncated: {what} at offset {at} ({n} bytes) lies past the end of the file ({} bytes)",
                self.len
            )
        })?;
        let mut buf = vec![0; (end - at) as usize];
        self.file
            .read_exact_at(&mut buf, at)
            .map_err(|e| format!("reading {what}: {e}"))?;
        Ok(buf)
    }

    fn u16(&self, b: &[u8], at: usize) -> u16 {
        let v = [b[at], b[at + 1]];
        if self.little {
            u16::from_le_bytes(v)
        } else {
            u16::from_be_bytes(v)
        }
    }

    fn u32(&self, b: &[u8], at: usize) -> u32 {
        let v = [b[at], b[at + 1], b[at + 2], b[at + 3]];
        if self.little {
            u32::from_le_bytes(v)
        } else {
            u32::from_be_bytes(v)
        }
    }

    fn u64(&self, b: &[u8], at: usize) -> u64 {
        let mut v = [0u8; 8];
        v.copy_from_slice(&b[at..at + 8]);
        if self.little {
            u64::from_le_bytes(v)
        } else {
            u64::from_be_bytes(v)
        }
    }
}

/// Whether `head` (the first bytes of a file) starts like an ELF file.
pub(crate) fn is_elf(head: &[u8]) -> bool {
    head.starts_with(b"\x7fELF")
}

/// Reads the identification, interpreter and notes of `file` (of `len` bytes).
pub(crate) fn read(file: &File, len: u64) -> Result<Elf, String> {
    let head = Reader {
        file,
        len,
        little: true,
    }
    .bytes(0, 16.min(len), "the identification")?;
    if !is_elf(&head) {
        return Err("not an ELF file".into());
    }
    if head.len() < 16 {
        return Err(format!(
            "truncated: {len} bytes, not even an ELF identification"
        ));
    }
    let bits = match head[4] {
        1 => 32,
        2 => 64,
        c => return Err(format!("unknown ELF class {c}")),
    };
    let little = match head[5] {
        1 => true,
        2 => false,
        d => return Err(format!("unknown ELF byte order {d}")),
    };
    let r = Reader { file, len, little };
    let header_len = if bits == 64 { 64 } else { 52 };
    let h = r.bytes(0, header_len, "the ELF header")?;
    let e_type = r.u16(&h, 16);
    let machine = r.u16(&h, 18);
    let (phoff, shoff, rest) = if bits == 64 {
        (r.u64(&h, 32), r.u64(&h, 40), 52)
    } else {
        (u64::from(r.u32(&h, 28)), u64::from(r.u32(&h, 32)), 40)
    };
    let phentsize = u64::from(r.u16(&h, rest + 2));
    let phnum = u64::from(r.u16(&h, rest + 4));
    let shentsize = u64::from(r.u16(&h, rest + 6));
    let shnum = u64::from(r.u16(&h, rest + 8));
    let ident = Ident {
        bits,
        little,
        machine,
    };

    let (ph_min, sh_min) = if bits == 64 { (56, 64) } else { (32, 40) };
    let mut interp = None;
    let mut segment_notes = Vec::new();
    if phnum > 0 {
        if phentsize < ph_min || phnum > MAX_HEADERS {
            return Err(format!(
                "program headers of {phentsize} bytes × {phnum}: not an ELF{bits} layout"
            ));
        }
        let table = r.bytes(phoff, phentsize * phnum, "the program headers")?;
        for i in 0..phnum as usize {
            let p = &table[i * phentsize as usize..];
            let p_type = r.u32(p, 0);
            let (offset, filesz, align) = if bits == 64 {
                (r.u64(p, 8), r.u64(p, 32), r.u64(p, 48))
            } else {
                (
                    u64::from(r.u32(p, 4)),
                    u64::from(r.u32(p, 16)),
                    u64::from(r.u32(p, 28)),
                )
            };
            match p_type {
                PT_INTERP => {
                    if filesz > MAX_INTERP {
                        return Err(format!("an interpreter path of {filesz} bytes"));
                    }
                    let mut path = r.bytes(offset, filesz, "the interpreter path")?;
                    if let Some(nul) = path.iter().position(|b| *b == 0) {
                        path.truncate(nul);
                    }
                    interp = Some(path);
                }
                PT_NOTE => segment_notes.push((offset, filesz, align)),
                _ => {}
            }
        }
    }
    // Notes from the section headers (every note section, also one not in a PT_NOTE
    // segment); from the PT_NOTE segments when the file has no section headers.
    let mut note_areas = Vec::new();
    if shnum > 0 && shoff != 0 {
        if shentsize < sh_min || shnum > MAX_HEADERS {
            return Err(format!(
                "section headers of {shentsize} bytes × {shnum}: not an ELF{bits} layout"
            ));
        }
        let table = r.bytes(shoff, shentsize * shnum, "the section headers")?;
        for i in 0..shnum as usize {
            let s = &table[i * shentsize as usize..];
            if r.u32(s, 4) != SHT_NOTE {
                continue;
            }
            let (offset, size, align) = if bits == 64 {
                (r.u64(s, 24), r.u64(s, 32), r.u64(s, 48))
            } else {
                (
                    u64::from(r.u32(s, 16)),
                    u64::from(r.u32(s, 20)),
                    u64::from(r.u32(s, 32)),
                )
            };
            note_areas.push((offset, size, align));
        }
    } else {
        note_areas = segment_notes;
    }
    let mut notes = Vec::new();
    for (offset, size, align) in note_areas {
        if size > MAX_NOTES {
            return Err(format!("a note area of {size} bytes"));
        }
        let area = r.bytes(offset, size, "a note section")?;
        parse_notes(&r, &area, if align == 8 { 8 } else { 4 }, &mut notes)?;
    }
    Ok(Elf {
        ident,
        e_type,
        interp,
        notes,
    })
}

fn pad(n: usize, align: usize) -> Option<usize> {
    n.checked_add(align - 1).map(|v| v & !(align - 1))
}

fn parse_notes(
    r: &Reader<'_>,
    area: &[u8],
    align: usize,
    out: &mut Vec<RawNote>,
) -> Result<(), String> {
    let mut at = 0usize;
    while at + 12 <= area.len() {
        let namesz = r.u32(area, at) as usize;
        let descsz = r.u32(area, at + 4) as usize;
        let n_type = r.u32(area, at + 8);
        let name_at = at + 12;
        let desc_at = pad(namesz, 4)
            .and_then(|n| name_at.checked_add(n))
            .filter(|e| *e <= area.len())
            .ok_or_else(|| format!("a note's name of {namesz} bytes runs past its section"))?;
        let end = pad(descsz, align)
            .and_then(|d| desc_at.checked_add(d))
            .ok_or_else(|| format!("a note's desc of {descsz} bytes runs past its section"))?;
        if desc_at + descsz > area.len() {
            return Err(format!(
                "a note's desc of {descsz} bytes runs past its section"
            ));
        }
        let mut owner = area[name_at..name_at + namesz].to_vec();
        if owner.last() == Some(&0) {
            owner.pop();
        }
        out.push(RawNote {
            owner,
            n_type,
            desc: area[desc_at..desc_at + descsz].to_vec(),
        });
        at = end;
    }
    Ok(())
}
