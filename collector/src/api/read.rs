//! Read API for researchers: status, site history, events, probes per network, raw export.
//! JSON by default; CSV with `?format=csv` or `Accept: text/csv`.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, TimeDelta, Utc};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::mpsc;
use witness_core::model::{Method, Status};

use crate::error::ApiError;
use crate::model::EventKind;
use crate::readmodel;
use crate::state::AppState;
use crate::store::{Cursor, Event, Filter, MeasurementRecord, Store};

/// Largest `limit`.
pub const MAX_LIMIT: u32 = 10_000;

/// Longest `since`..`until` of a status or a site's history. A status in the past is computed
/// from every measurement of its span, and `limit` cuts the result only after: unbounded, 16
/// clients asking for a past year held every store connection (issue #20). With the read
/// slots ([`crate::readgate`]) and the store's `read_timeout`, this bounds what one request
/// costs; longer periods are asked for in parts.
pub const MAX_SPAN: TimeDelta = TimeDelta::days(31);

/// 400 when `[since, until]` is longer than [`MAX_SPAN`].
fn check_span(since: DateTime<Utc>, until: DateTime<Utc>) -> Result<(), ApiError> {
    if until - since > MAX_SPAN {
        return Err(ApiError::BadRequest(format!(
            "since..until spans more than {} days: ask for at most {} days at a time",
            MAX_SPAN.num_days(),
            MAX_SPAN.num_days()
        )));
    }
    Ok(())
}

/// The routes (the raw export `GET /api/v1/measurements` is mounted with the upload).
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/status", get(status))
        .route("/api/v1/sites/{domain}/history", get(history))
        .route("/api/v1/events", get(events))
        .route("/api/v1/probes", get(probes))
}

/// Query parameters shared by the read endpoints (each uses the ones that apply to it).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadQuery {
    /// Country code.
    pub country: Option<String>,
    /// Network.
    pub asn: Option<u32>,
    /// Category code.
    pub category: Option<String>,
    /// Site.
    pub domain: Option<String>,
    /// Lower time bound, RFC 3339.
    pub since: Option<DateTime<Utc>>,
    /// Upper time bound, RFC 3339.
    pub until: Option<DateTime<Utc>>,
    /// Most rows.
    pub limit: Option<u32>,
    /// `json` or `csv`.
    pub format: Option<String>,
    /// Events: `new_block` or `shutdown`.
    pub kind: Option<String>,
    /// Events: only open (`true`) or ended (`false`).
    pub open: Option<bool>,
    /// Measurements: verdict status.
    pub status: Option<String>,
    /// Measurements: continue after this `(started_at, id)` (the previous page's
    /// `next_cursor`).
    pub cursor: Option<String>,
}

/// The read query as axum extracts it: parsed, or why not (answered as 400 by [`query`]).
type QueryOrRejection = Result<Query<ReadQuery>, QueryRejection>;

fn query(q: QueryOrRejection) -> Result<ReadQuery, ApiError> {
    q.map(|Query(q)| q)
        .map_err(|e| ApiError::BadRequest(e.body_text()))
}

fn filter(q: &ReadQuery, default_limit: u32) -> Result<Filter, ApiError> {
    if let Some(c) = &q.country {
        if !(c.len() == 2 && c.bytes().all(|b| b.is_ascii_alphabetic())) {
            return Err(ApiError::BadRequest(
                "country must be a two-letter code".into(),
            ));
        }
    }
    if let (Some(s), Some(u)) = (q.since, q.until) {
        if s > u {
            return Err(ApiError::BadRequest("since is after until".into()));
        }
    }
    Ok(Filter {
        country: q.country.as_ref().map(|c| c.to_ascii_uppercase()),
        asn: q.asn,
        category: q.category.clone(),
        domain: q.domain.as_deref().map(crate::validate::site_key),
        since: q.since,
        until: q.until,
        kind: q
            .kind
            .as_deref()
            .map(str::parse::<EventKind>)
            .transpose()
            .map_err(|e| ApiError::BadRequest(format!("kind: {e}")))?,
        open: q.open,
        status: q
            .status
            .as_deref()
            .map(str::parse::<Status>)
            .transpose()
            .map_err(|e| ApiError::BadRequest(format!("status: {e}")))?,
        limit: q.limit.unwrap_or(default_limit).clamp(1, MAX_LIMIT),
    })
}

fn wants_csv(q: &ReadQuery, headers: &HeaderMap) -> Result<bool, ApiError> {
    match q.format.as_deref() {
        Some(f) if f.eq_ignore_ascii_case("csv") => Ok(true),
        Some(f) if f.eq_ignore_ascii_case("json") => Ok(false),
        Some(f) => Err(ApiError::BadRequest(format!(
            "format {f:?}: expected json or csv"
        ))),
        None => Ok(headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.to_ascii_lowercase().contains("text/csv"))),
    }
}

/// Rows as CSV with a header row; `header` (the rows' field names, in order) is written when
/// there is no row, so an empty export still says what its columns are. Every cell goes
/// through [`crate::csvsafe`]: probe-supplied strings never reach a spreadsheet as formulas.
fn csv_response<T: Serialize>(
    header: &[&str],
    rows: impl IntoIterator<Item = T>,
) -> Result<Response, ApiError> {
    let internal = |e: &dyn std::fmt::Display| ApiError::Internal(format!("csv: {e}"));
    let mut w = crate::csvsafe::SafeWriter::new(Vec::new());
    let mut any = false;
    for r in rows {
        w.serialize(r).map_err(|e| internal(&e))?;
        any = true;
    }
    let mut bytes = w.into_inner().map_err(|e| internal(&e))?;
    if !any {
        // Plain identifiers: nothing to quote or neutralise.
        bytes = format!("{}\n", header.join(",")).into_bytes();
    }
    Ok(([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], bytes).into_response())
}

/// Columns of `/status` CSV.
const STATUS_CSV: &[&str] = &[
    "domain",
    "asn",
    "country",
    "category",
    "status",
    "method",
    "probes",
    "blocked_probes",
    "accessible_probes",
    "blocked_share",
    "last_measured",
    "censor_hop",
    "censor_asn",
    "hop_agreeing",
];

/// Columns of `/sites/{domain}/history` CSV ([`crate::store::HistoryRow`]).
const HISTORY_CSV: &[&str] = &[
    "hour",
    "asn",
    "country",
    "status",
    "method",
    "measurements",
    "probes",
];

/// Columns of `/probes` CSV ([`crate::store::ProbeNetworkRow`]).
const PROBES_CSV: &[&str] = &["asn", "country", "probes", "measurements", "last_seen"];

/// Columns of `/events` CSV.
const EVENTS_CSV: &[&str] = &[
    "id",
    "kind",
    "domain",
    "asn",
    "country",
    "category",
    "method",
    "started_at",
    "ended_at",
    "probes",
    "probes_considered",
    "measurements",
    "share",
    "rule",
    "censor_hop",
    "censor_asn",
    "previous_censor_hop",
    "previous_censor_asn",
];

/// CSV row of `/status`.
#[derive(Serialize)]
struct StatusCsv<'a> {
    domain: &'a str,
    asn: u32,
    country: Option<&'a str>,
    category: Option<&'a str>,
    status: Status,
    method: Option<Method>,
    probes: u64,
    blocked_probes: u64,
    accessible_probes: u64,
    blocked_share: Option<f64>,
    last_measured: DateTime<Utc>,
    censor_hop: Option<u8>,
    censor_asn: Option<u32>,
    hop_agreeing: u64,
}

/// `GET /api/v1/status`: current state per site and network, over the aggregation window
/// (or `since`/`until`).
pub async fn status(
    State(state): State<AppState>,
    headers: HeaderMap,
    q: QueryOrRejection,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let mut f = filter(&q, 1000)?;
    // Every probe's latest verdict is the point here: do not pre-filter verdicts.
    f.status = None;
    let now = Utc::now();
    let until = f.until.unwrap_or(now);
    let since = f.since.unwrap_or(until - state.params.window);
    check_span(since, until)?;
    f.since = Some(since);
    f.until = Some(until);
    let mut sites = readmodel::site_statuses(state.store.as_ref(), &f, &state.params, now).await?;
    sites.truncate(f.limit as usize);
    if wants_csv(&q, &headers)? {
        return csv_response(
            STATUS_CSV,
            sites.iter().map(|s| StatusCsv {
                domain: &s.domain,
                asn: s.asn,
                country: s.country.as_deref(),
                category: s.category.as_deref(),
                status: s.status,
                method: s.method,
                probes: s.probes,
                blocked_probes: s.blocked_probes,
                accessible_probes: s.accessible_probes,
                blocked_share: s.blocked_share,
                last_measured: s.last_measured,
                censor_hop: s.censor_hop,
                censor_asn: s.censor_asn,
                hop_agreeing: s.hop_agreeing,
            }),
        );
    }
    Ok(Json(json!({ "since": since, "until": until, "sites": sites })).into_response())
}

/// `GET /api/v1/sites/{domain}/history`: hourly counts per network, status and method.
pub async fn history(
    State(state): State<AppState>,
    Path(domain): Path<String>,
    headers: HeaderMap,
    q: QueryOrRejection,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let mut f = filter(&q, 1000)?;
    if domain.len() > 253 {
        return Err(ApiError::BadRequest("domain too long".into()));
    }
    let domain = crate::validate::site_key(&domain);
    let until = f.until.unwrap_or_else(Utc::now);
    f.since = Some(f.since.unwrap_or(until - TimeDelta::days(7)));
    f.until = Some(until);
    if let Some(since) = f.since {
        check_span(since, until)?;
    }
    let rows = state.store.history(&domain, &f).await?;
    if wants_csv(&q, &headers)? {
        return csv_response(HISTORY_CSV, rows);
    }
    Ok(Json(json!({ "domain": domain, "history": rows })).into_response())
}

/// CSV row of `/events`.
#[derive(Serialize)]
struct EventCsv<'a> {
    id: &'a str,
    kind: EventKind,
    domain: Option<&'a str>,
    asn: u32,
    country: Option<&'a str>,
    category: Option<&'a str>,
    method: Option<Method>,
    started_at: DateTime<Utc>,
    ended_at: Option<DateTime<Utc>>,
    probes: usize,
    probes_considered: usize,
    measurements: u64,
    share: f64,
    rule: &'a str,
    /// `block_moved`: where the censor sits now, and where it sat before.
    censor_hop: Option<u8>,
    censor_asn: Option<u32>,
    previous_censor_hop: Option<u8>,
    previous_censor_asn: Option<u32>,
}

impl<'a> From<&'a Event> for EventCsv<'a> {
    fn from(e: &'a Event) -> Self {
        EventCsv {
            id: &e.id,
            kind: e.kind,
            domain: e.domain.as_deref(),
            asn: e.asn,
            country: e.country.as_deref(),
            category: e.category.as_deref(),
            method: e.method,
            started_at: e.started_at,
            ended_at: e.ended_at,
            probes: e.evidence.probes,
            probes_considered: e.evidence.probes_considered,
            measurements: e.evidence.measurements,
            share: e.evidence.share,
            rule: &e.evidence.rule,
            censor_hop: e.evidence.censor.map(|c| c.hop),
            censor_asn: e.evidence.censor.and_then(|c| c.asn),
            previous_censor_hop: e.evidence.previous_censor.map(|c| c.hop),
            previous_censor_asn: e.evidence.previous_censor.and_then(|c| c.asn),
        }
    }
}

/// `GET /api/v1/events`: events overlapping `[since, until]`, newest first.
pub async fn events(
    State(state): State<AppState>,
    headers: HeaderMap,
    q: QueryOrRejection,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let f = filter(&q, 100)?;
    let events = state.store.events(&f).await?;
    if wants_csv(&q, &headers)? {
        return csv_response(EVENTS_CSV, events.iter().map(EventCsv::from));
    }
    Ok(Json(json!({ "events": events })).into_response())
}

/// Fewer probes than this on a network are published as `null` ("one or two") by
/// `/api/v1/probes`: an exact 1 would tell a censor where one fake probe weighs most, and
/// point at a lone volunteer.
pub const PUBLIC_MIN_PROBES: u64 = 3;

/// A row of `/api/v1/probes`: [`crate::store::ProbeNetworkRow`] with the count coarsened.
#[derive(Serialize)]
struct PublicProbes {
    asn: Option<u32>,
    country: Option<String>,
    /// `null` below [`PUBLIC_MIN_PROBES`].
    probes: Option<u64>,
    measurements: u64,
    last_seen: DateTime<Utc>,
}

impl From<crate::store::ProbeNetworkRow> for PublicProbes {
    fn from(r: crate::store::ProbeNetworkRow) -> Self {
        PublicProbes {
            asn: r.asn,
            country: r.country,
            probes: (r.probes >= PUBLIC_MIN_PROBES).then_some(r.probes),
            measurements: r.measurements,
            last_seen: r.last_seen,
        }
    }
}

/// `GET /api/v1/probes`: probes per network that uploaded in the period (default: the
/// aggregation window), `null` when fewer than [`PUBLIC_MIN_PROBES`]. Never a probe id or an
/// address.
pub async fn probes(
    State(state): State<AppState>,
    headers: HeaderMap,
    q: QueryOrRejection,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let mut f = filter(&q, 1000)?;
    let until = f.until.unwrap_or_else(Utc::now);
    let since = f.since.unwrap_or(until - state.params.window);
    f.since = Some(since);
    f.until = Some(until);
    let rows: Vec<PublicProbes> = state
        .store
        .probe_networks(&f)
        .await?
        .into_iter()
        .map(PublicProbes::from)
        .collect();
    if wants_csv(&q, &headers)? {
        return csv_response(PROBES_CSV, rows);
    }
    Ok(Json(json!({ "since": since, "until": until, "networks": rows })).into_response())
}

/// CSV row of the raw export (the observations stay in the JSON export).
#[derive(Serialize)]
struct MeasurementCsv<'a> {
    id: String,
    started_at: DateTime<Utc>,
    domain: &'a str,
    url: &'a str,
    category: Option<&'a str>,
    asn: Option<u32>,
    country: Option<&'a str>,
    status: Status,
    method: Option<Method>,
    reason: &'a str,
    software_version: &'a str,
}

impl<'a> From<&'a MeasurementRecord> for MeasurementCsv<'a> {
    fn from(m: &'a MeasurementRecord) -> Self {
        MeasurementCsv {
            id: m.id.to_string(),
            started_at: m.started_at,
            domain: &m.domain,
            url: &m.url,
            category: m.category.as_deref(),
            asn: m.asn,
            country: m.country.as_deref(),
            status: m.status,
            method: m.method,
            reason: &m.reason,
            software_version: &m.software_version,
        }
    }
}

/// Most bytes of records in one export response (JSON bodies or CSV rows). A page stops
/// before the row that would pass it (but always holds at least one row, so paging never gets
/// stuck on a large record) and says where to continue.
pub const EXPORT_MAX_BYTES: usize = 8 << 20;

/// Bytes gathered before a chunk of the export is handed to the connection.
const EXPORT_CHUNK: usize = 64 << 10;

/// Records fetched ahead of the encoder (bounds the export's memory with the chunk size).
const EXPORT_ROWS_AHEAD: usize = 4;

/// How long a slow reader may stall the export before it is abandoned (the database
/// connection is released).
const EXPORT_STALL: std::time::Duration = std::time::Duration::from_secs(30);

/// `GET /api/v1/measurements`: raw records as uploaded, in `(started_at, id)` order, a page at
/// a time: at most `limit` records and [`EXPORT_MAX_BYTES`], continued with
/// `cursor=next_cursor`. Streamed as the database returns rows: memory stays bounded whatever
/// the size of the stored records.
pub async fn measurements(
    State(state): State<AppState>,
    headers: HeaderMap,
    q: QueryOrRejection,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let f = filter(&q, 100)?;
    let after = q
        .cursor
        .as_deref()
        .map(str::parse::<Cursor>)
        .transpose()
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    // `format=ooni`: OONI's data format, one measurement per line (docs/measurement-format.md).
    let format = if q
        .format
        .as_deref()
        .is_some_and(|f| f.eq_ignore_ascii_case("ooni"))
    {
        ExportFormat::Ooni
    } else if wants_csv(&q, &headers)? {
        ExportFormat::Csv
    } else {
        ExportFormat::Json
    };
    let (chunks_tx, mut chunks) = mpsc::channel::<Result<Bytes, String>>(1);
    tokio::spawn(export(
        state.store.clone(),
        f,
        after,
        format,
        EXPORT_MAX_BYTES,
        chunks_tx,
    ));
    // The first chunk (or the error before any) decides the status.
    let first = match chunks.recv().await {
        Some(Ok(b)) => b,
        Some(Err(e)) => return Err(ApiError::Internal(e)),
        None => return Err(ApiError::Internal("export ended without output".into())),
    };
    let rest = futures::stream::unfold(chunks, |mut rx| async move {
        rx.recv()
            .await
            .map(|c| (c.map_err(std::io::Error::other), rx))
    });
    let body = futures::stream::once(async move { Ok(first) }).chain(rest);
    let content_type = match format {
        ExportFormat::Csv => "text/csv; charset=utf-8",
        ExportFormat::Json => "application/json",
        ExportFormat::Ooni => "application/x-ndjson",
    };
    Ok((
        [(header::CONTENT_TYPE, content_type)],
        Body::from_stream(body),
    )
        .into_response())
}

/// Encodes one export page (`filter.limit` rows at most) into `out`: rows come from the store
/// through a small channel, bytes leave in chunks of about 64 KB; stops at `limit` rows or
/// `cap` bytes of records, whichever first, and then ends the JSON with `next_cursor`. An
/// error is sent as the last item (before any byte when it happens first).
pub async fn export(
    store: Arc<dyn Store>,
    f: Filter,
    after: Option<Cursor>,
    format: impl Into<ExportFormat>,
    cap: usize,
    out: mpsc::Sender<Result<Bytes, String>>,
) {
    let format = format.into();
    let csv = format == ExportFormat::Csv;
    let ooni = format == ExportFormat::Ooni;
    let limit = f.limit;
    let (rows_tx, mut rows) = mpsc::channel::<MeasurementRecord>(EXPORT_ROWS_AHEAD);
    // One row more than the page: if it comes, there is a next page.
    let reader = {
        let (store, f) = (store.clone(), f.clone());
        tokio::spawn(async move {
            store
                .export_measurements(&f, after, limit.saturating_add(1), rows_tx)
                .await
        })
    };
    let send = |chunk: Result<Bytes, String>| {
        let out = out.clone();
        async move {
            matches!(
                tokio::time::timeout(EXPORT_STALL, out.send(chunk)).await,
                Ok(Ok(()))
            )
        }
    };
    let mut buf: Vec<u8> = Vec::with_capacity(EXPORT_CHUNK);
    if csv {
        buf.extend_from_slice(MEASUREMENT_CSV_HEADER.as_bytes());
    } else if !ooni {
        buf.extend_from_slice(b"{\"measurements\":[");
    }
    let (mut n, mut bytes, mut last, mut more) = (0u32, 0usize, None::<Cursor>, false);
    let mut row_buf = Vec::new();
    while let Some(m) = rows.recv().await {
        if n >= limit {
            more = true;
            break;
        }
        row_buf.clear();
        if csv {
            if let Err(e) = write_csv_row(&mut row_buf, &m) {
                let _ = send(Err(e.to_string())).await;
                return;
            }
        } else if ooni {
            // The stored body was validated as a measurement at ingest.
            match serde_json::from_str::<witness_core::Measurement>(&m.body) {
                Ok(rec) => {
                    row_buf.extend_from_slice(witness_core::ooni::to_ooni_line(&rec).as_bytes());
                    row_buf.push(b'\n');
                }
                Err(e) => {
                    let _ = send(Err(format!("export: record {}: {e}", m.id))).await;
                    return;
                }
            }
        } else {
            if n > 0 {
                row_buf.push(b',');
            }
            row_buf.extend_from_slice(m.body.as_bytes());
        }
        if n > 0 && bytes + row_buf.len() > cap {
            more = true;
            break;
        }
        bytes += row_buf.len();
        buf.extend_from_slice(&row_buf);
        n += 1;
        last = Some(Cursor::after(&m));
        if buf.len() >= EXPORT_CHUNK && !send(Ok(Bytes::from(std::mem::take(&mut buf)))).await {
            // The client went away or stalled: stop reading (the store stops at its next row).
            return;
        }
    }
    // Stop the reader (a dropped receiver ends it), then learn how it ended.
    drop(rows);
    match reader.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) if !more => {
            let _ = send(Err(format!("export: {e}"))).await;
            return;
        }
        Ok(Err(_)) => {}
        Err(e) => {
            let _ = send(Err(format!("export task: {e}"))).await;
            return;
        }
    }
    let next = if more { last } else { None };
    if !csv && !ooni {
        let next = serde_json::to_string(&next.map(|c| c.to_string())).unwrap_or_default();
        buf.extend_from_slice(format!("],\"next_cursor\":{next}}}").as_bytes());
    }
    if !buf.is_empty() {
        let _ = send(Ok(Bytes::from(buf))).await;
    }
}

/// How an export page is encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportFormat {
    /// `{"measurements": [...], "next_cursor": ...}`.
    Json,
    /// CSV rows with a header.
    Csv,
    /// OONI measurements, one JSON object per line ([`witness_core::ooni`]); the next page
    /// continues after the last line's `x_witness` `started_at,id`.
    Ooni,
}

impl From<bool> for ExportFormat {
    /// The older `csv: bool` argument.
    fn from(csv: bool) -> Self {
        if csv {
            ExportFormat::Csv
        } else {
            ExportFormat::Json
        }
    }
}

/// The header line of the CSV export.
const MEASUREMENT_CSV_HEADER: &str =
    "id,started_at,domain,url,category,asn,country,status,method,reason,software_version\n";

/// One export row, its cells neutralised ([`crate::csvsafe`]).
fn write_csv_row(out: &mut Vec<u8>, m: &MeasurementRecord) -> Result<(), CsvRowError> {
    let mut w = crate::csvsafe::SafeWriter::rows_only(&mut *out);
    w.serialize(MeasurementCsv::from(m))?;
    w.into_inner()?;
    Ok(())
}

/// Why an export row could not be written (serializing it or flushing the writer); the stream
/// ends with its text.
#[derive(Debug, thiserror::Error)]
#[error("csv: {0}")]
struct CsvRowError(#[from] csv::Error);

#[cfg(test)]
mod csv_tests {
    use super::*;
    use crate::store::HistoryRow;

    /// The header row a serialized row gets, to keep the empty-export headers in step.
    fn header_of<T: Serialize>(row: T) -> Vec<String> {
        let mut w = csv::Writer::from_writer(Vec::new());
        w.serialize(row).unwrap();
        let text = String::from_utf8(w.into_inner().unwrap()).unwrap();
        let first = text.lines().next().unwrap().to_string();
        first.split(',').map(str::to_string).collect()
    }

    #[test]
    fn empty_csv_headers_match_the_rows() {
        let t = Utc::now();
        assert_eq!(
            header_of(StatusCsv {
                domain: "a.example",
                asn: 1,
                country: None,
                category: None,
                status: Status::Accessible,
                method: None,
                probes: 1,
                blocked_probes: 0,
                accessible_probes: 1,
                blocked_share: Some(0.0),
                last_measured: t,
                censor_hop: None,
                censor_asn: None,
                hop_agreeing: 0,
            }),
            STATUS_CSV
        );
        assert_eq!(
            header_of(HistoryRow {
                hour: t,
                asn: Some(1),
                country: None,
                status: Status::Accessible,
                method: None,
                measurements: 1,
                probes: 1,
            }),
            HISTORY_CSV
        );
        let e = Event {
            id: "e".into(),
            kind: EventKind::NewBlock,
            domain: None,
            asn: 1,
            country: None,
            category: None,
            method: None,
            started_at: t,
            ended_at: None,
            evidence: Default::default(),
            end_evidence: None,
        };
        assert_eq!(header_of(EventCsv::from(&e)), EVENTS_CSV);
        assert_eq!(
            header_of(crate::store::ProbeNetworkRow {
                asn: Some(1),
                country: None,
                probes: 1,
                measurements: 1,
                last_seen: t,
            }),
            PROBES_CSV
        );
        assert_eq!(
            header_of(MeasurementCsv {
                id: "x".into(),
                started_at: t,
                domain: "a.example",
                url: "https://a.example/",
                category: None,
                asn: None,
                country: None,
                status: Status::Accessible,
                method: None,
                reason: "",
                software_version: "",
            }),
            MEASUREMENT_CSV_HEADER
                .trim_end()
                .split(',')
                .collect::<Vec<_>>()
        );
    }
}
