//! The read model's write rules: what one batch of newly stored measurements changes in
//! `latest_verdicts`, `blocked_methods` and `probe_hours`, reduced to one row per key. Pure (no
//! I/O): the store computes the delta with [`ReadModelDelta::of`] inside the transaction that
//! inserts the batch, and each database applies it with its own monotonic upserts
//! (`store/sqlite.rs`, `store/postgres.rs`).

use std::collections::BTreeMap;

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use witness_core::model::{Method, Status};

use crate::store::MeasurementRecord;

/// Start of the UTC hour of `t`.
pub(crate) fn hour_of(t: DateTime<Utc>) -> DateTime<Utc> {
    t.duration_trunc(TimeDelta::hours(1)).unwrap_or(t)
}

/// One row of `probe_hours` to add to.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct HourDelta {
    /// Start of the hour of arrival.
    pub hour: DateTime<Utc>,
    /// Network, `-1` when not claimed.
    pub asn: i64,
    /// Country, `""` when not claimed.
    pub country: String,
    /// Measurements to add.
    pub measurements: i64,
    /// Latest arrival.
    pub last_received_at: DateTime<Utc>,
    /// Latest `started_at`.
    pub last_started_at: DateTime<Utc>,
}

/// The newest non-offline record of a batch for one `(domain, asn)`, with what the batch says
/// of the run of verdicts naming the censor's place (`latest_verdicts.censor_run`).
#[derive(Debug)]
pub(crate) struct LatestDelta<'a> {
    /// The record.
    pub record: &'a MeasurementRecord,
    /// The batch's trailing records for this key (by time) that name the same censor place as
    /// `record`; 0 when `record` names none.
    pub run: i64,
    /// Whether that run is every record of the batch for this key (or empty): only then does it
    /// continue the run already stored, when the stored verdict names the same place.
    pub continues: bool,
}

impl LatestDelta<'_> {
    /// The censor's hop as stored.
    pub fn censor_hop(&self) -> Option<i64> {
        self.record.censor_hop.map(i64::from)
    }

    /// The censor's ASN as stored.
    pub fn censor_asn(&self) -> Option<i64> {
        self.record.censor_asn.map(i64::from)
    }
}

/// What the new records of one batch (all from one probe) change in the read model, reduced to
/// one row per key in key order, so each store writes every row once and concurrent batches
/// lock rows in the same order. Both stores apply it with monotonic upserts.
#[derive(Debug, Default)]
pub(crate) struct ReadModelDelta<'a> {
    /// Per `(domain, asn)`: the newest non-offline record of the batch.
    pub latest: Vec<LatestDelta<'a>>,
    /// Per `(domain, asn, method)` seen blocked: the latest `started_at`.
    pub blocked: Vec<(&'a str, u32, Method, DateTime<Utc>)>,
    /// Per hour of arrival, network and country.
    pub hours: Vec<HourDelta>,
}

impl<'a> ReadModelDelta<'a> {
    /// The delta of the newly stored `records`.
    pub fn of(records: impl IntoIterator<Item = &'a MeasurementRecord>) -> Self {
        let mut latest: BTreeMap<(&str, u32), Vec<&MeasurementRecord>> = BTreeMap::new();
        let mut blocked: BTreeMap<(&str, u32, Method), DateTime<Utc>> = BTreeMap::new();
        let mut hours: BTreeMap<(DateTime<Utc>, i64, &str), HourDelta> = BTreeMap::new();
        for r in records {
            let hour = hour_of(r.received_at);
            let asn = r.asn.map_or(-1, i64::from);
            let country = r.country.as_deref().unwrap_or("");
            let h = hours
                .entry((hour, asn, country))
                .or_insert_with(|| HourDelta {
                    hour,
                    asn,
                    country: country.to_string(),
                    measurements: 0,
                    last_received_at: r.received_at,
                    last_started_at: r.started_at,
                });
            h.measurements += 1;
            h.last_received_at = h.last_received_at.max(r.received_at);
            h.last_started_at = h.last_started_at.max(r.started_at);
            let Some(asn) = r.asn else { continue };
            if r.status == Status::Offline {
                continue;
            }
            latest.entry((r.domain.as_str(), asn)).or_default().push(r);
            if let (Status::Blocked, Some(m)) = (r.status, r.method) {
                let at = blocked
                    .entry((r.domain.as_str(), asn, m))
                    .or_insert(r.started_at);
                *at = (*at).max(r.started_at);
            }
        }
        let latest = latest
            .into_values()
            .filter_map(|mut v| {
                v.sort_by_key(|r| (r.started_at, r.id));
                let record = *v.last()?;
                let place = |r: &MeasurementRecord| {
                    (r.status == Status::Blocked && r.censor_hop.is_some())
                        .then_some((r.censor_hop, r.censor_asn))
                };
                let run = match place(record) {
                    Some(p) => v.iter().rev().take_while(|r| place(r) == Some(p)).count(),
                    None => 0,
                };
                Some(LatestDelta {
                    record,
                    run: i64::try_from(run).unwrap_or(i64::MAX),
                    // Without a place there is no run to continue (and nothing to reset).
                    continues: run == 0 || run == v.len(),
                })
            })
            .collect();
        ReadModelDelta {
            latest,
            blocked: blocked
                .into_iter()
                .map(|((d, a, m), at)| (d, a, m, at))
                .collect(),
            hours: hours.into_values().collect(),
        }
    }
}
