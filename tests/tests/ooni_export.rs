//! The OONI export read by OONI's own parser (issue #24): the real `witness` binary measures a
//! loopback world of censors with the real collector as control and upload target, prints its
//! records in OONI's format (`--format ooni`), and the collector exports the uploaded ones
//! (`?format=ooni`). Every exported line is loaded with `oonidata`'s `load_measurement` (PyPI
//! `oonidata`, in the virtualenv `.ci/run` creates; `WITNESS_OONIDATA_PYTHON` names its python)
//! and what the parser read must equal what Witness measured.
//!
//! Without that python the test skips loudly; under `WITNESS_REQUIRE_TOOLS=1` (CI) it fails.

use std::collections::HashMap;

use chrono::Utc;
use serde_json::Value;
use witness_core::model::{
    HopReply, Measurement, Method, PathAction, PathHop, PathObservation, PathTrigger, Status,
    TcpObservation,
};
use witness_core::Failure;
use witness_tests::collector::get;
use witness_tests::ooni::{mismatches, oonidata_python, parse_with_oonidata};
use witness_tests::volunteer::{anchor_of, lab_control_section, ok, Probe};
use witness_tests::world::DEFAULT_BLOCKPAGE;
use witness_tests::CENSORED_SOURCE;
use witness_tests::{Behaviour, CollectorProcess, DnsBehaviour, Page, Site, SiteDns, World};

const ASN: u32 = 9198;

/// JSON equality, numbers within a relative 1e-12: the collector parses the stored record
/// again, and serde_json's float parsing may land one unit in the last place away.
fn close(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (
                x.as_f64().unwrap_or(f64::NAN),
                y.as_f64().unwrap_or(f64::NAN),
            );
            x == y || (x - y).abs() <= 1e-12 * x.abs().max(y.abs())
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| close(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| close(v, w)))
        }
        _ => a == b,
    }
}

fn big_page(title: &str) -> Page {
    let mut page = Page::html(title, "large page");
    page.body.extend(std::iter::repeat_n(b' ', 200 * 1024));
    page
}

#[test]
fn loopback_scenarios_exported_to_ooni_parse_with_oonidata() {
    let Some(python) = oonidata_python() else {
        return;
    };
    let world = World::builder()
        .site(Site::new("fine.test"))
        .site(Site::new("big1.test").page(big_page("Big one")))
        .site(Site::new("big2.test").page(big_page("Big two")))
        .site(Site::new("big3.test").page(big_page("Big three")))
        .site(Site::new("nx.test").dns(SiteDns::Exactly(DnsBehaviour::Nxdomain)))
        .site(Site::new("sni-reset.test").censored(Behaviour::ResetAfterClientHello))
        .site(Site::new("mitm.test").censored(Behaviour::Mitm))
        .site(
            Site::new("http-reset.test")
                .http_only()
                .censored(Behaviour::ResetAfterRequest),
        )
        .site(
            Site::new("blockpage.test")
                .http_only()
                .censored(Behaviour::Blockpage {
                    status: 200,
                    body: DEFAULT_BLOCKPAGE.to_string(),
                }),
        )
        .site(Site::new("throttled.test").censored(Behaviour::Slow {
            bytes_per_sec: 48_000,
            body_len: 120 * 1024,
        }))
        .site(Site::new("gone.test").everyone(Behaviour::ResetAfterClientHello))
        .start()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let collector =
        CollectorProcess::start(dir.path(), &lab_control_section(&world, false)).unwrap();
    let list = world.write_list("list.csv").unwrap();
    let list = list.to_str().unwrap();
    let anchor = anchor_of(&world, "fine.test");
    let probe = Probe::new(&world, CENSORED_SOURCE, ASN, &collector.url, &anchor);
    ok(&probe.witness(&["register"]));
    let out_file = dir.path().join("ooni-out.jsonl");
    let stdout = ok(&probe.witness(&[
        "run",
        "--list",
        list,
        "--upload",
        "--json",
        "--no-progress",
        "--format",
        "ooni",
        "--out",
        out_file.to_str().unwrap(),
    ]));
    let cli_lines: Vec<String> = stdout.lines().map(str::to_string).collect();
    assert_eq!(
        std::fs::read_to_string(&out_file).unwrap(),
        stdout,
        "--out follows --format"
    );
    // An offline network: control and anchor dead.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let cut = Probe::cut_off(
        &world,
        "127.0.0.5".parse().unwrap(),
        ASN,
        &collector.url,
        &dead,
    );
    let offline_cli = ok(&cut.witness(&[
        "run",
        "--list",
        list,
        "--json",
        "--no-progress",
        "--format",
        "ooni",
    ]));

    // What Witness measured: the records as the collector stores them.
    let base = collector.url.trim_end_matches('/');
    let (status, body) = get(&format!("{base}/api/v1/measurements?limit=1000")).unwrap();
    assert_eq!(status, 200, "{body}");
    let raw: Value = serde_json::from_str(&body).unwrap();
    let records: Vec<Measurement> =
        serde_json::from_value(raw["measurements"].clone()).expect("witness records");
    assert_eq!(records.len(), cli_lines.len(), "every record uploaded");
    let by_domain: HashMap<&str, &Measurement> =
        records.iter().map(|m| (m.domain.as_str(), m)).collect();
    use Status::*;
    let scenarios: &[(&str, Status, Option<Method>)] = &[
        ("fine.test", Accessible, None),
        ("nx.test", Blocked, Some(Method::Dns)),
        ("sni-reset.test", Blocked, Some(Method::Tls)),
        ("mitm.test", Blocked, Some(Method::Mitm)),
        ("http-reset.test", Blocked, Some(Method::Http)),
        ("blockpage.test", Blocked, Some(Method::Http)),
        ("throttled.test", Blocked, Some(Method::Throttle)),
        ("gone.test", Down, None),
    ];
    for (domain, status, method) in scenarios {
        let v = &by_domain[domain].verdict;
        assert_eq!((v.status, v.method), (*status, *method), "{domain}: {v:?}");
    }

    // The collector's OONI export: JSON Lines, the same conversion of the same records.
    let (status, ooni_body) = get(&format!(
        "{base}/api/v1/measurements?limit=1000&format=ooni"
    ))
    .unwrap();
    assert_eq!(status, 200, "{ooni_body}");
    let collector_lines: Vec<String> = ooni_body.lines().map(str::to_string).collect();
    assert_eq!(collector_lines.len(), records.len());
    let as_values = |lines: &[String]| -> HashMap<String, Value> {
        lines
            .iter()
            .map(|l| {
                let v: Value = serde_json::from_str(l).expect("one JSON object per line");
                (
                    v["test_keys"]["x_witness"]["id"]
                        .as_str()
                        .unwrap()
                        .to_string(),
                    v,
                )
            })
            .collect()
    };
    // The probe and the collector export the same OONI measurements.
    let (from_cli, from_collector) = (as_values(&cli_lines), as_values(&collector_lines));
    for (id, v) in &from_cli {
        let Some(c) = from_collector.get(id) else {
            panic!("{id} is not in the collector's OONI export");
        };
        let differ: Vec<String> = v["test_keys"]
            .as_object()
            .unwrap()
            .iter()
            .filter(|(k, x)| !close(&c["test_keys"][k.as_str()], x))
            .map(|(k, x)| format!("test_keys.{k}: probe {x} collector {}", c["test_keys"][k]))
            .chain(
                v.as_object()
                    .unwrap()
                    .iter()
                    .filter(|(k, x)| *k != "test_keys" && !close(&c[k.as_str()], x))
                    .map(|(k, x)| format!("{k}: probe {x} collector {}", c[k])),
            )
            .collect();
        assert!(
            differ.is_empty(),
            "{} differs:\n{}",
            v["input"],
            differ.join("\n")
        );
    }

    // A blocked TCP connect with a localised censor: a synthetic record (the loopback world
    // has no SYN filter; the lab has).
    let mut tcp =
        witness_tests::measurement("tcp.test", ASN, Blocked, Some(Method::Tcp), Utc::now());
    let addr = "198.18.0.10:443".parse().unwrap();
    tcp.tcp.push(TcpObservation {
        addr,
        t_ms: 3.0,
        duration_ms: 1.0,
        failure: Some(Failure::ConnectionReset),
    });
    tcp.path = Some(PathObservation {
        trigger: PathTrigger::Syn,
        addr,
        action: PathAction::Reset,
        censor_hop: Some(3),
        unlocated: None,
        hops: vec![
            PathHop {
                ttl: 1,
                reply: HopReply::TimeExceeded,
                addr: None,
                asn: None,
            },
            PathHop {
                ttl: 2,
                reply: HopReply::TimeExceeded,
                addr: None,
                asn: Some(ASN),
            },
            PathHop {
                ttl: 3,
                reply: HopReply::Reset,
                addr: None,
                asn: None,
            },
        ],
        max_ttl: 8,
        probes: 4,
        t_ms: 10.0,
        duration_ms: 50.0,
        shared_with: None,
        censor_range: None,
    });
    let synthetic_line = witness_core::ooni::to_ooni_line(&tcp);

    let mut all_lines = cli_lines.clone();
    all_lines.extend(offline_cli.lines().map(str::to_string));
    all_lines.push(synthetic_line.clone());
    let parsed = parse_with_oonidata(&python, dir.path(), &all_lines);
    let mut checked: Vec<&Measurement> = records.iter().collect();
    checked.push(&tcp);
    let bad = mismatches(&checked, &parsed);
    assert!(
        bad.is_empty(),
        "oonidata read something else:\n{}",
        bad.join("\n")
    );

    // The offline run: every line parses, and OONI's keys say "don't know".
    assert_eq!(offline_cli.lines().count(), cli_lines.len());
    for line in offline_cli.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        let id = v["test_keys"]["x_witness"]["id"].as_str().unwrap();
        let s = &parsed[id];
        assert_eq!(
            (&s["blocking"], &s["accessible"]),
            (&Value::Null, &Value::Null),
            "{line}"
        );
        assert_eq!(v["test_keys"]["x_witness"]["verdict"]["status"], "offline");
        assert_eq!(s["probe_asn"], format!("AS{ASN}"));
    }

    // Spot checks of OONI's names for what the censors did.
    let summary = |d: &str| &parsed[&by_domain[d].id.to_string()];
    assert_eq!(summary("nx.test")["queries"][0][2], "dns_nxdomain_error");
    assert_eq!(summary("nx.test")["dns_consistency"], "inconsistent");
    assert_eq!(
        summary("mitm.test")["tls_handshakes"][0][2],
        "ssl_unknown_authority"
    );
    assert_eq!(summary("fine.test")["dns_consistency"], "consistent");
    assert_eq!(summary("fine.test")["control_status"], 200);
    assert_eq!(summary("blockpage.test")["blocking"], "http-diff");
    assert_eq!(summary("http-reset.test")["blocking"], "http-failure");
    let throttled = as_values(&cli_lines)[&by_domain["throttled.test"].id.to_string()].clone();
    assert_eq!(
        throttled["test_keys"]["x_witness"]["verdict"]["method"],
        "throttle"
    );
    assert!(
        !throttled["test_keys"]["x_witness"]["throttling"]["transfers"]
            .as_array()
            .unwrap()
            .is_empty(),
        "throttling figures under x_witness"
    );
    let path: Value = serde_json::from_str(&synthetic_line).unwrap();
    assert_eq!(path["test_keys"]["x_witness"]["path"]["censor_hop"], 3);
    assert_eq!(path["test_keys"]["x_witness"]["censor_asn"], ASN);
    assert_eq!(parsed[&tcp.id.to_string()]["blocking"], "tcp_ip");

    // Never the probe's address: only OONI's scrubbed 127.0.0.1.
    for line in all_lines.iter().chain(&collector_lines) {
        assert!(!line.contains(&CENSORED_SOURCE.to_string()), "{line}");
        assert!(!line.contains("127.0.0.5"), "{line}");
    }
}
