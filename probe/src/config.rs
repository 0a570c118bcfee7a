//! Configuration in three layers: command-line flags over a TOML file over defaults.
//!
//! The file is parsed strictly (`deny_unknown_fields`): a misspelt key is an error that names
//! the file, line and key, never silently ignored. `witness.example.toml` at the crate root is
//! the documented example; a test loads it and checks it equals the defaults.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use rustls_pki_types::CertificateDer;
use serde::{Deserialize, Serialize};

use crate::checks::{ControlResolverSpec, MeasureConfig, ResolverSpec};

/// The example configuration shipped with the probe (all defaults, documented).
pub const EXAMPLE: &str = include_str!("../witness.example.toml");

/// The configuration file.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileConfig {
    /// Informed consent given for unattended runs (default false: ask on a terminal).
    pub consent: bool,
    /// The probe's network.
    pub probe: ProbeSection,
    /// How runs measure.
    pub run: RunSection,
    /// Where and how the network is reached.
    pub network: NetworkSection,
    /// The control service.
    pub control: ControlSection,
    /// Uploading to a collector.
    pub collector: CollectorSection,
}

/// `[probe]`: facts about the network the probe runs on.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProbeSection {
    /// The ASN of the probe's network, if the volunteer knows it (default: learnt from the
    /// control service, if it can tell).
    pub asn: Option<u32>,
    /// Two-letter country code (default: learnt from the control service).
    pub country: Option<String>,
}

/// `[run]`: what is measured and how hard.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunSection {
    /// Targets measured at once (default 32).
    pub concurrency: usize,
    /// Timeout of each step, seconds (default 10).
    pub timeout_secs: f64,
    /// How long to keep listening for an injected DNS answer, milliseconds (default 300).
    pub dns_linger_ms: u64,
    /// Most body bytes read per response (default 524288).
    pub body_cap_bytes: usize,
    /// Most redirects followed (default 10).
    pub max_redirects: u32,
    /// Query AAAA and measure IPv6 addresses too (default false: many home lines have no IPv6,
    /// and a missing IPv6 route is not censorship).
    pub ipv6: bool,
    /// List files in the Citizen Lab CSV format (default: none, use the embedded lists).
    pub lists: Vec<PathBuf>,
    /// Only these category codes (default: all).
    pub categories: Vec<String>,
    /// Never these category codes (default: none). Volunteers may exclude sensitive ones.
    pub exclude_categories: Vec<String>,
}

impl Default for RunSection {
    fn default() -> Self {
        RunSection {
            concurrency: crate::engine::DEFAULT_CONCURRENCY,
            timeout_secs: 10.0,
            dns_linger_ms: 300,
            body_cap_bytes: 512 * 1024,
            max_redirects: 10,
            ipv6: false,
            lists: vec![],
            categories: vec![],
            exclude_categories: vec![],
        }
    }
}

/// `[network]`: resolvers, trust, and lab settings.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkSection {
    /// The network's resolver: `system` or `IP[:PORT]` (default `system`).
    pub resolver: String,
    /// Encrypted control resolver: `doh:IP[:PORT]#NAME`, `dot:IP[:PORT]#NAME`, `udp:IP[:PORT]`
    /// (labs only) or `none` (default `doh:1.1.1.1#cloudflare-dns.com`).
    pub control_resolver: String,
    /// Bind outgoing sockets to this local address (default: any).
    pub source_address: Option<IpAddr>,
    /// PEM files of extra trusted CAs, on top of the Mozilla roots (default: none).
    pub extra_ca_files: Vec<PathBuf>,
    /// Reserved ranges to treat as public: for labs built in 198.18.0.0/15 or on loopback.
    /// Default: none. Never set this on a real network.
    pub lab_public_ranges: Vec<IpNet>,
    /// SNI of the decoy handshake that tells SNI filtering from a dead server
    /// (default `example.com`).
    pub decoy_sni: String,
    /// Hosts (`host:port`) whose reachability says whether the network works at all: a
    /// domestic and a foreign one at least. Default: egov.kz, wikipedia.org, one.one.one.one.
    pub anchors: Vec<String>,
    /// Extra interception CA keys, `label=SHA256-of-SPKI-hex` (default: none).
    pub interception_spki: Vec<String>,
}

impl Default for NetworkSection {
    fn default() -> Self {
        NetworkSection {
            resolver: "system".into(),
            control_resolver: "doh:1.1.1.1#cloudflare-dns.com".into(),
            source_address: None,
            extra_ca_files: vec![],
            lab_public_ranges: vec![],
            decoy_sni: "example.com".into(),
            anchors: vec![
                "egov.kz:443".into(),
                "www.wikipedia.org:443".into(),
                "one.one.one.one:443".into(),
            ],
            interception_spki: vec![],
        }
    }
}

/// `[control]`: the control service that measures from an uncensored vantage point.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlSection {
    /// Base URL of the control service, e.g. `https://collector.example/` (default: none; the
    /// collector's URL is used when set).
    pub url: Option<String>,
    /// Token for the control service (default: the collector token).
    pub token: Option<String>,
}

/// `[collector]`: where measurements are uploaded.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CollectorSection {
    /// Base URL of the collector (default: none, nothing is uploaded).
    pub url: Option<String>,
    /// The probe token from `witness register` (default: none).
    pub token: Option<String>,
    /// Upload after every run (default false; `--upload` turns it on for one run).
    pub upload: bool,
    /// Where measurements wait for upload (default: the user's data directory).
    pub spool_dir: Option<PathBuf>,
    /// Most measurements kept waiting; the oldest are evicted beyond, with a warning
    /// (default 200000).
    pub spool_max: Option<usize>,
}

/// A configuration problem, with where it is and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// toml's message, which names line, column and key.
        message: String,
    },
    /// A value is not valid.
    #[error("{what}: {message}")]
    Value {
        /// Which setting.
        what: String,
        /// What is wrong and what is expected.
        message: String,
    },
}

impl FileConfig {
    /// Parse a config text; `path` is only for messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })
    }

    /// Load `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// The user's default config file, if there is one: `~/.config/witness/config.toml`.
    pub fn default_path() -> Option<PathBuf> {
        dirs::config_dir().map(|d| d.join("witness").join("config.toml"))
    }
}

/// Parse `system` or `IP[:PORT]`.
pub fn parse_resolver(s: &str) -> Result<ResolverSpec, ConfigError> {
    if s.eq_ignore_ascii_case("system") {
        return Ok(ResolverSpec::System);
    }
    parse_addr(s, 53)
        .map(ResolverSpec::Udp)
        .map_err(|message| ConfigError::Value {
            what: format!("resolver {s:?}"),
            message,
        })
}

/// Parse the control resolver syntax (see [`NetworkSection::control_resolver`]).
pub fn parse_control_resolver(s: &str) -> Result<Option<ControlResolverSpec>, ConfigError> {
    let err = |message: String| ConfigError::Value {
        what: format!("control resolver {s:?}"),
        message,
    };
    if s.eq_ignore_ascii_case("none") || s.is_empty() {
        return Ok(None);
    }
    let (kind, rest) = s
        .split_once(':')
        .ok_or_else(|| err("expected doh:IP#NAME, dot:IP#NAME, udp:IP[:PORT] or none".into()))?;
    match kind {
        "udp" => Ok(Some(ControlResolverSpec::Udp(
            parse_addr(rest, 53).map_err(err)?,
        ))),
        "doh" | "dot" => {
            let (addr, name) = rest.split_once('#').ok_or_else(|| {
                err("missing #NAME: the name the resolver's certificate is for".into())
            })?;
            let port = if kind == "doh" { 443 } else { 853 };
            let addr = parse_addr(addr, port).map_err(err)?;
            let tls_name = name.to_string();
            if tls_name.is_empty() {
                return Err(err("empty #NAME".into()));
            }
            Ok(Some(if kind == "doh" {
                ControlResolverSpec::Doh { addr, tls_name }
            } else {
                ControlResolverSpec::Dot { addr, tls_name }
            }))
        }
        other => Err(err(format!(
            "unknown kind {other:?}; expected doh, dot, udp or none"
        ))),
    }
}

/// `IP`, `IP:PORT`, `[V6]:PORT` or bare `V6`.
pub fn parse_addr(s: &str, default_port: u16) -> Result<SocketAddr, String> {
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Ok(sa);
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, default_port));
    }
    Err(format!("{s:?} is not an IP address or IP:PORT"))
}

/// Parse `host:port` anchors.
pub fn parse_anchor(s: &str) -> Result<(String, u16), ConfigError> {
    let err = || ConfigError::Value {
        what: format!("anchor {s:?}"),
        message: "expected HOST:PORT, e.g. www.wikipedia.org:443".into(),
    };
    let (host, port) = s.rsplit_once(':').ok_or_else(err)?;
    let port: u16 = port.parse().map_err(|_| err())?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(err());
    }
    Ok((host.to_string(), port))
}

/// Read PEM certificates from `path`; at least one is required.
pub fn load_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let bytes = std::fs::read(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let certs: Result<Vec<_>, _> = rustls_pemfile::certs(&mut bytes.as_slice()).collect();
    let certs = certs.map_err(|e| ConfigError::Value {
        what: format!("CA file {}", path.display()),
        message: format!("not valid PEM: {e}"),
    })?;
    if certs.is_empty() {
        return Err(ConfigError::Value {
            what: format!("CA file {}", path.display()),
            message: "no PEM certificate (-----BEGIN CERTIFICATE-----) found".into(),
        });
    }
    for c in &certs {
        let mut store = rustls::RootCertStore::empty();
        store.add(c.clone()).map_err(|e| ConfigError::Value {
            what: format!("CA file {}", path.display()),
            message: format!("not a usable CA certificate: {e}"),
        })?;
    }
    Ok(certs)
}

/// Parse `label=hex` interception key pins.
pub fn parse_spki_pin(s: &str) -> Result<(String, String), ConfigError> {
    let (label, hash) = s.split_once('=').ok_or_else(|| ConfigError::Value {
        what: format!("interception_spki {s:?}"),
        message: "expected LABEL=SHA256HEX".into(),
    })?;
    if hash.len() != 64 || !hash.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(ConfigError::Value {
            what: format!("interception_spki {s:?}"),
            message: "the hash must be 64 hex characters (SHA-256 of the SubjectPublicKeyInfo)"
                .into(),
        });
    }
    Ok((label.to_string(), hash.to_ascii_lowercase()))
}

/// Build the step configuration from the merged file settings.
pub fn measure_config(
    run: &RunSection,
    net: &NetworkSection,
) -> Result<MeasureConfig, ConfigError> {
    if !(run.timeout_secs > 0.0 && run.timeout_secs <= 300.0) {
        return Err(ConfigError::Value {
            what: "timeout".into(),
            message: format!(
                "{} s is out of range; use 0.1 to 300 seconds",
                run.timeout_secs
            ),
        });
    }
    if run.body_cap_bytes == 0 || run.body_cap_bytes > 64 * 1024 * 1024 {
        return Err(ConfigError::Value {
            what: "body_cap_bytes".into(),
            message: "must be between 1 and 67108864".into(),
        });
    }
    let mut extra_cas = Vec::new();
    for f in &net.extra_ca_files {
        extra_cas.extend(load_ca_file(f)?);
    }
    Ok(MeasureConfig {
        resolver: parse_resolver(&net.resolver)?,
        control_resolver: parse_control_resolver(&net.control_resolver)?,
        timeout: Duration::from_secs_f64(run.timeout_secs),
        dns_linger: Duration::from_millis(run.dns_linger_ms.min(5000)),
        body_cap: run.body_cap_bytes,
        max_redirects: run.max_redirects.min(50),
        extra_cas,
        source_address: net.source_address,
        decoy_sni: net.decoy_sni.clone(),
        ipv6: run.ipv6,
        ..MeasureConfig::default()
    }
    .with_lab_public(net.lab_public_ranges.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_equals_defaults() {
        let parsed = FileConfig::parse(EXAMPLE, Path::new("witness.example.toml")).unwrap();
        assert_eq!(parsed, FileConfig::default());
    }

    #[test]
    fn unknown_keys_are_rejected_everywhere() {
        // Inject an unknown key into every section of the example: each must fail.
        let sections = [
            "",
            "[probe]",
            "[run]",
            "[network]",
            "[control]",
            "[collector]",
        ];
        for section in sections {
            let text = if section.is_empty() {
                format!("bogus_key = 1\n{EXAMPLE}")
            } else {
                EXAMPLE.replacen(section, &format!("{section}\nbogus_key = 1"), 1)
            };
            let err = FileConfig::parse(&text, Path::new("x.toml"))
                .unwrap_err()
                .to_string();
            assert!(err.contains("bogus_key"), "{section}: {err}");
            assert!(err.contains("x.toml"), "{err}");
        }
    }

    #[test]
    fn wrong_type_names_the_line() {
        let err = FileConfig::parse("[run]\nconcurrency = \"many\"\n", Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn resolver_syntax() {
        assert_eq!(parse_resolver("system").unwrap(), ResolverSpec::System);
        assert_eq!(
            parse_resolver("10.0.0.1").unwrap(),
            ResolverSpec::Udp("10.0.0.1:53".parse().unwrap())
        );
        assert_eq!(
            parse_resolver("[::1]:5353").unwrap(),
            ResolverSpec::Udp("[::1]:5353".parse().unwrap())
        );
        assert!(parse_resolver("resolver.example").is_err());
        assert!(matches!(
            parse_control_resolver("doh:1.1.1.1#cloudflare-dns.com").unwrap(),
            Some(ControlResolverSpec::Doh { addr, .. }) if addr.port() == 443
        ));
        assert!(matches!(
            parse_control_resolver("dot:9.9.9.9#dns.quad9.net").unwrap(),
            Some(ControlResolverSpec::Dot { addr, .. }) if addr.port() == 853
        ));
        assert_eq!(parse_control_resolver("none").unwrap(), None);
        assert!(parse_control_resolver("doh:1.1.1.1").is_err());
        assert!(parse_control_resolver("tcp:1.1.1.1").is_err());
    }

    #[test]
    fn anchors_and_pins() {
        assert_eq!(
            parse_anchor("egov.kz:443").unwrap(),
            ("egov.kz".into(), 443)
        );
        assert_eq!(
            parse_anchor("[2001:db8::1]:80").unwrap(),
            ("2001:db8::1".into(), 80)
        );
        assert!(parse_anchor("egov.kz").is_err());
        assert!(parse_spki_pin(&format!("kz={}", "a".repeat(64))).is_ok());
        assert!(parse_spki_pin("kz=abc").is_err());
    }

    #[test]
    fn bad_ca_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ca.pem");
        std::fs::write(&p, "not a certificate").unwrap();
        let err = load_ca_file(&p).unwrap_err().to_string();
        assert!(
            err.contains("ca.pem") && err.contains("no PEM certificate"),
            "{err}"
        );
        assert!(load_ca_file(&dir.path().join("missing.pem")).is_err());
    }
}
