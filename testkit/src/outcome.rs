//! How one request ended, as a client sees it: the one classification of failures that the
//! tests' clients and the benchmarks' load generator share.

use std::io::ErrorKind;

/// How one request ended, with what the client saw (the answering pid, the bad status line,
/// the error message).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok { pid: u32 },
    Refused,
    Reset,
    Eof,
    Timeout,
    BadStatus(String),
    Other(String),
}

/// How one request ended, as a class (what the benchmarks count).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Class {
    Ok,
    Refused,
    Reset,
    /// The connection ended before a complete response.
    Eof,
    Timeout,
    BadStatus,
    Other,
}

impl Class {
    pub const FAILURES: [Class; 6] = [
        Class::Refused,
        Class::Reset,
        Class::Eof,
        Class::Timeout,
        Class::BadStatus,
        Class::Other,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Class::Ok => "ok",
            Class::Refused => "refused",
            Class::Reset => "reset",
            Class::Eof => "EOF before response",
            Class::Timeout => "timeout",
            Class::BadStatus => "bad status",
            Class::Other => "other",
        }
    }

    /// The class of a failed socket call: refused, reset (also aborted or a broken pipe), ended
    /// early, timed out (a socket timeout reads as `WouldBlock`), or other.
    pub fn of_io(e: &std::io::Error) -> Class {
        match e.kind() {
            ErrorKind::ConnectionRefused => Class::Refused,
            ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe => {
                Class::Reset
            }
            ErrorKind::UnexpectedEof => Class::Eof,
            ErrorKind::WouldBlock | ErrorKind::TimedOut => Class::Timeout,
            _ => Class::Other,
        }
    }
}

impl Outcome {
    pub fn class(&self) -> Class {
        match self {
            Outcome::Ok { .. } => Class::Ok,
            Outcome::Refused => Class::Refused,
            Outcome::Reset => Class::Reset,
            Outcome::Eof => Class::Eof,
            Outcome::Timeout => Class::Timeout,
            Outcome::BadStatus(_) => Class::BadStatus,
            Outcome::Other(_) => Class::Other,
        }
    }

    pub fn is_ok(&self) -> bool {
        matches!(self, Outcome::Ok { .. })
    }
}

/// The outcome of a request whose socket call failed with `e` (see [`Class::of_io`]); an
/// unexpected error keeps its message.
pub fn classify(e: std::io::Error) -> Outcome {
    match Class::of_io(&e) {
        Class::Refused => Outcome::Refused,
        Class::Reset => Outcome::Reset,
        Class::Eof => Outcome::Eof,
        Class::Timeout => Outcome::Timeout,
        Class::Ok | Class::BadStatus | Class::Other => Outcome::Other(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_errors_fall_into_the_same_classes_for_every_client() {
        let e = |k: ErrorKind| std::io::Error::new(k, "x");
        assert_eq!(classify(e(ErrorKind::ConnectionReset)), Outcome::Reset);
        assert_eq!(classify(e(ErrorKind::BrokenPipe)), Outcome::Reset);
        assert_eq!(classify(e(ErrorKind::WouldBlock)), Outcome::Timeout);
        assert_eq!(classify(e(ErrorKind::UnexpectedEof)), Outcome::Eof);
        assert_eq!(classify(e(ErrorKind::ConnectionRefused)), Outcome::Refused);
        assert_eq!(
            classify(e(ErrorKind::PermissionDenied)),
            Outcome::Other("x".into())
        );
        for o in [
            Outcome::Reset,
            Outcome::Other("x".into()),
            Outcome::Ok { pid: 1 },
        ] {
            // The class's name in figures is the outcome's variant name.
            assert!(format!("{o:?}").starts_with(&format!("{:?}", o.class())));
        }
    }
}
