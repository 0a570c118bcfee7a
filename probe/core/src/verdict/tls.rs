//! Stage 4, TLS: a state interception CA, a certificate that does not verify, or a handshake
//! cut after the ClientHello; compared with the control's handshakes and the decoy's.

use crate::failure::Failure;
use crate::model::{AbKind, Method, Step, TlsObservation};

use super::compare::{ab_at, ab_innocent_phrase, AbFinding};
use super::evidence::{ControlTlsEvidence, DecoyResult, Evidence};
use super::facts::{Facts, Outcome, MAX_EVIDENCE_ADDRS};

/// How far the control got with the TLS handshake.
#[derive(Clone, Copy, Debug, PartialEq)]
enum ControlTls {
    /// No control at all.
    Unavailable,
    /// The control answered but made no handshake (it failed earlier).
    NotReached,
    /// Every control handshake failed.
    Failed,
    /// A handshake completed, but no chain verified.
    Unverified,
    /// A handshake completed with a verified chain.
    Verified,
}

fn control_tls(f: &Facts) -> ControlTls {
    if f.control.is_none() {
        ControlTls::Unavailable
    } else if f.ctl_tls.is_empty() {
        ControlTls::NotReached
    } else if f.ctl_tls.iter().any(|t| t.verified()) {
        ControlTls::Verified
    } else if f.ctl_tls.iter().any(|t| completed(t)) {
        ControlTls::Unverified
    } else {
        ControlTls::Failed
    }
}

/// The handshake got as far as the certificate (a certificate failure recorded as the handshake
/// failure still means the server answered).
pub(super) fn completed(t: &TlsObservation) -> bool {
    t.failure.as_ref().is_none_or(Failure::is_certificate)
}

pub(super) fn stage(f: &Facts, ev: &mut Vec<Evidence>) -> Option<Outcome> {
    if !f.https || f.tls.is_empty() {
        return None;
    }
    let domain = &f.domain;

    // A state interception CA anywhere is interception, even if other addresses verified.
    if let Some(t) = f.tls.iter().find(|t| t.interception_ca.is_some()) {
        let ca = t.interception_ca.as_deref().unwrap_or_default();
        ev.push(Evidence::InterceptionCa(ca.to_string()));
        push_verification_evidence(f, ev);
        let partial = if f.tls.iter().any(|t| t.verified()) {
            " on some of its addresses"
        } else {
            ""
        };
        return Some(Outcome::blocked(
            Method::Mitm,
            format!(
                "the certificate presented for {domain}{partial} was issued by {ca}, the state's \
                 interception authority: the connection is intercepted"
            ),
        ));
    }
    if f.tls.iter().any(|t| t.verified()) {
        return None;
    }
    if f.tls.iter().any(|t| completed(t)) {
        return Some(tls_unverified(f, ev));
    }
    if f.cut_by_deadline(Step::Tls) {
        // Handshakes still under way when time ran out are not recorded: the HTTP stage says so.
        return None;
    }
    Some(tls_interrupted(f, ev))
}

fn push_verification_evidence(f: &Facts, ev: &mut Vec<Evidence>) {
    for t in f
        .tls
        .iter()
        .filter(|t| completed(t) && !t.verified())
        .take(MAX_EVIDENCE_ADDRS)
    {
        ev.push(Evidence::TlsVerification(verification_name(t), t.addr));
        if let Some(leaf) = t.peer_certificates.first() {
            ev.push(Evidence::TlsLeaf(leaf.sha256.clone()));
            ev.push(Evidence::TlsIssuer(leaf.issuer.clone()));
        }
    }
}

fn verification_name(t: &TlsObservation) -> &'static str {
    t.verification_failure
        .as_ref()
        .or(t.failure.as_ref())
        .map(Failure::name)
        .unwrap_or("verified")
}

/// Handshakes completed, none verified, no state CA: compare with the control's certificate.
fn tls_unverified(f: &Facts, ev: &mut Vec<Evidence>) -> Outcome {
    let domain = &f.domain;
    push_verification_evidence(f, ev);
    let why = f
        .tls
        .iter()
        .find(|t| completed(t))
        .map(|t| verification_name(t))
        .unwrap_or("unverified");
    let unverified: Vec<_> = f
        .tls
        .iter()
        .filter(|t| completed(t))
        .map(|t| t.addr)
        .collect();
    let ab = ab_at(&f.ab, AbKind::Tls, &unverified);
    if let Some((finding, addr)) = ab {
        ev.push(Evidence::Ab(AbKind::Tls, finding, addr));
    }
    let control = control_tls(f);
    if let Some(outcome) = ab_forged_certificate(domain, why, control, ab) {
        return outcome;
    }
    match control {
        ControlTls::Verified => {
            if let Some(leaf) = f
                .ctl_tls
                .iter()
                .find(|t| t.verified())
                .and_then(|t| t.peer_certificates.first())
            {
                ev.push(Evidence::TlsControlLeaf(leaf.sha256.clone()));
            }
            ev.push(Evidence::TlsControl(ControlTlsEvidence::Verified));
            Outcome::blocked(
                Method::Mitm,
                format!(
                    "the certificate presented for {domain} does not verify here ({why}) while \
                     the control got a valid one: the connection is intercepted with a forged \
                     certificate"
                ),
            )
        }
        ControlTls::Unverified => {
            ev.push(Evidence::TlsControl(ControlTlsEvidence::Unverified));
            Outcome::down(format!(
                "the site's own certificate is invalid for everyone ({why}), the control's too: a \
                 broken site, not interception"
            ))
        }
        ControlTls::Failed | ControlTls::NotReached => Outcome::inconclusive(format!(
            "the certificate presented for {domain} does not verify ({why}), and the control \
             completed no handshake to compare it with"
        )),
        ControlTls::Unavailable => Outcome::inconclusive(format!(
            "the certificate presented for {domain} does not verify ({why}), but the control was \
             unavailable to tell interception from a broken certificate"
        )),
    }
}

/// The A/B rule for a certificate that does not verify: when the control did not verify the
/// site's certificate itself (none, or no handshake), a handshake to the same server with an
/// innocent name (or none) that got a chain valid for the site's name, while the site's name
/// got an invalid one twice, shows the server holds the real certificate: the other was
/// substituted on the path. A control that found the site's certificate invalid too (`down`)
/// is left alone.
fn ab_forged_certificate(
    domain: &str,
    why: &str,
    control: ControlTls,
    ab: Option<(AbFinding, std::net::SocketAddr)>,
) -> Option<Outcome> {
    let Some((AbFinding::CertificateDiffers(by), _)) = ab else {
        return None;
    };
    if !matches!(
        control,
        ControlTls::Unavailable | ControlTls::NotReached | ControlTls::Failed
    ) {
        return None;
    }
    Some(Outcome::blocked(
        Method::Mitm,
        format!(
            "the certificate presented for {domain} does not verify ({why}), while the same              server answered {} with a certificate valid for {domain}: the certificate is              substituted on the path, shown locally by the A/B test",
            ab_innocent_phrase(by, AbKind::Tls)
        ),
    ))
}

/// The A/B rule for a cut handshake, when the control cannot compare (none, or no
/// handshake): the site's name failed twice where an innocent one (or none) was answered by the
/// same server → `blocked/tls`; the site's name answered when repeated → `inconclusive`, even
/// when the decoy handshake worked (an intermittent failure is not the name). Anything else
/// leaves the other rules to decide.
fn ab_interrupted(what: &str, ab: Option<(AbFinding, std::net::SocketAddr)>) -> Option<Outcome> {
    match ab? {
        (AbFinding::NameDiffers(by), _) => Some(Outcome::blocked(
            Method::Tls,
            format!(
                "{what}, and again when repeated, while the same server answered {}: SNI                  filtering, shown locally by the A/B test",
                ab_innocent_phrase(by, AbKind::Tls)
            ),
        )),
        (AbFinding::SiteAnswered, _) => Some(Outcome::inconclusive(format!(
            "{what}, but the same handshake succeeded when repeated: an intermittent failure,              not one that follows the name"
        ))),
        _ => None,
    }
}

/// No handshake with the real name got as far as the certificate.
fn tls_interrupted(f: &Facts, ev: &mut Vec<Evidence>) -> Outcome {
    let domain = &f.domain;
    let failed: Vec<&TlsObservation> = f.tls.iter().copied().filter(|t| !completed(t)).collect();
    for t in failed.iter().take(MAX_EVIDENCE_ADDRS) {
        if let Some(x) = &t.failure {
            ev.push(Evidence::TlsFailure(x.clone(), t.addr));
        }
    }
    let failure = failed
        .iter()
        .filter_map(|t| t.failure.clone())
        .find(Failure::is_interruption)
        .or_else(|| failed.iter().find_map(|t| t.failure.clone()));
    let decoys: Vec<&TlsObservation> = f
        .decoys
        .iter()
        .copied()
        .filter(|d| failed.iter().any(|t| t.addr == d.addr))
        .collect();
    for d in decoys.iter().take(MAX_EVIDENCE_ADDRS) {
        let result = if completed(d) {
            DecoyResult::Ok
        } else {
            DecoyResult::Failed(d.failure.as_ref().map_or("failed", Failure::name))
        };
        ev.push(Evidence::TlsDecoy(result, d.addr));
    }
    let decoy_ok = decoys.iter().any(|d| completed(d));
    let decoy_failed = !decoys.is_empty() && !decoy_ok;
    let what = interruption_phrase(failure.as_ref(), domain);
    let interruption = failure.as_ref().is_some_and(Failure::is_interruption);
    let path_like = failure.as_ref().is_some_and(path_like_tls_failure);
    let cut: Vec<_> = failed.iter().map(|t| t.addr).collect();
    let ab = ab_at(&f.ab, AbKind::Tls, &cut);
    if let Some((finding, addr)) = ab {
        ev.push(Evidence::Ab(AbKind::Tls, finding, addr));
    }
    let control = control_tls(f);
    if matches!(control, ControlTls::NotReached | ControlTls::Unavailable) {
        if let Some(outcome) = ab_interrupted(&what, ab) {
            return outcome;
        }
    }
    match control {
        ControlTls::Verified | ControlTls::Unverified => {
            ev.push(Evidence::TlsControl(ControlTlsEvidence::Ok));
            let tail = if decoy_failed {
                "the server's address is filtered during the handshake, whatever the name"
            } else if interruption {
                "SNI filtering"
            } else {
                "TLS interference"
            };
            Outcome::blocked(
                Method::Tls,
                format!("{what} while the control completed the handshake: {tail}"),
            )
        }
        ControlTls::Failed => {
            ev.push(Evidence::TlsControl(ControlTlsEvidence::Failed));
            Outcome::down(format!(
                "{what}, and the control's handshake failed too: the site's TLS server is down"
            ))
        }
        ControlTls::NotReached | ControlTls::Unavailable if decoy_ok && !path_like => {
            Outcome::inconclusive(format!(
                "{what}, while a handshake with another name to the same server succeeded: a \
                 server refusing one name with a TLS alert does that too, so this proves no block"
            ))
        }
        ControlTls::NotReached | ControlTls::Unavailable if decoy_ok => Outcome::blocked(
            Method::Tls,
            format!(
                "{what} while a handshake with another name to the same server succeeded: SNI \
                 filtering, shown locally without the control"
            ),
        ),
        ControlTls::NotReached => Outcome::inconclusive(format!(
            "{what}, and the control did not get as far as a handshake, so there is nothing to \
             compare with"
        )),
        ControlTls::Unavailable => Outcome::inconclusive(format!(
            "{what}, but the control was unavailable, so a block cannot be told from a failing \
             server"
        )),
    }
}

/// A handshake failure a middlebox produces (a reset, a close, silence), as opposed to the
/// server's own answer (a TLS alert such as `unrecognized_name`, garbage): only those, set
/// against another name that passes, prove a block without the control.
pub(super) fn path_like_tls_failure(f: &Failure) -> bool {
    matches!(
        f,
        Failure::ConnectionReset | Failure::Eof | Failure::GenericTimeout
    )
}

fn interruption_phrase(failure: Option<&Failure>, domain: &str) -> String {
    match failure {
        Some(Failure::ConnectionReset) => {
            format!("the connection was reset right after the ClientHello naming {domain}")
        }
        Some(Failure::GenericTimeout) => {
            format!("the TLS handshake timed out right after the ClientHello naming {domain}")
        }
        Some(Failure::Eof) => {
            format!("the connection was closed right after the ClientHello naming {domain}")
        }
        Some(Failure::SslFailedHandshake) => {
            format!("the TLS handshake was broken off right after the ClientHello naming {domain}")
        }
        Some(other) => format!("the TLS handshake with {domain} failed ({})", other.name()),
        None => format!("the TLS handshake with {domain} failed"),
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::super::testkit::*;
    use crate::model::{Measurement, Method, Status};

    pub(in crate::verdict) const CASES: &[Case] = cases! {
        tls_reset_with_control Plain => Blocked / Tls;
        tls_timeout_no_control_decoy_ok Plain => Blocked / Tls;
        tls_timeout_no_control_no_decoy Plain => Inconclusive;
        tls_alert_no_control_decoy_ok Plain => Inconclusive;
        tls_timeout_everywhere Plain => Down;
        mitm_state_ca_with_control Plain => Blocked / Mitm;
        mitm_state_ca_no_control Plain => Blocked / Mitm;
        mitm_state_ca_on_one_address Plain => Blocked / Mitm;
        mitm_unverified_vs_control_verified Plain => Blocked / Mitm;
        expired_cert_everywhere Plain => Down;
    };

    #[test]
    fn table() {
        check(CASES);
    }

    #[test]
    fn reasons_and_evidence() {
        let v = verdict_of(tls_reset_with_control, Ctx::Plain);
        assert!(
            v.reason.contains("reset right after the ClientHello"),
            "{}",
            v.reason
        );
        assert!(cites(&v, "tls.failure=connection_reset@198.18.0.10:443"));

        let v = verdict_of(tls_timeout_no_control_decoy_ok, Ctx::Plain);
        assert!(cites(&v, "tls.decoy=ok@198.18.0.10:443"), "{v:?}");
        assert!(v.reason.contains("without the control"), "{}", v.reason);

        let v = verdict_of(mitm_state_ca_no_control, Ctx::Plain);
        assert!(cites(&v, &format!("tls.interception_ca={STATE_CA}")));
        assert!(v.reason.contains(STATE_CA), "{}", v.reason);

        let v = verdict_of(mitm_unverified_vs_control_verified, Ctx::Plain);
        assert!(
            v.evidence.iter().any(|e| e.starts_with("tls.leaf=f0")),
            "{v:?}"
        );
        assert!(
            v.evidence
                .iter()
                .any(|e| e.starts_with("tls.control.leaf=a1")),
            "{v:?}"
        );
        let v = verdict_of(expired_cert_everywhere, Ctx::Plain);
        assert!(cites(&v, "tls.control=unverified"), "{v:?}");
    }
}
