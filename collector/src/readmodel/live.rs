//! The read model in memory, for `/metrics`: a scrape reads a snapshot of it, never the store.
//!
//! At a country's size (618 sites × 20 networks × 6 methods, ~75,000 series) reading the tables
//! of [`super`] on every scrape of every replica costs a database pass per scrape; the gauges
//! follow the series, so they are kept here instead, by the same rules:
//! - **local ingest** applies each batch's [`ReadModelDelta`] (the very rules the store's
//!   upserts follow, monotonic in `(started_at, id)`) right after the store committed it, so a
//!   scrape after an upload sees it;
//! - **local event transitions** open and close shutdowns;
//! - **the store** is read in full ([`ReadModelStore::read_model_rows`], one row per probe ×
//!   site × network in the window) once before the first scrape and then every
//!   `metrics.resync_interval` in the background, and merged with the same monotonic rules:
//!   what other replicas sharing the database ingested appears within that interval (plus one
//!   load), and entries older than the window are dropped.
//!
//! A merge never goes back in time, so loads and local deltas can interleave in any order.
//! [`GaugeInputs`] is what the gauges are made of; [`GaugeInputs::from_store`] computes the same
//! from the store's grouped reads, which the tests compare against.

use std::collections::btree_map::Entry as BEntry;
use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::sync::RwLock;

use chrono::{DateTime, TimeDelta, Utc};
use witness_core::model::{Method, Status};

use super::delta::ReadModelDelta;
use super::{summarize, with_places};
use crate::aggregate::Params;
use crate::model::{CensorPlace, LatestGroup, PlaceGroup, SiteStatus};
use crate::store::{Filter, MeasurementRecord, OpenShutdown, ReadModelRows, Store, StoreResult};

/// A network as uploads claim it: ASN and country, each when claimed.
pub type Network = (Option<u32>, Option<String>);

/// What the state gauges are computed from; the same whether read from the store or from
/// memory.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GaugeInputs {
    /// Current state per site and network (with the agreed censor place of blocked ones).
    pub statuses: Vec<SiteStatus>,
    /// Per site and network, the blocking methods seen in the window.
    pub methods: BTreeMap<(String, u32), Vec<Method>>,
    /// Probes that uploaded in the window (to the hour), per network and country.
    pub networks: BTreeMap<Network, u64>,
    /// Networks in an open shutdown, by ASN.
    pub shutdowns: Vec<OpenShutdown>,
}

impl GaugeInputs {
    /// The inputs as the store's read model says now (one grouped read per table): the
    /// reference the in-memory copy must equal.
    pub async fn from_store(
        store: &dyn Store,
        params: &Params,
        now: DateTime<Utc>,
    ) -> StoreResult<GaugeInputs> {
        let since = now - params.window;
        let filter = Filter {
            since: Some(since),
            ..Filter::default()
        };
        let statuses = super::site_statuses(store, &filter, params, now).await?;
        let methods = super::blocked_methods(store, since).await?;
        let activity = super::network_activity(store, since).await?;
        let mut networks = BTreeMap::new();
        for n in activity.networks {
            *networks.entry((n.asn, n.country)).or_default() += n.probes;
        }
        let mut shutdowns = activity.shutdowns;
        shutdowns.sort_by_key(|s| s.asn);
        Ok(GaugeInputs {
            statuses,
            methods,
            networks,
            shutdowns,
        })
    }
}

/// A time as the store keeps it (microseconds), so comparisons here are the store's.
fn as_stored(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(t.timestamp_micros()).unwrap_or(t)
}

/// A probe's latest verdict on a site and network (a row of `latest_verdicts`).
#[derive(Clone, Debug)]
struct Verdict {
    started_at: DateTime<Utc>,
    /// The measurement id as text: the store's tie-break compares the text.
    id: String,
    status: Status,
    method: Option<Method>,
    category: Option<String>,
    country: Option<String>,
    censor: Option<CensorPlace>,
    run: u64,
}

impl Verdict {
    fn newer_than(&self, other: &Verdict) -> bool {
        (self.started_at, self.id.as_str()) > (other.started_at, other.id.as_str())
    }
}

#[derive(Debug, Default)]
struct State {
    /// Per site and network, per probe.
    sites: BTreeMap<(String, u32), HashMap<String, Verdict>>,
    /// Per site, network and blocking method: last seen.
    blocked: BTreeMap<(String, u32, Method), DateTime<Utc>>,
    /// Per network and country, per probe: the latest hour of arrival with an upload.
    hours: HashMap<Network, HashMap<String, DateTime<Utc>>>,
    /// Open shutdowns: ASN → country.
    shutdowns: BTreeMap<u32, Option<String>>,
    /// Bumped by every local shutdown change, so a load started before one does not undo it.
    shutdown_changes: u64,
    /// Whether the store was read once.
    loaded: bool,
}

/// The in-memory read model (see the module doc).
#[derive(Debug, Default)]
pub struct LiveReadModel {
    state: RwLock<State>,
}

impl LiveReadModel {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the store was read at least once.
    pub fn loaded(&self) -> bool {
        self.read().loaded
    }

    /// Apply the records of one batch from `probe_id` that the store has just stored (the
    /// fresh ones only: a duplicate changed nothing there either).
    pub fn apply<'a>(
        &self,
        probe_id: &str,
        fresh: impl IntoIterator<Item = &'a MeasurementRecord>,
    ) {
        let delta = ReadModelDelta::of(fresh);
        let mut st = self.write();
        for l in &delta.latest {
            let r = l.record;
            let Some(asn) = r.asn else { continue };
            let mut new = Verdict {
                started_at: as_stored(r.started_at),
                id: r.id.to_string(),
                status: r.status,
                method: r.method,
                category: r.category.clone(),
                country: r.country.clone(),
                censor: r.censor_hop.map(|hop| CensorPlace {
                    hop,
                    asn: r.censor_asn,
                }),
                run: u64::try_from(l.run).unwrap_or(0),
            };
            match st
                .sites
                .entry((r.domain.clone(), asn))
                .or_default()
                .entry(probe_id.to_string())
            {
                Entry::Vacant(v) => {
                    v.insert(new);
                }
                Entry::Occupied(mut o) => {
                    let old = o.get();
                    if new.newer_than(old) {
                        // The store's rule: the run continues the stored one when the whole
                        // batch names the stored verdict's place.
                        if l.continues && new.run > 0 && old.censor == new.censor {
                            new.run += old.run;
                        }
                        o.insert(new);
                    }
                }
            }
        }
        for (domain, asn, method, at) in &delta.blocked {
            let last = st
                .blocked
                .entry((domain.to_string(), *asn, *method))
                .or_insert(as_stored(*at));
            *last = (*last).max(as_stored(*at));
        }
        for h in &delta.hours {
            let asn = u32::try_from(h.asn).ok();
            let country = (!h.country.is_empty()).then(|| h.country.clone());
            let hour = st
                .hours
                .entry((asn, country))
                .or_default()
                .entry(probe_id.to_string())
                .or_insert(h.hour);
            *hour = (*hour).max(h.hour);
        }
    }

    /// A shutdown opened (`open`) or closed on `asn`, decided here.
    pub fn shutdown(&self, asn: u32, country: Option<String>, open: bool) {
        let mut st = self.write();
        st.shutdown_changes += 1;
        if open {
            st.shutdowns.insert(asn, country);
        } else {
            st.shutdowns.remove(&asn);
        }
    }

    /// Read the store's read model at or after `since` and merge it in (monotonic: nothing
    /// newer is replaced), then drop what is older than `since`. Returns the rows read.
    pub async fn load(&self, store: &dyn Store, since: DateTime<Utc>) -> StoreResult<usize> {
        let mark = self.read().shutdown_changes;
        let rows = store.read_model_rows(since).await?;
        let shutdowns = store.open_shutdowns().await?;
        let n = rows.latest.len() + rows.blocked.len() + rows.hours.len();
        self.merge(rows, shutdowns, mark, since);
        Ok(n)
    }

    fn merge(
        &self,
        rows: ReadModelRows,
        shutdowns: Vec<OpenShutdown>,
        mark: u64,
        since: DateTime<Utc>,
    ) {
        let mut st = self.write();
        for r in rows.latest {
            let new = Verdict {
                started_at: r.started_at,
                id: r.measurement_id,
                status: r.status,
                method: r.method,
                category: r.category,
                country: r.country,
                censor: r.censor,
                run: r.censor_run,
            };
            match st
                .sites
                .entry((r.domain, r.asn))
                .or_default()
                .entry(r.probe_id)
            {
                Entry::Vacant(v) => {
                    v.insert(new);
                }
                Entry::Occupied(mut o) => {
                    // The same verdict: the store's run is the one every replica added to.
                    if !o.get().newer_than(&new) {
                        o.insert(new);
                    }
                }
            }
        }
        for (domain, asn, method, at) in rows.blocked {
            match st.blocked.entry((domain, asn, method)) {
                BEntry::Vacant(v) => {
                    v.insert(at);
                }
                BEntry::Occupied(mut o) => {
                    let last = o.get_mut();
                    *last = (*last).max(at);
                }
            }
        }
        for h in rows.hours {
            let hour = st
                .hours
                .entry((h.asn, h.country))
                .or_default()
                .entry(h.probe_id)
                .or_insert(h.hour);
            *hour = (*hour).max(h.hour);
        }
        if st.shutdown_changes == mark {
            st.shutdowns = shutdowns.into_iter().map(|s| (s.asn, s.country)).collect();
        }
        // What is older than the window can never count again (a newer verdict replaces it;
        // an older one is older than the window too).
        st.sites.retain(|_, probes| {
            probes.retain(|_, v| v.started_at >= since);
            !probes.is_empty()
        });
        st.blocked.retain(|_, at| *at >= since);
        let first_hour = since - TimeDelta::hours(1);
        st.hours.retain(|_, probes| {
            probes.retain(|_, h| *h > first_hour);
            !probes.is_empty()
        });
        st.loaded = true;
    }

    /// The gauge inputs at `now`: a consistent snapshot, computed in memory from one entry per
    /// probe × site × network.
    pub fn inputs(&self, params: &Params, now: DateTime<Utc>) -> GaugeInputs {
        let since = now - params.window;
        let st = self.read();
        let mut groups: Vec<LatestGroup> = Vec::new();
        let mut places: Vec<PlaceGroup> = Vec::new();
        for ((domain, asn), probes) in &st.sites {
            let first_group = groups.len();
            let first_place = places.len();
            for v in probes.values().filter(|v| v.started_at >= since) {
                match groups[first_group..]
                    .iter_mut()
                    .find(|g| g.status == v.status && g.method == v.method)
                {
                    Some(g) => {
                        g.probes += 1;
                        // The store's MAX(): clone only what is larger.
                        if v.country > g.country {
                            g.country = v.country.clone();
                        }
                        if v.category > g.category {
                            g.category = v.category.clone();
                        }
                        g.last_measured = g.last_measured.max(v.started_at);
                    }
                    None => groups.push(LatestGroup {
                        domain: domain.clone(),
                        asn: *asn,
                        country: v.country.clone(),
                        category: v.category.clone(),
                        status: v.status,
                        method: v.method,
                        probes: 1,
                        last_measured: v.started_at,
                    }),
                }
                let Some(place) = v.censor else { continue };
                match places[first_place..].iter_mut().find(|p| p.place == place) {
                    Some(p) => {
                        p.probes += 1;
                        p.run = p.run.max(v.run);
                    }
                    None => places.push(PlaceGroup {
                        domain: domain.clone(),
                        asn: *asn,
                        place,
                        probes: 1,
                        run: v.run,
                    }),
                }
            }
        }
        let mut statuses = summarize(&groups, params.min_share);
        if statuses.iter().any(|s| s.status == Status::Blocked) {
            with_places(&mut statuses, &places, params);
        }
        let mut methods: BTreeMap<(String, u32), Vec<Method>> = BTreeMap::new();
        for ((domain, asn, method), at) in &st.blocked {
            if *at >= since {
                methods
                    .entry((domain.clone(), *asn))
                    .or_default()
                    .push(*method);
            }
        }
        let first_hour = since - TimeDelta::hours(1);
        let mut networks = BTreeMap::new();
        for (key, probes) in &st.hours {
            let n = probes.values().filter(|h| **h > first_hour).count() as u64;
            if n > 0 {
                networks.insert(key.clone(), n);
            }
        }
        let shutdowns = st
            .shutdowns
            .iter()
            .map(|(asn, country)| OpenShutdown {
                asn: *asn,
                country: country.clone(),
            })
            .collect();
        GaugeInputs {
            statuses,
            methods,
            networks,
            shutdowns,
        }
    }
}
