//! Per-record validation of uploads: pure, so every rejection reason is table-tested.
//!
//! Each record of a batch is parsed on its own as a [`Measurement`], so one bad record does not
//! fail the batch. A rejection carries a reason from a small closed set (a metric label) and a
//! human-readable detail (returned to the probe, never logged with anything identifying).

use std::fmt;

use chrono::{DateTime, TimeDelta, Utc};
use serde::Deserialize;
use witness_core::model::{Measurement, Status, SCHEMA_VERSION};

/// Why a record was refused. Closed set: these names are the `reason` label of
/// `witness_records_rejected_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// Not a valid measurement (JSON or schema error).
    Malformed,
    /// `schema_version` is not the one this collector speaks.
    SchemaVersion,
    /// The record or one of its fields is too large.
    TooLarge,
    /// `started_at` is in the future beyond the allowed clock skew.
    Future,
    /// `started_at` is older than the accepted age.
    TooOld,
    /// Fields contradict each other (URL vs domain, verdict vs connectivity).
    Inconsistent,
    /// A field has an impossible value (country code, ASN, category).
    InvalidField,
}

impl RejectReason {
    /// Every reason, for pre-registering metric series.
    pub const ALL: &'static [RejectReason] = &[
        RejectReason::Malformed,
        RejectReason::SchemaVersion,
        RejectReason::TooLarge,
        RejectReason::Future,
        RejectReason::TooOld,
        RejectReason::Inconsistent,
        RejectReason::InvalidField,
    ];

    /// Stable name.
    pub fn as_str(&self) -> &'static str {
        match self {
            RejectReason::Malformed => "malformed",
            RejectReason::SchemaVersion => "schema_version",
            RejectReason::TooLarge => "too_large",
            RejectReason::Future => "future",
            RejectReason::TooOld => "too_old",
            RejectReason::Inconsistent => "inconsistent",
            RejectReason::InvalidField => "invalid_field",
        }
    }
}

/// A refused record: the reason and what exactly was wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// Closed-set reason.
    pub reason: RejectReason,
    /// Detail for the uploader.
    pub detail: String,
}

impl Rejection {
    fn new(reason: RejectReason, detail: impl Into<String>) -> Self {
        Rejection {
            reason,
            detail: detail.into(),
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.reason.as_str(), self.detail)
    }
}

/// Bounds applied to every record (from `[ingest]`).
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest record, JSON bytes.
    pub max_record_bytes: usize,
    /// Oldest accepted `started_at`, relative to now.
    pub max_age: TimeDelta,
    /// Largest accepted clock skew into the future.
    pub max_clock_skew: TimeDelta,
}

const MAX_URL: usize = 2048;
const MAX_DOMAIN: usize = 253;
const MAX_CATEGORY: usize = 32;
const MAX_SHORT: usize = 64;
const MAX_TEXT: usize = 4096;
const MAX_OBSERVATIONS: usize = 256;
const MAX_RUNTIME_MS: f64 = 86_400_000.0;

/// Parse one record, then validate it.
pub fn parse_record(
    raw: &str,
    limits: &Limits,
    now: DateTime<Utc>,
) -> Result<Measurement, Rejection> {
    if raw.len() > limits.max_record_bytes {
        return Err(Rejection::new(
            RejectReason::TooLarge,
            format!(
                "record is {} bytes, the limit is {}",
                raw.len(),
                limits.max_record_bytes
            ),
        ));
    }
    // A newer probe's record may not parse as this version's `Measurement` at all: look at its
    // version first so the probe is told the real reason.
    #[derive(Deserialize)]
    struct VersionOnly {
        schema_version: Option<serde_json::Value>,
    }
    if let Ok(VersionOnly {
        schema_version: Some(v),
    }) = serde_json::from_str::<VersionOnly>(raw)
    {
        if v.as_u64() != Some(u64::from(SCHEMA_VERSION)) {
            return Err(Rejection::new(
                RejectReason::SchemaVersion,
                format!(
                    "schema_version {v} is not supported; this collector speaks {SCHEMA_VERSION}"
                ),
            ));
        }
    }
    let m: Measurement = serde_json::from_str(raw)
        .map_err(|e| Rejection::new(RejectReason::Malformed, e.to_string()))?;
    validate(&m, limits, now)?;
    Ok(m)
}

/// The `id` of a record that did not parse, if it has a usable one (to label the rejection).
pub fn salvage_id(raw: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct IdOnly {
        id: Option<serde_json::Value>,
    }
    let v: IdOnly = serde_json::from_str(raw).ok()?;
    match v.id? {
        serde_json::Value::String(s) if s.len() <= MAX_SHORT => Some(s),
        _ => None,
    }
}

fn too_large(field: &str, len: usize, max: usize) -> Result<(), Rejection> {
    if len > max {
        Err(Rejection::new(
            RejectReason::TooLarge,
            format!("{field} has {len} elements or bytes, the limit is {max}"),
        ))
    } else {
        Ok(())
    }
}

/// Check a parsed measurement.
pub fn validate(m: &Measurement, limits: &Limits, now: DateTime<Utc>) -> Result<(), Rejection> {
    use RejectReason::*;
    if m.schema_version != SCHEMA_VERSION {
        return Err(Rejection::new(
            SchemaVersion,
            format!(
                "schema_version {} is not supported; this collector speaks {SCHEMA_VERSION}",
                m.schema_version
            ),
        ));
    }
    too_large("url", m.url.len(), MAX_URL)?;
    too_large("domain", m.domain.len(), MAX_DOMAIN)?;
    too_large("software.name", m.software.name.len(), MAX_SHORT)?;
    too_large("software.version", m.software.version.len(), MAX_SHORT)?;
    too_large("dns", m.dns.len(), MAX_OBSERVATIONS)?;
    too_large("tcp", m.tcp.len(), MAX_OBSERVATIONS)?;
    too_large("tls", m.tls.len(), MAX_OBSERVATIONS)?;
    too_large("http", m.http.len(), MAX_OBSERVATIONS)?;
    too_large(
        "verdict.evidence",
        m.verdict.evidence.len(),
        MAX_OBSERVATIONS,
    )?;
    too_large("verdict.reason", m.verdict.reason.len(), MAX_TEXT)?;
    too_large(
        "control_failure",
        m.control_failure.as_ref().map_or(0, String::len),
        MAX_TEXT,
    )?;

    if m.started_at > now + limits.max_clock_skew {
        return Err(Rejection::new(
            Future,
            format!(
                "started_at {} is in the future (allowed clock skew {}s)",
                m.started_at.to_rfc3339(),
                limits.max_clock_skew.num_seconds()
            ),
        ));
    }
    if m.started_at < now - limits.max_age {
        return Err(Rejection::new(
            TooOld,
            format!(
                "started_at {} is older than {} days",
                m.started_at.to_rfc3339(),
                limits.max_age.num_days()
            ),
        ));
    }
    if !(m.runtime_ms.is_finite() && (0.0..=MAX_RUNTIME_MS).contains(&m.runtime_ms)) {
        return Err(Rejection::new(
            InvalidField,
            "runtime_ms must be between 0 and one day",
        ));
    }
    if let Some(asn) = m.probe.asn {
        if asn == 0 {
            return Err(Rejection::new(InvalidField, "probe.asn 0 is reserved"));
        }
    }
    if let Some(cc) = &m.probe.country {
        if !(cc.len() == 2 && cc.bytes().all(|b| b.is_ascii_uppercase())) {
            return Err(Rejection::new(
                InvalidField,
                "probe.country must be an ISO 3166-1 alpha-2 code in capitals",
            ));
        }
    }
    if let Some(cat) = &m.category_code {
        let ok = !cat.is_empty()
            && cat.len() <= MAX_CATEGORY
            && cat
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !ok {
            return Err(Rejection::new(
                InvalidField,
                "category_code must be 1-32 letters, digits, '_' or '-'",
            ));
        }
    }

    let url = url::Url::parse(&m.url)
        .map_err(|e| Rejection::new(Inconsistent, format!("url does not parse: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(Rejection::new(
            Inconsistent,
            format!("url scheme {:?} is not http or https", url.scheme()),
        ));
    }
    let host = url
        .host_str()
        .map(|h| h.trim_start_matches('[').trim_end_matches(']'))
        .unwrap_or_default();
    let domain = m.domain.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || !host.eq_ignore_ascii_case(domain) {
        return Err(Rejection::new(
            Inconsistent,
            "domain does not match the url's host",
        ));
    }

    if m.verdict.method.is_some() && m.verdict.status != Status::Blocked {
        return Err(Rejection::new(
            Inconsistent,
            format!(
                "verdict.method is set but verdict.status is {}",
                m.verdict.status
            ),
        ));
    }
    if m.connectivity.offline && m.verdict.status != Status::Offline {
        return Err(Rejection::new(
            Inconsistent,
            format!(
                "connectivity.offline is true but verdict.status is {}",
                m.verdict.status
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use witness_core::model::{ConnectivitySummary, Method, ProbeNetwork, Software, Verdict};

    fn limits() -> Limits {
        Limits {
            max_record_bytes: 64 * 1024,
            max_age: TimeDelta::days(30),
            max_clock_skew: TimeDelta::minutes(10),
        }
    }

    fn good(now: DateTime<Utc>) -> Measurement {
        Measurement {
            schema_version: SCHEMA_VERSION,
            id: uuid::Uuid::new_v4(),
            software: Software::default(),
            url: "https://Example.ORG/path".into(),
            domain: "example.org".into(),
            category_code: Some("NEWS".into()),
            started_at: now - TimeDelta::minutes(5),
            runtime_ms: 1200.0,
            probe: ProbeNetwork {
                asn: Some(9198),
                country: Some("KZ".into()),
            },
            dns: vec![],
            tcp: vec![],
            tls: vec![],
            http: vec![],
            control: None,
            control_failure: None,
            connectivity: ConnectivitySummary::default(),
            verdict: Verdict::new(
                Status::Blocked,
                Some(Method::Tls),
                "timeout after ClientHello",
            ),
        }
    }

    #[test]
    fn rejection_table() {
        let now = Utc::now();
        type Edit = fn(&mut Measurement, DateTime<Utc>);
        let cases: &[(&str, Edit, Option<RejectReason>)] = &[
            ("good", |_, _| {}, None),
            (
                "schema",
                |m, _| m.schema_version = 99,
                Some(RejectReason::SchemaVersion),
            ),
            (
                "future",
                |m, n| m.started_at = n + TimeDelta::hours(1),
                Some(RejectReason::Future),
            ),
            (
                "skew ok",
                |m, n| m.started_at = n + TimeDelta::minutes(9),
                None,
            ),
            (
                "old",
                |m, n| m.started_at = n - TimeDelta::days(31),
                Some(RejectReason::TooOld),
            ),
            (
                "domain",
                |m, _| m.domain = "other.org".into(),
                Some(RejectReason::Inconsistent),
            ),
            (
                "scheme",
                |m, _| m.url = "ftp://example.org/".into(),
                Some(RejectReason::Inconsistent),
            ),
            (
                "bad url",
                |m, _| m.url = "not a url".into(),
                Some(RejectReason::Inconsistent),
            ),
            (
                "method without block",
                |m, _| m.verdict.status = Status::Accessible,
                Some(RejectReason::Inconsistent),
            ),
            (
                "offline run with a block",
                |m, _| m.connectivity.offline = true,
                Some(RejectReason::Inconsistent),
            ),
            (
                "country",
                |m, _| m.probe.country = Some("kz".into()),
                Some(RejectReason::InvalidField),
            ),
            (
                "asn 0",
                |m, _| m.probe.asn = Some(0),
                Some(RejectReason::InvalidField),
            ),
            (
                "category",
                |m, _| m.category_code = Some("a b".into()),
                Some(RejectReason::InvalidField),
            ),
            (
                "runtime",
                |m, _| m.runtime_ms = f64::NAN,
                Some(RejectReason::InvalidField),
            ),
            (
                "url size",
                |m, _| m.url = format!("https://example.org/{}", "a".repeat(3000)),
                Some(RejectReason::TooLarge),
            ),
            (
                "ipv6 literal",
                |m, _| {
                    m.url = "http://[2001:db8::1]/".into();
                    m.domain = "2001:db8::1".into();
                },
                None,
            ),
        ];
        for (name, edit, want) in cases {
            let mut m = good(now);
            edit(&mut m, now);
            let got = validate(&m, &limits(), now).err().map(|r| r.reason);
            assert_eq!(got, *want, "{name}");
        }
    }

    #[test]
    fn parse_reports_serde_errors_and_size() {
        let now = Utc::now();
        let l = limits();
        let err = parse_record(r#"{"id": "x"}"#, &l, now).unwrap_err();
        assert_eq!(err.reason, RejectReason::Malformed);
        assert!(err.to_string().starts_with("malformed: "), "{err}");
        let big = format!("{{\"pad\": \"{}\"}}", "a".repeat(70 * 1024));
        assert_eq!(
            parse_record(&big, &l, now).unwrap_err().reason,
            RejectReason::TooLarge
        );
        let ok = serde_json::to_string(&good(now)).unwrap();
        assert!(parse_record(&ok, &l, now).is_ok());
        assert_eq!(
            salvage_id(r#"{"id": "abc", "x": 1}"#).as_deref(),
            Some("abc")
        );
        assert_eq!(salvage_id("[1]"), None);
    }
}
