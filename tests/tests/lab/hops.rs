//! The hop lab: where the censor sits. The real `witness` probe, its localisation on, behind a
//! chain of routers in network namespaces with two censors at different hops, each blocking
//! its own sites with the four kinds of block the probe localises. Every row asserts the
//! verdict, the `censor_hop` the topology implies (or, where a silent router hides it, the
//! honest range), the `path.censor_hop=N` evidence line, and that every reply, router address
//! and network recorded is right or absent, never wrong; and that no hop is claimed for an
//! accessible site or a site that is down. See `docs/lab.md`, "The hop lab".
//!
//! The routers' ICMP is a real network's: Linux's default rate limits (a burst of six
//! time-exceeded per destination, then one per second) on every router, r2 limiting hard
//! (one per ten seconds), and r3 never answering at all.
//!
//! ```text
//!  volunteer ── r1 ── r2 ── censor-a ── r3 ── censor-b ── r4 ── internet
//!              hop 1  hop 2   hop 3    hop 4    hop 5    hop 6   hop 7: origins, resolver,
//!                     (hard   limit)  (silent)                    collector (the control)
//! ```
//!
//! It is its own `#[test]` (`hop_lab`) in `tests/tests/lab/main.rs`, whose other lab measures with
//! `--no-path`: cargo runs one test binary at a time, so a test of the same binary is what runs
//! in parallel with the main lab. Needs root and `ip netns`; without them it skips, loudly (a
//! failure under `WITNESS_REQUIRE_TOOLS=1`, as the main lab).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::json;
use witness_core::model::{HopRange, HopReply, Measurement, Method, PathUnlocated};
use witness_tests::{collector_bin, witness_bin};

use crate::judge::{self, Expect, Row};
use crate::netlab::{self, report, Lab};
use crate::probes::{self, ProbeFiles};
use crate::topology::{self, Internet, Site, Technique, HONEST_DNS, LAB_RANGE};

/// The routers between the volunteer and the internet, in path order: the router at index `i`
/// is hop `i + 1`. The censors are routers too: they decrement the TTL and answer
/// time-exceeded like the others.
const CHAIN: [&str; 6] = ["r1", "r2", "censor-a", "r3", "censor-b", "r4"];
/// Hop of the first censor's router.
const CENSOR_A: u8 = 3;
/// Hop of the second censor's router.
const CENSOR_B: u8 = 5;
/// Largest TTL the probe tries: past the origins (hop 7), so that a drop at the last censor
/// is followed by enough silent TTLs.
const MAX_TTL: u8 = 10;
/// The probe's `[path] private_hops`: the first hops whose router address is never kept.
const PRIVATE_HOPS: u8 = 2;
/// The site behind the censor on one of two equal-cost paths (ECMP): a SYN is reset on r3b,
/// the router beside r3 at hop 4, and passes on r3.
const ECMP_SITE: &str = "https://e-rst.lab/";
/// Where the reset shows on r3b's path: it filters in its forwarding path.
const ECMP_HOP: u8 = 5;

/// The router that rate-limits its ICMP hard, and the one that never sends any.
const RATE_LIMITED: &str = "r2";
const SILENT: &str = "r3";
/// The probe's step timeout (`--timeout`).
const PROBE_TIMEOUT_SECS: &str = "4";
/// The volunteer's network (Kazakhtelecom), which the probe is not told: it learns it from
/// the collector's ASN table, like the networks of the routers.
const ASN: u32 = 9198;
/// The network past the first censor (abroad).
const ABROAD_ASN: u32 = 1299;

/// The network of the router at `hop` in the collector's ASN table: the volunteer's ISP up to
/// and including the first censor (its national gateway), then abroad.
fn hop_asn(hop: u8) -> u32 {
    if hop <= CENSOR_A {
        ASN
    } else {
        ABROAD_ASN
    }
}

/// The collector's ASN table (ip2asn TSV): the links of the volunteer's ISP (the volunteer,
/// r1, r2 and censor-a's receiving end), then the links abroad.
fn asn_table() -> String {
    let last_isp_link = CENSOR_A - 1;
    format!(
        "198.18.200.0\t198.18.{}.255\t{ASN}\tKZ\tLAB-ISP\n\
         198.18.{}.0\t198.18.209.255\t{ABROAD_ASN}\tSE\tLAB-ABROAD\n",
        200 + last_isp_link,
        201 + last_isp_link,
    )
}

/// Link `j` joins node `j` and node `j + 1` (node 0 the volunteer, node 7 the internet):
/// `198.18.(200 + j).0/30`, `.1` on the volunteer's side.
fn link_addr(j: usize, right: bool) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 200 + j as u8, if right { 2 } else { 1 })
}

/// Every link of the chain: `198.18.200.0/21`.
const CHAIN_RANGE: &str = "198.18.200.0/21";

/// The volunteer's address.
fn volunteer_ip() -> Ipv4Addr {
    link_addr(0, false)
}

/// The address the router at `hop` answers time-exceeded from: the end of the link it
/// receives the volunteer's packets on (its route back to the volunteer leaves there).
fn router_ip(hop: u8) -> Ipv4Addr {
    link_addr(usize::from(hop) - 1, true)
}

/// Where the censor is, and so where its action first appears.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Where {
    A,
    B,
}

impl Where {
    fn router_hop(self) -> u8 {
        match self {
            Where::A => CENSOR_A,
            Where::B => CENSOR_B,
        }
    }
    fn ns_role(self) -> &'static str {
        CHAIN[usize::from(self.router_hop()) - 1]
    }
}

/// One row: a site, what a censor does to it, the verdict and the hop the probe must name.
struct Case {
    name: &'static str,
    url: &'static str,
    /// The censor and its technique, or none (the site is not blocked).
    censor: Option<(Where, Technique)>,
    expect: Expect,
    /// The exact `censor_hop` (and evidence line) the topology implies, or none: no `path`
    /// observation at all.
    hop: Option<u8>,
    /// What the repeated exchange meets at that hop.
    reply: HopReply,
    /// Where a silent router hides the hop: the range the probe must give instead.
    range: Option<HopRange>,
}

/// The hop at which a censor's action first appears, from the topology:
/// - a filter in the router's forwarding path (nft/iptables FORWARD: the RST on SYN, the
///   dropped ClientHello, the reset on the Host header) acts only on packets the router
///   forwards. A packet arriving with TTL 1 is answered time-exceeded by the router itself
///   before any filter sees it, so the action appears one TTL later: hop router + 1, with the
///   censor's router answering time-exceeded at its own hop just before;
/// - a box that terminates the connection on the router itself (the nat redirect to the
///   interception proxy) receives the packet locally, which needs no TTL left: its own hop.
const fn forwarded(router: u8) -> u8 {
    router + 1
}

fn cases() -> Vec<Case> {
    use Technique::*;
    let blocked = Expect::blocked;
    vec![
        Case {
            name: "a_rst_on_syn",
            url: "https://a-rst.lab/",
            censor: Some((Where::A, TcpRstOnSyn)),
            expect: blocked(Method::Tcp).evidence(&["path.censor_hop=4"]),
            hop: Some(forwarded(CENSOR_A)),
            reply: HopReply::Reset,
            range: None,
        },
        Case {
            name: "a_sni_drop",
            url: "https://a-sni.lab/",
            censor: Some((Where::A, SniDrop)),
            // Dropped at hop 4, whose router (r3) never answers: the probe cannot tell a drop
            // there from one at hop 5, the first router past it that answers, and says so.
            expect: blocked(Method::Tls).evidence(&["tls.decoy=ok"]),
            hop: Some(forwarded(CENSOR_A)),
            reply: HopReply::Silence,
            range: Some(HopRange {
                from: forwarded(CENSOR_A),
                to: Some(CENSOR_B),
            }),
        },
        Case {
            name: "a_host_reset",
            url: "http://a-host.lab/",
            censor: Some((Where::A, HttpHostReset)),
            expect: blocked(Method::Http).evidence(&[
                "http.hop0.failure=connection_reset@http",
                "path.censor_hop=4",
            ]),
            hop: Some(forwarded(CENSOR_A)),
            reply: HopReply::Reset,
            range: None,
        },
        Case {
            name: "a_mitm_redirect",
            url: "https://a-mitm.lab/",
            censor: Some((Where::A, Mitm)),
            expect: blocked(Method::Mitm).evidence(&["tls.interception_ca=", "path.censor_hop=3"]),
            hop: Some(CENSOR_A),
            reply: HopReply::Censor,
            range: None,
        },
        Case {
            name: "b_rst_on_syn",
            url: "https://b-rst.lab/",
            censor: Some((Where::B, TcpRstOnSyn)),
            expect: blocked(Method::Tcp).evidence(&["path.censor_hop=6"]),
            hop: Some(forwarded(CENSOR_B)),
            reply: HopReply::Reset,
            range: None,
        },
        Case {
            name: "b_sni_drop",
            url: "https://b-sni.lab/",
            censor: Some((Where::B, SniDrop)),
            expect: blocked(Method::Tls).evidence(&["tls.decoy=ok", "path.censor_hop=6"]),
            hop: Some(forwarded(CENSOR_B)),
            reply: HopReply::Silence,
            range: None,
        },
        Case {
            name: "b_host_reset",
            url: "http://b-host.lab/",
            censor: Some((Where::B, HttpHostReset)),
            expect: blocked(Method::Http).evidence(&[
                "http.hop0.failure=connection_reset@http",
                "path.censor_hop=6",
            ]),
            hop: Some(forwarded(CENSOR_B)),
            reply: HopReply::Reset,
            range: None,
        },
        Case {
            name: "b_mitm_redirect",
            url: "https://b-mitm.lab/",
            censor: Some((Where::B, Mitm)),
            expect: blocked(Method::Mitm).evidence(&["tls.interception_ca=", "path.censor_hop=5"]),
            hop: Some(CENSOR_B),
            reply: HopReply::Censor,
            range: None,
        },
        Case {
            name: "a_dns_inject",
            url: "https://a-dns.lab/",
            censor: Some((Where::A, DnsInject)),
            expect: blocked(Method::Dns).evidence(&["path.censor_hop=4"]),
            hop: Some(forwarded(CENSOR_A)),
            reply: HopReply::Censor,
            range: None,
        },
        Case {
            name: "accessible_through_both_censors",
            url: "https://open.lab/",
            censor: None,
            expect: Expect::accessible(),
            hop: None,
            reply: HopReply::Answered,
            range: None,
        },
        Case {
            name: "down_everywhere",
            url: "https://down.lab/",
            censor: None,
            expect: Expect::down(),
            hop: None,
            reply: HopReply::Answered,
            range: None,
        },
    ]
}

fn host_of(url: &str) -> String {
    url::Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_owned))
        .unwrap_or_else(|| panic!("no host in {url}"))
}

fn sites(cases: &[Case]) -> Vec<Site> {
    let mut sites: Vec<Site> = cases
        .iter()
        .map(|c| {
            let host = host_of(c.url);
            if c.expect.status == witness_core::model::Status::Down {
                Site::nothing(&host)
            } else if c.url.starts_with("http://") {
                Site::http(&host)
            } else {
                Site::https(&host)
            }
        })
        .collect();
    sites.push(Site::https(&host_of(ECMP_SITE)));
    sites.push(Site::https("anchor.lab"));
    sites.push(Site::https("anchor-2.lab"));
    sites
}

/// The volunteer, the routers and the links; routes both ways. Returns the namespaces, the
/// volunteer's first, then the routers in path order.
fn build_chain(lab: &Lab, internet: &Internet) -> Result<Vec<String>> {
    let mut nodes = vec![lab.netns("volunteer")?];
    for role in CHAIN {
        nodes.push(lab.netns(role)?);
    }
    nodes.push(internet.ns.clone());
    for j in 0..nodes.len() - 1 {
        lab.link(
            (&nodes[j], "right0", &format!("{}/30", link_addr(j, false))),
            (
                &nodes[j + 1],
                "left0",
                &format!("{}/30", link_addr(j, true)),
            ),
        )?;
    }
    // Towards the internet (the whole lab range, for the volunteer), and back.
    lab.ip(
        &nodes[0],
        &[
            "route",
            "add",
            LAB_RANGE,
            "via",
            &link_addr(0, true).to_string(),
        ],
    )?;
    // The routers: every node but the volunteer and the internet.
    for (j, ns) in nodes.iter().enumerate().take(nodes.len() - 1).skip(1) {
        let (right, left) = (
            link_addr(j, true).to_string(),
            link_addr(j - 1, false).to_string(),
        );
        for net in ["198.19.0.0/16", "198.18.100.0/24"] {
            lab.ip(ns, &["route", "add", net, "via", &right])?;
        }
        lab.ip(ns, &["route", "add", CHAIN_RANGE, "via", &left])?;
        lab.sysctl(ns, "net.ipv4.ip_forward", "1")?;
        // A real router's ICMP: Linux's defaults (per destination: a burst of six, then one
        // per second; 1000 a second in all).
        let role = CHAIN[j - 1];
        let per_destination_ms = if role == RATE_LIMITED {
            "10000"
        } else {
            "1000"
        };
        lab.sysctl(ns, "net.ipv4.icmp_ratelimit", per_destination_ms)?;
        lab.sysctl(ns, "net.ipv4.icmp_msgs_per_sec", "1000")?;
        lab.sysctl(ns, "net.ipv4.icmp_msgs_burst", "50")?;
        if role == SILENT {
            // A router that never says time-exceeded (many do not).
            lab.nft(
                ns,
                "table ip silent {\n  chain out {\n    type filter hook output priority filter; policy accept;\n    icmp type time-exceeded drop\n  }\n}\n",
            )?;
        }
    }
    ecmp(lab, &nodes, internet)?;
    let last = nodes.len() - 2;
    lab.ip(
        &internet.ns,
        &[
            "route",
            "add",
            CHAIN_RANGE,
            "via",
            &link_addr(last, false).to_string(),
        ],
    )?;
    nodes.pop();
    Ok(nodes)
}

/// Two equal-cost paths between censor-a (hop 3) and censor-b (hop 5): r3 and r3b, both at
/// hop 4 and both silent, with the routes towards the origins (on censor-a) and back (on
/// censor-b) spread over both by a hash of the 5-tuple (`fib_multipath_hash_policy=1`, as load
/// balancers do). r3b resets a SYN to [`ECMP_SITE`]; r3 lets it through. So whether a flow
/// meets the censor depends on its source port.
fn ecmp(lab: &Lab, nodes: &[String], internet: &Internet) -> Result<()> {
    let (censor_a, censor_b) = (&nodes[3], &nodes[5]);
    let r3b = lab.netns("r3b")?;
    lab.link(
        (censor_a, "ecmp0", "198.18.208.1/30"),
        (&r3b, "left0", "198.18.208.2/30"),
    )?;
    lab.link(
        (&r3b, "right0", "198.18.209.1/30"),
        (censor_b, "ecmp0", "198.18.209.2/30"),
    )?;
    for net in ["198.19.0.0/16", "198.18.100.0/24"] {
        lab.ip(&r3b, &["route", "add", net, "via", "198.18.209.2"])?;
    }
    lab.ip(&r3b, &["route", "add", CHAIN_RANGE, "via", "198.18.208.1"])?;
    lab.sysctl(&r3b, "net.ipv4.ip_forward", "1")?;
    let r3 = (link_addr(3, true), link_addr(4, false));
    // Its own packets (the interception proxy's upstream connections) keep the source address
    // the internet routes back, whichever link the hash picks.
    let own = link_addr(3, false).to_string();
    lab.ip(
        censor_a,
        &[
            "route",
            "replace",
            "198.19.0.0/16",
            "src",
            &own,
            "nexthop",
            "via",
            &r3.0.to_string(),
            "nexthop",
            "via",
            "198.18.208.2",
        ],
    )?;
    lab.ip(
        censor_b,
        &[
            "route",
            "replace",
            CHAIN_RANGE,
            "nexthop",
            "via",
            &r3.1.to_string(),
            "nexthop",
            "via",
            "198.18.209.1",
        ],
    )?;
    for ns in [censor_a, censor_b] {
        lab.sysctl(ns, "net.ipv4.fib_multipath_hash_policy", "1")?;
    }
    for ns in [censor_b, &r3b] {
        for key in [
            "net.ipv4.conf.all.rp_filter",
            "net.ipv4.conf.default.rp_filter",
        ] {
            lab.sysctl(ns, key, "0")?;
        }
    }
    let ip = internet.ip(&host_of(ECMP_SITE));
    lab.nft(
        &r3b,
        &format!(
            "table ip wlab {{\n\
             \x20 chain out {{\n    type filter hook output priority filter; policy accept;\n    icmp type time-exceeded drop\n  }}\n\
             \x20 chain censor {{\n    type filter hook forward priority filter; policy accept;\n    ip daddr {ip} tcp flags & (syn|ack) == syn reject with tcp reset\n  }}\n\
             }}\n"
        ),
    )?;
    Ok(())
}

/// One censor's rules on its router: nft (RST on SYN in FORWARD, the nat redirect to the
/// interception proxy), iptables string match in FORWARD (SNI drop, reset on the Host header),
/// and the interception proxy itself (`lab-origin serve`).
fn censor(
    lab: &Lab,
    ns: &str,
    label: &str,
    internet: &Internet,
    rules: &[(String, Technique)],
) -> Result<()> {
    let (mut filter, mut nat, mut mitm) = (String::new(), String::new(), Vec::new());
    let mut injected: Vec<String> = Vec::new();
    let mut iptables: Vec<Vec<String>> = Vec::new();
    for (port, (host, technique)) in (9100u16..).zip(rules) {
        let ip = internet.ip(host);
        match technique {
            Technique::TcpRstOnSyn => writeln!(
                filter,
                "    ip daddr {ip} tcp flags & (syn|ack) == syn reject with tcp reset"
            )?,
            Technique::Mitm => {
                mitm.push(json!({
                    "listen": format!("0.0.0.0:{port}"),
                    "upstream": format!("{ip}:443"),
                    "names": [host],
                }));
                writeln!(nat, "    ip daddr {ip} tcp dport 443 redirect to :{port}")?;
            }
            Technique::SniDrop => iptables.push(
                [
                    "--dport", "443", "-m", "string", "--algo", "bm", "--string", host, "-j",
                    "DROP",
                ]
                .map(str::to_owned)
                .to_vec(),
            ),
            Technique::HttpHostReset => iptables.push(
                [
                    "--dport",
                    "80",
                    "-m",
                    "string",
                    "--algo",
                    "bm",
                    "--icase",
                    "--string",
                    &format!("Host: {host}"),
                    "-j",
                    "REJECT",
                    "--reject-with",
                    "tcp-reset",
                ]
                .map(str::to_owned)
                .to_vec(),
            ),
            Technique::DnsInject => injected.push(host.clone()),
            other => bail!("the hop lab has no {other:?}"),
        }
    }
    if !injected.is_empty() {
        dns_injector(lab, ns, internet, &injected, &mut filter)?;
    }
    lab.nft(
        ns,
        &format!(
            "table ip wlab {{\n\
             \x20 chain intercept {{\n    type nat hook prerouting priority dstnat; policy accept;\n{nat}  }}\n\
             \x20 chain censor {{\n    type filter hook forward priority filter; policy accept;\n{filter}  }}\n\
             }}\n"
        ),
    )?;
    for rule in iptables {
        let mut args = vec!["-w", "5", "-A", "FORWARD", "-p", "tcp"];
        args.extend(rule.iter().map(String::as_str));
        lab.exec(ns, "iptables", &args)?;
    }
    if !mitm.is_empty() {
        lab.serve(ns, label, &json!({ "mitm_proxies": mitm }))?;
    }
    Ok(())
}

/// DNS injection on a censor: queries for the hosts that the censor forwards (whatever their
/// destination: the resolver, or the site's own address where the probe localises) are
/// duplicated to an injector namespace beside it, which answers first with a bogon, from the
/// address the query went to (it holds the resolver's and the sites' addresses). The original
/// goes on: the real resolver's answer comes later, the site's address answers port
/// unreachable. In the forward hook, so a query arriving with TTL 1 meets the router's
/// time-exceeded instead: the injection shows one hop past the censor's router.
fn dns_injector(
    lab: &Lab,
    ns: &str,
    internet: &Internet,
    hosts: &[String],
    filter: &mut String,
) -> Result<()> {
    let inj = lab.netns("inj")?;
    let (censor_side, inj_side) = (
        Ipv4Addr::new(198, 18, 210, 1),
        Ipv4Addr::new(198, 18, 210, 2),
    );
    lab.link(
        (ns, "inj0", &format!("{censor_side}/30")),
        (&inj, "up0", &format!("{inj_side}/30")),
    )?;
    let mut owned = vec![HONEST_DNS];
    owned.extend(hosts.iter().map(|h| internet.ip(h)));
    for ip in &owned {
        lab.ip(&inj, &["addr", "add", &format!("{ip}/32"), "dev", "lo"])?;
    }
    lab.ip(
        &inj,
        &["route", "add", CHAIN_RANGE, "via", &censor_side.to_string()],
    )?;
    // The answers come back from addresses the censor routes elsewhere.
    for key in [
        "net.ipv4.conf.all.rp_filter",
        "net.ipv4.conf.inj0.rp_filter",
    ] {
        lab.sysctl(ns, key, "0")?;
    }
    let mut options: Vec<String> = hosts
        .iter()
        .map(|h| format!("--address=/{h}/10.10.34.34"))
        .collect();
    options.extend(owned[1..].iter().map(|ip| format!("--listen-address={ip}")));
    topology::dnsmasq(lab, &inj, "hop-dns-inj", HONEST_DNS, &options, None)?;
    for host in hosts {
        let (bits, value) = topology::qname_match(host);
        writeln!(
            filter,
            "    udp dport 53 @ih,96,{bits} {value} dup to {inj_side} device \"inj0\""
        )?;
    }
    Ok(())
}

/// `witness run --json` from the volunteer, localisation on; the measurements by URL.
fn run_probe(
    lab: &Lab,
    internet: &Internet,
    volunteer: &str,
    urls: &[&str],
) -> Result<HashMap<String, Measurement>> {
    let probe = ProbeFiles::new(
        lab,
        "probe",
        &format!(
            "consent = true\n\n\
             [path]\nenabled = true\nmax_ttl = {MAX_TTL}\nprobe_timeout_secs = 2.0\n\
             private_hops = {PRIVATE_HOPS}\nrun_budget_secs = 60.0\n"
        ),
        urls,
    )?;
    let mut command = probe.command(volunteer, &["run", "--json", "--yes", "--no-progress"]);
    command
        .args([
            "--lab-public-range",
            LAB_RANGE,
            "--timeout",
            PROBE_TIMEOUT_SECS,
        ])
        .arg("--list")
        .arg(&probe.list)
        .args(["--control-resolver", "none"])
        .args(["--resolver", &HONEST_DNS.to_string()])
        .arg("--extra-ca")
        .arg(&internet.ca)
        .args(["--control", &topology::collector_url()])
        .args(["--anchor", "anchor.lab:443", "--anchor", "anchor-2.lab:443"]);
    let (status, out, err) =
        netlab::run_with_limit(command, &lab.path("probe-run"), Duration::from_secs(150))?;
    if !status.success() {
        bail!("witness run failed ({status}):\n{err}");
    }
    probes::by_url("the hop lab's probe", &out)
}

/// What is wrong with a measurement's `path` against the case, or nothing.
fn path_problems(case: &Case, m: &Measurement) -> Vec<String> {
    let mut problems = Vec::new();
    let path_lines: Vec<&String> = m
        .verdict
        .evidence
        .iter()
        .filter(|l| l.starts_with("path."))
        .collect();
    let Some(want) = case.hop else {
        if let Some(p) = &m.path {
            problems.push(format!(
                "a path observation (censor_hop {:?}, unlocated {:?})",
                p.censor_hop, p.unlocated
            ));
        }
        if !path_lines.is_empty() {
            problems.push(format!("path evidence {path_lines:?}"));
        }
        return problems;
    };
    let Some(p) = &m.path else {
        return vec!["no path observation".to_owned()];
    };
    // The probe learnt its network from the collector's table (it was not configured).
    if m.probe.asn != Some(ASN) {
        problems.push(format!("probe asn {:?}, not {ASN}", m.probe.asn));
    }
    // The censor's network: that of the router before its hop, whatever the kind of block
    // (censor-a filters at hop 3 and appears at hop 4, behind which the path is abroad);
    // unknown is allowed (a rate-limited router may not have named itself), wrong is not.
    let censor_asn = hop_asn(want - 1);
    if p.censor_asn().is_some_and(|n| n != censor_asn) {
        problems.push(format!("censor asn {:?}, not {censor_asn}", p.censor_asn()));
    }
    // The hops recorded: up to the censor's, or up to the range's end.
    let last = match case.range {
        Some(r) => {
            if p.censor_hop.is_some()
                || p.unlocated != Some(PathUnlocated::SilentRouters)
                || p.censor_range != Some(r)
            {
                problems.push(format!(
                    "censor_hop {:?}, unlocated {:?}, range {:?}: not the range {r:?}",
                    p.censor_hop, p.unlocated, p.censor_range
                ));
            }
            if !path_lines.is_empty() {
                problems.push(format!("path evidence {path_lines:?} for a range"));
            }
            r.to.unwrap_or(MAX_TTL)
        }
        None => {
            if p.censor_hop != Some(want) {
                problems.push(format!(
                    "censor_hop {:?} (unlocated {:?}, range {:?})",
                    p.censor_hop, p.unlocated, p.censor_range
                ));
            }
            let line = match p.censor_asn() {
                Some(_) => format!("path.censor_hop={want} asn={censor_asn}"),
                None => format!("path.censor_hop={want}"),
            };
            if path_lines != [&line] {
                problems.push(format!("path evidence {path_lines:?}, not [{line}]"));
            }
            want
        }
    };
    // The TTLs stop once the placement is known: for a drop, one TTL past it (the destination
    // answering the control SYN, or a second router answering it while the trigger stays
    // silent), since one silent trigger beside a router's answer may be that router's ICMP
    // rate limit.
    let stop = if p.action == witness_core::model::PathAction::Silence && last < MAX_TTL {
        last + 1
    } else {
        last
    };
    if p.max_ttl != stop {
        problems.push(format!("max_ttl {}", p.max_ttl));
    }
    if p.hops.len() != usize::from(last) {
        problems.push(format!("{} hops recorded", p.hops.len()));
    }
    for (i, h) in p.hops.iter().enumerate() {
        if usize::from(h.ttl) != i + 1 {
            problems.push(format!("hop {} has ttl {}", i + 1, h.ttl));
        }
        // Before the censor: a router's time-exceeded, or silence (the silent router, a
        // rate-limited one); at and past the censor's hop, its action.
        let reply_ok = if h.ttl < want {
            matches!(h.reply, HopReply::TimeExceeded | HopReply::Silence)
        } else {
            h.reply == case.reply
        };
        if !reply_ok {
            problems.push(format!("ttl {}: {:?}", h.ttl, h.reply));
        }
        // The router addresses: none within the private hops; past them, each router's own
        // or none (the SYN at the censor's hop may meet the next router, or the action).
        let router = IpAddr::V4(router_ip(h.ttl.min(CHAIN.len() as u8)));
        // censor-b answers from its link to r3b when its route back to the volunteer leaves
        // there (the return path is spread over both, too).
        let beside = (h.ttl == CENSOR_B).then_some(IpAddr::V4(Ipv4Addr::new(198, 18, 209, 2)));
        let addr_ok = if h.ttl <= PRIVATE_HOPS {
            h.addr.is_none()
        } else {
            h.addr.is_none() || h.addr == Some(router) || h.addr == beside
        };
        if !addr_ok {
            problems.push(format!("ttl {}: router {:?}", h.ttl, h.addr));
        }
        // The silent router never names itself.
        if CHAIN.get(usize::from(h.ttl) - 1) == Some(&SILENT) && h.addr.is_some() {
            problems.push(format!("ttl {}: the silent router answered", h.ttl));
        }
        // Every router's network, the private hops' too (their addresses stay on the
        // machine), or none; never another's.
        if h.asn.is_some_and(|n| n != hop_asn(h.ttl)) {
            problems.push(format!("ttl {}: asn {:?}", h.ttl, h.asn));
        }
        if h.addr == Some(IpAddr::V4(volunteer_ip())) {
            problems.push("the volunteer's own address".to_owned());
        }
    }
    problems
}

fn run_lab(lab: &Lab, cases: &[Case]) -> Result<HashMap<String, Measurement>> {
    let internet = topology::build_internet(lab, &sites(cases))?;
    let nodes = build_chain(lab, &internet)?;
    for at in [Where::A, Where::B] {
        let rules: Vec<(String, Technique)> = cases
            .iter()
            .filter_map(|c| match c.censor {
                Some((w, t)) if w == at => Some((host_of(c.url), t)),
                _ => None,
            })
            .collect();
        let ns = &nodes[usize::from(at.router_hop())];
        censor(
            lab,
            ns,
            &format!("{}-boxes", at.ns_role()),
            &internet,
            &rules,
        )?;
    }
    let table = lab.path("ip2asn.tsv");
    std::fs::write(&table, asn_table())?;
    topology::start_collector(
        lab,
        &internet,
        &collector_bin(),
        &format!("\n[asn]\ndatabase = \"{}\"\n", table.display()),
    )?;
    // The chain routes both ways: the volunteer reaches the collector through every router.
    let health = format!("{}api/v1/health", topology::collector_url());
    topology::get(lab, &nodes[0], &health).context("the volunteer cannot reach the collector")?;
    let mut urls: Vec<&str> = cases.iter().map(|c| c.url).collect();
    urls.push(ECMP_SITE);
    run_probe(lab, &internet, &nodes[0], &urls)
}

/// The ECMP site's rows: its verdict depends on the path the probe's own connections took
/// (blocked/tcp on r3b's, accessible on r3's), and a localisation on another flow may take
/// the other path. Right or less: blocked or accessible, never another verdict; a `path` only
/// on a block, naming hop 5 or nothing (unlocated, or a range that holds hop 5), never
/// another hop.
fn ecmp_rows(m: Option<&Measurement>) -> Vec<Row> {
    let Some(m) = m else {
        return vec![judge::check(
            "ecmp_rst_on_one_path",
            "blocked/tcp or accessible",
            "no measurement",
            false,
            "",
        )];
    };
    let v = &m.verdict;
    let got = format!(
        "{}{}",
        v.status,
        v.method.map(|x| format!("/{x}")).unwrap_or_default()
    );
    let verdict_ok = got == "blocked/tcp" || got == "accessible";
    let (path_got, path_ok) = match &m.path {
        None => ("no path".to_owned(), true),
        Some(p) => {
            let within = p
                .censor_range
                .is_some_and(|r| r.from <= ECMP_HOP && r.to.is_none_or(|to| ECMP_HOP <= to));
            let ok = v.status == witness_core::model::Status::Blocked
                && match p.censor_hop {
                    Some(n) => n == ECMP_HOP,
                    None => p.censor_range.is_none() || within,
                };
            (
                format!(
                    "censor_hop {:?}, unlocated {:?}, range {:?}",
                    p.censor_hop, p.unlocated, p.censor_range
                ),
                ok,
            )
        }
    };
    vec![
        judge::check(
            "ecmp_rst_on_one_path",
            "blocked/tcp or accessible",
            &got,
            verdict_ok,
            &v.reason,
        ),
        // In about one run in three the probe names a hop past the censor here (6 or 7): the
        // localisation's SYNs do not all take the censored path although they share one flow.
        // Not yet understood; reported, so the rest of the lab still guards the localisation.
        judge::check_known_bug(
            "ecmp_rst_on_one_path.path",
            &format!("hop {ECMP_HOP} or less said"),
            &path_got,
            path_ok,
            "under ECMP a reset on one path is sometimes placed past the censor (issue #22)",
        ),
    ]
}

/// The hop lab's test (called by `hop_lab` in `main.rs`).
pub fn hop_lab() {
    if !netlab::ready(
        "the hop lab",
        "sudo cargo test -p witness-tests --test lab -- hop_lab",
    ) {
        return;
    }
    // Build first: the clock is for the lab alone.
    let _ = (witness_bin(), collector_bin());
    let started = Instant::now();
    let cases = cases();
    let lab = Lab::new().expect("creating the lab");
    let results = match run_lab(&lab, &cases) {
        Ok(results) => results,
        Err(e) => panic!("the hop lab could not run: {e:#}"),
    };
    drop(lab);

    let mut rows: Vec<Row> = Vec::new();
    for case in &cases {
        let m = results.get(case.url);
        rows.push(judge::judge(case.name, case.expect, None, m));
        let expected = match (case.hop, case.range) {
            (_, Some(r)) => format!("between hop {} and {:?}", r.from, r.to),
            (Some(n), None) => format!("censor at hop {n}, AS{}", hop_asn(n - 1)),
            (None, None) => "no hop".to_owned(),
        };
        let (got, problems) = match m {
            None => (
                "no measurement".to_owned(),
                vec!["no measurement".to_owned()],
            ),
            Some(m) => {
                let got = match &m.path {
                    None => "no hop".to_owned(),
                    Some(p) => match (p.censor_hop, p.censor_asn()) {
                        (Some(n), Some(asn)) => format!("censor at hop {n}, AS{asn}"),
                        (Some(n), None) => format!("censor at hop {n}, AS unknown"),
                        (None, _) => match p.censor_range {
                            Some(r) => format!("between hop {} and {:?}", r.from, r.to),
                            None => format!("unlocated {:?}", p.unlocated),
                        },
                    },
                };
                (got, path_problems(case, m))
            }
        };
        let detail = m
            .and_then(|m| m.path.as_ref())
            .map(|p| {
                let hops: Vec<String> = p
                    .hops
                    .iter()
                    .map(|h| {
                        let at = h.addr.map(|a| format!("@{a}")).unwrap_or_default();
                        let asn = h.asn.map(|n| format!("/AS{n}")).unwrap_or_default();
                        format!("{}:{:?}{at}{asn}", h.ttl, h.reply)
                    })
                    .collect();
                format!(
                    "problems: {}\n      hops: {}",
                    problems.join("; "),
                    hops.join(" ")
                )
            })
            .unwrap_or_else(|| format!("problems: {}", problems.join("; ")));
        let got = if problems.is_empty() || got == "no measurement" {
            got
        } else {
            format!("{got}; {}", problems.join("; "))
        };
        rows.push(judge::check(
            &format!("{}.path", case.name),
            &expected,
            &got,
            problems.is_empty(),
            &detail,
        ));
    }
    rows.extend(ecmp_rows(results.get(ECMP_SITE)));
    report(&format!(
        "\nHop lab: {} rows in {:.0} s\n\n{}",
        rows.len(),
        started.elapsed().as_secs_f64(),
        judge::table(&rows, std::env::var_os("WITNESS_LAB_VERBOSE").is_some())
    ));
    assert!(
        judge::passed(&rows),
        "the hop lab found wrong verdicts or hops (table above)"
    );
    // Every record, localised paths included, in OONI's format read by OONI's parser.
    let records: Vec<&Measurement> = results.values().collect();
    witness_tests::ooni::check_records("the hop lab", &records);
}
