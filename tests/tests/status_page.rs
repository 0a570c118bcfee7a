//! The collector's status page with real data, in a real browser: the real probe measures a
//! loopback world with censored sites from three networks (one blocks by SNI, interception,
//! HTTP reset and DNS; one only by DNS; one is cut off), uploads to the real collector, and
//! headless Chromium renders `/` and `/sites/{domain}`. The screenshots are kept in
//! `<target dir>/test-artifacts/status-page*.png` to be looked at.
//!
//! Without Chromium the browser part is skipped, loudly; `WITNESS_REQUIRE_TOOLS=1` makes that
//! a failure. Debian package: chromium (and a font, e.g. fonts-dejavu-core).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use witness_core::model::{Measurement, Method, Status};
use witness_tests::collector::get;
use witness_tests::volunteer::{anchor_of, lab_control_section, ok, Probe};
use witness_tests::{
    witness_bin, Behaviour, CollectorProcess, DnsBehaviour, Site, SiteDns, World, CENSORED_SOURCE,
};

/// Censors by SNI, interception, HTTP reset and DNS.
const ASN_A: u32 = 64500;
/// Only the (shared) lying resolver censors here.
const ASN_B: u32 = 64501;
/// Cut off: anchors and control unreachable.
const ASN_C: u32 = 64502;

fn verdict(ms: &[Measurement], domain: &str) -> (Status, Option<Method>) {
    let m = ms
        .iter()
        .find(|m| m.domain == domain)
        .unwrap_or_else(|| panic!("no measurement of {domain}"));
    (m.verdict.status, m.verdict.method)
}

/// `host:port` on loopback where nothing listens.
fn dead_address() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    addr.to_string()
}

fn page(url: &str) -> String {
    let (status, body) = get(url).unwrap();
    assert_eq!(status, 200, "{url}: {body}");
    body
}

/// Where the screenshots go: `<target dir>/test-artifacts/`. The target directory is the one
/// cargo built the binaries into (so `CARGO_TARGET_DIR` and configured target dirs are honoured).
fn artifacts_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            witness_bin()
                .parent()
                .and_then(Path::parent)
                .map(Path::to_path_buf)
        })
        .expect("the binaries live in <target>/<profile>/");
    let dir = target.join("test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn require_tools() -> bool {
    std::env::var("WITNESS_REQUIRE_TOOLS").is_ok_and(|v| v != "0" && !v.is_empty())
}

/// The Chromium binary, or `None` (after a loud message) when there is none.
fn chromium() -> Option<PathBuf> {
    let candidates = ["chromium", "chromium-browser", "google-chrome", "chrome"];
    let found = std::env::var_os("WITNESS_CHROMIUM")
        .map(PathBuf::from)
        .or_else(|| {
            let path = std::env::var_os("PATH")?;
            std::env::split_paths(&path)
                .flat_map(|dir| candidates.iter().map(move |c| dir.join(c)))
                .find(|p| p.is_file())
        });
    if found.is_none() {
        let message = "chromium not found (Debian: apt-get install chromium): the browser \
                       rendering of the status page was NOT checked";
        if require_tools() {
            panic!("{message}, and WITNESS_REQUIRE_TOOLS is set");
        }
        eprintln!("\n!!!!!!!!!! SKIPPED: {message} !!!!!!!!!!\n");
    }
    found
}

/// Headless Chromium with `args` on `url`; its stdout. Killed after 90 s.
fn headless(chromium: &Path, size: &str, args: &[&str], url: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let mut child = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--window-size={size}"))
        .args(args)
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning chromium");
    let started = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if started.elapsed() > Duration::from_secs(90) {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "chromium did not finish in 90 s: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "chromium {args:?} {url}: exit {:?}\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn screenshot(chromium: &Path, size: &str, url: &str, file: &Path) {
    let _ = std::fs::remove_file(file);
    headless(
        chromium,
        size,
        &[&format!("--screenshot={}", file.display())],
        url,
    );
    let png = std::fs::read(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000,
        "{} is not a real screenshot ({} bytes)",
        file.display(),
        png.len()
    );
    eprintln!("screenshot of {url}: {}", file.display());
}

#[test]
fn status_page_shows_real_measurements_in_a_browser() {
    let world = World::builder()
        .site(Site::new("fine.test"))
        .site(
            Site::new("news.test")
                .category("NEWS")
                .censored(Behaviour::DropAfterClientHello),
        )
        .site(
            Site::new("blog.test")
                .category("NEWS")
                .censored(Behaviour::ResetAfterClientHello),
        )
        .site(
            Site::new("rights.test")
                .category("HUMR")
                .censored(Behaviour::Mitm),
        )
        .site(
            Site::new("forum.test")
                .category("POLR")
                .http_only()
                .censored(Behaviour::ResetAfterRequest),
        )
        .site(
            Site::new("vpn.test")
                .category("ANON")
                .dns(SiteDns::Exactly(DnsBehaviour::Nxdomain)),
        )
        .site(Site::new("gone.test").everyone(Behaviour::ResetAfterClientHello))
        .start()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    // One probe per network: let one measurement open or close an event, so a single run
    // of each probe fills the page.
    let sections = format!(
        "{}[aggregation]\nmin_probes = 1\nmin_measurements = 1\n",
        lab_control_section(&world, false)
    );
    let collector = CollectorProcess::start(dir.path(), &sections).unwrap();
    let list = world.write_list("list.csv").unwrap();
    let list = list.to_str().unwrap();
    let dead = dead_address();
    let anchor = anchor_of(&world, "fine.test");
    let a = Probe::new(&world, CENSORED_SOURCE, ASN_A, &collector.url, &anchor);
    let b = Probe::new(
        &world,
        "127.0.0.4".parse().unwrap(),
        ASN_B,
        &collector.url,
        &anchor,
    );
    let c = Probe::cut_off(
        &world,
        "127.0.0.5".parse().unwrap(),
        ASN_C,
        &collector.url,
        &dead,
    );
    for p in [&a, &b, &c] {
        ok(&p.witness(&["register"]));
    }

    let ms = a.run_and_upload(list);
    use Status::*;
    assert_eq!(verdict(&ms, "news.test"), (Blocked, Some(Method::Tls)));
    assert_eq!(verdict(&ms, "blog.test"), (Blocked, Some(Method::Tls)));
    assert_eq!(verdict(&ms, "rights.test"), (Blocked, Some(Method::Mitm)));
    assert_eq!(verdict(&ms, "forum.test"), (Blocked, Some(Method::Http)));
    assert_eq!(verdict(&ms, "vpn.test"), (Blocked, Some(Method::Dns)));
    assert_eq!(verdict(&ms, "gone.test"), (Down, None));
    let ms = b.run_and_upload(list);
    assert_eq!(verdict(&ms, "news.test"), (Accessible, None));
    assert_eq!(verdict(&ms, "vpn.test"), (Blocked, Some(Method::Dns)));
    let ms = c.run_and_upload(list);
    assert!(
        ms.iter().all(|m| m.verdict.status == Offline),
        "{:?}",
        ms.iter().map(|m| &m.verdict).collect::<Vec<_>>()
    );
    // blog.test is unblocked on the first network: an unblock event.
    world
        .https_origin("blog.test")
        .unwrap()
        .set_rule("blog.test", None);
    let ms = a.run_and_upload(list);
    assert_eq!(verdict(&ms, "blog.test"), (Accessible, None));

    // The page, as HTML.
    let base = collector.url.trim_end_matches('/').to_string();
    let home = page(&format!("{base}/"));
    for needle in [
        "id=\"matrix\"",
        &format!("data-asn=\"{ASN_A}\""),
        &format!("data-asn=\"{ASN_B}\""),
        "<td class=\"cell v-tls\"",
        "<td class=\"cell v-mitm\"",
        "<td class=\"cell v-http\"",
        "<td class=\"cell v-dns\"",
        "<td class=\"cell v-ok\"",
        "<td class=\"cell v-down\"",
        "class=\"legend\"",
        "<td>new block</td>",
        "<td>unblock</td>",
        "<td>shutdown</td>",
        "class=\"notice\"",
        &format!("Network shutdown:</strong> AS{ASN_C} KZ"),
        "href=\"/sites/news.test\"",
    ] {
        assert!(home.contains(needle), "{needle} missing from /:\n{home}");
    }
    assert!(page(&format!("{base}/status")).contains("id=\"matrix\""));
    let news_only = page(&format!("{base}/?category=NEWS"));
    assert!(news_only.contains(">news.test<") && !news_only.contains(">vpn.test<"));
    let site = page(&format!("{base}/sites/news.test"));
    for needle in [
        "id=\"history-chart\"",
        "class=\"seg v-tls\"",
        "class=\"seg v-ok\"",
        &format!("data-asn=\"{ASN_A}\""),
        "id=\"verdicts\"",
    ] {
        assert!(
            site.contains(needle),
            "{needle} missing from the site page:\n{site}"
        );
    }
    let (status, _) = get(&format!("{base}/sites/never-measured.test")).unwrap();
    assert_eq!(status, 404);

    // The page, in a browser.
    let Some(chromium) = chromium() else { return };
    let dom = headless(&chromium, "1280,900", &["--dump-dom"], &format!("{base}/"));
    for needle in [
        "id=\"matrix\"",
        "class=\"cell v-tls\"",
        "class=\"cell v-dns\"",
        "class=\"notice\"",
    ] {
        assert!(
            dom.contains(needle),
            "{needle} not in the rendered DOM:\n{dom}"
        );
    }
    let dom = headless(
        &chromium,
        "1280,900",
        &["--dump-dom"],
        &format!("{base}/sites/news.test"),
    );
    for needle in [
        "id=\"history-chart\"",
        "class=\"seg v-tls\"",
        "id=\"verdicts\"",
    ] {
        assert!(
            dom.contains(needle),
            "{needle} not in the rendered DOM:\n{dom}"
        );
    }
    let out = artifacts_dir();
    screenshot(
        &chromium,
        "1280,900",
        &format!("{base}/"),
        &out.join("status-page.png"),
    );
    screenshot(
        &chromium,
        "390,844",
        &format!("{base}/"),
        &out.join("status-page-phone.png"),
    );
    screenshot(
        &chromium,
        "1280,900",
        &format!("{base}/sites/news.test?days=1"),
        &out.join("status-page-site.png"),
    );
    screenshot(
        &chromium,
        "390,844",
        &format!("{base}/sites/news.test"),
        &out.join("status-page-site-phone.png"),
    );
}
