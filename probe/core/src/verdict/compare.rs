//! Comparisons the stages share: whether two pages are the same page, and whether a late DNS
//! response contradicts the first (an injected answer). The DNS and HTTP stages both ask these
//! questions, so they live here rather than in either stage.

use std::collections::BTreeSet;
use std::net::IpAddr;

use crate::model::{DnsObservation, HttpObservation, LateDnsResponse};

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
mod tests {
    use super::super::testkit::*;
    use super::pages_similar;

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
