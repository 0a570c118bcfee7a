//! The per-target pipeline: DNS, the fetch, the control service and the extra local evidence
//! of one target, and the record of a target measured offline.

use std::net::IpAddr;
use std::time::Instant;

use chrono::Utc;
use uuid::Uuid;

use super::{Engine, Observations};
use crate::checks::dns::{ms_since, FirstResponse};
use crate::checks::CONTROL_GRACE;
use crate::error::ControlError;
use crate::model::{
    ConnectivitySummary, ControlResponse, HttpObservation, Measurement, Software, Status, Verdict,
    SCHEMA_VERSION,
};
use crate::slots::{self};
use crate::targets::Target;

impl Engine {
    /// Measure one target, with the control asked concurrently. The verdict is left to
    /// [`finalize_verdicts`], which decides once per target when the run's baseline is known.
    ///
    /// Connecting starts with the network resolver's first answer, while its query keeps
    /// listening for an injected second one (the linger) and the encrypted resolver and the
    /// control service answer: those only wait, so they overlap the fetch instead of preceding
    /// it.
    pub async fn measure(&self, target: &Target, connectivity: ConnectivitySummary) -> Measurement {
        let started_at = Utc::now();
        let t0 = Instant::now();
        let deadline = tokio::time::Instant::from_std(t0) + self.cfg.target_deadline;
        let url = &target.parsed;
        let main = async {
            let (first, addrs) = slots::waiting(self.resolve_first(url, t0)).await;
            let fetch = async {
                let out = self.fetch(url, &addrs, t0, deadline).await;
                slots::done();
                out
            };
            // The control is asked (or its batch line awaited) once the name resolved here.
            let control = async {
                let c = self.control.as_ref()?;
                let answer = tokio::time::timeout_at(
                    deadline + CONTROL_GRACE,
                    c.measure(&target.url, &addrs),
                )
                .await;
                Some(answer.unwrap_or(Err(ControlError::Deadline)))
            };
            let linger = futures::future::join_all(first.into_iter().map(FirstResponse::linger));
            let (obs, control, linger) = tokio::join!(fetch, control, linger);
            (obs, control, linger, addrs)
        };
        let ((mut obs, mut control, net_dns, addrs), ctl_dns) =
            tokio::join!(main, self.query_control_resolvers(url, t0));
        if let (Some(c), Some(Ok(reply))) = (&self.control, &control) {
            if wants_fresh_control(&obs, &reply.control) {
                let fresh =
                    tokio::time::timeout_at(deadline + CONTROL_GRACE, c.measure_fresh(&target.url));
                if let Ok(Some(Ok(reply))) = fresh.await {
                    control = Some(Ok(reply));
                }
            }
        }
        obs.dns = net_dns;
        obs.dns.extend(ctl_dns);
        let control_http = match &control {
            Some(Ok(reply)) => reply.control.http.as_slice(),
            _ => &[],
        };
        let (extra, second, ab) = tokio::join!(
            self.local_evidence(url, &addrs, &obs, control_http, t0, deadline),
            self.control_address_fetch(url, &addrs, &obs, t0, deadline),
            self.ab_test(url, &obs, t0, deadline)
        );
        for more in [extra, second] {
            obs.tcp.extend(more.tcp);
            obs.tls.extend(more.tls);
            obs.http.extend(more.http);
        }
        let mut probe = self.probe.clone();
        let (control, control_failure) = match control {
            None => (None, None),
            Some(Ok(reply)) => {
                if let Some(ip) = reply.meta.your_address {
                    self.own.learn_public(ip);
                }
                if probe.asn.is_none() {
                    probe.asn = reply.meta.your_asn;
                }
                if probe.country.is_none() {
                    probe.country = reply.meta.your_country.clone();
                }
                (Some(reply.control), None)
            }
            Some(Err(e)) => (None, Some(crate::scrub::scrub_ips(&e.to_string()))),
        };
        Measurement {
            schema_version: SCHEMA_VERSION,
            id: Uuid::now_v7(),
            software: Software::default(),
            url: target.url.clone(),
            domain: target.domain.clone(),
            category_code: target.category_code.clone(),
            started_at,
            runtime_ms: ms_since(t0),
            probe,
            dns: obs.dns,
            tcp: obs.tcp,
            tls: obs.tls,
            http: obs.http,
            control,
            control_failure,
            path: None,
            ab: ab.into_iter().collect(),
            app: None,
            connectivity,
            verdict: Verdict::new(Status::Inconclusive, None, "not analysed yet"),
        }
    }

    pub(super) fn offline_measurement(
        &self,
        t: &Target,
        connectivity: &ConnectivitySummary,
    ) -> Measurement {
        Measurement {
            schema_version: SCHEMA_VERSION,
            id: Uuid::now_v7(),
            software: Software::default(),
            url: t.url.clone(),
            domain: t.domain.clone(),
            category_code: t.category_code.clone(),
            started_at: Utc::now(),
            runtime_ms: 0.0,
            probe: self.probe.clone(),
            dns: vec![],
            tcp: vec![],
            tls: vec![],
            http: vec![],
            control: None,
            control_failure: Some("not attempted: no connectivity".into()),
            path: None,
            ab: vec![],
            app: None,
            connectivity: connectivity.clone(),
            verdict: Verdict::new(Status::Offline, None, "not analysed yet"),
        }
    }

    /// The control service's measurement of `url`: the same steps, no control of its own.
    pub async fn control_measure(&self, url: &url::Url, probe_addrs: &[IpAddr]) -> ControlResponse {
        let t0 = Instant::now();
        let measured_at = Utc::now();
        let obs = self.observe(url, probe_addrs, t0).await;
        ControlResponse {
            software: Software::default(),
            measured_at,
            dns: obs.dns,
            tcp: obs.tcp,
            tls: obs.tls,
            http: obs.http,
            age_secs: None,
        }
    }
}

/// A shared control view older than this, which says the site worked where it failed here, is
/// worth a fresh look (the site may have gone down since).
pub(super) const FRESH_CONTROL_AFTER_SECS: u64 = 60;

/// Did the page fail here while a shared control view, older than
/// [`FRESH_CONTROL_AFTER_SECS`], got one? Then the run asks for a fresh measurement.
pub(super) fn wants_fresh_control(obs: &Observations, control: &ControlResponse) -> bool {
    let got_page = |http: &[HttpObservation]| {
        http.iter()
            .any(|h| h.failure.is_none() && h.status.is_some_and(|s| s < 300))
    };
    control.age_secs.unwrap_or(0) >= FRESH_CONTROL_AFTER_SECS
        && got_page(&control.http)
        && !got_page(&obs.http)
}
