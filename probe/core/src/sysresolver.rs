//! Where the network's resolver is when the volunteer names none (`resolver = "system"`).
//!
//! A Linux machine says it in `/etc/resolv.conf`. An Android phone has no such file: Termux
//! ships its own `$PREFIX/etc/resolv.conf`, and Android kept the resolver in the `net.dns1`
//! property until version 8 (later versions hide it from apps, so `getprop` prints nothing).
//! The order is decided by [`choose`], a pure function over what [`gather`] found, so it is
//! tested without the machine; when nothing is found the message names `--resolver`.
//!
//! Windows keeps the resolver per network adapter: it is read from the adapters' settings
//! (`GetAdaptersAddresses`, through hickory's system configuration), the first DNS server of
//! an adapter that is up; when that API fails the message names `--resolver` as above.

use std::io::Read;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::checks::dns::system_nameserver;

/// The resolver configuration of a Linux system.
pub const ETC_RESOLV_CONF: &str = "/etc/resolv.conf";
/// Termux's install prefix when `$PREFIX` is not set (the app's data directory).
pub const TERMUX_PREFIX: &str = "/data/data/com.termux/files/usr";
/// Android's property tool, by absolute path: only Android has it, and a `getprop` earlier on
/// `PATH` must not answer for it.
pub const GETPROP: &str = "/system/bin/getprop";
/// The property that held the network's resolver up to Android 7.
pub const ANDROID_DNS_PROPERTY: &str = "net.dns1";
/// How long `getprop` may take: it reads shared memory and answers in milliseconds.
const GETPROP_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest resolv.conf read: a real one is a few hundred bytes.
const MAX_RESOLV_CONF: u64 = 64 * 1024;
/// Largest `getprop` output read.
const MAX_PROPERTY: u64 = 256;

/// What the machine offered, in the order it is consulted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Found {
    /// Each resolv.conf looked at, with its text when it could be read.
    pub files: Vec<(PathBuf, Option<String>)>,
    /// Android's `net.dns1`: `None` when `getprop` is absent or failed, else what it printed.
    pub android_dns1: Option<String>,
}

/// Where the resolver came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// The first `nameserver` line of this file.
    File(PathBuf),
    /// Android's `net.dns1` property.
    AndroidProperty,
    /// The DNS servers of Windows' network adapters that are up.
    WindowsAdapters,
}

/// The network's resolver and where it was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SystemResolver {
    /// UDP port 53 of the first usable nameserver.
    pub addr: SocketAddr,
    /// Where it was found.
    pub source: Source,
}

/// No resolver was found: what was looked at, and how to name one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NoSystemResolver {
    /// One `where: why not` per place looked at.
    pub looked: Vec<String>,
    /// No resolv.conf exists at all: nothing says where the resolver is (Android without
    /// Termux's file). Otherwise a file exists but names none, as NetworkManager leaves it
    /// on a machine with no network: that machine is offline, and measuring says so.
    pub unconfigured: bool,
}

impl std::fmt::Display for NoSystemResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "no system resolver found ({}); name the network's resolver with --resolver IP \
             (or resolver = \"IP\" under [network] in the config file), e.g. the Wi-Fi \
             router's address or the mobile operator's DNS server",
            self.looked.join("; ")
        )
    }
}

impl std::error::Error for NoSystemResolver {}

/// The resolv.conf files to read, in order: the system's, then Termux's under `$PREFIX`
/// (`prefix`, when it is an absolute path), then Termux's default prefix.
pub fn candidate_files(prefix: Option<&str>) -> Vec<PathBuf> {
    let mut out = vec![PathBuf::from(ETC_RESOLV_CONF)];
    let termux = |p: &str| Path::new(p).join("etc").join("resolv.conf");
    if let Some(p) = prefix.filter(|p| p.starts_with('/')) {
        out.push(termux(p));
    }
    let default = termux(TERMUX_PREFIX);
    if !out.contains(&default) {
        out.push(default);
    }
    out
}

/// The resolver from what was found: the first file with a usable `nameserver` line, else
/// Android's property, else the places looked at.
pub fn choose(found: &Found) -> Result<SystemResolver, NoSystemResolver> {
    let mut looked = Vec::new();
    let unconfigured = found.files.iter().all(|(_, text)| text.is_none());
    for (path, text) in &found.files {
        match text.as_deref().map(system_nameserver) {
            Some(Some(addr)) if !addr.ip().is_unspecified() => {
                return Ok(SystemResolver {
                    addr,
                    source: Source::File(path.clone()),
                })
            }
            Some(_) => looked.push(format!("{}: no usable nameserver line", path.display())),
            None => looked.push(format!("{}: not readable", path.display())),
        }
    }
    let prop = found.android_dns1.as_deref().map(str::trim);
    match prop.map(|p| p.split('%').next().unwrap_or("").parse::<IpAddr>()) {
        Some(Ok(ip)) if !ip.is_unspecified() => {
            return Ok(SystemResolver {
                addr: SocketAddr::new(ip, 53),
                source: Source::AndroidProperty,
            })
        }
        Some(_) => looked.push(format!("Android's {ANDROID_DNS_PROPERTY}: empty")),
        None => looked.push(format!("Android's {ANDROID_DNS_PROPERTY}: no getprop")),
    }
    Err(NoSystemResolver {
        looked,
        unconfigured,
    })
}

/// Read the files of [`candidate_files`] (bounded) and, only when none names a resolver,
/// Android's property (asked once per process: it runs a program).
pub fn gather() -> Found {
    let prefix = std::env::var("PREFIX").ok();
    let files: Vec<(PathBuf, Option<String>)> = candidate_files(prefix.as_deref())
        .into_iter()
        .map(|p| {
            let text = read_bounded(&p);
            (p, text)
        })
        .collect();
    let any_file = files
        .iter()
        .any(|(_, t)| t.as_deref().and_then(system_nameserver).is_some());
    let android_dns1 = if any_file {
        None
    } else {
        static PROP: OnceLock<Option<String>> = OnceLock::new();
        PROP.get_or_init(|| getprop(ANDROID_DNS_PROPERTY)).clone()
    };
    Found {
        files,
        android_dns1,
    }
}

/// The network's resolver as this machine configures it.
pub fn system_resolver() -> Result<SystemResolver, NoSystemResolver> {
    #[cfg(windows)]
    return windows_resolver();
    #[cfg(not(windows))]
    choose(&gather())
}

/// The first DNS server of a Windows network adapter that is up. No adapter with one is an
/// offline machine (measuring says so), as a resolv.conf without a nameserver is on Linux;
/// adapters that cannot be read leave the resolver unknown, and the message names
/// `--resolver`.
#[cfg(windows)]
fn windows_resolver() -> Result<SystemResolver, NoSystemResolver> {
    const WHERE: &str = "Windows network adapters";
    match hickory_resolver::system_conf::read_system_conf() {
        Ok((conf, _)) => conf
            .name_servers()
            .iter()
            .map(|ns| ns.ip)
            .find(|ip| !ip.is_unspecified())
            .map(|ip| SystemResolver {
                addr: SocketAddr::new(ip, 53),
                source: Source::WindowsAdapters,
            })
            .ok_or_else(|| NoSystemResolver {
                looked: vec![format!("{WHERE}: no DNS server on an adapter that is up")],
                unconfigured: false,
            }),
        Err(e) => Err(NoSystemResolver {
            looked: vec![format!("{WHERE}: not readable ({e})")],
            unconfigured: true,
        }),
    }
}

/// Names for the collector and control clients (reqwest). The static musl binary's own
/// resolver reads only `/etc/resolv.conf` and, without it, asks 127.0.0.1:53, which nothing
/// answers on Android: there, names go to [`system_resolver`]'s address instead. Where
/// `/etc/resolv.conf` names the resolver, the C library's lookup (with `/etc/hosts`) is kept,
/// as Windows' own lookup always is.
#[derive(Clone, Copy, Debug, Default)]
pub struct HostResolver;

/// How long one name lookup for the collector may take.
const HOST_LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);

impl reqwest::dns::Resolve for HostResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = match system_resolver() {
                Ok(r) if !cfg!(windows) && !etc_resolv_conf_names(r.addr) => {
                    lookup_at(r.addr, &host).await?
                }
                _ => tokio::net::lookup_host((host.as_str(), 0)).await?.collect(),
            };
            let addrs: reqwest::dns::Addrs = Box::new(addrs.into_iter());
            Ok(addrs)
        })
    }
}

/// Whether `/etc/resolv.conf` names `addr` (then the C library finds it too).
fn etc_resolv_conf_names(addr: SocketAddr) -> bool {
    read_bounded(Path::new(ETC_RESOLV_CONF))
        .and_then(|t| system_nameserver(&t))
        .is_some_and(|a| a == addr)
}

/// A and AAAA for `host` from the resolver at `server`.
async fn lookup_at(
    server: SocketAddr,
    host: &str,
) -> Result<Vec<SocketAddr>, Box<dyn std::error::Error + Send + Sync>> {
    use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
    use hickory_resolver::net::runtime::TokioRuntimeProvider;
    let mut ns = NameServerConfig::udp(server.ip());
    for c in &mut ns.connections {
        c.port = server.port();
    }
    let mut opts = ResolverOpts::default();
    opts.timeout = HOST_LOOKUP_TIMEOUT / 2;
    opts.attempts = 2;
    let resolver = hickory_resolver::TokioResolver::builder_with_config(
        ResolverConfig::from_name_servers(vec![ns]),
        TokioRuntimeProvider::default(),
    )
    .with_options(opts)
    .build()?;
    let ips = tokio::time::timeout(HOST_LOOKUP_TIMEOUT, resolver.lookup_ip(host))
        .await
        .map_err(|_| format!("no answer for {host} from {server} in time"))??;
    Ok(ips.iter().map(|ip| SocketAddr::new(ip, 0)).collect())
}

fn read_bounded(path: &Path) -> Option<String> {
    let mut text = String::new();
    std::fs::File::open(path)
        .ok()?
        .take(MAX_RESOLV_CONF)
        .read_to_string(&mut text)
        .ok()?;
    Some(text)
}

/// `getprop NAME`, killed after [`GETPROP_TIMEOUT`]; `None` when it cannot run or fails.
fn getprop(name: &str) -> Option<String> {
    if !Path::new(GETPROP).is_file() {
        return None;
    }
    let mut child = Command::new(GETPROP)
        .arg(name)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if start.elapsed() < GETPROP_TIMEOUT => {
                std::thread::sleep(Duration::from_millis(10))
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    };
    let mut out = String::new();
    child
        .stdout
        .take()?
        .take(MAX_PROPERTY)
        .read_to_string(&mut out)
        .ok()?;
    status.success().then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, text: Option<&str>) -> (PathBuf, Option<String>) {
        (PathBuf::from(path), text.map(String::from))
    }

    const ETC: &str = "/etc/resolv.conf";
    const TERMUX: &str = "/data/data/com.termux/files/usr/etc/resolv.conf";

    #[test]
    fn candidate_files_put_the_system_first_and_termux_after() {
        let cases: &[(Option<&str>, &[&str])] = &[
            (None, &[ETC, TERMUX]),
            (Some("/data/data/com.termux/files/usr"), &[ETC, TERMUX]),
            (
                Some("/opt/termux/usr"),
                &[ETC, "/opt/termux/usr/etc/resolv.conf", TERMUX],
            ),
            // A relative PREFIX is not a Termux prefix.
            (Some("usr"), &[ETC, TERMUX]),
            (Some(""), &[ETC, TERMUX]),
        ];
        for (prefix, want) in cases {
            let got = candidate_files(*prefix);
            let want: Vec<PathBuf> = want.iter().map(PathBuf::from).collect();
            assert_eq!(got, want, "PREFIX={prefix:?}");
        }
    }

    #[test]
    fn lookup_order() {
        let sock = |s: &str| s.parse::<SocketAddr>().unwrap();
        let termux = || Source::File(PathBuf::from(TERMUX));
        let etc = || Source::File(PathBuf::from(ETC));
        type Case = (&'static str, Found, Option<(SocketAddr, Source)>);
        let cases: Vec<Case> = vec![
            (
                "offline linux: a resolv.conf without nameserver, nothing else",
                Found {
                    files: vec![
                        file(ETC, Some("# Generated by NetworkManager\n")),
                        file(TERMUX, None),
                    ],
                    android_dns1: None,
                },
                None,
            ),
            (
                "linux: /etc/resolv.conf",
                Found {
                    files: vec![
                        file(ETC, Some("search lan\nnameserver 192.168.1.1\n")),
                        file(TERMUX, Some("nameserver 8.8.8.8\n")),
                    ],
                    android_dns1: Some("10.0.0.1".into()),
                },
                Some((sock("192.168.1.1:53"), etc())),
            ),
            (
                "termux: no /etc/resolv.conf",
                Found {
                    files: vec![file(ETC, None), file(TERMUX, Some("nameserver 8.8.8.8\n"))],
                    android_dns1: None,
                },
                Some((sock("8.8.8.8:53"), termux())),
            ),
            (
                "an /etc/resolv.conf without nameserver falls through",
                Found {
                    files: vec![
                        file(ETC, Some("# empty\noptions ndots:1\n")),
                        file(TERMUX, Some("nameserver 2001:4860:4860::8888\n")),
                    ],
                    android_dns1: None,
                },
                Some((sock("[2001:4860:4860::8888]:53"), termux())),
            ),
            (
                "0.0.0.0 is no resolver",
                Found {
                    files: vec![
                        file(ETC, Some("nameserver 0.0.0.0\n")),
                        file(TERMUX, Some("nameserver 1.1.1.1\n")),
                    ],
                    android_dns1: None,
                },
                Some((sock("1.1.1.1:53"), termux())),
            ),
            (
                "old android: the property",
                Found {
                    files: vec![file(ETC, None), file(TERMUX, None)],
                    android_dns1: Some("10.177.0.34\n".into()),
                },
                Some((sock("10.177.0.34:53"), Source::AndroidProperty)),
            ),
            (
                "android 8+: the property is empty",
                Found {
                    files: vec![file(ETC, None), file(TERMUX, None)],
                    android_dns1: Some("\n".into()),
                },
                None,
            ),
            (
                "nothing at all",
                Found {
                    files: vec![file(ETC, None), file(TERMUX, None)],
                    android_dns1: None,
                },
                None,
            ),
        ];
        for (name, found, want) in cases {
            let got = choose(&found);
            match want {
                Some((addr, source)) => {
                    assert_eq!(got, Ok(SystemResolver { addr, source }), "{name}")
                }
                None => {
                    let err = got.expect_err(name);
                    let offline = found.files.iter().any(|(_, t)| t.is_some());
                    assert_eq!(err.unconfigured, !offline, "{name}");
                    let msg = err.to_string();
                    for needle in ["--resolver", "[network]", ETC, TERMUX, "net.dns1"] {
                        assert!(msg.contains(needle), "{name}: {needle} not in {msg}");
                    }
                }
            }
        }
    }

    #[test]
    fn getprop_is_not_run_where_android_is_not() {
        if !Path::new(GETPROP).exists() {
            assert_eq!(getprop(ANDROID_DNS_PROPERTY), None);
        }
    }
}
