//! What an upgrade costs as the server's memory grows: a hotexec server holding 0, 1, 4 and
//! 8 GB of touched memory, under load, upgraded several times with each spawn method
//! (`clone(CLONE_VM | CLONE_VFORK)`, the default, and `fork`, `HOTEXEC_SPAWN=fork`), plus
//! nginx's fork-based upgrade at its own size. Prints one markdown table: signal → new
//! generation ready, and the p99 / max latency of the requests the old generation served in
//! the upgrade window against those it served outside it.
//!
//! ```text
//! cargo run --release --example bench_memory                  # 0, 1, 4, 8 GB, 3 upgrades each
//! cargo run --release --example bench_memory -- 0 1           # only these sizes (GB)
//! ```
//!
//! Every generation holds the ballast: it is allocated by a thread of the server once its
//! previous generation has exited (so two ballasts never coexist: 8 GB + a small new
//! generation fit the 24 GB machine), and the next upgrade waits for it.
#[path = "support/http_server.rs"]
mod http_server;
#[path = "support/logging.rs"]
mod logging;
#[path = "support/servers.rs"]
mod servers;

use std::path::Path;
use std::time::{Duration, Instant};

use hotexec_testkit::bench::{load, targets};
use load::{Class, Load, Mode, Rec, quantile};
use targets::{Kind, Target, Tracker};

/// MiB of ballast each generation of the server holds (a server role of this binary).
const BALLAST_VAR: &str = "BENCH_BALLAST_MB";
/// File where a generation writes its pid once its ballast is resident.
const BALLAST_FILE_VAR: &str = "BENCH_BALLAST_FILE";
/// The driver's pid.
const DRIVER_VAR: &str = "BENCH_DRIVER_PID";
const UPGRADES: usize = 3;

fn main() {
    if std::env::var_os(hotexec_testkit::bench::roles::ROLE_VAR).is_some() {
        ballast();
        if !servers::dispatch() {
            unreachable!("role variable set");
        }
        return;
    }
    let sizes: Vec<u64> = {
        let args: Vec<u64> = std::env::args()
            .skip(1)
            .map(|a| {
                a.parse().unwrap_or_else(|_| {
                    eprintln!("bench_memory: {a:?}: expected a size in GB (0, 1, 4, 8…)");
                    std::process::exit(2)
                })
            })
            .collect();
        if args.is_empty() {
            vec![0, 1, 4, 8]
        } else {
            args
        }
    };
    hotexec_testkit::reap::subreaper();
    hotexec_testkit::limits::raise_nofile();
    let tracker = Tracker::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    println!(
        "| target | memory | signal → ready (median / max) | old gen. p99 / max outside | old gen. p99 / max in window | requests | failed |"
    );
    println!("|---|---|---|---|---|---|---|");
    let largest = sizes.iter().copied().max().unwrap_or(0);
    let mut plotted = Vec::new();
    for &gb in &sizes {
        for method in ["clone", "fork"] {
            let run = row(&rt, &tracker, Kind::Hotexec, gb, Some(method));
            if gb == largest {
                plotted.extend(run);
            }
        }
    }
    if targets::nginx_version().is_some() {
        plotted.extend(row(&rt, &tracker, Kind::Nginx, 0, None));
    } else {
        println!("\nnginx skipped: {} is not installed", targets::NGINX);
    }
    let svg = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/bench_memory.svg");
    let _ = std::fs::create_dir_all(svg.parent().unwrap());
    match plot(&plotted, &svg) {
        Ok(()) => eprintln!("bench_memory: plot written to {}", svg.display()),
        Err(e) => eprintln!("bench_memory: plot: {e}"),
    }
}

/// In a server process: start the ballast thread when asked.
fn ballast() {
    let Some(mb) = std::env::var(BALLAST_VAR)
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    else {
        return;
    };
    let file = std::env::var(BALLAST_FILE_VAR).ok();
    // SAFETY: getppid has no preconditions.
    let parent = unsafe { libc::getppid() };
    // The first generation is the driver's child; later ones are children of the previous.
    let first = std::env::var(DRIVER_VAR).ok() == Some(parent.to_string());
    std::thread::spawn(move || {
        // Wait for the previous generation to exit (we are re-parented to the driver, a
        // subreaper), so that two ballasts never coexist.
        // SAFETY: as above.
        while !first && unsafe { libc::getppid() } == parent {
            std::thread::sleep(Duration::from_millis(5));
        }
        let len = mb << 20;
        let mut v: Vec<u8> = Vec::with_capacity(len);
        // Touch every page (small pages, as a heap of many objects has: no huge pages), so
        // the memory is resident and mapped by page tables.
        // SAFETY: `v` owns `len` bytes of capacity; madvise only advises.
        unsafe { libc::madvise(v.as_mut_ptr().cast(), len, libc::MADV_NOHUGEPAGE) };
        for i in (0..len).step_by(4096) {
            // SAFETY: within the capacity.
            unsafe { v.as_mut_ptr().add(i).write(1) };
        }
        std::mem::forget(v);
        if let Some(f) = file {
            let _ = servers::write_atomic(Path::new(&f), &format!("{}\n", std::process::id()));
        }
    });
}

fn ballast_owner(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn ms(us: u64) -> String {
    format!("{:.1} ms", us as f64 / 1000.0)
}

/// One run, kept for the plot.
struct Run {
    name: String,
    recs: Vec<Rec>,
    /// The upgrade signals, in µs of the run's clock.
    signals: Vec<u64>,
}

/// Runs one target with `UPGRADES` upgrades under load and prints its table row.
fn row(
    rt: &tokio::runtime::Runtime,
    tracker: &std::sync::Arc<Tracker>,
    kind: Kind,
    gb: u64,
    method: Option<&str>,
) -> Option<Run> {
    let dir = std::env::temp_dir().join(format!("bench-memory-{}-{gb}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let marker = dir.join("ballast");
    let _ = std::fs::remove_file(&marker);
    let mb = (gb * 1024).to_string();
    let marker_s = marker.display().to_string();
    let driver = std::process::id().to_string();
    let mut env = vec![
        ("HOTEXEC_PROBATION", "100ms"),
        (DRIVER_VAR, driver.as_str()),
        (BALLAST_VAR, mb.as_str()),
        (BALLAST_FILE_VAR, marker_s.as_str()),
    ];
    if let Some(m) = method {
        env.push(("HOTEXEC_SPAWN", m));
    }
    let mut target = match Target::start(kind, tracker.clone(), &env) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("bench_memory: {kind:?} {gb} GB: {e}");
            return None;
        }
    };
    let wait_ballast = |pid: u32| {
        let t = Instant::now();
        while kind == Kind::Hotexec && ballast_owner(&marker) != Some(pid) {
            assert!(t.elapsed() < Duration::from_secs(120), "ballast of {pid}");
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    wait_ballast(target.current);
    let _guard = rt.enter();
    let load = Load::start(load::Config {
        addr: target.addr,
        modes: vec![Mode::Close, Mode::Close, Mode::KeepAlive, Mode::KeepAlive],
        generation_of: kind.generation_of(),
        timeout: Duration::from_secs(5),
        max_duration: Duration::from_secs(600),
    });
    // (old pid, quiet from, signal, ready) in µs of the load's clock.
    let mut ups = Vec::new();
    let mut quiet_from = load.now_us();
    for _ in 0..UPGRADES {
        std::thread::sleep(Duration::from_millis(700));
        let old = target.current;
        let u = match target.upgrade() {
            Ok(u) => u,
            Err(e) => {
                eprintln!("bench_memory: upgrade failed: {e}\n{}", target.log_tail());
                break;
            }
        };
        let at = |t: Instant| t.duration_since(load.t0).as_micros() as u64;
        ups.push((old, quiet_from, at(u.signal), at(u.handed_over)));
        wait_ballast(u.new);
        quiet_from = load.now_us();
    }
    std::thread::sleep(Duration::from_millis(300));
    let recs: Vec<Rec> = rt.block_on(load.finish());
    let mut ready: Vec<u64> = ups.iter().map(|u| u.3 - u.2).collect();
    ready.sort_unstable();
    let (mut inside, mut outside) = (Vec::new(), Vec::new());
    for r in recs.iter().filter(|r| r.class == Class::Ok) {
        for &(old, from, signal, done) in &ups {
            if r.generation != old {
                continue;
            }
            let lat = r.end_us - r.start_us;
            if r.start_us >= signal && r.start_us <= done {
                inside.push(lat);
            } else if r.start_us >= from && r.end_us < signal {
                outside.push(lat);
            }
        }
    }
    inside.sort_unstable();
    outside.sort_unstable();
    let failed = recs.iter().filter(|r| r.class != Class::Ok).count();
    let name = match method {
        Some(m) => format!("hotexec, {m}"),
        None => "nginx (USR2, WINCH+QUIT)".into(),
    };
    let mem = if kind == Kind::Nginx {
        "its own (~10 MB)".into()
    } else {
        format!("{gb} GB")
    };
    println!(
        "| {name} | {mem} | {} / {} | {} / {} | {} / {} ({} req.) | {} | {failed} |",
        ms(quantile(&ready, 0.5)),
        ms(ready.last().copied().unwrap_or(0)),
        ms(quantile(&outside, 0.99)),
        ms(outside.last().copied().unwrap_or(0)),
        ms(quantile(&inside, 0.99)),
        ms(inside.last().copied().unwrap_or(0)),
        inside.len(),
        recs.len(),
    );
    drop(target);
    let _ = std::fs::remove_dir_all(&dir);
    Some(Run {
        name: format!("{name}, {mem}"),
        recs,
        signals: ups.iter().map(|u| u.2).collect(),
    })
}

/// Requests per 100 ms by serving generation, the upgrade signals marked: one panel per run.
fn plot(runs: &[Run], path: &Path) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (1000, 300 * runs.len() as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    let colors = [BLUE, RED, GREEN, MAGENTA, CYAN, BLACK];
    for (run, area) in runs.iter().zip(root.split_evenly((runs.len(), 1))) {
        let end_us = run.recs.iter().map(|r| r.end_us).max().unwrap_or(0);
        let n = (end_us / 100_000 + 1) as usize;
        // Generations in order of first answer.
        let mut gens: Vec<u32> = Vec::new();
        for r in run.recs.iter().filter(|r| r.class == Class::Ok) {
            if !gens.contains(&r.generation) {
                gens.push(r.generation);
            }
        }
        let mut counts = vec![vec![0u32; n]; gens.len()];
        for r in run.recs.iter().filter(|r| r.class == Class::Ok) {
            let g = gens.iter().position(|g| *g == r.generation).unwrap_or(0);
            counts[g][(r.end_us / 100_000) as usize] += 1;
        }
        let top = counts.iter().flatten().copied().max().unwrap_or(1) + 10;
        let mut chart = ChartBuilder::on(&area)
            .caption(&run.name, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(50)
            .build_cartesian_2d(0f64..n as f64 / 10.0, 0u32..top)?;
        chart
            .configure_mesh()
            .x_desc("seconds")
            .y_desc("requests / 100 ms")
            .draw()?;
        for (i, c) in counts.iter().enumerate() {
            let color = colors[i % colors.len()];
            chart
                .draw_series(LineSeries::new(
                    c.iter().enumerate().map(|(b, v)| (b as f64 / 10.0, *v)),
                    color.stroke_width(2),
                ))?
                .label(format!("generation {} (pid {})", i + 1, gens[i]))
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 15, y)], color));
        }
        for &s in &run.signals {
            let x = s as f64 / 1e6;
            chart.draw_series(std::iter::once(PathElement::new(
                [(x, 0), (x, top)],
                BLACK.stroke_width(1),
            )))?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()?;
    Ok(())
}
