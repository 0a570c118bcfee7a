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
//!
//! Against fake probes (issue 20): only established probes count ([`Guards`]), records dated
//! before `max_backfill` decide nothing, and a key over `max_transitions_per_hour` is flapping:
//! its further transitions are counted, not raised.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
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

/// Most keys whose recent transitions are remembered for the flapping cap (some 100 bytes
/// each); past it, new keys are not capped until old entries expire.
const MAX_FLAP_KEYS: usize = 100_000;

/// The period of `max_transitions_per_hour`.
const FLAP_PERIOD: Duration = Duration::from_secs(3600);

/// What keeps fake probes from deciding events (from `[aggregation]`; `docs/collector-api.md`,
/// "Who counts").
#[derive(Clone, Debug, PartialEq)]
pub struct Guards {
    /// A probe counts once its token is this old...
    pub probe_min_age: TimeDelta,
    /// ...and it has uploaded in this many distinct hours.
    pub probe_min_hours: u32,
    /// Records dated more than this before now decide nothing.
    pub max_backfill: TimeDelta,
    /// Most transitions per key and hour (0: no cap).
    pub max_transitions_per_hour: u32,
}

impl Guards {
    /// The guards of `[aggregation]`.
    pub fn of(a: &crate::config::AggregationConfig) -> Guards {
        Guards {
            probe_min_age: a.probe_min_age.to_chrono(),
            probe_min_hours: a.probe_min_hours,
            max_backfill: a.max_backfill.to_chrono(),
            max_transitions_per_hour: a.max_transitions_per_hour,
        }
    }

    /// Every probe counts at once: nothing to ask the store.
    fn everyone_counts(&self) -> bool {
        self.probe_min_age <= TimeDelta::zero() && self.probe_min_hours == 0
    }
}

impl Default for Guards {
    fn default() -> Self {
        Guards::of(&crate::config::AggregationConfig::default())
    }
}

/// Recent transitions per key, on this collector's clock (each replica keeps its own).
#[derive(Debug, Default)]
struct FlapLog(HashMap<EventKey, VecDeque<Instant>>);

impl FlapLog {
    /// Whether `key` already had `cap` transitions within the last period.
    fn over(&mut self, key: &EventKey, cap: u32, now: Instant) -> bool {
        let Some(times) = self.0.get_mut(key) else {
            return false;
        };
        while times
            .front()
            .is_some_and(|t| now.duration_since(*t) >= FLAP_PERIOD)
        {
            times.pop_front();
        }
        times.len() >= cap as usize
    }

    /// Note a transition of `key`.
    fn record(&mut self, key: &EventKey, now: Instant) {
        if !self.0.contains_key(key) && self.0.len() >= MAX_FLAP_KEYS {
            self.0.retain(|_, t| {
                t.back()
                    .is_some_and(|last| now.duration_since(*last) < FLAP_PERIOD)
            });
            if self.0.len() >= MAX_FLAP_KEYS {
                return;
            }
        }
        self.0.entry(key.clone()).or_default().push_back(now);
    }
}

/// What became of one decision.
enum Applied {
    /// Applied; its decision time.
    Yes(DateTime<Utc>),
    /// Refused: the key changed since the decision's floor (evaluate again).
    Stale,
    /// Not raised: the key is flapping.
    Suppressed,
}

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
    guards: Guards,
    flaps: Arc<Mutex<FlapLog>>,
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
            guards: Guards::default(),
            flaps: Arc::default(),
            webhook_urls,
            metrics,
            wake,
        }
    }

    /// This evaluator with other guards against fake probes (default: those of
    /// `[aggregation]`'s defaults).
    pub fn with_guards(mut self, guards: Guards) -> Self {
        self.guards = guards;
        self
    }

    /// The earliest measurement time a decision may use now.
    fn not_before(&self) -> DateTime<Utc> {
        Utc::now() - self.guards.max_backfill
    }

    /// Of `probes`, those that count in the quorum (one query); `None` when every probe does.
    async fn counted<'a>(
        &self,
        probes: impl IntoIterator<Item = &'a str>,
    ) -> StoreResult<Option<HashSet<String>>> {
        if self.guards.everyone_counts() {
            return Ok(None);
        }
        let mut probes: Vec<String> = probes.into_iter().map(str::to_string).collect();
        probes.sort_unstable();
        probes.dedup();
        let counted = self
            .store
            .established_probes(
                &probes,
                Utc::now() - self.guards.probe_min_age,
                self.guards.probe_min_hours,
            )
            .await?;
        Ok(Some(counted))
    }

    /// `series` without the measurements of probes that do not count yet (one query for all
    /// the series of an upload).
    async fn quorum(
        &self,
        series: &mut HashMap<(String, u32), Vec<crate::model::Obs>>,
    ) -> StoreResult<()> {
        let probes = series.values().flatten().map(|o| o.probe.as_str());
        if let Some(counted) = self.counted(probes).await? {
            for v in series.values_mut() {
                v.retain(|o| counted.contains(&o.probe));
            }
        }
        Ok(())
    }

    /// Whether `key` is flapping: over `max_transitions_per_hour` on this collector's clock.
    fn flapping(&self, key: &EventKey) -> bool {
        let cap = self.guards.max_transitions_per_hour;
        cap > 0
            && self
                .flaps
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .over(key, cap, Instant::now())
    }

    /// Count a transition of `key` towards its cap.
    fn transitioned(&self, key: &EventKey) {
        if self.guards.max_transitions_per_hour > 0 {
            self.flaps
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .record(key, Instant::now());
        }
    }

    /// A transition of a flapping key: counted and logged, not raised.
    fn suppressed(&self, key: &EventKey, transition: Transition) {
        self.metrics.event_suppressed(transition);
        tracing::warn!(
            transition = transition.as_str(),
            kind = key.kind.as_str(),
            domain = key.domain.as_deref().unwrap_or("-"),
            asn = key.asn,
            method = key.method.map_or("-", |m| m.as_str()),
            cap = self.guards.max_transitions_per_hour,
            "event key flapping: transition suppressed"
        );
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
        self.quorum(&mut series).await?;
        for key in active {
            let t = &touched.sites[&key];
            let read = Read {
                series: series.remove(&key).unwrap_or_default(),
                states: states.remove(&key).unwrap_or_default(),
            };
            n += self.evaluate_site(&key.0, key.1, t, Some(read)).await?;
        }
        for (asn, t) in &touched.networks {
            n += self.evaluate_network(*asn, t).await?;
        }
        Ok(n)
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
        let (series, states) = match read {
            Some(Read { mut series, states }) => {
                // Read from the earliest time of the whole upload: keep this key's window.
                series.retain(|o| o.at > since);
                (series, states)
            }
            None => {
                let key = (domain.to_string(), asn);
                let mut one = HashMap::from([(
                    key.clone(),
                    self.store.site_series(domain, asn, since).await?,
                )]);
                self.quorum(&mut one).await?;
                (
                    one.remove(&key).unwrap_or_default(),
                    self.store
                        .event_states(EventKind::NewBlock, Some(domain), asn)
                        .await?,
                )
            }
        };
        let not_before = self.not_before();
        let anchors = aggregate::bound_backfill(
            aggregate::anchors(
                t.times
                    .iter()
                    .copied()
                    .chain(series.iter().map(|o| o.at).max()),
            ),
            not_before,
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
        for method in methods {
            let state = key_state(&states, Some(method));
            let decisions = aggregate::replay(&anchors, state, &self.params, |anchor, open| {
                aggregate::block_step(&series, method, anchor, open, &self.params)
                    .map(|d| aggregate::clamp_decision(d, not_before))
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
            self.evaluate_place(domain, asn, t, &series, last, &mut pass)
                .await?;
        }
        Ok(pass)
    }

    /// Where the censor sits, at the latest evaluation time: remember the agreed place, and
    /// raise `block_moved` when it differs from the last one agreed while the site is blocked
    /// (the store decides, once per change).
    async fn evaluate_place(
        &self,
        domain: &str,
        asn: u32,
        t: &Touch,
        series: &[crate::model::Obs],
        anchor: DateTime<Utc>,
        pass: &mut Pass,
    ) -> StoreResult<()> {
        let Some(found) = aggregate::place_step(series, anchor, &self.params) else {
            return Ok(());
        };
        let moved = EventKey {
            kind: EventKind::BlockMoved,
            domain: Some(domain.to_string()),
            asn,
            method: None,
        };
        if self.flapping(&moved) {
            return Ok(());
        }
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
        self.transitioned(&moved);
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
        let mut presence = self.store.network_presence(asn, since).await?;
        let probes = presence.iter().map(|r| r.probe.as_str());
        if let Some(counted) = self.counted(probes).await? {
            presence.retain(|r| counted.contains(&r.probe));
        }
        let not_before = self.not_before();
        let anchors = aggregate::bound_backfill(
            aggregate::anchors(
                t.times
                    .iter()
                    .copied()
                    .chain(presence.iter().map(|r| r.last_at).max()),
            ),
            not_before,
        );
        let decisions = aggregate::replay(&anchors, state, &self.params, |anchor, open| {
            aggregate::shutdown_step(&presence, anchor, open, &self.params)
                .map(|d| aggregate::clamp_decision(d, not_before))
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
                Applied::Yes(decided_at) => {
                    pass.applied += 1;
                    floor = Some(decided_at);
                }
                Applied::Stale => {
                    pass.stale = true;
                    return Ok(());
                }
                // The key stays as it is until its hour has passed; the next evaluation after
                // that decides from the then current data.
                Applied::Suppressed => return Ok(()),
            }
        }
        Ok(())
    }

    /// Apply one decision made from `floor`: refused when the store says the key changed since
    /// `floor` (someone else decided first), suppressed when the key is flapping.
    async fn apply(
        &self,
        key: &EventKey,
        t: &Touch,
        floor: Option<DateTime<Utc>>,
        d: Decision,
    ) -> StoreResult<Applied> {
        let opens = matches!(d, Decision::Open { .. });
        if self.flapping(key) {
            self.suppressed(key, Transition::of(key.kind, opens));
            return Ok(Applied::Suppressed);
        }
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
            return Ok(Applied::Stale);
        };
        self.transitioned(key);
        self.metrics.event(transition);
        match transition {
            Transition::Shutdown => {
                self.metrics
                    .live()
                    .shutdown(event.asn, event.country.clone(), true)
            }
            Transition::ShutdownEnd => self.metrics.live().shutdown(event.asn, None, false),
            _ => {}
        }
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
        Ok(Applied::Yes(decided_at))
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
