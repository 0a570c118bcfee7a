//! Prometheus metrics, on the collector's own registry.
//!
//! Labels are bounded: domain, category, ASN, country, method, status, reason and event kind.
//! Never a probe id, a URL path or an address. Values claimed by probes (ASN, country,
//! category) are validated on ingest; a country label is from the closed ISO 3166-1 alpha-2
//! set ([`country_label`], else `other`), the networks (ASN and country) with series of their
//! own are at most `metrics.max_asn_labels` (the rest are `asn="other"`), and site series per
//! scrape at most `max_site_series`. Random networks and countries from a few probes gave
//! 161,000 series, an 11 MB scrape and 1.24 GiB of memory before these caps (issue #20).
//!
//! Gauges describing current state are rendered at scrape time from the read model kept in
//! memory ([`crate::readmodel::live`]: updated by this process's ingest and event transitions,
//! merged with the store's every `metrics.resync_interval`), so a scrape reads no database and
//! costs O(series) whatever the number of measurements: reset, then refilled, so series of
//! sites and networks that went quiet disappear.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use witness_core::model::{Method, Status};

use crate::aggregate::Params;
use crate::config::MetricsConfig;
use crate::model::Transition;
use crate::readmodel::live::{GaugeInputs, LiveReadModel};
use crate::store::{MeasurementRecord, Store};
use crate::validate::RejectReason;

/// Accepted measurements, by verdict: `{status, method, asn, country}`.
pub const MEASUREMENTS_RECEIVED_TOTAL: &str = "witness_measurements_received_total";
/// Share of recent probes whose latest verdict is blocked with a method:
/// `{domain, category, asn, country, method}`.
pub const SITE_BLOCKED_RATIO: &str = "witness_site_blocked_ratio";
/// Where the censor of a blocked site sits, in hops from the probe, where the located probes
/// agree on one (no series otherwise): `{domain, asn, method}`.
pub const SITE_CENSOR_HOP: &str = "witness_site_censor_hop";
/// Probes that uploaded within the window: `{asn, country}`.
pub const PROBES_ACTIVE: &str = "witness_probes_active";
/// The state gauges' help texts: those four families are written by [`Family`], not the registry.
const SITE_BLOCKED_RATIO_HELP: &str =
    "Share of probes (latest conclusive verdict within the window) \
     that see the site blocked with this method.";
const SITE_CENSOR_HOP_HELP: &str =
    "Hops from the probe to the censor of a blocked site, where the located probes agree on one.";
const PROBES_ACTIVE_HELP: &str = "Probes that uploaded within the window.";
const NETWORK_OFFLINE_HELP: &str = "1 while a shutdown event is open on the network.";

/// Event transitions: `{kind}` = new_block, unblock, shutdown, shutdown_end.
pub const EVENTS_TOTAL: &str = "witness_events_total";
/// Counter: event transitions not raised because their key was flapping (over
/// `aggregation.max_transitions_per_hour`), by `kind` of transition.
pub const EVENT_TRANSITIONS_SUPPRESSED_TOTAL: &str = "witness_event_transitions_suppressed_total";
/// 1 while a shutdown event is open on a network, else 0: `{asn, country}`.
pub const NETWORK_OFFLINE: &str = "witness_network_offline";
/// Time to handle one upload.
pub const INGEST_DURATION_SECONDS: &str = "witness_ingest_duration_seconds";
/// Refused records: `{reason}` from a closed set.
pub const RECORDS_REJECTED_TOTAL: &str = "witness_records_rejected_total";
/// Failed webhook delivery attempts.
pub const WEBHOOK_FAILURES_TOTAL: &str = "witness_webhook_failures_total";

/// Always 1, labelled with the collector's version: `{version}`.
pub const BUILD_INFO: &str = "witness_build_info";

/// The standard process metrics (Linux), from the prometheus crate's process collector.
pub const PROCESS_CPU_SECONDS_TOTAL: &str = "process_cpu_seconds_total";
/// Resident memory of the collector process.
pub const PROCESS_RESIDENT_MEMORY_BYTES: &str = "process_resident_memory_bytes";
/// Virtual memory of the collector process.
pub const PROCESS_VIRTUAL_MEMORY_BYTES: &str = "process_virtual_memory_bytes";
/// Open file descriptors (sockets and the store's files included).
pub const PROCESS_OPEN_FDS: &str = "process_open_fds";
/// The file descriptor limit.
pub const PROCESS_MAX_FDS: &str = "process_max_fds";
/// Start time of the process, seconds since the epoch.
pub const PROCESS_START_TIME_SECONDS: &str = "process_start_time_seconds";
/// OS threads of the collector process.
pub const PROCESS_THREADS: &str = "process_threads";

/// The process metrics served on Linux.
pub const PROCESS: &[&str] = &[
    PROCESS_CPU_SECONDS_TOTAL,
    PROCESS_RESIDENT_MEMORY_BYTES,
    PROCESS_VIRTUAL_MEMORY_BYTES,
    PROCESS_OPEN_FDS,
    PROCESS_MAX_FDS,
    PROCESS_START_TIME_SECONDS,
    PROCESS_THREADS,
];

/// Control requests served from a shared view, or from a measurement already under way.
pub const CONTROL_CACHE_HITS_TOTAL: &str = "witness_control_cache_hits_total";
/// Control measurements made afresh (a URL without a view within its TTL, or a fresh ask).
pub const CONTROL_CACHE_MISSES_TOTAL: &str = "witness_control_cache_misses_total";
/// Control views dropped for room (entries or bytes) before their TTL ran out.
pub const CONTROL_CACHE_EVICTIONS_TOTAL: &str = "witness_control_cache_evictions_total";

/// Fresh control measurements granted (a probe saw a site fail where the shared view said it
/// worked; once per URL per TTL). Each is also a miss.
pub const CONTROL_CACHE_FRESH_TOTAL: &str = "witness_control_cache_fresh_total";
/// Control views held now (per replica: each has its own cache).
pub const CONTROL_CACHE_ENTRIES: &str = "witness_control_cache_entries";
/// Bytes of the control views held now.
pub const CONTROL_CACHE_BYTES: &str = "witness_control_cache_bytes";

/// Every `witness_` metric name, for tests and documentation.
pub const ALL: &[&str] = &[
    MEASUREMENTS_RECEIVED_TOTAL,
    SITE_BLOCKED_RATIO,
    SITE_CENSOR_HOP,
    PROBES_ACTIVE,
    EVENTS_TOTAL,
    EVENT_TRANSITIONS_SUPPRESSED_TOTAL,
    NETWORK_OFFLINE,
    INGEST_DURATION_SECONDS,
    RECORDS_REJECTED_TOTAL,
    WEBHOOK_FAILURES_TOTAL,
    BUILD_INFO,
    CONTROL_CACHE_HITS_TOTAL,
    CONTROL_CACHE_MISSES_TOTAL,
    CONTROL_CACHE_EVICTIONS_TOTAL,
    CONTROL_CACHE_FRESH_TOTAL,
    CONTROL_CACHE_ENTRIES,
    CONTROL_CACHE_BYTES,
];

const UNKNOWN: &str = "unknown";
const OTHER: &str = "other";

/// The officially assigned ISO 3166-1 alpha-2 codes: the closed set of country labels.
const ISO_3166_ALPHA2: &str = "\
AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ BR BS \
BT BV BW BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ DK DM DO DZ EC EE \
EG EH ER ES ET FI FJ FK FM FO FR GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS GT GU GW GY HK HM \
HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE JM JO JP KE KG KH KI KM KN KP KR KW KY KZ LA LB LC \
LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK ML MM MN MO MP MQ MR MS MT MU MV MW MX MY MZ NA \
NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM PN PR PS PT PW PY QA RE RO RS RU RW \
SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV SX SY SZ TC TD TF TG TH TJ TK TL TM TN TO \
TR TT TV TW TZ UA UG UM US UY UZ VA VC VE VG VI VN VU WF WS YE YT ZA ZM ZW";

/// The label of a probe-claimed country: the code when ISO 3166 assigns it, `other` for any
/// other pair of capitals, `unknown` when none is claimed. 249 values at most.
pub fn country_label(country: Option<&str>) -> &'static str {
    let Some(c) = country else {
        return UNKNOWN;
    };
    ISO_3166_ALPHA2
        .split(' ')
        .find(|code| *code == c)
        .unwrap_or(OTHER)
}

/// A network's labels: `(asn, country)`.
type NetworkLabel = (String, &'static str);

/// Which networks get series of their own on the state gauges: the `max` with an open
/// shutdown first, then with the most probes; the others fold into `asn="other"` with their
/// country.
fn gauge_networks(
    probes: &HashMap<(Option<u32>, &'static str), u64>,
    offline: &HashSet<u32>,
    max: usize,
) -> HashSet<(Option<u32>, &'static str)> {
    let mut all: Vec<_> = probes.iter().collect();
    all.sort_by_key(|((asn, country), n)| {
        (
            !asn.is_some_and(|a| offline.contains(&a)),
            std::cmp::Reverse(**n),
            *asn,
            *country,
        )
    });
    all.into_iter().take(max).map(|(k, _)| *k).collect()
}

/// A gauge family written straight to text, as the registry's encoder writes one (help, type,
/// then the series sorted by their label values in label-name order): ~75,000 series of
/// the prometheus crate's vectors cost seconds and hundreds of MB per scrape to reset, refill,
/// gather and encode; these are a sorted map. The labels are the family's in name order.
struct Family<'a> {
    name: &'static str,
    help: &'static str,
    /// Label values in label-name order, and the value.
    series: Vec<(Vec<&'a str>, f64)>,
}

impl<'a> Family<'a> {
    fn new(name: &'static str, help: &'static str) -> Family<'a> {
        Family {
            name,
            help,
            series: Vec::new(),
        }
    }

    /// A series; a later one with the same labels replaces it (as `Gauge::set`).
    fn set(&mut self, labels: Vec<&'a str>, value: f64) {
        self.series.push((labels, value));
    }

    /// The series sorted as the registry sorts them, each label set once: the last `set` of
    /// it, or the sum of its `add`s (`sum`).
    fn sorted(&mut self, sum: bool) {
        // Stable: equal label sets keep their order, so the last one is the last set.
        self.series.sort_by(|a, b| a.0.cmp(&b.0));
        let mut out: Vec<(Vec<&'a str>, f64)> = Vec::with_capacity(self.series.len());
        for (labels, v) in self.series.drain(..) {
            match out.last_mut() {
                Some(last) if last.0 == labels => {
                    last.1 = if sum { last.1 + v } else { v };
                }
                _ => out.push((labels, v)),
            }
        }
        self.series = out;
    }

    /// The family in the text format (call [`Family::sorted`] first).
    fn text(&self) -> String {
        let names: &[&str] = match self.name {
            SITE_BLOCKED_RATIO => &["asn", "category", "country", "domain", "method"],
            SITE_CENSOR_HOP => &["asn", "domain", "method"],
            _ => &["asn", "country"],
        };
        let mut out = String::with_capacity(64 + self.series.len() * 128);
        let _ = writeln!(out, "# HELP {} {}", self.name, self.help);
        let _ = writeln!(out, "# TYPE {} gauge", self.name);
        for (values, v) in &self.series {
            out.push_str(self.name);
            let mut sep = '{';
            for (n, value) in names.iter().zip(values) {
                out.push(sep);
                out.push_str(n);
                out.push_str("=\"");
                escape_label(&mut out, value);
                out.push('"');
                sep = ',';
            }
            let _ = writeln!(out, "}} {v}");
        }
        out
    }
}

/// A label value escaped as the text format wants (`\`, `"`, newline).
fn escape_label(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// The registry's text split into its families: `(name, block)` from each `# HELP` line.
fn family_blocks(text: &str) -> Vec<(&str, &str)> {
    let mut starts: Vec<usize> = text
        .match_indices("# HELP ")
        .filter(|(i, _)| *i == 0 || text.as_bytes()[i - 1] == b'\n')
        .map(|(i, _)| i)
        .collect();
    starts.push(text.len());
    starts
        .windows(2)
        .map(|w| {
            let block = &text[w[0]..w[1]];
            let name = block["# HELP ".len()..]
                .split(' ')
                .next()
                .unwrap_or_default();
            (name, block)
        })
        .collect()
}

/// Failure to produce the `/metrics` page.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// Reading the state gauges failed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// Encoding failed.
    #[error("metrics encoding: {0}")]
    Encode(#[from] prometheus::Error),
}

/// The collector's metrics.
pub struct Metrics {
    registry: Registry,
    received: IntCounterVec,
    events: IntCounterVec,
    suppressed: IntCounterVec,
    /// Time to handle one upload.
    pub ingest_duration: Histogram,
    rejected: IntCounterVec,
    webhook_failures: IntCounter,
    control_views: crate::control::ViewCounters,
    control_cache_entries: IntGauge,
    control_cache_bytes: IntGauge,
    limits: MetricsConfig,
    /// Networks labelled on counters so far, at most `max_asn_labels`.
    network_labels: Mutex<HashSet<(u32, &'static str)>>,
    /// Serialises scrape-time refreshes so concurrent scrapes do not interleave reset/refill.
    refresh: tokio::sync::Mutex<()>,
    /// The read model in memory, which the state gauges are rendered from.
    live: LiveReadModel,
    /// The last render and when it started, for the scrapes that queued behind it.
    last: Mutex<Option<(std::time::Instant, String)>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn register<C: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: C) -> C {
    // Names are constants and registered once on a fresh registry: this cannot collide.
    if let Err(e) = r.register(Box::new(c.clone())) {
        tracing::error!(error = %e, "metric registration failed");
    }
    c
}

/// `witness_build_info` and, on Linux, the process metrics.
fn register_build_and_process(r: &Registry) -> prometheus::Result<()> {
    let build = register(
        r,
        IntGaugeVec::new(
            Opts::new(BUILD_INFO, "Always 1: the collector's version."),
            &["version"],
        )?,
    );
    build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
    #[cfg(target_os = "linux")]
    r.register(Box::new(
        prometheus::process_collector::ProcessCollector::for_self(),
    ))?;
    Ok(())
}

impl Metrics {
    /// Create every metric on a fresh registry.
    pub fn new(limits: MetricsConfig) -> prometheus::Result<Metrics> {
        let r = Registry::new();
        let received = register(
            &r,
            IntCounterVec::new(
                Opts::new(
                    MEASUREMENTS_RECEIVED_TOTAL,
                    "Accepted measurements by verdict.",
                ),
                &["status", "method", "asn", "country"],
            )?,
        );
        let events = register(
            &r,
            IntCounterVec::new(
                Opts::new(EVENTS_TOTAL, "Event transitions since start."),
                &["kind"],
            )?,
        );
        let suppressed = register(
            &r,
            IntCounterVec::new(
                Opts::new(
                    EVENT_TRANSITIONS_SUPPRESSED_TOTAL,
                    "Event transitions not raised because their key was flapping.",
                ),
                &["kind"],
            )?,
        );
        let ingest_duration = register(
            &r,
            Histogram::with_opts(
                HistogramOpts::new(INGEST_DURATION_SECONDS, "Time to handle one upload.").buckets(
                    vec![
                        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                    ],
                ),
            )?,
        );
        let rejected = register(
            &r,
            IntCounterVec::new(
                Opts::new(RECORDS_REJECTED_TOTAL, "Refused records by reason."),
                &["reason"],
            )?,
        );
        let webhook_failures = register(
            &r,
            IntCounter::new(WEBHOOK_FAILURES_TOTAL, "Failed webhook delivery attempts.")?,
        );
        let control_views = crate::control::ViewCounters {
            hits: register(
                &r,
                IntCounter::new(
                    CONTROL_CACHE_HITS_TOTAL,
                    "Control requests served from a shared view.",
                )?,
            ),
            misses: register(
                &r,
                IntCounter::new(
                    CONTROL_CACHE_MISSES_TOTAL,
                    "Control measurements made afresh.",
                )?,
            ),
            evictions: register(
                &r,
                IntCounter::new(
                    CONTROL_CACHE_EVICTIONS_TOTAL,
                    "Control views dropped for room before their TTL ran out.",
                )?,
            ),
            fresh: register(
                &r,
                IntCounter::new(
                    CONTROL_CACHE_FRESH_TOTAL,
                    "Fresh control measurements granted where the view said a failing site worked.",
                )?,
            ),
        };
        let control_cache_entries = register(
            &r,
            IntGauge::new(CONTROL_CACHE_ENTRIES, "Control views held.")?,
        );
        let control_cache_bytes = register(
            &r,
            IntGauge::new(CONTROL_CACHE_BYTES, "Bytes of the control views held.")?,
        );
        register_build_and_process(&r)?;
        // Closed label sets start at zero, so rates and alerts work before the first event.
        for t in Transition::ALL {
            events.with_label_values(&[t.as_str()]);
            suppressed.with_label_values(&[t.as_str()]);
        }
        for reason in RejectReason::ALL {
            rejected.with_label_values(&[reason.as_str()]);
        }
        Ok(Metrics {
            registry: r,
            received,
            events,
            suppressed,
            ingest_duration,
            rejected,
            webhook_failures,
            control_views,
            control_cache_entries,
            control_cache_bytes,
            limits,
            network_labels: Mutex::new(HashSet::new()),
            refresh: tokio::sync::Mutex::new(()),
            live: LiveReadModel::default(),
            last: Mutex::new(None),
        })
    }

    /// The counters of the control's shared views.
    pub fn control_view_counters(&self) -> crate::control::ViewCounters {
        self.control_views.clone()
    }

    /// The size of the control's shared views (`ControlViews::len`), set before a scrape.
    pub fn control_cache_size(&self, (entries, bytes): (usize, usize)) {
        self.control_cache_entries
            .set(i64::try_from(entries).unwrap_or(i64::MAX));
        self.control_cache_bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// The labels of a network on counters: its own for the first `max_asn_labels` networks
    /// seen, `other` (with the country) after.
    fn network_label(&self, asn: Option<u32>, country: Option<&str>) -> NetworkLabel {
        let country = country_label(country);
        let Some(asn) = asn else {
            return (UNKNOWN.to_string(), country);
        };
        let mut seen = match self.network_labels.lock() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        };
        if seen.contains(&(asn, country)) || seen.len() < self.limits.max_asn_labels {
            seen.insert((asn, country));
            (asn.to_string(), country)
        } else {
            (OTHER.to_string(), country)
        }
    }

    /// Count an accepted measurement.
    pub fn measurement_received(
        &self,
        status: Status,
        method: Option<Method>,
        asn: Option<u32>,
        country: Option<&str>,
    ) {
        let (asn, country) = self.network_label(asn, country);
        self.received
            .with_label_values(&[
                status.as_str(),
                method.map_or("none", |m| m.as_str()),
                asn.as_str(),
                country,
            ])
            .inc();
    }

    /// Count an upload's newly stored records into the state gauges (the store committed them).
    pub fn stored<'a>(
        &self,
        probe_id: &str,
        fresh: impl IntoIterator<Item = &'a MeasurementRecord>,
    ) {
        self.live.apply(probe_id, fresh);
    }

    /// Count a refused record.
    pub fn record_rejected(&self, reason: RejectReason) {
        self.rejected.with_label_values(&[reason.as_str()]).inc();
    }

    /// Count an event transition.
    pub fn event(&self, transition: Transition) {
        self.events.with_label_values(&[transition.as_str()]).inc();
    }

    /// Count a transition suppressed on a flapping key.
    pub fn event_suppressed(&self, transition: Transition) {
        self.suppressed
            .with_label_values(&[transition.as_str()])
            .inc();
    }

    /// Count a failed webhook attempt.
    pub fn webhook_failed(&self) {
        self.webhook_failures.inc();
    }

    /// The in-memory read model the state gauges are rendered from.
    pub fn live(&self) -> &LiveReadModel {
        &self.live
    }

    /// Merge the store's read model into the in-memory one (what other replicas ingested), and
    /// drop what left the window. Returns the rows read.
    pub async fn resync(
        &self,
        store: &dyn Store,
        params: &Params,
        now: DateTime<Utc>,
    ) -> Result<usize, RenderError> {
        Ok(self.live.load(store, now - params.window).await?)
    }

    /// Render every metric, the state gauges from the in-memory read model: a scrape reads no
    /// database (but the first of the process, which loads the model), so its cost follows
    /// the series, not the data. Scrapes are serialised, and those that arrive during a render
    /// share the next one.
    pub async fn render(
        &self,
        store: &dyn Store,
        params: &Params,
        now: DateTime<Utc>,
    ) -> Result<String, RenderError> {
        let asked = std::time::Instant::now();
        let _guard = self.refresh.lock().await;
        // Scrapes that queued behind a render share the next one (which started after they
        // asked, so it is as fresh as their own would be): a burst of scrapes costs two renders.
        if let Some((started, text)) = &*self.last.lock().unwrap_or_else(|p| p.into_inner()) {
            if *started >= asked {
                return Ok(text.clone());
            }
        }
        let started = std::time::Instant::now();
        if !self.live.loaded() {
            self.live.load(store, now - params.window).await?;
        }
        let inputs = self.live.inputs(params, now);
        let text = self.fill_and_encode(&inputs)?;
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some((started, text.clone()));
        Ok(text)
    }

    /// Render every metric with the state gauges made of `inputs` (the tests give it
    /// [`GaugeInputs::from_store`], the store's own answer, to compare with [`Metrics::render`]).
    pub async fn render_inputs(&self, inputs: &GaugeInputs) -> Result<String, RenderError> {
        let _guard = self.refresh.lock().await;
        self.fill_and_encode(inputs)
    }

    /// Reset and refill the state gauges from `inputs` (so series of sites and networks that
    /// went quiet vanish), then encode the registry.
    fn fill_and_encode(&self, inputs: &GaugeInputs) -> Result<String, RenderError> {
        let GaugeInputs {
            statuses,
            methods,
            networks,
            shutdowns,
        } = inputs;
        // Label values are borrowed from the inputs; the ASNs' text is made once per site.
        let asn_text: Vec<String> = statuses.iter().map(|s| s.asn.to_string()).collect();
        let mut ratio = Family::new(SITE_BLOCKED_RATIO, SITE_BLOCKED_RATIO_HELP);
        let mut hop = Family::new(SITE_CENSOR_HOP, SITE_CENSOR_HOP_HELP);
        let mut active = Family::new(PROBES_ACTIVE, PROBES_ACTIVE_HELP);
        let mut offline_gauge = Family::new(NETWORK_OFFLINE, NETWORK_OFFLINE_HELP);
        // The censor's hop: only where one is agreed, so its series are at most the blocked
        // sites' (and within the same cap). Labels in name order: asn, domain, method.
        for (s, asn) in statuses
            .iter()
            .zip(&asn_text)
            .filter(|(s, _)| s.censor_hop.is_some())
            .take(self.limits.max_site_series)
        {
            if let (Some(h), Some(m)) = (s.censor_hop, s.method) {
                hop.set(
                    vec![asn.as_str(), s.domain.as_str(), m.as_str()],
                    f64::from(h),
                );
            }
        }

        // Blocked ratio: every method seen blocking in the window, 0 when no probe's latest
        // verdict shows it any more. Labels: asn, category, country, domain, method.
        let mut series = 0usize;
        'sites: for (s, asn) in statuses.iter().zip(&asn_text) {
            let conclusive = s.blocked_probes + s.accessible_probes;
            if conclusive == 0 {
                continue;
            }
            let Some(ms) = methods.get(&(s.domain.clone(), s.asn)) else {
                continue;
            };
            let category = s.category.as_deref().unwrap_or(UNKNOWN);
            let country = country_label(s.country.as_deref());
            for m in ms {
                if series >= self.limits.max_site_series {
                    tracing::warn!(
                        limit = self.limits.max_site_series,
                        "witness_site_blocked_ratio truncated at metrics.max_site_series"
                    );
                    break 'sites;
                }
                series += 1;
                let blocked = s.methods.get(m).copied().unwrap_or(0);
                ratio.set(
                    vec![
                        asn.as_str(),
                        category,
                        country,
                        s.domain.as_str(),
                        m.as_str(),
                    ],
                    blocked as f64 / conclusive as f64,
                );
            }
        }

        // Probes per network, the country of each ASN (its first network's), and the ASNs with
        // an open shutdown; then which networks keep series of their own. Labels: asn, country.
        let mut probes: HashMap<(Option<u32>, &'static str), u64> = HashMap::new();
        let mut country_of: BTreeMap<u32, &'static str> = BTreeMap::new();
        for ((asn, country), n) in networks {
            let country = country_label(country.as_deref());
            *probes.entry((*asn, country)).or_default() += n;
            if let Some(a) = asn {
                country_of.entry(*a).or_insert(country);
            }
        }
        let mut offline: BTreeMap<u32, &'static str> = BTreeMap::new();
        for e in shutdowns {
            let country = match e.country.as_deref() {
                Some(c) => country_label(Some(c)),
                None => country_of.get(&e.asn).copied().unwrap_or(UNKNOWN),
            };
            offline.entry(e.asn).or_insert(country);
            probes.entry((Some(e.asn), country)).or_default();
        }
        let offline_asns: HashSet<u32> = offline.keys().copied().collect();
        let own = gauge_networks(&probes, &offline_asns, self.limits.max_asn_labels);
        // The networks' label text, owned here and borrowed by the two families.
        let mut network_text: BTreeMap<(Option<u32>, &'static str), String> = BTreeMap::new();
        let keys: Vec<(Option<u32>, &'static str)> = probes
            .keys()
            .copied()
            .chain(offline.iter().map(|(a, c)| (Some(*a), *c)))
            .chain(country_of.iter().map(|(a, c)| (Some(*a), *c)))
            .collect();
        for (asn, country) in keys {
            network_text.entry((asn, country)).or_insert_with(|| {
                if !own.contains(&(asn, country)) {
                    OTHER.to_string()
                } else {
                    asn.map_or_else(|| UNKNOWN.to_string(), |a| a.to_string())
                }
            });
        }
        let label = |asn: Option<u32>, country: &'static str| -> Vec<&str> {
            let a = network_text
                .get(&(asn, country))
                .map_or(OTHER, String::as_str);
            vec![a, country]
        };
        for (&(asn, country), &n) in &probes {
            active.set(label(asn, country), n as f64);
        }
        for (&asn, &country) in &country_of {
            offline_gauge.set(label(Some(asn), country), 0.0);
        }
        for (&asn, &country) in &offline {
            offline_gauge.set(label(Some(asn), country), 1.0);
        }
        ratio.sorted(false);
        hop.sorted(false);
        active.sorted(true);
        offline_gauge.sorted(false);

        // The registry's families (counters, histogram, process...) and these four, in name
        // order as the registry writes them.
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out)?;
        let registry = String::from_utf8_lossy(&out);
        let mut blocks: Vec<(&str, std::borrow::Cow<'_, str>)> = family_blocks(&registry)
            .into_iter()
            .map(|(n, b)| (n, std::borrow::Cow::Borrowed(b)))
            .collect();
        for f in [&ratio, &hop, &active, &offline_gauge] {
            if !f.series.is_empty() {
                blocks.push((f.name, std::borrow::Cow::Owned(f.text())));
            }
        }
        blocks.sort_by(|a, b| a.0.cmp(b.0));
        let mut text = String::with_capacity(blocks.iter().map(|b| b.1.len()).sum());
        for (_, b) in blocks {
            text.push_str(&b);
        }
        Ok(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::GaugeVec;

    /// The hand-written families are byte for byte what the prometheus crate's registry and
    /// text encoder write for the same series: label order, series order, values, escaping.
    #[test]
    fn families_are_written_as_the_registry_writes_them() {
        let r = Registry::new();
        let vec = GaugeVec::new(
            Opts::new(SITE_BLOCKED_RATIO, SITE_BLOCKED_RATIO_HELP),
            &["domain", "category", "asn", "country", "method"],
        )
        .unwrap();
        r.register(Box::new(vec.clone())).unwrap();
        let mut family = Family::new(SITE_BLOCKED_RATIO, SITE_BLOCKED_RATIO_HELP);
        let rows = [
            ("b.example", "NEWS", "9198", "KZ", "dns", 0.5),
            ("a.example", "NEWS", "9198", "KZ", "tls", 1.0 / 3.0),
            ("a.example", "unknown", "21299", "other", "http", 0.0),
            ("we\"ird\\na\nme", "POLR", "10", "KZ", "tcp", 1.0),
            ("a.example", "NEWS", "9198", "KZ", "dns", 2.0 / 3.0),
            // Set twice: the last value counts.
            ("b.example", "NEWS", "9198", "KZ", "dns", 0.25),
        ];
        for (domain, category, asn, country, method, v) in rows {
            vec.with_label_values(&[domain, category, asn, country, method])
                .set(v);
            family.set(vec![asn, category, country, domain, method], v);
        }
        family.sorted(false);
        let mut out = Vec::new();
        TextEncoder::new().encode(&r.gather(), &mut out).unwrap();
        assert_eq!(family.text(), String::from_utf8(out).unwrap());

        let r = Registry::new();
        let vec = IntGaugeVec::new(
            Opts::new(PROBES_ACTIVE, PROBES_ACTIVE_HELP),
            &["asn", "country"],
        )
        .unwrap();
        r.register(Box::new(vec.clone())).unwrap();
        let mut family = Family::new(PROBES_ACTIVE, PROBES_ACTIVE_HELP);
        for (asn, country, n) in [("9198", "KZ", 3), ("other", "KZ", 2), ("other", "KZ", 5)] {
            vec.with_label_values(&[asn, country]).add(n);
            family.set(vec![asn, country], n as f64);
        }
        family.sorted(true);
        let mut out = Vec::new();
        TextEncoder::new().encode(&r.gather(), &mut out).unwrap();
        assert_eq!(family.text(), String::from_utf8(out).unwrap());
    }

    #[test]
    fn registry_text_splits_into_families_by_help_line() {
        let text = "# HELP a_total A.\n# TYPE a_total counter\na_total 1\n\
                    # HELP b B with # HELP inside.\n# TYPE b gauge\nb 2\n";
        let blocks = family_blocks(text);
        assert_eq!(
            blocks,
            vec![
                (
                    "a_total",
                    "# HELP a_total A.\n# TYPE a_total counter\na_total 1\n"
                ),
                ("b", "# HELP b B with # HELP inside.\n# TYPE b gauge\nb 2\n"),
            ]
        );
    }
}
