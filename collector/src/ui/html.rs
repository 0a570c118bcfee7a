//! Escaping for HTML text, attribute values and URL components.
//!
//! Everything the page shows about a site (domain, category, reason, country) came from a probe
//! and may be hostile. Every such value goes through [`esc`] (HTML text and double-quoted
//! attributes) and, inside a link, through [`url_component`] first. Hand-written rather than a
//! template crate: the page is small, the rules fit in a few lines that are tested here, and the
//! collector gets no new dependency.

use std::fmt::{self, Write};

/// A string escaped for HTML text and double- or single-quoted attribute values when displayed.
#[derive(Clone, Copy, Debug)]
pub struct Esc<'a>(pub &'a str);

/// `s`, escaped when displayed (`&`, `<`, `>`, `"`, `'`; control characters other than tab and
/// newline become U+FFFD, so a hostile value cannot smuggle invisible bytes into the page).
pub fn esc(s: &str) -> Esc<'_> {
    Esc(s)
}

impl fmt::Display for Esc<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        while let Some(i) = rest.find(|c: char| needs_escape(c)) {
            f.write_str(&rest[..i])?;
            let c = rest[i..].chars().next().unwrap_or('\u{fffd}');
            f.write_str(match c {
                '&' => "&amp;",
                '<' => "&lt;",
                '>' => "&gt;",
                '"' => "&quot;",
                '\'' => "&#39;",
                _ => "\u{fffd}",
            })?;
            rest = &rest[i + c.len_utf8()..];
        }
        f.write_str(rest)
    }
}

fn needs_escape(c: char) -> bool {
    matches!(c, '&' | '<' | '>' | '"' | '\'')
        || (c.is_control() && c != '\n' && c != '\t')
        // Bidirectional overrides could make one domain look like another.
        || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `s` percent-encoded for a URL path segment or query value: everything but ASCII letters,
/// digits, `-`, `.`, `_` and `~` is encoded, so the result holds no HTML-special character
/// either (still pass it through [`esc`] inside an attribute, for `&` between parameters).
pub fn url_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            // Writing to a String cannot fail.
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// At most `max` characters of `s`, with `…` when cut (on a character boundary).
pub fn truncate(s: &str, max: usize) -> std::borrow::Cow<'_, str> {
    match s.char_indices().nth(max) {
        None => s.into(),
        Some((i, _)) => format!("{}…", &s[..i]).into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_the_five_specials() {
        assert_eq!(
            esc(r#"<a href="x">Tom & 'Jerry'</a>"#).to_string(),
            "&lt;a href=&quot;x&quot;&gt;Tom &amp; &#39;Jerry&#39;&lt;/a&gt;"
        );
    }

    #[test]
    fn leaves_plain_and_unicode_text_alone() {
        for s in ["", "www.azattyq.org", "Доступ ограничен", "a\tb\nc", "ü😀"] {
            assert_eq!(esc(s).to_string(), s);
        }
    }

    #[test]
    fn hostile_domains_cannot_open_a_tag_or_leave_an_attribute() {
        let hostile = "\"><script>alert(1)</script><img src=x onerror=alert(2)>.test";
        let out = format!("<a title=\"{}\">{}</a>", esc(hostile), esc(hostile));
        assert!(!out.contains("<script"), "{out}");
        assert!(!out.contains("<img"), "{out}");
        assert_eq!(out.matches('"').count(), 2, "only our own quotes: {out}");
    }

    #[test]
    fn control_and_bidi_characters_are_replaced() {
        assert_eq!(
            esc("a\u{0}b\u{1b}[31m").to_string(),
            "a\u{fffd}b\u{fffd}[31m"
        );
        assert_eq!(esc("x\u{202e}gro.y").to_string(), "x\u{fffd}gro.y");
    }

    #[test]
    fn url_components_are_percent_encoded() {
        assert_eq!(url_component("news.test"), "news.test");
        assert_eq!(url_component("a b&c=d/e?"), "a%20b%26c%3Dd%2Fe%3F");
        assert_eq!(url_component("\"<>'"), "%22%3C%3E%27");
        assert_eq!(url_component("ü"), "%C3%BC");
    }

    #[test]
    fn truncates_on_character_boundaries() {
        assert_eq!(truncate("abc", 3), "abc");
        assert_eq!(truncate("abcd", 3), "abc…");
        assert_eq!(truncate("ДДДД", 2), "ДД…");
    }
}
