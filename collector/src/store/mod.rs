//! Storage behind one [`Store`] (the sum of a role trait per kind of data: [`TokenStore`],
//! [`MeasurementStore`], [`EventStore`], [`OutboxStore`], [`ReadModelStore`]): SQLite for one
//! collector, PostgreSQL for several. The queries are written once in `sql/`, one file per kind
//! of data; `sqlite.rs` and `postgres.rs` hold what the two databases do differently.
//!
//! The traits are shaped for a database shared by several collector processes: every decision
//! that must be unique (one open event per key, one copy of a measurement, one use of an invite,
//! one claim of an outbox row) is a single call that the implementation settles inside the
//! database with a unique constraint, a lock or a transaction, never with in-process state.
//! Event changes are compare-and-set on the key's last decision time ([`NewEvent::floor`]), so
//! a decision computed from a state another collector has since changed is refused and
//! recomputed. Notifications are written to an outbox in the same transaction as the event
//! change they announce.

pub mod postgres;
mod sql;
pub mod sqlite;

use std::borrow::Cow;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use serde::Serialize;
use sqlx::migrate::{Migration, MigrationSource, MigrationType};
use uuid::Uuid;
use witness_core::model::{Method, Status};

use crate::config::StoreConfig;
use crate::model::{
    CensorPlace, EventKind, Evidence, LatestGroup, Obs, PlaceGroup, Presence, Transition,
};

/// Storage failures. Never shown to clients (they get a plain 500).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed.
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    /// A migration failed.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A row holds something this code cannot read back.
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// The configured URL names a database this build cannot use.
    #[error("unsupported store url {0:?}: use sqlite://PATH, a path, or postgres://...")]
    Unsupported(String),
}

/// Result of a store call.
pub type StoreResult<T> = Result<T, StoreError>;

/// Which implementation a store URL names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// `sqlite://PATH`, `sqlite:PATH` or a plain path.
    Sqlite,
    /// `postgres://...` or `postgresql://...`.
    Postgres,
}

impl Backend {
    /// The backend of `url`; an unknown scheme (`mysql://`, ...) is refused rather than taken
    /// for a file name.
    pub fn of(url: &str) -> StoreResult<Backend> {
        let url = url.trim();
        let lower = url.to_ascii_lowercase();
        if lower.starts_with("postgres://") || lower.starts_with("postgresql://") {
            Ok(Backend::Postgres)
        } else if lower.starts_with("sqlite:") {
            Ok(Backend::Sqlite)
        } else if url.contains("://")
            || lower.starts_with("postgres:")
            || lower.starts_with("postgresql:")
        {
            Err(StoreError::Unsupported(url.to_string()))
        } else {
            Ok(Backend::Sqlite)
        }
    }
}

/// `url` with any password replaced by `***`, for logs and error messages.
pub fn redacted(url: &str) -> String {
    match url::Url::parse(url.trim()) {
        Ok(mut u) if u.password().is_some() => {
            // Only fails for URLs that cannot have a password, and this one has one.
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.trim().to_string(),
    }
}

/// Open the store named by the configuration and run its migrations.
pub async fn open(config: &StoreConfig) -> StoreResult<Arc<dyn Store>> {
    let url = config.url.trim();
    Ok(match Backend::of(url)? {
        Backend::Postgres => Arc::new(
            postgres::PostgresStore::open_with(url, config.max_connections, config.read_timeout.0)
                .await?,
        ),
        Backend::Sqlite => Arc::new(
            sqlite::SqliteStore::open_with(url, config.max_connections, config.read_timeout.0)
                .await?,
        ),
    })
}

/// Migrations compiled into the binary, `(version, description, sql)`, as a sqlx source.
#[derive(Debug)]
pub(crate) struct Embedded(pub &'static [(i64, &'static str, &'static str)]);

impl MigrationSource<'static> for Embedded {
    fn resolve(self) -> BoxFuture<'static, Result<Vec<Migration>, sqlx::error::BoxDynError>> {
        Box::pin(async move {
            Ok(self
                .0
                .iter()
                .map(|(version, description, sql)| {
                    Migration::new(
                        *version,
                        Cow::Borrowed(*description),
                        MigrationType::Simple,
                        Cow::Borrowed(*sql),
                        false,
                    )
                })
                .collect())
        })
    }
}

/// A new invite token (only its hash is stored).
#[derive(Clone, Debug)]
pub struct NewInvite {
    /// Public id, used to list and revoke.
    pub id: String,
    /// SHA-256 of the token, hex.
    pub token_hash: String,
    /// Free text for the operator.
    pub note: Option<String>,
    /// Registrations allowed with it.
    pub max_uses: u32,
    /// When it stops working.
    pub expires_at: Option<DateTime<Utc>>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
}

/// A new probe (only its token's hash is stored).
#[derive(Clone, Debug)]
pub struct NewProbe {
    /// Opaque id.
    pub id: String,
    /// SHA-256 of the token, hex.
    pub token_hash: String,
    /// Creation time.
    pub created_at: DateTime<Utc>,
}

/// One line of `token list`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TokenInfo {
    /// Invite or probe id.
    pub id: String,
    /// `invite` or `probe`.
    pub kind: &'static str,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Revocation time.
    pub revoked_at: Option<DateTime<Utc>>,
    /// Invites: expiry.
    pub expires_at: Option<DateTime<Utc>>,
    /// Invites: registrations made.
    pub uses: Option<u32>,
    /// Invites: registrations allowed.
    pub max_uses: Option<u32>,
    /// Invites: note.
    pub note: Option<String>,
    /// Probes: last upload.
    pub last_seen_at: Option<DateTime<Utc>>,
}

/// One accepted measurement, with the columns the collector queries on and the record itself.
#[derive(Clone, Debug, PartialEq)]
pub struct MeasurementRecord {
    /// The probe-assigned id.
    pub id: Uuid,
    /// When the collector committed it.
    pub received_at: DateTime<Utc>,
    /// The measurement's own start.
    pub started_at: DateTime<Utc>,
    /// Lower-case host.
    pub domain: String,
    /// URL as measured.
    pub url: String,
    /// Citizen Lab category.
    pub category: Option<String>,
    /// Probe's claimed network.
    pub asn: Option<u32>,
    /// Probe's claimed country.
    pub country: Option<String>,
    /// Verdict status.
    pub status: Status,
    /// Verdict method.
    pub method: Option<Method>,
    /// Verdict reason.
    pub reason: String,
    /// Probe software version.
    pub software_version: String,
    /// The record's JSON as uploaded (validated).
    pub body: String,
    /// `path.censor_hop`: the hop at which the probe located the censor.
    pub censor_hop: Option<u8>,
    /// The censor's autonomous system (`PathObservation::censor_asn`), when known.
    pub censor_asn: Option<u32>,
}

/// Identifies the at-most-one open event.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct EventKey {
    /// Block or shutdown.
    pub kind: EventKind,
    /// Site (`None` for shutdowns).
    pub domain: Option<String>,
    /// Network.
    pub asn: u32,
    /// Method (`None` for shutdowns).
    pub method: Option<Method>,
}

/// An event (see [`crate::aggregate`] for the rule).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Event {
    /// Unique id (UUIDv7).
    pub id: String,
    /// `new_block` or `shutdown`.
    pub kind: EventKind,
    /// Site (`null` for shutdowns).
    pub domain: Option<String>,
    /// Network.
    pub asn: u32,
    /// Country claimed by the probes.
    pub country: Option<String>,
    /// Category of the site.
    pub category: Option<String>,
    /// Blocking method (`null` for shutdowns).
    pub method: Option<Method>,
    /// Start, from the measurements' own times.
    pub started_at: DateTime<Utc>,
    /// End, from the measurements' own times; `null` while open.
    pub ended_at: Option<DateTime<Utc>>,
    /// Why it opened.
    pub evidence: Evidence,
    /// Why it closed.
    pub end_evidence: Option<Evidence>,
}

impl Event {
    /// The key of this event.
    pub fn key(&self) -> EventKey {
        EventKey {
            kind: self.kind,
            domain: self.domain.clone(),
            asn: self.asn,
            method: self.method,
        }
    }
}

/// An event to open.
#[derive(Clone, Debug)]
pub struct NewEvent {
    /// Fresh id.
    pub id: String,
    /// Key.
    pub key: EventKey,
    /// Country.
    pub country: Option<String>,
    /// Category.
    pub category: Option<String>,
    /// Start.
    pub started_at: DateTime<Utc>,
    /// Evaluation time of the decision.
    pub decided_at: DateTime<Utc>,
    /// The key's last decision time ([`EventState::floor`]) that this decision was computed
    /// from. The store applies the decision only if it is still the latest, so a collector
    /// working from a state that another one has changed meanwhile is told to re-evaluate.
    pub floor: Option<DateTime<Utc>>,
    /// Evidence.
    pub evidence: Evidence,
}

/// An event to close.
#[derive(Clone, Debug)]
pub struct CloseEvent {
    /// Key of the open event.
    pub key: EventKey,
    /// End.
    pub ended_at: DateTime<Utc>,
    /// Evaluation time of the decision.
    pub decided_at: DateTime<Utc>,
    /// As [`NewEvent::floor`].
    pub floor: Option<DateTime<Utc>>,
    /// Evidence.
    pub evidence: Evidence,
}

/// A censor place agreed by an evaluation of one site on one network ([`Store::record_censor_place`]).
#[derive(Clone, Debug)]
pub struct PlaceDecision {
    /// Site.
    pub domain: String,
    /// Network.
    pub asn: u32,
    /// Country, for the event.
    pub country: Option<String>,
    /// Category, for the event.
    pub category: Option<String>,
    /// The place agreed.
    pub place: CensorPlace,
    /// Probes that agree.
    pub agreeing: u64,
    /// Evaluation time of the decision: a place decided at an earlier or equal time than the
    /// one stored is ignored, so decisions only move forward.
    pub decided_at: DateTime<Utc>,
    /// When the agreeing runs began (the event's time).
    pub started_at: DateTime<Utc>,
    /// Whether the site is blocked on the network now (a `new_block` event is open): only then
    /// is a change of place an event.
    pub blocked: bool,
    /// Id of the `block_moved` event, if one is raised.
    pub event_id: String,
    /// Why (`previous_censor` is filled in by the store).
    pub evidence: Evidence,
}

/// State of the events of one key, as the aggregation needs it.
#[derive(Clone, Debug, PartialEq)]
pub struct EventState {
    /// Method (blocks) or `None` (shutdowns).
    pub method: Option<Method>,
    /// Start of the open event, if any.
    pub open_since: Option<DateTime<Utc>>,
    /// Latest decision time on this key.
    pub floor: Option<DateTime<Utc>>,
}

/// Filters of the read API. Which endpoint uses which is documented in `docs/collector-api.md`.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// Country code.
    pub country: Option<String>,
    /// Network.
    pub asn: Option<u32>,
    /// Category code.
    pub category: Option<String>,
    /// Site.
    pub domain: Option<String>,
    /// Lower time bound (inclusive).
    pub since: Option<DateTime<Utc>>,
    /// Upper time bound (inclusive).
    pub until: Option<DateTime<Utc>>,
    /// Event kind.
    pub kind: Option<EventKind>,
    /// Events: only open (`true`) or only ended (`false`).
    pub open: Option<bool>,
    /// Measurement status.
    pub status: Option<Status>,
    /// Most rows.
    pub limit: u32,
}

/// Hourly counts for a site's history.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HistoryRow {
    /// Start of the hour (measurement time).
    pub hour: DateTime<Utc>,
    /// Network.
    pub asn: Option<u32>,
    /// Country.
    pub country: Option<String>,
    /// Verdict status.
    pub status: Status,
    /// Method, with `blocked`.
    pub method: Option<Method>,
    /// Measurements.
    pub measurements: u64,
    /// Distinct probes.
    pub probes: u64,
}

/// Probes seen per network (never a probe id or address).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProbeNetworkRow {
    /// Network.
    pub asn: Option<u32>,
    /// Country.
    pub country: Option<String>,
    /// Distinct probes that uploaded in the period.
    pub probes: u64,
    /// Measurements uploaded in the period.
    pub measurements: u64,
    /// Last upload, truncated to the hour.
    pub last_seen: DateTime<Utc>,
}

/// A network in an open shutdown.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenShutdown {
    /// The network.
    pub asn: u32,
    /// The country the shutdown was raised for, if known.
    pub country: Option<String>,
}

/// One pending webhook delivery.
#[derive(Clone, Debug)]
pub struct Notification {
    /// Outbox row id.
    pub id: i64,
    /// The event, as it is now.
    pub event: Event,
    /// What happened to it.
    pub transition: Transition,
    /// Destination.
    pub url: String,
    /// Failed attempts so far.
    pub attempts: u32,
}

/// A recently measured site on a network, with its latest measurement time.
#[derive(Clone, Debug, PartialEq)]
pub struct RecentSite {
    /// Site.
    pub domain: String,
    /// Network.
    pub asn: u32,
    /// Country claimed by the probes.
    pub country: Option<String>,
    /// Category.
    pub category: Option<String>,
    /// Latest `started_at`.
    pub latest: DateTime<Utc>,
}

/// A recently active network, with its latest measurement time.
#[derive(Clone, Debug, PartialEq)]
pub struct RecentNetwork {
    /// Network.
    pub asn: u32,
    /// Country claimed by the probes.
    pub country: Option<String>,
    /// Latest `started_at`.
    pub latest: DateTime<Utc>,
}

/// Position in the export's order, `(started_at, id)`: a page continues strictly after it, so
/// paging never repeats or skips a row and never gets stuck, however many rows share one
/// instant. Written `STARTED_AT,ID` (RFC 3339, UTC, full precision; the id as uploaded): the
/// `started_at` and `id` of the last row received, also buildable from a CSV page.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cursor {
    /// `started_at` of the last row.
    pub started_at: DateTime<Utc>,
    /// Id of the last row.
    pub id: Uuid,
}

impl Cursor {
    /// The cursor just after `m`.
    pub fn after(m: &MeasurementRecord) -> Cursor {
        Cursor {
            started_at: m.started_at,
            id: m.id,
        }
    }
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{},{}",
            self.started_at
                .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
            self.id
        )
    }
}

/// A cursor that is not `STARTED_AT,ID`: the text, for the client's error message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "cursor {0:?}: expected STARTED_AT,ID (RFC 3339 time and measurement id of the last row \
     received, as in next_cursor)"
)]
pub struct BadCursor(pub String);

impl std::str::FromStr for Cursor {
    type Err = BadCursor;

    fn from_str(s: &str) -> Result<Cursor, BadCursor> {
        let bad = || BadCursor(s.to_string());
        let (at, id) = s.split_once(',').ok_or_else(bad)?;
        Ok(Cursor {
            started_at: DateTime::parse_from_rfc3339(at.trim())
                .map_err(|_| bad())?
                .with_timezone(&Utc),
            id: id.trim().parse().map_err(|_| bad())?,
        })
    }
}

/// Everything the collector stores: one role trait per kind of data, so a reader sees which
/// part of the store a caller needs. Callers hold an `Arc<dyn Store>`.
#[async_trait]
pub trait Store:
    TokenStore + MeasurementStore + EventStore + OutboxStore + ReadModelStore + Send + Sync + 'static
{
    /// Cheap liveness check.
    async fn ping(&self) -> StoreResult<()>;
}

/// Invites and probes: who may upload, and which probes count in a quorum.
#[async_trait]
pub trait TokenStore: Send + Sync + 'static {
    /// Store an invite.
    async fn create_invite(&self, invite: &NewInvite) -> StoreResult<()>;

    /// Register a probe; with an invite, atomically consume one use of it. `false` when the
    /// invite is unknown, revoked, expired or used up (nothing is stored then).
    async fn register_probe(
        &self,
        probe: &NewProbe,
        invite_hash: Option<&str>,
        now: DateTime<Utc>,
    ) -> StoreResult<bool>;

    /// The probe id of a token hash, unless unknown or revoked. Checked on every request, so a
    /// revocation takes effect at once.
    async fn authenticate(&self, token_hash: &str) -> StoreResult<Option<String>>;

    /// Every invite and probe.
    async fn list_tokens(&self) -> StoreResult<Vec<TokenInfo>>;

    /// Revoke an invite or a probe by id; `false` when no such live id.
    async fn revoke(&self, id: &str, now: DateTime<Utc>) -> StoreResult<bool>;

    /// Of `probes`, those that count in the event quorum: not revoked, registered at or before
    /// `registered_by`, and with uploads in at least `min_hours` distinct hours of arrival
    /// (`probe_hours`). Fake probes made for an attack must first wait and upload like a
    /// volunteer's (see `docs/collector-api.md`, "Who counts").
    async fn established_probes(
        &self,
        probes: &[String],
        registered_by: DateTime<Utc>,
        min_hours: u32,
    ) -> StoreResult<std::collections::HashSet<String>>;
}

/// The measurements: written once per upload, read as series, history and export.
#[async_trait]
pub trait MeasurementStore: Send + Sync + 'static {
    /// Insert measurements in one transaction and mark the probe seen. Returns, per record,
    /// `true` when inserted and `false` when a record with that id already existed. Durable
    /// when it returns.
    async fn insert_measurements(
        &self,
        probe_id: &str,
        now: DateTime<Utc>,
        records: &[MeasurementRecord],
    ) -> StoreResult<Vec<bool>>;

    /// Measurements of one site on one network with `started_at > since`.
    async fn site_series(
        &self,
        domain: &str,
        asn: u32,
        since: DateTime<Utc>,
    ) -> StoreResult<Vec<Obs>>;

    /// [`MeasurementStore::site_series`] of many sites and networks in one read (a few, for thousands of
    /// keys): each key's measurements with `started_at > since`, in the same order; keys with
    /// none are absent. The evaluation of an upload reads all its keys' series at once.
    async fn site_series_many(
        &self,
        keys: &[(String, u32)],
        since: DateTime<Utc>,
    ) -> StoreResult<std::collections::HashMap<(String, u32), Vec<Obs>>>;

    /// Presence runs of the probes of one network with `started_at > since`.
    async fn network_presence(&self, asn: u32, since: DateTime<Utc>) -> StoreResult<Vec<Presence>>;

    /// As [`ReadModelStore::latest_groups`], but the latest verdict within `[since, until]`, computed
    /// from the measurements of the period: for status queries about the past only (its cost
    /// grows with the measurements in the period).
    async fn latest_groups_scan(&self, filter: &Filter) -> StoreResult<Vec<LatestGroup>>;

    /// Hourly counts for one site.
    async fn history(&self, domain: &str, filter: &Filter) -> StoreResult<Vec<HistoryRow>>;

    /// Raw measurements, oldest first.
    async fn measurements(&self, filter: &Filter) -> StoreResult<Vec<MeasurementRecord>>;

    /// The export: measurements matching `filter` (its `limit` ignored) strictly after `after`
    /// in `(started_at, id)` order, at most `limit`, sent one by one into `rows` as the database
    /// returns them (never all at once: memory stays bounded by the channel's capacity, whatever
    /// the records' size). Stops early, without error, when the receiver is dropped.
    async fn export_measurements(
        &self,
        filter: &Filter,
        after: Option<Cursor>,
        limit: u32,
        rows: tokio::sync::mpsc::Sender<MeasurementRecord>,
    ) -> StoreResult<()>;
}

/// Events and their notifications, each change settled inside the database.
#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// Per method, the open event and the latest decision time for a site (or, with `None`,
    /// the network itself) on a network.
    async fn event_states(
        &self,
        kind: EventKind,
        domain: Option<&str>,
        asn: u32,
    ) -> StoreResult<Vec<EventState>>;

    /// [`EventStore::event_states`] of the `new_block` events of many sites and networks in one
    /// read; keys without events are absent.
    async fn block_states_many(
        &self,
        keys: &[(String, u32)],
    ) -> StoreResult<std::collections::HashMap<(String, u32), Vec<EventState>>>;

    /// Open an event and queue its notifications, atomically. `None`, and nothing changed, when
    /// the key's latest decision time is no longer `event.floor` or an event is already open
    /// for the key: another writer got there first (the database arbitrates), re-evaluate.
    async fn open_event(
        &self,
        event: &NewEvent,
        webhook_urls: &[String],
    ) -> StoreResult<Option<Event>>;

    /// Close the open event of a key and queue its notifications, atomically. `None`, and
    /// nothing changed, when nothing was open or the key's latest decision time is no longer
    /// `close.floor`.
    async fn close_event(
        &self,
        close: &CloseEvent,
        webhook_urls: &[String],
    ) -> StoreResult<Option<Event>>;

    /// Of the `(domain, asn)` keys given, those the block rule could decide anything for: a
    /// blocking verdict with `started_at > since` (read model) or an open `new_block` event.
    /// One query per upload instead of two per key: most uploads touch only sites that are
    /// not blocked anywhere.
    async fn sites_with_block_activity(
        &self,
        keys: &[(String, u32)],
        since: DateTime<Utc>,
    ) -> StoreResult<std::collections::HashSet<(String, u32)>>;

    /// Remember the censor place agreed for a site on a network and, when it differs from the
    /// last one agreed while the site is blocked, raise a `block_moved` event (stored already
    /// ended: a moment) and queue its notifications, atomically. Decisions older than the one
    /// stored change nothing, so concurrent evaluations raise one event per change. Returns the
    /// event raised, if any.
    async fn record_censor_place(
        &self,
        decision: &PlaceDecision,
        webhook_urls: &[String],
    ) -> StoreResult<Option<Event>>;

    /// Events, newest first.
    async fn events(&self, filter: &Filter) -> StoreResult<Vec<Event>>;
}

/// The notification outbox the webhook deliverer drains.
#[async_trait]
pub trait OutboxStore: Send + Sync + 'static {
    /// Claim up to `limit` notifications due at `now`, oldest first: they are not due again
    /// before `lease_until`, so several collectors on one database do not deliver the same row
    /// (and a crash mid-delivery only delays it).
    async fn claim_notifications(
        &self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: u32,
    ) -> StoreResult<Vec<Notification>>;

    /// Mark a notification delivered.
    async fn notification_delivered(&self, id: i64, now: DateTime<Utc>) -> StoreResult<()>;

    /// Record a failed attempt: retry at `retry_at`, or abandon with `None`.
    async fn notification_failed(
        &self,
        id: i64,
        retry_at: Option<DateTime<Utc>>,
        error: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<()>;
}

/// The query side of the read model (`latest_verdicts`, `probe_hours`, `blocked_methods`),
/// kept current on ingest: reads whose cost follows the series, not the measurements.
#[async_trait]
pub trait ReadModelStore: Send + Sync + 'static {
    /// The networks in an open shutdown, and the country each was raised for. Reads only the
    /// open events (the partial unique index `events_one_open` holds exactly them): one row per
    /// network in shutdown, whatever the number of events or measurements.
    async fn open_shutdowns(&self) -> StoreResult<Vec<OpenShutdown>>;

    /// Sites measured on a network (ASN known) with a non-offline verdict with
    /// `started_at >= since` (read model).
    async fn recent_sites(&self, since: DateTime<Utc>) -> StoreResult<Vec<RecentSite>>;

    /// Networks with measurements with `started_at >= since` uploaded within the hour before
    /// `since` or later, and their latest time (read model).
    async fn recent_networks(&self, since: DateTime<Utc>) -> StoreResult<Vec<RecentNetwork>>;

    /// Each probe's latest verdict per site and network, from the read model (`latest_verdicts`,
    /// kept on ingest), where that verdict is at or after `filter.since`, grouped by status and
    /// method (offline verdicts excluded: they say nothing about a site). Filters on network,
    /// country, category and site apply to the latest verdict. `filter.until` is not applied:
    /// the read model knows only the present (see [`MeasurementStore::latest_groups_scan`] for the past).
    /// Reads one row per probe, site and network, whatever the number of measurements.
    async fn latest_groups(&self, filter: &Filter) -> StoreResult<Vec<LatestGroup>>;

    /// Located blocked probes per site, network and censor place, from the read model
    /// (`latest_verdicts`): each probe's latest verdict at or after `filter.since`, where it
    /// names a censor place, with the same filters as [`ReadModelStore::latest_groups`].
    async fn place_groups(&self, filter: &Filter) -> StoreResult<Vec<PlaceGroup>>;

    /// `(domain, asn, method)` seen blocked with `started_at >= since` (read model).
    async fn blocked_methods_seen(
        &self,
        since: DateTime<Utc>,
    ) -> StoreResult<Vec<(String, u32, Method)>>;

    /// Probes per network that uploaded (received time) in the filter's period, to the hour:
    /// read from the read model's hourly counts (`probe_hours`), so an upload counts when its
    /// hour overlaps the period.
    async fn probe_networks(&self, filter: &Filter) -> StoreResult<Vec<ProbeNetworkRow>>;

    /// The read model's rows that can count at or after `since` (`latest_verdicts` and
    /// `blocked_methods` by time, `probe_hours` by hour overlapping): what the in-memory copy
    /// behind `/metrics` ([`crate::readmodel::live`]) loads and merges. One row per probe × site
    /// × network, whatever the number of measurements.
    async fn read_model_rows(&self, since: DateTime<Utc>) -> StoreResult<ReadModelRows>;
}

/// One row of `latest_verdicts`: a probe's latest verdict on a site and network.
#[derive(Clone, Debug, PartialEq)]
pub struct LatestVerdictRow {
    /// Site key.
    pub domain: String,
    /// Network.
    pub asn: u32,
    /// The probe.
    pub probe_id: String,
    /// When the verdict's measurement started.
    pub started_at: DateTime<Utc>,
    /// The measurement's id (the tie-break of the monotonic upsert, compared as text).
    pub measurement_id: String,
    /// Verdict.
    pub status: Status,
    /// Method, with `blocked`.
    pub method: Option<Method>,
    /// Category.
    pub category: Option<String>,
    /// Country claimed.
    pub country: Option<String>,
    /// Where the verdict places the censor.
    pub censor: Option<CensorPlace>,
    /// The probe's consecutive latest verdicts naming that place.
    pub censor_run: u64,
}

/// One probe's latest hour of uploads on a network: what `probe_hours` says of "active".
#[derive(Clone, Debug, PartialEq)]
pub struct ProbeHourRow {
    /// Network, when claimed.
    pub asn: Option<u32>,
    /// Country, when claimed.
    pub country: Option<String>,
    /// The probe.
    pub probe_id: String,
    /// Start of its latest hour of arrival with an upload.
    pub hour: DateTime<Utc>,
}

/// The read model's rows within a window ([`ReadModelStore::read_model_rows`]).
#[derive(Clone, Debug, Default)]
pub struct ReadModelRows {
    /// `latest_verdicts`.
    pub latest: Vec<LatestVerdictRow>,
    /// `blocked_methods`: site, network, method, last seen.
    pub blocked: Vec<(String, u32, Method, DateTime<Utc>)>,
    /// `probe_hours`, reduced to each probe's latest hour per network.
    pub hours: Vec<ProbeHourRow>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_cursor_says_what_a_cursor_is() {
        let err = "yesterday".parse::<Cursor>().unwrap_err().to_string();
        assert_eq!(
            err,
            "cursor \"yesterday\": expected STARTED_AT,ID (RFC 3339 time and measurement id of \
             the last row received, as in next_cursor)"
        );
        let c: Cursor = "2026-12-07T23:00:00Z,00000000-0000-0000-0000-000000000001"
            .parse()
            .unwrap();
        assert_eq!(c.to_string().parse::<Cursor>().unwrap(), c);
    }
}
