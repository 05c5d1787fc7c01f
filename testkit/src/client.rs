//! A blocking HTTP/1.1 client for the tests: one request per call, a deadline on every socket
//! operation, and nothing counted as ok without a 200 status line and a complete `pid=` body.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::outcome::{Outcome, classify};
use crate::wait::wait_for;

/// One `GET path` on a new connection with `Connection: close`; a full response or a class of
/// failure. Nothing counts as ok without a 200 status line and a complete `pid=` body.
pub fn get(addr: SocketAddr, path: &str, timeout: Duration) -> Outcome {
    let s = match TcpStream::connect_timeout(&addr, timeout) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return Outcome::Refused,
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return Outcome::Timeout,
        // A handshake the kernel completed, then reset (the listener closed with it queued):
        // the same outcome as a reset after connect, not another kind of failure.
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Outcome::Reset,
        Err(e) => return Outcome::Other(format!("connect: {e}")),
    };
    request_on(s, path, timeout)
}

/// As [`get`], on a connection already made.
pub fn request_on(mut s: TcpStream, path: &str, timeout: Duration) -> Outcome {
    s.set_read_timeout(Some(timeout)).unwrap();
    s.set_write_timeout(Some(timeout)).unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    if let Err(e) = s.write_all(req.as_bytes()) {
        return classify(e);
    }
    let mut buf = Vec::new();
    if let Err(e) = s.read_to_end(&mut buf) {
        return classify(e);
    }
    let text = String::from_utf8_lossy(&buf);
    if text.is_empty() {
        return Outcome::Eof;
    }
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return Outcome::Eof;
    };
    if !head.starts_with("HTTP/1.1 200") {
        return Outcome::BadStatus(head.lines().next().unwrap_or("").to_string());
    }
    let len: Option<usize> = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().to_string())
        })
        .and_then(|v| v.parse().ok());
    if len.is_some_and(|n| n != body.len()) {
        return Outcome::Eof;
    }
    match body
        .strip_prefix("pid=")
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|p| p.parse().ok())
    {
        Some(pid) if body.ends_with('\n') => Outcome::Ok { pid },
        _ => Outcome::BadStatus(format!("body {body:?}")),
    }
}

/// Waits until a `GET /` on a new connection is answered by `pid`, within `timeout`.
///
/// The pid file names a new generation a moment before the old one's accept loop has seen
/// `Shutdown`: a connection made in between is (correctly) served by the old generation. So
/// "the new generation serves" is checked by polling, never by the very next request; every
/// answer must still be a complete response (any failure fails the test at once).
pub fn answered_by(addr: SocketAddr, pid: u32, timeout: Duration) {
    let mut others = Vec::new();
    wait_for(
        timeout,
        &format!("an answer from pid {pid}"),
        || match get(addr, "/", timeout) {
            Outcome::Ok { pid: p } if p == pid => Some(()),
            Outcome::Ok { pid: p } => {
                others.push(p);
                None
            }
            failed => panic!(
                "GET / failed while waiting for pid {pid}: {failed:?} (answered before by {others:?})"
            ),
        },
    )
}

/// The body of a `GET path` answered 200, or why there is none.
pub fn get_text(addr: SocketAddr, path: &str, timeout: Duration) -> Result<String, String> {
    let req = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    let text = round_trip(addr, &req, timeout)?;
    match text.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.1 200") => Ok(body.to_string()),
        _ => Err(format!("not a 200 response: {text:?}")),
    }
}

/// Sends `req` on a new connection and reads until the server closes it: the whole response,
/// or which step failed.
fn round_trip(addr: SocketAddr, req: &str, timeout: Duration) -> Result<String, String> {
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(timeout)).unwrap();
    s.write_all(req.as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).map_err(|e| format!("read: {e}"))?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// One `GET path` on the keep-alive connection in `conn` (connecting first when there is
/// none), classified as [`get`] does. The connection is kept for the next request unless the
/// server said `Connection: close` or anything failed. Returns the outcome and whether the
/// request went out on a reused connection.
pub fn get_keepalive(
    conn: &mut Option<std::io::BufReader<TcpStream>>,
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> (Outcome, bool) {
    let reused = conn.is_some();
    if conn.is_none() {
        let s = match TcpStream::connect_timeout(&addr, timeout) {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                return (Outcome::Refused, false);
            }
            Err(e) => return (classify(e), false),
        };
        s.set_read_timeout(Some(timeout)).unwrap();
        s.set_write_timeout(Some(timeout)).unwrap();
        s.set_nodelay(true).unwrap();
        *conn = Some(std::io::BufReader::new(s));
    }
    let mut result = || -> Result<(Outcome, bool), Outcome> {
        let r = conn.as_mut().unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n");
        r.get_mut().write_all(req.as_bytes()).map_err(classify)?;
        let (pid, close) = read_response(r)?;
        Ok((Outcome::Ok { pid }, close))
    };
    match result() {
        Ok((outcome, close)) => {
            if close {
                *conn = None;
            }
            (outcome, reused)
        }
        Err(outcome) => {
            *conn = None;
            (outcome, reused)
        }
    }
}

/// Reads one HTTP/1.1 response from `r` (any stream: plain TCP, TLS): status 200, a
/// `Content-Length` body `pid=<pid>…`; returns the pid and whether the server said
/// `Connection: close`. Anything else is the [`Outcome`] that says what went wrong.
pub fn read_response(r: &mut impl std::io::BufRead) -> Result<(u32, bool), Outcome> {
    let mut status = String::new();
    if r.read_line(&mut status).map_err(classify)? == 0 {
        return Err(Outcome::Eof);
    }
    let (mut len, mut close) = (None, false);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).map_err(classify)? == 0 {
            return Err(Outcome::Eof);
        }
        let line = line.trim_end().to_ascii_lowercase();
        if line.is_empty() {
            break;
        }
        if let Some(v) = line.strip_prefix("content-length:") {
            len = v.trim().parse::<usize>().ok();
        } else if let Some(v) = line.strip_prefix("connection:") {
            close = v.trim() == "close";
        }
    }
    if !status.starts_with("HTTP/1.1 200") {
        return Err(Outcome::BadStatus(status.trim_end().to_string()));
    }
    let len = len.ok_or_else(|| Outcome::BadStatus("no content-length".into()))?;
    let mut body = vec![0; len];
    r.read_exact(&mut body).map_err(classify)?;
    let body = String::from_utf8_lossy(&body);
    let pid = body
        .strip_prefix("pid=")
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| Outcome::BadStatus(format!("body {body:?}")))?;
    Ok((pid, close))
}

/// One `POST path` (empty body) on a new connection: (status code, body), or why it failed.
pub fn post(addr: SocketAddr, path: &str, timeout: Duration) -> Result<(u16, String), String> {
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: test\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    let text = round_trip(addr, &req, timeout)?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or(format!("no header end in {text:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or(format!("bad status line in {head:?}"))?;
    Ok((status, body.to_string()))
}
