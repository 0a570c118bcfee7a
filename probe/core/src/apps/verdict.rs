//! The app verdict: pure, from one app measurement's endpoints (and its DNS observations) to
//! each endpoint's outcome and the app's verdict. No I/O, table-tested.
//!
//! An endpoint has no control measurement of its own (as in OONI's app tests), so the rules
//! lean on comparisons the probe makes itself: the encrypted control resolver for DNS, the
//! random twin for a reflector protocol, and the reflector's other ports for "down". A plain
//! connect or handshake failure on a network whose anchors answer is called blocked, as OONI
//! calls it; a failure of the local network itself is inconclusive.
//!
//! | endpoint observation | outcome |
//! |---|---|
//! | run offline | `offline` |
//! | every step worked | `accessible` |
//! | network DNS answered only private/reserved addresses | `blocked` `dns` |
//! | network DNS failed, the encrypted resolver answered addresses | `blocked` `dns` |
//! | both resolvers say the name does not exist | `down` |
//! | network DNS failed, no encrypted answer to compare | `inconclusive` |
//! | connect failed (reflector: another port answered) | `blocked` `tcp` |
//! | certificate does not verify | `blocked` `mitm` |
//! | handshake cut | `blocked` `tls` |
//! | HTTP exchange cut, or not the expected answer | `blocked` `http` |
//! | protocol unanswered, same-size random payload answered | `blocked` `protocol` |
//! | UDP protocol and twin unanswered, another reflector port answered | `blocked` `udp` |
//! | reflector: nothing answered on any port | `down` |
//! | local network failure (no route) | `inconclusive` |
//!
//! The app: `blocked` when any endpoint is blocked (the reason says *partially* and names them
//! when others work), else `accessible` when any works, else `down`, else `inconclusive`.

use std::collections::BTreeMap;

use crate::failure::Failure;
use crate::model::{
    AppKind, DnsObservation, EndpointObservation, EndpointProbe, Measurement, Method, ResolverRole,
    Status, Step, Verdict,
};

/// Most endpoints named in a verdict's reason (the evidence lists all).
const REASON_NAMES: usize = 4;

/// One endpoint's outcome.
pub type Outcome = (Status, Option<Method>);

/// Whether a probe runs over UDP.
pub fn is_udp(p: EndpointProbe) -> bool {
    matches!(
        p,
        EndpointProbe::Wireguard
            | EndpointProbe::OpenvpnUdp
            | EndpointProbe::Quic
            | EndpointProbe::Stun
    )
}

/// Whether anything on this endpoint answered: the real exchange or its twin.
fn answered(e: &EndpointObservation) -> bool {
    e.failed_step.is_none() || e.twin.as_ref().is_some_and(|t| t.answered)
}

fn dns_for<'a>(
    dns: &'a [DnsObservation],
    host: &'a str,
    role: ResolverRole,
) -> impl Iterator<Item = &'a DnsObservation> + 'a {
    dns.iter()
        .filter(move |d| d.role == role && d.query.eq_ignore_ascii_case(host))
}

/// The outcome of one endpoint. `reflector_alive`: some endpoint of the same reflector answered.
pub fn endpoint_outcome(
    e: &EndpointObservation,
    dns: &[DnsObservation],
    kind: AppKind,
    reflector_alive: bool,
    offline: bool,
) -> Outcome {
    use Status::*;
    if offline {
        return (Offline, None);
    }
    let Some(step) = e.failed_step else {
        return (Accessible, None);
    };
    let failure = e.failure.clone().unwrap_or_else(|| Failure::unknown(""));
    if failure.is_local_network() {
        return (Inconclusive, None);
    }
    let reflector_down = kind == AppKind::Reflector && !reflector_alive;
    match step {
        Step::Dns => {
            let name = e.front.as_deref().unwrap_or(&e.host);
            let net: Vec<_> = dns_for(dns, name, ResolverRole::Network).collect();
            let answers: Vec<_> = net.iter().flat_map(|d| d.answers.iter()).collect();
            if !answers.is_empty() && answers.iter().all(|a| a.bogon) {
                return (Blocked, Some(Method::Dns));
            }
            let ctl: Vec<_> = dns_for(dns, name, ResolverRole::Control).collect();
            let ctl_addrs = ctl
                .iter()
                .any(|d| d.failure.is_none() && d.answers.iter().any(|a| !a.bogon));
            let ctl_nx = ctl
                .iter()
                .any(|d| matches!(d.failure, Some(Failure::DnsNxdomain | Failure::DnsNoAnswer)));
            if ctl_addrs {
                (Blocked, Some(Method::Dns))
            } else if ctl_nx && matches!(failure, Failure::DnsNxdomain | Failure::DnsNoAnswer) {
                (Down, None)
            } else {
                (Inconclusive, None)
            }
        }
        _ if reflector_down => (Down, None),
        Step::Tcp => (Blocked, Some(Method::Tcp)),
        Step::Tls if failure.is_certificate() => (Blocked, Some(Method::Mitm)),
        Step::Tls => (Blocked, Some(Method::Tls)),
        Step::Http => (Blocked, Some(Method::Http)),
        Step::Protocol => {
            if e.twin.as_ref().is_some_and(|t| t.answered) {
                (Blocked, Some(Method::Protocol))
            } else if is_udp(e.probe) {
                (Blocked, Some(Method::Udp))
            } else {
                (Blocked, Some(Method::Tcp))
            }
        }
    }
}

fn probe_name(p: EndpointProbe) -> String {
    serde_json::to_value(p)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// `HOST:PORT/probe`, as evidence and reasons name an endpoint.
pub fn endpoint_label(e: &EndpointObservation) -> String {
    let host = if e.host.contains(':') {
        format!("[{}]", e.host)
    } else {
        e.host.clone()
    };
    format!("{host}:{}/{}", e.port, probe_name(e.probe))
}

/// Every endpoint's outcome and the app's verdict. A measurement without `app` gets an
/// inconclusive verdict (it is a website; [`crate::verdict::decide`] is its verdict).
pub fn decide(m: &Measurement, offline: bool) -> (Verdict, Vec<Outcome>) {
    let Some(app) = &m.app else {
        return (
            Verdict::new(Status::Inconclusive, None, "not an app measurement"),
            vec![],
        );
    };
    let alive = app.endpoints.iter().any(answered);
    let outcomes: Vec<Outcome> = app
        .endpoints
        .iter()
        .map(|e| endpoint_outcome(e, &m.dns, app.kind, alive, offline))
        .collect();
    let mut evidence: Vec<String> = app
        .endpoints
        .iter()
        .zip(&outcomes)
        .map(|(e, (s, meth))| {
            let mut line = format!("app.endpoint={}:{s}", endpoint_label(e));
            if let Some(meth) = meth {
                line.push_str(&format!(":{meth}"));
            }
            if let Some(f) = &e.failure {
                line.push_str(&format!(":{}", f.name()));
            }
            line
        })
        .collect();
    let count = |st: Status| outcomes.iter().filter(|(s, _)| *s == st).count();
    let total = outcomes.len();
    let name = &app.name;
    let verdict = if offline {
        Verdict::new(
            Status::Offline,
            None,
            "the network is offline: nothing was tried",
        )
    } else if count(Status::Blocked) > 0 {
        let blocked: Vec<(&EndpointObservation, Method)> = app
            .endpoints
            .iter()
            .zip(&outcomes)
            .filter_map(|(e, (s, meth))| (*s == Status::Blocked).then_some((e, (*meth)?)))
            .collect();
        // The method most endpoints are blocked by; ties go to the earlier step.
        let mut by: BTreeMap<Method, usize> = BTreeMap::new();
        for (_, meth) in &blocked {
            *by.entry(*meth).or_default() += 1;
        }
        let method = by
            .iter()
            .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
            .map(|(m, _)| *m);
        let mut names: Vec<String> = blocked
            .iter()
            .take(REASON_NAMES)
            .map(|(e, meth)| format!("{} ({meth})", endpoint_label(e)))
            .collect();
        if blocked.len() > REASON_NAMES {
            names.push(format!("and {} more", blocked.len() - REASON_NAMES));
        }
        let working = count(Status::Accessible);
        let reason = if working > 0 {
            evidence.push("app.partial=true".into());
            format!(
                "{name} is partially blocked: {} of {total} endpoints are blocked ({}); {working} work",
                blocked.len(),
                names.join(", ")
            )
        } else {
            format!(
                "{name} is blocked: {} of {total} endpoints are blocked ({}), none works",
                blocked.len(),
                names.join(", ")
            )
        };
        Verdict::new(Status::Blocked, method, reason)
    } else if count(Status::Accessible) > 0 {
        Verdict::new(
            Status::Accessible,
            None,
            format!(
                "{name} works: {} of {total} endpoints answered, none is blocked",
                count(Status::Accessible)
            ),
        )
    } else if count(Status::Down) > 0 {
        let what = if app.kind == AppKind::Reflector {
            "the reflector answered on no port: it is down (or its address is unreachable from here)"
        } else {
            "its endpoints are gone for the encrypted resolver too"
        };
        Verdict::new(Status::Down, None, format!("{name} is down: {what}"))
    } else {
        Verdict::new(
            Status::Inconclusive,
            None,
            format!("{name}: no endpoint could be judged (the local network failed, or DNS failed with nothing to compare)"),
        )
    };
    (
        Verdict {
            evidence,
            ..verdict
        },
        outcomes,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{
        AppObservation, ConnectivitySummary, DnsAnswer, ProbeNetwork, QueryType, Software,
        TwinObservation,
    };
    use Method as M;
    use Status as S;

    fn ep(
        probe: EndpointProbe,
        step: Option<Step>,
        failure: Option<Failure>,
    ) -> EndpointObservation {
        EndpointObservation {
            host: "h.example".into(),
            port: 443,
            front: None,
            probe,
            addr: None,
            t_ms: 0.0,
            duration_ms: 1.0,
            failed_step: step,
            failure,
            http_status: None,
            sent_bytes: None,
            twin: None,
            status: S::Inconclusive,
            method: None,
        }
    }

    fn twin(answered: bool) -> Option<TwinObservation> {
        Some(TwinObservation {
            sent_bytes: 148,
            answered,
            failure: (!answered).then_some(Failure::GenericTimeout),
            duration_ms: 1.0,
        })
    }

    fn dns(role: ResolverRole, failure: Option<Failure>, addrs: &[(&str, bool)]) -> DnsObservation {
        DnsObservation {
            role,
            transport: "udp".into(),
            resolver: "r".into(),
            query: "h.example".into(),
            query_type: QueryType::A,
            t_ms: 0.0,
            duration_ms: 1.0,
            failure,
            rcode: None,
            answers: addrs
                .iter()
                .map(|(a, bogon)| DnsAnswer {
                    addr: a.parse().unwrap(),
                    ttl: 60,
                    bogon: *bogon,
                })
                .collect(),
            cnames: vec![],
            late_responses: vec![],
        }
    }

    #[test]
    #[allow(clippy::type_complexity)] // a table's row
    fn endpoint_rules() {
        use EndpointProbe as P;
        let nx = Some(Failure::DnsNxdomain);
        let net_nx = dns(ResolverRole::Network, nx.clone(), &[]);
        let ctl_ok = dns(ResolverRole::Control, None, &[("203.0.113.5", false)]);
        let ctl_nx = dns(ResolverRole::Control, nx.clone(), &[]);
        let net_bogon = dns(ResolverRole::Network, None, &[("10.0.0.1", true)]);
        let mut reset = ep(P::Tcp, Some(Step::Tcp), Some(Failure::ConnectionReset));
        let cases: Vec<(
            &str,
            EndpointObservation,
            Vec<DnsObservation>,
            AppKind,
            bool,
            bool,
            Outcome,
        )> = vec![
            (
                "ok",
                ep(P::Tcp, None, None),
                vec![],
                AppKind::Messaging,
                true,
                false,
                (S::Accessible, None),
            ),
            (
                "offline",
                ep(P::Tcp, None, None),
                vec![],
                AppKind::Messaging,
                true,
                true,
                (S::Offline, None),
            ),
            (
                "dns nx vs control",
                ep(P::Tcp, Some(Step::Dns), nx.clone()),
                vec![net_nx.clone(), ctl_ok.clone()],
                AppKind::Messaging,
                true,
                false,
                (S::Blocked, Some(M::Dns)),
            ),
            (
                "dns nx both",
                ep(P::Tcp, Some(Step::Dns), nx.clone()),
                vec![net_nx.clone(), ctl_nx],
                AppKind::Messaging,
                true,
                false,
                (S::Down, None),
            ),
            (
                "dns nx no control",
                ep(P::Tcp, Some(Step::Dns), nx.clone()),
                vec![net_nx],
                AppKind::Messaging,
                true,
                false,
                (S::Inconclusive, None),
            ),
            (
                "dns bogon",
                ep(P::Tcp, Some(Step::Dns), None),
                vec![net_bogon],
                AppKind::Messaging,
                true,
                false,
                (S::Blocked, Some(M::Dns)),
            ),
            (
                "tcp reset",
                reset.clone(),
                vec![],
                AppKind::Messaging,
                true,
                false,
                (S::Blocked, Some(M::Tcp)),
            ),
            (
                "no route",
                ep(P::Tcp, Some(Step::Tcp), Some(Failure::NetworkUnreachable)),
                vec![],
                AppKind::Messaging,
                true,
                false,
                (S::Inconclusive, None),
            ),
            (
                "mitm",
                ep(
                    P::Https,
                    Some(Step::Tls),
                    Some(Failure::SslUnknownAuthority),
                ),
                vec![],
                AppKind::Messaging,
                true,
                false,
                (S::Blocked, Some(M::Mitm)),
            ),
            (
                "sni",
                ep(P::Https, Some(Step::Tls), Some(Failure::ConnectionReset)),
                vec![],
                AppKind::Messaging,
                true,
                false,
                (S::Blocked, Some(M::Tls)),
            ),
            (
                "http",
                ep(P::Https, Some(Step::Http), Some(Failure::Eof)),
                vec![],
                AppKind::Messaging,
                true,
                false,
                (S::Blocked, Some(M::Http)),
            ),
            (
                "protocol",
                EndpointObservation {
                    twin: twin(true),
                    ..ep(
                        P::Wireguard,
                        Some(Step::Protocol),
                        Some(Failure::GenericTimeout),
                    )
                },
                vec![],
                AppKind::Reflector,
                true,
                false,
                (S::Blocked, Some(M::Protocol)),
            ),
            (
                "udp port",
                EndpointObservation {
                    twin: twin(false),
                    ..ep(P::Quic, Some(Step::Protocol), Some(Failure::GenericTimeout))
                },
                vec![],
                AppKind::Reflector,
                true,
                false,
                (S::Blocked, Some(M::Udp)),
            ),
            (
                "tcp proto both silent",
                EndpointObservation {
                    twin: twin(false),
                    ..ep(
                        P::Shadowsocks,
                        Some(Step::Protocol),
                        Some(Failure::ConnectionReset),
                    )
                },
                vec![],
                AppKind::Reflector,
                true,
                false,
                (S::Blocked, Some(M::Tcp)),
            ),
            (
                "reflector down",
                EndpointObservation {
                    twin: twin(false),
                    ..ep(P::Quic, Some(Step::Protocol), Some(Failure::GenericTimeout))
                },
                vec![],
                AppKind::Reflector,
                false,
                false,
                (S::Down, None),
            ),
            (
                "reflector tcp down",
                ep(
                    P::OpenvpnTcp,
                    Some(Step::Tcp),
                    Some(Failure::ConnectionRefused),
                ),
                vec![],
                AppKind::Reflector,
                false,
                false,
                (S::Down, None),
            ),
        ];
        for (name, e, d, kind, alive, offline, want) in cases {
            assert_eq!(
                endpoint_outcome(&e, &d, kind, alive, offline),
                want,
                "{name}"
            );
        }
        reset.failed_step = None;
        assert!(answered(&reset));
    }

    fn app_measurement(kind: AppKind, endpoints: Vec<EndpointObservation>) -> Measurement {
        Measurement {
            schema_version: crate::model::SCHEMA_VERSION,
            id: uuid::Uuid::now_v7(),
            software: Software::default(),
            url: Measurement::app_url("x"),
            domain: "x".into(),
            category_code: None,
            started_at: chrono::Utc::now(),
            runtime_ms: 1.0,
            probe: ProbeNetwork::default(),
            dns: vec![],
            tcp: vec![],
            tls: vec![],
            http: vec![],
            control: None,
            control_failure: None,
            connectivity: ConnectivitySummary::default(),
            path: None,
            ab: vec![],
            app: Some(AppObservation {
                name: "x".into(),
                kind,
                list: "t".into(),
                endpoints,
            }),
            verdict: Verdict::new(S::Inconclusive, None, ""),
        }
    }

    #[test]
    #[allow(clippy::type_complexity)] // a table's row
    fn app_rules() {
        use EndpointProbe as P;
        let ok = || ep(P::Tcp, None, None);
        let cut = || ep(P::Tcp, Some(Step::Tcp), Some(Failure::GenericTimeout));
        let sni = || ep(P::Https, Some(Step::Tls), Some(Failure::ConnectionReset));
        let silent = || EndpointObservation {
            twin: twin(false),
            ..ep(P::Quic, Some(Step::Protocol), Some(Failure::GenericTimeout))
        };
        let cases: Vec<(&str, AppKind, Vec<EndpointObservation>, S, Option<M>, &str)> = vec![
            (
                "all work",
                AppKind::Messaging,
                vec![ok(), ok()],
                S::Accessible,
                None,
                "works: 2 of 2",
            ),
            (
                "all cut",
                AppKind::Messaging,
                vec![cut(), cut(), sni()],
                S::Blocked,
                Some(M::Tcp),
                "is blocked: 3 of 3",
            ),
            (
                "partial",
                AppKind::Messaging,
                vec![ok(), sni()],
                S::Blocked,
                Some(M::Tls),
                "partially blocked: 1 of 2",
            ),
            (
                "reflector down",
                AppKind::Reflector,
                vec![silent(), silent()],
                S::Down,
                None,
                "answered on no port",
            ),
            (
                "udp dropped",
                AppKind::Reflector,
                vec![silent(), ok()],
                S::Blocked,
                Some(M::Udp),
                "partially blocked",
            ),
        ];
        for (name, kind, eps, status, method, reason) in cases {
            let m = app_measurement(kind, eps);
            let (v, outs) = decide(&m, false);
            assert_eq!((v.status, v.method), (status, method), "{name}: {v:?}");
            assert!(v.reason.contains(reason), "{name}: {}", v.reason);
            assert_eq!(outs.len(), m.app.as_ref().unwrap().endpoints.len());
            assert_eq!(
                v.evidence
                    .iter()
                    .filter(|l| l.starts_with("app.endpoint="))
                    .count(),
                outs.len()
            );
        }
        let (v, _) = decide(&app_measurement(AppKind::Messaging, vec![ok()]), true);
        assert_eq!(v.status, S::Offline);
        let partial = decide(
            &app_measurement(AppKind::Messaging, vec![ok(), cut()]),
            false,
        )
        .0;
        assert!(partial.evidence.contains(&"app.partial=true".to_string()));
        assert!(
            partial
                .evidence
                .iter()
                .any(|l| l == "app.endpoint=h.example:443/tcp:blocked:tcp:generic_timeout"),
            "{:?}",
            partial.evidence
        );
    }
}
