//! The real probe and the real collector together, on loopback: registration, runs, durable
//! uploads, events and webhooks, metrics and the read API, crashes and outages.

use std::net::{IpAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use witness_core::model::{
    HopReply, Measurement, Method, PathAction, PathHop, PathObservation, PathTrigger, Status,
    Verdict,
};
use witness_tests::collector::get;
use witness_tests::origin::Policy;
use witness_tests::volunteer::{anchor_of, lab_control_section, ok, Probe};
use witness_tests::{Behaviour, CollectorProcess, Site, WebhookReceiver, World, CENSORED_SOURCE};

const ASN: u32 = 64500;

fn json(url: &str) -> Value {
    let (status, body) = get(url).unwrap();
    assert_eq!(status, 200, "{url}: {body}");
    serde_json::from_str(&body).unwrap()
}

fn events(collector: &CollectorProcess) -> Vec<Value> {
    json(&format!("{}api/v1/events", collector.url))["events"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn anchor(world: &World) -> String {
    anchor_of(world, "fine.test")
}

#[test]
fn two_probes_raise_one_block_event_and_one_webhook_then_unblock() {
    let second: IpAddr = "127.0.0.4".parse().unwrap();
    let world = World::builder()
        .policy(Policy {
            censored_peers: vec![CENSORED_SOURCE, second],
        })
        .site(Site::new("fine.test"))
        .site(Site::new("other.test"))
        .site(
            Site::new("news.test")
                .category("NEWS")
                .censored(Behaviour::DropAfterClientHello),
        )
        .start()
        .unwrap();
    let hook = WebhookReceiver::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sections = format!(
        "{}\n[webhook]\nurls = [\"{}\"]\nformat = \"generic\"\ninitial_backoff = \"100ms\"\n",
        lab_control_section(&world, false),
        hook.url
    );
    let collector = CollectorProcess::start(dir.path(), &sections).unwrap();
    let list = world.write_list("list.csv").unwrap();
    let list = list.to_str().unwrap();
    let anchor = anchor(&world);
    let probes = [
        Probe::new(&world, CENSORED_SOURCE, ASN, &collector.url, &anchor),
        Probe::new(&world, second, ASN, &collector.url, &anchor),
    ];

    for p in &probes {
        let text = ok(&p.witness(&["register"]));
        assert!(text.contains("Registered as probe"), "{text}");
    }
    for p in &probes {
        let out = p.witness(&["run", "--list", list, "--upload", "--json", "--no-progress"]);
        let stdout = ok(&out);
        let news: Measurement = stdout
            .lines()
            .map(|l| serde_json::from_str::<Measurement>(l).unwrap())
            .find(|m| m.domain == "news.test")
            .unwrap();
        assert_eq!(news.verdict.status, Status::Blocked, "{:?}", news.verdict);
        assert!(
            news.control.is_some(),
            "registered token used for the control"
        );
        assert_eq!(p.spooled(), 0, "acknowledged records leave the spool");
    }

    // Exactly one new-block event, for this network and method.
    let evs = events(&collector);
    let blocks: Vec<_> = evs.iter().filter(|e| e["kind"] == "new_block").collect();
    assert_eq!(blocks.len(), 1, "{evs:#?}");
    assert_eq!(blocks[0]["domain"], "news.test");
    assert_eq!(blocks[0]["asn"], ASN);
    assert_eq!(blocks[0]["method"], "tls");
    assert!(blocks[0]["ended_at"].is_null());
    let bodies = hook.wait_for(Duration::from_secs(15), |b| !b.is_empty());
    let new_block_calls = bodies
        .iter()
        .filter(|b| b.contains("\"new_block\""))
        .count();
    assert_eq!(new_block_calls, 1, "{bodies:#?}");

    // Metrics and the read API show it.
    let (status, metrics) = get(&format!("{}metrics", collector.url)).unwrap();
    assert_eq!(status, 200);
    let ratio_line = metrics
        .lines()
        .find(|l| l.starts_with("witness_site_blocked_ratio{") && l.contains("news.test"))
        .unwrap_or_else(|| panic!("no ratio for news.test:\n{metrics}"));
    assert!(
        ratio_line.contains("method=\"tls\"") && ratio_line.ends_with(" 1"),
        "{ratio_line}"
    );
    assert!(metrics.contains("witness_measurements_received_total{"));
    let statuses = json(&format!("{}api/v1/status?asn={ASN}", collector.url));
    assert!(statuses.to_string().contains("news.test"), "{statuses}");
    let (csv_status, csv) = get(&format!("{}api/v1/status?format=csv", collector.url)).unwrap();
    assert_eq!(csv_status, 200);
    assert!(
        csv.lines().count() >= 2 && csv.contains("news.test"),
        "{csv}"
    );

    // The site is unblocked; both probes see it; the event is resolved and notified.
    world
        .https_origin("news.test")
        .unwrap()
        .set_rule("news.test", None);
    for p in &probes {
        ok(&p.witness(&["run", "--list", list, "--upload", "--no-progress"]));
    }
    let evs = events(&collector);
    let block = evs.iter().find(|e| e["kind"] == "new_block").unwrap();
    assert!(
        !block["ended_at"].is_null(),
        "unblock resolves the event: {block:#}"
    );
    let bodies = hook.wait_for(Duration::from_secs(15), |b| {
        b.iter().any(|x| x.contains("\"unblock\""))
    });
    assert!(
        bodies.iter().any(|b| b.contains("\"unblock\"")),
        "{bodies:#?}"
    );
    assert_eq!(
        evs.iter().filter(|e| e["kind"] == "new_block").count(),
        1,
        "no second event: {evs:#?}"
    );

    // Privacy: the probes' addresses are nowhere in the collector's files.
    drop(collector);
    for entry in std::fs::read_dir(dir.path()).unwrap().flatten() {
        let bytes = std::fs::read(entry.path()).unwrap();
        for ip in ["127.0.0.2", "127.0.0.4"] {
            assert!(
                !bytes.windows(ip.len()).any(|w| w == ip.as_bytes()),
                "{ip} found in {}",
                entry.path().display()
            );
        }
    }
}

/// A measurement of `domain` on this test's network with nothing observed but `verdict`.
fn record(domain: &str, at: chrono::DateTime<chrono::Utc>, verdict: Verdict) -> Measurement {
    let mut m = witness_tests::measurement(domain, ASN, verdict.status, verdict.method, at);
    m.verdict = verdict;
    m
}

fn synthetic(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let m = record(
                &format!("site{i}.test"),
                chrono::Utc::now(),
                Verdict::new(Status::Accessible, None, "synthetic"),
            );
            serde_json::to_string(&m).unwrap()
        })
        .collect()
}

/// A blocked (TCP reset) measurement of `domain` whose localisation names the censor at `hop`,
/// the routers before it in `censor_asn`.
fn located(domain: &str, at: chrono::DateTime<chrono::Utc>, hop: u8, censor_asn: u32) -> String {
    let hops = (1..=hop)
        .map(|ttl| PathHop {
            ttl,
            reply: if ttl == hop {
                HopReply::Reset
            } else {
                HopReply::TimeExceeded
            },
            addr: (2..hop)
                .contains(&ttl)
                .then(|| format!("95.56.{ttl}.1").parse().unwrap()),
            asn: (2..hop).contains(&ttl).then_some(censor_asn),
        })
        .collect();
    let mut m = record(
        domain,
        at,
        Verdict::new(Status::Blocked, Some(Method::Tcp), "reset after the SYN"),
    );
    m.path = Some(PathObservation {
        trigger: PathTrigger::Syn,
        addr: "198.51.100.7:443".parse().unwrap(),
        action: PathAction::Reset,
        censor_hop: Some(hop),
        unlocated: None,
        hops,
        max_ttl: 16,
        probes: u32::from(hop) + 1,
        t_ms: 10.0,
        duration_ms: 20.0,
        shared_with: None,
        censor_range: None,
    });
    serde_json::to_string(&m).unwrap()
}

/// Two probes locate a block at hop 3 (AS9198): the real collector's read API, `/metrics` and
/// site page say so. Then the censor moves to hop 5 (AS21299): while only one probe says so,
/// nothing happens; once both agree, one `block_moved` event and one webhook, however often
/// they confirm it afterwards.
#[test]
fn the_censors_hop_is_aggregated_shown_and_a_move_raises_one_event() {
    let hook = WebhookReceiver::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sections = format!(
        "[webhook]\nurls = [\"{}\"]\nformat = \"generic\"\ninitial_backoff = \"100ms\"\n",
        hook.url
    );
    let collector = CollectorProcess::start(dir.path(), &sections).unwrap();
    let base = url::Url::parse(&collector.url).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let probes: Vec<_> = (0..2)
        .map(|_| {
            let reg = rt
                .block_on(
                    witness_app::upload::Uploader::new(base.clone(), None)
                        .unwrap()
                        .register(None),
                )
                .unwrap();
            witness_app::upload::Uploader::new(base.clone(), Some(reg.token)).unwrap()
        })
        .collect();
    let upload = |probe: usize, hop: u8, asn: u32, minutes: i64| {
        let at = chrono::Utc::now() - chrono::TimeDelta::minutes(60 - minutes);
        let record = located("news.test", at, hop, asn);
        let reply = rt.block_on(probes[probe].send_batch(&[&record])).unwrap();
        assert_eq!(reply.accepted.len(), 1, "{:?}", reply.rejected);
    };
    let status = || {
        let v = json(&format!("{}api/v1/status?asn={ASN}", collector.url));
        v["sites"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["domain"] == "news.test")
            .cloned()
            .unwrap_or_else(|| panic!("no status of news.test: {v:#}"))
    };
    let moved = || {
        events(&collector)
            .into_iter()
            .filter(|e| e["kind"] == "block_moved")
            .collect::<Vec<_>>()
    };

    upload(0, 3, 9198, 0);
    upload(1, 3, 9198, 1);
    let st = status();
    assert_eq!(st["status"], "blocked", "{st:#}");
    assert_eq!(
        (&st["censor_hop"], &st["censor_asn"], &st["hop_agreeing"]),
        (&Value::from(3), &Value::from(9198), &Value::from(2)),
        "{st:#}"
    );
    let (code, metrics) = get(&format!("{}metrics", collector.url)).unwrap();
    assert_eq!(code, 200);
    let gauge =
        format!("witness_site_censor_hop{{asn=\"{ASN}\",domain=\"news.test\",method=\"tcp\"}} 3");
    assert!(metrics.contains(&gauge), "{metrics}");
    let (code, page) = get(&format!("{}sites/news.test", collector.url)).unwrap();
    assert_eq!(code, 200);
    assert!(page.contains("blocked at hop 3, AS9198"), "{page}");
    assert!(moved().is_empty());

    // One probe sees the censor elsewhere: no agreement, no event, no hop claimed.
    upload(0, 5, 21299, 10);
    assert!(moved().is_empty(), "{:#?}", moved());
    assert!(status()["censor_hop"].is_null(), "{:#}", status());
    // Both: one event, however often they confirm it.
    upload(1, 5, 21299, 11);
    upload(0, 5, 21299, 20);
    upload(1, 5, 21299, 21);
    let evs = moved();
    assert_eq!(evs.len(), 1, "{evs:#?}");
    assert_eq!(evs[0]["domain"], "news.test");
    assert_eq!(evs[0]["asn"], ASN);
    assert_eq!(evs[0]["evidence"]["censor"]["hop"], 5);
    assert_eq!(evs[0]["evidence"]["censor"]["asn"], 21299);
    assert_eq!(evs[0]["evidence"]["previous_censor"]["hop"], 3);
    assert_eq!(evs[0]["evidence"]["previous_censor"]["asn"], 9198);
    let st = status();
    assert_eq!(
        (&st["censor_hop"], &st["censor_asn"]),
        (&Value::from(5), &Value::from(21299))
    );
    // The CSV export carries the move too: the new place, then the old one.
    let (code, csv) = get(&format!(
        "{}api/v1/events?format=csv&kind=block_moved",
        collector.url
    ))
    .unwrap();
    assert_eq!(code, 200, "{csv}");
    let row = csv.lines().nth(1).unwrap_or_default();
    assert!(row.ends_with(",5,21299,3,9198"), "{csv}");
    hook.wait_for(Duration::from_secs(15), |b| {
        b.iter().any(|x| x.contains("\"block_moved\""))
    });
    // Give a duplicate, if there were one, time to arrive.
    std::thread::sleep(Duration::from_millis(500));
    let bodies = hook.bodies();
    assert_eq!(
        bodies
            .iter()
            .filter(|b| b.contains("\"transition\":\"block_moved\""))
            .count(),
        1,
        "{bodies:#?}"
    );
    let (_, metrics) = get(&format!("{}metrics", collector.url)).unwrap();
    assert!(
        metrics.contains("witness_events_total{kind=\"block_moved\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains(&format!(
        "witness_site_censor_hop{{asn=\"{ASN}\",domain=\"news.test\",method=\"tcp\"}} 5"
    )));
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn kill9_during_sustained_upload_loses_no_acknowledged_measurement() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let sections = "[ingest]\nuploads_per_minute = 100000\nupload_burst = 100000\n";
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\n[store]\nurl = \"sqlite://{}\"\n{sections}",
        dir.path().join("c.db").display()
    );
    let config = dir.path().join("c.toml");
    std::fs::write(&config, text).unwrap();
    let db = dir.path().join("c.db");
    let mut collector = CollectorProcess::start_with(&config, &db).unwrap();
    let base = url::Url::parse(&collector.url).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let reg = rt
        .block_on(
            witness_app::upload::Uploader::new(base.clone(), None)
                .unwrap()
                .register(None),
        )
        .unwrap();
    let up = witness_app::upload::Uploader::new(base, Some(reg.token)).unwrap();

    let records = synthetic(4000);
    let batches: Vec<Vec<&str>> = records
        .chunks(50)
        .map(|c| c.iter().map(String::as_str).collect())
        .collect();
    let mut acked: Vec<String> = Vec::new();
    let started = Instant::now();
    let mut killed = false;
    for (i, batch) in batches.iter().enumerate() {
        if i == batches.len() / 2 && !killed {
            // Kill in the middle of the stream, with a request likely in flight.
            let up2 = up.clone();
            let b: Vec<String> = batch.iter().map(|s| s.to_string()).collect();
            let inflight = rt.spawn(async move {
                let refs: Vec<&str> = b.iter().map(String::as_str).collect();
                up2.send_batch(&refs).await
            });
            std::thread::sleep(Duration::from_millis(5));
            collector.kill9();
            killed = true;
            if let Ok(Ok(reply)) = rt.block_on(inflight) {
                acked.extend(reply.accepted);
                acked.extend(reply.duplicates);
            }
            continue;
        }
        match rt.block_on(up.send_batch(batch)) {
            Ok(reply) => {
                assert!(reply.rejected.is_empty(), "{:?}", reply.rejected);
                acked.extend(reply.accepted);
                acked.extend(reply.duplicates);
            }
            Err(e) => assert!(killed, "upload failed before the kill: {e}"),
        }
    }
    assert!(killed && acked.len() >= 1000, "acked {}", acked.len());
    eprintln!(
        "{} acknowledged before/around the kill in {:?}",
        acked.len(),
        started.elapsed()
    );

    // Restart on the same database: every acknowledged id is there (a re-upload says duplicate).
    let _collector = CollectorProcess::start_with(&config, &db).unwrap();
    let by_id: std::collections::HashMap<String, &str> = records
        .iter()
        .map(|r| {
            let v: Value = serde_json::from_str(r).unwrap();
            (v["id"].as_str().unwrap().to_string(), r.as_str())
        })
        .collect();
    for chunk in acked.chunks(200) {
        let batch: Vec<&str> = chunk.iter().map(|id| by_id[id]).collect();
        let reply = rt.block_on(up.send_batch(&batch)).unwrap();
        assert!(
            reply.accepted.is_empty(),
            "acknowledged records were lost in the crash: {:?}",
            reply.accepted
        );
        assert_eq!(reply.duplicates.len(), chunk.len());
    }
}

fn count_measurements(collector_url: &str) -> usize {
    json(&format!("{collector_url}api/v1/measurements?limit=10000"))["measurements"]
        .as_array()
        .map(Vec::len)
        .unwrap_or(0)
}

fn collector_on(dir: &Path, port: u16, sections: &str) -> (PathBuf, PathBuf) {
    let db = dir.join("c.db");
    let config = dir.join("c.toml");
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\n[store]\nurl = \"sqlite://{}\"\n{sections}",
        db.display()
    );
    std::fs::write(&config, text).unwrap();
    (config, db)
}

#[test]
fn a_probe_delivers_everything_once_its_collector_is_back() {
    let world = World::builder()
        .site(Site::new("fine.test"))
        .site(Site::new("news.test").censored(Behaviour::ResetAfterClientHello))
        .start()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let (config, db) = collector_on(dir.path(), port, &lab_control_section(&world, false));
    let mut collector = CollectorProcess::start_with(&config, &db).unwrap();
    let probe = Probe::new(
        &world,
        CENSORED_SOURCE,
        ASN,
        &collector.url,
        &anchor(&world),
    );
    ok(&probe.witness(&["register"]));
    let list = world.write_list("list.csv").unwrap();
    let list = list.to_str().unwrap();

    collector.kill9();
    for _ in 0..2 {
        let out = probe.witness(&["run", "--list", list, "--upload", "--no-progress"]);
        assert_eq!(out.status.code(), Some(3), "upload failure is exit 3");
        assert!(String::from_utf8_lossy(&out.stderr).contains("kept"));
    }
    assert_eq!(probe.spooled(), 4, "both runs are spooled");

    let collector = CollectorProcess::start_with(&config, &db).unwrap();
    let text = ok(&probe.witness(&["upload"]));
    assert!(text.contains("4 of 4"), "{text}");
    assert_eq!(probe.spooled(), 0);
    assert_eq!(count_measurements(&collector.url), 4);
    // A second upload has nothing left to send and duplicates nothing.
    ok(&probe.witness(&["upload"]));
    assert_eq!(count_measurements(&collector.url), 4);
}

#[test]
fn the_daemon_measures_through_a_shutdown_and_backfills_with_original_times() {
    let world = World::builder()
        .site(Site::new("fine.test"))
        .site(Site::new("news.test"))
        .start()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let sections = format!(
        "{}\n[aggregation]\nmin_probes = 1\nmin_measurements = 1\n",
        lab_control_section(&world, false)
    );
    let (config, db) = collector_on(dir.path(), port, &sections);
    let mut collector = CollectorProcess::start_with(&config, &db).unwrap();

    // The anchor is a listener the test controls: closing it (with the collector down) is the
    // shutdown; the probe sees no anchor and no control.
    let anchor_port = free_port();
    let anchor_addr = format!("127.0.0.1:{anchor_port}");
    let anchor = TcpListener::bind(&anchor_addr).unwrap();
    let probe = Probe::new(&world, CENSORED_SOURCE, ASN, &collector.url, &anchor_addr);
    ok(&probe.witness(&["register"]));
    let list = world.write_list("list.csv").unwrap();

    let mut daemon = probe
        .command(&[
            "daemon",
            "--interval",
            "2",
            "--jitter",
            "0",
            "--upload-retry",
            "1",
        ])
        .args(["--list", list.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let wait = |pred: &dyn Fn() -> bool, secs: u64| {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !pred() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
        }
        pred()
    };
    assert!(
        wait(&|| count_measurements(&collector.url) >= 2, 30),
        "first run uploaded"
    );

    // Shutdown: no anchor, no collector.
    drop(anchor);
    collector.kill9();
    let cut_at = chrono::Utc::now();
    assert!(
        wait(&|| probe.spooled() >= 4, 40),
        "offline runs are spooled"
    );

    // The network comes back.
    let _anchor = TcpListener::bind(&anchor_addr).unwrap();
    let collector = CollectorProcess::start_with(&config, &db).unwrap();
    assert!(
        wait(&|| probe.spooled() == 0, 40),
        "the backlog is uploaded"
    );
    let _ = daemon.kill();
    let _ = daemon.wait();

    let all = json(&format!("{}api/v1/measurements?limit=10000", collector.url));
    let offline: Vec<&Value> = all["measurements"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["verdict"]["status"] == "offline")
        .collect();
    assert!(
        offline.len() >= 2,
        "offline measurements stored: {}",
        offline.len()
    );
    for m in &offline {
        let t: chrono::DateTime<chrono::Utc> = m["started_at"].as_str().unwrap().parse().unwrap();
        assert!(
            t >= cut_at - chrono::Duration::seconds(3),
            "original times kept: {t}"
        );
    }
    let evs = events(&collector);
    assert!(
        evs.iter()
            .any(|e| e["kind"] == "shutdown" && e["asn"] == ASN),
        "a shutdown event for the network: {evs:#?}"
    );
    assert!(
        !evs.iter().any(|e| e["kind"] == "new_block"),
        "no wave of blocks: {evs:#?}"
    );
}
