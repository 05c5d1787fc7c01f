//! Metrics that survive upgrades (issue 19), scraped from outside: the `metrics` example
//! serves a real Prometheus exporter's page; a scraper reads it back to back through three
//! upgrades, and no counter ever goes down, hotexec's count the upgrades, the generation gauge
//! follows, and the app's own carried counter does not restart from zero.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hotexec_testkit::prelude::*;

const LIMIT: Duration = Duration::from_secs(30);

/// The series of a Prometheus text page: `name{labels}` → value.
fn parse(page: &str) -> BTreeMap<String, f64> {
    page.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_owned(), value.trim().parse().ok()?))
        })
        .collect()
}

#[test]
fn counters_never_go_backwards_across_upgrades() {
    let app = App::start("metrics", "HOTEXEC_LISTEN_HTTP", &[]);
    let scrape = || -> BTreeMap<String, f64> {
        let page = get_text(app.addr, "/metrics", Duration::from_secs(5)).expect("/metrics");
        parse(&page)
    };
    // Some traffic of the app's own.
    for _ in 0..20 {
        assert!(matches!(
            get(app.addr, "/", Duration::from_secs(5)),
            Outcome::Ok { .. }
        ));
    }
    let first = scrape();
    assert_eq!(first.get("hotexec_generation"), Some(&1.0), "{first:?}");
    assert!(
        first.get("app_requests_total").is_some_and(|v| *v >= 20.0),
        "{first:?}"
    );

    // A scraper back to back (one request at a time: each page is newer than the one before)
    // while three upgrades happen.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let scraper = {
        let (addr, stop) = (app.addr, stop.clone());
        std::thread::spawn(move || {
            let mut pages = Vec::new();
            let hard_stop = Instant::now() + Duration::from_secs(60);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < hard_stop {
                if let Ok(page) = get_text(addr, "/metrics", Duration::from_secs(5)) {
                    pages.push(parse(&page));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            pages
        })
    };
    let mut pid = app.first_pid();
    for _ in 0..3 {
        let run = hotexec_cli(
            &["upgrade", "--pid-file", app.pid_file.to_str().unwrap()],
            LIMIT,
        );
        assert_eq!(run.code, 0, "{run:?}");
        pid = run.stdout.trim().parse().unwrap();
        app.track(pid);
        answered_by(app.addr, pid, Duration::from_secs(5));
        std::thread::sleep(Duration::from_millis(300));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let pages = scraper.join().unwrap();
    assert!(pages.len() > 20, "only {} scrapes", pages.len());

    let mut seen: BTreeMap<String, f64> = BTreeMap::new();
    for (i, page) in std::iter::once(&first).chain(&pages).enumerate() {
        for (series, v) in page {
            // hotexec's counters: none may go down, whichever generation answered.
            if series.starts_with("hotexec_") && series.contains("_total") {
                if let Some(before) = seen.get(series) {
                    assert!(
                        v >= before,
                        "scrape {i}: {series} went from {before} to {v}"
                    );
                }
                seen.insert(series.clone(), *v);
            }
        }
    }
    // The draining gauge is published by the serving generation as its predecessor drains,
    // and is back at 0 once that one is done.
    wait_for(
        Duration::from_secs(30),
        "hotexec_draining_connections at 0",
        || (scrape().get("hotexec_draining_connections") == Some(&0.0)).then_some(()),
    );
    let last = scrape();
    assert_eq!(last.get("hotexec_generation"), Some(&4.0), "{last:?}");
    assert_eq!(
        last.get("hotexec_upgrades_total{result=\"ok\"}"),
        Some(&3.0),
        "{last:?}"
    );
    assert!(
        last.get("hotexec_upgrade_duration_seconds")
            .is_some_and(|s| *s > 0.0),
        "{last:?}"
    );
    // The app's counter was carried: it did not restart from zero in the new generations.
    assert!(
        last.get("app_requests_total").is_some_and(|v| *v >= 20.0),
        "{last:?}"
    );
    assert_eq!(
        get(app.addr, "/", Duration::from_secs(5)),
        Outcome::Ok { pid }
    );
}
