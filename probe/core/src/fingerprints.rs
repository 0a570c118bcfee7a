//! Known blockpages and blockpage addresses, so a response can be called "blocked" with a
//! reason rather than merely "different from the control".
//!
//! Sources (see `probe/core/data/fingerprints/NOTICE`):
//! - Censored Planet's blockpage and false-positive signatures (Apache-2.0), embedded verbatim;
//!   their names are reported with a `cp.` prefix, as OONI does. They are written for Python's
//!   `re`, so a literal `{` is escaped at load time for the regex crate (two patterns need it).
//! - A small table of facts from OONI's blocking-fingerprints (that repository has no licence,
//!   so only the addresses and strings are used, each cited by its OONI name): blockpage IP
//!   addresses and HTTP patterns of Kazakhstan's neighbours.
//! - The two known Kazakh blockpage phrases (`witness.` names), kept as a safety net: the
//!   Censored Planet file covers both today (`cp.d_corp_kz_ps`, `cp.f_gen_ru_8_satellite`), and
//!   its names win because they come first.
//!
//! All patterns are compiled once into two sets (blockpage and false positive), so a body is
//! scanned once per set instead of once per pattern. Nearly every signature is plain text: those
//! go into one Aho-Corasick automaton (a contiguous NFA, about 1 MiB), and only the few real
//! regular expressions into a [`RegexSet`]. One `RegexSet` of all 600+ signatures cost about
//! 40 MiB of memory, most of the probe's footprint.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::LazyLock;

use aho_corasick::{AhoCorasick, AhoCorasickKind, MatchKind};
use regex::bytes::{RegexBuilder, RegexSet, RegexSetBuilder};
use serde::Deserialize;

/// Censored Planet blockpage signatures (JSON Lines: `{"fingerprint": NAME, "pattern": REGEX}`).
const CP_BLOCKPAGE: &str = include_str!("../data/fingerprints/cp_blockpage_signatures.json");
/// Censored Planet signatures of ordinary pages that other signatures would mistake for
/// blockpages.
const CP_FALSE_POSITIVE: &str =
    include_str!("../data/fingerprints/cp_false_positive_signatures.json");

/// Compiled-size bound for a whole set. The bundled blockpage set needs about 2 MiB; the bound
/// leaves room for updates while stopping a pathological pattern (e.g. a huge counted
/// repetition) from eating memory.
const SET_SIZE_LIMIT: usize = 16 << 20;
/// Lazy-DFA cache bound per set (allocated only as needed). Scanning 512 KiB of random bytes
/// takes under 10 ms with it; a cache that thrashes would fall back to the slow engine.
const SET_DFA_SIZE_LIMIT: usize = 8 << 20;
/// Bound for one pattern, used to find the culprit when a set fails to compile.
const PATTERN_SIZE_LIMIT: usize = 4 << 20;

/// Where an HTTP fact is found and how it matches (OONI's `location_found` and
/// `pattern_type`).
#[derive(Clone, Copy, Debug)]
enum HttpPattern {
    /// The body contains the text.
    Body(&'static str),
    /// The header (canonical name) value starts with the text.
    HeaderPrefix(&'static str, &'static str),
    /// The header value is exactly the text.
    HeaderFull(&'static str, &'static str),
}

impl HttpPattern {
    /// The pattern as a regex over the body or over "Name: value" header lines.
    fn to_regex(self) -> String {
        match self {
            HttpPattern::Body(text) => regex::escape(text),
            HttpPattern::HeaderPrefix(name, text) => {
                format!("(?m)^{}: {}", regex::escape(name), regex::escape(text))
            }
            HttpPattern::HeaderFull(name, text) => {
                format!("(?m)^{}: {}$", regex::escape(name), regex::escape(text))
            }
        }
    }
}

/// HTTP blockpage facts from OONI's `fingerprints_http.csv` (commit
/// 171641e60b54231cad18753a72145da87b0d3e07) for Kazakhstan's neighbours and Russian ISPs
/// whose equipment and practices Kazakh networks share. Country in the comment.
const OONI_HTTP: &[(&str, HttpPattern)] = &[
    // Belarus
    (
        "ooni.by_0",
        HttpPattern::HeaderPrefix("Location", "https://www.a1.by/mininfo/"),
    ),
    (
        "ooni.by_1",
        HttpPattern::HeaderPrefix("Location", "http://82.209.230.23"),
    ),
    (
        "ooni.by_2",
        HttpPattern::HeaderPrefix("Location", "https://internet.mts.by/blocked/"),
    ),
    (
        "ooni.by_3",
        HttpPattern::HeaderPrefix("Location", "https://vk.com/blank.php?rkn="),
    ),
    (
        "cl.isp_by_a1_block",
        HttpPattern::Body("://www.velcom.by/mininfo/css/main.css"),
    ),
    (
        "cl.isp_by_beltelecom_block",
        HttpPattern::Body("О средствах массовой информации\"</div>"),
    ),
    // Kyrgyzstan
    (
        "ooni.kg_0",
        HttpPattern::HeaderFull("Location", "http://homeline.kg/access/blockpage.html"),
    ),
    // Uzbekistan
    (
        "ooni.uz_0",
        HttpPattern::HeaderPrefix("Location", "http://reestr.mitc.uz/"),
    ),
    // Ukraine
    (
        "ooni.ua_0",
        HttpPattern::Body("Відвідування даного ресурсу заборонено"),
    ),
    (
        "ooni.ua_1",
        HttpPattern::HeaderPrefix("Location", "http://blocked.triolan.com.ua"),
    ),
    // Russia: blockpage bodies
    (
        "ooni.ru_0",
        HttpPattern::Body("Доступ к сайту ограничен в соответствии с Федеральными законами"),
    ),
    (
        "ooni.ru_1",
        HttpPattern::Body(
            "распространение которой в Российской Федерации запрещено! Данный ресурс включен в \
             ЕДИНЫЙ РЕЕСТР доменных имен, указателей страниц сайтов в сети «Интернет» и сетевых \
             адресов, позволяющих идентифицировать",
        ),
    ),
    (
        "ooni.ru_4",
        HttpPattern::Body("<h1>Доступ к запрашиваемому ресурсу закрыт."),
    ),
    ("ooni.ru_5", HttpPattern::Body("http://eais.rkn.gov.ru/")),
    (
        "ooni.ru_8",
        HttpPattern::Body("Орион телеком :: ДОСТУП ЗАПРЕЩЕН"),
    ),
    (
        "ooni.ru_21",
        HttpPattern::Body("Доступ к запрашиваемому Вами Интернет-ресурсу ограничен в <br>"),
    ),
    (
        "ooni.ru_30",
        HttpPattern::Body("TTK :: Доступ к ресурсу ограничен"),
    ),
    (
        "ooni.ru_38",
        HttpPattern::Body("<title>block-system</title>"),
    ),
    (
        "ooni.ru_39",
        HttpPattern::Body("<title>Federal block</title>"),
    ),
    (
        "ooni.ru_41",
        HttpPattern::Body("http://www.beeline.ru/customers/help/safe-beeline/"),
    ),
    // Russia: redirects to blockpages
    (
        "ooni.ru_6",
        HttpPattern::HeaderPrefix("Location", "http://warning.rt.ru"),
    ),
    (
        "ooni.ru_9",
        HttpPattern::HeaderPrefix("Location", "http://site-blocked.ru"),
    ),
    (
        "ooni.ru_17",
        HttpPattern::HeaderPrefix("Location", "http://blocked.mgts.ru"),
    ),
    (
        "ooni.ru_25",
        HttpPattern::HeaderPrefix("Location", "http://block.rt.ru"),
    ),
    (
        "ooni.ru_29",
        HttpPattern::HeaderPrefix("Location", "http://fz139.ttk.ru"),
    ),
    (
        "ooni.ru_55",
        HttpPattern::HeaderPrefix("Location", "http://blocked.netbynet.ru"),
    ),
    (
        "ooni.ru_64",
        HttpPattern::HeaderPrefix("Location", "https://forbidden.yota.ru"),
    ),
    (
        "ooni.ru_65",
        HttpPattern::HeaderPrefix("Location", "http://forbidden.yota.ru"),
    ),
    (
        "ooni.ru_77",
        HttpPattern::HeaderPrefix("Location", "https://www.ufanet.ru/blocking.html"),
    ),
];

/// The two blockpage phrases publicly reported from Kazakhstan.
const KZ_HTTP: &[(&str, HttpPattern)] = &[
    // Russian: "Page blocked".
    (
        "witness.kz_blocked_ru",
        HttpPattern::Body("Страница заблокирована"),
    ),
    // Kazakh: "The resource poses a threat to information security".
    (
        "witness.kz_blocked_kk",
        HttpPattern::Body("Ресурста ақпараттық қауіпсіздікке төнетін қауіп-қатер бар"),
    ),
];

const fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

/// Blockpage and sinkhole addresses from OONI's `fingerprints_dns.csv` (commit
/// 171641e60b54231cad18753a72145da87b0d3e07), for the region: a DNS answer with one of them is
/// DNS tampering, whatever the control says.
const OONI_DNS: &[(IpAddr, &str)] = &[
    (v4(134, 17, 0, 7), "ooni.by_4"),               // BY: mobile ISP MTS
    (v4(8, 7, 198, 45), "ooni.cn_0"),               // CN: Great Firewall poison reply
    (v4(159, 106, 121, 75), "ooni.cn_5"),           // CN: Great Firewall poison reply
    (v4(203, 98, 7, 65), "ooni.cn_6"),              // CN: Great Firewall poison reply
    (v4(10, 10, 34, 34), "ooni.ir_4"),              // IR: national blockpage
    (v4(10, 10, 34, 35), "ooni.ir_5"),              // IR: national blockpage
    (v4(10, 10, 34, 36), "ooni.ir_10dot10_ipv4_1"), // IR
    (
        IpAddr::V6(Ipv6Addr::new(0xd0, 0, 0, 0, 0, 0, 0, 0x11)),
        "ooni.ir_ipv6_1",
    ), // IR
    (v4(218, 100, 84, 78), "ooni.mn_0"),            // MN: legal block
    (v4(159, 255, 26, 69), "ooni.ru_83"),           // RU: DNS-based RKN filtering product
    (v4(193, 58, 251, 1), "ooni.ru_84"),            // RU: SkyDNS filter product
    (v4(217, 148, 54, 171), "ooni.ru_88"),          // RU: Rostelecom block system
    (v4(185, 37, 129, 10), "ooni.ru_89"),           // RU: ISP Skynet RKN blockpage
    (v4(46, 175, 31, 250), "ooni.ru_90"),           // RU: ISP Nauka-Svyaz RKN blockpage
    (v4(212, 1, 226, 59), "ooni.ru_93"),            // RU: ISP NetByNet RKN blockpage
    (v4(87, 241, 223, 133), "ooni.ru_95"),          // RU: ISP Enforta blockpage
    (v4(5, 3, 3, 17), "ooni.ru_96"),                // RU: ISP Ertelecom RKN blockpage
    (v4(95, 167, 13, 50), "ooni.ru_dns_1"),         // RU: Rostelecom blockpage
    (v4(95, 167, 13, 51), "ooni.ru_dns_2"),         // RU: Rostelecom blockpage
    (v4(195, 175, 254, 2), "ooni.tr_6"),            // TR: poisoned DNS reply since 2014
];

/// One line of a Censored Planet signature file.
#[derive(Deserialize)]
struct CpSignature {
    fingerprint: String,
    pattern: String,
}

/// A compiled set of named patterns: the plain-text ones in an Aho-Corasick automaton, the
/// others in a [`RegexSet`]. `names[i]` belongs to signature `i`, whichever holds it.
#[derive(Debug)]
struct Signatures {
    /// The plain-text signatures; pattern `k` is signature `literal_ids[k]`.
    literals: Option<AhoCorasick>,
    literal_ids: Vec<usize>,
    /// The regular expressions; pattern `k` is signature `regex_ids[k]`.
    set: RegexSet,
    regex_ids: Vec<usize>,
    names: Vec<String>,
}

impl Signatures {
    /// Compiles `(name, regex)` pairs, skipping (with a warning) any pattern the regex crate
    /// rejects, so one bad upstream pattern cannot disable matching.
    fn compile(kind: &str, entries: Vec<(String, String)>) -> Signatures {
        let mut literal_texts = Vec::new();
        let mut literal_ids = Vec::new();
        let mut regexes: Vec<(String, String)> = Vec::new();
        let mut regex_ids = Vec::new();
        let mut names = Vec::new();
        for (name, pattern) in entries {
            match plain_text(&pattern) {
                Some(text) if !text.is_empty() => {
                    literal_ids.push(names.len());
                    literal_texts.push(text);
                }
                _ => {
                    regex_ids.push(names.len());
                    regexes.push((name.clone(), pattern));
                }
            }
            names.push(name);
        }
        let literals = if literal_texts.is_empty() {
            None
        } else {
            match AhoCorasick::builder()
                .kind(Some(AhoCorasickKind::ContiguousNFA))
                .match_kind(MatchKind::Standard)
                .build(&literal_texts)
            {
                Ok(ac) => Some(ac),
                Err(e) => {
                    tracing::warn!("{kind} text signatures disabled: {e}");
                    None
                }
            }
        };
        let (set, regex_ids) = compile_regexes(kind, regexes, regex_ids);
        Signatures {
            literals,
            literal_ids,
            set,
            regex_ids,
            names,
        }
    }

    /// Name of the first (lowest-index) signature matching any haystack.
    fn first_match(&self, haystacks: &[&[u8]]) -> Option<&str> {
        let mut best: Option<usize> = None;
        let mut consider = |i: usize| best = Some(best.map_or(i, |b| b.min(i)));
        for h in haystacks {
            if let Some(ac) = &self.literals {
                for m in ac.find_overlapping_iter(*h) {
                    if let Some(&i) = self.literal_ids.get(m.pattern().as_usize()) {
                        consider(i);
                    }
                }
            }
            if let Some(k) = self.set.matches(h).iter().next() {
                if let Some(&i) = self.regex_ids.get(k) {
                    consider(i);
                }
            }
        }
        best.and_then(|i| self.names.get(i)).map(String::as_str)
    }

    /// True when any signature matches any haystack.
    fn any_match(&self, haystacks: &[&[u8]]) -> bool {
        haystacks.iter().any(|h| {
            self.literals.as_ref().is_some_and(|ac| ac.is_match(*h)) || self.set.is_match(h)
        })
    }
}

/// One `RegexSet` of the patterns that are real regular expressions; a pattern that does not
/// compile is left out with a warning. Returns the set and the signature index of each of its
/// patterns.
fn compile_regexes(
    kind: &str,
    entries: Vec<(String, String)>,
    ids: Vec<usize>,
) -> (RegexSet, Vec<usize>) {
    let build = |entries: &[(String, String)]| {
        RegexSetBuilder::new(entries.iter().map(|(_, p)| p))
            .size_limit(SET_SIZE_LIMIT)
            .dfa_size_limit(SET_DFA_SIZE_LIMIT)
            .build()
    };
    if let Ok(set) = build(&entries) {
        return (set, ids);
    }
    // Find the culprits one by one; only on this slow path.
    let compiles = |pattern: &str| {
        RegexBuilder::new(pattern)
            .size_limit(PATTERN_SIZE_LIMIT)
            .build()
            .map(|_| ())
    };
    let (kept, kept_ids): (Vec<(String, String)>, Vec<usize>) = entries
        .into_iter()
        .zip(ids)
        .filter(|((name, pattern), _)| match compiles(pattern) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(signature = %name, "skipping {kind} signature: {e}");
                false
            }
        })
        .unzip();
    match build(&kept) {
        Ok(set) => (set, kept_ids),
        Err(e) => {
            tracing::warn!("all {kind} regex signatures disabled, the set does not compile: {e}");
            (RegexSet::empty(), Vec::new())
        }
    }
}

/// The text a pattern matches when it is plain text (letters, spaces, and metacharacters only
/// when escaped, such as `fortinet\.net`); `None` for a real regular expression.
fn plain_text(pattern: &str) -> Option<String> {
    let mut out = String::with_capacity(pattern.len());
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                let next = chars.next()?;
                // `\.` is a literal dot; `\w`, `\d`, `\b`, `\n`... are not plain text.
                if next.is_ascii_alphanumeric() || next.is_whitespace() {
                    return None;
                }
                out.push(next);
            }
            '.' | '^' | '$' | '*' | '+' | '?' | '(' | ')' | '[' | ']' | '{' | '}' | '|' => {
                return None
            }
            other => out.push(other),
        }
    }
    Some(out)
}

/// Escapes each `{` outside a character class that does not open a counted repetition
/// (`{n}`, `{n,}`, `{n,m}`, `{,m}`), as Python's `re` treats such braces as literals.
fn python_braces(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len() + 4);
    let mut chars = pattern.char_indices().peekable();
    let mut in_class = false;
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => {
                out.push(c);
                if let Some((_, next)) = chars.next() {
                    out.push(next);
                }
            }
            '[' if !in_class => {
                in_class = true;
                out.push(c);
                // A `]` right after `[` or `[^` is a literal member of the class.
                if let Some(&(_, '^')) = chars.peek() {
                    out.push('^');
                    chars.next();
                }
                if let Some(&(_, ']')) = chars.peek() {
                    out.push(']');
                    chars.next();
                }
            }
            ']' if in_class => {
                in_class = false;
                out.push(c);
            }
            '{' if !in_class => {
                let rest = &pattern[i + 1..];
                let is_repetition = rest.find('}').is_some_and(|end| {
                    let inner = &rest[..end];
                    let (min, max) = inner.split_once(',').unwrap_or((inner, ""));
                    !inner.is_empty()
                        && inner != ","
                        && min.bytes().all(|b| b.is_ascii_digit())
                        && max.bytes().all(|b| b.is_ascii_digit())
                });
                out.push_str(match (is_repetition, rest.starts_with(',')) {
                    (true, true) => "{0", // `{,m}`: spell out the minimum
                    (true, false) => "{",
                    (false, _) => "\\{",
                });
            }
            _ => out.push(c),
        }
    }
    out
}

/// Reads a Censored Planet JSON Lines file into `(cp.NAME, pattern)` pairs, skipping (with a
/// warning) lines that are not valid JSON.
fn cp_entries(kind: &str, jsonl: &str) -> Vec<(String, String)> {
    jsonl
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .filter_map(
            |(i, line)| match serde_json::from_str::<CpSignature>(line) {
                // Written for Python's `re`: translate its literal braces.
                Ok(s) => Some((format!("cp.{}", s.fingerprint), python_braces(&s.pattern))),
                Err(e) => {
                    tracing::warn!("skipping {kind} signature file line {}: {e}", i + 1);
                    None
                }
            },
        )
        .collect()
}

/// The blockpage and sinkhole fingerprints, compiled once; use [`Fingerprints::bundled`].
#[derive(Debug)]
pub struct Fingerprints {
    /// Blockpage patterns, Censored Planet first, then OONI facts, then the Kazakh phrases.
    blockpage: Signatures,
    /// Patterns of ordinary pages; a match here overrides a blockpage match.
    false_positive: Signatures,
    /// Known blockpage/sinkhole addresses.
    dns: &'static [(IpAddr, &'static str)],
}

static BUNDLED: LazyLock<Fingerprints> = LazyLock::new(Fingerprints::build);

impl Fingerprints {
    /// The fingerprints shipped in the binary, compiled on first use (about 0.1 s, once per
    /// process) and shared by all checks.
    pub fn bundled() -> &'static Fingerprints {
        &BUNDLED
    }

    fn build() -> Fingerprints {
        let mut blockpage = cp_entries("blockpage", CP_BLOCKPAGE);
        blockpage.extend(
            OONI_HTTP
                .iter()
                .chain(KZ_HTTP)
                .map(|(name, p)| (name.to_string(), p.to_regex())),
        );
        Fingerprints {
            blockpage: Signatures::compile("blockpage", blockpage),
            false_positive: Signatures::compile(
                "false-positive",
                cp_entries("false-positive", CP_FALSE_POSITIVE),
            ),
            dns: OONI_DNS,
        }
    }

    /// Name of the blockpage signature the response matches, if any; a false-positive signature
    /// match wins (returns None).
    ///
    /// `headers` are `(name, value)` pairs (names in any case); they are matched as
    /// `Name: value` lines with canonical capitalisation, the form the signatures are written
    /// in. The body is matched as bytes, so a body that is not valid UTF-8 costs no copy (text
    /// in other encodings, e.g. windows-1251, does not match the UTF-8 patterns).
    pub fn match_response(&self, headers: &[(String, String)], body: &[u8]) -> Option<String> {
        let header_text = header_lines(headers);
        let haystacks = [header_text.as_bytes(), body];
        let name = self.blockpage.first_match(&haystacks)?;
        if self.false_positive.any_match(&haystacks) {
            return None;
        }
        Some(name.to_string())
    }

    /// OONI-style name if this address is a known blockpage/sinkhole address.
    pub fn match_dns_answer(&self, ip: IpAddr) -> Option<&'static str> {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.dns
            .iter()
            .find(|(known, _)| *known == ip)
            .map(|(_, name)| *name)
    }
}

/// Headers as `Name: value` lines, names in canonical capitalisation (`content-type` ->
/// `Content-Type`).
fn header_lines(headers: &[(String, String)]) -> String {
    let mut out = String::new();
    for (name, value) in headers {
        for (i, part) in name.split('-').enumerate() {
            if i > 0 {
                out.push('-');
            }
            let mut chars = part.chars();
            if let Some(first) = chars.next() {
                out.push(first.to_ascii_uppercase());
                out.extend(chars.map(|c| c.to_ascii_lowercase()));
            }
        }
        out.push_str(": ");
        out.push_str(value);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp() -> &'static Fingerprints {
        Fingerprints::bundled()
    }

    fn body(text: &str) -> Option<String> {
        fp().match_response(&[], text.as_bytes())
    }

    fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn every_pattern_compiles() {
        // Lines in the bundled files: 622 blockpage and 460 false-positive signatures. A
        // pattern the regex crate rejects would lower these counts.
        let cp_blockpage = cp_entries("blockpage", CP_BLOCKPAGE).len();
        let cp_fp = cp_entries("false-positive", CP_FALSE_POSITIVE).len();
        assert_eq!(cp_blockpage, 622);
        assert_eq!(cp_fp, 460);
        assert_eq!(
            fp().blockpage.names.len(),
            cp_blockpage + OONI_HTTP.len() + KZ_HTTP.len()
        );
        for sigs in [&fp().blockpage, &fp().false_positive] {
            assert_eq!(sigs.usable_names().len(), sigs.names.len());
        }
        assert_eq!(fp().false_positive.names.len(), cp_fp);
        assert_eq!(OONI_HTTP.len(), 29);
        assert_eq!(OONI_DNS.len(), 20);
    }

    impl Signatures {
        /// Names of the signatures that compiled, in signature order.
        fn usable_names(&self) -> Vec<&str> {
            let mut ids: Vec<usize> = self
                .literal_ids
                .iter()
                .chain(&self.regex_ids)
                .copied()
                .collect();
            ids.sort_unstable();
            ids.into_iter().map(|i| self.names[i].as_str()).collect()
        }
    }

    #[test]
    fn plain_text_signatures_are_recognised() {
        assert_eq!(
            plain_text(r"fortinet\.net").as_deref(),
            Some("fortinet.net")
        );
        assert_eq!(
            plain_text("Доступ ограничен").as_deref(),
            Some("Доступ ограничен")
        );
        assert_eq!(plain_text(r"a\(b\)").as_deref(), Some("a(b)"));
        for regex in [
            r"a.b",
            r"\d+",
            r"(?m)^Server: x",
            r"a|b",
            r"x{2}",
            r"\bword",
            "tail\\",
        ] {
            assert_eq!(plain_text(regex), None, "{regex}");
        }
        // Nearly every bundled signature is plain text: the point of the split.
        let fp = fp();
        assert!(
            fp.blockpage.literal_ids.len() > 500,
            "{}",
            fp.blockpage.literal_ids.len()
        );
        assert!(
            fp.blockpage.regex_ids.len() < 50,
            "{}",
            fp.blockpage.regex_ids.len()
        );
    }

    #[test]
    fn python_braces_are_escaped() {
        // (Python pattern, equivalent for the regex crate)
        let cases = [
            (r#"{"msg":.*"id":"#, r#"\{"msg":.*"id":"#),
            (
                r#"{"error":"Document not found"}"#,
                r#"\{"error":"Document not found"}"#,
            ),
            ("a{2}b{1,}c{1,3}d{,4}", "a{2}b{1,}c{1,3}d{0,4}"),
            (r"\{x[{]", r"\{x[{]"),
            ("[]{]x{", r"[]{]x\{"),
            ("{,}", r"\{,}"),
        ];
        for (python, rust) in cases {
            assert_eq!(python_braces(python), rust, "{python}");
            assert!(regex::Regex::new(rust).is_ok(), "{rust}");
        }
        // The two upstream false-positive signatures that need it are kept and match.
        let s = &fp().false_positive;
        let json = br#"{"msg":"not allowed","id":42}"#;
        assert_eq!(s.first_match(&[json]), Some("cp.x_msg_id"));
        assert_eq!(
            s.first_match(&[br#"{"error":"Document not found"}"#]),
            Some("cp.x_doc_not_found")
        );
    }

    #[test]
    fn bad_pattern_is_skipped_not_fatal() {
        let s = Signatures::compile(
            "test",
            vec![
                ("good".into(), "abc".into()),
                ("bad".into(), "(unclosed".into()),
                ("huge".into(), "a{100000}{100000}".into()),
                ("also_good".into(), "x+y".into()),
            ],
        );
        assert_eq!(s.usable_names(), ["good", "also_good"]);
        assert_eq!(s.first_match(&[b"--xxy--"]), Some("also_good"));
        assert_eq!(s.first_match(&[b"--abc--"]), Some("good"));
        assert_eq!(s.first_match(&[b"(unclosed"]), None);
    }

    #[test]
    fn bodies() {
        // (body, expected signature name)
        let cases: &[(&str, Option<&str>)] = &[
            (
                "<html><body><h1>FortiGuard Web Filtering</h1>blocked</body></html>",
                Some("cp.a_prod_fortinet_1"),
            ),
            (
                "<html><head><title>Қазақстан</title></head><body><p>Ресурста ақпараттық \
                 қауіпсіздікке төнетін қауіп-қатер бар</p></body></html>",
                Some("cp.f_gen_ru_8_satellite"),
            ),
            (
                "<html><body><h2>Страница заблокирована</h2></body></html>",
                Some("cp.d_corp_kz_ps"),
            ),
            (
                "<p>Доступ к запрашиваемому Вами Интернет-ресурсу ограничен в <br> соответствии</p>",
                Some("ooni.ru_21"),
            ),
            (
                "<html><head><title>Новости Казахстана</title></head><body><p>Сегодня в Алматы \
                 солнечно.</p></body></html>",
                None,
            ),
            ("", None),
        ];
        for (text, expected) in cases {
            assert_eq!(body(text).as_deref(), *expected, "{text}");
        }
    }

    #[test]
    fn kazakh_phrases_have_fallback_patterns() {
        // The witness patterns compile and would match on their own (if the CP file lost them).
        for (name, p) in KZ_HTTP {
            let HttpPattern::Body(text) = p else {
                panic!("{name}")
            };
            let s = Signatures::compile("test", vec![(name.to_string(), p.to_regex())]);
            assert_eq!(s.first_match(&[text.as_bytes()]), Some(*name));
        }
    }

    #[test]
    fn false_positive_wins() {
        let nginx = "<html><head><title>Welcome to nginx!</title></head><body>\
            <p>If you see this page, the nginx web server is successfully installed.</p>\
            <p><em>Thank you for using nginx.</em></p></body></html>";
        assert_eq!(body(nginx), None);
        // A blockpage phrase inside a page the false-positive list knows is still not a
        // blockpage.
        let mixed = format!("FortiGuard Web Filtering {nginx}");
        assert!(fp().blockpage.first_match(&[mixed.as_bytes()]).is_some());
        assert_eq!(body(&mixed), None);
    }

    #[test]
    fn headers_match_as_name_value_lines() {
        // (headers, expected signature name)
        type Case = (
            &'static [(&'static str, &'static str)],
            Option<&'static str>,
        );
        let cases: &[Case] = &[
            (
                &[("server", "Barracuda/NGFirewall")],
                Some("cp.a_prod_barracuda_2"),
            ),
            (
                &[
                    ("content-type", "text/html"),
                    ("location", "http://homeline.kg/access/blockpage.html"),
                ],
                Some("ooni.kg_0"),
            ),
            (
                &[("location", "http://homeline.kg/access/blockpage.html?x")],
                None,
            ),
            (
                &[("Location", "http://reestr.mitc.uz/?site=example.org")],
                Some("ooni.uz_0"),
            ),
            (
                &[("location", "http://warning.rt.ru/?id=1")],
                Some("ooni.ru_6"),
            ),
            (&[("server", "nginx")], None),
            // A value that only names the blockpage host in another header does not count.
            (&[("referer", "http://reestr.mitc.uz/")], None),
        ];
        for (headers, expected) in cases {
            let got = fp().match_response(&h(headers), b"<html></html>");
            assert_eq!(got.as_deref(), *expected, "{headers:?}");
        }
    }

    #[test]
    fn header_lines_are_canonical() {
        assert_eq!(
            header_lines(&h(&[("content-type", "a"), ("SERVER", "b"), ("x-", "c")])),
            "Content-Type: a\nServer: b\nX-: c\n"
        );
    }

    #[test]
    fn dns_answers() {
        let cases: &[(&str, Option<&str>)] = &[
            ("95.167.13.50", Some("ooni.ru_dns_1")),
            ("10.10.34.34", Some("ooni.ir_4")),
            ("134.17.0.7", Some("ooni.by_4")),
            ("d0::11", Some("ooni.ir_ipv6_1")),
            ("::ffff:95.167.13.51", Some("ooni.ru_dns_2")),
            ("8.8.8.8", None),
            ("2001:4860:4860::8888", None),
        ];
        for (ip, expected) in cases {
            assert_eq!(
                fp().match_dns_answer(ip.parse().unwrap()),
                *expected,
                "{ip}"
            );
        }
    }

    #[test]
    fn large_body_is_fast_enough() {
        // A run matches hundreds of bodies of up to 512 KiB; keep one well under a second even
        // in debug builds (the dependency is optimised in dev builds by the workspace profile).
        let mut page = String::from("<html><head><title>t</title></head><body>");
        while page.len() < 512 * 1024 {
            page.push_str(
                "<p>Lorem ipsum dolor sit amet, Казахстан 2022 — <a href=\"/x\">x</a></p>\n",
            );
        }
        let start = std::time::Instant::now();
        for _ in 0..3 {
            assert_eq!(body(&page), None);
        }
        let per_body = start.elapsed() / 3;
        assert!(per_body.as_millis() < 1000, "{per_body:?} per body");
        page.push_str("Страница заблокирована");
        assert_eq!(body(&page).as_deref(), Some("cp.d_corp_kz_ps"));
    }
}
