use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Where a listener listens, as written in `#[listen("…")]` or `HOTEXEC_LISTEN_<NAME>`.
///
/// | written as | meaning |
/// |---|---|
/// | `127.0.0.1:8080`, `[::1]:8080`, `tcp:0.0.0.0:80` | TCP stream listener on IPv4 or IPv6 |
/// | `udp:0.0.0.0:5353`, `udp:[::]:53` | UDP socket |
/// | `unix:/run/app.sock` | Unix stream listener at a filesystem path |
///
/// Host names are refused on purpose: a listener's address must not depend on DNS at start, and a
/// literal checked at compile time must mean the same socket on every machine.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ListenAddr {
    /// A TCP listening socket.
    Tcp(SocketAddr),
    /// A UDP socket.
    Udp(SocketAddr),
    /// A Unix stream listening socket bound to a filesystem path.
    Unix(PathBuf),
}

/// Why an address did not parse; the message says what was expected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddrError {
    input: String,
    reason: &'static str,
}

impl fmt::Display for AddrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid listen address `{}`: {}",
            self.input, self.reason
        )
    }
}

impl std::error::Error for AddrError {}

/// Longest path a `sockaddr_un` holds on Linux, less the terminating NUL.
const UNIX_PATH_MAX: usize = 107;

impl ListenAddr {
    /// Parses an address in the grammar of the table above.
    pub fn parse(input: &str) -> Result<ListenAddr, AddrError> {
        let err = |reason| AddrError {
            input: input.to_owned(),
            reason,
        };
        if let Some(path) = input.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(err(
                    "expected a path after `unix:`, e.g. `unix:/run/app.sock`",
                ));
            }
            if !path.starts_with('/') {
                return Err(err(
                    "a unix socket path must be absolute, e.g. `unix:/run/app.sock`",
                ));
            }
            if path.len() > UNIX_PATH_MAX {
                return Err(err("a unix socket path is at most 107 bytes long"));
            }
            if path.contains('\0') {
                return Err(err("a unix socket path cannot contain a NUL byte"));
            }
            return Ok(ListenAddr::Unix(PathBuf::from(path)));
        }
        let (udp, rest) = match input.strip_prefix("udp:") {
            Some(rest) => (true, rest),
            None => (false, input.strip_prefix("tcp:").unwrap_or(input)),
        };
        if let Some((scheme, _)) = rest.split_once("://") {
            let _ = scheme;
            return Err(err(
                "expected `IP:PORT`, `tcp:IP:PORT`, `udp:IP:PORT` or `unix:/path`, not a URL",
            ));
        }
        let sa: SocketAddr = rest.parse().map_err(|_| {
            if !rest.contains(':') {
                err("missing port: expected `IP:PORT`, e.g. `127.0.0.1:8080` or `[::1]:8080`")
            } else if rest.starts_with('[') || rest.matches(':').count() == 1 {
                err("expected an IP address and a port from 0 to 65535, e.g. `127.0.0.1:8080` or `[::1]:8080` (host names are not resolved)")
            } else {
                err("an IPv6 address needs brackets: `[::1]:8080`")
            }
        })?;
        Ok(if udp {
            ListenAddr::Udp(sa)
        } else {
            ListenAddr::Tcp(sa)
        })
    }

    /// The kind of socket, for messages: `tcp`, `udp` or `unix`.
    pub fn kind(&self) -> &'static str {
        match self {
            ListenAddr::Tcp(_) => "tcp",
            ListenAddr::Udp(_) => "udp",
            ListenAddr::Unix(_) => "unix",
        }
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(sa) => write!(f, "tcp:{sa}"),
            ListenAddr::Udp(sa) => write!(f, "udp:{sa}"),
            ListenAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_forms() {
        let tcp4 = ListenAddr::parse("127.0.0.1:8080").unwrap();
        assert_eq!(tcp4, ListenAddr::Tcp("127.0.0.1:8080".parse().unwrap()));
        assert_eq!(ListenAddr::parse("tcp:127.0.0.1:8080").unwrap(), tcp4);
        assert_eq!(
            ListenAddr::parse("[::1]:0").unwrap(),
            ListenAddr::Tcp("[::1]:0".parse().unwrap())
        );
        assert_eq!(
            ListenAddr::parse("udp:[::]:53").unwrap(),
            ListenAddr::Udp("[::]:53".parse().unwrap())
        );
        assert_eq!(
            ListenAddr::parse("unix:/run/app.sock").unwrap(),
            ListenAddr::Unix("/run/app.sock".into())
        );
        assert_eq!(tcp4.to_string(), "tcp:127.0.0.1:8080");
    }

    #[test]
    fn refuses_with_a_reason() {
        for (input, needle) in [
            ("127.0.0.1", "missing port"),
            ("localhost:80", "host names"),
            ("127.0.0.1:70000", "0 to 65535"),
            ("::1:80", "brackets"),
            ("http://127.0.0.1:80", "not a URL"),
            ("unix:", "expected a path"),
            ("unix:run/app.sock", "absolute"),
            ("", "missing port"),
        ] {
            let e = ListenAddr::parse(input).unwrap_err().to_string();
            assert!(e.contains(needle), "{input:?}: {e}");
            assert!(e.contains(&format!("`{input}`")), "{input:?}: {e}");
        }
    }
}
