//! Stages 5 and 6, HTTP: blockpages, failed hops (compared with the control, then local
//! evidence about the failing hop), and the final page against the control's.

use std::net::{IpAddr, SocketAddr};

use crate::failure::Failure;
use crate::model::{
    AbKind, ControlResponse, DnsObservation, HttpObservation, Measurement, Method, ResolverRole,
    Step, TlsObservation,
};

use super::compare::{
    ab_at, ab_innocent_phrase, injected_answers, injected_evidence, pages_similar, AbFinding,
};
use super::evidence::{DecoyResult, Evidence, HttpsWitnessResult};
use super::facts::{
    final_response, fmt_bytes, join_addrs, norm_host, same_site, short_title, url_host, Facts,
    Outcome,
};
use super::tls::{completed, path_like_tls_failure};

// ---------------------------------------------------------------------------------------------
// 5 and 6. HTTP.

pub(super) fn stage(f: &Facts, ev: &mut Vec<Evidence>) -> Outcome {
    let domain = &f.domain;
    if f.hops.is_empty() {
        return Outcome::inconclusive(format!(
            "no HTTP exchange with {domain} was recorded, so whether the page loads is unknown"
        ));
    }
    // A hop is trusted when its content provably comes from the site: it was fetched over a
    // verified TLS connection, and the redirect that led there was trusted too or the hop is
    // on the target's own site (http -> https upgrades). A cleartext hop can be forged.
    let mut trusted = Vec::with_capacity(f.hops.len());
    for (i, h) in f.hops.iter().enumerate() {
        let same_site = url_host(&h.url).is_some_and(|host| same_site(&host, domain));
        let prev = i > 0 && trusted[i - 1];
        trusted.push(hop_verified(f.m, h) && (i == 0 || prev || same_site));
    }

    if let Some(h) = f
        .hops
        .iter()
        .zip(&trusted)
        .find_map(|(h, t)| (!t && h.blockpage.is_some()).then_some(*h))
    {
        let bp = h.blockpage.as_deref().unwrap_or_default();
        ev.push(Evidence::Blockpage(bp.to_string()));
        if h.hop > 0 {
            ev.push(Evidence::BlockpageHop(h.hop));
        }
        // The blockpage proves the block by itself; the A/B test is cited as extra evidence.
        if let Some((finding, addr)) = h.addr.and_then(|a| ab_at(&f.ab, AbKind::Http, &[a])) {
            ev.push(Evidence::Ab(AbKind::Http, finding, addr));
        }
        return Outcome::blocked(
            Method::Http,
            format!("the answer for {domain} is a known blockpage ({bp})"),
        );
    }

    if let Some(h) = f.hops.iter().find(|h| h.failure.is_some()) {
        return hop_failure(f, h, ev);
    }

    let (last, last_trusted) = match (f.hops.last(), trusted.last()) {
        (Some(h), Some(t)) => (*h, *t),
        _ => return Outcome::inconclusive(format!("no HTTP exchange with {domain} was recorded")),
    };
    let Some(status) = last.status else {
        return Outcome::inconclusive(format!(
            "the last HTTP exchange with {domain} recorded no status"
        ));
    };
    let ctl_final = f.control.and_then(|c| final_response(&c.http));
    match ctl_final {
        Some(c) => ev.push(Evidence::HttpStatus {
            status,
            control: Some(c.status.unwrap_or_default()),
        }),
        None => ev.push(Evidence::HttpStatus {
            status,
            control: None,
        }),
    }

    if last_trusted {
        if let Some(bp) = &last.blockpage {
            ev.push(Evidence::Blockpage(bp.clone()));
        }
        let differs = ctl_final.is_some_and(|c| !pages_similar(last, c));
        if status >= 400 || differs || last.blockpage.is_some() {
            ev.push(Evidence::ServerSideRefusal);
            if let Some(c) = ctl_final {
                push_page_comparison(last, c, ev);
            }
            let said = match &last.blockpage {
                _ if status >= 400 => format!("answered {status}"),
                Some(bp) => format!("served a page that looks like the blockpage {bp}"),
                None => format!("served a different page than the control's (status {status})"),
            };
            return Outcome::accessible(format!(
                "the site itself {said} over an authenticated connection: a server-side \
                 restriction, not network censorship"
            ));
        }
        return Outcome::accessible(format!(
            "{domain} loaded over an authenticated (verified TLS) connection"
        ));
    }

    if ctl_final.is_some_and(|c| pages_similar(last, c)) {
        return Outcome::accessible(format!(
            "{domain} loaded and the page matches the control's"
        ));
    }
    if let Some(outcome) = https_witness(f, last, ctl_final, ev) {
        return outcome;
    }
    match ctl_final {
        Some(c) => {
            push_page_comparison(last, c, ev);
            Outcome::blocked(
                Method::Http,
                format!(
                    "the page differs from the control's: {}",
                    page_difference(last, c)
                ),
            )
        }
        None => {
            let why = if f.control.is_none() {
                "the control was unavailable"
            } else {
                "the control did not load it"
            };
            Outcome::accessible(format!(
                "{domain} loaded, but the page could not be compared because {why}"
            ))
        }
    }
}

/// A hop failed at some step: compare with the control, then look for local evidence.
fn hop_failure(f: &Facts, h: &HttpObservation, ev: &mut Vec<Evidence>) -> Outcome {
    let failure = h.failure.clone().unwrap_or_else(|| Failure::unknown(""));
    let step = h.failed_step.unwrap_or(Step::Http);
    let method = match step {
        Step::Dns => Method::Dns,
        Step::Tcp => Method::Tcp,
        Step::Tls if failure.is_certificate() => Method::Mitm,
        Step::Tls => Method::Tls,
        // Web hops never record a protocol step; an HTTP exchange is the nearest.
        Step::Http | Step::Protocol => Method::Http,
    };
    ev.push(Evidence::HopFailure {
        hop: h.hop,
        failure: failure.clone(),
        step,
    });
    if failure == Failure::DeadlineExceeded {
        return deadline_exceeded(f, h, step, ev);
    }
    let decoy_host = (step == Step::Http)
        .then(|| decoy_host_result(f, h))
        .flatten();
    if let Some((result, addr)) = &decoy_host {
        ev.push(Evidence::HttpDecoyHost(result.clone(), *addr));
    }
    let ab = match (step, h.addr) {
        (Step::Http, Some(a)) => ab_at(&f.ab, AbKind::Http, &[a]),
        _ => None,
    };
    if let Some((finding, addr)) = ab {
        ev.push(Evidence::Ab(AbKind::Http, finding, addr));
    }
    let what = hop_failure_phrase(f, h, step, &failure);
    if let Some(outcome) = site_own_redirect_failure(f, h, &failure, &what, ev) {
        return outcome;
    }
    let ctl_final = f.control.and_then(|c| final_response(&c.http));
    if ctl_final.is_some() {
        ev.push(Evidence::HttpControlOk);
        return Outcome::blocked(method, format!("{what}, while the control loaded the page"));
    }
    let ctl_step = f.control.and_then(control_failed_step);
    if ctl_step == Some(step) {
        ev.push(Evidence::HttpControlFailedStep(step));
        return Outcome::down(format!(
            "{what}, and the control failed the same way: the site is down or broken"
        ));
    }
    if let Some(outcome) = ab_request_cut(&what, &failure, ab) {
        return outcome;
    }
    let flaky = matches!(ab, Some((AbFinding::SiteAnswered, _)));
    if let Some((method, why)) = local_evidence(f, h, step, &failure, ev) {
        // The decoy Host proves a block only if the failure repeats.
        if !(flaky && method == Method::Http) {
            return Outcome::blocked(method, format!("{what}, and {why}"));
        }
    }
    if flaky {
        return Outcome::inconclusive(format!(
            "{what}, but the same request was answered when repeated: an intermittent failure, \
             not one that follows the name"
        ));
    }
    if let Some((DecoyResult::Ok, _)) = &decoy_host {
        if failure == Failure::GenericTimeout {
            return Outcome::inconclusive(format!(
                "{what}; the same request with another Host header was answered, but a request \
                 that only times out can also be a slow site, so this proves no block"
            ));
        }
    }
    match (f.control, ctl_step) {
        (None, _) => Outcome::inconclusive(format!(
            "{what}, but the control was unavailable, so a block cannot be told from a failing \
             site"
        )),
        (Some(_), Some(s)) => Outcome::inconclusive(format!(
            "{what}, and the control failed too, at another step ({s}), so the two cannot be \
             compared"
        )),
        (Some(_), None) => Outcome::inconclusive(format!(
            "{what}, and the control recorded no result to compare with"
        )),
    }
}

/// The A/B rule for a cleartext request cut after it was sent, when the control could not
/// compare: reset or closed twice with the site's `Host:` where the same server answered an
/// innocent one → `blocked/http`. A request that only timed out proves nothing this way (a
/// site's own virtual host can hang while the server's default one answers), nor does any
/// other finding.
fn ab_request_cut(
    what: &str,
    failure: &Failure,
    ab: Option<(AbFinding, std::net::SocketAddr)>,
) -> Option<Outcome> {
    let (AbFinding::NameDiffers(by), _) = ab? else {
        return None;
    };
    if !matches!(failure, Failure::ConnectionReset | Failure::Eof) {
        return None;
    }
    Some(Outcome::blocked(
        Method::Http,
        format!(
            "{what}, and again when repeated, while the same server answered {}: Host \
             filtering, shown locally by the A/B test",
            ab_innocent_phrase(by, AbKind::Http)
        ),
    ))
}

/// The target's total deadline ran out: a spent budget, never evidence of a block by itself
/// (a slow line and a slow redirect chain look the same). `down` when the control ran out of
/// time too, `inconclusive` otherwise.
fn deadline_exceeded(
    f: &Facts,
    h: &HttpObservation,
    step: Step,
    ev: &mut Vec<Evidence>,
) -> Outcome {
    let domain = &f.domain;
    let at = if h.hop > 0 {
        format!(
            "at redirect {} ({})",
            h.hop,
            url_host(&h.url).unwrap_or_else(|| "another address".to_string())
        )
    } else {
        format!("during {step}")
    };
    let what = format!("measuring {domain} ran out of its total deadline {at}");
    let ctl_deadline = f.control.is_some_and(|c| {
        c.http
            .iter()
            .any(|h| h.failure == Some(Failure::DeadlineExceeded))
    });
    if ctl_deadline {
        ev.push(Evidence::HttpControlDeadline);
        return Outcome::down(format!(
            "{what}, and the control ran out of time the same way: the site or its redirects are \
             too slow for anyone"
        ));
    }
    let ctl_loaded = f.control.and_then(|c| final_response(&c.http)).is_some();
    if ctl_loaded {
        ev.push(Evidence::HttpControlOk);
        return Outcome::inconclusive(format!(
            "{what} while the control loaded the page, but running out of time proves no block"
        ));
    }
    Outcome::inconclusive(format!(
        "{what}, and running out of time says nothing about a block"
    ))
}

fn hop_failure_phrase(f: &Facts, h: &HttpObservation, step: Step, failure: &Failure) -> String {
    let name = failure.name();
    if h.hop > 0 {
        let to = url_host(&h.url).unwrap_or_else(|| "another address".to_string());
        return match failure {
            Failure::HttpTooManyRedirects => {
                format!("{} redirected too many times (or in a loop) here", f.domain)
            }
            Failure::HttpInvalidRedirect => {
                format!(
                    "{} redirected to an address that cannot be followed",
                    f.domain
                )
            }
            _ => format!("the redirect to {to} {} ({name})", step_phrase(step)),
        };
    }
    match (step, failure) {
        (Step::Http, Failure::ConnectionReset) => {
            "the connection was reset after the HTTP request was sent".to_string()
        }
        (Step::Http, Failure::GenericTimeout) => {
            "the HTTP request got no answer before the timeout".to_string()
        }
        (Step::Http, Failure::Eof) => {
            "the connection was closed after the HTTP request was sent".to_string()
        }
        (Step::Http, Failure::HttpTooManyRedirects) => {
            format!("{} redirected too many times (or in a loop) here", f.domain)
        }
        (Step::Http, Failure::HttpInvalidRedirect) => {
            format!(
                "{} redirected to an address that cannot be followed",
                f.domain
            )
        }
        _ => format!("the request to {} {} ({name})", f.domain, step_phrase(step)),
    }
}

fn step_phrase(step: Step) -> &'static str {
    match step {
        Step::Dns => "could not be resolved",
        Step::Tcp => "could not connect",
        Step::Tls => "failed during the TLS handshake",
        Step::Http | Step::Protocol => "failed during the HTTP exchange",
    }
}

/// Where the control's own measurement stopped: its first failing hop's step, or (with no HTTP
/// at all) the first step at which every attempt failed.
fn control_failed_step(c: &ControlResponse) -> Option<Step> {
    if let Some(h) = c
        .http
        .iter()
        .filter(|h| h.failure.is_some())
        .min_by_key(|h| h.hop)
    {
        return Some(h.failed_step.unwrap_or(Step::Http));
    }
    if !c.http.is_empty() {
        return None;
    }
    let real_tls: Vec<_> = c.tls.iter().filter(|t| !t.decoy).collect();
    if !c.dns.is_empty() && c.dns.iter().all(|o| o.answers.is_empty()) {
        Some(Step::Dns)
    } else if !c.tcp.is_empty() && c.tcp.iter().all(|t| t.failure.is_some()) {
        Some(Step::Tcp)
    } else if !real_tls.is_empty() && real_tls.iter().all(|t| !completed(t)) {
        Some(Step::Tls)
    } else {
        None
    }
}

/// Evidence recorded by the probe alone that cannot be innocent, about the failing hop's host:
/// an injected or bogon DNS answer, a state interception CA, or a decoy handshake that works
/// where the real one is cut.
fn local_evidence(
    f: &Facts,
    h: &HttpObservation,
    step: Step,
    failure: &Failure,
    ev: &mut Vec<Evidence>,
) -> Option<(Method, String)> {
    let host = url_host(&h.url)?;
    let dns: Vec<&DnsObservation> =
        f.m.dns
            .iter()
            .filter(|o| o.role == ResolverRole::Network && norm_host(&o.query) == host)
            .collect();
    if let Some((o, l)) = injected_answers(&dns).first() {
        ev.push(injected_evidence(o, l));
        return Some((
            Method::Dns,
            format!("two different DNS answers came back for {host}: an injected answer"),
        ));
    }
    let bogons: Vec<IpAddr> = dns
        .iter()
        .filter(|o| o.failure.is_none())
        .flat_map(|o| &o.answers)
        .filter(|a| a.bogon)
        .map(|a| a.addr)
        .collect();
    if !bogons.is_empty() {
        ev.push(Evidence::DnsBogon(bogons.clone()));
        return Some((
            Method::Dns,
            format!(
                "the network's resolver answered {} for {host}, an address no public site can have",
                join_addrs(&bogons)
            ),
        ));
    }
    let tls: Vec<&TlsObservation> =
        f.m.tls
            .iter()
            .filter(|t| !t.decoy && norm_host(&t.server_name) == host)
            .collect();
    if let Some(ca) = tls.iter().find_map(|t| t.interception_ca.as_deref()) {
        ev.push(Evidence::InterceptionCa(ca.to_string()));
        return Some((
            Method::Mitm,
            format!("its certificate was issued by {ca}, the state's interception authority"),
        ));
    }
    let host_cut = matches!(failure, Failure::ConnectionReset | Failure::Eof);
    if step == Step::Http && host_cut {
        if let Some((DecoyResult::Ok, _)) = decoy_host_result(f, h) {
            return Some((
                Method::Http,
                "the same request to the same server with another Host header was answered: \
                 Host filtering"
                    .to_string(),
            ));
        }
    }
    if step == Step::Tls && path_like_tls_failure(failure) {
        let cut: Vec<SocketAddr> = tls
            .iter()
            .filter(|t| !completed(t))
            .map(|t| t.addr)
            .chain(h.addr)
            .collect();
        if let Some(d) = f
            .decoys
            .iter()
            .find(|d| completed(d) && cut.contains(&d.addr))
        {
            ev.push(Evidence::TlsDecoy(DecoyResult::Ok, d.addr));
            return Some((
                Method::Tls,
                "a handshake with another name to the same server succeeded: SNI filtering"
                    .to_string(),
            ));
        }
    }
    None
}

/// How the decoy-Host request to the failing hop's address ended: answered (`Ok`), answered
/// with a blockpage, or failed. `None` when none was made.
fn decoy_host_result(f: &Facts, h: &HttpObservation) -> Option<(DecoyResult, SocketAddr)> {
    let addr = h.addr?;
    let d = f.decoy_hosts.iter().find(|d| d.addr == Some(addr))?;
    let result = match (&d.failure, d.status, &d.blockpage) {
        (Some(x), _, _) => DecoyResult::Failed(x.name()),
        (None, Some(_), Some(_)) => DecoyResult::Failed("blockpage"),
        (None, Some(_), None) => DecoyResult::Ok,
        (None, None, _) => DecoyResult::Failed("no_response"),
    };
    Some((result, addr))
}

/// The site's own page over HTTPS, when the probe fetched it as a witness: `Ok` with the final
/// page when every hop was fetched over TLS verified for its host (and the chain stayed on the
/// site, or was trusted hop by hop), otherwise why there is none. `None` when none was fetched.
fn witness_page<'a>(f: &Facts<'a>) -> Option<Result<&'a HttpObservation, HttpsWitnessResult>> {
    let last = *f.witness.last()?;
    if let Some(h) = f.witness.iter().find(|h| h.failure.is_some()) {
        let name = h.failure.as_ref().map(Failure::name).unwrap_or("failed");
        return Some(Err(HttpsWitnessResult::Unavailable(name, h.failed_step)));
    }
    let mut trusted = true;
    for (i, h) in f.witness.iter().enumerate() {
        let on_site = url_host(&h.url).is_some_and(|host| same_site(&host, &f.domain));
        trusted = hop_verified(f.m, h) && (i == 0 || trusted || on_site);
        if !trusted {
            return Some(Err(HttpsWitnessResult::Unavailable("unverified", None)));
        }
    }
    if last.status.is_none() {
        return Some(Err(HttpsWitnessResult::Unavailable("no_response", None)));
    }
    Some(Ok(last))
}

/// A cleartext page the control could not confirm, judged by the site's own HTTPS page: the
/// same page means the cleartext one is the site's own (even when it differs from the
/// control's: a challenge or geo-block of the site's own doing); a different page means the
/// cleartext one was changed on the way. `None` (after citing why) when no verified HTTPS page
/// was had.
fn https_witness(
    f: &Facts,
    last: &HttpObservation,
    ctl_final: Option<&HttpObservation>,
    ev: &mut Vec<Evidence>,
) -> Option<Outcome> {
    let domain = &f.domain;
    let w = match witness_page(f)? {
        Ok(w) => w,
        Err(why) => {
            ev.push(Evidence::HttpsWitness(why));
            return None;
        }
    };
    if pages_similar(last, w) {
        ev.push(Evidence::HttpsWitness(HttpsWitnessResult::SamePage));
        if let Some(c) = ctl_final {
            ev.push(Evidence::ServerSideRefusal);
            push_page_comparison(last, c, ev);
            return Some(Outcome::accessible(format!(
                "the cleartext page of {domain} differs from the control's but is the same as the \
                 site's own page over verified HTTPS: the site itself serves it to this network, \
                 not network censorship"
            )));
        }
        return Some(Outcome::accessible(format!(
            "{domain} loaded, and the cleartext page is the same as the site's own page over \
             verified HTTPS"
        )));
    }
    ev.push(Evidence::HttpsWitness(HttpsWitnessResult::DifferentPage {
        status: w.status.unwrap_or_default(),
        body_length: w.body_length,
        title: w.title.clone(),
    }));
    if let Some(c) = ctl_final {
        push_page_comparison(last, c, ev);
    }
    Some(Outcome::blocked(
        Method::Http,
        format!(
            "the cleartext page of {domain} differs from the site's own page over verified HTTPS, \
             so it was changed on the way: {}",
            page_difference(last, w)
        ),
    ))
}

/// A redirect that cannot be followed (a loop, an unusable address) is the site's own doing
/// when the site's own HTTPS shows it as well: the redirects before it came over TLS verified
/// for the site, either on the page's own chain or on the witness's.
fn site_own_redirect_failure(
    f: &Facts,
    h: &HttpObservation,
    failure: &Failure,
    what: &str,
    ev: &mut Vec<Evidence>,
) -> Option<Outcome> {
    if !matches!(
        failure,
        Failure::HttpTooManyRedirects | Failure::HttpInvalidRedirect
    ) {
        return None;
    }
    let before: Vec<&&HttpObservation> = f.hops.iter().filter(|x| x.hop < h.hop).collect();
    let chain_verified = !before.is_empty() && before.iter().all(|x| hop_verified(f.m, x));
    let witness_same = f
        .witness
        .iter()
        .any(|w| w.failure.as_ref() == Some(failure))
        && f.witness
            .iter()
            .filter(|w| w.failure.is_none())
            .all(|w| hop_verified(f.m, w))
        && f.witness.iter().any(|w| w.failure.is_none());
    if !(chain_verified || witness_same) {
        return None;
    }
    if witness_same {
        ev.push(Evidence::HttpsWitness(HttpsWitnessResult::Unavailable(
            failure.name(),
            Some(Step::Http),
        )));
    }
    ev.push(Evidence::ServerSideRefusal);
    Some(Outcome::accessible(format!(
        "{what}, but the redirects came from the site itself over verified HTTPS: the site's own \
         broken redirect, not network censorship"
    )))
}

/// Whether a hop was fetched over a TLS connection whose chain verified for the hop's host.
/// Hop 0's handshake is in the measurement's TLS list; a redirect hop's handshake is not
/// recorded there, but the engine refuses to send a request over an unverified redirect hop
/// (it records a TLS failure instead), so an https redirect hop with a response was verified.
fn hop_verified(m: &Measurement, h: &HttpObservation) -> bool {
    let Ok(u) = url::Url::parse(&h.url) else {
        return false;
    };
    if u.scheme() != "https" || h.failure.is_some() {
        return false;
    }
    let Some(host) = url_host(&h.url) else {
        return false;
    };
    let matching: Vec<&TlsObservation> = m
        .tls
        .iter()
        .filter(|t| !t.decoy && norm_host(&t.server_name) == host)
        .filter(|t| h.addr.is_none_or(|a| a == t.addr))
        .collect();
    if matching.is_empty() {
        return h.hop > 0 && h.status.is_some();
    }
    matching.iter().any(|t| t.verified())
}

fn push_page_comparison(p: &HttpObservation, c: &HttpObservation, ev: &mut Vec<Evidence>) {
    ev.push(Evidence::BodyLength {
        probe: p.body_length,
        control: c.body_length,
    });
    if p.title.is_some() || c.title.is_some() {
        ev.push(Evidence::Titles {
            probe: p.title.clone(),
            control: c.title.clone(),
        });
    }
}

fn page_difference(p: &HttpObservation, c: &HttpObservation) -> String {
    let mut s = format!(
        "status {} against {}, {} against {}",
        p.status.unwrap_or_default(),
        c.status.unwrap_or_default(),
        fmt_bytes(p.body_length, p.body_truncated),
        fmt_bytes(c.body_length, c.body_truncated)
    );
    if p.title.is_some() || c.title.is_some() {
        s.push_str(&format!(
            ", title \"{}\" against \"{}\"",
            short_title(p.title.as_deref()),
            short_title(c.title.as_deref())
        ));
    }
    s
}

#[cfg(test)]
pub(super) mod tests {
    use super::super::testkit::*;
    use crate::model::{Measurement, Method, Status};

    pub(in crate::verdict) const CASES: &[Case] = cases! {
        accessible_https Plain => Accessible;
        accessible_http Plain => Accessible;
        http_reset_after_request Plain => Blocked / Http;
        http_blockpage Plain => Blocked / Http;
        http_redirect_to_blockpage_server Plain => Blocked / Http;
        http_page_differs Plain => Blocked / Http;
        http_no_control Plain => Accessible;
        https_403_verified Plain => Accessible;
        https_blockpage_from_site_itself Plain => Accessible;
        redirect_chain_accessible Plain => Accessible;
        redirect_to_blocked_site Plain => Blocked / Tls;
        redirect_to_blocked_site_no_control Plain => Inconclusive;
        too_many_redirects_probe_only Plain => Blocked / Http;
        too_many_redirects_everywhere Plain => Down;
        deadline_redirect_chain Plain => Inconclusive;
        deadline_redirect_chain_no_control Plain => Inconclusive;
        deadline_everywhere Plain => Down;
        http_host_reset_decoy_ok Plain => Blocked / Http;
        http_host_reset_decoy_ok_no_control Plain => Blocked / Http;
        http_host_timeout_decoy_ok_no_control Plain => Inconclusive;
        http_host_reset_decoy_reset_no_control Plain => Inconclusive;
        http_notice_no_control_https_witness Plain => Blocked / Http;
        http_notice_https_witness Plain => Blocked / Http;
        http_no_control_https_witness_same Plain => Accessible;
        http_notice_no_control_https_unverified Plain => Accessible;
        http_notice_no_control_https_refused Plain => Accessible;
        http_challenge_from_site_itself Plain => Accessible;
        https_redirect_loop_verified Plain => Accessible;
        http_redirect_loop_https_witness_same Plain => Accessible;
        redirect_to_sni_blocked_no_control Plain => Blocked / Tls;
    };

    #[test]
    fn table() {
        check(CASES);
    }

    #[test]
    fn reasons_and_evidence() {
        let v = verdict_of(https_403_verified, Ctx::Plain);
        assert!(cites(&v, "server_side_refusal"), "{v:?}");
        assert!(
            v.reason.contains("the site itself answered 403"),
            "{}",
            v.reason
        );
        let v = verdict_of(http_blockpage, Ctx::Plain);
        assert!(cites(&v, "http.blockpage=d_corp_kz_ps"));
        let v = verdict_of(redirect_to_blocked_site, Ctx::Plain);
        assert!(
            v.reason
                .contains("the redirect to video.example failed during the TLS handshake"),
            "{}",
            v.reason
        );
        let v = verdict_of(http_no_control, Ctx::Plain);
        assert!(v.reason.contains("could not be compared"), "{}", v.reason);
        let v = verdict_of(http_page_differs, Ctx::Plain);
        assert!(
            v.evidence
                .iter()
                .any(|e| e.starts_with("http.body_length=")),
            "{v:?}"
        );
    }

    #[test]
    fn local_evidence_is_cited() {
        let v = verdict_of(http_host_reset_decoy_ok_no_control, Ctx::Plain);
        assert!(cites(&v, "http.decoy_host=ok@198.18.0.10:80"), "{v:?}");
        assert!(v.reason.contains("Host filtering"), "{}", v.reason);
        let v = verdict_of(http_host_reset_decoy_ok, Ctx::Plain);
        assert!(cites(&v, "http.decoy_host=ok@198.18.0.10:80"), "{v:?}");
        assert!(cites(&v, "http.control=ok"), "{v:?}");
        let v = verdict_of(http_host_reset_decoy_reset_no_control, Ctx::Plain);
        assert!(
            cites(&v, "http.decoy_host=connection_reset@198.18.0.10:80"),
            "{v:?}"
        );
        let v = verdict_of(http_notice_no_control_https_witness, Ctx::Plain);
        assert!(
            v.evidence
                .iter()
                .any(|e| e.starts_with("http.https_witness=different_page status=200")),
            "{v:?}"
        );
        assert!(v.reason.contains("changed on the way"), "{}", v.reason);
        let v = verdict_of(http_no_control_https_witness_same, Ctx::Plain);
        assert!(cites(&v, "http.https_witness=same_page"), "{v:?}");
        let v = verdict_of(http_challenge_from_site_itself, Ctx::Plain);
        assert!(cites(&v, "http.https_witness=same_page"), "{v:?}");
        assert!(cites(&v, "server_side_refusal"), "{v:?}");
        let v = verdict_of(http_notice_no_control_https_unverified, Ctx::Plain);
        assert!(cites(&v, "http.https_witness=unverified"), "{v:?}");
        let v = verdict_of(http_notice_no_control_https_refused, Ctx::Plain);
        assert!(
            cites(&v, "http.https_witness=connection_refused@tcp"),
            "{v:?}"
        );
        let v = verdict_of(redirect_to_sni_blocked_no_control, Ctx::Plain);
        assert!(cites(&v, "tls.decoy=ok@198.18.7.7:443"), "{v:?}");
        let v = verdict_of(http_redirect_loop_https_witness_same, Ctx::Plain);
        assert!(
            cites(&v, "http.https_witness=http_too_many_redirects@http"),
            "{v:?}"
        );
    }
}
