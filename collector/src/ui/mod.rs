//! A status page served by the collector itself, for people without Grafana: plain HTML
//! rendered on the server, no script, no external fetch, readable on a phone.
//!
//! - `GET /` and `GET /status`: the block matrix (sites × networks), recent events, probes per
//!   network, shutdown notices; `?country=KZ&category=NEWS` filter it.
//! - `GET /sites/{domain}`: the site's history chart (inline SVG) and recent verdicts per
//!   network; `?days=1..30` (default 7).
//! - `GET /ui/style.css`: the stylesheet, compiled into the binary.
//!
//! Data comes from probes and is hostile: every value is escaped ([`html`]), and the pages
//! are sent with a Content-Security-Policy that allows no script and no inline style, so an
//! escaping mistake could still not run anything. The handlers only fetch; the pages are pure
//! functions: [`status`] and [`site`] (one page each), [`chart`] (the site's SVG), [`render`]
//! (what the pages share), [`palette`] (how verdicts look) and [`html`] (escaping).

pub mod chart;
pub mod html;
pub mod palette;
pub mod render;
pub mod site;
pub mod status;

use std::collections::BTreeSet;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use chrono::{DurationRound, TimeDelta, Utc};
use serde::Deserialize;

use crate::model::EventKind;
use crate::readmodel;
use crate::state::AppState;
use crate::store::{Filter, StoreError};

/// Recent events on the status page.
const EVENTS_SHOWN: u32 = 30;
/// How far back the status page looks for events (open ones always show).
const EVENTS_DAYS: i64 = 7;
/// Most rows a page asks the store for in one query (statuses, probes per network, a site's
/// hourly history): the read API's largest `limit`, so a page never costs the store more than
/// one API call can. The pages themselves show far fewer ([`render::MAX_NETWORKS`],
/// [`status::MAX_SITES`]).
const MAX_ROWS: u32 = 10_000;
/// Hourly rows asked for a site's history.
const HISTORY_ROWS: u32 = MAX_ROWS;
/// Default and largest range of a site's chart, in days.
const DEFAULT_DAYS: u32 = 7;
const MAX_DAYS: u32 = 30;

/// Only our own stylesheet; no script at all, no inline style, no framing.
const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self' data:; \
                   form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/// The page routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(status_page))
        .route("/status", get(status_page))
        .route("/sites/{domain}", get(site_page))
        .route("/ui/style.css", get(stylesheet))
}

/// Query parameters of the pages. Unknown ones are ignored (a page is for people; the read
/// API is the strict one). Empty values, as a form sends for "all", mean no filter.
#[derive(Debug, Default, Deserialize)]
pub struct PageQuery {
    /// Two-letter country code.
    pub country: Option<String>,
    /// Citizen Lab category code.
    pub category: Option<String>,
    /// Site page: days of history.
    pub days: Option<String>,
}

/// Why a page could not be made; answered with an HTML page.
#[derive(Debug)]
pub enum PageError {
    /// 400, with what was wrong.
    BadRequest(String),
    /// 404, with what is missing.
    NotFound(String),
    /// 500; the detail is logged, never shown.
    Internal(StoreError),
}

impl From<StoreError> for PageError {
    fn from(e: StoreError) -> Self {
        PageError::Internal(e)
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let (status, title, message) = match self {
            PageError::BadRequest(m) => (StatusCode::BAD_REQUEST, "Bad request", m),
            PageError::NotFound(m) => (StatusCode::NOT_FOUND, "Not found", m),
            PageError::Internal(e) => {
                tracing::error!(error = %e, "status page failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Internal error",
                    "The collector could not read its store. Try again later.".into(),
                )
            }
        };
        page(status, render::error_page(title, &message))
    }
}

/// An HTML response with the page's security headers.
fn page(status: StatusCode, body: String) -> Response {
    let mut resp = (status, body).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

fn page_query(q: Result<Query<PageQuery>, QueryRejection>) -> Result<PageQuery, PageError> {
    q.map(|Query(q)| q)
        .map_err(|e| PageError::BadRequest(e.body_text()))
}

/// `None` for absent or empty.
fn nonempty(v: Option<String>) -> Option<String> {
    v.map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

fn country_param(v: Option<String>) -> Result<Option<String>, PageError> {
    match nonempty(v) {
        Some(c) if c.len() == 2 && c.bytes().all(|b| b.is_ascii_alphabetic()) => {
            Ok(Some(c.to_ascii_uppercase()))
        }
        Some(_) => Err(PageError::BadRequest(
            "country must be a two-letter code, e.g. KZ".into(),
        )),
        None => Ok(None),
    }
}

fn category_param(v: Option<String>) -> Result<Option<String>, PageError> {
    match nonempty(v) {
        Some(c)
            if c.len() <= 32
                && c.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') =>
        {
            Ok(Some(c))
        }
        Some(_) => Err(PageError::BadRequest(
            "category must be a Citizen Lab code, e.g. NEWS".into(),
        )),
        None => Ok(None),
    }
}

fn days_param(v: Option<String>) -> Result<u32, PageError> {
    match nonempty(v) {
        None => Ok(DEFAULT_DAYS),
        Some(d) => match d.parse::<u32>() {
            Ok(n) if (1..=MAX_DAYS).contains(&n) => Ok(n),
            _ => Err(PageError::BadRequest(format!(
                "days must be a whole number from 1 to {MAX_DAYS}"
            ))),
        },
    }
}

/// `GET /` and `GET /status`.
async fn status_page(
    State(state): State<AppState>,
    q: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Response, PageError> {
    let q = page_query(q)?;
    let country = country_param(q.country)?;
    let category = category_param(q.category)?;
    let now = Utc::now();
    let since = now - state.params.window;
    let window = Filter {
        since: Some(since),
        until: Some(now),
        limit: MAX_ROWS,
        ..Filter::default()
    };
    let networks_filter = Filter {
        country: country.clone(),
        ..window.clone()
    };
    let events_filter = Filter {
        country: country.clone(),
        category: category.clone(),
        since: Some(now - TimeDelta::days(EVENTS_DAYS)),
        limit: EVENTS_SHOWN,
        ..Filter::default()
    };
    let shutdowns_filter = Filter {
        country: country.clone(),
        kind: Some(EventKind::Shutdown),
        open: Some(true),
        limit: 100,
        ..Filter::default()
    };
    let (all, networks, events, shutdowns) = futures::try_join!(
        // Unfiltered: the filter form offers every country and category seen.
        readmodel::site_statuses(state.store.as_ref(), &window, &state.params, now),
        state.store.probe_networks(&networks_filter),
        state.store.events(&events_filter),
        state.store.events(&shutdowns_filter),
    )?;
    // Offline verdicts say nothing about a site and have no status row: a network that
    // uploaded in the window but has no row had only offline verdicts.
    let measured: BTreeSet<u32> = all.iter().map(|s| s.asn).collect();
    let offline_networks: BTreeSet<u32> = networks
        .iter()
        .filter_map(|n| n.asn)
        .filter(|a| !measured.contains(a))
        .collect();
    let mut countries: BTreeSet<String> = all.iter().filter_map(|s| s.country.clone()).collect();
    countries.extend(country.clone());
    let mut categories: BTreeSet<String> = all.iter().filter_map(|s| s.category.clone()).collect();
    categories.extend(category.clone());
    let sites = all
        .into_iter()
        .filter(|s| country.is_none() || s.country == country)
        .filter(|s| category.is_none() || s.category == category)
        .collect();
    let view = status::StatusView {
        now,
        window: state.params.window,
        country,
        category,
        countries: countries.into_iter().collect(),
        categories: categories.into_iter().collect(),
        sites,
        networks,
        events,
        shutdowns,
        offline_networks,
    };
    Ok(page(StatusCode::OK, status::status_page(&view)))
}

/// `GET /sites/{domain}`.
async fn site_page(
    State(state): State<AppState>,
    domain: Result<Path<String>, PathRejection>,
    q: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Response, PageError> {
    let Path(domain) = domain.map_err(|e| PageError::BadRequest(e.body_text()))?;
    let q = page_query(q)?;
    let days = days_param(q.days)?;
    if domain.is_empty() || domain.len() > 253 {
        return Err(PageError::BadRequest(
            "a domain has 1 to 253 characters".into(),
        ));
    }
    let domain = domain.to_ascii_lowercase();
    let now = Utc::now();
    // The chart runs on whole hours, to the end of the current one.
    let hour = TimeDelta::hours(1);
    let until = now.duration_trunc(hour).unwrap_or(now) + hour;
    let since = until - TimeDelta::days(i64::from(days));
    let history_filter = Filter {
        since: Some(since),
        until: Some(now),
        limit: HISTORY_ROWS,
        ..Filter::default()
    };
    let status_filter = Filter {
        domain: Some(domain.clone()),
        since: Some(now - state.params.window),
        until: Some(now),
        limit: MAX_ROWS,
        ..Filter::default()
    };
    let events_filter = Filter {
        domain: Some(domain.clone()),
        limit: EVENTS_SHOWN,
        ..Filter::default()
    };
    let (history, statuses, events) = futures::try_join!(
        state.store.history(&domain, &history_filter),
        readmodel::site_statuses(state.store.as_ref(), &status_filter, &state.params, now),
        state.store.events(&events_filter),
    )?;
    // The newest measurement per network, for its reason: the statuses say when it was.
    let latest_filters: Vec<Filter> = statuses
        .iter()
        .take(render::MAX_NETWORKS)
        .map(|st| Filter {
            domain: Some(domain.clone()),
            asn: Some(st.asn),
            since: Some(st.last_measured),
            until: Some(st.last_measured),
            limit: 5,
            ..Filter::default()
        })
        .collect();
    let latest =
        futures::future::try_join_all(latest_filters.iter().map(|f| state.store.measurements(f)))
            .await?
            .into_iter()
            .filter_map(|mut v| v.pop())
            .collect();
    if history.is_empty() && statuses.is_empty() && events.is_empty() {
        return Err(PageError::NotFound(format!(
            "No measurements of {domain} in the last {days} days."
        )));
    }
    let view = site::SiteView {
        now,
        since,
        until,
        days,
        window: state.params.window,
        domain,
        history_truncated: history.len() >= HISTORY_ROWS as usize,
        statuses,
        history,
        latest,
        events,
    };
    Ok(page(StatusCode::OK, site::site_page(&view)))
}

/// `GET /ui/style.css`: its URL carries a version, so it may be cached.
async fn stylesheet() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=86400"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        palette::STYLESHEET.as_str(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::Arc;

    use crate::config::Config;
    use crate::store::sqlite::SqliteStore;

    /// The real router over a fresh, empty SQLite store, on port 0.
    async fn serve_empty() -> (String, tokio::sync::oneshot::Sender<()>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("c.db").display());
        let store = Arc::new(SqliteStore::open(&url, 2).await.unwrap());
        let state = AppState::new(Config::default(), store).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(crate::app::serve(listener, state, async {
            let _ = rx.await;
        }));
        (format!("http://{addr}"), tx, dir)
    }

    #[tokio::test]
    async fn pages_over_an_empty_store() {
        let (base, stop, _dir) = serve_empty().await;
        let client = reqwest::Client::new();
        for path in [
            "/",
            "/status",
            "/?country=kz&category=NEWS",
            "/?country=&category=",
        ] {
            let r = client.get(format!("{base}{path}")).send().await.unwrap();
            assert_eq!(r.status(), 200, "{path}");
            let h = r.headers();
            assert_eq!(h["content-type"], "text/html; charset=utf-8");
            assert!(h["content-security-policy"]
                .to_str()
                .unwrap()
                .contains("default-src 'none'"));
            let body = r.text().await.unwrap();
            assert!(
                body.contains("No measurements in this period yet"),
                "{body}"
            );
        }
        // Bad filters and unknown sites are HTML pages too, with escaped echoes.
        let r = client
            .get(format!("{base}/?country=%3Cscript%3E"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        let r = client
            .get(format!("{base}/sites/%3Cscript%3Ealert(1).test"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
        assert_eq!(r.headers()["content-type"], "text/html; charset=utf-8");
        let body = r.text().await.unwrap();
        assert!(body.contains("&lt;script&gt;alert(1).test"), "{body}");
        assert!(!body.contains("<script>"));
        let r = client
            .get(format!("{base}/sites/a.test?days=99"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        let r = client
            .get(format!("{base}/ui/style.css"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], "text/css; charset=utf-8");
        assert!(r.text().await.unwrap().contains(".v-tls{"));
        // The API keeps its JSON 404.
        let r = client
            .get(format!("{base}/api/v1/nope"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
        assert!(r.text().await.unwrap().contains("\"error\""));
        let _ = stop.send(());
    }
}
