//! A real PostgreSQL server for tests: `initdb` into a temporary directory, started on a free
//! loopback port with its unix socket inside that directory, a fresh database per test, and
//! everything stopped and removed afterwards.
//!
//! `initdb` refuses to run as root, so as root (CI) every server command runs as the
//! `postgres` user (`runuser -u postgres --`) in a directory handed to that user. The binaries
//! are looked up in `$WITNESS_PG_BIN`, then `/usr/lib/postgresql/*/bin` (Debian), then `PATH`.
//! When they are missing, [`shared`] and [`PgServer::available`] say so loudly and return
//! `None` so the caller can skip; with `WITNESS_REQUIRE_TOOLS=1` (CI) that is a panic instead.
//!
//! One server per test process ([`shared`]) serves every test, each with its own database
//! ([`PgServer::database`], dropped with `DROP DATABASE ... WITH (FORCE)`). The shared server is
//! never dropped (statics are not), so a watchdog process stops it and removes its directory
//! once the test process is gone, even after a panic or a kill. Servers made with
//! [`PgServer::start`] stop on drop as well.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// How a server is tuned.
#[derive(Clone, Debug)]
pub struct PgOptions {
    /// Keep `fsync`, `synchronous_commit` and `full_page_writes` on (benchmarks). Tests turn
    /// them off: the server is never crashed, and a test suite does not need power-cut safety.
    pub durable: bool,
    /// `max_connections`.
    pub max_connections: u32,
    /// Extra `-c name=value` settings.
    pub settings: Vec<(String, String)>,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            durable: false,
            max_connections: 300,
            settings: Vec::new(),
        }
    }
}

/// A running PostgreSQL server (a postmaster and its data directory).
#[derive(Debug)]
pub struct PgServer {
    bin: PathBuf,
    dir: Option<tempfile::TempDir>,
    /// TCP port on 127.0.0.1.
    pub port: u16,
    pid: u32,
    watchdog: Option<Child>,
}

/// A database on a [`PgServer`], dropped with its guard.
#[derive(Debug)]
pub struct PgDatabase {
    bin: PathBuf,
    port: u16,
    /// Database name.
    pub name: String,
    /// `postgres://postgres@127.0.0.1:PORT/NAME` (trust authentication on loopback).
    pub url: String,
}

fn running_as_root() -> bool {
    // /proc/self belongs to the effective user: no libc call (and no unsafe) needed.
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

fn require_tools() -> bool {
    std::env::var_os("WITNESS_REQUIRE_TOOLS").is_some_and(|v| v != "0")
}

/// The directory holding `initdb`, `pg_ctl`, `postgres` and `psql`, if installed.
pub fn bin_dir() -> Option<PathBuf> {
    let has = |d: &Path| {
        ["initdb", "pg_ctl", "postgres", "psql"]
            .iter()
            .all(|b| d.join(b).is_file())
    };
    if let Some(d) = std::env::var_os("WITNESS_PG_BIN").map(PathBuf::from) {
        return has(&d).then_some(d);
    }
    let mut debian: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|d| has(d))
        .collect();
    // Newest major version first.
    debian.sort_by_key(|d| {
        std::cmp::Reverse(
            d.parent()
                .and_then(|v| v.file_name())
                .and_then(|v| v.to_str())
                .and_then(|v| v.parse::<u32>().ok())
                .unwrap_or(0),
        )
    });
    if let Some(d) = debian.into_iter().next() {
        return Some(d);
    }
    std::env::var_os("PATH").and_then(|paths| std::env::split_paths(&paths).find(|d| has(d)))
}

/// Say loudly that PostgreSQL is missing (panic under `WITNESS_REQUIRE_TOOLS`).
fn missing(what: &str) {
    let message = "PostgreSQL server binaries (initdb, pg_ctl, postgres, psql) are not installed \
                   (Debian package `postgresql-15`; or set WITNESS_PG_BIN)";
    if require_tools() {
        panic!("{message}, and WITNESS_REQUIRE_TOOLS is set");
    }
    eprintln!(
        "\n!!!!!!!! SKIPPED {what}: {message}; the PostgreSQL store was NOT tested. \
         Install it: apt-get install postgresql-15 !!!!!!!!\n"
    );
}

/// The server shared by the tests of this process, started on first use; `None` (after a loud
/// message) when PostgreSQL is not installed.
pub fn shared(what: &str) -> Option<&'static PgServer> {
    static SERVER: OnceLock<Option<PgServer>> = OnceLock::new();
    let server = SERVER.get_or_init(|| {
        bin_dir()?;
        Some(PgServer::start(PgOptions::default()).expect("starting the shared PostgreSQL server"))
    });
    if server.is_none() {
        missing(what);
    }
    server.as_ref()
}

/// A fresh database on the shared server (see [`shared`]).
pub fn fresh_database(what: &str) -> Option<PgDatabase> {
    let server = shared(what)?;
    Some(server.database().expect("creating a test database"))
}

/// Runs `program` from `bin`, as the `postgres` user when this process is root.
fn pg_command(bin: &Path, program: &str, as_server: bool) -> Command {
    let path = bin.join(program);
    if as_server && running_as_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(path);
        c
    } else {
        Command::new(path)
    }
}

fn run(mut command: Command, what: &str) -> Result<String> {
    let out = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A fresh temporary directory the server's user can use: as root, handed to `postgres`, in
/// the first of `$TMPDIR`, /tmp, /var/tmp that it can reach (a `$TMPDIR` under /root cannot).
fn server_dir() -> Result<tempfile::TempDir> {
    let make = |base: &Path| {
        tempfile::Builder::new()
            .prefix("witness-pg-")
            .tempdir_in(base)
            .with_context(|| format!("temp dir in {}", base.display()))
    };
    if !running_as_root() {
        return make(&std::env::temp_dir());
    }
    let mut tried = Vec::new();
    for base in [std::env::temp_dir(), "/tmp".into(), "/var/tmp".into()] {
        let Ok(dir) = make(&base) else {
            tried.push(base.display().to_string());
            continue;
        };
        let mut chown = Command::new("chown");
        chown.arg("postgres:postgres").arg(dir.path());
        run(chown, "chown postgres: of the test directory")?;
        let mut probe = pg_command(Path::new("/usr/bin"), "test", true);
        probe.arg("-w").arg(dir.path());
        if run(probe, "access check").is_ok() {
            return Ok(dir);
        }
        tried.push(base.display().to_string());
    }
    bail!("no temporary directory the postgres user can use (tried {tried:?})")
}

fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

fn alive(pid: u32) -> bool {
    // A zombie still has /proc/PID; its state letter is Z.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(") ")
                .is_some_and(|(_, rest)| !rest.starts_with('Z'))
        })
        .unwrap_or(false)
}

/// TLS files of a server started by [`PgServer::start_tls`].
#[derive(Debug)]
pub struct PgTls {
    _dir: tempfile::TempDir,
    /// The CA that signed the server's certificate (for `sslrootcert`).
    pub ca_pem: PathBuf,
    /// A CA that signed nothing the server has: connections verifying against it must fail.
    pub other_ca_pem: PathBuf,
}

/// A CA, PEM, and its issuer for signing.
fn test_ca(name: &str) -> Result<rcgen::CertifiedIssuer<'static, rcgen::KeyPair>> {
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    Ok(rcgen::CertifiedIssuer::self_signed(
        params,
        rcgen::KeyPair::generate()?,
    )?)
}

impl PgServer {
    /// Like [`PgServer::start`], with `ssl = on` and a server certificate for `127.0.0.1` and
    /// `localhost` signed by a fresh test CA. Plain (non-TLS) connections are still accepted:
    /// what a client gets is up to its `sslmode`.
    pub fn start_tls(mut options: PgOptions) -> Result<(PgServer, PgTls)> {
        let dir = server_dir()?;
        let ca = test_ca("Witness test PostgreSQL CA")?;
        let other = test_ca("Witness test other CA")?;
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "localhost");
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let key = rcgen::KeyPair::generate()?;
        let cert = params.signed_by(&key, &ca)?;
        let write = |name: &str, text: &str, mode: u32| -> Result<PathBuf> {
            use std::os::unix::fs::PermissionsExt;
            let path = dir.path().join(name);
            std::fs::write(&path, text).with_context(|| format!("writing {name}"))?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
            if running_as_root() {
                let mut chown = Command::new("chown");
                chown.arg("postgres:postgres").arg(&path);
                run(chown, "chown of a TLS file")?;
            }
            Ok(path)
        };
        let crt = write("server.crt", &cert.pem(), 0o644)?;
        // PostgreSQL refuses a key that others can read.
        let key_file = write("server.key", &key.serialize_pem(), 0o600)?;
        let ca_pem = write("ca.pem", &ca.pem(), 0o644)?;
        let other_ca_pem = write("other-ca.pem", &other.pem(), 0o644)?;
        options.settings.extend([
            ("ssl".to_string(), "on".to_string()),
            ("ssl_cert_file".to_string(), crt.display().to_string()),
            ("ssl_key_file".to_string(), key_file.display().to_string()),
        ]);
        let server = PgServer::start(options)?;
        Ok((
            server,
            PgTls {
                _dir: dir,
                ca_pem,
                other_ca_pem,
            },
        ))
    }

    /// Whether PostgreSQL is installed; `false` after a loud message (a panic under
    /// `WITNESS_REQUIRE_TOOLS`).
    pub fn available(what: &str) -> bool {
        if bin_dir().is_some() {
            return true;
        }
        missing(what);
        false
    }

    /// `initdb` a new cluster in a temporary directory and start it on a free port.
    pub fn start(options: PgOptions) -> Result<PgServer> {
        let bin = bin_dir().context("PostgreSQL binaries not found")?;
        let dir = server_dir()?;
        let data = dir.path().join("data");
        let sockets = dir.path().join("sockets");
        let log = dir.path().join("server.log");
        let mut initdb = pg_command(&bin, "initdb", true);
        initdb
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "--auth=trust", "--encoding=UTF8"])
            .args(["--locale=C", "--no-sync", "--no-instructions"]);
        run(initdb, "initdb")?;
        let mut mkdir = pg_command(Path::new("/bin"), "mkdir", true);
        mkdir.arg(&sockets);
        run(mkdir, "mkdir of the socket directory")?;

        let mut settings: Vec<(String, String)> = vec![
            ("listen_addresses".into(), "127.0.0.1".into()),
            (
                "max_connections".into(),
                options.max_connections.to_string(),
            ),
            (
                "unix_socket_directories".into(),
                sockets.display().to_string(),
            ),
        ];
        if !options.durable {
            for k in ["fsync", "synchronous_commit", "full_page_writes"] {
                settings.push((k.into(), "off".into()));
            }
        }
        settings.extend(options.settings.iter().cloned());
        let mut last_error = None;
        for _ in 0..3 {
            let port = free_port()?;
            let mut flags = format!("-p {port}");
            for (k, v) in &settings {
                flags.push_str(&format!(" -c {k}={v}"));
            }
            let mut pg_ctl = pg_command(&bin, "pg_ctl", true);
            pg_ctl
                .arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(&log)
                .args(["-w", "-t", "60", "-o", &flags, "start"]);
            match run(pg_ctl, "pg_ctl start") {
                Ok(_) => {
                    let pid_file = std::fs::read_to_string(data.join("postmaster.pid"))
                        .context("reading postmaster.pid")?;
                    let pid: u32 = pid_file
                        .lines()
                        .next()
                        .and_then(|l| l.trim().parse().ok())
                        .context("postmaster.pid has no pid")?;
                    let mut server = PgServer {
                        bin,
                        dir: Some(dir),
                        port,
                        pid,
                        watchdog: None,
                    };
                    server.watchdog = server.spawn_watchdog().ok();
                    return Ok(server);
                }
                Err(e) => {
                    let tail = std::fs::read_to_string(&log).unwrap_or_default();
                    last_error = Some(e.context(tail));
                }
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow::anyhow!("pg_ctl start failed")))
    }

    /// A process that stops the server and removes its directory once this process is gone,
    /// for servers held in statics, which are never dropped.
    fn spawn_watchdog(&self) -> Result<Child> {
        let dir = self.dir.as_ref().map(|d| d.path().display().to_string());
        let script = format!(
            "while kill -0 {me} 2>/dev/null; do sleep 1; done; \
             kill -QUIT {pid} 2>/dev/null; \
             i=0; while kill -0 {pid} 2>/dev/null && [ $i -lt 50 ]; do sleep 0.2; i=$((i+1)); done; \
             rm -rf '{dir}'",
            me = std::process::id(),
            pid = self.pid,
            dir = dir.unwrap_or_default(),
        );
        Ok(Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?)
    }

    /// `postgres://postgres@127.0.0.1:PORT/DB`.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Run SQL as the superuser on database `db` with `psql`; returns its unaligned output.
    pub fn psql(&self, db: &str, sql: &str) -> Result<String> {
        psql(&self.bin, self.port, db, sql)
    }

    /// Create a fresh, uniquely named database.
    pub fn database(&self) -> Result<PgDatabase> {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "witness_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        self.psql("postgres", &format!("CREATE DATABASE {name}"))?;
        Ok(PgDatabase {
            bin: self.bin.clone(),
            port: self.port,
            url: self.url(&name),
            name,
        })
    }

    /// The postmaster's pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The server log so far (for failure messages).
    pub fn log(&self) -> String {
        self.dir
            .as_ref()
            .and_then(|d| std::fs::read_to_string(d.path().join("server.log")).ok())
            .unwrap_or_default()
    }
}

fn psql(bin: &Path, port: u16, db: &str, sql: &str) -> Result<String> {
    let mut c = Command::new(bin.join("psql"));
    c.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
        .args(["-h", "127.0.0.1", "-U", "postgres", "-p"])
        .arg(port.to_string())
        .args(["-d", db, "-c", sql])
        .env("PGCONNECT_TIMEOUT", "10");
    run(c, "psql").map(|s| s.trim().to_string())
}

impl PgDatabase {
    /// Run SQL on this database; returns psql's unaligned output.
    pub fn psql(&self, sql: &str) -> Result<String> {
        psql(&self.bin, self.port, &self.name, sql)
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let _ = psql(
            &self.bin,
            self.port,
            "postgres",
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        // SIGQUIT: immediate shutdown (test data need no checkpoint). As root this needs no
        // change of user; as the owner either.
        let _ = Command::new("kill")
            .args(["-QUIT", &self.pid.to_string()])
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while alive(self.pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Some(mut w) = self.watchdog.take() {
            let _ = w.kill();
            let _ = w.wait();
        }
        if let Some(dir) = self.dir.take() {
            let _ = dir.close();
        }
    }
}
