//! What counting every request into the generation's health costs (BENCHMARKS.md, "Health
//! counters"):
//!
//! 1. One outcome counted, in ns, on 1 thread and on every core at once: hotexec's striped
//!    counters (`Health::record_response`) against one shared `AtomicU64` per outcome (the
//!    obvious design, whose cache line moves between cores on every increment) and against an
//!    `Arc` clone + drop per request (what the facade avoids by counting through the
//!    connection's `Connections`).
//! 2. The whole request path, keep-alive HTTP/1.1 over loopback: an axum app on
//!    `hotexec::serve` (drain, grace and counting) against the same app on hyper-util's plain
//!    `auto::Builder` (none of them): the facade's whole cost per request, an upper bound of
//!    the counting's.
//!
//! ```text
//! cargo run --release --example bench_health            # ~20 s
//! cargo run --release --example bench_health -- --quick # ~5 s
//! ```
use std::hint::black_box;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use axum::{Router, routing::get};

fn per_op_ns(threads: usize, ops: u64, f: impl Fn() + Send + Sync + 'static) -> f64 {
    let f = Arc::new(f);
    let barrier = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|cpu| {
            let (f, b) = (f.clone(), barrier.clone());
            std::thread::spawn(move || {
                pin_to(cpu);
                b.wait();
                let t = Instant::now();
                for _ in 0..ops {
                    f();
                }
                t.elapsed()
            })
        })
        .collect();
    let worst = handles
        .into_iter()
        .map(|h| h.join().unwrap())
        .max()
        .unwrap();
    // Wall time per op of one thread while all run: what a request pays.
    worst.as_nanos() as f64 / ops as f64
}

/// Runs the calling thread on `cpu` only, so that the threads of a run are on different cores
/// (where a shared cache line has to move) rather than taking turns on one.
fn pin_to(cpu: usize) {
    // SAFETY: `set` is a plain bit array on the stack, zeroed by CPU_ZERO and written only
    // through CPU_SET within its size; sched_setaffinity reads it for the calling thread (0).
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_ZERO(&mut set);
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Median of `runs`. Not the best: the best run of two threads is the one where the rest of a
/// shared machine kept them from running at the same time, i.e. without the contention this
/// measures.
fn median(runs: usize, mut f: impl FnMut() -> f64) -> f64 {
    let mut v: Vec<f64> = (0..runs).map(|_| f()).collect();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn counters(ops: u64, runs: usize) {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    println!("| counting one outcome | 1 thread, ns | {cores} threads at once, ns per thread |");
    println!("|---|---:|---:|");
    let row = |name: &str, make: &dyn Fn() -> Box<dyn Fn() + Send + Sync>| {
        let one = median(runs, || per_op_ns(1, ops, make()));
        let all = median(runs, || per_op_ns(cores, ops, make()));
        println!("| {name} | {one:.1} | {all:.1} |");
    };
    row("nothing (loop only)", &|| Box::new(|| black_box(())));
    row("`Health::record_response` (striped, hotexec)", &|| {
        let h = hotexec::health::Health::new();
        Box::new(move || black_box(&h).record_response(black_box(200)))
    });
    row("one shared `AtomicU64` per outcome", &|| {
        let c = Arc::new(AtomicU64::new(0));
        Box::new(move || {
            black_box(&c).fetch_add(1, Ordering::Relaxed);
        })
    });
    row("`Arc` clone + drop of a shared handle", &|| {
        let h = Arc::new(hotexec::health::Health::new());
        Box::new(move || drop(black_box(black_box(&h).clone())))
    });
}

fn app() -> Router {
    Router::new().route("/", get(|| async { "ok\n" }))
}

/// Serves `app()` on a runtime of its own: through hotexec::serve, or hyper-util's plain builder.
fn server(with_hotexec: bool) -> (SocketAddr, tokio::runtime::Runtime, hotexec::Shutdown) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = hotexec::Shutdown::detached(Duration::from_secs(5)).unwrap();
    if with_hotexec {
        rt.spawn(hotexec::serve(listener, app(), shutdown.clone()).into_future());
    } else {
        rt.spawn(async move {
            let builder =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            let builder = Arc::new(builder);
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let b = builder.clone();
                tokio::spawn(async move {
                    let svc = hyper_util::service::TowerToHyperService::new(app());
                    let _ = b
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
    }
    (addr, rt, shutdown)
}

/// Requests per second of one keep-alive client for `secs`.
fn keepalive_rps(addr: SocketAddr, secs: f64) -> f64 {
    let s = TcpStream::connect(addr).unwrap();
    s.set_nodelay(true).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut r = BufReader::new(s);
    let stop = Instant::now() + Duration::from_secs_f64(secs);
    let started = Instant::now();
    let mut n = 0u64;
    let mut line = String::new();
    while Instant::now() < stop {
        r.get_mut()
            .write_all(b"GET / HTTP/1.1\r\nHost: b\r\n\r\n")
            .unwrap();
        let mut len = 0;
        loop {
            line.clear();
            r.read_line(&mut line).unwrap();
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; len];
        r.read_exact(&mut body).unwrap();
        n += 1;
    }
    n as f64 / started.elapsed().as_secs_f64()
}

fn request_path(secs: f64, rounds: usize) {
    let hot = server(true);
    let plain = server(false);
    // Alternate, so that whatever else the machine does falls on both.
    let (mut h, mut p) = (Vec::new(), Vec::new());
    let _ = keepalive_rps(hot.0, 0.3);
    let _ = keepalive_rps(plain.0, 0.3);
    for _ in 0..rounds {
        h.push(keepalive_rps(hot.0, secs));
        p.push(keepalive_rps(plain.0, secs));
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (h, p) = (med(&mut h), med(&mut p));
    let counted = hot.2.health().counts();
    println!();
    println!(
        "| keep-alive HTTP/1.1, 1 client, 1 server worker | req/s (median of {rounds}) | µs per request |"
    );
    println!("|---|---:|---:|");
    println!(
        "| axum on hyper-util's plain builder | {p:.0} | {:.1} |",
        1e6 / p
    );
    println!(
        "| axum on `hotexec::serve` (drain, grace, counting) | {h:.0} | {:.1} |",
        1e6 / h
    );
    println!(
        "\nhotexec::serve / plain: {:.3}; requests counted by the hotexec server: {}",
        h / p,
        counted.requests()
    );
    let _ = hot.2.resolve(hotexec::ShutdownReason::Stop { signal: 15 });
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    if std::env::args().any(|a| a == "--help" || a == "-h") {
        println!("usage: bench_health [--quick]");
        return;
    }
    let (ops, runs, secs, rounds) = if quick {
        (2_000_000, 3, 0.5, 3)
    } else {
        (20_000_000, 5, 2.0, 5)
    };
    println!(
        "Machine: {} cores; {ops} operations per thread, median of {runs} runs\n",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    counters(ops, runs);
    request_path(secs, rounds);
}
