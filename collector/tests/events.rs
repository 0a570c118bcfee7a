//! New-block, unblock and shutdown events end to end, with a webhook receiver.

#[macro_use]
mod common;

use chrono::{TimeDelta, Utc};
use common::{measurement, spawn_on, test_config, webhook_receiver, Db};
use serde_json::Value;
use witness_collector::config::WebhookFormat;
use witness_collector::metrics;
use witness_core::model::{Method, Status};

const SITE: &str = "www.currenttime.tv";
const ASN: u32 = 9198;

async fn three_probes_blocked_then_accessible_make_one_event_and_resolve_it(db: Db) {
    let hook = webhook_receiver().await;
    let mut cfg = test_config();
    cfg.webhook.urls = vec![hook.url.clone()];
    let app = spawn_on(db, cfg).await;
    let mut tokens = Vec::new();
    for _ in 0..3 {
        tokens.push(app.register().await.1);
    }
    let t0 = Utc::now() - TimeDelta::hours(2);

    // Each probe uploads on its own, as in real life.
    for (i, t) in tokens.iter().enumerate() {
        let at = t0 + TimeDelta::minutes(i as i64);
        app.upload(
            t,
            &[measurement(
                SITE,
                ASN,
                Status::Blocked,
                Some(Method::Tls),
                at,
            )],
        )
        .await;
    }
    // An unrelated site on the same network stays quiet.
    app.upload(
        &tokens[0],
        &[measurement(
            "example.org",
            ASN,
            Status::Accessible,
            None,
            t0,
        )],
    )
    .await;

    let events = app.get_json("/api/v1/events").await;
    let list = events["events"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{events}");
    let e = &list[0];
    assert_eq!(e["kind"], "new_block");
    assert_eq!(e["domain"], SITE);
    assert_eq!(e["asn"], ASN);
    assert_eq!(e["country"], "KZ");
    assert_eq!(e["method"], "tls");
    assert_eq!(e["ended_at"], Value::Null);
    // The start is the first blocked measurement's own time, not the arrival time.
    let started: chrono::DateTime<Utc> = e["started_at"].as_str().unwrap().parse().unwrap();
    assert_eq!(started.timestamp_millis(), t0.timestamp_millis());
    assert!(e["evidence"]["probes"].as_u64().unwrap() >= 2);
    assert_eq!(e["evidence"]["method"], "tls");

    let bodies = hook.wait_for(1).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(
        hook.count(),
        1,
        "exactly one webhook call for the new block"
    );
    let alert = &bodies[0][0];
    assert_eq!(alert["labels"]["alertname"], "WitnessSiteBlocked");
    assert_eq!(alert["labels"]["domain"], SITE);
    assert_eq!(alert["labels"]["asn"], "9198");
    // Open: held open well past the next re-send (three resend intervals ahead), so
    // Alertmanager's resolve_timeout does not end it in between.
    let ends: chrono::DateTime<Utc> = alert["endsAt"].as_str().unwrap().parse().unwrap();
    let hold = ends - Utc::now();
    assert!(
        hold > TimeDelta::minutes(85) && hold <= TimeDelta::minutes(90),
        "endsAt {ends}"
    );

    // Later, two probes find it accessible again: the event is resolved.
    let t1 = t0 + TimeDelta::minutes(60);
    for (i, t) in tokens.iter().take(2).enumerate() {
        let at = t1 + TimeDelta::minutes(i as i64);
        app.upload(t, &[measurement(SITE, ASN, Status::Accessible, None, at)])
            .await;
    }
    let events = app.get_json("/api/v1/events").await;
    let list = events["events"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{events}");
    let ended: chrono::DateTime<Utc> = list[0]["ended_at"].as_str().unwrap().parse().unwrap();
    assert_eq!(ended.timestamp_millis(), t1.timestamp_millis());
    assert_eq!(list[0]["end_evidence"]["probes"], 2);

    let bodies = hook.wait_for(2).await;
    let resolved = &bodies[1][0];
    assert_eq!(resolved["labels"]["event_id"], alert["labels"]["event_id"]);
    assert!(resolved["endsAt"].is_string());

    let open = app.get_json("/api/v1/events?open=true").await;
    assert_eq!(open["events"].as_array().unwrap().len(), 0);

    let m = app.get_text("/metrics").await;
    assert!(
        m.contains(&format!(
            "{}{{kind=\"new_block\"}} 1",
            metrics::EVENTS_TOTAL
        )),
        "{m}"
    );
    assert!(
        m.contains(&format!("{}{{kind=\"unblock\"}} 1", metrics::EVENTS_TOTAL)),
        "{m}"
    );
    app.stop().await;
}

async fn offline_reports_make_a_shutdown_not_blocks(db: Db) {
    let hook = webhook_receiver().await;
    let mut cfg = test_config();
    cfg.webhook.urls = vec![hook.url.clone()];
    cfg.webhook.format = WebhookFormat::Generic;
    let app = spawn_on(db, cfg).await;
    let t0 = Utc::now() - TimeDelta::days(1);
    let sites = ["www.facebook.com", "www.instagram.com", "www.youtube.com"];
    let mut tokens = Vec::new();
    for _ in 0..3 {
        tokens.push(app.register().await.1);
    }
    // Back-filled after the shutdown, with the original times.
    for (i, t) in tokens.iter().enumerate() {
        let batch: Vec<_> = sites
            .iter()
            .map(|s| {
                measurement(
                    s,
                    ASN,
                    Status::Offline,
                    None,
                    t0 + TimeDelta::minutes(i as i64),
                )
            })
            .collect();
        app.upload(t, &batch).await;
    }
    let events = app.get_json("/api/v1/events").await;
    let list = events["events"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{events}");
    assert_eq!(list[0]["kind"], "shutdown");
    assert_eq!(list[0]["domain"], Value::Null);
    assert_eq!(list[0]["method"], Value::Null);
    assert_eq!(list[0]["ended_at"], Value::Null);
    let started: chrono::DateTime<Utc> = list[0]["started_at"].as_str().unwrap().parse().unwrap();
    assert_eq!(started.timestamp_millis(), t0.timestamp_millis());
    let blocks = app.get_json("/api/v1/events?kind=new_block").await;
    assert_eq!(blocks["events"].as_array().unwrap().len(), 0);

    let bodies = hook.wait_for(1).await;
    assert_eq!(bodies[0]["transition"], "shutdown");
    assert_eq!(bodies[0]["event"]["asn"], ASN);

    // The probes come back: the shutdown ends.
    let t1 = t0 + TimeDelta::hours(7);
    for (i, t) in tokens.iter().take(2).enumerate() {
        let at = t1 + TimeDelta::minutes(i as i64);
        app.upload(
            t,
            &[measurement(sites[0], ASN, Status::Accessible, None, at)],
        )
        .await;
    }
    let events = app.get_json("/api/v1/events?kind=shutdown").await;
    let ended: chrono::DateTime<Utc> = events["events"][0]["ended_at"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(ended.timestamp_millis(), t1.timestamp_millis());
    let bodies = hook.wait_for(2).await;
    assert_eq!(bodies[1]["transition"], "shutdown_end");
    app.stop().await;
}

async fn webhook_failures_are_retried_from_the_outbox(db: Db) {
    // Nothing listens on the hook at first: deliveries fail and are retried with backoff.
    let spare = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = spare.local_addr().unwrap();
    drop(spare);
    let mut cfg = test_config();
    cfg.webhook.urls = vec![format!("http://{addr}/hook")];
    cfg.webhook.max_attempts = 1000;
    let app = spawn_on(db, cfg).await;
    let (_, a) = app.register().await;
    let (_, b) = app.register().await;
    let t0 = Utc::now() - TimeDelta::hours(1);
    app.upload(
        &a,
        &[measurement(
            SITE,
            ASN,
            Status::Blocked,
            Some(Method::Dns),
            t0,
        )],
    )
    .await;
    app.upload(
        &b,
        &[measurement(
            SITE,
            ASN,
            Status::Blocked,
            Some(Method::Dns),
            t0,
        )],
    )
    .await;
    // Wait for at least one failure to be counted.
    let mut failed = false;
    for _ in 0..100 {
        let m = app.get_text("/metrics").await;
        if m.lines()
            .any(|l| l.starts_with(metrics::WEBHOOK_FAILURES_TOTAL) && !l.ends_with(" 0"))
        {
            failed = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(failed, "no webhook failure counted");
    // Now the receiver appears on that port and gets the notification.
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Value>::new()));
    let got2 = got.clone();
    let hook = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |axum::Json(v): axum::Json<Value>| {
            let got = got2.clone();
            async move {
                got.lock().unwrap().push(v);
                "ok"
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, hook).await });
    for _ in 0..200 {
        if !got.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let bodies = got.lock().unwrap().clone();
    assert_eq!(bodies.len(), 1, "{bodies:?}");
    assert_eq!(bodies[0][0]["labels"]["method"], "dns");
    app.stop().await;
}

async fn sweep_catches_up_on_measurements_stored_without_evaluation(db: Db) {
    let app = spawn_on(db, test_config()).await;
    let now = Utc::now();
    // As if the collector crashed between commit and evaluation.
    for i in 0..2 {
        let (probe_id, _) = app.register().await;
        let m = measurement(
            SITE,
            ASN,
            Status::Blocked,
            Some(Method::Http),
            now - TimeDelta::minutes(30 - i),
        );
        let rec = witness_collector::store::MeasurementRecord {
            id: m.id,
            received_at: now,
            started_at: m.started_at,
            domain: m.domain.clone(),
            url: m.url.clone(),
            category: m.category_code.clone(),
            asn: m.probe.asn,
            country: m.probe.country.clone(),
            status: m.verdict.status,
            method: m.verdict.method,
            reason: m.verdict.reason.clone(),
            software_version: m.software.version.clone(),
            body: serde_json::to_string(&m).unwrap(),
            censor_hop: None,
            censor_asn: None,
        };
        app.state
            .store
            .insert_measurements(&probe_id, now, &[rec])
            .await
            .unwrap();
    }
    assert_eq!(
        app.get_json("/api/v1/events").await["events"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    assert_eq!(app.state.evaluator.sweep(Utc::now()).await.unwrap(), 1);
    assert_eq!(app.state.evaluator.sweep(Utc::now()).await.unwrap(), 0);
    let events = app.get_json("/api/v1/events").await;
    assert_eq!(events["events"][0]["method"], "http");
    app.stop().await;
}

/// The single-probe rule when one upload touches several blocked sites: it counts the probes
/// that measured the site, not the network's (issue 20: one throw-away record per network must
/// not switch it off). A network with one probe gets its blocks from that probe's three runs;
/// on a network with a second probe, the site that probe also measured (accessible) gets no
/// event, since one probe of two is not enough, and the site only the first one measured does.
async fn single_probe_rule_with_many_sites_per_upload(db: Db) {
    let app = spawn_on(db, test_config()).await;
    let (solo, other, witness) = (
        app.register().await.1,
        app.register().await.1,
        app.register().await.1,
    );
    let (one, two): (u32, u32) = (64_501, 64_502);
    let t0 = Utc::now() - TimeDelta::hours(3);
    // The second network's other probe, before the runs: inside every run's window. Its
    // record of another site does not count against b.test; its a.test does.
    app.upload(
        &witness,
        &["unrelated.test", "a.test"].map(|d| {
            measurement(
                d,
                two,
                Status::Accessible,
                None,
                t0 - TimeDelta::minutes(30),
            )
        }),
    )
    .await;
    for run in 0..3 {
        let at = t0 + TimeDelta::hours(run);
        for (token, asn) in [(&solo, one), (&other, two)] {
            let batch: Vec<_> = ["a.test", "b.test"]
                .iter()
                .map(|d| measurement(d, asn, Status::Blocked, Some(Method::Tcp), at))
                .collect();
            app.upload(token, &batch).await;
        }
    }
    let events = app.get_json("/api/v1/events").await;
    let mut got: Vec<(String, u32, String)> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["domain"].as_str().unwrap_or_default().to_string(),
                e["asn"].as_u64().unwrap_or_default() as u32,
                e["evidence"]["rule"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            ("a.test".to_string(), one, "single_probe".to_string()),
            ("b.test".to_string(), one, "single_probe".to_string()),
            ("b.test".to_string(), two, "single_probe".to_string()),
        ],
        "{events:#}"
    );
    app.stop().await;
}

both_stores!(
    three_probes_blocked_then_accessible_make_one_event_and_resolve_it,
    offline_reports_make_a_shutdown_not_blocks,
    webhook_failures_are_retried_from_the_outbox,
    sweep_catches_up_on_measurements_stored_without_evaluation,
    single_probe_rule_with_many_sites_per_upload,
);
