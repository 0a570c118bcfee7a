//! The baseline: this probe's own speed for sites that plainly loaded in the same run, so that
//! throttling is judged against the probe's own link (a slow village line is not censorship).
//!
//! It is taken from the observations alone, before any verdict, so [`super::decide`] runs once
//! per target with the baseline already known. The two figures it takes from each site (the
//! median handshake and a large page's throughput) are defined here, and the throttling stage
//! reads the target's own through the same functions.

use uuid::Uuid;

use crate::model::{HttpObservation, Measurement};

use super::facts::{final_response, median, norm_host, same_site, url_host};

/// Smallest body, in bytes, whose throughput means anything: shorter transfers measure latency
/// and TCP slow start, not bandwidth.
pub const THROUGHPUT_MIN_BYTES: u64 = 64 * 1024;

/// Fewest sites a baseline needs: the median of one or two sites is an anecdote, and a single
/// slow site would make everything else look fast.
pub const BASELINE_MIN_SAMPLES: usize = 3;

/// This probe's own speed for sites that plainly loaded in the same run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Baseline {
    /// Median over the sampled sites of each site's median TLS handshake time, milliseconds.
    pub tls_handshake_ms: f64,
    /// Median body throughput in bytes per second over sampled sites whose final response had
    /// at least [`THROUGHPUT_MIN_BYTES`]; `None` with fewer than [`BASELINE_MIN_SAMPLES`].
    pub throughput_bps: Option<f64>,
    /// How many sites the handshake median came from.
    pub samples: usize,
}

/// Whether a measurement plainly loaded: a verified handshake with the target's own name, and a
/// final page with a success status fetched over verified TLS from the target's own site, no
/// blockpage anywhere. Such a transfer measures the probe's link, whatever the verdict says
/// about the content; a throttled site among them moves the median little.
pub fn plainly_loaded(m: &Measurement) -> bool {
    let domain = norm_host(&m.domain);
    let verified = m
        .tls
        .iter()
        .any(|t| !t.decoy && t.verified() && norm_host(&t.server_name) == domain);
    let Some(last) = final_response(&m.http) else {
        return false;
    };
    let page_ok = |h: &HttpObservation| {
        h.status.is_some_and(|s| (200..300).contains(&s))
            && h.url.starts_with("https://")
            && url_host(&h.url).is_some_and(|host| same_site(&host, &domain))
    };
    verified
        && page_ok(last)
        && m.http
            .iter()
            .filter(|h| h.role.is_page())
            .all(|h| h.blockpage.is_none())
}

/// The speed samples of one run: each plainly loaded site's median handshake and, for a large
/// enough final page, its throughput. Collected once, then asked once per target.
#[derive(Clone, Debug, Default)]
pub struct Samples {
    /// (measurement id, median handshake ms, large-body throughput).
    sites: Vec<(Uuid, Option<f64>, Option<f64>)>,
}

impl Samples {
    /// The samples of the measurements that plainly loaded ([`plainly_loaded`]).
    pub fn collect(measurements: &[Measurement]) -> Self {
        let sites = measurements
            .iter()
            .filter(|m| plainly_loaded(m))
            .map(|m| {
                (
                    m.id,
                    handshake_median(m),
                    final_response(&m.http).and_then(large_body_throughput),
                )
            })
            .collect();
        Samples { sites }
    }

    /// The baseline without `exclude_id`, so a target is never compared with itself. Each
    /// site counts once (its own median handshake), so a site with many addresses does not
    /// dominate. `None` with fewer than [`BASELINE_MIN_SAMPLES`] sites.
    pub fn baseline(&self, exclude_id: Option<Uuid>) -> Option<Baseline> {
        let others = self
            .sites
            .iter()
            .filter(|(id, _, _)| Some(*id) != exclude_id);
        let handshakes: Vec<f64> = others.clone().filter_map(|(_, h, _)| *h).collect();
        let throughputs: Vec<f64> = others.filter_map(|(_, _, t)| *t).collect();
        let samples = handshakes.len();
        if samples < BASELINE_MIN_SAMPLES {
            return None;
        }
        let throughput_bps = if throughputs.len() >= BASELINE_MIN_SAMPLES {
            median(throughputs)
        } else {
            None
        };
        Some(Baseline {
            tls_handshake_ms: median(handshakes)?,
            throughput_bps,
            samples,
        })
    }
}

/// This probe's speed for sites that plainly loaded, without `exclude_id`: see [`Samples`].
pub fn baseline(measurements: &[Measurement], exclude_id: Option<Uuid>) -> Option<Baseline> {
    Samples::collect(measurements).baseline(exclude_id)
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
mod tests {
    use super::super::testkit::*;
    use super::*;
    use crate::failure::Failure;

    fn loaded(id: u128, handshakes: &[f64], body: u64, bps: f64) -> Measurement {
        let mut m = accessible_https();
        m.id = Uuid::from_u128(id);
        m.tls = handshakes
            .iter()
            .map(|ms| tls_ok(sa(IP, 443), *ms))
            .collect();
        let mut p = page(0, HTTPS, sa(IP, 443), 200, body, "");
        p.throughput_bps = Some(bps);
        m.http = vec![p];
        m
    }

    #[test]
    fn only_plainly_loaded_sites_count() {
        assert!(plainly_loaded(&accessible_https()));
        assert!(!plainly_loaded(&accessible_http()), "cleartext");
        assert!(!plainly_loaded(&tls_reset_with_control()));
        assert!(!plainly_loaded(&mitm_unverified_vs_control_verified()));
        assert!(!plainly_loaded(&https_403_verified()), "not a success");
        assert!(!plainly_loaded(&redirect_to_blocked_site()));
        // Its hops' handshakes are not recorded: nothing to sample.
        assert!(!plainly_loaded(&redirect_chain_accessible()));
    }

    #[test]
    fn baseline_needs_three_samples() {
        let mut blocked = loaded(3, &[40.0], 100_000, 1e6);
        blocked.tls[0].failure = Some(Failure::ConnectionReset);
        let ms = vec![
            loaded(1, &[40.0], 100_000, 1e6),
            loaded(2, &[50.0], 100_000, 1e6),
            blocked,
            loaded(4, &[60.0], 100_000, 1e6),
        ];
        assert!(baseline(&ms, None).is_some());
        assert_eq!(baseline(&ms, Some(Uuid::from_u128(4))), None);
        assert_eq!(baseline(&ms[..2], None), None);
        assert_eq!(baseline(&[], None), None);
    }

    #[test]
    fn baseline_medians() {
        let ms = vec![
            // One site with many addresses counts once, by its own median (10).
            loaded(1, &[10.0, 10.0, 900.0], 100_000, 4e6),
            loaded(2, &[30.0], 100_000, 1e6),
            loaded(3, &[20.0], 1_000, 5.0),
            loaded(4, &[1000.0], 100_000, 2e6),
        ];
        let b = baseline(&ms, None).unwrap();
        assert_eq!(b.samples, 4);
        assert_eq!(b.tls_handshake_ms, 25.0);
        // The small response (1 kB) does not count for throughput.
        assert_eq!(b.throughput_bps, Some(2e6));

        let b = baseline(&ms, Some(Uuid::from_u128(4))).unwrap();
        assert_eq!(b.tls_handshake_ms, 20.0);
        // Two large responses left: too few for a throughput baseline.
        assert_eq!(b.throughput_bps, None);
    }
}
