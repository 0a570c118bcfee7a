//! The `Store` contract, run against SQLite and a real PostgreSQL: everything that must happen
//! once is settled by the database, also between several collectors ("replicas") sharing it.

#[macro_use]
mod common;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use common::{measurement, spawn_on, test_config, webhook_receiver, Db, StoreGuard};
use rand::seq::SliceRandom;
use witness_collector::aggregate::{CensorPlace, EventKind, Evidence, Transition};
use witness_collector::config::StoreConfig;
use witness_collector::store::{
    self, Backend, CloseEvent, EventKey, Filter, MeasurementRecord, NewEvent, NewInvite, NewProbe,
    OpenShutdown, PlaceDecision, Store,
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
        ..StoreConfig::default()
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
        censor_hop: None,
        censor_asn: None,
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

/// Who counts in the quorum: registered long enough ago, not revoked, and with uploads in
/// enough distinct hours of arrival (several networks in one hour are one hour).
async fn established_probes_need_age_and_hours(db: Db) {
    let (s, _, _guard) = open(db).await;
    let now = Utc::now();
    let register = |id: &'static str, age: TimeDelta| {
        let s = s.clone();
        async move {
            let at = now - age;
            let p = NewProbe {
                id: id.into(),
                token_hash: format!("hash-{id}"),
                created_at: at,
            };
            assert!(s.register_probe(&p, None, at).await.unwrap());
        }
    };
    register("old-busy", TimeDelta::days(4)).await;
    register("old-quiet", TimeDelta::days(4)).await;
    register("young-busy", TimeDelta::hours(20)).await;
    register("revoked", TimeDelta::days(4)).await;
    // One upload an hour for `hours` hours, on two networks in the same hour.
    let upload = |id: &'static str, hours: i64| {
        let s = s.clone();
        async move {
            for h in 0..hours {
                let at = now - TimeDelta::hours(h);
                let mut a = record(&format!("h{h}.test"), at);
                let mut b = record(&format!("h{h}.test"), at);
                b.asn = Some(64_999);
                a.received_at = at;
                b.received_at = at;
                s.insert_measurements(id, at, &[a, b]).await.unwrap();
            }
        }
    };
    upload("old-busy", 19).await;
    upload("old-quiet", 18).await;
    upload("young-busy", 19).await;
    upload("revoked", 19).await;
    assert!(s.revoke("revoked", now).await.unwrap());
    let all: Vec<String> = ["old-busy", "old-quiet", "young-busy", "revoked", "unknown"]
        .map(String::from)
        .to_vec();
    let counted = s
        .established_probes(&all, now - TimeDelta::days(3), 19)
        .await
        .unwrap();
    assert_eq!(counted, HashSet::from(["old-busy".to_string()]));
    // Without a bound on hours, age alone decides.
    let counted = s
        .established_probes(&all, now - TimeDelta::days(3), 0)
        .await
        .unwrap();
    assert_eq!(
        counted,
        HashSet::from(["old-busy".to_string(), "old-quiet".to_string()])
    );
    assert!(s.established_probes(&[], now, 0).await.unwrap().is_empty());
}

/// Open events come first in the list, whatever ended after them: a flood of short events
/// cannot push an open one off a page.
async fn events_list_open_ones_first(db: Db) {
    let (s, _, _guard) = open(db).await;
    let other = |i: i64| EventKey {
        domain: Some(format!("flood{i}.example")),
        ..key()
    };
    // The real event opened first, long ago.
    assert!(s
        .open_event(&new_event("real", 1, None), &[])
        .await
        .unwrap()
        .is_some());
    for i in 0..30 {
        let mut e = new_event(&format!("flood{i}"), 100 + i, None);
        e.key = other(i);
        assert!(s.open_event(&e, &[]).await.unwrap().is_some());
        let mut c = close(101 + i, Some(100 + i));
        c.key = other(i);
        assert!(s.close_event(&c, &[]).await.unwrap().is_some());
    }
    let page = s
        .events(&Filter {
            limit: 10,
            ..Filter::default()
        })
        .await
        .unwrap();
    assert_eq!(page.len(), 10);
    assert_eq!(page[0].id, "real");
    assert!(page[1..].iter().all(|e| e.ended_at.is_some()));
    // Then the ended ones, newest first.
    assert_eq!(page[1].id, "flood29");
    // The filters still hold.
    let ended = s
        .events(&Filter {
            open: Some(false),
            limit: 5,
            ..Filter::default()
        })
        .await
        .unwrap();
    assert_eq!(ended.len(), 5);
    assert!(ended.iter().all(|e| e.ended_at.is_some()));
    let open = s
        .events(&Filter {
            open: Some(true),
            limit: 5,
            ..Filter::default()
        })
        .await
        .unwrap();
    assert_eq!(
        open.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
        ["real"]
    );
}

/// `/metrics` reads the networks in shutdown from the open events only: a closed shutdown and
/// an open block are not one.
async fn open_shutdowns_are_the_open_shutdown_events(db: Db) {
    let (s, _, _guard) = open(db).await;
    let shutdown = |asn: u32| EventKey {
        kind: EventKind::Shutdown,
        domain: None,
        asn,
        method: None,
    };
    assert!(s.open_shutdowns().await.unwrap().is_empty());
    assert!(s
        .open_event(&new_event("block", 1, None), &[])
        .await
        .unwrap()
        .is_some());
    for (id, asn) in [("down-a", 9198), ("down-b", 48716)] {
        let mut e = new_event(id, 2, None);
        e.key = shutdown(asn);
        assert!(s.open_event(&e, &[]).await.unwrap().is_some());
    }
    let mut c = close(3, Some(2));
    c.key = shutdown(48716);
    assert!(s.close_event(&c, &[]).await.unwrap().is_some());
    assert_eq!(
        s.open_shutdowns().await.unwrap(),
        [OpenShutdown {
            asn: 9198,
            country: Some("KZ".into()),
        }]
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
    established_probes_need_age_and_hours,
    events_list_open_ones_first,
    open_shutdowns_are_the_open_shutdown_events,
    outbox_claims_are_disjoint,
    simultaneous_uploads_to_two_collectors_raise_one_event,
);

fn verdict(
    domain: &str,
    asn: u32,
    at: DateTime<Utc>,
    status: Status,
    method: Option<Method>,
) -> MeasurementRecord {
    let mut r = record(domain, at);
    r.asn = Some(asn);
    r.status = status;
    r.method = method;
    r
}

/// The latest groups of one site and network, as `(status, method, probes)`.
async fn groups_of(
    s: &dyn Store,
    since: DateTime<Utc>,
    domain: &str,
) -> Vec<(Status, Option<Method>, u64)> {
    let mut g: Vec<_> = s
        .latest_groups(&Filter {
            since: Some(since),
            domain: Some(domain.into()),
            ..Filter::default()
        })
        .await
        .unwrap()
        .into_iter()
        .map(|g| (g.status, g.method, g.probes))
        .collect();
    g.sort_by_key(|(s, m, _)| (s.as_str(), m.map(|m| m.as_str())));
    g
}

/// The read model is written with the measurements: the newest verdict per probe wins, an
/// older back-filled one and a duplicate upload change nothing, offline verdicts are ignored,
/// and entries older than the window stop counting.
async fn read_model_is_monotonic_and_idempotent(db: Db) {
    let (s, _, _guard) = open(db).await;
    probe(s.as_ref(), "p1").await;
    probe(s.as_ref(), "p2").await;
    let now = Utc::now();
    let blocked = verdict("a.test", 9198, t(10), Status::Blocked, Some(Method::Tls));
    assert_eq!(
        s.insert_measurements("p1", now, std::slice::from_ref(&blocked))
            .await
            .unwrap(),
        vec![true]
    );
    assert_eq!(
        groups_of(s.as_ref(), t(0), "a.test").await,
        vec![(Status::Blocked, Some(Method::Tls), 1)]
    );
    // A shutdown's back-fill arrives late, with older times: it must not replace the newer one.
    let older = verdict("a.test", 9198, t(5), Status::Accessible, None);
    s.insert_measurements("p1", now, &[older]).await.unwrap();
    assert_eq!(
        groups_of(s.as_ref(), t(0), "a.test").await,
        vec![(Status::Blocked, Some(Method::Tls), 1)]
    );
    // A newer verdict replaces it; re-uploading the old one changes nothing.
    let newer = verdict("a.test", 9198, t(20), Status::Accessible, None);
    s.insert_measurements("p1", now, &[newer]).await.unwrap();
    assert_eq!(
        s.insert_measurements("p1", now, std::slice::from_ref(&blocked))
            .await
            .unwrap(),
        vec![false]
    );
    // Offline verdicts say nothing about a site.
    let offline = verdict("a.test", 9198, t(30), Status::Offline, None);
    // Same started_at in one batch: the larger id wins, whatever the order in the batch.
    let mut tie = vec![
        verdict("b.test", 9198, t(20), Status::Blocked, Some(Method::Dns)),
        verdict("b.test", 9198, t(20), Status::Accessible, None),
    ];
    tie.sort_by_key(|r| std::cmp::Reverse(r.id));
    let tie_winner = if tie[0].status == Status::Accessible {
        (Status::Accessible, None, 1)
    } else {
        (Status::Blocked, Some(Method::Dns), 1)
    };
    tie.reverse();
    let mut batch = vec![offline];
    batch.extend(tie);
    s.insert_measurements("p2", now, &batch).await.unwrap();
    assert_eq!(
        groups_of(s.as_ref(), t(0), "a.test").await,
        vec![(Status::Accessible, None, 1)]
    );
    assert_eq!(
        groups_of(s.as_ref(), t(0), "b.test").await,
        vec![tie_winner]
    );
    // Older than the window: no longer counts.
    assert!(groups_of(s.as_ref(), t(21), "a.test").await.is_empty());
    // The status filters apply to the latest verdicts.
    let other_net = s
        .latest_groups(&Filter {
            since: Some(t(0)),
            asn: Some(1),
            ..Filter::default()
        })
        .await
        .unwrap();
    assert!(other_net.is_empty());
    // Methods seen blocking, with their last time.
    let mut seen = s.blocked_methods_seen(t(0)).await.unwrap();
    seen.sort();
    assert_eq!(
        seen,
        vec![
            ("a.test".to_string(), 9198, Method::Tls),
            ("b.test".to_string(), 9198, Method::Dns)
        ]
    );
    assert_eq!(
        s.blocked_methods_seen(t(15)).await.unwrap(),
        vec![("b.test".to_string(), 9198, Method::Dns)]
    );
    // Probes per network, by hour of arrival: two probes, six measurements stored.
    let nets = s
        .probe_networks(&Filter {
            since: Some(now - TimeDelta::minutes(5)),
            until: Some(now),
            limit: 10,
            ..Filter::default()
        })
        .await
        .unwrap();
    assert_eq!(nets.len(), 1, "{nets:?}");
    assert_eq!(
        (nets[0].asn, nets[0].probes, nets[0].measurements),
        (Some(9198), 2, 6)
    );
    // The sweep's view: sites and networks measured since a time.
    let sites = s.recent_sites(t(0)).await.unwrap();
    assert_eq!(sites.len(), 2);
    assert_eq!(sites[0].latest, t(20));
    let networks = s.recent_networks(t(0)).await.unwrap();
    assert_eq!(networks.len(), 1);
    assert_eq!((networks[0].asn, networks[0].latest), (9198, t(30)));
}

/// Two collectors storing a probe's uploads concurrently, newest and oldest interleaved: the
/// read model ends at the newest verdict of every site.
async fn concurrent_writers_keep_the_newest_verdict(db: Db) {
    let (a, url, _guard) = open(db).await;
    let b = open_url(&url).await;
    probe(a.as_ref(), "p1").await;
    let sites: Vec<String> = (0..20).map(|i| format!("s{i}.test")).collect();
    let mut batches = Vec::new();
    for minute in 0..16 {
        let status = if minute == 15 {
            Status::Blocked
        } else {
            Status::Accessible
        };
        let method = (status == Status::Blocked).then_some(Method::Http);
        let batch: Vec<_> = sites
            .iter()
            .map(|d| verdict(d, 9198, t(minute), status, method))
            .collect();
        batches.push(batch);
    }
    batches.shuffle(&mut rand::rng());
    let tasks: Vec<_> = batches
        .into_iter()
        .enumerate()
        .map(|(i, batch)| {
            let s = if i % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(async move { s.insert_measurements("p1", Utc::now(), &batch).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let groups = a
        .latest_groups(&Filter {
            since: Some(t(0)),
            ..Filter::default()
        })
        .await
        .unwrap();
    assert_eq!(groups.len(), sites.len());
    for g in &groups {
        assert_eq!(
            (g.status, g.method, g.probes),
            (Status::Blocked, Some(Method::Http), 1)
        );
        assert_eq!(g.last_measured, t(15));
    }
}

/// A database created before the read model (schema v1) with measurements in it gets the read
/// model built from those measurements when the collector upgrades it.
async fn read_model_is_built_when_an_existing_database_upgrades(db: Db) {
    let (url, _guard) = common::fresh_store(db);
    let dir = tempfile::tempdir().unwrap();
    let name = match db {
        Db::Sqlite => "sqlite",
        Db::Postgres => "postgres",
    };
    std::fs::copy(
        format!(
            "{}/migrations/{name}/0001_init.sql",
            env!("CARGO_MANIFEST_DIR")
        ),
        dir.path().join("0001_init.sql"),
    )
    .unwrap();
    let v1 = sqlx::migrate::Migrator::new(dir.path()).await.unwrap();
    // (id, probe, domain, asn, minute, status, method)
    type V1Row<'a> = (
        &'a str,
        &'a str,
        &'a str,
        Option<i64>,
        i64,
        &'a str,
        Option<&'a str>,
    );
    let rows: &[V1Row] = &[
        (
            "00000000-0000-7000-8000-000000000001",
            "p1",
            "a.test",
            Some(9198),
            0,
            "blocked",
            Some("tls"),
        ),
        (
            "00000000-0000-7000-8000-000000000002",
            "p1",
            "a.test",
            Some(9198),
            10,
            "blocked",
            Some("tls"),
        ),
        (
            "00000000-0000-7000-8000-000000000003",
            "p2",
            "a.test",
            Some(9198),
            5,
            "blocked",
            Some("tls"),
        ),
        (
            "00000000-0000-7000-8000-000000000004",
            "p2",
            "a.test",
            Some(9198),
            12,
            "accessible",
            None,
        ),
        (
            "00000000-0000-7000-8000-000000000005",
            "p2",
            "a.test",
            Some(9198),
            30,
            "offline",
            None,
        ),
        (
            "00000000-0000-7000-8000-000000000006",
            "p1",
            "b.test",
            None,
            3,
            "accessible",
            None,
        ),
    ];
    let received = Utc::now();
    match db {
        Db::Sqlite => {
            let pool = sqlx::SqlitePool::connect(&format!("{url}?mode=rwc"))
                .await
                .unwrap();
            v1.run(&pool).await.unwrap();
            for p in ["p1", "p2"] {
                sqlx::query("INSERT INTO probes (id, token_hash, created_at) VALUES (?, ?, 0)")
                    .bind(p)
                    .bind(format!("hash-{p}"))
                    .execute(&pool)
                    .await
                    .unwrap();
            }
            for (id, p, d, asn, min, status, method) in rows {
                sqlx::query(
                    "INSERT INTO measurements (id, probe_id, received_at, started_at, domain, \
                     url, category, asn, country, status, method, reason, software_version, \
                     body) VALUES (?, ?, ?, ?, ?, '', 'NEWS', ?, 'KZ', ?, ?, '', '', '{}')",
                )
                .bind(id)
                .bind(p)
                .bind(received.timestamp_millis())
                .bind(t(*min).timestamp_millis())
                .bind(d)
                .bind(asn)
                .bind(status)
                .bind(method)
                .execute(&pool)
                .await
                .unwrap();
            }
            pool.close().await;
        }
        Db::Postgres => {
            let pool = sqlx::PgPool::connect(&url).await.unwrap();
            v1.run(&pool).await.unwrap();
            sqlx::query(
                "CREATE TABLE measurements_p202401 PARTITION OF measurements \
                 FOR VALUES FROM ('2024-01-01 00:00:00+00') TO ('2024-02-01 00:00:00+00')",
            )
            .execute(&pool)
            .await
            .unwrap();
            for p in ["p1", "p2"] {
                sqlx::query(
                    "INSERT INTO probes (id, token_hash, created_at) VALUES ($1, $2, now())",
                )
                .bind(p)
                .bind(format!("hash-{p}"))
                .execute(&pool)
                .await
                .unwrap();
            }
            for (id, p, d, asn, min, status, method) in rows {
                sqlx::query(
                    "INSERT INTO measurements (id, probe_id, received_at, started_at, domain, \
                     url, category, asn, country, status, method, reason, software_version, \
                     body) VALUES ($1::uuid, $2, $3, $4, $5, '', 'NEWS', $6, 'KZ', $7, $8, '', \
                     '', '{}')",
                )
                .bind(id)
                .bind(p)
                .bind(received)
                .bind(t(*min))
                .bind(d)
                .bind(asn)
                .bind(status)
                .bind(method)
                .execute(&pool)
                .await
                .unwrap();
            }
            pool.close().await;
        }
    }
    let s = open_url(&url).await;
    // p1's latest is blocked (minute 10), p2's is accessible (minute 12; its offline report
    // does not count); b.test has no network.
    assert_eq!(
        groups_of(s.as_ref(), t(0), "a.test").await,
        vec![
            (Status::Accessible, None, 1),
            (Status::Blocked, Some(Method::Tls), 1)
        ]
    );
    assert!(groups_of(s.as_ref(), t(0), "b.test").await.is_empty());
    assert_eq!(
        s.blocked_methods_seen(t(6)).await.unwrap(),
        vec![("a.test".to_string(), 9198, Method::Tls)]
    );
    assert!(s.blocked_methods_seen(t(11)).await.unwrap().is_empty());
    let nets = s
        .probe_networks(&Filter {
            since: Some(received - TimeDelta::minutes(1)),
            until: Some(received),
            limit: 10,
            ..Filter::default()
        })
        .await
        .unwrap();
    let nets: Vec<_> = nets
        .iter()
        .map(|n| (n.asn, n.probes, n.measurements))
        .collect();
    assert_eq!(nets, vec![(None, 1, 1), (Some(9198), 2, 5)]);
    // And it is kept from then on: a newer verdict of p2 replaces the migrated one.
    s.insert_measurements(
        "p2",
        Utc::now(),
        &[verdict(
            "a.test",
            9198,
            t(40),
            Status::Blocked,
            Some(Method::Tls),
        )],
    )
    .await
    .unwrap();
    assert_eq!(
        groups_of(s.as_ref(), t(0), "a.test").await,
        vec![(Status::Blocked, Some(Method::Tls), 2)]
    );
}

both_stores!(
    read_model_is_monotonic_and_idempotent,
    concurrent_writers_keep_the_newest_verdict,
    read_model_is_built_when_an_existing_database_upgrades,
);

/// One export page through the real encoder: `(body of the page, row ids, next cursor)`.
async fn export_page(
    s: &Arc<dyn Store>,
    after: Option<store::Cursor>,
    limit: u32,
    cap: usize,
) -> (Vec<u8>, Vec<String>, Option<store::Cursor>) {
    let (tx, mut rx) = tokio::sync::mpsc::channel(1);
    let f = Filter {
        limit,
        ..Filter::default()
    };
    tokio::spawn(witness_collector::api::read::export(
        s.clone(),
        f,
        after,
        false,
        cap,
        tx,
    ));
    let mut body = Vec::new();
    let mut chunks = 0;
    while let Some(chunk) = rx.recv().await {
        let chunk = chunk.expect("no export error");
        // A chunk goes out once it passes 64 KB: at most that plus one record (< 64 KB here).
        assert!(chunk.len() <= 128 * 1024, "chunk of {} bytes", chunk.len());
        body.extend_from_slice(&chunk);
        chunks += 1;
    }
    assert!(chunks >= 1);
    let v: serde_json::Value = serde_json::from_slice(&body).expect("a page is JSON");
    let ids = v["measurements"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect();
    let next = v["next_cursor"].as_str().map(|c| c.parse().unwrap());
    (body, ids, next)
}

/// The export's byte cap: a page holds no more record bytes than the cap (but at least one
/// record, so paging moves on past a record larger than the cap), and paging with the cursor
/// returns every record once, in order, however many share one instant.
async fn export_pages_are_capped_in_bytes(db: Db) {
    let (s, _, _guard) = open(db).await;
    probe(s.as_ref(), "p1").await;
    // 60 records, 20 of them at one instant, with bodies of very different sizes.
    let mut records = Vec::new();
    for i in 0..60 {
        let mut r = record(&format!("s{i}.test"), t(i64::from(i / 20 * 2)));
        let m: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        let pad = "x".repeat(if i % 7 == 0 { 40_000 } else { 100 });
        let mut m = m;
        m["verdict"]["reason"] = serde_json::Value::String(pad);
        r.body = serde_json::to_string(&m).unwrap();
        records.push(r);
    }
    s.insert_measurements("p1", Utc::now(), &records)
        .await
        .unwrap();
    let size: std::collections::HashMap<String, usize> = records
        .iter()
        .map(|r| (r.id.to_string(), r.body.len()))
        .collect();
    let mut want: Vec<_> = records
        .iter()
        .map(|r| (r.started_at, r.id.to_string()))
        .collect();
    want.sort();
    let want: Vec<String> = want.into_iter().map(|(_, id)| id).collect();
    let cap = 30_000;
    let (mut got, mut after, mut pages) = (Vec::new(), None, 0);
    loop {
        let (_, ids, next) = export_page(&s, after, 1000, cap).await;
        pages += 1;
        assert!(!ids.is_empty(), "a page always moves on");
        let bytes: usize = ids.iter().map(|id| size[id]).sum();
        assert!(
            ids.len() == 1 || bytes <= cap,
            "page of {} records, {bytes} bytes",
            ids.len()
        );
        got.extend(ids);
        match next {
            Some(c) => after = Some(c),
            None => break,
        }
        assert!(pages < 100, "paging is stuck");
    }
    assert_eq!(got, want);
    assert!(pages > 5, "the cap split the export into pages ({pages})");
    // A limit that ends exactly at the last row: no next page.
    let (_, ids, next) = export_page(&s, None, 60, usize::MAX).await;
    assert_eq!((ids.len(), next), (60, None));
    let (_, ids, next) = export_page(&s, None, 59, usize::MAX).await;
    assert_eq!(ids.len(), 59);
    assert_eq!(next.map(|c| c.id.to_string()), Some(want[58].clone()));
}

/// The upload's pre-filter of the block rule: only keys with a blocking verdict in the window
/// or an open block event are evaluated.
async fn block_activity_prefilter(db: Db) {
    let (s, _, _guard) = open(db).await;
    probe(s.as_ref(), "p1").await;
    s.insert_measurements(
        "p1",
        Utc::now(),
        &[
            verdict("a.test", 9198, t(10), Status::Blocked, Some(Method::Tls)),
            verdict("b.test", 9198, t(10), Status::Accessible, None),
        ],
    )
    .await
    .unwrap();
    // example.org has an open event (key()), no measurement.
    s.open_event(&new_event("e1", 1, None), &[])
        .await
        .unwrap()
        .unwrap();
    let keys: Vec<(String, u32)> = ["a.test", "b.test", "example.org", "c.test"]
        .iter()
        .map(|d| (d.to_string(), 9198))
        .chain([("a.test".to_string(), 1)])
        .collect();
    let mut got: Vec<_> = s
        .sites_with_block_activity(&keys, t(0))
        .await
        .unwrap()
        .into_iter()
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            ("a.test".to_string(), 9198),
            ("example.org".to_string(), 9198)
        ]
    );
    // The blocking verdict is older than the window: only the open event is left.
    let got = s.sites_with_block_activity(&keys, t(10)).await.unwrap();
    assert_eq!(got.len(), 1);
    assert!(got.contains(&("example.org".to_string(), 9198)));
}

/// The evaluation's batched reads answer what the per-key reads answer, key by key.
async fn batched_reads_equal_the_per_key_reads(db: Db) {
    let (s, _, _guard) = open(db).await;
    probe(s.as_ref(), "p1").await;
    let mut records = Vec::new();
    for (i, (domain, asn)) in [
        ("a.test", 9198),
        ("a.test", 21299),
        ("b.test", 9198),
        ("c.test", 21299),
    ]
    .into_iter()
    .enumerate()
    {
        for m in 0..4 {
            let status = if m % 2 == 0 {
                Status::Blocked
            } else {
                Status::Accessible
            };
            let method = (status == Status::Blocked).then_some(Method::Tls);
            records.push(verdict(domain, asn, t(i as i64 + 10 * m), status, method));
        }
    }
    s.insert_measurements("p1", Utc::now(), &records)
        .await
        .unwrap();
    // key() is example.org on 9198: one open and one closed event.
    s.open_event(&new_event("e1", 1, None), &[])
        .await
        .unwrap()
        .unwrap();
    let keys: Vec<(String, u32)> = [
        ("a.test", 9198),
        ("b.test", 9198),
        ("c.test", 21299),
        ("example.org", 9198),
        ("nothing.test", 9198),
    ]
    .iter()
    .map(|(d, a)| (d.to_string(), *a))
    .collect();
    let since = t(5);
    let series = s.site_series_many(&keys, since).await.unwrap();
    let states = s.block_states_many(&keys).await.unwrap();
    // a.test on 21299 was not asked for (the IN lists cross domains and networks).
    assert!(!series.contains_key(&("a.test".to_string(), 21299)));
    for (domain, asn) in &keys {
        let one = s.site_series(domain, *asn, since).await.unwrap();
        let many = series
            .get(&(domain.clone(), *asn))
            .cloned()
            .unwrap_or_default();
        assert_eq!(many, one, "{domain} {asn}");
        let one = s
            .event_states(EventKind::NewBlock, Some(domain), *asn)
            .await
            .unwrap();
        let many = states
            .get(&(domain.clone(), *asn))
            .cloned()
            .unwrap_or_default();
        assert_eq!(many, one, "{domain} {asn}");
    }
    assert_eq!(series[&("a.test".to_string(), 9198)].len(), 3);
    assert_eq!(states[&("example.org".to_string(), 9198)].len(), 1);
}

both_stores!(
    export_pages_are_capped_in_bytes,
    block_activity_prefilter,
    batched_reads_equal_the_per_key_reads
);

/// A value bound into the statements of an old schema: times as that schema stored them.
enum Old<'a> {
    Time(DateTime<Utc>),
    Text(&'a str),
    Int(i64),
}

/// A database at an older schema version, written to with that version's time format
/// (SQLite: milliseconds; PostgreSQL: `timestamptz`).
enum OldDb {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
}

impl OldDb {
    /// Create the database of `url` with migrations `1..=version` (as shipped).
    async fn create(db: Db, url: &str, version: u32) -> OldDb {
        let dir = tempfile::tempdir().unwrap();
        let name = match db {
            Db::Sqlite => "sqlite",
            Db::Postgres => "postgres",
        };
        let src = format!("{}/migrations/{name}", env!("CARGO_MANIFEST_DIR"));
        for entry in std::fs::read_dir(&src).unwrap() {
            let file = entry.unwrap().file_name().into_string().unwrap();
            let v: u32 = file[..4].parse().unwrap();
            if v <= version {
                std::fs::copy(format!("{src}/{file}"), dir.path().join(&file)).unwrap();
            }
        }
        let migrator = sqlx::migrate::Migrator::new(dir.path()).await.unwrap();
        let old = match db {
            Db::Sqlite => OldDb::Sqlite(
                sqlx::SqlitePool::connect(&format!("{url}?mode=rwc"))
                    .await
                    .unwrap(),
            ),
            Db::Postgres => OldDb::Postgres(sqlx::PgPool::connect(url).await.unwrap()),
        };
        match &old {
            OldDb::Sqlite(p) => migrator.run(p).await.unwrap(),
            OldDb::Postgres(p) => migrator.run(p).await.unwrap(),
        }
        old
    }

    /// Run one statement written with `?` parameters.
    async fn exec(&self, sql: &str, values: &[Old<'_>]) {
        match self {
            OldDb::Sqlite(pool) => {
                let mut q = sqlx::query(sql);
                for v in values {
                    q = match v {
                        Old::Time(t) => q.bind(t.timestamp_millis()),
                        Old::Text(s) => q.bind(*s),
                        Old::Int(i) => q.bind(*i),
                    };
                }
                q.execute(pool).await.unwrap();
            }
            OldDb::Postgres(pool) => {
                let mut numbered = String::new();
                let mut n = 0;
                for c in sql.chars() {
                    if c == '?' {
                        n += 1;
                        numbered.push_str(&format!("${n}"));
                    } else {
                        numbered.push(c);
                    }
                }
                let mut q = sqlx::query(&numbered);
                for v in values {
                    q = match v {
                        Old::Time(t) => q.bind(*t),
                        Old::Text(s) => q.bind(*s),
                        Old::Int(i) => q.bind(*i),
                    };
                }
                q.execute(pool).await.unwrap();
            }
        }
    }

    async fn close(self) {
        match self {
            OldDb::Sqlite(p) => p.close().await,
            OldDb::Postgres(p) => p.close().await,
        }
    }
}

/// A database created by the previous schema (v3: SQLite in milliseconds, PostgreSQL in
/// `timestamptz`) migrates to microseconds without losing or moving anything: every time reads
/// back exactly as stored (PostgreSQL's to the microsecond), the compare-and-set of events
/// still matches the stored decision time, the outbox row is still due, the read model still
/// answers, and on PostgreSQL the month partitions are attached to the new table and take new
/// rows.
async fn times_survive_the_move_to_microseconds(db: Db) {
    let (url, _guard) = common::fresh_store(db);
    let old = OldDb::create(db, &url, 3).await;
    let exact = |s: &str| {
        let t = DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        match db {
            // v3 on SQLite kept milliseconds.
            Db::Sqlite => DateTime::from_timestamp_millis(t.timestamp_millis()).unwrap(),
            Db::Postgres => t,
        }
    };
    let created = exact("2024-01-02T03:04:05.678901Z");
    let expires = exact("2030-06-01T00:00:00.000001Z");
    let seen = exact("2024-02-01T00:10:00.5Z");
    let m1_at = exact("2024-01-31T23:59:59.123456Z");
    let m2_at = exact("2024-02-01T00:00:00.000999Z");
    let received = exact("2024-02-01T00:05:00.25Z");
    let decided = exact("2024-02-01T00:06:00.654321Z");
    let due = exact("2024-02-01T00:06:01.1Z");
    let (m1, m2) = (
        "00000000-0000-7000-8000-0000000000a1",
        "00000000-0000-7000-8000-0000000000a2",
    );
    if let OldDb::Postgres(_) = &old {
        for (name, from, to) in [
            ("measurements_p202401", "2024-01-01", "2024-02-01"),
            ("measurements_p202402", "2024-02-01", "2024-03-01"),
        ] {
            old.exec(
                &format!(
                    "CREATE TABLE {name} PARTITION OF measurements \
                     FOR VALUES FROM ('{from} 00:00:00+00') TO ('{to} 00:00:00+00')"
                ),
                &[],
            )
            .await;
        }
    }
    old.exec(
        "INSERT INTO invites (id, token_hash, max_uses, created_at, expires_at) \
         VALUES ('inv1', 'hash-inv1', 5, ?, ?)",
        &[Old::Time(created), Old::Time(expires)],
    )
    .await;
    old.exec(
        "INSERT INTO probes (id, token_hash, invite_id, created_at, last_seen_at) \
         VALUES ('p1', 'hash-p1', 'inv1', ?, ?)",
        &[Old::Time(created), Old::Time(seen)],
    )
    .await;
    let uuid = match db {
        Db::Sqlite => "?",
        Db::Postgres => "CAST(? AS uuid)",
    };
    for (id, at, domain, status, method) in [
        (m1, m1_at, "a.test", "blocked", "tls"),
        (m2, m2_at, "b.test", "blocked", "dns"),
    ] {
        old.exec(
            &format!(
                "INSERT INTO measurements (id, probe_id, received_at, started_at, domain, url, \
                 category, asn, country, status, method, reason, software_version, body) \
                 VALUES ({uuid}, 'p1', ?, ?, ?, '', 'NEWS', 9198, 'KZ', ?, ?, '', '', '{{}}')"
            ),
            &[
                Old::Text(id),
                Old::Time(received),
                Old::Time(at),
                Old::Text(domain),
                Old::Text(status),
                Old::Text(method),
            ],
        )
        .await;
        if db == Db::Postgres {
            old.exec(
                "INSERT INTO measurement_ids (id, started_at) VALUES (CAST(? AS uuid), ?)",
                &[Old::Text(id), Old::Time(at)],
            )
            .await;
        }
        // The read model as v3's ingest kept it.
        old.exec(
            "INSERT INTO latest_verdicts (domain, asn, probe_id, started_at, measurement_id, \
             status, method, category, country) VALUES (?, 9198, 'p1', ?, ?, ?, ?, 'NEWS', 'KZ')",
            &[
                Old::Text(domain),
                Old::Time(at),
                Old::Text(id),
                Old::Text(status),
                Old::Text(method),
            ],
        )
        .await;
        old.exec(
            "INSERT INTO blocked_methods (domain, asn, method, last_at) VALUES (?, 9198, ?, ?)",
            &[Old::Text(domain), Old::Text(method), Old::Time(at)],
        )
        .await;
    }
    old.exec(
        "INSERT INTO events (id, kind, domain, asn, method, country, category, started_at, \
         open_decided_at, evidence, created_at) \
         VALUES ('e1', 'new_block', 'a.test', 9198, 'tls', 'KZ', 'NEWS', ?, ?, ?, ?)",
        &[
            Old::Time(m1_at),
            Old::Time(decided),
            Old::Text(&serde_json::to_string(&Evidence::default()).unwrap()),
            Old::Time(decided),
        ],
    )
    .await;
    old.exec(
        "INSERT INTO outbox (event_id, transition, url, created_at, attempts, next_attempt_at) \
         VALUES ('e1', 'new_block', 'http://127.0.0.1:9/hook', ?, ?, ?)",
        &[Old::Time(decided), Old::Int(1), Old::Time(due)],
    )
    .await;
    old.close().await;

    let s = open_url(&url).await;
    let tokens = s.list_tokens().await.unwrap();
    let invite = tokens.iter().find(|t| t.id == "inv1").unwrap();
    assert_eq!(
        (invite.created_at, invite.expires_at),
        (created, Some(expires))
    );
    let probe = tokens.iter().find(|t| t.id == "p1").unwrap();
    assert_eq!(
        (probe.created_at, probe.last_seen_at),
        (created, Some(seen))
    );
    let all = Filter {
        limit: 100,
        ..Filter::default()
    };
    let got: Vec<_> = s
        .measurements(&all)
        .await
        .unwrap()
        .into_iter()
        .map(|m| (m.id.to_string(), m.started_at, m.received_at))
        .collect();
    assert_eq!(
        got,
        vec![
            (m1.to_string(), m1_at, received),
            (m2.to_string(), m2_at, received)
        ]
    );
    // The read model and the event state, to the microsecond.
    let since = m1_at - TimeDelta::hours(1);
    let latest = s
        .latest_groups(&Filter {
            since: Some(since),
            domain: Some("a.test".into()),
            ..Filter::default()
        })
        .await
        .unwrap();
    assert_eq!(latest.len(), 1);
    assert_eq!(latest[0].last_measured, m1_at);
    assert_eq!(
        s.blocked_methods_seen(m2_at).await.unwrap(),
        vec![("b.test".to_string(), 9198, Method::Dns)]
    );
    let states = s
        .event_states(EventKind::NewBlock, Some("a.test"), 9198)
        .await
        .unwrap();
    assert_eq!(states.len(), 1);
    assert_eq!(
        (states[0].open_since, states[0].floor),
        (Some(m1_at), Some(decided))
    );
    assert_eq!(
        s.events(&all).await.unwrap()[0].started_at,
        m1_at,
        "event start"
    );
    // The outbox row is due exactly from its old time on.
    assert!(s
        .claim_notifications(due - TimeDelta::microseconds(1), due, 10)
        .await
        .unwrap()
        .is_empty());
    let claimed = s
        .claim_notifications(due, due + TimeDelta::minutes(1), 10)
        .await
        .unwrap();
    assert_eq!((claimed.len(), claimed[0].attempts), (1, 1));
    // The compare-and-set matches the migrated decision time.
    let closed = s
        .close_event(
            &CloseEvent {
                key: key_of("a.test"),
                ended_at: m2_at,
                decided_at: due,
                floor: Some(decided),
                evidence: Evidence::default(),
            },
            &[],
        )
        .await
        .unwrap();
    assert_eq!(closed.map(|e| e.ended_at), Some(Some(m2_at)));
    // New rows land in the converted months, in order with the old ones.
    let m3_at = exact("2024-01-15T12:00:00.000007Z");
    let mut m3 = verdict("a.test", 9198, m3_at, Status::Accessible, None);
    m3.received_at = Utc::now();
    assert_eq!(
        s.insert_measurements("p1", Utc::now(), &[m3.clone()])
            .await
            .unwrap(),
        vec![true]
    );
    let order: Vec<_> = s
        .measurements(&all)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.started_at)
        .collect();
    assert_eq!(order, vec![m3_at, m1_at, m2_at]);
    if db == Db::Postgres {
        let pool = sqlx::PgPool::connect(&url).await.unwrap();
        let january: i64 = sqlx::query_scalar("SELECT count(*) FROM measurements_p202401")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(january, 2, "m1 and m3 are in January's partition");
        let attached: Vec<String> = sqlx::query_scalar(
            "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
             WHERE i.inhparent = 'measurements'::regclass ORDER BY 1",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        assert!(attached.starts_with(&[
            "measurements_p202401".to_string(),
            "measurements_p202402".to_string()
        ]));
        pool.close().await;
    }
}

fn key_of(domain: &str) -> EventKey {
    EventKey {
        domain: Some(domain.into()),
        ..key()
    }
}

both_stores!(times_survive_the_move_to_microseconds);

// ------------------------------------------------------------------ where the censor sits

/// A blocked verdict of `domain` on AS9198 naming the censor at `hop` (in `asn`).
fn placed(domain: &str, at: DateTime<Utc>, hop: u8, asn: Option<u32>) -> MeasurementRecord {
    let mut r = verdict(domain, 9198, at, Status::Blocked, Some(Method::Tcp));
    r.censor_hop = Some(hop);
    r.censor_asn = asn;
    r
}

/// The read model's censor places of one site, as `(hop, asn, probes, run)`.
async fn places_of(s: &dyn Store, domain: &str) -> Vec<(u8, Option<u32>, u64, u64)> {
    let mut v: Vec<_> = s
        .place_groups(&Filter {
            since: Some(t(-600)),
            domain: Some(domain.into()),
            ..Filter::default()
        })
        .await
        .unwrap()
        .into_iter()
        .map(|g| (g.place.hop, g.place.asn, g.probes, g.run))
        .collect();
    v.sort();
    v
}

/// `latest_verdicts` keeps each probe's latest censor place and the run of its consecutive
/// verdicts naming it, across batches; an older, back-filled record changes nothing; a batch
/// that names another place in between restarts the run; the series carries the place.
async fn read_model_keeps_the_censor_place_and_its_run(db: Db) {
    let (s, _, _guard) = open(db).await;
    for p in ["p1", "p2"] {
        probe(s.as_ref(), p).await;
    }
    let now = Utc::now();
    let (k, r) = (Some(9198), Some(21299));
    s.insert_measurements(
        "p1",
        now,
        &[placed("a.test", t(0), 3, k), placed("a.test", t(1), 3, k)],
    )
    .await
    .unwrap();
    s.insert_measurements("p1", now, &[placed("a.test", t(2), 3, k)])
        .await
        .unwrap();
    s.insert_measurements(
        "p2",
        now,
        &[placed("a.test", t(0), 3, k), placed("a.test", t(1), 5, r)],
    )
    .await
    .unwrap();
    assert_eq!(
        places_of(s.as_ref(), "a.test").await,
        vec![(3, k, 1, 3), (5, r, 1, 1)]
    );
    // Back-filled, older: the latest verdict stays.
    s.insert_measurements("p1", now, &[placed("a.test", t(-5), 7, None)])
        .await
        .unwrap();
    assert_eq!(
        places_of(s.as_ref(), "a.test").await,
        vec![(3, k, 1, 3), (5, r, 1, 1)]
    );
    // p1 names hop 5 then hop 3 again in one batch: its run at hop 3 starts afresh.
    s.insert_measurements(
        "p1",
        now,
        &[placed("a.test", t(3), 5, r), placed("a.test", t(4), 3, k)],
    )
    .await
    .unwrap();
    // p2 at hop 5 once more: its run grows.
    s.insert_measurements("p2", now, &[placed("a.test", t(3), 5, r)])
        .await
        .unwrap();
    assert_eq!(
        places_of(s.as_ref(), "a.test").await,
        vec![(3, k, 1, 1), (5, r, 1, 2)]
    );
    // Accessible now: p2 names no place any more.
    s.insert_measurements(
        "p2",
        now,
        &[verdict("a.test", 9198, t(5), Status::Accessible, None)],
    )
    .await
    .unwrap();
    assert_eq!(places_of(s.as_ref(), "a.test").await, vec![(3, k, 1, 1)]);
    let series = s.site_series("a.test", 9198, t(-600)).await.unwrap();
    assert_eq!(series.len(), 10);
    let last_of_p1 = series
        .iter()
        .filter(|o| o.probe == "p1")
        .max_by_key(|o| o.at)
        .unwrap();
    assert_eq!((last_of_p1.censor_hop, last_of_p1.censor_asn), (Some(3), k));
    // And the raw record keeps them too.
    let m = s
        .measurements(&Filter {
            domain: Some("a.test".into()),
            limit: 100,
            ..Filter::default()
        })
        .await
        .unwrap();
    assert!(m
        .iter()
        .any(|x| x.censor_hop == Some(5) && x.censor_asn == r));
}

fn place_decision(hop: u8, asn: Option<u32>, decided: i64, blocked: bool) -> PlaceDecision {
    PlaceDecision {
        domain: "a.test".into(),
        asn: 9198,
        country: Some("KZ".into()),
        category: Some("NEWS".into()),
        place: CensorPlace { hop, asn },
        agreeing: 2,
        decided_at: t(decided),
        started_at: t(decided - 1),
        blocked,
        event_id: uuid::Uuid::now_v7().to_string(),
        evidence: Evidence {
            probes: 2,
            probes_considered: 2,
            rule: "probes".into(),
            censor: Some(CensorPlace { hop, asn }),
            ..Evidence::default()
        },
    }
}

/// The first agreed place is remembered; a different one while blocked raises one
/// `block_moved` (with both places, already ended, notifications queued); the same decision
/// again, an older one, or two replicas deciding the same change at once raise nothing more;
/// a change while not blocked is remembered without an event.
async fn censor_place_changes_raise_block_moved_once(db: Db) {
    let (s, url, _guard) = open(db).await;
    let urls = vec!["http://127.0.0.1:9/hook".to_string()];
    let record = |d: PlaceDecision| {
        let s = s.clone();
        let urls = urls.clone();
        async move { s.record_censor_place(&d, &urls).await.unwrap() }
    };
    assert!(record(place_decision(3, Some(9198), 1, true))
        .await
        .is_none());
    assert!(record(place_decision(3, Some(9198), 2, true))
        .await
        .is_none());
    let moved = record(place_decision(5, Some(21299), 3, true))
        .await
        .expect("the block moved");
    assert_eq!(moved.kind, EventKind::BlockMoved);
    assert_eq!(moved.domain.as_deref(), Some("a.test"));
    assert_eq!(moved.ended_at, Some(moved.started_at));
    assert_eq!(
        moved.evidence.previous_censor,
        Some(CensorPlace {
            hop: 3,
            asn: Some(9198)
        })
    );
    assert_eq!(
        moved.evidence.censor,
        Some(CensorPlace {
            hop: 5,
            asn: Some(21299)
        })
    );
    // Not again for the same time, nor for an older decision.
    assert!(record(place_decision(3, Some(9198), 3, true))
        .await
        .is_none());
    assert!(record(place_decision(7, None, 2, true)).await.is_none());
    // Two replicas decide the same change at the same time: one event.
    let other = open_url(&url).await;
    let d = place_decision(6, None, 4, true);
    let mut d2 = d.clone();
    d2.event_id = uuid::Uuid::now_v7().to_string();
    let (a, b) = tokio::join!(
        s.record_censor_place(&d, &urls),
        other.record_censor_place(&d2, &urls)
    );
    assert_eq!(
        u8::from(a.unwrap().is_some()) + u8::from(b.unwrap().is_some()),
        1
    );
    // Not blocked: remembered, no event; blocked again at that place: nothing moved.
    assert!(record(place_decision(8, None, 5, false)).await.is_none());
    assert!(record(place_decision(8, None, 6, true)).await.is_none());
    let events = s
        .events(&Filter {
            kind: Some(EventKind::BlockMoved),
            limit: 10,
            ..Filter::default()
        })
        .await
        .unwrap();
    assert_eq!(events.len(), 2, "{events:?}");
    assert!(events.iter().all(|e| e.ended_at.is_some()));
    let now = Utc::now();
    let notes = s
        .claim_notifications(now, now + TimeDelta::minutes(5), 10)
        .await
        .unwrap();
    assert_eq!(notes.len(), 2);
    assert!(notes
        .iter()
        .all(|n| n.transition == Transition::BlockMoved && n.event.kind == EventKind::BlockMoved));
    // Nothing of it counts as an open event.
    assert!(s
        .events(&Filter {
            open: Some(true),
            limit: 10,
            ..Filter::default()
        })
        .await
        .unwrap()
        .is_empty());
}

/// A database at v5 with localised records gets the censor's place on upgrade: the read model
/// from each latest verdict's record, and the recent measurements from theirs.
async fn censor_places_are_back_filled_on_upgrade(db: Db) {
    let (url, _guard) = common::fresh_store(db);
    let old = OldDb::create(db, &url, 5).await;
    let now = Utc::now();
    let at = now - TimeDelta::hours(1);
    let us = |t: DateTime<Utc>| t.timestamp_micros();
    if let OldDb::Postgres(_) = &old {
        let month = |t: DateTime<Utc>| {
            use chrono::Datelike;
            Utc.with_ymd_and_hms(t.year(), t.month(), 1, 0, 0, 0)
                .unwrap()
        };
        let from = month(at);
        let to = month(from + TimeDelta::days(32));
        // Named as the store names it, so that it is not created again on open.
        let name = {
            use chrono::Datelike;
            store::postgres::partition_name((from.year(), from.month()))
        };
        old.exec(
            &format!(
                "CREATE TABLE {name} PARTITION OF measurements FOR VALUES FROM ({}) TO ({})",
                us(from),
                us(to)
            ),
            &[],
        )
        .await;
    }
    let uuid = match db {
        Db::Sqlite => "?",
        Db::Postgres => "CAST(? AS uuid)",
    };
    for (probe, hop) in [("p1", 4u8), ("p2", 4), ("p3", 0)] {
        old.exec(
            "INSERT INTO probes (id, token_hash, created_at) VALUES (?, ?, ?)",
            &[
                Old::Text(probe),
                Old::Text(&format!("hash-{probe}")),
                Old::Int(us(now)),
            ],
        )
        .await;
        let m = measurement("a.test", 9198, Status::Blocked, Some(Method::Tcp), at);
        let m = if hop > 0 {
            common::located(m, hop, Some(21299))
        } else {
            m
        };
        let id = m.id.to_string();
        let body = serde_json::to_string(&m).unwrap();
        old.exec(
            &format!(
                "INSERT INTO measurements (id, probe_id, received_at, started_at, domain, url, \
                 category, asn, country, status, method, reason, software_version, body) \
                 VALUES ({uuid}, ?, ?, ?, 'a.test', '', 'NEWS', 9198, 'KZ', 'blocked', 'tcp', \
                 '', '', ?)"
            ),
            &[
                Old::Text(&id),
                Old::Text(probe),
                Old::Int(us(now)),
                Old::Int(us(at)),
                Old::Text(&body),
            ],
        )
        .await;
        if db == Db::Postgres {
            old.exec(
                "INSERT INTO measurement_ids (id, started_at) VALUES (CAST(? AS uuid), ?)",
                &[Old::Text(&id), Old::Int(us(at))],
            )
            .await;
        }
        old.exec(
            "INSERT INTO latest_verdicts (domain, asn, probe_id, started_at, measurement_id, \
             status, method, category, country) \
             VALUES ('a.test', 9198, ?, ?, ?, 'blocked', 'tcp', 'NEWS', 'KZ')",
            &[Old::Text(probe), Old::Int(us(at)), Old::Text(&id)],
        )
        .await;
    }
    old.close().await;
    let s = open_url(&url).await;
    let groups = s
        .place_groups(&Filter {
            since: Some(now - TimeDelta::hours(6)),
            ..Filter::default()
        })
        .await
        .unwrap();
    assert_eq!(groups.len(), 1, "{groups:?}");
    assert_eq!(
        groups[0].place,
        CensorPlace {
            hop: 4,
            asn: Some(21299)
        }
    );
    assert_eq!((groups[0].probes, groups[0].run), (2, 1));
    let series = s
        .site_series("a.test", 9198, now - TimeDelta::hours(6))
        .await
        .unwrap();
    assert_eq!(series.len(), 3);
    assert_eq!(
        series.iter().filter(|o| o.censor_hop == Some(4)).count(),
        2,
        "{series:?}"
    );
    assert!(series
        .iter()
        .filter(|o| o.censor_hop.is_some())
        .all(|o| o.censor_asn == Some(21299)));
}

both_stores!(
    read_model_keeps_the_censor_place_and_its_run,
    censor_place_changes_raise_block_moved_once,
    censor_places_are_back_filled_on_upgrade,
);
