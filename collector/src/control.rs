//! The control service: the probe's own measurement code run from the collector's vantage point.
//!
//! The single call into the probe crate is [`run_control`], so the signature lives in one place.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use witness_core::checks::MeasureConfig;
use witness_core::model::{ControlRequest, ControlResponse};
use witness_core::spec::ConfigError;

pub use witness_core::control::{ControlRefusal, ControlServiceConfig};

use crate::config::ControlConfig;

/// A `[control]` section the control service cannot run with; the message names the key.
#[derive(Debug, thiserror::Error)]
pub enum ControlConfigError {
    /// `control.resolver` is not a resolver address.
    #[error("control.resolver: {0}")]
    Resolver(ConfigError),
    /// A file of `control.extra_ca_files` could not be read as certificates.
    #[error("control.extra_ca_files: {0}")]
    ExtraCaFile(ConfigError),
    /// `control.step_timeout_secs` is outside what a measurement step may take.
    #[error("control.step_timeout_secs: {0} is out of range; use 0.1 to 120")]
    StepTimeout(f64),
}

/// Build the measurement configuration of the control from `[control]`.
pub fn service_config(cfg: &ControlConfig) -> Result<ControlServiceConfig, ControlConfigError> {
    let resolver =
        witness_core::spec::parse_resolver(&cfg.resolver).map_err(ControlConfigError::Resolver)?;
    let mut extra_cas = Vec::new();
    for f in &cfg.extra_ca_files {
        extra_cas
            .extend(witness_core::spec::load_ca_file(f).map_err(ControlConfigError::ExtraCaFile)?);
    }
    let in_range = cfg.step_timeout_secs > 0.0 && cfg.step_timeout_secs <= 120.0;
    if !in_range {
        return Err(ControlConfigError::StepTimeout(cfg.step_timeout_secs));
    }
    let measure = MeasureConfig {
        resolver,
        extra_cas,
        timeout: std::time::Duration::from_secs_f64(cfg.step_timeout_secs),
        source_address: cfg.source_address,
        ..MeasureConfig::default()
    }
    .with_lab_public(cfg.lab_public_ranges.clone());
    Ok(ControlServiceConfig {
        measure,
        allow_private: cfg.allow_private,
        allowed_ports: cfg.allowed_ports.clone(),
    })
}

/// Control measurements in flight per probe, so one probe cannot take every slot of
/// `control.max_concurrency`. A probe over its share waits for one of its own slots (its
/// requests queue behind each other, not behind other probes'); the global slots are only
/// taken once it has one.
#[derive(Debug)]
pub struct ProbeSlots {
    per_probe: usize,
    map: Mutex<HashMap<String, Arc<Semaphore>>>,
}

/// One probe's slot; released on drop.
#[derive(Debug)]
pub struct ProbeSlot<'a> {
    key: String,
    permit: Option<OwnedSemaphorePermit>,
    slots: &'a ProbeSlots,
}

impl ProbeSlots {
    /// At most `per_probe` at once for each key.
    pub fn new(per_probe: usize) -> Self {
        ProbeSlots {
            per_probe,
            map: Mutex::default(),
        }
    }

    /// A slot for `key`, waiting at most `wait` for one; `None` when none came.
    pub async fn acquire(&self, key: &str, wait: Duration) -> Option<ProbeSlot<'_>> {
        let sem = {
            let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(key.to_string())
                .or_insert_with(|| Arc::new(Semaphore::new(self.per_probe)))
                .clone()
        };
        let permit = tokio::time::timeout(wait, sem.acquire_owned()).await;
        let slot = ProbeSlot {
            key: key.to_string(),
            permit: permit.ok().and_then(Result::ok),
            slots: self,
        };
        // On a timeout the slot is dropped here, which also tidies the map.
        slot.permit.is_some().then_some(slot)
    }
}

impl Drop for ProbeSlot<'_> {
    fn drop(&mut self) {
        drop(self.permit.take());
        let mut map = self.slots.map.lock().unwrap_or_else(|p| p.into_inner());
        // Forget the probe once nobody holds or waits for its semaphore (the map's own
        // reference is the only one left).
        if map
            .get(&self.key)
            .is_some_and(|sem| Arc::strong_count(sem) == 1)
        {
            map.remove(&self.key);
        }
    }
}

/// Measure `req.url` for a probe. Refusals (bad URL, private target) are the client's problem;
/// see the handler for how each maps to a status.
pub async fn run_control(
    req: &ControlRequest,
    cfg: &ControlServiceConfig,
) -> Result<ControlResponse, ControlRefusal> {
    witness_core::control::serve_control(req, cfg).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn probe_slots_cap_each_probe_and_release_on_drop() {
        let slots = ProbeSlots::new(2);
        let wait = Duration::from_millis(50);
        let a1 = slots.acquire("a", wait).await.unwrap();
        let a2 = slots.acquire("a", wait).await.unwrap();
        assert!(slots.acquire("a", wait).await.is_none());
        let b = slots.acquire("b", wait).await.unwrap();
        drop(a1);
        assert!(slots.acquire("a", wait).await.is_some());
        drop((a2, b));
        assert!(
            slots.map.lock().unwrap().is_empty(),
            "idle probes are forgotten"
        );
    }

    #[test]
    fn default_control_config_builds() {
        let c = service_config(&ControlConfig::default()).unwrap();
        assert!(!c.allow_private);
        let bad = ControlConfig {
            resolver: "not-an-address".into(),
            ..ControlConfig::default()
        };
        assert!(matches!(
            service_config(&bad),
            Err(ControlConfigError::Resolver(_))
        ));
        let e = service_config(&bad).unwrap_err().to_string();
        assert!(e.starts_with("control.resolver: "), "{e}");
    }
}
