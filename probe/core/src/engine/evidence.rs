//! Extra local evidence for a target that failed here: the page fetched at the control's
//! addresses, an HTTPS witness, and a decoy host on the same address.

use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::Instant;

use super::fetch::{deadline_hop, url_host, Steps};
use super::{Engine, Observations};
use crate::checks::ab;
use crate::checks::http::{self};
use crate::checks::ms_since;
use crate::checks::tcp;
use crate::failure::Failure;
use crate::model::{
    resolved_addrs, AbObservation, DnsObservation, HttpObservation, HttpRole, ResolverRole, Step,
};
use crate::verdict::{self};

impl Engine {
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
    pub(super) async fn local_evidence(
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

    /// The A/B test (see [`ab`]) for a target whose handshake or cleartext request failed in a
    /// censor-like way: the same exchange to the same address with an innocent name. Never to a
    /// bogon unless the engine allows them; within the target's deadline, keeping the trials
    /// made before it.
    pub(super) async fn ab_test(
        &self,
        url: &url::Url,
        obs: &Observations,
        t0: Instant,
        deadline: tokio::time::Instant,
    ) -> Option<AbObservation> {
        let innocent = self.cfg.decoy_sni.as_str();
        let plan = ab::plan(url, &obs.tls, &obs.http, innocent)?;
        if !self.allow_bogon_targets && self.cfg.bogons.is_bogon(plan.addr.ip()) {
            return None;
        }
        let t_ms = ms_since(t0);
        let start = Instant::now();
        let trials = Mutex::new(Vec::new());
        let _ = tokio::time::timeout_at(
            deadline,
            ab::run(
                &plan, innocent, &self.tls, &self.cfg, &self.own, t0, &trials,
            ),
        )
        .await;
        let trials = trials.into_inner().unwrap_or_else(|e| e.into_inner());
        if trials.is_empty() {
            // The deadline left no time for a single exchange: nothing was tested.
            return None;
        }
        Some(ab::observation(
            &plan,
            innocent,
            trials,
            t_ms,
            ms_since(start),
        ))
    }

    /// Two DNS answers, two fetches: when the network resolver's addresses have none in common
    /// with the encrypted control resolver's, the same URL is fetched again from the encrypted
    /// resolver's addresses, so the verdict can compare the page the network's answer led to
    /// with the page the name really leads to (a transparent proxy relaying the real page is
    /// not a block; another page is). Not made when a handshake to a network address verified
    /// for the name (a CDN answering per vantage point: the address is proven), or when the
    /// network's answer is a bogon (no page to compare). The exchanges carry
    /// [`HttpRole::ControlAddress`]; everything stays within the target's deadline.
    pub(super) async fn control_address_fetch(
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
    pub(super) fn https_witness_wanted(
        &self,
        obs: &Observations,
        control_http: &[HttpObservation],
    ) -> bool {
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
    pub(super) async fn decoy_host(
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
}
