//! The embedded store: SQLite in WAL mode with `synchronous=FULL`.
//!
//! FULL rather than NORMAL: in WAL mode NORMAL may lose the last commits on power loss, and the
//! collector acknowledges an upload only once it is committed (the probe then deletes its copy),
//! so an acknowledged batch must survive a power cut. The cost is one fsync per commit, and
//! uploads are batched.
//!
//! Writes start with a write statement, so a transaction takes SQLite's write lock up front and
//! waits (`busy_timeout`) instead of failing on a lock upgrade. That single writer is also why
//! nothing here needs the key locks of PostgreSQL. Every query both databases share is in
//! [`super::sql`]; this file keeps connecting, the batch insert and the outbox claim.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::migrate::Migrator;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::Sqlite;

use super::sql::{event_columns, notification_from_row, sql_store, Dialect, SqlRow, SqlStore};
use super::{Embedded, EventKey, MeasurementRecord, Notification, StoreResult};
use crate::readmodel::delta::ReadModelDelta;

/// Migrations compiled into the binary: `(version, description, sql)`.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "init",
        include_str!("../../migrations/sqlite/0001_init.sql"),
    ),
    (
        2,
        "read model",
        include_str!("../../migrations/sqlite/0002_read_model.sql"),
    ),
    (
        3,
        "export order",
        include_str!("../../migrations/sqlite/0003_export_order.sql"),
    ),
    (
        4,
        "microseconds",
        include_str!("../../migrations/sqlite/0004_microseconds.sql"),
    ),
    (
        5,
        "series index",
        include_str!("../../migrations/sqlite/0005_series_index.sql"),
    ),
    (
        6,
        "censor hop",
        include_str!("../../migrations/sqlite/0006_censor_hop.sql"),
    ),
    (
        7,
        "probe history",
        include_str!("../../migrations/sqlite/0007_probe_history.sql"),
    ),
];

/// `[store] read_timeout`'s default.
const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// SQLite instructions between two calls of the progress handler (well under a millisecond).
const PROGRESS_OPS: i32 = 10_000;

/// A gap between two progress calls longer than this is waiting (for a slow client to take
/// rows, for the lock), not executing: it is not counted.
const PROGRESS_GAP: Duration = Duration::from_millis(50);

/// Stop whatever this reader connection runs once it has executed for `limit` since it was
/// taken from the pool (SQLite's progress handler, reset at every acquire). A past status
/// over a long span scanned for seconds per request, and 16 of them held every connection
/// (issue #20). Only execution counts, so an export streaming to a slow reader is not cut.
async fn bound_reads(conn: &mut sqlx::SqliteConnection, limit: Duration) -> sqlx::Result<()> {
    let mut busy = Duration::ZERO;
    let mut last = std::time::Instant::now();
    conn.lock_handle()
        .await?
        .set_progress_handler(PROGRESS_OPS, move || {
            let now = std::time::Instant::now();
            let gap = now.saturating_duration_since(last);
            last = now;
            if gap < PROGRESS_GAP {
                busy += gap;
            }
            busy < limit
        });
    Ok(())
}

/// SQLite implementation of [`super::Store`].
#[derive(Clone, Debug)]
pub struct SqliteStore {
    /// Readers (`[store] max_connections`).
    pool: SqlitePool,
    /// The one connection every write goes through (see [`SqliteStore::open`]).
    writer: SqlitePool,
}

impl SqliteStore {
    /// Open (creating if missing) the database at `url` (`sqlite://PATH` or a path) and migrate.
    pub async fn open(url: &str, max_connections: u32) -> StoreResult<SqliteStore> {
        Self::open_with(url, max_connections, DEFAULT_READ_TIMEOUT).await
    }

    /// [`open`](Self::open), with reads stopped after `read_timeout` of execution
    /// ([`bound_reads`]).
    pub async fn open_with(
        url: &str,
        max_connections: u32,
        read_timeout: Duration,
    ) -> StoreResult<SqliteStore> {
        let options = if url.starts_with("sqlite:") {
            SqliteConnectOptions::from_str(url)?
        } else {
            SqliteConnectOptions::new().filename(url)
        };
        let options = options
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true)
            // Reads through a shared memory map instead of copying every page out of the OS
            // cache into each connection's own small cache (2 MB by default): with a large
            // database that copying dominated ingest (scripts/bench-collector.sh).
            .pragma("mmap_size", "1073741824")
            .pragma("cache_size", "-16384");
        // Every write goes through one connection. SQLite has one writer at a time anyway, but
        // with writes spread over the pool, the waiting connections poll the lock with the
        // busy handler's growing sleeps (up to 100 ms each), so the lock sat idle while
        // uploads and event changes queued, and each write started on a connection whose page
        // cache another connection's commit had just invalidated. One writer connection queues
        // them in order (the pool's fair queue) and keeps its cache (docs/scaling.md, "Ingest
        // with a full window"). Readers never wait for it (WAL).
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(60))
            .connect_with(options.clone())
            .await?;
        Migrator::new(Embedded(MIGRATIONS))
            .await?
            .run(&writer)
            .await?;
        let pool = SqlitePoolOptions::new()
            .max_connections(max_connections.max(1))
            .after_connect(move |conn, _| Box::pin(bound_reads(conn, read_timeout)))
            .before_acquire(move |conn, _| {
                Box::pin(async move { bound_reads(conn, read_timeout).await.map(|()| true) })
            })
            .connect_with(options)
            .await?;
        Ok(SqliteStore { pool, writer })
    }

    /// The readers' connection pool (benchmarks read sizes and counts through it).
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// The writer's pool: one connection.
    fn writer(&self) -> &SqlitePool {
        &self.writer
    }

    /// Apply a batch's changes to the read model, inside the batch's transaction, a row at a
    /// time (SQLite has no arrays to bind; every statement is prepared once and cached).
    /// Monotonic: a row is replaced only by a newer verdict, times only grow.
    async fn apply_read_model(
        tx: &mut sqlx::Transaction<'static, Sqlite>,
        probe_id: &str,
        delta: &ReadModelDelta<'_>,
    ) -> StoreResult<()> {
        for l in &delta.latest {
            let r = l.record;
            // The run of verdicts naming the censor's place continues the stored one when the
            // stored verdict names the same place and the whole batch does too.
            let mut q = Self::query(
                "INSERT INTO latest_verdicts (domain, asn, probe_id, started_at, measurement_id, \
                 status, method, category, country, censor_hop, censor_asn, censor_run) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
                 ON CONFLICT (domain, asn, probe_id) DO UPDATE SET \
                 started_at = excluded.started_at, measurement_id = excluded.measurement_id, \
                 status = excluded.status, method = excluded.method, \
                 category = excluded.category, country = excluded.country, \
                 censor_hop = excluded.censor_hop, censor_asn = excluded.censor_asn, \
                 censor_run = CASE WHEN ? <> 0 AND excluded.censor_run > 0 \
                     AND latest_verdicts.censor_hop IS excluded.censor_hop \
                     AND latest_verdicts.censor_asn IS excluded.censor_asn \
                   THEN latest_verdicts.censor_run + excluded.censor_run \
                   ELSE excluded.censor_run END \
                 WHERE (excluded.started_at, excluded.measurement_id) \
                     > (latest_verdicts.started_at, latest_verdicts.measurement_id)",
            );
            q.arg(r.domain.as_str())
                .arg(r.asn.map(i64::from))
                .arg(probe_id)
                .arg(r.started_at)
                .arg(r.id.to_string())
                .arg(r.status.as_str())
                .arg(r.method.map(|m| m.as_str()))
                .arg(&r.category)
                .arg(&r.country)
                .arg(l.censor_hop())
                .arg(l.censor_asn())
                .arg(l.run)
                .arg(i64::from(l.continues));
            Self::tx_exec(tx, &q).await?;
        }
        for (domain, asn, method, at) in &delta.blocked {
            let mut q = Self::query(
                "INSERT INTO blocked_methods (domain, asn, method, last_at) VALUES (?, ?, ?, ?) \
                 ON CONFLICT (domain, asn, method) DO UPDATE SET \
                 last_at = MAX(blocked_methods.last_at, excluded.last_at)",
            );
            q.arg(*domain).arg(*asn).arg(method.as_str()).arg(*at);
            Self::tx_exec(tx, &q).await?;
        }
        for h in &delta.hours {
            let mut q = Self::query(
                "INSERT INTO probe_hours (hour, asn, country, probe_id, measurements, \
                 last_received_at, last_started_at) VALUES (?, ?, ?, ?, ?, ?, ?) \
                 ON CONFLICT (hour, asn, country, probe_id) DO UPDATE SET \
                 measurements = probe_hours.measurements + excluded.measurements, \
                 last_received_at = MAX(probe_hours.last_received_at, excluded.last_received_at), \
                 last_started_at = MAX(probe_hours.last_started_at, excluded.last_started_at)",
            );
            q.arg(h.hour)
                .arg(h.asn)
                .arg(h.country.as_str())
                .arg(probe_id)
                .arg(h.measurements)
                .arg(h.last_received_at)
                .arg(h.last_started_at);
            Self::tx_exec(tx, &q).await?;
        }
        Ok(())
    }
}

sql_store!(SqliteStore, Sqlite, SqliteRow, Dialect::Sqlite, {
    async fn lock_event_key(_tx: &mut Self::Tx, _key: &EventKey) -> StoreResult<()> {
        // One writer at a time: the event statements check the key's state under the write
        // lock they take.
        Ok(())
    }

    async fn insert_batch(
        &self,
        probe_id: &str,
        now: DateTime<Utc>,
        records: &[MeasurementRecord],
    ) -> StoreResult<Vec<bool>> {
        let mut tx = self.writer.begin().await?;
        let mut inserted = Vec::with_capacity(records.len());
        for r in records {
            let mut q = Self::query(
                "INSERT INTO measurements (id, probe_id, received_at, started_at, domain, url, \
                 category, asn, country, status, method, reason, software_version, body, \
                 censor_hop, censor_asn) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO NOTHING",
            );
            q.arg(r.id.to_string())
                .arg(probe_id)
                .arg(r.received_at)
                .arg(r.started_at)
                .arg(r.domain.as_str())
                .arg(r.url.as_str())
                .arg(&r.category)
                .arg(r.asn.map(i64::from))
                .arg(&r.country)
                .arg(r.status.as_str())
                .arg(r.method.map(|m| m.as_str()))
                .arg(r.reason.as_str())
                .arg(r.software_version.as_str())
                .arg(r.body.as_str())
                .arg(r.censor_hop.map(i64::from))
                .arg(r.censor_asn.map(i64::from));
            inserted.push(Self::tx_exec(&mut tx, &q).await? == 1);
        }
        let fresh = records
            .iter()
            .zip(&inserted)
            .filter(|(_, new)| **new)
            .map(|(r, _)| r);
        Self::apply_read_model(&mut tx, probe_id, &ReadModelDelta::of(fresh)).await?;
        let mut seen = Self::query("UPDATE probes SET last_seen_at = ? WHERE id = ?");
        seen.arg(now).arg(probe_id);
        Self::tx_exec(&mut tx, &seen).await?;
        tx.commit().await?;
        Ok(inserted)
    }

    async fn claim(
        &self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: u32,
    ) -> StoreResult<Vec<Notification>> {
        let mut tx = self.writer.begin().await?;
        let mut q = Self::query(
            "UPDATE outbox SET next_attempt_at = ? WHERE id IN (SELECT id FROM outbox \
             WHERE delivered_at IS NULL AND abandoned_at IS NULL AND next_attempt_at <= ? \
             ORDER BY id LIMIT ?) RETURNING id",
        );
        q.arg(lease_until).arg(now).arg(limit);
        let claimed = Self::tx_all(&mut tx, &q).await?;
        if claimed.is_empty() {
            tx.rollback().await?;
            return Ok(Vec::new());
        }
        let mut q = Self::query(&format!(
            "SELECT o.id AS outbox_id, o.transition, o.url, o.attempts, {} \
             FROM outbox o JOIN events e ON e.id = o.event_id WHERE o.id IN (",
            event_columns("e")
        ));
        q.bind_list(
            claimed
                .iter()
                .map(|r| r.num("id"))
                .collect::<StoreResult<Vec<i64>>>()?,
        )
        .push(") ORDER BY o.id");
        let rows = Self::tx_all(&mut tx, &q).await?;
        tx.commit().await?;
        rows.iter().map(notification_from_row).collect()
    }
});
