//! The `witness` command line: the clap types, the entry point and the dispatch to each
//! command's room (`run`, `consent`, `daemon`), plus the short `upload` and `register`
//! commands. Resolving flags over the config file over defaults is `setup`'s job.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, CommandFactory, Parser, Subcommand};

use crate::config::{self, FileConfig};
use crate::consent::ConsentArgs;
use crate::daemon::DaemonArgs;
pub use crate::exit::*;
pub use crate::report::ColorChoice;
use crate::setup::{
    collect_targets, collector_target, credentials_path, load_config, open_spool, CollectorArgs,
    Credentials, RunArgs, SelectArgs,
};

/// Witness: is this site blocked on my connection, and how?
#[derive(Debug, Parser)]
#[command(
    name = "witness",
    version,
    about,
    long_about = None,
    after_long_help = EXIT_STATUS_HELP
)]
pub struct Cli {
    /// Configuration file (default: ~/.config/witness/config.toml if it exists).
    #[arg(long, global = true, env = "WITNESS_CONFIG")]
    pub config: Option<PathBuf>,
    /// Colour in tables and logs: auto (on a terminal, unless NO_COLOR is set or TERM=dumb),
    /// always or never.
    #[arg(long, global = true, value_enum, default_value_t = ColorChoice::Auto)]
    pub color: ColorChoice,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Measure every target and print a verdict per site.
    Run(RunArgs),
    /// Show the informed-consent notice, naming the sensitive categories of the lists; with
    /// --accept, record that you accept it.
    Consent(ConsentArgs),
    /// List the categories of the lists that would be measured, with counts and which are
    /// sensitive.
    Categories(SelectArgs),
    /// Print the shipped example configuration (all defaults, documented).
    ExampleConfig,
    /// Upload the measurements waiting in the spool.
    Upload(UploadArgs),
    /// Register with a collector and save the token.
    Register(RegisterArgs),
    /// Measure on a schedule, spool, and upload, unattended (survives outages and restarts).
    Daemon(DaemonArgs),
    /// Print shell completions for bash, zsh, fish, elvish or powershell.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), e.g. `witness man | man -l -`.
    Man,
}

/// Flags of `witness upload`.
#[derive(Debug, Default, Args)]
pub struct UploadArgs {
    /// Where.
    #[command(flatten)]
    pub collector: CollectorArgs,
}

/// Flags of `witness register`.
#[derive(Debug, Default, Args)]
pub struct RegisterArgs {
    /// Where.
    #[command(flatten)]
    pub collector: CollectorArgs,
    /// Invite token, for collectors with invite-only registration.
    #[arg(long, value_name = "TOKEN")]
    pub invite: Option<String>,
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.color);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("witness: cannot start the runtime: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    match rt.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("witness: {}", error_chain(&e));
            ExitCode::from(EXIT_USAGE)
        }
    }
}

/// The error and its causes, `: `-separated, leaving out a cause whose text is already said
/// (many errors quote their source, e.g. "cannot read X: No such file", then carry it as the
/// source too: the OS error must appear once).
pub fn error_chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if text.is_empty() || out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

/// Logs go to stderr (stdout carries results), as plain text unless stderr is a terminal that
/// takes colour: journald and log files get no escape codes.
fn init_tracing(color: ColorChoice) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("WITNESS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(color.enabled(std::io::stderr().is_terminal()))
        .with_writer(std::io::stderr)
        .try_init();
}

async fn dispatch(cli: Cli) -> Result<ExitCode> {
    let color = cli.color;
    match cli.command {
        Command::Consent(args) => {
            let file = load_config(cli.config.as_deref())?;
            crate::consent::consent_cmd(args, file)
        }
        Command::Categories(args) => {
            let file = load_config(cli.config.as_deref())?;
            let targets = collect_targets(&args, &file)?;
            print!("{}", crate::categories::table(&targets));
            Ok(ExitCode::SUCCESS)
        }
        Command::ExampleConfig => {
            print!("{}", config::EXAMPLE);
            Ok(ExitCode::SUCCESS)
        }
        Command::Completions { shell } => {
            let mut cmd = Cli::command();
            clap_complete::generate(shell, &mut cmd, "witness", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Command::Man => {
            let mut out = Vec::new();
            clap_mangen::Man::new(Cli::command()).render(&mut out)?;
            std::io::stdout().write_all(&out)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Run(args) => {
            let file = load_config(cli.config.as_deref())?;
            crate::run::run(args, file, color).await
        }
        Command::Upload(args) => {
            let file = load_config(cli.config.as_deref())?;
            upload_cmd(args, file).await
        }
        Command::Register(args) => {
            let file = load_config(cli.config.as_deref())?;
            register_cmd(args, file).await
        }
        Command::Daemon(args) => {
            let file = load_config(cli.config.as_deref())?;
            crate::daemon::run(args, file).await
        }
    }
}

async fn upload_cmd(args: UploadArgs, file: FileConfig) -> Result<ExitCode> {
    let spool = open_spool(&args.collector, &file)?;
    let Some((url, token)) = collector_target(&args.collector, &file)? else {
        bail!("no collector configured: pass --collector URL or set collector.url in the config");
    };
    let up = crate::upload::Uploader::new(url, token).map_err(anyhow::Error::msg)?;
    let waiting = crate::address::waiting(&spool);
    match up
        .drain_with_retries(&spool, 3, Duration::from_secs(2))
        .await
    {
        Ok(s) => {
            println!(
                "{} of {} waiting measurements uploaded, {} rejected (kept in {}), {} still waiting.",
                s.acknowledged,
                waiting,
                s.rejected,
                spool.dir().join("rejected").display(),
                s.remaining
            );
            if s.held > 0 {
                println!("{}", crate::address::held_message(s.held, &spool));
                return Ok(ExitCode::from(EXIT_UPLOAD));
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!(
                "witness: upload failed: {e}. {} measurements stay in {} and will be sent next time.",
                crate::address::waiting(&spool),
                spool.dir().display()
            );
            Ok(ExitCode::from(EXIT_UPLOAD))
        }
    }
}

async fn register_cmd(args: RegisterArgs, file: FileConfig) -> Result<ExitCode> {
    let Some((url, _)) = collector_target(&args.collector, &file)? else {
        bail!("no collector: pass --collector URL");
    };
    let up = crate::upload::Uploader::new(url.clone(), None).map_err(anyhow::Error::msg)?;
    let reg = up.register(args.invite.as_deref()).await?;
    let creds = Credentials {
        // Normalised (collector_target did it), so later runs find the token whichever way
        // the URL is typed.
        collector: url.to_string(),
        probe_id: reg.probe_id.clone(),
        token: reg.token.clone(),
    };
    if let Some(p) = credentials_path() {
        if let Some(dir) = p.parent() {
            std::fs::create_dir_all(dir)?;
        }
        write_private(&p, &serde_json::to_string_pretty(&creds)?)?;
        println!(
            "Registered as probe {} at {}; token saved in {}.",
            reg.probe_id,
            url,
            p.display()
        );
    } else {
        println!("Registered as probe {}; token: {}", reg.probe_id, reg.token);
    }
    Ok(ExitCode::SUCCESS)
}

/// Write a file only the owner can read (the token is a secret). On Windows there is no mode:
/// the file inherits the ACL of its directory, and `%APPDATA%` is readable by its user (and
/// administrators) only.
fn write_private(path: &std::path::Path, text: &str) -> Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.create(true).write(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    Ok(())
}
