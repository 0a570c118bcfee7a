//! The operator's commands beside `serve`: `check-config`, `example-config`, and the store
//! that `token` commands may use (an existing one only: a token printed from a store the
//! running collector does not read would be useless).

use std::path::{Path, PathBuf};
use std::str::FromStr;

use sqlx::sqlite::SqliteConnectOptions;
use sqlx::Connection;

use crate::config::Config;
use crate::store::{self, Backend};

/// The shipped example configuration (every default, commented).
pub const EXAMPLE_CONFIG: &str = include_str!("../collector.example.toml");

/// Where a configuration came from, for messages.
pub fn config_source(path: Option<&Path>) -> String {
    match path {
        Some(p) => p.display().to_string(),
        None => "no --config and no WITNESS_COLLECTOR_CONFIG: built-in defaults".to_string(),
    }
}

/// The database file of a SQLite store URL (`None` for an in-memory database).
pub fn sqlite_file(url: &str) -> Option<PathBuf> {
    let url = url.trim();
    if !url.starts_with("sqlite:") {
        return Some(PathBuf::from(url));
    }
    let options = SqliteConnectOptions::from_str(url).ok()?;
    let file = options.get_filename();
    let name = file.to_string_lossy();
    let memory = name.is_empty() || name == ":memory:" || name.starts_with("file:sqlx-in-memory");
    (!memory).then(|| file.to_path_buf())
}

/// Why an admin command refuses a store.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The SQLite file does not exist: opening it would create an empty store.
    #[error(
        "no store at {file} (store url {url:?}, config: {config}). Token commands never create a \
         store: a token made there would be unknown to the running collector. Pass the \
         collector's config with --config (or WITNESS_COLLECTOR_CONFIG), or start the collector \
         once to create its store"
    )]
    NoStore {
        /// The missing file.
        file: String,
        /// The store URL (redacted).
        url: String,
        /// Where the configuration came from.
        config: String,
    },
    /// An in-memory SQLite store lives only inside one process.
    #[error("store url {0:?} is in memory: token commands need the collector's store on disk")]
    InMemory(String),
    /// The URL names no supported store.
    #[error(transparent)]
    Store(#[from] store::StoreError),
}

/// Check that the store of `config` exists before a token command opens it.
pub fn require_existing_store(config: &Config, path: Option<&Path>) -> Result<(), AdminError> {
    let url = config.store.url.trim();
    match Backend::of(url)? {
        // A PostgreSQL database is created by its administrator, never by the collector.
        Backend::Postgres => Ok(()),
        Backend::Sqlite => {
            let file = sqlite_file(url).ok_or_else(|| AdminError::InMemory(url.to_string()))?;
            if file.is_file() {
                Ok(())
            } else {
                Err(AdminError::NoStore {
                    file: file.display().to_string(),
                    url: store::redacted(url),
                    config: config_source(path),
                })
            }
        }
    }
}

/// `sslmode` of a PostgreSQL URL, if given.
pub fn pg_sslmode(url: &str) -> Option<String> {
    let parsed = url::Url::parse(url.trim()).ok()?;
    parsed
        .query_pairs()
        .find(|(k, _)| k == "sslmode")
        .map(|(_, v)| v.to_ascii_lowercase())
}

/// Whether a PostgreSQL URL's host is this machine (loopback or a unix socket).
fn pg_host_is_local(url: &str) -> bool {
    let Ok(parsed) = url::Url::parse(url.trim()) else {
        return false;
    };
    if parsed.query_pairs().any(|(k, _)| k == "host") {
        // `?host=/run/postgresql`: a unix socket.
        return true;
    }
    match parsed.host() {
        None => true,
        // `postgres:` is not a special scheme: the url crate leaves its host a string.
        Some(url::Host::Domain(d)) => {
            d == "localhost"
                || d.trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|a| a.is_loopback())
        }
        Some(url::Host::Ipv4(a)) => a.is_loopback(),
        Some(url::Host::Ipv6(a)) => a.is_loopback(),
    }
}

/// Warnings about a store URL that the collector accepts but an operator should know of.
pub fn store_warnings(url: &str) -> Vec<String> {
    let mut out = Vec::new();
    if !matches!(Backend::of(url), Ok(Backend::Postgres)) {
        return out;
    }
    let mode = pg_sslmode(url);
    let verified = matches!(mode.as_deref(), Some("verify-full" | "verify-ca"));
    if !verified && !pg_host_is_local(url) {
        out.push(format!(
            "store: PostgreSQL on another host with sslmode={}: {}. Use \
             ?sslmode=verify-full&sslrootcert=/path/to/ca.pem (docs/scaling.md)",
            mode.as_deref().unwrap_or("prefer (the default)"),
            match mode.as_deref() {
                Some("require") => "encrypted, but the server's certificate is not checked",
                Some("disable") => "the connection is plaintext",
                _ => "falls back to plaintext if the server offers no TLS",
            }
        ));
    }
    out
}

/// Whether the collector's connection to PostgreSQL at `url` is encrypted, as the server sees
/// it (`pg_stat_ssl`): what `sslmode=prefer` actually ended up with.
pub async fn pg_connection_encrypted(url: &str) -> Result<bool, sqlx::Error> {
    let mut conn = sqlx::postgres::PgConnection::connect(url.trim()).await?;
    let ssl: Option<bool> =
        sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_optional(&mut conn)
            .await?;
    let _ = conn.close().await;
    Ok(ssl.unwrap_or(false))
}

/// The report of `check-config`: what the collector would do with this configuration.
pub fn describe(config: &Config, path: Option<&Path>) -> String {
    let mut out = String::new();
    let mut line = |k: &str, v: String| out.push_str(&format!("  {k:<14} {v}\n"));
    line("config", config_source(path));
    line("API", format!("http://{}/", config.server.listen));
    line(
        "/metrics",
        match config.server.metrics_listen {
            Some(m) => format!("http://{m}/metrics (its own listener)"),
            None => format!(
                "http://{}/metrics (on the API listener; Prometheus's target must be {})",
                config.server.listen, config.server.listen
            ),
        },
    );
    let url = config.store.url.trim();
    let store_line = match Backend::of(url) {
        Ok(Backend::Sqlite) => match sqlite_file(url) {
            Some(f) if f.is_file() => format!("SQLite {} (exists)", f.display()),
            Some(f) => format!("SQLite {} (created at first start)", f.display()),
            None => format!("SQLite in memory ({url}): nothing is kept"),
        },
        Ok(Backend::Postgres) => format!(
            "PostgreSQL {} (sslmode={})",
            store::redacted(url),
            pg_sslmode(url).unwrap_or_else(|| "prefer".into())
        ),
        Err(e) => format!("invalid: {e}"),
    };
    line("store", store_line);
    line(
        "registration",
        format!("{:?}", config.server.registration).to_lowercase(),
    );
    let w = &config.webhook;
    line(
        "webhook",
        if w.urls.is_empty() {
            "none (events are only recorded)".to_string()
        } else {
            format!(
                "{} URL(s), format {:?}, re-send every {}, links to {}",
                w.urls.len(),
                w.format,
                w.resend_interval,
                config.public_url()
            )
            .to_lowercase()
        },
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_files_and_memory() {
        assert_eq!(
            sqlite_file("sqlite:///var/lib/w/c.db"),
            Some(PathBuf::from("/var/lib/w/c.db"))
        );
        assert_eq!(
            sqlite_file("sqlite://witness-collector.db"),
            Some(PathBuf::from("witness-collector.db"))
        );
        assert_eq!(sqlite_file("data/c.db"), Some(PathBuf::from("data/c.db")));
        assert_eq!(sqlite_file("sqlite::memory:"), None);
    }

    #[test]
    fn warns_about_unverified_remote_postgres_only() {
        assert!(store_warnings("sqlite://x.db").is_empty());
        assert!(store_warnings("postgres://w@127.0.0.1/w").is_empty());
        assert!(store_warnings("postgres://w@db.example/w?sslmode=verify-full").is_empty());
        let w = store_warnings("postgres://w:secret@db.example/w");
        assert!(
            w[0].contains("prefer") && w[0].contains("plaintext"),
            "{w:?}"
        );
        assert!(!w[0].contains("secret"));
        let w = store_warnings("postgres://w@db.example/w?sslmode=require");
        assert!(w[0].contains("not checked"), "{w:?}");
    }
}
