//! Shared test harness: the whole app on port 0 with a fresh store per test, SQLite or a real
//! PostgreSQL (a server per test process, a database per test; see
//! `witness_tests::postgres`). `both_stores!(test_a, test_b)` runs each `async fn test_a(db:
//! Db)` twice, as `test_a::sqlite` and `test_a::postgres`.
#![allow(dead_code, unused_macros)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use witness_collector::config::HumanDuration;
use witness_collector::{store, AppState, Config};
use witness_core::model::{
    HopReply, Measurement, PathAction, PathHop, PathObservation, PathTrigger,
};

/// Which store a test runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Db {
    /// A fresh SQLite file.
    Sqlite,
    /// A fresh database on the test process's PostgreSQL server.
    Postgres,
}

/// Runs each named `async fn NAME(db: Db)` as two tests, `NAME::sqlite` and `NAME::postgres`.
/// The PostgreSQL one skips loudly when PostgreSQL is not installed (fails under
/// `WITNESS_REQUIRE_TOOLS=1`).
macro_rules! both_stores {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test]
            async fn sqlite() {
                super::$name($crate::common::Db::Sqlite).await
            }
            #[tokio::test]
            async fn postgres() {
                if witness_tests::postgres::PgServer::available(concat!(
                    module_path!(), "::postgres"
                )) {
                    super::$name($crate::common::Db::Postgres).await
                }
            }
        }
    )*};
}

/// Keeps a test's store alive (and removes it afterwards).
pub enum StoreGuard {
    /// The directory of the SQLite file.
    Dir(tempfile::TempDir),
    /// The PostgreSQL database (dropped with the guard).
    Pg(witness_tests::postgres::PgDatabase),
    /// A store another guard keeps (a second replica's).
    Shared,
}

/// A fresh, empty store location: its URL and the guard that removes it.
pub fn fresh_store(db: Db) -> (String, StoreGuard) {
    match db {
        Db::Sqlite => {
            let dir = tempfile::tempdir().expect("tempdir");
            let url = format!("sqlite://{}", dir.path().join("collector.db").display());
            (url, StoreGuard::Dir(dir))
        }
        Db::Postgres => {
            let pg = witness_tests::postgres::fresh_database("collector store tests")
                .expect("PostgreSQL is installed (checked by both_stores!)");
            (pg.url.clone(), StoreGuard::Pg(pg))
        }
    }
}

pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub state: AppState,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    /// Last: the store goes after everything that uses it.
    _store: StoreGuard,
}

/// Defaults, with limits loose enough for tests and no background sweep.
pub fn test_config() -> Config {
    let mut c = Config::default();
    c.ingest.uploads_per_minute = 6000;
    c.ingest.upload_burst = 1000;
    // Every test probe registers from 127.0.0.1: one client, as far as the limits can tell.
    c.server.register_per_client_per_hour = 1000;
    c.aggregation.evaluate_interval = HumanDuration::from_secs(0);
    // Fresh test probes count at once, and events follow every change (tests of the guards
    // against fake probes set their own).
    c.aggregation.probe_min_age = HumanDuration::from_secs(0);
    c.aggregation.probe_min_hours = 0;
    c.aggregation.min_event = HumanDuration::from_secs(0);
    c.aggregation.min_gap = HumanDuration::from_secs(0);
    c.aggregation.max_transitions_per_hour = 0;
    c.aggregation.max_backfill = c.ingest.max_age;
    c.webhook.initial_backoff = HumanDuration(Duration::from_millis(50));
    c.webhook.max_backoff = HumanDuration(Duration::from_millis(200));
    c
}

/// The app on SQLite (tests that are not about the store).
pub async fn spawn(config: Config) -> TestApp {
    spawn_on(Db::Sqlite, config).await
}

/// The app on a fresh store of the given kind.
pub async fn spawn_on(db: Db, config: Config) -> TestApp {
    let (url, guard) = fresh_store(db);
    spawn_at(&url, guard, config).await
}

/// The app on the store at `url`, kept by `guard` (`StoreGuard::Shared` for a second replica of
/// a store another app keeps).
pub async fn spawn_at(url: &str, guard: StoreGuard, mut config: Config) -> TestApp {
    config.store.url = url.to_string();
    let store = store::open(&config.store).await.expect("open store");
    let state = AppState::new(config, store).expect("state");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(witness_collector::serve(
        listener,
        state.clone(),
        async move {
            let _ = rx.await;
        },
    ));
    TestApp {
        base: format!("http://{addr}"),
        client: reqwest::Client::new(),
        state,
        stop: Some(tx),
        task: Some(task),
        _store: guard,
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Register a probe; returns `(probe_id, token)`.
    pub async fn register(&self) -> (String, String) {
        let r = self
            .client
            .post(self.url("/api/v1/register"))
            .json(&serde_json::json!({}))
            .send()
            .await
            .expect("register");
        assert_eq!(r.status(), 200, "register");
        let v: Value = r.json().await.expect("json");
        (
            v["probe_id"].as_str().expect("probe_id").to_string(),
            v["token"].as_str().expect("token").to_string(),
        )
    }

    /// Upload raw JSON values as one batch.
    pub async fn upload_values(&self, token: &str, records: Vec<Value>) -> reqwest::Response {
        self.client
            .post(self.url("/api/v1/measurements"))
            .bearer_auth(token)
            .json(&serde_json::json!({ "measurements": records }))
            .send()
            .await
            .expect("upload")
    }

    /// Upload measurements; asserts 200 and returns the parsed answer.
    pub async fn upload(&self, token: &str, ms: &[Measurement]) -> Value {
        let values = ms
            .iter()
            .map(|m| serde_json::to_value(m).expect("serialize"))
            .collect();
        let r = self.upload_values(token, values).await;
        assert_eq!(r.status(), 200, "upload");
        r.json().await.expect("json")
    }

    pub async fn get_json(&self, path: &str) -> Value {
        let r = self.client.get(self.url(path)).send().await.expect("get");
        assert_eq!(r.status(), 200, "GET {path}");
        r.json().await.expect("json")
    }

    pub async fn get_text(&self, path: &str) -> String {
        let r = self.client.get(self.url(path)).send().await.expect("get");
        assert_eq!(r.status(), 200, "GET {path}");
        r.text().await.expect("text")
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let r = tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .expect("server stops");
            r.expect("join").expect("serve");
        }
    }
}

/// A measurement of `https://{domain}/` from a probe on `asn` in Kazakhstan (the one builder
/// every suite uses; not every test file here measures, hence the allow).
#[allow(unused_imports)]
pub use witness_tests::measurement;

/// `m` (blocked) with a localisation naming the censor at `hop`: silent private hops first,
/// then public routers, the last one before the censor in `asn` (when given).
pub fn located(mut m: Measurement, hop: u8, asn: Option<u32>) -> Measurement {
    let hops = (1..=hop)
        .map(|ttl| PathHop {
            ttl,
            reply: if ttl == hop {
                HopReply::Reset
            } else {
                HopReply::TimeExceeded
            },
            addr: (2..hop)
                .contains(&ttl)
                .then(|| format!("95.56.{ttl}.1").parse().unwrap()),
            asn: asn.filter(|_| (2..hop).contains(&ttl)),
        })
        .collect();
    m.path = Some(PathObservation {
        trigger: PathTrigger::Syn,
        addr: "198.51.100.7:443".parse().unwrap(),
        action: PathAction::Reset,
        censor_hop: Some(hop),
        unlocated: None,
        hops,
        max_ttl: 16,
        probes: u32::from(hop) + 1,
        t_ms: 10.0,
        duration_ms: 20.0,
        shared_with: None,
        censor_range: None,
    });
    m
}

/// A web server on 127.0.0.1, port 0, serving one small page at `/`: a target for the
/// control service.
pub async fn lab_server() -> SocketAddr {
    let app = axum::Router::new().route(
        "/",
        axum::routing::get(|| async { axum::response::Html("<title>lab page</title>hello") }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await });
    addr
}

/// A tiny webhook receiver on port 0 that records every body.
pub struct Receiver {
    pub url: String,
    pub bodies: Arc<Mutex<Vec<Value>>>,
}

pub async fn webhook_receiver() -> Receiver {
    let bodies: Arc<Mutex<Vec<Value>>> = Arc::default();
    async fn hook(State(b): State<Arc<Mutex<Vec<Value>>>>, Json(v): Json<Value>) -> &'static str {
        b.lock().expect("lock").push(v);
        "ok"
    }
    let app = Router::new()
        .route("/hook", post(hook))
        .with_state(bodies.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr: SocketAddr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    Receiver {
        url: format!("http://{addr}/hook"),
        bodies,
    }
}

impl Receiver {
    /// Wait until at least `n` bodies arrived (or fail after 10 s); returns them all.
    pub async fn wait_for(&self, n: usize) -> Vec<Value> {
        for _ in 0..200 {
            let got = self.bodies.lock().expect("lock").clone();
            if got.len() >= n {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "webhook receiver got {} bodies, wanted {n}",
            self.bodies.lock().expect("lock").len()
        );
    }

    pub fn count(&self) -> usize {
        self.bodies.lock().expect("lock").len()
    }
}
