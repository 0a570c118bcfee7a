//! The ingest use case: store a batch of uploaded records.
//!
//! Each record is validated on its own (one bad record does not fail the batch), mapped to the
//! store's row, and the good ones are committed in one transaction; then the read model and
//! the event rule see what was new. The HTTP handler ([`crate::api::ingest`]) only
//! authenticates, limits and decodes the body before calling [`store_batch`], and the
//! benchmark maps its records with [`to_record`], so both store what an upload stores.

use std::collections::HashSet;
use std::net::IpAddr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use uuid::Uuid;
use witness_core::model::Measurement;
use witness_core::scrub::Needles;

use crate::asn::AsnDb;
use crate::events::Touched;
use crate::state::AppState;
use crate::store::{MeasurementRecord, StoreError};
use crate::validate;

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

/// What became of a batch.
#[derive(Debug, Default)]
pub struct Stored {
    /// Stored now.
    pub accepted: Vec<Uuid>,
    /// Already stored before (or twice in this batch).
    pub duplicates: Vec<Uuid>,
    /// Refused, with reasons.
    pub rejected: Vec<Rejected>,
}

/// The store's row for a valid measurement `m` whose uploaded text is `body`, received `now`:
/// the site key, the censor's hop and, with an ASN table, the censor's network.
pub fn to_record(
    m: Measurement,
    body: &str,
    now: DateTime<Utc>,
    asn: Option<&AsnDb>,
) -> MeasurementRecord {
    let censor_hop = m.path.as_ref().and_then(|p| p.censor_hop);
    let censor_asn = m.path.as_ref().and_then(|p| crate::asn::censor_asn(p, asn));
    MeasurementRecord {
        id: m.id,
        received_at: now,
        started_at: m.started_at,
        // An app's series are keyed `app:NAME`: never a hostname, so no website record can
        // land in an app's series (or the other way round).
        domain: match &m.app {
            Some(_) => m.url.clone(),
            None => crate::validate::site_key(&m.domain),
        },
        url: m.url,
        category: m.category_code,
        asn: m.probe.asn,
        country: m.probe.country,
        status: m.verdict.status,
        method: m.verdict.method,
        reason: m.verdict.reason,
        software_version: m.software.version,
        body: body.to_string(),
        censor_hop,
        censor_asn,
    }
}

/// Validate, map and store the records of one upload from `probe_id`, received `now`.
/// `from` is the address the upload came from: a record holding it in any encoding is refused
/// ([`refuse_own_address`]); it is neither stored nor logged. Durable once this returns; new
/// records are counted and evaluated (an evaluation failure is logged: the periodic sweep
/// evaluates the data again).
pub async fn store_batch(
    state: &AppState,
    probe_id: &str,
    measurements: &[Box<RawValue>],
    from: Option<IpAddr>,
    now: DateTime<Utc>,
) -> Result<Stored, StoreError> {
    let mut rejected = Vec::new();
    let mut records = Vec::with_capacity(measurements.len());
    let mut duplicates = Vec::new();
    let mut seen = HashSet::new();
    let needles = uploader_needles(from);
    for (index, raw) in measurements.iter().enumerate() {
        let parsed = validate::parse_record(raw.get(), &state.limits, now)
            .and_then(|m| refuse_own_address(m, raw.get(), needles.as_ref()));
        match parsed {
            Ok(m) => {
                if seen.insert(m.id) {
                    records.push(to_record(m, raw.get(), now, state.asn.as_deref()));
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
        .insert_measurements(probe_id, now, &records)
        .await?;
    // The state gauges' in-memory read model takes the same records the store's took.
    state.metrics.stored(
        probe_id,
        records
            .iter()
            .zip(&inserted)
            .filter(|(_, fresh)| **fresh)
            .map(|(r, _)| r),
    );
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
    Ok(Stored {
        accepted,
        duplicates,
        rejected,
    })
}

/// The searches for the uploader's address, in every encoding. None for a loopback or
/// unspecified peer: that is a proxy or the collector's own host, and identifies nobody.
fn uploader_needles(from: Option<IpAddr>) -> Option<Needles> {
    from.filter(|a| !a.is_loopback() && !a.is_unspecified())
        .map(|a| Needles::new([a]))
}

/// The second line of defence: a record that holds the address it was uploaded from, in any
/// encoding, is refused, not redacted. Redacting would store a record the probe failed to
/// clean (other identifying text may sit next to the match), and a refusal tells the probe,
/// which keeps the record aside locally, on the volunteer's own machine. The reason names no
/// address.
fn refuse_own_address(
    m: Measurement,
    raw: &str,
    needles: Option<&Needles>,
) -> Result<Measurement, validate::Rejection> {
    match needles {
        Some(n) if n.found_in(raw) => Err(validate::Rejection {
            reason: validate::RejectReason::ProbeAddress,
            detail: "the record holds the address it was uploaded from (in some encoding); \
                     the probe must scrub its own address: update witness. Not stored"
                .into(),
        }),
        _ => Ok(m),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_uploaders_address_is_found_in_raw_json_in_any_encoding() {
        assert!(uploader_needles(Some("127.0.0.1".parse().unwrap())).is_none());
        assert!(uploader_needles(None).is_none());
        let n = uploader_needles(Some("198.51.100.77".parse().unwrap())).unwrap();
        for raw in [
            r#"{"cnames":["77.100.51.198.in-addr.arpa."]}"#,
            r#"{"title":"198\u002e51\u002e100\u002e77"}"#,
            r#"{"headers":[["x-198-51-100-77","1"]]}"#,
            r#"{"location":"/?ip=%31%39%38%2e%35%31%2e%31%30%30%2e%37%37"}"#,
            r#"{"evidence":["0xc633644d"]}"#,
        ] {
            assert!(n.found_in(raw), "{raw}");
        }
        assert!(!n.found_in(r#"{"answers":["198.51.100.78"],"ttl":60}"#));
    }
}
