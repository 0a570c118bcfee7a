//! Configuration in three layers: command-line flags over a TOML file over defaults. This
//! module is the file and the defaults; `setup` lays the flags over them.
//!
//! The file is parsed strictly (`deny_unknown_fields`): a misspelt key is an error that names
//! the file, line and key, never silently ignored. `witness.example.toml` at the crate root is
//! the documented example; a test loads it and checks it equals the defaults.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use witness_core::checks::MeasureConfig;
pub use witness_core::spec::{
    load_ca_file, parse_addr, parse_anchor, parse_control_resolvers, parse_resolver,
    parse_spki_pin, ConfigError,
};

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
    /// Localising blocks to a network hop.
    pub path: PathSection,
}

/// `[path]`: where the censor sits. For each blocked target the probe repeats the exchange
/// that was blocked with TTL 1, 2, … and records the first hop at which the block appears.
/// Bounded per target and per run; it never changes a verdict.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PathSection {
    /// Localise blocked targets (default true; `--no-path` turns it off for one run).
    pub enabled: bool,
    /// Largest TTL tried (default 16, at most 64).
    pub max_ttl: u8,
    /// How long each TTL's exchange waits for an answer, seconds (default 2, 0.1 to 30).
    pub probe_timeout_secs: f64,
    /// Most blocked targets localised per run (default 20).
    pub max_targets: usize,
    /// Total time the localisations of one run may take, seconds (default 60, at most 3600).
    pub run_budget_secs: f64,
    /// The first hops whose router address is never recorded, only that they answered: your
    /// own router and your line (default 2).
    pub private_hops: u8,
}

impl Default for PathSection {
    fn default() -> Self {
        let d = witness_core::checks::path::PathConfig::default();
        PathSection {
            enabled: d.enabled,
            max_ttl: d.max_ttl,
            probe_timeout_secs: d.probe_timeout.as_secs_f64(),
            max_targets: d.max_targets,
            run_budget_secs: d.run_budget.as_secs_f64(),
            private_hops: d.private_hops,
        }
    }
}

/// The localisation's settings, checked.
pub fn path_config(p: &PathSection) -> Result<witness_core::checks::path::PathConfig, ConfigError> {
    use witness_core::checks::path::{PathConfig, MAX_TTL_LIMIT};
    let bad = |what: &str, message: String| ConfigError::Value {
        what: format!("path.{what}"),
        message,
    };
    if p.max_ttl == 0 || p.max_ttl > MAX_TTL_LIMIT {
        return Err(bad(
            "max_ttl",
            format!("{} is out of range; use 1 to {MAX_TTL_LIMIT}", p.max_ttl),
        ));
    }
    if !(p.probe_timeout_secs >= 0.1 && p.probe_timeout_secs <= 30.0) {
        return Err(bad(
            "probe_timeout_secs",
            format!(
                "{} s is out of range; use 0.1 to 30 seconds",
                p.probe_timeout_secs
            ),
        ));
    }
    if !(p.run_budget_secs >= 0.0 && p.run_budget_secs <= 3600.0) {
        return Err(bad(
            "run_budget_secs",
            format!(
                "{} s is out of range; use 0 to 3600 seconds",
                p.run_budget_secs
            ),
        ));
    }
    if p.max_targets > 10_000 {
        return Err(bad(
            "max_targets",
            format!("{} is out of range; use 0 to 10000", p.max_targets),
        ));
    }
    Ok(PathConfig {
        enabled: p.enabled && p.max_targets > 0,
        max_ttl: p.max_ttl,
        probe_timeout: Duration::from_secs_f64(p.probe_timeout_secs),
        max_targets: p.max_targets,
        run_budget: Duration::from_secs_f64(p.run_budget_secs),
        private_hops: p.private_hops,
    })
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
    /// Most redirects followed (default 20, as browsers do).
    pub max_redirects: u32,
    /// Total time one target may take, seconds, DNS to the last redirect hop (default 30): a
    /// hostile redirect chain cannot keep a target busy longer. At least the step timeout.
    pub deadline_secs: f64,
    /// Query AAAA and measure IPv6 addresses too: `"auto"` (the default: where this host has
    /// a global IPv6 address, and no IPv4 `source_address` is set), `true` or `false`. A home whose IPv6 turns out broken for
    /// everything is judged over IPv4 alone (docs/verdicts.md).
    pub ipv6: Ipv6Mode,
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
            concurrency: witness_core::engine::DEFAULT_CONCURRENCY,
            timeout_secs: 10.0,
            dns_linger_ms: 300,
            body_cap_bytes: 512 * 1024,
            max_redirects: witness_core::checks::MAX_REDIRECTS,
            deadline_secs: witness_core::checks::DEFAULT_TARGET_DEADLINE.as_secs_f64(),
            ipv6: Ipv6Mode::Auto,
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
    /// The network's resolver: `system` or `IP[:PORT]` (default `system`: `/etc/resolv.conf`,
    /// else Termux's `$PREFIX/etc/resolv.conf`, else Android's `net.dns1`; docs/android.md).
    pub resolver: String,
    /// Encrypted control resolvers, a fallback chain tried in order, comma-separated:
    /// `doh:IP[:PORT]#NAME`, `dot:IP[:PORT]#NAME`, `udp:IP[:PORT]` (labs only), or `none`
    /// (default `doh:1.1.1.1#cloudflare-dns.com,dot:9.9.9.9#dns.quad9.net`). When none of them
    /// answers, the control service's DNS is the only DNS control.
    pub control_resolver: String,
    /// Bind outgoing sockets to this local address (default: any).
    pub source_address: Option<IpAddr>,
    /// PEM files of extra trusted CAs, on top of the Mozilla roots (default: none).
    pub extra_ca_files: Vec<PathBuf>,
    /// Reserved ranges to treat as public: for labs built in 198.18.0.0/15 or on loopback.
    /// Default: none. Never set this on a real network.
    pub lab_public_ranges: Vec<IpNet>,
    /// SNI of the decoy handshake, and the innocent name (SNI, `Host:`) of the A/B test, that
    /// tell name filtering from a dead server (default `example.com`).
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
            control_resolver: "doh:1.1.1.1#cloudflare-dns.com,dot:9.9.9.9#dns.quad9.net".into(),
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

    /// The user's default config file, if there is one: `~/.config/witness/config.toml`
    /// (Windows: `%APPDATA%\witness\config.toml`).
    pub fn default_path() -> Option<PathBuf> {
        dirs::config_dir().map(|d| d.join("witness").join("config.toml"))
    }
}

/// Build the step configuration from the merged file settings.
pub fn measure_config(
    run: &RunSection,
    net: &NetworkSection,
) -> Result<MeasureConfig, ConfigError> {
    if !(run.timeout_secs >= 0.1 && run.timeout_secs <= 300.0) {
        return Err(ConfigError::Value {
            what: "timeout".into(),
            message: format!(
                "{} s is out of range; use 0.1 to 300 seconds",
                run.timeout_secs
            ),
        });
    }
    if !(run.deadline_secs >= run.timeout_secs && run.deadline_secs <= 3600.0) {
        return Err(ConfigError::Value {
            what: "deadline".into(),
            message: format!(
                "{} s is out of range; use at least the step timeout ({} s) and at most 3600 \
                 seconds",
                run.deadline_secs, run.timeout_secs
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
        let certs = load_ca_file(f).map_err(|e| match e {
            // Not a config file: say which setting names it.
            ConfigError::Read { path, source } => ConfigError::Value {
                what: format!("extra CA file {}", path.display()),
                message: format!(
                    "cannot read it ({source}); check the path given to --extra-ca or \
                     network.extra_ca_files"
                ),
            },
            other => other,
        })?;
        extra_cas.extend(certs);
    }
    let cfg = MeasureConfig {
        resolver: parse_resolver(&net.resolver)?,
        control_resolvers: parse_control_resolvers(&net.control_resolver)?,
        timeout: Duration::from_secs_f64(run.timeout_secs),
        dns_linger: Duration::from_millis(run.dns_linger_ms.min(5000)),
        body_cap: run.body_cap_bytes,
        redirect_body_cap: run.body_cap_bytes,
        max_redirects: run.max_redirects.min(50),
        target_deadline: Duration::from_secs_f64(run.deadline_secs),
        extra_cas,
        source_address: net.source_address,
        decoy_sni: net.decoy_sni.clone(),
        ..MeasureConfig::default()
    }
    .with_lab_public(net.lab_public_ranges.clone());
    let ipv6 = match run.ipv6 {
        // A probe pinned to an IPv4 source address measures from it alone unless told.
        Ipv6Mode::Auto => {
            !cfg.source_address.is_some_and(|s| s.is_ipv4())
                && witness_core::checks::has_global_ipv6(&cfg.bogons, cfg.source_address)
        }
        Ipv6Mode::On => true,
        Ipv6Mode::Off => false,
    };
    Ok(MeasureConfig { ipv6, ..cfg })
}

/// `[run] ipv6`: `"auto"`, `true` or `false`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Ipv6Mode {
    /// Where this host has a global IPv6 address.
    #[default]
    Auto,
    /// Always.
    On,
    /// Never.
    Off,
}

impl Serialize for Ipv6Mode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Ipv6Mode::Auto => s.serialize_str("auto"),
            Ipv6Mode::On => s.serialize_bool(true),
            Ipv6Mode::Off => s.serialize_bool(false),
        }
    }
}

impl<'de> Deserialize<'de> for Ipv6Mode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Ipv6Mode;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("\"auto\", true or false")
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Ipv6Mode, E> {
                Ok(if v { Ipv6Mode::On } else { Ipv6Mode::Off })
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Ipv6Mode, E> {
                match v {
                    "auto" => Ok(Ipv6Mode::Auto),
                    other => Err(E::invalid_value(serde::de::Unexpected::Str(other), &self)),
                }
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_defaults_and_ranges() {
        let p = PathSection::default();
        let c = path_config(&p).unwrap();
        assert_eq!(c, witness_core::checks::path::PathConfig::default());
        for (edit, key) in [
            (
                PathSection {
                    max_ttl: 0,
                    ..p.clone()
                },
                "path.max_ttl",
            ),
            (
                PathSection {
                    max_ttl: 65,
                    ..p.clone()
                },
                "path.max_ttl",
            ),
            (
                PathSection {
                    probe_timeout_secs: f64::NAN,
                    ..p.clone()
                },
                "path.probe_timeout_secs",
            ),
            (
                PathSection {
                    run_budget_secs: -1.0,
                    ..p.clone()
                },
                "path.run_budget_secs",
            ),
        ] {
            let err = path_config(&edit).unwrap_err().to_string();
            assert!(err.contains(key), "{err}");
        }
        let off = path_config(&PathSection {
            enabled: false,
            ..p.clone()
        })
        .unwrap();
        assert!(!off.enabled);
        let none = path_config(&PathSection {
            max_targets: 0,
            ..p
        })
        .unwrap();
        assert!(!none.enabled);
    }

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
            "[path]",
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
    fn deadline_default_and_range() {
        let file = FileConfig::default();
        let cfg = measure_config(&file.run, &file.network).unwrap();
        assert_eq!(cfg.target_deadline, Duration::from_secs(30));
        assert_eq!(cfg.max_redirects, 20);
        let mut run = file.run.clone();
        run.deadline_secs = 5.0;
        assert!(run.deadline_secs < run.timeout_secs);
        let err = measure_config(&run, &file.network).unwrap_err().to_string();
        assert!(
            err.contains("deadline") && err.contains("step timeout"),
            "{err}"
        );
        run.timeout_secs = 2.0;
        let cfg = measure_config(&run, &file.network).unwrap();
        assert_eq!(cfg.target_deadline, Duration::from_secs(5));
        run.deadline_secs = f64::NAN;
        assert!(measure_config(&run, &file.network).is_err());
    }

    #[test]
    fn ipv6_is_auto_true_or_false() {
        let parse =
            |v: &str| FileConfig::parse(&format!("[run]\nipv6 = {v}\n"), Path::new("c.toml"));
        assert_eq!(parse("\"auto\"").unwrap().run.ipv6, Ipv6Mode::Auto);
        assert_eq!(parse("true").unwrap().run.ipv6, Ipv6Mode::On);
        assert_eq!(parse("false").unwrap().run.ipv6, Ipv6Mode::Off);
        let err = parse("\"yes\"").unwrap_err().to_string();
        assert!(err.contains("\"auto\", true or false"), "{err}");
        assert!(parse("1").is_err());
        // Forced on and off reach the engine as they are.
        let mut file = FileConfig::default();
        file.run.ipv6 = Ipv6Mode::On;
        assert!(measure_config(&file.run, &file.network).unwrap().ipv6);
        file.run.ipv6 = Ipv6Mode::Off;
        assert!(!measure_config(&file.run, &file.network).unwrap().ipv6);
        // The example's value round-trips through the TOML writer.
        let text = toml::to_string(&FileConfig::default()).unwrap();
        assert!(text.contains("ipv6 = \"auto\""), "{text}");
    }

    #[test]
    fn wrong_type_names_the_line() {
        let err = FileConfig::parse("[run]\nconcurrency = \"many\"\n", Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2"), "{err}");
    }
}
