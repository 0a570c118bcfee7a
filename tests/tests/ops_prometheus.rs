//! The shipped Prometheus configuration, rules, dashboards and Alertmanager configuration,
//! against the real collector fed by the real probe: every dashboard query parses and returns
//! data, and the new-block alert fires in Prometheus and reaches a webhook through a real
//! Alertmanager.
//!
//! The test runs on a copy of `deploy/` with only addresses and intervals rewritten (1 s
//! scrapes instead of 60 s, the new-block alert's `for: 30m` shortened: its `for` semantics are
//! covered by `promtool test rules`).

use std::net::IpAddr;
use std::time::Duration;

use witness_tests::bins::workspace_root;
use witness_tests::dashboards::{dashboard_queries, load_dashboards, substitute_variables};
use witness_tests::origin::{Policy, Rule};
use witness_tests::promstack::{copy_dir, require_tool, Alertmanager, Prometheus};
use witness_tests::volunteer::{anchor_of, lab_control_section, ok, Probe};
use witness_tests::{Behaviour, CollectorProcess, Site, WebhookReceiver, World, CENSORED_SOURCE};

/// Panels whose metric only has samples after something goes wrong (a webhook failing, a record
/// rejected, a network shut down, a slow ingest, the collector down): an empty answer is right
/// for them in a healthy run. Each entry is a substring of the query.
const QUIET_WHEN_HEALTHY: &[&str] = &[
    "witness_webhook_failures_total",
    "witness_records_rejected_total",
    "witness_records_rejected:",
    "witness_network_offline",
    "kind=\"shutdown",
    "unblock",
    "offset 1d",
    "== 0",
    // App and tool tests (#23): this run measures websites only.
    "domain=~\"app:.+\"",
];

#[test]
fn dashboards_and_the_new_block_alert_work_on_real_data() {
    let (Some(prom_bin), Some(am_bin)) = (
        require_tool(&["prometheus"], "prometheus"),
        require_tool(
            &["prometheus-alertmanager", "alertmanager"],
            "prometheus-alertmanager",
        ),
    ) else {
        return;
    };
    let second: IpAddr = "127.0.0.4".parse().unwrap();
    let world = World::builder()
        .policy(Policy {
            censored_peers: vec![CENSORED_SOURCE, second],
        })
        .site(Site::new("fine.test").category("GRP"))
        .site(Site::new("other.test").category("NEWS"))
        .site(
            Site::new("news.test")
                .category("NEWS")
                .censored(Behaviour::DropAfterClientHello),
        )
        .site(
            Site::new("blog.test")
                .category("HOST")
                .censored(Behaviour::Mitm),
        )
        .start()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let collector =
        CollectorProcess::start(dir.path(), &lab_control_section(&world, false)).unwrap();
    let anchor = anchor_of(&world, "fine.test");
    let list = world.write_list("list.csv").unwrap();
    let probes: Vec<Probe> = [CENSORED_SOURCE, second]
        .into_iter()
        .map(|source| Probe::new(&world, source, 64500, &collector.url, &anchor))
        .collect();
    let list = list.to_str().unwrap();
    let run_all = || {
        for probe in &probes {
            ok(&probe.witness(&["run", "--list", list, "--upload", "--no-progress"]));
        }
    };
    for probe in &probes {
        ok(&probe.witness(&["register"]));
    }
    run_all();

    // Alertmanager with the shipped config; every receiver pointed at our webhook.
    let hook = WebhookReceiver::start().unwrap();
    let am_dir = dir.path().join("alertmanager");
    std::fs::create_dir_all(&am_dir).unwrap();
    let shipped =
        std::fs::read_to_string(workspace_root().join("deploy/alertmanager/alertmanager.yml"))
            .unwrap();
    let am_config = shipped
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
        .replace("group_wait: 1m", "group_wait: 1s");
    assert_ne!(
        am_config, shipped,
        "the shipped receivers moved: update this test"
    );
    let am_file = am_dir.join("alertmanager.yml");
    std::fs::write(&am_file, am_config).unwrap();
    let am = Alertmanager::start(&am_bin, &am_file, &am_dir.join("data")).unwrap();

    // Prometheus with the shipped config, rules and target files.
    let prom_dir = dir.path().join("prometheus");
    copy_dir(&workspace_root().join("deploy/prometheus"), &prom_dir).unwrap();
    let cfg_path = prom_dir.join("prometheus.yml");
    let cfg = std::fs::read_to_string(&cfg_path).unwrap();
    let fast = cfg
        .replace("scrape_interval: 60s", "scrape_interval: 1s")
        .replace("scrape_timeout: 20s", "scrape_timeout: 1s")
        .replace("evaluation_interval: 60s", "evaluation_interval: 1s");
    assert_ne!(fast, cfg, "the shipped intervals moved: update this test");
    std::fs::write(&cfg_path, fast).unwrap();
    std::fs::write(
        prom_dir.join("targets/witness-collector.yml"),
        format!("- targets: [\"{}\"]\n", collector.addr()),
    )
    .unwrap();
    std::fs::write(
        prom_dir.join("targets/alertmanager.yml"),
        format!("- targets: [\"{}\"]\n", am.addr),
    )
    .unwrap();
    let alerts_path = prom_dir.join("rules/witness-alerts.yml");
    let alerts = std::fs::read_to_string(&alerts_path).unwrap();
    let shortened = alerts.replacen("for: 30m", "for: 2s", 1);
    assert_ne!(shortened, alerts);
    std::fs::write(&alerts_path, shortened).unwrap();
    let prom = Prometheus::start(&prom_bin, &cfg_path, &dir.path().join("tsdb")).unwrap();

    let up = prom
        .wait_for(
            "up{job=\"witness-collector\"} == 1",
            Duration::from_secs(30),
        )
        .unwrap();
    assert!(!up.is_empty(), "Prometheus never scraped the collector");
    // A few scrapes, so rates over windows have two samples.
    let ratio = prom
        .wait_for(
            "count_over_time(witness_site_blocked_ratio{domain=\"news.test\"}[1m]) >= 3",
            Duration::from_secs(30),
        )
        .unwrap();
    assert!(!ratio.is_empty(), "no blocked ratio for news.test");

    // A block that begins while Prometheus watches: the event counters' increases (the
    // dashboards' annotations) only show events that happen between scrapes.
    world.https_origin("other.test").unwrap().set_rule(
        "other.test",
        Some(Rule::censored(Behaviour::ResetAfterClientHello)),
    );
    run_all();
    let new_blocks = prom
        .wait_for(
            "increase(witness_events_total{kind=\"new_block\"}[5m]) > 0",
            Duration::from_secs(30),
        )
        .unwrap();
    assert!(
        !new_blocks.is_empty(),
        "the new event never showed in Prometheus"
    );

    // Every dashboard query parses and, unless it only shows trouble, returns data.
    let mut failures = Vec::new();
    let mut checked = 0;
    for (file, dash) in load_dashboards() {
        for (place, raw) in dashboard_queries(file, &dash) {
            let (expr, _) = substitute_variables(&raw);
            checked += 1;
            match prom.query(&expr) {
                Err(e) => failures.push(format!("{place}: {e}")),
                Ok(result) if result.is_empty() => {
                    if !QUIET_WHEN_HEALTHY.iter().any(|q| expr.contains(q)) {
                        failures.push(format!("{place}: no data for {expr}"));
                    }
                }
                Ok(_) => {}
            }
        }
    }
    assert!(checked >= 10, "only {checked} queries found");
    assert!(
        failures.is_empty(),
        "dashboard queries:\n{}",
        failures.join("\n")
    );

    // The shipped new-block alert fires for the blocked site on that network...
    let firing = prom
        .wait_for(
            "ALERTS{alertname=\"WitnessSiteNewlyBlocked\",alertstate=\"firing\",domain=\"news.test\"}",
            Duration::from_secs(30),
        )
        .unwrap();
    assert!(!firing.is_empty(), "WitnessSiteNewlyBlocked did not fire");
    assert_eq!(firing[0]["metric"]["asn"], "64500");
    assert_eq!(firing[0]["metric"]["method"], "tls");
    // ...and reaches the webhook through Alertmanager.
    let bodies = hook.wait_for(Duration::from_secs(30), |b| {
        b.iter()
            .any(|x| x.contains("WitnessSiteNewlyBlocked") && x.contains("news.test"))
    });
    assert!(
        bodies
            .iter()
            .any(|x| x.contains("WitnessSiteNewlyBlocked") && x.contains("news.test")),
        "the alert never reached the webhook: {bodies:#?}"
    );
}
