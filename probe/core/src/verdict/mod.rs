//! The verdict: a pure function from one measurement's observations, and the control's, to
//! accessible, blocked (and how), down, offline or inconclusive.
//!
//! No I/O and no clock, so every rule is table-tested and the collector can re-run it on stored
//! records. One module per stage, run in a fixed order by [`decide`]: [`offline`], [`dns`],
//! [`tcp`], [`tls`], [`http`], then, for a target found accessible, `family` (a block of one
//! address family) and [`throttle`] (against the [`mod@baseline`]); the first stage that decides
//! wins. A network with broken IPv6 is judged over IPv4 alone (`family`). Every fact a rule
//! cites is an [`Evidence`] value, spelled as a `key=value` line in the JSON. `docs/verdicts.md` documents the procedure, the thresholds and
//! how it differs from OONI's Web Connectivity: keep the two in step.
//!
//! Two principles run through every rule: a plain failure is never called a block without a
//! comparison (the control service, or the encrypted control resolver for DNS), and local
//! evidence that cannot be innocent (an injected DNS answer, a bogon, a state CA, a blockpage, a
//! decoy handshake that works where the real one is cut) is enough on its own.
//!
//! The rooms: this file holds [`decide`] and its run-level input alone. `facts` sorts one
//! measurement's observations out once and holds the helpers every stage shares; [`compare`]
//! answers the questions two stages ask (same page? injected DNS answer?); [`evidence`] is the
//! vocabulary of cited facts. Stages depend on those three, never on each other, except HTTP on
//! TLS's notion of a completed handshake and throttling on the [`mod@baseline`].

use std::collections::BTreeSet;

use crate::model::{Measurement, Status, Verdict};

pub mod baseline;
pub mod compare;
pub mod dns;
pub mod evidence;
mod facts;
mod family;
pub mod http;
pub mod offline;
pub mod tcp;
#[cfg(test)]
mod testkit;
pub mod throttle;
pub mod tls;

pub use baseline::{baseline, Baseline, Samples, BASELINE_MIN_SAMPLES, THROUGHPUT_MIN_BYTES};
pub use compare::{pages_similar, BODY_LENGTH_RATIO};
pub use evidence::Evidence;
pub use throttle::{THROTTLE_FACTOR, THROTTLE_MAX_THROUGHPUT_BPS, THROTTLE_MIN_HANDSHAKE_MS};

use facts::Facts;

/// Run-level facts the per-target verdict needs: they come from the whole run, not from one
/// target's observations.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RunContext {
    /// The run-level connectivity check found no working network: every verdict is `offline`.
    pub offline: bool,
    /// This probe's own speed for unblocked sites in the same run.
    pub baseline: Option<Baseline>,
}

/// The verdict for one measurement. `m.verdict` is ignored; `m.control` is used only when
/// `m.control_failure` is `None`. Called once per target, after the run's baseline is known.
pub fn decide(m: &Measurement, ctx: &RunContext) -> Verdict {
    let ipv4_view = family::ipv4_view(m);
    let ipv6_broken = ipv4_view.is_some();
    let f = Facts::new(ipv4_view.as_ref().unwrap_or(m));
    let mut ev = Vec::new();
    if f.control.is_none() {
        ev.push(Evidence::ControlUnavailable);
    }
    if ipv6_broken {
        ev.push(Evidence::Ipv6Broken);
    }
    let staged = offline::stage(&f, ctx.offline, &mut ev)
        .or_else(|| dns::stage(&f, &mut ev))
        .or_else(|| family::only_broken_family(&f, ipv6_broken))
        .or_else(|| tcp::stage(&f, &mut ev))
        .or_else(|| tls::stage(&f, &mut ev));
    let mut outcome = match staged {
        Some(o) => o,
        None => http::stage(&f, &mut ev),
    };
    if outcome.status == Status::Accessible {
        if let Some(blocked) = family::stage(&f, &mut ev) {
            outcome = blocked;
        }
    }
    if outcome.status == Status::Accessible {
        if let Some(throttled) = throttle::stage(&f, ctx.baseline, &mut ev) {
            outcome = throttled;
        }
    }
    if outcome.status == Status::Blocked {
        if let Some(e) = path_evidence(m) {
            ev.push(e);
        }
    }
    Verdict {
        status: outcome.status,
        method: outcome.method,
        reason: outcome.reason,
        evidence: evidence_lines(ev),
    }
}

/// `censor at hop N`, when the record's localisation named a hop.
fn path_evidence(m: &Measurement) -> Option<Evidence> {
    let p = m.path.as_ref()?;
    Some(Evidence::CensorAtHop {
        hop: p.censor_hop?,
        asn: p.censor_asn(),
    })
}

/// Add the localisation's evidence line to a decided blocked verdict, as [`decide`] would cite
/// it: the localisation runs after the verdict and never changes anything else.
pub fn add_path_evidence(m: &mut Measurement) {
    if m.verdict.status != Status::Blocked {
        return;
    }
    if let Some(line) = path_evidence(m).map(|e| e.to_string()) {
        if !m.verdict.evidence.contains(&line) {
            m.verdict.evidence.push(line);
        }
    }
}

/// The JSON form of the evidence: one line per fact, each once, in the order the rules cited
/// them.
fn evidence_lines(ev: Vec<Evidence>) -> Vec<String> {
    let mut seen = BTreeSet::new();
    ev.into_iter()
        .map(|e| e.to_string())
        .filter(|l| seen.insert(l.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::testkit::*;
    use super::*;

    /// Every scenario of every stage, each decided in full: the rules hang together.
    #[test]
    fn every_verdict_is_explained() {
        for (name, build, c, _, _) in all_cases() {
            let v = decide(&build(), &ctx(c));
            assert!(!v.reason.trim().is_empty(), "{name}: empty reason");
            assert!(!v.reason.contains('\n'), "{name}: {}", v.reason);
            assert!(
                !v.reason.contains(". "),
                "{name}: more than one sentence: {}",
                v.reason
            );
            assert_eq!(v.method.is_some(), v.status == Status::Blocked, "{name}");
            if v.status == Status::Blocked {
                assert!(!v.evidence.is_empty(), "{name}: blocked without evidence");
            }
            let mut lines = v.evidence.clone();
            lines.sort();
            lines.dedup();
            assert_eq!(lines.len(), v.evidence.len(), "{name}: repeated evidence");
        }
    }

    #[test]
    fn the_recorded_verdict_is_ignored() {
        let mut m = tcp_blocked();
        let want = decide(&m, &RunContext::default());
        m.verdict = Verdict::new(Status::Accessible, None, "stale");
        assert_eq!(decide(&m, &RunContext::default()), want);
    }

    #[test]
    fn the_censor_hop_is_cited_and_changes_nothing_else() {
        use crate::model::{PathAction, PathObservation, PathTrigger};
        let mut m = tcp_blocked();
        let before = decide(&m, &RunContext::default());
        assert_eq!(before.status, Status::Blocked);
        let mut path = PathObservation {
            trigger: PathTrigger::Syn,
            addr: "198.51.100.7:443".parse().unwrap(),
            action: PathAction::Reset,
            censor_hop: Some(3),
            unlocated: None,
            hops: vec![],
            max_ttl: 16,
            probes: 16,
            t_ms: 0.0,
            duration_ms: 0.0,
            shared_with: None,
            censor_range: None,
        };
        m.path = Some(path.clone());
        let after = decide(&m, &RunContext::default());
        assert_eq!((after.status, after.method), (before.status, before.method));
        assert_eq!(after.reason, before.reason);
        assert_eq!(after.evidence.last().unwrap(), "path.censor_hop=3");
        assert_eq!(
            after.evidence[..after.evidence.len() - 1],
            before.evidence[..]
        );
        // The engine's late addition reads the same, once.
        m.verdict = before.clone();
        add_path_evidence(&mut m);
        add_path_evidence(&mut m);
        assert_eq!(m.verdict, after);
        // No hop named: no line. Not blocked: no line.
        path.censor_hop = None;
        m.path = Some(path);
        assert_eq!(decide(&m, &RunContext::default()), before);
        let mut ok = accessible_https();
        ok.path = m.path.clone();
        ok.path.as_mut().unwrap().censor_hop = Some(2);
        let v = decide(&ok, &RunContext::default());
        assert!(!v.evidence.iter().any(|l| l.starts_with("path.")), "{v:?}");
    }

    #[test]
    fn a_failed_control_counts_as_no_control() {
        // A stale control next to a control failure is not trusted.
        let mut m = tcp_blocked();
        m.control_failure = Some("control service answered 503".into());
        let v = decide(&m, &RunContext::default());
        assert_eq!(v.status, Status::Inconclusive);
        assert!(v.evidence.contains(&"control=unavailable".to_string()));
    }
}
