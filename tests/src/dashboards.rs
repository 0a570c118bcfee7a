//! The shipped Grafana dashboards, read as data: their files, their PromQL queries, and those
//! queries with Grafana's variables replaced so Prometheus (or VictoriaMetrics) can run them.

use serde_json::Value;

use crate::bins::workspace_root;

/// Every dashboard file, relative to the workspace root.
pub const DASHBOARDS: &[&str] = &[
    "dashboards/witness-overview.json",
    "dashboards/witness-site.json",
    "dashboards/witness-fleet.json",
];

/// A character that can start a PromQL (or Grafana variable) identifier.
pub fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

/// A character that can continue a PromQL identifier.
pub fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// The identifier starting at `i`, and the index after it.
pub fn read_ident(chars: &[char], i: usize) -> (String, usize) {
    let mut j = i;
    while j < chars.len() && is_ident_char(chars[j]) {
        j += 1;
    }
    (chars[i..j].iter().collect(), j)
}

/// Grafana variable references (`$name`, `${name}`, `${name:format}`, `[[name]]`) replaced by a
/// match-everything regex, and the names found.
pub fn substitute_variables(expr: &str) -> (String, Vec<String>) {
    let chars: Vec<char> = expr.chars().collect();
    let mut out = String::new();
    let mut names = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        if chars[i] == '$' && chars.get(i + 1) == Some(&'{') {
            let end = chars[i..].iter().position(|&c| c == '}').map(|p| i + p);
            let end = end.unwrap_or_else(|| panic!("unclosed ${{ in {expr:?}"));
            let inner: String = chars[i + 2..end].iter().collect();
            names.push(inner.split(':').next().unwrap_or_default().to_string());
            out.push_str(".*");
            i = end + 1;
        } else if chars[i] == '$' && chars.get(i + 1).is_some_and(|&c| is_ident_start(c)) {
            let (name, j) = read_ident(&chars, i + 1);
            names.push(name);
            out.push_str(".*");
            i = j;
        } else if chars[i] == '[' && chars.get(i + 1) == Some(&'[') {
            let rest: String = chars[i + 2..].iter().collect();
            let end = rest
                .find("]]")
                .unwrap_or_else(|| panic!("unclosed [[ in {expr:?}"));
            names.push(rest[..end].to_string());
            out.push_str(".*");
            i += 2 + rest[..end].chars().count() + 2;
        } else {
            out.push(chars[i]);
            i += 1;
        }
    }
    (out, names)
}

/// Every PromQL expression of a dashboard: (where, raw expression with Grafana variables).
pub fn dashboard_queries(file: &str, dash: &Value) -> Vec<(String, String)> {
    fn walk(file: &str, panels: &[Value], out: &mut Vec<(String, String)>) {
        for panel in panels {
            let title = panel["title"].as_str().unwrap_or("?");
            for target in panel["targets"].as_array().into_iter().flatten() {
                let expr = target["expr"].as_str().unwrap_or_default();
                out.push((format!("{file}: panel {title:?}"), expr.to_string()));
            }
            if let Some(inner) = panel["panels"].as_array() {
                walk(file, inner, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(file, dash["panels"].as_array().expect("panels"), &mut out);
    for anno in dash["annotations"]["list"].as_array().into_iter().flatten() {
        if anno["builtIn"] == 1 {
            continue;
        }
        let name = anno["name"].as_str().unwrap_or("?");
        for expr in [&anno["expr"], &anno["target"]["expr"]] {
            if let Some(e) = expr.as_str() {
                out.push((format!("{file}: annotation {name:?}"), e.to_string()));
            }
        }
    }
    out
}

/// Every dashboard, parsed: (file, JSON).
pub fn load_dashboards() -> Vec<(&'static str, Value)> {
    DASHBOARDS
        .iter()
        .map(|file| {
            let path = workspace_root().join(file);
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
            let dash: Value =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{file}: not JSON: {e}"));
            (*file, dash)
        })
        .collect()
}
