//! The lab's small internet, built in network namespaces:
//!
//! ```text
//!  client N ──veth── ISP N (router + censor) ──veth── internet
//!  198.18.N.2        198.18.N.1                       origins 198.19.0.0/16 (one address per site)
//!                    resolver   198.18.1N.53 dnsmasq   honest resolver 198.18.100.53 (dnsmasq)
//!                    blockpage  198.18.1N.80           collector       198.18.100.10:8080
//!                                                      encrypted resolver 198.18.100.54 (unbound:
//!                                                        DoH :443, DoT :853, resolver.lab)
//!                    hijack proxy 198.18.1N.8 (relays by Host, or answers a notice)
//!                    nft, iptables string match, htb
//!                       └──veth── injector N (198.18.1N.53 too: answers the dup'ed queries)
//! ```
//!
//! Addresses come only from 198.18.0.0/15, inside the namespaces; the host gets no interface
//! and no route. No namespace has a default route, so nothing (not even a bogon answer's
//! 10.10.34.34) can leave the lab: a connect to an address outside it fails at once.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::netlab::{lab_origin_bin, Lab};

/// The range the lab lives in; the probe and the control are told it is public.
pub const LAB_RANGE: &str = "198.18.0.0/15";
/// The lab's IPv6 internet: the documentation prefix, declared public like [`LAB_RANGE`].
pub const LAB_RANGE_V6: &str = "2001:db8::/32";
/// The collector (and control service).
pub const COLLECTOR: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 10);
/// The collector's port.
pub const COLLECTOR_PORT: u16 = 8080;
/// The honest resolver the control uses and the ISPs forward to.
pub const HONEST_DNS: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 53);
/// The encrypted resolver (unbound: DoH on 443, DoT on 853), forwarding to the honest one: the
/// lab's stand-in for a public resolver such as 1.1.1.1.
pub const ENCRYPTED_DNS: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 54);
/// The name on the encrypted resolver's certificate (signed by the lab CA).
pub const ENCRYPTED_DNS_NAME: &str = "resolver.lab";

/// The probe's control resolver chain in the lab: DoH, then DoT, on the encrypted resolver.
pub fn control_resolver_chain() -> String {
    format!("doh:{ENCRYPTED_DNS}#{ENCRYPTED_DNS_NAME},dot:{ENCRYPTED_DNS}#{ENCRYPTED_DNS_NAME}")
}

/// The bogon a lying resolver answers (the Iranian classic); unreachable by construction.
pub const BOGON: Ipv4Addr = Ipv4Addr::new(10, 10, 34, 34);
/// Rate of the throttled class (LAB.md: 1 mbit gives ~120 kB/s).
pub const THROTTLE_RATE: &str = "1mbit";

/// The collector's base URL.
pub fn collector_url() -> String {
    format!("http://{COLLECTOR}:{COLLECTOR_PORT}/")
}

fn client_ip(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, n, 2)
}
fn gateway_ip(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, n, 1)
}
/// The ISP's resolver (what the probe is given with `--resolver`).
pub fn resolver_ip(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 10 + n, 53)
}
/// The ISP's blockpage host.
pub fn blockpage_ip(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 10 + n, 80)
}
/// The ISP's transparent proxy that DNS hijacking points at.
pub fn proxy_ip(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 10 + n, 8)
}

/// What a site's origin does over one transport (`lab-origin`'s behaviour names).
pub fn page() -> Value {
    json!("page")
}
pub fn redirect(status: u16, location: &str) -> Value {
    json!({"redirect": {"status": status, "location": location}})
}
pub fn forbidden() -> Value {
    json!("forbidden")
}
pub fn expired_cert() -> Value {
    json!("expired_cert")
}

/// One host name on the lab internet and what its origin serves.
#[derive(Clone, Debug)]
pub struct Site {
    /// ASCII (punycode) host name.
    pub host: String,
    pub https: Option<Value>,
    pub http: Option<Value>,
    /// Page size in bytes (0: a small page).
    pub size: usize,
    /// Shares the address and listeners of this earlier site (virtual hosting).
    pub hosted_with: Option<String>,
    /// The honest resolver knows the name (false: NXDOMAIN everywhere).
    pub in_dns: bool,
    /// Also served on an IPv6 address of [`LAB_RANGE_V6`], with an AAAA record.
    pub ipv6: bool,
    /// The honest resolver has no A record for it (an IPv6-only site).
    pub no_a: bool,
}

impl Site {
    fn new(host: &str, https: Option<Value>, http: Option<Value>) -> Self {
        Self {
            host: host.to_ascii_lowercase(),
            https,
            http,
            size: 0,
            hosted_with: None,
            in_dns: true,
            ipv6: false,
            no_a: false,
        }
    }
    /// HTTPS and HTTP, the normal page.
    pub fn both(host: &str) -> Self {
        Self::new(host, Some(page()), Some(page()))
    }
    /// HTTPS only.
    pub fn https(host: &str) -> Self {
        Self::new(host, Some(page()), None)
    }
    /// Cleartext HTTP only.
    pub fn http(host: &str) -> Self {
        Self::new(host, None, Some(page()))
    }
    /// An address where nothing listens.
    pub fn nothing(host: &str) -> Self {
        Self::new(host, None, None)
    }
    pub fn https_does(mut self, behaviour: Value) -> Self {
        self.https = Some(behaviour);
        self
    }
    pub fn http_does(mut self, behaviour: Value) -> Self {
        self.http = Some(behaviour);
        self
    }
    pub fn size(mut self, bytes: usize) -> Self {
        self.size = bytes;
        self
    }
    pub fn hosted_with(mut self, host: &str) -> Self {
        self.hosted_with = Some(host.to_ascii_lowercase());
        self
    }
    pub fn not_in_dns(mut self) -> Self {
        self.in_dns = false;
        self
    }
    /// Served over IPv6 too (an AAAA record and an origin on an IPv6 address).
    pub fn dual_stack(mut self) -> Self {
        self.ipv6 = true;
        self
    }
    /// Served over IPv6 alone: an AAAA record and no A record.
    pub fn ipv6_only(mut self) -> Self {
        self.ipv6 = true;
        self.no_a = true;
        self
    }
}

/// A censorship technique an ISP applies to one host (or its address).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Technique {
    /// dnsmasq `--address=/host/`: NXDOMAIN.
    DnsNxdomain,
    /// dnsmasq `--address=/host/10.10.34.34`.
    DnsBogon,
    /// dnsmasq `--address=/host/<ISP blockpage host>`.
    DnsToBlockpage,
    /// dnsmasq `--address=/host/<ISP transparent proxy>`, which relays the real site.
    DnsToProxy,
    /// dnsmasq `--address=/host/<ISP transparent proxy>`, which answers the host with a 200
    /// notice of its own (no blockpage signature knows it) instead of relaying.
    DnsToNotice,
    /// nft raw payload match on the query name at the resolver: dropped.
    DnsDrop,
    /// nft `dup` of the query to an injector that answers first with the blockpage host.
    DnsInject,
    /// nft `ip daddr SITE drop`.
    TcpBlackhole,
    /// nft: a SYN to the site is answered with a RST.
    TcpRstOnSyn,
    /// nft: only this port of the site is dropped.
    TcpDropPort(u16),
    /// iptables string match on the SNI in the ClientHello, `REJECT --reject-with tcp-reset`.
    SniReset,
    /// iptables string match on the SNI, `DROP` (Kazakhstan since 2021).
    SniDrop,
    /// nat redirect of the site's port 443 to an interception proxy with the state CA.
    Mitm,
    /// nat redirect of the site's port 80 to a transparent proxy answering a blockpage.
    HttpBlockpage,
    /// nat redirect of the site's port 80 to a transparent proxy that replaces the page with a
    /// 200 notice no blockpage signature knows (the site's HTTPS is left alone).
    HttpNotice,
    /// iptables string match on `Host: host`, `REJECT --reject-with tcp-reset`.
    HttpHostReset,
    /// htb class of [`THROTTLE_RATE`] for traffic from the site's address.
    Throttle,
    /// nat redirect of the site's port 443 to a relay that holds the server's first answer
    /// [`HANDSHAKE_DELAY_MS`]: throttling by handshake latency (the lab has no netem).
    HandshakeDelay,
    /// Not censorship, the line itself: nat redirect of the site's port 443 to a relay that
    /// paces everything the server sends to [`SLOW_LINE_BPS`] (a slow DSL line; applied to
    /// every site the network's probe measures, its anchors included).
    SlowLine,
    /// A throttled site on that slow line: paced to [`SLOW_LINE_THROTTLED_BPS`].
    ThrottledOnSlowLine,
}

/// The slow line's rate, bytes per second (1.6 Mbit/s: a slow DSL line), per connection; under
/// the probe's 256 KiB/s ceiling for throttling, so only the line's reference keeps its sites
/// `accessible`.
pub const SLOW_LINE_BPS: u64 = 200_000;
/// A throttled site on the slow line: an eighth of the line, under its fifth.
pub const SLOW_LINE_THROTTLED_BPS: u64 = 25_000;

/// How long the handshake-delay relay holds the ServerHello.
/// Over the probe's 2 s floor for a throttled handshake whatever the machine's load (a relay
/// adds, never removes, time), under the lab's 5 s step timeout with room for the load's
/// second.
pub const HANDSHAKE_DELAY_MS: u64 = 2_600;

/// Everything one ISP does.
#[derive(Clone, Debug, Default)]
pub struct Censor {
    pub rules: Vec<(String, Technique)>,
    /// Drop everything to the collector (control and uploads unreachable).
    pub block_collector: bool,
    /// Reset TLS connections to the encrypted resolver that name it in the SNI (DoH on 443).
    pub block_doh: bool,
    /// Drop DNS over TLS to the encrypted resolver (port 853): its handshakes time out.
    pub block_dot: bool,
}

/// The running internet namespace.
pub struct Internet {
    pub ns: String,
    /// Host → address.
    pub ips: HashMap<String, Ipv4Addr>,
    /// Host → IPv6 address, for the sites served over IPv6.
    pub ips6: HashMap<String, Ipv6Addr>,
    /// Hosts the honest resolver knows, in the order the sites were given.
    pub in_dns: Vec<String>,
    /// The lab CA (signs the origins' certificates).
    pub ca: PathBuf,
}

impl Internet {
    pub fn ip(&self, host: &str) -> Ipv4Addr {
        *self
            .ips
            .get(&host.to_ascii_lowercase())
            .unwrap_or_else(|| panic!("no site {host} in the lab"))
    }
}

/// One client network: the volunteer's namespace behind one ISP.
pub struct Network {
    pub n: u8,
    pub client: String,
    pub isp: String,
}

impl Network {
    pub fn resolver(&self) -> Ipv4Addr {
        resolver_ip(self.n)
    }
}

fn site_ip(k: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 19, (k / 250) as u8, (k % 250 + 1) as u8)
}

/// The IPv6 address of the `k`th site: `2001:db8:19::k`.
fn site_ip6(k: usize) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 0x19, 0, 0, 0, 0, k as u16 + 1)
}

/// Starts a dnsmasq (under a guard) and waits until it answers `check` from `from_ns`.
pub fn dnsmasq(
    lab: &Lab,
    ns: &str,
    label: &str,
    listen: Ipv4Addr,
    options: &[String],
    check: Option<(&str, &str)>,
) -> Result<()> {
    let mut args = vec![
        "dnsmasq".to_owned(),
        "--keep-in-foreground".to_owned(),
        "--conf-file=/dev/null".to_owned(),
        "--no-resolv".to_owned(),
        "--no-hosts".to_owned(),
        "--bind-interfaces".to_owned(),
        format!("--listen-address={listen}"),
        "--port=53".to_owned(),
        format!("--pid-file={}", lab.path(&format!("{label}.pid")).display()),
        "--log-queries".to_owned(),
        "--log-facility=-".to_owned(),
    ];
    args.extend(options.iter().cloned());
    lab.spawn(ns, label, &args, &[])?;
    if let Some((from_ns, name)) = check {
        wait_dns(lab, label, from_ns, listen, name)?;
    }
    Ok(())
}

fn wait_dns(lab: &Lab, label: &str, from_ns: &str, server: Ipv4Addr, name: &str) -> Result<()> {
    let server = format!("{server}:53");
    let mut last = String::new();
    for _ in 0..50 {
        match lab.exec(from_ns, lab_origin_bin(), &["dns", &server, name]) {
            Ok(out) if out.contains("NoError") => return Ok(()),
            Ok(out) => last = out,
            Err(e) => last = format!("{e:#}"),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!(
        "{label} on {server} does not resolve {name}: {last}\n{}",
        lab.log(label)
    )
}

/// Builds the internet namespace: every site on its own address (or a shared one), origins,
/// the honest resolver. Returns it with the lab CA written.
pub fn build_internet(lab: &Lab, sites: &[Site]) -> Result<Internet> {
    let ns = lab.netns("inet")?;
    let mut ips: HashMap<String, Ipv4Addr> = HashMap::new();
    let mut ips6: HashMap<String, Ipv6Addr> = HashMap::new();
    let mut origins: BTreeMap<IpAddr, Vec<Value>> = BTreeMap::new();
    let mut next = 0;
    for site in sites {
        if ips.contains_key(&site.host) {
            bail!("site {} is defined twice", site.host);
        }
        let ip = match &site.hosted_with {
            Some(other) => *ips
                .get(other)
                .with_context(|| format!("{} is hosted with unknown {other}", site.host))?,
            None => {
                next += 1;
                let ip = site_ip(next);
                lab.ip(&ns, &["addr", "add", &format!("{ip}/32"), "dev", "lo"])?;
                ip
            }
        };
        ips.insert(site.host.clone(), ip);
        let mut at: Vec<IpAddr> = vec![ip.into()];
        if site.ipv6 {
            let ip6 = site_ip6(next);
            lab.ip(
                &ns,
                &["-6", "addr", "add", &format!("{ip6}/128"), "dev", "lo"],
            )?;
            ips6.insert(site.host.clone(), ip6);
            at.push(ip6.into());
        }
        for ip in at {
            let entry = origins.entry(ip).or_default();
            if site.https.is_some() || site.http.is_some() {
                let mut spec = json!({"names": [site.host], "size": site.size});
                if let Some(b) = &site.https {
                    spec["https"] = b.clone();
                }
                if let Some(b) = &site.http {
                    spec["http"] = b.clone();
                }
                entry.push(spec);
            }
        }
    }
    for ip in [COLLECTOR, HONEST_DNS, ENCRYPTED_DNS] {
        lab.ip(&ns, &["addr", "add", &format!("{ip}/32"), "dev", "lo"])?;
    }
    let ca = lab.path("lab-ca.pem");
    let origins: Vec<Value> = origins
        .into_iter()
        .filter(|(_, sites)| !sites.is_empty())
        .map(|(ip, sites)| json!({"ip": ip, "sites": sites}))
        .collect();
    let (resolver_cert, resolver_key) = (lab.path("resolver.pem"), lab.path("resolver.key"));
    lab.serve(
        &ns,
        "inet-origins",
        &json!({
            "ca_out": ca,
            "certs_out": [{"names": [ENCRYPTED_DNS_NAME], "cert": resolver_cert, "key": resolver_key}],
            "origins": origins,
        }),
    )?;

    let mut records: Vec<String> = sites
        .iter()
        .filter(|s| s.in_dns)
        .map(|s| {
            let mut addrs: Vec<String> = Vec::new();
            if !s.no_a {
                addrs.push(ips[&s.host].to_string());
            }
            if let Some(ip6) = ips6.get(&s.host) {
                addrs.push(ip6.to_string());
            }
            format!("--host-record={},{}", s.host, addrs.join(","))
        })
        .collect();
    // Authoritative for the lab's zone: an unknown name is NXDOMAIN, for everyone.
    records.push("--local=/lab/".to_owned());
    let check = sites.iter().find(|s| s.in_dns).map(|s| s.host.clone());
    dnsmasq(
        lab,
        &ns,
        "dns-honest",
        HONEST_DNS,
        &records,
        check.as_deref().map(|h| (ns.as_str(), h)),
    )?;
    encrypted_resolver(lab, &ns, &resolver_cert, &resolver_key, check.as_deref())?;
    let in_dns = sites
        .iter()
        .filter(|s| s.in_dns)
        .map(|s| s.host.clone())
        .collect();
    Ok(Internet {
        ns,
        ips,
        ips6,
        in_dns,
        ca,
    })
}

/// Starts unbound on [`ENCRYPTED_DNS`]: DNS over HTTPS (443, `/dns-query`) and DNS over TLS
/// (853) with a lab-CA certificate for [`ENCRYPTED_DNS_NAME`], and plain DNS on 53 for the
/// readiness check. It forwards everything to the honest resolver, so its answers are the
/// honest ones: an independent DoH/DoT implementation, as a real public resolver would be.
fn encrypted_resolver(
    lab: &Lab,
    ns: &str,
    cert: &Path,
    key: &Path,
    check: Option<&str>,
) -> Result<()> {
    let config = format!(
        r#"server:
  interface: {ip}@53
  interface: {ip}@443
  interface: {ip}@853
  https-port: 443
  tls-port: 853
  tls-service-key: "{key}"
  tls-service-pem: "{cert}"
  username: ""
  chroot: ""
  directory: "{dir}"
  pidfile: "{dir}/unbound.pid"
  use-syslog: no
  logfile: ""
  verbosity: 1
  num-threads: 1
  do-ip6: no
  interface-automatic: no
  access-control: 198.18.0.0/15 allow
  module-config: "iterator"
  qname-minimisation: no
forward-zone:
  name: "."
  forward-addr: {HONEST_DNS}
remote-control:
  control-enable: no
"#,
        ip = ENCRYPTED_DNS,
        key = key.display(),
        cert = cert.display(),
        dir = lab.path("").display(),
    );
    let path = lab.path("unbound.conf");
    std::fs::write(&path, config)?;
    let argv = vec![
        "unbound".to_owned(),
        "-d".to_owned(),
        "-c".to_owned(),
        path.display().to_string(),
    ];
    lab.spawn(ns, "unbound", &argv, &[])?;
    if let Some(name) = check {
        wait_dns(lab, "unbound", ns, ENCRYPTED_DNS, name)?;
    }
    Ok(())
}

/// The DNS wire form of a name, cut to the 16 bytes an nft raw match can compare.
pub(crate) fn qname_match(host: &str) -> (usize, String) {
    let mut wire = Vec::new();
    for label in host.trim_end_matches('.').split('.') {
        wire.push(label.len() as u8);
        wire.extend_from_slice(label.as_bytes());
    }
    wire.push(0);
    wire.truncate(16);
    let hex: String = wire.iter().map(|b| format!("{b:02x}")).collect();
    (wire.len() * 8, format!("0x{hex}"))
}

/// Builds client N behind ISP N with `censor`, linked to the internet.
pub fn build_network(lab: &Lab, internet: &Internet, n: u8, censor: &Censor) -> Result<Network> {
    let client = lab.netns(&format!("client{n}"))?;
    let isp = lab.netns(&format!("isp{n}"))?;
    let isp_if = "down0".to_owned();
    lab.link(
        (&client, "up0", &format!("{}/24", client_ip(n))),
        (&isp, &isp_if, &format!("{}/24", gateway_ip(n))),
    )?;
    let (isp_up, inet_down) = (
        Ipv4Addr::new(198, 18, 20 + n, 2),
        Ipv4Addr::new(198, 18, 20 + n, 1),
    );
    let inet_if = format!("isp{n}");
    lab.link(
        (&isp, "up0", &format!("{isp_up}/30")),
        (&internet.ns, &inet_if, &format!("{inet_down}/30")),
    )?;
    lab.ip(
        &client,
        &[
            "route",
            "add",
            "198.18.0.0/15",
            "via",
            &gateway_ip(n).to_string(),
        ],
    )?;
    for net in ["198.19.0.0/16", "198.18.100.0/24"] {
        lab.ip(&isp, &["route", "add", net, "via", &inet_down.to_string()])?;
    }
    for net in [
        format!("198.18.{n}.0/24"),
        format!("198.18.{}.0/24", 10 + n),
    ] {
        lab.ip(
            &internet.ns,
            &["route", "add", &net, "via", &isp_up.to_string()],
        )?;
    }
    for ip in [resolver_ip(n), blockpage_ip(n), proxy_ip(n)] {
        lab.ip(&isp, &["addr", "add", &format!("{ip}/32"), "dev", "lo"])?;
    }
    lab.sysctl(&isp, "net.ipv4.ip_forward", "1")?;

    let rules_for = |t: Technique| -> Vec<&str> {
        censor
            .rules
            .iter()
            .filter(|(_, x)| *x == t)
            .map(|(h, _)| h.as_str())
            .collect()
    };

    // The ISP's resolver: forwards to the honest one, lies for some names.
    let mut options = vec![
        format!("--server={HONEST_DNS}"),
        "--cache-size=0".to_owned(),
    ];
    for host in rules_for(Technique::DnsNxdomain) {
        options.push(format!("--address=/{host}/"));
    }
    for (technique, ip) in [
        (Technique::DnsBogon, BOGON),
        (Technique::DnsToBlockpage, blockpage_ip(n)),
        (Technique::DnsToProxy, proxy_ip(n)),
        (Technique::DnsToNotice, proxy_ip(n)),
    ] {
        for host in rules_for(technique) {
            options.push(format!("--address=/{host}/{ip}"));
        }
    }
    // A name this ISP leaves alone, to check that its resolver works.
    let check = internet
        .in_dns
        .iter()
        .find(|h| censor.rules.iter().all(|(r, _)| r != *h))
        .cloned();
    dnsmasq(
        lab,
        &isp,
        &format!("dns-isp{n}"),
        resolver_ip(n),
        &options,
        None,
    )?;

    // The ISP's boxes: blockpage host, transparent HTTP proxies, interception proxies.
    let mut nat = String::new();
    let hijacked: BTreeMap<String, SocketAddr> = rules_for(Technique::DnsToProxy)
        .into_iter()
        .map(|h| (h.to_owned(), SocketAddr::new(internet.ip(h).into(), 80)))
        .collect();
    let mut http_proxies = vec![json!({
        "listen": format!("{}:80", proxy_ip(n)),
        "hosts": hijacked,
        "notice_hosts": rules_for(Technique::DnsToNotice),
    })];
    let mut mitm_proxies = Vec::new();
    let mut delay_proxies = Vec::new();
    let mut port = 9100;
    for host in rules_for(Technique::HttpBlockpage) {
        let site = internet.ip(host);
        http_proxies.push(json!({
            "listen": format!("0.0.0.0:{port}"),
            "upstream": format!("{site}:80"),
            "block_hosts": [host],
        }));
        writeln!(nat, "    ip daddr {site} tcp dport 80 redirect to :{port}")?;
        port += 1;
    }
    for host in rules_for(Technique::HttpNotice) {
        let site = internet.ip(host);
        http_proxies.push(json!({
            "listen": format!("0.0.0.0:{port}"),
            "upstream": format!("{site}:80"),
            "notice_hosts": [host],
        }));
        writeln!(nat, "    ip daddr {site} tcp dport 80 redirect to :{port}")?;
        port += 1;
    }
    for host in rules_for(Technique::Mitm) {
        let site = internet.ip(host);
        mitm_proxies.push(json!({
            "listen": format!("0.0.0.0:{port}"),
            "upstream": format!("{site}:443"),
            "names": [host],
        }));
        writeln!(nat, "    ip daddr {site} tcp dport 443 redirect to :{port}")?;
        port += 1;
    }
    for host in rules_for(Technique::HandshakeDelay) {
        let site = internet.ip(host);
        delay_proxies.push(json!({
            "listen": format!("0.0.0.0:{port}"),
            "upstream": format!("{site}:443"),
            "delay_ms": HANDSHAKE_DELAY_MS,
        }));
        writeln!(nat, "    ip daddr {site} tcp dport 443 redirect to :{port}")?;
        port += 1;
    }
    for (technique, rate) in [
        (Technique::SlowLine, SLOW_LINE_BPS),
        (Technique::ThrottledOnSlowLine, SLOW_LINE_THROTTLED_BPS),
    ] {
        for host in rules_for(technique) {
            let site = internet.ip(host);
            delay_proxies.push(json!({
                "listen": format!("0.0.0.0:{port}"),
                "upstream": format!("{site}:443"),
                "rate_bps": rate,
            }));
            writeln!(nat, "    ip daddr {site} tcp dport 443 redirect to :{port}")?;
            port += 1;
        }
    }
    let blockpage_host = format!("blockpage.isp{n}.lab");
    lab.serve(
        &isp,
        &format!("isp{n}-boxes"),
        &json!({
            "origins": [{"ip": blockpage_ip(n), "sites": [
                {"names": [blockpage_host], "https": "blockpage", "http": "blockpage"}
            ]}],
            "http_proxies": http_proxies,
            "mitm_proxies": mitm_proxies,
            "delay_proxies": delay_proxies,
        }),
    )?;

    // DNS injection: a second namespace holding the resolver's address answers the queries
    // that nft duplicates to it, faster than the real resolver.
    let mut raw = String::new();
    let injected = rules_for(Technique::DnsInject);
    if !injected.is_empty() {
        let inj = lab.netns(&format!("inj{n}"))?;
        let (isp_side, inj_side) = (
            Ipv4Addr::new(198, 18, 30 + n, 1),
            Ipv4Addr::new(198, 18, 30 + n, 2),
        );
        lab.link(
            (&isp, "inj0", &format!("{isp_side}/30")),
            (&inj, "up0", &format!("{inj_side}/30")),
        )?;
        lab.ip(
            &inj,
            &[
                "addr",
                "add",
                &format!("{}/32", resolver_ip(n)),
                "dev",
                "lo",
            ],
        )?;
        lab.ip(
            &inj,
            &[
                "route",
                "add",
                &format!("198.18.{n}.0/24"),
                "via",
                &isp_side.to_string(),
            ],
        )?;
        // The forged answers come back from the ISP's own resolver address.
        for key in [
            "net.ipv4.conf.all.accept_local",
            "net.ipv4.conf.inj0.accept_local",
        ] {
            lab.sysctl(&isp, key, "1")?;
        }
        for key in [
            "net.ipv4.conf.all.rp_filter",
            "net.ipv4.conf.inj0.rp_filter",
        ] {
            lab.sysctl(&isp, key, "0")?;
        }
        let options: Vec<String> = injected
            .iter()
            .map(|h| format!("--address=/{h}/{}", blockpage_ip(n)))
            .collect();
        dnsmasq(
            lab,
            &inj,
            &format!("dns-inj{n}"),
            resolver_ip(n),
            &options,
            Some((&inj, injected[0])),
        )?;
        for host in &injected {
            let (bits, value) = qname_match(host);
            writeln!(
                raw,
                "    ip daddr {} udp dport 53 @ih,96,{bits} {value} dup to {inj_side} device \"inj0\"",
                resolver_ip(n)
            )?;
        }
    }
    for host in rules_for(Technique::DnsDrop) {
        let (bits, value) = qname_match(host);
        writeln!(
            raw,
            "    ip daddr {} udp dport 53 @ih,96,{bits} {value} drop",
            resolver_ip(n)
        )?;
    }

    let mut filter = String::new();
    for host in rules_for(Technique::TcpBlackhole) {
        writeln!(filter, "    ip daddr {} drop", internet.ip(host))?;
    }
    for host in rules_for(Technique::TcpRstOnSyn) {
        writeln!(
            filter,
            "    ip daddr {} tcp flags & (syn|ack) == syn reject with tcp reset",
            internet.ip(host)
        )?;
    }
    for (host, technique) in &censor.rules {
        if let Technique::TcpDropPort(p) = technique {
            writeln!(
                filter,
                "    ip daddr {} tcp dport {p} drop",
                internet.ip(host)
            )?;
        }
    }
    if censor.block_collector {
        writeln!(filter, "    ip daddr {COLLECTOR} drop")?;
    }
    if censor.block_dot {
        writeln!(filter, "    ip daddr {ENCRYPTED_DNS} tcp dport 853 drop")?;
    }
    lab.nft(
        &isp,
        &format!(
            "table ip wlab {{\n\
             \x20 chain dns_raw {{\n    type filter hook prerouting priority raw; policy accept;\n{raw}  }}\n\
             \x20 chain intercept {{\n    type nat hook prerouting priority dstnat; policy accept;\n{nat}  }}\n\
             \x20 chain censor {{\n    type filter hook forward priority filter; policy accept;\n{filter}  }}\n\
             }}\n"
        ),
    )?;

    // DPI by string match: the SNI in the ClientHello, the Host header of a request.
    let iptables = |args: &[&str]| -> Result<()> {
        let mut all = vec!["-w", "5", "-A", "FORWARD", "-p", "tcp"];
        all.extend_from_slice(args);
        lab.exec(&isp, "iptables", &all).map(drop)
    };
    for host in rules_for(Technique::SniReset) {
        iptables(&[
            "--dport",
            "443",
            "-m",
            "string",
            "--algo",
            "bm",
            "--string",
            host,
            "-j",
            "REJECT",
            "--reject-with",
            "tcp-reset",
        ])?;
    }
    if censor.block_doh {
        iptables(&[
            "-d",
            &ENCRYPTED_DNS.to_string(),
            "--dport",
            "443",
            "-m",
            "string",
            "--algo",
            "bm",
            "--string",
            ENCRYPTED_DNS_NAME,
            "-j",
            "REJECT",
            "--reject-with",
            "tcp-reset",
        ])?;
    }
    for host in rules_for(Technique::SniDrop) {
        iptables(&[
            "--dport", "443", "-m", "string", "--algo", "bm", "--string", host, "-j", "DROP",
        ])?;
    }
    for host in rules_for(Technique::HttpHostReset) {
        let header = format!("Host: {host}");
        iptables(&[
            "--dport",
            "80",
            "-m",
            "string",
            "--algo",
            "bm",
            "--icase",
            "--string",
            &header,
            "-j",
            "REJECT",
            "--reject-with",
            "tcp-reset",
        ])?;
    }

    // Throttling: traffic from the site's address to the clients goes through a slow class.
    let throttled = rules_for(Technique::Throttle);
    let tc = |args: &[&str]| lab.exec(&isp, "tc", args).map(drop);
    if !throttled.is_empty() {
        tc(&[
            "qdisc", "add", "dev", &isp_if, "root", "handle", "1:", "htb",
        ])?;
        // One class per site, so two throttled sites measured at once do not queue behind
        // each other.
        for (k, host) in throttled.into_iter().enumerate() {
            let class = format!("1:{}", 20 + k);
            tc(&[
                "class",
                "add",
                "dev",
                &isp_if,
                "parent",
                "1:",
                "classid",
                &class,
                "htb",
                "rate",
                THROTTLE_RATE,
                "ceil",
                THROTTLE_RATE,
            ])?;
            let src = format!("{}/32", internet.ip(host));
            tc(&[
                "filter", "add", "dev", &isp_if, "parent", "1:", "protocol", "ip", "prio", "1",
                "u32", "match", "ip", "src", &src, "flowid", &class,
            ])?;
        }
    }

    // The client's view works: its resolver answers through the ISP.
    if let Some(host) = check {
        wait_dns(lab, &format!("dns-isp{n}"), &client, resolver_ip(n), &host)?;
    }
    Ok(Network { n, client, isp })
}

/// The shutdown: the ISP drops everything it forwards (its resolver still answers, as
/// Kazakhstan's DNS did in January 2022).
pub fn cut(lab: &Lab, net: &Network) -> Result<()> {
    lab.nft(
        &net.isp,
        "table ip wlab_shutdown {\n  chain cut_everything {\n    type filter hook forward priority filter - 10; policy drop;\n  }\n}\n",
    )
}

/// The end of the shutdown.
pub fn restore(lab: &Lab, net: &Network) -> Result<()> {
    lab.exec(&net.isp, "nft", &["delete", "table", "ip", "wlab_shutdown"])
        .map(drop)
}

/// Starts the real collector in the internet namespace, serving control measurements, with
/// aggregation tuned so that one probe's one measurement is enough for an event; `extra` is
/// appended to its configuration (more sections).
pub fn start_collector(
    lab: &Lab,
    internet: &Internet,
    collector: &Path,
    extra: &str,
) -> Result<String> {
    let mut config = format!(
        r#"[server]
listen = "{COLLECTOR}:{COLLECTOR_PORT}"

[store]
url = "{db}"

[aggregation]
min_probes = 1
min_measurements = 1
min_share = 0.5
# Fresh lab probes count at once; events follow every change (see FRESH_PROBES).
probe_min_age = "0s"
probe_min_hours = 0
min_event = "0s"
min_gap = "0s"
max_transitions_per_hour = 0

[control]
allow_anonymous = true
allow_private = true
lab_public_ranges = ["{LAB_RANGE}", "{LAB_RANGE_V6}"]
resolver = "{HONEST_DNS}:53"
extra_ca_files = ["{ca}"]
max_concurrency = 128
requests_per_minute = 6000
timeout_secs = 30
step_timeout_secs = 3.0
"#,
        db = lab.path("collector.db").display(),
        ca = internet.ca.display(),
    );
    config.push_str(extra);
    let path = lab.path("collector.toml");
    std::fs::write(&path, config)?;
    let argv = vec![
        collector.display().to_string(),
        "--config".to_owned(),
        path.display().to_string(),
        "serve".to_owned(),
    ];
    lab.spawn(
        &internet.ns,
        "collector",
        &argv,
        &[("NO_COLOR", "1".to_owned())],
    )?;
    lab.wait_for_output("collector", "listening on", Duration::from_secs(30))?;
    let url = collector_url();
    get(lab, &internet.ns, &format!("{url}api/v1/health"))?;
    Ok(url)
}

/// A cleartext GET from inside a namespace; the body.
pub fn get(lab: &Lab, ns: &str, url: &str) -> Result<String> {
    lab.exec(ns, lab_origin_bin(), &["get", url])
}
