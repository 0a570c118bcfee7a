//! Synthetic measurements for suites that feed the collector: a record with nothing observed
//! but its verdict, as the collector's ingest, aggregation and events see it. One builder, so a
//! new field of [`Measurement`] is filled in once for every suite.

use chrono::{DateTime, Utc};
use witness_core::model::{
    ConnectivitySummary, Measurement, Method, ProbeNetwork, Software, Status, Verdict,
    SCHEMA_VERSION,
};

/// A measurement of `https://{domain}/` (category `NEWS`) started at `at` by a probe on `asn`
/// in Kazakhstan, with no observations and the verdict `status`/`method` (an `offline` one
/// with the connectivity check saying so, as the probe records it). Set the fields a test
/// cares about on the result.
pub fn measurement(
    domain: &str,
    asn: u32,
    status: Status,
    method: Option<Method>,
    at: DateTime<Utc>,
) -> Measurement {
    Measurement {
        schema_version: SCHEMA_VERSION,
        id: uuid::Uuid::now_v7(),
        software: Software::default(),
        url: format!("https://{domain}/"),
        domain: domain.to_string(),
        category_code: Some("NEWS".into()),
        started_at: at,
        runtime_ms: 500.0,
        probe: ProbeNetwork {
            asn: Some(asn),
            country: Some("KZ".into()),
        },
        dns: vec![],
        tcp: vec![],
        tls: vec![],
        http: vec![],
        control: None,
        control_failure: None,
        path: None,
        ab: vec![],
        app: None,
        connectivity: ConnectivitySummary {
            offline: status == Status::Offline,
            ..ConnectivitySummary::default()
        },
        verdict: Verdict::new(status, method, "synthetic verdict"),
    }
}
