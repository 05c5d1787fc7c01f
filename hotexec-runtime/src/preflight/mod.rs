//! Preflight: what an upgrade would execute, checked before anything is spawned.
//!
//! [`preflight`] reads the file an upgrade would `execve`, without running it: that it exists
//! and where the symlinks on its path lead, that it is a regular file this user may execute
//! (not on a `noexec` mount), that it is an ELF executable for this machine (class, byte order
//! and machine compared with the running binary's) whose program interpreter exists, or a
//! script whose interpreter does; and, for a hotexec binary, the note `#[hotexec::main]`
//! writes into it (`note.rs`): a binary that cannot be started by this generation's hand-over
//! protocol is refused with both versions named. A binary without the note (any
//! socket-activation program, a build of another tool) is allowed; the log says so.
//!
//! `hotexec upgrade --check` asks a running server for this verdict over the control socket
//! (request `check`), so an operator sees what an upgrade would do before doing it.

mod elf;
mod note;

use std::fmt;
use std::fs::File;
use std::io::Read;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use elf::Ident;
pub use note::{ElfNote, HANDOVER_MIN, HANDOVER_VERSION, Note};

/// What the running generation compares a binary with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Host {
    ident: Ident,
    /// The hand-over protocol this generation speaks.
    protocol: u16,
}

impl Host {
    /// This process: its own binary's identification, this build's protocol.
    pub(crate) fn running() -> Result<Host, PreflightError> {
        let own = Path::new("/proc/self/exe");
        let file = File::open(own).map_err(|e| match e.raw_os_error() {
            Some(libc::EMFILE | libc::ENFILE) => PreflightError::OutOfFds { path: own.into() },
            _ => PreflightError::Format {
                path: own.into(),
                why: format!("cannot read this process's own binary: {e}"),
            },
        })?;
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        let elf = elf::read(&file, len).map_err(|e| PreflightError::Format {
            path: own.into(),
            why: format!("this process's own binary: {e}"),
        })?;
        Ok(Host {
            ident: elf.ident,
            protocol: HANDOVER_VERSION,
        })
    }
}

/// How the file is executed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Format {
    /// An ELF executable.
    Elf {
        /// `x86-64 (64-bit, little endian)`.
        machine: String,
        /// Its program interpreter (the dynamic loader), `None` for a static binary.
        interpreter: Option<PathBuf>,
    },
    /// A script (`#!`), run by its interpreter.
    Script {
        /// The interpreter named on its first line.
        interpreter: PathBuf,
    },
}

/// What an upgrade would execute, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Preflight {
    /// The path an upgrade executes.
    pub path: PathBuf,
    /// The symlinks on that path, each with what it points to (as written in the link).
    pub links: Vec<(PathBuf, PathBuf)>,
    /// The file the path leads to (every symlink resolved).
    pub executes: PathBuf,
    /// How it runs.
    pub format: Format,
    /// Its hotexec note: `None` for a binary not built with `#[hotexec::main]`.
    pub note: Option<Note>,
    /// Its GNU build id (`.note.gnu.build-id`), in hex.
    pub build_id: Option<String>,
    /// It is the very file this process runs (the upgrade would start the same code).
    pub same_as_running: bool,
}

impl Preflight {
    /// One line per fact, as `--check` prints them.
    pub fn lines(&self) -> Vec<String> {
        let mut out = vec![format!("exe: {}", self.path.display())];
        for (link, to) in &self.links {
            out.push(format!("symlink: {} -> {}", link.display(), to.display()));
        }
        let same = if self.same_as_running {
            " (the very file this generation runs: the upgrade would start the same code)"
        } else {
            ""
        };
        out.push(format!("executes: {}{same}", self.executes.display()));
        out.push(match &self.format {
            Format::Elf {
                machine,
                interpreter: Some(i),
            } => format!("format: ELF {machine}, interpreter {}", i.display()),
            Format::Elf {
                machine,
                interpreter: None,
            } => format!("format: ELF {machine}, static"),
            Format::Script { interpreter } => {
                format!("format: script run by {}", interpreter.display())
            }
        });
        out.push(match &self.note {
            Some(n) => format!("note: {n}"),
            None => "note: none (not built with #[hotexec::main]: started as any socket-activation program, it must report ready with sd_notify or the readiness pipe)".into(),
        });
        if let Some(id) = &self.build_id {
            out.push(format!("build-id: {id}"));
        }
        out
    }
}

impl fmt::Display for Preflight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.lines().join("\n"))
    }
}

/// Why a binary would not start, found before exec. Each names the path and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PreflightError {
    /// Nothing at the path (or a symlink on it leads nowhere).
    Missing {
        /// The path.
        path: PathBuf,
        /// What the system said, and which symlink if one leads nowhere.
        why: String,
    },
    /// Not a regular file this user may execute.
    NotExecutable {
        /// The path.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// Not an executable this kernel can run (not ELF or `#!`, truncated, a library, …).
    Format {
        /// The path.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// Built for another machine.
    Machine {
        /// The path.
        path: PathBuf,
        /// What it is built for.
        theirs: String,
        /// What this machine runs.
        ours: String,
    },
    /// Its interpreter (dynamic loader, or a script's `#!`) is missing or not executable.
    Interpreter {
        /// The path.
        path: PathBuf,
        /// The interpreter.
        interpreter: PathBuf,
        /// Why.
        why: String,
    },
    /// This process has no fd free to read the binary with (`RLIMIT_NOFILE`): nothing is wrong
    /// with the binary.
    OutOfFds {
        /// What could not be opened.
        path: PathBuf,
    },
    /// A hotexec binary this generation cannot start: its hand-over protocol range does not
    /// include this generation's, or its note cannot be read.
    Incompatible {
        /// The path.
        path: PathBuf,
        /// What it says about itself.
        theirs: String,
        /// This generation's protocol and version.
        ours: String,
    },
}

impl PreflightError {
    /// The kind, as the control socket's `error <kind> …` and `hotexec upgrade` say it.
    pub fn kind(&self) -> &'static str {
        match self {
            PreflightError::Missing { .. } => "missing",
            PreflightError::NotExecutable { .. } => "not-executable",
            PreflightError::Format { .. } => "format",
            PreflightError::Machine { .. } => "machine",
            PreflightError::Interpreter { .. } => "interpreter",
            PreflightError::Incompatible { .. } => "incompatible",
            PreflightError::OutOfFds { .. } => "limit",
        }
    }
}

impl fmt::Display for PreflightError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PreflightError::Missing { path, why } => {
                write!(f, "{}: {why}", path.display())
            }
            PreflightError::NotExecutable { path, why } => {
                write!(f, "{} cannot be executed: {why}", path.display())
            }
            PreflightError::Format { path, why } => {
                write!(
                    f,
                    "{} is not an executable this system can run: {why}",
                    path.display()
                )
            }
            PreflightError::Machine { path, theirs, ours } => write!(
                f,
                "{} is built for {theirs}, and this machine runs {ours}",
                path.display()
            ),
            PreflightError::Interpreter {
                path,
                interpreter,
                why,
            } => write!(
                f,
                "{} needs the interpreter {}, which {why}",
                path.display(),
                interpreter.display()
            ),
            PreflightError::OutOfFds { path } => write!(
                f,
                "{} cannot be read: this process has no free fd below its RLIMIT_NOFILE",
                path.display()
            ),
            PreflightError::Incompatible { path, theirs, ours } => write!(
                f,
                "{} is {theirs}; this generation is {ours}",
                path.display()
            ),
        }
    }
}

impl std::error::Error for PreflightError {}

/// The control socket's answer to `check`: what an upgrade would execute now, or why it
/// would be refused. Spawns nothing.
pub(crate) fn control_reply(path: &Path) -> crate::control::Reply {
    match preflight(path) {
        Ok(p) => crate::control::Reply::Checked(p.lines()),
        Err(e) => crate::control::Reply::error(e.kind(), e.to_string()),
    }
}

/// Checks what executing `path` would run (see the module docs), against this process.
pub fn preflight(path: &Path) -> Result<Preflight, PreflightError> {
    let host = Host::running()?;
    check(path, &host)
}

/// [`preflight`] against `host`: the whole check, apart from reading the running binary.
pub(crate) fn check(path: &Path, host: &Host) -> Result<Preflight, PreflightError> {
    let links = links_on(path);
    let executes = path.canonicalize().map_err(|e| PreflightError::Missing {
        path: path.to_owned(),
        why: match links.last() {
            Some((link, to)) if e.kind() == std::io::ErrorKind::NotFound => format!(
                "no such file: the symlink {} -> {} leads nowhere",
                link.display(),
                to.display()
            ),
            _ => io_why(&e),
        },
    })?;
    let file = executable_file(path)?;
    let meta = file.metadata().map_err(|e| PreflightError::NotExecutable {
        path: path.to_owned(),
        why: io_why(&e),
    })?;
    let same_as_running = std::fs::metadata("/proc/self/exe")
        .is_ok_and(|me| me.dev() == meta.dev() && me.ino() == meta.ino());
    let mut head = [0u8; 256];
    let n = (&file)
        .read(&mut head)
        .map_err(|e| PreflightError::NotExecutable {
            path: path.to_owned(),
            why: io_why(&e),
        })?;
    let head = &head[..n];
    let format_err = |why: String| PreflightError::Format {
        path: path.to_owned(),
        why,
    };
    if let Some(line) = head.strip_prefix(b"#!") {
        let interpreter = script_interpreter(line)
            .ok_or_else(|| format_err("its `#!` line names no interpreter".into()))?;
        check_interpreter(path, &interpreter)?;
        return Ok(Preflight {
            path: path.to_owned(),
            links,
            executes,
            format: Format::Script { interpreter },
            note: None,
            build_id: None,
            same_as_running,
        });
    }
    if !elf::is_elf(head) {
        return Err(format_err(if head.is_empty() {
            "it is empty".into()
        } else {
            "neither an ELF executable nor a `#!` script".into()
        }));
    }
    let elf = elf::read(&file, meta.len()).map_err(format_err)?;
    if elf.ident != host.ident {
        return Err(PreflightError::Machine {
            path: path.to_owned(),
            theirs: elf.ident.describe(),
            ours: host.ident.describe(),
        });
    }
    match elf.e_type {
        2 | 3 => {}
        1 => {
            return Err(format_err(
                "a relocatable object file, not an executable".into(),
            ));
        }
        4 => return Err(format_err("a core dump, not an executable".into())),
        t => return Err(format_err(format!("ELF type {t}, not an executable"))),
    }
    let interpreter = match elf.interp {
        Some(bytes) => {
            let p = PathBuf::from(std::ffi::OsString::from_vec(bytes));
            check_interpreter(path, &p)?;
            Some(p)
        }
        None => None,
    };
    let mut note = None;
    let mut build_id = None;
    for n in &elf.notes {
        if n.owner == note::OWNER && n.n_type == note::NT_HOTEXEC_VERSIONS {
            let parsed = Note::parse(&n.desc).map_err(|why| PreflightError::Incompatible {
                path: path.to_owned(),
                theirs: format!("a hotexec binary whose note cannot be read ({why})"),
                ours: ours(host),
            })?;
            note = Some(parsed);
        } else if n.owner == b"GNU" && n.n_type == 3 {
            build_id = Some(n.desc.iter().map(|b| format!("{b:02x}")).collect());
        }
    }
    if let Some(n) = &note {
        if !n.accepts(host.protocol) {
            let (a, b) = (n.handover.start(), n.handover.end());
            let range = if a == b {
                format!("protocol {a}")
            } else {
                format!("protocols {a} to {b}")
            };
            return Err(PreflightError::Incompatible {
                path: path.to_owned(),
                theirs: format!(
                    "built with hotexec {} and can be started by hand-over {range}",
                    n.hotexec
                ),
                ours: ours(host),
            });
        }
    }
    Ok(Preflight {
        path: path.to_owned(),
        links,
        executes,
        format: Format::Elf {
            machine: elf.ident.describe(),
            interpreter,
        },
        note,
        build_id,
        same_as_running,
    })
}

fn ours(host: &Host) -> String {
    format!(
        "hotexec {} and speaks hand-over protocol {}",
        env!("CARGO_PKG_VERSION"),
        host.protocol
    )
}

fn io_why(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(n) => nix::errno::Errno::from_raw(n).desc().to_owned(),
        None => e.to_string(),
    }
}

/// Opens `path` if it is a regular file this user may execute.
fn executable_file(path: &Path) -> Result<File, PreflightError> {
    let not_exec = |why: String| PreflightError::NotExecutable {
        path: path.to_owned(),
        why,
    };
    let meta = std::fs::metadata(path).map_err(|e| not_exec(io_why(&e)))?;
    let ft = meta.file_type();
    if !ft.is_file() {
        let what = if ft.is_dir() {
            "a directory"
        } else {
            "not a regular file"
        };
        return Err(not_exec(format!("it is {what}")));
    }
    // access(2) with the real ids, as the kernel's exec check for a non-setuid process; it
    // also refuses a file on a `noexec` mount.
    if let Err(e) = nix::unistd::access(path, nix::unistd::AccessFlags::X_OK) {
        let why = if e == nix::errno::Errno::EACCES && meta.mode() & 0o111 != 0 {
            "Permission denied (its mode allows execution: a `noexec` mount, or a directory on the path not searchable)".to_owned()
        } else if e == nix::errno::Errno::EACCES {
            format!(
                "Permission denied (mode {:o}: no execute permission)",
                meta.mode() & 0o7777
            )
        } else {
            e.desc().to_owned()
        };
        return Err(not_exec(why));
    }
    File::open(path).map_err(|e| match e.raw_os_error() {
        Some(libc::EMFILE | libc::ENFILE) => PreflightError::OutOfFds {
            path: path.to_owned(),
        },
        _ => not_exec(io_why(&e)),
    })
}

/// The interpreter of a `#!` line (what follows `#!`, up to the first blank).
fn script_interpreter(line: &[u8]) -> Option<PathBuf> {
    let line = line.split(|b| *b == b'\n').next().unwrap_or(line);
    let start = line.iter().position(|b| !matches!(b, b' ' | b'\t'))?;
    let rest = &line[start..];
    let end = rest
        .iter()
        .position(|b| matches!(b, b' ' | b'\t' | b'\r'))
        .unwrap_or(rest.len());
    (end > 0).then(|| PathBuf::from(std::ffi::OsString::from_vec(rest[..end].to_vec())))
}

fn check_interpreter(path: &Path, interpreter: &Path) -> Result<(), PreflightError> {
    let err = |why: String| PreflightError::Interpreter {
        path: path.to_owned(),
        interpreter: interpreter.to_owned(),
        why,
    };
    match std::fs::metadata(interpreter) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(err(
            "does not exist on this system (built for another system or C library?)".into(),
        )),
        Err(e) => Err(err(format!("cannot be read: {}", io_why(&e)))),
        Ok(m) if !m.is_file() => Err(err("is not a regular file".into())),
        Ok(_) => nix::unistd::access(interpreter, nix::unistd::AccessFlags::X_OK)
            .map_err(|e| err(format!("cannot be executed: {}", e.desc()))),
    }
}

/// Each symlink among the prefixes of `path`, with its target as written in the link.
fn links_on(path: &Path) -> Vec<(PathBuf, PathBuf)> {
    let mut out = Vec::new();
    let mut prefix = PathBuf::new();
    for c in path.components() {
        prefix.push(c);
        if matches!(
            c,
            Component::RootDir | Component::CurDir | Component::Prefix(_)
        ) {
            continue;
        }
        if let Ok(to) = std::fs::read_link(&prefix) {
            out.push((prefix.clone(), to));
        }
    }
    out
}

#[cfg(test)]
mod tests;
