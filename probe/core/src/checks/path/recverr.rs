//! The socket side of the localisation: the triggering exchange repeated with a low TTL, and
//! the ICMP errors Linux queues on the socket with `IP_RECVERR` (read with
//! `recvmsg(MSG_ERRQUEUE)`, no raw socket). [`localise`] runs every TTL at once and hands the
//! replies to the pure [`super::analysis`].
//!
//! Only Linux (and Android) have `IP_RECVERR`. Elsewhere (Windows) the socket code compiles
//! out and [`localise`] records `unlocated: platform_unsupported` for every planned block, so
//! a record from such a probe says why it names no hop ([`LOCALISATION_SUPPORTED`]).

use std::net::{IpAddr, SocketAddr};
#[cfg(any(target_os = "linux", target_os = "android"))]
use std::net::{Ipv4Addr, Ipv6Addr};
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
use crate::checks::{http, ms_since, tcp, MeasureConfig};
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

/// Localise one planned block: every TTL at once, the trigger and (for a data trigger) a SYN
/// for the router's address, each bounded by the probe timeout.
pub async fn localise(plan: &Plan, ctx: &ProbeContext<'_>, t0: Instant) -> Located {
    let t_ms = ms_since(t0);
    let start = Instant::now();
    if !LOCALISATION_SUPPORTED {
        return unlocated(plan, PathUnlocated::PlatformUnsupported, t_ms, 0.0).into();
    }
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

#[cfg(all(test, any(target_os = "linux", target_os = "android")))]
mod tests {
    use super::*;
    use HopReply::*;

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
