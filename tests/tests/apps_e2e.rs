//! App and tool tests (#23) end to end: the real `witness` binary with `--apps-only
//! --apps-list FILE`, an endpoint list pointing at servers on 127.0.0.0/8 that the world's
//! censor treats as it treats websites (SNI reset, interception, a lying resolver), and a Tor
//! directory port served here. Every app gets the verdict its endpoints earn, and the list's
//! mistakes stop the run with the line that is wrong.

use std::net::SocketAddr;
use std::process::{Command, Output};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use witness_core::model::{AppKind, EndpointProbe, Measurement, Method, Status};
use witness_tests::{witness_bin, Behaviour, DnsBehaviour, Site, SiteDns, World, CENSORED_SOURCE};

fn port_of(url: &str) -> u16 {
    witness_core::targets::Target::from_url(url, "test")
        .unwrap()
        .port()
}

/// [`run`] that must succeed: its records, and how long it took.
fn run_ok(world: &World, list: &std::path::Path) -> (Vec<Measurement>, std::time::Duration) {
    let started = std::time::Instant::now();
    let out = run(world, list, &[]);
    let elapsed = started.elapsed();
    assert!(
        out.status.success(),
        "{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let records = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    (records, elapsed)
}

fn run(world: &World, list: &std::path::Path, extra: &[&str]) -> Output {
    let anchor = format!(
        "{}:{}",
        world.site_ip("web.app.test"),
        port_of(&world.url("web.app.test"))
    );
    Command::new(witness_bin())
        .args(["run", "--yes", "--no-progress", "--json", "--apps-only"])
        .arg("--apps-list")
        .arg(list)
        .args(["--resolver", &world.probe_resolver().to_string()])
        .args([
            "--control-resolver",
            &format!("udp:{}", world.control_resolver()),
        ])
        .arg("--extra-ca")
        .arg(world.ca_file())
        .args(["--lab-public-range", "127.0.0.0/8"])
        .args(["--source-address", &CENSORED_SOURCE.to_string()])
        .args(["--anchor", &anchor])
        .args(["--timeout", "2", "--no-path"])
        .args(extra)
        .env("HOME", world.dir())
        .env_remove("WITNESS_CONFIG")
        .output()
        .expect("run witness")
}

/// A Tor directory port: answers every request with the start of a consensus.
fn dirport(rt: &tokio::runtime::Handle) -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.set_nonblocking(true).unwrap();
    let addr = l.local_addr().unwrap();
    rt.spawn(async move {
        let l = tokio::net::TcpListener::from_std(l).unwrap();
        loop {
            let Ok((mut s, _)) = l.accept().await else { return };
            tokio::spawn(async move {
                let mut buf = [0u8; 2048];
                let _ = tokio::time::timeout(std::time::Duration::from_secs(2), s.read(&mut buf)).await;
                let _ = s
                    .write_all(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nnetwork-status-version 3 microdesc\nvote-status consensus\n")
                    .await;
            });
        }
    });
    addr
}

#[test]
fn apps_get_verdicts_endpoint_by_endpoint() {
    let world = World::builder()
        .site(Site::new("web.app.test").https_only())
        .site(
            Site::new("sni.app.test")
                .https_only()
                .censored(Behaviour::ResetAfterClientHello),
        )
        .site(
            Site::new("mitm.app.test")
                .https_only()
                .censored(Behaviour::Mitm),
        )
        .site(
            Site::new("nx.app.test")
                .https_only()
                .dns(SiteDns::Exactly(DnsBehaviour::Nxdomain)),
        )
        .start()
        .expect("start world");
    let port = |n: &str| port_of(&world.url(n));
    let ip = |n: &str| world.site_ip(n);
    // A port nothing listens on: the connect is refused.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let dir = dirport(&world.handle());
    let list = format!(
        "# test list\ndate 2026-12-08\n\
         app chat messaging test\n\
         endpoint chat https web.app.test:{web}\n\
         endpoint chat tcp {webip}:{web}\n\
         app partial messaging test\n\
         endpoint partial tcp {webip}:{web}\n\
         endpoint partial tcp {closed}\n\
         app sni messaging test\n\
         endpoint sni https sni.app.test:{sni}\n\
         app mitm messaging test\n\
         endpoint mitm https mitm.app.test:{mitm}\n\
         app dns messaging test\n\
         endpoint dns tcp nx.app.test:{nx}\n\
         app tor tor test\n\
         endpoint tor dirport {dir}\n\
         endpoint tor tls {webip}:{web} ca=none\n\
         endpoint tor https broker.app.test:{web} front=web.app.test path=/debug\n",
        web = port("web.app.test"),
        webip = ip("web.app.test"),
        sni = port("sni.app.test"),
        mitm = port("mitm.app.test"),
        nx = port("nx.app.test"),
    );
    let path = world.dir().join("apps.txt");
    std::fs::write(&path, list).unwrap();
    let (records, elapsed) = run_ok(&world, &path);
    let names: Vec<&str> = records.iter().map(|m| m.domain.as_str()).collect();
    assert_eq!(
        names,
        ["chat", "partial", "sni", "mitm", "dns", "tor"],
        "list order"
    );
    let want: &[(&str, Status, Option<Method>, &str)] = &[
        ("chat", Status::Accessible, None, "works: 2 of 2"),
        (
            "partial",
            Status::Blocked,
            Some(Method::Tcp),
            "partially blocked: 1 of 2",
        ),
        ("sni", Status::Blocked, Some(Method::Tls), "is blocked"),
        ("mitm", Status::Blocked, Some(Method::Mitm), "is blocked"),
        ("dns", Status::Blocked, Some(Method::Dns), "is blocked"),
        ("tor", Status::Accessible, None, "works"),
    ];
    for (m, (name, status, method, reason)) in records.iter().zip(want) {
        assert_eq!(m.url, format!("app:{name}"));
        assert_eq!(
            (m.verdict.status, m.verdict.method),
            (*status, *method),
            "{name}: {:?}",
            m.verdict
        );
        assert!(
            m.verdict.reason.contains(reason),
            "{name}: {}",
            m.verdict.reason
        );
        let app = m.app.as_ref().expect("app part");
        assert!(app.list.ends_with("apps.txt@2026-12-08"), "{}", app.list);
        for e in &app.endpoints {
            assert_eq!(
                e.method.is_some(),
                e.status == Status::Blocked,
                "{name}: {e:?}"
            );
        }
    }
    let partial = records[1].app.as_ref().unwrap();
    assert_eq!(
        partial
            .endpoints
            .iter()
            .map(|e| e.status)
            .collect::<Vec<_>>(),
        [Status::Accessible, Status::Blocked]
    );
    let tor = records[5].app.as_ref().unwrap();
    assert_eq!(tor.kind, AppKind::Tor);
    assert_eq!(tor.endpoints[0].probe, EndpointProbe::Dirport);
    assert_eq!(tor.endpoints[0].http_status, Some(200));
    // The fronted broker: connected to (and verified for) the front; its status is the
    // origin's answer to a Host it does not serve, which still proves the path.
    let broker = &tor.endpoints[2];
    assert_eq!(broker.front.as_deref(), Some("web.app.test"));
    assert_eq!(broker.status, Status::Accessible, "{broker:?}");
    assert!(records[5]
        .tls
        .iter()
        .any(|t| t.server_name == "web.app.test" && t.verification_failure.is_none()));
    assert_eq!(records[5].category_code.as_deref(), Some("ANON"));
    assert_eq!(records[0].category_code.as_deref(), Some("COMT"));
    // The DNS app's network answer and the encrypted resolver's are both recorded.
    assert!(records[4].dns.iter().any(|d| d.failure.is_some()));
    eprintln!("apps run took {elapsed:?}");
}

#[test]
fn a_bad_apps_list_stops_the_run_with_its_line() {
    let world = World::builder()
        .site(Site::new("web.app.test").https_only())
        .start()
        .expect("start world");
    let path = world.dir().join("bad.txt");
    std::fs::write(
        &path,
        "date 2026-12-08\napp x messaging s\nendpoint x ping a.test:1\n",
    )
    .unwrap();
    let out = run(&world, &path, &[]);
    assert_eq!(out.status.code(), Some(2), "usage error");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.txt:3: probe \"ping\" is unknown"),
        "{err}"
    );
    assert!(err.contains("nothing was measured"), "{err}");
    assert!(out.stdout.is_empty());
}

/// The real `witness-reflector` on `ip`, every protocol on a free port: its public key and
/// its listeners, read from the lines it prints at start.
struct Reflector {
    child: std::process::Child,
    key: String,
    ports: std::collections::HashMap<String, u16>,
}

impl Drop for Reflector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_reflector(dir: &std::path::Path, ip: &str) -> Reflector {
    use std::io::BufRead;
    let cfg = dir.join(format!("reflector-{ip}.toml"));
    std::fs::write(
        &cfg,
        format!(
            "listen = \"{ip}\"\nwireguard_port = 0\nopenvpn_udp_port = 0\nopenvpn_tcp_port = 0\n\
             quic_port = 0\nshadowsocks_port = 0\nstun_port = 0\n"
        ),
    )
    .unwrap();
    let mut child = Command::new(witness_tests::reflector_bin())
        .arg("--config")
        .arg(&cfg)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start witness-reflector");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut r = Reflector {
        child,
        key: String::new(),
        ports: Default::default(),
    };
    while r.ports.len() < 6 {
        let line = rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("the reflector prints its key and listeners");
        let w: Vec<&str> = line.split_whitespace().collect();
        match w.as_slice() {
            ["wireguard-public-key", k] => r.key = k.to_string(),
            ["listening", p, a] => {
                r.ports
                    .insert(p.to_string(), a.parse::<SocketAddr>().unwrap().port());
            }
            _ => panic!("unexpected line {line:?}"),
        }
    }
    r
}

/// A censor for UDP: relays datagrams to `upstream` and back, except WireGuard handshake
/// initiations (type 1, 148 bytes), which it drops, as DPI that blocks WireGuard by content.
fn wireguard_dpi(rt: &tokio::runtime::Handle, at: &str, upstream: SocketAddr) -> SocketAddr {
    let s = std::net::UdpSocket::bind(format!("{at}:0")).unwrap();
    s.set_nonblocking(true).unwrap();
    let addr = s.local_addr().unwrap();
    rt.spawn(async move {
        let s = std::sync::Arc::new(tokio::net::UdpSocket::from_std(s).unwrap());
        let mut buf = vec![0u8; 2048];
        loop {
            let Ok((n, client)) = s.recv_from(&mut buf).await else {
                return;
            };
            if n == 148 && buf[..4] == [1, 0, 0, 0] {
                continue;
            }
            let msg = buf[..n].to_vec();
            let s = s.clone();
            tokio::spawn(async move {
                let up = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
                up.connect(upstream).await.unwrap();
                up.send(&msg).await.unwrap();
                let mut b = vec![0u8; 2048];
                if let Ok(Ok(n)) =
                    tokio::time::timeout(std::time::Duration::from_secs(3), up.recv(&mut b)).await
                {
                    let _ = s.send_to(&b[..n], client).await;
                }
            });
        }
    });
    addr
}

#[test]
fn reflector_protocols_blocked_by_content_by_port_or_down() {
    let world = World::builder()
        .site(Site::new("web.app.test").https_only())
        .start()
        .expect("start world");
    let r = start_reflector(world.dir(), "127.0.0.5");
    let p = |n: &str| r.ports[n];
    let dpi = wireguard_dpi(
        &world.handle(),
        "127.0.0.7",
        format!("127.0.0.5:{}", p("wireguard")).parse().unwrap(),
    );
    // A UDP port nothing listens on, on the reflector's address and on a dead one.
    let free_udp = |ip: &str| {
        std::net::UdpSocket::bind(format!("{ip}:0"))
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let list = format!(
        "date 2026-12-08\n\
         app vpn reflector test\n\
         endpoint vpn wireguard 127.0.0.5:{wg} key={key}\n\
         endpoint vpn openvpn-udp 127.0.0.5:{ou}\n\
         endpoint vpn openvpn-tcp 127.0.0.5:{ot}\n\
         endpoint vpn quic 127.0.0.5:{q}\n\
         endpoint vpn shadowsocks 127.0.0.5:{ss}\n\
         endpoint vpn stun 127.0.0.5:{st}\n\
         app dpi reflector test\n\
         endpoint dpi wireguard {dpi} key={key}\n\
         endpoint dpi stun 127.0.0.5:{st}\n\
         app port reflector test\n\
         endpoint port quic 127.0.0.5:{closed}\n\
         endpoint port shadowsocks 127.0.0.5:{ss}\n\
         app dead reflector test\n\
         endpoint dead quic 127.0.0.6:{dead}\n\
         app tor tor test\n\
         endpoint tor stun 127.0.0.5:{st}\n\
         endpoint tor stun 127.0.0.6:{dead}\n",
        wg = p("wireguard"),
        key = r.key,
        ou = p("openvpn-udp"),
        ot = p("openvpn-tcp"),
        q = p("quic"),
        ss = p("shadowsocks"),
        st = p("stun"),
        closed = free_udp("127.0.0.5"),
        dead = free_udp("127.0.0.6"),
    );
    let path = world.dir().join("reflector-apps.txt");
    std::fs::write(&path, list).unwrap();
    let (records, elapsed) = run_ok(&world, &path);
    let want: &[(&str, Status, Option<Method>)] = &[
        ("vpn", Status::Accessible, None),
        ("dpi", Status::Blocked, Some(Method::Protocol)),
        ("port", Status::Blocked, Some(Method::Udp)),
        ("dead", Status::Down, None),
        ("tor", Status::Blocked, Some(Method::Udp)),
    ];
    assert_eq!(records.len(), want.len());
    for (m, (name, status, method)) in records.iter().zip(want) {
        assert_eq!(m.domain, *name);
        assert_eq!(
            (m.verdict.status, m.verdict.method),
            (*status, *method),
            "{name}: {:?}",
            m.verdict
        );
    }
    let vpn = records[0].app.as_ref().unwrap();
    assert!(
        vpn.endpoints
            .iter()
            .all(|e| e.status == Status::Accessible && e.twin.is_none()),
        "{vpn:?}"
    );
    let dpi = &records[1].app.as_ref().unwrap().endpoints[0];
    assert_eq!(dpi.sent_bytes, Some(148));
    let twin = dpi.twin.as_ref().expect("the twin went out");
    assert!(twin.answered && twin.sent_bytes == 148, "{twin:?}");
    assert!(
        records[1].verdict.reason.contains("partially blocked"),
        "{}",
        records[1].verdict.reason
    );
    // A third party's STUN server owes a random payload nothing: no twin for Tor's.
    let tor = records[4].app.as_ref().unwrap();
    assert_eq!(tor.endpoints[0].status, Status::Accessible);
    assert!(tor.endpoints[1].twin.is_none());
    eprintln!("reflector run took {elapsed:?}");
}

/// Two probes on one network upload their app records to the real collector: the blocked app
/// gets its series (`domain="app:NAME"`, by method, category COMT), one new-block event, and its
/// history through the read API, like a website.
#[test]
fn the_collector_aggregates_app_records_like_sites() {
    use witness_tests::collector::get;
    use witness_tests::origin::Policy;
    use witness_tests::volunteer::{anchor_of, lab_control_section, ok, Probe};
    let second: std::net::IpAddr = "127.0.0.4".parse().unwrap();
    let world = World::builder()
        .policy(Policy {
            censored_peers: vec![CENSORED_SOURCE, second],
        })
        .site(Site::new("web.app.test").https_only())
        .site(
            Site::new("sni.app.test")
                .https_only()
                .censored(Behaviour::ResetAfterClientHello),
        )
        .start()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let collector =
        witness_tests::CollectorProcess::start(dir.path(), &lab_control_section(&world, false))
            .unwrap();
    let list = format!(
        "date 2026-12-08\napp sni messaging test\nendpoint sni https sni.app.test:{}\n\
         app chat messaging test\nendpoint chat https web.app.test:{}\n",
        port_of(&world.url("sni.app.test")),
        port_of(&world.url("web.app.test")),
    );
    let path = dir.path().join("apps.txt");
    std::fs::write(&path, list).unwrap();
    let anchor = anchor_of(&world, "web.app.test");
    for source in [CENSORED_SOURCE, second] {
        let p = Probe::new(&world, source, 64500, &collector.url, &anchor);
        ok(&p.witness(&["register"]));
        let out = ok(&p.witness(&[
            "run",
            "--apps-only",
            "--apps-list",
            path.to_str().unwrap(),
            "--upload",
            "--json",
            "--no-progress",
        ]));
        assert_eq!(out.lines().count(), 2, "{out}");
        assert_eq!(p.spooled(), 0, "the collector accepted the app records");
    }
    let (_, metrics) = get(&format!("{}metrics", collector.url)).unwrap();
    let line = metrics
        .lines()
        .find(|l| l.starts_with("witness_site_blocked_ratio{") && l.contains("domain=\"app:sni\""))
        .unwrap_or_else(|| panic!("no series for app:sni:\n{metrics}"));
    assert!(line.contains("category=\"COMT\""), "{line}");
    assert!(line.contains("method=\"tls\""), "{line}");
    assert!(line.ends_with(" 1"), "{line}");
    let (_, body) = get(&format!("{}api/v1/events", collector.url)).unwrap();
    let events: serde_json::Value = serde_json::from_str(&body).unwrap();
    let blocks: Vec<_> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "new_block")
        .collect();
    assert_eq!(blocks.len(), 1, "{blocks:#?}");
    assert_eq!(blocks[0]["domain"], "app:sni");
    assert_eq!(blocks[0]["method"], "tls");
    let (status, history) = get(&format!("{}api/v1/sites/app:sni/history", collector.url)).unwrap();
    assert_eq!(status, 200, "{history}");
    assert!(history.contains("app:sni"), "{history}");
}
