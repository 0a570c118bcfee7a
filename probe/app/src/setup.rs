//! Setup: what a run measures and with what, resolved flags over the config file over
//! defaults, for `witness run` and `witness daemon` alike: the flag groups they share, the
//! targets, the engine (resolvers, control service, anchors), the collector and token (with
//! the saved registration), and the spool.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};

use crate::config::{self, FileConfig};
use witness_core::control::ControlClient;
use witness_core::engine::Engine;
use witness_core::model::ProbeNetwork;
use witness_core::targets::{self, Target};

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
    /// Also measure the messaging apps, Tor and the protocol reflectors of the apps list
    /// (network observers can see these attempts; see `witness consent`).
    #[arg(long)]
    pub apps: bool,
    /// Measure only the apps list, no websites (implies --apps).
    #[arg(long)]
    pub apps_only: bool,
    /// The apps list to measure instead of the embedded one (implies --apps); see
    /// targets/apps.txt for the format.
    #[arg(long, value_name = "FILE")]
    pub apps_list: Option<PathBuf>,
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

/// Saved registration: `~/.local/share/witness/credentials.json` (Windows:
/// `%APPDATA%\witness\credentials.json`).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct Credentials {
    pub(crate) collector: String,
    pub(crate) probe_id: String,
    pub(crate) token: String,
}

pub(crate) fn credentials_path() -> Option<PathBuf> {
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

/// The apps list a run measures: `--apps-list FILE`, else the embedded list with `--apps` or
/// `--apps-only`, else none; less the apps whose category (COMT for messaging, ANON for Tor and
/// VPN protocols) is excluded, as sites are. A bad file stops the run before anything is
/// measured.
pub fn apps_list(args: &RunArgs, file: &FileConfig) -> Result<Option<targets::apps::AppsList>> {
    let mut list = match &args.apps_list {
        Some(p) => targets::apps::load_apps_list(p)
            .with_context(|| "the --apps-list file is refused; nothing was measured".to_string())?,
        None if args.apps || args.apps_only => targets::apps::embedded_apps(),
        None => return Ok(None),
    };
    let excluded: Vec<String> = file
        .run
        .exclude_categories
        .iter()
        .chain(&args.select.exclude_categories)
        .map(|c| c.trim().to_ascii_uppercase())
        .collect();
    list.apps.retain(|a| {
        let code = witness_core::engine::apps::app_category(a.kind);
        !excluded.iter().any(|c| c == code)
    });
    Ok(Some(list))
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
