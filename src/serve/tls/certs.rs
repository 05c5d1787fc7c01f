//! Loading a certificate chain and its private key from PEM files, with errors that name the
//! file and what is wrong with it.

use std::fmt;
use std::path::{Path, PathBuf};

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Why a TLS configuration could not be made. Each variant names the file at fault.
///
/// Returned before anything is served: a new generation whose certificate is bad fails
/// before it reports ready, so the running one serves on.
#[non_exhaustive]
pub enum TlsError {
    /// A file could not be read.
    Read {
        /// What the file was meant to hold (`certificate`, `private key`).
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file holds no usable PEM section of the expected kind, or a malformed one.
    Pem {
        /// What the file was meant to hold.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// rustls refused the certificate and key: they do not match, the certificate cannot be
    /// parsed, or the key type is not supported.
    Rejected {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// rustls's reason.
        source: rustls::Error,
    },
    /// The configuration itself (protocol versions, the session-ticket keys).
    Config(String),
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsError::Read { what, path, source } => {
                write!(f, "TLS {what} {}: {source}", path.display())
            }
            TlsError::Pem { what, path, reason } => {
                write!(f, "TLS {what} {}: {reason}", path.display())
            }
            TlsError::Rejected { cert, key, source } => {
                write!(
                    f,
                    "TLS key {} with certificate {}: ",
                    key.display(),
                    cert.display()
                )?;
                match source {
                    rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
                        f.write_str("the private key does not belong to the certificate")
                    }
                    other => write!(f, "{other}"),
                }
            }
            TlsError::Config(why) => write!(f, "TLS configuration: {why}"),
        }
    }
}

/// The message itself: what `main` returning `Err` prints (`Error: …`) says which file is at
/// fault in words, not as a struct dump.
impl fmt::Debug for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

impl std::error::Error for TlsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TlsError::Read { source, .. } => Some(source),
            TlsError::Rejected { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// So that `?` works in a `main` returning `std::io::Result`.
impl From<TlsError> for std::io::Error {
    fn from(e: TlsError) -> std::io::Error {
        let kind = match &e {
            TlsError::Read { source, .. } => source.kind(),
            _ => std::io::ErrorKind::InvalidData,
        };
        std::io::Error::new(kind, e)
    }
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

fn pem_error(what: &'static str, path: &Path, e: pem::Error) -> TlsError {
    let reason = match e {
        pem::Error::NoItemsFound => match what {
            "certificate" => "no PEM certificate (BEGIN CERTIFICATE) in the file".to_string(),
            _ => "no PEM private key (BEGIN PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY) in the file"
                .to_string(),
        },
        other => format!("malformed PEM: {other}"),
    };
    TlsError::Pem {
        what,
        path: path.to_owned(),
        reason,
    }
}

/// The certificate chain in `path` (PEM, end-entity certificate first).
pub(super) fn cert_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    const WHAT: &str = "certificate";
    let bytes = read(WHAT, path)?;
    let chain = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(WHAT, path, e))?;
    if chain.is_empty() {
        return Err(pem_error(WHAT, path, pem::Error::NoItemsFound));
    }
    Ok(chain)
}

/// The private key in `path` (PEM: PKCS#8, PKCS#1 or SEC1). The file's bytes are wiped once
/// parsed; the key itself goes to rustls's key provider.
pub(super) fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    const WHAT: &str = "private key";
    let bytes = zeroize::Zeroizing::new(read(WHAT, path)?);
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| pem_error(WHAT, path, e))
}
