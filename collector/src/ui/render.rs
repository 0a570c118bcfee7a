//! What every page shares: the frame around it ([`layout`], [`error_page`]), links, times,
//! network names and the events table. The pages themselves are in [`super::status`] and
//! [`super::site`], the colours in [`super::palette`]. No I/O here, so every page is
//! unit-tested without a server. Every value that came from a probe is written through
//! [`esc`] (and [`url_component`] inside links).

use std::fmt::Write;

use chrono::{DateTime, TimeDelta, Utc};
use witness_core::model::Status;

use super::html::{esc, truncate, url_component};
use super::palette::{swatch, STYLESHEET_VERSION};
use crate::model::EventKind;
use crate::store::Event;

/// Most networks (columns) in the matrix and lanes in a site's chart.
pub const MAX_NETWORKS: usize = 30;
/// Most characters of a domain in a matrix row header (the full name is in its title).
pub(super) const MAX_DOMAIN: usize = 48;

/// `AS64500 KZ`, `AS64500`, or `no ASN`.
pub fn network_name(asn: Option<u32>, country: Option<&str>) -> String {
    match (asn, country) {
        (Some(a), Some(c)) => format!("AS{a} {c}"),
        (Some(a), None) => format!("AS{a}"),
        (None, Some(c)) => format!("no ASN {c}"),
        (None, None) => "no ASN".into(),
    }
}

pub(super) fn time(t: DateTime<Utc>) -> String {
    format!(
        "<time datetime=\"{}\">{}</time>",
        t.format("%Y-%m-%dT%H:%M:%SZ"),
        t.format("%Y-%m-%d %H:%M UTC")
    )
}

/// `6 h`, `90 min`, `2 d`.
pub(super) fn span(d: TimeDelta) -> String {
    let mins = d.num_minutes();
    if mins % (24 * 60) == 0 && mins >= 24 * 60 {
        format!("{}\u{a0}d", mins / (24 * 60))
    } else if mins % 60 == 0 && mins >= 60 {
        format!("{}\u{a0}h", mins / 60)
    } else {
        format!("{mins}\u{a0}min")
    }
}

/// Link to the status page with these filters.
pub fn status_href(country: Option<&str>, category: Option<&str>) -> String {
    let mut q = Vec::new();
    if let Some(c) = country {
        q.push(format!("country={}", url_component(c)));
    }
    if let Some(c) = category {
        q.push(format!("category={}", url_component(c)));
    }
    if q.is_empty() {
        "/".into()
    } else {
        format!("/?{}", q.join("&"))
    }
}

/// Link to a site's page.
pub fn site_href(domain: &str) -> String {
    format!("/sites/{}", url_component(domain))
}

/// The page around `body`.
pub fn layout(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} · Witness</title><link rel=\"icon\" href=\"data:,\">\
         <link rel=\"stylesheet\" href=\"/ui/style.css?v={}\"></head><body>\
         <header class=\"top\"><a class=\"brand\" href=\"/\">Witness</a>\
         <span class=\"tag\">censorship measurements</span></header>\
         <main>{body}</main>\
         <footer>Witness collector {} · read API: <a href=\"/api/v1/status\">status</a>, \
         <a href=\"/api/v1/events\">events</a>, <a href=\"/api/v1/probes\">probes</a> \
         (JSON; add <code>?format=csv</code> for CSV)</footer></body></html>\n",
        esc(title),
        STYLESHEET_VERSION.as_str(),
        env!("CARGO_PKG_VERSION"),
    )
}

/// A page that only says what went wrong.
pub fn error_page(title: &str, message: &str) -> String {
    layout(
        title,
        &format!(
            "<h1>{}</h1><p>{}</p><p><a href=\"/\">Back to the status page</a></p>",
            esc(title),
            esc(message)
        ),
    )
}

fn evidence(e: &crate::model::Evidence) -> String {
    format!(
        "{}/{} probes, {} measurements",
        e.probes, e.probes_considered, e.measurements
    )
}

pub(super) fn events_table(events: &[Event], with_site: bool) -> String {
    if events.is_empty() {
        return "<p class=\"empty\">No events in this period.</p>".into();
    }
    let mut s =
        String::from("<div class=\"scroll\"><table class=\"events\"><thead><tr><th>Event</th>");
    if with_site {
        s.push_str("<th>Site</th>");
    }
    s.push_str(
        "<th>Network</th><th>Method</th><th>Started</th><th>Ended</th><th>Evidence</th>\
         </tr></thead><tbody>",
    );
    for e in events {
        let (kind, class) = match (e.kind, e.ended_at.is_some()) {
            (EventKind::NewBlock, false) => ("new block", "ev-block"),
            (EventKind::NewBlock, true) => ("unblock", "ev-unblock"),
            (EventKind::Shutdown, false) => ("shutdown", "ev-shutdown"),
            (EventKind::Shutdown, true) => ("shutdown ended", "ev-unblock"),
            (EventKind::BlockMoved, _) => ("block moved", "ev-moved"),
        };
        let _ = write!(s, "<tr class=\"{class}\"><td>{kind}</td>");
        if with_site {
            match &e.domain {
                Some(d) => {
                    let _ = write!(
                        s,
                        "<td class=\"domain\"><a href=\"{}\">{}</a></td>",
                        esc(&site_href(d)),
                        esc(&truncate(d, MAX_DOMAIN))
                    );
                }
                None => s.push_str("<td><em>whole network</em></td>"),
            }
        }
        let method = match e.method {
            Some(m) => {
                let w = swatch(Status::Blocked, Some(m));
                format!("<span class=\"swatch {}\">{}</span>", w.class, w.label)
            }
            None if e.kind == EventKind::BlockMoved => "–".to_string(),
            None => {
                let w = swatch(Status::Offline, None);
                format!("<span class=\"swatch {}\">{}</span>", w.class, w.label)
            }
        };
        let ended = match e.ended_at {
            Some(t) => time(t),
            None => "<strong>ongoing</strong>".into(),
        };
        let mut ev = match (e.kind, e.evidence.previous_censor, e.evidence.censor) {
            (EventKind::BlockMoved, Some(from), Some(to)) => format!(
                "blocked at {from}, now at {to}, on {}",
                evidence(&e.evidence)
            ),
            _ => format!("opened on {}", evidence(&e.evidence)),
        };
        if let Some(end) = &e.end_evidence {
            let _ = write!(ev, "; closed on {}", evidence(end));
        }
        let _ = write!(
            s,
            "<td>{}</td><td>{method}</td><td>{}</td><td>{ended}</td><td>{}</td></tr>",
            esc(&network_name(Some(e.asn), e.country.as_deref())),
            time(e.started_at),
            esc(&ev),
        );
    }
    s.push_str("</tbody></table></div>");
    s
}

/// Values the page tests build on.
#[cfg(test)]
pub(super) mod fixtures {
    use chrono::{DateTime, TimeDelta, TimeZone, Utc};
    use witness_core::model::{Method, Status};

    use crate::model::{EventKind, Evidence, SiteStatus};
    use crate::store::Event;

    pub(crate) fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2025, 3, 1, 12, 0, 0).unwrap()
    }

    pub(crate) fn status(domain: &str, asn: u32, st: Status, method: Option<Method>) -> SiteStatus {
        let blocked = u64::from(st == Status::Blocked) * 2;
        let accessible = u64::from(st == Status::Accessible) * 2;
        SiteStatus {
            domain: domain.into(),
            asn,
            country: Some("KZ".into()),
            category: Some("NEWS".into()),
            status: st,
            method,
            probes: 2,
            blocked_probes: blocked,
            accessible_probes: accessible,
            blocked_share: (blocked + accessible > 0)
                .then(|| blocked as f64 / (blocked + accessible) as f64),
            methods: method.map(|m| [(m, blocked)].into()).unwrap_or_default(),
            last_measured: t0(),
            censor_hop: None,
            censor_asn: None,
            hop_agreeing: 0,
        }
    }

    pub(crate) fn event(kind: EventKind, domain: Option<&str>, ended: bool) -> Event {
        Event {
            id: "e1".into(),
            kind,
            domain: domain.map(Into::into),
            asn: 64500,
            country: Some("KZ".into()),
            category: None,
            method: domain.map(|_| Method::Tls),
            started_at: t0(),
            ended_at: ended.then(|| t0() + TimeDelta::hours(2)),
            evidence: Evidence {
                probes: 2,
                probes_considered: 3,
                measurements: 5,
                ..Evidence::default()
            },
            end_evidence: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_links_keep_the_other_filter_and_are_encoded() {
        assert_eq!(status_href(None, None), "/");
        assert_eq!(
            status_href(Some("KZ"), Some("NEWS")),
            "/?country=KZ&category=NEWS"
        );
        assert_eq!(status_href(None, Some("a&b")), "/?category=a%26b");
        assert_eq!(
            esc(&status_href(Some("KZ"), Some("X"))).to_string(),
            "/?country=KZ&amp;category=X"
        );
    }

    #[test]
    fn spans_read_naturally() {
        assert_eq!(span(TimeDelta::hours(6)), "6\u{a0}h");
        assert_eq!(span(TimeDelta::days(2)), "2\u{a0}d");
        assert_eq!(span(TimeDelta::minutes(90)), "90\u{a0}min");
    }
}
