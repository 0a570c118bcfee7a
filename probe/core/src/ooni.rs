//! Witness records in OONI's data format, so OONI's tools (Explorer-style analyses, the
//! `oonidata` pipeline, Censored Planet's converters) read every Witness measurement.
//!
//! One pure function, [`to_ooni`], used by the probe (`witness run --format ooni`) and the
//! collector (`GET /api/v1/measurements?format=ooni`). It maps a website measurement to a
//! `web_connectivity` measurement (OONI spec df-000-base, ts-017) with the step formats df-001
//! (requests), df-002 (queries), df-005 (tcp_connect), df-006 (tls_handshakes), df-008
//! (network_events) and the failure names of df-007. What OONI's format has no place for
//! (Witness's verdict, evidence, throttling figures, the censor's hop) goes under
//! `test_keys.x_witness` (OONI allows `x_` keys). `docs/measurement-format.md` documents the
//! mapping.
//!
//! Every string comes from the record, which is already scrubbed of the probe's address; the
//! probe's own address is written as `127.0.0.1`, as OONI's probes write it when they scrub.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde_json::{json, Map, Value};

use crate::failure::Failure;
use crate::model::{
    DnsObservation, HttpObservation, HttpRole, Measurement, Method, QueryType, ResolverRole, Status,
};

/// Version of this export (`test_keys.x_witness.export_version`): bumped on any change to
/// the mapping that a reader could notice.
pub const EXPORT_VERSION: u32 = 1;

/// OONI's `data_format_version` this export follows.
pub const DATA_FORMAT_VERSION: &str = "0.2.0";

/// OONI's test name for website measurements.
pub const TEST_NAME: &str = "web_connectivity";

/// The `web_connectivity` version whose keys this export writes: the classic top-level keys
/// (`blocking`, `accessible`, `dns_consistency`, the `*_match` keys) and the classic control
/// shape, which OONI's analyses read for every version.
pub const TEST_VERSION: &str = "0.4.3";

/// What OONI's probes write as `probe_ip` when they scrub the address: never the real one.
pub const SCRUBBED_PROBE_IP: &str = "127.0.0.1";

/// OONI's name for a Witness failure (df-007). Witness's names that OONI shares are kept;
/// the others map to the nearest OONI name, or to `unknown_failure: <witness name>` where OONI
/// has none, so the Witness name survives.
pub fn failure_name(f: &Failure) -> String {
    let named = match f {
        Failure::DnsNxdomain => "dns_nxdomain_error",
        Failure::DnsNoAnswer => "dns_no_answer",
        Failure::DnsServfail => "dns_servfail_error",
        Failure::DnsRefused => "dns_refused_error",
        // OONI's resolvers report a DNS timeout as the generic timeout.
        Failure::DnsTimeout => "generic_timeout_error",
        Failure::DnsBadResponse => "dns_server_misbehaving",
        Failure::ConnectionRefused => "connection_refused",
        Failure::ConnectionReset => "connection_reset",
        Failure::HostUnreachable => "host_unreachable",
        Failure::NetworkUnreachable => "network_unreachable",
        Failure::GenericTimeout => "generic_timeout_error",
        Failure::Eof => "eof_error",
        Failure::SslUnknownAuthority => "ssl_unknown_authority",
        Failure::SslInvalidHostname => "ssl_invalid_hostname",
        Failure::SslInvalidCertificate => "ssl_invalid_certificate",
        Failure::SslFailedHandshake => "ssl_failed_handshake",
        // A spent deadline is a context deadline for OONI's probes: the generic timeout.
        Failure::DeadlineExceeded => "generic_timeout_error",
        Failure::HttpInvalidResponse
        | Failure::HttpTooManyRedirects
        | Failure::HttpInvalidRedirect
        | Failure::NetworkOffline => return format!("unknown_failure: {}", f.name()),
        Failure::Unknown(text) => return format!("unknown_failure: {text}"),
    };
    named.to_string()
}

fn failure(f: &Option<Failure>) -> Value {
    f.as_ref().map_or(Value::Null, |f| failure_name(f).into())
}

/// Milliseconds since the start of the measurement to OONI's seconds. Not rounded: a record
/// parsed again (the collector's copy) may differ in the last bit, and rounding would turn
/// that into a microsecond.
fn secs(ms: f64) -> f64 {
    ms / 1000.0
}

/// OONI's response code number for Witness's rcode name (df-002 `rcode` is an integer).
fn rcode_number(name: &str) -> Option<u16> {
    Some(match name {
        "NOERROR" => 0,
        "FORMERR" => 1,
        "SERVFAIL" => 2,
        "NXDOMAIN" => 3,
        "NOTIMP" => 4,
        "REFUSED" => 5,
        _ => return None,
    })
}

/// OONI's `engine` for a Witness transport.
fn engine(transport: &str) -> &str {
    match transport {
        "system" => "getaddrinfo",
        other => other,
    }
}

fn query(q: &DnsObservation, tid: u64) -> Value {
    let qtype = match q.query_type {
        QueryType::A => "A",
        QueryType::AAAA => "AAAA",
    };
    let answers = if q.failure.is_some() && q.answers.is_empty() {
        Value::Null
    } else {
        let mut a: Vec<Value> = q
            .answers
            .iter()
            .map(|a| {
                let (kind, key) = if a.addr.is_ipv4() {
                    ("A", "ipv4")
                } else {
                    ("AAAA", "ipv6")
                };
                json!({"answer_type": kind, key: a.addr.to_string(), "ttl": a.ttl})
            })
            .collect();
        a.extend(
            q.cnames
                .iter()
                .map(|c| json!({"answer_type": "CNAME", "hostname": c, "ttl": null})),
        );
        Value::Array(a)
    };
    let role = match q.role {
        ResolverRole::Network => "network",
        ResolverRole::Control => "control",
    };
    json!({
        "hostname": q.query,
        "query_type": qtype,
        "engine": engine(&q.transport),
        "resolver_address": if q.transport == "system" { "" } else { q.resolver.as_str() },
        "failure": failure(&q.failure),
        "rcode": q.rcode.as_deref().and_then(rcode_number),
        "answers": answers,
        "t0": secs(q.t_ms),
        "t": secs(q.t_ms + q.duration_ms),
        "tags": [format!("x_witness_resolver={role}")],
        "transaction_id": tid,
    })
}

/// Links the steps of one connection: the id of the latest connect to `addr` that started
/// at or before `t_ms` (OONI's `transaction_id` ties a connect to its handshake and request).
fn connection_id(m: &Measurement, addr: SocketAddr, t_ms: f64) -> Option<u64> {
    m.tcp
        .iter()
        .enumerate()
        .filter(|(_, c)| c.addr == addr && c.t_ms <= t_ms)
        .max_by(|a, b| a.1.t_ms.total_cmp(&b.1.t_ms))
        .map(|(i, _)| TCP_TID + i as u64)
}

const DNS_TID: u64 = 10_000;
const TCP_TID: u64 = 20_000;
const TLS_TID: u64 = 30_000;
const HTTP_TID: u64 = 40_000;

/// Headers as OONI's `headers_list` and `headers` (the first value of a name wins).
fn headers(list: &[(String, String)]) -> (Value, Value) {
    let pairs: Vec<Value> = list.iter().map(|(k, v)| json!([k, v])).collect();
    let mut map = Map::new();
    for (k, v) in list {
        map.entry(k.clone()).or_insert_with(|| v.clone().into());
    }
    (Value::Array(pairs), Value::Object(map))
}

fn request(m: &Measurement, h: &HttpObservation, i: usize) -> Value {
    let response = h.status.map(|code| {
        let (list, map) = headers(&h.headers);
        json!({
            "code": code,
            "headers_list": list,
            "headers": map,
            // Witness keeps no bodies (a censor's page could carry anything), only their
            // length, hash and title.
            "body": null,
            "body_is_truncated": h.body_truncated,
            "x_body_length": h.body_length,
            "x_body_sha256": h.body_sha256,
            "x_title": h.title,
        })
    });
    let tid = h
        .addr
        .and_then(|a| connection_id(m, a, h.t_ms))
        .unwrap_or(HTTP_TID + i as u64);
    json!({
        "network": "tcp",
        "address": h.addr.map(|a| a.to_string()),
        "alpn": null,
        "failure": failure(&h.failure),
        "request": {
            "url": h.url,
            "method": "GET",
            "headers_list": [],
            "headers": {},
            "body": "",
            "body_is_truncated": false,
            "x_transport": "tcp",
        },
        "response": response,
        "t0": secs(h.t_ms),
        "t": secs(h.t_ms + h.duration_ms),
        "transaction_id": tid,
        "x_hop": h.hop,
        "x_failed_step": h.failed_step.map(|s| s.to_string()),
        "x_role": serde_json::to_value(h.role).unwrap_or(Value::Null),
        "x_blockpage": h.blockpage,
        "x_ttfb_ms": h.ttfb_ms,
        "x_body_ms": h.body_ms,
        "x_throughput_bps": h.throughput_bps,
    })
}

/// The page's final hop: the last `page` exchange.
fn final_page(http: &[HttpObservation]) -> Option<&HttpObservation> {
    http.iter().rfind(|h| h.role == HttpRole::Page)
}

/// The control in the shape of OONI's test helper response (ts-017 `control`).
fn control(m: &Measurement) -> Value {
    let Some(c) = &m.control else {
        return Value::Null;
    };
    let addrs: Vec<String> = c.addrs().iter().map(|a| a.to_string()).collect();
    let dns_failure = if addrs.is_empty() {
        c.dns
            .iter()
            .find_map(|d| d.failure.as_ref())
            .map(failure_name)
    } else {
        None
    };
    let mut tcp = Map::new();
    for t in &c.tcp {
        tcp.insert(
            t.addr.to_string(),
            json!({"status": t.failure.is_none(), "failure": failure(&t.failure)}),
        );
    }
    let mut tls = Map::new();
    for t in c.tls.iter().filter(|t| !t.decoy) {
        let f = t.failure.as_ref().or(t.verification_failure.as_ref());
        tls.insert(
            t.addr.to_string(),
            json!({
                "server_name": t.server_name,
                "status": f.is_none(),
                "failure": f.map(failure_name),
            }),
        );
    }
    let http = final_page(&c.http).map(|h| {
        let mut map = Map::new();
        for (k, v) in &h.headers {
            map.entry(k.clone()).or_insert_with(|| v.clone().into());
        }
        json!({
            "body_length": if h.status.is_some() { json!(h.body_length) } else { json!(-1) },
            "failure": failure(&h.failure),
            "title": h.title.clone().unwrap_or_default(),
            "headers": map,
            "status_code": h.status.map_or(-1, i64::from),
        })
    });
    json!({
        "dns": {"failure": dns_failure, "addrs": addrs},
        "tcp_connect": tcp,
        "tls_handshake": tls,
        "http_request": http,
    })
}

/// Headers every server sends, left out of `headers_match` as OONI's analysis does.
const COMMON_HEADERS: &[&str] = &[
    "date",
    "content-type",
    "server",
    "cache-control",
    "vary",
    "set-cookie",
    "location",
    "expires",
    "x-powered-by",
    "content-encoding",
    "last-modified",
    "accept-ranges",
    "pragma",
    "x-frame-options",
    "etag",
    "x-content-type-options",
    "age",
    "via",
    "p3p",
    "x-xss-protection",
    "content-language",
    "cf-ray",
    "strict-transport-security",
    "link",
    "x-varnish",
    "content-length",
    "connection",
    "transfer-encoding",
    "keep-alive",
];

/// The classic comparison keys (ts-017): only when both sides got a final response.
struct Comparison {
    body_length_match: Value,
    body_proportion: Value,
    status_code_match: Value,
    headers_match: Value,
    title_match: Value,
}

fn compare(m: &Measurement) -> Comparison {
    let none = Comparison {
        body_length_match: Value::Null,
        body_proportion: Value::Null,
        status_code_match: Value::Null,
        headers_match: Value::Null,
        title_match: Value::Null,
    };
    let (Some(p), Some(c)) = (
        final_page(&m.http),
        m.control.as_ref().and_then(|c| final_page(&c.http)),
    ) else {
        return none;
    };
    let (Some(ps), Some(cs)) = (p.status, c.status) else {
        return none;
    };
    let (pl, cl) = (p.body_length as f64, c.body_length as f64);
    let proportion = if pl.max(cl) > 0.0 {
        pl.min(cl) / pl.max(cl)
    } else {
        1.0
    };
    let uncommon = |h: &HttpObservation| -> Vec<String> {
        h.headers
            .iter()
            .map(|(k, _)| k.to_ascii_lowercase())
            .filter(|k| !COMMON_HEADERS.contains(&k.as_str()))
            .collect()
    };
    let (ph, ch) = (uncommon(p), uncommon(c));
    let headers_match = (ph.is_empty() && ch.is_empty()) || ph.iter().any(|k| ch.contains(k));
    let title_match = match (&p.title, &c.title) {
        (Some(a), Some(b)) => json!(a.trim().eq_ignore_ascii_case(b.trim())),
        (None, None) => json!(true),
        _ => json!(false),
    };
    Comparison {
        body_length_match: json!(proportion > 0.7),
        body_proportion: json!(proportion),
        status_code_match: json!(ps == cs),
        headers_match: json!(headers_match),
        title_match,
    }
}

/// OONI's `blocking` and `accessible` from Witness's verdict (the table in
/// `docs/measurement-format.md`).
fn blocking_accessible(m: &Measurement) -> (Value, Value) {
    let v = &m.verdict;
    match v.status {
        Status::Accessible => (json!(false), json!(true)),
        // The site fails for the control too: OONI's "website down".
        Status::Down => (json!(false), json!(false)),
        Status::Offline | Status::Inconclusive => (Value::Null, Value::Null),
        Status::Blocked => match v.method {
            Some(Method::Dns) => (json!("dns"), json!(false)),
            Some(Method::Tcp) => (json!("tcp_ip"), json!(false)),
            Some(Method::Tls) | Some(Method::Mitm) => (json!("http-failure"), json!(false)),
            // A page arrived (a blockpage, a page unlike the control's): a diff; otherwise
            // the exchange was cut.
            Some(Method::Http) => {
                let got_page = final_page(&m.http).is_some_and(|h| h.status.is_some());
                let b = if got_page {
                    "http-diff"
                } else {
                    "http-failure"
                };
                (json!(b), json!(false))
            }
            // OONI has no throttling: the page arrives, slowly. x_witness says throttled.
            Some(Method::Throttle) => (json!(false), json!(true)),
            // App-test methods: no web_connectivity counterpart.
            Some(Method::Protocol) | Some(Method::Udp) => (json!("tcp_ip"), json!(false)),
            None => (Value::Null, Value::Null),
        },
    }
}

fn dns_consistency(m: &Measurement) -> Value {
    let dns_blocked = m.verdict.status == Status::Blocked && m.verdict.method == Some(Method::Dns);
    if dns_blocked {
        json!("inconsistent")
    } else if m.control.is_some() && m.dns.iter().any(|d| d.role == ResolverRole::Network) {
        json!("consistent")
    } else {
        Value::Null
    }
}

/// `dns_experiment_failure`: the network resolver's failure when none of its queries for the
/// target's name answered.
fn dns_experiment_failure(m: &Measurement) -> Value {
    let net: Vec<&DnsObservation> = m
        .dns
        .iter()
        .filter(|d| d.role == ResolverRole::Network && d.query == m.domain)
        .collect();
    if net.is_empty() || net.iter().any(|d| d.failure.is_none()) {
        return Value::Null;
    }
    failure(&net[0].failure)
}

/// `YYYY-MM-DD HH:MM:SS`, UTC, as OONI writes times.
fn ooni_time(t: &chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S").to_string()
}

/// The measurement as one OONI `web_connectivity` measurement.
pub fn to_ooni(m: &Measurement) -> Value {
    let asn = format!("AS{}", m.probe.asn.unwrap_or(0));
    let cc = m.probe.country.clone().unwrap_or_else(|| "ZZ".to_string());
    let report_id = format!(
        "{}_webconnectivity_{}_{}_n1_{}",
        m.started_at.format("%Y%m%dT%H%M%SZ"),
        cc,
        m.probe.asn.unwrap_or(0),
        m.id.simple()
    );
    let mut annotations = BTreeMap::new();
    annotations.insert("engine_name", SOFTWARE_NAME_ANNOTATION.to_string());
    annotations.insert("engine_version", m.software.version.clone());
    if let Some(c) = &m.category_code {
        annotations.insert("category_code", c.clone());
    }

    let queries: Vec<Value> = m
        .dns
        .iter()
        .enumerate()
        .map(|(i, q)| query(q, DNS_TID + i as u64))
        .collect();
    let tcp_connect: Vec<Value> = m
        .tcp
        .iter()
        .enumerate()
        .map(|(i, t)| {
            json!({
                "ip": t.addr.ip().to_string(),
                "port": t.addr.port(),
                "status": {"success": t.failure.is_none(), "failure": failure(&t.failure)},
                "t0": secs(t.t_ms),
                "t": secs(t.t_ms + t.duration_ms),
                "transaction_id": TCP_TID + i as u64,
            })
        })
        .collect();
    let tls_handshakes: Vec<Value> = m
        .tls
        .iter()
        .enumerate()
        .map(|(i, t)| {
            // OONI's probes verify during the handshake: a chain that does not verify is the
            // handshake's failure.
            let f = t.failure.as_ref().or(t.verification_failure.as_ref());
            let mut tags = vec![];
            if t.decoy {
                tags.push("x_witness_decoy");
            }
            json!({
                "network": "tcp",
                "address": t.addr.to_string(),
                "server_name": t.server_name,
                "cipher_suite": t.cipher_suite,
                "tls_version": t.tls_version,
                "negotiated_protocol": null,
                "no_tls_verify": false,
                "failure": f.map(failure_name),
                // Witness records each certificate's names and hashes, not its DER bytes:
                // OONI's base64 DER list stays empty, the chain is in x_peer_certificates.
                "peer_certificates": null,
                "x_peer_certificates": t.peer_certificates,
                "x_interception_ca": t.interception_ca,
                "x_handshake_failure": failure(&t.failure),
                "tags": tags,
                "t0": secs(t.t_ms),
                "t": secs(t.t_ms + t.duration_ms),
                "transaction_id": connection_id(m, t.addr, t.t_ms).unwrap_or(TLS_TID + i as u64),
            })
        })
        .collect();
    // OONI lists a page's requests last hop first; only the page's own exchanges are
    // `requests`, the extra evidence exchanges are under x_witness.
    let requests: Vec<Value> = m
        .http
        .iter()
        .enumerate()
        .filter(|(_, h)| h.role == HttpRole::Page)
        .rev()
        .map(|(i, h)| request(m, h, i))
        .collect();
    let extra_requests: Vec<Value> = m
        .http
        .iter()
        .enumerate()
        .filter(|(_, h)| h.role != HttpRole::Page)
        .map(|(i, h)| request(m, h, i))
        .collect();
    let mut events: Vec<(f64, Value)> = Vec::new();
    for (i, t) in m.tcp.iter().enumerate() {
        events.push((
            t.t_ms + t.duration_ms,
            json!({
                "operation": "connect", "proto": "tcp", "address": t.addr.to_string(),
                "failure": failure(&t.failure), "t0": secs(t.t_ms),
                "t": secs(t.t_ms + t.duration_ms), "transaction_id": TCP_TID + i as u64,
            }),
        ));
    }
    for (i, t) in m.tls.iter().enumerate() {
        let tid = connection_id(m, t.addr, t.t_ms).unwrap_or(TLS_TID + i as u64);
        let f = t.failure.as_ref().or(t.verification_failure.as_ref());
        events.push((
            t.t_ms,
            json!({
                "operation": "tls_handshake_start", "proto": "tcp",
                "address": t.addr.to_string(), "failure": null, "t0": secs(t.t_ms),
                "t": secs(t.t_ms), "transaction_id": tid,
            }),
        ));
        events.push((
            t.t_ms + t.duration_ms,
            json!({
                "operation": "tls_handshake_done", "proto": "tcp",
                "address": t.addr.to_string(), "failure": f.map(failure_name),
                "t0": secs(t.t_ms + t.duration_ms), "t": secs(t.t_ms + t.duration_ms),
                "transaction_id": tid,
            }),
        ));
    }
    events.sort_by(|a, b| a.0.total_cmp(&b.0));
    let network_events: Vec<Value> = events.into_iter().map(|(_, e)| e).collect();

    let http_experiment_failure = final_page(&m.http)
        .map(|h| failure(&h.failure))
        .unwrap_or(Value::Null);
    let (blocking, accessible) = blocking_accessible(m);
    let cmp = compare(m);
    let late: Vec<Value> = m
        .dns
        .iter()
        .enumerate()
        .filter(|(_, d)| !d.late_responses.is_empty())
        .map(|(i, d)| json!({"transaction_id": DNS_TID + i as u64, "responses": d.late_responses}))
        .collect();
    let throttling: Vec<Value> = m
        .http
        .iter()
        .filter(|h| h.throughput_bps.is_some() || h.ttfb_ms.is_some())
        .map(|h| {
            json!({
                "url": h.url, "role": serde_json::to_value(h.role).unwrap_or(Value::Null),
                "body_length": h.body_length, "ttfb_ms": h.ttfb_ms, "body_ms": h.body_ms,
                "throughput_bps": h.throughput_bps,
            })
        })
        .collect();
    let x_witness = json!({
        "export_version": EXPORT_VERSION,
        "schema_version": m.schema_version,
        "id": m.id,
        "started_at": m.started_at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
        "domain": m.domain,
        "category_code": m.category_code,
        "verdict": m.verdict,
        "connectivity": m.connectivity,
        "throttling": {"transfers": throttling, "references": m.connectivity.references},
        "path": m.path,
        "censor_asn": m.path.as_ref().and_then(|p| p.censor_asn()),
        "dns_late_responses": late,
        "extra_requests": extra_requests,
        "ab": m.ab,
        "control_age_secs": m.control.as_ref().and_then(|c| c.age_secs),
        "control_measured_at": m.control.as_ref().map(|c| c.measured_at),
    });
    let test_helpers = if m.control.is_some() {
        json!({"backend": {"address": "witness-control", "type": "witness"}})
    } else {
        json!({})
    };
    let start = ooni_time(&m.started_at);
    json!({
        "annotations": annotations,
        "data_format_version": DATA_FORMAT_VERSION,
        "input": m.url,
        "measurement_start_time": start,
        "probe_asn": asn,
        "probe_cc": cc,
        "probe_ip": SCRUBBED_PROBE_IP,
        "report_id": report_id,
        "software_name": m.software.name,
        "software_version": m.software.version,
        "test_helpers": test_helpers,
        "test_name": TEST_NAME,
        "test_runtime": secs(m.runtime_ms),
        "test_start_time": start,
        "test_version": TEST_VERSION,
        "test_keys": {
            "client_resolver": null,
            "queries": queries,
            "tcp_connect": tcp_connect,
            "tls_handshakes": tls_handshakes,
            "requests": requests,
            "network_events": network_events,
            "control": control(m),
            "control_failure": m.control_failure,
            "dns_experiment_failure": dns_experiment_failure(m),
            "http_experiment_failure": http_experiment_failure,
            "dns_consistency": dns_consistency(m),
            "body_length_match": cmp.body_length_match,
            "body_proportion": cmp.body_proportion,
            "status_code_match": cmp.status_code_match,
            "headers_match": cmp.headers_match,
            "title_match": cmp.title_match,
            "blocking": blocking,
            "accessible": accessible,
            "x_witness": x_witness,
        },
    })
}

/// The `engine_name` annotation.
const SOFTWARE_NAME_ANNOTATION: &str = crate::model::SOFTWARE_NAME;

/// One JSON line: the OONI measurement of `m`, without the newline.
pub fn to_ooni_line(m: &Measurement) -> String {
    to_ooni(m).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::*;
    use chrono::DateTime;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// An https page fetched through 198.18.0.10, with a control that saw the same.
    fn accessible() -> Measurement {
        let dns = DnsObservation {
            role: ResolverRole::Network,
            transport: "udp".into(),
            resolver: "198.18.0.53:53".into(),
            query: "site.kz".into(),
            query_type: QueryType::A,
            t_ms: 1.0,
            duration_ms: 5.0,
            failure: None,
            rcode: Some("NOERROR".into()),
            answers: vec![DnsAnswer {
                addr: "198.18.0.10".parse().unwrap(),
                ttl: 60,
                bogon: false,
            }],
            cnames: vec!["edge.site.kz".into()],
            late_responses: vec![],
        };
        let tcp = TcpObservation {
            addr: sa("198.18.0.10:443"),
            t_ms: 7.0,
            duration_ms: 3.0,
            failure: None,
        };
        let tls = TlsObservation {
            addr: sa("198.18.0.10:443"),
            server_name: "site.kz".into(),
            decoy: false,
            t_ms: 10.0,
            duration_ms: 4.0,
            failure: None,
            tls_version: Some("TLSv1_3".into()),
            cipher_suite: Some("TLS13_AES_128_GCM_SHA256".into()),
            peer_certificates: vec![CertificateInfo {
                subject: "CN=site.kz".into(),
                issuer: "CN=CA".into(),
                sha256: "ab".into(),
                spki_sha256: "cd".into(),
                not_before: None,
                not_after: None,
                san: vec!["site.kz".into()],
            }],
            verification_failure: None,
            interception_ca: None,
        };
        let http = HttpObservation {
            hop: 0,
            url: "https://site.kz/".into(),
            addr: Some(sa("198.18.0.10:443")),
            t_ms: 7.0,
            duration_ms: 30.0,
            failed_step: None,
            failure: None,
            status: Some(200),
            headers: vec![
                ("content-type".into(), "text/html".into()),
                ("x-site".into(), "1".into()),
            ],
            title: Some("Site".into()),
            body_length: 1000,
            body_truncated: false,
            body_sha256: Some("ef".into()),
            ttfb_ms: Some(5.0),
            body_ms: Some(10.0),
            throughput_bps: Some(100_000.0),
            blockpage: None,
            location: None,
            role: HttpRole::Page,
        };
        let control = ControlResponse {
            software: Software::default(),
            measured_at: DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
            dns: vec![DnsObservation {
                transport: "system".into(),
                ..dns.clone()
            }],
            tcp: vec![tcp.clone()],
            tls: vec![tls.clone()],
            http: vec![http.clone()],
            age_secs: Some(3),
        };
        Measurement {
            schema_version: SCHEMA_VERSION,
            id: uuid::Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0001),
            software: Software::default(),
            url: "https://site.kz/".into(),
            domain: "site.kz".into(),
            category_code: Some("NEWS".into()),
            started_at: DateTime::from_timestamp(1_700_000_123, 456_000_000).unwrap(),
            runtime_ms: 1500.0,
            probe: ProbeNetwork {
                asn: Some(9198),
                country: Some("KZ".into()),
            },
            dns: vec![dns],
            tcp: vec![tcp],
            tls: vec![tls],
            http: vec![http],
            control: Some(control),
            control_failure: None,
            connectivity: ConnectivitySummary::default(),
            path: None,
            ab: vec![],
            app: None,
            verdict: Verdict::new(Status::Accessible, None, "fine"),
        }
    }

    #[test]
    fn base_fields_follow_df_000() {
        let o = to_ooni(&accessible());
        assert_eq!(o["measurement_start_time"], "2023-11-14 22:15:23");
        assert_eq!(o["test_start_time"], "2023-11-14 22:15:23");
        assert_eq!(o["probe_asn"], "AS9198");
        assert_eq!(o["probe_cc"], "KZ");
        assert_eq!(o["probe_ip"], "127.0.0.1");
        assert_eq!(o["software_name"], "witness");
        assert_eq!(o["software_version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(o["test_name"], "web_connectivity");
        assert_eq!(o["data_format_version"], "0.2.0");
        assert_eq!(o["input"], "https://site.kz/");
        assert_eq!(o["test_runtime"], 1.5);
        assert_eq!(o["annotations"]["category_code"], "NEWS");
        let rid = o["report_id"].as_str().unwrap();
        assert!(
            rid.starts_with("20231114T221523Z_webconnectivity_KZ_9198_n1_"),
            "{rid}"
        );
        assert_eq!(
            o["test_keys"]["x_witness"]["verdict"]["status"],
            "accessible"
        );
        // Unknown network: OONI's AS0 and ZZ.
        let mut m = accessible();
        m.probe = ProbeNetwork::default();
        let o = to_ooni(&m);
        assert_eq!(
            (o["probe_asn"].as_str(), o["probe_cc"].as_str()),
            (Some("AS0"), Some("ZZ"))
        );
    }

    #[test]
    fn steps_follow_the_step_formats() {
        let o = to_ooni(&accessible());
        let k = &o["test_keys"];
        let q = &k["queries"][0];
        assert_eq!(q["hostname"], "site.kz");
        assert_eq!(q["query_type"], "A");
        assert_eq!(q["engine"], "udp");
        assert_eq!(q["resolver_address"], "198.18.0.53:53");
        assert_eq!(q["rcode"], 0);
        assert_eq!(q["answers"][0]["answer_type"], "A");
        assert_eq!(q["answers"][0]["ipv4"], "198.18.0.10");
        assert_eq!(q["answers"][1]["answer_type"], "CNAME");
        assert_eq!(
            (q["t0"].as_f64(), q["t"].as_f64()),
            (Some(0.001), Some(0.006))
        );
        let c = &k["tcp_connect"][0];
        assert_eq!(
            (c["ip"].as_str(), c["port"].as_u64()),
            (Some("198.18.0.10"), Some(443))
        );
        assert_eq!(c["status"]["success"], true);
        let h = &k["tls_handshakes"][0];
        assert_eq!(h["address"], "198.18.0.10:443");
        assert_eq!(h["server_name"], "site.kz");
        assert_eq!(h["failure"], Value::Null);
        assert_eq!(h["x_peer_certificates"][0]["sha256"], "ab");
        // The handshake and the request are on the connect's transaction.
        assert_eq!(h["transaction_id"], c["transaction_id"]);
        let r = &k["requests"][0];
        assert_eq!(r["request"]["url"], "https://site.kz/");
        assert_eq!(r["response"]["code"], 200);
        assert_eq!(r["response"]["headers"]["x-site"], "1");
        assert_eq!(r["transaction_id"], c["transaction_id"]);
        let ops: Vec<&str> = k["network_events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["operation"].as_str().unwrap())
            .collect();
        assert_eq!(
            ops,
            ["connect", "tls_handshake_start", "tls_handshake_done"]
        );
        let ctl = &k["control"];
        assert_eq!(ctl["dns"]["addrs"][0], "198.18.0.10");
        assert_eq!(ctl["tcp_connect"]["198.18.0.10:443"]["status"], true);
        assert_eq!(ctl["tls_handshake"]["198.18.0.10:443"]["status"], true);
        assert_eq!(ctl["http_request"]["status_code"], 200);
        assert_eq!(ctl["http_request"]["body_length"], 1000);
        for key in [
            "status_code_match",
            "body_length_match",
            "headers_match",
            "title_match",
        ] {
            assert_eq!(k[key], true, "{key}");
        }
        assert_eq!(k["dns_consistency"], "consistent");
    }

    #[test]
    fn failures_map_to_ooni_names() {
        let cases: &[(Failure, &str)] = &[
            (Failure::DnsNxdomain, "dns_nxdomain_error"),
            (Failure::DnsNoAnswer, "dns_no_answer"),
            (Failure::DnsServfail, "dns_servfail_error"),
            (Failure::DnsRefused, "dns_refused_error"),
            (Failure::DnsTimeout, "generic_timeout_error"),
            (Failure::DnsBadResponse, "dns_server_misbehaving"),
            (Failure::ConnectionRefused, "connection_refused"),
            (Failure::ConnectionReset, "connection_reset"),
            (Failure::HostUnreachable, "host_unreachable"),
            (Failure::NetworkUnreachable, "network_unreachable"),
            (Failure::GenericTimeout, "generic_timeout_error"),
            (Failure::Eof, "eof_error"),
            (Failure::SslUnknownAuthority, "ssl_unknown_authority"),
            (Failure::SslInvalidHostname, "ssl_invalid_hostname"),
            (Failure::SslInvalidCertificate, "ssl_invalid_certificate"),
            (Failure::SslFailedHandshake, "ssl_failed_handshake"),
            (
                Failure::HttpInvalidResponse,
                "unknown_failure: http_invalid_response",
            ),
            (
                Failure::HttpTooManyRedirects,
                "unknown_failure: http_too_many_redirects",
            ),
            (
                Failure::HttpInvalidRedirect,
                "unknown_failure: http_invalid_redirect",
            ),
            (Failure::NetworkOffline, "unknown_failure: network_offline"),
            (Failure::DeadlineExceeded, "generic_timeout_error"),
            (Failure::unknown("weird"), "unknown_failure: weird"),
        ];
        // Every named Witness failure is in the table.
        for name in Failure::all_names() {
            let f: Failure = name.parse().unwrap();
            assert!(
                cases.iter().any(|(c, _)| *c == f),
                "{name} not mapped in the test"
            );
        }
        for (f, want) in cases {
            assert_eq!(failure_name(f), *want, "{f:?}");
        }
    }

    #[test]
    fn verdicts_map_to_blocking_and_accessible() {
        use Method::*;
        use Status::*;
        let f = json!(false);
        let t = json!(true);
        let n = Value::Null;
        let cases: &[(Status, Option<Method>, bool, Value, Value)] = &[
            (Accessible, None, true, f.clone(), t.clone()),
            (Down, None, true, f.clone(), f.clone()),
            (Offline, None, false, n.clone(), n.clone()),
            (Inconclusive, None, false, n.clone(), n.clone()),
            (Blocked, Some(Dns), false, json!("dns"), f.clone()),
            (Blocked, Some(Tcp), false, json!("tcp_ip"), f.clone()),
            (Blocked, Some(Tls), false, json!("http-failure"), f.clone()),
            (Blocked, Some(Mitm), false, json!("http-failure"), f.clone()),
            (Blocked, Some(Http), true, json!("http-diff"), f.clone()),
            (Blocked, Some(Http), false, json!("http-failure"), f.clone()),
            (Blocked, Some(Throttle), true, f.clone(), t.clone()),
        ];
        for (status, method, page, blocking, accessible) in cases {
            let mut m = accessible_with(*status, *method);
            if !page {
                m.http[0].status = None;
                m.http[0].failure = Some(Failure::ConnectionReset);
            }
            let o = to_ooni(&m);
            let k = &o["test_keys"];
            assert_eq!(
                &k["blocking"], blocking,
                "{status:?} {method:?} page={page}"
            );
            assert_eq!(&k["accessible"], accessible, "{status:?} {method:?}");
            assert_eq!(k["x_witness"]["verdict"]["status"], status.as_str());
        }
        // DNS blocking is an inconsistent answer; without a control nothing is compared.
        let o = to_ooni(&accessible_with(Blocked, Some(Dns)));
        assert_eq!(o["test_keys"]["dns_consistency"], "inconsistent");
        let mut m = accessible();
        m.control = None;
        let o = to_ooni(&m);
        assert_eq!(o["test_keys"]["dns_consistency"], Value::Null);
        assert_eq!(o["test_keys"]["status_code_match"], Value::Null);
        assert_eq!(o["test_keys"]["control"], Value::Null);
    }

    fn accessible_with(status: Status, method: Option<Method>) -> Measurement {
        let mut m = accessible();
        m.verdict = Verdict::new(status, method, "test");
        m
    }

    #[test]
    fn interception_is_the_handshake_failure_and_the_page_order_is_last_first() {
        let mut m = accessible();
        m.tls[0].verification_failure = Some(Failure::SslUnknownAuthority);
        m.tls[0].interception_ca = Some("Qaznet Trust Network".into());
        let mut second = m.http[0].clone();
        second.hop = 1;
        second.url = "https://site.kz/home".into();
        m.http[0].status = Some(301);
        let mut extra = m.http[0].clone();
        extra.role = HttpRole::DecoyHost;
        m.http.push(second);
        m.http.push(extra);
        let o = to_ooni(&m);
        let k = &o["test_keys"];
        assert_eq!(k["tls_handshakes"][0]["failure"], "ssl_unknown_authority");
        assert_eq!(k["tls_handshakes"][0]["x_handshake_failure"], Value::Null);
        assert_eq!(
            k["tls_handshakes"][0]["x_interception_ca"],
            "Qaznet Trust Network"
        );
        let urls: Vec<&str> = k["requests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["request"]["url"].as_str().unwrap())
            .collect();
        assert_eq!(urls, ["https://site.kz/home", "https://site.kz/"]);
        assert_eq!(k["x_witness"]["extra_requests"][0]["x_role"], "decoy_host");
    }

    #[test]
    fn the_ab_test_is_under_x_witness() {
        use crate::model::{AbKind, AbName, AbObservation, AbTrial, AbTrigger};
        let mut m = accessible();
        assert_eq!(to_ooni(&m)["test_keys"]["x_witness"]["ab"], json!([]));
        m.ab.push(AbObservation {
            kind: AbKind::Tls,
            addr: sa("198.18.0.10:443"),
            name: "site.kz".into(),
            innocent: "example.com".into(),
            trigger: AbTrigger::Reset,
            trials: vec![AbTrial {
                sent: AbName::None,
                t_ms: 1.0,
                duration_ms: 2.0,
                failure: Some(Failure::ConnectionReset),
                leaf_sha256: None,
                valid_for_site: None,
                interception_ca: None,
                status: None,
                blockpage: None,
            }],
            t_ms: 1.0,
            duration_ms: 3.0,
        });
        let ab = &to_ooni(&m)["test_keys"]["x_witness"]["ab"][0];
        assert_eq!(ab["kind"], "tls");
        assert_eq!(ab["trigger"], "reset");
        assert_eq!(ab["trials"][0]["sent"], "none");
        assert_eq!(ab["trials"][0]["failure"], "connection_reset");
    }

    #[test]
    fn the_probe_address_never_appears() {
        // Whatever the record, the export adds no address of its own but the scrub marker.
        let o = to_ooni_line(&accessible());
        assert!(o.contains("\"probe_ip\":\"127.0.0.1\""));
        assert_eq!(o.matches("127.0.0.1").count(), 1);
    }
}
