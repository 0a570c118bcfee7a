//! Per-record validation of uploads: pure, so every rejection reason is table-tested.
//!
//! Each record of a batch is parsed on its own as a [`Measurement`], so one bad record does not
//! fail the batch. A rejection carries a reason from a small closed set (a metric label) and a
//! human-readable detail (returned to the probe, never logged with anything identifying).

use std::fmt;
use std::net::IpAddr;

use chrono::{DateTime, TimeDelta, Utc};
use serde::de::{DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use witness_core::model::{Measurement, PathObservation, Status, SCHEMA_VERSION};

/// Why a record was refused. Closed set: these names are the `reason` label of
/// `witness_records_rejected_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// Not a valid measurement (JSON or schema error).
    Malformed,
    /// `schema_version` is not the one this collector speaks.
    SchemaVersion,
    /// The record or one of its fields is too large.
    TooLarge,
    /// `started_at` is in the future beyond the allowed clock skew.
    Future,
    /// `started_at` is older than the accepted age.
    TooOld,
    /// Fields contradict each other (URL vs domain, verdict vs connectivity).
    Inconsistent,
    /// A field has an impossible value (country code, ASN, category).
    InvalidField,
    /// The record holds the address it was uploaded from, in some encoding: the probe failed
    /// to scrub its own address (see `docs/security.md`). Refused, never stored.
    ProbeAddress,
}

impl RejectReason {
    /// Every reason, for pre-registering metric series.
    pub const ALL: &'static [RejectReason] = &[
        RejectReason::Malformed,
        RejectReason::SchemaVersion,
        RejectReason::TooLarge,
        RejectReason::Future,
        RejectReason::TooOld,
        RejectReason::Inconsistent,
        RejectReason::InvalidField,
        RejectReason::ProbeAddress,
    ];

    /// Stable name.
    pub fn as_str(&self) -> &'static str {
        match self {
            RejectReason::Malformed => "malformed",
            RejectReason::SchemaVersion => "schema_version",
            RejectReason::TooLarge => "too_large",
            RejectReason::Future => "future",
            RejectReason::TooOld => "too_old",
            RejectReason::Inconsistent => "inconsistent",
            RejectReason::InvalidField => "invalid_field",
            RejectReason::ProbeAddress => "probe_address",
        }
    }
}

/// A refused record: the reason and what exactly was wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// Closed-set reason.
    pub reason: RejectReason,
    /// Detail for the uploader.
    pub detail: String,
}

impl Rejection {
    fn new(reason: RejectReason, detail: impl Into<String>) -> Self {
        Rejection {
            reason,
            detail: detail.into(),
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.reason.as_str(), self.detail)
    }
}

/// Bounds applied to every record (from `[ingest]`).
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest record, JSON bytes.
    pub max_record_bytes: usize,
    /// Oldest accepted `started_at`, relative to now.
    pub max_age: TimeDelta,
    /// Largest accepted clock skew into the future.
    pub max_clock_skew: TimeDelta,
}

const MAX_URL: usize = 2048;
const MAX_DOMAIN: usize = 253;
const MAX_CATEGORY: usize = 32;
const MAX_SHORT: usize = 64;
const MAX_TEXT: usize = 4096;
const MAX_OBSERVATIONS: usize = 256;
const MAX_RUNTIME_MS: f64 = 86_400_000.0;

/// Check the generic bounds of a raw record without building it: every string (title, header
/// name or value, evidence line, reason, ...) at most [`MAX_TEXT`] bytes and every list (the
/// observation lists, headers, answers, certificates, evidence, and the same inside `control`)
/// at most [`MAX_OBSERVATIONS`] entries. Checked on the raw JSON, so a new field is bounded
/// the day it is added.
pub fn check_bounds(raw: &str) -> Result<(), Rejection> {
    let mut de = serde_json::Deserializer::from_str(raw);
    Bounded { field: "record" }
        .deserialize(&mut de)
        .map_err(|e| {
            // serde_json appends " at line L column C": useful to the uploader, keep it.
            Rejection::new(RejectReason::TooLarge, e.to_string())
        })
}

/// A visitor that walks any JSON value and fails on a string or list over its bound, naming
/// the field it is in.
#[derive(Clone, Copy)]
struct Bounded<'a> {
    field: &'a str,
}

impl<'de> DeserializeSeed<'de> for Bounded<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl Bounded<'_> {
    fn text<E: serde::de::Error>(self, len: usize) -> Result<(), E> {
        if len > MAX_TEXT {
            Err(E::custom(format!(
                "a string in {} has {len} bytes, the limit is {MAX_TEXT}",
                self.field
            )))
        } else {
            Ok(())
        }
    }
}

impl<'de> Visitor<'de> for Bounded<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_none<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<(), E> {
        self.text(v.len())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut n = 0usize;
        while seq.next_element_seed(self)?.is_some() {
            n += 1;
            if n > MAX_OBSERVATIONS {
                return Err(serde::de::Error::custom(format!(
                    "{} has more than {MAX_OBSERVATIONS} entries",
                    self.field
                )));
            }
        }
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            self.text::<A::Error>(key.len())?;
            map.next_value_seed(Bounded { field: &key })?;
        }
        Ok(())
    }
}

/// Is `host` a hostname in LDH form (letters, digits, hyphens; underscores are tolerated, as
/// some real hosts have them; internationalised names in their `xn--` A-label form) or an IP
/// literal? Anything else (brackets, quotes, `=`, `+`, backticks, braces) is refused: it is not
/// a site, and it would be stored and shown as one.
pub fn valid_host(host: &str) -> bool {
    if host.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    !name.is_empty()
        && name.len() <= MAX_DOMAIN
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        // A name of digits and dots only would be an address, and it is not one.
        && !name.bytes().all(|b| b.is_ascii_digit() || b == b'.')
}

/// The one key of a site: its hostname in lower case, without the trailing dot of a fully
/// qualified name, and an address in its canonical form without brackets. `News.Example.`,
/// `news.example.` and `news.example` are one site: a look-alike key would let two fake probes
/// raise a block on a twin while honest probes see the real site accessible. (The domain has
/// no port, so `https://news.example:443/` is the same site already.)
pub fn site_key(domain: &str) -> String {
    let bare = domain.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return ip.to_string();
    }
    let name = bare.strip_suffix('.').unwrap_or(bare);
    name.to_ascii_lowercase()
}

/// Parse one record, then validate it.
pub fn parse_record(
    raw: &str,
    limits: &Limits,
    now: DateTime<Utc>,
) -> Result<Measurement, Rejection> {
    if raw.len() > limits.max_record_bytes {
        return Err(Rejection::new(
            RejectReason::TooLarge,
            format!(
                "record is {} bytes, the limit is {}",
                raw.len(),
                limits.max_record_bytes
            ),
        ));
    }
    let unsupported = |v: &dyn fmt::Display| {
        Rejection::new(
            RejectReason::SchemaVersion,
            format!("schema_version {v} is not supported; this collector speaks {SCHEMA_VERSION}"),
        )
    };
    let m: Measurement = match serde_json::from_str(raw) {
        Ok(m) => m,
        Err(e) => {
            // A newer probe's record may not parse as this version's `Measurement` at all:
            // look at its version so the probe is told the real reason. (Only on failure: a
            // valid record is scanned once for its fields, once for its bounds.)
            #[derive(Deserialize)]
            struct VersionOnly {
                schema_version: Option<serde_json::Value>,
            }
            if let Ok(VersionOnly {
                schema_version: Some(v),
            }) = serde_json::from_str::<VersionOnly>(raw)
            {
                if v.as_u64() != Some(u64::from(SCHEMA_VERSION)) {
                    return Err(unsupported(&v));
                }
            }
            return Err(Rejection::new(RejectReason::Malformed, e.to_string()));
        }
    };
    // The version before the bounds, as for a record that does not parse.
    if m.schema_version != SCHEMA_VERSION {
        return Err(unsupported(&m.schema_version));
    }
    check_bounds(raw)?;
    validate(&m, limits, now)?;
    Ok(m)
}

/// The `id` of a record that did not parse, if it has a usable one (to label the rejection).
pub fn salvage_id(raw: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct IdOnly {
        id: Option<serde_json::Value>,
    }
    let v: IdOnly = serde_json::from_str(raw).ok()?;
    match v.id? {
        serde_json::Value::String(s) if s.len() <= MAX_SHORT => Some(s),
        _ => None,
    }
}

fn too_large(field: &str, len: usize, max: usize) -> Result<(), Rejection> {
    if len > max {
        Err(Rejection::new(
            RejectReason::TooLarge,
            format!("{field} has {len} elements or bytes, the limit is {max}"),
        ))
    } else {
        Ok(())
    }
}

/// Check a parsed measurement.
pub fn validate(m: &Measurement, limits: &Limits, now: DateTime<Utc>) -> Result<(), Rejection> {
    use RejectReason::*;
    if m.schema_version != SCHEMA_VERSION {
        return Err(Rejection::new(
            SchemaVersion,
            format!(
                "schema_version {} is not supported; this collector speaks {SCHEMA_VERSION}",
                m.schema_version
            ),
        ));
    }
    too_large("url", m.url.len(), MAX_URL)?;
    too_large("domain", m.domain.len(), MAX_DOMAIN)?;
    too_large("software.name", m.software.name.len(), MAX_SHORT)?;
    too_large("software.version", m.software.version.len(), MAX_SHORT)?;
    too_large("dns", m.dns.len(), MAX_OBSERVATIONS)?;
    too_large("tcp", m.tcp.len(), MAX_OBSERVATIONS)?;
    too_large("tls", m.tls.len(), MAX_OBSERVATIONS)?;
    too_large("http", m.http.len(), MAX_OBSERVATIONS)?;
    too_large(
        "verdict.evidence",
        m.verdict.evidence.len(),
        MAX_OBSERVATIONS,
    )?;
    too_large("verdict.reason", m.verdict.reason.len(), MAX_TEXT)?;
    too_large(
        "connectivity.references",
        m.connectivity.references.len(),
        MAX_OBSERVATIONS,
    )?;
    for r in &m.connectivity.references {
        too_large("connectivity.references.anchor", r.anchor.len(), MAX_URL)?;
    }
    too_large(
        "control_failure",
        m.control_failure.as_ref().map_or(0, String::len),
        MAX_TEXT,
    )?;

    if m.started_at > now + limits.max_clock_skew {
        return Err(Rejection::new(
            Future,
            format!(
                "started_at {} is in the future (allowed clock skew {}s)",
                m.started_at.to_rfc3339(),
                limits.max_clock_skew.num_seconds()
            ),
        ));
    }
    if m.started_at < now - limits.max_age {
        return Err(Rejection::new(
            TooOld,
            format!(
                "started_at {} is older than {} days",
                m.started_at.to_rfc3339(),
                limits.max_age.num_days()
            ),
        ));
    }
    if !(m.runtime_ms.is_finite() && (0.0..=MAX_RUNTIME_MS).contains(&m.runtime_ms)) {
        return Err(Rejection::new(
            InvalidField,
            "runtime_ms must be between 0 and one day",
        ));
    }
    if let Some(asn) = m.probe.asn {
        if asn == 0 {
            return Err(Rejection::new(InvalidField, "probe.asn 0 is reserved"));
        }
    }
    if let Some(cc) = &m.probe.country {
        if !(cc.len() == 2 && cc.bytes().all(|b| b.is_ascii_uppercase())) {
            return Err(Rejection::new(
                InvalidField,
                "probe.country must be an ISO 3166-1 alpha-2 code in capitals",
            ));
        }
    }
    if let Some(cat) = &m.category_code {
        let ok = !cat.is_empty()
            && cat.len() <= MAX_CATEGORY
            && cat
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !ok {
            return Err(Rejection::new(
                InvalidField,
                "category_code must be 1-32 letters, digits, '_' or '-'",
            ));
        }
    }

    if let Some(app) = &m.app {
        validate_app(m, app)?;
    } else {
        validate_site(m)?;
    }

    if m.verdict.method.is_some() && m.verdict.status != Status::Blocked {
        return Err(Rejection::new(
            Inconsistent,
            format!(
                "verdict.method is set but verdict.status is {}",
                m.verdict.status
            ),
        ));
    }
    if let Some(p) = &m.path {
        validate_path(p, m.verdict.status)?;
    }
    if m.connectivity.offline && m.verdict.status != Status::Offline {
        return Err(Rejection::new(
            Inconsistent,
            format!(
                "connectivity.offline is true but verdict.status is {}",
                m.verdict.status
            ),
        ));
    }
    Ok(())
}

/// A website record: an `http(s)` URL whose host is the domain.
fn validate_site(m: &Measurement) -> Result<(), Rejection> {
    use RejectReason::*;
    let url = url::Url::parse(&m.url)
        .map_err(|e| Rejection::new(Inconsistent, format!("url does not parse: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(Rejection::new(
            Inconsistent,
            format!("url scheme {:?} is not http or https", url.scheme()),
        ));
    }
    let host = url
        .host_str()
        .map(|h| h.trim_start_matches('[').trim_end_matches(']'))
        .unwrap_or_default();
    let domain = m.domain.trim_start_matches('[').trim_end_matches(']');
    if !valid_host(domain) {
        return Err(Rejection::new(
            InvalidField,
            "domain must be a hostname (letters, digits, '-', in its xn-- form if \
             internationalised) or an IP address",
        ));
    }
    if host.is_empty() || !host.eq_ignore_ascii_case(domain) {
        return Err(Rejection::new(
            Inconsistent,
            "domain does not match the url's host",
        ));
    }
    Ok(())
}

/// An app record: `url` is `app:NAME`, `domain` the app's name, and every endpoint within
/// bounds, its outcome consistent.
fn validate_app(
    m: &Measurement,
    app: &witness_core::model::AppObservation,
) -> Result<(), Rejection> {
    use RejectReason::*;
    let name_ok = (1..=32).contains(&app.name.len())
        && app
            .name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !name_ok {
        return Err(Rejection::new(
            InvalidField,
            "app.name must be 1-32 of a-z, 0-9 and '-'",
        ));
    }
    if m.url != Measurement::app_url(&app.name) || m.domain != app.name {
        return Err(Rejection::new(
            Inconsistent,
            "an app record's url must be app:NAME and its domain NAME",
        ));
    }
    too_large("app.list", app.list.len(), MAX_URL)?;
    too_large("app.endpoints", app.endpoints.len(), MAX_OBSERVATIONS)?;
    for e in &app.endpoints {
        too_large("app.endpoints.host", e.host.len(), MAX_DOMAIN)?;
        if e.method.is_some() && e.status != Status::Blocked {
            return Err(Rejection::new(
                Inconsistent,
                "an endpoint's method is set but its status is not blocked",
            ));
        }
    }
    Ok(())
}

/// An address a correct probe never records as a router: private, shared (CGNAT), loopback,
/// link-local or unspecified. Such an address could identify the volunteer's own network.
fn private_router(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || (o[0] == 100 && (64..128).contains(&o[1]))
        }
        IpAddr::V6(v6) => {
            let seg0 = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || (seg0 & 0xfe00) == 0xfc00
                || (seg0 & 0xffc0) == 0xfe80
                || v6
                    .to_ipv4_mapped()
                    .is_some_and(|v4| private_router(IpAddr::V4(v4)))
        }
    }
}

/// The `path` observation: only on a blocked verdict, TTLs within bounds and in order, a hop
/// named or a reason why not (never both), finite times, no private router address.
fn validate_path(p: &PathObservation, status: Status) -> Result<(), Rejection> {
    use RejectReason::*;
    let max = witness_core::checks::path::MAX_TTL_LIMIT;
    if status != Status::Blocked {
        return Err(Rejection::new(
            Inconsistent,
            format!("path is set but verdict.status is {status}; only blocks are localised"),
        ));
    }
    too_large("path.hops", p.hops.len(), usize::from(max))?;
    if p.max_ttl > max {
        return Err(Rejection::new(
            InvalidField,
            format!("path.max_ttl {} is over {max}", p.max_ttl),
        ));
    }
    match (p.censor_hop, p.unlocated) {
        (Some(n), None) if n >= 1 && n <= p.max_ttl => {}
        (Some(n), None) => {
            return Err(Rejection::new(
                InvalidField,
                format!(
                    "path.censor_hop {n} is not within 1..=max_ttl ({})",
                    p.max_ttl
                ),
            ))
        }
        (None, Some(_)) => {}
        _ => {
            return Err(Rejection::new(
                Inconsistent,
                "path must have exactly one of censor_hop and unlocated",
            ))
        }
    }
    let mut last = 0u8;
    for h in &p.hops {
        if h.ttl <= last || h.ttl > p.max_ttl || p.censor_hop.is_some_and(|n| h.ttl > n) {
            return Err(Rejection::new(
                InvalidField,
                "path.hops must have increasing TTLs within 1..=max_ttl, none past censor_hop",
            ));
        }
        last = h.ttl;
        if h.asn == Some(0) {
            return Err(Rejection::new(InvalidField, "path.hops asn 0 is reserved"));
        }
        if h.addr.is_some_and(private_router) {
            return Err(Rejection::new(
                InvalidField,
                format!(
                    "path.hops TTL {} has a private router address; the probe never records \
                     those (upgrade the probe)",
                    h.ttl
                ),
            ));
        }
    }
    for (what, v) in [("path.t_ms", p.t_ms), ("path.duration_ms", p.duration_ms)] {
        if !(v.is_finite() && (0.0..=MAX_RUNTIME_MS).contains(&v)) {
            return Err(Rejection::new(
                InvalidField,
                format!("{what} must be between 0 and one day"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use witness_core::model::{
        ConnectivitySummary, HopReply, Method, PathAction, PathHop, PathTrigger, PathUnlocated,
        ProbeNetwork, Software, Verdict,
    };

    fn hop(ttl: u8, addr: Option<&str>) -> PathHop {
        PathHop {
            ttl,
            reply: HopReply::TimeExceeded,
            addr: addr.map(|a| a.parse().unwrap()),
            asn: None,
        }
    }

    /// A blocked verdict with a localisation.
    fn set_path(m: &mut Measurement, hop_n: Option<u8>, why: Option<PathUnlocated>) {
        m.verdict = Verdict::new(Status::Blocked, Some(Method::Tcp), "reset");
        m.path = Some(PathObservation {
            trigger: PathTrigger::Syn,
            addr: "198.51.100.7:443".parse().unwrap(),
            action: PathAction::Reset,
            censor_hop: hop_n,
            unlocated: why,
            hops: vec![hop(1, None), hop(2, None), hop(3, Some("95.56.0.1"))],
            max_ttl: 16,
            probes: 16,
            t_ms: 10.0,
            duration_ms: 20.0,
            shared_with: None,
            censor_range: None,
        });
    }

    fn limits() -> Limits {
        Limits {
            max_record_bytes: 64 * 1024,
            max_age: TimeDelta::days(30),
            max_clock_skew: TimeDelta::minutes(10),
        }
    }

    fn good(now: DateTime<Utc>) -> Measurement {
        Measurement {
            schema_version: SCHEMA_VERSION,
            id: uuid::Uuid::new_v4(),
            software: Software::default(),
            url: "https://Example.ORG/path".into(),
            domain: "example.org".into(),
            category_code: Some("NEWS".into()),
            started_at: now - TimeDelta::minutes(5),
            runtime_ms: 1200.0,
            probe: ProbeNetwork {
                asn: Some(9198),
                country: Some("KZ".into()),
            },
            dns: vec![],
            tcp: vec![],
            tls: vec![],
            http: vec![],
            control: None,
            control_failure: None,
            path: None,
            ab: vec![],
            app: None,
            connectivity: ConnectivitySummary::default(),
            verdict: Verdict::new(
                Status::Blocked,
                Some(Method::Tls),
                "timeout after ClientHello",
            ),
        }
    }

    fn app(m: &mut Measurement, name: &str) {
        use witness_core::model::{AppKind, AppObservation};
        m.url = Measurement::app_url(name);
        m.domain = name.into();
        m.app = Some(AppObservation {
            name: name.into(),
            kind: AppKind::Messaging,
            list: "embedded:apps.txt@2026-12-08".into(),
            endpoints: vec![],
        });
    }

    #[test]
    fn app_records_are_keyed_by_name_and_kept_apart_from_sites() {
        let now = Utc::now();
        type Edit = fn(&mut Measurement);
        let cases: &[(&str, Edit, Option<RejectReason>)] = &[
            ("app", |m| app(m, "telegram"), None),
            (
                "bad name",
                |m| app(m, "Tele gram"),
                Some(RejectReason::InvalidField),
            ),
            (
                "url not app:NAME",
                |m| {
                    app(m, "telegram");
                    m.url = "https://telegram/".into();
                },
                Some(RejectReason::Inconsistent),
            ),
            (
                "domain not NAME",
                |m| {
                    app(m, "telegram");
                    m.domain = "whatsapp".into();
                },
                Some(RejectReason::Inconsistent),
            ),
            (
                "a site record with an app url",
                |m| {
                    m.url = "app:telegram".into();
                    m.domain = "telegram".into();
                },
                Some(RejectReason::Inconsistent),
            ),
        ];
        for (name, edit, want) in cases {
            let mut m = good(now);
            edit(&mut m);
            let got = validate(&m, &limits(), now).err().map(|r| r.reason);
            assert_eq!(got, *want, "{name}");
        }
    }

    #[test]
    fn rejection_table() {
        let now = Utc::now();
        type Edit = fn(&mut Measurement, DateTime<Utc>);
        let cases: &[(&str, Edit, Option<RejectReason>)] = &[
            ("good", |_, _| {}, None),
            ("path located", |m, _| set_path(m, Some(3), None), None),
            (
                "path on an accessible verdict",
                |m, _| {
                    set_path(m, Some(3), None);
                    m.verdict = Verdict::new(Status::Accessible, None, "fine");
                },
                Some(RejectReason::Inconsistent),
            ),
            (
                "path hop and reason both",
                |m, _| set_path(m, Some(3), Some(PathUnlocated::NoIcmp)),
                Some(RejectReason::Inconsistent),
            ),
            (
                "path hop past max_ttl",
                |m, _| set_path(m, Some(17), None),
                Some(RejectReason::InvalidField),
            ),
            (
                "path hop 0",
                |m, _| set_path(m, Some(0), None),
                Some(RejectReason::InvalidField),
            ),
            (
                "path hops out of order",
                |m, _| {
                    set_path(m, Some(3), None);
                    m.path.as_mut().unwrap().hops.swap(0, 1);
                },
                Some(RejectReason::InvalidField),
            ),
            (
                "path too many hops",
                |m, _| {
                    set_path(m, None, Some(PathUnlocated::BeyondMaxTtl));
                    let p = m.path.as_mut().unwrap();
                    p.hops = (0..=255u8).map(|t| hop(t, None)).collect();
                },
                Some(RejectReason::TooLarge),
            ),
            (
                "path private router",
                |m, _| {
                    set_path(m, Some(3), None);
                    m.path.as_mut().unwrap().hops[0].addr = Some("192.168.1.1".parse().unwrap());
                },
                Some(RejectReason::InvalidField),
            ),
            (
                "path NaN duration",
                |m, _| {
                    set_path(m, Some(3), None);
                    m.path.as_mut().unwrap().duration_ms = f64::NAN;
                },
                Some(RejectReason::InvalidField),
            ),
            (
                "schema",
                |m, _| m.schema_version = 99,
                Some(RejectReason::SchemaVersion),
            ),
            (
                "future",
                |m, n| m.started_at = n + TimeDelta::hours(1),
                Some(RejectReason::Future),
            ),
            (
                "skew ok",
                |m, n| m.started_at = n + TimeDelta::minutes(9),
                None,
            ),
            (
                "old",
                |m, n| m.started_at = n - TimeDelta::days(31),
                Some(RejectReason::TooOld),
            ),
            (
                "domain",
                |m, _| m.domain = "other.org".into(),
                Some(RejectReason::Inconsistent),
            ),
            (
                "scheme",
                |m, _| m.url = "ftp://example.org/".into(),
                Some(RejectReason::Inconsistent),
            ),
            (
                "bad url",
                |m, _| m.url = "not a url".into(),
                Some(RejectReason::Inconsistent),
            ),
            (
                "method without block",
                |m, _| m.verdict.status = Status::Accessible,
                Some(RejectReason::Inconsistent),
            ),
            (
                "offline run with a block",
                |m, _| m.connectivity.offline = true,
                Some(RejectReason::Inconsistent),
            ),
            (
                "country",
                |m, _| m.probe.country = Some("kz".into()),
                Some(RejectReason::InvalidField),
            ),
            (
                "asn 0",
                |m, _| m.probe.asn = Some(0),
                Some(RejectReason::InvalidField),
            ),
            (
                "category",
                |m, _| m.category_code = Some("a b".into()),
                Some(RejectReason::InvalidField),
            ),
            (
                "runtime",
                |m, _| m.runtime_ms = f64::NAN,
                Some(RejectReason::InvalidField),
            ),
            (
                "url size",
                |m, _| m.url = format!("https://example.org/{}", "a".repeat(3000)),
                Some(RejectReason::TooLarge),
            ),
            (
                "formula domain",
                |m, _| {
                    m.url = "https://=1+2.example/".into();
                    m.domain = "=1+2.example".into();
                },
                Some(RejectReason::InvalidField),
            ),
            (
                "quoted domain",
                |m, _| {
                    m.url = "https://a\"b.example/".into();
                    m.domain = "a\"b.example".into();
                },
                Some(RejectReason::InvalidField),
            ),
            (
                "long evidence line",
                |m, _| m.verdict.reason = "x".repeat(MAX_TEXT + 1),
                Some(RejectReason::TooLarge),
            ),
            (
                "ipv6 literal",
                |m, _| {
                    m.url = "http://[2001:db8::1]/".into();
                    m.domain = "2001:db8::1".into();
                },
                None,
            ),
        ];
        for (name, edit, want) in cases {
            let mut m = good(now);
            edit(&mut m, now);
            let got = validate(&m, &limits(), now).err().map(|r| r.reason);
            assert_eq!(got, *want, "{name}");
        }
    }

    #[test]
    fn parse_reports_serde_errors_and_size() {
        let now = Utc::now();
        let l = limits();
        let err = parse_record(r#"{"id": "x"}"#, &l, now).unwrap_err();
        assert_eq!(err.reason, RejectReason::Malformed);
        assert!(err.to_string().starts_with("malformed: "), "{err}");
        let big = format!("{{\"pad\": \"{}\"}}", "a".repeat(70 * 1024));
        assert_eq!(
            parse_record(&big, &l, now).unwrap_err().reason,
            RejectReason::TooLarge
        );
        let ok = serde_json::to_string(&good(now)).unwrap();
        assert!(parse_record(&ok, &l, now).is_ok());
        assert_eq!(
            salvage_id(r#"{"id": "abc", "x": 1}"#).as_deref(),
            Some("abc")
        );
        assert_eq!(salvage_id("[1]"), None);
    }

    #[test]
    fn one_key_per_site() {
        for (given, key) in [
            ("real-news.example.", "real-news.example"),
            ("Real-News.EXAMPLE", "real-news.example"),
            ("REAL-news.example.", "real-news.example"),
            ("real-news.example", "real-news.example"),
            ("[2001:DB8:0::1]", "2001:db8::1"),
            ("2001:db8::0:1", "2001:db8::1"),
            ("192.0.2.1", "192.0.2.1"),
        ] {
            assert_eq!(site_key(given), key, "{given}");
        }
    }

    #[test]
    fn hosts() {
        for ok in [
            "example.org",
            "xn--80ak6aa92e.com",
            "a-b.c_d.example",
            "example.org.",
            "192.0.2.1",
            "2001:db8::1",
            "localhost",
        ] {
            assert!(valid_host(ok), "{ok}");
        }
        for bad in [
            "",
            "=1+2.example",
            "a\"b.example",
            "[x].example",
            "a`b.example",
            "{a}.example",
            "a'b.example",
            "-a.example",
            "a..example",
            "пример.рф",
            "1.2.3",
            &"a".repeat(64),
            &format!("{}.example", "a.".repeat(130)),
        ] {
            assert!(!valid_host(bad), "{bad}");
        }
    }

    #[test]
    fn nested_strings_and_lists_are_bounded() {
        let now = Utc::now();
        let l = limits();
        let base = serde_json::to_value(good(now)).unwrap();
        type Edit = Box<dyn Fn(&mut serde_json::Value)>;
        let edits: Vec<(&str, Edit)> = vec![
            (
                "title",
                Box::new(|v| {
                    v["http"] = serde_json::json!([{"title": "t".repeat(MAX_TEXT + 1)}]);
                }),
            ),
            (
                "headers",
                Box::new(|v| {
                    let h: Vec<_> = (0..300)
                        .map(|i| serde_json::json!([format!("h{i}"), "v"]))
                        .collect();
                    v["http"] = serde_json::json!([{"headers": h}]);
                }),
            ),
            (
                "header value",
                Box::new(|v| {
                    v["http"] = serde_json::json!([{"headers": [["a", "v".repeat(MAX_TEXT + 1)]]}]);
                }),
            ),
            (
                "evidence",
                Box::new(|v| {
                    v["verdict"]["evidence"] = serde_json::json!(["e".repeat(MAX_TEXT + 1)]);
                }),
            ),
            (
                "control.dns",
                Box::new(|v| {
                    let d: Vec<_> = (0..300).map(|_| serde_json::json!({})).collect();
                    v["control"] = serde_json::json!({"dns": d});
                }),
            ),
        ];
        for (name, edit) in edits {
            let mut v = base.clone();
            edit(&mut v);
            let raw = serde_json::to_string(&v).unwrap();
            let err = check_bounds(&raw).unwrap_err();
            assert_eq!(err.reason, RejectReason::TooLarge, "{name}: {err}");
            // Through the full path too, whatever else is wrong with the edited record.
            let _ = parse_record(&raw, &l, now);
        }
        let ok = serde_json::to_string(&base).unwrap();
        assert!(check_bounds(&ok).is_ok());
    }
}
