//! Real tools from the system the tests run against (installed by `.ci/install`).

/// The path of a real tool from Debian's `systemd` package (`systemd-socket-activate`,
/// `systemd-analyze`), or: a skip with a message, and a failure under CI (`.ci/install`
/// installs it).
pub fn tool(name: &str) -> Option<String> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    });
    match found {
        Some(p) => Some(p.to_string_lossy().into_owned()),
        None if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("{name} is missing: .ci/install must install the `systemd` package")
        }
        None => {
            eprintln!("SKIPPED: {name} not found (apt-get install systemd)");
            None
        }
    }
}
