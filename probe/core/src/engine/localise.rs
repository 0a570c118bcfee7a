//! Localisation and post-processing of a finished run: which network hop blocks each blocked
//! target, the verdicts decided once the run's baseline is known, and the last scrub.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::StreamExt;

use super::Engine;
use crate::checks::dns::ms_since;
use crate::checks::path;
use crate::model::{Measurement, PathUnlocated, MAX_ASN_ADDRS};
use crate::scrub::OwnAddresses;
use crate::verdict::{self, RunContext};

impl Engine {
    /// Localise the blocked targets of a finished run to a network hop (see
    /// [`crate::checks::path`]): at most `path.max_targets` of them, two at a time, all within
    /// `path.run_budget`, each within its own bound. Adds the `path` observation and the
    /// `path.censor_hop` evidence line; the verdict itself is never changed. A localisation
    /// cut by the run's budget is recorded as such.
    pub async fn localise_blocks(&self, measurements: &mut [Measurement]) {
        let pc = &self.cfg.path;
        let plans: Vec<(usize, path::Plan)> = measurements
            .iter()
            .enumerate()
            .filter(|(_, m)| m.app.is_none())
            .filter_map(|(i, m)| Some((i, path::plan(m)?)))
            .take(pc.max_targets)
            .collect();
        if plans.is_empty() {
            return;
        }
        let ctx = path::ProbeContext::new(&self.cfg, &self.tls, &self.own);
        let t0 = Instant::now();
        let run_deadline = tokio::time::Instant::from_std(t0) + pc.run_budget;
        let results = Mutex::new(Vec::new());
        let all = futures::stream::iter(plans.iter()).for_each_concurrent(
            PATH_CONCURRENCY,
            |(i, plan)| {
                let ctx = &ctx;
                let results = &results;
                async move {
                    let start = Instant::now();
                    let located = match tokio::time::timeout(
                        pc.per_target(),
                        path::localise(plan, ctx, start),
                    )
                    .await
                    {
                        Ok(o) => o,
                        Err(_) => {
                            path::unlocated(plan, PathUnlocated::Budget, 0.0, ms_since(start))
                                .into()
                        }
                    };
                    results
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((*i, located));
                }
            },
        );
        let _ = tokio::time::timeout_at(run_deadline, all).await;
        let mut done = results.into_inner().unwrap_or_else(|e| e.into_inner());
        for (i, plan) in &plans {
            if !done.iter().any(|(j, _)| j == i) {
                done.push((
                    *i,
                    path::unlocated(plan, PathUnlocated::Budget, 0.0, 0.0).into(),
                ));
            }
        }
        let known = self.router_networks(&done).await;
        for (i, path::Located { mut obs, routers }) in done {
            let m = &mut measurements[i];
            path::fill_asns(
                &mut obs,
                &routers,
                &self.cfg.bogons,
                &self.own,
                &known,
                m.probe.asn,
            );
            // Times relative to the measurement's start, like every other observation.
            let since_start = (Utc::now() - m.started_at).num_milliseconds().max(0) as f64;
            obs.t_ms = (since_start - obs.duration_ms).max(0.0);
            m.path = Some(obs);
            verdict::add_path_evidence(m);
        }
    }

    /// The networks of the public routers that the localisations recorded, asked of the
    /// collector in one request (its ASN table; see `docs/measurement-format.md`). Empty
    /// without a control service, or when it does not answer within [`ASN_LOOKUP_TIMEOUT`]:
    /// the hops then carry no ASN, and nothing else changes.
    pub(super) async fn router_networks(
        &self,
        done: &[(usize, path::Located)],
    ) -> HashMap<IpAddr, u32> {
        let Some(control) = &self.control else {
            return HashMap::new();
        };
        let mut addrs: Vec<IpAddr> = Vec::new();
        for (_, l) in done {
            let recorded = l.routers.iter().take(l.obs.hops.len()).flatten();
            for a in recorded {
                if path::public_router(*a, &self.cfg.bogons, &self.own) && !addrs.contains(a) {
                    addrs.push(*a);
                }
            }
        }
        addrs.truncate(MAX_ASN_ADDRS);
        if addrs.is_empty() {
            return HashMap::new();
        }
        match tokio::time::timeout(ASN_LOOKUP_TIMEOUT, control.asns(&addrs)).await {
            Ok(Ok(asns)) => addrs
                .into_iter()
                .zip(asns)
                .filter_map(|(a, n)| Some((a, n?)))
                .collect(),
            Ok(Err(e)) => {
                tracing::info!(error = %e, "the collector named no router networks");
                HashMap::new()
            }
            Err(_) => {
                tracing::info!("the collector did not name the router networks in time");
                HashMap::new()
            }
        }
    }
}

/// Blocked targets localised at once: each sends `2 × max_ttl` connections.
pub(super) const PATH_CONCURRENCY: usize = 2;

/// How long the run waits for the collector to name its routers' networks.
pub(super) const ASN_LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);

/// Decide every measurement's verdict, once each, with the run's own baseline (this probe's
/// speed for the other sites that plainly loaded), so throttling can be judged.
pub fn finalize_verdicts(measurements: &mut [Measurement], offline: bool) {
    let samples = verdict::Samples::collect(measurements);
    for m in measurements.iter_mut() {
        if m.app.is_some() {
            super::apps::decide_app(m, offline);
            continue;
        }
        let ctx = RunContext {
            offline,
            baseline: samples.baseline(Some(m.id)),
        };
        m.verdict = verdict::decide(m, &ctx);
    }
}

/// Remove the probe's own addresses, in every encoding, from every string of a measurement
/// (see [`crate::scrub::record`]). A record that cannot be scrubbed keeps only the verdict's
/// status: its text could hold the address.
pub fn scrub_measurement(m: &mut Measurement, own: &OwnAddresses) {
    if let Err(e) = crate::scrub::record::scrub_measurement(m, own) {
        tracing::error!(error = %e, "a record could not be scrubbed; its observations are dropped");
        crate::scrub::record::strip(m);
    }
}
