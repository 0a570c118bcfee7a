//! The control service: the probe's own measurement code run from the collector's vantage point.
//!
//! The calls into the probe crate are [`run_control`] and [`measure_target`], so the signatures
//! live in one place. Around them: the shared views ([`ControlViews`], one measurement per URL
//! per TTL, single flight), fair queueing of the measurements ([`FairSlots`], per probe and
//! per client address), and the per-probe hourly budgets of bytes and time ([`HourBudget`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::IntCounter;
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use witness_core::checks::MeasureConfig;
use witness_core::model::{ControlRequest, ControlResponse};
use witness_core::spec::ConfigError;

pub use witness_core::control::{
    bytes_read, check_target, ControlRefusal, ControlServiceConfig, ControlTarget,
};

use crate::config::ControlConfig;

/// A `[control]` section the control service cannot run with; the message names the key.
#[derive(Debug, thiserror::Error)]
pub enum ControlConfigError {
    /// `control.resolver` is not a resolver address.
    #[error("control.resolver: {0}")]
    Resolver(ConfigError),
    /// A file of `control.extra_ca_files` could not be read as certificates.
    #[error("control.extra_ca_files: {0}")]
    ExtraCaFile(ConfigError),
    /// `control.step_timeout_secs` is outside what a measurement step may take.
    #[error("control.step_timeout_secs: {0} is out of range; use 0.1 to 120")]
    StepTimeout(f64),
}

/// Build the measurement configuration of the control from `[control]`.
pub fn service_config(cfg: &ControlConfig) -> Result<ControlServiceConfig, ControlConfigError> {
    let resolver =
        witness_core::spec::parse_resolver(&cfg.resolver).map_err(ControlConfigError::Resolver)?;
    let mut extra_cas = Vec::new();
    for f in &cfg.extra_ca_files {
        extra_cas
            .extend(witness_core::spec::load_ca_file(f).map_err(ControlConfigError::ExtraCaFile)?);
    }
    let in_range = cfg.step_timeout_secs > 0.0 && cfg.step_timeout_secs <= 120.0;
    if !in_range {
        return Err(ControlConfigError::StepTimeout(cfg.step_timeout_secs));
    }
    let measure = MeasureConfig {
        resolver,
        extra_cas,
        timeout: std::time::Duration::from_secs_f64(cfg.step_timeout_secs),
        source_address: cfg.source_address,
        // A redirect's body is never read, and the chain is short: the control is not a
        // downloader for whoever holds a token (issue #20, item 11).
        redirect_body_cap: 0,
        max_redirects: cfg.max_redirects,
        ..MeasureConfig::default()
    }
    .with_lab_public(cfg.lab_public_ranges.clone());
    Ok(ControlServiceConfig {
        measure,
        allow_private: cfg.allow_private,
        allowed_ports: cfg.allowed_ports.clone(),
    })
}

/// Measure `req.url` for a probe. Refusals (bad URL, private target) are the client's problem;
/// see the handler for how each maps to a status.
pub async fn run_control(
    req: &ControlRequest,
    cfg: &ControlServiceConfig,
) -> Result<ControlResponse, ControlRefusal> {
    witness_core::control::serve_control(req, cfg).await
}

/// Measure a checked URL (the control's own resolution only).
pub async fn measure_target(
    target: &ControlTarget,
    cfg: &ControlServiceConfig,
) -> Result<ControlResponse, ControlRefusal> {
    witness_core::control::measure_target(target, cfg).await
}

// ---------------------------------------------------------------------------------------------
// Shared views.

/// One control measurement, as served: kept serialised, so serving it costs a copy, not a
/// serialisation.
#[derive(Debug)]
pub struct View {
    /// The [`ControlResponse`] as JSON, without `age_secs` (added when served).
    pub json: String,
    /// When it was measured.
    pub measured: Instant,
}

impl View {
    /// A view of `response`, measured now.
    pub fn new(response: &ControlResponse) -> Self {
        View {
            json: serde_json::to_string(response).unwrap_or_else(|_| "{}".into()),
            measured: Instant::now(),
        }
    }

    /// Whole seconds since it was measured.
    pub fn age_secs(&self) -> u64 {
        self.measured.elapsed().as_secs()
    }

    /// The response's JSON with its age, as served now.
    pub fn served_json(&self) -> String {
        let body = self.json.strip_suffix('}').unwrap_or(&self.json);
        format!("{body},\"age_secs\":{}}}", self.age_secs())
    }
}

/// The counters of the shared views.
#[derive(Clone, Debug)]
pub struct ViewCounters {
    /// Served from a view (or from a measurement another request had under way).
    pub hits: IntCounter,
    /// Measured afresh.
    pub misses: IntCounter,
    /// Dropped for room (entries or bytes), before their TTL ran out.
    pub evictions: IntCounter,
    /// Fresh measurements granted to a probe that saw a site fail where the view said it
    /// worked (once per URL per TTL; each is also a miss).
    pub fresh: IntCounter,
}

enum Entry {
    Ready {
        view: Arc<View>,
        seq: u64,
        /// A fresh measurement was granted for this URL within this view's TTL.
        fresh_granted: bool,
    },
    Pending {
        id: u64,
        rx: watch::Receiver<Option<Arc<View>>>,
    },
}

#[derive(Default)]
struct ViewState {
    map: HashMap<String, Entry>,
    /// Ready entries by insertion order: the oldest goes first when room is needed (with one
    /// TTL for all, also the first to expire).
    order: BTreeMap<u64, String>,
    seq: u64,
    bytes: usize,
}

impl ViewState {
    fn remove_ready(&mut self, key: &str) {
        if let Some(Entry::Ready { view, seq, .. }) = self.map.get(key) {
            let (len, seq) = (view.json.len(), *seq);
            self.bytes -= len;
            self.order.remove(&seq);
            self.map.remove(key);
        }
    }
}

/// The control's shared view per URL: measured once per TTL, served to every probe asking
/// within it. Concurrent requests for a URL wait for the one measurement under way (single
/// flight). Only the control's own measurements enter (see [`measure_target`]). Bounded in
/// entries and bytes.
pub struct ControlViews {
    ttl: Duration,
    max_entries: usize,
    max_bytes: usize,
    counters: ViewCounters,
    state: Mutex<ViewState>,
}

/// What [`ControlViews::lookup`] found.
pub enum Lookup {
    /// A view within its TTL.
    Hit(Arc<View>),
    /// Another request is measuring the URL: wait for its view (`None` at the end means it
    /// gave up; look again).
    Wait(watch::Receiver<Option<Arc<View>>>),
    /// Nobody is: measure it, and hand the view to [`Leader::finish`].
    Lead(Leader),
}

/// The request that measures a URL for everyone asking meanwhile. Dropped without
/// [`finish`](Leader::finish), it lets the waiters look again.
pub struct Leader {
    views: Arc<ControlViews>,
    key: String,
    id: u64,
    fresh: bool,
    tx: watch::Sender<Option<Arc<View>>>,
}

impl ControlViews {
    /// Views kept `ttl`, at most `max_entries` of them and `max_bytes` of JSON.
    pub fn new(
        ttl: Duration,
        max_entries: usize,
        max_bytes: usize,
        counters: ViewCounters,
    ) -> Self {
        ControlViews {
            ttl,
            max_entries,
            max_bytes,
            counters,
            state: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ViewState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Views held, and their bytes.
    pub fn len(&self) -> (usize, usize) {
        let st = self.lock();
        (st.order.len(), st.bytes)
    }

    /// The view of `key`, or who measures it. `fresh` asks for a new measurement of a URL
    /// whose view is within its TTL: granted once per view (the old view is served to others
    /// meanwhile), otherwise the view is served.
    pub fn lookup(self: &Arc<Self>, key: &str, fresh: bool) -> Lookup {
        let mut st = self.lock();
        let mut fresh_lead = false;
        match st.map.get_mut(key) {
            Some(Entry::Ready {
                view,
                fresh_granted,
                ..
            }) if view.measured.elapsed() < self.ttl => {
                if !fresh || *fresh_granted {
                    self.counters.hits.inc();
                    return Lookup::Hit(view.clone());
                }
                *fresh_granted = true;
                fresh_lead = true;
                self.counters.fresh.inc();
            }
            Some(Entry::Pending { rx, .. }) => {
                self.counters.hits.inc();
                return Lookup::Wait(rx.clone());
            }
            _ => {}
        }
        st.seq += 1;
        let id = st.seq;
        let (tx, rx) = watch::channel(None);
        if !fresh_lead {
            // Expired (or absent): the waiters wait for the new one.
            st.remove_ready(key);
            st.map.insert(key.to_string(), Entry::Pending { id, rx });
        }
        Lookup::Lead(Leader {
            views: self.clone(),
            key: key.to_string(),
            id,
            fresh: fresh_lead,
            tx,
        })
    }
}

impl Leader {
    /// Store the measured view and hand it to the waiters.
    pub fn finish(self, view: View) -> Arc<View> {
        let view = Arc::new(view);
        let views = self.views.clone();
        let mut st = views.lock();
        views.counters.misses.inc();
        let ours = match st.map.get(&self.key) {
            Some(Entry::Pending { id, .. }) => *id == self.id,
            Some(Entry::Ready { .. }) => self.fresh,
            None => true,
        };
        if ours {
            st.remove_ready(&self.key);
            st.seq += 1;
            let seq = st.seq;
            st.bytes += view.json.len();
            st.order.insert(seq, self.key.clone());
            st.map.insert(
                self.key.clone(),
                Entry::Ready {
                    view: view.clone(),
                    seq,
                    fresh_granted: self.fresh,
                },
            );
            while st.order.len() > views.max_entries || st.bytes > views.max_bytes {
                let Some((_, key)) = st.order.pop_first() else {
                    break;
                };
                if let Some(Entry::Ready { view, .. }) = st.map.remove(&key) {
                    st.bytes -= view.json.len();
                    views.counters.evictions.inc();
                }
            }
        }
        let _ = self.tx.send(Some(view.clone()));
        drop(st);
        view
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        let mut st = self.views.lock();
        if matches!(st.map.get(&self.key), Some(Entry::Pending { id, .. }) if *id == self.id) {
            st.map.remove(&self.key);
        }
        // The sender drops with us: waiters still waiting see the end and look again.
    }
}

// ---------------------------------------------------------------------------------------------
// Fair queueing.

/// Waiters queued at most per probe (four times that per client address): beyond, a URL is
/// refused at once (its batch line says so) rather than held. A probe sends up to eight
/// batches of 100 at once; only URLs without a view queue, one per distinct URL.
pub const MAX_QUEUED_PER_PROBE: usize = 10 * witness_core::model::MAX_CONTROL_BATCH;

/// Control measurements in flight: `total` at once, at most `per_probe` for one probe token
/// and `per_client` for one client address (all its tokens together). A request over its
/// share waits in a queue instead of being refused; a freed slot goes to the waiter whose
/// client address, then probe, holds the fewest slots (oldest first among equals), so no
/// probe, and no client with several tokens, can hold the others' share.
#[derive(Debug)]
pub struct FairSlots {
    total: usize,
    per_probe: usize,
    per_client: usize,
    state: Mutex<FairState>,
}

#[derive(Debug, Default)]
struct FairState {
    running: usize,
    probes: HashMap<String, usize>,
    clients: HashMap<String, usize>,
    queue: Vec<Waiter>,
    next_id: u64,
}

#[derive(Debug)]
struct Waiter {
    id: u64,
    probe: String,
    client: String,
    tx: oneshot::Sender<()>,
}

/// A measurement slot; released on drop.
#[derive(Debug)]
pub struct FairPermit {
    slots: Arc<FairSlots>,
    probe: String,
    client: String,
}

/// Why no slot came.
#[derive(Debug, PartialEq, Eq)]
pub enum NoSlot {
    /// Waited the whole bound.
    Timeout,
    /// The probe (or its client address) already has [`MAX_QUEUED_PER_PROBE`] waiting.
    QueueFull,
}

impl FairState {
    fn held(map: &HashMap<String, usize>, key: &str) -> usize {
        map.get(key).copied().unwrap_or(0)
    }

    fn take(&mut self, probe: &str, client: &str) {
        self.running += 1;
        *self.probes.entry(probe.to_string()).or_default() += 1;
        *self.clients.entry(client.to_string()).or_default() += 1;
    }

    fn give_back(&mut self, probe: &str, client: &str) {
        self.running = self.running.saturating_sub(1);
        for (map, key) in [(&mut self.probes, probe), (&mut self.clients, client)] {
            if let Some(n) = map.get_mut(key) {
                *n -= 1;
                if *n == 0 {
                    map.remove(key);
                }
            }
        }
    }

    fn dispatch(&mut self, total: usize, per_probe: usize, per_client: usize) {
        while self.running < total {
            let best = self
                .queue
                .iter()
                .enumerate()
                .filter(|(_, w)| {
                    Self::held(&self.probes, &w.probe) < per_probe
                        && Self::held(&self.clients, &w.client) < per_client
                })
                .min_by_key(|(_, w)| {
                    (
                        Self::held(&self.clients, &w.client),
                        Self::held(&self.probes, &w.probe),
                        w.id,
                    )
                })
                .map(|(i, _)| i);
            let Some(i) = best else { break };
            let w = self.queue.remove(i);
            if w.tx.send(()).is_ok() {
                self.take(&w.probe, &w.client);
            }
        }
    }
}

impl FairSlots {
    /// `total` slots, `per_probe` for one probe and `per_client` for one client address.
    pub fn new(total: usize, per_probe: usize, per_client: usize) -> Self {
        FairSlots {
            total,
            per_probe,
            per_client,
            state: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FairState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Measurements running now.
    pub fn running(&self) -> usize {
        self.lock().running
    }

    /// A slot for `probe` from `client`, waiting in the fair queue at most `wait`.
    pub async fn acquire(
        self: &Arc<Self>,
        probe: &str,
        client: &str,
        wait: Duration,
    ) -> Result<FairPermit, NoSlot> {
        let (tx, mut rx) = oneshot::channel();
        let id = {
            let mut st = self.lock();
            let queued_probe = st.queue.iter().filter(|w| w.probe == probe).count();
            let queued_client = st.queue.iter().filter(|w| w.client == client).count();
            if queued_probe >= MAX_QUEUED_PER_PROBE || queued_client >= 4 * MAX_QUEUED_PER_PROBE {
                return Err(NoSlot::QueueFull);
            }
            st.next_id += 1;
            let id = st.next_id;
            st.queue.push(Waiter {
                id,
                probe: probe.to_string(),
                client: client.to_string(),
                tx,
            });
            st.dispatch(self.total, self.per_probe, self.per_client);
            id
        };
        let mut guard = QueueGuard {
            slots: self,
            id,
            probe,
            client,
            done: false,
        };
        let granted = match tokio::time::timeout(wait, &mut rx).await {
            Ok(Ok(())) => true,
            _ => {
                let mut st = self.lock();
                match st.queue.iter().position(|w| w.id == id) {
                    Some(i) => {
                        st.queue.remove(i);
                        false
                    }
                    // Granted between the timeout and the lock.
                    None => true,
                }
            }
        };
        guard.done = true;
        if granted {
            Ok(FairPermit {
                slots: self.clone(),
                probe: probe.to_string(),
                client: client.to_string(),
            })
        } else {
            Err(NoSlot::Timeout)
        }
    }

    fn release(&self, probe: &str, client: &str) {
        let mut st = self.lock();
        st.give_back(probe, client);
        st.dispatch(self.total, self.per_probe, self.per_client);
    }
}

/// Leaves the queue when an acquire is cancelled, giving back a slot granted meanwhile.
struct QueueGuard<'a> {
    slots: &'a FairSlots,
    id: u64,
    probe: &'a str,
    client: &'a str,
    done: bool,
}

impl Drop for QueueGuard<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut st = self.slots.lock();
        if let Some(i) = st.queue.iter().position(|w| w.id == self.id) {
            st.queue.remove(i);
        } else {
            st.give_back(self.probe, self.client);
            st.dispatch(
                self.slots.total,
                self.slots.per_probe,
                self.slots.per_client,
            );
        }
    }
}

impl Drop for FairPermit {
    fn drop(&mut self) {
        self.slots.release(&self.probe, &self.client);
    }
}

// ---------------------------------------------------------------------------------------------
// Hourly budgets (bytes read, measurement time).

/// Most probes tracked by an [`HourBudget`]; spent windows are dropped first when full.
const MAX_BUDGET_KEYS: usize = 100_000;

/// What the control may spend for one probe per hour, in units of what it protects: bytes read
/// from sites, or milliseconds of measurement slots (fixed windows of an hour from the probe's
/// first measurement). Checked before a measurement and charged after it, so one measurement
/// may overrun by at most its own bound (one body and its headers; `timeout_secs`).
#[derive(Debug)]
pub struct HourBudget {
    per_hour: u64,
    map: Mutex<HashMap<String, (Instant, u64)>>,
}

impl HourBudget {
    /// `per_hour` units per key.
    pub fn new(per_hour: u64) -> Self {
        HourBudget {
            per_hour,
            map: Mutex::default(),
        }
    }

    /// `Ok` while `key` has units left, else how long until its window ends.
    pub fn check(&self, key: &str) -> Result<(), Duration> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(key) {
            Some((start, used)) if *used >= self.per_hour => {
                let end = *start + Duration::from_secs(3600);
                match end.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => Err(left),
                    _ => Ok(()),
                }
            }
            _ => Ok(()),
        }
    }

    /// Count `units` against `key`.
    pub fn charge(&self, key: &str, units: u64) {
        let now = Instant::now();
        let hour = Duration::from_secs(3600);
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_BUDGET_KEYS && !map.contains_key(key) {
            map.retain(|_, (start, _)| now.duration_since(*start) < hour);
        }
        let e = map.entry(key.to_string()).or_insert((now, 0));
        if now.duration_since(e.0) >= hour {
            *e = (now, 0);
        }
        e.1 = e.1.saturating_add(units);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counters() -> ViewCounters {
        ViewCounters {
            hits: IntCounter::new("h", "h").unwrap(),
            misses: IntCounter::new("m", "m").unwrap(),
            evictions: IntCounter::new("e", "e").unwrap(),
            fresh: IntCounter::new("f", "f").unwrap(),
        }
    }

    fn response(marker: &str) -> ControlResponse {
        ControlResponse {
            software: witness_core::model::Software::default(),
            measured_at: chrono::Utc::now(),
            dns: vec![],
            tcp: vec![],
            tls: vec![],
            http: vec![],
            age_secs: Some(0).filter(|_| marker.is_empty()),
        }
    }

    fn lead(views: &Arc<ControlViews>, key: &str, fresh: bool) -> Leader {
        match views.lookup(key, fresh) {
            Lookup::Lead(l) => l,
            Lookup::Hit(_) => panic!("{key}: a hit, not a lead"),
            Lookup::Wait(_) => panic!("{key}: a wait, not a lead"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn views_measure_once_per_ttl_with_one_flight_and_one_fresh_look() {
        let c = counters();
        let views = Arc::new(ControlViews::new(
            Duration::from_secs(600),
            100,
            1 << 20,
            c.clone(),
        ));
        let leader = lead(&views, "k", false);
        // A second request while the first measures waits for it.
        let Lookup::Wait(mut rx) = views.lookup("k", false) else {
            panic!("no single flight")
        };
        let first = leader.finish(View::new(&response("a")));
        let waited = rx.wait_for(Option::is_some).await.unwrap().clone().unwrap();
        assert!(Arc::ptr_eq(&first, &waited));
        tokio::time::advance(Duration::from_secs(120)).await;
        let Lookup::Hit(v) = views.lookup("k", false) else {
            panic!("no hit within the TTL")
        };
        assert_eq!(v.age_secs(), 120);
        assert!(
            v.served_json().ends_with(",\"age_secs\":120}"),
            "{}",
            v.served_json()
        );
        // One fresh look per view; the old view is served meanwhile and afterwards.
        let fresh = lead(&views, "k", true);
        assert!(matches!(views.lookup("k", false), Lookup::Hit(_)));
        assert!(matches!(views.lookup("k", true), Lookup::Hit(_)));
        fresh.finish(View::new(&response("b")));
        assert!(
            matches!(views.lookup("k", true), Lookup::Hit(_)),
            "one per TTL"
        );
        // Past the TTL: measured again.
        tokio::time::advance(Duration::from_secs(601)).await;
        drop(lead(&views, "k", false));
        // A leader that gives up lets the next caller lead.
        drop(lead(&views, "k", false));
        assert_eq!((c.misses.get(), c.evictions.get()), (2, 0));
        assert_eq!(c.hits.get(), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn views_are_bounded_in_entries_and_bytes() {
        let c = counters();
        let one = View::new(&response("x")).json.len();
        let views = Arc::new(ControlViews::new(
            Duration::from_secs(600),
            3,
            10 * one,
            c.clone(),
        ));
        for k in ["a", "b", "c", "d"] {
            lead(&views, k, false).finish(View::new(&response("x")));
        }
        assert_eq!(views.len(), (3, 3 * one));
        assert_eq!(c.evictions.get(), 1);
        assert!(
            matches!(views.lookup("a", false), Lookup::Lead(_)),
            "oldest evicted"
        );
        let views = Arc::new(ControlViews::new(
            Duration::from_secs(600),
            100,
            2 * one,
            c.clone(),
        ));
        for k in ["a", "b", "c"] {
            lead(&views, k, false).finish(View::new(&response("x")));
        }
        assert_eq!(views.len(), (2, 2 * one));
    }

    #[tokio::test(start_paused = true)]
    async fn fair_slots_share_by_client_address_then_probe() {
        let slots = Arc::new(FairSlots::new(4, 4, 2));
        let wait = Duration::from_secs(5);
        // One client with four tokens gets its share (2), not every slot.
        let mut held = Vec::new();
        for t in ["t1", "t2"] {
            held.push(slots.acquire(t, "attacker", wait).await.unwrap());
        }
        let refused = slots
            .acquire("t3", "attacker", Duration::from_millis(10))
            .await;
        assert_eq!(refused.unwrap_err(), NoSlot::Timeout);
        // Another client is served at once.
        let honest = slots.acquire("p", "honest", wait).await.unwrap();
        assert_eq!(slots.running(), 3);
        // Queued: the attacker's third and another honest probe's; a freed slot goes to the
        // client holding fewer.
        let s2 = slots.clone();
        let attacker = tokio::spawn(async move { s2.acquire("t4", "attacker", wait).await });
        let s3 = slots.clone();
        let honest2 = tokio::spawn(async move { s3.acquire("q", "honest2", wait).await });
        tokio::task::yield_now().await;
        let h2 = honest2.await.unwrap().unwrap();
        drop(held.pop());
        let a = attacker.await.unwrap().unwrap();
        assert_eq!(slots.running(), 4);
        drop((a, h2, honest, held));
        assert_eq!(slots.running(), 0);
        assert!(slots.lock().probes.is_empty() && slots.lock().clients.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn fair_slots_survive_cancelled_waiters() {
        let slots = Arc::new(FairSlots::new(1, 1, 1));
        let first = slots
            .acquire("a", "x", Duration::from_secs(1))
            .await
            .unwrap();
        let s2 = slots.clone();
        let waiter =
            tokio::spawn(async move { s2.acquire("b", "y", Duration::from_secs(100)).await });
        tokio::task::yield_now().await;
        waiter.abort();
        let _ = waiter.await;
        assert!(slots.lock().queue.is_empty());
        drop(first);
        assert_eq!(slots.running(), 0);
        assert!(slots
            .acquire("c", "z", Duration::from_secs(1))
            .await
            .is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn byte_budget_refuses_when_spent_until_the_hour_ends() {
        let b = HourBudget::new(1000);
        assert!(b.check("p").is_ok());
        b.charge("p", 600);
        assert!(b.check("p").is_ok());
        b.charge("p", 600);
        let wait = b.check("p").unwrap_err();
        assert!(wait <= Duration::from_secs(3600) && wait > Duration::from_secs(3590));
        assert!(b.check("q").is_ok());
        tokio::time::advance(Duration::from_secs(3601)).await;
        assert!(b.check("p").is_ok());
    }

    #[test]
    fn default_control_config_builds() {
        let c = service_config(&ControlConfig::default()).unwrap();
        assert!(!c.allow_private);
        let bad = ControlConfig {
            resolver: "not-an-address".into(),
            ..ControlConfig::default()
        };
        assert!(matches!(
            service_config(&bad),
            Err(ControlConfigError::Resolver(_))
        ));
        let e = service_config(&bad).unwrap_err().to_string();
        assert!(e.starts_with("control.resolver: "), "{e}");
    }
}
