//! OONI's own parser for the OONI export (issue #24): `oonidata` (PyPI, pinned in `.ci/run`)
//! loads exported lines, and what it read is compared with the Witness records. Shared by
//! `tests/tests/ooni_export.rs` and the censorship lab.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};
use witness_core::model::{HttpRole, Measurement, Method, Status};
use witness_core::ooni::failure_name;
use witness_core::Failure;

/// What the parser read of one measurement, through its dataclasses (not the raw JSON).
const SUMMARISE: &str = r#"
import json, sys
from datetime import datetime
from oonidata.dataclient import load_measurement
out = []
for line in open(sys.argv[1], encoding="utf-8"):
    if not line.strip():
        continue
    raw = json.loads(line)
    m = load_measurement(msmt=raw)
    tk = m.test_keys
    datetime.strptime(m.measurement_start_time, "%Y-%m-%d %H:%M:%S")
    datetime.strptime(m.test_start_time, "%Y-%m-%d %H:%M:%S")
    out.append({
        "class": type(m).__name__,
        "id": raw["test_keys"]["x_witness"]["id"],
        "input": m.input, "probe_asn": m.probe_asn, "probe_cc": m.probe_cc,
        "probe_ip": m.probe_ip, "test_name": m.test_name, "software_name": m.software_name,
        "data_format_version": m.data_format_version, "report_id": m.report_id,
        "queries": [[q.hostname, q.query_type, q.failure,
                     [a.ipv4 or a.ipv6 for a in (q.answers or []) if a.answer_type in ("A", "AAAA")]]
                    for q in (tk.queries or [])],
        "tcp_connect": [[t.ip, t.port, t.status.success, t.status.failure]
                        for t in (tk.tcp_connect or [])],
        "tls_handshakes": [[h.address, h.server_name, h.failure] for h in (tk.tls_handshakes or [])],
        "requests": [[r.request.url, r.response.code if r.response else None, r.failure]
                     for r in (tk.requests or [])],
        "blocking": tk.blocking, "accessible": tk.accessible,
        "dns_consistency": tk.dns_consistency,
        "control_status": (tk.control.http_request.status_code
                           if tk.control and tk.control.http_request else None),
    })
json.dump(out, sys.stdout)
"#;

/// The python with `oonidata`, or `None` after saying so (a panic under
/// `WITNESS_REQUIRE_TOOLS=1`).
pub fn oonidata_python() -> Option<PathBuf> {
    let found = std::env::var_os("WITNESS_OONIDATA_PYTHON")
        .map(PathBuf::from)
        .filter(|p| {
            Command::new(p)
                .args(["-c", "import oonidata.dataclient"])
                .output()
                .is_ok_and(|o| o.status.success())
        });
    if found.is_none() {
        let msg = "SKIPPED: no python with oonidata (set WITNESS_OONIDATA_PYTHON to a \
                   virtualenv's python with `pip install oonidata==0.3.0`, as .ci/run does)";
        if std::env::var("WITNESS_REQUIRE_TOOLS").as_deref() == Ok("1") {
            panic!("{msg}, and WITNESS_REQUIRE_TOOLS=1");
        }
        eprintln!("{msg}");
    }
    found
}

/// Loads every line of `lines` with oonidata; the summaries, by Witness id.
pub fn parse_with_oonidata(python: &Path, dir: &Path, lines: &[String]) -> HashMap<String, Value> {
    let file = dir.join(format!("ooni-{}.jsonl", uuid::Uuid::now_v7()));
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    let out = Command::new(python)
        .args(["-c", SUMMARISE])
        .arg(&file)
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "oonidata refused the export: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: Vec<Value> = serde_json::from_slice(&out.stdout).expect("summaries");
    assert_eq!(list.len(), lines.len(), "one parsed measurement per line");
    list.into_iter()
        .map(|s| (s["id"].as_str().unwrap().to_string(), s))
        .collect()
}

fn opt_failure(f: &Option<Failure>) -> Value {
    f.as_ref().map_or(Value::Null, |f| failure_name(f).into())
}

/// What oonidata must have read, from the Witness record.
pub fn expected_summary(m: &Measurement) -> Value {
    json!({
        "class": "WebConnectivity",
        "id": m.id.to_string(),
        "input": m.url,
        "probe_asn": format!("AS{}", m.probe.asn.unwrap_or(0)),
        "probe_cc": m.probe.country.clone().unwrap_or_else(|| "ZZ".into()),
        "probe_ip": "127.0.0.1",
        "test_name": "web_connectivity",
        "software_name": "witness",
        "data_format_version": "0.2.0",
        "queries": m.dns.iter().map(|q| json!([
            q.query,
            format!("{:?}", q.query_type),
            opt_failure(&q.failure),
            q.answers.iter().map(|a| a.addr.to_string()).collect::<Vec<_>>(),
        ])).collect::<Vec<_>>(),
        "tcp_connect": m.tcp.iter().map(|t| json!([
            t.addr.ip().to_string(), t.addr.port(), t.failure.is_none(), opt_failure(&t.failure),
        ])).collect::<Vec<_>>(),
        "tls_handshakes": m.tls.iter().map(|t| json!([
            t.addr.to_string(),
            t.server_name,
            opt_failure(&t.failure.clone().or(t.verification_failure.clone())),
        ])).collect::<Vec<_>>(),
        "requests": m.http.iter().filter(|h| h.role == HttpRole::Page).rev().map(|h| json!([
            h.url, h.status, opt_failure(&h.failure),
        ])).collect::<Vec<_>>(),
    })
}

/// OONI's `blocking` and `accessible` for each verdict, written out independently of the
/// conversion (the table in docs/measurement-format.md).
pub fn expected_blocking(m: &Measurement) -> (Value, Value) {
    let page = m
        .http
        .iter()
        .rfind(|h| h.role == HttpRole::Page)
        .is_some_and(|h| h.status.is_some());
    match (m.verdict.status, m.verdict.method) {
        (Status::Accessible, _) => (json!(false), json!(true)),
        (Status::Down, _) => (json!(false), json!(false)),
        (Status::Blocked, Some(Method::Dns)) => (json!("dns"), json!(false)),
        (Status::Blocked, Some(Method::Tcp)) => (json!("tcp_ip"), json!(false)),
        (Status::Blocked, Some(Method::Tls | Method::Mitm)) => {
            (json!("http-failure"), json!(false))
        }
        (Status::Blocked, Some(Method::Http)) if page => (json!("http-diff"), json!(false)),
        (Status::Blocked, Some(Method::Http)) => (json!("http-failure"), json!(false)),
        (Status::Blocked, Some(Method::Throttle)) => (json!(false), json!(true)),
        _ => (Value::Null, Value::Null),
    }
}

/// Checks every parsed summary against its Witness record; returns the mismatches.
pub fn mismatches(records: &[&Measurement], parsed: &HashMap<String, Value>) -> Vec<String> {
    let mut bad = Vec::new();
    for m in records {
        let Some(got) = parsed.get(&m.id.to_string()) else {
            bad.push(format!("{}: not exported", m.domain));
            continue;
        };
        let want = expected_summary(m);
        for (key, w) in want.as_object().unwrap() {
            if &got[key] != w {
                bad.push(format!(
                    "{} {key}: oonidata read {} want {w}",
                    m.domain, got[key]
                ));
            }
        }
        let (blocking, accessible) = expected_blocking(m);
        if got["blocking"] != blocking || got["accessible"] != accessible {
            bad.push(format!(
                "{} ({:?} {:?}): blocking {} accessible {}, want {blocking} {accessible}",
                m.domain, m.verdict.status, m.verdict.method, got["blocking"], got["accessible"]
            ));
        }
        let rid = got["report_id"].as_str().unwrap_or("");
        let network = format!(
            "_webconnectivity_{}_{}_",
            m.probe.country.as_deref().unwrap_or("ZZ"),
            m.probe.asn.unwrap_or(0)
        );
        if !rid.contains(&network) {
            bad.push(format!("{}: report_id {rid}", m.domain));
        }
    }
    bad
}

/// Every record converted to OONI's format and loaded with oonidata; panics with what the
/// parser read differently (or when oonidata is missing under `WITNESS_REQUIRE_TOOLS=1`).
/// For the labs: their records come from the real probe in network namespaces.
pub fn check_records(what: &str, records: &[&Measurement]) {
    let Some(python) = oonidata_python() else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let lines: Vec<String> = records
        .iter()
        .map(|m| witness_core::ooni::to_ooni_line(m))
        .collect();
    let parsed = parse_with_oonidata(&python, dir.path(), &lines);
    let mut bad = mismatches(records, &parsed);
    for (m, line) in records.iter().zip(&lines) {
        let v: Value = serde_json::from_str(line).expect("a JSON line");
        let hop = m.path.as_ref().and_then(|p| p.censor_hop);
        if v["test_keys"]["x_witness"]["path"]["censor_hop"] != json!(hop) {
            bad.push(format!(
                "{}: x_witness.path.censor_hop is not {hop:?}",
                m.url
            ));
        }
    }
    assert!(
        bad.is_empty(),
        "{what}: oonidata read something else than Witness measured:\n{}",
        bad.join("\n")
    );
    eprintln!(
        "{what}: {} records exported to OONI's format, read back by oonidata",
        records.len()
    );
}
