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

use std::collections::HashSet;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Datelike, NaiveDate, TimeDelta, Utc};
use futures::TryStreamExt;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{Postgres, QueryBuilder, Row};
use uuid::Uuid;
use witness_core::model::Method;

use super::{
    hour_of, CloseEvent, Cursor, Embedded, Event, EventKey, EventState, Filter, HistoryRow,
    MeasurementRecord, NewEvent, NewInvite, NewProbe, Notification, ProbeNetworkRow,
    ReadModelDelta, RecentNetwork, RecentSite, Store, StoreError, StoreResult, TokenInfo,
};
use crate::model::{EventKind, Evidence, LatestGroup, Obs, Presence, Transition};

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
];

/// Advisory lock (transaction level) serialising partition creation across collectors.
const PARTITION_LOCK: i64 = 0x5749_544e_5041_5254; // "WITNPART"

/// Times when a batch is retried after a deadlock, a serialisation failure or a partition
/// that vanished (dropped by an operator while cached here).
const INSERT_ATTEMPTS: usize = 3;

/// Origin of `date_bin` buckets: any whole hour, so buckets are whole UTC minutes and hours
/// whatever the session's time zone.
const BIN_ORIGIN: &str = "TIMESTAMPTZ '2000-01-01 00:00:00+00'";

/// PostgreSQL implementation of [`Store`].
#[derive(Debug)]
pub struct PostgresStore {
    pool: PgPool,
    /// Months whose partition is known to exist: only saves DDL round trips (a miss costs one
    /// idempotent `CREATE TABLE IF NOT EXISTS`), never decides anything.
    partitions: Mutex<HashSet<(i32, u32)>>,
}

fn parse<T: FromStr>(s: &str, what: &str) -> StoreResult<T> {
    s.parse()
        .map_err(|_| StoreError::Corrupt(format!("{what} {s:?}")))
}

fn opt_method(s: Option<String>) -> StoreResult<Option<Method>> {
    match s.as_deref() {
        None | Some("") => Ok(None),
        Some(m) => parse(m, "method").map(Some),
    }
}

fn asn_of(v: i64) -> StoreResult<u32> {
    u32::try_from(v).map_err(|_| StoreError::Corrupt(format!("asn {v}")))
}

fn count(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn evidence(s: &str) -> StoreResult<Evidence> {
    serde_json::from_str(s).map_err(|e| StoreError::Corrupt(format!("evidence: {e}")))
}

fn to_json(e: &Evidence) -> StoreResult<String> {
    serde_json::to_string(e).map_err(|e| StoreError::Corrupt(format!("evidence: {e}")))
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

const EVENT_COLUMNS: &str = "id, kind, domain, asn, method, country, category, started_at, \
     ended_at, evidence, end_evidence";

fn event_from_row(row: &PgRow) -> StoreResult<Event> {
    let domain: String = row.try_get("domain")?;
    Ok(Event {
        id: row.try_get("id")?,
        kind: parse(row.try_get::<&str, _>("kind")?, "event kind")?,
        domain: (!domain.is_empty()).then_some(domain),
        asn: asn_of(row.try_get("asn")?)?,
        country: row.try_get("country")?,
        category: row.try_get("category")?,
        method: opt_method(row.try_get("method")?)?,
        started_at: row.try_get("started_at")?,
        ended_at: row.try_get("ended_at")?,
        evidence: evidence(row.try_get("evidence")?)?,
        end_evidence: row
            .try_get::<Option<&str>, _>("end_evidence")?
            .map(evidence)
            .transpose()?,
    })
}

fn measurement_from_row(row: &PgRow) -> StoreResult<MeasurementRecord> {
    Ok(MeasurementRecord {
        id: parse(row.try_get::<&str, _>("id")?, "measurement id")?,
        received_at: row.try_get("received_at")?,
        started_at: row.try_get("started_at")?,
        domain: row.try_get("domain")?,
        url: row.try_get("url")?,
        category: row.try_get("category")?,
        asn: row
            .try_get::<Option<i64>, _>("asn")?
            .map(asn_of)
            .transpose()?,
        country: row.try_get("country")?,
        status: parse(row.try_get::<&str, _>("status")?, "status")?,
        method: opt_method(row.try_get("method")?)?,
        reason: row.try_get("reason")?,
        software_version: row.try_get("software_version")?,
        body: row.try_get("body")?,
    })
}

/// Appends the common `AND ...` filters on the `measurements` table.
fn push_measurement_filters<'a>(
    qb: &mut QueryBuilder<'a, Postgres>,
    f: &'a Filter,
    time_column: &str,
) {
    if let Some(s) = f.since {
        qb.push(format!(" AND {time_column} >= ")).push_bind(s);
    }
    if let Some(u) = f.until {
        qb.push(format!(" AND {time_column} <= ")).push_bind(u);
    }
    if let Some(a) = f.asn {
        qb.push(" AND asn = ").push_bind(i64::from(a));
    }
    if let Some(c) = &f.country {
        qb.push(" AND country = ").push_bind(c.as_str());
    }
    if let Some(c) = &f.category {
        qb.push(" AND category = ").push_bind(c.as_str());
    }
    if let Some(d) = &f.domain {
        qb.push(" AND domain = ").push_bind(d.as_str());
    }
    if let Some(s) = f.status {
        qb.push(" AND status = ").push_bind(s.as_str());
    }
}

/// The key's columns as stored (`''` for the absent domain and method of shutdowns).
fn key_columns(key: &EventKey) -> (&'static str, &str, i64, &'static str) {
    (
        key.kind.as_str(),
        key.domain.as_deref().unwrap_or(""),
        i64::from(key.asn),
        key.method.map_or("", |m| m.as_str()),
    )
}

/// Serialise writers of one event key for the rest of the transaction, then tell whether the
/// key's latest decision time is still `floor`.
async fn lock_key_at_floor(
    tx: &mut sqlx::Transaction<'_, Postgres>,
    key: &EventKey,
    floor: Option<DateTime<Utc>>,
) -> StoreResult<bool> {
    let (kind, domain, asn, method) = key_columns(key);
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(format!(
            "witness-event\u{1f}{kind}\u{1f}{domain}\u{1f}{asn}\u{1f}{method}"
        ))
        .execute(&mut **tx)
        .await?;
    let current: bool = sqlx::query_scalar(
        "SELECT MAX(GREATEST(open_decided_at, close_decided_at)) IS NOT DISTINCT FROM $5 \
         FROM events WHERE kind = $1 AND domain = $2 AND asn = $3 AND method = $4",
    )
    .bind(kind)
    .bind(domain)
    .bind(asn)
    .bind(method)
    .bind(floor)
    .fetch_one(&mut **tx)
    .await?;
    Ok(current)
}

/// Apply a batch's changes to the read model, inside the batch's transaction: one statement
/// per table, rows in key order (so concurrent batches lock them in the same order). Monotonic:
/// a row is replaced only by a newer verdict, times only grow; a concurrent writer of the same
/// row waits for its lock and the condition is checked against the version it committed.
async fn apply_read_model(
    tx: &mut sqlx::Transaction<'_, Postgres>,
    probe_id: &str,
    delta: &ReadModelDelta<'_>,
) -> StoreResult<()> {
    if !delta.latest.is_empty() {
        let l = &delta.latest;
        sqlx::query(
            "INSERT INTO latest_verdicts (domain, asn, probe_id, started_at, measurement_id, \
             status, method, category, country) \
             SELECT u.domain, u.asn, $1, u.started_at, u.id, u.status, u.method, u.category, \
                    u.country \
             FROM UNNEST($2::text[], $3::bigint[], $4::timestamptz[], $5::text[], $6::text[], \
                         $7::text[], $8::text[], $9::text[]) WITH ORDINALITY \
               AS u(domain, asn, started_at, id, status, method, category, country, n) \
             ORDER BY u.n \
             ON CONFLICT (domain, asn, probe_id) DO UPDATE SET \
             started_at = EXCLUDED.started_at, measurement_id = EXCLUDED.measurement_id, \
             status = EXCLUDED.status, method = EXCLUDED.method, \
             category = EXCLUDED.category, country = EXCLUDED.country \
             WHERE (EXCLUDED.started_at, EXCLUDED.measurement_id) \
                 > (latest_verdicts.started_at, latest_verdicts.measurement_id)",
        )
        .bind(probe_id)
        .bind(l.iter().map(|r| r.domain.clone()).collect::<Vec<_>>())
        .bind(l.iter().map(|r| r.asn.map(i64::from)).collect::<Vec<_>>())
        .bind(l.iter().map(|r| r.started_at).collect::<Vec<_>>())
        .bind(l.iter().map(|r| r.id.to_string()).collect::<Vec<_>>())
        .bind(
            l.iter()
                .map(|r| r.status.as_str().to_string())
                .collect::<Vec<_>>(),
        )
        .bind(
            l.iter()
                .map(|r| r.method.map(|m| m.as_str().to_string()))
                .collect::<Vec<_>>(),
        )
        .bind(l.iter().map(|r| r.category.clone()).collect::<Vec<_>>())
        .bind(l.iter().map(|r| r.country.clone()).collect::<Vec<_>>())
        .execute(&mut **tx)
        .await?;
    }
    if !delta.blocked.is_empty() {
        let b = &delta.blocked;
        sqlx::query(
            "INSERT INTO blocked_methods (domain, asn, method, last_at) \
             SELECT u.domain, u.asn, u.method, u.last_at \
             FROM UNNEST($1::text[], $2::bigint[], $3::text[], $4::timestamptz[]) \
               WITH ORDINALITY AS u(domain, asn, method, last_at, n) ORDER BY u.n \
             ON CONFLICT (domain, asn, method) DO UPDATE SET \
             last_at = GREATEST(blocked_methods.last_at, EXCLUDED.last_at)",
        )
        .bind(b.iter().map(|x| x.0.to_string()).collect::<Vec<_>>())
        .bind(b.iter().map(|x| i64::from(x.1)).collect::<Vec<_>>())
        .bind(
            b.iter()
                .map(|x| x.2.as_str().to_string())
                .collect::<Vec<_>>(),
        )
        .bind(b.iter().map(|x| x.3).collect::<Vec<_>>())
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
             FROM UNNEST($2::timestamptz[], $3::bigint[], $4::text[], $5::bigint[], \
                         $6::timestamptz[], $7::timestamptz[]) WITH ORDINALITY \
               AS u(hour, asn, country, measurements, last_received_at, last_started_at, n) \
             ORDER BY u.n \
             ON CONFLICT (hour, asn, country, probe_id) DO UPDATE SET \
             measurements = probe_hours.measurements + EXCLUDED.measurements, \
             last_received_at = GREATEST(probe_hours.last_received_at, EXCLUDED.last_received_at), \
             last_started_at = GREATEST(probe_hours.last_started_at, EXCLUDED.last_started_at)",
        )
        .bind(probe_id)
        .bind(h.iter().map(|x| x.hour).collect::<Vec<_>>())
        .bind(h.iter().map(|x| x.asn).collect::<Vec<_>>())
        .bind(h.iter().map(|x| x.country.clone()).collect::<Vec<_>>())
        .bind(h.iter().map(|x| x.measurements).collect::<Vec<_>>())
        .bind(h.iter().map(|x| x.last_received_at).collect::<Vec<_>>())
        .bind(h.iter().map(|x| x.last_started_at).collect::<Vec<_>>())
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

fn latest_group_from_row(r: &PgRow) -> StoreResult<LatestGroup> {
    Ok(LatestGroup {
        domain: r.try_get("domain")?,
        asn: asn_of(r.try_get("asn")?)?,
        country: r.try_get("country")?,
        category: r.try_get("category")?,
        status: parse(r.try_get::<&str, _>("status")?, "status")?,
        method: opt_method(r.try_get("method")?)?,
        probes: count(r.try_get("probes")?),
        last_measured: r.try_get("last")?,
    })
}

impl PostgresStore {
    /// Connect to `url` (`postgres://USER:PASSWORD@HOST:PORT/DB?sslmode=...`), migrate (sqlx
    /// holds an advisory lock meanwhile, so collectors starting together migrate once), and
    /// make sure this month's and next month's partitions exist.
    pub async fn open(url: &str, max_connections: u32) -> StoreResult<PostgresStore> {
        let options = PgConnectOptions::from_str(url)?.application_name("witness-collector");
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options)
            .await?;
        Migrator::new(Embedded(MIGRATIONS))
            .await?
            .run(&pool)
            .await?;
        let store = PostgresStore {
            pool,
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
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(PARTITION_LOCK)
            .execute(&mut *tx)
            .await?;
        for month in &missing {
            let (from, to) = month_bounds(*month)?;
            // Names and bounds come from integers, not from input: safe to format in.
            sqlx::query(&format!(
                "CREATE TABLE IF NOT EXISTS {} PARTITION OF measurements \
                 FOR VALUES FROM ('{from} 00:00:00+00') TO ('{to} 00:00:00+00')",
                partition_name(*month)
            ))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        self.known_partitions().extend(missing);
        Ok(())
    }

    /// Queue one notification per URL inside a transaction.
    async fn enqueue(
        tx: &mut sqlx::Transaction<'_, Postgres>,
        event_id: &str,
        transition: Transition,
        urls: &[String],
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        if urls.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO outbox (event_id, transition, url, created_at, next_attempt_at) \
             SELECT $1, $2, u, $3, $3 FROM UNNEST($4::text[]) WITH ORDINALITY AS t(u, n) \
             ORDER BY n",
        )
        .bind(event_id)
        .bind(transition.as_str())
        .bind(now)
        .bind(urls)
        .execute(&mut **tx)
        .await?;
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
        let mut tx = self.pool.begin().await?;
        let ids: Vec<String> = records.iter().map(|r| r.id.to_string()).collect();
        let started: Vec<DateTime<Utc>> = records.iter().map(|r| r.started_at).collect();
        let fresh: Vec<String> = sqlx::query_scalar(
            "INSERT INTO measurement_ids (id, started_at) \
             SELECT u.id::uuid, u.started_at \
             FROM UNNEST($1::text[], $2::timestamptz[]) AS u(id, started_at) ORDER BY 1 \
             ON CONFLICT (id) DO NOTHING RETURNING id::text",
        )
        .bind(&ids)
        .bind(&started)
        .fetch_all(&mut *tx)
        .await?;
        let fresh: HashSet<Uuid> = fresh
            .iter()
            .map(|s| parse(s, "measurement id"))
            .collect::<StoreResult<_>>()?;
        let new: Vec<&MeasurementRecord> = records
            .iter()
            .copied()
            .filter(|r| fresh.contains(&r.id))
            .collect();
        if !new.is_empty() {
            let col = |f: &dyn Fn(&MeasurementRecord) -> String| -> Vec<String> {
                new.iter().map(|r| f(r)).collect()
            };
            let opt = |f: &dyn Fn(&MeasurementRecord) -> Option<String>| -> Vec<Option<String>> {
                new.iter().map(|r| f(r)).collect()
            };
            sqlx::query(
                "INSERT INTO measurements (id, probe_id, received_at, started_at, domain, url, \
                 category, asn, country, status, method, reason, software_version, body) \
                 SELECT u.id::uuid, $1, u.received_at, u.started_at, u.domain, u.url, u.category, \
                        u.asn, u.country, u.status, u.method, u.reason, u.software_version, u.body \
                 FROM UNNEST($2::text[], $3::timestamptz[], $4::timestamptz[], $5::text[], \
                             $6::text[], $7::text[], $8::bigint[], $9::text[], $10::text[], \
                             $11::text[], $12::text[], $13::text[], $14::text[]) \
                   AS u(id, received_at, started_at, domain, url, category, asn, country, \
                        status, method, reason, software_version, body)",
            )
            .bind(probe_id)
            .bind(col(&|r| r.id.to_string()))
            .bind(new.iter().map(|r| r.received_at).collect::<Vec<_>>())
            .bind(new.iter().map(|r| r.started_at).collect::<Vec<_>>())
            .bind(col(&|r| r.domain.clone()))
            .bind(col(&|r| r.url.clone()))
            .bind(opt(&|r| r.category.clone()))
            .bind(new.iter().map(|r| r.asn.map(i64::from)).collect::<Vec<_>>())
            .bind(opt(&|r| r.country.clone()))
            .bind(col(&|r| r.status.as_str().to_string()))
            .bind(opt(&|r| r.method.map(|m| m.as_str().to_string())))
            .bind(col(&|r| r.reason.clone()))
            .bind(col(&|r| r.software_version.clone()))
            .bind(col(&|r| r.body.clone()))
            .execute(&mut *tx)
            .await?;
        }
        apply_read_model(&mut tx, probe_id, &ReadModelDelta::of(new.iter().copied())).await?;
        sqlx::query("UPDATE probes SET last_seen_at = $1 WHERE id = $2")
            .bind(now)
            .bind(probe_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(fresh)
    }
}

#[async_trait]
impl Store for PostgresStore {
    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn create_invite(&self, invite: &NewInvite) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO invites (id, token_hash, note, max_uses, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&invite.id)
        .bind(&invite.token_hash)
        .bind(&invite.note)
        .bind(i64::from(invite.max_uses))
        .bind(invite.created_at)
        .bind(invite.expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn register_probe(
        &self,
        probe: &NewProbe,
        invite_hash: Option<&str>,
        now: DateTime<Utc>,
    ) -> StoreResult<bool> {
        let mut tx = self.pool.begin().await?;
        let mut invite_id: Option<String> = None;
        if let Some(hash) = invite_hash {
            // The row lock of the UPDATE serialises concurrent registrations on one invite.
            let row = sqlx::query(
                "UPDATE invites SET uses = uses + 1 \
                 WHERE token_hash = $1 AND revoked_at IS NULL \
                   AND (expires_at IS NULL OR expires_at > $2) AND uses < max_uses \
                 RETURNING id",
            )
            .bind(hash)
            .bind(now)
            .fetch_optional(&mut *tx)
            .await?;
            match row {
                Some(row) => invite_id = Some(row.try_get("id")?),
                None => {
                    tx.rollback().await?;
                    return Ok(false);
                }
            }
        }
        sqlx::query(
            "INSERT INTO probes (id, token_hash, invite_id, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(&probe.id)
        .bind(&probe.token_hash)
        .bind(invite_id)
        .bind(probe.created_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn authenticate(&self, token_hash: &str) -> StoreResult<Option<String>> {
        let row = sqlx::query("SELECT id FROM probes WHERE token_hash = $1 AND revoked_at IS NULL")
            .bind(token_hash)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get("id")).transpose()?)
    }

    async fn list_tokens(&self) -> StoreResult<Vec<TokenInfo>> {
        let mut out = Vec::new();
        let invites = sqlx::query(
            "SELECT id, note, max_uses, uses, created_at, expires_at, revoked_at \
             FROM invites ORDER BY created_at, id",
        )
        .fetch_all(&self.pool)
        .await?;
        for r in &invites {
            let count = |c: &str| -> StoreResult<u32> {
                u32::try_from(r.try_get::<i64, _>(c)?)
                    .map_err(|_| StoreError::Corrupt(c.to_string()))
            };
            out.push(TokenInfo {
                id: r.try_get("id")?,
                kind: "invite",
                created_at: r.try_get("created_at")?,
                revoked_at: r.try_get("revoked_at")?,
                expires_at: r.try_get("expires_at")?,
                uses: Some(count("uses")?),
                max_uses: Some(count("max_uses")?),
                note: r.try_get("note")?,
                last_seen_at: None,
            });
        }
        let probes = sqlx::query(
            "SELECT id, created_at, revoked_at, last_seen_at FROM probes ORDER BY created_at, id",
        )
        .fetch_all(&self.pool)
        .await?;
        for r in &probes {
            out.push(TokenInfo {
                id: r.try_get("id")?,
                kind: "probe",
                created_at: r.try_get("created_at")?,
                revoked_at: r.try_get("revoked_at")?,
                expires_at: None,
                uses: None,
                max_uses: None,
                note: None,
                last_seen_at: r.try_get("last_seen_at")?,
            });
        }
        Ok(out)
    }

    async fn revoke(&self, id: &str, now: DateTime<Utc>) -> StoreResult<bool> {
        for table in ["invites", "probes"] {
            let res = sqlx::query(&format!(
                "UPDATE {table} SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL"
            ))
            .bind(now)
            .bind(id)
            .execute(&self.pool)
            .await?;
            if res.rows_affected() > 0 {
                return Ok(true);
            }
        }
        Ok(false)
    }

    async fn insert_measurements(
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

    async fn site_series(
        &self,
        domain: &str,
        asn: u32,
        since: DateTime<Utc>,
    ) -> StoreResult<Vec<Obs>> {
        let rows = sqlx::query(
            "SELECT id::text AS id, probe_id, started_at, status, method FROM measurements \
             WHERE domain = $1 AND asn = $2 AND started_at > $3 ORDER BY started_at, id",
        )
        .bind(domain)
        .bind(i64::from(asn))
        .bind(since)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Obs {
                    id: r.try_get("id")?,
                    probe: r.try_get("probe_id")?,
                    at: r.try_get("started_at")?,
                    status: parse(r.try_get::<&str, _>("status")?, "status")?,
                    method: opt_method(r.try_get("method")?)?,
                })
            })
            .collect()
    }

    async fn network_presence(&self, asn: u32, since: DateTime<Utc>) -> StoreResult<Vec<Presence>> {
        // One row per probe, minute and offline flag keeps this small for a busy network.
        let rows = sqlx::query(&format!(
            "SELECT probe_id, (status = 'offline') AS off, MIN(started_at) AS first_at, \
                    MAX(started_at) AS last_at, COUNT(*) AS n, MAX(id::text) AS sample \
             FROM measurements WHERE asn = $1 AND started_at > $2 \
             GROUP BY probe_id, off, date_bin('1 minute', started_at, {BIN_ORIGIN})"
        ))
        .bind(i64::from(asn))
        .bind(since)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Presence {
                    probe: r.try_get("probe_id")?,
                    first_at: r.try_get("first_at")?,
                    last_at: r.try_get("last_at")?,
                    offline: r.try_get("off")?,
                    count: count(r.try_get("n")?),
                    sample_id: r.try_get("sample")?,
                })
            })
            .collect()
    }

    async fn network_probe_count(
        &self,
        asn: u32,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> StoreResult<usize> {
        // Without reading every row of the network in the window (a DISTINCT would): the
        // earliest and the latest row, each one step down the (asn, started_at) index; if
        // their probes differ, that is two. Only when they are the same probe, walk from the
        // start for another one (at most the length of that probe's run).
        let n: i64 = sqlx::query_scalar(
            "WITH first AS (SELECT probe_id FROM measurements \
                   WHERE asn = $1 AND started_at >= $2 AND started_at <= $3 \
                   ORDER BY started_at LIMIT 1), \
                  last AS (SELECT probe_id FROM measurements \
                   WHERE asn = $1 AND started_at >= $2 AND started_at <= $3 \
                   ORDER BY started_at DESC LIMIT 1) \
             SELECT CASE \
               WHEN NOT EXISTS (SELECT 1 FROM first) THEN 0::bigint \
               WHEN (SELECT probe_id FROM first) <> (SELECT probe_id FROM last) THEN 2::bigint \
               ELSE 1 + (SELECT COUNT(*) FROM (SELECT 1 FROM measurements \
                   WHERE asn = $1 AND started_at >= $2 AND started_at <= $3 \
                     AND probe_id <> (SELECT probe_id FROM first) \
                   ORDER BY started_at LIMIT 1) AS other) \
             END",
        )
        .bind(i64::from(asn))
        .bind(since)
        .bind(until)
        .fetch_one(&self.pool)
        .await?;
        Ok(usize::try_from(n).unwrap_or(0))
    }

    async fn event_states(
        &self,
        kind: EventKind,
        domain: Option<&str>,
        asn: u32,
    ) -> StoreResult<Vec<EventState>> {
        let rows = sqlx::query(
            "SELECT method, MAX(started_at) FILTER (WHERE ended_at IS NULL) AS open_since, \
                    MAX(GREATEST(open_decided_at, close_decided_at)) AS floor \
             FROM events WHERE kind = $1 AND domain = $2 AND asn = $3 GROUP BY method",
        )
        .bind(kind.as_str())
        .bind(domain.unwrap_or(""))
        .bind(i64::from(asn))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(EventState {
                    method: opt_method(r.try_get("method")?)?,
                    open_since: r.try_get("open_since")?,
                    floor: r.try_get("floor")?,
                })
            })
            .collect()
    }

    async fn open_event(&self, ev: &NewEvent, urls: &[String]) -> StoreResult<Option<Event>> {
        let now = Utc::now();
        let mut tx = self.pool.begin().await?;
        if !lock_key_at_floor(&mut tx, &ev.key, ev.floor).await? {
            tx.rollback().await?;
            return Ok(None);
        }
        let (kind, domain, asn, method) = key_columns(&ev.key);
        // Under the key's lock the index cannot conflict unless the state was already open,
        // which the floor check rules out; it stays as the last line of defence.
        let res = sqlx::query(
            "INSERT INTO events (id, kind, domain, asn, method, country, category, started_at, \
             open_decided_at, evidence, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) ON CONFLICT DO NOTHING",
        )
        .bind(&ev.id)
        .bind(kind)
        .bind(domain)
        .bind(asn)
        .bind(method)
        .bind(&ev.country)
        .bind(&ev.category)
        .bind(ev.started_at)
        .bind(ev.decided_at)
        .bind(to_json(&ev.evidence)?)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if res.rows_affected() == 0 {
            tx.rollback().await?;
            return Ok(None);
        }
        Self::enqueue(
            &mut tx,
            &ev.id,
            Transition::of(ev.key.kind, true),
            urls,
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(Some(Event {
            id: ev.id.clone(),
            kind: ev.key.kind,
            domain: ev.key.domain.clone(),
            asn: ev.key.asn,
            country: ev.country.clone(),
            category: ev.category.clone(),
            method: ev.key.method,
            started_at: ev.started_at,
            ended_at: None,
            evidence: ev.evidence.clone(),
            end_evidence: None,
        }))
    }

    async fn close_event(&self, c: &CloseEvent, urls: &[String]) -> StoreResult<Option<Event>> {
        let now = Utc::now();
        let mut tx = self.pool.begin().await?;
        if !lock_key_at_floor(&mut tx, &c.key, c.floor).await? {
            tx.rollback().await?;
            return Ok(None);
        }
        let (kind, domain, asn, method) = key_columns(&c.key);
        let row = sqlx::query(&format!(
            "UPDATE events SET ended_at = GREATEST($1, started_at), close_decided_at = $2, \
             end_evidence = $3 \
             WHERE kind = $4 AND domain = $5 AND asn = $6 AND method = $7 AND ended_at IS NULL \
             RETURNING {EVENT_COLUMNS}"
        ))
        .bind(c.ended_at)
        .bind(c.decided_at)
        .bind(to_json(&c.evidence)?)
        .bind(kind)
        .bind(domain)
        .bind(asn)
        .bind(method)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            tx.rollback().await?;
            return Ok(None);
        };
        let event = event_from_row(&row)?;
        Self::enqueue(
            &mut tx,
            &event.id,
            Transition::of(c.key.kind, false),
            urls,
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(Some(event))
    }

    async fn sites_with_block_activity(
        &self,
        keys: &[(String, u32)],
        since: DateTime<Utc>,
    ) -> StoreResult<std::collections::HashSet<(String, u32)>> {
        if keys.is_empty() {
            return Ok(std::collections::HashSet::new());
        }
        let domains: Vec<&str> = keys.iter().map(|(d, _)| d.as_str()).collect();
        let rows = sqlx::query(
            "SELECT domain, asn FROM blocked_methods WHERE last_at > $1 AND domain = ANY($2) \
             UNION SELECT domain, asn FROM events WHERE kind = 'new_block' \
             AND ended_at IS NULL AND domain = ANY($2)",
        )
        .bind(since)
        .bind(&domains)
        .fetch_all(&self.pool)
        .await?;
        let mut out = std::collections::HashSet::new();
        for r in &rows {
            out.insert((
                r.try_get::<String, _>("domain")?,
                asn_of(r.try_get("asn")?)?,
            ));
        }
        let wanted: std::collections::HashSet<&(String, u32)> = keys.iter().collect();
        out.retain(|k| wanted.contains(k));
        Ok(out)
    }

    async fn recent_sites(&self, since: DateTime<Utc>) -> StoreResult<Vec<RecentSite>> {
        let rows = sqlx::query(
            "SELECT domain, asn, MAX(country) AS country, MAX(category) AS category, \
             MAX(started_at) AS latest FROM latest_verdicts \
             WHERE started_at >= $1 GROUP BY domain, asn",
        )
        .bind(since)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(RecentSite {
                    domain: r.try_get("domain")?,
                    asn: asn_of(r.try_get("asn")?)?,
                    country: r.try_get("country")?,
                    category: r.try_get("category")?,
                    latest: r.try_get("latest")?,
                })
            })
            .collect()
    }

    async fn recent_networks(&self, since: DateTime<Utc>) -> StoreResult<Vec<RecentNetwork>> {
        let rows = sqlx::query(
            "SELECT asn, MAX(NULLIF(country, '')) AS country, MAX(last_started_at) AS latest \
             FROM probe_hours WHERE hour >= $1 AND asn >= 0 AND last_started_at >= $2 \
             GROUP BY asn",
        )
        .bind(hour_of(since) - TimeDelta::hours(1))
        .bind(since)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(RecentNetwork {
                    asn: asn_of(r.try_get("asn")?)?,
                    country: r.try_get("country")?,
                    latest: r.try_get("latest")?,
                })
            })
            .collect()
    }

    async fn latest_groups(&self, f: &Filter) -> StoreResult<Vec<LatestGroup>> {
        let mut qb = QueryBuilder::<Postgres>::new(
            "SELECT domain, asn, MAX(country) AS country, MAX(category) AS category, status, \
             method, COUNT(*) AS probes, MAX(started_at) AS last FROM latest_verdicts WHERE TRUE",
        );
        let f = Filter {
            until: None,
            status: None,
            ..f.clone()
        };
        push_measurement_filters(&mut qb, &f, "started_at");
        qb.push(" GROUP BY domain, asn, status, method ORDER BY domain, asn");
        let rows = qb.build().fetch_all(&self.pool).await?;
        rows.iter().map(latest_group_from_row).collect()
    }

    async fn latest_groups_scan(&self, f: &Filter) -> StoreResult<Vec<LatestGroup>> {
        let mut qb = QueryBuilder::<Postgres>::new(
            "WITH latest AS (SELECT DISTINCT ON (domain, asn, probe_id) domain, asn, country, \
             category, status, method, started_at \
             FROM measurements WHERE asn IS NOT NULL AND status <> 'offline'",
        );
        push_measurement_filters(&mut qb, f, "started_at");
        qb.push(
            " ORDER BY domain, asn, probe_id, started_at DESC, id DESC) \
             SELECT domain, asn, MAX(country) AS country, MAX(category) AS category, status, \
             method, COUNT(*) AS probes, MAX(started_at) AS last FROM latest \
             GROUP BY domain, asn, status, method ORDER BY domain, asn",
        );
        let rows = qb.build().fetch_all(&self.pool).await?;
        rows.iter().map(latest_group_from_row).collect()
    }

    async fn blocked_methods_seen(
        &self,
        since: DateTime<Utc>,
    ) -> StoreResult<Vec<(String, u32, Method)>> {
        let rows =
            sqlx::query("SELECT domain, asn, method FROM blocked_methods WHERE last_at >= $1")
                .bind(since)
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("domain")?,
                    asn_of(r.try_get("asn")?)?,
                    parse(r.try_get::<&str, _>("method")?, "method")?,
                ))
            })
            .collect()
    }

    async fn history(&self, domain: &str, f: &Filter) -> StoreResult<Vec<HistoryRow>> {
        let mut qb = QueryBuilder::<Postgres>::new(format!(
            "SELECT date_bin('1 hour', started_at, {BIN_ORIGIN}) AS hour, asn, country, status, \
             method, COUNT(*) AS n, COUNT(DISTINCT probe_id) AS probes FROM measurements \
             WHERE domain = "
        ));
        qb.push_bind(domain);
        let f = Filter {
            domain: None,
            ..f.clone()
        };
        push_measurement_filters(&mut qb, &f, "started_at");
        // NULLS FIRST: SQLite's order, so both stores answer alike.
        qb.push(
            " GROUP BY 1, asn, country, status, method \
             ORDER BY hour, asn NULLS FIRST, status LIMIT ",
        )
        .push_bind(i64::from(f.limit));
        let rows = qb.build().fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| {
                Ok(HistoryRow {
                    hour: r.try_get("hour")?,
                    asn: r
                        .try_get::<Option<i64>, _>("asn")?
                        .map(asn_of)
                        .transpose()?,
                    country: r.try_get("country")?,
                    status: parse(r.try_get::<&str, _>("status")?, "status")?,
                    method: opt_method(r.try_get("method")?)?,
                    measurements: count(r.try_get("n")?),
                    probes: count(r.try_get("probes")?),
                })
            })
            .collect()
    }

    async fn events(&self, f: &Filter) -> StoreResult<Vec<Event>> {
        let mut qb =
            QueryBuilder::<Postgres>::new(format!("SELECT {EVENT_COLUMNS} FROM events WHERE TRUE"));
        if let Some(k) = f.kind {
            qb.push(" AND kind = ").push_bind(k.as_str());
        }
        if let Some(a) = f.asn {
            qb.push(" AND asn = ").push_bind(i64::from(a));
        }
        if let Some(c) = &f.country {
            qb.push(" AND country = ").push_bind(c.as_str());
        }
        if let Some(c) = &f.category {
            qb.push(" AND category = ").push_bind(c.as_str());
        }
        if let Some(d) = &f.domain {
            qb.push(" AND domain = ").push_bind(d.as_str());
        }
        // Events overlapping [since, until].
        if let Some(s) = f.since {
            qb.push(" AND (ended_at IS NULL OR ended_at >= ")
                .push_bind(s)
                .push(")");
        }
        if let Some(u) = f.until {
            qb.push(" AND started_at <= ").push_bind(u);
        }
        match f.open {
            Some(true) => {
                qb.push(" AND ended_at IS NULL");
            }
            Some(false) => {
                qb.push(" AND ended_at IS NOT NULL");
            }
            None => {}
        }
        qb.push(" ORDER BY started_at DESC, id LIMIT ")
            .push_bind(i64::from(f.limit));
        let rows = qb.build().fetch_all(&self.pool).await?;
        rows.iter().map(event_from_row).collect()
    }

    async fn probe_networks(&self, f: &Filter) -> StoreResult<Vec<ProbeNetworkRow>> {
        let mut qb = QueryBuilder::<Postgres>::new(
            "SELECT asn, country, COUNT(DISTINCT probe_id) AS probes, \
             SUM(measurements)::bigint AS n, MAX(last_received_at) AS last FROM probe_hours \
             WHERE TRUE",
        );
        // Hours overlapping [since, until].
        if let Some(s) = f.since {
            qb.push(" AND hour > ").push_bind(s - TimeDelta::hours(1));
        }
        if let Some(u) = f.until {
            qb.push(" AND hour <= ").push_bind(u);
        }
        if let Some(a) = f.asn {
            qb.push(" AND asn = ").push_bind(i64::from(a));
        }
        if let Some(c) = &f.country {
            qb.push(" AND country = ").push_bind(c.as_str());
        }
        qb.push(" GROUP BY asn, country ORDER BY asn, country LIMIT ")
            .push_bind(i64::from(f.limit));
        let rows = qb.build().fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| {
                let last: DateTime<Utc> = r.try_get("last")?;
                let ms = last.timestamp_millis();
                let asn: i64 = r.try_get("asn")?;
                let country: String = r.try_get("country")?;
                Ok(ProbeNetworkRow {
                    asn: (asn >= 0).then(|| asn_of(asn)).transpose()?,
                    country: (!country.is_empty()).then_some(country),
                    probes: count(r.try_get("probes")?),
                    measurements: count(r.try_get("n")?),
                    // Hour precision: enough to see a network's activity, too coarse to
                    // follow one volunteer's habits.
                    last_seen: DateTime::from_timestamp_millis(ms - ms.rem_euclid(3_600_000))
                        .ok_or_else(|| StoreError::Corrupt(format!("timestamp {ms}")))?,
                })
            })
            .collect()
    }

    async fn measurements(&self, f: &Filter) -> StoreResult<Vec<MeasurementRecord>> {
        let mut qb = QueryBuilder::<Postgres>::new(
            "SELECT id::text AS id, received_at, started_at, domain, url, category, asn, \
             country, status, method, reason, software_version, body FROM measurements \
             WHERE TRUE",
        );
        push_measurement_filters(&mut qb, f, "started_at");
        qb.push(" ORDER BY started_at, id LIMIT ")
            .push_bind(i64::from(f.limit));
        let rows = qb.build().fetch_all(&self.pool).await?;
        rows.iter().map(measurement_from_row).collect()
    }

    async fn export_measurements(
        &self,
        f: &Filter,
        after: Option<Cursor>,
        limit: u32,
        tx: tokio::sync::mpsc::Sender<MeasurementRecord>,
    ) -> StoreResult<()> {
        let mut qb = QueryBuilder::<Postgres>::new(
            "SELECT id::text AS id, received_at, started_at, domain, url, category, asn, \
             country, status, method, reason, software_version, body FROM measurements \
             WHERE TRUE",
        );
        push_measurement_filters(&mut qb, f, "started_at");
        if let Some(c) = after {
            // The first bound alone selects a range of the (started_at, id) index and prunes
            // the partitions before it.
            qb.push(" AND started_at >= ")
                .push_bind(c.started_at)
                .push(" AND (started_at > ")
                .push_bind(c.started_at)
                .push(" OR id > ")
                .push_bind(c.id.to_string())
                .push("::uuid)");
        }
        qb.push(" ORDER BY started_at, id LIMIT ")
            .push_bind(i64::from(limit));
        let mut rows = qb.build().fetch(&self.pool);
        while let Some(row) = rows.try_next().await? {
            if tx.send(measurement_from_row(&row)?).await.is_err() {
                break;
            }
        }
        Ok(())
    }

    async fn claim_notifications(
        &self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: u32,
    ) -> StoreResult<Vec<Notification>> {
        // SKIP LOCKED: collectors claiming at the same moment take disjoint rows instead of
        // queueing behind each other; the lease keeps a claimed row from being due again.
        let columns = EVENT_COLUMNS
            .split(", ")
            .map(|c| format!("e.{}", c.trim()))
            .collect::<Vec<_>>()
            .join(", ");
        let rows = sqlx::query(&format!(
            "WITH due AS (SELECT id FROM outbox \
                 WHERE delivered_at IS NULL AND abandoned_at IS NULL AND next_attempt_at <= $1 \
                 ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED) \
             UPDATE outbox o SET next_attempt_at = $3 FROM due, events e \
             WHERE o.id = due.id AND e.id = o.event_id \
             RETURNING o.id AS outbox_id, o.transition, o.url, o.attempts, {columns}"
        ))
        .bind(now)
        .bind(i64::from(limit))
        .bind(lease_until)
        .fetch_all(&self.pool)
        .await?;
        let mut out = rows
            .iter()
            .map(|r| {
                Ok(Notification {
                    id: r.try_get("outbox_id")?,
                    event: event_from_row(r)?,
                    transition: parse(r.try_get::<&str, _>("transition")?, "transition")?,
                    url: r.try_get("url")?,
                    attempts: u32::try_from(r.try_get::<i64, _>("attempts")?).unwrap_or(0),
                })
            })
            .collect::<StoreResult<Vec<_>>>()?;
        out.sort_by_key(|n| n.id);
        Ok(out)
    }

    async fn notification_delivered(&self, id: i64, now: DateTime<Utc>) -> StoreResult<()> {
        sqlx::query("UPDATE outbox SET delivered_at = $1, attempts = attempts + 1 WHERE id = $2")
            .bind(now)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn notification_failed(
        &self,
        id: i64,
        retry_at: Option<DateTime<Utc>>,
        error: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        sqlx::query(
            "UPDATE outbox SET attempts = attempts + 1, last_error = $1, \
             next_attempt_at = COALESCE($2, next_attempt_at), \
             abandoned_at = CASE WHEN $2::timestamptz IS NULL THEN $3 ELSE NULL END \
             WHERE id = $4",
        )
        .bind(error)
        .bind(retry_at)
        .bind(now)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

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
