//! Benchmark rows for TLS: the `tls` example under outside load generators through upgrades,
//! and what returning clients cost the new generation right after an upgrade, with and
//! without carried session-ticket keys.
//!
//! ```text
//! cargo build --release --example tls --example bench_tls && target/release/examples/bench_tls
//! target/release/examples/bench_tls --quick      # shorter runs
//! target/release/examples/bench_tls --rsa        # an RSA 2048 certificate (ECDSA P-256 by default)
//! target/release/examples/bench_tls --returning  # only the returning-clients rows
//! ```
//!
//! 1. `wrk -t2 -c64 -d10s https://…/` (HTTP/1.1 keep-alive over TLS) through 4 upgrades, and
//!    the same without upgrades.
//! 2. `h2load` over TLS (h2 by ALPN) with new connections arriving throughout (`-r` per
//!    `--rate-period`; every request of a client in flight at once, since h2load does not
//!    reconnect after a GOAWAY) through 3 upgrades, and the same without upgrades.
//! 3. Returning clients: N rustls clients (each with its own session store) make one request,
//!    then come back all at once — to the same generation (no upgrade), or to the next one
//!    after an upgrade with the ticket keys carried (the default) or not
//!    (`TLS_CARRY_TICKET_KEYS=0`, every generation with keys of its own, as servers without a
//!    key file do). Measured: how many resumed, the new generation's CPU time for the whole
//!    storm (sum of its threads' `schedstat` run time: handshakes and the requests), and the
//!    clients' handshake times.
//!
//! The certificate is an ECDSA P-256 leaf from a throw-away CA made with `openssl`. Every
//! process started is killed and reaped on exit; every wait has a deadline.
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hotexec::tls::rustls;
use hotexec_testkit::app::App;
use hotexec_testkit::reap::subreaper;
use hotexec_testkit::tools;
use hotexec_testkit::wait::wait_for;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, HandshakeKind, StreamOwned};

/// A CA and a leaf certificate for 127.0.0.1 in `dir`: (ca.pem, leaf.pem, leaf.key). The
/// leaf's key is ECDSA P-256, or RSA 2048 with `rsa`.
fn make_certs(dir: &Path, rsa: bool) -> (PathBuf, PathBuf, PathBuf) {
    let ossl = |args: &str| {
        let args: Vec<&str> = args.split_whitespace().collect();
        tools::run(
            Command::new("openssl").current_dir(dir).args(args),
            "openssl",
            Duration::from_secs(60),
        );
    };
    ossl(
        "req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=bench-ca \
         -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign \
         -keyout ca.key -out ca.pem",
    );
    std::fs::write(
        dir.join("leaf.ext"),
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n\
         extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1\n",
    )
    .unwrap();
    let key = if rsa {
        "-newkey rsa:2048"
    } else {
        "-newkey ec -pkeyopt ec_paramgen_curve:P-256"
    };
    ossl(&format!(
        "req -new {key} -nodes -subj /CN=bench -keyout leaf.key -out leaf.csr"
    ));
    ossl(
        "x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -set_serial 7 -days 2 \
         -extfile leaf.ext -out leaf.pem",
    );
    (
        dir.join("ca.pem"),
        dir.join("leaf.pem"),
        dir.join("leaf.key"),
    )
}

/// The `tls` example (built next to this binary), started through the kit with the
/// certificate in `dir`: its generations are killed and reaped when the `App` is dropped.
fn start_tls(dir: &Path, env: &[(&str, &str)]) -> App {
    let (cert, key) = (dir.join("leaf.pem"), dir.join("leaf.key"));
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let mut all = vec![
        ("TLS_CERT", cert),
        ("TLS_KEY", key),
        ("HOTEXEC_KEEPER", "0"),
        ("HOTEXEC_DRAIN_TIMEOUT", "60s"),
    ];
    all.extend_from_slice(env);
    App::start("tls", "HOTEXEC_LISTEN_HTTPS", &all)
}

/// CPU time of every thread of `pid` so far (`/proc/PID/task/*/schedstat`, nanoseconds).
fn cpu_ns(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.flatten()
                .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
                .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0)
}

/// Runs a load generator against a fresh server, with `upgrades` upgrades spread over
/// `seconds`; returns its output.
fn under_load(dir: &Path, tool: &mut Command, seconds: f64, upgrades: usize) -> String {
    let server = start_tls(dir, &[]);
    let url = format!("https://{}/", server.addr);
    let t = tools::start(tool.arg(&url).stdin(Stdio::null()), "wrk, nghttp2-client");
    let step = Duration::from_secs_f64(seconds / (upgrades + 1) as f64);
    for _ in 0..upgrades {
        std::thread::sleep(step);
        server.upgrade();
    }
    let (out, err) = t.finish(Duration::from_secs_f64(seconds + 60.0));
    out + &err
}

fn line_of<'a>(out: &'a str, prefix: &str) -> &'a str {
    out.lines()
        .map(str::trim)
        .find(|l| l.starts_with(prefix))
        .unwrap_or("(missing)")
}

fn client_base(ca: &Path) -> ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let mut cfg = ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    cfg
}

/// One handshake + `GET /` (`Connection: close`) + close: (resumed, handshake time, pid).
fn visit(cfg: &Arc<ClientConfig>, addr: SocketAddr) -> (bool, Duration, u32) {
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    tcp.set_nodelay(true).unwrap();
    let t0 = Instant::now();
    let conn = ClientConnection::new(cfg.clone(), ServerName::IpAddress(addr.ip().into())).unwrap();
    let mut tls = StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock).unwrap();
    }
    let took = t0.elapsed();
    let resumed = tls.conn.handshake_kind() == Some(HandshakeKind::Resumed);
    tls.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    let _ = tls.read_to_string(&mut text);
    let pid = text
        .split_once("pid=")
        .and_then(|(_, r)| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {text:?}"));
    (resumed, took, pid)
}

/// All `cfgs` visit `addr` at once, from `threads` threads.
fn storm(
    cfgs: &[Arc<ClientConfig>],
    addr: SocketAddr,
    threads: usize,
) -> Vec<(bool, Duration, u32)> {
    let chunks: Vec<Vec<Arc<ClientConfig>>> = cfgs
        .chunks(cfgs.len().div_ceil(threads))
        .map(|c| c.to_vec())
        .collect();
    let handles: Vec<_> = chunks
        .into_iter()
        .map(|chunk| {
            std::thread::spawn(move || chunk.iter().map(|c| visit(c, addr)).collect::<Vec<_>>())
        })
        .collect();
    handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect()
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// Returning clients: one visit each, then (after an upgrade, or not) all back at once.
fn returning(dir: &Path, ca: &Path, n: usize, upgrade: bool, carry: bool) -> String {
    let env: &[(&str, &str)] = if carry {
        &[]
    } else {
        &[("TLS_CARRY_TICKET_KEYS", "0")]
    };
    let mut server = start_tls(dir, env);
    let base = client_base(ca);
    let cfgs: Vec<Arc<ClientConfig>> = (0..n)
        .map(|_| {
            let mut c = base.clone();
            c.resumption = rustls::client::Resumption::in_memory_sessions(8);
            Arc::new(c)
        })
        .collect();
    let first = storm(&cfgs, server.addr, 8);
    assert!(first.iter().all(|(r, _, _)| !r), "first visits resumed?");
    let target = if upgrade {
        let (old, new) = server.upgrade();
        // The new generation answers (a client with no session: not counted below).
        let probe = Arc::new(base.clone());
        wait_for(Duration::from_secs(10), "the new generation", || {
            (visit(&probe, server.addr).2 == new).then_some(())
        });
        // Every returning client must meet the new generation: the old one is gone first.
        server.wait_exit(old, Duration::from_secs(30));
        new
    } else {
        server.first_pid()
    };
    let cpu0 = cpu_ns(target);
    let t0 = Instant::now();
    let back = storm(&cfgs, server.addr, 8);
    let wall = t0.elapsed();
    let cpu = Duration::from_nanos(cpu_ns(target) - cpu0);
    assert!(
        back.iter().all(|(_, _, p)| *p == target),
        "a visit was answered by another generation"
    );
    let resumed = back.iter().filter(|(r, _, _)| *r).count();
    let mut hs: Vec<Duration> = back.iter().map(|(_, d, _)| *d).collect();
    hs.sort();
    format!(
        "| {} | {n} | {resumed} ({:.0} %) | {:.1} ms | {:.0} µs | {:.2} ms | {:.2} ms | {:.0} ms |",
        match (upgrade, carry) {
            (false, _) => "same generation (no upgrade)",
            (true, true) => "next generation, ticket keys carried",
            (true, false) => "next generation, keys not carried (`TLS_CARRY_TICKET_KEYS=0`)",
        },
        resumed as f64 * 100.0 / n as f64,
        cpu.as_secs_f64() * 1e3,
        cpu.as_secs_f64() * 1e6 / n as f64,
        quantile(&hs, 0.5).as_secs_f64() * 1e3,
        quantile(&hs, 0.99).as_secs_f64() * 1e3,
        wall.as_secs_f64() * 1e3,
    )
}

fn main() {
    // The old generations' children (the new generations) are re-parented to us and reaped
    // by `App`'s drop.
    subreaper();
    let has = |flag: &str| std::env::args().any(|a| a == flag);
    let (quick, rsa, only_returning) = (has("--quick"), has("--rsa"), has("--returning"));
    let dir = std::env::temp_dir().join(format!("hotexec-bench-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (ca, _, _) = make_certs(&dir, rsa);
    let cert = if rsa { "RSA 2048" } else { "ECDSA P-256" };
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "certificate: {cert}; {} cores; load average at start: {}\n",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        loadavg
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    if !only_returning {
        load_rows(&dir, quick);
    }
    let n = if quick { 200 } else { 500 };
    println!(
        "\n### Returning clients right after an upgrade ({n} rustls clients, 8 threads, {cert})\n"
    );
    println!(
        "| returning to | clients | resumed | server CPU for the storm | per client | handshake p50 | handshake p99 | storm wall time |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for (upgrade, carry) in [(false, true), (true, true), (true, false)] {
        println!("{}", returning(&dir, &ca, n, upgrade, carry));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// wrk and h2load through upgrades, and without.
fn load_rows(dir: &Path, quick: bool) {
    let secs = if quick { 4 } else { 10 };
    println!("### wrk over https (HTTP/1.1 keep-alive), `tls` example\n");
    println!("| run | requests | req/s | socket errors | non-2xx | latency avg |");
    println!("|---|---:|---:|---|---:|---:|");
    for upgrades in [0, 4] {
        let out = under_load(
            dir,
            Command::new("wrk").args(["-t2", "-c64", &format!("-d{secs}s"), "--timeout", "5s"]),
            secs as f64,
            upgrades,
        );
        let total = out
            .lines()
            .find(|l| l.contains(" requests in "))
            .unwrap_or("?")
            .trim();
        let rps = line_of(&out, "Requests/sec:")
            .trim_start_matches("Requests/sec:")
            .trim();
        let errors = out
            .lines()
            .find(|l| l.trim().starts_with("Socket errors:"))
            .map(str::trim)
            .unwrap_or("none");
        let non2xx = line_of(&out, "Non-2xx")
            .rsplit(':')
            .next()
            .unwrap_or("0")
            .trim()
            .replace("(missing)", "0");
        let latency = out
            .lines()
            .find(|l| l.trim().starts_with("Latency"))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or("?");
        println!(
            "| `wrk -t2 -c64 -d{secs}s`, {upgrades} upgrades | {} | {rps} | {errors} | {non2xx} | {latency} |",
            total.split_whitespace().next().unwrap_or("?")
        );
    }

    let (clients, rate) = if quick { (400, 10) } else { (1000, 10) };
    println!("\n### h2load over TLS (h2), new connections throughout, `tls` example\n");
    println!("| run | requests line | req/s |");
    println!("|---|---|---:|");
    for upgrades in [0, 3] {
        let out = under_load(
            dir,
            Command::new("h2load").args([
                &format!("-c{clients}"),
                &format!("-n{}", clients * 100),
                "-m100",
                &format!("-r{rate}"),
                "--rate-period=100ms",
                "-T30",
            ]),
            clients as f64 / rate as f64 / 10.0,
            upgrades,
        );
        assert!(
            out.contains("Application protocol: h2"),
            "h2 not negotiated:\n{out}"
        );
        let rps = line_of(&out, "finished in")
            .split(',')
            .nth(1)
            .unwrap_or("?")
            .trim();
        println!(
            "| `h2load -c{clients} -n{} -m100 -r{rate} --rate-period=100ms`, {upgrades} upgrades | {} | {rps} |",
            clients * 100,
            line_of(&out, "requests:")
        );
    }
}
