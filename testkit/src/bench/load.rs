//! The load generator of the `demo` and `bench` examples: N concurrent HTTP/1.1 clients (or
//! HTTP/2 streams, [`Mode::H2`]) on tokio, each request classified. Nothing counts as ok without
//! a `200` status line and the complete body (`Content-Length` bytes, starting `pid=`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub use crate::outcome::Class;
use crate::procfs::parent_of;

/// How a client uses connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// A new connection per request, `Connection: close`.
    Close,
    /// One connection for many requests; a new one after the server closes it (after a response
    /// saying `Connection: close`, or any error).
    KeepAlive,
    /// HTTP/2 with prior knowledge (h2c), hyper's client: [`H2_STREAMS_PER_CONN`] clients share
    /// one connection, each running one stream at a time; a new connection once the server
    /// closed it after its `GOAWAY`.
    H2,
}

/// Clients (streams in flight) per HTTP/2 connection in [`Mode::H2`].
pub const H2_STREAMS_PER_CONN: usize = 4;

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Close => "new connection per request",
            Mode::KeepAlive => "keep-alive",
            Mode::H2 => "HTTP/2 (h2c), 4 streams per connection",
        }
    }
}

/// One request: start and end in µs since the run's start, its class, and the generation that
/// answered (0 when none did).
#[derive(Clone, Copy, Debug)]
pub struct Rec {
    pub start_us: u64,
    pub end_us: u64,
    pub class: Class,
    pub generation: u32,
}

/// How a responding pid maps to the "generation" an upgrade replaces: the pid itself (hotexec,
/// naive restart), or its parent (nginx workers belong to a master).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GenerationOf {
    Pid,
    Parent,
}

/// Live counters, for progress lines.
#[derive(Default)]
pub struct Live {
    pub ok: AtomicU64,
    pub failed: AtomicU64,
    /// HTTP/2 requests sent again because the server provably never processed them (see
    /// [`h2_unprocessed`]); each is counted once, by its final outcome, in `ok` or `failed`.
    pub resent: AtomicU64,
}

/// A running load: clients on the caller's tokio runtime.
pub struct Load {
    pub t0: Instant,
    pub live: Arc<Live>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Vec<Rec>>>,
}

pub struct Config {
    pub addr: SocketAddr,
    /// The mode of each client (one entry per client).
    pub modes: Vec<Mode>,
    pub generation_of: GenerationOf,
    pub timeout: Duration,
    /// Hard bound on the run, whatever happens.
    pub max_duration: Duration,
}

impl Load {
    pub fn start(cfg: Config) -> Load {
        let t0 = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let live = Arc::new(Live::default());
        let mut h2_clients = 0;
        let mut h2_slot = Arc::new(H2Slot::default());
        let tasks = cfg
            .modes
            .iter()
            .map(|&mode| {
                let (stop, live) = (stop.clone(), live.clone());
                let (addr, gen_of, timeout, max) =
                    (cfg.addr, cfg.generation_of, cfg.timeout, cfg.max_duration);
                let slot = (mode == Mode::H2).then(|| {
                    if h2_clients > 0 && h2_clients % H2_STREAMS_PER_CONN == 0 {
                        h2_slot = Arc::new(H2Slot::default());
                    }
                    h2_clients += 1;
                    h2_slot.clone()
                });
                tokio::spawn(async move {
                    let client = Client {
                        addr,
                        mode,
                        gen_of,
                        timeout,
                        t0,
                        hard_stop: t0 + max,
                        h2: slot,
                    };
                    client.run(stop, live).await
                })
            })
            .collect();
        Load {
            t0,
            live,
            stop,
            tasks,
        }
    }

    /// Microseconds since the start of the run.
    pub fn now_us(&self) -> u64 {
        self.t0.elapsed().as_micros() as u64
    }

    /// Stops the clients (each finishes the request in hand) and returns every request, ordered
    /// by end time.
    pub async fn finish(self) -> Vec<Rec> {
        self.stop.store(true, Ordering::SeqCst);
        let mut all = Vec::new();
        for t in self.tasks {
            all.extend(t.await.unwrap_or_default());
        }
        all.sort_by_key(|r| r.end_us);
        all
    }
}

const REQUEST_CLOSE: &[u8] = b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n";
const REQUEST_KEEP: &[u8] = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n";

/// One client's settings.
struct Client {
    addr: SocketAddr,
    mode: Mode,
    gen_of: GenerationOf,
    timeout: Duration,
    t0: Instant,
    hard_stop: Instant,
    /// The HTTP/2 connection this client shares ([`Mode::H2`]).
    h2: Option<Arc<H2Slot>>,
}

impl Client {
    async fn run(self, stop: Arc<AtomicBool>, live: Arc<Live>) -> Vec<Rec> {
        let Client {
            addr,
            mode,
            gen_of,
            timeout,
            t0,
            hard_stop,
            h2,
        } = self;
        let mut out = Vec::with_capacity(1 << 16);
        let mut conn: Option<Conn> = None;
        let mut generations: HashMap<u32, u32> = HashMap::new();
        while !stop.load(Ordering::Relaxed) && Instant::now() < hard_stop && out.len() < 5_000_000 {
            let start = Instant::now();
            let result = match &h2 {
                // Every step of an HTTP/2 request is under this deadline, and a timeout says
                // which step it was in.
                Some(slot) => Ok(request_h2(slot, addr, &live, start + timeout).await),
                None => tokio::time::timeout(timeout, request(&mut conn, addr, mode)).await,
            };
            let end = Instant::now();
            let (class, pid) = match result {
                Ok(Ok(pid)) => (Class::Ok, pid),
                Ok(Err(class)) => (class, 0),
                Err(_) => (Class::Timeout, 0),
            };
            if class != Class::Ok {
                conn = None;
            }
            let generation = match (pid, gen_of) {
                (0, _) => 0,
                (p, GenerationOf::Pid) => p,
                (p, GenerationOf::Parent) => *generations
                    .entry(p)
                    .or_insert_with(|| parent_of(p).unwrap_or(p)),
            };
            if class == Class::Ok {
                live.ok.fetch_add(1, Ordering::Relaxed);
            } else {
                live.failed.fetch_add(1, Ordering::Relaxed);
                if class == Class::Refused {
                    // Nothing is listening: do not spin.
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            out.push(Rec {
                start_us: start.duration_since(t0).as_micros() as u64,
                end_us: end.duration_since(t0).as_micros() as u64,
                class,
                generation,
            });
        }
        out
    }
}

struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

/// One request on `conn` (connecting first if needed); the responding pid, or the failure.
/// Leaves `conn` open only when the connection may be reused.
async fn request(conn: &mut Option<Conn>, addr: SocketAddr, mode: Mode) -> Result<u32, Class> {
    if conn.is_none() {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| Class::of_io(&e))?;
        let _ = stream.set_nodelay(true);
        *conn = Some(Conn {
            stream,
            buf: Vec::with_capacity(512),
        });
    }
    let c = conn.as_mut().expect("connected above");
    let req = match mode {
        Mode::Close => REQUEST_CLOSE,
        Mode::KeepAlive | Mode::H2 => REQUEST_KEEP,
    };
    c.stream
        .write_all(req)
        .await
        .map_err(|e| Class::of_io(&e))?;
    let resp = read_response(&mut c.stream, &mut c.buf).await?;
    if mode == Mode::Close || resp.close {
        *conn = None;
    }
    Ok(resp.pid)
}

type H2Sender = hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>>;

/// The HTTP/2 connection a group of [`Mode::H2`] clients shares; `None` until the first
/// connects, and again once the server closed it.
#[derive(Default)]
pub struct H2Slot(tokio::sync::Mutex<Option<H2Sender>>);

/// True when the protocol proves an HTTP/2 request never reached the server's application, so a
/// client may send it again (as HTTP/2 clients do after a `GOAWAY`): it never left this client
/// (hyper canceled it; or h2 refused to open its stream because the connection had received a
/// `GOAWAY`, returning that `GOAWAY`'s error: remote, `NO_ERROR`), or its stream lies above the
/// last stream id of the final `GOAWAY`, which the server guarantees it never processed
/// (RFC 9113 §6.8; rare with the two-step `GOAWAY`, see tests/serve_h2.rs).
pub fn h2_unprocessed(e: &hyper::Error) -> bool {
    if e.is_canceled() {
        return true;
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(h2) = s.downcast_ref::<h2::Error>() {
            return h2.is_go_away() && h2.is_remote() && h2.reason() == Some(h2::Reason::NO_ERROR);
        }
        source = s.source();
    }
    false
}

fn classify_hyper(e: &hyper::Error) -> Class {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(h2) = s.downcast_ref::<h2::Error>() {
            if h2.is_reset() {
                return Class::Reset;
            }
            return h2.get_io().map_or(Class::Other, Class::of_io);
        }
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return Class::of_io(io);
        }
        source = s.source();
    }
    if e.is_incomplete_message() {
        Class::Eof
    } else {
        Class::Other
    }
}

/// One `GET /` over the shared HTTP/2 connection in `slot` (connecting first when there is none
/// or the server closed it); sent again, at most 3 times, only when the server provably never
/// processed it.
async fn request_h2(
    slot: &H2Slot,
    addr: SocketAddr,
    live: &Live,
    deadline: Instant,
) -> Result<u32, Class> {
    use http_body_util::BodyExt;
    let deadline = tokio::time::Instant::from_std(deadline);
    // One step of the request under the deadline; a timeout is reported with the step.
    async fn step<T>(
        deadline: tokio::time::Instant,
        what: &str,
        f: impl std::future::Future<Output = T>,
    ) -> Result<T, Class> {
        tokio::time::timeout_at(deadline, f).await.map_err(|_| {
            eprintln!("\nHTTP/2 request timed out {what}");
            Class::Timeout
        })
    }
    let mut tries = 0;
    loop {
        let mut sender = {
            let mut s = step(
                deadline,
                "waiting while another stream connected",
                slot.0.lock(),
            )
            .await?;
            match s.as_ref() {
                Some(c) if !c.is_closed() => c.clone(),
                _ => {
                    let tcp = step(deadline, "connecting", TcpStream::connect(addr))
                        .await?
                        .map_err(|e| Class::of_io(&e))?;
                    let _ = tcp.set_nodelay(true);
                    let handshake = hyper::client::conn::http2::handshake(
                        hyper_util::rt::TokioExecutor::new(),
                        hyper_util::rt::TokioIo::new(tcp),
                    );
                    let (sender, conn) = step(deadline, "in the handshake", handshake)
                        .await?
                        .map_err(|e| classify_hyper(&e))?;
                    tokio::spawn(conn);
                    *s = Some(sender.clone());
                    sender
                }
            }
        };
        // A connection the server closed after its GOAWAY fails `ready`: nothing was sent.
        let ready = step(
            deadline,
            "waiting for the connection to take a stream",
            sender.ready(),
        );
        if ready.await?.is_ok() {
            let req = hyper::Request::get(format!("http://{addr}/"))
                .body(http_body_util::Empty::new())
                .expect("a valid request");
            let sent = sender.try_send_request(req);
            match step(deadline, "waiting for the response head", sent).await? {
                Ok(resp) => {
                    if resp.status() != 200 {
                        return Err(Class::BadStatus);
                    }
                    let body = step(
                        deadline,
                        "reading the response body",
                        resp.into_body().collect(),
                    )
                    .await?
                    .map_err(|e| classify_hyper(&e))?
                    .to_bytes();
                    return pid_in_body(&body).ok_or(Class::BadStatus);
                }
                Err(e) if e.message().is_some() || h2_unprocessed(e.error()) => {}
                Err(e) => return Err(classify_hyper(e.error())),
            }
        }
        if tries == 3 {
            return Err(Class::Other);
        }
        tries += 1;
        live.resent.fetch_add(1, Ordering::Relaxed);
        // This connection takes no new streams: the next attempt opens another.
        *step(deadline, "waiting to replace the connection", slot.0.lock()).await? = None;
    }
}

/// A complete response.
pub struct Response {
    pub pid: u32,
    /// The server said `Connection: close`.
    pub close: bool,
}

/// Reads one complete response from `stream` (`buf` keeps bytes read past it; none are
/// expected, as requests are not pipelined).
pub async fn read_response(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<Response, Class> {
    buf.clear();
    loop {
        if let Some(head_end) = find(buf, b"\r\n\r\n") {
            let (status_ok, len, close) = {
                let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| Class::BadStatus)?;
                let mut lines = head.split("\r\n");
                let status = lines.next().unwrap_or("");
                let mut len = None;
                let mut close = false;
                for l in lines {
                    let Some((k, v)) = l.split_once(':') else {
                        continue;
                    };
                    let v = v.trim();
                    if k.eq_ignore_ascii_case("content-length") {
                        len = v.parse::<usize>().ok();
                    } else if k.eq_ignore_ascii_case("connection") {
                        close = v.eq_ignore_ascii_case("close");
                    }
                }
                let ok = status.starts_with("HTTP/1.1 200") || status.starts_with("HTTP/1.0 200");
                (ok, len, close)
            };
            let len = len.ok_or(Class::BadStatus)?;
            let body_start = head_end + 4;
            while buf.len() < body_start + len {
                read_more(stream, buf).await?;
            }
            if !status_ok {
                return Err(Class::BadStatus);
            }
            let body = &buf[body_start..body_start + len];
            let pid = pid_in_body(body).ok_or(Class::BadStatus)?;
            return Ok(Response { pid, close });
        }
        read_more(stream, buf).await?;
    }
}

/// Appends what `stream` has next to `buf`; the end of the stream is [`Class::Eof`].
async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<(), Class> {
    let mut chunk = [0u8; 1024];
    let n = stream
        .read(&mut chunk)
        .await
        .map_err(|e| Class::of_io(&e))?;
    if n == 0 {
        return Err(Class::Eof);
    }
    buf.extend_from_slice(&chunk[..n]);
    Ok(())
}

/// The pid of a body that starts `pid=<digits>`.
fn pid_in_body(body: &[u8]) -> Option<u32> {
    let r = body.strip_prefix(b"pid=")?;
    let digits = r.iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&r[..digits]).ok()?.parse().ok()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The `q` quantile (0..=1) of sorted `v`.
pub fn quantile<T: Copy + Default>(v: &[T], q: f64) -> T {
    if v.is_empty() {
        return T::default();
    }
    v[((v.len() - 1) as f64 * q).round() as usize]
}

/// Successful requests per 100 ms bucket, over whole buckets between `from_us` and `to_us`.
pub fn buckets(recs: &[Rec], from_us: u64, to_us: u64) -> Vec<u64> {
    let n = ((to_us.saturating_sub(from_us)) / 100_000) as usize;
    let mut b = vec![0u64; n];
    for r in recs {
        if r.class == Class::Ok && r.end_us >= from_us {
            let i = ((r.end_us - from_us) / 100_000) as usize;
            if i < n {
                b[i] += 1;
            }
        }
    }
    b
}
