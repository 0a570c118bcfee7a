//! Long-term metrics: the shipped `deploy/prometheus/prometheus-vm.yml` (Prometheus with
//! remote_write) and `deploy/victoriametrics/` run for real. A real collector is fed with real
//! uploads; a real Prometheus scrapes it and remote-writes to a real VictoriaMetrics; every
//! query of `dashboards/*.json` (variables replaced by `.*`) must then give the same answer from
//! VictoriaMetrics (`/api/v1/query`) as from Prometheus, at the same evaluation time.
//!
//! VictoriaMetrics answers in MetricsQL, which differs from PromQL in one known place: `rate`
//! and `increase` neither extrapolate to the window's edges nor ignore a counter's first value
//! when its series starts inside the window. The counters are held constant while Prometheus
//! scrapes, and a query that differs verbatim and uses those functions is asked again with
//! MetricsQL's Prometheus-compatible `increase_prometheus`; every other query must match as
//! it is. docs/scaling.md explains what that means for the dashboards.
//!
//! Tools: `prometheus` (Debian package prometheus) and `victoria-metrics` (victoria-metrics);
//! skipped loudly without them, a failure under WITNESS_REQUIRE_TOOLS=1.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{TimeDelta, Utc};
use serde_json::Value;
use witness_core::model::{Measurement, Method, Status};
use witness_tests::bins::workspace_root;
use witness_tests::collector::get;
use witness_tests::dashboards::{dashboard_queries, load_dashboards, substitute_variables};
use witness_tests::promstack::{copy_dir, free_port, require_tool, Prometheus};
use witness_tests::CollectorProcess;

fn repo(rel: &str) -> PathBuf {
    workspace_root().join(rel)
}

fn read(rel: &str) -> String {
    fs::read_to_string(repo(rel)).unwrap_or_else(|e| panic!("reading {rel}: {e}"))
}

/// A server we started; killed on drop. Its output goes to a log file shown on failure.
struct Daemon {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Daemon {
    fn start(name: &'static str, command: &mut Command, log: PathBuf) -> Daemon {
        let file = fs::File::create(&log).expect("log file");
        let child = command
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Daemon { name, child, log }
    }

    fn log(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(30).collect();
        format!(
            "--- {} log (last lines)\n{}",
            self.name,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        )
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_until(what: &str, timeout: Duration, daemons: &[&Daemon], mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        if Instant::now() > deadline {
            let logs: Vec<String> = daemons.iter().map(|d| d.log()).collect();
            panic!("timed out waiting for {what}\n{}", logs.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

// ------------------------------------------------------------------------------ the queries

fn substitute(expr: &str) -> String {
    substitute_variables(expr).0
}

/// Every query of the dashboards (panels, annotations, and the selectors of the
/// `label_values` variables), variables substituted: `(where, query)`.
fn all_dashboard_queries() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (file, dash) in load_dashboards() {
        out.extend(
            dashboard_queries(file, &dash)
                .into_iter()
                .map(|(place, q)| (place, substitute(&q))),
        );
        for v in dash["templating"]["list"].as_array().into_iter().flatten() {
            let q = match &v["query"] {
                Value::String(s) => s.clone(),
                other => other["query"].as_str().unwrap_or_default().to_string(),
            };
            if let Some(inner) = q.trim().strip_prefix("label_values(") {
                let (selector, _label) = inner
                    .trim_end_matches(')')
                    .rsplit_once(',')
                    .expect("label_values(selector, label)");
                out.push((
                    format!("{file}: variable {}", v["name"]),
                    substitute(selector.trim()),
                ));
            }
        }
    }
    assert!(
        out.len() >= 30,
        "only {} dashboard queries found",
        out.len()
    );
    out
}

/// Whether a query applies PromQL's extrapolating counter functions.
fn uses_counter_functions(q: &str) -> bool {
    ["rate(", "increase(", "irate(", "delta("]
        .iter()
        .any(|f| q.contains(f))
}

/// The same query in MetricsQL's Prometheus-compatible form: `increase(x[d])` becomes
/// `increase_prometheus(x[d])`, `rate(x[d])` becomes `(increase_prometheus(x[d]) / SECONDS)`.
fn promql_compatible(q: &str) -> String {
    let mut out = String::new();
    let mut rest = q;
    while let Some(pos) = rest.find("rate(") {
        let before = &rest[..pos];
        // `irate(` or a longer name ending in rate: leave alone (asserted absent below).
        if before.ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_') {
            out.push_str(&rest[..pos + 5]);
            rest = &rest[pos + 5..];
            continue;
        }
        let args = &rest[pos + 5..];
        let close = args.find(')').expect("rate( ... )");
        let inner = &args[..close];
        let (_, range) = inner.rsplit_once('[').expect("rate over a range");
        let seconds = duration_seconds(range.trim_end_matches(']'));
        out.push_str(before);
        out.push_str(&format!("(increase_prometheus({inner}) / {seconds})"));
        rest = &args[close + 1..];
    }
    out.push_str(rest);
    let out = out.replace("increase(", "increase_prometheus(");
    assert!(!out.contains("irate(") && !out.contains("delta("), "{q}");
    out
}

fn duration_seconds(d: &str) -> u64 {
    let (n, unit) = d.split_at(d.len() - 1);
    let n: u64 = n.parse().unwrap_or_else(|_| panic!("duration {d}"));
    n * match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => panic!("duration {d}"),
    }
}

/// An instant query's answer, normalised: labels without `__name__` (PromQL and MetricsQL
/// disagree on when a name survives an operator) → value; NaN samples dropped
/// (VictoriaMetrics omits them).
fn instant(base: &str, query: &str, time: f64) -> Result<BTreeMap<String, f64>, String> {
    let url = url::Url::parse_with_params(
        &format!("{base}/api/v1/query"),
        &[("query", query), ("time", &format!("{time:.3}"))],
    )
    .map_err(|e| e.to_string())?;
    let (status, body) = get(url.as_str()).map_err(|e| e.to_string())?;
    if status != 200 {
        return Err(format!("HTTP {status}: {body}"));
    }
    let v: Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
    let data = &v["data"];
    let mut out = BTreeMap::new();
    let value = |s: &Value| -> f64 {
        s[1].as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or(f64::NAN)
    };
    match data["resultType"].as_str() {
        Some("vector") => {
            for r in data["result"].as_array().into_iter().flatten() {
                let mut labels = r["metric"].as_object().cloned().unwrap_or_default();
                labels.remove("__name__");
                let x = value(&r["value"]);
                if !x.is_nan() {
                    out.insert(Value::Object(labels).to_string(), x);
                }
            }
        }
        Some("scalar") => {
            let x = value(&data["result"]);
            if !x.is_nan() {
                out.insert("scalar".to_string(), x);
            }
        }
        other => return Err(format!("unexpected result type {other:?}: {body}")),
    }
    Ok(out)
}

fn same(a: &BTreeMap<String, f64>, b: &BTreeMap<String, f64>) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|((ka, va), (kb, vb))| {
            ka == kb && (va == vb || (va - vb).abs() <= 1e-9 * va.abs().max(vb.abs()))
        })
}

// ------------------------------------------------------------------------------- the feed

fn measurement(domain: &str, asn: u32, status: Status, method: Option<Method>) -> Measurement {
    let at = Utc::now() - TimeDelta::minutes(20);
    let mut m = witness_tests::measurement(domain, asn, status, method, at);
    let category = if domain.starts_with("news") {
        "NEWS"
    } else {
        "POLR"
    };
    m.category_code = Some(category.into());
    m
}

/// Probes on two networks: sites blocked by all, some or one of the probes of AS9198, and a
/// shutdown of AS29355; plus a malformed record.
fn feed(collector: &str) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let client = reqwest::Client::new();
        let register = || async {
            let r = client
                .post(format!("{collector}api/v1/register"))
                .send()
                .await
                .expect("register");
            let v: Value = r.json().await.expect("json");
            v["token"].as_str().expect("token").to_string()
        };
        let upload = |token: String, records: Vec<Value>| {
            let client = client.clone();
            async move {
                let body = serde_json::to_vec(&serde_json::json!({ "measurements": records }))
                    .expect("json");
                let mut enc =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                enc.write_all(&body).expect("gzip");
                let r = client
                    .post(format!("{collector}api/v1/measurements"))
                    .bearer_auth(token)
                    .header("content-type", "application/json")
                    .header("content-encoding", "gzip")
                    .body(enc.finish().expect("gzip"))
                    .send()
                    .await
                    .expect("upload");
                assert_eq!(r.status(), 200);
            }
        };
        let sites: &[(&str, usize, Option<Method>)] = &[
            ("news-a.test", 3, Some(Method::Tls)),
            ("news-b.test", 3, Some(Method::Tls)),
            ("news-c.test", 2, Some(Method::Dns)),
            ("rights-d.test", 1, Some(Method::Http)),
            ("rights-e.test", 0, None),
            ("news-f.test", 0, None),
        ];
        for probe in 0..3 {
            let token = register().await;
            for _round in 0..4 {
                let batch = sites
                    .iter()
                    .map(|(site, blocked_by, method)| {
                        let m = if probe < *blocked_by {
                            measurement(site, 9198, Status::Blocked, *method)
                        } else {
                            measurement(site, 9198, Status::Accessible, None)
                        };
                        serde_json::to_value(m).expect("json")
                    })
                    .collect();
                upload(token.clone(), batch).await;
            }
            if probe == 0 {
                upload(
                    token.clone(),
                    vec![serde_json::json!({"not": "a measurement"})],
                )
                .await;
            }
        }
        for _ in 0..2 {
            let token = register().await;
            let batch = sites
                .iter()
                .map(|(s, _, _)| serde_json::to_value(measurement(s, 29355, Status::Offline, None)))
                .collect::<Result<_, _>>()
                .expect("json");
            upload(token, batch).await;
        }
    });
}

// -------------------------------------------------------------------------------- the tests

/// `prometheus-vm.yml` is `prometheus.yml` plus a remote_write block: nothing else may drift.
#[test]
fn prometheus_vm_config_is_the_shipped_config_plus_remote_write() {
    let strip = |text: &str| -> Vec<String> {
        let mut out = Vec::new();
        let mut in_remote_write = false;
        for line in text.lines() {
            let code = line.split(" #").next().unwrap_or_default().trim_end();
            if code.trim_start().starts_with('#') || code.trim().is_empty() {
                continue;
            }
            if !code.starts_with(' ') {
                in_remote_write = code.starts_with("remote_write:");
            }
            if !in_remote_write {
                out.push(code.to_string());
            }
        }
        out
    };
    let base = read("deploy/prometheus/prometheus.yml");
    let vm = read("deploy/prometheus/prometheus-vm.yml");
    assert_eq!(
        strip(&vm),
        strip(&base),
        "prometheus-vm.yml drifted from prometheus.yml"
    );
    assert!(vm.contains("\nremote_write:\n  - url: http://localhost:8428/api/v1/write\n"));
    let args = read("deploy/victoriametrics/victoria-metrics.default");
    assert!(args.contains("-httpListenAddr=127.0.0.1:8428"), "{args}");
    let ds = read("deploy/victoriametrics/grafana-datasource.yaml");
    for want in [
        "uid: witness-prometheus",
        "type: prometheus",
        "url: http://localhost:8428",
    ] {
        assert!(ds.contains(want), "grafana-datasource.yaml: no {want:?}");
    }
    if let Some(promtool) = require_tool(&["promtool"], "prometheus") {
        let out = Command::new(promtool)
            .args(["check", "config"])
            .arg(repo("deploy/prometheus/prometheus-vm.yml"))
            .output()
            .expect("promtool");
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn dashboards_give_the_same_answers_from_victoriametrics_as_from_prometheus() {
    let started = Instant::now();
    let (Some(prometheus), Some(vm)) = (
        require_tool(&["prometheus"], "prometheus"),
        require_tool(&["victoria-metrics"], "victoria-metrics"),
    ) else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");

    // A collector with real uploads; its counters stay constant from here on.
    let collector = CollectorProcess::start(
        dir.path(),
        "[ingest]\nuploads_per_minute = 10000\nupload_burst = 1000\n",
    )
    .expect("collector");
    feed(&collector.url);

    // VictoriaMetrics with the shipped arguments, on a temporary directory and a free port;
    // fresh samples visible at once, no response cache (the test polls).
    let vm_port = free_port();
    let vm_dir = dir.path().join("vm");
    let default_file = read("deploy/victoriametrics/victoria-metrics.default");
    let args_line = default_file
        .lines()
        .find_map(|l| l.strip_prefix("ARGS="))
        .expect("ARGS= line");
    let mut vm_args: Vec<String> = Vec::new();
    for arg in args_line.trim_matches('"').split_whitespace() {
        vm_args.push(if arg.starts_with("-storageDataPath=") {
            format!("-storageDataPath={}", vm_dir.display())
        } else if arg.starts_with("-httpListenAddr=") {
            format!("-httpListenAddr=127.0.0.1:{vm_port}")
        } else {
            arg.to_string()
        });
    }
    assert!(vm_args
        .iter()
        .any(|a| a.contains(&vm_dir.display().to_string())));
    vm_args.extend([
        "-search.latencyOffset=0s".into(),
        "-search.disableCache".into(),
    ]);
    let vm_daemon = Daemon::start(
        "victoria-metrics",
        Command::new(vm).args(&vm_args),
        dir.path().join("vm.log"),
    );
    let vm_url = format!("http://127.0.0.1:{vm_port}");

    // Prometheus with the shipped prometheus-vm.yml, its rules and targets, made fast: scrapes
    // and rules every second, targets this collector, remote_write to this VictoriaMetrics.
    let conf_dir = dir.path().join("prometheus");
    copy_dir(&repo("deploy/prometheus"), &conf_dir).expect("copy deploy/prometheus");
    fs::write(
        conf_dir.join("targets/witness-collector.yml"),
        format!("- targets: [\"{}\"]\n", collector.addr()),
    )
    .expect("targets");
    fs::write(conf_dir.join("targets/alertmanager.yml"), "[]\n").expect("targets");
    let mut config = read("deploy/prometheus/prometheus-vm.yml");
    for (from, to) in [
        ("scrape_interval: 60s", "scrape_interval: 1s".to_string()),
        ("scrape_timeout: 20s", "scrape_timeout: 1s".to_string()),
        (
            "evaluation_interval: 60s",
            "evaluation_interval: 1s".to_string(),
        ),
        (
            "url: http://localhost:8428/api/v1/write",
            format!("url: {vm_url}/api/v1/write"),
        ),
    ] {
        assert!(config.contains(from), "prometheus-vm.yml has no {from:?}");
        config = config.replace(from, &to);
    }
    let config_file = conf_dir.join("prometheus-vm.yml");
    fs::write(&config_file, config).expect("config");
    let prom = Prometheus::start(&prometheus, &config_file, &dir.path().join("tsdb"))
        .expect("prometheus starts");
    let prom_url = prom.url.clone();
    let daemons = [&vm_daemon];

    // Prometheus has a few scrapes and evaluated rules; VictoriaMetrics gets them soon after.
    let now = || Utc::now().timestamp_millis() as f64 / 1000.0;
    wait_until(
        "Prometheus to scrape and record",
        Duration::from_secs(30),
        &daemons,
        || {
            let t = now();
            let scrapes = instant(
                &prom_url,
                "count_over_time(up{job=\"witness-collector\"}[1m])",
                t,
            );
            let rules = instant(&prom_url, "fleet:witness_probes_active:sum", t);
            matches!((scrapes, rules), (Ok(s), Ok(r))
            if s.values().next().is_some_and(|&n| n >= 3.0) && !r.is_empty())
        },
    );
    let time = now();
    let queries: Vec<(String, String)> = all_dashboard_queries()
        .into_iter()
        .chain(
            ["{__name__=~\"witness_.+\"}", "{__name__=~\".+:.+\"}", "up"]
                .map(|q| ("all series".to_string(), q.to_string())),
        )
        .collect();
    let expected: Vec<BTreeMap<String, f64>> = queries
        .iter()
        .map(|(place, q)| {
            instant(&prom_url, q, time).unwrap_or_else(|e| panic!("{place}: {q}: Prometheus: {e}"))
        })
        .collect();
    let non_empty = expected.iter().filter(|e| !e.is_empty()).count();
    assert!(
        non_empty * 2 >= expected.len(),
        "most dashboard queries should have data: {non_empty} of {}",
        expected.len()
    );

    // Poll VictoriaMetrics until every answer matches: remote_write sends within ~5 s, and
    // VictoriaMetrics makes new series searchable within ~10 s.
    let prometheus_ready = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(40);
    let (verbatim, rewritten, mismatches) = loop {
        let mut mismatches: Vec<String> = Vec::new();
        let mut verbatim = 0;
        let mut rewritten = 0;
        for ((place, q), want) in queries.iter().zip(&expected) {
            let got = instant(&vm_url, q, time);
            if got.as_ref().is_ok_and(|g| same(g, want)) {
                verbatim += 1;
                continue;
            }
            if uses_counter_functions(q) {
                let compatible = promql_compatible(q);
                let again = instant(&vm_url, &compatible, time);
                if again.as_ref().is_ok_and(|g| same(g, want)) {
                    rewritten += 1;
                    continue;
                }
                mismatches.push(format!(
                    "{place}\n  query: {q}\n  as MetricsQL: {compatible}\n  Prometheus: {want:?}\n  \
                     VictoriaMetrics: {got:?} / {again:?}"
                ));
            } else {
                mismatches.push(format!(
                    "{place}\n  query: {q}\n  Prometheus: {want:?}\n  VictoriaMetrics: {got:?}"
                ));
            }
        }
        eprintln!(
            "pass at {:?}: {} mismatches; first: {:?}",
            started.elapsed(),
            mismatches.len(),
            mismatches.first()
        );
        if mismatches.is_empty() || Instant::now() > deadline {
            break (verbatim, rewritten, mismatches);
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(
        mismatches.is_empty(),
        "{} of {} queries differ between VictoriaMetrics and Prometheus:\n{}\n{}",
        mismatches.len(),
        queries.len(),
        mismatches.join("\n"),
        daemons
            .iter()
            .map(|d| d.log())
            .collect::<Vec<_>>()
            .join("\n")
    );
    eprintln!(
        "scale_victoriametrics: {} queries ({non_empty} with data) agree: {verbatim} as they \
         are, {rewritten} once rate/increase use MetricsQL's Prometheus-compatible form; \
         Prometheus ready after {prometheus_ready:?}, all done after {:?}",
        queries.len(),
        started.elapsed()
    );
}

#[test]
fn rate_rewrite_is_prometheus_compatible_metricsql() {
    assert_eq!(
        promql_compatible("sum(rate(x_count[15m])) * 60"),
        "sum((increase_prometheus(x_count[15m]) / 900)) * 60"
    );
    assert_eq!(
        promql_compatible("sum by (kind) (increase(e{kind=\"a\"}[1h])) > 0"),
        "sum by (kind) (increase_prometheus(e{kind=\"a\"}[1h])) > 0"
    );
    assert_eq!(
        substitute("x{a=~\"$asn\",b=~\"${site:regex}\",c=~\"[[c]]\"}"),
        "x{a=~\".*\",b=~\".*\",c=~\".*\"}"
    );
}
