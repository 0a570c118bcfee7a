//! The apps list: which app and tool endpoints `witness run --apps` measures.
//!
//! One statement per line (`targets/apps.txt` documents the format, and
//! `docs/measurement-format.md`), parsed strictly: unlike a URL list, where one bad row is
//! skipped, an endpoint list is small and hand-made, and a typo in it would silently drop a
//! whole app from every verdict. So the first bad line stops the parse with its file, line and
//! what to write instead.

use std::io::Read;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use crate::model::{AppKind, EndpointProbe};

/// The embedded list, the default input (dated, with a source per app).
pub const EMBEDDED_APPS: (&str, &str) = ("apps.txt", include_str!("../../../../targets/apps.txt"));

/// Largest apps list read from a file: a list of a few hundred endpoints is a few kilobytes.
pub const MAX_APPS_LIST_BYTES: u64 = 256 * 1024;

/// Most endpoints one app may list (the collector bounds a record's observations too).
pub const MAX_ENDPOINTS_PER_APP: usize = 64;

/// Which roots verify an endpoint's certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CaChoice {
    /// The Mozilla roots (plus any `--extra-ca`): the web PKI.
    System,
    /// Signal's own CA roots (plus any `--extra-ca`), as OONI's Signal test: Signal's service
    /// certificates are not issued by the web PKI.
    Signal,
    /// No verification: Tor's OR ports present self-signed certificates; the handshake alone is
    /// the test.
    None,
}

/// One endpoint to probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointSpec {
    /// How.
    pub probe: EndpointProbe,
    /// Host name (lower case) or address text (IPv6 without brackets).
    pub host: String,
    /// Port.
    pub port: u16,
    /// Roots for `tls` and `https`.
    pub ca: CaChoice,
    /// SNI for `https` when it differs from the host (domain fronting, as Snowflake's broker).
    pub front: Option<String>,
    /// Path for `https` and `dirport`.
    pub path: Option<String>,
    /// The WireGuard responder's public key.
    pub key: Option<[u8; 32]>,
}

impl EndpointSpec {
    /// `HOST:PORT`, brackets around an IPv6 address.
    pub fn label(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The host as an address, when it is one.
    pub fn ip(&self) -> Option<IpAddr> {
        self.dial_host().parse().ok()
    }

    /// The name connected to: the front of a domain-fronted endpoint (its address and its
    /// certificate), else the host.
    pub fn dial_host(&self) -> &str {
        self.front.as_deref().unwrap_or(&self.host)
    }
}

/// One app or tool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppSpec {
    /// Name: 1-32 of `a-z`, `0-9`, `-`.
    pub name: String,
    /// What kind of test.
    pub kind: AppKind,
    /// Where the endpoints come from (a URL or a short note).
    pub source: String,
    /// The endpoints, in list order.
    pub endpoints: Vec<EndpointSpec>,
}

/// A whole list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppsList {
    /// When the list was last checked, `YYYY-MM-DD`.
    pub date: String,
    /// `embedded:apps.txt@DATE` or the file's path: recorded in every app measurement.
    pub label: String,
    /// The apps, in list order.
    pub apps: Vec<AppSpec>,
}

/// Why a list was refused: where, and what to do.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AppsListError {
    /// The file could not be read.
    #[error("cannot read the apps list {path}: {reason}")]
    Read {
        /// The file.
        path: String,
        /// The OS error, or why its size was refused.
        reason: String,
    },
    /// A line is wrong.
    #[error("{list}:{line}: {message}")]
    Line {
        /// The file (or `embedded:apps.txt`).
        list: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong and what to write.
        message: String,
    },
    /// The list as a whole is wrong (no date, an app without endpoints, ...).
    #[error("{list}: {message}")]
    List {
        /// The file.
        list: String,
        /// What is wrong.
        message: String,
    },
}

fn probe_of(s: &str) -> Option<EndpointProbe> {
    Some(match s {
        "tcp" => EndpointProbe::Tcp,
        "tls" => EndpointProbe::Tls,
        "https" => EndpointProbe::Https,
        "dirport" => EndpointProbe::Dirport,
        "wireguard" => EndpointProbe::Wireguard,
        "openvpn-udp" => EndpointProbe::OpenvpnUdp,
        "openvpn-tcp" => EndpointProbe::OpenvpnTcp,
        "quic" => EndpointProbe::Quic,
        "shadowsocks" => EndpointProbe::Shadowsocks,
        "stun" => EndpointProbe::Stun,
        _ => return None,
    })
}

const PROBES: &str =
    "tcp, tls, https, dirport, wireguard, openvpn-udp, openvpn-tcp, quic, shadowsocks, stun";

fn valid_name(s: &str) -> bool {
    (1..=32).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
}

fn valid_hostname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

fn valid_date(s: &str) -> bool {
    chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").is_ok() && s.len() == 10
}

/// `HOST:PORT` or `[V6]:PORT` into (host, port).
fn host_port(s: &str) -> Result<(String, u16), String> {
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Ok((sa.ip().to_string(), sa.port()));
    }
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("{s:?} has no port: write HOST:PORT, e.g. example.org:443"))?;
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("{port:?} is not a port (1-65535)"))?;
    let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    if host.contains(':') || !valid_hostname(&host) {
        return Err(format!(
            "{host:?} is not a host name or address (an IPv6 address goes in brackets: [2001:db8::1]:443)"
        ));
    }
    Ok((host, port))
}

fn decode_key(s: &str) -> Option<[u8; 32]> {
    use base64_lite::decode;
    decode(s)?.try_into().ok()
}

/// Standard base64 (with padding), for WireGuard keys: the one place the core decodes it.
mod base64_lite {
    pub fn decode(s: &str) -> Option<Vec<u8>> {
        let s = s.as_bytes();
        if s.len() % 4 != 0 {
            return None;
        }
        let val = |c: u8| -> Option<u32> {
            Some(match c {
                b'A'..=b'Z' => c - b'A',
                b'a'..=b'z' => c - b'a' + 26,
                b'0'..=b'9' => c - b'0' + 52,
                b'+' => 62,
                b'/' => 63,
                _ => return None,
            } as u32)
        };
        let mut out = Vec::with_capacity(s.len() / 4 * 3);
        for (i, chunk) in s.chunks(4).enumerate() {
            let last = i == s.len() / 4 - 1;
            let pad = chunk.iter().rev().take_while(|&&c| c == b'=').count();
            if pad > 2 || (pad > 0 && !last) {
                return None;
            }
            let mut n = 0u32;
            for &c in &chunk[..4 - pad] {
                n = (n << 6) | val(c)?;
            }
            n <<= 6 * pad as u32;
            let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
            out.extend_from_slice(&bytes[..3 - pad]);
        }
        Some(out)
    }

    pub fn encode(data: &[u8]) -> String {
        const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for chunk in data.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }
}

/// Base64 of a WireGuard key, as `wg` prints it (the reflector prints its public key so).
pub fn encode_key(key: &[u8; 32]) -> String {
    base64_lite::encode(key)
}

/// Parse a list; `source` names it in errors and records.
pub fn parse_apps_list(source: &str, text: &str) -> Result<AppsList, AppsListError> {
    let err = |line: usize, message: String| AppsListError::Line {
        list: source.to_string(),
        line,
        message,
    };
    let mut date: Option<String> = None;
    let mut apps: Vec<AppSpec> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        match words[0] {
            "date" => {
                if date.is_some() {
                    return Err(err(n, "a second `date` line: a list has one date".into()));
                }
                match words.as_slice() {
                    [_, d] if valid_date(d) => date = Some(d.to_string()),
                    _ => {
                        return Err(err(
                            n,
                            "`date` takes one date, YYYY-MM-DD (when the list was last checked)"
                                .into(),
                        ))
                    }
                }
            }
            "app" => {
                let [_, name, kind, src] = words.as_slice() else {
                    return Err(err(
                        n,
                        "write `app NAME KIND SOURCE` (KIND: messaging, tor or reflector; SOURCE: where the endpoints come from, one word or URL)".into(),
                    ));
                };
                if !valid_name(name) {
                    return Err(err(
                        n,
                        format!("app name {name:?}: use 1-32 of a-z, 0-9 and '-'"),
                    ));
                }
                if apps.iter().any(|a| a.name == *name) {
                    return Err(err(n, format!("app {name:?} is declared twice")));
                }
                let kind = match *kind {
                    "messaging" => AppKind::Messaging,
                    "tor" => AppKind::Tor,
                    "reflector" => AppKind::Reflector,
                    other => {
                        return Err(err(
                            n,
                            format!(
                                "app kind {other:?} is unknown: use messaging, tor or reflector"
                            ),
                        ))
                    }
                };
                apps.push(AppSpec {
                    name: name.to_string(),
                    kind,
                    source: src.to_string(),
                    endpoints: Vec::new(),
                });
            }
            "endpoint" => {
                if words.len() < 4 {
                    return Err(err(
                        n,
                        "write `endpoint APP PROBE HOST:PORT [OPT=VALUE ...]`".into(),
                    ));
                }
                let app = apps
                    .iter_mut()
                    .find(|a| a.name == words[1])
                    .ok_or_else(|| {
                        err(
                            n,
                            format!(
                                "app {:?} is not declared: put an `app` line before its endpoints",
                                words[1]
                            ),
                        )
                    })?;
                let probe = probe_of(words[2]).ok_or_else(|| {
                    err(
                        n,
                        format!("probe {:?} is unknown: use one of {PROBES}", words[2]),
                    )
                })?;
                let (host, port) = host_port(words[3]).map_err(|m| err(n, m))?;
                let mut ep = EndpointSpec {
                    probe,
                    host,
                    port,
                    ca: CaChoice::System,
                    front: None,
                    path: None,
                    key: None,
                };
                for opt in &words[4..] {
                    let Some((k, v)) = opt.split_once('=') else {
                        return Err(err(n, format!("option {opt:?}: write OPT=VALUE")));
                    };
                    match k {
                        "ca" if matches!(probe, EndpointProbe::Tls | EndpointProbe::Https) => {
                            ep.ca = match v {
                                "system" => CaChoice::System,
                                "signal" => CaChoice::Signal,
                                "none" => CaChoice::None,
                                _ => {
                                    return Err(err(
                                        n,
                                        format!("ca={v:?}: use system, signal or none"),
                                    ))
                                }
                            }
                        }
                        "front" if probe == EndpointProbe::Https => {
                            if !valid_hostname(v) {
                                return Err(err(n, format!("front={v:?} is not a host name")));
                            }
                            ep.front = Some(v.to_ascii_lowercase());
                        }
                        "path"
                            if matches!(probe, EndpointProbe::Https | EndpointProbe::Dirport) =>
                        {
                            if !v.starts_with('/')
                                || v.len() > 512
                                || !v.bytes().all(|b| b.is_ascii_graphic())
                            {
                                return Err(err(
                                    n,
                                    format!("path={v:?}: a path starts with '/', printable ASCII, at most 512 bytes"),
                                ));
                            }
                            ep.path = Some(v.to_string());
                        }
                        "key" if probe == EndpointProbe::Wireguard => {
                            ep.key = Some(decode_key(v).ok_or_else(|| {
                                err(n, format!("key={v:?} is not a base64 WireGuard public key (32 bytes, as `wg pubkey` prints)"))
                            })?);
                        }
                        _ => {
                            return Err(err(
                                n,
                                format!("option {k:?} does not apply to a {} endpoint (ca: tls/https; front: https; path: https/dirport; key: wireguard)", words[2]),
                            ))
                        }
                    }
                }
                if probe == EndpointProbe::Wireguard && ep.key.is_none() {
                    return Err(err(
                        n,
                        "a wireguard endpoint needs key=BASE64, the reflector's public key (it prints it at start)".into(),
                    ));
                }
                if app.endpoints.len() >= MAX_ENDPOINTS_PER_APP {
                    return Err(err(
                        n,
                        format!(
                            "app {:?} has more than {MAX_ENDPOINTS_PER_APP} endpoints",
                            app.name
                        ),
                    ));
                }
                app.endpoints.push(ep);
            }
            other => {
                return Err(err(
                    n,
                    format!("{other:?} is not a statement: use date, app or endpoint"),
                ))
            }
        }
    }
    let list_err = |message: String| AppsListError::List {
        list: source.to_string(),
        message,
    };
    let date = date.ok_or_else(|| {
        list_err("no `date YYYY-MM-DD` line: say when the list was last checked".into())
    })?;
    if let Some(a) = apps.iter().find(|a| a.endpoints.is_empty()) {
        return Err(list_err(format!("app {:?} has no endpoints", a.name)));
    }
    if apps.is_empty() {
        return Err(list_err("the list names no app".into()));
    }
    Ok(AppsList {
        label: format!("{source}@{date}"),
        date,
        apps,
    })
}

/// The embedded list.
pub fn embedded_apps() -> AppsList {
    // A test parses the embedded list, so this cannot fail in a built binary.
    parse_apps_list(&format!("embedded:{}", EMBEDDED_APPS.0), EMBEDDED_APPS.1)
        .expect("the embedded apps list parses (tested)")
}

/// Read and parse a list file (at most [`MAX_APPS_LIST_BYTES`]).
pub fn load_apps_list(path: &Path) -> Result<AppsList, AppsListError> {
    let read_err = |reason: String| AppsListError::Read {
        path: path.display().to_string(),
        reason,
    };
    let f = std::fs::File::open(path).map_err(|e| read_err(e.to_string()))?;
    let mut buf = Vec::new();
    f.take(MAX_APPS_LIST_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(|e| read_err(e.to_string()))?;
    if buf.len() as u64 > MAX_APPS_LIST_BYTES {
        return Err(read_err(format!(
            "it is larger than {MAX_APPS_LIST_BYTES} bytes; an apps list is a few kilobytes"
        )));
    }
    let text = String::from_utf8(buf).map_err(|_| read_err("it is not UTF-8 text".into()))?;
    parse_apps_list(&path.display().to_string(), &text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_list_parses_with_every_app() {
        let l = embedded_apps();
        assert_eq!(l.date.len(), 10);
        let names: Vec<&str> = l.apps.iter().map(|a| a.name.as_str()).collect();
        for n in ["telegram", "whatsapp", "signal", "messenger", "tor"] {
            assert!(names.contains(&n), "{n} missing from {names:?}");
        }
        let wa = l.apps.iter().find(|a| a.name == "whatsapp").unwrap();
        // e1-e16 on two ports, the registration service and the web version.
        assert_eq!(wa.endpoints.len(), 34);
        let signal = l.apps.iter().find(|a| a.name == "signal").unwrap();
        assert!(signal.endpoints.iter().all(|e| e.ca == CaChoice::Signal));
        assert!(l.label.starts_with("embedded:apps.txt@"));
    }

    #[test]
    fn strict_errors_name_the_line_and_the_fix() {
        let cases: &[(&str, &str)] = &[
            ("app x messaging s\nendpoint x tcp a.b:1\n", "no `date"),
            ("date 2026-13-01\n", ":1: `date` takes one date"),
            (
                "date 2026-01-01\nendpoint x tcp a:1\n",
                ":2: app \"x\" is not declared",
            ),
            ("date 2026-01-01\napp X messaging s\n", "app name \"X\""),
            (
                "date 2026-01-01\napp x chat s\n",
                "app kind \"chat\" is unknown",
            ),
            (
                "date 2026-01-01\napp x tor s\nendpoint x ping a:1\n",
                "probe \"ping\" is unknown",
            ),
            (
                "date 2026-01-01\napp x tor s\nendpoint x tcp a.b\n",
                "has no port",
            ),
            (
                "date 2026-01-01\napp x tor s\nendpoint x tcp a.b:0\n",
                "is not a port",
            ),
            (
                "date 2026-01-01\napp x tor s\nendpoint x tcp 2001:db8::1:443\n",
                "brackets",
            ),
            (
                "date 2026-01-01\napp x tor s\nendpoint x tcp a.b:1 ca=signal\n",
                "does not apply",
            ),
            (
                "date 2026-01-01\napp x tor s\nendpoint x tls a.b:1 ca=maybe\n",
                "ca=\"maybe\"",
            ),
            (
                "date 2026-01-01\napp x tor s\nendpoint x wireguard a.b:1\n",
                "needs key=",
            ),
            (
                "date 2026-01-01\napp x tor s\nendpoint x wireguard a.b:1 key=abc\n",
                "not a base64",
            ),
            (
                "date 2026-01-01\napp x tor s\n",
                "app \"x\" has no endpoints",
            ),
            (
                "date 2026-01-01\nfrobnicate\n",
                "\"frobnicate\" is not a statement",
            ),
            ("date 2026-01-01\n", "names no app"),
        ];
        for (text, want) in cases {
            let e = parse_apps_list("f.txt", text).unwrap_err().to_string();
            assert!(e.contains(want), "{text:?}: {e:?} lacks {want:?}");
            assert!(e.starts_with("f.txt"), "{e}");
        }
    }

    #[test]
    fn endpoints_parse_with_options() {
        let key = encode_key(&[7u8; 32]);
        let text = format!(
            "date 2026-01-01\napp r reflector lab\n\
             endpoint r wireguard [::1]:51820 key={key}\n\
             endpoint r https Broker.Example:443 front=cdn.example path=/probe\n"
        );
        let l = parse_apps_list("f", &text).unwrap();
        let eps = &l.apps[0].endpoints;
        assert_eq!(eps[0].host, "::1");
        assert_eq!(eps[0].label(), "[::1]:51820");
        assert_eq!(eps[0].key, Some([7u8; 32]));
        assert_eq!(eps[1].host, "broker.example");
        assert_eq!(eps[1].front.as_deref(), Some("cdn.example"));
        assert_eq!(eps[1].path.as_deref(), Some("/probe"));
    }

    #[test]
    fn base64_round_trips() {
        for n in 0..40u8 {
            let data: Vec<u8> = (0..n).map(|i| i.wrapping_mul(37)).collect();
            assert_eq!(
                base64_lite::decode(&base64_lite::encode(&data)).unwrap(),
                data
            );
        }
        assert!(base64_lite::decode("a=bc").is_none());
    }

    #[test]
    fn oversized_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("big.txt");
        std::fs::write(&p, vec![b'#'; MAX_APPS_LIST_BYTES as usize + 1]).unwrap();
        let e = load_apps_list(&p).unwrap_err().to_string();
        assert!(e.contains("larger than"), "{e}");
        let missing = load_apps_list(&dir.path().join("nope"))
            .unwrap_err()
            .to_string();
        assert!(missing.contains("cannot read the apps list"), "{missing}");
    }
}
