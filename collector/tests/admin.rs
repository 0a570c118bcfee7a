//! The operator's commands of the real binary: `token` never creates a store and says which
//! one it used, `check-config` and `example-config`, and errors that are one human line even
//! with RUST_BACKTRACE=1.

use std::path::Path;
use std::process::{Command, Output, Stdio};

fn collector(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_witness-collector"))
        .args(args)
        .current_dir(dir)
        .env_remove("WITNESS_COLLECTOR_CONFIG")
        .env("RUST_BACKTRACE", "1")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .expect("run witness-collector")
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn no_backtrace(stderr: &str) {
    for noise in [
        "Stack backtrace",
        "stack backtrace",
        "<unknown>",
        "panicked",
    ] {
        assert!(!stderr.contains(noise), "backtrace noise: {stderr}");
    }
}

#[test]
fn token_commands_refuse_to_create_a_store_and_name_the_one_they_use() {
    let dir = tempfile::tempdir().expect("temp dir");
    // No config: the default store ./witness-collector.db does not exist here.
    for args in [
        &["token", "create"][..],
        &["token", "list"][..],
        &["token", "revoke", "x"][..],
    ] {
        let out = collector(dir.path(), args);
        let (stdout, stderr) = text(&out);
        assert!(!out.status.success(), "{args:?} succeeded: {stdout}");
        assert!(
            stderr.contains("no store at witness-collector.db")
                && stderr.contains("--config")
                && stderr.contains("built-in defaults"),
            "{args:?}: {stderr}"
        );
        assert!(!stdout.contains("token:"), "a token was printed: {stdout}");
        no_backtrace(&stderr);
    }
    assert!(
        !dir.path().join("witness-collector.db").exists(),
        "a store was created"
    );

    // With the collector's config, after the collector created its store: works, and says
    // which store.
    let db = dir.path().join("real.db");
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        format!("[store]\nurl = \"sqlite://{}\"\n", db.display()),
    )
    .expect("config");
    let cfg = config.to_str().expect("utf-8");
    let out = collector(dir.path(), &["--config", cfg, "token", "list"]);
    assert!(
        !out.status.success(),
        "listed tokens of a store that does not exist"
    );
    // The store exists once the collector has opened it: check-config does not create it,
    // a short `serve` does; here we create it the way the collector does, through `serve`.
    let mut serve = Command::new(env!("CARGO_BIN_EXE_witness-collector"))
        .args(["--config", cfg, "serve"])
        .current_dir(dir.path())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("serve");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !db.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    let _ = serve.kill();
    let _ = serve.wait();
    assert!(db.exists(), "serve did not create its store");
    let out = collector(
        dir.path(),
        &["--config", cfg, "token", "create", "--uses", "2"],
    );
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("token:"), "{stdout}");
    assert!(
        stderr.contains(&format!("store: sqlite://{}", db.display())) && stderr.contains(cfg),
        "does not say which store: {stderr}"
    );
}

#[test]
fn check_config_explains_and_refuses_bad_files_in_one_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    // The shipped example is a valid config, printed by example-config.
    let out = collector(dir.path(), &["example-config"]);
    let (example, _) = text(&out);
    assert!(out.status.success());
    assert_eq!(
        example,
        include_str!("../collector.example.toml"),
        "example-config prints the shipped example"
    );
    let file = dir.path().join("example.toml");
    std::fs::write(&file, &example).expect("write");
    let f = file.to_str().expect("utf-8");
    let out = collector(dir.path(), &["--config", f, "check-config"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("configuration OK"), "{stdout}");
    assert!(stdout.contains("http://127.0.0.1:8080/metrics"), "{stdout}");
    assert!(stdout.contains("created at first start"), "{stdout}");
    assert!(
        !dir.path().join("witness-collector.db").exists(),
        "check-config created the store"
    );

    // A remote PostgreSQL without certificate checks: accepted, with a warning.
    let pg = dir.path().join("pg.toml");
    std::fs::write(
        &pg,
        "[store]\nurl = \"postgres://w:secret@db.example.org/witness\"\n",
    )
    .expect("write");
    let out = collector(
        dir.path(),
        &["--config", pg.to_str().unwrap(), "check-config"],
    );
    let (stdout, _) = text(&out);
    assert!(out.status.success());
    assert!(stdout.contains("warning: store: PostgreSQL"), "{stdout}");
    assert!(stdout.contains("sslmode=verify-full"), "{stdout}");
    assert!(!stdout.contains("secret"), "password printed: {stdout}");

    // An unknown key: one line naming the file and the key, exit status 1, no backtrace.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[server]\nlisten = \"127.0.0.1:8080\"\nlisen = 1\n").expect("write");
    let out = collector(
        dir.path(),
        &["--config", bad.to_str().unwrap(), "check-config"],
    );
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.starts_with("witness-collector: error: "), "{stderr}");
    assert!(
        stderr.contains("bad.toml") && stderr.contains("lisen"),
        "{stderr}"
    );
    no_backtrace(&stderr);
    let out = collector(
        dir.path(),
        &["--config", "/nonexistent/witness.toml", "check-config"],
    );
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("/nonexistent/witness.toml"), "{stderr}");
    no_backtrace(&stderr);
}
