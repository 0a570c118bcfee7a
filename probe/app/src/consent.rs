//! Informed consent: the notice (naming the sensitive categories of the lists), `witness
//! consent [--accept [--system]]`, and the check before any run measures. Nothing is measured
//! until the volunteer has accepted, on a terminal or by an explicit flag, config key or file.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::config::FileConfig;
use crate::report;
use crate::setup::{collect_targets, RunArgs, SelectArgs};
use witness_core::targets::Target;

/// Flags of `witness consent`.
#[derive(Debug, Default, Args)]
pub struct ConsentArgs {
    /// Record that you have read the notice and accept it (asks you to type yes).
    #[arg(long)]
    pub accept: bool,
    /// With --accept: record it for the system service (/etc/witness/consent-accepted; needs
    /// root), which does not measure before.
    #[arg(long, requires = "accept")]
    pub system: bool,
    /// The lists whose categories the notice names.
    #[command(flatten)]
    pub select: SelectArgs,
}

/// Where the service's consent is recorded (`witness consent --accept --system`); the packaged
/// units point WITNESS_CONSENT_FILE here and do not start before it exists.
pub const SYSTEM_CONSENT_FILE: &str = "/etc/witness/consent-accepted";

/// Where accepted consent is recorded: WITNESS_CONSENT_FILE, else the user's data directory.
fn consent_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("WITNESS_CONSENT_FILE").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    dirs::data_dir().map(|d| d.join("witness").join("consent-accepted"))
}

/// The notice with the sensitive categories of `targets` named, with counts.
pub fn consent_text(targets: &[Target]) -> String {
    format!(
        "{}\n\n{}\n\nDo you understand these risks and want to run Witness?",
        report::CONSENT_NOTICE,
        crate::categories::consent_paragraph(targets)
    )
}

/// Ask "type yes" on the terminal; false if not answered yes.
fn ask_yes() -> Result<bool> {
    eprint!("Type yes to continue: ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    Ok(matches!(
        answer.trim().to_ascii_lowercase().as_str(),
        "yes" | "y"
    ))
}

/// Record consent at `path`: when, and which sensitive categories the notice named.
fn record_consent(path: &Path, targets: &[Target]) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let named: Vec<String> = crate::categories::sensitive_present(targets)
        .into_iter()
        .map(|(code, _, n)| format!("{code}={n}"))
        .collect();
    let text = format!(
        "accepted {}\nsensitive categories named: {}\n",
        chrono::Utc::now().to_rfc3339(),
        named.join(" ")
    );
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// `witness consent [--accept [--system]]`.
pub(crate) fn consent_cmd(args: ConsentArgs, file: FileConfig) -> Result<ExitCode> {
    let targets = collect_targets(&args.select, &file)?;
    println!("{}", consent_text(&targets));
    if !args.accept {
        return Ok(ExitCode::SUCCESS);
    }
    let path = if args.system {
        PathBuf::from(SYSTEM_CONSENT_FILE)
    } else {
        consent_path()
            .context("no data directory to record consent in; set WITNESS_CONSENT_FILE")?
    };
    if !std::io::stdin().is_terminal() {
        bail!(
            "consent is given by typing yes on a terminal: run `witness consent --accept{}` \
             in a terminal",
            if args.system { " --system" } else { "" }
        );
    }
    if !ask_yes()? {
        bail!("consent not given; nothing was recorded");
    }
    record_consent(&path, &targets)?;
    println!("Consent recorded in {}.", path.display());
    if args.system {
        println!(
            "The service may measure now: sudo systemctl enable --now witness.service \
             (or witness-run.timer for one run an hour)."
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Ask for informed consent once, on a terminal; elsewhere require --yes, the config key, or a
/// recorded acceptance. The notice names the sensitive categories of `targets`.
pub(crate) fn ensure_consent(args: &RunArgs, file: &FileConfig, targets: &[Target]) -> Result<()> {
    if args.yes || file.consent {
        return Ok(());
    }
    if let Some(p) = consent_path() {
        if p.exists() {
            return Ok(());
        }
    }
    if !std::io::stdin().is_terminal() {
        bail!(
            "informed consent is needed before the first run. Read it with `witness consent`, then \
             pass --yes (or set `consent = true` in the config file, or run \
             `witness consent --accept`) for unattended runs."
        );
    }
    eprintln!("{}\n", consent_text(targets));
    if !ask_yes()? {
        bail!("consent not given; nothing was measured");
    }
    if let Some(p) = consent_path() {
        if let Err(e) = record_consent(&p, targets) {
            tracing::warn!("{e:#}; you will be asked again next time");
        }
    }
    Ok(())
}
