//! The artifacts of `deploy/release.sh`, found the same way by every test that checks them
//! (`release_artifacts.rs`, `android_root.rs`, `windows_wine.rs`).
//!
//! Building them takes minutes, so the tests read them from `WITNESS_RELEASE_DIR`, made by
//! `deploy/release.sh` (`.ci/run` does that first, with a throwaway key in
//! `WITNESS_SIGNING_KEY`). Without it they skip loudly; under `WITNESS_REQUIRE_RELEASE=1` (set by
//! `.ci/run` with the artifacts) that is a failure.

use std::path::{Path, PathBuf};

use crate::bins::workspace_root;

/// The workspace version, as release.sh puts it in the artifacts' names.
pub fn version() -> String {
    let manifest = std::fs::read_to_string(workspace_root().join("Cargo.toml"))
        .expect("reading the workspace Cargo.toml");
    manifest
        .lines()
        .skip_while(|l| l.trim() != "[workspace.package]")
        .find_map(|l| l.strip_prefix("version = "))
        .map(|v| v.trim_matches('"').to_string())
        .expect("workspace version")
}

/// The directory release.sh wrote, or None after a loud skip.
pub fn release_dir() -> Option<PathBuf> {
    locate(None)
}

/// One artifact: the file named by the environment variable `override_var` when set (a quick
/// local build), else `name` in the release directory; None after a loud skip.
pub fn artifact(override_var: &str, name: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(override_var).filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    locate(Some(override_var)).map(|d| d.join(name))
}

fn locate(override_var: Option<&str>) -> Option<PathBuf> {
    match std::env::var_os("WITNESS_RELEASE_DIR") {
        Some(d) if Path::new(&d).join("SHA256SUMS").is_file() => Some(PathBuf::from(d)),
        _ => {
            let or = override_var
                .map(|v| format!(", or set {v} to a build"))
                .unwrap_or_default();
            let msg = format!(
                "SKIPPED: no release artifacts: run `deploy/release.sh DIR` and set \
                 WITNESS_RELEASE_DIR=DIR (and WITNESS_SIGNING_KEY){or}"
            );
            if std::env::var("WITNESS_REQUIRE_RELEASE").as_deref() == Ok("1") {
                panic!("{msg}, and WITNESS_REQUIRE_RELEASE=1");
            }
            eprintln!("\n!!!!!!!! {msg} !!!!!!!!\n");
            None
        }
    }
}
