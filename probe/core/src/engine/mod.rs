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
use crate::targets::Target;

mod connectivity;
mod evidence;
mod fetch;
mod localise;
mod measure;

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
    pub probe: ProbeNetwork,
    /// When false, the engine refuses to connect to bogon addresses (the control service's
    /// default: it must not become a door into its own private network).
    pub allow_bogon_targets: bool,
    /// Anchors for the connectivity check: (host, port).
    pub anchors: Vec<(String, u16)>,
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
    /// Build an engine; fails only on configuration errors (e.g. an unusable control resolver).
    pub fn new(cfg: MeasureConfig, control: Option<ControlClient>) -> Result<Self, SetupError> {
        let tls = TlsContext::new(&cfg)?;
        let control_resolvers = ControlResolvers::new(&cfg.control_resolvers, &cfg)?;
        Ok(Engine {
            cfg: Arc::new(cfg),
            tls,
            control_resolvers,
            control,
            own: Arc::new(OwnAddresses::default()),
            probe: ProbeNetwork::default(),
            allow_bogon_targets: true,
            anchors: Vec::new(),
        })
    }

    /// Use these interception keys in addition to the built-in names.
    pub fn with_interception_spki(mut self, keys: Vec<(String, String)>) -> Self {
        self.tls = self.tls.with_interception_spki(keys);
        self
    }

    /// Measure every target with at most `concurrency` at once; `progress` is called after
    /// each target with (done, total, the measurement).
    pub async fn run(
        &self,
        targets: Vec<Target>,
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
            let measure_all = async {
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
            let ((), references) = tokio::join!(measure_all, self.reference_transfers());
            connectivity.references = references;
        }
        measurements.sort_by_key(|(i, _)| *i);
        let mut measurements: Vec<Measurement> = measurements.into_iter().map(|(_, m)| m).collect();
        for m in &mut measurements {
            m.connectivity.references = connectivity.references.clone();
        }
        finalize_verdicts(&mut measurements, connectivity.offline);
        if self.cfg.path.enabled && !connectivity.offline {
            self.localise_blocks(&mut measurements).await;
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
