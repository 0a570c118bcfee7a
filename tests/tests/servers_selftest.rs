//! Proves the lab servers behave as specified, with plain tokio/rustls/hickory-proto clients:
//! a client bound to 127.0.0.2 sees the censorship, one bound to 127.0.0.3 does not.

use std::io::{self, ErrorKind, Read};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RecordType;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;
use tokio_rustls::TlsConnector;
use witness_tests::client::{
    connect_from, danger_accept_any_connector, dns_query, http_get, tls_connector,
};
use witness_tests::world::{allocate_address, DNS_OCTET, SITE_OCTET};
use witness_tests::{
    Behaviour, DnsBehaviour, DnsServer, LabPki, Origin, OriginConfig, Page, Rule, Site, SiteConfig,
    SiteDns, Transport, World, CENSORED_SOURCE, CONTROL_SOURCE,
};
use x509_parser::prelude::{FromDer, X509Certificate};

/// Bound on any single client operation in these tests.
const LIMIT: Duration = Duration::from_secs(15);
const MIB: usize = 1024 * 1024;

async fn tls_origin(sites: Vec<SiteConfig>) -> (LabPki, Origin) {
    let pki = LabPki::new().expect("lab PKI");
    let transport = Transport::tls(&pki, &sites).expect("TLS configs");
    let addr = SocketAddr::new(allocate_address(SITE_OCTET), 0);
    let origin = Origin::start(OriginConfig::new(addr, transport, sites))
        .await
        .expect("origin starts");
    (pki, origin)
}

async fn http_origin(sites: Vec<SiteConfig>) -> Origin {
    let addr = SocketAddr::new(allocate_address(SITE_OCTET), 0);
    Origin::start(OriginConfig::new(addr, Transport::Cleartext, sites))
        .await
        .expect("origin starts")
}

fn server_name(name: &str) -> ServerName<'static> {
    ServerName::try_from(name.to_owned()).expect("valid DNS name")
}

/// A whole HTTPS exchange from `source`; the response as text.
async fn https_get(
    source: IpAddr,
    addr: SocketAddr,
    sni: &str,
    connector: &TlsConnector,
) -> io::Result<String> {
    let exchange = async {
        let tcp = connect_from(source, addr).await?;
        let mut tls = connector.connect(server_name(sni), tcp).await?;
        let response = http_get(&mut tls, sni, "/", 4 * MIB).await?;
        Ok(String::from_utf8_lossy(&response).into_owned())
    };
    timeout(LIMIT, exchange)
        .await
        .map_err(|_| io::Error::from(ErrorKind::TimedOut))?
}

/// A whole cleartext exchange from `source`; the raw response.
async fn plain_get(
    source: IpAddr,
    addr: SocketAddr,
    host: &str,
    path: &str,
) -> io::Result<Vec<u8>> {
    let exchange = async {
        let mut tcp = connect_from(source, addr).await?;
        http_get(&mut tcp, host, path, 4 * MIB).await
    };
    timeout(LIMIT, exchange)
        .await
        .map_err(|_| io::Error::from(ErrorKind::TimedOut))?
}

fn text(response: &[u8]) -> String {
    String::from_utf8_lossy(response).into_owned()
}

fn common_name(name: &x509_parser::x509::X509Name<'_>) -> String {
    name.iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_after_client_hello_is_econnreset_for_censored_peers_only() {
    let site =
        SiteConfig::new("news.test").with_rule(Rule::censored(Behaviour::ResetAfterClientHello));
    let (pki, origin) = tls_origin(vec![site]).await;
    let connector = tls_connector(pki.root_store());

    let censored = https_get(CENSORED_SOURCE, origin.addr(), "news.test", &connector).await;
    assert_eq!(
        censored.expect_err("censored peer is reset").kind(),
        ErrorKind::ConnectionReset
    );

    let control = https_get(CONTROL_SOURCE, origin.addr(), "news.test", &connector).await;
    let control = control.expect("control peer gets the page");
    assert!(control.starts_with("HTTP/1.1 200 OK"), "{control}");
    assert!(
        control.contains("<title>Welcome to news.test</title>"),
        "{control}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_after_client_hello_times_out() {
    let site =
        SiteConfig::new("news.test").with_rule(Rule::censored(Behaviour::DropAfterClientHello));
    let (pki, origin) = tls_origin(vec![site]).await;
    let connector = tls_connector(pki.root_store());

    let tcp = connect_from(CENSORED_SOURCE, origin.addr())
        .await
        .expect("TCP connects");
    let handshake = timeout(
        Duration::from_secs(2),
        connector.connect(server_name("news.test"), tcp),
    )
    .await;
    assert!(
        handshake.is_err(),
        "the handshake must hang, got {handshake:?}"
    );

    let control = https_get(CONTROL_SOURCE, origin.addr(), "news.test", &connector).await;
    assert!(control.expect("control works").contains("200 OK"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_by_sni_spares_other_names_on_the_same_server() {
    let blocked = SiteConfig::new("addons.mozilla.test")
        .with_rule(Rule::censored(Behaviour::ResetAfterClientHello));
    let (pki, origin) = tls_origin(vec![SiteConfig::new("mozilla.test"), blocked]).await;
    let connector = tls_connector(pki.root_store());

    let reset = https_get(
        CENSORED_SOURCE,
        origin.addr(),
        "addons.mozilla.test",
        &connector,
    )
    .await;
    assert_eq!(
        reset.expect_err("blocked SNI").kind(),
        ErrorKind::ConnectionReset
    );
    let fine = https_get(CENSORED_SOURCE, origin.addr(), "mozilla.test", &connector).await;
    assert!(fine
        .expect("other SNI")
        .contains("<title>Welcome to mozilla.test</title>"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_after_request_completes_tls_then_resets() {
    let site = SiteConfig::new("news.test").with_rule(Rule::censored(Behaviour::ResetAfterRequest));
    let (pki, origin) = tls_origin(vec![site]).await;
    let connector = tls_connector(pki.root_store());

    let tcp = connect_from(CENSORED_SOURCE, origin.addr()).await.unwrap();
    let mut tls = timeout(LIMIT, connector.connect(server_name("news.test"), tcp))
        .await
        .unwrap()
        .expect("the handshake completes");
    let error = timeout(LIMIT, http_get(&mut tls, "news.test", "/", MIB))
        .await
        .unwrap()
        .expect_err("reset after the request");
    assert_eq!(error.kind(), ErrorKind::ConnectionReset);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mitm_presents_the_forged_state_chain() {
    let site = SiteConfig::new("social.test").with_rule(Rule::censored(Behaviour::Mitm));
    let (pki, origin) = tls_origin(vec![site]).await;

    // With the lab's trust only, the forged chain is rejected.
    let trusted = tls_connector(pki.root_store());
    let rejected = https_get(CENSORED_SOURCE, origin.addr(), "social.test", &trusted).await;
    let rejected = rejected.expect_err("the state CA is not trusted");
    assert!(rejected.to_string().contains("UnknownIssuer"), "{rejected}");

    // Looking at it anyway: leaf copies the name, issued by the imitated state intermediate.
    let tcp = connect_from(CENSORED_SOURCE, origin.addr()).await.unwrap();
    let connector = danger_accept_any_connector();
    let mut tls = timeout(LIMIT, connector.connect(server_name("social.test"), tcp))
        .await
        .unwrap()
        .expect("handshake with any certificate");
    let chain = tls
        .get_ref()
        .1
        .peer_certificates()
        .expect("a chain")
        .to_vec();
    assert_eq!(chain.len(), 2, "leaf and intermediate");
    let (_, leaf) = X509Certificate::from_der(&chain[0]).unwrap();
    let (_, intermediate) = X509Certificate::from_der(&chain[1]).unwrap();
    assert_eq!(common_name(leaf.subject()), "social.test");
    let san = leaf.subject_alternative_name().unwrap().expect("a SAN");
    assert!(format!("{:?}", san.value).contains("social.test"));
    assert_eq!(common_name(leaf.issuer()), "Security Certificate");
    assert_eq!(common_name(intermediate.subject()), "Security Certificate");
    assert_eq!(common_name(intermediate.issuer()), "Qaznet Trust Network");
    let country = intermediate.issuer().iter_country().next().unwrap();
    assert_eq!(country.as_str().unwrap(), "KZ");
    // The page behind it is the real one.
    let page = http_get(&mut tls, "social.test", "/", MIB).await.unwrap();
    assert!(text(&page).contains("<title>Welcome to social.test</title>"));

    // The control sees the genuine certificate.
    let control = https_get(CONTROL_SOURCE, origin.addr(), "social.test", &trusted).await;
    assert!(control.expect("genuine chain").contains("200 OK"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_certificate_and_garbage_fail_the_handshake() {
    let sites = vec![
        SiteConfig::new("old.test").with_rule(Rule::everyone(Behaviour::ExpiredCert)),
        SiteConfig::new("noise.test").with_rule(Rule::everyone(Behaviour::GarbageInsteadOfTls)),
    ];
    let (pki, origin) = tls_origin(sites).await;
    let connector = tls_connector(pki.root_store());

    let expired = https_get(CONTROL_SOURCE, origin.addr(), "old.test", &connector).await;
    let expired = expired.expect_err("expired certificate");
    assert!(expired.to_string().contains("expired"), "{expired}");

    let garbage = https_get(CONTROL_SOURCE, origin.addr(), "noise.test", &connector).await;
    let garbage = garbage.expect_err("garbage is not TLS");
    assert_eq!(garbage.kind(), ErrorKind::InvalidData, "{garbage}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleartext_blockpage_redirects_and_forbidden() {
    let sites = vec![
        SiteConfig::new("blocked.test").with_rule(Rule::censored(Behaviour::Blockpage {
            status: 403,
            body: "<title>Доступ ограничен</title>".into(),
        })),
        SiteConfig::new("moved.test").with_rule(Rule::everyone(Behaviour::Redirect {
            status: 301,
            location: "https://moved.test/".into(),
        })),
        SiteConfig::new("loop.test").with_rule(Rule::everyone(Behaviour::RedirectLoop)),
        SiteConfig::new("geo.test").with_rule(Rule::censored(Behaviour::Forbidden)),
        SiteConfig::new("reset.test").with_rule(Rule::censored(Behaviour::ResetAfterRequest)),
    ];
    let origin = http_origin(sites).await;
    let addr = origin.addr();

    let blocked = text(
        &plain_get(CENSORED_SOURCE, addr, "blocked.test", "/")
            .await
            .unwrap(),
    );
    assert!(blocked.starts_with("HTTP/1.1 403 Forbidden"), "{blocked}");
    assert!(blocked.contains("Доступ ограничен"));
    let real = text(
        &plain_get(CONTROL_SOURCE, addr, "blocked.test", "/")
            .await
            .unwrap(),
    );
    assert!(
        real.contains("<title>Welcome to blocked.test</title>"),
        "{real}"
    );

    let moved = text(
        &plain_get(CONTROL_SOURCE, addr, "moved.test", "/")
            .await
            .unwrap(),
    );
    assert!(moved.starts_with("HTTP/1.1 301"), "{moved}");
    assert!(moved.contains("Location: https://moved.test/\r\n"));

    let first = text(
        &plain_get(CONTROL_SOURCE, addr, "loop.test", "/")
            .await
            .unwrap(),
    );
    assert!(first.contains("Location: /loop\r\n"), "{first}");
    let second = text(
        &plain_get(CONTROL_SOURCE, addr, "loop.test", "/loop")
            .await
            .unwrap(),
    );
    assert!(second.contains("Location: /\r\n"), "{second}");

    let geo = text(
        &plain_get(CENSORED_SOURCE, addr, "geo.test", "/")
            .await
            .unwrap(),
    );
    assert!(geo.starts_with("HTTP/1.1 403 Forbidden") && geo.contains("<title>403 Forbidden"));

    let reset = plain_get(CENSORED_SOURCE, addr, "reset.test", "/").await;
    assert_eq!(
        reset.expect_err("Host-based reset").kind(),
        ErrorKind::ConnectionReset
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_responses_are_what_they_claim() {
    let sites = vec![
        SiteConfig::new("headers.test").with_rule(Rule::everyone(Behaviour::HugeHeaders)),
        SiteConfig::new("bomb.test").with_rule(Rule::everyone(Behaviour::GzipBomb)),
        SiteConfig::new("endless.test").with_rule(Rule::everyone(Behaviour::EndlessBody)),
    ];
    let origin = http_origin(sites).await;
    let addr = origin.addr();

    let huge = plain_get(CONTROL_SOURCE, addr, "headers.test", "/")
        .await
        .unwrap();
    let head_len = huge
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a full head");
    assert!(head_len >= MIB, "only {head_len} bytes of headers");

    let bomb = plain_get(CONTROL_SOURCE, addr, "bomb.test", "/")
        .await
        .unwrap();
    let body_at = bomb.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert!(text(&bomb[..body_at]).contains("Content-Encoding: gzip\r\n"));
    let compressed = &bomb[body_at..];
    assert!(
        compressed.len() < MIB,
        "{} bytes on the wire",
        compressed.len()
    );
    let mut inflated = Vec::new();
    flate2::read::GzDecoder::new(compressed)
        .take(64 * MIB as u64)
        .read_to_end(&mut inflated)
        .unwrap();
    assert_eq!(inflated.len(), 64 * MIB, "inflates far beyond its size");

    let endless = plain_get(CONTROL_SOURCE, addr, "endless.test", "/")
        .await
        .unwrap();
    assert!(
        endless.len() >= 4 * MIB,
        "still streaming at the client's limit"
    );
    assert!(text(&endless[..200]).contains("Transfer-Encoding: chunked"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_origin_never_exceeds_its_rate() {
    const RATE: u64 = 40_000;
    const BODY: usize = 60_000;
    let site = SiteConfig::new("slow.test").with_rule(Rule::censored(Behaviour::Slow {
        bytes_per_sec: RATE,
        body_len: BODY,
    }));
    let (pki, origin) = tls_origin(vec![site]).await;
    let connector = tls_connector(pki.root_store());

    let started = Instant::now();
    let slow = https_get(CENSORED_SOURCE, origin.addr(), "slow.test", &connector)
        .await
        .unwrap();
    let elapsed = started.elapsed();
    assert!(slow.len() >= BODY, "the whole padded body arrives");
    // Upper bound on the rate only (a lower bound on time): 1.5 s at most ~40 kB/s for 60 kB.
    let rate = slow.len() as f64 / elapsed.as_secs_f64();
    assert!(
        rate < 2.0 * RATE as f64,
        "{rate:.0} B/s is far above {RATE} B/s"
    );

    let fast = https_get(CONTROL_SOURCE, origin.addr(), "slow.test", &connector)
        .await
        .unwrap();
    assert!(fast.contains("<title>Welcome to slow.test</title>"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_serves_fifty_connections_at_once_while_others_hang() {
    let sites = vec![
        SiteConfig::new("busy.test"),
        SiteConfig::new("hang.test").with_rule(Rule::everyone(Behaviour::DropAfterClientHello)),
    ];
    let (pki, origin) = tls_origin(sites).await;
    let connector = tls_connector(pki.root_store());
    let addr = origin.addr();

    // Ten connections the server holds silently...
    let mut hanging = Vec::new();
    for _ in 0..10 {
        let connector = connector.clone();
        hanging.push(tokio::spawn(async move {
            let tcp = connect_from(CENSORED_SOURCE, addr).await?;
            let handshake = timeout(
                Duration::from_secs(3),
                connector.connect(server_name("hang.test"), tcp),
            )
            .await;
            io::Result::Ok(handshake.is_err())
        }));
    }
    // ...do not stop fifty concurrent fetches.
    let fetches: Vec<_> = (0..50)
        .map(|_| {
            let connector = connector.clone();
            tokio::spawn(
                async move { https_get(CONTROL_SOURCE, addr, "busy.test", &connector).await },
            )
        })
        .collect();
    for fetch in fetches {
        let page = fetch.await.unwrap().expect("every fetch succeeds");
        assert!(page.contains("<title>Welcome to busy.test</title>"));
    }
    for hang in hanging {
        assert!(hang.await.unwrap().unwrap(), "held connections stay silent");
    }
    assert!(origin.connections() >= 60);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_survive_hostile_input() {
    let (pki, tls) = tls_origin(vec![SiteConfig::new("sturdy.test")]).await;
    let plain = http_origin(vec![SiteConfig::new("sturdy.test")]).await;
    let dns = DnsServer::start(allocate_address(DNS_OCTET), Vec::new())
        .await
        .unwrap();

    let junk: Vec<Vec<u8>> = vec![
        vec![],
        b"\x16\x03\x01\xff\xff".to_vec(),
        vec![0xff; 70_000],
        b"GET / HTTP/1.1\r\nHost: \xff\xfe\r\n\r\n".to_vec(),
        b"\x00\x05hello".to_vec(),
    ];
    for addr in [tls.addr(), plain.addr(), dns.addr()] {
        for bytes in &junk {
            let mut tcp = connect_from(CONTROL_SOURCE, addr).await.unwrap();
            let _ = tcp.write_all(bytes).await;
            let _ = tcp.shutdown().await;
            let mut sink = Vec::new();
            let _ = timeout(Duration::from_secs(5), tcp.read_to_end(&mut sink)).await;
        }
    }
    let udp = tokio::net::UdpSocket::bind((CONTROL_SOURCE, 0))
        .await
        .unwrap();
    for bytes in &junk {
        let _ = udp
            .send_to(&bytes[..bytes.len().min(60_000)], dns.addr())
            .await;
    }

    let connector = tls_connector(pki.root_store());
    assert!(
        https_get(CONTROL_SOURCE, tls.addr(), "sturdy.test", &connector)
            .await
            .unwrap()
            .contains("200 OK")
    );
    assert!(text(
        &plain_get(CONTROL_SOURCE, plain.addr(), "sturdy.test", "/")
            .await
            .unwrap()
    )
    .contains("200 OK"));
    let answers = dns_query(
        CONTROL_SOURCE,
        dns.addr(),
        "x.test",
        RecordType::A,
        1,
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert_eq!(answers.len(), 1, "DNS still answers");
}

fn decode(bytes: &[u8]) -> Message {
    Message::from_vec(bytes).expect("a DNS message")
}

fn addresses(message: &Message) -> Vec<IpAddr> {
    message
        .answers
        .iter()
        .filter_map(|r| r.data.ip_addr())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_behaviours() {
    let real: IpAddr = "127.1.200.1".parse().unwrap();
    let forged: IpAddr = "127.2.200.1".parse().unwrap();
    let v6: IpAddr = "::1".parse().unwrap();
    let zone = vec![
        ("ok.test".to_owned(), DnsBehaviour::Answer(vec![real, v6])),
        ("v4only.test".to_owned(), DnsBehaviour::Answer(vec![real])),
        ("gone.test".to_owned(), DnsBehaviour::Nxdomain),
        ("empty.test".to_owned(), DnsBehaviour::NoAnswer),
        ("broken.test".to_owned(), DnsBehaviour::Servfail),
        ("dropped.test".to_owned(), DnsBehaviour::Drop),
        ("noise.test".to_owned(), DnsBehaviour::Garbage),
        (
            "injected.test".to_owned(),
            DnsBehaviour::Inject {
                first: vec![forged],
                second: vec![real],
                gap: Duration::from_millis(200),
            },
        ),
    ];
    let dns = DnsServer::start(allocate_address(DNS_OCTET), zone)
        .await
        .unwrap();
    let server = dns.addr();
    let wait = Duration::from_secs(5);
    let ask = |name: &'static str, qtype| dns_query(CENSORED_SOURCE, server, name, qtype, 1, wait);

    let a = ask("OK.test.", RecordType::A).await.unwrap();
    assert_eq!(a.len(), 1);
    assert_eq!(decode(&a[0]).metadata.response_code, ResponseCode::NoError);
    assert_eq!(addresses(&decode(&a[0])), vec![real]);
    let aaaa = ask("ok.test", RecordType::AAAA).await.unwrap();
    assert_eq!(addresses(&decode(&aaaa[0])), vec![v6]);
    let no_v6 = decode(&ask("v4only.test", RecordType::AAAA).await.unwrap()[0]);
    assert_eq!(
        (no_v6.metadata.response_code, no_v6.answers.len()),
        (ResponseCode::NoError, 0)
    );

    for (name, code) in [
        ("gone.test", ResponseCode::NXDomain),
        ("unknown.test", ResponseCode::NXDomain),
        ("broken.test", ResponseCode::ServFail),
        ("empty.test", ResponseCode::NoError),
    ] {
        let response = decode(&ask(name, RecordType::A).await.unwrap()[0]);
        assert_eq!(response.metadata.response_code, code, "{name}");
        assert!(response.answers.is_empty(), "{name}");
    }

    let silence = Duration::from_millis(700);
    let dropped = dns_query(
        CENSORED_SOURCE,
        server,
        "dropped.test",
        RecordType::A,
        1,
        silence,
    );
    assert!(dropped.await.unwrap().is_empty(), "never answered");
    assert_eq!(dns.queries("dropped.test"), 1, "but counted");

    let noise = ask("noise.test", RecordType::A).await.unwrap();
    assert_eq!(noise.len(), 1);

    let injected = dns_query(
        CENSORED_SOURCE,
        server,
        "injected.test",
        RecordType::A,
        2,
        wait,
    );
    let injected = injected.await.unwrap();
    assert_eq!(injected.len(), 2, "an injected response, then the real one");
    assert_eq!(addresses(&decode(&injected[0])), vec![forged]);
    assert_eq!(addresses(&decode(&injected[1])), vec![real]);

    assert_eq!(dns.queries("ok.test"), 2);
    assert_eq!(dns.queries("unknown.test"), 1);
    assert_eq!(dns.total_queries(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_answers_over_tcp_on_the_same_port() {
    let real: IpAddr = "127.1.200.2".parse().unwrap();
    let zone = vec![("tcp.test".to_owned(), DnsBehaviour::Answer(vec![real]))];
    let dns = DnsServer::start(allocate_address(DNS_OCTET), zone)
        .await
        .unwrap();

    let mut query = Message::query();
    query.add_query(hickory_proto::op::Query::query(
        hickory_proto::rr::Name::from_ascii("tcp.test.").unwrap(),
        RecordType::A,
    ));
    let query = query.to_vec().unwrap();
    let mut tcp = connect_from(CONTROL_SOURCE, dns.addr()).await.unwrap();
    let mut framed = (query.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&query);
    // Two queries on one connection.
    tcp.write_all(&framed).await.unwrap();
    tcp.write_all(&framed).await.unwrap();
    for _ in 0..2 {
        let mut len = [0u8; 2];
        timeout(LIMIT, tcp.read_exact(&mut len))
            .await
            .unwrap()
            .unwrap();
        let mut response = vec![0u8; u16::from_be_bytes(len).into()];
        tcp.read_exact(&mut response).await.unwrap();
        assert_eq!(addresses(&decode(&response)), vec![real]);
    }
    assert_eq!(dns.queries("tcp.test"), 2);
}

#[test]
fn world_wires_sites_resolvers_ca_and_list() {
    let world = World::builder()
        .site(
            Site::new("news.test")
                .category("NEWS")
                .censored(Behaviour::DropAfterClientHello),
        )
        .site(
            Site::new("lie.test")
                .http_only()
                .dns(SiteDns::LieToBlockpage),
        )
        .site(Site::new("gone.test").dns(SiteDns::Exactly(DnsBehaviour::Nxdomain)))
        .site(Site::new("alias.test").hosted_with("news.test"))
        .start()
        .expect("the world starts");

    let news = world.url("news.test");
    assert!(
        news.starts_with("https://news.test:") && news.ends_with('/'),
        "{news}"
    );
    assert!(world.url("lie.test").starts_with("http://lie.test:"));
    assert!(world.https_url("lie.test").is_none());
    assert_eq!(world.site_ip("alias.test"), world.site_ip("news.test"));
    assert_ne!(world.site_ip("gone.test"), world.site_ip("news.test"));

    let pem = std::fs::read_to_string(world.ca_file()).unwrap();
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"));

    let list = std::fs::read_to_string(world.write_list("list.csv").unwrap()).unwrap();
    let mut lines = list.lines();
    assert_eq!(
        lines.next(),
        Some("url,category_code,category_description,date_added,source,notes")
    );
    let first = lines.next().unwrap();
    assert!(
        first.starts_with(&format!("{news},NEWS,News Media,")),
        "{first}"
    );
    assert_eq!(lines.count(), 3);

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let wait = Duration::from_secs(5);
        let probe = world.probe_resolver();
        let control = world.control_resolver();
        let lie = dns_query(CENSORED_SOURCE, probe, "lie.test", RecordType::A, 1, wait)
            .await
            .unwrap();
        assert_eq!(addresses(&decode(&lie[0])), vec![world.blockpage_ip()]);
        let truth = dns_query(CONTROL_SOURCE, control, "lie.test", RecordType::A, 1, wait)
            .await
            .unwrap();
        assert_eq!(
            addresses(&decode(&truth[0])),
            vec![world.site_ip("lie.test")]
        );
        let gone = dns_query(CENSORED_SOURCE, probe, "gone.test", RecordType::A, 1, wait)
            .await
            .unwrap();
        assert_eq!(
            decode(&gone[0]).metadata.response_code,
            ResponseCode::NXDomain
        );
        assert_eq!(world.probe_dns().queries("lie.test"), 1);

        // The blockpage host answers on the lied-about site's port.
        let port = world.http_origin("lie.test").unwrap().addr().port();
        let blockpage = plain_get(
            CENSORED_SOURCE,
            SocketAddr::new(world.blockpage_ip(), port),
            "lie.test",
            "/",
        );
        assert!(text(&blockpage.await.unwrap()).contains("Страница заблокирована"));

        // Censorship by source address, through the world's own runtime.
        let connector = tls_connector(world.pki().root_store());
        let addr = world.https_origin("news.test").unwrap().addr();
        let alias = https_get(CENSORED_SOURCE, addr, "alias.test", &connector).await;
        assert!(alias
            .unwrap()
            .contains("<title>Welcome to alias.test</title>"));
        let tcp = connect_from(CENSORED_SOURCE, addr).await.unwrap();
        let hung = timeout(
            Duration::from_secs(1),
            connector.connect(server_name("news.test"), tcp),
        )
        .await;
        assert!(hung.is_err());
        let control = https_get(CONTROL_SOURCE, addr, "news.test", &connector).await;
        assert!(control
            .unwrap()
            .contains("<title>Welcome to news.test</title>"));
    });
}

#[test]
fn page_html_has_a_title() {
    let page = Page::html("Hello", "World");
    assert_eq!(page.status, 200);
    assert!(text(&page.body).contains("<title>Hello</title>"));
}

/// Builds the real binaries from inside a test, as end-to-end suites do. Ignored by default
/// because it compiles the whole probe and collector: `cargo test -p witness-tests -- --ignored`.
#[test]
#[ignore = "builds the probe and the collector"]
fn real_binaries_are_built_once_and_found() {
    for bin in [witness_tests::witness_bin(), witness_tests::collector_bin()] {
        assert!(bin.is_file(), "{} exists", bin.display());
    }
    assert_eq!(witness_tests::witness_bin(), witness_tests::witness_bin());
}
