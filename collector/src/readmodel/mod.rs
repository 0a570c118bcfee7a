//! The read model: each probe's latest verdict per site and network, kept on ingest.
//!
//! Every reader of "the current state" goes through this module: `/metrics`, the status API
//! (`GET /api/v1/status`), the status page and its site pages. The event sweep reads the same
//! tables through [`ReadModelStore::recent_sites`](crate::store::ReadModelStore::recent_sites) and
//! [`ReadModelStore::recent_networks`](crate::store::ReadModelStore::recent_networks).
//!
//! The store keeps three small tables in the same transaction as the measurements
//! (`migrations/*/0002_read_model.sql`), by the rules of [`delta`]:
//! - `latest_verdicts`: per probe, site and network, the latest non-offline verdict (status,
//!   method, time, category, country). Upserts are idempotent (a duplicate record is not
//!   stored, so it changes nothing) and monotonic in `(started_at, id)`: a back-filled older
//!   record, even one arriving hours late after a shutdown, never replaces a newer one. Since
//!   migration 0006 it also holds the censor's place the verdict names (`censor_hop`,
//!   `censor_asn`, from the record's `path`) and `censor_run`, the probe's consecutive latest
//!   verdicts naming that place (what the single-probe rule of [`aggregate::agreed_place`]
//!   counts);
//! - `blocked_methods`: per site and network, every blocking method seen and when last;
//! - `probe_hours`: uploads per hour of arrival, network and probe.
//!
//! Reading them costs one row per probe × site × network (or per method, or per probe-hour):
//! it follows the number of series, not the number of measurements. Entries older than the
//! window stop counting (the reads filter on time); nothing needs deleting for that.
//!
//! A status query about the past (`until` more than [`CURRENT_SLACK`] ago) cannot use the read
//! model, which only knows the present: it falls back to [`crate::store::MeasurementStore::latest_groups_scan`] over
//! the measurements of the period.

pub(crate) mod delta;
pub mod live;

use std::collections::BTreeMap;

use chrono::{DateTime, TimeDelta, Utc};
use witness_core::model::{Method, Status};

use crate::aggregate::{self, Params, PlaceVote};
use crate::model::{LatestGroup, PlaceGroup, SiteStatus};
use crate::store::{Filter, OpenShutdown, ProbeNetworkRow, Store, StoreResult};

/// An `until` this close to now (or later) asks for the present: the read model answers.
pub const CURRENT_SLACK: TimeDelta = TimeDelta::minutes(1);

/// Current state per site and network matching `filter` (network, country, category, site),
/// from the latest verdict of each probe at or after `filter.since`. With `filter.until` more
/// than [`CURRENT_SLACK`] before `now`, the state at `until` instead, computed from the
/// measurements of `[since, until]`. Sorted by site, then network.
///
/// Blocked sites of the present also say where the censor sits ([`with_places`]); a query about
/// the past does not (`censor_hop` stays `None`).
pub async fn site_statuses(
    store: &dyn Store,
    filter: &Filter,
    params: &Params,
    now: DateTime<Utc>,
) -> StoreResult<Vec<SiteStatus>> {
    let current = filter.until.is_none_or(|u| u >= now - CURRENT_SLACK);
    if !current {
        let groups = store.latest_groups_scan(filter).await?;
        return Ok(summarize(&groups, params.min_share));
    }
    let groups = store.latest_groups(filter).await?;
    let mut statuses = summarize(&groups, params.min_share);
    if statuses.iter().any(|s| s.status == Status::Blocked) {
        let places = store.place_groups(filter).await?;
        with_places(&mut statuses, &places, params);
    }
    Ok(statuses)
}

/// Fill in where the censor sits for the blocked statuses: the place their located probes
/// agree on by [`aggregate::agreed_place`]. The single-probe rule applies where the site has
/// one probe on the network (the read model does not know the network's other probes).
pub fn with_places(statuses: &mut [SiteStatus], places: &[PlaceGroup], params: &Params) {
    let mut by_key: BTreeMap<(&str, u32), Vec<PlaceVote>> = BTreeMap::new();
    for g in places {
        by_key
            .entry((g.domain.as_str(), g.asn))
            .or_default()
            .push(PlaceVote {
                place: g.place,
                probes: g.probes,
                run: g.run,
            });
    }
    for s in statuses.iter_mut() {
        if s.status != Status::Blocked {
            continue;
        }
        let Some(votes) = by_key.get(&(s.domain.as_str(), s.asn)) else {
            continue;
        };
        if let Some(a) = aggregate::agreed_place(votes, s.probes == 1, params) {
            s.censor_hop = Some(a.place.hop);
            s.censor_asn = a.place.asn;
            s.hop_agreeing = a.agreeing;
        }
    }
}

/// Per site and network, the blocking methods seen at or after `since`.
pub async fn blocked_methods(
    store: &dyn Store,
    since: DateTime<Utc>,
) -> StoreResult<BTreeMap<(String, u32), Vec<Method>>> {
    let mut out: BTreeMap<(String, u32), Vec<Method>> = BTreeMap::new();
    for (domain, asn, m) in store.blocked_methods_seen(since).await? {
        out.entry((domain, asn)).or_default().push(m);
    }
    for v in out.values_mut() {
        v.sort();
        v.dedup();
    }
    Ok(out)
}

/// The networks' current state: who is uploading, and where a shutdown is open.
#[derive(Clone, Debug, Default)]
pub struct NetworkActivity {
    /// Probes per network that uploaded at or after the `since` asked for, to the hour
    /// (`probe_hours`).
    pub networks: Vec<ProbeNetworkRow>,
    /// The networks in an open shutdown.
    pub shutdowns: Vec<OpenShutdown>,
}

/// [`NetworkActivity`] since `since`: one row per network and country, plus one per network in
/// shutdown, whatever the number of measurements or events.
pub async fn network_activity(
    store: &dyn Store,
    since: DateTime<Utc>,
) -> StoreResult<NetworkActivity> {
    let networks = store
        .probe_networks(&Filter {
            since: Some(since),
            limit: u32::MAX,
            ..Filter::default()
        })
        .await?;
    let shutdowns = store.open_shutdowns().await?;
    Ok(NetworkActivity {
        networks,
        shutdowns,
    })
}

/// Fold latest-per-probe groups into one status per site and network.
pub fn summarize(groups: &[LatestGroup], min_share: f64) -> Vec<SiteStatus> {
    let mut by_key: BTreeMap<(&str, u32), Vec<&LatestGroup>> = BTreeMap::new();
    for g in groups {
        by_key
            .entry((g.domain.as_str(), g.asn))
            .or_default()
            .push(g);
    }
    let mut out = Vec::with_capacity(by_key.len());
    for ((domain, asn), gs) in by_key {
        let mut counts: BTreeMap<&'static str, u64> = BTreeMap::new();
        let mut methods: BTreeMap<Method, u64> = BTreeMap::new();
        for g in &gs {
            *counts.entry(g.status.as_str()).or_default() += g.probes;
            if let (Status::Blocked, Some(m)) = (g.status, g.method) {
                *methods.entry(m).or_default() += g.probes;
            }
        }
        let n = |s: Status| counts.get(s.as_str()).copied().unwrap_or(0);
        let blocked = n(Status::Blocked);
        let accessible = n(Status::Accessible);
        let conclusive = blocked + accessible;
        let blocked_share = (conclusive > 0).then(|| blocked as f64 / conclusive as f64);
        let status = match blocked_share {
            Some(s) if s >= min_share => Status::Blocked,
            Some(_) => Status::Accessible,
            None if n(Status::Down) >= n(Status::Inconclusive) && n(Status::Down) > 0 => {
                Status::Down
            }
            None => Status::Inconclusive,
        };
        let method = if status == Status::Blocked {
            methods
                .iter()
                .max_by_key(|(m, c)| (**c, std::cmp::Reverse(**m)))
                .map(|(m, _)| *m)
        } else {
            None
        };
        let last = |f: fn(&LatestGroup) -> Option<String>| {
            gs.iter()
                .filter_map(|g| f(g).map(|v| (g.last_measured, v)))
                .max()
                .map(|(_, v)| v)
        };
        out.push(SiteStatus {
            domain: domain.to_string(),
            asn,
            country: last(|g| g.country.clone()),
            category: last(|g| g.category.clone()),
            status,
            method,
            probes: counts.values().sum(),
            blocked_probes: blocked,
            accessible_probes: accessible,
            blocked_share,
            methods,
            last_measured: gs
                .iter()
                .map(|g| g.last_measured)
                .max()
                .unwrap_or(DateTime::<Utc>::MIN_UTC),
            censor_hop: None,
            censor_asn: None,
            hop_agreeing: 0,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(min: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2024, 3, 1, 12, 0, 0).unwrap() + TimeDelta::minutes(min)
    }

    #[test]
    fn summarize_picks_status_and_share() {
        let g = |status, method, probes| LatestGroup {
            domain: "example.org".into(),
            asn: 9198,
            country: Some("KZ".into()),
            category: Some("NEWS".into()),
            status,
            method,
            probes,
            last_measured: t(0),
        };
        let s = summarize(
            &[
                g(Status::Blocked, Some(Method::Tls), 3),
                g(Status::Blocked, Some(Method::Dns), 1),
                g(Status::Accessible, None, 1),
                g(Status::Down, None, 2),
            ],
            0.5,
        );
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].status, Status::Blocked);
        assert_eq!(s[0].method, Some(Method::Tls));
        assert_eq!(s[0].probes, 7);
        assert_eq!(s[0].blocked_share, Some(0.8));
        let s = summarize(&[g(Status::Down, None, 2)], 0.5);
        assert_eq!(s[0].status, Status::Down);
        assert_eq!(s[0].blocked_share, None);
    }

    #[test]
    fn with_places_names_the_agreed_hop_of_blocked_sites_only() {
        let g = |domain: &str, status, method, probes| LatestGroup {
            domain: domain.into(),
            asn: 9198,
            country: None,
            category: None,
            status,
            method,
            probes,
            last_measured: t(0),
        };
        let mut s = summarize(
            &[
                g("a.example", Status::Blocked, Some(Method::Tls), 3),
                g("b.example", Status::Accessible, None, 3),
                g("c.example", Status::Blocked, Some(Method::Tcp), 1),
                g("d.example", Status::Blocked, Some(Method::Tcp), 1),
            ],
            0.5,
        );
        let place = |domain: &str, hop, asn, probes, run| PlaceGroup {
            domain: domain.into(),
            asn: 9198,
            place: crate::model::CensorPlace { hop, asn },
            probes,
            run,
        };
        let places = [
            place("a.example", 3, Some(9198), 2, 1),
            place("a.example", 4, None, 1, 1),
            // Not blocked by the status rule: no hop, whatever the read model holds.
            place("b.example", 2, None, 2, 1),
            // Alone on the site: three verdicts in a row are needed.
            place("c.example", 5, Some(21299), 1, 3),
            place("d.example", 5, Some(21299), 1, 2),
        ];
        with_places(&mut s, &places, &Params::default());
        let got: Vec<_> = s
            .iter()
            .map(|x| {
                (
                    x.domain.as_str(),
                    x.censor_hop,
                    x.censor_asn,
                    x.hop_agreeing,
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("a.example", Some(3), Some(9198), 2),
                ("b.example", None, None, 0),
                ("c.example", Some(5), Some(21299), 1),
                ("d.example", None, None, 0),
            ]
        );
    }
}
