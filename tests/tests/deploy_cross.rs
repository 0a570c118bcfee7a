//! The probe for a Raspberry Pi: cross-built for aarch64 with Debian's cross gcc, then run under
//! qemu-user: `witness --version`, and `witness run` on a local list against loopback servers
//! (qemu-user passes the network system calls to this machine's kernel).

use std::path::PathBuf;
use std::process::Command;

use witness_core::model::{Measurement, Status};
use witness_tests::bins::cargo_command;
use witness_tests::promstack::require_tool;
use witness_tests::{Behaviour, Site, World, CENSORED_SOURCE};

const TARGET: &str = "aarch64-unknown-linux-gnu";

fn target_installed() -> bool {
    let ok = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.trim() == TARGET)
        })
        .unwrap_or(false);
    if !ok {
        let msg =
            format!("SKIPPED: rust target {TARGET} not installed (rustup target add {TARGET})");
        if std::env::var("WITNESS_REQUIRE_TOOLS").as_deref() == Ok("1") {
            panic!("{msg}, and WITNESS_REQUIRE_TOOLS=1");
        }
        eprintln!("{msg}");
    }
    ok
}

/// Build the probe for aarch64 (dev profile: the test is about the binary running, and a
/// release build with LTO takes several times longer on 2 cores).
fn build_aarch64() -> PathBuf {
    let out = cargo_command()
        .args(["build", "--locked", "-p", "witness", "--bin", "witness"])
        .args([
            "--target",
            TARGET,
            "--message-format=json-render-diagnostics",
        ])
        .env(
            "CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER",
            "aarch64-linux-gnu-gcc",
        )
        .env("CC_aarch64_unknown_linux_gnu", "aarch64-linux-gnu-gcc")
        .env("AR_aarch64_unknown_linux_gnu", "aarch64-linux-gnu-ar")
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("run cargo");
    assert!(out.status.success(), "cross build failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "witness")
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .expect("an aarch64 witness executable")
}

#[test]
fn the_aarch64_probe_runs_under_qemu() {
    let (Some(qemu), Some(_gcc)) = (
        require_tool(&["qemu-aarch64-static", "qemu-aarch64"], "qemu-user-static"),
        require_tool(&["aarch64-linux-gnu-gcc"], "gcc-aarch64-linux-gnu"),
    ) else {
        return;
    };
    if !target_installed() {
        return;
    }
    let bin = build_aarch64();
    let file = Command::new("file").arg(&bin).output();
    if let Ok(f) = file {
        let text = String::from_utf8_lossy(&f.stdout);
        assert!(text.contains("aarch64") || text.contains("ARM"), "{text}");
    }
    let qemu_cmd = || {
        let mut c = Command::new(&qemu);
        c.args(["-L", "/usr/aarch64-linux-gnu"]).arg(&bin);
        c
    };
    let version = qemu_cmd().arg("--version").output().unwrap();
    assert!(version.status.success(), "{version:?}");
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("witness "));

    let world = World::builder()
        .site(Site::new("fine.test"))
        .site(Site::new("news.test").censored(Behaviour::Mitm))
        .start()
        .unwrap();
    let list = world.write_list("list.csv").unwrap();
    let url = world.url("fine.test");
    let port = url.rsplit(':').next().unwrap().trim_end_matches('/');
    let out = qemu_cmd()
        .args(["run", "--yes", "--no-progress", "--json", "--no-control"])
        .arg("--list")
        .arg(&list)
        .args(["--resolver", &world.probe_resolver().to_string()])
        .arg("--extra-ca")
        .arg(world.ca_file())
        .args([
            "--lab-public-range",
            "127.0.0.0/8",
            "--control-resolver",
            "none",
        ])
        .args(["--source-address", &CENSORED_SOURCE.to_string()])
        .args([
            "--anchor",
            &format!("{}:{port}", world.site_ip("fine.test")),
        ])
        .args(["--timeout", "5"])
        .env("HOME", world.dir())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ms: Vec<Measurement> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(ms.len(), 2);
    for m in &ms {
        let want = if m.domain == "fine.test" {
            Status::Accessible
        } else {
            Status::Blocked
        };
        assert_eq!(m.verdict.status, want, "{}: {:?}", m.domain, m.verdict);
    }
}
