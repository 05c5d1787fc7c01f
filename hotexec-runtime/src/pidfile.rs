//! The pid file: written atomically (a temp file in the same directory, then rename), never
//! through a symlink planted at its path.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

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
    let tmp = dir.join(format!(".{}.{pid}.tmp", file.to_string_lossy()));
    let _ = fs::remove_file(&tmp);
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)?;
        writeln!(f, "{pid}")?;
        // rename(2) replaces the path itself: a symlink at `path` is replaced, not followed.
        fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(io::Error::new(
            e.kind(),
            format!("pid file {}: {e}", path.display()),
        ));
    }
    Ok(())
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
        let e = write(&dir.join("missing/app.pid"), 1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not exist"), "{e}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
