//! Comparisons the stages share: whether two pages are the same page, and whether a late DNS
//! response contradicts the first (an injected answer). The DNS and HTTP stages both ask these
//! questions, so they live here rather than in either stage.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use crate::failure::Failure;
use crate::model::{
    AbKind, AbName, AbObservation, AbTrial, AbTrigger, DnsObservation, HttpObservation,
    LateDnsResponse,
};

use super::evidence::Evidence;
use super::facts::join_addrs;

/// Shortest-to-longest body length ratio from which two pages count as the same (OONI's value):
/// dynamic pages vary a little, blockpages are usually much shorter than the real page.
pub const BODY_LENGTH_RATIO: f64 = 0.7;

/// Whether two final HTTP responses are the same page. Identical bodies are; otherwise the
/// status codes must match (any 2xx alike), and then the titles decide when both pages have one
/// (a censor's rewrite or notice of the same size as the real page differs by its title), and
/// the body lengths (within [`BODY_LENGTH_RATIO`]) when either has none. A body truncated at the
/// cap counts as "at least this long", so a large page read up to the cap is not mistaken for
/// a different one.
pub fn pages_similar(a: &HttpObservation, b: &HttpObservation) -> bool {
    if a.status == b.status && a.body_sha256.is_some() && a.body_sha256 == b.body_sha256 {
        return true;
    }
    let status_alike = match (a.status, b.status) {
        (Some(x), Some(y)) => x == y || ((200..300).contains(&x) && (200..300).contains(&y)),
        _ => false,
    };
    if !status_alike {
        return false;
    }
    match titles_compare(a, b) {
        Some(same) => same,
        None => body_length_ratio(a, b) >= BODY_LENGTH_RATIO,
    }
}

/// The largest shortest-to-longest ratio the two body lengths allow, treating a truncated
/// length as "at least this much".
fn body_length_ratio(a: &HttpObservation, b: &HttpObservation) -> f64 {
    let (la, lb) = (a.body_length as f64, b.body_length as f64);
    let ratio = |short: f64, long: f64| if long <= 0.0 { 1.0 } else { short / long };
    match (a.body_truncated, b.body_truncated) {
        (true, true) => 1.0,
        (true, false) if lb >= la => 1.0,
        (true, false) => ratio(lb, la),
        (false, true) if la >= lb => 1.0,
        (false, true) => ratio(la, lb),
        (false, false) => ratio(la.min(lb), la.max(lb)),
    }
}

/// `Some(equal)` when both pages have a non-empty title, `None` when either has none.
fn titles_compare(a: &HttpObservation, b: &HttpObservation) -> Option<bool> {
    match (
        a.title.as_deref().map(str::trim),
        b.title.as_deref().map(str::trim),
    ) {
        (Some(x), Some(y)) if !x.is_empty() && !y.is_empty() => Some(x == y),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// The A/B test: the site's name against an innocent one, same server.

/// What an A/B test shows about the site's name (see [`crate::checks::ab`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AbFinding {
    /// An innocent exchange (this one) was answered by the server, and the site's name failed
    /// again when repeated right after: the difference is the name, which only something on
    /// the path acts on.
    NameDiffers(AbName),
    /// A forged certificate for the site's name, while this innocent handshake got a chain
    /// that verifies for the site's name, and the site's name got a forged one again: the
    /// server holds the real certificate, the other came from the path.
    CertificateDiffers(AbName),
    /// The site's own exchange succeeded when repeated: the failure did not repeat.
    SiteAnswered,
    /// The site's repeat got the server's own refusal (a TLS alert, a malformed answer), not a
    /// reset, silence, close or blockpage: the server treats the name differently, not the path.
    SiteRefused,
    /// The innocent handshakes completed, but none with a certificate valid for the site's
    /// name: a server presents per-name certificates, so this proves nothing.
    OtherCertificate,
    /// Every innocent exchange failed too: nothing about the name (the address may be blocked,
    /// or the server down).
    InnocentFailed,
    /// The test was cut before it could tell (the target's deadline).
    Incomplete,
}

impl AbFinding {
    /// The stable name in the `ab.tls=` / `ab.http=` evidence line.
    pub fn as_str(&self) -> &'static str {
        match self {
            AbFinding::NameDiffers(_) => "name_differs",
            AbFinding::CertificateDiffers(_) => "certificate_differs",
            AbFinding::SiteAnswered => "site_answered",
            AbFinding::SiteRefused => "site_refused",
            AbFinding::OtherCertificate => "other_certificate",
            AbFinding::InnocentFailed => "innocent_failed",
            AbFinding::Incomplete => "incomplete",
        }
    }
}

/// What one A/B test shows. Pure: the verdict's whole reading of the test.
pub fn ab_finding(o: &AbObservation) -> AbFinding {
    let innocents: Vec<&AbTrial> = o.trials.iter().filter(|t| t.sent != AbName::Site).collect();
    let site = o.trials.iter().find(|t| t.sent == AbName::Site);
    if innocents.is_empty() {
        return AbFinding::Incomplete;
    }
    if o.trigger == AbTrigger::ForgedCertificate {
        let proof = innocents
            .iter()
            .find(|t| t.answered() && t.valid_for_site == Some(true));
        return match (proof, site) {
            (_, Some(s)) if s.answered() && s.valid_for_site == Some(true) => {
                AbFinding::SiteAnswered
            }
            (Some(p), Some(s)) if s.failure.is_none() => AbFinding::CertificateDiffers(p.sent),
            (Some(_), _) => AbFinding::Incomplete,
            (None, _) if innocents.iter().any(|t| t.answered()) => AbFinding::OtherCertificate,
            (None, _) => AbFinding::InnocentFailed,
        };
    }
    let Some(answered) = innocents.iter().find(|t| t.answered()) else {
        return AbFinding::InnocentFailed;
    };
    match site {
        None => AbFinding::Incomplete,
        Some(s) if s.answered() => AbFinding::SiteAnswered,
        Some(s) if censor_like(s) => AbFinding::NameDiffers(answered.sent),
        Some(_) => AbFinding::SiteRefused,
    }
}

/// A failure only something on the path produces as often as a server: a reset, a close,
/// silence, a blockpage or a state CA's chain.
fn censor_like(t: &AbTrial) -> bool {
    t.blockpage.is_some()
        || t.interception_ca.is_some()
        || matches!(
            t.failure,
            Some(
                Failure::ConnectionReset
                    | Failure::ConnectionRefused
                    | Failure::Eof
                    | Failure::GenericTimeout
            )
        )
}

/// The A/B test of this kind made at one of `addrs`, with what it shows.
pub(super) fn ab_at(
    tests: &[&AbObservation],
    kind: AbKind,
    addrs: &[SocketAddr],
) -> Option<(AbFinding, SocketAddr)> {
    tests
        .iter()
        .find(|o| o.kind == kind && addrs.contains(&o.addr))
        .map(|o| (ab_finding(o), o.addr))
}

/// How a reason names the innocent exchange that was answered.
pub(super) fn ab_innocent_phrase(by: AbName, kind: AbKind) -> &'static str {
    match (by, kind) {
        (AbName::None, _) => "a ClientHello with no name at all",
        (_, AbKind::Tls) => "a ClientHello naming an innocent site",
        (_, AbKind::Http) => "a request with an innocent Host header",
    }
}

// ---------------------------------------------------------------------------------------------
// Injected DNS answers.

/// Late responses that differ from the first answer: a censor's forged answer racing the real
/// one (or the other way round).
pub(super) fn injected_answers<'a>(
    obs: &[&'a DnsObservation],
) -> Vec<(&'a DnsObservation, &'a LateDnsResponse)> {
    obs.iter()
        .flat_map(|o| {
            o.late_responses
                .iter()
                .filter(|l| late_differs(o, l))
                .map(move |l| (*o, l))
        })
        .collect()
}

/// Whether a late response says something else than the first: other addresses, or another
/// response code. Order does not matter.
fn late_differs(o: &DnsObservation, l: &LateDnsResponse) -> bool {
    let first: BTreeSet<IpAddr> = o.answers.iter().map(|a| a.addr).collect();
    let late: BTreeSet<IpAddr> = l.answers.iter().copied().collect();
    first != late
        || o.rcode
            .as_deref()
            .is_some_and(|r| !r.eq_ignore_ascii_case(&l.rcode))
}

pub(super) fn first_answer_text(o: &DnsObservation) -> String {
    if o.answers.is_empty() {
        o.rcode
            .clone()
            .or_else(|| o.failure.as_ref().map(|f| f.name().to_string()))
            .unwrap_or_else(|| "nothing".to_string())
    } else {
        join_addrs(&o.answers.iter().map(|a| a.addr).collect::<Vec<_>>())
    }
}

pub(super) fn late_answer_text(l: &LateDnsResponse) -> String {
    if l.answers.is_empty() {
        l.rcode.clone()
    } else {
        join_addrs(&l.answers)
    }
}

/// The evidence of an injected answer: the first and the late one.
pub(super) fn injected_evidence(o: &DnsObservation, l: &LateDnsResponse) -> Evidence {
    Evidence::DnsInjected {
        first: first_answer_text(o),
        late: late_answer_text(l),
        after_ms: l.after_ms,
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::super::testkit::*;
    use super::{ab_finding, pages_similar, AbFinding};
    use crate::model::{AbKind, AbName, AbTrigger, Measurement, Method, Status};

    /// The A/B rules, each decided in full.
    pub(in crate::verdict) const AB_CASES: &[Case] = cases! {
        ab_tls_reset_no_control_name_differs Plain => Blocked / Tls;
        ab_tls_timeout_no_control_innocent_failed Plain => Inconclusive;
        ab_tls_timeout_no_control_site_answered Plain => Inconclusive;
        ab_tls_timeout_no_control_incomplete Plain => Inconclusive;
        ab_tls_down_with_control_name_differs Plain => Down;
        ab_tls_reset_with_control_name_differs Plain => Blocked / Tls;
        ab_forged_certificate_no_control Plain => Blocked / Mitm;
        ab_forged_certificate_no_control_other_certificate Plain => Inconclusive;
        ab_expired_everywhere_certificate_differs Plain => Down;
        ab_http_reset_no_control_name_differs Plain => Blocked / Http;
        ab_http_timeout_no_control_name_differs Plain => Inconclusive;
        ab_http_reset_no_control_site_answered Plain => Inconclusive;
        ab_http_reset_no_control_innocent_failed Plain => Inconclusive;
        ab_http_blockpage_name_differs Plain => Blocked / Http;
    };

    #[test]
    fn ab_table() {
        check(AB_CASES);
    }

    #[test]
    fn ab_evidence_and_reasons() {
        let v = verdict_of(ab_tls_reset_no_control_name_differs, Ctx::Plain);
        assert!(cites(&v, "ab.tls=name_differs@198.18.0.10:443"), "{v:?}");
        assert!(v.reason.contains("no name at all"), "{}", v.reason);
        let v = verdict_of(ab_tls_down_with_control_name_differs, Ctx::Plain);
        assert!(cites(&v, "ab.tls=name_differs@198.18.0.10:443"), "{v:?}");
        let v = verdict_of(ab_tls_reset_with_control_name_differs, Ctx::Plain);
        assert!(cites(&v, "ab.tls=name_differs@198.18.0.10:443"), "{v:?}");
        assert!(cites(&v, "tls.control=ok"), "{v:?}");
        let v = verdict_of(ab_tls_timeout_no_control_site_answered, Ctx::Plain);
        assert!(cites(&v, "ab.tls=site_answered@198.18.0.10:443"), "{v:?}");
        let v = verdict_of(ab_forged_certificate_no_control, Ctx::Plain);
        assert!(
            cites(&v, "ab.tls=certificate_differs@198.18.0.10:443"),
            "{v:?}"
        );
        assert!(v.reason.contains("substituted on the path"), "{}", v.reason);
        let v = verdict_of(ab_http_reset_no_control_name_differs, Ctx::Plain);
        assert!(cites(&v, "ab.http=name_differs@198.18.0.10:80"), "{v:?}");
        assert!(v.reason.contains("innocent Host header"), "{}", v.reason);
        let v = verdict_of(ab_http_blockpage_name_differs, Ctx::Plain);
        assert!(cites(&v, "ab.http=name_differs@198.18.0.10:80"), "{v:?}");
        assert!(cites(&v, "http.blockpage=kz-test"), "{v:?}");
        let v = verdict_of(ab_http_reset_no_control_innocent_failed, Ctx::Plain);
        assert!(cites(&v, "ab.http=innocent_failed@198.18.0.10:80"), "{v:?}");
    }

    /// What a test shows, trial by trial (`true`: answered; for a forged certificate, the
    /// third flag is a chain valid for the site).
    #[test]
    fn ab_findings() {
        use AbName::{Innocent, None as NoName, Site};
        let t = |s, ok, valid| ab_trial(s, ok, valid);
        let alert = |s| {
            let mut a = ab_trial(s, false, false);
            a.failure = Some(crate::failure::Failure::SslFailedHandshake);
            a
        };
        let addr = sa(IP, 443);
        let cases = [
            (AbTrigger::Reset, vec![], AbFinding::Incomplete),
            (
                AbTrigger::Reset,
                vec![t(Innocent, true, false)],
                AbFinding::Incomplete,
            ),
            (
                AbTrigger::Reset,
                vec![t(Innocent, true, false), t(Site, false, false)],
                AbFinding::NameDiffers(Innocent),
            ),
            (
                AbTrigger::Timeout,
                vec![
                    t(Innocent, false, false),
                    t(NoName, true, false),
                    t(Site, false, false),
                ],
                AbFinding::NameDiffers(NoName),
            ),
            (
                AbTrigger::Close,
                vec![t(Innocent, true, false), t(Site, true, true)],
                AbFinding::SiteAnswered,
            ),
            (
                AbTrigger::Reset,
                vec![t(Innocent, false, false), t(NoName, false, false)],
                AbFinding::InnocentFailed,
            ),
            (
                AbTrigger::Reset,
                vec![t(Innocent, true, false), alert(Site)],
                AbFinding::SiteRefused,
            ),
            (
                AbTrigger::ForgedCertificate,
                vec![t(Innocent, true, true), t(Site, true, false)],
                AbFinding::CertificateDiffers(Innocent),
            ),
            (
                AbTrigger::ForgedCertificate,
                vec![t(Innocent, true, true), t(Site, false, false)],
                AbFinding::Incomplete,
            ),
            (
                AbTrigger::ForgedCertificate,
                vec![t(Innocent, true, true), t(Site, true, true)],
                AbFinding::SiteAnswered,
            ),
            (
                AbTrigger::ForgedCertificate,
                vec![t(Innocent, true, false), t(Site, true, false)],
                AbFinding::OtherCertificate,
            ),
            (
                AbTrigger::ForgedCertificate,
                vec![t(Innocent, false, false), t(NoName, false, false)],
                AbFinding::InnocentFailed,
            ),
        ];
        for (trigger, trials, want) in cases {
            let o = ab_test(AbKind::Tls, addr, trigger, trials.clone());
            assert_eq!(ab_finding(&o), want, "{trigger:?} {trials:?}");
        }
        // A blockpage answer is the censor's, not the server's; so is a state CA's chain.
        let mut page = t(Innocent, true, false);
        page.blockpage = Some("kz".into());
        let o = ab_test(
            AbKind::Http,
            addr,
            AbTrigger::Blockpage,
            vec![page, t(Site, false, false)],
        );
        assert_eq!(ab_finding(&o), AbFinding::InnocentFailed);
        let mut ca = t(Innocent, true, true);
        ca.interception_ca = Some(STATE_CA.into());
        let o = ab_test(
            AbKind::Tls,
            addr,
            AbTrigger::Reset,
            vec![ca, t(Site, false, false)],
        );
        assert_eq!(ab_finding(&o), AbFinding::InnocentFailed);
    }

    #[test]
    fn page_similarity() {
        let a = page(0, HTTP, sa(IP, 80), 200, 10_000, "News");
        let short = page(0, HTTP, sa(IP, 80), 200, 6_000, "");
        let short_same_title = page(0, HTTP, sa(IP, 80), 200, 6_000, "News");
        let created = page(0, HTTP, sa(IP, 80), 201, 9_000, "");
        let forbidden = page(0, HTTP, sa(IP, 80), 403, 10_000, "News");
        assert!(pages_similar(&a, &a));
        assert!(!pages_similar(&a, &short));
        assert!(pages_similar(&a, &short_same_title));
        assert!(pages_similar(&a, &created), "2xx are alike");
        assert!(!pages_similar(&a, &forbidden));
        // Same size, another title: a rewrite or a notice, not the page.
        let notice = page(0, HTTP, sa(IP, 80), 200, 10_000, "Notice");
        assert!(!pages_similar(&a, &notice));

        // A body truncated at the cap is at least that long.
        let mut capped = page(0, HTTP, sa(IP, 80), 200, 512 * 1024, "");
        capped.body_truncated = true;
        let huge = page(0, HTTP, sa(IP, 80), 200, 5_000_000, "");
        let small = page(0, HTTP, sa(IP, 80), 200, 100_000, "");
        assert!(pages_similar(&capped, &huge));
        assert!(pages_similar(&huge, &capped));
        assert!(!pages_similar(&capped, &small));
    }
}
