//! The measurement engine: runs the steps for one target, and many targets concurrently.
//!
//! The same [`Engine::observe`] serves the probe and the control service, so what the control
//! reports is measured exactly the way the probe measures.
//!
//! One concern per file: this one holds the engine and [`Engine::run`]; `measure` the
//! per-target pipeline; `fetch` DNS entry and the redirect chain; `evidence` the extra local
//! evidence for a failed target; `connectivity` the connectivity check and reference
//! transfers; `localise` localisation and post-processing (verdicts, the last scrub).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;

use crate::checks::dns::ControlResolvers;
use crate::checks::tls::TlsContext;
use crate::checks::MeasureConfig;
use crate::control::client::ControlClient;
use crate::error::SetupError;
use crate::model::{
    ConnectivitySummary, DnsObservation, HttpObservation, Measurement, ProbeNetwork,
    TcpObservation, TlsObservation,
};
use crate::scrub::OwnAddresses;
use crate::slots::{self, Slots};
use crate::targets::apps::AppsList;
use crate::targets::Target;

pub mod apps;
mod connectivity;
mod evidence;
mod fetch;
mod localise;
mod measure;
#[cfg(test)]
mod tests;

pub use localise::{finalize_verdicts, scrub_measurement};

/// The observations of one target, without verdict: what both the probe and the control make.
#[derive(Clone, Debug, Default)]
pub struct Observations {
    /// DNS queries.
    pub dns: Vec<DnsObservation>,
    /// TCP connects.
    pub tcp: Vec<TcpObservation>,
    /// TLS handshakes.
    pub tls: Vec<TlsObservation>,
    /// HTTP hops.
    pub http: Vec<HttpObservation>,
}

/// Everything a run needs, built once.
#[derive(Clone, Debug)]
pub struct Engine {
    /// Step configuration.
    pub cfg: Arc<MeasureConfig>,
    tls: TlsContext,
    control_resolvers: ControlResolvers,
    control: Option<ControlClient>,
    /// The probe's own addresses, scrubbed from records.
    pub own: Arc<OwnAddresses>,
    /// The probe's network, recorded in every measurement.
    probe: ProbeNetwork,
    /// When false, the engine refuses to connect to bogon addresses (the control service's
    /// default: it must not become a door into its own private network).
    allow_bogon_targets: bool,
    /// Anchors for the connectivity check: (host, port).
    anchors: Vec<(String, u16)>,
}

/// Builds an [`Engine`]: everything is set before the engine exists, so nothing assigns its
/// fields afterwards. Switches that open the engine to private and reserved addresses are off
/// unless named through [`EngineBuilder::danger_allow_bogon_targets`], as rustls names its
/// `danger` settings.
#[derive(Debug)]
pub struct EngineBuilder {
    cfg: MeasureConfig,
    control: Option<ControlClient>,
    interception_spki: Vec<(String, String)>,
    probe: ProbeNetwork,
    anchors: Vec<(String, u16)>,
    allow_bogon_targets: bool,
}

impl EngineBuilder {
    /// A builder for an engine with this step configuration, no control service, no anchors,
    /// an unknown probe network, and bogon targets refused.
    pub fn new(cfg: MeasureConfig) -> Self {
        EngineBuilder {
            cfg,
            control: None,
            interception_spki: Vec::new(),
            probe: ProbeNetwork::default(),
            anchors: Vec::new(),
            allow_bogon_targets: false,
        }
    }

    /// Ask this control service for its view of each target (`None`: no control).
    pub fn control(mut self, control: Option<ControlClient>) -> Self {
        self.control = control;
        self
    }

    /// Use these interception keys in addition to the built-in names.
    pub fn interception_spki(mut self, keys: Vec<(String, String)>) -> Self {
        self.interception_spki = keys;
        self
    }

    /// The probe's network, recorded in every measurement.
    pub fn probe_network(mut self, probe: ProbeNetwork) -> Self {
        self.probe = probe;
        self
    }

    /// Anchors for the connectivity check: (host, port).
    pub fn anchors(mut self, anchors: Vec<(String, u16)>) -> Self {
        self.anchors = anchors;
        self
    }

    /// DANGER: connect to private, loopback and other bogon addresses. A probe needs it (a
    /// censor's resolver may answer a private address that serves the blockpage, and labs and
    /// tests run on 127.0.0.0/8); a control service must not have it outside a lab, or it
    /// becomes a door into its own network for whoever holds a token.
    pub fn danger_allow_bogon_targets(mut self, allow: bool) -> Self {
        self.allow_bogon_targets = allow;
        self
    }

    /// Build the engine; fails only on configuration errors (e.g. an unusable control
    /// resolver).
    pub fn build(self) -> Result<Engine, SetupError> {
        let tls = TlsContext::new(&self.cfg)?.with_interception_spki(self.interception_spki);
        let control_resolvers = ControlResolvers::new(&self.cfg.control_resolvers, &self.cfg)?;
        Ok(Engine {
            cfg: Arc::new(self.cfg),
            tls,
            control_resolvers,
            control: self.control,
            own: Arc::new(OwnAddresses::default()),
            probe: self.probe,
            allow_bogon_targets: self.allow_bogon_targets,
            anchors: self.anchors,
        })
    }
}

/// The outcome of a whole run.
#[derive(Debug)]
pub struct RunOutcome {
    /// The connectivity check.
    pub connectivity: ConnectivitySummary,
    /// One measurement per target, in target order, with final verdicts.
    pub measurements: Vec<Measurement>,
}

impl Engine {
    /// A builder: see [`EngineBuilder`].
    pub fn builder(cfg: MeasureConfig) -> EngineBuilder {
        EngineBuilder::new(cfg)
    }

    /// Measure every target with at most `concurrency` at once; `progress` is called after
    /// each target with (done, total, the measurement).
    pub async fn run(
        &self,
        targets: Vec<Target>,
        concurrency: usize,
        progress: impl Fn(usize, usize, &Measurement) + Send + Sync,
    ) -> RunOutcome {
        self.run_with_apps(targets, None, concurrency, progress)
            .await
    }

    /// [`Engine::run`], then the app and tool tests of `apps` (after the websites, with the
    /// same connectivity check); their records follow the websites'.
    pub async fn run_with_apps(
        &self,
        targets: Vec<Target>,
        apps: Option<&AppsList>,
        concurrency: usize,
        progress: impl Fn(usize, usize, &Measurement) + Send + Sync,
    ) -> RunOutcome {
        // Our own addresses, before anything is recorded: the interfaces' and the source.
        self.own.add_local_interfaces();
        if let Some(ip) = self.cfg.source_address {
            self.own.declare(ip);
        }
        let mut connectivity = self.check_connectivity().await;
        let total = targets.len();
        let mut measurements: Vec<(usize, Measurement)> = Vec::with_capacity(total);
        let mut groups = std::collections::HashMap::new();
        if connectivity.offline {
            for (i, t) in targets.iter().enumerate() {
                let m = self.offline_measurement(t, &connectivity);
                progress(i + 1, total, &m);
                measurements.push((i, m));
            }
        } else {
            let conn = &connectivity;
            // `concurrency` targets work at once; targets waiting out a stall give their slot
            // away, up to `in_flight` targets in all (see `slots`).
            let slots = Slots::new(concurrency);
            // The control is asked for the whole run in a few batches up front; each target
            // then waits for its URL's line instead of making a request of its own.
            let urls: Vec<String> = targets.iter().map(|t| t.url.clone()).collect();
            let prefetch = self.control.as_ref().map(|c| c.prefetch(&urls));
            // Blocked targets are localised as soon as they are measured, alongside the run.
            let (found, found_rx) = tokio::sync::mpsc::unbounded_channel();
            let localising = self.cfg.path.enabled;
            let measure_all = async {
                // Owned here, so the localisations learn the run has ended when this does.
                let found = found;
                let mut stream = futures::stream::iter(targets.into_iter().enumerate())
                    .map(|(i, t)| {
                        let conn = conn.clone();
                        let slots = &slots;
                        async move { (i, slots.run(self.measure(&t, conn)).await) }
                    })
                    .buffer_unordered(slots::in_flight(concurrency));
                let mut done = 0;
                while let Some((i, m)) = stream.next().await {
                    done += 1;
                    progress(done, total, &m);
                    if localising {
                        if let Some(plan) = self.live_plan(&m) {
                            let _ = found.send((i, plan));
                        }
                    }
                    measurements.push((i, m));
                }
            };
            let measure_all = async {
                let Some(prefetch) = prefetch else {
                    return measure_all.await;
                };
                let (main, prefetch) = (std::pin::pin!(measure_all), std::pin::pin!(prefetch));
                // The batches end first, or the run does (then their rest is not needed).
                if let futures::future::Either::Right(((), main)) =
                    futures::future::select(main, prefetch).await
                {
                    main.await;
                }
            };
            // The line's reference transfers run alongside the targets: they cost the run no
            // time, and the verdicts are decided once everything is in.
            let localise = async {
                if localising {
                    self.localise_groups(found_rx).await
                } else {
                    Default::default()
                }
            };
            let ((), references, located) =
                tokio::join!(measure_all, self.reference_transfers(), localise);
            connectivity.references = references;
            groups = located;
        }
        measurements.sort_by_key(|(i, _)| *i);
        let mut measurements: Vec<Measurement> = measurements.into_iter().map(|(_, m)| m).collect();
        for m in &mut measurements {
            m.connectivity.references = connectivity.references.clone();
        }
        finalize_verdicts(&mut measurements, connectivity.offline);
        if self.cfg.path.enabled && !connectivity.offline {
            self.attach_paths(&mut measurements, groups).await;
        }
        if let Some(list) = apps {
            let done = measurements.len();
            let total = done + list.apps.len();
            for (i, m) in self
                .measure_apps(list, &connectivity)
                .await
                .into_iter()
                .enumerate()
            {
                progress(done + i + 1, total, &m);
                measurements.push(m);
            }
        }
        // The control may have told us our public address only after early records were made.
        for m in &mut measurements {
            scrub_measurement(m, &self.own);
        }
        RunOutcome {
            connectivity,
            measurements,
        }
    }
}

/// A sensible default concurrency for a home line: enough to overlap timeouts, few enough not
/// to saturate a slow uplink or look like a scan.
pub const DEFAULT_CONCURRENCY: usize = 32;

/// Default step timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
