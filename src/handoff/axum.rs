//! axum apps with WebSocket routes whose sessions are handed to the next generation (feature
//! `axum-websocket`). Written as axum's documentation shows, with two changes: this module's
//! [`WebSocketUpgrade`] in place of axum's (which cannot give the connection back), and
//! [`serve`] in place of `hotexec::serve`.
//!
//! ```no_run
//! use axum::{Router, response::Response, routing::get};
//! use hotexec::handoff::axum::{Message, WebSocket, WebSocketUpgrade};
//!
//! async fn ws(upgrade: WebSocketUpgrade) -> Response {
//!     upgrade.on_upgrade(echo)
//! }
//!
//! async fn echo(mut socket: WebSocket) {
//!     while let Some(Ok(msg)) = socket.recv().await {
//!         if socket.send(msg).await.is_err() {
//!             return;
//!         }
//!     }
//! }
//!
//! #[hotexec::main]
//! #[listen("127.0.0.1:3000", name = "http")]
//! async fn main(listeners: hotexec::Listeners, shutdown: hotexec::Shutdown) -> std::io::Result<()> {
//!     let app = Router::new().route("/ws", get(ws));
//!     let listener = listeners.take_tokio_tcp("http")?;
//!     hotexec::handoff::axum::serve(listener, app, shutdown).await
//! }
//! ```
//!
//! What [`serve`] does on top of `hotexec::serve` (the same lossless HTTP drain):
//!
//! - Each upgraded WebSocket session is tracked with the connections, and hands itself off
//!   inside [`WebSocket::recv`] at its next message boundary once a new generation that takes
//!   hand-offs is ready (see the [WebSocket layer](super::websocket)).
//! - The new generation resumes each session through the app itself: the request the session
//!   was upgraded by (method, URI, headers) is replayed through the router with no handshake,
//!   so the handler that serves it is the one its route names in the new build, with its
//!   extractors and checks; its `on_upgrade` callback gets the session, resumed, with the
//!   application's [`state`](WebSocket::state). A session whose route is gone, or whose handler
//!   does not upgrade it, is closed with `1001 Going Away` (its client reconnects).
//!
//! Limits: WebSocket over HTTP/1.1 only (an HTTP/2 extended CONNECT is refused); plain TCP
//! listeners (a TLS stream's keys do not move with its fd). A response to a resumed request is
//! discarded: the client already has its `101`.

use std::future::Future;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::FromRequestParts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Version};
use axum::http::{header, request::Parts};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::websocket::{self, Head, Transport};
pub use super::websocket::{Error, Message, Utf8Bytes};
use super::{Relay, Session, Sessions};
use crate::Shutdown;
use crate::serve::{BoxError, Listener, serve_conn};

/// A WebSocket session of an axum app (see the [module](self)).
pub type WebSocket = websocket::WebSocket<Conn>;

/// The connection a [`WebSocket`] of an axum app runs on: the connection hyper upgraded, or,
/// for a session the previous generation handed over, the socket itself.
pub struct Conn(ConnKind);

enum ConnKind {
    /// Upgraded by this generation; `fd` is the socket of the TCP connection hyper serves
    /// (inside `io`), when this app is served by [`serve`].
    Upgraded {
        io: TokioIo<hyper::upgrade::Upgraded>,
        fd: Option<RawFd>,
    },
    /// Handed over by the previous generation.
    Resumed(TcpStream),
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            ConnKind::Upgraded { fd, .. } => write!(f, "Conn::Upgraded(fd {fd:?})"),
            ConnKind::Resumed(s) => write!(f, "Conn::Resumed({s:?})"),
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.0 {
            ConnKind::Upgraded { io, .. } => Pin::new(io).poll_read(cx, buf),
            ConnKind::Resumed(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.0 {
            ConnKind::Upgraded { io, .. } => Pin::new(io).poll_write(cx, buf),
            ConnKind::Resumed(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.0 {
            ConnKind::Upgraded { io, .. } => Pin::new(io).poll_flush(cx),
            ConnKind::Resumed(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.0 {
            ConnKind::Upgraded { io, .. } => Pin::new(io).poll_shutdown(cx),
            ConnKind::Resumed(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

impl Transport for Conn {
    fn socket(&self) -> Option<BorrowedFd<'_>> {
        match &self.0 {
            // SAFETY: `fd` is the socket of the TCP connection that hyper's connection owns,
            // and `io` (hyper's upgraded connection) owns that connection now: the number
            // refers to it for as long as `self` is borrowed.
            ConnKind::Upgraded { fd, .. } => fd.map(|fd| unsafe { BorrowedFd::borrow_raw(fd) }),
            ConnKind::Resumed(s) => Some(s.as_fd()),
        }
    }

    fn buffers(&self) -> bool {
        // hyper keeps what it read past the upgrade request.
        matches!(self.0, ConnKind::Upgraded { .. })
    }
}

/// What [`serve`] tells the extractor about the connection a request came on.
#[derive(Clone)]
struct Accepted {
    fd: RawFd,
    sessions: Sessions,
}

/// A session handed over by the previous generation, while its replayed request goes through
/// the app: the extractor takes it.
#[derive(Clone)]
struct Resumed(Arc<Mutex<Option<ResumedSession>>>);

struct ResumedSession {
    stream: TcpStream,
    unread: Vec<u8>,
    state: Vec<u8>,
    head: Head,
    relay: Relay,
    sessions: Sessions,
}

impl Resumed {
    fn take(&self) -> Option<ResumedSession> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// axum's `WebSocketUpgrade`, for sessions that can be handed to the next generation: extract it
/// in a handler and answer with [`on_upgrade`](Self::on_upgrade), as with axum's.
pub struct WebSocketUpgrade(Kind);

enum Kind {
    /// A handshake to answer.
    Upgrade {
        on_upgrade: hyper::upgrade::OnUpgrade,
        key: HeaderValue,
        head: Head,
        accepted: Option<Accepted>,
    },
    /// A session the previous generation handed over, replayed through the app.
    Resume(Resumed),
}

impl std::fmt::Debug for WebSocketUpgrade {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Kind::Upgrade { head, .. } => {
                write!(f, "WebSocketUpgrade({} {})", head.method, head.uri)
            }
            Kind::Resume(_) => write!(f, "WebSocketUpgrade(resumed)"),
        }
    }
}

impl WebSocketUpgrade {
    /// Answers the handshake (`101 Switching Protocols`) and runs `callback` with the session
    /// once the connection is upgraded — or, for a session the previous generation handed over,
    /// with that session, resumed. The session is tracked by [`serve`]'s drain.
    pub fn on_upgrade<F, Fut>(self, callback: F) -> Response
    where
        F: FnOnce(WebSocket) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        match self.0 {
            Kind::Upgrade {
                on_upgrade,
                key,
                head,
                accepted,
            } => {
                let (fd, sessions) = match accepted {
                    Some(a) => (Some(a.fd), Some(a.sessions)),
                    None => (None, None),
                };
                let relay = sessions.as_ref().map(Sessions::relay);
                let task = async move {
                    let upgraded = match on_upgrade.await {
                        Ok(u) => u,
                        Err(e) => {
                            tracing::debug!("WebSocket upgrade failed: {e}");
                            return;
                        }
                    };
                    let conn = Conn(ConnKind::Upgraded {
                        io: TokioIo::new(upgraded),
                        fd,
                    });
                    callback(WebSocket::upgraded(conn, relay, head).await).await;
                };
                match sessions {
                    Some(s) => drop(s.spawn(task)),
                    None => drop(tokio::spawn(task)),
                }
                switching_protocols(Some(&key))
            }
            Kind::Resume(slot) => {
                if let Some(r) = slot.take() {
                    let sessions = r.sessions.clone();
                    sessions.spawn(async move {
                        let conn = Conn(ConnKind::Resumed(r.stream));
                        let ws = WebSocket::resume_decoded(
                            conn,
                            r.unread,
                            Some(r.head),
                            r.state,
                            Some(r.relay),
                        )
                        .await;
                        callback(ws).await;
                    });
                }
                switching_protocols(None)
            }
        }
    }
}

fn switching_protocols(key: Option<&HeaderValue>) -> Response {
    let mut r = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket");
    if let Some(key) = key {
        let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
        r = r.header(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    r.body(Body::empty())
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// Why a request is not a WebSocket handshake this extractor can answer.
#[derive(Debug)]
pub struct WebSocketUpgradeRejection {
    status: StatusCode,
    why: &'static str,
}

impl std::fmt::Display for WebSocketUpgradeRejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.why)
    }
}

impl std::error::Error for WebSocketUpgradeRejection {}

impl IntoResponse for WebSocketUpgradeRejection {
    fn into_response(self) -> Response {
        (self.status, self.why).into_response()
    }
}

fn reject(status: StatusCode, why: &'static str) -> WebSocketUpgradeRejection {
    WebSocketUpgradeRejection { status, why }
}

impl<S: Send + Sync> FromRequestParts<S> for WebSocketUpgrade {
    type Rejection = WebSocketUpgradeRejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        if let Some(r) = parts.extensions.remove::<Resumed>() {
            return Ok(WebSocketUpgrade(Kind::Resume(r)));
        }
        if parts.version > Version::HTTP_11 {
            return Err(reject(
                StatusCode::HTTP_VERSION_NOT_SUPPORTED,
                "WebSocket over HTTP/2 is not served here: use HTTP/1.1",
            ));
        }
        if parts.method != Method::GET {
            return Err(reject(
                StatusCode::METHOD_NOT_ALLOWED,
                "a WebSocket handshake is a GET request",
            ));
        }
        if !header_contains(&parts.headers, header::CONNECTION, "upgrade") {
            return Err(reject(
                StatusCode::BAD_REQUEST,
                "`Connection` header did not include `upgrade`",
            ));
        }
        if !header_is(&parts.headers, header::UPGRADE, "websocket") {
            return Err(reject(
                StatusCode::BAD_REQUEST,
                "`Upgrade` header did not include `websocket`",
            ));
        }
        if !header_is(&parts.headers, header::SEC_WEBSOCKET_VERSION, "13") {
            return Err(reject(
                StatusCode::BAD_REQUEST,
                "`Sec-WebSocket-Version` header did not include `13`",
            ));
        }
        let key = parts
            .headers
            .get(header::SEC_WEBSOCKET_KEY)
            .cloned()
            .ok_or_else(|| {
                reject(
                    StatusCode::BAD_REQUEST,
                    "`Sec-WebSocket-Key` header missing",
                )
            })?;
        let on_upgrade = parts
            .extensions
            .remove::<hyper::upgrade::OnUpgrade>()
            .ok_or_else(|| {
                reject(
                    StatusCode::UPGRADE_REQUIRED,
                    "this connection cannot be upgraded (served without upgrades)",
                )
            })?;
        let head = Head {
            method: parts.method.to_string(),
            uri: parts.uri.to_string(),
            headers: parts
                .headers
                .iter()
                .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
                .collect(),
        };
        Ok(WebSocketUpgrade(Kind::Upgrade {
            on_upgrade,
            key,
            head,
            accepted: parts.extensions.get::<Accepted>().cloned(),
        }))
    }
}

fn header_is(headers: &HeaderMap, name: HeaderName, value: &str) -> bool {
    headers
        .get(&name)
        .is_some_and(|h| h.as_bytes().eq_ignore_ascii_case(value.as_bytes()))
}

fn header_contains(headers: &HeaderMap, name: HeaderName, value: &str) -> bool {
    headers.get_all(&name).iter().any(|h| {
        h.to_str()
            .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(value)))
    })
}

/// Serves an axum app (any tower service on `Request<axum::body::Body>`) on `listener` as
/// [`hotexec::serve`](crate::serve()) does — HTTP/1.1 and HTTP/2, drained without losing a
/// request — and hands its WebSocket sessions ([`WebSocketUpgrade`]) to the next generation,
/// resuming those the previous generation hands over (see the [module](self)).
pub async fn serve<L, S, B>(mut listener: L, app: S, shutdown: Shutdown) -> io::Result<()>
where
    L: Listener<Io = TcpStream>,
    S: tower_service::Service<Request<Body>, Response = axum::http::Response<B>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let sessions = Sessions::new(shutdown);
    let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
    while let Some(session) = sessions.accept(&mut listener).await {
        if session.resumed {
            let (app, s) = (app.clone(), sessions.clone());
            sessions.spawn(async move { resume(session, app, s).await });
            continue;
        }
        let accepted = Accepted {
            fd: session.stream.as_raw_fd(),
            sessions: sessions.clone(),
        };
        let app = app.clone();
        let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
            let mut req = req.map(Body::new);
            // Only the WebSocket extractor reads it, and only on a request with `Upgrade`:
            // the others are spared an allocation each.
            if req.headers().contains_key(hyper::header::UPGRADE) {
                req.extensions_mut().insert(accepted.clone());
            }
            call(app.clone(), req)
        });
        let (s, b) = (sessions.clone(), builder.clone());
        sessions.spawn(async move {
            if let Err(e) = serve_conn(session.stream, service, s.connections(), &b, None).await {
                tracing::debug!("connection: {e}");
            }
        });
    }
    tracing::info!(
        pid = std::process::id(),
        open = sessions.connections().len(),
        "stopped accepting; draining HTTP connections, handing WebSocket sessions off"
    );
    sessions.wait().await;
    Ok(())
}

/// `app.call(req)`, once it is ready.
async fn call<S>(mut app: S, req: Request<Body>) -> Result<S::Response, S::Error>
where
    S: tower_service::Service<Request<Body>>,
{
    std::future::poll_fn(|cx| app.poll_ready(cx)).await?;
    app.call(req).await
}

/// Replays the request a handed-over session was upgraded by through the app, so that the
/// handler its route names resumes it; closes it (`1001`) if none does.
async fn resume<S, B>(session: Session<TcpStream>, app: S, sessions: Sessions)
where
    S: tower_service::Service<Request<Body>, Response = axum::http::Response<B>>,
    S::Error: Into<BoxError>,
{
    let Session {
        stream,
        unread,
        state,
        relay,
        ..
    } = session;
    let (head, state) = match websocket::envelope_decode(&state) {
        Ok((Some(head), state)) => (head, state),
        Ok((None, _)) | Err(_) => {
            // Not an axum session (or a state this build cannot read): resumed only to be
            // closed, so that its client reconnects.
            let why = websocket::envelope_decode(&state)
                .err()
                .unwrap_or_else(|| "it carries no request to replay".into());
            tracing::warn!(
                "a handed-over WebSocket session cannot be resumed ({why}): closed with 1001"
            );
            close_going_away(stream, unread, relay).await;
            return;
        }
    };
    let slot = Resumed(Arc::new(Mutex::new(Some(ResumedSession {
        stream,
        unread,
        state,
        head: head.clone(),
        relay,
        sessions,
    }))));
    let mut req = Request::new(Body::empty());
    *req.method_mut() = Method::from_bytes(head.method.as_bytes()).unwrap_or(Method::GET);
    *req.uri_mut() = head.uri.parse().unwrap_or_default();
    *req.version_mut() = Version::HTTP_11;
    for (name, value) in &head.headers {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(value),
        ) {
            req.headers_mut().append(n, v);
        }
    }
    req.extensions_mut().insert(slot.clone());
    let status = call(app, req).await.ok().map(|r| r.status());
    if let Some(r) = slot.take() {
        tracing::warn!(
            uri = %head.uri,
            ?status,
            "a handed-over WebSocket session found no handler that upgrades it in this build: closed with 1001"
        );
        close_going_away(r.stream, r.unread, r.relay).await;
    }
}

async fn close_going_away(stream: TcpStream, unread: Vec<u8>, relay: Relay) {
    // Not handed on again: it is being closed.
    drop(relay);
    let conn = Conn(ConnKind::Resumed(stream));
    let mut ws = WebSocket::resume_decoded(conn, unread, None, Vec::new(), None).await;
    let _ = ws.close(Some(websocket::going_away())).await;
    // Read until the client answers the close (or leaves).
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        while let Some(Ok(_)) = ws.recv().await {}
    })
    .await;
}
