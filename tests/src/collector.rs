//! The real `witness-collector` binary as a child process, on port 0 with a fresh SQLite store.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::bins::collector_bin;

/// A running collector; killed on drop.
#[derive(Debug)]
pub struct CollectorProcess {
    child: Child,
    /// Base URL of the API, e.g. `http://127.0.0.1:41234/`.
    pub url: String,
    /// The config file it runs with.
    pub config: PathBuf,
    /// The SQLite database.
    pub db: PathBuf,
}

impl CollectorProcess {
    /// Start a collector whose store lives in `dir`. `sections` is appended to a config that
    /// sets `[server] listen` (port 0) and `[store] url`; it may hold any other section.
    /// Every test probe registers from 127.0.0.1, where the field has one volunteer per
    /// address, so the per-client registration limit is raised (hostile.rs tests the limit).
    pub fn start(dir: &Path, sections: &str) -> Result<Self> {
        let db = dir.join("collector.db");
        let config = dir.join("collector.toml");
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nregister_per_client_per_hour = 1000\n\n[store]\nurl = \"sqlite://{}\"\n\n{sections}\n",
            db.display()
        );
        std::fs::write(&config, text).context("writing the collector config")?;
        Self::start_with(&config, &db)
    }

    /// A collector on a fresh SQLite store in a new temporary directory (returned: the store
    /// lives as long as it), with `server` as extra `[server]` keys and any further `sections`.
    /// Unlike [`start`](Self::start), registration limits stay at their defaults: the hostile
    /// suites set the ones they test.
    pub fn sqlite(server: &str, sections: &str) -> Result<(tempfile::TempDir, Self)> {
        let dir = tempfile::tempdir().context("creating the collector's directory")?;
        let db = dir.path().join("collector.db");
        let config = dir.path().join("collector.toml");
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n{server}\n\n[store]\nurl = \"sqlite://{}\"\n\n{sections}\n",
            db.display()
        );
        std::fs::write(&config, text).context("writing the collector config")?;
        let c = Self::start_with(&config, &db)?;
        Ok((dir, c))
    }

    /// Start (again) with an existing config and database: a restart after a crash. The
    /// config gets the [`FRESH_PROBES`] keys it does not set itself.
    pub fn start_with(config: &Path, db: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(config).context("reading the collector config")?;
        let fresh = with_fresh_probes(&text);
        if fresh != text {
            std::fs::write(config, fresh).context("writing the collector config")?;
        }
        let mut child = Command::new(collector_bin())
            .arg("--config")
            .arg(config)
            .arg("serve")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("spawning witness-collector")?;
        let stdout = child.stdout.take().context("collector stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("witness-collector listening on ") {
                    let _ = tx.send(url.trim().to_string());
                }
            }
        });
        let url = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(u) => u,
            Err(_) => {
                let _ = child.kill();
                let status = child.wait().ok();
                bail!("the collector did not say where it listens (exit: {status:?})");
            }
        };
        Ok(CollectorProcess {
            child,
            url,
            config: config.to_path_buf(),
            db: db.to_path_buf(),
        })
    }

    /// `host:port` of the API.
    pub fn addr(&self) -> String {
        self.url
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string()
    }

    /// SIGKILL: a crash, with no chance to flush anything.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Peak resident memory of the process so far (`VmHWM`), in KiB.
    pub fn peak_rss_kib(&self) -> Result<u64> {
        proc_status_kib(self.pid(), "VmHWM:")
    }

    /// Current resident memory (`VmRSS`), in KiB.
    pub fn rss_kib(&self) -> Result<u64> {
        proc_status_kib(self.pid(), "VmRSS:")
    }

    /// Still running?
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for CollectorProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// `[aggregation]` keys under which fresh test probes count at once and events follow every
/// change: tests run for seconds, with probes registered a moment ago. Defaults guard against
/// fake probes (issue 20: an established-probe quorum, hysteresis, a cap on transitions, a
/// bound on back-dated records); `tests/tests/hostile_quorum.rs` tests them with values of
/// its own, which this never overrides.
pub const FRESH_PROBES: &[(&str, &str)] = &[
    ("probe_min_age", "\"0s\""),
    ("probe_min_hours", "0"),
    ("min_event", "\"0s\""),
    ("min_gap", "\"0s\""),
    ("max_transitions_per_hour", "0"),
    ("max_backfill", "\"30d\""),
];

/// `config` with each [`FRESH_PROBES`] key it does not set added to its `[aggregation]`
/// section (made if missing).
pub fn with_fresh_probes(config: &str) -> String {
    let sets = |key: &str| {
        config.lines().any(|l| {
            l.trim_start()
                .strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        })
    };
    let missing: String = FRESH_PROBES
        .iter()
        .filter(|(k, _)| !sets(k))
        .map(|(k, v)| format!("{k} = {v}\n"))
        .collect();
    if missing.is_empty() {
        return config.to_string();
    }
    match config.find("[aggregation]\n") {
        Some(i) => {
            let at = i + "[aggregation]\n".len();
            format!("{}{missing}{}", &config[..at], &config[at..])
        }
        None => format!("{config}\n[aggregation]\n{missing}"),
    }
}

/// A `kB` line of `/proc/PID/status`.
fn proc_status_kib(pid: u32, key: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with(key))
        .with_context(|| format!("no {key} in /proc/{pid}/status"))?;
    line[key.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .with_context(|| format!("bad {key} line {line:?}"))
}

/// A blocking GET of `url`; returns status and body text.
pub fn get(url: &str) -> Result<(u16, String)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let resp = reqwest::Client::new()
            .get(url)
            .timeout(Duration::from_secs(30))
            .send()
            .await?;
        let status = resp.status().as_u16();
        Ok((status, resp.text().await?))
    })
}
