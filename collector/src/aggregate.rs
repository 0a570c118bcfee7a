//! Pure aggregation: from the verdicts of many probes to events and current status.
//!
//! No I/O here. The caller loads the measurements of one site on one network (or the presence
//! of probes on one network), the current state of the matching event, and the times to
//! evaluate at; these functions say whether an event opens or closes. The rule is documented in
//! `docs/collector-api.md` ("Events") and tabled in the tests below.
//!
//! Time is always the measurements' own `started_at`: probes back-fill after a shutdown with
//! their original times, so the window slides over measurement time, not arrival time.

use std::collections::BTreeMap;

use chrono::{DateTime, TimeDelta, Utc};
use witness_core::model::{Method, Status};

pub use crate::model::{CensorPlace, EventKind, Evidence, Obs, Presence, Transition};

/// Most evaluation times per key and batch, so a huge back-fill cannot stall ingestion.
pub const MAX_ANCHORS: usize = 256;

/// Most measurement ids kept as samples in an event's evidence.
pub const MAX_SAMPLE_IDS: usize = 20;

/// Thresholds of the event rule (from `[aggregation]`).
#[derive(Clone, Debug, PartialEq)]
pub struct Params {
    /// Sliding window.
    pub window: TimeDelta,
    /// Distinct probes that must agree.
    pub min_probes: usize,
    /// Agreeing consecutive measurements when the network has one probe.
    pub min_measurements: usize,
    /// Share of probes that must see the block.
    pub min_share: f64,
    /// Hysteresis: an open event is not closed before this long (measurement time) after the
    /// decision that opened it, so alternating verdicts cannot toggle it at every upload.
    pub min_event: TimeDelta,
    /// Hysteresis: a closed key is not opened again before this long after the close.
    pub min_gap: TimeDelta,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            window: TimeDelta::hours(6),
            min_probes: 2,
            min_measurements: 3,
            min_share: 0.5,
            min_event: TimeDelta::minutes(30),
            min_gap: TimeDelta::minutes(30),
        }
    }
}

/// What is known of the event for one key before evaluating.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct KeyState {
    /// `started_at` of the open event, if one is open.
    pub open_since: Option<DateTime<Utc>>,
    /// Time of the last decision on this key: older evaluation times are skipped, so back-filled
    /// data cannot rewrite history that already produced events.
    pub floor: Option<DateTime<Utc>>,
}

/// The outcome of one evaluation.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// Open an event.
    Open {
        /// When the condition started, from the measurements' own times.
        started_at: DateTime<Utc>,
        /// The evaluation time at which it was decided.
        decided_at: DateTime<Utc>,
        /// Why.
        evidence: Evidence,
    },
    /// Close the open event.
    Close {
        /// When the condition ended, from the measurements' own times.
        ended_at: DateTime<Utc>,
        /// The evaluation time at which it was decided.
        decided_at: DateTime<Utc>,
        /// Why.
        evidence: Evidence,
    },
}

fn conclusive(o: &Obs) -> bool {
    o.status == Status::Accessible || (o.status == Status::Blocked && o.method.is_some())
}

/// The trailing run of `v` (sorted by time) whose elements satisfy `pred`.
fn streak<'a, T>(v: &'a [&'a T], pred: impl Fn(&T) -> bool) -> &'a [&'a T] {
    let n = v.iter().rev().take_while(|o| pred(o)).count();
    &v[v.len() - n..]
}

/// Per probe, its conclusive measurements in `(anchor - window, anchor]`, oldest first.
fn window_by_probe(
    series: &[Obs],
    anchor: DateTime<Utc>,
    window: TimeDelta,
) -> BTreeMap<&str, Vec<&Obs>> {
    let from = anchor - window;
    let mut per_probe: BTreeMap<&str, Vec<&Obs>> = BTreeMap::new();
    for o in series
        .iter()
        .filter(|o| o.at > from && o.at <= anchor && conclusive(o))
    {
        per_probe.entry(o.probe.as_str()).or_default().push(o);
    }
    for v in per_probe.values_mut() {
        v.sort_by(|a, b| (a.at, &a.id).cmp(&(b.at, &b.id)));
    }
    per_probe
}

fn sample_ids<'a>(ids: impl Iterator<Item = &'a str>) -> Vec<String> {
    ids.take(MAX_SAMPLE_IDS).map(str::to_string).collect()
}

/// Distinct probes that measured this site (any verdict but `offline`, which says nothing
/// about a site) in `(anchor - window, anchor]`: the single-probe rule applies only when it
/// is at most one. Counted from the site's own series, not from the network: a record for
/// another site (one throw-away upload per network) must not switch the rule off for a lone
/// volunteer.
pub fn site_probes(series: &[Obs], anchor: DateTime<Utc>, window: TimeDelta) -> usize {
    let from = anchor - window;
    let mut probes: Vec<&str> = series
        .iter()
        .filter(|o| o.at > from && o.at <= anchor && o.status != Status::Offline)
        .map(|o| o.probe.as_str())
        .collect();
    probes.sort_unstable();
    probes.dedup();
    probes.len()
}

/// Evaluate the block rule for one site, network and method at one time.
///
/// `series` holds the measurements of the probes that count in the quorum (see
/// `docs/collector-api.md`, "Who counts"); the single-probe rule applies when at most one of
/// them measured the site in the window ([`site_probes`]).
pub fn block_step(
    series: &[Obs],
    method: Method,
    anchor: DateTime<Utc>,
    open_since: Option<DateTime<Utc>>,
    p: &Params,
) -> Option<Decision> {
    let asn_probes = site_probes(series, anchor, p.window);
    let per_probe = window_by_probe(series, anchor, p.window);
    let considered = per_probe.len();
    if considered == 0 {
        return None;
    }
    let is_blocked = |o: &Obs| o.status == Status::Blocked && o.method == Some(method);
    let is_accessible = |o: &Obs| o.status == Status::Accessible;
    let runs = |pred: &dyn Fn(&Obs) -> bool| -> Vec<&[&Obs]> {
        per_probe
            .values()
            .map(|v| streak(v, pred))
            .filter(|s| !s.is_empty())
            .collect()
    };
    let blocked = runs(&is_blocked);
    let accessible = runs(&is_accessible);
    let share = blocked.len() as f64 / considered as f64;
    let single = p.min_probes > 1 && asn_probes <= 1 && considered == 1;
    let holds = |supporting: &[&[&Obs]], share_ok: bool| {
        if single {
            supporting
                .first()
                .is_some_and(|s| s.len() >= p.min_measurements)
        } else {
            supporting.len() >= p.min_probes && share_ok
        }
    };
    let evidence = |supporting: &[&[&Obs]], share: f64| Evidence {
        probes: supporting.len(),
        probes_considered: considered,
        measurements: supporting.iter().map(|s| s.len() as u64).sum(),
        method: Some(method),
        share,
        rule: if single { "single_probe" } else { "probes" }.to_string(),
        sample_ids: sample_ids(
            supporting
                .iter()
                .flat_map(|s| s.iter().map(|o| o.id.as_str())),
        ),
        ..Evidence::default()
    };
    let run_start = |s: &&[&Obs]| s.first().map(|o| o.at);
    match open_since {
        None => {
            if !holds(&blocked, share >= p.min_share) {
                return None;
            }
            let started_at = blocked.iter().filter_map(run_start).min()?;
            Some(Decision::Open {
                started_at,
                decided_at: anchor,
                evidence: evidence(&blocked, share),
            })
        }
        Some(since) => {
            if !holds(&accessible, share < p.min_share) {
                return None;
            }
            let first = accessible.iter().filter_map(run_start).min()?;
            Some(Decision::Close {
                ended_at: first.max(since),
                decided_at: anchor,
                evidence: evidence(&accessible, accessible.len() as f64 / considered as f64),
            })
        }
    }
}

/// Probes whose latest blocked verdicts name one censor place: the input of
/// [`agreed_place`], built from a series ([`place_votes`]) or read from the read model.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PlaceVote {
    /// The place named.
    pub place: CensorPlace,
    /// Probes whose latest verdict names it.
    pub probes: u64,
    /// The longest run of consecutive verdicts of one of these probes naming it.
    pub run: u64,
}

/// The censor place the located blocked probes of one site and network agree on.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AgreedPlace {
    /// Where.
    pub place: CensorPlace,
    /// Probes that name it.
    pub agreeing: u64,
    /// Probes whose latest verdict is blocked and located (the denominator of the share).
    pub located: u64,
    /// `probes` or `single_probe`, as in [`Evidence::rule`].
    pub rule: &'static str,
}

/// Where the censor of one site on one network sits, by the agreement rule of the block events
/// applied to the blocked probes that located it: the place most of them name (a tie names
/// none), agreed when at least `min_probes` name it and they are at least `min_share` of the
/// located probes; or, with `single` (the network has one probe), when that probe's last
/// `min_measurements` verdicts name it. Probes that are blocked but did not locate the censor
/// neither agree nor disagree.
pub fn agreed_place(votes: &[PlaceVote], single: bool, p: &Params) -> Option<AgreedPlace> {
    let mut by_place: BTreeMap<CensorPlace, (u64, u64)> = BTreeMap::new();
    for v in votes.iter().filter(|v| v.probes > 0) {
        let e = by_place.entry(v.place).or_default();
        e.0 += v.probes;
        e.1 = e.1.max(v.run);
    }
    let located: u64 = by_place.values().map(|(n, _)| n).sum();
    let top = by_place.values().map(|(n, _)| *n).max()?;
    let mut best = by_place.iter().filter(|(_, (n, _))| *n == top);
    let (&place, &(agreeing, run)) = best.next()?;
    if best.next().is_some() {
        return None;
    }
    let single = single && p.min_probes > 1 && located == 1;
    let holds = if single {
        run >= p.min_measurements as u64
    } else {
        agreeing >= p.min_probes as u64 && agreeing as f64 / located as f64 >= p.min_share
    };
    holds.then_some(AgreedPlace {
        place,
        agreeing,
        located,
        rule: if single { "single_probe" } else { "probes" },
    })
}

/// The votes of a series at `anchor`: per probe, its latest conclusive measurement in the
/// window, when blocked (any method) and located, with the run of its consecutive conclusive
/// measurements naming the same place.
pub fn place_votes(series: &[Obs], anchor: DateTime<Utc>, window: TimeDelta) -> Vec<PlaceVote> {
    let place = |o: &Obs| {
        o.censor_hop
            .filter(|_| o.status == Status::Blocked)
            .map(|hop| CensorPlace {
                hop,
                asn: o.censor_asn,
            })
    };
    window_by_probe(series, anchor, window)
        .values()
        .filter_map(|v| {
            let here = place(*v.last()?)?;
            let run = streak(v, |o| place(o) == Some(here)).len() as u64;
            Some(PlaceVote {
                place: here,
                probes: 1,
                run,
            })
        })
        .collect()
}

/// A censor place agreed at one evaluation time, with when it began and why.
#[derive(Clone, Debug, PartialEq)]
pub struct PlaceFinding {
    /// The place and how many agree.
    pub agreed: AgreedPlace,
    /// Start of the agreeing probes' runs naming it (the measurements' own times).
    pub started_at: DateTime<Utc>,
    /// Why: the agreeing probes, their runs and some of their measurements (`censor` set).
    pub evidence: Evidence,
}

/// Where the located blocked probes of one site on one network agree the censor sits at
/// `anchor` ([`place_votes`] then [`agreed_place`]; the single-probe rule as in [`block_step`]:
/// at most one probe measured the site in the window).
pub fn place_step(series: &[Obs], anchor: DateTime<Utc>, p: &Params) -> Option<PlaceFinding> {
    let votes = place_votes(series, anchor, p.window);
    let agreed = agreed_place(&votes, site_probes(series, anchor, p.window) <= 1, p)?;
    let names = |o: &Obs| {
        o.status == Status::Blocked
            && o.censor_hop == Some(agreed.place.hop)
            && o.censor_asn == agreed.place.asn
    };
    let per_probe = window_by_probe(series, anchor, p.window);
    let runs: Vec<&[&Obs]> = per_probe
        .values()
        .map(|v| streak(v, names))
        .filter(|s| !s.is_empty())
        .collect();
    let started_at = runs.iter().filter_map(|s| s.first().map(|o| o.at)).min()?;
    let evidence = Evidence {
        probes: usize::try_from(agreed.agreeing).unwrap_or(usize::MAX),
        probes_considered: usize::try_from(agreed.located).unwrap_or(usize::MAX),
        measurements: runs.iter().map(|s| s.len() as u64).sum(),
        method: None,
        share: agreed.agreeing as f64 / agreed.located as f64,
        rule: agreed.rule.to_string(),
        sample_ids: sample_ids(runs.iter().flat_map(|s| s.iter().map(|o| o.id.as_str()))),
        censor: Some(agreed.place),
        previous_censor: None,
    };
    Some(PlaceFinding {
        agreed,
        started_at,
        evidence,
    })
}

/// Evaluate the shutdown rule for one network at one time.
///
/// `series` should reach back to the start of an open shutdown (not only one window), so that
/// recoveries can be told from probes that never went offline.
pub fn shutdown_step(
    series: &[Presence],
    anchor: DateTime<Utc>,
    open_since: Option<DateTime<Utc>>,
    p: &Params,
) -> Option<Decision> {
    let from = anchor - p.window;
    let mut per_probe: BTreeMap<&str, Vec<&Presence>> = BTreeMap::new();
    for r in series.iter().filter(|r| r.last_at <= anchor) {
        per_probe.entry(r.probe.as_str()).or_default().push(r);
    }
    // Oldest first; within the same instant, offline before online (a recovery wins a tie).
    for v in per_probe.values_mut() {
        v.sort_by_key(|r| (r.last_at, !r.offline));
    }
    // Only probes heard from within the window have a current state.
    per_probe.retain(|_, v| v.last().is_some_and(|r| r.last_at > from));
    let considered = per_probe.len();
    let offline: Vec<&[&Presence]> = per_probe
        .values()
        .map(|v| streak(v, |r| r.offline))
        .filter(|s| !s.is_empty())
        .collect();
    let evidence = |supporting: &[&[&Presence]]| Evidence {
        probes: supporting.len(),
        probes_considered: considered,
        measurements: supporting
            .iter()
            .flat_map(|s| s.iter().map(|r| r.count))
            .sum(),
        method: None,
        share: if considered == 0 {
            0.0
        } else {
            supporting.len() as f64 / considered as f64
        },
        rule: "probes".to_string(),
        sample_ids: sample_ids(
            supporting
                .iter()
                .flat_map(|s| s.iter().map(|r| r.sample_id.as_str())),
        ),
        ..Evidence::default()
    };
    let run_start = |s: &&[&Presence]| s.first().map(|r| r.first_at);
    match open_since {
        None => {
            if offline.len() < p.min_probes {
                return None;
            }
            let started_at = offline.iter().filter_map(run_start).min()?;
            Some(Decision::Open {
                started_at,
                decided_at: anchor,
                evidence: evidence(&offline),
            })
        }
        Some(since) => {
            // A recovery is a probe back online after being offline during this shutdown: a
            // probe that stayed online elsewhere on the network says nothing about the others.
            let recovered: Vec<&[&Presence]> = per_probe
                .values()
                .filter_map(|v| {
                    let online = streak(v, |r| !r.offline);
                    let before = v.len().checked_sub(online.len() + 1).map(|i| v[i]);
                    let was_offline = before.is_some_and(|r| r.offline && r.last_at >= since);
                    (!online.is_empty() && was_offline).then_some(online)
                })
                .collect();
            if offline.len() >= p.min_probes || recovered.is_empty() {
                return None;
            }
            let first = recovered.iter().filter_map(run_start).min()?;
            Some(Decision::Close {
                ended_at: first.max(since),
                decided_at: anchor,
                evidence: evidence(&recovered),
            })
        }
    }
}

/// Evaluate at every anchor (sorted) after the key's floor, carrying the open/closed state from
/// one decision to the next. Hysteresis: after a decision (the floor is the last one), the
/// next one waits `min_event` (to close) or `min_gap` (to open again), in measurement time.
pub fn replay(
    anchors: &[DateTime<Utc>],
    state: KeyState,
    p: &Params,
    mut step: impl FnMut(DateTime<Utc>, Option<DateTime<Utc>>) -> Option<Decision>,
) -> Vec<Decision> {
    let mut open = state.open_since;
    let mut last = state.floor;
    let mut out = Vec::new();
    for &anchor in anchors {
        if state.floor.is_some_and(|f| anchor <= f) {
            continue;
        }
        let hold = if open.is_some() {
            p.min_event
        } else {
            p.min_gap
        };
        if last.is_some_and(|l| anchor < l + hold) {
            continue;
        }
        if let Some(d) = step(anchor, open) {
            open = match &d {
                Decision::Open { started_at, .. } => Some(*started_at),
                Decision::Close { .. } => None,
            };
            last = Some(anchor);
            out.push(d);
        }
    }
    out
}

/// The earliest time a decision may speak of: `now - max_backfill`. Records dated further
/// back are stored but decide nothing (a back-dated upload cannot write an event weeks into
/// the past): the anchors at or after it. [`clamp_decision`] bounds the times decided.
pub fn bound_backfill(
    anchors: Vec<DateTime<Utc>>,
    not_before: DateTime<Utc>,
) -> Vec<DateTime<Utc>> {
    anchors.into_iter().filter(|a| *a >= not_before).collect()
}

/// `d` with its start (or end) no earlier than `not_before` (see [`bound_backfill`]).
pub fn clamp_decision(d: Decision, not_before: DateTime<Utc>) -> Decision {
    match d {
        Decision::Open {
            started_at,
            decided_at,
            evidence,
        } => Decision::Open {
            started_at: started_at.max(not_before),
            decided_at,
            evidence,
        },
        Decision::Close {
            ended_at,
            decided_at,
            evidence,
        } => Decision::Close {
            ended_at: ended_at.max(not_before),
            decided_at,
            evidence,
        },
    }
}

/// Sorted, distinct evaluation times, thinned to at most [`MAX_ANCHORS`] (the last is kept).
pub fn anchors(times: impl IntoIterator<Item = DateTime<Utc>>) -> Vec<DateTime<Utc>> {
    let mut v: Vec<DateTime<Utc>> = times.into_iter().collect();
    v.sort();
    v.dedup();
    if v.len() > MAX_ANCHORS {
        let n = v.len();
        let step = n.div_ceil(MAX_ANCHORS);
        let last = v[n - 1];
        v = v.into_iter().step_by(step).collect();
        if v.last() != Some(&last) {
            v.push(last);
        }
    }
    v
}

/// Methods worth evaluating for one site and network: those seen blocking, plus those with an
/// open event.
pub fn methods_to_evaluate(series: &[Obs], open: impl IntoIterator<Item = Method>) -> Vec<Method> {
    let mut m: Vec<Method> = series
        .iter()
        .filter(|o| o.status == Status::Blocked)
        .filter_map(|o| o.method)
        .chain(open)
        .collect();
    m.sort();
    m.dedup();
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(min: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2024, 3, 1, 12, 0, 0).unwrap() + TimeDelta::minutes(min)
    }

    /// `(probe, minute, verdict)`: `ok`, `down`, `off`, `inc` or a blocking method.
    type Row = (&'static str, i64, &'static str);

    fn series(rows: &[Row]) -> Vec<Obs> {
        rows.iter()
            .enumerate()
            .map(|(i, (probe, min, verdict))| {
                let (status, method) = match *verdict {
                    "ok" => (Status::Accessible, None),
                    "down" => (Status::Down, None),
                    "off" => (Status::Offline, None),
                    "inc" => (Status::Inconclusive, None),
                    m => (Status::Blocked, Some(m.parse::<Method>().unwrap())),
                };
                Obs {
                    id: format!("m{i}"),
                    probe: probe.to_string(),
                    at: t(*min),
                    status,
                    method,
                    censor_hop: None,
                    censor_asn: None,
                }
            })
            .collect()
    }

    enum Want {
        Nothing,
        Open(i64),
        Close(i64),
    }

    #[test]
    fn block_rule_table() {
        use Want::*;
        let p = Params::default();
        // (name, rows, open_since, expected)
        type Case = (&'static str, Vec<Row>, Option<i64>, Want);
        let cases: Vec<Case> = vec![
            ("no data", vec![], None, Nothing),
            (
                "one probe of many is not enough",
                vec![("a", 0, "tls")],
                None,
                Nothing,
            ),
            (
                "two probes agree",
                vec![("a", 0, "tls"), ("b", 5, "tls")],
                None,
                Open(0),
            ),
            (
                "started_at is the start of the blocked run",
                vec![
                    ("a", 0, "ok"),
                    ("a", 10, "tls"),
                    ("a", 20, "tls"),
                    ("b", 15, "tls"),
                ],
                None,
                Open(10),
            ),
            (
                "latest must agree: a recovered",
                vec![("a", 0, "tls"), ("b", 5, "tls"), ("a", 10, "ok")],
                None,
                Nothing,
            ),
            (
                "another method does not count",
                vec![("a", 0, "tls"), ("b", 5, "dns")],
                None,
                Nothing,
            ),
            (
                "down and inconclusive neither open nor close",
                vec![
                    ("a", 0, "tls"),
                    ("b", 5, "tls"),
                    ("a", 10, "down"),
                    ("b", 11, "inc"),
                ],
                None,
                Open(0),
            ),
            (
                "offline never counts as blocked",
                vec![("a", 0, "off"), ("b", 5, "off"), ("c", 6, "off")],
                None,
                Nothing,
            ),
            (
                "below min_share: 2 of 5 probes",
                vec![
                    ("a", 0, "tls"),
                    ("b", 0, "tls"),
                    ("c", 0, "ok"),
                    ("d", 0, "ok"),
                    ("e", 0, "ok"),
                ],
                None,
                Nothing,
            ),
            (
                "outside the window does not count",
                vec![("a", -400, "tls"), ("b", 5, "tls")],
                None,
                Nothing,
            ),
            (
                "single probe: three in a row",
                vec![("a", 0, "tls"), ("a", 60, "tls"), ("a", 120, "tls")],
                None,
                Open(0),
            ),
            (
                "single probe: two are not enough",
                vec![("a", 0, "tls"), ("a", 60, "tls")],
                None,
                Nothing,
            ),
            (
                "single probe rule needs a lone probe on the site",
                vec![
                    ("a", 0, "tls"),
                    ("a", 60, "tls"),
                    ("b", 70, "inc"),
                    ("a", 120, "tls"),
                ],
                None,
                Nothing,
            ),
            (
                "an offline record is not a second probe of the site",
                vec![
                    ("a", 0, "tls"),
                    ("a", 60, "tls"),
                    ("b", 70, "off"),
                    ("a", 120, "tls"),
                ],
                None,
                Open(0),
            ),
            (
                "a probe seen before the window is not a second probe",
                vec![
                    ("b", -400, "ok"),
                    ("a", 0, "tls"),
                    ("a", 60, "tls"),
                    ("a", 120, "tls"),
                ],
                None,
                Open(0),
            ),
            (
                "single probe: interrupted run",
                vec![
                    ("a", 0, "tls"),
                    ("a", 60, "ok"),
                    ("a", 120, "tls"),
                    ("a", 130, "tls"),
                ],
                None,
                Nothing,
            ),
            (
                "open stays open while blocked",
                vec![("a", 0, "tls"), ("b", 5, "tls")],
                Some(0),
                Nothing,
            ),
            (
                "two probes accessible close it",
                vec![
                    ("a", 0, "tls"),
                    ("b", 5, "tls"),
                    ("a", 30, "ok"),
                    ("b", 40, "ok"),
                ],
                Some(0),
                Close(30),
            ),
            (
                "one accessible of two does not close",
                vec![("a", 0, "tls"), ("b", 5, "tls"), ("a", 30, "ok")],
                Some(0),
                Nothing,
            ),
            (
                "down does not close",
                vec![
                    ("a", 0, "tls"),
                    ("b", 5, "tls"),
                    ("a", 30, "down"),
                    ("b", 31, "down"),
                ],
                Some(0),
                Nothing,
            ),
            (
                "single probe: three accessible close it",
                vec![
                    ("a", 0, "tls"),
                    ("a", 60, "ok"),
                    ("a", 70, "ok"),
                    ("a", 80, "ok"),
                ],
                Some(0),
                Close(60),
            ),
            (
                "end is never before the start",
                vec![("a", -10, "ok"), ("b", -5, "ok")],
                Some(0),
                Close(0),
            ),
        ];
        for (name, rows, open, want) in cases {
            let s = series(&rows);
            let anchor = s.iter().map(|o| o.at).max().unwrap_or(t(0));
            let got = block_step(&s, Method::Tls, anchor, open.map(t), &p);
            match (want, got) {
                (Nothing, None) => {}
                (Open(m), Some(Decision::Open { started_at, .. })) => {
                    assert_eq!(started_at, t(m), "{name}")
                }
                (Close(m), Some(Decision::Close { ended_at, .. })) => {
                    assert_eq!(ended_at, t(m), "{name}")
                }
                (_, got) => panic!("{name}: unexpected {got:?}"),
            }
        }
    }

    #[test]
    fn block_evidence_counts_probes_and_measurements() {
        let s = series(&[
            ("a", 0, "tls"),
            ("a", 10, "tls"),
            ("b", 5, "tls"),
            ("c", 6, "ok"),
        ]);
        let d = block_step(&s, Method::Tls, t(10), None, &Params::default());
        let Some(Decision::Open { evidence, .. }) = d else {
            panic!("{d:?}")
        };
        assert_eq!(evidence.probes, 2);
        assert_eq!(evidence.probes_considered, 3);
        assert_eq!(evidence.measurements, 3);
        assert_eq!(evidence.method, Some(Method::Tls));
        assert_eq!(evidence.rule, "probes");
        assert!((evidence.share - 2.0 / 3.0).abs() < 1e-9);
    }

    fn presence(rows: &[(&str, i64, bool)]) -> Vec<Presence> {
        rows.iter()
            .enumerate()
            .map(|(i, (probe, min, offline))| Presence {
                probe: probe.to_string(),
                first_at: t(*min),
                last_at: t(*min),
                offline: *offline,
                count: 1,
                sample_id: format!("m{i}"),
            })
            .collect()
    }

    #[test]
    fn shutdown_rule_table() {
        use Want::*;
        let p = Params::default();
        type Case = (
            &'static str,
            Vec<(&'static str, i64, bool)>,
            Option<i64>,
            Want,
        );
        let cases: Vec<Case> = vec![
            (
                "one offline probe is not enough",
                vec![("a", 0, true)],
                None,
                Nothing,
            ),
            (
                "two offline probes",
                vec![("a", 0, false), ("a", 10, true), ("b", 12, true)],
                None,
                Open(10),
            ),
            (
                "latest must be offline",
                vec![("a", 10, true), ("b", 12, true), ("b", 20, false)],
                None,
                Nothing,
            ),
            (
                "stays open while offline",
                vec![("a", 10, true), ("b", 12, true)],
                Some(10),
                Nothing,
            ),
            (
                "a probe that never went offline is not a recovery",
                vec![("a", 10, true), ("c", 5, false), ("c", 400, false)],
                Some(10),
                Nothing,
            ),
            (
                "recovery closes it",
                vec![
                    ("a", 10, true),
                    ("b", 12, true),
                    ("a", 300, false),
                    ("b", 310, false),
                ],
                Some(10),
                Close(300),
            ),
            (
                "still two offline: not over",
                vec![
                    ("a", 10, true),
                    ("b", 12, true),
                    ("c", 13, true),
                    ("a", 300, false),
                ],
                Some(10),
                Nothing,
            ),
        ];
        for (name, rows, open, want) in cases {
            let s = presence(&rows);
            let anchor = s.iter().map(|r| r.last_at).max().unwrap_or(t(0));
            match (want, shutdown_step(&s, anchor, open.map(t), &p)) {
                (Nothing, None) => {}
                (Open(m), Some(Decision::Open { started_at, .. })) => {
                    assert_eq!(started_at, t(m), "{name}")
                }
                (Close(m), Some(Decision::Close { ended_at, .. })) => {
                    assert_eq!(ended_at, t(m), "{name}")
                }
                (_, got) => panic!("{name}: unexpected {got:?}"),
            }
        }
    }

    #[test]
    fn replay_opens_then_closes_and_respects_the_floor() {
        let p = Params::default();
        let s = series(&[
            ("a", 0, "tls"),
            ("b", 5, "tls"),
            ("a", 60, "ok"),
            ("b", 65, "ok"),
        ]);
        let all: Vec<_> = anchors(s.iter().map(|o| o.at));
        let step = |a, open| block_step(&s, Method::Tls, a, open, &p);
        let d = replay(&all, KeyState::default(), &p, step);
        assert!(
            matches!(
                d.as_slice(),
                [Decision::Open { .. }, Decision::Close { .. }]
            ),
            "{d:?}"
        );
        let floor = KeyState {
            open_since: None,
            floor: Some(t(65)),
        };
        assert!(replay(&all, floor, &p, step).is_empty());
    }

    #[test]
    fn hysteresis_holds_an_event_open_and_closed() {
        // Two probes flip between blocked and accessible every 10 minutes for two hours.
        let rows: Vec<Row> = (0..12)
            .flat_map(|i| {
                let v = if i % 2 == 0 { "tls" } else { "ok" };
                [("a", i * 10, v), ("b", i * 10 + 1, v)]
            })
            .collect();
        let s = series(&rows);
        let all = anchors(s.iter().map(|o| o.at));
        let flips = |p: &Params| {
            replay(&all, KeyState::default(), p, |a, open| {
                block_step(&s, Method::Tls, a, open, p)
            })
        };
        let none = Params {
            min_event: TimeDelta::zero(),
            min_gap: TimeDelta::zero(),
            ..Params::default()
        };
        // Without hysteresis: every flip is a transition (12 in 2 hours).
        assert_eq!(flips(&none).len(), 12);
        // With the defaults (30 minutes each way): at most one transition per 30 minutes.
        let d = flips(&Params::default());
        assert!(d.len() <= 4, "{d:?}");
        let decided: Vec<_> = d
            .iter()
            .map(|d| match d {
                Decision::Open { decided_at, .. } | Decision::Close { decided_at, .. } => {
                    *decided_at
                }
            })
            .collect();
        for w in decided.windows(2) {
            assert!(w[1] - w[0] >= TimeDelta::minutes(30), "{decided:?}");
        }
        // The floor of a stored decision holds too: nothing within 30 minutes after it.
        let after_open = KeyState {
            open_since: Some(t(0)),
            floor: Some(t(1)),
        };
        let d = replay(&all, after_open, &Params::default(), |a, open| {
            block_step(&s, Method::Tls, a, open, &Params::default())
        });
        match d.first() {
            Some(Decision::Close { decided_at, .. }) => assert!(*decided_at >= t(31)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn backfill_bound_drops_old_anchors_and_clamps_times() {
        let kept = bound_backfill(vec![t(-100), t(-10), t(0), t(5)], t(-10));
        assert_eq!(kept, vec![t(-10), t(0), t(5)]);
        let open = Decision::Open {
            started_at: t(-300),
            decided_at: t(0),
            evidence: Evidence::default(),
        };
        match clamp_decision(open, t(-60)) {
            Decision::Open { started_at, .. } => assert_eq!(started_at, t(-60)),
            d => panic!("{d:?}"),
        }
        let close = Decision::Close {
            ended_at: t(-5),
            decided_at: t(0),
            evidence: Evidence::default(),
        };
        match clamp_decision(close, t(-60)) {
            Decision::Close { ended_at, .. } => assert_eq!(ended_at, t(-5)),
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn anchors_are_sorted_distinct_and_bounded() {
        let a = anchors([t(3), t(1), t(3), t(2)]);
        assert_eq!(a, vec![t(1), t(2), t(3)]);
        let many = anchors((0..10_000).map(t));
        assert!(many.len() <= MAX_ANCHORS + 1);
        assert_eq!(many.last(), Some(&t(9_999)));
    }
    fn at(hop: u8, asn: Option<u32>) -> CensorPlace {
        CensorPlace { hop, asn }
    }

    #[test]
    fn agreed_place_table() {
        let p = Params::default();
        let v = |hop, asn, probes, run| PlaceVote {
            place: at(hop, asn),
            probes,
            run,
        };
        // (name, votes, single, expected (hop, asn, agreeing, located))
        type Case = (
            &'static str,
            Vec<PlaceVote>,
            bool,
            Option<(u8, Option<u32>, u64, u64)>,
        );
        let cases: Vec<Case> = vec![
            ("nobody located it", vec![], false, None),
            (
                "two probes agree",
                vec![v(3, Some(9198), 2, 1)],
                false,
                Some((3, Some(9198), 2, 2)),
            ),
            (
                "one probe of many is not enough",
                vec![v(3, Some(9198), 1, 5)],
                false,
                None,
            ),
            (
                "majority of three",
                vec![v(3, Some(9198), 2, 1), v(4, Some(9198), 1, 1)],
                false,
                Some((3, Some(9198), 2, 3)),
            ),
            (
                "a tie names nobody",
                vec![v(3, Some(9198), 2, 1), v(5, Some(9198), 2, 1)],
                false,
                None,
            ),
            (
                "below min_share: 2 of 5 located",
                vec![
                    v(3, None, 2, 1),
                    v(4, None, 1, 1),
                    v(5, None, 1, 1),
                    v(6, None, 1, 1),
                ],
                false,
                None,
            ),
            (
                "the same hop in another AS is another place",
                vec![v(3, Some(9198), 1, 1), v(3, Some(21299), 1, 1)],
                false,
                None,
            ),
            (
                "no ASN: the hop alone",
                vec![v(2, None, 3, 1)],
                false,
                Some((2, None, 3, 3)),
            ),
            (
                "single probe: three in a row",
                vec![v(3, Some(9198), 1, 3)],
                true,
                Some((3, Some(9198), 1, 1)),
            ),
            (
                "single probe: two are not enough",
                vec![v(3, Some(9198), 1, 2)],
                true,
                None,
            ),
            (
                "empty groups are ignored",
                vec![v(3, None, 0, 0), v(4, None, 2, 1)],
                false,
                Some((4, None, 2, 2)),
            ),
        ];
        for (name, votes, single, want) in cases {
            let got = agreed_place(&votes, single, &p)
                .map(|a| (a.place.hop, a.place.asn, a.agreeing, a.located));
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn place_votes_follow_each_probes_latest_blocked_verdict() {
        let mut s = series(&[
            ("a", 0, "tls"),
            ("a", 10, "tls"),
            ("a", 20, "tls"),
            ("b", 5, "tls"),
            ("b", 15, "tls"),
            ("c", 6, "tls"),
            ("c", 16, "ok"),
            ("d", 7, "tls"),
        ]);
        // a: hop 3, 3, 4 (moved: run 1); b: hop 4 twice (run 2); c recovered; d unlocated.
        let hops = [
            Some(3),
            Some(3),
            Some(4),
            Some(4),
            Some(4),
            Some(3),
            None,
            None,
        ];
        for (o, h) in s.iter_mut().zip(hops) {
            o.censor_hop = h;
            o.censor_asn = h.map(|_| 9198);
        }
        let mut votes = place_votes(&s, t(20), TimeDelta::hours(6));
        votes.sort_by_key(|v| v.run);
        assert_eq!(
            votes,
            vec![
                PlaceVote {
                    place: at(4, Some(9198)),
                    probes: 1,
                    run: 1
                },
                PlaceVote {
                    place: at(4, Some(9198)),
                    probes: 1,
                    run: 2
                },
            ]
        );
        let agreed = agreed_place(&votes, false, &Params::default()).unwrap();
        assert_eq!((agreed.place, agreed.agreeing), (at(4, Some(9198)), 2));
        // Single probe: a's three verdicts at hop 3 agree at minute 10... only two by then.
        let only_a: Vec<Obs> = s.iter().filter(|o| o.probe == "a").cloned().collect();
        let v = place_votes(&only_a, t(10), TimeDelta::hours(6));
        assert_eq!(v[0].run, 2);
        assert_eq!(agreed_place(&v, true, &Params::default()), None);
    }

    #[test]
    fn place_step_says_where_since_when_and_why() {
        let p = Params::default();
        let mut s = series(&[
            ("a", 0, "tcp"),
            ("b", 1, "tcp"),
            ("a", 30, "tcp"),
            ("b", 31, "tcp"),
            ("c", 32, "tcp"),
        ]);
        let hops = [3, 3, 5, 5, 5];
        for (o, h) in s.iter_mut().zip(hops) {
            o.censor_hop = Some(h);
            o.censor_asn = Some(if h == 3 { 9198 } else { 21299 });
        }
        // At minute 1: two probes at hop 3.
        let f = place_step(&s, t(1), &p).unwrap();
        assert_eq!(f.agreed.place, at(3, Some(9198)));
        assert_eq!(f.started_at, t(0));
        // At minute 30: a moved, b not yet: a tie, nothing agreed (no flapping).
        assert_eq!(place_step(&s, t(30), &p), None);
        // At minute 32: three probes at hop 5 since minute 30.
        let f = place_step(&s, t(32), &p).unwrap();
        assert_eq!(f.agreed.place, at(5, Some(21299)));
        assert_eq!(f.agreed.agreeing, 3);
        assert_eq!(f.started_at, t(30));
        assert_eq!(f.evidence.probes, 3);
        assert_eq!(f.evidence.measurements, 3);
        assert_eq!(f.evidence.censor, Some(at(5, Some(21299))));
        assert_eq!(f.evidence.rule, "probes");
        // A lone probe on its network: three verdicts in a row at one place.
        let lone: Vec<Obs> = series(&[("a", 0, "tcp"), ("a", 10, "tcp"), ("a", 20, "tcp")])
            .into_iter()
            .map(|mut o| {
                o.censor_hop = Some(2);
                o
            })
            .collect();
        assert_eq!(place_step(&lone, t(10), &p), None);
        let f = place_step(&lone, t(20), &p).unwrap();
        assert_eq!(
            (f.agreed.place, f.agreed.rule),
            (at(2, None), "single_probe")
        );
        let mut two = lone.clone();
        two.extend(series(&[("b", 15, "inc")]));
        assert_eq!(place_step(&two, t(20), &p), None);
    }
}
