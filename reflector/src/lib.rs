//! `witness-reflector`: the control side of Witness's protocol tests (#23). It listens on a few
//! ports and answers the first message of WireGuard (a responder that completes the handshake
//! from any initiator key), OpenVPN over UDP and TCP (`P_CONTROL_HARD_RESET_SERVER_V2`), QUIC
//! (version negotiation, as OONI's quicping) and STUN (binding success), and echoes a
//! Shadowsocks-like random first packet. Anything else on a port gets its first bytes echoed,
//! so a probe's same-size random twin gets an answer too: "protocol blocked" (the twin passes,
//! the handshake does not), "port blocked" (neither passes) and "reflector down" (no port
//! answers) are then three different verdicts.
//!
//! It must not become a weapon: a UDP answer is never larger than the datagram it answers (no
//! amplification towards a spoofed source), every source address has a token bucket, TCP
//! connections are capped in all and per source, every read is bounded and every wait timed
//! out. It logs no address: a probe's address is nobody's business. Protocol logic is
//! `witness_core::apps::protocols`, shared with the probe.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use rand::Rng;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use witness_core::apps::protocols::{echo, openvpn, quic, stun, wireguard};
use x25519_dalek::StaticSecret;

/// The shipped example configuration: every key at its default.
pub const EXAMPLE_CONFIG: &str = include_str!("../reflector.example.toml");

/// Largest datagram read; larger ones are cut (and so never answered beyond their size).
const MAX_DATAGRAM: usize = 2048;
/// Largest TCP first message read.
const MAX_TCP_MESSAGE: usize = 1024;

/// One protocol the reflector answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    /// WireGuard handshake initiation (UDP).
    Wireguard,
    /// OpenVPN hard reset over UDP.
    OpenvpnUdp,
    /// OpenVPN hard reset over TCP.
    OpenvpnTcp,
    /// QUIC version negotiation (UDP).
    Quic,
    /// Shadowsocks-like random first packet, echoed (TCP).
    Shadowsocks,
    /// STUN binding (UDP).
    Stun,
}

impl Protocol {
    /// The name, as the config and the apps list spell it.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Wireguard => "wireguard",
            Protocol::OpenvpnUdp => "openvpn-udp",
            Protocol::OpenvpnTcp => "openvpn-tcp",
            Protocol::Quic => "quic",
            Protocol::Shadowsocks => "shadowsocks",
            Protocol::Stun => "stun",
        }
    }

    fn udp(self) -> bool {
        !matches!(self, Protocol::OpenvpnTcp | Protocol::Shadowsocks)
    }
}

/// The configuration (`reflector.example.toml` documents every key).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address every protocol listens on.
    pub listen: IpAddr,
    /// Protocols answered.
    pub protocols: Vec<Protocol>,
    /// WireGuard private key, base64; empty for a fresh one.
    pub wireguard_private_key: String,
    /// Ports.
    pub wireguard_port: u16,
    /// Port.
    pub openvpn_udp_port: u16,
    /// Port.
    pub openvpn_tcp_port: u16,
    /// Port.
    pub quic_port: u16,
    /// Port.
    pub shadowsocks_port: u16,
    /// Port.
    pub stun_port: u16,
    /// Answers per second per source.
    pub rate_per_source: u32,
    /// Burst per source.
    pub burst_per_source: u32,
    /// Sources tracked.
    pub max_sources: usize,
    /// TCP connections in all.
    pub max_connections: usize,
    /// TCP connections per source.
    pub max_connections_per_source: usize,
    /// Seconds for a TCP first message.
    pub tcp_timeout_secs: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: IpAddr::from([0, 0, 0, 0]),
            protocols: vec![
                Protocol::Wireguard,
                Protocol::OpenvpnUdp,
                Protocol::OpenvpnTcp,
                Protocol::Quic,
                Protocol::Shadowsocks,
                Protocol::Stun,
            ],
            wireguard_private_key: String::new(),
            wireguard_port: 51820,
            openvpn_udp_port: 1194,
            openvpn_tcp_port: 1194,
            quic_port: 443,
            shadowsocks_port: 8388,
            stun_port: 3478,
            rate_per_source: 20,
            burst_per_source: 40,
            max_sources: 65536,
            max_connections: 256,
            max_connections_per_source: 8,
            tcp_timeout_secs: 5,
        }
    }
}

impl Config {
    /// Parse and check a configuration file's text.
    pub fn parse(text: &str) -> Result<Config> {
        let c: Config = toml::from_str(text)?;
        anyhow::ensure!(c.rate_per_source > 0, "rate_per_source must be at least 1");
        anyhow::ensure!(
            c.burst_per_source >= 1,
            "burst_per_source must be at least 1"
        );
        anyhow::ensure!(c.max_sources >= 1, "max_sources must be at least 1");
        anyhow::ensure!(
            c.max_connections >= 1 && c.max_connections_per_source >= 1,
            "max_connections and max_connections_per_source must be at least 1"
        );
        anyhow::ensure!(
            (1..=60).contains(&c.tcp_timeout_secs),
            "tcp_timeout_secs must be 1 to 60"
        );
        c.key()?;
        Ok(c)
    }

    fn port(&self, p: Protocol) -> u16 {
        match p {
            Protocol::Wireguard => self.wireguard_port,
            Protocol::OpenvpnUdp => self.openvpn_udp_port,
            Protocol::OpenvpnTcp => self.openvpn_tcp_port,
            Protocol::Quic => self.quic_port,
            Protocol::Shadowsocks => self.shadowsocks_port,
            Protocol::Stun => self.stun_port,
        }
    }

    /// The WireGuard key: configured, or fresh.
    pub fn key(&self) -> Result<StaticSecret> {
        if self.wireguard_private_key.is_empty() {
            let mut k = [0u8; 32];
            rand::rng().fill(&mut k[..]);
            return Ok(StaticSecret::from(k));
        }
        let list = format!(
            "date 2000-01-01\napp k reflector k\nendpoint k wireguard k.invalid:1 key={}\n",
            self.wireguard_private_key
        );
        // The apps list's base64 decoder is the one place keys are decoded.
        let parsed = witness_core::targets::apps::parse_apps_list("config", &list)
            .ok()
            .and_then(|l| l.apps[0].endpoints[0].key)
            .context("wireguard_private_key is not a base64 32-byte key (as `wg genkey` prints)")?;
        Ok(StaticSecret::from(parsed))
    }
}

/// Per-source token buckets, bounded in the sources they remember.
pub struct Limiter {
    rate: f64,
    burst: f64,
    max: usize,
    buckets: HashMap<IpAddr, (f64, Instant)>,
}

impl Limiter {
    /// A limiter with `rate` tokens per second, `burst` at most, for `max` sources.
    pub fn new(rate: u32, burst: u32, max: usize) -> Self {
        Limiter {
            rate: f64::from(rate),
            burst: f64::from(burst),
            max,
            buckets: HashMap::new(),
        }
    }

    /// Take one token for `ip` at `now`; false when it has none left.
    pub fn allow(&mut self, ip: IpAddr, now: Instant) -> bool {
        if !self.buckets.contains_key(&ip) && self.buckets.len() >= self.max {
            // Forget the sources whose buckets are full again; if none, everyone (a flood of
            // spoofed sources must not grow the map).
            let (rate, burst) = (self.rate, self.burst);
            self.buckets
                .retain(|_, (t, at)| *t + now.duration_since(*at).as_secs_f64() * rate < burst);
            if self.buckets.len() >= self.max {
                self.buckets.clear();
            }
        }
        let (tokens, at) = self.buckets.entry(ip).or_insert((self.burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * self.rate).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The answer to a datagram on `proto`'s port: the protocol's, or the first bytes echoed.
/// `None` when the answer would be larger than the datagram.
pub fn answer_udp(
    proto: Protocol,
    msg: &[u8],
    peer: SocketAddr,
    key: &StaticSecret,
) -> Option<Vec<u8>> {
    let mut rng = rand::rng();
    let answer = match proto {
        Protocol::Wireguard => {
            let mut r = [0u8; 36];
            rng.fill(&mut r[..]);
            wireguard::respond(key, msg, &r)
        }
        Protocol::OpenvpnUdp => openvpn::parse_client_reset(msg)
            .map(|sid| openvpn::server_reset(&sid, &rng.random::<[u8; 8]>())),
        Protocol::Quic => {
            quic::parse_ping(msg).map(|(d, s)| quic::version_negotiation(d, s, rng.random()))
        }
        Protocol::Stun => {
            stun::parse_binding_request(msg).map(|tx| stun::binding_success(&tx, peer))
        }
        Protocol::OpenvpnTcp | Protocol::Shadowsocks => None,
    }
    .unwrap_or_else(|| echo(msg).to_vec());
    (answer.len() <= msg.len() && !answer.is_empty()).then_some(answer)
}

/// The answer to a TCP first message: an OpenVPN reset (framed), or the first bytes echoed.
pub fn answer_tcp(proto: Protocol, msg: &[u8]) -> Vec<u8> {
    if proto == Protocol::OpenvpnTcp && msg.len() >= 2 {
        if let Some(sid) = openvpn::parse_client_reset(&msg[2..]) {
            return openvpn::framed(&openvpn::server_reset(
                &sid,
                &rand::rng().random::<[u8; 8]>(),
            ));
        }
    }
    echo(msg).to_vec()
}

/// The listeners, bound: what the reflector answers where.
pub struct Bound {
    /// (protocol, address) of each listener.
    pub addrs: Vec<(Protocol, SocketAddr)>,
    udp: Vec<(Protocol, UdpSocket)>,
    tcp: Vec<(Protocol, TcpListener)>,
}

/// Bind every configured protocol's port.
pub async fn bind(cfg: &Config) -> Result<Bound> {
    let mut b = Bound {
        addrs: vec![],
        udp: vec![],
        tcp: vec![],
    };
    for &p in &cfg.protocols {
        let at = SocketAddr::new(cfg.listen, cfg.port(p));
        if p.udp() {
            let s = UdpSocket::bind(at)
                .await
                .with_context(|| format!("cannot listen for {} on UDP {at}", p.name()))?;
            b.addrs.push((p, s.local_addr()?));
            b.udp.push((p, s));
        } else {
            let l = TcpListener::bind(at)
                .await
                .with_context(|| format!("cannot listen for {} on TCP {at}", p.name()))?;
            b.addrs.push((p, l.local_addr()?));
            b.tcp.push((p, l));
        }
    }
    Ok(b)
}

/// Answer on every bound listener until the process ends.
pub async fn serve(cfg: &Config, bound: Bound, key: StaticSecret) {
    let limiter = Arc::new(Mutex::new(Limiter::new(
        cfg.rate_per_source,
        cfg.burst_per_source,
        cfg.max_sources,
    )));
    let key = Arc::new(key);
    let conns = Arc::new(Mutex::new((0usize, HashMap::<IpAddr, usize>::new())));
    let mut tasks = tokio::task::JoinSet::new();
    for (p, s) in bound.udp {
        let (limiter, key) = (limiter.clone(), key.clone());
        tasks.spawn(async move {
            let mut buf = vec![0u8; MAX_DATAGRAM];
            loop {
                let Ok((n, peer)) = s.recv_from(&mut buf).await else {
                    continue;
                };
                if !limiter
                    .lock()
                    .expect("limiter")
                    .allow(peer.ip(), Instant::now())
                {
                    continue;
                }
                if let Some(a) = answer_udp(p, &buf[..n], peer, &key) {
                    let _ = s.send_to(&a, peer).await;
                }
            }
        });
    }
    let timeout = Duration::from_secs(cfg.tcp_timeout_secs);
    let (max_all, max_one) = (cfg.max_connections, cfg.max_connections_per_source);
    for (p, l) in bound.tcp {
        let (limiter, conns) = (limiter.clone(), conns.clone());
        tasks.spawn(async move {
            loop {
                let Ok((s, peer)) = l.accept().await else {
                    continue;
                };
                let ip = peer.ip();
                if !limiter.lock().expect("limiter").allow(ip, Instant::now()) {
                    continue;
                }
                {
                    let mut c = conns.lock().expect("conns");
                    let mine = c.1.get(&ip).copied().unwrap_or(0);
                    if c.0 >= max_all || mine >= max_one {
                        continue;
                    }
                    c.0 += 1;
                    *c.1.entry(ip).or_default() += 1;
                }
                let conns = conns.clone();
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(timeout, answer_connection(p, s)).await;
                    let mut c = conns.lock().expect("conns");
                    c.0 -= 1;
                    if let Some(n) = c.1.get_mut(&ip) {
                        *n -= 1;
                        if *n == 0 {
                            c.1.remove(&ip);
                        }
                    }
                });
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

/// Read one first message (an OpenVPN frame, or whatever the first read brings), answer, close.
async fn answer_connection(p: Protocol, mut s: TcpStream) -> std::io::Result<()> {
    let mut buf = vec![0u8; MAX_TCP_MESSAGE];
    let mut got = 0;
    loop {
        let n = s.read(&mut buf[got..]).await?;
        if n == 0 {
            return Ok(());
        }
        got += n;
        let want = if p == Protocol::OpenvpnTcp && got >= 2 {
            2 + u16::from_be_bytes([buf[0], buf[1]]) as usize
        } else {
            1
        };
        if got >= want.min(MAX_TCP_MESSAGE) {
            break;
        }
    }
    s.write_all(&answer_tcp(p, &buf[..got])).await?;
    s.shutdown().await
}

/// Command line.
#[derive(Debug, Parser)]
#[command(name = "witness-reflector", version, about)]
pub struct Cli {
    /// Configuration file (TOML; see `witness-reflector example-config`).
    #[arg(long, env = "WITNESS_REFLECTOR_CONFIG")]
    pub config: Option<PathBuf>,
    /// What to do (default: serve).
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the example configuration (every key at its default).
    ExampleConfig,
}

/// Entry point.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WITNESS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    if let Some(Command::ExampleConfig) = cli.command {
        print!("{EXAMPLE_CONFIG}");
        return ExitCode::SUCCESS;
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("witness-reflector: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let cfg = match &cli.config {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read {}", p.display()))?;
            Config::parse(&text).with_context(|| format!("{} is refused", p.display()))?
        }
        None => Config::default(),
    };
    let key = cfg.key()?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let bound = bind(&cfg).await?;
        // Probes' lists need the key and the ports: one line each on stdout.
        println!(
            "wireguard-public-key {}",
            witness_core::targets::apps::encode_key(&wireguard::public_key(&key))
        );
        for (p, a) in &bound.addrs {
            println!("listening {} {a}", p.name());
        }
        use std::io::Write;
        let _ = std::io::stdout().flush();
        tracing::info!(listeners = bound.addrs.len(), "witness-reflector answering");
        serve(&cfg, bound, key).await;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_is_the_defaults_and_unknown_keys_are_refused() {
        assert_eq!(Config::parse(EXAMPLE_CONFIG).unwrap(), Config::default());
        let e = Config::parse(&format!("{EXAMPLE_CONFIG}\nfrobnicate = 1\n")).unwrap_err();
        assert!(e.to_string().contains("frobnicate"), "{e}");
        assert!(Config::parse("tcp_timeout_secs = 0").is_err());
        assert!(Config::parse("wireguard_private_key = \"nope\"").is_err());
        assert!(Config::parse("protocols = [\"pptp\"]").is_err());
    }

    #[test]
    fn no_answer_is_larger_than_its_datagram() {
        let key = StaticSecret::from([5u8; 32]);
        let peer: SocketAddr = "198.51.100.9:4000".parse().unwrap();
        let v6: SocketAddr = "[2001:db8::9]:4000".parse().unwrap();
        let mut rng = rand::rng();
        for p in [
            Protocol::Wireguard,
            Protocol::OpenvpnUdp,
            Protocol::Quic,
            Protocol::Stun,
        ] {
            for len in [1usize, 2, 13, 20, 36, 42, 64, 92, 148, 1200, 2048] {
                let mut m = vec![0u8; len];
                rng.fill(&mut m[..]);
                for peer in [peer, v6] {
                    if let Some(a) = answer_udp(p, &m, peer, &key) {
                        assert!(a.len() <= m.len(), "{p:?} {len}");
                    }
                }
            }
        }
        // A STUN request without padding would get a larger answer over IPv6: none is sent.
        let bare = [&[0u8, 1, 0, 0][..], &stun::COOKIE, &[7u8; 12]].concat();
        assert!(answer_udp(Protocol::Stun, &bare, v6, &key).is_none());
    }

    #[test]
    fn limiter_refuses_past_the_burst_and_stays_bounded() {
        let mut l = Limiter::new(10, 3, 4);
        let t = Instant::now();
        let ip: IpAddr = "198.51.100.1".parse().unwrap();
        assert!((0..3).all(|_| l.allow(ip, t)));
        assert!(!l.allow(ip, t));
        assert!(l.allow(ip, t + Duration::from_millis(150)));
        for i in 0..100u8 {
            l.allow(IpAddr::from([10, 0, 0, i]), t);
            assert!(l.buckets.len() <= 4);
        }
    }
}
