//! The measurement engine: runs the steps for one target, and many targets concurrently.
//!
//! The same [`Engine::observe`] serves the probe and the control service, so what the control
//! reports is measured exactly the way the probe measures.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::StreamExt;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use uuid::Uuid;

use crate::checks::dns::{self, ms_since, ControlResolvers, FirstResponse};
use crate::checks::http::{self, Exchange};
use crate::checks::tls::TlsContext;
use crate::checks::{path, tcp, MeasureConfig, CONTROL_GRACE};
use crate::control::ControlClient;
use crate::error::{ControlError, SetupError};
use crate::failure::Failure;
use crate::model::{
    resolved_addrs, ConnectivitySummary, ControlResponse, DnsObservation, HttpObservation,
    HttpRole, Measurement, PathUnlocated, ProbeNetwork, ReferenceTransfer, ResolverCheck,
    ResolverRole, Software, Status, Step, TcpObservation, TlsObservation, Verdict, MAX_ASN_ADDRS,
    SCHEMA_VERSION,
};
use crate::scrub::OwnAddresses;
use crate::slots::{self, Slots};
use crate::targets::Target;
use crate::verdict::{self, RunContext};

/// Most addresses of one name measured: a CDN can return dozens.
const MAX_ADDRS: usize = 4;

/// Blocked targets localised at once: each sends `2 × max_ttl` connections.
const PATH_CONCURRENCY: usize = 2;

/// How long the run waits for the collector to name its routers' networks.
const ASN_LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);

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

    /// Localise the blocked targets of a finished run to a network hop (see
    /// [`crate::checks::path`]): at most `path.max_targets` of them, two at a time, all within
    /// `path.run_budget`, each within its own bound. Adds the `path` observation and the
    /// `path.censor_hop` evidence line; the verdict itself is never changed. A localisation
    /// cut by the run's budget is recorded as such.
    pub async fn localise_blocks(&self, measurements: &mut [Measurement]) {
        let pc = &self.cfg.path;
        let plans: Vec<(usize, path::Plan)> = measurements
            .iter()
            .enumerate()
            .filter_map(|(i, m)| Some((i, path::plan(m)?)))
            .take(pc.max_targets)
            .collect();
        if plans.is_empty() {
            return;
        }
        let ctx = path::ProbeContext::new(&self.cfg, &self.tls, &self.own);
        let t0 = Instant::now();
        let run_deadline = tokio::time::Instant::from_std(t0) + pc.run_budget;
        let results = Mutex::new(Vec::new());
        let all = futures::stream::iter(plans.iter()).for_each_concurrent(
            PATH_CONCURRENCY,
            |(i, plan)| {
                let ctx = &ctx;
                let results = &results;
                async move {
                    let start = Instant::now();
                    let located = match tokio::time::timeout(
                        pc.per_target(),
                        path::localise(plan, ctx, start),
                    )
                    .await
                    {
                        Ok(o) => o,
                        Err(_) => {
                            path::unlocated(plan, PathUnlocated::Budget, 0.0, ms_since(start))
                                .into()
                        }
                    };
                    results
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((*i, located));
                }
            },
        );
        let _ = tokio::time::timeout_at(run_deadline, all).await;
        let mut done = results.into_inner().unwrap_or_else(|e| e.into_inner());
        for (i, plan) in &plans {
            if !done.iter().any(|(j, _)| j == i) {
                done.push((
                    *i,
                    path::unlocated(plan, PathUnlocated::Budget, 0.0, 0.0).into(),
                ));
            }
        }
        let known = self.router_networks(&done).await;
        for (i, path::Located { mut obs, routers }) in done {
            let m = &mut measurements[i];
            path::fill_asns(
                &mut obs,
                &routers,
                &self.cfg.bogons,
                &self.own,
                &known,
                m.probe.asn,
            );
            // Times relative to the measurement's start, like every other observation.
            let since_start = (Utc::now() - m.started_at).num_milliseconds().max(0) as f64;
            obs.t_ms = (since_start - obs.duration_ms).max(0.0);
            m.path = Some(obs);
            verdict::add_path_evidence(m);
        }
    }

    /// The networks of the public routers that the localisations recorded, asked of the
    /// collector in one request (its ASN table; see `docs/measurement-format.md`). Empty
    /// without a control service, or when it does not answer within [`ASN_LOOKUP_TIMEOUT`]:
    /// the hops then carry no ASN, and nothing else changes.
    async fn router_networks(&self, done: &[(usize, path::Located)]) -> HashMap<IpAddr, u32> {
        let Some(control) = &self.control else {
            return HashMap::new();
        };
        let mut addrs: Vec<IpAddr> = Vec::new();
        for (_, l) in done {
            let recorded = l.routers.iter().take(l.obs.hops.len()).flatten();
            for a in recorded {
                if path::public_router(*a, &self.cfg.bogons, &self.own) && !addrs.contains(a) {
                    addrs.push(*a);
                }
            }
        }
        addrs.truncate(MAX_ASN_ADDRS);
        if addrs.is_empty() {
            return HashMap::new();
        }
        match tokio::time::timeout(ASN_LOOKUP_TIMEOUT, control.asns(&addrs)).await {
            Ok(Ok(asns)) => addrs
                .into_iter()
                .zip(asns)
                .filter_map(|(a, n)| Some((a, n?)))
                .collect(),
            Ok(Err(e)) => {
                tracing::info!(error = %e, "the collector named no router networks");
                HashMap::new()
            }
            Err(_) => {
                tracing::info!("the collector did not name the router networks in time");
                HashMap::new()
            }
        }
    }

    /// Measure one target, with the control asked concurrently. The verdict is left to
    /// [`finalize_verdicts`], which decides once per target when the run's baseline is known.
    ///
    /// Connecting starts with the network resolver's first answer, while its query keeps
    /// listening for an injected second one (the linger) and the encrypted resolver and the
    /// control service answer: those only wait, so they overlap the fetch instead of preceding
    /// it.
    pub async fn measure(&self, target: &Target, connectivity: ConnectivitySummary) -> Measurement {
        let started_at = Utc::now();
        let t0 = Instant::now();
        let deadline = tokio::time::Instant::from_std(t0) + self.cfg.target_deadline;
        let url = &target.parsed;
        let main = async {
            let (first, addrs) = slots::waiting(self.resolve_first(url, t0)).await;
            let fetch = async {
                let out = self.fetch(url, &addrs, t0, deadline).await;
                slots::done();
                out
            };
            // The control is asked (or its batch line awaited) once the name resolved here.
            let control = async {
                let c = self.control.as_ref()?;
                let answer = tokio::time::timeout_at(
                    deadline + CONTROL_GRACE,
                    c.measure(&target.url, &addrs),
                )
                .await;
                Some(answer.unwrap_or(Err(ControlError::Deadline)))
            };
            let linger = futures::future::join_all(first.into_iter().map(FirstResponse::linger));
            let (obs, control, linger) = tokio::join!(fetch, control, linger);
            (obs, control, linger, addrs)
        };
        let ((mut obs, mut control, net_dns, addrs), ctl_dns) =
            tokio::join!(main, self.query_control_resolvers(url, t0));
        if let (Some(c), Some(Ok(reply))) = (&self.control, &control) {
            if wants_fresh_control(&obs, &reply.control) {
                let fresh =
                    tokio::time::timeout_at(deadline + CONTROL_GRACE, c.measure_fresh(&target.url));
                if let Ok(Some(Ok(reply))) = fresh.await {
                    control = Some(Ok(reply));
                }
            }
        }
        obs.dns = net_dns;
        obs.dns.extend(ctl_dns);
        let control_http = match &control {
            Some(Ok(reply)) => reply.control.http.as_slice(),
            _ => &[],
        };
        let (extra, second) = tokio::join!(
            self.local_evidence(url, &addrs, &obs, control_http, t0, deadline),
            self.control_address_fetch(url, &addrs, &obs, t0, deadline)
        );
        for more in [extra, second] {
            obs.tcp.extend(more.tcp);
            obs.tls.extend(more.tls);
            obs.http.extend(more.http);
        }
        let mut probe = self.probe.clone();
        let (control, control_failure) = match control {
            None => (None, None),
            Some(Ok(reply)) => {
                if let Some(ip) = reply.meta.your_address {
                    self.own.learn_public(ip);
                }
                if probe.asn.is_none() {
                    probe.asn = reply.meta.your_asn;
                }
                if probe.country.is_none() {
                    probe.country = reply.meta.your_country.clone();
                }
                (Some(reply.control), None)
            }
            Some(Err(e)) => (None, Some(crate::scrub::scrub_ips(&e.to_string()))),
        };
        Measurement {
            schema_version: SCHEMA_VERSION,
            id: Uuid::now_v7(),
            software: Software::default(),
            url: target.url.clone(),
            domain: target.domain.clone(),
            category_code: target.category_code.clone(),
            started_at,
            runtime_ms: ms_since(t0),
            probe,
            dns: obs.dns,
            tcp: obs.tcp,
            tls: obs.tls,
            http: obs.http,
            control,
            control_failure,
            path: None,
            connectivity,
            verdict: Verdict::new(Status::Inconclusive, None, "not analysed yet"),
        }
    }

    /// Extra exchanges the probe makes as local evidence about what it saw, so that a block can
    /// be proved without the control (and a site's own doing told from a censor's):
    /// - a cleartext request that was reset, closed or left unanswered is sent again to the same
    ///   address with a neutral `Host:` (the decoy name): the HTTP twin of the decoy handshake;
    /// - an `http://` page that the control did not confirm (no control, no page, or another
    ///   page), or a cleartext redirect that could not be followed, is fetched again over HTTPS
    ///   from the same addresses: a page that arrives over TLS verified for the site's own name
    ///   comes from the site.
    ///
    /// Everything stays within the target's deadline; the HTTP exchanges carry their
    /// [`HttpRole`], so they are never mistaken for the page.
    async fn local_evidence(
        &self,
        url: &url::Url,
        addrs: &[IpAddr],
        obs: &Observations,
        control_http: &[HttpObservation],
        t0: Instant,
        deadline: tokio::time::Instant,
    ) -> Observations {
        let mut out = Observations::default();
        let cut = obs.http.iter().find(|h| {
            h.failed_step == Some(Step::Http)
                && matches!(
                    h.failure,
                    Some(Failure::ConnectionReset | Failure::Eof | Failure::GenericTimeout)
                )
                && h.url.starts_with("http://")
        });
        if let Some((h, addr)) = cut.and_then(|h| Some((h, h.addr?))) {
            if let Ok(real) = url::Url::parse(&h.url) {
                let mut decoy = real.clone();
                let differs = !real
                    .host_str()
                    .is_some_and(|x| x.eq_ignore_ascii_case(&self.cfg.decoy_sni));
                if differs && decoy.set_host(Some(&self.cfg.decoy_sni)).is_ok() {
                    let steps = Mutex::new(Steps::default());
                    let fetched = tokio::time::timeout_at(
                        deadline,
                        self.decoy_host(&decoy, addr, h.hop, t0, &steps),
                    )
                    .await;
                    steps
                        .into_inner()
                        .unwrap_or_else(|e| e.into_inner())
                        .drain_into(&mut out);
                    let mut d = fetched.unwrap_or_else(|_| {
                        deadline_hop(h.hop, decoy.as_str(), Some(addr), Step::Http, t0)
                    });
                    d.role = HttpRole::DecoyHost;
                    out.http.push(d);
                }
            }
        }

        if url.scheme() == "http" && self.https_witness_wanted(obs, control_http) {
            let mut https = url.clone();
            if https.set_scheme("https").is_ok() && https.set_port(None).is_ok() {
                let witness = self.fetch(&https, addrs, t0, deadline).await;
                out.tcp.extend(witness.tcp);
                out.tls.extend(witness.tls);
                out.http.extend(witness.http.into_iter().map(|mut h| {
                    h.role = HttpRole::HttpsWitness;
                    h
                }));
            }
        }
        out
    }

    /// Two DNS answers, two fetches: when the network resolver's addresses have none in common
    /// with the encrypted control resolver's, the same URL is fetched again from the encrypted
    /// resolver's addresses, so the verdict can compare the page the network's answer led to
    /// with the page the name really leads to (a transparent proxy relaying the real page is
    /// not a block; another page is). Not made when a handshake to a network address verified
    /// for the name (a CDN answering per vantage point: the address is proven), or when the
    /// network's answer is a bogon (no page to compare). The exchanges carry
    /// [`HttpRole::ControlAddress`]; everything stays within the target's deadline.
    async fn control_address_fetch(
        &self,
        url: &url::Url,
        net_addrs: &[IpAddr],
        obs: &Observations,
        t0: Instant,
        deadline: tokio::time::Instant,
    ) -> Observations {
        let host = url_host(url).unwrap_or_default();
        let for_target = |o: &&DnsObservation| {
            o.query
                .trim_end_matches('.')
                .eq_ignore_ascii_case(host.trim_end_matches('.'))
        };
        let network: Vec<DnsObservation> = obs
            .dns
            .iter()
            .filter(|o| o.role == ResolverRole::Network)
            .filter(for_target)
            .cloned()
            .collect();
        let control: Vec<DnsObservation> = obs
            .dns
            .iter()
            .filter(|o| o.role == ResolverRole::Control)
            .filter(for_target)
            .cloned()
            .collect();
        let ctl_addrs = resolved_addrs(&control);
        let bogon = network.iter().flat_map(|o| &o.answers).any(|a| a.bogon);
        let proven = obs
            .tls
            .iter()
            .any(|t| !t.decoy && t.verified() && net_addrs.contains(&t.addr.ip()));
        if net_addrs.is_empty()
            || ctl_addrs.is_empty()
            || net_addrs.iter().any(|a| ctl_addrs.contains(a))
            || bogon
            || proven
        {
            return Observations::default();
        }
        let mut second = self.fetch(url, &ctl_addrs, t0, deadline).await;
        if second.http.is_empty() {
            // No connection at all: say where it stopped, so the verdict knows this fetch was
            // made and how it failed.
            let tls = second
                .tls
                .iter()
                .find(|t| !t.decoy)
                .and_then(|t| t.failure.clone());
            let (step, failure) = match tls {
                Some(f) => (Step::Tls, f),
                None => (
                    Step::Tcp,
                    second
                        .tcp
                        .iter()
                        .find_map(|t| t.failure.clone())
                        .unwrap_or_else(|| Failure::unknown("no connection")),
                ),
            };
            let mut obs = http::empty_observation(0, url.as_str(), None, t0);
            obs.failed_step = Some(step);
            obs.failure = Some(failure);
            second.http.push(obs);
        }
        for h in &mut second.http {
            h.role = HttpRole::ControlAddress;
        }
        second.dns.clear();
        second
    }

    /// Whether an `http://` target's page needs the site's own HTTPS page as a witness: its
    /// last hop is a cleartext page the control did not confirm, or a cleartext redirect that
    /// could not be followed. A known blockpage needs no witness.
    fn https_witness_wanted(&self, obs: &Observations, control_http: &[HttpObservation]) -> bool {
        let Some(last) = obs.http.iter().max_by_key(|h| h.hop) else {
            return false;
        };
        if obs.http.iter().any(|h| h.blockpage.is_some()) {
            return false;
        }
        if let Some(f) = &last.failure {
            let cleartext_before = obs
                .http
                .iter()
                .any(|h| h.hop < last.hop && h.url.starts_with("http://"));
            return cleartext_before
                && matches!(
                    f,
                    Failure::HttpTooManyRedirects | Failure::HttpInvalidRedirect
                );
        }
        if last.status.is_none() || !last.url.starts_with("http://") {
            return false;
        }
        let ctl_final = control_http
            .iter()
            .max_by_key(|h| h.hop)
            .filter(|h| h.failure.is_none() && h.status.is_some());
        !ctl_final.is_some_and(|c| verdict::pages_similar(last, c))
    }

    /// The decoy-Host request: a fresh connection to `addr`, and the same GET with the decoy
    /// name in `Host:`.
    async fn decoy_host(
        &self,
        decoy: &url::Url,
        addr: SocketAddr,
        hop: u32,
        t0: Instant,
        steps: &Mutex<Steps>,
    ) -> HttpObservation {
        let (tcp_obs, stream) = tcp::connect(addr, &self.cfg, t0).await;
        let failure = tcp_obs.failure.clone();
        steps
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .tcp
            .push(tcp_obs);
        match stream {
            Some(s) => {
                http::get(s, decoy, addr, hop, &self.cfg, &self.own, t0)
                    .await
                    .obs
            }
            None => {
                let mut obs = http::empty_observation(hop, decoy.as_str(), Some(addr), t0);
                obs.failed_step = Some(Step::Tcp);
                obs.failure = failure.or_else(|| Some(Failure::unknown("no connection")));
                obs
            }
        }
    }

    /// The network resolver's first responses for the URL's host, and their addresses (an IP
    /// literal resolves to itself, with no query).
    pub async fn resolve_first(
        &self,
        url: &url::Url,
        t0: Instant,
    ) -> (Vec<FirstResponse>, Vec<IpAddr>) {
        let Some(host) = url_host(url) else {
            return (vec![], vec![]);
        };
        if let Ok(ip) = host.parse::<IpAddr>() {
            return (vec![], vec![ip]);
        }
        let first = dns::query_network_first(&host, &self.cfg, t0).await;
        let observed: Vec<DnsObservation> = first.iter().map(|f| f.observation().clone()).collect();
        let addrs = resolved_addrs(&observed);
        (first, addrs)
    }

    /// The encrypted control resolvers' answers for the URL's host (none for an IP literal).
    async fn query_control_resolvers(&self, url: &url::Url, t0: Instant) -> Vec<DnsObservation> {
        match url_host(url) {
            Some(host) if host.parse::<IpAddr>().is_err() && !self.control_resolvers.is_empty() => {
                self.control_resolvers.query(&host, &self.cfg, t0).await
            }
            _ => vec![],
        }
    }

    /// Resolve the URL's host with the network resolver, lingering for injected answers, and
    /// with the control resolvers, recorded alongside; returns the observations and the
    /// network resolver's addresses.
    pub async fn resolve(&self, url: &url::Url, t0: Instant) -> (Vec<DnsObservation>, Vec<IpAddr>) {
        let network = async {
            let (first, addrs) = self.resolve_first(url, t0).await;
            let obs = futures::future::join_all(first.into_iter().map(FirstResponse::linger)).await;
            (obs, addrs)
        };
        let ((mut all, addrs), ctl) = tokio::join!(network, self.query_control_resolvers(url, t0));
        all.extend(ctl);
        (all, addrs)
    }

    /// Run DNS, TCP, TLS and HTTP (with redirects) for one URL, connecting to the resolved
    /// addresses plus `extra` (the probe's addresses, when the control measures). Connecting
    /// starts with the first DNS answer; the linger overlaps the fetch.
    pub async fn observe(&self, url: &url::Url, extra: &[IpAddr], t0: Instant) -> Observations {
        let deadline = tokio::time::Instant::from_std(t0) + self.cfg.target_deadline;
        let main = async {
            let (first, mut addrs) = self.resolve_first(url, t0).await;
            for ip in extra {
                if !addrs.contains(ip) {
                    addrs.push(*ip);
                }
            }
            let linger = futures::future::join_all(first.into_iter().map(FirstResponse::linger));
            tokio::join!(self.fetch(url, &addrs, t0, deadline), linger)
        };
        let ((mut out, net_dns), ctl_dns) =
            tokio::join!(main, self.query_control_resolvers(url, t0));
        out.dns = net_dns;
        out.dns.extend(ctl_dns);
        out
    }

    /// TCP, TLS and HTTP (with redirects) to the given addresses, all of it before `deadline`:
    /// when the deadline passes, the step or hop that was running is recorded as an HTTP hop
    /// failed with [`Failure::DeadlineExceeded`] at the step it had reached, and everything
    /// observed until then is kept.
    pub async fn fetch(
        &self,
        url: &url::Url,
        addrs: &[IpAddr],
        t0: Instant,
        deadline: tokio::time::Instant,
    ) -> Observations {
        let mut out = Observations::default();
        let Some(host) = url_host(url) else {
            return out;
        };
        let https = url.scheme() == "https";
        let port = url
            .port_or_known_default()
            .unwrap_or(if https { 443 } else { 80 });
        let addrs: Vec<SocketAddr> = addrs
            .iter()
            .take(MAX_ADDRS)
            .map(|ip| SocketAddr::new(*ip, port))
            .collect();

        // TCP and TLS per address, concurrently; observations are kept as they complete.
        let steps = Mutex::new(Steps::default());
        let per_addr = tokio::time::timeout_at(
            deadline,
            futures::future::join_all(
                addrs
                    .iter()
                    .map(|a| self.connect_and_handshake(*a, &host, https, t0, &steps)),
            ),
        )
        .await;
        let steps = steps.into_inner().unwrap_or_else(|e| e.into_inner());
        out.tcp = steps.tcp;
        out.tls = steps.tls;
        let Ok(per_addr) = per_addr else {
            let reached = if !out.tcp.iter().any(|t| t.failure.is_none()) {
                Step::Tcp
            } else if https && !out.tls.iter().any(|t| !t.decoy && t.failure.is_none()) {
                Step::Tls
            } else {
                Step::Http
            };
            out.http
                .push(deadline_hop(0, url.as_str(), None, reached, t0));
            return out;
        };
        let mut best: Option<(SocketAddr, Conn, bool)> = None;
        for (addr, conn, verified) in per_addr.into_iter().flatten() {
            let better = match &best {
                None => true,
                Some((_, _, best_verified)) => verified && !best_verified,
            };
            if better {
                best = Some((addr, conn, verified));
            }
        }

        // HTTP on the best connection, then redirects hop by hop.
        let Some((addr, conn, _)) = best else {
            return out;
        };
        let get = async {
            match conn {
                Conn::Plain(s) => http::get(s, url, addr, 0, &self.cfg, &self.own, t0).await,
                Conn::Tls(s) => http::get(*s, url, addr, 0, &self.cfg, &self.own, t0).await,
            }
        };
        let first = match tokio::time::timeout_at(deadline, get).await {
            Ok(first) => first,
            Err(_) => {
                out.http
                    .push(deadline_hop(0, url.as_str(), Some(addr), Step::Http, t0));
                return out;
            }
        };
        self.follow_redirects(url, first, &host, &addrs, t0, deadline, &mut out)
            .await;
        out
    }

    #[allow(clippy::too_many_arguments)]
    async fn follow_redirects(
        &self,
        start_url: &url::Url,
        first: Exchange,
        first_host: &str,
        first_addrs: &[SocketAddr],
        t0: Instant,
        deadline: tokio::time::Instant,
        out: &mut Observations,
    ) {
        let mut visited = vec![start_url.to_string()];
        let mut current_url = start_url.clone();
        let mut current = first.obs;
        let mut hop = 0u32;
        loop {
            let location = current.location.clone();
            let is_redirect = matches!(current.status, Some(301 | 302 | 303 | 307 | 308));
            out.http.push(current);
            if !is_redirect {
                return;
            }
            hop += 1;
            let Some(location) = location else {
                return;
            };
            let next = match current_url.join(&location) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => u,
                _ => {
                    let mut obs = http::empty_observation(hop, &location, None, t0);
                    obs.failed_step = Some(Step::Http);
                    obs.failure = Some(Failure::HttpInvalidRedirect);
                    out.http.push(obs);
                    return;
                }
            };
            if hop > self.cfg.max_redirects || visited.contains(&next.to_string()) {
                let mut obs = http::empty_observation(hop, next.as_str(), None, t0);
                obs.failed_step = Some(Step::Http);
                obs.failure = Some(Failure::HttpTooManyRedirects);
                out.http.push(obs);
                return;
            }
            visited.push(next.to_string());
            let reached = Mutex::new(Step::Dns);
            let steps = Mutex::new(Steps::default());
            let fetched = tokio::time::timeout_at(
                deadline,
                self.hop(&next, hop, first_host, first_addrs, t0, &reached, &steps),
            )
            .await;
            // The hop's own DNS, connects and handshakes (its decoy handshake included) are
            // observations like the target's: a redirect into a blocked site carries the same
            // evidence as that site measured directly.
            steps
                .into_inner()
                .unwrap_or_else(|e| e.into_inner())
                .drain_into(out);
            current = match fetched {
                Ok(obs) => obs,
                Err(_) => {
                    let step = *reached.lock().unwrap_or_else(|e| e.into_inner());
                    out.http
                        .push(deadline_hop(hop, next.as_str(), None, step, t0));
                    return;
                }
            };
            current_url = next;
        }
    }

    /// One redirect hop: resolve (unless same host), connect, handshake, GET. `reached` follows
    /// the step under way, for the record when the target's deadline cuts the hop; `steps`
    /// receives the hop's DNS, TCP and TLS observations as they are made.
    #[allow(clippy::too_many_arguments)]
    async fn hop(
        &self,
        url: &url::Url,
        hop: u32,
        first_host: &str,
        first_addrs: &[SocketAddr],
        t0: Instant,
        reached: &Mutex<Step>,
        steps: &Mutex<Steps>,
    ) -> HttpObservation {
        let start = Instant::now();
        let mut obs = http::empty_observation(hop, url.as_str(), None, t0);
        let fail = |mut obs: HttpObservation, step: Step, f: Failure| {
            obs.failed_step = Some(step);
            obs.failure = Some(f);
            obs.duration_ms = ms_since(start);
            obs
        };
        let reach = |step: Step| *reached.lock().unwrap_or_else(|e| e.into_inner()) = step;
        let host = url
            .host_str()
            .unwrap_or_default()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let https = url.scheme() == "https";
        let port = url
            .port_or_known_default()
            .unwrap_or(if https { 443 } else { 80 });
        let ip = if host.eq_ignore_ascii_case(first_host) && !first_addrs.is_empty() {
            first_addrs[0].ip()
        } else if let Ok(ip) = host.parse::<IpAddr>() {
            ip
        } else {
            // The hop's first answers are recorded: a redirect host is measured like a target.
            let net: Vec<DnsObservation> =
                slots::waiting(dns::query_network_first(&host, &self.cfg, t0))
                    .await
                    .iter()
                    .map(|f| f.observation().clone())
                    .collect();
            steps
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .dns
                .extend(net.iter().cloned());
            match resolved_addrs(&net).first() {
                Some(ip) => *ip,
                None => {
                    let f = net
                        .iter()
                        .find_map(|o| o.failure.clone())
                        .unwrap_or(Failure::DnsNoAnswer);
                    return fail(obs, Step::Dns, f);
                }
            }
        };
        let addr = SocketAddr::new(ip, port);
        obs.addr = Some(addr);
        reach(Step::Tcp);
        let conn = self
            .connect_and_handshake(addr, &host, https, t0, steps)
            .await;
        let (first_tcp_failure, first_tls) = {
            let s = steps.lock().unwrap_or_else(|e| e.into_inner());
            (
                s.tcp.first().and_then(|t| t.failure.clone()),
                s.tls.first().cloned(),
            )
        };
        let Some((_, conn, _)) = conn else {
            if let Some(f) = first_tls.as_ref().and_then(|t| t.failure.clone()) {
                return fail(obs, Step::Tls, f);
            }
            let f = first_tcp_failure.unwrap_or_else(|| Failure::unknown("no connection"));
            return fail(obs, Step::Tcp, f);
        };
        // A hop's certificate must verify: a redirect into an interceptor is a TLS failure.
        if let Some(t) = &first_tls {
            if let Some(f) = &t.verification_failure {
                return fail(obs, Step::Tls, f.clone());
            }
        }
        reach(Step::Http);
        let ex = match conn {
            Conn::Plain(s) => http::get(s, url, addr, hop, &self.cfg, &self.own, t0).await,
            Conn::Tls(s) => http::get(*s, url, addr, hop, &self.cfg, &self.own, t0).await,
        };
        ex.obs
    }

    /// TCP connect, then (https) TLS handshake with the real SNI and, if that was interrupted,
    /// a decoy handshake with another SNI on a fresh connection. Each observation goes into
    /// `steps` as soon as it is made, so a deadline that cuts this short loses none; returns
    /// the connection and whether its chain verified.
    async fn connect_and_handshake(
        &self,
        addr: SocketAddr,
        host: &str,
        https: bool,
        t0: Instant,
        steps: &Mutex<Steps>,
    ) -> Option<(SocketAddr, Conn, bool)> {
        let record =
            |f: &dyn Fn(&mut Steps)| f(&mut steps.lock().unwrap_or_else(|e| e.into_inner()));
        if !self.allow_bogon_targets && self.cfg.bogons.is_bogon(addr.ip()) {
            let obs = TcpObservation {
                addr,
                t_ms: ms_since(t0),
                duration_ms: 0.0,
                failure: Some(Failure::unknown(
                    "address refused by control policy (bogon)",
                )),
            };
            record(&|s| s.tcp.push(obs.clone()));
            return None;
        }
        let (obs, stream) = slots::waiting(tcp::connect(addr, &self.cfg, t0)).await;
        record(&|s| s.tcp.push(obs.clone()));
        let stream = stream?;
        if let Ok(local) = stream.local_addr() {
            self.own.add(local.ip());
        }
        if !https {
            return Some((addr, Conn::Plain(stream), false));
        }
        let (tls_obs, tls) =
            slots::waiting(self.tls.handshake(stream, addr, host, false, &self.cfg, t0)).await;
        let interrupted = tls_obs
            .failure
            .as_ref()
            .map(|f| f.is_interruption())
            .unwrap_or(false);
        let verified = tls_obs.verified();
        record(&|s| s.tls.push(tls_obs.clone()));
        if let Some(tls) = tls {
            return Some((addr, Conn::Tls(Box::new(tls)), verified));
        }
        if interrupted && !host.eq_ignore_ascii_case(&self.cfg.decoy_sni) {
            let (obs, stream) = slots::waiting(tcp::connect(addr, &self.cfg, t0)).await;
            record(&|s| s.tcp.push(obs.clone()));
            if let Some(stream) = stream {
                let (decoy, _) = slots::waiting(self.tls.handshake(
                    stream,
                    addr,
                    &self.cfg.decoy_sni,
                    true,
                    &self.cfg,
                    t0,
                ))
                .await;
                record(&|s| s.tls.push(decoy.clone()));
            }
        }
        None
    }

    /// One reference transfer per anchor that serves HTTPS on 443 under a name (an address
    /// has no certificate to handshake for): `GET https://ANCHOR/`, resolved with the network's
    /// resolver, with the same steps, body cap and deadline as a target. This probe's line
    /// speed, for throttling.
    pub async fn reference_transfers(&self) -> Vec<ReferenceTransfer> {
        let futs = self
            .anchors
            .iter()
            .filter(|(host, port)| *port == 443 && host.parse::<IpAddr>().is_err())
            .map(|(host, port)| async move {
                let anchor = format!("{host}:{port}");
                let Ok(url) = url::Url::parse(&format!("https://{host}/")) else {
                    return ReferenceTransfer {
                        anchor,
                        failure: Some(Failure::unknown("anchor is not a host name")),
                        ..ReferenceTransfer::default()
                    };
                };
                let t0 = Instant::now();
                let deadline = tokio::time::Instant::from_std(t0) + self.cfg.target_deadline;
                let net = dns::query_network(host, &self.cfg, t0).await;
                let addrs = resolved_addrs(&net);
                if addrs.is_empty() {
                    let failure = net
                        .iter()
                        .find_map(|o| o.failure.clone())
                        .unwrap_or(Failure::DnsNoAnswer);
                    return ReferenceTransfer {
                        anchor,
                        failure: Some(failure),
                        ..ReferenceTransfer::default()
                    };
                }
                let obs = self.fetch(&url, &addrs, t0, deadline).await;
                reference_from(anchor, &obs)
            });
        futures::future::join_all(futs).await
    }

    /// Can this probe reach anything at all? Anchors are tried in parallel, as is the control.
    pub async fn check_connectivity(&self) -> ConnectivitySummary {
        let t0 = Instant::now();
        let anchor_futs = self.anchors.iter().map(|(host, port)| async move {
            let (resolved, ips) = if let Ok(ip) = host.parse::<IpAddr>() {
                (true, vec![ip])
            } else {
                let net: Vec<DnsObservation> = dns::query_network_first(host, &self.cfg, t0)
                    .await
                    .iter()
                    .map(|f| f.observation().clone())
                    .collect();
                let ips = resolved_addrs(&net);
                let answered = net.iter().any(|o| o.rcode.is_some());
                (answered, ips)
            };
            let mut reached = false;
            for ip in ips.into_iter().take(2) {
                let (obs, _) = tcp::connect(SocketAddr::new(ip, *port), &self.cfg, t0).await;
                if obs.failure.is_none() {
                    reached = true;
                    break;
                }
            }
            (resolved, reached)
        });
        let control_fut = async {
            match &self.control {
                Some(c) => Some(c.health().await.is_ok()),
                None => None,
            }
        };
        let (anchors, control_ok, control_resolvers) = tokio::join!(
            futures::future::join_all(anchor_futs),
            control_fut,
            self.control_resolvers.check(&self.cfg)
        );
        let anchors_tried = anchors.len() as u32;
        let anchors_ok = anchors.iter().filter(|(_, r)| *r).count() as u32;
        let resolver_ok = (!anchors.is_empty()).then(|| anchors.iter().any(|(d, _)| *d));
        let decidable = anchors_tried > 0 || control_ok.is_some();
        let offline = decidable && anchors_ok == 0 && control_ok != Some(true);
        let mut summary = if offline {
            format!(
                "No connectivity: none of {anchors_tried} anchor hosts could be reached{}{}. The network looks cut off.",
                match control_ok {
                    Some(false) => ", the control service did not answer",
                    _ => "",
                },
                match resolver_ok {
                    Some(true) => " (the resolver still answers: DNS passes while other traffic does not)",
                    Some(false) => ", and the resolver did not answer",
                    None => "",
                }
            )
        } else if !decidable {
            "Connectivity not checked: no anchors and no control service configured.".to_string()
        } else {
            format!(
                "Connected: {anchors_ok} of {anchors_tried} anchors reached{}.",
                match control_ok {
                    Some(true) => ", control service answered",
                    Some(false) => ", control service did NOT answer",
                    None => "",
                }
            )
        };
        if !offline {
            if let Some(text) = resolver_chain_summary(&control_resolvers) {
                summary.push(' ');
                summary.push_str(&text);
            }
        }
        ConnectivitySummary {
            offline,
            resolver_ok,
            control_ok,
            anchors_ok,
            anchors_tried,
            summary,
            references: Vec::new(),
            control_resolvers,
        }
    }

    fn offline_measurement(&self, t: &Target, connectivity: &ConnectivitySummary) -> Measurement {
        Measurement {
            schema_version: SCHEMA_VERSION,
            id: Uuid::now_v7(),
            software: Software::default(),
            url: t.url.clone(),
            domain: t.domain.clone(),
            category_code: t.category_code.clone(),
            started_at: Utc::now(),
            runtime_ms: 0.0,
            probe: self.probe.clone(),
            dns: vec![],
            tcp: vec![],
            tls: vec![],
            http: vec![],
            control: None,
            control_failure: Some("not attempted: no connectivity".into()),
            path: None,
            connectivity: connectivity.clone(),
            verdict: Verdict::new(Status::Offline, None, "not analysed yet"),
        }
    }

    /// The control service's measurement of `url`: the same steps, no control of its own.
    pub async fn control_measure(&self, url: &url::Url, probe_addrs: &[IpAddr]) -> ControlResponse {
        let t0 = Instant::now();
        let measured_at = Utc::now();
        let obs = self.observe(url, probe_addrs, t0).await;
        ControlResponse {
            software: Software::default(),
            measured_at,
            dns: obs.dns,
            tcp: obs.tcp,
            tls: obs.tls,
            http: obs.http,
            age_secs: None,
        }
    }
}

/// A shared control view older than this, which says the site worked where it failed here, is
/// worth a fresh look (the site may have gone down since).
const FRESH_CONTROL_AFTER_SECS: u64 = 60;

/// Did the page fail here while a shared control view, older than
/// [`FRESH_CONTROL_AFTER_SECS`], got one? Then the run asks for a fresh measurement.
fn wants_fresh_control(obs: &Observations, control: &ControlResponse) -> bool {
    let got_page = |http: &[HttpObservation]| {
        http.iter()
            .any(|h| h.failure.is_none() && h.status.is_some_and(|s| s < 300))
    };
    control.age_secs.unwrap_or(0) >= FRESH_CONTROL_AFTER_SECS
        && got_page(&control.http)
        && !got_page(&obs.http)
}

/// The figures of one reference transfer: the first completed real handshake, and the final
/// response's body.
fn reference_from(anchor: String, obs: &Observations) -> ReferenceTransfer {
    let handshake_ms = obs
        .tls
        .iter()
        .find(|t| !t.decoy && t.failure.is_none())
        .map(|t| t.duration_ms);
    let last = obs.http.iter().max_by_key(|h| h.hop);
    let done = last.filter(|h| h.failure.is_none() && h.status.is_some());
    let failure = match done {
        Some(_) => None,
        None => last
            .and_then(|h| h.failure.clone())
            .or_else(|| obs.tls.iter().find_map(|t| t.failure.clone()))
            .or_else(|| obs.tcp.iter().find_map(|t| t.failure.clone()))
            .or_else(|| Some(Failure::unknown("no response"))),
    };
    ReferenceTransfer {
        anchor,
        handshake_ms,
        body_bytes: done.map_or(0, |h| h.body_length),
        throughput_bps: done.and_then(|h| h.throughput_bps),
        failure,
    }
}

/// The DNS, TCP and TLS observations of one connect-and-handshake phase (or one redirect
/// hop), as they complete.
#[derive(Default)]
struct Steps {
    dns: Vec<DnsObservation>,
    tcp: Vec<TcpObservation>,
    tls: Vec<TlsObservation>,
}

impl Steps {
    /// Move everything recorded into `out`.
    fn drain_into(self, out: &mut Observations) {
        out.dns.extend(self.dns);
        out.tcp.extend(self.tcp);
        out.tls.extend(self.tls);
    }
}

/// The record of a hop (or the first exchange) that the target's deadline cut, at the step it
/// had reached.
fn deadline_hop(
    hop: u32,
    url: &str,
    addr: Option<SocketAddr>,
    step: Step,
    t0: Instant,
) -> HttpObservation {
    let mut obs = http::empty_observation(hop, url, addr, t0);
    obs.failed_step = Some(step);
    obs.failure = Some(Failure::DeadlineExceeded);
    obs
}

/// What the encrypted resolver check found, in a sentence; `None` when the first resolver of
/// the chain works (nothing worth saying) or there is none.
fn resolver_chain_summary(checks: &[ResolverCheck]) -> Option<String> {
    let first_ok = checks.iter().position(|c| c.failure.is_none());
    if first_ok == Some(0) || checks.is_empty() {
        return None;
    }
    let failed: Vec<String> = checks
        .iter()
        .take(first_ok.unwrap_or(checks.len()))
        .map(|c| {
            format!(
                "{} ({})",
                c.label(),
                c.failure.as_ref().map_or("failed", |f| f.name())
            )
        })
        .collect();
    Some(match first_ok {
        Some(i) => format!(
            "Encrypted DNS: {} failed from this network; using {}.",
            failed.join(", "),
            checks[i].label()
        ),
        None => format!(
            "Encrypted DNS: no resolver of the chain answered from this network ({}); the \
             control service's DNS is the only DNS control.",
            failed.join(", ")
        ),
    })
}

/// The URL's host without IPv6 brackets.
fn url_host(url: &url::Url) -> Option<String> {
    url.host_str()
        .map(|h| h.trim_start_matches('[').trim_end_matches(']').to_string())
}

/// A measured connection ready for HTTP.
enum Conn {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Conn::Plain(_) => "Conn::Plain",
            Conn::Tls(_) => "Conn::Tls",
        })
    }
}

/// Decide every measurement's verdict, once each, with the run's own baseline (this probe's
/// speed for the other sites that plainly loaded), so throttling can be judged.
pub fn finalize_verdicts(measurements: &mut [Measurement], offline: bool) {
    let samples = verdict::Samples::collect(measurements);
    for m in measurements.iter_mut() {
        let ctx = RunContext {
            offline,
            baseline: samples.baseline(Some(m.id)),
        };
        m.verdict = verdict::decide(m, &ctx);
    }
}

/// Remove the probe's own addresses, in every encoding, from every string of a measurement
/// (see [`crate::scrub::record`]). A record that cannot be scrubbed keeps only the verdict's
/// status: its text could hold the address.
pub fn scrub_measurement(m: &mut Measurement, own: &OwnAddresses) {
    if let Err(e) = crate::scrub::record::scrub_measurement(m, own) {
        tracing::error!(error = %e, "a record could not be scrubbed; its observations are dropped");
        crate::scrub::record::strip(m);
    }
}

/// A sensible default concurrency for a home line: enough to overlap timeouts, few enough not
/// to saturate a slow uplink or look like a scan.
pub const DEFAULT_CONCURRENCY: usize = 32;

/// Default step timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
