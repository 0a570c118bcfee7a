//! Connectivity and reference transfers: whether the line works at all before a run, and the
//! line's own speed measured alongside the targets.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use super::{Engine, Observations};
use crate::checks::dns::{self};
use crate::checks::tcp;
use crate::failure::Failure;
use crate::model::{
    resolved_addrs, ConnectivitySummary, DnsObservation, ReferenceTransfer, ResolverCheck,
};

impl Engine {
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
            // Each family on its own, concurrently: whether IPv6 works is a finding too.
            let family = |v6: bool| {
                let ips: Vec<IpAddr> = ips
                    .iter()
                    .filter(|ip| ip.is_ipv6() == v6)
                    .take(2)
                    .copied()
                    .collect();
                async move {
                    if ips.is_empty() {
                        return None;
                    }
                    for ip in ips {
                        let (obs, _) =
                            tcp::connect(SocketAddr::new(ip, *port), &self.cfg, t0).await;
                        if obs.failure.is_none() {
                            return Some(true);
                        }
                    }
                    Some(false)
                }
            };
            let (v4, v6) = tokio::join!(family(false), family(true));
            (resolved, v4, v6)
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
        let anchors_ok = anchors
            .iter()
            .filter(|(_, v4, v6)| *v4 == Some(true) || *v6 == Some(true))
            .count() as u32;
        let resolver_ok = (!anchors.is_empty()).then(|| anchors.iter().any(|(d, _, _)| *d));
        let v4_ok = anchors.iter().any(|(_, v4, _)| *v4 == Some(true));
        let ipv6_ok = ipv6_state(v4_ok, anchors.iter().map(|(_, _, v6)| *v6));
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
        if !offline && ipv6_ok == Some(false) {
            summary.push_str(
                " IPv6 does not work on this network (no anchor answered over it): verdicts are \
                 judged over IPv4 alone.",
            );
        }
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
            ipv6_ok,
            summary,
            references: Vec::new(),
            control_resolvers,
        }
    }
}

/// Whether IPv6 works, from each anchor's IPv6 result (`None`: none of its addresses is
/// IPv6) and whether IPv4 reached any anchor. Broken (`false`) needs IPv4 working: with
/// nothing reachable the run is offline, which says more.
pub(super) fn ipv6_state(v4_ok: bool, v6: impl Iterator<Item = Option<bool>>) -> Option<bool> {
    let tried: Vec<bool> = v6.flatten().collect();
    if tried.iter().any(|ok| *ok) {
        Some(true)
    } else if !tried.is_empty() && v4_ok {
        Some(false)
    } else {
        None
    }
}

/// The figures of one reference transfer: the first completed real handshake, and the final
/// response's body.
pub(super) fn reference_from(anchor: String, obs: &Observations) -> ReferenceTransfer {
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

/// What the encrypted resolver check found, in a sentence; `None` when the first resolver of
/// the chain works (nothing worth saying) or there is none.
pub(super) fn resolver_chain_summary(checks: &[ResolverCheck]) -> Option<String> {
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
