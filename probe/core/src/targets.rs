//! Target lists: which URLs the probe tests.
//!
//! Lists use the Citizen Lab test-list CSV format
//! (`url,category_code,category_description,date_added,source,notes`), so volunteers and
//! researchers can reuse lists they already know, or are plain text with one URL per line (what
//! a person writes by hand; `#` starts a comment line). The format is detected from the first
//! line that is not blank or a comment: the CSV header starts with `url`. The default lists are embedded in the binary
//! (see `targets/README.md`) so a probe works offline and without extra files.
//!
//! Parsing is forgiving per row: a bad row becomes a [`ListError`] naming the file and line, and
//! every good row is still kept, so one typo does not stop a whole measurement run.

use std::collections::HashSet;
use std::fmt;
use std::io::Read;
use std::net::IpAddr;
use std::path::Path;

use url::{Host, Url};

pub mod apps;

/// The header of a Citizen Lab test list, column by column.
const CITIZENLAB_HEADER: [&str; 6] = [
    "url",
    "category_code",
    "category_description",
    "date_added",
    "source",
    "notes",
];

/// The lists embedded in the binary, as `(file name, contents)`, Kazakhstan's own list first.
///
/// They are the default input, so a probe can run with no files at all; see `targets/README.md`
/// for where each came from and its licence.
pub const EMBEDDED_LISTS: &[(&str, &str)] = &[
    (
        "citizenlab-kz.csv",
        include_str!("../../../targets/citizenlab-kz.csv"),
    ),
    (
        "kz-historical.csv",
        include_str!("../../../targets/kz-historical.csv"),
    ),
    (
        "citizenlab-global-kz.csv",
        include_str!("../../../targets/citizenlab-global-kz.csv"),
    ),
];

/// One URL to test, validated once so the checks can rely on scheme, host and port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The URL as given (surrounding whitespace removed, otherwise not normalised), so reports
    /// show what the list says.
    pub url: String,
    /// The parsed URL, for the checks.
    pub parsed: Url,
    /// ASCII host name to resolve and send as SNI: lower-case, IDN as punycode, no trailing dot;
    /// for an IP-address host, the address text (IPv6 without brackets).
    pub domain: String,
    /// Citizen Lab category code (`NEWS`, `POLR`, ...), if the list gives one; lets volunteers
    /// exclude sensitive categories.
    pub category_code: Option<String>,
    /// Where the target came from: `embedded:FILE`, a file path, or `command-line`.
    pub source: String,
}

impl Target {
    /// Validates `url` and builds a target from it; `source` says where it came from.
    ///
    /// Only `http` and `https` URLs with a host and without user name or password are accepted:
    /// those are the only ones the probe can measure without leaking credentials.
    pub fn from_url(url: &str, source: &str) -> Result<Target, TargetError> {
        let url = url.trim();
        if url.is_empty() {
            return Err(TargetError::EmptyUrl);
        }
        let parsed = Url::parse(url).map_err(|e| TargetError::InvalidUrl {
            url: url.to_string(),
            reason: match e {
                url::ParseError::RelativeUrlWithoutBase => {
                    "it has no scheme; write it in full, e.g. https://example.org/".to_string()
                }
                other => other.to_string(),
            },
        })?;
        match parsed.scheme() {
            "http" | "https" => {}
            other => {
                return Err(TargetError::UnsupportedScheme {
                    url: url.to_string(),
                    scheme: other.to_string(),
                })
            }
        }
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(TargetError::UserInfo {
                url: url.to_string(),
            });
        }
        let domain = match parsed.host() {
            Some(Host::Domain(d)) if !d.is_empty() => {
                d.strip_suffix('.').unwrap_or(d).to_ascii_lowercase()
            }
            Some(Host::Ipv4(ip)) => ip.to_string(),
            Some(Host::Ipv6(ip)) => ip.to_string(),
            _ => {
                return Err(TargetError::MissingHost {
                    url: url.to_string(),
                })
            }
        };
        Ok(Target {
            url: url.to_string(),
            parsed,
            domain,
            category_code: None,
            source: source.to_string(),
        })
    }

    /// True for `https` URLs: the probe then checks TLS as well.
    pub fn is_https(&self) -> bool {
        self.parsed.scheme() == "https"
    }

    /// The TCP port to connect to: the explicit port, else 443 for https and 80 for http.
    pub fn port(&self) -> u16 {
        self.parsed
            .port_or_known_default()
            .unwrap_or(if self.is_https() { 443 } else { 80 })
    }

    /// The address when the host is an IP literal, so the engine can skip DNS for it.
    pub fn ip(&self) -> Option<IpAddr> {
        match self.parsed.host() {
            Some(Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
            Some(Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
            _ => None,
        }
    }
}

/// A problem with one row (or the header) of a target list; the rest of the list is still used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListError {
    /// The list the row is in (file path or `embedded:NAME`).
    pub source: String,
    /// 1-based physical line number in the file, so an editor can jump to it.
    pub line: u64,
    /// What is wrong and how to fix it.
    pub problem: String,
}

impl fmt::Display for ListError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.source, self.line, self.problem)
    }
}

impl std::error::Error for ListError {}

/// Why a URL or a list could not be used; each message says what was wrong and what to do.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// The URL field was empty.
    #[error("empty URL: give a full URL such as https://example.org/")]
    EmptyUrl,
    /// The text is not a URL the parser accepts.
    #[error("'{url}' is not a valid URL ({reason})")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// The parser's complaint.
        reason: String,
    },
    /// The scheme is not http or https.
    #[error("'{url}' uses the '{scheme}' scheme; only http:// and https:// URLs can be tested")]
    UnsupportedScheme {
        /// The URL as given.
        url: String,
        /// The scheme found.
        scheme: String,
    },
    /// The URL has no host to connect to.
    #[error("'{url}' has no host name; write it as https://HOST/PATH")]
    MissingHost {
        /// The URL as given.
        url: String,
    },
    /// The URL carries a user name or password, which must never be sent or recorded.
    #[error("'{url}' contains a user name or password; remove the 'user:password@' part")]
    UserInfo {
        /// The URL as given.
        url: String,
    },
    /// A list file could not be read.
    #[error("cannot read target list {path}: {source}; check the path and its permissions")]
    Io {
        /// The file.
        path: String,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// Parses a target list in Citizen Lab CSV format read from `reader`; `source` names it in
/// targets and errors.
///
/// Accepts quoted fields, CRLF line ends, a UTF-8 BOM, a missing final newline, blank lines and
/// `#` comment lines. Each bad row yields a [`ListError`] and is skipped; good rows are kept.
pub fn parse_list(source: &str, mut reader: impl Read) -> (Vec<Target>, Vec<ListError>) {
    let mut targets = Vec::new();
    let mut errors = Vec::new();
    let err = |line: u64, problem: String| ListError {
        source: source.to_string(),
        line,
        problem,
    };
    // Lists are small; holding the bytes lets us report physical line numbers, which the csv
    // crate does not (it does not count the blank lines it skips).
    let mut data = Vec::new();
    if let Err(e) = reader.read_to_end(&mut data) {
        errors.push(err(1, format!("cannot read the list: {e}")));
        return (targets, errors);
    }
    if is_plain_list(&data) {
        return parse_plain(source, &data);
    }
    let mut lines = LineCounter::new(&data);
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .comment(Some(b'#'))
        .from_reader(data.as_slice());

    // Column layout, known once the header has been read.
    let mut columns: Option<Columns> = None;
    let mut record = csv::ByteRecord::new();
    loop {
        match rdr.read_byte_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => {
                // Cannot happen on an in-memory slice with a flexible reader; stop rather than
                // loop on the same error.
                let line = e.position().map_or(0, |p| lines.record_line(p.byte()));
                errors.push(err(line, format!("cannot read the list further: {e}")));
                break;
            }
        }
        let line = record.position().map_or(0, |p| lines.record_line(p.byte()));
        let fields: Vec<&str> = match record
            .iter()
            .map(std::str::from_utf8)
            .collect::<Result<Vec<_>, _>>()
        {
            Ok(f) => f,
            Err(_) => {
                errors.push(err(
                    line,
                    "row is not valid UTF-8; save the list as UTF-8".to_string(),
                ));
                continue;
            }
        };
        if fields.iter().all(|f| f.trim().is_empty()) {
            continue;
        }
        let Some(cols) = &columns else {
            match Columns::from_header(&fields) {
                Ok((cols, warning)) => {
                    if let Some(w) = warning {
                        errors.push(err(line, w));
                    }
                    columns = Some(cols);
                    continue;
                }
                Err(problem) => {
                    errors.push(err(line, problem));
                    return (targets, errors);
                }
            }
        };
        if fields.len() != cols.count {
            errors.push(err(
                line,
                format!(
                    "expected {} columns ({}), found {}; {}",
                    cols.count,
                    cols.names,
                    fields.len(),
                    if fields.len() < cols.count {
                        "leave unused columns empty but keep their commas"
                    } else {
                        "put fields that contain commas in double quotes"
                    }
                ),
            ));
            continue;
        }
        match Target::from_url(fields[0], source) {
            Ok(mut t) => {
                t.category_code = cols
                    .category
                    .and_then(|i| fields.get(i))
                    .map(|c| c.trim())
                    .filter(|c| !c.is_empty())
                    .map(str::to_string);
                targets.push(t);
            }
            Err(e) => errors.push(err(line, e.to_string())),
        }
    }
    if columns.is_none() && errors.is_empty() {
        errors.push(err(
            1,
            format!(
                "the list is empty; it needs at least the header line '{}'",
                CITIZENLAB_HEADER.join(",")
            ),
        ));
    }
    (targets, errors)
}

/// True when the first line that is not blank or a comment is not a CSV header (which starts
/// with `url`) and has no comma: a one-URL-per-line list.
fn is_plain_list(data: &[u8]) -> bool {
    let data = data.strip_prefix(b"\xef\xbb\xbf").unwrap_or(data);
    let first = data
        .split(|&b| b == b'\n')
        .map(|l| String::from_utf8_lossy(l).trim().to_string())
        .find(|l| !l.is_empty() && !l.starts_with('#'));
    let Some(first) = first else {
        return false;
    };
    let first_field = first
        .split(',')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if first_field == "url" {
        return false;
    }
    // A CSV row without its header has commas; a hand-written URL line has none.
    !first.contains(',')
}

/// Parses a one-URL-per-line list: blank lines and `#` comments are skipped; each other line
/// must be a full http(s) URL, else it is reported with its line number.
fn parse_plain(source: &str, data: &[u8]) -> (Vec<Target>, Vec<ListError>) {
    let mut targets = Vec::new();
    let mut errors = Vec::new();
    let data = data.strip_prefix(b"\xef\xbb\xbf").unwrap_or(data);
    for (i, raw) in data.split(|&b| b == b'\n').enumerate() {
        let line = i as u64 + 1;
        let Ok(text) = std::str::from_utf8(raw) else {
            errors.push(ListError {
                source: source.to_string(),
                line,
                problem: "line is not valid UTF-8; save the list as UTF-8".into(),
            });
            continue;
        };
        let text = text.trim();
        if text.is_empty() || text.starts_with('#') {
            continue;
        }
        match Target::from_url(text, source) {
            Ok(t) => targets.push(t),
            Err(e) => errors.push(ListError {
                source: source.to_string(),
                line,
                problem: format!(
                    "{e} (this list has one URL per line; a Citizen Lab CSV list starts with \
                     the header '{}')",
                    CITIZENLAB_HEADER.join(",")
                ),
            }),
        }
    }
    (targets, errors)
}

/// Maps byte offsets of CSV records to 1-based physical line numbers.
struct LineCounter<'a> {
    data: &'a [u8],
    /// Offset up to which newlines have been counted.
    pos: usize,
    /// Line number at `pos`.
    line: u64,
}

impl<'a> LineCounter<'a> {
    fn new(data: &'a [u8]) -> Self {
        LineCounter {
            data,
            pos: 0,
            line: 1,
        }
    }

    /// Line of the first content of the record the csv reader says starts at `offset`: the
    /// reader's offset is where it began looking, before any blank or comment lines it skipped.
    /// Offsets must not decrease between calls.
    fn record_line(&mut self, offset: u64) -> u64 {
        let offset = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(self.data.len());
        if offset >= self.pos {
            self.line += count_newlines(&self.data[self.pos..offset]);
            self.pos = offset;
        }
        let mut p = self.pos;
        let mut line = self.line;
        if p == 0 && self.data.starts_with(b"\xef\xbb\xbf") {
            p = 3;
        }
        while let Some(&b) = self.data.get(p) {
            match b {
                b'\n' => {
                    line += 1;
                    p += 1;
                }
                b'\r' => p += 1,
                b'#' => match self.data[p..].iter().position(|&c| c == b'\n') {
                    Some(n) => {
                        line += 1;
                        p += n + 1;
                    }
                    None => break,
                },
                _ => break,
            }
        }
        line
    }
}

fn count_newlines(bytes: &[u8]) -> u64 {
    bytes.iter().filter(|&&b| b == b'\n').count() as u64
}

/// Column layout of a list, taken from its header.
struct Columns {
    /// Number of columns every row must have.
    count: usize,
    /// Index of `category_code`, if the list has it.
    category: Option<usize>,
    /// The header as text, for error messages.
    names: String,
}

impl Columns {
    /// Reads the header row. Returns the layout and, for a non-standard header that still starts
    /// with `url`, a warning; or an error when the row is not a header at all.
    fn from_header(fields: &[&str]) -> Result<(Columns, Option<String>), String> {
        let names: Vec<String> = fields
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let f = if i == 0 {
                    f.trim_start_matches('\u{feff}')
                } else {
                    f
                };
                f.trim().to_ascii_lowercase()
            })
            .collect();
        let expected = CITIZENLAB_HEADER.join(",");
        let joined = names.join(",");
        if names.first().map(String::as_str) != Some("url") {
            return Err(format!(
                "not a target list: the first line must be the header '{expected}' \
                 (Citizen Lab test-list format), or the list must have one URL per line; \
                 found '{}'",
                fields.join(",")
            ));
        }
        let cols = Columns {
            count: names.len(),
            category: names.iter().position(|n| n == "category_code"),
            names: joined.clone(),
        };
        let warning = (joined != expected).then(|| {
            format!(
                "header is '{joined}', not the Citizen Lab header '{expected}'; \
                 reading the 'url' column{} anyway",
                if cols.category.is_some() {
                    " and 'category_code'"
                } else {
                    ""
                }
            )
        });
        Ok((cols, warning))
    }
}

/// Reads and parses a list file. An unreadable file is an `Err` naming it; bad rows are
/// returned as [`ListError`]s next to the good targets.
pub fn load_list_file(path: &Path) -> Result<(Vec<Target>, Vec<ListError>), TargetError> {
    let data = std::fs::read(path).map_err(|source| TargetError::Io {
        path: path.display().to_string(),
        source,
    })?;
    Ok(parse_list(&path.display().to_string(), data.as_slice()))
}

/// All embedded lists, Kazakhstan's list first, deduplicated by URL: the probe's default input.
pub fn embedded_default() -> Vec<Target> {
    let mut all = Vec::new();
    for (name, contents) in EMBEDDED_LISTS {
        let (targets, errors) = parse_list(&format!("embedded:{name}"), contents.as_bytes());
        for e in errors {
            // Unit tests keep this from happening; never fail a run over it.
            tracing::warn!("{e}");
        }
        all.extend(targets);
    }
    dedup(all)
}

/// Keeps targets whose category is in `include` (all when `include` is empty) and not in
/// `exclude`; codes compare case-insensitively. Lets volunteers skip categories that would be
/// risky to be seen testing.
///
/// A target without a category is kept only when `include` is empty.
pub fn filter_categories(
    targets: Vec<Target>,
    include: &[String],
    exclude: &[String],
) -> Vec<Target> {
    let norm = |v: &[String]| -> HashSet<String> {
        v.iter()
            .map(|c| c.trim().to_ascii_uppercase())
            .filter(|c| !c.is_empty())
            .collect()
    };
    let include = norm(include);
    let exclude = norm(exclude);
    targets
        .into_iter()
        .filter(|t| {
            let code = t.category_code.as_deref().map(str::to_ascii_uppercase);
            let included =
                include.is_empty() || code.as_ref().is_some_and(|c| include.contains(c.as_str()));
            let excluded = code.as_ref().is_some_and(|c| exclude.contains(c.as_str()));
            included && !excluded
        })
        .collect()
}

/// Removes repeated URLs, keeping the first occurrence (and so the earlier list's category).
/// URLs compare in normalised form, so `https://X.com` and `https://x.com/` are one target.
pub fn dedup(targets: Vec<Target>) -> Vec<Target> {
    let mut seen = HashSet::new();
    targets
        .into_iter()
        .filter(|t| seen.insert(t.parsed.as_str().to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "url,category_code,category_description,date_added,source,notes";

    fn parse(text: &str) -> (Vec<Target>, Vec<ListError>) {
        parse_list("test.csv", text.as_bytes())
    }

    fn list(name: &str) -> &'static str {
        EMBEDDED_LISTS
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, c)| *c)
            .unwrap()
    }

    #[test]
    fn embedded_lists_parse_cleanly() {
        // (name, minimum number of rows)
        let cases = [
            ("citizenlab-kz.csv", 553),
            ("citizenlab-global-kz.csv", 40),
            ("kz-historical.csv", 5),
        ];
        assert_eq!(EMBEDDED_LISTS.len(), cases.len());
        for (name, min) in cases {
            let (targets, errors) = parse_list(name, list(name).as_bytes());
            assert!(errors.is_empty(), "{name}: {errors:?}");
            assert!(targets.len() >= min, "{name}: {} rows", targets.len());
            assert!(targets.iter().all(|t| t.category_code.is_some()), "{name}");
        }
        assert_eq!(EMBEDDED_LISTS[0].0, "citizenlab-kz.csv");
    }

    #[test]
    fn kz_list_without_final_newline_parses_every_row() {
        let kz = list("citizenlab-kz.csv");
        assert!(!kz.ends_with('\n'));
        let (targets, errors) = parse_list("kz", kz.as_bytes());
        assert!(errors.is_empty());
        // 554 physical lines: the header and 553 rows.
        assert_eq!(targets.len(), 553);
        let last = targets.last().unwrap();
        assert!(kz.ends_with(&format!(
            "{},HUMR,Human Rights Issues,2024-04-04,ifkz,",
            last.url
        )));
        assert!(targets.iter().any(|t| t.url == "http://guljan.org/"));
    }

    #[test]
    fn line_numbers_are_physical_lines() {
        // Break row 300 of kz.csv (physical line 301) and blank out line 100: the error must
        // still name line 301, as an editor shows it.
        let mut lines: Vec<String> = list("citizenlab-kz.csv")
            .lines()
            .map(String::from)
            .collect();
        lines[300] = lines[300].replacen("http", "gopher", 1);
        lines[99] = String::new();
        let (targets, errors) = parse_list("kz", lines.join("\n").as_bytes());
        assert_eq!(targets.len(), 551);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].line, 301, "{}", errors[0]);
    }

    #[test]
    fn embedded_default_is_deduplicated_kz_first() {
        let all = embedded_default();
        assert_eq!(all.len(), dedup(all.clone()).len());
        assert_eq!(all[0].source, "embedded:citizenlab-kz.csv");
        for url in [
            "https://twitter.com/",
            "https://x.com/",
            "https://www.livejournal.com/",
            "https://www.facebook.com/",
            "https://www.instagram.com/",
            "https://www.youtube.com/",
            "https://vk.com/",
            "https://www.blogger.com/",
            "https://telegram.org/",
            "https://www.whatsapp.com/",
            "https://signal.org/",
            "https://ok.ru/",
            "https://mail.ru/",
            "https://www.change.org/",
            "https://www.torproject.org/",
            "https://psiphon.ca/",
            "http://respublika-kaz.info/",
            "http://k-plus.tv/",
            "http://stan.kz/",
            "http://elbasy.net/",
            "http://onlinepetition.ru/",
        ] {
            assert!(all.iter().any(|t| t.url == url), "{url} missing");
        }
    }

    #[test]
    fn quoted_notes_with_commas() {
        let text = format!(
            "{HEADER}\nhttps://egov.press/,HUMR,Human Rights Issues,2023-10-17,x,\"a, b, \"\"c\"\"\"\n"
        );
        let (targets, errors) = parse(&text);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(targets.len(), 1);
        assert_eq!(targets[0].category_code.as_deref(), Some("HUMR"));
        let (targets, errors) = parse_list("h", list("kz-historical.csv").as_bytes());
        assert!(errors.is_empty());
        assert_eq!(targets[0].domain, "respublika-kaz.info");
    }

    #[test]
    fn bad_rows_are_reported_with_their_line_and_others_kept() {
        // (bad row, expected words in the problem)
        let cases = [
            ("not a url,NEWS,News Media,2020-01-01,x,", "no scheme"),
            (
                "http://exa mple.com/,NEWS,News Media,2020-01-01,x,",
                "not a valid URL",
            ),
            (
                "ftp://example.org/,FILE,File-sharing,2020-01-01,x,",
                "'ftp' scheme",
            ),
            ("https://example.org/,NEWS,News Media", "expected 6 columns"),
            (
                "https://example.org/,NEWS,News Media,2020-01-01,x,notes,extra",
                "found 7",
            ),
            (",NEWS,News Media,2020-01-01,x,", "empty URL"),
            (
                "https://u:p@example.org/,NEWS,News Media,2020-01-01,x,",
                "password",
            ),
            (
                "mailto:a@example.org,COMT,Communication,2020-01-01,x,",
                "'mailto'",
            ),
        ];
        for (bad, expected) in cases {
            let text = format!(
                "{HEADER}\nhttps://a.example/,NEWS,News Media,2020-01-01,x,\n\n{bad}\nhttps://b.example/,GRP,Social Networking,2020-01-01,x,"
            );
            let (targets, errors) = parse(&text);
            assert_eq!(errors.len(), 1, "{bad}: {errors:?}");
            assert_eq!(errors[0].line, 4, "{bad}");
            assert_eq!(errors[0].source, "test.csv");
            assert!(errors[0].problem.contains(expected), "{bad}: {}", errors[0]);
            let urls: Vec<_> = targets.iter().map(|t| t.url.as_str()).collect();
            assert_eq!(urls, ["https://a.example/", "https://b.example/"], "{bad}");
        }
    }

    #[test]
    fn list_error_display() {
        let e = ListError {
            source: "lists/my.csv".into(),
            line: 7,
            problem: "bad".into(),
        };
        assert_eq!(e.to_string(), "lists/my.csv:7: bad");
    }

    #[test]
    fn crlf_bom_blank_lines_and_comments() {
        let text = format!(
            "\u{feff}{HEADER}\r\n\r\n# a comment\r\nhttps://a.example/,NEWS,News Media,2020-01-01,x,\"multi\r\nline\"\r\nftp://b.example/,NEWS,News Media,2020-01-01,x,\r\nhttp://c.example:8080/p,grp,Social,2020-01-01,x,"
        );
        let (targets, errors) = parse(&text);
        assert_eq!(targets.len(), 2, "{errors:?}");
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].line, 6);
        assert_eq!(targets[0].url, "https://a.example/");
        assert_eq!(targets[1].port(), 8080);
        assert_eq!(targets[1].category_code.as_deref(), Some("grp"));
    }

    #[test]
    fn headers() {
        // Not a list at all: one error, nothing parsed.
        let (t, e) = parse("https://a.example/,NEWS\nhttps://b.example/,NEWS\n");
        assert!(t.is_empty());
        assert_eq!(e.len(), 1);
        assert!(e[0].problem.contains("header"), "{}", e[0]);
        // Non-standard header starting with url: a warning, rows still read.
        let (t, e) = parse("URL,Category_Code\nhttps://a.example/,NEWS\n");
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].category_code.as_deref(), Some("NEWS"));
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].line, 1);
        // Empty input.
        let (t, e) = parse("");
        assert!(t.is_empty());
        assert_eq!(e.len(), 1);
    }

    #[test]
    fn from_url_validation() {
        // (url, domain, https, port)
        let ok = [
            ("https://Example.ORG/a?b", "example.org", true, 443),
            ("http://example.org:8080/", "example.org", false, 8080),
            (
                "http://президент.рф/",
                "xn--d1abbgf6aiiy.xn--p1ai",
                false,
                80,
            ),
            ("https://1.1.1.1/", "1.1.1.1", true, 443),
            ("http://[2001:db8::1]/", "2001:db8::1", false, 80),
            ("https://example.org./", "example.org", true, 443),
            ("  https://example.org/  ", "example.org", true, 443),
        ];
        for (url, domain, https, port) in ok {
            let t = Target::from_url(url, "command-line").unwrap();
            assert_eq!(t.url, url.trim());
            assert_eq!(t.domain, domain, "{url}");
            assert_eq!(t.is_https(), https, "{url}");
            assert_eq!(t.port(), port, "{url}");
            assert_eq!(t.source, "command-line");
        }
        assert_eq!(
            Target::from_url("https://1.1.1.1/", "x").unwrap().ip(),
            Some("1.1.1.1".parse().unwrap())
        );
        assert_eq!(
            Target::from_url("https://a.example/", "x").unwrap().ip(),
            None
        );
        let bad = [
            "",
            "example.org",
            "ftp://example.org/",
            "file:///etc/passwd",
            "https://user@example.org/",
            "http://",
        ];
        for url in bad {
            assert!(Target::from_url(url, "x").is_err(), "{url}");
        }
    }

    #[test]
    fn category_filter() {
        let text = format!(
            "{HEADER}\nhttps://a.example/,NEWS,,,,\nhttps://b.example/,lgbt,,,,\nhttps://c.example/,ANON,,,,\nhttps://d.example/,,,,,\n"
        );
        let (targets, errors) = parse(&text);
        assert!(errors.is_empty());
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        // (include, exclude, expected hosts)
        let cases: [(&[&str], &[&str], &[&str]); 5] = [
            (&[], &[], &["a", "b", "c", "d"]),
            (&["news"], &[], &["a"]),
            (&["NEWS", "LGBT"], &[], &["a", "b"]),
            (&[], &["LGBT", "anon"], &["a", "d"]),
            (&["news", "anon"], &["ANON"], &["a"]),
        ];
        for (inc, exc, expected) in cases {
            let got: Vec<_> = filter_categories(targets.clone(), &s(inc), &s(exc))
                .into_iter()
                .map(|t| t.domain.split('.').next().unwrap().to_string())
                .collect();
            assert_eq!(got, expected, "include {inc:?} exclude {exc:?}");
        }
    }

    #[test]
    fn dedup_keeps_first() {
        let mk = |u: &str, s: &str| Target::from_url(u, s).unwrap();
        let v = vec![
            mk("https://a.example/", "one"),
            mk("https://b.example/", "one"),
            mk("https://A.example", "two"),
            mk("https://b.example/x", "two"),
        ];
        let d = dedup(v);
        let got: Vec<_> = d
            .iter()
            .map(|t| (t.url.as_str(), t.source.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("https://a.example/", "one"),
                ("https://b.example/", "one"),
                ("https://b.example/x", "two")
            ]
        );
    }

    #[test]
    fn one_url_per_line_lists_are_detected_and_bad_lines_reported() {
        let text = "\u{feff}# my list\n\nhttps://a.example/\n  http://b.example/path?x=1,2  \n\
                    example.org\r\nftp://c.example/\n# done\nhttps://d.example";
        let (ts, errs) = parse_list("mine.txt", text.as_bytes());
        let urls: Vec<&str> = ts.iter().map(|t| t.url.as_str()).collect();
        assert_eq!(
            urls,
            [
                "https://a.example/",
                "http://b.example/path?x=1,2",
                "https://d.example"
            ]
        );
        assert!(ts.iter().all(|t| t.category_code.is_none()));
        let lines: Vec<u64> = errs.iter().map(|e| e.line).collect();
        assert_eq!(lines, [5, 6], "{errs:?}");
        assert!(
            errs[0].to_string().starts_with("mine.txt:5: "),
            "{}",
            errs[0]
        );
        assert!(errs[0].problem.contains("no scheme"), "{}", errs[0]);
        assert!(errs[1].problem.contains("ftp"), "{}", errs[1]);
        // A CSV list is still read as CSV, and a header-less CSV is still refused.
        let (ts, errs) = parse(&format!("{HEADER}\nhttps://e.example/,NEWS,News,,,\n"));
        assert_eq!(ts.len(), 1);
        assert!(errs.is_empty());
        assert_eq!(ts[0].category_code.as_deref(), Some("NEWS"));
        let (ts, errs) = parse("site,category\nhttps://e.example/,NEWS\n");
        assert!(ts.is_empty());
        assert!(errs[0].problem.contains("one URL per line"), "{errs:?}");
    }

    #[test]
    fn load_list_file_reports_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.csv");
        let e = load_list_file(&missing).unwrap_err();
        assert!(e.to_string().contains("nope.csv"), "{e}");
        let path = dir.path().join("l.csv");
        std::fs::write(
            &path,
            format!("{HEADER}\nhttps://a.example/,NEWS,,,,\nbad,,,,,\n"),
        )
        .unwrap();
        let (t, e) = load_list_file(&path).unwrap();
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].source, path.display().to_string());
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].line, 3);
        assert!(e[0]
            .to_string()
            .starts_with(&format!("{}:3: ", path.display())));
    }
}
