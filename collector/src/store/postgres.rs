//! The shared store: PostgreSQL (14 or later), for several collectors on one database.
//!
//! Everything that must happen once is settled by the database, never in-process:
//! - a measurement id is stored once: `measurement_ids` is keyed by id (the partitioned
//!   `measurements` table cannot be: its unique indexes must include `started_at`), and an
//!   upload inserts ids with `ON CONFLICT DO NOTHING RETURNING id`, then only the new records,
//!   in one transaction. A concurrent upload of the same id waits on the index entry, then sees
//!   it taken: it answers "duplicate" only once the first copy is committed;
//! - one open event per key: a transaction-level advisory lock per key, a compare-and-set on
//!   the key's last decision time, and the partial unique index `events_one_open`;
//! - webhook notifications are claimed with `FOR UPDATE SKIP LOCKED` and a lease;
//! - invites are consumed by a conditional `UPDATE`.
//!
//! `measurements` is partitioned by month of `started_at`; partitions are created on demand
//! (under an advisory lock, so collectors do not race) before a batch that needs them, and the
//! current and next month at start. Dropping old partitions is the retention (see
//! `docs/scaling.md`).
//!
//! Commits are durable when they return with PostgreSQL's default `synchronous_commit = on`;
//! with synchronous replication, once the standby has the WAL too.
//!
//! Every query both databases share is in [`super::sql`]; this file keeps connecting, the
//! partitions, the batch insert (arrays, one statement per table), the key lock and the claim.

use std::collections::HashSet;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Datelike, NaiveDate, TimeDelta, Utc};
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::Postgres;
use uuid::Uuid;

use super::sql::{event_columns, micros_of, notification_from_row, sql_store, Dialect};
use super::{Embedded, EventKey, MeasurementRecord, Notification, StoreError, StoreResult};
use crate::readmodel::delta::ReadModelDelta;

/// Migrations compiled into the binary: `(version, description, sql)`.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "init",
        include_str!("../../migrations/postgres/0001_init.sql"),
    ),
    (
        2,
        "read model",
        include_str!("../../migrations/postgres/0002_read_model.sql"),
    ),
    (
        3,
        "export order",
        include_str!("../../migrations/postgres/0003_export_order.sql"),
    ),
    (
        4,
        "microseconds",
        include_str!("../../migrations/postgres/0004_microseconds.sql"),
    ),
    (
        5,
        "series index",
        include_str!("../../migrations/postgres/0005_series_index.sql"),
    ),
    (
        6,
        "censor hop",
        include_str!("../../migrations/postgres/0006_censor_hop.sql"),
    ),
    (
        7,
        "probe history",
        include_str!("../../migrations/postgres/0007_probe_history.sql"),
    ),
];

/// Advisory lock (transaction level) serialising partition creation across collectors.
const PARTITION_LOCK: i64 = 0x5749_544e_5041_5254; // "WITNPART"

/// Times when a batch is retried after a deadlock, a serialisation failure or a partition
/// that vanished (dropped by an operator while cached here).
const INSERT_ATTEMPTS: usize = 3;

/// PostgreSQL implementation of [`super::Store`].
#[derive(Debug)]
pub struct PostgresStore {
    /// Reads, each statement bounded by `[store] read_timeout` (`statement_timeout`).
    pool: PgPool,
    /// Writes, unbounded: an accepted upload must commit, whatever the lock waits.
    writes: PgPool,
    /// Months whose partition is known to exist: only saves DDL round trips (a miss costs one
    /// idempotent `CREATE TABLE IF NOT EXISTS`), never decides anything.
    partitions: Mutex<HashSet<(i32, u32)>>,
}

/// `(year, month)` of a time, UTC.
fn month_of(t: DateTime<Utc>) -> (i32, u32) {
    (t.year(), t.month())
}

/// First instant of a month and of the next one, UTC.
fn month_bounds((year, month): (i32, u32)) -> StoreResult<(NaiveDate, NaiveDate)> {
    let bad = || StoreError::Corrupt(format!("month {year}-{month}"));
    let from = NaiveDate::from_ymd_opt(year, month, 1).ok_or_else(bad)?;
    let to = if month == 12 {
        NaiveDate::from_ymd_opt(year + 1, 1, 1)
    } else {
        NaiveDate::from_ymd_opt(year, month + 1, 1)
    }
    .ok_or_else(bad)?;
    Ok((from, to))
}

/// Name of a month's partition of `measurements`.
pub fn partition_name((year, month): (i32, u32)) -> String {
    format!("measurements_p{year:04}{month:02}")
}

/// The SQLSTATE of a database error, if that is what `e` is.
fn sqlstate(e: &StoreError) -> Option<String> {
    match e {
        StoreError::Db(sqlx::Error::Database(d)) => d.code().map(|c| c.into_owned()),
        _ => None,
    }
}

/// One column of a batch, as an array parameter.
fn column<T>(rows: &[&MeasurementRecord], f: impl Fn(&MeasurementRecord) -> T) -> Vec<T> {
    rows.iter().map(|r| f(r)).collect()
}

/// Apply a batch's changes to the read model, inside the batch's transaction: one statement
/// per table, rows in key order (so concurrent batches lock them in the same order). Monotonic:
/// a row is replaced only by a newer verdict, times only grow; a concurrent writer of the same
/// row waits for its lock and the condition is checked against the version it committed.
async fn apply_read_model(
    tx: &mut sqlx::Transaction<'static, Postgres>,
    probe_id: &str,
    delta: &ReadModelDelta<'_>,
) -> StoreResult<()> {
    if !delta.latest.is_empty() {
        let l: Vec<&MeasurementRecord> = delta.latest.iter().map(|d| d.record).collect();
        let l = &l;
        // A key whose batch names several places in turn does not continue the stored run of
        // verdicts naming the censor's place: reset it first, where the upsert below will
        // replace the row (the same monotonic condition), so that it starts afresh.
        let broken: Vec<_> = delta.latest.iter().filter(|d| !d.continues).collect();
        if !broken.is_empty() {
            sqlx::query(
                "UPDATE latest_verdicts lv SET censor_run = 0 \
                 FROM UNNEST($2::text[], $3::bigint[], $4::bigint[], $5::text[]) \
                   AS u(domain, asn, started_at, id) \
                 WHERE lv.domain = u.domain AND lv.asn = u.asn AND lv.probe_id = $1 \
                   AND (u.started_at, u.id) > (lv.started_at, lv.measurement_id)",
            )
            .bind(probe_id)
            .bind(
                broken
                    .iter()
                    .map(|d| d.record.domain.clone())
                    .collect::<Vec<_>>(),
            )
            .bind(
                broken
                    .iter()
                    .map(|d| d.record.asn.map(i64::from))
                    .collect::<Vec<_>>(),
            )
            .bind(
                broken
                    .iter()
                    .map(|d| micros_of(d.record.started_at))
                    .collect::<Vec<_>>(),
            )
            .bind(
                broken
                    .iter()
                    .map(|d| d.record.id.to_string())
                    .collect::<Vec<_>>(),
            )
            .execute(&mut **tx)
            .await?;
        }
        sqlx::query(
            "INSERT INTO latest_verdicts (domain, asn, probe_id, started_at, measurement_id, \
             status, method, category, country, censor_hop, censor_asn, censor_run) \
             SELECT u.domain, u.asn, $1, u.started_at, u.id, u.status, u.method, u.category, \
                    u.country, u.censor_hop, u.censor_asn, u.censor_run \
             FROM UNNEST($2::text[], $3::bigint[], $4::bigint[], $5::text[], $6::text[], \
                         $7::text[], $8::text[], $9::text[], $10::smallint[], $11::bigint[], \
                         $12::integer[]) WITH ORDINALITY \
               AS u(domain, asn, started_at, id, status, method, category, country, \
                    censor_hop, censor_asn, censor_run, n) \
             ORDER BY u.n \
             ON CONFLICT (domain, asn, probe_id) DO UPDATE SET \
             started_at = EXCLUDED.started_at, measurement_id = EXCLUDED.measurement_id, \
             status = EXCLUDED.status, method = EXCLUDED.method, \
             category = EXCLUDED.category, country = EXCLUDED.country, \
             censor_hop = EXCLUDED.censor_hop, censor_asn = EXCLUDED.censor_asn, \
             censor_run = CASE WHEN EXCLUDED.censor_run > 0 \
                 AND latest_verdicts.censor_hop IS NOT DISTINCT FROM EXCLUDED.censor_hop \
                 AND latest_verdicts.censor_asn IS NOT DISTINCT FROM EXCLUDED.censor_asn \
               THEN latest_verdicts.censor_run + EXCLUDED.censor_run \
               ELSE EXCLUDED.censor_run END \
             WHERE (EXCLUDED.started_at, EXCLUDED.measurement_id) \
                 > (latest_verdicts.started_at, latest_verdicts.measurement_id)",
        )
        .bind(probe_id)
        .bind(column(l, |r| r.domain.clone()))
        .bind(column(l, |r| r.asn.map(i64::from)))
        .bind(column(l, |r| micros_of(r.started_at)))
        .bind(column(l, |r| r.id.to_string()))
        .bind(column(l, |r| r.status.as_str().to_string()))
        .bind(column(l, |r| r.method.map(|m| m.as_str().to_string())))
        .bind(column(l, |r| r.category.clone()))
        .bind(column(l, |r| r.country.clone()))
        .bind(column(l, |r| r.censor_hop.map(i16::from)))
        .bind(column(l, |r| r.censor_asn.map(i64::from)))
        .bind(
            delta
                .latest
                .iter()
                .map(|d| i32::try_from(d.run).unwrap_or(i32::MAX))
                .collect::<Vec<_>>(),
        )
        .execute(&mut **tx)
        .await?;
    }
    if !delta.blocked.is_empty() {
        let b = &delta.blocked;
        sqlx::query(
            "INSERT INTO blocked_methods (domain, asn, method, last_at) \
             SELECT u.domain, u.asn, u.method, u.last_at \
             FROM UNNEST($1::text[], $2::bigint[], $3::text[], $4::bigint[]) \
               WITH ORDINALITY AS u(domain, asn, method, last_at, n) ORDER BY u.n \
             ON CONFLICT (domain, asn, method) DO UPDATE SET \
             last_at = GREATEST(blocked_methods.last_at, EXCLUDED.last_at)",
        )
        .bind(b.iter().map(|x| x.0.to_string()).collect::<Vec<_>>())
        .bind(b.iter().map(|x| i64::from(x.1)).collect::<Vec<_>>())
        .bind(b.iter().map(|x| x.2.as_str()).collect::<Vec<_>>())
        .bind(b.iter().map(|x| micros_of(x.3)).collect::<Vec<_>>())
        .execute(&mut **tx)
        .await?;
    }
    if !delta.hours.is_empty() {
        let h = &delta.hours;
        sqlx::query(
            "INSERT INTO probe_hours (hour, asn, country, probe_id, measurements, \
             last_received_at, last_started_at) \
             SELECT u.hour, u.asn, u.country, $1, u.measurements, u.last_received_at, \
                    u.last_started_at \
             FROM UNNEST($2::bigint[], $3::bigint[], $4::text[], $5::bigint[], \
                         $6::bigint[], $7::bigint[]) WITH ORDINALITY \
               AS u(hour, asn, country, measurements, last_received_at, last_started_at, n) \
             ORDER BY u.n \
             ON CONFLICT (hour, asn, country, probe_id) DO UPDATE SET \
             measurements = probe_hours.measurements + EXCLUDED.measurements, \
             last_received_at = GREATEST(probe_hours.last_received_at, EXCLUDED.last_received_at), \
             last_started_at = GREATEST(probe_hours.last_started_at, EXCLUDED.last_started_at)",
        )
        .bind(probe_id)
        .bind(h.iter().map(|x| micros_of(x.hour)).collect::<Vec<_>>())
        .bind(h.iter().map(|x| x.asn).collect::<Vec<_>>())
        .bind(h.iter().map(|x| x.country.as_str()).collect::<Vec<_>>())
        .bind(h.iter().map(|x| x.measurements).collect::<Vec<_>>())
        .bind(
            h.iter()
                .map(|x| micros_of(x.last_received_at))
                .collect::<Vec<_>>(),
        )
        .bind(
            h.iter()
                .map(|x| micros_of(x.last_started_at))
                .collect::<Vec<_>>(),
        )
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

impl PostgresStore {
    /// Connect to `url` (`postgres://USER:PASSWORD@HOST:PORT/DB?sslmode=...`), migrate (sqlx
    /// holds an advisory lock meanwhile, so collectors starting together migrate once), and
    /// make sure this month's and next month's partitions exist.
    pub async fn open(url: &str, max_connections: u32) -> StoreResult<PostgresStore> {
        Self::open_with(url, max_connections, Duration::from_secs(30)).await
    }

    /// [`open`](Self::open), with every read statement stopped after `read_timeout`. Reads
    /// and writes have pools of their own (each up to `max_connections`, opened on demand):
    /// the bound is the reads' session setting, and a long read never holds a connection a
    /// write waits for. Set with `SET` after connecting, not as a startup option, which
    /// PgBouncer refuses.
    pub async fn open_with(
        url: &str,
        max_connections: u32,
        read_timeout: Duration,
    ) -> StoreResult<PostgresStore> {
        let options = PgConnectOptions::from_str(url)?.application_name("witness-collector");
        let writes = PgPoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options.clone())
            .await?;
        Migrator::new(Embedded(MIGRATIONS))
            .await?
            .run(&writes)
            .await?;
        let timeout_ms = read_timeout.as_millis().clamp(1, i32::MAX as u128);
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(Duration::from_secs(30))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    // An integer from the configuration, not input: safe to format in.
                    sqlx::query(&format!("SET statement_timeout = {timeout_ms}"))
                        .execute(&mut *conn)
                        .await
                        .map(|_| ())
                })
            })
            .connect_with(options)
            .await?;
        let store = PostgresStore {
            pool,
            writes,
            partitions: Mutex::new(HashSet::new()),
        };
        let now = Utc::now();
        store
            .ensure_partitions([month_of(now), month_of(now + TimeDelta::days(32))])
            .await?;
        Ok(store)
    }

    /// The connection pool (benchmarks and tests read sizes and counts through it).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Where writes go: the writers' pool (PostgreSQL has many writers; the key locks and
    /// constraints arbitrate).
    fn writer(&self) -> &PgPool {
        &self.writes
    }

    fn known_partitions(&self) -> std::sync::MutexGuard<'_, HashSet<(i32, u32)>> {
        match self.partitions.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Create the partitions of these months unless they exist.
    pub async fn ensure_partitions(
        &self,
        months: impl IntoIterator<Item = (i32, u32)>,
    ) -> StoreResult<()> {
        let missing: Vec<(i32, u32)> = {
            let known = self.known_partitions();
            let mut m: Vec<_> = months.into_iter().filter(|m| !known.contains(m)).collect();
            m.sort();
            m.dedup();
            m
        };
        if missing.is_empty() {
            return Ok(());
        }
        let mut tx = self.writer().begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(PARTITION_LOCK)
            .execute(&mut *tx)
            .await?;
        for month in &missing {
            let (from, to) = month_bounds(*month)?;
            let micros = |d: NaiveDate| micros_of(d.and_time(chrono::NaiveTime::MIN).and_utc());
            // Names and bounds come from integers, not from input: safe to format in.
            sqlx::query(&format!(
                "CREATE TABLE IF NOT EXISTS {} PARTITION OF measurements \
                 FOR VALUES FROM ({}) TO ({})",
                partition_name(*month),
                micros(from),
                micros(to)
            ))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        self.known_partitions().extend(missing);
        Ok(())
    }

    /// One attempt at storing a batch (sorted by id, so concurrent batches lock ids in the
    /// same order and cannot deadlock on them). Returns the ids that were new.
    async fn insert_once(
        &self,
        probe_id: &str,
        now: DateTime<Utc>,
        records: &[&MeasurementRecord],
    ) -> StoreResult<HashSet<Uuid>> {
        self.ensure_partitions(records.iter().map(|r| month_of(r.started_at)))
            .await?;
        let mut tx = self.writer().begin().await?;
        let fresh: Vec<String> = sqlx::query_scalar(
            "INSERT INTO measurement_ids (id, started_at) \
             SELECT u.id::uuid, u.started_at \
             FROM UNNEST($1::text[], $2::bigint[]) AS u(id, started_at) ORDER BY 1 \
             ON CONFLICT (id) DO NOTHING RETURNING id::text",
        )
        .bind(column(records, |r| r.id.to_string()))
        .bind(column(records, |r| micros_of(r.started_at)))
        .fetch_all(&mut *tx)
        .await?;
        let fresh: HashSet<Uuid> = fresh
            .iter()
            .map(|s| {
                Uuid::parse_str(s).map_err(|_| StoreError::Corrupt(format!("measurement id {s}")))
            })
            .collect::<StoreResult<_>>()?;
        let new: Vec<&MeasurementRecord> = records
            .iter()
            .copied()
            .filter(|r| fresh.contains(&r.id))
            .collect();
        if !new.is_empty() {
            sqlx::query(
                "INSERT INTO measurements (id, probe_id, received_at, started_at, domain, url, \
                 category, asn, country, status, method, reason, software_version, body, \
                 censor_hop, censor_asn) \
                 SELECT u.id::uuid, $1, u.received_at, u.started_at, u.domain, u.url, u.category, \
                        u.asn, u.country, u.status, u.method, u.reason, u.software_version, u.body, \
                        u.censor_hop, u.censor_asn \
                 FROM UNNEST($2::text[], $3::bigint[], $4::bigint[], $5::text[], \
                             $6::text[], $7::text[], $8::bigint[], $9::text[], $10::text[], \
                             $11::text[], $12::text[], $13::text[], $14::text[], \
                             $15::smallint[], $16::bigint[]) \
                   AS u(id, received_at, started_at, domain, url, category, asn, country, \
                        status, method, reason, software_version, body, censor_hop, censor_asn)",
            )
            .bind(probe_id)
            .bind(column(&new, |r| r.id.to_string()))
            .bind(column(&new, |r| micros_of(r.received_at)))
            .bind(column(&new, |r| micros_of(r.started_at)))
            .bind(column(&new, |r| r.domain.clone()))
            .bind(column(&new, |r| r.url.clone()))
            .bind(column(&new, |r| r.category.clone()))
            .bind(column(&new, |r| r.asn.map(i64::from)))
            .bind(column(&new, |r| r.country.clone()))
            .bind(column(&new, |r| r.status.as_str().to_string()))
            .bind(column(&new, |r| r.method.map(|m| m.as_str().to_string())))
            .bind(column(&new, |r| r.reason.clone()))
            .bind(column(&new, |r| r.software_version.clone()))
            .bind(column(&new, |r| r.body.clone()))
            .bind(column(&new, |r| r.censor_hop.map(i16::from)))
            .bind(column(&new, |r| r.censor_asn.map(i64::from)))
            .execute(&mut *tx)
            .await?;
        }
        apply_read_model(&mut tx, probe_id, &ReadModelDelta::of(new.iter().copied())).await?;
        sqlx::query("UPDATE probes SET last_seen_at = $1 WHERE id = $2")
            .bind(micros_of(now))
            .bind(probe_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(fresh)
    }
}

sql_store!(PostgresStore, Postgres, PgRow, Dialect::Postgres, {
    async fn lock_event_key(tx: &mut Self::Tx, key: &EventKey) -> StoreResult<()> {
        // Until the transaction ends; the statement that follows checks the key's last
        // decision time with a snapshot taken after the lock, so it sees every committed
        // decision.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
            .bind(format!(
                "witness-event\u{1f}{}\u{1f}{}\u{1f}{}\u{1f}{}",
                key.kind.as_str(),
                key.domain.as_deref().unwrap_or(""),
                key.asn,
                key.method.map_or("", |m| m.as_str())
            ))
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    async fn insert_batch(
        &self,
        probe_id: &str,
        now: DateTime<Utc>,
        records: &[MeasurementRecord],
    ) -> StoreResult<Vec<bool>> {
        let mut sorted: Vec<&MeasurementRecord> = records.iter().collect();
        sorted.sort_by_key(|r| r.id);
        let mut attempt = 0;
        let fresh = loop {
            attempt += 1;
            match self.insert_once(probe_id, now, &sorted).await {
                Ok(fresh) => break fresh,
                Err(e) if attempt < INSERT_ATTEMPTS => match sqlstate(&e).as_deref() {
                    // deadlock_detected, serialization_failure: the transaction was rolled
                    // back; run it again.
                    Some("40P01" | "40001") => {
                        tracing::debug!(error = %e, attempt, "batch retried");
                    }
                    // check_violation: "no partition of relation found for row" after an
                    // operator dropped a cached partition.
                    Some("23514") => {
                        self.known_partitions().clear();
                        tracing::debug!(error = %e, attempt, "batch retried");
                    }
                    _ => return Err(e),
                },
                Err(e) => return Err(e),
            }
        };
        Ok(records.iter().map(|r| fresh.contains(&r.id)).collect())
    }

    async fn claim(
        &self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: u32,
    ) -> StoreResult<Vec<Notification>> {
        // SKIP LOCKED: collectors claiming at the same moment take disjoint rows instead of
        // queueing behind each other; the lease keeps a claimed row from being due again.
        let mut q = Self::query(&format!(
            "WITH due AS (SELECT id FROM outbox \
                 WHERE delivered_at IS NULL AND abandoned_at IS NULL AND next_attempt_at <= ? \
                 ORDER BY id LIMIT ? FOR UPDATE SKIP LOCKED) \
             UPDATE outbox o SET next_attempt_at = ? FROM due, events e \
             WHERE o.id = due.id AND e.id = o.event_id \
             RETURNING o.id AS outbox_id, o.transition, o.url, o.attempts, {}",
            event_columns("e")
        ));
        q.arg(now).arg(limit).arg(lease_until);
        let mut out = self
            .all(&q)
            .await?
            .iter()
            .map(notification_from_row)
            .collect::<StoreResult<Vec<_>>>()?;
        out.sort_by_key(|n| n.id);
        Ok(out)
    }
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months_and_partition_names() {
        assert_eq!(
            month_bounds((2024, 12)).unwrap(),
            (
                NaiveDate::from_ymd_opt(2024, 12, 1).unwrap(),
                NaiveDate::from_ymd_opt(2025, 1, 1).unwrap()
            )
        );
        assert_eq!(partition_name((2024, 3)), "measurements_p202403");
        let t = DateTime::parse_from_rfc3339("2024-02-29T23:59:59.999Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(month_of(t), (2024, 2));
    }
}
