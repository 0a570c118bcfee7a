//! The real `witness` binary against real servers on 127.0.0.0/8, no root needed.
//!
//! The probe binds to 127.0.0.2, which the in-process censors treat as "the censored probe";
//! its resolver is the world's lying one. Without a control service, only local evidence can
//! prove a block (a decoy handshake, a state CA, a bogon, an injected answer, a blockpage, the
//! encrypted resolver's answer); everything else must degrade to `inconclusive`, never to
//! `blocked`. The runs with a control service are in `probe_control.rs`.

use std::collections::HashMap;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use witness_core::model::{Measurement, Method, Status};
use witness_tests::volunteer::verdict_mismatches;
use witness_tests::{
    witness_bin, Behaviour, DnsBehaviour, Page, Site, SiteDns, World, CENSORED_SOURCE,
};

/// A page big enough (200 KiB) to give a throughput sample for the throttling baseline.
fn big_page(title: &str) -> Page {
    let mut page = Page::html(title, "large page");
    page.body.extend(std::iter::repeat_n(b' ', 200 * 1024));
    page
}

/// Runs `witness run` with the world's lab settings and `extra` flags; returns the output.
pub fn run_probe(world: &World, extra: &[&str]) -> Output {
    let anchor = format!(
        "{}:{}",
        world.site_ip("fine.test"),
        port_of(&world.url("fine.test"))
    );
    let mut cmd = Command::new(witness_bin());
    cmd.args(["run", "--yes", "--no-progress", "--json"])
        .args(["--resolver", &world.probe_resolver().to_string()])
        .arg("--extra-ca")
        .arg(world.ca_file())
        .args(["--lab-public-range", "127.0.0.0/8"])
        .args(["--source-address", &CENSORED_SOURCE.to_string()])
        .args(["--anchor", &anchor])
        .args(["--timeout", "3"])
        .args(extra)
        .env("HOME", world.dir())
        .env_remove("WITNESS_CONFIG");
    // Never the default DoH resolver (a public address): tests stay on loopback.
    if !extra.contains(&"--control-resolver") {
        cmd.args(["--control-resolver", "none"]);
    }
    cmd.output().expect("run witness")
}

fn port_of(url: &str) -> u16 {
    witness_core::targets::Target::from_url(url, "test")
        .unwrap()
        .port()
}

/// Parses `--json` output: every stdout line must be one measurement, nothing else.
pub fn parse_measurements(out: &Output) -> HashMap<String, Measurement> {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "witness failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .map(|l| {
            let m: Measurement = serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("stdout line is not a measurement ({e}): {l}"));
            (m.domain.clone(), m)
        })
        .collect()
}

/// The IDN site's name in Unicode, as a list would carry it.
const IDN: &str = "пример-сайт.test";

/// Its ASCII (punycode) form, which DNS, SNI and the record's `domain` use.
fn idn_ascii() -> String {
    witness_core::targets::Target::from_url(&format!("https://{IDN}/"), "test")
        .unwrap()
        .domain
}

fn world_for_local_evidence() -> World {
    World::builder()
        .site(Site::new("fine.test"))
        .site(Site::new("big1.test").page(big_page("Big one")))
        .site(Site::new("big2.test").page(big_page("Big two")))
        .site(Site::new("big3.test").page(big_page("Big three")))
        .site(Site::new("plain.test").http_only())
        .site(Site::new("nx.test").dns(SiteDns::Exactly(DnsBehaviour::Nxdomain)))
        .site(Site::new("bogon.test").dns(SiteDns::LieTo(vec!["10.10.10.10".parse().unwrap()])))
        .site(Site::new("inject.test").dns(SiteDns::Inject {
            gap: Duration::from_millis(30),
        }))
        .site(Site::new("sni-drop.test").censored(Behaviour::DropAfterClientHello))
        .site(Site::new("sni-reset.test").censored(Behaviour::ResetAfterClientHello))
        .site(Site::new("mitm.test").censored(Behaviour::Mitm))
        .site(
            Site::new("blockpage.test")
                .http_only()
                .censored(Behaviour::Blockpage {
                    status: 200,
                    body: witness_tests::world::DEFAULT_BLOCKPAGE.to_string(),
                }),
        )
        .site(
            Site::new("dns-blockpage.test")
                .http_only()
                .dns(SiteDns::LieToBlockpage),
        )
        .site(Site::new("throttled.test").censored(Behaviour::Slow {
            bytes_per_sec: 48_000,
            body_len: 120 * 1024,
        }))
        .site(Site::new("forbidden.test").everyone(Behaviour::Forbidden))
        .site(Site::new("redirect.test").everyone(Behaviour::Redirect {
            status: 302,
            location: "/landing".into(),
        }))
        .site(Site::new("dead-tls.test").everyone(Behaviour::ResetAfterClientHello))
        .site(Site::new("expired.test").everyone(Behaviour::ExpiredCert))
        .site(Site::new(&idn_ascii()))
        .start()
        .expect("start world")
}

#[test]
fn verdicts_from_local_evidence_without_control() {
    let world = world_for_local_evidence();
    // The IDN site goes into the list in Unicode, as a list author would write it.
    let mut entries = world.list_entries();
    for e in &mut entries {
        e.url = e.url.replace(&idn_ascii(), IDN);
    }
    let list = world.write_list_of("list.csv", &entries).unwrap();
    let _ = witness_bin(); // build first: the clock is for the run alone
    let started = Instant::now();
    let out = run_probe(
        &world,
        &[
            "--list",
            list.to_str().unwrap(),
            "--no-control",
            // Plain UDP control resolver: labs only, here the world's honest resolver.
            "--control-resolver",
            &format!("udp:{}", world.control_resolver()),
        ],
    );
    let elapsed = started.elapsed();
    let by_domain = parse_measurements(&out);
    for m in by_domain.values() {
        eprintln!(
            "{:>8.0} ms  {}  {:?}",
            m.runtime_ms, m.domain, m.verdict.status
        );
    }

    use Status::*;
    let expected: &[(&str, Status, Option<Method>)] = &[
        ("fine.test", Accessible, None),
        ("big1.test", Accessible, None),
        ("plain.test", Accessible, None),
        ("nx.test", Blocked, Some(Method::Dns)),
        ("bogon.test", Blocked, Some(Method::Dns)),
        ("inject.test", Blocked, Some(Method::Dns)),
        ("sni-drop.test", Blocked, Some(Method::Tls)),
        ("sni-reset.test", Blocked, Some(Method::Tls)),
        ("mitm.test", Blocked, Some(Method::Mitm)),
        ("blockpage.test", Blocked, Some(Method::Http)),
        ("dns-blockpage.test", Blocked, Some(Method::Dns)),
        ("throttled.test", Blocked, Some(Method::Throttle)),
        ("forbidden.test", Accessible, None),
        // No control: a site that resets everyone cannot be told from a censored one.
        ("dead-tls.test", Inconclusive, None),
        ("expired.test", Inconclusive, None),
    ];
    let idn = idn_ascii();
    let expected: Vec<_> = expected
        .iter()
        .cloned()
        .chain([(idn.as_str(), Accessible, None)])
        .collect();
    let mismatches = verdict_mismatches(&by_domain, &expected);
    assert!(
        mismatches.is_empty(),
        "verdict mismatches:\n{}",
        mismatches.join("\n")
    );

    assert!(
        by_domain[&idn].url.contains(IDN),
        "the url stays exactly as listed"
    );
    // The redirect was followed and measured hop by hop.
    let redirect = &by_domain["redirect.test"];
    assert!(redirect.http.len() >= 2, "{:?}", redirect.http);
    assert_eq!(redirect.http[0].status, Some(302));
    // The state CA was recognised by name, with the chain recorded.
    let mitm = &by_domain["mitm.test"];
    assert!(mitm.tls.iter().any(|t| t.interception_ca.is_some()
        && t.peer_certificates
            .iter()
            .any(|c| c.issuer.contains("Security Certificate"))));
    // The SNI-filtered site was proven by a decoy handshake that worked.
    assert!(by_domain["sni-drop.test"]
        .tls
        .iter()
        .any(|t| t.decoy && t.failure.is_none()));
    // Concurrency: the run takes about its slowest targets, not the sum of their timeouts.
    assert!(elapsed < Duration::from_secs(40), "run took {elapsed:?}");
    // Every record carries software, id and the url exactly as listed.
    for m in by_domain.values() {
        assert_eq!(m.software.name, "witness");
        assert!(m.url.starts_with("http"));
    }
}

#[test]
fn hostile_servers_cost_only_timeouts_and_the_body_cap() {
    let world = World::builder()
        .site(Site::new("fine.test"))
        .site(Site::new("endless.test").everyone(Behaviour::EndlessBody))
        .site(Site::new("huge-headers.test").everyone(Behaviour::HugeHeaders))
        .site(Site::new("loop.test").everyone(Behaviour::RedirectLoop))
        .site(Site::new("bomb.test").everyone(Behaviour::GzipBomb))
        .site(Site::new("garbage.test").everyone(Behaviour::GarbageInsteadOfTls))
        .site(Site::new("dns-garbage.test").dns(SiteDns::Exactly(DnsBehaviour::Garbage)))
        .site(Site::new("dns-drop.test").dns(SiteDns::Exactly(DnsBehaviour::Drop)))
        .start()
        .unwrap();
    let list = world.write_list("list.csv").unwrap();
    let out = run_probe(
        &world,
        &[
            "--list",
            list.to_str().unwrap(),
            "--no-control",
            "--control-resolver",
            "none",
        ],
    );
    let by_domain = parse_measurements(&out);
    assert_eq!(by_domain.len(), 8, "{:?}", by_domain.keys());

    let endless = &by_domain["endless.test"];
    let hop = &endless.http[0];
    assert!(
        hop.body_truncated && hop.body_length == 512 * 1024,
        "{hop:?}"
    );
    let bomb = &by_domain["bomb.test"].http[0];
    assert!(
        bomb.body_length < 1024 * 1024,
        "never decompressed: {bomb:?}"
    );
    let huge = &by_domain["huge-headers.test"].http[0];
    assert_eq!(
        huge.failure.as_ref().map(|f| f.name()),
        Some("http_invalid_response"),
        "{huge:?}"
    );
    let lp = page_hops(&by_domain["loop.test"]).pop().unwrap();
    assert_eq!(
        lp.failure.as_ref().map(|f| f.name()),
        Some("http_too_many_redirects")
    );
    let garbage = &by_domain["garbage.test"].tls[0];
    assert!(garbage.failure.is_some(), "{garbage:?}");
    let dns_garbage = &by_domain["dns-garbage.test"].dns[0];
    assert_eq!(
        dns_garbage.failure.as_ref().map(|f| f.name()),
        Some("dns_bad_response")
    );
    let dns_drop = &by_domain["dns-drop.test"].dns[0];
    assert_eq!(
        dns_drop.failure.as_ref().map(|f| f.name()),
        Some("dns_timeout")
    );
    // Without a control none of these is called blocked.
    for (d, m) in &by_domain {
        assert_ne!(m.verdict.status, Status::Blocked, "{d}: {:?}", m.verdict);
    }
}

/// A hostile redirect chain that answers every hop after 1.2 s (under the 3 s step timeout,
/// 20 hops: 25 s without a deadline) is cut by the target's 4 s deadline and recorded as such;
/// a 15-hop chain, which a browser follows, loads.
#[test]
fn deadline_cuts_a_hostile_chain_and_long_chains_load() {
    let world = World::builder()
        .site(Site::new("fine.test"))
        .site(
            Site::new("slow-chain.test").everyone(Behaviour::RedirectChain {
                hops: 20,
                delay_ms: 1200,
            }),
        )
        .site(
            Site::new("long-chain.test").everyone(Behaviour::RedirectChain {
                hops: 15,
                delay_ms: 0,
            }),
        )
        .start()
        .unwrap();
    // Built (if need be) before the clock starts.
    let _ = witness_bin();
    let started = Instant::now();
    let out = run_probe(
        &world,
        &[
            "--url",
            &world.url("slow-chain.test"),
            "--url",
            &world.url("long-chain.test"),
            "--deadline",
            "4",
            "--no-control",
        ],
    );
    let elapsed = started.elapsed();
    let by_domain = parse_measurements(&out);

    let slow = &by_domain["slow-chain.test"];
    let last = page_hops(slow).pop().unwrap();
    assert_eq!(
        last.failure.as_ref().map(|f| f.name()),
        Some("deadline_exceeded"),
        "{:?}",
        slow.http
    );
    assert!(
        (2..=5).contains(&page_hops(slow).len()),
        "about 4 s / 1.2 s hops: {:?}",
        slow.http
    );
    assert!(slow.runtime_ms < 5_500.0, "runtime {} ms", slow.runtime_ms);
    assert_eq!(
        slow.verdict.status,
        Status::Inconclusive,
        "{:?}",
        slow.verdict
    );
    assert!(
        slow.verdict.reason.contains("deadline"),
        "{}",
        slow.verdict.reason
    );
    // The whole run (connectivity check, both targets at once) is bounded by the deadline too.
    assert!(elapsed < Duration::from_secs(12), "run took {elapsed:?}");

    let long = &by_domain["long-chain.test"];
    let long_hops = page_hops(long);
    assert_eq!(long_hops.len(), 16, "{:?}", long.http);
    assert_eq!(long_hops.last().unwrap().status, Some(200));
    assert_eq!(
        long.verdict.status,
        Status::Accessible,
        "{:?}",
        long.verdict
    );
}

#[test]
fn no_network_means_offline_not_blocked() {
    let world = World::builder()
        .site(Site::new("fine.test"))
        .start()
        .unwrap();
    let out = Command::new(witness_bin())
        .args(["run", "--yes", "--no-progress"])
        .args(["--url", "https://twitter.com/", "--url", "http://stan.kz/"])
        // A resolver and an anchor where nothing answers: no network at all.
        .args([
            "--resolver",
            "127.0.0.1:9",
            "--anchor",
            "127.0.0.1:9",
            "--no-control",
        ])
        .args(["--control-resolver", "none", "--timeout", "1"])
        .env("HOME", world.dir())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("offline"), "{text}");
    assert!(!text.contains("blocked"), "{text}");
    assert!(text.contains("network looks cut off"), "{text}");
}

#[test]
fn malformed_list_rows_are_reported_and_the_rest_run() {
    let world = World::builder()
        .site(Site::new("fine.test"))
        .start()
        .unwrap();
    let list = world.dir().join("bad.csv");
    let good = world.url("fine.test");
    std::fs::write(
        &list,
        format!(
            "url,category_code,category_description,date_added,source,notes\n\
             {good},NEWS,News Media,2020-01-01,x,\"a note, with a comma\"\n\
             ftp://files.test/,NEWS,News,2020-01-01,x,\n\
             not a url,NEWS,News,2020-01-01,x,"
        ),
    )
    .unwrap();
    let out = run_probe(&world, &["--list", list.to_str().unwrap(), "--no-control"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bad.csv:3"), "{stderr}");
    assert!(stderr.contains("bad.csv:4"), "{stderr}");
    let by_domain = parse_measurements(&out);
    assert_eq!(by_domain.len(), 1);
    assert_eq!(by_domain["fine.test"].url, good, "url exactly as given");
}

#[test]
fn bad_config_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("witness.toml");
    std::fs::write(&cfg, "[run]\nconcurency = 4\n").unwrap();
    let out = Command::new(witness_bin())
        .args([
            "--config",
            cfg.to_str().unwrap(),
            "run",
            "--yes",
            "--url",
            "https://x.test/",
        ])
        .env("HOME", dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("witness.toml") && stderr.contains("concurency"),
        "{stderr}"
    );
    assert!(stderr.contains("line 2"), "{stderr}");
}

#[test]
fn consent_is_required_when_not_on_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(witness_bin())
        .args(["run", "--url", "https://x.test/"])
        .env("HOME", dir.path())
        .env("XDG_DATA_HOME", dir.path())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--yes"));
    assert!(out.stdout.is_empty());
}

/// The page's own hops, without the exchanges made as local evidence (decoy Host, HTTPS witness).
fn page_hops(m: &Measurement) -> Vec<&witness_core::model::HttpObservation> {
    m.http.iter().filter(|h| h.role.is_page()).collect()
}
