//! The fleet lab (issue #21): several probes on one censored network run the same list at the
//! same moment against one collector's control. The control's shared views must measure each
//! URL once (its `/metrics` says: misses == the list's URLs, every other request a hit), and
//! every probe's every verdict must still be right: a shared view is the control's own
//! measurement, never a probe's.
//!
//! Its own `#[test]` (`fleet_lab`) in `tests/tests/lab/main.rs`, so it runs beside the other
//! labs of the binary. Needs root and `ip netns`; without them it skips, loudly.

use std::collections::BTreeSet;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use witness_tests::{collector_bin, witness_bin};

use crate::judge::{self, Row};
use crate::netlab::{self, report, Lab};
use crate::topology::{self, Censor};
use crate::{ascii_host, scenarios, sites, Probe, Scenario, ASN_MAIN};

/// Probes sharing the network and the control.
const PROBES: [&str; 4] = ["fleet-1", "fleet-2", "fleet-3", "fleet-4"];

/// The main lab's scenarios the fleet measures: one of each kind of verdict (accessible over
/// both schemes, DNS, TCP, TLS, interception and HTTP blocks, down), none with a redirect (a
/// redirect's target is one more URL for the control).
const NAMES: &[&str] = &[
    "accessible_https",
    "accessible_http",
    "dns_nxdomain",
    "tcp_rst_on_syn",
    "tls_sni_reset",
    "mitm_state_ca",
    "http_blockpage_injected",
    "down_nothing_listening",
];

/// A counter's value in a Prometheus text page.
fn counter(text: &str, name: &str) -> Result<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .with_context(|| format!("no {name} in /metrics"))?
        .trim()
        .parse()
        .with_context(|| format!("{name} is not a number"))
}

/// The fleet's run: per probe, its verdict rows; and the control's misses and hits.
fn run_fleet(lab: &Lab, chosen: &[Scenario]) -> Result<(Vec<Row>, f64, f64)> {
    let hosts: BTreeSet<String> = chosen.iter().map(|s| ascii_host(&s.url)).collect();
    // The chosen sites and the anchors the probes measure the line with.
    let needed: Vec<_> = sites()
        .into_iter()
        .filter(|s| hosts.contains(&s.host) || s.host.starts_with("anchor"))
        .collect();
    let internet = topology::build_internet(lab, &needed)?;
    let censor = Censor {
        rules: chosen
            .iter()
            .flat_map(|s| s.censor.iter().map(|t| (ascii_host(&s.url), *t)))
            .collect(),
        ..Censor::default()
    };
    let net = topology::build_network(lab, &internet, 1, &censor)?;
    topology::start_collector(lab, &internet, &collector_bin(), "")?;
    let urls: Vec<&str> = chosen.iter().map(|s| s.url.as_str()).collect();
    let probes = PROBES
        .iter()
        .map(|label| Ok(Probe::new(lab, label, &net, ASN_MAIN, &urls)?.with_encrypted_dns()))
        .collect::<Result<Vec<_>>>()?;

    // All at once, as a fleet's hourly runs meet.
    let runs: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = probes
            .iter()
            .map(|p| s.spawn(|| p.run(lab, &internet, false)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    let mut rows = Vec::new();
    for (label, run) in PROBES.iter().zip(runs) {
        let by_url = run?;
        for s in chosen {
            let mut row = judge::judge(s.name, s.expect, s.known_bug, by_url.get(&s.url));
            row.scenario = format!("{label}: {}", row.scenario);
            rows.push(row);
        }
    }
    let metrics = topology::get(
        lab,
        &internet.ns,
        &format!("{}metrics", topology::collector_url()),
    )?;
    let misses = counter(&metrics, "witness_control_cache_misses_total")?;
    let hits = counter(&metrics, "witness_control_cache_hits_total")?;
    if rows.is_empty() {
        bail!("no verdicts");
    }
    Ok((rows, misses, hits))
}

pub fn fleet_lab() {
    if !netlab::ready(
        "the fleet lab",
        "sudo cargo test -p witness-tests --test lab -- fleet_lab",
    ) {
        return;
    }
    let _ = (witness_bin(), collector_bin());
    let started = Instant::now();
    let chosen: Vec<Scenario> = scenarios()
        .into_iter()
        .filter(|s| NAMES.contains(&s.name))
        .collect();
    assert_eq!(chosen.len(), NAMES.len(), "a fleet scenario was renamed");
    let lab = Lab::new().expect("creating the lab");
    let (rows, misses, hits) = match run_fleet(&lab, &chosen) {
        Ok(r) => r,
        Err(e) => panic!("the fleet lab could not run: {e:#}"),
    };
    drop(lab);
    report(&format!(
        "\nFleet lab: {} probes x {} sites in {:.0} s; control misses {misses}, hits {hits}\n\n{}",
        PROBES.len(),
        chosen.len(),
        started.elapsed().as_secs_f64(),
        judge::table(&rows, std::env::var_os("WITNESS_LAB_VERBOSE").is_some())
    ));
    assert!(
        judge::passed(&rows),
        "the fleet lab found wrong verdicts (table above)"
    );
    // One control measurement per URL for the whole fleet; every other ask was served a view.
    let urls = chosen.len() as f64;
    assert_eq!(misses, urls, "control measurements for {urls} URLs");
    assert!(
        hits >= (PROBES.len() as f64 - 1.0) * urls,
        "{hits} hits for {} probes x {urls} URLs",
        PROBES.len()
    );
}
