//! `POST /api/v1/measurements`: batch upload.
//!
//! The HTTP side only: token, rate limit, headers, the bounded body and its parse. Storing the
//! records is [`crate::ingest`]: each is validated on its own, so one bad record does not fail
//! the batch, and good records are committed in one transaction before the answer is sent; the
//! probe then deletes `accepted` and `duplicates` from its spool. Uploads are idempotent by
//! record id.

use std::borrow::Cow;
use std::cell::Cell;
use std::fmt;
use std::io::Read;
use std::net::{IpAddr, SocketAddr};

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap};
use axum::Extension;
use axum::Json;
use chrono::Utc;
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;
use uuid::Uuid;

use super::{authenticate, require_json};
use crate::error::ApiError;
use crate::ingest;
pub use crate::ingest::Rejected;
use crate::state::AppState;

/// Why a batch could not be read.
#[derive(Debug, PartialEq, Eq)]
pub enum BatchError {
    /// More than `max` records: refused at record `max + 1`, before the rest is even parsed.
    TooMany(usize),
    /// Not `{"measurements": [...]}` (serde_json's message).
    Invalid(String),
}

/// Parse the upload body `{"measurements": [...]}`, keeping each record raw (they are parsed
/// one by one, so one bad record does not fail the batch). The count is checked while
/// parsing: millions of tiny elements cost at most `max + 1` of them, not a vector of
/// millions.
pub fn parse_batch(body: &[u8], max: usize) -> Result<Vec<Box<RawValue>>, BatchError> {
    parse_batch_from(&mut serde_json::Deserializer::from_slice(body), max)
}

/// Like [`parse_batch`], over a gzip body inflated on the fly: at most `cap` bytes are
/// inflated (413 beyond), and only the records kept are held, never the inflated body. An
/// 8 KiB gzip that inflates to four million array elements costs `max + 1` of them.
pub fn parse_gzip_batch(gz: &[u8], cap: usize, max: usize) -> Result<Vec<Box<RawValue>>, ApiError> {
    let over = Cell::new(false);
    let reader = Capped {
        inner: flate2::read::MultiGzDecoder::new(gz),
        left: cap,
        over: &over,
    };
    let parsed = parse_batch_from(
        &mut serde_json::Deserializer::from_reader(std::io::BufReader::new(reader)),
        max,
    );
    if over.get() {
        return Err(ApiError::PayloadTooLarge(format!(
            "decompressed body exceeds {cap} bytes"
        )));
    }
    parsed.map_err(batch_error)
}

/// The API error of a batch that could not be read.
pub fn batch_error(e: BatchError) -> ApiError {
    match e {
        BatchError::TooMany(max) => ApiError::PayloadTooLarge(format!(
            "more than {max} records in one upload; the limit is {max}"
        )),
        BatchError::Invalid(e) => ApiError::BadRequest(format!("invalid upload body: {e}")),
    }
}

/// A reader that fails once more than `left` bytes have been read through it.
struct Capped<'a, R> {
    inner: R,
    left: usize,
    over: &'a Cell<bool>,
}

impl<R: Read> Read for Capped<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n > self.left {
            self.over.set(true);
            return Err(std::io::Error::other("decompressed body over the cap"));
        }
        self.left -= n;
        Ok(n)
    }
}

fn parse_batch_from<'de, R: serde_json::de::Read<'de>>(
    de: &mut serde_json::Deserializer<R>,
    max: usize,
) -> Result<Vec<Box<RawValue>>, BatchError> {
    let too_many = Cell::new(false);
    let parsed = BatchSeed {
        max,
        too_many: &too_many,
    }
    .deserialize(&mut *de)
    .and_then(|records| de.end().map(|()| records));
    parsed.map_err(|e| {
        if too_many.get() {
            BatchError::TooMany(max)
        } else {
            BatchError::Invalid(e.to_string())
        }
    })
}

struct BatchSeed<'a> {
    max: usize,
    too_many: &'a Cell<bool>,
}

impl<'de> DeserializeSeed<'de> for BatchSeed<'_> {
    type Value = Vec<Box<RawValue>>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for BatchSeed<'_> {
    type Value = Vec<Box<RawValue>>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object {\"measurements\": [...]}")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut records = None;
        while let Some(key) = map.next_key::<Cow<str>>()? {
            if key != "measurements" {
                return Err(de::Error::unknown_field(&key, &["measurements"]));
            }
            if records.is_some() {
                return Err(de::Error::duplicate_field("measurements"));
            }
            records = Some(map.next_value_seed(RecordsSeed {
                max: self.max,
                too_many: self.too_many,
            })?);
        }
        records.ok_or_else(|| de::Error::missing_field("measurements"))
    }
}

struct RecordsSeed<'a> {
    max: usize,
    too_many: &'a Cell<bool>,
}

impl<'de> DeserializeSeed<'de> for RecordsSeed<'_> {
    type Value = Vec<Box<RawValue>>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for RecordsSeed<'_> {
    type Value = Vec<Box<RawValue>>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of measurement records")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(self.max));
        while let Some(record) = seq.next_element::<Box<RawValue>>()? {
            if out.len() == self.max {
                self.too_many.set(true);
                return Err(de::Error::custom("too many records"));
            }
            out.push(record);
        }
        Ok(out)
    }
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
    /// The address the upload came from, as the control reports it: a probe that does not
    /// know its public address (its control did not answer) learns it here before it releases
    /// the records it held back (see `docs/security.md`). Never stored, never logged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub your_address: Option<IpAddr>,
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

/// Handle an upload: authenticate, limit and decode; [`ingest::store_batch`] does the rest.
pub async fn upload(
    State(state): State<AppState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<UploadResponse>, ApiError> {
    let _timer = state.metrics.ingest_duration.start_timer();
    // Token, rate limit and headers first: nothing of the body is read for a client that
    // could not upload anyway.
    let probe_id = authenticate(&state, &headers).await?;
    state
        .upload_limiter
        .check(&probe_id)
        .map_err(ApiError::RateLimited)?;
    require_json(&headers)?;
    let gzip = is_gzip(&headers)?;
    let server = &state.config.server;
    let body = crate::body::read(
        body,
        &headers,
        server.max_body_bytes,
        server.body_read_timeout.0,
    )
    .await?;
    let max = state.config.ingest.max_batch;
    let measurements = if gzip {
        parse_gzip_batch(&body, server.max_body_bytes, max)?
    } else {
        parse_batch(&body, max).map_err(batch_error)?
    };
    drop(body);

    let from = super::client_address(&state, &headers, peer.map(|Extension(ConnectInfo(a))| a));
    let ingest::Stored {
        accepted,
        duplicates,
        rejected,
    } = ingest::store_batch(&state, &probe_id, &measurements, from, Utc::now()).await?;
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
        your_address: from,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::write::GzEncoder;
    use std::io::Write;

    #[test]
    fn batch_parse_is_bounded_and_strict() {
        let ok = parse_batch(br#"{"measurements": [{"a": 1}, 2]}"#, 2).unwrap();
        assert_eq!(ok.len(), 2);
        assert_eq!(ok[0].get(), r#"{"a": 1}"#);
        assert_eq!(
            parse_batch(br#"{"measurements": [1, 2, 3]}"#, 2).err(),
            Some(BatchError::TooMany(2))
        );
        // Four million elements are refused after the third.
        let mut huge = String::from(r#"{"measurements": ["#);
        huge.push_str(&"0,".repeat(4_000_000));
        huge.push_str("0]}");
        assert_eq!(
            parse_batch(huge.as_bytes(), 2).err(),
            Some(BatchError::TooMany(2))
        );
        for bad in [
            &br#"{"measurements": [], "x": 1}"#[..],
            br#"{}"#,
            br#"{"measurements": [], "measurements": []}"#,
            br#"[]"#,
            br#"{"measurements": []} trailing"#,
        ] {
            assert!(
                matches!(parse_batch(bad, 10), Err(BatchError::Invalid(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn gzip_batches_are_capped_and_counted_while_inflating() {
        let gz = |text: &[u8]| {
            let mut enc = GzEncoder::new(Vec::new(), flate2::Compression::best());
            enc.write_all(text).unwrap();
            enc.finish().unwrap()
        };
        let ok = parse_gzip_batch(&gz(br#"{"measurements": [1, {"b": 2}]}"#), 1000, 5).unwrap();
        assert_eq!(ok.len(), 2);
        assert_eq!(ok[1].get(), r#"{"b": 2}"#);
        let mut huge = String::from(r#"{"measurements": ["#);
        huge.push_str(&"0,".repeat(4_000_000));
        huge.push_str("0]}");
        let bomb = gz(huge.as_bytes());
        assert!(bomb.len() < 16 * 1024, "{}", bomb.len());
        assert!(matches!(
            parse_gzip_batch(&bomb, 8 << 20, 1000),
            Err(ApiError::PayloadTooLarge(m)) if m.contains("records")
        ));
        assert!(matches!(
            parse_gzip_batch(&bomb, 1 << 20, 10_000_000),
            Err(ApiError::PayloadTooLarge(m)) if m.contains("decompressed")
        ));
        assert!(matches!(
            parse_gzip_batch(b"not gzip", 1000, 5),
            Err(ApiError::BadRequest(_))
        ));
    }

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
