//! The `Store` contract, run against SQLite and a real PostgreSQL: everything that must happen
//! once is settled by the database, also between several collectors ("replicas") sharing it.

#[macro_use]
mod common;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use common::{measurement, spawn_on, test_config, webhook_receiver, Db, StoreGuard};
use rand::seq::SliceRandom;
use witness_collector::aggregate::{EventKind, Evidence, Transition};
use witness_collector::config::StoreConfig;
use witness_collector::store::{
    self, Backend, CloseEvent, EventKey, Filter, MeasurementRecord, NewEvent, NewInvite, NewProbe,
    Store,
};
use witness_core::model::{Method, Status};

/// A fresh store and its guard.
async fn open(db: Db) -> (Arc<dyn Store>, String, StoreGuard) {
    let (url, guard) = common::fresh_store(db);
    let s = open_url(&url).await;
    (s, url, guard)
}

/// Another "replica" on the same database.
async fn open_url(url: &str) -> Arc<dyn Store> {
    store::open(&StoreConfig {
        url: url.to_string(),
        max_connections: 8,
    })
    .await
    .expect("open store")
}

fn key() -> EventKey {
    EventKey {
        kind: EventKind::NewBlock,
        domain: Some("example.org".into()),
        asn: 9198,
        method: Some(Method::Tls),
    }
}

fn t(minutes: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 1, 5, 10, 0, 0).unwrap() + TimeDelta::minutes(minutes)
}

fn new_event(id: &str, decided: i64, floor: Option<i64>) -> NewEvent {
    NewEvent {
        id: id.into(),
        key: key(),
        country: Some("KZ".into()),
        category: None,
        started_at: t(decided - 1),
        decided_at: t(decided),
        floor: floor.map(t),
        evidence: Evidence::default(),
    }
}

fn close(decided: i64, floor: Option<i64>) -> CloseEvent {
    CloseEvent {
        key: key(),
        ended_at: t(decided - 1),
        decided_at: t(decided),
        floor: floor.map(t),
        evidence: Evidence::default(),
    }
}

async fn probe(s: &dyn Store, id: &str) {
    let now = Utc::now();
    assert!(s
        .register_probe(
            &NewProbe {
                id: id.into(),
                token_hash: format!("hash-{id}"),
                created_at: now,
            },
            None,
            now,
        )
        .await
        .unwrap());
}

fn record(domain: &str, at: DateTime<Utc>) -> MeasurementRecord {
    let m = measurement(domain, 9198, Status::Accessible, None, at);
    MeasurementRecord {
        id: m.id,
        received_at: Utc::now(),
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
    }
}

async fn one_open_event_per_key_is_enforced_by_the_database(db: Db) {
    let (s, _, _guard) = open(db).await;
    let urls = vec!["http://hook.invalid/".to_string()];
    assert!(s
        .open_event(&new_event("e1", 10, None), &urls)
        .await
        .unwrap()
        .is_some());
    // Same decision again (another collector, same view): refused.
    assert!(s
        .open_event(&new_event("e2", 10, None), &urls)
        .await
        .unwrap()
        .is_none());
    // Even from the current floor: one open event per key.
    assert!(s
        .open_event(&new_event("e2", 11, Some(10)), &urls)
        .await
        .unwrap()
        .is_none());
    let closed = s.close_event(&close(20, Some(10)), &urls).await.unwrap();
    assert_eq!(closed.unwrap().id, "e1");
    assert!(s
        .close_event(&close(21, Some(20)), &urls)
        .await
        .unwrap()
        .is_none());
    assert!(s
        .open_event(&new_event("e3", 30, Some(20)), &urls)
        .await
        .unwrap()
        .is_some());
    // One notification per transition: open e1, close e1, open e3.
    let now = Utc::now();
    let due = s
        .claim_notifications(now, now + TimeDelta::minutes(1), 10)
        .await
        .unwrap();
    assert!(s
        .claim_notifications(now, now, 10)
        .await
        .unwrap()
        .is_empty());
    let got: Vec<_> = due
        .iter()
        .map(|n| (n.event.id.as_str(), n.transition))
        .collect();
    assert_eq!(
        got,
        vec![
            ("e1", Transition::NewBlock),
            ("e1", Transition::Unblock),
            ("e3", Transition::NewBlock)
        ]
    );
    let states = s
        .event_states(EventKind::NewBlock, Some("example.org"), 9198)
        .await
        .unwrap();
    assert_eq!(states.len(), 1);
    assert_eq!(states[0].open_since, Some(t(29)));
    assert_eq!(states[0].floor, Some(t(30)));
}

/// A decision computed from a state that has changed since is refused, whichever it is.
async fn stale_decisions_are_refused(db: Db) {
    let (s, _, _guard) = open(db).await;
    let urls: Vec<String> = vec![];
    assert!(s
        .open_event(&new_event("a", 10, None), &urls)
        .await
        .unwrap()
        .is_some());
    // A collector that read the key before "a" opened, and decided to close something: no.
    assert!(s
        .close_event(&close(12, None), &urls)
        .await
        .unwrap()
        .is_none());
    // A close from a floor that never existed: no.
    assert!(s
        .close_event(&close(12, Some(11)), &urls)
        .await
        .unwrap()
        .is_none());
    assert!(s
        .close_event(&close(12, Some(10)), &urls)
        .await
        .unwrap()
        .is_some());
    // A re-open decided by someone who still thought "a" was open at floor 10: no.
    assert!(s
        .open_event(&new_event("b", 13, Some(10)), &urls)
        .await
        .unwrap()
        .is_none());
    let all = s
        .events(&Filter {
            limit: 100,
            ..Filter::default()
        })
        .await
        .unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].ended_at, Some(t(11)));
}

/// Many writers race to open the same event from the same view: exactly one wins, with one
/// notification, across two stores ("replicas") on one database.
async fn racing_writers_open_one_event(db: Db) {
    let (a, url, _guard) = open(db).await;
    let b = open_url(&url).await;
    let urls = vec!["http://hook.invalid/".to_string()];
    let mut tasks = Vec::new();
    for i in 0..16 {
        let s = if i % 2 == 0 { a.clone() } else { b.clone() };
        let urls = urls.clone();
        tasks.push(tokio::spawn(async move {
            s.open_event(&new_event(&format!("e{i}"), 10, None), &urls)
                .await
                .unwrap()
                .is_some()
        }));
    }
    let mut won = 0;
    for task in tasks {
        won += usize::from(task.await.unwrap());
    }
    assert_eq!(won, 1);
    let now = Utc::now();
    let due = a
        .claim_notifications(now, now + TimeDelta::minutes(1), 100)
        .await
        .unwrap();
    assert_eq!(due.len(), 1);
}

async fn invites_are_consumed_once(db: Db) {
    let (s, url, _guard) = open(db).await;
    let other = open_url(&url).await;
    let now = Utc::now();
    s.create_invite(&NewInvite {
        id: "inv-1".into(),
        token_hash: "h".into(),
        note: Some("three volunteers".into()),
        max_uses: 3,
        expires_at: None,
        created_at: now,
    })
    .await
    .unwrap();
    let mut tasks = Vec::new();
    for i in 0..12 {
        let s = if i % 2 == 0 { s.clone() } else { other.clone() };
        tasks.push(tokio::spawn(async move {
            let p = NewProbe {
                id: format!("p{i}"),
                token_hash: format!("t-p{i}"),
                created_at: now,
            };
            s.register_probe(&p, Some("h"), now).await.unwrap()
        }));
    }
    let mut ok = 0;
    for task in tasks {
        ok += usize::from(task.await.unwrap());
    }
    assert_eq!(ok, 3, "a 3-use invite registered {ok} probes");
    let p = |id: &str| NewProbe {
        id: id.into(),
        token_hash: format!("t-{id}"),
        created_at: now,
    };
    assert!(!s.register_probe(&p("late"), Some("h"), now).await.unwrap());
    assert!(!s.register_probe(&p("x"), Some("nope"), now).await.unwrap());
    let tokens = s.list_tokens().await.unwrap();
    let invite = tokens.iter().find(|t| t.id == "inv-1").unwrap();
    assert_eq!((invite.uses, invite.max_uses), (Some(3), Some(3)));
    let live: Vec<&str> = tokens
        .iter()
        .filter(|t| t.kind == "probe")
        .map(|t| t.id.as_str())
        .collect();
    assert_eq!(live.len(), 3);
    let id = live[0].to_string();
    assert_eq!(
        s.authenticate(&format!("t-{id}")).await.unwrap().as_deref(),
        Some(id.as_str())
    );
    assert!(s.revoke(&id, now).await.unwrap());
    assert_eq!(s.authenticate(&format!("t-{id}")).await.unwrap(), None);
    assert!(!s.revoke(&id, now).await.unwrap());
}

/// The same records uploaded at once through two stores, in different orders and overlapping
/// batches: every id is stored once and reported new exactly once.
async fn concurrent_duplicate_uploads_store_each_record_once(db: Db) {
    let (a, url, _guard) = open(db).await;
    let b = open_url(&url).await;
    probe(a.as_ref(), "p1").await;
    probe(a.as_ref(), "p2").await;
    let now = Utc::now();
    let records: Vec<MeasurementRecord> = (0..300)
        .map(|i| record(&format!("site{}.test", i % 7), now - TimeDelta::seconds(i)))
        .collect();
    let mut tasks = Vec::new();
    for round in 0..8 {
        let s = if round % 2 == 0 { a.clone() } else { b.clone() };
        let mut batch = records.clone();
        batch.shuffle(&mut rand::rng());
        batch.truncate(200);
        let probe = if round % 3 == 0 { "p1" } else { "p2" };
        tasks.push(tokio::spawn(async move {
            let fresh = s.insert_measurements(probe, now, &batch).await.unwrap();
            batch
                .iter()
                .zip(fresh)
                .filter(|(_, f)| *f)
                .map(|(r, _)| r.id)
                .collect::<Vec<_>>()
        }));
    }
    let mut reported = BTreeMap::new();
    for task in tasks {
        for id in task.await.unwrap() {
            *reported.entry(id).or_insert(0) += 1;
        }
    }
    assert!(
        reported.values().all(|&n| n == 1),
        "an id was reported new twice"
    );
    // Whatever was not in any batch is simply absent; everything else is stored once.
    let stored = a
        .measurements(&Filter {
            limit: 10_000,
            ..Filter::default()
        })
        .await
        .unwrap();
    let ids: Vec<_> = stored.iter().map(|m| m.id).collect();
    let distinct: HashSet<_> = ids.iter().collect();
    assert_eq!(ids.len(), distinct.len(), "a record is stored twice");
    assert_eq!(ids.len(), reported.len());
    // A retry of everything: all duplicates.
    let again = b.insert_measurements("p1", now, &records).await.unwrap();
    let new_now = again.iter().filter(|f| **f).count();
    assert_eq!(new_now + ids.len(), records.len());
}

/// The single-probe rule only needs 0, 1 or "more than one" probes on a network.
async fn probe_count_stops_at_two(db: Db) {
    let (s, _, _guard) = open(db).await;
    for p in ["p1", "p2", "p3"] {
        probe(s.as_ref(), p).await;
    }
    let t0 = Utc::now() - TimeDelta::hours(1);
    let window = |s: &Arc<dyn Store>| {
        let s = s.clone();
        async move {
            s.network_probe_count(9198, t0 - TimeDelta::minutes(1), t0 + TimeDelta::hours(1))
                .await
                .unwrap()
        }
    };
    assert_eq!(window(&s).await, 0);
    let run = |n: i64| -> Vec<MeasurementRecord> {
        (0..n)
            .map(|i| record(&format!("s{i}.test"), t0 + TimeDelta::seconds(i)))
            .collect()
    };
    s.insert_measurements("p1", Utc::now(), &run(50))
        .await
        .unwrap();
    assert_eq!(window(&s).await, 1);
    // The second probe in the middle of the first one's run: neither the earliest nor the
    // latest row of the network.
    let middle = record("x.test", t0 + TimeDelta::milliseconds(25_500));
    s.insert_measurements("p2", Utc::now(), &[middle])
        .await
        .unwrap();
    assert_eq!(window(&s).await, 2);
    s.insert_measurements("p3", Utc::now(), &run(3))
        .await
        .unwrap();
    assert_eq!(window(&s).await, 2);
    // Outside the window, or on another network: none.
    assert_eq!(
        s.network_probe_count(9198, t0 + TimeDelta::hours(2), t0 + TimeDelta::hours(3))
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        s.network_probe_count(29355, t0, t0 + TimeDelta::hours(1))
            .await
            .unwrap(),
        0
    );
}

/// Records of several months land in the right monthly partitions (PostgreSQL) and read back
/// the same from both stores, oldest first.
async fn records_across_months_read_back_in_order(db: Db) {
    let (s, _, guard) = open(db).await;
    probe(s.as_ref(), "p1").await;
    let times = [
        Utc.with_ymd_and_hms(2023, 12, 31, 23, 59, 59).unwrap(),
        Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0).unwrap(),
        Utc.with_ymd_and_hms(2024, 2, 29, 12, 0, 0).unwrap(),
        Utc.with_ymd_and_hms(2024, 3, 1, 0, 0, 0).unwrap(),
    ];
    let records: Vec<_> = times.iter().map(|&at| record("a.test", at)).collect();
    let fresh = s
        .insert_measurements("p1", Utc::now(), &records)
        .await
        .unwrap();
    assert_eq!(fresh, vec![true; 4]);
    let back = s
        .measurements(&Filter {
            limit: 100,
            ..Filter::default()
        })
        .await
        .unwrap();
    let got: Vec<_> = back.iter().map(|m| m.started_at).collect();
    assert_eq!(got, times);
    assert_eq!(back[2].body, records[2].body);
    let jan = s
        .measurements(&Filter {
            since: Some(times[1]),
            until: Some(times[2] - TimeDelta::seconds(1)),
            limit: 100,
            ..Filter::default()
        })
        .await
        .unwrap();
    assert_eq!(jan.len(), 1);
    if let StoreGuard::Pg(pg) = &guard {
        let parts = pg
            .psql(
                "SELECT string_agg(c.relname, ',' ORDER BY c.relname) FROM pg_inherits i \
                 JOIN pg_class c ON c.oid = i.inhrelid \
                 WHERE i.inhparent = 'measurements'::regclass AND c.relkind = 'r'",
            )
            .unwrap();
        for p in [
            "measurements_p202312",
            "measurements_p202401",
            "measurements_p202402",
            "measurements_p202403",
        ] {
            assert!(parts.contains(p), "no partition {p}: {parts}");
        }
        let in_feb = pg
            .psql("SELECT count(*) FROM measurements_p202402")
            .unwrap();
        assert_eq!(in_feb, "1");
        let ids = pg.psql("SELECT count(*) FROM measurement_ids").unwrap();
        assert_eq!(ids, "4");
    }
}

/// Several collectors draining one outbox take disjoint rows.
async fn outbox_claims_are_disjoint(db: Db) {
    let (a, url, _guard) = open(db).await;
    let b = open_url(&url).await;
    let urls = vec![
        "http://one.invalid/".to_string(),
        "http://two.invalid/".to_string(),
    ];
    for i in 0..15 {
        let ev = NewEvent {
            key: EventKey {
                domain: Some(format!("site{i}.test")),
                ..key()
            },
            ..new_event(&format!("e{i}"), 10, None)
        };
        assert!(a.open_event(&ev, &urls).await.unwrap().is_some());
    }
    let now = Utc::now();
    let mut tasks = Vec::new();
    for w in 0..6 {
        let s = if w % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let got = s
                    .claim_notifications(now, now + TimeDelta::minutes(5), 2)
                    .await
                    .unwrap();
                if got.is_empty() {
                    return mine;
                }
                for n in got {
                    s.notification_delivered(n.id, Utc::now()).await.unwrap();
                    mine.push(n.id);
                }
            }
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    let distinct: HashSet<_> = all.iter().collect();
    assert_eq!(all.len(), 30, "{all:?}");
    assert_eq!(distinct.len(), 30, "a notification was claimed twice");
    // Failures: retried at the given time, abandoned without one.
    let ev = NewEvent {
        key: EventKey {
            domain: Some("retry.test".into()),
            ..key()
        },
        ..new_event("r", 10, None)
    };
    a.open_event(&ev, &urls[..1]).await.unwrap().unwrap();
    let now = Utc::now();
    let n = a
        .claim_notifications(now, now + TimeDelta::minutes(5), 10)
        .await
        .unwrap();
    assert_eq!(n.len(), 1);
    a.notification_failed(n[0].id, Some(now + TimeDelta::seconds(1)), "HTTP 500", now)
        .await
        .unwrap();
    let again = b
        .claim_notifications(now + TimeDelta::seconds(2), now + TimeDelta::minutes(5), 10)
        .await
        .unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].attempts, 1);
    b.notification_failed(again[0].id, None, "HTTP 500", now)
        .await
        .unwrap();
    assert!(a
        .claim_notifications(now + TimeDelta::days(1), now + TimeDelta::days(2), 10)
        .await
        .unwrap()
        .is_empty());
}

/// Probes upload the same block at the same moment, with retries, to two collectors on one
/// database: one event, one webhook call.
async fn simultaneous_uploads_to_two_collectors_raise_one_event(db: Db) {
    let hook = webhook_receiver().await;
    let mut cfg = test_config();
    cfg.webhook.urls = vec![hook.url.clone()];
    let first = spawn_on(db, cfg.clone()).await;
    // The second collector on the first one's database.
    let mut cfg2 = cfg.clone();
    cfg2.store.url = first.state.config.store.url.clone();
    let second_store = store::open(&cfg2.store).await.unwrap();
    let second = witness_collector::AppState::new(cfg2, second_store).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let second_url = format!("http://{}", listener.local_addr().unwrap());
    let (stop2, rx2) = tokio::sync::oneshot::channel::<()>();
    let server2 = tokio::spawn(witness_collector::serve(listener, second, async move {
        let _ = rx2.await;
    }));

    let mut tokens = Vec::new();
    for _ in 0..4 {
        tokens.push(first.register().await.1);
    }
    let at = Utc::now() - TimeDelta::minutes(30);
    let mut tasks = Vec::new();
    for (i, token) in tokens.iter().enumerate() {
        let m = measurement(
            "www.currenttime.tv",
            9198,
            Status::Blocked,
            Some(Method::Tls),
            at + TimeDelta::seconds(i as i64),
        );
        let body = serde_json::json!({ "measurements": [m] });
        // Each probe's upload goes to both collectors at once (a retry racing the original).
        for base in [first.base.clone(), second_url.clone()] {
            let (client, token, body) = (first.client.clone(), token.clone(), body.clone());
            tasks.push(tokio::spawn(async move {
                let r = client
                    .post(format!("{base}/api/v1/measurements"))
                    .bearer_auth(token)
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
                let v: serde_json::Value = r.json().await.unwrap();
                v["accepted"].as_array().unwrap().len()
            }));
        }
    }
    let mut accepted = 0;
    for task in tasks {
        accepted += task.await.unwrap();
    }
    assert_eq!(
        accepted, 4,
        "each record accepted once, a duplicate the other time"
    );
    let events = first.get_json("/api/v1/events").await;
    let list = events["events"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{events}");
    assert_eq!(list[0]["method"], "tls");
    hook.wait_for(1).await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(hook.count(), 1, "one webhook call");
    let _ = stop2.send(());
    server2.await.unwrap().unwrap();
    first.stop().await;
}

#[test]
fn store_urls_choose_the_backend() {
    for (url, backend) in [
        ("sqlite://x.db", Some(Backend::Sqlite)),
        ("sqlite:x.db", Some(Backend::Sqlite)),
        ("/var/lib/witness/x.db", Some(Backend::Sqlite)),
        ("postgres.db", Some(Backend::Sqlite)),
        ("postgres://u:p@db:5432/witness", Some(Backend::Postgres)),
        ("postgresql://db/witness", Some(Backend::Postgres)),
        ("POSTGRES://db/witness", Some(Backend::Postgres)),
        ("mysql://db/witness", None),
        ("postgres:db", None),
    ] {
        assert_eq!(Backend::of(url).ok(), backend, "{url}");
    }
    assert_eq!(
        store::redacted("postgres://witness:s3cret@db:5432/witness"),
        "postgres://witness:***@db:5432/witness"
    );
    assert_eq!(store::redacted("sqlite://x.db"), "sqlite://x.db");
}

both_stores!(
    one_open_event_per_key_is_enforced_by_the_database,
    stale_decisions_are_refused,
    racing_writers_open_one_event,
    invites_are_consumed_once,
    concurrent_duplicate_uploads_store_each_record_once,
    records_across_months_read_back_in_order,
    probe_count_stops_at_two,
    outbox_claims_are_disjoint,
    simultaneous_uploads_to_two_collectors_raise_one_event,
);
