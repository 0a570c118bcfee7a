//! Unit tests of the engine's pure parts: the decisions made from observations, without a
//! network.

use std::time::Instant;

use super::connectivity::{ipv6_state, resolver_chain_summary};
use super::fetch::{deadline_hop, pick_addrs, url_host};
use super::measure::wants_fresh_control;
use super::{Engine, Observations};
use crate::checks::MeasureConfig;
use crate::failure::Failure;
use crate::model::{ControlResponse, HttpObservation, ResolverCheck, Software, Step};

/// A hop that loaded: status 200, no failure.
fn loaded() -> HttpObservation {
    HttpObservation {
        failure: None,
        failed_step: None,
        status: Some(200),
        ..deadline_hop(0, "http://a.example/", None, Step::Http, Instant::now())
    }
}

/// A hop that failed at the HTTP step.
fn failed() -> HttpObservation {
    deadline_hop(0, "http://a.example/", None, Step::Http, Instant::now())
}

fn control(http: Vec<HttpObservation>, age_secs: Option<u64>) -> ControlResponse {
    ControlResponse {
        software: Software::default(),
        measured_at: chrono::Utc::now(),
        dns: vec![],
        tcp: vec![],
        tls: vec![],
        http,
        age_secs,
    }
}

fn here(http: Vec<HttpObservation>) -> Observations {
    Observations {
        http,
        ..Observations::default()
    }
}

#[test]
fn a_fresh_control_is_asked_only_for_an_old_view_that_loaded_where_we_failed() {
    assert!(
        failed().failure.is_some(),
        "the deadline hop must be a failure"
    );
    // Old view, page loaded there, failed here: worth a fresh look.
    assert!(wants_fresh_control(
        &here(vec![failed()]),
        &control(vec![loaded()], Some(60))
    ));
    // A view just measured is fresh already.
    assert!(!wants_fresh_control(
        &here(vec![failed()]),
        &control(vec![loaded()], Some(59))
    ));
    assert!(!wants_fresh_control(
        &here(vec![failed()]),
        &control(vec![loaded()], None)
    ));
    // The page loaded here too, or failed at the control as well: nothing to reconcile.
    assert!(!wants_fresh_control(
        &here(vec![loaded()]),
        &control(vec![loaded()], Some(600))
    ));
    assert!(!wants_fresh_control(
        &here(vec![failed()]),
        &control(vec![failed()], Some(600))
    ));
}

fn check(transport: &str, failure: Option<Failure>) -> ResolverCheck {
    ResolverCheck {
        transport: transport.into(),
        resolver: format!("{transport}.example@192.0.2.1:443"),
        duration_ms: 1.0,
        failure,
    }
}

#[test]
fn the_resolver_chain_is_summarised_only_when_its_first_resolver_failed() {
    assert_eq!(resolver_chain_summary(&[]), None);
    assert_eq!(resolver_chain_summary(&[check("doh", None)]), None);
    let fell_back = resolver_chain_summary(&[
        check("doh", Some(Failure::ConnectionReset)),
        check("dot", None),
    ])
    .expect("a summary");
    assert!(fell_back.contains("connection_reset"), "{fell_back}");
    assert!(fell_back.contains("using dot:"), "{fell_back}");
    let none = resolver_chain_summary(&[
        check("doh", Some(Failure::ConnectionReset)),
        check("dot", Some(Failure::DnsTimeout)),
    ])
    .expect("a summary");
    assert!(none.contains("no resolver of the chain answered"), "{none}");
    assert!(none.contains("dns_timeout"), "{none}");
}

#[test]
fn url_host_drops_ipv6_brackets() {
    let host = |u: &str| url_host(&url::Url::parse(u).unwrap());
    assert_eq!(host("http://[::1]:8080/x"), Some("::1".into()));
    assert_eq!(host("https://Example.COM/"), Some("example.com".into()));
    assert_eq!(host("http://127.0.0.1/"), Some("127.0.0.1".into()));
}

#[test]
fn the_builder_refuses_bogon_targets_unless_the_danger_door_is_named() {
    let safe = Engine::builder(MeasureConfig::default()).build().unwrap();
    assert!(!safe.allow_bogon_targets);
    let lab = Engine::builder(MeasureConfig::default())
        .danger_allow_bogon_targets(true)
        .build()
        .unwrap();
    assert!(lab.allow_bogon_targets);
}

#[test]
fn both_families_are_measured_when_a_name_has_many_addresses() {
    let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
    let many_v4: Vec<_> = (1..=6).map(|i| ip(&format!("192.0.2.{i}"))).collect();
    let v6 = [ip("2001:db8::1"), ip("2001:db8::2")];
    let all: Vec<_> = many_v4.iter().chain(&v6).copied().collect();
    assert_eq!(
        pick_addrs(&all, 4),
        vec![
            ip("192.0.2.1"),
            ip("2001:db8::1"),
            ip("192.0.2.2"),
            ip("2001:db8::2")
        ]
    );
    // One family alone: the first `max`, in order.
    assert_eq!(pick_addrs(&many_v4, 4), many_v4[..4].to_vec());
    assert_eq!(pick_addrs(&v6, 4), v6.to_vec());
    // An odd cap keeps IPv4 first, as resolvers list it.
    assert_eq!(
        pick_addrs(&all, 3),
        vec![ip("192.0.2.1"), ip("2001:db8::1"), ip("192.0.2.2")]
    );
    assert!(pick_addrs(&[], 4).is_empty());
}

#[test]
fn ipv6_is_broken_only_when_ipv4_works_and_no_anchor_answers_over_ipv6() {
    /// IPv4 reached an anchor; each anchor's IPv6 result; the finding.
    type Case = (bool, &'static [Option<bool>], Option<bool>);
    let cases: &[Case] = &[
        // One anchor answered over IPv6: it works.
        (true, &[Some(false), Some(true)], Some(true)),
        (false, &[Some(true)], Some(true)),
        // Tried over IPv6, none answered, IPv4 works: broken.
        (true, &[Some(false), None, Some(false)], Some(false)),
        // Nothing works at all: offline says it, not "IPv6 broken".
        (false, &[Some(false)], None),
        // No anchor has an IPv6 address, or no anchors: unknown.
        (true, &[None, None], None),
        (true, &[], None),
    ];
    for (v4_ok, v6, want) in cases {
        assert_eq!(
            ipv6_state(*v4_ok, v6.iter().copied()),
            *want,
            "{v4_ok} {v6:?}"
        );
    }
}
