//! The upgrade benchmark: the same load, the same upgrade schedule, against hotexec and the
//! alternatives a user would otherwise choose; prints one markdown table.
//!
//! ```text
//! cargo run --release --example bench                 # full run (~5 min), table on stdout
//! cargo run --release --example bench -- --quick      # 10 upgrades per scenario
//! cargo run --release --example bench -- --help
//! ```
//!
//! Targets: hotexec's `http` example (SIGUSR2); a naive restart (a second copy binding the same
//! port with `SO_REUSEPORT`, then SIGTERM to the old one); nginx's binary upgrade (USR2, then
//! WINCH and QUIT to the old master; skipped with a note when `/usr/sbin/nginx` is absent); and
//! the same server without hotexec and without upgrades, the ceiling (and the `http` example
//! without upgrades, to compare the request path alone); and an axum app, upgraded by hotexec,
//! served with plain `axum::serve(..).with_graceful_shutdown(..)` and with `hotexec::serve`
//! (what the integration changes for the code users write). Each in three modes: a new
//! connection per request, keep-alive, and HTTP/2 (h2c, several streams per connection). Then
//! two scale checks: an upgrade passing 1,000 listeners, and 10,000 idle keep-alive connections
//! open during an upgrade.
//!
//! The servers are roles of this binary (`support/servers.rs`); all but the axum pair serve the
//! same `support/http_server.rs`.
#[path = "support/http_server.rs"]
mod http_server;
#[path = "support/logging.rs"]
mod logging;
#[path = "support/servers.rs"]
mod servers;

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use hotexec_testkit::bench::{load, targets};
use load::{Class, GenerationOf, Load, Mode, Rec, quantile};
use targets::{Kind, Target, Tracker, Upgrade};

const HELP: &str = "\
usage: bench [--quick] [--clients N] [--upgrades N] [--interval-ms MS] [--modes close,keepalive,h2]
             [--targets hotexec,naive,nginx,plain,hotexec-steady,axum-plain,axum] [--no-scale]
             [--listeners N] [--idle N]

  --clients N       concurrent clients per scenario (default 64)
  --upgrades N      upgrades per scenario (default 50; --quick: 10)
  --interval-ms MS  time from one upgrade signal to the next, at least (default 200)
  --modes           close = new connection per request, keepalive = reuse connections,
                    h2 = HTTP/2 with prior knowledge (hyper's client), 4 streams per connection
  --targets         which servers to measure: hotexec,naive,nginx,plain,hotexec-steady,
                    axum-plain (an axum app, plain axum::serve(..).with_graceful_shutdown(..)),
                    axum (the same app with hotexec::serve)
                    (nginx is skipped when /usr/sbin/nginx is absent, and in mode h2)
  --no-scale        skip the scale checks
  --listeners N     listeners passed in the scale check (default 1000)
  --idle N          idle keep-alive connections in the scale check (default 10000)
";

struct Opts {
    clients: usize,
    upgrades: usize,
    interval: Duration,
    modes: Vec<Mode>,
    kinds: Vec<Kind>,
    scale: bool,
    listeners: usize,
    idle: usize,
}

fn parse_args() -> Result<Opts, String> {
    let mut o = Opts {
        clients: 64,
        upgrades: 50,
        interval: Duration::from_millis(200),
        modes: vec![Mode::Close, Mode::KeepAlive, Mode::H2],
        kinds: vec![
            Kind::Hotexec,
            Kind::Naive,
            Kind::Nginx,
            Kind::Plain,
            Kind::HotexecSteady,
            Kind::AxumPlain,
            Kind::Axum,
        ],
        scale: true,
        listeners: 1000,
        idle: 10_000,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        let num = |v: String, name: &str| {
            v.parse::<usize>()
                .map_err(|_| format!("{name}: not a number: {v:?}"))
        };
        match a.as_str() {
            "--help" | "-h" => {
                print!("{HELP}");
                std::process::exit(0);
            }
            "--quick" => o.upgrades = 10,
            "--no-scale" => o.scale = false,
            "--clients" => o.clients = num(value(&a)?, &a)?,
            "--upgrades" => o.upgrades = num(value(&a)?, &a)?,
            "--listeners" => o.listeners = num(value(&a)?, &a)?,
            "--idle" => o.idle = num(value(&a)?, &a)?,
            "--interval-ms" => o.interval = Duration::from_millis(num(value(&a)?, &a)? as u64),
            "--modes" => {
                o.modes = value(&a)?
                    .split(',')
                    .map(|m| match m {
                        "close" => Ok(Mode::Close),
                        "keepalive" | "keep-alive" => Ok(Mode::KeepAlive),
                        "h2" => Ok(Mode::H2),
                        _ => Err(format!("--modes: unknown mode {m:?}")),
                    })
                    .collect::<Result<_, _>>()?
            }
            "--targets" => {
                o.kinds = value(&a)?
                    .split(',')
                    .map(|m| match m {
                        "hotexec" => Ok(Kind::Hotexec),
                        "naive" => Ok(Kind::Naive),
                        "nginx" => Ok(Kind::Nginx),
                        "plain" => Ok(Kind::Plain),
                        "hotexec-steady" => Ok(Kind::HotexecSteady),
                        "axum" => Ok(Kind::Axum),
                        "axum-plain" => Ok(Kind::AxumPlain),
                        _ => Err(format!("--targets: unknown target {m:?}")),
                    })
                    .collect::<Result<_, _>>()?
            }
            other => return Err(format!("unknown argument {other:?}\n{HELP}")),
        }
    }
    Ok(o)
}

/// What one scenario measured.
struct Row {
    kind: Kind,
    mode: Mode,
    upgrades: usize,
    requests: usize,
    failed: BTreeMap<Class, usize>,
    rps: f64,
    steady_rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    p99_steady_ms: f64,
    p99_upgrade_ms: f64,
    /// Signal → first response from the new generation.
    latency_ms: Vec<f64>,
    /// First response from the new generation → last response from the old one.
    overlap_ms: Vec<f64>,
    /// Signal → old process exit.
    exit_ms: Vec<f64>,
    dip: f64,
    /// HTTP/2 requests sent again because the server provably never processed them.
    resent: u64,
}

impl Row {
    fn failed_total(&self) -> usize {
        self.failed.values().sum()
    }
}

fn ms(us: u64) -> f64 {
    us as f64 / 1e3
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    quantile(&s, 0.5)
}

fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(0.0, f64::max)
}

fn run_scenario(
    rt: &tokio::runtime::Runtime,
    tracker: &Arc<Tracker>,
    kind: Kind,
    mode: Mode,
    opts: &Opts,
) -> std::io::Result<Row> {
    let mut target = Target::start(kind, tracker.clone(), &[])?;
    let load = {
        let _rt = rt.enter();
        Load::start(load::Config {
            addr: target.addr,
            modes: vec![mode; opts.clients],
            generation_of: kind.generation_of(),
            timeout: Duration::from_secs(5),
            max_duration: Duration::from_secs(600),
        })
    };
    let warmup = Duration::from_secs(1);
    std::thread::sleep(warmup);
    let mut ups: Vec<(Upgrade, Option<Instant>)> = Vec::new();
    let label = format!("{} / {}", kind.name(), mode.name());
    let progress = |done: usize, load: &Load| {
        eprint!(
            "\r  {label}: {done}/{} upgrades, {} ok, {} failed   ",
            if kind.upgrades() { opts.upgrades } else { 0 },
            load.live.ok.load(Ordering::Relaxed),
            load.live.failed.load(Ordering::Relaxed)
        );
        let _ = std::io::stderr().flush();
    };
    if kind.upgrades() {
        for i in 0..opts.upgrades {
            let up = match target.upgrade() {
                Ok(u) => u,
                Err(e) => {
                    eprintln!("\nupgrade {i} failed: {e}\n{}", target.log_tail());
                    return Err(e);
                }
            };
            let exit = tracker.wait_exit(up.old, Duration::from_secs(10));
            ups.push((up, exit));
            progress(i + 1, &load);
            std::thread::sleep(opts.interval.saturating_sub(up.signal.elapsed()));
        }
    } else {
        for i in 0..opts.upgrades {
            std::thread::sleep(opts.interval);
            if i % 5 == 0 {
                progress(0, &load);
            }
        }
    }
    std::thread::sleep(Duration::from_secs(1));
    progress(ups.len(), &load);
    eprintln!();
    let t0 = load.t0;
    let end_us = load.now_us();
    let resent = load.live.resent.load(Ordering::Relaxed);
    let recs = rt.block_on(load.finish());
    drop(target);
    let mut row = analyze(kind, mode, t0, warmup, end_us, &recs, &ups);
    row.resent = resent;
    Ok(row)
}

fn analyze(
    kind: Kind,
    mode: Mode,
    t0: Instant,
    warmup: Duration,
    end_us: u64,
    recs: &[Rec],
    ups: &[(Upgrade, Option<Instant>)],
) -> Row {
    let us = |t: Instant| t.saturating_duration_since(t0).as_micros() as u64;
    let mut failed = BTreeMap::new();
    for r in recs.iter().filter(|r| r.class != Class::Ok) {
        *failed.entry(r.class).or_insert(0) += 1;
    }
    let ok: Vec<&Rec> = recs.iter().filter(|r| r.class == Class::Ok).collect();
    // First and last response of each generation.
    let mut span: HashMap<u32, (u64, u64)> = HashMap::new();
    for r in &ok {
        let e = span.entry(r.generation).or_insert((r.end_us, r.end_us));
        e.0 = e.0.min(r.end_us);
        e.1 = e.1.max(r.end_us);
    }
    let mut latency_ms = Vec::new();
    let mut overlap_ms = Vec::new();
    let mut exit_ms = Vec::new();
    let mut windows = Vec::new();
    for (u, exit) in ups {
        let sig = us(u.signal);
        if let Some(&(first_new, _)) = span.get(&u.new) {
            latency_ms.push(ms(first_new.saturating_sub(sig)));
            if let Some(&(_, last_old)) = span.get(&u.old) {
                overlap_ms.push(ms(last_old.saturating_sub(first_new)));
            }
        }
        let exit_us = exit.map(us);
        if let Some(e) = exit_us {
            exit_ms.push(ms(e.saturating_sub(sig)));
        }
        windows.push((sig, exit_us.unwrap_or(sig + 1_000_000).min(sig + 1_000_000)));
    }
    let in_window = |r: &Rec| {
        windows
            .iter()
            .any(|&(a, b)| r.start_us >= a && r.start_us <= b)
    };
    let mut all: Vec<u64> = ok.iter().map(|r| r.end_us - r.start_us).collect();
    let mut steady: Vec<u64> = ok
        .iter()
        .filter(|r| !in_window(r))
        .map(|r| r.end_us - r.start_us)
        .collect();
    let mut during: Vec<u64> = ok
        .iter()
        .filter(|r| in_window(r))
        .map(|r| r.end_us - r.start_us)
        .collect();
    all.sort_unstable();
    steady.sort_unstable();
    during.sort_unstable();
    // Whole 100 ms buckets from the end of the warm-up to the end of the run.
    let from = warmup.as_micros() as u64;
    let mut b = load::buckets(recs, from, end_us);
    let worst = b.iter().copied().min().unwrap_or(0);
    b.sort_unstable();
    let med_bucket = quantile(&b, 0.5);
    let first_start = recs.iter().map(|r| r.start_us).min().unwrap_or(0);
    let last_end = recs.iter().map(|r| r.end_us).max().unwrap_or(1);
    Row {
        kind,
        mode,
        upgrades: ups.len(),
        requests: recs.len(),
        failed,
        rps: ok.len() as f64 / ((last_end - first_start).max(1) as f64 / 1e6),
        steady_rps: med_bucket as f64 * 10.0,
        p50_ms: ms(quantile(&all, 0.5)),
        p99_ms: ms(quantile(&all, 0.99)),
        p99_steady_ms: ms(quantile(&steady, 0.99)),
        p99_upgrade_ms: ms(quantile(&during, 0.99)),
        latency_ms,
        overlap_ms,
        exit_ms,
        dip: if med_bucket == 0 {
            0.0
        } else {
            worst as f64 / med_bucket as f64
        },
        resent: 0,
    }
}

fn print_table(rows: &[Row]) {
    println!(
        "| target | mode | upgrades | requests | failed | req/s | p99 ms | upgrade latency median ms | upgrade latency max ms | throughput dip |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        let (lat_med, lat_max) = if r.kind.upgrades() {
            (
                format!("{:.1}", median(&r.latency_ms)),
                format!("{:.1}", max(&r.latency_ms)),
            )
        } else {
            ("—".into(), "—".into())
        };
        println!(
            "| {} | {} | {} | {} | {} | {:.0} | {:.2} | {} | {} | {:.2} |",
            r.kind.name(),
            r.mode.name(),
            r.upgrades,
            r.requests,
            r.failed_total(),
            r.rps,
            r.p99_ms,
            lat_med,
            lat_max,
            r.dip
        );
    }
}

fn print_details(rows: &[Row]) {
    for r in rows {
        println!("- **{} / {}**", r.kind.name(), r.mode.name());
        let failed: Vec<String> = r
            .failed
            .iter()
            .map(|(c, n)| format!("{} {}", n, c.name()))
            .collect();
        println!(
            "  - failed by class: {}",
            if failed.is_empty() {
                "none".into()
            } else {
                failed.join(", ")
            }
        );
        if r.mode == Mode::H2 {
            println!(
                "  - sent again because the server refused them unprocessed (above its GOAWAY's last stream id) or they never left the client: {}",
                r.resent
            );
        }
        println!(
            "  - steady-state req/s (median 100 ms bucket × 10): {:.0}; latency p50 {:.2} ms, p99 {:.2} ms; p99 outside upgrade windows {:.2} ms, inside {:.2} ms",
            r.steady_rps, r.p50_ms, r.p99_ms, r.p99_steady_ms, r.p99_upgrade_ms
        );
        if r.kind.upgrades() {
            println!(
                "  - signal → first response from the new generation: median {:.1} ms, max {:.1} ms ({} of {} upgrades answered)",
                median(&r.latency_ms),
                max(&r.latency_ms),
                r.latency_ms.len(),
                r.upgrades
            );
            println!(
                "  - old generation's last response after the new one's first: median {:.1} ms, max {:.1} ms",
                median(&r.overlap_ms),
                max(&r.overlap_ms)
            );
            println!(
                "  - signal → old process exit: median {:.1} ms, max {:.1} ms ({} of {} exited)",
                median(&r.exit_ms),
                max(&r.exit_ms),
                r.exit_ms.len(),
                r.upgrades
            );
        }
    }
}

/// An upgrade passing `n` listeners: upgrades under keep-alive load on the last listener.
fn scale_listeners(
    rt: &tokio::runtime::Runtime,
    tracker: &Arc<Tracker>,
    n: usize,
) -> std::io::Result<()> {
    let mut target = Target::start(Kind::Many(n), tracker.clone(), &[])?;
    let load = {
        let _rt = rt.enter();
        Load::start(load::Config {
            addr: target.addr,
            modes: vec![Mode::KeepAlive; 8],
            generation_of: GenerationOf::Pid,
            timeout: Duration::from_secs(5),
            max_duration: Duration::from_secs(120),
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let mut ups = Vec::new();
    for _ in 0..5 {
        let up = target.upgrade()?;
        let exit = tracker.wait_exit(up.old, Duration::from_secs(10));
        ups.push((up, exit));
        std::thread::sleep(Duration::from_millis(300));
    }
    let t0 = load.t0;
    let end_us = load.now_us();
    let recs = rt.block_on(load.finish());
    let handover: Vec<f64> = ups
        .iter()
        .map(|(u, _)| u.handed_over.duration_since(u.signal).as_secs_f64() * 1e3)
        .collect();
    let row = analyze(
        Kind::Many(n),
        Mode::KeepAlive,
        t0,
        Duration::from_millis(500),
        end_us,
        &recs,
        &ups,
    );
    println!(
        "- **{n} listeners**: {} upgrades completed; signal → pid file names the new generation: median {:.1} ms, max {:.1} ms; signal → first response from the new generation (on the last listener): median {:.1} ms, max {:.1} ms; {} requests, {} failed.",
        ups.len(),
        median(&handover),
        max(&handover),
        median(&row.latency_ms),
        max(&row.latency_ms),
        row.requests,
        row.failed_total()
    );
    Ok(())
}

/// How one idle keep-alive connection ended during the upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum IdleEnd {
    /// FIN while idle.
    ClosedIdle,
    /// Our request got a full response with `Connection: close`, then FIN.
    AnsweredThenClosed,
    Reset,
    /// The connection ended with our request unanswered.
    EofMidRequest,
    /// Not closed within the deadline.
    StillOpen,
    Other,
}

/// `n` idle keep-alive connections open during an upgrade; every tenth sends a request during
/// the grace phase. Each must end cleanly: closed while idle, or after a full response.
fn scale_idle(
    rt: &tokio::runtime::Runtime,
    tracker: &Arc<Tracker>,
    n: usize,
) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut target = Target::start(Kind::Hotexec, tracker.clone(), &[])?;
    let addr = target.addr;
    // Open the connections, 200 at a time, and make one request on each.
    let conns = rt.block_on(async {
        let sem = Arc::new(tokio::sync::Semaphore::new(200));
        let mut tasks = Vec::new();
        for _ in 0..n {
            let sem = sem.clone();
            tasks.push(tokio::spawn(async move {
                let _p = sem.acquire().await;
                open_idle(addr).await
            }));
        }
        let mut out = Vec::new();
        for t in tasks {
            if let Ok(Ok(c)) = t.await {
                out.push(c);
            }
        }
        out
    });
    let opened = conns.len();
    let old = target.current;
    let up = target.upgrade()?;
    let signal = up.signal;
    let ends: Vec<(IdleEnd, Option<Instant>)> = rt.block_on(async move {
        let mut tasks = Vec::new();
        for (i, (mut s, mut buf)) in conns.into_iter().enumerate() {
            tasks.push(tokio::spawn(async move {
                let deadline = Duration::from_secs(15);
                if i % 10 == 0 {
                    // A request somewhere in the first 250 ms of the grace phase.
                    tokio::time::sleep(Duration::from_micros((i as u64 * 37) % 250_000)).await;
                    if s.write_all(b"GET / HTTP/1.1\r\nHost: idle\r\n\r\n")
                        .await
                        .is_err()
                    {
                        return (IdleEnd::Reset, None);
                    }
                    match tokio::time::timeout(deadline, load::read_response(&mut s, &mut buf))
                        .await
                    {
                        Err(_) => return (IdleEnd::StillOpen, None),
                        Ok(Err(Class::Eof)) => return (IdleEnd::EofMidRequest, None),
                        Ok(Err(Class::Reset)) => return (IdleEnd::Reset, None),
                        Ok(Err(_)) => return (IdleEnd::Other, None),
                        Ok(Ok(r)) if !r.close => return (IdleEnd::Other, None),
                        Ok(Ok(_)) => {}
                    }
                }
                let mut b = [0u8; 64];
                let end = match tokio::time::timeout(deadline, s.read(&mut b)).await {
                    Err(_) => IdleEnd::StillOpen,
                    Ok(Ok(0)) if i % 10 == 0 => IdleEnd::AnsweredThenClosed,
                    Ok(Ok(0)) => IdleEnd::ClosedIdle,
                    Ok(Ok(_)) => IdleEnd::Other,
                    Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => IdleEnd::Reset,
                    Ok(Err(_)) => IdleEnd::Other,
                };
                (end, Some(Instant::now()))
            }));
        }
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap_or((IdleEnd::Other, None)));
        }
        out
    });
    let exit = tracker.wait_exit(old, Duration::from_secs(15));
    let mut by: BTreeMap<IdleEnd, usize> = BTreeMap::new();
    for (e, _) in &ends {
        *by.entry(*e).or_insert(0) += 1;
    }
    let last_close = ends.iter().filter_map(|(_, t)| *t).max();
    let since = |t: Option<Instant>| {
        t.map(|t| format!("{:.0} ms", t.duration_since(signal).as_secs_f64() * 1e3))
            .unwrap_or_else(|| "—".into())
    };
    let summary: Vec<String> = by.iter().map(|(k, v)| format!("{v} {k:?}")).collect();
    println!(
        "- **{n} idle keep-alive connections** ({opened} opened) during an upgrade: {}; last close {} after the signal, old process exit {} after the signal (grace phase {:?}).",
        summary.join(", "),
        since(last_close),
        since(exit),
        http_server::close_grace()
    );
    drop(target);
    Ok(())
}

async fn open_idle(addr: SocketAddr) -> std::io::Result<(tokio::net::TcpStream, Vec<u8>)> {
    use tokio::io::AsyncWriteExt;
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: idle\r\n\r\n").await?;
    let mut buf = Vec::new();
    load::read_response(&mut s, &mut buf)
        .await
        .map_err(|c| std::io::Error::other(c.name()))?;
    Ok((s, buf))
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    format!(
        "{cores} cores ({cpu}), Linux {}, {}",
        kernel.trim(),
        std::env::consts::ARCH
    )
}

fn main() {
    if servers::dispatch() {
        return;
    }
    let opts = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("bench: {e}");
            std::process::exit(2);
        }
    };
    hotexec_testkit::reap::subreaper();
    let nofile = hotexec_testkit::limits::raise_nofile();
    let tracker = Tracker::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let nginx = targets::nginx_version();
    let command: Vec<String> = std::env::args().skip(1).collect();
    eprintln!(
        "bench: {} clients, {} upgrades per scenario, ≥ {:?} apart; machine: {}",
        opts.clients,
        opts.upgrades,
        opts.interval,
        machine()
    );
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    for &mode in &opts.modes {
        for &kind in &opts.kinds {
            if kind == Kind::Nginx && mode == Mode::H2 {
                if !notes.iter().any(|n: &String| n.contains("h2c")) {
                    notes.push(
                        "nginx skipped in HTTP/2 mode: its h2c needs a listener of its own (`listen … http2`), not the one the other modes measure".into(),
                    );
                }
                continue;
            }
            if kind == Kind::Nginx && nginx.is_none() {
                if !notes.iter().any(|n: &String| n.contains("nginx")) {
                    notes.push(format!(
                        "nginx skipped: {} is not installed (`apt-get install nginx-light`)",
                        targets::NGINX
                    ));
                }
                continue;
            }
            match run_scenario(&rt, &tracker, kind, mode, &opts) {
                Ok(r) => rows.push(r),
                Err(e) => notes.push(format!(
                    "{} / {}: failed to run: {e}",
                    kind.name(),
                    mode.name()
                )),
            }
        }
    }
    println!();
    println!(
        "Command: `cargo run --release --example bench{}{}`  ",
        if command.is_empty() { "" } else { " -- " },
        command.join(" ")
    );
    println!("Machine: {}  ", machine());
    println!(
        "Load: {} concurrent clients on the same machine, {} upgrades per scenario, one at least every {} ms{}",
        opts.clients,
        opts.upgrades,
        opts.interval.as_millis(),
        nginx
            .as_deref()
            .map(|v| format!("; {v}"))
            .unwrap_or_default()
    );
    println!();
    print_table(&rows);
    println!();
    print_details(&rows);
    if opts.scale {
        println!();
        println!("Scale checks (RLIMIT_NOFILE {nofile}):");
        println!();
        if let Err(e) = scale_listeners(&rt, &tracker, opts.listeners) {
            println!("- {} listeners: failed: {e}", opts.listeners);
        }
        if let Err(e) = scale_idle(&rt, &tracker, opts.idle) {
            println!("- {} idle connections: failed: {e}", opts.idle);
        }
    }
    for n in &notes {
        println!();
        println!("Note: {n}");
    }
}
