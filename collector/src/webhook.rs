//! Webhook notifier: delivers events from the durable outbox.
//!
//! Event changes write their notifications to the outbox in the same transaction, so a crash
//! never loses one; this worker claims due rows, POSTs them, and retries failures with bounded
//! exponential backoff. Delivery is at least once: receivers should deduplicate (Alertmanager
//! does, by labels). Webhook URLs may carry secrets, so they are never logged.
//!
//! In the Alertmanager format the notifications due for one URL go out together, as one array
//! of alerts (up to [`BATCH`] in one POST): a burst of events costs the receiver a few requests,
//! not one each.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use serde_json::{json, Value};
use tokio::sync::{watch, Notify};

use crate::aggregate::{EventKind, Transition};
use crate::config::{WebhookConfig, WebhookFormat};
use crate::metrics::Metrics;
use crate::store::{Event, Filter, Notification, Store, StoreResult};

/// How often the outbox is polled when nothing wakes the worker.
const POLL: Duration = Duration::from_secs(1);
/// Notifications claimed per round, and most alerts in one Alertmanager POST.
pub const BATCH: u32 = 32;

/// Delay before retry number `attempt` (1 = first retry): `initial * 2^(attempt-1)`, capped,
/// plus up to 10% jitter so many failing notifications do not retry in lockstep.
pub fn backoff(cfg: &WebhookConfig, attempt: u32) -> Duration {
    let exp = attempt.saturating_sub(1).min(30);
    let base = cfg
        .initial_backoff
        .0
        .saturating_mul(1u32 << exp)
        .min(cfg.max_backoff.0);
    let jitter = base.mul_f64(rand::random_range(0.0..0.1));
    (base + jitter).min(cfg.max_backoff.0.max(base))
}

fn alertname(kind: EventKind) -> &'static str {
    match kind {
        EventKind::NewBlock => "WitnessSiteBlocked",
        EventKind::Shutdown => "WitnessNetworkShutdown",
        EventKind::BlockMoved => "WitnessBlockMoved",
    }
}

fn summary(e: &Event) -> String {
    let net = match &e.country {
        Some(c) => format!("AS{} ({c})", e.asn),
        None => format!("AS{}", e.asn),
    };
    match e.kind {
        EventKind::NewBlock => format!(
            "{} blocked by {} on {net}: {} of {} probes",
            e.domain.as_deref().unwrap_or("?"),
            e.method.map_or("?", |m| m.as_str()),
            e.evidence.probes,
            e.evidence.probes_considered
        ),
        EventKind::Shutdown => format!(
            "{net} offline: {} of {} probes without connectivity",
            e.evidence.probes, e.evidence.probes_considered
        ),
        EventKind::BlockMoved => format!(
            "{} on {net}: the block moved from {} to {}: {} of {} located probes",
            e.domain.as_deref().unwrap_or("?"),
            e.evidence
                .previous_censor
                .map_or_else(|| "?".to_string(), |p| p.to_string()),
            e.evidence
                .censor
                .map_or_else(|| "?".to_string(), |p| p.to_string()),
            e.evidence.probes,
            e.evidence.probes_considered
        ),
    }
}

/// What an alert says beyond its event.
#[derive(Clone, Debug)]
pub struct AlertOptions {
    /// How long Alertmanager should keep an open event firing without hearing of it again:
    /// three re-send intervals (`None` when re-sending is off: no `endsAt`, and Alertmanager's
    /// `resolve_timeout` applies).
    pub hold: Option<Duration>,
    /// Base URL of the collector's pages, ending in `/` (`generatorURL`).
    pub public_url: String,
}

impl AlertOptions {
    /// Options for `cfg`, linking to `public_url`.
    pub fn new(cfg: &WebhookConfig, public_url: String) -> AlertOptions {
        let resend = cfg.resend_interval.0;
        AlertOptions {
            hold: (!resend.is_zero()).then(|| resend.saturating_mul(3)),
            public_url,
        }
    }
}

/// The page an alert links to: the site's page for a block, the status page for a shutdown.
fn generator_url(e: &Event, base: &str) -> String {
    match (&e.kind, &e.domain) {
        (EventKind::NewBlock | EventKind::BlockMoved, Some(domain)) => format!(
            "{base}sites/{}",
            url::form_urlencoded::byte_serialize(domain.as_bytes()).collect::<String>()
        ),
        _ => format!("{base}status"),
    }
}

/// One alert in Alertmanager's format. An event that has ended carries its end as `endsAt`,
/// which resolves it at once, whatever transition announced it (a late `new_block` must not
/// re-fire an event that already ended). An open event carries `endsAt` = `now` + `hold`: it
/// stays firing until then even if Alertmanager's `resolve_timeout` is shorter, and every
/// re-send pushes that further. A `block_moved` is a moment: it fires once, for `hold` (or
/// Alertmanager's `resolve_timeout`), with `severity="info"`, and is never re-sent.
pub fn alertmanager_alert(e: &Event, opts: &AlertOptions, now: DateTime<Utc>) -> Value {
    let mut labels = serde_json::Map::new();
    labels.insert("alertname".into(), alertname(e.kind).into());
    labels.insert("kind".into(), e.kind.as_str().into());
    labels.insert("asn".into(), e.asn.to_string().into());
    labels.insert("event_id".into(), e.id.clone().into());
    if let Some(d) = &e.domain {
        labels.insert("domain".into(), d.clone().into());
    }
    if let Some(m) = e.method {
        labels.insert("method".into(), m.as_str().into());
    }
    if let Some(c) = &e.country {
        labels.insert("country".into(), c.clone().into());
    }
    if let Some(c) = &e.category {
        labels.insert("category".into(), c.clone().into());
    }
    if e.kind == EventKind::BlockMoved {
        labels.insert("severity".into(), "info".into());
    }
    let mut annotations = serde_json::Map::new();
    annotations.insert("summary".into(), summary(e).into());
    annotations.insert(
        "evidence".into(),
        serde_json::to_string(&e.evidence)
            .unwrap_or_default()
            .into(),
    );
    if let Some(end) = &e.end_evidence {
        annotations.insert(
            "end_evidence".into(),
            serde_json::to_string(end).unwrap_or_default().into(),
        );
    }
    let mut alert = json!({
        "labels": labels,
        "annotations": annotations,
        "startsAt": e.started_at.to_rfc3339(),
        "generatorURL": generator_url(e, &opts.public_url),
    });
    let ends = match (e.ended_at, opts.hold) {
        _ if e.kind == EventKind::BlockMoved => opts
            .hold
            .map(|hold| now + TimeDelta::from_std(hold).unwrap_or(TimeDelta::days(1))),
        (Some(end), _) => Some(end),
        (None, Some(hold)) => Some(now + TimeDelta::from_std(hold).unwrap_or(TimeDelta::days(1))),
        (None, None) => None,
    };
    if let (Some(end), Some(obj)) = (ends, alert.as_object_mut()) {
        obj.insert("endsAt".into(), end.to_rfc3339().into());
    }
    alert
}

/// The body POSTed for one notification, at `now`.
pub fn payload(
    format: WebhookFormat,
    event: &Event,
    transition: Transition,
    opts: &AlertOptions,
    now: DateTime<Utc>,
) -> Value {
    match format {
        WebhookFormat::Alertmanager => Value::Array(vec![alertmanager_alert(event, opts, now)]),
        WebhookFormat::Generic => json!({ "transition": transition.as_str(), "event": event }),
    }
}

/// The background worker.
pub struct Notifier {
    store: Arc<dyn Store>,
    client: reqwest::Client,
    cfg: WebhookConfig,
    alert: AlertOptions,
    metrics: Arc<Metrics>,
    wake: Arc<Notify>,
}

impl Notifier {
    /// A worker for `cfg`, woken early through `wake`; its alerts link to `public_url`.
    pub fn new(
        store: Arc<dyn Store>,
        cfg: WebhookConfig,
        public_url: String,
        metrics: Arc<Metrics>,
        wake: Arc<Notify>,
    ) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(cfg.timeout.0)
            .user_agent(concat!("witness-collector/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Notifier {
            store,
            client,
            alert: AlertOptions::new(&cfg, public_url),
            cfg,
            metrics,
            wake,
        })
    }

    /// Deliver until `shutdown` turns true.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut last_resend = Instant::now();
        loop {
            if *shutdown.borrow() {
                return;
            }
            if let Err(e) = self.deliver_due().await {
                tracing::warn!(error = %e, "webhook outbox");
            }
            let resend = self.cfg.resend_interval.0;
            if self.cfg.format == WebhookFormat::Alertmanager
                && !resend.is_zero()
                && last_resend.elapsed() >= resend
            {
                last_resend = Instant::now();
                if let Err(e) = self.resend_open().await {
                    tracing::warn!(error = %e, "webhook re-send of open events");
                }
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(POLL) => {}
                changed = shutdown.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
            }
        }
    }

    /// Deliver every due notification. Returns how many were handled.
    pub async fn deliver_due(&self) -> StoreResult<usize> {
        let mut n = 0;
        loop {
            let now = Utc::now();
            let lease = TimeDelta::from_std(self.cfg.timeout.0 + Duration::from_secs(60))
                .unwrap_or(TimeDelta::minutes(5));
            let batch = self
                .store
                .claim_notifications(now, now + lease, BATCH)
                .await?;
            if batch.is_empty() {
                return Ok(n);
            }
            n += batch.len();
            if self.cfg.format == WebhookFormat::Alertmanager {
                for group in by_url(batch) {
                    self.deliver(group).await?;
                }
            } else {
                for note in batch {
                    self.deliver(vec![note]).await?;
                }
            }
        }
    }

    async fn post(&self, url: &str, body: &Value) -> Result<(), PostError> {
        match self.client.post(url).json(body).send().await {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => Err(PostError::Status(r.status().as_u16())),
            Err(e) => Err(PostError::Send(e.without_url())),
        }
    }

    /// POST `notes` (all for one URL; several only in the Alertmanager format, as one array)
    /// and record the outcome of each.
    async fn deliver(&self, notes: Vec<Notification>) -> StoreResult<()> {
        let Some(url) = notes.first().map(|n| n.url.clone()) else {
            return Ok(());
        };
        let now = Utc::now();
        let body = match self.cfg.format {
            WebhookFormat::Alertmanager => Value::Array(
                notes
                    .iter()
                    .map(|n| alertmanager_alert(&n.event, &self.alert, now))
                    .collect(),
            ),
            WebhookFormat::Generic => {
                let n = &notes[0];
                payload(self.cfg.format, &n.event, n.transition, &self.alert, now)
            }
        };
        let result = self.post(&url, &body).await;
        if result.is_err() {
            self.metrics.webhook_failed();
        }
        for note in notes {
            self.settle(note, &result).await?;
        }
        Ok(())
    }

    /// Record the outcome of one notification's delivery attempt.
    async fn settle(&self, note: Notification, result: &Result<(), PostError>) -> StoreResult<()> {
        match result {
            Ok(()) => self.store.notification_delivered(note.id, Utc::now()).await,
            Err(error) => {
                let attempts = note.attempts + 1;
                let retry_at: Option<DateTime<Utc>> =
                    (attempts < self.cfg.max_attempts).then(|| {
                        Utc::now()
                            + TimeDelta::from_std(backoff(&self.cfg, attempts))
                                .unwrap_or(TimeDelta::hours(1))
                    });
                if retry_at.is_none() {
                    tracing::warn!(
                        event_id = %note.event.id,
                        transition = note.transition.as_str(),
                        attempts,
                        error = %error,
                        "webhook notification abandoned"
                    );
                } else {
                    tracing::debug!(event_id = %note.event.id, attempts, error = %error, "webhook retry scheduled");
                }
                self.store
                    .notification_failed(note.id, retry_at, &error.to_string(), Utc::now())
                    .await
            }
        }
    }

    /// Re-send every open event with a fresh `endsAt`, so Alertmanager keeps it firing (best
    /// effort; failures are counted, not retried).
    async fn resend_open(&self) -> StoreResult<()> {
        let open = self
            .store
            .events(&Filter {
                open: Some(true),
                limit: 10_000,
                ..Filter::default()
            })
            .await?;
        if open.is_empty() {
            return Ok(());
        }
        let now = Utc::now();
        let body = Value::Array(
            open.iter()
                .map(|e| alertmanager_alert(e, &self.alert, now))
                .collect(),
        );
        for url in &self.cfg.urls {
            if let Err(error) = self.post(url, &body).await {
                self.metrics.webhook_failed();
                tracing::debug!(error = %error, "webhook re-send failed");
            }
        }
        Ok(())
    }
}

/// Notifications grouped by URL, in the order claimed.
fn by_url(notes: Vec<Notification>) -> Vec<Vec<Notification>> {
    let mut groups: Vec<Vec<Notification>> = Vec::new();
    for note in notes {
        match groups.iter_mut().find(|g| g[0].url == note.url) {
            Some(g) => g.push(note),
            None => groups.push(vec![note]),
        }
    }
    groups
}

/// Why a webhook delivery failed; its text is recorded on the notification. The receiver's
/// URL is left out (it may hold a secret).
#[derive(Debug, thiserror::Error)]
enum PostError {
    /// The receiver answered, but not with a success.
    #[error("HTTP {0}")]
    Status(u16),
    /// No answer: connection, TLS or timeout.
    #[error("{0}")]
    Send(reqwest::Error),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::Evidence;
    use crate::config::HumanDuration;
    use witness_core::model::Method;

    fn event(ended: bool) -> Event {
        let start = DateTime::parse_from_rfc3339("2024-01-05T10:30:00Z")
            .unwrap()
            .with_timezone(&Utc);
        Event {
            id: "e1".into(),
            kind: EventKind::NewBlock,
            domain: Some("example.org".into()),
            asn: 9198,
            country: Some("KZ".into()),
            category: Some("NEWS".into()),
            method: Some(Method::Tls),
            started_at: start,
            ended_at: ended.then(|| start + TimeDelta::hours(2)),
            evidence: Evidence {
                probes: 3,
                probes_considered: 3,
                ..Evidence::default()
            },
            end_evidence: None,
        }
    }

    #[test]
    fn block_moved_fires_once_with_both_places() {
        use crate::model::CensorPlace;
        let now = DateTime::parse_from_rfc3339("2024-01-05T11:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let mut e = event(true);
        e.kind = EventKind::BlockMoved;
        e.method = None;
        e.ended_at = Some(e.started_at);
        e.evidence.censor = Some(CensorPlace {
            hop: 5,
            asn: Some(21299),
        });
        e.evidence.previous_censor = Some(CensorPlace {
            hop: 3,
            asn: Some(9198),
        });
        let v = payload(
            WebhookFormat::Alertmanager,
            &e,
            Transition::BlockMoved,
            &opts(),
            now,
        );
        let a = &v[0];
        assert_eq!(a["labels"]["alertname"], "WitnessBlockMoved");
        assert_eq!(a["labels"]["kind"], "block_moved");
        assert_eq!(a["labels"]["severity"], "info");
        // Fires for the hold (three re-send intervals), although the event is a moment (it
        // has already ended).
        assert_eq!(a["endsAt"], "2024-01-05T12:30:00+00:00");
        let summary = a["annotations"]["summary"].as_str().unwrap();
        assert!(
            summary.contains("from hop 3, AS9198 to hop 5, AS21299"),
            "{summary}"
        );
        assert_eq!(
            a["generatorURL"],
            "https://witness.example/sites/example.org"
        );
    }

    fn opts() -> AlertOptions {
        AlertOptions::new(&WebhookConfig::default(), "https://witness.example/".into())
    }

    #[test]
    fn alertmanager_shape() {
        let now = DateTime::parse_from_rfc3339("2024-01-05T11:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let v = payload(
            WebhookFormat::Alertmanager,
            &event(false),
            Transition::NewBlock,
            &opts(),
            now,
        );
        let a = &v[0];
        assert_eq!(a["labels"]["alertname"], "WitnessSiteBlocked");
        assert_eq!(a["labels"]["domain"], "example.org");
        assert_eq!(a["labels"]["asn"], "9198");
        assert_eq!(a["labels"]["method"], "tls");
        assert_eq!(a["startsAt"], "2024-01-05T10:30:00+00:00");
        // Open: held three re-send intervals (30m) ahead of now, not resolved by
        // Alertmanager's resolve_timeout in between.
        assert_eq!(a["endsAt"], "2024-01-05T12:30:00+00:00");
        assert_eq!(
            a["generatorURL"],
            "https://witness.example/sites/example.org"
        );
        assert!(a["annotations"]["summary"]
            .as_str()
            .unwrap()
            .contains("3 of 3 probes"));
        let ended = event(true);
        let later = now + TimeDelta::hours(5);
        let v = payload(
            WebhookFormat::Alertmanager,
            &ended,
            Transition::Unblock,
            &opts(),
            later,
        );
        // Ended: its own end, which resolves it at once.
        assert_eq!(v[0]["endsAt"], "2024-01-05T12:30:00+00:00");
        // Re-sending off: no endsAt for an open event.
        let off = AlertOptions::new(
            &WebhookConfig {
                resend_interval: HumanDuration::from_secs(0),
                ..WebhookConfig::default()
            },
            "http://127.0.0.1:8080/".into(),
        );
        let v = payload(
            WebhookFormat::Alertmanager,
            &event(false),
            Transition::NewBlock,
            &off,
            now,
        );
        assert!(v[0].get("endsAt").is_none());
        let g = payload(
            WebhookFormat::Generic,
            &ended,
            Transition::Unblock,
            &opts(),
            later,
        );
        assert_eq!(g["transition"], "unblock");
        assert_eq!(g["event"]["kind"], "new_block");
    }

    #[test]
    fn notifications_are_grouped_by_url_in_claim_order() {
        let note = |id: i64, url: &str| Notification {
            id,
            event: event(false),
            transition: Transition::NewBlock,
            url: url.into(),
            attempts: 0,
        };
        let groups = by_url(vec![
            note(1, "http://a/"),
            note(2, "http://b/"),
            note(3, "http://a/"),
            note(4, "http://a/"),
        ]);
        let ids: Vec<Vec<i64>> = groups
            .iter()
            .map(|g| g.iter().map(|n| n.id).collect())
            .collect();
        assert_eq!(ids, vec![vec![1, 3, 4], vec![2]]);
        assert!(by_url(Vec::new()).is_empty());
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let cfg = WebhookConfig {
            initial_backoff: HumanDuration::from_secs(5),
            max_backoff: HumanDuration::from_secs(60),
            ..WebhookConfig::default()
        };
        let b1 = backoff(&cfg, 1);
        assert!(b1 >= Duration::from_secs(5) && b1 < Duration::from_millis(5600));
        let b3 = backoff(&cfg, 3);
        assert!(b3 >= Duration::from_secs(20) && b3 < Duration::from_secs(23));
        assert!(backoff(&cfg, 50) <= Duration::from_secs(60));
    }
}
