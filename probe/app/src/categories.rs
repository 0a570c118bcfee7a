//! Citizen Lab category codes: what each means, and which ones could put a volunteer at risk
//! when someone watching the connection sees them being tested.
//!
//! The consent notice names every sensitive category present in the lists about to be measured,
//! with how many sites each holds; `witness categories` lists them all.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use witness_core::targets::Target;

/// (code, description, sensitive). Sensitive: testing such sites can draw attention, or be an
/// offence, in some countries (political, religious, sexual, circumvention, militant content).
pub const CATEGORIES: &[(&str, &str, bool)] = &[
    ("ALDR", "Alcohol & Drugs", true),
    ("ANON", "Anonymization and circumvention tools", true),
    ("COMM", "E-commerce", false),
    ("COMT", "Communication Tools", false),
    ("CTRL", "Control content", false),
    ("CULTR", "Culture", false),
    ("DATE", "Online Dating", true),
    ("ECON", "Economics", false),
    ("ENV", "Environment", false),
    ("FILE", "File-sharing", false),
    ("GAME", "Gaming", false),
    ("GMB", "Gambling", true),
    ("GOVT", "Government", false),
    ("GRP", "Social Networking", true),
    ("HACK", "Hacking Tools", true),
    ("HATE", "Hate Speech", true),
    ("HOST", "Hosting and Blogging Platforms", false),
    ("HUMR", "Human Rights Issues", true),
    ("IGO", "Intergovernmental Organizations", false),
    ("LGBT", "LGBT", true),
    ("MILX", "Terrorism and Militants", true),
    ("MISC", "Miscellaneous content", false),
    ("MMED", "Media sharing", false),
    ("NEWS", "News Media", true),
    ("POLR", "Political Criticism", true),
    ("PORN", "Pornography", true),
    ("PROV", "Provocative Attire", true),
    ("PUBH", "Public Health", false),
    ("REL", "Religion", true),
    ("SRCH", "Search Engines", false),
    ("XED", "Sex Education", true),
];

/// Description and sensitivity of `code` (case-insensitive); unknown codes are treated as
/// sensitive, since nobody checked what they hold.
pub fn describe(code: &str) -> (&'static str, bool) {
    let up = code.to_ascii_uppercase();
    CATEGORIES
        .iter()
        .find(|(c, _, _)| *c == up)
        .map(|(_, d, s)| (*d, *s))
        .unwrap_or(("not a Citizen Lab category", true))
}

/// Sites per category code (upper-case; `-` for targets without one), sorted by code.
pub fn counts(targets: &[Target]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for t in targets {
        let code = t
            .category_code
            .as_deref()
            .map(str::to_ascii_uppercase)
            .unwrap_or_else(|| "-".into());
        *out.entry(code).or_default() += 1;
    }
    out
}

/// The sensitive categories among `targets`, most sites first: (code, description, count).
pub fn sensitive_present(targets: &[Target]) -> Vec<(String, &'static str, usize)> {
    let mut v: Vec<_> = counts(targets)
        .into_iter()
        .filter(|(code, _)| code != "-")
        .filter_map(|(code, n)| {
            let (desc, sensitive) = describe(&code);
            sensitive.then_some((code, desc, n))
        })
        .collect();
    v.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| a.0.cmp(&b.0)));
    v
}

/// The paragraph of the consent notice that names the sensitive categories about to be tested.
pub fn consent_paragraph(targets: &[Target]) -> String {
    let sensitive = sensitive_present(targets);
    let mut s = format!("This run would test {} sites.", targets.len());
    if sensitive.is_empty() {
        s.push_str(" None of them is in a category marked sensitive.");
        return s;
    }
    let n: usize = sensitive.iter().map(|(_, _, n)| n).sum();
    let _ = writeln!(
        s,
        " {n} of them are in categories that may be sensitive where you live:"
    );
    for (code, desc, count) in &sensitive {
        let _ = writeln!(s, "  {code:<6} {desc} ({count} sites)");
    }
    s.push_str(
        "Leave any of them out with --exclude-category CODE (or exclude_categories in the config \
         file). `witness categories` lists every category of the lists.",
    );
    s
}

/// The table printed by `witness categories`.
pub fn table(targets: &[Target]) -> String {
    let mut s = format!(
        "{:<6}  {:>5}  {:<9}  DESCRIPTION\n",
        "CODE", "SITES", "SENSITIVE"
    );
    for (code, n) in counts(targets) {
        let (desc, sensitive) = if code == "-" {
            ("no category given (one-URL-per-line lists, --url)", false)
        } else {
            describe(&code)
        };
        let _ = writeln!(
            s,
            "{code:<6}  {n:>5}  {:<9}  {desc}",
            if sensitive { "yes" } else { "" }
        );
    }
    let _ = writeln!(s, "{} sites in all.", targets.len());
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(url: &str, code: Option<&str>) -> Target {
        let mut t = Target::from_url(url, "test").unwrap();
        t.category_code = code.map(str::to_string);
        t
    }

    #[test]
    fn the_default_lists_name_every_sensitive_category_with_counts() {
        let all = witness_core::targets::embedded_default();
        let text = consent_paragraph(&all);
        let counts = counts(&all);
        for code in ["LGBT", "DATE", "PORN", "ANON", "POLR", "HUMR", "NEWS"] {
            let n = counts[code];
            assert!(
                text.contains(&format!("{code:<6}")) && text.contains(&format!("({n} sites)")),
                "{code} ({n}) missing from:\n{text}"
            );
        }
        // Not sensitive: not named.
        assert!(!text.contains("E-commerce"), "{text}");
    }

    #[test]
    fn unknown_codes_are_sensitive_and_missing_codes_are_counted() {
        let ts = vec![
            t("https://a.test/", Some("zzz")),
            t("https://b.test/", None),
            t("https://c.test/", Some("comm")),
        ];
        let s = sensitive_present(&ts);
        assert_eq!(
            s,
            vec![("ZZZ".to_string(), "not a Citizen Lab category", 1)]
        );
        let table = table(&ts);
        assert!(table.contains("COMM        1"), "{table}");
        assert!(table.contains("-           1"), "{table}");
        assert!(table.contains("3 sites in all."), "{table}");
        let none = consent_paragraph(&[t("https://c.test/", Some("COMM"))]);
        assert!(none.contains("None of them"), "{none}");
    }
}
