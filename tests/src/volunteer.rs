//! A volunteer's probe: its own home directory (credentials, spool), source address and config
//! file, running the real `witness` binary against a [`World`].

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{Command, Output};

use witness_core::model::{Measurement, Method, Status};

use crate::bins::witness_bin;
use crate::world::World;

/// One probe installation.
#[derive(Debug)]
pub struct Probe {
    /// Its home directory (HOME for the binary).
    pub home: tempfile::TempDir,
    /// Its config file.
    pub config: PathBuf,
}

impl Probe {
    /// A probe on network `asn` (country KZ) measuring from `source`, uploading to (and using
    /// as control) `collector_url`, with `anchor` (`host:port`) as its connectivity anchor.
    pub fn new(
        world: &World,
        source: IpAddr,
        asn: u32,
        collector_url: &str,
        anchor: &str,
    ) -> Probe {
        Self::with_sections(world, source, asn, collector_url, anchor, "")
    }

    /// A probe on a network that is cut off: its only anchor and its control are `dead`, a
    /// `host:port` where nothing listens, so every verdict is `offline`.
    pub fn cut_off(
        world: &World,
        source: IpAddr,
        asn: u32,
        collector_url: &str,
        dead: &str,
    ) -> Probe {
        let control = format!("[control]\nurl = \"http://{dead}/\"\n");
        Self::with_sections(world, source, asn, collector_url, dead, &control)
    }

    fn with_sections(
        world: &World,
        source: IpAddr,
        asn: u32,
        collector_url: &str,
        anchor: &str,
        extra: &str,
    ) -> Probe {
        let home = tempfile::tempdir().expect("temp dir");
        let config = home.path().join("witness.toml");
        let text = format!(
            "consent = true\n\
             [probe]\nasn = {asn}\ncountry = \"KZ\"\n\
             [run]\ntimeout_secs = 3.0\n\
             [network]\nresolver = \"{resolver}\"\ncontrol_resolver = \"none\"\n\
             source_address = \"{source}\"\nextra_ca_files = [\"{ca}\"]\n\
             lab_public_ranges = [\"127.0.0.0/8\"]\nanchors = [\"{anchor}\"]\n\
             {extra}\
             [collector]\nurl = \"{collector_url}\"\nspool_dir = \"{spool}\"\n",
            resolver = world.probe_resolver(),
            ca = world.ca_file().display(),
            spool = home.path().join("spool").display(),
        );
        std::fs::write(&config, text).expect("write probe config");
        Probe { home, config }
    }

    /// One run of `list`, uploaded; the measurements it printed.
    pub fn run_and_upload(&self, list: &str) -> Vec<Measurement> {
        ok(&self.witness(&["run", "--list", list, "--upload", "--json", "--no-progress"]))
            .lines()
            .map(|l| serde_json::from_str(l).expect("a measurement per line"))
            .collect()
    }

    /// The spool directory.
    pub fn spool(&self) -> PathBuf {
        self.home.path().join("spool")
    }

    /// Run `witness --config CONFIG ARGS...` and wait.
    pub fn witness(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run witness")
    }

    /// The command, for spawning (e.g. the daemon).
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(witness_bin());
        cmd.arg("--config")
            .arg(&self.config)
            .args(args)
            .env("HOME", self.home.path())
            .env_remove("XDG_DATA_HOME")
            .env_remove("WITNESS_CONFIG");
        cmd
    }

    /// Measurements waiting in the spool.
    pub fn spooled(&self) -> usize {
        // Records held back until the probe knows its public address wait in `held/`.
        let count = |dir: std::path::PathBuf| {
            std::fs::read_dir(dir)
                .map(|rd| {
                    rd.flatten()
                        .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
                        .count()
                })
                .unwrap_or(0)
        };
        count(self.spool()) + count(self.spool().join("held"))
    }
}

/// `host:port` of a world site's HTTPS listener, for use as a connectivity anchor.
pub fn anchor_of(world: &World, site: &str) -> String {
    let url = world.url(site);
    let port = url
        .rsplit(':')
        .next()
        .unwrap_or_default()
        .trim_end_matches('/');
    format!("{}:{port}", world.site_ip(site))
}

/// Assert success and return stdout.
pub fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An expected verdict: (domain, status, method).
pub type Expected<'a> = (&'a str, Status, Option<Method>);

/// Every expected verdict that `by_domain` does not match, one line each with the verdict's
/// reason and evidence (empty when all match).
pub fn verdict_mismatches(
    by_domain: &HashMap<String, Measurement>,
    expected: &[Expected<'_>],
) -> Vec<String> {
    let mut out = Vec::new();
    for (domain, status, method) in expected {
        let Some(m) = by_domain.get(*domain) else {
            out.push(format!("{domain}: no measurement"));
            continue;
        };
        if m.verdict.status != *status || m.verdict.method != *method {
            out.push(format!(
                "{domain}: expected {status:?}/{method:?}, got {:?}/{:?}: {} {:?} control_failure={:?}",
                m.verdict.status,
                m.verdict.method,
                m.verdict.reason,
                m.verdict.evidence,
                m.control_failure
            ));
        }
    }
    out
}

/// `[control]` for a loopback lab: the world's honest resolver and CA, private targets allowed,
/// short step timeouts; `anonymous` also accepts requests without a probe token.
pub fn lab_control_section(world: &World, anonymous: bool) -> String {
    format!(
        "[control]\nallow_anonymous = {anonymous}\nallow_private = true\n\
         lab_public_ranges = [\"127.0.0.0/8\"]\nresolver = \"{}\"\n\
         extra_ca_files = [\"{}\"]\nstep_timeout_secs = 3.0\n",
        world.control_resolver(),
        world.ca_file().display()
    )
}
