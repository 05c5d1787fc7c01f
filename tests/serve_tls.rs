//! The `tls` example (an axum app served with `hotexec::serve(..).tls(config)`) under real TLS
//! clients through upgrades: a rustls client (HTTP/1.1 keep-alive and new connection per
//! request; every close after `Connection: close` must carry a `close_notify`), `wrk` over
//! https, `h2load` over TLS with new connections arriving throughout, and `openssl s_client`
//! for session resumption. Certificates are made per test with the `openssl` command (a CA and
//! leaf certificates for 127.0.0.1), in a scratch directory removed afterwards.
//!
//! `openssl`, `wrk` and `h2load` are installed by `.ci/install`.
use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hotexec::tls::rustls;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, HandshakeKind, StreamOwned};

use hotexec_testkit::prelude::*;
use hotexec_testkit::tools::{self, WrkSummary};

const HTTPS: &str = "HOTEXEC_LISTEN_HTTPS";

// ---------------------------------------------------------------------------------------------
// Certificates

/// A test CA and leaf certificates it signs, made with the `openssl` command.
struct Pki {
    dir: Scratch,
    ca: PathBuf,
    ca_key: PathBuf,
}

/// A leaf certificate and its key.
#[derive(Clone)]
struct Leaf {
    cert: PathBuf,
    key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) -> String {
    tools::run(
        Command::new("openssl").current_dir(dir).args(args),
        "openssl",
        Duration::from_secs(30),
    )
}

impl Pki {
    fn new() -> Pki {
        let dir = Scratch::new("pki");
        openssl(
            &dir.0,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=hotexec-test-ca",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
            ],
        );
        std::fs::write(
            dir.0.join("leaf.ext"),
            "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n\
             extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n",
        )
        .unwrap();
        let ca = dir.0.join("ca.pem");
        let ca_key = dir.0.join("ca.key");
        Pki { dir, ca, ca_key }
    }

    /// A leaf certificate for 127.0.0.1 named `name` (its files: `<name>.pem`, `<name>.key`).
    fn leaf(&self, name: &str) -> Leaf {
        let d = &self.dir.0;
        let (key, csr, cert) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
        );
        openssl(
            d,
            &[
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-subj",
                &format!("/CN={name}"),
                "-keyout",
                &key,
                "-out",
                &csr,
            ],
        );
        let serial = format!(
            "0x{:x}",
            std::process::id() as u64 * 1_000_003 + name.len() as u64
        );
        openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                self.ca.to_str().unwrap(),
                "-CAkey",
                self.ca_key.to_str().unwrap(),
                "-set_serial",
                &serial,
                "-days",
                "2",
                "-extfile",
                "leaf.ext",
                "-out",
                &cert,
            ],
        );
        Leaf {
            cert: d.join(cert),
            key: d.join(key),
        }
    }

    /// The paths the server reads (`server.pem`, `server.key`), set to `leaf` by rename, as a
    /// certificate renewal tool does.
    fn install(&self, leaf: &Leaf) -> Leaf {
        let live = Leaf {
            cert: self.dir.0.join("server.pem"),
            key: self.dir.0.join("server.key"),
        };
        for (from, to) in [(&leaf.cert, &live.cert), (&leaf.key, &live.key)] {
            let tmp = to.with_extension("tmp");
            std::fs::copy(from, &tmp).unwrap();
            std::fs::rename(&tmp, to).unwrap();
        }
        live
    }
}

fn start_tls(live: &Leaf, env: &[(&str, &str)]) -> App {
    let (cert, key) = (live.cert.to_str().unwrap(), live.key.to_str().unwrap());
    let mut all = vec![("TLS_CERT", cert), ("TLS_KEY", key)];
    all.extend_from_slice(env);
    App::start("tls", HTTPS, &all)
}

// ---------------------------------------------------------------------------------------------
// A rustls client

/// A client configuration trusting the test CA, for the given TLS versions; `Arc` so that its
/// session store (for resumption) is shared by every connection made with it.
fn client_config(
    ca: &Path,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut cfg = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(cfg)
}

fn tls13_and_12(ca: &Path) -> Arc<ClientConfig> {
    client_config(ca, &[&rustls::version::TLS13, &rustls::version::TLS12])
}

type Tls = StreamOwned<ClientConnection, TcpStream>;

/// A TLS connection with its handshake done: the stream, whether the session was resumed,
/// and the server's certificate.
fn tls_connect(
    cfg: &Arc<ClientConfig>,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<(Tls, bool, CertificateDer<'static>), Outcome> {
    let tcp = match TcpStream::connect_timeout(&addr, timeout) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            return Err(Outcome::Refused);
        }
        Err(e) => return Err(classify(e)),
    };
    tcp.set_read_timeout(Some(timeout)).unwrap();
    tcp.set_write_timeout(Some(timeout)).unwrap();
    tcp.set_nodelay(true).unwrap();
    let name = ServerName::IpAddress(addr.ip().into());
    let conn = ClientConnection::new(cfg.clone(), name).unwrap();
    let mut tls = StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        if let Err(e) = tls.conn.complete_io(&mut tls.sock) {
            return Err(Outcome::Other(format!("handshake: {e}")));
        }
    }
    let resumed = tls.conn.handshake_kind() == Some(HandshakeKind::Resumed);
    let cert = tls.conn.peer_certificates().unwrap()[0]
        .clone()
        .into_owned();
    Ok((tls, resumed, cert))
}

/// After the server said `Connection: close`: the connection must end with a TLS
/// `close_notify` (rustls reads `Ok(0)`; a TCP close without it is `UnexpectedEof`).
fn expect_close_notify(r: &mut impl Read) -> Result<(), Outcome> {
    let mut rest = Vec::new();
    match r.read_to_end(&mut rest) {
        Ok(_) if rest.is_empty() => Ok(()),
        Ok(_) => Err(Outcome::Other(format!(
            "{} bytes after the response",
            rest.len()
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            Err(Outcome::Other("closed without close_notify".into()))
        }
        Err(e) => Err(classify(e)),
    }
}

/// One request's result: outcome, sent on a reused connection, and (for a new connection)
/// whether its handshake resumed a session.
struct Tried {
    outcome: Outcome,
    reused: bool,
    resumed: Option<bool>,
}

/// One `GET path` over TLS: on the keep-alive connection in `conn` if there is one (else a
/// new one, kept unless the server closes it), or with `keep = false` on a new connection
/// with `Connection: close`. Every close must come with a `close_notify`.
fn tls_get(
    conn: &mut Option<BufReader<Tls>>,
    cfg: &Arc<ClientConfig>,
    addr: SocketAddr,
    path: &str,
    keep: bool,
) -> Tried {
    let timeout = Duration::from_secs(5);
    let reused = conn.is_some();
    let mut resumed = None;
    if conn.is_none() {
        match tls_connect(cfg, addr, timeout) {
            Ok((tls, r, _)) => {
                resumed = Some(r);
                *conn = Some(BufReader::new(tls));
            }
            Err(outcome) => {
                return Tried {
                    outcome,
                    reused,
                    resumed,
                };
            }
        }
    }
    let r = conn.as_mut().unwrap();
    let close_header = if keep { "" } else { "Connection: close\r\n" };
    let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{close_header}\r\n");
    let result = r
        .get_mut()
        .write_all(req.as_bytes())
        .and_then(|_| r.get_mut().flush())
        .map_err(classify)
        .and_then(|_| read_response(r))
        .and_then(|(pid, close)| {
            if close || !keep {
                expect_close_notify(r)?;
            }
            Ok((pid, close || !keep))
        });
    let outcome = match result {
        Ok((pid, closed)) => {
            if closed {
                *conn = None;
            }
            Outcome::Ok { pid }
        }
        Err(o) => {
            *conn = None;
            o
        }
    };
    Tried {
        outcome,
        reused,
        resumed,
    }
}

/// rustls clients hammering `GET /` until stopped: `keepalive` of them on kept connections,
/// `fresh` with a new connection (and a resumed session, mostly) per request.
struct TlsLoad {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<Vec<Tried>>>,
}

impl TlsLoad {
    fn start(cfg: &Arc<ClientConfig>, addr: SocketAddr, keepalive: usize, fresh: usize) -> TlsLoad {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..keepalive + fresh)
            .map(|i| {
                let (stop, cfg) = (stop.clone(), cfg.clone());
                let keep = i < keepalive;
                std::thread::spawn(move || {
                    let mut out = Vec::new();
                    let mut conn = None;
                    let hard_stop = Instant::now() + Duration::from_secs(60);
                    while !stop.load(Ordering::Relaxed)
                        && out.len() < 200_000
                        && Instant::now() < hard_stop
                    {
                        out.push(tls_get(&mut conn, &cfg, addr, "/", keep));
                    }
                    out
                })
            })
            .collect();
        TlsLoad { stop, threads }
    }

    fn finish(self) -> Vec<Tried> {
        self.stop.store(true, Ordering::Relaxed);
        self.threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect()
    }
}

/// This generation's handshake counts, from the example's `GET /stats` (over TLS).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Stats {
    pid: u32,
    full: u64,
    resumed: u64,
    failed: u64,
    timed_out: u64,
}

fn stats(cfg: &Arc<ClientConfig>, addr: SocketAddr) -> (Stats, bool) {
    let (mut tls, _, _) =
        tls_connect(cfg, addr, Duration::from_secs(5)).expect("connect for /stats");
    tls.write_all(b"GET /stats HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    let _ = tls.read_to_string(&mut text);
    let body = text.split_once("\r\n\r\n").expect("a response").1;
    let field = |k: &str| -> u64 {
        body.split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {k} in {body:?}"))
    };
    let inherited = body.contains("inherited=true");
    (
        Stats {
            pid: field("pid") as u32,
            full: field("full"),
            resumed: field("resumed"),
            failed: field("failed"),
            timed_out: field("timed_out"),
        },
        inherited,
    )
}

/// Waits until a new TLS connection is answered by `pid`.
fn tls_answered_by(cfg: &Arc<ClientConfig>, addr: SocketAddr, pid: u32) {
    wait_for(
        Duration::from_secs(10),
        &format!("an answer from {pid} over TLS"),
        || {
            let t = tls_get(&mut None, cfg, addr, "/", false);
            match t.outcome {
                Outcome::Ok { pid: p } => (p == pid).then_some(()),
                other => panic!("GET / over TLS failed while waiting for {pid}: {other:?}"),
            }
        },
    );
}

/// Makes new connections with `f` until one is answered by generation `pid` (a connection
/// made just after the new generation's first answer may still be accepted by the old one,
/// which is right: it stops accepting once its `Shutdown` resolved); returns what `f` gave for
/// it. `f` returns the answering pid, if any, and its result.
fn on_generation<T>(pid: u32, what: &str, mut f: impl FnMut() -> (Option<u32>, T)) -> T {
    wait_for(
        Duration::from_secs(10),
        &format!("{what} answered by {pid}"),
        || {
            let (answered, t) = f();
            (answered == Some(pid)).then_some(t)
        },
    )
}

/// The certificate a new connection is shown, and the pid that answers its `GET /`.
fn cert_and_pid(
    cfg: &Arc<ClientConfig>,
    addr: SocketAddr,
) -> (Option<u32>, CertificateDer<'static>) {
    let (tls, _, cert) = tls_connect(cfg, addr, Duration::from_secs(5)).expect("connect");
    let mut r = BufReader::new(tls);
    r.get_mut()
        .write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .unwrap();
    let pid = read_response(&mut r).ok().map(|(pid, _)| pid);
    (pid, cert)
}

/// The pid in the `pid=` body of a response in `text`.
fn body_pid(text: &str) -> Option<u32> {
    text.split_once("pid=")?
        .1
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

fn pid_of(o: &Outcome) -> Option<u32> {
    match o {
        Outcome::Ok { pid } => Some(*pid),
        _ => None,
    }
}

fn old_generations_exit_cleanly(app: &mut App, first: u32, news: &[u32]) {
    for old in std::iter::once(first).chain(news[..news.len() - 1].iter().copied()) {
        let st = app.wait_exit(old, Duration::from_secs(30));
        assert!(
            matches!(st, nix::sys::wait::WaitStatus::Exited(_, 0 | -1)),
            "old generation {old} ended with {st:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Tests

/// rustls clients, keep-alive and new connection per request, through 4 upgrades: every
/// request answered, every connection the server ended carried a `close_notify`, and the
/// new-connection clients resumed sessions within each generation.
#[test]
fn https_clients_lose_nothing_across_upgrades_and_every_close_is_a_close_notify() {
    let pki = Pki::new();
    let live = pki.install(&pki.leaf("a"));
    let mut app = start_tls(&live, &[]);
    let first = app.first_pid();
    let cfg = tls13_and_12(&pki.ca);
    let load = TlsLoad::start(&cfg, app.addr, 8, 8);
    std::thread::sleep(Duration::from_millis(300));
    let mut news = Vec::new();
    for _ in 0..4 {
        news.push(app.upgrade().1);
        std::thread::sleep(Duration::from_millis(600));
    }
    let tried = load.finish();
    old_generations_exit_cleanly(&mut app, first, &news);
    let outcomes: Vec<&Outcome> = tried.iter().map(|t| &t.outcome).collect();
    verdict(
        "tls example, HTTP/1.1 over TLS (rustls client)",
        &outcomes,
        500,
    );
    let reused = tried.iter().filter(|t| t.reused).count();
    let handshakes = tried.iter().filter(|t| t.resumed.is_some()).count();
    let resumed = tried.iter().filter(|t| t.resumed == Some(true)).count();
    eprintln!(
        "FIGURES {} requests, {reused} on kept connections, {handshakes} handshakes of which {resumed} resumed",
        tried.len()
    );
    assert!(reused > 100, "only {reused} requests on kept connections");
    assert!(
        resumed > 10,
        "only {resumed} of {handshakes} handshakes resumed"
    );
    for new in &news {
        assert!(
            outcomes.contains(&&Outcome::Ok { pid: *new }),
            "generation {new} never answered"
        );
    }
}

/// `wrk` over https (keep-alive, HTTP/1.1) through 4 upgrades: no socket error, no non-2xx.
#[test]
fn wrk_over_https_counts_no_error_across_upgrades() {
    let pki = Pki::new();
    let live = pki.install(&pki.leaf("a"));
    let mut app = start_tls(&live, &[]);
    let first = app.first_pid();
    let seconds = 5;
    let wrk = tools::start(
        Command::new("wrk")
            .args(["-t2", "-c64", &format!("-d{seconds}s"), "--timeout", "5s"])
            .arg(format!("https://{}/", app.addr))
            .stdin(Stdio::null()),
        "wrk",
    );
    std::thread::sleep(Duration::from_millis(700));
    let mut news = Vec::new();
    for _ in 0..4 {
        news.push(app.upgrade().1);
        std::thread::sleep(Duration::from_millis(800));
    }
    let (out, _) = wrk.finish(Duration::from_secs(seconds + 20));
    eprintln!("{out}");
    old_generations_exit_cleanly(&mut app, first, &news);
    let s = WrkSummary::parse(&out);
    let errors = s.errors();
    eprintln!(
        "FIGURES wrk -t2 -c64 -d{seconds}s https, 4 upgrades: {} requests, {errors} errors (connect {}, read {}, write {}, timeout {}, non-2xx {})",
        s.requests, s.connect, s.read, s.write, s.timeout, s.non_2xx
    );
    assert!(
        s.requests > 1000,
        "wrk made only {} requests:\n{out}",
        s.requests
    );
    assert_eq!(errors, 0, "wrk counted errors:\n{out}");
}

/// `h2load` over TLS (h2 by ALPN), new connections arriving throughout (`-r` per
/// `--rate-period`), through 3 upgrades: 0 failed, 0 errored. Each client sends its requests
/// at once (`-m` = requests per client): h2load does not reconnect after a GOAWAY, so a client
/// that still had requests to send when its connection went away would count them failed.
#[test]
fn h2load_over_tls_with_new_connections_throughout_loses_nothing() {
    let pki = Pki::new();
    let live = pki.install(&pki.leaf("a"));
    let mut app = start_tls(&live, &[]);
    let first = app.first_pid();
    // 120 connections, 2 every 50 ms (3 s), 10 requests each.
    let mut h2load = Command::new("h2load");
    h2load
        .args([
            "-c120",
            "-n1200",
            "-m10",
            "-r2",
            "--rate-period=50ms",
            "-T10",
        ])
        .arg(format!("https://{}/", app.addr))
        .stdin(Stdio::null());
    let h2load = tools::start(&mut h2load, "nghttp2-client");
    std::thread::sleep(Duration::from_millis(500));
    let mut news = Vec::new();
    for _ in 0..3 {
        news.push(app.upgrade().1);
        std::thread::sleep(Duration::from_millis(700));
    }
    let (out, _) = h2load.finish(Duration::from_secs(60));
    eprintln!("{out}");
    old_generations_exit_cleanly(&mut app, first, &news);
    assert!(
        out.contains("Application protocol: h2"),
        "h2 was not negotiated:\n{out}"
    );
    let line = out
        .lines()
        .find(|l| l.starts_with("requests:"))
        .unwrap_or_else(|| panic!("no requests line:\n{out}"));
    let count = |what: &str| -> u64 {
        line.split(',')
            .find_map(|p| {
                p.trim().strip_suffix(what).map(|n| {
                    n.trim()
                        .trim_start_matches("requests:")
                        .trim()
                        .parse()
                        .unwrap()
                })
            })
            .unwrap_or_else(|| panic!("no {what:?} in {line:?}"))
    };
    eprintln!("FIGURES h2load over TLS, 120 connections arriving over 3 s, 3 upgrades: {line}");
    assert_eq!(count("succeeded"), 1200, "{line}");
    assert_eq!(count("failed"), 0, "{line}");
    assert_eq!(count("errored"), 0, "{line}");
    assert_eq!(count("timeout"), 0, "{line}");
}

/// Each generation reads the certificate at its start: renewing the files and upgrading with
/// the same binary is a certificate reload; no connection is lost, and a kept connection made
/// before goes on with the old certificate until it is told to leave.
#[test]
fn renewed_certificate_is_served_after_an_upgrade() {
    let pki = Pki::new();
    let (a, b) = (pki.leaf("a"), pki.leaf("b"));
    let live = pki.install(&a);
    let app = start_tls(&live, &[]);
    let cfg = tls13_and_12(&pki.ca);
    let der = |p: &Path| CertificateDer::from_pem_file(p).unwrap();
    let (_, _, seen) = tls_connect(&cfg, app.addr, Duration::from_secs(5)).unwrap();
    assert_eq!(seen, der(&a.cert));
    // A kept connection, made before the renewal.
    let mut kept = None;
    assert!(matches!(
        tls_get(&mut kept, &cfg, app.addr, "/", true).outcome,
        Outcome::Ok { .. }
    ));
    let load = TlsLoad::start(&cfg, app.addr, 2, 2);
    pki.install(&b);
    let (old, new) = app.upgrade();
    // Every full handshake shows the certificate of the generation that answers it (a new
    // client config each time: a resumed session shows the certificate it was made with).
    let seen = on_generation(new, "a new connection", || {
        let (pid, cert) = cert_and_pid(&tls13_and_12(&pki.ca), app.addr);
        if pid == Some(old) {
            assert_eq!(
                cert,
                der(&a.cert),
                "the old generation's certificate changed"
            );
        }
        (pid, cert)
    });
    assert_eq!(
        seen,
        der(&b.cert),
        "the new generation serves the renewed certificate"
    );
    // The kept connection's next request is answered by the old generation, which tells it
    // to leave (close_notify checked by tls_get).
    let t = tls_get(&mut kept, &cfg, app.addr, "/", true);
    assert!(t.reused);
    assert!(matches!(t.outcome, Outcome::Ok { .. }), "{:?}", t.outcome);
    let tried = load.finish();
    let outcomes: Vec<&Outcome> = tried.iter().map(|t| &t.outcome).collect();
    verdict(
        "tls example, certificate renewed by an upgrade",
        &outcomes,
        20,
    );
}

/// A bad or missing certificate or key at an upgrade: the new generation fails before it
/// reports ready, with a message naming the file, and the running generation serves on (over
/// TLS, with its certificate) and can be upgraded once the files are fixed.
#[test]
fn bad_certificate_at_upgrade_fails_the_new_generation_before_ready() {
    let pki = Pki::new();
    let a = pki.leaf("a");
    let other = pki.leaf("other");
    let live = pki.install(&a);
    let app = start_tls(&live, &[]);
    let first = app.first_pid();
    let cfg = tls13_and_12(&pki.ca);
    let load = TlsLoad::start(&cfg, app.addr, 2, 2);
    /// What is wrong, how to make it so, the file the message must name, and what it says.
    type Case<'a> = (&'a str, Box<dyn Fn() + 'a>, &'a Path, &'a str);
    let cases: Vec<Case> = vec![
        (
            "garbage certificate",
            Box::new(|| std::fs::write(&live.cert, "not a certificate\n").unwrap()),
            &live.cert,
            "no PEM certificate",
        ),
        (
            "missing key",
            Box::new(|| {
                pki.install(&a);
                std::fs::remove_file(&live.key).unwrap();
            }),
            &live.key,
            "No such file or directory",
        ),
        (
            "key of another certificate",
            Box::new(|| {
                pki.install(&a);
                std::fs::copy(&other.key, &live.key).unwrap();
            }),
            &live.key,
            "the private key does not belong to the certificate",
        ),
    ];
    for (n, (what, break_it, file, why)) in cases.iter().enumerate() {
        let from = app.plain_log().len();
        break_it();
        app.signal_upgrade();
        let line = app.nth_failure(n + 1, Duration::from_secs(10));
        eprintln!("{what}: {line}");
        // What this case logged (the new generation's stderr goes to the same log).
        let log = app.plain_log()[from..].to_string();
        eprintln!("{log}");
        assert!(
            log.contains(&file.display().to_string()) && log.contains(why),
            "{what}: the log does not name {} with {why:?}:\n{log}",
            file.display()
        );
        assert_eq!(app.pid_in_file(), Some(first), "{what}: the pid file moved");
        assert!(alive(first), "{what}: the running generation died");
        tls_answered_by(&cfg, app.addr, first);
    }
    // Fixed: the next upgrade goes through.
    pki.install(&a);
    let (_, new) = app.upgrade();
    tls_answered_by(&cfg, app.addr, new);
    let tried = load.finish();
    let outcomes: Vec<&Outcome> = tried.iter().map(|t| &t.outcome).collect();
    verdict("tls example, bad certificates at upgrades", &outcomes, 20);
}

/// Stalled handshakes (connect, send nothing) and garbage ones never hold up serving: other
/// clients are answered meanwhile; they are counted (failed, timed out) at the handshake
/// timeout; and at an upgrade they keep the old generation draining at most that long (it
/// exits 0, long before its drain timeout).
#[test]
fn stalled_and_garbage_handshakes_hold_up_neither_serving_nor_the_drain() {
    let pki = Pki::new();
    let live = pki.install(&pki.leaf("a"));
    let mut app = start_tls(
        &live,
        &[
            ("TLS_HANDSHAKE_TIMEOUT", "1500ms"),
            ("HOTEXEC_DRAIN_TIMEOUT", "30s"),
        ],
    );
    let first = app.first_pid();
    let cfg = tls13_and_12(&pki.ca);
    let (before, _) = stats(&cfg, app.addr);
    let stalled: Vec<TcpStream> = (0..20)
        .map(|_| TcpStream::connect(app.addr).unwrap())
        .collect();
    for _ in 0..5 {
        let mut s = TcpStream::connect(app.addr).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    }
    // Served while the stalled handshakes wait.
    for _ in 0..10 {
        let t = tls_get(&mut None, &cfg, app.addr, "/", false);
        assert_eq!(t.outcome, Outcome::Ok { pid: first });
    }
    let counted = wait_for(
        Duration::from_secs(10),
        "the handshakes to be counted",
        || {
            let (s, _) = stats(&cfg, app.addr);
            (s.timed_out >= before.timed_out + 20 && s.failed >= before.failed + 5).then_some(s)
        },
    );
    eprintln!("stats after: {counted:?} (before {before:?})");
    drop(stalled);
    // Stalled handshakes in progress at an upgrade.
    let _stalled: Vec<TcpStream> = (0..20)
        .map(|_| TcpStream::connect(app.addr).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    let t0 = Instant::now();
    let (_, new) = app.upgrade();
    tls_answered_by(&cfg, app.addr, new);
    let st = app.wait_exit(first, Duration::from_secs(20));
    let took = t0.elapsed();
    eprintln!(
        "FIGURES old generation with 20 stalled handshakes exited {took:?} after the upgrade: {st:?}"
    );
    assert!(
        matches!(st, nix::sys::wait::WaitStatus::Exited(_, 0 | -1)),
        "the old generation ended with {st:?} (124: held until its drain timeout)"
    );
}

/// A client whose first request is half sent when the grace window after the hand-over ends
/// (handshake done, part of the request line on the wire) still gets its answer, from the old
/// generation, with `Connection: close` and a `close_notify`: a connection is never closed
/// with a request half read.
#[test]
fn a_first_request_half_sent_at_the_end_of_the_grace_window_is_answered() {
    let pki = Pki::new();
    let live = pki.install(&pki.leaf("a"));
    let mut app = start_tls(&live, &[]);
    let first = app.first_pid();
    let cfg = tls13_and_12(&pki.ca);
    let (tls, _, _) = tls_connect(&cfg, app.addr, Duration::from_secs(5)).unwrap();
    let mut r = BufReader::new(tls);
    r.get_mut().write_all(b"GET / HTTP/1.1\r\nHo").unwrap();
    r.get_mut().flush().unwrap();
    let (_, new) = app.upgrade();
    // Past the 500 ms grace window.
    std::thread::sleep(Duration::from_millis(1200));
    r.get_mut().write_all(b"st: 127.0.0.1\r\n\r\n").unwrap();
    r.get_mut().flush().unwrap();
    let got = read_response(&mut r);
    assert_eq!(got, Ok((first, true)), "the half-sent request");
    assert_eq!(expect_close_notify(&mut r), Ok(()));
    tls_answered_by(&cfg, app.addr, new);
    old_generations_exit_cleanly(&mut app, first, &[new]);
}

/// The same for HTTP/2 (ALPN `h2`): a client whose connection preface is half sent when the
/// grace window ends is not cut (hyper closes a connection unread if shut down while it still
/// tells HTTP/1 from HTTP/2); its request is answered by the old generation, and the
/// connection then goes away with a GOAWAY.
#[test]
fn an_http2_preface_half_sent_at_the_end_of_the_grace_window_is_served() {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let pki = Pki::new();
    let live = pki.install(&pki.leaf("a"));
    let mut app = start_tls(&live, &[]);
    let first = app.first_pid();
    let addr = app.addr;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut cfg = (*tls13_and_12(&pki.ca)).clone();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let connector = hotexec::tls::tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let tls = rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = ServerName::IpAddress(addr.ip().into());
        let mut tls = connector.connect(name, tcp).await.unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        tokio::io::AsyncWriteExt::write_all(&mut tls, &PREFACE[..16])
            .await
            .unwrap();
        tokio::io::AsyncWriteExt::flush(&mut tls).await.unwrap();
        tls
    });
    let (_, new) = app.upgrade();
    std::thread::sleep(Duration::from_millis(1200));
    let body = rt.block_on(async move {
        tokio::time::timeout(Duration::from_secs(10), async move {
            // The h2 client writes the whole preface: its first 16 bytes are already out.
            let io = SkipFirst { io: tls, skip: 16 };
            let (mut sender, conn) = h2::client::handshake(io)
                .await
                .map_err(|e| format!("handshake: {e}"))?;
            let driver = tokio::spawn(conn);
            let req = hyper::Request::get(format!("https://{addr}/"))
                .body(())
                .unwrap();
            let (resp, _) = sender
                .send_request(req, true)
                .map_err(|e| format!("send: {e}"))?;
            let resp = resp.await.map_err(|e| format!("response: {e}"))?;
            let mut body = resp.into_body();
            let mut text = Vec::new();
            while let Some(chunk) = body.data().await {
                text.extend_from_slice(&chunk.map_err(|e| format!("body: {e}"))?);
            }
            drop(sender);
            let _ = driver.await;
            Ok::<_, String>(String::from_utf8_lossy(&text).into_owned())
        })
        .await
        .unwrap_or_else(|_| Err("timed out".into()))
    });
    assert_eq!(
        body,
        Ok(format!("pid={first}\n")),
        "the request after a half-sent preface"
    );
    tls_answered_by(&tls13_and_12(&pki.ca), addr, new);
    old_generations_exit_cleanly(&mut app, first, &[new]);
}

/// Writes through to `io`, except the first `skip` bytes, which are dropped.
struct SkipFirst<I> {
    io: I,
    skip: usize,
}

impl<I: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for SkipFirst<I> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<I: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for SkipFirst<I> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if self.skip > 0 {
            let n = self.skip.min(buf.len());
            self.skip -= n;
            return std::task::Poll::Ready(Ok(n));
        }
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Without carried keys (`TLS_CARRY_TICKET_KEYS=0`, or a new generation of an older build),
/// a returning client's ticket is refused by the new generation: a full handshake, and the
/// request is served. Within a generation, tickets resume, for TLS 1.3 and 1.2.
#[test]
fn without_carried_keys_a_returning_client_gets_a_full_handshake_and_is_served() {
    let pki = Pki::new();
    let live = pki.install(&pki.leaf("a"));
    let app = start_tls(&live, &[("TLS_CARRY_TICKET_KEYS", "0")]);
    for (name, version) in [
        ("TLS 1.3", &rustls::version::TLS13),
        ("TLS 1.2", &rustls::version::TLS12),
    ] {
        let cfg = client_config(&pki.ca, &[version]);
        let t = tls_get(&mut None, &cfg, app.addr, "/", false);
        assert_eq!(t.resumed, Some(false), "{name}: the first handshake");
        let t = tls_get(&mut None, &cfg, app.addr, "/", false);
        assert_eq!(t.resumed, Some(true), "{name}: resumed within a generation");
        let (_, new) = app.upgrade();
        // Connections still answered by the old generation resume there (and bring tickets
        // of its keys); the first one answered by the new generation is what is checked.
        let t = on_generation(new, name, || {
            let t = tls_get(&mut None, &cfg, app.addr, "/", false);
            (pid_of(&t.outcome), t)
        });
        assert_eq!(
            t.resumed,
            Some(false),
            "{name}: a ticket of the previous generation's keys"
        );
    }
}

/// `openssl s_client -sess_out` before an upgrade, `-sess_in` after it: `Reused`, for TLS 1.3
/// and TLS 1.2, after 1 upgrade and (the same saved session) after 3; the request on the
/// resumed session is answered by the new generation.
#[test]
fn openssl_sessions_resume_after_one_and_after_three_upgrades() {
    let pki = Pki::new();
    let live = pki.install(&pki.leaf("a"));
    let app = start_tls(&live, &[]);
    let cfg = tls13_and_12(&pki.ca);
    let sessions = Scratch::new("sessions");
    let versions = ["-tls1_3", "-tls1_2"];
    for v in versions {
        let out = s_client(app.addr, v, "-sess_out", &sessions.0.join(v));
        assert!(
            out.contains("New, TLSv1."),
            "{v}: the first handshake:\n{out}"
        );
        assert!(
            out.contains(&format!("pid={}", app.first_pid())),
            "{v}:\n{out}"
        );
    }
    for upgrades in 1..=3 {
        let (_, new) = app.upgrade();
        if upgrades == 2 {
            continue;
        }
        for v in versions {
            let out = on_generation(new, v, || {
                let out = s_client(app.addr, v, "-sess_in", &sessions.0.join(v));
                (body_pid(&out), out)
            });
            eprintln!(
                "{v} after {upgrades} upgrade(s): {}",
                out.lines()
                    .find(|l| l.starts_with("Reused") || l.starts_with("New"))
                    .unwrap_or("?")
            );
            assert!(
                out.contains("Reused, TLSv1."),
                "{v}: the session saved before the first upgrade did not resume after {upgrades}:\n{out}"
            );
        }
    }
    let (s, inherited) = stats(&cfg, app.addr);
    assert!(
        inherited,
        "the last generation says its ticket keys were not carried: {s:?}"
    );
}

/// A rustls client (its own session store) resumes after 1 upgrade and, with a ticket of the
/// first generation, after 3, for TLS 1.3 and TLS 1.2; the new generations count those
/// handshakes as resumed.
#[test]
fn rustls_client_resumes_after_one_and_after_three_upgrades() {
    let pki = Pki::new();
    let live = pki.install(&pki.leaf("a"));
    let app = start_tls(&live, &[]);
    let any = tls13_and_12(&pki.ca);
    for (name, version) in [
        ("TLS 1.3", &rustls::version::TLS13),
        ("TLS 1.2", &rustls::version::TLS12),
    ] {
        let (once, thrice) = (
            client_config(&pki.ca, &[version]),
            client_config(&pki.ca, &[version]),
        );
        for cfg in [&once, &thrice] {
            let t = tls_get(&mut None, cfg, app.addr, "/", false);
            assert_eq!(t.resumed, Some(false), "{name}: the first handshake");
        }
        let (_, new) = app.upgrade();
        let t = on_generation(new, name, || {
            let t = tls_get(&mut None, &once, app.addr, "/", false);
            (pid_of(&t.outcome), t)
        });
        assert_eq!(t.resumed, Some(true), "{name}: not resumed after 1 upgrade");
        let mut last = new;
        for _ in 0..2 {
            last = app.upgrade().1;
            tls_answered_by(&any, app.addr, last);
        }
        let t = on_generation(last, name, || {
            let t = tls_get(&mut None, &thrice, app.addr, "/", false);
            (pid_of(&t.outcome), t)
        });
        assert_eq!(
            t.resumed,
            Some(true),
            "{name}: a first-generation ticket after 3 upgrades"
        );
        let (s, inherited) = stats(&any, app.addr);
        assert!(inherited && s.resumed >= 1, "{name}: {s:?}");
    }
}

/// A ticket whose key is past the rotation window is refused — a full handshake, and the
/// request is served. The first generation rotates every 60 s (its tickets live 60 s for the
/// client); the next one is started with a 3 s period and judges the carried keys by it: a
/// ticket of the first generation resumes while its key is less than 6 s old, not after.
#[test]
fn a_ticket_older_than_the_rotation_window_is_refused_and_the_client_served() {
    const WINDOW: Duration = Duration::from_secs(6);
    let pki = Pki::new();
    let live = pki.install(&pki.leaf("a"));
    // The first generation's key is made between these two instants.
    let before = Instant::now();
    let app = start_tls(&live, &[("TLS_TICKET_ROTATION", "60s")]);
    let after = Instant::now();
    let (early, late) = (tls13_and_12(&pki.ca), tls13_and_12(&pki.ca));
    for cfg in [&early, &late] {
        assert_eq!(
            tls_get(&mut None, cfg, app.addr, "/", false).resumed,
            Some(false)
        );
    }
    app.replace_binary(Some(&format!(
        "#!/bin/sh\nTLS_TICKET_ROTATION=3s exec {} \"$@\"\n",
        app.good_binary().display()
    )));
    let (_, new) = app.upgrade();
    let t = on_generation(new, "the early client", || {
        let t = tls_get(&mut None, &early, app.addr, "/", false);
        (pid_of(&t.outcome), t)
    });
    assert!(
        before.elapsed() < WINDOW,
        "too slow to check the window: {:?} since the start",
        before.elapsed()
    );
    assert_eq!(t.resumed, Some(true), "within the window");
    std::thread::sleep(
        (after + WINDOW + Duration::from_millis(300)).saturating_duration_since(Instant::now()),
    );
    let t = tls_get(&mut None, &late, app.addr, "/", false);
    assert_eq!(t.outcome, Outcome::Ok { pid: new }, "served");
    assert_eq!(
        t.resumed,
        Some(false),
        "a ticket past its key's window resumed"
    );
}

/// `openssl s_client` with `version` (`-tls1_3`, `-tls1_2`), saving (`-sess_out`) or reusing
/// (`-sess_in`) the session in `file`, sending one `GET /` (`Connection: close`); its output.
fn s_client(addr: SocketAddr, version: &str, sess: &str, file: &Path) -> String {
    let mut s_client = tools::start(
        Command::new("openssl")
            .args([
                "s_client",
                "-connect",
                &addr.to_string(),
                version,
                "-ign_eof",
                sess,
            ])
            .arg(file)
            .stdin(Stdio::piped()),
        "openssl",
    );
    s_client
        .child()
        .stdin
        .take()
        .unwrap()
        .write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .unwrap();
    let (out, err) = s_client.finish(Duration::from_secs(20));
    out + &err
}
