//! The socket side of the localisation: the triggering exchange repeated with a low TTL, and
//! the ICMP errors Linux queues on the socket with `IP_RECVERR` (read with
//! `recvmsg(MSG_ERRQUEUE)`, no raw socket). [`localise`] runs every TTL at once and hands the
//! replies to the pure [`super::analysis`].
//!
//! Only Linux (and Android) have `IP_RECVERR`. Elsewhere (Windows) the socket code compiles
//! out and [`localise`] records `unlocated: platform_unsupported` for every planned block, so
//! a record from such a probe says why it names no hop ([`LOCALISATION_SUPPORTED`]).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
#[cfg(any(target_os = "linux", target_os = "android"))]
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

#[cfg(any(target_os = "linux", target_os = "android"))]
use nix::sys::socket::{
    recvmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags, SockaddrStorage,
};
use socket2::{Domain, Protocol, SockRef, Socket, Type};
use tokio::net::TcpStream;

use super::analysis::{observation, unlocated, Plan, MAX_TTL_LIMIT};
use crate::checks::tls::TlsContext;
use crate::checks::{http, ms_since, MeasureConfig};
use crate::failure::Failure;
use crate::model::{HopReply, PathAction, PathObservation, PathTrigger, PathUnlocated};
use crate::scrub::OwnAddresses;

/// Whether this platform can localise: Linux's `IP_RECVERR` error queue gives the routers'
/// ICMP replies to an unprivileged socket. Windows has no such option (its ICMP API sends
/// echo requests, not the triggering exchange), so there the localisation is recorded as
/// [`PathUnlocated::PlatformUnsupported`] instead of being skipped silently.
pub const LOCALISATION_SUPPORTED: bool = cfg!(any(target_os = "linux", target_os = "android"));

/// What a SYN sent with a given TTL met, and the router that answered with an ICMP error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SynReply {
    /// The reply.
    pub reply: HopReply,
    /// The ICMP sender, from the socket's error queue.
    pub router: Option<IpAddr>,
}

fn new_socket(addr: SocketAddr, local: Option<SocketAddr>) -> std::io::Result<Socket> {
    let domain = match addr {
        SocketAddr::V4(_) => Domain::IPV4,
        SocketAddr::V6(_) => Domain::IPV6,
    };
    let sock = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
    sock.set_nonblocking(true)?;
    if let Some(local) = local {
        // The flow's port is bound again for every TTL, the previous connection just closed.
        sock.set_reuse_address(true)?;
        sock.bind(&local.into())?;
    }
    Ok(sock)
}

/// One flow for every TTL of a localisation: the same source address and port towards the
/// same address and port, so the same 5-tuple, which routers that balance load (ECMP) hash
/// onto one path. A probe that changed its port between TTLs could see one path at one TTL
/// and another at the next, and name a hop of neither.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flow {
    /// The target address.
    pub addr: SocketAddr,
    /// The local address and port every TTL's connection is bound to.
    pub local: SocketAddr,
}

impl Flow {
    /// A flow to `addr` from `source` (or the unspecified address) and a port the system
    /// picks now.
    pub fn new(addr: SocketAddr, source: Option<IpAddr>) -> std::io::Result<Flow> {
        let ip = source.unwrap_or(match addr {
            SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        });
        let sock = new_socket(addr, Some(SocketAddr::new(ip, 0)))?;
        let port = sock
            .local_addr()?
            .as_socket()
            .map(|a| a.port())
            .ok_or_else(|| std::io::Error::other("no local port"))?;
        Ok(Flow {
            addr,
            local: SocketAddr::new(ip, port),
        })
    }
}

/// Close a connection of the flow with a reset sent at full TTL, so neither end keeps it
/// (no TIME_WAIT here, no half-open connection at the server) and the next TTL's connect
/// from the same port starts clean.
#[cfg(unix)]
fn abort<S: std::os::fd::AsFd>(sock: &S, v6: bool) {
    let r = SockRef::from(sock);
    let _ = if v6 {
        r.set_unicast_hops_v6(FULL_TTL)
    } else {
        r.set_ttl_v4(FULL_TTL)
    };
    let _ = r.set_linger(Some(Duration::ZERO));
}

/// The TTL a flow's connections are closed with: enough for any path.
#[cfg(unix)]
const FULL_TTL: u32 = 64;

/// Set the TTL (hop limit) and ask for ICMP errors on the socket.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn set_ttl_recverr<S: std::os::fd::AsFd>(sock: &S, v6: bool, ttl: u8) -> std::io::Result<()> {
    let r = SockRef::from(sock);
    if v6 {
        r.set_unicast_hops_v6(u32::from(ttl))?;
        setsockopt(sock, sockopt::Ipv6RecvErr, &true).map_err(std::io::Error::from)?;
    } else {
        r.set_ttl_v4(u32::from(ttl))?;
        setsockopt(sock, sockopt::Ipv4RecvErr, &true).map_err(std::io::Error::from)?;
    }
    Ok(())
}

/// Without `IP_RECVERR` (see [`LOCALISATION_SUPPORTED`]): unsupported, never reached through
/// [`localise`].
#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn set_ttl_recverr<S>(_sock: &S, _v6: bool, _ttl: u8) -> std::io::Result<()> {
    Err(std::io::ErrorKind::Unsupported.into())
}

/// Without an error queue there is nothing to read.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn read_error_queue<S>(_sock: &S) -> Option<(HopReply, Option<IpAddr>)> {
    None
}

/// The first ICMP error queued on the socket: (its reply kind, the sender).
#[cfg(any(target_os = "linux", target_os = "android"))]
fn read_error_queue<S: AsRawFd>(sock: &S) -> Option<(HopReply, Option<IpAddr>)> {
    read_error_queue_payload(sock).map(|(r, a, _)| (r, a))
}

/// The first ICMP error queued on the socket, with the first two bytes of the payload of the
/// packet it answers (for a UDP socket: the DNS query's id, which names its TTL).
#[cfg(any(target_os = "linux", target_os = "android"))]
fn read_error_queue_payload<S: AsRawFd>(
    sock: &S,
) -> Option<(HopReply, Option<IpAddr>, Option<u16>)> {
    let mut data = [0u8; 256];
    let mut iov = [std::io::IoSliceMut::new(&mut data)];
    let mut cmsg = nix::cmsg_space!(nix::libc::sock_extended_err, nix::libc::sockaddr_in6);
    let msg = recvmsg::<SockaddrStorage>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_ERRQUEUE | MsgFlags::MSG_DONTWAIT,
    )
    .ok()?;
    let id = (msg.bytes >= 2).then_some(());
    let mut return_reply = None;
    for c in msg.cmsgs().ok()? {
        match c {
            ControlMessageOwned::Ipv4RecvErr(ee, from) => {
                let router =
                    from.map(|sin| IpAddr::V4(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr))));
                // ICMP type 11: time exceeded; anything else is an unreachable of some kind.
                let reply = if ee.ee_origin == nix::libc::SO_EE_ORIGIN_ICMP && ee.ee_type == 11 {
                    HopReply::TimeExceeded
                } else {
                    HopReply::Unreachable
                };
                return_reply = Some((reply, router));
                break;
            }
            ControlMessageOwned::Ipv6RecvErr(ee, from) => {
                let router = from.map(|sin| IpAddr::V6(Ipv6Addr::from(sin.sin6_addr.s6_addr)));
                // ICMPv6 type 3: time exceeded.
                let reply = if ee.ee_origin == nix::libc::SO_EE_ORIGIN_ICMP6 && ee.ee_type == 3 {
                    HopReply::TimeExceeded
                } else {
                    HopReply::Unreachable
                };
                return_reply = Some((reply, router));
                break;
            }
            _ => {}
        }
    }
    let (kind, router) = return_reply?;
    let id = id.map(|()| u16::from_be_bytes([data[0], data[1]]));
    Some((kind, router, id))
}

/// Classify a socket error of a TTL-limited exchange.
fn reply_of_io(e: &std::io::Error) -> HopReply {
    match Failure::from_io(e) {
        Failure::ConnectionReset | Failure::ConnectionRefused => HopReply::Reset,
        Failure::Eof => HopReply::Close,
        Failure::GenericTimeout => HopReply::Silence,
        Failure::HostUnreachable => HopReply::TimeExceeded,
        Failure::NetworkUnreachable => HopReply::Unreachable,
        _ => HopReply::Error,
    }
}

/// A TCP SYN to `addr` with this TTL: what came back within `wait`, and which router sent an
/// ICMP error. A connection that completes is reset at once. `local`: the flow's address and
/// port (none: any).
pub async fn syn_probe(
    addr: SocketAddr,
    ttl: u8,
    wait: Duration,
    local: Option<SocketAddr>,
) -> SynReply {
    let plain = |reply| SynReply {
        reply,
        router: None,
    };
    let mut attempt = 0;
    loop {
        let sock = match new_socket(addr, local) {
            Ok(s) => s,
            Err(e) if flow_busy(&e) && attempt < FLOW_BUSY_RETRIES => {
                attempt += 1;
                tokio::time::sleep(FLOW_BUSY_PAUSE).await;
                continue;
            }
            Err(_) => return plain(HopReply::Error),
        };
        if set_ttl_recverr(&sock, addr.is_ipv6(), ttl).is_err() {
            return plain(HopReply::Error);
        }
        // The duplicate keeps the socket's error queue readable after tokio's connect has
        // failed and closed its own descriptor.
        let Ok(dup) = sock.try_clone() else {
            return plain(HopReply::Error);
        };
        let sock = tokio::net::TcpSocket::from_std_stream(std::net::TcpStream::from(sock));
        return match tokio::time::timeout(wait, sock.connect(addr)).await {
            Err(_) => plain(HopReply::Silence),
            Ok(Ok(stream)) => {
                abort(&stream, addr.is_ipv6());
                plain(HopReply::Answered)
            }
            Ok(Err(e)) if flow_busy(&e) && attempt < FLOW_BUSY_RETRIES => {
                attempt += 1;
                tokio::time::sleep(FLOW_BUSY_PAUSE).await;
                continue;
            }
            Ok(Err(e)) => match read_error_queue(&dup) {
                Some((reply, router)) => SynReply { reply, router },
                None => plain(reply_of_io(&e)),
            },
        };
    }
}

/// Without `IP_RECVERR` no flow is ever used (see [`LOCALISATION_SUPPORTED`]).
#[cfg(not(unix))]
fn abort<S>(_sock: &S, _v6: bool) {}

/// Whether a connect or bind failed because the flow's previous connection is still being
/// closed (the HTTP client's connection task lets go of its socket a moment after the
/// exchange ends): worth a short wait, not a reply.
fn flow_busy(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::AddrNotAvailable | std::io::ErrorKind::AddrInUse
    )
}

/// A silent TTL's trigger once more, spaced for the routers' ICMP budget: its reply, when the
/// exchange could be repeated.
async fn retry_trigger(
    plan: &Plan,
    flow: &Flow,
    ttl: u8,
    ctx: &ProbeContext<'_>,
) -> Option<HopReply> {
    tokio::time::sleep(RETRY_SPACING).await;
    ctx.pacer.take(ttl).await;
    data_probe(plan, flow, ttl, ctx)
        .await
        .map(|(reply, _)| reply)
}

/// Waits for a busy flow: at most [`FLOW_BUSY_RETRIES`] × [`FLOW_BUSY_PAUSE`] in all.
const FLOW_BUSY_RETRIES: u32 = 50;
const FLOW_BUSY_PAUSE: Duration = Duration::from_millis(10);

/// A connection at full TTL on the flow, then the trigger sent with `ttl`: what came back,
/// and how long the full-TTL connect took (the round trip to the destination).
async fn data_probe(
    plan: &Plan,
    flow: &Flow,
    ttl: u8,
    ctx: &ProbeContext<'_>,
) -> Option<(HopReply, Duration)> {
    let connect_start = Instant::now();
    let connect = async {
        let mut attempt = 0;
        loop {
            let tried = async {
                let sock = new_socket(flow.addr, Some(flow.local))?;
                sock.set_tcp_nodelay(true)?;
                let sock = tokio::net::TcpSocket::from_std_stream(std::net::TcpStream::from(sock));
                sock.connect(flow.addr).await
            };
            match tried.await {
                Err(e) if flow_busy(&e) && attempt < FLOW_BUSY_RETRIES => {
                    attempt += 1;
                    tokio::time::sleep(FLOW_BUSY_PAUSE).await;
                }
                other => return other,
            }
        }
    };
    let connected = tokio::time::timeout(ctx.cfg.path.probe_timeout, connect).await;
    let stream: TcpStream = match connected {
        Ok(Ok(s)) => s,
        // The exchange cannot be repeated at all.
        Ok(Err(e)) => {
            tracing::info!(ttl, error = %e.kind(), "a localisation's full-TTL connect failed");
            return None;
        }
        Err(_) => {
            tracing::info!(ttl, "a localisation's full-TTL connect timed out");
            return None;
        }
    };
    let rtt = connect_start.elapsed();
    if set_ttl_recverr(&stream, plan.addr.is_ipv6(), ttl).is_err() {
        abort(&stream, plan.addr.is_ipv6());
        return Some((HopReply::Error, rtt));
    }
    // The router's time-exceeded for the trigger reaches an established connection as a
    // *soft* error when it arrives while the sending call still holds the socket, as it does
    // from a near router (every time in the lab's namespaces): the connection then
    // keeps retransmitting and the exchange would only time out, as if the censor had
    // dropped it. Linux keeps that error for SO_ERROR, so it is watched alongside.
    let Ok(watch) = SockRef::from(&stream).try_clone() else {
        abort(&stream, plan.addr.is_ipv6());
        return Some((HopReply::Error, rtt));
    };
    let t0 = Instant::now();
    let exchange = async move {
        match plan.trigger {
            PathTrigger::Syn | PathTrigger::Dns => HopReply::Error,
            PathTrigger::ClientHello => {
                let name = plan.server_name.as_deref().unwrap_or_default();
                let (obs, _tls) = ctx
                    .tls
                    .handshake(stream, plan.addr, name, false, &ctx.short, t0)
                    .await;
                match &obs.failure {
                    None => {
                        let issuer = obs.peer_certificates.first().map(|c| c.issuer.as_str());
                        if plan.action == PathAction::ForgedCertificate
                            && obs.verification_failure.is_some()
                            && issuer.is_some()
                            && issuer == plan.fingerprint.as_deref()
                        {
                            HopReply::Censor
                        } else {
                            HopReply::Answered
                        }
                    }
                    Some(f) => reply_of_failure(f),
                }
            }
            PathTrigger::Request => {
                let Some(url) = plan.url.as_deref().and_then(|u| url::Url::parse(u).ok()) else {
                    return HopReply::Error;
                };
                let ex = http::get(stream, &url, plan.addr, 0, &ctx.short, ctx.own, t0).await;
                let o = &ex.obs;
                match &o.failure {
                    None => {
                        let same_page =
                            plan.fingerprint.is_some() && o.body_sha256 == plan.fingerprint;
                        let same_sig = plan.blockpage.is_some() && o.blockpage == plan.blockpage;
                        if plan.action == PathAction::Blockpage && (same_page || same_sig) {
                            HopReply::Censor
                        } else {
                            HopReply::Answered
                        }
                    }
                    Some(f) => reply_of_failure(f),
                }
            }
        }
    };
    let replied = async {
        tokio::select! {
            reply = exchange => reply,
            reply = soft_icmp_error(&watch) => reply,
        }
    };
    let reply = tokio::time::timeout(
        trigger_wait(plan.action, rtt, ctx.cfg.path.probe_timeout),
        replied,
    )
    .await
    .unwrap_or(HopReply::Silence);
    // The exchange's own descriptor is gone; this last one closes the connection.
    abort(&watch, plan.addr.is_ipv6());
    Some((reply, rtt))
}

/// How often a TTL-limited exchange checks its socket for a soft ICMP error.
const SOFT_ERROR_POLL: Duration = Duration::from_millis(20);

/// What an ICMP error reported on a connection says, if it is one (`SO_ERROR`'s value):
/// `EHOSTUNREACH` is a time-exceeded (or a host unreachable), `ENETUNREACH` a network
/// unreachable. Other errors are the exchange's own to report.
fn soft_error_reply(e: &std::io::Error) -> Option<HopReply> {
    match reply_of_io(e) {
        r @ (HopReply::TimeExceeded | HopReply::Unreachable) => Some(r),
        _ => None,
    }
}

/// Waits until the socket holds an ICMP error (see [`soft_error_reply`]); never returns
/// otherwise (the exchange's own bound ends the wait).
async fn soft_icmp_error(sock: &Socket) -> HopReply {
    loop {
        tokio::time::sleep(SOFT_ERROR_POLL).await;
        if let Ok(Some(e)) = sock.take_error() {
            if let Some(reply) = soft_error_reply(&e) {
                return reply;
            }
        }
    }
}

fn reply_of_failure(f: &Failure) -> HopReply {
    match f {
        Failure::ConnectionReset | Failure::ConnectionRefused => HopReply::Reset,
        Failure::Eof => HopReply::Close,
        Failure::GenericTimeout => HopReply::Silence,
        Failure::HostUnreachable => HopReply::TimeExceeded,
        Failure::NetworkUnreachable => HopReply::Unreachable,
        _ => HopReply::Answered,
    }
}

/// What the I/O side needs.
pub struct ProbeContext<'a> {
    /// The probe's configuration.
    pub cfg: &'a MeasureConfig,
    /// The same with the step timeout shortened to the probe timeout.
    pub short: MeasureConfig,
    /// TLS for ClientHello triggers.
    pub tls: &'a TlsContext,
    /// The probe's own addresses, never kept.
    pub own: &'a OwnAddresses,
    /// Shared by every localisation of a run: the ICMP budget of the routers.
    pub pacer: Pacer,
}

impl<'a> ProbeContext<'a> {
    /// Build from the probe's configuration.
    pub fn new(cfg: &'a MeasureConfig, tls: &'a TlsContext, own: &'a OwnAddresses) -> Self {
        let mut short = cfg.clone();
        short.timeout = cfg.path.probe_timeout;
        ProbeContext {
            cfg,
            short,
            tls,
            own,
            pacer: Pacer::default(),
        }
    }
}

/// The ICMP budget of the routers, shared by every localisation of a run: Linux answers at
/// most [`ICMP_BURST`] time-exceeded to one destination at once, then one per
/// [`ICMP_INTERVAL`] (`net.ipv4.icmp_ratelimit`, and most vendors do the like), and a probe
/// past that budget could read a router's silence as the censor's. The router a TTL reaches
/// is not known before it answers, and the first hops are shared by every path from the
/// probe, so the budget is kept per TTL, as the routers keep it: every packet sent with TTL
/// `t` spends a token of TTL `t`'s bucket ([`Pacer::spend`]). The packets whose silence
/// would decide a placement (the SYNs that bound a drop, the retries) wait until the bucket
/// holds a token ([`Pacer::take`]); the others go at once, since their silence only costs a
/// router's address (silence before a censor's action changes nothing).
#[derive(Debug, Default)]
pub struct Pacer {
    buckets: std::sync::Mutex<std::collections::HashMap<u8, (f64, tokio::time::Instant)>>,
}

/// Time-exceeded messages a Linux router sends one destination at once.
pub const ICMP_BURST: f64 = 6.0;
/// Then one per this interval (`net.ipv4.icmp_ratelimit`, 1000 ms by default).
pub const ICMP_INTERVAL: Duration = Duration::from_secs(1);

impl Pacer {
    /// The tokens of TTL `ttl`'s bucket now (refilled), and the bucket.
    fn refill<R>(&self, ttl: u8, f: impl FnOnce(&mut f64) -> R) -> R {
        let mut b = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let now = tokio::time::Instant::now();
        let (tokens, last) = b.entry(ttl).or_insert((ICMP_BURST, now));
        let earned = now.duration_since(*last).as_secs_f64() / ICMP_INTERVAL.as_secs_f64();
        *tokens = (*tokens + earned).min(ICMP_BURST);
        *last = now;
        f(tokens)
    }

    /// Spend a token of TTL `ttl`'s bucket without waiting (it may go below zero: the
    /// routers' budget is spent all the same).
    pub fn spend(&self, ttl: u8) {
        self.refill(ttl, |t| *t = (*t - 1.0).max(-MAX_DEBT));
    }

    /// Wait for a token of TTL `ttl`'s bucket, and spend it.
    pub async fn take(&self, ttl: u8) {
        loop {
            let wait = self.refill(ttl, |t| {
                if *t >= 1.0 {
                    *t -= 1.0;
                    None
                } else {
                    Some(ICMP_INTERVAL.mul_f64(1.0 - *t))
                }
            });
            match wait {
                None => return,
                Some(w) => tokio::time::sleep(w).await,
            }
        }
    }
}

/// How far unpaced packets can overdraw a bucket: a waiting packet waits at most this many
/// intervals plus one.
const MAX_DEBT: f64 = 4.0;

/// A silent TTL is tried once more after this pause: a router that rate-limits its ICMP
/// (Linux: one per second per destination past a small burst) answers then.
pub const RETRY_SPACING: Duration = ICMP_INTERVAL;

/// How long a TTL's trigger waits. For a drop, silence is the expected reply at and past the
/// censor, so waiting is the cost: a router's time-exceeded comes within about a round trip
/// of the full-TTL connect, and the server's answer, where the trigger gets through, within a
/// second more on any working site; within the probe timeout. For an action that answers
/// (a reset, a blockpage, a forged certificate from a proxy that first handshakes upstream),
/// the whole probe timeout: a late answer read as silence would lose the hop.
fn trigger_wait(action: PathAction, rtt: Duration, probe_timeout: Duration) -> Duration {
    if action == PathAction::Silence {
        (rtt * 4 + Duration::from_secs(1)).min(probe_timeout)
    } else {
        probe_timeout
    }
}

/// How long a SYN waits for its time-exceeded or its answer, from the round trip seen: four
/// times it and 300 ms for a router's slow path, within the probe timeout.
fn syn_wait(rtt: Option<Duration>, probe_timeout: Duration) -> Duration {
    match rtt {
        Some(rtt) => (rtt * 4 + Duration::from_millis(300)).min(probe_timeout),
        None => probe_timeout,
    }
}

/// A localisation's result: the observation (privacy rules applied), and the routers' own
/// addresses by TTL - 1, unscrubbed, kept in memory only to ask the collector their networks
/// ([`super::fill_asns`]).
#[derive(Clone, Debug)]
pub struct Located {
    /// What goes into the record.
    pub obs: PathObservation,
    /// Every router address seen, by TTL - 1; empty when the localisation could not run.
    pub routers: Vec<Option<IpAddr>>,
}

impl From<PathObservation> for Located {
    fn from(obs: PathObservation) -> Self {
        Located {
            obs,
            routers: Vec::new(),
        }
    }
}

/// Consecutive silent TTLs (trigger and control both silent) after which a localisation
/// stops: past them nothing more can be learnt in reasonable time.
const MAX_SILENT_RUN: usize = 3;

/// Localise one planned block: the TTLs in turn, 1, 2, …, all on one [`Flow`], each packet
/// paced by the routers' ICMP budget ([`Pacer`]). For a `client_hello` or `request` trigger,
/// a plain SYN with the same TTL on the same flow (the control: the censor lets it through)
/// names the router of a TTL that came back time-exceeded past the private hops, and tells a
/// silent router from a drop at a TTL whose trigger met silence. A silent trigger whose
/// control was answered is tried once more after [`RETRY_SPACING`], so a rate-limited router
/// is not read as the censor. Stops at the censor's action, at an answer, or when the
/// placement cannot change any more. Each exchange is bounded by the probe timeout.
pub async fn localise(plan: &Plan, ctx: &ProbeContext<'_>, t0: Instant) -> Located {
    let t_ms = ms_since(t0);
    let start = Instant::now();
    if !LOCALISATION_SUPPORTED {
        return unlocated(plan, PathUnlocated::PlatformUnsupported, t_ms, 0.0).into();
    }
    let pc = &ctx.cfg.path;
    let max_ttl = pc.max_ttl.clamp(1, MAX_TTL_LIMIT);
    if plan.trigger == PathTrigger::Dns {
        return localise_dns(plan, ctx, t_ms, start).await;
    }
    let Ok(flow) = Flow::new(plan.addr, ctx.cfg.source_address) else {
        return unlocated(plan, PathUnlocated::NotRepeatable, t_ms, ms_since(start)).into();
    };
    let mut replies: Vec<HopReply> = Vec::new();
    let mut control: Vec<HopReply> = Vec::new();
    let mut routers: Vec<Option<IpAddr>> = Vec::new();
    let mut probes = 0u32;
    // The longest round trip seen: the full-TTL connects' (to the destination), or the
    // routers' time-exceeded for a SYN trigger.
    let mut rtt: Option<Duration> = None;
    let mut silent_run = 0usize;
    // Consecutive TTLs whose trigger was silent while a router answered its control SYN.
    let mut dropped_run = 0usize;
    for ttl in 1..=max_ttl {
        let (reply, mut router, mut ctl) = if plan.trigger == PathTrigger::Syn {
            ctx.pacer.spend(ttl);
            let sent = Instant::now();
            let s = syn_probe(
                plan.addr,
                ttl,
                syn_wait(rtt, pc.probe_timeout),
                Some(flow.local),
            )
            .await;
            probes += 1;
            if s.reply == HopReply::TimeExceeded {
                rtt = rtt.max(Some(sent.elapsed()));
            }
            (s.reply, s.router, HopReply::Silence)
        } else {
            ctx.pacer.spend(ttl);
            let mut probed = data_probe(plan, &flow, ttl, ctx).await;
            if probed.is_none() && ttl > 1 {
                // The flow's previous connection may still be closing at the server: once
                // more, spaced.
                tokio::time::sleep(RETRY_SPACING).await;
                probed = data_probe(plan, &flow, ttl, ctx).await;
            }
            let Some((reply, connect)) = probed else {
                if ttl == 1 {
                    return unlocated(plan, PathUnlocated::NotRepeatable, t_ms, ms_since(start))
                        .into();
                }
                // The destination stopped accepting the flow: stop here.
                break;
            };
            probes += 2;
            rtt = rtt.max(Some(connect));
            (reply, None, HopReply::Silence)
        };
        let mut reply = reply;
        let wants_router = reply == HopReply::TimeExceeded;
        let drop = plan.action == PathAction::Silence && reply == HopReply::Silence;
        if plan.trigger != PathTrigger::Syn && (wants_router || drop) {
            // Only a SYN that bounds a drop decides the placement: it waits for the routers'
            // budget; one that only names a router is sent at once.
            if drop {
                ctx.pacer.take(ttl).await;
            } else {
                ctx.pacer.spend(ttl);
            }
            let s = syn_probe(
                plan.addr,
                ttl,
                syn_wait(rtt, pc.probe_timeout),
                Some(flow.local),
            )
            .await;
            probes += 1;
            ctl = s.reply;
            router = s.router;
            // Silence where a router answers the control: a drop here, or a router whose
            // time-exceeded for the trigger was rate-limited. Once more, spaced. (Where the
            // destination answers the SYN, no router is there to have been rate-limited.)
            if drop && ctl == HopReply::TimeExceeded {
                if let Some(again) = retry_trigger(plan, &flow, ttl, ctx).await {
                    probes += 2;
                    reply = again;
                }
            }
        } else if plan.trigger != PathTrigger::Syn
            && plan.action != PathAction::Silence
            && reply == HopReply::Silence
        {
            // Silence where the censor answers (its reset, its blockpage, its forged
            // certificate): a silent router, a rate-limited one, or a slow censor. Once more,
            // spaced: the hop is the first TTL with the action.
            if let Some(again) = retry_trigger(plan, &flow, ttl, ctx).await {
                probes += 2;
                reply = again;
            }
        } else if plan.trigger == PathTrigger::Syn && drop {
            // A SYN trigger has no control: its silent TTL is tried once more, spaced.
            tokio::time::sleep(RETRY_SPACING).await;
            ctx.pacer.take(ttl).await;
            let s = syn_probe(
                plan.addr,
                ttl,
                syn_wait(rtt, pc.probe_timeout),
                Some(flow.local),
            )
            .await;
            probes += 1;
            reply = s.reply;
            router = s.router;
        }
        replies.push(reply);
        control.push(ctl);
        routers.push(router);
        if reply == HopReply::Silence && ctl == HopReply::Silence {
            silent_run += 1;
        } else {
            silent_run = 0;
        }
        if reply == HopReply::Silence && ctl == HopReply::TimeExceeded {
            dropped_run += 1;
        } else {
            dropped_run = 0;
        }
        if settled(plan.action, reply, ctl, silent_run, dropped_run) {
            break;
        }
    }
    let obs = observation(
        plan,
        &replies,
        if plan.trigger == PathTrigger::Syn {
            &[]
        } else {
            &control
        },
        &routers,
        pc,
        &ctx.cfg.bogons,
        ctx.own,
        probes,
        t_ms,
        ms_since(start),
    );
    Located { obs, routers }
}

/// How often the DNS localisation reads its socket and error queue.
#[cfg(any(target_os = "linux", target_os = "android"))]
const DNS_POLL: Duration = Duration::from_millis(10);
/// Datagrams (or reported errors) read per poll at most: a flood cannot hold the loop.
#[cfg(any(target_os = "linux", target_os = "android"))]
const MAX_DNS_READS: usize = 256;

/// Localise an injected DNS answer: the site's name queried over UDP, from one socket (one
/// flow), with TTL 1, 2, … `max_ttl`, each query with its own id, towards the site's own
/// address ([`super::analysis::plan`]), which is no resolver. A router's time-exceeded comes
/// back on the error queue with the query it answers, so with its id and its TTL; an answer
/// can only come from something in the path; the destination itself answers port
/// unreachable. All TTLs at once (each paced), then replies for one probe timeout.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
async fn localise_dns(plan: &Plan, _ctx: &ProbeContext<'_>, t_ms: f64, _start: Instant) -> Located {
    unlocated(plan, PathUnlocated::PlatformUnsupported, t_ms, 0.0).into()
}

#[cfg(any(target_os = "linux", target_os = "android"))]
async fn localise_dns(plan: &Plan, ctx: &ProbeContext<'_>, t_ms: f64, start: Instant) -> Located {
    let pc = &ctx.cfg.path;
    let max_ttl = pc.max_ttl.clamp(1, MAX_TTL_LIMIT);
    let name = plan.server_name.as_deref().unwrap_or_default();
    let qtype = if plan.addr.is_ipv6() {
        crate::model::QueryType::AAAA
    } else {
        crate::model::QueryType::A
    };
    let v6 = plan.addr.is_ipv6();
    let not_repeatable = || -> Located {
        unlocated(plan, PathUnlocated::NotRepeatable, t_ms, ms_since(start)).into()
    };
    let local = ctx.cfg.source_address.unwrap_or(if v6 {
        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
    } else {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    });
    // A plain socket, read by polling: the replies are few and the wait is short, and the
    // error queue is read the same way.
    let Ok(sock) = std::net::UdpSocket::bind(SocketAddr::new(local, 0)) else {
        return not_repeatable();
    };
    if sock.set_nonblocking(true).is_err() || sock.connect(plan.addr).is_err() {
        return not_repeatable();
    }
    let mut ids: std::collections::HashMap<u16, u8> = std::collections::HashMap::new();
    let mut probes = 0u32;
    for ttl in 1..=max_ttl {
        let Ok((id, wire)) = crate::checks::dns::build_query(name, qtype) else {
            return not_repeatable();
        };
        if ids.contains_key(&id) {
            // The same id twice would name two TTLs: this TTL stays unasked (silent).
            continue;
        }
        ctx.pacer.spend(ttl);
        if set_ttl_recverr(&sock, v6, ttl).is_err() {
            continue;
        }
        // A send reports (and clears) an ICMP error pending on the socket, the time-exceeded
        // of a lower TTL, instead of sending: try again.
        if !(0..3).any(|_| sock.send(&wire).is_ok()) {
            continue;
        }
        ids.insert(id, ttl);
        probes += 1;
    }
    let n = usize::from(max_ttl);
    let mut replies = vec![HopReply::Silence; n];
    let mut routers: Vec<Option<IpAddr>> = vec![None; n];
    let deadline = tokio::time::Instant::now() + pc.probe_timeout;
    let mut buf = vec![0u8; 4096];
    loop {
        // Answers: from the site's address, which runs no resolver.
        for _ in 0..MAX_DNS_READS {
            match sock.recv(&mut buf) {
                Ok(len) => {
                    let Some(id) = buf.get(..len.min(2)).and_then(|b| b.try_into().ok()) else {
                        continue;
                    };
                    let id = u16::from_be_bytes(id);
                    let Some(ttl) = ids.get(&id) else { continue };
                    if crate::checks::dns::parse_response(&buf[..len], id, name, qtype).is_some() {
                        replies[usize::from(*ttl) - 1] = HopReply::Censor;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                // An ICMP error reported on the socket: read from the error queue below.
                Err(_) => {}
            }
        }
        for _ in 0..MAX_DNS_READS {
            let Some((reply, router, id)) = read_error_queue_payload(&sock) else {
                break;
            };
            let Some(ttl) = id.and_then(|id| ids.get(&id)) else {
                continue;
            };
            let i = usize::from(*ttl) - 1;
            if replies[i] == HopReply::Silence {
                replies[i] = reply;
                routers[i] = router;
            }
        }
        let first_answer = replies.iter().position(|r| *r == HopReply::Censor);
        let settled = match first_answer {
            Some(i) => replies[..i].iter().all(|r| *r != HopReply::Silence),
            None => replies.iter().all(|r| *r != HopReply::Silence),
        };
        if settled || tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(DNS_POLL).await;
    }
    // Past the first answer (or the destination's unreachable) nothing more is told.
    let upto = replies
        .iter()
        .position(|r| matches!(r, HopReply::Censor | HopReply::Unreachable))
        .map_or(n, |i| i + 1);
    replies.truncate(upto);
    routers.truncate(upto);
    let obs = observation(
        plan,
        &replies,
        &[],
        &routers,
        pc,
        &ctx.cfg.bogons,
        ctx.own,
        probes,
        t_ms,
        ms_since(start),
    );
    Located { obs, routers }
}

/// Whether a localisation can stop after this TTL: the censor's action or an answer came
/// back (nothing past it changes the placement), a drop is bounded by the destination that
/// answered the control, or by routers that answered it at two TTLs in a row (`dropped_run`)
/// while the trigger stayed silent, or silence has lasted [`MAX_SILENT_RUN`] TTLs.
///
/// One silent trigger beside a router's answer is not enough: a router that rate-limits its
/// ICMP (Linux's default budget, or a harder one) can answer the control SYN and not the
/// trigger, even after the spaced retry. Stopping there named that router's hop as the
/// censor's (the hop lab's `b_sni_drop` came out "hop 2" behind a hard-limiting r2, the censor
/// being at hop 6); the TTLs past it show the trigger getting through.
fn settled(
    action: PathAction,
    reply: HopReply,
    control: HopReply,
    silent_run: usize,
    dropped_run: usize,
) -> bool {
    if matches!(reply, HopReply::Answered | HopReply::Censor) {
        return true;
    }
    if action != PathAction::Silence {
        return reply != HopReply::TimeExceeded && reply != HopReply::Silence
            || silent_run >= MAX_SILENT_RUN;
    }
    if reply == HopReply::Silence
        && (control == HopReply::Answered || control == HopReply::TimeExceeded && dropped_run >= 2)
    {
        return true;
    }
    silent_run >= MAX_SILENT_RUN
}

#[cfg(all(test, any(target_os = "linux", target_os = "android")))]
mod tests {
    use super::*;
    use HopReply::*;

    /// A drop is settled by the destination answering the control, or by routers answering it
    /// at two TTLs in a row; one silent trigger beside a router's answer may be that router's
    /// rate limit, so the localisation goes on.
    #[test]
    fn one_rate_limited_router_does_not_settle_a_drop() {
        let drop = PathAction::Silence;
        assert!(!settled(drop, Silence, TimeExceeded, 0, 1));
        assert!(settled(drop, Silence, TimeExceeded, 0, 2));
        assert!(settled(drop, Silence, Answered, 0, 0));
        assert!(!settled(drop, TimeExceeded, TimeExceeded, 0, 0));
        assert!(settled(drop, Silence, Silence, MAX_SILENT_RUN, 0));
        // An action that answers settles at once, as before.
        assert!(settled(PathAction::Reset, Censor, TimeExceeded, 0, 0));
    }

    /// The routers' budget: a burst of six at once per TTL, then one a second; packets sent
    /// unpaced overdraw it, and a paced one then waits for the refill. TTLs are apart.
    #[tokio::test(start_paused = true)]
    async fn the_pacer_keeps_to_the_routers_budget() {
        let p = Pacer::default();
        let t0 = tokio::time::Instant::now();
        for _ in 0..6 {
            p.take(3).await;
        }
        assert_eq!(t0.elapsed(), Duration::ZERO);
        p.take(3).await;
        assert_eq!(t0.elapsed(), ICMP_INTERVAL);
        // Another TTL has its own bucket.
        p.take(4).await;
        assert_eq!(t0.elapsed(), ICMP_INTERVAL);
        // Two sent at once overdraw TTL 4's bucket down to 3; TTL 3's is empty: 2 s, not 1.
        p.spend(3);
        p.spend(3);
        let t1 = tokio::time::Instant::now();
        p.take(3).await;
        assert_eq!(t1.elapsed(), ICMP_INTERVAL * 3);
        // However much is sent at once, a paced packet waits a bounded time.
        for _ in 0..100 {
            p.spend(5);
        }
        let t2 = tokio::time::Instant::now();
        p.take(5).await;
        assert!(t2.elapsed() <= ICMP_INTERVAL * 6, "{:?}", t2.elapsed());
    }

    /// The soft ICMP errors an established connection keeps for `SO_ERROR` (found in the hop
    /// lab: on a fast path every time-exceeded for a ClientHello or a request arrived that
    /// way, and the exchange only timed out) name the router's reply; the connection's own
    /// errors are left to the exchange.
    #[test]
    fn soft_errors_are_icmp_replies() {
        let os = std::io::Error::from_raw_os_error;
        assert_eq!(
            soft_error_reply(&os(nix::libc::EHOSTUNREACH)),
            Some(TimeExceeded)
        );
        assert_eq!(
            soft_error_reply(&os(nix::libc::ENETUNREACH)),
            Some(Unreachable)
        );
        for errno in [
            nix::libc::ECONNRESET,
            nix::libc::ECONNREFUSED,
            nix::libc::ETIMEDOUT,
            nix::libc::EPIPE,
        ] {
            assert_eq!(soft_error_reply(&os(errno)), None, "errno {errno}");
        }
    }
}

/// Real sockets on loopback. TTL 1 already reaches 127.0.0.1, so these prove the I/O (SYN
/// probes, the TTL-limited trigger on a full-TTL connection, the reading of replies), not the
/// hop arithmetic: the lab's routers prove that (`tests/tests/lab/`).
#[cfg(all(test, any(target_os = "linux", target_os = "android")))]
mod loopback {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    fn ctx_cfg() -> MeasureConfig {
        let mut cfg = MeasureConfig::default();
        cfg.path.max_ttl = 4;
        cfg.path.probe_timeout = Duration::from_millis(800);
        cfg
    }

    /// A server that reads the first bytes and answers with `reply` (an empty reply: a reset).
    async fn server(reply: &'static [u8]) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = l.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let mut buf = [0u8; 2048];
                    let _ = s.read(&mut buf).await;
                    if reply.is_empty() {
                        let _ = SockRef::from(&s).set_linger(Some(Duration::ZERO));
                    } else {
                        let _ = s.write_all(reply).await;
                        let _ = s.shutdown().await;
                    }
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn syn_probe_connects_and_is_refused() {
        let open = server(b"x").await;
        let r = syn_probe(open, 1, Duration::from_secs(2), None).await;
        assert_eq!(r.reply, HopReply::Answered);
        // A closed port answers with a reset.
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let r = syn_probe(closed, 3, Duration::from_secs(2), None).await;
        assert_eq!(r.reply, HopReply::Reset);
        assert_eq!(r.router, None);
    }

    const PAGE: &[u8] =
        b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\nConnection: close\r\n\r\nblocked!!";

    fn request_plan(addr: SocketAddr, action: PathAction, fingerprint: Option<String>) -> Plan {
        Plan {
            trigger: PathTrigger::Request,
            addr,
            server_name: None,
            url: Some(format!("http://blocked.test:{}/", addr.port())),
            action,
            fingerprint,
            blockpage: None,
        }
    }

    #[tokio::test]
    async fn a_reset_on_the_request_is_placed_at_the_first_hop_on_loopback() {
        let cfg = ctx_cfg();
        let tls = TlsContext::new(&cfg).unwrap();
        let own = OwnAddresses::default();
        let ctx = ProbeContext::new(&cfg, &tls, &own);
        let addr = server(b"").await;
        let o = localise(
            &request_plan(addr, PathAction::Reset, None),
            &ctx,
            Instant::now(),
        )
        .await
        .obs;
        assert_eq!(o.censor_hop, Some(1), "{o:?}");
        assert_eq!(o.hops.len(), 1);
        assert_eq!(o.hops[0].reply, HopReply::Reset);
        // Loopback is a bogon and within the private hops: no address is ever kept.
        assert!(o.hops.iter().all(|h| h.addr.is_none()));
        // The TTLs go in turn and stop at the censor's action: one connect and one trigger.
        assert_eq!((o.max_ttl, o.probes), (1, 2));
    }

    /// Every connection of a localisation comes from one source port (one 5-tuple, one ECMP
    /// path): the flow's port is bound again for each TTL's connection, the previous one
    /// closed with a reset, even while the server holds it open.
    #[tokio::test]
    async fn every_ttl_of_a_localisation_is_one_flow() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let hold = tokio::spawn(async move {
            let mut conns = Vec::new();
            while let Ok((s, peer)) = l.accept().await {
                let _ = tx.send(peer.port());
                conns.push(s);
            }
        });
        let cfg = ctx_cfg();
        let tls = TlsContext::new(&cfg).unwrap();
        let own = OwnAddresses::default();
        let ctx = ProbeContext::new(&cfg, &tls, &own);
        let plan = request_plan(addr, PathAction::Silence, None);
        let flow = Flow::new(addr, None).unwrap();
        for ttl in 1..=3 {
            let (reply, _) = data_probe(&plan, &flow, ttl, &ctx).await.unwrap();
            assert_eq!(reply, HopReply::Silence, "ttl {ttl}");
            let s = syn_probe(addr, ttl, Duration::from_secs(1), Some(flow.local)).await;
            assert_eq!(s.reply, HopReply::Answered, "ttl {ttl}");
        }
        let mut ports = Vec::new();
        while ports.len() < 3 {
            let p = tokio::time::timeout(Duration::from_secs(2), rx.recv()).await;
            ports.push(p.unwrap().unwrap());
        }
        hold.abort();
        assert!(ports.iter().all(|p| *p == flow.local.port()), "{ports:?}");
    }

    #[tokio::test]
    async fn the_blockpage_is_recognised_and_a_real_page_is_not() {
        let cfg = ctx_cfg();
        let tls = TlsContext::new(&cfg).unwrap();
        let own = OwnAddresses::default();
        let ctx = ProbeContext::new(&cfg, &tls, &own);
        let addr = server(PAGE).await;
        let sha = {
            use sha2::Digest;
            hex::encode(sha2::Sha256::digest(b"blocked!!"))
        };
        let o = localise(
            &request_plan(addr, PathAction::Blockpage, Some(sha)),
            &ctx,
            Instant::now(),
        )
        .await
        .obs;
        assert_eq!(o.censor_hop, Some(1), "{o:?}");
        assert_eq!(o.hops[0].reply, HopReply::Censor);
        // Another page than the blockpage got through: no hop is claimed.
        let o = localise(
            &request_plan(addr, PathAction::Blockpage, Some("00".repeat(32))),
            &ctx,
            Instant::now(),
        )
        .await
        .obs;
        assert_eq!(o.censor_hop, None);
        assert_eq!(o.unlocated, Some(PathUnlocated::AnsweredFirst));
    }

    #[tokio::test]
    async fn silence_everywhere_names_no_hop_and_stays_within_its_bound() {
        // A server that accepts and never answers: silence at every TTL, and no ICMP.
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let hold = tokio::spawn(async move {
            let mut conns = Vec::new();
            while let Ok((s, _)) = l.accept().await {
                conns.push(s);
            }
        });
        let cfg = ctx_cfg();
        let tls = TlsContext::new(&cfg).unwrap();
        let own = OwnAddresses::default();
        let ctx = ProbeContext::new(&cfg, &tls, &own);
        let mut plan = request_plan(addr, PathAction::Silence, None);
        plan.trigger = PathTrigger::ClientHello;
        plan.server_name = Some("blocked.test".into());
        let start = Instant::now();
        let o = localise(&plan, &ctx, Instant::now()).await.obs;
        assert!(
            start.elapsed() < cfg.path.per_target(),
            "{:?}",
            start.elapsed()
        );
        assert_eq!(o.censor_hop, None);
        assert_eq!(o.unlocated, Some(PathUnlocated::NoIcmp));
        assert!(o.hops.iter().all(|h| h.reply == HopReply::Silence));
        hold.abort();
    }

    /// A DNS server where the plan says no resolver is: its answer is injected, at hop 1 on
    /// loopback; a silent address names nothing. (TTL 1 already reaches 127.0.0.1; the lab's
    /// routers prove the hop arithmetic.)
    #[tokio::test]
    async fn an_answer_from_the_site_address_is_an_injection() {
        let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = udp.local_addr().unwrap();
        let answering = tokio::spawn(async move {
            let mut buf = [0u8; 512];
            while let Ok((n, peer)) = udp.recv_from(&mut buf).await {
                // The query back as a response (QR set), with an A record 10.10.34.34.
                let mut resp = buf[..n].to_vec();
                resp[2] |= 0x80;
                resp[7] = 1; // ANCOUNT = 1
                resp[10] = 0; // ARCOUNT = 0: the query's EDNS record is not echoed
                resp[11] = 0;
                resp.truncate(12 + question_len(&resp[12..]));
                resp.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 10, 10, 34, 34]);
                let _ = udp.send_to(&resp, peer).await;
            }
        });
        let cfg = ctx_cfg();
        let tls = TlsContext::new(&cfg).unwrap();
        let own = OwnAddresses::default();
        let ctx = ProbeContext::new(&cfg, &tls, &own);
        let plan = |addr| Plan {
            trigger: PathTrigger::Dns,
            addr,
            server_name: Some("blocked.test".into()),
            url: None,
            action: PathAction::InjectedAnswer,
            fingerprint: None,
            blockpage: None,
        };
        let o = localise(&plan(addr), &ctx, Instant::now()).await.obs;
        assert_eq!(o.censor_hop, Some(1), "{o:?}");
        assert_eq!(o.hops[0].reply, HopReply::Censor);
        assert_eq!(
            (o.trigger, o.action),
            (PathTrigger::Dns, PathAction::InjectedAnswer)
        );
        answering.abort();
        // A closed port: the destination's port unreachable, no answer, no hop.
        let closed = {
            let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            s.local_addr().unwrap()
        };
        let start = Instant::now();
        let o = localise(&plan(closed), &ctx, Instant::now()).await.obs;
        assert_eq!(o.censor_hop, None, "{o:?}");
        assert_eq!(o.hops[0].reply, HopReply::Unreachable, "{o:?}");
        assert!(start.elapsed() < cfg.path.probe_timeout * 2);
    }

    /// Over IPv6 the hop limit takes the TTL's place, on the same flow: a reset on the request
    /// and an injected DNS answer, on `[::1]` (skipped, loudly, without IPv6 loopback).
    #[tokio::test]
    async fn ipv6_uses_the_hop_limit() {
        let Ok(l) = TcpListener::bind("[::1]:0").await else {
            eprintln!("no IPv6 loopback: skipped");
            return;
        };
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let mut buf = [0u8; 2048];
                let _ = s.read(&mut buf).await;
                let _ = SockRef::from(&s).set_linger(Some(Duration::ZERO));
            }
        });
        let cfg = ctx_cfg();
        let tls = TlsContext::new(&cfg).unwrap();
        let own = OwnAddresses::default();
        let ctx = ProbeContext::new(&cfg, &tls, &own);
        let mut plan = request_plan(addr, PathAction::Reset, None);
        plan.url = Some(format!("http://[::1]:{}/", addr.port()));
        let o = localise(&plan, &ctx, Instant::now()).await.obs;
        assert_eq!(o.censor_hop, Some(1), "{o:?}");
        assert_eq!(o.hops[0].reply, HopReply::Reset);
    }

    /// The length of the question section at the start of `b` (one question).
    fn question_len(b: &[u8]) -> usize {
        let mut i = 0;
        while i < b.len() && b[i] != 0 {
            i += usize::from(b[i]) + 1;
        }
        i + 1 + 4
    }

    #[tokio::test]
    async fn a_connect_that_fails_is_not_repeatable() {
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let cfg = ctx_cfg();
        let tls = TlsContext::new(&cfg).unwrap();
        let own = OwnAddresses::default();
        let ctx = ProbeContext::new(&cfg, &tls, &own);
        let o = localise(
            &request_plan(closed, PathAction::Reset, None),
            &ctx,
            Instant::now(),
        )
        .await
        .obs;
        assert_eq!(o.unlocated, Some(PathUnlocated::NotRepeatable));
        assert_eq!(o.censor_hop, None);
    }
}
