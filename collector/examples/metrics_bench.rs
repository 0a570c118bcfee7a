//! `/metrics` at a country's size: the scrape time with ~75,000 state series (618 sites × 20
//! networks × 6 blocking methods) and 1 or 10 million measurements in the window, on SQLite or
//! PostgreSQL.
//!
//! The store is filled with a bulk SQL insert (benchmark only: tiny bodies; the read model
//! upserted by the same monotonic SQL as ingest), a million rows in well under a minute, since
//! ten million uploads over HTTP would take hours. Every probe measures every site of the list on
//! its network; a site is blocked on three rounds out of four, by a method that changes with
//! the round and the probe, so every site × network sees all six methods within the window.
//! Then a fresh collector (the library's `serve`, as the binary runs it) is started over the
//! store and `/metrics` is scraped: the first scrape (which loads the in-memory read model),
//! then `--scrapes` more, timed; and, for comparison, the gauges computed from the store's
//! grouped reads as every scrape did before the in-memory model (`GaugeInputs::from_store`).
//!
//! ```sh
//! cargo run --release -p witness-collector --example metrics_bench -- --store sqlite \
//!     --levels 1000000,10000000
//! ```
//!
//! `scripts/bench-metrics.sh` runs both stores; docs/scaling.md has the numbers. The last line
//! per level is `RESULT {json}`.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use chrono::{TimeDelta, Utc};
use clap::{Parser, ValueEnum};
use serde_json::json;
use tokio::net::TcpListener;
use uuid::Uuid;
use witness_collector::readmodel::live::GaugeInputs;
use witness_collector::store::NewProbe;
use witness_collector::{auth, store, AppState, Config};
use witness_tests::postgres::{PgOptions, PgServer};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum StoreKind {
    Sqlite,
    Postgres,
}

#[derive(Parser, Debug)]
#[command(about = "Witness /metrics benchmark at a country's size")]
struct Args {
    /// Which store.
    #[arg(long, value_enum)]
    store: StoreKind,
    /// Store URL (an empty database); default: a temporary SQLite file or PostgreSQL server.
    #[arg(long)]
    url: Option<String>,
    /// Measurements in the window at which to time `/metrics`, ascending.
    #[arg(long, value_delimiter = ',', default_value = "1000000")]
    levels: Vec<usize>,
    /// Sites on the list (the default Kazakhstan list has 618).
    #[arg(long, default_value_t = 618)]
    sites: usize,
    /// Networks (ASNs).
    #[arg(long, default_value_t = 20)]
    networks: usize,
    /// Probes per network.
    #[arg(long, default_value_t = 10)]
    probes_per_network: usize,
    /// Timed scrapes per level (after the first).
    #[arg(long, default_value_t = 20)]
    scrapes: usize,
    /// Renders from the store's grouped reads (the path before the in-memory model) per level.
    #[arg(long, default_value_t = 3)]
    sql_renders: usize,
}

/// Rows per transaction of the fill.
const CHUNK: usize = 200_000;
const METHODS: [&str; 6] = ["dns", "tcp", "tls", "mitm", "http", "throttle"];

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

    async fn int(&mut self, sql: &str) -> Result<i64> {
        Ok(match self {
            Conn::Sqlite(c) => sqlx::query_scalar(sql).fetch_one(c).await?,
            Conn::Postgres(c) => sqlx::query_scalar(sql).fetch_one(c).await?,
        })
    }
}

/// Rows `from..to` (of `top` in all, spread over the last five hours): probe `n % probes`,
/// site `(n / probes) % sites`, round `n / (probes × sites)`.
async fn fill(
    conn: &mut Conn,
    kind: StoreKind,
    args: &Args,
    probes: &[String],
    from: usize,
    to: usize,
    top: usize,
) -> Result<()> {
    let now = Utc::now();
    let start = (now - TimeDelta::hours(5)).timestamp_micros();
    let now = now.timestamp_micros();
    let span: i64 = 5 * 3_600_000_000;
    let p = probes.len() as i64;
    let sites = args.sites as i64;
    let ppn = args.probes_per_network as i64;
    let pg = kind == StoreKind::Postgres;
    let greatest = if pg { "GREATEST" } else { "MAX" };
    let (uuid, domain, numbers) = if pg {
        (
            "('00000000-0000-4000-8000-' || lpad(to_hex(g.n), 12, '0'))".to_string(),
            format!("'www.site' || lpad(((g.n / {p}) % {sites})::text, 4, '0') || '.example.kz'"),
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
    let method = format!(
        "(CASE ((g.n / ({p} * {sites})) + (g.n % {p}) + ((g.n / {p}) % {sites})) % 6 {} END)",
        METHODS
            .iter()
            .enumerate()
            .map(|(i, m)| format!("WHEN {i} THEN '{m}'"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let blocked =
        format!("((g.n / ({p} * {sites})) + ((g.n / {p}) % {sites}) + g.n % {p}) % 4 <> 0");
    let columns = format!(
        "{uuid} AS id, f.probe_id AS probe_id, {domain} AS domain, f.asn AS asn, \
         CASE WHEN {blocked} THEN 'blocked' ELSE 'accessible' END AS status, \
         CASE WHEN {blocked} THEN {method} END AS method, \
         (CASE ((g.n / {p}) % {sites}) % 5 WHEN 0 THEN 'NEWS' WHEN 1 THEN 'POLR' \
          WHEN 2 THEN 'HUMR' WHEN 3 THEN 'GRP' ELSE 'COMT' END) AS category, \
         {start} + g.n * {span} / {top} AS started_at, {now} AS received_at"
    );
    let id_value = if pg { "id::uuid" } else { "id" };
    // A chunk holds several rounds of a probe's sites: PostgreSQL's upsert takes each key once
    // (the newest), SQLite's applies them in turn (the monotonic condition keeps the newest).
    let (distinct, newest) = if pg {
        (
            "DISTINCT ON (domain, asn, probe_id)",
            ", started_at DESC, id DESC",
        )
    } else {
        ("", "")
    };
    let fleet = probes
        .iter()
        .enumerate()
        .map(|(i, id)| format!("({i}, '{id}', {})", 64_500 + i as i64 / ppn))
        .collect::<Vec<_>>()
        .join(", ");
    conn.run(&format!(
        "DROP TABLE IF EXISTS bench_fleet; \
         CREATE TEMP TABLE bench_fleet (idx BIGINT PRIMARY KEY, probe_id TEXT, asn BIGINT); \
         INSERT INTO bench_fleet VALUES {fleet};"
    ))
    .await?;
    let mut lo = from;
    while lo < to {
        let hi = (lo + CHUNK).min(to);
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
               JOIN bench_fleet f ON f.idx = g.n % {p}; \
             {ids} \
             INSERT INTO measurements (id, probe_id, received_at, started_at, domain, url, \
               category, asn, country, status, method, reason, software_version, body) \
             SELECT {id_value}, probe_id, received_at, started_at, domain, \
               'https://' || domain || '/', category, asn, 'KZ', status, method, '', 'bench', \
               '{{}}' FROM chunk; \
             INSERT INTO latest_verdicts (domain, asn, probe_id, started_at, measurement_id, \
               status, method, category, country) \
             SELECT {distinct} domain, asn, probe_id, started_at, id, status, method, category, \
               'KZ' FROM chunk WHERE true ORDER BY domain, asn, probe_id{newest} \
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

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// This process's resident memory now and at its peak (kB), from /proc (Linux).
fn rss_kb() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    if args.sites == 0 || args.networks == 0 || args.probes_per_network == 0 {
        bail!("--sites, --networks and --probes-per-network must be positive");
    }
    let dir = tempfile::tempdir()?;
    let mut _pg = None;
    let url = match (args.store, &args.url) {
        (_, Some(u)) => u.clone(),
        (StoreKind::Sqlite, None) => format!("sqlite://{}", dir.path().join("bench.db").display()),
        (StoreKind::Postgres, None) => {
            let server = PgServer::start(PgOptions {
                durable: true,
                max_connections: 100,
                settings: vec![
                    ("shared_buffers".into(), "1GB".into()),
                    ("max_wal_size".into(), "4GB".into()),
                ],
            })
            .context("starting a temporary PostgreSQL (is postgresql-15 installed?)")?;
            let db = server.database()?;
            let url = db.url.clone();
            _pg = Some((server, db));
            url
        }
    };
    let mut config = Config::default();
    config.store.url = url.clone();
    // The sweep and the resync would run beside the timed scrapes: off (the first scrape loads).
    config.aggregation.evaluate_interval = witness_collector::config::HumanDuration::from_secs(0);
    config.metrics.resync_interval = witness_collector::config::HumanDuration::from_secs(0);

    // The fleet, registered through the store (measurements name their probe).
    let store = store::open(&config.store)
        .await
        .context("opening the store")?;
    let now = Utc::now();
    let mut probes = Vec::new();
    for _ in 0..args.networks * args.probes_per_network {
        let id = Uuid::new_v4().to_string();
        let probe = NewProbe {
            id: id.clone(),
            token_hash: auth::hash_token(&auth::new_token()),
            created_at: now,
        };
        if !store.register_probe(&probe, None, now).await? {
            bail!("registration refused");
        }
        probes.push(id);
    }
    drop(store);
    eprintln!(
        "== {:?}: {} sites x {} networks x {} probes per network; levels {:?}",
        args.store, args.sites, args.networks, args.probes_per_network, args.levels
    );

    let top = args.levels.iter().copied().max().unwrap_or(0);
    let mut conn = Conn::open(args.store, &url).await?;
    let mut filled = 0;
    for &level in &args.levels {
        if level > filled {
            let t = Instant::now();
            fill(&mut conn, args.store, &args, &probes, filled, level, top).await?;
            let took = t.elapsed();
            eprintln!(
                "fill: {} rows in {took:.1?} ({:.0}/s)",
                level - filled,
                (level - filled) as f64 / took.as_secs_f64()
            );
            filled = level;
        }
        let read_model_rows = conn.int("SELECT count(*) FROM latest_verdicts").await?;

        // A fresh collector over the store, as after a restart.
        let rss_before = rss_kb().0;
        let store = store::open(&config.store).await?;
        let state = AppState::new(config.clone(), store)?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(witness_collector::serve(
            listener,
            state.clone(),
            async move {
                let _ = stopped.await;
            },
        ));
        let client = reqwest::Client::new();
        let scrape = || async {
            let t = Instant::now();
            let text = client
                .get(format!("{base}/metrics"))
                .send()
                .await?
                .error_for_status()?
                .text()
                .await?;
            Ok::<_, anyhow::Error>((t.elapsed(), text))
        };
        let (first, text) = scrape().await?;
        let mut times = Vec::new();
        for _ in 0..args.scrapes {
            times.push(scrape().await?.0);
        }
        times.sort();
        let ratio_series = text
            .lines()
            .filter(|l| l.starts_with("witness_site_blocked_ratio{"))
            .count();
        let samples = text.lines().filter(|l| !l.starts_with('#')).count();
        let (rss, peak) = rss_kb();
        // Where a scrape's time goes: the gauge inputs from memory, then the text.
        let t = Instant::now();
        let inputs = state.metrics.live().inputs(&state.params, Utc::now());
        let inputs_time = t.elapsed();
        let t = Instant::now();
        state.metrics.render_inputs(&inputs).await?;
        let text_time = t.elapsed();

        // The background merge (what each replica runs every resync_interval).
        let t = Instant::now();
        let merged = state
            .metrics
            .resync(state.store.as_ref(), &state.params, Utc::now())
            .await?;
        let merge = t.elapsed();

        // Before: the store's grouped reads at every scrape.
        let mut sql = Vec::new();
        for _ in 0..args.sql_renders {
            let t = Instant::now();
            let inputs =
                GaugeInputs::from_store(state.store.as_ref(), &state.params, Utc::now()).await?;
            state.metrics.render_inputs(&inputs).await?;
            sql.push(t.elapsed());
        }
        sql.sort();
        let _ = stop.send(());
        server.await??;

        let result = json!({
            "store": format!("{:?}", args.store).to_lowercase(),
            "measurements": level,
            "read_model_rows": read_model_rows,
            "ratio_series": ratio_series,
            "samples": samples,
            "bytes": text.len(),
            "first_scrape_ms": ms(first),
            "scrape_ms": {
                "p50": ms(percentile(&times, 0.5)),
                "p99": ms(percentile(&times, 0.99)),
                "max": ms(percentile(&times, 1.0)),
            },
            "inputs_ms": ms(inputs_time),
            "text_ms": ms(text_time),
            "merge_ms": ms(merge),
            "merge_rows": merged,
            "sql_render_ms": { "p50": ms(percentile(&sql, 0.5)), "max": ms(percentile(&sql, 1.0)) },
            "rss_mb": rss as f64 / 1024.0,
            "rss_model_mb": rss.saturating_sub(rss_before) as f64 / 1024.0,
            "peak_rss_mb": peak as f64 / 1024.0,
        });
        eprintln!(
            "{level} measurements, {read_model_rows} read-model rows: {ratio_series} ratio series, \
             {samples} samples, {:.1} MB; /metrics p50 {:.0} ms, p99 {:.0} ms (first, loading: \
             {:.0} ms; inputs {:.0} ms + text {:.0} ms); merge {:.0} ms; from SQL as before: \
             p50 {:.0} ms; RSS {:.0} MB",
            text.len() as f64 / 1e6,
            ms(percentile(&times, 0.5)),
            ms(percentile(&times, 0.99)),
            ms(first),
            ms(inputs_time),
            ms(text_time),
            ms(merge),
            ms(percentile(&sql, 0.5)),
            rss as f64 / 1024.0,
        );
        println!("RESULT {result}");
    }
    Ok(())
}
