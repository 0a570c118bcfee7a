//! The embedded store: SQLite in WAL mode with `synchronous=FULL`.
//!
//! FULL rather than NORMAL: in WAL mode NORMAL may lose the last commits on power loss, and the
//! collector acknowledges an upload only once it is committed (the probe then deletes its copy),
//! so an acknowledged batch must survive a power cut. The cost is one fsync per commit, and
//! uploads are batched.
//!
//! Writes start with a write statement, so a transaction takes SQLite's write lock up front and
//! waits (`busy_timeout`) instead of failing on a lock upgrade.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, TimeDelta, Utc};
use futures::TryStreamExt;
use sqlx::migrate::Migrator;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row, Sqlite};
use witness_core::model::Method;

use super::{
    hour_of, CloseEvent, Cursor, Embedded, Event, EventState, Filter, HistoryRow,
    MeasurementRecord, NewEvent, NewInvite, NewProbe, Notification, ProbeNetworkRow,
    ReadModelDelta, RecentNetwork, RecentSite, Store, StoreError, StoreResult, TokenInfo,
};
use crate::model::{EventKind, Evidence, LatestGroup, Obs, Presence, Transition};

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
];

/// SQLite implementation of [`Store`].
#[derive(Clone, Debug)]
pub struct SqliteStore {
    pool: SqlitePool,
}

fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

fn at(v: i64) -> StoreResult<DateTime<Utc>> {
    DateTime::from_timestamp_millis(v).ok_or_else(|| StoreError::Corrupt(format!("timestamp {v}")))
}

fn opt_at(v: Option<i64>) -> StoreResult<Option<DateTime<Utc>>> {
    v.map(at).transpose()
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

fn evidence(s: &str) -> StoreResult<Evidence> {
    serde_json::from_str(s).map_err(|e| StoreError::Corrupt(format!("evidence: {e}")))
}

fn to_json(e: &Evidence) -> StoreResult<String> {
    serde_json::to_string(e).map_err(|e| StoreError::Corrupt(format!("evidence: {e}")))
}

/// The latest decision time of one key (binds: kind, domain, asn, method); NULL without events.
const FLOOR_OF_KEY: &str = "SELECT MAX(MAX(f.open_decided_at, COALESCE(f.close_decided_at, 0))) \
     FROM events f WHERE f.kind = ? AND f.domain = ? AND f.asn = ? AND f.method = ?";

const EVENT_COLUMNS: &str = "id, kind, domain, asn, method, country, category, started_at, \
     ended_at, evidence, end_evidence";

fn event_from_row(row: &SqliteRow) -> StoreResult<Event> {
    let domain: String = row.try_get("domain")?;
    Ok(Event {
        id: row.try_get("id")?,
        kind: parse(row.try_get::<&str, _>("kind")?, "event kind")?,
        domain: (!domain.is_empty()).then_some(domain),
        asn: asn_of(row.try_get("asn")?)?,
        country: row.try_get("country")?,
        category: row.try_get("category")?,
        method: opt_method(row.try_get("method")?)?,
        started_at: at(row.try_get("started_at")?)?,
        ended_at: opt_at(row.try_get("ended_at")?)?,
        evidence: evidence(row.try_get("evidence")?)?,
        end_evidence: row
            .try_get::<Option<&str>, _>("end_evidence")?
            .map(evidence)
            .transpose()?,
    })
}

fn latest_group_from_row(r: &SqliteRow) -> StoreResult<LatestGroup> {
    Ok(LatestGroup {
        domain: r.try_get("domain")?,
        asn: asn_of(r.try_get("asn")?)?,
        country: r.try_get("country")?,
        category: r.try_get("category")?,
        status: parse(r.try_get::<&str, _>("status")?, "status")?,
        method: opt_method(r.try_get("method")?)?,
        probes: u64::try_from(r.try_get::<i64, _>("probes")?).unwrap_or(0),
        last_measured: at(r.try_get("last")?)?,
    })
}

fn measurement_from_row(row: &SqliteRow) -> StoreResult<MeasurementRecord> {
    Ok(MeasurementRecord {
        id: parse(row.try_get::<&str, _>("id")?, "measurement id")?,
        received_at: at(row.try_get("received_at")?)?,
        started_at: at(row.try_get("started_at")?)?,
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
    qb: &mut QueryBuilder<'a, Sqlite>,
    f: &'a Filter,
    time_column: &str,
) {
    if let Some(s) = f.since {
        qb.push(format!(" AND {time_column} >= ")).push_bind(ms(s));
    }
    if let Some(u) = f.until {
        qb.push(format!(" AND {time_column} <= ")).push_bind(ms(u));
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

impl SqliteStore {
    /// Open (creating if missing) the database at `url` (`sqlite://PATH` or a path) and migrate.
    pub async fn open(url: &str, max_connections: u32) -> StoreResult<SqliteStore> {
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
        let pool = SqlitePoolOptions::new()
            .max_connections(max_connections.max(1))
            .connect_with(options)
            .await?;
        Migrator::new(Embedded(MIGRATIONS))
            .await?
            .run(&pool)
            .await?;
        Ok(SqliteStore { pool })
    }

    /// Apply a batch's changes to the read model, inside the batch's transaction. Monotonic:
    /// a row is replaced only by a newer verdict, times only grow.
    async fn apply_read_model(
        tx: &mut sqlx::Transaction<'_, Sqlite>,
        probe_id: &str,
        delta: &ReadModelDelta<'_>,
    ) -> StoreResult<()> {
        for r in &delta.latest {
            sqlx::query(
                "INSERT INTO latest_verdicts (domain, asn, probe_id, started_at, measurement_id, \
                 status, method, category, country) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) \
                 ON CONFLICT (domain, asn, probe_id) DO UPDATE SET \
                 started_at = excluded.started_at, measurement_id = excluded.measurement_id, \
                 status = excluded.status, method = excluded.method, \
                 category = excluded.category, country = excluded.country \
                 WHERE (excluded.started_at, excluded.measurement_id) \
                     > (latest_verdicts.started_at, latest_verdicts.measurement_id)",
            )
            .bind(&r.domain)
            .bind(r.asn.map(i64::from))
            .bind(probe_id)
            .bind(ms(r.started_at))
            .bind(r.id.to_string())
            .bind(r.status.as_str())
            .bind(r.method.map(|m| m.as_str()))
            .bind(&r.category)
            .bind(&r.country)
            .execute(&mut **tx)
            .await?;
        }
        for (domain, asn, method, at) in &delta.blocked {
            sqlx::query(
                "INSERT INTO blocked_methods (domain, asn, method, last_at) VALUES (?, ?, ?, ?) \
                 ON CONFLICT (domain, asn, method) DO UPDATE SET \
                 last_at = MAX(blocked_methods.last_at, excluded.last_at)",
            )
            .bind(*domain)
            .bind(i64::from(*asn))
            .bind(method.as_str())
            .bind(ms(*at))
            .execute(&mut **tx)
            .await?;
        }
        for h in &delta.hours {
            sqlx::query(
                "INSERT INTO probe_hours (hour, asn, country, probe_id, measurements, \
                 last_received_at, last_started_at) VALUES (?, ?, ?, ?, ?, ?, ?) \
                 ON CONFLICT (hour, asn, country, probe_id) DO UPDATE SET \
                 measurements = probe_hours.measurements + excluded.measurements, \
                 last_received_at = MAX(probe_hours.last_received_at, excluded.last_received_at), \
                 last_started_at = MAX(probe_hours.last_started_at, excluded.last_started_at)",
            )
            .bind(ms(h.hour))
            .bind(h.asn)
            .bind(&h.country)
            .bind(probe_id)
            .bind(h.measurements)
            .bind(ms(h.last_received_at))
            .bind(ms(h.last_started_at))
            .execute(&mut **tx)
            .await?;
        }
        Ok(())
    }

    /// Queue one notification per URL inside a transaction.
    async fn enqueue(
        tx: &mut sqlx::Transaction<'_, Sqlite>,
        event_id: &str,
        transition: Transition,
        urls: &[String],
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        for url in urls {
            sqlx::query(
                "INSERT INTO outbox (event_id, transition, url, created_at, next_attempt_at) \
                 VALUES (?, ?, ?, ?, ?)",
            )
            .bind(event_id)
            .bind(transition.as_str())
            .bind(url)
            .bind(ms(now))
            .bind(ms(now))
            .execute(&mut **tx)
            .await?;
        }
        Ok(())
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn create_invite(&self, invite: &NewInvite) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO invites (id, token_hash, note, max_uses, created_at, expires_at) \
             VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(&invite.id)
        .bind(&invite.token_hash)
        .bind(&invite.note)
        .bind(i64::from(invite.max_uses))
        .bind(ms(invite.created_at))
        .bind(invite.expires_at.map(ms))
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
            let row = sqlx::query(
                "UPDATE invites SET uses = uses + 1 \
                 WHERE token_hash = ? AND revoked_at IS NULL \
                   AND (expires_at IS NULL OR expires_at > ?) AND uses < max_uses \
                 RETURNING id",
            )
            .bind(hash)
            .bind(ms(now))
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
            "INSERT INTO probes (id, token_hash, invite_id, created_at) VALUES (?, ?, ?, ?)",
        )
        .bind(&probe.id)
        .bind(&probe.token_hash)
        .bind(invite_id)
        .bind(ms(probe.created_at))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn authenticate(&self, token_hash: &str) -> StoreResult<Option<String>> {
        let row = sqlx::query("SELECT id FROM probes WHERE token_hash = ? AND revoked_at IS NULL")
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
                created_at: at(r.try_get("created_at")?)?,
                revoked_at: opt_at(r.try_get("revoked_at")?)?,
                expires_at: opt_at(r.try_get("expires_at")?)?,
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
                created_at: at(r.try_get("created_at")?)?,
                revoked_at: opt_at(r.try_get("revoked_at")?)?,
                expires_at: None,
                uses: None,
                max_uses: None,
                note: None,
                last_seen_at: opt_at(r.try_get("last_seen_at")?)?,
            });
        }
        Ok(out)
    }

    async fn revoke(&self, id: &str, now: DateTime<Utc>) -> StoreResult<bool> {
        for table in ["invites", "probes"] {
            let res = sqlx::query(&format!(
                "UPDATE {table} SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL"
            ))
            .bind(ms(now))
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
        let mut tx = self.pool.begin().await?;
        let mut inserted = Vec::with_capacity(records.len());
        for r in records {
            let res = sqlx::query(
                "INSERT INTO measurements (id, probe_id, received_at, started_at, domain, url, \
                 category, asn, country, status, method, reason, software_version, body) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO NOTHING",
            )
            .bind(r.id.to_string())
            .bind(probe_id)
            .bind(ms(r.received_at))
            .bind(ms(r.started_at))
            .bind(&r.domain)
            .bind(&r.url)
            .bind(&r.category)
            .bind(r.asn.map(i64::from))
            .bind(&r.country)
            .bind(r.status.as_str())
            .bind(r.method.map(|m| m.as_str()))
            .bind(&r.reason)
            .bind(&r.software_version)
            .bind(&r.body)
            .execute(&mut *tx)
            .await?;
            inserted.push(res.rows_affected() == 1);
        }
        let fresh = records
            .iter()
            .zip(&inserted)
            .filter(|(_, new)| **new)
            .map(|(r, _)| r);
        Self::apply_read_model(&mut tx, probe_id, &ReadModelDelta::of(fresh)).await?;
        sqlx::query("UPDATE probes SET last_seen_at = ? WHERE id = ?")
            .bind(ms(now))
            .bind(probe_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(inserted)
    }

    async fn site_series(
        &self,
        domain: &str,
        asn: u32,
        since: DateTime<Utc>,
    ) -> StoreResult<Vec<Obs>> {
        let rows = sqlx::query(
            "SELECT id, probe_id, started_at, status, method FROM measurements \
             WHERE domain = ? AND asn = ? AND started_at > ? ORDER BY started_at, id",
        )
        .bind(domain)
        .bind(i64::from(asn))
        .bind(ms(since))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Obs {
                    id: r.try_get("id")?,
                    probe: r.try_get("probe_id")?,
                    at: at(r.try_get("started_at")?)?,
                    status: parse(r.try_get::<&str, _>("status")?, "status")?,
                    method: opt_method(r.try_get("method")?)?,
                })
            })
            .collect()
    }

    async fn network_presence(&self, asn: u32, since: DateTime<Utc>) -> StoreResult<Vec<Presence>> {
        // One row per probe, minute and offline flag keeps this small for a busy network.
        let rows = sqlx::query(
            "SELECT probe_id, (status = 'offline') AS off, MIN(started_at) AS first_at, \
                    MAX(started_at) AS last_at, COUNT(*) AS n, MAX(id) AS sample \
             FROM measurements WHERE asn = ? AND started_at > ? \
             GROUP BY probe_id, off, started_at / 60000",
        )
        .bind(i64::from(asn))
        .bind(ms(since))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Presence {
                    probe: r.try_get("probe_id")?,
                    first_at: at(r.try_get("first_at")?)?,
                    last_at: at(r.try_get("last_at")?)?,
                    offline: r.try_get::<i64, _>("off")? != 0,
                    count: u64::try_from(r.try_get::<i64, _>("n")?).unwrap_or(0),
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
                   WHERE asn = ?1 AND started_at >= ?2 AND started_at <= ?3 \
                   ORDER BY started_at LIMIT 1), \
                  last AS (SELECT probe_id FROM measurements \
                   WHERE asn = ?1 AND started_at >= ?2 AND started_at <= ?3 \
                   ORDER BY started_at DESC LIMIT 1) \
             SELECT CASE \
               WHEN NOT EXISTS (SELECT 1 FROM first) THEN 0 \
               WHEN (SELECT probe_id FROM first) <> (SELECT probe_id FROM last) THEN 2 \
               ELSE 1 + (SELECT COUNT(*) FROM (SELECT 1 FROM measurements \
                   WHERE asn = ?1 AND started_at >= ?2 AND started_at <= ?3 \
                     AND probe_id <> (SELECT probe_id FROM first) \
                   ORDER BY started_at LIMIT 1)) \
             END",
        )
        .bind(i64::from(asn))
        .bind(ms(since))
        .bind(ms(until))
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
            "SELECT method, \
                    MAX(CASE WHEN ended_at IS NULL THEN started_at END) AS open_since, \
                    MAX(MAX(open_decided_at, COALESCE(close_decided_at, 0))) AS floor \
             FROM events WHERE kind = ? AND domain = ? AND asn = ? GROUP BY method",
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
                    open_since: opt_at(r.try_get("open_since")?)?,
                    floor: opt_at(r.try_get("floor")?)?,
                })
            })
            .collect()
    }

    async fn open_event(&self, ev: &NewEvent, urls: &[String]) -> StoreResult<Option<Event>> {
        let now = Utc::now();
        let mut tx = self.pool.begin().await?;
        // One statement under SQLite's write lock: inserted only if the key's last decision is
        // still the one the decision was computed from; the partial unique index
        // `events_one_open` backs up the one-open-event rule.
        let res = sqlx::query(&format!(
            "INSERT INTO events (id, kind, domain, asn, method, country, category, started_at, \
             open_decided_at, evidence, created_at) \
             SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ? WHERE ({FLOOR_OF_KEY}) IS ? \
             ON CONFLICT DO NOTHING"
        ))
        .bind(&ev.id)
        .bind(ev.key.kind.as_str())
        .bind(ev.key.domain.as_deref().unwrap_or(""))
        .bind(i64::from(ev.key.asn))
        .bind(ev.key.method.map_or("", |m| m.as_str()))
        .bind(&ev.country)
        .bind(&ev.category)
        .bind(ms(ev.started_at))
        .bind(ms(ev.decided_at))
        .bind(to_json(&ev.evidence)?)
        .bind(ms(now))
        .bind(ev.key.kind.as_str())
        .bind(ev.key.domain.as_deref().unwrap_or(""))
        .bind(i64::from(ev.key.asn))
        .bind(ev.key.method.map_or("", |m| m.as_str()))
        .bind(ev.floor.map(ms))
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
        let row = sqlx::query(&format!(
            "UPDATE events SET ended_at = MAX(?, started_at), close_decided_at = ?, \
             end_evidence = ? \
             WHERE kind = ? AND domain = ? AND asn = ? AND method = ? AND ended_at IS NULL \
               AND ({FLOOR_OF_KEY}) IS ? \
             RETURNING {EVENT_COLUMNS}"
        ))
        .bind(ms(c.ended_at))
        .bind(ms(c.decided_at))
        .bind(to_json(&c.evidence)?)
        .bind(c.key.kind.as_str())
        .bind(c.key.domain.as_deref().unwrap_or(""))
        .bind(i64::from(c.key.asn))
        .bind(c.key.method.map_or("", |m| m.as_str()))
        .bind(c.key.kind.as_str())
        .bind(c.key.domain.as_deref().unwrap_or(""))
        .bind(i64::from(c.key.asn))
        .bind(c.key.method.map_or("", |m| m.as_str()))
        .bind(c.floor.map(ms))
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
        let mut out = std::collections::HashSet::new();
        // In slices, to stay far below SQLite's bound-parameter limit.
        for part in keys.chunks(500) {
            let mut qb = QueryBuilder::<Sqlite>::new(
                "SELECT domain, asn FROM blocked_methods WHERE last_at > ",
            );
            qb.push_bind(ms(since)).push(" AND domain IN (");
            let mut sep = qb.separated(", ");
            for (d, _) in part {
                sep.push_bind(d.as_str());
            }
            qb.push(
                ") UNION SELECT domain, asn FROM events WHERE kind = 'new_block' \
                     AND ended_at IS NULL AND domain IN (",
            );
            let mut sep = qb.separated(", ");
            for (d, _) in part {
                sep.push_bind(d.as_str());
            }
            qb.push(")");
            for r in qb.build().fetch_all(&self.pool).await? {
                out.insert((
                    r.try_get::<String, _>("domain")?,
                    asn_of(r.try_get("asn")?)?,
                ));
            }
        }
        let wanted: std::collections::HashSet<&(String, u32)> = keys.iter().collect();
        out.retain(|k| wanted.contains(k));
        Ok(out)
    }

    async fn recent_sites(&self, since: DateTime<Utc>) -> StoreResult<Vec<RecentSite>> {
        let rows = sqlx::query(
            "SELECT domain, asn, MAX(country) AS country, MAX(category) AS category, \
             MAX(started_at) AS latest FROM latest_verdicts \
             WHERE started_at >= ? GROUP BY domain, asn",
        )
        .bind(ms(since))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(RecentSite {
                    domain: r.try_get("domain")?,
                    asn: asn_of(r.try_get("asn")?)?,
                    country: r.try_get("country")?,
                    category: r.try_get("category")?,
                    latest: at(r.try_get("latest")?)?,
                })
            })
            .collect()
    }

    async fn recent_networks(&self, since: DateTime<Utc>) -> StoreResult<Vec<RecentNetwork>> {
        let rows = sqlx::query(
            "SELECT asn, MAX(NULLIF(country, '')) AS country, MAX(last_started_at) AS latest \
             FROM probe_hours WHERE hour >= ? AND asn >= 0 AND last_started_at >= ? GROUP BY asn",
        )
        .bind(ms(hour_of(since) - TimeDelta::hours(1)))
        .bind(ms(since))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(RecentNetwork {
                    asn: asn_of(r.try_get("asn")?)?,
                    country: r.try_get("country")?,
                    latest: at(r.try_get("latest")?)?,
                })
            })
            .collect()
    }

    async fn latest_groups(&self, f: &Filter) -> StoreResult<Vec<LatestGroup>> {
        let mut qb = QueryBuilder::<Sqlite>::new(
            "SELECT domain, asn, MAX(country) AS country, MAX(category) AS category, status, \
             method, COUNT(*) AS probes, MAX(started_at) AS last FROM latest_verdicts WHERE 1 = 1",
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
        let mut qb = QueryBuilder::<Sqlite>::new(
            "WITH ranked AS (SELECT domain, asn, country, category, status, method, started_at, \
             ROW_NUMBER() OVER (PARTITION BY domain, asn, probe_id \
                                ORDER BY started_at DESC, id DESC) AS rn \
             FROM measurements WHERE asn IS NOT NULL AND status <> 'offline'",
        );
        push_measurement_filters(&mut qb, f, "started_at");
        qb.push(
            ") SELECT domain, asn, MAX(country) AS country, MAX(category) AS category, status, \
             method, COUNT(*) AS probes, MAX(started_at) AS last FROM ranked WHERE rn = 1 \
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
            sqlx::query("SELECT domain, asn, method FROM blocked_methods WHERE last_at >= ?")
                .bind(ms(since))
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
        let mut qb = QueryBuilder::<Sqlite>::new(
            "SELECT (started_at / 3600000) * 3600000 AS hour, asn, country, status, method, \
             COUNT(*) AS n, COUNT(DISTINCT probe_id) AS probes FROM measurements WHERE domain = ",
        );
        qb.push_bind(domain);
        let f = Filter {
            domain: None,
            ..f.clone()
        };
        push_measurement_filters(&mut qb, &f, "started_at");
        qb.push(" GROUP BY hour, asn, country, status, method ORDER BY hour, asn, status LIMIT ")
            .push_bind(i64::from(f.limit));
        let rows = qb.build().fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| {
                Ok(HistoryRow {
                    hour: at(r.try_get("hour")?)?,
                    asn: r
                        .try_get::<Option<i64>, _>("asn")?
                        .map(asn_of)
                        .transpose()?,
                    country: r.try_get("country")?,
                    status: parse(r.try_get::<&str, _>("status")?, "status")?,
                    method: opt_method(r.try_get("method")?)?,
                    measurements: u64::try_from(r.try_get::<i64, _>("n")?).unwrap_or(0),
                    probes: u64::try_from(r.try_get::<i64, _>("probes")?).unwrap_or(0),
                })
            })
            .collect()
    }

    async fn events(&self, f: &Filter) -> StoreResult<Vec<Event>> {
        let mut qb =
            QueryBuilder::<Sqlite>::new(format!("SELECT {EVENT_COLUMNS} FROM events WHERE 1 = 1"));
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
                .push_bind(ms(s))
                .push(")");
        }
        if let Some(u) = f.until {
            qb.push(" AND started_at <= ").push_bind(ms(u));
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
        let mut qb = QueryBuilder::<Sqlite>::new(
            "SELECT asn, country, COUNT(DISTINCT probe_id) AS probes, SUM(measurements) AS n, \
             MAX(last_received_at) AS last FROM probe_hours WHERE 1 = 1",
        );
        // Hours overlapping [since, until].
        if let Some(s) = f.since {
            qb.push(" AND hour > ")
                .push_bind(ms(s - TimeDelta::hours(1)));
        }
        if let Some(u) = f.until {
            qb.push(" AND hour <= ").push_bind(ms(u));
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
                let last: i64 = r.try_get("last")?;
                let asn: i64 = r.try_get("asn")?;
                let country: String = r.try_get("country")?;
                Ok(ProbeNetworkRow {
                    asn: (asn >= 0).then(|| asn_of(asn)).transpose()?,
                    country: (!country.is_empty()).then_some(country),
                    probes: u64::try_from(r.try_get::<i64, _>("probes")?).unwrap_or(0),
                    measurements: u64::try_from(r.try_get::<i64, _>("n")?).unwrap_or(0),
                    // Hour precision: enough to see a network's activity, too coarse to
                    // follow one volunteer's habits.
                    last_seen: at(last - last.rem_euclid(3_600_000))?,
                })
            })
            .collect()
    }

    async fn measurements(&self, f: &Filter) -> StoreResult<Vec<MeasurementRecord>> {
        let mut qb = QueryBuilder::<Sqlite>::new(
            "SELECT id, received_at, started_at, domain, url, category, asn, country, status, \
             method, reason, software_version, body FROM measurements WHERE 1 = 1",
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
        let mut qb = QueryBuilder::<Sqlite>::new(
            "SELECT id, received_at, started_at, domain, url, category, asn, country, status, \
             method, reason, software_version, body FROM measurements WHERE 1 = 1",
        );
        push_measurement_filters(&mut qb, f, "started_at");
        if let Some(c) = after {
            // The first bound alone selects a range of the (started_at, id) index.
            qb.push(" AND started_at >= ")
                .push_bind(ms(c.started_at))
                .push(" AND (started_at > ")
                .push_bind(ms(c.started_at))
                .push(" OR id > ")
                .push_bind(c.id.to_string())
                .push(")");
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
        let mut tx = self.pool.begin().await?;
        let claimed = sqlx::query(
            "UPDATE outbox SET next_attempt_at = ? WHERE id IN (SELECT id FROM outbox \
             WHERE delivered_at IS NULL AND abandoned_at IS NULL AND next_attempt_at <= ? \
             ORDER BY id LIMIT ?) RETURNING id",
        )
        .bind(ms(lease_until))
        .bind(ms(now))
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await?;
        if claimed.is_empty() {
            tx.rollback().await?;
            return Ok(Vec::new());
        }
        let columns = EVENT_COLUMNS
            .split(", ")
            .map(|c| format!("e.{}", c.trim()))
            .collect::<Vec<_>>()
            .join(", ");
        let mut qb = QueryBuilder::<Sqlite>::new(format!(
            "SELECT o.id AS outbox_id, o.transition, o.url, o.attempts, {columns} \
             FROM outbox o JOIN events e ON e.id = o.event_id WHERE o.id IN ("
        ));
        let mut sep = qb.separated(", ");
        for r in &claimed {
            sep.push_bind(r.try_get::<i64, _>("id")?);
        }
        qb.push(") ORDER BY o.id");
        let rows = qb.build().fetch_all(&mut *tx).await?;
        tx.commit().await?;
        rows.iter()
            .map(|r| {
                Ok(Notification {
                    id: r.try_get("outbox_id")?,
                    event: event_from_row(r)?,
                    transition: parse(r.try_get::<&str, _>("transition")?, "transition")?,
                    url: r.try_get("url")?,
                    attempts: u32::try_from(r.try_get::<i64, _>("attempts")?).unwrap_or(0),
                })
            })
            .collect()
    }

    async fn notification_delivered(&self, id: i64, now: DateTime<Utc>) -> StoreResult<()> {
        sqlx::query("UPDATE outbox SET delivered_at = ?, attempts = attempts + 1 WHERE id = ?")
            .bind(ms(now))
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
            "UPDATE outbox SET attempts = attempts + 1, last_error = ?, \
             next_attempt_at = COALESCE(?, next_attempt_at), \
             abandoned_at = CASE WHEN ? IS NULL THEN ? ELSE NULL END WHERE id = ?",
        )
        .bind(error)
        .bind(retry_at.map(ms))
        .bind(retry_at.map(ms))
        .bind(ms(now))
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
