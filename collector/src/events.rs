//! Event evaluation: the I/O around [`crate::aggregate`].
//!
//! After a batch is committed, every site × network it touched (and every network, for
//! shutdowns) is re-evaluated at the times of the new measurements: the store supplies the
//! series and the state of the events, the pure rule decides, and the store applies each
//! decision atomically (unique open event, notification queued in the same transaction).
//!
//! Several collectors may evaluate the same key at once (one database, many replicas, or just
//! concurrent uploads). Each decision carries the key's last decision time it was computed
//! from, and the store applies it only if that is still the latest (compare-and-set in the
//! database). A refused decision means another writer changed the key: the key is read and
//! evaluated again, so every transition is decided from the state it changes, exactly once.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio::sync::Notify;
use uuid::Uuid;
use witness_core::model::Status;

use crate::aggregate::{self, Decision, EventKind, KeyState, Params, Transition};
use crate::metrics::Metrics;
use crate::store::{
    CloseEvent, EventKey, EventState, MeasurementRecord, NewEvent, PlaceDecision, Store,
    StoreResult,
};

/// Attempts at evaluating one site or network while other writers keep changing its events;
/// after that the periodic sweep takes over.
const MAX_ATTEMPTS: usize = 5;

/// Result of one evaluation pass over one site or network.
#[derive(Default)]
struct Pass {
    /// Transitions applied.
    applied: usize,
    /// A decision was refused because the key changed underneath: evaluate again.
    stale: bool,
}

/// What [`Evaluator::evaluate`] read for one site and network before evaluating it.
#[derive(Debug, Default)]
struct Read {
    series: Vec<crate::model::Obs>,
    states: Vec<EventState>,
    /// The network's probe count (up to 2) over the key's interval, when already known.
    probes: Option<usize>,
}

/// What a batch touched.
#[derive(Clone, Debug, Default)]
pub struct Touched {
    sites: BTreeMap<(String, u32), Touch>,
    networks: BTreeMap<u32, Touch>,
}

#[derive(Clone, Debug, Default)]
struct Touch {
    times: Vec<DateTime<Utc>>,
    country: Option<String>,
    category: Option<String>,
    offline: bool,
}

impl Touch {
    fn add(&mut self, r: &MeasurementRecord) {
        self.times.push(r.started_at);
        if r.country.is_some() {
            self.country.clone_from(&r.country);
        }
        if r.category.is_some() {
            self.category.clone_from(&r.category);
        }
        self.offline |= r.status == Status::Offline;
    }
}

impl Touched {
    /// Note a newly stored measurement. Measurements without an ASN cannot be aggregated.
    pub fn add(&mut self, r: &MeasurementRecord) {
        let Some(asn) = r.asn else { return };
        self.networks.entry(asn).or_default().add(r);
        if r.status != Status::Offline {
            self.sites
                .entry((r.domain.clone(), asn))
                .or_default()
                .add(r);
        }
    }

    /// Nothing touched.
    pub fn is_empty(&self) -> bool {
        self.sites.is_empty() && self.networks.is_empty()
    }
}

/// Runs the event rule against the store.
#[derive(Clone)]
pub struct Evaluator {
    store: Arc<dyn Store>,
    params: Params,
    webhook_urls: Vec<String>,
    metrics: Arc<Metrics>,
    wake: Arc<Notify>,
}

impl Evaluator {
    /// An evaluator queueing notifications for `webhook_urls` and waking the notifier.
    pub fn new(
        store: Arc<dyn Store>,
        params: Params,
        webhook_urls: Vec<String>,
        metrics: Arc<Metrics>,
        wake: Arc<Notify>,
    ) -> Self {
        Evaluator {
            store,
            params,
            webhook_urls,
            metrics,
            wake,
        }
    }

    /// Re-evaluate everything a batch touched. Returns the number of transitions applied.
    ///
    /// Only the site × network keys of the batch are evaluated, and of those only the ones
    /// the block rule can decide anything for (one query for the whole batch): a key with no
    /// blocking verdict within the window before its earliest new measurement and no open
    /// event cannot open or close anything, so it is skipped without reading its series.
    pub async fn evaluate(&self, touched: &Touched) -> StoreResult<usize> {
        let mut n = 0;
        let keys: Vec<(String, u32)> = touched.sites.keys().cloned().collect();
        let first = touched.sites.values().flat_map(|t| t.times.iter()).min();
        let active = match first {
            Some(first) => {
                self.store
                    .sites_with_block_activity(&keys, *first - self.params.window)
                    .await?
            }
            None => Default::default(),
        };
        // The series and event states of every active key in two reads, not two per key: the
        // window's measurements since the earliest of them, cut per key below.
        let active: Vec<(String, u32)> = touched
            .sites
            .keys()
            .filter(|k| active.contains(*k))
            .cloned()
            .collect();
        let earliest = active
            .iter()
            .filter_map(|k| touched.sites[k].times.iter().min())
            .min();
        let (mut series, mut states) = match earliest {
            Some(e) if !active.is_empty() => (
                self.store
                    .site_series_many(&active, *e - self.params.window)
                    .await?,
                self.store.block_states_many(&active).await?,
            ),
            _ => Default::default(),
        };
        let two_probes = self
            .networks_with_two_probes(touched, &active, &series)
            .await?;
        for key in active {
            let t = &touched.sites[&key];
            let read = Read {
                series: series.remove(&key).unwrap_or_default(),
                states: states.remove(&key).unwrap_or_default(),
                probes: two_probes.contains(&key.1).then_some(2),
            };
            n += self.evaluate_site(&key.0, key.1, t, Some(read)).await?;
        }
        for (asn, t) in &touched.networks {
            n += self.evaluate_network(*asn, t).await?;
        }
        Ok(n)
    }

    /// The networks that had two probes or more within every interval the rule will ask about
    /// for this upload's `active` keys: the single-probe count runs once per network, over the
    /// intersection of the keys' intervals, instead of once per key. Counts only grow with the
    /// interval, so two in the intersection is two in each key's; below two, the keys are
    /// counted one by one as before. Each key's interval is the one
    /// [`Evaluator::evaluate_site_once`] computes: from its earliest new measurement minus the
    /// window, to its latest time.
    async fn networks_with_two_probes(
        &self,
        touched: &Touched,
        active: &[(String, u32)],
        series: &std::collections::HashMap<(String, u32), Vec<crate::model::Obs>>,
    ) -> StoreResult<Vec<u32>> {
        let mut per_asn: BTreeMap<u32, (usize, DateTime<Utc>, DateTime<Utc>)> = BTreeMap::new();
        for key in active {
            let t = &touched.sites[key];
            let Some(first) = t.times.iter().min().copied() else {
                continue;
            };
            let since = first - self.params.window;
            let latest_seen = series
                .get(key)
                .into_iter()
                .flatten()
                .map(|o| o.at)
                .filter(|at| *at > since);
            let Some(last) = t.times.iter().copied().chain(latest_seen).max() else {
                continue;
            };
            per_asn
                .entry(key.1)
                .and_modify(|(n, s, l)| {
                    *n += 1;
                    *s = (*s).max(since);
                    *l = (*l).min(last);
                })
                .or_insert((1, since, last));
        }
        let mut out = Vec::new();
        for (asn, (keys, since, last)) in per_asn {
            // One key gains nothing; an empty intersection cannot be counted.
            if keys < 2 || since > last {
                continue;
            }
            if self.store.network_probe_count(asn, since, last).await? >= 2 {
                out.push(asn);
            }
        }
        Ok(out)
    }

    /// Catch-up: re-evaluate every site and network measured within the window, at its latest
    /// measurement.
    pub async fn sweep(&self, now: DateTime<Utc>) -> StoreResult<usize> {
        let since = now - self.params.window;
        let mut n = 0;
        for s in self.store.recent_sites(since).await? {
            let t = Touch {
                times: vec![s.latest],
                country: s.country,
                category: s.category,
                offline: false,
            };
            n += self.evaluate_site(&s.domain, s.asn, &t, None).await?;
        }
        for net in self.store.recent_networks(since).await? {
            let t = Touch {
                times: vec![net.latest],
                country: net.country,
                category: None,
                offline: true,
            };
            n += self.evaluate_network(net.asn, &t).await?;
        }
        Ok(n)
    }

    /// Evaluate one site on one network; `read` is what [`Evaluator::evaluate`] already read
    /// for it, used by the first attempt only (a stale pass reads again).
    async fn evaluate_site(
        &self,
        domain: &str,
        asn: u32,
        t: &Touch,
        mut read: Option<Read>,
    ) -> StoreResult<usize> {
        let mut n = 0;
        for _ in 0..MAX_ATTEMPTS {
            let pass = self.evaluate_site_once(domain, asn, t, read.take()).await?;
            n += pass.applied;
            if !pass.stale {
                return Ok(n);
            }
        }
        tracing::warn!(
            domain,
            asn,
            "events of this site kept changing under evaluation; the sweep will finish it"
        );
        Ok(n)
    }

    async fn evaluate_site_once(
        &self,
        domain: &str,
        asn: u32,
        t: &Touch,
        read: Option<Read>,
    ) -> StoreResult<Pass> {
        let mut pass = Pass::default();
        let Some(first) = t.times.iter().min().copied() else {
            return Ok(pass);
        };
        let since = first - self.params.window;
        let (series, states, probes) = match read {
            Some(Read {
                mut series,
                states,
                probes,
            }) => {
                // Read from the earliest time of the whole upload: keep this key's window.
                series.retain(|o| o.at > since);
                (series, states, probes)
            }
            None => (
                self.store.site_series(domain, asn, since).await?,
                self.store
                    .event_states(EventKind::NewBlock, Some(domain), asn)
                    .await?,
                None,
            ),
        };
        let anchors = aggregate::anchors(
            t.times
                .iter()
                .copied()
                .chain(series.iter().map(|o| o.at).max()),
        );
        let Some(last) = anchors.last().copied() else {
            return Ok(pass);
        };
        let open_methods = states
            .iter()
            .filter(|s| s.open_since.is_some())
            .filter_map(|s| s.method);
        let methods = aggregate::methods_to_evaluate(&series, open_methods);
        if methods.is_empty() {
            return Ok(pass);
        }
        let asn_probes = match probes {
            Some(n) => n,
            None => self.store.network_probe_count(asn, since, last).await?,
        };
        for method in methods {
            let state = key_state(&states, Some(method));
            let decisions = aggregate::replay(&anchors, state, |anchor, open| {
                aggregate::block_step(&series, method, anchor, open, asn_probes, &self.params)
            });
            let key = EventKey {
                kind: EventKind::NewBlock,
                domain: Some(domain.to_string()),
                asn,
                method: Some(method),
            };
            self.apply_all(&key, t, state.floor, decisions, &mut pass)
                .await?;
        }
        if !pass.stale {
            self.evaluate_place(domain, asn, t, &series, last, asn_probes, &mut pass)
                .await?;
        }
        Ok(pass)
    }

    /// Where the censor sits, at the latest evaluation time: remember the agreed place, and
    /// raise `block_moved` when it differs from the last one agreed while the site is blocked
    /// (the store decides, once per change).
    #[allow(clippy::too_many_arguments)]
    async fn evaluate_place(
        &self,
        domain: &str,
        asn: u32,
        t: &Touch,
        series: &[crate::model::Obs],
        anchor: DateTime<Utc>,
        asn_probes: usize,
        pass: &mut Pass,
    ) -> StoreResult<()> {
        let Some(found) = aggregate::place_step(series, anchor, asn_probes, &self.params) else {
            return Ok(());
        };
        let blocked = self
            .store
            .event_states(EventKind::NewBlock, Some(domain), asn)
            .await?
            .iter()
            .any(|s| s.open_since.is_some());
        let decision = PlaceDecision {
            domain: domain.to_string(),
            asn,
            country: t.country.clone(),
            category: t.category.clone(),
            place: found.agreed.place,
            agreeing: found.agreed.agreeing,
            decided_at: anchor,
            started_at: found.started_at,
            blocked,
            event_id: Uuid::now_v7().to_string(),
            evidence: found.evidence,
        };
        let Some(event) = self
            .store
            .record_censor_place(&decision, &self.webhook_urls)
            .await?
        else {
            return Ok(());
        };
        pass.applied += 1;
        self.metrics.event(Transition::BlockMoved);
        tracing::info!(
            transition = Transition::BlockMoved.as_str(),
            event_id = %event.id,
            domain,
            asn,
            censor = %found.agreed.place,
            previous = %event.evidence.previous_censor.map_or_else(String::new, |p| p.to_string()),
            probes = found.agreed.agreeing,
            "event"
        );
        if !self.webhook_urls.is_empty() {
            self.wake.notify_one();
        }
        Ok(())
    }

    async fn evaluate_network(&self, asn: u32, t: &Touch) -> StoreResult<usize> {
        let mut n = 0;
        for _ in 0..MAX_ATTEMPTS {
            let pass = self.evaluate_network_once(asn, t).await?;
            n += pass.applied;
            if !pass.stale {
                return Ok(n);
            }
        }
        tracing::warn!(
            asn,
            "shutdown events of this network kept changing under evaluation; the sweep will finish it"
        );
        Ok(n)
    }

    async fn evaluate_network_once(&self, asn: u32, t: &Touch) -> StoreResult<Pass> {
        let mut pass = Pass::default();
        let Some(first) = t.times.iter().min().copied() else {
            return Ok(pass);
        };
        let states = self
            .store
            .event_states(EventKind::Shutdown, None, asn)
            .await?;
        let state = key_state(&states, None);
        // Without an offline report and without an open shutdown there is nothing to decide.
        if !t.offline && state.open_since.is_none() {
            return Ok(pass);
        }
        let mut since = first - self.params.window;
        if let Some(open) = state.open_since {
            since = since.min(open - self.params.window);
        }
        let presence = self.store.network_presence(asn, since).await?;
        let anchors = aggregate::anchors(
            t.times
                .iter()
                .copied()
                .chain(presence.iter().map(|r| r.last_at).max()),
        );
        let decisions = aggregate::replay(&anchors, state, |anchor, open| {
            aggregate::shutdown_step(&presence, anchor, open, &self.params)
        });
        let key = EventKey {
            kind: EventKind::Shutdown,
            domain: None,
            asn,
            method: None,
        };
        self.apply_all(&key, t, state.floor, decisions, &mut pass)
            .await?;
        Ok(pass)
    }

    /// Apply a key's decisions in order, each from the floor the previous one left; stop at
    /// the first one the store refuses (the key changed underneath) and mark the pass stale.
    async fn apply_all(
        &self,
        key: &EventKey,
        t: &Touch,
        mut floor: Option<DateTime<Utc>>,
        decisions: Vec<Decision>,
        pass: &mut Pass,
    ) -> StoreResult<()> {
        for d in decisions {
            match self.apply(key, t, floor, d).await? {
                Some(decided_at) => {
                    pass.applied += 1;
                    floor = Some(decided_at);
                }
                None => {
                    pass.stale = true;
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Apply one decision made from `floor`; returns its decision time, or `None` when the
    /// store refused it because the key changed since `floor` (someone else decided first).
    async fn apply(
        &self,
        key: &EventKey,
        t: &Touch,
        floor: Option<DateTime<Utc>>,
        d: Decision,
    ) -> StoreResult<Option<DateTime<Utc>>> {
        let event = match d {
            Decision::Open {
                started_at,
                decided_at,
                evidence,
            } => {
                let new = NewEvent {
                    id: Uuid::now_v7().to_string(),
                    key: key.clone(),
                    country: t.country.clone(),
                    category: t.category.clone(),
                    started_at,
                    decided_at,
                    floor,
                    evidence,
                };
                let ev = self.store.open_event(&new, &self.webhook_urls).await?;
                (ev, Transition::of(key.kind, true), decided_at)
            }
            Decision::Close {
                ended_at,
                decided_at,
                evidence,
            } => {
                let close = CloseEvent {
                    key: key.clone(),
                    ended_at,
                    decided_at,
                    floor,
                    evidence,
                };
                let ev = self.store.close_event(&close, &self.webhook_urls).await?;
                (ev, Transition::of(key.kind, false), decided_at)
            }
        };
        let (event, transition, decided_at) = event;
        let Some(event) = event else {
            return Ok(None);
        };
        self.metrics.event(transition);
        tracing::info!(
            transition = transition.as_str(),
            event_id = %event.id,
            domain = event.domain.as_deref().unwrap_or("-"),
            asn = event.asn,
            method = event.method.map_or("-", |m| m.as_str()),
            probes = event.evidence.probes,
            "event"
        );
        if !self.webhook_urls.is_empty() {
            self.wake.notify_one();
        }
        Ok(Some(decided_at))
    }
}

fn key_state(states: &[EventState], method: Option<witness_core::model::Method>) -> KeyState {
    states
        .iter()
        .find(|s| s.method == method)
        .map(|s| KeyState {
            open_since: s.open_since,
            floor: s.floor,
        })
        .unwrap_or_default()
}
