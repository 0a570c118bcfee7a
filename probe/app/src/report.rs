//! Plain-language results for volunteers: a summary table and a closing sentence.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use clap::ValueEnum;

use witness_core::model::{ConnectivitySummary, Measurement, Method, Status};

/// Widest site column.
const SITE_WIDTH: usize = 32;
/// Widest reason column on a terminal.
const REASON_WIDTH: usize = 100;

/// The informed-consent notice shown before the first run.
pub const CONSENT_NOTICE: &str = "\
Witness measures whether websites are blocked on your internet connection.

What it does: for each site on its list it looks the name up, connects, makes a TLS handshake
and fetches the page, as a browser would, and compares with a measurement from outside your
network. The lists include sites that your government may consider sensitive; the categories
of the lists about to be measured are named below, with how many sites each holds.

Risks: anyone who watches your connection (your ISP, the state) can see that your device
contacted these sites. In some countries that can draw attention or be treated as an offence.
Your IP address is never recorded in results nor sent with them, but the traffic itself is
visible. You can exclude categories (exclude_categories in the config file, or --exclude-category).

With --apps, Witness also connects to messaging apps (Telegram, WhatsApp, Signal, Messenger),
to Tor (its directory authorities, bridges and Snowflake) and, when a list names a reflector,
makes VPN handshakes (WireGuard, OpenVPN, QUIC, Shadowsocks-like): your network can see that
this device tried Tor or a VPN. They are filed under the categories of communication tools and
of anonymisation and circumvention tools, which you can exclude like any other category.

If you upload results, they are published as open data with your network (AS number) and
country, never your IP address.";

fn paint(s: &str, code: &str, color: bool) -> String {
    if color {
        format!("\x1b[{code}m{s}\x1b[0m")
    } else {
        s.to_string()
    }
}

/// The verdict as one short label, e.g. `blocked (tls)`.
pub fn label(m: &Measurement) -> String {
    match (m.verdict.status, m.verdict.method) {
        (Status::Blocked, Some(method)) => format!("blocked ({method})"),
        (s, _) => s.to_string(),
    }
}

fn colour_code(status: Status) -> &'static str {
    match status {
        Status::Accessible => "32",
        Status::Blocked => "1;31",
        Status::Down => "90",
        Status::Offline => "35",
        Status::Inconclusive => "33",
    }
}

fn fit(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        return s.to_string();
    }
    let mut out: String = s.chars().take(width.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// The table of site, verdict and reason, then a closing summary.
pub fn summary_table(
    measurements: &[Measurement],
    connectivity: &ConnectivitySummary,
    color: bool,
) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{:<SITE_WIDTH$}  {:<18}  REASON", "SITE", "VERDICT");
    for m in measurements {
        let site = fit(&m.url, SITE_WIDTH);
        let verdict = format!("{:<18}", label(m));
        let _ = writeln!(
            out,
            "{:<SITE_WIDTH$}  {}  {}",
            site,
            paint(&verdict, colour_code(m.verdict.status), color),
            fit(&m.verdict.reason, REASON_WIDTH)
        );
    }
    out.push('\n');
    out.push_str(&closing(measurements, connectivity));
    out.push('\n');
    out
}

/// An offline run in one paragraph: what the connectivity check found, that no site was
/// measured (every record says `offline`, none `blocked`), and `kept`: what happened to the
/// records (spooled, written to a file, or nothing), which only the caller knows.
pub fn offline_paragraph(
    measurements: &[Measurement],
    connectivity: &ConnectivitySummary,
    kept: &str,
) -> String {
    format!(
        "{} None of the {} sites could be measured: each is recorded as offline, which says \
         nothing about censorship. {kept}",
        connectivity.summary.trim_end(),
        measurements.len()
    )
}

/// Counts per status and per blocking method, and what they mean, in a few sentences.
pub fn closing(measurements: &[Measurement], connectivity: &ConnectivitySummary) -> String {
    let mut by_status: BTreeMap<&str, usize> = BTreeMap::new();
    let mut by_method: BTreeMap<Method, usize> = BTreeMap::new();
    for m in measurements {
        *by_status.entry(m.verdict.status.as_str()).or_default() += 1;
        if let Some(method) = m.verdict.method {
            *by_method.entry(method).or_default() += 1;
        }
    }
    let n = measurements.len();
    let mut s = format!("{n} sites measured. ");
    if connectivity.offline {
        s.push_str(&connectivity.summary);
        return s;
    }
    let parts: Vec<String> = Status::ALL
        .iter()
        .filter_map(|st| by_status.get(st.as_str()).map(|c| format!("{c} {st}")))
        .collect();
    s.push_str(&parts.join(", "));
    s.push('.');
    if !by_method.is_empty() {
        let methods: Vec<String> = by_method
            .iter()
            .map(|(m, c)| format!("{c} by {}", method_words(*m)))
            .collect();
        let _ = write!(s, " Blocked: {}.", methods.join(", "));
    }
    let _ = write!(s, " {}", connectivity.summary);
    s
}

/// How a method reads in a sentence.
pub fn method_words(m: Method) -> &'static str {
    match m {
        Method::Dns => "DNS tampering",
        Method::Tcp => "IP blocking",
        Method::Tls => "TLS/SNI filtering",
        Method::Mitm => "TLS interception",
        Method::Http => "HTTP blocking",
        Method::Throttle => "throttling",
        Method::Protocol => "protocol blocking",
        Method::Udp => "UDP blocking",
    }
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
            ColorChoice::Auto => {
                is_tty && !no_color_env() && !dumb_terminal() && console_takes_ansi()
            }
        }
    }
}

/// Whether the console shows ANSI colour codes rather than printing them. Windows' console
/// does only once a program turns on its virtual-terminal mode (Windows 10 and later); where
/// that fails the table stays plain.
fn console_takes_ansi() -> bool {
    #[cfg(windows)]
    {
        static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *ON.get_or_init(|| anstyle_query::windows::enable_ansi_colors().unwrap_or(false))
    }
    #[cfg(not(windows))]
    true
}

/// NO_COLOR set to anything non-empty (<https://no-color.org>).
fn no_color_env() -> bool {
    std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty())
}

/// TERM=dumb: a terminal that cannot move the cursor (Emacs shell, some CI logs).
pub(crate) fn dumb_terminal() -> bool {
    std::env::var_os("TERM").is_some_and(|t| t == "dumb")
}
