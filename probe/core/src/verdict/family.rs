//! Address families: a dual-stack home judged fairly (OONI's longest-standing false positive,
//! ooni/probe#2192, is a LAN with IPv6 behind an ISP without it).
//!
//! Three rules:
//! - A network whose IPv6 is broken for everything (the run's connectivity check: no anchor
//!   answered over IPv6 while IPv4 works) says nothing about any site. The verdict is judged
//!   over IPv4 alone: [`ipv4_view`] drops the IPv6 connects, handshakes and fetches, the
//!   probe's and the control's, before any stage reads them.
//! - On such a network a site whose addresses are all IPv6 cannot be judged
//!   ([`only_broken_family`]): `inconclusive`, never `blocked`.
//! - A site that loads over one family while every connect of the other fails is blocked over
//!   that family only, when the control connected over it ([`stage`]). Without that comparison
//!   it stays accessible, with the failure cited: a family can fail for reasons of the site's.
//!   When the resolver's answers of that family share nothing with the control's, the answers
//!   were forged (an ISP forging AAAA only): `blocked/dns`.

use std::net::SocketAddr;

use crate::failure::Failure;
use crate::model::{Measurement, Method, TcpObservation};

use super::evidence::{Evidence, Family};
use super::facts::{Facts, Outcome, MAX_EVIDENCE_ADDRS};

/// The measurement as judged on a network with broken IPv6: its IPv6 connects, handshakes and
/// fetches left out, the control's too. `None` when IPv6 is not known to be broken.
pub(super) fn ipv4_view(m: &Measurement) -> Option<Measurement> {
    if m.connectivity.ipv6_ok != Some(false) {
        return None;
    }
    let v4 = |a: &SocketAddr| a.is_ipv4();
    let mut view = m.clone();
    view.tcp.retain(|t| v4(&t.addr));
    view.tls.retain(|t| v4(&t.addr));
    view.http.retain(|h| h.addr.as_ref().is_none_or(v4));
    if let Some(c) = view.control.as_mut() {
        c.tcp.retain(|t| v4(&t.addr));
        c.tls.retain(|t| v4(&t.addr));
        c.http.retain(|h| h.addr.as_ref().is_none_or(v4));
    }
    Some(view)
}

/// On a network with broken IPv6 (`ipv6_broken`), a target whose resolved addresses are all
/// IPv6: nothing can be said of it from here.
pub(super) fn only_broken_family(f: &Facts, ipv6_broken: bool) -> Option<Outcome> {
    if !ipv6_broken || f.net_addrs.is_empty() || f.net_addrs.iter().any(|a| a.is_ipv4()) {
        return None;
    }
    Some(Outcome::inconclusive(format!(
        "IPv6 does not work on this network and every address of {} is IPv6, so it could not \
         be measured here",
        f.domain
    )))
}

/// For a target judged accessible: does one family fail every connect while the other works?
/// Blocked over that family when the control connected over it; otherwise the failure is cited
/// and the verdict stands.
pub(super) fn stage(f: &Facts, ev: &mut Vec<Evidence>) -> Option<Outcome> {
    let tried: Vec<&TcpObservation> = f
        .target_tcp(&f.m.tcp)
        .into_iter()
        .filter(|t| !f.second_ips.contains(&t.addr.ip()))
        .collect();
    for fam in [Family::Ipv6, Family::Ipv4] {
        let (this, other): (Vec<&TcpObservation>, Vec<&TcpObservation>) =
            tried.iter().partition(|t| Family::of(t.addr.ip()) == fam);
        let works = |ts: &[&TcpObservation]| ts.iter().any(|t| t.failure.is_none());
        if this.is_empty() || works(&this) || !works(&other) {
            continue;
        }
        let family_works_here = match fam {
            Family::Ipv6 => f.m.connectivity.ipv6_ok == Some(true),
            Family::Ipv4 => false,
        };
        // No IPv6 route at all is this network's shape (the TCP stage cites it), not a block;
        // unless IPv6 is known to work here (an anchor answered over it).
        let no_route = this
            .iter()
            .all(|t| t.failure == Some(Failure::NetworkUnreachable));
        if no_route && !family_works_here {
            continue;
        }
        for t in this.iter().take(MAX_EVIDENCE_ADDRS) {
            if let Some(x) = &t.failure {
                ev.push(Evidence::TcpFailure(x.clone(), t.addr));
            }
        }
        let control_connected = f.control.is_some_and(|c| {
            f.target_tcp(&c.tcp)
                .iter()
                .any(|t| Family::of(t.addr.ip()) == fam && t.failure.is_none())
        });
        let (name, works_over) = match fam {
            Family::Ipv6 => ("IPv6", "IPv4"),
            Family::Ipv4 => ("IPv4", "IPv6"),
        };
        // The resolver's answers of this family share nothing with the control's (the control
        // service's or the encrypted resolver's): the answers, not the site, are the problem.
        let of_fam = |addrs: &[std::net::IpAddr]| -> Vec<std::net::IpAddr> {
            addrs
                .iter()
                .filter(|a| Family::of(**a) == fam)
                .copied()
                .collect()
        };
        let (net, ctl) = (of_fam(&f.net_addrs), of_fam(&f.ctl_addrs));
        let forged = !net.is_empty() && !ctl.is_empty() && net.iter().all(|a| !ctl.contains(a));
        if forged && (control_connected || family_works_here) {
            ev.push(Evidence::FamilyForged(fam));
            let record = match fam {
                Family::Ipv6 => "AAAA",
                Family::Ipv4 => "A",
            };
            return Some(Outcome::blocked(
                Method::Dns,
                format!(
                    "the {name} addresses this network's resolver gave for {} are not the \
                     control's and none of them connects, while {works_over} works: its {record} \
                     answers are forged",
                    f.domain
                ),
            ));
        }
        if !control_connected {
            ev.push(Evidence::FamilyFailed(fam));
            return None;
        }
        ev.push(Evidence::FamilyBlocked(fam));
        return Some(Outcome::blocked(
            Method::Tcp,
            format!(
                "every connection to the {name} addresses of {} failed here while the control \
                 connected to them, and {works_over} works: blocked over {name} only",
                f.domain
            ),
        ));
    }
    None
}

#[cfg(test)]
pub(super) mod tests {
    use super::super::testkit::*;
    use crate::failure::Failure;
    use crate::model::{DnsObservation, Measurement, Method, QueryType, ResolverRole, Status};

    const V6: &str = "2001:db8:10::10";

    fn aaaa(role: ResolverRole, ips: &[&str]) -> DnsObservation {
        let mut o = dns_ok(role, SITE, ips);
        o.query_type = QueryType::AAAA;
        o
    }

    /// A dual-stack site that loads over both families, here and at the control.
    pub(in crate::verdict) fn dual_stack_accessible() -> Measurement {
        let mut m = accessible_https();
        m.dns.push(aaaa(ResolverRole::Network, &[V6]));
        m.tcp.push(tcp(sa(V6, 443), None));
        m.tls.push(tls_ok(sa(V6, 443), 40.0));
        let c = m.control.as_mut().unwrap();
        c.dns.push(aaaa(ResolverRole::Network, &[V6]));
        c.tcp.push(tcp(sa(V6, 443), None));
        c.tls.push(tls_ok(sa(V6, 443), 30.0));
        m.connectivity.ipv6_ok = Some(true);
        m
    }

    /// The censor drops the site's IPv6 address only; the control connects over both.
    pub(in crate::verdict) fn ipv6_only_block() -> Measurement {
        let mut m = dual_stack_accessible();
        m.tcp[1].failure = Some(Failure::GenericTimeout);
        m.tls.truncate(1);
        m
    }

    /// The same failure with no control: not claimed as a block.
    pub(in crate::verdict) fn ipv6_fails_no_control() -> Measurement {
        let mut m = ipv6_only_block();
        no_control(&mut m);
        m
    }

    /// The site's IPv6 fails for the control too: the site's own IPv6 is broken.
    pub(in crate::verdict) fn ipv6_fails_everywhere() -> Measurement {
        let mut m = ipv6_only_block();
        m.control.as_mut().unwrap().tcp[1].failure = Some(Failure::ConnectionRefused);
        m
    }

    /// The IPv4 address is blocked, IPv6 works: blocked over IPv4 only.
    pub(in crate::verdict) fn ipv4_only_block() -> Measurement {
        let mut m = dual_stack_accessible();
        m.tcp[0].failure = Some(Failure::ConnectionReset);
        m.tls.remove(0);
        m.http[0].addr = Some(sa(V6, 443));
        m
    }

    /// This home's IPv6 is broken for everything (the anchors said so): every IPv6 connect
    /// times out, the site works over IPv4.
    pub(in crate::verdict) fn broken_home_ipv6() -> Measurement {
        let mut m = ipv6_only_block();
        m.connectivity.ipv6_ok = Some(false);
        m
    }

    /// Broken home IPv6, and the IPv4 address blocked: still blocked, judged over IPv4.
    pub(in crate::verdict) fn broken_home_ipv6_ipv4_blocked() -> Measurement {
        let mut m = broken_home_ipv6();
        m.tcp[0].failure = Some(Failure::GenericTimeout);
        m.tls.clear();
        m.http.clear();
        m
    }

    /// Broken home IPv6 and a site with IPv6 addresses only.
    pub(in crate::verdict) fn broken_home_ipv6_only_site() -> Measurement {
        let mut m = blank(&format!("https://{SITE}/"));
        m.dns = vec![
            dns_fail(ResolverRole::Network, SITE, Failure::DnsNoAnswer),
            aaaa(ResolverRole::Network, &[V6]),
        ];
        m.tcp = vec![tcp(sa(V6, 443), Some(Failure::GenericTimeout))];
        m.control = Some(control(
            vec![aaaa(ResolverRole::Network, &[V6])],
            vec![tcp(sa(V6, 443), None)],
            vec![tls_ok(sa(V6, 443), 30.0)],
            vec![page(0, &m.url, sa(V6, 443), 200, 52_000, "Site news")],
        ));
        m.connectivity.ipv6_ok = Some(false);
        m
    }

    /// The ISP's resolver forges the AAAA answer (an address that goes nowhere); A is honest.
    pub(in crate::verdict) fn forged_aaaa() -> Measurement {
        let mut m = dual_stack_accessible();
        let forged = "2001:db8:bad::1";
        m.dns[2] = aaaa(ResolverRole::Network, &[forged]);
        m.tcp[1] = tcp(sa(forged, 443), Some(Failure::GenericTimeout));
        m.tls.truncate(1);
        m.dns.push(aaaa(ResolverRole::Control, &[V6]));
        m
    }

    /// The same with no control service but the encrypted resolver's answers, on a network
    /// whose IPv6 works (an anchor answered over it).
    pub(in crate::verdict) fn forged_aaaa_no_control() -> Measurement {
        let mut m = forged_aaaa();
        no_control(&mut m);
        m
    }

    pub(in crate::verdict) const CASES: &[Case] = cases! {
        forged_aaaa Plain => Blocked / Dns;
        forged_aaaa_no_control Plain => Blocked / Dns;
        dual_stack_accessible Plain => Accessible;
        ipv6_only_block Plain => Blocked / Tcp;
        ipv6_fails_no_control Plain => Accessible;
        ipv6_fails_everywhere Plain => Accessible;
        ipv4_only_block Plain => Blocked / Tcp;
        broken_home_ipv6 Plain => Accessible;
        broken_home_ipv6_ipv4_blocked Plain => Blocked / Tcp;
        broken_home_ipv6_only_site Plain => Inconclusive;
    };

    #[test]
    fn table() {
        check(CASES);
    }

    #[test]
    fn reasons_and_evidence() {
        let v = verdict_of(ipv6_only_block, Ctx::Plain);
        assert!(cites(&v, "tcp.blocked_family=ipv6"), "{v:?}");
        assert!(v.reason.contains("blocked over IPv6 only"), "{}", v.reason);
        let v = verdict_of(forged_aaaa, Ctx::Plain);
        assert!(cites(&v, "dns.forged_family=ipv6"), "{v:?}");
        assert!(v.reason.contains("AAAA answers are forged"), "{}", v.reason);
        let v = verdict_of(ipv4_only_block, Ctx::Plain);
        assert!(cites(&v, "tcp.blocked_family=ipv4"), "{v:?}");
        let v = verdict_of(ipv6_fails_no_control, Ctx::Plain);
        assert!(cites(&v, "tcp.failed_family=ipv6"), "{v:?}");
        let v = verdict_of(ipv6_fails_everywhere, Ctx::Plain);
        assert!(cites(&v, "tcp.failed_family=ipv6"), "{v:?}");
        // A broken home never cites the IPv6 failures: they were left out.
        let v = verdict_of(broken_home_ipv6, Ctx::Plain);
        assert!(cites(&v, "net.ipv6=broken"), "{v:?}");
        assert!(!v.evidence.iter().any(|e| e.contains("2001:db8")), "{v:?}");
        let v = verdict_of(broken_home_ipv6_ipv4_blocked, Ctx::Plain);
        assert_eq!(v.method, Some(Method::Tcp));
        assert!(!v.evidence.iter().any(|e| e.contains("2001:db8")), "{v:?}");
        let v = verdict_of(broken_home_ipv6_only_site, Ctx::Plain);
        assert_eq!(v.status, Status::Inconclusive);
        assert!(v.reason.contains("IPv6 does not work"), "{}", v.reason);
    }
}
