//! `witness run`: check every input, ask for consent, measure the targets with a progress bar,
//! print the results (table, offline paragraph or JSON Lines), append them to `--out`, and
//! spool and upload them when asked. The exit status says which of these failed.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::config::FileConfig;
use crate::exit::{EXIT_FAILURE, EXIT_UPLOAD};
use crate::report;
use crate::report::{dumb_terminal, ColorChoice};
use crate::setup::{
    build_engine, collect_targets, collector_target, open_spool, spool_dir, CollectorArgs,
    RecordFormat, RunArgs,
};
use witness_core::model::Measurement;

/// Open `--out` for appending before anything is measured: a typo in the path must not
/// throw a whole run away.
fn open_out(path: &Path) -> Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| {
            format!(
                "cannot open the --out file {}; nothing was measured. Check that its directory \
                 exists and is writable",
                path.display()
            )
        })
}

pub(crate) async fn run(args: RunArgs, file: FileConfig, color: ColorChoice) -> Result<ExitCode> {
    // Every input is checked before consent is asked and before anything is measured.
    let apps = crate::setup::apps_list(&args, &file)?;
    let targets = if args.apps_only {
        Vec::new()
    } else {
        collect_targets(&args.select, &file)?
    };
    let engine = build_engine(&args, &file)?;
    if engine.cfg.resolver == witness_core::checks::ResolverSpec::System {
        // No resolv.conf anywhere (Android without Termux's): every site would be recorded
        // offline, so say how to name the resolver and measure nothing. A resolv.conf that
        // names none is an offline machine: measuring says so.
        if let Err(e) = witness_core::sysresolver::system_resolver() {
            if e.unconfigured {
                return Err(e.into());
            }
        }
    }
    let mut out_file = match &args.out {
        Some(p) => Some(open_out(p)?),
        None => None,
    };
    crate::consent::ensure_consent(&args, &file, &targets)?;
    let concurrency = args.concurrency.unwrap_or(file.run.concurrency);
    // The addresses learned before are scrubbed from this run's records too.
    if let Some(dir) = spool_dir(&args.collector, &file) {
        crate::address::KnownAddresses::in_dir(&dir).seed(&engine.own);
    }

    let show_progress = !args.no_progress && std::io::stderr().is_terminal() && !dumb_terminal();
    let bar = if show_progress {
        let apps_n = apps.as_ref().map_or(0, |l| l.apps.len());
        let bar = indicatif::ProgressBar::new((targets.len() + apps_n) as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        // The connectivity check comes first and can take a whole step timeout: tick from the
        // first moment so the volunteer sees it working.
        bar.set_message("checking connectivity…");
        bar.enable_steady_tick(Duration::from_millis(200));
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };
    let outcome = engine
        .run_with_apps(
            targets,
            apps.as_ref(),
            concurrency,
            |_, _, m: &Measurement| {
                bar.set_message(m.domain.clone());
                bar.inc(1);
            },
        )
        .await;
    bar.finish_and_clear();

    let lines: Vec<String> = match args.format {
        RecordFormat::Witness => outcome
            .measurements
            .iter()
            .map(serde_json::to_string)
            .collect::<Result<_, _>>()?,
        RecordFormat::Ooni => {
            // OONI's app tests have their own formats, which Witness does not write yet: an app
            // record is not a web_connectivity measurement.
            let apps = outcome
                .measurements
                .iter()
                .filter(|m| m.app.is_some())
                .count();
            if apps > 0 {
                eprintln!(
                    "witness: {apps} app records have no OONI format yet; they are left out of \
                     --format ooni (uploads keep them)"
                );
            }
            outcome
                .measurements
                .iter()
                .filter(|m| m.app.is_none())
                .map(witness_core::ooni::to_ooni_line)
                .collect()
        }
    };
    let uploading = args.upload || file.collector.upload;
    // Results first, always: the table (or JSON) is printed before anything that can fail.
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if args.json {
        for l in &lines {
            writeln!(out, "{l}")?;
        }
    } else if outcome.connectivity.offline {
        let kept = if uploading {
            "The records are spooled for upload (see below)."
        } else if let Some(p) = &args.out {
            &format!("The records are in {}.", p.display())
        } else {
            "Nothing was kept: run again when the network is back (with --upload they would be \
             spooled and uploaded later)."
        };
        writeln!(
            out,
            "{}",
            report::offline_paragraph(&outcome.measurements, &outcome.connectivity, kept)
        )?;
    } else {
        write!(
            out,
            "{}",
            report::summary_table(
                &outcome.measurements,
                &outcome.connectivity,
                color.enabled(std::io::stdout().is_terminal())
            )
        )?;
    }
    out.flush()?;
    drop(out);

    let mut code = ExitCode::SUCCESS;
    if let (Some(f), Some(path)) = (out_file.as_mut(), &args.out) {
        let written = lines
            .iter()
            .try_for_each(|l| writeln!(f, "{l}"))
            .and_then(|_| f.sync_all());
        if let Err(e) = written {
            eprintln!(
                "witness: cannot write the results to {}: {e}",
                path.display()
            );
            code = ExitCode::from(EXIT_FAILURE);
        }
    }

    if uploading {
        let up =
            spool_and_upload(&args.collector, &file, &outcome.measurements, &engine.own).await?;
        if code == ExitCode::SUCCESS {
            code = up;
        }
    }
    Ok(code)
}

/// Spool every measurement (durably, first), then try to upload all that waits.
pub async fn spool_and_upload(
    args: &CollectorArgs,
    file: &FileConfig,
    measurements: &[Measurement],
    own: &witness_core::scrub::OwnAddresses,
) -> Result<ExitCode> {
    let spool = open_spool(args, file)?;
    if let Err(e) = crate::address::keep_run(&spool, own, measurements) {
        eprintln!(
            "witness: cannot keep the results in the spool {}: {e}",
            spool.dir().display()
        );
        return Ok(ExitCode::from(EXIT_FAILURE));
    }
    let Some((url, token)) = collector_target(args, file)? else {
        eprintln!(
            "witness: no collector configured; {} measurements wait in {}.",
            crate::address::waiting(&spool),
            spool.dir().display()
        );
        return Ok(ExitCode::from(EXIT_UPLOAD));
    };
    let up = crate::upload::Uploader::new(url, token).map_err(anyhow::Error::msg)?;
    match up
        .drain_with_retries(&spool, 3, Duration::from_secs(2))
        .await
    {
        Ok(s) => {
            eprintln!(
                "witness: uploaded {} measurements ({} rejected, {} waiting).",
                s.acknowledged, s.rejected, s.remaining
            );
            if s.held > 0 {
                eprintln!("witness: {}", crate::address::held_message(s.held, &spool));
                return Ok(ExitCode::from(EXIT_UPLOAD));
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!(
                "witness: upload failed: {e}. The {} measurements are kept in {} and will be uploaded later (`witness upload`).",
                crate::address::waiting(&spool),
                spool.dir().display()
            );
            Ok(ExitCode::from(EXIT_UPLOAD))
        }
    }
}
