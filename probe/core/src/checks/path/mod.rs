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
//!
//! Two rooms: [`analysis`] is the pure part (the [`plan`], the reading of the replies, the
//! privacy rules for router addresses), table-tested without a network; [`recverr`] is the
//! socket code (TTL-limited exchanges, the `IP_RECVERR` error queue), tested on loopback in its
//! own tests and through real routers in the lab.

pub mod analysis;
pub mod recverr;

pub use analysis::{
    fill_asns, keep_router_addr, locate, observation, place, plan, public_router, unlocated,
    GroupKey, PathConfig, Placement, Plan, MAX_TTL_LIMIT, MIN_SILENT_TTLS,
};
pub use recverr::{localise, syn_probe, Located, ProbeContext, SynReply, LOCALISATION_SUPPORTED};
