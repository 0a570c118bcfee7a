//! The A/B test: a target's failed exchange repeated to the same server address and port with
//! an innocent name, so a block can be proved without the control.
//!
//! This is OONI's `sni_blocking` (ts-024) and `tlsmiddlebox`, and CenTrace's control domain. A
//! server hosting a name serves it like any other; a middlebox on the path acts on the name it
//! reads. So when a handshake (or a cleartext request) naming the site is reset, left unanswered,
//! answered with a blockpage or with a certificate that does not verify, the probe sends:
//! - for TLS, a ClientHello with the innocent SNI and one with no SNI at all, each on a fresh
//!   connection (a censor that blocks the innocent name too, to defeat the test, still cannot
//!   block a nameless ClientHello without breaking every client that sends none);
//! - for HTTP, the same request with the innocent name in `Host:`;
//! - then, only if an innocent exchange was answered, the site's own exchange once more: a
//!   failure that does not repeat was a flaky server or network, not the name.
//!
//! The innocent name is the configured decoy name (`decoy_sni`, default `example.com`, as OONI's
//! `control_sni`): a name a censor has no reason to block, and one that needs no resolver lookup
//! (it is sent to the site's address, never resolved). The address is the site's own, from this
//! run's DNS; the engine refuses bogons unless told otherwise. Every exchange is bounded by
//! [`AB_TIMEOUT`] (the site's repeat by a few times the innocent handshake's duration), every
//! body by [`AB_BODY_CAP`].

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::tls::TlsContext;
use super::{http, ms_since, tcp, MeasureConfig};
use crate::failure::Failure;
use crate::model::{
    AbKind, AbName, AbObservation, AbTrial, AbTrigger, HttpObservation, HttpRole, Step,
    TlsObservation,
};
use crate::scrub::OwnAddresses;

/// Longest any A/B exchange (connect plus handshake or request) may take: the site's exchange
/// already failed once at the full step timeout, so the test needs no more than a server
/// answering an innocent name in a few seconds.
pub const AB_TIMEOUT: Duration = Duration::from_secs(5);

/// Shortest wait for the site's repeated exchange.
pub const AB_REPEAT_MIN: Duration = Duration::from_secs(1);

/// The site's repeated exchange waits this many times as long as the slowest innocent exchange
/// that was answered (at least [`AB_REPEAT_MIN`], at most [`AB_TIMEOUT`]): a name that gets no
/// answer in four times what the same server needed for another name is not merely slow.
pub const AB_REPEAT_FACTOR: u32 = 4;

/// Most body bytes read per A/B request: enough for the blockpage signatures.
pub const AB_BODY_CAP: usize = 64 * 1024;

/// What the A/B test repeats, chosen from the target's own observations by [`plan`].
#[derive(Clone, Debug, PartialEq)]
pub struct AbPlan {
    /// TLS handshake or HTTP request.
    pub kind: AbKind,
    /// The address and port of the failed exchange.
    pub addr: SocketAddr,
    /// The site's name, lower case.
    pub name: String,
    /// What the failed exchange got.
    pub trigger: AbTrigger,
    /// HTTP: the URL of the failed request (its path is repeated).
    pub url: Option<url::Url>,
}

/// The A/B test the target's observations call for, if any: the first handshake with the
/// target's name that was cut or got a certificate that does not verify (when none of its
/// handshakes verified), else the first cleartext request to the target's host that was cut
/// after it was sent or answered with a blockpage. Nothing for an IP literal, or when the site's
/// name is the innocent name itself. Pure, so it is unit-tested.
pub fn plan(
    url: &url::Url,
    tls: &[TlsObservation],
    http: &[HttpObservation],
    innocent: &str,
) -> Option<AbPlan> {
    let host = url
        .host_str()?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .trim_end_matches('.')
        .to_ascii_lowercase();
    if host.parse::<std::net::IpAddr>().is_ok()
        || host.eq_ignore_ascii_case(innocent.trim_end_matches('.'))
    {
        return None;
    }
    let same = |n: &str| n.trim_end_matches('.').eq_ignore_ascii_case(&host);
    if url.scheme() == "https" {
        let own: Vec<&TlsObservation> = tls
            .iter()
            .filter(|t| !t.decoy && same(&t.server_name))
            .collect();
        if own.iter().any(|t| t.verified()) {
            return None;
        }
        let chosen = own.iter().find_map(|t| {
            // A TLS alert or garbage is the server's own answer, not a middlebox's: only a
            // reset, a close or silence after the ClientHello is censor-like.
            let trigger = match &t.failure {
                Some(f @ (Failure::ConnectionReset | Failure::Eof | Failure::GenericTimeout)) => {
                    interruption_trigger(f)
                }
                Some(f) if f.is_interruption() => return None,
                Some(f) if !f.is_certificate() => return None,
                _ if (t.failure.is_some() || t.verification_failure.is_some())
                    && t.interception_ca.is_none() =>
                {
                    AbTrigger::ForgedCertificate
                }
                _ => return None,
            };
            Some((t.addr, trigger))
        });
        return chosen.map(|(addr, trigger)| AbPlan {
            kind: AbKind::Tls,
            addr,
            name: host.clone(),
            trigger,
            url: None,
        });
    }
    http.iter()
        .filter(|h| h.role == HttpRole::Page && h.url.starts_with("http://"))
        .find_map(|h| {
            let u = url::Url::parse(&h.url).ok()?;
            if !u.host_str().is_some_and(same) {
                return None;
            }
            let trigger = match (&h.failure, h.failed_step, &h.blockpage) {
                (Some(f), Some(Step::Http), _)
                    if matches!(
                        f,
                        Failure::ConnectionReset | Failure::Eof | Failure::GenericTimeout
                    ) =>
                {
                    interruption_trigger(f)
                }
                (None, _, Some(_)) => AbTrigger::Blockpage,
                _ => return None,
            };
            Some(AbPlan {
                kind: AbKind::Http,
                addr: h.addr?,
                name: host.clone(),
                trigger,
                url: Some(u),
            })
        })
}

fn interruption_trigger(f: &Failure) -> AbTrigger {
    match f {
        Failure::GenericTimeout => AbTrigger::Timeout,
        Failure::ConnectionReset | Failure::ConnectionRefused => AbTrigger::Reset,
        _ => AbTrigger::Close,
    }
}

/// Run the test `plan` calls for. Each trial goes into `trials` as soon as it ends, so a
/// deadline that cuts the test short loses none (see [`observation`]).
pub async fn run(
    plan: &AbPlan,
    innocent: &str,
    tls: &TlsContext,
    cfg: &MeasureConfig,
    own: &OwnAddresses,
    t0: Instant,
    trials: &Mutex<Vec<AbTrial>>,
) {
    let limit = cfg.timeout.min(AB_TIMEOUT);
    let record = |t: AbTrial| trials.lock().unwrap_or_else(|e| e.into_inner()).push(t);
    let innocents: Vec<AbTrial> = match plan.kind {
        AbKind::Tls => {
            let (a, b) = tokio::join!(
                tls_trial(plan, AbName::Innocent, innocent, limit, tls, cfg, t0),
                tls_trial(plan, AbName::None, innocent, limit, tls, cfg, t0)
            );
            vec![a, b]
        }
        AbKind::Http => {
            vec![http_trial(plan, AbName::Innocent, innocent, limit, cfg, own, t0).await]
        }
    };
    let slowest = innocents
        .iter()
        .filter(|t| t.answered())
        .map(|t| t.duration_ms)
        .fold(None, |m: Option<f64>, d| Some(m.map_or(d, |m| m.max(d))));
    for t in innocents {
        record(t);
    }
    // Only a name that fails where another passes is worth repeating.
    let Some(slowest) = slowest else {
        return;
    };
    let repeat = repeat_wait(slowest, limit);
    let site = match plan.kind {
        AbKind::Tls => tls_trial(plan, AbName::Site, innocent, repeat, tls, cfg, t0).await,
        AbKind::Http => http_trial(plan, AbName::Site, innocent, repeat, cfg, own, t0).await,
    };
    record(site);
}

/// How long the site's repeated exchange may take: [`AB_REPEAT_FACTOR`] times the slowest
/// innocent exchange that was answered (`slowest_ms`), at least [`AB_REPEAT_MIN`], at most
/// `limit` (which wins over the minimum).
pub fn repeat_wait(slowest_ms: f64, limit: Duration) -> Duration {
    let ms = if slowest_ms.is_finite() {
        slowest_ms.max(0.0)
    } else {
        0.0
    };
    let scaled = Duration::from_secs_f64((ms / 1000.0 * f64::from(AB_REPEAT_FACTOR)).min(3600.0));
    scaled.clamp(AB_REPEAT_MIN.min(limit), limit)
}

/// The record of a test from the trials it made (all of them, or those made before a deadline).
pub fn observation(
    plan: &AbPlan,
    innocent: &str,
    trials: Vec<AbTrial>,
    t_ms: f64,
    duration_ms: f64,
) -> AbObservation {
    AbObservation {
        kind: plan.kind,
        addr: plan.addr,
        name: plan.name.clone(),
        innocent: innocent.to_string(),
        trigger: plan.trigger,
        trials,
        t_ms,
        duration_ms,
    }
}

fn trial(sent: AbName, t0: Instant) -> AbTrial {
    AbTrial {
        sent,
        t_ms: ms_since(t0),
        duration_ms: 0.0,
        failure: None,
        leaf_sha256: None,
        valid_for_site: None,
        interception_ca: None,
        status: None,
        blockpage: None,
    }
}

/// One handshake on a fresh connection, the connect and the handshake each bounded by `limit`.
async fn tls_trial(
    plan: &AbPlan,
    sent: AbName,
    innocent: &str,
    limit: Duration,
    tls: &TlsContext,
    cfg: &MeasureConfig,
    t0: Instant,
) -> AbTrial {
    let mut out = trial(sent, t0);
    let start = Instant::now();
    let stream =
        match tokio::time::timeout(limit, tcp::connect_socket(plan.addr, cfg.source_address)).await
        {
            Err(_) => Err(Failure::GenericTimeout),
            Ok(Err(e)) => Err(Failure::from_io(&e)),
            Ok(Ok(s)) => Ok(s),
        };
    match stream {
        Err(f) => out.failure = Some(f),
        Ok(stream) => {
            let sni = match sent {
                AbName::Site => Some(plan.name.as_str()),
                AbName::Innocent => Some(innocent),
                AbName::None => None,
            };
            let hs = tls.bare_handshake(stream, sni, &plan.name, limit).await;
            out.failure = hs.failure;
            out.valid_for_site = out.failure.is_none().then_some(hs.valid_for_site);
            out.leaf_sha256 = hs.leaf_sha256;
            out.interception_ca = hs.interception_ca;
        }
    }
    out.duration_ms = ms_since(start);
    out
}

/// One cleartext request on a fresh connection, the whole exchange bounded by `limit`.
async fn http_trial(
    plan: &AbPlan,
    sent: AbName,
    innocent: &str,
    limit: Duration,
    cfg: &MeasureConfig,
    own: &OwnAddresses,
    t0: Instant,
) -> AbTrial {
    let mut out = trial(sent, t0);
    let start = Instant::now();
    let mut url = match &plan.url {
        Some(u) => u.clone(),
        None => {
            out.failure = Some(Failure::unknown("no request to repeat"));
            return out;
        }
    };
    if sent != AbName::Site && url.set_host(Some(innocent)).is_err() {
        out.failure = Some(Failure::unknown("bad innocent name"));
        return out;
    }
    let mut bounded = cfg.clone();
    bounded.timeout = limit;
    bounded.body_cap = cfg.body_cap.min(AB_BODY_CAP);
    bounded.redirect_body_cap = cfg.redirect_body_cap.min(AB_BODY_CAP);
    let exchange = async {
        let stream = tcp::connect_socket(plan.addr, cfg.source_address)
            .await
            .map_err(|e| Failure::from_io(&e))?;
        Ok::<_, Failure>(
            http::get(stream, &url, plan.addr, 0, &bounded, own, t0)
                .await
                .obs,
        )
    };
    match tokio::time::timeout(limit, exchange).await {
        Err(_) => out.failure = Some(Failure::GenericTimeout),
        Ok(Err(f)) => out.failure = Some(f),
        Ok(Ok(obs)) => {
            out.failure = obs.failure.or_else(|| {
                obs.status
                    .is_none()
                    .then(|| Failure::unknown("no response"))
            });
            out.status = obs.status;
            out.blockpage = obs.blockpage;
        }
    }
    out.duration_ms = ms_since(start);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::CertificateInfo;

    const ADDR: &str = "198.51.100.7:443";

    fn hs(name: &str, failure: Option<Failure>, verification: Option<Failure>) -> TlsObservation {
        TlsObservation {
            addr: ADDR.parse().unwrap(),
            server_name: name.into(),
            decoy: false,
            t_ms: 0.0,
            duration_ms: 1.0,
            failure,
            tls_version: None,
            cipher_suite: None,
            peer_certificates: Vec::<CertificateInfo>::new(),
            verification_failure: verification,
            interception_ca: None,
        }
    }

    fn page(url: &str, failure: Option<Failure>, blockpage: Option<&str>) -> HttpObservation {
        let mut h = http::empty_observation(
            0,
            url,
            Some("198.51.100.7:80".parse().unwrap()),
            Instant::now(),
        );
        if failure.is_some() {
            h.failed_step = Some(Step::Http);
        } else {
            h.status = Some(200);
        }
        h.failure = failure;
        h.blockpage = blockpage.map(str::to_string);
        h
    }

    fn u(s: &str) -> url::Url {
        url::Url::parse(s).unwrap()
    }

    #[test]
    fn tls_plans_follow_the_failure() {
        let site = u("https://Site.test/");
        let cases = [
            (Some(Failure::ConnectionReset), None, Some(AbTrigger::Reset)),
            (
                Some(Failure::GenericTimeout),
                None,
                Some(AbTrigger::Timeout),
            ),
            (Some(Failure::Eof), None, Some(AbTrigger::Close)),
            (
                None,
                Some(Failure::SslUnknownAuthority),
                Some(AbTrigger::ForgedCertificate),
            ),
            (
                Some(Failure::SslInvalidHostname),
                None,
                Some(AbTrigger::ForgedCertificate),
            ),
            (None, None, None),
            (Some(Failure::unknown("x")), None, None),
            // The server's own alert (e.g. unrecognized_name) is not a middlebox's doing.
            (Some(Failure::SslFailedHandshake), None, None),
        ];
        for (failure, verification, want) in cases {
            let t = [hs("site.test", failure.clone(), verification.clone())];
            let got = plan(&site, &t, &[], "example.com");
            assert_eq!(
                got.as_ref().map(|p| p.trigger),
                want,
                "{failure:?} {verification:?}"
            );
            if let Some(p) = got {
                assert_eq!((p.kind, p.name.as_str()), (AbKind::Tls, "site.test"));
                assert_eq!(p.addr, ADDR.parse().unwrap());
            }
        }
        // One verified handshake: the site works, nothing to test.
        let both = [
            hs("site.test", Some(Failure::ConnectionReset), None),
            hs("site.test", None, None),
        ];
        assert_eq!(plan(&site, &both, &[], "example.com"), None);
        // A state CA decides by itself; decoys and other names are not the site's exchange.
        let mut ca = hs("site.test", None, Some(Failure::SslUnknownAuthority));
        ca.interception_ca = Some("Qaznet Trust Network".into());
        let mut decoy = hs("example.com", Some(Failure::ConnectionReset), None);
        decoy.decoy = true;
        let other = hs("cdn.test", Some(Failure::ConnectionReset), None);
        assert_eq!(plan(&site, &[ca, decoy, other], &[], "example.com"), None);
        // No name to test.
        let cut = [hs("198.51.100.7", Some(Failure::ConnectionReset), None)];
        assert_eq!(
            plan(&u("https://198.51.100.7/"), &cut, &[], "example.com"),
            None
        );
        let cut = [hs("example.com", Some(Failure::ConnectionReset), None)];
        assert_eq!(
            plan(&u("https://example.com/"), &cut, &[], "example.com"),
            None
        );
    }

    #[test]
    fn the_repeat_waits_a_few_times_the_innocent_answer() {
        let s = Duration::from_secs;
        let ms = Duration::from_millis;
        assert_eq!(repeat_wait(3.0, s(5)), AB_REPEAT_MIN);
        assert_eq!(repeat_wait(400.0, s(5)), ms(1600));
        assert_eq!(repeat_wait(4000.0, s(5)), s(5));
        assert_eq!(repeat_wait(f64::NAN, s(5)), AB_REPEAT_MIN);
        assert_eq!(repeat_wait(f64::INFINITY, s(5)), AB_REPEAT_MIN);
        // A step timeout below the minimum wins.
        assert_eq!(repeat_wait(3.0, ms(300)), ms(300));
    }

    #[test]
    fn http_plans_follow_the_failure() {
        let site = u("http://site.test/news");
        let cases = [
            (
                page(
                    "http://site.test/news",
                    Some(Failure::ConnectionReset),
                    None,
                ),
                Some(AbTrigger::Reset),
            ),
            (
                page("http://site.test/news", Some(Failure::GenericTimeout), None),
                Some(AbTrigger::Timeout),
            ),
            (
                page("http://site.test/news", Some(Failure::Eof), None),
                Some(AbTrigger::Close),
            ),
            (
                page("http://site.test/news", None, Some("kz-gov")),
                Some(AbTrigger::Blockpage),
            ),
            (page("http://site.test/news", None, None), None),
            (
                page(
                    "http://site.test/news",
                    Some(Failure::HttpInvalidResponse),
                    None,
                ),
                None,
            ),
            (
                page("http://other.test/", Some(Failure::ConnectionReset), None),
                None,
            ),
        ];
        for (h, want) in cases {
            let got = plan(&site, &[], std::slice::from_ref(&h), "example.com");
            assert_eq!(got.as_ref().map(|p| p.trigger), want, "{h:?}");
            if let Some(p) = got {
                assert_eq!(p.kind, AbKind::Http);
                assert_eq!(p.url.unwrap().path(), "/news");
            }
        }
        // The probe's own evidence exchanges are not the page.
        let mut decoy = page(
            "http://site.test/news",
            Some(Failure::ConnectionReset),
            None,
        );
        decoy.role = HttpRole::DecoyHost;
        assert_eq!(plan(&site, &[], &[decoy], "example.com"), None);
        // A connect that failed is not a request that was cut.
        let mut tcp = page(
            "http://site.test/news",
            Some(Failure::ConnectionReset),
            None,
        );
        tcp.failed_step = Some(Step::Tcp);
        assert_eq!(plan(&site, &[], &[tcp], "example.com"), None);
    }
}
