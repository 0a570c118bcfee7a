//! The operator's view, with real Prometheus, Alertmanager and PostgreSQL and the real
//! collector binary:
//!
//! - a default install is green: the collector with the shipped example config and Prometheus
//!   with the shipped config, rules and targets agree on where /metrics is (`up == 1`), and no
//!   alert is pending or firing over many rule evaluations;
//! - a block the collector pushes to Alertmanager stays open between the collector's re-sends,
//!   however short Alertmanager's `resolve_timeout`, and resolves at once on the unblock;
//! - two collector replicas scraped by one Prometheus: the recording rules and the panels count
//!   each probe and each blocked site once.
//!
//! Only addresses, intervals and the rules' `for:` are changed in the test's copies of the
//! shipped files (1 s scrapes; `for:` of a few seconds, so an alert that would fire does so
//! within the test). Skipped loudly without the tools (a failure under WITNESS_REQUIRE_TOOLS=1).

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use serde_json::Value;
use witness_core::model::{Method, Status};
use witness_tests::bins::workspace_root;
use witness_tests::collector::get;
use witness_tests::dashboards::{dashboard_queries, load_dashboards, substitute_variables};
use witness_tests::postgres;
use witness_tests::promstack::{copy_dir, free_port, require_tool, Alertmanager, Prometheus};
use witness_tests::{CollectorProcess, WebhookReceiver};

const ASN: u32 = 64500;
const SITE: &str = "blocked.ops.test";

fn read(rel: &str) -> String {
    std::fs::read_to_string(workspace_root().join(rel))
        .unwrap_or_else(|e| panic!("reading {rel}: {e}"))
}

fn measurement(domain: &str, status: Status, method: Option<Method>, at: DateTime<Utc>) -> Value {
    serde_json::to_value(witness_tests::measurement(domain, ASN, status, method, at))
        .expect("measurement JSON")
}

/// Runs one async HTTP exchange to completion (the tests are synchronous).
fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}

/// Register a probe at `base` (`http://HOST:PORT/`); its token.
fn register(base: &str) -> String {
    block_on(async {
        let r = reqwest::Client::new()
            .post(format!("{base}api/v1/register"))
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .expect("register");
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.expect("json");
        v["token"].as_str().expect("token").to_string()
    })
}

/// Upload measurements (gzip, as the probe does); all must be accepted.
fn upload(base: &str, token: &str, records: Vec<Value>) {
    let body = serde_json::to_vec(&serde_json::json!({ "measurements": records })).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&body).unwrap();
    let body = gz.finish().unwrap();
    block_on(async {
        let r = reqwest::Client::new()
            .post(format!("{base}api/v1/measurements"))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .header("content-encoding", "gzip")
            .body(body)
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .expect("upload");
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.expect("json");
        assert_eq!(v["rejected"].as_array().map_or(0, Vec::len), 0, "{v}");
    })
}

/// The shipped Prometheus directory, copied to `dir` and made fast: 1 s scrapes and rule
/// evaluations, every `for:` `for_secs`, the collector targets given.
fn fast_prometheus_dir(
    dir: &Path,
    collector_targets: &[String],
    alertmanager: Option<&str>,
    for_secs: u32,
) {
    copy_dir(&workspace_root().join("deploy/prometheus"), dir).unwrap();
    let cfg_path = dir.join("prometheus.yml");
    let cfg = std::fs::read_to_string(&cfg_path).unwrap();
    let fast = cfg
        .replace("scrape_interval: 60s", "scrape_interval: 1s")
        .replace("scrape_timeout: 20s", "scrape_timeout: 1s")
        .replace("evaluation_interval: 60s", "evaluation_interval: 1s");
    assert_ne!(fast, cfg, "the shipped intervals moved: update this test");
    std::fs::write(&cfg_path, fast).unwrap();
    let alerts_path = dir.join("rules/witness-alerts.yml");
    let alerts = std::fs::read_to_string(&alerts_path).unwrap();
    let mut short = String::new();
    for line in alerts.lines() {
        match line.trim_start().strip_prefix("for: ") {
            Some(_) => {
                let indent = &line[..line.len() - line.trim_start().len()];
                short.push_str(&format!("{indent}for: {for_secs}s\n"));
            }
            None => {
                short.push_str(line);
                short.push('\n');
            }
        }
    }
    assert!(alerts.matches("\n        for: ").count() >= 8);
    std::fs::write(&alerts_path, short).unwrap();
    let list: Vec<String> = collector_targets
        .iter()
        .map(|t| format!("\"{t}\""))
        .collect();
    std::fs::write(
        dir.join("targets/witness-collector.yml"),
        format!("- targets: [{}]\n", list.join(", ")),
    )
    .unwrap();
    if let Some(am) = alertmanager {
        std::fs::write(
            dir.join("targets/alertmanager.yml"),
            format!("- targets: [\"{am}\"]\n"),
        )
        .unwrap();
    }
}

/// `host:port` of the only target in a shipped targets file.
fn shipped_target(rel: &str) -> String {
    let text = read(rel);
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("- targets:"))
        .unwrap_or_else(|| panic!("{rel}: no targets"));
    let start = line.find('"').expect("quoted target") + 1;
    let end = line[start..].find('"').expect("quoted target") + start;
    line[start..end].to_string()
}

/// `[server] listen` or `metrics_listen` of a collector config text, uncommented lines only.
fn toml_server_value(text: &str, key: &str) -> Option<String> {
    let mut in_server = false;
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('[') {
            in_server = t == "[server]";
        } else if in_server {
            if let Some(rest) = t.strip_prefix(key) {
                if let Some(v) = rest.trim_start().strip_prefix('=') {
                    return Some(v.trim().trim_matches('"').to_string());
                }
            }
        }
    }
    None
}

#[test]
fn the_shipped_scrape_target_is_where_the_example_config_serves_metrics() {
    let example = read("collector/collector.example.toml");
    let listen = toml_server_value(&example, "listen").expect("[server] listen");
    let metrics = toml_server_value(&example, "metrics_listen").unwrap_or(listen);
    let target = shipped_target("deploy/prometheus/targets/witness-collector.yml");
    let (m_host, m_port) = metrics.rsplit_once(':').expect("host:port");
    let (t_host, t_port) = target.rsplit_once(':').expect("host:port");
    assert_eq!(
        m_port, t_port,
        "collector serves /metrics on {metrics}, Prometheus scrapes {target}"
    );
    let local = |h: &str| matches!(h, "127.0.0.1" | "localhost" | "0.0.0.0" | "[::1]");
    assert!(local(m_host) && local(t_host), "{metrics} vs {target}");
    // The compose pair agrees too.
    let compose = read("deploy/compose/collector.toml");
    let compose_metrics =
        toml_server_value(&compose, "metrics_listen").expect("compose metrics_listen");
    let compose_target = shipped_target("deploy/compose/prometheus-targets/witness-collector.yml");
    assert_eq!(
        compose_metrics.rsplit_once(':').map(|p| p.1),
        compose_target.rsplit_once(':').map(|p| p.1),
        "compose: {compose_metrics} vs {compose_target}"
    );
}

#[test]
fn a_default_install_scrapes_and_stays_quiet() {
    let Some(prom_bin) = require_tool(&["prometheus"], "prometheus") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // The shipped example config, with only the port (the test cannot take 8080) and the
    // store's directory changed.
    let example = read("collector/collector.example.toml");
    let port = free_port();
    let target = shipped_target("deploy/prometheus/targets/witness-collector.yml");
    let (_, default_port) = target.rsplit_once(':').unwrap();
    let config_text = example
        .replace(
            &format!("listen = \"127.0.0.1:{default_port}\""),
            &format!("listen = \"127.0.0.1:{port}\""),
        )
        .replace(
            "url = \"sqlite://witness-collector.db\"",
            &format!("url = \"sqlite://{}\"", dir.path().join("c.db").display()),
        );
    assert_ne!(config_text, example);
    let config = dir.path().join("collector.toml");
    std::fs::write(&config, config_text).unwrap();
    let collector = CollectorProcess::start_with(&config, &dir.path().join("c.db")).unwrap();

    // A probe uploads healthy measurements, as on a working install.
    let token = register(&collector.url);
    let now = Utc::now();
    upload(
        &collector.url,
        &token,
        (0..3)
            .map(|i| {
                measurement(
                    &format!("fine{i}.ops.test"),
                    Status::Accessible,
                    None,
                    now - TimeDelta::minutes(5),
                )
            })
            .collect(),
    );

    // Prometheus with the shipped targets file, its port changed the same way.
    let prom_dir = dir.path().join("prometheus");
    let fast_target = target.replace(&format!(":{default_port}"), &format!(":{port}"));
    // `for:` 8 s: longer than Prometheus takes from its first rule evaluation to its first
    // scrape (before which the collector's `up` is absent, as on any Prometheus start).
    fast_prometheus_dir(&prom_dir, &[fast_target], None, 8);
    let prom = Prometheus::start(
        &prom_bin,
        &prom_dir.join("prometheus.yml"),
        &dir.path().join("tsdb"),
    )
    .unwrap();
    let up = prom
        .wait_for(
            "up{job=\"witness-collector\"} == 1",
            Duration::from_secs(30),
        )
        .unwrap();
    assert_eq!(
        up.len(),
        1,
        "Prometheus does not scrape the collector: {up:?}"
    );
    // Until the first rule evaluation after the first scrape, WitnessCollectorDown is pending
    // for the absent `up` (as on any Prometheus start; its real `for:` is 3 minutes).
    let settle = Instant::now();
    while !prom.query("ALERTS").unwrap().is_empty() && settle.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(200));
    }
    // Rules are evaluated every second: over 20 s, every alert with `for: 8s` that would
    // fire on this install has fired.
    let start = Instant::now();
    let mut evaluations = 0;
    while start.elapsed() < Duration::from_secs(20) {
        let alerts = prom.query("ALERTS").unwrap();
        assert!(
            alerts.is_empty(),
            "an alert on a healthy default install: {alerts:#?}"
        );
        evaluations += 1;
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(evaluations >= 20);
    let rules_ran = prom.query("fleet:witness_probes_active:sum").unwrap();
    assert_eq!(rules_ran.len(), 1, "the recording rules did not run");
    assert_eq!(rules_ran[0]["value"][1], "1", "{rules_ran:?}");
}

/// Alertmanager's alerts (API v2) named `alertname`, active ones only.
fn am_alerts(am: &Alertmanager, alertname: &str) -> Vec<Value> {
    let (status, body) = get(&format!(
        "{}/api/v2/alerts?active=true&silenced=true&inhibited=true&filter=alertname%3D%22{alertname}%22",
        am.url
    ))
    .expect("alertmanager API");
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("JSON");
    v.as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|a| a["status"]["state"] == "active" || a["status"]["state"] == "suppressed")
        .collect()
}

#[test]
fn a_pushed_block_stays_open_between_resends_and_resolves_on_unblock() {
    let Some(am_bin) = require_tool(
        &["prometheus-alertmanager", "alertmanager"],
        "prometheus-alertmanager",
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let hook = WebhookReceiver::start().unwrap();

    // The shipped Alertmanager config with a resolve_timeout far shorter than the re-send
    // interval: only the collector's endsAt can keep the alert open in between.
    let shipped = read("deploy/alertmanager/alertmanager.yml");
    let am_config = shipped
        .replace("resolve_timeout: 5m", "resolve_timeout: 1s")
        .replace("http://127.0.0.1:5001/witness-alerts", &hook.url)
        .replace(
            "http://127.0.0.1:12345/alerts/witness",
            &format!("{}/matrix", hook.url),
        )
        .replace(
            "https://hooks.chat.example.invalid/services/T000/B000/XXXXXXXX",
            &format!("{}/slack", hook.url),
        )
        .replace("smtp.example.invalid:587", "127.0.0.1:1")
        .replace("group_wait: 1m", "group_wait: 1s")
        .replace("group_interval: 10m", "group_interval: 1s");
    assert!(am_config.contains("resolve_timeout: 1s") && am_config.contains("group_interval: 1s"));
    let am_dir = dir.path().join("alertmanager");
    std::fs::create_dir_all(&am_dir).unwrap();
    std::fs::write(am_dir.join("alertmanager.yml"), am_config).unwrap();
    let am = Alertmanager::start(
        &am_bin,
        &am_dir.join("alertmanager.yml"),
        &am_dir.join("data"),
    )
    .unwrap();

    let collector = CollectorProcess::start(
        dir.path(),
        &format!(
            "[webhook]\nurls = [\"{}/api/v2/alerts\"]\nformat = \"alertmanager\"\n\
             resend_interval = \"3s\"\npublic_url = \"https://witness.example/\"\n",
            am.url
        ),
    )
    .unwrap();
    let probes = [register(&collector.url), register(&collector.url)];
    let now = Utc::now();
    for (i, token) in probes.iter().enumerate() {
        upload(
            &collector.url,
            token,
            vec![measurement(
                SITE,
                Status::Blocked,
                Some(Method::Tls),
                now - TimeDelta::minutes(20) + TimeDelta::seconds(i as i64),
            )],
        );
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut open = Vec::new();
    while open.is_empty() && Instant::now() < deadline {
        open = am_alerts(&am, "WitnessSiteBlocked");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        open.len(),
        1,
        "the block never reached Alertmanager: {open:?}"
    );
    let alert = &open[0];
    assert_eq!(alert["labels"]["domain"], SITE);
    assert_eq!(alert["labels"]["method"], "tls");
    assert_eq!(
        alert["generatorURL"],
        format!("https://witness.example/sites/{SITE}")
    );
    let fingerprint = alert["fingerprint"].clone();
    let starts_at = alert["startsAt"].clone();

    // Twelve seconds: twelve resolve_timeouts and four re-sends. The alert stays open, the
    // same one, and no receiver hears "resolved".
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_secs(12) {
        let now_open = am_alerts(&am, "WitnessSiteBlocked");
        assert_eq!(now_open.len(), 1, "the open block resolved: {now_open:?}");
        assert_eq!(now_open[0]["fingerprint"], fingerprint);
        assert_eq!(now_open[0]["startsAt"], starts_at);
        let ends: DateTime<Utc> = now_open[0]["endsAt"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .expect("endsAt");
        assert!(
            ends > Utc::now(),
            "endsAt {ends} passed: the alert is ending"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let firing = hook.bodies();
    assert!(
        firing
            .iter()
            .any(|b| b.contains("WitnessSiteBlocked") && b.contains("\"firing\"")),
        "no firing notification: {firing:#?}"
    );
    assert!(
        !firing
            .iter()
            .any(|b| b.contains("WitnessSiteBlocked") && b.contains("\"resolved\"")),
        "a receiver was told the open block resolved: {firing:#?}"
    );

    // The unblock: both probes see the site again. Alertmanager resolves it at once.
    let unblocked = Instant::now();
    for token in &probes {
        upload(
            &collector.url,
            token,
            vec![measurement(
                SITE,
                Status::Accessible,
                None,
                Utc::now() - TimeDelta::minutes(1),
            )],
        );
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while !am_alerts(&am, "WitnessSiteBlocked").is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        am_alerts(&am, "WitnessSiteBlocked").is_empty(),
        "the unblock did not resolve the alert"
    );
    let resolved_after = unblocked.elapsed();
    let bodies = hook.wait_for(Duration::from_secs(10), |b| {
        b.iter()
            .any(|x| x.contains("WitnessSiteBlocked") && x.contains("\"resolved\""))
    });
    assert!(
        bodies
            .iter()
            .any(|x| x.contains("WitnessSiteBlocked") && x.contains("\"resolved\"")),
        "no resolved notification: {bodies:#?}"
    );
    eprintln!("unblock resolved in Alertmanager after {resolved_after:?}");
}

#[test]
fn two_replicas_count_each_probe_and_block_once() {
    let Some(prom_bin) = require_tool(&["prometheus"], "prometheus") else {
        return;
    };
    let Some(db) = postgres::fresh_database("ops_alerting replicas") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let replicas: Vec<CollectorProcess> = (0..2)
        .map(|i| {
            let config = dir.path().join(format!("replica{i}.toml"));
            std::fs::write(
                &config,
                format!(
                    "[server]\nlisten = \"127.0.0.1:0\"\n[store]\nurl = \"{}\"\nmax_connections = 4\n\
                     [metrics]\nresync_interval = \"1s\"\n",
                    db.url
                ),
            )
            .unwrap();
            CollectorProcess::start_with(&config, &dir.path().join("unused.db")).unwrap()
        })
        .collect();
    // Three probes on one network, each seeing the site blocked; uploads spread over both.
    let now = Utc::now();
    for p in 0..3 {
        let base = &replicas[p % 2].url;
        let token = register(base);
        upload(
            base,
            &token,
            vec![
                measurement(
                    SITE,
                    Status::Blocked,
                    Some(Method::Dns),
                    now - TimeDelta::minutes(10) + TimeDelta::seconds(p as i64),
                ),
                measurement(
                    "fine.ops.test",
                    Status::Accessible,
                    None,
                    now - TimeDelta::minutes(10) + TimeDelta::seconds(p as i64),
                ),
            ],
        );
    }
    let prom_dir = dir.path().join("prometheus");
    let targets: Vec<String> = replicas.iter().map(|r| r.addr()).collect();
    fast_prometheus_dir(&prom_dir, &targets, None, 2);
    let prom = Prometheus::start(
        &prom_bin,
        &prom_dir.join("prometheus.yml"),
        &dir.path().join("tsdb"),
    )
    .unwrap();
    let both = prom
        .wait_for(
            "count(up{job=\"witness-collector\"} == 1) == 2",
            Duration::from_secs(30),
        )
        .unwrap();
    assert!(!both.is_empty(), "Prometheus does not scrape both replicas");
    let scalar = |expr: &str| -> f64 {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let r = prom.query(expr).unwrap();
            if let [one] = r.as_slice() {
                return one["value"][1].as_str().unwrap().parse().unwrap();
            }
            assert!(Instant::now() < deadline, "{expr}: {r:?}");
            std::thread::sleep(Duration::from_millis(250));
        }
    };
    // Each replica reports the whole fleet (what the others ingested within its
    // resync_interval): a plain sum counts it twice (the test can fail).
    let _ = prom
        .wait_for("count(witness_probes_active) == 2", Duration::from_secs(30))
        .unwrap();
    let _ = prom
        .wait_for("sum(witness_probes_active) == 6", Duration::from_secs(30))
        .unwrap();
    assert_eq!(scalar("sum(witness_probes_active)"), 6.0);
    // The recording rules count once.
    let _ = prom
        .wait_for(
            "fleet:witness_probes_active:sum == 3",
            Duration::from_secs(30),
        )
        .unwrap();
    assert_eq!(scalar("fleet:witness_probes_active:sum"), 3.0);
    assert_eq!(
        scalar(&format!(
            "asn_country_method:witness_sites_blocked:count{{asn=\"{ASN}\",method=\"dns\"}}"
        )),
        1.0
    );
    assert_eq!(
        scalar(&format!(
            "asn_country:witness_sites_blocked:count{{asn=\"{ASN}\"}}"
        )),
        1.0
    );
    // So do the panels that sum or count a gauge.
    let mut checked = 0;
    for (file, dash) in load_dashboards() {
        for (place, raw) in dashboard_queries(file, &dash) {
            let (expr, _) = substitute_variables(&raw);
            let expected = if place.ends_with("panel \"Probes active\"") {
                3.0
            } else if place.ends_with("panel \"Networks offline\"") && expr.starts_with("sum(") {
                0.0
            } else if place.ends_with("panel \"Sites blocked now\"")
                || place.ends_with("panel \"Networks with blocks\"")
            {
                1.0
            } else {
                continue;
            };
            assert_eq!(scalar(&expr), expected, "{place}: {expr}");
            checked += 1;
        }
    }
    assert!(checked >= 5, "only {checked} panels checked");
    // Tables list each site once, not once per replica.
    let rows = prom
        .query("max without (instance) (witness_site_blocked_ratio) > 0")
        .unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    // One alert for the block, not one per replica.
    let alerts = prom
        .wait_for(
            "ALERTS{alertname=\"WitnessSiteNewlyBlocked\",alertstate=\"firing\"}",
            Duration::from_secs(30),
        )
        .unwrap();
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
    assert_eq!(alerts[0]["metric"]["domain"], SITE);
    assert!(alerts[0]["metric"].get("instance").is_none());
}
