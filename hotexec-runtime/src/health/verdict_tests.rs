//! The verdict's rules, case by case and by property.
use super::*;
use proptest::prelude::*;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A counting generation's report: `ok` 200s, `bad` 500s, one connection per request.
fn served(ok: u64, bad: u64) -> Report {
    Report::served(ok, bad, ms(1000))
}

fn policy() -> HealthPolicy {
    HealthPolicy::default()
}

fn is_unhealthy(v: &Verdict) -> bool {
    matches!(v, Verdict::Unhealthy { .. })
}

fn is_healthy(v: &Verdict) -> bool {
    matches!(v, Verdict::Healthy { .. })
}

#[test]
fn wilson_bound_behaves() {
    assert_eq!(wilson_lower(0, 0, Z), 0.0);
    assert_eq!(wilson_lower(0, 1000, Z), 0.0);
    let l = wilson_lower(50, 1000, Z);
    assert!(l > 0.03 && l < 0.05, "{l}");
    assert!(wilson_lower(10, 10, Z) > 0.4);
    // Never above the observed rate.
    assert!(wilson_lower(1, 3, Z) < 1.0 / 3.0);
}

#[test]
fn five_percent_where_the_old_was_under_one_is_unhealthy_within_a_few_hundred() {
    let old = served(99_500, 500); // 0.5%
    let p = policy();
    // Early in the probation, as soon as the evidence is there.
    let v = verdict(&old, &served(380, 20), &p, ms(300));
    assert!(is_unhealthy(&v), "{v:?}");
    let Verdict::Unhealthy { reason, numbers } = v else {
        unreachable!()
    };
    assert!(
        reason.contains("5.0% of its requests") && reason.contains("limit of 2.0%"),
        "{reason}"
    );
    let text = numbers.to_string();
    assert!(
        text.contains("20 bad answers") && text.contains("of 400 requests"),
        "{text}"
    );
    assert!(text.contains("500 of 100000 (0.5%)"), "{text}");
    // 100 requests are not enough evidence yet.
    assert!(matches!(
        verdict(&old, &served(95, 5), &p, ms(300)),
        Verdict::Pending(_)
    ));
}

#[test]
fn a_healthy_build_is_committed_after_the_probation_not_before() {
    let old = served(99_500, 500);
    let p = policy();
    let new = served(4_950, 50); // 1%
    assert!(matches!(
        verdict(&old, &new, &p, ms(1_999)),
        Verdict::Pending(_)
    ));
    let v = verdict(&old, &new, &p, ms(2_000));
    assert!(is_healthy(&v), "{v:?}");
}

#[test]
fn an_old_generation_at_three_percent_leaves_room_up_to_six() {
    let old = served(97_000, 3_000);
    let p = policy();
    assert!(is_healthy(&verdict(
        &old,
        &served(9_500, 500),
        &p,
        ms(2_000)
    )));
    // The release that fixes it, too.
    assert!(is_healthy(&verdict(
        &old,
        &served(10_000, 0),
        &p,
        ms(2_000)
    )));
    // But not a build three times as bad.
    assert!(is_unhealthy(&verdict(
        &old,
        &served(9_000, 1_000),
        &p,
        ms(500)
    )));
}

#[test]
fn an_old_generation_with_too_few_requests_is_no_baseline() {
    // 30% of 20 requests: a noisy start, not a rate to hold the new one to.
    let old = served(14, 6);
    let v = verdict(&old, &served(950, 50), &policy(), ms(500));
    assert!(is_unhealthy(&v), "{v:?}");
}

#[test]
fn small_samples_wait_then_commit_on_what_there_is() {
    let old = served(10_000, 0);
    let p = policy();
    // One bad answer of 10: not enough to call it bad, not enough to call it good.
    let new = served(9, 1);
    assert!(matches!(
        verdict(&old, &new, &p, ms(2_000)),
        Verdict::Pending(_)
    ));
    assert!(matches!(
        verdict(&old, &new, &p, ms(9_999)),
        Verdict::Pending(_)
    ));
    let v = verdict(&old, &new, &p, ms(10_000));
    let Verdict::Healthy { why, .. } = v else {
        panic!("{v:?}")
    };
    assert!(why.contains("too few to judge"), "{why}");
    // Ten of ten failing is enough, early.
    assert!(is_unhealthy(&verdict(&old, &served(0, 10), &p, ms(100))));
    // Four of four is not: never on fewer than MIN_BAD bad answers.
    assert!(!is_unhealthy(&verdict(&old, &served(0, 4), &p, ms(10_000))));
}

#[test]
fn panics_and_errors_are_bad_answers_and_4xx_are_not() {
    let old = served(10_000, 0);
    let p = policy();
    let mut new = served(950, 0);
    new.counts.panics = 30;
    new.counts.errors = 20;
    assert!(is_unhealthy(&verdict(&old, &new, &p, ms(500))));
    let mut clients = served(500, 0);
    clients.counts.client_error = 500;
    assert!(is_healthy(&verdict(&old, &clients, &p, ms(2_000))));
}

#[test]
fn failed_connections_are_judged_per_connection() {
    let old = served(10_000, 0);
    let mut new = served(1_000, 0);
    new.counts.connections_failed = 100;
    let v = verdict(&old, &new, &policy(), ms(500));
    let Verdict::Unhealthy { reason, numbers } = v else {
        panic!("{v:?}")
    };
    assert!(reason.contains("of its connections failed"), "{reason}");
    assert!(
        numbers
            .to_string()
            .contains("100 failed connections of 1000")
    );
}

#[test]
fn a_check_vetoes_at_once_and_off_commits_at_once() {
    let old = served(10_000, 0);
    let mut new = served(10, 0);
    new.veto = Some("check \"db\" failed: no answer".into());
    let v = verdict(&old, &new, &policy(), ms(10));
    assert!(
        matches!(&v, Verdict::Unhealthy { reason, .. } if reason.contains("db")),
        "{v:?}"
    );
    let off = HealthPolicy {
        enabled: false,
        ..policy()
    };
    assert!(is_healthy(&verdict(&old, &served(0, 1_000), &off, ms(0))));
}

#[test]
fn a_generation_that_counts_nothing_is_committed_on_the_crash_watch() {
    let old = served(10_000, 0);
    let silent = Report::default();
    assert!(matches!(
        verdict(&old, &silent, &policy(), ms(1_000)),
        Verdict::Pending(_)
    ));
    let v = verdict(&old, &silent, &policy(), ms(2_000));
    assert!(
        matches!(&v, Verdict::Healthy { why, .. } if why.contains("crash watch")),
        "{v:?}"
    );
}

#[test]
fn an_idle_counting_generation_is_committed_at_the_end_of_the_probation() {
    let old = served(10_000, 0);
    let idle = served(0, 0);
    assert!(matches!(
        verdict(&old, &idle, &policy(), ms(1_999)),
        Verdict::Pending(_)
    ));
    let v = verdict(&old, &idle, &policy(), ms(2_000));
    assert!(
        matches!(&v, Verdict::Healthy { why, .. } if why.contains("nothing to judge")),
        "{v:?}"
    );
    // One request is not idle: it waits for more.
    assert!(matches!(
        verdict(&old, &served(1, 0), &policy(), ms(2_000)),
        Verdict::Pending(_)
    ));
}

#[test]
fn the_window_catches_a_build_that_goes_bad_after_a_good_start() {
    let old = served(100_000, 0);
    let mut p = Probation::new(old, policy());
    // 1000 good requests a second for 1.5 s.
    let mut ok = 0;
    let mut bad = 0;
    let mut t = 0;
    while t < 1_500 {
        t += 100;
        ok += 100;
        let v = p.report(served(ok, bad), ms(t));
        assert!(matches!(v, Verdict::Pending(_)), "{t}: {v:?}");
    }
    // Then one bad answer in five: within 0.2 s the last second is over the limit with
    // confidence, while the whole probation (40 of 1,700) is not yet.
    let mut verdict = None;
    while t < 2_000 {
        t += 100;
        ok += 80;
        bad += 20;
        let v = p.report(served(ok, bad), ms(t));
        if !matches!(v, Verdict::Pending(_)) {
            verdict = Some(v);
            break;
        }
    }
    let v = verdict.expect("a verdict before the end of the probation");
    let Verdict::Unhealthy { reason, .. } = v else {
        panic!("{v:?}")
    };
    assert!(reason.starts_with("in its last 1.0s"), "{reason}");
    assert_eq!(t, 1_700);
    // The same numbers without the window: no verdict yet.
    let whole = self::verdict(&served(100_000, 0), &served(ok, bad), &policy(), ms(t));
    assert!(matches!(whole, Verdict::Pending(_)), "{whole:?}");
}

#[test]
fn probation_without_reports_and_with_backwards_ones() {
    let mut p = Probation::new(served(1_000, 0), policy());
    assert!(matches!(p.tick(ms(1_000)), Verdict::Pending(_)));
    assert!(is_healthy(&p.tick(ms(2_000))));
    let _ = p.report(served(500, 0), ms(100));
    // Counts that go backwards are dropped, not believed.
    let v = p.report(served(10, 0), ms(2_000));
    assert_eq!(p.ignored(), 1);
    assert!(matches!(v, Verdict::Healthy { .. }), "{v:?}");
}

fn rep(ok: u64, bad: u64, conns: u64, failed: u64, counting: bool) -> Report {
    Report {
        counts: Counts {
            success: ok,
            server_error: bad,
            connections: conns,
            connections_failed: failed,
            ..Counts::default()
        },
        uptime: Duration::ZERO,
        counting,
        veto: None,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn more_bad_answers_never_make_a_build_healthier(
        old_ok in 0u64..1_000_000, old_bad in 0u64..100_000,
        ok in 0u64..100_000, bad in 0u64..10_000, more in 1u64..10_000, t in 0u64..20_000,
    ) {
        let old = served(old_ok, old_bad);
        let p = policy();
        let a = verdict(&old, &served(ok, bad), &p, ms(t));
        let b = verdict(&old, &served(ok, bad + more), &p, ms(t));
        if is_unhealthy(&a) {
            prop_assert!(is_unhealthy(&b), "{:?} then {:?}", a, b);
        }
    }

    #[test]
    fn timing_rules_hold_for_any_numbers(
        ok in 0u64..100_000, bad in 0u64..10_000, conns in 0u64..100_000, failed in 0u64..1_000,
        counting in any::<bool>(), t in 0u64..30_000,
        rate in 0u32..=100, times in 1u32..10, min in 1u64..10_000, prob in 0u64..5_000, extra in 0u64..20_000,
    ) {
        let p = HealthPolicy {
            enabled: true,
            probation: ms(prob),
            max_probation: ms(prob + extra),
            max_error_rate: f64::from(rate) / 100.0,
            max_error_ratio: f64::from(times),
            min_sample: min,
        };
        let old = served(50_000, 100);
        let new = rep(ok, bad, conns, failed, counting);
        let v = verdict(&old, &new, &p, ms(t));
        // Never committed before the probation is over.
        if t < prob {
            prop_assert!(!is_healthy(&v), "{:?}", v);
        }
        // Always decided once the longest probation is over.
        if t >= prob + extra {
            prop_assert!(!matches!(v, Verdict::Pending(_)), "{:?}", v);
        }
        // Unhealthy only on enough evidence above the limit: with 99.9% confidence, or as
        // observed over the longest probation.
        if let Verdict::Unhealthy { numbers, .. } = &v {
            let over = |r: &Rates| r.new_bad >= MIN_BAD && r.new_lower > r.limit;
            let observed = |r: &Rates| {
                t >= prob + extra && r.new_bad >= MIN_BAD && ratio(r.new_bad, r.new_total) > r.limit
            };
            let (r, c) = (numbers.requests, numbers.connections);
            prop_assert!(over(&r) || over(&c) || observed(&r) || observed(&c));
            prop_assert!(counting);
        }
        // Committed before the longest probation only when confidently within the limits;
        // never, when counting, over the limit as observed on enough bad answers.
        if let Verdict::Healthy { numbers, .. } = &v {
            if counting {
                let (r, c) = (numbers.requests, numbers.connections);
                if t < prob + extra {
                    prop_assert!(r.new_total == 0 || r.new_upper <= r.limit);
                    prop_assert!(c.new_total == 0 || c.new_upper <= c.limit);
                }
                prop_assert!(!(r.new_bad >= MIN_BAD && ratio(r.new_bad, r.new_total) > r.limit));
            }
        }
        // A limit is never below max_error_rate.
        if let Verdict::Healthy { numbers, .. } | Verdict::Unhealthy { numbers, .. } = &v {
            prop_assert!(numbers.requests.limit >= p.max_error_rate.min(1.0));
        }
    }

    #[test]
    fn wilson_bounds_bracket_the_observed_rate(bad in 0u64..1_000_000, total in 1u64..1_000_000) {
        let bad = bad.min(total);
        let p = bad as f64 / total as f64;
        let l = wilson_lower(bad, total, Z);
        let u = wilson_upper(bad, total, Z_HEALTHY);
        prop_assert!((0.0..=1.0).contains(&l) && (0.0..=1.0).contains(&u));
        prop_assert!(l <= p + 1e-12 && p <= u + 1e-12);
    }
}
