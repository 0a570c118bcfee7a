//! Real Prometheus and Alertmanager processes (Debian's packages) for tests of the shipped
//! configuration, rules and dashboards.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::collector::get;

/// A tool's path, or `None` with a loud message; with `WITNESS_REQUIRE_TOOLS=1` (CI) a missing
/// tool is a panic instead.
pub fn require_tool(names: &[&str], package: &str) -> Option<PathBuf> {
    for name in names {
        for dir in ["/usr/bin", "/usr/local/bin", "/bin"] {
            let p = Path::new(dir).join(name);
            if p.exists() {
                return Some(p);
            }
        }
    }
    let msg = format!("SKIPPED: {} not found (Debian package {package})", names[0]);
    if std::env::var("WITNESS_REQUIRE_TOOLS").as_deref() == Ok("1") {
        panic!("{msg}, and WITNESS_REQUIRE_TOOLS=1");
    }
    eprintln!("{msg}");
    None
}

/// A free loopback port (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// A child process killed on drop.
#[derive(Debug)]
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_ready(url: &str, what: &str, child: &mut Child) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok((200, _)) = get(url) {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            bail!("{what} exited early: {status}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("{what} not ready at {url}")
}

/// A running Prometheus.
#[derive(Debug)]
pub struct Prometheus {
    _child: Guard,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
}

impl Prometheus {
    /// Start with `config` (its rule files relative to it); data in `data_dir`.
    pub fn start(binary: &Path, config: &Path, data_dir: &Path) -> Result<Self> {
        let port = free_port();
        let mut child = Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", data_dir.display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting prometheus")?;
        let url = format!("http://127.0.0.1:{port}");
        wait_ready(&format!("{url}/-/ready"), "prometheus", &mut child)?;
        Ok(Prometheus {
            _child: Guard(child),
            url,
        })
    }

    /// An instant query; returns `data.result`, or the error Prometheus gave.
    pub fn query(&self, expr: &str) -> Result<Vec<Value>> {
        let url = format!(
            "{}/api/v1/query?query={}",
            self.url,
            url::form_urlencoded::byte_serialize(expr.as_bytes()).collect::<String>()
        );
        let (status, body) = get(&url)?;
        let v: Value = serde_json::from_str(&body).with_context(|| body.clone())?;
        if status != 200 || v["status"] != "success" {
            bail!("query {expr:?} failed: {status} {body}");
        }
        Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
    }

    /// Poll `expr` until it returns a non-empty result, or `timeout`.
    pub fn wait_for(&self, expr: &str, timeout: Duration) -> Result<Vec<Value>> {
        let deadline = Instant::now() + timeout;
        loop {
            let r = self.query(expr)?;
            if !r.is_empty() || Instant::now() > deadline {
                return Ok(r);
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

/// A running Alertmanager (no clustering).
#[derive(Debug)]
pub struct Alertmanager {
    _child: Guard,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// `127.0.0.1:PORT`, for Prometheus's targets.
    pub addr: String,
}

impl Alertmanager {
    /// Start with `config`; state in `data_dir`.
    pub fn start(binary: &Path, config: &Path, data_dir: &Path) -> Result<Self> {
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let mut child = Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.path={}", data_dir.display()))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--cluster.listen-address=")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting alertmanager")?;
        let url = format!("http://{addr}");
        wait_ready(&format!("{url}/-/ready"), "alertmanager", &mut child)?;
        Ok(Alertmanager {
            _child: Guard(child),
            url,
            addr,
        })
    }
}

/// Copy a directory tree (the shipped configs, to rewrite addresses in a test's copy).
pub fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let dest = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &dest)?;
        } else {
            std::fs::copy(entry.path(), dest)?;
        }
    }
    Ok(())
}
