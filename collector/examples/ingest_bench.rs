//! Collector ingest benchmark, against SQLite or PostgreSQL.
//!
//! Spawns the whole collector (the library's `serve`, as the binary runs it) on port 0 over a
//! fresh store, registers a fleet of probes, then has many concurrent clients upload gzip
//! batches of realistic measurements (DNS, TCP, TLS with a certificate chain, HTTP with
//! headers, and the control's own observations: ~6 KB of JSON each), every batch from one
//! probe, as probes upload their runs. Event evaluation runs after each upload, as in
//! production. Reports throughput, request latency, database size per million measurements,
//! and the `/metrics` render time with the series those measurements produce.
//!
//! ```sh
//! cargo run --release -p witness-collector --example ingest_bench -- --store sqlite
//! cargo run --release -p witness-collector --example ingest_bench -- --store postgres
//! cargo run --release -p witness-collector --example ingest_bench -- --store postgres \
//!     --url postgres://witness@db/bench   # an existing, empty database
//! ```
//!
//! Without `--url`, SQLite uses a temporary file, and PostgreSQL a temporary server (the
//! tests' fixture: `initdb` as the postgres user, durable settings: fsync and synchronous
//! commit on). `scripts/bench-collector.sh` runs both; docs/scaling.md has the numbers.
//! The last line of output is `RESULT {json}` for scripts.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use chrono::{DateTime, TimeDelta, Utc};
use clap::{Parser, ValueEnum};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use uuid::Uuid;
use witness_collector::config::HumanDuration;
use witness_collector::store::NewProbe;
use witness_collector::{auth, store, AppState, Config};
use witness_core::failure::Failure;
use witness_core::model::{
    CertificateInfo, ConnectivitySummary, ControlResponse, DnsAnswer, DnsObservation,
    HttpObservation, Measurement, Method, QueryType, ResolverRole, Software, Status,
    TcpObservation, TlsObservation, Verdict,
};
use witness_tests::postgres::{PgOptions, PgServer};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum StoreKind {
    Sqlite,
    Postgres,
}

#[derive(Parser, Debug)]
#[command(about = "Witness collector ingest benchmark")]
struct Args {
    /// Which store.
    #[arg(long, value_enum)]
    store: StoreKind,
    /// Store URL (an empty database); default: a temporary SQLite file or PostgreSQL server.
    #[arg(long)]
    url: Option<String>,
    /// Measurements to upload.
    #[arg(long, default_value_t = 100_000)]
    measurements: usize,
    /// Concurrent upload clients.
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// Measurements per upload (one probe run, or a part of one).
    #[arg(long, default_value_t = 50)]
    batch: usize,
    /// Sites on the list.
    #[arg(long, default_value_t = 2000)]
    sites: usize,
    /// Networks (ASNs).
    #[arg(long, default_value_t = 20)]
    asns: usize,
    /// Probes per network.
    #[arg(long, default_value_t = 10)]
    probes_per_asn: usize,
    /// Share of (site, network) pairs that are really blocked.
    #[arg(long, default_value_t = 0.15)]
    blocked_share: f64,
    /// Store connection pool size (`[store] max_connections`).
    #[arg(long, default_value_t = 16)]
    pool: u32,
    /// `/metrics` renders to time after the ingest.
    #[arg(long, default_value_t = 5)]
    scrapes: usize,
    /// Random seed of the workload.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Measurements bulk-loaded through the store before the timed run (no HTTP, no event
    /// evaluation), spread over the same five hours: a full aggregation window, so that
    /// `/metrics` is timed with the series and rows of a real deployment (a national one
    /// holds ~2.4 million measurements in its six-hour window: 20 networks x 10 probes x
    /// 2000 sites x 6 hourly runs).
    #[arg(long, default_value_t = 0)]
    preload: usize,
    /// Measurements added with the bulk SQL insert of `--render-levels` before the timed run
    /// (faster than `--preload`, tiny bodies): a full window for the ingest rate.
    #[arg(long, default_value_t = 0)]
    bulk_preload: usize,
    /// Measurements loaded through the store alone (no HTTP, no evaluation) right after the
    /// HTTP ingest, in runs of 500 per probe: the store's own bulk-load rate, to compare the
    /// end-to-end rate with (the run prints the ratio). 0 to skip.
    #[arg(long, default_value_t = 20_000)]
    bulk_compare: usize,
    /// After the ingest, time `/metrics` with this many measurements in the window, e.g.
    /// `100000,1000000,10000000`: rows are added with a bulk SQL insert (benchmark only: tiny
    /// bodies, the read model upserted by the same SQL as ingest would) up to each level.
    #[arg(long, value_delimiter = ',')]
    render_levels: Vec<usize>,
    /// After the fresh ingest (and the bulk comparison), fill the window to this many
    /// measurements with the bulk SQL insert and upload `--measurements` again over HTTP: the
    /// ingest rate with a full window, and its ratio to the fresh rate of the same run.
    /// 0 to skip.
    #[arg(long, default_value_t = 0)]
    full_window: usize,
    /// Do not settle the store after the full-window fill. By default the collector's own
    /// sweep (`Evaluator::sweep`, as its periodic catch-up runs it) evaluates the filled
    /// window once, and PostgreSQL is vacuumed and analysed, untimed: a deployment whose
    /// window filled over hours opened those events as it went and autovacuumed as it went,
    /// while the bulk fill writes measurements only, so without it the timed uploads would
    /// open (durably, one by one) every event the fill implies, beside autovacuum's pass
    /// over a million new rows.
    #[arg(long)]
    no_settle: bool,
}

fn hex_of(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// An address for a site, stable per site.
fn site_ip(site: usize) -> Ipv4Addr {
    Ipv4Addr::new(93, 184, (site / 250) as u8, (site % 250 + 1) as u8)
}

fn cert(subject: &str, issuer: &str, san: Vec<String>) -> CertificateInfo {
    CertificateInfo {
        subject: subject.to_string(),
        issuer: issuer.to_string(),
        sha256: hex_of(subject.as_bytes()),
        spki_sha256: hex_of(issuer.as_bytes()),
        not_before: Some("2025-01-10T00:00:00Z".into()),
        not_after: Some("2026-04-10T23:59:59Z".into()),
        san,
    }
}

fn dns(
    role: ResolverRole,
    domain: &str,
    qt: QueryType,
    ip: IpAddr,
    failure: Option<Failure>,
) -> DnsObservation {
    let ok = failure.is_none();
    DnsObservation {
        role,
        transport: "udp".into(),
        resolver: match role {
            ResolverRole::Network => "system".into(),
            ResolverRole::Control => "1.1.1.1:53".into(),
        },
        query: domain.to_string(),
        query_type: qt,
        t_ms: 0.3,
        duration_ms: 14.2,
        rcode: Some(if ok { "NOERROR" } else { "NXDOMAIN" }.into()),
        failure,
        answers: if ok {
            vec![DnsAnswer {
                addr: ip,
                ttl: 300,
                bogon: false,
            }]
        } else {
            vec![]
        },
        cnames: vec![],
        late_responses: vec![],
    }
}

fn http(domain: &str, addr: SocketAddr, ok: bool) -> HttpObservation {
    HttpObservation {
        hop: 0,
        url: format!("https://{domain}/"),
        addr: Some(addr),
        t_ms: 120.5,
        duration_ms: 310.2,
        failed_step: None,
        failure: None,
        status: ok.then_some(200),
        headers: [
            ("content-type", "text/html; charset=utf-8"),
            ("server", "nginx"),
            ("cache-control", "max-age=60, public"),
            ("date", "Sat, 22 Nov 2025 01:00:00 GMT"),
            (
                "strict-transport-security",
                "max-age=31536000; includeSubDomains",
            ),
            ("vary", "Accept-Encoding"),
            ("x-frame-options", "SAMEORIGIN"),
            ("content-length", "182734"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
        title: Some(format!(
            "{domain} | News, analysis and opinion from Central Asia"
        )),
        body_length: 182_734,
        body_truncated: false,
        body_sha256: Some(hex_of(domain.as_bytes())),
        ttfb_ms: Some(140.2),
        body_ms: Some(170.0),
        throughput_bps: Some(1_074_905.0),
        blockpage: None,
        location: None,
        role: Default::default(),
    }
}

/// One realistic measurement of `site` from a probe on `asn`.
fn measurement(
    site: usize,
    asn: u32,
    at: DateTime<Utc>,
    status: Status,
    method: Option<Method>,
) -> Measurement {
    let domain = format!("www.site{site:04}.example.kz");
    let ip = site_ip(site);
    let v6 = IpAddr::V6(Ipv6Addr::new(
        0x2606,
        0x2800,
        0x220,
        1,
        0,
        0,
        0,
        site as u16,
    ));
    let addr = SocketAddr::new(IpAddr::V4(ip), 443);
    let blocked = |m: Method| status == Status::Blocked && method == Some(m);
    let leaf = cert(
        &format!("CN={domain}"),
        "C=US, O=Let's Encrypt, CN=R11",
        vec![
            domain.clone(),
            format!("site{site:04}.example.kz"),
            format!("cdn.site{site:04}.example.kz"),
        ],
    );
    let chain = vec![
        leaf,
        cert(
            "C=US, O=Let's Encrypt, CN=R11",
            "C=US, O=Internet Security Research Group, CN=ISRG Root X1",
            vec![],
        ),
    ];
    let tls_ok = TlsObservation {
        addr,
        server_name: domain.clone(),
        decoy: false,
        t_ms: 60.1,
        duration_ms: 58.3,
        failure: None,
        tls_version: Some("TLSv1_3".into()),
        cipher_suite: Some("TLS13_AES_128_GCM_SHA256".into()),
        peer_certificates: chain.clone(),
        verification_failure: None,
        interception_ca: None,
    };
    let tcp_ok = TcpObservation {
        addr,
        t_ms: 15.0,
        duration_ms: 44.8,
        failure: None,
    };
    let dns_failure = blocked(Method::Dns).then_some(Failure::DnsNxdomain);
    let probe_dns = vec![
        dns(
            ResolverRole::Network,
            &domain,
            QueryType::A,
            IpAddr::V4(ip),
            dns_failure.clone(),
        ),
        dns(
            ResolverRole::Network,
            &domain,
            QueryType::AAAA,
            v6,
            dns_failure.clone(),
        ),
    ];
    let (tcp, tls, http_obs) = if blocked(Method::Dns) {
        (vec![], vec![], vec![])
    } else if blocked(Method::Tcp) {
        let tcp = TcpObservation {
            failure: Some(Failure::GenericTimeout),
            duration_ms: 10_000.0,
            ..tcp_ok.clone()
        };
        (vec![tcp], vec![], vec![])
    } else if blocked(Method::Tls) {
        let tls = TlsObservation {
            failure: Some(Failure::GenericTimeout),
            duration_ms: 10_000.0,
            tls_version: None,
            cipher_suite: None,
            peer_certificates: vec![],
            ..tls_ok.clone()
        };
        (vec![tcp_ok.clone()], vec![tls], vec![])
    } else {
        (
            vec![tcp_ok.clone()],
            vec![tls_ok.clone()],
            vec![http(&domain, addr, true)],
        )
    };
    let evidence = match (status, method) {
        (Status::Blocked, Some(Method::Dns)) => {
            vec!["dns.network=dns_nxdomain, control resolves".into()]
        }
        (Status::Blocked, Some(Method::Tls)) => vec![format!("tls.failure=generic_timeout@{addr}")],
        (Status::Blocked, Some(Method::Tcp)) => vec![format!("tcp.failure=generic_timeout@{addr}")],
        (Status::Blocked, Some(m)) => vec![format!("{m}: see observations")],
        _ => vec![],
    };
    Measurement {
        category_code: Some(["NEWS", "POLR", "HUMR", "GRP", "COMT"][site % 5].into()),
        runtime_ms: 812.4,
        dns: probe_dns,
        tcp,
        tls,
        http: http_obs,
        control: Some(ControlResponse {
            software: Software::default(),
            measured_at: at + TimeDelta::milliseconds(400),
            dns: vec![dns(
                ResolverRole::Control,
                &domain,
                QueryType::A,
                IpAddr::V4(ip),
                None,
            )],
            tcp: vec![tcp_ok],
            tls: vec![tls_ok],
            http: vec![http(&domain, addr, true)],
            age_secs: None,
        }),
        connectivity: ConnectivitySummary {
            offline: false,
            resolver_ok: Some(true),
            control_ok: Some(true),
            anchors_ok: 2,
            anchors_tried: 2,
            ipv6_ok: None,
            summary: "online: 2 of 2 anchors reachable".into(),
            references: vec![],
            control_resolvers: vec![],
        },
        verdict: Verdict {
            status,
            method,
            reason: match status {
                Status::Blocked => {
                    "The site is blocked: the network interferes where the control does not.".into()
                }
                Status::Down => "The site is down: the control cannot reach it either.".into(),
                _ => "The site is accessible.".into(),
            },
            evidence,
        },
        ..witness_tests::measurement(&domain, asn, status, method, at)
    }
}

/// One upload: the probe's token and the gzip body.
struct Upload {
    token: Arc<String>,
    body: Vec<u8>,
    records: usize,
}

fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let _ = enc.write_all(data);
    enc.finish().unwrap_or_default()
}

/// The workload: per (site, network) a ground truth; per probe, runs spread over the last five
/// hours (inside the default six-hour window, so everything counts for `/metrics`).
struct Generator {
    rng: rand::rngs::StdRng,
    truth: Vec<Option<Method>>,
    sites: usize,
    start: DateTime<Utc>,
}

impl Generator {
    fn new(args: &Args) -> Generator {
        let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed);
        let methods = [
            Method::Tls,
            Method::Dns,
            Method::Http,
            Method::Tcp,
            Method::Throttle,
        ];
        let truth = (0..args.sites * args.asns)
            .map(|_| {
                rng.random_bool(args.blocked_share)
                    .then(|| methods[rng.random_range(0..methods.len())])
            })
            .collect();
        Generator {
            rng,
            truth,
            sites: args.sites,
            start: Utc::now() - TimeDelta::hours(5),
        }
    }

    /// `n` measurements of one probe run on network `asn_index`, starting at `fraction` of the
    /// five hours.
    fn run(&mut self, asn_index: usize, fraction: f64, n: usize) -> Vec<Measurement> {
        let t0 = self.start + TimeDelta::milliseconds((fraction * 5.0 * 3600.0 * 1000.0) as i64);
        (0..n)
            .map(|i| {
                let site = self.rng.random_range(0..self.sites);
                let at = t0 + TimeDelta::milliseconds(i as i64 * 900);
                let (status, method) = match self.truth[asn_index * self.sites + site] {
                    Some(m) if self.rng.random_bool(0.95) => (Status::Blocked, Some(m)),
                    Some(_) => (Status::Accessible, None),
                    None => match self.rng.random_range(0..100) {
                        0..=1 => (Status::Blocked, Some(Method::Throttle)),
                        2..=4 => (Status::Down, None),
                        _ => (Status::Accessible, None),
                    },
                };
                measurement(site, 64_500 + asn_index as u32, at, status, method)
            })
            .collect()
    }
}

/// A probe of the fleet.
struct FleetProbe {
    asn_index: usize,
    id: String,
    token: Arc<String>,
}

/// The timed uploads: gzip bodies, built before the clock starts.
fn make_uploads(
    args: &Args,
    generator: &mut Generator,
    fleet: &[FleetProbe],
) -> (Vec<Upload>, usize) {
    let batches = args.measurements.div_ceil(args.batch);
    let mut out = Vec::with_capacity(batches);
    let (mut json_bytes, mut made) = (0usize, 0usize);
    for b in 0..batches {
        let probe = &fleet[b % fleet.len()];
        let n = args.batch.min(args.measurements - made);
        let records = generator.run(probe.asn_index, b as f64 / batches as f64, n);
        made += n;
        let body = serde_json::to_vec(&json!({ "measurements": records })).unwrap_or_default();
        json_bytes += body.len();
        out.push(Upload {
            token: probe.token.clone(),
            body: gzip(&body),
            records: n,
        });
    }
    (out, json_bytes)
}

/// Bulk-load `n` measurements straight through the store, in runs of 500 per probe.
async fn preload(
    store: &Arc<dyn store::Store>,
    generator: &mut Generator,
    fleet: &[FleetProbe],
    n: usize,
) -> Result<()> {
    const RUN: usize = 500;
    let runs = n.div_ceil(RUN);
    let now = Utc::now();
    let mut pending = Vec::new();
    for r in 0..runs {
        let probe = &fleet[r % fleet.len()];
        let count = RUN.min(n - r * RUN);
        let records: Vec<store::MeasurementRecord> = generator
            .run(probe.asn_index, r as f64 / runs as f64, count)
            .into_iter()
            .map(|m| {
                let body = serde_json::to_string(&m).unwrap_or_default();
                witness_collector::ingest::to_record(m, &body, now, None)
            })
            .collect();
        let (store, id) = (store.clone(), probe.id.clone());
        pending.push(tokio::spawn(async move {
            store.insert_measurements(&id, now, &records).await
        }));
        // Generation and insertion overlap; a few inserts in flight are enough.
        if pending.len() >= 4 {
            pending.remove(0).await??;
        }
    }
    for p in pending {
        p.await??;
    }
    Ok(())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Bytes the database takes on disk.
async fn db_size(kind: StoreKind, url: &str, sqlite_path: Option<&std::path::Path>) -> Result<u64> {
    match kind {
        StoreKind::Postgres => {
            let pool = sqlx::PgPool::connect(url).await?;
            let n: i64 = sqlx::query_scalar("SELECT pg_database_size(current_database())")
                .fetch_one(&pool)
                .await?;
            pool.close().await;
            Ok(u64::try_from(n).unwrap_or(0))
        }
        StoreKind::Sqlite => {
            let path = sqlite_path.context("SQLite path")?;
            let pool = sqlx::SqlitePool::connect(url).await?;
            sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                .execute(&pool)
                .await?;
            pool.close().await;
            let mut total = 0;
            for suffix in ["", "-wal", "-shm"] {
                let p = format!("{}{suffix}", path.display());
                total += std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
            }
            Ok(total)
        }
    }
}

/// PostgreSQL only: bytes of the measurements (all partitions, with indexes and TOAST) and of
/// the id table.
async fn pg_breakdown(url: &str) -> Result<(i64, i64)> {
    let pool = sqlx::PgPool::connect(url).await?;
    let m: Option<i64> = sqlx::query_scalar(
        "SELECT sum(pg_total_relation_size(i.inhrelid))::bigint FROM pg_inherits i \
         WHERE i.inhparent = 'measurements'::regclass",
    )
    .fetch_one(&pool)
    .await?;
    let ids: i64 = sqlx::query_scalar("SELECT pg_total_relation_size('measurement_ids')")
        .fetch_one(&pool)
        .await?;
    pool.close().await;
    Ok((m.unwrap_or(0), ids))
}

/// A connection of either database, for the benchmark's own SQL.
enum Conn {
    Sqlite(sqlx::SqliteConnection),
    Postgres(sqlx::PgConnection),
}

impl Conn {
    async fn open(kind: StoreKind, url: &str) -> Result<Conn> {
        use sqlx::Connection;
        Ok(match kind {
            StoreKind::Sqlite => Conn::Sqlite(sqlx::SqliteConnection::connect(url).await?),
            StoreKind::Postgres => Conn::Postgres(sqlx::PgConnection::connect(url).await?),
        })
    }

    /// Run statements (no parameters: the benchmark formats in its own numbers only).
    async fn run(&mut self, sql: &str) -> Result<()> {
        match self {
            Conn::Sqlite(c) => {
                sqlx::raw_sql(sql).execute(c).await?;
            }
            Conn::Postgres(c) => {
                sqlx::raw_sql(sql).execute(c).await?;
            }
        }
        Ok(())
    }

    /// One integer.
    async fn int(&mut self, sql: &str) -> Result<i64> {
        Ok(match self {
            Conn::Sqlite(c) => sqlx::query_scalar(sql).fetch_one(c).await?,
            Conn::Postgres(c) => sqlx::query_scalar(sql).fetch_one(c).await?,
        })
    }
}

/// Rows of a table.
async fn rows_of(url: &str, kind: StoreKind, table: &str) -> Result<i64> {
    Conn::open(kind, url)
        .await?
        .int(&format!("SELECT count(*) FROM {table}"))
        .await
}

/// Events in the collector (the read API's largest page: enough for these runs).
async fn count_events(client: &reqwest::Client, base: &str) -> Result<i64> {
    let events: Value = client
        .get(format!("{base}/api/v1/events?limit=10000"))
        .send()
        .await?
        .json()
        .await?;
    Ok(events["events"].as_array().map_or(0, Vec::len) as i64)
}

/// Event transitions so far (opened, closed, moved): the sum of the collector's
/// `witness_events_total` counters.
async fn event_transitions(client: &reqwest::Client, base: &str) -> Result<i64> {
    let text = client
        .get(format!("{base}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    let prefix = format!("{}{{", witness_collector::metrics::EVENTS_TOTAL);
    Ok(text
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as i64)
}

/// Rows per transaction of the bulk fill.
const FILL_CHUNK: usize = 200_000;

/// Bulk SQL fill, benchmark only: measurements `from..to` generated by the database itself
/// (tiny bodies; probe `n % fleet`, site `(n / fleet) % sites`, times spread over the last five
/// hours), and the read model upserted from them with the same monotonic upserts as ingest,
/// one transaction per chunk. The same SQL for both stores but for a few functions.
///
/// The verdicts follow the workload's own ground truth (`truth`, per site and network): the
/// fill stands for the earlier measurements of the same deployment, so a pair is blocked
/// (by the same method) in the fill exactly when the uploads that follow say so. (Until
/// 2 December 2026 the fill drew its own, different 15% of blocked pairs: the uploads after it
/// then contradicted the window on a quarter of the pairs, and the evaluation opened and
/// closed thousands of events a real deployment would not; see docs/scaling.md.)
async fn bulk_fill(
    kind: StoreKind,
    url: &str,
    fleet: &[FleetProbe],
    args: &Args,
    truth: &[Option<Method>],
    from: usize,
    to: usize,
) -> Result<()> {
    let now = Utc::now();
    let start = (now - TimeDelta::hours(5)).timestamp_micros();
    let now = now.timestamp_micros();
    let span_us: i64 = 5 * 3_600_000_000;
    let top = args
        .render_levels
        .iter()
        .copied()
        .chain([args.full_window, to])
        .max()
        .unwrap_or(to) as i64;
    let p = fleet.len() as i64;
    let sites = args.sites as i64;
    let pg = kind == StoreKind::Postgres;
    let greatest = if pg { "GREATEST" } else { "MAX" };
    let (uuid, domain, numbers) = if pg {
        (
            "('00000000-0000-4000-8000-' || lpad(to_hex(g.n), 12, '0'))".to_string(),
            format!("'www.site' || lpad((((g.n / {p}) % {sites}))::text, 4, '0') || '.example.kz'"),
            "SELECT n FROM generate_series(LO::bigint, HI::bigint - 1) AS s(n)",
        )
    } else {
        (
            "printf('00000000-0000-4000-8000-%012x', g.n)".to_string(),
            format!("printf('www.site%04d.example.kz', (g.n / {p}) % {sites})"),
            "WITH RECURSIVE s(n) AS (SELECT LO UNION ALL SELECT n + 1 FROM s WHERE n + 1 < HI) \
             SELECT n FROM s",
        )
    };
    // Per row n: probe index, site, network index; blocked when the workload's truth says the
    // (site, network) pair is, by its method; a few `down`.
    let columns = format!(
        "{uuid} AS id, f.probe_id AS probe_id, {domain} AS domain, f.asn AS asn, \
         CASE WHEN t.method IS NOT NULL THEN 'blocked' WHEN g.n % 33 = 0 THEN 'down' \
              ELSE 'accessible' END AS status, \
         t.method AS method, \
         (CASE ((g.n / {p}) % {sites}) % 5 WHEN 0 THEN 'NEWS' WHEN 1 THEN 'POLR' \
          WHEN 2 THEN 'HUMR' WHEN 3 THEN 'GRP' ELSE 'COMT' END) AS category, \
         {start} + g.n * {span_us} / {top} AS started_at, {now} AS received_at"
    );
    let id_value = if pg { "id::uuid" } else { "id" };
    let mut conn = Conn::open(kind, url).await?;
    let fleet_rows = fleet
        .iter()
        .enumerate()
        .map(|(i, f)| {
            format!(
                "({i}, '{}', {}, {})",
                f.id,
                64_500 + f.asn_index,
                f.asn_index
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    conn.run(&format!(
        "DROP TABLE IF EXISTS bench_fleet; \
         CREATE TEMP TABLE bench_fleet (idx BIGINT PRIMARY KEY, probe_id TEXT, asn BIGINT, \
                                        asn_index BIGINT); \
         INSERT INTO bench_fleet VALUES {fleet_rows};"
    ))
    .await?;
    let truth_rows = truth
        .iter()
        .enumerate()
        .filter_map(|(pair, m)| m.map(|m| format!("({pair}, '{}')", m.as_str())))
        .collect::<Vec<_>>();
    conn.run(
        "DROP TABLE IF EXISTS bench_truth; \
         CREATE TEMP TABLE bench_truth (pair BIGINT PRIMARY KEY, method TEXT NOT NULL);",
    )
    .await?;
    for part in truth_rows.chunks(500) {
        conn.run(&format!(
            "INSERT INTO bench_truth VALUES {};",
            part.join(", ")
        ))
        .await?;
    }
    let mut lo = from;
    while lo < to {
        let hi = (lo + FILL_CHUNK).min(to);
        let numbers = numbers
            .replace("LO", &lo.to_string())
            .replace("HI", &hi.to_string());
        let ids = if pg {
            "INSERT INTO measurement_ids (id, started_at) SELECT id::uuid, started_at FROM chunk;"
        } else {
            ""
        };
        conn.run(&format!(
            "BEGIN; \
             CREATE TEMP TABLE chunk AS SELECT {columns} FROM ({numbers}) AS g \
               JOIN bench_fleet f ON f.idx = g.n % {p} \
               LEFT JOIN bench_truth t ON t.pair = f.asn_index * {sites} + (g.n / {p}) % {sites}; \
             {ids} \
             INSERT INTO measurements (id, probe_id, received_at, started_at, domain, url, \
               category, asn, country, status, method, reason, software_version, body) \
             SELECT {id_value}, probe_id, received_at, started_at, domain, \
               'https://' || domain || '/', category, asn, 'KZ', status, method, '', 'bench', \
               '{{}}' FROM chunk; \
             INSERT INTO latest_verdicts (domain, asn, probe_id, started_at, measurement_id, \
               status, method, category, country) \
             SELECT domain, asn, probe_id, started_at, id, status, method, category, 'KZ' \
             FROM chunk WHERE status <> 'offline' ORDER BY domain, asn, probe_id \
             ON CONFLICT (domain, asn, probe_id) DO UPDATE SET \
               started_at = excluded.started_at, measurement_id = excluded.measurement_id, \
               status = excluded.status, method = excluded.method, \
               category = excluded.category, country = excluded.country \
             WHERE (excluded.started_at, excluded.measurement_id) \
                 > (latest_verdicts.started_at, latest_verdicts.measurement_id); \
             INSERT INTO blocked_methods (domain, asn, method, last_at) \
             SELECT domain, asn, method, MAX(started_at) FROM chunk \
             WHERE status = 'blocked' GROUP BY domain, asn, method \
             ON CONFLICT (domain, asn, method) DO UPDATE SET \
               last_at = {greatest}(blocked_methods.last_at, excluded.last_at); \
             INSERT INTO probe_hours (hour, asn, country, probe_id, measurements, \
               last_received_at, last_started_at) \
             SELECT (received_at / 3600000000) * 3600000000, asn, 'KZ', probe_id, COUNT(*), \
               MAX(received_at), MAX(started_at) FROM chunk WHERE true GROUP BY 1, 2, 3, 4 \
             ON CONFLICT (hour, asn, country, probe_id) DO UPDATE SET \
               measurements = probe_hours.measurements + excluded.measurements, \
               last_received_at = {greatest}(probe_hours.last_received_at, \
                                             excluded.last_received_at), \
               last_started_at = {greatest}(probe_hours.last_started_at, \
                                            excluded.last_started_at); \
             DROP TABLE chunk; \
             COMMIT;"
        ))
        .await?;
        lo = hi;
    }
    if pg {
        conn.run("ANALYZE").await?;
    }
    Ok(())
}

/// Upload every batch over HTTP with `clients` concurrent clients: per-upload latencies
/// (sorted), measurements accepted, wall time.
async fn ingest(
    client: &reqwest::Client,
    base: &str,
    uploads: Vec<Upload>,
    clients: usize,
) -> Result<(Vec<Duration>, usize, Duration)> {
    let uploads = Arc::new(uploads);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (uploads, next, client, base) = (
            uploads.clone(),
            next.clone(),
            client.clone(),
            base.to_string(),
        );
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut accepted = 0usize;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(u) = uploads.get(i) else {
                    return Ok::<_, anyhow::Error>((latencies, accepted));
                };
                let t = Instant::now();
                let r = client
                    .post(format!("{base}/api/v1/measurements"))
                    .bearer_auth(u.token.as_str())
                    .header("content-type", "application/json")
                    .header("content-encoding", "gzip")
                    .body(u.body.clone())
                    .send()
                    .await?;
                let status = r.status();
                let v: Value = r.json().await?;
                latencies.push(t.elapsed());
                if status != 200 {
                    bail!("upload failed: {status} {v}");
                }
                let n = v["accepted"].as_array().map_or(0, Vec::len);
                if n != u.records {
                    bail!("{n} of {} records accepted: {v}", u.records);
                }
                accepted += n;
            }
        }));
    }
    let mut latencies = Vec::new();
    let mut accepted = 0;
    for task in tasks {
        let (l, a) = task.await??;
        latencies.extend(l);
        accepted += a;
    }
    let elapsed = started.elapsed();
    latencies.sort();
    Ok((latencies, accepted, elapsed))
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    if args.batch == 0 || args.clients == 0 || args.measurements == 0 || args.asns == 0 {
        bail!("--batch, --clients, --measurements and --asns must be positive");
    }
    let dir = tempfile::tempdir()?;
    let mut pg_server = None;
    let mut sqlite_path = None;
    let url = match (args.store, &args.url) {
        (_, Some(u)) => u.clone(),
        (StoreKind::Sqlite, None) => {
            let p = dir.path().join("bench.db");
            let url = format!("sqlite://{}", p.display());
            sqlite_path = Some(p);
            url
        }
        (StoreKind::Postgres, None) => {
            let server = PgServer::start(PgOptions {
                durable: true,
                max_connections: 100,
                settings: vec![
                    ("shared_buffers".into(), "1GB".into()),
                    ("max_wal_size".into(), "1GB".into()),
                ],
            })
            .context("starting a temporary PostgreSQL (is postgresql-15 installed?)")?;
            let db = server.database()?;
            let url = db.url.clone();
            pg_server = Some((server, db));
            url
        }
    };
    if let (StoreKind::Sqlite, Some(u)) = (args.store, &args.url) {
        sqlite_path = Some(std::path::PathBuf::from(
            u.trim_start_matches("sqlite://")
                .trim_start_matches("sqlite:"),
        ));
    }

    let mut config = Config::default();
    config.store.url = url.clone();
    config.store.max_connections = args.pool;
    config.ingest.uploads_per_minute = 1_000_000;
    config.ingest.upload_burst = 1_000_000;
    config.ingest.max_batch = args.batch.max(1000);
    config.server.register_per_hour = 1_000_000;
    config.server.register_burst = 1_000_000;
    config.aggregation.evaluate_interval = HumanDuration::from_secs(0);
    config.metrics.max_site_series = 1_000_000;
    let store = store::open(&config.store)
        .await
        .context("opening the store")?;
    let empty_size = db_size(args.store, &url, sqlite_path.as_deref()).await?;
    let state = AppState::new(config, store)?;
    let state_for_fleet = state.clone();
    let evaluator = state.evaluator.clone();
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(witness_collector::serve(listener, state, async move {
        let _ = stopped.await;
    }));
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.clients)
        .build()?;

    // The fleet, registered through the store (the bulk load needs the probe ids).
    let store = state_for_fleet.store.clone();
    let mut fleet = Vec::new();
    let now = Utc::now();
    for asn_index in 0..args.asns {
        for _ in 0..args.probes_per_asn {
            let token = auth::new_token();
            let id = Uuid::new_v4().to_string();
            let probe = NewProbe {
                id: id.clone(),
                token_hash: auth::hash_token(&token),
                created_at: now,
            };
            if !store.register_probe(&probe, None, now).await? {
                bail!("registration refused");
            }
            fleet.push((asn_index, id, token));
        }
    }
    // Interleave networks so consecutive uploads come from different networks.
    fleet.sort_by_key(|(asn_index, id, _)| (id.as_bytes()[0], *asn_index));
    let fleet: Vec<FleetProbe> = fleet
        .into_iter()
        .map(|(asn_index, id, token)| FleetProbe {
            asn_index,
            id,
            token: Arc::new(token),
        })
        .collect();
    let mut generator = Generator::new(&args);
    if args.preload > 0 {
        let t = Instant::now();
        preload(&store, &mut generator, &fleet, args.preload).await?;
        eprintln!(
            "preload: {} measurements through the store in {:.1?} ({:.0}/s, no HTTP, no evaluation)",
            args.preload,
            t.elapsed(),
            args.preload as f64 / t.elapsed().as_secs_f64()
        );
    }
    if args.bulk_preload > 0 {
        let t = Instant::now();
        bulk_fill(
            args.store,
            &url,
            &fleet,
            &args,
            &generator.truth,
            0,
            args.bulk_preload,
        )
        .await?;
        eprintln!(
            "bulk preload: {} measurements by bulk SQL in {:.1?}",
            args.bulk_preload,
            t.elapsed()
        );
    }
    let t = Instant::now();
    let (uploads, json_bytes) = make_uploads(&args, &mut generator, &fleet);
    let total = args.measurements;
    let gz_bytes: usize = uploads.iter().map(|u| u.body.len()).sum();
    eprintln!(
        "workload: {total} measurements in {} uploads ({:.1} KB JSON each, gzip {:.1}x), built in {:.1?}",
        uploads.len(),
        json_bytes as f64 / total as f64 / 1024.0,
        json_bytes as f64 / gz_bytes.max(1) as f64,
        t.elapsed()
    );

    // The ingest.
    let (latencies, accepted, elapsed) = ingest(&client, &base, uploads, args.clients).await?;
    let rate = accepted as f64 / elapsed.as_secs_f64();

    // /metrics with the series this produced.
    let mut renders = Vec::new();
    let mut series = 0;
    let mut lines = 0;
    for _ in 0..args.scrapes {
        let t = Instant::now();
        let text = client
            .get(format!("{base}/metrics"))
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        renders.push(t.elapsed());
        series = text
            .lines()
            .filter(|l| l.starts_with("witness_site_blocked_ratio{"))
            .count();
        lines = text.lines().filter(|l| !l.starts_with('#')).count();
    }
    renders.sort();
    let events = count_events(&client, &base).await?;

    // The store's own bulk-load rate, on the same store, right after.
    let bulk_rate = if args.bulk_compare > 0 {
        let t = Instant::now();
        preload(&store, &mut generator, &fleet, args.bulk_compare).await?;
        Some(args.bulk_compare as f64 / t.elapsed().as_secs_f64())
    } else {
        None
    };

    // Size per million: the realistic records stored so far (the bulk fills below store tiny
    // bodies).
    let size = db_size(args.store, &url, sqlite_path.as_deref()).await?;

    // Ingest again with a full window (the same workload size, after a bulk fill): once the
    // render levels reach --full-window, or after them.
    let mut full_window = None;
    let full_window_phase = |generator: &mut Generator| {
        let (client, base, url, fleet, args) = (&client, &base, &url, &fleet, &args);
        let evaluator = &evaluator;
        let uploads = make_uploads(args, generator, fleet).0;
        let truth = generator.truth.clone();
        async move {
            let before = rows_of(url, args.store, "measurements").await? as usize;
            if args.full_window > before {
                let t = Instant::now();
                bulk_fill(
                    args.store,
                    url,
                    fleet,
                    args,
                    &truth,
                    before,
                    args.full_window,
                )
                .await?;
                eprintln!(
                    "bulk fill: {} rows in {:.1?}",
                    args.full_window - before,
                    t.elapsed()
                );
            }
            let in_window = rows_of(url, args.store, "measurements").await?;
            let mut settled = None;
            if !args.no_settle {
                let t = Instant::now();
                let n = evaluator.sweep(Utc::now()).await?;
                // And the state autovacuum keeps a live table in: without this, PostgreSQL's
                // autovacuum and autoanalyze of the million fresh rows would run during the
                // timed uploads (a deployment's run continuously, in small steps).
                if args.store == StoreKind::Postgres {
                    Conn::open(args.store, url)
                        .await?
                        .run("VACUUM ANALYZE")
                        .await?;
                }
                eprintln!(
                    "settled: {n} event transitions, vacuumed, in {:.1?} (untimed)",
                    t.elapsed()
                );
                settled = Some(json!({ "transitions": n, "seconds": t.elapsed().as_secs_f64() }));
            }
            let events_before = event_transitions(client, base).await?;
            let (l, a, e) = ingest(client, base, uploads, args.clients).await?;
            let event_changes = event_transitions(client, base).await? - events_before;
            let full_rate = a as f64 / e.as_secs_f64();
            eprintln!(
                "full window: {a} measurements over HTTP with {in_window} in the window: {full_rate:.0}/s, {:.0}% of the fresh rate",
                full_rate / rate * 100.0
            );
            Ok::<_, anyhow::Error>(json!({
                "measurements_in_window": in_window,
                "measurements": a,
                "measurements_per_second": full_rate,
                "ratio_to_fresh": full_rate / rate,
                "settled": settled,
                "event_transitions": event_changes,
                "latency_ms": { "p50": ms(percentile(&l, 0.5)), "p99": ms(percentile(&l, 0.99)) },
            }))
        }
    };

    // /metrics at larger windows, filled by bulk SQL.
    let mut levels = Vec::new();
    let mut filled = rows_of(&url, args.store, "measurements").await? as usize;
    for &level in &args.render_levels {
        if args.full_window > 0 && full_window.is_none() && level > args.full_window {
            full_window = Some(full_window_phase(&mut generator).await?);
            filled = rows_of(&url, args.store, "measurements").await? as usize;
        }
        if level > filled {
            let t = Instant::now();
            bulk_fill(
                args.store,
                &url,
                &fleet,
                &args,
                &generator.truth,
                filled,
                level,
            )
            .await?;
            eprintln!(
                "bulk fill: {} rows in {:.1?} ({:.0}/s)",
                level - filled,
                t.elapsed(),
                (level - filled) as f64 / t.elapsed().as_secs_f64()
            );
            filled = level;
        }
        let mut times = Vec::new();
        let mut series = 0;
        for _ in 0..args.scrapes.max(1) {
            let t = Instant::now();
            let text = client
                .get(format!("{base}/metrics"))
                .send()
                .await?
                .error_for_status()?
                .text()
                .await?;
            times.push(t.elapsed());
            series = text
                .lines()
                .filter(|l| l.starts_with("witness_site_blocked_ratio{"))
                .count();
        }
        times.sort();
        let in_window = rows_of(&url, args.store, "measurements").await?;
        let rm_rows = rows_of(&url, args.store, "latest_verdicts").await?;
        eprintln!(
            "/metrics at {in_window} measurements ({rm_rows} read-model rows, {series} ratio series): p50 {:.0} ms, max {:.0} ms",
            ms(percentile(&times, 0.5)),
            ms(percentile(&times, 1.0))
        );
        levels.push(json!({
            "measurements": in_window,
            "read_model_rows": rm_rows,
            "series": series,
            "render_ms": { "p50": ms(percentile(&times, 0.5)), "max": ms(percentile(&times, 1.0)) },
        }));
        if args.full_window > 0 && full_window.is_none() && level >= args.full_window {
            full_window = Some(full_window_phase(&mut generator).await?);
            filled = rows_of(&url, args.store, "measurements").await? as usize;
        }
    }

    if args.full_window > 0 && full_window.is_none() {
        full_window = Some(full_window_phase(&mut generator).await?);
    }

    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(60), server).await;
    let grown = size.saturating_sub(empty_size);
    let stored = accepted
        + args.preload
        + if bulk_rate.is_some() {
            args.bulk_compare
        } else {
            0
        };
    let per_million = grown as f64 / stored as f64 * 1e6;
    let breakdown = if args.store == StoreKind::Postgres {
        Some(pg_breakdown(&url).await?)
    } else {
        None
    };

    let store_name = format!("{:?}", args.store).to_lowercase();
    println!("store:               {store_name} (pool {})", args.pool);
    println!(
        "workload:            {accepted} measurements, {} uploads of {}, {} clients, {} probes on {} networks, {} sites",
        latencies.len(),
        args.batch,
        args.clients,
        fleet.len(),
        args.asns,
        args.sites
    );
    println!(
        "throughput:          {rate:.0} measurements/s ({:.1} uploads/s) over {elapsed:.1?}",
        latencies.len() as f64 / elapsed.as_secs_f64()
    );
    println!(
        "upload latency:      p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        ms(percentile(&latencies, 0.5)),
        ms(percentile(&latencies, 0.9)),
        ms(percentile(&latencies, 0.99)),
        ms(percentile(&latencies, 1.0))
    );
    println!(
        "database:            {:.1} MB for {stored} measurements ({:.2} GB per million)",
        grown as f64 / 1e6,
        per_million / 1e9
    );
    if let Some((m, ids)) = breakdown {
        println!(
            "  of which:          measurements (partitions, indexes, TOAST) {:.1} MB, measurement_ids {:.1} MB",
            m as f64 / 1e6,
            ids as f64 / 1e6
        );
    }
    println!(
        "/metrics:            {series} blocked-ratio series, {lines} samples; render p50 {:.0} ms, max {:.0} ms ({stored} measurements in the window)",
        ms(percentile(&renders, 0.5)),
        ms(percentile(&renders, 1.0)),
    );
    println!("events:              {events} opened");
    if let Some(b) = bulk_rate {
        println!(
            "store bulk load:     {b:.0} measurements/s ({} through the store alone, runs of 500); HTTP ingest is {:.0}% of it",
            args.bulk_compare,
            rate / b * 100.0
        );
    }
    if let Some(f) = &full_window {
        println!(
            "full window:         {} measurements/s with {} in the window ({} uploaded), {:.0}% of the fresh rate; {} event transitions during it (settled first: {})",
            f["measurements_per_second"].as_f64().unwrap_or(0.0).round(),
            f["measurements_in_window"],
            f["measurements"],
            f["ratio_to_fresh"].as_f64().unwrap_or(0.0) * 100.0,
            f["event_transitions"],
            !args.no_settle
        );
    }
    for l in &levels {
        println!(
            "/metrics at level:   {} measurements in the window, {} read-model rows, {} series: render p50 {:.0} ms, max {:.0} ms",
            l["measurements"], l["read_model_rows"], l["series"], l["render_ms"]["p50"], l["render_ms"]["max"]
        );
    }
    let result = json!({
        "store": store_name,
        "pool": args.pool,
        "measurements": accepted,
        "preloaded": args.preload,
        "bulk_preloaded": args.bulk_preload,
        "uploads": latencies.len(),
        "batch": args.batch,
        "clients": args.clients,
        "seconds": elapsed.as_secs_f64(),
        "measurements_per_second": rate,
        "latency_ms": {
            "p50": ms(percentile(&latencies, 0.5)),
            "p90": ms(percentile(&latencies, 0.9)),
            "p99": ms(percentile(&latencies, 0.99)),
            "max": ms(percentile(&latencies, 1.0)),
        },
        "db_bytes": grown,
        "db_bytes_per_million": per_million,
        "json_bytes_per_measurement": json_bytes as f64 / total as f64,
        "metrics_series": series,
        "metrics_samples": lines,
        "metrics_render_ms": { "p50": ms(percentile(&renders, 0.5)), "max": ms(percentile(&renders, 1.0)) },
        "events": events,
        "bulk_load_per_second": bulk_rate,
        "http_to_bulk_ratio": bulk_rate.map(|b| rate / b),
        "render_levels": levels,
        "full_window": full_window,
    });
    println!("RESULT {result}");
    drop(pg_server);
    Ok(())
}
