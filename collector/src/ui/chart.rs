//! The history chart of one site: an inline SVG drawn on the server, time on x, one lane per
//! network, coloured segments by verdict and method. No script, no external fetch.

use std::collections::BTreeMap;
use std::fmt::Write;

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use witness_core::model::{Method, Status};

use super::html::esc;
use super::palette::swatch;
use super::render::network_name;
use crate::store::HistoryRow;

/// The shape of a chart. Two are rendered and CSS shows one: a wide one with the network
/// names left of the lanes, and a narrow one for phones with the names above the lanes, so
/// the text stays legible without scrolling the chart.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Geometry {
    /// `id` of the `<svg>` (its title's id is derived from it).
    pub id: &'static str,
    /// Extra CSS class.
    pub class: &'static str,
    /// Width in SVG units (the drawing scales to the page width).
    pub width: f64,
    /// Left edge of the plot (room for the labels when they are beside the lanes).
    pub left: f64,
    /// Room right of the plot.
    pub right: f64,
    /// Labels above the lanes rather than beside them.
    pub labels_above: bool,
    /// Height of a lane.
    pub lane: f64,
}

impl Geometry {
    /// For screens wider than a phone.
    pub const WIDE: Geometry = Geometry {
        id: "history-chart",
        class: "chart-wide",
        width: 960.0,
        left: 150.0,
        right: 12.0,
        labels_above: false,
        lane: 22.0,
    };
    /// For phones.
    pub const NARROW: Geometry = Geometry {
        id: "history-chart-narrow",
        class: "chart-narrow",
        width: 400.0,
        left: 6.0,
        right: 6.0,
        labels_above: true,
        lane: 18.0,
    };

    /// Height of one network's row: its lane, a gap, and its label when above.
    fn row(&self) -> f64 {
        self.lane + GAP + if self.labels_above { LABEL } else { 0.0 }
    }
}

const TOP: f64 = 8.0;
const GAP: f64 = 6.0;
/// Room for a label above a lane.
const LABEL: f64 = 16.0;
const AXIS: f64 = 30.0;
/// Least room between two time ticks, in SVG units.
const TICK_ROOM: f64 = 80.0;

/// One hour or more of one network in one state.
#[derive(Clone, Debug, PartialEq)]
pub struct Segment {
    /// Start of the first hour.
    pub start: DateTime<Utc>,
    /// End of the last hour.
    pub end: DateTime<Utc>,
    /// The verdict that had the most measurements in each of these hours.
    pub status: Status,
    /// Its method, with `blocked`.
    pub method: Option<Method>,
    /// Measurements in the segment (every verdict).
    pub measurements: u64,
    /// Most distinct probes in any one hour.
    pub probes: u64,
}

/// One network's row of the chart.
#[derive(Clone, Debug, PartialEq)]
pub struct Lane {
    /// Network (`None`: probes that did not say).
    pub asn: Option<u32>,
    /// Country claimed by the probes.
    pub country: Option<String>,
    /// Segments, in time order, not overlapping.
    pub segments: Vec<Segment>,
}

/// Ties between verdicts of an hour go to the more serious one.
fn severity(status: Status) -> u8 {
    match status {
        Status::Blocked => 4,
        Status::Down => 3,
        Status::Inconclusive => 2,
        Status::Accessible => 1,
        Status::Offline => 0,
    }
}

/// Hourly rows (as [`crate::store::MeasurementStore::history`] returns them) folded into lanes: per
/// network and hour the verdict with the most measurements (ties: blocked, down, inconclusive,
/// accessible, offline), and runs of adjacent hours in one state merged into one segment.
pub fn lanes(rows: &[HistoryRow]) -> Vec<Lane> {
    /// A verdict's counts in one hour: status, method, measurements, probes.
    type Hour = (Status, Option<Method>, u64, u64);
    /// A lane's country and its verdicts by hour.
    type Hours = (Option<String>, BTreeMap<DateTime<Utc>, Vec<Hour>>);
    let mut by_lane: BTreeMap<Option<u32>, Hours> = BTreeMap::new();
    for r in rows {
        let lane = by_lane.entry(r.asn).or_default();
        if r.country.is_some() {
            lane.0.clone_from(&r.country);
        }
        lane.1
            .entry(r.hour)
            .or_default()
            .push((r.status, r.method, r.measurements, r.probes));
    }
    by_lane
        .into_iter()
        .map(|(asn, (country, hours))| {
            let mut segments: Vec<Segment> = Vec::new();
            for (hour, verdicts) in hours {
                let total: u64 = verdicts.iter().map(|v| v.2).sum();
                let probes = verdicts.iter().map(|v| v.3).max().unwrap_or(0);
                let Some(&(status, method, _, _)) = verdicts
                    .iter()
                    .max_by_key(|v| (v.2, severity(v.0), std::cmp::Reverse(v.1)))
                else {
                    continue;
                };
                let end = hour + TimeDelta::hours(1);
                match segments.last_mut() {
                    Some(s) if s.end == hour && s.status == status && s.method == method => {
                        s.end = end;
                        s.measurements += total;
                        s.probes = s.probes.max(probes);
                    }
                    _ => segments.push(Segment {
                        start: hour,
                        end,
                        status,
                        method,
                        measurements: total,
                        probes,
                    }),
                }
            }
            Lane {
                asn,
                country,
                segments,
            }
        })
        .collect()
}

/// Tick spacing (at least [`TICK_ROOM`] apart on a plot `plot` wide) and label format.
fn ticks(span: TimeDelta, plot: f64) -> (TimeDelta, &'static str) {
    let most = (plot / TICK_ROOM).max(1.0);
    let step = [6, 12, 24, 48, 168, 336]
        .into_iter()
        .map(TimeDelta::hours)
        .find(|step| (span.num_seconds() as f64 / step.num_seconds() as f64) <= most)
        .unwrap_or(TimeDelta::days(28));
    let fmt = if step < TimeDelta::days(1) {
        "%d %H:%M"
    } else {
        "%b %d"
    };
    (step, fmt)
}

/// The chart of `lanes` over `[since, until]`, as an `<svg>` element shaped by `g`, with a
/// marker at `now` when given. `lanes` should already be bounded by the caller; every text in
/// it is escaped.
pub fn svg(
    g: &Geometry,
    domain: &str,
    lanes: &[Lane],
    since: DateTime<Utc>,
    until: DateTime<Utc>,
    now: Option<DateTime<Utc>>,
) -> String {
    let span = (until - since).max(TimeDelta::hours(1));
    let plot = g.width - g.left - g.right;
    let x = |t: DateTime<Utc>| {
        let f = (t - since).num_seconds() as f64 / span.num_seconds() as f64;
        g.left + plot * f.clamp(0.0, 1.0)
    };
    let axis_y = TOP + lanes.len() as f64 * g.row();
    let height = axis_y + AXIS;
    let mut s = String::new();
    // Writing to a String cannot fail: the results of write! are ignored below.
    let _ = write!(
        s,
        "<svg class=\"chart {class}\" id=\"{id}\" viewBox=\"0 0 {w} {height}\" \
         role=\"img\" aria-labelledby=\"{id}-title\" xmlns=\"http://www.w3.org/2000/svg\">\
         <title id=\"{id}-title\">Verdicts for {} per network, {} to {} (UTC)</title>",
        esc(domain),
        since.format("%Y-%m-%d %H:%M"),
        until.format("%Y-%m-%d %H:%M"),
        class = g.class,
        id = g.id,
        w = g.width,
    );

    // Grid and time axis.
    let (step, fmt) = ticks(span, plot);
    let mut t = since.duration_trunc(step).unwrap_or(since);
    if t < since {
        t += step;
    }
    while t <= until {
        let tx = x(t);
        let _ = write!(
            s,
            "<line class=\"grid\" x1=\"{tx:.1}\" y1=\"{TOP}\" x2=\"{tx:.1}\" y2=\"{axis_y:.1}\"/>\
             <text class=\"tick\" x=\"{tx:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            axis_y + 16.0,
            t.format(fmt)
        );
        t += step;
    }

    for (i, lane) in lanes.iter().enumerate() {
        let row = TOP + i as f64 * g.row();
        let name = network_name(lane.asn, lane.country.as_deref());
        let (label_x, label_y, anchor, y) = if g.labels_above {
            (g.left, row + LABEL - 4.0, "start", row + LABEL)
        } else {
            (g.left - 8.0, row + g.lane / 2.0 + 4.0, "end", row)
        };
        let _ = write!(
            s,
            "<g class=\"lane\" data-asn=\"{}\"><text class=\"lane-label\" x=\"{label_x:.1}\" \
             y=\"{label_y:.1}\" text-anchor=\"{anchor}\">{}</text><rect class=\"lane-bg\" \
             x=\"{}\" y=\"{y:.1}\" width=\"{plot:.1}\" height=\"{}\"/>",
            lane.asn.map(|a| a.to_string()).unwrap_or_default(),
            esc(&name),
            g.left,
            g.lane,
        );
        for seg in &lane.segments {
            if seg.end <= since || seg.start >= until {
                continue;
            }
            let x0 = x(seg.start);
            let w = (x(seg.end) - x0).max(1.5);
            let sw = swatch(seg.status, seg.method);
            let what = match (seg.status, seg.method) {
                (Status::Blocked, Some(m)) => format!("blocked ({m})"),
                (st, _) => st.to_string(),
            };
            let _ = write!(
                s,
                "<rect class=\"seg {}\" x=\"{x0:.1}\" y=\"{y:.1}\" width=\"{w:.1}\" \
                 height=\"{}\" fill=\"{}\"><title>{}: {} from {} to {} UTC, {} measurements, \
                 {} probes</title></rect>",
                sw.class,
                g.lane,
                sw.bg,
                esc(&name),
                what,
                seg.start.format("%Y-%m-%d %H:%M"),
                seg.end.format("%Y-%m-%d %H:%M"),
                seg.measurements,
                seg.probes,
            );
        }
        s.push_str("</g>");
    }
    if let Some(now) = now.filter(|n| *n >= since && *n <= until) {
        let nx = x(now);
        let _ = write!(
            s,
            "<line class=\"now\" x1=\"{nx:.1}\" y1=\"{:.1}\" x2=\"{nx:.1}\" y2=\"{axis_y:.1}\">\
             <title>now</title></line>",
            TOP - 4.0
        );
    }
    let _ = write!(
        s,
        "<text class=\"tick\" x=\"{}\" y=\"{:.1}\">time (UTC)</text></svg>",
        g.left,
        axis_y + 28.0
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn h(n: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2025, 3, 1, 0, 0, 0).unwrap() + TimeDelta::hours(n)
    }

    fn row(hour: i64, asn: u32, status: Status, method: Option<Method>, n: u64) -> HistoryRow {
        HistoryRow {
            hour: h(hour),
            asn: Some(asn),
            country: Some("KZ".into()),
            status,
            method,
            measurements: n,
            probes: 1,
        }
    }

    #[test]
    fn adjacent_hours_in_one_state_merge_and_gaps_split() {
        let rows = vec![
            row(0, 1, Status::Accessible, None, 2),
            row(1, 1, Status::Accessible, None, 2),
            row(2, 1, Status::Blocked, Some(Method::Tls), 3),
            row(2, 1, Status::Accessible, None, 1),
            row(3, 1, Status::Blocked, Some(Method::Tls), 1),
            row(5, 1, Status::Blocked, Some(Method::Tls), 1),
            row(0, 2, Status::Blocked, Some(Method::Dns), 1),
        ];
        let lanes = lanes(&rows);
        assert_eq!(lanes.len(), 2);
        let segs: Vec<_> = lanes[0]
            .segments
            .iter()
            .map(|s| (s.start, s.end, s.status, s.method, s.measurements))
            .collect();
        assert_eq!(
            segs,
            vec![
                (h(0), h(2), Status::Accessible, None, 4),
                (h(2), h(4), Status::Blocked, Some(Method::Tls), 5),
                (h(5), h(6), Status::Blocked, Some(Method::Tls), 1),
            ]
        );
        assert_eq!(lanes[1].asn, Some(2));
    }

    #[test]
    fn ties_go_to_the_more_serious_verdict() {
        let rows = vec![
            row(0, 1, Status::Accessible, None, 2),
            row(0, 1, Status::Blocked, Some(Method::Http), 2),
        ];
        let seg = &lanes(&rows)[0].segments[0];
        assert_eq!(
            (seg.status, seg.method),
            (Status::Blocked, Some(Method::Http))
        );
    }

    #[test]
    fn svg_has_a_lane_per_network_and_coloured_segments() {
        let rows = vec![
            row(1, 64500, Status::Blocked, Some(Method::Tls), 3),
            row(2, 64501, Status::Accessible, None, 3),
        ];
        let out = svg(
            &Geometry::WIDE,
            "news.test",
            &lanes(&rows),
            h(0),
            h(24),
            Some(h(3)),
        );
        assert!(out.starts_with("<svg") && out.ends_with("</svg>"), "{out}");
        assert_eq!(out.matches("<g class=\"lane\"").count(), 2);
        assert!(out.contains("class=\"seg v-tls\""), "{out}");
        assert!(out.contains(&format!(
            "fill=\"{}\"",
            swatch(Status::Blocked, Some(Method::Tls)).bg
        )));
        assert!(out.contains("class=\"seg v-ok\""), "{out}");
        assert!(out.contains("AS64500 KZ"));
        assert!(out.contains("<line class=\"now\""), "{out}");
    }

    #[test]
    fn svg_escapes_the_domain_and_countries() {
        let mut r = row(1, 1, Status::Accessible, None, 1);
        r.country = Some("<b>".into());
        let out = svg(
            &Geometry::NARROW,
            "<script>x</script>",
            &lanes(&[r]),
            h(0),
            h(24),
            None,
        );
        assert!(!out.contains("<script>") && !out.contains("<b>"), "{out}");
    }

    #[test]
    fn ticks_keep_their_distance() {
        let wide = Geometry::WIDE.width - Geometry::WIDE.left - Geometry::WIDE.right;
        let narrow = Geometry::NARROW.width - Geometry::NARROW.left - Geometry::NARROW.right;
        assert_eq!(ticks(TimeDelta::days(1), wide).0, TimeDelta::hours(6));
        assert_eq!(ticks(TimeDelta::days(7), wide).0, TimeDelta::days(1));
        assert_eq!(ticks(TimeDelta::days(30), wide).0, TimeDelta::days(7));
        assert_eq!(ticks(TimeDelta::days(7), narrow).0, TimeDelta::days(2));
        assert_eq!(ticks(TimeDelta::days(30), narrow).0, TimeDelta::days(7));
        assert_eq!(ticks(TimeDelta::days(7), wide).1, "%b %d");
    }

    #[test]
    fn narrow_charts_put_the_labels_above_the_lanes() {
        let rows = vec![row(1, 64500, Status::Blocked, Some(Method::Tls), 3)];
        let out = svg(
            &Geometry::NARROW,
            "a.test",
            &lanes(&rows),
            h(0),
            h(24),
            None,
        );
        assert!(out.contains("id=\"history-chart-narrow\""));
        assert!(out.contains("text-anchor=\"start\">AS64500 KZ"), "{out}");
    }

    #[test]
    fn segments_outside_the_range_are_not_drawn() {
        let rows = vec![row(-5, 1, Status::Accessible, None, 1)];
        let out = svg(&Geometry::WIDE, "a.test", &lanes(&rows), h(0), h(24), None);
        assert!(!out.contains("class=\"seg"), "{out}");
    }
}
