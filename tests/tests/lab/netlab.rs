//! Network namespaces and the processes in them, owned by one guard.
//!
//! Every namespace is named `wlab-<pid>-<n>-<role>` (the test process's pid), every long-running
//! process runs under `lab-origin guard` (or is `lab-origin serve`), which dies when its stdin
//! closes. Dropping [`Lab`] closes those stdins, waits, kills what is left by its own `Child`
//! handle, and deletes the namespaces it created, on success, failure and panic alike. If the
//! test process itself is killed, the guards see their stdin close and kill their children; the
//! next run deletes the empty namespaces left behind by a dead pid.

use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Prefix of every namespace this lab creates.
pub const NS_PREFIX: &str = "wlab-";

/// The test's own settings a lab process must not inherit (a developer's token or config would
/// otherwise leak into the lab's probes).
pub const NOT_INHERITED: [&str; 5] = [
    "WITNESS_CONFIG",
    "WITNESS_TOKEN",
    "WITNESS_CONTROL_TOKEN",
    "XDG_DATA_HOME",
    "XDG_CONFIG_HOME",
];

/// The helper binary (`tests/src/bin/lab-origin.rs`), built by cargo for this test.
pub fn lab_origin_bin() -> &'static str {
    env!("CARGO_BIN_EXE_lab-origin")
}

/// Why the lab cannot run here, if it cannot: not root, or `ip netns` unusable.
pub fn cannot_run() -> Option<String> {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_owned))
        })
        .unwrap_or_default();
    if uid != "0" {
        return Some(format!("not root (uid {uid})"));
    }
    match Command::new("ip").args(["netns", "list"]).output() {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(format!(
            "`ip netns list` failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Some(format!("cannot run `ip`: {e}")),
    }
}

/// Tools the lab needs, with the Debian package that provides each.
pub const TOOLS: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("tc", "iproute2"),
    ("nft", "nftables"),
    ("iptables", "iptables"),
    ("dnsmasq", "dnsmasq-base"),
    ("unbound", "unbound"),
];

/// The tools of [`TOOLS`] that are missing, as "tool (package)".
pub fn missing_tools() -> Vec<String> {
    TOOLS
        .iter()
        .filter(|(tool, _)| {
            !std::env::var_os("PATH")
                .map(|paths| std::env::split_paths(&paths).any(|d| d.join(tool).is_file()))
                .unwrap_or(false)
                && !["/usr/sbin", "/sbin"]
                    .iter()
                    .any(|d| Path::new(d).join(tool).is_file())
        })
        .map(|(tool, package)| format!("{tool} ({package})"))
        .collect()
}

/// Writes to the real stderr, past the test harness's capture: a lab's table is its report
/// and must be seen even when the test passes.
pub fn report(text: &str) {
    let _ = writeln!(std::io::stderr(), "{text}");
}

/// Whether a lab (`what`, e.g. "the hop lab") can run here. Without root or `ip netns` it skips
/// loudly, saying how CI runs it (`rerun`); a missing tool is a skip too, or a failure under
/// `WITNESS_REQUIRE_TOOLS=1`.
pub fn ready(what: &str, rerun: &str) -> bool {
    if let Some(why) = cannot_run() {
        report(&format!(
            "\n*** SKIPPED: {what} needs root and `ip netns` ({why}). CI runs it as root: `{rerun}`. ***\n"
        ));
        return false;
    }
    let missing = missing_tools();
    if !missing.is_empty() {
        let message = format!(
            "{what} needs {} (apt-get install -y dnsmasq-base unbound nftables iptables iproute2)",
            missing.join(", ")
        );
        if std::env::var("WITNESS_REQUIRE_TOOLS").as_deref() == Ok("1") {
            panic!("{message}");
        }
        report(&format!("\n*** SKIPPED: {message} ***\n"));
        return false;
    }
    true
}

/// A process the lab started and will stop.
struct Daemon {
    label: String,
    child: Child,
    /// Closing it tells the process (a guard or `serve`) to stop.
    stdin: Option<ChildStdin>,
}

/// The guard: the lab's namespaces, processes and files.
pub struct Lab {
    /// Unique per lab: `wlab-<pid>-<n>`.
    pub id: String,
    dir: tempfile::TempDir,
    namespaces: Mutex<Vec<String>>,
    daemons: Mutex<Vec<Daemon>>,
}

/// Locks ignoring poisoning: a panicking scenario thread must not stop the teardown.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl Lab {
    /// A new, empty lab; first removes empty namespaces left by dead runs of this lab.
    pub fn new() -> Result<Self> {
        sweep_stale_namespaces();
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let id = format!(
            "{NS_PREFIX}{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let dir = tempfile::Builder::new()
            .prefix("witness-lab-")
            .tempdir()
            .context("creating the lab directory")?;
        Ok(Self {
            id,
            dir,
            namespaces: Mutex::new(Vec::new()),
            daemons: Mutex::new(Vec::new()),
        })
    }

    /// A path in the lab's directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Creates namespace `<id>-<role>` with its loopback up; returns its name.
    pub fn netns(&self, role: &str) -> Result<String> {
        let name = format!("{}-{role}", self.id);
        run(Command::new("ip").args(["netns", "add", &name]))?;
        lock(&self.namespaces).push(name.clone());
        self.ip(&name, &["link", "set", "lo", "up"])?;
        Ok(name)
    }

    /// A veth pair created directly inside two namespaces (the host never sees it), each end
    /// with an address (CIDR) and up.
    pub fn link(&self, a: (&str, &str, &str), b: (&str, &str, &str)) -> Result<()> {
        let (a_ns, a_if, _) = a;
        let (b_ns, b_if, _) = b;
        run(Command::new("ip").args([
            "link", "add", a_if, "netns", a_ns, "type", "veth", "peer", "name", b_if, "netns", b_ns,
        ]))?;
        for (ns, ifname, addr) in [a, b] {
            self.ip(ns, &["addr", "add", addr, "dev", ifname])?;
            self.ip(ns, &["link", "set", ifname, "up"])?;
        }
        Ok(())
    }

    /// `ip -n NS ARGS`.
    pub fn ip(&self, ns: &str, args: &[&str]) -> Result<String> {
        run(Command::new("ip").arg("-n").arg(ns).args(args))
    }

    /// Runs a program inside a namespace and returns its stdout; an error carries stderr.
    pub fn exec(&self, ns: &str, program: &str, args: &[&str]) -> Result<String> {
        run(Command::new("ip")
            .args(["netns", "exec", ns, program])
            .args(args))
    }

    /// Loads an nftables script into a namespace.
    pub fn nft(&self, ns: &str, script: &str) -> Result<()> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = self.path(&format!("{ns}-{n}.nft"));
        std::fs::write(&path, script)?;
        self.exec(ns, "nft", &["-f", &path.to_string_lossy()])
            .with_context(|| format!("nft script:\n{script}"))?;
        Ok(())
    }

    /// Sets a sysctl inside a namespace (`/proc/sys` is per network namespace).
    pub fn sysctl(&self, ns: &str, key: &str, value: &str) -> Result<()> {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        self.exec(ns, "sh", &["-c", &format!("echo {value} > {path}")])?;
        Ok(())
    }

    /// Starts a long-running program (`argv[0]`) in a namespace under `lab-origin guard`,
    /// stdout and stderr to `<label>.out` / `<label>.err` in the lab directory.
    pub fn spawn(
        &self,
        ns: &str,
        label: &str,
        argv: &[String],
        envs: &[(&str, String)],
    ) -> Result<()> {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", ns, lab_origin_bin(), "guard", "--"])
            .args(argv);
        for (key, value) in envs {
            command.env(key, value);
        }
        self.start(label, command)
    }

    /// Starts `lab-origin serve CONFIG` in a namespace and waits until it is ready.
    pub fn serve(&self, ns: &str, label: &str, config: &serde_json::Value) -> Result<()> {
        let path = self.path(&format!("{label}.json"));
        std::fs::write(&path, serde_json::to_vec_pretty(config)?)?;
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", ns, lab_origin_bin(), "serve"])
            .arg(&path);
        self.start(label, command)?;
        self.wait_for_output(label, "ready", Duration::from_secs(20))?;
        Ok(())
    }

    fn start(&self, label: &str, mut command: Command) -> Result<()> {
        let out = File::create(self.path(&format!("{label}.out")))?;
        let err = File::create(self.path(&format!("{label}.err")))?;
        command.stdin(Stdio::piped()).stdout(out).stderr(err);
        for var in NOT_INHERITED {
            command.env_remove(var);
        }
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {label}: {command:?}"))?;
        let stdin = child.stdin.take();
        lock(&self.daemons).push(Daemon {
            label: label.to_owned(),
            child,
            stdin,
        });
        Ok(())
    }

    /// Waits until `<label>.out` or `<label>.err` contains `needle`; fails early if the
    /// process exited.
    pub fn wait_for_output(&self, label: &str, needle: &str, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            if self.log(label).contains(needle) {
                return Ok(());
            }
            if let Some(status) = self.exited(label)? {
                bail!(
                    "{label} exited ({status}) before printing {needle:?}:\n{}",
                    self.log(label)
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "{label} did not print {needle:?} within {limit:?}:\n{}",
                    self.log(label)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the process `label` exits by itself; its exit status.
    pub fn wait_exit(&self, label: &str, limit: Duration) -> Result<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.exited(label)? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!("{label} still runs after {limit:?}:\n{}", self.log(label));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn exited(&self, label: &str) -> Result<Option<std::process::ExitStatus>> {
        let mut daemons = lock(&self.daemons);
        let daemon = daemons
            .iter_mut()
            .find(|d| d.label == label)
            .with_context(|| format!("no process {label}"))?;
        Ok(daemon.child.try_wait()?)
    }

    /// What the process `label` wrote (stdout, then stderr).
    pub fn log(&self, label: &str) -> String {
        let read = |ext: &str| {
            std::fs::read_to_string(self.path(&format!("{label}.{ext}"))).unwrap_or_default()
        };
        format!("{}{}", read("out"), read("err"))
    }

    /// Stops every process (closing its stdin, then killing it) and deletes every namespace.
    fn teardown(&mut self) {
        let mut daemons = lock(&self.daemons);
        for daemon in daemons.iter_mut() {
            daemon.stdin.take();
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        for daemon in daemons.iter_mut() {
            while Instant::now() < deadline {
                if !matches!(daemon.child.try_wait(), Ok(None)) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if matches!(daemon.child.try_wait(), Ok(None)) {
                let _ = daemon.child.kill();
            }
            let _ = daemon.child.wait();
        }
        daemons.clear();
        for ns in lock(&self.namespaces).drain(..).rev() {
            let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.teardown();
        if std::env::var_os("WITNESS_LAB_KEEP").is_some() {
            self.dir.disable_cleanup(true);
            eprintln!("lab: kept {} (WITNESS_LAB_KEEP)", self.dir.path().display());
        }
    }
}

/// Runs a short command and returns its stdout; failing with its stderr.
pub fn run(command: &mut Command) -> Result<String> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {command:?}"))?;
    check(command, &output)
}

fn check(command: &Command, output: &Output) -> Result<String> {
    if !output.status.success() {
        bail!(
            "{command:?} failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim(),
            String::from_utf8_lossy(&output.stdout).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Runs a command to completion with a time limit (killed after it), stdout and stderr to
/// files; returns (exit status, stdout, stderr). Its stdin stays open until it ends: a
/// `lab-origin guard` command kills its child if this process dies.
pub fn run_with_limit(
    mut command: Command,
    logs: &Path,
    limit: Duration,
) -> Result<(std::process::ExitStatus, String, String)> {
    let out_path = logs.with_extension("out");
    let err_path = logs.with_extension("err");
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(File::create(&out_path)?)
        .stderr(File::create(&err_path)?)
        .spawn()
        .with_context(|| format!("cannot run {command:?}"))?;
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            // Closing stdin makes a guard kill its child; then the guard itself goes.
            drop(child.stdin.take());
            std::thread::sleep(Duration::from_millis(500));
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "{command:?} did not finish within {limit:?}; stderr:\n{}",
                std::fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Ok((
        status,
        std::fs::read_to_string(&out_path)?,
        std::fs::read_to_string(&err_path)?,
    ))
}

/// Deletes namespaces of this lab whose creating process is gone and that hold no process.
fn sweep_stale_namespaces() {
    let Ok(output) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(pid) = name
            .strip_prefix(NS_PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let empty = Command::new("ip")
            .args(["netns", "pids", name])
            .output()
            .map(|o| o.status.success() && o.stdout.is_empty())
            .unwrap_or(false);
        if empty {
            eprintln!("lab: deleting {name}, left behind by a run that died");
            let _ = Command::new("ip").args(["netns", "del", name]).output();
        }
    }
}
