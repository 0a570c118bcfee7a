//! Scale-out: three real `witness-collector` processes on one real PostgreSQL. Simulated probes
//! upload gzip batches to replicas at random, some batches to two replicas at once (a retry
//! racing the original), and one replica is killed with SIGKILL mid-stream; uploads that fail
//! are retried on another replica, as a probe's spool does.
//!
//! Then: every acknowledged measurement is stored exactly once; each new block raised exactly
//! one event (and its webhook went out, at least once, by whichever replica claimed it); the
//! state gauges are the same whichever replica is scraped; and each replica's counters add up
//! to what it acknowledged (counters are per process: aggregate with `sum without(instance)`).
//!
//! Skips loudly without PostgreSQL (fails under WITNESS_REQUIRE_TOOLS=1).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use rand::Rng;
use serde_json::Value;
use uuid::Uuid;
use witness_core::model::{Measurement, Method, Status};
use witness_tests::collector::get;
use witness_tests::postgres;
use witness_tests::{CollectorProcess, WebhookReceiver};

const REPLICAS: usize = 3;
/// The network where some sites are blocked, and one where nothing is.
const ASN_CENSORED: u32 = 64500;
const ASN_FREE: u32 = 64501;
const PROBES_CENSORED: usize = 6;
const PROBES_FREE: usize = 4;
const SITES: usize = 30;
const ROUNDS: usize = 8;
/// Sites 0..5 are blocked by SNI filtering, 5..10 by DNS, on ASN_CENSORED.
const TLS_BLOCKED: std::ops::Range<usize> = 0..5;
const DNS_BLOCKED: std::ops::Range<usize> = 5..10;

fn site(i: usize) -> String {
    format!("site{i:02}.scale.test")
}

fn verdict(asn: u32, i: usize) -> (Status, Option<Method>) {
    if asn == ASN_CENSORED && TLS_BLOCKED.contains(&i) {
        (Status::Blocked, Some(Method::Tls))
    } else if asn == ASN_CENSORED && DNS_BLOCKED.contains(&i) {
        (Status::Blocked, Some(Method::Dns))
    } else {
        (Status::Accessible, None)
    }
}

/// One probe run: every site once.
fn run_batch(asn: u32, probe: usize, at: DateTime<Utc>) -> Vec<Measurement> {
    (0..SITES)
        .map(|i| {
            let (status, method) = verdict(asn, i);
            let at = at + TimeDelta::milliseconds((probe * 1000 + i * 50) as i64);
            witness_tests::measurement(&site(i), asn, status, method, at)
        })
        .collect()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(data).expect("gzip");
    enc.finish().expect("gzip")
}

/// What the probes saw.
#[derive(Default)]
struct Acks {
    /// Ids acknowledged (accepted or duplicate) by anyone.
    acked: HashSet<Uuid>,
    /// Per replica, ids it answered "accepted" for.
    accepted_by: Vec<Vec<Uuid>>,
    /// Uploads that failed (connection refused or reset by the killed replica) and were retried.
    retried: usize,
    /// Batches sent to two replicas at once.
    raced: usize,
}

struct Fleet {
    urls: Vec<String>,
    alive: Mutex<Vec<bool>>,
    client: reqwest::Client,
    acks: Mutex<Acks>,
    batches_done: AtomicUsize,
}

impl Fleet {
    fn live(&self) -> Vec<usize> {
        let alive = self.alive.lock().expect("lock");
        (0..alive.len()).filter(|&i| alive[i]).collect()
    }

    async fn post(&self, replica: usize, token: &str, body: Vec<u8>) -> Result<Value, String> {
        let r = self
            .client
            .post(format!("{}api/v1/measurements", self.urls[replica]))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .header("content-encoding", "gzip")
            .body(body)
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if r.status() != 200 {
            return Err(format!("HTTP {}", r.status()));
        }
        r.json().await.map_err(|e| e.to_string())
    }

    fn record(&self, replica: usize, reply: &Value) {
        let ids = |k: &str| -> Vec<Uuid> {
            reply[k]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str()?.parse().ok())
                .collect()
        };
        let accepted = ids("accepted");
        let mut acks = self.acks.lock().expect("lock");
        acks.acked.extend(accepted.iter().copied());
        acks.acked.extend(ids("duplicates"));
        acks.accepted_by[replica].extend(accepted);
        assert_eq!(
            reply["rejected"].as_array().map_or(0, Vec::len),
            0,
            "{reply}"
        );
    }

    /// Upload one batch until some replica acknowledges it; sometimes to two at once.
    async fn upload(&self, token: &str, batch: &[Measurement]) {
        let body =
            gzip(&serde_json::to_vec(&serde_json::json!({ "measurements": batch })).unwrap());
        loop {
            let live = self.live();
            assert!(!live.is_empty(), "no replica left");
            let (first, second, race) = {
                let mut rng = rand::rng();
                let first = live[rng.random_range(0..live.len())];
                let second = live[rng.random_range(0..live.len())];
                (first, second, second != first && rng.random_bool(0.3))
            };
            let replies = if race {
                self.acks.lock().expect("lock").raced += 1;
                let (a, b) = tokio::join!(
                    self.post(first, token, body.clone()),
                    self.post(second, token, body.clone())
                );
                vec![(first, a), (second, b)]
            } else {
                vec![(first, self.post(first, token, body.clone()).await)]
            };
            let mut ok = false;
            for (replica, reply) in replies {
                match reply {
                    Ok(v) => {
                        self.record(replica, &v);
                        ok = true;
                    }
                    Err(_) => self.acks.lock().expect("lock").retried += 1,
                }
            }
            if ok {
                self.batches_done.fetch_add(1, Ordering::SeqCst);
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// `name{labels}` → value, for the metric families given.
fn samples(text: &str, families: &[&str]) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            families
                .iter()
                .any(|f| l.starts_with(&format!("{f}{{")) || l.starts_with(&format!("{f} ")))
        })
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

fn sum_of(text: &str, family: &str) -> f64 {
    samples(text, &[family]).values().sum()
}

fn metrics(url: &str) -> String {
    let (status, body) = get(&format!("{url}metrics")).expect("scrape");
    assert_eq!(status, 200, "{body}");
    body
}

fn json(url: &str) -> Value {
    let (status, body) = get(url).expect("GET");
    assert_eq!(status, 200, "{url}: {body}");
    serde_json::from_str(&body).expect("JSON")
}

#[test]
fn replicas_on_one_postgres_store_each_measurement_once_and_raise_each_event_once() {
    let started = Instant::now();
    let Some(db) = postgres::fresh_database("scale_replicas") else {
        return;
    };
    let hook = WebhookReceiver::start().expect("webhook receiver");
    let dir = tempfile::tempdir().expect("temp dir");

    // Three collectors started at the same moment on an empty database: they migrate once
    // (sqlx holds an advisory lock) and share everything else through it.
    let configs: Vec<PathBuf> = (0..REPLICAS)
        .map(|i| {
            let config = dir.path().join(format!("replica{i}.toml"));
            let text = format!(
                "[server]\nlisten = \"127.0.0.1:0\"\n\
                 [store]\nurl = \"{url}\"\nmax_connections = 8\n\
                 [ingest]\nuploads_per_minute = 100000\nupload_burst = 100000\n\
                 [aggregation]\nevaluate_interval = \"2s\"\n\
                 [metrics]\nresync_interval = \"1s\"\n\
                 [webhook]\nurls = [\"{hook}\"]\nformat = \"generic\"\n\
                 initial_backoff = \"100ms\"\ntimeout = \"5s\"\n",
                url = db.url,
                hook = hook.url,
            );
            std::fs::write(&config, text).expect("config");
            config
        })
        .collect();
    let unused = dir.path().join("unused.db");
    let replicas: Vec<CollectorProcess> = std::thread::scope(|s| {
        let handles: Vec<_> = configs
            .iter()
            .map(|c| s.spawn(|| CollectorProcess::start_with(c, &unused).expect("replica starts")))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("start"))
            .collect()
    });
    let urls: Vec<String> = replicas.iter().map(|r| r.url.clone()).collect();
    let replicas = Arc::new(Mutex::new(replicas));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("runtime");

    let fleet = Arc::new(Fleet {
        urls: urls.clone(),
        alive: Mutex::new(vec![true; REPLICAS]),
        client: reqwest::Client::new(),
        acks: Mutex::new(Acks {
            accepted_by: vec![Vec::new(); REPLICAS],
            ..Acks::default()
        }),
        batches_done: AtomicUsize::new(0),
    });

    // Probes register wherever they land: a token is valid on every replica.
    let probes: Vec<(u32, usize, String)> = rt.block_on(async {
        let mut out = Vec::new();
        let networks = [(ASN_CENSORED, PROBES_CENSORED), (ASN_FREE, PROBES_FREE)];
        for (asn, n) in networks {
            for p in 0..n {
                let url = &urls[out.len() % REPLICAS];
                let r = fleet
                    .client
                    .post(format!("{url}api/v1/register"))
                    .send()
                    .await
                    .expect("register");
                assert_eq!(r.status(), 200);
                let v: Value = r.json().await.expect("json");
                out.push((asn, p, v["token"].as_str().expect("token").to_string()));
            }
        }
        out
    });

    let t0 = Utc::now() - TimeDelta::hours(2);
    let batches: Vec<(String, Vec<Measurement>)> = (0..ROUNDS)
        .flat_map(|round| {
            probes.iter().map(move |(asn, p, token)| {
                let at = t0 + TimeDelta::minutes(10 * round as i64);
                (token.clone(), run_batch(*asn, *p, at))
            })
        })
        .collect();
    let all_ids: BTreeSet<Uuid> = batches
        .iter()
        .flat_map(|(_, b)| b.iter().map(|m| m.id))
        .collect();
    let total_batches = batches.len();

    rt.block_on(async {
        // Each probe uploads its own runs in order, all probes at once.
        let mut per_probe: HashMap<String, Vec<Vec<Measurement>>> = HashMap::new();
        for (token, batch) in batches {
            per_probe.entry(token).or_default().push(batch);
        }
        let mut tasks = Vec::new();
        for (token, runs) in per_probe {
            let fleet = fleet.clone();
            tasks.push(tokio::spawn(async move {
                for run in runs {
                    fleet.upload(&token, &run).await;
                }
            }));
        }
        // The crash: SIGKILL replica 0 once 40% of the batches are in, with uploads in flight.
        let killer = {
            let fleet = fleet.clone();
            let replicas = replicas.clone();
            tokio::spawn(async move {
                while fleet.batches_done.load(Ordering::SeqCst) < total_batches * 2 / 5 {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                replicas.lock().expect("lock")[0].kill9();
                fleet.alive.lock().expect("lock")[0] = false;
            })
        };
        for t in tasks {
            t.await.expect("probe task");
        }
        killer.await.expect("killer");
    });
    let upload_time = started.elapsed();
    assert!(!replicas.lock().expect("lock")[0].is_running());

    let acks = std::mem::take(&mut *fleet.acks.lock().expect("lock"));
    eprintln!(
        "scale_replicas: {} batches ({} raced to two replicas, {} failed uploads retried), \
         accepted per replica {:?}, uploads done after {upload_time:?}",
        total_batches,
        acks.raced,
        acks.retried,
        acks.accepted_by.iter().map(Vec::len).collect::<Vec<_>>()
    );
    assert!(acks.raced > 0, "no batch was raced");

    // Every acknowledged measurement is stored exactly once.
    assert_eq!(acks.acked.len(), all_ids.len());
    // No record is answered "accepted" twice. (Fewer than all may be: a batch the killed
    // replica committed but could not answer is "duplicates" on its retry.)
    let accepted: Vec<Uuid> = acks.accepted_by.iter().flatten().copied().collect();
    let distinct: HashSet<&Uuid> = accepted.iter().collect();
    assert_eq!(
        distinct.len(),
        accepted.len(),
        "a record was accepted twice"
    );
    let counts = db
        .psql(
            "SELECT (SELECT count(*) FROM measurements) || ',' || \
                    (SELECT count(DISTINCT id) FROM measurements) || ',' || \
                    (SELECT count(*) FROM measurement_ids)",
        )
        .expect("psql");
    let n = all_ids.len();
    assert_eq!(counts, format!("{n},{n},{n}"), "stored, distinct, ids");
    let export = json(&format!("{}api/v1/measurements?limit=10000", urls[1]));
    let exported: Vec<Uuid> = export["measurements"]
        .as_array()
        .expect("measurements")
        .iter()
        .map(|m| m["id"].as_str().expect("id").parse().expect("uuid"))
        .collect();
    assert_eq!(exported.len(), n);
    assert_eq!(exported.iter().copied().collect::<BTreeSet<_>>(), all_ids);

    // Exactly one event per blocked site and method, none on the free network: the survivors'
    // sweep (every 2 s) finishes whatever the killed replica committed but never evaluated.
    let expected: BTreeSet<(String, String)> = TLS_BLOCKED
        .map(|i| (site(i), "tls".to_string()))
        .chain(DNS_BLOCKED.map(|i| (site(i), "dns".to_string())))
        .collect();
    let events_of = |url: &str| -> Vec<Value> {
        json(&format!("{url}api/v1/events?limit=1000"))["events"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while events_of(&urls[1]).len() < expected.len() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    // Two more sweeps on both survivors: nothing is raised twice.
    std::thread::sleep(Duration::from_secs(4));
    let events = events_of(&urls[2]);
    let keys: Vec<(String, String)> = events
        .iter()
        .map(|e| {
            assert_eq!(e["kind"], "new_block", "{e}");
            assert_eq!(e["asn"], ASN_CENSORED, "{e}");
            assert!(e["ended_at"].is_null(), "{e}");
            (
                e["domain"].as_str().expect("domain").to_string(),
                e["method"].as_str().expect("method").to_string(),
            )
        })
        .collect();
    assert_eq!(keys.len(), expected.len(), "{events:#?}");
    assert_eq!(keys.into_iter().collect::<BTreeSet<_>>(), expected);
    assert_eq!(
        db.psql("SELECT count(*) FROM events").expect("psql"),
        expected.len().to_string()
    );

    // One webhook per event (delivery is at least once: a replica killed between POST and
    // marking it delivered would let another one deliver it again after the lease, so a second
    // copy is tolerated, never a second event).
    let event_ids: BTreeSet<String> = events
        .iter()
        .map(|e| e["id"].as_str().expect("id").to_string())
        .collect();
    let notified = || -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for body in hook.bodies() {
            let v: Value = serde_json::from_str(&body).expect("webhook JSON");
            assert_eq!(v["transition"], "new_block", "{v}");
            *m.entry(v["event"]["id"].as_str().expect("id").to_string())
                .or_insert(0) += 1;
        }
        m
    };
    // The lease of a notification claimed by the killed replica is the webhook timeout + 60 s.
    let deadline = Instant::now() + Duration::from_secs(90);
    while notified().len() < event_ids.len() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let notified = notified();
    assert_eq!(
        notified.keys().cloned().collect::<BTreeSet<_>>(),
        event_ids,
        "webhooks for other events than the stored ones"
    );
    let repeated: Vec<_> = notified.iter().filter(|(_, &n)| n > 1).collect();
    assert!(repeated.len() <= 1, "{repeated:?}");

    // Metrics: each replica keeps the state gauges in memory and merges the database's read
    // model every `metrics.resync_interval` (1 s here), so the survivors agree within it;
    // counters are per process and add up to what each acknowledged.
    let gauges = [
        "witness_site_blocked_ratio",
        "witness_probes_active",
        "witness_network_offline",
    ];
    let deadline = Instant::now() + Duration::from_secs(10);
    let (texts, a) = loop {
        let texts: Vec<String> = urls[1..].iter().map(|u| metrics(u)).collect();
        let a = samples(&texts[0], &gauges);
        let b = samples(&texts[1], &gauges);
        if a == b {
            break (texts, a);
        }
        assert!(
            Instant::now() < deadline,
            "replicas disagree on the state gauges after 10 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let blocked: Vec<_> = a
        .iter()
        .filter(|(k, v)| k.starts_with("witness_site_blocked_ratio{") && **v == 1.0)
        .collect();
    assert_eq!(blocked.len(), expected.len(), "{a:#?}");
    assert_eq!(
        a[&format!("witness_probes_active{{asn=\"{ASN_CENSORED}\",country=\"KZ\"}}")],
        PROBES_CENSORED as f64
    );
    for (i, text) in texts.iter().enumerate() {
        let replica = i + 1;
        assert_eq!(
            sum_of(text, "witness_measurements_received_total") as usize,
            acks.accepted_by[replica].len(),
            "replica {replica}: counter vs acknowledged"
        );
    }
    let events_counted: f64 = texts
        .iter()
        .map(|t| {
            samples(t, &["witness_events_total"])
                .get("witness_events_total{kind=\"new_block\"}")
                .copied()
                .unwrap_or(0.0)
        })
        .sum();
    assert!(
        events_counted <= expected.len() as f64,
        "survivors counted {events_counted} new blocks"
    );
    drop(replicas);
    eprintln!("scale_replicas: done in {:?}", started.elapsed());
}
