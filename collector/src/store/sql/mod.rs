//! The one store layer: every query both databases answer alike, the row mapping and the filter
//! building, written once over a small [`Dialect`]. `sqlite.rs` and `postgres.rs` keep only what
//! truly differs: connecting and migrating, how a batch of measurements is written (PostgreSQL
//! arrays and month partitions, SQLite's single writer), how notifications are claimed
//! (`FOR UPDATE SKIP LOCKED`), and the advisory lock that serialises the writers of an event key.
//!
//! Both databases store time the same way: integer microseconds since the Unix epoch (UTC),
//! `BIGINT` in PostgreSQL and `INTEGER` in SQLite (migration 0004 converted the milliseconds of
//! SQLite and the `timestamptz` of PostgreSQL, both without loss). Microseconds because that
//! is `timestamptz`'s own resolution, so nothing stored before is rounded, and integers because
//! SQLite has no time type: comparisons, `MAX` and hour buckets are then plain integer
//! arithmetic with the same SQL in both.
//!
//! One file per kind of data: [`tokens`], [`measurements`], [`events`], [`outbox`] and
//! [`readmodel`] implement the store's role traits for every [`SqlStore`]; [`query`] is the
//! statement builder and [`rows`] the row mapping they share.

mod events;
mod measurements;
mod outbox;
mod query;
mod readmodel;
mod rows;
mod tokens;

use std::collections::{HashMap, HashSet};
use std::str::FromStr;

use async_trait::async_trait;
use chrono::{DateTime, TimeDelta, Utc};
use uuid::Uuid;
use witness_core::model::{Method, Status};

use super::{
    CloseEvent, Cursor, Event, EventKey, EventState, Filter, HistoryRow, MeasurementRecord,
    NewEvent, NewInvite, NewProbe, Notification, OpenShutdown, PlaceDecision, ProbeNetworkRow,
    RecentNetwork, RecentSite, Store, StoreError, StoreResult, TokenInfo,
};
use super::{EventStore, MeasurementStore, OutboxStore, ReadModelStore, TokenStore};
use super::{LatestVerdictRow, ProbeHourRow, ReadModelRows};
use crate::model::{
    CensorPlace, EventKind, Evidence, LatestGroup, Obs, PlaceGroup, Presence, Transition,
};
use crate::readmodel::delta::hour_of;
pub(crate) use query::*;
pub(crate) use rows::*;

/// Microseconds in an hour: the bucket of `history` and `probe_hours`.
pub(super) const HOUR_US: i64 = 3_600_000_000;

/// A time as stored: microseconds since the epoch.
pub(crate) fn micros_of(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

/// A stored time back.
pub(crate) fn time_of(v: i64) -> StoreResult<DateTime<Utc>> {
    DateTime::from_timestamp_micros(v).ok_or_else(|| StoreError::Corrupt(format!("timestamp {v}")))
}

/// What differs in the SQL of the two databases.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dialect {
    /// SQLite: `?` parameters, scalar `MAX(a, b)`, ids as text.
    Sqlite,
    /// PostgreSQL: `$n` parameters, `GREATEST`, measurement ids as `uuid`.
    Postgres,
}

impl Dialect {
    /// The larger of two non-NULL values.
    fn greatest(self) -> &'static str {
        match self {
            Dialect::Sqlite => "MAX",
            Dialect::Postgres => "GREATEST",
        }
    }

    /// Equality that holds between two NULLs.
    fn same(self) -> &'static str {
        match self {
            Dialect::Sqlite => "IS",
            Dialect::Postgres => "IS NOT DISTINCT FROM",
        }
    }

    /// A measurement id column as text (PostgreSQL stores them as `uuid`).
    fn id_text(self, column: &str) -> String {
        match self {
            Dialect::Sqlite => column.to_string(),
            Dialect::Postgres => format!("{column}::text"),
        }
    }

    /// What follows a parameter compared with a measurement id column.
    fn id_param(self) -> &'static str {
        match self {
            Dialect::Sqlite => "",
            Dialect::Postgres => "::uuid",
        }
    }
}

/// `impl SqlStore for $store` (a struct with a sqlx `pool` field for reads and a `writer()`
/// method naming the pool that writes: statements ([`SqlStore::exec`]) and transactions
/// ([`SqlStore::begin`]) go there): the primitives, which every database runs alike through
/// sqlx, followed by the items given, which differ.
macro_rules! sql_store {
    ($store:ty, $db:ty, $row:ty, $dialect:expr, { $($items:tt)* }) => {
        #[async_trait::async_trait]
        impl $crate::store::sql::SqlStore for $store {
            type Row = $row;
            type Tx = sqlx::Transaction<'static, $db>;
            const DIALECT: $crate::store::sql::Dialect = $dialect;

            async fn all(&self, q: &$crate::store::sql::Query) -> StoreResult<Vec<$row>> {
                Ok($crate::store::sql::bound::<$db>(q).fetch_all(&self.pool).await?)
            }

            async fn exec(&self, q: &$crate::store::sql::Query) -> StoreResult<u64> {
                Ok($crate::store::sql::bound::<$db>(q)
                    .execute(self.writer())
                    .await?
                    .rows_affected())
            }

            async fn begin(&self) -> StoreResult<Self::Tx> {
                Ok(self.writer().begin().await?)
            }

            async fn tx_all(
                tx: &mut Self::Tx,
                q: &$crate::store::sql::Query,
            ) -> StoreResult<Vec<$row>> {
                Ok($crate::store::sql::bound::<$db>(q).fetch_all(&mut **tx).await?)
            }

            async fn tx_exec(tx: &mut Self::Tx, q: &$crate::store::sql::Query) -> StoreResult<u64> {
                Ok($crate::store::sql::bound::<$db>(q)
                    .execute(&mut **tx)
                    .await?
                    .rows_affected())
            }

            async fn commit(tx: Self::Tx) -> StoreResult<()> {
                Ok(tx.commit().await?)
            }

            async fn rollback(tx: Self::Tx) -> StoreResult<()> {
                Ok(tx.rollback().await?)
            }

            async fn stream_measurements(
                &self,
                q: &$crate::store::sql::Query,
                out: tokio::sync::mpsc::Sender<MeasurementRecord>,
            ) -> StoreResult<()> {
                use futures::TryStreamExt;
                let mut rows = $crate::store::sql::bound::<$db>(q).fetch(&self.pool);
                while let Some(row) = rows.try_next().await? {
                    let record = $crate::store::sql::measurement_from_row(&row)?;
                    if out.send(record).await.is_err() {
                        break;
                    }
                }
                Ok(())
            }

            $($items)*
        }
    };
}
pub(crate) use sql_store;

/// What a database must do itself; everything else is written once, below, for both.
#[async_trait]
pub(crate) trait SqlStore: Send + Sync + 'static {
    /// A row of this database.
    type Row: SqlRow;
    /// An open transaction.
    type Tx: Send;
    /// Its SQL.
    const DIALECT: Dialect;

    /// Run a query, all rows.
    async fn all(&self, q: &Query) -> StoreResult<Vec<Self::Row>>;
    /// Run a statement, rows affected.
    async fn exec(&self, q: &Query) -> StoreResult<u64>;
    /// Start a transaction.
    async fn begin(&self) -> StoreResult<Self::Tx>;
    /// [`SqlStore::all`] in a transaction.
    async fn tx_all(tx: &mut Self::Tx, q: &Query) -> StoreResult<Vec<Self::Row>>;
    /// [`SqlStore::exec`] in a transaction.
    async fn tx_exec(tx: &mut Self::Tx, q: &Query) -> StoreResult<u64>;
    /// Commit.
    async fn commit(tx: Self::Tx) -> StoreResult<()>;
    /// Roll back.
    async fn rollback(tx: Self::Tx) -> StoreResult<()>;
    /// Serialise the writers of one event key until the transaction ends (nothing to do where
    /// the database has a single writer).
    async fn lock_event_key(tx: &mut Self::Tx, key: &EventKey) -> StoreResult<()>;
    /// Send each row of a query as a measurement, as the database returns them; stop without
    /// error when the receiver is gone.
    async fn stream_measurements(
        &self,
        q: &Query,
        out: tokio::sync::mpsc::Sender<MeasurementRecord>,
    ) -> StoreResult<()>;
    /// [`MeasurementStore::insert_measurements`].
    async fn insert_batch(
        &self,
        probe_id: &str,
        now: DateTime<Utc>,
        records: &[MeasurementRecord],
    ) -> StoreResult<Vec<bool>>;
    /// [`OutboxStore::claim_notifications`].
    async fn claim(
        &self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: u32,
    ) -> StoreResult<Vec<Notification>>;

    /// A query in this store's dialect.
    fn query(sql: &str) -> Query {
        Query::new(Self::DIALECT, sql)
    }

    /// Queue one notification per URL inside a transaction.
    async fn enqueue(
        tx: &mut Self::Tx,
        event_id: &str,
        transition: Transition,
        urls: &[String],
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        for url in urls {
            let mut q = Self::query(
                "INSERT INTO outbox (event_id, transition, url, created_at, next_attempt_at) \
                 VALUES (?, ?, ?, ?, ?)",
            );
            q.arg(event_id)
                .arg(transition.as_str())
                .arg(url)
                .arg(now)
                .arg(now);
            Self::tx_exec(tx, &q).await?;
        }
        Ok(())
    }
}

#[async_trait]
impl<S: SqlStore> Store for S {
    async fn ping(&self) -> StoreResult<()> {
        self.all(&S::query("SELECT 1 AS one")).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_parameters_are_numbered_outside_literals() {
        let mut q = Query::new(Dialect::Postgres, "SELECT ? WHERE a = '?' AND b = ?");
        q.push(" AND c IN (").bind_list([1_i64, 2]).push(")");
        assert_eq!(
            q.sql(),
            "SELECT $1 WHERE a = '?' AND b = $2 AND c IN ($3, $4)"
        );
        assert_eq!(q.args().len(), 2);
        let mut s = Query::new(Dialect::Sqlite, "SELECT ?");
        s.bind("x");
        assert_eq!(s.sql(), "SELECT ??");
    }

    #[test]
    fn times_are_microseconds_both_ways() {
        let t = DateTime::parse_from_rfc3339("2026-12-01T10:00:00.123456Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(micros_of(t), 1_796_119_200_123_456);
        assert_eq!(time_of(micros_of(t)).unwrap(), t);
        assert!(time_of(i64::MAX).is_err());
    }
}
