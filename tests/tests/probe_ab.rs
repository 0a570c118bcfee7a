//! The A/B test end to end: the real `witness` binary, without a control, against TLS and
//! cleartext servers on 127.0.0.0/8 that act on the name a ClientHello or request carries,
//! like a middlebox in front of an honest server.
//!
//! Each site has its own listener whose server holds the site's valid certificate and presents
//! it to any name (and to none); a per-site policy decides, from the SNI or `Host:` and how
//! many connections named it before, whether the connection is reset, held, answered with a
//! forged certificate, or served. Without a control, a difference between the site's name and
//! an innocent one on the same address must make `blocked`; a failure that does not repeat, or
//! one that hits every name, must not.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::LazyConfigAcceptor;
use witness_core::model::{AbKind, AbName, Measurement, Method, Status};
use witness_tests::dns::{DnsBehaviour, DnsServer};
use witness_tests::http::{read_request, write_response};
use witness_tests::pki::{server_config, LabPki, SniResolver};
use witness_tests::witness_bin;

/// What a server does with one connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Act {
    /// Complete the handshake with the site's valid certificate and serve a page.
    Serve,
    /// Read the ClientHello (or the request head), then close with a RST.
    Reset,
    /// Read it, then say nothing until the client leaves.
    Hold,
    /// Complete the handshake with a certificate from a CA the probe does not trust.
    Forged,
    /// Refuse the name with a TLS alert, as a server that no longer hosts it does.
    Alert,
}

/// A certificate resolver with nothing for anyone: rustls answers with an alert.
#[derive(Debug)]
struct NoCertificate;

impl rustls::server::ResolvesServerCert for NoCertificate {
    fn resolve(
        &self,
        _: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        None
    }
}

/// Decides from the name sent (`None`: no SNI) and how many connections carried it before.
type Policy = Arc<dyn Fn(Option<&str>, usize) -> Act + Send + Sync>;

/// Longest any server task waits on a client.
const SERVER_WAIT: Duration = Duration::from_secs(20);

const LOOPBACK: &str = "127.0.0.1";

struct Counts(Mutex<HashMap<String, usize>>);

impl Counts {
    /// How many connections named `name` before this one, counting this one.
    fn next(&self, name: Option<&str>) -> usize {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = m.entry(name.unwrap_or("").to_string()).or_default();
        *n += 1;
        *n - 1
    }
}

fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

async fn hold(mut stream: TcpStream) {
    let mut sink = [0u8; 4096];
    let _ = tokio::time::timeout(SERVER_WAIT, async {
        use tokio::io::AsyncReadExt;
        while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
}

async fn page<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(mut s: S, title: &str) {
    if let Ok(Ok(req)) = tokio::time::timeout(SERVER_WAIT, read_request(&mut s)).await {
        let body = format!("<html><head><title>{title}</title></head><body>ok</body></html>");
        let headers = [("Content-Type".to_string(), "text/html".to_string())];
        let _ = write_response(&mut s, 200, &headers, body.as_bytes(), req.method == "HEAD").await;
        let _ = s.shutdown().await;
    }
}

/// A TLS listener for `site` on 127.0.0.1 acting by `policy`.
async fn tls_server(site: &str, pki: &LabPki, forger: &LabPki, policy: Policy) -> SocketAddr {
    let mut valid = SniResolver::default();
    valid.insert(&[site], pki.leaf(&[site]).unwrap());
    let mut forged = SniResolver::default();
    forged.insert(&[site], forger.leaf(&[site]).unwrap());
    let (valid, forged, refuse) = (
        server_config(Arc::new(valid)).unwrap(),
        server_config(Arc::new(forged)).unwrap(),
        server_config(Arc::new(NoCertificate)).unwrap(),
    );
    let listener = TcpListener::bind((LOOPBACK, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let counts = Arc::new(Counts(Mutex::new(HashMap::new())));
    let title = site.to_string();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (policy, counts, valid, forged, refuse, title) = (
                policy.clone(),
                counts.clone(),
                valid.clone(),
                forged.clone(),
                refuse.clone(),
                title.clone(),
            );
            tokio::spawn(async move {
                let acceptor = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream);
                let Ok(Ok(start)) = tokio::time::timeout(SERVER_WAIT, acceptor).await else {
                    return;
                };
                let sni = start.client_hello().server_name().map(str::to_owned);
                let act = policy(sni.as_deref(), counts.next(sni.as_deref()));
                let config = match act {
                    Act::Reset => return reset(start.io),
                    Act::Hold => return hold(start.io).await,
                    Act::Forged => forged,
                    Act::Alert => refuse,
                    Act::Serve => valid,
                };
                let accept = tokio::time::timeout(SERVER_WAIT, start.into_stream(config)).await;
                if let Ok(Ok(tls)) = accept {
                    page(tls, &title).await;
                }
            });
        }
    });
    addr
}

/// A cleartext listener acting by `policy` on the `Host:` header.
async fn http_server(policy: Policy) -> SocketAddr {
    let listener = TcpListener::bind((LOOPBACK, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let counts = Arc::new(Counts(Mutex::new(HashMap::new())));
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let (policy, counts) = (policy.clone(), counts.clone());
            tokio::spawn(async move {
                let Ok(Ok(req)) =
                    tokio::time::timeout(SERVER_WAIT, read_request(&mut stream)).await
                else {
                    return;
                };
                let host = req.host.clone();
                match policy(host.as_deref(), counts.next(host.as_deref())) {
                    Act::Reset => reset(stream),
                    Act::Hold => hold(stream).await,
                    Act::Serve | Act::Forged | Act::Alert => {
                        let body = b"<html><head><title>Plain</title></head><body>ok</body></html>";
                        let _ = write_response(&mut stream, 200, &[], body, false).await;
                        let _ = stream.shutdown().await;
                    }
                }
            });
        }
    });
    addr
}

fn policy(f: impl Fn(Option<&str>, usize) -> Act + Send + Sync + 'static) -> Policy {
    Arc::new(f)
}

fn ab_line<'a>(m: &'a Measurement, key: &str) -> Option<&'a str> {
    m.verdict
        .evidence
        .iter()
        .find(|l| l.starts_with(&format!("{key}=")))
        .map(String::as_str)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_innocent_name_that_passes_proves_the_block_without_a_control() {
    let pki = LabPki::new().unwrap();
    let forger = LabPki::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    pki.write_ca_pem(&ca).unwrap();

    // The censor resets the site's name and the usual innocent name alike (so the decoy
    // handshake fails too); only the nameless ClientHello passes.
    let both = policy(|sni, _| match sni {
        Some("both.test" | "example.com") => Act::Reset,
        _ => Act::Serve,
    });
    let drop = policy(|sni, _| match sni {
        Some("drop.test") => Act::Hold,
        _ => Act::Serve,
    });
    let forged = policy(|sni, _| match sni {
        Some("forged.test") => Act::Forged,
        _ => Act::Serve,
    });
    // The first handshake naming the site is reset, every later one served: not a block.
    let flaky = policy(|sni, n| match (sni, n) {
        (Some("flaky.test"), 0) => Act::Reset,
        _ => Act::Serve,
    });
    let dead = policy(|_, _| Act::Reset);
    // The server itself refuses the site's name with an alert: not a middlebox.
    let alert = policy(|sni, _| match sni {
        Some("alert.test") => Act::Alert,
        _ => Act::Serve,
    });
    let host = policy(|h, _| match h {
        Some("host.test") => Act::Reset,
        _ => Act::Serve,
    });
    let fine = policy(|_, _| Act::Serve);
    let mut urls = Vec::new();
    for (site, p) in [
        ("both.test", both),
        ("drop.test", drop),
        ("forged.test", forged),
        ("flaky.test", flaky),
        ("dead.test", dead),
        ("alert.test", alert),
        ("fine.test", fine),
    ] {
        let addr = tls_server(site, &pki, &forger, p).await;
        urls.push((site, format!("https://{site}:{}/", addr.port())));
    }
    let plain = http_server(host).await;
    urls.push(("host.test", format!("http://host.test:{}/", plain.port())));
    let anchor = urls
        .iter()
        .find(|(s, _)| *s == "fine.test")
        .map(|(_, u)| u.trim_start_matches("https://fine.test").to_string())
        .unwrap();
    let anchor = format!("{LOOPBACK}{}", anchor.trim_end_matches('/'));

    let ip: IpAddr = LOOPBACK.parse().unwrap();
    let dns = DnsServer::start(
        ip,
        urls.iter()
            .map(|(s, _)| (s.to_string(), DnsBehaviour::Answer(vec![ip]))),
    )
    .await
    .unwrap();

    let mut cmd = Command::new(witness_bin());
    cmd.args([
        "run",
        "--yes",
        "--no-progress",
        "--json",
        "--no-control",
        "--no-path",
    ])
    .args(["--resolver", &dns.addr().to_string()])
    .args(["--control-resolver", "none"])
    .arg("--extra-ca")
    .arg(&ca)
    .args(["--lab-public-range", "127.0.0.0/8"])
    .args(["--anchor", &anchor])
    .args(["--timeout", "3"])
    .env("HOME", dir.path())
    .env_remove("WITNESS_CONFIG");
    for (_, u) in &urls {
        cmd.args(["--url", u]);
    }
    let started = Instant::now();
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("run witness"))
        .await
        .unwrap();
    let elapsed = started.elapsed();
    assert!(
        out.status.success(),
        "witness failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let by: HashMap<String, Measurement> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let m: Measurement = serde_json::from_str(l).expect("a measurement per line");
            (m.domain.clone(), m)
        })
        .collect();
    for m in by.values() {
        eprintln!(
            "{:>6.0} ms  {:<12} {:?}/{:?} {:?}  ab: {:?}",
            m.runtime_ms,
            m.domain,
            m.verdict.status,
            m.verdict.method,
            m.verdict.evidence,
            m.ab.iter()
                .map(|o| (o.duration_ms.round(), o.trials.len()))
                .collect::<Vec<_>>()
        );
    }
    eprintln!("whole run: {:.1} s", elapsed.as_secs_f64());
    let get = |d: &str| by.get(d).unwrap_or_else(|| panic!("no record for {d}"));
    let verdict = |d: &str| (get(d).verdict.status, get(d).verdict.method);

    // The nameless ClientHello passes where the site's name (and example.com) are reset.
    let m = get("both.test");
    assert_eq!(
        verdict("both.test"),
        (Status::Blocked, Some(Method::Tls)),
        "{:?}",
        m.verdict
    );
    assert!(
        ab_line(m, "ab.tls")
            .unwrap()
            .starts_with("ab.tls=name_differs@"),
        "{:?}",
        m.verdict
    );
    let ab = &m.ab[0];
    assert_eq!(
        (ab.kind, ab.name.as_str(), ab.innocent.as_str()),
        (AbKind::Tls, "both.test", "example.com")
    );
    let sent: Vec<(AbName, bool)> = ab.trials.iter().map(|t| (t.sent, t.answered())).collect();
    assert_eq!(
        sent,
        [
            (AbName::Innocent, false),
            (AbName::None, true),
            (AbName::Site, false)
        ]
    );
    assert_eq!(
        ab.trials[1].valid_for_site,
        Some(true),
        "the server's own certificate"
    );

    // A black hole for the site's name: blocked, and the repeat waited about a second, not a
    // whole step timeout.
    let m = get("drop.test");
    assert_eq!(
        verdict("drop.test"),
        (Status::Blocked, Some(Method::Tls)),
        "{:?}",
        m.verdict
    );
    assert!(ab_line(m, "ab.tls")
        .unwrap()
        .starts_with("ab.tls=name_differs@"));
    assert!(m.ab[0].duration_ms < 2_500.0, "{:?}", m.ab[0]);

    // A certificate from an unknown CA for the site's name, the real one for any other.
    let m = get("forged.test");
    assert_eq!(
        verdict("forged.test"),
        (Status::Blocked, Some(Method::Mitm)),
        "{:?}",
        m.verdict
    );
    assert!(ab_line(m, "ab.tls")
        .unwrap()
        .starts_with("ab.tls=certificate_differs@"));

    // A failure that does not repeat is not a block, though the decoy handshake worked.
    let m = get("flaky.test");
    assert_eq!(m.verdict.status, Status::Inconclusive, "{:?}", m.verdict);
    assert!(
        m.verdict
            .evidence
            .iter()
            .any(|l| l.starts_with("tls.decoy=ok@")),
        "{:?}",
        m.verdict
    );
    assert!(ab_line(m, "ab.tls")
        .unwrap()
        .starts_with("ab.tls=site_answered@"));

    // Every name reset: nothing about the name, no block without a control.
    let m = get("dead.test");
    assert_eq!(m.verdict.status, Status::Inconclusive, "{:?}", m.verdict);
    assert!(ab_line(m, "ab.tls")
        .unwrap()
        .starts_with("ab.tls=innocent_failed@"));

    // A TLS alert is the server's own answer: no A/B test, and the decoy proves nothing.
    let m = get("alert.test");
    assert_eq!(m.verdict.status, Status::Inconclusive, "{:?}", m.verdict);
    assert!(
        m.verdict
            .evidence
            .iter()
            .any(|l| l.starts_with("tls.failure=ssl_failed_handshake@")),
        "{:?}",
        m.verdict
    );
    assert!(m.ab.is_empty(), "{:?}", m.ab);

    // Host filtering in cleartext.
    let m = get("host.test");
    assert_eq!(
        verdict("host.test"),
        (Status::Blocked, Some(Method::Http)),
        "{:?}",
        m.verdict
    );
    assert!(ab_line(m, "ab.http")
        .unwrap()
        .starts_with("ab.http=name_differs@"));

    // A site that works gets no A/B test.
    let m = get("fine.test");
    assert_eq!(m.verdict.status, Status::Accessible, "{:?}", m.verdict);
    assert!(m.ab.is_empty());
    // The JSON omits an empty `ab`.
    let line = serde_json::to_string(m).unwrap();
    assert!(!line.contains("\"ab\""), "{line}");
}
