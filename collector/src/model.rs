//! The collector's domain types: what the store keeps and returns, what the aggregation
//! reasons about, and what the read model serves. No I/O and no rules here: the store
//! ([`crate::store`]), the event rule ([`crate::aggregate`]) and the read model
//! ([`crate::readmodel`]) all build on these.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use witness_core::error::UnknownValue;
use witness_core::model::{Method, Status};

/// One measurement of one site on one network, reduced to what the rule needs.
#[derive(Clone, Debug, PartialEq)]
pub struct Obs {
    /// Measurement id.
    pub id: String,
    /// Opaque probe id (never leaves the collector).
    pub probe: String,
    /// The measurement's own `started_at`.
    pub at: DateTime<Utc>,
    /// Verdict status.
    pub status: Status,
    /// Verdict method (only with `blocked`).
    pub method: Option<Method>,
    /// The hop at which the probe located the censor (`path.censor_hop`), with `blocked`.
    pub censor_hop: Option<u8>,
    /// The censor's autonomous system, when the probe knew it (`path`'s hop ASN).
    pub censor_asn: Option<u32>,
}

/// A run of measurements of one probe on one network, all offline or all not: the input of
/// the shutdown rule (the store compresses rows to these, one per probe, minute and flag).
#[derive(Clone, Debug, PartialEq)]
pub struct Presence {
    /// Opaque probe id.
    pub probe: String,
    /// Earliest `started_at` in the run.
    pub first_at: DateTime<Utc>,
    /// Latest `started_at` in the run.
    pub last_at: DateTime<Utc>,
    /// Whether these measurements said `offline`.
    pub offline: bool,
    /// Measurements in the run.
    pub count: u64,
    /// One measurement id of the run, as a sample for the evidence.
    pub sample_id: String,
}

macro_rules! str_enum {
    ($ty:ident { $($v:ident => $s:literal),* $(,)? }) => {
        impl $ty {
            /// The stable name, as in JSON and metric labels.
            pub fn as_str(&self) -> &'static str {
                match self { $($ty::$v => $s),* }
            }
            /// Every value.
            pub const ALL: &'static [$ty] = &[$($ty::$v),*];
        }
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result { f.write_str(self.as_str()) }
        }
        impl FromStr for $ty {
            type Err = UnknownValue;
            fn from_str(s: &str) -> Result<Self, UnknownValue> {
                match s {
                    $($s => Ok($ty::$v),)*
                    other => Err(UnknownValue {
                        value: other.to_string(),
                        expected: [$($s),*].join(", "),
                    }),
                }
            }
        }
    };
}

/// The kind of an event: a span of time with a start and, once over, an end.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A site became blocked on a network with a method (ends with an unblock).
    NewBlock,
    /// A network lost connectivity (ends when probes come back).
    Shutdown,
    /// The place of a block moved: the site is still blocked on the network, but the probes
    /// now agree on another censor hop or ASN. A moment, not a span: stored already ended
    /// (`ended_at` = `started_at`).
    BlockMoved,
}

str_enum!(EventKind {
    NewBlock => "new_block",
    Shutdown => "shutdown",
    BlockMoved => "block_moved",
});

/// A change of state: the opening or the closing of an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transition {
    /// A `new_block` event opened.
    NewBlock,
    /// A `new_block` event closed.
    Unblock,
    /// A `shutdown` event opened.
    Shutdown,
    /// A `shutdown` event closed.
    ShutdownEnd,
    /// A `block_moved` event (it has no separate end).
    BlockMoved,
}

str_enum!(Transition {
    NewBlock => "new_block",
    Unblock => "unblock",
    Shutdown => "shutdown",
    ShutdownEnd => "shutdown_end",
    BlockMoved => "block_moved",
});

impl Transition {
    /// The transition that opens (`true`) or closes (`false`) an event of `kind`.
    pub fn of(kind: EventKind, opening: bool) -> Transition {
        match (kind, opening) {
            (EventKind::NewBlock, true) => Transition::NewBlock,
            (EventKind::NewBlock, false) => Transition::Unblock,
            (EventKind::Shutdown, true) => Transition::Shutdown,
            (EventKind::Shutdown, false) => Transition::ShutdownEnd,
            (EventKind::BlockMoved, _) => Transition::BlockMoved,
        }
    }
}

/// Why an event opened or closed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Evidence {
    /// Distinct probes whose latest measurements support the decision.
    pub probes: usize,
    /// Probes with a relevant latest measurement in the window (the denominator of `share`).
    pub probes_considered: usize,
    /// Measurements in the supporting runs.
    pub measurements: u64,
    /// The blocking method (`None` for shutdowns).
    pub method: Option<Method>,
    /// `probes / probes_considered`.
    pub share: f64,
    /// `probes` when enough probes agreed, `single_probe` when the network has one probe and
    /// enough of its consecutive measurements agreed.
    pub rule: String,
    /// Some of the measurement ids behind the decision.
    pub sample_ids: Vec<String>,
    /// `block_moved`: where the probes now agree the censor sits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub censor: Option<CensorPlace>,
    /// `block_moved`: where they agreed it sat before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_censor: Option<CensorPlace>,
}

/// Where on the path a block happens, as hops from the probe and, when known, the censor's
/// autonomous system (from the probes' `path` observations).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CensorPlace {
    /// Hops from the probe (the TTL at which the censor's action appears).
    pub hop: u8,
    /// The censor's autonomous system, when known.
    pub asn: Option<u32>,
}

impl fmt::Display for CensorPlace {
    /// `hop 3, AS9198`, or `hop 3` without an ASN.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.asn {
            Some(a) => write!(f, "hop {}, AS{a}", self.hop),
            None => write!(f, "hop {}", self.hop),
        }
    }
}

/// Located blocked probes of one site on one network that agree on one censor place (what the
/// store returns from the read model for the censor's place).
#[derive(Clone, Debug, PartialEq)]
pub struct PlaceGroup {
    /// Site.
    pub domain: String,
    /// Network.
    pub asn: u32,
    /// The place these probes' latest verdicts name.
    pub place: CensorPlace,
    /// Probes.
    pub probes: u64,
    /// The longest run of consecutive latest verdicts of one of these probes naming this place
    /// (what the single-probe rule counts).
    pub run: u64,
}

/// Latest-per-probe verdicts of one site on one network, grouped by status and method (what the
/// store returns for the status view and the blocked-ratio gauge).
#[derive(Clone, Debug, PartialEq)]
pub struct LatestGroup {
    /// Site.
    pub domain: String,
    /// Network.
    pub asn: u32,
    /// Country claimed by the probes.
    pub country: Option<String>,
    /// Citizen Lab category.
    pub category: Option<String>,
    /// Status of these probes' latest measurement.
    pub status: Status,
    /// Method, with `blocked`.
    pub method: Option<Method>,
    /// Probes in this group.
    pub probes: u64,
    /// Latest `started_at` in this group.
    pub last_measured: DateTime<Utc>,
}

/// Current state of one site on one network.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SiteStatus {
    /// Site.
    pub domain: String,
    /// Network.
    pub asn: u32,
    /// Country claimed by the probes.
    pub country: Option<String>,
    /// Citizen Lab category.
    pub category: Option<String>,
    /// `blocked` when at least `min_share` of the probes with a conclusive latest verdict see it
    /// blocked, else `accessible`; `down`/`inconclusive` when no probe has a conclusive verdict.
    pub status: Status,
    /// The most common blocking method, with `blocked`.
    pub method: Option<Method>,
    /// Probes with a latest measurement in the window.
    pub probes: u64,
    /// Probes whose latest verdict is `blocked` (any method).
    pub blocked_probes: u64,
    /// Probes whose latest verdict is `accessible`.
    pub accessible_probes: u64,
    /// `blocked_probes / (blocked_probes + accessible_probes)`; `None` with no conclusive probe.
    pub blocked_share: Option<f64>,
    /// Blocked probes per method.
    pub methods: BTreeMap<Method, u64>,
    /// Latest measurement time.
    pub last_measured: DateTime<Utc>,
    /// With `blocked`: the censor's hop (hops from the probe) the located blocked probes agree
    /// on, by the rule of the events (see [`crate::aggregate::agreed_place`]); else `None`.
    pub censor_hop: Option<u8>,
    /// The censor's autonomous system at that hop, when known.
    pub censor_asn: Option<u32>,
    /// Probes that agree on that place (0 without one).
    pub hop_agreeing: u64,
}
