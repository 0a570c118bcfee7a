//! The operator's ASN table: the control names the caller's network (`your_asn`),
//! `POST /api/v1/asn` names the routers a localisation met (authenticated, bounded), and
//! ingest names the censor's network from the table rather than from the probe's claim.

#[macro_use]
mod common;

use std::path::PathBuf;

use chrono::Utc;
use common::{lab_server, located, measurement, spawn, test_config};
use serde_json::{json, Value};
use witness_core::model::{ControlReply, Method, Status};

/// Loopback in a made-up network (the tests' probes and lab servers live there), and a
/// Kazakhtelecom range for routers.
const TABLE: &str = "127.0.0.0\t127.255.255.255\t64500\tKZ\tLOOPBACK-NET\n\
                     95.56.0.0\t95.59.255.255\t9198\tKZ\tKAZTELECOM-AS\n";

fn table(dir: &tempfile::TempDir) -> PathBuf {
    let p = dir.path().join("ip2asn-combined.tsv");
    std::fs::write(&p, TABLE).unwrap();
    p
}

#[tokio::test]
async fn the_control_names_the_callers_network() {
    let dir = tempfile::tempdir().unwrap();
    let lab = lab_server().await;
    let mut cfg = test_config();
    cfg.control.allow_private = true;
    cfg.control.allow_anonymous = true;
    cfg.asn.database = Some(table(&dir));
    let app = spawn(cfg).await;
    let r = app
        .client
        .post(app.url("/api/v1/control"))
        .json(&json!({ "url": format!("http://{lab}/") }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let reply: ControlReply = r.json().await.unwrap();
    assert_eq!(reply.meta.your_asn, Some(64500));
    assert_eq!(reply.meta.your_country.as_deref(), Some("KZ"));
    app.stop().await;
}

#[tokio::test]
async fn router_networks_are_answered_to_probes_only_and_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config();
    cfg.asn.database = Some(table(&dir));
    let app = spawn(cfg).await;
    let post = |token: Option<&str>, body: Value| {
        let mut r = app.client.post(app.url("/api/v1/asn")).json(&body);
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send()
    };
    let ask = json!({"addrs": ["95.56.3.1", "8.8.8.8", "127.0.0.1", "::ffff:95.57.0.1"]});
    assert_eq!(post(None, ask.clone()).await.unwrap().status(), 401);
    let (_, token) = app.register().await;
    let r = post(Some(&token), ask).await.unwrap();
    assert_eq!(r.status(), 200);
    let reply: Value = r.json().await.unwrap();
    assert_eq!(reply, json!({"asns": [9198, null, 64500, 9198]}));
    // Bounds: 64 addresses, a 4 KiB body, the exact shape.
    let many: Vec<String> = (0..65).map(|i| format!("95.56.0.{i}")).collect();
    let r = post(Some(&token), json!({ "addrs": many })).await.unwrap();
    assert_eq!(r.status(), 422);
    let msg: Value = r.json().await.unwrap();
    assert!(
        msg["error"].as_str().unwrap().contains("at most 64"),
        "{msg}"
    );
    let huge: Vec<String> = (0..400).map(|i| format!("95.56.1.{}", i % 250)).collect();
    let r = post(Some(&token), json!({ "addrs": huge })).await.unwrap();
    assert_eq!(r.status(), 413);
    let r = post(Some(&token), json!({"addresses": []})).await.unwrap();
    assert_eq!(r.status(), 400);
    let r = post(Some(&token), json!({"addrs": ["95.56.0.x"]}))
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    app.stop().await;

    // Without a table every network is unknown, and the request still succeeds.
    let app = spawn(test_config()).await;
    let (_, token) = app.register().await;
    let r = app
        .client
        .post(app.url("/api/v1/asn"))
        .bearer_auth(&token)
        .json(&json!({"addrs": ["95.56.3.1"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"asns": [null]}));
    app.stop().await;
}

#[tokio::test]
async fn ingest_takes_the_censors_network_from_the_table_over_the_probes_claim() {
    for (with_table, want) in [(false, 1), (true, 9198)] {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = test_config();
        cfg.aggregation.min_probes = 1;
        cfg.aggregation.min_measurements = 1;
        if with_table {
            cfg.asn.database = Some(table(&dir));
        }
        let app = spawn(cfg).await;
        let (_, token) = app.register().await;
        // Routers 95.56.2.1 and 95.56.3.1 before a censor at hop 4, claimed to be in AS1.
        let m = located(
            measurement(
                "blocked.example",
                9198,
                Status::Blocked,
                Some(Method::Tcp),
                Utc::now(),
            ),
            4,
            Some(1),
        );
        let up = app.upload(&token, &[m]).await;
        assert_eq!(up["accepted"].as_array().unwrap().len(), 1, "{up}");
        let status = app.get_json("/api/v1/status?asn=9198").await;
        let site = &status["sites"][0];
        assert_eq!(site["domain"], "blocked.example", "{status}");
        assert_eq!(
            (&site["censor_hop"], &site["censor_asn"]),
            (&json!(4), &json!(want)),
            "table {with_table}: {status}"
        );
        app.stop().await;
    }
}

#[tokio::test]
async fn a_bad_table_stops_the_start_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.tsv");
    std::fs::write(
        &p,
        "1.0.0.0\t1.0.0.255\t13335\tUS\tX\n1.0.1.0\tnot-an-ip\t1\tUS\tY\n",
    )
    .unwrap();
    let mut cfg = test_config();
    cfg.asn.database = Some(p);
    let (url, _guard) = common::fresh_store(common::Db::Sqlite);
    cfg.store.url = url;
    let store = witness_collector::store::open(&cfg.store).await.unwrap();
    let e = witness_collector::AppState::new(cfg, store)
        .err()
        .expect("refused");
    let e = format!("{e:#}");
    assert!(
        e.contains("line 2") && e.contains("bad last address"),
        "{e}"
    );
}
