//! The I/O of a reflector protocol (and of a STUN server): the real first message, checked
//! answer, and, when it got none, its twin: a same-size payload that is not the protocol, on
//! a fresh socket to the same address and port. The twin tells "this protocol is blocked"
//! (the twin passes) from "this port is blocked" (neither passes); the reflector's other
//! ports tell both from "the reflector is down" (see [`super::verdict`]).
//!
//! The twin is random bytes, except for the Shadowsocks-like probe, whose real message is
//! already random: its twin is printable ASCII of the same size, which the Great Firewall's
//! fully-encrypted-traffic rule exempts (Wu et al., USENIX Security 2023), so the pair tells
//! that rule apart from a plain port block.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UdpSocket;

use super::probe::{blank, Steps};
use super::protocols::{echo, openvpn, quic, stun, wireguard};
use crate::checks::{ms_since, tcp, MeasureConfig};
use crate::failure::Failure;
use crate::model::{EndpointObservation, EndpointProbe, Step, TwinObservation};
use crate::targets::apps::EndpointSpec;

/// Largest datagram or stream answer read.
pub const MAX_ANSWER: usize = 2048;
/// Datagrams read per wait before giving up on a noisy socket.
const MAX_DATAGRAMS: usize = 16;
/// Size of the Shadowsocks-like first packet (a typical first packet with a target address
/// and a salt).
pub const SHADOWSOCKS_LEN: usize = 221;
/// How many times a UDP message is sent within the step timeout (datagrams get lost).
const UDP_TRIES: u32 = 2;

/// A check of an answer.
type Check<'a> = Box<dyn Fn(&[u8]) -> bool + Send + Sync + 'a>;

/// The real first message, and a check of its answer.
struct Exchange {
    msg: Vec<u8>,
    check: Check<'static>,
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    rand::rng().fill(&mut b[..]);
    b
}

fn exchange(ep: &EndpointSpec) -> Option<Exchange> {
    Some(match ep.probe {
        EndpointProbe::Wireguard => {
            let key = x25519_dalek::PublicKey::from(ep.key?);
            let (msg, st) = wireguard::initiation(&key, &random_bytes::<68>());
            Exchange {
                msg,
                check: Box::new(move |a| st.accepts(a)),
            }
        }
        EndpointProbe::OpenvpnUdp | EndpointProbe::OpenvpnTcp => {
            let msg = openvpn::client_reset(&random_bytes::<32>());
            let sid = msg[1..9].to_vec();
            Exchange {
                msg,
                check: Box::new(move |a| openvpn::is_server_reset_for(a, &sid)),
            }
        }
        EndpointProbe::Quic => {
            let msg = quic::ping(&random_bytes::<{ quic::PING_LEN }>());
            let sent = msg.clone();
            Exchange {
                msg,
                check: Box::new(move |a| quic::is_version_negotiation_for(a, &sent)),
            }
        }
        EndpointProbe::Stun => {
            let tx = random_bytes::<12>();
            Exchange {
                msg: stun::binding_request(&tx),
                check: Box::new(move |a| stun::is_success_for(a, &tx)),
            }
        }
        EndpointProbe::Shadowsocks => {
            let msg = random_bytes::<SHADOWSOCKS_LEN>().to_vec();
            let want = echo(&msg).to_vec();
            Exchange {
                msg,
                check: Box::new(move |a| a.starts_with(&want)),
            }
        }
        _ => return None,
    })
}

/// The twin of a message: same size, not the protocol.
fn twin_payload(probe: EndpointProbe, len: usize) -> Vec<u8> {
    let mut rng = rand::rng();
    if probe == EndpointProbe::Shadowsocks {
        (0..len).map(|_| rng.random_range(b'a'..=b'z')).collect()
    } else {
        let mut b = vec![0u8; len];
        rng.fill(&mut b[..]);
        // Not the protocol by accident: a WireGuard or OpenVPN type byte, a QUIC long header.
        b[0] = 0x17;
        b
    }
}

fn is_udp(p: EndpointProbe) -> bool {
    super::verdict::is_udp(p)
}

async fn udp_socket(addr: SocketAddr, source: Option<IpAddr>) -> std::io::Result<UdpSocket> {
    let bind: SocketAddr = match (source, addr) {
        (Some(ip), _) => SocketAddr::new(ip, 0),
        (None, SocketAddr::V4(_)) => "0.0.0.0:0".parse().expect("literal"),
        (None, SocketAddr::V6(_)) => "[::]:0".parse().expect("literal"),
    };
    let s = UdpSocket::bind(bind).await?;
    s.connect(addr).await?;
    Ok(s)
}

/// Send `msg` (again halfway through) and wait for an answer that `check` accepts, within
/// `timeout`. `Ok(())` on an accepted answer.
async fn udp_exchange(
    addr: SocketAddr,
    source: Option<IpAddr>,
    msg: &[u8],
    check: &(dyn Fn(&[u8]) -> bool + Send + Sync),
    timeout: Duration,
) -> Result<(), Failure> {
    let s = udp_socket(addr, source)
        .await
        .map_err(|e| Failure::from_io(&e))?;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = vec![0u8; MAX_ANSWER];
    let mut read = 0;
    for attempt in 0..UDP_TRIES {
        s.send(msg).await.map_err(|e| Failure::from_io(&e))?;
        let until = tokio::time::Instant::now() + timeout / UDP_TRIES;
        let until = if attempt + 1 == UDP_TRIES {
            deadline
        } else {
            until.min(deadline)
        };
        loop {
            match tokio::time::timeout_at(until, s.recv(&mut buf)).await {
                Err(_) => break,
                Ok(Err(e)) => return Err(Failure::from_io(&e)),
                Ok(Ok(n)) => {
                    if check(&buf[..n]) {
                        return Ok(());
                    }
                    read += 1;
                    if read >= MAX_DATAGRAMS {
                        return Err(Failure::unknown("unexpected answers"));
                    }
                }
            }
        }
    }
    Err(Failure::GenericTimeout)
}

/// Write `msg` on a fresh connection and read until `check` accepts what came, the peer
/// closes, [`MAX_ANSWER`] bytes arrived, or `timeout` passed.
async fn tcp_exchange(
    mut s: tokio::net::TcpStream,
    msg: &[u8],
    check: &(dyn Fn(&[u8]) -> bool + Send + Sync),
    timeout: Duration,
) -> Result<(), Failure> {
    let run = async {
        s.write_all(msg).await.map_err(|e| Failure::from_io(&e))?;
        let mut got = Vec::new();
        let mut chunk = [0u8; 512];
        while got.len() < MAX_ANSWER {
            let n = s.read(&mut chunk).await.map_err(|e| Failure::from_io(&e))?;
            if n == 0 {
                return Err(if got.is_empty() {
                    Failure::Eof
                } else {
                    Failure::unknown("not the protocol's answer")
                });
            }
            got.extend_from_slice(&chunk[..n.min(MAX_ANSWER - got.len())]);
            if check(&got) {
                return Ok(());
            }
        }
        Err(Failure::unknown("not the protocol's answer"))
    };
    tokio::time::timeout(timeout, run)
        .await
        .unwrap_or(Err(Failure::GenericTimeout))
}

/// Probe a reflector protocol (or a STUN server) at `addr`; `twin`: send the twin when the
/// real message gets no answer (reflectors only: a third party's server owes a random payload
/// no answer).
pub async fn probe_protocol(
    ep: &EndpointSpec,
    addr: SocketAddr,
    cfg: &MeasureConfig,
    t0: Instant,
    steps: &mut Steps,
    twin: bool,
) -> EndpointObservation {
    let start = Instant::now();
    let mut obs = blank(ep, Some(addr), t0);
    let Some(x) = exchange(ep) else {
        obs.failed_step = Some(Step::Protocol);
        obs.failure = Some(Failure::unknown("not a protocol probe"));
        return obs;
    };
    obs.sent_bytes = Some(x.msg.len() as u32);
    let framed = ep.probe == EndpointProbe::OpenvpnTcp;
    let result = if is_udp(ep.probe) {
        udp_exchange(addr, cfg.source_address, &x.msg, &*x.check, cfg.timeout).await
    } else {
        let (tcp_obs, stream) = tcp::connect(addr, cfg, t0).await;
        let failure = tcp_obs.failure.clone();
        steps.tcp.push(tcp_obs);
        let Some(stream) = stream else {
            obs.failed_step = Some(Step::Tcp);
            obs.failure = failure;
            obs.duration_ms = ms_since(start);
            return obs;
        };
        let msg = if framed {
            openvpn::framed(&x.msg)
        } else {
            x.msg.clone()
        };
        let check: Check<'_> = if framed {
            Box::new(|a: &[u8]| a.len() >= 2 && (x.check)(&a[2..]))
        } else {
            Box::new(|a: &[u8]| (x.check)(a))
        };
        tcp_exchange(stream, &msg, &*check, cfg.timeout).await
    };
    if let Err(f) = result {
        obs.failed_step = Some(Step::Protocol);
        obs.failure = Some(f);
        if twin {
            obs.twin = Some(send_twin(ep, addr, cfg, t0, steps, x.msg.len(), framed).await);
        }
    }
    obs.duration_ms = ms_since(start);
    obs
}

async fn send_twin(
    ep: &EndpointSpec,
    addr: SocketAddr,
    cfg: &MeasureConfig,
    t0: Instant,
    steps: &mut Steps,
    len: usize,
    framed: bool,
) -> TwinObservation {
    let start = Instant::now();
    let payload = twin_payload(ep.probe, len);
    let any = |a: &[u8]| !a.is_empty();
    let result = if is_udp(ep.probe) {
        udp_exchange(addr, cfg.source_address, &payload, &any, cfg.timeout).await
    } else {
        let (tcp_obs, stream) = tcp::connect(addr, cfg, t0).await;
        let failure = tcp_obs.failure.clone();
        steps.tcp.push(tcp_obs);
        match stream {
            None => Err(failure.unwrap_or(Failure::GenericTimeout)),
            Some(s) => {
                let msg = if framed {
                    openvpn::framed(&payload)
                } else {
                    payload
                };
                tcp_exchange(s, &msg, &any, cfg.timeout).await
            }
        }
    };
    TwinObservation {
        sent_bytes: len as u32,
        answered: result.is_ok(),
        failure: result.err(),
        duration_ms: ms_since(start),
    }
}
