//! The release artifacts of `deploy/release.sh`, checked the way a volunteer uses them: static
//! binaries (`file`), the x86_64 probe measuring a loopback site from an empty root with nothing
//! but itself, the ARM probes under qemu-user, the tarballs' contents, `install.sh`'s signature
//! check, and the amd64 .deb installed with `dpkg -i`, its units verified, purged without trace.
//!
//! Building the artifacts takes minutes, so the tests read them from `WITNESS_RELEASE_DIR`,
//! made by `deploy/release.sh` (`.ci/run` does that first, with a throwaway key in
//! `WITNESS_SIGNING_KEY`). Without it they skip loudly; under `WITNESS_REQUIRE_RELEASE=1`
//! (set by `.ci/run` with the artifacts) that is a failure.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use witness_core::model::{Measurement, Status};
use witness_tests::bins::workspace_root;
use witness_tests::promstack::require_tool;
use witness_tests::release::{release_dir, version};
use witness_tests::volunteer::anchor_of;
use witness_tests::{Site, World, CENSORED_SOURCE};

const MAX_PROBE_BYTES: u64 = 12 * 1024 * 1024;

/// (target, artifact name, what `file` says about the machine).
fn probes() -> Vec<(&'static str, String, &'static str)> {
    let v = version();
    vec![
        (
            "x86_64",
            format!("witness-{v}-x86_64-unknown-linux-musl"),
            "x86-64",
        ),
        (
            "aarch64",
            format!("witness-{v}-aarch64-unknown-linux-musl"),
            "ARM aarch64",
        ),
        (
            "armv7",
            format!("witness-{v}-armv7-unknown-linux-gnueabihf-static"),
            "ARM, EABI5",
        ),
    ]
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert_ok(&out, &format!("{cmd:?}"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn assert_ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}: {}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn binaries_are_static_small_and_named_for_what_they_are() {
    let Some(dir) = release_dir() else { return };
    let Some(file) = require_tool(&["file"], "file") else {
        return;
    };
    let mut all = probes()
        .into_iter()
        .map(|(_, name, machine)| (name, machine, true))
        .collect::<Vec<_>>();
    all.push((
        format!("witness-collector-{}-x86_64-unknown-linux-musl", version()),
        "x86-64",
        false,
    ));
    for (name, machine, is_probe) in all {
        let path = dir.join(&name);
        let desc = run_ok(Command::new(&file).arg("-b").arg(&path));
        assert!(
            desc.contains("statically linked") || desc.contains("static-pie linked"),
            "{name}: {desc}"
        );
        assert!(desc.contains(machine), "{name}: {desc}");
        let size = std::fs::metadata(&path).unwrap().len();
        eprintln!("{name}: {size} bytes");
        if is_probe {
            assert!(size <= MAX_PROBE_BYTES, "{name}: {size} bytes");
        }
    }
    // Every artifact is in SHA256SUMS, and the sums are right.
    let sums = std::fs::read_to_string(dir.join("SHA256SUMS")).unwrap();
    run_ok(
        Command::new("sha256sum")
            .args(["--strict", "-c", "SHA256SUMS"])
            .current_dir(&dir),
    );
    for (_, name, _) in probes() {
        assert!(sums.contains(&format!(" {name}\n")), "{sums}");
        assert!(sums.contains(&format!(" {name}.tar.gz\n")), "{sums}");
    }
    for arch in ["amd64", "arm64", "armhf"] {
        assert!(
            sums.contains(&format!(" witness_{}_{arch}.deb\n", version())),
            "{sums}"
        );
    }
}

/// The lab flags of a run against `world` with paths as seen by the binary.
fn lab_args(world: &World, ca: &str) -> Vec<String> {
    [
        "run",
        "--yes",
        "--no-progress",
        "--json",
        "--no-control",
        "--control-resolver",
        "none",
        "--lab-public-range",
        "127.0.0.0/8",
        "--timeout",
        "5",
        "--extra-ca",
        ca,
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([
        "--resolver".into(),
        world.probe_resolver().to_string(),
        "--source-address".into(),
        CENSORED_SOURCE.to_string(),
        "--anchor".into(),
        anchor_of(world, "fine.test"),
        "--url".into(),
        world.url("fine.test"),
    ])
    .collect()
}

fn one_accessible(out: &Output, what: &str) {
    assert_ok(out, what);
    let ms: Vec<Measurement> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(ms.len(), 1, "{what}");
    assert_eq!(
        ms[0].verdict.status,
        Status::Accessible,
        "{what}: {:?}",
        ms[0].verdict
    );
}

#[test]
fn the_x86_64_probe_measures_from_an_empty_root_with_nothing_but_itself() {
    let Some(dir) = release_dir() else { return };
    let world = World::builder()
        .site(Site::new("fine.test"))
        .start()
        .unwrap();
    let root = tempfile::tempdir().unwrap();
    let (_, name, _) = &probes()[0];
    std::fs::copy(dir.join(name), root.path().join("witness")).unwrap();
    std::fs::copy(world.ca_file(), root.path().join("ca.pem")).unwrap();
    let inside: BTreeSet<String> = std::fs::read_dir(root.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(inside, ["ca.pem", "witness"].map(String::from).into());
    // chroot as root; an unprivileged user namespace otherwise. By absolute path: the child's
    // environment is cleared, PATH included, and chroot lives in /usr/sbin.
    let mut cmd = if nix_is_root() {
        let mut c = Command::new(sbin_tool("chroot"));
        c.arg(root.path());
        c
    } else {
        let mut c = Command::new(sbin_tool("unshare"));
        c.arg("-r").arg(format!("--root={}", root.path().display()));
        c
    };
    cmd.arg("/witness")
        .args(lab_args(&world, "/ca.pem"))
        .env_clear()
        .env("HOME", "/");
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    one_accessible(&out, "empty root");
}

/// The absolute path of a util-linux/coreutils tool, also where only root's PATH has it.
fn sbin_tool(name: &str) -> PathBuf {
    ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} not found in /usr/sbin, /usr/bin, /sbin or /bin"))
}

fn nix_is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

#[test]
fn the_arm_probes_run_and_measure_under_qemu_user() {
    let Some(dir) = release_dir() else { return };
    let world = World::builder()
        .site(Site::new("fine.test"))
        .start()
        .unwrap();
    let ca = world.ca_file().display().to_string();
    for (arch, name, _) in probes().into_iter().skip(1) {
        let qemu = if arch == "aarch64" {
            require_tool(&["qemu-aarch64-static", "qemu-aarch64"], "qemu-user-static")
        } else {
            require_tool(&["qemu-arm-static", "qemu-arm"], "qemu-user-static")
        };
        let Some(qemu) = qemu else { return };
        let bin = dir.join(&name);
        let version = run_ok(Command::new(&qemu).arg(&bin).arg("--version"));
        assert!(version.starts_with("witness "), "{name}: {version}");
        let out = Command::new(&qemu)
            .arg(&bin)
            .args(lab_args(&world, &ca))
            .env("HOME", world.dir())
            .stdin(Stdio::null())
            .output()
            .unwrap();
        one_accessible(&out, &name);
    }
}

#[test]
fn tarballs_hold_the_binary_docs_units_man_page_and_completions() {
    let Some(dir) = release_dir() else { return };
    for (_, name, _) in probes() {
        let list = run_ok(
            Command::new("tar")
                .arg("-tzf")
                .arg(dir.join(format!("{name}.tar.gz"))),
        );
        let files: BTreeSet<&str> = list
            .lines()
            .filter_map(|l| l.strip_prefix(&format!("{name}/")))
            .filter(|l| !l.is_empty() && !l.ends_with('/'))
            .collect();
        for want in [
            "witness",
            "README.md",
            "LICENSE",
            "witness.example.toml",
            "install.sh",
            "witness.1",
            "systemd/witness.service",
            "systemd/witness-run.service",
            "systemd/witness-run.timer",
            "completions/witness.bash",
            "completions/_witness",
            "completions/witness.fish",
        ] {
            assert!(
                files.contains(want),
                "{name}.tar.gz lacks {want}: {files:?}"
            );
        }
    }
}

/// An allowed-signers file for the key release.sh signed with.
fn allowed_signers(dir: &Path) -> Option<PathBuf> {
    let key = std::env::var_os("WITNESS_SIGNING_KEY")?;
    let public = run_ok(Command::new("ssh-keygen").arg("-y").arg("-f").arg(&key));
    let path = dir.join("allowed_signers");
    std::fs::write(
        &path,
        format!("witness-release namespaces=\"file\" {}", public.trim()),
    )
    .unwrap();
    Some(path)
}

#[test]
fn install_sh_installs_a_verified_tarball_and_refuses_an_altered_one() {
    let Some(dir) = release_dir() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let Some(signers) = allowed_signers(tmp.path()) else {
        panic!("WITNESS_SIGNING_KEY is not set: the signature cannot be checked");
    };
    let (_, name, _) = &probes()[0];
    let tarball = dir.join(format!("{name}.tar.gz"));
    let install = |artifact: &Path, destdir: &Path| {
        Command::new("sh")
            .arg(workspace_root().join("deploy/install.sh"))
            .arg("--allowed-signers")
            .arg(&signers)
            .arg(artifact)
            .env("DESTDIR", destdir)
            .env("WITNESS_ACCEPT_CONSENT", "yes")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let dest = tmp.path().join("root");
    let out = install(&tarball, &dest);
    assert_ok(&out, "install.sh of the tarball");
    assert!(String::from_utf8_lossy(&out.stdout).contains("verified"));
    assert!(dest.join("usr/local/bin/witness").is_file());
    assert!(dest.join("etc/systemd/system/witness.service").is_file());

    // The same file name, one byte changed, next to the genuine sums: refused, nothing written.
    let altered_dir = tmp.path().join("altered");
    std::fs::create_dir(&altered_dir).unwrap();
    for f in ["SHA256SUMS", "SHA256SUMS.sig"] {
        std::fs::copy(dir.join(f), altered_dir.join(f)).unwrap();
    }
    let altered = altered_dir.join(format!("{name}.tar.gz"));
    let mut bytes = std::fs::read(&tarball).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&altered, bytes).unwrap();
    let dest2 = tmp.path().join("root2");
    let out = install(&altered, &dest2);
    assert!(!out.status.success(), "altered tarball installed");
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not match"));
    assert!(!dest2.exists(), "files written for an altered tarball");

    // Genuine file, sums edited to match it, but the signature then fails.
    let forged = tmp.path().join("forged");
    std::fs::create_dir(&forged).unwrap();
    std::fs::copy(&altered, forged.join(format!("{name}.tar.gz"))).unwrap();
    std::fs::copy(dir.join("SHA256SUMS.sig"), forged.join("SHA256SUMS.sig")).unwrap();
    let sum = run_ok(Command::new("sha256sum").arg(forged.join(format!("{name}.tar.gz"))));
    let hash = sum.split_whitespace().next().unwrap();
    std::fs::write(
        forged.join("SHA256SUMS"),
        format!("{hash}  {name}.tar.gz\n"),
    )
    .unwrap();
    let out = install(&forged.join(format!("{name}.tar.gz")), &dest2);
    assert!(!out.status.success(), "forged sums accepted");
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a valid signature"));
    assert!(!dest2.exists());
}

/// Every path under the directories a package can touch (names only).
fn snapshot() -> BTreeSet<String> {
    let roots = [
        "/etc",
        "/usr/bin",
        "/usr/share/man/man1",
        "/usr/share/doc",
        "/usr/share/bash-completion",
        "/usr/share/zsh",
        "/usr/share/fish",
        "/lib/systemd/system",
        "/usr/lib/systemd/system",
        "/var/lib",
    ];
    let out = Command::new("find")
        .args(roots.iter().filter(|r| Path::new(r).exists()))
        .args(["-xdev"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        // dpkg's own bookkeeping, and what other programs on this machine change meanwhile.
        .filter(|l| {
            !l.starts_with("/var/lib/dpkg")
                && !l.starts_with("/var/lib/apt")
                && !l.starts_with("/var/lib/postgresql")
                && !l.starts_with("/etc/ld.so.cache")
                && !l.starts_with("/var/lib/systemd/deb-systemd")
        })
        .map(str::to_string)
        .collect()
}

/// Purges the package when dropped, so a failed test leaves no install behind.
struct Purge;
impl Drop for Purge {
    fn drop(&mut self) {
        let _ = Command::new("dpkg").args(["--purge", "witness"]).output();
    }
}

#[test]
fn the_amd64_deb_installs_runs_verifies_and_purges_without_trace() {
    let Some(dir) = release_dir() else { return };
    if !nix_is_root() {
        eprintln!("SKIPPED: installing a .deb needs root");
        return;
    }
    let (Some(_), Some(analyze), Some(script)) = (
        require_tool(&["dpkg"], "dpkg"),
        require_tool(&["systemd-analyze"], "systemd"),
        require_tool(&["script"], "bsdutils"),
    ) else {
        return;
    };
    let installed = Command::new("dpkg-query")
        .args(["-W", "witness"])
        .output()
        .unwrap();
    assert!(
        !installed.status.success(),
        "a witness package is already installed on this machine; this test would remove it"
    );
    let deb = dir.join(format!("witness_{}_amd64.deb", version()));
    let before = snapshot();
    let _purge = Purge;
    let out = Command::new("dpkg")
        .arg("-i")
        .arg(&deb)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_ok(&out, "dpkg -i");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("witness consent --accept --system"),
        "postinst does not say how to give consent"
    );
    let version_text = run_ok(Command::new("/usr/bin/witness").arg("--version"));
    assert!(version_text.starts_with("witness "), "{version_text}");
    run_ok(Command::new("getent").args(["passwd", "witness"]));
    let meta = std::fs::metadata("/etc/witness/config.toml").unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777,
        0o640
    );
    let conffiles = run_ok(Command::new("dpkg-query").args(["-W", "-f=${Conffiles}", "witness"]));
    assert!(
        conffiles.contains("/etc/witness/config.toml"),
        "{conffiles}"
    );
    for f in [
        "/usr/share/man/man1/witness.1.gz",
        "/usr/share/bash-completion/completions/witness",
        "/usr/share/zsh/vendor-completions/_witness",
        "/usr/share/fish/vendor_completions.d/witness.fish",
    ] {
        assert!(Path::new(f).is_file(), "{f} not installed");
    }

    // The installed units verify, as installed.
    let units = [
        "/lib/systemd/system/witness.service",
        "/lib/systemd/system/witness-run.service",
        "/lib/systemd/system/witness-run.timer",
    ];
    let out = Command::new(&analyze)
        .args(["verify", "--man=no"])
        .args(units)
        .output()
        .unwrap();
    let said: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .chain(String::from_utf8_lossy(&out.stderr).lines())
        .filter(|l| l.contains("witness"))
        .map(str::to_string)
        .collect();
    assert!(out.status.success() && said.is_empty(), "{out:?}\n{said:?}");
    for u in &units[..2] {
        let text = std::fs::read_to_string(u).unwrap();
        assert!(
            text.contains("ConditionPathExists=/etc/witness/consent-accepted"),
            "{u} would start without consent"
        );
        assert!(!text.contains("--yes"), "{u} accepts consent by itself");
    }

    // Without consent the service's command refuses to measure.
    let service_env = [
        ("XDG_DATA_HOME", "/var/lib"),
        ("HOME", "/var/lib/witness"),
        ("WITNESS_CONFIG", "/etc/witness/config.toml"),
        ("WITNESS_CONSENT_FILE", "/etc/witness/consent-accepted"),
    ];
    let offline = [
        "run",
        "--no-progress",
        "--no-control",
        "--url",
        "https://one.test/",
        "--resolver",
        "127.0.0.1:9",
        "--anchor",
        "127.0.0.1:9",
        "--control-resolver",
        "none",
        "--timeout",
        "1",
        "--upload",
    ];
    let as_service = || {
        let mut c = Command::new("runuser");
        c.args(["-u", "witness", "--", "env"]);
        for (k, v) in service_env {
            c.arg(format!("{k}={v}"));
        }
        c.arg("/usr/bin/witness").args(offline);
        c.stdin(Stdio::null());
        c
    };
    let out = as_service().output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");

    // The volunteer accepts on a terminal; then the service measures and spools.
    let mut accept = Command::new(&script)
        .args([
            "-q",
            "-e",
            "-c",
            "/usr/bin/witness consent --accept --system",
            "/dev/null",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    accept.stdin.take().unwrap().write_all(b"yes\n").unwrap();
    let out = accept.wait_with_output().unwrap();
    assert_ok(&out, "witness consent --accept --system");
    assert!(Path::new("/etc/witness/consent-accepted").is_file());
    let out = as_service().output().unwrap();
    // Offline, no collector configured: measured and spooled, upload not possible (exit 3).
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let spooled = std::fs::read_dir("/var/lib/witness/spool").unwrap().count();
    assert!(spooled >= 1, "nothing spooled");

    let out = Command::new("dpkg")
        .args(["--purge", "witness"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_ok(&out, "dpkg --purge");
    let after = snapshot();
    let added: Vec<&String> = after.difference(&before).collect();
    let removed: Vec<&String> = before.difference(&after).collect();
    assert!(
        added.is_empty() && removed.is_empty(),
        "purge left {added:?}, removed {removed:?}"
    );
    assert!(!Command::new("getent")
        .args(["passwd", "witness"])
        .output()
        .unwrap()
        .status
        .success());
    assert!(!Command::new("getent")
        .args(["group", "witness"])
        .output()
        .unwrap()
        .status
        .success());
}

/// The packaged units differ from deploy/systemd's only in the binary's path and consent: the
/// hardening is the same, line for line. (Checked without artifacts: it reads the sources.)
#[test]
fn packaged_units_keep_the_hardening_and_wait_for_consent() {
    let directives = |path: &Path| -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_string)
            .collect()
    };
    let root = workspace_root();
    for unit in ["witness.service", "witness-run.service"] {
        let plain = directives(&root.join("deploy/systemd").join(unit));
        let packaged = directives(&root.join("deploy/debian").join(unit));
        let only_plain: Vec<&String> = plain.iter().filter(|l| !packaged.contains(l)).collect();
        let only_packaged: Vec<&String> = packaged.iter().filter(|l| !plain.contains(l)).collect();
        // Only ExecStart differs on the plain side ...
        assert!(
            only_plain
                .iter()
                .all(|l| l.starts_with("ExecStart=/usr/local/bin/witness ")),
            "{unit}: {only_plain:?}"
        );
        // ... and the packaged side adds the consent condition and file.
        let mut added: Vec<&str> = only_packaged.iter().map(|s| s.as_str()).collect();
        added.sort();
        let exec = added
            .iter()
            .position(|l| l.starts_with("ExecStart=/usr/bin/witness "))
            .map(|i| added.remove(i))
            .unwrap_or_else(|| panic!("{unit}: no /usr/bin ExecStart"));
        assert!(!exec.contains("--yes"), "{unit}: {exec}");
        assert_eq!(
            added,
            [
                "ConditionPathExists=/etc/witness/consent-accepted",
                "Environment=WITNESS_CONSENT_FILE=/etc/witness/consent-accepted",
            ],
            "{unit}"
        );
    }
}
