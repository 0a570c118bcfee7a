//! The status page: where sites are blocked now, as a matrix of sites × networks, with
//! shutdown notices, filters, recent events and probes per network. A pure function of what
//! the store returned ([`StatusView`]).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

use chrono::{DateTime, TimeDelta, Utc};
use witness_core::model::Status;

use super::html::{esc, truncate};
use super::palette::{legend, no_data, swatch};
use super::render::{
    events_table, layout, network_name, site_href, span, status_href, time, MAX_DOMAIN,
    MAX_NETWORKS,
};
use crate::model::SiteStatus;
use crate::store::{Event, ProbeNetworkRow};

/// Most sites (rows) in the matrix; the most blocked come first.
pub const MAX_SITES: usize = 150;

/// What the status page shows (already filtered by country and category).
#[derive(Clone, Debug)]
pub struct StatusView {
    /// When the page was made.
    pub now: DateTime<Utc>,
    /// The aggregation window the statuses cover.
    pub window: TimeDelta,
    /// Country filter.
    pub country: Option<String>,
    /// Category filter.
    pub category: Option<String>,
    /// Countries to offer in the filter.
    pub countries: Vec<String>,
    /// Categories to offer in the filter.
    pub categories: Vec<String>,
    /// Current state per site and network.
    pub sites: Vec<SiteStatus>,
    /// Probes per network in the window.
    pub networks: Vec<ProbeNetworkRow>,
    /// Recent events, newest first.
    pub events: Vec<Event>,
    /// Open shutdown events.
    pub shutdowns: Vec<Event>,
    /// Networks that uploaded in the window but whose every verdict was `offline` (with too
    /// few probes for a shutdown event, or before one opens).
    pub offline_networks: BTreeSet<u32>,
}

/// A column of the matrix.
#[derive(Clone, Debug, PartialEq)]
pub struct Column {
    /// Network.
    pub asn: u32,
    /// Country claimed by most of its probes.
    pub country: Option<String>,
    /// Probes that uploaded in the window.
    pub probes: u64,
    /// An open shutdown event.
    pub shutdown: bool,
}

/// A row of the matrix: one site, one cell per column.
#[derive(Clone, Debug)]
pub struct Row<'a> {
    /// Site.
    pub domain: &'a str,
    /// Category.
    pub category: Option<&'a str>,
    /// Per column, the site's state there.
    pub cells: Vec<Option<&'a SiteStatus>>,
}

/// The block matrix, bounded to [`MAX_SITES`] × [`MAX_NETWORKS`].
#[derive(Clone, Debug)]
pub struct Matrix<'a> {
    /// Networks, by country then ASN.
    pub columns: Vec<Column>,
    /// Sites, the most blocked first.
    pub rows: Vec<Row<'a>>,
    /// Sites before bounding.
    pub total_sites: usize,
    /// Networks before bounding.
    pub total_networks: usize,
}

impl<'a> Matrix<'a> {
    /// Build the matrix of `view`, keeping the `max_sites` sites with the largest blocked share
    /// summed over networks and the `max_networks` networks with the most data.
    pub fn build(view: &'a StatusView, max_sites: usize, max_networks: usize) -> Matrix<'a> {
        // Columns: every network with a status or an uploading probe.
        let mut nets: BTreeMap<u32, (BTreeMap<String, u64>, u64, u64)> = BTreeMap::new();
        for s in &view.sites {
            let n = nets.entry(s.asn).or_default();
            if let Some(c) = &s.country {
                *n.0.entry(c.clone()).or_default() += 0;
            }
            n.2 += 1;
        }
        for p in &view.networks {
            let Some(asn) = p.asn else { continue };
            let n = nets.entry(asn).or_default();
            if let Some(c) = &p.country {
                *n.0.entry(c.clone()).or_default() += p.probes;
            }
            n.1 += p.probes;
        }
        for e in &view.shutdowns {
            nets.entry(e.asn).or_default();
        }
        let total_networks = nets.len();
        let mut ranked: Vec<_> = nets.into_iter().collect();
        ranked.sort_by_key(|(asn, (_, probes, cells))| (std::cmp::Reverse(cells + probes), *asn));
        ranked.truncate(max_networks);
        let mut columns: Vec<Column> = ranked
            .into_iter()
            .map(|(asn, (countries, probes, _))| Column {
                asn,
                country: countries
                    .into_iter()
                    .max_by_key(|(c, n)| (*n, std::cmp::Reverse(c.clone())))
                    .map(|(c, _)| c),
                probes,
                shutdown: view.shutdowns.iter().any(|e| e.asn == asn),
            })
            .collect();
        columns.sort_by(|a, b| (&a.country, a.asn).cmp(&(&b.country, b.asn)));
        let index: BTreeMap<u32, usize> = columns
            .iter()
            .enumerate()
            .map(|(i, c)| (c.asn, i))
            .collect();

        // Rows: one per site.
        let mut sites: BTreeMap<&str, Row<'a>> = BTreeMap::new();
        for s in &view.sites {
            let row = sites.entry(&s.domain).or_insert_with(|| Row {
                domain: &s.domain,
                category: None,
                cells: vec![None; columns.len()],
            });
            if row.category.is_none() {
                row.category = s.category.as_deref();
            }
            if let Some(&i) = index.get(&s.asn) {
                row.cells[i] = Some(s);
            }
        }
        let total_sites = sites.len();
        let score = |r: &Row| -> f64 {
            r.cells
                .iter()
                .flatten()
                .filter(|s| s.status == Status::Blocked)
                .map(|s| s.blocked_share.unwrap_or(1.0))
                .sum()
        };
        let mut rows: Vec<(f64, Row<'a>)> = sites.into_values().map(|r| (score(&r), r)).collect();
        // Most blocked first, then by name (the map gave name order; the sort is stable).
        rows.sort_by(|a, b| b.0.total_cmp(&a.0));
        rows.truncate(max_sites);
        Matrix {
            columns,
            rows: rows.into_iter().map(|(_, r)| r).collect(),
            total_sites,
            total_networks,
        }
    }
}

fn cell(s: Option<&SiteStatus>, domain: &str, column: &Column) -> String {
    let Some(s) = s else {
        // A network in a shutdown gives no verdict: say why the cell is empty.
        let (w, title) = if column.shutdown {
            (swatch(Status::Offline, None), "network offline (shutdown)")
        } else {
            (no_data(), "no data")
        };
        return format!(
            "<td class=\"cell {}\" title=\"{title}\">{}</td>",
            w.class, w.label
        );
    };
    let w = swatch(s.status, s.method);
    let conclusive = s.blocked_probes + s.accessible_probes;
    let count = if s.status == Status::Blocked {
        format!("{}/{}", s.blocked_probes, conclusive)
    } else if conclusive > 0 {
        format!("{}/{}", s.accessible_probes, conclusive)
    } else {
        format!("{}", s.probes)
    };
    let what = match (s.status, s.method) {
        (Status::Blocked, Some(m)) => format!(
            "blocked by {m}: {} of {conclusive} probes",
            s.blocked_probes
        ),
        (Status::Accessible, _) => {
            format!("accessible: {} of {conclusive} probes", s.accessible_probes)
        }
        (st, _) => format!("{st}: {} probes", s.probes),
    };
    let mut title = format!(
        "{} on {}: {what}; last measured {}",
        domain,
        network_name(Some(column.asn), column.country.as_deref()),
        s.last_measured.format("%Y-%m-%d %H:%M UTC")
    );
    if s.methods.len() > 1 {
        let all: Vec<String> = s.methods.iter().map(|(m, n)| format!("{m} {n}")).collect();
        let _ = write!(title, " (methods: {})", all.join(", "));
    }
    format!(
        "<td class=\"cell {}\" data-status=\"{}\" data-method=\"{}\"><a href=\"{}\" title=\"{}\">\
         {}<small>{count}</small></a></td>",
        w.class,
        s.status,
        s.method.map(|m| m.as_str()).unwrap_or(""),
        esc(&site_href(domain)),
        esc(&title),
        w.label,
    )
}

fn filter_form(view: &StatusView) -> String {
    let options = |name: &str, all: &[String], current: Option<&str>, any: &str| {
        let mut s =
            format!("<select name=\"{name}\" id=\"f-{name}\"><option value=\"\">{any}</option>");
        for v in all {
            let _ = write!(
                s,
                "<option value=\"{v}\"{}>{v}</option>",
                if Some(v.as_str()) == current {
                    " selected"
                } else {
                    ""
                },
                v = esc(v)
            );
        }
        s.push_str("</select>");
        s
    };
    let mut s = String::from("<form class=\"filters\" method=\"get\" action=\"/\">");
    let _ =
        write!(
        s,
        "<label for=\"f-country\">Country</label>{}<label for=\"f-category\">Category</label>{}\
         <button type=\"submit\">Filter</button>",
        options("country", &view.countries, view.country.as_deref(), "all"),
        options("category", &view.categories, view.category.as_deref(), "all"),
    );
    if view.country.is_some() || view.category.is_some() {
        s.push_str(" <a href=\"/\">clear filters</a>");
    }
    s.push_str("</form>");
    s
}

/// One line on the messaging apps (app tests, `app:NAME` of category COMT): where each is
/// blocked, or that they work. Nothing when no probe measured them.
fn messaging_line(view: &StatusView) -> String {
    let apps: Vec<&SiteStatus> = view
        .sites
        .iter()
        .filter(|s| s.domain.starts_with("app:") && s.category.as_deref() == Some("COMT"))
        .collect();
    if apps.is_empty() {
        return String::new();
    }
    let blocked: Vec<String> = apps
        .iter()
        .filter(|s| s.status == Status::Blocked)
        .take(MAX_NETWORKS)
        .map(|s| {
            format!(
                "{} on {}{}",
                esc(s.domain.trim_start_matches("app:")),
                esc(&network_name(Some(s.asn), s.country.as_deref())),
                s.method.map(|m| format!(" ({m})")).unwrap_or_default()
            )
        })
        .collect();
    if blocked.is_empty() {
        "<p class=\"sub messaging\"><strong>Messaging apps:</strong> no network sees one \
         blocked.</p>"
            .to_string()
    } else {
        format!(
            "<div class=\"notice messaging\" role=\"alert\"><strong>Messaging blocked:</strong> \
             {}.</div>",
            blocked.join("; ")
        )
    }
}

/// The status page: shutdown notices, filters, the block matrix with its legend, recent
/// events and probes per network.
pub fn status_page(view: &StatusView) -> String {
    let m = Matrix::build(view, MAX_SITES, MAX_NETWORKS);
    let mut s = String::from("<h1>Where sites are blocked now</h1>");
    let _ = write!(
        s,
        "<p class=\"sub\">Current verdict of each site on each network (ASN), from every probe's \
         latest measurement in the last {}. Generated {}.</p>",
        span(view.window),
        time(view.now)
    );
    for e in &view.shutdowns {
        let _ = write!(
            s,
            "<div class=\"notice\" role=\"alert\"><strong>Network shutdown:</strong> {} has been \
             offline since {} ({} of {} probes offline). Sites on it get no verdict until it \
             comes back; offline is never counted as blocked.</div>",
            esc(&network_name(Some(e.asn), e.country.as_deref())),
            time(e.started_at),
            e.evidence.probes,
            e.evidence.probes_considered
        );
    }
    s.push_str(&messaging_line(view));
    s.push_str(&filter_form(view));

    s.push_str("<section><h2>Block matrix</h2>");
    if m.rows.is_empty() && m.columns.is_empty() {
        s.push_str(
            "<p class=\"empty\">No measurements in this period yet. Probes upload with \
             <code>witness run --upload</code>.</p>",
        );
    } else {
        let blocked = m
            .rows
            .iter()
            .filter(|r| {
                r.cells
                    .iter()
                    .flatten()
                    .any(|c| c.status == Status::Blocked)
            })
            .count();
        let _ = write!(
            s,
            "<p class=\"sub\">{} sites on {} networks; {} blocked on at least one network.",
            m.total_sites, m.total_networks, blocked
        );
        if m.total_sites > m.rows.len() || m.total_networks > m.columns.len() {
            let _ = write!(
                s,
                " <strong class=\"bounded\">Showing the {} most blocked sites (blocked share \
                 summed over networks) on the {} networks with the most data; filter by \
                 country or category, or get everything from \
                 <a href=\"/api/v1/status\">/api/v1/status</a>.</strong>",
                m.rows.len(),
                m.columns.len()
            );
        }
        s.push_str("</p><div class=\"scroll\"><table class=\"matrix\" id=\"matrix\"><thead><tr><th class=\"corner\">Site</th>");
        for c in &m.columns {
            let _ = write!(
                s,
                "<th class=\"net{}\" scope=\"col\" data-asn=\"{}\">AS{}<br>",
                if c.shutdown { " shutdown" } else { "" },
                c.asn,
                c.asn
            );
            if let Some(country) = &c.country {
                let _ = write!(
                    s,
                    "<a href=\"{}\">{}</a> · ",
                    esc(&status_href(Some(country), view.category.as_deref())),
                    esc(country)
                );
            }
            let _ = write!(
                s,
                "<span title=\"probes that uploaded in the window\">{} probe{}</span>",
                c.probes,
                if c.probes == 1 { "" } else { "s" }
            );
            if c.shutdown {
                s.push_str("<br><strong>shutdown</strong>");
            }
            s.push_str("</th>");
        }
        s.push_str("</tr></thead><tbody>");
        for r in &m.rows {
            let _ = write!(
                s,
                "<tr><th scope=\"row\" class=\"domain\"><a href=\"{}\" title=\"{}\">{}</a>",
                esc(&site_href(r.domain)),
                esc(r.domain),
                esc(&truncate(r.domain, MAX_DOMAIN))
            );
            if let Some(cat) = r.category {
                let _ = write!(
                    s,
                    " <a class=\"cat\" href=\"{}\">{}</a>",
                    esc(&status_href(view.country.as_deref(), Some(cat))),
                    esc(cat)
                );
            }
            s.push_str("</th>");
            for (c, col) in r.cells.iter().zip(&m.columns) {
                s.push_str(&cell(*c, r.domain, col));
            }
            s.push_str("</tr>");
        }
        s.push_str("</tbody></table></div>");
    }
    s.push_str(&legend());
    s.push_str("</section>");

    s.push_str("<section><h2>Recent events</h2>");
    s.push_str(&events_table(&view.events, true));
    s.push_str("</section>");

    let _ = write!(
        s,
        "<section><h2>Probes per network</h2><p class=\"sub\">Probes that uploaded in the last \
         {} (never a probe id or an address).</p>",
        span(view.window)
    );
    if view.networks.is_empty() {
        s.push_str("<p class=\"empty\">No probe uploaded in this period.</p>");
    } else {
        s.push_str(
            "<div class=\"scroll\"><table class=\"networks\"><thead><tr><th>Network</th>\
             <th>Country</th><th>Probes</th><th>Measurements</th><th>Last upload</th>\
             <th>State</th></tr></thead><tbody>",
        );
        for n in view.networks.iter().take(MAX_NETWORKS * 4) {
            let down = n
                .asn
                .is_some_and(|a| view.shutdowns.iter().any(|e| e.asn == a));
            // No shutdown event (one probe is below min_probes), but every verdict on the
            // network was "offline": it is not online.
            let offline = n.asn.is_some_and(|a| view.offline_networks.contains(&a));
            let _ = write!(
                s,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                n.asn
                    .map(|a| format!("AS{a}"))
                    .unwrap_or_else(|| "no ASN".into()),
                esc(n.country.as_deref().unwrap_or("–")),
                n.probes,
                n.measurements,
                time(n.last_seen),
                if down {
                    "<strong>shutdown</strong>"
                } else if offline {
                    "<strong>offline</strong>"
                } else {
                    "online"
                },
            );
        }
        s.push_str("</tbody></table></div>");
    }
    s.push_str("</section>");

    let title = match (&view.country, &view.category) {
        (Some(c), Some(k)) => format!("Status: {c}, {k}"),
        (Some(c), None) => format!("Status: {c}"),
        (None, Some(k)) => format!("Status: {k}"),
        (None, None) => "Status".into(),
    };
    layout(&title, &s)
}

#[cfg(test)]
mod tests {
    use super::super::render::fixtures::{event, status, t0};
    use super::*;
    use crate::model::EventKind;
    use witness_core::model::Method;

    fn empty_view() -> StatusView {
        StatusView {
            now: t0(),
            window: TimeDelta::hours(6),
            country: None,
            category: None,
            countries: vec![],
            categories: vec![],
            sites: vec![],
            networks: vec![],
            events: vec![],
            shutdowns: vec![],
            offline_networks: BTreeSet::new(),
        }
    }

    #[test]
    fn an_empty_store_renders_a_complete_page() {
        let page = status_page(&empty_view());
        assert!(page.starts_with("<!DOCTYPE html>"));
        assert!(page.contains("name=\"viewport\""));
        assert!(page.contains("No measurements in this period yet"));
        assert!(page.contains("No events in this period."));
        assert!(page.contains("No probe uploaded"));
        assert!(page.contains("class=\"legend\""));
        assert!(!page.contains("id=\"matrix\""));
        assert!(page.ends_with("</html>\n"));
    }

    #[test]
    fn the_matrix_has_a_coloured_labelled_cell_per_site_and_network() {
        let mut view = empty_view();
        view.sites = vec![
            status("news.test", 64500, Status::Blocked, Some(Method::Tls)),
            status("news.test", 64501, Status::Blocked, Some(Method::Dns)),
            status("fine.test", 64500, Status::Accessible, None),
        ];
        let page = status_page(&view);
        assert_eq!(page.matches("<th class=\"net\"").count(), 2, "{page}");
        assert!(page.contains("<td class=\"cell v-tls\""));
        assert!(page.contains("<td class=\"cell v-dns\""));
        assert!(page.contains("<td class=\"cell v-ok\""));
        // fine.test has no data on AS64501.
        assert!(page.contains("<td class=\"cell v-none\""));
        // Most blocked first.
        assert!(page.find(">news.test<").unwrap() < page.find(">fine.test<").unwrap());
        assert!(page.contains("href=\"/sites/news.test\""));
    }

    #[test]
    fn messaging_apps_get_a_line_of_their_own() {
        let mut view = empty_view();
        assert!(!status_page(&view).contains("Messaging"));
        let mut app = status("app:telegram", 64500, Status::Blocked, Some(Method::Tcp));
        app.category = Some("COMT".into());
        let mut fine = status("app:whatsapp", 64500, Status::Accessible, None);
        fine.category = Some("COMT".into());
        view.sites = vec![fine.clone()];
        assert!(status_page(&view).contains("no network sees one blocked"));
        view.sites = vec![app, fine];
        let page = status_page(&view);
        assert!(
            page.contains("Messaging blocked:</strong> telegram on"),
            "{page}"
        );
        assert!(page.contains("(tcp)"), "{page}");
        let notice = &page[page.find("Messaging blocked").unwrap()..];
        let notice = &notice[..notice.find("</div>").unwrap()];
        assert!(!notice.contains("whatsapp"), "{notice}");
    }

    #[test]
    fn hostile_values_are_escaped_on_the_status_page() {
        let evil = "<script>alert(1)</script>\"'&.test";
        let mut view = empty_view();
        let mut st = status(evil, 64500, Status::Blocked, Some(Method::Http));
        st.category = Some("<i>CAT".into());
        st.country = Some("<q>".into());
        view.sites = vec![st.clone()];
        view.country = Some("\"><x".into());
        view.countries = vec!["<y>".into()];
        view.categories = vec!["<z>".into()];
        let mut ev = event(EventKind::NewBlock, Some(evil), false);
        ev.country = Some("<c>".into());
        view.events = vec![ev];
        let page = status_page(&view);
        for bad in [
            "<script", "<i>", "<q>", "<x", "<y>", "<z>", "<c>", "'&.test",
        ] {
            assert!(!page.contains(bad), "{bad} unescaped in:\n{page}");
        }
        assert!(page.contains("&lt;script&gt;"));
        assert!(page.contains("/sites/%3Cscript%3E"));
    }

    #[test]
    fn the_matrix_is_bounded_with_a_note() {
        let mut view = empty_view();
        for i in 0..10 {
            let st = if i % 3 == 0 {
                Status::Blocked
            } else {
                Status::Accessible
            };
            let m = (st == Status::Blocked).then_some(Method::Dns);
            view.sites.push(status(&format!("s{i}.test"), 64500, st, m));
            view.sites
                .push(status(&format!("s{i}.test"), 64501 + i, st, m));
        }
        let m = Matrix::build(&view, 4, 3);
        assert_eq!((m.total_sites, m.total_networks), (10, 11));
        assert_eq!((m.rows.len(), m.columns.len()), (4, 3));
        // The blocked sites come first.
        let first: Vec<_> = m.rows.iter().map(|r| r.domain).collect();
        assert_eq!(first, ["s0.test", "s3.test", "s6.test", "s9.test"]);
        // The network every site was measured on is kept.
        assert!(m.columns.iter().any(|c| c.asn == 64500));
        let mut view2 = view.clone();
        for i in 0..(MAX_SITES + 5) {
            view2.sites.push(status(
                &format!("x{i}.test"),
                64500,
                Status::Accessible,
                None,
            ));
        }
        let page = status_page(&view2);
        assert!(
            page.contains("class=\"bounded\""),
            "a note says the matrix is cut"
        );
        assert_eq!(page.matches("<tr><th scope=\"row\"").count(), MAX_SITES);
    }

    #[test]
    fn shutdowns_get_a_notice_and_a_marked_column() {
        let mut view = empty_view();
        view.shutdowns = vec![event(EventKind::Shutdown, None, false)];
        view.events = view.shutdowns.clone();
        view.sites = vec![status("a.test", 64501, Status::Accessible, None)];
        let page = status_page(&view);
        assert!(page.contains("class=\"notice\""));
        assert!(page.contains("Network shutdown:</strong> AS64500 KZ"));
        assert!(page.contains("<th class=\"net shutdown\""));
        assert!(page.contains("whole network"));
    }

    #[test]
    fn events_show_kind_times_and_evidence() {
        let mut view = empty_view();
        view.events = vec![
            event(EventKind::NewBlock, Some("a.test"), false),
            event(EventKind::NewBlock, Some("b.test"), true),
        ];
        let page = status_page(&view);
        assert!(page.contains("<td>new block</td>"));
        assert!(page.contains("<td>unblock</td>"));
        assert!(page.contains("ongoing"));
        assert!(page.contains("2025-03-01 14:00 UTC"), "end time");
        assert!(page.contains("opened on 2/3 probes, 5 measurements"));
    }
}
