//! Localisation during the run, by group (issue #22), against the real binaries: the collector
//! with the shipped config (lab switches only) as control, one loopback server standing in for
//! the sites ([`Sites`]), some of them blackholed for the probe, and the real `witness run` with
//! localisation on. The blackholed sites share the address, the exchange and the action, so
//! they share one localisation: one record carries it, the others point to it.

use std::process::Command;
use std::time::{Duration, Instant};

use witness_core::model::{Measurement, PathAction, PathTrigger, Status};
use witness_tests::fleet::{shipped_collector, Sites};
use witness_tests::{witness_bin, CENSORED_SOURCE};

#[test]
fn blocked_sites_behind_one_censor_share_one_localisation() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let sites = rt
        .block_on(Sites::start(std::net::Ipv4Addr::LOCALHOST.into()))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let collector = shipped_collector(dir.path(), &[]);
    let token = rt.block_on(async {
        let r = reqwest::Client::new()
            .post(format!("{}api/v1/register", collector.url))
            .json(&serde_json::json!({}))
            .send()
            .await
            .unwrap();
        let v: serde_json::Value = r.json().await.unwrap();
        v["token"].as_str().unwrap().to_string()
    });
    let mut csv = String::from("url,category_code,category_description,date_added,source,notes\n");
    for i in 0..20 {
        let p = if i % 5 == 2 {
            format!("/bh/{i}")
        } else {
            format!("/ok/{i}")
        };
        csv.push_str(&format!("{},NEWS,News,2024-01-01,test,\n", sites.url(&p)));
    }
    let list = dir.path().join("list.csv");
    std::fs::write(&list, csv).unwrap();

    let started = Instant::now();
    let out = Command::new(witness_bin())
        .args(["run", "--yes", "--no-progress", "--json"])
        .arg("--list")
        .arg(&list)
        .args(["--lab-public-range", "127.0.0.0/8"])
        .args(["--source-address", &CENSORED_SOURCE.to_string()])
        .args(["--anchor", &sites.addr().to_string()])
        .args(["--control", &collector.url, "--control-token", &token])
        .args(["--control-resolver", "none", "--timeout", "2"])
        .env("HOME", dir.path())
        .output()
        .unwrap();
    let took = started.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ms: Vec<Measurement> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a measurement per line"))
        .collect();
    let blocked: Vec<&Measurement> = ms.iter().filter(|m| m.url.contains("/bh/")).collect();
    assert_eq!(blocked.len(), 4);
    // Only the blocked sites are localised, each of them.
    for m in &ms {
        assert_eq!(
            m.path.is_some(),
            m.url.contains("/bh/"),
            "{}: {:?}",
            m.url,
            m.verdict
        );
    }
    for m in &blocked {
        assert_eq!(m.verdict.status, Status::Blocked, "{}", m.url);
        let p = m.path.as_ref().unwrap();
        assert_eq!(
            (p.trigger, p.action),
            (PathTrigger::Request, PathAction::Silence)
        );
        assert_eq!(p.addr, sites.addr());
    }
    // One localisation for the group: one record holds it, the others point to that record.
    let own: Vec<&&Measurement> = blocked
        .iter()
        .filter(|m| m.path.as_ref().unwrap().shared_with.is_none())
        .collect();
    assert_eq!(own.len(), 1, "one localisation for the group");
    let rep = own[0];
    for m in blocked.iter().filter(|m| m.id != rep.id) {
        let p = m.path.as_ref().unwrap();
        assert_eq!(p.shared_with, Some(rep.id), "{}", m.url);
        let mine = rep.path.as_ref().unwrap();
        assert_eq!(
            (p.censor_hop, p.unlocated, p.probes, &p.hops),
            (mine.censor_hop, mine.unlocated, mine.probes, &mine.hops)
        );
    }
    // Four stalls of 2 s and one localisation of about a second alongside: far from four
    // localisations after the run.
    eprintln!("20 sites, 4 blackholed, with localisation: {took:?}");
    assert!(took < Duration::from_secs(20), "{took:?}");
}
