//! Stage 2, DNS: the network resolver's answers against the control's, and answers that
//! cannot be honest whatever the control says (injected, bogon).

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use crate::failure::Failure;
use crate::model::{DnsObservation, HttpObservation, Method, QueryType, Step};

use super::compare::{
    first_answer_text, injected_answers, injected_evidence, late_answer_text, pages_similar,
};
use super::evidence::Evidence;
use super::evidence::{DnsResult, DnsSource, HttpsWitnessResult};
use super::facts::{addrs_of, final_response, join_addrs, Facts, Outcome, MAX_EVIDENCE_ADDRS};

/// How the network resolver's addresses compare with the control's.
#[derive(Clone, Debug, PartialEq)]
enum DnsConsistency {
    /// Nothing to compare with: no control addresses, or no network addresses.
    Unknown,
    /// At least one address in common.
    Common,
    /// No address in common, but a verified handshake to a network address proves it serves
    /// the real site (typically a CDN that answers differently per vantage point).
    ProvenByTls(SocketAddr),
    /// No address in common, but (cleartext) the page fetched from a network address matches
    /// the control's: a transparent proxy relaying the real content is not a block.
    ProvenByPage,
    /// No address in common, but the page fetched from a network address matches the page
    /// fetched from the encrypted resolver's addresses: the same, without the control.
    ProvenBySecondFetch,
    /// No address in common, and the fetch from the encrypted resolver's addresses failed at
    /// the same step, the same way, as the fetch from the network's: the addresses are not
    /// what fails, so the later stages judge.
    NotTheCause(Step, Failure),
    /// No address in common; the network's address served a page, but neither the control nor
    /// the encrypted resolver's address gave one to compare it with.
    Unproven,
    /// No address in common and no proof: the answers are forged.
    Inconsistent,
}

/// Compare the network resolver's addresses with the control's, and look for proof that
/// differing addresses still serve the real site.
fn dns_consistency(f: &Facts) -> DnsConsistency {
    if f.net_addrs.is_empty() || f.ctl_addrs.is_empty() {
        return DnsConsistency::Unknown;
    }
    if f.net_addrs.iter().any(|a| f.ctl_addrs.contains(a)) {
        return DnsConsistency::Common;
    }
    if let Some(t) = f
        .tls
        .iter()
        .find(|t| t.verified() && f.net_addrs.contains(&t.addr.ip()))
    {
        return DnsConsistency::ProvenByTls(t.addr);
    }
    let from_network_addr = f
        .hops
        .first()
        .and_then(|h| h.addr)
        .is_some_and(|a| f.net_addrs.contains(&a.ip()));
    // The page the network's answer led to: never a known blockpage.
    let network_page = final_response(&f.m.http).filter(|p| {
        from_network_addr && p.blockpage.is_none() && f.hops.iter().all(|h| h.blockpage.is_none())
    });
    let ctl_page = f.control.and_then(|c| final_response(&c.http));
    if !f.https {
        if let (Some(p), Some(c)) = (network_page, ctl_page) {
            if pages_similar(p, c) {
                return DnsConsistency::ProvenByPage;
            }
        }
    }
    match second_page(f) {
        Some(Ok(q)) => match network_page {
            Some(p) if pages_similar(p, q) => DnsConsistency::ProvenBySecondFetch,
            _ => DnsConsistency::Inconsistent,
        },
        Some(Err((step, failure))) => {
            if network_failure(f).is_some_and(|(s, x)| s == step && x == failure) {
                DnsConsistency::NotTheCause(step, failure)
            } else if network_page.is_some() && ctl_page.is_none() {
                DnsConsistency::Unproven
            } else {
                DnsConsistency::Inconsistent
            }
        }
        None => DnsConsistency::Inconsistent,
    }
}

/// The final page fetched from the encrypted resolver's addresses, or where that fetch stopped
/// (step and failure). `None` when no such fetch was made.
fn second_page<'a>(f: &Facts<'a>) -> Option<Result<&'a HttpObservation, (Step, Failure)>> {
    let last = *f.second.last()?;
    if let Some(h) = f.second.iter().find(|h| h.failure.is_some()) {
        let failure = h.failure.clone().unwrap_or_else(|| Failure::unknown(""));
        return Some(Err((h.failed_step.unwrap_or(Step::Http), failure)));
    }
    match last.status {
        Some(_) => Some(Ok(last)),
        None => Some(Err((Step::Http, Failure::unknown("no response")))),
    }
}

/// Where fetching the page from the network's addresses stopped: the first failed hop, or
/// (no exchange at all) the connects or handshakes that all failed.
fn network_failure(f: &Facts) -> Option<(Step, Failure)> {
    if let Some(h) = f.hops.iter().find(|h| h.failure.is_some()) {
        let failure = h.failure.clone()?;
        return Some((h.failed_step.unwrap_or(Step::Http), failure));
    }
    if !f.hops.is_empty() {
        return None;
    }
    let tcp: Vec<_> =
        f.m.tcp
            .iter()
            .filter(|t| f.net_addrs.contains(&t.addr.ip()))
            .collect();
    if !tcp.is_empty() && tcp.iter().all(|t| t.failure.is_some()) {
        return Some((Step::Tcp, tcp[0].failure.clone()?));
    }
    let tls: Vec<_> = f
        .tls
        .iter()
        .filter(|t| f.net_addrs.contains(&t.addr.ip()))
        .collect();
    tls.iter()
        .find_map(|t| t.failure.clone())
        .map(|x| (Step::Tls, x))
}

/// What the fetch from the encrypted resolver's addresses showed, as evidence.
fn second_fetch_evidence(f: &Facts) -> Option<Evidence> {
    let result = match second_page(f)? {
        Ok(q) => {
            let same = final_response(&f.m.http)
                .is_some_and(|p| p.blockpage.is_none() && pages_similar(p, q));
            if same {
                HttpsWitnessResult::SamePage
            } else {
                HttpsWitnessResult::DifferentPage {
                    status: q.status.unwrap_or_default(),
                    body_length: q.body_length,
                    title: q.title.clone(),
                }
            }
        }
        Err((step, failure)) => HttpsWitnessResult::Unavailable(failure.name(), Some(step)),
    };
    Some(Evidence::DnsControlAddressPage(result))
}

pub(super) fn stage(f: &Facts, ev: &mut Vec<Evidence>) -> Option<Outcome> {
    if f.net_dns.is_empty() {
        // An IP-literal URL, or DNS not measured: nothing to judge here.
        return None;
    }
    ev.push(dns_summary(DnsSource::Network, &f.net_dns));
    if !f.svc_dns.is_empty() {
        ev.push(dns_summary(DnsSource::ControlService, &f.svc_dns));
    }
    if !f.doh_dns.is_empty() {
        ev.push(dns_summary(DnsSource::ControlResolver, &f.doh_dns));
    }
    // Encrypted resolvers this network blocked: the DNS comparison below rests on the rest.
    for c in &f.m.connectivity.control_resolvers {
        if let Some(x) = &c.failure {
            ev.push(Evidence::ControlResolverFailed {
                failure: x.name(),
                resolver: c.label(),
            });
        }
    }
    let domain = &f.domain;

    // Injection: two different answers to one query cannot both be honest.
    let injected = injected_answers(&f.net_dns);
    if let Some((first, late)) = injected.first() {
        for (o, l) in injected.iter().take(MAX_EVIDENCE_ADDRS) {
            ev.push(injected_evidence(o, l));
        }
        return Some(Outcome::blocked(
            Method::Dns,
            format!(
                "two different DNS answers came back for one query about {domain} ({}, then {}): \
                 an injected answer raced the real one",
                first_answer_text(first),
                late_answer_text(late)
            ),
        ));
    }

    if f.net_addrs.is_empty() {
        return Some(dns_failure(f, ev));
    }

    // Bogons: no public site has a private or reserved address, unless its own DNS says so.
    let bogons: Vec<IpAddr> = f
        .net_dns
        .iter()
        .filter(|o| o.failure.is_none())
        .flat_map(|o| &o.answers)
        .filter(|a| a.bogon && !f.ctl_addrs.contains(&a.addr))
        .map(|a| a.addr)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if !bogons.is_empty() {
        ev.push(Evidence::DnsBogon(bogons.clone()));
        let ctl_answers: Vec<_> = f
            .ctl_dns()
            .filter(|o| o.failure.is_none())
            .flat_map(|o| &o.answers)
            .collect();
        if !ctl_answers.is_empty() && ctl_answers.iter().all(|a| a.bogon) {
            ev.push(Evidence::DnsControlBogonAll);
            return Some(Outcome::down(format!(
                "{domain} points at addresses no public site can have ({}) for the control too: \
                 the site's own DNS is broken",
                join_addrs(&f.ctl_addrs)
            )));
        }
        let compared = if f.ctl_addrs.is_empty() {
            "a bogon is never a real site's address".to_string()
        } else {
            format!("the control resolved {}", join_addrs(&f.ctl_addrs))
        };
        return Some(Outcome::blocked(
            Method::Dns,
            format!(
                "the network's resolver answered {} for {domain}, an address no public site can \
                 have ({compared}): DNS tampering",
                join_addrs(&bogons)
            ),
        ));
    }

    let redirected = Evidence::DnsRedirected {
        network: f.net_addrs.clone(),
        control: f.ctl_addrs.clone(),
    };
    match dns_consistency(f) {
        DnsConsistency::Unknown | DnsConsistency::Common => None,
        DnsConsistency::ProvenByTls(addr) => {
            ev.push(Evidence::DnsConsistentByTls(addr));
            None
        }
        DnsConsistency::ProvenByPage => {
            // The redirection stays on record: the name was sent elsewhere, the page relayed.
            ev.push(redirected);
            ev.push(Evidence::DnsConsistentByPage);
            ev.extend(second_fetch_evidence(f));
            None
        }
        DnsConsistency::ProvenBySecondFetch => {
            ev.push(redirected);
            ev.push(Evidence::DnsConsistentByPage);
            ev.extend(second_fetch_evidence(f));
            None
        }
        DnsConsistency::NotTheCause(..) => {
            // Both addresses fail alike: an innocent difference (a CDN), and the failure is
            // for the later stages to judge.
            ev.push(redirected);
            ev.extend(second_fetch_evidence(f));
            None
        }
        DnsConsistency::Unproven => {
            ev.push(redirected);
            ev.extend(second_fetch_evidence(f));
            Some(Outcome::inconclusive(format!(
                "the network's resolver points {domain} at {} instead of {}, and a page came \
                 from there, but the other addresses could not be fetched and the control gave \
                 no page, so nothing shows whether it is the real one",
                join_addrs(&f.net_addrs),
                join_addrs(&f.ctl_addrs)
            )))
        }
        DnsConsistency::Inconsistent => {
            ev.push(Evidence::DnsInconsistent {
                network: f.net_addrs.clone(),
                control: f.ctl_addrs.clone(),
            });
            ev.extend(second_fetch_evidence(f));
            let blockpage = f.hops.iter().find_map(|h| h.blockpage.as_deref());
            if let Some(bp) = blockpage {
                ev.push(Evidence::Blockpage(bp.to_string()));
            }
            for t in f.tls.iter().take(MAX_EVIDENCE_ADDRS) {
                if let Some(ca) = &t.interception_ca {
                    ev.push(Evidence::InterceptionCa(ca.clone()));
                }
            }
            let network_page = final_response(&f.m.http);
            let tail = match (blockpage, second_page(f)) {
                (Some(bp), _) => format!("which serves the blockpage {bp}"),
                (None, Some(Ok(_))) if network_page.is_some() => {
                    "which serves another page than the encrypted resolver's address does"
                        .to_string()
                }
                (None, Some(Ok(_))) => {
                    "which fails where the encrypted resolver's address serves the page".to_string()
                }
                _ => "and nothing shows that it serves the real site".to_string(),
            };
            Some(Outcome::blocked(
                Method::Dns,
                format!(
                    "the network's resolver points {domain} at {} instead of the control's {}, \
                     {tail}: DNS tampering",
                    join_addrs(&f.net_addrs),
                    join_addrs(&f.ctl_addrs)
                ),
            ))
        }
    }
}

/// The network resolver gave no address: compare with the control, query type by query type,
/// so a name with only IPv6 addresses is not called blocked for lacking an A record.
fn dns_failure(f: &Facts, ev: &mut Vec<Evidence>) -> Outcome {
    let domain = &f.domain;
    let failure = f
        .net_dns
        .iter()
        .filter(|o| o.query_type == QueryType::A)
        .chain(&f.net_dns)
        .find_map(|o| o.failure.clone())
        .unwrap_or(Failure::DnsNoAnswer);
    let what = match &failure {
        Failure::DnsNxdomain => format!("the network's resolver says {domain} does not exist"),
        Failure::DnsNoAnswer => format!("the network's resolver returned no address for {domain}"),
        Failure::DnsTimeout => format!("the network's resolver did not answer for {domain}"),
        Failure::DnsServfail => format!("the network's resolver answered SERVFAIL for {domain}"),
        Failure::DnsRefused => format!("the network's resolver refused to resolve {domain}"),
        Failure::DnsBadResponse => format!("the network's resolver answered garbage for {domain}"),
        other => format!("resolving {domain} failed ({})", other.name()),
    };
    let failed_types: Vec<QueryType> = f.net_dns.iter().map(|o| o.query_type).collect();
    let ctl_resolved = f.ctl_dns().any(|o| {
        o.failure.is_none()
            && !o.answers.is_empty()
            && (failed_types.contains(&o.query_type) || failure == Failure::DnsNxdomain)
    });
    // The control service is uncensored, so any failure of its own counts; the encrypted
    // resolver runs from the probe's network, so only an actual answer (NXDOMAIN, no address,
    // SERVFAIL) counts, never a timeout that the censor may have caused.
    let ctl_denies = f.svc_dns.iter().any(|o| o.failure.is_some())
        || f.doh_dns.iter().any(|o| {
            matches!(
                o.failure,
                Some(Failure::DnsNxdomain | Failure::DnsNoAnswer | Failure::DnsServfail)
            )
        });
    let resolver_dead = f.m.connectivity.resolver_ok == Some(false)
        && !matches!(
            failure,
            Failure::DnsNxdomain | Failure::DnsNoAnswer | Failure::DnsServfail
        );
    if resolver_dead {
        ev.push(Evidence::ResolverDead);
        return Outcome::inconclusive(format!(
            "{what}, but that resolver answered nothing else in this run either, so its silence \
             says nothing about this site"
        ));
    }
    if ctl_resolved {
        return Outcome::blocked(
            Method::Dns,
            format!("{what} while the control resolved it: DNS blocking"),
        );
    }
    if ctl_denies {
        return Outcome::down(format!(
            "{what}, and the control cannot resolve it either: the name does not resolve anywhere"
        ));
    }
    if f.control.is_none() {
        Outcome::inconclusive(format!(
            "{what}, but the control was unavailable, so a block cannot be told from a dead name"
        ))
    } else {
        Outcome::inconclusive(format!(
            "{what}, and the control gave no usable answer to compare with"
        ))
    }
}

/// How many addresses the queries resolved, else the failure (`nxdomain`, `timeout`, ...).
fn dns_summary(source: DnsSource, obs: &[&DnsObservation]) -> Evidence {
    let addrs = addrs_of(obs);
    if !addrs.is_empty() {
        return Evidence::Dns(source, DnsResult::Addrs(addrs.len()));
    }
    let failure = obs
        .iter()
        .find_map(|o| o.failure.as_ref())
        .map(|f| f.name().trim_start_matches("dns_").to_string())
        .unwrap_or_else(|| "no_answer".to_string());
    Evidence::Dns(source, DnsResult::Failed(failure))
}

#[cfg(test)]
pub(super) mod tests {
    use super::super::testkit::*;
    use crate::model::{Measurement, Method, Status};

    pub(in crate::verdict) const CASES: &[Case] = cases! {
        dns_nxdomain_with_control Plain => Blocked / Dns;
        dns_nxdomain_everywhere Plain => Down;
        dns_nxdomain_no_control Plain => Inconclusive;
        dns_timeout_resolver_dead Plain => Inconclusive;
        dns_bogon Plain => Blocked / Dns;
        dns_bogon_everywhere Plain => Down;
        dns_injected Plain => Blocked / Dns;
        dns_inconsistent_cdn_verified Plain => Accessible;
        dns_inconsistent_failing Plain => Blocked / Dns;
        dns_inconsistent_blockpage Plain => Blocked / Dns;
        dns_hijack_transparent_proxy Plain => Accessible;
        dns_relay_no_control_same_page Plain => Accessible;
        dns_relay_same_page Plain => Accessible;
        dns_notice_no_control Plain => Blocked / Dns;
        dns_notice Plain => Blocked / Dns;
        dns_sinkhole_no_control Plain => Blocked / Dns;
        dns_cdn_other_address_unreachable_no_control Plain => Inconclusive;
        dns_cdn_sni_blocked_everywhere_no_control Plain => Blocked / Tls;
        dns_nxdomain_doh_blocked Plain => Blocked / Dns;
    };

    #[test]
    fn table() {
        check(CASES);
    }

    #[test]
    fn reasons_and_evidence() {
        let v = verdict_of(dns_nxdomain_with_control, Ctx::Plain);
        assert!(cites(&v, "dns.network=nxdomain"), "{v:?}");
        assert!(cites(&v, "dns.control_resolver=1 addrs"), "{v:?}");

        let v = verdict_of(dns_inconsistent_blockpage, Ctx::Plain);
        assert!(v.reason.contains("d_corp_kz_ps"), "{}", v.reason);

        let v = verdict_of(dns_nxdomain_no_control, Ctx::Plain);
        assert!(
            v.reason.contains("the control was unavailable"),
            "{}",
            v.reason
        );
        assert!(cites(&v, "control=unavailable"));

        let v = verdict_of(dns_injected, Ctx::Plain);
        assert!(
            v.evidence
                .iter()
                .any(|e| e.starts_with("dns.injected=first:")),
            "{v:?}"
        );
        let v = verdict_of(dns_hijack_transparent_proxy, Ctx::Plain);
        assert!(cites(&v, "dns.consistent=same_page"), "{v:?}");
        assert!(
            cites(&v, "dns.redirected=network:198.18.9.9 control:198.18.0.10"),
            "{v:?}"
        );
    }

    #[test]
    fn two_answers_two_fetches() {
        // The relay: the same page from both addresses, the redirection on record.
        for build in [dns_relay_no_control_same_page, dns_relay_same_page] {
            let v = verdict_of(build, Ctx::Plain);
            assert!(cites(&v, "dns.control_address_page=same_page"), "{v:?}");
            assert!(cites(
                &v,
                "dns.redirected=network:198.18.9.9 control:198.18.0.10"
            ));
        }
        // Another page: DNS tampering, with what the real address served.
        let v = verdict_of(dns_notice_no_control, Ctx::Plain);
        assert!(
            cites(
                &v,
                "dns.control_address_page=different_page status=200 length=50000 \
                 title=\"Site news\""
            ),
            "{v:?}"
        );
        assert!(cites(
            &v,
            "dns.inconsistent=network:198.18.9.9 control:198.18.0.10"
        ));
        assert!(v.reason.contains("another page"), "{}", v.reason);
        let v = verdict_of(dns_sinkhole_no_control, Ctx::Plain);
        assert!(v.reason.contains("fails where"), "{}", v.reason);
        // An innocent difference stays innocent: nothing to compare is inconclusive, and a
        // failure that happens at every address is judged by its own stage.
        let v = verdict_of(dns_cdn_other_address_unreachable_no_control, Ctx::Plain);
        assert!(
            cites(&v, "dns.control_address_page=generic_timeout@tcp"),
            "{v:?}"
        );
        let v = verdict_of(dns_cdn_sni_blocked_everywhere_no_control, Ctx::Plain);
        assert!(
            cites(&v, "dns.control_address_page=generic_timeout@tls"),
            "{v:?}"
        );
        assert!(cites(&v, "tls.decoy=ok@198.18.5.5:443"), "{v:?}");
        assert!(
            !v.evidence.iter().any(|e| e.contains("198.18.0.10:443")),
            "the second fetch's handshakes are not the target's: {v:?}"
        );
    }

    #[test]
    fn blocked_control_resolvers_are_named() {
        let v = verdict_of(dns_nxdomain_doh_blocked, Ctx::Plain);
        assert!(
            cites(
                &v,
                "dns.control_resolver.failed=connection_reset@doh:resolver.lab@198.18.100.54:443"
            ),
            "{v:?}"
        );
        assert!(
            !v.evidence
                .iter()
                .any(|e| e.contains("failed=") && e.contains("dot:")),
            "the working resolver is not named: {v:?}"
        );
        let v = verdict_of(dns_nxdomain_with_control, Ctx::Plain);
        assert!(
            !v.evidence
                .iter()
                .any(|e| e.starts_with("dns.control_resolver.failed")),
            "{v:?}"
        );
    }
}
