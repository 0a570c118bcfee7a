//! `/metrics`: names through the shared constants, bounded labels, stale series vanish, and
//! `promtool check metrics` when promtool is installed.

#[macro_use]
mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use chrono::{TimeDelta, Utc};
use common::{located, measurement, spawn_on, test_config, Db};
use witness_collector::{metrics, store, AppState};
use witness_core::model::{Method, Status};

async fn populated(db: Db) -> common::TestApp {
    let app = spawn_on(db, test_config()).await;
    let (_, a) = app.register().await;
    let (_, b) = app.register().await;
    let now = Utc::now();
    for t in [&a, &b] {
        app.upload(
            t,
            &[
                measurement(
                    "www.azattyq.org",
                    9198,
                    Status::Blocked,
                    Some(Method::Throttle),
                    now - TimeDelta::hours(1),
                ),
                measurement(
                    "old.example.org",
                    9198,
                    Status::Blocked,
                    Some(Method::Tls),
                    now - TimeDelta::hours(7),
                ),
                measurement(
                    "example.org",
                    41798,
                    Status::Accessible,
                    None,
                    now - TimeDelta::hours(1),
                ),
                located(
                    measurement(
                        "rferl.example",
                        9198,
                        Status::Blocked,
                        Some(Method::Tcp),
                        now - TimeDelta::hours(1),
                    ),
                    4,
                    Some(9198),
                ),
            ],
        )
        .await;
    }
    let r = app
        .upload_values(&a, vec![serde_json::json!({"not": "a measurement"})])
        .await;
    assert_eq!(r.status(), 200);
    app
}

async fn every_metric_is_exposed_with_bounded_labels(db: Db) {
    let app = populated(db).await;
    let text = app.get_text("/metrics").await;
    for name in metrics::ALL {
        assert!(
            text.contains(&format!("# TYPE {name} ")),
            "{name} missing:\n{text}"
        );
    }
    // The blocked ratio of a site seen within the window, and not of one seen 7 h ago.
    let ratio = format!(
        "{}{{asn=\"9198\",category=\"NEWS\",country=\"KZ\",domain=\"www.azattyq.org\",method=\"throttle\"}} 1",
        metrics::SITE_BLOCKED_RATIO
    );
    assert!(text.contains(&ratio), "{text}");
    assert!(!text.contains("old.example.org"), "stale series:\n{text}");
    // Where the censor sits: only where the located probes agree (not for the throttled site,
    // which no probe located).
    let hop = format!(
        "{}{{asn=\"9198\",domain=\"rferl.example\",method=\"tcp\"}} 4",
        metrics::SITE_CENSOR_HOP
    );
    assert!(text.contains(&hop), "{text}");
    assert_eq!(
        text.lines()
            .filter(|l| l.starts_with(metrics::SITE_CENSOR_HOP))
            .count(),
        1,
        "{text}"
    );
    assert!(text.contains(&format!(
        "{}{{asn=\"9198\",country=\"KZ\"}} 2",
        metrics::PROBES_ACTIVE
    )));
    assert!(text.contains(&format!(
        "{}{{asn=\"41798\",country=\"KZ\"}} 0",
        metrics::NETWORK_OFFLINE
    )));
    assert!(text.contains(&format!(
        "{}{{reason=\"malformed\"}} 1",
        metrics::RECORDS_REJECTED_TOTAL
    )));
    assert!(text.contains(&format!(
        "{}{{asn=\"9198\",country=\"KZ\",method=\"throttle\",status=\"blocked\"}} 2",
        metrics::MEASUREMENTS_RECEIVED_TOTAL
    )));
    // The version, and the process metrics (Linux) with live values.
    assert!(
        text.contains(&format!(
            "{}{{version=\"{}\"}} 1",
            metrics::BUILD_INFO,
            env!("CARGO_PKG_VERSION")
        )),
        "{text}"
    );
    for name in metrics::PROCESS {
        assert!(
            text.contains(&format!("# TYPE {name} ")),
            "{name} missing:\n{text}"
        );
    }
    let value = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no sample of {name}"))
    };
    assert!(value(metrics::PROCESS_RESIDENT_MEMORY_BYTES) > 1_000_000.0);
    assert!(value(metrics::PROCESS_OPEN_FDS) >= 3.0);
    assert!(value(metrics::PROCESS_START_TIME_SECONDS) > 1.7e9);
    // Never a probe id, URL path or address.
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        for forbidden in ["probe_id", "127.0.0.1", "https://", "url="] {
            assert!(!line.contains(forbidden), "{line}");
        }
    }
    app.stop().await;
}

async fn promtool_accepts_the_output(db: Db) {
    let app = populated(db).await;
    let text = app.get_text("/metrics").await;
    app.stop().await;
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            eprintln!(
                "SKIPPED promtool_accepts_the_output: promtool not on PATH ({e}); CI installs it"
            );
            return;
        }
    };
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("promtool runs");
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn separate_metrics_listener(db: Db) {
    let (url, _guard) = common::fresh_store(db);
    let mut cfg = test_config();
    cfg.store.url = url;
    let st = store::open(&cfg.store).await.unwrap();
    let state = AppState::new(cfg, st).unwrap();
    let api = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mon = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (api_addr, mon_addr) = (api.local_addr().unwrap(), mon.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(witness_collector::serve_with(
        api,
        Some(mon),
        state,
        async move {
            let _ = rx.await;
        },
    ));
    let c = reqwest::Client::new();
    let r = c
        .get(format!("http://{api_addr}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = c
        .get(format!("http://{mon_addr}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains(metrics::EVENTS_TOTAL));
    let r = c
        .get(format!("http://{api_addr}/api/v1/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let _ = tx.send(());
    server.await.unwrap().unwrap();
}

both_stores!(
    every_metric_is_exposed_with_bounded_labels,
    promtool_accepts_the_output,
    separate_metrics_listener,
);
