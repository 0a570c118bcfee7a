//! The dual-stack lab (issue #25): the real `witness` probe, IPv6 on by default (`ipv6 =
//! "auto"`), in homes with IPv6, against sites on both families, with the real collector as the
//! control. The documentation prefix `2001:db8::/32` plays the IPv6 internet, declared public
//! like the lab's IPv4 range.
//!
//! ```text
//!  home 1 ── ISP 1 (IPv6 works; drops v6blocked.lab's IPv6 address; its resolver forges
//!         │          forged6.lab's AAAA answer)                  ┐
//!  home 2 ── ISP 2 (no IPv6 upstream: it drops every IPv6 packet) ├── internet: origins on both
//!                                                                 ┘   families, resolver, collector
//! ```
//!
//! Rows, per the issue: a healthy dual-stack site, a home with broken IPv6 upstream, an
//! IPv6-only block, an AAAA answer forged by the ISP, a site without AAAA (and an IPv6-only
//! site, on both homes). Its own `#[test]` (`dual_stack_lab`) in `main.rs`, like the hop lab.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use witness_core::model::{Measurement, Method};
use witness_tests::{collector_bin, witness_bin};

use crate::judge::{self, Expect, Row};
use crate::netlab::{self, report, Lab};
use crate::probes::{self, ProbeFiles};
use crate::topology::{self, Censor, Internet, Network, Site, HONEST_DNS, LAB_RANGE, LAB_RANGE_V6};

/// The probe's step timeout (`--timeout`).
const PROBE_TIMEOUT_SECS: &str = "4";
/// Where ISP 1's resolver sends forged6.lab over IPv6: nowhere (the internet blackholes it).
const FORGED_AAAA: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xbad, 0, 0, 0, 0, 1);
/// ISP 1's forging resolver, on the ISP's own address.
const FORGING_RESOLVER: Ipv4Addr = Ipv4Addr::new(198, 18, 31, 53);

/// Which home a row is measured from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Home {
    /// ISP 1: IPv6 works.
    DualStack,
    /// ISP 2: IPv6 on the LAN, none upstream.
    BrokenV6,
}

struct Case {
    name: &'static str,
    home: Home,
    url: &'static str,
    expect: Expect,
}

fn cases() -> Vec<Case> {
    let case = |name, home, url, expect| Case {
        name,
        home,
        url,
        expect,
    };
    vec![
        case(
            "dual_stack_healthy",
            Home::DualStack,
            "https://healthy.lab/",
            Expect::accessible().check(connected_over_both),
        ),
        case(
            "dual_stack_ipv6_only_block",
            Home::DualStack,
            "https://v6blocked.lab/",
            Expect::blocked(Method::Tcp).evidence(&["tcp.blocked_family=ipv6"]),
        ),
        case(
            "dual_stack_forged_aaaa",
            Home::DualStack,
            "https://forged6.lab/",
            Expect::blocked(Method::Dns).evidence(&["dns.forged_family=ipv6"]),
        ),
        case(
            "dual_stack_no_aaaa",
            Home::DualStack,
            "https://v4only.lab/",
            Expect::accessible().check(no_ipv6_tried),
        ),
        case(
            "dual_stack_ipv6_only_site",
            Home::DualStack,
            "https://v6only.lab/",
            Expect::accessible(),
        ),
        case(
            "broken_v6_home_healthy",
            Home::BrokenV6,
            "https://healthy.lab/",
            Expect::accessible()
                .evidence(&["net.ipv6=broken"])
                .check(ipv6_known_broken),
        ),
        case(
            "broken_v6_home_ipv6_only_site",
            Home::BrokenV6,
            "https://v6only.lab/",
            Expect::inconclusive().evidence(&["net.ipv6=broken"]),
        ),
        case(
            "broken_v6_home_no_aaaa",
            Home::BrokenV6,
            "https://v4only.lab/",
            Expect::accessible(),
        ),
    ]
}

/// Connected over both families, and the run found IPv6 working.
fn connected_over_both(m: &Measurement) -> Option<String> {
    let ok = |v6: bool| {
        m.tcp
            .iter()
            .any(|t| t.addr.is_ipv6() == v6 && t.failure.is_none())
    };
    match (ok(false), ok(true), m.connectivity.ipv6_ok) {
        (true, true, Some(true)) => None,
        (v4, v6, state) => Some(format!(
            "connected over IPv4 {v4}, over IPv6 {v6}, ipv6_ok {state:?}"
        )),
    }
}

/// No IPv6 address was tried (the site has none).
fn no_ipv6_tried(m: &Measurement) -> Option<String> {
    m.tcp
        .iter()
        .find(|t| t.addr.is_ipv6())
        .map(|t| format!("an IPv6 connect to {}", t.addr))
}

/// The run's connectivity check found this home's IPv6 broken.
fn ipv6_known_broken(m: &Measurement) -> Option<String> {
    (m.connectivity.ipv6_ok != Some(false))
        .then(|| format!("ipv6_ok is {:?}", m.connectivity.ipv6_ok))
}

fn sites() -> Vec<Site> {
    vec![
        Site::https("anchor.lab").dual_stack(),
        Site::https("anchor-2.lab").dual_stack(),
        Site::https("healthy.lab").dual_stack(),
        Site::https("v6blocked.lab").dual_stack(),
        Site::https("forged6.lab").dual_stack(),
        Site::https("v4only.lab"),
        Site::https("v6only.lab").ipv6_only(),
    ]
}

/// `2001:db8:c<n>::<host>`: the home's LAN (host 1 is the ISP's router, 2 the volunteer).
fn home_v6(n: u8, host: u16) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 0xc0 + u16::from(n), 0, 0, 0, 0, host)
}

/// `2001:db8:e<n>::<host>`: the ISP's uplink (1 the internet's side, 2 the ISP's).
fn uplink_v6(n: u8, host: u16) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 0xe0 + u16::from(n), 0, 0, 0, 0, host)
}

/// IPv6 on home `n`'s links (no duplicate address detection, so the addresses work at once),
/// a default route for the volunteer, routes both ways, forwarding on the ISP's router.
fn add_ipv6(lab: &Lab, internet: &Internet, net: &Network) -> Result<()> {
    let n = net.n;
    let addr = |ns: &str, ip: Ipv6Addr, dev: &str| {
        lab.ip(
            ns,
            &[
                "-6",
                "addr",
                "add",
                &format!("{ip}/64"),
                "dev",
                dev,
                "nodad",
            ],
        )
    };
    addr(&net.client, home_v6(n, 2), "up0")?;
    addr(&net.isp, home_v6(n, 1), "down0")?;
    addr(&net.isp, uplink_v6(n, 2), "up0")?;
    addr(&internet.ns, uplink_v6(n, 1), &format!("isp{n}"))?;
    let via = |ns: &str, dest: &str, gw: Ipv6Addr| {
        lab.ip(ns, &["-6", "route", "add", dest, "via", &gw.to_string()])
    };
    via(&net.client, "default", home_v6(n, 1))?;
    via(&net.isp, "default", uplink_v6(n, 1))?;
    via(
        &internet.ns,
        &format!("{}/64", home_v6(n, 0)),
        uplink_v6(n, 2),
    )?;
    lab.sysctl(&net.isp, "net.ipv6.conf.all.forwarding", "1")?;
    Ok(())
}

/// ISP 1: drops what it forwards to v6blocked.lab's IPv6 address, and answers forged6.lab's
/// AAAA query with [`FORGED_AAAA`] from its own resolver (A stays honest).
fn censor_dual_stack(lab: &Lab, internet: &Internet, net: &Network) -> Result<()> {
    let blocked = internet.ips6["v6blocked.lab"];
    lab.nft(
        &net.isp,
        &format!(
            "table ip6 wlab_v6 {{\n  chain forward {{\n    type filter hook forward priority \
             filter; policy accept;\n    ip6 daddr {blocked} drop\n  }}\n}}\n"
        ),
    )?;
    lab.ip(
        &net.isp,
        &[
            "addr",
            "add",
            &format!("{FORGING_RESOLVER}/32"),
            "dev",
            "lo",
        ],
    )?;
    topology::dnsmasq(
        lab,
        &net.isp,
        "dns-forging",
        FORGING_RESOLVER,
        &[
            format!("--server={HONEST_DNS}"),
            "--cache-size=0".to_owned(),
            format!(
                "--host-record=forged6.lab,{},{FORGED_AAAA}",
                internet.ip("forged6.lab")
            ),
        ],
        None,
    )?;
    // The forged address goes nowhere: silence, as an ISP's unused address would give.
    lab.ip(
        &internet.ns,
        &[
            "-6",
            "route",
            "add",
            "blackhole",
            &format!("{FORGED_AAAA}/48"),
        ],
    )?;
    Ok(())
}

/// ISP 2: IPv6 on the home's LAN, none upstream: every IPv6 packet it would forward is dropped.
fn break_ipv6(lab: &Lab, net: &Network) -> Result<()> {
    lab.nft(
        &net.isp,
        "table ip6 wlab_no_v6 {\n  chain forward {\n    type filter hook forward priority filter; \
         policy drop;\n  }\n}\n",
    )
}

/// `witness run --json` from `net`'s home, its defaults (IPv6 `auto`) but the lab's flags;
/// with `upload`, registered first and uploading to the collector.
fn run_probe(
    lab: &Lab,
    internet: &Internet,
    net: &Network,
    resolver: Ipv4Addr,
    urls: &[&str],
    upload: bool,
) -> Result<HashMap<String, Measurement>> {
    let probe = ProbeFiles::new(
        lab,
        &format!("dualstack-probe{}", net.n),
        "consent = true\n\n[probe]\nasn = 9198\ncountry = \"KZ\"\n",
        urls,
    )?;
    let witness = |args: &[&str]| probe.command(&net.client, args);
    let collector = topology::collector_url();
    if upload {
        let (status, out, err) = netlab::run_with_limit(
            witness(&["register", "--collector", &collector]),
            &lab.path(&format!("dualstack-register{}", net.n)),
            Duration::from_secs(30),
        )?;
        if !status.success() {
            bail!("home {} could not register ({status}): {out}{err}", net.n);
        }
    }
    let mut command = witness(&["run", "--json", "--yes", "--no-progress", "--no-path"]);
    if upload {
        command
            .args(["--upload", "--collector", &collector, "--spool-dir"])
            .arg(probe.home.join("spool"));
    }
    command
        .args([
            "--lab-public-range",
            LAB_RANGE,
            "--lab-public-range",
            LAB_RANGE_V6,
        ])
        .args(["--timeout", PROBE_TIMEOUT_SECS])
        .arg("--list")
        .arg(&probe.list)
        .args(["--control-resolver", "none"])
        .args(["--resolver", &resolver.to_string()])
        .arg("--extra-ca")
        .arg(&internet.ca)
        .args(["--control", &topology::collector_url()])
        .args(["--anchor", "anchor.lab:443", "--anchor", "anchor-2.lab:443"]);
    let (status, out, err) = netlab::run_with_limit(
        command,
        &lab.path(&format!("dualstack-run{}", net.n)),
        Duration::from_secs(120),
    )?;
    if !status.success() {
        bail!("witness run failed in home {} ({status}):\n{err}", net.n);
    }
    probes::by_url(&format!("home {}", net.n), &out)
}

type Results = HashMap<(u8, String), Measurement>;

/// What the collector stored of home 1's healthy.lab record: its IPv6 connects, the probe's
/// and the control's, must be there as the probe saw them.
fn stored_ipv6(lab: &Lab, internet: &Internet, sent: Option<&Measurement>) -> Result<String> {
    let url = format!(
        "{}api/v1/measurements?domain=healthy.lab&limit=10",
        topology::collector_url()
    );
    let body = topology::get(lab, &internet.ns, &url)?;
    let v: serde_json::Value = serde_json::from_str(&body).context("the measurements page")?;
    let sent = sent.context("no healthy.lab record from home 1")?;
    let stored: Vec<Measurement> = serde_json::from_value(v["measurements"].clone())?;
    let Some(m) = stored.iter().find(|m| m.id == sent.id) else {
        bail!(
            "home 1's healthy.lab record was not stored ({} records)",
            stored.len()
        );
    };
    let v6 = |tcp: &[witness_core::model::TcpObservation]| {
        tcp.iter()
            .filter(|t| t.addr.is_ipv6() && t.failure.is_none())
            .map(|t| t.addr)
            .collect::<Vec<_>>()
    };
    let (probe, control) = (
        v6(&m.tcp),
        m.control.as_ref().map(|c| v6(&c.tcp)).unwrap_or_default(),
    );
    if probe.is_empty() || control.is_empty() || m.tcp != sent.tcp {
        bail!("stored IPv6 connects: probe {probe:?}, control {control:?}");
    }
    Ok(format!("probe {probe:?}, control {control:?}"))
}

fn run_lab(lab: &Lab, cases: &[Case]) -> Result<(Results, Result<String>)> {
    let internet = topology::build_internet(lab, &sites())?;
    let dual = topology::build_network(lab, &internet, 1, &Censor::default())?;
    let broken = topology::build_network(lab, &internet, 2, &Censor::default())?;
    for net in [&dual, &broken] {
        add_ipv6(lab, &internet, net)?;
    }
    censor_dual_stack(lab, &internet, &dual)?;
    break_ipv6(lab, &broken)?;
    topology::start_collector(lab, &internet, &collector_bin(), "")?;
    let urls = |home: Home| -> Vec<&str> {
        cases
            .iter()
            .filter(|c| c.home == home)
            .map(|c| c.url)
            .collect()
    };
    let (dual_urls, broken_urls) = (urls(Home::DualStack), urls(Home::BrokenV6));
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| run_probe(lab, &internet, &dual, FORGING_RESOLVER, &dual_urls, true));
        let b = s.spawn(|| {
            run_probe(
                lab,
                &internet,
                &broken,
                broken.resolver(),
                &broken_urls,
                false,
            )
        });
        (a.join(), b.join())
    });
    let mut results = Results::new();
    for (n, got) in [(1u8, a), (2u8, b)] {
        let got = got.map_err(|_| anyhow::anyhow!("home {n}'s probe thread panicked"))??;
        for (url, m) in got {
            results.insert((n, url), m);
        }
    }
    let stored = stored_ipv6(
        lab,
        &internet,
        results.get(&(1, "https://healthy.lab/".into())),
    );
    Ok((results, stored))
}

/// The dual-stack lab's test (called by `dual_stack_lab` in `main.rs`).
pub fn dual_stack_lab() {
    if !netlab::ready(
        "the dual-stack lab",
        "sudo cargo test -p witness-tests --test lab -- dual_stack_lab",
    ) {
        return;
    }
    let _ = (witness_bin(), collector_bin());
    let started = Instant::now();
    let cases = cases();
    let lab = Lab::new().expect("creating the lab");
    let (results, stored) = match run_lab(&lab, &cases) {
        Ok(results) => results,
        Err(e) => panic!("the dual-stack lab could not run: {e:#}"),
    };
    drop(lab);
    let mut rows: Vec<Row> = cases
        .iter()
        .map(|c| {
            let n = match c.home {
                Home::DualStack => 1,
                Home::BrokenV6 => 2,
            };
            judge::judge(c.name, c.expect, None, results.get(&(n, c.url.to_owned())))
        })
        .collect();
    let (got, ok) = match &stored {
        Ok(text) => (text.clone(), true),
        Err(e) => (format!("{e:#}"), false),
    };
    rows.push(judge::check(
        "collector_stores_ipv6",
        "IPv6 connects stored",
        &got,
        ok,
        "",
    ));
    report(&format!(
        "\nDual-stack lab: {} rows in {:.0} s\n\n{}",
        rows.len(),
        started.elapsed().as_secs_f64(),
        judge::table(&rows, std::env::var_os("WITNESS_LAB_VERBOSE").is_some())
    ));
    assert!(
        judge::passed(&rows),
        "the dual-stack lab found wrong verdicts (table above)"
    );
    let records: Vec<&Measurement> = results.values().collect();
    witness_tests::ooni::check_records("the dual-stack lab", &records);
}
