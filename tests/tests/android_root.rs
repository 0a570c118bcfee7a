//! The aarch64 probe as it runs on an Android phone under Termux: a root with no
//! `/etc/resolv.conf` and no `/etc/ssl`, only the binary, qemu-user to run it, and a Termux
//! prefix whose `etc/resolv.conf` names the network's resolver; `HOME` is Termux's home. The
//! probe must find that resolver by itself, measure with its embedded roots, and spool under
//! `HOME`; with no resolv.conf anywhere it must refuse, naming `--resolver`, and measure nothing.
//!
//! The binary is the release artifact (`WITNESS_RELEASE_DIR`, as in `release_artifacts.rs`),
//! or any static aarch64 build named by `WITNESS_AARCH64_PROBE` (for a quick local check);
//! without either the tests skip loudly, and under `WITNESS_REQUIRE_RELEASE=1` fail. They need
//! root for `chroot`: without it they skip loudly, and under `WITNESS_REQUIRE_TOOLS=1` fail.
//! The chroot shares this machine's network namespace, so its loopback is ours.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use tokio::net::UdpSocket;
use witness_core::model::{Measurement, Method, Status};
use witness_tests::promstack::require_tool;
use witness_tests::release::{artifact, version};
use witness_tests::volunteer::anchor_of;
use witness_tests::{Site, SiteDns, World, CENSORED_SOURCE};

/// Termux's prefix and home, as the app installs them.
const PREFIX: &str = "/data/data/com.termux/files/usr";
const HOME: &str = "/data/data/com.termux/files/home";
/// Where the test's resolver listens: resolv.conf has no port, so it must be 53.
const RESOLVER_IP: Ipv4Addr = Ipv4Addr::new(127, 53, 25, 1);
/// How long a relayed query waits for the upstream's (possibly several) responses.
const RELAY_LINGER: Duration = Duration::from_secs(3);

/// The static aarch64 probe, or None after a loud skip.
fn aarch64_probe() -> Option<PathBuf> {
    artifact(
        "WITNESS_AARCH64_PROBE",
        &format!("witness-{}-aarch64-unknown-linux-musl", version()),
    )
}

/// Whether we may chroot; a loud skip (or a failure under WITNESS_REQUIRE_TOOLS=1) if not.
fn can_chroot() -> bool {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    if !root {
        let msg = "SKIPPED: the Android root needs chroot, which needs root";
        if std::env::var("WITNESS_REQUIRE_TOOLS").as_deref() == Ok("1") {
            panic!("{msg}, and WITNESS_REQUIRE_TOOLS=1");
        }
        eprintln!("\n!!!!!!!! {msg} !!!!!!!!\n");
    }
    root
}

/// A root like Android's: `/witness`, `/qemu` (static qemu-user, so that no binfmt setup is
/// needed), Termux's home and, when `resolv_conf` is given, Termux's `etc/resolv.conf`.
/// Nothing else: no /etc, no /etc/ssl, no /system.
struct AndroidRoot {
    dir: tempfile::TempDir,
}

impl AndroidRoot {
    fn new(probe: &Path, qemu: &Path, resolv_conf: Option<&str>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(probe, dir.path().join("witness")).unwrap();
        std::fs::copy(qemu, dir.path().join("qemu")).unwrap();
        let prefix_etc = dir.path().join(&PREFIX[1..]).join("etc");
        std::fs::create_dir_all(&prefix_etc).unwrap();
        std::fs::create_dir_all(dir.path().join(&HOME[1..])).unwrap();
        if let Some(text) = resolv_conf {
            std::fs::write(prefix_etc.join("resolv.conf"), text).unwrap();
        }
        assert!(!dir.path().join("etc").exists());
        Self { dir }
    }

    /// A path inside the root, as the host sees it.
    fn host(&self, inside: &str) -> PathBuf {
        self.dir.path().join(inside.trim_start_matches('/'))
    }

    /// `chroot ROOT /qemu /witness ARGS` with Termux's environment and nothing else.
    fn witness(&self, args: &[String]) -> Output {
        let chroot = ["/usr/sbin/chroot", "/usr/bin/chroot", "/sbin/chroot"]
            .iter()
            .find(|p| Path::new(p).is_file())
            .expect("chroot in /usr/sbin, /usr/bin or /sbin");
        Command::new(chroot)
            .arg(self.dir.path())
            .args(["/qemu", "/witness"])
            .args(args)
            .env_clear()
            .env("HOME", HOME)
            .env("PREFIX", PREFIX)
            .env("TMPDIR", format!("{PREFIX}/tmp"))
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }
}

/// Relay DNS over UDP from `listen` to `upstream`, from the client's own source address (the
/// test's resolvers answer by source), passing back every response for [`RELAY_LINGER`].
async fn relay_dns(listen: UdpSocket, upstream: SocketAddr) {
    let listen = std::sync::Arc::new(listen);
    let mut buf = vec![0u8; 4096];
    loop {
        let Ok((n, client)) = listen.recv_from(&mut buf).await else {
            return;
        };
        let query = buf[..n].to_vec();
        let listen = listen.clone();
        tokio::spawn(async move {
            let Ok(up) = UdpSocket::bind(SocketAddr::new(client.ip(), 0)).await else {
                return;
            };
            if up.send_to(&query, upstream).await.is_err() {
                return;
            }
            let mut buf = vec![0u8; 4096];
            let deadline = tokio::time::Instant::now() + RELAY_LINGER;
            while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, up.recv(&mut buf)).await {
                let _ = listen.send_to(&buf[..n], client).await;
            }
        });
    }
}

fn measurements(out: &Output) -> BTreeMap<String, Measurement> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<Measurement>(l).unwrap())
        .map(|m| (m.domain.clone(), m))
        .collect()
}

#[test]
fn the_aarch64_probe_measures_in_a_termux_root_with_its_resolver_and_home() {
    let Some(probe) = aarch64_probe() else { return };
    let Some(qemu) = require_tool(&["qemu-aarch64-static"], "qemu-user-static") else {
        return;
    };
    if !can_chroot() {
        return;
    }
    let world = World::builder()
        .site(Site::new("fine.test"))
        .site(
            Site::new("lied.test")
                .http_only()
                .dns(SiteDns::LieToBlockpage),
        )
        .start()
        .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let listen = rt
        .block_on(UdpSocket::bind((RESOLVER_IP, 53)))
        .expect("bind the Termux resolver on 127.53.25.1:53");
    rt.spawn(relay_dns(listen, world.probe_resolver()));

    let root = AndroidRoot::new(
        &probe,
        &qemu,
        Some(&format!("# Termux\nnameserver {RESOLVER_IP}\n")),
    );
    std::fs::copy(world.ca_file(), root.host(&format!("{HOME}/ca.pem"))).unwrap();
    let list = world.write_list("list.csv").unwrap();
    std::fs::copy(&list, root.host(&format!("{HOME}/list.csv"))).unwrap();
    let args: Vec<String> = [
        "run",
        "--yes",
        "--upload",
        "--no-progress",
        "--json",
        "--no-control",
        "--lab-public-range",
        "127.0.0.0/8",
        "--timeout",
        "5",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([
        "--control-resolver".into(),
        format!("udp:{}", world.control_resolver()),
        "--extra-ca".into(),
        format!("{HOME}/ca.pem"),
        "--list".into(),
        format!("{HOME}/list.csv"),
        "--source-address".into(),
        CENSORED_SOURCE.to_string(),
        "--anchor".into(),
        anchor_of(&world, "fine.test"),
    ])
    .collect();
    let out = root.witness(&args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Measured and spooled; no collector is set, so the upload is left for later (exit 3).
    assert_eq!(out.status.code(), Some(3), "{}\n{stderr}", out.status);

    let ms = measurements(&out);
    assert_eq!(ms.len(), 2, "{stderr}");
    let fine = &ms["fine.test"];
    assert_eq!(
        fine.verdict.status,
        Status::Accessible,
        "{:?}",
        fine.verdict
    );
    let lied = &ms["lied.test"];
    assert_eq!(lied.verdict.status, Status::Blocked, "{:?}", lied.verdict);
    assert_eq!(lied.verdict.method, Some(Method::Dns), "{:?}", lied.verdict);
    // The network resolver asked was Termux's, found without /etc/resolv.conf.
    assert!(
        world.probe_dns().queries("lied.test") >= 1,
        "the Termux resolver was not asked"
    );

    // The spool is under Termux's home, as dirs' XDG fallbacks put it.
    let spool = root.host(&format!("{HOME}/.local/share/witness/spool"));
    // Waiting or held aside (loopback is the volunteer's own address here): kept, under HOME.
    let listing = walk(&spool);
    let spooled = listing
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .count();
    assert_eq!(spooled, 2, "{}: {listing:?}", spool.display());

    // The collector's name goes to Termux's resolver too, not to the C library's default of
    // 127.0.0.1:53 (musl's, without /etc/resolv.conf), where nothing answers on a phone.
    let before = world.probe_dns().queries("fine.test");
    let out = root.witness(&[
        "register".into(),
        "--collector".into(),
        world.url("fine.test"),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        world.probe_dns().queries("fine.test") > before,
        "the collector's name was not asked of Termux's resolver: {stderr}"
    );
    assert!(!stderr.contains("does not resolve"), "{stderr}");

    assert!(!root.host("/etc").exists(), "the probe wrote /etc");
    assert!(!root.host("/root").exists(), "the probe wrote outside HOME");
}

#[test]
fn with_no_resolver_anywhere_the_probe_names_the_flag_and_measures_nothing() {
    let Some(probe) = aarch64_probe() else { return };
    let Some(qemu) = require_tool(&["qemu-aarch64-static"], "qemu-user-static") else {
        return;
    };
    if !can_chroot() {
        return;
    }
    let root = AndroidRoot::new(&probe, &qemu, None);
    let args: Vec<String> = [
        "run",
        "--yes",
        "--upload",
        "--no-progress",
        "--json",
        "--no-control",
        "--control-resolver",
        "none",
        "--url",
        "https://fine.test/",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let out = root.witness(&args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{}\n{stderr}", out.status);
    assert!(
        out.stdout.is_empty(),
        "measured: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    for needle in [
        "no system resolver",
        "--resolver",
        "[network]",
        "/data/data/com.termux/files/usr/etc/resolv.conf",
    ] {
        assert!(stderr.contains(needle), "{needle} not in: {stderr}");
    }
    assert!(
        !root
            .host(&format!("{HOME}/.local/share/witness/spool"))
            .exists(),
        "a spool was made though nothing was measured"
    );
}

/// Every path under `dir`, for failure messages.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        }
        out.push(p);
    }
    out
}
