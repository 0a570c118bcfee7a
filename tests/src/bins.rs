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
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| build("witness")).clone()
}

/// The `witness-collector` binary.
pub fn collector_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| build("witness-collector")).clone()
}

/// The workspace root (this crate lives in `<root>/tests`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lives inside the workspace")
        .to_path_buf()
}

/// Runs `cargo build --workspace --bin bin` and returns the executable's path; panics with
/// cargo's diagnostics if the build fails (a test cannot go on without its binary).
fn build(bin: &str) -> PathBuf {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(workspace_root())
        .args(["build", "--message-format=json-render-diagnostics"])
        // --workspace: the same feature unification as `cargo build --workspace --bins` (run
        // first by scripts/test.sh), so this is a no-op there instead of a rebuild of every
        // dependency with another feature set.
        .args(["--workspace", "--bin", bin])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if !cfg!(debug_assertions) {
        command.arg("--release");
    }
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run cargo to build {bin}: {e}"));
    assert!(output.status.success(), "cargo build of {bin} failed");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|message| message["reason"] == "compiler-artifact")
        .filter(|message| message["target"]["name"] == bin)
        .find_map(|message| message["executable"].as_str().map(PathBuf::from))
        .unwrap_or_else(|| panic!("cargo built {bin} but reported no executable"))
}
