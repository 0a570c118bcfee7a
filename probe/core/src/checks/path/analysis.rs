//! The pure part of the localisation: what to repeat for a finished measurement ([`plan`]),
//! where the replies place the censor ([`locate`]), and what of the routers may be kept
//! ([`observation`], [`fill_asns`]). No I/O: every rule is table-tested.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::bogon::BogonFilter;
use crate::failure::Failure;
use crate::model::{
    HopRange, HopReply, HttpRole, Measurement, Method, PathAction, PathHop, PathObservation,
    PathTrigger, PathUnlocated, Status, Step,
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
    /// Most localisations per run, each for a group of blocked targets that share an address,
    /// an exchange and a censor action.
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
    /// The time one target's localisation may take: its TTLs go in turn on one flow, and
    /// the connect, the trigger and the control SYN of a TTL each wait at most
    /// `probe_timeout`; routers before the censor answer within a round trip, so most of
    /// this is the few silent TTLs at and past the censor, and a retry's pause.
    pub fn per_target(&self) -> Duration {
        self.probe_timeout * 8 + Duration::from_secs(1)
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

/// What makes blocked targets share one localisation: the same address, the same exchange
/// repeated, and the same censor action (for a blockpage, the same signature or page; for a
/// forged certificate, the same issuer). Targets alike in all of these meet the same censor
/// on the same path, so one localisation speaks for the group.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct GroupKey {
    addr: SocketAddr,
    trigger: PathTrigger,
    action: PathAction,
    signature: Option<String>,
}

impl Plan {
    /// The group this plan's localisation speaks for ([`GroupKey`]).
    pub fn group_key(&self) -> GroupKey {
        let signature = match self.action {
            PathAction::Blockpage => self.blockpage.clone().or_else(|| self.fingerprint.clone()),
            PathAction::ForgedCertificate => self.fingerprint.clone(),
            _ => None,
        };
        GroupKey {
            addr: self.addr,
            trigger: self.trigger,
            action: self.action,
            signature,
        }
    }
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
/// `tls`, `mitm`, `http` (when the blocked exchange is in the record) or `dns` (see
/// [`dns_plan`]).
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
        Method::Dns => dns_plan(m, &domain),
        // App-test methods: a reflector's protocol is not localised (yet).
        Method::Throttle | Method::Protocol | Method::Udp => None,
    }
}

/// A DNS block is repeated towards the site's own address (port 53): not a resolver, so any
/// answer is injected by something in the path, and the first TTL that brings one is the
/// injector's hop. (Towards the network's resolver the query would place the resolver, not
/// the censor.) The address is one the control resolved, or the encrypted control resolver,
/// and public; none, no plan.
fn dns_plan(m: &Measurement, domain: &str) -> Option<Plan> {
    let control = m.control.iter().flat_map(|c| c.dns.iter());
    let encrypted = m
        .dns
        .iter()
        .filter(|d| d.role == crate::model::ResolverRole::Control);
    let addr = control
        .chain(encrypted)
        .filter(|d| d.failure.is_none())
        .flat_map(|d| d.answers.iter())
        .find(|a| !a.bogon)?
        .addr;
    Some(Plan {
        trigger: PathTrigger::Dns,
        addr: SocketAddr::new(addr, 53),
        server_name: Some(domain.to_string()),
        url: None,
        action: PathAction::InjectedAnswer,
        fingerprint: None,
        blockpage: None,
    })
}

/// Whether a reply is the censor's action.
fn is_action(action: PathAction, r: HopReply) -> bool {
    match action {
        PathAction::Reset => r == HopReply::Reset,
        PathAction::Close => r == HopReply::Close,
        PathAction::Silence => false,
        PathAction::Blockpage | PathAction::ForgedCertificate | PathAction::InjectedAnswer => {
            r == HopReply::Censor
        }
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

/// Where a localisation places the censor: an exact hop, an honest range, or why neither.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// Censor at this hop.
    Hop(u8),
    /// Silent routers hide the exact hop: the censor is within this range.
    Range(HopRange),
    /// No hop can be named.
    Unlocated(PathUnlocated),
}

/// Where the replies place the censor, with the control replies: for a `client_hello` or
/// `request` trigger, `control[i]` is what a plain TCP SYN with the same TTL, on the same flow,
/// met (the censor lets it through); empty for a `syn` trigger. Pure.
///
/// An action that answers is placed as [`locate`] places it: the first TTL with the action.
/// A drop is placed against the routers that answered. With `a` the last TTL whose trigger
/// came back time-exceeded (0: none) and every TTL after it silent, the censor is past hop
/// `a`; a SYN with TTL `t > a` that a router answered (time-exceeded), or the destination
/// (answered), shows the path reaches hop `t` while the trigger did not, so the censor is at
/// hop `a + 1` … `t`. Exact when `t = a + 1`; a range otherwise (the routers of the hops
/// between sent nothing, or were rate-limited). Without such a SYN (a `syn` trigger, or
/// silent routers all the way), only "from hop `a + 1`" can be said, and only after
/// [`MIN_SILENT_TTLS`] silent TTLs, so a single silent router is not read as the censor.
pub fn place(action: PathAction, replies: &[HopReply], control: &[HopReply]) -> Placement {
    if action != PathAction::Silence {
        return match locate(action, replies) {
            Ok(n) => Placement::Hop(n),
            Err(why) => Placement::Unlocated(why),
        };
    }
    if replies
        .iter()
        .any(|r| matches!(r, HopReply::Answered | HopReply::Censor))
    {
        return Placement::Unlocated(PathUnlocated::AnsweredFirst);
    }
    let last = replies.iter().rposition(|r| *r != HopReply::Silence);
    if let Some(i) = last {
        if replies[i] != HopReply::TimeExceeded {
            return Placement::Unlocated(PathUnlocated::NoActionSeen);
        }
    }
    // TTLs are 1-based: `a` is the last router before the silence, 0 for none.
    let a = last.map_or(0, |i| i + 1);
    let silent = replies.len() - a;
    if silent == 0 {
        return Placement::Unlocated(PathUnlocated::BeyondMaxTtl);
    }
    let from = ttl_of(a);
    let bound = control
        .iter()
        .enumerate()
        .skip(a)
        .take(silent)
        .find(|(_, c)| matches!(c, HopReply::TimeExceeded | HopReply::Answered))
        .map(|(i, c)| (ttl_of(i), *c));
    match bound {
        // Nothing answered at all: the destination alone says nothing about a censor.
        _ if a == 0 && !control.contains(&HopReply::TimeExceeded) => {
            Placement::Unlocated(PathUnlocated::NoIcmp)
        }
        Some((t, _)) if t == from => Placement::Hop(t),
        Some((t, _)) => Placement::Range(HopRange { from, to: Some(t) }),
        None if silent < MIN_SILENT_TTLS => Placement::Unlocated(PathUnlocated::BeyondMaxTtl),
        None => Placement::Range(HopRange { from, to: None }),
    }
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
    control: &[HopReply],
    routers: &[Option<IpAddr>],
    cfg: &PathConfig,
    bogons: &BogonFilter,
    own: &OwnAddresses,
    probes: u32,
    t_ms: f64,
    duration_ms: f64,
) -> PathObservation {
    let placed = place(plan.action, replies, control);
    let upto = match placed {
        Placement::Hop(n)
        | Placement::Range(HopRange {
            to: Some(n),
            from: _,
        }) => usize::from(n).min(replies.len()),
        _ => replies.len(),
    };
    let (censor_hop, censor_range, unlocated) = match placed {
        Placement::Hop(n) => (Some(n), None, None),
        Placement::Range(r) => (None, Some(r), Some(PathUnlocated::SilentRouters)),
        Placement::Unlocated(why) => (None, None, Some(why)),
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
        censor_hop,
        unlocated,
        hops,
        max_ttl: u8::try_from(replies.len()).unwrap_or(u8::MAX),
        probes,
        t_ms,
        duration_ms,
        shared_with: None,
        censor_range,
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
        shared_with: None,
        censor_range: None,
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

    /// Drops placed against the routers that answered: exact where a router right after the
    /// last one before the silence answers the control SYN, a range where silent routers
    /// hide it, and nothing from the destination alone.
    #[test]
    fn place_table() {
        use PathAction as A;
        use PathUnlocated as U;
        let range = |from, to| Placement::Range(HopRange { from, to });
        type Case = (
            &'static str,
            PathAction,
            Vec<HopReply>,
            Vec<HopReply>,
            Placement,
        );
        let te = TimeExceeded;
        let cases: Vec<Case> = vec![
            (
                "the router after the drop answers the SYN: exact",
                A::Silence,
                vec![te, te, te, Silence],
                vec![te, te, te, te],
                Placement::Hop(4),
            ),
            (
                "a silent router between: a range up to the next that answers",
                A::Silence,
                vec![te, te, Silence, Silence],
                vec![te, te, Silence, te],
                range(3, Some(4)),
            ),
            (
                "two silent routers, then the destination answers the SYN",
                A::Silence,
                vec![te, Silence, Silence, Silence],
                vec![te, Silence, Silence, Answered],
                range(2, Some(4)),
            ),
            (
                "a syn trigger: no control, only a lower bound",
                A::Silence,
                vec![te, te, Silence, Silence],
                vec![],
                range(3, None),
            ),
            (
                "one silent TTL is not enough without a control",
                A::Silence,
                vec![te, te, Silence],
                vec![],
                Placement::Unlocated(U::BeyondMaxTtl),
            ),
            (
                "dropped before the first router, which answers the SYN",
                A::Silence,
                vec![Silence, Silence],
                vec![te, te],
                Placement::Hop(1),
            ),
            (
                "only the destination answers (loopback): nothing to place",
                A::Silence,
                vec![Silence],
                vec![Answered],
                Placement::Unlocated(U::NoIcmp),
            ),
            (
                "silence everywhere",
                A::Silence,
                vec![Silence; 3],
                vec![Silence; 3],
                Placement::Unlocated(U::NoIcmp),
            ),
            (
                "routers to the end: past max_ttl",
                A::Silence,
                vec![te, te],
                vec![te, te],
                Placement::Unlocated(U::BeyondMaxTtl),
            ),
            (
                "got through (another ECMP path): not placed",
                A::Silence,
                vec![te, Silence, Answered],
                vec![te, te, Answered],
                Placement::Unlocated(U::AnsweredFirst),
            ),
            (
                "an answering action ignores the control",
                A::Reset,
                vec![te, Silence, Reset],
                vec![te, Silence, te],
                Placement::Hop(3),
            ),
        ];
        for (name, action, replies, control, want) in cases {
            assert_eq!(place(action, &replies, &control), want, "{name}");
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
            &[],
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
                &[],
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
