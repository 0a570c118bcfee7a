//! The Windows probe (`witness.exe`, `x86_64-pc-windows-gnu`) as a volunteer runs it, under
//! Wine against the loopback servers: `--version`, consent, a run over a small list with an
//! accessible site and two blocked ones giving the same verdicts as the Linux binary, the table
//! with `--out`, register, upload, and the spool and credentials under `%APPDATA%`. The
//! localisation, which needs Linux's `IP_RECVERR`, must say in the record that it could not
//! run (`platform_unsupported`), never be silently absent.
//!
//! The binary is the release artifact (`WITNESS_RELEASE_DIR`, see `witness_tests::release`) or
//! any build named by `WITNESS_WINDOWS_PROBE`; without either the test skips loudly, and under
//! `WITNESS_REQUIRE_RELEASE=1` fails. Without Wine (Debian's `wine64`) it skips loudly, and
//! under `WITNESS_REQUIRE_TOOLS=1` fails. Wine runs in a fresh prefix in a temporary directory
//! (its first start, `wineboot`, is most of the test's time) with `WINEDEBUG=-all`. Wine's
//! programs share this machine's network, so the loopback servers are theirs. Debian 12's Wine
//! 8 lacks `bcryptprimitives.dll`, which Rust's standard library imports and every Windows 10
//! and 11 has: the test builds a stand-in (`tests/wine/bcryptprimitives.c`, mingw-w64's gcc)
//! next to the exe, as a volunteer's unpacked folder would hold the exe alone.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use witness_core::model::{Measurement, Method, PathUnlocated, Status};
use witness_tests::bins::workspace_root;
use witness_tests::promstack::require_tool;
use witness_tests::release::{artifact, release_dir, version};
use witness_tests::volunteer::anchor_of;
use witness_tests::{
    witness_bin, Behaviour, CollectorProcess, DnsBehaviour, Site, SiteDns, World, CENSORED_SOURCE,
};

/// Where Debian's `wine64` package puts its loader (it has no `/usr/bin` entry of its own).
const WINE_LOADERS: &[&str] = &["/usr/lib/wine/wine64", "/usr/bin/wine64", "/usr/bin/wine"];
/// Wine's first start in a new prefix (wineboot) takes ~10-30 s; later starts ~1 s.
const WINE_TIMEOUT: Duration = Duration::from_secs(180);

/// The Windows probe, or None after a loud skip.
fn windows_probe() -> Option<PathBuf> {
    artifact(
        "WITNESS_WINDOWS_PROBE",
        &format!("witness-{}-x86_64-pc-windows-gnu.exe", version()),
    )
}

/// Wine's loader, or None after a loud skip (a failure under WITNESS_REQUIRE_TOOLS=1).
fn wine_loader() -> Option<PathBuf> {
    if let Some(p) = WINE_LOADERS.iter().map(PathBuf::from).find(|p| p.exists()) {
        return Some(p);
    }
    require_tool(&["wine64", "wine"], "wine64")
}

/// A Wine prefix of its own and the unpacked folder, both removed with the test.
struct Wine {
    loader: PathBuf,
    exe: PathBuf,
    prefix: tempfile::TempDir,
    _folder: tempfile::TempDir,
}

impl Wine {
    /// The folder with `exe` and the `bcryptprimitives.dll` stand-in; None after a loud skip
    /// when mingw-w64's gcc is missing.
    fn new(loader: PathBuf, exe: &Path) -> Option<Wine> {
        let gcc = require_tool(&["x86_64-w64-mingw32-gcc"], "gcc-mingw-w64-x86-64")?;
        let folder = tempfile::tempdir().unwrap();
        let source = workspace_root().join("tests/wine/bcryptprimitives.c");
        let out = Command::new(gcc)
            .args(["-O2", "-shared", "-s", "-o"])
            .arg(folder.path().join("bcryptprimitives.dll"))
            .arg(&source)
            .arg("-ladvapi32")
            .output()
            .unwrap();
        assert_ok(&out, "building the bcryptprimitives.dll stand-in");
        let copy = folder.path().join("witness.exe");
        std::fs::copy(exe, &copy).unwrap();
        Some(Wine {
            loader,
            exe: copy,
            prefix: tempfile::tempdir().unwrap(),
            _folder: folder,
        })
    }

    /// `witness.exe ARGS` under Wine; killed after [`WINE_TIMEOUT`].
    fn witness(&self, args: &[String]) -> Output {
        let mut child = Command::new(&self.loader)
            .arg(&self.exe)
            .args(args)
            .env("WINEPREFIX", self.prefix.path())
            .env("WINEARCH", "win64")
            .env("WINEDEBUG", "-all")
            // No Mono or Gecko installer prompts, no display: a console program needs neither.
            .env("WINEDLLOVERRIDES", "mscoree,mshtml=")
            .env_remove("DISPLAY")
            .env_remove("WAYLAND_DISPLAY")
            .env_remove("WITNESS_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start wine");
        let start = Instant::now();
        while child.try_wait().expect("wait for wine").is_none() {
            if start.elapsed() > WINE_TIMEOUT {
                let _ = child.kill();
                panic!("witness.exe {args:?} still running after {WINE_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        child.wait_with_output().expect("wine output")
    }

    /// `%APPDATA%` of the prefix's user, as a path on this machine.
    fn appdata(&self) -> PathBuf {
        let users = self.prefix.path().join("drive_c").join("users");
        std::fs::read_dir(&users)
            .unwrap_or_else(|e| panic!("{}: {e}", users.display()))
            .flatten()
            .map(|e| e.path().join("AppData").join("Roaming"))
            .find(|p| p.is_dir())
            .unwrap_or_else(|| panic!("no AppData\\Roaming under {}", users.display()))
    }
}

/// A path on this machine as Windows programs under Wine see it (drive Z: is `/`).
fn win(p: &Path) -> String {
    format!("Z:{}", p.display()).replace('/', "\\")
}

/// The flags of a lab run against `world`, with `path` turning file names into the binary's.
fn lab_args(world: &World, path: impl Fn(&Path) -> String) -> Vec<String> {
    [
        "run",
        "--no-progress",
        "--no-control",
        "--lab-public-range",
        "127.0.0.0/8",
        "--timeout",
        "3",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([
        "--extra-ca".into(),
        path(world.ca_file()),
        "--resolver".into(),
        world.probe_resolver().to_string(),
        "--source-address".into(),
        CENSORED_SOURCE.to_string(),
        "--anchor".into(),
        anchor_of(world, "fine.test"),
        // The world's honest resolver over plain UDP (labs only): what tells a forged
        // NXDOMAIN from a name that does not exist.
        "--control-resolver".into(),
        format!("udp:{}", world.control_resolver()),
    ])
    .collect()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn assert_ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}: exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// One measurement per JSON line, by domain.
fn by_domain(jsonl: &str) -> BTreeMap<String, Measurement> {
    jsonl
        .lines()
        .map(|l| {
            let m: Measurement =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("not a measurement ({e}): {l}"));
            (m.domain.clone(), m)
        })
        .collect()
}

fn verdicts(ms: &BTreeMap<String, Measurement>) -> BTreeMap<String, (Status, Option<Method>)> {
    ms.iter()
        .map(|(d, m)| (d.clone(), (m.verdict.status, m.verdict.method)))
        .collect()
}

/// Records waiting in the spool at `dir`, held back (until the probe knows its public address,
/// `held/`) or not.
fn spooled(dir: &Path) -> usize {
    let count = |dir: PathBuf| {
        std::fs::read_dir(dir)
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
                    .count()
            })
            .unwrap_or(0)
    };
    count(dir.to_path_buf()) + count(dir.join("held"))
}

#[test]
fn the_windows_probe_measures_registers_and_uploads_under_wine() {
    let Some(exe) = windows_probe() else { return };
    let Some(loader) = wine_loader() else { return };
    assert!(exe.is_file(), "{} is missing", exe.display());
    let Some(wine) = Wine::new(loader, &exe) else {
        return;
    };

    // --version, timed: the first start builds the prefix.
    let started = Instant::now();
    let out = wine.witness(&["--version".into()]);
    assert_ok(&out, "--version");
    assert!(
        text(&out.stdout).contains(&version()),
        "{}",
        text(&out.stdout)
    );
    eprintln!(
        "wine's first start (wineboot + --version): {:?}",
        started.elapsed()
    );

    let world = World::builder()
        .site(Site::new("fine.test"))
        .site(Site::new("sni-reset.test").censored(Behaviour::ResetAfterClientHello))
        .site(Site::new("nx.test").dns(SiteDns::Exactly(DnsBehaviour::Nxdomain)))
        .start()
        .unwrap();
    let list = world.write_list("list.csv").unwrap();
    let expected: BTreeMap<String, (Status, Option<Method>)> = [
        ("fine.test", Status::Accessible, None),
        ("sni-reset.test", Status::Blocked, Some(Method::Tls)),
        ("nx.test", Status::Blocked, Some(Method::Dns)),
    ]
    .into_iter()
    .map(|(d, s, m)| (d.to_string(), (s, m)))
    .collect();

    // Consent first: without it, nothing is measured and the message says how to give it.
    let mut args = lab_args(&world, win);
    args.extend(["--list".into(), win(&list)]);
    let out = wine.witness(&args);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("consent"),
        "{}",
        text(&out.stderr)
    );
    assert!(text(&out.stdout).is_empty(), "{}", text(&out.stdout));

    // The same list, --json, from Windows and from Linux: the same verdicts.
    args.extend(["--yes".into(), "--json".into()]);
    let started = Instant::now();
    let out = wine.witness(&args);
    eprintln!("witness.exe run under wine: {:?}", started.elapsed());
    assert_ok(&out, "run --json");
    let windows = by_domain(&text(&out.stdout));
    let mut linux_args = lab_args(&world, |p| p.display().to_string());
    linux_args.extend([
        "--list".into(),
        list.display().to_string(),
        "--yes".into(),
        "--json".into(),
    ]);
    let out = Command::new(witness_bin())
        .args(&linux_args)
        .env("HOME", world.dir())
        .env_remove("WITNESS_CONFIG")
        .output()
        .unwrap();
    assert_ok(&out, "linux run");
    let linux = by_domain(&text(&out.stdout));
    assert_eq!(
        verdicts(&windows),
        verdicts(&linux),
        "Windows' verdicts, Linux's"
    );
    assert_eq!(verdicts(&linux), expected, "Linux's verdicts");
    // The localisation could not run on Windows, and the record says so.
    let path = windows["sni-reset.test"]
        .path
        .as_ref()
        .expect("a blocked site's record says what became of its localisation");
    assert_eq!(path.unlocated, Some(PathUnlocated::PlatformUnsupported));
    assert_eq!((path.censor_hop, path.probes), (None, 0));

    // Register with a real collector: the credentials land under %APPDATA%.
    let dir = tempfile::tempdir().unwrap();
    let collector = CollectorProcess::start(dir.path(), "").unwrap();
    let out = wine.witness(&[
        "register".into(),
        "--collector".into(),
        collector.url.clone(),
    ]);
    assert_ok(&out, "register");
    assert!(
        text(&out.stdout).contains("Registered as probe"),
        "{}",
        text(&out.stdout)
    );
    let appdata = wine.appdata();
    assert!(appdata.join("witness").join("credentials.json").is_file());

    // The table and --out, uploading to a collector that is down: the records wait in the
    // spool under %APPDATA%.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let down = format!("http://{}/", closed.local_addr().unwrap());
    drop(closed);
    let out_file = world.dir().join("out.jsonl");
    let mut args = lab_args(&world, win);
    args.extend(
        [
            "--list",
            &win(&list),
            "--yes",
            "--out",
            &win(&out_file),
            "--upload",
        ]
        .map(String::from),
    );
    args.extend(["--collector".into(), down]);
    let out = wine.witness(&args);
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{stdout}\n{}",
        text(&out.stderr)
    );
    for domain in expected.keys() {
        assert!(
            stdout.contains(domain.as_str()),
            "the table names {domain}: {stdout}"
        );
    }
    let written = by_domain(&std::fs::read_to_string(&out_file).unwrap());
    assert_eq!(verdicts(&written), expected, "--out");
    let spool = appdata.join("witness").join("spool");
    assert_eq!(spooled(&spool), 3, "{}", spool.display());

    // `witness upload` sends them to the registered collector and empties the spool.
    let out = wine.witness(&["upload".into(), "--collector".into(), collector.url.clone()]);
    assert_ok(&out, "upload");
    assert!(
        text(&out.stdout).contains("3 of 3 waiting"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(spooled(&spool), 0);
}

/// The release's Windows artifacts: the exe within the size limit, importing only Windows' own
/// DLLs, and the zip a volunteer downloads holding that same exe with the README, licence,
/// example config and the Windows guide, both in the signed SHA256SUMS.
#[test]
fn the_windows_zip_holds_the_exe_its_guide_and_config_and_is_listed_in_the_sums() {
    let Some(dir) = release_dir() else { return };
    let Some(unzip) = require_tool(&["unzip"], "unzip") else {
        return;
    };
    let Some(objdump) = require_tool(&["x86_64-w64-mingw32-objdump"], "binutils-mingw-w64-x86-64")
    else {
        return;
    };
    let v = version();
    let exe_name = format!("witness-{v}-x86_64-pc-windows-gnu.exe");
    let stem = format!("witness-{v}-x86_64-pc-windows-gnu");
    let exe = std::fs::read(dir.join(&exe_name)).unwrap();
    assert!(
        exe.len() as u64 <= 12 * 1024 * 1024,
        "{exe_name}: {} bytes",
        exe.len()
    );
    eprintln!("{exe_name}: {} bytes", exe.len());

    let imports = text(
        &Command::new(objdump)
            .arg("-p")
            .arg(dir.join(&exe_name))
            .output()
            .unwrap()
            .stdout,
    );
    let dlls: Vec<String> = imports
        .lines()
        .filter_map(|l| l.trim().strip_prefix("DLL Name: "))
        .map(str::to_ascii_lowercase)
        .collect();
    assert!(dlls.iter().any(|d| d == "kernel32.dll"), "{dlls:?}");
    for dll in &dlls {
        assert!(
            !dll.starts_with("libgcc")
                && !dll.starts_with("libwinpthread")
                && !dll.starts_with("libstdc++"),
            "witness.exe needs mingw's {dll}, which a volunteer's PC lacks: {dlls:?}"
        );
    }

    let zip = dir.join(format!("{stem}.zip"));
    let out = Command::new(&unzip).arg("-Z1").arg(&zip).output().unwrap();
    assert_ok(&out, "unzip -Z1");
    let listed: Vec<String> = text(&out.stdout).lines().map(String::from).collect();
    let want: Vec<String> = [
        "LICENSE",
        "README.md",
        "WINDOWS.md",
        "witness.example.toml",
        "witness.exe",
    ]
    .iter()
    .map(|f| format!("{stem}/{f}"))
    .collect();
    assert_eq!(listed, want);
    let inner = Command::new(&unzip)
        .arg("-p")
        .arg(&zip)
        .arg(format!("{stem}/witness.exe"))
        .output()
        .unwrap();
    assert!(
        inner.stdout == exe,
        "the zip's witness.exe is not the released one"
    );
    let guide = Command::new(&unzip)
        .arg("-p")
        .arg(&zip)
        .arg(format!("{stem}/WINDOWS.md"))
        .output()
        .unwrap();
    assert!(
        text(&guide.stdout).contains("schtasks /Create"),
        "the guide has the Task Scheduler recipe"
    );

    // Both are covered by the signed sums (release_artifacts.rs checks the signature and every
    // sum in the file).
    let sums = std::fs::read_to_string(dir.join("SHA256SUMS")).unwrap();
    for name in [exe_name, format!("{stem}.zip")] {
        assert!(
            sums.contains(&format!(" {name}\n")),
            "{name} not in SHA256SUMS:\n{sums}"
        );
    }
}
