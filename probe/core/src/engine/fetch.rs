//! DNS entry and the redirect chain: the first answer, the resolvers, the connect and handshake
//! of each address, and each hop of the chain within the target's deadline.

use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::Instant;

use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::{Engine, Observations};
use crate::checks::dns::{self, ms_since, FirstResponse};
use crate::checks::http::{self, Exchange};
use crate::checks::tcp;
use crate::failure::Failure;
use crate::model::{
    resolved_addrs, DnsObservation, HttpObservation, Step, TcpObservation, TlsObservation,
};
use crate::slots::{self};

impl Engine {
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
    pub(super) async fn query_control_resolvers(
        &self,
        url: &url::Url,
        t0: Instant,
    ) -> Vec<DnsObservation> {
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
        let addrs: Vec<SocketAddr> = pick_addrs(addrs, MAX_ADDRS)
            .into_iter()
            .map(|ip| SocketAddr::new(ip, port))
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
    pub(super) async fn follow_redirects(
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
    pub(super) async fn hop(
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
    pub(super) async fn connect_and_handshake(
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
}

/// Most addresses of one name measured: a CDN can return dozens.
pub(super) const MAX_ADDRS: usize = 4;

/// At most `max` of `addrs`, in their order, with both families represented when both are
/// there: the first of each family alternately. A name with many A records must not crowd out
/// its AAAA records, or a block of one family would never be seen.
pub(super) fn pick_addrs(addrs: &[IpAddr], max: usize) -> Vec<IpAddr> {
    let (v4, v6): (Vec<IpAddr>, Vec<IpAddr>) = addrs.iter().partition(|a| a.is_ipv4());
    let mut out = Vec::with_capacity(max.min(addrs.len()));
    let (mut a, mut b) = (v4.into_iter(), v6.into_iter());
    while out.len() < max {
        let (x, y) = (a.next(), b.next());
        if x.is_none() && y.is_none() {
            break;
        }
        out.extend(x);
        if out.len() < max {
            out.extend(y);
        }
    }
    out
}

/// The DNS, TCP and TLS observations of one connect-and-handshake phase (or one redirect
/// hop), as they complete.
#[derive(Default)]
pub(super) struct Steps {
    pub(super) dns: Vec<DnsObservation>,
    pub(super) tcp: Vec<TcpObservation>,
    pub(super) tls: Vec<TlsObservation>,
}

impl Steps {
    /// Move everything recorded into `out`.
    pub(super) fn drain_into(self, out: &mut Observations) {
        out.dns.extend(self.dns);
        out.tcp.extend(self.tcp);
        out.tls.extend(self.tls);
    }
}

/// The record of a hop (or the first exchange) that the target's deadline cut, at the step it
/// had reached.
pub(super) fn deadline_hop(
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

/// The URL's host without IPv6 brackets.
pub(super) fn url_host(url: &url::Url) -> Option<String> {
    url.host_str()
        .map(|h| h.trim_start_matches('[').trim_end_matches(']').to_string())
}

/// A measured connection ready for HTTP.
pub(super) enum Conn {
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
