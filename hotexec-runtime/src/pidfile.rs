//! The pid file: written atomically (a temp file in the same directory, then rename), never
//! through a symlink planted at its path.
//!
//! In a shared sticky directory (`/tmp`) other users can create files but not replace or remove
//! ours, nor we theirs. The temporary file therefore has a random name, created exclusively
//! (`O_CREAT|O_EXCL|O_NOFOLLOW`, retried on a clash): a file planted at a predictable name can
//! neither stop the write nor receive it. Another user's file at the pid file's path itself
//! cannot be replaced there: that is an error naming the path, its owner and why.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Attempts at a fresh random temporary name before giving up.
const TEMP_TRIES: usize = 16;

/// Writes `pid` to `path`, replacing it atomically.
pub fn write(path: &Path, pid: u32) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file = path
        .file_name()
        .ok_or_else(|| io::Error::other(format!("pid file {}: not a file path", path.display())))?;
    if !dir.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "pid file {}: directory {} does not exist",
                path.display(),
                dir.display()
            ),
        ));
    }
    let (tmp, mut f) = create_temp(&dir, &file.to_string_lossy())
        .map_err(|e| io::Error::new(e.kind(), format!("pid file {}: {e}", path.display())))?;
    let result = (|| {
        writeln!(f, "{pid}")?;
        drop(f);
        // rename(2) replaces the path itself: a symlink at `path` is replaced, not followed.
        fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(io::Error::new(e.kind(), explain(path, &dir, &e)));
    }
    Ok(())
}

/// Creates `dir/.<file>.<random>.tmp` exclusively (a name that exists, or a symlink, is never
/// opened: another is drawn).
fn create_temp(dir: &Path, file: &str) -> io::Result<(PathBuf, File)> {
    let mut last = None;
    for _ in 0..TEMP_TRIES {
        let tmp = dir.join(format!(".{file}.{:016x}.tmp", random_u64()));
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)
        {
            Ok(f) => return Ok((tmp, f)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", tmp.display()))),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no free temporary name")))
}

/// 64 random bits from getrandom(2); the time and pid if it is unavailable.
fn random_u64() -> u64 {
    let mut buf = [0u8; 8];
    // SAFETY: getrandom writes at most `buf.len()` bytes into `buf`, which is valid for writes.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), libc::GRND_NONBLOCK) };
    if n == buf.len() as isize {
        return u64::from_ne_bytes(buf);
    }
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    t ^ (u64::from(std::process::id()) << 32)
}

/// The message for a failed rename over `path`: who owns what is there, and why it cannot be
/// replaced, when that is the cause.
fn explain(path: &Path, dir: &Path, e: &io::Error) -> String {
    let denied = matches!(e.raw_os_error(), Some(libc::EPERM) | Some(libc::EACCES));
    // SAFETY: geteuid(2) cannot fail and touches no memory.
    let me = unsafe { libc::geteuid() };
    match fs::symlink_metadata(path) {
        Ok(m) if denied && m.uid() != me => {
            let sticky = fs::metadata(dir).is_ok_and(|d| d.permissions().mode() & 0o1000 != 0);
            let why = if sticky {
                format!(
                    "{} is a sticky directory (like /tmp), where only a file's owner may replace or remove it",
                    dir.display()
                )
            } else {
                e.to_string()
            };
            format!(
                "pid file {}: it belongs to uid {} and this process (uid {me}) cannot replace it: {why}; remove it, or use a pid file in a directory of the service's own (such as /run/<service>/)",
                path.display(),
                m.uid()
            )
        }
        _ => format!("pid file {}: {e}", path.display()),
    }
}

/// The pid in the file, if it holds one.
pub fn read(path: &Path) -> Option<u32> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Removes the pid file on a final stop, only while it still names `pid`.
pub fn remove_if_ours(path: &Path, pid: u32) {
    if read(path) == Some(pid) {
        let _ = fs::remove_file(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_and_no_symlink_follow() {
        let dir = std::env::temp_dir().join(format!("hotexec-pidfile-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let target = dir.join("victim");
        fs::write(&target, "precious").unwrap();
        let pid = dir.join("app.pid");
        std::os::unix::fs::symlink(&target, &pid).unwrap();
        write(&pid, 1234).unwrap();
        assert_eq!(fs::read_to_string(&target).unwrap(), "precious");
        assert_eq!(read(&pid), Some(1234));
        assert!(!fs::symlink_metadata(&pid).unwrap().file_type().is_symlink());
        remove_if_ours(&pid, 99);
        assert!(pid.exists());
        remove_if_ours(&pid, 1234);
        assert!(!pid.exists());
        // No temporary file is left behind, whatever its random name was.
        let left: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .filter(|n| n.to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
        let e = write(&dir.join("missing/app.pid"), 1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not exist"), "{e}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
