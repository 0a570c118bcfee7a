//! The shipped example configuration loads and equals the defaults; unknown keys fail loudly.

use std::path::Path;

use witness_collector::config::ConfigError;
use witness_collector::Config;

fn example_path() -> &'static Path {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/collector.example.toml"
    ))
}

#[test]
fn example_config_loads_and_equals_defaults() {
    let c = Config::load(Some(example_path())).expect("example config loads");
    assert_eq!(c, Config::default());
}

#[test]
fn unknown_key_in_any_section_fails_with_a_clear_error() {
    let text = std::fs::read_to_string(example_path()).expect("read example");
    let sections: Vec<&str> = text.lines().filter(|l| l.starts_with('[')).collect();
    assert!(sections.len() >= 7, "{sections:?}");
    for section in sections {
        let bad = text.replacen(section, &format!("{section}\nno_such_key = 1"), 1);
        let err = Config::parse(&bad).expect_err(section);
        assert!(matches!(err, ConfigError::Parse { .. }), "{section}: {err}");
        let msg = err.to_string();
        assert!(
            msg.contains("unknown field") && msg.contains("no_such_key"),
            "{section}: {msg}"
        );
    }
    let err = Config::parse("[nope]\n").expect_err("unknown section");
    assert!(err.to_string().contains("nope"), "{err}");
}

#[test]
fn load_names_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("c.toml");
    std::fs::write(&p, "[server]\nlisten = 5\n").expect("write");
    let err = Config::load(Some(&p)).expect_err("bad type");
    assert!(err.to_string().contains("c.toml"), "{err}");
}
