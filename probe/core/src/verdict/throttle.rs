//! Stage 7, throttling: an accessible site that is far slower than this probe's own line.

use crate::model::{HttpObservation, Measurement, Method};

use super::baseline::THROUGHPUT_MIN_BYTES;
use super::evidence::ThrottleFigure;
use super::{
    final_response, fmt_ms, fmt_rate, median, norm_host, Evidence, Facts, Outcome, RunContext,
};

/// A handshake faster than this (milliseconds) is never called throttled, whatever the
/// baseline: on a fast link, five times a 20 ms baseline is just a far-away server.
pub const THROTTLE_MIN_HANDSHAKE_MS: f64 = 1000.0;

/// How many times slower than the baseline a target must be to be called throttled: enough to
/// absorb distance and server load, small enough to catch the 2022-2023 Kazakh throttling
/// (handshakes over 4 s against tens of milliseconds).
pub const THROTTLE_FACTOR: f64 = 5.0;

/// A transfer faster than this (bytes per second, about 2 Mbit/s) is never called throttled:
/// the throughput counterpart of [`THROTTLE_MIN_HANDSHAKE_MS`], so that on a very fast link a
/// merely slower server is not mistaken for throttling.
pub const THROTTLE_MAX_THROUGHPUT_BPS: f64 = 256.0 * 1024.0;

pub(super) fn stage(f: &Facts, ctx: &RunContext, ev: &mut Vec<Evidence>) -> Option<Outcome> {
    let b = ctx.baseline?;
    let domain = &f.domain;
    if let Some(ms) = handshake_median(f.m) {
        let limit = THROTTLE_MIN_HANDSHAKE_MS.max(THROTTLE_FACTOR * b.tls_handshake_ms);
        if ms > limit {
            ev.push(Evidence::Throttle {
                figure: ThrottleFigure::HandshakeMs,
                value: ms,
                baseline: b.tls_handshake_ms,
            });
            return Some(Outcome::blocked(
                Method::Throttle,
                format!(
                    "the TLS handshake with {domain} took {} against {} for other sites in this \
                     run: the connection is throttled",
                    fmt_ms(ms),
                    fmt_ms(b.tls_handshake_ms)
                ),
            ));
        }
    }
    let base = b.throughput_bps?;
    let bps = final_response(&f.m.http).and_then(large_body_throughput)?;
    if bps < base / THROTTLE_FACTOR && bps < THROTTLE_MAX_THROUGHPUT_BPS {
        ev.push(Evidence::Throttle {
            figure: ThrottleFigure::ThroughputBps,
            value: bps,
            baseline: base,
        });
        return Some(Outcome::blocked(
            Method::Throttle,
            format!(
                "the page from {domain} downloaded at {} against {} for other sites in this run: \
                 the connection is throttled",
                fmt_rate(bps),
                fmt_rate(base)
            ),
        ));
    }
    None
}

/// Median duration of the target's completed non-decoy handshakes: the figure throttling by
/// SNI inflates.
pub(super) fn handshake_median(m: &Measurement) -> Option<f64> {
    let domain = norm_host(&m.domain);
    median(
        m.tls
            .iter()
            .filter(|t| !t.decoy && t.failure.is_none() && norm_host(&t.server_name) == domain)
            .map(|t| t.duration_ms)
            .collect(),
    )
}

/// Throughput of a response large enough to measure bandwidth, bytes per second.
pub(super) fn large_body_throughput(h: &HttpObservation) -> Option<f64> {
    if h.body_length < THROUGHPUT_MIN_BYTES {
        return None;
    }
    let bps = h.throughput_bps.or_else(|| {
        h.body_ms
            .filter(|ms| *ms > 0.0)
            .map(|ms| h.body_length as f64 * 1000.0 / ms)
    })?;
    (bps.is_finite() && bps > 0.0).then_some(bps)
}

#[cfg(test)]
pub(super) mod tests {
    use super::super::testkit::*;
    use crate::model::{Measurement, Method, Status};

    pub(in crate::verdict) const CASES: &[Case] = cases! {
        throttled_handshake Baseline => Blocked / Throttle;
        throttled_handshake Plain => Accessible;
        large_fast_page Baseline => Accessible;
        throttled_throughput Baseline => Blocked / Throttle;
        throttled_throughput Plain => Accessible;
    };

    #[test]
    fn table() {
        check(CASES);
    }

    #[test]
    fn reasons_and_evidence() {
        let v = verdict_of(throttled_handshake, Ctx::Baseline);
        assert!(
            v.reason.contains("4.3 s") && v.reason.contains("40 ms"),
            "{}",
            v.reason
        );
        assert!(cites(&v, "throttle.handshake_ms=4300 baseline=40"), "{v:?}");
        let v = verdict_of(throttled_throughput, Ctx::Baseline);
        assert!(
            cites(&v, "throttle.throughput_bps=65536 baseline=3000000"),
            "{v:?}"
        );
    }
}
