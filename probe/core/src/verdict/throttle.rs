//! Stage 7, throttling: an accessible site that is far slower than this probe's own line.

use crate::model::{Measurement, Method};

use super::baseline::{handshake_median, large_body_throughput, Baseline, THROUGHPUT_MIN_BYTES};
use super::evidence::{Evidence, ReferenceSource, ThrottleFigure};
use super::facts::{final_response, fmt_ms, fmt_rate, median, Facts, Outcome};

/// A handshake faster than this (milliseconds) is never called throttled, whatever the
/// reference: on a fast link, five times a 20 ms reference is just a far-away server, and a
/// busy machine or a loaded Wi-Fi stretches single handshakes past a second. The 2022-2023
/// Kazakh throttling gave handshakes over 4 s: twice this floor.
pub const THROTTLE_MIN_HANDSHAKE_MS: f64 = 2000.0;

/// How many times slower than the baseline a target must be to be called throttled: enough to
/// absorb distance and server load, small enough to catch the 2022-2023 Kazakh throttling
/// (handshakes over 4 s against tens of milliseconds).
pub const THROTTLE_FACTOR: f64 = 5.0;

/// A transfer faster than this (bytes per second, about 2 Mbit/s) is never called throttled:
/// the throughput counterpart of [`THROTTLE_MIN_HANDSHAKE_MS`], so that on a very fast link a
/// merely slower server is not mistaken for throttling.
pub const THROTTLE_MAX_THROUGHPUT_BPS: f64 = 256.0 * 1024.0;

/// This probe's own line, measured the way the target was: the run's baseline when the run
/// has one (other sites fetched at the same time, under the same load and the same share of the
/// line, so a busy laptop or a loaded line slows both alike), else the anchors' reference
/// transfers, made alongside the target (a single URL or a short list): the fastest of their
/// handshakes and of their transfers of at least [`THROUGHPUT_MIN_BYTES`] (a line that once
/// did a handshake or moved a page that fast can do it again; one anchor caught in a busy
/// moment must not hide throttling, and the floors keep a fast anchor from making an ordinary
/// far-away site look throttled). Each figure comes from the run when it
/// has it, else from the anchors.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LineReference {
    /// Handshake time, milliseconds.
    pub handshake_ms: Option<f64>,
    /// Throughput, bytes per second.
    pub throughput_bps: Option<f64>,
    /// Where the figures came from.
    pub source: ReferenceSource,
}

/// The line's reference for this measurement: the run's baseline (`run`), else its anchors'
/// transfers. `None` when there is neither.
pub fn line_reference(m: &Measurement, run: Option<Baseline>) -> Option<LineReference> {
    let refs = &m.connectivity.references;
    let good = |v: f64| v.is_finite() && v > 0.0;
    let anchor_hs = refs
        .iter()
        .filter_map(|r| r.handshake_ms)
        .filter(|v| good(*v))
        .reduce(f64::min);
    let anchor_bps = refs
        .iter()
        .filter(|r| r.body_bytes >= THROUGHPUT_MIN_BYTES)
        .filter_map(|r| r.throughput_bps)
        .filter(|v| good(*v))
        .reduce(f64::max);
    let run_hs = run.map(|b| b.tls_handshake_ms);
    let run_bps = run.and_then(|b| b.throughput_bps);
    let handshake_ms = run_hs.or(anchor_hs);
    let throughput_bps = run_bps.or(anchor_bps);
    let from_run = run_hs.is_some() || run_bps.is_some();
    let from_anchors =
        (run_hs.is_none() && anchor_hs.is_some()) || (run_bps.is_none() && anchor_bps.is_some());
    let source = match (from_anchors, from_run) {
        (false, false) => return None,
        (true, false) => ReferenceSource::Anchors,
        (false, true) => ReferenceSource::Run,
        (true, true) => ReferenceSource::Both,
    };
    Some(LineReference {
        handshake_ms,
        throughput_bps,
        source,
    })
}

fn reference_phrase(source: ReferenceSource) -> &'static str {
    match source {
        ReferenceSource::Anchors => "this line's reference hosts",
        ReferenceSource::Run => "other sites in this run",
        ReferenceSource::Both => "this line's reference hosts and other sites",
    }
}

/// Throttled when the target is far slower than this probe's own line (its reference), on the
/// handshake or on the transfer, and the control did not find the site just as slow. A line
/// that is slow for everything is not throttled; a site slow for the control too is slow.
pub(super) fn stage(f: &Facts, run: Option<Baseline>, ev: &mut Vec<Evidence>) -> Option<Outcome> {
    let line = line_reference(f.m, run)?;
    let domain = &f.domain;
    let against = reference_phrase(line.source);
    if let (Some(ms), Some(reference)) = (handshake_median(f.m), line.handshake_ms) {
        let limit = THROTTLE_MIN_HANDSHAKE_MS.max(THROTTLE_FACTOR * reference);
        let control = median(
            f.ctl_tls
                .iter()
                .filter(|t| t.failure.is_none())
                .map(|t| t.duration_ms)
                .collect(),
        );
        // The site's server is slow to handshake for the control too: not the network.
        let site_slow = control.is_some_and(|c| c * THROTTLE_FACTOR >= ms);
        if ms > limit && !site_slow {
            ev.push(Evidence::Throttle {
                figure: ThrottleFigure::HandshakeMs,
                value: ms,
                baseline: reference,
            });
            ev.push(Evidence::ThrottleReference(line.source));
            let also = match control {
                Some(c) => {
                    ev.push(Evidence::ThrottleControl(ThrottleFigure::HandshakeMs, c));
                    format!(" and {} for the control", fmt_ms(c))
                }
                None => String::new(),
            };
            return Some(Outcome::blocked(
                Method::Throttle,
                format!(
                    "the TLS handshake with {domain} took {} against {} for {against}{also}: the \
                     connection is throttled",
                    fmt_ms(ms),
                    fmt_ms(reference)
                ),
            ));
        }
    }
    let reference = line.throughput_bps?;
    let bps = final_response(&f.m.http).and_then(large_body_throughput)?;
    let control = f
        .control
        .and_then(|c| final_response(&c.http))
        .and_then(large_body_throughput);
    // The site serves the control slowly too (under the floor, or not even twice as fast as
    // here): a slow site, not a throttled one.
    let site_slow = control.is_some_and(|c| c < THROTTLE_MAX_THROUGHPUT_BPS || c < 2.0 * bps);
    if bps < reference / THROTTLE_FACTOR && bps < THROTTLE_MAX_THROUGHPUT_BPS && !site_slow {
        ev.push(Evidence::Throttle {
            figure: ThrottleFigure::ThroughputBps,
            value: bps,
            baseline: reference,
        });
        ev.push(Evidence::ThrottleReference(line.source));
        let also = match control {
            Some(c) => {
                ev.push(Evidence::ThrottleControl(ThrottleFigure::ThroughputBps, c));
                format!(" and {} for the control", fmt_rate(c))
            }
            None => String::new(),
        };
        return Some(Outcome::blocked(
            Method::Throttle,
            format!(
                "the page from {domain} downloaded at {} against {} for {against}{also}: the \
                 connection is throttled",
                fmt_rate(bps),
                fmt_rate(reference)
            ),
        ));
    }
    None
}

#[cfg(test)]
pub(super) mod tests {
    use super::super::testkit::*;
    use super::{line_reference, ReferenceSource};
    use crate::model::{Measurement, Method, ReferenceTransfer, Status};

    /// A domestic and a foreign anchor, as the default configuration has: 30 and 120 ms
    /// handshakes, 400 KiB pages at 3 and 1.5 MB/s.
    fn fast_anchors(m: &mut Measurement) {
        m.connectivity.references = vec![
            reference("egov.kz:443", 30.0, 400 * 1024, 3e6),
            reference("www.wikipedia.org:443", 120.0, 400 * 1024, 1.5e6),
        ];
    }

    fn reference(anchor: &str, hs: f64, bytes: u64, bps: f64) -> ReferenceTransfer {
        ReferenceTransfer {
            anchor: anchor.into(),
            handshake_ms: Some(hs),
            body_bytes: bytes,
            throughput_bps: Some(bps),
            failure: None,
        }
    }

    /// A single-URL run: SNI throttled to a 4.3 s handshake, the anchors fast.
    fn handshake_single_url() -> Measurement {
        let mut m = throttled_handshake();
        fast_anchors(&mut m);
        m
    }

    /// The same, with the control blocked.
    fn handshake_single_url_no_control() -> Measurement {
        let mut m = handshake_single_url();
        no_control(&mut m);
        m
    }

    /// The site's server takes 4 s to handshake for the control too.
    fn handshake_slow_for_control_too() -> Measurement {
        let mut m = handshake_single_url();
        m.control.as_mut().unwrap().tls = vec![tls_ok(sa(IP, 443), 3_900.0)];
        m
    }

    /// A single-URL run: 512 KiB at 66 kB/s, the anchors at MB/s, the control fast.
    fn throughput_single_url() -> Measurement {
        let mut m = throttled_throughput();
        fast_anchors(&mut m);
        m
    }

    fn throughput_single_url_no_control() -> Measurement {
        let mut m = throughput_single_url();
        no_control(&mut m);
        m
    }

    /// A slow DSL line: everything, the anchors too, at about 1 Mbit/s; the control is fast.
    fn slow_line_everything_slow() -> Measurement {
        let mut m = throttled_throughput();
        m.http[0].throughput_bps = Some(117_000.0);
        m.connectivity.references = vec![
            reference("egov.kz:443", 90.0, 400 * 1024, 120_000.0),
            reference("www.wikipedia.org:443", 240.0, 400 * 1024, 110_000.0),
        ];
        m
    }

    /// A slow satellite line on a busy evening: every handshake takes 2.6 s, the anchors' too.
    fn slow_line_long_handshakes() -> Measurement {
        let mut m = throttled_handshake();
        m.tls[0].duration_ms = 2_600.0;
        m.connectivity.references = vec![
            reference("egov.kz:443", 2_300.0, 400 * 1024, 2e5),
            reference("www.wikipedia.org:443", 2_700.0, 400 * 1024, 2e5),
        ];
        m
    }

    /// A busy machine: one handshake took 1.1 s against 8 ms for the anchors (seen in the lab
    /// under load); under the 2 s floor, so not throttling.
    fn loaded_machine_handshake() -> Measurement {
        let mut m = handshake_single_url();
        m.tls[0].duration_ms = 1_083.0;
        m.connectivity.references[0].handshake_ms = Some(8.0);
        m
    }

    /// The site serves everyone slowly: the control's transfer is as slow as ours.
    fn site_slow_for_control_too() -> Measurement {
        let mut m = throughput_single_url();
        let c = &mut m.control.as_mut().unwrap().http[0];
        c.body_length = 512 * 1024;
        c.throughput_bps = Some(90_000.0);
        m
    }

    /// The anchors' pages are small: their speed says nothing about bandwidth.
    fn anchors_with_small_pages() -> Measurement {
        let mut m = throttled_throughput();
        m.connectivity.references = vec![reference("egov.kz:443", 30.0, 20 * 1024, 3e6)];
        m
    }

    fn large_fast_page_single_url() -> Measurement {
        let mut m = large_fast_page();
        fast_anchors(&mut m);
        m
    }

    pub(in crate::verdict) const CASES: &[Case] = cases! {
        throttled_handshake Baseline => Blocked / Throttle;
        throttled_handshake Plain => Accessible;
        large_fast_page Baseline => Accessible;
        throttled_throughput Baseline => Blocked / Throttle;
        throttled_throughput Plain => Accessible;
        handshake_single_url Plain => Blocked / Throttle;
        handshake_single_url_no_control Plain => Blocked / Throttle;
        handshake_slow_for_control_too Plain => Accessible;
        throughput_single_url Plain => Blocked / Throttle;
        throughput_single_url_no_control Plain => Blocked / Throttle;
        throughput_single_url Baseline => Blocked / Throttle;
        slow_line_everything_slow Plain => Accessible;
        slow_line_long_handshakes Plain => Accessible;
        loaded_machine_handshake Plain => Accessible;
        site_slow_for_control_too Plain => Accessible;
        anchors_with_small_pages Plain => Accessible;
        large_fast_page_single_url Plain => Accessible;
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
        assert!(cites(&v, "throttle.reference=run"), "{v:?}");
        let v = verdict_of(throttled_throughput, Ctx::Baseline);
        assert!(
            cites(&v, "throttle.throughput_bps=65536 baseline=3000000"),
            "{v:?}"
        );

        // A single URL: the anchors are the reference, the faster of their handshakes.
        let v = verdict_of(handshake_single_url, Ctx::Plain);
        assert!(cites(&v, "throttle.handshake_ms=4300 baseline=30"), "{v:?}");
        assert!(cites(&v, "throttle.reference=anchors"), "{v:?}");
        assert!(
            v.reason.contains("this line's reference hosts"),
            "{}",
            v.reason
        );
        // ... and the faster transfer of the two; the control's figure is cited.
        let v = verdict_of(throughput_single_url, Ctx::Plain);
        assert!(
            cites(&v, "throttle.throughput_bps=65536 baseline=3000000"),
            "{v:?}"
        );
        assert!(
            v.evidence
                .iter()
                .any(|e| e.starts_with("throttle.control_throughput_bps=")),
            "{v:?}"
        );
        assert!(v.reason.contains("for the control"), "{}", v.reason);
        let v = verdict_of(throughput_single_url_no_control, Ctx::Plain);
        assert!(!v.reason.contains("for the control"), "{}", v.reason);
    }

    #[test]
    fn the_reference_is_the_lines_best() {
        let mut m = throughput_single_url();
        assert_eq!(line_reference(&m, None).unwrap().handshake_ms, Some(30.0));
        // With a run baseline, the run's figures: measured under the same load as the target.
        let r = line_reference(&m, ctx(Ctx::Baseline).baseline).unwrap();
        assert_eq!(r.source, ReferenceSource::Run);
        assert_eq!(r.handshake_ms, Some(40.0));
        assert_eq!(r.throughput_bps, Some(3e6));
        // A run baseline without a throughput figure: the anchors' for that one.
        let mut c = ctx(Ctx::Baseline);
        c.baseline.as_mut().unwrap().throughput_bps = None;
        let r = line_reference(&m, c.baseline).unwrap();
        assert_eq!(r.source, ReferenceSource::Both);
        assert_eq!(r.throughput_bps, Some(3e6));
        m.connectivity.references.clear();
        assert_eq!(line_reference(&m, None), None);
        // A failed reference transfer has no figures: no reference from it.
        m.connectivity.references = vec![ReferenceTransfer {
            anchor: "egov.kz:443".into(),
            failure: Some(crate::failure::Failure::GenericTimeout),
            ..ReferenceTransfer::default()
        }];
        assert_eq!(line_reference(&m, None), None);
    }
}
