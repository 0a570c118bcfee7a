//! App and tool tests in the engine: each app of an [`AppsList`] becomes one
//! [`Measurement`] with an `app` part, measured with the run's resolvers and step settings
//! and decided by [`crate::apps::verdict`]. Endpoints of one app run a few at a time, each
//! within the target deadline.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use chrono::Utc;
use futures::StreamExt;
use uuid::Uuid;

use super::Engine;
use crate::apps::probe::{self, AppTls, Steps};
use crate::checks::dns::{ms_since, query_network};
use crate::error::SetupError;
use crate::failure::Failure;
use crate::model::{
    AppKind, AppObservation, ConnectivitySummary, DnsObservation, EndpointObservation,
    EndpointProbe, Measurement, ResolverRole, Software, Status, Step, Verdict, SCHEMA_VERSION,
};
use crate::targets::apps::{AppSpec, AppsList, EndpointSpec};

/// Endpoints of one app probed at once: a burst of 34 connects to one service looks like a
/// scan, and a home line gains nothing from more.
pub const ENDPOINT_CONCURRENCY: usize = 8;

/// The Citizen Lab category an app test is filed under, so `--exclude-category` and the
/// consent notice treat it as the same kind of site: communication tools for messaging,
/// anonymisation and circumvention tools for Tor and VPN protocols.
pub fn app_category(kind: AppKind) -> &'static str {
    match kind {
        AppKind::Messaging => "COMT",
        AppKind::Tor | AppKind::Reflector => "ANON",
    }
}

impl Engine {
    /// The TLS contexts app endpoints use (built per run: cheap next to the handshakes).
    fn app_tls(&self) -> Result<AppTls, SetupError> {
        let mut signal = rustls::RootCertStore::empty();
        for ca in crate::apps::signal_roots()
            .into_iter()
            .chain(self.cfg.extra_cas.iter().cloned())
        {
            let _ = signal.add(ca);
        }
        Ok(AppTls {
            system: self.tls.clone(),
            signal: crate::checks::tls::TlsContext::with_roots(signal)?,
        })
    }

    /// Measure every app of `list`, in list order; offline runs record every app offline.
    /// Verdicts are decided here (an app's verdict needs no run baseline).
    pub async fn measure_apps(
        &self,
        list: &AppsList,
        connectivity: &ConnectivitySummary,
    ) -> Vec<Measurement> {
        let tls = match self.app_tls() {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::error!(error = %e, "app tests: cannot build the TLS contexts");
                None
            }
        };
        let mut out = Vec::with_capacity(list.apps.len());
        for app in &list.apps {
            let mut m = match (&tls, connectivity.offline) {
                (Some(tls), false) => self.measure_app(app, &list.label, tls, connectivity).await,
                _ => self.app_record(app, &list.label, connectivity, Vec::new(), 0.0),
            };
            decide_app(&mut m, connectivity.offline);
            out.push(m);
        }
        out
    }

    fn app_record(
        &self,
        app: &AppSpec,
        label: &str,
        connectivity: &ConnectivitySummary,
        endpoints: Vec<EndpointObservation>,
        runtime_ms: f64,
    ) -> Measurement {
        Measurement {
            schema_version: SCHEMA_VERSION,
            id: Uuid::now_v7(),
            software: Software::default(),
            url: Measurement::app_url(&app.name),
            domain: app.name.clone(),
            category_code: Some(app_category(app.kind).to_string()),
            started_at: Utc::now(),
            runtime_ms,
            probe: self.probe.clone(),
            dns: vec![],
            tcp: vec![],
            tls: vec![],
            http: vec![],
            control: None,
            control_failure: None,
            path: None,
            ab: vec![],
            app: Some(AppObservation {
                name: app.name.clone(),
                kind: app.kind,
                list: label.to_string(),
                endpoints,
            }),
            connectivity: connectivity.clone(),
            verdict: Verdict::new(Status::Inconclusive, None, "not analysed yet"),
        }
    }

    async fn measure_app(
        &self,
        app: &AppSpec,
        label: &str,
        tls: &AppTls,
        connectivity: &ConnectivitySummary,
    ) -> Measurement {
        let started_at = Utc::now();
        let t0 = Instant::now();
        // Each host is resolved once, however many ports it is listed with.
        let mut hosts: Vec<&str> = app
            .endpoints
            .iter()
            .filter(|e| e.ip().is_none())
            .map(|e| e.dial_host())
            .collect();
        hosts.dedup();
        hosts.sort_unstable();
        hosts.dedup();
        let resolved: Vec<(String, Vec<DnsObservation>)> = futures::stream::iter(hosts)
            .map(|h| async move {
                let (net, ctl) = tokio::join!(
                    query_network(h, &self.cfg, t0),
                    self.control_resolvers.query(h, &self.cfg, t0)
                );
                let mut all = net;
                all.extend(ctl);
                (h.to_string(), all)
            })
            .buffered(ENDPOINT_CONCURRENCY)
            .collect()
            .await;
        let results: Vec<(EndpointObservation, Steps)> = futures::stream::iter(&app.endpoints)
            .map(|ep| {
                let dns = resolved
                    .iter()
                    .find(|(h, _)| h == ep.dial_host())
                    .map(|(_, d)| d.as_slice())
                    .unwrap_or(&[]);
                async move {
                    let bound = self.cfg.target_deadline;
                    let probe = self.probe_endpoint(ep, app.kind, dns, tls, t0);
                    match tokio::time::timeout(bound, probe).await {
                        Ok(r) => r,
                        Err(_) => {
                            let mut o = probe::blank(ep, None, t0);
                            o.failed_step = Some(Step::Tcp);
                            o.failure = Some(Failure::DeadlineExceeded);
                            o.duration_ms = bound.as_secs_f64() * 1000.0;
                            (o, Steps::default())
                        }
                    }
                }
            })
            .buffered(ENDPOINT_CONCURRENCY)
            .collect()
            .await;
        let mut m = self.app_record(app, label, connectivity, Vec::new(), 0.0);
        m.started_at = started_at;
        for (_, dns) in resolved {
            m.dns.extend(dns);
        }
        let app_obs = m.app.as_mut().expect("app record");
        for (e, steps) in results {
            app_obs.endpoints.push(e);
            m.tcp.extend(steps.tcp);
            m.tls.extend(steps.tls);
        }
        m.runtime_ms = ms_since(t0);
        m
    }

    /// One endpoint: pick its address (listed, or the network resolver's first answer), then
    /// probe it.
    async fn probe_endpoint(
        &self,
        ep: &EndpointSpec,
        kind: AppKind,
        dns: &[DnsObservation],
        tls: &AppTls,
        t0: Instant,
    ) -> (EndpointObservation, Steps) {
        let mut steps = Steps::default();
        let ip = match ep.ip() {
            Some(ip) => ip,
            None => match pick_address(dns, self.cfg.ipv6) {
                Ok(ip) => ip,
                Err(failure) => {
                    let mut o = probe::blank(ep, None, t0);
                    o.failed_step = Some(Step::Dns);
                    o.failure = failure;
                    return (o, steps);
                }
            },
        };
        let addr = SocketAddr::new(ip, ep.port);
        if !self.allow_bogon_targets && self.cfg.bogons.is_bogon(ip) {
            let mut o = probe::blank(ep, Some(addr), t0);
            o.failed_step = Some(Step::Tcp);
            o.failure = Some(Failure::unknown("refused: a private or reserved address"));
            return (o, steps);
        }
        let obs = match ep.probe {
            EndpointProbe::Tcp
            | EndpointProbe::Tls
            | EndpointProbe::Https
            | EndpointProbe::Dirport => {
                probe::probe_stream(ep, addr, &self.cfg, tls, t0, &mut steps).await
            }
            _ => {
                let twin = kind == AppKind::Reflector;
                crate::apps::reflect::probe_protocol(ep, addr, &self.cfg, t0, &mut steps, twin)
                    .await
            }
        };
        (obs, steps)
    }
}

/// The address to probe: the network resolver's first public answer (IPv4 first). Only
/// private or reserved answers count as a DNS failure (with no failure name: the answer is
/// the evidence); no answer at all is the query's failure.
fn pick_address(dns: &[DnsObservation], ipv6: bool) -> Result<IpAddr, Option<Failure>> {
    let net: Vec<&DnsObservation> = dns
        .iter()
        .filter(|d| d.role == ResolverRole::Network)
        .collect();
    let answers: Vec<_> = net
        .iter()
        .filter(|d| d.failure.is_none())
        .flat_map(|d| d.answers.iter())
        .filter(|a| ipv6 || a.addr.is_ipv4())
        .collect();
    if let Some(a) = answers
        .iter()
        .filter(|a| !a.bogon)
        .min_by_key(|a| !a.addr.is_ipv4())
    {
        return Ok(a.addr);
    }
    if !answers.is_empty() {
        return Err(None);
    }
    Err(Some(
        net.iter()
            .find_map(|d| d.failure.clone())
            .unwrap_or(Failure::DnsNoAnswer),
    ))
}

/// Decide an app record's verdict and write each endpoint's outcome into it.
pub fn decide_app(m: &mut Measurement, offline: bool) {
    let (verdict, outcomes) = crate::apps::verdict::decide(m, offline);
    if let Some(app) = m.app.as_mut() {
        for (e, (status, method)) in app.endpoints.iter_mut().zip(outcomes) {
            e.status = status;
            e.method = method;
        }
    }
    m.verdict = verdict;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{DnsAnswer, QueryType};

    fn net(failure: Option<Failure>, answers: &[(&str, bool)]) -> DnsObservation {
        DnsObservation {
            role: ResolverRole::Network,
            transport: "udp".into(),
            resolver: "r".into(),
            query: "h".into(),
            query_type: QueryType::A,
            t_ms: 0.0,
            duration_ms: 0.0,
            failure,
            rcode: None,
            answers: answers
                .iter()
                .map(|(a, bogon)| DnsAnswer {
                    addr: a.parse().unwrap(),
                    ttl: 1,
                    bogon: *bogon,
                })
                .collect(),
            cnames: vec![],
            late_responses: vec![],
        }
    }

    #[test]
    fn the_address_probed_is_the_first_public_answer_ipv4_first() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let both = [net(None, &[("2001:db8::1", false), ("203.0.113.1", false)])];
        assert_eq!(pick_address(&both, true), Ok(ip("203.0.113.1")));
        let v6 = [net(None, &[("2001:db8::1", false)])];
        assert_eq!(pick_address(&v6, true), Ok(ip("2001:db8::1")));
        assert_eq!(pick_address(&v6, false), Err(Some(Failure::DnsNoAnswer)));
        // Only bogons: a DNS failure whose evidence is the answer itself.
        let bogon = [net(None, &[("10.0.0.1", true)])];
        assert_eq!(pick_address(&bogon, true), Err(None));
        let nx = [net(Some(Failure::DnsNxdomain), &[])];
        assert_eq!(pick_address(&nx, true), Err(Some(Failure::DnsNxdomain)));
    }

    #[test]
    fn categories_follow_the_kind() {
        assert_eq!(app_category(AppKind::Messaging), "COMT");
        assert_eq!(app_category(AppKind::Tor), "ANON");
        assert_eq!(app_category(AppKind::Reflector), "ANON");
    }
}
