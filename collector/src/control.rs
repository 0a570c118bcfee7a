//! The control service: the probe's own measurement code run from the collector's vantage point.
//!
//! The single call into the probe crate is [`run_control`], so the signature lives in one place.

use witness_core::checks::MeasureConfig;
use witness_core::model::{ControlRequest, ControlResponse};

pub use witness_core::control::{ControlRefusal, ControlServiceConfig};

use crate::config::ControlConfig;

/// Build the measurement configuration of the control from `[control]`.
pub fn service_config(cfg: &ControlConfig) -> Result<ControlServiceConfig, String> {
    let resolver = witness_core::spec::parse_resolver(&cfg.resolver)
        .map_err(|e| format!("control.resolver: {e}"))?;
    let mut extra_cas = Vec::new();
    for f in &cfg.extra_ca_files {
        extra_cas.extend(
            witness_core::spec::load_ca_file(f)
                .map_err(|e| format!("control.extra_ca_files: {e}"))?,
        );
    }
    let in_range = cfg.step_timeout_secs > 0.0 && cfg.step_timeout_secs <= 120.0;
    if !in_range {
        return Err(format!(
            "control.step_timeout_secs: {} is out of range; use 0.1 to 120",
            cfg.step_timeout_secs
        ));
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
    })
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

    #[test]
    fn default_control_config_builds() {
        let c = service_config(&ControlConfig::default()).unwrap();
        assert!(!c.allow_private);
        let bad = ControlConfig {
            resolver: "not-an-address".into(),
            ..ControlConfig::default()
        };
        assert!(service_config(&bad)
            .unwrap_err()
            .contains("control.resolver"));
    }
}
