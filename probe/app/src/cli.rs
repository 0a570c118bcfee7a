//! The `witness` command line: flags over the config file over defaults.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};

use crate::config::{self, FileConfig};
use crate::report;
use witness_core::control::ControlClient;
use witness_core::engine::Engine;
use witness_core::model::{Measurement, ProbeNetwork};
use witness_core::targets::{self, Target};

/// Exit status: every site was measured (and uploaded, when asked).
pub const EXIT_OK: u8 = 0;
/// Exit status: measured, but the results could not be written (`--out`, the spool), or the
/// runtime could not start.
pub const EXIT_FAILURE: u8 = 1;
/// Exit status: a bad flag, config file, list or URL, or no consent: nothing was measured.
pub const EXIT_USAGE: u8 = 2;
/// Exit status: measured and spooled, but the upload failed or no collector is configured; the
/// results wait in the spool for `witness upload`.
pub const EXIT_UPLOAD: u8 = 3;

/// The exit statuses, for `--help` and the man page.
pub const EXIT_STATUS_HELP: &str = "\
Exit status:
  0  success: every site was measured (and uploaded, with --upload)
  1  measured, but the results could not be written (--out, the spool), or an internal failure
  2  bad flag, config file, list or URL, or consent not given: nothing was measured
  3  measured and spooled, but the upload failed (or no collector is set): the results wait in
     the spool; `witness upload` sends them later

Environment: WITNESS_CONFIG (config file), WITNESS_TOKEN, WITNESS_CONTROL_TOKEN,
WITNESS_LOG (log filter, e.g. info or debug), WITNESS_CONSENT_FILE (where consent is recorded),
NO_COLOR (no colour), TERM=dumb (no colour, no progress bar).";

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

/// `--color`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum ColorChoice {
    /// On a terminal, unless NO_COLOR is set or TERM is dumb.
    #[default]
    Auto,
    /// Always, even into a pipe.
    Always,
    /// Never.
    Never,
}

impl ColorChoice {
    /// Whether to colour output going to a stream that `is_tty` or not.
    pub fn enabled(self, is_tty: bool) -> bool {
        match self {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => is_tty && !no_color_env() && !dumb_terminal(),
        }
    }
}

/// NO_COLOR set to anything non-empty (<https://no-color.org>).
fn no_color_env() -> bool {
    std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty())
}

/// TERM=dumb: a terminal that cannot move the cursor (Emacs shell, some CI logs).
fn dumb_terminal() -> bool {
    std::env::var_os("TERM").is_some_and(|t| t == "dumb")
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

/// Which targets: lists, single URLs, category filters.
#[derive(Debug, Default, Clone, Args)]
pub struct SelectArgs {
    /// A list file (repeatable): the Citizen Lab CSV format, or one URL per line. Default: the
    /// embedded lists.
    #[arg(long = "list", value_name = "FILE")]
    pub lists: Vec<PathBuf>,
    /// A single URL to measure (repeatable); with no --list, only these are measured.
    #[arg(long = "url", value_name = "URL")]
    pub urls: Vec<String>,
    /// Only targets of this category code (repeatable), e.g. NEWS.
    #[arg(long = "category", value_name = "CODE")]
    pub categories: Vec<String>,
    /// Never targets of this category code (repeatable).
    #[arg(long = "exclude-category", value_name = "CODE")]
    pub exclude_categories: Vec<String>,
}

/// Where to upload: flags over config over the saved registration.
#[derive(Debug, Default, Args)]
pub struct CollectorArgs {
    /// Collector base URL.
    #[arg(long, value_name = "URL")]
    pub collector: Option<String>,
    /// Probe token (default: the config, else the one saved by `witness register`).
    #[arg(
        long,
        value_name = "TOKEN",
        env = "WITNESS_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// Spool directory (default: the config, else ~/.local/share/witness/spool).
    #[arg(long, value_name = "DIR")]
    pub spool_dir: Option<PathBuf>,
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

/// Flags of `witness run`.
#[derive(Debug, Default, Args)]
pub struct RunArgs {
    /// Which targets.
    #[command(flatten)]
    pub select: SelectArgs,
    /// The network's resolver: `system` (/etc/resolv.conf, else Termux's, else Android's
    /// net.dns1) or IP[:PORT].
    #[arg(long, value_name = "IP[:PORT]")]
    pub resolver: Option<String>,
    /// Encrypted control resolvers, tried in order, comma-separated: doh:IP#NAME, dot:IP#NAME,
    /// udp:IP[:PORT], or none.
    #[arg(long, value_name = "SPEC")]
    pub control_resolver: Option<String>,
    /// Control service base URL.
    #[arg(long, value_name = "URL")]
    pub control: Option<String>,
    /// Token for the control service.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "WITNESS_CONTROL_TOKEN",
        hide_env_values = true
    )]
    pub control_token: Option<String>,
    /// Run without a control service.
    #[arg(long, conflicts_with = "control")]
    pub no_control: bool,
    /// Targets measured at once.
    #[arg(long, value_name = "N")]
    pub concurrency: Option<usize>,
    /// Timeout of each step, seconds (0.1 to 300).
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<f64>,
    /// Total time one target may take, seconds (DNS to the last redirect hop).
    #[arg(long, value_name = "SECS")]
    pub deadline: Option<f64>,
    /// Do not localise blocked targets to a network hop (path.enabled = false).
    #[arg(long)]
    pub no_path: bool,
    /// Extra trusted CA certificates, PEM (repeatable).
    #[arg(long = "extra-ca", value_name = "FILE")]
    pub extra_ca: Vec<PathBuf>,
    /// LABS ONLY: treat this reserved range as public (repeatable), e.g. 198.18.0.0/15.
    #[arg(long = "lab-public-range", value_name = "CIDR")]
    pub lab_public_ranges: Vec<ipnet::IpNet>,
    /// Bind outgoing sockets to this local address.
    #[arg(long, value_name = "IP")]
    pub source_address: Option<std::net::IpAddr>,
    /// Connectivity anchors HOST:PORT (repeatable; replaces the configured ones). `none` for none.
    #[arg(long = "anchor", value_name = "HOST:PORT")]
    pub anchors: Vec<String>,
    /// Print one JSON object per target per line on stdout, and nothing else.
    #[arg(long)]
    pub json: bool,
    /// Also write the JSON Lines to this file (appended; checked before measuring).
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Format of the `--json` and `--out` lines: Witness's own records, or OONI's
    /// `web_connectivity` measurements (docs/measurement-format.md). Uploads stay Witness's.
    #[arg(long, value_enum, default_value_t = RecordFormat::Witness)]
    pub format: RecordFormat,
    /// I have read the consent notice (`witness consent`) and accept it.
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// No progress bar.
    #[arg(long)]
    pub no_progress: bool,
    /// Spool and upload the results to the collector after the run.
    #[arg(long)]
    pub upload: bool,
    /// Where to upload.
    #[command(flatten)]
    pub collector: CollectorArgs,
}

/// Which format `--json` and `--out` write.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum RecordFormat {
    /// Witness's measurement format.
    #[default]
    Witness,
    /// OONI's data format (`web_connectivity`), for OONI's tools.
    Ooni,
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
            consent_cmd(args, file)
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
            run(args, file, color).await
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

/// Saved registration: `~/.local/share/witness/credentials.json`.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Credentials {
    collector: String,
    probe_id: String,
    token: String,
}

fn credentials_path() -> Option<PathBuf> {
    dirs::data_dir().map(|d| d.join("witness").join("credentials.json"))
}

fn saved_credentials() -> Option<Credentials> {
    let text = std::fs::read_to_string(credentials_path()?).ok()?;
    serde_json::from_str(&text).ok()
}

/// The collector URL (normalised: the same collector has one spelling everywhere) and token
/// from flags, config and the saved registration.
pub fn collector_target(
    args: &CollectorArgs,
    file: &FileConfig,
) -> Result<Option<(url::Url, Option<String>)>> {
    let saved = saved_credentials();
    let (text, what) = if let Some(u) = &args.collector {
        (u.clone(), "--collector")
    } else if let Some(u) = &file.collector.url {
        (u.clone(), "collector.url")
    } else if let Some(c) = &saved {
        (c.collector.clone(), "the saved registration's collector")
    } else {
        return Ok(None);
    };
    let url = crate::upload::collector_base(&text, what).map_err(anyhow::Error::msg)?;
    let token = args
        .token
        .clone()
        .or_else(|| file.collector.token.clone())
        .or_else(|| saved_token_for(saved, &url));
    Ok(Some((url, token)))
}

/// The saved token, when it was registered at `url` (compared normalised, so a registration
/// made with or without a trailing slash matches either spelling).
fn saved_token_for(saved: Option<Credentials>, url: &url::Url) -> Option<String> {
    let saved = saved?;
    let at = crate::upload::collector_base(&saved.collector, "saved").ok()?;
    (at == *url).then_some(saved.token)
}

/// The spool directory from flags and config (not created).
pub fn spool_dir(args: &CollectorArgs, file: &FileConfig) -> Option<PathBuf> {
    args.spool_dir
        .clone()
        .or_else(|| file.collector.spool_dir.clone())
        .or_else(crate::spool::Spool::default_dir)
}

/// The spool from flags and config.
pub fn open_spool(args: &CollectorArgs, file: &FileConfig) -> Result<crate::spool::Spool> {
    let dir = spool_dir(args, file)
        .context("no spool directory: set collector.spool_dir or --spool-dir")?;
    let max = file
        .collector
        .spool_max
        .unwrap_or(crate::spool::DEFAULT_MAX);
    Ok(crate::spool::Spool::open(dir, max)?)
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

/// Write a file only the owner can read (the token is a secret).
fn write_private(path: &std::path::Path, text: &str) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    Ok(())
}

/// Load the explicit config file, else the user's default one if it exists, else defaults.
pub fn load_config(path: Option<&std::path::Path>) -> Result<FileConfig> {
    match path {
        Some(p) => Ok(FileConfig::load(p)?),
        None => match FileConfig::default_path() {
            Some(p) if p.exists() => Ok(FileConfig::load(&p)?),
            _ => Ok(FileConfig::default()),
        },
    }
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
fn consent_cmd(args: ConsentArgs, file: FileConfig) -> Result<ExitCode> {
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

/// Targets from flags and config: lists (or the embedded default), single URLs, filters.
/// Bad rows are reported on stderr and skipped; the rest still run.
pub fn collect_targets(args: &SelectArgs, file: &FileConfig) -> Result<Vec<Target>> {
    let lists: Vec<PathBuf> = if args.lists.is_empty() {
        file.run.lists.clone()
    } else {
        args.lists.clone()
    };
    let mut all = Vec::new();
    for path in &lists {
        let (ts, errors) = targets::load_list_file(path)?;
        for e in &errors {
            eprintln!("witness: skipping {e}");
        }
        all.extend(ts);
    }
    for u in &args.urls {
        match Target::from_url(u, "command-line") {
            Ok(t) => all.push(t),
            Err(e) => bail!("--url {u:?}: {e}"),
        }
    }
    if lists.is_empty() && args.urls.is_empty() {
        all = targets::embedded_default();
    }
    let include = if args.categories.is_empty() {
        &file.run.categories
    } else {
        &args.categories
    };
    let mut exclude = file.run.exclude_categories.clone();
    exclude.extend(args.exclude_categories.iter().cloned());
    let all = targets::filter_categories(targets::dedup(all), include, &exclude);
    if all.is_empty() {
        bail!(
            "no targets to measure: the lists are empty or the category filter removed everything"
        );
    }
    Ok(all)
}

/// Build the engine from flags over file over defaults.
pub fn build_engine(args: &RunArgs, file: &FileConfig) -> Result<Engine> {
    let mut run = file.run.clone();
    let mut net = file.network.clone();
    if let Some(c) = args.concurrency {
        run.concurrency = c;
    }
    if let Some(t) = args.timeout {
        run.timeout_secs = t;
    }
    if let Some(d) = args.deadline {
        run.deadline_secs = d;
    }
    if let Some(r) = &args.resolver {
        net.resolver = r.clone();
    }
    if let Some(r) = &args.control_resolver {
        net.control_resolver = r.clone();
    }
    net.extra_ca_files.extend(args.extra_ca.iter().cloned());
    net.lab_public_ranges
        .extend(args.lab_public_ranges.iter().cloned());
    if args.source_address.is_some() {
        net.source_address = args.source_address;
    }
    if !args.anchors.is_empty() {
        net.anchors = args
            .anchors
            .iter()
            .filter(|a| !a.eq_ignore_ascii_case("none"))
            .cloned()
            .collect();
    }
    if run.concurrency == 0 || run.concurrency > 1024 {
        bail!(
            "concurrency {} is out of range; use 1 to 1024",
            run.concurrency
        );
    }
    let mut cfg = config::measure_config(&run, &net)?;
    let mut path = file.path.clone();
    if args.no_path {
        path.enabled = false;
    }
    cfg.path = config::path_config(&path)?;
    let timeout = cfg.timeout;

    let control_url = if args.no_control {
        None
    } else {
        args.control
            .clone()
            .or_else(|| file.control.url.clone())
            .or_else(|| file.collector.url.clone())
    };
    let control = match control_url {
        None => None,
        Some(u) => {
            let base =
                crate::upload::collector_base(&u, "control URL").map_err(anyhow::Error::msg)?;
            let token = args
                .control_token
                .clone()
                .or_else(|| file.control.token.clone())
                .or_else(|| file.collector.token.clone())
                // The token from `witness register`, when the control is that collector.
                .or_else(|| saved_token_for(saved_credentials(), &base));
            // The control measures the site itself: allow it several step timeouts.
            Some(
                ControlClient::new(base, token, timeout * 6 + Duration::from_secs(5))
                    .map_err(anyhow::Error::msg)?,
            )
        }
    };
    let pins = net
        .interception_spki
        .iter()
        .map(|s| config::parse_spki_pin(s))
        .collect::<Result<Vec<_>, _>>()?;
    let anchors = net
        .anchors
        .iter()
        .map(|a| config::parse_anchor(a))
        .collect::<Result<Vec<_>, _>>()?;
    // The probe connects to whatever its resolver answered, private addresses included (a
    // censor's blockpage may live there), as it always has.
    let engine = Engine::builder(cfg)
        .control(control)
        .interception_spki(pins)
        .anchors(anchors)
        .probe_network(ProbeNetwork {
            asn: file.probe.asn,
            country: file.probe.country.clone(),
        })
        .danger_allow_bogon_targets(true)
        .build()
        .map_err(anyhow::Error::msg)?;
    Ok(engine)
}

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
    let targets = collect_targets(&args.select, &file)?;
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
    ensure_consent(&args, &file, &targets)?;
    let concurrency = args.concurrency.unwrap_or(file.run.concurrency);
    // The addresses learned before are scrubbed from this run's records too.
    if let Some(dir) = spool_dir(&args.collector, &file) {
        crate::address::KnownAddresses::in_dir(&dir).seed(&engine.own);
    }

    let show_progress = !args.no_progress && std::io::stderr().is_terminal() && !dumb_terminal();
    let bar = if show_progress {
        let bar = indicatif::ProgressBar::new(targets.len() as u64);
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
        .run(targets, concurrency, |_, _, m: &Measurement| {
            bar.set_message(m.domain.clone());
            bar.inc(1);
        })
        .await;
    bar.finish_and_clear();

    let lines: Vec<String> = match args.format {
        RecordFormat::Witness => outcome
            .measurements
            .iter()
            .map(serde_json::to_string)
            .collect::<Result<_, _>>()?,
        RecordFormat::Ooni => outcome
            .measurements
            .iter()
            .map(witness_core::ooni::to_ooni_line)
            .collect(),
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
