//! The operators' kit (`deploy/`, `dashboards/`) checked with the real tools: `promtool` (config,
//! rules, alert unit tests, and every dashboard query), `amtool`, `systemd-analyze verify`,
//! `docker-compose config`, `shellcheck`; and the Grafana dashboards validated as JSON against the
//! collector's metric names.
//!
//! A missing tool skips its test with a loud message; `WITNESS_REQUIRE_TOOLS=1` turns that into a
//! failure. Debian packages: prometheus, prometheus-alertmanager, systemd, docker-compose,
//! shellcheck.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;
use witness_tests::bins::{collector_bin, witness_bin, workspace_root};
use witness_tests::dashboards::{
    dashboard_queries, is_ident_start, load_dashboards, read_ident, substitute_variables,
    DASHBOARDS,
};

/// The uid of the provisioned Prometheus data source (the shipped provisioning files).
const DATASOURCE_UID: &str = "witness-prometheus";

/// What every panel, target, annotation and query variable of a dashboard refers to: its
/// data-source variable, never a fixed uid (so the dashboards import into any Grafana).
const DATASOURCE_REF: &str = "${datasource}";

/// The import input the data-source variable defaults to (`__inputs`).
const DATASOURCE_INPUT: &str = "DS_PROMETHEUS";

/// The collector's metrics (`collector/src/metrics.rs`) with their labels.
const COLLECTOR_METRICS: &[(&str, &[&str])] = &[
    (
        "witness_measurements_received_total",
        &["status", "method", "asn", "country"],
    ),
    (
        "witness_site_blocked_ratio",
        &["domain", "category", "asn", "country", "method"],
    ),
    ("witness_site_censor_hop", &["domain", "asn", "method"]),
    ("witness_probes_active", &["asn", "country"]),
    ("witness_events_total", &["kind"]),
    ("witness_event_transitions_suppressed_total", &["kind"]),
    ("witness_network_offline", &["asn", "country"]),
    ("witness_ingest_duration_seconds", &[]),
    ("witness_records_rejected_total", &["reason"]),
    ("witness_webhook_failures_total", &[]),
    ("witness_build_info", &["version"]),
    ("witness_control_cache_hits_total", &[]),
    ("witness_control_cache_misses_total", &[]),
    ("witness_control_cache_evictions_total", &[]),
    ("witness_control_cache_fresh_total", &[]),
    ("witness_control_cache_entries", &[]),
    ("witness_control_cache_bytes", &[]),
];

/// The collector's only histogram: queried through its `_bucket`, `_sum` and `_count` series.
const HISTOGRAM: &str = "witness_ingest_duration_seconds";

/// Labels Prometheus adds to every scraped series.
const TARGET_LABELS: &[&str] = &["job", "instance"];

/// The alerts operators were promised (docs/operations.md explains each).
const REQUIRED_ALERTS: &[&str] = &[
    "WitnessSiteNewlyBlocked",
    "WitnessSiteUnblocked",
    "WitnessNetworkOffline",
    "WitnessMessagingBlocked",
    "WitnessProbeFleetSilent",
    "WitnessCollectorDown",
    "WitnessIngestSlow",
    "WitnessWebhookFailing",
];

// ------------------------------------------------------------------------------------ helpers

fn repo(rel: &str) -> PathBuf {
    workspace_root().join(rel)
}

fn read(rel: &str) -> String {
    fs::read_to_string(repo(rel)).unwrap_or_else(|e| panic!("reading {rel}: {e}"))
}

/// The tool on PATH, or `None` after a loud skip message (a panic under WITNESS_REQUIRE_TOOLS).
fn tool(name: &str, package: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        let message = format!("`{name}` is not installed (Debian package `{package}`)");
        if std::env::var_os("WITNESS_REQUIRE_TOOLS").is_some_and(|v| v != "0") {
            panic!("{message}, and WITNESS_REQUIRE_TOOLS is set");
        }
        eprintln!(
            "\n!!!!!!!! SKIPPED: {message}; this test checked NOTHING. \
             Install it: apt-get install {package} !!!!!!!!\n"
        );
    }
    found
}

/// Runs the command; returns stdout and stderr; panics with both when it fails.
fn run_ok(command: &mut Command) -> (String, String) {
    let out = command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "{command:?} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    (stdout, stderr)
}

/// Values of `KEY: value` lines (YAML list items or mappings), in order.
fn yaml_values(text: &str, key: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| {
            let t = line.trim_start().trim_start_matches("- ");
            t.strip_prefix(key)
                .and_then(|rest| rest.strip_prefix(':'))
                .map(|v| v.trim().trim_matches('"').to_string())
        })
        .collect()
}

fn recording_rule_names() -> BTreeSet<String> {
    let names: BTreeSet<String> = yaml_values(
        &read("deploy/prometheus/rules/witness-recording.yml"),
        "record",
    )
    .into_iter()
    .collect();
    assert!(!names.is_empty(), "no recording rules found");
    names
}

/// Every label any known series can carry.
fn all_labels() -> BTreeSet<&'static str> {
    COLLECTOR_METRICS
        .iter()
        .flat_map(|(_, labels)| labels.iter().copied())
        .chain(TARGET_LABELS.iter().copied())
        .chain(["le"])
        .collect()
}

/// The labels a series may be selected by, or `None` if the name is not a known series.
fn series_labels(name: &str, recording: &BTreeSet<String>) -> Option<BTreeSet<&'static str>> {
    if name == "up" {
        return Some(TARGET_LABELS.iter().copied().collect());
    }
    if recording.contains(name) {
        return Some(all_labels());
    }
    let with_target = |labels: &[&'static str]| -> BTreeSet<&'static str> {
        labels.iter().chain(TARGET_LABELS).copied().collect()
    };
    if let Some(suffix) = name.strip_prefix(HISTOGRAM) {
        return match suffix {
            "_bucket" => Some(with_target(&["le"])),
            "_sum" | "_count" => Some(with_target(&[])),
            _ => None,
        };
    }
    COLLECTOR_METRICS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, labels)| with_target(labels))
}

// ----------------------------------------------------------------------------- PromQL scanning

/// PromQL functions and aggregators: identifiers that are never metric names.
const AGGREGATORS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
];
const KEYWORDS: &[&str] = &[
    "and", "or", "unless", "bool", "offset", "inf", "nan", "start", "end",
];
const GROUPING: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// What one PromQL expression refers to.
#[derive(Debug, Default)]
struct Refs {
    /// Metric names, in order of appearance.
    metrics: Vec<String>,
    /// (metric whose matcher it is, or None for grouping clauses; label name).
    labels: Vec<(Option<String>, String)>,
}

/// Index after the string literal starting at `i` (a quote character).
fn skip_string(chars: &[char], i: usize) -> usize {
    let quote = chars[i];
    let mut j = i + 1;
    while j < chars.len() && chars[j] != quote {
        if chars[j] == '\\' && quote != '`' {
            j += 1;
        }
        j += 1;
    }
    j + 1
}

fn skip_ws(chars: &[char], mut i: usize) -> usize {
    while i < chars.len() && chars[i].is_whitespace() {
        i += 1;
    }
    i
}

/// Scans a PromQL expression (Grafana variables already replaced) for metric and label names.
/// Not a parser: `promtool` checks the syntax; this finds the names to check against the list.
fn promql_refs(expr: &str) -> Refs {
    let chars: Vec<char> = expr.chars().collect();
    let mut refs = Refs::default();
    let mut last_metric: Option<String> = None;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '"' || c == '\'' || c == '`' {
            i = skip_string(&chars, i);
            last_metric = None;
        } else if c == '{' {
            // Label matchers: name op "value", ...
            let owner = last_metric.take();
            i += 1;
            loop {
                i = skip_ws(&chars, i);
                if i >= chars.len() || chars[i] == '}' {
                    i += 1;
                    break;
                }
                if chars[i] == ',' {
                    i += 1;
                    continue;
                }
                if is_ident_start(chars[i]) {
                    let (name, j) = read_ident(&chars, i);
                    refs.labels.push((owner.clone(), name));
                    i = j;
                    while i < chars.len() && !matches!(chars[i], '"' | '\'' | '`' | '}') {
                        i += 1;
                    }
                    if i < chars.len() && chars[i] != '}' {
                        i = skip_string(&chars, i);
                    }
                } else {
                    i += 1;
                }
            }
        } else if c == '[' {
            while i < chars.len() && chars[i] != ']' {
                i += 1;
            }
            i += 1;
            last_metric = None;
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            // Numbers and durations: 0.5, 1e3, 0x1f, 5m, 1h30m.
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
            last_metric = None;
        } else if is_ident_start(c) {
            let (ident, j) = read_ident(&chars, i);
            let next = skip_ws(&chars, j);
            let followed_by_paren = chars.get(next) == Some(&'(');
            i = j;
            last_metric = None;
            if GROUPING.contains(&ident.as_str()) {
                if followed_by_paren {
                    let mut k = next + 1;
                    while k < chars.len() && chars[k] != ')' {
                        if is_ident_start(chars[k]) {
                            let (label, after) = read_ident(&chars, k);
                            refs.labels.push((None, label));
                            k = after;
                        } else {
                            k += 1;
                        }
                    }
                    i = k + 1;
                }
            } else if followed_by_paren
                || AGGREGATORS.contains(&ident.as_str())
                || KEYWORDS.contains(&ident.to_ascii_lowercase().as_str())
            {
                // A function, an aggregator (maybe followed by `by (...)`) or a keyword.
            } else {
                refs.metrics.push(ident.clone());
                last_metric = Some(ident);
            }
        } else {
            i += 1;
            last_metric = None;
        }
    }
    refs
}

#[test]
fn promql_scanner_finds_metrics_and_labels() {
    let r = promql_refs(
        r#"sum by (asn, country) (increase(witness_measurements_received_total{status="blocked", asn=~".*"}[1h] offset 1d)) / on (asn) group_left max(up{job="x"}) > 0.5 or vector(0)"#,
    );
    assert_eq!(r.metrics, ["witness_measurements_received_total", "up"]);
    let labels: Vec<(Option<&str>, &str)> = r
        .labels
        .iter()
        .map(|(m, l)| (m.as_deref(), l.as_str()))
        .collect();
    assert_eq!(
        labels,
        [
            (None, "asn"),
            (None, "country"),
            (Some("witness_measurements_received_total"), "status"),
            (Some("witness_measurements_received_total"), "asn"),
            (None, "asn"),
            (Some("up"), "job"),
        ]
    );
    let (text, names) = substitute_variables(r#"x{a=~"$asn",b=~"${site:regex}",c=~"[[country]]"}"#);
    assert_eq!(text, r#"x{a=~".*",b=~".*",c=~".*"}"#);
    assert_eq!(names, ["asn", "site", "country"]);
}

// ---------------------------------------------------------------------------------- Prometheus

#[test]
fn promtool_check_config() {
    let Some(promtool) = tool("promtool", "prometheus") else {
        return;
    };
    let (out, _) = run_ok(
        Command::new(promtool)
            .args(["check", "config"])
            .arg(repo("deploy/prometheus/prometheus.yml")),
    );
    assert!(out.contains("2 rule files found"), "{out}");
}

#[test]
fn promtool_check_rules() {
    let Some(promtool) = tool("promtool", "prometheus") else {
        return;
    };
    run_ok(
        Command::new(promtool)
            .args(["check", "rules"])
            .arg(repo("deploy/prometheus/rules/witness-recording.yml"))
            .arg(repo("deploy/prometheus/rules/witness-alerts.yml")),
    );
}

#[test]
fn promtool_test_rules() {
    let Some(promtool) = tool("promtool", "prometheus") else {
        return;
    };
    let (out, err) = run_ok(
        Command::new(promtool)
            .args(["test", "rules"])
            .arg(repo("deploy/prometheus/tests/witness-alerts.test.yml")),
    );
    assert!(format!("{out}{err}").contains("SUCCESS"), "{out}{err}");
}

/// One `- alert:` block of the alerts file: its name and its lines.
fn alert_blocks() -> Vec<(String, String)> {
    let text = read("deploy/prometheus/rules/witness-alerts.yml");
    let mut blocks: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        let t = line.trim_start();
        if let Some(name) = t.strip_prefix("- alert:") {
            blocks.push((name.trim().to_string(), String::new()));
        } else if t.starts_with("- name:") {
            blocks.push((String::new(), String::new()));
        } else if let Some((_, body)) = blocks.last_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    blocks.retain(|(name, _)| !name.is_empty());
    blocks
}

#[test]
fn every_alert_is_documented_labelled_and_unit_tested_both_ways() {
    let blocks = alert_blocks();
    let names: BTreeSet<&str> = blocks.iter().map(|(n, _)| n.as_str()).collect();
    for required in REQUIRED_ALERTS {
        assert!(names.contains(required), "alert {required} is missing");
    }

    // In the unit tests: `alertname: X` followed by `exp_alerts: []` (quiet) or by
    // `exp_alerts:` and a list (firing).
    let tests = read("deploy/prometheus/tests/witness-alerts.test.yml");
    let lines: Vec<&str> = tests.lines().map(str::trim).collect();
    let mut firing = BTreeSet::new();
    let mut quiet = BTreeSet::new();
    for (i, line) in lines.iter().enumerate() {
        if let Some(name) = line.strip_prefix("alertname:") {
            match lines.get(i + 1) {
                Some(&"exp_alerts: []") => quiet.insert(name.trim()),
                Some(&"exp_alerts:") => firing.insert(name.trim()),
                other => panic!("alertname {name} followed by {other:?}"),
            };
        }
    }
    let docs = read("docs/operations.md");
    for (name, body) in &blocks {
        assert!(
            firing.contains(name.as_str()),
            "{name}: no firing unit test"
        );
        assert!(
            quiet.contains(name.as_str()),
            "{name}: no not-firing unit test"
        );
        for key in ["expr:", "for:", "severity:", "summary:", "description:"] {
            assert!(body.contains(key), "{name}: no `{key}`");
        }
        assert!(
            docs.contains(&format!("### {name}")),
            "{name}: no `### {name}` section in docs/operations.md"
        );
    }
    for name in firing.iter().chain(&quiet) {
        assert!(names.contains(name), "unit test for unknown alert {name}");
    }
}

/// GitHub-style anchor of a Markdown heading: lower case, spaces to `-`, punctuation dropped.
fn heading_anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

#[test]
fn every_alert_has_a_runbook_url_into_the_operations_guide() {
    let manifest = read("Cargo.toml");
    let repository = yaml_values(&manifest.replace(" = ", ": "), "repository")
        .pop()
        .expect("workspace repository");
    let base = format!("{repository}/blob/main/docs/operations.md#");
    let anchors: BTreeSet<String> = read("docs/operations.md")
        .lines()
        .filter_map(|l| {
            l.trim_start_matches('#')
                .strip_prefix(' ')
                .filter(|_| l.starts_with('#'))
        })
        .map(heading_anchor)
        .collect();
    let blocks = alert_blocks();
    assert!(blocks.len() >= 8);
    for (name, body) in &blocks {
        let urls = yaml_values(body, "runbook_url");
        assert_eq!(urls.len(), 1, "{name}: runbook_url {urls:?}");
        let anchor = urls[0]
            .strip_prefix(&base)
            .unwrap_or_else(|| panic!("{name}: runbook_url {} is not under {base}", urls[0]));
        assert_eq!(anchor, heading_anchor(name), "{name}: runbook anchor");
        assert!(
            anchors.contains(anchor),
            "{name}: docs/operations.md has no heading with anchor #{anchor}"
        );
    }
}

#[test]
fn rules_use_only_known_metrics() {
    let recording = recording_rule_names();
    for file in [
        "deploy/prometheus/rules/witness-recording.yml",
        "deploy/prometheus/rules/witness-alerts.yml",
    ] {
        let text = read(file);
        // Expressions are one line, or a `|` block indented under `expr:`.
        let mut exprs = Vec::new();
        let mut lines = text.lines().peekable();
        while let Some(line) = lines.next() {
            let t = line.trim_start();
            let Some(rest) = t.strip_prefix("expr:") else {
                continue;
            };
            let rest = rest.trim();
            if rest == "|" || rest == ">" {
                let indent = line.len() - t.len();
                let mut block = String::new();
                while let Some(next) = lines.peek() {
                    let next_indent = next.len() - next.trim_start().len();
                    if !next.trim().is_empty() && next_indent <= indent {
                        break;
                    }
                    block.push_str(next);
                    block.push('\n');
                    lines.next();
                }
                exprs.push(block);
            } else {
                exprs.push(rest.to_string());
            }
        }
        assert!(!exprs.is_empty(), "{file}: no expressions");
        for expr in exprs {
            check_refs(&format!("{file}: {expr}"), &expr, &recording);
        }
    }
}

/// Checks that `expr` (variables substituted) names only known series and their labels.
fn check_refs(context: &str, expr: &str, recording: &BTreeSet<String>) {
    let refs = promql_refs(expr);
    assert!(!refs.metrics.is_empty(), "{context}: no metric found");
    for metric in &refs.metrics {
        assert!(
            series_labels(metric, recording).is_some(),
            "{context}: `{metric}` is neither a collector metric, `up`, nor a recording rule"
        );
    }
    let any = all_labels();
    for (metric, label) in &refs.labels {
        let allowed = match metric {
            Some(m) => series_labels(m, recording).unwrap_or_default(),
            // Grouping labels may also be ones the expression adds itself (label_replace).
            None => any.iter().copied().chain(["reason"]).collect(),
        };
        assert!(
            allowed.contains(label.as_str()),
            "{context}: label `{label}` is not a label of {}",
            metric.as_deref().unwrap_or("any known series")
        );
    }
}

#[test]
fn known_metric_names_match_the_collector() {
    let path = repo("collector/src/metrics.rs");
    let Ok(source) = fs::read_to_string(&path) else {
        eprintln!(
            "\n!!!!!!!! SKIPPED: {} does not exist; metric names NOT cross-checked !!!!!!!!\n",
            path.display()
        );
        return;
    };
    let declared: BTreeSet<String> = source
        .lines()
        .filter_map(|line| {
            let rest = line.trim().strip_prefix("pub const ")?;
            let (_, value) = rest.split_once("&str = \"")?;
            Some(value.split('"').next()?.to_string())
        })
        .filter(|v| v.starts_with("witness_"))
        .collect();
    let ours: BTreeSet<String> = COLLECTOR_METRICS
        .iter()
        .map(|(n, _)| n.to_string())
        .collect();
    assert_eq!(
        declared, ours,
        "collector/src/metrics.rs declares other metric names than the dashboards and rules expect"
    );
    // Label lists, as written in the source (whitespace removed): in the order given here (the
    // prometheus crate's vectors), or sorted (the state gauges written straight to text).
    let compact: String = source.chars().filter(|c| !c.is_whitespace()).collect();
    let list_of = |labels: &[&str]| {
        format!(
            "&[{}]",
            labels
                .iter()
                .map(|l| format!("\"{l}\""))
                .collect::<Vec<_>>()
                .join(",")
        )
    };
    for (name, labels) in COLLECTOR_METRICS.iter().filter(|(_, l)| !l.is_empty()) {
        let mut sorted = labels.to_vec();
        sorted.sort_unstable();
        let (list, sorted) = (list_of(labels), list_of(&sorted));
        assert!(
            compact.contains(&list) || compact.contains(&sorted),
            "collector/src/metrics.rs has no label list {list} (or {sorted}) for {name}"
        );
    }
}

// -------------------------------------------------------------------------------- Alertmanager

#[test]
fn amtool_check_config() {
    let Some(amtool) = tool("amtool", "prometheus-alertmanager") else {
        return;
    };
    let (out, _) = run_ok(
        Command::new(amtool)
            .arg("check-config")
            .arg(repo("deploy/alertmanager/alertmanager.yml")),
    );
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn alertmanager_routes_alerts_to_the_expected_receivers() {
    let Some(amtool) = tool("amtool", "prometheus-alertmanager") else {
        return;
    };
    let cases: &[(&[&str], &str)] = &[
        (
            &["alertname=WitnessCollectorDown", "severity=critical"],
            "witness-webhook,oncall-email",
        ),
        (
            &[
                "alertname=WitnessSiteNewlyBlocked",
                "severity=warning",
                "asn=9198",
            ],
            "witness-webhook,chat-slack,chat-matrix",
        ),
        (
            &[
                "alertname=WitnessSiteBlocked",
                "asn=9198",
                "domain=a.example",
            ],
            "witness-webhook,chat-slack,chat-matrix",
        ),
        (
            &[
                "alertname=WitnessBlockMoved",
                "severity=info",
                "asn=9198",
                "domain=a.example",
            ],
            "witness-webhook,chat-slack,chat-matrix",
        ),
        (
            &[
                "alertname=WitnessNetworkOffline",
                "severity=critical",
                "asn=9198",
            ],
            "witness-webhook,oncall-email,chat-slack,chat-matrix",
        ),
        (
            &["alertname=WitnessIngestSlow", "severity=warning"],
            "witness-webhook",
        ),
    ];
    for (labels, receivers) in cases {
        let mut command = Command::new(&amtool);
        command
            .args(["config", "routes", "test"])
            .arg(format!(
                "--config.file={}",
                repo("deploy/alertmanager/alertmanager.yml").display()
            ))
            .arg(format!("--verify.receivers={receivers}"))
            .args(labels.iter());
        run_ok(&mut command);
    }
}

// ------------------------------------------------------------------------------------- systemd

fn unit_files() -> Vec<PathBuf> {
    let mut units: Vec<PathBuf> = fs::read_dir(repo("deploy/systemd"))
        .expect("deploy/systemd")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| {
            p.extension()
                .is_some_and(|e| e == "service" || e == "timer")
        })
        .collect();
    units.sort();
    assert!(units.len() >= 4, "expected 4 units, found {units:?}");
    units
}

/// `systemd-analyze verify` needs the ExecStart binary to exist: each unit is copied into a
/// temporary directory with `/usr/local/bin/` in ExecStart pointing at dummy executables there.
#[test]
fn systemd_analyze_verify_each_unit() {
    let Some(analyze) = tool("systemd-analyze", "systemd") else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let bin = dir.path().join("bin");
    fs::create_dir(&bin).expect("bin dir");
    for name in ["witness", "witness-collector"] {
        let path = bin.join(name);
        fs::write(&path, "#!/bin/sh\nexit 0\n").expect("dummy binary");
        let mut perms = fs::metadata(&path).expect("metadata").permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
        fs::set_permissions(&path, perms).expect("chmod");
    }
    let units = unit_files();
    for unit in &units {
        let text = fs::read_to_string(unit).expect("unit");
        assert!(
            !text.contains("ExecStart=") || text.contains("ExecStart=/usr/local/bin/"),
            "{}: ExecStart must use /usr/local/bin/ (where install.sh puts the binary)",
            unit.display()
        );
        let copy = text.replace(
            "ExecStart=/usr/local/bin/",
            &format!("ExecStart={}/", bin.display()),
        );
        fs::write(dir.path().join(unit.file_name().expect("name")), copy).expect("copy");
    }
    for unit in &units {
        let name = unit
            .file_name()
            .expect("name")
            .to_string_lossy()
            .to_string();
        let (out, err) = run_ok(
            Command::new(&analyze)
                .args(["verify", "--man=no"])
                .arg(dir.path().join(&name))
                .current_dir(dir.path()),
        );
        // Unknown keys and bad values are only warnings: any word about our units fails.
        let ours: Vec<&str> = out
            .lines()
            .chain(err.lines())
            .filter(|l| l.contains(&name) || l.contains(&dir.path().display().to_string()))
            .collect();
        assert!(
            ours.is_empty(),
            "systemd-analyze verify {name}:\n{}",
            ours.join("\n")
        );
    }
}

/// `Key=value` lines of a unit file, by key (repeated keys keep every value).
fn unit_directives(path: &Path) -> BTreeMap<String, Vec<String>> {
    let text = fs::read_to_string(path).expect("unit");
    let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.starts_with('[') {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            map.entry(k.to_string()).or_default().push(v.to_string());
        }
    }
    map
}

#[test]
fn systemd_services_are_hardened() {
    let expected: &[(&str, &str)] = &[
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("CapabilityBoundingSet", ""),
        (
            "RestrictAddressFamilies",
            "AF_INET AF_INET6 AF_UNIX AF_NETLINK",
        ),
    ];
    let cases: &[(&str, &str, &str, &str)] = &[
        // unit, user, state directory, config variable
        (
            "witness.service",
            "witness",
            "witness",
            "WITNESS_CONFIG=/etc/witness/config.toml",
        ),
        (
            "witness-run.service",
            "witness",
            "witness",
            "WITNESS_CONFIG=/etc/witness/config.toml",
        ),
        (
            "witness-collector.service",
            "witness-collector",
            "witness-collector",
            "WITNESS_COLLECTOR_CONFIG=/etc/witness-collector/config.toml",
        ),
    ];
    for (unit, user, state, env) in cases {
        let d = unit_directives(&repo(&format!("deploy/systemd/{unit}")));
        let one = |k: &str| -> String {
            let v = d.get(k).unwrap_or_else(|| panic!("{unit}: no {k}="));
            assert_eq!(v.len(), 1, "{unit}: {k}= more than once");
            v[0].clone()
        };
        for (k, v) in expected {
            assert_eq!(one(k), *v, "{unit}: {k}");
        }
        assert_eq!(one("User"), *user, "{unit}");
        assert_eq!(one("StateDirectory"), *state, "{unit}");
        assert!(
            d.get("Environment")
                .is_some_and(|e| e.iter().any(|e| e == env)),
            "{unit}: no Environment={env}"
        );
    }
    let daemon = unit_directives(&repo("deploy/systemd/witness.service"));
    assert_eq!(daemon["ExecStart"], ["/usr/local/bin/witness daemon --yes"]);
    assert_eq!(daemon["Restart"], ["always"]);
    let collector = unit_directives(&repo("deploy/systemd/witness-collector.service"));
    assert_eq!(collector["Restart"], ["always"]);
    let timer = unit_directives(&repo("deploy/systemd/witness-run.timer"));
    assert_eq!(timer["OnCalendar"], ["hourly"]);
    assert!(
        timer.contains_key("RandomizedDelaySec"),
        "timer has no jitter"
    );
    assert_eq!(timer["Unit"], ["witness-run.service"]);
}

// -------------------------------------------------------------------------- containers, scripts

#[test]
fn docker_compose_config() {
    let Some(compose) = tool("docker-compose", "docker-compose") else {
        return;
    };
    // No default Grafana password: without one, compose refuses and says which variable.
    let refused = Command::new(&compose)
        .arg("-f")
        .arg(repo("deploy/compose/docker-compose.yml"))
        .arg("config")
        .env_remove("GRAFANA_ADMIN_PASSWORD")
        .stdin(Stdio::null())
        .output()
        .expect("run docker-compose");
    assert!(
        !refused.status.success(),
        "compose accepted a missing GRAFANA_ADMIN_PASSWORD"
    );
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("set GRAFANA_ADMIN_PASSWORD"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let (out, _) = run_ok(
        Command::new(&compose)
            .arg("-f")
            .arg(repo("deploy/compose/docker-compose.yml"))
            .arg("config")
            .env("GRAFANA_ADMIN_PASSWORD", "a-test-password"),
    );
    assert!(
        out.contains("GF_SECURITY_ADMIN_PASSWORD: a-test-password"),
        "{out}"
    );
    // The current Compose format: no `version:` key.
    assert!(
        !read("deploy/compose/docker-compose.yml")
            .lines()
            .any(|l| l.starts_with("version:")),
        "obsolete `version:` key"
    );
    // Every service has a healthcheck; Prometheus and Grafana wait for healthy dependencies.
    let services = ["collector", "prometheus", "alertmanager", "grafana"];
    for service in services {
        let block = service_block(&out, service);
        assert!(
            block.contains("    healthcheck:\n"),
            "{service}: no healthcheck:\n{block}"
        );
        assert!(
            block.contains("      test:\n"),
            "{service}: healthcheck without test"
        );
    }
    for service in ["prometheus", "grafana"] {
        assert!(
            service_block(&out, service).contains("condition: service_healthy"),
            "{service} does not wait for healthy dependencies"
        );
    }
    // `config` resolves bind mounts to absolute host paths but does not check them.
    let mut mounts = 0;
    for line in out.lines() {
        if let Some(rest) = line.trim().strip_prefix("- /") {
            let host = format!("/{}", rest.split(':').next().unwrap_or_default());
            assert!(
                Path::new(&host).exists(),
                "bind mount of a missing path: {host}"
            );
            mounts += 1;
        }
    }
    assert!(
        mounts >= 6,
        "expected the configs to be bind-mounted:\n{out}"
    );
}

/// The lines of one service in `docker-compose config` output (services at two spaces).
fn service_block(config: &str, service: &str) -> String {
    let mut out = String::new();
    let mut inside = false;
    for line in config.lines() {
        if line.starts_with("  ") && !line.starts_with("   ") {
            inside = line.trim_end() == format!("  {service}:");
        } else if !line.starts_with(' ') {
            inside = false;
        }
        if inside {
            out.push_str(line);
            out.push('\n');
        }
    }
    assert!(!out.is_empty(), "no service {service}:\n{config}");
    out
}

#[test]
fn compose_mounts_what_the_provisioning_expects() {
    let compose = read("deploy/compose/docker-compose.yml");
    let provider = read("dashboards/provisioning/dashboards/witness.yaml");
    let path = yaml_values(&provider, "path").pop().expect("provider path");
    assert!(
        compose.contains(&format!("../../dashboards:{path}:ro")),
        "compose does not mount the dashboards at the provider's path {path}"
    );
    assert!(compose.contains("image: prom/prometheus:v2.42"));
    assert!(compose.contains("image: prom/alertmanager:v0.25"));
    for file in [
        "dashboards/provisioning/datasources/witness.yaml",
        "deploy/compose/grafana-datasource.yaml",
    ] {
        let text = read(file);
        assert_eq!(yaml_values(&text, "uid"), [DATASOURCE_UID], "{file}");
        assert_eq!(yaml_values(&text, "type"), ["prometheus"], "{file}");
    }
    // The compose targets replace the default ones file for file.
    for name in ["witness-collector.yml", "alertmanager.yml"] {
        assert!(repo(&format!("deploy/prometheus/targets/{name}")).is_file());
        assert!(repo(&format!("deploy/compose/prometheus-targets/{name}")).is_file());
    }
}

/// The compose collector config is accepted by the real collector (strict parsing), and the
/// same file with an unknown key is refused, so the acceptance means something.
#[test]
fn compose_collector_config_is_accepted_by_the_collector() {
    let dir = tempfile::tempdir().expect("temp dir");
    let original = read("deploy/compose/collector.toml");
    let store = "sqlite:///var/lib/witness-collector/witness-collector.db";
    assert!(
        original.contains(store),
        "collector.toml: store url changed"
    );
    let local = original.replace(
        store,
        &format!("sqlite://{}", dir.path().join("c.db").display()),
    );
    let bin = collector_bin();
    let good = dir.path().join("good.toml");
    fs::write(&good, &local).expect("write");
    run_ok(
        Command::new(&bin)
            .arg("--config")
            .arg(&good)
            .arg("check-config"),
    );
    let bad = dir.path().join("bad.toml");
    fs::write(
        &bad,
        local.replace("[server]\n", "[server]\nno_such_key = 1\n"),
    )
    .expect("write");
    let out = Command::new(&bin)
        .arg("--config")
        .arg(&bad)
        .arg("check-config")
        .output()
        .expect("run collector");
    assert!(!out.status.success(), "an unknown key was accepted");
}

#[test]
fn dockerfiles_are_multi_stage_and_unprivileged() {
    for (file, package, bin) in [
        (
            "deploy/docker/Dockerfile.collector",
            "witness-collector",
            "witness-collector",
        ),
        ("deploy/docker/Dockerfile.probe", "witness", "witness"),
    ] {
        let text = read(file);
        let froms: Vec<&str> = text.lines().filter(|l| l.starts_with("FROM ")).collect();
        assert_eq!(froms.len(), 2, "{file}: two stages expected");
        assert!(
            froms[0].starts_with("FROM rust:") && froms[0].contains("slim"),
            "{file}"
        );
        assert!(froms[0].ends_with(" AS build"), "{file}");
        assert_eq!(froms[1], "FROM debian:bookworm-slim", "{file}");
        assert!(
            text.contains(&format!("--locked -p {package} --bin {bin}")),
            "{file}: builds {package}/{bin}"
        );
        let user = text
            .lines()
            .filter_map(|l| l.strip_prefix("USER "))
            .next_back()
            .unwrap_or_else(|| panic!("{file}: no USER"));
        assert!(
            !user.starts_with("root") && !user.starts_with('0'),
            "{file}: runs as root"
        );
        let manifest = read(&format!(
            "{}/Cargo.toml",
            if package == "witness" {
                "probe/app"
            } else {
                "collector"
            }
        ));
        assert!(manifest.contains(&format!("name = \"{package}\"")));
        assert!(manifest.contains(&format!("name = \"{bin}\"")));
    }
}

fn shell_scripts() -> [PathBuf; 6] {
    [
        repo("deploy/cross-build.sh"),
        repo("deploy/install.sh"),
        repo("deploy/release.sh"),
        repo("deploy/debian/postinst"),
        repo("deploy/debian/prerm"),
        repo("deploy/debian/postrm"),
    ]
}

#[test]
fn shell_scripts_parse() {
    for script in shell_scripts() {
        let bash = script.ends_with("cross-build.sh") || script.ends_with("release.sh");
        let shell = if bash { "bash" } else { "sh" };
        run_ok(Command::new(shell).arg("-n").arg(&script));
    }
}

#[test]
fn shellcheck_scripts() {
    let Some(shellcheck) = tool("shellcheck", "shellcheck") else {
        return;
    };
    run_ok(Command::new(shellcheck).args(shell_scripts()));
}

/// The full cross build takes too long for the tests: `--dry-run` shows what it would run.
#[test]
fn cross_build_dry_run_sets_the_debian_cross_linkers() {
    let (out, _) = run_ok(
        Command::new("bash")
            .arg(repo("deploy/cross-build.sh"))
            .arg("--dry-run"),
    );
    for target in [
        "aarch64-unknown-linux-gnu",
        "armv7-unknown-linux-gnueabihf",
        "x86_64-unknown-linux-gnu",
    ] {
        assert!(
            out.contains(&format!("rustup target add {target}\n")),
            "{out}"
        );
        assert!(
            out.contains(&format!("-p witness --bin witness --target {target}\n")),
            "{out}"
        );
    }
    for (var, gcc) in [
        (
            "CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER",
            "aarch64-linux-gnu-gcc",
        ),
        ("CC_aarch64_unknown_linux_gnu", "aarch64-linux-gnu-gcc"),
        (
            "CARGO_TARGET_ARMV7_UNKNOWN_LINUX_GNUEABIHF_LINKER",
            "arm-linux-gnueabihf-gcc",
        ),
        (
            "CC_armv7_unknown_linux_gnueabihf",
            "arm-linux-gnueabihf-gcc",
        ),
    ] {
        assert!(out.contains(&format!("{var}={gcc} ")), "{var}:\n{out}");
    }
}

/// A release directory as release.sh makes it, for one file: the file, SHA256SUMS, and its
/// signature by a throwaway SSH key; returns (the file, the allowed-signers file).
fn signed_release(dir: &Path, src: &Path, name: &str) -> (PathBuf, PathBuf) {
    let file = dir.join(name);
    fs::copy(src, &file).expect("copy the binary");
    let key = dir.join("release-key");
    run_ok(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "test", "-f"])
            .arg(&key),
    );
    run_ok(
        Command::new("sh")
            .arg("-c")
            .arg(format!("sha256sum {name} > SHA256SUMS"))
            .current_dir(dir),
    );
    run_ok(
        Command::new("ssh-keygen")
            .args(["-Y", "sign", "-q", "-n", "file", "-f"])
            .arg(&key)
            .arg(dir.join("SHA256SUMS")),
    );
    let public = fs::read_to_string(dir.join("release-key.pub")).expect("public key");
    let signers = dir.join("allowed_signers");
    fs::write(
        &signers,
        format!("witness-release namespaces=\"file\" {}", public.trim()),
    )
    .expect("allowed signers");
    (file, signers)
}

#[test]
fn install_script_verifies_then_installs_into_destdir_after_consent() {
    if tool("ssh-keygen", "openssh-client").is_none() {
        return;
    }
    let release = tempfile::tempdir().expect("temp dir");
    let (bin, signers) = signed_release(
        release.path(),
        &witness_bin(),
        "witness-0.0.0-x86_64-unknown-linux-musl",
    );
    let install = |dest: &Path, extra: &[&str], consent: bool| {
        let mut cmd = Command::new("sh");
        cmd.arg(repo("deploy/install.sh"))
            .arg("--allowed-signers")
            .arg(&signers)
            .args(extra)
            .arg(&bin)
            .env("DESTDIR", dest)
            .stdin(Stdio::null());
        if consent {
            cmd.env("WITNESS_ACCEPT_CONSENT", "yes");
        } else {
            cmd.env_remove("WITNESS_ACCEPT_CONSENT");
        }
        cmd.output().expect("run install.sh")
    };
    let dest = tempfile::tempdir().expect("temp dir");
    let out = install(dest.path(), &[], true);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout.contains("verified"), "{stdout}");
    assert!(
        stdout.contains("systemctl enable --now witness.service"),
        "{stdout}"
    );
    for file in [
        "usr/local/bin/witness",
        "etc/witness/config.toml",
        "etc/systemd/system/witness.service",
        "etc/systemd/system/witness-run.service",
        "etc/systemd/system/witness-run.timer",
    ] {
        assert!(dest.path().join(file).is_file(), "{file} not installed");
    }
    // The written config is the probe's own example: the probe accepts it.
    let config = dest.path().join("etc/witness/config.toml");
    assert!(fs::read_to_string(&config)
        .expect("config")
        .contains("consent = false"));

    // Without consent, nothing is installed.
    let refused = tempfile::tempdir().expect("temp dir");
    let out = install(refused.path(), &[], false);
    assert!(!out.status.success(), "installed without consent");
    assert_eq!(
        fs::read_dir(refused.path()).expect("dir").count(),
        0,
        "files written without consent"
    );

    // A binary that is not the one signed for: refused before anything else.
    let mut bytes = fs::read(&bin).expect("binary");
    bytes.push(0);
    fs::write(&bin, bytes).expect("alter");
    let out = install(refused.path(), &[], true);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("does not match"),
        "{stderr}"
    );
    assert_eq!(fs::read_dir(refused.path()).expect("dir").count(), 0);
    // Another key's signers file: the signature does not verify.
    let other = tempfile::tempdir().expect("temp dir");
    let (_, other_signers) = signed_release(other.path(), &witness_bin(), "x");
    let out = Command::new("sh")
        .arg(repo("deploy/install.sh"))
        .arg("--allowed-signers")
        .arg(&other_signers)
        .arg(&bin)
        .env("DESTDIR", refused.path())
        .stdin(Stdio::null())
        .output()
        .expect("run install.sh");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("not a valid signature"),
        "{stderr}"
    );
    // The repository's allowed_signers holds no key yet: it says so.
    let out = Command::new("sh")
        .arg(repo("deploy/install.sh"))
        .arg(&bin)
        .env("DESTDIR", refused.path())
        .stdin(Stdio::null())
        .output()
        .expect("run install.sh");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("--allowed-signers"),
        "{stderr}"
    );
    // --unsigned, for a binary built from source.
    let out = install(refused.path(), &["--unsigned"], true);
    assert!(out.status.success(), "{out:?}");
    assert!(refused.path().join("usr/local/bin/witness").is_file());
}

// ---------------------------------------------------------------------------------- dashboards

/// A variable's query text (`label_values(...)`), whether stored as a string or an object.
fn variable_query(var: &Value) -> String {
    match &var["query"] {
        Value::String(s) => s.clone(),
        Value::Object(o) => o
            .get("query")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        _ => String::new(),
    }
}

/// `label_values(selector, label)` split into its selector and label.
fn label_values_parts(query: &str) -> (String, String) {
    let inner = query
        .trim()
        .strip_prefix("label_values(")
        .and_then(|q| q.strip_suffix(')'))
        .unwrap_or_else(|| panic!("variable query is not label_values(...): {query:?}"));
    let (selector, label) = inner
        .rsplit_once(',')
        .unwrap_or_else(|| panic!("label_values without a selector: {query:?}"));
    (selector.trim().to_string(), label.trim().to_string())
}

#[test]
fn dashboards_are_valid_and_every_panel_uses_the_datasource_variable() {
    let mut uids = BTreeSet::new();
    let mut titles = BTreeSet::new();
    // No other JSON file lies around unchecked.
    let on_disk: BTreeSet<String> = fs::read_dir(repo("dashboards"))
        .expect("dashboards/")
        .map(|e| {
            format!(
                "dashboards/{}",
                e.expect("entry").file_name().to_string_lossy()
            )
        })
        .filter(|p| p.ends_with(".json"))
        .collect();
    let listed: BTreeSet<String> = DASHBOARDS.iter().map(|s| s.to_string()).collect();
    assert_eq!(
        on_disk, listed,
        "dashboards/*.json and the list in this test differ"
    );

    for (file, dash) in load_dashboards() {
        let uid = dash["uid"]
            .as_str()
            .unwrap_or_else(|| panic!("{file}: no uid"));
        assert!(!uid.is_empty() && uid.len() <= 40, "{file}: uid {uid:?}");
        assert!(uids.insert(uid.to_string()), "{file}: duplicate uid {uid}");
        assert!(
            titles.insert(dash["title"].to_string()),
            "{file}: duplicate title"
        );
        let schema = dash["schemaVersion"].as_u64().expect("schemaVersion");
        assert!(
            (36..=41).contains(&schema),
            "{file}: schemaVersion {schema}"
        );

        // Importable: Grafana asks for this input and puts the chosen data source in the
        // variable; provisioned, the variable falls back to the default data source (the
        // shipped provisioning makes ours the default).
        let inputs = dash["__inputs"].as_array().expect("__inputs");
        assert_eq!(inputs.len(), 1, "{file}: __inputs");
        assert_eq!(inputs[0]["name"], DATASOURCE_INPUT, "{file}");
        assert_eq!(inputs[0]["type"], "datasource", "{file}");
        assert_eq!(inputs[0]["pluginId"], "prometheus", "{file}");
        let var = &dash["templating"]["list"][0];
        assert_eq!(var["name"], "datasource", "{file}: first variable");
        assert_eq!(var["type"], "datasource", "{file}");
        assert_eq!(var["query"], "prometheus", "{file}");
        assert_eq!(
            var["current"]["value"],
            format!("${{{DATASOURCE_INPUT}}}"),
            "{file}: the variable defaults to the import input"
        );
        let text = fs::read_to_string(repo(file)).expect("dashboard");
        assert!(
            !text.contains(DATASOURCE_UID),
            "{file}: names the data source uid {DATASOURCE_UID} instead of ${{datasource}}"
        );
        let uses_ours = |v: &Value| v["uid"] == DATASOURCE_REF && v["type"] == "prometheus";
        let mut ids = BTreeSet::new();
        let mut panels: Vec<&Value> = dash["panels"].as_array().expect("panels").iter().collect();
        while let Some(panel) = panels.pop() {
            let title = panel["title"].as_str().unwrap_or("?");
            assert!(
                ids.insert(panel["id"].as_u64().expect("panel id")),
                "{file}: duplicate panel id"
            );
            assert!(
                panel["gridPos"].is_object(),
                "{file}: {title:?} has no gridPos"
            );
            if panel["type"] == "row" {
                panels.extend(panel["panels"].as_array().into_iter().flatten());
                continue;
            }
            assert!(
                uses_ours(&panel["datasource"]),
                "{file}: {title:?} datasource"
            );
            let targets = panel["targets"].as_array().expect("targets");
            assert!(!targets.is_empty(), "{file}: {title:?} has no query");
            for t in targets {
                assert!(
                    uses_ours(&t["datasource"]),
                    "{file}: {title:?} target datasource"
                );
                assert!(
                    !t["expr"].as_str().unwrap_or_default().trim().is_empty(),
                    "{file}: {title:?} empty query"
                );
            }
        }
        for anno in dash["annotations"]["list"].as_array().into_iter().flatten() {
            if anno["builtIn"] != 1 {
                assert!(
                    uses_ours(&anno["datasource"]),
                    "{file}: annotation datasource"
                );
            }
        }
        let mut datasources = 0;
        for var in dash["templating"]["list"].as_array().expect("templating") {
            match var["type"].as_str() {
                Some("query") => {
                    assert!(uses_ours(&var["datasource"]), "{file}: variable datasource")
                }
                Some("datasource") => datasources += 1,
                other => panic!("{file}: variable of type {other:?}"),
            }
        }
        assert_eq!(datasources, 1, "{file}: one data-source variable");
        // Every datasource object anywhere (rows, library panels...) is ours or Grafana's own.
        let mut stack = vec![&dash];
        while let Some(v) = stack.pop() {
            match v {
                Value::Object(o) => {
                    if let Some(ds) = o.get("datasource").filter(|d| d.is_object()) {
                        assert!(
                            uses_ours(ds)
                                || ds["uid"] == "-- Grafana --"
                                || ds["type"] == "grafana",
                            "{file}: datasource {ds}"
                        );
                    }
                    stack.extend(o.values());
                }
                Value::Array(a) => stack.extend(a),
                _ => {}
            }
        }
    }
    // Provisioned dashboards take the default data source: the shipped one must be it.
    for f in [
        "dashboards/provisioning/datasources/witness.yaml",
        "deploy/compose/grafana-datasource.yaml",
    ] {
        assert_eq!(yaml_values(&read(f), "isDefault"), ["true"], "{f}");
    }
}

#[test]
fn dashboard_variables_are_defined_and_queries_use_only_known_metrics() {
    let recording = recording_rule_names();
    for (file, dash) in load_dashboards() {
        let vars: Vec<&Value> = dash["templating"]["list"]
            .as_array()
            .expect("templating")
            .iter()
            .filter(|v| v["type"] != "datasource")
            .collect();
        let names: Vec<&str> = vars
            .iter()
            .map(|v| v["name"].as_str().expect("name"))
            .collect();
        let required: &[&str] = if file.ends_with("witness-fleet.json") {
            &["country", "asn"]
        } else {
            &["country", "asn", "category", "site"]
        };
        for r in required {
            assert!(names.contains(r), "{file}: no template variable {r}");
        }
        // A variable may use only the variables defined before it.
        for (i, var) in vars.iter().enumerate() {
            let query = variable_query(var);
            let (selector, label) = label_values_parts(&query);
            let (selector, used) = substitute_variables(&selector);
            for u in used {
                assert!(
                    names[..i].contains(&u.as_str()),
                    "{file}: {query:?} uses ${u}, not defined before it"
                );
            }
            check_refs(
                &format!("{file}: variable {}", names[i]),
                &selector,
                &recording,
            );
            assert!(
                all_labels().contains(label.as_str()),
                "{file}: label_values of unknown label {label}"
            );
            if var["includeAll"] == true {
                assert_eq!(
                    var["allValue"], ".*",
                    "{file}: {} needs allValue .*",
                    names[i]
                );
            }
        }
        let queries = dashboard_queries(file, &dash);
        assert!(queries.len() >= 5, "{file}: too few queries");
        for (place, expr) in queries {
            let (text, used) = substitute_variables(&expr);
            for u in used {
                assert!(
                    names.contains(&u.as_str()),
                    "{place}: ${u} is not a template variable of the dashboard (Grafana's $__ variables are not allowed: the queries must run as they are)"
                );
            }
            check_refs(&place, &text, &recording);
        }
    }
}

/// Every query, with `.*` for each variable, is valid PromQL: `promtool check rules` parses
/// them as recording rules.
#[test]
fn dashboard_queries_are_valid_promql() {
    let Some(promtool) = tool("promtool", "prometheus") else {
        return;
    };
    let mut all = Vec::new();
    for (file, dash) in load_dashboards() {
        all.extend(dashboard_queries(file, &dash));
        for var in dash["templating"]["list"].as_array().expect("templating") {
            if var["type"] == "datasource" {
                continue;
            }
            let (selector, _) = label_values_parts(&variable_query(var));
            all.push((format!("{file}: variable {}", var["name"]), selector));
        }
    }
    let mut rules = String::from("groups:\n  - name: dashboard-queries\n    rules:\n");
    let mut index = String::new();
    for (i, (place, expr)) in all.iter().enumerate() {
        let (text, _) = substitute_variables(expr);
        let quoted = serde_json::to_string(&text).expect("quote");
        rules.push_str(&format!(
            "      - record: dashboard_query_{i}\n        expr: {quoted}\n"
        ));
        index.push_str(&format!("dashboard_query_{i}: {place}: {text}\n"));
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("dashboard-queries.yml");
    fs::write(&file, rules).expect("write");
    let out = Command::new(promtool)
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .expect("run promtool");
    assert!(
        out.status.success(),
        "promtool rejects a dashboard query:\n{}{}\nqueries:\n{index}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
