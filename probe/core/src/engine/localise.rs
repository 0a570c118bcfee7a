//! Localisation and post-processing of a finished run: which network hop blocks each blocked
//! target, the verdicts decided once the run's baseline is known, and the last scrub.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::StreamExt;

use super::Engine;
use crate::checks::dns::ms_since;
use crate::checks::path;
use crate::model::{Measurement, PathUnlocated, MAX_ASN_ADDRS};
use crate::scrub::OwnAddresses;
use crate::verdict::{self, RunContext};

/// A blocked target found during the run: its place in the run and what to repeat.
pub(super) type Found = (usize, path::Plan);

/// One group's localisation: the target localised (its place in the run), the result, and
/// when it started (for the records' times).
pub(super) struct GroupResult {
    rep: usize,
    located: path::Located,
    started: chrono::DateTime<Utc>,
}

impl Engine {
    /// What to localise for a target just measured, decided with the verdict it will get
    /// (without the run's baseline, which only throttling reads, and throttling is never
    /// localised): so the localisation starts while the run goes on.
    pub(super) fn live_plan(&self, m: &Measurement) -> Option<path::Plan> {
        let mut probe = m.clone();
        probe.verdict = verdict::decide(m, &RunContext::default());
        path::plan(&probe)
    }

    /// Localise blocked targets as they are found (see [`crate::checks::path`]): targets that
    /// share a [`path::GroupKey`] (address, exchange, censor action) share one localisation,
    /// made for the first of them, and a second, for another of them, when the first named
    /// nothing for a reason another flow may not meet ([`worth_a_second`]); at most
    /// `path.max_targets` localisations, up to [`PATH_CONCURRENCY`] at once, all within
    /// `path.run_budget` from the first, each within its own bound. Ends when `found` is
    /// closed and every localisation is done.
    pub(super) async fn localise_groups(
        &self,
        mut found: tokio::sync::mpsc::UnboundedReceiver<Found>,
    ) -> HashMap<path::GroupKey, GroupResult> {
        use std::collections::HashSet;
        let pc = &self.cfg.path;
        let ctx = path::ProbeContext::new(&self.cfg, &self.tls, &self.own);
        let slots = tokio::sync::Semaphore::new(PATH_CONCURRENCY);
        let mut groups: HashMap<path::GroupKey, GroupResult> = HashMap::new();
        let mut pending: HashSet<path::GroupKey> = HashSet::new();
        // A second member of each group, kept for a second localisation; and the groups that
        // had one.
        let mut spare: HashMap<path::GroupKey, Found> = HashMap::new();
        let mut seconded: HashSet<path::GroupKey> = HashSet::new();
        let mut launched = 0usize;
        let mut running = futures::stream::FuturesUnordered::new();
        let mut run_deadline: Option<tokio::time::Instant> = None;
        let job = |(i, plan): Found, key: path::GroupKey, deadline: tokio::time::Instant| {
            let (ctx, slots) = (&ctx, &slots);
            async move {
                let started = Utc::now();
                let start = Instant::now();
                let work = async {
                    let _slot = slots.acquire().await;
                    tokio::time::timeout(pc.per_target(), path::localise(&plan, ctx, start)).await
                };
                let located = match tokio::time::timeout_at(deadline, work).await {
                    Ok(Ok(l)) => l,
                    _ => path::unlocated(&plan, PathUnlocated::Budget, 0.0, ms_since(start)).into(),
                };
                (
                    key,
                    GroupResult {
                        rep: i,
                        located,
                        started,
                    },
                )
            }
        };
        let mut open = true;
        loop {
            let second = tokio::select! {
                msg = found.recv(), if open => {
                    let Some((i, plan)) = msg else {
                        open = false;
                        continue;
                    };
                    let key = plan.group_key();
                    if pending.contains(&key) || groups.contains_key(&key) {
                        if !seconded.contains(&key) {
                            spare.entry(key.clone()).or_insert((i, plan));
                        }
                        // A group whose first localisation already named nothing.
                        groups.contains_key(&key).then_some(key)
                    } else {
                        if launched < pc.max_targets {
                            launched += 1;
                            pending.insert(key.clone());
                            let deadline = *run_deadline.get_or_insert_with(|| {
                                tokio::time::Instant::now() + pc.run_budget
                            });
                            running.push(job((i, plan), key, deadline));
                        }
                        None
                    }
                }
                Some((key, result)) = running.next(), if !running.is_empty() => {
                    pending.remove(&key);
                    match groups.get(&key) {
                        // A second localisation replaces the first only where it placed the censor.
                        Some(_) if !placed(&result) => {}
                        _ => {
                            groups.insert(key.clone(), result);
                        }
                    }
                    Some(key)
                }
                else => break,
            };
            // A second localisation for a group whose first named nothing, once.
            let Some(key) = second else { continue };
            let wanted = groups.get(&key).is_some_and(worth_a_second)
                && !seconded.contains(&key)
                && !pending.contains(&key)
                && launched < pc.max_targets;
            if let (true, Some(member), Some(deadline)) = (wanted, spare.remove(&key), run_deadline)
            {
                launched += 1;
                seconded.insert(key.clone());
                pending.insert(key.clone());
                running.push(job(member, key, deadline));
            }
        }
        groups
    }

    /// Put the localisations into the records of a finished run, whose verdicts are final:
    /// each blocked target gets its group's result (its own, or the one it shares, with
    /// `shared_with`), and blocked targets not localised during the run (their verdict changed
    /// at the end) are localised now. Adds the `path.censor_hop` evidence line; the verdict
    /// itself is never changed.
    pub(super) async fn attach_paths(
        &self,
        measurements: &mut [Measurement],
        mut groups: HashMap<path::GroupKey, GroupResult>,
    ) {
        let planned: Vec<(usize, path::Plan)> = measurements
            .iter()
            .enumerate()
            .filter(|(_, m)| m.app.is_none())
            .filter_map(|(i, m)| Some((i, path::plan(m)?)))
            .collect();
        let late: Vec<&(usize, path::Plan)> = planned
            .iter()
            .filter(|(_, p)| !groups.contains_key(&p.group_key()))
            .collect();
        if !late.is_empty() {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            for (i, p) in late {
                let _ = tx.send((*i, p.clone()));
            }
            drop(tx);
            groups.extend(self.localise_groups(rx).await);
        }
        let located: Vec<(usize, path::Located)> = groups
            .values()
            .map(|g| (g.rep, g.located.clone()))
            .collect();
        let known = self.router_networks(&located).await;
        for (i, plan) in planned {
            let Some(g) = groups.get(&plan.group_key()) else {
                continue;
            };
            let path::Located { mut obs, routers } = g.located.clone();
            path::fill_asns(
                &mut obs,
                &routers,
                &self.cfg.bogons,
                &self.own,
                &known,
                measurements[i].probe.asn,
            );
            if g.rep != i {
                obs.shared_with = Some(measurements[g.rep].id);
            }
            let m = &mut measurements[i];
            // Times relative to the measurement's start, like every other observation.
            obs.t_ms = (g.started - m.started_at).num_milliseconds().max(0) as f64;
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

/// Whether a localisation placed the censor (a hop, or a range).
fn placed(g: &GroupResult) -> bool {
    g.located.obs.censor_hop.is_some() || g.located.obs.censor_range.is_some()
}

/// Whether a group's localisation that named nothing is worth a second, for another member:
/// the exchange got through first (another flow may take the censor's path under ECMP), the
/// action was not seen (a transient), or the exchange could not be repeated. Not for silence
/// everywhere, a path longer than `max_ttl` or silent routers: the same path says the same.
fn worth_a_second(g: &GroupResult) -> bool {
    matches!(
        g.located.obs.unlocated,
        Some(
            PathUnlocated::AnsweredFirst
                | PathUnlocated::NoActionSeen
                | PathUnlocated::NotRepeatable
        )
    )
}

/// Localisations made at once: each sends one TTL's exchange at a time on its own flow.
pub(super) const PATH_CONCURRENCY: usize = 8;

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
