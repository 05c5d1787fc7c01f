//! Pseudo-terminals: a server whose output goes to a terminal, as in an operator's shell.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// A pseudo-terminal: (master, slave).
pub fn openpty() -> (std::fs::File, std::fs::File) {
    // Both sides are opened close-on-exec atomically (not openpty + fcntl): a child that another
    // test thread forks in between would keep the slave side open after its exec, and the
    // reader would never see the end of the output.
    // SAFETY: posix_openpt returns a new fd or -1; nothing else is touched.
    let m = unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) };
    assert!(m >= 0, "posix_openpt: {}", std::io::Error::last_os_error());
    // SAFETY: just opened, owned by nothing else.
    let m = unsafe { OwnedFd::from_raw_fd(m) };
    let mut name = [0 as libc::c_char; 128];
    // SAFETY: grantpt/unlockpt on the master we own; ptsname_r writes at most `name.len()`
    // bytes, NUL included, into `name`.
    unsafe {
        assert_eq!(libc::grantpt(m.as_raw_fd()), 0, "grantpt");
        assert_eq!(libc::unlockpt(m.as_raw_fd()), 0, "unlockpt");
        assert_eq!(
            libc::ptsname_r(m.as_raw_fd(), name.as_mut_ptr(), name.len()),
            0,
            "ptsname_r"
        );
    }
    // SAFETY: ptsname_r wrote a NUL-terminated path.
    let path = unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) };
    // SAFETY: open with a valid path; returns a new fd or -1.
    let s = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    assert!(s >= 0, "open {path:?}: {}", std::io::Error::last_os_error());
    // SAFETY: just opened, owned by nothing else.
    let s = unsafe { OwnedFd::from_raw_fd(s) };
    (m.into(), s.into())
}
