//! A probe before ready: [`Serve::probe`](super::Serve::probe) sends one request through the
//! app's own service, in process, before this generation reports ready. Not `2xx` (or a
//! panic, a service error, no answer in time) and the generation does not report ready: it
//! fails its start with a reason that names the probe and what it got, and the old generation
//! serves on (the upgrade fails with "exited before ready").
//!
//! The request goes through hyper's HTTP/1.1 server on an in-memory pipe
//! (`tokio::io::duplex`), into exactly the service the listener will serve, so it exercises the
//! app's routing, extractors and state as a client would, without a socket: nothing on the
//! network sees it, and it is not counted in the generation's health.

use std::fmt;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::conn::BoxError;
use super::count::{CatchUnwind, CountedBody, panic_message};

/// How long a probe may take by default: well inside the default `ready_timeout` (30 s).
pub const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// Most bytes of a response read (its head, and the start of its body for the message).
const MAX_RESPONSE: usize = 16 * 1024;
/// Most bytes of a failed probe's body quoted in the reason.
const QUOTED_BODY: usize = 200;

/// A request sent through the app's own service before this generation reports ready; see
/// [`Serve::probe`](super::Serve::probe).
///
/// ```
/// use hotexec::serve::Probe;
/// use std::time::Duration;
///
/// let p: Probe = "GET /healthz".parse().unwrap();
/// let p = Probe::get("/healthz?deep=1")
///     .header("authorization", "Bearer probe-token")
///     .timeout(Duration::from_secs(10));
/// # let _ = p;
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    timeout: Duration,
}

/// Why a probe's text was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeSpecError {
    input: String,
    why: &'static str,
}

impl fmt::Display for ProbeSpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid probe {:?}: {}; expected `METHOD /path`, e.g. \"GET /healthz\"",
            self.input, self.why
        )
    }
}

impl std::error::Error for ProbeSpecError {}

impl TryFrom<&str> for Probe {
    type Error = ProbeSpecError;

    fn try_from(s: &str) -> Result<Probe, ProbeSpecError> {
        s.parse()
    }
}

impl std::str::FromStr for Probe {
    type Err = ProbeSpecError;

    /// `GET /healthz`, `HEAD /ready`, or just `/healthz` (a `GET`).
    fn from_str(s: &str) -> Result<Probe, ProbeSpecError> {
        let err = |why| ProbeSpecError {
            input: s.to_owned(),
            why,
        };
        let mut parts = s.split(' ');
        let (method, path) = match (parts.next(), parts.next(), parts.next()) {
            (Some(p), None, None) => ("GET", p),
            (Some(m), Some(p), None) => (m, p),
            _ => return Err(err("more than a method and a path")),
        };
        if method.is_empty()
            || !method
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b == b'-' || b == b'_')
        {
            return Err(err("the method must be an upper-case token such as GET"));
        }
        Probe::new(method, path).map_err(err)
    }
}

impl Probe {
    fn new(method: &str, path: &str) -> Result<Probe, &'static str> {
        if !path.starts_with('/') {
            return Err("the path must start with `/`");
        }
        if path
            .bytes()
            .any(|b| b.is_ascii_control() || b == b' ' || !b.is_ascii())
        {
            return Err("the path must be plain ASCII without spaces (percent-encode the rest)");
        }
        Ok(Probe {
            method: method.to_owned(),
            path: path.to_owned(),
            headers: Vec::new(),
            timeout: DEFAULT_PROBE_TIMEOUT,
        })
    }

    /// A `GET` of `path` (with its query, if any).
    ///
    /// # Panics
    ///
    /// If `path` does not start with `/` or holds spaces, controls or non-ASCII bytes.
    pub fn get(path: &str) -> Probe {
        Probe::new("GET", path).unwrap_or_else(|why| panic!("Probe::get({path:?}): {why}"))
    }

    /// Adds a header (`Host: localhost` is sent unless a `host` header is given).
    ///
    /// # Panics
    ///
    /// If the name is not a header token or the value holds a control character.
    pub fn header(mut self, name: &str, value: &str) -> Probe {
        let name_ok = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.!#$%&'*+^`|~".contains(&b));
        let value_ok = value.bytes().all(|b| b == b'\t' || !b.is_ascii_control());
        assert!(
            name_ok && value_ok,
            "Probe::header({name:?}, {value:?}): not a valid header"
        );
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// How long the probe may take, default [`DEFAULT_PROBE_TIMEOUT`]; keep it well under
    /// `ready_timeout`.
    pub fn timeout(mut self, timeout: Duration) -> Probe {
        self.timeout = timeout;
        self
    }

    /// `GET /healthz`, for messages.
    pub(crate) fn describe(&self) -> String {
        format!("{} {}", self.method, self.path)
    }

    /// The method.
    pub fn method(&self) -> &str {
        &self.method
    }

    /// The path, with its query.
    pub fn path(&self) -> &str {
        &self.path
    }

    fn request_bytes(&self) -> Vec<u8> {
        let mut r = format!("{} {} HTTP/1.1\r\n", self.method, self.path);
        if !self
            .headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("host"))
        {
            r.push_str("host: localhost\r\n");
        }
        r.push_str("user-agent: hotexec-probe\r\nconnection: close\r\n");
        for (n, v) in &self.headers {
            r.push_str(&format!("{n}: {v}\r\n"));
        }
        r.push_str("\r\n");
        r.into_bytes()
    }

    /// Sends the probe through `service`. `Ok`: the status line of a `2xx` and how long it
    /// took; `Err`: why this generation must not report ready.
    pub(crate) async fn run<S, B>(&self, service: S) -> Result<(String, Duration), ProbeFailed>
    where
        S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let started = Instant::now();
        let failed = |what: String| ProbeFailed {
            probe: self.describe(),
            what,
        };
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let conn = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(server), Caught { inner: service });
        let server = tokio::spawn(conn);
        let exchange = async {
            client.write_all(&self.request_bytes()).await?;
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                let n = client.read(&mut chunk).await?;
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
                if buf.len() >= MAX_RESPONSE {
                    break;
                }
            }
            Ok::<_, std::io::Error>(buf)
        };
        let response = match tokio::time::timeout(self.timeout, exchange).await {
            Err(_) => {
                server.abort();
                return Err(failed(format!("no answer within {:?}", self.timeout)));
            }
            Ok(Err(e)) => {
                server.abort();
                return Err(failed(format!("the exchange failed: {e}")));
            }
            Ok(Ok(r)) => r,
        };
        // The client's end goes first: a response cut at MAX_RESPONSE leaves the server writing
        // into a full pipe, which only the end of its peer ends.
        drop(client);
        let served = server.await;
        let text = String::from_utf8_lossy(&response);
        let Some((head, body)) = text.split_once("\r\n\r\n") else {
            let why = match served {
                Ok(Err(e)) => {
                    // hyper's message, then its causes: "error from user's Service: <why>".
                    let mut why = format!("no response: {e}");
                    let mut source = std::error::Error::source(&e);
                    while let Some(cause) = source {
                        why.push_str(&format!(": {cause}"));
                        source = cause.source();
                    }
                    why
                }
                _ => "no response".to_owned(),
            };
            return Err(failed(why));
        };
        let status_line = head.lines().next().unwrap_or("");
        let status = status_line
            .strip_prefix("HTTP/1.1 ")
            .unwrap_or(status_line)
            .to_owned();
        if status.starts_with('2') {
            return Ok((status, started.elapsed()));
        }
        if head
            .lines()
            .any(|l| l.eq_ignore_ascii_case("x-hotexec-probe: handler panicked"))
        {
            return Err(failed("panicked (answered 500)".into()));
        }
        let mut quoted: String = body.chars().take(QUOTED_BODY).collect();
        quoted = quoted.replace(['\r', '\n'], " ").trim().to_owned();
        let body = if quoted.is_empty() {
            String::new()
        } else {
            format!(": {quoted:?}")
        };
        Err(failed(format!("answered {status}{body}")))
    }
}

/// A probe that did not pass: which, and what it got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ProbeFailed {
    probe: String,
    what: String,
}

impl fmt::Display for ProbeFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "probe {} {}: not reporting ready", self.probe, self.what)
    }
}

/// The app's service with a panic answered `500` (the probe says it panicked), uncounted.
struct Caught<S> {
    inner: S,
}

type CaughtFuture<B, E> = Pin<Box<dyn Future<Output = Result<Response<CountedBody<B>>, E>> + Send>>;

impl<S, B> hyper::service::Service<Request<Incoming>> for Caught<S>
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>>,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response<CountedBody<B>>;
    type Error = S::Error;
    type Future = CaughtFuture<B, S::Error>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let response = catch_unwind(AssertUnwindSafe(|| self.inner.call(req)));
        Box::pin(async move {
            let outcome = match response {
                Ok(future) => CatchUnwind::new(future).await,
                Err(payload) => Err(payload),
            };
            match outcome {
                Ok(r) => r.map(|r| r.map(|inner| CountedBody::Body { inner })),
                Err(payload) => {
                    let msg = panic_message(payload.as_ref());
                    tracing::error!(panic = msg, "the probe's handler panicked");
                    let mut resp = CountedBody::internal_error();
                    resp.headers_mut().insert(
                        "x-hotexec-probe",
                        hyper::header::HeaderValue::from_static("handler panicked"),
                    );
                    Ok(resp)
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_text() {
        let p: Probe = "GET /healthz".parse().unwrap();
        assert_eq!(p, Probe::get("/healthz"));
        let p: Probe = "/ready?x=1".parse().unwrap();
        assert_eq!((p.method.as_str(), p.path.as_str()), ("GET", "/ready?x=1"));
        assert_eq!("HEAD /".parse::<Probe>().unwrap().method, "HEAD");
        for bad in [
            "",
            "GET",
            "get /x",
            "GET healthz",
            "GET /a b",
            "GET  /x",
            "GET /é",
        ] {
            let e = bad.parse::<Probe>().unwrap_err().to_string();
            assert!(
                e.contains(&format!("{bad:?}")) && e.contains("GET /healthz"),
                "{e}"
            );
        }
    }

    #[test]
    fn request_bytes_carry_host_unless_given() {
        let r = String::from_utf8(Probe::get("/h").request_bytes()).unwrap();
        assert!(
            r.starts_with("GET /h HTTP/1.1\r\nhost: localhost\r\n"),
            "{r}"
        );
        let r = Probe::get("/h")
            .header("Host", "api.example")
            .request_bytes();
        let r = String::from_utf8(r).unwrap();
        assert!(
            !r.contains("localhost") && r.contains("Host: api.example\r\n"),
            "{r}"
        );
    }

    #[test]
    #[should_panic(expected = "not a valid header")]
    fn a_bad_header_is_refused() {
        let _ = Probe::get("/").header("bad name", "x");
    }
}
