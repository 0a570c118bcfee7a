//! `POST /api/v1/measurements`: batch upload.
//!
//! Each record is parsed and validated on its own, so one bad record does not fail the batch.
//! Good records are committed in one transaction before the answer is sent; the probe then
//! deletes `accepted` and `duplicates` from its spool. Uploads are idempotent by record id.

use std::borrow::Cow;
use std::collections::HashSet;
use std::io::Read;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::Json;
use chrono::Utc;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use uuid::Uuid;
use witness_core::model::Measurement;

use super::{authenticate, body_rejection, require_json};
use crate::app::AppState;
use crate::error::ApiError;
use crate::events::Touched;
use crate::store::MeasurementRecord;
use crate::validate;

/// The upload body: records are kept raw and parsed one by one.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Batch {
    measurements: Vec<Box<RawValue>>,
}

/// One refused record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rejected {
    /// Position in the uploaded array.
    pub index: usize,
    /// The record's id, when it had a readable one.
    pub id: Option<String>,
    /// `reason: detail`, the reason from a closed set.
    pub reason: String,
}

/// The answer to an upload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UploadResponse {
    /// Stored now.
    pub accepted: Vec<Uuid>,
    /// Already stored before (or twice in this batch).
    pub duplicates: Vec<Uuid>,
    /// Refused, with reasons.
    pub rejected: Vec<Rejected>,
}

/// Decompress gzip, refusing output larger than `cap` (zip bombs) with 413.
pub fn gunzip(data: &[u8], cap: usize) -> Result<Vec<u8>, ApiError> {
    let mut out = Vec::new();
    let limit = u64::try_from(cap).unwrap_or(u64::MAX).saturating_add(1);
    flate2::read::MultiGzDecoder::new(data)
        .take(limit)
        .read_to_end(&mut out)
        .map_err(|e| ApiError::BadRequest(format!("invalid gzip body: {e}")))?;
    if out.len() > cap {
        return Err(ApiError::PayloadTooLarge(format!(
            "decompressed body exceeds {cap} bytes"
        )));
    }
    Ok(out)
}

fn is_gzip(headers: &HeaderMap) -> Result<bool, ApiError> {
    let Some(v) = headers.get(header::CONTENT_ENCODING) else {
        return Ok(false);
    };
    let v = v.to_str().unwrap_or("").trim();
    if v.eq_ignore_ascii_case("gzip") || v.eq_ignore_ascii_case("x-gzip") {
        Ok(true)
    } else if v.is_empty() || v.eq_ignore_ascii_case("identity") {
        Ok(false)
    } else {
        Err(ApiError::UnsupportedMediaType(format!(
            "Content-Encoding {v:?} is not supported: use gzip or none"
        )))
    }
}

fn record(m: Measurement, body: &str, now: chrono::DateTime<Utc>) -> MeasurementRecord {
    MeasurementRecord {
        id: m.id,
        received_at: now,
        started_at: m.started_at,
        domain: m.domain.to_ascii_lowercase(),
        url: m.url,
        category: m.category_code,
        asn: m.probe.asn,
        country: m.probe.country,
        status: m.verdict.status,
        method: m.verdict.method,
        reason: m.verdict.reason,
        software_version: m.software.version,
        body: body.to_string(),
    }
}

/// Handle an upload.
pub async fn upload(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<UploadResponse>, ApiError> {
    let _timer = state.metrics.ingest_duration.start_timer();
    let probe_id = authenticate(&state, &headers).await?;
    state
        .upload_limiter
        .check(&probe_id)
        .map_err(ApiError::RateLimited)?;
    require_json(&headers)?;
    let gzip = is_gzip(&headers)?;
    let body = body.map_err(body_rejection)?;
    let raw: Cow<[u8]> = if gzip {
        Cow::Owned(gunzip(&body, state.config.server.max_body_bytes)?)
    } else {
        Cow::Borrowed(&body)
    };
    let batch: Batch = serde_json::from_slice(&raw)
        .map_err(|e| ApiError::BadRequest(format!("invalid upload body: {e}")))?;
    let max = state.config.ingest.max_batch;
    if batch.measurements.len() > max {
        return Err(ApiError::PayloadTooLarge(format!(
            "{} records in one upload; the limit is {max}",
            batch.measurements.len()
        )));
    }

    let now = Utc::now();
    let mut rejected = Vec::new();
    let mut records = Vec::with_capacity(batch.measurements.len());
    let mut duplicates = Vec::new();
    let mut seen = HashSet::new();
    for (index, raw) in batch.measurements.iter().enumerate() {
        match validate::parse_record(raw.get(), &state.limits, now) {
            Ok(m) => {
                if seen.insert(m.id) {
                    records.push(record(m, raw.get(), now));
                } else {
                    duplicates.push(m.id);
                }
            }
            Err(r) => {
                state.metrics.record_rejected(r.reason);
                rejected.push(Rejected {
                    index,
                    id: validate::salvage_id(raw.get()),
                    reason: r.to_string(),
                });
            }
        }
    }

    // Durable once this returns: only then is anything acknowledged.
    let inserted = state
        .store
        .insert_measurements(&probe_id, now, &records)
        .await?;
    let mut accepted = Vec::new();
    let mut touched = Touched::default();
    for (r, fresh) in records.iter().zip(inserted) {
        if fresh {
            accepted.push(r.id);
            state
                .metrics
                .measurement_received(r.status, r.method, r.asn, r.country.as_deref());
            touched.add(r);
        } else {
            duplicates.push(r.id);
        }
    }
    if !touched.is_empty() {
        if let Err(e) = state.evaluator.evaluate(&touched).await {
            // The data is committed; the periodic sweep evaluates it again.
            tracing::error!(error = %e, "event evaluation failed");
        }
    }
    tracing::debug!(
        accepted = accepted.len(),
        duplicates = duplicates.len(),
        rejected = rejected.len(),
        "upload"
    );
    Ok(Json(UploadResponse {
        accepted,
        duplicates,
        rejected,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::write::GzEncoder;
    use std::io::Write;

    #[test]
    fn gunzip_caps_output() {
        let mut enc = GzEncoder::new(Vec::new(), flate2::Compression::best());
        enc.write_all(&vec![0u8; 1 << 20]).unwrap();
        let bomb = enc.finish().unwrap();
        assert!(bomb.len() < 10_000);
        assert!(matches!(
            gunzip(&bomb, 1000),
            Err(ApiError::PayloadTooLarge(_))
        ));
        assert_eq!(gunzip(&bomb, 1 << 20).unwrap().len(), 1 << 20);
        assert!(matches!(
            gunzip(b"nope", 1000),
            Err(ApiError::BadRequest(_))
        ));
    }
}
