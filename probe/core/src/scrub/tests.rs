//! Table tests: every encoding of the probe's address a censor may echo, and texts that must
//! stay as they are.

use super::*;

const V4: &str = "198.51.100.77";
const V6: &str = "2001:db8:1234:5678::abcd";

fn needles() -> Needles {
    Needles::new([V4.parse().unwrap(), V6.parse().unwrap()])
}

/// Standard (or URL-safe) base64, for building the cases.
pub(crate) fn b64(data: &[u8], url: bool) -> String {
    let abc: &[u8] = if url {
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    } else {
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    };
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..=chunk.len() {
            out.push(abc[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    while out.len() % 4 != 0 {
        out.push('=');
    }
    out
}

fn percent(s: &str) -> String {
    s.bytes().map(|b| format!("%{b:02X}")).collect()
}

/// Every encoding of [`V4`] and [`V6`] that must be found.
fn encodings() -> Vec<(&'static str, String)> {
    let n: u32 = u32::from_be_bytes([198, 51, 100, 77]);
    let mut v = vec![
        ("dotted", V4.to_string()),
        ("padded", "198.051.100.077".into()),
        ("dashed host", "198-51-100-77.dsl.isp.kz".into()),
        ("underscores", "198_51_100_77".into()),
        ("hex", format!("0x{n:08x}")),
        ("hex upper bare", format!("{n:08X}")),
        ("dotted hex", "0xc6.0x33.0x64.0x4d".into()),
        ("dotted bare hex", "c6.33.64.4d".into()),
        ("decimal", n.to_string()),
        ("decimal little-endian", n.swap_bytes().to_string()),
        ("octal", format!("0{n:o}")),
        ("dotted octal", "0306.063.0144.0115".into()),
        ("reversed", "77.100.51.198".into()),
        ("in-addr.arpa", "77.100.51.198.in-addr.arpa.".into()),
        ("twelve digits", "198051100077".into()),
        ("mapped dotted", "::ffff:198.51.100.77".into()),
        ("mapped hex", "::ffff:c633:644d".into()),
        ("mapped hex upper padded", "0:0:0:0:0:FFFF:C633:644D".into()),
        ("compatible", "::c633:644d".into()),
        ("6to4", "2002:c633:644d::1".into()),
        ("nat64", "64:ff9b::c633:644d".into()),
        ("teredo", "2001:0:4136:e378:8000:63bf:39cc:9bb2".into()),
        ("percent", percent(V4)),
        ("percent twice", percent(V4).replace('%', "%25")),
        ("percent dots only", "198%2E51%2e100%2E77".into()),
        (
            "html entities",
            V4.bytes().map(|b| format!("&#{b};")).collect(),
        ),
        ("html hex entities", "198&#x2e;51&#x2E;100&#x2e;77".into()),
        ("js escapes", "198\\x2e51\\u002e100\\x2E77".into()),
        ("query", format!("http://block.kz/?ip={V4}&r=1")),
        ("mixed separators", "198.51-100_77".into()),
        ("glued", format!("you-are{V4}ok")),
        ("raw bytes base64", b64(&[198, 51, 100, 77], false)),
        // IPv6: the /64 in every form.
        ("v6 compressed", V6.into()),
        ("v6 other host in /64", "2001:db8:1234:5678::1".into()),
        (
            "v6 full padded upper",
            "2001:0DB8:1234:5678:0000:0000:0000:ABCD".into(),
        ),
        ("v6 bracketed port", "[2001:db8:1234:5678::abcd]:443".into()),
        ("v6 hex run", "20010db812345678000000000000abcd".into()),
        (
            "v6 ip6.arpa",
            "d.c.b.a.0.0.0.0.0.0.0.0.0.0.0.0.8.7.6.5.4.3.2.1.8.b.d.0.1.0.0.2.ip6.arpa".into(),
        ),
        (
            "v6 dashed",
            "2001-db8-1234-5678--abcd.ipv6-literal.net".into(),
        ),
        ("v6 percent", percent(V6)),
    ];
    for (name, text) in [("v4", V4), ("v6", V6)] {
        for pre in ["", "x", "xy", "ip="] {
            let plain = format!("{pre}{text}&");
            let label = Box::leak(format!("base64 {name} at {}", pre.len()).into_boxed_str());
            v.push((label, b64(plain.as_bytes(), false)));
            let label = Box::leak(format!("base64url {name} at {}", pre.len()).into_boxed_str());
            v.push((label, b64(plain.as_bytes(), true)));
        }
    }
    v.push((
        "base64 in query",
        format!("/b?d={}", b64(V4.as_bytes(), false)),
    ));
    let mut binary = vec![0xff, 0xfe, 0x00, 0x01, 0x80, 0x9f, 0xc3];
    binary.extend_from_slice(V4.as_bytes());
    binary.extend_from_slice(&[0x00, 0xff]);
    v.push(("base64 of binary around it", b64(&binary, false)));
    v.push((
        "base64 glued",
        format!("ab{}", b64(b"ip=198.51.100.77", false)),
    ));
    v
}

#[test]
fn every_encoding_is_found_and_scrubbed() {
    let n = needles();
    for (name, enc) in encodings() {
        for text in [
            enc.clone(),
            format!("Your address is {enc}, welcome"),
            format!("<b>{enc}</b>"),
        ] {
            assert!(n.found_in(&text), "{name}: not found in {text:?}");
            let out = n.scrub(&text);
            assert!(!n.found_in(&out), "{name}: survives in {out:?}");
            assert!(out.contains(SCRUBBED), "{name}: {out:?}");
            assert!(!out.contains(&enc), "{name}: {out:?}");
        }
    }
}

#[test]
fn the_rest_of_the_text_stays() {
    let n = needles();
    assert_eq!(
        n.scrub("peer 198.51.100.77:443 reset"),
        "peer [scrubbed]:443 reset"
    );
    assert_eq!(
        n.scrub("Location: http://block.kz/?ip=198-51-100-77&r=1"),
        "Location: http://block.kz/?ip=[scrubbed]&r=1"
    );
    let kept = [
        "server 198.51.100.78 and 8.8.8.8",
        "neighbours 198.51.100.7 and 198.51.100.770 and 1198.51.100.77x0",
        "at 12:30:45, version 1.2.3",
        "2001:db8:1234:5679::abcd is another /64",
        "0190a5e2-7c3b-7d1e-8f00-2b9c5d4e3f21",
        "text/html; charset=utf-8",
        "Mon, 07 Dec 2026 21:30:00 GMT",
        "fe80::1 is somebody's link-local",
        "",
    ];
    for k in kept {
        assert_eq!(n.scrub(k), k);
        assert!(!n.found_in(k), "{k}");
    }
}

#[test]
fn link_local_is_matched_whole() {
    let n = Needles::new(["fe80::1:2".parse().unwrap()]);
    assert!(n.found_in("fe80::1:2%eth0"));
    assert!(!n.found_in("fe80::1:3"));
}

#[test]
fn nothing_to_find_changes_nothing() {
    let n = Needles::new([]);
    assert!(n.is_empty());
    assert_eq!(n.scrub(V4), V4);
}

#[test]
fn pieces_that_join_up_are_scrubbed_whole() {
    // Scrubbing the inner match must not leave a new match behind.
    let n = needles();
    for t in [
        "198.51.198.51.100.77.100.77",
        "1981.51.100.77",
        "%3198.51.100.77",
    ] {
        let out = n.scrub(t);
        assert!(!n.found_in(&out), "{t} -> {out}");
    }
}

#[test]
fn own_addresses_remember_and_scrub() {
    let own = OwnAddresses::default();
    own.add("127.0.0.1".parse().unwrap());
    assert!(own.all().is_empty(), "loopback is not ours unless declared");
    own.declare("127.0.0.77".parse().unwrap());
    assert_eq!(
        own.scrub("from 127-0-0-77 via 127.0.0.1"),
        "from [scrubbed] via 127.0.0.1"
    );
    assert_eq!(own.public(), None);
    own.learn_public(V4.parse().unwrap());
    assert_eq!(own.public(), Some(V4.parse().unwrap()));
    assert_eq!(own.scrub("ip=198.51.100.77"), "ip=[scrubbed]");
}

#[test]
fn records_are_scrubbed_in_every_string_and_key() {
    use crate::model::*;
    let own = OwnAddresses::default();
    own.learn_public(V4.parse().unwrap());
    let answer = |a: &str| DnsAnswer {
        addr: a.parse().unwrap(),
        ttl: 60,
        bogon: false,
    };
    let mut m = Measurement {
        schema_version: SCHEMA_VERSION,
        id: uuid::Uuid::from_u128(1),
        software: Software::default(),
        url: "https://site.kz/".into(),
        domain: "site.kz".into(),
        category_code: None,
        started_at: chrono::DateTime::from_timestamp(0, 0).unwrap(),
        runtime_ms: 0.0,
        probe: ProbeNetwork::default(),
        dns: vec![DnsObservation {
            role: ResolverRole::Network,
            transport: "udp".into(),
            resolver: "203.0.113.53:53".into(),
            query: "site.kz".into(),
            query_type: QueryType::A,
            t_ms: 0.0,
            duration_ms: 5.0,
            failure: None,
            rcode: Some("NOERROR".into()),
            answers: vec![answer(V4), answer("203.0.113.1")],
            cnames: vec!["77.100.51.198.in-addr.arpa.".into(), "cdn.site.kz".into()],
            late_responses: vec![],
        }],
        tcp: vec![],
        tls: vec![],
        http: vec![],
        control: None,
        control_failure: Some(format!(
            "the control said {}",
            b64(b"ip=198.51.100.77", true)
        )),
        path: None,
        ab: vec![],
        app: None,
        connectivity: ConnectivitySummary::default(),
        verdict: Verdict::new(Status::Inconclusive, None, "x"),
    };
    m.verdict.evidence = vec![format!("answer {V4} is not the site's")];
    record::scrub_measurement(&mut m, &own).unwrap();
    let text = serde_json::to_string(&m).unwrap();
    assert!(!own.needles().found_in(&text), "{text}");
    assert_eq!(m.dns[0].answers[0].addr.to_string(), "0.0.0.0");
    assert_eq!(m.dns[0].answers[1].addr.to_string(), "203.0.113.1");
    assert_eq!(m.dns[0].cnames[1], "cdn.site.kz");
    assert!(m.dns[0].cnames[0].contains(SCRUBBED));
    assert!(m.verdict.evidence[0].contains(SCRUBBED));
}

#[test]
fn json_keys_are_scrubbed() {
    let n = needles();
    let mut v = serde_json::json!({"x-198-51-100-77": ["a", {"ip": "c6.33.64.4d"}]});
    assert_eq!(record::scrub_value(&mut v, &n), 2);
    assert_eq!(
        v,
        serde_json::json!({"x-[scrubbed]": ["a", {"ip": "[scrubbed]"}]})
    );
}

#[test]
fn hostile_texts_cost_linear_time() {
    let n = needles();
    let start = std::time::Instant::now();
    for t in [
        ":".repeat(64 * 1024),
        "1:".repeat(32 * 1024),
        "1.".repeat(32 * 1024),
        "QUJD".repeat(16 * 1024),
        "%25".repeat(20 * 1024),
    ] {
        let _ = n.scrub(&t);
    }
    let took = start.elapsed();
    assert!(took < std::time::Duration::from_secs(5), "{took:?}");
}

#[test]
#[ignore = "a measurement, not a check: cargo test -p witness-core --lib scrub_cost -- --ignored --nocapture"]
fn scrub_cost() {
    let n = needles();
    // A realistic record's text: headers, a certificate, evidence, hashes, times.
    let mut record = String::new();
    for i in 0..40 {
        record.push_str(&format!(
            r#"{{"t_ms":{i}.25,"addr":"203.0.113.{i}:443","headers":[["server","nginx/1.25.{i}"],["date","Mon, 07 Dec 2026 21:30:00 GMT"],["content-type","text/html; charset=utf-8"]],"sha256":"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","title":"Главная страница {i}","subject":"CN=site{i}.kz, O=Example LLP"}},"#
        ));
    }
    let start = std::time::Instant::now();
    let rounds = 20;
    for _ in 0..rounds {
        assert!(!n.found_in(&record));
    }
    eprintln!(
        "{} bytes: {:?} per record",
        record.len(),
        start.elapsed() / rounds
    );
}
