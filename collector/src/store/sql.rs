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

use std::collections::{HashMap, HashSet};
use std::str::FromStr;

use async_trait::async_trait;
use chrono::{DateTime, TimeDelta, Utc};
use uuid::Uuid;
use witness_core::model::{Method, Status};

use super::{
    hour_of, CloseEvent, Cursor, Event, EventKey, EventState, Filter, HistoryRow,
    MeasurementRecord, NewEvent, NewInvite, NewProbe, Notification, PlaceDecision, ProbeNetworkRow,
    RecentNetwork, RecentSite, Store, StoreError, StoreResult, TokenInfo,
};
use crate::model::{
    CensorPlace, EventKind, Evidence, LatestGroup, Obs, PlaceGroup, Presence, Transition,
};

/// Microseconds in an hour: the bucket of `history` and `probe_hours`.
const HOUR_US: i64 = 3_600_000_000;

/// A time as stored: microseconds since the epoch.
pub(crate) fn us(t: DateTime<Utc>) -> i64 {
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

/// A bound value: every column is an integer or text.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Arg {
    /// An integer (times are microseconds).
    Int(Option<i64>),
    /// Text.
    Text(Option<String>),
}

impl From<i64> for Arg {
    fn from(v: i64) -> Arg {
        Arg::Int(Some(v))
    }
}
impl From<Option<i64>> for Arg {
    fn from(v: Option<i64>) -> Arg {
        Arg::Int(v)
    }
}
impl From<u32> for Arg {
    fn from(v: u32) -> Arg {
        Arg::Int(Some(i64::from(v)))
    }
}
impl From<DateTime<Utc>> for Arg {
    fn from(t: DateTime<Utc>) -> Arg {
        Arg::Int(Some(us(t)))
    }
}
impl From<Option<DateTime<Utc>>> for Arg {
    fn from(t: Option<DateTime<Utc>>) -> Arg {
        Arg::Int(t.map(us))
    }
}
impl From<&str> for Arg {
    fn from(v: &str) -> Arg {
        Arg::Text(Some(v.to_string()))
    }
}
impl From<String> for Arg {
    fn from(v: String) -> Arg {
        Arg::Text(Some(v))
    }
}
impl From<&String> for Arg {
    fn from(v: &String) -> Arg {
        Arg::Text(Some(v.clone()))
    }
}
impl From<Option<&str>> for Arg {
    fn from(v: Option<&str>) -> Arg {
        Arg::Text(v.map(str::to_string))
    }
}
impl From<&Option<String>> for Arg {
    fn from(v: &Option<String>) -> Arg {
        Arg::Text(v.clone())
    }
}

/// A statement and its arguments. SQL is written with `?` for parameters; for PostgreSQL each
/// is numbered (`$1`, `$2`, ...) as it is pushed, so one text serves both databases.
#[derive(Clone, Debug)]
pub(crate) struct Query {
    dialect: Dialect,
    sql: String,
    args: Vec<Arg>,
    params: usize,
}

impl Query {
    /// A statement starting with `sql`.
    pub fn new(dialect: Dialect, sql: &str) -> Query {
        let mut q = Query {
            dialect,
            sql: String::with_capacity(sql.len() + 64),
            args: Vec::new(),
            params: 0,
        };
        q.push(sql);
        q
    }

    /// Append SQL; each `?` outside a quoted literal is a parameter, given with [`Query::arg`].
    pub fn push(&mut self, sql: &str) -> &mut Query {
        if self.dialect == Dialect::Sqlite {
            self.sql.push_str(sql);
            return self;
        }
        let mut quoted = false;
        for c in sql.chars() {
            match c {
                '\'' => {
                    quoted = !quoted;
                    self.sql.push(c);
                }
                '?' if !quoted => {
                    self.params += 1;
                    self.sql.push('$');
                    self.sql.push_str(&self.params.to_string());
                }
                _ => self.sql.push(c),
            }
        }
        self
    }

    /// The value of the next `?`.
    pub fn arg(&mut self, a: impl Into<Arg>) -> &mut Query {
        self.args.push(a.into());
        self
    }

    /// Append a parameter and its value.
    pub fn bind(&mut self, a: impl Into<Arg>) -> &mut Query {
        self.push("?").arg(a)
    }

    /// Append `, `-separated parameters.
    pub fn bind_list<A: Into<Arg>>(&mut self, values: impl IntoIterator<Item = A>) -> &mut Query {
        for (i, v) in values.into_iter().enumerate() {
            if i > 0 {
                self.push(", ");
            }
            self.bind(v);
        }
        self
    }

    /// The statement's text.
    pub fn sql(&self) -> &str {
        &self.sql
    }

    /// Its arguments, in order.
    pub fn args(&self) -> &[Arg] {
        &self.args
    }
}

/// A row of either database, read by column name.
pub(crate) trait SqlRow: Send + Sync {
    /// An integer column (NULL is `None`).
    fn int(&self, column: &str) -> StoreResult<Option<i64>>;
    /// A text column (NULL is `None`).
    fn text(&self, column: &str) -> StoreResult<Option<String>>;

    /// A non-NULL integer.
    fn num(&self, column: &str) -> StoreResult<i64> {
        self.int(column)?
            .ok_or_else(|| StoreError::Corrupt(format!("{column} is NULL")))
    }
    /// A non-NULL text.
    fn string(&self, column: &str) -> StoreResult<String> {
        self.text(column)?
            .ok_or_else(|| StoreError::Corrupt(format!("{column} is NULL")))
    }
    /// A count (negative reads as 0).
    fn count(&self, column: &str) -> StoreResult<u64> {
        Ok(u64::try_from(self.num(column)?).unwrap_or(0))
    }
    /// A non-NULL time.
    fn time(&self, column: &str) -> StoreResult<DateTime<Utc>> {
        time_of(self.num(column)?)
    }
    /// A time or NULL.
    fn opt_time(&self, column: &str) -> StoreResult<Option<DateTime<Utc>>> {
        self.int(column)?.map(time_of).transpose()
    }
    /// A network number.
    fn asn(&self, column: &str) -> StoreResult<u32> {
        asn_of(self.num(column)?)
    }
    /// A network number or NULL.
    fn opt_asn(&self, column: &str) -> StoreResult<Option<u32>> {
        self.int(column)?.map(asn_of).transpose()
    }
    /// A censor's hop (a TTL) or NULL.
    fn opt_hop(&self, column: &str) -> StoreResult<Option<u8>> {
        self.int(column)?
            .map(|v| u8::try_from(v).map_err(|_| StoreError::Corrupt(format!("{column} {v}"))))
            .transpose()
    }
    /// A value of one of the model's closed sets (status, kind, transition...).
    fn parsed<T: FromStr>(&self, column: &str) -> StoreResult<T>
    where
        Self: Sized,
    {
        let s = self.string(column)?;
        s.parse()
            .map_err(|_| StoreError::Corrupt(format!("{column} {s:?}")))
    }
    /// A method; NULL and `''` (the method of a shutdown's key) are none.
    fn method(&self, column: &str) -> StoreResult<Option<Method>> {
        match self.text(column)?.as_deref() {
            None | Some("") => Ok(None),
            Some(m) => m
                .parse()
                .map(Some)
                .map_err(|_| StoreError::Corrupt(format!("method {m:?}"))),
        }
    }
}

macro_rules! sql_row {
    ($row:ty) => {
        impl SqlRow for $row {
            fn int(&self, column: &str) -> StoreResult<Option<i64>> {
                Ok(sqlx::Row::try_get(self, column)?)
            }
            fn text(&self, column: &str) -> StoreResult<Option<String>> {
                Ok(sqlx::Row::try_get(self, column)?)
            }
        }
    };
}
sql_row!(sqlx::sqlite::SqliteRow);
sql_row!(sqlx::postgres::PgRow);

fn asn_of(v: i64) -> StoreResult<u32> {
    u32::try_from(v).map_err(|_| StoreError::Corrupt(format!("asn {v}")))
}

fn evidence(s: &str) -> StoreResult<Evidence> {
    serde_json::from_str(s).map_err(|e| StoreError::Corrupt(format!("evidence: {e}")))
}

fn to_json(e: &Evidence) -> StoreResult<String> {
    serde_json::to_string(e).map_err(|e| StoreError::Corrupt(format!("evidence: {e}")))
}

/// The columns of [`event_from_row`].
pub(crate) const EVENT_COLUMNS: &[&str] = &[
    "id",
    "kind",
    "domain",
    "asn",
    "method",
    "country",
    "category",
    "started_at",
    "ended_at",
    "evidence",
    "end_evidence",
];

/// [`EVENT_COLUMNS`] of the table aliased `alias` (`""`: unqualified).
pub(crate) fn event_columns(alias: &str) -> String {
    EVENT_COLUMNS
        .iter()
        .map(|c| {
            if alias.is_empty() {
                c.to_string()
            } else {
                format!("{alias}.{c}")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

pub(crate) fn event_from_row(r: &impl SqlRow) -> StoreResult<Event> {
    let domain = r.string("domain")?;
    Ok(Event {
        id: r.string("id")?,
        kind: r.parsed("kind")?,
        domain: (!domain.is_empty()).then_some(domain),
        asn: r.asn("asn")?,
        country: r.text("country")?,
        category: r.text("category")?,
        method: r.method("method")?,
        started_at: r.time("started_at")?,
        ended_at: r.opt_time("ended_at")?,
        evidence: evidence(&r.string("evidence")?)?,
        end_evidence: r
            .text("end_evidence")?
            .as_deref()
            .map(evidence)
            .transpose()?,
    })
}

/// A claimed outbox row joined with its event ([`event_columns`]`("e")`).
pub(crate) fn notification_from_row(r: &impl SqlRow) -> StoreResult<Notification> {
    Ok(Notification {
        id: r.num("outbox_id")?,
        event: event_from_row(r)?,
        transition: r.parsed("transition")?,
        url: r.string("url")?,
        attempts: u32::try_from(r.num("attempts")?).unwrap_or(0),
    })
}

/// The columns of [`measurement_from_row`].
fn measurement_columns(d: Dialect) -> String {
    format!(
        "{} AS id, received_at, started_at, domain, url, category, asn, country, status, method, \
         reason, software_version, body, CAST(censor_hop AS BIGINT) AS censor_hop, censor_asn",
        d.id_text("id")
    )
}

pub(crate) fn measurement_from_row(r: &impl SqlRow) -> StoreResult<MeasurementRecord> {
    let id = r.string("id")?;
    Ok(MeasurementRecord {
        id: Uuid::parse_str(&id)
            .map_err(|_| StoreError::Corrupt(format!("measurement id {id:?}")))?,
        received_at: r.time("received_at")?,
        started_at: r.time("started_at")?,
        domain: r.string("domain")?,
        url: r.string("url")?,
        category: r.text("category")?,
        asn: r.opt_asn("asn")?,
        country: r.text("country")?,
        status: r.parsed("status")?,
        method: r.method("method")?,
        reason: r.string("reason")?,
        software_version: r.string("software_version")?,
        body: r.string("body")?,
        censor_hop: r.opt_hop("censor_hop")?,
        censor_asn: r.opt_asn("censor_asn")?,
    })
}

/// The columns of [`obs_from_row`], from `measurements`.
fn obs_columns(d: Dialect) -> String {
    format!(
        "{} AS id, probe_id, started_at, status, method, \
         CAST(censor_hop AS BIGINT) AS censor_hop, censor_asn",
        d.id_text("id")
    )
}

fn obs_from_row(r: &impl SqlRow) -> StoreResult<Obs> {
    Ok(Obs {
        id: r.string("id")?,
        probe: r.string("probe_id")?,
        at: r.time("started_at")?,
        status: r.parsed("status")?,
        method: r.method("method")?,
        censor_hop: r.opt_hop("censor_hop")?,
        censor_asn: r.opt_asn("censor_asn")?,
    })
}

/// The aggregate columns of [`event_state_from_row`], from `events` grouped by key and method.
fn event_state_columns(d: Dialect) -> String {
    format!(
        "method, MAX(CASE WHEN ended_at IS NULL THEN started_at END) AS open_since, \
         MAX({}(open_decided_at, COALESCE(close_decided_at, 0))) AS floor",
        d.greatest()
    )
}

fn event_state_from_row(r: &impl SqlRow) -> StoreResult<EventState> {
    Ok(EventState {
        method: r.method("method")?,
        open_since: r.opt_time("open_since")?,
        floor: r.opt_time("floor")?,
    })
}

fn latest_group_from_row(r: &impl SqlRow) -> StoreResult<LatestGroup> {
    Ok(LatestGroup {
        domain: r.string("domain")?,
        asn: r.asn("asn")?,
        country: r.text("country")?,
        category: r.text("category")?,
        status: r.parsed("status")?,
        method: r.method("method")?,
        probes: r.count("probes")?,
        last_measured: r.time("last")?,
    })
}

/// Appends the `AND ...` filters on time (`time_column`), network, country, category, site and
/// status: the columns `measurements` and `latest_verdicts` share.
fn push_filters(q: &mut Query, f: &Filter, time_column: &str) {
    if let Some(s) = f.since {
        q.push(&format!(" AND {time_column} >= ")).bind(s);
    }
    if let Some(u) = f.until {
        q.push(&format!(" AND {time_column} <= ")).bind(u);
    }
    if let Some(a) = f.asn {
        q.push(" AND asn = ").bind(a);
    }
    if let Some(c) = &f.country {
        q.push(" AND country = ").bind(c);
    }
    if let Some(c) = &f.category {
        q.push(" AND category = ").bind(c);
    }
    if let Some(d) = &f.domain {
        q.push(" AND domain = ").bind(d);
    }
    if let Some(s) = f.status {
        q.push(" AND status = ").bind(s.as_str());
    }
}

/// The key's columns as stored (`''` for the absent domain and method of shutdowns).
fn push_key(q: &mut Query, key: &EventKey) {
    q.arg(key.kind.as_str())
        .arg(key.domain.as_deref().unwrap_or(""))
        .arg(key.asn)
        .arg(key.method.map_or("", |m| m.as_str()));
}

/// The latest decision time of one key (parameters: kind, domain, asn, method); NULL without
/// events.
fn floor_of_key(d: Dialect) -> String {
    format!(
        "SELECT MAX({}(f.open_decided_at, COALESCE(f.close_decided_at, 0))) FROM events f \
         WHERE f.kind = ? AND f.domain = ? AND f.asn = ? AND f.method = ?",
        d.greatest()
    )
}

/// A [`Query`] as sqlx's, for any database that binds 64-bit integers and text.
pub(crate) fn bound<'q, DB: sqlx::Database>(
    q: &'q Query,
) -> sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments<'q>>
where
    Option<i64>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Option<&'q str>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    q.args()
        .iter()
        .fold(sqlx::query::<DB>(q.sql()), |s, a| match a {
            Arg::Int(v) => s.bind(*v),
            Arg::Text(v) => s.bind(v.as_deref()),
        })
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
    /// [`Store::insert_measurements`].
    async fn insert_batch(
        &self,
        probe_id: &str,
        now: DateTime<Utc>,
        records: &[MeasurementRecord],
    ) -> StoreResult<Vec<bool>>;
    /// [`Store::claim_notifications`].
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

/// The open (or the ended) events of `f`, newest first, at most `limit`.
async fn events_part<S: SqlStore>(
    s: &S,
    f: &Filter,
    open: bool,
    limit: u32,
) -> StoreResult<Vec<Event>> {
    let mut q = S::query(&format!(
        "SELECT {} FROM events WHERE 1 = 1",
        event_columns("")
    ));
    if let Some(k) = f.kind {
        q.push(" AND kind = ").bind(k.as_str());
    }
    let f_site = Filter {
        since: None,
        until: None,
        status: None,
        ..f.clone()
    };
    push_filters(&mut q, &f_site, "started_at");
    // Events overlapping [since, until].
    if let Some(since) = f.since {
        q.push(" AND (ended_at IS NULL OR ended_at >= ")
            .bind(since)
            .push(")");
    }
    if let Some(u) = f.until {
        q.push(" AND started_at <= ").bind(u);
    }
    q.push(if open {
        " AND ended_at IS NULL"
    } else {
        " AND ended_at IS NOT NULL"
    });
    q.push(" ORDER BY started_at DESC, id LIMIT ").bind(limit);
    s.all(&q).await?.iter().map(event_from_row).collect()
}

#[async_trait]
impl<S: SqlStore> Store for S {
    async fn ping(&self) -> StoreResult<()> {
        self.all(&S::query("SELECT 1 AS one")).await?;
        Ok(())
    }

    async fn create_invite(&self, invite: &NewInvite) -> StoreResult<()> {
        let mut q = S::query(
            "INSERT INTO invites (id, token_hash, note, max_uses, created_at, expires_at) \
             VALUES (?, ?, ?, ?, ?, ?)",
        );
        q.arg(&invite.id)
            .arg(&invite.token_hash)
            .arg(&invite.note)
            .arg(invite.max_uses)
            .arg(invite.created_at)
            .arg(invite.expires_at);
        self.exec(&q).await?;
        Ok(())
    }

    async fn register_probe(
        &self,
        probe: &NewProbe,
        invite_hash: Option<&str>,
        now: DateTime<Utc>,
    ) -> StoreResult<bool> {
        let mut tx = self.begin().await?;
        let mut invite_id: Option<String> = None;
        if let Some(hash) = invite_hash {
            // The row lock of the UPDATE serialises concurrent registrations on one invite.
            let mut q = S::query(
                "UPDATE invites SET uses = uses + 1 \
                 WHERE token_hash = ? AND revoked_at IS NULL \
                   AND (expires_at IS NULL OR expires_at > ?) AND uses < max_uses \
                 RETURNING id",
            );
            q.arg(hash).arg(now);
            match S::tx_all(&mut tx, &q).await?.first() {
                Some(row) => invite_id = Some(row.string("id")?),
                None => {
                    S::rollback(tx).await?;
                    return Ok(false);
                }
            }
        }
        let mut q = S::query(
            "INSERT INTO probes (id, token_hash, invite_id, created_at) VALUES (?, ?, ?, ?)",
        );
        q.arg(&probe.id)
            .arg(&probe.token_hash)
            .arg(&invite_id)
            .arg(probe.created_at);
        S::tx_exec(&mut tx, &q).await?;
        S::commit(tx).await?;
        Ok(true)
    }

    async fn authenticate(&self, token_hash: &str) -> StoreResult<Option<String>> {
        let mut q = S::query("SELECT id FROM probes WHERE token_hash = ? AND revoked_at IS NULL");
        q.arg(token_hash);
        self.all(&q)
            .await?
            .first()
            .map(|r| r.string("id"))
            .transpose()
    }

    async fn list_tokens(&self) -> StoreResult<Vec<TokenInfo>> {
        let mut out = Vec::new();
        let invites = S::query(
            "SELECT id, note, max_uses, uses, created_at, expires_at, revoked_at \
             FROM invites ORDER BY created_at, id",
        );
        for r in &self.all(&invites).await? {
            let count = |c: &str| -> StoreResult<u32> {
                u32::try_from(r.num(c)?).map_err(|_| StoreError::Corrupt(c.to_string()))
            };
            out.push(TokenInfo {
                id: r.string("id")?,
                kind: "invite",
                created_at: r.time("created_at")?,
                revoked_at: r.opt_time("revoked_at")?,
                expires_at: r.opt_time("expires_at")?,
                uses: Some(count("uses")?),
                max_uses: Some(count("max_uses")?),
                note: r.text("note")?,
                last_seen_at: None,
            });
        }
        let probes = S::query(
            "SELECT id, created_at, revoked_at, last_seen_at FROM probes ORDER BY created_at, id",
        );
        for r in &self.all(&probes).await? {
            out.push(TokenInfo {
                id: r.string("id")?,
                kind: "probe",
                created_at: r.time("created_at")?,
                revoked_at: r.opt_time("revoked_at")?,
                expires_at: None,
                uses: None,
                max_uses: None,
                note: None,
                last_seen_at: r.opt_time("last_seen_at")?,
            });
        }
        Ok(out)
    }

    async fn revoke(&self, id: &str, now: DateTime<Utc>) -> StoreResult<bool> {
        for table in ["invites", "probes"] {
            let mut q = S::query(&format!(
                "UPDATE {table} SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL"
            ));
            q.arg(now).arg(id);
            if self.exec(&q).await? > 0 {
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
        self.insert_batch(probe_id, now, records).await
    }

    async fn site_series(
        &self,
        domain: &str,
        asn: u32,
        since: DateTime<Utc>,
    ) -> StoreResult<Vec<Obs>> {
        let mut q = S::query(&format!(
            "SELECT {} FROM measurements \
             WHERE domain = ? AND asn = ? AND started_at > ? ORDER BY started_at, id",
            obs_columns(S::DIALECT)
        ));
        q.arg(domain).arg(asn).arg(since);
        self.all(&q).await?.iter().map(obs_from_row).collect()
    }

    async fn site_series_many(
        &self,
        keys: &[(String, u32)],
        since: DateTime<Utc>,
    ) -> StoreResult<HashMap<(String, u32), Vec<Obs>>> {
        let wanted: HashSet<&(String, u32)> = keys.iter().collect();
        let mut out: HashMap<(String, u32), Vec<Obs>> = HashMap::new();
        // In slices, far below SQLite's bound-parameter limit. The IN lists cross every
        // domain with every network of the slice (an upload comes from one network, so this
        // is exact in practice); rows of pairs not asked for are dropped.
        for part in keys.chunks(400) {
            let mut asns: Vec<u32> = part.iter().map(|(_, a)| *a).collect();
            asns.sort_unstable();
            asns.dedup();
            let mut q = S::query(&format!(
                "SELECT domain, asn, {} FROM measurements WHERE domain IN (",
                obs_columns(S::DIALECT)
            ));
            q.bind_list(part.iter().map(|(d, _)| d.as_str()))
                .push(") AND asn IN (")
                .bind_list(asns)
                .push(") AND started_at > ")
                .bind(since)
                .push(" ORDER BY domain, asn, started_at, id");
            for r in self.all(&q).await? {
                let key = (r.string("domain")?, r.asn("asn")?);
                if !wanted.contains(&key) {
                    continue;
                }
                out.entry(key).or_default().push(obs_from_row(&r)?);
            }
        }
        Ok(out)
    }

    async fn block_states_many(
        &self,
        keys: &[(String, u32)],
    ) -> StoreResult<HashMap<(String, u32), Vec<EventState>>> {
        let wanted: HashSet<&(String, u32)> = keys.iter().collect();
        let mut out: HashMap<(String, u32), Vec<EventState>> = HashMap::new();
        for part in keys.chunks(400) {
            let mut q = S::query(&format!(
                "SELECT domain, asn, {} FROM events WHERE kind = 'new_block' AND domain IN (",
                event_state_columns(S::DIALECT)
            ));
            q.bind_list(part.iter().map(|(d, _)| d.as_str()))
                .push(") GROUP BY domain, asn, method");
            for r in self.all(&q).await? {
                let key = (r.string("domain")?, r.asn("asn")?);
                if !wanted.contains(&key) {
                    continue;
                }
                out.entry(key).or_default().push(event_state_from_row(&r)?);
            }
        }
        Ok(out)
    }

    async fn network_presence(&self, asn: u32, since: DateTime<Utc>) -> StoreResult<Vec<Presence>> {
        // One row per probe, minute and offline flag keeps this small for a busy network.
        let mut q = S::query(&format!(
            "SELECT probe_id, CAST(CASE WHEN status = 'offline' THEN 1 ELSE 0 END AS BIGINT) \
                    AS off, MIN(started_at) AS first_at, MAX(started_at) AS last_at, \
                    COUNT(*) AS n, MAX({}) AS sample \
             FROM measurements WHERE asn = ? AND started_at > ? \
             GROUP BY probe_id, off, started_at / 60000000",
            S::DIALECT.id_text("id")
        ));
        q.arg(asn).arg(since);
        self.all(&q)
            .await?
            .iter()
            .map(|r| {
                Ok(Presence {
                    probe: r.string("probe_id")?,
                    first_at: r.time("first_at")?,
                    last_at: r.time("last_at")?,
                    offline: r.num("off")? != 0,
                    count: r.count("n")?,
                    sample_id: r.string("sample")?,
                })
            })
            .collect()
    }

    async fn established_probes(
        &self,
        probes: &[String],
        registered_by: DateTime<Utc>,
        min_hours: u32,
    ) -> StoreResult<HashSet<String>> {
        let mut out = HashSet::new();
        for part in probes.chunks(400) {
            // Each probe's hours are one range of the (probe_id, hour) index, read only for
            // the probes old enough; the count stops at `min_hours` rows.
            let mut q = S::query(
                "SELECT p.id AS probe_id FROM probes p \
                 WHERE p.revoked_at IS NULL AND p.created_at <= ",
            );
            q.bind(registered_by)
                .push(" AND p.id IN (")
                .bind_list(part.iter().map(String::as_str))
                .push(
                    ") AND (SELECT COUNT(*) FROM (SELECT DISTINCT h.hour FROM probe_hours h \
                     WHERE h.probe_id = p.id LIMIT ",
                )
                .bind(i64::from(min_hours))
                .push(") AS hours) >= ")
                .bind(i64::from(min_hours));
            for r in self.all(&q).await? {
                out.insert(r.string("probe_id")?);
            }
        }
        Ok(out)
    }

    async fn event_states(
        &self,
        kind: EventKind,
        domain: Option<&str>,
        asn: u32,
    ) -> StoreResult<Vec<EventState>> {
        let mut q = S::query(&format!(
            "SELECT {} FROM events WHERE kind = ? AND domain = ? AND asn = ? GROUP BY method",
            event_state_columns(S::DIALECT)
        ));
        q.arg(kind.as_str()).arg(domain.unwrap_or("")).arg(asn);
        self.all(&q)
            .await?
            .iter()
            .map(event_state_from_row)
            .collect()
    }

    async fn open_event(&self, ev: &NewEvent, urls: &[String]) -> StoreResult<Option<Event>> {
        let now = Utc::now();
        let d = S::DIALECT;
        let mut tx = self.begin().await?;
        S::lock_event_key(&mut tx, &ev.key).await?;
        // Inserted only if the key's last decision is still the one the decision was computed
        // from (checked in the statement itself: under SQLite's write lock, and after the key's
        // lock on PostgreSQL); the partial unique index `events_one_open` backs up the
        // one-open-event rule.
        let mut q = S::query(&format!(
            "INSERT INTO events (id, kind, domain, asn, method, country, category, started_at, \
             open_decided_at, evidence, created_at) \
             SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ? WHERE ({}) {} ? ON CONFLICT DO NOTHING",
            floor_of_key(d),
            d.same()
        ));
        q.arg(&ev.id);
        push_key(&mut q, &ev.key);
        q.arg(&ev.country)
            .arg(&ev.category)
            .arg(ev.started_at)
            .arg(ev.decided_at)
            .arg(to_json(&ev.evidence)?)
            .arg(now);
        push_key(&mut q, &ev.key);
        q.arg(ev.floor);
        if S::tx_exec(&mut tx, &q).await? == 0 {
            S::rollback(tx).await?;
            return Ok(None);
        }
        S::enqueue(
            &mut tx,
            &ev.id,
            Transition::of(ev.key.kind, true),
            urls,
            now,
        )
        .await?;
        S::commit(tx).await?;
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
        let d = S::DIALECT;
        let mut tx = self.begin().await?;
        S::lock_event_key(&mut tx, &c.key).await?;
        let mut q = S::query(&format!(
            "UPDATE events SET ended_at = {}(?, started_at), close_decided_at = ?, \
             end_evidence = ? \
             WHERE kind = ? AND domain = ? AND asn = ? AND method = ? AND ended_at IS NULL \
               AND ({}) {} ? \
             RETURNING {}",
            d.greatest(),
            floor_of_key(d),
            d.same(),
            event_columns("")
        ));
        q.arg(c.ended_at)
            .arg(c.decided_at)
            .arg(to_json(&c.evidence)?);
        push_key(&mut q, &c.key);
        push_key(&mut q, &c.key);
        q.arg(c.floor);
        let rows = S::tx_all(&mut tx, &q).await?;
        let Some(row) = rows.first() else {
            S::rollback(tx).await?;
            return Ok(None);
        };
        let event = event_from_row(row)?;
        S::enqueue(
            &mut tx,
            &event.id,
            Transition::of(c.key.kind, false),
            urls,
            now,
        )
        .await?;
        S::commit(tx).await?;
        Ok(Some(event))
    }

    async fn sites_with_block_activity(
        &self,
        keys: &[(String, u32)],
        since: DateTime<Utc>,
    ) -> StoreResult<HashSet<(String, u32)>> {
        let mut out = HashSet::new();
        // In slices, to stay far below SQLite's bound-parameter limit.
        for part in keys.chunks(500) {
            let domains = || part.iter().map(|(d, _)| d.as_str());
            let mut q = S::query("SELECT domain, asn FROM blocked_methods WHERE last_at > ");
            q.bind(since).push(" AND domain IN (").bind_list(domains());
            q.push(
                ") UNION SELECT domain, asn FROM events WHERE kind = 'new_block' \
                 AND ended_at IS NULL AND domain IN (",
            )
            .bind_list(domains())
            .push(")");
            for r in self.all(&q).await? {
                out.insert((r.string("domain")?, r.asn("asn")?));
            }
        }
        let wanted: HashSet<&(String, u32)> = keys.iter().collect();
        out.retain(|k| wanted.contains(k));
        Ok(out)
    }

    async fn recent_sites(&self, since: DateTime<Utc>) -> StoreResult<Vec<RecentSite>> {
        let mut q = S::query(
            "SELECT domain, asn, MAX(country) AS country, MAX(category) AS category, \
             MAX(started_at) AS latest FROM latest_verdicts \
             WHERE started_at >= ? GROUP BY domain, asn",
        );
        q.arg(since);
        self.all(&q)
            .await?
            .iter()
            .map(|r| {
                Ok(RecentSite {
                    domain: r.string("domain")?,
                    asn: r.asn("asn")?,
                    country: r.text("country")?,
                    category: r.text("category")?,
                    latest: r.time("latest")?,
                })
            })
            .collect()
    }

    async fn recent_networks(&self, since: DateTime<Utc>) -> StoreResult<Vec<RecentNetwork>> {
        let mut q = S::query(
            "SELECT asn, MAX(NULLIF(country, '')) AS country, MAX(last_started_at) AS latest \
             FROM probe_hours WHERE hour >= ? AND asn >= 0 AND last_started_at >= ? \
             GROUP BY asn",
        );
        q.arg(hour_of(since) - TimeDelta::hours(1)).arg(since);
        self.all(&q)
            .await?
            .iter()
            .map(|r| {
                Ok(RecentNetwork {
                    asn: r.asn("asn")?,
                    country: r.text("country")?,
                    latest: r.time("latest")?,
                })
            })
            .collect()
    }

    async fn latest_groups(&self, f: &Filter) -> StoreResult<Vec<LatestGroup>> {
        let mut q = S::query(
            "SELECT domain, asn, MAX(country) AS country, MAX(category) AS category, status, \
             method, COUNT(*) AS probes, MAX(started_at) AS last FROM latest_verdicts WHERE 1 = 1",
        );
        let f = Filter {
            until: None,
            status: None,
            ..f.clone()
        };
        push_filters(&mut q, &f, "started_at");
        // Grouped and ordered as the index `latest_verdicts_series` is (migration 0005), which
        // holds every column read: one scan of the index, no sort, no table access.
        q.push(" GROUP BY domain, asn, status, method ORDER BY domain, asn, status, method");
        self.all(&q)
            .await?
            .iter()
            .map(latest_group_from_row)
            .collect()
    }

    async fn latest_groups_scan(&self, f: &Filter) -> StoreResult<Vec<LatestGroup>> {
        let mut q = S::query(
            "WITH ranked AS (SELECT domain, asn, country, category, status, method, started_at, \
             ROW_NUMBER() OVER (PARTITION BY domain, asn, probe_id \
                                ORDER BY started_at DESC, id DESC) AS rn \
             FROM measurements WHERE asn IS NOT NULL AND status <> 'offline'",
        );
        push_filters(&mut q, f, "started_at");
        q.push(
            ") SELECT domain, asn, MAX(country) AS country, MAX(category) AS category, status, \
             method, COUNT(*) AS probes, MAX(started_at) AS last FROM ranked WHERE rn = 1 \
             GROUP BY domain, asn, status, method ORDER BY domain, asn",
        );
        self.all(&q)
            .await?
            .iter()
            .map(latest_group_from_row)
            .collect()
    }

    async fn place_groups(&self, f: &Filter) -> StoreResult<Vec<PlaceGroup>> {
        // The partial index `latest_verdicts_censor` (migration 0006) holds the located rows.
        let mut q = S::query(
            "SELECT domain, asn, CAST(censor_hop AS BIGINT) AS hop, censor_asn, \
             COUNT(*) AS probes, CAST(MAX(censor_run) AS BIGINT) AS run FROM latest_verdicts \
             WHERE censor_hop IS NOT NULL",
        );
        let f = Filter {
            until: None,
            status: None,
            ..f.clone()
        };
        push_filters(&mut q, &f, "started_at");
        // Ordered as grouped (and the hop not aliased to its column's name), so the index's
        // order serves both: one scan of it, no sort.
        q.push(
            " GROUP BY domain, asn, censor_hop, censor_asn \
             ORDER BY domain, asn, censor_hop, censor_asn",
        );
        self.all(&q)
            .await?
            .iter()
            .map(|r| {
                Ok(PlaceGroup {
                    domain: r.string("domain")?,
                    asn: r.asn("asn")?,
                    place: CensorPlace {
                        hop: r
                            .opt_hop("hop")?
                            .ok_or_else(|| StoreError::Corrupt("censor_hop is NULL".into()))?,
                        asn: r.opt_asn("censor_asn")?,
                    },
                    probes: r.count("probes")?,
                    run: r.count("run")?,
                })
            })
            .collect()
    }

    async fn record_censor_place(
        &self,
        d: &PlaceDecision,
        urls: &[String],
    ) -> StoreResult<Option<Event>> {
        let now = Utc::now();
        let key = EventKey {
            kind: EventKind::BlockMoved,
            domain: Some(d.domain.clone()),
            asn: d.asn,
            method: None,
        };
        let mut tx = self.begin().await?;
        S::lock_event_key(&mut tx, &key).await?;
        // A write first (SQLite then holds its write lock for the whole transaction): the
        // first place agreed for a key is only remembered.
        let mut q = S::query(
            "INSERT INTO censor_places (domain, asn, censor_hop, censor_asn, agreeing, \
             decided_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (domain, asn) DO NOTHING",
        );
        q.arg(d.domain.as_str())
            .arg(d.asn)
            .arg(i64::from(d.place.hop))
            .arg(d.place.asn.map(i64::from))
            .arg(i64::try_from(d.agreeing).unwrap_or(i64::MAX))
            .arg(d.decided_at);
        if S::tx_exec(&mut tx, &q).await? == 1 {
            S::commit(tx).await?;
            return Ok(None);
        }
        let mut q = S::query(
            "SELECT CAST(censor_hop AS BIGINT) AS censor_hop, censor_asn, decided_at \
             FROM censor_places WHERE domain = ? AND asn = ?",
        );
        q.arg(d.domain.as_str()).arg(d.asn);
        let rows = S::tx_all(&mut tx, &q).await?;
        let Some(row) = rows.first() else {
            S::rollback(tx).await?;
            return Ok(None);
        };
        if row.time("decided_at")? >= d.decided_at {
            S::rollback(tx).await?;
            return Ok(None);
        }
        let previous = CensorPlace {
            hop: row
                .opt_hop("censor_hop")?
                .ok_or_else(|| StoreError::Corrupt("censor_hop is NULL".into()))?,
            asn: row.opt_asn("censor_asn")?,
        };
        let mut q = S::query(
            "UPDATE censor_places SET censor_hop = ?, censor_asn = ?, agreeing = ?, \
             decided_at = ? WHERE domain = ? AND asn = ?",
        );
        q.arg(i64::from(d.place.hop))
            .arg(d.place.asn.map(i64::from))
            .arg(i64::try_from(d.agreeing).unwrap_or(i64::MAX))
            .arg(d.decided_at)
            .arg(d.domain.as_str())
            .arg(d.asn);
        S::tx_exec(&mut tx, &q).await?;
        if previous == d.place || !d.blocked {
            S::commit(tx).await?;
            return Ok(None);
        }
        let evidence = Evidence {
            censor: Some(d.place),
            previous_censor: Some(previous),
            ..d.evidence.clone()
        };
        let mut q = S::query(
            "INSERT INTO events (id, kind, domain, asn, method, country, category, started_at, \
             ended_at, open_decided_at, close_decided_at, evidence, created_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        );
        q.arg(d.event_id.as_str());
        push_key(&mut q, &key);
        q.arg(&d.country)
            .arg(&d.category)
            .arg(d.started_at)
            .arg(d.started_at)
            .arg(d.decided_at)
            .arg(d.decided_at)
            .arg(to_json(&evidence)?)
            .arg(now);
        S::tx_exec(&mut tx, &q).await?;
        S::enqueue(&mut tx, &d.event_id, Transition::BlockMoved, urls, now).await?;
        S::commit(tx).await?;
        Ok(Some(Event {
            id: d.event_id.clone(),
            kind: EventKind::BlockMoved,
            domain: Some(d.domain.clone()),
            asn: d.asn,
            country: d.country.clone(),
            category: d.category.clone(),
            method: None,
            started_at: d.started_at,
            ended_at: Some(d.started_at),
            evidence,
            end_evidence: None,
        }))
    }

    async fn blocked_methods_seen(
        &self,
        since: DateTime<Utc>,
    ) -> StoreResult<Vec<(String, u32, Method)>> {
        let mut q = S::query("SELECT domain, asn, method FROM blocked_methods WHERE last_at >= ?");
        q.arg(since);
        self.all(&q)
            .await?
            .iter()
            .map(|r| Ok((r.string("domain")?, r.asn("asn")?, r.parsed("method")?)))
            .collect()
    }

    async fn history(&self, domain: &str, f: &Filter) -> StoreResult<Vec<HistoryRow>> {
        let mut q = S::query(&format!(
            "SELECT (started_at / {HOUR_US}) * {HOUR_US} AS hour, asn, country, status, method, \
             COUNT(*) AS n, COUNT(DISTINCT probe_id) AS probes FROM measurements WHERE domain = "
        ));
        q.bind(domain);
        let f = Filter {
            domain: None,
            ..f.clone()
        };
        push_filters(&mut q, &f, "started_at");
        // NULLS FIRST: SQLite's default, said for PostgreSQL, so both stores answer alike.
        q.push(
            " GROUP BY 1, asn, country, status, method \
             ORDER BY hour, asn NULLS FIRST, status LIMIT ",
        )
        .bind(f.limit);
        self.all(&q)
            .await?
            .iter()
            .map(|r| {
                Ok(HistoryRow {
                    hour: r.time("hour")?,
                    asn: r.opt_asn("asn")?,
                    country: r.text("country")?,
                    status: r.parsed::<Status>("status")?,
                    method: r.method("method")?,
                    measurements: r.count("n")?,
                    probes: r.count("probes")?,
                })
            })
            .collect()
    }

    async fn events(&self, f: &Filter) -> StoreResult<Vec<Event>> {
        // Open events first, then the ended ones, each newest first: a flood of short events
        // cannot push an open one out of the page. Two queries, each a bounded range (the
        // open ones are few, and the unique index holds exactly them).
        let mut out = match f.open {
            Some(false) => Vec::new(),
            _ => events_part(self, f, true, f.limit).await?,
        };
        let left = f
            .limit
            .saturating_sub(u32::try_from(out.len()).unwrap_or(u32::MAX));
        if f.open != Some(true) && left > 0 {
            out.extend(events_part(self, f, false, left).await?);
        }
        Ok(out)
    }

    async fn probe_networks(&self, f: &Filter) -> StoreResult<Vec<ProbeNetworkRow>> {
        let mut q = S::query(
            "SELECT asn, country, COUNT(DISTINCT probe_id) AS probes, \
             CAST(SUM(measurements) AS BIGINT) AS n, MAX(last_received_at) AS last \
             FROM probe_hours WHERE 1 = 1",
        );
        // Hours overlapping [since, until].
        if let Some(s) = f.since {
            q.push(" AND hour > ").bind(s - TimeDelta::hours(1));
        }
        if let Some(u) = f.until {
            q.push(" AND hour <= ").bind(u);
        }
        if let Some(a) = f.asn {
            q.push(" AND asn = ").bind(a);
        }
        if let Some(c) = &f.country {
            q.push(" AND country = ").bind(c);
        }
        q.push(" GROUP BY asn, country ORDER BY asn, country LIMIT ")
            .bind(f.limit);
        self.all(&q)
            .await?
            .iter()
            .map(|r| {
                let last = r.num("last")?;
                let asn = r.num("asn")?;
                let country = r.string("country")?;
                Ok(ProbeNetworkRow {
                    asn: (asn >= 0).then(|| asn_of(asn)).transpose()?,
                    country: (!country.is_empty()).then_some(country),
                    probes: r.count("probes")?,
                    measurements: r.count("n")?,
                    // Hour precision: enough to see a network's activity, too coarse to
                    // follow one volunteer's habits.
                    last_seen: time_of(last - last.rem_euclid(HOUR_US))?,
                })
            })
            .collect()
    }

    async fn measurements(&self, f: &Filter) -> StoreResult<Vec<MeasurementRecord>> {
        let mut q = S::query(&format!(
            "SELECT {} FROM measurements WHERE 1 = 1",
            measurement_columns(S::DIALECT)
        ));
        push_filters(&mut q, f, "started_at");
        q.push(" ORDER BY started_at, id LIMIT ").bind(f.limit);
        self.all(&q)
            .await?
            .iter()
            .map(measurement_from_row)
            .collect()
    }

    async fn export_measurements(
        &self,
        f: &Filter,
        after: Option<Cursor>,
        limit: u32,
        out: tokio::sync::mpsc::Sender<MeasurementRecord>,
    ) -> StoreResult<()> {
        let mut q = S::query(&format!(
            "SELECT {} FROM measurements WHERE 1 = 1",
            measurement_columns(S::DIALECT)
        ));
        push_filters(&mut q, f, "started_at");
        if let Some(c) = after {
            // The first bound alone selects a range of the (started_at, id) index (and, on
            // PostgreSQL, prunes the partitions before it).
            q.push(" AND started_at >= ")
                .bind(c.started_at)
                .push(" AND (started_at > ")
                .bind(c.started_at)
                .push(" OR id > ")
                .bind(c.id.to_string())
                .push(S::DIALECT.id_param())
                .push(")");
        }
        q.push(" ORDER BY started_at, id LIMIT ").bind(limit);
        self.stream_measurements(&q, out).await
    }

    async fn claim_notifications(
        &self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: u32,
    ) -> StoreResult<Vec<Notification>> {
        self.claim(now, lease_until, limit).await
    }

    async fn notification_delivered(&self, id: i64, now: DateTime<Utc>) -> StoreResult<()> {
        let mut q =
            S::query("UPDATE outbox SET delivered_at = ?, attempts = attempts + 1 WHERE id = ?");
        q.arg(now).arg(id);
        self.exec(&q).await?;
        Ok(())
    }

    async fn notification_failed(
        &self,
        id: i64,
        retry_at: Option<DateTime<Utc>>,
        error: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        let mut q = S::query(
            "UPDATE outbox SET attempts = attempts + 1, last_error = ?, \
             next_attempt_at = COALESCE(?, next_attempt_at), \
             abandoned_at = CASE WHEN ? IS NULL THEN ? ELSE NULL END WHERE id = ?",
        );
        q.arg(error).arg(retry_at).arg(retry_at).arg(now).arg(id);
        self.exec(&q).await?;
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
        assert_eq!(us(t), 1_796_119_200_123_456);
        assert_eq!(time_of(us(t)).unwrap(), t);
        assert!(time_of(i64::MAX).is_err());
    }
}
