//! Where the censor sits: the exchange that triggered a block, repeated with increasing TTL.
//!
//! For a target whose verdict is `blocked` with method `tcp`, `tls`, `mitm` or `http`, the
//! probe sends the triggering exchange again with IP TTL 1, 2, … [`PathConfig::max_ttl`], all
//! TTLs at once:
//! - the TCP SYN (IP blocking);
//! - the TLS ClientHello, on a connection made at full TTL whose TTL is lowered just before the
//!   handshake (SNI filtering, interception);
//! - the HTTP request, the same way (`Host:` filtering, blockpages).
//!
//! A packet whose TTL runs out at a router comes back as an ICMP time-exceeded. The sockets
//! set `IP_RECVERR`, so Linux reports it on the socket (`EHOSTUNREACH` at once instead of
//! retransmissions) and queues it, with the router's address, on the socket's error queue,
//! read with `recvmsg(MSG_ERRQUEUE)`: no root, no raw socket, no `CAP_NET_RAW`. (Linux queues
//! the router's address for a connect in progress, not for an established connection: the
//! addresses come from a TCP SYN sent to the same address and port with the same TTL.)
//!
//! [`locate`] is the pure reading of the replies: the first TTL at which the censor's action
//! appears (a reset, its blockpage, its forged certificate), or, for a censor that drops, the
//! TTL after the last router that still answered, followed only by silence. It never changes a
//! verdict; [`plan`] decides, from a finished measurement, what to repeat and what to look for.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use nix::sys::socket::{
    recvmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags, SockaddrStorage,
};
use socket2::{Domain, Protocol, SockRef, Socket, Type};
use tokio::net::TcpStream;

use super::tls::TlsContext;
use super::{http, ms_since, tcp, MeasureConfig};
use crate::bogon::BogonFilter;
use crate::failure::Failure;
use crate::model::{
    HopReply, HttpRole, Measurement, Method, PathAction, PathHop, PathObservation, PathTrigger,
    PathUnlocated, Status, Step,
};
use crate::scrub::OwnAddresses;

/// Highest TTL the configuration accepts: no path on the internet is longer.
pub const MAX_TTL_LIMIT: u8 = 64;

/// Silent TTLs needed after the last router that answered before a drop is placed there: one
/// silent hop could be a router that sends no ICMP.
pub const MIN_SILENT_TTLS: usize = 2;

/// The localisation's settings (`[path]` in the probe's configuration).
#[derive(Clone, Debug, PartialEq)]
pub struct PathConfig {
    /// Localise blocked targets at all (`--no-path` turns it off).
    pub enabled: bool,
    /// Largest TTL probed.
    pub max_ttl: u8,
    /// How long one TTL's exchange waits for an answer (and the full-TTL connect before it).
    pub probe_timeout: Duration,
    /// Most blocked targets localised per run.
    pub max_targets: usize,
    /// Total time the localisations of one run may take.
    pub run_budget: Duration,
    /// Hops whose router address is never kept (the volunteer's own router and line): only
    /// that they answered is recorded.
    pub private_hops: u8,
}

impl Default for PathConfig {
    fn default() -> Self {
        PathConfig {
            enabled: true,
            max_ttl: 16,
            probe_timeout: Duration::from_secs(2),
            max_targets: 20,
            run_budget: Duration::from_secs(60),
            private_hops: 2,
        }
    }
}

impl PathConfig {
    /// The time one target's localisation may take: the full-TTL connect, the triggers and the
    /// SYN probes each wait at most `probe_timeout`, some of them in turn.
    pub fn per_target(&self) -> Duration {
        self.probe_timeout * 3 + Duration::from_millis(500)
    }
}

/// What to repeat, where, and what to look for: decided from the finished measurement.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// The exchange.
    pub trigger: PathTrigger,
    /// Where it goes.
    pub addr: SocketAddr,
    /// The SNI of a ClientHello.
    pub server_name: Option<String>,
    /// The URL of a request.
    pub url: Option<String>,
    /// What the censor did.
    pub action: PathAction,
    /// The blocked exchange's body hash (blockpage), or the issuer of its forged certificate
    /// (an interceptor may forge a new leaf for every connection, from the same CA).
    pub fingerprint: Option<String>,
    /// The blockpage signature it matched, if any.
    pub blockpage: Option<String>,
}

fn action_of(f: &Failure) -> Option<PathAction> {
    match f {
        Failure::ConnectionReset | Failure::ConnectionRefused => Some(PathAction::Reset),
        Failure::Eof => Some(PathAction::Close),
        Failure::GenericTimeout => Some(PathAction::Silence),
        _ => None,
    }
}

/// What to localise for a measurement, or `None`: only blocked targets with method `tcp`,
/// `tls`, `mitm` or `http`, and only when the blocked exchange is in the record. (A DNS block
/// is not localised: the forged answer comes from, or past, the network's resolver, and a
/// query repeated with a low TTL would place the resolver, not the censor.)
pub fn plan(m: &Measurement) -> Option<Plan> {
    if m.verdict.status != Status::Blocked {
        return None;
    }
    let url = url::Url::parse(&m.url).ok()?;
    let port = url.port_or_known_default()?;
    let domain = m.domain.trim_end_matches('.').to_ascii_lowercase();
    let base = |trigger, addr, action| Plan {
        trigger,
        addr,
        server_name: None,
        url: None,
        action,
        fingerprint: None,
        blockpage: None,
    };
    match m.verdict.method? {
        Method::Tcp => m
            .tcp
            .iter()
            .filter(|t| t.addr.port() == port)
            .find_map(|t| {
                Some(base(
                    PathTrigger::Syn,
                    t.addr,
                    action_of(t.failure.as_ref()?)?,
                ))
            }),
        Method::Tls => m
            .tls
            .iter()
            .filter(|t| !t.decoy && t.server_name.eq_ignore_ascii_case(&domain))
            .find_map(|t| {
                let mut p = base(
                    PathTrigger::ClientHello,
                    t.addr,
                    action_of(t.failure.as_ref()?)?,
                );
                p.server_name = Some(t.server_name.clone());
                Some(p)
            }),
        Method::Mitm => m
            .tls
            .iter()
            .filter(|t| !t.decoy && t.failure.is_none() && t.verification_failure.is_some())
            .find_map(|t| {
                let mut p = base(
                    PathTrigger::ClientHello,
                    t.addr,
                    PathAction::ForgedCertificate,
                );
                p.server_name = Some(t.server_name.clone());
                p.fingerprint = Some(t.peer_certificates.first()?.issuer.clone());
                Some(p)
            }),
        Method::Http => m
            .http
            .iter()
            .filter(|h| h.role == HttpRole::Page && h.url.starts_with("http://"))
            .find_map(|h| {
                let addr = h.addr?;
                let mut p = if h.blockpage.is_some() {
                    let mut p = base(PathTrigger::Request, addr, PathAction::Blockpage);
                    p.fingerprint = h.body_sha256.clone();
                    p.blockpage = h.blockpage.clone();
                    p
                } else if h.failed_step == Some(Step::Http) {
                    base(PathTrigger::Request, addr, action_of(h.failure.as_ref()?)?)
                } else {
                    return None;
                };
                p.url = Some(h.url.clone());
                Some(p)
            }),
        Method::Dns | Method::Throttle => None,
    }
}

/// Whether a reply is the censor's action.
fn is_action(action: PathAction, r: HopReply) -> bool {
    match action {
        PathAction::Reset => r == HopReply::Reset,
        PathAction::Close => r == HopReply::Close,
        PathAction::Silence => false,
        PathAction::Blockpage | PathAction::ForgedCertificate => r == HopReply::Censor,
    }
}

/// The censor's hop from the replies to TTL 1, 2, … (`replies[0]` is TTL 1), or why there is
/// none. Pure.
///
/// - An action that answers (reset, close, blockpage, forged certificate): the first TTL whose
///   reply is that action, when nothing got through at a lower TTL.
/// - Silence (a drop): the TTL after the last one that answered with a time-exceeded, when at
///   least [`MIN_SILENT_TTLS`] silent TTLs follow it and nothing else does.
pub fn locate(action: PathAction, replies: &[HopReply]) -> Result<u8, PathUnlocated> {
    if action != PathAction::Silence {
        for (i, r) in replies.iter().enumerate() {
            if is_action(action, *r) {
                return Ok(ttl_of(i));
            }
            if matches!(r, HopReply::Answered | HopReply::Censor) {
                return Err(PathUnlocated::AnsweredFirst);
            }
        }
        return Err(
            if replies.last().is_some_and(|r| *r == HopReply::TimeExceeded) {
                PathUnlocated::BeyondMaxTtl
            } else {
                PathUnlocated::NoActionSeen
            },
        );
    }
    // A drop lets nothing through: an answer at any TTL means this path was not blocked.
    if replies
        .iter()
        .any(|r| matches!(r, HopReply::Answered | HopReply::Censor))
    {
        return Err(PathUnlocated::AnsweredFirst);
    }
    let Some(last) = replies.iter().rposition(|r| *r != HopReply::Silence) else {
        return Err(PathUnlocated::NoIcmp);
    };
    if replies[last] != HopReply::TimeExceeded {
        return Err(PathUnlocated::NoActionSeen);
    }
    if replies.len() - (last + 1) < MIN_SILENT_TTLS {
        return Err(PathUnlocated::BeyondMaxTtl);
    }
    Ok(ttl_of(last + 1))
}

fn ttl_of(index: usize) -> u8 {
    u8::try_from(index + 1).unwrap_or(u8::MAX)
}

/// Whether a router's address may be kept in the record: public (not a bogon, with lab ranges
/// as configured), not the probe's own, and past the private hops.
pub fn keep_router_addr(
    ttl: u8,
    addr: IpAddr,
    private_hops: u8,
    bogons: &BogonFilter,
    own: &OwnAddresses,
) -> bool {
    ttl > private_hops && public_router(addr, bogons, own)
}

/// Whether a router's address is public: not a bogon (with lab ranges as configured) and not
/// the probe's own. Only such addresses are kept (past the private hops) or have a network to
/// ask the collector for; the others are inside the volunteer's own network.
pub fn public_router(addr: IpAddr, bogons: &BogonFilter, own: &OwnAddresses) -> bool {
    !bogons.is_bogon(addr) && !own.contains(&addr)
}

/// The observation from the replies and the routers' addresses (both indexed by TTL - 1),
/// with the privacy rules applied. Pure.
#[allow(clippy::too_many_arguments)]
pub fn observation(
    plan: &Plan,
    replies: &[HopReply],
    routers: &[Option<IpAddr>],
    cfg: &PathConfig,
    bogons: &BogonFilter,
    own: &OwnAddresses,
    probes: u32,
    t_ms: f64,
    duration_ms: f64,
) -> PathObservation {
    let located = locate(plan.action, replies);
    let upto = match located {
        Ok(n) => usize::from(n).min(replies.len()),
        Err(_) => replies.len(),
    };
    let hops = replies
        .iter()
        .take(upto)
        .enumerate()
        .map(|(i, reply)| {
            let ttl = ttl_of(i);
            let addr = routers
                .get(i)
                .copied()
                .flatten()
                .filter(|a| keep_router_addr(ttl, *a, cfg.private_hops, bogons, own));
            PathHop {
                ttl,
                reply: *reply,
                addr,
                asn: None,
            }
        })
        .collect();
    PathObservation {
        trigger: plan.trigger,
        addr: plan.addr,
        action: plan.action,
        censor_hop: located.ok(),
        unlocated: located.err(),
        hops,
        max_ttl: u8::try_from(replies.len()).unwrap_or(u8::MAX),
        probes,
        t_ms,
        duration_ms,
    }
}

/// An observation that names no hop, for a localisation that could not run or finish.
pub fn unlocated(plan: &Plan, why: PathUnlocated, t_ms: f64, duration_ms: f64) -> PathObservation {
    PathObservation {
        trigger: plan.trigger,
        addr: plan.addr,
        action: plan.action,
        censor_hop: None,
        unlocated: Some(why),
        hops: vec![],
        max_ttl: 0,
        probes: 0,
        t_ms,
        duration_ms,
    }
}

// ---------------------------------------------------------------------------------------------
// I/O.

/// What a SYN sent with a given TTL met, and the router that answered with an ICMP error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SynReply {
    /// The reply.
    pub reply: HopReply,
    /// The ICMP sender, from the socket's error queue.
    pub router: Option<IpAddr>,
}

fn new_socket(addr: SocketAddr, source: Option<IpAddr>) -> std::io::Result<Socket> {
    let domain = match addr {
        SocketAddr::V4(_) => Domain::IPV4,
        SocketAddr::V6(_) => Domain::IPV6,
    };
    let sock = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
    sock.set_nonblocking(true)?;
    if let Some(ip) = source {
        sock.bind(&SocketAddr::new(ip, 0).into())?;
    }
    Ok(sock)
}

/// Set the TTL (hop limit) and ask for ICMP errors on the socket.
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

/// The first ICMP error queued on the socket: (its reply kind, the sender).
fn read_error_queue<S: AsRawFd>(sock: &S) -> Option<(HopReply, Option<IpAddr>)> {
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
                return Some((reply, router));
            }
            ControlMessageOwned::Ipv6RecvErr(ee, from) => {
                let router = from.map(|sin| IpAddr::V6(Ipv6Addr::from(sin.sin6_addr.s6_addr)));
                // ICMPv6 type 3: time exceeded.
                let reply = if ee.ee_origin == nix::libc::SO_EE_ORIGIN_ICMP6 && ee.ee_type == 3 {
                    HopReply::TimeExceeded
                } else {
                    HopReply::Unreachable
                };
                return Some((reply, router));
            }
            _ => {}
        }
    }
    None
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
/// ICMP error. A connection that completes is closed at once.
pub async fn syn_probe(
    addr: SocketAddr,
    ttl: u8,
    wait: Duration,
    source: Option<IpAddr>,
) -> SynReply {
    let plain = |reply| SynReply {
        reply,
        router: None,
    };
    let sock = match new_socket(addr, source) {
        Ok(s) => s,
        Err(_) => return plain(HopReply::Error),
    };
    if set_ttl_recverr(&sock, addr.is_ipv6(), ttl).is_err() {
        return plain(HopReply::Error);
    }
    // The duplicate keeps the socket's error queue readable after tokio's connect has failed
    // and closed its own descriptor.
    let Ok(dup) = sock.try_clone() else {
        return plain(HopReply::Error);
    };
    let sock = tokio::net::TcpSocket::from_std_stream(std::net::TcpStream::from(sock));
    match tokio::time::timeout(wait, sock.connect(addr)).await {
        Err(_) => plain(HopReply::Silence),
        Ok(Ok(_stream)) => plain(HopReply::Answered),
        Ok(Err(e)) => match read_error_queue(&dup) {
            Some((reply, router)) => SynReply { reply, router },
            None => plain(reply_of_io(&e)),
        },
    }
}

/// A connection at full TTL, then the trigger sent with `ttl`: what came back.
async fn data_probe(plan: &Plan, ttl: u8, ctx: &ProbeContext<'_>) -> Option<HopReply> {
    let connected = tokio::time::timeout(
        ctx.cfg.path.probe_timeout,
        tcp::connect_socket(plan.addr, ctx.cfg.source_address),
    )
    .await;
    let stream: TcpStream = match connected {
        Ok(Ok(s)) => s,
        // The exchange cannot be repeated at all.
        _ => return None,
    };
    if set_ttl_recverr(&stream, plan.addr.is_ipv6(), ttl).is_err() {
        return Some(HopReply::Error);
    }
    // The router's time-exceeded for the trigger reaches an established connection as a
    // *soft* error when it arrives while the sending call still holds the socket, as it does
    // from a near router (every time in the lab's namespaces): the connection then
    // keeps retransmitting and the exchange would only time out, as if the censor had
    // dropped it. Linux keeps that error for SO_ERROR, so it is watched alongside.
    let Ok(watch) = SockRef::from(&stream).try_clone() else {
        return Some(HopReply::Error);
    };
    let t0 = Instant::now();
    let exchange = async move {
        match plan.trigger {
            PathTrigger::Syn => HopReply::Error,
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
    Some(tokio::select! {
        reply = exchange => reply,
        reply = soft_icmp_error(&watch) => reply,
    })
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
        }
    }
}

/// A localisation's result: the observation (privacy rules applied), and the routers' own
/// addresses by TTL - 1, unscrubbed, kept in memory only to ask the collector their networks
/// ([`fill_asns`]).
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

/// Give each recorded hop its network. A public router ([`public_router`]) gets what the
/// collector answered for it (`known`); a router inside the volunteer's own network
/// (a private, CGNAT or own address, whose address is never kept) gets the probe's network,
/// as long as no public router of another network, or of an unknown one, came before it:
/// until then the path has not shown that it left the volunteer's ISP. So a censor at the
/// ISP's own hops is named by the ISP's ASN although their addresses stay on the machine.
/// Pure.
pub fn fill_asns(
    obs: &mut PathObservation,
    routers: &[Option<IpAddr>],
    bogons: &BogonFilter,
    own: &OwnAddresses,
    known: &HashMap<IpAddr, u32>,
    probe_asn: Option<u32>,
) {
    let mut left_home = false;
    for hop in &mut obs.hops {
        let Some(addr) = routers.get(usize::from(hop.ttl) - 1).copied().flatten() else {
            continue;
        };
        if public_router(addr, bogons, own) {
            hop.asn = known.get(&addr).copied();
            if hop.asn.is_none() || hop.asn != probe_asn {
                left_home = true;
            }
        } else if !left_home {
            hop.asn = probe_asn;
        }
    }
}

/// Localise one planned block: every TTL at once, the trigger and (for a data trigger) a SYN
/// for the router's address, each bounded by the probe timeout.
pub async fn localise(plan: &Plan, ctx: &ProbeContext<'_>, t0: Instant) -> Located {
    let t_ms = ms_since(t0);
    let start = Instant::now();
    let pc = &ctx.cfg.path;
    let max_ttl = pc.max_ttl.clamp(1, MAX_TTL_LIMIT);
    let per_ttl = (1..=max_ttl).map(|ttl| async move {
        let syn = syn_probe(plan.addr, ttl, pc.probe_timeout, ctx.cfg.source_address);
        if plan.trigger == PathTrigger::Syn {
            let s = syn.await;
            return (Some(s.reply), s.router, 1u32);
        }
        let (s, data) = tokio::join!(syn, data_probe(plan, ttl, ctx));
        (data, s.router, 2)
    });
    let results = futures::future::join_all(per_ttl).await;
    let probes = results.iter().map(|(_, _, n)| n).sum();
    if results.iter().all(|(r, _, _)| r.is_none()) {
        return unlocated(plan, PathUnlocated::NotRepeatable, t_ms, ms_since(start)).into();
    }
    let replies: Vec<HopReply> = results
        .iter()
        .map(|(r, _, _)| r.unwrap_or(HopReply::Error))
        .collect();
    let routers: Vec<Option<IpAddr>> = results.iter().map(|(_, a, _)| *a).collect();
    let obs = observation(
        plan,
        &replies,
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

#[cfg(test)]
mod tests {
    use super::*;
    use HopReply::*;

    #[test]
    fn locate_table() {
        use PathAction as A;
        use PathUnlocated as U;
        type Case = (
            &'static str,
            PathAction,
            Vec<HopReply>,
            Result<u8, PathUnlocated>,
        );
        let cases: Vec<Case> = vec![
            (
                "reset at 3",
                A::Reset,
                vec![TimeExceeded, TimeExceeded, Reset, Reset, Reset],
                Ok(3),
            ),
            (
                "reset at 1 (the first router)",
                A::Reset,
                vec![Reset, Reset, Reset],
                Ok(1),
            ),
            (
                "a silent router before the reset",
                A::Reset,
                vec![TimeExceeded, Silence, TimeExceeded, Reset],
                Ok(4),
            ),
            (
                "answered before any reset",
                A::Reset,
                vec![TimeExceeded, Answered, Reset],
                Err(U::AnsweredFirst),
            ),
            (
                "routers all the way",
                A::Reset,
                vec![TimeExceeded; 6],
                Err(U::BeyondMaxTtl),
            ),
            (
                "reset never seen",
                A::Reset,
                vec![TimeExceeded, Silence, Silence],
                Err(U::NoActionSeen),
            ),
            (
                "blockpage at 2",
                A::Blockpage,
                vec![TimeExceeded, Censor, Censor],
                Ok(2),
            ),
            (
                "the real page first",
                A::Blockpage,
                vec![TimeExceeded, Answered, Censor],
                Err(U::AnsweredFirst),
            ),
            (
                "forged certificate at 4",
                A::ForgedCertificate,
                vec![TimeExceeded, TimeExceeded, TimeExceeded, Censor, Censor],
                Ok(4),
            ),
            ("close at 2", A::Close, vec![TimeExceeded, Close], Ok(2)),
            (
                "drop after hop 2",
                A::Silence,
                vec![TimeExceeded, TimeExceeded, Silence, Silence, Silence],
                Ok(3),
            ),
            (
                "drop with a silent router before it",
                A::Silence,
                vec![TimeExceeded, Silence, TimeExceeded, Silence, Silence],
                Ok(4),
            ),
            (
                "one silent TTL is not enough",
                A::Silence,
                vec![TimeExceeded, TimeExceeded, TimeExceeded, Silence],
                Err(U::BeyondMaxTtl),
            ),
            (
                "no ICMP at all",
                A::Silence,
                vec![Silence; 5],
                Err(U::NoIcmp),
            ),
            (
                "the drop did not happen: it got through",
                A::Silence,
                vec![TimeExceeded, TimeExceeded, Answered, Answered],
                Err(U::AnsweredFirst),
            ),
            (
                "a reset where a drop was expected",
                A::Silence,
                vec![TimeExceeded, Reset, Silence, Silence],
                Err(U::NoActionSeen),
            ),
            ("nothing probed", A::Reset, vec![], Err(U::NoActionSeen)),
            ("nothing probed (drop)", A::Silence, vec![], Err(U::NoIcmp)),
        ];
        for (name, action, replies, want) in cases {
            assert_eq!(locate(action, &replies), want, "{name}");
        }
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

    fn plan_for(action: PathAction) -> Plan {
        Plan {
            trigger: PathTrigger::ClientHello,
            addr: "198.51.100.7:443".parse().unwrap(),
            server_name: Some("blocked.example".into()),
            url: None,
            action,
            fingerprint: None,
            blockpage: None,
        }
    }

    #[test]
    fn privacy_of_router_addresses() {
        let own = OwnAddresses::default();
        own.add("203.0.113.50".parse().unwrap());
        let cfg = PathConfig::default();
        let bogons = BogonFilter::default();
        let routers: Vec<Option<IpAddr>> = vec![
            Some("192.168.1.1".parse().unwrap()),  // home router: private
            Some("95.59.0.1".parse().unwrap()),    // the line: within private_hops
            Some("10.0.0.1".parse().unwrap()),     // the ISP's private core
            Some("203.0.113.50".parse().unwrap()), // the probe's own address
            Some("95.56.0.1".parse().unwrap()),    // a public router past the private hops
            None,
        ];
        let replies = vec![
            TimeExceeded,
            TimeExceeded,
            TimeExceeded,
            TimeExceeded,
            TimeExceeded,
            Reset,
        ];
        let o = observation(
            &plan_for(PathAction::Reset),
            &replies,
            &routers,
            &cfg,
            &bogons,
            &own,
            12,
            1.0,
            2.0,
        );
        assert_eq!(o.censor_hop, Some(6));
        assert_eq!(o.unlocated, None);
        let kept: Vec<Option<IpAddr>> = o.hops.iter().map(|h| h.addr).collect();
        assert_eq!(
            kept,
            vec![
                None,
                None,
                None,
                None,
                Some("95.56.0.1".parse().unwrap()),
                None
            ]
        );
        assert_eq!(o.hops.len(), 6);
        assert!(o.hops.iter().zip(1..).all(|(h, t)| h.ttl == t));
        // The same public address within the private hops is dropped too.
        assert!(!keep_router_addr(
            2,
            "95.56.0.1".parse().unwrap(),
            2,
            &bogons,
            &own
        ));
        // A lab range declared public is kept.
        let lab = BogonFilter::new(vec!["198.18.0.0/15".parse().unwrap()]);
        assert!(keep_router_addr(
            3,
            "198.18.1.1".parse().unwrap(),
            2,
            &lab,
            &own
        ));
        assert!(!keep_router_addr(
            3,
            "198.18.1.1".parse().unwrap(),
            2,
            &bogons,
            &own
        ));
    }

    #[test]
    fn fill_asns_table() {
        let b = BogonFilter::default();
        let own = OwnAddresses::default();
        let ip = |s: &str| -> Option<IpAddr> { Some(s.parse().unwrap()) };
        let known: HashMap<IpAddr, u32> = [
            ("95.56.0.1", 9198),
            ("95.56.0.9", 9198),
            ("5.250.128.1", 21299),
        ]
        .into_iter()
        .map(|(a, n)| (a.parse().unwrap(), n))
        .collect();
        type Case = (
            &'static str,
            Vec<Option<IpAddr>>,
            Option<u32>,
            Vec<Option<u32>>,
        );
        let cases: Vec<Case> = vec![
            (
                "home router, CGNAT, the ISP's routers: all the ISP's",
                vec![
                    ip("192.168.1.1"),
                    ip("100.64.0.1"),
                    ip("95.56.0.1"),
                    ip("95.56.0.9"),
                ],
                Some(9198),
                vec![Some(9198), Some(9198), Some(9198), Some(9198)],
            ),
            (
                "a private hop past another network is not the probe's",
                vec![ip("192.168.1.1"), ip("5.250.128.1"), ip("10.0.0.1")],
                Some(9198),
                vec![Some(9198), Some(21299), None],
            ),
            (
                "a public router of unknown network ends the home stretch too",
                vec![ip("10.0.0.1"), ip("8.8.4.4"), ip("10.0.0.2")],
                Some(9198),
                vec![Some(9198), None, None],
            ),
            (
                "the probe's network unknown: private hops stay unknown",
                vec![ip("10.0.0.1"), ip("95.56.0.1")],
                None,
                vec![None, Some(9198)],
            ),
            (
                "no address seen (silence): nothing",
                vec![None, ip("95.56.0.1")],
                Some(9198),
                vec![None, Some(9198)],
            ),
        ];
        for (what, routers, probe_asn, want) in cases {
            let replies = vec![TimeExceeded; routers.len()];
            let mut o = observation(
                &plan_for(PathAction::Reset),
                &replies,
                &routers,
                &PathConfig::default(),
                &b,
                &own,
                1,
                0.0,
                0.0,
            );
            fill_asns(&mut o, &routers, &b, &own, &known, probe_asn);
            let got: Vec<Option<u32>> = o.hops.iter().map(|h| h.asn).collect();
            assert_eq!(got, want, "{what}");
            // The addresses' privacy rules are untouched: none within the private hops.
            assert!(o.hops.iter().take(2).all(|h| h.addr.is_none()), "{what}");
        }
    }

    #[test]
    fn hops_stop_at_the_censor_and_unlocated_keeps_all() {
        let own = OwnAddresses::default();
        let cfg = PathConfig::default();
        let b = BogonFilter::default();
        let replies = vec![TimeExceeded, Reset, Reset, Reset];
        let o = observation(
            &plan_for(PathAction::Reset),
            &replies,
            &[],
            &cfg,
            &b,
            &own,
            4,
            0.0,
            0.0,
        );
        assert_eq!((o.censor_hop, o.hops.len(), o.max_ttl), (Some(2), 2, 4));
        let replies = vec![TimeExceeded, TimeExceeded, TimeExceeded];
        let o = observation(
            &plan_for(PathAction::Reset),
            &replies,
            &[],
            &cfg,
            &b,
            &own,
            3,
            0.0,
            0.0,
        );
        assert_eq!(o.censor_hop, None);
        assert_eq!(o.unlocated, Some(PathUnlocated::BeyondMaxTtl));
        assert_eq!(o.hops.len(), 3);
    }
}

/// Real sockets on loopback. TTL 1 already reaches 127.0.0.1, so these prove the I/O (SYN
/// probes, the TTL-limited trigger on a full-TTL connection, the reading of replies), not the
/// hop arithmetic: the lab's routers prove that (`tests/tests/lab.rs`).
#[cfg(test)]
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
        assert_eq!((o.max_ttl, o.probes), (4, 8));
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
