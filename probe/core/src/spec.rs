//! Parsers for the string forms of the core's settings (resolvers, anchors, CA files, key
//! pins), shared by the `witness` app's config and the collector's control service, so both
//! accept and reject exactly the same spellings.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use crate::checks::{ControlResolverSpec, ResolverSpec};
use crate::error::AddrError;

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

/// Parse `system` or `IP[:PORT]`.
pub fn parse_resolver(s: &str) -> Result<ResolverSpec, ConfigError> {
    if s.eq_ignore_ascii_case("system") {
        return Ok(ResolverSpec::System);
    }
    parse_addr(s, 53)
        .map(ResolverSpec::Udp)
        .map_err(|_| ConfigError::Value {
            what: format!("resolver {s:?}"),
            message: "expected `system` (the resolver your system uses) or a resolver's \
                      IP[:PORT], e.g. 192.168.1.1 or [2001:db8::1]:53"
                .into(),
        })
}

/// Parse the control resolver chain: comma-separated `doh:IP[:PORT]#NAME`,
/// `dot:IP[:PORT]#NAME` or `udp:IP[:PORT]` (labs), tried in order; `none` (or empty) for no
/// encrypted resolver.
pub fn parse_control_resolvers(s: &str) -> Result<Vec<ControlResolverSpec>, ConfigError> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("none") || s.is_empty() {
        return Ok(Vec::new());
    }
    let mut chain = Vec::new();
    for part in s.split(',') {
        let part = part.trim();
        let spec = parse_control_resolver(part)?.ok_or_else(|| ConfigError::Value {
            what: format!("control resolver {s:?}"),
            message: "`none` cannot be part of a chain; use it alone".into(),
        })?;
        if chain.contains(&spec) {
            return Err(ConfigError::Value {
                what: format!("control resolver {s:?}"),
                message: format!("{part:?} is listed twice"),
            });
        }
        chain.push(spec);
    }
    if chain.len() > MAX_CONTROL_RESOLVERS {
        return Err(ConfigError::Value {
            what: format!("control resolver {s:?}"),
            message: format!("at most {MAX_CONTROL_RESOLVERS} resolvers in the chain"),
        });
    }
    Ok(chain)
}

/// Most resolvers in the control resolver chain: each costs a check at the start of a run.
pub const MAX_CONTROL_RESOLVERS: usize = 4;

/// Parse one control resolver (see [`parse_control_resolvers`] for the chain).
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
            parse_addr(rest, 53).map_err(|e| err(e.to_string()))?,
        ))),
        "doh" | "dot" => {
            let (addr, name) = rest.split_once('#').ok_or_else(|| {
                err("missing #NAME: the name the resolver's certificate is for".into())
            })?;
            let port = if kind == "doh" { 443 } else { 853 };
            let addr = parse_addr(addr, port).map_err(|e| err(e.to_string()))?;
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
pub fn parse_addr(s: &str, default_port: u16) -> Result<SocketAddr, AddrError> {
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Ok(sa);
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, default_port));
    }
    Err(AddrError(s.to_string()))
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
    // rustls-pki-types' own PEM reader (rustls-pemfile is unmaintained).
    let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(&bytes).collect();
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn control_resolver_chain() {
        let chain =
            parse_control_resolvers("doh:1.1.1.1#cloudflare-dns.com, dot:9.9.9.9#dns.quad9.net")
                .unwrap();
        assert_eq!(chain.len(), 2);
        assert_eq!(chain[0].transport(), "doh");
        assert_eq!(chain[1].label(), "dns.quad9.net@9.9.9.9:853");
        assert!(parse_control_resolvers("none").unwrap().is_empty());
        assert!(parse_control_resolvers("").unwrap().is_empty());
        let err = parse_control_resolvers("doh:1.1.1.1#a,none")
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot be part of a chain"), "{err}");
        let err = parse_control_resolvers("dot:9.9.9.9#q,dot:9.9.9.9#q")
            .unwrap_err()
            .to_string();
        assert!(err.contains("listed twice"), "{err}");
        let err = parse_control_resolvers("dot:9.9.9.9#q,dot:1.2.3.4")
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing #NAME"), "{err}");
        let five = (1..=5)
            .map(|i| format!("udp:10.0.0.{i}"))
            .collect::<Vec<_>>()
            .join(",");
        assert!(parse_control_resolvers(&five).is_err());
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
