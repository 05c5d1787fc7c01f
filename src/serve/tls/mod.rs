//! TLS (feature `tls`): HTTPS with the same lossless drain as plaintext, session resumption
//! that survives upgrades, certificates reloaded by upgrading.
//!
//! ```no_run
//! use axum::{Router, routing::get};
//!
//! #[hotexec::main(drain_timeout = "30s")]
//! #[listen("0.0.0.0:443", name = "https")]
//! async fn main(listeners: hotexec::Listeners, shutdown: hotexec::Shutdown) -> std::io::Result<()> {
//!     // Read at each generation's start: `hotexec upgrade` reloads renewed certificates, and a
//!     // bad one fails the new generation before it is ready (the running one serves on).
//!     let tls = hotexec::tls::TlsConfig::from_pem_files("/etc/app/cert.pem", "/etc/app/key.pem")?;
//!     let app = Router::new().route("/", get(|| async { "hello\n" }));
//!     let listener = listeners.take_tokio_tcp("https")?;
//!     hotexec::serve(listener, app, shutdown).tls(tls).await
//! }
//! ```
//!
//! What `.tls(config)` adds to [`serve()`](crate::serve()):
//!
//! - **rustls** on its default provider (aws-lc-rs; post-quantum hybrid key exchange
//!   X25519MLKEM768 preferred), TLS 1.3 and 1.2, ALPN `h2` and `http/1.1` (HTTP/2 for
//!   browsers and gRPC clients; only one of them with `.http1_only()` / `.http2_only()`).
//! - **Handshakes in their own tasks**, each bounded by a timeout
//!   ([`TlsConfig::handshake_timeout`], default 10 s): a slow, stalled or garbage handshake never
//!   holds up the accept loop, and holds the drain at most that long. Handshakes are counted
//!   ([`TlsConfig::stats`]: full, resumed, failed, timed out), not answered with an HTTP error.
//! - **The same drain**: from the hand-over on, HTTP/1.1 responses carry `Connection: close`
//!   and the connection ends with a TLS `close_notify` after the response; idle connections
//!   are closed (with `close_notify`) after the grace window; HTTP/2 gets its two-step `GOAWAY`.
//!   A connection whose handshake completes during the drain still has its first request
//!   served.
//! - **Session tickets that survive upgrades**: tickets (TLS 1.3 and 1.2) are encrypted with
//!   keys hotexec manages ([`SessionTickets`]): made in memory, rotated on a schedule
//!   ([`TlsConfig::ticket_rotation`], default 6 h; each key accepted for twice that), and
//!   handed to the next generation at each upgrade over the runtime's private channel (never
//!   the environment, argv or a file; wiped from memory when dropped). A client that resumed
//!   before an upgrade resumes after it, and after the next ones, while its ticket's key is in
//!   the window.
//!
//! What is not carried: a live TLS connection's record-layer state (keys and sequence
//! numbers). Connections are drained, not handed over.

mod carry;
mod certs;
mod tickets;

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::ServerConfig;

pub use certs::TlsError;
pub use tickets::{
    DEFAULT_ROTATION, ImportError, MAX_ROTATION, MIN_ROTATION, SessionTickets, TicketError,
};

/// rustls, re-exported: the version hotexec is built with, for apps that make their own
/// `ServerConfig` ([`TlsConfig::from_server_config`]).
pub use rustls;
/// tokio-rustls, re-exported: the stream type [`Acceptor::accept`] returns.
pub use tokio_rustls;

use crate::Shutdown;

/// How long a TLS handshake may take from the moment its connection is accepted, unless
/// [`TlsConfig::handshake_timeout`] says otherwise.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

const H2: &[u8] = b"h2";
const HTTP11: &[u8] = b"http/1.1";

/// A TLS server configuration for [`Serve::tls`](crate::serve::Serve::tls) (or an
/// [`Acceptor`] of your own): certificate, protocols, handshake timeout and session-ticket
/// keys. Cheap to clone; clones share their handshake counters.
#[derive(Clone)]
pub struct TlsConfig {
    server: Arc<ServerConfig>,
    /// Our ticketer, when the config uses it (not when the app installed its own).
    tickets: Option<Arc<SessionTickets>>,
    /// The ALPN list is ours (so `.http1_only()` / `.http2_only()` may narrow it).
    default_alpn: bool,
    handshake_timeout: Duration,
    carry_tickets: bool,
    /// Under which name the ticket keys travel (several configurations in one app).
    tickets_name: String,
    shared: Arc<Shared>,
}

/// What clones of a `TlsConfig` (and their acceptors) share.
#[derive(Default)]
struct Shared {
    full: AtomicU64,
    resumed: AtomicU64,
    failed: AtomicU64,
    timed_out: AtomicU64,
    /// The ticket keys were taken from the previous generation and registered to be carried
    /// to the next: once per process, whichever acceptor comes first.
    bound: Mutex<bool>,
    /// Whether the keys in use came from the previous generation.
    inherited: AtomicBool,
}

impl Shared {
    fn stats(&self) -> TlsStats {
        TlsStats {
            full: self.full.load(Ordering::Relaxed),
            resumed: self.resumed.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            timed_out: self.timed_out.load(Ordering::Relaxed),
        }
    }
}

impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConfig")
            .field("alpn", &self.alpn_names())
            .field("handshake_timeout", &self.handshake_timeout)
            .field("tickets", &self.tickets)
            .field("carry_tickets", &self.carry_tickets)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// Handshake counts of a [`TlsConfig`] (all its clones and acceptors), since this generation
/// started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TlsStats {
    /// Handshakes completed in full (certificate sent, key exchange).
    pub full: u64,
    /// Handshakes completed by resuming a session (a ticket accepted).
    pub resumed: u64,
    /// Handshakes that failed: a protocol error, an alert from the client, garbage, a reset.
    pub failed: u64,
    /// Handshakes cut at the handshake timeout.
    pub timed_out: u64,
}

impl std::fmt::Display for TlsStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} full, {} resumed, {} failed, {} timed out",
            self.full, self.resumed, self.failed, self.timed_out
        )
    }
}

impl TlsConfig {
    /// Loads the certificate chain (`cert`: PEM, end-entity certificate first) and its
    /// private key (`key`: PEM, PKCS#8, PKCS#1 or SEC1), and makes a configuration with TLS
    /// 1.3 and 1.2, ALPN `h2` and `http/1.1`, and session tickets under hotexec's keys.
    ///
    /// Call it at start, before serving, and return its error from `main`: in a new
    /// generation, a missing, unreadable or malformed file, or a key that does not match the
    /// certificate, then fails the upgrade before the new generation reports ready, with a
    /// message naming the file; the running generation serves on.
    pub fn from_pem_files(
        cert: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> Result<TlsConfig, TlsError> {
        let (cert, key) = (cert.as_ref(), key.as_ref());
        let chain = certs::cert_chain(cert)?;
        let private = certs::private_key(key)?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let server = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(chain, private)
            .map_err(|source| TlsError::Rejected {
                cert: cert.to_owned(),
                key: key.to_owned(),
                source,
            })?;
        TlsConfig::from_server_config(server)
    }

    /// A configuration from a rustls `ServerConfig` the app made (client certificates, a
    /// certificate resolver for SNI, other protocol versions…).
    ///
    /// Its ALPN list is used as it is; if empty, `h2` and `http/1.1` are offered. Its
    /// ticketer is kept if it is enabled (the app's own, not carried across upgrades);
    /// otherwise (rustls's default: no tickets) hotexec's [`SessionTickets`] are installed and
    /// carried.
    pub fn from_server_config(mut server: ServerConfig) -> Result<TlsConfig, TlsError> {
        let default_alpn = server.alpn_protocols.is_empty();
        if default_alpn {
            server.alpn_protocols = vec![H2.to_vec(), HTTP11.to_vec()];
        }
        let tickets = if server.ticketer.enabled() {
            None
        } else {
            let t = Arc::new(
                SessionTickets::new(DEFAULT_ROTATION)
                    .map_err(|e| TlsError::Config(e.to_string()))?,
            );
            server.ticketer = t.clone();
            Some(t)
        };
        Ok(TlsConfig {
            server: Arc::new(server),
            tickets,
            default_alpn,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            carry_tickets: true,
            tickets_name: String::new(),
            shared: Arc::default(),
        })
    }

    /// How long a handshake may take from the moment its connection is accepted (default
    /// [`DEFAULT_HANDSHAKE_TIMEOUT`], 10 s). A connection past it is closed and counted as
    /// timed out. It also bounds how long a handshake in progress at the hand-over keeps the
    /// old generation draining.
    pub fn handshake_timeout(mut self, timeout: Duration) -> TlsConfig {
        self.handshake_timeout = timeout;
        self
    }

    /// How often a new session-ticket key is made (default [`DEFAULT_ROTATION`], 6 hours; from
    /// [`MIN_ROTATION`] to [`MAX_ROTATION`]). Each key encrypts tickets for one period and
    /// decrypts them for two; tickets announce a lifetime of one period. The schedule goes on
    /// across upgrades; a new generation with another period judges the carried keys by its
    /// own.
    pub fn ticket_rotation(mut self, period: Duration) -> Result<TlsConfig, TlsError> {
        if self.tickets.is_none() {
            return Err(TlsError::Config(
                "ticket_rotation: the ServerConfig has a ticketer of its own".into(),
            ));
        }
        let t = Arc::new(SessionTickets::new(period).map_err(|e| TlsError::Config(e.to_string()))?);
        Arc::make_mut(&mut self.server).ticketer = t.clone();
        self.tickets = Some(t);
        Ok(self)
    }

    /// Whether the session-ticket keys are handed to the next generation at an upgrade
    /// (default true). With false, each generation makes its own keys and every client pays a
    /// full handshake after each upgrade (as with nginx's reloads); for comparisons, or a
    /// policy that wants keys never to leave a process.
    pub fn carry_ticket_keys(mut self, carry: bool) -> TlsConfig {
        self.carry_tickets = carry;
        self
    }

    /// The name under which this configuration's session-ticket keys travel to the next
    /// generation. Only for an app with several TLS configurations (listeners with different
    /// certificates): each needs a name of its own, the same in every generation, or they
    /// would take each other's keys. One configuration shared by several listeners (clones)
    /// needs none.
    pub fn ticket_keys_name(mut self, name: impl Into<String>) -> TlsConfig {
        self.tickets_name = name.into();
        self
    }

    /// Handshake counts since this generation started.
    pub fn stats(&self) -> TlsStats {
        self.shared.stats()
    }

    /// Whether the session-ticket keys in use were carried over from the previous generation.
    pub fn tickets_inherited(&self) -> bool {
        self.shared.inherited.load(Ordering::Relaxed)
    }

    /// The rustls configuration in use.
    pub fn server_config(&self) -> &Arc<ServerConfig> {
        &self.server
    }

    fn alpn_names(&self) -> Vec<String> {
        self.server
            .alpn_protocols
            .iter()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect()
    }

    /// The same configuration offering only the protocols a server speaks (when the ALPN
    /// list is hotexec's default).
    pub(crate) fn for_protocols(mut self, http1: bool, http2: bool) -> TlsConfig {
        if self.default_alpn && !(http1 && http2) {
            let mut alpn = Vec::new();
            if http2 {
                alpn.push(H2.to_vec());
            }
            if http1 {
                alpn.push(HTTP11.to_vec());
            }
            Arc::make_mut(&mut self.server).alpn_protocols = alpn;
        }
        self
    }

    /// An acceptor for this generation: takes the session-ticket keys the previous generation
    /// carried (if any) and registers this generation's keys to be carried to the next. Call
    /// it once `main` runs, before the first handshake; [`Serve::tls`](crate::serve::Serve::tls)
    /// does.
    pub fn acceptor(&self, shutdown: &Shutdown) -> Acceptor {
        self.bind_tickets(shutdown);
        Acceptor {
            tls: tokio_rustls::TlsAcceptor::from(self.server.clone()),
            timeout: self.handshake_timeout,
            shared: self.shared.clone(),
        }
    }

    fn bind_tickets(&self, shutdown: &Shutdown) {
        let Some(tickets) = &self.tickets else {
            return;
        };
        let mut bound = self.shared.bound.lock().unwrap_or_else(|p| p.into_inner());
        if std::mem::replace(&mut *bound, true) {
            return;
        }
        if !self.carry_tickets {
            tracing::info!(
                rotation = ?tickets.rotation(),
                "session-ticket keys: made by this generation, not carried (carry_ticket_keys(false))"
            );
            return;
        }
        let key = carry::ticket_keys(&self.tickets_name);
        match carry::inherited(shutdown, &key) {
            Some(bytes) => match tickets.adopt(&bytes) {
                Ok(()) => {
                    self.shared.inherited.store(true, Ordering::Relaxed);
                    tracing::info!(
                        keys = %tickets.describe(),
                        rotation = ?tickets.rotation(),
                        "session-ticket keys carried over from the previous generation"
                    );
                }
                Err(e) => tracing::warn!(
                    "session-ticket keys carried over from the previous generation refused ({e}); \
                     made new ones: clients resume no session of the previous generation"
                ),
            },
            None => tracing::info!(
                rotation = ?tickets.rotation(),
                "session-ticket keys: new (none carried over from a previous generation)"
            ),
        }
        let t = tickets.clone();
        carry::carry(shutdown, &key, move || t.export());
    }
}

/// Accepts TLS connections for one generation: each handshake bounded by the configuration's
/// timeout and counted. Made by [`TlsConfig::acceptor`]; cheap to clone.
///
/// For apps with an accept loop of their own:
///
/// ```no_run
/// # async fn run(mut listener: tokio::net::TcpListener, app: axum::Router, tls: hotexec::tls::TlsConfig, shutdown: hotexec::Shutdown) {
/// let acceptor = tls.acceptor(&shutdown);
/// let conns = hotexec::drain::Connections::new(shutdown);
/// while let Some((tcp, _peer)) = conns.accept(&mut listener).await {
///     let (acceptor, app, c) = (acceptor.clone(), app.clone(), conns.clone());
///     conns.spawn(async move {
///         // In the connection's own task: a slow handshake never holds up the accept loop.
///         let Ok(tls) = acceptor.accept(tcp).await else { return };
///         let _ = hotexec::serve::connection(tls, app, &c).await;
///     });
/// }
/// conns.wait().await;
/// # }
/// ```
#[derive(Clone)]
pub struct Acceptor {
    tls: tokio_rustls::TlsAcceptor,
    timeout: Duration,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Acceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acceptor")
            .field("handshake_timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Acceptor {
    /// Runs the server side of a TLS handshake on `io`, bounded by the handshake timeout.
    /// Counts the outcome (full, resumed, failed, timed out); a failure is logged at `debug`
    /// (scanners and broken clients make many).
    pub async fn accept<IO>(&self, io: IO) -> io::Result<tokio_rustls::server::TlsStream<IO>>
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let s = &self.shared;
        match tokio::time::timeout(self.timeout, self.tls.accept(io)).await {
            Ok(Ok(stream)) => {
                let resumed =
                    stream.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
                if resumed {
                    s.resumed.fetch_add(1, Ordering::Relaxed);
                } else {
                    s.full.fetch_add(1, Ordering::Relaxed);
                }
                Ok(stream)
            }
            Ok(Err(e)) => {
                s.failed.fetch_add(1, Ordering::Relaxed);
                tracing::debug!("TLS handshake failed: {e}");
                Err(e)
            }
            Err(_) => {
                s.timed_out.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(timeout = ?self.timeout, "TLS handshake timed out");
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("TLS handshake not done within {:?}", self.timeout),
                ))
            }
        }
    }

    /// Handshake counts of the configuration this acceptor was made from.
    pub fn stats(&self) -> TlsStats {
        self.shared.stats()
    }
}
