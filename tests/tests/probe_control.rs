//! The real probe with the real collector as its control service, on loopback.
//!
//! The control measures from 127.0.0.1, which no in-process censor touches, through the
//! world's honest resolver: it sees the internet as it is. The probe measures from 127.0.0.2
//! through the lying resolver. With a control, plain failures can be judged: a failure that
//! the control shares means the site is down; one it does not share means a block.

use std::collections::HashMap;
use std::process::Command;

use witness_core::model::{Measurement, Method, Status};
use witness_tests::volunteer::{lab_control_section, verdict_mismatches};
use witness_tests::{
    witness_bin, Behaviour, CollectorProcess, DnsBehaviour, Page, Site, SiteDns, World,
    CENSORED_SOURCE,
};

fn run_with_control(world: &World, control_url: &str) -> HashMap<String, Measurement> {
    let list = world.write_list("list.csv").unwrap();
    let anchor = world.url("fine.test");
    let anchor = anchor
        .trim_start_matches("https://fine.test:")
        .trim_end_matches('/');
    let out = Command::new(witness_bin())
        .args(["run", "--yes", "--no-progress", "--json"])
        .args(["--list", list.to_str().unwrap()])
        .args(["--resolver", &world.probe_resolver().to_string()])
        .arg("--extra-ca")
        .arg(world.ca_file())
        .args(["--lab-public-range", "127.0.0.0/8"])
        .args(["--source-address", &CENSORED_SOURCE.to_string()])
        .args([
            "--anchor",
            &format!("{}:{anchor}", world.site_ip("fine.test")),
        ])
        .args(["--control", control_url, "--control-resolver", "none"])
        .args(["--timeout", "3"])
        .env("HOME", world.dir())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let m: Measurement = serde_json::from_str(l).expect("a measurement per line");
            (m.domain.clone(), m)
        })
        .collect()
}

#[test]
fn verdicts_with_the_collector_as_control() {
    let world = World::builder()
        .site(Site::new("fine.test"))
        .site(Site::new("plain.test").http_only())
        .site(
            Site::new("nx-everywhere.test")
                .dns(SiteDns::Exactly(DnsBehaviour::Nxdomain))
                .control_dns(SiteDns::Exactly(DnsBehaviour::Nxdomain)),
        )
        .site(Site::new("nx-probe.test").dns(SiteDns::Exactly(DnsBehaviour::Nxdomain)))
        .site(Site::new("dns-lie.test").dns(SiteDns::LieToBlockpage))
        .site(Site::new("dead-tls.test").everyone(Behaviour::ResetAfterClientHello))
        .site(Site::new("expired.test").everyone(Behaviour::ExpiredCert))
        .site(Site::new("sni-drop.test").censored(Behaviour::DropAfterClientHello))
        .site(Site::new("sni-reset.test").censored(Behaviour::ResetAfterClientHello))
        .site(Site::new("mitm.test").censored(Behaviour::Mitm))
        .site(
            Site::new("http-reset.test")
                .http_only()
                .censored(Behaviour::ResetAfterRequest),
        )
        .site(
            Site::new("rewritten.test")
                .http_only()
                .censored(Behaviour::Serve(Page::html(
                    "Notice",
                    "This content is unavailable.",
                ))),
        )
        .site(Site::new("forbidden.test").everyone(Behaviour::Forbidden))
        .start()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let collector =
        CollectorProcess::start(dir.path(), &lab_control_section(&world, true)).unwrap();
    let by_domain = run_with_control(&world, &collector.url);

    use Status::*;
    let expected: &[(&str, Status, Option<Method>)] = &[
        ("fine.test", Accessible, None),
        ("plain.test", Accessible, None),
        ("nx-everywhere.test", Down, None),
        ("nx-probe.test", Blocked, Some(Method::Dns)),
        ("dns-lie.test", Blocked, Some(Method::Dns)),
        ("dead-tls.test", Down, None),
        ("expired.test", Down, None),
        ("sni-drop.test", Blocked, Some(Method::Tls)),
        ("sni-reset.test", Blocked, Some(Method::Tls)),
        ("mitm.test", Blocked, Some(Method::Mitm)),
        ("http-reset.test", Blocked, Some(Method::Http)),
        ("rewritten.test", Blocked, Some(Method::Http)),
        ("forbidden.test", Accessible, None),
    ];
    for (domain, ..) in expected {
        let m = &by_domain[*domain];
        assert!(
            m.control.is_some(),
            "{domain}: no control ({:?})",
            m.control_failure
        );
    }
    let mismatches = verdict_mismatches(&by_domain, expected);
    assert!(
        mismatches.is_empty(),
        "verdict mismatches:\n{}",
        mismatches.join("\n")
    );

    // The control's view is its own resolution's: the probe's (lying) addresses do not shape
    // the view that every probe is served (docs/collector-api.md, shared views).
    let lie = &by_domain["dns-lie.test"];
    let control = lie.control.as_ref().unwrap();
    assert!(
        !control.tcp.is_empty()
            && control
                .tcp
                .iter()
                .all(|t| t.addr.ip() != world.blockpage_ip()),
        "control tcp: {:?}",
        control.tcp
    );
    assert!(control.age_secs.is_some(), "the view says its age");
}

#[test]
fn control_unreachable_degrades_to_local_evidence() {
    let world = World::builder()
        .site(Site::new("fine.test"))
        .site(Site::new("dead-tls.test").everyone(Behaviour::ResetAfterClientHello))
        .site(Site::new("mitm.test").censored(Behaviour::Mitm))
        .start()
        .unwrap();
    // Nothing listens there: the control service is unreachable.
    let by_domain = run_with_control(&world, "http://127.0.0.1:9/");
    assert_eq!(by_domain["fine.test"].verdict.status, Status::Accessible);
    assert_eq!(by_domain["mitm.test"].verdict.method, Some(Method::Mitm));
    let dead = &by_domain["dead-tls.test"];
    assert_eq!(
        dead.verdict.status,
        Status::Inconclusive,
        "{:?}",
        dead.verdict
    );
    assert!(dead.control_failure.is_some());
    assert!(
        !dead
            .control_failure
            .as_deref()
            .unwrap()
            .contains("127.0.0.1"),
        "addresses are scrubbed from failure text"
    );
}
