//! hotexec in 20 seconds: the `http` example under load, upgraded ten times, nothing lost.
//!
//! ```text
//! cargo run --release --example demo
//! ```
//!
//! Starts the `http` example's server on a free 127.0.0.1 port, drives 32 clients at it (half
//! keep-alive, half a new connection per request), sends SIGUSR2 every 1.5 s (each upgrade
//! re-executes the binary), then reports every request's fate. The server is a role of this
//! binary (`support/servers.rs`), so cargo has nothing else to build.
#[path = "support/http_server.rs"]
mod http_server;
#[path = "support/logging.rs"]
mod logging;
#[path = "support/servers.rs"]
mod servers;

use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use hotexec_testkit::bench::{load, targets};
use load::{Class, GenerationOf, Load, Mode};
use targets::{Kind, Target, Tracker};

const UPGRADES: usize = 10;
const EVERY: Duration = Duration::from_millis(1500);
const CLIENTS: usize = 32;

fn main() {
    if servers::dispatch() {
        return;
    }
    if let Err(e) = demo() {
        eprintln!("\ndemo failed: {e}");
        std::process::exit(1);
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn median_max(mut v: Vec<f64>) -> String {
    if v.is_empty() {
        return "—".into();
    }
    v.sort_by(f64::total_cmp);
    format!(
        "median {:.1} ms, max {:.1} ms",
        load::quantile(&v, 0.5),
        v[v.len() - 1]
    )
}

fn demo() -> std::io::Result<()> {
    hotexec_testkit::reap::subreaper();
    let tracker = Tracker::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut target = Target::start(Kind::Hotexec, tracker.clone(), &[])?;
    let modes: Vec<Mode> = (0..CLIENTS)
        .map(|i| {
            if i % 2 == 0 {
                Mode::KeepAlive
            } else {
                Mode::Close
            }
        })
        .collect();
    println!(
        "hotexec demo: the `http` example serves on http://{} (pid {})",
        target.addr, target.current
    );
    println!(
        "{CLIENTS} clients ({} keep-alive, {} with a new connection per request); {UPGRADES} upgrades (SIGUSR2), one every {:.1} s\n",
        CLIENTS / 2,
        CLIENTS / 2,
        EVERY.as_secs_f64()
    );
    let load = {
        let _rt = rt.enter();
        Load::start(load::Config {
            addr: target.addr,
            modes: modes.clone(),
            generation_of: GenerationOf::Pid,
            timeout: Duration::from_secs(5),
            max_duration: Duration::from_secs(120),
        })
    };
    let live = |load: &Load| {
        format!(
            "{:>9} requests ok, {} failed",
            load.live.ok.load(Ordering::Relaxed),
            load.live.failed.load(Ordering::Relaxed)
        )
    };
    let tick = |until: Instant, load: &Load| {
        while Instant::now() < until {
            eprint!("\r  … {}   ", live(load));
            let _ = std::io::stderr().flush();
            std::thread::sleep(Duration::from_millis(100).min(until - Instant::now()));
        }
    };
    let mut ups = Vec::new();
    let mut next = Instant::now() + EVERY;
    for i in 1..=UPGRADES {
        tick(next, &load);
        let up = target.upgrade()?;
        let exit = tracker.wait_exit(up.old, Duration::from_secs(10));
        eprint!("\r");
        println!(
            "upgrade {i:>2}/{UPGRADES}: pid {} → {}, handed over {:.1} ms after the signal, old pid exited after {} | {}",
            up.old,
            up.new,
            ms(up.handed_over - up.signal),
            exit.map(|e| format!("{:.1} ms", ms(e - up.signal)))
                .unwrap_or_else(|| "(still draining)".into()),
            live(&load)
        );
        ups.push((up, exit));
        next = up.signal + EVERY;
    }
    tick(Instant::now() + Duration::from_secs(1), &load);
    eprint!("\r");
    let t0 = load.t0;
    let recs = rt.block_on(load.finish());
    drop(target);

    let mut failed: HashMap<Class, usize> = HashMap::new();
    let mut first: HashMap<u32, u64> = HashMap::new();
    for r in &recs {
        if r.class == Class::Ok {
            first.entry(r.generation).or_insert(r.end_us);
        } else {
            *failed.entry(r.class).or_insert(0) += 1;
        }
    }
    let us = |t: Instant| t.duration_since(t0).as_micros() as u64;
    let serving: Vec<f64> = ups
        .iter()
        .filter_map(|(u, _)| Some((first.get(&u.new)? - us(u.signal)) as f64 / 1e3))
        .collect();
    let exits: Vec<f64> = ups
        .iter()
        .filter_map(|(u, e)| Some(ms(e.as_ref()?.duration_since(u.signal))))
        .collect();
    let total_failed: usize = failed.values().sum();
    let by_class: Vec<String> = Class::FAILURES
        .iter()
        .map(|c| format!("{} {}", failed.get(c).copied().unwrap_or(0), c.name()))
        .collect();
    println!("\nReport");
    println!("  requests sent     {}", recs.len());
    println!(
        "  failed            {total_failed}  ({})",
        by_class.join(", ")
    );
    println!(
        "  upgrades done     {} ({} generations answered requests)",
        ups.len(),
        first.len()
    );
    println!(
        "  signal → new pid serving (its first response): {}",
        median_max(serving)
    );
    println!(
        "  signal → old process exit:                     {}",
        median_max(exits)
    );
    if total_failed == 0 {
        println!("\nNothing lost: every request got a complete 200 response across every upgrade.");
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "{total_failed} requests failed"
        )))
    }
}
