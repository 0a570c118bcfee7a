//! Scrubbing a whole record: every string and every object key of its JSON form, so a field
//! added tomorrow is covered without anyone remembering to scrub it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use serde_json::Value;

use super::{Needles, OwnAddresses};
use crate::model::Measurement;

/// Fields the probe writes itself, never from the network: left alone, so a chance match in
/// an id cannot make the record unreadable.
const OWN_FIELDS: &[&str] = &["id", "started_at", "schema_version"];

/// A record that could not be scrubbed (it would not read back): it must not leave the probe.
#[derive(Debug, thiserror::Error)]
#[error("the record could not be scrubbed of the probe's address: {0}")]
pub struct ScrubError(#[from] serde_json::Error);

/// Remove the probe's own addresses, in every encoding, from every string and key of `m`.
///
/// A string that is exactly one of our addresses (a DNS answer, a TCP peer) becomes the
/// unspecified address of its family (`0.0.0.0`, `::`, with the port kept), so the typed
/// field stays valid; any other string has its matches replaced by [`super::SCRUBBED`].
pub fn scrub_measurement(m: &mut Measurement, own: &OwnAddresses) -> Result<(), ScrubError> {
    scrub_with(m, &own.needles())
}

/// [`scrub_measurement`] with prepared needles.
pub fn scrub_with(m: &mut Measurement, needles: &Needles) -> Result<(), ScrubError> {
    if needles.is_empty() {
        return Ok(());
    }
    let mut v = serde_json::to_value(&*m)?;
    let mut changed = 0;
    if let Value::Object(map) = &mut v {
        let keys: Vec<String> = map.keys().cloned().collect();
        for k in keys {
            if OWN_FIELDS.contains(&k.as_str()) {
                continue;
            }
            if let Some(field) = map.get_mut(&k) {
                changed += scrub_value(field, needles);
            }
        }
    }
    if changed > 0 {
        *m = serde_json::from_value(v)?;
    }
    Ok(())
}

/// Scrub every string and key of `v` in place; how many were changed.
pub fn scrub_value(v: &mut Value, needles: &Needles) -> usize {
    match v {
        Value::String(s) => match scrub_string(s, needles) {
            Some(new) => {
                *s = new;
                1
            }
            None => 0,
        },
        Value::Array(items) => items.iter_mut().map(|x| scrub_value(x, needles)).sum(),
        Value::Object(map) => {
            let mut changed = 0;
            let old = std::mem::take(map);
            for (k, mut val) in old {
                changed += scrub_value(&mut val, needles);
                let key = match scrub_string(&k, needles) {
                    Some(new) => {
                        changed += 1;
                        new
                    }
                    None => k,
                };
                map.insert(key, val);
            }
            changed
        }
        _ => 0,
    }
}

/// The scrubbed form of `s`, or `None` when it holds none of our addresses.
fn scrub_string(s: &str, needles: &Needles) -> Option<String> {
    // An address field stays an address (reversed or embedded forms count as ours too).
    let ours = |ip: &IpAddr| needles.is_own(ip) || needles.found_in(s);
    if let Ok(ip) = s.parse::<IpAddr>() {
        return ours(&ip).then(|| unspecified(ip).to_string());
    }
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return ours(&sa.ip())
            .then(|| SocketAddr::new(unspecified(sa.ip()), sa.port()).to_string());
    }
    let out = needles.scrub(s);
    (out != s).then_some(out)
}

fn unspecified(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    }
}

/// What is left of a record that could not be scrubbed: its target and verdict status, with
/// every observation and every text dropped.
pub fn strip(m: &mut Measurement) {
    m.dns.clear();
    m.tcp.clear();
    m.tls.clear();
    m.http.clear();
    m.control = None;
    m.control_failure = None;
    m.path = None;
    m.verdict.evidence.clear();
    m.verdict.reason = "observations removed: the record could not be scrubbed".into();
}
