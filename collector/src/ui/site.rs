//! A site's page: its history chart ([`super::chart`]), its current and latest verdicts per
//! network with the reason, hourly rows and its events. A pure function of what the store
//! returned ([`SiteView`]).

use std::collections::BTreeSet;
use std::fmt::Write;

use chrono::{DateTime, TimeDelta, Utc};
use witness_core::model::Status;

use super::chart;
use super::html::{esc, truncate};
use super::palette::{legend, no_data, swatch};
use super::render::{
    events_table, layout, network_name, site_href, span, status_href, time, MAX_NETWORKS,
};
use crate::model::SiteStatus;
use crate::store::{Event, HistoryRow, MeasurementRecord};

/// Most hourly rows in a site's table.
pub const MAX_HOURLY_ROWS: usize = 48;
/// Most characters of a verdict reason shown.
const MAX_REASON: usize = 300;

/// What a site's page shows.
#[derive(Clone, Debug)]
pub struct SiteView {
    /// When the page was made.
    pub now: DateTime<Utc>,
    /// Start of the chart.
    pub since: DateTime<Utc>,
    /// End of the chart.
    pub until: DateTime<Utc>,
    /// Days shown (offered as links: 1, 7, 30).
    pub days: u32,
    /// The aggregation window of the current statuses.
    pub window: TimeDelta,
    /// Site.
    pub domain: String,
    /// Current state per network.
    pub statuses: Vec<SiteStatus>,
    /// Hourly verdict counts over `[since, until]`.
    pub history: Vec<HistoryRow>,
    /// The store returned as many rows as asked for: older hours may be missing.
    pub history_truncated: bool,
    /// The latest measurement per network, for its reason.
    pub latest: Vec<MeasurementRecord>,
    /// Events of the site, newest first.
    pub events: Vec<Event>,
}

/// `hop 3, AS9198` (or `hop 3`) where the located probes agree on where the censor sits.
fn censor_place(s: &SiteStatus) -> Option<String> {
    let hop = s.censor_hop?;
    Some(
        crate::model::CensorPlace {
            hop,
            asn: s.censor_asn,
        }
        .to_string(),
    )
}

/// A site's page: its chart, current and recent verdicts per network, and its events.
pub fn site_page(view: &SiteView) -> String {
    let d = &view.domain;
    let mut s = format!(
        "<p class=\"crumbs\"><a href=\"/\">Status</a> › site</p><h1 class=\"domain\">{}</h1>",
        esc(d)
    );
    let category = view
        .statuses
        .iter()
        .find_map(|st| st.category.as_deref())
        .or_else(|| view.latest.iter().find_map(|m| m.category.as_deref()));
    if let Some(cat) = category {
        let _ = write!(
            s,
            "<p class=\"sub\">Category <a class=\"cat\" href=\"{}\">{}</a></p>",
            esc(&status_href(None, Some(cat))),
            esc(cat)
        );
    }

    let _ = write!(
        s,
        "<section><h2>History</h2><p class=\"sub\">Hourly, the verdict most measurements gave, \
         per network; {} to {}. Range:",
        time(view.since),
        time(view.until)
    );
    for days in [1, 7, 30] {
        if days == view.days {
            let _ = write!(s, " <strong>{days} d</strong>");
        } else {
            let _ = write!(
                s,
                " <a href=\"{}?days={days}\">{days} d</a>",
                esc(&site_href(d))
            );
        }
    }
    s.push_str("</p>");
    let mut lanes = chart::lanes(&view.history);
    let total_lanes = lanes.len();
    lanes.truncate(MAX_NETWORKS);
    if lanes.is_empty() {
        s.push_str("<p class=\"empty\">No measurements of this site in this period.</p>");
    } else {
        s.push_str("<div class=\"chart-wrap\">");
        for g in [&chart::Geometry::WIDE, &chart::Geometry::NARROW] {
            s.push_str(&chart::svg(
                g,
                d,
                &lanes,
                view.since,
                view.until,
                Some(view.now),
            ));
        }
        s.push_str("</div>");
        if total_lanes > lanes.len() {
            let _ = write!(
                s,
                "<p class=\"bounded\">Showing {} of {total_lanes} networks (lowest ASNs first).</p>",
                lanes.len()
            );
        }
    }
    if view.history_truncated {
        s.push_str(
            "<p class=\"bounded\">The history is longer than this page shows: the latest hours \
             may be missing; use <code>/api/v1/sites/…/history</code> with <code>since</code>.</p>",
        );
    }
    s.push_str(&legend());
    s.push_str("</section>");

    let _ = write!(
        s,
        "<section><h2>Verdicts per network</h2><p class=\"sub\">Now: from every probe's latest \
         measurement in the last {}. Latest: the newest single measurement and its reason.</p>",
        span(view.window)
    );
    let mut nets: BTreeSet<u32> = view.statuses.iter().map(|st| st.asn).collect();
    nets.extend(view.latest.iter().filter_map(|m| m.asn));
    // Networks with history but no current verdict (offline, or quiet for a while).
    nets.extend(view.history.iter().filter_map(|h| h.asn));
    if nets.is_empty() {
        s.push_str("<p class=\"empty\">No recent verdicts.</p>");
    } else {
        s.push_str(
            "<div class=\"scroll\"><table class=\"verdicts\" id=\"verdicts\"><thead><tr>\
             <th>Network</th><th>Now</th><th>Probes blocked/ok/all</th>\
             <th>Latest</th><th>Measured</th><th>Reason</th></tr></thead><tbody>",
        );
        for asn in nets.iter().take(MAX_NETWORKS) {
            let st = view.statuses.iter().find(|x| x.asn == *asn);
            let last = view
                .latest
                .iter()
                .filter(|m| m.asn == Some(*asn))
                .max_by_key(|m| m.started_at);
            let last_hour = view
                .history
                .iter()
                .filter(|h| h.asn == Some(*asn))
                .max_by_key(|h| h.hour);
            let country = st
                .and_then(|x| x.country.as_deref())
                .or_else(|| last.and_then(|m| m.country.as_deref()))
                .or_else(|| last_hour.and_then(|h| h.country.as_deref()));
            let now = match st {
                Some(x) => {
                    let w = swatch(x.status, x.method);
                    let mut cell = format!("<span class=\"swatch {}\">{}</span>", w.class, w.label);
                    if let Some(at) = censor_place(x) {
                        let _ = write!(
                            cell,
                            " <span class=\"censor\" title=\"{} of the probes that located the \
                             censor agree\">blocked at {}</span>",
                            x.hop_agreeing,
                            esc(&at)
                        );
                    }
                    cell
                }
                None => format!(
                    "<span class=\"swatch {}\">{}</span>",
                    no_data().class,
                    no_data().label
                ),
            };
            let counts = st
                .map(|x| {
                    format!(
                        "{} / {} / {}",
                        x.blocked_probes, x.accessible_probes, x.probes
                    )
                })
                .unwrap_or_else(|| "–".into());
            let (latest, at, reason) = match last {
                Some(m) => {
                    let w = swatch(m.status, m.method);
                    (
                        format!("<span class=\"swatch {}\">{}</span>", w.class, w.label),
                        time(m.started_at),
                        esc(&truncate(&m.reason, MAX_REASON)).to_string(),
                    )
                }
                None => match last_hour {
                    Some(h) => {
                        let w = swatch(h.status, h.method);
                        (
                            format!("<span class=\"swatch {}\">{}</span>", w.class, w.label),
                            format!("hour of {}", time(h.hour)),
                            format!(
                                "no verdict in the last {}{}",
                                span(view.window),
                                if h.status == Status::Offline {
                                    ": the network was offline"
                                } else {
                                    ""
                                }
                            ),
                        )
                    }
                    None => ("–".into(), "–".into(), String::new()),
                },
            };
            let _ = write!(
                s,
                "<tr><td>{}</td><td>{now}</td><td>{counts}</td><td>{latest}</td><td>{at}</td>\
                 <td class=\"reason\">{reason}</td></tr>",
                esc(&network_name(Some(*asn), country)),
            );
        }
        s.push_str("</tbody></table></div>");
    }

    if !view.history.is_empty() {
        let _ = write!(
            s,
            "<h3>Hourly verdicts, newest first (up to {MAX_HOURLY_ROWS} rows)</h3>\
             <div class=\"scroll\"><table class=\"hourly\"><thead><tr><th>Hour</th>\
             <th>Network</th><th>Verdict</th><th>Measurements</th><th>Probes</th></tr></thead><tbody>"
        );
        let mut rows: Vec<&HistoryRow> = view.history.iter().collect();
        rows.sort_by(|a, b| b.hour.cmp(&a.hour).then(a.asn.cmp(&b.asn)));
        for r in rows.into_iter().take(MAX_HOURLY_ROWS) {
            let w = swatch(r.status, r.method);
            let _ = write!(
                s,
                "<tr><td>{}</td><td>{}</td><td><span class=\"swatch {}\">{}</span></td><td>{}</td>\
                 <td>{}</td></tr>",
                time(r.hour),
                esc(&network_name(r.asn, r.country.as_deref())),
                w.class,
                w.label,
                r.measurements,
                r.probes
            );
        }
        s.push_str("</tbody></table></div>");
    }
    s.push_str("</section>");

    s.push_str("<section><h2>Events</h2>");
    s.push_str(&events_table(&view.events, false));
    s.push_str("</section>");
    layout(d, &s)
}

#[cfg(test)]
mod tests {
    use super::super::render::fixtures::{status, t0};
    use super::*;
    use crate::model::{EventKind, Evidence};
    use witness_core::model::Method;

    /// A week's page of `domain` with these current statuses; nothing else yet.
    fn site_view(domain: &str, statuses: Vec<SiteStatus>) -> SiteView {
        SiteView {
            now: t0(),
            since: t0() - TimeDelta::days(7),
            until: t0(),
            days: 7,
            window: TimeDelta::hours(6),
            domain: domain.into(),
            statuses,
            history: vec![],
            history_truncated: false,
            latest: vec![],
            events: vec![],
        }
    }

    #[test]
    fn the_site_page_says_where_the_block_is_and_when_it_moved() {
        let mut located = status("news.test", 9198, Status::Blocked, Some(Method::Tcp));
        (located.censor_hop, located.censor_asn, located.hop_agreeing) = (Some(3), Some(9198), 2);
        let mut no_asn = status("news.test", 64500, Status::Blocked, Some(Method::Tls));
        (no_asn.censor_hop, no_asn.hop_agreeing) = (Some(2), 2);
        let unlocated = status("news.test", 64501, Status::Blocked, Some(Method::Tls));
        let moved = Event {
            id: "e1".into(),
            kind: EventKind::BlockMoved,
            domain: Some("news.test".into()),
            asn: 9198,
            country: Some("KZ".into()),
            category: None,
            method: None,
            started_at: t0(),
            ended_at: Some(t0()),
            evidence: Evidence {
                probes: 2,
                probes_considered: 2,
                measurements: 2,
                censor: Some(crate::model::CensorPlace {
                    hop: 3,
                    asn: Some(9198),
                }),
                previous_censor: Some(crate::model::CensorPlace { hop: 5, asn: None }),
                ..Evidence::default()
            },
            end_evidence: None,
        };
        let mut site = site_view("news.test", vec![located, no_asn, unlocated]);
        site.events = vec![moved];
        let page = site_page(&site);
        assert!(page.contains("blocked at hop 3, AS9198</span>"), "{page}");
        assert!(page.contains("blocked at hop 2</span>"), "{page}");
        assert_eq!(page.matches("class=\"censor\"").count(), 2, "{page}");
        assert!(page.contains("block moved"), "{page}");
        assert!(
            page.contains("blocked at hop 5, now at hop 3, AS9198"),
            "{page}"
        );
    }

    #[test]
    fn hostile_values_are_escaped_on_the_site_page() {
        let evil = "<script>alert(1)</script>\"'&.test";
        let mut st = status(evil, 64500, Status::Blocked, Some(Method::Http));
        st.category = Some("<i>CAT".into());
        st.country = Some("<q>".into());
        let mut site = site_view(evil, vec![st]);
        site.history = vec![HistoryRow {
            hour: t0() - TimeDelta::hours(1),
            asn: Some(64500),
            country: Some("<q>".into()),
            status: Status::Blocked,
            method: Some(Method::Http),
            measurements: 1,
            probes: 1,
        }];
        site.latest = vec![MeasurementRecord {
            id: uuid::Uuid::nil(),
            received_at: t0(),
            started_at: t0(),
            domain: evil.into(),
            url: "https://x/".into(),
            category: None,
            asn: Some(64500),
            country: None,
            status: Status::Blocked,
            method: Some(Method::Http),
            reason: "blockpage <iframe src=//evil>".into(),
            software_version: "0".into(),
            body: "{}".into(),
            censor_hop: None,
            censor_asn: None,
        }];
        let page = site_page(&site);
        for bad in ["<script", "<i>", "<q>", "<iframe", "'&.test"] {
            assert!(!page.contains(bad), "{bad} unescaped in:\n{page}");
        }
        assert!(page.contains("blockpage &lt;iframe"));
    }
}
