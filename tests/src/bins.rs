//! The real binaries under test, built once per test process.
//!
//! Cargo builds binaries only for the package under test, so this crate builds the probe and
//! the collector itself, with the same cargo and profile, and asks cargo where it put them
//! (which honours `CARGO_TARGET_DIR` and any configured target directory).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// The `witness` probe binary.
pub fn witness_bin() -> PathBuf {
    binaries().0.clone()
}

/// The `witness-collector` binary.
pub fn collector_bin() -> PathBuf {
    binaries().1.clone()
}

/// The `witness-reflector` binary (#23's protocol reflector).
pub fn reflector_bin() -> PathBuf {
    binaries().2.clone()
}

/// The binaries, built in one `cargo build --workspace --bins`: exactly what
/// scripts/test.sh runs first, so here it is a no-op. (Building one `--bin` at a time resolves
/// features per package and would rebuild shared dependencies back and forth.)
fn binaries() -> &'static (PathBuf, PathBuf, PathBuf) {
    static BINS: OnceLock<(PathBuf, PathBuf, PathBuf)> = OnceLock::new();
    BINS.get_or_init(|| {
        let built = build();
        let find = |name: &str| {
            built
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, p)| p.clone())
                .unwrap_or_else(|| panic!("cargo built no executable named {name}"))
        };
        (
            find("witness"),
            find("witness-collector"),
            find("witness-reflector"),
        )
    })
}

/// The workspace root (this crate lives in `<root>/tests`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lives inside the workspace")
        .to_path_buf()
}

/// Runs `cargo build --workspace --bins` and returns (name, path) of every executable; panics
/// with cargo's diagnostics if the build fails (a test cannot go on without its binaries).
fn build() -> Vec<(String, PathBuf)> {
    let mut command = cargo_command();
    command
        .args(["build", "--message-format=json-render-diagnostics"])
        .args(["--workspace", "--bins"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if !cfg!(debug_assertions) {
        command.arg("--release");
    }
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run cargo to build the binaries: {e}"));
    assert!(
        output.status.success(),
        "cargo build of the binaries failed"
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|message| message["reason"] == "compiler-artifact")
        .filter_map(|message| {
            let name = message["target"]["name"].as_str()?.to_string();
            let path = message["executable"].as_str().map(PathBuf::from)?;
            Some((name, path))
        })
        .collect()
}

/// `cargo` at the workspace root, without the per-crate `CARGO_*` variables that `cargo test`
/// gives this process: build scripts (ring's, cc's) track those with rerun-if-env-changed, so
/// passing them on would rebuild ring and everything above it on every test run.
pub fn cargo_command() -> Command {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command.current_dir(workspace_root());
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        let per_crate = key.starts_with("CARGO_PKG_")
            || key.starts_with("CARGO_BIN_")
            || key.starts_with("CARGO_CFG_")
            || matches!(
                key.as_ref(),
                "CARGO_MANIFEST_DIR"
                    | "CARGO_MANIFEST_PATH"
                    | "CARGO_MANIFEST_LINKS"
                    | "CARGO_CRATE_NAME"
                    | "CARGO_PRIMARY_PACKAGE"
                    | "CARGO_TARGET_TMPDIR"
                    | "OUT_DIR"
            );
        if per_crate {
            command.env_remove(key.as_ref());
        }
    }
    command
}
