//! What the status page and the CSV exports say in two corner cases: a network whose every
//! verdict is `offline` (one probe: too few for a shutdown event) is shown offline, not online;
//! and an export with no row still has its header row.

#[macro_use]
mod common;

use chrono::{TimeDelta, Utc};
use common::{measurement, spawn_on, test_config, Db};
use witness_core::model::Status;

/// The "State" cell of the networks table for `AS{asn}`.
fn network_state(html: &str, asn: u32) -> String {
    let cell = format!("<tr><td>AS{asn}</td>");
    let row = html
        .split(&cell)
        .nth(1)
        .unwrap_or_else(|| panic!("no row for AS{asn}:\n{html}"));
    let row = &row[..row.find("</tr>").expect("row end")];
    let last = row.rsplit("<td>").next().expect("cells");
    last.trim_end_matches("</td>").to_string()
}

async fn a_network_that_is_all_offline_is_shown_offline(db: Db) {
    let app = spawn_on(db, test_config()).await;
    let (_, offline_probe) = app.register().await;
    let (_, online_probe) = app.register().await;
    let t = Utc::now() - TimeDelta::minutes(10);
    app.upload(
        &offline_probe,
        &[
            measurement("a.example.org", 64510, Status::Offline, None, t),
            measurement("b.example.org", 64510, Status::Offline, None, t),
        ],
    )
    .await;
    app.upload(
        &online_probe,
        &[
            measurement("a.example.org", 64511, Status::Accessible, None, t),
            measurement("b.example.org", 64511, Status::Offline, None, t),
        ],
    )
    .await;
    let html = app.get_text("/").await;
    assert_eq!(network_state(&html, 64510), "<strong>offline</strong>");
    // One site reachable: the network is online.
    assert_eq!(network_state(&html, 64511), "online");
    app.stop().await;
}

async fn empty_csv_exports_have_their_header_row(db: Db) {
    let app = spawn_on(db, test_config()).await;
    for (path, header) in [
        (
            "/api/v1/status?format=csv",
            "domain,asn,country,category,status,method,probes,blocked_probes,accessible_probes,blocked_share,last_measured,censor_hop,censor_asn,hop_agreeing",
        ),
        (
            "/api/v1/events?format=csv",
            "id,kind,domain,asn,country,category,method,started_at,ended_at,probes,probes_considered,measurements,share,rule,censor_hop,censor_asn,previous_censor_hop,previous_censor_asn",
        ),
        (
            "/api/v1/sites/nothing.example.org/history?format=csv",
            "hour,asn,country,status,method,measurements,probes",
        ),
    ] {
        let text = app.get_text(path).await;
        assert_eq!(text, format!("{header}\n"), "{path}");
    }
    // With a row, the header comes once, first.
    let (_, probe) = app.register().await;
    app.upload(
        &probe,
        &[measurement(
            "a.example.org",
            64510,
            Status::Accessible,
            None,
            Utc::now() - TimeDelta::minutes(5),
        )],
    )
    .await;
    let text = app.get_text("/api/v1/status?format=csv").await;
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines[0].starts_with("domain,asn,"), "{text}");
    app.stop().await;
}

both_stores!(
    a_network_that_is_all_offline_is_shown_offline,
    empty_csv_exports_have_their_header_row,
);
