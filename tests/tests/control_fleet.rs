//! The control service at a country's scale (issue #21, issue #20 items 3 and 11), against the
//! real binaries: the collector runs the SHIPPED `collector.example.toml` with only its listen
//! address, database and lab switches changed (private targets allowed, 127.0.0.0/8 public,
//! registrations per client raised as every test does); the probe runs its defaults with the
//! lab's flags. The sites are [`Sites`]: one loopback server, a URL per path, counting who
//! fetched what (the control from 127.0.0.1, the probe from 127.0.0.2).

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use witness_core::model::{ControlBatchLine, ControlReply, Measurement, Status};
use witness_tests::api::register;
use witness_tests::fleet::{shipped_collector, Sites, DL_HOPS};
use witness_tests::{witness_bin, CollectorProcess, CENSORED_SOURCE};

const CONTROL_SOURCE: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// Where the honest probe of the fairness test asks from: another client address.
const HONEST_CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn write_list(dir: &Path, urls: &[String]) -> std::path::PathBuf {
    let mut csv = String::from("url,category_code,category_description,date_added,source,notes\n");
    for u in urls {
        csv.push_str(&format!("{u},NEWS,News,2024-01-01,test,\n"));
    }
    let path = dir.join("list.csv");
    std::fs::write(&path, csv).unwrap();
    path
}

/// The real probe, its defaults but the lab's flags: its sockets from 127.0.0.2, loopback
/// public, the sites' server as its anchor, no encrypted resolver, a short step timeout (the
/// blackholed sites would take ten seconds each otherwise) and no localisation.
fn run_probe(
    dir: &Path,
    list: &Path,
    sites: &Sites,
    collector: &CollectorProcess,
    token: &str,
) -> Vec<Measurement> {
    let out = Command::new(witness_bin())
        .args(["run", "--yes", "--no-progress", "--json", "--no-path"])
        .arg("--list")
        .arg(list)
        .args(["--lab-public-range", "127.0.0.0/8"])
        .args(["--source-address", &CENSORED_SOURCE.to_string()])
        .args(["--anchor", &sites.addr().to_string()])
        .args(["--control", &collector.url, "--control-token", token])
        .args(["--control-resolver", "none", "--timeout", "2"])
        .env("HOME", dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a measurement per line"))
        .collect()
}

fn metric(collector: &CollectorProcess, name: &str) -> f64 {
    let (status, text) =
        witness_tests::collector::get(&format!("{}metrics", collector.url)).unwrap();
    assert_eq!(status, 200);
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} not in /metrics"))
}

#[test]
fn a_default_install_answers_every_target_and_probes_share_one_fetch_per_site() {
    let rt = runtime();
    let sites = rt.block_on(Sites::start(CONTROL_SOURCE)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let collector = shipped_collector(dir.path(), &[]);
    // 300 sites: 30 blackholed for the probe, 20 down for everyone.
    let mut paths = Vec::new();
    for i in 0..300 {
        paths.push(match i % 10 {
            3 => format!("/bh/{i}"),
            7 if i % 3 == 0 => format!("/down/{i}"),
            _ => format!("/ok/{i}"),
        });
    }
    let urls: Vec<String> = paths.iter().map(|p| sites.url(p)).collect();
    let list = write_list(dir.path(), &urls);
    let (t1, t2) = rt.block_on(async { (register(&collector).await, register(&collector).await) });

    let started = Instant::now();
    let first = run_probe(dir.path(), &list, &sites, &collector, &t1);
    let took = started.elapsed();
    assert_eq!(first.len(), 300);
    let unanswered: Vec<String> = first
        .iter()
        .filter(|m| m.control.is_none() || m.control_failure.is_some())
        .map(|m| format!("{}: {:?}", m.url, m.control_failure))
        .collect();
    assert!(
        unanswered.is_empty(),
        "{} targets without a control answer: {:?}",
        unanswered.len(),
        &unanswered[..unanswered.len().min(5)]
    );
    let inconclusive: Vec<&Measurement> = first
        .iter()
        .filter(|m| m.verdict.reason.contains("control was unavailable"))
        .collect();
    assert!(inconclusive.is_empty(), "{}", inconclusive.len());
    for m in first.iter().filter(|m| m.url.contains("/bh/")) {
        assert_eq!(
            m.verdict.status,
            Status::Blocked,
            "{}: {:?}",
            m.url,
            m.verdict
        );
    }
    for m in &first {
        assert!(
            m.control.as_ref().unwrap().age_secs.is_some(),
            "the age is recorded"
        );
    }
    // One control fetch per site.
    for p in &paths {
        assert_eq!(sites.requests(CONTROL_SOURCE, p), 1, "{p}");
    }

    // A second probe within the TTL: served the same views, no site fetched again.
    let second = run_probe(dir.path(), &list, &sites, &collector, &t2);
    assert_eq!(second.len(), 300);
    assert!(second
        .iter()
        .all(|m| m.control.is_some() && m.control_failure.is_none()));
    for p in &paths {
        assert_eq!(sites.requests(CONTROL_SOURCE, p), 1, "{p} fetched again");
        assert!(
            sites.requests(CENSORED_SOURCE, p) >= 2,
            "{p}: both probes measured it"
        );
    }
    assert_eq!(
        metric(&collector, "witness_control_cache_misses_total"),
        300.0
    );
    assert!(metric(&collector, "witness_control_cache_hits_total") >= 300.0);
    eprintln!("first run of 300 sites: {took:?}");
}

#[test]
fn four_tokens_from_one_address_with_a_slow_site_cannot_starve_an_honest_probe() {
    let rt = runtime();
    let sites = rt.block_on(Sites::start(CONTROL_SOURCE)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let collector = shipped_collector(dir.path(), &[]);
    rt.block_on(async {
        let mut tokens = Vec::new();
        for _ in 0..5 {
            tokens.push(register(&collector).await);
        }
        let honest_token = tokens.pop().unwrap();
        let batch_url = format!("{}api/v1/control/batch", collector.url);
        // Four tokens from 127.0.0.1, each with a batch of 100 slow URLs: 400 measurements
        // that hold a slot for most of a step timeout each.
        let mut attackers = Vec::new();
        for (t, token) in tokens.iter().enumerate() {
            let urls: Vec<String> = (0..100)
                .map(|i| sites.url(&format!("/slow/{t}/{i}")))
                .collect();
            let req = reqwest::Client::new()
                .post(&batch_url)
                .bearer_auth(token)
                .json(&serde_json::json!({ "urls": urls }))
                .send();
            attackers.push(tokio::spawn(req));
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while sites.slow_in_flight().0 < 32 {
            assert!(
                Instant::now() < deadline,
                "the attack never filled its share"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // The honest probe, from another address, while the attack holds its whole share.
        let honest = reqwest::Client::builder()
            .local_address(HONEST_CLIENT)
            .build()
            .unwrap();
        let urls: Vec<String> = (0..50).map(|i| sites.url(&format!("/ok/h/{i}"))).collect();
        let started = Instant::now();
        let r = honest
            .post(&batch_url)
            .bearer_auth(&honest_token)
            .json(&serde_json::json!({ "urls": urls }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let text = r.text().await.unwrap();
        let lines: Vec<ControlBatchLine> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 50);
        for l in &lines {
            assert!(l.reply.is_some(), "{}: {:?} {:?}", l.url, l.status, l.error);
        }
        let took = started.elapsed();
        assert!(
            took < Duration::from_secs(5),
            "the honest batch took {took:?}"
        );
        // The single-URL endpoint too.
        let r = honest
            .post(format!("{}api/v1/control", collector.url))
            .bearer_auth(&honest_token)
            .json(&serde_json::json!({ "url": sites.url("/ok/h/single") }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let reply: ControlReply = r.json().await.unwrap();
        assert_eq!(reply.control.http.first().and_then(|h| h.status), Some(200));
        // The four tokens together never held more than one client's share.
        let (_, peak) = sites.slow_in_flight();
        assert!(peak <= 32, "the attack held {peak} slots");
        for a in attackers {
            a.abort();
        }
        eprintln!("honest batch of 50 under attack: {took:?}, attack peak {peak} slots");
    });
}

#[test]
fn the_control_is_not_a_downloader() {
    let rt = runtime();
    let sites = rt.block_on(Sites::start(CONTROL_SOURCE)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let collector = shipped_collector(dir.path(), &[]);
    rt.block_on(async {
        let token = register(&collector).await;
        let started = Instant::now();
        let r = reqwest::Client::new()
            .post(format!("{}api/v1/control", collector.url))
            .bearer_auth(&token)
            .json(&serde_json::json!({ "url": sites.url("/dl/0") }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let reply: ControlReply = r.json().await.unwrap();
        let hops = &reply.control.http;
        // At most 10 redirects followed (11 fetches, then the refusal to follow the 11th
        // redirect recorded as a hop of its own), and not a byte of a redirect's body read.
        let fetched: Vec<_> = hops.iter().filter(|h| h.status.is_some()).collect();
        assert!(fetched.len() <= 11, "{} fetched hops", fetched.len());
        assert!(fetched.len() < DL_HOPS as usize);
        for h in &fetched {
            assert_eq!(h.status, Some(302));
            assert_eq!(h.body_length, 0, "hop {} read a body", h.hop);
        }
        let last = hops.last().unwrap();
        assert_eq!(
            last.failure,
            Some(witness_core::Failure::HttpTooManyRedirects),
            "{last:?}"
        );
        let (fetches, _) = sites.requests_under(CONTROL_SOURCE, "/dl/");
        assert!(fetches <= 11, "{fetches} fetches");
        let took = started.elapsed();
        assert!(took < Duration::from_secs(10), "{took:?}");
        // The same URL again within the TTL costs the site nothing.
        let r = reqwest::Client::new()
            .post(format!("{}api/v1/control", collector.url))
            .bearer_auth(&token)
            .json(&serde_json::json!({ "url": sites.url("/dl/0") }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(sites.requests_under(CONTROL_SOURCE, "/dl/").0, fetches);
        eprintln!(
            "downloader: {fetches} fetches in {took:?}; the server pushed {} KiB into socket buffers",
            sites.dl_written() / 1024
        );
    });
}

/// A probe that saw a site fail where the view says it worked may ask for a fresh measurement:
/// granted once per URL per TTL, whoever asks; the view is served otherwise.
#[test]
fn a_fresh_measurement_is_granted_once_per_url_per_ttl() {
    let rt = runtime();
    let sites = rt.block_on(Sites::start(CONTROL_SOURCE)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let collector = shipped_collector(dir.path(), &[]);
    rt.block_on(async {
        let (a, b) = (register(&collector).await, register(&collector).await);
        let ask = |token: &str, fresh: bool| {
            reqwest::Client::new()
                .post(format!("{}api/v1/control", collector.url))
                .bearer_auth(token)
                .json(&serde_json::json!({ "url": sites.url("/ok/fresh"), "fresh": fresh }))
                .send()
        };
        let mut fetches = Vec::new();
        for (token, fresh) in [(&a, false), (&a, true), (&b, true), (&a, true), (&b, false)] {
            let r = ask(token, fresh).await.unwrap();
            assert_eq!(r.status(), 200);
            let reply: ControlReply = r.json().await.unwrap();
            assert!(reply.control.age_secs.is_some());
            fetches.push(sites.requests(CONTROL_SOURCE, "/ok/fresh"));
        }
        assert_eq!(fetches, [1, 2, 2, 2, 2], "one fresh look per TTL");
    });
}
