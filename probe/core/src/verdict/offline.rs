//! Stage 1, offline: nothing measured without a working network says anything about a site.

use crate::failure::Failure;
use crate::model::Status;

use super::evidence::Evidence;
use super::facts::{Facts, Outcome};

/// Offline when the run found no network (`run_offline`), or a step was skipped for that reason: nothing
/// measured in that state says anything about the site.
pub(super) fn stage(f: &Facts, run_offline: bool, ev: &mut Vec<Evidence>) -> Option<Outcome> {
    let m = f.m;
    let skipped = m
        .dns
        .iter()
        .any(|o| o.failure == Some(Failure::NetworkOffline))
        || m.tcp
            .iter()
            .any(|o| o.failure == Some(Failure::NetworkOffline))
        || m.tls
            .iter()
            .any(|o| o.failure == Some(Failure::NetworkOffline))
        || m.http
            .iter()
            .any(|o| o.failure == Some(Failure::NetworkOffline));
    if !(run_offline || m.connectivity.offline || skipped) {
        return None;
    }
    let c = &m.connectivity;
    if c.anchors_tried > 0 {
        ev.push(Evidence::Anchors {
            ok: c.anchors_ok,
            tried: c.anchors_tried,
        });
    }
    if skipped {
        ev.push(Evidence::NetworkOffline);
    }
    let why = if c.anchors_tried > 0 {
        format!(
            "{} of {} reference hosts answered",
            c.anchors_ok, c.anchors_tried
        )
    } else {
        "no reference host answered".to_string()
    };
    Some(Outcome::new(
        Status::Offline,
        None,
        format!("the network looks cut off: {why}, so this says nothing about the site itself"),
    ))
}

#[cfg(test)]
pub(super) mod tests {
    use super::super::testkit::*;
    use crate::model::{Measurement, Status};

    pub(in crate::verdict) const CASES: &[Case] = cases! {
        offline Offline => Offline;
    };

    #[test]
    fn table() {
        check(CASES);
    }

    #[test]
    fn offline_says_why() {
        let v = verdict_of(offline, Ctx::Offline);
        assert!(
            v.reason.starts_with("the network looks cut off"),
            "{}",
            v.reason
        );
        assert!(cites(&v, "connectivity.anchors=0/4"), "{v:?}");
        // A step skipped because the network was down is offline even without the run's flag.
        let mut m = tcp_blocked();
        m.tcp[0].failure = Some(crate::failure::Failure::NetworkOffline);
        let v = super::super::decide(&m, &ctx(Ctx::Plain));
        assert_eq!(v.status, Status::Offline);
        assert!(cites(&v, "failure=network_offline"), "{v:?}");
    }
}
