//! Stage 3, TCP: every connect to the target failed; compared with the control's connects.

use crate::failure::Failure;
use crate::model::{Method, Step, TcpObservation};

use super::evidence::Evidence;
use super::facts::{Facts, Outcome, MAX_EVIDENCE_ADDRS};

pub(super) fn stage(f: &Facts, ev: &mut Vec<Evidence>) -> Option<Outcome> {
    if f.cut_by_deadline(Step::Tcp) {
        // Connects still under way when time ran out are not recorded: the HTTP stage says so.
        return None;
    }
    let domain = &f.domain;
    // A probe without IPv6 connectivity fails every IPv6 connect with "network unreachable":
    // that is this network's shape, not a block, so those attempts do not count.
    let (no_v6_route, tried): (Vec<&TcpObservation>, Vec<&TcpObservation>) = f
        .target_tcp(&f.m.tcp)
        .into_iter()
        .filter(|t| !f.second_ips.contains(&t.addr.ip()))
        .partition(|t| t.addr.is_ipv6() && t.failure == Some(Failure::NetworkUnreachable));
    if !no_v6_route.is_empty() {
        ev.push(Evidence::TcpNoIpv6Route);
    }
    if tried.is_empty() {
        if no_v6_route.is_empty() {
            return None;
        }
        return Some(Outcome::inconclusive(format!(
            "this network has no IPv6 route and every address of {domain} that was tried is IPv6"
        )));
    }
    if tried.iter().any(|t| t.failure.is_none()) {
        return None;
    }
    for t in tried.iter().take(MAX_EVIDENCE_ADDRS) {
        if let Some(x) = &t.failure {
            ev.push(Evidence::TcpFailure(x.clone(), t.addr));
        }
    }
    let failure = tried.iter().find_map(|t| t.failure.clone());
    let how = match &failure {
        Some(Failure::ConnectionRefused) => "was refused".to_string(),
        Some(Failure::GenericTimeout) => "timed out".to_string(),
        Some(Failure::ConnectionReset) => "was reset".to_string(),
        Some(Failure::HostUnreachable) => "found the host unreachable".to_string(),
        Some(Failure::NetworkUnreachable) => "found no route".to_string(),
        Some(other) => format!("failed ({})", other.name()),
        None => "failed".to_string(),
    };
    let what = format!("every connection to {domain} {how}");
    let Some(c) = f.control else {
        return Some(Outcome::inconclusive(format!(
            "{what}, but the control was unavailable, so a block cannot be told from a site that \
             is down"
        )));
    };
    let ctl_tcp = f.target_tcp(&c.tcp);
    if ctl_tcp.iter().any(|t| t.failure.is_none()) {
        ev.push(Evidence::TcpControl(true));
        return Some(Outcome::blocked(
            Method::Tcp,
            format!("{what} here while the control connected: the site's addresses are blocked"),
        ));
    }
    if !ctl_tcp.is_empty() {
        ev.push(Evidence::TcpControl(false));
        return Some(Outcome::down(format!(
            "{what}, for the control too: the site is down"
        )));
    }
    Some(Outcome::inconclusive(format!(
        "{what}, and the control did not get as far as connecting, so there is nothing to \
         compare with"
    )))
}

#[cfg(test)]
pub(super) mod tests {
    use super::super::testkit::*;
    use crate::model::{Measurement, Method, Status};

    pub(in crate::verdict) const CASES: &[Case] = cases! {
        tcp_blocked Plain => Blocked / Tcp;
        tcp_down_everywhere Plain => Down;
        tcp_failure_control_unavailable Plain => Inconclusive;
        tcp_ipv6_no_route Plain => Inconclusive;
        deadline_during_connect Plain => Inconclusive;
    };

    #[test]
    fn table() {
        check(CASES);
    }

    #[test]
    fn reasons_and_evidence() {
        let v = verdict_of(tcp_failure_control_unavailable, Ctx::Plain);
        assert!(
            v.reason.contains("the control was unavailable"),
            "{}",
            v.reason
        );
        assert!(cites(&v, "control=unavailable"));
        let v = verdict_of(tcp_blocked, Ctx::Plain);
        assert!(cites(&v, "tcp.control=ok"), "{v:?}");
        let v = verdict_of(tcp_ipv6_no_route, Ctx::Plain);
        assert!(cites(&v, "tcp.ipv6=no_route"), "{v:?}");
    }
}
