//! The state gauges of `/metrics` are kept in memory (`readmodel::live`): they must say what
//! the store's read model says, after ingest (out-of-order, duplicates, old verdicts, located
//! blocks), after event transitions, and on two replicas sharing one store once the resync
//! interval has passed.

#[macro_use]
mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use common::{
    fresh_store, located, measurement, spawn_at, spawn_on, test_config, Db, StoreGuard, TestApp,
};
use witness_collector::config::HumanDuration;
use witness_collector::metrics;
use witness_collector::readmodel::live::GaugeInputs;
use witness_collector::AppState;
use witness_core::model::{Measurement, Method, Status};

const NETWORKS: [u32; 3] = [9198, 21299, 41798];
const METHODS: [Method; 6] = [
    Method::Dns,
    Method::Tcp,
    Method::Tls,
    Method::Mitm,
    Method::Http,
    Method::Throttle,
];
/// The network that goes offline.
const DARK: u32 = 64_512;

/// The state gauges' lines of a scrape, sorted.
fn state_lines(text: &str) -> BTreeSet<String> {
    let names = [
        metrics::SITE_BLOCKED_RATIO,
        metrics::SITE_CENSOR_HOP,
        metrics::PROBES_ACTIVE,
        metrics::NETWORK_OFFLINE,
    ];
    text.lines()
        .filter(|l| {
            names
                .iter()
                .any(|n| l.strip_prefix(n).is_some_and(|r| r.starts_with('{')))
        })
        .map(str::to_string)
        .collect()
}

/// The in-memory inputs equal the store's, and so do the rendered gauges; returns the lines.
async fn assert_memory_is_the_store(state: &AppState, what: &str) -> BTreeSet<String> {
    let now = Utc::now();
    let reference = GaugeInputs::from_store(state.store.as_ref(), &state.params, now)
        .await
        .expect("store read model");
    let memory = state.metrics.live().inputs(&state.params, now);
    for (m, r) in memory.statuses.iter().zip(&reference.statuses) {
        assert_eq!(m, r, "{what}: memory vs store");
    }
    assert_eq!(memory, reference, "{what}: memory vs store");
    let from_store = state_lines(
        &state
            .metrics
            .render_inputs(&reference)
            .await
            .expect("render"),
    );
    let scraped = state_lines(
        &state
            .metrics
            .render(state.store.as_ref(), &state.params, now)
            .await
            .expect("render"),
    );
    assert_eq!(scraped, from_store, "{what}: rendered gauges");
    scraped
}

/// A deterministic mix of verdicts: probe `p`, site `s`, round `r`.
fn verdict(p: usize, s: usize, r: usize, at: DateTime<Utc>) -> Measurement {
    let asn = NETWORKS[p % NETWORKS.len()];
    let domain = format!("site{s:02}.example.kz");
    let h = (p * 31 + s * 17 + r * 7) % 10;
    let mut m = match h {
        0..=3 => measurement(
            &domain,
            asn,
            Status::Blocked,
            Some(METHODS[(s + r + p) % METHODS.len()]),
            at,
        ),
        4 => measurement(&domain, asn, Status::Down, None, at),
        5 => measurement(&domain, asn, Status::Inconclusive, None, at),
        6 if s % 5 == 0 => measurement(&domain, asn, Status::Offline, None, at),
        _ => measurement(&domain, asn, Status::Accessible, None, at),
    };
    // Some sites are located, at one of two hops (the agreed place depends on the run).
    if m.verdict.status == Status::Blocked && s % 4 == 0 {
        m = located(m, 3 + u8::from(r % 3 == 0), Some(asn));
    }
    m.category_code = Some(["NEWS", "POLR", "HUMR"][s % 3].to_string());
    if s % 7 == 0 {
        m.category_code = None;
    }
    m
}

/// `probes` × 40 sites × `rounds`, batched by probe as runs are; round 0 is older than the
/// window; the rounds go up to `now`; the last round is uploaded before the others (a spool
/// arriving late), and one batch twice.
async fn ingest(app: &TestApp, tokens: &[String], rounds: usize) -> usize {
    let now = Utc::now();
    let mut n = 0;
    let order: Vec<usize> = std::iter::once(rounds - 1).chain(0..rounds - 1).collect();
    for r in order {
        for (p, t) in tokens.iter().enumerate() {
            let at = if r == 0 {
                now - TimeDelta::hours(7)
            } else {
                now - TimeDelta::minutes(((rounds - r) * 20) as i64)
            };
            let batch: Vec<_> = (0..40)
                .map(|s| verdict(p, s, r, at + TimeDelta::seconds(s as i64)))
                .collect();
            n += batch.len();
            app.upload(t, &batch).await;
            if r == 1 && p == 0 {
                app.upload(t, &batch).await;
            }
        }
    }
    n
}

/// Offline reports from three fresh probes on `DARK` (back-filled, a day ago): a shutdown.
async fn dark_network(app: &TestApp) -> Vec<String> {
    let t0 = Utc::now() - TimeDelta::days(1);
    let mut tokens = Vec::new();
    for i in 0..3 {
        let (_, t) = app.register().await;
        let batch: Vec<_> = ["a.example.kz", "b.example.kz", "c.example.kz"]
            .iter()
            .map(|s| measurement(s, DARK, Status::Offline, None, t0 + TimeDelta::minutes(i)))
            .collect();
        app.upload(&t, &batch).await;
        tokens.push(t);
    }
    tokens
}

/// The harness's limits, with room for the dozen probes these tests register from 127.0.0.1.
fn config() -> witness_collector::Config {
    let mut c = test_config();
    c.server.register_per_prefix_per_hour = 100;
    c.server.register_burst = 100;
    c
}

async fn memory_is_the_store_after_ingest_and_transitions(db: Db) {
    let app = spawn_on(db, config()).await;
    let mut tokens = Vec::new();
    for _ in 0..9 {
        tokens.push(app.register().await.1);
    }
    let n = ingest(&app, &tokens, 6).await;
    assert!(n >= 2000, "{n}");
    let lines = assert_memory_is_the_store(&app.state, "after ingest").await;
    let count = |name: &str| lines.iter().filter(|l| l.starts_with(name)).count();
    assert!(count(metrics::SITE_BLOCKED_RATIO) > 100, "{lines:#?}");
    assert!(count(metrics::SITE_CENSOR_HOP) > 0, "{lines:#?}");
    assert_eq!(count(metrics::PROBES_ACTIVE), NETWORKS.len(), "{lines:#?}");

    // A shutdown opens: the gauge says so at once.
    let dark = dark_network(&app).await;
    let events = app.get_json("/api/v1/events?kind=shutdown").await;
    assert_eq!(
        events["events"].as_array().map(Vec::len),
        Some(1),
        "{events}"
    );
    let lines = assert_memory_is_the_store(&app.state, "shutdown open").await;
    let offline = format!(
        "{}{{asn=\"{DARK}\",country=\"KZ\"}} 1",
        metrics::NETWORK_OFFLINE
    );
    assert!(lines.contains(&offline), "{lines:#?}");

    // Two of its probes come back: it ends.
    let t1 = Utc::now() - TimeDelta::days(1) + TimeDelta::hours(7);
    for (i, t) in dark.iter().take(2).enumerate() {
        let at = t1 + TimeDelta::minutes(i as i64);
        app.upload(
            t,
            &[measurement(
                "a.example.kz",
                DARK,
                Status::Accessible,
                None,
                at,
            )],
        )
        .await;
    }
    let events = app.get_json("/api/v1/events?kind=shutdown").await;
    assert!(!events["events"][0]["ended_at"].is_null(), "{events}");
    let lines = assert_memory_is_the_store(&app.state, "shutdown closed").await;
    assert!(
        lines.contains(&format!(
            "{}{{asn=\"{DARK}\",country=\"KZ\"}} 0",
            metrics::NETWORK_OFFLINE
        )),
        "{lines:#?}"
    );

    // A new block on a site every probe saw accessible, and its end.
    for t in &tokens[..3] {
        app.upload(
            t,
            &[measurement(
                "site01.example.kz",
                NETWORKS[0],
                Status::Blocked,
                Some(Method::Tls),
                Utc::now(),
            )],
        )
        .await;
    }
    let lines = assert_memory_is_the_store(&app.state, "new block").await;
    // Concurrent scrapes share renders, never an older one.
    let scrapes: Vec<_> = (0..8)
        .map(|_| tokio::spawn(scrape(app.base.clone())))
        .collect();
    for s in scrapes {
        assert_eq!(s.await.expect("scrape task"), lines);
    }
    app.stop().await;
}

async fn scrape(base: impl std::fmt::Display) -> BTreeSet<String> {
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .expect("scrape")
        .text()
        .await
        .expect("text");
    state_lines(&text)
}

/// Polls until both replicas' in-memory models say what the store says (within 10 s: the
/// interval is 200 ms), then checks that their scrapes agree.
async fn converged(a: &TestApp, b: &TestApp) -> BTreeSet<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    for app in [a, b] {
        loop {
            let now = Utc::now();
            let reference =
                GaugeInputs::from_store(app.state.store.as_ref(), &app.state.params, now)
                    .await
                    .expect("store read model");
            if app.state.metrics.live().inputs(&app.state.params, now) == reference {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{}: memory still differs from the store after 10 s",
                app.base
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let (x, y) = (scrape(&a.base).await, scrape(&b.base).await);
    assert_eq!(x, y, "replicas disagree");
    x
}

async fn replicas_sharing_a_store_converge(db: Db) {
    let (url, guard) = fresh_store(db);
    let mut config = config();
    config.metrics.resync_interval = HumanDuration(Duration::from_millis(200));
    let app_a = spawn_at(&url, guard, config.clone()).await;
    let app_b = spawn_at(&url, StoreGuard::Shared, config).await;
    let (a, b) = (app_a.base.clone(), app_b.base.clone());
    // Both scraped once (and so loaded) while the store is empty.
    assert!(scrape(&a).await.is_empty());
    assert!(scrape(&b).await.is_empty());
    let mut tokens = Vec::new();
    for _ in 0..6 {
        tokens.push(app_a.register().await.1);
    }
    // Half the fleet uploads to each replica.
    ingest(&app_a, &tokens[..3], 3).await;
    ingest(&app_b, &tokens[3..], 3).await;
    let lines = converged(&app_a, &app_b).await;
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(metrics::SITE_BLOCKED_RATIO)),
        "{lines:#?}"
    );
    assert_memory_is_the_store(&app_a.state, "replica a").await;
    assert_memory_is_the_store(&app_b.state, "replica b").await;
    // A shutdown decided on b shows on a too.
    dark_network(&app_b).await;
    let lines = converged(&app_a, &app_b).await;
    let offline = format!(
        "{}{{asn=\"{DARK}\",country=\"KZ\"}} 1",
        metrics::NETWORK_OFFLINE
    );
    assert!(lines.contains(&offline), "{lines:#?}");
    app_b.stop().await;
    app_a.stop().await;
}

both_stores!(
    memory_is_the_store_after_ingest_and_transitions,
    replicas_sharing_a_store_converge,
);
