//! What an upgrade executes: the path the operator started, kept as a path and never resolved
//! through symlinks, so that each upgrade executes whatever is at that path *then*.
//!
//! Releases switched by symlink (`/srv/app/current -> releases/v2`, Nix profiles, Debian
//! alternatives) and binaries renamed over the old one (`mv`, `ln -sfn`, a package manager) all
//! upgrade to the new file. Resolving the path once at start (`/proc/self/exe`) would pin the
//! release that was current then.
//!
//! The path is, in order:
//! 1. `HOTEXEC_EXE`, when set (a configured path, made absolute against the start directory);
//! 2. the path this image was executed by (`AT_EXECFN`: what the shell, systemd or the previous
//!    generation passed to `execve`, after any `PATH` search), made absolute against the start
//!    directory;
//! 3. when that is `/proc/self/exe` or `/dev/fd/N` (a rollback re-executes the running image that
//!    way), `argv[0]` if it holds a `/` and names a file, made absolute the same way;
//! 4. else the running image's own path (`/proc/self/exe`, with symlinks resolved).

use std::ffi::{CStr, OsStr};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// `HOTEXEC_EXE`: the path every upgrade executes, instead of the path this process was
/// started by.
pub(crate) const ENV_EXE: &str = "HOTEXEC_EXE";

/// The path upgrades execute (see the module docs), resolved at start; `configured`: the value
/// of `HOTEXEC_EXE` (read with the other options, see `config.rs`).
pub(crate) fn resolve_at_start(configured: Option<&OsStr>) -> io::Result<PathBuf> {
    let cwd = std::env::current_dir();
    let absolute = |p: &Path| -> Option<PathBuf> {
        if p.is_absolute() {
            return Some(p.components().collect());
        }
        // `components` drops the `.` of `./current/app`; `..` stays (lexically removing it
        // would be wrong across a symlink).
        cwd.as_ref().ok().map(|d| d.join(p).components().collect())
    };
    if let Some(v) = configured.filter(|v| !v.is_empty()) {
        return absolute(Path::new(v)).ok_or_else(|| {
            io::Error::other(format!(
                "{ENV_EXE}={v:?} is relative and the current directory is unknown"
            ))
        });
    }
    if let Some(p) = execfn().filter(|p| !is_self_reference(p)) {
        if let Some(p) = absolute(&p) {
            return Ok(p);
        }
    }
    if let Some(arg0) = std::env::args_os().next() {
        let p = Path::new(&arg0);
        if arg0.as_bytes().contains(&b'/') && !is_self_reference(p) {
            if let Some(p) = absolute(p).filter(|p| p.is_file()) {
                return Ok(p);
            }
        }
    }
    running_image_path()
}

/// The pathname this image was executed by (`getauxval(AT_EXECFN)`).
fn execfn() -> Option<PathBuf> {
    // SAFETY: getauxval only reads the auxiliary vector the kernel set up at exec.
    let ptr = unsafe { libc::getauxval(libc::AT_EXECFN) } as *const libc::c_char;
    if ptr.is_null() {
        return None;
    }
    // SAFETY: AT_EXECFN points at the NUL-terminated filename the kernel copied to the top of
    // the initial stack at exec; that memory is never freed or written for the process's life.
    let bytes = unsafe { CStr::from_ptr(ptr) }.to_bytes();
    (!bytes.is_empty()).then(|| PathBuf::from(OsStr::from_bytes(bytes)))
}

/// `/proc/…` and `/dev/fd/…`: names of an open file or of the running image, not of a file an
/// operator can replace.
fn is_self_reference(p: &Path) -> bool {
    p.starts_with("/proc") || p.starts_with("/dev/fd")
}

/// The running image's path on disk. A generation started by a rollback runs an image whose
/// file was replaced (the kernel shows `/path/app (deleted)`): its next upgrade executes what is
/// at `/path/app` now.
fn running_image_path() -> io::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    match exe.canonicalize() {
        Ok(p) => Ok(p),
        Err(e) => match exe.as_os_str().as_bytes().strip_suffix(b" (deleted)") {
            Some(b) => Ok(PathBuf::from(OsStr::from_bytes(b))),
            None => Err(e),
        },
    }
}

/// Logs, as an upgrade starts, the path it executes and the file that path leads to now; warns
/// when that file is the very image already running (the deploy did not change the binary, or
/// changed another path than the one this process was started by).
pub(crate) fn log_upgrade_target(path: &Path) {
    let target = path.canonicalize();
    let same = match (std::fs::metadata(path), std::fs::metadata("/proc/self/exe")) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    };
    match &target {
        Ok(t) => {
            tracing::info!(exe = %path.display(), executes = %t.display(), "upgrade: starting the new generation")
        }
        Err(e) => {
            tracing::info!(exe = %path.display(), "upgrade: starting the new generation ({e})")
        }
    }
    if same {
        tracing::warn!(
            exe = %path.display(),
            "upgrade: {} is the very image already running: the new generation runs the same code (was the new binary put at another path?)",
            target.as_deref().unwrap_or(path).display()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_test_binary_resolves_to_a_path_of_itself() {
        let p = resolve_at_start(None).unwrap();
        assert!(p.is_absolute(), "{}", p.display());
        let a = std::fs::metadata(&p).unwrap();
        let b = std::fs::metadata("/proc/self/exe").unwrap();
        assert_eq!((a.dev(), a.ino()), (b.dev(), b.ino()));
        assert!(is_self_reference(Path::new("/proc/self/exe")));
        assert!(is_self_reference(Path::new("/dev/fd/3")));
        assert!(!is_self_reference(Path::new("/srv/app/current/app")));
    }
}
