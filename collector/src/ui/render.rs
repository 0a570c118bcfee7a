//! The pages as pure functions of what the store returned: no I/O here, so every page is
//! unit-tested without a server. Every value that came from a probe is written through
//! [`esc`] (and [`url_component`] inside links).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::sync::LazyLock;

use chrono::{DateTime, TimeDelta, Utc};
use witness_core::model::{Method, Status};

use super::chart;
use super::html::{esc, truncate, url_component};
use crate::model::{EventKind, SiteStatus};
use crate::store::{Event, HistoryRow, MeasurementRecord, ProbeNetworkRow};

/// Most sites (rows) in the matrix; the most blocked come first.
pub const MAX_SITES: usize = 150;
/// Most networks (columns) in the matrix and lanes in a site's chart.
pub const MAX_NETWORKS: usize = 30;
/// Most hourly rows in a site's table.
pub const MAX_HOURLY_ROWS: usize = 48;
/// Most characters of a verdict reason shown.
const MAX_REASON: usize = 300;
/// Most characters of a domain in a matrix row header (the full name is in its title).
const MAX_DOMAIN: usize = 48;

/// How one verdict looks: the CSS class, its colours and its short label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Swatch {
    /// CSS class (`v-...`), also on the SVG segments.
    pub class: &'static str,
    /// Background (cells) and fill (chart).
    pub bg: &'static str,
    /// Text colour on `bg`.
    pub fg: &'static str,
    /// Short label in a cell.
    pub label: &'static str,
    /// What it means, for the legend.
    pub meaning: &'static str,
}

const fn sw(
    class: &'static str,
    bg: &'static str,
    fg: &'static str,
    label: &'static str,
    meaning: &'static str,
) -> Swatch {
    Swatch {
        class,
        bg,
        fg,
        label,
        meaning,
    }
}

/// Every swatch, in legend order. Blocking methods each have their own hue; the states that
/// are not censorship are greens and greys. Labels carry the same information as the colours.
pub const SWATCHES: &[Swatch] = &[
    sw("v-ok", "#1f7a35", "#ffffff", "ok", "accessible"),
    sw(
        "v-dns",
        "#d62728",
        "#ffffff",
        "dns",
        "blocked: DNS tampering",
    ),
    sw("v-tcp", "#7b3fa0", "#ffffff", "tcp", "blocked: IP blocking"),
    sw(
        "v-tls",
        "#f28e1c",
        "#000000",
        "tls",
        "blocked: SNI filtering",
    ),
    sw(
        "v-mitm",
        "#1f4fc2",
        "#ffffff",
        "mitm",
        "blocked: TLS interception",
    ),
    sw(
        "v-http",
        "#8c564b",
        "#ffffff",
        "http",
        "blocked: blockpage or reset",
    ),
    sw(
        "v-throttle",
        "#e6c300",
        "#000000",
        "throttle",
        "blocked: throttled",
    ),
    sw(
        "v-blocked",
        "#a00000",
        "#ffffff",
        "blocked",
        "blocked: method unknown",
    ),
    sw(
        "v-down",
        "#8a8a8a",
        "#ffffff",
        "down",
        "down for the control too",
    ),
    sw("v-inconclusive", "#d4d4d4", "#000000", "?", "inconclusive"),
    sw(
        "v-offline",
        "#333333",
        "#ffffff",
        "offline",
        "network offline",
    ),
    sw("v-none", "#f3f3f3", "#666666", "–", "no data"),
];

fn by_class(class: &str) -> &'static Swatch {
    SWATCHES
        .iter()
        .find(|s| s.class == class)
        .unwrap_or(&SWATCHES[SWATCHES.len() - 1])
}

/// The swatch of a verdict.
pub fn swatch(status: Status, method: Option<Method>) -> &'static Swatch {
    by_class(match (status, method) {
        (Status::Accessible, _) => "v-ok",
        (Status::Blocked, Some(Method::Dns)) => "v-dns",
        (Status::Blocked, Some(Method::Tcp)) => "v-tcp",
        (Status::Blocked, Some(Method::Tls)) => "v-tls",
        (Status::Blocked, Some(Method::Mitm)) => "v-mitm",
        (Status::Blocked, Some(Method::Http)) => "v-http",
        (Status::Blocked, Some(Method::Throttle)) => "v-throttle",
        (Status::Blocked, None) => "v-blocked",
        (Status::Down, _) => "v-down",
        (Status::Inconclusive, _) => "v-inconclusive",
        (Status::Offline, _) => "v-offline",
    })
}

/// The swatch of a cell without data.
pub fn no_data() -> &'static Swatch {
    by_class("v-none")
}

/// The stylesheet: the static rules plus one rule per swatch, generated from [`SWATCHES`] so
/// the colours live in one place.
pub static STYLESHEET: LazyLock<String> = LazyLock::new(|| {
    let mut css = include_str!("style.css").to_string();
    for s in SWATCHES {
        let _ = writeln!(
            css,
            ".{c}{{background:{bg};color:{fg}}}.{c} a{{color:{fg}}}svg .{c}{{fill:{bg}}}",
            c = s.class,
            bg = s.bg,
            fg = s.fg
        );
    }
    css
});

/// A short version of the stylesheet's contents, to make its URL change when it does.
pub static STYLESHEET_VERSION: LazyLock<String> = LazyLock::new(|| {
    use sha2::{Digest, Sha256};
    hex::encode(&Sha256::digest(STYLESHEET.as_bytes())[..6])
});

/// `AS64500 KZ`, `AS64500`, or `no ASN`.
pub fn network_name(asn: Option<u32>, country: Option<&str>) -> String {
    match (asn, country) {
        (Some(a), Some(c)) => format!("AS{a} {c}"),
        (Some(a), None) => format!("AS{a}"),
        (None, Some(c)) => format!("no ASN {c}"),
        (None, None) => "no ASN".into(),
    }
}

fn time(t: DateTime<Utc>) -> String {
    format!(
        "<time datetime=\"{}\">{}</time>",
        t.format("%Y-%m-%dT%H:%M:%SZ"),
        t.format("%Y-%m-%d %H:%M UTC")
    )
}

/// `6 h`, `90 min`, `2 d`.
fn span(d: TimeDelta) -> String {
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

fn legend() -> String {
    let mut s = String::from("<ul class=\"legend\" aria-label=\"Legend\">");
    for w in SWATCHES {
        let _ = write!(
            s,
            "<li><span class=\"swatch {}\">{}</span> {}</li>",
            w.class, w.label, w.meaning
        );
    }
    s.push_str("</ul>");
    s
}

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

fn evidence(e: &crate::model::Evidence) -> String {
    format!(
        "{}/{} probes, {} measurements",
        e.probes, e.probes_considered, e.measurements
    )
}

fn events_table(events: &[Event], with_site: bool) -> String {
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
    use super::*;
    use crate::model::Evidence;
    use chrono::TimeZone;

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2025, 3, 1, 12, 0, 0).unwrap()
    }

    fn status(domain: &str, asn: u32, st: Status, method: Option<Method>) -> SiteStatus {
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
        let site = SiteView {
            now: t0(),
            since: t0() - TimeDelta::days(7),
            until: t0(),
            days: 7,
            window: TimeDelta::hours(6),
            domain: "news.test".into(),
            statuses: vec![located, no_asn, unlocated],
            history: vec![],
            history_truncated: false,
            latest: vec![],
            events: vec![moved],
        };
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

    fn event(kind: EventKind, domain: Option<&str>, ended: bool) -> Event {
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

    #[test]
    fn every_method_has_its_own_colour_class_and_label() {
        let mut seen = BTreeSet::new();
        for m in Method::ALL {
            let w = swatch(Status::Blocked, Some(*m));
            assert_eq!(w.label, m.as_str(), "the label names the method");
            assert_eq!(w.class, format!("v-{}", m.as_str()));
            assert!(seen.insert(w.bg), "{m}: colour {} is used twice", w.bg);
        }
        for st in [
            Status::Accessible,
            Status::Down,
            Status::Inconclusive,
            Status::Offline,
        ] {
            let w = swatch(st, None);
            assert!(seen.insert(w.bg), "{st}: colour {} is used twice", w.bg);
        }
        assert!(seen.insert(no_data().bg));
        assert!(seen.insert(swatch(Status::Blocked, None).bg));
        assert_eq!(seen.len(), SWATCHES.len(), "every swatch is reachable");
    }

    #[test]
    fn the_stylesheet_has_a_rule_per_swatch() {
        for w in SWATCHES {
            assert!(
                STYLESHEET.contains(&format!(".{}{{background:{}", w.class, w.bg)),
                "{}",
                w.class
            );
        }
        assert_eq!(STYLESHEET_VERSION.len(), 12);
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
    fn hostile_values_are_escaped_everywhere() {
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

        let site = SiteView {
            now: t0(),
            since: t0() - TimeDelta::days(7),
            until: t0(),
            days: 7,
            window: TimeDelta::hours(6),
            domain: evil.into(),
            statuses: vec![st],
            history: vec![HistoryRow {
                hour: t0() - TimeDelta::hours(1),
                asn: Some(64500),
                country: Some("<q>".into()),
                status: Status::Blocked,
                method: Some(Method::Http),
                measurements: 1,
                probes: 1,
            }],
            history_truncated: false,
            latest: vec![MeasurementRecord {
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
            }],
            events: vec![],
        };
        let page = site_page(&site);
        for bad in ["<script", "<i>", "<q>", "<iframe", "'&.test"] {
            assert!(!page.contains(bad), "{bad} unescaped in:\n{page}");
        }
        assert!(page.contains("blockpage &lt;iframe"));
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
