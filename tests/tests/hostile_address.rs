//! Issue 20: the volunteer's own address never leaves the probe. A hostile world on loopback
//! (a resolver, a redirecting blockpage and a TLS site) echoes the probe's address back in
//! every field and encoding a censor could use; the real `witness` uploads to the real
//! `witness-collector`, and no encoding of the address may appear in the `--json` output, the
//! `--out` file, the raw spool or `GET /api/v1/measurements`.
//!
//! The probe measures from `127.0.0.77` (`source_address`), so that address is what every
//! hostile server sees and echoes, and what must vanish.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Output;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::rdata::{A, CNAME};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use witness_core::model::{
    ConnectivitySummary, Measurement, ProbeNetwork, Software, Status, Verdict, SCHEMA_VERSION,
};
use witness_core::scrub::Needles;
use witness_tests::volunteer::lab_control_section;
use witness_tests::{witness_bin, CollectorProcess, World};

/// The probe's address: distinctive, on loopback.
const OWN: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 77);
/// The hostile servers' address.
const HOSTILE: Ipv4Addr = Ipv4Addr::new(127, 0, 77, 1);

fn b64(data: &[u8], url: bool) -> String {
    let abc: &[u8] = if url {
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    } else {
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    };
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..=chunk.len() {
            out.push(abc[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// Every form of `ip` the hostile world echoes, and the independent check looks for.
fn encodings(ip: Ipv4Addr) -> Vec<String> {
    let [a, b, c, d] = ip.octets();
    let n = u32::from(ip);
    let dotted = ip.to_string();
    let mut v = vec![
        dotted.clone(),
        format!("{a:03}.{b:03}.{c:03}.{d:03}"),
        format!("{a}-{b}-{c}-{d}"),
        format!("{a}_{b}_{c}_{d}"),
        format!("{n:08x}"),
        format!("0x{n:08x}"),
        format!("{a:#x}.{b:#x}.{c:#x}.{d:#x}"),
        n.to_string(),
        format!("0{n:o}"),
        format!("0{a:o}.0{b:o}.0{c:o}.0{d:o}"),
        format!("{d}.{c}.{b}.{a}.in-addr.arpa"),
        format!("::ffff:{dotted}"),
        format!("::ffff:{:x}:{:x}", n >> 16, n & 0xffff),
        dotted.bytes().map(|x| format!("%{x:02X}")).collect(),
        dotted.bytes().map(|x| format!("&#{x};")).collect(),
    ];
    for pre in ["", "a", "ab"] {
        let plain = format!("{pre}ip={dotted}");
        v.push(b64(plain.as_bytes(), false));
        v.push(b64(plain.as_bytes(), true));
    }
    v
}

/// The forms that fit in a DNS label, for CNAMEs.
fn dns_forms(ip: Ipv4Addr) -> Vec<String> {
    let [a, b, c, d] = ip.octets();
    vec![
        format!("{a}-{b}-{c}-{d}.dsl.isp.kz."),
        format!("{d}.{c}.{b}.{a}.in-addr.arpa.cdn.kz."),
        format!("x{:08x}.pool.kz.", u32::from(ip)),
    ]
}

/// No encoding of [`OWN`] in `text`: the literal forms the world echoed (case-insensitive)
/// and, for good measure, the probe's own detector.
fn assert_clean(what: &str, text: &str) {
    let lower = text.to_ascii_lowercase();
    for enc in encodings(OWN).iter().chain(dns_forms(OWN).iter()) {
        let e = enc.trim_end_matches('.').to_ascii_lowercase();
        assert!(
            !lower.contains(&e),
            "{what}: the probe's address leaks as {enc:?}"
        );
    }
    assert!(
        !Needles::new([IpAddr::V4(OWN)]).found_in(text),
        "{what}: an encoding of the probe's address survives"
    );
}

/// A resolver that answers every A query with a CNAME chain spelling the asker's address,
/// then the hostile server; `self.test` resolves to the asker's own address.
async fn hostile_dns(sock: UdpSocket) {
    let mut buf = vec![0u8; 1500];
    loop {
        let Ok((n, peer)) = sock.recv_from(&mut buf).await else {
            return;
        };
        let Ok(q) = Message::from_vec(&buf[..n]) else {
            continue;
        };
        let Some(query) = q.queries.first().cloned() else {
            continue;
        };
        let mut r = Message::response(q.metadata.id, q.metadata.op_code);
        r.metadata.recursion_desired = q.metadata.recursion_desired;
        r.metadata.recursion_available = true;
        r.metadata.response_code = ResponseCode::NoError;
        r.add_query(query.clone());
        let IpAddr::V4(asker) = peer.ip() else {
            continue;
        };
        if query.query_type() == RecordType::A {
            let name = query.name().clone();
            if name.to_ascii().starts_with("self.") {
                r.add_answer(Record::from_rdata(name, 60, RData::A(A(asker))));
            } else {
                let mut prev = name;
                for form in dns_forms(asker) {
                    let next = Name::from_ascii(&form).unwrap();
                    r.add_answer(Record::from_rdata(
                        prev,
                        60,
                        RData::CNAME(CNAME(next.clone())),
                    ));
                    prev = next;
                }
                r.add_answer(Record::from_rdata(prev, 60, RData::A(A(HOSTILE))));
            }
        }
        if let Ok(bytes) = r.to_vec() {
            let _ = sock.send_to(&bytes, peer).await;
        }
    }
}

/// One HTTP/1.1 exchange that echoes the peer's address everywhere: `/` redirects to a
/// landing page with the address in the query; the landing page carries it in header names,
/// header values, cookies, the title and the body.
async fn echo_http<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, peer: Ipv4Addr, tls: bool) {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => head.extend_from_slice(&buf[..n]),
            _ => return,
        }
    }
    let text = String::from_utf8_lossy(&head);
    let path = text.split_whitespace().nth(1).unwrap_or("/").to_string();
    let host = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("host: ")
                .or_else(|| l.strip_prefix("Host: "))
        })
        .unwrap_or("hostile.test")
        .trim()
        .to_string();
    let all = encodings(peer);
    let [a, b, c, d] = peer.octets();
    let resp = if path == "/" {
        let scheme = if tls { "https" } else { "http" };
        format!(
            "HTTP/1.1 302 Found\r\nLocation: {scheme}://{host}/landing?ip={peer}&h={:08x}&b={}&p={}\r\n\
             X-{a}-{b}-{c}-{d}: seen\r\nX-Forwarded-For: {peer}\r\nContent-Length: 0\r\n\
             Connection: close\r\n\r\n",
            u32::from(peer),
            all[all.len() - 1],
            all[13],
        )
    } else {
        let body = format!(
            // The address straddles the 200-byte bound of a title: a cut before scrubbing
            // would keep `127.0.`.
            "<html><head><title>{} {peer} ({})</title></head><body>{}</body></html>",
            "x".repeat(194),
            all[7],
            all.join(" | ")
        );
        let mut headers = String::new();
        for (i, e) in all.iter().enumerate() {
            headers.push_str(&format!("X-Echo-{i}: {e}\r\n"));
        }
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nX-Ip-{a}_{b}_{c}_{d}: 1\r\n\
             Set-Cookie: where={}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            all[16],
            body.len()
        )
    };
    let _ = s.write_all(resp.as_bytes()).await;
    let _ = s.shutdown().await;
}

/// A certificate whose subject and issuer spell the asker's address (self-signed: the probe
/// records the chain it was shown even when it does not verify).
fn hostile_tls() -> Arc<rustls::ServerConfig> {
    use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};
    let mut params = CertificateParams::new(vec!["hostile.test".to_string()]).unwrap();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("{OWN} {}", u32::from(OWN)));
    dn.push(DnType::OrganizationName, "127-0-0-77.subscriber.kz");
    dn.push(DnType::OrganizationalUnitName, encodings(OWN)[17].clone());
    params.distinguished_name = dn;
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let key_der = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let config = rustls::ServerConfig::builder_with_provider(witness_tests::pki::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], key_der)
        .unwrap();
    Arc::new(config)
}

struct Hostile {
    dns: SocketAddr,
    http: SocketAddr,
    https: SocketAddr,
    /// Connections from the probe's own address.
    from_probe: Arc<AtomicUsize>,
}

async fn start_hostile() -> Hostile {
    let dns = UdpSocket::bind((HOSTILE, 0)).await.unwrap();
    let dns_addr = dns.local_addr().unwrap();
    tokio::spawn(hostile_dns(dns));
    let from_probe = Arc::new(AtomicUsize::new(0));
    let http = TcpListener::bind((HOSTILE, 0)).await.unwrap();
    let https = TcpListener::bind((HOSTILE, 0)).await.unwrap();
    let (http_addr, https_addr) = (http.local_addr().unwrap(), https.local_addr().unwrap());
    let acceptor = tokio_rustls::TlsAcceptor::from(hostile_tls());
    for (listener, tls) in [(http, None), (https, Some(acceptor))] {
        let from_probe = from_probe.clone();
        tokio::spawn(async move {
            while let Ok((s, peer)) = listener.accept().await {
                let IpAddr::V4(ip) = peer.ip() else { continue };
                if ip == OWN {
                    from_probe.fetch_add(1, Ordering::Relaxed);
                }
                let tls = tls.clone();
                tokio::spawn(async move {
                    match tls {
                        None => echo_http(s, ip, false).await,
                        Some(acc) => {
                            if let Ok(Ok(t)) =
                                tokio::time::timeout(Duration::from_secs(5), acc.accept(s)).await
                            {
                                echo_http(t, ip, true).await;
                            }
                        }
                    }
                });
            }
        });
    }
    Hostile {
        dns: dns_addr,
        http: http_addr,
        https: https_addr,
        from_probe,
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A collector on `port` (fixed, so it can be restarted), with `server` extra keys.
fn collector_config(dir: &Path, port: u16, server: &str, world: &World) -> std::path::PathBuf {
    let config = dir.join(format!("collector-{}.toml", server.len()));
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\nregister_per_client_per_hour = 1000\n{server}\n\
         [store]\nurl = \"sqlite://{}\"\n\n{}",
        dir.join("c.db").display(),
        lab_control_section(world, false)
    );
    std::fs::write(&config, text).unwrap();
    config
}

/// The probe's config: the hostile resolver, source 127.0.0.77, the collector as control.
fn probe_config(home: &Path, h: &Hostile, collector: &str) -> std::path::PathBuf {
    let config = home.join("witness.toml");
    let text = format!(
        "consent = true\n[probe]\nasn = 64500\ncountry = \"KZ\"\n\
         [run]\ntimeout_secs = 3.0\n\
         [network]\nresolver = \"{}\"\ncontrol_resolver = \"none\"\nsource_address = \"{OWN}\"\n\
         lab_public_ranges = [\"127.0.0.0/8\"]\nanchors = [\"{collector}\"]\n\
         [path]\nenabled = false\n\
         [collector]\nurl = \"http://{collector}/\"\nspool_dir = \"{}\"\n",
        h.dns,
        home.join("spool").display()
    );
    std::fs::write(&config, text).unwrap();
    config
}

fn witness(home: &Path, args: &[&str]) -> Output {
    std::process::Command::new(witness_bin())
        .arg("--config")
        .arg(home.join("witness.toml"))
        .args(args)
        .env("HOME", home)
        .env_remove("XDG_DATA_HOME")
        .env_remove("WITNESS_CONFIG")
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn targets(h: &Hostile) -> Vec<String> {
    vec![
        format!("http://hostile.test:{}/", h.http.port()),
        format!("https://hostile.test:{}/", h.https.port()),
        format!("http://self.test:{}/", h.http.port()),
    ]
}

fn run_args<'a>(urls: &'a [String], extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["run", "--no-progress", "--upload"];
    for u in urls {
        args.extend(["--url", u.as_str()]);
    }
    args.extend(extra);
    args
}

fn json_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
        .count()
}

/// Every file under `dir`, concatenated.
fn all_files(dir: &Path) -> String {
    let mut out = String::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.push_str(&all_files(&p));
            } else if p.file_name().is_some_and(|n| n != "own-addresses") {
                out.push_str(&std::fs::read_to_string(&p).unwrap_or_default());
            }
        }
    }
    out
}

fn stored(collector: &CollectorProcess) -> Value {
    let url = format!("{}api/v1/measurements?limit=1000", collector.url);
    let (status, body) = witness_tests::collector::get(&url).unwrap();
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn every_echo_of_the_probes_address_is_scrubbed_everywhere() {
    let world = World::builder().start().unwrap();
    let rt = runtime();
    let h = rt.block_on(start_hostile());
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = collector_config(dir.path(), port, "", &world);
    let collector = CollectorProcess::start_with(&config, &dir.path().join("c.db")).unwrap();
    let home = tempfile::tempdir().unwrap();
    probe_config(home.path(), &h, &collector.addr());
    let out_file = home.path().join("out.jsonl");
    let urls = targets(&h);
    let reg = witness(home.path(), &["register"]);
    let out = out_file.to_str().unwrap();
    let run = witness(home.path(), &run_args(&urls, &["--json", "--out", out]));
    assert!(reg.status.success(), "{}", text(&reg));
    assert_eq!(run.status.code(), Some(0), "{}", text(&run));

    // The world did echo the address: there was something to scrub.
    assert!(
        h.from_probe.load(Ordering::Relaxed) >= 3,
        "the probe reached the hostile world"
    );
    let stdout = String::from_utf8_lossy(&run.stdout).to_string();
    assert!(stdout.contains("[scrubbed]"), "{stdout}");
    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    let hops = lines[0]["http"].as_array().unwrap();
    assert!(
        hops.iter().any(|h| h["status"] == 302) && hops.iter().any(|h| h["status"] == 200),
        "the redirect was followed: {hops:?}"
    );
    let title = hops.iter().find(|h| h["status"] == 200).unwrap()["title"].to_string();
    assert!(
        title.contains(" [scru") && !title.contains("127.0."),
        "scrubbed before the cut: {title}"
    );
    assert!(
        lines[1]["tls"][0]["peer_certificates"]
            .to_string()
            .contains("[scrubbed]"),
        "the certificate was recorded, scrubbed: {}",
        lines[1]["tls"]
    );
    assert!(
        lines[2]["dns"][0]["answers"]
            .to_string()
            .contains("0.0.0.0"),
        "an answer that is the probe's own address is kept as the unspecified address: {}",
        lines[2]["dns"]
    );
    assert_clean("--json output", &stdout);
    assert_clean("stderr", &String::from_utf8_lossy(&run.stderr));
    assert_clean("--out file", &std::fs::read_to_string(&out_file).unwrap());
    assert_clean("spool", &all_files(&home.path().join("spool")));
    let stored = stored(&collector);
    assert_eq!(
        stored["measurements"].as_array().map(Vec::len),
        Some(3),
        "all three stored: {stored}"
    );
    assert_clean("GET /api/v1/measurements", &stored.to_string());
}

#[test]
fn without_the_public_address_records_are_held_until_it_is_known() {
    let world = World::builder().start().unwrap();
    let rt = runtime();
    let h = rt.block_on(start_hostile());
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let db = dir.path().join("c.db");
    // Behind a proxy header the probe never sends, the collector (the probe's control) cannot
    // say which address it sees: the probe does not learn its public address.
    let proxied = collector_config(
        dir.path(),
        port,
        "client_address_header = \"X-Real-IP\"",
        &world,
    );
    let mut collector = CollectorProcess::start_with(&proxied, &db).unwrap();
    let home = tempfile::tempdir().unwrap();
    probe_config(home.path(), &h, &collector.addr());
    let urls = targets(&h);
    let reg = witness(home.path(), &["register"]);
    let run = witness(home.path(), &run_args(&urls, &[]));
    let upload = witness(home.path(), &["upload"]);
    assert!(reg.status.success(), "{}", text(&reg));
    assert_eq!(
        run.status.code(),
        Some(3),
        "held is not uploaded: {}",
        text(&run)
    );
    assert!(text(&run).contains("held back"), "{}", text(&run));
    assert_eq!(upload.status.code(), Some(3), "{}", text(&upload));
    assert!(
        text(&upload).contains("has not learned its public address"),
        "witness upload says why: {}",
        text(&upload)
    );
    let held = home.path().join("spool").join("held");
    assert_eq!(json_files(&held), 3, "the records wait in held/");
    // Held records are scrubbed of every address the probe knows (its source, here).
    assert_clean("held spool", &all_files(&held));
    assert_eq!(
        stored(&collector)["measurements"].as_array().map(Vec::len),
        Some(0)
    );

    // The collector now sees the probe's address: the next upload learns it, scrubs the
    // held records again and sends them.
    collector.kill9();
    let plain = collector_config(dir.path(), port, "", &world);
    let collector = CollectorProcess::start_with(&plain, &db).unwrap();
    let upload = witness(home.path(), &["upload"]);
    assert_eq!(upload.status.code(), Some(0), "{}", text(&upload));
    assert!(text(&upload).contains("3 of 3"), "{}", text(&upload));
    assert_eq!(json_files(&held), 0);
    let stored = stored(&collector);
    assert_eq!(stored["measurements"].as_array().map(Vec::len), Some(3));
    assert_clean("GET /api/v1/measurements", &stored.to_string());
}

#[test]
fn the_collector_refuses_a_record_holding_the_uploaders_address() {
    let world = World::builder().start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = collector_config(
        dir.path(),
        free_port(),
        "client_address_header = \"X-Real-IP\"",
        &world,
    );
    let collector = CollectorProcess::start_with(&config, &dir.path().join("c.db")).unwrap();
    runtime().block_on(refusal(&collector));
    let stored = stored(&collector);
    assert_eq!(stored["measurements"].as_array().map(Vec::len), Some(1));
    assert!(!Needles::new(["203.0.113.77".parse().unwrap()]).found_in(&stored.to_string()));
}

/// Upload, as a probe behind the proxy, one clean record and two holding its address.
async fn refusal(collector: &CollectorProcess) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let reg: Value = client
        .post(format!("{}api/v1/register", collector.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = reg["token"].as_str().unwrap();
    let record = |evidence: &str| {
        let mut m = Measurement {
            schema_version: SCHEMA_VERSION,
            id: uuid::Uuid::now_v7(),
            software: Software::default(),
            url: "https://site.kz/".into(),
            domain: "site.kz".into(),
            category_code: None,
            started_at: chrono::Utc::now() - chrono::TimeDelta::minutes(1),
            runtime_ms: 10.0,
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
            ab: vec![],
            app: None,
            connectivity: ConnectivitySummary::default(),
            verdict: Verdict::new(Status::Inconclusive, None, "x"),
        };
        m.verdict.evidence = vec![evidence.to_string()];
        serde_json::to_value(m).unwrap()
    };
    let batch = serde_json::json!({"measurements": [
        record("fine"),
        record("redirected to /?ip=203-0-113-77"),
        record(&b64(b"ip=203.0.113.77", false)),
    ]});
    let resp = client
        .post(format!("{}api/v1/measurements", collector.url))
        .bearer_auth(token)
        .header("X-Real-IP", "203.0.113.77")
        .json(&batch)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let reply: Value = resp.json().await.unwrap();
    assert_eq!(reply["accepted"].as_array().unwrap().len(), 1, "{reply}");
    let rejected = reply["rejected"].as_array().unwrap();
    assert_eq!(rejected.len(), 2, "{reply}");
    for r in rejected {
        let reason = r["reason"].as_str().unwrap();
        assert!(reason.starts_with("probe_address"), "{reason}");
        assert!(
            !reason.contains("203"),
            "the reason names no address: {reason}"
        );
    }
    assert_eq!(reply["your_address"], "203.0.113.77");
}
