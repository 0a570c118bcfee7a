//! The HTTP API end to end: registration, uploads, errors, read API, control.

#[macro_use]
mod common;

use std::io::Write;

use chrono::{TimeDelta, Timelike, Utc};
use common::{measurement, spawn_on, test_config, Db};
use serde_json::{json, Value};
use witness_collector::config::Registration;
use witness_collector::tokens;
use witness_core::model::{Method, Status};

async fn health_says_ok_with_version(db: Db) {
    let app = spawn_on(db, test_config()).await;
    let v = app.get_json("/api/v1/health").await;
    assert_eq!(v["status"], "ok");
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    let r = app
        .client
        .get(app.url("/api/v1/nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    app.stop().await;
}

async fn registration_by_invite(db: Db) {
    let mut cfg = test_config();
    cfg.server.registration = Registration::Invite;
    let app = spawn_on(db, cfg).await;
    let register = |body: Value| {
        app.client
            .post(app.url("/api/v1/register"))
            .json(&body)
            .send()
    };
    assert_eq!(register(json!({})).await.unwrap().status(), 403);
    let invite = tokens::create(app.state.store.as_ref(), 1, None, Some("lab".into()))
        .await
        .unwrap();
    let r = register(json!({ "invite": invite.token })).await.unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["token"].as_str().unwrap().len(), 64);
    // Used up.
    let r = register(json!({ "invite": invite.token })).await.unwrap();
    assert_eq!(r.status(), 403);
    // Unknown fields are refused with serde's message.
    let r = register(json!({ "invitation": "x" })).await.unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("unknown field"));
    app.stop().await;
}

async fn open_registration_is_rate_limited(db: Db) {
    let mut cfg = test_config();
    cfg.server.register_burst = 2;
    cfg.server.register_per_hour = 1;
    let app = spawn_on(db, cfg).await;
    app.register().await;
    app.register().await;
    let r = app
        .client
        .post(app.url("/api/v1/register"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    app.stop().await;
}

async fn batch_with_good_malformed_duplicate_and_future_records(db: Db) {
    let app = spawn_on(db, test_config()).await;
    let (_, token) = app.register().await;
    let now = Utc::now();
    let earlier = measurement("example.org", 9198, Status::Accessible, None, now);
    let first = app.upload(&token, std::slice::from_ref(&earlier)).await;
    assert_eq!(first["accepted"].as_array().unwrap().len(), 1);

    let good = measurement(
        "rus.azattyq.org",
        9198,
        Status::Blocked,
        Some(Method::Tls),
        now - TimeDelta::minutes(3),
    );
    let future = measurement(
        "example.net",
        9198,
        Status::Accessible,
        None,
        now + TimeDelta::hours(2),
    );
    let mut wrong_version = measurement("example.com", 9198, Status::Accessible, None, now);
    wrong_version.schema_version = 999;
    let batch = vec![
        serde_json::to_value(&good).unwrap(),
        json!({ "id": "not-even-close", "url": 5 }),
        serde_json::to_value(&earlier).unwrap(),
        serde_json::to_value(&future).unwrap(),
        serde_json::to_value(&wrong_version).unwrap(),
    ];
    let r = app.upload_values(&token, batch.clone()).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["accepted"], json!([good.id]));
    assert_eq!(v["duplicates"], json!([earlier.id]));
    let rejected = v["rejected"].as_array().unwrap();
    assert_eq!(rejected.len(), 3, "{v}");
    assert_eq!(rejected[0]["index"], 1);
    assert_eq!(rejected[0]["id"], "not-even-close");
    assert!(rejected[0]["reason"]
        .as_str()
        .unwrap()
        .starts_with("malformed: "));
    assert_eq!(rejected[1]["index"], 3);
    assert_eq!(rejected[1]["id"], json!(future.id));
    assert!(rejected[1]["reason"]
        .as_str()
        .unwrap()
        .starts_with("future: "));
    assert!(rejected[2]["reason"]
        .as_str()
        .unwrap()
        .starts_with("schema_version: "));

    // A retried batch never duplicates.
    let r = app.upload_values(&token, batch).await;
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["accepted"], json!([]));
    assert_eq!(v["duplicates"], json!([good.id, earlier.id]));
    let all = app.get_json("/api/v1/measurements?limit=100").await;
    assert_eq!(all["measurements"].as_array().unwrap().len(), 2);
    app.stop().await;
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

async fn gzip_upload_and_zip_bomb(db: Db) {
    let mut cfg = test_config();
    cfg.server.max_body_bytes = 64 * 1024;
    let app = spawn_on(db, cfg).await;
    let (_, token) = app.register().await;
    let m = measurement("example.org", 9198, Status::Accessible, None, Utc::now());
    let body = serde_json::to_vec(&json!({ "measurements": [m] })).unwrap();
    let send = |body: Vec<u8>| {
        app.client
            .post(app.url("/api/v1/measurements"))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .header("content-encoding", "gzip")
            .body(body)
            .send()
    };
    let r = send(gzip(&body)).await.unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["accepted"], json!([m.id]));

    // 10 MB of spaces compresses to a few KB: refused once past the cap.
    let mut bomb = b"{\"measurements\": [".to_vec();
    bomb.extend(std::iter::repeat_n(b' ', 10 * 1024 * 1024));
    bomb.extend(b"]}");
    let compressed = gzip(&bomb);
    assert!(compressed.len() < 64 * 1024);
    let r = send(compressed).await.unwrap();
    assert_eq!(r.status(), 413);

    let r = send(b"not gzip".to_vec()).await.unwrap();
    assert_eq!(r.status(), 400);
    app.stop().await;
}

async fn client_mistakes_get_clear_4xx(db: Db) {
    let mut cfg = test_config();
    cfg.server.max_body_bytes = 4096;
    cfg.ingest.max_batch = 2;
    let app = spawn_on(db, cfg).await;
    let (probe_id, token) = app.register().await;
    let post = |token: Option<&str>, ct: &str, body: Vec<u8>| {
        let mut r = app
            .client
            .post(app.url("/api/v1/measurements"))
            .header("content-type", ct)
            .body(body);
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send()
    };
    let ok_body = br#"{"measurements": []}"#.to_vec();
    let r = post(None, "application/json", ok_body.clone())
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    let r = post(Some("bogus"), "application/json", ok_body.clone())
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = post(Some(&token), "text/plain", ok_body.clone())
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    let r = post(
        Some(&token),
        "application/json",
        b"{\"measurements\": [".to_vec(),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 400);
    let msg: Value = r.json().await.unwrap();
    assert!(msg["error"].as_str().unwrap().contains("EOF"), "{msg}");
    let r = post(
        Some(&token),
        "application/json",
        b"{\"records\": []}".to_vec(),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 400);
    let r = post(Some(&token), "application/json", vec![b' '; 8192])
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let r = post(
        Some(&token),
        "application/json",
        br#"{"measurements": [1, 2, 3]}"#.to_vec(),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 413);
    let r = post(
        Some(&token),
        "application/json; charset=utf-8",
        ok_body.clone(),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);

    // Revocation takes effect at once.
    assert!(tokens::revoke(app.state.store.as_ref(), &probe_id)
        .await
        .unwrap());
    let r = post(Some(&token), "application/json", ok_body)
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    app.stop().await;
}

async fn uploads_are_rate_limited_per_probe(db: Db) {
    let mut cfg = test_config();
    cfg.ingest.upload_burst = 2;
    cfg.ingest.uploads_per_minute = 1;
    let app = spawn_on(db, cfg).await;
    let (_, a) = app.register().await;
    let (_, b) = app.register().await;
    app.upload(&a, &[]).await;
    app.upload(&a, &[]).await;
    let r = app.upload_values(&a, vec![]).await;
    assert_eq!(r.status(), 429);
    app.upload(&b, &[]).await;
    app.stop().await;
}

async fn read_api_json_and_csv(db: Db) {
    let app = spawn_on(db, test_config()).await;
    let (_, t1) = app.register().await;
    let (_, t2) = app.register().await;
    // Both uploads in one hour of the history, whatever the time of day.
    let mut base = Utc::now() - TimeDelta::minutes(10);
    if base.minute() >= 58 {
        base -= TimeDelta::minutes(3);
    }
    for (i, t) in [&t1, &t2].into_iter().enumerate() {
        let at = base + TimeDelta::minutes(i as i64);
        app.upload(
            t,
            &[
                measurement(
                    "www.azattyq.org",
                    9198,
                    Status::Blocked,
                    Some(Method::Tls),
                    at,
                ),
                measurement("example.org", 9198, Status::Accessible, None, at),
                measurement("example.org", 29355, Status::Accessible, None, at),
            ],
        )
        .await;
    }
    let status = app.get_json("/api/v1/status?asn=9198").await;
    let sites = status["sites"].as_array().unwrap();
    assert_eq!(sites.len(), 2, "{status}");
    let az = sites
        .iter()
        .find(|s| s["domain"] == "www.azattyq.org")
        .unwrap();
    assert_eq!(az["status"], "blocked");
    assert_eq!(az["method"], "tls");
    assert_eq!(az["blocked_share"], 1.0);
    assert_eq!(az["probes"], 2);
    assert_eq!(az["country"], "KZ");

    let csv = app.get_text("/api/v1/status?format=csv&country=KZ").await;
    let mut lines = csv.lines();
    assert!(lines
        .next()
        .unwrap()
        .starts_with("domain,asn,country,category,status,method"));
    assert_eq!(lines.count(), 3, "{csv}");

    let r = app
        .client
        .get(app.url("/api/v1/measurements?domain=example.org"))
        .header("accept", "text/csv")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/csv"));
    assert_eq!(r.text().await.unwrap().lines().count(), 5);

    let raw = app.get_json("/api/v1/measurements?asn=29355&limit=1").await;
    let ms = raw["measurements"].as_array().unwrap();
    assert_eq!(ms.len(), 1);
    assert_eq!(ms[0]["probe"]["asn"], 29355);
    assert!(ms[0]["verdict"]["status"] == "accessible");

    let hist = app.get_json("/api/v1/sites/WWW.AZATTYQ.ORG/history").await;
    let rows = hist["history"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{hist}");
    assert_eq!(rows[0]["measurements"], 2);
    assert_eq!(rows[0]["probes"], 2);
    assert_eq!(rows[0]["method"], "tls");

    let probes = app.get_json("/api/v1/probes").await;
    let nets = probes["networks"].as_array().unwrap();
    assert_eq!(nets.len(), 2);
    let text = probes.to_string();
    assert!(!text.contains("127.0.0.1"));
    assert_eq!(nets[0]["asn"], 9198);
    // Two probes: published as "fewer than three", not as an exact count.
    assert_eq!(nets[0]["probes"], Value::Null);

    let events = app
        .get_json("/api/v1/events?kind=new_block&format=json")
        .await;
    assert_eq!(events["events"].as_array().unwrap().len(), 1);
    let csv = app.get_text("/api/v1/events?format=csv").await;
    assert!(csv.starts_with("id,kind,domain,asn"), "{csv}");

    for bad in [
        "/api/v1/status?limit=x",
        "/api/v1/status?bogus=1",
        "/api/v1/events?kind=party",
        "/api/v1/measurements?format=xml",
        "/api/v1/status?country=KAZ",
    ] {
        let r = app.client.get(app.url(bad)).send().await.unwrap();
        assert_eq!(r.status(), 400, "{bad}");
    }
    app.stop().await;
}

both_stores!(
    health_says_ok_with_version,
    registration_by_invite,
    open_registration_is_rate_limited,
    batch_with_good_malformed_duplicate_and_future_records,
    gzip_upload_and_zip_bomb,
    client_mistakes_get_clear_4xx,
    uploads_are_rate_limited_per_probe,
    read_api_json_and_csv,
);

/// The export pages by `(started_at, id)`: 250 records of one instant come back in three pages
/// of at most 100, each exactly once, in order; JSON and CSV alike; a bad cursor is a 400.
async fn export_pages_through_rows_sharing_one_instant(db: Db) {
    let app = spawn_on(db, test_config()).await;
    let (_, token) = app.register().await;
    let at = Utc::now() - TimeDelta::minutes(5);
    let ms: Vec<_> = (0..250)
        .map(|i| measurement(&format!("s{i}.example"), 9198, Status::Accessible, None, at))
        .collect();
    for chunk in ms.chunks(50) {
        app.upload(&token, chunk).await;
    }
    let mut want: Vec<String> = ms.iter().map(|m| m.id.to_string()).collect();
    want.sort();
    let (mut got, mut cursor, mut pages) = (Vec::new(), None::<String>, 0);
    loop {
        let mut path = "/api/v1/measurements?limit=100".to_string();
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={}", urlencode(c)));
        }
        let page = app.get_json(&path).await;
        pages += 1;
        let rows = page["measurements"].as_array().unwrap();
        assert!(rows.len() <= 100);
        got.extend(rows.iter().map(|r| r["id"].as_str().unwrap().to_string()));
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
        assert!(pages < 10, "paging is stuck");
    }
    assert_eq!(pages, 3);
    assert_eq!(
        got, want,
        "every record once, in id order within the instant"
    );
    // CSV: the same order; the cursor is built from the last row's started_at and id.
    let csv = app
        .get_text("/api/v1/measurements?limit=100&format=csv")
        .await;
    let lines: Vec<&str> = csv.lines().collect();
    assert!(lines[0].starts_with("id,started_at,"));
    assert_eq!(lines.len(), 101);
    let last: Vec<&str> = lines[100].split(',').collect();
    assert_eq!(last[0], want[99]);
    let next = app
        .get_text(&format!(
            "/api/v1/measurements?limit=1&format=csv&cursor={}",
            urlencode(&format!("{},{}", last[1], last[0]))
        ))
        .await;
    assert_eq!(
        next.lines().nth(1).unwrap().split(',').next(),
        Some(want[100].as_str())
    );
    for bad in ["x", "2024-01-01T00:00:00Z", "2024-01-01T00:00:00Z,nope"] {
        let r = app
            .client
            .get(app.url(&format!("/api/v1/measurements?cursor={}", urlencode(bad))))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{bad}");
        assert!(r.text().await.unwrap().contains("cursor"));
    }
    app.stop().await;
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

both_stores!(export_pages_through_rows_sharing_one_instant);
