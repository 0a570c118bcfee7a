//! `witness daemon`: measure on a schedule, spool everything, upload when the collector can be
//! reached. Built to run unattended on a Raspberry Pi for months.
//!
//! - Every measurement is spooled durably before any upload is tried.
//! - During a shutdown the probe keeps measuring (each verdict `offline`) and keeps the records;
//!   between runs it retries the upload every `--upload-retry` seconds, so the backlog goes out
//!   minutes after the network returns, with the original measurement times.
//! - The time of the last run is saved, so a restart does not measure again at once.
//! - SIGTERM or Ctrl-C stops it between steps; nothing acknowledged is lost, nothing spooled is.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use chrono::{DateTime, Utc};
use clap::Args;

use crate::config::FileConfig;
use crate::consent::ensure_consent;
use crate::setup::{build_engine, collect_targets, collector_target, open_spool, RunArgs};
use crate::spool::Spool;
use crate::upload::Uploader;

/// Flags of `witness daemon`.
#[derive(Debug, Default, Args)]
pub struct DaemonArgs {
    /// Seconds between runs.
    #[arg(long, default_value_t = 3600.0, value_name = "SECS")]
    pub interval: f64,
    /// Up to this many seconds of random delay added to each run, so probes do not all
    /// measure at the same instant.
    #[arg(long, default_value_t = 300.0, value_name = "SECS")]
    pub jitter: f64,
    /// Seconds between upload attempts while measurements wait (e.g. during an outage).
    #[arg(long, default_value_t = 60.0, value_name = "SECS")]
    pub upload_retry: f64,
    /// Stop after this many runs (default: never).
    #[arg(long, value_name = "N")]
    pub runs: Option<u64>,
    /// Measurement flags, as for `witness run`.
    #[command(flatten)]
    pub run: RunArgs,
}

fn state_path(spool: &Spool) -> PathBuf {
    spool.dir().join("daemon-last-run")
}

fn last_run(spool: &Spool) -> Option<DateTime<Utc>> {
    let text = std::fs::read_to_string(state_path(spool)).ok()?;
    DateTime::parse_from_rfc3339(text.trim())
        .ok()
        .map(|d| d.with_timezone(&Utc))
}

/// Resolves when the process is asked to stop.
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn try_upload(up: Option<&Uploader>, spool: &Spool) {
    let Some(up) = up else { return };
    let held = crate::address::held(spool)
        .and_then(|h| h.len())
        .unwrap_or(0);
    match spool.is_empty() {
        Ok(true) if held == 0 => return,
        Err(_) => return,
        _ => {}
    }
    match up.drain(spool).await {
        Ok(s) => tracing::info!(
            uploaded = s.acknowledged,
            rejected = s.rejected,
            waiting = s.remaining,
            held = s.held,
            "upload done"
        ),
        Err(e) => tracing::warn!(
            error = %e,
            waiting = spool.len().unwrap_or(0),
            "upload failed; measurements stay in the spool"
        ),
    }
}

/// Sleep until `until`, trying uploads every `retry` meanwhile; false if asked to stop.
async fn wait_until(
    until: DateTime<Utc>,
    retry: Duration,
    up: Option<&Uploader>,
    spool: &Spool,
    stop: &mut std::pin::Pin<Box<impl std::future::Future<Output = ()>>>,
) -> bool {
    loop {
        let remaining = (until - Utc::now()).to_std().unwrap_or(Duration::ZERO);
        if remaining.is_zero() {
            return true;
        }
        tokio::select! {
            _ = stop.as_mut() => return false,
            _ = tokio::time::sleep(remaining.min(retry)) => {}
        }
        try_upload(up, spool).await;
    }
}

/// Run the daemon loop.
pub async fn run(args: DaemonArgs, file: FileConfig) -> Result<ExitCode> {
    ensure_consent(&args.run, &file, &collect_targets(&args.run.select, &file)?)?;
    let valid = args.interval >= 1.0 && args.jitter >= 0.0 && args.upload_retry >= 0.5;
    if !valid {
        anyhow::bail!("--interval must be >= 1 s, --jitter >= 0 s, --upload-retry >= 0.5 s");
    }
    let spool = open_spool(&args.run.collector, &file)?;
    let uploader = match collector_target(&args.run.collector, &file)? {
        Some((url, token)) => Some(Uploader::new(url, token).map_err(anyhow::Error::msg)?),
        None => {
            tracing::warn!("no collector configured: measurements are only spooled");
            None
        }
    };
    let interval = Duration::from_secs_f64(args.interval);
    let retry = Duration::from_secs_f64(args.upload_retry);
    let concurrency = args.run.concurrency.unwrap_or(file.run.concurrency);
    let mut stop = Box::pin(stop_signal());

    // After a restart, keep the schedule instead of measuring again at once.
    if let Some(last) = last_run(&spool) {
        let next = last + chrono::Duration::from_std(interval).unwrap_or_default();
        if next > Utc::now() {
            tracing::info!(%next, "resuming schedule after restart");
            if !wait_until(next, retry, uploader.as_ref(), &spool, &mut stop).await {
                return Ok(ExitCode::SUCCESS);
            }
        }
    }

    let mut runs = 0u64;
    loop {
        // Targets and engine are rebuilt each run so edited lists and configs take effect.
        let targets = collect_targets(&args.run.select, &file)?;
        let engine = build_engine(&args.run, &file)?;
        crate::address::KnownAddresses::of(&spool).seed(&engine.own);
        let outcome = tokio::select! {
            o = engine.run(targets, concurrency, |_, _, _| {}) => o,
            _ = stop.as_mut() => return Ok(ExitCode::SUCCESS),
        };
        match crate::address::keep_run(&spool, &engine.own, &outcome.measurements) {
            Ok(0) => {}
            Ok(held) => tracing::warn!(
                held,
                "the control service did not tell the probe its public address: this run's \
                 measurements are held back until a run learns it"
            ),
            // A full disk must not kill the daemon: say so loudly and go on measuring.
            Err(e) => tracing::error!(error = %e, "cannot spool the measurements"),
        }
        let _ = std::fs::write(state_path(&spool), Utc::now().to_rfc3339());
        eprintln!(
            "witness daemon: {}",
            crate::report::closing(&outcome.measurements, &outcome.connectivity)
        );
        try_upload(uploader.as_ref(), &spool).await;
        runs += 1;
        if args.runs.is_some_and(|n| runs >= n) {
            return Ok(ExitCode::SUCCESS);
        }
        let jitter = Duration::from_secs_f64(rand::random_range(0.0..=args.jitter.max(0.0)));
        let next = Utc::now() + chrono::Duration::from_std(interval + jitter).unwrap_or_default();
        if !wait_until(next, retry, uploader.as_ref(), &spool, &mut stop).await {
            return Ok(ExitCode::SUCCESS);
        }
    }
}
