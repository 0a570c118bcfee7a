//! Finding the probe's own addresses in any encoding a censor may echo them in.
//!
//! A resolver, a blockpage or a site can write the volunteer's address back in a form that a
//! plain search for `a.b.c.d` misses: `a-b-c-d.isp.kz`, `0x0a000001`, `167772161`,
//! `d.c.b.a.in-addr.arpa`, `::ffff:0a00:0001`, `%31%30%2E...`, base64 of `ip=a.b.c.d`, ...
//! [`Needles`] finds them all (the list is in `docs/security.md`), so they can be replaced.
//!
//! How: the text is searched in up to three layers (as written, with escapes decoded once,
//! twice: `%XX`, `&#NN;`, `&#xHH;`, `\xHH`, `\uHHHH`), each layer keeping, for every byte, the
//! span of the original text it came from, so a hit in a decoded layer scrubs the original
//! bytes. In each layer four detectors run:
//! - four numbers separated by short punctuation (`.`, `-`, `_`, `,`, `:`, `/`, space, ...),
//!   each read as decimal, zero-padded decimal, octal or hex (`0x` or bare), in order or
//!   reversed: dotted, dashed, octal, dotted hex, reverse DNS;
//! - whole-number forms of an IPv4 address (decimal, octal, hex, both byte orders, 12 padded
//!   digits), and the hex or reversed-nibble forms of an IPv6 prefix;
//! - IPv6-looking runs (also with `-` for `:`), parsed, and their groups padded and joined, so
//!   compressed, zero-padded, mixed-case and IPv4-embedding forms (mapped, compatible, 6to4,
//!   NAT64, Teredo) are caught;
//! - base64 and base64url runs, decoded at each of the four alignments and searched again
//!   (and for the raw address bytes): whole runs are scrubbed.
//!
//! An IPv6 address is matched on its /64 (the prefix identifies the subscriber; the interface
//! id may be random), except a link-local one, matched whole.
//!
//! False positives are accepted where they are rare (four specific numbers in a row): the
//! volunteer's safety comes before a few characters of measurement text.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::Range;

use regex::bytes::Regex;

use super::SCRUBBED;

/// How many rounds of scrubbing before a text that still matches is replaced whole.
const ROUNDS: usize = 3;
/// Shortest base64 run examined (base64 of four bytes is six characters).
const MIN_BASE64: usize = 6;
/// Shortest text form of an address (`1.1.1.1`).
const MIN_TEXT: usize = 7;
/// Longest text parsed as one IPv6 address.
const MAX_V6_TEXT: usize = 64;
/// Longest number token read as an address component.
const MAX_COMPONENT: usize = 12;

/// The probe's addresses, prepared for searching.
#[derive(Debug, Clone)]
pub struct Needles {
    v4: Vec<[u8; 4]>,
    v6: Vec<V6Needle>,
    /// Literal forms, lower case, searched in every layer.
    literals: Option<Regex>,
    /// Literal forms searched with separators removed (hex and reversed nibbles).
    compact: Option<Regex>,
    /// Raw bytes searched in base64-decoded data.
    raw: Vec<Vec<u8>>,
}

#[derive(Debug, Clone)]
struct V6Needle {
    segments: [u16; 8],
    /// Segments compared: 4 (the /64) or 8 (a link-local address).
    width: usize,
}

impl V6Needle {
    fn matches(&self, other: &Ipv6Addr) -> bool {
        self.segments[..self.width] == other.segments()[..self.width]
    }
}

fn alternation(mut lits: Vec<String>) -> Option<Regex> {
    lits.retain(|l| !l.is_empty());
    lits.sort();
    lits.dedup();
    if lits.is_empty() {
        return None;
    }
    let pat: Vec<String> = lits.iter().map(|l| regex::escape(l)).collect();
    Regex::new(&pat.join("|")).ok()
}

impl Needles {
    /// Needles for `addrs`. An IPv4-mapped IPv6 address counts as its IPv4 address too.
    pub fn new(addrs: impl IntoIterator<Item = IpAddr>) -> Self {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for a in addrs {
            match a {
                IpAddr::V4(x) => v4.push(x.octets()),
                IpAddr::V6(x) => {
                    if let Some(m) = x.to_ipv4_mapped() {
                        v4.push(m.octets());
                    } else {
                        let link_local = x.segments()[0] & 0xffc0 == 0xfe80;
                        v6.push(V6Needle {
                            segments: x.segments(),
                            width: if link_local { 8 } else { 4 },
                        });
                    }
                }
            }
        }
        v4.sort();
        v4.dedup();
        let mut literals = Vec::new();
        let mut compact = Vec::new();
        let mut raw = Vec::new();
        for o in &v4 {
            let n = u32::from_be_bytes(*o);
            let sw = n.swap_bytes();
            for x in [n, sw] {
                literals.push(x.to_string());
                literals.push(format!("0{x:o}"));
                literals.push(format!("{x:08x}"));
                compact.push(format!("{x:08x}"));
                // Unpadded hex, when long enough not to match by chance.
                let h = format!("{x:x}");
                if h.len() >= 6 {
                    literals.push(h);
                }
            }
            // Teredo stores the client address inverted.
            compact.push(format!("{:08x}", !n));
            literals.push(format!("{:03}{:03}{:03}{:03}", o[0], o[1], o[2], o[3]));
            raw.push(o.to_vec());
        }
        for n in &v6 {
            let hex: String = n.segments[..n.width]
                .iter()
                .map(|s| format!("{s:04x}"))
                .collect();
            let rev: String = hex.chars().rev().collect();
            let rev_dotted: Vec<String> = rev.chars().map(|c| c.to_string()).collect();
            literals.push(hex.clone());
            literals.push(rev_dotted.join("."));
            compact.push(hex);
            compact.push(rev);
            raw.push(
                n.segments[..n.width]
                    .iter()
                    .flat_map(|s| s.to_be_bytes())
                    .collect(),
            );
        }
        Needles {
            v4,
            v6,
            literals: alternation(literals),
            compact: alternation(compact),
            raw,
        }
    }

    /// Whether there is nothing to look for.
    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    /// Whether `ip` itself is one of ours (an IPv6 address on our /64 counts).
    pub fn is_own(&self, ip: &IpAddr) -> bool {
        match ip {
            IpAddr::V4(x) => self.v4.contains(&x.octets()),
            IpAddr::V6(x) => match x.to_ipv4_mapped() {
                Some(m) => self.v4.contains(&m.octets()),
                None => self.v6.iter().any(|n| n.matches(x)),
            },
        }
    }

    /// Whether `text` holds one of the addresses in any known encoding.
    pub fn found_in(&self, text: &str) -> bool {
        !self.is_empty() && !self.find(text.as_bytes(), 0).is_empty()
    }

    /// `text` with every encoding of the addresses replaced by [`SCRUBBED`]. A text that still
    /// matches after a few rounds (pieces that join up again) is replaced whole.
    pub fn scrub(&self, text: &str) -> String {
        if self.is_empty() {
            return text.to_string();
        }
        let mut out = text.to_string();
        for _ in 0..ROUNDS {
            let hits = self.find(out.as_bytes(), 0);
            if hits.is_empty() {
                return out;
            }
            out = replace(&out, hits);
        }
        if self.find(out.as_bytes(), 0).is_empty() {
            out
        } else {
            SCRUBBED.to_string()
        }
    }

    /// Byte ranges of `text` that encode an address, merged.
    fn find(&self, text: &[u8], depth: usize) -> Vec<Range<usize>> {
        let mut hits = Vec::new();
        let mut layer = Layer::identity(text);
        for round in 0..3 {
            self.find_in_layer(&layer, depth, &mut hits);
            if round == 2 {
                break;
            }
            match layer.unescape() {
                Some(next) => layer = next,
                None => break,
            }
        }
        merge(hits)
    }

    fn find_in_layer(&self, layer: &Layer, depth: usize, hits: &mut Vec<Range<usize>>) {
        let lower = layer.bytes.to_ascii_lowercase();
        let mut local = Vec::new();
        self.tuples(&lower, &mut local);
        if let Some(re) = &self.literals {
            local.extend(re.find_iter(&lower).map(|m| m.range()));
        }
        self.v6_runs(&lower, &mut local);
        if let Some(re) = &self.compact {
            let c = Layer::compact(&lower);
            for m in re.find_iter(&c.bytes) {
                local.push(c.span(m.range()));
            }
        }
        if depth == 0 {
            self.base64_runs(&layer.bytes, &mut local);
        }
        hits.extend(local.into_iter().map(|r| layer.span(r)));
    }

    /// Four numbers with short punctuation between them.
    fn tuples(&self, lower: &[u8], out: &mut Vec<Range<usize>>) {
        if self.v4.is_empty() {
            return;
        }
        let tokens = tokens(lower);
        for w in tokens.windows(4) {
            let joined = w
                .windows(2)
                .all(|p| separator(&lower[p[0].end..p[1].start]));
            if !joined {
                continue;
            }
            let first = &lower[w[0].clone()];
            let last = &lower[w[3].clone()];
            let mid1 = values(&lower[w[1].clone()]);
            let mid2 = values(&lower[w[2].clone()]);
            if mid1.is_empty() || mid2.is_empty() {
                continue;
            }
            for o in &self.v4 {
                for (a, b, c, d) in [(o[0], o[1], o[2], o[3]), (o[3], o[2], o[1], o[0])] {
                    if !mid1.contains(&b) || !mid2.contains(&c) {
                        continue;
                    }
                    // A part of the first or last token counts when it is not cut out of a
                    // longer number: `ip1.2.3.4x` is 1.2.3.4, `1.2.3.45` is not.
                    let start = (1..=first.len().min(MAX_COMPONENT)).rev().find(|&n| {
                        let at = first.len() - n;
                        !(at > 0 && first[at - 1].is_ascii_digit() && first[at].is_ascii_digit())
                            && values(&first[at..]).contains(&a)
                    });
                    let end = (1..=last.len().min(MAX_COMPONENT)).rev().find(|&n| {
                        !(n < last.len()
                            && last[n].is_ascii_digit()
                            && last[n - 1].is_ascii_digit())
                            && values(&last[..n]).contains(&d)
                    });
                    if let (Some(s), Some(e)) = (start, end) {
                        out.push(w[0].end - s..w[3].start + e);
                    }
                }
            }
        }
    }

    /// IPv6-looking runs: parsed whole and in parts, and their groups padded and joined.
    fn v6_runs(&self, lower: &[u8], out: &mut Vec<Range<usize>>) {
        // `-` stands for `:` in DNS-safe forms (2001-db8--1.ipv6-literal.net).
        let colons: Vec<u8> = lower
            .iter()
            .map(|&b| if b == b'-' { b':' } else { b })
            .collect();
        let is_run = |b: u8| b.is_ascii_hexdigit() || b == b':' || b == b'.';
        let mut i = 0;
        while i < colons.len() {
            if !is_run(colons[i]) {
                i += 1;
                continue;
            }
            let start = i;
            while i < colons.len() && is_run(colons[i]) {
                i += 1;
            }
            let run = &colons[start..i];
            if run.iter().filter(|&&b| b == b':').count() >= 2 && self.v6_run_matches(run) {
                out.push(start..i);
            }
        }
    }

    fn v6_run_matches(&self, run: &[u8]) -> bool {
        let Ok(text) = std::str::from_utf8(run) else {
            return false;
        };
        // Groups padded to four digits and joined: mapped, 6to4, NAT64 and zero-padded forms.
        let padded: String = text
            .split(':')
            .filter(|g| !g.is_empty() && g.len() <= 4 && g.bytes().all(|b| b.is_ascii_hexdigit()))
            .map(|g| format!("{g:0>4}"))
            .collect();
        let in_padded =
            |re: &Option<Regex>| re.as_ref().is_some_and(|r| r.is_match(padded.as_bytes()));
        if in_padded(&self.compact) {
            return true;
        }
        // Parsed, from every group boundary to every later one (a port or text may cling on).
        let bounds: Vec<usize> = std::iter::once(0)
            .chain(text.match_indices(':').map(|(i, _)| i))
            .chain(std::iter::once(text.len()))
            .collect();
        for (k, &s) in bounds.iter().enumerate() {
            // An address (with a port) is under 64 characters and 9 colons: the windows are
            // bounded, so a hostile run of colons costs linear time, not cubic.
            let ends = bounds[k + 1..].iter().take(9);
            for &e in ends.take_while(|&&e| e - s <= MAX_V6_TEXT) {
                let part = text[s..e].trim_matches('.');
                if part.len() < 2 {
                    continue;
                }
                if let Ok(ip) = part.parse::<Ipv6Addr>() {
                    if self.v6_addr_matches(&ip) {
                        return true;
                    }
                }
            }
        }
        false
    }

    fn v6_addr_matches(&self, ip: &Ipv6Addr) -> bool {
        if self.v6.iter().any(|n| n.matches(ip)) {
            return true;
        }
        // Any aligned 32 bits equal to one of our IPv4 addresses, or its inverse (Teredo).
        let seg = ip.segments();
        self.v4.iter().any(|o| {
            let hi = u16::from_be_bytes([o[0], o[1]]);
            let lo = u16::from_be_bytes([o[2], o[3]]);
            seg.windows(2)
                .any(|w| (w[0] == hi && w[1] == lo) || (w[0] == !hi && w[1] == !lo))
        }) || ip
            .to_ipv4()
            .is_some_and(|v4| self.v4.contains(&Ipv4Addr::octets(&v4)))
    }

    /// Base64 runs: decoded at each alignment, searched for the raw bytes and for every text
    /// form; a hit scrubs the whole run.
    fn base64_runs(&self, bytes: &[u8], out: &mut Vec<Range<usize>>) {
        let is_b64 =
            |b: u8| b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'-' || b == b'_';
        let mut i = 0;
        while i < bytes.len() {
            if !is_b64(bytes[i]) {
                i += 1;
                continue;
            }
            let start = i;
            while i < bytes.len() && is_b64(bytes[i]) {
                i += 1;
            }
            if i - start < MIN_BASE64 {
                continue;
            }
            let run = &bytes[start..i];
            let hit = (0..4).any(|skip| {
                run.len() > skip + 1 && {
                    let decoded = base64_lenient(&run[skip..]);
                    self.raw
                        .iter()
                        .any(|r| decoded.windows(r.len()).any(|w| w == &r[..]))
                        // Every text form of an address is printable ASCII of 7 bytes or
                        // more: only such stretches are searched, so the decoding of a word
                        // that was never base64 (binary noise) costs next to nothing.
                        || decoded
                            .split(|b| !(0x20..0x7f).contains(b))
                            .filter(|t| t.len() >= MIN_TEXT)
                            .any(|t| !self.find(t, 1).is_empty())
                }
            });
            if hit {
                // The padding belongs to the run.
                let mut end = i;
                while end < bytes.len() && bytes[end] == b'=' {
                    end += 1;
                }
                out.push(start..end);
            }
        }
    }
}

/// A view of the text, with the span of the original each byte came from.
struct Layer {
    bytes: Vec<u8>,
    spans: Vec<(usize, usize)>,
}

impl Layer {
    fn identity(text: &[u8]) -> Self {
        Layer {
            bytes: text.to_vec(),
            spans: (0..text.len()).map(|i| (i, i + 1)).collect(),
        }
    }

    /// The original span of `r` (a range of this layer).
    fn span(&self, r: Range<usize>) -> Range<usize> {
        if r.is_empty() || r.end > self.spans.len() {
            return 0..0;
        }
        let s = self.spans[r.start..r.end]
            .iter()
            .map(|x| x.0)
            .min()
            .unwrap_or(0);
        let e = self.spans[r.start..r.end]
            .iter()
            .map(|x| x.1)
            .max()
            .unwrap_or(0);
        s..e
    }

    /// Separators removed, for the hex and nibble forms.
    fn compact(lower: &[u8]) -> Self {
        let mut bytes = Vec::with_capacity(lower.len());
        let mut spans = Vec::with_capacity(lower.len());
        for (i, &b) in lower.iter().enumerate() {
            if !matches!(b, b'.' | b':' | b'-' | b'_' | b' ') {
                bytes.push(b);
                spans.push((i, i + 1));
            }
        }
        Layer { bytes, spans }
    }

    /// Escapes decoded once (`%XX`, `&#NN;`, `&#xHH;`, `\xHH`, `\uHHHH`); `None` when there
    /// were none.
    fn unescape(&self) -> Option<Layer> {
        let b = &self.bytes;
        let mut bytes = Vec::with_capacity(b.len());
        let mut spans = Vec::with_capacity(b.len());
        let mut changed = false;
        let mut i = 0;
        while i < b.len() {
            if let Some((decoded, len)) = escape_at(&b[i..]) {
                let span = (self.spans[i].0, self.spans[i + len - 1].1);
                for d in decoded {
                    bytes.push(d);
                    spans.push(span);
                }
                changed = true;
                i += len;
            } else {
                bytes.push(b[i]);
                spans.push(self.spans[i]);
                i += 1;
            }
        }
        changed.then_some(Layer { bytes, spans })
    }
}

fn hex_val(b: u8) -> Option<u32> {
    (b as char).to_digit(16)
}

/// The escape at the start of `s`, decoded, and its length.
fn escape_at(s: &[u8]) -> Option<(Vec<u8>, usize)> {
    let hex_n = |from: usize, n: usize| -> Option<u32> {
        let digits = s.get(from..from + n)?;
        digits
            .iter()
            .try_fold(0u32, |acc, &d| Some(acc * 16 + hex_val(d)?))
    };
    let utf8 = |c: u32| -> Option<Vec<u8>> {
        let ch = char::from_u32(c)?;
        Some(ch.to_string().into_bytes())
    };
    match s.first()? {
        b'%' => {
            let v = hex_n(1, 2)?;
            Some((vec![v as u8], 3))
        }
        b'\\' => match s.get(1)? {
            b'x' | b'X' => Some((vec![hex_n(2, 2)? as u8], 4)),
            b'u' | b'U' => Some((utf8(hex_n(2, 4)?)?, 6)),
            _ => None,
        },
        b'&' if s.get(1) == Some(&b'#') => {
            let (radix, from) = match s.get(2)? {
                b'x' | b'X' => (16, 3),
                _ => (10, 2),
            };
            let end = s[from..].iter().take(8).position(|&b| b == b';')? + from;
            let digits = std::str::from_utf8(&s[from..end]).ok()?;
            let v = u32::from_str_radix(digits, radix).ok()?;
            Some((utf8(v)?, end + 1))
        }
        _ => None,
    }
}

/// Alphanumeric runs (lower case input).
fn tokens(lower: &[u8]) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < lower.len() {
        if lower[i].is_ascii_alphanumeric() {
            let s = i;
            while i < lower.len() && lower[i].is_ascii_alphanumeric() {
                i += 1;
            }
            out.push(s..i);
        } else {
            i += 1;
        }
    }
    out
}

/// One to three ASCII punctuation or space characters.
fn separator(gap: &[u8]) -> bool {
    (1..=3).contains(&gap.len()) && gap.iter().all(|b| b.is_ascii_punctuation() || *b == b' ')
}

/// Every byte value `s` can denote as an address component: decimal (padded or not), octal
/// (leading zero), hex (`0x` or bare, up to four digits).
fn values(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    if s.is_empty() || s.len() > MAX_COMPONENT {
        return out;
    }
    let mut push = |v: Option<u64>| {
        if let Some(v) = v.filter(|v| *v <= 255) {
            if !out.contains(&(v as u8)) {
                out.push(v as u8);
            }
        }
    };
    let text = std::str::from_utf8(s).unwrap_or("");
    if let Some(h) = text.strip_prefix("0x") {
        if !h.is_empty() && h.bytes().all(|b| b.is_ascii_hexdigit()) {
            push(u64::from_str_radix(h, 16).ok());
        }
        return out;
    }
    if s.iter().all(u8::is_ascii_digit) {
        push(text.parse().ok());
        if s.len() > 1 && s[0] == b'0' && s.iter().all(|b| (b'0'..=b'7').contains(b)) {
            push(u64::from_str_radix(text, 8).ok());
        }
    }
    if s.len() <= 4 && s.iter().all(u8::is_ascii_hexdigit) {
        push(u64::from_str_radix(text, 16).ok());
    }
    out
}

/// Lenient base64 / base64url: decodes as far as it can, ignores a trailing partial group.
fn base64_lenient(s: &[u8]) -> Vec<u8> {
    let val = |b: u8| -> Option<u32> {
        Some(match b {
            b'A'..=b'Z' => (b - b'A') as u32,
            b'a'..=b'z' => (b - b'a' + 26) as u32,
            b'0'..=b'9' => (b - b'0' + 52) as u32,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        })
    };
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for &b in s {
        let Some(v) = val(b) else { break };
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

fn merge(mut r: Vec<Range<usize>>) -> Vec<Range<usize>> {
    r.retain(|x| !x.is_empty());
    r.sort_by_key(|x| x.start);
    let mut out: Vec<Range<usize>> = Vec::new();
    for x in r {
        match out.last_mut() {
            Some(l) if x.start <= l.end => l.end = l.end.max(x.end),
            _ => out.push(x),
        }
    }
    out
}

/// `text` with `hits` (merged, sorted byte ranges) replaced, widened to character boundaries.
fn replace(text: &str, hits: Vec<Range<usize>>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for r in hits {
        let mut s = r.start.min(text.len());
        let mut e = r.end.min(text.len());
        while !text.is_char_boundary(s) {
            s -= 1;
        }
        while !text.is_char_boundary(e) {
            e += 1;
        }
        if s < at {
            s = at;
        }
        if e <= s {
            continue;
        }
        out.push_str(&text[at..s]);
        out.push_str(SCRUBBED);
        at = e;
    }
    out.push_str(&text[at..]);
    out
}
