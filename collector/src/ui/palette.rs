//! How verdicts look: one [`Swatch`] (CSS class, colours, short label) per verdict and
//! method, the stylesheet generated from them, and the legend. Every page and the chart take
//! their colours from here, so a colour lives in one place.

use std::fmt::Write;
use std::sync::LazyLock;

use witness_core::model::{Method, Status};

/// How one verdict looks: the CSS class, its colours and its short label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Swatch {
    /// CSS class (`v-...`), also on the SVG segments.
    pub class: &'static str,
    /// Background (cells) and fill (chart).
    pub bg: &'static str,
    /// Text colour on `bg`.
    pub fg: &'static str,
    /// Short label in a cell.
    pub label: &'static str,
    /// What it means, for the legend.
    pub meaning: &'static str,
}

impl Swatch {
    /// A swatch; `const`, so [`SWATCHES`] is a table built at compile time.
    const fn new(
        class: &'static str,
        bg: &'static str,
        fg: &'static str,
        label: &'static str,
        meaning: &'static str,
    ) -> Swatch {
        Swatch {
            class,
            bg,
            fg,
            label,
            meaning,
        }
    }
}

/// Every swatch, in legend order. Blocking methods each have their own hue; the states that
/// are not censorship are greens and greys. Labels carry the same information as the colours.
pub const SWATCHES: &[Swatch] = &[
    Swatch::new("v-ok", "#1f7a35", "#ffffff", "ok", "accessible"),
    Swatch::new(
        "v-dns",
        "#d62728",
        "#ffffff",
        "dns",
        "blocked: DNS tampering",
    ),
    Swatch::new("v-tcp", "#7b3fa0", "#ffffff", "tcp", "blocked: IP blocking"),
    Swatch::new(
        "v-tls",
        "#f28e1c",
        "#000000",
        "tls",
        "blocked: SNI filtering",
    ),
    Swatch::new(
        "v-mitm",
        "#1f4fc2",
        "#ffffff",
        "mitm",
        "blocked: TLS interception",
    ),
    Swatch::new(
        "v-http",
        "#8c564b",
        "#ffffff",
        "http",
        "blocked: blockpage or reset",
    ),
    Swatch::new(
        "v-throttle",
        "#e6c300",
        "#000000",
        "throttle",
        "blocked: throttled",
    ),
    Swatch::new(
        "v-blocked",
        "#a00000",
        "#ffffff",
        "blocked",
        "blocked: method unknown",
    ),
    Swatch::new(
        "v-down",
        "#8a8a8a",
        "#ffffff",
        "down",
        "down for the control too",
    ),
    Swatch::new(
        "v-protocol",
        "#e377c2",
        "#000000",
        "protocol",
        "blocked: protocol blocking (app tests)",
    ),
    Swatch::new(
        "v-udp",
        "#17becf",
        "#000000",
        "udp",
        "blocked: UDP blocking (app tests)",
    ),
    Swatch::new("v-inconclusive", "#d4d4d4", "#000000", "?", "inconclusive"),
    Swatch::new(
        "v-offline",
        "#333333",
        "#ffffff",
        "offline",
        "network offline",
    ),
    Swatch::new("v-none", "#f3f3f3", "#666666", "–", "no data"),
];

fn by_class(class: &str) -> &'static Swatch {
    SWATCHES
        .iter()
        .find(|s| s.class == class)
        .unwrap_or(&SWATCHES[SWATCHES.len() - 1])
}

/// The swatch of a verdict.
pub fn swatch(status: Status, method: Option<Method>) -> &'static Swatch {
    by_class(match (status, method) {
        (Status::Accessible, _) => "v-ok",
        (Status::Blocked, Some(Method::Dns)) => "v-dns",
        (Status::Blocked, Some(Method::Tcp)) => "v-tcp",
        (Status::Blocked, Some(Method::Tls)) => "v-tls",
        (Status::Blocked, Some(Method::Mitm)) => "v-mitm",
        (Status::Blocked, Some(Method::Http)) => "v-http",
        (Status::Blocked, Some(Method::Throttle)) => "v-throttle",
        (Status::Blocked, Some(Method::Protocol)) => "v-protocol",
        (Status::Blocked, Some(Method::Udp)) => "v-udp",
        (Status::Blocked, None) => "v-blocked",
        (Status::Down, _) => "v-down",
        (Status::Inconclusive, _) => "v-inconclusive",
        (Status::Offline, _) => "v-offline",
    })
}

/// The swatch of a cell without data.
pub fn no_data() -> &'static Swatch {
    by_class("v-none")
}

/// The stylesheet: the static rules plus one rule per swatch, generated from [`SWATCHES`] so
/// the colours live in one place.
pub static STYLESHEET: LazyLock<String> = LazyLock::new(|| {
    let mut css = include_str!("style.css").to_string();
    for s in SWATCHES {
        let _ = writeln!(
            css,
            ".{c}{{background:{bg};color:{fg}}}.{c} a{{color:{fg}}}svg .{c}{{fill:{bg}}}",
            c = s.class,
            bg = s.bg,
            fg = s.fg
        );
    }
    css
});

/// A short version of the stylesheet's contents, to make its URL change when it does.
pub static STYLESHEET_VERSION: LazyLock<String> = LazyLock::new(|| {
    use sha2::{Digest, Sha256};
    hex::encode(&Sha256::digest(STYLESHEET.as_bytes())[..6])
});

pub(super) fn legend() -> String {
    let mut s = String::from("<ul class=\"legend\" aria-label=\"Legend\">");
    for w in SWATCHES {
        let _ = write!(
            s,
            "<li><span class=\"swatch {}\">{}</span> {}</li>",
            w.class, w.label, w.meaning
        );
    }
    s.push_str("</ul>");
    s
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn every_method_has_its_own_colour_class_and_label() {
        let mut seen = BTreeSet::new();
        for m in Method::ALL {
            let w = swatch(Status::Blocked, Some(*m));
            assert_eq!(w.label, m.as_str(), "the label names the method");
            assert_eq!(w.class, format!("v-{}", m.as_str()));
            assert!(seen.insert(w.bg), "{m}: colour {} is used twice", w.bg);
        }
        for st in [
            Status::Accessible,
            Status::Down,
            Status::Inconclusive,
            Status::Offline,
        ] {
            let w = swatch(st, None);
            assert!(seen.insert(w.bg), "{st}: colour {} is used twice", w.bg);
        }
        assert!(seen.insert(no_data().bg));
        assert!(seen.insert(swatch(Status::Blocked, None).bg));
        assert_eq!(seen.len(), SWATCHES.len(), "every swatch is reachable");
    }

    #[test]
    fn the_stylesheet_has_a_rule_per_swatch() {
        for w in SWATCHES {
            assert!(
                STYLESHEET.contains(&format!(".{}{{background:{}", w.class, w.bg)),
                "{}",
                w.class
            );
        }
        assert_eq!(STYLESHEET_VERSION.len(), 12);
    }
}
